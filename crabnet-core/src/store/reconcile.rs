//! The store side of sync by range-based set reconciliation ([`crate::sync::range`]): the
//! stored messages as reconciliation items, which of them belong to private seeds and who may
//! receive those, and the envelopes a peer asked for.

use std::collections::BTreeMap;

use super::{Ops, RemoteOutcome, Store, from_json};
use crate::error::Result;
use crate::model::{Message, MessageId, Millis, NodeId, SeedId};
use crate::state::SeedView;
use crate::sync::range::Item;

/// Where the reconciliation items of a store stand ([`Store::sync_mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncMark {
    /// The highest row of `messages` (0 when there is none).
    pub last_row: i64,
    /// Messages pruned by retention so far.
    pub pruned: i64,
}

/// A stored envelope a peer asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedEnvelope {
    /// The message's id.
    pub id: MessageId,
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
    /// Where the reconciliation items stand, read in O(log n): the highest row of `messages`
    /// and how many messages retention has pruned so far. Rows are only ever added above the
    /// highest one, and only retention deletes messages (`retention.messages_pruned` grows in
    /// the same transaction): while `pruned` stays, the items are those read before plus the
    /// rows above the old mark ([`Store::sync_items_between`]).
    pub fn sync_mark(&self) -> Result<SyncMark> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT (SELECT COALESCE(MAX(rowid), 0) FROM messages),
                        (SELECT COALESCE(MAX(value), 0) FROM counters
                         WHERE name = 'retention.messages_pruned')",
            )?
            .query_row([], |r| {
                Ok(SyncMark {
                    last_row: r.get(0)?,
                    pruned: r.get(1)?,
                })
            })?)
    }

    /// Every stored message that has an envelope, as a reconciliation item (unordered).
    pub fn sync_items(&self) -> Result<Vec<Item>> {
        self.sync_items_between(0, i64::MAX)
    }

    /// The stored messages with an envelope whose row is above `after` and at most `upto`
    /// (marks from [`Store::sync_mark`]), as reconciliation items (unordered): what was stored
    /// between the two marks, read in O(rows read + log n).
    pub fn sync_items_between(&self, after: i64, upto: i64) -> Result<Vec<Item>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT timestamp, id, seed_id FROM messages
             WHERE rowid > ?1 AND rowid <= ?2 AND envelope IS NOT NULL",
        )?;
        let rows = stmt.query_map([after, upto], |r| <(i64, String, String)>::try_from(r))?;
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

    /// Which of `seeds` are private seeds held here, each with the nodes that may receive its
    /// messages (its audience and its publisher); O(seeds x log n).
    pub fn private_among(&self, seeds: &[SeedId]) -> Result<BTreeMap<SeedId, Vec<NodeId>>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT view FROM seeds
             WHERE id = ?1 AND json_array_length(view, '$.seed.audience') > 0",
        )?;
        let mut out = BTreeMap::new();
        for seed in seeds {
            let mut rows = stmt.query([seed.as_str()])?;
            if let Some(r) = rows.next()? {
                let view: SeedView = from_json(&r.get::<_, String>(0)?, "seed view")?;
                let mut allowed = view.seed.audience;
                allowed.push(view.seed.publisher);
                out.insert(view.seed.id, allowed);
            }
        }
        Ok(out)
    }

    /// Applies `messages` received from the network (each with its envelope, verbatim) in one
    /// transaction, each exactly as [`Store::apply_remote`] applies it: a bulk import of
    /// envelopes, such as a new node's copy of a peer's history, at one commit for all. One
    /// that fails rolls them all back (so they share the transaction, with no savepoint each:
    /// [`Ops::Shared`]). The caller has checked the envelopes' signatures, as for
    /// [`Store::apply_remote`]. Returns each message's outcome, in order; the events are
    /// stored, not returned.
    pub fn apply_remote_all<'a>(
        &mut self,
        messages: impl IntoIterator<Item = (&'a Message, &'a [u8])>,
        now: Millis,
    ) -> Result<Vec<RemoteOutcome>> {
        self.begin_batch(Ops::Shared)?;
        let mut out = Vec::new();
        for (message, envelope) in messages {
            match self.apply_remote(message, envelope, now) {
                Ok((outcome, _)) => out.push(outcome),
                Err(e) => {
                    let _ = self.end_batch(false);
                    return Err(e);
                }
            }
        }
        self.end_batch(true)?;
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

    /// Whether the peer table holds any peer (a node that knows none has nobody to sync
    /// with yet).
    pub fn knows_a_peer(&self) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT EXISTS (SELECT 1 FROM peers)", [], |r| r.get(0))?)
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
                    id: id.clone(),
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
