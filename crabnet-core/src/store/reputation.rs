//! The store side of reputation (see [`crate::reputation`]): one row per seed and runner with
//! what that seed's state says about the runner, rewritten whenever the seed's state is, and
//! summed per node on demand.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};

use super::{Store, from_json, to_sql};
use crate::error::Result;
use crate::model::{NodeId, SeedId};
use crate::reputation::{Reputation, contributions};
use crate::state::SeedView;

/// Replaces the rows of `view`'s seed with what its state says now.
pub(super) fn write_seed(conn: &Connection, view: &SeedView) -> Result<()> {
    conn.prepare_cached("DELETE FROM reputation WHERE seed_id = ?1")?
        .execute([view.seed.id.as_str()])?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO reputation(seed_id, node_id, agreed, dissented, missed, accepted, rejected)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for (node, r) in contributions(view) {
        insert.execute(params![
            view.seed.id.as_str(),
            node.as_str(),
            to_sql(r.agreed),
            to_sql(r.dissented),
            to_sql(r.missed_deadlines),
            to_sql(r.settlements_accepted),
            to_sql(r.settlements_rejected),
        ])?;
    }
    Ok(())
}

/// Fills the table from every stored seed state (the migration that adds it).
pub(super) fn backfill(conn: &Connection) -> Result<()> {
    let views: Vec<String> = conn
        .prepare("SELECT view FROM seeds")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for text in views {
        let view: SeedView = from_json(&text, "seed state")?;
        write_seed(conn, &view)?;
    }
    Ok(())
}

/// Deletes the rows of a pruned seed.
pub(super) fn forget_seed(conn: &Connection, seed: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM reputation WHERE seed_id = ?1")?
        .execute([seed])?;
    Ok(())
}

impl Store {
    /// Every runner's reputation, summed over the seeds this node holds.
    pub fn reputations(&self) -> Result<BTreeMap<NodeId, Reputation>> {
        self.sum_reputations(
            "SELECT node_id, SUM(agreed), SUM(dissented), SUM(missed),
                                     SUM(accepted), SUM(rejected)
                              FROM reputation GROUP BY node_id",
            None,
        )
    }

    /// Every runner's reputation, summed over the seeds `publisher` published only: what a
    /// publisher weighs its awards with. Other publishers' seeds do not count there: a hostile
    /// publisher could farm reputation for its sybils with seeds of its own, or hurt honest
    /// runners by awarding them late or next to sybils that agree on a forged result.
    pub fn reputations_from(&self, publisher: &NodeId) -> Result<BTreeMap<NodeId, Reputation>> {
        self.sum_reputations(
            "SELECT r.node_id, SUM(r.agreed), SUM(r.dissented), SUM(r.missed),
                    SUM(r.accepted), SUM(r.rejected)
             FROM reputation r JOIN seeds s ON s.id = r.seed_id
             WHERE s.publisher = ?1 GROUP BY r.node_id",
            Some(publisher),
        )
    }

    /// The reputations of `nodes` only, summed over the seeds `publisher` published (as
    /// [`Store::reputations_from`] gives them): what an award weighs its bidders with. Each
    /// node's rows are found through its index, so the cost follows the bidders' history, not
    /// the size of the table. Nodes with no rows are left out.
    pub fn reputations_from_of<'a>(
        &self,
        publisher: &NodeId,
        nodes: impl IntoIterator<Item = &'a NodeId>,
    ) -> Result<BTreeMap<NodeId, Reputation>> {
        let mut stmt = self.conn.prepare_cached(REPUTATION_FROM_OF_SQL)?;
        let mut out = BTreeMap::new();
        for node in nodes {
            let rows = stmt.query_map([publisher.as_str(), node.as_str()], row)?;
            out.append(&mut collect(rows)?);
        }
        Ok(out)
    }

    /// The reputation of `node` (all zero when nothing is known).
    pub fn reputation(&self, node: &NodeId) -> Result<Reputation> {
        Ok(self
            .sum_reputations(
                "SELECT node_id, SUM(agreed), SUM(dissented), SUM(missed),
                        SUM(accepted), SUM(rejected)
                 FROM reputation WHERE node_id = ?1 GROUP BY node_id",
                Some(node),
            )?
            .remove(node)
            .unwrap_or_default())
    }

    /// What one seed contributes, per runner (as stored).
    pub fn reputation_of_seed(&self, seed: &SeedId) -> Result<BTreeMap<NodeId, Reputation>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT node_id, agreed, dissented, missed, accepted, rejected
             FROM reputation WHERE seed_id = ?1",
        )?;
        let rows = stmt.query_map([seed.as_str()], row)?;
        collect(rows)
    }

    fn sum_reputations(
        &self,
        sql: &str,
        node: Option<&NodeId>,
    ) -> Result<BTreeMap<NodeId, Reputation>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = match node {
            Some(n) => stmt.query_map([n.as_str()], row)?,
            None => stmt.query_map([], row)?,
        };
        collect(rows)
    }
}

/// One node's reputation from one publisher's seeds ([`Store::reputations_from_of`]).
const REPUTATION_FROM_OF_SQL: &str = "SELECT r.node_id, SUM(r.agreed), SUM(r.dissented),
        SUM(r.missed), SUM(r.accepted), SUM(r.rejected)
     FROM reputation r JOIN seeds s ON s.id = r.seed_id
     WHERE s.publisher = ?1 AND r.node_id = ?2 GROUP BY r.node_id";

type Row = (String, Reputation);

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let n = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    Ok((
        r.get(0)?,
        Reputation {
            agreed: n(1)?,
            dissented: n(2)?,
            missed_deadlines: n(3)?,
            settlements_accepted: n(4)?,
            settlements_rejected: n(5)?,
        },
    ))
}

fn collect(
    rows: impl Iterator<Item = rusqlite::Result<Row>>,
) -> Result<BTreeMap<NodeId, Reputation>> {
    let mut out = BTreeMap::new();
    for r in rows {
        let (node, rep) = r?;
        // Rows are written from node ids; anything else is skipped, not trusted.
        if let Ok(id) = NodeId::parse(&node) {
            out.insert(id, rep);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use rusqlite::params;

    use super::*;
    use crate::model::Millis;
    use crate::store::{publish_test_seed, temp_store, test_node as node};

    const T0: Millis = 1_700_000_000_000;

    /// An award reads its bidders' reputations only: the publisher's own seeds count, another
    /// publisher's do not, a bidder with no history is left out, and each bidder's rows are
    /// found through the node index, however large the table.
    #[test]
    fn an_award_reads_only_its_bidders_reputations() {
        let (_dir, mut s) = temp_store();
        let (me, other) = (node(0xab), node(0xcd));
        let (mine_1, _) = publish_test_seed(&mut s, &me, 1, T0);
        let (mine_2, _) = publish_test_seed(&mut s, &me, 2, T0);
        let (theirs, _) = publish_test_seed(&mut s, &other, 3, T0);
        let rows: [(&SeedId, u8, [i64; 5]); 5] = [
            (&mine_1, 10, [1, 0, 0, 0, 0]),
            (&mine_1, 11, [0, 1, 0, 0, 0]),
            (&mine_2, 10, [1, 0, 1, 0, 0]),
            (&mine_2, 12, [0, 0, 0, 1, 0]),
            (&theirs, 10, [0, 5, 0, 0, 5]),
        ];
        for (seed, n, [a, d, m, acc, rej]) in rows {
            s.conn
                .execute(
                    "INSERT INTO reputation(seed_id, node_id, agreed, dissented, missed,
                                            accepted, rejected)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![seed.as_str(), node(n).as_str(), a, d, m, acc, rej],
                )
                .unwrap();
        }
        let bidders = [node(10), node(12), node(13)];
        let found = s.reputations_from_of(&me, &bidders).unwrap();
        let mut all = s.reputations_from(&me).unwrap();
        all.retain(|n, _| bidders.contains(n));
        assert_eq!(found, all);
        assert_eq!(
            found.keys().cloned().collect::<Vec<_>>(),
            [node(10), node(12)]
        );
        let ten = &found[&node(10)];
        assert_eq!((ten.agreed, ten.dissented, ten.missed_deadlines), (2, 0, 1));
        assert_eq!(
            s.reputations_from_of(&other, &bidders).unwrap()[&node(10)].dissented,
            5
        );
        assert!(s.reputations_from_of(&me, []).unwrap().is_empty());
        s.assert_searches(
            REPUTATION_FROM_OF_SQL,
            params![me.as_str(), node(10).as_str()],
            "reputation_by_node",
        );
    }
}
