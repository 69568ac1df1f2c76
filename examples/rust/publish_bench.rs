//! Publish throughput through the Rust API, one call after another: the reference that
//! `scripts/bench-bindings.py` compares the C ABI (`examples/c/publish_bench.c`) and Python
//! with.
//!
//! Run: `cargo run --release -p crabnet-core --example publish_bench -- DATA_DIR COUNT [CALLERS]`
//!
//! Starts a node without a network on DATA_DIR, publishes COUNT seeds through
//! [`BlockingNode::publish`] from CALLERS threads at once (default 1: one call after another;
//! the clock runs from the first call to the last return only) and prints one line:
//! `rust COUNT MICROSECONDS`. `CRABNET_BENCH_SYNC=normal` runs the node with
//! `store.sync = "normal"`. With one caller and `CRABNET_BENCH_LOCKSTEP` set, each publish
//! waits for a line on stdin and its time (µs) is printed on a line of its own (see
//! `scripts/bench-bindings.py --lockstep`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crabnet_core::store::SyncMode;
use crabnet_core::{BlockingNode, Config, Error, ErrorKind, PublishRequest};

fn main() -> crabnet_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let number = |i: usize| args.get(i).and_then(|c| c.parse::<usize>().ok());
    let (count, callers) = match (args.len(), number(2), number(3)) {
        (3, Some(count), _) if count > 0 => (count, 1),
        (4, Some(count), Some(callers)) if count > 0 && callers > 0 => (count, callers),
        _ => {
            return Err(Error::new(
                ErrorKind::Validation,
                "usage: publish_bench DATA_DIR COUNT [CALLERS]",
            ));
        }
    };
    let mut config = Config::with_data_dir(&args[1]);
    if std::env::var("CRABNET_BENCH_SYNC").as_deref() == Ok("normal") {
        config.store.sync = SyncMode::Normal;
    }
    let node = BlockingNode::start(config)?;
    if callers == 1 && std::env::var_os("CRABNET_BENCH_LOCKSTEP").is_some() {
        let mut elapsed = Duration::ZERO;
        let mut line = String::new();
        for i in 0..count {
            let mut req = PublishRequest::new(format!("echo bench {i}"));
            req.bid_window_secs = 3600;
            line.clear();
            if std::io::stdin().read_line(&mut line)? == 0 {
                return Err(Error::new(
                    ErrorKind::Io,
                    "stdin closed before the last publish",
                ));
            }
            let start = Instant::now();
            node.publish(req)?;
            let took = start.elapsed();
            elapsed += took;
            println!("{:.1}", took.as_secs_f64() * 1e6);
        }
        node.stop()?;
        println!("rust {count} {:.0}", elapsed.as_secs_f64() * 1e6);
        return Ok(());
    }
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..callers)
            .map(|_| {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return Ok(());
                        }
                        let mut req = PublishRequest::new(format!("echo bench {i}"));
                        req.bid_window_secs = 3600;
                        node.publish(req)?;
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(Error::new(ErrorKind::Internal, "a caller panicked")))
        })
    })?;
    let elapsed = start.elapsed();
    node.stop()?;
    println!("rust {count} {:.0}", elapsed.as_secs_f64() * 1e6);
    Ok(())
}
