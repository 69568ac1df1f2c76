//! Multi-process end-to-end network tests over the UDP backend (issue 4).
//!
//! Every node is a real `crabnet listen --transport udp` process on 127.0.0.1 with its own data
//! directory; the lifecycle is driven by separate CLI processes on those directories while the
//! listeners run (they write to the outbox, the listener sends). Every CLI call is bounded by
//! a timeout, every wait by a deadline (and by a budget for the whole test), and every
//! listener is owned by a guard that SIGKILLs it on drop, so a failing test never leaves
//! processes behind. The harness (`Net`, `run_bounded`, the listener guards, `reserve_port`
//! and the waits) lives in `tests/support/mod.rs`.
//!
//! Each data directory gets a `config.toml` with a 1 s sync interval and a 50 ms tick so that
//! sync-driven convergence (late joiner, restart, partition) takes seconds, and a 5 s hello
//! interval so that a hello lost at startup is repeated soon.
//!
//! Tests: a 4-node lifecycle (`four_nodes_full_lifecycle_converge`), a late joiner
//! (`late_joiner_converges_by_sync`), SIGKILL mid-lifecycle plus a partition by process and a
//! restart (`sigkilled_node_restarts_and_heals_by_sync`), hostile datagrams
//! (`hostile_datagrams_are_rejected_and_the_node_keeps_working`) and a replayed sync query
//! (`replayed_sync_query_is_rejected_not_answered`).

mod support;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use support::{
    Net, WAIT_TIMEOUT, after_late_joiner, auction_of_four, before_late_joiner, crash_restart_heal,
    junk, reserve_on, reserve_port, test_ports,
};

// Envelope layout (docs/PROTOCOL.md section 2a).
const KIND_AT: usize = 4;
const SENDER: std::ops::Range<usize> = 6..38;
const MESSAGE_ID: std::ops::Range<usize> = 38..54;
const TIMESTAMP: std::ops::Range<usize> = 54..62;
const PAYLOAD_LEN: std::ops::Range<usize> = 74..78;
const HEADER_LEN: usize = 78;
const SIGNATURES_LEN: usize = 64 + 2420;
const KIND_HELLO: u8 = 0;
const KIND_SEED_CREATED: u8 = 1;
const KIND_SYNC_RANGE: u8 = 12;
/// The largest UDP payload over IPv4, and the UDP transport's frame limit.
const MAX_UDP_PAYLOAD: usize = 65_507;

/// The harness hands every listener a port below the kernel's ephemeral range, so that a port
/// released for a listener to bind (or by a listener killed for a restart) cannot be taken
/// meanwhile by an outgoing connection or a port-0 bind, and never hands one port out twice.
#[test]
fn reserved_ports_lie_below_the_ephemeral_range_and_are_never_handed_out_twice() {
    let range = test_ports();
    let ephemeral = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let ephemeral = ephemeral.local_addr().unwrap().port();
    assert!(
        !range.contains(&ephemeral),
        "{range:?} overlaps the kernel's ephemeral port {ephemeral}"
    );
    let mut seen = std::collections::HashSet::new();
    for i in 0..200 {
        let port = if i % 2 == 0 {
            reserve_port().local_addr().unwrap().port()
        } else {
            reserve_on(
                std::net::Ipv4Addr::LOCALHOST.into(),
                support::Transport::Dht,
            )
            .addr
            .port()
        };
        assert!(range.contains(&port), "port {port} outside {range:?}");
        assert!(seen.insert(port), "port {port} handed out twice");
    }
}

// ------------------------------------------------------------------------------------------
// 1. Four nodes, full lifecycle
// ------------------------------------------------------------------------------------------

/// Four listeners in a full mesh: publish on node 0 (3 bids max), bids from nodes 1, 2 and 3
/// at different prices, the publisher awards the lowest, the losers cannot claim, the winner
/// claims and runs, the publisher settles, and all four end with the same state digest.
#[test]
fn four_nodes_full_lifecycle_converge() {
    let mut net = Net::udp_mesh(4);
    let all = [0, 1, 2, 3];
    auction_of_four(&net, 0, [(1, 30), (2, 10), (3, 20)], "mesh-e2e", |_, _| {});
    net.assert_alive(&all);
}

// ------------------------------------------------------------------------------------------
// 2. Late joiner
// ------------------------------------------------------------------------------------------

/// Three nodes run a lifecycle to settlement and leave one more seed open with a bid; then a
/// fourth node starts (the others had its address as a peer all along, UDP being unicast) and
/// converges by sync alone: same digest, the result without re-running, and it can take part.
#[test]
fn late_joiner_converges_by_sync() {
    let mut net = Net::new(4);
    let all = [0, 1, 2, 3];
    // Node 3 is down: its port is closed (the others' datagrams to it are simply lost).
    drop(net.nodes[3].reservation.take());
    net.start_mesh(&[0, 1, 2], &all);
    net.wait_mesh(&[0, 1, 2]);
    let before = before_late_joiner(&net, "");

    net.start(3, &[0, 1, 2]);
    net.wait_peers(3, &[0, 1, 2]);
    net.wait_status(3, &before.settled, "settled");
    after_late_joiner(&net, &before, "", |_| {});
    net.assert_alive(&all);
}

/// Issue 14: a winner that never claims does not hold a seed forever. Three `crabnet listen`
/// processes: node 0 publishes with a 2 s claim window, node 1 bids lowest and wins but never
/// claims, node 2 bids too. Node 0's own process (nobody calls it) reassigns the seed to node
/// 2 when the window has passed; every node sees round 1 (the first reassignment) with node 2
/// as winner; node 1's late claim is refused; node 2 claims, runs, and node 0 settles.
#[test]
fn unclaimed_award_is_reassigned_across_three_processes() {
    let mut net = Net::udp_mesh(3);
    let all = [0, 1, 2];
    let seed = net.publish_with(0, "echo reawarded", 2, &["--claim-window", "2"]);
    net.bid(1, &seed, 10);
    net.bid(2, &seed, 20);
    for i in all {
        net.wait_award(i, &seed, 1, 10);
    }
    let node2 = net.id(2).to_owned();
    for i in all {
        let v = net.wait_seed(i, &seed, "shows round 1 with node 2 as winner", |v| {
            v["award"]["winner_node"] == node2.as_str()
        });
        assert_eq!(v["award"]["round"], 1, "node {i}: {v:#}");
        assert_eq!(v["award"]["price"], 20, "node {i}: {v:#}");
        assert_eq!(v["status"], "open", "node {i}: {v:#}");
    }
    net.expect_claim_refused(1, &seed, "not the winning bidder");
    net.claim_and_run(2, &seed);
    net.complete_and_settle(0, &seed, &all);
    let v = net.assert_same_view(&all, &seed);
    assert_eq!(v["claim"]["claimer"], node2.as_str(), "{v:#}");
    assert_eq!(net.runs_of(1, &seed), 0, "the first winner never ran it");
    net.assert_alive(&all);
}

// ------------------------------------------------------------------------------------------
// 3 + 4. Crash (SIGKILL) mid-lifecycle, partition by process, restart and heal
// ------------------------------------------------------------------------------------------

/// Four listeners in a full mesh: node 1 is SIGKILLed mid-lifecycle, the others go on, node 1
/// restarts and heals by sync ([`crash_restart_heal`]).
#[test]
fn sigkilled_node_restarts_and_heals_by_sync() {
    let mut net = Net::udp_mesh(4);
    let all = [0, 1, 2, 3];
    crash_restart_heal(&mut net, "");
    net.assert_alive(&all);
}

// ------------------------------------------------------------------------------------------
// 5. Hostile datagrams
// ------------------------------------------------------------------------------------------

/// Reads datagrams on `socket` until one of envelope kind `kind` arrives.
fn capture(socket: &UdpSocket, kind: u8, what: &str) -> Vec<u8> {
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + WAIT_TIMEOUT;
    let mut buf = vec![0u8; 70_000];
    while Instant::now() < deadline {
        if let Ok((n, _)) = socket.recv_from(&mut buf)
            && n > HEADER_LEN
            && &buf[..3] == b"CRB"
            && buf[KIND_AT] == kind
        {
            return buf[..n].to_vec();
        }
    }
    panic!("captured no {what} frame within {WAIT_TIMEOUT:?}");
}

/// Two listeners, A (node 0) and B (node 1), that know each other, and a tap: B sends
/// everything to it as to a peer, so the test holds real frames.
fn tapped_pair() -> (Net, UdpSocket) {
    let mut net = Net::new(2);
    let tap = reserve_port();
    let tap_addr = tap.local_addr().unwrap().to_string();
    net.start(0, &[1]);
    // B's peers: A and the tap.
    net.start_with(1, &[0], &[tap_addr]);
    net.wait_mesh(&[0, 1]);
    (net, tap)
}

fn with(frame: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = frame.to_vec();
    f(&mut v);
    v
}

/// Garbage, empty, truncated, bit-flipped, forged, stale and oversized-for-an-envelope
/// datagrams at a node's UDP port: each is rejected under the right `rejected.*` counter with
/// a `message_rejected` event (an envelope from a sender without a hello once the hold time is
/// over); a replayed envelope is counted as `messages.duplicate`; the node keeps working.
#[test]
fn hostile_datagrams_are_rejected_and_the_node_keeps_working() {
    let (a, b) = (0, 1);
    let (mut net, tap) = tapped_pair();
    let hello = capture(&tap, KIND_HELLO, "hello");
    assert_eq!(&hello[SENDER], hex::decode(net.id(b)).unwrap().as_slice());

    let seed = net.publish(b, "echo hostile", 3);
    let seed_frame = capture(&tap, KIND_SEED_CREATED, "seed_created");
    assert_eq!(
        &seed_frame[SENDER],
        hex::decode(net.id(b)).unwrap().as_slice()
    );
    let seed_message_id = hex::encode(&seed_frame[MESSAGE_ID]);
    net.wait_seed(a, &seed, "knows the seed", |_| true);
    net.wait_converged(&[a, b], "before the attack");

    let payload_len = u32::from_be_bytes(seed_frame[PAYLOAD_LEN].try_into().unwrap()) as usize;
    assert_eq!(seed_frame.len(), HEADER_LEN + payload_len + SIGNATURES_LEN);
    let signatures_at = HEADER_LEN + payload_len;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    // A well-framed 65,000-byte envelope from B (a known sender) with a junk payload and
    // B's signatures of another message: it passes size, structure, freshness and the peer
    // table, and fails at the signatures.
    let big_payload = 65_000 - HEADER_LEN - SIGNATURES_LEN;
    let mut big = seed_frame[..HEADER_LEN].to_vec();
    big[PAYLOAD_LEN].copy_from_slice(&(big_payload as u32).to_be_bytes());
    big.extend(junk(big_payload, 7));
    big.extend_from_slice(&seed_frame[signatures_at..]);
    assert_eq!(big.len(), 65_000);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", junk(700, 1), "malformed"),
        (
            "text garbage",
            b"GET / HTTP/1.1\r\nHost: crabnet\r\n\r\n".to_vec(),
            "malformed",
        ),
        ("empty datagram", Vec::new(), "malformed"),
        (
            "truncated seed envelope",
            seed_frame[..seed_frame.len() - 100].to_vec(),
            "malformed",
        ),
        (
            "seed envelope truncated inside the header",
            seed_frame[..50].to_vec(),
            "malformed",
        ),
        (
            "seed envelope with one byte appended",
            with(&seed_frame, |f| f.push(0)),
            "malformed",
        ),
        (
            "unknown kind",
            with(&seed_frame, |f| f[KIND_AT] = 200),
            "malformed",
        ),
        ("65,000 bytes of junk", junk(65_000, 2), "malformed"),
        (
            "65,507 bytes of junk (the UDP maximum)",
            junk(MAX_UDP_PAYLOAD, 3),
            "malformed",
        ),
        (
            "one payload byte flipped",
            with(&seed_frame, |f| f[HEADER_LEN + payload_len / 2] ^= 0x01),
            "bad_signature",
        ),
        (
            "one Ed25519 signature byte flipped",
            with(&seed_frame, |f| f[signatures_at + 10] ^= 0x80),
            "bad_signature",
        ),
        (
            "one ML-DSA signature byte flipped",
            with(&seed_frame, |f| *f.last_mut().unwrap() ^= 0x01),
            "bad_signature",
        ),
        (
            "message id changed",
            with(&seed_frame, |f| f[MESSAGE_ID.start] ^= 0xff),
            "bad_signature",
        ),
        (
            "65,000-byte envelope with a junk payload",
            big,
            "bad_signature",
        ),
        (
            "timestamp zeroed",
            with(&seed_frame, |f| {
                f[TIMESTAMP].copy_from_slice(&0u64.to_be_bytes())
            }),
            "expired",
        ),
        (
            "timestamp a day ahead",
            with(&seed_frame, |f| {
                f[TIMESTAMP].copy_from_slice(&(now_ms + 86_400_000).to_be_bytes())
            }),
            "expired",
        ),
        (
            "sender that never said hello",
            with(&seed_frame, |f| f[SENDER].copy_from_slice(&junk(32, 9))),
            "unknown_sender",
        ),
    ];

    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let attacker_addr = attacker.local_addr().unwrap().to_string();
    let target = net.nodes[a].addr.clone();

    // More than the IPv4 UDP maximum cannot even be sent: `oversized` is unreachable over
    // UDP on IPv4, where the transport's limit equals the protocol's maximum datagram.
    let err = attacker
        .send_to(&junk(MAX_UDP_PAYLOAD + 1, 4), &target)
        .expect_err("a datagram above 65,507 bytes cannot be sent over IPv4");
    assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE), "{err}");

    let start = net.counters(a);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for (what, bytes, reason) in &cases {
        let key = format!("rejected.{reason}");
        let before = net.counters(a).get(&key).copied().unwrap_or(0);
        let sent = attacker
            .send_to(bytes, &target)
            .expect("send the hostile datagram");
        assert_eq!(sent, bytes.len(), "{what}");
        net.wait(&format!("node A counts the {what} under {key}"), || {
            let c = net.counters(a);
            if c.get(&key).copied().unwrap_or(0) > before {
                Ok(())
            } else {
                Err(format!("{c:?}"))
            }
        });
        *expected.entry(key).or_default() += 1;
    }
    // A replayed seed envelope is a copy like those gossip and sync deliver: counted, not
    // rejected.
    let dups = net
        .counters(a)
        .get("messages.duplicate")
        .copied()
        .unwrap_or(0);
    attacker.send_to(&seed_frame, &target).unwrap();
    net.wait(
        "node A counts the replayed seed envelope as a duplicate",
        || {
            let c = net.counters(a);
            if c.get("messages.duplicate").copied().unwrap_or(0) > dups {
                Ok(())
            } else {
                Err(format!("{c:?}"))
            }
        },
    );
    // A replayed hello is recognised and ignored (not an error, not a new peer).
    let hello_dups = start.get("hellos.duplicate").copied().unwrap_or(0);
    attacker.send_to(&hello, &target).unwrap();
    net.wait("node A recognises the replayed hello", || {
        let c = net.counters(a);
        if c.get("hellos.duplicate").copied().unwrap_or(0) > hello_dups {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    });

    // Exact totals: nothing was counted twice or under another reason.
    let end = net.counters(a);
    let delta = |k: &str| end.get(k).copied().unwrap_or(0) - start.get(k).copied().unwrap_or(0);
    for reason in [
        "malformed",
        "oversized",
        "bad_signature",
        "expired",
        "unknown_sender",
        "replay",
        "key_mismatch",
        "rule",
        "duplicate",
    ] {
        let key = format!("rejected.{reason}");
        assert_eq!(
            delta(&key),
            expected.get(&key).copied().unwrap_or(0),
            "{key}: start {start:?}\nend {end:?}"
        );
    }

    // Rejections are events, at most one per source and reason as they happen (the rest are
    // summed up at the end of the aggregation window): every event names the relaying source,
    // and the reasons seen once name their message.
    let events = net.events(a);
    let rejected: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "message_rejected")
        .collect();
    let source = format!("udp:{attacker_addr}");
    let from_attacker: Vec<&&Value> = rejected
        .iter()
        .filter(|e| e["reason"] == "malformed" && e["source"] == source.as_str())
        .collect();
    assert!(
        !from_attacker.is_empty()
            && from_attacker
                .iter()
                .map(|e| e["count"].as_u64().unwrap())
                .sum::<u64>()
                <= expected["rejected.malformed"],
        "malformed events from {source}: {rejected:#?}"
    );
    for reason in ["bad_signature", "expired", "unknown_sender"] {
        assert!(
            rejected
                .iter()
                .any(|e| e["reason"] == reason && e["source"] == source.as_str()),
            "{reason} events: {rejected:#?}"
        );
    }
    assert!(
        !rejected.iter().any(|e| e["reason"] == "duplicate"),
        "the replayed seed envelope {seed_message_id} is a duplicate, not a rejection: {rejected:#?}"
    );

    // The node keeps working: still one peer (no forged sender got in), and a new seed from
    // B arrives, and A's bid reaches B.
    net.assert_alive(&[a, b]);
    let st = net.status(a);
    assert_eq!(st["peers"], 1, "{st:#}");
    let after = net.publish(b, "echo after-the-attack", 1);
    net.bid(a, &after, 3);
    net.wait_award(b, &after, a, 3);
    net.wait_award(a, &after, a, 3);
    let v = net.show(a, &seed);
    assert_eq!(v["status"], "open", "the attacked seed is unharmed: {v:#}");
    assert_eq!(v["bids"].as_array().unwrap().len(), 0, "{v:#}");
    net.wait_converged(&[a, b], "after the attack");
    net.assert_alive(&[a, b]);
}

/// Discards every datagram already queued on `socket`.
fn drain(socket: &UdpSocket) {
    socket.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 70_000];
    while socket.recv_from(&mut buf).is_ok() {}
    socket.set_nonblocking(false).unwrap();
}

/// How long a running node of these tests keeps routine counters (`sync.*`, `ingress.*`, ...)
/// in memory before writing them to the store, where `crabnet status` reads them
/// (`network.counter_write_secs = 1` in their configuration), and a margin.
const COUNTERS_WRITTEN: Duration = Duration::from_millis(2500);

/// A byte-identical replay of a sync query (`sync_range`) datagram the node already received
/// and answered must be rejected like any other replayed envelope (docs/PROTOCOL.md section 7:
/// sync envelopes are "subject to the live checks of section 2c", which include the replay
/// and duplicate checks), not answered again: otherwise anyone who captured one stale query
/// can make a node answer it again and again, for as long as the query is fresh (60 s TTL +
/// 120 s skew).
#[test]
fn replayed_sync_query_is_rejected_not_answered() {
    let (a, b) = (0, 1);
    let (mut net, tap) = tapped_pair();
    // A query B sends once both know each other: A verifies and answers it.
    drain(&tap);
    let query = capture(&tap, KIND_SYNC_RANGE, "sync_range");
    let query_id = hex::encode(&query[MESSAGE_ID]);
    // After the capture, A gets a seed the captured query does not cover.
    let seed = net.publish(a, "echo query-replay", 3);
    net.wait_seed(b, &seed, "knows the seed", |_| true);
    net.wait_converged(&[a, b], "before the replay");
    // Converged: the periodic queries now match and nobody sends batches. Routine counters
    // (`sync.*`) wait up to a second to be written: `before` is read once every batch of the
    // convergence is counted in the store, or a late write would look like a new batch.
    thread::sleep(COUNTERS_WRITTEN);
    let a_before = net.counters(a);
    let b_before = net.counters(b);

    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    attacker.send_to(&query, &net.nodes[a].addr).unwrap();
    thread::sleep(Duration::from_millis(1500));
    attacker.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 70_000];
    assert!(
        attacker.recv_from(&mut buf).is_err(),
        "A answered the replayed query"
    );
    // Likewise, a batch sent because of the replay would be counted within a second.
    thread::sleep(COUNTERS_WRITTEN - Duration::from_millis(1500));
    let a_after = net.counters(a);
    let b_after = net.counters(b);
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let rejected =
        |m: &BTreeMap<String, u64>| get(m, "rejected.duplicate") + get(m, "rejected.replay");
    assert_eq!(
        get(&b_after, "sync.batches_received"),
        get(&b_before, "sync.batches_received"),
        "the replayed query made A send its seeds again (B received sync batches)\nA before {a_before:?}\nA after {a_after:?}"
    );
    assert!(
        rejected(&a_after) > rejected(&a_before),
        "A did not reject the replayed query {query_id} as duplicate or replay\nbefore {a_before:?}\nafter {a_after:?}"
    );
    let events = net.events(a);
    assert!(
        events.iter().any(|e| e["type"] == "message_rejected"
            && e["message_id"] == query_id.as_str()
            && (e["reason"] == "duplicate" || e["reason"] == "replay")),
        "no rejection event for the replayed query {query_id}"
    );
    net.assert_alive(&[a, b]);
}

/// A flood of garbage datagrams from one sender costs counters, not one database transaction
/// and event per frame: the node counts every frame, records at most one event for the source
/// as it happens (plus a summary at the end of the window), and a real peer's seed still
/// arrives during the flood.
#[test]
fn a_garbage_flood_is_counted_not_logged_frame_by_frame() {
    const FRAMES: u64 = 5_000;
    let (a, b) = (0, 1);
    let mut net = Net::new(2);
    net.start(a, &[b]);
    net.start(b, &[a]);
    net.wait_mesh(&[a, b]);
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let source = format!("udp:{}", attacker.local_addr().unwrap());
    let target = net.nodes[a].addr.clone();
    let before = net
        .counters(a)
        .get("rejected.malformed")
        .copied()
        .unwrap_or(0);
    let events_before = net.events(a).len();
    for i in 0..FRAMES {
        attacker.send_to(&junk(200, i + 1), &target).unwrap();
        if i % 500 == 0 {
            // Not faster than the receive buffer drains on a loaded test machine.
            thread::sleep(Duration::from_millis(5));
        }
    }
    let seed = net.publish(b, "echo during-the-flood", 1);
    net.wait_seed(a, &seed, "receives the seed during the flood", |_| true);
    net.wait("node A counts every garbage frame", || {
        let n = net
            .counters(a)
            .get("rejected.malformed")
            .copied()
            .unwrap_or(0)
            - before;
        if n >= FRAMES {
            Ok(())
        } else {
            Err(format!("{n} of {FRAMES} counted"))
        }
    });
    let events = net.events(a);
    let from_flood: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "message_rejected" && e["source"] == source.as_str())
        .collect();
    assert!(
        !from_flood.is_empty() && from_flood.len() <= 2,
        "events for {source}: {from_flood:#?}"
    );
    assert!(
        events.len() - events_before < 50,
        "{} new events for {FRAMES} frames",
        events.len() - events_before
    );
}
