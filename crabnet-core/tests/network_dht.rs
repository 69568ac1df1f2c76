//! Multi-process end-to-end network tests over the libp2p backend (`--transport dht`, issue 4).
//!
//! The same harness as `tests/network.rs` (the UDP backend): every node is a real
//! `crabnet listen --transport dht` process on 127.0.0.1 with its own data directory, and the
//! lifecycle is driven by separate CLI processes on those directories while the listeners run
//! (they write to the outbox, the listener publishes on gossipsub). Every CLI call is bounded
//! by a timeout, every wait by a deadline (and by a budget for the whole test), and every
//! listener is owned by a guard that SIGKILLs it on drop, so a failing test never leaves
//! processes behind.
//!
//! A dht node listens on TCP *and* QUIC (UDP) on its `--bind` port, so each node's port is
//! reserved with both a TCP listener and a UDP socket until its listener starts. Nodes dial
//! each other only through `--peer IP:PORT` (the TCP address, no peer id); everything else
//! (connections between nodes that did not dial each other) is up to Kademlia and identify.
//!
//! Each data directory gets a `config.toml` with a 1 s sync interval, a 50 ms tick and a 2 s
//! hello interval: gossip is best effort until the mesh forms, so the first hellos after a
//! connection are the periodic ones, and sync repairs any gap within a second or two.
//!
//! Tests:
//! - `dht_star_of_four_full_lifecycle_converges`: nodes 1..3 dial only node 0; Kademlia
//!   connects the leaves, the lifecycle (3 bidders) settles, all digests are equal.
//! - `dht_late_joiner_dialing_one_node_converges_by_sync`: a fourth node that dials only one
//!   node catches up through request-response sync.
//! - `dht_sigkilled_bidder_restarts_and_keeps_its_bids`: SIGKILL of a bidder mid-lifecycle,
//!   a bid acknowledged while it is down, a lifecycle it misses, restart on the same
//!   directory and port.
//! - `dht_udp_fallback_carries_traffic_to_a_udp_only_node`: a dht node without any reachable
//!   libp2p peer says it falls back to UDP, and really exchanges a lifecycle with a UDP-only
//!   node; once a libp2p peer connects it says the fallback is idle.
//! - `dht_falls_back_to_udp_when_libp2p_cannot_start`: the other fallback case (the TCP port
//!   is taken).
//! - `dht_ipv6_peer_socket_address_is_dialed`: `--peer [::1]:PORT`.
//! - `dht_invalid_gossip_is_rejected_and_not_forwarded` and
//!   `dht_gossip_peer_sending_invalid_messages_is_penalised`: a bare libp2p peer (not a
//!   Crabnet node) publishes junk on the Crabnet topic.
//!
//! Three of these pin bugs in the code they test (see each test's comment); they fail until
//! those are fixed. `CRABNET_E2E_BIN=/path/to/crabnet` runs the tests against another build.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_crabnet");
/// Longest a short-lived CLI command may take before it counts as hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest we wait for one replicated change.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a whole test may take; every wait also stops here.
const TEST_BUDGET: Duration = Duration::from_secs(80);
const POLL: Duration = Duration::from_millis(100);

// ------------------------------------------------------------------------------------------
// Harness
// ------------------------------------------------------------------------------------------

/// The outcome of one CLI invocation.
#[derive(Debug)]
struct Out {
    args: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Out {
    #[track_caller]
    fn ok(self) -> Self {
        assert!(
            self.status.success(),
            "expected success: {}",
            self.describe()
        );
        self
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", self.describe()))
    }

    #[track_caller]
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("invalid JSON line ({e}) {l}: {}", self.describe()))
            })
            .collect()
    }

    fn describe(&self) -> String {
        format!(
            "`crabnet {}` -> {}\n--- stdout\n{}\n--- stderr\n{}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}

/// Runs a prepared command with a timeout; panics (after killing it) if it does not finish.
fn run_bounded(mut cmd: Command, args: Vec<String>) -> Out {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn crabnet");
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait().expect("wait for crabnet") {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = out_reader.join().unwrap_or_default();
                let stderr = err_reader.join().unwrap_or_default();
                panic!(
                    "`crabnet {}` did not exit within {COMMAND_TIMEOUT:?} (killed)\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
                    args.join(" ")
                );
            }
            None => thread::sleep(Duration::from_millis(5)),
        }
    };
    Out {
        args,
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

/// Ports handed out in this test binary, so parallel tests never share one (a port released
/// by a killed listener must not be handed to another test while the node is down).
static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port held for TCP and UDP at once (a dht node binds both on its port).
struct Reservation {
    addr: std::net::SocketAddr,
    udp: Option<UdpSocket>,
    tcp: Option<TcpListener>,
}

impl Reservation {
    fn addr(&self) -> String {
        self.addr.to_string()
    }
}

/// Reserves a port on 127.0.0.1 whose TCP and UDP are both free, never one this binary
/// handed out before.
fn reserve_port() -> Reservation {
    reserve_port_on(std::net::Ipv4Addr::LOCALHOST.into())
}

/// [`reserve_port`] on `ip`.
fn reserve_port_on(ip: std::net::IpAddr) -> Reservation {
    loop {
        let udp = UdpSocket::bind((ip, 0)).expect("bind an ephemeral UDP port");
        let addr = udp.local_addr().unwrap();
        // The same number may be taken for TCP: try another one then.
        let Ok(tcp) = TcpListener::bind(addr) else {
            continue;
        };
        let mut ports = PORTS.lock().unwrap_or_else(|p| p.into_inner());
        if ports.get_or_insert_with(HashSet::new).insert(addr.port()) {
            return Reservation {
                addr,
                udp: Some(udp),
                tcp: Some(tcp),
            };
        }
    }
}

struct Listener {
    name: String,
    child: Child,
    out_path: PathBuf,
    err_path: PathBuf,
}

/// Owns the `crabnet listen` processes and SIGKILLs them when dropped (also on panic).
#[derive(Default)]
struct Listeners {
    procs: Vec<Listener>,
}

impl Listeners {
    fn logs(&self) -> String {
        let mut s = String::new();
        for p in &self.procs {
            let out = std::fs::read_to_string(&p.out_path).unwrap_or_default();
            let err = std::fs::read_to_string(&p.err_path).unwrap_or_default();
            let tail: Vec<&str> = out.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            s += &format!(
                "--- listener {} stdout (last 40 lines)\n{}\n--- listener {} stderr\n{}\n",
                p.name,
                tail.join("\n"),
                p.name,
                err
            );
        }
        s
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// How a node's listener runs.
#[derive(Clone)]
enum Mode {
    /// `--transport dht --peer <TCP address of each>` plus extra raw arguments.
    Dht {
        peers: Vec<usize>,
        extra: Vec<String>,
    },
    /// `--transport udp --peer <address>` (raw IP:PORT addresses).
    Udp { peers: Vec<String> },
}

/// One node of a test network.
struct NodeSpec {
    name: String,
    dir: PathBuf,
    addr: String,
    id: String,
    /// Holds the node's port (TCP and UDP) until its listener starts.
    reservation: Option<Reservation>,
    /// Index into `Listeners::procs` of the running listener.
    running: Option<usize>,
    mode: Option<Mode>,
    generation: u32,
}

/// A sandbox (temp dir with fake HOME/XDG/TMPDIR) holding `n` initialized nodes with
/// reserved ports, plus the guard over their listeners.
struct Net {
    // Field order: the listeners die before the directory is removed.
    procs: Listeners,
    nodes: Vec<NodeSpec>,
    root: TempDir,
    deadline: Instant,
}

impl Net {
    fn new(n: usize) -> Net {
        let root = tempfile::Builder::new()
            .prefix("crabnet-dht-test-")
            .tempdir()
            .expect("create temp dir");
        for sub in ["home", "xdg", "tmp"] {
            std::fs::create_dir_all(root.path().join(sub)).unwrap();
        }
        let mut net = Net {
            procs: Listeners::default(),
            nodes: Vec::new(),
            root,
            deadline: Instant::now() + TEST_BUDGET,
        };
        for i in 0..n {
            let name = format!("n{i}");
            let dir = net.root.path().join(&name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("config.toml"),
                format!(
                    "name = \"{name}\"\n\n[network]\nsync_interval_secs = 1\ntick_ms = 50\nhello_interval_secs = 2\n"
                ),
            )
            .unwrap();
            let reservation = reserve_port();
            let addr = reservation.addr();
            net.nodes.push(NodeSpec {
                name,
                dir,
                addr,
                id: String::new(),
                reservation: Some(reservation),
                running: None,
                mode: None,
                generation: 0,
            });
            let v = net.run(i, &["--json", "init"]).ok().json();
            let id = v["node_id"]
                .as_str()
                .expect("init prints node_id")
                .to_owned();
            assert!(is_hex(&id, 64), "{id}");
            net.nodes[i].id = id;
        }
        net
    }

    fn id(&self, i: usize) -> &str {
        &self.nodes[i].id
    }

    fn command(&self) -> Command {
        // `CRABNET_E2E_BIN` runs these tests against another build of the CLI (a release build,
        // a candidate fix built in another target directory).
        let bin = std::env::var_os("CRABNET_E2E_BIN").unwrap_or_else(|| BIN.into());
        let mut cmd = Command::new(bin);
        let root = self.root.path();
        cmd.env_remove("CRABNET_DATA_DIR")
            .env_remove("CRABNET_CONFIG")
            .env_remove("CRABNET_LOG")
            .env("HOME", root.join("home"))
            .env("XDG_DATA_HOME", root.join("xdg"))
            .env("TMPDIR", root.join("tmp"))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `crabnet --data-dir <node i> ARGS...` (bounded).
    fn run(&self, i: usize, args: &[&str]) -> Out {
        self.check_budget("running a command");
        let dir = &self.nodes[i].dir;
        let mut cmd = self.command();
        cmd.arg("--data-dir").arg(dir).args(args);
        let mut shown = vec![format!("[{}]", self.nodes[i].name)];
        shown.extend(args.iter().map(|s| s.to_string()));
        run_bounded(cmd, shown)
    }

    #[track_caller]
    fn check_budget(&self, what: &str) {
        assert!(
            Instant::now() < self.deadline,
            "test exceeded its budget of {TEST_BUDGET:?} while {what}\n{}",
            self.procs.logs()
        );
    }

    /// Starts node `i`'s dht listener dialing every node in `peers` and waits for its banner.
    fn start(&mut self, i: usize, peers: &[usize]) {
        self.start_mode(
            i,
            Mode::Dht {
                peers: peers.to_vec(),
                extra: Vec::new(),
            },
        );
    }

    /// Starts node `i`'s listener in `mode`, waits for its banner and checks that it names
    /// the transport and the bound address. Releases the port reservation first.
    fn start_mode(&mut self, i: usize, mode: Mode) {
        let transport = match mode {
            Mode::Dht { .. } => "dht",
            Mode::Udp { .. } => "udp",
        };
        let line = self.spawn_listener(i, mode);
        let want = format!("listening on {transport} {}", self.nodes[i].addr);
        assert!(line.contains(&want), "banner {line:?} lacks {want:?}");
    }

    /// Starts node `i`'s listener in `mode` and returns its banner (`node ID listening on
    /// ...`) once printed.
    fn spawn_listener(&mut self, i: usize, mode: Mode) -> String {
        assert!(self.nodes[i].running.is_none(), "node {i} already runs");
        drop(self.nodes[i].reservation.take());
        self.nodes[i].mode = Some(mode.clone());
        self.nodes[i].generation += 1;
        let node = &self.nodes[i];
        let label = format!("{}#{}", node.name, node.generation);
        let out_path = self.root.path().join(format!("{label}.stdout"));
        let err_path = self.root.path().join(format!("{label}.stderr"));
        let mut cmd = self.command();
        cmd.arg("--data-dir").arg(&node.dir).arg("listen");
        match &mode {
            Mode::Dht { peers, extra } => {
                cmd.args(["--transport", "dht", "--bind", &node.addr]);
                for &p in peers {
                    cmd.args(["--peer", &self.nodes[p].addr]);
                }
                cmd.args(extra);
            }
            Mode::Udp { peers } => {
                cmd.args(["--transport", "udp", "--bind", &node.addr]);
                for p in peers {
                    cmd.args(["--peer", p]);
                }
            }
        }
        cmd.stdout(File::create(&out_path).unwrap())
            .stderr(File::create(&err_path).unwrap());
        let child = cmd.spawn().expect("spawn crabnet listen");
        self.procs.procs.push(Listener {
            name: label,
            child,
            out_path,
            err_path,
        });
        let idx = self.procs.procs.len() - 1;
        self.nodes[i].running = Some(idx);
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let out = std::fs::read_to_string(&self.procs.procs[idx].out_path).unwrap_or_default();
            if let Some(line) = out.lines().find(|l| l.contains(" listening on ")) {
                let want = format!("node {} listening on ", self.nodes[i].id);
                assert!(line.starts_with(&want), "banner {line:?} lacks {want:?}");
                return line.to_owned();
            }
            if let Some(status) = self.procs.procs[idx].child.try_wait().unwrap() {
                panic!(
                    "listener {i} exited early with {status}\n{}",
                    self.procs.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "listener {i} did not report that it listens\n{}",
                self.procs.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs node `i`'s listener and checks that it died of the signal.
    fn kill(&mut self, i: usize) {
        let idx = self.nodes[i].running.take().expect("node runs");
        let child = &mut self.procs.procs[idx].child;
        assert!(
            child.try_wait().unwrap().is_none(),
            "listener {i} died before the kill\n{}",
            self.procs.logs()
        );
        child.kill().expect("SIGKILL the listener");
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    }

    /// Restarts node `i`'s listener on the same data directory, port and peers.
    fn restart(&mut self, i: usize) {
        let mode = self.nodes[i].mode.clone().expect("node ran before");
        self.start_mode(i, mode);
    }

    #[track_caller]
    fn assert_alive(&mut self, nodes: &[usize]) {
        for &i in nodes {
            let idx = self.nodes[i].running.expect("node runs");
            let status = self.procs.procs[idx].child.try_wait().unwrap();
            assert!(
                status.is_none(),
                "listener {i} died: {status:?}\n{}",
                self.procs.logs()
            );
        }
    }

    /// Polls `f` until it returns `Ok`, failing after `WAIT_TIMEOUT` with `what` and the
    /// last observation.
    #[track_caller]
    fn wait<T>(&self, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
        let deadline = (Instant::now() + WAIT_TIMEOUT).min(self.deadline);
        loop {
            let last = match f() {
                Ok(v) => return v,
                Err(last) => last,
            };
            if Instant::now() >= deadline {
                panic!(
                    "timed out waiting until {what}\nlast seen:\n{last}\n{}",
                    self.procs.logs()
                );
            }
            thread::sleep(POLL);
        }
    }

    fn status(&self, i: usize) -> Value {
        self.run(i, &["--json", "status"]).ok().json()
    }

    fn counters(&self, i: usize) -> BTreeMap<String, u64> {
        let v = self.status(i);
        v["counters"]
            .as_object()
            .expect("counters")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().expect("counter is a number")))
            .collect()
    }

    fn show(&self, i: usize, seed: &str) -> Value {
        self.run(i, &["--json", "seed", "show", seed]).ok().json()
    }

    fn events(&self, i: usize) -> Vec<Value> {
        self.run(i, &["--json", "events", "--limit", "100000"])
            .ok()
            .json_lines()
    }

    /// The `detail`s of node `i`'s `transport_status` events from `transport`.
    fn transport_status(&self, i: usize, transport: &str) -> Vec<String> {
        self.events(i)
            .iter()
            .filter(|e| e["type"] == "transport_status" && e["transport"] == transport)
            .map(|e| e["detail"].as_str().expect("detail").to_owned())
            .collect()
    }

    /// Node `i`'s own libp2p peer id (from its `libp2p started as ...` event).
    fn peer_id(&self, i: usize) -> String {
        self.wait(&format!("node {i} reports its libp2p peer id"), || {
            let details = self.transport_status(i, "dht");
            details
                .iter()
                .rev()
                .find_map(|d| d.strip_prefix("libp2p started as "))
                .map(str::to_owned)
                .ok_or_else(|| format!("{details:#?}"))
        })
    }

    /// The libp2p peers node `i` has reported a connection to (ever, over all its runs).
    fn libp2p_connected(&self, i: usize) -> BTreeSet<String> {
        self.transport_status(i, "dht")
            .iter()
            .filter_map(|d| d.strip_prefix("connected to libp2p peer "))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until node `i` knows every node in `peers` (their hellos were verified).
    #[track_caller]
    fn wait_peers(&self, i: usize, peers: &[usize]) {
        let want: Vec<String> = peers.iter().map(|&p| self.nodes[p].id.clone()).collect();
        self.wait(&format!("node {i} knows peers {peers:?}"), || {
            let v = self.run(i, &["--json", "peers"]).ok().json();
            let known: Vec<&str> = v
                .as_array()
                .expect("peers is a list")
                .iter()
                .filter_map(|p| p["node_id"].as_str())
                .collect();
            if want.iter().all(|w| known.contains(&w.as_str())) {
                Ok(())
            } else {
                Err(format!("{v:#}"))
            }
        })
    }

    #[track_caller]
    fn wait_mesh(&self, nodes: &[usize]) {
        for &i in nodes {
            let others: Vec<usize> = nodes.iter().copied().filter(|&p| p != i).collect();
            self.wait_peers(i, &others);
        }
    }

    /// Waits until `seed show` on node `i` satisfies `pred`; returns the view.
    #[track_caller]
    fn wait_seed(&self, i: usize, seed: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait(&format!("node {i} {what} (seed {seed})"), || {
            let out = self.run(i, &["--json", "seed", "show", seed]);
            if !out.status.success() {
                return Err(out.describe());
            }
            let v = out.json();
            if pred(&v) {
                Ok(v)
            } else {
                Err(format!("{v:#}"))
            }
        })
    }

    /// Waits until every node of `nodes` reports the same `state_digest` and an empty outbox;
    /// returns the digest.
    #[track_caller]
    fn wait_converged(&self, nodes: &[usize], what: &str) -> String {
        self.wait(&format!("nodes {nodes:?} converge ({what})"), || {
            let st: Vec<Value> = nodes.iter().map(|&i| self.status(i)).collect();
            let digests: Vec<&str> = st
                .iter()
                .map(|s| s["state_digest"].as_str().expect("state_digest"))
                .collect();
            let pending: Vec<u64> = st
                .iter()
                .map(|s| s["outbox_pending"].as_u64().expect("outbox_pending"))
                .collect();
            if digests.windows(2).all(|w| w[0] == w[1]) && pending.iter().all(|&p| p == 0) {
                Ok(digests[0].to_owned())
            } else {
                let summary: Vec<String> = nodes
                    .iter()
                    .zip(&st)
                    .map(|(i, s)| {
                        format!(
                            "node {i}: digest {} outbox {} seeds {}",
                            s["state_digest"], s["outbox_pending"], s["seeds_by_status"]
                        )
                    })
                    .collect();
                Err(summary.join("\n"))
            }
        })
    }

    /// Publishes a seed on node `i` (bidding closes after `max_bids` bids or 120 s); returns
    /// its id.
    #[track_caller]
    fn publish(&self, i: usize, command: &str, max_bids: u32) -> String {
        let max_bids = max_bids.to_string();
        let out = self
            .run(
                i,
                &[
                    "seed",
                    "publish",
                    "--command",
                    command,
                    "--max-bids",
                    &max_bids,
                    "--bid-window",
                    "120",
                    "--min-price",
                    "1",
                    "--max-price",
                    "100",
                ],
            )
            .ok();
        let id = out.stdout.trim().to_owned();
        assert!(
            is_hex(&id, 32),
            "publish prints the seed id: {}",
            out.describe()
        );
        id
    }

    /// Waits until node `i` knows the seed, then bids `price` on it.
    #[track_caller]
    fn bid(&self, i: usize, seed: &str, price: u64) {
        self.wait_seed(i, seed, "knows the seed", |_| true);
        let price = price.to_string();
        self.run(i, &["seed", "bid", seed, "--price", &price]).ok();
    }

    /// Waits until node `i` sees the award of `seed` to `winner` at `price`.
    #[track_caller]
    fn wait_award(&self, i: usize, seed: &str, winner: usize, price: u64) -> Value {
        let w = self.nodes[winner].id.clone();
        let v = self.wait_seed(i, seed, "shows the award", |v| !v["award"].is_null());
        assert_eq!(
            v["award"]["winner_node"],
            w.as_str(),
            "lowest price wins: {v:#}"
        );
        assert_eq!(v["award"]["price"], price, "{v:#}");
        v
    }

    /// Claims and runs `seed` on the winner; returns the run's view.
    #[track_caller]
    fn claim_and_run(&self, winner: usize, seed: &str) -> Value {
        self.run(winner, &["seed", "claim", seed]).ok();
        let v = self
            .run(winner, &["--json", "seed", "run", seed])
            .ok()
            .json();
        assert_eq!(v["status"], "completed", "{v:#}");
        assert_eq!(v["result"]["success"], true, "{v:#}");
        v
    }

    /// Waits until the publisher sees the result, settles, and every node in `nodes` sees
    /// the settlement.
    #[track_caller]
    fn complete_and_settle(&self, publisher: usize, seed: &str, nodes: &[usize]) {
        self.wait_seed(publisher, seed, "shows the result", |v| {
            v["status"] == "completed"
        });
        let v = self
            .run(publisher, &["--json", "seed", "settle", seed])
            .ok()
            .json();
        assert_eq!(v["status"], "settled", "{v:#}");
        for &i in nodes {
            self.wait_seed(i, seed, "shows the settlement", |v| {
                v["status"] == "settled"
            });
        }
    }

    /// Asserts that `seed claim` on node `i` fails with a state error.
    #[track_caller]
    fn expect_claim_refused(&self, i: usize, seed: &str, needle: &str) {
        let out = self.run(i, &["--json", "seed", "claim", seed]);
        assert_eq!(out.status.code(), Some(1), "{}", out.describe());
        let v = out.json();
        assert_eq!(v["error"]["kind"], "state", "{}", out.describe());
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{}", out.describe());
    }

    /// `seed show` of `seed` is identical on every node of `nodes`.
    #[track_caller]
    fn assert_same_view(&self, nodes: &[usize], seed: &str) -> Value {
        let first = self.show(nodes[0], seed);
        for &i in &nodes[1..] {
            let v = self.show(i, seed);
            assert_eq!(
                v, first,
                "node {i} and node {} disagree on seed {seed}",
                nodes[0]
            );
        }
        first
    }

    /// How many `task_started` events node `i` recorded for `seed`.
    fn runs_of(&self, i: usize, seed: &str) -> usize {
        self.events(i)
            .iter()
            .filter(|e| e["type"] == "task_started" && e["seed_id"] == seed)
            .count()
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn port_of(addr: &str) -> u16 {
    addr.parse::<std::net::SocketAddr>()
        .expect("IP:PORT")
        .port()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn bid_prices(v: &Value) -> BTreeMap<String, u64> {
    v["bids"]
        .as_array()
        .expect("bids")
        .iter()
        .map(|b| {
            (
                b["bidder"].as_str().unwrap().to_owned(),
                b["price"].as_u64().unwrap(),
            )
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// 1. A star of four, full lifecycle
// ------------------------------------------------------------------------------------------

/// Nodes 1, 2 and 3 dial only node 0 (a star; 1 and 2 over TCP as `IP:PORT`, 3 over QUIC as
/// a full multiaddress). Hellos and envelopes between the leaves go
/// through gossipsub, relayed by node 0 or over the direct connections Kademlia makes (the
/// test checks that every leaf ends up connected to every other node although it dialed only
/// node 0). Publish on node 1 (a leaf, so its seed must be relayed to the other leaves), bids
/// from nodes 0, 2 and 3, the publisher awards the lowest, the losers cannot claim, the
/// winner (another leaf) claims and runs, the publisher settles, and all four end with the
/// same state digest.
#[test]
fn dht_star_of_four_full_lifecycle_converges() {
    let mut net = Net::new(4);
    let all = [0, 1, 2, 3];
    net.start(0, &[]);
    net.start(1, &[0]);
    net.start(2, &[0]);
    // Node 3 dials node 0 over QUIC, with a full multiaddress.
    let quic = format!("/ip4/127.0.0.1/udp/{}/quic-v1", port_of(&net.nodes[0].addr));
    net.start_mode(
        3,
        Mode::Dht {
            peers: Vec::new(),
            extra: vec!["--peer".into(), quic],
        },
    );
    net.wait_mesh(&all);

    let seed = net.publish(1, "echo dht-star", 3);
    for (node, price) in [(0, 30), (3, 10), (2, 20)] {
        net.bid(node, &seed, price);
    }
    let award = net.wait_award(1, &seed, 3, 10);
    assert_eq!(
        award["award"]["considered"].as_array().unwrap().len(),
        3,
        "{award:#}"
    );
    for i in [0, 2, 3] {
        net.wait_award(i, &seed, 3, 10);
    }

    // Only the winner may claim: the losing bidders and the publisher get a state error.
    for loser in [0, 2, 1] {
        net.expect_claim_refused(loser, &seed, "not the winning bidder");
    }
    let ran = net.claim_and_run(3, &seed);
    assert_eq!(ran["result"]["output_sha256"], sha256_hex(b"dht-star\n"));
    net.complete_and_settle(1, &seed, &all);

    let digest = net.wait_converged(&all, "after settlement");
    assert!(is_hex(&digest, 64), "{digest}");
    let v = net.assert_same_view(&all, &seed);
    assert_eq!(v["status"], "settled");
    assert_eq!(v["settlement"]["amount"], 10);
    assert_eq!(v["settlement"]["outcome"], "accepted");
    assert_eq!(v["claim"]["claimer"], net.id(3));
    assert_eq!(v["result"]["runner"], net.id(3));
    let prices = bid_prices(&v);
    assert_eq!(prices.len(), 3, "{v:#}");
    for (node, price) in [(0, 30), (3, 10), (2, 20)] {
        assert_eq!(prices.get(net.id(node)), Some(&price), "{v:#}");
    }
    for i in all {
        let st = net.status(i);
        assert_eq!(st["seeds_by_status"]["settled"], 1, "node {i}: {st:#}");
        assert_eq!(st["peers"], 3, "node {i}: {st:#}");
        assert_eq!(
            net.runs_of(i, &seed),
            usize::from(i == 3),
            "node {i} task_started"
        );
        // Nothing valid was rejected on the way (gossip validation accepted every relay).
        // Duplicates are normal (relays, sync), and so is `unknown_sender` at startup: a sync
        // digest can arrive before its sender's hello.
        let c = net.counters(i);
        for (k, n) in &c {
            if k.starts_with("rejected.")
                && k != "rejected.duplicate"
                && k != "rejected.unknown_sender"
            {
                assert_eq!(*n, 0, "node {i} counted {k}: {c:?}");
            }
        }
    }

    // Kademlia + identify: every leaf connected to every other node, though it dialed only
    // node 0 (peer ids derive from the node keys, so they are distinct per node).
    let ids: Vec<String> = all.iter().map(|&i| net.peer_id(i)).collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 4, "{ids:?}");
    for i in all {
        let want: BTreeSet<String> = all
            .iter()
            .filter(|&&p| p != i)
            .map(|&p| ids[p].clone())
            .collect();
        net.wait(
            &format!("node {i} is connected to every other node over libp2p"),
            || {
                let got = net.libp2p_connected(i);
                if want.is_subset(&got) {
                    Ok(())
                } else {
                    Err(format!("want {want:?}\ngot {got:?}"))
                }
            },
        );
    }
    net.assert_alive(&all);
}

// ------------------------------------------------------------------------------------------
// 2. Late joiner
// ------------------------------------------------------------------------------------------

/// Three nodes (1 and 2 dial 0) run a lifecycle to settlement and leave one more seed open
/// with a bid; then a fourth node starts that dials only node 2, and converges by sync over
/// request-response: same digest, the result without re-running, and it can take part.
#[test]
fn dht_late_joiner_dialing_one_node_converges_by_sync() {
    let mut net = Net::new(4);
    let all = [0, 1, 2, 3];
    net.start(0, &[]);
    net.start(1, &[0]);
    net.start(2, &[0]);
    net.wait_mesh(&[0, 1, 2]);

    let s1 = net.publish(0, "echo dht-late-joiner", 2);
    net.bid(1, &s1, 15);
    net.bid(2, &s1, 25);
    net.wait_award(0, &s1, 1, 15);
    net.wait_award(1, &s1, 1, 15);
    net.expect_claim_refused(2, &s1, "not the winning bidder");
    net.claim_and_run(1, &s1);
    net.complete_and_settle(0, &s1, &[0, 1, 2]);

    let s2 = net.publish(1, "echo dht-still-open", 3);
    net.bid(2, &s2, 7);
    net.wait_seed(1, &s2, "has the bid", |v| {
        v["bids"].as_array().unwrap().len() == 1
    });
    let before = net.wait_converged(&[0, 1, 2], "before the late joiner starts");

    net.start(3, &[2]);
    net.wait_seed(3, &s1, "learns the settled seed", |v| {
        v["status"] == "settled"
    });
    net.wait_peers(3, &[0, 1, 2]);
    let after = net.wait_converged(&all, "after the late joiner synced");
    assert_eq!(
        after, before,
        "nobody's state changed while node 3 caught up"
    );

    let v1 = net.assert_same_view(&all, &s1);
    assert_eq!(v1["result"]["runner"], net.id(1));
    assert_eq!(
        v1["result"]["output_sha256"],
        sha256_hex(b"dht-late-joiner\n")
    );
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
    // Gossip does not replay old messages: what node 3 holds came in sync batches, and it
    // asked with digests.
    let c3 = net.counters(3);
    assert!(
        c3.get("sync.batches_received").copied().unwrap_or(0) > 0,
        "node 3 caught up through sync batches: {c3:?}"
    );
    assert!(
        net.counters(2)
            .get("sync.digests_received")
            .copied()
            .unwrap_or(0)
            > 0,
        "node 2 answered digests"
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
// 3. SIGKILL mid-lifecycle, restart, convergence
// ------------------------------------------------------------------------------------------

/// Nodes 1..3 dial node 0. Node 1 bids, then its listener is SIGKILLed before the award.
/// While it is down:
/// - the others finish that lifecycle (node 2 wins, claims, runs; node 0 settles);
/// - node 1's operator bids on another seed through the CLI (acknowledged, but unsent: the
///   listener is down);
/// - the others run a whole lifecycle node 1 never hears of.
///
/// Then node 1's listener restarts on the same data directory and port: its pending bid goes
/// out (the outbox is drained at once, possibly before the gossip mesh has re-formed; sync
/// carries it then), it learns everything it missed, keeps its acknowledged bids, and all
/// four nodes end with the same digest.
#[test]
fn dht_sigkilled_bidder_restarts_and_keeps_its_bids() {
    let mut net = Net::new(4);
    let all = [0, 1, 2, 3];
    let others = [0, 2, 3];
    net.start(0, &[]);
    for i in [1, 2, 3] {
        net.start(i, &[0]);
    }
    net.wait_mesh(&all);

    let s1 = net.publish(0, "echo dht-crash-s1", 3);
    let s2 = net.publish(0, "echo dht-crash-s2", 2);
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

    // A whole lifecycle node 1 misses (published by a leaf).
    let s3 = net.publish(3, "echo dht-crash-s3", 1);
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

    // Restart: same data directory, same port (TCP and QUIC), same peer.
    net.restart(1);
    // Its pending bid reaches the publisher; with two bids, node 0 awards s2 to node 3.
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
    assert_eq!(v1["result"]["output_sha256"], sha256_hex(b"dht-crash-s1\n"));
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
    assert_eq!(v3["result"]["output_sha256"], sha256_hex(b"dht-crash-s3\n"));
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
    assert_eq!(st["peers"], 3, "{st:#}");
    let c1 = net.counters(1);
    assert!(
        c1.get("sync.batches_received").copied().unwrap_or(0) > 0,
        "node 1 caught up through sync batches: {c1:?}"
    );
    net.assert_alive(&all);
}

// ------------------------------------------------------------------------------------------
// 4. UDP fallback
// ------------------------------------------------------------------------------------------

/// Node 0 runs `--transport dht` with `--udp-fallback P --udp-peer Q` and one `--peer` whose
/// TCP port is closed (no reachable libp2p peer). Node 1 is a plain UDP node on Q with P as its
/// peer. Node 0 records a `transport_status` event saying it sends over UDP, and the
/// fallback really carries traffic both ways: hellos, node 0's seed, node 1's bid, the award,
/// the run's result and the settlement, with identical digests at the end. Then a libp2p
/// peer (node 2) connects to node 0, which records that the UDP fallback is idle.
#[test]
fn dht_udp_fallback_carries_traffic_to_a_udp_only_node() {
    let mut net = Net::new(3);
    let (d, u, late) = (0, 1, 2);
    // P: node 0's fallback UDP port.
    let fallback = reserve_port();
    let fallback_addr = fallback.addr();
    // A libp2p peer nobody listens on: TCP closed (refused), the UDP side kept so that the
    // number is not reused.
    let mut dead = reserve_port();
    drop(dead.tcp.take());
    let dead_addr = dead.addr();
    let q = net.nodes[u].addr.clone();

    drop(fallback);
    net.start_mode(
        d,
        Mode::Dht {
            peers: Vec::new(),
            extra: vec![
                "--peer".into(),
                dead_addr.clone(),
                "--udp-fallback".into(),
                fallback_addr.clone(),
                "--udp-peer".into(),
                q.clone(),
            ],
        },
    );
    net.start_mode(
        u,
        Mode::Udp {
            peers: vec![fallback_addr.clone()],
        },
    );

    // The event: node 0 has no libp2p peer and says that it sends over UDP.
    let details = net.wait("node 0 reports the UDP fallback", || {
        let details = net.transport_status(d, "dht");
        if details
            .iter()
            .any(|d| d.contains("UDP") && d.contains("no libp2p peers"))
        {
            Ok(details)
        } else {
            Err(format!("{details:#?}"))
        }
    });
    assert!(
        !details
            .iter()
            .any(|d| d.starts_with("connected to libp2p peer")),
        "node 0 had no reachable libp2p peer: {details:#?}"
    );

    // Hellos crossed over UDP both ways.
    net.wait_peers(u, &[d]);
    net.wait_peers(d, &[u]);
    let peers = net.run(u, &["--json", "peers"]).ok().json();
    let p0 = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node_id"] == net.id(d))
        .expect("node 0 in node 1's peers")
        .clone();
    assert!(
        p0.to_string().contains(&format!("udp:{fallback_addr}")),
        "node 0 announces its fallback address: {p0:#}"
    );

    // Node 0's seed reaches the UDP-only node; node 1's bid reaches node 0 over the fallback.
    let seed = net.publish(d, "echo dht-fallback", 1);
    net.wait_seed(u, &seed, "receives the seed over the UDP fallback", |_| {
        true
    });
    net.bid(u, &seed, 9);
    net.wait_award(d, &seed, u, 9);
    net.wait_award(u, &seed, u, 9);
    net.claim_and_run(u, &seed);
    net.complete_and_settle(d, &seed, &[d, u]);
    net.wait_converged(&[d, u], "over the UDP fallback");
    let v = net.assert_same_view(&[d, u], &seed);
    assert_eq!(v["result"]["output_sha256"], sha256_hex(b"dht-fallback\n"));
    let st = net.status(d);
    assert_eq!(st["peers"], 1, "{st:#}");

    // A libp2p peer connects: node 0 says the fallback is idle.
    net.start(late, &[d]);
    net.wait("node 0 reports that the UDP fallback is idle", || {
        let details = net.transport_status(d, "dht");
        if details.iter().any(|d| d.contains("UDP fallback idle")) {
            Ok(())
        } else {
            Err(format!("{details:#?}"))
        }
    });
    net.wait_peers(late, &[d]);
    net.wait_seed(late, &seed, "syncs the settled seed over libp2p", |v| {
        v["status"] == "settled"
    });
    net.assert_alive(&[d, u, late]);
    drop(dead);
}

/// `--udp-fallback` also covers "libp2p cannot start": node 0's TCP port is held by another
/// socket, so libp2p cannot listen and the node runs on its UDP fallback instead. It says so
/// in a `transport_status` event that gives the reason, its banner names the address it really
/// listens on, and a UDP-only node exchanges a whole lifecycle with it.
///
/// Bugs this test pins (as of this writing):
/// - the banner says `listening on udp <--bind address>`, where nothing listens (libp2p did
///   not start, and the fallback socket is on the `--udp-fallback` address);
/// - the event's reason is empty (`cannot listen on /ip4/127.0.0.1/tcp/PORT: `): libp2p's
///   `TransportError::Other` displays as nothing, the cause is only in its `source()`.
#[test]
fn dht_falls_back_to_udp_when_libp2p_cannot_start() {
    let mut net = Net::new(2);
    let (d, u) = (0, 1);
    let fallback = reserve_port();
    let fallback_addr = fallback.addr();
    drop(fallback);
    // Another socket holds node 0's TCP port.
    let mut taken = net.nodes[d].reservation.take().expect("reserved");
    drop(taken.udp.take());
    let q = net.nodes[u].addr.clone();
    let banner = net.spawn_listener(
        d,
        Mode::Dht {
            peers: Vec::new(),
            extra: vec![
                "--udp-fallback".into(),
                fallback_addr.clone(),
                "--udp-peer".into(),
                q,
            ],
        },
    );
    net.start_mode(
        u,
        Mode::Udp {
            peers: vec![fallback_addr.clone()],
        },
    );
    let detail = net.wait("node 0 reports that libp2p could not start", || {
        let details = net.transport_status(d, "udp");
        details
            .iter()
            .find(|d| d.contains("libp2p could not start") && d.contains("UDP"))
            .cloned()
            .ok_or_else(|| format!("{:#?}", net.events(d)))
    });

    // The fallback carries a whole lifecycle.
    net.wait_peers(u, &[d]);
    net.wait_peers(d, &[u]);
    let seed = net.publish(d, "echo dht-no-libp2p", 1);
    net.bid(u, &seed, 4);
    net.wait_award(d, &seed, u, 4);
    net.wait_award(u, &seed, u, 4);
    net.claim_and_run(u, &seed);
    net.complete_and_settle(d, &seed, &[d, u]);
    net.wait_converged(&[d, u], "over the UDP fallback");
    net.assert_alive(&[d, u]);

    // Diagnostics.
    let want = format!("listening on udp {fallback_addr}");
    assert!(
        banner.contains(&want),
        "the banner names the address the node really listens on ({want:?}), not the --bind \
         address {} where nothing listens: {banner:?}",
        net.nodes[d].addr
    );
    assert!(
        detail.contains("in use"),
        "the event says why libp2p could not start (the address is in use): {detail:?}"
    );
    drop(taken);
}

/// `--peer IP:PORT` with an IPv6 address: the CLI documents `IP:PORT` as a peer's TCP address,
/// and `--bind [::1]:PORT` works. Node 1 dials node 0 at `[::1]:PORT`; they exchange hellos
/// and a seed.
///
/// Bug this test pins (as of this writing): `crabnet listen --transport dht --peer
/// '[::1]:PORT'` exits with `invalid multiaddress "/ip4/::1/tcp/PORT"` (src/bin/crabnet.rs
/// turns every socket address into `/ip4/...`).
#[test]
fn dht_ipv6_peer_socket_address_is_dialed() {
    let mut net = Net::new(2);
    for i in 0..2 {
        let r = reserve_port_on(std::net::Ipv6Addr::LOCALHOST.into());
        net.nodes[i].addr = r.addr();
        net.nodes[i].reservation = Some(r);
    }
    net.start(0, &[]);
    net.start(1, &[0]);
    net.wait_mesh(&[0, 1]);
    let seed = net.publish(0, "echo dht-ipv6", 1);
    net.wait_seed(1, &seed, "receives the seed over IPv6", |_| true);
    net.wait_converged(&[0, 1], "over IPv6");
    net.assert_alive(&[0, 1]);
}

// ------------------------------------------------------------------------------------------
// Gossipsub validation against a hostile libp2p peer
// ------------------------------------------------------------------------------------------

/// A bare libp2p peer (TCP, noise, yamux, gossipsub only) on the Crabnet topic, driven from a
/// test thread: it publishes whatever bytes the test gives it. Its runtime (and connection)
/// ends when it is dropped.
struct Rogue {
    peer_id: String,
    tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    state: std::sync::Arc<Mutex<RogueState>>,
    _rt: tokio::runtime::Runtime,
}

#[derive(Default, Debug)]
struct RogueState {
    /// A Crabnet node announced its subscription to the topic.
    subscribed: bool,
    published: usize,
    errors: Vec<String>,
}

impl Rogue {
    /// Dials the dht node listening on TCP `addr` (IP:PORT).
    fn connect(addr: &str, key_seed: u8) -> Rogue {
        use futures::StreamExt;
        use libp2p::{gossipsub, identity, noise, swarm::SwarmEvent, tcp, yamux};

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("rogue runtime");
        let key = identity::Keypair::ed25519_from_bytes([key_seed; 32]).expect("a key");
        let peer_id = key.public().to_peer_id().to_string();
        let target: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", port_of(addr))
            .parse()
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let state = std::sync::Arc::new(Mutex::new(RogueState::default()));
        let st = state.clone();
        rt.spawn(async move {
            let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
                .with_tokio()
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    noise::Config::new,
                    yamux::Config::default,
                )
                .expect("tcp")
                .with_behaviour(|key| {
                    let config = gossipsub::ConfigBuilder::default()
                        .heartbeat_interval(Duration::from_millis(500))
                        .build()
                        .expect("gossipsub config");
                    gossipsub::Behaviour::<gossipsub::IdentityTransform>::new(
                        gossipsub::MessageAuthenticity::Signed(key.clone()),
                        config,
                    )
                    .expect("gossipsub")
                })
                .expect("behaviour")
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
                .build();
            let topic = gossipsub::IdentTopic::new("crabnet/v1/envelopes");
            swarm.behaviour_mut().subscribe(&topic).expect("subscribe");
            swarm.dial(target).expect("dial");
            loop {
                tokio::select! {
                    Some(data) = rx.recv() => {
                        let res = swarm.behaviour_mut().publish(topic.clone(), data);
                        let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
                        match res {
                            Ok(_) => s.published += 1,
                            Err(e) => s.errors.push(e.to_string()),
                        }
                    }
                    event = swarm.select_next_some() => {
                        if let SwarmEvent::Behaviour(gossipsub::Event::Subscribed { .. }) = event {
                            st.lock().unwrap_or_else(|p| p.into_inner()).subscribed = true;
                        }
                    }
                }
            }
        });
        Rogue {
            peer_id,
            tx,
            state,
            _rt: rt,
        }
    }

    fn state<T>(&self, f: impl FnOnce(&RogueState) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn publish(&self, data: Vec<u8>) {
        self.tx.send(data).expect("rogue task runs");
    }
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

fn get(m: &BTreeMap<String, u64>, k: &str) -> u64 {
    m.get(k).copied().unwrap_or(0)
}

fn rejected_total(m: &BTreeMap<String, u64>) -> u64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("rejected."))
        .map(|(_, v)| v)
        .sum()
}

/// Connects a rogue to node `target` and waits until it may publish to it.
fn rogue_for(net: &Net, target: usize, key_seed: u8) -> Rogue {
    let rogue = Rogue::connect(&net.nodes[target].addr, key_seed);
    net.wait("the rogue peer sees node 0's topic subscription", || {
        rogue.state(|s| {
            if s.subscribed {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        })
    });
    rogue
}

/// A libp2p peer that is not a Crabnet node publishes junk on the Crabnet topic to node A,
/// whose gossip mesh also holds node B (which dialed A). Gossipsub validation is wired to the
/// trust boundary: A rejects every message (counted and recorded as `message_rejected`
/// naming the rogue peer), and does not forward any of them, so B never sees one. Both keep
/// working.
#[test]
fn dht_invalid_gossip_is_rejected_and_not_forwarded() {
    let mut net = Net::new(2);
    let (a, b) = (0, 1);
    net.start(a, &[]);
    net.start(b, &[a]);
    net.wait_mesh(&[a, b]);
    let rogue = rogue_for(&net, a, 0x51);
    let a_before = net.counters(a);
    let b_before = net.counters(b);

    let messages: Vec<Vec<u8>> = vec![
        junk(700, 1),
        b"GET / HTTP/1.1\r\nHost: crabnet\r\n\r\n".to_vec(),
        // The envelope magic, then nothing sensible.
        [b"CRB".as_slice(), &junk(200, 2)].concat(),
        junk(60_000, 3),
        junk(1, 4),
    ];
    let sent = messages.len() as u64;
    for m in messages {
        rogue.publish(m);
    }
    let a_after = net.wait("node A rejects every junk message", || {
        let c = net.counters(a);
        if get(&c, "rejected.malformed") - get(&a_before, "rejected.malformed") >= sent {
            Ok(c)
        } else {
            Err(format!(
                "before {a_before:?}\nnow {c:?}\nrogue {:?}",
                rogue.state(|s| format!("{s:?}"))
            ))
        }
    });
    assert_eq!(
        get(&a_after, "rejected.malformed") - get(&a_before, "rejected.malformed"),
        sent,
        "{a_after:?}"
    );
    let events = net.events(a);
    let naming_rogue = events
        .iter()
        .filter(|e| {
            e["type"] == "message_rejected"
                && e["reason"] == "malformed"
                && e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(&rogue.peer_id))
        })
        .count() as u64;
    assert_eq!(
        naming_rogue, sent,
        "rejections name the rogue peer {}",
        rogue.peer_id
    );

    // Several heartbeats (500 ms) later B still has seen none of it: A did not forward.
    thread::sleep(Duration::from_millis(1500));
    let b_after = net.counters(b);
    assert_eq!(
        rejected_total(&b_after),
        rejected_total(&b_before),
        "node A forwarded rejected messages to node B\nbefore {b_before:?}\nafter {b_after:?}"
    );

    // Both keep working.
    let seed = net.publish(b, "echo after-the-junk", 1);
    net.bid(a, &seed, 3);
    net.wait_award(b, &seed, a, 3);
    net.wait_converged(&[a, b], "after the junk");
    net.assert_alive(&[a, b]);
}

/// docs/PROTOCOL.md section 7: a gossip message that fails a check is "dropped with a
/// peer-score penalty" (issue 4: "invalid messages are rejected and not forwarded, peers
/// scored"). The observable effect of a score penalty in gossipsub is that a peer that keeps
/// sending invalid messages ends up below the graylist threshold and its messages are no
/// longer even handed to the application. A rogue sends 200 junk messages in four rounds
/// (a few heartbeats apart); the node must stop processing them well before the end.
///
/// Bug this test pins (as of this writing): src/network/dht.rs builds gossipsub with
/// `gossipsub::Behaviour::new(..)` and never calls `with_peer_score(..)`, so peer scoring is
/// disabled (`PeerScoreState::Disabled` in libp2p-gossipsub) and
/// `report_message_validation_result(.., Reject)` penalises nobody: the node validates (and
/// rejects) all 200.
#[test]
fn dht_gossip_peer_sending_invalid_messages_is_penalised() {
    let mut net = Net::new(1);
    let a = 0;
    net.start(a, &[]);
    let rogue = rogue_for(&net, a, 0x52);
    let before = get(&net.counters(a), "rejected.malformed");
    let (rounds, per_round) = (4u64, 50u64);
    for round in 0..rounds {
        for i in 0..per_round {
            rogue.publish(junk(300, round * per_round + i + 1));
        }
        thread::sleep(Duration::from_millis(700));
    }
    net.wait("the rogue published everything", || {
        rogue.state(|s| {
            if s.published as u64 + s.errors.len() as u64 == rounds * per_round {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        })
    });
    // Let the node catch up, then read a stable count.
    let mut last = u64::MAX;
    let handled = net.wait("node A's rejection count settles", || {
        let now = get(&net.counters(a), "rejected.malformed") - before;
        if now == last {
            Ok(now)
        } else {
            last = now;
            thread::sleep(Duration::from_millis(500));
            Err(format!("{now}"))
        }
    });
    assert!(handled > 0, "the node saw the rogue's messages at all");
    assert!(
        handled < rounds * per_round,
        "node A validated and rejected all {handled} invalid messages from {}: the peer was never \
         penalised (gossipsub peer scoring is off)",
        rogue.peer_id
    );
    net.assert_alive(&[a]);
}

/// Sixteen `crabnet listen --transport dht` processes on 127.0.0.1, all dialing node 0, form
/// one network: a seed published by the last node reaches every node. (More than ten nodes on
/// one address used to fall under gossipsub's IP-colocation penalty, on top of relays being
/// penalised for envelopes whose author's hello had not arrived yet.)
#[test]
fn dht_sixteen_processes_on_one_address_form_one_network() {
    const N: usize = 16;
    let mut net = Net::new(N);
    for node in &net.nodes {
        // The other tests' one-second sync and two-second hellos would cost this many nodes
        // more than two cores give (every node verifies every hello and answers every digest).
        std::fs::write(
            node.dir.join("config.toml"),
            format!(
                "name = \"{}\"\n\n[network]\nhello_interval_secs = 10\nsync_interval_secs = 10\n",
                node.name
            ),
        )
        .unwrap();
    }
    // Sixteen debug-build processes on two cores start slowly: a larger budget than the others.
    net.deadline = Instant::now() + Duration::from_secs(180);
    net.start(0, &[]);
    for i in 1..N {
        net.start(i, &[0]);
    }
    // The banner names what peers dial: the libp2p address with the peer id.
    let out = &net.procs.procs[net.nodes[0].running.unwrap()].out_path;
    let banner = std::fs::read_to_string(out).unwrap();
    let want = format!(
        "libp2p /ip4/127.0.0.1/tcp/{}/p2p/12D3",
        port_of(&net.nodes[0].addr)
    );
    assert!(banner.contains(&want), "{want:?} not in {banner}");
    let started = Instant::now();
    let seed = net.publish(N - 1, "echo sixteen", 1);
    for i in 0..N - 1 {
        net.wait_seed(i, &seed, "holds the seed", |v| v["status"] == "open");
    }
    eprintln!(
        "{N} processes: every node held the seed {:?} after it was published",
        started.elapsed()
    );
}
