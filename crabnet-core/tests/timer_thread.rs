//! The thread that runs libp2p's timers (futures-timer's global helper thread, patched so that
//! it can stop: `vendor/futures-timer/PATCHED.md`) ends when the last `BlockingNode` of the
//! process that used libp2p is dropped, and starts again for the next one. A host that stopped
//! and freed its nodes then runs no thread of Crabnet's, which is what makes a C host
//! valgrind-clean with default flags (issue 15; `tests/c/run.sh`).
//!
//! Alone in its test binary: a libp2p node of another test would keep the thread running.
//! Linux only: it counts the process's threads by name in `/proc/self/task`.
#![cfg(target_os = "linux")]

use std::time::Duration;

use crabnet_core::network::DhtConfig;
use crabnet_core::{BlockingNode, Config, NetworkSpec};

/// Threads of this process named `futures-timer`.
fn timer_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|task| {
            let comm = task.as_ref().unwrap().path().join("comm");
            // A thread that ended since the listing has no comm any more.
            std::fs::read_to_string(comm).is_ok_and(|name| name.trim_end() == "futures-timer")
        })
        .count()
}

fn start(dir: &std::path::Path, name: &str, peers: Vec<String>) -> BlockingNode {
    let mut config = Config::with_data_dir(dir.join(name));
    config.name = name.into();
    config.network.tick_ms = 20;
    config.network.hello_interval_secs = 1;
    let dht = DhtConfig {
        peers,
        ..DhtConfig::default()
    };
    BlockingNode::start_on(config, NetworkSpec::Dht(dht)).unwrap()
}

fn tcp_address(node: &BlockingNode) -> String {
    let overview = node.overview().unwrap();
    let found = overview.addresses.into_iter().find(|a| a.contains("/tcp/"));
    found.expect("a libp2p node listens on TCP")
}

#[test]
fn libp2p_timer_thread_ends_with_the_last_libp2p_node_and_starts_again_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(timer_threads(), 0, "no libp2p node has started yet");

    let a = start(dir.path(), "a", vec![]);
    assert_eq!(timer_threads(), 1, "libp2p's timers run on one thread");
    let b = start(dir.path(), "b", vec![]);
    assert_eq!(timer_threads(), 1, "shared by every node of the process");

    drop(a);
    assert_eq!(timer_threads(), 1, "b's timers still need the thread");
    assert!(!crabnet_core::network::stop_timer_thread());
    // b's timers still fire: it connects to a new node and both see each other.
    let c = start(dir.path(), "c", vec![tcp_address(&b)]);
    b.wait_for_peers(1, Duration::from_secs(20)).unwrap();
    c.wait_for_peers(1, Duration::from_secs(20)).unwrap();

    b.stop().unwrap();
    drop(b);
    drop(c);
    assert_eq!(
        timer_threads(),
        0,
        "the last libp2p node is gone, so is its timer thread"
    );
    assert!(crabnet_core::network::stop_timer_thread());

    // The next node starts the thread again, and its timers work.
    let d = start(dir.path(), "d", vec![]);
    let e = start(dir.path(), "e", vec![tcp_address(&d)]);
    assert_eq!(timer_threads(), 1);
    e.wait_for_peers(1, Duration::from_secs(20)).unwrap();
    drop(d);
    drop(e);
    assert_eq!(timer_threads(), 0);
}
