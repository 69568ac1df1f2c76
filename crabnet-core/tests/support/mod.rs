//! The process-test harness shared by the test binaries that run the `crabnet` CLI as separate
//! processes (`mod support;` in `tests/cli.rs`, `network.rs`, `network_dht.rs`,
//! `sandbox_e2e.rs`, `trust_e2e.rs`, `web.rs`, `replication_e2e.rs`), and in-process pairs of
//! nodes ([`pair`], used by `tests/node.rs`, `runs.rs` and `crash.rs`).
//!
//! - [`run_bounded`] runs one CLI command with a timeout and returns its [`Out`].
//! - A [`Sandbox`] is a temp dir with a fake HOME/XDG/TMPDIR that every command runs in.
//! - [`Listeners`] owns long-running processes (`crabnet listen`, `events --follow`,
//!   `demo --serve`), waits for what they print, interrupts them, and SIGKILLs them on drop,
//!   so a failing test never leaves processes behind.
//! - [`reserve_port`] and [`reserve_on`] hold ports (UDP, or TCP and UDP for a dht node) that
//!   no other test of the binary gets.
//! - [`forge`] makes identities, hellos and envelopes by hand for the tests that attack a
//!   node's trust boundary (`tests/trust.rs`, `trust_policy.rs`, `limits.rs`).
//! - [`procs`] finds a test's processes by a unique argument (`tests/runs.rs`, and the unit
//!   tests of `src/runner.rs`).
//! - [`pair::Pair`] is a publisher and a runner in one process on an in-memory hub, for
//!   in-process tests that need a whole lifecycle (a publisher may not bid on its own seed).
//! - [`http`] speaks raw HTTP to a node's monitoring server over TCP (`tests/web.rs`,
//!   `web_limits.rs`, `limits.rs`); [`demo`] runs a demo network through one lifecycle
//!   (`tests/web.rs`, `schema.rs`).
//! - [`namespace`] runs a test inside Linux namespaces it makes (`tests/lan.rs`: mDNS and
//!   broadcast on a LAN of its own; `tests/full_disk.rs`: a file system that fills up).
//! - [`vectors`] holds the keys of the committed test vectors and the check that the code still
//!   produces them (`tests/envelope.rs`, `rotation.rs`, `trust_policy.rs`); `committed.rs`
//!   the check of other generated files (`tests/schema.rs`, `crabnet-ffi/tests/header.rs`).
//! - A [`Net`] is a sandbox of initialized nodes, each a real `crabnet listen` process on
//!   127.0.0.1 over UDP ([`Net::new`]) or libp2p ([`Net::dht`]), driven by separate CLI
//!   processes on their data directories while the listeners run. Every wait has a deadline,
//!   and the whole test a budget.
//!
//! `CRABNET_E2E_BIN=/path/to/crabnet` runs the tests against another build of the CLI (a
//! release build, a candidate fix built in another target directory).

// Each test binary compiles this module (`mod support;`) and uses only part of it: no item is
// used by every binary, so an allow per item would sit on nearly all of them.
#![allow(dead_code)]

pub mod demo;
pub mod fold_fixtures;
pub mod forge;
pub mod http;
pub mod namespace;
pub mod pair;
pub mod procs;
pub mod vectors;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
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

/// The CLI under test: `CRABNET_E2E_BIN` when set, else this build's.
pub fn bin() -> OsString {
    std::env::var_os("CRABNET_E2E_BIN").unwrap_or_else(|| BIN.into())
}

// ------------------------------------------------------------------------------------------
// One command
// ------------------------------------------------------------------------------------------

/// The outcome of one CLI invocation.
#[derive(Debug)]
pub struct Out {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics unless the command succeeded; returns self for chaining.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(self.success(), "expected success: {}", self.describe());
        self
    }

    /// The whole of stdout parsed as one JSON document.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", self.describe()))
    }

    /// Stdout as JSON lines (`events --json`).
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

/// Runs a prepared command with [`COMMAND_TIMEOUT`]; see [`run_bounded_within`].
pub fn run_bounded(cmd: Command, args: Vec<String>) -> Out {
    run_bounded_within(cmd, args, COMMAND_TIMEOUT)
}

/// Runs a prepared command (`args` is how it is shown) and collects its output; panics (after
/// killing it) if it does not finish within `timeout`.
pub fn run_bounded_within(mut cmd: Command, args: Vec<String>, timeout: Duration) -> Out {
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
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("wait for crabnet") {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = out_reader.join().unwrap_or_default();
                let stderr = err_reader.join().unwrap_or_default();
                panic!(
                    "`crabnet {}` did not exit within {timeout:?} (hung; killed)\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
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

/// Polls `f` every [`POLL`] until it returns `Ok`; once `deadline` has passed, fails with
/// `what`, the last observation (`f`'s `Err`) and `context()` (say, the listeners' logs).
#[track_caller]
pub fn wait_until<T>(
    what: &str,
    deadline: Instant,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            panic!(
                "timed out waiting until {what}\nlast seen:\n{last}\n{}",
                context()
            );
        }
        thread::sleep(POLL);
    }
}

/// What a wait for a seed's view sees in one `--json seed show`: the view when the command
/// succeeded and `pred` holds, else the observation.
pub fn seed_view_if(out: Out, pred: impl Fn(&Value) -> bool) -> Result<Value, String> {
    if !out.success() {
        return Err(out.describe());
    }
    let v = out.json();
    if pred(&v) {
        Ok(v)
    } else {
        Err(format!("{v:#}"))
    }
}

/// What a wait for peers sees in one `--json peers`: done when every node id of `want` is
/// listed (its hello was verified), else the list.
pub fn peers_known(out: Out, want: &[String]) -> Result<(), String> {
    let v = out.ok().json();
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
}

// ------------------------------------------------------------------------------------------
// Sandbox, ports, listeners
// ------------------------------------------------------------------------------------------

/// A per-test temp directory that holds the node data directories plus a fake HOME /
/// XDG_DATA_HOME / TMPDIR, so nothing a test runs can touch the real user's files.
pub struct Sandbox {
    pub root: TempDir,
}

impl Sandbox {
    /// A new sandbox in a temp dir named `prefix...`.
    pub fn new(prefix: &str) -> Sandbox {
        let root = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("create temp dir");
        for sub in ["home", "xdg", "tmp"] {
            std::fs::create_dir_all(root.path().join(sub)).unwrap();
        }
        Sandbox { root }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// A (not yet existing) node data directory inside the sandbox.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// A command for the CLI with a clean, sandboxed environment and no data directory.
    pub fn command(&self) -> Command {
        self.command_for(bin())
    }

    /// A command for `program` (a script that runs the CLI) with the same environment as
    /// [`Sandbox::command`].
    pub fn command_for(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let root = self.path();
        cmd.env_remove("CRABNET_DATA_DIR")
            .env_remove("CRABNET_CONFIG")
            .env_remove("CRABNET_LOG")
            .env("HOME", root.join("home"))
            .env("XDG_DATA_HOME", root.join("xdg"))
            .env("TMPDIR", root.join("tmp"))
            .stdin(Stdio::null());
        cmd
    }
}

/// Ports handed out in this test binary, so parallel tests never share one (a port released
/// by a killed listener must not be handed to another test while the node is down).
pub static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// What a node listens on, and so what its port is reserved for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `--transport udp`: UDP.
    Udp,
    /// `--transport dht`: libp2p on TCP, and on QUIC (UDP) with `--quic`, on the same port
    /// number (both are reserved).
    Dht,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Dht => "dht",
        }
    }
}

/// A port held (a UDP socket, and for a dht node a TCP listener on the same number) until the
/// node's listener starts.
pub struct Reservation {
    pub addr: SocketAddr,
    pub udp: Option<UdpSocket>,
    pub tcp: Option<TcpListener>,
}

impl Reservation {
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}

/// Binds a free UDP port on 127.0.0.1 (see [`reserve_on`]) and keeps the socket as a
/// reservation (or as a tap that receives what nodes send to it).
pub fn reserve_port() -> UdpSocket {
    reserve_on(Ipv4Addr::LOCALHOST.into(), Transport::Udp)
        .udp
        .expect("a UDP reservation")
}

/// Reserves a port on `ip` that `transport` can bind (for [`Transport::Dht`], TCP and UDP are
/// both free), never one this binary handed out before.
///
/// Ports come from below the kernel's ephemeral range ([`test_ports`]): a port released for a
/// listener to bind (or by a listener killed and restarted) cannot be taken meanwhile by an
/// outgoing connection or a port-0 bind of any process on the machine, which is where the
/// kernel hands out ports on its own.
pub fn reserve_on(ip: IpAddr, transport: Transport) -> Reservation {
    let range = test_ports();
    let span = u32::from(range.end - range.start);
    for _ in 0..span {
        let port = NEXT_PORT.with_next(range.clone());
        let Ok(udp) = UdpSocket::bind((ip, port)) else {
            continue;
        };
        let addr = udp.local_addr().unwrap();
        let tcp = match transport {
            Transport::Udp => None,
            // The same number may be taken for TCP: try another one then.
            Transport::Dht => match TcpListener::bind(addr) {
                Ok(tcp) => Some(tcp),
                Err(_) => continue,
            },
        };
        let mut ports = PORTS.lock().unwrap_or_else(|p| p.into_inner());
        if ports.get_or_insert_with(HashSet::new).insert(addr.port()) {
            return Reservation {
                addr,
                udp: Some(udp),
                tcp,
            };
        }
    }
    panic!("no free port for {transport:?} on {ip} in {range:?}");
}

/// The ports tests reserve: from 10000 up to the start of the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`, 32768 by default), which holds more than 20,000
/// ports on any usual configuration.
pub fn test_ports() -> std::ops::Range<u16> {
    const FIRST: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    assert!(
        ephemeral_start >= FIRST + 1_000,
        "the ephemeral port range starts at {ephemeral_start}: tests need ports below it"
    );
    FIRST..ephemeral_start
}

/// The next port to try, starting at a place drawn from the process id and the time so that
/// test binaries running at once (two checkouts on one machine) start far apart.
struct NextPort(Mutex<Option<u32>>);

impl NextPort {
    fn with_next(&self, range: std::ops::Range<u16>) -> u16 {
        let span = u32::from(range.end - range.start);
        let mut next = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let offset = next.get_or_insert_with(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            std::process::id().wrapping_mul(7_919).wrapping_add(nanos) % span
        });
        let port = range.start + (*offset % span) as u16;
        *offset = (*offset + 1) % span;
        port
    }
}

static NEXT_PORT: NextPort = NextPort(Mutex::new(None));

pub struct Listener {
    pub name: String,
    pub child: Child,
    pub out_path: PathBuf,
    pub err_path: PathBuf,
}

/// Owns background processes (`crabnet listen`, `events --follow`) and SIGKILLs them when
/// dropped (also on panic).
#[derive(Default)]
pub struct Listeners {
    pub procs: Vec<Listener>,
}

impl Listeners {
    /// Spawns `cmd` as process `name`, its stdout and stderr going to `name.stdout` and
    /// `name.stderr` in `log_dir`; returns its index.
    pub fn spawn(&mut self, name: &str, mut cmd: Command, log_dir: &Path) -> usize {
        let out_path = log_dir.join(format!("{name}.stdout"));
        let err_path = log_dir.join(format!("{name}.stderr"));
        cmd.stdout(File::create(&out_path).unwrap())
            .stderr(File::create(&err_path).unwrap());
        let child = cmd.spawn().expect("spawn crabnet listen");
        self.procs.push(Listener {
            name: name.to_owned(),
            child,
            out_path,
            err_path,
        });
        self.procs.len() - 1
    }

    pub fn stdout(&self, i: usize) -> String {
        std::fs::read_to_string(&self.procs[i].out_path).unwrap_or_default()
    }

    pub fn stderr(&self, i: usize) -> String {
        std::fs::read_to_string(&self.procs[i].err_path).unwrap_or_default()
    }

    /// The end of every process's stdout and its stderr, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (i, p) in self.procs.iter().enumerate() {
            let out = self.stdout(i);
            let tail: Vec<&str> = out.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            s += &format!(
                "--- listener {} stdout (last 40 lines)\n{}\n--- listener {} stderr\n{}\n",
                p.name,
                tail.join("\n"),
                p.name,
                self.stderr(i)
            );
        }
        s
    }

    /// Waits (at most `within`) until listener `i` printed its banner (`node ID listening on
    /// TRANSPORT ADDRESS ...`); returns the banner line.
    #[track_caller]
    pub fn wait_ready(&mut self, i: usize, within: Duration) -> String {
        self.wait_line(i, "report that it listens", within, |l| {
            l.contains(" listening on ")
        })
    }

    /// Waits (at most `within`) until process `i` printed a line on stdout that `pred`
    /// accepts (`what` names it in the failure); returns the line. Fails when the process
    /// exits first.
    #[track_caller]
    pub fn wait_line(
        &mut self,
        i: usize,
        what: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.stdout(i).lines().find(|l| pred(l)) {
                return line.to_owned();
            }
            if let Some(status) = self.procs[i].child.try_wait().unwrap() {
                panic!(
                    "listener {} exited early with {status}\n{}",
                    self.procs[i].name,
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "listener {} did not {what}\n{}",
                self.procs[i].name,
                self.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether process `i` still runs.
    pub fn running(&mut self, i: usize) -> bool {
        self.procs[i].child.try_wait().unwrap().is_none()
    }

    /// Kills process `i` (if it still runs) and reaps it.
    pub fn kill(&mut self, i: usize) {
        let _ = self.procs[i].child.kill();
        let _ = self.procs[i].child.wait();
    }

    /// Sends SIGINT (Ctrl-C) to process `i` and waits up to 10 s for it to exit; returns its
    /// status. The signal is repeated every half second, in case the first one arrived before
    /// the process installed its handler.
    pub fn interrupt(&mut self, i: usize) -> ExitStatus {
        let Listener { name, child, .. } = &mut self.procs[i];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // SAFETY: plain syscall on the pid of a child we own and have not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGINT);
            }
            let next = Instant::now() + Duration::from_millis(500);
            while Instant::now() < next {
                if let Some(status) = child.try_wait().unwrap() {
                    return status;
                }
                thread::sleep(Duration::from_millis(10));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} did not exit within 10 s of SIGINT");
            }
        }
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

// ------------------------------------------------------------------------------------------
// A network of listening nodes
// ------------------------------------------------------------------------------------------

/// How a node's listener runs: `crabnet listen --transport T --bind <its address>`, a
/// `--peer` with the address of each node in `peers`, then `args` as given.
#[derive(Clone, Debug)]
pub struct Mode {
    pub transport: Transport,
    pub peers: Vec<usize>,
    pub args: Vec<String>,
}

impl Mode {
    pub fn new(transport: Transport, peers: &[usize]) -> Mode {
        Mode {
            transport,
            peers: peers.to_vec(),
            args: Vec::new(),
        }
    }

    /// Adds raw arguments.
    pub fn args(mut self, args: &[&str]) -> Mode {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Adds `--peer addr` for each raw address (test taps, a UDP-only node's peer).
    pub fn peer_addrs(mut self, addrs: &[String]) -> Mode {
        for addr in addrs {
            self.args.extend(["--peer".to_owned(), addr.clone()]);
        }
        self
    }
}

/// One node of a test network.
pub struct NodeSpec {
    pub name: String,
    pub dir: PathBuf,
    pub addr: String,
    pub id: String,
    /// Holds the node's port until its listener starts.
    pub reservation: Option<Reservation>,
    /// Index into `Listeners::procs` of the running listener.
    pub running: Option<usize>,
    /// How its listener last ran.
    pub mode: Option<Mode>,
    pub generation: u32,
}

/// A sandbox holding `n` initialized nodes with reserved ports, plus the guard over their
/// listeners.
pub struct Net {
    // Field order: the listeners die before the directory is removed.
    pub procs: Listeners,
    pub nodes: Vec<NodeSpec>,
    pub sandbox: Sandbox,
    pub deadline: Instant,
    /// What [`Net::start`] runs the nodes on.
    pub transport: Transport,
}

impl Net {
    /// `n` nodes on UDP (`crabnet listen --transport udp --no-http`). Each data directory gets
    /// a `config.toml` with a 1 s sync interval and a 50 ms tick so that sync-driven
    /// convergence takes seconds, and a 5 s hello interval so that a hello lost at startup is
    /// repeated soon.
    pub fn new(n: usize) -> Net {
        Net::with(n, Transport::Udp)
    }

    /// `n` nodes on libp2p (`crabnet listen --transport dht`), each port reserved for TCP and
    /// UDP. The hello interval is 2 s: gossip is best effort until the mesh forms, so the first
    /// hellos after a connection are the periodic ones.
    pub fn dht(n: usize) -> Net {
        Net::with(n, Transport::Dht)
    }

    fn with(n: usize, transport: Transport) -> Net {
        let (prefix, hello_secs) = match transport {
            Transport::Udp => ("crabnet-net-test-", 5),
            Transport::Dht => ("crabnet-dht-test-", 2),
        };
        let mut net = Net {
            procs: Listeners::default(),
            nodes: Vec::new(),
            sandbox: Sandbox::new(prefix),
            deadline: Instant::now() + TEST_BUDGET,
            transport,
        };
        for i in 0..n {
            let name = format!("n{i}");
            let dir = net.sandbox.dir(&name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("config.toml"),
                format!(
                    "name = \"{name}\"\n\n[network]\nsync_interval_secs = 1\ntick_ms = 50\nhello_interval_secs = {hello_secs}\ncounter_write_secs = 1\n"
                ),
            )
            .unwrap();
            let reservation = reserve_on(Ipv4Addr::LOCALHOST.into(), transport);
            net.nodes.push(NodeSpec {
                name,
                dir,
                addr: reservation.addr(),
                id: String::new(),
                reservation: Some(reservation),
                running: None,
                mode: None,
                generation: 0,
            });
            let v = net.run(i, &["--json", "init"]).ok().json();
            net.nodes[i].id = node_id_in(&v, "init");
        }
        net
    }

    pub fn id(&self, i: usize) -> &str {
        &self.nodes[i].id
    }

    pub fn command(&self) -> Command {
        self.sandbox.command()
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

    /// How [`Net::start`] runs a node dialing `peers`: UDP nodes without the dashboard, dht
    /// nodes as `crabnet listen` runs by default.
    pub fn mode(&self, peers: &[usize]) -> Mode {
        let mode = Mode::new(self.transport, peers);
        match self.transport {
            Transport::Udp => mode.args(&["--no-http"]),
            Transport::Dht => mode,
        }
    }

    /// Starts node `i`'s listener dialing every node in `peers` and waits for its banner.
    pub fn start(&mut self, i: usize, peers: &[usize]) {
        self.start_mode(i, self.mode(peers));
    }

    /// Like [`Net::start`], with extra raw `--peer` addresses (test taps).
    pub fn start_with(&mut self, i: usize, peers: &[usize], extra: &[String]) {
        self.start_mode(i, self.mode(peers).peer_addrs(extra));
    }

    /// Starts node `i`'s listener in `mode`, waits for its banner and checks that it names
    /// the transport and the bound address.
    pub fn start_mode(&mut self, i: usize, mode: Mode) {
        let transport = mode.transport.as_str();
        let line = self.spawn_listener(i, mode);
        let want = format!("listening on {transport} {}", self.nodes[i].addr);
        assert!(line.contains(&want), "banner {line:?} lacks {want:?}");
    }

    /// Starts node `i`'s listener in `mode` and returns its banner (`node ID listening on
    /// ...`) once printed. Releases the port reservation first.
    pub fn spawn_listener(&mut self, i: usize, mode: Mode) -> String {
        assert!(self.nodes[i].running.is_none(), "node {i} already runs");
        drop(self.nodes[i].reservation.take());
        self.nodes[i].generation += 1;
        let node = &self.nodes[i];
        let label = format!("{}#{}", node.name, node.generation);
        let mut cmd = self.command();
        cmd.arg("--data-dir").arg(&node.dir).args([
            "listen",
            "--transport",
            mode.transport.as_str(),
            "--bind",
            &node.addr,
        ]);
        for &p in &mode.peers {
            cmd.args(["--peer", &self.nodes[p].addr]);
        }
        cmd.args(&mode.args);
        let idx = self.procs.spawn(&label, cmd, self.sandbox.path());
        self.nodes[i].running = Some(idx);
        self.nodes[i].mode = Some(mode);
        let line = self.procs.wait_ready(idx, COMMAND_TIMEOUT);
        let want = format!("node {} listening on ", self.nodes[i].id);
        assert!(line.starts_with(&want), "banner {line:?} lacks {want:?}");
        line
    }

    /// `n` nodes over UDP ([`Net::new`]) started in a full mesh, once each knows all others.
    pub fn udp_mesh(n: usize) -> Net {
        let mut net = Net::new(n);
        let all: Vec<usize> = (0..n).collect();
        net.start_mesh(&all, &all);
        net.wait_mesh(&all);
        net
    }

    /// Starts node 0 with no peer, then each of `leaves` with node 0 as its only peer.
    pub fn start_star(&mut self, leaves: &[usize]) {
        self.start(0, &[]);
        for &i in leaves {
            self.start(i, &[0]);
        }
    }

    /// Every other node of `all` as peers.
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

    /// Stops node `i`'s listener cleanly (SIGINT) and checks that it exited 0.
    pub fn stop(&mut self, i: usize) {
        let idx = self.nodes[i].running.take().expect("node runs");
        let status = self.procs.interrupt(idx);
        assert!(
            status.success(),
            "listener {i} exits 0 on SIGINT: {status}\n{}",
            self.procs.logs()
        );
    }

    /// Restarts node `i`'s listener as it ran before: same data directory, port and peers.
    pub fn restart(&mut self, i: usize) {
        let mode = self.nodes[i].mode.clone().expect("node ran before");
        self.start_mode(i, mode);
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

    /// Polls `f` until it returns `Ok`, failing after `WAIT_TIMEOUT` (or at the end of the
    /// test's budget) with `what` and the last observation.
    #[track_caller]
    pub fn wait<T>(&self, what: &str, f: impl FnMut() -> Result<T, String>) -> T {
        let deadline = (Instant::now() + WAIT_TIMEOUT).min(self.deadline);
        wait_until(what, deadline, || self.procs.logs(), f)
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

    /// The `detail`s of node `i`'s `transport_status` events from `transport`.
    pub fn transport_status(&self, i: usize, transport: &str) -> Vec<String> {
        self.events(i)
            .iter()
            .filter(|e| e["type"] == "transport_status" && e["transport"] == transport)
            .map(|e| e["detail"].as_str().expect("detail").to_owned())
            .collect()
    }

    /// Node `i`'s own libp2p peer id (from its `libp2p started as ...` event).
    pub fn peer_id(&self, i: usize) -> String {
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
    pub fn libp2p_connected(&self, i: usize) -> BTreeSet<String> {
        self.transport_status(i, "dht")
            .iter()
            .filter_map(|d| d.strip_prefix("connected to libp2p peer "))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until node `i` knows every node in `peers` (their hellos were verified).
    #[track_caller]
    pub fn wait_peers(&self, i: usize, peers: &[usize]) {
        let want: Vec<String> = peers.iter().map(|&p| self.nodes[p].id.clone()).collect();
        self.wait(&format!("node {i} knows peers {peers:?}"), || {
            peers_known(self.run(i, &["--json", "peers"]), &want)
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
            seed_view_if(self.run(i, &["--json", "seed", "show", seed]), &pred)
        })
    }

    /// Waits until `seed show` on node `i` reports the seed's status as `status`; returns the
    /// view.
    #[track_caller]
    pub fn wait_status(&self, i: usize, seed: &str, status: &str) -> Value {
        self.wait_seed(i, seed, &format!("sees status {status}"), |v| {
            v["status"] == status
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
        self.publish_with(i, command, max_bids, &[])
    }

    /// [`Net::publish`] with more `seed publish` options (deadlines, ...).
    #[track_caller]
    pub fn publish_with(&self, i: usize, command: &str, max_bids: u32, extra: &[&str]) -> String {
        let max_bids = max_bids.to_string();
        let mut args = vec![
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
        ];
        args.extend_from_slice(extra);
        let out = self.run(i, &args).ok();
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

    /// A whole auction of `seed` (published by `publisher`): every `(node, price)` of `bids`
    /// bids, `winner` wins at `price` (as the publisher and the winner see it), runs the seed,
    /// and the publisher settles; every node in `nodes` sees the settlement.
    #[track_caller]
    pub fn auction_to_settlement(
        &self,
        publisher: usize,
        seed: &str,
        bids: &[(usize, u64)],
        (winner, price): (usize, u64),
        nodes: &[usize],
    ) {
        for &(i, bid) in bids {
            self.bid(i, seed, bid);
        }
        self.wait_award(publisher, seed, winner, price);
        self.wait_award(winner, seed, winner, price);
        self.claim_and_run(winner, seed);
        self.complete_and_settle(publisher, seed, nodes);
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

/// The string `field` of every element of the JSON array `list`, in order; panics, naming
/// the element, when `list` is not an array or a `field` is not a string.
#[track_caller]
pub fn strs<'a>(list: &'a Value, field: &str) -> Vec<&'a str> {
    let Some(items) = list.as_array() else {
        panic!("not a JSON array: {list}");
    };
    let mut out = Vec::with_capacity(items.len());
    for v in items {
        let Some(s) = v[field].as_str() else {
            panic!("`{field}` of {v} is not a string");
        };
        out.push(s);
    }
    out
}

/// The `node_id` of `v`, the JSON that `what` printed, checked to be 64 hex digits.
#[track_caller]
pub fn node_id_in(v: &Value, what: &str) -> String {
    let id = v["node_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{what} prints node_id"))
        .to_owned();
    assert!(is_hex(&id, 64), "node id {id:?} is not 64 hex digits");
    id
}

/// The port of an `IP:PORT` address.
pub fn port_of(addr: &str) -> u16 {
    addr.parse::<SocketAddr>().expect("IP:PORT").port()
}

/// A pseudo-random byte stream (no extra dependencies; the content only has to be junk).
pub fn junk(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
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

// ------------------------------------------------------------------------------------------
// Scenarios both transports run
// ------------------------------------------------------------------------------------------

/// Crash (SIGKILL) mid-lifecycle, partition by process, restart and heal, on four running
/// nodes that know each other, node 0 publishing (`tag` prefixes what the tasks print).
///
/// Node 1 bids, then its listener is SIGKILLed before the award. While it is down:
/// - the others finish that lifecycle (node 2 wins, claims, runs; node 0 settles);
/// - node 1's operator bids on another seed through the CLI (acknowledged, but unsent: the
///   listener is down);
/// - the others run a whole lifecycle node 1 never hears of (published by node 3).
///
/// Then node 1's listener restarts on the same data directory, port and peers: its pending
/// bid goes out, it learns everything it missed by sync, keeps its own acknowledged bids, and
/// all four nodes end with the same digest.
pub fn crash_restart_heal(net: &mut Net, tag: &str) {
    let all = [0, 1, 2, 3];
    let others = [0, 2, 3];
    let s1 = net.publish(0, &format!("echo {tag}crash-s1"), 3);
    let s2 = net.publish(0, &format!("echo {tag}crash-s2"), 2);
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
    net.auction_to_settlement(0, &s1, &[(2, 10), (3, 20)], (2, 10), &others);

    // A whole lifecycle node 1 misses.
    let s3 = net.publish(3, &format!("echo {tag}crash-s3"), 1);
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

    // Restart: same data directory, same port(s), same peers.
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
    assert_eq!(
        v1["result"]["output_sha256"],
        sha256_hex(format!("{tag}crash-s1\n").as_bytes())
    );
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
    assert_eq!(
        v3["result"]["output_sha256"],
        sha256_hex(format!("{tag}crash-s3\n").as_bytes())
    );
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
}

/// One whole auction on four running nodes that know each other: `publisher` publishes
/// `echo {text}` (3 bids at most), the nodes of `bids` bid their prices, the publisher awards
/// the lowest, the losing bidders and the publisher cannot claim, the winner claims and runs,
/// the publisher settles, and all four end with the same state digest and view of the seed.
/// `per_node(net, i)` adds checks on each node at the end.
pub fn auction_of_four(
    net: &Net,
    publisher: usize,
    bids: [(usize, u64); 3],
    text: &str,
    per_node: impl Fn(&Net, usize),
) {
    let all = [0, 1, 2, 3];
    let (winner, price) = bids.into_iter().min_by_key(|&(_, p)| p).unwrap();
    let seed = net.publish(publisher, &format!("echo {text}"), 3);
    for (node, price) in bids {
        net.bid(node, &seed, price);
    }
    let award = net.wait_award(publisher, &seed, winner, price);
    assert_eq!(
        award["award"]["considered"].as_array().unwrap().len(),
        3,
        "{award:#}"
    );
    for i in all.into_iter().filter(|&i| i != publisher) {
        net.wait_award(i, &seed, winner, price);
    }

    // Only the winner may claim: the losing bidders and the publisher get a state error.
    let losers = bids.map(|(node, _)| node).into_iter();
    for loser in losers.filter(|&n| n != winner).chain([publisher]) {
        net.expect_claim_refused(loser, &seed, "not the winning bidder");
    }
    let ran = net.claim_and_run(winner, &seed);
    let output = format!("{text}\n");
    assert_eq!(
        ran["result"]["output_sha256"],
        sha256_hex(output.as_bytes())
    );
    net.complete_and_settle(publisher, &seed, &all);

    let digest = net.wait_converged(&all, "after settlement");
    assert!(is_hex(&digest, 64), "{digest}");
    let v = net.assert_same_view(&all, &seed);
    assert_eq!(v["status"], "settled");
    assert_eq!(v["settlement"]["amount"], price);
    assert_eq!(v["settlement"]["outcome"], "accepted");
    assert_eq!(v["claim"]["claimer"], net.id(winner));
    assert_eq!(v["result"]["runner"], net.id(winner));
    let prices = bid_prices(&v);
    assert_eq!(prices.len(), 3, "{v:#}");
    for (node, price) in bids {
        assert_eq!(prices.get(net.id(node)), Some(&price), "{v:#}");
    }
    for i in all {
        let st = net.status(i);
        assert_eq!(st["seeds_by_status"]["settled"], 1, "node {i}: {st:#}");
        assert_eq!(st["peers"], 3, "node {i}: {st:#}");
        assert_eq!(
            net.runs_of(i, &seed),
            usize::from(i == winner),
            "node {i} task_started"
        );
        per_node(net, i);
    }
}

/// What the first half of the late-joiner scenario leaves: a settled seed, an open one, and
/// the digest of nodes 0..2.
pub struct BeforeLateJoiner {
    pub settled: String,
    pub open: String,
    pub digest: String,
}

/// The first half of the late-joiner scenario, on nodes 0, 1 and 2 that know each other while
/// node 3 does not run: a lifecycle to settlement (node 0 publishes `echo {tag}late-joiner`,
/// node 1 wins over node 2), and one more seed left open with a bid; waits until the three
/// converge.
pub fn before_late_joiner(net: &Net, tag: &str) -> BeforeLateJoiner {
    let s1 = net.publish(0, &format!("echo {tag}late-joiner"), 2);
    net.bid(1, &s1, 15);
    net.bid(2, &s1, 25);
    net.wait_award(0, &s1, 1, 15);
    net.wait_award(1, &s1, 1, 15);
    // Node 2 must have the winner's bid too before it can tell it lost.
    net.wait_award(2, &s1, 1, 15);
    net.expect_claim_refused(2, &s1, "not the winning bidder");
    net.claim_and_run(1, &s1);
    net.complete_and_settle(0, &s1, &[0, 1, 2]);

    let s2 = net.publish(1, &format!("echo {tag}still-open"), 3);
    net.bid(2, &s2, 7);
    net.wait_seed(1, &s2, "has the bid", |v| {
        v["bids"].as_array().unwrap().len() == 1
    });
    let digest = net.wait_converged(&[0, 1, 2], "before the late joiner starts");
    BeforeLateJoiner {
        settled: s1,
        open: s2,
        digest,
    }
}

/// The second half, once node 3 runs: it converges by sync alone (same digest, the result
/// without re-running, through sync batches), `extra(net)` checks more, and then node 3 takes
/// part (the others accept its bid).
pub fn after_late_joiner(
    net: &Net,
    before: &BeforeLateJoiner,
    tag: &str,
    extra: impl FnOnce(&Net),
) {
    let all = [0, 1, 2, 3];
    let (s1, s2) = (&before.settled, &before.open);
    let after = net.wait_converged(&all, "after the late joiner synced");
    assert_eq!(
        after, before.digest,
        "nobody's state changed while node 3 caught up"
    );

    let v1 = net.assert_same_view(&all, s1);
    assert_eq!(v1["result"]["runner"], net.id(1));
    let output = format!("{tag}late-joiner\n");
    assert_eq!(v1["result"]["output_sha256"], sha256_hex(output.as_bytes()));
    let v2 = net.assert_same_view(&all, s2);
    assert_eq!(v2["status"], "open", "{v2:#}");
    assert_eq!(bid_prices(&v2).get(net.id(2)), Some(&7), "{v2:#}");
    // Nothing was re-run: the only run of s1 is node 1's; node 3 got the result by sync.
    for i in all {
        assert_eq!(
            net.runs_of(i, s1),
            usize::from(i == 1),
            "node {i} task_started"
        );
    }
    let c3 = net.counters(3);
    assert!(
        c3.get("sync.batches_received").copied().unwrap_or(0) > 0,
        "node 3 caught up through sync batches: {c3:?}"
    );
    extra(net);

    // The late joiner is a full member: the others accept its messages.
    net.bid(3, s2, 5);
    net.wait_seed(1, s2, "has the late joiner's bid", |v| {
        bid_prices(v).get(net.nodes[3].id.as_str()) == Some(&5)
    });
    net.wait_converged(&all, "after the late joiner's bid");
}
