//! Three nodes in one process on an in-memory network: one publishes a task, two bid, the
//! winner claims and runs it, the publisher settles. Prints the publisher's events as they
//! happen.
//!
//! Run: `cargo run -p crabnet-core --example three_nodes`

use std::time::Duration;

use crabnet_core::{Config, MemoryHub, Node, PublishRequest, SeedStatus, SeedView};

async fn until(
    node: &Node,
    id: &crabnet_core::SeedId,
    done: impl Fn(&SeedView) -> bool,
) -> SeedView {
    loop {
        if let Ok(v) = node.seed(id).await
            && done(&v)
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> crabnet_core::Result<()> {
    let dir = std::env::temp_dir().join(format!("crabnet-example-{}", std::process::id()));
    let hub = MemoryHub::new();
    let mut nodes = Vec::new();
    for name in ["publisher", "fast", "cheap"] {
        let mut config = Config::with_data_dir(dir.join(name));
        config.name = name.into();
        nodes.push(Node::start_with_transport(config, Box::new(hub.join(name))).await?);
    }
    // Nodes accept messages only from peers whose signed hello they verified.
    for node in &nodes {
        node.wait_for_peers(2, Duration::from_secs(10)).await?;
    }
    let (publisher, fast, cheap) = (&nodes[0], &nodes[1], &nodes[2]);

    let mut events = publisher.subscribe();
    let printer = tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            println!("  [publisher event {:>3}] {}", e.seq, e.kind.name());
        }
    });

    let seed = publisher
        .publish(PublishRequest {
            description: "count the primes below 100".into(),
            max_bids: 2,
            ..PublishRequest::new("seq 2 99 | factor | awk 'NF == 2' | wc -l")
        })
        .await?;
    let id = seed.seed.id.clone();
    until(fast, &id, |_| true).await;
    until(cheap, &id, |_| true).await;
    fast.bid(&id, 40).await?;
    cheap.bid(&id, 25).await?;

    let awarded = until(cheap, &id, |v| v.award.is_some()).await;
    println!("winner: {:?}", awarded.award.and_then(|a| a.winner_node));
    cheap.claim(&id).await?;
    let ran = cheap.run(&id).await?;
    let result = ran.result.expect("a run records a result");
    println!("output: {}", result.output_excerpt.trim());

    until(publisher, &id, |v| v.status == SeedStatus::Completed).await;
    let settled = publisher.settle(&id, true, "thanks").await?;
    println!(
        "settled: {:?}, amount {}",
        settled.status,
        settled.settlement.map(|s| s.settlement.amount).unwrap_or(0)
    );

    for node in &nodes {
        node.stop().await?;
    }
    printer.abort();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
