//! Garbage-flood benchmark (issue 12): one thread sends 200-byte garbage datagrams as fast as
//! it can at a node on a real UDP socket on 127.0.0.1 for 20 s while a real peer publishes a
//! seed every 500 ms; the same run without the flood is the baseline. Reports the flood rate,
//! how many datagrams the node read, the peer's publish -> applied latency (median, p99) and
//! the growth of the node's database file plus WAL.
//!
//! Run: `cargo bench -p crabnet-core --bench flood` (release). Prints a Markdown table for
//! BENCHMARKS.md. `CRABNET_FLOOD_SECS` changes the duration.

#[path = "../tests/flood/mod.rs"]
mod flood;

use std::time::Duration;

fn main() {
    let secs: u64 = std::env::var("CRABNET_FLOOD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| run | garbage sent (/s) | read by the node | seeds arrived | median (ms) | p99 (ms) | database + WAL growth |"
    );
    println!("|---|---|---|---|---|---|---|");
    for flooding in [false, true] {
        let r = rt.block_on(flood::run(
            flooding,
            Duration::from_secs(secs),
            Duration::from_millis(500),
            Duration::from_secs(60),
        ));
        let read = r.counters.get("rejected.malformed").copied().unwrap_or(0);
        println!(
            "| {} {secs} s | {} ({:.0}) | {read} | {}/{} | {:.1} | {:.1} | {:.2} MB |",
            if flooding { "flood" } else { "baseline" },
            r.sent,
            r.sent_per_sec,
            r.arrived,
            r.published,
            r.percentile(0.5).as_secs_f64() * 1000.0,
            r.percentile(0.99).as_secs_f64() * 1000.0,
            r.db_growth as f64 / 1e6,
        );
    }
}
