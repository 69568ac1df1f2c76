//! One sync round over a large store: the first query of an exchange (fingerprints of the
//! whole item set in 16 ranges) and the answer to it from an identical store, with Crabnet's
//! item set (`sync::range::ItemSet`: running sums of the keys, so a range's fingerprint is
//! one subtraction) against the `negentropy` crate's own vector storage (a pass over every
//! item of every range), on the same items in the same run.
//!
//! ```sh
//! cargo bench -p crabnet-core --bench sync
//! ```
//!
//! Results and how to read them: `BENCHMARKS.md`, "Sync bytes".

use std::hint::black_box;

use crabnet_core::sync::range::{Item, ItemSet, MIN_FRAME_LIMIT};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use negentropy::{Id, Negentropy, NegentropyStorageVector, Storage};

/// Frame limit of the default `max_envelope_bytes` (as `docs/PROTOCOL.md` section 7 says).
const LIMIT: usize = 62_900;

fn items(n: u64) -> Vec<Item> {
    (0..n)
        .map(|i| {
            let mut message = [0u8; 16];
            message[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
            message[8..].copy_from_slice(&i.to_le_bytes());
            let mut seed = [0u8; 16];
            seed[..8].copy_from_slice(&(i / 6).to_be_bytes());
            Item {
                timestamp: 1_700_000_000_000 + i * 13,
                message,
                seed,
            }
        })
        .collect()
}

/// The crate's vector storage holding the same keys as `ItemSet` (message id, then seed id).
fn vector(items: &[Item]) -> NegentropyStorageVector {
    let mut v = NegentropyStorageVector::new();
    for item in items {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(&item.message);
        key[16..].copy_from_slice(&item.seed);
        v.insert(item.timestamp, Id::from_byte_array(key)).unwrap();
    }
    v.seal().unwrap();
    v
}

fn round(c: &mut Criterion) {
    let mut group = c.benchmark_group("sync_round");
    for n in [10_000u64, 100_000] {
        let all = items(n);
        let set = ItemSet::new(all.iter().copied());
        let crate_storage = vector(&all);
        let engine = || {
            Negentropy::new(
                Storage::Borrowed(&crate_storage),
                LIMIT.max(MIN_FRAME_LIMIT) as u64,
            )
            .unwrap()
        };
        let query = set.query(LIMIT);
        assert_eq!(query, engine().initiate().unwrap(), "the same first query");
        group.bench_with_input(BenchmarkId::new("query_itemset", n), &n, |b, _| {
            b.iter(|| black_box(set.query(LIMIT)))
        });
        group.bench_with_input(BenchmarkId::new("query_crate_vector", n), &n, |b, _| {
            b.iter(|| black_box(engine().initiate().unwrap()))
        });
        group.bench_with_input(BenchmarkId::new("answer_itemset", n), &n, |b, _| {
            b.iter(|| black_box(set.answer(&query, LIMIT).unwrap()))
        });
        group.bench_with_input(BenchmarkId::new("answer_crate_vector", n), &n, |b, _| {
            b.iter(|| black_box(engine().reconcile(&query).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, round);
criterion_main!(benches);
