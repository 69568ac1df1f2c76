//! Runs and stops: a run in progress when its node stops is awaited for `runner.stop_grace_ms`,
//! then killed and recorded as interrupted; a run cut short by a crash is recorded as
//! interrupted at the next start; neither is ever executed again by itself. A task never
//! outlives its node: killing `crabnet seed run` (SIGINT, SIGTERM, even SIGKILL) kills the task
//! too, with the sandbox and without it.

mod support;

use std::time::{Duration, Instant};

use crabnet_core::model::TaskResult;
use crabnet_core::sandbox::SandboxPolicy;
use crabnet_core::store::Store;
use crabnet_core::{BlockingNode, Config, ErrorKind, EventKind, SeedId, SeedStatus};
use support::pair::Pair;
use support::procs::processes_with_arg;

/// The runner's configuration (the node under test).
fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::with_data_dir(dir.join("node"));
    c.name = "runner".into();
    c.network.tick_ms = 20;
    c.runner.work_root = Some(dir.join("work"));
    c
}

/// A publisher next to the runner of `runner` (a node may not bid on its own seed).
fn pair(dir: &std::path::Path, runner: Config) -> Pair {
    let mut publisher = Config::with_data_dir(dir.join("publisher"));
    publisher.name = "publisher".into();
    publisher.network.tick_ms = 20;
    Pair::start(publisher, runner)
}

/// The publisher publishes `command`; the runner bids on it and claims it.
fn claimed(pair: &Pair, command: &str) -> SeedId {
    pair.claimed(command, 5)
}

/// A pair in `dir` whose runner (configured by `cfg`) claimed a seed for each of `commands`, in
/// order, and then stopped, leaving them for another process to run: the pair and the seeds.
fn claimed_and_stopped<const N: usize>(
    dir: &std::path::Path,
    cfg: &Config,
    commands: [&str; N],
) -> (Pair, [SeedId; N]) {
    let pair = pair(dir, cfg.clone());
    let ids = commands.map(|command| claimed(&pair, command));
    pair.runner.stop().unwrap();
    (pair, ids)
}

/// Waits (20 s at most) until a process with `arg` among its arguments runs (the task started).
fn wait_task_process(arg: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    support::wait_until("the task's process runs", deadline, String::new, || {
        if processes_with_arg(arg).is_empty() {
            Err("no such process yet".into())
        } else {
            Ok(())
        }
    })
}

/// A `sleep` whose argument no other process has.
fn unique_sleep() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("30.{}{nanos:09}", std::process::id())
}

fn result_events(node: &BlockingNode) -> Vec<EventKind> {
    node.events_after(0, 10_000)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| matches!(k, EventKind::ResultRecorded { .. }))
        .collect()
}

/// A node whose data directory and work root lie under a directory of mode 0700 (as
/// `/root/.crabnet` lies under `/root`) runs its tasks, without namespaces too: when it runs as
/// root they run as `runner.user`, which may not enter that directory, so their directories go
/// elsewhere, and the directory stays closed.
#[test]
fn a_node_under_a_private_directory_runs_its_tasks() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut runner = config(&private);
    runner.runner.work_root = Some(private.join("node/work"));
    runner.runner.sandbox = SandboxPolicy::BestEffort;
    runner.runner.namespaces = false;
    let pair = pair(&private, runner);
    let id = claimed(&pair, "echo ok > \"$HOME/f\" && cat \"$TMPDIR/f\" && id -u");
    let ran = pair.runner.run(&id).unwrap();
    let r: TaskResult = ran.result.unwrap();
    assert!(r.success, "{r:?}");
    let (first, uid) = r.output_excerpt.split_once('\n').unwrap();
    assert_eq!(first, "ok", "{r:?}");
    // As runner.user when the node runs as root, as the node's own user otherwise.
    assert_ne!(uid.trim(), "0", "{r:?}");
    let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700);
    pair.runner.stop().unwrap();
}

#[test]
fn a_stop_kills_the_run_records_it_as_interrupted_and_a_restart_does_not_run_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let pair = pair(dir.path(), config(dir.path()));
    let node = &pair.runner;
    let arg = unique_sleep();
    let id = claimed(&pair, &format!("echo started; sleep {arg}"));
    let ran = std::thread::scope(|s| {
        let run = s.spawn(|| node.run(&id));
        wait_task_process(&arg);
        node.stop().unwrap();
        // When stop returns, the task is dead and reaped, and its result is recorded.
        assert_eq!(processes_with_arg(&arg), Vec::<u32>::new());
        run.join().unwrap().unwrap()
    });
    assert_eq!(ran.status, SeedStatus::Completed);
    let r: TaskResult = ran.result.unwrap();
    assert!(r.interrupted && !r.success && !r.timed_out, "{r:?}");
    assert_eq!(r.output_excerpt, "started\n");

    // After a restart the node knows, and does not run the command again.
    let node = BlockingNode::start(config(dir.path())).unwrap();
    let view = node.seed(&id).unwrap();
    assert_eq!(view.status, SeedStatus::Completed);
    assert!(view.result.unwrap().interrupted);
    let err = node.run(&id).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::State, "{err}");
    assert!(processes_with_arg(&arg).is_empty());
    let results = result_events(&node);
    assert!(
        matches!(
            results.as_slice(),
            [EventKind::ResultRecorded {
                interrupted: true,
                success: false,
                ..
            }]
        ),
        "{results:?}"
    );
    let o = node.overview().unwrap();
    assert_eq!(
        o.counters.get("runs.interrupted"),
        Some(&1),
        "{:?}",
        o.counters
    );
    node.stop().unwrap();
}

#[test]
fn a_run_that_ends_within_the_stop_grace_is_awaited_and_recorded_as_it_ended() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.runner.stop_grace_ms = 60_000;
    let pair = pair(dir.path(), cfg);
    let node = &pair.runner;
    let arg = format!("1.{}", std::process::id());
    let id = claimed(&pair, &format!("sleep {arg}; echo finished"));
    let ran = std::thread::scope(|s| {
        let run = s.spawn(|| node.run(&id));
        wait_task_process(&arg);
        node.stop().unwrap();
        run.join().unwrap().unwrap()
    });
    let r = ran.result.unwrap();
    assert!(r.success && !r.interrupted, "{r:?}");
    assert_eq!(r.output_excerpt, "finished\n");
}

#[test]
fn a_run_whose_process_died_is_recorded_as_interrupted_at_the_next_start_and_not_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (_pair, [id]) = claimed_and_stopped(dir.path(), &cfg, ["echo must not run"]);
    // What a crash in the middle of a run leaves behind: the run marker of a process that is
    // gone (this child, reaped).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let mut store = Store::open(&cfg.db_path(), &cfg.store).unwrap();
    store.begin_run(&id, dead, 1_000).unwrap();
    drop(store);

    let node = BlockingNode::start(cfg).unwrap();
    let view = node.seed(&id).unwrap();
    assert_eq!(view.status, SeedStatus::Completed);
    let r = view.result.unwrap();
    assert!(r.interrupted && !r.success, "{r:?}");
    assert_eq!((r.started_at, r.output_bytes), (1_000, 0));
    let err = node.run(&id).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::State, "{err}");
    assert!(
        !node
            .events_after(0, 10_000)
            .unwrap()
            .iter()
            .any(|e| matches!(&e.kind, EventKind::TaskStarted { seed_id, .. } if *seed_id == id))
    );
    node.stop().unwrap();
}

/// `crabnet seed run ID` on the data directory of `cfg` (whose `config.toml` it reads), its
/// stdout and stderr going to files in `sb` (see [`logs`]), with the default dispositions of
/// SIGINT and SIGTERM whatever this test inherited (a shell may ignore SIGINT).
fn seed_run_command(sb: &support::Sandbox, cfg: &Config, id: &SeedId) -> std::process::Command {
    std::fs::write(cfg.data_dir.join("config.toml"), cfg.to_toml()).unwrap();
    let mut cmd = sb.command();
    cmd.arg("--data-dir")
        .arg(&cfg.data_dir)
        .args(["seed", "run", id.as_str()])
        .stdout(std::fs::File::create(sb.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(sb.path().join("stderr")).unwrap());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd
}

/// What the last [`seed_run_command`] in `sb` printed.
fn logs(sb: &support::Sandbox) -> String {
    let read = |f: &str| std::fs::read_to_string(sb.path().join(f)).unwrap_or_default();
    format!("stdout:\n{}\nstderr:\n{}", read("stdout"), read("stderr"))
}

/// The runner's node is `crabnet seed run` (a process of its own, on the runner's data
/// directory) running a long task; the CLI gets `signal` while the task runs. Whatever the
/// signal, no process of the task is left once the CLI is gone, and the node records the run as
/// interrupted (the CLI itself on SIGINT/SIGTERM, the next start after SIGKILL) and never runs
/// it again.
fn cli_signalled_during_a_run(signal: libc::c_int, sandbox: SandboxPolicy) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.runner.sandbox = sandbox;
    let arg = unique_sleep();
    let command = format!("echo started; sleep {arg}");
    let (_pair, [id]) = claimed_and_stopped(dir.path(), &cfg, [&command]);

    let sb = support::Sandbox::new("crabnet-runs-cli");
    let mut cli = seed_run_command(&sb, &cfg, &id).spawn().unwrap();
    wait_task_process(&arg);
    // SAFETY: plain syscall on the pid of a child we own and have not reaped.
    unsafe { libc::kill(cli.id() as libc::pid_t, signal) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = cli.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = cli.kill();
            let _ = cli.wait();
            panic!("the CLI did not exit after signal {signal}\n{}", logs(&sb));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if signal == libc::SIGKILL {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{}", logs(&sb));
        // The task dies with its node: the kernel tells the task's guard at once.
        let deadline = Instant::now() + Duration::from_secs(10);
        support::wait_until(
            "the task's processes are gone",
            deadline,
            String::new,
            || match processes_with_arg(&arg).as_slice() {
                [] => Ok(()),
                left => Err(format!("task processes left: {left:?}")),
            },
        );
    } else {
        // The CLI stopped its node: the task was killed and reaped before it exited, and it
        // says what became of the run.
        assert_eq!(processes_with_arg(&arg), Vec::<u32>::new(), "{}", logs(&sb));
        assert_eq!(status.code(), Some(1), "{}", logs(&sb));
        let out = logs(&sb);
        assert!(
            out.contains(&format!("ran seed {id}: interrupted"))
                && out.contains("recorded as interrupted"),
            "{out}"
        );
    }

    let node = BlockingNode::start(cfg).unwrap();
    let view = node.seed(&id).unwrap();
    assert_eq!(view.status, SeedStatus::Completed, "{}", logs(&sb));
    let r = view.result.unwrap();
    assert!(r.interrupted && !r.success, "{r:?}");
    let err = node.run(&id).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::State, "{err}");
    assert_eq!(processes_with_arg(&arg), Vec::<u32>::new());
    node.stop().unwrap();
}

#[test]
fn ctrl_c_on_seed_run_kills_the_task_and_records_the_run_as_interrupted() {
    cli_signalled_during_a_run(libc::SIGINT, SandboxPolicy::default());
}

#[test]
fn sigterm_on_seed_run_without_a_sandbox_kills_the_task_and_records_the_run_as_interrupted() {
    cli_signalled_during_a_run(libc::SIGTERM, SandboxPolicy::None);
}

#[test]
fn a_seed_run_killed_with_sigkill_takes_its_sandboxed_task_with_it() {
    cli_signalled_during_a_run(libc::SIGKILL, SandboxPolicy::default());
}

#[test]
fn a_seed_run_killed_with_sigkill_takes_its_unsandboxed_task_with_it() {
    cli_signalled_during_a_run(libc::SIGKILL, SandboxPolicy::None);
}

#[test]
fn crabnet_log_debug_adds_the_runners_debug_records_to_the_clis_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (_pair, [quiet, loud]) = claimed_and_stopped(dir.path(), &cfg, ["echo quiet", "echo loud"]);
    let sb = support::Sandbox::new("crabnet-runs-log");

    // By default the CLI shows warnings only: a successful run prints nothing on stderr.
    let status = seed_run_command(&sb, &cfg, &quiet).status().unwrap();
    assert!(status.success(), "{}", logs(&sb));
    let default = std::fs::read_to_string(sb.path().join("stderr")).unwrap();
    assert!(!default.contains("DEBUG"), "{}", logs(&sb));
    assert!(!default.contains("starting task"), "{}", logs(&sb));

    let status = seed_run_command(&sb, &cfg, &loud)
        .env("CRABNET_LOG", "debug")
        .status()
        .unwrap();
    assert!(status.success(), "{}", logs(&sb));
    let debug = std::fs::read_to_string(sb.path().join("stderr")).unwrap();
    assert!(
        debug
            .lines()
            .any(|l| l.contains("DEBUG") && l.contains("starting task")),
        "{}",
        logs(&sb)
    );
}
