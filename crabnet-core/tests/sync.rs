//! Sync: late joiners, restarts and healed partitions converge from stored envelopes, without
//! anyone re-running anything (in-process nodes on the memory hub).

mod support;

use std::time::{Duration, Instant};

use crabnet_core::{MemoryHub, Node, PublishRequest, SeedStatus};
use support::forge::{
    self, claim_and_run_when_awarded, dir_and_hub, mesh, stop_all, wait_view_until,
};

/// A node named `name` on `hub` that syncs every second.
async fn start(dir: &std::path::Path, hub: &MemoryHub, name: &str) -> Node {
    let mut c = forge::config(dir, name);
    c.network.sync_interval_secs = 1;
    forge::start(c, hub).await
}

/// Waits (20 s at most) until `nodes` converged on `seeds` seeds.
async fn converged(nodes: &[&Node], seeds: u64) {
    forge::converged(nodes, seeds, Duration::from_secs(20)).await;
}

/// Runs a lifecycle to settlement between a publisher and a bidder.
async fn lifecycle(publisher: &Node, bidder: &Node) -> crabnet_core::SeedId {
    let seed = forge::publish_for_bids(publisher, "echo synced", 1).await;
    let id = seed.seed.id;
    let deadline = Instant::now() + Duration::from_secs(10);
    let pause = Duration::from_millis(10);
    wait_view_until(
        bidder,
        &id,
        deadline,
        pause,
        "the seed never arrived",
        |_| true,
    )
    .await;
    bidder.bid(&id, 7).await.unwrap();
    claim_and_run_when_awarded(bidder, &id, deadline, pause, "the award never arrived").await;
    wait_view_until(
        publisher,
        &id,
        deadline,
        pause,
        "the result never arrived",
        |v| v.status == SeedStatus::Completed,
    )
    .await;
    publisher.settle(&id, true, "").await.unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_catches_up_from_peers_that_hold_the_history() {
    let (dir, hub) = dir_and_hub();
    let a = start(dir.path(), &hub, "a").await;
    let b = start(dir.path(), &hub, "b").await;
    mesh(&[&a, &b]).await;
    let id = lifecycle(&a, &b).await;
    // A seed published before the late node exists, still open.
    a.publish(PublishRequest::new("echo later")).await.unwrap();
    converged(&[&a, &b], 2).await;

    let c = start(dir.path(), &hub, "c").await;
    converged(&[&a, &b, &c], 2).await;
    let v = c.seed(&id).await.unwrap();
    assert_eq!(v.status, SeedStatus::Settled);
    assert_eq!(v.result.unwrap().output_excerpt, "synced\n");
    stop_all([a, b, c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_heals_and_a_restarted_node_loses_nothing() {
    let (dir, hub) = dir_and_hub();
    let a = start(dir.path(), &hub, "a").await;
    let b = start(dir.path(), &hub, "b").await;
    let c = start(dir.path(), &hub, "c").await;
    mesh(&[&a, &b, &c]).await;
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
    stop_all([a, b, c]).await;
}
