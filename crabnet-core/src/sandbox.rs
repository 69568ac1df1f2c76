//! The task sandbox: what stands between a stranger's command and the node that runs it.
//!
//! Every task's command comes from another node, so the runner treats it as hostile. On Linux
//! the [`runner`](crate::runner) starts each task inside a sandbox built only from kernel
//! features an unprivileged process may use:
//!
//! * **user, mount, PID, IPC, UTS and network namespaces** (`user_ns`, `mount_ns`, `pid_ns`,
//!   `net_ns`): the task sees a private, size-capped `/tmp` (its working directory, the disk
//!   quota: `disk_quota`) and a private `/proc` that shows only its own processes; every process
//!   it starts dies with it (`setsid` does not escape); it has no network but an unconfigured
//!   loopback device; its process-count limit counts only its own processes (`nproc_per_task`).
//! * **Landlock** (`landlock_fs`): read and execute access to the system directories and
//!   `runner.read_only_paths`, read and write access to the task's working directory, nothing
//!   else. `landlock_net` also denies TCP bind and connect, `landlock_scope` denies signals and
//!   abstract Unix sockets outside the sandbox.
//! * **seccomp** (`seccomp`) with **no new privileges** (`no_new_privs`): no ptrace, mounts, BPF,
//!   keyrings, perf events, kexec, kernel modules, io_uring, new namespaces; without a network
//!   namespace also no internet, netlink or packet sockets (`net_seccomp`).
//! * **identity** (`uid_drop`): a node running as root runs tasks as `runner.user` (default
//!   `nobody`), which owns the task's directory and nothing else of the node's; that directory
//!   lies where the user can reach it without any directory above the data directory being
//!   opened (see [`runner::task_root`](crate::runner::task_root)).
//!
//! [`SandboxPolicy`] decides what happens when the kernel lacks a feature. What a task actually
//! ran under is recorded in its [`TaskResult`](crate::model::TaskResult) as a
//! [`SandboxInfo`]; what this node can build is its [`SandboxStatus`].
//!
//! Other platforms run tasks without a sandbox (level `none`), which only the `none` policy
//! accepts.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{SandboxInfo, SandboxLevel, Seed};

#[cfg(target_os = "linux")]
mod linux;

/// What a node does when the kernel cannot build the full sandbox (`runner.sandbox`).
///
/// The default is `required` on Linux. Elsewhere, where no sandbox is implemented yet, it is
/// `best_effort`, which runs tasks without one (level `none`, as `crabnet status` says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxPolicy {
    /// Build the full sandbox or run nothing: the node refuses to bid and to run, with an
    /// error naming the missing kernel feature.
    Required,
    /// Use every feature the kernel offers; run with a partial sandbox when some are missing.
    BestEffort,
    /// No sandbox: tasks run as the node's user with resource limits only. Must be chosen
    /// explicitly; the node logs a warning at every start.
    None,
}

impl Default for SandboxPolicy {
    fn default() -> Self {
        if cfg!(target_os = "linux") {
            SandboxPolicy::Required
        } else {
            SandboxPolicy::BestEffort
        }
    }
}

impl SandboxPolicy {
    /// The policy's name in config files and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxPolicy::Required => "required",
            SandboxPolicy::BestEffort => "best_effort",
            SandboxPolicy::None => "none",
        }
    }
}

/// The sandbox settings of `[runner]`, borrowed from [`RunnerConfig`](crate::runner::RunnerConfig).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings<'a> {
    pub policy: SandboxPolicy,
    pub allow_network: bool,
    pub read_only_paths: &'a [PathBuf],
    pub user: &'a str,
    pub disk_quota_bytes: u64,
    pub keep_work_dirs: bool,
    pub namespaces: bool,
}

/// What this node can build for its tasks, for `crabnet status` and `/api/overview`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxStatus {
    /// The configured policy.
    pub policy: SandboxPolicy,
    /// The level tasks run at; with policy `required` and a missing feature: `none` (nothing
    /// runs).
    pub level: SandboxLevel,
    /// The isolation features tasks get (without `net_ns`/`net_seccomp`/`landlock_net` for
    /// seeds that ask for the network, when that is allowed).
    pub features: Vec<String>,
    /// Why the full sandbox is not available: one entry per missing kernel feature. Empty
    /// when the level is `full`.
    pub missing: Vec<String>,
    /// Whether this node bids on and runs seeds that ask for network access.
    pub allow_network: bool,
    /// Whether this node can run tasks at all under its policy.
    pub can_run: bool,
}

/// What the sandbox for one task needs to know about it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskNeeds {
    /// The seed asked for network access.
    pub network: bool,
    /// The strongest level the seed's command works under.
    pub isolation: SandboxLevel,
}

impl TaskNeeds {
    /// What `seed` asks for.
    pub fn of(seed: &Seed) -> TaskNeeds {
        TaskNeeds {
            network: seed.network,
            isolation: seed.isolation,
        }
    }
}

impl Default for TaskNeeds {
    fn default() -> Self {
        TaskNeeds {
            network: false,
            isolation: SandboxLevel::Full,
        }
    }
}

/// Why a node will not serve a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `runner.sandbox = "required"` and the kernel lacks a feature.
    #[error(
        "runner.sandbox = \"required\" but this system cannot build the task sandbox: {}; \
         set runner.sandbox = \"best_effort\" (partial isolation) or run the node where these are available",
        missing.join("; ")
    )]
    Unavailable {
        /// The missing kernel features.
        missing: Vec<String>,
    },
    /// The seed asks for network access and `runner.allow_network` is false.
    #[error("the seed asks for network access and this node's runner.allow_network is false")]
    NetworkNotAllowed,
    /// The seed needs weaker isolation than this node builds.
    #[error(
        "the seed's command works only under sandbox level {wanted} or weaker and this node runs tasks at level {offered}"
    )]
    TooStrong {
        /// The strongest level the seed accepts.
        wanted: SandboxLevel,
        /// The level this node builds.
        offered: SandboxLevel,
    },
}

/// The sandbox this node builds under `settings`, for `crabnet status` and `/api/overview`.
pub(crate) fn status(settings: &Settings<'_>) -> SandboxStatus {
    let plan = plan_features(settings, TaskNeeds::default());
    let can_run = settings.policy != SandboxPolicy::Required || plan.missing.is_empty();
    SandboxStatus {
        policy: settings.policy,
        level: if can_run {
            plan.level
        } else {
            SandboxLevel::None
        },
        features: plan.features.iter().map(|f| (*f).to_owned()).collect(),
        missing: plan.missing,
        allow_network: settings.allow_network,
        can_run,
    }
}

/// Checks that this node may serve a task that `needs` this (before bidding and before running).
pub(crate) fn check_can_serve(settings: &Settings<'_>, needs: TaskNeeds) -> Result<(), Refusal> {
    if needs.network && !settings.allow_network {
        return Err(Refusal::NetworkNotAllowed);
    }
    let plan = plan_features(settings, needs);
    if settings.policy == SandboxPolicy::Required && !plan.missing.is_empty() {
        return Err(Refusal::Unavailable {
            missing: plan.missing,
        });
    }
    if plan.level > needs.isolation {
        return Err(Refusal::TooStrong {
            wanted: needs.isolation,
            offered: plan.level,
        });
    }
    Ok(())
}

/// The features a task would get, the resulting level, and what keeps it from `full`.
pub(crate) struct FeaturePlan {
    pub features: Vec<&'static str>,
    pub level: SandboxLevel,
    pub missing: Vec<String>,
}

impl FeaturePlan {
    /// The record for the task's result.
    pub fn info(&self, network: bool) -> SandboxInfo {
        SandboxInfo {
            level: self.level,
            features: self.features.iter().map(|f| (*f).to_owned()).collect(),
            network,
        }
    }
}

#[cfg(target_os = "linux")]
pub(crate) use linux::{Prepared, plan_features, prepare, task_user};

/// The uid and gid tasks run as when they do not run as the node's user: `Some` when the node
/// runs as root, the policy is not `none` and `runner.user` exists. Elsewhere tasks run as the
/// node's user.
#[cfg(not(target_os = "linux"))]
pub(crate) fn task_user(_settings: &Settings<'_>) -> Option<(u32, u32)> {
    None
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn plan_features(settings: &Settings<'_>, _needs: TaskNeeds) -> FeaturePlan {
    let _ = settings;
    FeaturePlan {
        features: Vec::new(),
        level: SandboxLevel::None,
        missing: vec![format!(
            "task sandboxing is implemented for Linux only (this is {})",
            std::env::consts::OS
        )],
    }
}
