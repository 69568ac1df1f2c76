//! Receiving in batches: the frames that are already waiting when the network task turns to
//! the transport are applied together (at most [`BATCH_FRAMES`] frames or [`BATCH_BYTES`]
//! bytes; a lone frame is not kept waiting for company).
//!
//! 1. The gate ([`crate::ingress::Gate`]) runs in the network task, as for a single frame.
//! 2. On one blocking thread, in arrival order: a run of consecutive message envelopes (the
//!    bulk of the traffic) is a *group*; every other frame (a hello, a sync frame, revocations,
//!    key rotations, which change what later frames are checked against) is received alone,
//!    between the groups, exactly as before. The items of a sync batch (the hellos of their
//!    authors, then their envelopes) are received the same way, as sync items
//!    ([`Via::Sync`]): the envelopes in groups, each hello alone.
//! 3. For a group: it is applied in one store transaction
//!    ([`crate::store::SharedStore::begin_batch`]): each envelope crosses the whole trust boundary
//!    in turn, while a second thread verifies the signatures of the envelopes whose author is known
//!    from the group's end towards the applying thread ([`Node::verify_alongside`]; a verified
//!    signature is taken from it when the bytes and the keys are the same, so verifying overlaps
//!    applying); copies within the group are recognised as duplicates, as they are across frames.
//!    The store operations share the transaction, with no savepoint each
//!    ([`crate::store::Ops::Shared`]): a savepoint journals the image of every page its operation
//!    changes, 20 or more for a received seed, which SQLite wrote to a temporary file. One commit
//!    (one fsync under `store.sync = full`) ends the group. A group of one envelope opens no batch:
//!    each store operation of its receive is its own transaction.
//! 4. Only after the commit: verdicts go back to the transport (gossip forwards what was
//!    accepted), events are delivered, and the outbox is drained once if anything was written
//!    to it. A commit that fails rolls the whole group back: every verdict is `ignore`, and
//!    the recent-frames memory forgets what it learned during the batch, so copies are
//!    checked again (the rest of the memory stays).
//! 5. A store operation that fails after it wrote (an I/O error, a fault; a rule violation
//!    is a verdict, not a failure, and a message of the node's own that its rules refuse,
//!    such as a decision, is in a savepoint of its own) *spoils* the batch, as does SQLite
//!    rolling it back by itself: it is rolled back, and the frames that wrote in it, the
//!    failing one among them, and those not reached yet are received again one by one, each
//!    on its own transactions, so that one bad frame costs the others a second pass, not
//!    their place (counter `ingress.batches_spoiled`). What a frame that wrote nothing did
//!    stands: its rejection, its hold, its verdict. The price of a fault, in memory only: a
//!    frame received again pays its sender's rate budget again and its signature is
//!    checked again, a rejection it recorded is
//!    counted again (its event, the first of its window, is not written again), and the
//!    verdicts of held frames pushed out or released meanwhile are `ignore`.
//!
//! While a group's transaction is open, other threads (API calls, housekeeping) wait for its
//! commit before they touch the store, and go first when it is over. Counters:
//! `ingress.batches`, `ingress.batch_frames` (their sizes summed), `ingress.batches_full`
//! (the queue held a full batch or more: the node is behind), `ingress.groups`,
//! `ingress.group_frames`, `ingress.verified_parallel` and `ingress.batches_spoiled`.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::receive::Via;
use super::reconcile::AnswerRoom;
use super::{Node, lock};
use crate::crypto::SigningPublic;
use crate::envelope::{self, Kind};
use crate::ingress;
use crate::model::NodeId;
use crate::network::{Acceptance, Ack, Handled};
use crate::store::Ops;

/// Most frames taken into one batch.
pub(super) const BATCH_FRAMES: usize = 256;
/// Most bytes of frames taken into one batch (the frame that crosses it is still taken).
pub(super) const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A frame that passed the gate.
pub(super) struct Arrival {
    pub bytes: Vec<u8>,
    pub source: ingress::Source,
    pub ack: Option<Ack>,
}

/// What became of an [`Arrival`].
pub(super) struct Received {
    pub handled: Handled,
    pub from: String,
    /// The verdict channel, unless the frame is held (the hold answers it later).
    pub ack: Option<Ack>,
    /// Whether the frame came with a verdict channel.
    pub acked: bool,
}

impl Node {
    /// Receives `frames` (they passed the gate) in arrival order, the message envelopes among
    /// them in groups (see the module docs).
    pub(super) fn receive_batch(&self, frames: Vec<Arrival>, max: usize) -> Vec<Received> {
        let kinds: Vec<Option<Kind>> = frames
            .iter()
            .map(|f| envelope::parse(&f.bytes, max).ok().map(|p| p.header.kind))
            .collect();
        // The sources that ask for answers share the room of the batch's answers.
        let askers: HashSet<&str> = frames
            .iter()
            .zip(&kinds)
            .filter(|(_, kind)| kind.is_some_and(AnswerRoom::asks))
            .map(|(f, _)| AnswerRoom::key(&f.source))
            .collect();
        self.open_answer_room(askers.len());
        self.receive_runs(frames, kinds, max, Via::Live)
    }

    /// Receives `frames` (of `kinds`) that arrived `via`, in order: each run of consecutive
    /// message envelopes as a group, every other frame alone between them (the items of a
    /// sync batch, too: the hellos of their authors come first, alone, then the envelopes).
    pub(super) fn receive_runs(
        &self,
        frames: Vec<Arrival>,
        kinds: Vec<Option<Kind>>,
        max: usize,
        via: Via,
    ) -> Vec<Received> {
        let mut out = Vec::with_capacity(frames.len());
        let mut group = Vec::new();
        for (frame, kind) in frames.into_iter().zip(kinds) {
            let groupable = matches!(kind, Some(Kind::Domain(_)));
            if groupable {
                group.push(frame);
                continue;
            }
            if !group.is_empty() {
                out.extend(self.apply_group(std::mem::take(&mut group), max, via));
            }
            out.push(self.receive_one(frame, max, via));
        }
        if !group.is_empty() {
            out.extend(self.apply_group(group, max, via));
        }
        out
    }

    /// One frame across the trust boundary; an error is logged and the verdict is `ignore`.
    fn receive_one(&self, frame: Arrival, max: usize, via: Via) -> Received {
        let Arrival { bytes, source, ack } = frame;
        let acked = ack.is_some();
        let mut ack = ack;
        let handled = self
            .receive_frame_via(&bytes, &source, max, via, &mut ack)
            .unwrap_or_else(|e| {
                tracing::warn!("cannot apply received frame: {e}");
                ignored()
            });
        Received {
            handled,
            from: source.from,
            ack,
            acked,
        }
    }

    /// Message envelopes that arrived `via` applied in one transaction (see the module docs).
    /// In a batch already open on this thread (a sync batch released from the hold inside a
    /// group, a rare race), its frames are received one by one inside that batch.
    fn apply_group(&self, mut frames: Vec<Arrival>, max: usize, via: Via) -> Vec<Received> {
        self.inner.rejections.count("ingress.groups");
        self.inner
            .rejections
            .add("ingress.group_frames", frames.len() as u64);
        let jobs = self.verify_jobs(&frames, max);
        // A lone envelope opens no batch: its store operations commit on their own, as those
        // of any other frame received alone (usually one: the apply).
        let batch = if lock(&self.inner.store).in_batch() {
            None
        } else {
            self.inner
                .store
                .batch_for(frames.len(), "received frames", Ops::Shared)
        };
        let Some(batch) = batch else {
            self.pre_verify(&frames, &jobs, max);
            let results = frames.into_iter().map(|f| self.receive_one(f, max, via));
            let results = results.collect();
            self.inner.verified.clear();
            return results;
        };
        self.inner.recent.begin();
        // Each frame's verdict channel stays with its frame until the batch is over (the hold
        // takes a held frame's), for a frame received again to answer it.
        let acked: Vec<bool> = frames.iter().map(|f| f.ack.is_some()).collect();
        // Apart while the group is applied, so that the helper reads the frames meanwhile.
        let mut acks: Vec<Option<Ack>> = frames.iter_mut().map(|f| f.ack.take()).collect();
        let mut results: Vec<Option<(Handled, bool)>> = Vec::with_capacity(frames.len());
        // The frame the applying thread is at: the helper verifies from the group's end
        // towards it, and stops where they meet.
        let reached = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let (group, jobs, reached) = (&frames, &jobs, &reached);
            let helper = (jobs.len() >= 2)
                .then(|| scope.spawn(move || self.verify_alongside(group, jobs, reached, max)));
            for (i, (frame, ack)) in frames.iter().zip(&mut acks).enumerate() {
                reached.store(i, Ordering::Release);
                let store = lock(&self.inner.store);
                if store.batch_failed() {
                    break;
                }
                let before = store.total_changes();
                drop(store);
                let received = self.receive_frame_via(&frame.bytes, &frame.source, max, via, ack);
                // A frame that failed is received again too if the batch fails (SQLite may
                // have rolled the batch back at its first write, which counted no change).
                let wrote = received.is_err() || lock(&self.inner.store).total_changes() != before;
                let handled = received.unwrap_or_else(|e| {
                    tracing::warn!("cannot apply received frame: {e}");
                    ignored()
                });
                results.push(Some((handled, wrote)));
            }
            reached.store(usize::MAX, Ordering::Release);
            if let Some(helper) = helper {
                let count = helper.join().unwrap_or(0);
                self.inner
                    .rejections
                    .add("ingress.verified_parallel", count);
            }
        });
        for (frame, ack) in frames.iter_mut().zip(acks) {
            frame.ack = ack;
        }
        let failed = lock(&self.inner.store).batch_failed();
        let committed = batch.end(true);
        // What the batch taught the memory of stored frames is not stored if it rolled back.
        self.inner.recent.end(committed.is_ok());
        // The frames not reached (after a failure) have no result yet.
        results.resize_with(frames.len(), || None);
        let deferred = std::mem::take(&mut *lock(&self.inner.deferred_acks));
        let mut again = Vec::new();
        match committed {
            Ok(()) => {
                for (ack, handled) in deferred {
                    let _ = ack.send(handled);
                }
            }
            Err(e) if failed => {
                // Rolled back: the frames that wrote (the one that failed among them) and
                // those not reached yet are received again, each on its own transactions;
                // what the others did (a rejection, a hold, a copy seen) stands.
                tracing::warn!("{e}; its frames are received again one by one");
                self.inner.rejections.count("ingress.batches_spoiled");
                for (i, result) in results.iter_mut().enumerate() {
                    if result.as_ref().is_none_or(|(_, wrote)| *wrote) {
                        *result = None;
                        again.push(i);
                    }
                }
                for (ack, _) in deferred {
                    let _ = ack.send(ignored());
                }
            }
            Err(e) => {
                tracing::warn!(
                    "cannot commit {} received envelopes; sync brings them again: {e}",
                    results.len()
                );
                for r in &mut results {
                    *r = Some((ignored(), false));
                }
                for (ack, _) in deferred {
                    let _ = ack.send(ignored());
                }
            }
        }
        // Deliver the group's events, now that they are committed.
        let _ = self.with_store(|_| Ok(()));
        for i in again {
            let frame = &mut frames[i];
            let handled = self
                .receive_frame_via(&frame.bytes, &frame.source, max, via, &mut frame.ack)
                .unwrap_or_else(|e| {
                    tracing::warn!("cannot apply received frame: {e}");
                    ignored()
                });
            results[i] = Some((handled, true));
        }
        self.inner.verified.clear();
        frames
            .into_iter()
            .zip(results.into_iter().zip(acked))
            .map(|(frame, (result, acked))| Received {
                handled: result.map_or_else(ignored, |(handled, _)| handled),
                from: frame.source.from,
                ack: frame.ack,
                acked,
            })
            .collect()
    }

    /// Verifies `jobs` (see [`Node::verify_jobs`]) on one thread per core before a group that
    /// opens no batch is received frame by frame, and remembers those that verified
    /// ([`ingress::PreVerified`]): the trust boundary then skips their verification.
    fn pre_verify(&self, frames: &[Arrival], jobs: &[(usize, SigningPublic)], max: usize) {
        if jobs.len() < 2 {
            return;
        }
        let threads = cores();
        let verify = |chunk: &[(usize, SigningPublic)]| -> Vec<usize> {
            chunk
                .iter()
                .enumerate()
                .filter(|(_, (i, signer))| signed_by(&frames[*i].bytes, signer, max))
                .map(|(j, _)| j)
                .collect()
        };
        let verify = &verify;
        let size = jobs.len().div_ceil(threads.min(jobs.len()));
        let chunks: Vec<&[(usize, SigningPublic)]> = jobs.chunks(size).collect();
        let verified: Vec<Vec<usize>> = std::thread::scope(|scope| {
            let others: Vec<_> = chunks[1..]
                .iter()
                .map(|chunk| scope.spawn(move || verify(chunk)))
                .collect();
            let mut all = vec![verify(chunks[0])];
            all.extend(others.into_iter().map(|h| h.join().unwrap_or_default()));
            all
        });
        let mut count = 0;
        for (chunk, ok) in chunks.iter().zip(verified) {
            for j in ok {
                let (i, signer) = &chunk[j];
                self.inner
                    .verified
                    .insert(&frames[*i].bytes, signer.clone());
                count += 1;
            }
        }
        self.inner
            .rejections
            .add("ingress.verified_parallel", count);
    }

    /// The envelopes of a group worth verifying ahead of the trust boundary, with the keys of
    /// their authors: those whose author this node knows (none on a machine of one core, where
    /// nothing would verify alongside). Copies of stored frames, this node's own envelopes and
    /// authors that are not admitted are left to the trust boundary.
    fn verify_jobs(&self, frames: &[Arrival], max: usize) -> Vec<(usize, SigningPublic)> {
        if frames.len() < 2 || cores() < 2 {
            return Vec::new();
        }
        let mut signers: HashMap<NodeId, Option<SigningPublic>> = HashMap::new();
        let mut jobs: Vec<(usize, SigningPublic)> = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let Ok(parsed) = envelope::parse(&frame.bytes, max) else {
                continue;
            };
            let h = &parsed.header;
            if h.sender == self.inner.id
                || self.inner.trust.check_frame(h).is_err()
                || self.inner.recent.contains(&frame.bytes)
            {
                continue;
            }
            let signer = signers.entry(h.sender.clone()).or_insert_with(|| {
                lock(&self.inner.store)
                    .peer(&h.sender)
                    .ok()
                    .flatten()
                    .map(|p| p.identity.signing)
            });
            if let Some(signer) = signer {
                jobs.push((i, signer.clone()));
            }
        }
        jobs
    }

    /// Verifies the `frames` of a group's `jobs` (frame index, author's keys) from the last
    /// towards the frame the applying thread has `reached`, while it applies the group, and
    /// remembers those that verified ([`ingress::PreVerified`]); returns how many. It stops
    /// where the two meet: the frames before are verified by the trust boundary as the
    /// applying thread reaches them, so the group's signatures are shared between the two
    /// threads, and verifying overlaps applying.
    fn verify_alongside(
        &self,
        frames: &[Arrival],
        jobs: &[(usize, SigningPublic)],
        reached: &AtomicUsize,
        max: usize,
    ) -> u64 {
        let mut count = 0;
        for (i, signer) in jobs.iter().rev() {
            if *i <= reached.load(Ordering::Acquire) {
                break;
            }
            let bytes = &frames[*i].bytes;
            if signed_by(bytes, signer, max) {
                self.inner.verified.insert(bytes, signer.clone());
                count += 1;
            }
        }
        count
    }

    /// Gives a held frame's verdict to its transport: at once, or after the commit when a
    /// batch is open (a frame accepted inside a group must not be forwarded before it is
    /// durable).
    pub(super) fn answer(&self, ack: Ack, handled: Handled) {
        if lock(&self.inner.store).in_batch() {
            lock(&self.inner.deferred_acks).push((ack, handled));
        } else {
            let _ = ack.send(handled);
        }
    }
}

/// The cores this process may use, read once per process: on Linux `available_parallelism`
/// reads the cgroup's files (four opens and a scheduler call) every time, and a group is
/// verified per batch. A later change of the process's affinity or CPU quota is not seen.
/// Whether `bytes` is an envelope (at most `max` bytes) whose signatures `signer`'s keys verify.
fn signed_by(bytes: &[u8], signer: &SigningPublic, max: usize) -> bool {
    envelope::parse(bytes, max).is_ok_and(|p| p.verify(signer).is_ok())
}

fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn ignored() -> Handled {
    Handled {
        acceptance: Acceptance::Ignore,
        replies: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::admission_tests::{
        hello_envelope, plain_envelope, plain_hello, signed_envelope,
    };
    use super::*;
    use crate::config::Config;
    use crate::envelope::{Header, MAX_ENVELOPE_BYTES};
    use crate::identity::Identity;
    use crate::model::{Body, MessageId, MessageKind, SeedId};
    use crate::network::MemoryHub;

    /// `id`'s signed creation of seed `tag` (its id and message id made of `tag`), dated now.
    fn seed_envelope(id: &Identity, tag: u8) -> Vec<u8> {
        let now = crate::clock::now_ms();
        let seed = crate::store::test_seed(id.node_id(), tag, now);
        let header = Header {
            kind: Kind::Domain(MessageKind::SeedCreated),
            sealed: false,
            sender: id.node_id().clone(),
            message_id: MessageId::from_bytes([tag; 16]),
            timestamp: now,
            ttl_secs: 60,
            lamport: u64::from(tag),
        };
        signed_envelope(
            id,
            &header,
            &envelope::encode_body(&Body::SeedCreated(seed)),
        )
    }

    /// `id`'s signed sync batch carrying `items` (an answer to a sync query).
    fn sync_batch(id: &Identity, items: &[Vec<u8>]) -> Vec<u8> {
        let batch = crate::sync::Batch {
            items: items
                .iter()
                .cloned()
                .map(serde_bytes::ByteBuf::from)
                .collect(),
        };
        plain_envelope(id, Kind::SyncBatch, &batch)
    }

    /// A node on a memory hub of its own, without an event log, that received the hello of
    /// the peer it returns (tag 7).
    async fn node_with_peer(dir: &std::path::Path) -> (Node, Identity) {
        let mut config = Config::with_data_dir(dir.join("n"));
        config.events.log_enabled = false;
        let node = Node::start_with_transport(config, Box::new(MemoryHub::new().join("n")))
            .await
            .unwrap();
        let peer = Identity::from_tag(7, 0);
        let hello = plain_hello(&peer, "peer");
        let hello = hello_envelope(&peer, &hello, MessageId::from_bytes([1; 16]));
        assert_eq!(
            receive(&node, vec![hello]).await,
            [(Acceptance::Accept, true)]
        );
        (node, peer)
    }

    /// A sync batch (a repair round's or a catch-up's answer: hundreds of envelopes) is
    /// applied as a batch of live frames is: its hellos alone, its envelopes in one
    /// transaction. Before, each item was its own transaction (one fsync each under
    /// `store.sync = full`: a fifth of a receiving node's time while it repaired a burst),
    /// and an item that failed dropped the items after it. An item that fails after it wrote
    /// costs the others nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sync_batch_is_applied_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let (node, peer) = node_with_peer(dir.path()).await;
        // Seeds of an author whose hello comes in the batch, before them.
        let items_of = |tag: u8, seeds: std::ops::Range<u8>| {
            let author = Identity::from_tag(tag, 0);
            let hello = plain_hello(&author, "author");
            let mut items = vec![hello_envelope(
                &author,
                &hello,
                MessageId::from_bytes([tag; 16]),
            )];
            items.extend(seeds.map(|seed| seed_envelope(&author, seed)));
            items
        };
        let _ = receive(&node, vec![sync_batch(&peer, &items_of(8, 20..24))]).await;
        assert_eq!(node.seeds(None).await.unwrap().len(), 4);
        // The author's hello alone (it changes what the envelopes are checked against), then
        // its envelopes together (how many of their signatures the second thread verified
        // depends on where it met the applying thread: `verify_alongside_*` below).
        let expected = [
            ("ingress.groups", Some(1)),
            ("ingress.group_frames", Some(4)),
            ("ingress.batches_spoiled", None),
        ];
        assert_counters(&node, &expected).await;
        // One item fails after it wrote.
        let faulty = SeedId::from_bytes([32; 16]);
        crate::store::fail_writes(
            &lock(&node.inner.store),
            "events",
            "seed_id",
            faulty.as_str(),
        );
        let _ = receive(&node, vec![sync_batch(&peer, &items_of(9, 30..36))]).await;
        let stored = node.seeds(None).await.unwrap();
        assert_eq!(stored.len(), 9, "every item but the faulty one");
        assert!(stored.iter().all(|v| v.seed.id != faulty));
        let expected = [
            ("ingress.groups", Some(2)),
            ("ingress.batches_spoiled", Some(1)),
        ];
        assert_counters(&node, &expected).await;
        node.stop().await.unwrap();
    }

    /// The second thread of a group verifies from the group's end down to the frame after
    /// the one the applying thread has reached, and hands each envelope that verified to the
    /// trust boundary (with the keys it verified with); a forgery is not handed over; once
    /// the applying thread is at the end, it verifies nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_alongside_stops_where_the_applying_thread_is() {
        let dir = tempfile::tempdir().unwrap();
        let (node, _) = node_with_peer(dir.path()).await;
        let author = Identity::from_tag(8, 0);
        let signer = author.public().signing.clone();
        let mut frames: Vec<Vec<u8>> = (20..25).map(|t| seed_envelope(&author, t)).collect();
        // The fourth is another node's envelope: the author's keys do not verify it.
        frames[3] = seed_envelope(&Identity::from_tag(9, 0), 23);
        let group: Vec<Arrival> = frames
            .iter()
            .map(|bytes| Arrival {
                bytes: bytes.clone(),
                source: ingress::Source {
                    from: "memory:peer".into(),
                    verified: true,
                },
                ack: None,
            })
            .collect();
        let jobs: Vec<_> = (0..frames.len()).map(|i| (i, signer.clone())).collect();
        let group = std::sync::Arc::new((group, jobs));
        let verify = |reached: usize| {
            let (n, group) = (node.clone(), group.clone());
            tokio::task::spawn_blocking(move || {
                let reached = AtomicUsize::new(reached);
                n.verify_alongside(&group.0, &group.1, &reached, MAX_ENVELOPE_BYTES)
            })
        };
        let count = verify(1).await.unwrap();
        assert_eq!(
            count, 2,
            "frames 2 and 4 of 0-4: 3 is not the author's, 0-1 reached"
        );
        let verified = &node.inner.verified;
        let handed: Vec<bool> = frames.iter().map(|f| verified.take(f, &signer)).collect();
        assert_eq!(handed, [false, false, true, false, true]);
        assert_eq!(verify(usize::MAX).await.unwrap(), 0);
        node.stop().await.unwrap();
    }

    /// A group of envelopes by a known author is verified on a second thread while the first
    /// applies it: some of its signatures are verified there (how many depends on where the
    /// two threads meet). Without the second thread the group would still apply, only slower;
    /// this is what notices.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_is_verified_alongside_its_apply() {
        if cores() < 2 {
            eprintln!("skipped: one core, where a group is not verified alongside");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (node, peer) = node_with_peer(dir.path()).await;
        let frames: Vec<Vec<u8>> = (20..148).map(|t| seed_envelope(&peer, t)).collect();
        let verdicts = receive(&node, frames).await;
        assert!(verdicts.iter().all(|(a, _)| *a == Acceptance::Accept));
        assert_eq!(node.seeds(None).await.unwrap().len(), 128);
        let counters = node.overview().await.unwrap().counters;
        assert_eq!(counters.get("ingress.groups"), Some(&1), "{counters:?}");
        // Not all 128: the first frame is the applying thread's (a group verified on every
        // core before its apply, as one without a batch is, would count them all).
        let parallel = counters.get("ingress.verified_parallel").copied();
        assert!(
            parallel.is_some_and(|n| n > 0 && n < 128),
            "verified alongside: {parallel:?} of 128"
        );
        node.stop().await.unwrap();
    }

    /// Asserts the values of `node`'s counters named in `expected` (`None`: never counted).
    async fn assert_counters(node: &Node, expected: &[(&str, Option<u64>)]) {
        let counters = node.overview().await.unwrap().counters;
        for (name, value) in expected {
            assert_eq!(counters.get(*name).copied(), *value, "{name}: {counters:?}");
        }
    }

    /// `node` receives `frames` as one batch, each with a verdict channel: their verdicts,
    /// and whether each channel came back to be answered (a held frame's stays in the hold).
    async fn receive(node: &Node, frames: Vec<Vec<u8>>) -> Vec<(Acceptance, bool)> {
        receive_keeping_channels(node, frames).await.0
    }

    /// [`receive`], also giving back the receiving end of each frame's verdict channel.
    async fn receive_keeping_channels(
        node: &Node,
        frames: Vec<Vec<u8>>,
    ) -> (
        Vec<(Acceptance, bool)>,
        Vec<tokio::sync::oneshot::Receiver<Handled>>,
    ) {
        let mut channels = Vec::new();
        let arrivals = frames
            .into_iter()
            .map(|bytes| {
                let (ack, rx) = tokio::sync::oneshot::channel();
                channels.push(rx);
                Arrival {
                    bytes,
                    source: ingress::Source {
                        from: "memory:peer".into(),
                        verified: true,
                    },
                    ack: Some(ack),
                }
            })
            .collect();
        let n = node.clone();
        let verdicts =
            tokio::task::spawn_blocking(move || n.receive_batch(arrivals, MAX_ENVELOPE_BYTES))
                .await
                .unwrap()
                .into_iter()
                .map(|r| {
                    assert!(r.acked);
                    (r.handled.acceptance, r.ack.is_some())
                })
                .collect();
        (verdicts, channels)
    }

    /// Copies of an envelope held for its author's hello (relays deliver several, each with a
    /// verdict channel of its own) are not held again: each is answered `Ignore` at once and
    /// counted as a duplicate. The held one's channel is answered when the hello releases it,
    /// `Accept`, and the envelope is applied once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copies_of_a_held_envelope_are_answered_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (node, _) = node_with_peer(dir.path()).await;
        let author = Identity::from_tag(8, 0);
        let frame = seed_envelope(&author, 20);
        let (held, copy) = ((Acceptance::Ignore, false), (Acceptance::Ignore, true));
        let (verdicts, mut channels) =
            receive_keeping_channels(&node, vec![frame.clone(), frame.clone()]).await;
        assert_eq!(verdicts, [held, copy]);
        assert_eq!(receive(&node, vec![frame.clone()]).await, [copy]);
        let expected = [("messages.held", Some(1)), ("messages.duplicate", Some(2))];
        assert_counters(&node, &expected).await;

        let hello = plain_hello(&author, "author");
        let hello = hello_envelope(&author, &hello, MessageId::from_bytes([2; 16]));
        assert_eq!(
            receive(&node, vec![hello]).await,
            [(Acceptance::Accept, true)]
        );
        let released = tokio::time::timeout(std::time::Duration::from_secs(10), channels.remove(0))
            .await
            .expect("the held envelope's verdict")
            .expect("answered, not dropped");
        assert_eq!(released.acceptance, Acceptance::Accept);
        assert_eq!(node.seeds(None).await.unwrap().len(), 1);
        let expected = [
            ("messages.held_released", Some(1)),
            ("messages.accepted", Some(1)),
        ];
        assert_counters(&node, &expected).await;
        node.stop().await.unwrap();
    }

    /// Fault: the store fails a write of one envelope of a batch after its first writes (an
    /// I/O error, a bug; a peer that found a way to make the store fail). The batch's
    /// operations share its transaction with no savepoint each, so the batch is rolled back,
    /// and the envelopes that wrote are received again one by one: the others are applied as
    /// if the faulty one had not been there, and the faulty one leaves nothing behind (no
    /// half write, not even its `seen` mark), so it applies once the fault is gone. Frames of
    /// the batch that wrote nothing (a copy, a frame held for its author's hello) are not
    /// received again: the held one is held once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_envelope_that_fails_after_it_wrote_costs_the_others_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (node, peer) = node_with_peer(dir.path()).await;
        let copy = seed_envelope(&peer, 9);
        let mut frames: Vec<Vec<u8>> = vec![copy.clone(), copy.clone()];
        assert_eq!(
            receive(&node, frames.clone()).await[0],
            (Acceptance::Accept, true)
        );
        let stranger = seed_envelope(&Identity::from_tag(8, 0), 20);
        frames = vec![copy, stranger];
        frames.extend((10..16).map(|tag| seed_envelope(&peer, tag)));
        let faulty = SeedId::from_bytes([12; 16]);
        // Its events are the last rows the apply writes: its seen, message and seed rows are
        // written by then.
        crate::store::fail_writes(
            &lock(&node.inner.store),
            "events",
            "seed_id",
            faulty.as_str(),
        );
        let verdicts = receive(&node, frames.clone()).await;
        let applied = (Acceptance::Accept, true);
        let failed = (Acceptance::Ignore, true);
        let (copied, held) = ((Acceptance::Ignore, true), (Acceptance::Ignore, false));
        assert_eq!(
            verdicts,
            [
                copied, held, applied, applied, failed, applied, applied, applied
            ]
        );
        let stored = node.seeds(None).await.unwrap();
        assert_eq!(stored.len(), 6);
        assert!(stored.iter().all(|v| v.seed.id != faulty));
        let expected = [
            ("ingress.batches_spoiled", Some(1)),
            ("messages.held", Some(1)),
            ("messages.accepted", Some(6)),
        ];
        assert_counters(&node, &expected).await;
        let faulty_message = MessageId::from_bytes([12; 16]);
        assert!(!lock(&node.inner.store).is_known(&faulty_message).unwrap());
        crate::store::heal_writes(&lock(&node.inner.store), "events");
        assert_eq!(receive(&node, vec![frames[4].clone()]).await, [applied]);
        assert_eq!(node.seeds(None).await.unwrap().len(), 7);
        node.stop().await.unwrap();
    }
}
