//! Range-based set reconciliation: two nodes find the messages one holds and the other lacks
//! in a number of rounds and bytes that grow with the difference (times the logarithm of the
//! store's size), not with the store.
//!
//! Every stored message is an [`Item`] keyed by its timestamp and id. The initiator sends
//! fingerprints of ranges of its items; the responder compares them with its own, splits the
//! ranges that differ into sixteen and answers with their fingerprints, or with the item ids
//! when a range is small; the initiator goes on with the ranges that still differ. Neither
//! side keeps state between rounds: each round describes ranges over the whole key space, so
//! a lost round simply ends an exchange that the next sync interval starts again. This is
//! the Negentropy protocol (version 1, crate `negentropy`), with 32-byte item ids made of the
//! message id followed by its seed id, so that the initiator knows the seed of every message
//! it lacks before it asks for it (and asks for none of a seed it pruned). The wire format is
//! in `docs/PROTOCOL.md` section 7.

use negentropy::{
    Accumulator, Bound, Fingerprint, Id, Negentropy, NegentropyStorageBase,
    NegentropyStorageVector, Storage,
};
use serde::{Deserialize, Serialize};

use crate::model::{MessageId, SeedId};

/// The smallest frame size limit the protocol allows.
pub const MIN_FRAME_LIMIT: usize = 4096;

/// One stored message as it is reconciled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Item {
    /// The message's timestamp (Unix ms).
    pub timestamp: u64,
    /// The message id.
    pub message: [u8; 16],
    /// The id of the seed it is about.
    pub seed: [u8; 16],
}

impl Item {
    fn key(&self) -> Id {
        let mut id = [0u8; 32];
        id[..16].copy_from_slice(&self.message);
        id[16..].copy_from_slice(&self.seed);
        Id::from_byte_array(id)
    }
}

/// The payload of a `sync_range` envelope (kind 12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    /// `false`: a query from the initiator, answered with a reply. `true`: the responder's
    /// reply, which the initiator follows with its next query (if ranges still differ) and a
    /// `sync_want` for what it lacks; a reply is never answered with a reply.
    pub reply: bool,
    /// The Negentropy message (protocol version 1, first byte `0x61`).
    #[serde(with = "serde_bytes")]
    pub msg: Vec<u8>,
}

/// The payload of a `sync_want` envelope (kind 13): message ids the sender lacks and asks the
/// receiver for (16 bytes each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Want {
    /// The ids.
    pub ids: Vec<serde_bytes::ByteBuf>,
}

/// Bytes of one id in a [`Want`] once encoded (byte string header + 16 bytes).
const WANT_ID_BYTES: usize = 17;
/// Room a [`Want`]'s map and array headers take.
const WANT_OVERHEAD: usize = 16;
/// Room a [`Round`]'s map headers and field names take.
const ROUND_OVERHEAD: usize = 32;

/// A reconciliation message that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed reconciliation message: {0}")]
pub struct RangeError(String);

fn malformed(e: negentropy::Error) -> RangeError {
    RangeError(e.to_string())
}

/// What the initiator learned from a reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The next query, when some ranges still differ.
    pub next: Option<Vec<u8>>,
    /// Messages the peer holds and we lack: (message id, seed id).
    pub need: Vec<(MessageId, SeedId)>,
    /// Messages we hold and the peer lacks: (message id, seed id).
    pub have: Vec<(MessageId, SeedId)>,
}

/// The largest Negentropy message that fits a `sync_range` payload of `max_payload` bytes.
pub fn frame_limit(max_payload: usize) -> usize {
    max_payload
        .saturating_sub(ROUND_OVERHEAD)
        .max(MIN_FRAME_LIMIT)
}

/// The most ids one [`Want`] asks for: its answer (a few KB per envelope) must stay well
/// within what one answer carries.
pub const MAX_WANT_IDS: usize = 1024;

/// The most ids a [`Want`] payload of `max_payload` bytes holds (at most [`MAX_WANT_IDS`]).
pub fn want_capacity(max_payload: usize) -> usize {
    (max_payload.saturating_sub(WANT_OVERHEAD) / WANT_ID_BYTES).clamp(1, MAX_WANT_IDS)
}

/// A sorted set of items, ready to reconcile.
#[derive(Debug)]
pub struct ItemSet {
    storage: PrefixStorage,
}

/// The sorted items, with the running sums of their keys (little-endian 256-bit numbers,
/// modulo 2^256): the fingerprint of any range is the difference of two sums, so a round costs
/// a few binary searches per range, not a pass over every item in the ranges it describes (the
/// first query of an exchange describes the whole set). Everything else is the crate's vector
/// storage.
#[derive(Debug)]
struct PrefixStorage {
    items: NegentropyStorageVector,
    /// `sums[i]`: the sum of the keys of the first `i` items; `sums.len()` is one more than the
    /// items'.
    sums: Vec<[u64; 4]>,
}

impl PrefixStorage {
    fn new(items: NegentropyStorageVector) -> Self {
        let mut sums = Vec::with_capacity(items.size().unwrap_or(0) + 1);
        let mut sum = [0u64; 4];
        sums.push(sum);
        // A sealed storage iterates without error.
        let _ = items.iterate(0, items.size().unwrap_or(0), &mut |item, _| {
            sum = add(sum, lanes(&item.id));
            sums.push(sum);
            Ok(true)
        });
        PrefixStorage { items, sums }
    }
}

/// A 32-byte key as four little-endian 64-bit lanes (least significant first).
fn lanes(key: &[u8; 32]) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (lane, chunk) in out.iter_mut().zip(key.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *lane = u64::from_le_bytes(b);
    }
    out
}

/// `a + b` modulo 2^256.
fn add(a: [u64; 4], b: [u64; 4]) -> [u64; 4] {
    let mut out = [0u64; 4];
    let mut carry = false;
    for i in 0..4 {
        let (s, c1) = a[i].overflowing_add(b[i]);
        let (s, c2) = s.overflowing_add(u64::from(carry));
        out[i] = s;
        carry = c1 || c2;
    }
    out
}

/// `a - b` modulo 2^256: `a` plus the two's complement of `b`.
fn sub(a: [u64; 4], b: [u64; 4]) -> [u64; 4] {
    add(a, add(b.map(|lane| !lane), [1, 0, 0, 0]))
}

impl NegentropyStorageBase for PrefixStorage {
    fn size(&self) -> Result<usize, negentropy::Error> {
        self.items.size()
    }

    fn get_item(&self, i: usize) -> Result<Option<negentropy::Item>, negentropy::Error> {
        self.items.get_item(i)
    }

    fn iterate(
        &self,
        begin: usize,
        end: usize,
        cb: &mut dyn FnMut(negentropy::Item, usize) -> Result<bool, negentropy::Error>,
    ) -> Result<(), negentropy::Error> {
        self.items.iterate(begin, end, cb)
    }

    fn find_lower_bound(&self, first: usize, last: usize, value: &Bound) -> usize {
        self.items.find_lower_bound(first, last, value)
    }

    /// The crate's fingerprint (SHA-256 over the sum of the keys modulo 2^256 and the count),
    /// the sum taken from the running sums.
    fn fingerprint(&self, begin: usize, end: usize) -> Result<Fingerprint, negentropy::Error> {
        let (Some(high), Some(low)) = (self.sums.get(end), self.sums.get(begin)) else {
            return Err(negentropy::Error::BadRange);
        };
        if begin > end {
            return Err(negentropy::Error::BadRange);
        }
        let mut key = [0u8; 32];
        for (chunk, lane) in key.chunks_exact_mut(8).zip(sub(*high, *low)) {
            chunk.copy_from_slice(&lane.to_le_bytes());
        }
        let mut acc = Accumulator::new();
        acc.add(&key)?;
        acc.get_fingerprint((end - begin) as u64)
    }
}

impl ItemSet {
    /// The set of `items` (any order; duplicates count once).
    pub fn new(items: impl IntoIterator<Item = Item>) -> Self {
        let mut storage = NegentropyStorageVector::new();
        for item in items {
            // Inserting into an unsealed storage cannot fail.
            let _ = storage.insert(item.timestamp, item.key());
        }
        let _ = storage.seal();
        ItemSet {
            storage: PrefixStorage::new(storage),
        }
    }

    /// The first query of an exchange, at most `limit` bytes.
    pub fn query(&self, limit: usize) -> Vec<u8> {
        let mut n = self.engine(limit);
        // A fresh engine over a sealed storage always builds its first message.
        n.initiate().unwrap_or_default()
    }

    /// The responder's reply to `query`, at most `limit` bytes; `None` when every range
    /// matched (nothing to say).
    pub fn answer(&self, query: &[u8], limit: usize) -> Result<Option<Vec<u8>>, RangeError> {
        let out = self.engine(limit).reconcile(query).map_err(malformed)?;
        Ok((out.len() > 1).then_some(out))
    }

    /// The initiator's step on `reply`: what it lacks, what the peer lacks, and its next query
    /// while ranges still differ (at most `limit` bytes).
    pub fn follow(&self, reply: &[u8], limit: usize) -> Result<Progress, RangeError> {
        let mut n = self.engine(limit);
        n.set_initiator();
        let mut have = Vec::new();
        let mut need = Vec::new();
        let next = n
            .reconcile_with_ids(reply, &mut have, &mut need)
            .map_err(malformed)?;
        let ids = |ids: Vec<Id>| {
            ids.into_iter()
                .map(|id| {
                    let b = id.to_bytes();
                    let mut message = [0u8; 16];
                    let mut seed = [0u8; 16];
                    message.copy_from_slice(&b[..16]);
                    seed.copy_from_slice(&b[16..]);
                    (MessageId::from_bytes(message), SeedId::from_bytes(seed))
                })
                .collect()
        };
        Ok(Progress {
            next,
            need: ids(need),
            have: ids(have),
        })
    }

    fn engine(&self, limit: usize) -> Negentropy<'_, PrefixStorage> {
        let limit = limit.max(MIN_FRAME_LIMIT) as u64;
        Negentropy::new(Storage::Borrowed(&self.storage), limit)
            .expect("the frame limit is at least the protocol's minimum")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(i: u64) -> Item {
        let mut message = [0u8; 16];
        message[..8].copy_from_slice(&i.to_be_bytes());
        message[8] = 0x5a;
        let mut seed = [0u8; 16];
        seed[..8].copy_from_slice(&(i / 3).to_be_bytes());
        Item {
            timestamp: 1_700_000_000_000 + i * 37,
            message,
            seed,
        }
    }

    /// The fingerprint of every range, from the running sums, is the one the crate computes
    /// by adding the range's keys (keys chosen so that sums carry across lanes and wrap).
    #[test]
    fn prefix_fingerprints_equal_the_crates_own() {
        for n in [0u64, 1, 2, 17, 70] {
            let mut vector = NegentropyStorageVector::new();
            for i in 0..n {
                let mut key = [0xffu8; 32];
                key[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
                key[31] = (i * 37) as u8;
                vector
                    .insert(1_700_000_000_000 + i, Id::from_byte_array(key))
                    .unwrap();
            }
            vector.seal().unwrap();
            let copy = {
                let mut c = NegentropyStorageVector::new();
                vector
                    .iterate(0, n as usize, &mut |item, _| {
                        c.insert(item.timestamp, item.id)?;
                        Ok(true)
                    })
                    .unwrap();
                c.seal().unwrap();
                c
            };
            let prefix = PrefixStorage::new(copy);
            for begin in 0..=n as usize {
                for end in begin..=n as usize {
                    assert_eq!(
                        *prefix.fingerprint(begin, end).unwrap(),
                        *vector.fingerprint(begin, end).unwrap(),
                        "{n} items, range {begin}..{end}"
                    );
                }
            }
            assert!(prefix.fingerprint(0, n as usize + 1).is_err());
            if n > 0 {
                assert!(prefix.fingerprint(1, 0).is_err());
            }
        }
    }

    /// Runs an exchange between an initiator holding `a` and a responder holding `b`, losing
    /// the replies listed in `lose` (by round): returns what the initiator needs, the bytes
    /// both sides sent, and the rounds.
    fn exchange(
        a: &ItemSet,
        b: &ItemSet,
        limit: usize,
        lose: &[usize],
    ) -> (Vec<MessageId>, usize, usize) {
        let mut need = Vec::new();
        let mut bytes = 0;
        let mut rounds = 0;
        let mut query = a.query(limit);
        loop {
            rounds += 1;
            assert!(query.len() <= limit, "a query of {} bytes", query.len());
            bytes += query.len();
            let Some(reply) = b.answer(&query, limit).unwrap() else {
                break;
            };
            assert!(reply.len() <= limit, "a reply of {} bytes", reply.len());
            bytes += reply.len();
            if lose.contains(&rounds) {
                // Lost: the exchange starts again (the next sync interval).
                query = a.query(limit);
                continue;
            }
            let p = a.follow(&reply, limit).unwrap();
            need.extend(p.need.into_iter().map(|(m, _)| m));
            match p.next {
                Some(next) => query = next,
                None => break,
            }
            assert!(rounds < 100, "no end");
        }
        need.sort();
        need.dedup();
        (need, bytes, rounds)
    }

    /// What the responder `b` lacks of the initiator `a`'s items, by a whole exchange.
    fn haves(a: &ItemSet, b: &ItemSet) -> Vec<MessageId> {
        let mut have = Vec::new();
        let mut query = Some(a.query(60_000));
        while let Some(q) = query.take() {
            let Some(reply) = b.answer(&q, 60_000).unwrap() else {
                break;
            };
            let p = a.follow(&reply, 60_000).unwrap();
            have.extend(p.have.into_iter().map(|(m, _)| m));
            query = p.next;
            assert!(have.len() <= 10_000, "no end");
        }
        have.sort();
        have
    }

    /// `n` shared items, `d` more on the responder spread over the whole range.
    fn stores(n: u64, d: u64) -> (ItemSet, ItemSet, Vec<MessageId>) {
        let a = ItemSet::new((0..n).map(item));
        let step = n / d.max(1);
        let extra: Vec<Item> = (0..d)
            .map(|k| item(n + 1 + k * 7).with_timestamp_of(k * step))
            .collect();
        let b = ItemSet::new((0..n).map(item).chain(extra.iter().copied()));
        let mut want: Vec<MessageId> = extra
            .iter()
            .map(|i| MessageId::from_bytes(i.message))
            .collect();
        want.sort();
        (a, b, want)
    }

    impl Item {
        fn with_timestamp_of(mut self, i: u64) -> Item {
            self.timestamp = item(i).timestamp;
            self
        }
    }

    #[test]
    fn identical_sets_end_after_one_query_without_a_reply() {
        let a = ItemSet::new((0..10_000).map(item));
        let b = ItemSet::new((0..10_000).rev().map(item));
        let (need, bytes, rounds) = exchange(&a, &b, 60_000, &[]);
        assert!(need.is_empty());
        assert_eq!(rounds, 1);
        assert!(bytes < 1_000, "{bytes}");
    }

    #[test]
    fn the_initiator_finds_exactly_what_it_lacks() {
        let (a, b, want) = stores(5_000, 40);
        let (need, _, _) = exchange(&a, &b, 60_000, &[]);
        assert_eq!(need, want);
        // The other way round it lacks nothing, and learns what the peer lacks.
        let (need, _, _) = exchange(&b, &a, 60_000, &[]);
        assert!(need.is_empty());
        assert_eq!(haves(&b, &a), want);
        // An empty initiator learns everything, within the frame limit per round.
        let empty = ItemSet::new([]);
        let (need, _, rounds) = exchange(&empty, &b, 8_000, &[]);
        assert_eq!(need.len(), 5_040);
        assert!(rounds > 1);
    }

    /// Bytes grow with the difference times log(n), not with n: 100 times the store costs
    /// less than three times the bytes (log16 of 100,000 is 4.2, of 1,000 2.5), and 10
    /// differences in 100,000 items cost under 2 KB each where listing the ids would cost
    /// 3.2 MB.
    #[test]
    fn bytes_follow_the_difference_not_the_store() {
        let (a, b, _) = stores(1_000, 10);
        let (need, small, _) = exchange(&a, &b, 60_000, &[]);
        assert_eq!(need.len(), 10);
        let (a, b, _) = stores(100_000, 10);
        let (need, large, rounds) = exchange(&a, &b, 60_000, &[]);
        assert_eq!(need.len(), 10);
        assert!(
            large < 3 * small,
            "{small} bytes for 1,000 items, {large} for 100,000"
        );
        assert!(large < 10 * 2048, "{large} bytes in {rounds} rounds");
        assert!(rounds <= 6, "{rounds} rounds");
        // Ten times the difference costs about ten times the bytes.
        let (a, b, _) = stores(100_000, 100);
        let (need, more, _) = exchange(&a, &b, 60_000, &[]);
        assert_eq!(need.len(), 100);
        assert!(more < 15 * large, "{large} bytes for 10, {more} for 100");
    }

    #[test]
    fn a_lost_round_restarts_and_still_converges() {
        let (a, b, want) = stores(20_000, 25);
        let (need, _, _) = exchange(&a, &b, 60_000, &[1, 3]);
        assert_eq!(need, want);
    }

    #[test]
    fn garbage_is_refused_not_a_panic() {
        let a = ItemSet::new((0..100).map(item));
        for bad in [
            vec![],
            vec![0x61, 0xff, 0xff, 0xff],
            vec![0x61, 1, 0, 2, 0xff],
            vec![0x61, 0, 40, 1, 2, 3],
            vec![0x10],
        ] {
            let _ = a.answer(&bad, 8_000);
            let _ = a.follow(&bad, 8_000);
        }
        assert!(a.follow(&[0x61, 0, 0, 2, 5], 8_000).is_err());
        assert_eq!(frame_limit(100), MIN_FRAME_LIMIT);
        assert_eq!(want_capacity(17 * 10 + 16), 10);
    }
}
