//! Healthy runs are quiet (issue 15): a gossip copy of an envelope the node already holds is a
//! counter, not a `message_rejected` event, and an envelope whose author's hello has not
//! arrived yet is held until it does instead of being rejected. Rejection events stay for what
//! is wrong, and the hold queue cannot be turned into a memory sink by a flood of envelopes
//! from senders that never say hello.
//!
//! Every node is a real `crabnet listen` process on 127.0.0.1 (the harness in
//! `tests/support/mod.rs`).

mod support;

use std::collections::BTreeMap;
use std::net::UdpSocket;

use serde_json::Value;

use std::time::{Duration, Instant};

use crabnet_core::clock::now_ms;
use crabnet_core::{EventKind, Transport};

use support::{Net, forge, junk};

fn rejections(net: &Net, i: usize) -> Vec<Value> {
    net.events(i)
        .into_iter()
        .filter(|e| e["type"] == "message_rejected")
        .collect()
}

fn get(c: &BTreeMap<String, u64>, k: &str) -> u64 {
    c.get(k).copied().unwrap_or(0)
}

/// Three UDP listeners started one after the other (so hellos cross with the first sync
/// digests), a whole lifecycle, convergence: no node records a single `message_rejected`
/// event, counts a rejection or logs a warning.
#[test]
fn a_healthy_three_node_run_records_no_rejection() {
    healthy_run(Net::new(3), Duration::ZERO);
}

/// The same over libp2p, where gossip may deliver copies of an envelope through several
/// relays (counted as `messages.duplicate`, not rejected).
#[test]
fn a_healthy_three_node_gossip_run_records_no_rejection() {
    healthy_run(Net::dht(3), PAST_THE_JOIN_HELLOS);
}

/// How long a gossip run lasts at least once every node is connected: past a node's last
/// hello after it joined (1, 3 and 8 s after its first connection). Those hellos repeated the
/// last one byte for byte, which gossipsub publishes only once: the repeats reached nobody,
/// and every node logged a warning for two or three of them.
const PAST_THE_JOIN_HELLOS: Duration = Duration::from_secs(9);

/// A whole lifecycle on three nodes, lasting at least `linger` after they are connected.
fn healthy_run(mut net: Net, linger: Duration) {
    let all = [0, 1, 2];
    net.start_mesh(&all, &all);
    net.wait_mesh(&all);
    let connected = Instant::now();
    let seed = net.publish(0, "echo quiet", 2);
    net.auction_to_settlement(0, &seed, &[(1, 20), (2, 10)], (2, 10), &all);
    net.wait_converged(&all, "after the lifecycle");
    std::thread::sleep(linger.saturating_sub(connected.elapsed()));

    let mut problems = Vec::new();
    for i in all {
        for e in rejections(&net, i) {
            problems.push(format!(
                "node {i} recorded a rejection: {} {} ({})",
                e["reason"], e["detail"], e["message_kind"]
            ));
        }
        let c = net.counters(i);
        for (k, n) in &c {
            if k.starts_with("rejected.") && *n > 0 {
                problems.push(format!("node {i} counted {n} {k}"));
            }
        }
        // An operator reads every warning: a healthy run gives none.
        let idx = net.nodes[i].running.expect("node runs");
        for line in net.procs.stderr(idx).lines() {
            if line.contains("WARN") || line.contains("ERROR") {
                problems.push(format!("node {i} logged: {line}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "a healthy run:\n{}",
        problems.join("\n")
    );
    net.assert_alive(&all);
}

/// An envelope that arrives before its author's hello is applied when the hello arrives, with
/// no rejection; a copy of it afterwards is counted as a duplicate, not rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_before_its_authors_hello_is_applied_when_the_hello_arrives() {
    let (dir, hub) = forge::dir_and_hub();
    let (node, mut wire) = forge::start_with_wire(forge::config(dir.path(), "n"), &hub).await;
    let alice = forge::identity(0x11, 1);
    let m = forge::seed_message(&alice, 1, now_ms());
    let bytes = forge::seal(&alice, &m, 60);
    wire.broadcast(&bytes).unwrap();
    forge::wait_counter(&node, "messages.held", 1).await;
    assert!(
        node.seed(m.seed_id()).await.is_err(),
        "applied without a hello"
    );

    wire.broadcast(&forge::hello(&alice)).unwrap();
    let within = Duration::from_secs(10);
    forge::wait_view(&node, m.seed_id(), within, "applied once held", |_| true).await;
    assert_eq!(forge::counter(&node, "messages.held_released").await, 1);
    wire.broadcast(&bytes).unwrap();
    forge::wait_counter(&node, "messages.duplicate", 1).await;

    let o = node.overview().await.unwrap();
    let rejected: Vec<_> = o
        .counters
        .iter()
        .filter(|(k, _)| k.starts_with("rejected."))
        .collect();
    assert!(rejected.is_empty(), "{:?}", o.counters);
    for e in node.events_after(0, 10_000).await.unwrap() {
        assert!(
            !matches!(e.kind, EventKind::MessageRejected { .. }),
            "{e:?}"
        );
    }
    node.stop().await.unwrap();
}

// Envelope layout (docs/PROTOCOL.md section 2a).
const SENDER: std::ops::Range<usize> = 6..38;
const MESSAGE_ID: std::ops::Range<usize> = 38..54;

/// A flood of envelopes from 1,500 senders that never said hello: the node holds a bounded
/// number of them (at most `MAX_HELD` envelopes, the newest: each one past the bound pushes
/// out the oldest, rejected at once as `unknown_sender`) with a bounded number of events, and
/// keeps working.
#[test]
fn a_flood_from_unknown_senders_is_held_within_bounds() {
    // The hold queue's frame cap (crabnet-core/src/ingress.rs, HOLD_MAX_FRAMES).
    const MAX_HELD: u64 = 1024;
    const FLOOD: u64 = 1500;
    const BATCH: u64 = 50;
    let mut net = Net::new(2);
    // Long enough that nothing held expires during the test: the counters say exactly how
    // many envelopes were held.
    let path = net.nodes[0].dir.join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace("[network]\n", "[network]\nunknown_sender_hold_ms = 60000\n");
    std::fs::write(&path, text).unwrap();
    net.start_mesh(&[0, 1], &[0, 1]);
    net.wait_mesh(&[0, 1]);
    let before = net.counters(0);
    let delta = |c: &BTreeMap<String, u64>, k: &str| get(c, k) - get(&before, k);

    // A well-formed seed envelope by a stranger; each copy names another sender and message
    // id (which breaks its signatures, but the peer table is consulted first).
    let stranger = forge::identity(7_000_001, 0);
    let message = forge::seed_message(&stranger, 1, now_ms());
    let frame = forge::seal(&stranger, &message, 600);
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = 0;
    while sent < FLOOD {
        // In batches that fit the node's socket buffer: every datagram arrives.
        for _ in 0..BATCH {
            let mut f = frame.clone();
            f[SENDER].copy_from_slice(&junk(32, sent + 1));
            f[MESSAGE_ID].copy_from_slice(&forge::rand16());
            attacker.send_to(&f, &net.nodes[0].addr).unwrap();
            sent += 1;
        }
        net.wait("node 0 takes in the batch", || {
            let c = net.counters(0);
            let seen = delta(&c, "messages.held") + delta(&c, "messages.held_overflow");
            if seen >= sent {
                Ok(())
            } else {
                Err(format!("{seen} of {sent}: {c:?}"))
            }
        });
    }
    let after = net.counters(0);
    // The newest are held: each envelope past the bound pushes out the oldest one.
    assert_eq!(delta(&after, "messages.held"), FLOOD, "{after:?}");
    assert_eq!(
        delta(&after, "messages.held_evicted"),
        FLOOD - MAX_HELD,
        "{after:?}"
    );
    assert_eq!(delta(&after, "messages.held_overflow"), 0, "{after:?}");
    assert_eq!(
        delta(&after, "rejected.unknown_sender"),
        FLOOD - MAX_HELD,
        "{after:?}"
    );
    assert_eq!(delta(&after, "messages.held_released"), 0, "{after:?}");
    // One event as it happened, and at most one summary per aggregation window (10 s).
    let events: Vec<Value> = rejections(&net, 0)
        .into_iter()
        .filter(|e| e["reason"] == "unknown_sender")
        .collect();
    assert!(
        !events.is_empty() && events.len() <= 2,
        "unknown_sender events: {events:#?}"
    );

    // The node keeps working.
    let seed = net.publish(1, "echo after-the-flood", 1);
    net.bid(0, &seed, 3);
    net.wait_award(1, &seed, 0, 3);
    net.assert_alive(&[0, 1]);
}

/// A held envelope whose author never says hello is rejected when the hold time is over, on a
/// node that has nothing else to do (housekeeping wakes for the expiry alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_envelope_expires_on_an_idle_node() {
    let (dir, hub) = forge::dir_and_hub();
    let mut c = forge::config(dir.path(), "n");
    c.network.unknown_sender_hold_ms = 1000;
    let (node, mut wire) = forge::start_with_wire(c, &hub).await;
    let alice = forge::identity(0x12, 1);
    let m = forge::seed_message(&alice, 1, now_ms());
    wire.broadcast(&forge::seal(&alice, &m, 60)).unwrap();
    forge::wait_counter(&node, "messages.held", 1).await;
    forge::wait_counter(&node, "messages.held_expired", 1).await;
    assert_eq!(forge::counter(&node, "rejected.unknown_sender").await, 1);
    assert!(
        node.seed(m.seed_id()).await.is_err(),
        "applied without a hello"
    );
    node.stop().await.unwrap();
}
