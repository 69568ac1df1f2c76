//! Sync: late joiners, restarts and healed partitions converge from stored envelopes, without
//! anyone re-running anything (in-process nodes on the memory hub).

use std::time::{Duration, Instant};

use crabnet_core::{Config, MemoryHub, Node, PublishRequest, SeedStatus};

fn config(dir: &std::path::Path, name: &str) -> Config {
    let mut c = Config::with_data_dir(dir.join(name));
    c.name = name.into();
    c.network.tick_ms = 20;
    c.network.sync_interval_secs = 1;
    c
}

async fn start(dir: &std::path::Path, hub: &MemoryHub, name: &str) -> Node {
    Node::start_with_transport(config(dir, name), Box::new(hub.join(name)))
        .await
        .unwrap()
}

async fn converged(nodes: &[&Node], seeds: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut digests = Vec::new();
        let mut counts = Vec::new();
        for n in nodes {
            let o = n.overview().await.unwrap();
            digests.push(o.state_digest);
            counts.push(o.seeds_by_status.values().sum::<u64>());
        }
        if digests.windows(2).all(|w| w[0] == w[1]) && counts.iter().all(|c| *c == seeds as u64) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence: {counts:?} {digests:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a lifecycle to settlement between a publisher and a bidder.
async fn lifecycle(publisher: &Node, bidder: &Node) -> crabnet_core::SeedId {
    let seed = publisher
        .publish(PublishRequest {
            max_bids: 1,
            ..PublishRequest::new("echo synced")
        })
        .await
        .unwrap();
    let id = seed.seed.id;
    let deadline = Instant::now() + Duration::from_secs(10);
    while bidder.seed(&id).await.is_err() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bidder.bid(&id, 7).await.unwrap();
    while bidder.seed(&id).await.unwrap().award.is_none() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bidder.claim(&id).await.unwrap();
    bidder.run(&id).await.unwrap();
    while publisher.seed(&id).await.unwrap().status != SeedStatus::Completed {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    publisher.settle(&id, true, "").await.unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_catches_up_from_peers_that_hold_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let hub = MemoryHub::new();
    let a = start(dir.path(), &hub, "a").await;
    let b = start(dir.path(), &hub, "b").await;
    a.wait_for_peers(1, Duration::from_secs(10)).await.unwrap();
    b.wait_for_peers(1, Duration::from_secs(10)).await.unwrap();
    let id = lifecycle(&a, &b).await;
    // A seed published before the late node exists, still open.
    a.publish(PublishRequest::new("echo later")).await.unwrap();
    converged(&[&a, &b], 2).await;

    let c = start(dir.path(), &hub, "c").await;
    converged(&[&a, &b, &c], 2).await;
    let v = c.seed(&id).await.unwrap();
    assert_eq!(v.status, SeedStatus::Settled);
    assert_eq!(v.result.unwrap().output_excerpt, "synced\n");
    for n in [a, b, c] {
        n.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_heals_and_a_restarted_node_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = MemoryHub::new();
    let a = start(dir.path(), &hub, "a").await;
    let b = start(dir.path(), &hub, "b").await;
    let c = start(dir.path(), &hub, "c").await;
    for n in [&a, &b, &c] {
        n.wait_for_peers(2, Duration::from_secs(10)).await.unwrap();
    }
    hub.set_isolated("c", true);
    lifecycle(&a, &b).await;
    // C publishes on its side of the partition.
    c.publish(PublishRequest::new("echo from-c")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.seeds(None).await.unwrap().len(),
        1,
        "c must not see the other side yet"
    );
    hub.set_isolated("c", false);
    converged(&[&a, &b, &c], 2).await;

    // B stops; more happens; B restarts on the same directory and catches up.
    b.stop().await.unwrap();
    drop(b);
    a.publish(PublishRequest::new("echo while-b-was-down"))
        .await
        .unwrap();
    let b = start(dir.path(), &hub, "b").await;
    converged(&[&a, &b, &c], 3).await;
    for n in [a, b, c] {
        n.stop().await.unwrap();
    }
}
