//! Hand-made identities, hellos and envelopes for the tests that attack a node's trust boundary
//! (`tests/trust.rs`, `trust_policy.rs`, `limits.rs`, `rotation.rs`, `hellos.rs`; [`list_frame`]
//! for rotation and revocation lists); the set-up of in-process tests: [`dir_and_hub`], [`start`]
//! (a node on an in-memory hub), [`meshed`] (several that know each other), [`start_with_wire`]
//! (and a transport to send it frames by hand), [`short_seen_window`], [`publish_for_bids`],
//! [`mesh`], [`stop_all`], [`Gated`] (an in-memory transport that loses or fails sends:
//! `sync_range.rs`; [`severable`], cut off while a flag is set, and [`start_severable`], a node
//! on it: `alerts.rs`, `node.rs`),
//! [`quiet_config`] (a node whose housekeeping writes nothing after its start) with
//! [`db_files`] and [`settled_db_files`] (did receiving a frame write?: `hellos.rs`, `node.rs`),
//! [`udp_node`] (a node on a real UDP socket on 127.0.0.1: `limits.rs`, `hellos.rs`, with
//! [`loopback_udp`] its transport) and [`tcp_swarm`] (a hand-made libp2p peer: `dht.rs`,
//! `trust.rs`); and their bounded waits on a node's seeds, counters and frames ([`poll`],
//! [`poll_every`], [`wait_view`], [`wait_view_until`], [`claim_and_run_when_awarded`],
//! [`wait_counter`], [`wait_while_missing`], [`converged`], all on the one loop of [`poll_until`];
//! [`next_frame`], [`frames_until`]; also `tests/node.rs`, `dht.rs`, `retention.rs`, `sync.rs`,
//! `sync_range.rs`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crabnet_core::clock::now_ms;
use crabnet_core::crypto::{KemSeeds, SigningSeeds};
use crabnet_core::envelope::{self, Header, Hello, Kind, MAX_ENVELOPE_BYTES};
use crabnet_core::identity::Identity;
use crabnet_core::model::{Body, Message, MessageId, Seed, SeedId};
use crabnet_core::network::{Incoming, MemoryTransport, Transport};
use crabnet_core::{Config, MemoryHub, Node, SeedView};

/// A node configuration in `dir/name` with a fast housekeeping tick.
pub fn config(dir: &std::path::Path, name: &str) -> Config {
    let mut c = Config::with_data_dir(dir.join(name));
    c.name = name.into();
    c.network.tick_ms = 20;
    c
}

/// [`config`] with a hello and a sync round every second: nodes meet, and make up for frames
/// they missed, within seconds.
pub fn lively_config(dir: &std::path::Path, name: &str) -> Config {
    let mut c = config(dir, name);
    c.network.hello_interval_secs = 1;
    c.network.sync_interval_secs = 1;
    c
}

/// Has a node with `c` remember the ids of the messages it saw for two seconds only: messages
/// are fresh for one second, with one second of clock skew, and the seen window must cover
/// both (`store.seen_ttl_secs` >= `network.message_ttl_secs` + `max_clock_skew_secs`).
pub fn short_seen_window(c: &mut Config) {
    c.network.message_ttl_secs = 1;
    c.network.max_clock_skew_secs = 1;
    c.store.seen_ttl_secs = 2;
}

/// The database files of a data directory: their sizes and modification times.
pub fn db_files(dir: &std::path::Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let db = Config::with_data_dir(dir.to_path_buf()).db_path();
    let db = db.file_name().unwrap().to_string_lossy();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e))
        .filter(|(name, _)| name.starts_with(db.as_ref()))
        .map(|(name, e)| {
            let m = e.metadata().unwrap();
            (name, m.len(), m.modified().unwrap())
        })
        .collect();
    files.sort();
    files
}

/// The database files of a data directory ([`db_files`]) once they stopped changing: the
/// same after 300 ms. Panics, naming the files, when they still change after 20 s.
pub async fn settled_db_files(dir: &std::path::Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut before = db_files(dir);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = db_files(dir);
        if now == before {
            return before;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the database files of {} still change after 20 s: {before:?} then {now:?}",
            dir.display()
        );
        before = now;
    }
}

/// The config of node "n" whose housekeeping ticks once, at start: nothing it writes
/// (counters, `last_seen`) can hide a write made by receiving a frame.
pub fn quiet_config(dir: &std::path::Path) -> Config {
    let mut c = config(dir, "n");
    c.network.tick_ms = 60_000;
    c
}

/// A temporary directory for a test's data directories, and the in-memory hub its nodes meet
/// on.
pub fn dir_and_hub() -> (tempfile::TempDir, MemoryHub) {
    (tempfile::tempdir().unwrap(), MemoryHub::new())
}

/// Starts a node with `c` on `hub`, where it joins under its name (`c.name`).
pub async fn start(c: Config, hub: &MemoryHub) -> Node {
    let name = c.name.clone();
    Node::start_with_transport(c, Box::new(hub.join(&name)))
        .await
        .unwrap()
}

/// Starts nodes named `names` (each with [`config`] in `dir`) on `hub`, in order, and waits
/// until they all know each other (see [`mesh`]).
pub async fn meshed<const N: usize>(
    dir: &std::path::Path,
    hub: &MemoryHub,
    names: [&str; N],
) -> [Node; N] {
    let mut nodes = Vec::with_capacity(N);
    for name in names {
        nodes.push(start(config(dir, name), hub).await);
    }
    mesh(&nodes).await;
    nodes
        .try_into()
        .unwrap_or_else(|_| unreachable!("one node per name"))
}

/// Starts a node with `c` on `hub` (see [`start`]), and joins `hub` as `wire`: the transport
/// on which a test sends the node frames made by hand.
pub async fn start_with_wire(c: Config, hub: &MemoryHub) -> (Node, MemoryTransport) {
    let node = start(c, hub).await;
    (node, hub.join("wire"))
}

/// Has `node` publish `command`, its bidding closing at the `max_bids`-th bid: the seed.
pub async fn publish_for_bids(node: &Node, command: &str, max_bids: u32) -> SeedView {
    let req = crabnet_core::PublishRequest {
        max_bids,
        ..crabnet_core::PublishRequest::new(command)
    };
    node.publish(req).await.unwrap()
}

/// A deterministic identity per `tag` (key generation from seeds is cheap): the same tag gives
/// the same keys whatever the epoch.
pub fn identity(tag: u32, epoch: u32) -> Identity {
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
        epoch,
    )
}

/// 16 random bytes (ids).
pub fn rand16() -> [u8; 16] {
    let mut b = [0u8; 16];
    envelope::os_rng(&mut b);
    b
}

/// A fresh plain (unsealed) envelope of `kind` signed by `signer`.
pub fn plain(signer: &Identity, kind: Kind, payload: &[u8]) -> Vec<u8> {
    let header = Header {
        kind,
        sealed: false,
        sender: signer.node_id().clone(),
        message_id: MessageId::from_bytes(rand16()),
        timestamp: now_ms(),
        ttl_secs: 60,
        lamport: 0,
    };
    envelope::build(
        signer,
        &header,
        payload,
        &[],
        MAX_ENVELOPE_BYTES,
        &mut envelope::os_rng,
    )
    .unwrap()
}

/// A hello announcing `id`'s keys (with `certificate`), signed by `signer` (a forgery when
/// that is another identity).
pub fn hello_signed_by(id: &Identity, signer: &Identity, certificate: Option<Vec<u8>>) -> Vec<u8> {
    hello_full(id, signer, certificate, Vec::new(), Vec::new())
}

/// `id`'s own hello announcing `addresses`.
pub fn hello_announcing(id: &Identity, addresses: Vec<String>) -> Vec<u8> {
    hello_full(id, id, None, Vec::new(), addresses)
}

/// A hello of `id` (rotated keys) carrying its rotation chain `rotations`, signed by `id`.
pub fn hello_rotated(id: &Identity, rotations: Vec<Vec<u8>>) -> Vec<u8> {
    hello_full(id, id, None, rotations, Vec::new())
}

fn hello_full(
    id: &Identity,
    signer: &Identity,
    certificate: Option<Vec<u8>>,
    rotations: Vec<Vec<u8>>,
    addresses: Vec<String>,
) -> Vec<u8> {
    let hello = Hello {
        name: "stranger".into(),
        addresses,
        key_epoch: id.public().epoch,
        signing_public: id.public().signing.to_bytes(),
        kem_public: id.public().kem.to_bytes(),
        certificate,
        rotations: rotations
            .into_iter()
            .map(serde_bytes::ByteBuf::from)
            .collect(),
    };
    plain(signer, Kind::NodeHello, &envelope::encode_hello(&hello))
}

/// `id`'s own hello, without a certificate.
pub fn hello(id: &Identity) -> Vec<u8> {
    hello_signed_by(id, id, None)
}

/// A valid `seed_created` message by `id` (rules 1).
pub fn seed_message(id: &Identity, lamport: u64, timestamp: u64) -> Message {
    Message {
        id: MessageId::from_bytes(rand16()),
        sender: id.node_id().clone(),
        lamport,
        timestamp,
        body: Body::SeedCreated(Seed {
            command: "true".into(),
            min_price: 1,
            max_price: 10,
            bid_window_secs: 60,
            max_bids: 1,
            ..super::fold_fixtures::seed(
                SeedId::from_bytes(rand16()),
                id.node_id().clone(),
                timestamp,
            )
        }),
    }
}

/// A list envelope of `kind` (`key_rotations`, `revocations`) from `sender` carrying `items`,
/// each an encoded statement.
pub fn list_frame(
    sender: &Identity,
    kind: Kind,
    items: impl IntoIterator<Item = impl AsRef<[u8]>>,
) -> Vec<u8> {
    let list = crabnet_core::sync::Batch {
        items: items
            .into_iter()
            .map(|item| serde_bytes::ByteBuf::from(item.as_ref().to_vec()))
            .collect(),
    };
    plain(sender, kind, &envelope::encode_hello(&list))
}

/// `m` in a public envelope signed by `id`, fresh for `ttl` seconds.
pub fn seal(id: &Identity, m: &Message, ttl: u32) -> Vec<u8> {
    envelope::message_envelope(id, m, ttl, &[], MAX_ENVELOPE_BYTES, &mut envelope::os_rng).unwrap()
}

/// Calls `f`, pausing `pause` between calls, until it returns `Ok`, the value; once `deadline`
/// has passed, the last `Err` (what `f` last saw), for the caller's failure message. The one
/// deadline loop of the waits below; waits in a row may share one `deadline`.
pub async fn poll_until<T, E, F: Future<Output = Result<T, E>>>(
    deadline: Instant,
    pause: Duration,
    mut f: impl FnMut() -> F,
) -> Result<T, E> {
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => tokio::time::sleep(pause).await,
        }
    }
}

/// Polls `f` every 10 ms until it returns `Some`; fails with `what()` once `within` has
/// passed.
pub async fn poll<T, F: Future<Output = Option<T>>>(
    within: Duration,
    what: impl Fn() -> String,
    f: impl FnMut() -> F,
) -> T {
    poll_every(within, Duration::from_millis(10), what, f).await
}

/// [`poll`], pausing `pause` between calls.
pub async fn poll_every<T, F: Future<Output = Option<T>>>(
    within: Duration,
    pause: Duration,
    what: impl Fn() -> String,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    poll_until(deadline, pause, || {
        let seen = f();
        async move { seen.await.ok_or(()) }
    })
    .await
    .unwrap_or_else(|()| panic!("timed out: {}", what()))
}

/// Waits (`within` at most) until `node` knows seed `id` in a state `pred` accepts; returns
/// the view. `what` names the wait in the failure.
pub async fn wait_view(
    node: &Node,
    id: &SeedId,
    within: Duration,
    what: &str,
    pred: impl Fn(&SeedView) -> bool,
) -> SeedView {
    let what = format!(
        "timed out: {} never saw seed {id} {what}",
        node.config().name
    );
    let pause = Duration::from_millis(10);
    wait_view_until(node, id, Instant::now() + within, pause, &what, pred).await
}

/// Waits until `node` knows seed `id` in a state `pred` accepts, checking every `pause`; once
/// `deadline` has passed, fails with `what` and the seed's last status. Returns the view.
pub async fn wait_view_until(
    node: &Node,
    id: &SeedId,
    deadline: Instant,
    pause: Duration,
    what: &str,
    pred: impl Fn(&SeedView) -> bool,
) -> SeedView {
    let pred = &pred;
    poll_until(deadline, pause, || async move {
        match node.seed(id).await {
            Ok(v) if pred(&v) => Ok(v),
            Ok(v) => Err(format!(
                "status {:?}, {}",
                v.status,
                if v.award.is_some() {
                    "awarded"
                } else {
                    "no award"
                }
            )),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .unwrap_or_else(|last| panic!("{what} (last seen: {last})"))
}

/// Waits (10 s at most) until `node` knows seed `id`.
pub async fn eventually_knows(node: &Node, id: &SeedId) {
    wait_view(node, id, Duration::from_secs(10), "arrive", |_| true).await;
}

/// Waits until `node` sees seed `id` awarded, checking every `pause` and failing with `what`
/// once `deadline` has passed; then claims the seed and runs it.
pub async fn claim_and_run_when_awarded(
    node: &Node,
    id: &SeedId,
    deadline: Instant,
    pause: Duration,
    what: &str,
) {
    wait_view_until(node, id, deadline, pause, what, |v| v.award.is_some()).await;
    node.claim(id).await.unwrap();
    node.run(id).await.unwrap();
}

/// A counter of `node` (0 when absent).
pub async fn counter(node: &Node, name: &str) -> u64 {
    node.overview()
        .await
        .unwrap()
        .counters
        .get(name)
        .copied()
        .unwrap_or(0)
}

/// Waits (20 s at most) until `node`'s counter `name` reaches `at_least`.
pub async fn wait_counter(node: &Node, name: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    poll_until(deadline, Duration::from_millis(20), || async {
        let counters = node.overview().await.unwrap().counters;
        let v = counters.get(name).copied().unwrap_or(0);
        if v >= at_least {
            Ok(())
        } else {
            Err((v, counters))
        }
    })
    .await
    .unwrap_or_else(|(v, counters)| {
        panic!("counter {name} stayed at {v}, wanted {at_least}: {counters:?}")
    })
}

/// Calls `missing` every `pause` until it returns `None` (nothing is missing any more); once
/// `within` has passed, fails with what it last said was missing and `node`'s counters.
pub async fn wait_while_missing<F: Future<Output = Option<String>>>(
    node: &Node,
    within: Duration,
    pause: Duration,
    mut missing: impl FnMut() -> F,
) {
    let deadline = Instant::now() + within;
    let waited = poll_until(deadline, pause, || {
        let missing = missing();
        async move { missing.await.map_or(Ok(()), Err) }
    })
    .await;
    if let Err(what) = waited {
        let counters = node.overview().await.unwrap().counters;
        panic!("{what}: {counters:?}");
    }
}

/// Receives frames on `wire` until `pick` takes one (returns `Some` for its envelope, parsed);
/// fails with `what` once `deadline` has passed.
pub async fn next_frame<T>(
    wire: &mut MemoryTransport,
    deadline: Instant,
    what: &str,
    mut pick: impl FnMut(&envelope::Parsed<'_>) -> Option<T>,
) -> T {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, crabnet_core::network::recv(wire))
            .await
            .expect(what)
            .unwrap();
        let parsed = envelope::parse(&frame.bytes, MAX_ENVELOPE_BYTES).unwrap();
        if let Some(v) = pick(&parsed) {
            return v;
        }
    }
}

/// Every frame `wire` receives until `deadline`, in order.
pub async fn frames_until(wire: &mut MemoryTransport, deadline: Instant) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        crabnet_core::network::recv(wire),
    )
    .await
    {
        frames.push(frame.bytes);
    }
    frames
}

/// Waits (10 s at most each) until every node of `nodes` verified every other node's hello.
pub async fn mesh<N: std::borrow::Borrow<Node>>(nodes: &[N]) {
    for n in nodes {
        n.borrow()
            .wait_for_peers(nodes.len() - 1, Duration::from_secs(10))
            .await
            .unwrap();
    }
}

/// Stops every node of `nodes`.
pub async fn stop_all(nodes: impl IntoIterator<Item = Node>) {
    for n in nodes {
        n.stop().await.unwrap();
    }
}

/// Waits (`within` at most) until every node holds `seeds` seeds and all state digests agree.
pub async fn converged(nodes: &[&Node], seeds: u64, within: Duration) {
    let deadline = Instant::now() + within;
    poll_until(deadline, Duration::from_millis(50), || async {
        let mut digests = Vec::new();
        let mut counts = Vec::new();
        for n in nodes {
            let o = n.overview().await.unwrap();
            digests.push(o.state_digest);
            counts.push(o.seeds_by_status.values().sum::<u64>());
        }
        if digests.windows(2).all(|w| w[0] == w[1]) && counts.iter().all(|c| *c == seeds) {
            Ok(())
        } else {
            Err((counts, digests))
        }
    })
    .await
    .unwrap_or_else(|(counts, digests)| {
        panic!(
            "no convergence within {within:?}: seeds {counts:?}, wanted {seeds}, digests {digests:?}"
        )
    })
}

/// What a [`Gated`] transport does with a frame it is asked to send: `Ok(true)` sends it,
/// `Ok(false)` drops it (a lost frame), an error fails the send (a node cut off).
pub type Gate = Box<dyn Fn(&[u8]) -> crabnet_core::Result<bool> + Send>;

/// An in-memory transport whose sends (broadcasts and sends to one peer) pass a [`Gate`]
/// first; everything else is the inner transport's.
pub struct Gated {
    inner: MemoryTransport,
    gate: Gate,
}

impl Gated {
    /// `inner` with `gate` in front of its sends.
    pub fn new(
        inner: MemoryTransport,
        gate: impl Fn(&[u8]) -> crabnet_core::Result<bool> + Send + 'static,
    ) -> Gated {
        Gated {
            inner,
            gate: Box::new(gate),
        }
    }
}

impl Transport for Gated {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn max_frame_bytes(&self) -> usize {
        self.inner.max_frame_bytes()
    }

    fn local_addresses(&self) -> Vec<String> {
        self.inner.local_addresses()
    }

    fn broadcast(&mut self, frame: &[u8]) -> crabnet_core::Result<()> {
        if (self.gate)(frame)? {
            self.inner.broadcast(frame)?;
        }
        Ok(())
    }

    fn send_to(&mut self, to: &str, frame: &[u8]) -> crabnet_core::Result<()> {
        if (self.gate)(frame)? {
            self.inner.send_to(to, frame)?;
        }
        Ok(())
    }

    fn source_verified(&self, from: &str) -> bool {
        self.inner.source_verified(from)
    }

    fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Incoming>> {
        self.inner.poll_recv(cx)
    }
}

/// `inner` failing every send while `cut` is set (the node is cut off from its peers).
pub fn severable(inner: MemoryTransport, cut: Arc<AtomicBool>) -> Gated {
    Gated::new(inner, move |_| {
        if cut.load(Ordering::SeqCst) {
            Err(crabnet_core::Error::new(
                crabnet_core::ErrorKind::Network,
                "network unreachable (cut off by the test)",
            ))
        } else {
            Ok(true)
        }
    })
}

/// Starts a node with `c` on `hub`, where it joins under its name (as [`start`] does), every
/// send of it failing while `cut` is set ([`severable`]).
pub async fn start_severable(c: Config, hub: &MemoryHub, cut: Arc<AtomicBool>) -> Node {
    let transport = severable(hub.join(&c.name), cut);
    Node::start_with_transport(c, Box::new(transport))
        .await
        .unwrap()
}

/// A UDP transport on a free port of 127.0.0.1 with `peers` as its configured peers.
pub fn loopback_udp(peers: Vec<std::net::SocketAddr>) -> crabnet_core::network::UdpTransport {
    crabnet_core::network::UdpTransport::bind(crabnet_core::network::UdpConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        peers,
        broadcast: None,
    })
    .unwrap()
}

/// A node on a real UDP socket on 127.0.0.1 with `peers` as its configured peers.
pub async fn udp_node(c: Config, peers: Vec<std::net::SocketAddr>) -> (Node, std::net::SocketAddr) {
    let udp = loopback_udp(peers);
    let addr = udp.local_addr().unwrap();
    (
        Node::start_with_transport(c, Box::new(udp)).await.unwrap(),
        addr,
    )
}

/// A libp2p swarm with the identity `key` on TCP (noise, yamux; no Nagle delay, as a node's):
/// a peer made by hand to meet a node. Its behaviour is made by `behaviour` from its key, and
/// `config` adjusts the default swarm configuration (`|c| c` keeps it). Must be called inside
/// a tokio runtime.
pub fn tcp_swarm<B: libp2p::swarm::NetworkBehaviour>(
    key: libp2p::identity::Keypair,
    behaviour: impl FnOnce(&libp2p::identity::Keypair) -> B,
    config: impl FnOnce(libp2p::swarm::Config) -> libp2p::swarm::Config,
) -> libp2p::Swarm<B> {
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(behaviour)
        .unwrap()
        .with_swarm_config(config)
        .build()
}
