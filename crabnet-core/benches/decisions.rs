//! What a node holding many seeds reads on its timers: one due decision (a bid window ends,
//! the node closes bidding) on a node that also holds `open` other seeds of its own, still in
//! their bid windows, the store reads of one alert sample, and one overview (its state digest
//! covers every seed), against the same on a node with none, in the same run. A node
//! publishing thousands of seeds takes thousands of decisions, each at its own time: a
//! decision that reads every open seed makes the whole load quadratic; a sample that reads
//! every stored message costs an idle node CPU in proportion to its store.
//!
//! The node is a [`Driven`] node on a [`ManualClock`]: the clock is set to each window's end
//! in turn and one housekeeping pass (`Driven::tick`, the code the housekeeping task runs)
//! is timed; it must issue exactly that seed's decision.
//!
//! ```sh
//! cargo bench -p crabnet-core --bench decisions            # 0, 1,000 and 5,000 open seeds
//! cargo bench -p crabnet-core --bench decisions -- 20000   # other sizes
//! ```
//!
//! Results and how to read them: `BENCHMARKS.md`, "A node holding many seeds".

use std::sync::Arc;
use std::time::{Duration, Instant};

use crabnet_core::clock::ManualClock;
use crabnet_core::node::Driven;
use crabnet_core::store::{Store, StoreConfig};
use crabnet_core::{Config, PublishRequest, SeedStatus};

/// Seeds whose windows end one after another, one decision each.
const DUE: u64 = 50;
/// When the clock starts (Unix ms).
const START_MS: u64 = 1_800_000_000_000;

/// What one size measured: one housekeeping pass that issues one decision, the store reads of
/// one alert sample, and one overview (what the monitor, `/metrics` and `crabnet status` read).
#[derive(Clone)]
struct Measured {
    decision: Duration,
    decision_mean: Duration,
    sample: Duration,
    overview: Duration,
}

/// The median of `times`.
fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Times the `DUE` decisions of a node that also holds `open` seeds in their bid windows,
/// then the store reads of its alert sample (`alerts.interval_ms`, 5 s by default: what an
/// idle node does most often), through a second handle on its database as another process
/// would.
fn run(rt: &tokio::runtime::Runtime, open: usize) -> Measured {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::with_data_dir(dir.path().join("publisher"));
    config.events.log_enabled = false;
    config.store.sync = crabnet_core::store::SyncMode::Normal;
    let db = config.db_path();
    let clock = ManualClock::new(START_MS);
    let node = rt
        .block_on(Driven::start(config, Arc::new(clock.clone())))
        .expect("start");
    let publish = |window: u64, what: String| {
        let req = PublishRequest {
            description: what,
            bid_window_secs: window,
            ..PublishRequest::new("true")
        };
        rt.block_on(node.node().publish(req))
            .expect("publish")
            .seed
            .id
    };
    for i in 0..open {
        publish(86_400, format!("open {i}"));
    }
    let due: Vec<_> = (1..=DUE).map(|i| publish(i, format!("due {i}"))).collect();
    // Sent, as a node on a network sends them: the outbox holds no backlog.
    node.outbox().expect("outbox");
    node.tick().expect("first pass");
    let mut times = Vec::new();
    for (i, id) in (1..=DUE).zip(&due) {
        clock.set(START_MS + i * 1_000);
        let start = Instant::now();
        node.tick().expect("housekeeping pass");
        times.push(start.elapsed());
        let view = rt.block_on(node.node().seed(id)).expect("read");
        assert_ne!(view.status, SeedStatus::Open, "the due decision was issued");
    }
    let open_left = rt
        .block_on(node.node().overview())
        .expect("overview")
        .seeds_by_status[&SeedStatus::Open];
    assert_eq!(open_left, open as u64, "only the due seeds were decided");
    let store = Store::open(&db, &StoreConfig::default()).expect("second handle");
    let samples = (0..DUE)
        .map(|_| {
            let start = Instant::now();
            store.alert_readings().expect("alert sample reads");
            start.elapsed()
        })
        .collect();
    drop(store);
    let overviews = (0..DUE)
        .map(|_| {
            let start = Instant::now();
            rt.block_on(node.node().overview()).expect("overview");
            start.elapsed()
        })
        .collect();
    rt.block_on(node.stop()).expect("stop");
    Measured {
        decision_mean: times.iter().sum::<Duration>() / times.len() as u32,
        decision: median(times),
        sample: median(samples),
        overview: median(overviews),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any number is a size to measure instead of the defaults.
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 5_000]
    } else {
        sizes
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let floor = run(&rt, 0);
    println!(
        "open seeds | one decision (median) | mean | ratio | alert sample reads (median) | ratio \
         | overview (median) | ratio"
    );
    println!("---: | ---: | ---: | ---: | ---: | ---: | ---: | ---:");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    for (open, m) in std::iter::once((0, floor.clone()))
        .chain(sizes.into_iter().map(|open| (open, run(&rt, open))))
    {
        println!(
            "{open} | {:.3} ms | {:.3} ms | {:.2} | {:.3} ms | {:.2} | {:.3} ms | {:.2}",
            ms(m.decision),
            ms(m.decision_mean),
            ratio(m.decision, floor.decision),
            ms(m.sample),
            ratio(m.sample, floor.sample),
            ms(m.overview),
            ratio(m.overview, floor.overview)
        );
    }
}
