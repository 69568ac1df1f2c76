//! The store side of sync by range-based set reconciliation ([`crate::sync::range`]): the
//! stored messages as reconciliation items, which of them belong to private seeds and who may
//! receive those, and the envelopes a peer asked for.

use std::collections::BTreeMap;

use super::{Store, from_json};
use crate::error::Result;
use crate::model::{MessageId, NodeId, SeedId};
use crate::state::SeedView;
use crate::sync::range::Item;

/// A stored envelope a peer asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedEnvelope {
    /// The seed it is about.
    pub seed: SeedId,
    /// Its author.
    pub sender: NodeId,
    /// Whether it creates its seed (sent before the seed's other messages).
    pub creation: bool,
    /// Its Lamport counter (the order within a seed).
    pub lamport: i64,
    /// The envelope, verbatim.
    pub envelope: Vec<u8>,
}

impl Store {
    /// Every stored message that has an envelope, as a reconciliation item (unordered).
    pub fn sync_items(&self) -> Result<Vec<Item>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT timestamp, id, seed_id FROM messages WHERE envelope IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (timestamp, id, seed_id) = row?;
            let mut message = [0u8; 16];
            let mut seed = [0u8; 16];
            // Stored ids are 32 lowercase hex digits (checked when stored).
            if hex::decode_to_slice(&id, &mut message).is_err()
                || hex::decode_to_slice(&seed_id, &mut seed).is_err()
            {
                continue;
            }
            out.push(Item {
                timestamp: u64::try_from(timestamp).unwrap_or(0),
                message,
                seed,
            });
        }
        Ok(out)
    }

    /// The private seeds held here, each with the nodes that may receive its messages (its
    /// audience and its publisher).
    pub fn private_seeds(&self) -> Result<BTreeMap<SeedId, Vec<NodeId>>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT view FROM seeds WHERE json_array_length(view, '$.seed.audience') > 0",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let view: SeedView = from_json(&row?, "seed view")?;
            let mut allowed = view.seed.audience;
            allowed.push(view.seed.publisher);
            out.insert(view.seed.id, allowed);
        }
        Ok(out)
    }

    /// What changes whenever the reconciliation items may have changed: messages stored or
    /// pruned, seeds becoming known (a private seed's audience), tombstones.
    pub fn sync_generation(&self) -> Result<[i64; 4]> {
        Ok(self.conn.query_row(
            "SELECT (SELECT COUNT(*) FROM messages), (SELECT COALESCE(MAX(rowid), 0) FROM messages),
                    (SELECT COUNT(*) FROM seeds), (SELECT COUNT(*) FROM pruned_seeds)",
            [],
            |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]),
        )?)
    }

    /// The stored envelopes among `ids` (ids not held here are left out), in no order.
    pub fn wanted_envelopes(&self, ids: &[MessageId]) -> Result<Vec<WantedEnvelope>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seed_id, sender, kind = 'seed_created', lamport, envelope FROM messages
             WHERE id = ?1 AND envelope IS NOT NULL",
        )?;
        let mut out = Vec::new();
        for id in ids {
            let mut rows = stmt.query([id.as_str()])?;
            if let Some(r) = rows.next()? {
                let (seed, sender): (String, String) = (r.get(0)?, r.get(1)?);
                out.push(WantedEnvelope {
                    seed: SeedId::parse(&seed)?,
                    sender: NodeId::parse(&sender)?,
                    creation: r.get(2)?,
                    lamport: r.get(3)?,
                    envelope: r.get(4)?,
                });
            }
        }
        Ok(out)
    }
}
