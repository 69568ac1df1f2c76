//! Multi-process end-to-end network tests over the UDP backend (issue 4).
//!
//! Every node is a real `crabnet listen --transport udp` process on 127.0.0.1 with its own data
//! directory; the lifecycle is driven by separate CLI processes on those directories while the
//! listeners run (they write to the outbox, the listener sends). Every CLI call is bounded by
//! a timeout, every wait by a deadline (and by a budget for the whole test), and every
//! listener is owned by a guard that SIGKILLs it on drop, so a failing test never leaves
//! processes behind.
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

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::net::UdpSocket;
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

/// Binds a fresh UDP port on 127.0.0.1 and keeps the socket as a reservation.
fn reserve_port() -> UdpSocket {
    loop {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral UDP port");
        let port = s.local_addr().unwrap().port();
        let mut ports = PORTS.lock().unwrap_or_else(|p| p.into_inner());
        if ports.get_or_insert_with(HashSet::new).insert(port) {
            return s;
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

/// One node of a test network.
struct NodeSpec {
    name: String,
    dir: PathBuf,
    addr: String,
    id: String,
    /// Holds the node's port until its listener starts.
    reservation: Option<UdpSocket>,
    /// Index into `Listeners::procs` of the running listener.
    running: Option<usize>,
    peers: Vec<usize>,
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
            .prefix("crabnet-net-test-")
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
                    "name = \"{name}\"\n\n[network]\nsync_interval_secs = 1\ntick_ms = 50\nhello_interval_secs = 5\n"
                ),
            )
            .unwrap();
            let socket = reserve_port();
            let addr = socket.local_addr().unwrap().to_string();
            net.nodes.push(NodeSpec {
                name,
                dir,
                addr,
                id: String::new(),
                reservation: Some(socket),
                running: None,
                peers: Vec::new(),
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
        let mut cmd = Command::new(BIN);
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

    /// Starts node `i`'s listener with `--peer` for every node in `peers` and waits for its
    /// banner. Releases the port reservation first.
    fn start(&mut self, i: usize, peers: &[usize]) {
        self.start_with(i, peers, &[]);
    }

    /// Like [`Net::start`], with extra raw `--peer` addresses (test taps).
    fn start_with(&mut self, i: usize, peers: &[usize], extra: &[String]) {
        assert!(self.nodes[i].running.is_none(), "node {i} already runs");
        drop(self.nodes[i].reservation.take());
        self.nodes[i].peers = peers.to_vec();
        self.nodes[i].generation += 1;
        let node = &self.nodes[i];
        let label = format!("{}#{}", node.name, node.generation);
        let out_path = self.root.path().join(format!("{label}.stdout"));
        let err_path = self.root.path().join(format!("{label}.stderr"));
        let mut cmd = self.command();
        cmd.arg("--data-dir").arg(&node.dir).args([
            "listen",
            "--transport",
            "udp",
            "--bind",
            &node.addr,
        ]);
        for &p in peers {
            cmd.args(["--peer", &self.nodes[p].addr]);
        }
        for addr in extra {
            cmd.args(["--peer", addr]);
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
            if let Some(line) = out.lines().find(|l| l.contains("listening on udp")) {
                assert!(line.contains(&self.nodes[i].addr), "{line}");
                assert!(line.contains(&self.nodes[i].id), "{line}");
                return;
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

    /// Every other node of `nodes` as peers.
    fn start_mesh(&mut self, nodes: &[usize], all: &[usize]) {
        for &i in nodes {
            let peers: Vec<usize> = all.iter().copied().filter(|&p| p != i).collect();
            self.start(i, &peers);
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
        let peers = self.nodes[i].peers.clone();
        self.start(i, &peers);
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

    /// Polls `f` until it returns `Some`, failing after `WAIT_TIMEOUT` with `what` and the
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
