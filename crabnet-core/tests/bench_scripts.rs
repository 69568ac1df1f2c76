//! The scale benchmark (`scripts/bench-dht-scale.py`) in short runs, as CI runs it: three
//! `crabnet listen` processes on 127.0.0.1 form a network over libp2p and over UDP, spread two
//! seeds and report; and a SIGTERM in the middle of a run stops the listeners and removes
//! their data directories. The scale runs themselves (100 processes) are in BENCHMARKS.md.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Sandbox, bin, procs, reserve_port, run_bounded_within};

/// The script's own limit per phase (forming, spreading): it then reports what is missing.
const PHASE_TIMEOUT_SECS: &str = "90";

/// Longer than the script's worst case (init, two phases, the idle window, the stop), so that
/// on a loaded machine the script reports its own timeout before this one kills it.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench-dht-scale.py")
}

/// The script with `args` in the sandbox's environment (no CRABNET_* variables of the shell
/// that started the tests); its temporary directories go to the sandbox's `tmp`, whose path
/// it returns as the script will see it.
fn command(sb: &Sandbox, args: &[String]) -> (Command, PathBuf) {
    let mut cmd = sb.command_for("python3");
    cmd.arg(script())
        .args(["--bin".as_ref(), bin().as_os_str()])
        .args(["--timeout", PHASE_TIMEOUT_SECS, "--progress", "15"])
        .args(args);
    let tmp = sb.path().join("tmp").canonicalize().unwrap();
    (cmd, tmp)
}

/// What is left under `tmp`.
fn left_in(tmp: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Runs a short benchmark over `transport` and checks its report.
fn short_run(transport: &str) {
    let sb = Sandbox::new("bench-script");
    let mut args = strings(&[
        "--transport",
        transport,
        "--nodes",
        "3",
        "--seeds",
        "2",
        "--settle-secs",
        "1",
        "--idle-secs",
        "2",
    ]);
    // UDP nodes bind ports of their own: ports reserved for this test binary, below the
    // kernel's ephemeral range, that no other process is handed meanwhile.
    let reserved: Vec<_> = (0..3).map(|_| reserve_port()).collect();
    if transport == "udp" {
        let ports: Vec<String> = reserved
            .iter()
            .map(|s| s.local_addr().unwrap().port().to_string())
            .collect();
        args.extend(["--udp-ports".to_string(), ports.join(",")]);
    }
    drop(reserved);
    let (cmd, tmp) = command(&sb, &args);
    let out = run_bounded_within(cmd, args, RUN_TIMEOUT).ok();
    let report: Value = out.json();
    let num = |v: &Value| {
        v.as_f64()
            .unwrap_or_else(|| panic!("not a number: {v}\n{report}"))
    };
    assert_eq!(report["transport"], transport, "{report}");
    assert_eq!(
        (report["nodes"].clone(), report["seeds"].clone()),
        (3.into(), 2.into())
    );
    // Every seed reached every node, and the latency of each was measured.
    assert_eq!(report["publish_to_all_ms"]["n"], 2, "{report}");
    assert!(num(&report["publish_to_all_ms"]["p50"]) >= 0.0, "{report}");
    // The first other node applied each seed no later than the last one did.
    assert_eq!(report["publish_to_first_ms"]["n"], 2, "{report}");
    let (first, all) = (&report["publish_to_first_ms"], &report["publish_to_all_ms"]);
    assert!(num(&first["max"]) <= num(&all["max"]), "{report}");
    assert!(num(&report["formed_secs"]) > 0.0, "{report}");
    // Memory and CPU were read from /proc for every node.
    for field in [
        "peak_rss_mib",
        "idle_rss_mib",
        "idle_pss_mib",
        "idle_private_mib",
    ] {
        assert!(num(&report[field]["min"]) > 1.0, "{field}: {report}");
    }
    assert!(
        num(&report["idle_cpu_pct_of_core"]["median"]) >= 0.0,
        "{report}"
    );
    assert!(num(&report["idle_window_secs"]) >= 2.0, "{report}");
    // TCP segments are counted for libp2p nodes only (UDP nodes send none).
    let segments = &report["idle_tcp_segments_per_s"];
    match transport {
        "udp" => assert!(segments.is_null(), "{report}"),
        _ => assert!(num(segments) >= 0.0, "{report}"),
    }
    assert_eq!(left_in(&tmp), Vec::<PathBuf>::new(), "data left behind");
}

#[test]
fn a_short_libp2p_run_reports_every_figure_and_cleans_up() {
    short_run("dht");
}

#[test]
fn a_short_udp_run_reports_every_figure_and_cleans_up() {
    short_run("udp");
}

/// `--udp-ports` that cannot serve the run (not numbers, too few or too many, a port twice,
/// out of range) is refused before anything starts: a usage error (status 2) that names the
/// flag, no listener and no directory left.
#[test]
fn bad_udp_ports_are_refused_before_any_node_starts() {
    let sb = Sandbox::new("bench-script");
    for ports in [
        "a,b,c",
        "4000,4001",
        "4000,4001,4002,4003",
        "4000,4000,4001",
        "0,4001,4002",
        "4000,4001,65536",
        "",
    ] {
        let args = strings(&["--transport", "udp", "--nodes", "3", "--udp-ports", ports]);
        let (cmd, tmp) = command(&sb, &args);
        let out = run_bounded_within(cmd, args, RUN_TIMEOUT);
        assert_eq!(out.status.code(), Some(2), "{ports:?}: {}", out.describe());
        assert!(
            out.stderr.contains("--udp-ports:"),
            "{ports:?}: {}",
            out.describe()
        );
        assert_eq!(left_in(&tmp), Vec::<PathBuf>::new(), "{ports:?}: data left");
    }
}

/// The script while a test watches it: stopped (SIGTERM, then SIGKILL) when the test ends,
/// however it ends, so that a failure leaves no script and no listeners behind (they stop
/// with the script).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on the script's own pid, which is not reaped yet.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// SIGTERM while the network idles: the script stops its listeners (none is left running
/// on its directories) and removes the directories, then exits with 128 + 15.
#[test]
fn sigterm_in_the_middle_of_a_run_leaves_no_process_and_no_directory() {
    let sb = Sandbox::new("bench-script");
    let args = strings(&["--nodes", "3", "--seeds", "1", "--idle-secs", "600"]);
    let (mut cmd, tmp) = command(&sb, &args);
    // SIGTERM as the default would have it, whatever the test runner inherited (a runner
    // started under `nohup` ignores it, and the script then keeps ignoring it by design).
    // SAFETY: between fork and exec only signal(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut script = Running(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the script"),
    );
    let (tx, rx) = mpsc::channel();
    let stderr = script.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut seen = Vec::new();
    let converged = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.starts_with("converged");
                seen.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    assert!(converged, "the run did not converge:\n{}", seen.join("\n"));
    let root = left_in(&tmp);
    assert_eq!(root.len(), 1, "one run directory: {root:?}");
    let marker = root[0].to_string_lossy().into_owned();
    let listeners = procs::processes_with_arg(&format!("{marker}/n0"));
    assert_eq!(listeners.len(), 1, "node 0 is running: {listeners:?}");
    // SAFETY: kill(2) on the script's own pid, which this test started and has not reaped.
    assert_eq!(
        unsafe { libc::kill(script.0.id() as i32, libc::SIGTERM) },
        0
    );
    let status = support::wait_until(
        "the script exits after SIGTERM",
        Instant::now() + Duration::from_secs(60),
        || seen.join("\n"),
        || {
            script
                .0
                .try_wait()
                .unwrap()
                .ok_or_else(|| "still running".to_string())
        },
    );
    reader.join().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}");
    for i in 0..3 {
        let dir = format!("{marker}/n{i}");
        assert_eq!(procs::processes_with_arg(&dir), Vec::<u32>::new(), "{dir}");
    }
    assert_eq!(left_in(&tmp), Vec::<PathBuf>::new(), "data left behind");
}
