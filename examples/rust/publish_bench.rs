//! Publish throughput through the Rust API, one call after another: the reference that
//! `scripts/bench-bindings.py` compares the C ABI (`examples/c/publish_bench.c`) and Python
//! with.
//!
//! Run: `cargo run --release -p crabnet-core --example publish_bench -- DATA_DIR COUNT`
//!
//! Starts a node without a network on DATA_DIR, publishes COUNT seeds through
//! [`BlockingNode::publish`] (the clock runs from the first call to the last return only) and
//! prints one line: `rust COUNT MICROSECONDS`.

use std::time::Instant;

use crabnet_core::{BlockingNode, Config, Error, ErrorKind, PublishRequest};

fn main() -> crabnet_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let count: usize = match (args.len(), args.get(2).and_then(|c| c.parse().ok())) {
        (3, Some(count)) if count > 0 => count,
        _ => {
            return Err(Error::new(
                ErrorKind::Validation,
                "usage: publish_bench DATA_DIR COUNT",
            ));
        }
    };
    let node = BlockingNode::start(Config::with_data_dir(&args[1]))?;
    let start = Instant::now();
    for i in 0..count {
        let mut req = PublishRequest::new(format!("echo bench {i}"));
        req.bid_window_secs = 3600;
        node.publish(req)?;
    }
    let elapsed = start.elapsed();
    node.stop()?;
    println!("rust {count} {:.0}", elapsed.as_secs_f64() * 1e6);
    Ok(())
}
