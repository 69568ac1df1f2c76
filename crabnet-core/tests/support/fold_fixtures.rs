//! Fixtures shared by the state-machine tests (`state_machine.rs`, `replicated_state.rs`),
//! which include this file alone with `#[path]`, not the whole `support` module; [`seed`] also
//! serves the envelope tests and `support::forge` through `support`.

use crabnet_core::model::{NodeId, Seed, SeedId, TaskResult};

/// A public rules-1 seed `id` by `publisher` published at `created_at` (Unix ms): `echo hi`,
/// prices 10 to 100, a 30 s bid window, 3 bids at most, a 10 s timeout. Tests change the
/// fields they are about with struct update syntax.
pub fn seed(id: SeedId, publisher: NodeId, created_at: u64) -> Seed {
    Seed {
        id,
        publisher,
        command: "echo hi".into(),
        description: String::new(),
        min_price: 10,
        max_price: 100,
        bid_window_secs: 30,
        max_bids: 3,
        timeout_secs: 10,
        created_at,
        audience: Vec::new(),
        network: false,
        isolation: crabnet_core::model::SandboxLevel::Full,
        rules: crabnet_core::model::rules::V1,
        deadlines: None,
        replication: None,
    }
}

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
