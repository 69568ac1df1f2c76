//! libp2p's timers (futures-timer's `Delay`, patched: `vendor/futures-timer/PATCHED.md`) run on
//! the Tokio runtime of the node that made them, so a libp2p node starts no thread of its own
//! for them: each timer that fires, is set or is dropped used to wake futures-timer's helper
//! thread, which then woke a runtime worker (two thread switches where the runtime's own timer
//! needs none; issue 13). A `Delay` made outside any runtime still runs on the helper thread,
//! which ends once no such `Delay` is left ([`stop_timer_thread`]), so a host that stopped and
//! freed its nodes runs no thread of Crabnet's: what makes a C host valgrind-clean with default
//! flags (issue 15; `tests/c/run.sh`).
//!
//! Alone in its test binary: a libp2p node of another test would make timers of its own.
//! Linux only: it counts the process's threads by name in `/proc/self/task`.
#![cfg(target_os = "linux")]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crabnet_core::network::{DhtConfig, stop_timer_thread};
use crabnet_core::{BlockingNode, Config, NetworkSpec};
use futures_timer::Delay;

/// The tests of this binary count one process-wide thread: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

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

/// Waits (up to 10 s) until `n` threads are named `futures-timer`: a new thread takes its name
/// a moment after it is spawned, and a joined one may stay listed a moment.
fn wait_timer_threads(n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = timer_threads();
        if count == n || Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn libp2p_nodes_run_their_timers_without_a_thread_of_their_own() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), "a", vec![]);
    let b = start(dir.path(), "b", vec![tcp_address(&a)]);
    // The timers work: the nodes dial, time out what they must and see each other.
    a.wait_for_peers(1, Duration::from_secs(20)).unwrap();
    b.wait_for_peers(1, Duration::from_secs(20)).unwrap();
    assert_eq!(
        timer_threads(),
        0,
        "libp2p's timers run on the nodes' runtimes"
    );
    drop(a);
    // b's timers still fire: it connects to a new node and both see each other.
    let c = start(dir.path(), "c", vec![tcp_address(&b)]);
    c.wait_for_peers(1, Duration::from_secs(20)).unwrap();
    assert_eq!(timer_threads(), 0);
    drop(b);
    drop(c);
    assert_eq!(timer_threads(), 0);
    assert!(stop_timer_thread(), "no timer thread is left to stop");
}

#[test]
fn a_delay_on_a_runtime_fires_when_due_and_follows_its_resets() {
    let _serial = serial();
    let rt = runtime();
    rt.block_on(async {
        let start = Instant::now();
        Delay::new(Duration::from_millis(30)).await;
        assert!(start.elapsed() >= Duration::from_millis(30));

        // Reset later: fires at the new time, not the first.
        let start = Instant::now();
        let mut delay = Delay::new(Duration::from_millis(10));
        delay.reset(Duration::from_millis(60));
        (&mut delay).await;
        assert!(start.elapsed() >= Duration::from_millis(60));
        // Reset after it fired: pending again until the new time.
        let again = Instant::now();
        delay.reset(Duration::from_millis(20));
        delay.await;
        assert!(again.elapsed() >= Duration::from_millis(20));

        // A long delay does not fire early; an earlier reset brings it forward.
        let mut long = Delay::new(Duration::from_secs(3600));
        let early = tokio::time::timeout(Duration::from_millis(50), &mut long).await;
        assert!(early.is_err(), "an hour-long delay fired after 50 ms");
        let start = Instant::now();
        long.reset(Duration::from_millis(10));
        tokio::time::timeout(Duration::from_secs(10), long)
            .await
            .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(10));

        // From another task of the runtime (a worker thread) as from its own.
        tokio::spawn(Delay::new(Duration::from_millis(5)))
            .await
            .unwrap();
    });
    assert_eq!(
        timer_threads(),
        0,
        "the runtime ran every one of these timers"
    );

    // Made on a runtime, it may be polled from a thread outside any runtime (the runtime's
    // timer still runs it) ...
    let made_on_runtime = {
        let _in_runtime = rt.enter();
        Delay::new(Duration::from_millis(20))
    };
    let start = Instant::now();
    std::thread::spawn(move || futures::executor::block_on(made_on_runtime))
        .join()
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(20));

    // ... and dropped after its runtime is gone, registered with its timer or not (a node's
    // tasks, which hold libp2p's delays, are dropped with its runtime, never polled after it).
    let mut registered = {
        let _in_runtime = rt.enter();
        Delay::new(Duration::from_secs(60))
    };
    rt.block_on(async { assert!(futures::poll!(&mut registered).is_pending()) });
    let unpolled = {
        let _in_runtime = rt.enter();
        Delay::new(Duration::from_secs(60))
    };
    drop(rt);
    drop(registered);
    drop(unpolled);
    assert_eq!(timer_threads(), 0);
}

#[test]
fn a_delay_outside_any_runtime_runs_on_the_helper_thread_until_none_is_left() {
    let _serial = serial();
    let start = Instant::now();
    let delay = Delay::new(Duration::from_millis(20));
    assert_eq!(
        wait_timer_threads(1),
        1,
        "no runtime: the helper thread runs it"
    );
    let kept = Delay::new(Duration::from_secs(60));
    futures::executor::block_on(delay);
    assert!(start.elapsed() >= Duration::from_millis(20));
    assert!(!stop_timer_thread(), "a delay is still pending");
    assert_eq!(timer_threads(), 1);
    drop(kept);
    assert!(stop_timer_thread());
    assert_eq!(wait_timer_threads(0), 0, "stopped and joined");

    // The next delay outside a runtime starts the thread again, and it fires.
    futures::executor::block_on(Delay::new(Duration::from_millis(5)));
    assert!(stop_timer_thread());
    assert_eq!(wait_timer_threads(0), 0);
}
