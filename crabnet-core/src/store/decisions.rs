//! The store side of the decision timer (see `node/decisions.rs`): each row of a seed this
//! store's node published carries when it next owes a decision
//! ([`SeedView::next_decision_at`]), written with its state, so a publisher reads only the
//! seeds whose decisions are due, and the time of the next one, from an index: never every
//! open seed it published. Other publishers' seeds carry none (rows written by earlier
//! versions may; every read asks for this node's seeds only).

use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, from_json, to_sql};
use crate::error::Result;
use crate::model::{Millis, NodeId, SeedId};
use crate::state::SeedView;

/// The `decide_at` column of `view`'s row.
pub(super) fn decide_at(view: &SeedView) -> Option<i64> {
    view.next_decision_at().map(to_sql)
}

/// The `decide_at` column written with `view`'s state: [`decide_at`] for a seed of this
/// store's node (or of any node while the store holds no node id), none for another
/// publisher's seed. A node reads only its own seeds' decision times; another's would only add
/// an index entry to every write of each seed it receives.
pub(super) fn decide_at_written(tx: &Connection, view: &SeedView) -> Result<Option<i64>> {
    let node: Option<String> = tx
        .prepare_cached("SELECT value FROM meta WHERE key = 'node_id'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    if node.is_some_and(|node| node != view.seed.publisher.as_str()) {
        return Ok(None);
    }
    Ok(decide_at(view))
}

/// [`Store::due_decisions`]'s seeds: `?1`'s seeds due at `?2`, earliest first.
const DUE_SQL: &str = "SELECT id, view, decide_at FROM seeds
    WHERE publisher = ?1 AND decide_at <= ?2 ORDER BY decide_at";

/// [`Store::due_decisions`]'s next time: the first of `?1`'s decisions after `?2`.
const NEXT_SQL: &str = "SELECT decide_at FROM seeds WHERE publisher = ?1 AND decide_at > ?2
    ORDER BY decide_at LIMIT 1";

/// What [`Store::due_decisions`] found.
#[derive(Debug)]
pub(crate) struct DueDecisions {
    /// The seeds whose decisions are due, earliest first.
    pub(crate) due: Vec<SeedView>,
    /// When the next decision after those comes due (`None`: no other seed owes one).
    pub(crate) next_at: Option<Millis>,
}

impl Store {
    /// The publisher of stored seed `id` (`None` when it is not stored), read without its
    /// state.
    pub(crate) fn publisher_of(&self, id: &SeedId) -> Result<Option<NodeId>> {
        let publisher: Option<String> = self
            .conn
            .prepare_cached("SELECT publisher FROM seeds WHERE id = ?1")?
            .query_row([id.as_str()], |r| r.get(0))
            .optional()?;
        publisher.map(|p| NodeId::parse(&p)).transpose()
    }

    /// The seeds `publisher` published whose next decision is due at `now`
    /// ([`SeedView::next_decision_at`] at or before it), and when the next of the others is:
    /// two reads of an index, whatever the number of open seeds. A due row whose stored time
    /// is not its state's (put on the timer at once by the triggers for writes of an older
    /// version) gets its state's time and is left out if that is not due; a row whose state
    /// cannot be read is taken off the timer with a warning: neither holds back the others.
    pub(crate) fn due_decisions(&self, publisher: &NodeId, now: Millis) -> Result<DueDecisions> {
        if !self.in_batch() {
            // Read the committed rows, and correct them in a transaction of their own.
            super::roll_back_abandoned(&self.conn)?;
        }
        let now = to_sql(now);
        let rows: Vec<(String, String, i64)> = self
            .conn
            .prepare_cached(DUE_SQL)?
            .query_map(params![publisher.as_str(), now], |r| {
                <(String, String, i64)>::try_from(r)
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut due = Vec::new();
        let mut corrections = Vec::new();
        for (id, text, stored) in rows {
            let (view, at) = match from_json::<SeedView>(&text, "seed state") {
                Ok(view) => {
                    let at = decide_at(&view);
                    (Some(view), at)
                }
                Err(e) => {
                    tracing::warn!(seed = %id, "left off the decision timer: {e}");
                    (None, None)
                }
            };
            if let Some(view) = view.filter(|_| at.is_some_and(|at| at <= now)) {
                due.push(view);
            }
            if at != Some(stored) {
                corrections.push((id, stored, at, text));
            }
        }
        if !corrections.is_empty()
            && let Err(e) = self.correct_decision_times(&corrections)
        {
            // Best effort: the next read finds the rows again.
            tracing::warn!("cannot correct {} decision times: {e}", corrections.len());
        }
        let next_at = self
            .conn
            .prepare_cached(NEXT_SQL)?
            .query_row(params![publisher.as_str(), now], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|at| at.max(0) as Millis);
        Ok(DueDecisions { due, next_at })
    }

    /// Stores each row's time from its state, in one transaction, unless a writer changed the
    /// row since it was read (its state or its time): `(id, time read, state's time, state
    /// read)`.
    fn correct_decision_times(&self, rows: &[(String, i64, Option<i64>, String)]) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut update = tx.prepare_cached(
                "UPDATE seeds SET decide_at = ?3 WHERE id = ?1 AND decide_at = ?2 AND view = ?4",
            )?;
            for (id, stored, at, text) in rows {
                update.execute(params![id, stored, at, text])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Award, Body, SeedId, SeedStatus};
    use crate::store::{
        StoreConfig, publish_test_seed, seed_column, temp_store, test_node as node,
    };

    const T0: Millis = 1_700_000_000_000;

    fn ids(found: &DueDecisions) -> Vec<SeedId> {
        found.due.iter().map(|v| v.seed.id.clone()).collect()
    }

    /// `id`'s stored decision time.
    fn stored(s: &Store, id: &SeedId) -> Option<i64> {
        seed_column(s, "decide_at", id)
    }

    /// Closes `id`'s bidding without bids: the seed expires and owes nothing more.
    fn expire(s: &mut Store, publisher: &NodeId, id: &SeedId, at: Millis) {
        let award = Award {
            seed_id: id.clone(),
            considered: Vec::new(),
            winner: None,
            winners: Vec::new(),
        };
        let (_, view, _) = s
            .commit_local(
                publisher,
                id,
                at,
                |_| Ok(Body::BiddingClosed(award)),
                |_, _| Ok(b"env".to_vec()),
            )
            .unwrap();
        assert_eq!(view.status, SeedStatus::Expired);
    }

    /// A publisher reads its seeds whose decisions are due, and the time of the next one;
    /// not another publisher's seeds, not the seeds due later, not the seeds decided; and the
    /// two reads go through the index, whatever the number of seeds.
    #[test]
    fn only_the_due_seeds_of_the_publisher_are_read() {
        let (_dir, mut s) = temp_store();
        let (me, other) = (node(0xab), node(0xcd));
        // Test seeds have one-second bid windows.
        let (soon, _) = publish_test_seed(&mut s, &me, 1, T0);
        let (later, _) = publish_test_seed(&mut s, &me, 2, T0 + 5_000);
        publish_test_seed(&mut s, &other, 3, T0);
        let found = s.due_decisions(&me, T0 + 999).unwrap();
        assert_eq!(ids(&found), []);
        assert_eq!(found.next_at, Some(T0 + 1_000));
        let found = s.due_decisions(&me, T0 + 1_000).unwrap();
        assert_eq!(ids(&found), std::slice::from_ref(&soon));
        assert_eq!(found.next_at, Some(T0 + 6_000));
        expire(&mut s, &me, &soon, T0 + 1_000);
        let found = s.due_decisions(&me, T0 + 60_000).unwrap();
        assert_eq!(ids(&found), std::slice::from_ref(&later));
        assert_eq!(found.next_at, None);
        expire(&mut s, &me, &later, T0 + 60_000);
        let found = s.due_decisions(&me, u64::MAX).unwrap();
        assert_eq!((ids(&found), found.next_at), (vec![], None));
        for sql in [DUE_SQL, NEXT_SQL] {
            s.assert_searches(sql, params![me.as_str(), 0], "seeds_by_decision");
        }
    }

    /// A process of an older version that had the database open before the migration writes
    /// seeds without their decision times and digest shares: the triggers put such a seed on
    /// its publisher's timer at once and drop its share. The next read of the due seeds gives
    /// each its state's time (not due yet: left out) and takes an unreadable one off the
    /// timer without holding back the others; the digest stays the digest of the states, and
    /// a node's start fills the shares in again.
    #[test]
    fn a_seed_written_by_an_older_version_gets_its_time_back() {
        let (_dir, mut s) = temp_store();
        let me = node(0xab);
        let (inserted, _) = publish_test_seed(&mut s, &me, 1, T0);
        let (updated, _) = publish_test_seed(&mut s, &me, 2, T0);
        let (corrupt, _) = publish_test_seed(&mut s, &me, 3, T0);
        let (due_now, _) = publish_test_seed(&mut s, &me, 4, T0 - 5_000);
        let view: String = s
            .conn
            .query_row(
                "SELECT view FROM seeds WHERE id = ?1",
                [inserted.as_str()],
                |r| r.get(0),
            )
            .unwrap();
        // An older version's writes: every column but the new ones.
        s.conn
            .execute("DELETE FROM seeds WHERE id = ?1", [inserted.as_str()])
            .unwrap();
        s.conn
            .execute(
                "INSERT INTO seeds(id, publisher, status, created_at, updated_at, view)
                 VALUES (?1, ?2, 'open', ?3, ?3, ?4)",
                params![inserted.as_str(), me.as_str(), T0 as i64, view],
            )
            .unwrap();
        for (id, view) in [(&updated, "view || ' '"), (&corrupt, "'{'")] {
            let sql = format!("UPDATE seeds SET view = {view} WHERE id = ?1");
            s.conn.execute(&sql, [id.as_str()]).unwrap();
        }
        for id in [&inserted, &updated, &corrupt] {
            assert_eq!(stored(&s, id), Some(0), "on the timer at once");
        }
        let found = s.due_decisions(&me, T0).unwrap();
        assert_eq!(
            ids(&found),
            std::slice::from_ref(&due_now),
            "the others hold nothing back"
        );
        assert_eq!(found.next_at, Some(T0 + 1_000));
        for id in [&inserted, &updated] {
            assert_eq!(stored(&s, id), Some(T0 as i64 + 1_000), "its state's time");
        }
        assert_eq!(stored(&s, &corrupt), None, "off the timer");
        // An unreadable state is covered by the hash of its text: overviews go on.
        let with_corrupt = s.digest().unwrap();
        assert_eq!(s.fill_digest_shares().unwrap(), 3);
        assert_eq!(s.fill_digest_shares().unwrap(), 0, "nothing left to fill");
        assert_eq!(
            s.digest().unwrap(),
            with_corrupt,
            "the same from the stored shares"
        );
        s.conn
            .execute("DELETE FROM seeds WHERE id = ?1", [corrupt.as_str()])
            .unwrap();
        assert_eq!(
            s.digest().unwrap(),
            crate::state::digest(&s.all_views().unwrap())
        );
    }

    /// A store that knows its node's id keeps decision times for that node's seeds only: a seed
    /// of another publisher writes no entry into the decision index.
    #[test]
    fn only_the_nodes_own_seeds_carry_a_decision_time() {
        let (_dir, mut s) = temp_store();
        let (me, other) = (node(0xab), node(0xcd));
        assert_eq!(s.node_id_or_init(&me).unwrap(), me);
        let (mine, _) = publish_test_seed(&mut s, &me, 1, T0);
        let (theirs, _) = publish_test_seed(&mut s, &other, 2, T0);
        assert_eq!(stored(&s, &mine), Some(T0 as i64 + 1_000));
        assert_eq!(stored(&s, &theirs), None);
        let found = s.due_decisions(&me, T0 + 1_000).unwrap();
        assert_eq!(ids(&found), std::slice::from_ref(&mine));
    }

    /// A transaction a failed rollback left open does not keep the decision times from being
    /// corrected, and its write is not committed with them.
    #[test]
    fn decision_times_are_corrected_past_an_abandoned_transaction() {
        let (_dir, mut s) = temp_store();
        let me = node(0xab);
        let (id, _) = publish_test_seed(&mut s, &me, 1, T0);
        s.conn
            .execute(
                "UPDATE seeds SET decide_at = 0 WHERE id = ?1",
                [id.as_str()],
            )
            .unwrap();
        s.conn
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO meta(key, value) VALUES ('x', 'y')")
            .unwrap();
        let found = s.due_decisions(&me, T0).unwrap();
        assert!(found.due.is_empty());
        assert!(s.conn.is_autocommit(), "no transaction left open");
        assert_eq!(stored(&s, &id), Some(T0 as i64 + 1_000), "its state's time");
        assert_eq!(
            s.meta("x").unwrap(),
            None,
            "the abandoned write was not committed"
        );
    }

    /// A store from before the decision times has its node's undecided seeds marked due by
    /// the migration (its node owes the decisions it owed before): the first read of the due
    /// seeds gives each its state's time, leaves out those not due, and takes one whose state
    /// cannot be read off the timer without holding back the others. Ended seeds and other
    /// publishers' seeds owe this node nothing.
    #[test]
    fn an_old_store_gets_its_decision_times_at_the_first_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let me = node(0xab);
        let mut s = Store::open(&path, &StoreConfig::default()).unwrap();
        s.node_id_or_init(&me).unwrap();
        let (open, _) = publish_test_seed(&mut s, &me, 1, T0);
        let (ended, _) = publish_test_seed(&mut s, &me, 2, T0);
        expire(&mut s, &me, &ended, T0 + 1_000);
        let (later, _) = publish_test_seed(&mut s, &me, 3, T0 + 10_000);
        let (corrupt, _) = publish_test_seed(&mut s, &me, 4, T0);
        let (other, _) = publish_test_seed(&mut s, &node(0xcd), 5, T0);
        crate::store::downgrade(&s.conn, 11);
        s.conn
            .execute(
                "UPDATE seeds SET view = '{' WHERE id = ?1",
                [corrupt.as_str()],
            )
            .unwrap();
        drop(s);
        let s = Store::open(&path, &StoreConfig::default()).unwrap();
        for id in [&open, &later, &corrupt] {
            assert_eq!(stored(&s, id), Some(0), "marked due");
        }
        assert_eq!(stored(&s, &ended), None);
        assert_eq!(stored(&s, &other), None);
        let found = s.due_decisions(&me, T0 + 1_000).unwrap();
        assert_eq!(
            (ids(&found), found.next_at),
            (vec![open.clone()], Some(T0 + 11_000))
        );
        assert_eq!(stored(&s, &open), Some(T0 as i64 + 1_000));
        assert_eq!(stored(&s, &later), Some(T0 as i64 + 11_000));
        assert_eq!(stored(&s, &corrupt), None, "off the timer");
        let again = s.due_decisions(&me, T0 + 1_000).unwrap();
        assert_eq!(
            (ids(&again), again.next_at),
            (vec![open], Some(T0 + 11_000))
        );
    }
}
