//! Bounded cost of hostile traffic (issue 12, items 2 and 3), against running nodes on real
//! UDP sockets on 127.0.0.1 (and the in-process hub where the transport does not matter):
//! rate limits per source and per claimed sender that spare sync batches, a capped peer table,
//! the Lamport window, and sync answers that go only to the requester within its budget.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crabnet_core::clock::now_ms;
use crabnet_core::crypto::{KemSeeds, SigningSeeds};
use crabnet_core::envelope::{self, Header, Hello, Kind, MAX_ENVELOPE_BYTES};
use crabnet_core::identity::Identity;
use crabnet_core::model::{Body, Message, MessageId, Seed, SeedId};
use crabnet_core::network::{UdpConfig, UdpTransport};
use crabnet_core::{Config, EventKind, MemoryHub, Node, PublishRequest};

fn config(dir: &std::path::Path, name: &str) -> Config {
    let mut c = Config::with_data_dir(dir.join(name));
    c.name = name.into();
    c.network.tick_ms = 20;
    c.events.log_enabled = false;
    c
}

/// A deterministic identity per `tag` (key generation from seeds is cheap).
fn identity(tag: u32) -> Identity {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&tag.to_le_bytes());
    seed[4] = 0xc5;
    let mut kem = [0u8; 64];
    kem[..32].copy_from_slice(&seed);
    Identity::from_seeds(
        &SigningSeeds {
            ed25519: seed,
            ml_dsa: seed,
        },
        &KemSeeds {
            x25519: seed,
            ml_kem: kem,
        },
        0,
    )
}

fn rand16() -> [u8; 16] {
    let mut b = [0u8; 16];
    envelope::os_rng(&mut b);
    b
}

fn hello(id: &Identity) -> Vec<u8> {
    let hello = Hello {
        name: "stranger".into(),
        addresses: vec![],
        key_epoch: id.public().epoch,
        signing_public: id.public().signing.to_bytes(),
        kem_public: id.public().kem.to_bytes(),
    };
    plain(id, Kind::NodeHello, &envelope::encode_hello(&hello))
}

fn plain(id: &Identity, kind: Kind, payload: &[u8]) -> Vec<u8> {
    let header = Header {
        kind,
        sealed: false,
        sender: id.node_id().clone(),
        message_id: MessageId::from_bytes(rand16()),
        timestamp: now_ms(),
        ttl_secs: 60,
        lamport: 0,
    };
    envelope::build(
        id,
        &header,
        payload,
        &[],
        MAX_ENVELOPE_BYTES,
        &mut envelope::os_rng,
    )
    .unwrap()
}

#[allow(dead_code)] // used by the Lamport test below
fn seed_message(id: &Identity, lamport: u64) -> Message {
    let now = now_ms();
    Message {
        id: MessageId::from_bytes(rand16()),
        sender: id.node_id().clone(),
        lamport,
        timestamp: now,
        body: Body::SeedCreated(Seed {
            id: SeedId::from_bytes(rand16()),
            publisher: id.node_id().clone(),
            command: "true".into(),
            description: String::new(),
            min_price: 1,
            max_price: 10,
            bid_window_secs: 60,
            max_bids: 1,
            timeout_secs: 10,
            created_at: now,
            audience: vec![],
            network: false,
            isolation: crabnet_core::model::SandboxLevel::Full,
        }),
    }
}

#[allow(dead_code)]
fn seal(id: &Identity, m: &Message) -> Vec<u8> {
    envelope::message_envelope(id, m, 60, &[], MAX_ENVELOPE_BYTES, &mut envelope::os_rng).unwrap()
}

async fn counter(node: &Node, name: &str) -> u64 {
    node.overview()
        .await
        .unwrap()
        .counters
        .get(name)
        .copied()
        .unwrap_or(0)
}

async fn wait_counter(node: &Node, name: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = counter(node, name).await;
        if v >= at_least {
            return;
        }
        let counters = node.overview().await.unwrap().counters;
        assert!(
            Instant::now() < deadline,
            "counter {name} stayed at {v}, wanted {at_least}: {counters:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node on a real UDP socket on 127.0.0.1 with `peers` as its configured peers.
async fn udp_node(c: Config, peers: Vec<SocketAddr>) -> (Node, SocketAddr) {
    let udp = UdpTransport::bind(UdpConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        peers,
        broadcast: None,
    })
    .unwrap();
    let addr = udp.local_addr().unwrap();
    (
        Node::start_with_transport(c, Box::new(udp)).await.unwrap(),
        addr,
    )
}

fn socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// Sends `frame` `n` times, pausing now and then so the receive buffer never overflows.
fn send_paced(sock: &UdpSocket, to: SocketAddr, frame: &[u8], n: usize) {
    for i in 0..n {
        sock.send_to(frame, to).unwrap();
        if i % 16 == 15 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

async fn rejection_events(node: &Node, reason: &str) -> Vec<EventKind> {
    node.events_after(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .filter(
            |k| matches!(k, EventKind::MessageRejected { reason: r, .. } if r.as_str() == reason),
        )
        .collect()
}

/// One source sending more than its rate, and one claimed sender spread over many sources,
/// are both `rate_limited`: counted in memory, with one event (not one per frame).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_and_claimed_senders_over_their_rate_are_limited_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), "n");
    c.network.source_rate_per_sec = 1;
    c.network.source_burst = 10;
    c.network.sender_rate_per_sec = 1;
    c.network.sender_burst = 50;
    let (node, addr) = udp_node(c, vec![]).await;

    // 200 copies of one valid hello from one socket: at most ~10 + elapsed seconds pass.
    let frame = hello(&identity(1));
    let flooder = socket();
    let started = Instant::now();
    send_paced(&flooder, addr, &frame, 200);
    let passed = 10 + started.elapsed().as_secs() + 2;
    wait_counter(&node, "rejected.rate_limited", 200 - passed).await;
    assert_eq!(node.peers().await.unwrap().len(), 1);

    // Another identity's hello from 100 sources, 2 copies each: the sources are within their
    // rate, the claimed sender is not.
    let frame = hello(&identity(2));
    let before = counter(&node, "rejected.rate_limited").await;
    let started = Instant::now();
    for _ in 0..100 {
        send_paced(&socket(), addr, &frame, 2);
    }
    let passed = 50 + started.elapsed().as_secs() + 2;
    wait_counter(&node, "rejected.rate_limited", before + 200 - passed).await;

    let events = rejection_events(&node, "rate_limited").await;
    // At most one event per source and window (101 sources), not one per frame (~340).
    assert!(
        events.len() <= 101,
        "one event per source and window, not per frame: {}",
        events.len()
    );
    node.stop().await.unwrap();
}

/// A sync batch is one frame for the rate limits, however many envelopes it carries: a late
/// joiner with tight limits still receives 40 seeds from one peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_batch_of_many_envelopes_is_not_limited_as_many_frames() {
    let dir = tempfile::tempdir().unwrap();
    let hub = MemoryHub::new();
    let mut ca = config(dir.path(), "a");
    ca.network.sync_interval_secs = 1;
    let a = Node::start_with_transport(ca, Box::new(hub.join("a")))
        .await
        .unwrap();
    for i in 0..40 {
        a.publish(PublishRequest::new(format!("echo {i}")))
            .await
            .unwrap();
    }
    let mut cb = config(dir.path(), "b");
    cb.network.sync_interval_secs = 1;
    cb.network.source_rate_per_sec = 2;
    cb.network.source_burst = 5;
    cb.network.sender_rate_per_sec = 2;
    cb.network.sender_burst = 5;
    let b = Node::start_with_transport(cb, Box::new(hub.join("b")))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = b.seeds(None).await.unwrap().len();
        if n == 40 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the late joiner holds {n} of 40 seeds: {:?}",
            b.overview().await.unwrap().counters
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in [a, b] {
        n.stop().await.unwrap();
    }
}

/// Reads datagrams until `quiet` passes without one; returns them.
fn drain(sock: &UdpSocket, quiet: Duration) -> Vec<Vec<u8>> {
    sock.set_read_timeout(Some(quiet)).unwrap();
    let mut buf = vec![0u8; 70_000];
    let mut out = Vec::new();
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

fn kind_of(frame: &[u8]) -> Option<Kind> {
    envelope::parse(frame, MAX_ENVELOPE_BYTES)
        .ok()
        .map(|p| p.header.kind)
}

async fn publish_many(node: &Node, n: usize) {
    let mut tasks = Vec::new();
    for w in 0..4 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(4) {
                node.publish(PublishRequest::new(format!("echo {i}")))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Ten empty digests from an address that is not a configured peer, against a store of 1,000
/// seeds: the answers go to that address only (a configured bystander gets no batch), and
/// they add up to at most twice the digests' bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_answers_go_to_the_requester_only_within_twice_its_digests() {
    let dir = tempfile::tempdir().unwrap();
    let bystander = socket();
    let mut c = config(dir.path(), "n");
    c.store.sync = crabnet_core::store::SyncMode::Normal;
    let (node, addr) = udp_node(c, vec![bystander.local_addr().unwrap()]).await;
    publish_many(&node, 1000).await;

    let mallory = identity(7);
    let sock = socket();
    sock.send_to(&hello(&mallory), addr).unwrap();
    node.wait_for_peers(1, Duration::from_secs(20))
        .await
        .unwrap();
    drain(&sock, Duration::from_millis(300));
    drain(&bystander, Duration::from_millis(300));

    let digest = crabnet_core::sync::Digest {
        reply: false,
        seeds: vec![],
    };
    let mut asked = 0;
    for _ in 0..10 {
        let frame = plain(&mallory, Kind::SyncDigest, &envelope::encode_hello(&digest));
        asked += frame.len();
        sock.send_to(&frame, addr).unwrap();
    }
    wait_counter(&node, "sync.digests_received", 10).await;
    let answers = drain(&sock, Duration::from_secs(1));
    let answered: usize = answers.iter().map(Vec::len).sum();
    assert!(
        answers.iter().all(|f| kind_of(f) == Some(Kind::SyncBatch)),
        "only sync batches go to the requester"
    );
    assert!(answered > 0, "the requester gets what its credit allows");
    let stray: Vec<_> = drain(&bystander, Duration::from_millis(300))
        .into_iter()
        .filter(|f| kind_of(f) == Some(Kind::SyncBatch))
        .collect();
    assert!(
        stray.is_empty(),
        "{} sync batches went to a peer that did not ask",
        stray.len()
    );
    assert!(
        answered <= 2 * asked,
        "sent {answered} bytes for {asked} bytes of digests"
    );
    node.stop().await.unwrap();
}
