//! The store side of retention (see [`crate::retention`]): pruning ended seeds with their
//! messages, outbox rows and events, tombstones of pruned seeds, and the bound on the events
//! table. Every function here is one short transaction over at most `limit` seeds or events.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::Store;
use crate::error::Result;
use crate::model::{Millis, NodeId, SeedId};
use crate::monitor::EventKind;
use crate::sync::SeedDigest;

/// What one batch of [`Store::prune_seeds`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeedsPruned {
    /// Seeds pruned (each now has a tombstone).
    pub seeds: u64,
    /// Their messages (and the outbox rows of those).
    pub messages: u64,
    /// Their events.
    pub events: u64,
}

/// The seed an event names, if it names one.
pub(super) fn event_seed(kind: &EventKind) -> Option<&SeedId> {
    match kind {
        EventKind::SeedPublished { seed_id, .. }
        | EventKind::BidPlaced { seed_id, .. }
        | EventKind::BiddingClosed { seed_id, .. }
        | EventKind::SeedClaimed { seed_id, .. }
        | EventKind::TaskStarted { seed_id, .. }
        | EventKind::ResultRecorded { seed_id, .. }
        | EventKind::SeedSettled { seed_id, .. }
        | EventKind::SeedCancelled { seed_id, .. }
        | EventKind::SeedReassigned { seed_id, .. }
        | EventKind::SeedFailed { seed_id, .. }
        | EventKind::SeedEscalated { seed_id, .. }
        | EventKind::StatusChanged { seed_id, .. } => Some(seed_id),
        EventKind::NodeStarted { .. }
        | EventKind::NodeStopped { .. }
        | EventKind::PeerDiscovered { .. }
        | EventKind::MessageAccepted { .. }
        | EventKind::MessageDeferred { .. }
        | EventKind::MessageRejected { .. }
        | EventKind::TransportStatus { .. }
        | EventKind::SendFailed { .. }
        | EventKind::EventsDropped { .. }
        | EventKind::AlertFiring { .. }
        | EventKind::AlertResolved { .. } => None,
    }
}

/// Whether `seed` was pruned here (and its tombstone still lasts).
pub(super) fn is_pruned(conn: &Connection, seed: &SeedId) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT EXISTS(SELECT 1 FROM pruned_seeds WHERE seed_id = ?1)")?
        .query_row([seed.as_str()], |r| r.get(0))?)
}

/// SQL that holds when the node whose id (lowercase hex) the SQL expression `$id` gives is one
/// this node knows: `?1` (this node), a peer, the author of a stored message or the holder of a
/// stored certificate. Each lookup is a search in a primary key or in `messages_by_sender`.
/// The one definition of a known node: [`REVOCATION_KNOWN`] and [`Store::node_known`].
macro_rules! node_known {
    ($id:literal) => {
        concat!(
            "(",
            $id,
            " = ?1
    OR EXISTS (SELECT 1 FROM peers WHERE peers.node_id = ",
            $id,
            ")
    OR EXISTS (SELECT 1 FROM messages WHERE messages.sender = ",
            $id,
            ")
    OR EXISTS (SELECT 1 FROM certificates WHERE certificates.node_id = ",
            $id,
            "))"
        )
    };
}

/// Adds `n` to the counter `name` (nothing when `n` is 0), in the caller's transaction.
pub(super) fn add_counter(tx: &Connection, name: &str, n: u64) -> Result<()> {
    if n > 0 {
        tx.prepare_cached(
            "INSERT INTO counters(name, value) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET value = value + ?2",
        )?
        .execute(params![name, n.min(i64::MAX as u64) as i64])?;
    }
    Ok(())
}

impl Store {
    /// Prunes up to `limit` seeds that ended before `ended_before` (Unix ms; see
    /// [`crate::retention::ended_at`]), oldest end first, in one transaction: their outbox
    /// rows, messages, events and views go, and a tombstone (pruned at `now`) takes their
    /// place. Counted as `retention.seeds_pruned`, `retention.messages_pruned` and
    /// `retention.events_pruned`.
    pub fn prune_seeds(
        &mut self,
        ended_before: Millis,
        now: Millis,
        limit: usize,
    ) -> Result<SeedsPruned> {
        let tx = super::immediate(&mut self.conn, self.batch)?;
        let due: Vec<(String, i64)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT id, ended_at FROM seeds WHERE ended_at IS NOT NULL AND ended_at < ?1
                 ORDER BY ended_at, id LIMIT ?2",
            )?;
            let rows = stmt.query_map(
                params![
                    ended_before.min(i64::MAX as u64) as i64,
                    limit.min(i64::MAX as usize) as i64
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut out = SeedsPruned::default();
        for (seed, ended_at) in &due {
            tx.execute(
                "DELETE FROM outbox WHERE message_id IN (SELECT id FROM messages WHERE seed_id = ?1)",
                [seed],
            )?;
            out.messages += tx.execute("DELETE FROM messages WHERE seed_id = ?1", [seed])? as u64;
            out.events += tx.execute("DELETE FROM events WHERE seed_id = ?1", [seed])? as u64;
            tx.execute("DELETE FROM seeds WHERE id = ?1", [seed])?;
            super::reputation::forget_seed(&tx, seed)?;
            tx.execute(
                "INSERT INTO pruned_seeds(seed_id, ended_at, pruned_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(seed_id) DO UPDATE SET ended_at = ?2, pruned_at = ?3",
                params![seed, ended_at, now.min(i64::MAX as u64) as i64],
            )?;
            out.seeds += 1;
        }
        add_counter(&tx, "retention.seeds_pruned", out.seeds)?;
        add_counter(&tx, "retention.messages_pruned", out.messages)?;
        add_counter(&tx, "retention.events_pruned", out.events)?;
        tx.commit()?;
        Ok(out)
    }

    /// Forgets up to `limit` tombstones of seeds pruned before `pruned_before` (Unix ms);
    /// returns how many (counted as `retention.tombstones_expired`).
    pub fn prune_tombstones(&mut self, pruned_before: Millis, limit: usize) -> Result<u64> {
        let tx = super::immediate(&mut self.conn, self.batch)?;
        let n = tx.execute(
            "DELETE FROM pruned_seeds WHERE seed_id IN (
                 SELECT seed_id FROM pruned_seeds WHERE pruned_at < ?1 ORDER BY pruned_at LIMIT ?2)",
            params![
                pruned_before.min(i64::MAX as u64) as i64,
                limit.min(i64::MAX as usize) as i64
            ],
        )? as u64;
        add_counter(&tx, "retention.tombstones_expired", n)?;
        tx.commit()?;
        Ok(n)
    }

    /// Prunes the oldest events, at most `limit`, in one transaction: those beyond the newest
    /// `max_rows`, and those recorded before `older_than` (Unix ms). Only a prefix of the log
    /// goes (the oldest event kept is never older than one pruned), and
    /// [`Store::events_pruned_through`] rises to the last one pruned. Returns how many
    /// (counted as `retention.events_pruned`).
    pub fn prune_events(
        &mut self,
        older_than: Option<Millis>,
        max_rows: u64,
        limit: usize,
    ) -> Result<u64> {
        let tx = super::immediate(&mut self.conn, self.batch)?;
        let beyond_rows: Option<i64> = tx
            .query_row(
                "SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?1",
                [max_rows.min(i64::MAX as u64) as i64],
                |r| r.get(0),
            )
            .optional()?;
        let oldest: Vec<(i64, i64)> = {
            let mut stmt = tx.prepare_cached("SELECT seq, at FROM events ORDER BY seq LIMIT ?1")?;
            let rows = stmt.query_map([limit.min(i64::MAX as usize) as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let old = |at: i64| older_than.is_some_and(|t| (at as u64) < t);
        let cut = oldest
            .iter()
            .take_while(|(seq, at)| beyond_rows.is_some_and(|b| *seq <= b) || old(*at))
            .last()
            .map(|(seq, _)| *seq);
        let Some(cut) = cut else {
            return Ok(0);
        };
        let n = tx.execute("DELETE FROM events WHERE seq <= ?1", [cut])? as u64;
        tx.execute(
            "INSERT INTO meta(key, value) VALUES ('events_pruned_through', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value
             WHERE CAST(excluded.value AS INTEGER) > CAST(value AS INTEGER)",
            [cut.to_string()],
        )?;
        add_counter(&tx, "retention.events_pruned", n)?;
        tx.commit()?;
        Ok(n)
    }

    /// The sequence number of the last event pruned by the bound on the events table (0 when
    /// none was): a cursor below it has missed the events up to it. (The events of a pruned
    /// seed go with the seed and leave no mark here.)
    pub fn events_pruned_through(&self) -> Result<u64> {
        Ok(self
            .meta("events_pruned_through")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Whether `seed` was pruned here and its tombstone still lasts.
    pub fn is_pruned(&self, seed: &SeedId) -> Result<bool> {
        is_pruned(&self.conn, seed)
    }

    /// How many tombstones of pruned seeds are kept.
    pub fn tombstones(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM pruned_seeds", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// A peer's digest entries without the seeds pruned here: sync does not ask for them.
    pub fn without_pruned(&self, entries: &[SeedDigest]) -> Result<Vec<SeedDigest>> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let Ok(bytes) = <[u8; 16]>::try_from(entry.seed.as_slice()) else {
                out.push(entry.clone());
                continue;
            };
            if !is_pruned(&self.conn, &SeedId::from_bytes(bytes))? {
                out.push(entry.clone());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Award, Body, Cancellation, Message, NodeId, SeedStatus};
    use crate::state::SeedView;
    use crate::store::{
        ROTATIONS_OF_STRANGERS, RemoteOutcome, StoreConfig, seed_column, temp_store,
    };

    const DAY: Millis = 86_400_000;
    const T0: Millis = 1_700_000_000_000;

    fn me() -> NodeId {
        NodeId::parse(&"ab".repeat(32)).unwrap()
    }

    fn publish(s: &mut Store, tag: u8, at: Millis) -> (SeedId, Message) {
        crate::store::publish_test_seed(s, &me(), tag, at)
    }

    fn decide(s: &mut Store, id: &SeedId, at: Millis, body: Body) -> SeedStatus {
        s.commit_local(&me(), id, at, |_| Ok(body), |_, _| Ok(b"env".to_vec()))
            .unwrap()
            .1
            .status
    }

    fn cancel(s: &mut Store, id: &SeedId, at: Millis) {
        let body = Body::SeedCancelled(Cancellation {
            seed_id: id.clone(),
            after: None,
        });
        assert_eq!(decide(s, id, at, body), SeedStatus::Cancelled);
    }

    fn expire(s: &mut Store, id: &SeedId, at: Millis) {
        let body = Body::BiddingClosed(Award {
            seed_id: id.clone(),
            considered: Vec::new(),
            winner: None,
            winners: Vec::new(),
        });
        assert_eq!(decide(s, id, at, body), SeedStatus::Expired);
    }

    fn count(s: &Store, sql: &str, seed: &SeedId) -> i64 {
        s.conn
            .query_row(sql, [seed.as_str()], |r| r.get(0))
            .unwrap()
    }

    fn rows_of(s: &Store, seed: &SeedId) -> [i64; 4] {
        [
            count(s, "SELECT COUNT(*) FROM seeds WHERE id = ?1", seed),
            count(s, "SELECT COUNT(*) FROM messages WHERE seed_id = ?1", seed),
            count(
                s,
                "SELECT COUNT(*) FROM outbox WHERE message_id IN
                     (SELECT id FROM messages WHERE seed_id = ?1)",
                seed,
            ),
            count(s, "SELECT COUNT(*) FROM events WHERE seed_id = ?1", seed),
        ]
    }

    /// A store ten days old with a horizon of seven days: exactly the seeds that ended more
    /// than seven days ago go (with messages, outbox rows and events), in batches; open seeds
    /// and recently ended ones stay; a message about a pruned seed is refused.
    #[test]
    fn a_days_old_store_prunes_exactly_the_seeds_that_ended_past_the_horizon() {
        let (_dir, mut s) = temp_store();
        let (cancelled, creation) = publish(&mut s, 1, T0);
        cancel(&mut s, &cancelled, T0 + 1_000);
        let (expired, _) = publish(&mut s, 2, T0);
        expire(&mut s, &expired, T0 + 5_000);
        let (open, _) = publish(&mut s, 3, T0);
        let (recent, _) = publish(&mut s, 4, T0 + 9 * DAY);
        cancel(&mut s, &recent, T0 + 9 * DAY + 1_000);
        // Ended just at the horizon: not past it yet.
        let (edge, _) = publish(&mut s, 5, T0 + 3 * DAY - 1_000);
        cancel(&mut s, &edge, T0 + 3 * DAY);
        for seed in [&cancelled, &expired, &open, &recent, &edge] {
            let [views, messages, outbox, events] = rows_of(&s, seed);
            assert!(views == 1 && messages >= 1 && outbox >= 1 && events >= 1);
        }

        let now = T0 + 10 * DAY;
        let before = now - 7 * DAY;
        let first = s.prune_seeds(before, now, 1).unwrap();
        assert_eq!(first.seeds, 1);
        let second = s.prune_seeds(before, now, 1).unwrap();
        assert_eq!(second.seeds, 1);
        assert_eq!(
            s.prune_seeds(before, now, 1).unwrap(),
            SeedsPruned::default()
        );

        for gone in [&cancelled, &expired] {
            assert_eq!(rows_of(&s, gone), [0, 0, 0, 0], "{gone}");
            assert!(s.seed(gone).unwrap().is_none());
            assert!(s.is_pruned(gone).unwrap());
        }
        for kept in [&open, &recent, &edge] {
            let [views, messages, outbox, events] = rows_of(&s, kept);
            assert!(
                views == 1 && messages >= 1 && outbox >= 1 && events >= 1,
                "{kept}"
            );
            assert!(!s.is_pruned(kept).unwrap());
        }
        let c = s.counters().unwrap();
        assert_eq!(c["retention.seeds_pruned"], 2);
        assert_eq!(c["retention.messages_pruned"], 4);
        assert!(c["retention.events_pruned"] >= 4);
        // The digest no longer lists them.
        let listed: Vec<Vec<u8>> = s
            .sync_digest(100)
            .unwrap()
            .into_iter()
            .map(|d| d.seed)
            .collect();
        assert_eq!(listed.len(), 3);
        assert!(!listed.contains(&vec![1u8; 16]) && !listed.contains(&vec![2u8; 16]));

        // The pruned seed's creation, received again (from a peer that still holds it), is
        // refused and nothing is written.
        let (outcome, events) = s.apply_remote(&creation, b"env", now).unwrap();
        assert_eq!(outcome, RemoteOutcome::Pruned);
        assert!(events.is_empty());
        assert_eq!(rows_of(&s, &cancelled), [0, 0, 0, 0]);
        // A peer's digest entries for pruned seeds are not asked for.
        let theirs = s.sync_digest(100).unwrap();
        let mut with_pruned = theirs.clone();
        with_pruned.push(crate::sync::seed_digest(&cancelled, &mut ["00".repeat(16)]));
        assert_eq!(s.without_pruned(&with_pruned).unwrap(), theirs);

        // Tombstones last their own horizon, counted from the pruning.
        assert_eq!(s.prune_tombstones(now, 100).unwrap(), 0);
        assert_eq!(s.prune_tombstones(now + 1, 100).unwrap(), 2);
        assert!(!s.is_pruned(&cancelled).unwrap());
        assert_eq!(s.counters().unwrap()["retention.tombstones_expired"], 2);
    }

    /// A run prunes at most a few batches of each kind; while work is left the next call runs
    /// again, otherwise only after the interval.
    #[test]
    fn retention_runs_in_bounded_batches_and_comes_back_while_work_is_left() {
        use crate::retention::{Retention, RetentionConfig};
        let (_dir, mut s) = temp_store();
        for tag in 1..=20 {
            let (id, _) = publish(&mut s, tag, T0);
            cancel(&mut s, &id, T0 + 1_000);
        }
        let store = crate::store::SharedStore::new(s);
        let retention = Retention::new(RetentionConfig {
            batch_size: 1,
            interval_secs: 60,
            ..RetentionConfig::default()
        });
        let now = T0 + 8 * DAY;
        let first = retention.run_if_due(&store, now).unwrap();
        assert_eq!(first.seeds, 16, "{first:?}");
        let second = retention.run_if_due(&store, now).unwrap();
        assert_eq!(second.seeds, 4, "{second:?}");
        // Nothing left: the next run waits for the interval.
        let (id, _) = publish(&mut store.lock(), 99, T0);
        cancel(&mut store.lock(), &id, T0 + 1_000);
        assert_eq!(retention.run_if_due(&store, now + 59_999).unwrap().seeds, 0);
        assert_eq!(retention.run_if_due(&store, now + 60_000).unwrap().seeds, 1);
        assert_eq!(store.lock().tombstones().unwrap(), 21);
    }

    /// Settled and failed seeds end at their settlement and failure.
    #[test]
    fn every_final_status_and_failed_has_an_end_and_the_others_have_none() {
        use crate::retention::ended_at;
        let (_dir, mut s) = temp_store();
        let (id, _) = publish(&mut s, 1, T0);
        let open = s.seed(&id).unwrap().unwrap();
        assert_eq!(ended_at(&open), None);
        for status in [SeedStatus::Claimed, SeedStatus::Completed] {
            assert_eq!(
                ended_at(&SeedView {
                    status,
                    ..open.clone()
                }),
                None
            );
        }
        let failed = SeedView {
            status: SeedStatus::Failed,
            failed_at: Some(T0 + 7),
            ..open.clone()
        };
        assert_eq!(ended_at(&failed), Some(T0 + 7));
        let settled = SeedView {
            status: SeedStatus::Settled,
            settlement: Some(crate::state::SettlementView {
                settlement: crate::model::Settlement {
                    seed_id: id.clone(),
                    outcome: crate::model::SettlementOutcome::Accepted,
                    amount: 1,
                    note: String::new(),
                    paid: Vec::new(),
                },
                settled_at: T0 + 9,
            }),
            ..open.clone()
        };
        assert_eq!(ended_at(&settled), Some(T0 + 9));
    }

    /// A store written before retention existed (schema 5) opens; its ended seeds get their end
    /// time and its events their seed.
    #[test]
    fn an_old_store_is_migrated_with_end_times_and_event_seeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut s = Store::open(&path, &StoreConfig::default()).unwrap();
        let (cancelled, _) = publish(&mut s, 1, T0);
        cancel(&mut s, &cancelled, T0 + 1_000);
        let (open, _) = publish(&mut s, 2, T0);
        crate::store::downgrade(&s.conn, 5);
        drop(s);
        let mut s = Store::open(&path, &StoreConfig::default()).unwrap();
        let ended = |s: &Store, id: &SeedId| seed_column(s, "ended_at", id);
        assert_eq!(ended(&s, &cancelled), Some((T0 + 1_000) as i64));
        assert_eq!(ended(&s, &open), None);
        assert!(rows_of(&s, &cancelled)[3] >= 2);
        let pruned = s.prune_seeds(T0 + DAY, T0 + 8 * DAY, 10).unwrap();
        assert_eq!(pruned.seeds, 1);
        assert_eq!(rows_of(&s, &cancelled), [0, 0, 0, 0]);
    }

    /// The events table keeps at most `max_rows` and nothing older than the age limit, pruned
    /// from the oldest in batches; the mark says how far.
    #[test]
    fn events_are_bounded_by_rows_and_age_from_the_oldest() {
        let (_dir, mut s) = temp_store();
        let flood = |s: &mut Store, at: Millis, n: usize| {
            for _ in 0..n {
                s.record_event(
                    at,
                    EventKind::TransportStatus {
                        transport: "memory".into(),
                        detail: "x".into(),
                    },
                )
                .unwrap();
            }
        };
        flood(&mut s, T0, 300);
        flood(&mut s, T0 + 2 * DAY, 200);
        assert_eq!(s.events_pruned_through().unwrap(), 0);
        // Rows: 500 kept to 250, at most 100 per batch.
        assert_eq!(s.prune_events(None, 250, 100).unwrap(), 100);
        assert_eq!(s.prune_events(None, 250, 100).unwrap(), 100);
        assert_eq!(s.prune_events(None, 250, 100).unwrap(), 50);
        assert_eq!(s.prune_events(None, 250, 100).unwrap(), 0);
        assert_eq!(s.events_pruned_through().unwrap(), 250);
        assert_eq!(s.events_after(0, 10_000).unwrap().len(), 250);
        // Age: the 50 left from T0 go, the newer ones stay.
        assert_eq!(s.prune_events(Some(T0 + DAY), 10_000, 1_000).unwrap(), 50);
        assert_eq!(s.prune_events(Some(T0 + DAY), 10_000, 1_000).unwrap(), 0);
        let left = s.events_after(0, 10_000).unwrap();
        assert_eq!(left.len(), 200);
        assert_eq!(left[0].seq, 301);
        assert_eq!(s.events_pruned_through().unwrap(), 300);
        assert_eq!(s.counters().unwrap()["retention.events_pruned"], 300);
    }

    /// The trust queries that run after every hello this node sends or answers look authors up
    /// in the messages' sender index: none reads the whole `messages` table, which holds every
    /// stored envelope (before, one stored stranger revocation made each hello answer cost a
    /// scan of the store: ~0.5-1 s at 100,000 messages).
    #[test]
    fn trust_queries_never_scan_the_messages() {
        let (_dir, s) = temp_store();
        let queries = [
            format!("SELECT body FROM revocations WHERE {REVOCATION_KNOWN}"),
            format!("SELECT id FROM revocations WHERE NOT {REVOCATION_KNOWN}"),
            ROTATIONS_OF_STRANGERS.to_owned(),
            // The target of a relayed revocation (`?2`).
            format!("SELECT {}", node_known!("?2")),
        ];
        for sql in queries {
            let me = me();
            let params: Vec<&str> = if sql.contains("?2") {
                vec![me.as_str(), me.as_str()]
            } else {
                vec![me.as_str()]
            };
            let plan = s.query_plan(&sql, rusqlite::params_from_iter(params));
            assert!(
                plan.iter().all(|step| !step.starts_with("SCAN messages")),
                "{sql}\n{plan:#?}"
            );
        }
    }
}

/// Whether a stored revocation (`body`) concerns a node this node knows: issued by a trust
/// anchor, or a node's own revocation of a node it knows ([`node_known`]). Byte 1 of a
/// revocation is its issuer (0: an anchor), bytes 1347..1379 its target (docs/PROTOCOL.md
/// section 2f); SQL counts from 1.
const REVOCATION_KNOWN: &str = concat!(
    "(substr(revocations.body, 2, 1) = x'00' OR ",
    node_known!("lower(hex(substr(revocations.body, 1348, 32)))"),
    ")"
);

/// What one [`Store::prune_trust`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TrustPruned {
    /// The evicted revocations (their encoded bodies).
    pub revocations: Vec<Vec<u8>>,
    /// The nodes whose expired certificates were deleted.
    pub certificates: Vec<NodeId>,
}

impl Store {
    /// Whether `node` is one this node (`me`) knows: itself, a peer, the author of a stored
    /// message or the holder of a stored certificate. A node's own revocation of a node it
    /// does not know is a stranger's, which [`Store::prune_trust`] caps.
    pub fn node_known(&self, me: &NodeId, node: &NodeId) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(concat!("SELECT ", node_known!("?2")))?
            .query_row([me.as_str(), node.as_str()], |r| r.get(0))?)
    }

    /// The revocations sent after hellos (oldest first): those that concern a node this node
    /// knows (`REVOCATION_KNOWN`), not the self-revocations of strangers.
    pub fn revocations_to_send(&self, me: &NodeId) -> Result<Vec<Vec<u8>>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT body FROM revocations WHERE {REVOCATION_KNOWN} ORDER BY received_at, id"
        ))?;
        let rows = stmt.query_map([me.as_str()], |r| r.get::<_, Vec<u8>>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The stored revocations of node `node` (by anyone).
    pub fn node_revocations(&self, node: &NodeId) -> Result<Vec<Vec<u8>>> {
        let mut id = [0u8; 32];
        hex::decode_to_slice(node.as_str(), &mut id)
            .map_err(|e| crate::error::Error::internal(format!("node id: {e}")))?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT body FROM revocations
             WHERE substr(body, 1347, 1) = x'00' AND substr(body, 1348, 32) = ?1
             ORDER BY received_at, id",
        )?;
        let rows = stmt.query_map([&id[..]], |r| r.get::<_, Vec<u8>>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Bounds what trust keeps of nodes this node forgot, in one transaction: of the
    /// self-revocations of nodes it knows nothing else of (not `me`, not a peer, no stored
    /// message, no certificate), only the newest `keep_strangers` stay (counted as
    /// `trust.revocations_evicted`); certificates whose validity ended before `expired_before`
    /// (Unix ms) are deleted (`trust.certificates_expired`). Revocations issued by anchors and
    /// those of known nodes are never deleted.
    pub fn prune_trust(
        &mut self,
        me: &NodeId,
        keep_strangers: u64,
        expired_before: Millis,
    ) -> Result<TrustPruned> {
        let tx = self.tx(TransactionBehavior::Immediate)?;
        let evicted: Vec<(String, Vec<u8>)> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT id, body FROM revocations WHERE NOT {REVOCATION_KNOWN}
                 ORDER BY received_at DESC, id DESC LIMIT -1 OFFSET ?2"
            ))?;
            let rows = stmt.query_map(
                params![me.as_str(), keep_strangers.min(i64::MAX as u64) as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (id, _) in &evicted {
            tx.execute("DELETE FROM revocations WHERE id = ?1", [id])?;
        }
        add_counter(&tx, "trust.revocations_evicted", evicted.len() as u64)?;
        // A certificate's not_after: 8 big-endian bytes at offset 93, so byte order is
        // number order.
        let expired: Vec<String> = {
            let mut stmt =
                tx.prepare("SELECT node_id FROM certificates WHERE substr(body, 94, 8) < ?1")?;
            let rows = stmt.query_map([&expired_before.to_be_bytes()[..]], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for node in &expired {
            tx.execute("DELETE FROM certificates WHERE node_id = ?1", [node])?;
        }
        add_counter(&tx, "trust.certificates_expired", expired.len() as u64)?;
        tx.commit()?;
        Ok(TrustPruned {
            revocations: evicted.into_iter().map(|(_, body)| body).collect(),
            certificates: expired
                .iter()
                .map(|n| NodeId::parse(n))
                .collect::<Result<_>>()?,
        })
    }
}
