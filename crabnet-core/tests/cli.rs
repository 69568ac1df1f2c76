//! End-to-end tests of the `crabnet` command-line interface.
//!
//! Every test spawns the real binary as a separate process, each time with its own temporary
//! data directory (`--data-dir` or `CRABNET_DATA_DIR`). Every invocation is bounded by a
//! timeout, so a hanging command fails its test instead of hanging the suite, and every
//! long-running `crabnet listen` process is owned by a guard that kills it on drop.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use support::{
    Listeners, Net, Out, Sandbox, is_hex, node_id_in, peers_known, reserve_port,
    run_bounded_within, seed_view_if, sha256_hex, strs, wait_until,
};

/// Longest any single short-lived CLI command may take before it counts as hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest we wait for a replicated state change between two listening nodes.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------------
// Harness (the shared part is in tests/support/mod.rs)
// ------------------------------------------------------------------------------------------

fn sandbox() -> Sandbox {
    Sandbox::new("crabnet-cli-test-")
}

/// A sandbox and the data directory `node` in it (not created yet).
fn one_node() -> (Sandbox, PathBuf) {
    let sb = sandbox();
    let dir = sb.dir("node");
    (sb, dir)
}

/// The publisher's node in a [`pair`].
const PUBLISHER: usize = 0;
/// The runner's node in a [`pair`].
const RUNNER: usize = 1;

/// A publisher and a runner: two initialized nodes whose `crabnet listen` processes (UDP on
/// 127.0.0.1) know each other, so that CLI commands on one data directory reach the other. A
/// node may not bid on its own seed, so every lifecycle needs both.
fn pair() -> Net {
    let mut net = Net::new(2);
    net.start_mesh(&[PUBLISHER, RUNNER], &[PUBLISHER, RUNNER]);
    net.wait_mesh(&[PUBLISHER, RUNNER]);
    net
}

/// The data directories of a [`pair`]: (publisher, runner).
fn pair_dirs(net: &Net) -> (PathBuf, PathBuf) {
    (
        net.nodes[PUBLISHER].dir.clone(),
        net.nodes[RUNNER].dir.clone(),
    )
}

/// Publishes `extra` on the publisher of `net`, then the runner bids `price` once it knows
/// the seed; returns the seed id.
#[track_caller]
fn publish_and_bid(net: &Net, extra: &[&str], price: &str) -> String {
    let (pdir, rdir) = pair_dirs(net);
    let id = publish(&net.sandbox, &pdir, extra);
    net.wait_seed(RUNNER, &id, "knows the seed", |_| true);
    net.sandbox
        .run(&rdir, &["seed", "bid", &id, "--price", price])
        .ok();
    id
}

/// Waits until the runner of `net` sees the seed awarded to itself; returns its view.
#[track_caller]
fn wait_runner_award(net: &Net, id: &str) -> Value {
    let me = net.id(RUNNER).to_owned();
    net.wait_seed(RUNNER, id, "learns that it won", |v| {
        v["award"]["winner_node"] == me.as_str()
    })
}

/// The CLI-specific ways to run commands in a sandbox.
impl Sandbox {
    /// Runs `crabnet --data-dir DIR ARGS...`.
    fn run(&self, dir: &Path, args: &[&str]) -> Out {
        let mut cmd = self.command();
        cmd.arg("--data-dir").arg(dir).args(args);
        let mut shown = vec!["--data-dir".to_string(), dir.display().to_string()];
        shown.extend(args.iter().map(|s| s.to_string()));
        run(cmd, shown)
    }

    /// Runs `crabnet ARGS...` with extra environment variables.
    fn run_env(&self, env: &[(&str, &Path)], args: &[&str]) -> Out {
        let mut cmd = self.command();
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(args);
        let mut shown: Vec<String> = env
            .iter()
            .map(|(k, v)| format!("{k}={}", v.display()))
            .collect();
        shown.extend(args.iter().map(|s| s.to_string()));
        run(cmd, shown)
    }

    /// Starts `crabnet --data-dir DIR listen ...` (UDP, the dashboard on a free port) in the
    /// background; its stdout and stderr go to files in the sandbox. The process is killed
    /// when `guard` is dropped.
    fn spawn_listener(
        &self,
        guard: &mut Listeners,
        name: &str,
        dir: &Path,
        bind: &str,
        peers: &[&str],
    ) -> usize {
        let mut cmd = self.command();
        cmd.arg("--data-dir")
            .arg(dir)
            .args(["listen", "--transport", "udp", "--bind", bind])
            .args(["--http", "127.0.0.1:0"]);
        for p in peers {
            cmd.args(["--peer", p]);
        }
        guard.spawn(name, cmd, self.path())
    }
}

/// Runs a prepared command with [`COMMAND_TIMEOUT`], and checks that every successful
/// `--json` invocation prints valid JSON.
fn run(cmd: Command, args: Vec<String>) -> Out {
    let out = run_bounded_within(cmd, args, COMMAND_TIMEOUT);
    if out.success() && out.args.iter().any(|a| a == "--json") {
        if out.args.iter().any(|a| a == "events") {
            out.json_lines();
        } else {
            out.json();
        }
    }
    out
}

/// A free UDP port on 127.0.0.1 (reserved, then released).
fn free_udp_port() -> u16 {
    reserve_port().local_addr().unwrap().port()
}

/// Publishes a seed in text mode and returns its id, checking that the id is printed alone.
#[track_caller]
fn publish(sb: &Sandbox, dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["seed", "publish"];
    args.extend_from_slice(extra);
    let out = sb.run(dir, &args).ok();
    let id = out.stdout.trim_end_matches('\n');
    assert!(
        is_hex(id, 32) && !id.contains('\n'),
        "publish must print only the 32-hex seed id on stdout, got {:?}",
        out.stdout
    );
    id.to_owned()
}

/// Publishes `echo x` with a bid window of `window` seconds that closes after `max_bids` bids.
#[track_caller]
fn publish_echo_x(sb: &Sandbox, dir: &Path, window: &str, max_bids: &str) -> String {
    let args = [
        "--command",
        "echo x",
        "--bid-window",
        window,
        "--max-bids",
        max_bids,
    ];
    publish(sb, dir, &args)
}

/// `seed show ID --json`.
#[track_caller]
fn show(sb: &Sandbox, dir: &Path, id: &str) -> Value {
    sb.run(dir, &["--json", "seed", "show", id]).ok().json()
}

/// Runs a text-mode seed command (`args`) on seed `id` in `dir`, checks that it printed
/// exactly `said`, and returns the seed's view after it.
#[track_caller]
fn seed_command(sb: &Sandbox, dir: &Path, args: &[&str], said: &str, id: &str) -> Value {
    let out = sb.run(dir, args).ok();
    assert_eq!(out.stdout.trim(), said, "{}", out.describe());
    show(sb, dir, id)
}

/// Waits until `crabnet peers` in `dir` lists `peer` (its hello was verified): nodes accept
/// messages only from peers they know.
#[track_caller]
fn wait_for_peer(sb: &Sandbox, dir: &Path, peer: &str) {
    let want = [peer.to_owned()];
    wait_until(
        &format!("{} learns peer {peer}", dir.display()),
        Instant::now() + CONVERGE_TIMEOUT,
        String::new,
        || peers_known(sb.run(dir, &["--json", "peers"]), &want),
    )
}

/// The node id of a data directory (`status --json`).
#[track_caller]
fn node_id(sb: &Sandbox, dir: &Path) -> String {
    let v = sb.run(dir, &["--json", "status"]).ok().json();
    node_id_in(&v, "status")
}

/// Asserts a failing command in text mode (non-zero exit, nothing on stdout, exactly one
/// `error: ...` line on stderr containing every `needle`) and then the same command with
/// `--json` (a JSON error object with `kind` on stdout).
#[track_caller]
fn expect_error(sb: &Sandbox, dir: &Path, args: &[&str], kind: &str, needles: &[&str]) {
    let out = sb.run(dir, args);
    assert!(!out.success(), "expected failure: {}", out.describe());
    assert_eq!(
        out.status.code(),
        Some(1),
        "runtime errors exit with 1: {}",
        out.describe()
    );
    assert_eq!(
        out.stdout,
        "",
        "text-mode errors print nothing on stdout: {}",
        out.describe()
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "stderr must be exactly one `error:` line: {}",
        out.describe()
    );
    assert!(
        lines[0].starts_with("error: "),
        "stderr must start with `error: `: {}",
        out.describe()
    );
    for n in needles {
        assert!(
            lines[0].contains(n),
            "error message should mention {n:?}: {}",
            out.describe()
        );
    }

    let mut json_args = vec!["--json"];
    json_args.extend_from_slice(args);
    let out = sb.run(dir, &json_args);
    assert!(!out.success(), "expected failure: {}", out.describe());
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    let v = out.json();
    assert_eq!(
        v["error"]["kind"],
        kind,
        "wrong error kind: {}",
        out.describe()
    );
    let message = v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {}", out.describe()));
    for n in needles {
        assert!(
            message.contains(n),
            "JSON error message should mention {n:?}: {}",
            out.describe()
        );
    }
    assert!(
        out.stderr.lines().any(|l| l.starts_with("error: ")),
        "--json errors still say `error:` on stderr: {}",
        out.describe()
    );
}

/// [`expect_error`] for a lifecycle rule (errors of kind `state`).
#[track_caller]
fn expect_state_error(sb: &Sandbox, dir: &Path, args: &[&str], needles: &[&str]) {
    expect_error(sb, dir, args, "state", needles);
}

/// Polls `seed show ID --json` in `dir` until `pred` holds or the deadline passes.
#[track_caller]
fn wait_for_seed(
    sb: &Sandbox,
    listeners: &Listeners,
    dir: &Path,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    wait_until(
        &format!("{} {what}", dir.display()),
        Instant::now() + CONVERGE_TIMEOUT,
        || listeners.logs(),
        || seed_view_if(sb.run(dir, &["--json", "seed", "show", id]), &pred),
    )
}

/// The event types of one seed's lifecycle to settlement, in order.
const LIFECYCLE_EVENTS: [&str; 7] = [
    "seed_published",
    "bid_placed",
    "bidding_closed",
    "seed_claimed",
    "task_started",
    "result_recorded",
    "seed_settled",
];

fn event_types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

#[test]
fn init_prints_node_id_and_second_init_keeps_it() {
    let (sb, dir) = one_node();

    let first = sb.run(&dir, &["init"]).ok();
    assert!(
        first.stdout.starts_with("initialized node "),
        "{}",
        first.describe()
    );
    let id = first
        .stdout
        .split_whitespace()
        .find(|w| is_hex(w, 64))
        .unwrap_or_else(|| panic!("init must print the 64-hex node id: {}", first.describe()))
        .to_owned();
    assert!(
        first.stdout.contains(&dir.display().to_string()),
        "{}",
        first.describe()
    );
    assert!(dir.join("crabnet.db").exists(), "init creates the database");

    let second = sb.run(&dir, &["init"]).ok();
    assert!(
        second.stdout.contains("already initialized"),
        "a second init says so: {}",
        second.describe()
    );
    assert!(
        second.stdout.contains(&id),
        "a second init keeps the node id: {}",
        second.describe()
    );

    let third = sb.run(&dir, &["--json", "init"]).ok().json();
    assert_eq!(third["node_id"], id.as_str());
    assert_eq!(third["created"], false);
    assert_eq!(third["data_dir"], dir.display().to_string().as_str());

    assert_eq!(node_id(&sb, &dir), id, "status reports the same node id");

    let fresh = sb.dir("fresh");
    let v = sb.run(&fresh, &["--json", "init"]).ok().json();
    assert_eq!(v["created"], true);
    assert!(is_hex(v["node_id"].as_str().unwrap(), 64));
    assert_ne!(
        v["node_id"],
        id.as_str(),
        "every data directory gets its own identity"
    );
}

#[test]
fn lifecycle_between_a_publisher_and_a_runner() {
    let mut net = pair();
    let sb = &net.sandbox;
    let (pdir, dir) = pair_dirs(&net);
    let publisher = net.id(PUBLISHER).to_owned();
    let me = net.id(RUNNER).to_owned();

    for d in [&pdir, &dir] {
        let status = sb.run(d, &["--json", "status"]).ok().json();
        for s in [
            "open",
            "claimed",
            "completed",
            "settled",
            "expired",
            "cancelled",
        ] {
            assert_eq!(
                status["seeds_by_status"][s], 0,
                "fresh node has no {s} seeds: {status}"
            );
        }
    }

    // Publish: text mode prints the id alone.
    let id = publish(
        sb,
        &pdir,
        &[
            "--command",
            "echo hello-from-test",
            "--max-bids",
            "1",
            "--min-price",
            "2",
            "--max-price",
            "50",
        ],
    );
    let v = show(sb, &pdir, &id);
    assert_eq!(v["seed"]["id"], id.as_str());
    assert_eq!(v["seed"]["publisher"], publisher.as_str());
    assert_eq!(v["seed"]["command"], "echo hello-from-test");
    assert_eq!(v["seed"]["max_bids"], 1);
    assert_eq!(v["status"], "open");
    assert_eq!(v["bids"].as_array().unwrap().len(), 0);
    assert!(v["award"].is_null());
    let v = net.wait_seed(RUNNER, &id, "knows the seed", |_| true);
    assert_eq!(v["seed"]["publisher"], publisher.as_str());

    // The publisher may not bid on its own seed.
    expect_state_error(
        sb,
        &pdir,
        &["seed", "bid", &id, "--price", "7"],
        &[&format!("the publisher of seed {id} may not bid on it")],
    );

    // The runner bids; max-bids 1: the publisher's node closes bidding at once.
    let out = sb.run(&dir, &["seed", "bid", &id, "--price", "7"]).ok();
    assert_eq!(
        out.stdout.trim(),
        format!("bid 7 on seed {id} (status: open)"),
        "{}",
        out.describe()
    );
    let v = wait_runner_award(&net, &id);
    assert_eq!(v["bids"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["bids"][0]["price"], 7);
    assert_eq!(v["bids"][0]["bidder"], me.as_str());
    assert_eq!(
        v["award"]["winner_node"],
        me.as_str(),
        "publisher named the winner: {v}"
    );
    assert_eq!(v["award"]["price"], 7);
    assert_eq!(v["award"]["winner"], v["bids"][0]["id"]);

    // Claim.
    let said = format!("claimed seed {id} (status: claimed)");
    let v = seed_command(sb, &dir, &["seed", "claim", &id], &said, &id);
    assert_eq!(v["status"], "claimed");
    assert_eq!(v["claim"]["claimer"], me.as_str());

    // Run.
    let expected_sha = sha256_hex(b"hello-from-test\n");
    let out = sb.run(&dir, &["seed", "run", &id]).ok();
    let first = out.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("ran seed {id}: success (exit 0)")),
        "{}",
        out.describe()
    );
    assert!(first.contains("16 bytes of output"), "{}", out.describe());
    assert!(first.contains(&expected_sha), "{}", out.describe());
    assert!(
        out.stdout.lines().any(|l| l == "hello-from-test"),
        "run prints the output: {}",
        out.describe()
    );

    let v = show(sb, &dir, &id);
    assert_eq!(v["status"], "completed");
    assert_eq!(v["result"]["success"], true);
    assert_eq!(v["result"]["exit_code"], 0);
    assert_eq!(v["result"]["timed_out"], false);
    assert_eq!(v["result"]["runner"], me.as_str());
    assert_eq!(v["result"]["output_sha256"], expected_sha.as_str());
    assert_eq!(v["result"]["output_bytes"], 16);
    assert_eq!(v["result"]["output_excerpt"], "hello-from-test\n");

    // Settle, once the publisher has the result.
    net.wait_status(PUBLISHER, &id, "completed");
    let said = format!("settled seed {id}: accepted (status: settled)");
    let args = ["seed", "settle", &id, "--note", "thanks"];
    let v = seed_command(sb, &pdir, &args, &said, &id);
    assert_eq!(v["status"], "settled");
    assert_eq!(v["settlement"]["outcome"], "accepted");
    assert_eq!(
        v["settlement"]["amount"], 7,
        "amount is the winning bid price: {v}"
    );
    assert_eq!(v["settlement"]["note"], "thanks");
    let v = net.wait_status(RUNNER, &id, "settled");
    assert_eq!(v["settlement"]["note"], "thanks");

    // From here on the runner's replica is read at rest: its listener stops cleanly, so that
    // the event log and the database hold the same events.
    net.stop(RUNNER);
    let sb = &net.sandbox;

    // Text-mode show mentions the essentials.
    let text = sb.run(&dir, &["seed", "show", &id]).ok().stdout;
    assert!(
        text.contains(&id) && text.contains("settled") && text.contains("echo hello-from-test"),
        "{text}"
    );

    // List.
    let list = sb.run(&dir, &["--json", "seed", "list"]).ok().json();
    let list = list.as_array().expect("list is an array");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["seed"]["id"], id.as_str());
    assert_eq!(list[0]["status"], "settled");
    let settled = sb
        .run(&dir, &["--json", "seed", "list", "--status", "settled"])
        .ok()
        .json();
    assert_eq!(settled.as_array().unwrap().len(), 1);
    let open = sb
        .run(&dir, &["--json", "seed", "list", "--status", "open"])
        .ok()
        .json();
    assert_eq!(open.as_array().unwrap().len(), 0);
    let text = sb.run(&dir, &["seed", "list"]).ok().stdout;
    assert!(
        text.lines()
            .any(|l| l.starts_with(&id) && l.contains("settled")),
        "{text}"
    );

    // Events: the lifecycle in order, with increasing sequence numbers.
    let events = sb.run(&dir, &["--json", "events"]).ok().json_lines();
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq must increase: {seqs:?}"
    );
    // The runner saw the whole lifecycle: its own steps and the publisher's.
    let domain: Vec<&Value> = events
        .iter()
        .filter(|e| LIFECYCLE_EVENTS.contains(&e["type"].as_str().unwrap_or("")))
        .collect();
    let types: Vec<&str> = domain.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        LIFECYCLE_EVENTS,
        "all events: {:?}",
        event_types(&events)
    );
    for e in &domain {
        assert_eq!(e["seed_id"], id.as_str(), "{e}");
    }
    assert_eq!(domain[1]["price"], 7);
    assert_eq!(domain[2]["winner_node"], me.as_str());
    assert_eq!(domain[5]["output_sha256"], expected_sha.as_str());
    assert_eq!(domain[6]["amount"], 7);

    // `--since` skips earlier events.
    let since = seqs[2];
    let later = sb
        .run(&dir, &["--json", "events", "--since", &since.to_string()])
        .ok()
        .json_lines();
    assert_eq!(later.len(), events.len() - 3);
    assert!(later.iter().all(|e| e["seq"].as_u64().unwrap() > since));
    // A cursor at or past the last event lists nothing, also beyond i64::MAX (no wrap-around).
    let last = *seqs.last().unwrap();
    for beyond in [last, 1u64 << 63, u64::MAX] {
        let out = sb
            .run(&dir, &["--json", "events", "--since", &beyond.to_string()])
            .ok()
            .json_lines();
        assert!(out.is_empty(), "--since {beyond}: {out:?}");
    }

    // The NDJSON log in the data directory holds the same events.
    let log = std::fs::read_to_string(dir.join("events.ndjson")).expect("events.ndjson exists");
    let logged: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line ({e}): {l}")))
        .collect();
    assert_eq!(
        logged, events,
        "events.ndjson must hold exactly the events `events --json` lists"
    );

    // Status counts.
    let status = sb.run(&dir, &["--json", "status"]).ok().json();
    assert_eq!(status["node_id"], me.as_str());
    assert_eq!(status["seeds_by_status"]["settled"], 1, "{status}");
    for s in ["open", "claimed", "completed", "expired", "cancelled"] {
        assert_eq!(status["seeds_by_status"][s], 0, "{status}");
    }
    assert_eq!(status["last_event_seq"], *seqs.last().unwrap());
    assert!(is_hex(status["state_digest"].as_str().unwrap(), 64));
    let text = sb.run(&dir, &["status"]).ok().stdout;
    assert!(text.contains(&me) && text.contains("settled 1"), "{text}");
}

#[test]
fn run_of_a_quick_command_finishes_cleanly() {
    let net = pair();
    let (sb, (_, dir)) = (&net.sandbox, pair_dirs(&net));
    let id = publish_and_bid(&net, &["--command", "echo quick", "--max-bids", "1"], "1");
    wait_runner_award(&net, &id);
    sb.run(&dir, &["seed", "claim", &id]).ok();
    let started = Instant::now();
    let out = sb.run(&dir, &["seed", "run", &id]).ok();
    let took = started.elapsed();
    assert!(
        out.stdout.contains("success (exit 0)"),
        "{}",
        out.describe()
    );
    // The task's output pipe must reach EOF when `echo` exits; a leaked write end makes the
    // runner wait out its drain grace period and stop collecting output.
    assert!(
        !out.stderr.contains("output pipe still open"),
        "running `echo` must not report a leaked output pipe (run took {took:?}): {}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("WARN"),
        "a clean run logs no warnings: {}",
        out.describe()
    );
}

#[test]
fn successful_commands_print_nothing_on_stderr() {
    // With max-bids 1 the bid closes bidding; the publisher's listener closes it while CLI
    // processes on both data directories read and write, which must not surface as a warning.
    let net = pair();
    let (sb, (pdir, dir)) = (&net.sandbox, pair_dirs(&net));
    let quiet = |dir: &Path, args: &[&str]| {
        let out = sb.run(dir, args).ok();
        assert_eq!(
            out.stderr,
            "",
            "stderr of a successful command: {}",
            out.describe()
        );
        out
    };
    for i in 0..8 {
        let out = quiet(
            &pdir,
            &["seed", "publish", "--command", "echo x", "--max-bids", "1"],
        );
        let id = out.stdout.trim().to_owned();
        net.wait_seed(RUNNER, &id, "knows the seed", |_| true);
        let price = (i + 1).to_string();
        quiet(&dir, &["seed", "bid", &id, "--price", &price]);
        wait_runner_award(&net, &id);
        for args in [
            &["seed", "claim", &id][..],
            &["seed", "show", &id][..],
            &["seed", "list"][..],
            &["status"][..],
        ] {
            quiet(&dir, args);
        }
        for args in [
            &["seed", "show", &id][..],
            &["seed", "list"][..],
            &["status"][..],
        ] {
            quiet(&pdir, args);
        }
    }
}

#[test]
fn failed_task_is_recorded_and_can_be_rejected() {
    let net = pair();
    let (sb, (pdir, dir)) = (&net.sandbox, pair_dirs(&net));
    let id = publish_and_bid(
        &net,
        &[
            "--command",
            "echo out; echo err >&2; exit 3",
            "--max-bids",
            "1",
        ],
        "4",
    );
    wait_runner_award(&net, &id);
    sb.run(&dir, &["seed", "claim", &id]).ok();
    let out = sb.run(&dir, &["seed", "run", &id]);
    assert!(
        out.stdout
            .starts_with(&format!("ran seed {id}: failure (exit 3)")),
        "{}",
        out.describe()
    );
    let v = show(sb, &dir, &id);
    assert_eq!(
        v["status"], "completed",
        "a failed run is still a result: {v}"
    );
    assert_eq!(v["result"]["success"], false);
    assert_eq!(v["result"]["exit_code"], 3);
    assert_eq!(v["result"]["timed_out"], false);
    // stdout and stderr are captured together, in write order.
    assert_eq!(v["result"]["output_excerpt"], "out\nerr\n");
    assert_eq!(
        v["result"]["output_sha256"],
        sha256_hex(b"out\nerr\n").as_str()
    );
    // Only the claimer runs, and only once.
    expect_state_error(
        sb,
        &dir,
        &["seed", "run", &id],
        &["cannot run", "completed"],
    );

    // The publisher rejects the failed result (and may not run it either).
    net.wait_status(PUBLISHER, &id, "completed");
    expect_state_error(
        sb,
        &pdir,
        &["seed", "run", &id],
        &["cannot run", "completed"],
    );
    let long_note = "n".repeat(3000);
    expect_error(
        sb,
        &pdir,
        &["seed", "settle", &id, "--note", &long_note],
        "validation",
        &["note is 3000 bytes"],
    );
    let said = format!("settled seed {id}: rejected (status: settled)");
    let args = ["seed", "settle", &id, "--reject", "--note", "exit 3"];
    let v = seed_command(sb, &pdir, &args, &said, &id);
    assert_eq!(v["settlement"]["outcome"], "rejected");
    assert_eq!(v["settlement"]["amount"], 0);
    assert_eq!(v["settlement"]["note"], "exit 3");
    expect_state_error(
        sb,
        &pdir,
        &["seed", "settle", &id],
        &["cannot settle", "settled"],
    );
    let v = net.wait_status(RUNNER, &id, "settled");
    assert_eq!(v["settlement"]["outcome"], "rejected");
}

#[test]
fn bidding_closes_at_window_end_with_the_bids_in() {
    let net = pair();
    let (sb, (pdir, dir)) = (&net.sandbox, pair_dirs(&net));
    let me = net.id(RUNNER);
    // A window long enough for the runner to learn the seed and bid, on a loaded machine.
    let id = publish_echo_x(sb, &pdir, "3", "5");
    net.wait_seed(RUNNER, &id, "knows the seed", |_| true);
    let v = sb
        .run(&dir, &["--json", "seed", "bid", &id, "--price", "4"])
        .ok()
        .json();
    assert!(v["award"].is_null(), "1 of 5 bids: still open: {v}");
    // The publisher's node closes bidding once the window has ended, with the bid in.
    let v = net.wait_seed(PUBLISHER, &id, "closes bidding", |v| !v["award"].is_null());
    assert_eq!(v["status"], "open", "awarded, waiting for the claim: {v}");
    assert_eq!(v["award"]["winner_node"], me, "{v}");
    assert_eq!(v["award"]["price"], 4);
    assert_eq!(v["award"]["considered"].as_array().unwrap().len(), 1, "{v}");
    assert!(
        v["award"]["closed_at"].as_u64().unwrap()
            >= v["seed"]["created_at"].as_u64().unwrap() + 3000,
        "closed at the window's end: {v}"
    );
    wait_runner_award(&net, &id);
    let out = sb.run(&dir, &["seed", "claim", &id]).ok();
    assert!(out.stdout.contains("claimed"), "{}", out.describe());
}

#[test]
fn json_output_parses_for_every_command() {
    let net = pair();
    let (sb, (pdir, dir)) = (&net.sandbox, pair_dirs(&net));
    let me = net.id(RUNNER);

    let v = sb
        .run(
            &pdir,
            &[
                "--json",
                "seed",
                "publish",
                "--command",
                "printf json-run",
                "--max-bids",
                "1",
            ],
        )
        .ok()
        .json();
    let id = v["seed"]["id"]
        .as_str()
        .expect("publish --json returns the seed view")
        .to_owned();
    assert!(is_hex(&id, 32));
    assert_eq!(v["status"], "open");

    net.wait_seed(RUNNER, &id, "knows the seed", |_| true);
    let v = sb
        .run(&dir, &["--json", "seed", "bid", &id, "--price", "3"])
        .ok()
        .json();
    assert_eq!(v["seed"]["id"], id.as_str());
    assert_eq!(v["bids"][0]["price"], 3);
    assert_eq!(v["bids"][0]["bidder"], me);
    let v = wait_runner_award(&net, &id);
    assert_eq!(v["award"]["winner_node"], me);

    let v = sb.run(&dir, &["--json", "seed", "claim", &id]).ok().json();
    assert_eq!(v["status"], "claimed");

    let v = sb.run(&dir, &["--json", "seed", "run", &id]).ok().json();
    assert_eq!(v["status"], "completed");
    assert_eq!(
        v["result"]["output_sha256"],
        sha256_hex(b"json-run").as_str()
    );

    // The rest happens on the publisher.
    let dir = pdir;
    net.wait_status(PUBLISHER, &id, "completed");
    let v = sb
        .run(
            &dir,
            &[
                "--json", "seed", "settle", &id, "--reject", "--note", "nope",
            ],
        )
        .ok()
        .json();
    assert_eq!(v["status"], "settled");
    assert_eq!(v["settlement"]["outcome"], "rejected");
    assert_eq!(v["settlement"]["amount"], 0, "a rejection is worth nothing");

    let other = publish(sb, &dir, &["--command", "true"]);
    let v = sb
        .run(&dir, &["--json", "seed", "cancel", &other])
        .ok()
        .json();
    assert_eq!(v["status"], "cancelled");

    let v = sb.run(&dir, &["--json", "seed", "show", &id]).ok().json();
    assert_eq!(v["seed"]["id"], id.as_str());
    let v = sb.run(&dir, &["--json", "seed", "list"]).ok().json();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(
        v[0]["seed"]["id"],
        other.as_str(),
        "list is newest first: {v}"
    );
    assert_eq!(v[1]["seed"]["id"], id.as_str(), "list is newest first: {v}");
    let v = sb
        .run(&dir, &["--json", "seed", "list", "--status", "cancelled"])
        .ok()
        .json();
    assert_eq!(v.as_array().unwrap().len(), 1);
    let v = sb.run(&dir, &["--json", "status"]).ok().json();
    assert_eq!(v["seeds_by_status"]["settled"], 1);
    assert_eq!(v["seeds_by_status"]["cancelled"], 1);
    let events = sb.run(&dir, &["--json", "events"]).ok().json_lines();
    assert!(!events.is_empty());
    for e in &events {
        assert!(
            e["seq"].is_u64() && e["at"].is_u64() && e["type"].is_string(),
            "{e}"
        );
    }
}

#[test]
fn data_dir_from_environment_variable() {
    let sb = sandbox();
    let dir = sb.dir("env-node");
    let env = [("CRABNET_DATA_DIR", dir.as_path())];

    let status = sb.run_env(&env, &["--json", "status"]).ok().json();
    assert_eq!(status["data_dir"], dir.display().to_string().as_str());
    assert!(
        dir.join("crabnet.db").exists(),
        "the env var's directory is used"
    );

    let out = sb
        .run_env(&env, &["seed", "publish", "--command", "echo env"])
        .ok();
    let id = out.stdout.trim().to_owned();
    assert!(is_hex(&id, 32), "{}", out.describe());

    // The same directory through --data-dir sees the same node and seed.
    assert_eq!(node_id(&sb, &dir), status["node_id"].as_str().unwrap());
    let v = show(&sb, &dir, &id);
    assert_eq!(v["seed"]["command"], "echo env");

    // And back through the env var.
    let list = sb.run_env(&env, &["--json", "seed", "list"]).ok().json();
    assert_eq!(list[0]["seed"]["id"], id.as_str());
    let v = sb
        .run_env(&env, &["--json", "seed", "show", &id])
        .ok()
        .json();
    assert_eq!(v["status"], "open");

    // --data-dir wins over the environment variable.
    let other = sb.dir("flag-node");
    let mut args = vec!["--data-dir", other.to_str().unwrap(), "--json", "status"];
    let status2 = sb.run_env(&env, &args).ok().json();
    assert_eq!(status2["data_dir"], other.display().to_string().as_str());
    assert_ne!(status2["node_id"], status["node_id"]);
    args.truncate(2);
    args.extend(["seed", "show", id.as_str()]);
    let out = sb.run_env(&env, &args);
    assert!(
        !out.success(),
        "the seed is not in the --data-dir node: {}",
        out.describe()
    );
}

#[test]
fn config_file_is_read_and_bad_config_is_a_one_line_error() {
    let (sb, dir) = one_node();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), "name = \"alpha\"\n").unwrap();
    let v = sb.run(&dir, &["--json", "status"]).ok().json();
    assert_eq!(v["name"], "alpha", "<data-dir>/config.toml is read: {v}");

    let other = sb.dir("other.toml");
    std::fs::write(&other, "name = \"beta\"\n").unwrap();
    let v = sb
        .run(
            &dir,
            &["--config", other.to_str().unwrap(), "--json", "status"],
        )
        .ok()
        .json();
    assert_eq!(
        v["name"], "beta",
        "--config wins over <data-dir>/config.toml: {v}"
    );

    // A typo in the config file is reported as one line naming the file and the key.
    std::fs::write(dir.join("config.toml"), "nmae = \"typo\"\n").unwrap();
    expect_error(&sb, &dir, &["status"], "config", &["config.toml", "nmae"]);
}

#[test]
fn errors_for_unknown_and_malformed_ids() {
    let (sb, dir) = one_node();
    node_id(&sb, &dir);
    let unknown = "0123456789abcdef0123456789abcdef";
    expect_error(
        &sb,
        &dir,
        &["seed", "show", unknown],
        "not_found",
        &["unknown seed", unknown],
    );
    expect_error(
        &sb,
        &dir,
        &["seed", "bid", unknown, "--price", "5"],
        "not_found",
        &[unknown],
    );
    expect_error(
        &sb,
        &dir,
        &["seed", "claim", unknown],
        "not_found",
        &[unknown],
    );
    expect_error(
        &sb,
        &dir,
        &["seed", "run", unknown],
        "not_found",
        &[unknown],
    );
    expect_error(
        &sb,
        &dir,
        &["seed", "settle", unknown],
        "not_found",
        &[unknown],
    );
    expect_error(
        &sb,
        &dir,
        &["seed", "cancel", unknown],
        "not_found",
        &[unknown],
    );

    expect_error(
        &sb,
        &dir,
        &["seed", "show", "xyz"],
        "validation",
        &["xyz", "32 lowercase hex"],
    );
    let upper = "0123456789ABCDEF0123456789ABCDEF";
    expect_error(
        &sb,
        &dir,
        &["seed", "bid", upper, "--price", "5"],
        "validation",
        &[upper],
    );
    expect_error(
        &sb,
        &dir,
        &["seed", "show", &unknown[..31]],
        "validation",
        &["32 lowercase hex"],
    );
}

#[test]
fn errors_for_invalid_input() {
    let (sb, dir) = one_node();
    node_id(&sb, &dir);

    expect_error(
        &sb,
        &dir,
        &["seed", "list", "--status", "bogus"],
        "validation",
        &["bogus", "open"],
    );
    let long_command = "e".repeat(9000);
    let long_description = "d".repeat(5000);
    // Arguments after `seed publish`, and what the error names.
    let refused: [(&[&str], &[&str]); 8] = [
        (&["--command", ""], &["command", "empty"]),
        (&["--command", "   "], &["command", "empty"]),
        (
            &[
                "--command",
                "echo x",
                "--min-price",
                "10",
                "--max-price",
                "5",
            ],
            &["10", "5", "price"],
        ),
        (
            &["--command", "echo x", "--bid-window", "0"],
            &["bid window"],
        ),
        (&["--command", "echo x", "--max-bids", "0"], &["max bids"]),
        (&["--command", &long_command], &["command is 9000 bytes"]),
        (
            &["--command", "echo x", "--description", &long_description],
            &["description"],
        ),
        (&["--command", "echo x", "--timeout", "0"], &["timeout"]),
    ];
    for (args, needles) in refused {
        let args: Vec<&str> = ["seed", "publish"].iter().chain(args).copied().collect();
        expect_error(&sb, &dir, &args, "validation", needles);
    }
    // None of the refused publications left a seed behind.
    let list = sb.run(&dir, &["--json", "seed", "list"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    // libp2p's flags on a UDP listener: refused before anything binds.
    for flag in [&["--quic"][..], &["--mdns"]] {
        let args: Vec<&str> = ["listen", "--transport", "udp", "--bind", "127.0.0.1:0"]
            .iter()
            .chain(flag)
            .copied()
            .collect();
        expect_error(
            &sb,
            &dir,
            &args,
            "validation",
            &[flag[0], "--transport dht"],
        );
    }
}

/// Issue 12/15: every numeric flag of `seed publish` at hostile values (0, negative, u64::MAX,
/// 2^63, non-numbers). Each run either publishes (the value is valid) or exits with 1 or 2
/// (never a panic's 101) with a message naming the flag, and a refused run stores nothing.
#[test]
fn publish_flags_out_of_range_are_named_errors() {
    let (sb, dir) = one_node();
    node_id(&sb, &dir);
    let flags = [
        "min-price",
        "max-price",
        "bid-window",
        "max-bids",
        "timeout",
        "claim-window",
        "result-grace",
        "settle-window",
        "replicas",
        "quorum",
        "max-replicas",
    ];
    let huge = u64::MAX.to_string();
    let two_63 = (1u64 << 63).to_string();
    let values = ["0", "-1", &huge, &two_63, "abc", "1e3", ""];
    let mut published = 0;
    let mut unnamed = Vec::new();
    for flag in flags {
        for value in values {
            let option = format!("--{flag}");
            let args = [
                "--json",
                "seed",
                "publish",
                "--command",
                "echo x",
                &option,
                value,
            ];
            let out = sb.run(&dir, &args);
            assert!(
                !out.stderr.contains("panicked") && out.status.code() != Some(101),
                "panicked: {}",
                out.describe()
            );
            if out.success() {
                published += 1;
                continue;
            }
            assert!(
                matches!(out.status.code(), Some(1) | Some(2)),
                "exit code: {}",
                out.describe()
            );
            let stderr = out.stderr.to_lowercase();
            let named = [
                option.clone(),
                flag.replace('-', " "),
                flag.replace('-', "_"),
                // The library's word for the settle deadline.
                flag.replace("settle-", "settlement "),
            ]
            .iter()
            .any(|n| stderr.contains(n.as_str()));
            if !named {
                unnamed.push(out.describe());
            }
        }
    }
    assert!(
        unnamed.is_empty(),
        "errors that do not name their flag:\n{}",
        unnamed.join("\n")
    );
    // Only the accepted publications left a seed behind.
    let list = sb.run(&dir, &["--json", "seed", "list"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), published, "{list}");
    // Other numeric flags name themselves too (a negative value is not an unknown flag).
    let seed = "00".repeat(16);
    for args in [
        &["seed", "bid", seed.as_str(), "--price", "-1"][..],
        &["events", "--since", "-1"][..],
        &["events", "--limit", "-5"][..],
    ] {
        let out = sb.run(&dir, args);
        let option = args.iter().find(|a| a.starts_with("--")).unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", out.describe());
        let named = out.stderr.contains(&format!("'{option} <")) || out.stderr.contains(option);
        let unexpected = out.stderr.contains("unexpected argument");
        assert!(named && !unexpected, "{}", out.describe());
    }
}

#[test]
fn errors_for_bids_outside_the_price_range() {
    let net = pair();
    let (sb, (pdir, dir)) = (&net.sandbox, pair_dirs(&net));
    let id = publish(
        sb,
        &pdir,
        &[
            "--command",
            "echo x",
            "--min-price",
            "5",
            "--max-price",
            "10",
        ],
    );
    net.wait_seed(RUNNER, &id, "knows the seed", |_| true);
    expect_error(
        sb,
        &dir,
        &["seed", "bid", &id, "--price", "4"],
        "validation",
        &["price 4", "5..=10"],
    );
    expect_error(
        sb,
        &dir,
        &["seed", "bid", &id, "--price", "11"],
        "validation",
        &["price 11", "5..=10"],
    );
    assert_eq!(
        show(sb, &dir, &id)["bids"].as_array().unwrap().len(),
        0,
        "refused bids are not recorded"
    );
    // Boundaries are inclusive.
    sb.run(&dir, &["seed", "bid", &id, "--price", "10"]).ok();
    let v = net.wait_seed(PUBLISHER, &id, "has the bid", |v| {
        v["bids"].as_array().unwrap().len() == 1
    });
    assert_eq!(v["bids"][0]["price"], 10);
}

#[test]
fn errors_for_clap_usage() {
    let (sb, dir) = one_node();
    for args in [
        &["seed", "frobnicate"][..],
        &["frobnicate"][..],
        &["seed", "list", "--bogus"][..],
        &["--bogus", "status"][..],
        &["seed", "bid", "0123456789abcdef0123456789abcdef"][..], // missing --price
        &[
            "seed",
            "bid",
            "0123456789abcdef0123456789abcdef",
            "--price",
            "cheap",
        ][..],
        &["seed", "publish"][..], // missing --command
        &["listen", "--transport", "carrier-pigeon"][..],
    ] {
        let out = sb.run(&dir, args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "usage errors exit with 2: {}",
            out.describe()
        );
        assert_eq!(out.stdout, "", "{}", out.describe());
        assert!(out.stderr.starts_with("error: "), "{}", out.describe());
    }
    assert!(
        !dir.exists(),
        "usage errors must not create the data directory"
    );
}

#[test]
fn errors_for_lifecycle_violations() {
    let net = pair();
    let (sb, (pdir, dir)) = (&net.sandbox, pair_dirs(&net));
    let me = net.id(RUNNER);

    // Long window, five bids needed: bidding stays open.
    let open = publish_and_bid(
        &net,
        &[
            "--command",
            "echo x",
            "--bid-window",
            "3600",
            "--max-bids",
            "5",
        ],
        "6",
    );
    expect_state_error(
        sb,
        &dir,
        &["seed", "bid", &open, "--price", "6"],
        &["already bid", me],
    );
    // The publisher may not bid on its own seed.
    expect_state_error(
        sb,
        &pdir,
        &["seed", "bid", &open, "--price", "6"],
        &["the publisher of seed", &open, "may not bid on it"],
    );
    expect_state_error(sb, &dir, &["seed", "claim", &open], &["still open"]);
    expect_state_error(sb, &dir, &["seed", "run", &open], &["cannot run", "open"]);
    expect_state_error(
        sb,
        &pdir,
        &["seed", "settle", &open],
        &["cannot settle", "open"],
    );
    let v = net.wait_seed(PUBLISHER, &open, "has the bid", |v| {
        !v["bids"].as_array().unwrap().is_empty()
    });
    assert_eq!(v["status"], "open");
    assert_eq!(
        v["bids"].as_array().unwrap().len(),
        1,
        "the refused bids were not recorded: {v}"
    );
    assert!(v["award"].is_null());
    assert_eq!(show(sb, &dir, &open)["bids"].as_array().unwrap().len(), 1);

    // One bid closes bidding: no more bids, no cancel; the winner has not claimed, so it
    // may not run; nothing to settle yet.
    let closed = publish_and_bid(&net, &["--command", "echo x", "--max-bids", "1"], "8");
    assert_eq!(wait_runner_award(&net, &closed)["award"]["price"], 8);
    // (Where, the command, what its refusal says.)
    let refused: [(&Path, &[&str], &[&str]); 4] = [
        (&dir, &["seed", "bid", &closed, "--price", "8"], &[&closed]),
        (&pdir, &["seed", "cancel", &closed], &["bidding", "closed"]),
        (&dir, &["seed", "run", &closed], &["cannot run"]),
        (&pdir, &["seed", "settle", &closed], &["cannot settle"]),
    ];
    for (home, args, said) in refused {
        expect_state_error(sb, home, args, said);
    }

    // Claimed but not run: still nothing to settle; no second claim; no cancel.
    sb.run(&dir, &["seed", "claim", &closed]).ok();
    net.wait_status(PUBLISHER, &closed, "claimed");
    let refused: [(&Path, &[&str], &[&str]); 3] = [
        (
            &pdir,
            &["seed", "settle", &closed],
            &["cannot settle", "claimed"],
        ),
        (
            &dir,
            &["seed", "claim", &closed],
            &["cannot claim", "claimed"],
        ),
        (
            &pdir,
            &["seed", "cancel", &closed],
            &["cannot cancel", &closed, "claimed"],
        ),
    ];
    for (home, args, said) in refused {
        expect_state_error(sb, home, args, said);
    }
    assert_eq!(show(sb, &dir, &closed)["status"], "claimed");
    assert_eq!(show(sb, &pdir, &closed)["status"], "claimed");
}

#[test]
fn bidding_expires_without_bids() {
    let (sb, dir) = one_node();
    let id = publish_echo_x(&sb, &dir, "1", "3");
    thread::sleep(Duration::from_millis(1500));
    // The publisher's node closes due bidding when it starts, whatever the command.
    let v = show(&sb, &dir, &id);
    assert_eq!(v["status"], "expired", "{v}");
    assert!(
        v["award"].is_object(),
        "the expiry is recorded as an award without winner: {v}"
    );
    assert!(v["award"]["winner"].is_null());
    assert_eq!(v["bids"].as_array().unwrap().len(), 0);
    expect_state_error(
        &sb,
        &dir,
        &["seed", "bid", &id, "--price", "5"],
        &["expired"],
    );
    expect_state_error(&sb, &dir, &["seed", "cancel", &id], &["expired"]);
    let list = sb
        .run(&dir, &["--json", "seed", "list", "--status", "expired"])
        .ok()
        .json();
    assert_eq!(list[0]["seed"]["id"], id.as_str());
    let events = sb.run(&dir, &["--json", "events"]).ok().json_lines();
    let closed: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "bidding_closed")
        .collect();
    assert_eq!(closed.len(), 1, "{:?}", event_types(&events));
    assert!(closed[0]["winner"].is_null());
}

#[test]
fn cancel_while_open_then_bid_fails() {
    let net = pair();
    let (sb, (dir, runner)) = (&net.sandbox, pair_dirs(&net));
    let id = publish_and_bid(&net, &["--command", "echo x", "--bid-window", "600"], "5");
    net.wait_seed(PUBLISHER, &id, "has the bid", |v| {
        !v["bids"].as_array().unwrap().is_empty()
    });
    let said = format!("cancelled seed {id} (status: cancelled)");
    let v = seed_command(sb, &dir, &["seed", "cancel", &id], &said, &id);
    assert_eq!(v["status"], "cancelled");
    assert!(v["cancelled_at"].is_u64(), "{v}");
    net.wait_status(RUNNER, &id, "cancelled");
    expect_state_error(
        sb,
        &runner,
        &["seed", "bid", &id, "--price", "5"],
        &["cancelled"],
    );
    expect_state_error(sb, &runner, &["seed", "claim", &id], &["cancelled"]);
    expect_state_error(sb, &dir, &["seed", "cancel", &id], &["cancelled"]);
    let events = sb.run(&dir, &["--json", "events"]).ok().json_lines();
    assert!(event_types(&events).contains(&"seed_cancelled".to_string()));
    let status = sb.run(&dir, &["--json", "status"]).ok().json();
    assert_eq!(status["seeds_by_status"]["cancelled"], 1);
}

#[test]
fn two_nodes_over_udp() {
    let sb = sandbox();
    let (dir_a, dir_b, dir_c) = (sb.dir("a"), sb.dir("b"), sb.dir("c"));
    let (port_a, port_b, port_c) = (free_udp_port(), free_udp_port(), free_udp_port());
    let (addr_a, addr_b, addr_c) = (
        format!("127.0.0.1:{port_a}"),
        format!("127.0.0.1:{port_b}"),
        format!("127.0.0.1:{port_c}"),
    );
    let mut nodes = Listeners::default();
    let la = sb.spawn_listener(&mut nodes, "a", &dir_a, &addr_a, &[&addr_b, &addr_c]);
    let lb = sb.spawn_listener(&mut nodes, "b", &dir_b, &addr_b, &[&addr_a, &addr_c]);
    // C is a second bidder for the second seed.
    let lc = sb.spawn_listener(&mut nodes, "c", &dir_c, &addr_c, &[&addr_a, &addr_b]);
    let banner_a = nodes.wait_ready(la, COMMAND_TIMEOUT);
    let banner_b = nodes.wait_ready(lb, COMMAND_TIMEOUT);
    nodes.wait_ready(lc, COMMAND_TIMEOUT);
    assert!(banner_a.contains(&addr_a), "{banner_a}");
    assert!(banner_b.contains(&addr_b), "{banner_b}");

    // CLI commands work on a data directory while its listener runs.
    let id_a = node_id(&sb, &dir_a);
    let id_b = node_id(&sb, &dir_b);
    let id_c = node_id(&sb, &dir_c);
    assert_ne!(id_a, id_b);
    assert!(banner_a.contains(&id_a), "{banner_a}");
    for (dir, others) in [
        (&dir_a, [&id_b, &id_c]),
        (&dir_b, [&id_a, &id_c]),
        (&dir_c, [&id_a, &id_b]),
    ] {
        for peer in others {
            wait_for_peer(&sb, dir, peer);
        }
    }

    // A publishes through a separate CLI process; A's listener sends it from the outbox.
    let seed = publish(
        &sb,
        &dir_a,
        &[
            "--command",
            "echo two-node-test",
            "--max-bids",
            "1",
            "--bid-window",
            "120",
            "--min-price",
            "1",
            "--max-price",
            "20",
        ],
    );
    let v = wait_for_seed(&sb, &nodes, &dir_b, &seed, "knows the seed", |_| true);
    assert_eq!(v["seed"]["publisher"], id_a.as_str());
    assert_eq!(v["status"], "open");

    // B bids; A (the publisher) closes bidding and names B; B learns the award.
    sb.run(&dir_b, &["seed", "bid", &seed, "--price", "9"]).ok();
    let v = wait_for_seed(&sb, &nodes, &dir_a, &seed, "shows the award", |v| {
        !v["award"].is_null()
    });
    assert_eq!(v["award"]["winner_node"], id_b.as_str(), "{v}");
    assert_eq!(v["award"]["price"], 9);
    wait_for_seed(&sb, &nodes, &dir_b, &seed, "shows the award", |v| {
        v["award"]["winner_node"] == id_b.as_str()
    });

    // Only the winner may claim.
    expect_state_error(
        &sb,
        &dir_a,
        &["seed", "claim", &seed],
        &["not the winning bidder"],
    );
    sb.run(&dir_b, &["seed", "claim", &seed]).ok();
    // Only the claimer may run.
    expect_state_error(&sb, &dir_a, &["seed", "run", &seed], &["not the claimer"]);
    let out = sb.run(&dir_b, &["--json", "seed", "run", &seed]).ok();
    let expected_sha = sha256_hex(b"two-node-test\n");
    assert_eq!(out.json()["result"]["output_sha256"], expected_sha.as_str());

    let v = wait_for_seed(&sb, &nodes, &dir_a, &seed, "shows the result", |v| {
        v["status"] == "completed"
    });
    assert_eq!(v["result"]["success"], true);
    assert_eq!(v["result"]["runner"], id_b.as_str());
    assert_eq!(v["result"]["output_sha256"], expected_sha.as_str());
    assert_eq!(v["claim"]["claimer"], id_b.as_str());

    // Only the publisher may settle.
    expect_state_error(
        &sb,
        &dir_b,
        &["seed", "settle", &seed],
        &["only the publisher"],
    );
    let out = sb.run(&dir_a, &["seed", "settle", &seed]).ok();
    assert!(out.stdout.contains("accepted"), "{}", out.describe());
    let vb = wait_for_seed(&sb, &nodes, &dir_b, &seed, "shows the settlement", |v| {
        v["status"] == "settled"
    });
    assert_eq!(vb["settlement"]["amount"], 9);
    assert_eq!(vb["settlement"]["outcome"], "accepted");

    // Both replicas hold the same state of the seed.
    let va = show(&sb, &dir_a, &seed);
    assert_eq!(va, vb, "replicas must converge to the same seed state");

    // Two bidders on one seed: the lowest price wins. The publisher may not bid on it.
    let seed2 = publish(
        &sb,
        &dir_a,
        &[
            "--command",
            "echo second",
            "--max-bids",
            "2",
            "--bid-window",
            "120",
        ],
    );
    expect_state_error(
        &sb,
        &dir_a,
        &["seed", "bid", &seed2, "--price", "15"],
        &["may not bid on it"],
    );
    wait_for_seed(&sb, &nodes, &dir_c, &seed2, "knows the second seed", |_| {
        true
    });
    sb.run(&dir_c, &["seed", "bid", &seed2, "--price", "15"])
        .ok();
    wait_for_seed(&sb, &nodes, &dir_b, &seed2, "knows the second seed", |_| {
        true
    });
    sb.run(&dir_b, &["seed", "bid", &seed2, "--price", "12"])
        .ok();
    let v = wait_for_seed(&sb, &nodes, &dir_a, &seed2, "closes the second seed", |v| {
        !v["award"].is_null()
    });
    assert_eq!(
        v["award"]["winner_node"],
        id_b.as_str(),
        "lowest price wins: {v}"
    );
    assert_eq!(v["award"]["price"], 12);
    assert_eq!(v["award"]["considered"].as_array().unwrap().len(), 2);
    let bidders = strs(&v["bids"], "bidder");
    assert!(
        bidders.contains(&id_b.as_str()) && bidders.contains(&id_c.as_str()),
        "{v}"
    );
    let vb = wait_for_seed(
        &sb,
        &nodes,
        &dir_b,
        &seed2,
        "learns the second award",
        |v| !v["award"].is_null() && v["bids"].as_array().unwrap().len() == 2,
    );
    assert_eq!(vb["award"], v["award"]);

    // The listeners are still running and logged the lifecycle as events.
    for i in [la, lb, lc] {
        assert!(nodes.running(i), "listener died\n{}", nodes.logs());
    }
    let events_b = sb.run(&dir_b, &["--json", "events"]).ok().json_lines();
    let types = event_types(&events_b);
    for t in LIFECYCLE_EVENTS.into_iter().chain(["message_accepted"]) {
        assert!(
            types.iter().any(|x| x == t),
            "B's events lack {t}: {types:?}"
        );
    }
    // `nodes` drops here and kills both listeners.
}

#[test]
fn second_listener_on_same_data_dir_fails() {
    let (sb, dir) = one_node();
    let mut nodes = Listeners::default();
    let first = sb.spawn_listener(&mut nodes, "first", &dir, "127.0.0.1:0", &[]);
    nodes.wait_ready(first, COMMAND_TIMEOUT);
    let pid = nodes.procs[first].child.id().to_string();

    // A different port, so the failure is the data-directory lock and not the socket.
    let started = Instant::now();
    let out = sb.run(&dir, &["listen", "--bind", "127.0.0.1:0"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the second listener must fail at once"
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    assert_eq!(out.stdout, "", "{}", out.describe());
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.describe());
    assert!(lines[0].starts_with("error: "), "{}", out.describe());
    assert!(lines[0].contains("already listening"), "{}", out.describe());
    assert!(
        lines[0].contains(&dir.display().to_string()),
        "{}",
        out.describe()
    );
    assert!(
        lines[0].contains(&pid),
        "the error names the holder's pid: {}",
        out.describe()
    );

    let out = sb.run(&dir, &["--json", "listen", "--bind", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    assert_eq!(out.json()["error"]["kind"], "busy", "{}", out.describe());

    assert!(
        nodes.running(first),
        "the first listener keeps running\n{}",
        nodes.logs()
    );

    // Ctrl-C stops a listener cleanly and it records its start and stop.
    let status = nodes.interrupt(first);
    assert!(
        status.success(),
        "listener exits 0 on SIGINT: {status}\n{}",
        nodes.logs()
    );
    let events = sb.run(&dir, &["--json", "events"]).ok().json_lines();
    let types = event_types(&events);
    assert!(types.contains(&"node_started".to_string()), "{types:?}");
    assert_eq!(
        types.last().map(String::as_str),
        Some("node_stopped"),
        "{types:?}"
    );
    let started = events.iter().find(|e| e["type"] == "node_started").unwrap();
    assert_eq!(started["transport"], "udp");

    // Once a listener is gone (stopped, or even killed), the directory can be listened on again.
    let again = sb.spawn_listener(&mut nodes, "again", &dir, "127.0.0.1:0", &[]);
    nodes.wait_ready(again, COMMAND_TIMEOUT);
    nodes.kill(again);
    let third = sb.spawn_listener(&mut nodes, "third", &dir, "127.0.0.1:0", &[]);
    nodes.wait_ready(third, COMMAND_TIMEOUT);
}

#[test]
fn events_follow_prints_new_events_until_interrupted() {
    let (sb, dir) = one_node();
    let first = publish(&sb, &dir, &["--command", "echo before"]);

    let mut cmd = sb.command();
    cmd.arg("--data-dir")
        .arg(&dir)
        .args(["--json", "events", "--follow"]);
    // Owned by a guard so that it is killed even if an assertion fails.
    let mut guard = Listeners::default();
    let follow = guard.spawn("follow", cmd, sb.path());
    let out_path = guard.procs[follow].out_path.clone();
    let read = || std::fs::read_to_string(&out_path).unwrap_or_default();
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        while !read().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "events --follow never printed {needle}:\n{}",
                read()
            );
            thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(&first);
    // Events written later by other processes show up too.
    let second = publish(&sb, &dir, &["--command", "echo after"]);
    wait_for(&second);
    let status = guard.interrupt(follow);
    assert!(
        status.success(),
        "events --follow exits 0 on Ctrl-C: {status}"
    );
    let lines: Vec<Value> = read()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line ({e}): {l}")))
        .collect();
    let seqs: Vec<u64> = lines.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "no duplicates, in order: {seqs:?}"
    );
    let published: Vec<&str> = lines
        .iter()
        .filter(|e| e["type"] == "seed_published")
        .map(|e| e["seed_id"].as_str().unwrap())
        .collect();
    assert_eq!(published, [first.as_str(), second.as_str()]);
}

#[test]
fn demo_runs_a_whole_lifecycle() {
    let sb = sandbox();
    let mut cmd = sb.command();
    cmd.args(["--json", "demo"]);
    let out = run(cmd, vec!["--json".into(), "demo".into()]).ok();
    let v = out.json();
    let digests = v["digests"].as_array().expect("digests");
    assert!(digests.len() >= 3, "{v}");
    let first = &digests[0][1];
    assert!(
        digests.iter().all(|d| &d[1] == first),
        "demo nodes must agree: {v}"
    );
    assert_eq!(v["seed"]["status"], "settled", "{v}");
}

#[test]
fn status_lists_the_alerts_a_listening_node_fires() {
    let (sb, dir) = one_node();
    std::fs::create_dir_all(&dir).unwrap();
    // Alone on its network: `no_peers` fires after 1 s (the CLI reads config.toml there).
    std::fs::write(
        dir.join("config.toml"),
        "[alerts]\ninterval_ms = 100\nno_peers_secs = 1\n[network]\nhello_interval_secs = 1\n",
    )
    .unwrap();
    let mut nodes = Listeners::default();
    let l = sb.spawn_listener(&mut nodes, "alone", &dir, "127.0.0.1:0", &[]);
    nodes.wait_ready(l, COMMAND_TIMEOUT);
    let deadline = Instant::now() + Duration::from_secs(30);
    let alerts = wait_until(
        "status shows no_peers",
        deadline,
        || nodes.logs(),
        || {
            let v = sb.run(&dir, &["--json", "status"]).ok().json();
            match v["alerts"].as_array() {
                Some(a) if !a.is_empty() => Ok(a.clone()),
                _ => Err(v.to_string()),
            }
        },
    );
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["alert"], "no_peers");
    let text = sb.run(&dir, &["status"]).ok().stdout;
    assert!(
        text.lines()
            .any(|l| l.starts_with("ALERT     no_peers since ")),
        "{text}"
    );
    assert!(!text.contains("none firing"), "{text}");
}

/// `crabnet bench --quick --json`: one JSON object on the last line with every figure present,
/// positive and finite; its peer processes and temp directories are gone afterwards.
#[test]
fn bench_quick_prints_sane_figures_as_json_and_cleans_up() {
    bench_quick("udp", "full");
}

/// The same over libp2p (`--transport dht`): the peers dial the node and publish through
/// gossipsub; the measured node's store without an fsync per commit (`--sync normal`).
#[test]
fn bench_quick_over_libp2p_prints_sane_figures_as_json_and_cleans_up() {
    bench_quick("dht", "normal");
}

/// `demo` and `bench` run in temporary directories of their own: a `--data-dir` or
/// `--config` on their command line would be ignored, so it is a usage error that says so
/// (before anything starts). The same settings in the environment, meant for the other
/// commands, are not.
#[test]
fn demo_and_bench_refuse_a_data_dir_or_config_they_would_ignore() {
    let sb = sandbox();
    let dir = sb.path().join("node");
    let file = sb.path().join("config.toml");
    std::fs::write(&file, "name = \"x\"\n").unwrap();
    let (dir, file) = (dir.to_str().unwrap(), file.to_str().unwrap());
    for args in [
        vec!["--data-dir", dir, "bench", "--quick"],
        vec!["bench", "--quick", "--config", file],
        vec!["--json", "demo", "--data-dir", dir],
        vec!["demo", "--config", file],
    ] {
        let mut cmd = sb.command();
        cmd.args(&args);
        let out = run_bounded_within(
            cmd,
            args.iter().map(|a| a.to_string()).collect(),
            Duration::from_secs(30),
        );
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let flag = if args.contains(&dir) {
            "--data-dir"
        } else {
            "--config"
        };
        assert!(
            out.stderr.contains("does not use") && out.stderr.contains(flag),
            "{out:?}"
        );
    }
    // From the environment they are not refused: the bench gets as far as its own checks.
    let mut cmd = sb.command();
    cmd.env("CRABNET_DATA_DIR", dir).env("CRABNET_CONFIG", file);
    cmd.args(["bench", "--peers", "0"]);
    let out = run_bounded_within(
        cmd,
        vec!["bench".into(), "--peers".into(), "0".into()],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("at least one peer") && !out.stderr.contains("does not use"),
        "{out:?}"
    );
}

/// `bench --sync` takes `full` or `normal`; anything else is a usage error that names both.
#[test]
fn bench_refuses_an_unknown_sync_mode() {
    let sb = sandbox();
    let args = ["bench", "--quick", "--sync", "off"];
    let mut cmd = sb.command();
    cmd.args(args);
    let out = run_bounded_within(
        cmd,
        args.iter().map(|a| a.to_string()).collect(),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("off") && out.stderr.contains("full") && out.stderr.contains("normal"),
        "{out:?}"
    );
}

/// `crabnet bench --quick --json --transport TRANSPORT --sync SYNC`, checked.
fn bench_quick(transport: &str, sync: &str) {
    let sb = sandbox();
    let mut cmd = sb.command();
    let args = [
        "bench",
        "--quick",
        "--json",
        "--transport",
        transport,
        "--sync",
        sync,
    ];
    cmd.args(args);
    let out = run_bounded_within(
        cmd,
        args.iter().map(|a| a.to_string()).collect(),
        Duration::from_secs(90),
    );
    assert!(out.success(), "{out:?}");
    let last = out.stdout.lines().last().expect("a line of output");
    let report: Value = serde_json::from_str(last).expect("the last line is JSON");
    for field in [
        "verify_floor_per_s",
        "applied_per_s",
        "apply_ratio",
        "sign_verify_overhead",
        "publish_per_s",
        "publish_single_per_s",
    ] {
        let value = report[field].as_f64();
        assert!(
            value.is_some_and(|v| v.is_finite() && v > 0.0),
            "{field} = {:?} in {last}",
            report[field]
        );
    }
    for field in ["transport_dropped", "queue_full"] {
        assert!(report[field].as_u64().is_some(), "{field} in {last}");
    }
    assert_eq!(report["transport"], transport, "{last}");
    assert_eq!(report["store_sync"], sync, "{last}");
    assert!(
        report["frames_per_batch"]
            .as_f64()
            .is_some_and(|f| f >= 1.0),
        "{last}"
    );
    let (sent, applied) = (report["sent"].as_u64(), report["applied"].as_u64());
    assert!(
        sent == Some(40) && applied.is_some_and(|a| a > 1 && a <= 40),
        "{last}"
    );
    // The peers' and the node's data directories lived under TMPDIR and were removed.
    let left: Vec<_> = std::fs::read_dir(sb.path().join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
