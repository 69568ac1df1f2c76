//! The local demo network: several nodes in one process over an in-memory hub go through a
//! whole task lifecycle. Used by `crabnet demo` and the language bindings.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::clock::random_bytes;
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{SeedId, SeedStatus};
use crate::network::MemoryHub;
use crate::node::{Node, PublishRequest};
use crate::state::SeedView;

/// The demo's task when none is given: real work whose output is easy to check.
pub const DEFAULT_COMMAND: &str = "echo 'crabnet demo task'; for i in 1 2 3 4 5; do echo \"$i squared is $((i * i))\"; done; uname -s";

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Number of nodes (at least 3): one publisher, the rest bid.
    pub nodes: usize,
    /// Where node data directories go; a fresh temporary directory when `None`.
    pub base_dir: Option<PathBuf>,
    /// Keep the data directories afterwards (always kept when `base_dir` is given).
    pub keep: bool,
    /// The command to publish.
    pub command: String,
    /// How long to wait for any one step.
    pub step_timeout: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            nodes: 3,
            base_dir: None,
            keep: false,
            command: DEFAULT_COMMAND.into(),
            step_timeout: Duration::from_secs(20),
        }
    }
}

/// What the demo produced.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The seed's final state on the publisher.
    pub seed: SeedView,
    /// Each node's name and state digest, in start order.
    pub digests: Vec<(String, String)>,
    /// Where the node data lives (deleted unless kept).
    pub base_dir: PathBuf,
}

/// The nodes of a running demo network, for callers that keep it up (e.g. to serve it).
#[derive(Debug)]
pub struct DemoNetwork {
    /// Node names and handles; the first one publishes.
    pub nodes: Vec<(String, Node)>,
    /// The hub connecting them.
    pub hub: MemoryHub,
    /// Base directory of the node data directories.
    pub base_dir: PathBuf,
}

const NAMES: [&str; 8] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];

fn node_name(i: usize) -> String {
    NAMES
        .get(i)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("node{i}"))
}

impl DemoNetwork {
    /// Starts `opts.nodes` nodes on a fresh in-memory hub.
    pub async fn start(opts: &DemoOptions) -> Result<DemoNetwork> {
        if opts.nodes < 3 {
            return Err(Error::new(
                ErrorKind::Validation,
                format!("the demo needs at least 3 nodes, got {}", opts.nodes),
            ));
        }
        let base_dir = match &opts.base_dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir()
                .join(format!("crabnet-demo-{}", hex::encode(random_bytes::<6>()))),
        };
        let hub = MemoryHub::new();
        let mut nodes = Vec::new();
        for i in 0..opts.nodes {
            let name = node_name(i);
            let mut config = Config::with_data_dir(base_dir.join(&name));
            config.name = name.clone();
            config.network.tick_ms = 50;
            // The demo runs its own command: the strongest sandbox this machine offers is
            // enough, so that it also runs where user namespaces are turned off.
            config.runner.sandbox = crate::sandbox::SandboxPolicy::BestEffort;
            let node = Node::start_with_transport(config, Box::new(hub.join(&name))).await?;
            nodes.push((name, node));
        }
        // Nodes accept messages only from peers whose hello they verified.
        for (_, node) in &nodes {
            node.wait_for_peers(opts.nodes - 1, opts.step_timeout)
                .await?;
        }
        Ok(DemoNetwork {
            nodes,
            hub,
            base_dir,
        })
    }

    /// Stops every node.
    pub async fn stop(&self) -> Result<()> {
        for (_, node) in &self.nodes {
            node.stop().await?;
        }
        Ok(())
    }
}

async fn wait_for(
    node: &Node,
    seed_id: &SeedId,
    timeout: Duration,
    what: &str,
    done: impl Fn(&SeedView) -> bool,
) -> Result<SeedView> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(view) = node.seed(seed_id).await
            && done(&view)
        {
            return Ok(view);
        }
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::Network,
                format!(
                    "timed out after {:?} waiting for {what} on node {}",
                    timeout,
                    node.config().name
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a whole lifecycle on a demo network, reporting each step through `say`.
pub async fn run_lifecycle(
    net: &DemoNetwork,
    opts: &DemoOptions,
    say: &mut (dyn FnMut(String) + Send),
) -> Result<SeedView> {
    let t = opts.step_timeout;
    let (pub_name, publisher) = &net.nodes[0];
    let bidders = &net.nodes[1..];
    for (name, node) in &net.nodes {
        say(format!("node {name:<6} id {}", node.id().short()));
    }
    let seed = publisher
        .publish(PublishRequest {
            command: opts.command.clone(),
            description: "crabnet demo".into(),
            min_price: 10,
            max_price: 100,
            bid_window_secs: 30,
            max_bids: bidders.len() as u32,
            timeout_secs: 30,
            ..PublishRequest::default()
        })
        .await?;
    let id = seed.seed.id.clone();
    say(format!(
        "{pub_name} published seed {} ({} bids max, price {}..={}): {}",
        id.short(),
        seed.seed.max_bids,
        seed.seed.min_price,
        seed.seed.max_price,
        seed.seed.command
    ));
    for (i, (name, node)) in bidders.iter().enumerate() {
        wait_for(node, &id, t, "the seed", |_| true).await?;
        let price = 40 - 7 * (i as u64 % 4) + 3 * (i as u64 / 4);
        node.bid(&id, price).await?;
        say(format!("{name} bid {price}"));
    }
    let awarded = wait_for(publisher, &id, t, "the award", |v| v.award.is_some()).await?;
    let winner_node = awarded
        .award
        .as_ref()
        .and_then(|a| a.winner_node.clone())
        .ok_or_else(|| Error::internal("demo seed closed without a winner"))?;
    let (win_name, winner) = net
        .nodes
        .iter()
        .find(|(_, n)| n.id() == &winner_node)
        .ok_or_else(|| Error::internal("winner is not a demo node"))?;
    say(format!(
        "{pub_name} closed bidding: {win_name} wins at {}",
        awarded.award.as_ref().and_then(|a| a.price).unwrap_or(0)
    ));
    wait_for(winner, &id, t, "the award", |v| v.award.is_some()).await?;
    winner.claim(&id).await?;
    say(format!("{win_name} claimed the seed"));
    let ran = winner.run(&id).await?;
    if let Some(r) = &ran.result {
        say(format!(
            "{win_name} ran it: exit {}, {} ms, {} bytes of output, sha256 {}",
            r.exit_code
                .map_or_else(|| "none".to_string(), |c| c.to_string()),
            r.duration_ms,
            r.output_bytes,
            &r.output_sha256[..16]
        ));
        say(format!(
            "    sandbox {}: {}",
            r.sandbox.level,
            r.sandbox.features.join(" ")
        ));
        for line in r.output_excerpt.lines() {
            say(format!("    | {line}"));
        }
    }
    wait_for(publisher, &id, t, "the result", |v| {
        v.status == SeedStatus::Completed
    })
    .await?;
    publisher.settle(&id, true, "thanks").await?;
    say(format!("{pub_name} settled: accepted"));
    let mut last = None;
    for (_, node) in &net.nodes {
        last = Some(
            wait_for(node, &id, t, "the settlement", |v| {
                v.status == SeedStatus::Settled
            })
            .await?,
        );
    }
    last.ok_or_else(|| Error::internal("no demo nodes"))
}

/// Starts a demo network, runs one lifecycle, stops the network and reports.
pub async fn run(opts: &DemoOptions, say: &mut (dyn FnMut(String) + Send)) -> Result<DemoReport> {
    let net = DemoNetwork::start(opts).await?;
    let outcome = run_lifecycle(&net, opts, say).await;
    let mut digests = Vec::new();
    for (name, node) in &net.nodes {
        digests.push((name.clone(), node.overview().await?.state_digest));
    }
    net.stop().await?;
    if !opts.keep && opts.base_dir.is_none() {
        let _ = std::fs::remove_dir_all(&net.base_dir);
    }
    let seed = outcome?;
    Ok(DemoReport {
        seed,
        digests,
        base_dir: net.base_dir,
    })
}
