//! Network benchmark (issue 4): N nodes on loopback per backend, measuring
//!
//! 1. latency: publish on one node -> seed applied on every other node (median, p99 over
//!    `SEEDS` seeds published one after another);
//! 2. throughput: envelopes per second applied by one node while the others publish as fast as
//!    they can.
//!
//! Run: `cargo bench -p crabnet-core --bench network` (release). Prints a Markdown table for
//! BENCHMARKS.md. `CRABNET_BENCH_SYNC=normal` runs the stores with `synchronous = NORMAL`.
//! Traffic stays on 127.0.0.1.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crabnet_core::network::{DhtConfig, UdpConfig, UdpTransport};
use crabnet_core::{Config, EventKind, Node, PublishRequest, SeedId};
use tokio::sync::mpsc;

const SEEDS: usize = 100;
const BURST_PER_PUBLISHER: usize = 100;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Udp,
    Dht,
}

fn config(dir: &std::path::Path, i: usize) -> Config {
    let mut c = Config::with_data_dir(dir.join(format!("n{i}")));
    c.name = format!("n{i}");
    c.network.tick_ms = 20;
    c.network.hello_interval_secs = 2;
    c.network.sync_interval_secs = 5;
    c.events.log_enabled = false;
    c.events.bus_capacity = 65_536;
    if std::env::var("CRABNET_BENCH_SYNC").as_deref() == Ok("normal") {
        c.store.sync = crabnet_core::store::SyncMode::Normal;
    }
    c
}

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn start(backend: Backend, n: usize, dir: &std::path::Path) -> Vec<Node> {
    let mut nodes = Vec::new();
    match backend {
        Backend::Udp => {
            let addrs: Vec<SocketAddr> = (0..n).map(|_| free_udp()).collect();
            for i in 0..n {
                let peers = addrs
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, a)| *a)
                    .collect();
                let t = UdpTransport::bind(UdpConfig {
                    bind: addrs[i],
                    peers,
                    broadcast: None,
                })
                .unwrap();
                nodes.push(
                    Node::start_with_transport(config(dir, i), Box::new(t))
                        .await
                        .unwrap(),
                );
            }
        }
        Backend::Dht => {
            let first = Node::start_with_dht(config(dir, 0), DhtConfig::default())
                .await
                .unwrap();
            let addr = loop {
                let o = first.overview().await.unwrap();
                if let Some(a) = o.addresses.iter().find(|a| a.contains("/tcp/")) {
                    break a.clone();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            nodes.push(first);
            for i in 1..n {
                let dht = DhtConfig {
                    peers: vec![addr.clone()],
                    ..DhtConfig::default()
                };
                nodes.push(Node::start_with_dht(config(dir, i), dht).await.unwrap());
            }
        }
    }
    for node in &nodes {
        node.wait_for_peers(n - 1, Duration::from_secs(60))
            .await
            .unwrap();
    }
    // Let gossipsub meshes settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    nodes
}

/// Forwards "seed became known" notices from every node but `skip` into one channel.
fn watch(nodes: &[Node], skip: usize) -> mpsc::UnboundedReceiver<(usize, SeedId, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    for (i, node) in nodes.iter().enumerate() {
        if i == skip {
            continue;
        }
        let mut sub = node.subscribe();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(e) = sub.recv().await {
                if let EventKind::SeedPublished { seed_id, .. } = e.kind {
                    let _ = tx.send((i, seed_id, Instant::now()));
                }
            }
        });
    }
    rx
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn latency(nodes: &[Node]) -> (Duration, Duration) {
    let mut rx = watch(nodes, 0);
    let others = nodes.len() - 1;
    let mut samples = Vec::with_capacity(SEEDS);
    for _ in 0..SEEDS {
        let t0 = Instant::now();
        let v = nodes[0].publish(PublishRequest::new("true")).await.unwrap();
        let mut seen = 0;
        let deadline = t0 + Duration::from_secs(30);
        while seen < others {
            let (_, id, at) = tokio::time::timeout_at(deadline.into(), rx.recv())
                .await
                .expect("seed did not reach every node in 30 s")
                .unwrap();
            if id == v.seed.id {
                seen += 1;
                if seen == others {
                    samples.push(at - t0);
                }
            }
        }
    }
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

async fn throughput(nodes: &[Node]) -> f64 {
    let receiver = nodes.len() - 1;
    let mut rx = watch(&nodes[receiver..], usize::MAX);
    let publishers: Vec<Node> = nodes[..receiver].to_vec();
    let total = publishers.len() * BURST_PER_PUBLISHER;
    let t0 = Instant::now();
    for p in publishers {
        tokio::spawn(async move {
            for _ in 0..BURST_PER_PUBLISHER {
                p.publish(PublishRequest::new("true")).await.unwrap();
            }
        });
    }
    let mut got: HashMap<SeedId, ()> = HashMap::new();
    let deadline = t0 + Duration::from_secs(300);
    while got.len() < total {
        let (_, id, _) = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .expect("burst did not arrive in 300 s")
            .unwrap();
        got.insert(id, ());
    }
    total as f64 / t0.elapsed().as_secs_f64()
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --benches` runs bench binaries with `--bench`-less args; only run for real
    // under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("network bench: run with `cargo bench -p crabnet-core --bench network`");
        return;
    }
    println!(
        "| backend | nodes | publish -> applied on all, median (ms) | p99 (ms) | envelopes/s applied by one node |"
    );
    println!("|---|---|---|---|---|");
    for backend in [Backend::Udp, Backend::Dht] {
        for n in [3usize, 10] {
            let dir = tempfile::tempdir().unwrap();
            let nodes = start(backend, n, dir.path()).await;
            let (p50, p99) = latency(&nodes).await;
            let rate = throughput(&nodes).await;
            println!(
                "| {backend:?} | {n} | {} | {} | {rate:.0} |",
                ms(p50),
                ms(p99)
            );
            for node in &nodes {
                node.stop().await.unwrap();
            }
        }
    }
}
