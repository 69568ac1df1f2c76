//! Garbage-flood benchmark (issue 12, item 7): one thread sends 200-byte garbage datagrams at a
//! node on a real UDP socket on 127.0.0.1 for 20 s while a real peer publishes a seed every
//! 500 ms. Three runs: no flood (the baseline), a flood paced at the 50,000 datagrams/s,
//! and a flood as fast as one thread can send. Reports the flood rate, how many datagrams the
//! node read and the kernel dropped, the peer's publish -> applied latency (median, p99), and
//! the growth of the node's database file plus WAL: raw, and over the baseline's growth for as
//! many seeds (the flood's own cost).
//!
//! Run: `cargo bench --workspace --bench flood` (release). Prints a Markdown table for
//! BENCHMARKS.md. `CRABNET_FLOOD_SECS` changes the duration, `CRABNET_FLOOD_RATE` the paced rate.

#[path = "../tests/flood/mod.rs"]
mod flood;

use std::time::Duration;

use flood::{Flood, Report};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let secs = env("CRABNET_FLOOD_SECS", 20);
    let rate = env("CRABNET_FLOOD_RATE", 50_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| run | garbage sent (/s) | read by the node | dropped by the kernel | seeds arrived | median (ms) | p99 (ms) | database + WAL growth | over the baseline |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut per_seed = None;
    for (name, flooding) in [
        ("baseline".to_owned(), Flood::Off),
        (format!("paced {rate}/s"), Flood::Paced(rate)),
        ("max rate".to_owned(), Flood::Max),
    ] {
        let r: Report = rt.block_on(flood::run(
            flood::free_sockets(),
            flooding,
            Duration::from_secs(secs),
            Duration::from_millis(500),
            Duration::from_secs(60),
        ));
        // The baseline's growth per seed applied; a flood run's cost is its growth beyond that
        // for the seeds it applied.
        let per_seed = *per_seed.get_or_insert(r.db_growth as f64 / r.arrived.max(1) as f64);
        let over = r.db_growth as f64 - per_seed * r.arrived as f64;
        println!(
            "| {name} {secs} s | {} ({:.0}) | {} | {} | {}/{} | {:.1} | {:.1} | {:.2} MB | {:+.2} MB |",
            r.sent,
            r.sent_per_sec,
            r.read(),
            r.kernel_drops
                .map_or_else(|| "n/a".to_owned(), |d| d.to_string()),
            r.arrived,
            r.published,
            r.percentile(0.5).as_secs_f64() * 1000.0,
            r.percentile(0.99).as_secs_f64() * 1000.0,
            r.db_growth as f64 / 1e6,
            over / 1e6,
        );
    }
}
