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
