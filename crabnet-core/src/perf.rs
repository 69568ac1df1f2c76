//! Throughput of one node next to the cost of the cryptography, measured in one run: what
//! `crabnet bench` prints (see `BENCHMARKS.md` for results and how to read them).
//!
//! [`run`] measures, one after another on this machine:
//!
//! 1. **The verify floor**: the bare library calls that check one envelope's two signatures
//!    (dalek Ed25519 `verify_strict` and libcrux ML-DSA-44, keys expanded beforehand,
//!    `crypto::RawSignatures`), on one thread, over the bytes of a real envelope:
//!    `verify_floor_per_s`.
//! 2. **Envelope overhead**: building, parsing, verifying and decoding a plain envelope
//!    (`message_envelope` + `parse` + `verify` + `message`) over raw sign + raw verify of the
//!    same bytes, run alternately in short batches so both see the same load; the median of
//!    the per-round ratios is `sign_verify_overhead`.
//! 3. **Publish**: seeds published through [`Node::publish`] (`store.sync` as
//!    [`BenchOptions::sync`] says, as for the node of step 4), on each peer's data directory
//!    while that peer is stopped, so that they wait in the peers' outboxes for step 4: the
//!    first fifth of each peer's seeds one after another (`publish_single_per_s`: one caller,
//!    every publish its own commit), the rest from `publishers` concurrent tasks
//!    ([`BenchOptions::publishers`], 32 by default), whose publishes the node commits in
//!    groups: `publish_per_s`.
//! 4. **Apply**: a node in this process on 127.0.0.1 and `peers` real `crabnet listen`
//!    processes (their own temp data directories) that first introduce themselves (hellos),
//!    are stopped while step 3 fills their outboxes, and are started again: each then sends
//!    its distinct, validly signed seeds to the node, which verifies, deduplicates, stores and
//!    applies them. `applied_per_s` is the rate from the moment the node took up the first
//!    seed (the `at` of the first `seed_published` event: the node's clock when that envelope
//!    began to cross the trust boundary, before its signatures were checked) to the delivery
//!    of the last `seed_published` event; events are delivered after their group's commit, so
//!    measuring from the first event's delivery would count the first group (up to 256
//!    envelopes) as applied in no time. The node's event bus holds all of the run's events,
//!    so none is dropped before the benchmark reads it (a run that drops some fails).
//!    `apply_ratio` is `applied_per_s` over the floor. The node and its peers meet on UDP
//!    (each peer unicasts to the node; a sender that outruns the node loses datagrams, which
//!    sync repairs) or on libp2p (each peer dials the node over TCP and publishes through
//!    gossipsub): [`BenchOptions::transport`].
//!
//! The peer processes are killed and the temp directories removed when [`run`] returns, fails
//! or is dropped (cancelled).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;
use crate::crypto::{DUAL_SIGNATURE_LEN, RawSignatures};
use crate::envelope::{self, MAX_ENVELOPE_BYTES, SIGNATURE_CONTEXT};
use crate::error::{Error, ErrorKind, Result};
use crate::identity::Identity;
use crate::model::{Body, Message, MessageId, Millis, SeedId, Settlement, SettlementOutcome};
use crate::monitor::EventKind;
use crate::network::{DhtConfig, UdpConfig, UdpTransport};
use crate::node::{Node, PublishRequest};
use crate::store::{StoreConfig, SyncMode};

/// What [`run`] does and how long.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The `crabnet` executable the peer processes run (`crabnet listen`).
    pub program: PathBuf,
    /// Number of peer processes.
    pub peers: usize,
    /// Seeds each peer publishes and then sends to the node.
    pub seeds_per_peer: usize,
    /// Concurrent tasks that publish (through the async API) for `publish_per_s`.
    pub publishers: usize,
    /// How long the floor and the overhead are measured, each.
    pub crypto_time: Duration,
    /// Longest wait for the peers' hellos, and for the node to apply everything.
    pub timeout: Duration,
    /// The transport the node and its peers meet on.
    pub transport: BenchTransport,
    /// How hard the stores measured (the publishing ones of step 3, the applying node of
    /// step 4) sync their commits; the node's default, `full`, unless told otherwise.
    pub sync: SyncMode,
}

/// The transport of a benchmark's apply step (step 4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchTransport {
    /// The UDP backend: each peer unicasts its frames to the node. There is no flow control:
    /// a burst larger than the node's receive buffer loses datagrams, which sync repairs.
    #[default]
    Udp,
    /// libp2p: each peer dials the node over TCP and publishes through gossipsub. The node's
    /// socket drops nothing; a peer's gossipsub refuses a publish while its queue to the node
    /// is full (5,000 messages), and sync brings what it refused, as it does UDP's losses.
    Dht,
}

impl BenchTransport {
    /// Its name, as `crabnet listen --transport` takes it (`udp`, `dht`).
    pub fn name(self) -> &'static str {
        match self {
            BenchTransport::Udp => "udp",
            BenchTransport::Dht => "dht",
        }
    }
}

impl BenchOptions {
    /// The full run (well under two minutes on a 2-core machine): 2 peers, 500 seeds each.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        BenchOptions {
            program: program.into(),
            peers: 2,
            seeds_per_peer: 500,
            publishers: 32,
            crypto_time: Duration::from_secs(3),
            timeout: Duration::from_secs(40),
            transport: BenchTransport::Udp,
            sync: StoreConfig::default().sync,
        }
    }

    /// A run of a few seconds that checks the machinery, not the machine: 1 peer, 40 seeds.
    pub fn quick(program: impl Into<PathBuf>) -> Self {
        BenchOptions {
            peers: 1,
            seeds_per_peer: 40,
            crypto_time: Duration::from_millis(300),
            ..Self::new(program)
        }
    }
}

/// The figures of one run (also the JSON object `crabnet bench --json` prints).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Envelopes whose two signatures one thread verifies per second with the bare library
    /// calls (the floor).
    pub verify_floor_per_s: f64,
    /// One floor verification (Ed25519 + ML-DSA-44), in µs.
    pub verify_floor_us: f64,
    /// Envelope sign + verify (with encoding and decoding) over raw sign + raw verify.
    pub sign_verify_overhead: f64,
    /// Envelope build + parse + verify + decode, in µs (median per round).
    pub envelope_sign_verify_us: f64,
    /// Raw sign + raw verify, in µs (median per round).
    pub raw_sign_verify_us: f64,
    /// Seeds published per second through [`Node::publish`] by `publishers` concurrent
    /// tasks.
    pub publish_per_s: f64,
    /// Seeds published per second through [`Node::publish`] by one caller, one after
    /// another.
    pub publish_single_per_s: f64,
    /// The concurrent publishing tasks of `publish_per_s`.
    pub publishers: usize,
    /// Envelopes from the peer processes that the node applied per second, from the moment it
    /// took up the first to the delivery of the last one's event (after its commit).
    pub applied_per_s: f64,
    /// `applied_per_s / verify_floor_per_s`.
    pub apply_ratio: f64,
    /// Envelopes the peers sent (seeds published on them).
    pub sent: u64,
    /// Envelopes the node applied before the end of the run.
    pub applied: u64,
    /// Datagrams the kernel dropped at the node's socket because its receive buffer was full
    /// (counter `transport.dropped`; always 0 on libp2p): above zero, the node lost frames and
    /// `applied_per_s` understates what it can apply (sync brings them later).
    pub transport_dropped: u64,
    /// Times the node's receive queue was full, so it stopped reading its socket for a while
    /// (counter `ingress.queue_full`).
    pub queue_full: u64,
    /// Frames the node received per batch, on average over the run (counters
    /// `ingress.batch_frames` over `ingress.batches`): near 1, it kept up with the arrivals
    /// one frame at a time (a commit each); larger, frames waited and were applied together.
    pub frames_per_batch: f64,
    /// Peer processes.
    pub peers: usize,
    /// The transport of the apply step.
    pub transport: BenchTransport,
    /// The `store.sync` of the stores measured ([`BenchOptions::sync`]).
    pub store_sync: String,
    /// Wall-clock seconds of the whole run.
    pub elapsed_s: f64,
}

/// Runs the benchmark described in the module docs.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport> {
    let started = Instant::now();
    if opts.peers == 0 || opts.seeds_per_peer < 2 || opts.publishers == 0 {
        return Err(Error::new(
            ErrorKind::Validation,
            "the benchmark needs at least one peer, two seeds per peer and one publisher",
        ));
    }
    let crypto_time = opts.crypto_time;
    let (floor_us, (overhead, envelope_us, raw_us)) = tokio::task::spawn_blocking(move || {
        let setup = CryptoSetup::new()?;
        Ok::<_, Error>((setup.floor_us(crypto_time), setup.overhead(crypto_time)))
    })
    .await
    .map_err(|e| Error::internal(format!("benchmark task failed: {e}")))??;

    let dir = tempfile::Builder::new().prefix("crabnet-bench").tempdir()?;
    let mut config = Config::with_data_dir(dir.path().join("node"));
    config.name = "bench-node".into();
    config.store.sync = opts.sync;
    // Room on the event bus for every event of the run (a seed and its message, say).
    let total = opts.peers.saturating_mul(opts.seeds_per_peer);
    config.events.bus_capacity = total
        .saturating_mul(4)
        .saturating_add(1024)
        .min(crate::config::limits::MAX_BUS_CAPACITY);
    let store_sync = format!("{:?}", config.store.sync).to_lowercase();
    let (node, node_addr) = match opts.transport {
        BenchTransport::Udp => {
            let transport = UdpTransport::bind(UdpConfig {
                bind: "127.0.0.1:0".parse().expect("a socket address"),
                peers: Vec::new(),
                broadcast: None,
            })?;
            let addr = transport.local_addr()?.to_string();
            (
                Node::start_with_transport(config, Box::new(transport)).await?,
                addr,
            )
        }
        BenchTransport::Dht => {
            let node = Node::start_with_dht(config, DhtConfig::default()).await?;
            match tcp_address(&node, opts.timeout).await {
                Ok(addr) => (node, addr),
                Err(e) => {
                    let _ = node.stop().await;
                    return Err(e);
                }
            }
        }
    };
    let outcome = apply_phase(opts, dir.path(), &node, &node_addr).await;
    let counters = node.overview().await.map(|o| o.counters);
    let stopped = node.stop().await;
    let (publish, applied_per_s, applied) = outcome?;
    let counters = counters?;
    stopped?;
    let counter = |name: &str| counters.get(name).copied().unwrap_or(0);

    let verify_floor_per_s = 1e6 / floor_us;
    Ok(BenchReport {
        verify_floor_per_s,
        verify_floor_us: floor_us,
        sign_verify_overhead: overhead,
        envelope_sign_verify_us: envelope_us,
        raw_sign_verify_us: raw_us,
        publish_per_s: publish.grouped.rate(),
        publish_single_per_s: publish.single.rate(),
        publishers: opts.publishers,
        applied_per_s,
        apply_ratio: applied_per_s / verify_floor_per_s,
        sent: (opts.peers * opts.seeds_per_peer) as u64,
        applied,
        transport_dropped: counter("transport.dropped"),
        queue_full: counter("ingress.queue_full"),
        frames_per_batch: counter("ingress.batch_frames") as f64
            / counter("ingress.batches").max(1) as f64,
        peers: opts.peers,
        transport: opts.transport,
        store_sync,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// Seeds published and how long that took.
#[derive(Debug, Default, Clone, Copy)]
struct Timed {
    seeds: usize,
    time: Duration,
}

impl Timed {
    fn add(&mut self, other: Timed) {
        self.seeds += other.seeds;
        self.time += other.time;
    }

    fn rate(&self) -> f64 {
        self.seeds as f64 / self.time.as_secs_f64().max(1e-9)
    }
}

/// Step 3's figures.
#[derive(Debug, Default)]
struct Published {
    single: Timed,
    grouped: Timed,
}

/// Steps 3 and 4: returns `(published, applied_per_s, applied)`.
async fn apply_phase(
    opts: &BenchOptions,
    dir: &Path,
    node: &Node,
    node_addr: &str,
) -> Result<(Published, f64, u64)> {
    let peer_dirs: Vec<PathBuf> = (0..opts.peers)
        .map(|i| dir.join(format!("peer-{i}")))
        .collect();
    // The peers introduce themselves, then stop.
    {
        let peers = Peers::start(opts, &peer_dirs, node_addr)?;
        if let Err(e) = node.wait_for_peers(opts.peers, opts.timeout).await {
            return Err(peers.failure(e));
        }
    }

    // Their outboxes fill through the API, offline.
    let total = opts.peers * opts.seeds_per_peer;
    let mut published = Published::default();
    for (i, peer_dir) in peer_dirs.iter().enumerate() {
        let mut config = Config::with_data_dir(peer_dir);
        config.name = format!("bench-peer-{i}");
        config.store.sync = opts.sync;
        let peer = Node::start(config).await?;
        let result = publish_seeds(&peer, i, opts.seeds_per_peer, opts.publishers).await;
        let stopped = peer.stop().await;
        let (single, grouped) = result?;
        stopped?;
        published.single.add(single);
        published.grouped.add(grouped);
    }

    // Back on the network, they send everything to the node.
    let mut events = node.subscribe();
    let peers = Peers::start(opts, &peer_dirs, node_addr)?;
    let deadline = tokio::time::Instant::now() + opts.timeout;
    // When the first seed was taken up: its event's `at` (ms), and this process's clocks at
    // that event's delivery.
    let mut first: Option<(Millis, f64, Instant)> = None;
    let mut last = Instant::now();
    let mut seen = 0u64;
    while seen < total as u64 {
        let next = tokio::time::timeout_at(deadline, events.recv()).await;
        match next {
            Ok(Some(e)) => match e.kind {
                EventKind::SeedPublished { .. } => {
                    let now = Instant::now();
                    first.get_or_insert_with(|| (e.at, wall_ms(), now));
                    last = now;
                    seen += 1;
                }
                EventKind::EventsDropped { count } => {
                    // Which events were missed, and so where the window starts and ends, is
                    // not known: no figure rather than a wrong one.
                    return Err(Error::internal(format!(
                        "the benchmark fell behind the node's events ({count} dropped); run \
                         it again, or with fewer seeds"
                    )));
                }
                _ => {}
            },
            Ok(None) => break,
            Err(_) => break,
        }
    }
    drop(peers);
    let Some((first_at, first_wall, first)) = first else {
        return Err(Error::new(
            ErrorKind::Network,
            format!(
                "the node applied none of the {total} envelopes within {:?}",
                opts.timeout
            ),
        ));
    };
    // From the first seed's crossing (a whole millisecond: the span can only come out longer)
    // to the last event's delivery.
    let lead = (first_wall - first_at as f64).max(0.0) / 1e3;
    let span = lead + last.duration_since(first).as_secs_f64();
    let applied_per_s = if span > 0.0 { seen as f64 / span } else { 0.0 };
    Ok((published, applied_per_s, seen))
}

/// The wall clock in milliseconds since the Unix epoch, with its fraction.
fn wall_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Publishes `count` seeds on `node`: the first fifth one after another, the rest from
/// `publishers` concurrent tasks; returns how long each part took.
async fn publish_seeds(
    node: &Node,
    peer: usize,
    count: usize,
    publishers: usize,
) -> Result<(Timed, Timed)> {
    let request = move |n: usize| {
        let mut req = PublishRequest::new(format!("echo bench {peer} {n}"));
        // No decision falls due while the benchmark runs.
        req.bid_window_secs = 3600;
        req
    };
    let alone = (count / 5).clamp(1, count - 1);
    let started = Instant::now();
    for n in 0..alone {
        node.publish(request(n)).await?;
    }
    let single = Timed {
        seeds: alone,
        time: started.elapsed(),
    };
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(alone));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..publishers.min(count - alone) {
        let (node, next) = (node.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= count {
                    return Ok::<_, Error>(());
                }
                node.publish(request(n)).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| Error::internal(format!("a publishing task failed: {e}")))??;
    }
    let grouped = Timed {
        seeds: count - alone,
        time: started.elapsed(),
    };
    Ok((single, grouped))
}

/// The node's TCP multiaddress (with its peer id), for the peers to dial, once its listener is
/// up (within `timeout`).
async fn tcp_address(node: &Node, timeout: Duration) -> Result<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let overview = node.overview().await?;
        if let Some(a) = overview
            .addresses
            .into_iter()
            .find(|a| a.contains("/tcp/") && a.contains("/p2p/"))
        {
            return Ok(a);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::Network,
                format!("the node announced no TCP address within {timeout:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The peer processes; killed (and reaped) on drop.
struct Peers {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl Peers {
    /// Starts a `crabnet listen` process on each of `dirs`, each with the node's address
    /// `node` as its peer.
    fn start(opts: &BenchOptions, dirs: &[PathBuf], node: &str) -> Result<Peers> {
        let program = &opts.program;
        let mut peers = Peers {
            children: Vec::new(),
            logs: Vec::new(),
        };
        for dir in dirs {
            std::fs::create_dir_all(dir)?;
            let log_path = dir.with_extension("log");
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)?;
            let child = Command::new(program)
                .arg("--data-dir")
                .arg(dir)
                .args(["listen", "--transport", opts.transport.name()])
                .args(["--bind", "127.0.0.1:0", "--peer", node])
                .arg("--no-http")
                .env_remove("CRABNET_CONFIG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| {
                    Error::with_source(
                        ErrorKind::Io,
                        format!("cannot start {} listen: {e}", program.display()),
                        e,
                    )
                })?;
            peers.children.push(child);
            peers.logs.push(log_path);
        }
        Ok(peers)
    }

    /// `cause`, with what the peers said on stderr (the end of it).
    fn failure(mut self, cause: Error) -> Error {
        let mut detail = String::new();
        for (child, log) in self.children.iter_mut().zip(&self.logs) {
            let status = match child.try_wait() {
                Ok(Some(status)) => format!("exited ({status})"),
                _ => "running".to_owned(),
            };
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = text
                .chars()
                .rev()
                .take(400)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            detail.push_str(&format!("; peer {status}: {}", tail.trim()));
        }
        Error::new(cause.kind(), format!("{cause}{detail}"))
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One envelope and its raw counterpart, for steps 1 and 2.
struct CryptoSetup {
    identity: Identity,
    message: Message,
    raw: RawSignatures,
    signature: crate::crypto::RawSignature,
}

impl CryptoSetup {
    fn new() -> Result<Self> {
        let identity = Identity::generate()?;
        let message = Message {
            id: MessageId::from_bytes(crate::clock::random_bytes()),
            sender: identity.node_id().clone(),
            lamport: 1,
            timestamp: crate::clock::now_ms(),
            body: Body::SeedSettled(Settlement {
                seed_id: SeedId::from_bytes(crate::clock::random_bytes()),
                outcome: SettlementOutcome::Accepted,
                amount: 42,
                note: "n".repeat(200),
                paid: Vec::new(),
            }),
        };
        let bytes = Self::envelope(&identity, &message)?;
        let signed = &bytes[..bytes.len() - DUAL_SIGNATURE_LEN];
        let raw = RawSignatures::new(&identity.signing().to_seeds(), signed, SIGNATURE_CONTEXT)?;
        let signature = raw.sign(random32())?;
        if !raw.verify(&signature) {
            return Err(Error::internal("the floor's own signature does not verify"));
        }
        Ok(CryptoSetup {
            identity,
            message,
            raw,
            signature,
        })
    }

    fn envelope(identity: &Identity, message: &Message) -> Result<Vec<u8>> {
        envelope::message_envelope(
            identity,
            message,
            60,
            &[],
            MAX_ENVELOPE_BYTES,
            &mut envelope::os_rng,
        )
        .map_err(|e| Error::internal(format!("cannot build an envelope: {e}")))
    }

    /// One envelope built, parsed, verified and decoded.
    fn envelope_round(&self) {
        let bytes = Self::envelope(&self.identity, &self.message).expect("envelopes build");
        let parsed = envelope::parse(&bytes, MAX_ENVELOPE_BYTES).expect("envelopes parse");
        parsed
            .verify(&self.identity.public().signing)
            .expect("envelopes verify");
        let decoded = parsed
            .message(self.identity.node_id(), self.identity.kem())
            .expect("envelopes decode");
        std::hint::black_box(decoded);
    }

    /// Raw sign + raw verify of the same bytes.
    fn raw_round(&self) {
        let signature = self.raw.sign(random32()).expect("raw signing works");
        assert!(self.raw.verify(&signature), "raw signatures verify");
    }

    /// µs per floor verification, over `time`.
    fn floor_us(&self, time: Duration) -> f64 {
        let start = Instant::now();
        let mut n = 0u64;
        while n < 16 || start.elapsed() < time {
            for _ in 0..16 {
                std::hint::black_box(self.raw.verify(&self.signature));
            }
            n += 16;
        }
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    }

    /// `(median ratio, envelope µs, raw µs)`, alternating batches for `time`.
    fn overhead(&self, time: Duration) -> (f64, f64, f64) {
        const BATCH: u32 = 8;
        let timed = |f: &dyn Fn()| {
            let t = Instant::now();
            for _ in 0..BATCH {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / f64::from(BATCH)
        };
        let (mut env, mut raw, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let start = Instant::now();
        let mut round = 0usize;
        while round < 6 || start.elapsed() < time {
            let (e, r) = if round.is_multiple_of(2) {
                let e = timed(&|| self.envelope_round());
                (e, timed(&|| self.raw_round()))
            } else {
                let r = timed(&|| self.raw_round());
                (timed(&|| self.envelope_round()), r)
            };
            env.push(e);
            raw.push(r);
            ratios.push(e / r);
            round += 1;
        }
        (median(&mut ratios), median(&mut env), median(&mut raw))
    }
}

fn random32() -> [u8; 32] {
    let mut out = [0u8; 32];
    envelope::os_rng(&mut out);
    out
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crypto_figures_are_positive_and_the_overhead_is_a_ratio() {
        let setup = CryptoSetup::new().unwrap();
        let floor = setup.floor_us(Duration::from_millis(20));
        assert!(floor.is_finite() && floor > 0.0);
        let (ratio, env, raw) = setup.overhead(Duration::from_millis(20));
        assert!(ratio.is_finite() && ratio > 0.0);
        assert!(env > 0.0 && raw > 0.0);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }
}
