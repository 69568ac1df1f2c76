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
//! (`hostile_datagrams_are_rejected_and_the_node_keeps_working`) and a replayed sync digest
//! (`replayed_sync_digest_is_rejected_not_answered`).

mod support;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use support::{Net, WAIT_TIMEOUT, bid_prices, is_hex, reserve_port, sha256_hex};

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
const KIND_SYNC_DIGEST: u8 = 8;
/// The largest UDP payload over IPv4, and the UDP transport's frame limit.
const MAX_UDP_PAYLOAD: usize = 65_507;

// ------------------------------------------------------------------------------------------
// 1. Four nodes, full lifecycle
// ------------------------------------------------------------------------------------------

/// Four listeners in a full mesh: publish on node 0 (3 bids max), bids from nodes 1, 2 and 3
/// at different prices, the publisher awards the lowest, the losers cannot claim, the winner
/// claims and runs, the publisher settles, and all four end with the same state digest.
#[test]
fn four_nodes_full_lifecycle_converge() {
    let mut net = Net::new(4);
    let all = [0, 1, 2, 3];
    net.start_mesh(&all, &all);
    net.wait_mesh(&all);

    let seed = net.publish(0, "echo mesh-e2e", 3);
    for (node, price) in [(1, 30), (2, 10), (3, 20)] {
        net.bid(node, &seed, price);
    }
    let award = net.wait_award(0, &seed, 2, 10);
    assert_eq!(
        award["award"]["considered"].as_array().unwrap().len(),
        3,
        "{award:#}"
    );
    for i in [1, 2, 3] {
        net.wait_award(i, &seed, 2, 10);
    }

    // Only the winner may claim: the losing bidders and the publisher get a state error.
    for loser in [1, 3, 0] {
        net.expect_claim_refused(loser, &seed, "not the winning bidder");
    }
    let ran = net.claim_and_run(2, &seed);
    assert_eq!(ran["result"]["output_sha256"], sha256_hex(b"mesh-e2e\n"));
    net.complete_and_settle(0, &seed, &all);

    let digest = net.wait_converged(&all, "after settlement");
    assert!(is_hex(&digest, 64), "{digest}");
    let v = net.assert_same_view(&all, &seed);
    assert_eq!(v["status"], "settled");
    assert_eq!(v["settlement"]["amount"], 10);
    assert_eq!(v["settlement"]["outcome"], "accepted");
    assert_eq!(v["claim"]["claimer"], net.id(2));
    assert_eq!(v["result"]["runner"], net.id(2));
    let prices = bid_prices(&v);
    assert_eq!(prices.len(), 3, "{v:#}");
    for (node, price) in [(1, 30), (2, 10), (3, 20)] {
        assert_eq!(prices.get(net.id(node)), Some(&price), "{v:#}");
    }
    for i in all {
        let st = net.status(i);
        assert_eq!(st["seeds_by_status"]["settled"], 1, "node {i}: {st:#}");
        assert_eq!(st["peers"], 3, "node {i}: {st:#}");
        assert_eq!(
            net.runs_of(i, &seed),
            usize::from(i == 2),
            "node {i} task_started"
        );
    }
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

    let s1 = net.publish(0, "echo late-joiner", 2);
    net.bid(1, &s1, 15);
    net.bid(2, &s1, 25);
    net.wait_award(0, &s1, 1, 15);
    net.wait_award(1, &s1, 1, 15);
    net.expect_claim_refused(2, &s1, "not the winning bidder");
    net.claim_and_run(1, &s1);
    net.complete_and_settle(0, &s1, &[0, 1, 2]);

    let s2 = net.publish(1, "echo still-open", 3);
    net.bid(2, &s2, 7);
    net.wait_seed(1, &s2, "has the bid", |v| {
        v["bids"].as_array().unwrap().len() == 1
    });
    let before = net.wait_converged(&[0, 1, 2], "before the late joiner starts");

    net.start(3, &[0, 1, 2]);
    net.wait_peers(3, &[0, 1, 2]);
    net.wait_seed(3, &s1, "learns the settled seed", |v| {
        v["status"] == "settled"
    });
    let after = net.wait_converged(&all, "after the late joiner synced");
    assert_eq!(
        after, before,
        "nobody's state changed while node 3 caught up"
    );

    let v1 = net.assert_same_view(&all, &s1);
    assert_eq!(v1["result"]["runner"], net.id(1));
    assert_eq!(v1["result"]["output_sha256"], sha256_hex(b"late-joiner\n"));
    let v2 = net.assert_same_view(&all, &s2);
    assert_eq!(v2["status"], "open", "{v2:#}");
    assert_eq!(bid_prices(&v2).get(net.id(2)), Some(&7), "{v2:#}");
    // Nothing was re-run: the only run of s1 is node 1's; node 3 got the result by sync.
    for i in all {
        assert_eq!(
            net.runs_of(i, &s1),
            usize::from(i == 1),
            "node {i} task_started"
        );
    }
    let c3 = net.counters(3);
    assert!(
        c3.get("sync.batches_received").copied().unwrap_or(0) > 0,
        "node 3 caught up through sync batches: {c3:?}"
    );

    // The late joiner is a full member: the others accept its messages.
    net.bid(3, &s2, 5);
    net.wait_seed(1, &s2, "has the late joiner's bid", |v| {
        bid_prices(v).get(net.nodes[3].id.as_str()) == Some(&5)
    });
    net.wait_converged(&all, "after the late joiner's bid");
    net.assert_alive(&all);
}

// ------------------------------------------------------------------------------------------
// 3 + 4. Crash (SIGKILL) mid-lifecycle, partition by process, restart and heal
// ------------------------------------------------------------------------------------------

/// Node 1 bids, then its listener is SIGKILLed before the award. While it is down:
/// - the others finish that lifecycle (node 2 wins, claims, runs; node 0 settles);
/// - node 1's operator bids on another seed through the CLI (acknowledged, but unsent: the
///   listener is down);
/// - the others run a whole lifecycle node 1 never hears of.
///
/// Then node 1's listener restarts on the same data directory and port: it sends its
/// pending bid, learns everything it missed by sync, keeps its own acknowledged bids, and all
/// four nodes end with the same digest.
#[test]
fn sigkilled_node_restarts_and_heals_by_sync() {
    let mut net = Net::new(4);
    let all = [0, 1, 2, 3];
    let others = [0, 2, 3];
    net.start_mesh(&all, &all);
    net.wait_mesh(&all);

    let s1 = net.publish(0, "echo crash-s1", 3);
    let s2 = net.publish(0, "echo crash-s2", 2);
    for i in [1, 2, 3] {
        net.wait_seed(i, &s2, "knows s2", |_| true);
    }
    // Node 1 bids high (it will not win, so the others can finish without it) and its bid
    // reaches the publisher; then the node dies before the award.
    net.bid(1, &s1, 50);
    net.wait_seed(0, &s1, "has node 1's bid", |v| {
        bid_prices(v).get(net.nodes[1].id.as_str()) == Some(&50)
    });
    net.kill(1);

    // Acknowledged while the listener is down: committed to node 1's store and outbox.
    let v = net
        .run(1, &["--json", "seed", "bid", &s2, "--price", "40"])
        .ok()
        .json();
    assert_eq!(bid_prices(&v).get(net.id(1)), Some(&40), "{v:#}");
    let st = net.status(1);
    assert!(st["outbox_pending"].as_u64().unwrap() >= 1, "{st:#}");
    let digest_at_kill = st["state_digest"].as_str().unwrap().to_owned();

    // s1 goes on without node 1.
    net.bid(2, &s1, 10);
    net.bid(3, &s1, 20);
    net.wait_award(0, &s1, 2, 10);
    net.wait_award(2, &s1, 2, 10);
    net.claim_and_run(2, &s1);
    net.complete_and_settle(0, &s1, &others);

    // A whole lifecycle node 1 misses.
    let s3 = net.publish(3, "echo crash-s3", 1);
    net.bid(2, &s3, 5);
    net.wait_award(2, &s3, 2, 5);
    net.claim_and_run(2, &s3);
    net.complete_and_settle(3, &s3, &others);

    // s2 gets node 3's bid; it waits for a second bid (node 1's, still in its outbox).
    net.bid(3, &s2, 30);
    net.wait_seed(0, &s2, "has node 3's bid", |v| bid_prices(v).len() == 1);
    let partitioned = net.wait_converged(&others, "while node 1 is down");
    let st = net.status(1);
    assert_eq!(
        st["state_digest"], digest_at_kill,
        "node 1's state did not change while its listener was down"
    );
    assert_ne!(st["state_digest"], partitioned.as_str());
    assert!(
        net.run(1, &["--json", "seed", "show", &s3]).status.code() == Some(1),
        "node 1 has not heard of s3 yet"
    );

    // Restart: same data directory, same port, same peers.
    net.restart(1);
    // Its pending bid goes out; with two bids, the publisher awards s2 to node 3 (30 < 40).
    net.wait_award(0, &s2, 3, 30);
    net.wait_seed(1, &s3, "learns the lifecycle it missed", |v| {
        v["status"] == "settled"
    });
    net.wait_seed(1, &s1, "learns the settlement of s1", |v| {
        v["status"] == "settled"
    });
    let healed = net.wait_converged(&all, "after node 1 restarted");
    assert_ne!(healed, partitioned, "s2's second bid and award are new");

    let v1 = net.assert_same_view(&all, &s1);
    assert_eq!(v1["status"], "settled");
    assert_eq!(v1["result"]["runner"], net.id(2));
    assert_eq!(v1["result"]["output_sha256"], sha256_hex(b"crash-s1\n"));
    assert_eq!(
        bid_prices(&v1).get(net.id(1)),
        Some(&50),
        "node 1's acknowledged bid survived the crash: {v1:#}"
    );
    let v2 = net.assert_same_view(&all, &s2);
    assert_eq!(
        bid_prices(&v2).get(net.id(1)),
        Some(&40),
        "the bid acknowledged while offline reached everyone: {v2:#}"
    );
    assert_eq!(v2["award"]["winner_node"], net.id(3));
    let v3 = net.assert_same_view(&all, &s3);
    assert_eq!(v3["status"], "settled");
    assert_eq!(v3["result"]["output_sha256"], sha256_hex(b"crash-s3\n"));
    for (seed, runner) in [(&s1, 2), (&s3, 2)] {
        for i in all {
            assert_eq!(
                net.runs_of(i, seed),
                usize::from(i == runner),
                "node {i} runs of {seed}"
            );
        }
    }
    let st = net.status(1);
    assert_eq!(st["outbox_pending"], 0, "{st:#}");
    assert_eq!(st["seeds_by_status"]["settled"], 2, "{st:#}");
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

fn with(frame: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = frame.to_vec();
    f(&mut v);
    v
}

/// A pseudo-random byte stream (no extra dependencies; the content only has to be junk).
fn junk(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Garbage, empty, truncated, bit-flipped, forged, stale, oversized-for-an-envelope and
/// replayed datagrams at a node's UDP port: each is rejected under the right `rejected.*`
/// counter with a `message_rejected` event, and the node keeps working.
#[test]
fn hostile_datagrams_are_rejected_and_the_node_keeps_working() {
    let mut net = Net::new(2);
    let (a, b) = (0, 1);
    // A tap: node B sends everything to it as to a peer, so the test holds real frames.
    let tap = reserve_port();
    let tap_addr = tap.local_addr().unwrap().to_string();
    net.start(a, &[b]);
    // B's peers: A and the tap.
    net.start_with(b, &[a], &[tap_addr]);
    net.wait_mesh(&[a, b]);
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
        ("replayed seed envelope", seed_frame.clone(), "duplicate"),
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

    // Exact totals: nothing was counted twice or under another reason. (Duplicates may also
    // come from sync batches, so only a lower bound holds for them.)
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
    ] {
        let key = format!("rejected.{reason}");
        assert_eq!(
            delta(&key),
            expected.get(&key).copied().unwrap_or(0),
            "{key}: start {start:?}\nend {end:?}"
        );
    }
    assert!(delta("rejected.duplicate") >= 1, "{end:?}");

    // Each rejection is an event: the malformed ones name the sender's address, the replay
    // names the seed message.
    let events = net.events(a);
    let rejected: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "message_rejected")
        .collect();
    let from_attacker = rejected
        .iter()
        .filter(|e| {
            e["reason"] == "malformed"
                && e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(&attacker_addr))
        })
        .count();
    assert_eq!(
        from_attacker as u64, expected["rejected.malformed"],
        "malformed events naming {attacker_addr}: {rejected:#?}"
    );
    for reason in ["bad_signature", "expired", "unknown_sender"] {
        let n = rejected.iter().filter(|e| e["reason"] == reason).count() as u64;
        assert!(
            n >= expected[&format!("rejected.{reason}")],
            "{reason} events: {rejected:#?}"
        );
    }
    assert!(
        rejected
            .iter()
            .any(|e| e["reason"] == "duplicate" && e["message_id"] == seed_message_id.as_str()),
        "a duplicate rejection of the replayed seed envelope {seed_message_id}: {rejected:#?}"
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

/// A byte-identical replay of a `sync_digest` datagram the node already received and
/// answered must be rejected like any other replayed envelope (docs/PROTOCOL.md section 7:
/// sync envelopes are "subject to the live checks of section 2c", which include the replay
/// and duplicate checks), not answered again: otherwise anyone who captured one stale digest
/// can make a node re-send every seed it holds to all its peers, again and again, for as long
/// as the digest is fresh (60 s TTL + 120 s skew).
#[test]
fn replayed_sync_digest_is_rejected_not_answered() {
    let mut net = Net::new(2);
    let (a, b) = (0, 1);
    let tap = reserve_port();
    let tap_addr = tap.local_addr().unwrap().to_string();
    net.start(a, &[b]);
    net.start_with(b, &[a], &[tap_addr]);
    net.wait_mesh(&[a, b]);
    // A digest B sends once both know each other: A verifies and answers it.
    drain(&tap);
    let digest = capture(&tap, KIND_SYNC_DIGEST, "sync_digest");
    let digest_id = hex::encode(&digest[MESSAGE_ID]);
    // After the capture, A gets a seed the captured digest does not list.
    let seed = net.publish(a, "echo digest-replay", 3);
    net.wait_seed(b, &seed, "knows the seed", |_| true);
    net.wait_converged(&[a, b], "before the replay");
    // Converged: the periodic digests now match and nobody sends batches.
    thread::sleep(Duration::from_millis(1500));
    let a_before = net.counters(a);
    let b_before = net.counters(b);

    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    attacker.send_to(&digest, &net.nodes[a].addr).unwrap();
    thread::sleep(Duration::from_millis(1500));

    let a_after = net.counters(a);
    let b_after = net.counters(b);
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let rejected =
        |m: &BTreeMap<String, u64>| get(m, "rejected.duplicate") + get(m, "rejected.replay");
    assert_eq!(
        get(&b_after, "sync.batches_received"),
        get(&b_before, "sync.batches_received"),
        "the replayed digest made A send its seeds again (B received sync batches)\nA before {a_before:?}\nA after {a_after:?}"
    );
    assert!(
        rejected(&a_after) > rejected(&a_before),
        "A did not reject the replayed digest {digest_id} as duplicate or replay\nbefore {a_before:?}\nafter {a_after:?}"
    );
    let events = net.events(a);
    assert!(
        events.iter().any(|e| e["type"] == "message_rejected"
            && e["message_id"] == digest_id.as_str()
            && (e["reason"] == "duplicate" || e["reason"] == "replay")),
        "no rejection event for the replayed digest {digest_id}"
    );
    net.assert_alive(&[a, b]);
}
