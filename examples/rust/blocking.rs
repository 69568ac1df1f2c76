//! The blocking facade: no async runtime in sight. One offline node publishes a task, bids on
//! it itself, runs it and settles, while a listener prints every event on Crabnet's own
//! events thread.
//!
//! Run: `cargo run -p crabnet-core --example blocking`

use std::sync::Arc;

use crabnet_core::{BlockingNode, Config, PublishRequest};

fn main() -> crabnet_core::Result<()> {
    let dir = std::env::temp_dir().join(format!("crabnet-blocking-{}", std::process::id()));
    let node = BlockingNode::start(Config::with_data_dir(&dir))?;
    node.add_listener(Arc::new(|event| {
        println!("  event {:>3}: {}", event.seq, event.kind.name());
    }))?;

    let seed = node.publish(PublishRequest {
        max_bids: 1,
        ..PublishRequest::new("echo hello from a blocking caller")
    })?;
    let id = seed.seed.id;
    node.bid(&id, 10)?; // the bid limit is reached, so bidding closes at once
    node.claim(&id)?;
    let ran = node.run(&id)?;
    if let Some(r) = &ran.result {
        println!("exit {:?}, sha256 {}", r.exit_code, r.output_sha256);
    }
    let done = node.settle(&id, true, "")?;
    println!("final status: {}", done.status);
    node.stop()?; // delivers the last events; no listener runs after this returns
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
