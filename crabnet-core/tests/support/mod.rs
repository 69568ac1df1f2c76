//! The process-test harness shared by the multi-process test binaries (`mod support;`).
//!
//! Every node is a real `crabnet listen --transport udp` process on 127.0.0.1 with its own data
//! directory inside a temp dir (with a fake HOME/XDG/TMPDIR); the lifecycle is driven by
//! separate CLI processes on those directories while the listeners run. Every CLI call is
//! bounded by a timeout, every wait by a deadline (and by a budget for the whole test), and
//! every listener is owned by a guard that SIGKILLs it on drop, so a failing test never leaves
//! processes behind.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

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

pub const BIN: &str = env!("CARGO_BIN_EXE_crabnet");
/// Longest a short-lived CLI command may take before it counts as hung.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest we wait for one replicated change.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a whole test may take; every wait also stops here.
pub const TEST_BUDGET: Duration = Duration::from_secs(80);
pub const POLL: Duration = Duration::from_millis(100);

/// The outcome of one CLI invocation.
#[derive(Debug)]
pub struct Out {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(
            self.status.success(),
            "expected success: {}",
            self.describe()
        );
        self
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", self.describe()))
    }

    #[track_caller]
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("invalid JSON line ({e}) {l}: {}", self.describe()))
            })
            .collect()
    }

    pub fn describe(&self) -> String {
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
pub fn run_bounded(mut cmd: Command, args: Vec<String>) -> Out {
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
pub static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Binds a fresh UDP port on 127.0.0.1 and keeps the socket as a reservation.
pub fn reserve_port() -> UdpSocket {
    loop {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral UDP port");
        let port = s.local_addr().unwrap().port();
        let mut ports = PORTS.lock().unwrap_or_else(|p| p.into_inner());
        if ports.get_or_insert_with(HashSet::new).insert(port) {
            return s;
        }
    }
}

pub struct Listener {
    pub name: String,
    pub child: Child,
    pub out_path: PathBuf,
    pub err_path: PathBuf,
}

/// Owns the `crabnet listen` processes and SIGKILLs them when dropped (also on panic).
#[derive(Default)]
pub struct Listeners {
    pub procs: Vec<Listener>,
}

impl Listeners {
    pub fn logs(&self) -> String {
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
pub struct NodeSpec {
    pub name: String,
    pub dir: PathBuf,
    pub addr: String,
    pub id: String,
    /// Holds the node's port until its listener starts.
    pub reservation: Option<UdpSocket>,
    /// Index into `Listeners::procs` of the running listener.
    pub running: Option<usize>,
    pub peers: Vec<usize>,
    pub generation: u32,
}

/// A sandbox (temp dir with fake HOME/XDG/TMPDIR) holding `n` initialized nodes with
/// reserved ports, plus the guard over their listeners.
pub struct Net {
    // Field order: the listeners die before the directory is removed.
    pub procs: Listeners,
    pub nodes: Vec<NodeSpec>,
    pub root: TempDir,
    pub deadline: Instant,
}

impl Net {
    pub fn new(n: usize) -> Net {
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

    pub fn id(&self, i: usize) -> &str {
        &self.nodes[i].id
    }

    pub fn command(&self) -> Command {
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
    pub fn run(&self, i: usize, args: &[&str]) -> Out {
        self.check_budget("running a command");
        let dir = &self.nodes[i].dir;
        let mut cmd = self.command();
        cmd.arg("--data-dir").arg(dir).args(args);
        let mut shown = vec![format!("[{}]", self.nodes[i].name)];
        shown.extend(args.iter().map(|s| s.to_string()));
        run_bounded(cmd, shown)
    }

    #[track_caller]
    pub fn check_budget(&self, what: &str) {
        assert!(
            Instant::now() < self.deadline,
            "test exceeded its budget of {TEST_BUDGET:?} while {what}\n{}",
            self.procs.logs()
        );
    }

    /// Starts node `i`'s listener with `--peer` for every node in `peers` and waits for its
    /// banner. Releases the port reservation first.
    pub fn start(&mut self, i: usize, peers: &[usize]) {
        self.start_with(i, peers, &[]);
    }

    /// Like [`Net::start`], with extra raw `--peer` addresses (test taps).
    pub fn start_with(&mut self, i: usize, peers: &[usize], extra: &[String]) {
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
            "--no-http",
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
    pub fn start_mesh(&mut self, nodes: &[usize], all: &[usize]) {
        for &i in nodes {
            let peers: Vec<usize> = all.iter().copied().filter(|&p| p != i).collect();
            self.start(i, &peers);
        }
    }

    /// SIGKILLs node `i`'s listener and checks that it died of the signal.
    pub fn kill(&mut self, i: usize) {
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
    pub fn restart(&mut self, i: usize) {
        let peers = self.nodes[i].peers.clone();
        self.start(i, &peers);
    }

    #[track_caller]
    pub fn assert_alive(&mut self, nodes: &[usize]) {
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
    pub fn wait<T>(&self, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
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

    pub fn status(&self, i: usize) -> Value {
        self.run(i, &["--json", "status"]).ok().json()
    }

    pub fn counters(&self, i: usize) -> BTreeMap<String, u64> {
        let v = self.status(i);
        v["counters"]
            .as_object()
            .expect("counters")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().expect("counter is a number")))
            .collect()
    }

    pub fn show(&self, i: usize, seed: &str) -> Value {
        self.run(i, &["--json", "seed", "show", seed]).ok().json()
    }

    pub fn events(&self, i: usize) -> Vec<Value> {
        self.run(i, &["--json", "events", "--limit", "100000"])
            .ok()
            .json_lines()
    }

    /// Waits until node `i` knows every node in `peers` (their hellos were verified).
    #[track_caller]
    pub fn wait_peers(&self, i: usize, peers: &[usize]) {
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
    pub fn wait_mesh(&self, nodes: &[usize]) {
        for &i in nodes {
            let others: Vec<usize> = nodes.iter().copied().filter(|&p| p != i).collect();
            self.wait_peers(i, &others);
        }
    }

    /// Waits until `seed show` on node `i` satisfies `pred`; returns the view.
    #[track_caller]
    pub fn wait_seed(
        &self,
        i: usize,
        seed: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
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
    pub fn wait_converged(&self, nodes: &[usize], what: &str) -> String {
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
    pub fn publish(&self, i: usize, command: &str, max_bids: u32) -> String {
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
    pub fn bid(&self, i: usize, seed: &str, price: u64) {
        self.wait_seed(i, seed, "knows the seed", |_| true);
        let price = price.to_string();
        self.run(i, &["seed", "bid", seed, "--price", &price]).ok();
    }

    /// Waits until node `i` sees the award of `seed` to `winner` at `price`.
    #[track_caller]
    pub fn wait_award(&self, i: usize, seed: &str, winner: usize, price: u64) -> Value {
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
    pub fn claim_and_run(&self, winner: usize, seed: &str) -> Value {
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
    pub fn complete_and_settle(&self, publisher: usize, seed: &str, nodes: &[usize]) {
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
    pub fn expect_claim_refused(&self, i: usize, seed: &str, needle: &str) {
        let out = self.run(i, &["--json", "seed", "claim", seed]);
        assert_eq!(out.status.code(), Some(1), "{}", out.describe());
        let v = out.json();
        assert_eq!(v["error"]["kind"], "state", "{}", out.describe());
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{}", out.describe());
    }

    /// `seed show` of `seed` is identical on every node of `nodes`.
    #[track_caller]
    pub fn assert_same_view(&self, nodes: &[usize], seed: &str) -> Value {
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
    pub fn runs_of(&self, i: usize, seed: &str) -> usize {
        self.events(i)
            .iter()
            .filter(|e| e["type"] == "task_started" && e["seed_id"] == seed)
            .count()
    }
}

pub fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn bid_prices(v: &Value) -> BTreeMap<String, u64> {
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
