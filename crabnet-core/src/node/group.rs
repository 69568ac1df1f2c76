//! Group commit for the API's local operations (publish, bid, claim, settle, reassign, cancel).
//!
//! A caller (on its own blocking thread) queues its operation and waits for its own result.
//! When no other caller is committing, it becomes the *leader*: it takes every operation
//! queued at that moment (its own among them; nothing waits for company, so a lone caller
//! commits at once, exactly as before) and applies them in one store transaction through the
//! machinery of the receive batches ([`crate::store::SharedStore::begin_batch`]): each
//! operation in a savepoint of its own, so one that fails rolls back its own writes only and
//! fails only its own caller, with its own error (a group of one operation is its own
//! transaction, with no savepoint). One commit (one fsync under `store.sync = full`) ends the
//! group. Only then does any caller of the group get its result:
//! nothing is acknowledged, sent (the outbox is woken after the commit) or delivered as an
//! event (events are pumped after the commit) before it is durable. A commit that fails fails
//! every operation of the group with the commit's error. The leader hands over after one group:
//! a caller still waiting becomes the next leader and takes what was queued meanwhile.
//!
//! A publish is stamped (its Lamport counter comes from [`crate::store::LamportCounter`]) and
//! signed by its caller *before* it is queued, outside the store lock, so the callers sign in
//! parallel while a group commits. The other operations build their message from the seed's
//! current state, so they are built and signed inside the group.
//!
//! Operations that the node issues itself (decisions, results of runs) keep committing
//! through [`Node::commit_local`] directly: they may run inside a receive batch.
//!
//! Counters: `local.groups` and `local.group_ops` (group sizes summed).

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use super::{Node, lock};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Body, Message, Millis, SeedId};
use crate::state::SeedView;
use crate::store::Ops;

/// Builds a local message's body from the seed's current state, inside the group.
pub(super) type Build = Box<dyn FnOnce(&Node, Option<&SeedView>) -> Result<Body> + Send>;

/// A local operation waiting for its group.
pub(super) enum LocalOp {
    /// A message stamped and signed before it was queued (a new seed), with its envelope.
    Signed {
        message: Box<Message>,
        envelope: Vec<u8>,
    },
    /// A message about `seed_id` built from its state (`build`), then stamped and signed in
    /// the group; `now` is the caller's clock.
    Build {
        seed_id: SeedId,
        now: Millis,
        build: Build,
    },
}

#[derive(Default)]
struct State {
    queue: Vec<(u64, LocalOp)>,
    /// A leader is applying a group.
    leading: bool,
    results: HashMap<u64, Result<SeedView>>,
    next_ticket: u64,
}

/// The queue of local operations (see the module docs).
#[derive(Default)]
pub(super) struct LocalQueue {
    state: Mutex<State>,
    changed: Condvar,
}

impl Node {
    /// Commits `op` with whatever other callers queued at the same time (see the module
    /// docs); returns once its group is committed.
    pub(super) fn commit_queued(&self, op: LocalOp) -> Result<SeedView> {
        let queue = &self.inner.local;
        let mut state = lock(&queue.state);
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push((ticket, op));
        loop {
            if let Some(result) = state.results.remove(&ticket) {
                return result;
            }
            if !state.leading {
                state.leading = true;
                let group = std::mem::take(&mut state.queue);
                drop(state);
                self.lead(group);
                state = lock(&queue.state);
                continue;
            }
            state = queue.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Applies `group` in one transaction and posts every result, then lets the next leader
    /// in. A panic inside fails the group's callers instead of leaving them waiting.
    fn lead(&self, group: Vec<(u64, LocalOp)>) {
        struct Handover<'a> {
            node: &'a Node,
            tickets: Vec<u64>,
            results: Option<Vec<Result<SeedView>>>,
        }
        impl Drop for Handover<'_> {
            fn drop(&mut self) {
                let queue = &self.node.inner.local;
                let mut state = lock(&queue.state);
                let results = self.results.take().unwrap_or_default();
                let mut results = results.into_iter();
                for ticket in self.tickets.drain(..) {
                    let result = results.next().unwrap_or_else(|| {
                        Err(Error::internal("the local operation's group failed"))
                    });
                    state.results.insert(ticket, result);
                }
                state.leading = false;
                drop(state);
                queue.changed.notify_all();
            }
        }
        let (tickets, ops): (Vec<u64>, Vec<LocalOp>) = group.into_iter().unzip();
        let mut handover = Handover {
            node: self,
            tickets,
            results: None,
        };
        handover.results = Some(self.apply_local_group(ops));
    }

    /// The group's operations in one transaction, their results in order.
    pub(super) fn apply_local_group(&self, ops: Vec<LocalOp>) -> Vec<Result<SeedView>> {
        if ops.is_empty() {
            return Vec::new();
        }
        self.inner.rejections.count("local.groups");
        self.inner
            .rejections
            .add("local.group_ops", ops.len() as u64);
        // A lone operation commits on its own transaction: a batch would add a savepoint,
        // whose journal outgrew the 64 KiB SQLite keeps in memory (a temporary file opened,
        // written and closed per publish).
        let batch = self
            .inner
            .store
            .batch_for(ops.len(), "local operations", Ops::Savepoint);
        let mut results: Vec<Result<SeedView>> =
            ops.into_iter().map(|op| self.apply_local(op)).collect();
        let committed = batch.map_or(Ok(()), |b| b.end(true));
        if let Err(e) = committed {
            for r in &mut results {
                if r.is_ok() {
                    *r = Err(Error::new(
                        ErrorKind::Store,
                        format!("cannot commit the local operation: {e}"),
                    ));
                }
            }
        }
        let mut written = false;
        for view in results.iter().flatten() {
            self.schedule_decision(view);
            written = true;
        }
        // Deliver the group's events, now that they are committed.
        let _ = self.with_store(|_| Ok(()));
        if written {
            self.inner.wake_outbox.notify_one();
        }
        results
    }

    /// One operation of a group, in a savepoint of its own (a lone one in its own transaction).
    fn apply_local(&self, op: LocalOp) -> Result<SeedView> {
        match op {
            LocalOp::Signed { message, envelope } => self.with_store(|s| {
                s.commit_signed(&message, &envelope, message.timestamp)
                    .map(|(view, _)| view)
            }),
            LocalOp::Build {
                seed_id,
                now,
                build,
            } => self.with_store(|s| {
                let peers = s.peers()?;
                s.commit_local(
                    &self.inner.id,
                    &seed_id,
                    now,
                    |v| build(self, v),
                    |m, v| self.seal(m, &v.seed, &peers),
                )
                .map(|(_, view, _)| view)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::monitor::EventKind;
    use crate::node::PublishRequest;
    use crate::node::operations::known;

    /// The node's counters once `name` reached `expected` (housekeeping moves counters from
    /// memory to the store meanwhile: for a moment, the overview sees neither copy).
    async fn settled_counters(
        node: &Node,
        name: &str,
        expected: u64,
    ) -> std::collections::BTreeMap<String, u64> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let counters = node.overview().await.unwrap().counters;
            if counters.get(name) == Some(&expected) || std::time::Instant::now() > deadline {
                assert_eq!(counters.get(name), Some(&expected), "{counters:?}");
                return counters;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    fn seed_of(op: &LocalOp) -> SeedId {
        match op {
            LocalOp::Signed { message, .. } => message.seed_id().clone(),
            LocalOp::Build { seed_id, .. } => seed_id.clone(),
        }
    }

    /// One group of four: a publish; a publish whose message id is taken (the store refuses
    /// it after it wrote in its savepoint: the Lamport clock moved); a settlement of an
    /// unknown seed (refused while it is built); another publish. Each failing operation gets
    /// its own error, the others commit with one event each, and the failures leave nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_operation_fails_only_its_own_caller() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(Config::with_data_dir(dir.path()))
            .await
            .unwrap();
        let n = node.clone();
        let (results, seeds) = tokio::task::spawn_blocking(move || {
            let first = n.signed_seed(PublishRequest::new("echo first")).unwrap();
            let mut clash = n.signed_seed(PublishRequest::new("echo clash")).unwrap();
            if let (LocalOp::Signed { message: a, .. }, LocalOp::Signed { message: b, .. }) =
                (&first, &mut clash)
            {
                b.id = a.id.clone();
            }
            let unknown = SeedId::from_bytes([7; 16]);
            let id = unknown.clone();
            let settle = LocalOp::Build {
                seed_id: unknown,
                now: n.now_ms(),
                build: Box::new(move |_, v| {
                    let v = known(v, &id)?;
                    Ok(Body::SeedSettled(v.settlement_for(true, "")))
                }),
            };
            let last = n.signed_seed(PublishRequest::new("echo last")).unwrap();
            let ops = vec![first, clash, settle, last];
            let seeds: Vec<SeedId> = ops.iter().map(seed_of).collect();
            (n.apply_local_group(ops), seeds)
        })
        .await
        .unwrap();

        assert_eq!(results.len(), 4);
        assert_eq!(results[0].as_ref().unwrap().seed.id, seeds[0]);
        let clash = results[1].as_ref().unwrap_err();
        assert_eq!(clash.kind(), ErrorKind::Store, "{clash}");
        let unknown = results[2].as_ref().unwrap_err();
        assert_eq!(unknown.kind(), ErrorKind::NotFound, "{unknown}");
        assert_eq!(results[3].as_ref().unwrap().seed.id, seeds[3]);

        {
            let store = lock(&node.inner.store);
            let stored: Vec<SeedId> = store
                .all_views()
                .unwrap()
                .into_iter()
                .map(|v| v.seed.id)
                .collect();
            assert_eq!(stored.len(), 2, "{stored:?}");
            assert!(stored.contains(&seeds[0]) && stored.contains(&seeds[3]));
            let published: Vec<SeedId> = store
                .events_after(0, 1000)
                .unwrap()
                .into_iter()
                .filter_map(|e| match e.kind {
                    EventKind::SeedPublished { seed_id, .. } => Some(seed_id),
                    _ => None,
                })
                .collect();
            assert_eq!(
                published.len(),
                2,
                "one event per committed seed: {published:?}"
            );
            assert!(published.contains(&seeds[0]) && published.contains(&seeds[3]));
            assert_eq!(store.outbox_pending().unwrap(), 2);
            for seed in [&seeds[0], &seeds[3]] {
                assert_eq!(store.seed_envelopes(seed).unwrap().len(), 1);
            }
        }
        let counters = settled_counters(&node, "local.group_ops", 4).await;
        assert_eq!(counters.get("local.groups"), Some(&1));
        node.stop().await.unwrap();
    }

    /// Concurrent callers of [`Node::commit_queued`] each get their own result, once; the
    /// callers that queue while a group waits for the store go together in the next group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_that_queue_meanwhile_share_the_next_group() {
        const CALLERS: usize = 24;
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(Config::with_data_dir(dir.path()))
            .await
            .unwrap();
        // The store is busy (a receive batch, say): the first leader waits for it.
        let busy = node
            .inner
            .store
            .begin_batch(crate::store::Ops::Savepoint)
            .unwrap();
        let threads: Vec<_> = (0..CALLERS)
            .map(|i| {
                let n = node.clone();
                std::thread::spawn(move || {
                    let op = n
                        .signed_seed(PublishRequest::new(format!("echo {i}")))
                        .unwrap();
                    let id = seed_of(&op);
                    let view = n.commit_queued(op).unwrap();
                    assert_eq!(view.seed.id, id, "a caller gets its own seed's state");
                    assert_eq!(view.seed.command, format!("echo {i}"));
                    id
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while lock(&node.inner.local.state).queue.len() < CALLERS - 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the callers did not queue"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        busy.end(true).unwrap();
        let ids: std::collections::BTreeSet<SeedId> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(ids.len(), CALLERS);
        let counters = settled_counters(&node, "local.group_ops", CALLERS as u64).await;
        assert_eq!(counters.get("local.groups"), Some(&2), "{counters:?}");
        {
            let state = lock(&node.inner.local.state);
            assert!(state.queue.is_empty() && state.results.is_empty() && !state.leading);
        }
        assert_eq!(lock(&node.inner.store).all_views().unwrap().len(), CALLERS);
        node.stop().await.unwrap();
    }
}
