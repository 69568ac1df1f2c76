//! The Node API end to end: several nodes in one process over the in-memory hub.

mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crabnet_core::clock::now_ms;
use crabnet_core::envelope::{self, Kind, MAX_ENVELOPE_BYTES};
use crabnet_core::model::{MessageKind, SeedId};
use crabnet_core::monitor::RejectReason;
use crabnet_core::network::Transport;
use crabnet_core::{
    BlockingNode, ErrorKind, EventKind, MemoryHub, Node, PublishRequest, SeedStatus, SeedView,
};
use support::forge::{
    self, config, counter, db_files, dir_and_hub, identity, mesh, meshed, poll_until,
    publish_for_bids, quiet_config, seed_message, settled_db_files, start, start_severable,
    start_with_wire, wait_counter, wait_view,
};
use support::pair::Pair;

async fn wait_for(node: &Node, id: &SeedId, what: &str, f: impl Fn(&SeedView) -> bool) -> SeedView {
    wait_view(node, id, Duration::from_secs(15), what, f).await
}

async fn network(dir: &std::path::Path, n: usize) -> (MemoryHub, Vec<Node>) {
    let hub = MemoryHub::new();
    let mut nodes = Vec::new();
    for i in 0..n {
        let name = format!("n{i}");
        nodes.push(start(config(dir, &name), &hub).await);
    }
    mesh(&nodes).await;
    (hub, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_run_a_whole_lifecycle_and_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (_hub, nodes) = network(dir.path(), 3).await;
    let (p, b1, b2) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut events = p.subscribe();

    let seed = publish_for_bids(p, "printf 'abc'", 2).await;
    let id = seed.seed.id.clone();
    assert_eq!(seed.status, SeedStatus::Open);
    wait_for(b1, &id, "seed", |_| true).await;
    wait_for(b2, &id, "seed", |_| true).await;
    b1.bid(&id, 50).await.unwrap();
    b2.bid(&id, 40).await.unwrap();
    let awarded = wait_for(b2, &id, "award", |v| v.award.is_some()).await;
    assert_eq!(awarded.award.unwrap().winner_node.as_ref(), Some(b2.id()));

    // The loser can neither claim nor run.
    wait_for(b1, &id, "award", |v| v.award.is_some()).await;
    let err = b1.claim(&id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::State);
    assert!(err.to_string().contains("not the winning bidder"), "{err}");

    b2.claim(&id).await.unwrap();
    let err = b1.run(&id).await.unwrap_err();
    assert!(err.to_string().contains("not the claimer"), "{err}");
    let ran = b2.run(&id).await.unwrap();
    let r = ran.result.unwrap();
    assert!(r.success);
    assert_eq!(r.output_excerpt, "abc");
    // sha256("abc")
    assert_eq!(
        r.output_sha256,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );

    wait_for(p, &id, "result", |v| v.status == SeedStatus::Completed).await;
    let err = b1.settle(&id, true, "").await.unwrap_err();
    assert!(err.to_string().contains("only the publisher"), "{err}");
    let settled = p.settle(&id, true, "good").await.unwrap();
    assert_eq!(settled.settlement.unwrap().settlement.amount, 40);
    for n in &nodes {
        wait_for(n, &id, "settlement", |v| v.status == SeedStatus::Settled).await;
    }
    let mut digests = Vec::new();
    for n in &nodes {
        digests.push(n.overview().await.unwrap().state_digest);
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");

    // The publisher saw the lifecycle as events, in order.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.contains(&"seed_settled") && Instant::now() < deadline {
        if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
            seen.push(e.kind.name());
        }
    }
    let order = [
        "seed_published",
        "bid_placed",
        "bidding_closed",
        "seed_claimed",
        "result_recorded",
        "seed_settled",
    ];
    let mut pos = 0;
    for name in &seen {
        if pos < order.len() && *name == order[pos] {
            pos += 1;
        }
    }
    assert_eq!(pos, order.len(), "events seen: {seen:?}");
    // Remote messages are counted.
    let o = p.overview().await.unwrap();
    assert!(
        o.counters.get("messages.accepted").copied().unwrap_or(0) >= 4,
        "{:?}",
        o.counters
    );
    assert_eq!(o.outbox_pending, 0);
    for n in &nodes {
        n.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_are_rejected_with_events_and_the_node_keeps_working() {
    let (dir, hub) = dir_and_hub();
    let mut c = config(dir.path(), "n0");
    c.network.reject_event_window_ms = 300;
    let node = &start(c, &hub).await;
    let mut events = node.subscribe();
    let mut attacker = hub.join("attacker");
    for _ in 0..3 {
        attacker.broadcast(b"\x00\x01 not json").unwrap();
        attacker.broadcast(br#"{"id":"zz","sender":"x"}"#).unwrap();
    }
    // One event as it happens, naming the source, then one summary for the other five at the
    // end of the window.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 2 && Instant::now() < deadline {
        if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await
            && let EventKind::MessageRejected {
                reason,
                source,
                count,
                ..
            } = e.kind
        {
            seen.push((reason, source, count));
        }
    }
    let from = Some("memory:attacker".to_owned());
    assert_eq!(
        seen,
        vec![
            (RejectReason::Malformed, from.clone(), 1),
            (RejectReason::Malformed, from, 5)
        ]
    );
    let o = node.overview().await.unwrap();
    assert_eq!(o.counters.get("rejected.malformed"), Some(&6));
    node.publish(PublishRequest::new("true")).await.unwrap();
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_messages_change_nothing() {
    let (dir, hub) = dir_and_hub();
    let mut tap = hub.join("tap");
    let [a, b] = meshed(dir.path(), &hub, ["a", "b"]).await;
    let seed = a.publish(PublishRequest::new("true")).await.unwrap();
    let frame = loop {
        let f = crabnet_core::network::recv(&mut tap).await.unwrap();
        let p = crabnet_core::envelope::parse(&f.bytes, usize::MAX).unwrap();
        if p.header.kind == Kind::Domain(MessageKind::SeedCreated) {
            break f;
        }
    };
    wait_for(&b, &seed.seed.id, "seed", |_| true).await;
    let before = b.overview().await.unwrap();
    // Sync may deliver the same envelope once more on its own: count from here.
    let dup =
        |o: &crabnet_core::Overview| o.counters.get("messages.duplicate").copied().unwrap_or(0);
    for _ in 0..3 {
        tap.broadcast(&frame.bytes).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let o = b.overview().await.unwrap();
        if dup(&o) >= dup(&before) + 3 {
            assert_eq!(o.state_digest, before.state_digest);
            assert_eq!(o.seeds_by_status, before.seeds_by_status);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "duplicates not counted: {:?}",
            o.counters
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// Issue 13: a copy of an envelope the node stores, which its memory of recent frames no
/// longer holds (after a restart; sync answers and gossip relays bring such copies, and any
/// peer can replay them, inside sync batches whatever their age), is counted in memory once its
/// signatures verified: `messages.duplicate`, and `messages.not_for_us_duplicate` for one sealed
/// to other nodes. Before, each was counted by a store transaction, committed and synced: one
/// sync per copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_stored_envelope_is_counted_without_a_write() {
    let (dir, hub) = dir_and_hub();
    let c = quiet_config(dir.path());
    let data_dir = c.data_dir.clone();
    let (node, mut wire) = start_with_wire(c.clone(), &hub).await;
    let alice = identity(0x31, 1);
    let bob = identity(0x32, 1);
    wire.broadcast(&forge::hello(&alice)).unwrap();
    wait_counter(&node, "hellos.accepted", 1).await;
    let public = forge::seal(&alice, &seed_message(&alice, 1, now_ms()), 600);
    let sealed = envelope::message_envelope(
        &alice,
        &seed_message(&alice, 2, now_ms()),
        600,
        &[(bob.node_id(), &bob.public().kem)],
        MAX_ENVELOPE_BYTES,
        &mut envelope::os_rng,
    )
    .unwrap();
    wire.broadcast(&public).unwrap();
    wire.broadcast(&sealed).unwrap();
    wait_counter(&node, "messages.accepted", 1).await;
    wait_counter(&node, "messages.not_for_us", 1).await;
    node.stop().await.unwrap();

    // Restarted: the memory of recent frames is empty.
    let node = start(c, &hub).await;
    let duplicates = counter(&node, "messages.duplicate").await;
    let not_for_us = counter(&node, "messages.not_for_us_duplicate").await;
    let before = settled_db_files(&data_dir).await;
    wire.broadcast(&public).unwrap();
    wire.broadcast(&sealed).unwrap();
    wait_counter(&node, "messages.duplicate", duplicates + 1).await;
    wait_counter(&node, "messages.not_for_us_duplicate", not_for_us + 1).await;
    assert_eq!(
        db_files(&data_dir),
        before,
        "copies of stored envelopes wrote to the database"
    );
    // Their next copies are found in memory again, without a signature check.
    wire.broadcast(&public).unwrap();
    wire.broadcast(&sealed).unwrap();
    wait_counter(&node, "messages.duplicate", duplicates + 3).await;
    assert_eq!(db_files(&data_dir), before);
    assert_eq!(
        counter(&node, "messages.not_for_us_duplicate").await,
        not_for_us + 1
    );
    assert_eq!(node.seeds(None).await.unwrap().len(), 1);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_errors_are_typed_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_hub, nodes) = network(dir.path(), 2).await;
    // `node` publishes, `runner` bids.
    let (node, runner) = (&nodes[0], &nodes[1]);
    let unknown = SeedId::from_bytes([9; 16]);
    assert_eq!(
        node.seed(&unknown).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        node.bid(&unknown, 5).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let err = node.publish(PublishRequest::new("  ")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    let err = node
        .publish(PublishRequest {
            min_price: 10,
            max_price: 5,
            ..PublishRequest::new("true")
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(
        err.to_string()
            .contains("min price 10 is above max price 5"),
        "{err}"
    );

    let seed = publish_for_bids(node, "true", 2).await;
    let id = seed.seed.id.clone();
    wait_for(runner, &id, "the seed", |_| true).await;
    let before = [
        node.overview().await.unwrap(),
        runner.overview().await.unwrap(),
    ];
    // A publisher may not bid on its own seed, at any price.
    for price in [50, 1000] {
        let err = node.bid(&id, price).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::State, "{err}");
        assert!(
            err.to_string()
                .contains(&format!("the publisher of seed {id} may not bid on it")),
            "{err}"
        );
    }
    let err = runner.bid(&id, 1000).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.to_string().contains("outside the range"), "{err}");
    let err = runner.claim(&id).await.unwrap_err();
    assert!(err.to_string().contains("still open"), "{err}");
    let err = node.settle(&id, true, "").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::State);
    let err = runner.run(&id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::State);
    let after = [
        node.overview().await.unwrap(),
        runner.overview().await.unwrap(),
    ];
    for (before, after) in before.iter().zip(&after) {
        assert_eq!(before.state_digest, after.state_digest);
        assert_eq!(
            before.last_event_seq, after.last_event_seq,
            "failed operations record no events"
        );
    }

    runner.bid(&id, 50).await.unwrap();
    let err = runner.bid(&id, 40).await.unwrap_err();
    assert!(err.to_string().contains("already bid"), "{err}");
    node.cancel(&id).await.unwrap();
    let err = node.cancel(&id).await.unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");

    for n in [node, runner] {
        n.stop().await.unwrap();
        assert_eq!(n.seeds(None).await.unwrap_err().kind(), ErrorKind::Stopped);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_listening_node_on_one_data_directory_is_refused() {
    let (dir, hub) = dir_and_hub();
    let first = Node::start_with_transport(config(dir.path(), "x"), Box::new(hub.join("1")))
        .await
        .unwrap();
    let err = Node::start_with_transport(config(dir.path(), "x"), Box::new(hub.join("2")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy);
    assert!(err.to_string().contains("already listening"), "{err}");
    // An offline node (a CLI command) may share the directory with the listener.
    let offline = Node::start(config(dir.path(), "x")).await.unwrap();
    assert_eq!(offline.id(), first.id());
    offline.stop().await.unwrap();
    first.stop().await.unwrap();
    // Once stopped, the lock is released.
    let again = Node::start_with_transport(config(dir.path(), "x"), Box::new(hub.join("3")))
        .await
        .unwrap();
    again.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_recorded_offline_is_broadcast_by_the_listener_on_the_same_directory() {
    let (dir, hub) = dir_and_hub();
    let [listener, peer] = meshed(dir.path(), &hub, ["a", "b"]).await;
    let offline = Node::start(config(dir.path(), "a")).await.unwrap();
    let seed = offline.publish(PublishRequest::new("true")).await.unwrap();
    offline.stop().await.unwrap();
    wait_for(&peer, &seed.seed.id, "seed from the outbox", |_| true).await;
    listener.stop().await.unwrap();
    peer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidding_expires_without_bids_and_the_event_log_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path(), "e")).await.unwrap();
    let seed = node
        .publish(PublishRequest {
            bid_window_secs: 1,
            ..PublishRequest::new("true")
        })
        .await
        .unwrap();
    let v = wait_for(&node, &seed.seed.id, "expiry", |v| {
        v.status == SeedStatus::Expired
    })
    .await;
    assert!(v.award.unwrap().winner.is_none());
    node.stop().await.unwrap();
    let log = std::fs::read_to_string(dir.path().join("e/events.ndjson")).unwrap();
    let logged: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<String> = logged
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(kinds.contains(&"seed_published".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"bidding_closed".to_owned()), "{kinds:?}");
    let seqs: Vec<u64> = logged.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "log has gaps or duplicates: {seqs:?}"
    );
}

/// A log left by another database (the database removed or restored from a backup, the
/// rotated files kept) is not taken for this database's: its events are appended after it,
/// not skipped until their numbers pass the old ones. Before, a stale `events.ndjson.1` made
/// the node skip every event up to its last number (nothing of this database was logged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_left_by_another_database_does_not_hide_this_ones_events() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("e");
    std::fs::create_dir_all(&data).unwrap();
    let stale: String = (1000..1010)
        .map(|seq| {
            format!(
                "{{\"seq\":{seq},\"at\":1,\"type\":\"seed_cancelled\",\"seed_id\":\"{}\"}}\n",
                "ab".repeat(16)
            )
        })
        .collect();
    std::fs::write(data.join("events.ndjson.1"), &stale).unwrap();
    let node = Node::start(config(dir.path(), "e")).await.unwrap();
    let seed = node.publish(PublishRequest::new("true")).await.unwrap();
    node.stop().await.unwrap();
    let log = std::fs::read_to_string(data.join("events.ndjson")).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("seed_published") && l.contains(seed.seed.id.as_str())),
        "this database's events are missing from the log: {log:?}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("events.ndjson.1")).unwrap(),
        stale,
        "the old file is left alone"
    );
}

#[test]
fn the_blocking_facade_drives_a_node_without_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    // The node under test runs the task; a publisher next to it publishes and settles.
    let pair = Pair::start(
        config(dir.path(), "publisher"),
        config(dir.path(), "blocking"),
    );
    let node = &pair.runner;
    let mut sub = node.subscribe();
    let id = pair.claimed("echo blocking", 5);
    let v = node.run(&id).unwrap();
    assert_eq!(v.result.unwrap().output_excerpt, "blocking\n");
    let v = pair.settle(&id, false, "no thanks");
    assert_eq!(v.status, SeedStatus::Settled);
    // The runner hears of the settlement through its subscription.
    let mut names = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !names.contains(&"seed_settled") && Instant::now() < deadline {
        if let Ok(Some(e)) = sub.recv_timeout(Duration::from_millis(300)) {
            names.push(e.kind.name());
        }
    }
    assert!(names.contains(&"seed_settled"), "{names:?}");
    for n in [&pair.runner, &pair.publisher] {
        n.stop().unwrap();
        assert_eq!(n.overview().unwrap_err().kind(), ErrorKind::Stopped);
    }
}

#[test]
fn listeners_run_on_one_thread_may_reenter_and_never_run_after_stop() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let node = Arc::new(BlockingNode::start(config(dir.path(), "listeners")).unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let stopped = Arc::new(AtomicBool::new(false));
    let after_stop = Arc::new(AtomicUsize::new(0));
    let threads = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let reentrant_ok = Arc::new(AtomicBool::new(false));

    // A listener that calls back into the node and removes itself after its first event.
    let self_id = Arc::new(Mutex::new(None));
    let (n, sid, ok) = (node.clone(), self_id.clone(), reentrant_ok.clone());
    let id = node
        .add_listener(Arc::new(move |_e| {
            if n.seeds(None).is_ok() {
                ok.store(true, Ordering::SeqCst);
            }
            if let Some(id) = sid.lock().unwrap().take() {
                assert!(n.remove_listener(id));
            }
        }))
        .unwrap();
    *self_id.lock().unwrap() = Some(id);

    let (c, st, late, th) = (
        calls.clone(),
        stopped.clone(),
        after_stop.clone(),
        threads.clone(),
    );
    node.add_listener(Arc::new(move |_e| {
        c.fetch_add(1, Ordering::SeqCst);
        th.lock().unwrap().insert(std::thread::current().id());
        if st.load(Ordering::SeqCst) {
            late.fetch_add(1, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(5));
    }))
    .unwrap();
    // A panicking listener is reported and does not stop delivery to the others.
    node.add_listener(Arc::new(|_e| panic!("listener bug")))
        .unwrap();

    for _ in 0..3 {
        node.publish(PublishRequest::new("true")).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while calls.load(Ordering::SeqCst) < 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        calls.load(Ordering::SeqCst) >= 6,
        "events delivered: {}",
        calls.load(Ordering::SeqCst)
    );
    assert!(
        reentrant_ok.load(Ordering::SeqCst),
        "a listener could not call the node"
    );
    assert!(
        self_id.lock().unwrap().is_none(),
        "the listener did not remove itself"
    );
    assert_eq!(
        threads.lock().unwrap().len(),
        1,
        "listeners ran on more than one thread"
    );
    assert_ne!(
        threads.lock().unwrap().iter().next(),
        Some(&std::thread::current().id())
    );

    node.stop().unwrap();
    stopped.store(true, Ordering::SeqCst);
    let count = calls.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        count,
        "a listener ran after stop returned"
    );
    assert_eq!(after_stop.load(Ordering::SeqCst), 0);
    let err = node.add_listener(Arc::new(|_e| {})).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Stopped);
}

#[test]
fn blocking_nodes_talk_over_udp_on_loopback_and_over_a_memory_hub() {
    use crabnet_core::NetworkSpec;
    use crabnet_core::network::UdpConfig;

    fn free_port() -> std::net::SocketAddr {
        support::reserve_port().local_addr().unwrap()
    }
    fn wait_seen(node: &BlockingNode, id: &SeedId) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.seed(id).is_err() {
            assert!(Instant::now() < deadline, "seed never arrived");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let udp = |bind, peer| {
        NetworkSpec::Udp(UdpConfig {
            bind,
            peers: vec![peer],
            broadcast: None,
        })
    };
    let a = BlockingNode::start_on(config(dir.path(), "ua"), udp(pa, pb)).unwrap();
    let b = BlockingNode::start_on(config(dir.path(), "ub"), udp(pb, pa)).unwrap();
    a.wait_for_peers(1, Duration::from_secs(10)).unwrap();
    b.wait_for_peers(1, Duration::from_secs(10)).unwrap();
    let seed = a.publish(PublishRequest::new("true")).unwrap();
    wait_seen(&b, &seed.seed.id);
    a.stop().unwrap();
    b.stop().unwrap();

    let hub = MemoryHub::new();
    let mem = |name: &str| NetworkSpec::Memory {
        hub: hub.clone(),
        name: name.into(),
    };
    let c = BlockingNode::start_on(config(dir.path(), "mc"), mem("c")).unwrap();
    let d = BlockingNode::start_on(config(dir.path(), "md"), mem("d")).unwrap();
    c.wait_for_peers(1, Duration::from_secs(10)).unwrap();
    let seed = d.publish(PublishRequest::new("true")).unwrap();
    wait_seen(&c, &seed.seed.id);
    assert_eq!(c.overview().unwrap().transport.as_deref(), Some("memory"));
}

/// Rules 2 across three nodes: a winner that never claims loses the seed to the next best bid
/// when its claim window passes; a claimer that never reports has its round failed, and the
/// publisher's operator reassigns the seed, which then expires with no bidder left. Every
/// decision is the publisher node's own (no call but `reassign`), and all replicas agree.
#[tokio::test]
async fn deadlines_reassign_an_unclaimed_award_and_fail_a_silent_claimer() {
    use crabnet_core::model::{Deadlines, RoundEnd};
    let dir = tempfile::tempdir().unwrap();
    let (_hub, nodes) = network(dir.path(), 3).await;
    let (publisher, lazy, silent) = (&nodes[0], &nodes[1], &nodes[2]);
    let seed = publisher
        .publish(PublishRequest {
            max_bids: 2,
            timeout_secs: 1,
            deadlines: Deadlines {
                claim_secs: 1,
                result_grace_secs: 1,
                settle_secs: 60,
            },
            ..PublishRequest::new("echo never")
        })
        .await
        .unwrap();
    let id = seed.seed.id.clone();
    for n in [lazy, silent] {
        wait_for(n, &id, "the seed", |_| true).await;
    }
    lazy.bid(&id, 10).await.unwrap();
    silent.bid(&id, 20).await.unwrap();
    // The lazy winner never claims: round 1 goes to the silent bidder.
    let v = wait_for(silent, &id, "the reassignment", |v| {
        v.award.as_ref().is_some_and(|a| a.round == 1)
    })
    .await;
    assert_eq!(
        v.award.as_ref().unwrap().winner_node.as_ref(),
        Some(silent.id())
    );
    assert_eq!(v.past_rounds[0].ended, RoundEnd::Unclaimed);
    let err = lazy.claim(&id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::State, "{err}");
    silent.claim(&id).await.unwrap();
    // It never reports: the publisher's node fails the round after timeout + grace.
    let v = wait_for(publisher, &id, "the failure", |v| {
        v.status == SeedStatus::Failed
    })
    .await;
    assert!(v.failed_at.is_some());
    let err = silent.run(&id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::State, "{err}");
    // The operator reassigns: nobody is left, the seed expires everywhere.
    let v = publisher.reassign(&id).await.unwrap();
    assert_eq!(v.status, SeedStatus::Expired);
    assert_eq!(v.past_rounds.len(), 2);
    for n in &nodes {
        let v = wait_for(n, &id, "the expiry", |v| v.status == SeedStatus::Expired).await;
        assert_eq!(v.past_rounds[1].ended, RoundEnd::Failed);
    }
    let digests: Vec<String> = futures_digests(&nodes).await;
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
}

async fn futures_digests(nodes: &[Node]) -> Vec<String> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(n.overview().await.unwrap().state_digest);
    }
    out
}

/// The `send_failed` events of a node whose sends fail, each message's own.
async fn send_failures(node: &Node) -> Vec<crabnet_core::model::MessageId> {
    let events = node.events_after(0, 10_000).await.unwrap();
    events
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::SendFailed { message_id, .. } => Some(message_id),
            _ => None,
        })
        .collect()
}

/// Every message of an outbox batch whose send failed gets exactly one `send_failed` event,
/// recorded with the batch's settlement: its row stays pending with its retry scheduled (a
/// minute out), so a later drain does not send it, nor record its failure, again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failed_send_of_an_outbox_batch_is_one_event_and_its_retry_is_scheduled() {
    let (dir, hub) = dir_and_hub();
    let mut c = config(dir.path(), "n");
    c.network.retry_base_ms = 60_000;
    c.network.retry_max_ms = 60_000;
    // Cut off for good: the flag is never cleared.
    let node = start_severable(c, &hub, Arc::new(AtomicBool::new(true))).await;
    let wait_failures = |n: usize| {
        let node = &node;
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            poll_until(deadline, Duration::from_millis(20), || async {
                let failed = send_failures(node).await;
                if failed.len() >= n {
                    Ok(failed)
                } else {
                    Err(failed.len())
                }
            })
            .await
            .unwrap_or_else(|seen| panic!("{seen} of {n} send failures"))
        }
    };
    for i in 0..3 {
        node.publish(PublishRequest::new(format!("echo {i}")))
            .await
            .unwrap();
    }
    let failed = wait_failures(3).await;
    // One more message: its drain must not send the first three again.
    node.publish(PublishRequest::new("echo 3")).await.unwrap();
    let failed_after = wait_failures(4).await;
    assert_eq!(failed_after.len(), 4, "{failed_after:?}");
    assert_eq!(failed_after[..3], failed[..]);
    let mut distinct = failed_after.clone();
    distinct.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{failed_after:?}");
    let o = node.overview().await.unwrap();
    assert_eq!(o.outbox_pending, 4);
    assert_eq!(o.counters.get("messages.sent"), None, "{:?}", o.counters);
    node.stop().await.unwrap();
}
