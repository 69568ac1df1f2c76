//! The escape suite: tasks written by a hostile publisher try to reach the node that runs
//! them, through the real runner and real processes. This test process plays the node: it
//! holds a data directory with `identity.key`, `crabnet.db` and `config.toml` (outside /tmp,
//! under cargo's target dir) and a secret in its environment, and its task work root lies
//! inside that data directory, the layout in which relative paths reach the keys.
//!
//! Every attack runs under the default policy (the full sandbox) and, where the fallback
//! promises to stop it, under `best_effort` with namespaces turned off (Landlock and seccomp
//! only); each test asserts the specific denial the task saw.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crabnet_core::model::SandboxLevel;
use crabnet_core::runner::{self, RunOutcome, RunRequest, RunnerConfig};
use crabnet_core::sandbox::SandboxPolicy;
use procs::processes_with_arg;

#[path = "support/procs.rs"]
mod procs;

const SECRET_KEY: &str = "SECRET-IDENTITY-KEY-7f3a9c";
const SECRET_DB: &str = "SECRET-DATABASE-ROW-51b2e0";
const SECRET_ENV: &str = "SECRET-NODE-ENVIRONMENT-c44d";
const CONFIG: &str = "[runner]\ncpu_seconds = 600\n";

/// A node's files, as a task would like to find them.
struct NodeFiles {
    _dir: tempfile::TempDir,
    data: PathBuf,
}

impl NodeFiles {
    fn new() -> NodeFiles {
        // Under the target dir, not /tmp: the full sandbox replaces /tmp, so only a data
        // directory elsewhere shows that Landlock (not the private /tmp) keeps tasks out.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let data = std::fs::canonicalize(dir.path()).unwrap().join("node");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("identity.key"), SECRET_KEY).unwrap();
        std::fs::write(data.join("crabnet.db"), SECRET_DB).unwrap();
        std::fs::write(data.join("config.toml"), CONFIG).unwrap();
        // SAFETY: set once, before any task runs; std serialises environment access.
        unsafe { std::env::set_var("CRABNET_TEST_NODE_SECRET", SECRET_ENV) };
        NodeFiles { _dir: dir, data }
    }

    /// A node whose data directory (mode 0700, as the node makes it) lies under a directory
    /// of mode 0700: as `/root/.crabnet` lies under `/root`, and anything under a `mktemp -d`
    /// directory. Only root may enter it; `runner.user` may not.
    fn under_private_parent() -> NodeFiles {
        use std::os::unix::fs::PermissionsExt;
        let node = NodeFiles::new();
        let private = std::fs::Permissions::from_mode(0o700);
        std::fs::set_permissions(&node.data, private.clone()).unwrap();
        std::fs::set_permissions(node.data.parent().unwrap(), private).unwrap();
        node
    }

    fn work_root(&self) -> PathBuf {
        self.data.join("work")
    }

    fn path(&self, name: &str) -> String {
        self.data.join(name).display().to_string()
    }
}

/// The default policy: the full sandbox.
fn full() -> RunnerConfig {
    RunnerConfig::default()
}

/// The fallback: Landlock and seccomp without namespaces.
fn landlock_only() -> RunnerConfig {
    RunnerConfig {
        sandbox: SandboxPolicy::BestEffort,
        namespaces: false,
        ..RunnerConfig::default()
    }
}

/// The request to run `command` as task `task_id` in `root`, fully isolated, without network.
fn request<'a>(
    root: &'a Path,
    task_id: &'a str,
    command: &'a str,
    timeout: Duration,
) -> RunRequest<'a> {
    RunRequest {
        task_id,
        command,
        timeout,
        work_root: root,
        network: false,
        isolation: SandboxLevel::Full,
        source_date_epoch: None,
        output: crabnet_core::model::OutputHash::Combined,
    }
}

async fn attack(node: &NodeFiles, cfg: &RunnerConfig, command: &str) -> RunOutcome {
    attack_for(node, cfg, command, Duration::from_secs(20)).await
}

async fn attack_for(
    node: &NodeFiles,
    cfg: &RunnerConfig,
    command: &str,
    timeout: Duration,
) -> RunOutcome {
    let root = node.work_root();
    let out = runner::run(request(&root, "hostile", command, timeout), cfg)
        .await
        .unwrap_or_else(|e| panic!("the runner failed to run {command:?}: {e}"));
    for secret in [SECRET_KEY, SECRET_DB, SECRET_ENV] {
        assert!(
            !out.output_excerpt.contains(secret),
            "{command:?} obtained {secret}: {out:?}"
        );
    }
    out
}

/// Asserts that `command` printed `denial` and nothing that shows success.
fn assert_denied(out: &RunOutcome, command: &str, denial: &str) {
    assert!(
        out.output_excerpt.contains(denial),
        "{command:?}: expected {denial:?} in the output: {:?}",
        out.output_excerpt
    );
    assert!(
        !out.output_excerpt.contains("ESCAPED"),
        "{command:?} escaped: {:?}",
        out.output_excerpt
    );
}

fn node_pid() -> u32 {
    std::process::id()
}

#[tokio::test]
async fn the_full_sandbox_is_what_the_default_policy_builds() {
    let node = NodeFiles::new();
    let out = attack(&node, &full(), "true").await;
    assert_eq!(out.sandbox.level, SandboxLevel::Full, "{out:?}");
    for feature in [
        "landlock_fs",
        "seccomp",
        "no_new_privs",
        "user_ns",
        "mount_ns",
        "pid_ns",
        "net_ns",
        "disk_quota",
        "nproc_per_task",
    ] {
        assert!(
            out.sandbox.features.iter().any(|f| f == feature),
            "{feature} missing: {:?}",
            out.sandbox.features
        );
    }
    let fallback = attack(&node, &landlock_only(), "true").await;
    assert_eq!(fallback.sandbox.level, SandboxLevel::Partial);
    assert!(fallback.sandbox.features.iter().any(|f| f == "net_seccomp"));
    assert!(!fallback.sandbox.features.iter().any(|f| f == "pid_ns"));
}

#[tokio::test]
async fn tasks_cannot_read_the_nodes_keys_database_or_environment() {
    let node = NodeFiles::new();
    let pid = node_pid();
    let key = node.path("identity.key");
    let db = node.path("crabnet.db");
    // (command, denial under the full sandbox, denial under Landlock only)
    let cases = [
        // From <data>/work/<task>/ without namespaces; from the private /tmp with them.
        (
            "cat ../../identity.key".to_owned(),
            "No such file or directory",
            "Permission denied",
        ),
        (
            format!("cat {key}"),
            "Permission denied",
            "Permission denied",
        ),
        (
            format!("cat {db}"),
            "Permission denied",
            "Permission denied",
        ),
        (
            format!("cat /proc/{pid}/root{key}"),
            "No such file or directory",
            "Permission denied",
        ),
        (
            format!("ls /proc/{pid}/fd"),
            "No such file or directory",
            "Permission denied",
        ),
        (
            format!("cat /proc/{pid}/environ"),
            "No such file or directory",
            "Permission denied",
        ),
        (
            "env | grep CRABNET_TEST_NODE_SECRET || echo not-inherited".to_owned(),
            "not-inherited",
            "not-inherited",
        ),
    ];
    for (command, full_denial, fallback_denial) in &cases {
        let out = attack(&node, &full(), command).await;
        assert_denied(&out, command, full_denial);
        let out = attack(&node, &landlock_only(), command).await;
        assert_denied(&out, command, fallback_denial);
    }
}

#[tokio::test]
async fn tasks_cannot_write_outside_their_directory() {
    let node = NodeFiles::new();
    let config = node.path("config.toml");
    let outside = node.data.join("planted");
    let cases = [
        format!("echo '[runner]' >> {config} && echo ESCAPED"),
        "echo 'cpu_seconds = 0' >> ../../config.toml && echo ESCAPED".to_owned(),
        format!("touch {} && echo ESCAPED", outside.display()),
        "touch \"$HOME/../planted\" && echo ESCAPED".to_owned(),
        "touch /var/tmp/crabnet-planted && echo ESCAPED".to_owned(),
    ];
    for cfg in [full(), landlock_only()] {
        for command in &cases {
            let out = attack(&node, &cfg, command).await;
            assert!(!out.success(), "{command:?}: {out:?}");
            assert!(
                !out.output_excerpt.contains("ESCAPED"),
                "{command:?}: {out:?}"
            );
        }
    }
    assert_eq!(std::fs::read_to_string(&config).unwrap(), CONFIG);
    assert!(!outside.exists());
    assert!(!node.work_root().join("planted").exists());
    assert!(!Path::new("/var/tmp/crabnet-planted").exists());
    // The task's own directory stays writable.
    let out = attack(&node, &full(), "echo ok > mine && cat mine").await;
    assert_eq!(out.output_excerpt, "ok\n");
}

#[tokio::test]
async fn tasks_have_no_network() {
    let node = NodeFiles::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let tcp = listener.local_addr().unwrap().port();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let connect = format!("exec 3<>/dev/tcp/127.0.0.1/{tcp} && echo ESCAPED");
    let send = format!("echo leak > /dev/udp/127.0.0.1/{udp_port} && echo ESCAPED");
    // Full sandbox: Landlock refuses the TCP connect (EACCES) before the empty network
    // namespace would (ENETUNREACH, what UDP sees). Without namespaces: seccomp refuses the
    // socket itself (EPERM).
    let cases = [
        (full(), &connect, "connect: Permission denied"),
        (full(), &send, "Network is unreachable"),
        (landlock_only(), &connect, "Operation not permitted"),
        (landlock_only(), &send, "Operation not permitted"),
    ];
    for (cfg, command, denial) in cases {
        let out = attack(&node, &cfg, command).await;
        assert_denied(&out, command, denial);
    }
    assert!(
        listener.accept().is_err(),
        "a task connected to the node's loopback listener"
    );
    let mut buf = [0u8; 16];
    assert!(udp.recv(&mut buf).is_err(), "a task sent a datagram");
}

#[tokio::test]
async fn no_process_outlives_its_task() {
    let node = NodeFiles::new();
    let marker = format!("1000.{}", std::process::id());
    let command = format!("setsid sleep {marker} > /dev/null 2>&1 < /dev/null & echo started");
    let out = attack(&node, &full(), &command).await;
    assert_eq!(out.output_excerpt, "started\n");
    // The namespace died with the task: nothing to wait for.
    assert_eq!(processes_with_arg(&marker), Vec::<u32>::new());
}

#[tokio::test]
async fn a_fork_storm_hits_the_per_task_process_limit() {
    let node = NodeFiles::new();
    let cfg = RunnerConfig {
        max_processes: 24,
        ..full()
    };
    let marker = format!("60.{}", std::process::id());
    let command = format!("for i in $(seq 100); do sleep {marker} & done; wait");
    let out = attack_for(&node, &cfg, &command, Duration::from_secs(4)).await;
    assert_denied(&out, &command, "Resource temporarily unavailable");
    assert_eq!(processes_with_arg(&marker), Vec::<u32>::new());
}

#[tokio::test]
async fn the_disk_quota_stops_a_task_that_fills_its_directory() {
    let node = NodeFiles::new();
    let cfg = RunnerConfig {
        disk_quota_bytes: 2 * 1024 * 1024,
        ..full()
    };
    let command = "head -c 8000000 /dev/zero > big || echo rc=$?; wc -c < big";
    let out = attack(&node, &cfg, command).await;
    assert_denied(&out, command, "No space left on device");
    let written: u64 = out
        .output_excerpt
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(written <= 2 * 1024 * 1024, "{written} bytes written");
}

#[tokio::test]
async fn tasks_cannot_trace_the_node_or_make_namespaces() {
    let node = NodeFiles::new();
    #[cfg(target_arch = "x86_64")]
    let ptrace_nr = 101;
    #[cfg(target_arch = "aarch64")]
    let ptrace_nr = 117;
    let pid = node_pid();
    // PTRACE_ATTACH (16) through perl's raw syscall, then util-linux's unshare.
    let trace =
        format!("perl -e '$r = syscall({ptrace_nr}, 16, {pid}, 0, 0); print \"rc=$r $!\\n\"'");
    let unshare = "unshare -U true || echo denied".to_owned();
    for cfg in [full(), landlock_only()] {
        let out = attack(&node, &cfg, &trace).await;
        assert_denied(&out, &trace, "rc=-1 Operation not permitted");
        let out = attack(&node, &cfg, &unshare).await;
        assert_denied(&out, &unshare, "Operation not permitted");
    }
}

#[tokio::test]
async fn a_root_node_runs_tasks_as_an_unprivileged_user() {
    let node = NodeFiles::new();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    for cfg in [full(), landlock_only()] {
        let out = attack(&node, &cfg, "id -u").await;
        let uid: u32 = out.output_excerpt.trim().parse().unwrap();
        if root {
            assert_ne!(uid, 0, "a task ran as root");
            assert!(out.sandbox.features.iter().any(|f| f == "uid_drop"));
        } else {
            // SAFETY: geteuid cannot fail.
            assert_eq!(uid, unsafe { libc::geteuid() });
        }
    }
}

/// The mode bits of `path`.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A root node whose data directory lies under a directory that only root may enter (the work
/// root lies in the data directory, as in every test here) still runs tasks as `runner.user`,
/// with and without namespaces, with and without `keep_work_dirs` (a bind mount of the host
/// directory): the task enters its working directory and writes there and into `$HOME` and
/// `$TMPDIR`. Their directories then lie in a task root outside the private directory, and
/// nothing of the node becomes reachable for `runner.user` on the way: the private directories
/// keep their modes, and `runner.user` outside any sandbox still cannot read the key or list
/// the data directory.
#[tokio::test]
async fn a_root_node_runs_tasks_when_its_data_dir_is_under_a_private_directory() {
    use std::os::unix::fs::MetadataExt;
    let node = NodeFiles::under_private_parent();
    let parent = node.data.parent().unwrap().to_path_buf();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let ids = attack(&node, &landlock_only(), "id -u; id -g").await;
    let ids: Vec<u32> = ids
        .output_excerpt
        .lines()
        .map(|l| l.parse().unwrap_or_else(|e| panic!("{ids:?}: {e}")))
        .collect();
    let (uid, gid) = (ids[0], ids[1]);
    // As runner.user when the node runs as root, as the node's own user otherwise.
    assert_ne!(uid, 0, "{ids:?}");
    let task_id = format!("private-parent-{}", std::process::id());
    let command = "echo home > \"$HOME/h\" && echo tmp > \"$TMPDIR/t\" && echo cwd > c \
                   && [ \"$HOME\" = \"$PWD\" ] && [ \"$TMPDIR\" = \"$PWD\" ] \
                   && cat \"$HOME/h\" \"$TMPDIR/t\" ./c";
    let expected = "home\ntmp\ncwd\n";
    let expected_sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(expected));
    let keep = |cfg: RunnerConfig| RunnerConfig {
        keep_work_dirs: true,
        ..cfg
    };
    let work_root = node.work_root();
    for cfg in [landlock_only(), full(), keep(landlock_only()), keep(full())] {
        let req = request(&work_root, &task_id, command, Duration::from_secs(20));
        let out = runner::run(req, &cfg)
            .await
            .unwrap_or_else(|e| panic!("{cfg:?}: the runner failed: {e}"));
        assert!(out.success(), "{cfg:?}: {out:?}");
        assert_eq!(out.output_excerpt, expected, "{cfg:?}");
        assert_eq!(out.output_sha256, expected_sha256, "{cfg:?}");
        assert_eq!(
            out.sandbox.features.iter().any(|f| f == "uid_drop"),
            root,
            "{out:?}"
        );
    }
    // The two kept directories, in the task root: outside the private directory when the
    // tasks ran as runner.user, the work root itself otherwise.
    let task_root = runner::task_root(&work_root, &full()).unwrap();
    if root {
        assert!(!task_root.starts_with(&parent), "{task_root:?}");
        let meta = std::fs::metadata(&task_root).unwrap();
        assert_eq!((meta.uid(), mode(&task_root)), (0, 0o711), "{task_root:?}");
    } else {
        assert_eq!(task_root, work_root);
    }
    let mut kept: Vec<PathBuf> = std::fs::read_dir(&task_root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(&format!("{task_id}-"))
        })
        .collect();
    kept.sort();
    assert_eq!(kept.len(), 2, "{kept:?}");
    for dir in &kept {
        let meta = std::fs::metadata(dir).unwrap();
        assert_eq!((meta.uid(), mode(dir)), (uid, 0o700), "{dir:?}");
        for (file, text) in [("h", "home\n"), ("t", "tmp\n"), ("c", "cwd\n")] {
            assert_eq!(std::fs::read_to_string(dir.join(file)).unwrap(), text);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
    assert_eq!(mode(&parent), 0o700);
    assert_eq!(mode(&node.data), 0o700);
    if !root {
        return;
    }
    for (program, arg) in [("cat", node.path("identity.key")), ("ls", node.path(""))] {
        let out = std::os::unix::process::CommandExt::gid(
            std::os::unix::process::CommandExt::uid(
                std::process::Command::new(program).arg(&arg),
                uid,
            ),
            gid,
        )
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("Permission denied"),
            "runner.user ran {program} {arg}: {out:?}"
        );
    }
}

#[tokio::test]
async fn required_refuses_what_the_kernel_cannot_give_and_names_it() {
    let node = NodeFiles::new();
    let cfg = RunnerConfig {
        namespaces: false,
        ..full()
    };
    let status = cfg.sandbox_status();
    assert!(!status.can_run);
    assert!(
        status
            .missing
            .iter()
            .any(|m| m.contains("runner.namespaces")),
        "{status:?}"
    );
    let root = node.work_root();
    let err = runner::run(
        request(&root, "refused", "echo ESCAPED", Duration::from_secs(5)),
        &cfg,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("runner.namespaces"), "{err}");
    assert!(!root.exists() || std::fs::read_dir(&root).unwrap().count() == 0);
}

/// The control experiment: without a sandbox the same task does obtain the key, so the
/// assertions above can fail.
#[tokio::test]
async fn without_the_sandbox_the_attack_succeeds() {
    let node = NodeFiles::new();
    let root = node.work_root();
    let cfg = RunnerConfig {
        sandbox: SandboxPolicy::None,
        ..RunnerConfig::default()
    };
    let out = runner::run(
        request(
            &root,
            "hostile",
            "cat ../../identity.key",
            Duration::from_secs(20),
        ),
        &cfg,
    )
    .await
    .unwrap();
    assert_eq!(out.output_excerpt, SECRET_KEY);
    assert_eq!(out.sandbox.level, SandboxLevel::None);
}
