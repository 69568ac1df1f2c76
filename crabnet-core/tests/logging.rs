//! Logs for hosts (crabnet_core::logging): what a sink receives, `CRABNET_LOG`, swapping and
//! removing sinks (also from inside one), and a blocked sink that must not block the node.
//!
//! The forwarding state is global to the process, so everything runs in one test, in order.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crabnet_core::logging::{self, QUEUE_CAPACITY, Record};
use tracing::Level;
use tracing::level_filters::LevelFilter;

const WAIT: Duration = Duration::from_secs(20);

/// A sink that sends every record to the returned channel.
fn channel_sink() -> (impl Fn(&Record) + Send + Sync + 'static, Receiver<Record>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    (
        move |r: &Record| {
            let _ = tx.lock().unwrap().send(r.clone());
        },
        rx,
    )
}

fn next(rx: &Receiver<Record>) -> Record {
    rx.recv_timeout(WAIT).expect("a record within the wait")
}

/// The channel's sink has been dropped (so it can never be called again) once the records it
/// already received are read.
fn assert_sink_dropped(rx: &Receiver<Record>) {
    loop {
        match rx.try_recv() {
            Ok(_) => continue,
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => panic!("the replaced sink is still installed"),
        }
    }
}

#[test]
fn logs_reach_the_host_sink() {
    // SAFETY: the only test of this binary; no other thread reads or writes the environment.
    unsafe { std::env::remove_var(logging::ENV_VAR) };

    // Level, target, message and fields; below the level nothing arrives (the queue is in
    // order, so a forwarded debug event would come first).
    let (sink, a) = channel_sink();
    logging::set_sink(LevelFilter::WARN, sink).unwrap();
    tracing::debug!(target: "crabnet_core::test", "hidden");
    tracing::warn!(target: "crabnet_core::test", peer = "p1", n = 3, "visible {}", 7);
    let r = next(&a);
    assert_eq!(r.level, Level::WARN);
    assert_eq!(r.target, "crabnet_core::test");
    assert_eq!(r.message, "visible 7 peer=p1 n=3");
    assert_eq!(r.logger_name(), "crabnet.core.test");
    tracing::error!(target: "crabnet_core::test", "bad");
    assert_eq!(next(&a).level, Level::ERROR);

    // Installing again swaps the sink: the old one is gone when set_sink returns.
    let (sink, b) = channel_sink();
    logging::set_sink(LevelFilter::WARN, sink).unwrap();
    assert_sink_dropped(&a);
    tracing::warn!(target: "crabnet_core::test", "to b");
    assert_eq!(next(&b).message, "to b");

    // CRABNET_LOG decides when set; an invalid value is reported through the sink.
    // SAFETY: as above.
    unsafe { std::env::set_var(logging::ENV_VAR, "crabnet_core=loud") };
    let (sink, c) = channel_sink();
    logging::set_sink(LevelFilter::WARN, sink).unwrap();
    let r = next(&c);
    assert_eq!(
        (r.level, r.target.as_str()),
        (Level::WARN, "crabnet_core::logging")
    );
    assert!(r.message.contains("CRABNET_LOG"), "{}", r.message);
    // SAFETY: as above.
    unsafe { std::env::set_var(logging::ENV_VAR, "crabnet_core::test=debug") };
    let (sink, d) = channel_sink();
    logging::set_sink(LevelFilter::ERROR, sink).unwrap();
    tracing::warn!(target: "elsewhere", "not selected");
    tracing::debug!(target: "crabnet_core::test", "selected");
    let r = next(&d);
    assert_eq!((r.level, r.message.as_str()), (Level::DEBUG, "selected"));
    // SAFETY: as above.
    unsafe { std::env::remove_var(logging::ENV_VAR) };

    // A sink that blocks never blocks the code that logs: records beyond the queue are
    // dropped, counted, and reported once the sink is back.
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let gate = Mutex::new(gate_rx);
    let (tx, e) = mpsc::channel();
    let tx = Mutex::new(tx);
    logging::set_sink(LevelFilter::WARN, move |r: &Record| {
        if r.message == "block" {
            let _ = gate.lock().unwrap().recv();
        }
        let _ = tx.lock().unwrap().send(r.clone());
    })
    .unwrap();
    let before = logging::dropped_records();
    tracing::warn!(target: "crabnet_core::test", "block");
    let extra = 50;
    for i in 0..QUEUE_CAPACITY + extra {
        tracing::warn!(target: "crabnet_core::test", "flood {i}");
    }
    // At most the blocked record and a full queue were taken.
    let dropped = logging::dropped_records() - before;
    assert!(dropped >= extra as u64 - 1, "{dropped} dropped");
    gate_tx.send(()).unwrap();
    let notice = loop {
        let r = next(&e);
        if r.target == "crabnet_core::logging" {
            break r;
        }
    };
    assert!(
        notice.message.contains("log records dropped"),
        "{}",
        notice.message
    );

    // The rest of the flood is delivered before going on: "after" below must not meet a full
    // queue (on a loaded machine the worker may still be far from its end). A marker comes out
    // after every record queued before it; it is sent again while the full queue drops it.
    let deadline = std::time::Instant::now() + WAIT;
    'drain: loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the flood was never delivered"
        );
        tracing::warn!(target: "crabnet_core::test", "drained");
        while let Ok(r) = e.recv_timeout(Duration::from_millis(200)) {
            if r.message == "drained" {
                break 'drain;
            }
        }
    }

    // A panicking sink loses one record, not the forwarding.
    let (tx, f) = mpsc::channel();
    let tx = Mutex::new(tx);
    logging::set_sink(LevelFilter::WARN, move |r: &Record| {
        assert_ne!(r.message, "boom", "the sink fails");
        let _ = tx.lock().unwrap().send(r.clone());
    })
    .unwrap();
    assert_sink_dropped(&e);
    tracing::warn!(target: "crabnet_core::test", "boom");
    tracing::warn!(target: "crabnet_core::test", "after");
    // Records of the flood above (and its drop notice) may still be queued: they reach the
    // new sink first.
    loop {
        let r = next(&f);
        assert_ne!(
            r.message, "boom",
            "the panicking sink's record was forwarded"
        );
        if r.message == "after" {
            break;
        }
    }

    // Removing the sink from inside it returns at once; nothing is forwarded afterwards.
    let (tx, g) = mpsc::channel();
    let tx = Mutex::new(tx);
    logging::set_sink(LevelFilter::WARN, move |r: &Record| {
        if r.message == "stop" {
            logging::remove_sink();
        }
        let _ = tx.lock().unwrap().send(r.clone());
    })
    .unwrap();
    tracing::warn!(target: "crabnet_core::test", "stop");
    assert_eq!(next(&g).message, "stop");
    tracing::warn!(target: "crabnet_core::test", "after stop");
    assert_eq!(g.recv_timeout(WAIT), Err(RecvTimeoutError::Disconnected));

    // A new sink after that gets a new thread; removing it from outside joins the thread and
    // drops the sink before returning.
    let (sink, h) = channel_sink();
    logging::set_sink(LevelFilter::WARN, sink).unwrap();
    tracing::warn!(target: "crabnet_core::test", "again");
    assert_eq!(next(&h).message, "again");
    let dropped = Arc::new(());
    let held = dropped.clone();
    logging::set_sink(LevelFilter::WARN, move |_: &Record| {
        let _ = &held;
    })
    .unwrap();
    assert_sink_dropped(&h);
    logging::remove_sink();
    assert_eq!(
        Arc::strong_count(&dropped),
        1,
        "remove_sink dropped the sink"
    );
    tracing::warn!(target: "crabnet_core::test", "nobody listens");
    logging::remove_sink();
}
