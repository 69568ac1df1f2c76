//! `crabnet`: the reference command-line interface, a thin shell over `crabnet_core::Node`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use crabnet_core::clock::format_ms;
use crabnet_core::demo::{self, DemoOptions};
use crabnet_core::logging::LevelFilter;
use crabnet_core::model::{Deadlines, SandboxLevel};
use crabnet_core::network::{DhtConfig, UdpConfig, UdpTransport};
use crabnet_core::perf;
use crabnet_core::store::SyncMode;
use crabnet_core::web::{WebConfig, WebHandle};
use crabnet_core::{
    Config, Error, ErrorKind, Event, Node, NodeId, PublishRequest, SeedId, SeedStatus, SeedView,
};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(
    name = "crabnet",
    version,
    about = "Crabnet: a peer-to-peer compute-task marketplace node"
)]
struct Cli {
    /// Data directory of the node.
    #[arg(long, global = true, env = "CRABNET_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file (TOML); defaults to `<data-dir>/config.toml` when that exists.
    #[arg(long, global = true, env = "CRABNET_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the data directory and the node identity.
    Init,
    /// Show the node's identity, seed counts, outbox and counters.
    Status,
    /// Run the node on the network until Ctrl-C: send the outbox, apply received messages,
    /// close bidding on own seeds when due.
    Listen(ListenArgs),
    /// Work with seeds (tasks).
    #[command(subcommand)]
    Seed(SeedCommand),
    /// List the peers this node has verified hellos from.
    Peers,
    /// Print events from the node's log.
    Events(EventsArgs),
    /// Run a local demo network (in one process) through a whole task lifecycle.
    Demo(DemoArgs),
    /// The trust policy: anchors, membership certificates, revocations.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Measure this machine: the signature verify floor, the envelope overhead, publish and
    /// apply throughput (starts its own peer processes on 127.0.0.1; about a minute).
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// A run of a few seconds (1 peer, 40 seeds) that checks the machinery, not the machine.
    #[arg(long)]
    quick: bool,
    /// Number of peer processes (default 2; 1 with --quick).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    peers: Option<usize>,
    /// Seeds each peer sends to the node (default 500; 40 with --quick).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    seeds: Option<usize>,
    /// Concurrent tasks that publish for `publish_per_s` (default 32).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    publishers: Option<usize>,
    /// Transport of the apply step: `udp` (each peer process unicasts to the node) or `dht`
    /// (libp2p: the peers dial the node over TCP and publish through gossipsub).
    #[arg(long, value_enum, default_value = "udp", hide_possible_values = true)]
    transport: TransportArg,
    /// How hard the stores measured (publish and apply) sync their commits: `full` (the
    /// default, as a node's `store.sync`) or `normal` (no fsync at a commit; durable against a
    /// crash of the process, not of the machine).
    #[arg(long, value_enum, default_value = "full", hide_possible_values = true)]
    sync: SyncArg,
}

/// `crabnet bench --sync`.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum SyncArg {
    /// `store.sync = "full"`.
    Full,
    /// `store.sync = "normal"`.
    Normal,
}

#[derive(Subcommand, Debug)]
enum TrustCommand {
    /// Create a trust anchor: writes its secret key to FILE (mode 0600, never overwritten) and
    /// its public key to FILE.pub, and prints the public key (for trust.anchors).
    AnchorNew {
        /// Where to write the anchor's secret key.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print this node's public identity (JSON), the input of `trust sign`.
    Identity {
        /// Also write it to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Sign a membership certificate for a node's public identity with an anchor's key.
    Sign {
        /// The anchor's secret key file.
        #[arg(long, value_name = "FILE")]
        anchor: PathBuf,
        /// The node's public identity (from `crabnet trust identity`).
        #[arg(long, value_name = "FILE")]
        identity: PathBuf,
        /// Where to write the certificate (then set trust.certificate on the node).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// A role the node gets (repeatable): publish, run. Default: both.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Valid from (Unix ms); default now.
        #[arg(long, value_name = "MS", allow_negative_numbers = true)]
        not_before: Option<u64>,
        /// Valid for this many days from not_before.
        #[arg(long, default_value_t = 365, allow_negative_numbers = true)]
        days: u64,
    },
    /// Revoke a node or a certificate with an anchor's key (writes a revocation file for
    /// `trust import`), or this node's own keys with --self (stored and sent by the node).
    Revoke {
        /// The anchor's secret key file.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "own",
            required_unless_present = "own"
        )]
        anchor: Option<PathBuf>,
        /// Revoke this node id.
        #[arg(long, value_name = "NODE_ID", conflicts_with_all = ["serial", "own"])]
        node: Option<String>,
        /// Revoke the certificate with this serial (32 hex digits).
        #[arg(long, value_name = "HEX", conflicts_with = "own")]
        serial: Option<String>,
        /// Revoke this node's own keys (signed with them).
        #[arg(long = "self")]
        own: bool,
        /// Revoked from this time on (Unix ms); default now.
        #[arg(long, value_name = "MS", allow_negative_numbers = true)]
        from: Option<u64>,
        /// Where to write the revocation.
        #[arg(long, value_name = "FILE", required_unless_present = "own")]
        out: Option<PathBuf>,
    },
    /// Rotate this node's keys: new signing and encryption keys for the next key epoch,
    /// announced by a statement signed with the current keys (the node id stays the same; a
    /// running `crabnet listen` on this data directory switches at its next tick; peers accept
    /// the old keys for trust.rotation_grace_secs).
    Rotate,
    /// Add a revocation file to this node (it applies it and sends it to its peers).
    Import {
        /// The revocation file.
        file: PathBuf,
    },
    /// Show the node's trust policy, or decode a certificate or revocation file.
    Show {
        /// A certificate or revocation file.
        file: Option<PathBuf>,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    /// UDP unicast to --peer addresses (plus opt-in --broadcast).
    Udp,
    /// libp2p: gossipsub, Kademlia, identify, sync over request-response; TCP (and QUIC with
    /// --quic).
    Dht,
}

#[derive(Args, Debug)]
struct ListenArgs {
    /// Transport backend.
    #[arg(long, value_enum, default_value = "udp")]
    transport: TransportArg,
    /// Local address to bind (dht: TCP on this IP and port, and QUIC with --quic).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7946")]
    bind: SocketAddr,
    /// dht: also listen on QUIC (UDP) at the --bind IP and port (off by default: a node dials
    /// peers' QUIC addresses either way).
    #[arg(long)]
    quic: bool,
    /// A peer (repeatable). udp: IP:PORT. dht: a multiaddress such as
    /// /ip4/127.0.0.1/tcp/7947, or IP:PORT for its TCP address.
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<String>,
    /// udp: also send every message to this broadcast address (off by default).
    #[arg(long, value_name = "ADDR")]
    broadcast: Option<SocketAddr>,
    /// dht: a Kademlia bootstrap node, /ip4/.../tcp/PORT/p2p/PEER_ID (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// dht: discover peers on the local network with mDNS (off by default).
    #[arg(long)]
    mdns: bool,
    /// dht: bind this UDP address as a fallback for when libp2p has no peers.
    #[arg(long, value_name = "ADDR")]
    udp_fallback: Option<SocketAddr>,
    /// dht: UDP fallback peers (IP:PORT, repeatable).
    #[arg(long, value_name = "ADDR")]
    udp_peer: Vec<SocketAddr>,
    #[command(flatten)]
    http: HttpArgs,
}

#[derive(Args, Debug)]
struct HttpArgs {
    /// Serve the monitoring API and dashboard on this address (default: web.bind from the
    /// config, else 127.0.0.1:7980, skipped with a warning when taken; port 0 picks a free
    /// port). Non-loopback addresses need web.token in the config.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Do not serve the monitoring API and dashboard.
    #[arg(long, conflicts_with = "http")]
    no_http: bool,
}

#[derive(Subcommand, Debug)]
enum SeedCommand {
    /// Publish a seed; prints its id.
    Publish(PublishArgs),
    /// Bid on a seed.
    Bid {
        /// Seed id.
        id: String,
        /// Offered price.
        #[arg(long, allow_negative_numbers = true)]
        price: u64,
    },
    /// Claim a seed this node won.
    Claim {
        /// Seed id.
        id: String,
    },
    /// Run a seed this node claimed and record its result.
    Run {
        /// Seed id.
        id: String,
    },
    /// Settle a completed seed this node published (accepts unless --reject).
    Settle {
        /// Seed id.
        id: String,
        /// Reject the result instead of accepting it.
        #[arg(long)]
        reject: bool,
        /// A note for the record.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Cancel a seed this node published: while bidding is open, or once the winner let its
    /// claim window pass or the round failed.
    Cancel {
        /// Seed id.
        id: String,
    },
    /// Move a seed this node published to the next best bid: after its round failed, or once
    /// the winner let its claim window pass (expires when no bid is left).
    Reassign {
        /// Seed id.
        id: String,
    },
    /// List seeds, newest first.
    List {
        /// Only seeds with this status.
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one seed in full.
    Show {
        /// Seed id.
        id: String,
    },
}

#[derive(Args, Debug)]
struct PublishArgs {
    /// Shell command to run.
    #[arg(long)]
    command: String,
    /// Description for humans.
    #[arg(long, default_value = "")]
    description: String,
    /// Lowest acceptable price.
    #[arg(long, allow_negative_numbers = true, default_value_t = PublishRequest::default().min_price)]
    min_price: u64,
    /// Highest acceptable price.
    #[arg(long, allow_negative_numbers = true, default_value_t = PublishRequest::default().max_price)]
    max_price: u64,
    /// Bid window in seconds.
    #[arg(long, allow_negative_numbers = true, default_value_t = PublishRequest::default().bid_window_secs)]
    bid_window: u64,
    /// Bidding closes early once this many bids arrived.
    #[arg(long, allow_negative_numbers = true, default_value_t = PublishRequest::default().max_bids)]
    max_bids: u32,
    /// Run timeout in seconds.
    #[arg(long, allow_negative_numbers = true, default_value_t = PublishRequest::default().timeout_secs)]
    timeout: u64,
    /// Make the seed private to this node (repeatable): every message about it is encrypted
    /// to these nodes and the publisher. Their hellos must have been received.
    #[arg(long = "to", value_name = "NODE_ID")]
    to: Vec<String>,
    /// The command needs network access (only nodes with runner.allow_network bid).
    #[arg(long)]
    network: bool,
    /// The strongest task sandbox the command works under.
    #[arg(long, value_enum, default_value_t = IsolationArg::Full)]
    isolation: IsolationArg,
    /// Seconds the winner has to claim after the award; then the seed moves to the next best
    /// bid.
    #[arg(long, allow_negative_numbers = true, default_value_t = Deadlines::default().claim_secs)]
    claim_window: u64,
    /// Seconds beyond --timeout the claimer has to report its result; then the round fails.
    #[arg(long, allow_negative_numbers = true, default_value_t = Deadlines::default().result_grace_secs)]
    result_grace: u64,
    /// Seconds the publisher has to settle after the result; then the node settles by the
    /// result.
    #[arg(long, allow_negative_numbers = true, default_value_t = Deadlines::default().settle_secs)]
    settle_window: u64,
    /// Run the command on this many nodes and compare their results (output hash and exit
    /// code); above 1 the seed follows rules 3, which older nodes refuse.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1)]
    replicas: u32,
    /// Agreeing results that complete a replicated seed (default: a majority of --replicas).
    #[arg(long, allow_negative_numbers = true)]
    quorum: Option<u32>,
    /// Most runners a replicated seed may be escalated to when its results reach no quorum
    /// (default: --replicas, no escalation).
    #[arg(long, allow_negative_numbers = true)]
    max_replicas: Option<u32>,
    /// Replicated seeds: hash stdout alone, not stdout and stderr combined.
    #[arg(long)]
    hash_stdout: bool,
}

impl PublishArgs {
    /// The replication the flags ask for; `None` for a seed run once.
    fn replication(&self) -> Option<crabnet_core::model::Replication> {
        let asked = self.replicas > 1
            || self.quorum.is_some_and(|q| q > 1)
            || self.max_replicas.is_some_and(|m| m > self.replicas)
            || self.hash_stdout;
        asked.then(|| crabnet_core::model::Replication {
            replicas: self.replicas,
            quorum: self.quorum.unwrap_or(self.replicas / 2 + 1),
            max_replicas: self.max_replicas.unwrap_or(self.replicas),
            hash: if self.hash_stdout {
                crabnet_core::model::OutputHash::Stdout
            } else {
                crabnet_core::model::OutputHash::Combined
            },
        })
    }
}

/// Sandbox levels, as the CLI spells them.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum IsolationArg {
    /// Works only without a sandbox.
    None,
    /// Works under a partial sandbox.
    Partial,
    /// Works under the full sandbox (default).
    Full,
}

impl From<IsolationArg> for SandboxLevel {
    fn from(a: IsolationArg) -> SandboxLevel {
        match a {
            IsolationArg::None => SandboxLevel::None,
            IsolationArg::Partial => SandboxLevel::Partial,
            IsolationArg::Full => SandboxLevel::Full,
        }
    }
}

#[derive(Args, Debug)]
struct EventsArgs {
    /// Keep printing new events until Ctrl-C.
    #[arg(long, short)]
    follow: bool,
    /// Only events after this sequence number.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    since: u64,
    /// Print at most this many events (before following).
    #[arg(long, default_value_t = 1000, allow_negative_numbers = true)]
    limit: usize,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Number of nodes (at least 3).
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    nodes: usize,
    /// The command the demo task runs.
    #[arg(long, default_value = demo::DEFAULT_COMMAND)]
    command: String,
    /// Keep the nodes' data directories (printed at the end).
    #[arg(long)]
    keep: bool,
    /// After the lifecycle, keep the network running and serve the first node's dashboard
    /// until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// With --serve: the dashboard's address (default 127.0.0.1:7980; port 0 picks a free
    /// port).
    #[arg(long, value_name = "ADDR", requires = "serve")]
    http: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli =
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut Cli::command()).exit());
    refuse_unused_globals(&cli, &matches);
    let (filter, invalid) = crabnet_core::logging::env_filter(LevelFilter::WARN);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Some(why) = invalid {
        tracing::warn!("{why}");
    }
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                let body = serde_json::json!({"error": {"kind": e.kind().as_str(), "message": e.to_string()}});
                println!("{body}");
            }
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `demo` and `bench` run their nodes in temporary directories with configurations of their
/// own: a `--data-dir` or `--config` given on their command line would be ignored, so it is
/// refused (a usage error, exit status 2). The same settings from the environment
/// (`CRABNET_DATA_DIR`, `CRABNET_CONFIG`), set for the other commands, are left alone.
fn refuse_unused_globals(cli: &Cli, matches: &clap::ArgMatches) {
    let (name, own) = match cli.command {
        Command::Demo(_) => (
            "demo",
            "its nodes run in temporary directories (--keep keeps them)",
        ),
        Command::Bench(_) => (
            "bench",
            "its node and peers run in temporary directories with the default configuration \
             (--sync sets the store's sync mode)",
        ),
        _ => return,
    };
    for (id, flag) in [("data_dir", "--data-dir"), ("config", "--config")] {
        if matches.value_source(id) == Some(ValueSource::CommandLine) {
            Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!("`crabnet {name}` does not use {flag}: {own}"),
                )
                .exit();
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config, Error> {
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(crabnet_core::config::default_data_dir);
    let file = cli
        .config
        .clone()
        .or_else(|| Some(data_dir.join("config.toml")).filter(|p| p.exists()));
    let mut config = match file {
        Some(path) => Config::from_file(&path)?,
        None => Config::default(),
    };
    config.data_dir = data_dir;
    Ok(config)
}

fn print_json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("values serialize")
    );
}

/// Prints `rows` as a JSON array with `--json`; else `none` when there are no rows, or
/// `header` and one `line` per row.
fn print_table<T: Serialize>(
    rows: &[T],
    json: bool,
    none: &str,
    header: &str,
    line: impl Fn(&T) -> String,
) {
    if json {
        print_json(&rows);
    } else if rows.is_empty() {
        println!("{none}");
    } else {
        println!("{header}");
        for row in rows {
            println!("{}", line(row));
        }
    }
}

fn parse_id(text: &str) -> Result<SeedId, Error> {
    SeedId::parse(text)
}

/// Parses the seed id `id`, then runs `op` on it with the node started ([`with_node`]);
/// returns the id and `op`'s result.
async fn on_seed(
    config: Config,
    id: &str,
    op: impl AsyncFnOnce(&Node, &SeedId) -> Result<SeedView, Error>,
) -> Result<(SeedId, SeedView), Error> {
    let id = parse_id(id)?;
    let v = with_node(config, async |n| op(n, &id).await).await?;
    Ok((id, v))
}

/// Starts the node on the data directory, runs `f` and stops the node.
///
/// SIGINT (Ctrl-C) or SIGTERM stops the node while `f` runs: its operation ends the way a stop
/// ends it (a task in progress gets `runner.stop_grace_ms`, then is killed and its result is
/// recorded as interrupted), and `f`'s result is returned. A second signal exits at once
/// (the task still dies with the process, and the next start records the run as interrupted).
async fn with_node<T>(
    config: Config,
    f: impl AsyncFnOnce(&Node) -> Result<T, Error>,
) -> Result<T, Error> {
    // Installed before the node starts, so that no signal kills the process with the node up.
    let mut interrupts = Interrupts::install()?;
    let node = Node::start(config).await?;
    let mut work = std::pin::pin!(f(&node));
    let (out, stopped) = tokio::select! {
        out = &mut work => (out, node.stop().await),
        signal = interrupts.next() => {
            tracing::warn!("{}: stopping the node", signal.name);
            tokio::join!(work, async {
                tokio::select! {
                    stopped = node.stop() => stopped,
                    again = interrupts.next() => {
                        eprintln!(
                            "error: {} again: exiting without waiting for the node to stop",
                            again.name
                        );
                        std::process::exit(again.exit_code);
                    }
                }
            })
        }
    };
    let out = out?;
    stopped?;
    Ok(out)
}

async fn dispatch(cli: Cli) -> Result<(), Error> {
    let json = cli.json;
    match &cli.command {
        Command::Demo(args) => return run_demo(args, json).await,
        Command::Listen(args) => return listen(load_config(&cli)?, args, json).await,
        Command::Bench(args) => return bench(args, json).await,
        _ => {}
    }
    let config = load_config(&cli)?;
    match cli.command {
        Command::Init => {
            let dir = config.data_dir.clone();
            let existed = config.db_path().exists();
            let id = with_node(config, async |n| Ok(n.id().clone())).await?;
            if json {
                print_json(
                    &serde_json::json!({"node_id": id, "data_dir": dir, "created": !existed}),
                );
            } else if existed {
                println!("already initialized: node {id} in {}", dir.display());
            } else {
                println!("initialized node {id} in {}", dir.display());
            }
        }
        Command::Status => {
            let (o, alerts) = with_node(config, async |n| {
                Ok((n.overview().await?, n.active_alerts().await?))
            })
            .await?;
            if json {
                /// The overview with the alerts firing now.
                #[derive(Serialize)]
                struct StatusJson<'a> {
                    #[serde(flatten)]
                    overview: &'a crabnet_core::Overview,
                    alerts: &'a [crabnet_core::alerts::ActiveAlert],
                }
                print_json(&StatusJson {
                    overview: &o,
                    alerts: &alerts,
                });
            } else {
                println!("node      {} ({})", o.node_id, o.name);
                println!("data dir  {}", o.data_dir);
                if alerts.is_empty() {
                    println!("alerts    none firing");
                }
                for a in &alerts {
                    println!(
                        "ALERT     {} since {}: {}",
                        a.alert,
                        format_ms(a.since),
                        a.detail
                    );
                }
                let counts: Vec<String> = o
                    .seeds_by_status
                    .iter()
                    .map(|(s, n)| format!("{s} {n}"))
                    .collect();
                println!("seeds     {}", counts.join(", "));
                println!("outbox    {} pending", o.outbox_pending);
                println!("events    {} recorded", o.last_event_seq);
                if o.counters.is_empty() {
                    println!("counters  none yet");
                } else {
                    for (k, v) in &o.counters {
                        println!("counter   {k} = {v}");
                    }
                }
                println!("digest    {}", o.state_digest);
                let sb = &o.sandbox;
                println!(
                    "sandbox   {} (policy {}{}){}",
                    if sb.can_run {
                        sb.level.as_str()
                    } else {
                        "unavailable: tasks refused"
                    },
                    sb.policy.as_str(),
                    if sb.allow_network {
                        ", network seeds allowed"
                    } else {
                        ""
                    },
                    if sb.features.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", sb.features.join(" "))
                    }
                );
                for m in &sb.missing {
                    println!("missing   {m}");
                }
            }
        }
        Command::Peers => {
            let peers = with_node(config, async |n| n.peers().await).await?;
            print_table(
                &peers,
                json,
                "no peers yet (peers appear once their hello arrives)",
                &format!(
                    "{:<64}  {:<12}  {:<16}  {:<24}  {:<22}  ADDRESSES",
                    "NODE", "NAME", "FINGERPRINT", "LAST SEEN", "AGREED/DISSENT/MISSED"
                ),
                |p| {
                    let r = &p.reputation;
                    format!(
                        "{:<64}  {:<12}  {:<16}  {:<24}  {:<22}  {}",
                        p.node_id,
                        p.name,
                        p.fingerprint,
                        format_ms(p.last_seen),
                        format!("{}/{}/{}", r.agreed, r.dissented, r.missed_deadlines),
                        p.addresses.join(", ")
                    )
                },
            );
        }
        Command::Seed(cmd) => seed_command(config, cmd, json).await?,
        Command::Events(args) => events(config, args, json).await?,
        Command::Trust(cmd) => trust_command(config, cmd, json).await?,
        Command::Demo(_) | Command::Listen(_) | Command::Bench(_) => unreachable!("handled above"),
    }
    Ok(())
}

fn read_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| {
        Error::with_source(
            ErrorKind::Io,
            format!("cannot read {what} {}: {e}", path.display()),
            e,
        )
    })
}

fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), Error> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    let mut file = options.open(path).map_err(|e| {
        Error::with_source(
            ErrorKind::Io,
            format!("cannot create {}: {e}", path.display()),
            e,
        )
    })?;
    std::io::Write::write_all(&mut file, bytes)?;
    Ok(())
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    crabnet_core::envelope::os_rng(&mut b);
    b
}

async fn trust_command(config: Config, cmd: TrustCommand, json: bool) -> Result<(), Error> {
    use crabnet_core::clock::now_ms;
    use crabnet_core::trust::{
        AnchorKey, Certificate, IdentityRecord, Revocation, RevocationTarget, Roles,
    };
    match cmd {
        TrustCommand::AnchorNew { out } => {
            let key = AnchorKey::generate()?;
            key.write_new(&out)?;
            let public = hex::encode(key.public().to_bytes());
            let mut pub_path = out.into_os_string();
            pub_path.push(".pub");
            let pub_path = PathBuf::from(pub_path);
            write_file(&pub_path, format!("{public}\n").as_bytes())?;
            let id = hex::encode(key.id());
            if json {
                print_json(&serde_json::json!({
                    "anchor_id": id, "public": public, "public_file": pub_path,
                }));
            } else {
                println!(
                    "anchor {id}\npublic key written to {}:\n{public}",
                    pub_path.display()
                );
            }
        }
        TrustCommand::Identity { out } => {
            let identity = with_node(config, async |n| Ok(n.public_identity())).await?;
            let text = serde_json::to_string_pretty(&IdentityRecord::of(&identity))
                .expect("records serialize");
            if let Some(out) = out {
                write_file(&out, text.as_bytes())?;
            }
            println!("{text}");
        }
        TrustCommand::Sign {
            anchor,
            identity,
            out,
            roles,
            not_before,
            days,
        } => {
            let key = AnchorKey::read(&anchor)?;
            let record: IdentityRecord =
                serde_json::from_slice(&read_file(&identity, "identity file")?).map_err(|e| {
                    Error::new(
                        ErrorKind::Validation,
                        format!("{} is not an identity record: {e}", identity.display()),
                    )
                })?;
            let node = record.identity()?;
            let roles = if roles.is_empty() {
                Roles::ALL
            } else {
                roles.iter().try_fold(
                    Roles {
                        publish: false,
                        run: false,
                    },
                    |r, name| r.with(name),
                )?
            };
            let from = not_before.unwrap_or_else(now_ms);
            let until = from.saturating_add(days.saturating_mul(86_400_000));
            let serial: [u8; 16] = random32()[..16].try_into().expect("16 bytes");
            let cert = Certificate::sign(&key, &node, serial, from, until, roles, random32())?;
            write_file(&out, cert.to_bytes())?;
            show_certificate(&cert, json);
        }
        TrustCommand::Revoke {
            anchor,
            node,
            serial,
            own,
            from,
            out,
        } => {
            let from = from.unwrap_or_else(now_ms);
            let revocation = if own {
                with_node(config, async |n| n.revoke_self(from).await).await?
            } else {
                let key = AnchorKey::read(anchor.as_deref().expect("clap requires --anchor"))?;
                let target = match (node, serial) {
                    (Some(id), None) => RevocationTarget::Node(NodeId::parse(&id)?),
                    (None, Some(s)) => {
                        let bytes = hex::decode(&s)
                            .ok()
                            .and_then(|b| <[u8; 16]>::try_from(b).ok());
                        RevocationTarget::Certificate(bytes.ok_or_else(|| {
                            Error::new(
                                ErrorKind::Validation,
                                format!("--serial {s:?} is not 32 hex digits"),
                            )
                        })?)
                    }
                    _ => {
                        return Err(Error::new(
                            ErrorKind::Validation,
                            "name what to revoke: --node ID or --serial HEX",
                        ));
                    }
                };
                Revocation::by_anchor(&key, target, from, now_ms(), random32())?
            };
            if let Some(out) = out {
                write_file(&out, revocation.to_bytes())?;
            }
            show_revocation(&revocation, json);
        }
        TrustCommand::Rotate => {
            let r = with_node(config, async |n| n.rotate_keys().await).await?;
            let record = IdentityRecord::of(&r.next);
            if json {
                print_json(&serde_json::json!({
                    "node_id": r.node_id,
                    "key_epoch": r.epoch,
                    "rotated_at": r.rotated_at,
                    "identity": record,
                }));
            } else {
                println!(
                    "node {} now uses key epoch {} (rotated at {})",
                    r.node_id, r.epoch, r.rotated_at
                );
            }
        }
        TrustCommand::Import { file } => {
            let bytes = read_file(&file, "revocation file")?;
            let new = with_node(config, async |n| n.import_revocation(bytes).await).await?;
            if json {
                print_json(&serde_json::json!({"new": new}));
            } else if new {
                println!("revocation added");
            } else {
                println!("revocation already known");
            }
        }
        TrustCommand::Show { file: Some(file) } => {
            let bytes = read_file(&file, "file")?;
            if let Ok(cert) = Certificate::parse(&bytes) {
                show_certificate(&cert, json);
            } else {
                let r = Revocation::parse(&bytes).map_err(|e| {
                    Error::new(
                        ErrorKind::Validation,
                        format!(
                            "{} is neither a certificate nor a revocation ({e})",
                            file.display()
                        ),
                    )
                })?;
                show_revocation(&r, json);
            }
        }
        TrustCommand::Show { file: None } => {
            let status = with_node(config, async |n| n.trust_status().await).await?;
            if json {
                print_json(&status);
            } else {
                println!("mode: {:?}", status.mode);
                println!("anchors: {}", status.anchors.join(", "));
                match (&status.certificate_serial, status.certificate_valid) {
                    (Some(serial), Some((a, b))) => println!(
                        "certificate: {serial}, valid {} .. {}",
                        format_ms(a),
                        format_ms(b)
                    ),
                    _ => println!("certificate: none"),
                }
                println!("certified peers: {}", status.certified.len());
                for (id, from) in &status.revoked_nodes {
                    println!("revoked node {id} from {}", format_ms(*from));
                }
                for (serial, from) in &status.revoked_certificates {
                    println!("revoked certificate {serial} from {}", format_ms(*from));
                }
            }
        }
    }
    Ok(())
}

fn show_certificate(c: &crabnet_core::trust::Certificate, json: bool) {
    let v = serde_json::json!({
        "type": "certificate",
        "anchor_id": hex::encode(c.anchor),
        "serial": hex::encode(c.serial),
        "node_id": c.node.node_id,
        "key_epoch": c.node.epoch,
        "not_before": c.not_before,
        "not_after": c.not_after,
        "roles": c.roles,
    });
    if json {
        print_json(&v);
    } else {
        println!(
            "certificate {} for node {} (epoch {}) by anchor {}, valid {} .. {}, roles {:?}",
            hex::encode(c.serial),
            c.node.node_id,
            c.node.epoch,
            hex::encode(c.anchor),
            format_ms(c.not_before),
            format_ms(c.not_after),
            c.roles
        );
    }
}

fn show_revocation(r: &crabnet_core::trust::Revocation, json: bool) {
    use crabnet_core::trust::{Issuer, RevocationTarget};
    let (kind, target) = match &r.target {
        RevocationTarget::Node(id) => ("node", id.to_string()),
        RevocationTarget::Certificate(s) => ("certificate", hex::encode(s)),
    };
    let issuer = match r.issuer {
        Issuer::Anchor => "anchor",
        Issuer::Node => "self",
    };
    if json {
        print_json(&serde_json::json!({
            "type": "revocation",
            "issuer": issuer,
            "target_kind": kind,
            "target": target,
            "revoked_from": r.revoked_from,
            "issued_at": r.issued_at,
        }));
    } else {
        println!(
            "revocation of {kind} {target} from {} (issued {} by {issuer})",
            format_ms(r.revoked_from),
            format_ms(r.issued_at)
        );
    }
}

async fn seed_command(config: Config, cmd: SeedCommand, json: bool) -> Result<(), Error> {
    match cmd {
        SeedCommand::Publish(a) => {
            let replication = a.replication();
            let req = PublishRequest {
                command: a.command,
                description: a.description,
                min_price: a.min_price,
                max_price: a.max_price,
                bid_window_secs: a.bid_window,
                max_bids: a.max_bids,
                timeout_secs: a.timeout,
                private_to: a
                    .to
                    .iter()
                    .map(|t| NodeId::parse(t))
                    .collect::<Result<_, _>>()?,
                network: a.network,
                isolation: a.isolation.into(),
                deadlines: Deadlines {
                    claim_secs: a.claim_window,
                    result_grace_secs: a.result_grace,
                    settle_secs: a.settle_window,
                },
                replication,
            };
            let v = with_node(config, async |n| n.publish(req).await).await?;
            if json {
                print_json(&v);
            } else {
                println!("{}", v.seed.id);
            }
        }
        SeedCommand::Bid { id, price } => {
            let (id, v) = on_seed(config, &id, async |n, id| n.bid(id, price).await).await?;
            report(&v, json, &format!("bid {price} on seed {id}"));
        }
        SeedCommand::Claim { id } => {
            let (id, v) = on_seed(config, &id, async |n, id| n.claim(id).await).await?;
            report(&v, json, &format!("claimed seed {id}"));
        }
        SeedCommand::Run { id } => {
            let (id, v) = on_seed(config, &id, async |n, id| n.run(id).await).await?;
            let interrupted = v.result.as_ref().is_some_and(|r| r.interrupted);
            if json && !interrupted {
                print_json(&v);
            } else if let Some(r) = v.result.as_ref().filter(|_| !json) {
                let outcome = if r.interrupted {
                    "interrupted"
                } else if r.success {
                    "success"
                } else {
                    "failure"
                };
                println!(
                    "ran seed {id}: {outcome} (exit {}), {} ms, {} bytes of output, sha256 {}",
                    r.exit_code.map_or_else(|| "none".into(), |c| c.to_string()),
                    r.duration_ms,
                    r.output_bytes,
                    r.output_sha256
                );
                print!("{}", r.output_excerpt);
                if r.output_truncated {
                    println!("[output truncated]");
                }
            }
            if interrupted {
                return Err(Error::new(
                    ErrorKind::Stopped,
                    format!(
                        "the node stopped before the task of seed {id} ended: the task was \
                         killed and its result is recorded as interrupted (the seed will not \
                         run again)"
                    ),
                ));
            }
        }
        SeedCommand::Settle { id, reject, note } => {
            let (id, v) = on_seed(config, &id, async |n, id| {
                n.settle(id, !reject, &note).await
            })
            .await?;
            let verb = if reject { "rejected" } else { "accepted" };
            report(&v, json, &format!("settled seed {id}: {verb}"));
        }
        SeedCommand::Cancel { id } => {
            let (id, v) = on_seed(config, &id, async |n, id| n.cancel(id).await).await?;
            report(&v, json, &format!("cancelled seed {id}"));
        }
        SeedCommand::Reassign { id } => {
            let (id, v) = on_seed(config, &id, async |n, id| n.reassign(id).await).await?;
            let round = v.award.as_ref().map_or(0, |a| a.round);
            report(&v, json, &format!("seed {id} is in round {round}"));
        }
        SeedCommand::List { status } => {
            let status = match status {
                None => None,
                Some(s) => Some(SeedStatus::parse(&s).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Validation,
                        format!(
                            "unknown status {s:?}; expected one of {}",
                            SeedStatus::ALL.map(|s| s.as_str()).join(", ")
                        ),
                    )
                })?),
            };
            let seeds = with_node(config, async |n| n.seeds(status).await).await?;
            print_table(
                &seeds,
                json,
                "no seeds",
                &format!(
                    "{:<32}  {:<9}  {:>4}  {:<24}  COMMAND",
                    "ID", "STATUS", "BIDS", "CREATED"
                ),
                |v| {
                    format!(
                        "{:<32}  {:<9}  {:>4}  {:<24}  {}",
                        v.seed.id,
                        v.status,
                        v.bids.len(),
                        format_ms(v.seed.created_at),
                        one_line(&v.seed.command)
                    )
                },
            );
        }
        SeedCommand::Show { id } => {
            let (_, v) = on_seed(config, &id, async |n, id| n.seed(id).await).await?;
            if json {
                print_json(&v);
            } else {
                show(&v);
            }
        }
    }
    Ok(())
}

fn one_line(text: &str) -> String {
    let line: String = text.lines().next().unwrap_or("").chars().take(60).collect();
    if line.len() < text.len() {
        format!("{line}...")
    } else {
        line
    }
}

fn report(v: &SeedView, json: bool, text: &str) {
    if json {
        print_json(v);
    } else {
        println!("{text} (status: {})", v.status);
    }
}

fn show(v: &SeedView) {
    let s = &v.seed;
    println!("seed        {}", s.id);
    println!("status      {}", v.status);
    println!("publisher   {}", s.publisher);
    println!("command     {}", s.command);
    if !s.description.is_empty() {
        println!("description {}", s.description);
    }
    println!("price       {}..={}", s.min_price, s.max_price);
    println!(
        "bidding     {} bids max, window {} s (until {})",
        s.max_bids,
        s.bid_window_secs,
        format_ms(s.window_end())
    );
    println!("timeout     {} s", s.timeout_secs);
    if let Some(r) = s.replication() {
        println!(
            "replicas    {} (quorum {}, at most {}, hash {})",
            r.replicas,
            r.quorum,
            r.max_replicas,
            r.hash.as_str()
        );
    }
    println!("created     {}", format_ms(s.created_at));
    for b in &v.bids {
        println!(
            "bid         {} by {} at {} ({})",
            b.bid.price,
            b.bid.bidder.short(),
            format_ms(b.placed_at),
            b.bid.id
        );
    }
    if let Some(a) = &v.award {
        match (&a.winner_node, a.price) {
            (Some(w), Some(p)) => println!("winner      {} at {p} ({})", w, format_ms(a.closed_at)),
            _ => println!("closed      without bids ({})", format_ms(a.closed_at)),
        }
    }
    if let Some(c) = &v.claim {
        println!(
            "claimed     by {} at {}",
            c.claimer,
            format_ms(c.claimed_at)
        );
    }
    if let Some(r) = &v.result {
        println!(
            "result      {} exit {} in {} ms, {} bytes, sha256 {}",
            if r.success { "success" } else { "failure" },
            r.exit_code.map_or_else(|| "none".into(), |c| c.to_string()),
            r.duration_ms,
            r.output_bytes,
            r.output_sha256
        );
        println!(
            "sandbox     {}{}{}",
            r.sandbox.level,
            if r.sandbox.network {
                ", with network"
            } else {
                ""
            },
            if r.sandbox.features.is_empty() {
                String::new()
            } else {
                format!(": {}", r.sandbox.features.join(" "))
            }
        );
    }
    for r in &v.replicas {
        println!(
            "replica     {} by {} at {} (step {}): {}{}",
            r.bid_id.short(),
            r.runner.short(),
            r.price,
            r.step,
            r.standing.as_str(),
            r.result.as_ref().map_or_else(String::new, |res| format!(
                ", exit {} sha256 {}",
                res.exit_code
                    .map_or_else(|| "none".into(), |c| c.to_string()),
                res.output_sha256
            ))
        );
    }
    if let Some(at) = v.inconclusive_at {
        println!("inconclusive at {}", format_ms(at));
    }
    if let Some(st) = &v.settlement {
        println!(
            "settled     {:?} amount {} at {}{}",
            st.settlement.outcome,
            st.settlement.amount,
            format_ms(st.settled_at),
            if st.settlement.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", st.settlement.note)
            }
        );
    }
    if let Some(at) = v.cancelled_at {
        println!("cancelled   at {}", format_ms(at));
    }
}

fn print_event(e: &Event, json: bool) {
    if json {
        println!("{}", serde_json::to_string(e).expect("events serialize"));
    } else {
        let body = serde_json::to_value(&e.kind).expect("events serialize");
        let mut fields = Vec::new();
        if let serde_json::Value::Object(map) = body {
            for (k, v) in map {
                if k != "type" {
                    fields.push(format!("{k}={v}"));
                }
            }
        }
        println!(
            "{:>6}  {}  {:<17} {}",
            e.seq,
            format_ms(e.at),
            e.kind.name(),
            fields.join(" ")
        );
    }
}

async fn events(config: Config, args: EventsArgs, json: bool) -> Result<(), Error> {
    with_node(config, async |n| {
        let mut after = args.since;
        let pruned = n.events_pruned_through().await?;
        if after < pruned {
            eprintln!(
                "note: events {} to {pruned} were pruned ([retention] events_max_rows and \
                 events_max_age_secs); listing from the oldest kept",
                after + 1
            );
        }
        let first = n.events_after(after, args.limit).await?;
        for e in &first {
            print_event(e, json);
            after = e.seq;
        }
        if !args.follow {
            return Ok(());
        }
        // Follow the durable log, so events written by other processes on this data directory
        // (a running `crabnet listen`, other commands) show up too, until Ctrl-C (or SIGTERM)
        // stops the node.
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let events = match n.events_after(after, 1000).await {
                Err(e) if e.kind() == ErrorKind::Stopped => return Ok(()),
                other => other?,
            };
            for e in events {
                print_event(&e, json);
                after = e.seq;
            }
        }
    })
    .await
}

async fn listen(config: Config, args: &ListenArgs, json: bool) -> Result<(), Error> {
    let bad = |m: String| Error::new(ErrorKind::Validation, m);
    let node = match args.transport {
        TransportArg::Udp => {
            if !args.bootstrap.is_empty() || args.mdns || args.quic || args.udp_fallback.is_some() {
                return Err(bad(
                    "--bootstrap, --mdns, --quic and --udp-fallback apply to --transport dht"
                        .into(),
                ));
            }
            let peers = args
                .peers
                .iter()
                .map(|p| {
                    p.parse::<SocketAddr>()
                        .map_err(|e| bad(format!("invalid UDP peer {p:?} (expected IP:PORT): {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let transport = UdpTransport::bind(UdpConfig {
                bind: args.bind,
                peers,
                broadcast: args.broadcast,
            })?;
            Node::start_with_transport(config, Box::new(transport)).await?
        }
        TransportArg::Dht => {
            if args.broadcast.is_some() {
                return Err(bad("--broadcast applies to --transport udp".into()));
            }
            let ip = match args.bind.ip() {
                std::net::IpAddr::V4(ip) => format!("/ip4/{ip}"),
                std::net::IpAddr::V6(ip) => format!("/ip6/{ip}"),
            };
            let port = args.bind.port();
            let peers = args
                .peers
                .iter()
                .map(|p| match p.parse::<SocketAddr>() {
                    Ok(SocketAddr::V4(a)) => format!("/ip4/{}/tcp/{}", a.ip(), a.port()),
                    Ok(SocketAddr::V6(a)) => format!("/ip6/{}/tcp/{}", a.ip(), a.port()),
                    Err(_) => p.clone(),
                })
                .collect();
            let mut listen = vec![format!("{ip}/tcp/{port}")];
            if args.quic {
                listen.push(format!("{ip}/udp/{port}/quic-v1"));
            }
            let dht = DhtConfig {
                listen,
                peers,
                bootstrap: args.bootstrap.clone(),
                mdns: args.mdns,
                udp_fallback: args.udp_fallback.map(|bind| UdpConfig {
                    bind,
                    peers: args.udp_peer.clone(),
                    broadcast: None,
                }),
                ..DhtConfig::default()
            };
            Node::start_with_dht(config, dht).await?
        }
    };
    // Subscribed at once: what happens while the dashboard and the banner are set up (the
    // first peer's hello, on a loaded machine) is printed after the banner, not lost.
    let mut sub = node.subscribe();
    let web = match start_web(&node, &args.http).await {
        Ok(web) => web,
        Err(e) => {
            let _ = node.stop().await;
            return Err(e);
        }
    };
    let overview = node.overview().await?;
    let transport = overview.transport.unwrap_or_default();
    let local = match args.transport {
        // The bound address (with the real port when binding port 0).
        TransportArg::Udp => overview
            .addresses
            .first()
            .and_then(|a| a.strip_prefix("udp:"))
            .map(str::to_owned)
            .unwrap_or_else(|| args.bind.to_string()),
        TransportArg::Dht => overview
            .addresses
            .iter()
            .find_map(|a| a.strip_prefix("udp:"))
            .filter(|_| transport == "udp")
            .map(str::to_owned)
            .unwrap_or_else(|| args.bind.to_string()),
    };
    let http = web.as_ref().map(|w| w.local_addr().to_string());
    let mut interrupts = Interrupts::install()?;
    if json {
        print_json(&serde_json::json!({
            "node_id": node.id(), "transport": transport, "bind": local, "http": http,
            "addresses": overview.addresses,
        }));
    } else {
        println!(
            "node {} listening on {transport} {local} (Ctrl-C to stop)",
            node.id()
        );
        // libp2p listen addresses carry the peer id (`.../p2p/12D3...`): what peers dial.
        for a in overview.addresses.iter().filter(|a| a.contains("/p2p/")) {
            println!("libp2p {a}");
        }
        if let Some(web) = &web {
            println!("dashboard {}", web.url());
        }
    }
    loop {
        tokio::select! {
            _ = interrupts.next() => break,
            e = sub.recv() => match e {
                Some(e) => print_event(&e, json),
                None => break,
            }
        }
    }
    if let Some(web) = web {
        web.shutdown().await?;
    }
    node.stop().await
}

/// `crabnet bench`: runs [`crabnet_core::perf::run`] with peers started from this executable.
async fn bench(args: &BenchArgs, json: bool) -> Result<(), Error> {
    let program = std::env::current_exe()?;
    let mut opts = if args.quick {
        perf::BenchOptions::quick(program)
    } else {
        perf::BenchOptions::new(program)
    };
    if let Some(peers) = args.peers {
        opts.peers = peers;
    }
    if let Some(seeds) = args.seeds {
        opts.seeds_per_peer = seeds;
    }
    if let Some(publishers) = args.publishers {
        opts.publishers = publishers;
    }
    opts.transport = match args.transport {
        TransportArg::Udp => perf::BenchTransport::Udp,
        TransportArg::Dht => perf::BenchTransport::Dht,
    };
    opts.sync = match args.sync {
        SyncArg::Full => SyncMode::Full,
        SyncArg::Normal => SyncMode::Normal,
    };
    if !json {
        eprintln!(
            "crabnet bench: {} peer process(es) on {}, {} seeds each...",
            opts.peers,
            opts.transport.name(),
            opts.seeds_per_peer
        );
    }
    // Dropping the run (Ctrl-C) kills its peer processes and removes its temp directories.
    let mut interrupts = Interrupts::install()?;
    let r = tokio::select! {
        r = perf::run(&opts) => r?,
        _ = interrupts.next() => {
            return Err(Error::new(ErrorKind::Stopped, "interrupted"));
        }
    };
    if json {
        println!("{}", serde_json::to_string(&r).expect("reports serialize"));
        return Ok(());
    }
    println!(
        "verify floor      {:>10.0} envelopes/s  ({:.1} µs: Ed25519 + ML-DSA-44, keys expanded, one thread)",
        r.verify_floor_per_s, r.verify_floor_us
    );
    println!(
        "sign+verify       {:>10.3} x raw        (envelope {:.1} µs, raw {:.1} µs)",
        r.sign_verify_overhead, r.envelope_sign_verify_us, r.raw_sign_verify_us
    );
    println!(
        "publish           {:>10.0} seeds/s      (Node::publish from {} tasks, store.sync = {})",
        r.publish_per_s, r.publishers, r.store_sync
    );
    println!(
        "publish, 1 caller {:>10.0} seeds/s      (one publish after another)",
        r.publish_single_per_s
    );
    println!(
        "applied           {:>10.0} envelopes/s  ({} of {} from {} peer process(es) on {})",
        r.applied_per_s,
        r.applied,
        r.sent,
        r.peers,
        r.transport.name()
    );
    println!("apply ratio       {:>10.3} of the floor", r.apply_ratio);
    println!(
        "frames per batch  {:>10.1}              (receive queue full {} times)",
        r.frames_per_batch, r.queue_full
    );
    if r.transport == perf::BenchTransport::Udp {
        println!(
            "lost by the node  {:>10} datagrams    (receive buffer full)",
            r.transport_dropped
        );
    }
    println!("elapsed           {:>10.1} s", r.elapsed_s);
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM, caught from the moment [`Interrupts::install`] returns, so that
/// a signal sent as soon as a banner is printed stops the process gracefully instead of
/// killing it (whatever dispositions the process inherited).
struct Interrupts {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(not(unix))]
    ctrl_c: std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>>>>,
}

/// One signal [`Interrupts`] caught.
struct Interrupt {
    name: &'static str,
    /// The exit status of a process that exits because of it (128 + its number).
    exit_code: i32,
}

impl Interrupts {
    fn install() -> std::io::Result<Interrupts> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Interrupts {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
            // The first poll registers the handler.
            if let Some(Err(e)) = futures::FutureExt::now_or_never(ctrl_c.as_mut()) {
                return Err(e);
            }
            Ok(Interrupts { ctrl_c })
        }
    }

    /// The next signal (cancel-safe).
    async fn next(&mut self) -> Interrupt {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => Interrupt { name: "SIGINT", exit_code: 128 + 2 },
                _ = self.term.recv() => Interrupt { name: "SIGTERM", exit_code: 128 + 15 },
            }
        }
        #[cfg(not(unix))]
        {
            let _ = self.ctrl_c.as_mut().await;
            self.ctrl_c = Box::pin(tokio::signal::ctrl_c());
            Interrupt {
                name: "Ctrl-C",
                exit_code: 130,
            }
        }
    }
}

/// Starts the monitoring API for `crabnet listen` unless it is turned off. An address asked for
/// (`--http`, or `[web] bind` in the config) must work; when the built-in default is taken
/// (say, by another node on this machine) the node runs without a dashboard and says so.
async fn start_web(node: &Node, args: &HttpArgs) -> Result<Option<WebHandle>, Error> {
    let mut config = node.config().web.clone();
    if args.no_http || (!config.enabled && args.http.is_none()) {
        return Ok(None);
    }
    if let Some(bind) = args.http {
        config.bind = bind;
    }
    let default = args.http.is_none() && config.bind == WebConfig::default().bind;
    match node.serve_web(config).await {
        Ok(web) => Ok(Some(web)),
        Err(e) if default && e.kind() == ErrorKind::Io => {
            eprintln!("warning: running without the dashboard: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

async fn run_demo(args: &DemoArgs, json: bool) -> Result<(), Error> {
    let opts = DemoOptions {
        nodes: args.nodes,
        keep: args.keep,
        command: args.command.clone(),
        ..DemoOptions::default()
    };
    let mut say = |line: String| {
        if !json {
            println!("{line}");
        }
    };
    if args.serve {
        return serve_demo(args, &opts, json).await;
    }
    let report = demo::run(&opts, &mut say).await?;
    if json {
        print_json(&serde_json::json!({
            "seed": report.seed,
            "digests": report.digests,
            "data_dir": opts.keep.then(|| report.base_dir.clone()),
        }));
        return Ok(());
    }
    println!();
    println!("final state on every node:");
    for (name, digest) in &report.digests {
        println!("  {name:<6} state digest {}", &digest[..16]);
    }
    let same = report.digests.windows(2).all(|w| w[0].1 == w[1].1);
    println!(
        "  {} nodes {}",
        report.digests.len(),
        if same { "agree" } else { "DISAGREE" }
    );
    show(&report.seed);
    if args.keep {
        println!("node data kept in {}", report.base_dir.display());
    }
    if !same {
        return Err(Error::new(
            ErrorKind::Internal,
            "demo nodes did not converge",
        ));
    }
    Ok(())
}

/// `crabnet demo --serve`: runs the lifecycle, then keeps the network up and serves the
/// first node's dashboard until Ctrl-C.
async fn serve_demo(args: &DemoArgs, opts: &DemoOptions, json: bool) -> Result<(), Error> {
    let net = demo::DemoNetwork::start(opts).await?;
    let served = serve_demo_network(&net, args, opts, json).await;
    let stopped = net.stop().await;
    if !opts.keep {
        let _ = std::fs::remove_dir_all(&net.base_dir);
    }
    served?;
    stopped
}

async fn serve_demo_network(
    net: &demo::DemoNetwork,
    args: &DemoArgs,
    opts: &DemoOptions,
    json: bool,
) -> Result<(), Error> {
    let mut say = |line: String| {
        if !json {
            println!("{line}");
        }
    };
    let seed = demo::run_lifecycle(net, opts, &mut say).await?;
    let (name, node) = &net.nodes[0];
    let config = WebConfig {
        bind: args.http.unwrap_or(WebConfig::default().bind),
        ..WebConfig::default()
    };
    let web = node.serve_web(config).await?;
    let data_dir = net.base_dir.join(name);
    let mut interrupts = Interrupts::install()?;
    if json {
        print_json(&serde_json::json!({
            "seed": seed,
            "http": web.local_addr().to_string(),
            "node": name,
            "data_dir": data_dir,
        }));
    } else {
        println!();
        println!("seed {} is {} on every node", seed.seed.id, seed.status);
        println!("dashboard {} (node {name}; Ctrl-C to stop)", web.url());
        println!(
            "publish more: crabnet --data-dir {} seed publish --command 'echo hi'",
            data_dir.display()
        );
    }
    // Keep stdout flowing for scripts that read it through a pipe.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    interrupts.next().await;
    web.shutdown().await
}
