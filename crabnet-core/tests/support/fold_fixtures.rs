//! Fixtures shared by the state-machine tests (`state_machine.rs`, `replicated_state.rs`).
//! They include this file alone with `#[path]`, not the whole `support` module.

use crabnet_core::model::{NodeId, SeedId, TaskResult};

/// A successful 5 ms run of `runner` on `seed_id` that finished at `at` (Unix ms) with output
/// hash `output_sha256` and no output.
pub fn task_result(seed_id: SeedId, runner: NodeId, output_sha256: String, at: u64) -> TaskResult {
    TaskResult {
        seed_id,
        runner,
        exit_code: Some(0),
        signal: None,
        timed_out: false,
        interrupted: false,
        success: true,
        duration_ms: 5,
        output_sha256,
        output_bytes: 0,
        output_excerpt: String::new(),
        output_truncated: false,
        started_at: at - 5,
        finished_at: at,
        sandbox: Default::default(),
    }
}

/// A deterministic pseudo-random delivery order of `n` messages, from `seed`: every index
/// once, and every third one (shifted by `seed`) twice.
pub fn deliver_order(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n)
        .chain((0..n).filter(|i| (i + seed as usize).is_multiple_of(3)))
        .collect();
    let mut x = seed | 1;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}
