//! Local execution of a task's shell command.
//!
//! [`run`] executes one task command in a fresh, private working directory and
//! records how it ended ([`RunOutcome`]): exit code or terminating signal,
//! whether the wall-clock timeout fired, timing, and a SHA-256 hash over the
//! complete combined stdout/stderr stream (or stdout alone, see
//! [`RunRequest::output`]) together with a capped excerpt.
//!
//! # Isolation
//!
//! * The command runs as `bash -lc <command>` with stdin connected to
//!   `/dev/null`, in its own process group, inside the task sandbox (see
//!   [`crate::sandbox`] and [`RunnerConfig::sandbox`]); the sandbox actually
//!   used is recorded in [`RunOutcome::sandbox`].
//! * The working directory is a fresh directory under
//!   [`RunnerConfig::work_root`], outside the node's data directory (under a
//!   fallback in `/var/tmp` when the work root lies below a directory that
//!   [`RunnerConfig::user`] may not enter, see [`task_root`]). With the full
//!   sandbox the task sees it as a private, size-capped `/tmp`.
//! * The environment is cleared; only `PATH` (the node's, or
//!   `/usr/local/bin:/usr/bin:/bin` when unset), `HOME` and `TMPDIR` (both the
//!   task's directory), `LANG=C.UTF-8`, `LC_ALL=C.UTF-8`, `TZ=UTC`,
//!   `CRABNET_TASK_ID` and, when the request gives one, the task-scoped
//!   `SOURCE_DATE_EPOCH` are set, so that runs of one task on different
//!   machines see the same locale, time zone and reference time (replicated
//!   seeds compare their output hashes). A login shell sources `/etc/profile`,
//!   which may adjust `PATH` and export further variables.
//! * Resource limits (`RLIMIT_CPU`, `RLIMIT_AS`, `RLIMIT_FSIZE`,
//!   `RLIMIT_NPROC`, see [`RunnerConfig`]) are applied to the shell before it
//!   starts, as both soft and hard limits, so the task cannot raise them again.
//!   Core dumps are disabled (`RLIMIT_CORE = 0`).
//! * When the timeout fires, or the run is interrupted (see
//!   [`run_interruptible`]), the whole process group is killed with
//!   `SIGKILL`. After the main shell exits on its own, the group is killed as
//!   well. In a PID namespace every process the task started dies with it,
//!   even one that left the process group (`setsid`); without one, such a
//!   process survives, and output collection stops after a short grace period.
//!
//! # Windows
//!
//! The command runs as `cmd /C <command>`. Only the wall-clock timeout is
//! enforced and it kills the direct child process only (not its
//! descendants). No resource limits are applied.

use std::future::Future;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::model::{OutputHash, SandboxInfo, SandboxLevel, Seed};
use crate::sandbox::{self, Refusal, SandboxPolicy, SandboxStatus, TaskNeeds};

/// Maximum number of characters of the task id used in the working directory name.
const MAX_TASK_ID_LEN: usize = 64;
/// `PATH` handed to tasks when the node itself has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Size of the buffer used to read the task's output.
const READ_CHUNK: usize = 64 * 1024;
/// How long output is still collected after the task's process group is gone
/// (only relevant when a process that escaped the group holds the pipe open).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for the main child to be reported dead after `SIGKILL`.
#[cfg(unix)]
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often the output reader re-checks its cancellation flag.
#[cfg(unix)]
const READER_POLL_MS: libc::c_int = 100;
/// How often the child's state is polled on platforms without `waitid`.
#[cfg(not(unix))]
const WAIT_POLL: Duration = Duration::from_millis(50);
/// Attempts at finding an unused working directory name.
const WORKDIR_ATTEMPTS: usize = 8;

/// Resource limits, sandbox and caps for task execution (part of the node's
/// TOML config, section `[runner]`).
///
/// For the four resource limits a value of `0` means "no limit": the limit is
/// set to unlimited (`RLIM_INFINITY`), or, when the node is not allowed to
/// raise its hard limit that far, to the node's own hard limit. Likewise a
/// non-zero value above the node's hard limit is lowered to that hard limit
/// when the node lacks the privilege to raise it. Resource limits apply on
/// Unix only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunnerConfig {
    /// Cap, in bytes, on the output excerpt kept in [`RunOutcome::output_excerpt`].
    /// The hash and byte count always cover the complete output. Default: 16 KiB (the protocol
    /// carries at most 16 KiB).
    pub max_output_bytes: usize,
    /// CPU time limit in seconds (`RLIMIT_CPU`); `0` = no limit. Default: 600.
    pub cpu_seconds: u64,
    /// Virtual address space limit in bytes (`RLIMIT_AS`); `0` = no limit.
    /// Default: 4 GiB. Runtimes that reserve large virtual mappings (JVM, Go)
    /// may need a higher value.
    pub address_space_bytes: u64,
    /// Maximum size in bytes of any file the task writes (`RLIMIT_FSIZE`);
    /// `0` = no limit. Default: 1 GiB.
    pub file_size_bytes: u64,
    /// Maximum number of processes (`RLIMIT_NPROC`); `0` = no limit.
    /// Default: 512. In the sandbox's user namespace it counts the task's own
    /// processes only (`nproc_per_task`); without one the kernel counts every
    /// process of the task's user id, and does not enforce it for root.
    pub max_processes: u64,
    /// Parent of the per-task working directories. Default (unset): a 0700
    /// directory `crabnet-work-<uid>` under the system temp dir, never inside
    /// the data directory. A node running as root makes it 0711, and tasks
    /// running as [`RunnerConfig::user`] must reach it: when that user may not
    /// enter a directory above it (`/root`, a `mktemp -d` directory), the
    /// task directories go to `/var/tmp/crabnet-work-0` instead, with a
    /// warning (see [`task_root`]); the directory in the way is left closed.
    pub work_root: Option<PathBuf>,
    /// Keep each task's working directory after the run, for debugging
    /// (default `false`: it is removed). The sandbox then binds the directory
    /// instead of a size-capped tmpfs, so the disk quota does not apply.
    #[serde(alias = "keep_workdirs")]
    pub keep_work_dirs: bool,
    /// What to do when the kernel cannot build the full task sandbox
    /// (default on Linux `required`: refuse to bid and to run; see
    /// [`SandboxPolicy`]).
    pub sandbox: SandboxPolicy,
    /// Bid on and run seeds that ask for network access (default `false`).
    /// Other tasks never have network.
    pub allow_network: bool,
    /// Extra paths tasks may read and execute (beside `/usr`, `/bin`, `/lib*`
    /// and selected files of `/etc`).
    pub read_only_paths: Vec<PathBuf>,
    /// The user tasks run as when the node runs as root (name or uid; default
    /// `nobody`). It gets its own task directory and nothing else of the
    /// node's: see [`RunnerConfig::work_root`] for where that directory is.
    pub user: String,
    /// Size cap of the task's private `/tmp`, its working directory, in bytes
    /// (memory-backed tmpfs); `0` = no cap. Default: 256 MiB.
    pub disk_quota_bytes: u64,
    /// Use user, mount, PID and network namespaces (default `true`). Set to
    /// `false` where unprivileged user namespaces are unwanted; with
    /// `sandbox = "best_effort"` tasks then run under Landlock and seccomp
    /// only (level `partial`), and `required` refuses to run.
    pub namespaces: bool,
    /// How long a stopping node lets a task in progress finish on its own, in
    /// milliseconds (default `0`: none). A task still running after that is
    /// killed (its whole process group, or its PID namespace) and its result
    /// is recorded as interrupted (`TaskResult::interrupted`).
    pub stop_grace_ms: u64,
    /// **Testing only.** This node reports [`FORGED_OUTPUT_SHA256`] as the output hash of
    /// every task it runs instead of the real one: a lying runner, for tests of replicated
    /// seeds (`tests/replication_e2e.rs`). It changes nothing but this node's own signed
    /// results, which other nodes then record as dissent. Not in the README's configuration;
    /// never set it on a real node. Only test builds (debug assertions on, as `cargo test`
    /// and `cargo build` without `--release` make) accept it: a release build refuses to
    /// start with it set ([`RunnerConfig::check_test_only`]), so no packaged or installed node
    /// can lie by a configuration mistake.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub forge_output_hash: bool,
}

/// The output hash a node with [`RunnerConfig::forge_output_hash`] reports: SHA-256 of
/// `crabnet test: forged result`, the same on every such node (so that two liars agree).
pub const FORGED_OUTPUT_SHA256: &str =
    "1d7c990d8fa06ce405a74b9f4fdd4a194ddb0ee6e30d7051e2e4ad63e21c82c2";

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            max_output_bytes: 16 * 1024,
            cpu_seconds: 600,
            address_space_bytes: 4 * 1024 * 1024 * 1024,
            file_size_bytes: 1024 * 1024 * 1024,
            max_processes: 512,
            work_root: None,
            keep_work_dirs: false,
            sandbox: SandboxPolicy::default(),
            allow_network: false,
            read_only_paths: Vec::new(),
            user: "nobody".into(),
            disk_quota_bytes: 256 * 1024 * 1024,
            namespaces: true,
            stop_grace_ms: 0,
            forge_output_hash: false,
        }
    }
}

impl RunnerConfig {
    /// The directory holding per-task working directories: [`RunnerConfig::work_root`] or
    /// the default under the system temp dir.
    pub fn work_root(&self) -> PathBuf {
        self.work_root.clone().unwrap_or_else(default_work_root)
    }

    /// Refuses [`RunnerConfig::forge_output_hash`] unless `test_build` (the caller passes
    /// `cfg!(debug_assertions)`).
    ///
    /// # Errors
    /// A message naming the setting when it is on in a build that is not for tests.
    pub fn check_test_only(&self, test_build: bool) -> Result<(), String> {
        if self.forge_output_hash && !test_build {
            return Err(
                "runner.forge_output_hash is a test-only setting (a runner that reports \
                 forged output hashes); this is a release build, which refuses it: remove it \
                 from the configuration"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// What this node can build for its tasks under this configuration.
    pub fn sandbox_status(&self) -> SandboxStatus {
        sandbox::status(&self.sandbox_settings())
    }

    /// Checks that a node with this configuration may bid on and run `seed`.
    ///
    /// # Errors
    /// A [`Refusal`] naming the missing kernel feature or the policy that forbids it.
    pub fn check_can_serve(&self, seed: &Seed) -> Result<(), Refusal> {
        sandbox::check_can_serve(&self.sandbox_settings(), TaskNeeds::of(seed))
    }

    pub(crate) fn sandbox_settings(&self) -> sandbox::Settings<'_> {
        sandbox::Settings {
            policy: self.sandbox,
            allow_network: self.allow_network,
            read_only_paths: &self.read_only_paths,
            user: &self.user,
            disk_quota_bytes: self.disk_quota_bytes,
            keep_work_dirs: self.keep_work_dirs,
            namespaces: self.namespaces,
        }
    }
}

fn default_work_root() -> PathBuf {
    #[cfg(unix)]
    // SAFETY: geteuid cannot fail.
    let who = unsafe { libc::geteuid() }.to_string();
    #[cfg(not(unix))]
    let who = std::env::var("USERNAME").unwrap_or_else(|_| "user".into());
    std::env::temp_dir().join(format!("crabnet-work-{who}"))
}

/// One command to execute, see [`run`].
#[derive(Debug, Clone, Copy)]
pub struct RunRequest<'a> {
    /// Identifier of the task. Exported to the command as `CRABNET_TASK_ID`;
    /// a sanitized form (only `[A-Za-z0-9_-]`, at most 64 characters) names the
    /// working directory. Must not contain a NUL byte.
    pub task_id: &'a str,
    /// Shell command line (`bash -lc` on Unix, `cmd /C` on Windows). Must not
    /// be empty or blank and must not contain a NUL byte.
    pub command: &'a str,
    /// Wall-clock limit, measured from spawning the command. When it expires
    /// the task's process group is killed.
    pub timeout: Duration,
    /// Parent of the fresh per-task directory; created if missing.
    pub work_root: &'a Path,
    /// The task asks for network access (served only with `allow_network`).
    pub network: bool,
    /// The strongest sandbox level the task works under.
    pub isolation: SandboxLevel,
    /// Exported as `SOURCE_DATE_EPOCH` (seconds since the Unix epoch): a reference
    /// time that is the same for every run of one task (a node passes the seed's
    /// creation time), for tools that embed dates in their output.
    pub source_date_epoch: Option<u64>,
    /// What [`RunOutcome::output_sha256`] covers: stdout and stderr combined
    /// (default), or stdout alone. The excerpt and byte count cover both.
    pub output: OutputHash,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// Exit code of the command; `None` when it was killed by a signal.
    pub exit_code: Option<i32>,
    /// The signal that terminated the command, if any (always `None` on Windows).
    pub signal: Option<i32>,
    /// Whether the wall-clock timeout fired and the task was killed.
    pub timed_out: bool,
    /// Whether the run was interrupted (see [`run_interruptible`]) and the
    /// task was killed.
    pub interrupted: bool,
    /// Wall-clock start time, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// `started_at_ms + duration_ms` (immune to wall-clock jumps during the run).
    pub finished_at_ms: u64,
    /// Time from spawn until the main process exited, in milliseconds
    /// (monotonic clock).
    pub duration_ms: u64,
    /// Lowercase hex SHA-256 over all output bytes (stdout and stderr combined,
    /// in write order; stdout alone with [`OutputHash::Stdout`]), not only the
    /// excerpt.
    pub output_sha256: String,
    /// Total number of output bytes.
    pub output_bytes: u64,
    /// The first `max_output_bytes` bytes of output, decoded as lossy UTF-8.
    /// When the cap cuts a multi-byte character in two, the incomplete
    /// character is dropped; invalid bytes become U+FFFD.
    pub output_excerpt: String,
    /// Whether the output was longer than `max_output_bytes`.
    pub output_truncated: bool,
    /// The sandbox the command ran in.
    pub sandbox: SandboxInfo,
}

impl RunOutcome {
    /// `true` when the command exited with code 0, did not time out and was
    /// not interrupted.
    #[must_use]
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && !self.interrupted
    }
}

/// Errors that prevent a run from producing a [`RunOutcome`].
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The work root or the per-task working directory could not be prepared.
    #[error("cannot prepare working directory {}: {source}", path.display())]
    Workdir {
        /// The directory that could not be created or inspected.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The command is empty, blank or contains a NUL byte.
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// The task id contains a NUL byte.
    #[error("invalid task id: {0}")]
    InvalidTaskId(String),
    /// The node's sandbox policy forbids running this task (see [`Refusal`]).
    #[error("refusing to run the task: {0}")]
    Refused(#[source] Refusal),
    /// The sandbox could not be prepared or entered.
    #[error("cannot sandbox the task: {0}")]
    Sandbox(String),
    /// The shell could not be started (missing shell, failing resource limit, ...).
    #[error("failed to start the task shell: {0}")]
    Spawn(#[source] io::Error),
    /// An I/O error while supervising the task or collecting its output.
    #[error("I/O error while running the task: {0}")]
    Io(#[source] io::Error),
}

/// Runs `req.command` in a fresh working directory under `req.work_root` and
/// reports how it ended.
///
/// A non-zero exit, a signal or a timeout are not errors: they are recorded in
/// the returned [`RunOutcome`]. Errors are returned only when the command
/// could not be run or supervised (invalid input, working directory, spawn or
/// I/O failures).
///
/// The per-task directory is `<sanitized task id>-<8 random hex>` under
/// `req.work_root` (or, when [`RunnerConfig::user`] cannot reach that, under
/// the fallback [`task_root`] picks), created with mode 0700 (owned by
/// `runner.user` when the task runs as that user); it is removed afterwards unless
/// [`RunnerConfig::keep_work_dirs`] is set (removal failures are logged, not
/// returned). Dropping the returned future kills the task's process group and
/// cleans up in the background.
///
/// # Errors
///
/// [`RunnerError::InvalidCommand`] / [`RunnerError::InvalidTaskId`] for bad
/// input, [`RunnerError::Workdir`] when the directory cannot be created,
/// [`RunnerError::Spawn`] when the shell cannot be started (including a
/// resource limit that cannot be applied), [`RunnerError::Io`] for failures
/// while supervising the process or reading its output.
///
/// Must be called within a Tokio runtime with the time driver enabled (as set
/// up by `#[tokio::main]`); it uses two blocking-pool threads per run.
pub async fn run(req: RunRequest<'_>, cfg: &RunnerConfig) -> Result<RunOutcome, RunnerError> {
    run_interruptible(req, cfg, std::future::pending()).await
}

/// [`run`], ended early when `interrupt` completes: the task's process group
/// is then killed with `SIGKILL` and reaped, the output so far is hashed, and
/// the returned [`RunOutcome`] says [`interrupted`](RunOutcome::interrupted).
/// When this returns, no process of the task is left (with a PID namespace:
/// none at all; without one, a process that left the group with `setsid` may
/// survive, as after a timeout).
///
/// # Errors
///
/// As [`run`].
pub async fn run_interruptible(
    req: RunRequest<'_>,
    cfg: &RunnerConfig,
    interrupt: impl Future<Output = ()>,
) -> Result<RunOutcome, RunnerError> {
    validate(&req)?;
    let needs = TaskNeeds {
        network: req.network,
        isolation: req.isolation,
    };
    sandbox::check_can_serve(&cfg.sandbox_settings(), needs).map_err(RunnerError::Refused)?;
    let root = task_root(req.work_root, cfg)?;
    let workdir = create_workdir(&root, req.task_id).await?;
    tracing::debug!(task_id = req.task_id, workdir = %workdir.display(), "starting task");
    let mut dir_guard = WorkdirGuard {
        path: Some(workdir.clone()),
        keep: cfg.keep_work_dirs,
    };
    let result = execute(&req, cfg, &workdir, needs, interrupt).await;
    dir_guard.finish().await;
    match &result {
        Ok(outcome) => tracing::debug!(
            task_id = req.task_id,
            exit_code = ?outcome.exit_code,
            signal = ?outcome.signal,
            timed_out = outcome.timed_out,
            interrupted = outcome.interrupted,
            duration_ms = outcome.duration_ms,
            output_bytes = outcome.output_bytes,
            "task finished"
        ),
        Err(err) => tracing::debug!(task_id = req.task_id, error = %err, "task failed"),
    }
    result
}

fn validate(req: &RunRequest<'_>) -> Result<(), RunnerError> {
    if req.command.trim().is_empty() {
        return Err(RunnerError::InvalidCommand(
            "command is empty or blank".into(),
        ));
    }
    if let Some(pos) = req.command.find('\0') {
        return Err(RunnerError::InvalidCommand(format!(
            "command contains a NUL byte at offset {pos}"
        )));
    }
    if let Some(pos) = req.task_id.find('\0') {
        return Err(RunnerError::InvalidTaskId(format!(
            "task id contains a NUL byte at offset {pos}"
        )));
    }
    Ok(())
}

/// Maps a task id to a safe directory-name prefix: characters outside
/// `[A-Za-z0-9_-]` become `_`, at most 64 characters, `task` when empty.
fn sanitize_task_id(task_id: &str) -> String {
    let cleaned: String = task_id
        .chars()
        .take(MAX_TASK_ID_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "task".to_owned()
    } else {
        cleaned
    }
}

fn random_hex8() -> Result<String, RunnerError> {
    let mut buf = [0u8; 4];
    getrandom::fill(&mut buf).map_err(|e| {
        RunnerError::Io(io::Error::other(format!(
            "cannot read the system random source: {e}"
        )))
    })?;
    Ok(hex::encode(buf))
}

/// The directory the per-task working directories of a run with `work_root` go to, created if
/// missing (mode 0700; 0711 when the node runs as root), absolute and free of symlinks.
///
/// That is `work_root`, unless tasks run as [`RunnerConfig::user`] (the node runs as root) and
/// that user may not enter some directory on the way to it, as `/root` (mode 0700) stops it on
/// the way to `/root/crabnet-work`: a task could then neither enter its directory nor use its
/// `HOME` and `TMPDIR`. Opening that directory would let the user towards whatever else lies
/// under it (the node's data directory, with its keys), so the runner leaves it as it is and
/// uses `crabnet-work-<uid>` under `/var/tmp` instead (under `/tmp` when the user cannot enter
/// `/var/tmp` or that directory is not usable), and logs a warning naming the directory in the
/// way, once per work root.
///
/// # Errors
///
/// [`RunnerError::Workdir`] when the work root cannot be created or is not safe (a symlink,
/// another user's directory), or when the user can reach neither it nor a fallback; the
/// message then names the directory in the way and the setting to change.
pub fn task_root(work_root: &Path, cfg: &RunnerConfig) -> Result<PathBuf, RunnerError> {
    let root = prepare_root(work_root)?;
    #[cfg(unix)]
    if let Some((uid, gid)) = sandbox::task_user(&cfg.sandbox_settings()) {
        let closed = first_closed_dir(&root, uid, gid).map_err(|source| RunnerError::Workdir {
            path: root.clone(),
            source,
        })?;
        if let Some(closed) = closed {
            return fallback_root(&root, &closed, &cfg.user, uid, gid);
        }
    }
    #[cfg(not(unix))]
    let _ = cfg;
    Ok(root)
}

/// Whether tasks running as [`RunnerConfig::user`] could reach `work_root`, checked without
/// creating anything (up to its nearest existing directory): `Some(the directory in the way)`
/// when they could not, so that [`task_root`] will put their directories under a fallback;
/// `None` when they can, when nothing on the way can be read, or when tasks do not run as that
/// user (the node is not root).
pub fn task_root_blocked(work_root: &Path, cfg: &RunnerConfig) -> Option<String> {
    #[cfg(unix)]
    {
        let (uid, gid) = sandbox::task_user(&cfg.sandbox_settings())?;
        let existing = work_root.ancestors().find(|p| p.exists())?;
        let existing = std::fs::canonicalize(existing).ok()?;
        first_closed_dir(&existing, uid, gid)
            .ok()
            .flatten()
            .map(|closed| closed.to_string())
    }
    #[cfg(not(unix))]
    {
        let _ = (work_root, cfg);
        None
    }
}

/// Creates the work root `root` if missing, checks that it is safe ([`secure_work_root`]) and
/// returns it absolute and free of symlinks, so that `HOME` and `TMPDIR` work from any cwd.
fn prepare_root(root: &Path) -> Result<PathBuf, RunnerError> {
    let workdir_err = |source: io::Error| RunnerError::Workdir {
        path: root.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(root).map_err(workdir_err)?;
    #[cfg(unix)]
    secure_work_root(root).map_err(workdir_err)?;
    std::fs::canonicalize(root).map_err(workdir_err)
}

/// Where [`task_root`] looks, in this order, for a task root that the task user can reach.
#[cfg(unix)]
const FALLBACK_PARENTS: [&str; 2] = ["/var/tmp", "/tmp"];

/// A directory that the task user may not enter.
#[cfg(unix)]
#[derive(Debug)]
struct ClosedDir {
    path: PathBuf,
    mode: u32,
    owner: u32,
}

#[cfg(unix)]
impl std::fmt::Display for ClosedDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (mode {:04o}, owner uid {})",
            self.path.display(),
            self.mode,
            self.owner
        )
    }
}

/// The first directory on the way to `dir` (absolute and free of symlinks; `dir` included)
/// that a process of `uid` and `gid` without supplementary groups, as a task is after the uid
/// drop, may not enter (search), by the directories' mode bits.
#[cfg(unix)]
fn first_closed_dir(dir: &Path, uid: u32, gid: u32) -> io::Result<Option<ClosedDir>> {
    use std::os::unix::fs::MetadataExt;
    let mut chain: Vec<&Path> = dir.ancestors().collect();
    chain.reverse();
    for path in chain {
        let meta = std::fs::metadata(path)?;
        let mode = meta.mode() & 0o7777;
        let search = if meta.uid() == uid {
            0o100
        } else if meta.gid() == gid {
            0o010
        } else {
            0o001
        };
        if mode & search == 0 {
            return Ok(Some(ClosedDir {
                path: path.to_path_buf(),
                mode,
                owner: meta.uid(),
            }));
        }
    }
    Ok(None)
}

/// The task root [`task_root`] uses when the task user cannot enter `closed` on the way to the
/// work root `root`: `crabnet-work-<uid>` in the first of [`FALLBACK_PARENTS`] that the user
/// can reach and that holds no such entry of someone else's.
#[cfg(unix)]
fn fallback_root(
    root: &Path,
    closed: &ClosedDir,
    user: &str,
    uid: u32,
    gid: u32,
) -> Result<PathBuf, RunnerError> {
    /// The work roots already warned about.
    static WARNED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut tried = Vec::new();
    for parent in FALLBACK_PARENTS {
        let parent = match std::fs::canonicalize(parent) {
            Ok(parent) => parent,
            Err(e) => {
                tried.push(format!("{parent}: {e}"));
                continue;
            }
        };
        match first_closed_dir(&parent, uid, gid) {
            Ok(None) => {}
            Ok(Some(dir)) => {
                tried.push(format!("runner.user cannot enter {dir}"));
                continue;
            }
            Err(e) => {
                tried.push(format!("{}: {e}", parent.display()));
                continue;
            }
        }
        match prepare_root(&parent.join(format!("crabnet-work-{me}"))) {
            Ok(fallback) => {
                let mut warned = crate::lock(&WARNED);
                if !warned.iter().any(|w| w == root) {
                    warned.push(root.to_path_buf());
                    tracing::warn!(
                        "runner.user {user:?} (uid {uid}) cannot enter {closed} on the way to \
                         the work root {}: task directories go to {} instead. To choose where \
                         they go, set runner.work_root to a directory runner.user can reach \
                         (every directory above it searchable by others, o+x); do not open {} \
                         if it holds the data directory",
                        root.display(),
                        fallback.display(),
                        closed.path.display()
                    );
                }
                return Ok(fallback);
            }
            Err(e) => tried.push(e.to_string()),
        }
    }
    Err(RunnerError::Workdir {
        path: root.to_path_buf(),
        source: io::Error::other(format!(
            "runner.user {user:?} (uid {uid}) cannot enter {closed} on the way to this work root, \
             and no task root under /var/tmp or /tmp can be used instead ({}); set \
             runner.work_root to a directory runner.user can reach (every directory above it \
             searchable by others, o+x), e.g. /var/tmp/crabnet-work",
            tried.join("; ")
        )),
    })
}

/// Creates a fresh directory for task `task_id` under the prepared task root `root` (see
/// [`task_root`]).
async fn create_workdir(root: &Path, task_id: &str) -> Result<PathBuf, RunnerError> {
    let workdir_err = |path: &Path, source: io::Error| RunnerError::Workdir {
        path: path.to_path_buf(),
        source,
    };
    let prefix = sanitize_task_id(task_id);
    for _ in 0..WORKDIR_ATTEMPTS {
        let path = root.join(format!("{prefix}-{}", random_hex8()?));
        let mut builder = tokio::fs::DirBuilder::new();
        #[cfg(unix)]
        builder.mode(0o700);
        match builder.create(&path).await {
            Ok(()) => {
                #[cfg(unix)]
                {
                    // The umask may have stripped bits; make it exactly 0700.
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::Permissions::from_mode(0o700);
                    if let Err(e) = tokio::fs::set_permissions(&path, mode).await {
                        let _ = tokio::fs::remove_dir(&path).await;
                        return Err(workdir_err(&path, e));
                    }
                }
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(workdir_err(&path, e)),
        }
    }
    Err(workdir_err(
        root,
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no unused working directory name found",
        ),
    ))
}

/// Checks that the work root is a real directory of this user that nobody else may write to,
/// and gives it mode 0700 (0711 when the node runs as root, so that tasks running as
/// `runner.user` can reach their own directory).
#[cfg(unix)]
fn secure_work_root(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(root)?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() {
        return Err(io::Error::other(
            "the work root is not a directory (a symlink is refused)",
        ));
    }
    if meta.uid() != me {
        return Err(io::Error::other(format!(
            "the work root belongs to uid {}, not to this node's uid {me}",
            meta.uid()
        )));
    }
    let mode = if me == 0 { 0o711 } else { 0o700 };
    if meta.mode() & 0o7777 != mode {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Removes the per-task directory when the run ends (or is abandoned).
struct WorkdirGuard {
    path: Option<PathBuf>,
    keep: bool,
}

impl WorkdirGuard {
    async fn finish(&mut self) {
        let Some(path) = self.path.take() else { return };
        if self.keep {
            return;
        }
        let shown = path.display().to_string();
        match tokio::task::spawn_blocking(move || remove_tree(&path)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(workdir = %shown, error = %err, "cannot remove task directory");
            }
            Err(err) => {
                tracing::warn!(workdir = %shown, error = %err, "task directory removal failed");
            }
        }
    }
}

impl Drop for WorkdirGuard {
    fn drop(&mut self) {
        let Some(path) = self.path.take() else { return };
        if self.keep {
            return;
        }
        // Do not block an async executor thread with a possibly large removal.
        let spawned = std::thread::Builder::new()
            .name("crabnet-runner-cleanup".into())
            .spawn(move || {
                if let Err(err) = remove_tree(&path) {
                    tracing::warn!(workdir = %path.display(), error = %err, "cannot remove task directory");
                }
            });
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "cannot start cleanup thread; task directory left behind");
        }
    }
}

fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        #[cfg_attr(unix, allow(unused_variables))]
        Err(first) => {
            // The task may have made directories unreadable or read-only.
            #[cfg(unix)]
            {
                make_dirs_accessible(path);
                match std::fs::remove_dir_all(path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                }
            }
            #[cfg(not(unix))]
            {
                Err(first)
            }
        }
    }
}

/// Adds owner rwx to every directory below `root` (symlinks are not followed).
#[cfg(unix)]
fn make_dirs_accessible(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o700 != 0o700 {
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode | 0o700));
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Output collected so far: hash and length of everything, plus the excerpt.
#[derive(Default)]
struct Capture {
    hasher: Sha256,
    total: u64,
    excerpt: Vec<u8>,
    truncated: bool,
    error: Option<io::Error>,
}

impl Capture {
    fn push(&mut self, chunk: &[u8], cap: usize, hashed: bool) {
        if hashed {
            self.hasher.update(chunk);
        }
        self.total = self
            .total
            .saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
        let take = cap.saturating_sub(self.excerpt.len()).min(chunk.len());
        self.excerpt.extend_from_slice(&chunk[..take]);
        if take < chunk.len() {
            self.truncated = true;
        }
    }
}

fn lock(capture: &Mutex<Capture>) -> MutexGuard<'_, Capture> {
    capture
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads an output pipe (the combined one, or stdout or stderr alone) until
/// EOF, an error, or cancellation; `hashed`: its bytes go into the hash.
fn pump_output(
    mut reader: io::PipeReader,
    capture: &Mutex<Capture>,
    cancel: &AtomicBool,
    cap: usize,
    hashed: bool,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if cancel.load(Ordering::Acquire) {
            return;
        }
        #[cfg(unix)]
        match wait_readable(&reader, READER_POLL_MS) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(err) => {
                lock(capture).error.get_or_insert(err);
                return;
            }
        }
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => lock(capture).push(&buf[..n], cap, hashed),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                lock(capture).error.get_or_insert(err);
                return;
            }
        }
    }
}

/// Waits up to `timeout_ms` until a read on `fd` would not block.
#[cfg(unix)]
fn wait_readable(fd: &impl std::os::fd::AsRawFd, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid, initialised pollfd and the count is 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err);
    }
    // POLLIN, POLLHUP or POLLERR: the next read returns data, EOF or an error.
    Ok(rc > 0)
}

/// Drops the incomplete multi-byte UTF-8 sequence that a cap may have cut off
/// at the end of `bytes`.
fn trim_cut_char(bytes: &[u8]) -> &[u8] {
    let floor = bytes.len().saturating_sub(3);
    for i in (floor..bytes.len()).rev() {
        if bytes[i] & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for the lead byte
        }
        return match std::str::from_utf8(&bytes[i..]) {
            Err(e) if e.valid_up_to() == 0 && e.error_len().is_none() => &bytes[..i],
            _ => bytes,
        };
    }
    bytes
}

fn join_error(err: tokio::task::JoinError) -> RunnerError {
    RunnerError::Io(io::Error::other(format!(
        "runner helper task failed: {err}"
    )))
}

/// Owns the spawned child until it has been reaped. If dropped early (error
/// or cancelled future) it kills the process group and reaps in the background.
struct ChildGuard {
    child: Option<Child>,
    #[cfg(unix)]
    pgid: libc::pid_t,
    cancel: Arc<AtomicBool>,
}

impl ChildGuard {
    /// Sends SIGKILL to the whole process group (Unix) or kills the child (Windows).
    fn kill_group(&mut self) {
        #[cfg(unix)]
        {
            // The main child is never reaped before this is called, so the
            // process group id cannot have been reused by another process.
            // SAFETY: plain syscall with integer arguments.
            let rc = unsafe { libc::killpg(self.pgid, libc::SIGKILL) };
            if rc != 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::ESRCH) {
                    tracing::warn!(pgid = self.pgid, error = %err, "killpg failed");
                }
            }
        }
        #[cfg(not(unix))]
        {
            if let Some(child) = self.child.as_mut()
                && let Err(err) = child.kill()
            {
                tracing::warn!(error = %err, "cannot kill task process");
            }
        }
    }

    /// Collects the exit status of an exited child.
    fn reap(&mut self) -> io::Result<ExitStatus> {
        match self.child.take() {
            Some(mut child) => child.wait(),
            None => Err(io::Error::other("task process was already reaped")),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Release);
        if self.child.is_none() {
            return;
        }
        self.kill_group();
        if let Some(mut child) = self.child.take() {
            let spawned = std::thread::Builder::new()
                .name("crabnet-runner-reaper".into())
                .spawn(move || {
                    let _ = child.wait();
                });
            if let Err(err) = spawned {
                tracing::warn!(error = %err, "cannot start reaper thread; zombie process left");
            }
        }
    }
}

/// Blocks until process `pid` has exited, without reaping it.
#[cfg(unix)]
fn wait_exited_unreaped(pid: libc::pid_t) -> io::Result<()> {
    let id = libc::id_t::try_from(pid).map_err(|_| io::Error::other("invalid process id"))?;
    loop {
        // SAFETY: siginfo_t is plain old data; all-zero is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid out-pointer; WNOWAIT leaves the child waitable.
        let rc = unsafe { libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The thread that forked the task, waiting until the task's main process exits (Unix).
#[cfg(unix)]
type Watch = tokio::task::JoinHandle<io::Result<()>>;
/// Nothing: the child is polled (other platforms).
#[cfg(not(unix))]
type Watch = ();

/// Spawns `cmd` from a blocking-pool thread that then waits, without reaping, until the
/// task's main process exits (the returned [`Watch`]).
///
/// The kernel sends a child its parent-death signal when the *thread* that forked it ends,
/// not the process. The sandbox arms that signal in the task's main process, so that the
/// task dies with its node (even one killed with `SIGKILL`); forking from a thread that lives
/// exactly as long as the task keeps the signal from firing while the node runs.
#[cfg(unix)]
async fn spawn_watched(cmd: Command) -> (io::Result<Child>, Watch) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let watch = tokio::task::spawn_blocking(move || {
        let mut cmd = cmd;
        let spawned = cmd.spawn();
        drop(cmd);
        let pid = match &spawned {
            Ok(child) => child.id(),
            Err(_) => {
                let _ = tx.send(spawned);
                return Ok(());
            }
        };
        let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("invalid process id"));
        if let Err(Ok(mut child)) = tx.send(spawned) {
            // The run was cancelled while the task started: end it here.
            if let Ok(pid) = pid {
                // SAFETY: plain syscall; the unreaped child still pins its group id.
                unsafe { libc::killpg(pid, libc::SIGKILL) };
            }
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        wait_exited_unreaped(pid?)
    });
    let child = match rx.await {
        Ok(spawned) => spawned,
        Err(_) => Err(io::Error::other("the thread that starts the task failed")),
    };
    (child, watch)
}

/// Spawns `cmd` (other platforms: the child is polled, no thread waits for it).
#[cfg(not(unix))]
async fn spawn_watched(cmd: Command) -> (io::Result<Child>, Watch) {
    let mut cmd = cmd;
    let spawned = cmd.spawn();
    drop(cmd);
    (spawned, ())
}

/// How the wait for the main child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The child exited on its own.
    Exited,
    /// The wall-clock timeout fired; the task was killed.
    TimedOut,
    /// The run was interrupted; the task was killed.
    Interrupted,
}

/// Waits for the main child, enforcing the timeout and the interruption.
/// Returns the exit status, how the wait ended, and when the child was seen
/// to exit.
#[cfg(unix)]
async fn wait_child(
    guard: &mut ChildGuard,
    mut exited: Watch,
    timeout: Duration,
    interrupt: impl Future<Output = ()>,
) -> Result<(ExitStatus, Ended, Instant), RunnerError> {
    let ended = tokio::select! {
        res = &mut exited => {
            res.map_err(join_error)?.map_err(RunnerError::Io)?;
            Ended::Exited
        }
        () = tokio::time::sleep(timeout) => Ended::TimedOut,
        () = interrupt => Ended::Interrupted,
    };
    if ended != Ended::Exited {
        guard.kill_group();
        match tokio::time::timeout(KILL_GRACE, &mut exited).await {
            Ok(res) => res.map_err(join_error)?.map_err(RunnerError::Io)?,
            Err(_elapsed) => {
                return Err(RunnerError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "task process did not exit after SIGKILL",
                )));
            }
        }
    }
    let exited_at = Instant::now();
    // Kill whatever the task left running in its group (background jobs),
    // while the unreaped main child still pins the process group id.
    guard.kill_group();
    let status = guard.reap().map_err(RunnerError::Io)?;
    Ok((status, ended, exited_at))
}

/// Waits for the main child, enforcing the timeout and the interruption
/// (polling variant).
#[cfg(not(unix))]
async fn wait_child(
    guard: &mut ChildGuard,
    _exited: Watch,
    timeout: Duration,
    interrupt: impl Future<Output = ()>,
) -> Result<(ExitStatus, Ended, Instant), RunnerError> {
    let start = Instant::now();
    let mut interrupt = std::pin::pin!(interrupt);
    loop {
        let polled = match guard.child.as_mut() {
            Some(child) => child.try_wait().map_err(RunnerError::Io)?,
            None => {
                return Err(RunnerError::Io(io::Error::other(
                    "task process was already reaped",
                )));
            }
        };
        if let Some(status) = polled {
            guard.child = None;
            return Ok((status, Ended::Exited, Instant::now()));
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            guard.kill_group();
            let status = guard.reap().map_err(RunnerError::Io)?;
            return Ok((status, Ended::TimedOut, Instant::now()));
        }
        tokio::select! {
            () = tokio::time::sleep(WAIT_POLL.min(timeout - elapsed)) => {}
            () = &mut interrupt => {
                guard.kill_group();
                let status = guard.reap().map_err(RunnerError::Io)?;
                return Ok((status, Ended::Interrupted, Instant::now()));
            }
        }
    }
}

/// The sandbox prepared for one run (Linux), or the plain working directory elsewhere.
struct Isolation {
    #[cfg(target_os = "linux")]
    prepared: sandbox::Prepared,
    #[cfg(not(target_os = "linux"))]
    workdir: PathBuf,
}

impl Isolation {
    fn new(cfg: &RunnerConfig, needs: TaskNeeds, workdir: &Path) -> Result<Self, RunnerError> {
        #[cfg(target_os = "linux")]
        {
            let prepared = sandbox::prepare(
                &cfg.sandbox_settings(),
                needs,
                workdir,
                cfg.keep_work_dirs,
                Rlimits::from_config(cfg),
            )
            .map_err(RunnerError::Sandbox)?;
            Ok(Isolation { prepared })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (cfg, needs);
            Ok(Isolation {
                workdir: workdir.to_path_buf(),
            })
        }
    }

    /// The task's directory as the task sees it.
    fn task_dir(&self) -> &Path {
        #[cfg(target_os = "linux")]
        return self.prepared.task_dir();
        #[cfg(not(target_os = "linux"))]
        return &self.workdir;
    }

    fn info(&self) -> SandboxInfo {
        #[cfg(target_os = "linux")]
        return self.prepared.info();
        #[cfg(not(target_os = "linux"))]
        return SandboxInfo::default();
    }

    fn spawn_error(&self, err: io::Error) -> RunnerError {
        #[cfg(target_os = "linux")]
        {
            let text = self.prepared.explain(&err);
            if text != err.to_string() {
                return RunnerError::Sandbox(text);
            }
        }
        RunnerError::Spawn(err)
    }
}

fn build_command(req: &RunRequest<'_>, cfg: &RunnerConfig, isolation: &mut Isolation) -> Command {
    #[cfg(unix)]
    let mut cmd = {
        let mut cmd = Command::new("bash");
        cmd.arg("-lc").arg(req.command);
        cmd
    };
    #[cfg(windows)]
    let mut cmd = {
        use std::os::windows::process::CommandExt;
        let mut cmd = Command::new("cmd");
        cmd.arg("/C").raw_arg(req.command);
        cmd
    };
    let path = std::env::var_os("PATH")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.into());
    let task_dir = isolation.task_dir().to_path_buf();
    cmd.env_clear()
        .env("PATH", path)
        .env("HOME", &task_dir)
        .env("TMPDIR", &task_dir)
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .env("TZ", "UTC")
        .env("CRABNET_TASK_ID", req.task_id)
        .stdin(Stdio::null());
    if let Some(epoch) = req.source_date_epoch {
        cmd.env("SOURCE_DATE_EPOCH", epoch.to_string());
    }
    #[cfg(windows)]
    {
        // cmd.exe and most programs misbehave without these.
        for key in ["SystemRoot", "ComSpec"] {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        cmd.env("TEMP", &task_dir).env("TMP", &task_dir);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    #[cfg(target_os = "linux")]
    {
        // The sandbox enters the directory itself (it may only exist inside its namespace)
        // and applies the resource limits.
        let _ = cfg;
        isolation.prepared.install(&mut cmd);
    }
    #[cfg(all(unix, not(target_os = "linux")))]
    {
        use std::os::unix::process::CommandExt;
        cmd.current_dir(&task_dir);
        let limits = Rlimits::from_config(cfg);
        // SAFETY: the closure runs between fork and exec and only makes raw,
        // async-signal-safe getrlimit/setrlimit calls on copied integers.
        unsafe {
            cmd.pre_exec(move || limits.apply());
        }
    }
    #[cfg(windows)]
    {
        let _ = cfg;
        cmd.current_dir(&task_dir);
    }
    cmd
}

/// Config value to rlimit: 0 and out-of-range values mean unlimited.
#[cfg(unix)]
fn to_rlim(value: u64) -> libc::rlim_t {
    if value == 0 {
        return libc::RLIM_INFINITY;
    }
    libc::rlim_t::try_from(value).unwrap_or(libc::RLIM_INFINITY)
}

#[cfg(all(unix, target_env = "gnu"))]
type RlimitResource = libc::__rlimit_resource_t;
#[cfg(all(unix, not(target_env = "gnu")))]
type RlimitResource = libc::c_int;

/// The task's resource limits, applied between fork and exec.
#[cfg(unix)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rlimits([(RlimitResource, libc::rlim_t); 5]);

#[cfg(unix)]
impl Rlimits {
    fn from_config(cfg: &RunnerConfig) -> Rlimits {
        Rlimits([
            (libc::RLIMIT_CPU, to_rlim(cfg.cpu_seconds)),
            (libc::RLIMIT_AS, to_rlim(cfg.address_space_bytes)),
            (libc::RLIMIT_FSIZE, to_rlim(cfg.file_size_bytes)),
            (libc::RLIMIT_NPROC, to_rlim(cfg.max_processes)),
            (libc::RLIMIT_CORE, 0),
        ])
    }

    /// Sets every limit as soft and hard limit; a hard limit the process may not raise is
    /// kept when it is lower. Only raw system calls: safe between fork and exec.
    pub(crate) fn apply(&self) -> io::Result<()> {
        for &(resource, want) in &self.0 {
            let mut lim = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            // SAFETY: plain syscalls on valid, initialised structs.
            unsafe {
                if libc::setrlimit(resource, &lim) == 0 {
                    continue;
                }
                // Not allowed to raise the hard limit: settle for the inherited hard limit
                // if it is lower.
                let mut current = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(resource, &mut current) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let capped = want.min(current.rlim_max);
                lim.rlim_cur = capped;
                lim.rlim_max = capped;
                if libc::setrlimit(resource, &lim) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

async fn execute(
    req: &RunRequest<'_>,
    cfg: &RunnerConfig,
    workdir: &Path,
    needs: TaskNeeds,
    interrupt: impl Future<Output = ()>,
) -> Result<RunOutcome, RunnerError> {
    let mut isolation = Isolation::new(cfg, needs, workdir)?;
    let (reader, writer) = io::pipe().map_err(RunnerError::Io)?;
    // Hashing stdout alone needs stderr on a pipe of its own (the excerpt still
    // interleaves both, in the order the two pumps read them).
    let (err_reader, writer_err) = match req.output {
        OutputHash::Combined => (None, writer.try_clone().map_err(RunnerError::Io)?),
        OutputHash::Stdout => {
            let (r, w) = io::pipe().map_err(RunnerError::Io)?;
            (Some(r), w)
        }
    };

    let started_at_ms = unix_now_ms();
    let start = Instant::now();
    let mut cmd = build_command(req, cfg, &mut isolation);
    cmd.stdout(writer).stderr(writer_err);
    // `cmd` holds the parent's copies of the write ends; it is dropped right
    // after the spawn, so EOF arrives once the task's processes exit.
    let (child, exited) = spawn_watched(cmd).await;
    let child = child.map_err(|e| isolation.spawn_error(e))?;

    let cancel = Arc::new(AtomicBool::new(false));
    let mut guard = ChildGuard {
        #[cfg(unix)]
        pgid: match libc::pid_t::try_from(child.id()) {
            Ok(pid) => pid,
            Err(_) => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunnerError::Io(io::Error::other("process id out of range")));
            }
        },
        child: Some(child),
        cancel: Arc::clone(&cancel),
    };

    let capture = Arc::new(Mutex::new(Capture::default()));
    let cap = cfg.max_output_bytes;
    let mut pump = {
        let capture = Arc::clone(&capture);
        let cancel = Arc::clone(&cancel);
        tokio::task::spawn_blocking(move || pump_output(reader, &capture, &cancel, cap, true))
    };
    let mut err_pump = err_reader.map(|r| {
        let capture = Arc::clone(&capture);
        let cancel = Arc::clone(&cancel);
        tokio::task::spawn_blocking(move || pump_output(r, &capture, &cancel, cap, false))
    });

    let (status, ended, exited_at) = wait_child(&mut guard, exited, req.timeout, interrupt).await?;
    let duration_ms =
        u64::try_from(exited_at.duration_since(start).as_millis()).unwrap_or(u64::MAX);

    let drained = async {
        (&mut pump).await?;
        if let Some(p) = &mut err_pump {
            p.await?;
        }
        Ok::<(), tokio::task::JoinError>(())
    };
    match tokio::time::timeout(DRAIN_GRACE, drained).await {
        Ok(res) => res.map_err(join_error)?,
        Err(_elapsed) => {
            cancel.store(true, Ordering::Release);
            tracing::warn!(
                task_id = req.task_id,
                "output pipe still open after the task's process group ended \
                 (a process escaped the group?); output collection stopped"
            );
        }
    }
    let captured = std::mem::take(&mut *lock(&capture));
    if let Some(err) = captured.error {
        return Err(RunnerError::Io(err));
    }
    drop(guard);

    #[cfg(unix)]
    let signal = {
        use std::os::unix::process::ExitStatusExt;
        status.signal()
    };
    #[cfg(not(unix))]
    let signal = None;

    let excerpt = if captured.truncated {
        trim_cut_char(&captured.excerpt)
    } else {
        &captured.excerpt[..]
    };
    Ok(RunOutcome {
        exit_code: status.code(),
        signal,
        timed_out: ended == Ended::TimedOut,
        interrupted: ended == Ended::Interrupted,
        started_at_ms,
        finished_at_ms: started_at_ms.saturating_add(duration_ms),
        duration_ms,
        output_sha256: hex::encode(captured.hasher.finalize()),
        output_bytes: captured.total,
        output_excerpt: String::from_utf8_lossy(excerpt).into_owned(),
        output_truncated: captured.truncated,
        sandbox: isolation.info(),
    })
}

#[cfg(all(test, target_os = "linux"))]
#[path = "../tests/support/procs.rs"]
mod procs;

#[cfg(all(test, target_os = "linux"))]
mod tests {
    // These tests rely on Linux specifics (bash, /proc, GNU coreutils).
    use super::procs::processes_with_arg;
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn sha_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn request<'a>(root: &'a Path, command: &'a str) -> RunRequest<'a> {
        RunRequest {
            task_id: "test-task",
            command,
            timeout: 20 * SECOND,
            work_root: root,
            network: false,
            isolation: SandboxLevel::Full,
            source_date_epoch: None,
            output: OutputHash::Combined,
        }
    }

    async fn run_ok(root: &Path, command: &str, cfg: &RunnerConfig) -> RunOutcome {
        run(request(root, command), cfg)
            .await
            .unwrap_or_else(|e| panic!("run({command:?}) failed: {e}"))
    }

    /// [`run_ok`] with the default configuration.
    async fn run_default(root: &Path, command: &str) -> RunOutcome {
        run_ok(root, command, &RunnerConfig::default()).await
    }

    /// [`run_ok`] in a fresh work root, removed afterwards.
    async fn run_fresh(command: &str, cfg: &RunnerConfig) -> RunOutcome {
        let root = tempfile::tempdir().unwrap();
        run_ok(root.path(), command, cfg).await
    }

    /// Runs `command` with the default settings in a new temporary root, which it returns
    /// with the outcome and how long the run took: the root lives as long as the caller keeps
    /// it (a process that escaped the run may still be in it).
    async fn run_timed(command: &str) -> (RunOutcome, Duration, tempfile::TempDir) {
        let root = tempfile::tempdir().unwrap();
        let began = Instant::now();
        let out = run_default(root.path(), command).await;
        (out, began.elapsed(), root)
    }

    async fn wait_gone(arg: &str) -> Vec<u32> {
        for _ in 0..20 {
            let left = processes_with_arg(arg);
            if left.is_empty() {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        processes_with_arg(arg)
    }

    #[tokio::test]
    async fn success_records_output_and_hash() {
        let root = tempfile::tempdir().unwrap();
        let out = run_default(root.path(), "echo hello").await;
        assert!(out.success(), "{out:?}");
        assert_eq!(out.exit_code, Some(0));
        assert_eq!(out.signal, None);
        assert!(!out.timed_out);
        assert_eq!(out.output_excerpt, "hello\n");
        assert_eq!(out.output_bytes, 6);
        assert!(!out.output_truncated);
        assert_eq!(out.output_sha256, sha_hex(b"hello\n"));
        assert_eq!(
            out.output_sha256,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        assert!(out.started_at_ms > 1_600_000_000_000);
        assert_eq!(out.finished_at_ms, out.started_at_ms + out.duration_ms);
    }

    #[tokio::test]
    async fn nonzero_exit_code_is_recorded() {
        let root = tempfile::tempdir().unwrap();
        let out = run_default(root.path(), "echo x; exit 3").await;
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.signal, None);
        assert!(!out.timed_out);
        assert!(!out.success());
    }

    #[tokio::test]
    async fn termination_signal_is_recorded() {
        let root = tempfile::tempdir().unwrap();
        let out = run_default(root.path(), "kill -TERM $$").await;
        assert_eq!(out.exit_code, None);
        assert_eq!(out.signal, Some(libc::SIGTERM));
        assert!(!out.timed_out);
        assert!(!out.success());
    }

    #[test]
    fn the_forged_hash_is_what_its_doc_says() {
        assert_eq!(
            FORGED_OUTPUT_SHA256,
            sha_hex(b"crabnet test: forged result")
        );
    }

    #[tokio::test]
    async fn stdout_and_stderr_are_combined_in_order() {
        let root = tempfile::tempdir().unwrap();
        let out = run_default(root.path(), "echo a; echo b >&2; echo c; printf d >&2").await;
        assert_eq!(out.output_excerpt, "a\nb\nc\nd");
        assert_eq!(out.output_sha256, sha_hex(b"a\nb\nc\nd"));
        assert_eq!(out.output_bytes, 7);
    }

    /// Replicated seeds may hash stdout alone: diagnostics on stderr that differ between
    /// machines do not change the hash; the excerpt and byte count still cover both.
    #[tokio::test]
    async fn stdout_alone_can_be_hashed() {
        let root = tempfile::tempdir().unwrap();
        let cmd = "echo a; echo \"host $RANDOM\" >&2; echo c";
        let out = run(
            RunRequest {
                output: OutputHash::Stdout,
                ..request(root.path(), cmd)
            },
            &RunnerConfig::default(),
        )
        .await
        .unwrap();
        assert_eq!(out.output_sha256, sha_hex(b"a\nc\n"));
        assert!(out.output_excerpt.contains("host "), "{out:?}");
        assert!(out.output_bytes > 4);
    }

    /// The environment is the same on every machine: locale, time zone and the task's
    /// reference time.
    #[tokio::test]
    async fn the_environment_is_fixed_for_reproducible_output() {
        let root = tempfile::tempdir().unwrap();
        let out = run(
            RunRequest {
                source_date_epoch: Some(1_700_000_000),
                ..request(
                    root.path(),
                    "echo \"$LC_ALL $TZ $SOURCE_DATE_EPOCH\"; date -d @0 +%H:%M; \
                     date -d \"@$SOURCE_DATE_EPOCH\" +%F",
                )
            },
            &RunnerConfig::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            out.output_excerpt,
            "C.UTF-8 UTC 1700000000\n00:00\n2023-11-14\n"
        );
        let out = run_default(root.path(), "echo \"${SOURCE_DATE_EPOCH-unset}\"").await;
        assert_eq!(out.output_excerpt, "unset\n");
    }

    #[tokio::test]
    async fn stdin_is_dev_null() {
        let root = tempfile::tempdir().unwrap();
        let out = run_default(root.path(), "readlink /proc/$$/fd/0; cat; echo rc=$?").await;
        assert_eq!(out.output_excerpt, "/dev/null\nrc=0\n");
    }

    #[tokio::test]
    async fn timeout_is_enforced() {
        let root = tempfile::tempdir().unwrap();
        let began = Instant::now();
        let out = run(
            RunRequest {
                timeout: Duration::from_millis(300),
                ..request(root.path(), "sleep 30")
            },
            &RunnerConfig::default(),
        )
        .await
        .unwrap();
        let elapsed = began.elapsed();
        assert!(out.timed_out, "{out:?}");
        assert!(!out.success());
        assert_eq!(out.exit_code, None);
        assert_eq!(out.signal, Some(libc::SIGKILL));
        assert!(elapsed < 5 * SECOND, "took {elapsed:?}");
        assert!(out.duration_ms >= 300 && out.duration_ms < 5000, "{out:?}");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let root = tempfile::tempdir().unwrap();
        let marks = tempfile::tempdir().unwrap();
        let marker = marks.path().join("marker");
        let command = format!(
            "(sleep 1.0137; touch '{}') & echo started; sleep 37.25",
            marker.display()
        );
        let out = run(
            RunRequest {
                timeout: Duration::from_millis(800),
                ..request(root.path(), &command)
            },
            &RunnerConfig::default(),
        )
        .await
        .unwrap();
        assert!(out.timed_out, "{out:?}");
        // The background subshell really had started before the kill.
        assert_eq!(out.output_excerpt, "started\n");
        assert!(wait_gone("37.25").await.is_empty(), "main sleep survived");
        assert!(
            wait_gone("1.0137").await.is_empty(),
            "background sleep survived"
        );
        // Had only the shell been killed, the subshell would touch the marker
        // about 1 s after the start.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !marker.exists(),
            "background process outlived the timeout kill"
        );
    }

    #[tokio::test]
    async fn dropping_the_future_kills_the_task_and_cleans_up() {
        let root = tempfile::tempdir().unwrap();
        let cfg = RunnerConfig::default();
        let fut = run(
            request(root.path(), "sleep 37.9 & echo started; sleep 38.1"),
            &cfg,
        );
        let res = tokio::time::timeout(Duration::from_millis(400), fut).await;
        assert!(res.is_err(), "run should still have been running: {res:?}");
        assert!(
            wait_gone("37.9").await.is_empty(),
            "background sleep survived"
        );
        assert!(wait_gone("38.1").await.is_empty(), "main sleep survived");
        // The working directory is removed by a background thread.
        for _ in 0..40 {
            if std::fs::read_dir(root.path()).unwrap().count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("workdir of a cancelled run was not removed");
    }

    #[tokio::test]
    async fn process_escaping_the_group_does_not_hang_the_run() {
        let (out, elapsed, _root) = run_timed("setsid sleep 6.173 & echo x").await;
        // The escaped sleep keeps the pipe open: collection stops after the grace period.
        assert!(out.success(), "{out:?}");
        assert_eq!(out.output_excerpt, "x\n");
        assert!(elapsed < DRAIN_GRACE + 2 * SECOND, "took {elapsed:?}");
        for pid in processes_with_arg("6.173") {
            // SAFETY: plain syscall; the pid belongs to the sleep this test started.
            unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGKILL) };
        }
    }

    #[tokio::test]
    async fn leftover_background_process_does_not_hang_the_run() {
        let (out, elapsed, _root) = run_timed("sleep 100.31 & echo done").await;
        assert!(out.success(), "{out:?}");
        assert_eq!(out.output_excerpt, "done\n");
        // Well below DRAIN_GRACE: EOF came from killing the group, not from giving up.
        assert!(
            elapsed < DRAIN_GRACE - Duration::from_millis(500),
            "took {elapsed:?}"
        );
        assert!(
            wait_gone("100.31").await.is_empty(),
            "background sleep survived"
        );
    }

    #[tokio::test]
    async fn output_is_capped_but_fully_hashed() {
        let cfg = RunnerConfig {
            max_output_bytes: 1024,
            ..RunnerConfig::default()
        };
        let out = run_fresh("seq 1 300000 | head -c 1048576", &cfg).await;
        let mut expected: Vec<u8> = (1..=300_000)
            .flat_map(|i: u32| format!("{i}\n").into_bytes())
            .collect();
        expected.truncate(1_048_576);
        assert!(out.success(), "{out:?}");
        assert_eq!(out.output_bytes, 1_048_576);
        assert!(out.output_truncated);
        assert_eq!(out.output_excerpt.len(), 1024);
        assert_eq!(out.output_excerpt.as_bytes(), &expected[..1024]);
        assert_eq!(out.output_sha256, sha_hex(&expected));
    }

    #[tokio::test]
    async fn output_exactly_at_cap_is_not_truncated() {
        let root = tempfile::tempdir().unwrap();
        let cfg = RunnerConfig {
            max_output_bytes: 4,
            ..RunnerConfig::default()
        };
        let out = run_ok(root.path(), "printf abcd", &cfg).await;
        assert_eq!(out.output_excerpt, "abcd");
        assert!(!out.output_truncated);
        let out = run_ok(root.path(), "printf abcde", &cfg).await;
        assert_eq!(out.output_excerpt, "abcd");
        assert!(out.output_truncated);
        assert_eq!(out.output_bytes, 5);
    }

    #[tokio::test]
    async fn cap_inside_a_multibyte_char_drops_the_partial_char() {
        let cfg = RunnerConfig {
            max_output_bytes: 4,
            ..RunnerConfig::default()
        };
        // "ab" + U+20AC (3 bytes): the cap keeps "ab" plus one byte of the euro sign.
        let out = run_fresh("printf 'ab\\342\\202\\254cd'", &cfg).await;
        assert_eq!(out.output_bytes, 7);
        assert!(out.output_truncated);
        assert_eq!(out.output_excerpt, "ab");
        assert_eq!(out.output_sha256, sha_hex("ab\u{20ac}cd".as_bytes()));
    }

    #[test]
    fn trim_cut_char_only_trims_incomplete_tails() {
        assert_eq!(trim_cut_char(b"abc"), b"abc");
        assert_eq!(trim_cut_char(b"ab\xe2\x82"), b"ab");
        assert_eq!(trim_cut_char(b"ab\xe2"), b"ab");
        assert_eq!(
            trim_cut_char("ab\u{20ac}".as_bytes()),
            "ab\u{20ac}".as_bytes()
        );
        assert_eq!(trim_cut_char(b"ab\xff"), b"ab\xff");
        assert_eq!(trim_cut_char(b"a\x82\x82"), b"a\x82\x82");
        assert_eq!(trim_cut_char(b""), b"");
    }

    #[tokio::test]
    async fn rlimits_are_visible_to_the_command() {
        let cfg = RunnerConfig {
            cpu_seconds: 7,
            address_space_bytes: 2 * 1024 * 1024 * 1024,
            file_size_bytes: 10 * 1024 * 1024,
            max_processes: 333,
            ..RunnerConfig::default()
        };
        // bash reports -v in KiB and -f in 1024-byte blocks (outside POSIX mode).
        let out = run_fresh(
            "for o in t v f u c; do echo \"$(ulimit -S -$o) $(ulimit -H -$o)\"; done",
            &cfg,
        )
        .await;
        assert_eq!(
            out.output_excerpt,
            "7 7\n2097152 2097152\n10240 10240\n333 333\n0 0\n"
        );
    }

    #[tokio::test]
    async fn zero_limit_means_unlimited() {
        let cfg = RunnerConfig {
            cpu_seconds: 0,
            address_space_bytes: 0,
            file_size_bytes: 0,
            ..RunnerConfig::default()
        };
        let out = run_fresh("ulimit -t; ulimit -v; ulimit -f; ulimit -u", &cfg).await;
        assert_eq!(out.output_excerpt, "unlimited\nunlimited\nunlimited\n512\n");
    }

    #[tokio::test]
    async fn cpu_limit_is_enforced() {
        let cfg = RunnerConfig {
            cpu_seconds: 1,
            ..RunnerConfig::default()
        };
        let out = run_fresh("while :; do :; done", &cfg).await;
        assert!(!out.timed_out, "{out:?}");
        assert!(!out.success());
        assert!(
            matches!(out.signal, Some(libc::SIGXCPU | libc::SIGKILL)),
            "{out:?}"
        );
        assert!(out.duration_ms < 10_000, "{out:?}");
    }

    #[tokio::test]
    async fn file_size_limit_is_enforced() {
        let root = tempfile::tempdir().unwrap();
        let cfg = RunnerConfig {
            file_size_bytes: 1_000_000,
            keep_work_dirs: true,
            ..RunnerConfig::default()
        };
        let out = run_ok(root.path(), "head -c 2000000 /dev/zero > f", &cfg).await;
        assert!(!out.success(), "{out:?}");
        assert!(
            out.exit_code.is_some_and(|c| c != 0) || out.signal == Some(libc::SIGXFSZ),
            "{out:?}"
        );
        let len = std::fs::metadata(only_dir(root.path()).join("f"))
            .unwrap()
            .len();
        assert!(len <= 1_000_000, "file grew to {len} bytes");
    }

    /// The one task directory under `root` (runs with `keep_work_dirs`).
    fn only_dir(root: &Path) -> PathBuf {
        let dirs: Vec<PathBuf> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        dirs.into_iter().next().unwrap()
    }

    #[tokio::test]
    async fn each_run_gets_a_fresh_private_workdir() {
        let root = tempfile::tempdir().unwrap();
        let canon_root = std::fs::canonicalize(root.path()).unwrap();
        let cfg = RunnerConfig {
            keep_work_dirs: true,
            ..RunnerConfig::default()
        };
        let cmd = "stat -c %a .; ls -A | wc -l; echo \"$CRABNET_TASK_ID\" > marker";
        let (a, b) = tokio::join!(
            run_ok(root.path(), cmd, &cfg),
            run_ok(root.path(), cmd, &cfg)
        );
        for out in [&a, &b] {
            assert_eq!(out.output_excerpt, "700\n0\n", "{out:?}");
        }
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort();
        assert_eq!(dirs.len(), 2, "{dirs:?}");
        for dir in &dirs {
            assert_eq!(dir.parent(), Some(canon_root.as_path()));
            let name = dir.file_name().unwrap().to_str().unwrap();
            let suffix = name.strip_prefix("test-task-").unwrap();
            assert_eq!(suffix.len(), 8);
            assert!(
                suffix
                    .bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
            assert_eq!(
                std::fs::read_to_string(dir.join("marker")).unwrap(),
                "test-task\n"
            );
        }
    }

    #[tokio::test]
    async fn workdirs_are_removed_after_the_run() {
        let root = tempfile::tempdir().unwrap();
        for policy in [SandboxPolicy::Required, SandboxPolicy::None] {
            let cfg = RunnerConfig {
                sandbox: policy,
                ..RunnerConfig::default()
            };
            let out = run_ok(
                root.path(),
                "mkdir -p a/b && touch a/b/f && chmod 000 a/b && chmod 500 a && echo done",
                &cfg,
            )
            .await;
            assert_eq!(out.output_excerpt, "done\n", "{policy:?}: {out:?}");
            assert_eq!(
                std::fs::read_dir(root.path()).unwrap().count(),
                0,
                "{policy:?}: workdir not removed"
            );
        }
    }

    #[tokio::test]
    async fn a_work_root_planted_by_someone_else_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // A symlink (e.g. planted in a shared /tmp) pointing somewhere the attacker chose.
        let target = dir.path().join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        let link = dir.path().join("crabnet-work");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = run(request(&link, "true"), &RunnerConfig::default())
            .await
            .unwrap_err();
        assert!(matches!(err, RunnerError::Workdir { .. }), "{err}");
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
        // A directory that belongs to another user.
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let foreign = dir.path().join("foreign");
            std::fs::create_dir(&foreign).unwrap();
            std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
            let err = run(request(&foreign, "true"), &RunnerConfig::default())
                .await
                .unwrap_err();
            assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
        }
        // Our own directory with loose permissions is tightened.
        let loose = dir.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();
        run_default(&loose, "true").await;
        let mode = std::fs::metadata(&loose).unwrap().permissions().mode() & 0o777;
        assert!(mode == 0o700 || mode == 0o711, "{mode:o}");
    }

    /// The owner's bits count for the owner, the group's for the group, the others' for
    /// everyone else (a task after the uid drop has no supplementary groups).
    #[test]
    fn a_closed_directory_is_found_by_the_bits_of_the_tasks_class() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let top = std::fs::canonicalize(dir.path()).unwrap();
        let inner = top.join("inner");
        std::fs::create_dir(&inner).unwrap();
        let set = |mode: u32| {
            std::fs::set_permissions(&top, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let (me, my_group) = effective_ids();
        let (other, other_group) = (me.wrapping_add(1), my_group.wrapping_add(1));
        let closed_at = |uid, gid| {
            first_closed_dir(&inner, uid, gid)
                .unwrap()
                .map(|c| (c.path, c.mode))
        };
        set(0o700);
        assert_eq!(closed_at(other, other_group), Some((top.clone(), 0o700)));
        assert_eq!(closed_at(me, other_group), None);
        set(0o711);
        assert_eq!(closed_at(other, other_group), None);
        // The owner's and the group's bits apply to them even when the others' are wider.
        set(0o611);
        assert_eq!(closed_at(me, my_group), Some((top.clone(), 0o611)));
        set(0o701);
        assert_eq!(closed_at(other, my_group), Some((top.clone(), 0o701)));
        assert_eq!(closed_at(other, other_group), None);
        let shown = first_closed_dir(&inner, other, my_group)
            .unwrap()
            .unwrap()
            .to_string();
        assert_eq!(
            shown,
            format!("{} (mode 0701, owner uid {me})", top.display())
        );
        set(0o700);
    }

    fn effective_ids() -> (u32, u32) {
        // SAFETY: geteuid/getegid cannot fail.
        unsafe { (libc::geteuid(), libc::getegid()) }
    }

    /// Without a uid drop (the policy `none`, or a node not running as root) the task runs as
    /// the node, which may enter its own directories: the work root stays, whatever the modes
    /// above it.
    #[test]
    fn tasks_of_the_nodes_own_user_keep_the_work_root() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let work_root = dir.path().join("work");
        let cfg = RunnerConfig {
            sandbox: SandboxPolicy::None,
            ..RunnerConfig::default()
        };
        let root = task_root(&work_root, &cfg).unwrap();
        assert_eq!(root, std::fs::canonicalize(&work_root).unwrap());
    }

    #[tokio::test]
    async fn keep_work_dirs_keeps_the_directory() {
        let root = tempfile::tempdir()
            .unwrap()
            .path()
            .join("created/on/demand");
        let cfg = RunnerConfig {
            keep_work_dirs: true,
            ..RunnerConfig::default()
        };
        run_ok(&root, "echo data > file", &cfg).await;
        let dir = only_dir(&root);
        assert_eq!(std::fs::read_to_string(dir.join("file")).unwrap(), "data\n");
        std::fs::remove_dir_all(root.parent().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn without_a_sandbox_the_task_works_in_its_host_directory() {
        let root = tempfile::tempdir().unwrap();
        let canon_root = std::fs::canonicalize(root.path()).unwrap();
        let cfg = RunnerConfig {
            sandbox: SandboxPolicy::None,
            ..RunnerConfig::default()
        };
        let out = run_ok(root.path(), "pwd", &cfg).await;
        let dir = PathBuf::from(out.output_excerpt.trim_end());
        assert_eq!(dir.parent(), Some(canon_root.as_path()));
        assert_eq!(out.sandbox.level, SandboxLevel::None);
        assert!(out.sandbox.features.is_empty());
    }

    #[tokio::test]
    async fn environment_is_cleared() {
        // SAFETY: std serialises its own environment accesses; the tests only
        // touch the environment through std.
        unsafe { std::env::set_var("CRABNET_RUNNER_TEST_SECRET", "hunter2") };
        let out = run_fresh(
            "echo \"secret=${CRABNET_RUNNER_TEST_SECRET-unset}\"; \
             echo \"task=$CRABNET_TASK_ID\"; echo \"home=$HOME\"; echo \"tmp=$TMPDIR\"; \
             echo \"lang=$LANG\"; pwd; env | grep -c CRABNET_RUNNER_TEST_SECRET",
            &RunnerConfig::default(),
        )
        .await;
        let lines: Vec<&str> = out.output_excerpt.lines().collect();
        assert_eq!(lines.len(), 7, "{out:?}");
        let pwd = lines[5];
        assert_eq!(lines[0], "secret=unset");
        assert_eq!(lines[1], "task=test-task");
        assert_eq!(lines[2], format!("home={pwd}"));
        assert_eq!(lines[3], format!("tmp={pwd}"));
        assert_eq!(lines[4], "lang=C.UTF-8");
        assert_eq!(lines[6], "0");
    }

    #[tokio::test]
    async fn bad_input_is_an_error_not_a_panic() {
        let root = tempfile::tempdir().unwrap();
        let cfg = RunnerConfig::default();
        for command in ["", "  \n\t ", "echo a\0b"] {
            let err = run(request(root.path(), command), &cfg).await.unwrap_err();
            assert!(matches!(err, RunnerError::InvalidCommand(_)), "{err}");
        }
        let err = run(
            RunRequest {
                task_id: "a\0b",
                ..request(root.path(), "true")
            },
            &cfg,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, RunnerError::InvalidTaskId(_)), "{err}");

        let file = root.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let err = run(request(&file, "true"), &cfg).await.unwrap_err();
        assert!(matches!(err, RunnerError::Workdir { .. }), "{err}");
        assert!(err.to_string().contains("not-a-dir"), "{err}");

        // Nothing was created for the rejected requests.
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn task_id_is_sanitized_for_the_workdir_name() {
        let root = tempfile::tempdir().unwrap();
        let canon_root = std::fs::canonicalize(root.path()).unwrap();
        let out = run(
            RunRequest {
                task_id: "../../etc/x y",
                ..request(root.path(), "echo \"$CRABNET_TASK_ID\"")
            },
            &RunnerConfig {
                keep_work_dirs: true,
                ..RunnerConfig::default()
            },
        )
        .await
        .unwrap();
        let lines: Vec<&str> = out.output_excerpt.lines().collect();
        let dir = only_dir(root.path());
        assert_eq!(dir.parent(), Some(canon_root.as_path()));
        assert!(
            dir.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("______etc_x_y-"),
            "{dir:?}"
        );
        assert_eq!(lines[0], "../../etc/x y");
    }

    #[test]
    fn sanitize_task_id_rules() {
        assert_eq!(sanitize_task_id("abc-DEF_09"), "abc-DEF_09");
        assert_eq!(sanitize_task_id("../x"), "___x");
        assert_eq!(sanitize_task_id(""), "task");
        assert_eq!(sanitize_task_id("é/ü"), "___");
        assert_eq!(sanitize_task_id(&"a".repeat(200)), "a".repeat(64));
    }

    #[tokio::test]
    async fn shell_that_cannot_start_fails_cleanly() {
        let root = tempfile::tempdir().unwrap();
        // An address-space limit far too small for bash to even be loaded.
        let cfg = RunnerConfig {
            address_space_bytes: 4096,
            ..RunnerConfig::default()
        };
        let result = run(request(root.path(), "true"), &cfg).await;
        // Depending on the kernel, exec fails (spawn error) or the new image
        // dies at once: never a success, never a panic, no directory left.
        match result {
            Err(RunnerError::Spawn(_)) => {}
            Ok(out) => {
                assert!(!out.success(), "{out:?}");
                assert!(out.signal.is_some() || out.exit_code != Some(0), "{out:?}");
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn config_deserializes_with_defaults_and_rejects_unknown_fields() {
        use serde::Deserialize;
        use serde::de::value::{Error as DeError, MapDeserializer};
        let partial = MapDeserializer::<_, DeError>::new([("cpu_seconds", 5u64)].into_iter());
        let cfg = RunnerConfig::deserialize(partial).unwrap();
        assert_eq!(
            cfg,
            RunnerConfig {
                cpu_seconds: 5,
                ..RunnerConfig::default()
            }
        );
        let unknown = MapDeserializer::<_, DeError>::new([("cpu_secs", 5u64)].into_iter());
        let err = RunnerConfig::deserialize(unknown).unwrap_err();
        assert!(err.to_string().contains("cpu_secs"), "{err}");
    }

    #[test]
    fn defaults() {
        let cfg = RunnerConfig::default();
        assert_eq!(cfg.max_output_bytes, 16_384);
        assert_eq!(cfg.cpu_seconds, 600);
        assert_eq!(cfg.address_space_bytes, 4_294_967_296);
        assert_eq!(cfg.file_size_bytes, 1_073_741_824);
        assert_eq!(cfg.max_processes, 512);
        assert!(!cfg.keep_work_dirs);
    }
}
