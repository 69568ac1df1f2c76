//! The garbage-flood scenario (issue 12): one thread sends garbage datagrams at a node on a real
//! UDP socket on 127.0.0.1, at a set rate or as fast as it can, while a real peer publishes
//! seeds at a steady pace.
//! Shared by `tests/limits.rs` (a few seconds, in CI) and `benches/flood.rs` (20 s, reported in
//! BENCHMARKS.md).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crabnet_core::network::{UdpConfig, UdpTransport};
use crabnet_core::{Config, EventKind, Node, PublishRequest};

/// How the garbage is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    /// No garbage: the baseline.
    Off,
    /// At least this many datagrams per second (as long as the sender keeps up), sent in small
    /// bursts every few hundred microseconds.
    #[allow(dead_code)] // The bench paces; the CI test floods as fast as it can.
    Paced(u64),
    /// As fast as one thread can send.
    Max,
}

/// What one run measured.
#[derive(Debug)]
pub struct Report {
    /// Garbage datagrams sent, and per second.
    pub sent: u64,
    pub sent_per_sec: f64,
    /// Seeds the peer published and how many reached the node.
    pub published: usize,
    pub arrived: usize,
    /// Publish -> applied on the node, sorted.
    pub latencies: Vec<Duration>,
    /// Growth of the node's database file plus its WAL, in bytes.
    pub db_growth: i64,
    /// The node's counters at the end.
    pub counters: std::collections::BTreeMap<String, u64>,
    /// `message_rejected` events in the node's event log at the end.
    #[allow(dead_code)]
    // Asserted by the CI test; the bench reports the flood's cost in bytes.
    pub rejection_events: usize,
    /// Datagrams the kernel dropped at the node's socket because its receive buffer was full
    /// (`/proc/net/udp`; `None` where that cannot be read).
    pub kernel_drops: Option<u64>,
}

impl Report {
    /// The `p`-th quantile of the latencies (0..=1).
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::MAX;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }

    /// Garbage datagrams the node read (each one is rejected as malformed).
    pub fn read(&self) -> u64 {
        self.counters
            .get("rejected.malformed")
            .copied()
            .unwrap_or(0)
    }
}

fn config(dir: &std::path::Path, name: &str) -> Config {
    let mut c = Config::with_data_dir(dir.join(name));
    c.name = name.into();
    c.network.sync_interval_secs = 1;
    c
}

fn transport(socket: UdpSocket, peer: SocketAddr) -> UdpTransport {
    let config = UdpConfig {
        peers: vec![peer],
        ..UdpConfig::default()
    };
    UdpTransport::from_socket(socket, config).unwrap()
}

/// Two UDP sockets bound on 127.0.0.1 by the kernel (port 0): the bench's. They stay bound
/// until the nodes take them, so no other process can take their ports meanwhile.
#[allow(dead_code)] // The CI test takes sockets its harness reserved.
pub fn free_sockets() -> [UdpSocket; 2] {
    let free = || UdpSocket::bind("127.0.0.1:0").unwrap();
    [free(), free()]
}

fn db_size(c: &Config) -> i64 {
    let db = c.db_path();
    let wal = db.with_extension("db-wal");
    [db, wal]
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len() as i64).unwrap_or(0))
        .sum()
}

/// The kernel's drop counter of the UDP socket bound to `addr` (the last column of
/// `/proc/net/udp`), on Linux.
fn kernel_drops(addr: SocketAddr) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    // Addresses are hexadecimal, the IPv4 address in host byte order (little-endian here).
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    table
        .lines()
        .skip(1)
        .find(|l| l.split_whitespace().nth(1) == Some(local.as_str()))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

/// Sends garbage at `to` as `flood` says until `stop`; returns how many and for how long.
fn send_garbage(flood: Flood, to: SocketAddr, stop: &AtomicBool) -> (u64, Duration) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut garbage = [0u8; 200];
    let started = Instant::now();
    let mut sent = 0u64;
    while flood != Flood::Off && !stop.load(Ordering::Relaxed) {
        if let Flood::Paced(rate) = flood {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
        }
        garbage[..8].copy_from_slice(&sent.to_le_bytes());
        if sock.send_to(&garbage, to).is_ok() {
            sent += 1;
        }
    }
    (sent, started.elapsed())
}

/// Floods a node for `duration` as `flood` says (or not: the baseline) while its peer publishes
/// a seed every `pace`; waits up to `settle` after the flood for the peer's seeds to arrive.
/// The node and its peer take `sockets` (UDP on 127.0.0.1), bound by the caller.
pub async fn run(
    [node_socket, peer_socket]: [UdpSocket; 2],
    flood: Flood,
    duration: Duration,
    pace: Duration,
    settle: Duration,
) -> Report {
    let node_addr = node_socket.local_addr().unwrap();
    let peer_addr = peer_socket.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node_config = config(dir.path(), "node");
    let node = Node::start_with_transport(
        node_config.clone(),
        Box::new(transport(node_socket, peer_addr)),
    )
    .await
    .unwrap();
    let peer = Node::start_with_transport(
        config(dir.path(), "peer"),
        Box::new(transport(peer_socket, node_addr)),
    )
    .await
    .unwrap();
    node.wait_for_peers(1, Duration::from_secs(30))
        .await
        .unwrap();
    peer.wait_for_peers(1, Duration::from_secs(30))
        .await
        .unwrap();
    let size_before = db_size(&node_config);

    // Arrival times of seeds on the node.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut sub = node.subscribe();
    tokio::spawn(async move {
        while let Some(e) = sub.recv().await {
            if let EventKind::SeedPublished { seed_id, .. } = e.kind {
                let _ = tx.send((seed_id, Instant::now()));
            }
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || send_garbage(flood, node_addr, &stop))
    };

    let mut published = std::collections::HashMap::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        let t0 = Instant::now();
        let v = peer.publish(PublishRequest::new("true")).await.unwrap();
        published.insert(v.seed.id, t0);
        tokio::time::sleep_until((t0 + pace).into()).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, flood_time) = flooder.join().unwrap();

    let mut latencies = Vec::new();
    let deadline = Instant::now() + settle;
    while latencies.len() < published.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((id, at))) => {
                if let Some(t0) = published.get(&id) {
                    latencies.push(at - *t0);
                }
            }
            _ => break,
        }
    }
    latencies.sort();
    let counters = node.overview().await.unwrap().counters;
    let rejection_events = node
        .events_after(0, 1_000_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| matches!(e.kind, EventKind::MessageRejected { .. }))
        .count();
    let db_growth = db_size(&node_config) - size_before;
    let kernel_drops = kernel_drops(node_addr);
    for n in [peer, node] {
        n.stop().await.unwrap();
    }
    Report {
        sent,
        sent_per_sec: sent as f64 / flood_time.as_secs_f64(),
        published: published.len(),
        arrived: latencies.len(),
        latencies,
        db_growth,
        counters,
        rejection_events,
        kernel_drops,
    }
}
