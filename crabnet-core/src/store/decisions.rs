//! The store side of the decision timer (see `node/decisions.rs`): each seed's row carries
//! when its publisher next owes a decision ([`SeedView::next_decision_at`]), written with its
//! state, so a publisher reads only the seeds whose decisions are due, and the time of the
//! next one, from an index: never every open seed it published.

use rusqlite::{OptionalExtension, params};

use super::{Store, from_json, immediate, to_sql};
use crate::error::Result;
use crate::model::{Millis, NodeId};
use crate::state::SeedView;

/// The `decide_at` column of `view`'s row.
pub(super) fn decide_at(view: &SeedView) -> Option<i64> {
    view.next_decision_at().map(to_sql)
}

/// [`Store::due_decisions`]'s seeds: `?1`'s seeds due at `?2`, earliest first.
const DUE_SQL: &str = "SELECT view FROM seeds WHERE publisher = ?1 AND decide_at <= ?2
    ORDER BY decide_at";

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
    /// Rewrites the decision time of every undecided seed `publisher` published from its
    /// state, where it differs; returns how many it rewrote. A node runs it once at start, for
    /// its own seeds: the column is empty on seeds a store held before it existed (schema
    /// version 12) or that a process of an older version wrote since, and a newer version may
    /// compute other times. A seed whose state cannot be read is left off the timer with a
    /// warning (no decision can be taken on it), instead of holding back the others.
    pub(crate) fn refresh_decision_times(&mut self, publisher: &NodeId) -> Result<usize> {
        let tx = immediate(&mut self.conn)?;
        let mut changed = Vec::new();
        {
            let mut stmt = tx.prepare(
                "SELECT id, view, decide_at FROM seeds
                 WHERE publisher = ?1 AND status IN ('open', 'claimed', 'completed')",
            )?;
            let mut rows = stmt.query([publisher.as_str()])?;
            while let Some(row) = rows.next()? {
                let (id, text, stored) = <(String, String, Option<i64>)>::try_from(row)?;
                let at = match from_json::<SeedView>(&text, "seed state") {
                    Ok(view) => decide_at(&view),
                    Err(e) => {
                        tracing::warn!(seed = %id, "left off the decision timer: {e}");
                        None
                    }
                };
                if at != stored {
                    changed.push((id, at));
                }
            }
        }
        let mut update = tx.prepare("UPDATE seeds SET decide_at = ?2 WHERE id = ?1")?;
        for (id, at) in &changed {
            update.execute(params![id, at])?;
        }
        drop(update);
        tx.commit()?;
        Ok(changed.len())
    }

    /// The seeds `publisher` published whose next decision is due at `now`
    /// ([`SeedView::next_decision_at`] at or before it), and when the next of the others is:
    /// two reads of an index, whatever the number of open seeds.
    pub(crate) fn due_decisions(&self, publisher: &NodeId, now: Millis) -> Result<DueDecisions> {
        let now = to_sql(now);
        let due = self
            .conn
            .prepare_cached(DUE_SQL)?
            .query_map(params![publisher.as_str(), now], |r| r.get::<_, String>(0))?
            .map(|r| from_json(&r?, "seed state"))
            .collect::<Result<_>>()?;
        let next_at = self
            .conn
            .prepare_cached(NEXT_SQL)?
            .query_row(params![publisher.as_str(), now], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|at| at.max(0) as Millis);
        Ok(DueDecisions { due, next_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Award, Body, SeedId, SeedStatus};
    use crate::store::{StoreConfig, publish_test_seed};

    const T0: Millis = 1_700_000_000_000;

    fn node(tag: u8) -> NodeId {
        NodeId::parse(&format!("{tag:02x}").repeat(32)).unwrap()
    }

    fn ids(found: &DueDecisions) -> Vec<SeedId> {
        found.due.iter().map(|v| v.seed.id.clone()).collect()
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
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db"), &StoreConfig::default()).unwrap();
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
            let plan = s.query_plan(sql, params![me.as_str(), 0]);
            assert!(
                plan.iter().any(|step| step.contains("seeds_by_decision"))
                    && !plan.iter().any(|step| step.starts_with("SCAN")),
                "{sql}\n{plan:#?}"
            );
        }
    }

    /// A store from before the decision times (or written since by a process of an older
    /// version) gets those of the publisher's undecided seeds back when its node starts (it
    /// owes the decisions it owed before); ended seeds owe none, a stale time is corrected,
    /// and a seed whose state cannot be read stays off the timer without holding back the
    /// others.
    #[test]
    fn the_decision_times_of_an_old_store_are_refreshed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let me = node(0xab);
        let mut s = Store::open(&path, &StoreConfig::default()).unwrap();
        let (open, _) = publish_test_seed(&mut s, &me, 1, T0);
        let (ended, _) = publish_test_seed(&mut s, &me, 2, T0);
        expire(&mut s, &me, &ended, T0 + 1_000);
        let (stale, _) = publish_test_seed(&mut s, &me, 3, T0 + 10_000);
        let (corrupt, _) = publish_test_seed(&mut s, &me, 4, T0);
        s.conn
            .execute_batch(
                "DROP INDEX seeds_by_decision; ALTER TABLE seeds DROP COLUMN decide_at;
                 DROP INDEX messages_pending; PRAGMA user_version = 11;",
            )
            .unwrap();
        drop(s);
        let mut s = Store::open(&path, &StoreConfig::default()).unwrap();
        let found = s.due_decisions(&me, u64::MAX).unwrap();
        assert_eq!(
            (ids(&found), found.next_at),
            (vec![], None),
            "not known yet"
        );
        let stored = |s: &Store, id: &SeedId| -> Option<i64> {
            s.conn
                .query_row(
                    "SELECT decide_at FROM seeds WHERE id = ?1",
                    [id.as_str()],
                    |r| r.get(0),
                )
                .unwrap()
        };
        s.conn
            .execute(
                "UPDATE seeds SET decide_at = 5 WHERE id = ?1",
                [stale.as_str()],
            )
            .unwrap();
        s.conn
            .execute(
                "UPDATE seeds SET view = '{' WHERE id = ?1",
                [corrupt.as_str()],
            )
            .unwrap();
        assert_eq!(s.refresh_decision_times(&me).unwrap(), 2);
        assert_eq!(
            s.refresh_decision_times(&me).unwrap(),
            0,
            "nothing left to rewrite"
        );
        let found = s.due_decisions(&me, T0 + 1_000).unwrap();
        assert_eq!(
            (ids(&found), found.next_at),
            (vec![open], Some(T0 + 11_000))
        );
        assert_eq!(stored(&s, &ended), None);
        assert_eq!(stored(&s, &corrupt), None);
    }
}
