//! Sync: how a node that started late, restarted or was cut off catches up without anyone
//! re-running anything.
//!
//! Nodes periodically reconcile what they hold with their peers by ranges ([`range`]): the
//! rounds and bytes follow the difference, not the store. What a node lacks it asks for by
//! message id; the peer answers with the stored envelopes verbatim (their signatures still
//! verify), preceded by the hellos of their authors, packed into [`Batch`] envelopes that fit
//! the transport.
//!
//! The previous version's [`Digest`] (per seed, the number of stored messages and a hash of
//! their ids, at most 1,200 seeds) is still answered, for nodes of that version: with the
//! stored envelopes of every seed the digest lacks or describes differently, and with a digest
//! of our own (marked as a reply, never answered with a digest again) when it shows seeds we
//! lack. See `docs/PROTOCOL.md` section 7.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::model::SeedId;

pub mod range;

/// One seed's entry in a digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedDigest {
    /// The seed id (16 bytes).
    #[serde(with = "serde_bytes")]
    pub seed: Vec<u8>,
    /// How many messages about it the sender stores.
    pub count: u32,
    /// The first 8 bytes of SHA-256 over its sorted message ids (16 bytes each).
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
}

/// The payload of a `sync_digest` envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// Whether this digest answers another one (and must not be answered with a digest).
    pub reply: bool,
    /// Entries, most recently changed seeds first.
    pub seeds: Vec<SeedDigest>,
}

/// The payload of a `sync_batch` envelope: stored envelopes, verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The envelopes.
    pub items: Vec<serde_bytes::ByteBuf>,
}

/// Digest entry for one seed from its message ids (lowercase hex, any order).
pub fn seed_digest(seed: &SeedId, ids: &mut [String]) -> SeedDigest {
    ids.sort();
    let mut h = Sha256::new();
    for id in ids.iter() {
        h.update(hex::decode(id).unwrap_or_default());
    }
    SeedDigest {
        seed: hex::decode(seed.as_str()).expect("ids are hex"),
        count: ids.len() as u32,
        hash: h.finalize()[..8].to_vec(),
    }
}

/// What a digest from a peer means for us.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// Seeds we hold that the peer lacks or holds differently: send them.
    pub to_send: Vec<SeedId>,
    /// Whether the peer holds seeds (or versions) we lack: ask with our own digest.
    pub peer_has_more: bool,
}

/// Compares our digest entries with a peer's.
pub fn compare(ours: &[SeedDigest], theirs: &[SeedDigest]) -> Comparison {
    let theirs: BTreeMap<&[u8], &SeedDigest> =
        theirs.iter().map(|d| (d.seed.as_slice(), d)).collect();
    let ours_map: BTreeMap<&[u8], &SeedDigest> =
        ours.iter().map(|d| (d.seed.as_slice(), d)).collect();
    let mut out = Comparison::default();
    for d in ours {
        match theirs.get(d.seed.as_slice()) {
            Some(t) if t.hash == d.hash => {}
            _ => {
                if let Ok(bytes) = <[u8; 16]>::try_from(d.seed.as_slice()) {
                    out.to_send.push(SeedId::from_bytes(bytes));
                }
            }
        }
    }
    out.peer_has_more = theirs
        .iter()
        .any(|(seed, t)| ours_map.get(seed).is_none_or(|o| o.hash != t.hash));
    out
}

/// CBOR overhead of a batch: map + key + array header (~16 bytes).
const BATCH_OVERHEAD: usize = 24;
/// CBOR overhead per item: up to 5 bytes of byte-string header.
const ITEM_OVERHEAD: usize = 5;

/// Packs envelopes into batches whose encoded payload stays under `max_payload` bytes. An
/// envelope too large for any batch on its own is left out (it can only travel live).
pub fn pack(envelopes: Vec<Vec<u8>>, max_payload: usize) -> Vec<Batch> {
    let mut queue = envelopes.into();
    let mut batches = Vec::new();
    loop {
        let batch = next_batch(&mut queue, max_payload, max_payload);
        if batch.items.is_empty() {
            return batches;
        }
        batches.push(batch);
    }
}

/// Takes envelopes from the front of `queue` into one batch whose encoded payload stays under
/// `room` bytes (at most `max_payload`), in order: it stops at the first envelope that does
/// not fit, so that a hello is never separated from the envelopes that need it. Envelopes too
/// large for any batch of `max_payload` are dropped. An empty batch: nothing (more) fits.
pub fn next_batch(
    queue: &mut std::collections::VecDeque<Vec<u8>>,
    room: usize,
    max_payload: usize,
) -> Batch {
    let room = room.min(max_payload);
    let mut items = Vec::new();
    let mut size = BATCH_OVERHEAD;
    while let Some(e) = queue.front() {
        let item = e.len() + ITEM_OVERHEAD;
        if BATCH_OVERHEAD + item > max_payload {
            queue.pop_front();
            continue;
        }
        if size + item > room {
            break;
        }
        size += item;
        items.extend(queue.pop_front().map(serde_bytes::ByteBuf::from));
    }
    Batch { items }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(n: u8) -> SeedId {
        SeedId::from_bytes([n; 16])
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i:032x}")).collect()
    }

    #[test]
    fn digest_is_order_independent_and_compare_finds_both_directions() {
        let mut a = ids(3);
        let mut b = ids(3);
        b.reverse();
        assert_eq!(seed_digest(&seed(1), &mut a), seed_digest(&seed(1), &mut b));
        let ours = vec![
            seed_digest(&seed(1), &mut ids(3)),
            seed_digest(&seed(2), &mut ids(1)),
        ];
        let theirs = vec![
            seed_digest(&seed(1), &mut ids(2)),
            seed_digest(&seed(3), &mut ids(1)),
        ];
        let c = compare(&ours, &theirs);
        assert_eq!(c.to_send, vec![seed(1), seed(2)]);
        assert!(c.peer_has_more);
        let same = compare(&ours, &ours);
        assert!(same.to_send.is_empty() && !same.peer_has_more);
    }

    #[test]
    fn batches_fit_the_limit_and_keep_every_envelope_that_fits() {
        let envs: Vec<Vec<u8>> = (0..10).map(|i| vec![i as u8; 3000]).collect();
        let batches = pack(envs.clone(), 10_000);
        assert_eq!(batches.len(), 4);
        for b in &batches {
            let mut out = Vec::new();
            ciborium::into_writer(b, &mut out).unwrap();
            assert!(out.len() <= 10_000, "{}", out.len());
        }
        let flat: Vec<Vec<u8>> = batches
            .into_iter()
            .flat_map(|b| b.items)
            .map(|i| i.into_vec())
            .collect();
        assert_eq!(flat, envs);
        assert!(pack(vec![vec![0; 20_000]], 10_000).is_empty());
    }

    #[test]
    fn a_batch_within_a_budget_stops_at_the_first_envelope_that_does_not_fit() {
        let mut queue: std::collections::VecDeque<Vec<u8>> =
            [vec![1; 1000], vec![2; 3000], vec![3; 10], vec![4; 20_000]].into();
        let b = next_batch(&mut queue, 2000, 10_000);
        assert_eq!(b.items.len(), 1);
        // The 3000-byte envelope does not fit in 2000 bytes; the small one behind it waits.
        assert_eq!(queue.len(), 3);
        let b = next_batch(&mut queue, 100_000, 10_000);
        assert_eq!(b.items.len(), 2);
        // Too large for any batch: dropped, not blocking.
        assert!(next_batch(&mut queue, 100_000, 10_000).items.is_empty());
        assert!(queue.is_empty());
    }
}
