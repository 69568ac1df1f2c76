//! The blocking facade: no async runtime in sight. Two nodes in one process on an in-memory
//! network: the publisher publishes a task, the runner bids on it (a node may not bid on its
//! own seed), runs it, and the publisher settles, while a listener prints every event of the
//! runner on Crabnet's own events thread.
//!
//! Run: `cargo run -p crabnet-core --example blocking`

use std::sync::Arc;
use std::time::{Duration, Instant};

use crabnet_core::{
    BlockingNode, Config, Error, ErrorKind, MemoryHub, NetworkSpec, PublishRequest, SeedId,
    SeedView,
};

/// Polls `node` until it knows the seed in a state for which `done` holds (at most 10 s).
fn until(
    node: &BlockingNode,
    id: &SeedId,
    done: impl Fn(&SeedView) -> bool,
) -> crabnet_core::Result<SeedView> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(v) = node.seed(id)
            && done(&v)
        {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(Error::new(
                ErrorKind::Network,
                "the other node did not answer",
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() -> crabnet_core::Result<()> {
    let dir = std::env::temp_dir().join(format!("crabnet-blocking-{}", std::process::id()));
    let hub = MemoryHub::new();
    let start = |name: &str| {
        let mut config = Config::with_data_dir(dir.join(name));
        config.name = name.into();
        let network = NetworkSpec::Memory {
            hub: hub.clone(),
            name: name.into(),
        };
        BlockingNode::start_on(config, network)
    };
    let (publisher, runner) = (start("publisher")?, start("runner")?);
    // Nodes accept messages only from peers whose signed hello they verified.
    for node in [&publisher, &runner] {
        node.wait_for_peers(1, Duration::from_secs(10))?;
    }
    runner.add_listener(Arc::new(|event| {
        println!("  runner event {:>3}: {}", event.seq, event.kind.name());
    }))?;

    let seed = publisher.publish(PublishRequest {
        max_bids: 1,
        ..PublishRequest::new("echo hello from a blocking caller")
    })?;
    let id = seed.seed.id;
    until(&runner, &id, |_| true)?;
    runner.bid(&id, 10)?; // the bid limit is reached: the publisher's node closes bidding
    until(&runner, &id, |v| v.award.is_some())?;
    runner.claim(&id)?;
    let ran = runner.run(&id)?;
    if let Some(r) = &ran.result {
        println!("exit {:?}, sha256 {}", r.exit_code, r.output_sha256);
    }
    until(&publisher, &id, |v| v.result.is_some())?;
    let done = publisher.settle(&id, true, "")?;
    println!("final status: {}", done.status);
    // Stopping delivers the last events; no listener runs after this returns.
    runner.stop()?;
    publisher.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
