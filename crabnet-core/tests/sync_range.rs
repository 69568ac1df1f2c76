//! Sync by range-based set reconciliation (docs/PROTOCOL.md section 7): a node joining a peer
//! with a large store gets all of it, what two stores exchange follows their difference and
//! not their size, old envelopes sync, and a lost round only delays convergence (in-process
//! nodes on the memory hub); and two `crabnet listen` processes on 127.0.0.1, one holding
//! many seeds and the other all but 10 of them, converge on fewer sync bytes than listing the
//! seeds would take (issue 14 item 5).

mod support;

use std::collections::BTreeMap;
use std::future::ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crabnet_core::envelope::{self, Kind, MAX_ENVELOPE_BYTES};
use crabnet_core::identity::Identity;
use crabnet_core::model::{Body, Message, SeedId};
use crabnet_core::network::MemoryTransport;
use crabnet_core::store::{RemoteOutcome, Store, StoreConfig, SyncMode};
use crabnet_core::sync::range::{Round, Want};
use crabnet_core::{Config, MemoryHub, Node, NodeId, PublishRequest, Transport};
use support::forge::{
    self, Gated, converged, counter, dir_and_hub, hello, identity, mesh, next_frame, plain,
    poll_every, seed_message, stop_all, wait_counter,
};
use support::{Net, TEST_BUDGET};

/// A node configuration with a 1 s sync interval and the store's `Normal` sync mode.
fn config(dir: &std::path::Path, name: &str) -> Config {
    let mut c = forge::config(dir, name);
    c.network.sync_interval_secs = 1;
    c.store.sync = SyncMode::Normal;
    c
}

async fn start(config: Config, transport: Box<dyn Transport>) -> Node {
    Node::start_with_transport(config, transport).await.unwrap()
}

/// A node named `name` on `hub`.
async fn on_hub(dir: &std::path::Path, hub: &MemoryHub, name: &str) -> Node {
    forge::start(config(dir, name), hub).await
}

/// Nodes `a` and `b` on `hub`, each knowing the other.
async fn connected_pair(dir: &std::path::Path, hub: &MemoryHub) -> (Node, Node) {
    let a = on_hub(dir, hub, "a").await;
    let b = on_hub(dir, hub, "b").await;
    mesh(&[&a, &b]).await;
    (a, b)
}

/// Nodes `a` and `b` on `hub`, each knowing the other, once both hold the `n` seeds `a`
/// published (commands `echo {tag}-{i}`), converged within `within`.
async fn converged_pair(
    dir: &std::path::Path,
    hub: &MemoryHub,
    n: usize,
    tag: &str,
    within: Duration,
) -> (Node, Node) {
    let (a, b) = connected_pair(dir, hub).await;
    publish_many(&a, n, tag).await;
    converged(&[&a, &b], n as u64, within).await;
    (a, b)
}

/// A seed with a long bid window: no award changes the stores while a test runs.
fn long(command: &str) -> PublishRequest {
    PublishRequest {
        bid_window_secs: 3600,
        ..PublishRequest::new(command)
    }
}

/// Publishes `n` seeds on `node` (four at a time).
async fn publish_many(node: &Node, n: usize, tag: &str) {
    let mut tasks = Vec::new();
    for w in 0..4 {
        let node = node.clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(4) {
                node.publish(long(&format!("echo {tag}-{i}")))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn seed_count(node: &Node) -> u64 {
    let o = node.overview().await.unwrap();
    o.seeds_by_status.values().sum::<u64>()
}

/// Bytes of reconciliation frames (range queries and replies, wants) both nodes sent.
async fn reconcile_bytes(a: &Node, b: &Node) -> u64 {
    counter(a, "sync.reconcile_bytes_sent").await + counter(b, "sync.reconcile_bytes_sent").await
}

/// The bug of issue 14: digests listed the 1,200 most recently changed seeds only, so a node
/// joining a peer that holds 2,000 seeds got 1,200 of them and never the other 800.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_a_peer_with_2000_seeds_gets_all_of_them() {
    let (dir, hub) = dir_and_hub();
    let a = on_hub(dir.path(), &hub, "a").await;
    publish_many(&a, 2000, "old").await;
    let b = on_hub(dir.path(), &hub, "b").await;
    converged(&[&a, &b], 2000, Duration::from_secs(60)).await;
    stop_all([a, b]).await;
}

/// Two nodes meeting run one sync exchange, started by the one with the lower id; the other
/// leaves it to its peer. Before, each started one on the other's hello: two queries and two
/// replies crossed, then the higher id's exchange yielded (about 6 KB of frames for nothing).
/// The higher id starts first here; the lower id in the next test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_meeting_run_one_exchange_started_by_the_lower_id() {
    meet_once(false).await;
}

/// As above, the lower id started first: the higher id, started second, may learn of its
/// peer while it starts. Its first periodic round (at start) once saw that peer and queried,
/// and the two exchanges crossed; that round now goes out only when the peer table was not
/// empty at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_starts_second_leaves_the_exchange_to_a_lower_id() {
    meet_once(true).await;
}

/// Two fresh nodes, the one with the lower id started first when `lower_first`, meet: one
/// exchange, the lower id's, carries what the first published before the second started.
async fn meet_once(lower_first: bool) {
    let (dir, hub) = dir_and_hub();
    let hellos_only = |name: &str| {
        let mut c = config(dir.path(), name);
        // No periodic exchange while the test runs: only the hellos start one.
        c.network.sync_interval_secs = 3600;
        c
    };
    let id_of = |c: &crabnet_core::Config| {
        std::fs::create_dir_all(&c.data_dir).unwrap();
        let (identity, _) = Identity::load_or_create(&c.identity_path()).unwrap();
        identity.node_id().clone()
    };
    let (ca, cb) = (hellos_only("a"), hellos_only("b"));
    let (first, second) = if (id_of(&ca) < id_of(&cb)) == lower_first {
        (ca, cb)
    } else {
        (cb, ca)
    };
    let a = forge::start(first, &hub).await;
    publish_many(&a, 50, "early").await;
    let b = forge::start(second, &hub).await;
    converged(&[&a, &b], 50, Duration::from_secs(20)).await;
    let (low, high) = if a.id() < b.id() { (&a, &b) } else { (&b, &a) };
    assert!(counter(low, "sync.queries_sent").await > 0);
    assert_eq!(counter(high, "sync.queries_sent").await, 0);
    assert_eq!(counter(high, "sync.exchanges_left_to_peer").await, 1);
    assert_eq!(counter(low, "sync.exchanges_left_to_peer").await, 0);
    for node in [low, high] {
        assert_eq!(counter(node, "sync.exchanges_yielded").await, 0);
    }
    stop_all([a, b]).await;
}

/// Converged nodes whose stores do not change query less and less often (each round twice
/// as long after the last, up to six intervals), and a node that stores something new is back
/// at the base interval after its next round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_nodes_query_less_often_until_their_store_changes() {
    let (dir, hub) = dir_and_hub();
    let (a, b) = converged_pair(dir.path(), &hub, 5, "first", Duration::from_secs(20)).await;
    let second = Duration::from_secs(1);
    // Until `n` waits `pace` between rounds.
    let wait_pace = |n: Node, pace: Duration, what: &'static str| async move {
        let rounds = || format!("{what}: rounds every {:?}", n.sync_round_interval());
        let at_pace = || ready((n.sync_round_interval() == pace).then_some(()));
        let (within, pause) = (Duration::from_secs(30), Duration::from_millis(50));
        poll_every(within, pause, rounds, at_pace).await;
    };
    // Rounds over unchanged stores: 1 s, then 2 s, 4 s, and 6 s from then on.
    wait_pace(a.clone(), 6 * second, "a idle").await;
    wait_pace(b.clone(), 6 * second, "b idle").await;
    let queries = |n: Node| async move { counter(&n, "sync.queries_sent").await };
    let (qa, qb) = (queries(a.clone()).await, queries(b.clone()).await);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let idle = (queries(a.clone()).await - qa, queries(b.clone()).await - qb);
    // One round per 6 s: at most 3 each in 12 s, whatever the phase (12 at the base interval).
    assert!(idle.0 <= 3 && idle.1 <= 3, "idle rounds (a, b): {idle:?}");

    // A new seed on A: both stores change, and each node's next round brings it back to
    // rounds every second (then 2 s, 4 s... again while nothing changes).
    // Watched together: each node's rounds come at their own times, and a node is at 4 s
    // again two rounds (3 s) after the one that found the change, so waiting for one node
    // first could miss the other's.
    publish_many(&a, 1, "second").await;
    let rounds = || {
        format!(
            "after a new seed on a: rounds every {:?} (a), {:?} (b)",
            a.sync_round_interval(),
            b.sync_round_interval()
        )
    };
    let (mut a_back, mut b_back) = (false, false);
    let both_back = || {
        a_back |= a.sync_round_interval() <= 2 * second;
        b_back |= b.sync_round_interval() <= 2 * second;
        ready((a_back && b_back).then_some(()))
    };
    let (within, pause) = (Duration::from_secs(30), Duration::from_millis(20));
    poll_every(within, pause, rounds, both_back).await;
    converged(&[&a, &b], 6, Duration::from_secs(20)).await;
    stop_all([a, b]).await;
}

/// Envelopes inside sync batches are old by design: one older than `message_ttl_secs` (and
/// the hello of its author) still reaches a node that starts later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_older_than_the_message_ttl_syncs_to_a_fresh_node() {
    let (dir, hub) = dir_and_hub();
    let short = |name: &str| {
        let mut c = config(dir.path(), name);
        c.network.message_ttl_secs = 1;
        c.network.max_clock_skew_secs = 0;
        c
    };
    let a = forge::start(short("a"), &hub).await;
    let seed = a.publish(long("echo old")).await.unwrap().seed.id;
    // Published while alone; by now its envelope has expired (ttl 1 s, no skew allowed).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let b = forge::start(short("b"), &hub).await;
    converged(&[&a, &b], 1, Duration::from_secs(20)).await;
    assert_eq!(b.seed(&seed).await.unwrap().seed.id, seed);
    assert_eq!(counter(&b, "rejected.expired").await, 0);
    stop_all([a, b]).await;
}

/// Two stores of `n` seeds that differ by `d`: the reconciliation frames both sides send do not
/// grow with `n` (the batches carry the `d` missing seeds themselves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_bytes_follow_the_difference_not_the_store() {
    let (dir, hub) = dir_and_hub();
    let (a, b) = converged_pair(dir.path(), &hub, 1000, "shared", Duration::from_secs(60)).await;

    // Converged: a round on identical stores costs one query and one reply per peer and
    // interval, whatever the store's size.
    let queries = |a: Node, b: Node| async move {
        counter(&a, "sync.queries_sent").await + counter(&b, "sync.queries_sent").await
    };
    // Queries are read before bytes at the start and after them at the end, so a query sent
    // between two reads is counted as a round without its bytes, never the other way round.
    // How each node brought its item set up to date: the whole store read, new rows merged.
    let index = |a: Node, b: Node| async move {
        [
            counter(&a, "sync.index_reads").await + counter(&b, "sync.index_reads").await,
            counter(&a, "sync.index_updates").await + counter(&b, "sync.index_updates").await,
        ]
    };
    // Item sets are brought up to date by the rounds, not by the writes: wait until each
    // node has sent a query since the last seed arrived.
    let (qa, qb) = (
        counter(&a, "sync.queries_sent").await,
        counter(&b, "sync.queries_sent").await,
    );
    let (within, pause) = (Duration::from_secs(20), Duration::from_millis(50));
    let no_rounds = || "no sync rounds".to_owned();
    poll_every(within, pause, no_rounds, || async {
        let (now_a, now_b) = (
            counter(&a, "sync.queries_sent").await,
            counter(&b, "sync.queries_sent").await,
        );
        (now_a > qa && now_b > qb).then_some(())
    })
    .await;
    let index_before = index(a.clone(), b.clone()).await;
    let queries_before = queries(a.clone(), b.clone()).await;
    let before = reconcile_bytes(&a, &b).await;
    // Two idle rounds or more (over unchanged stores the rounds grow apart: 2 s, 4 s, 6 s).
    let no_idle_rounds = || "no idle sync rounds".to_owned();
    poll_every(within, pause, no_idle_rounds, || async {
        (queries(a.clone(), b.clone()).await >= queries_before + 2).then_some(())
    })
    .await;
    let idle = reconcile_bytes(&a, &b).await - before;
    let rounds = queries(a.clone(), b.clone()).await - queries_before;
    assert!(rounds > 0, "no sync rounds ran");
    // Rounds over unchanged stores read no items from them.
    assert_eq!(index(a.clone(), b.clone()).await, index_before);
    // Each node read its whole store once (when it started), never since.
    assert_eq!(index_before[0], 2);
    // One envelope (2.6 KB of signatures and 16 fingerprints) per query, and no reply.
    assert!(
        idle <= rounds * 3500,
        "{rounds} idle queries cost {idle} bytes"
    );

    // B misses 5 seeds while cut off.
    hub.set_isolated("b", true);
    publish_many(&a, 5, "missed").await;
    let before = reconcile_bytes(&a, &b).await;
    hub.set_isolated("b", false);
    converged(&[&a, &b], 1005, Duration::from_secs(20)).await;
    let spent = reconcile_bytes(&a, &b).await - before;
    // The new seeds were merged into the item sets; the stores were not read again.
    let [reads, updates] = index(a.clone(), b.clone()).await;
    assert_eq!(reads, 2);
    assert!(updates > index_before[1], "{updates} updates");
    // An envelope costs 2.6 KB of signatures: a handful of round trips per interval, each a
    // few KB, against 1,000 x 40 B = 40 KB for one old digest of this store (and that grows
    // with the store). The unit tests of `sync::range` check the O(d log n) shape on stores of
    // 100,000 items.
    assert!(
        spent < 64 * 1024,
        "reconciling 5 of 1,005 seeds cost {spent} bytes (idle rounds: {idle} bytes)"
    );
    stop_all([a, b]).await;
}

/// Kinds on the wire: sync_batch, sync_range, sync_want.
const SYNC_KINDS: &[u8] = &[9, 12, 13];

/// `inner` losing the sync frames (queries, replies, wants and batches) it is asked to send
/// until a budget of `drops` is used up.
fn lossy(inner: MemoryTransport, drops: Arc<AtomicUsize>) -> Gated {
    Gated::new(inner, move |frame| {
        let lost = frame.len() > 4
            && SYNC_KINDS.contains(&frame[4])
            && drops
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        Ok(!lost)
    })
}

/// Lost rounds (queries, replies, wants and batches in both directions) delay convergence to
/// a later sync interval; nothing is kept per requester that a loss could leave stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_rounds_only_delay_convergence() {
    let (dir, hub) = dir_and_hub();
    let a_drops = Arc::new(AtomicUsize::new(4));
    let b_drops = Arc::new(AtomicUsize::new(4));
    let a = start(
        config(dir.path(), "a"),
        Box::new(lossy(hub.join("a"), a_drops.clone())),
    )
    .await;
    publish_many(&a, 300, "lossy").await;
    let b = start(
        config(dir.path(), "b"),
        Box::new(lossy(hub.join("b"), b_drops.clone())),
    )
    .await;
    b.publish(long("echo from-b")).await.unwrap();
    converged(&[&a, &b], 301, Duration::from_secs(30)).await;
    assert_eq!(a_drops.load(Ordering::SeqCst), 0, "a lost no sync frame");
    assert_eq!(b_drops.load(Ordering::SeqCst), 0, "b lost no sync frame");
    assert!(seed_count(&b).await == 301);
    stop_all([a, b]).await;
}

/// A private seed is reconciled within its audience only: a member that was cut off when it
/// was published gets it by sync, an outsider that joins later is never sent its envelopes
/// (and does not keep asking for them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_seed_syncs_to_its_audience_only() {
    let (dir, hub) = dir_and_hub();
    let (a, b) = connected_pair(dir.path(), &hub).await;
    hub.set_isolated("b", true);
    // The outsider is there but cut off too: it gets nothing live.
    let c_wire = hub.join("c");
    hub.set_isolated("c", true);
    let mut outsider = config(dir.path(), "c");
    // Its first hellos reach nobody; the next ones come soon.
    outsider.network.hello_interval_secs = 1;
    let c = start(outsider, Box::new(c_wire)).await;
    let (_, private) = publish_public_and_private(&a, b.id()).await;
    // Both went out (to nobody) before anyone comes back: only sync can deliver them now.
    let outbox_full = || "a's outbox stays full".to_owned();
    let (within, pause) = (Duration::from_secs(10), Duration::from_millis(20));
    poll_every(within, pause, outbox_full, || async {
        (a.overview().await.unwrap().outbox_pending == 0).then_some(())
    })
    .await;
    hub.set_isolated("b", false);
    hub.set_isolated("c", false);
    converged(&[&a, &b], 2, Duration::from_secs(20)).await;
    assert!(b.seed(&private).await.is_ok());
    // The outsider holds the public seed only, and a few more rounds change nothing.
    let (within, pause) = (Duration::from_secs(20), Duration::from_millis(100));
    let no_public_seed = || "c never got the public seed".to_owned();
    poll_every(within, pause, no_public_seed, || async {
        (seed_count(&c).await >= 1).then_some(())
    })
    .await;
    let wants = counter(&a, "sync.wants_received").await + counter(&b, "sync.wants_received").await;
    let rounds = counter(&c, "sync.ranges_received").await;
    let no_more_rounds = || "no more sync rounds".to_owned();
    poll_every(within, pause, no_more_rounds, || async {
        (counter(&c, "sync.ranges_received").await >= rounds + 4).then_some(())
    })
    .await;
    assert_eq!(seed_count(&c).await, 1);
    assert!(c.seed(&private).await.is_err());
    assert_eq!(
        counter(&c, "messages.not_for_us").await,
        0,
        "c was sent the private seed"
    );
    assert_eq!(
        counter(&a, "sync.wants_received").await + counter(&b, "sync.wants_received").await,
        wants,
        "c keeps asking for what it may not have"
    );
    stop_all([a, b, c]).await;
}

/// The next `sync_range` reply on `wire` (the node's own periodic queries and other frames
/// are passed over).
async fn next_reply(wire: &mut MemoryTransport) -> Round {
    let deadline = Instant::now() + Duration::from_secs(10);
    next_frame(wire, deadline, "a reply to the query", |parsed| {
        sync_round(parsed).filter(|round| round.reply)
    })
    .await
}

/// The `sync_range` round `parsed` carries, if it is one.
fn sync_round(parsed: &envelope::Parsed<'_>) -> Option<Round> {
    (parsed.header.kind == Kind::SyncRange).then(|| parsed.plain(Kind::SyncRange).unwrap())
}

/// The payload of a first `sync_range` query from a peer that holds nothing.
fn first_query() -> Vec<u8> {
    let round = Round {
        reply: false,
        msg: crabnet_core::sync::range::ItemSet::new([]).query(8_000),
    };
    envelope::encode_hello(&round)
}

/// The seed ids a peer learns from the reply to one query it sent from `wire`: it follows the
/// reply with an empty set (everything the answerer offers is something it lacks).
async fn offered_seeds(wire: &mut MemoryTransport, query: Vec<u8>) -> Vec<SeedId> {
    wire.broadcast(&query).unwrap();
    let reply = next_reply(wire).await;
    let progress = crabnet_core::sync::range::ItemSet::new([])
        .follow(&reply.msg, 60_000)
        .unwrap();
    progress.need.into_iter().map(|(_, seed)| seed).collect()
}

/// Publishes a public seed and a seed private to `member` on `node`; returns their ids.
async fn publish_public_and_private(node: &Node, member: &NodeId) -> (SeedId, SeedId) {
    let public = node.publish(long("echo public")).await.unwrap().seed.id;
    let private = node
        .publish(PublishRequest {
            private_to: vec![member.clone()],
            ..long("echo private")
        })
        .await
        .unwrap()
        .seed
        .id;
    (public, private)
}

/// Issue 14 (a private seed's metadata): a reconciliation reply goes to the transport source
/// of the query, so the items of private seeds are in it only when that source is the query's
/// signer. A query signed by a member of a private seed's audience but sent (forwarded,
/// replayed, relayed) from another address is answered with the public items alone: the
/// forwarder learns neither the private seed's id nor that it exists. The same query sent by
/// the member itself still reconciles the private seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_query_does_not_reveal_private_seeds() {
    let (dir, hub) = dir_and_hub();
    let a = on_hub(dir.path(), &hub, "a").await;
    let mut member_wire = hub.join("member");
    let mut forwarder = hub.join("forwarder");
    let member = identity(0x61, 1);
    member_wire
        .broadcast(&support::forge::hello_announcing(
            &member,
            vec!["memory:member".into()],
        ))
        .unwrap();
    a.wait_for_peers(1, Duration::from_secs(10)).await.unwrap();
    let (public, private) = publish_public_and_private(&a, member.node_id()).await;
    let query = || plain(&member, Kind::SyncRange, &first_query());
    let forwarded = offered_seeds(&mut forwarder, query()).await;
    assert!(forwarded.contains(&public), "{forwarded:?}");
    assert!(
        !forwarded.contains(&private),
        "a forwarded query revealed the private seed"
    );
    let direct = offered_seeds(&mut member_wire, query()).await;
    assert!(
        direct.contains(&public) && direct.contains(&private),
        "{direct:?}"
    );
    a.stop().await.unwrap();
}

/// Hostile reconciliation input from a known peer: garbage in a `sync_range` query or reply
/// and ids that are no message ids in a `sync_want` are refused as malformed or answered
/// with nothing; the node keeps working (a replayed query is covered by `tests/network.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_reconciliation_messages_are_refused() {
    let (dir, hub) = dir_and_hub();
    let node = on_hub(dir.path(), &hub, "n").await;
    node.publish(long("echo held")).await.unwrap();
    let mut wire = hub.join("wire");
    let mallory = identity(0x33, 1);
    wire.broadcast(&hello(&mallory)).unwrap();
    node.wait_for_peers(1, Duration::from_secs(10))
        .await
        .unwrap();
    for (reply, msg) in [
        (false, vec![0x61, 0xff, 0xff]),
        (true, vec![0x61, 0, 0, 2, 5]),
        (false, vec![0x10]),
        (true, Vec::new()),
    ] {
        let round = Round { reply, msg };
        let frame = plain(&mallory, Kind::SyncRange, &envelope::encode_hello(&round));
        wire.broadcast(&frame).unwrap();
    }
    wait_counter(&node, "rejected.malformed", 3).await;
    let want = Want {
        ids: vec![
            serde_bytes::ByteBuf::from(vec![1u8; 3]),
            serde_bytes::ByteBuf::from(vec![7u8; 16]),
        ],
    };
    wire.broadcast(&plain(
        &mallory,
        Kind::SyncWant,
        &envelope::encode_hello(&want),
    ))
    .unwrap();
    wait_counter(&node, "sync.wants_received", 1).await;
    // Nothing it holds was asked for: no batch went out.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        match tokio::time::timeout(
            Duration::from_millis(100),
            crabnet_core::network::recv(&mut wire),
        )
        .await
        {
            Ok(Some(frame)) => assert_ne!(frame.bytes[4], 9, "a batch for a bogus want"),
            _ => continue,
        }
    }
    // Still working: it answers a well-formed query from the same peer.
    wire.broadcast(&plain(&mallory, Kind::SyncRange, &first_query()))
        .unwrap();
    next_reply(&mut wire).await;
    node.stop().await.unwrap();
}

/// `inner`, vouching for no source: sync answers to a source are limited to
/// `network.sync_answer_ratio` times the bytes it sent (as for an unconfigured UDP address).
struct Unverified(MemoryTransport);

impl Transport for Unverified {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn max_frame_bytes(&self) -> usize {
        self.0.max_frame_bytes()
    }

    fn local_addresses(&self) -> Vec<String> {
        self.0.local_addresses()
    }

    fn broadcast(&mut self, frame: &[u8]) -> crabnet_core::Result<()> {
        self.0.broadcast(frame)
    }

    fn send_to(&mut self, to: &str, frame: &[u8]) -> crabnet_core::Result<()> {
        self.0.send_to(to, frame)
    }

    fn source_verified(&self, _from: &str) -> bool {
        false
    }

    fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<crabnet_core::network::Incoming>> {
        self.0.poll_recv(cx)
    }
}

/// The ids of the messages (not hellos) in the `sync_batch` envelopes among `frames`.
fn batched_messages(frames: &[Vec<u8>]) -> Vec<crabnet_core::model::MessageId> {
    let mut ids = Vec::new();
    for frame in frames {
        let Ok(parsed) = envelope::parse(frame, MAX_ENVELOPE_BYTES) else {
            continue;
        };
        let Ok(batch) = parsed.plain::<crabnet_core::sync::Batch>(Kind::SyncBatch) else {
            continue;
        };
        for item in batch.items {
            let inner = envelope::parse(&item, MAX_ENVELOPE_BYTES).unwrap();
            if matches!(inner.header.kind, Kind::Domain(_)) {
                ids.push(inner.header.message_id.clone());
            }
        }
    }
    ids
}

/// Issue 14: the messages a node sends unasked after a reply (those the peer lacks) count as
/// sent for a sync interval only once they were sent. A push cut short by the peer's credit
/// (here the anti-amplification limit of a source the transport does not vouch for: twice
/// what it sent) goes on as soon as the peer's next frames earn more credit, not a whole
/// sync interval (two minutes here) later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_cut_short_by_the_credit_goes_on_without_waiting_an_interval() {
    let (dir, hub) = dir_and_hub();
    let mut c = config(dir.path(), "a");
    c.network.sync_interval_secs = 120;
    let a = start(c, Box::new(Unverified(hub.join("a")))).await;
    let mut published = Vec::new();
    for i in 0..6 {
        let seed = a.publish(long(&format!("echo pushed-{i}"))).await.unwrap();
        published.push(seed.seed.id);
    }
    let mut wire = hub.join("wire");
    // Of two nodes meeting, the one with the lower id starts the exchange (PROTOCOL section
    // 7): the test peer takes an id above the node's, so that the node queries it. (With a
    // fixed peer id, a node whose random id was higher left the exchange to the peer, and the
    // test waited in vain: seen once in a full run.)
    let peer = (0x44..)
        .map(|tag| identity(tag, 1))
        .find(|p| p.node_id() > a.id())
        .unwrap();
    wire.broadcast(&hello(&peer)).unwrap();
    a.wait_for_peers(1, Duration::from_secs(10)).await.unwrap();
    // The node queries its new peer shortly after its hello.
    let deadline = Instant::now() + Duration::from_secs(20);
    let query = next_frame(&mut wire, deadline, "a query after the hello", |parsed| {
        sync_round(parsed).filter(|round| !round.reply)
    })
    .await;
    // The peer holds nothing: its reply makes the node push all six seeds, and each reply
    // (a fresh envelope every time) earns twice its size in credit.
    let msg = crabnet_core::sync::range::ItemSet::new([])
        .answer(&query.msg, 60_000)
        .unwrap()
        .expect("a reply to a query over six items");
    let reply = Round { reply: true, msg };
    let mut got = std::collections::BTreeSet::new();
    let mut replies = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < published.len() {
        assert!(
            Instant::now() < deadline,
            "after {replies} replies the peer holds {} of the {} seeds pushed to it",
            got.len(),
            published.len()
        );
        wire.broadcast(&plain(
            &peer,
            Kind::SyncRange,
            &envelope::encode_hello(&reply),
        ))
        .unwrap();
        replies += 1;
        let mut frames = Vec::new();
        while let Ok(Some(frame)) = tokio::time::timeout(
            Duration::from_millis(300),
            crabnet_core::network::recv(&mut wire),
        )
        .await
        {
            frames.push(frame.bytes);
        }
        got.extend(batched_messages(&frames));
    }
    assert!(replies > 1, "the first push was not cut short");
    assert!(counter(&a, "sync.answers_over_budget").await > 0);
    a.stop().await.unwrap();
}

/// Seeds the large node holds: issue 14 item 5's 100,000 in one id order (about a minute in a
/// debug build on 2 cores, most of it building the stores), 10,000 in the other.
/// `CRABNET_SYNC_SEEDS` sets another count for both (`scripts/bench-sync.sh`; BENCHMARKS.md,
/// "Sync bytes").
const ISSUE_SEEDS: usize = 100_000;
/// See [`ISSUE_SEEDS`].
const FEWER_SEEDS: usize = 10_000;
/// Seeds the peer lacks.
const MISSING: usize = 10;
/// Most bytes of sync frames the two nodes may send each other until they converge: issue 14
/// asks for less than 64 KB. Measured in a debug build (BENCHMARKS.md, "Sync bytes"): 49.0 and
/// 52.3 KB with 10,000 seeds, 59.0 and 59.3 KB with 100,000, one per id order (the 10 seeds'
/// envelopes take 30.9 KB of it, the rest is range and want envelopes of 2.6 KB of signatures
/// each, one more round per sixteenfold store). Any scheme that lists what a store holds would
/// send at least 32 bytes per seed (320 KB for 10,000).
const SYNC_BUDGET: u64 = 64_000;

/// A `seed_created` message of seed number `i` by `author` at `timestamp`, open for bids for
/// the longest window the rules allow (no decision falls due while the test runs).
fn seed_created(author: &Identity, i: usize, timestamp: u64) -> Message {
    let mut m = seed_message(author, i as u64 + 1, timestamp);
    if let Body::SeedCreated(seed) = &mut m.body {
        seed.command = format!("echo {i}");
        seed.bid_window_secs = crabnet_core::model::limits::MAX_BID_WINDOW_SECS;
    }
    m
}

/// The envelopes of `messages` signed by `author`, on every core.
fn sign_all(author: &Identity, messages: &[Message]) -> Vec<Vec<u8>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = messages.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = messages
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|m| {
                            envelope::message_envelope(
                                author,
                                m,
                                60,
                                &[],
                                MAX_ENVELOPE_BYTES,
                                &mut envelope::os_rng,
                            )
                            .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts.into_iter().flat_map(|p| p.join().unwrap()).collect()
    })
}

/// Stores the messages of `all` that `keep` selects (by index) in node `i`'s data directory,
/// as received from the network, in one transaction.
fn import(net: &Net, i: usize, all: &[(Message, Vec<u8>)], keep: impl Fn(usize) -> bool) {
    let config = Config::with_data_dir(net.nodes[i].dir.clone());
    let store_config = StoreConfig {
        sync: SyncMode::Normal,
        ..StoreConfig::default()
    };
    let mut store = Store::open(&config.db_path(), &store_config).unwrap();
    let chosen = all
        .iter()
        .enumerate()
        .filter(|(k, _)| keep(*k))
        .map(|(_, (m, e))| (m, e.as_slice()));
    let outcomes = store
        .apply_remote_all(chosen, crabnet_core::clock::now_ms())
        .unwrap();
    assert!(
        outcomes.iter().all(|o| *o == RemoteOutcome::Applied),
        "{:?}",
        outcomes.iter().find(|o| **o != RemoteOutcome::Applied)
    );
}

/// Bytes of sync frames node `i` sent (queries, replies, wants and batches), and its queries.
fn sync_sent(net: &Net, i: usize) -> (u64, u64) {
    let c = net.counters(i);
    let sync: BTreeMap<_, _> = c.iter().filter(|(k, _)| k.starts_with("sync.")).collect();
    eprintln!("node {i}: {sync:?}");
    let get = |name: &str| c.get(name).copied().unwrap_or(0);
    (
        get("sync.reconcile_bytes_sent") + get("sync.batch_bytes_sent"),
        get("sync.queries_sent"),
    )
}

/// Issue 14 item 5 at its size (100,000 seeds), the node lacking the seeds having the lower
/// id: it starts the exchange, and asks for the 10 seeds with a `sync_want`.
#[test]
fn a_peer_missing_10_of_many_seeds_converges_on_fewer_bytes_than_listing_them() {
    converges_on_few_bytes(false, ISSUE_SEEDS);
}

/// Issue 14 item 5 with 10,000 seeds, the node holding every seed having the lower id: it
/// starts the exchange and sends the 10 seeds unasked.
#[test]
fn a_holder_of_many_seeds_brings_a_peer_missing_10_up_to_date_on_few_bytes() {
    converges_on_few_bytes(true, FEWER_SEEDS);
}

/// Issue 14 item 5: one node holds `seeds` seeds (`CRABNET_SYNC_SEEDS`), the other the
/// same less 10 spread over the whole range, the holder's id the lower of the two when
/// `holder_lower` (of two nodes querying each other, the exchange of the lower id goes on);
/// two `crabnet listen` processes on 127.0.0.1 (UDP) converge, and the sync frames both sent
/// each other from their start to convergence (every query, reply, want and batch, the 10
/// seeds' envelopes included; counted by the nodes themselves, which stop once the lacking
/// node holds the 10 seeds) stay under [`SYNC_BUDGET`],
/// less than listing the ids alone would take. The stores are built without the network: the
/// envelopes are signed once here, and each store applies its share in one transaction
/// ([`Store::apply_remote_all`]).
fn converges_on_few_bytes(holder_lower: bool, seeds: usize) {
    let n: usize = std::env::var("CRABNET_SYNC_SEEDS")
        .ok()
        .map(|v| v.parse().expect("CRABNET_SYNC_SEEDS is a count"))
        .unwrap_or(seeds);
    // Below this, listing the ids (32 bytes each) would cost less than the budget.
    assert!(
        n as u64 * 32 > SYNC_BUDGET,
        "CRABNET_SYNC_SEEDS must exceed {}",
        SYNC_BUDGET / 32
    );
    let started = Instant::now();
    let mut net = Net::new(2);
    // A sync interval longer than converging takes, so that the bytes counted are those of
    // the exchange that converges (started when the nodes learn of each other), not of
    // periodic rounds that fall inside it: with 10 s, two loaded debug listeners that took
    // 16 s to converge on 100,000 seeds added a periodic query of the holder (65.2 KB in all
    // instead of 59-62 KB). A lost frame would leave the rest to the next interval.
    for (i, node) in net.nodes.iter().enumerate() {
        std::fs::write(
            node.dir.join("config.toml"),
            format!(
                "name = \"n{i}\"\n\n[network]\nsync_interval_secs = 60\ntick_ms = 50\nhello_interval_secs = 5\n"
            ),
        )
        .unwrap();
    }
    let holder = if (net.id(0) < net.id(1)) == holder_lower {
        0
    } else {
        1
    };
    let lacker = 1 - holder;
    let author =
        Identity::load(&Config::with_data_dir(net.nodes[holder].dir.clone()).identity_path())
            .unwrap();
    // Spread over the last three days, the oldest first.
    let now = crabnet_core::clock::now_ms();
    let span = 3 * 24 * 3600 * 1000u64;
    let messages: Vec<Message> = (0..n)
        .map(|i| seed_created(&author, i, now - span + span * i as u64 / n as u64))
        .collect();
    let envelopes = sign_all(&author, &messages);
    let all: Vec<(Message, Vec<u8>)> = messages.into_iter().zip(envelopes).collect();
    let missing: Vec<usize> = (0..MISSING)
        .map(|k| k * n / MISSING + n / (2 * MISSING))
        .collect();
    let signed = started.elapsed();
    import(&net, holder, &all, |_| true);
    import(&net, lacker, &all, |k| !missing.contains(&k));
    let built = started.elapsed();
    // The budget is for the nodes: building the stores takes what it takes.
    net.deadline = Instant::now() + TEST_BUDGET;

    net.start(0, &[1]);
    net.start(1, &[0]);
    for &k in &missing {
        let id = all[k].0.seed_id().as_str().to_owned();
        net.wait_seed(lacker, &id, "gets a seed it lacked", |_| true);
    }
    let converged = started.elapsed();
    // Sync counters may wait a few seconds to be written (they are routine); a node that
    // stops writes them. Both stop once converged: what they sent later (an idle query every
    // interval) is not part of converging.
    net.stop(0);
    net.stop(1);
    let digest = net.wait_converged(&[0, 1], "after sync");
    assert!(!digest.is_empty());
    let (bytes_a, queries_a) = sync_sent(&net, 0);
    let (bytes_b, queries_b) = sync_sent(&net, 1);
    let total = bytes_a + bytes_b;
    eprintln!(
        "{n} seeds, {MISSING} missing, holder {holder} (lower id: {holder_lower}): signed in {signed:?}, stores built at {built:?}, \
         converged at {converged:?}; sync bytes sent {bytes_a} + {bytes_b} = {total} \
         ({queries_a} + {queries_b} queries)"
    );
    for i in [0, 1] {
        let seeds: u64 = net.status(i)["seeds_by_status"]
            .as_object()
            .expect("seeds_by_status")
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(seeds, n as u64, "node {i}");
    }
    assert!(
        total < SYNC_BUDGET,
        "converging on {MISSING} of {n} seeds cost {total} bytes ({bytes_a} + {bytes_b})"
    );
    assert!(total < 32 * n as u64, "{total} bytes for {n} seeds");
    // The counters did count the exchange: the 10 envelopes alone take 3 KB each.
    assert!(
        total > MISSING as u64 * 2_500,
        "{total} bytes cannot have carried {MISSING} seeds"
    );
}
