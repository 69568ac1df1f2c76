//! The allocator's free memory handed back to the system after a node worked (issue 13,
//! `crabnet-core/src/heap.rs`). A binary of its own: releases are process-wide, at most one a
//! minute, so nodes of other tests in the same process would take this test's release.

mod support;

use std::time::Duration;

use crabnet_core::{Node, PublishRequest, SeedStatus};
use support::forge::{config, counter, dir_and_hub, poll, start, stop_all, wait_view};

/// Two nodes on a hub exchange hellos and a seed; the seed's receiver has worked.
async fn two_working_nodes(release_heap: bool, tag: &str) -> (tempfile::TempDir, Node, Node) {
    let (dir, hub) = dir_and_hub();
    let nodes = {
        let mut started = Vec::new();
        for name in ["a", "b"] {
            let mut c = config(dir.path(), &format!("{tag}-{name}"));
            c.network.release_heap = release_heap;
            started.push(start(c, &hub).await);
        }
        started
    };
    let [a, b]: [Node; 2] = nodes.try_into().ok().unwrap();
    let seed = a.publish(PublishRequest::new("echo heap")).await.unwrap();
    wait_view(&b, &seed.seed.id, Duration::from_secs(20), "open", |v| {
        v.status == SeedStatus::Open
    })
    .await;
    (dir, a, b)
}

async fn released(nodes: &[&Node]) -> u64 {
    let mut sum = 0;
    for n in nodes {
        sum += counter(n, "heap.released").await;
    }
    sum
}

/// With `network.release_heap` off, nodes that worked never release; with it on, the heap is
/// released a few seconds after the work, once for the process (the other node's work is
/// covered by that release, and a second one would come a minute later at the earliest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_worked_releases_the_heap_unless_told_not_to() {
    let (_off_dir, off_a, off_b) = two_working_nodes(false, "off").await;
    // Past the release's delay after the first work (5 s), with room to spare.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(released(&[&off_a, &off_b]).await, 0, "released while off");
    stop_all([off_a, off_b]).await;

    let (_on_dir, a, b) = two_working_nodes(true, "on").await;
    let never = || "the heap was never released".to_owned();
    poll(Duration::from_secs(20), never, || async {
        (released(&[&a, &b]).await > 0).then_some(())
    })
    .await;
    // The nodes keep working (hellos, sync rounds); no second release within the minute.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(released(&[&a, &b]).await, 1, "released more than once");
    stop_all([a, b]).await;
}
