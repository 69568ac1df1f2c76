//! The Linux sandbox: namespaces, Landlock, seccomp and an unprivileged uid, set up between
//! `fork` and `exec` of the task's shell.
//!
//! Everything that allocates or may fail for reasons other than the kernel (paths, the Landlock
//! ruleset, the seccomp programs, the id maps) is prepared in the node's process by [`prepare`].
//! The code that runs in the forked children ([`Child::enter`]) makes raw system calls only.
//!
//! With namespaces the task's process tree is:
//!
//! ```text
//! node ── A (the runner's child; outside the new namespaces; relays the task's exit status)
//!          └── B (PID 1 of the new PID namespace; mounts /tmp and /proc, reaps, relays)
//!               └── C (the task: rlimits, no_new_privs, Landlock, seccomp, then exec bash)
//! ```
//!
//! A, B and C share the process group that the runner kills on timeout; when B dies the kernel
//! kills every process left in the namespace, wherever it moved itself.
//!
//! Without namespaces (no PID namespace available, or `runner.sandbox = "none"`) the tree is
//! `node ── A (relays) ── C (the task)`, all in the task's process group.
//!
//! Either way A is the task's *guard*: its parent-death signal ([`LIFELINE_SIGNAL`]) arrives
//! when the node dies, however it dies (`SIGKILL` included), and A then kills the whole process
//! group with `SIGKILL` (B, whose own parent-death signal is `SIGKILL`, takes the namespace
//! with it). The runner forks A from a thread that lives as long as A does, since the kernel
//! sends the signal when the forking *thread* ends.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use landlock::{
    ABI, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr, Scope,
    path_beneath_rules,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::{FeaturePlan, Refusal, SandboxPolicy, Settings, TaskNeeds};
use crate::model::SandboxLevel;
use crate::runner::Rlimits;

/// Where the task's working directory is inside the mount namespace.
const TASK_DIR_IN_NS: &str = "/tmp";
/// Most inodes in the task's private `/tmp`.
const TMPFS_INODES: u64 = 65_536;

/// System directories (and selected files of `/etc`) a task may read and execute.
const READ_ONLY: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/alternatives",
    "/etc/bash.bashrc",
    "/etc/ca-certificates",
    "/etc/environment",
    "/etc/gai.conf",
    "/etc/group",
    "/etc/host.conf",
    "/etc/hosts",
    "/etc/inputrc",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/locale.alias",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/nsswitch.conf",
    "/etc/os-release",
    "/etc/passwd",
    "/etc/profile",
    "/etc/profile.d",
    "/etc/protocols",
    "/etc/resolv.conf",
    "/etc/services",
    "/etc/ssl",
    "/etc/terminfo",
    "/etc/timezone",
    "/sys/devices/system/cpu",
    "/dev/random",
    "/dev/urandom",
];
/// Device files a task may read and write.
const READ_WRITE_DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full"];

/// What the kernel offers, probed once per process and task user.
#[derive(Debug, Clone)]
struct Support {
    /// Landlock ABI version; 0 when Landlock is unavailable.
    landlock_abi: i32,
    /// Whether seccomp filters can be installed.
    seccomp: bool,
    /// The uid/gid tasks switch to (the node runs as root), or why that is impossible.
    drop_to: Option<Result<(libc::uid_t, libc::gid_t), String>>,
    /// Whether namespaces can be built, or what failed.
    namespaces: Result<(), String>,
}

fn support(user: &str) -> Support {
    static CACHE: OnceLock<Mutex<Vec<(String, Support)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut cache = crate::lock(cache);
    if let Some((_, s)) = cache.iter().find(|(u, _)| u == user) {
        return s.clone();
    }
    let s = probe(user);
    if !matches!(&s.namespaces, Ok(())) || s.landlock_abi < 1 || !s.seccomp {
        tracing::debug!(?s, "task sandbox: kernel support probed");
    }
    cache.push((user.to_owned(), s.clone()));
    s
}

fn probe(user: &str) -> Support {
    // SAFETY: a plain syscall; a null attribute with the VERSION flag only asks for the ABI.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    // SAFETY: PR_GET_SECCOMP takes no pointers.
    let seccomp = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } >= 0;
    // SAFETY: geteuid cannot fail.
    let drop_to = (unsafe { libc::geteuid() } == 0).then(|| lookup_user(user));
    let namespaces = match &drop_to {
        Some(Err(e)) => Err(e.clone()),
        Some(Ok(ids)) => probe_namespaces(Some(*ids)),
        None => probe_namespaces(None),
    };
    Support {
        landlock_abi: i32::try_from(abi.max(0)).unwrap_or(0),
        seccomp,
        drop_to,
        namespaces,
    }
}

/// Resolves a user name (or a numeric uid) to its uid and primary gid.
fn lookup_user(user: &str) -> Result<(libc::uid_t, libc::gid_t), String> {
    if let Ok(uid) = user.parse::<libc::uid_t>() {
        if uid == 0 {
            return Err("runner.user must not be root".into());
        }
        return Ok((uid, uid));
    }
    let name = CString::new(user).map_err(|_| format!("runner.user {user:?} contains NUL"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain old data; all-zero is valid.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives it.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(format!(
            "runner.user {user:?} does not exist on this system (the node runs as root and runs tasks as this user)"
        ));
    }
    if pwd.pw_uid == 0 {
        return Err(format!("runner.user {user:?} is root"));
    }
    Ok((pwd.pw_uid, pwd.pw_gid))
}

/// Builds the namespaces, private `/tmp` and `/proc` once with a process that exits instead of
/// running anything.
fn probe_namespaces(drop_to: Option<(libc::uid_t, libc::gid_t)>) -> Result<(), String> {
    let (uid, gid) = drop_to.unwrap_or_else(effective_ids);
    let ns = NsPlan::new(uid, gid, false, TmpMount::Tmpfs(tmpfs_options(1024 * 1024)));
    let (status_r, status_w) = status_pipe().map_err(|e| format!("pipe: {e}"))?;
    let child = Child {
        drop_to,
        ns: Some(ns),
        cwd: CString::from(c"/"),
        rlimits: None,
        no_new_privs: false,
        landlock: None,
        landlock_late: Vec::new(),
        seccomp: Vec::new(),
        status_w,
        probe: true,
        lifeline: None,
    };
    let mut cmd = Command::new("/bin/true");
    cmd.env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    child.install(&mut cmd);
    let result = cmd.spawn().and_then(|mut c| c.wait());
    drop(cmd);
    match result {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("namespace probe ended with {status}")),
        Err(err) => Err(explain(&status_r, &err)),
    }
}

fn effective_ids() -> (libc::uid_t, libc::gid_t) {
    // SAFETY: geteuid/getegid cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// The uid and gid tasks run as when the node drops privileges for them: `Some` when the node
/// runs as root, the policy is not `none` and `runner.user` resolves (otherwise tasks run as the
/// node's user, or not at all).
pub(crate) fn task_user(settings: &Settings<'_>) -> Option<(libc::uid_t, libc::gid_t)> {
    if settings.policy == SandboxPolicy::None {
        return None;
    }
    support(settings.user).drop_to.and_then(Result::ok)
}

/// Works out which features a task would get.
pub(crate) fn plan_features(settings: &Settings<'_>, needs: TaskNeeds) -> FeaturePlan {
    if settings.policy == SandboxPolicy::None {
        return FeaturePlan {
            features: Vec::new(),
            level: SandboxLevel::None,
            missing: vec!["the sandbox is disabled (runner.sandbox = \"none\")".into()],
        };
    }
    let s = support(settings.user);
    plan_with(&s, settings, needs)
}

fn plan_with(s: &Support, settings: &Settings<'_>, needs: TaskNeeds) -> FeaturePlan {
    let network = needs.network && settings.allow_network;
    let mut features = Vec::new();
    let mut missing = Vec::new();
    match &s.drop_to {
        Some(Ok(_)) => features.push("uid_drop"),
        Some(Err(e)) => missing.push(e.clone()),
        None => {}
    }
    let available = if settings.namespaces {
        s.namespaces.clone()
    } else {
        Err("turned off by runner.namespaces = false".into())
    };
    let namespaces = match &available {
        Ok(()) => {
            features.extend(["user_ns", "mount_ns", "pid_ns", "nproc_per_task"]);
            if settings.disk_quota_bytes > 0 && !settings.keep_work_dirs {
                features.push("disk_quota");
            }
            if !network {
                features.push("net_ns");
            }
            true
        }
        Err(e) => {
            missing.push(format!(
                "namespaces for a private /tmp, /proc, PID space and network: {e}"
            ));
            false
        }
    };
    if s.landlock_abi >= 1 {
        features.push("landlock_fs");
        if s.landlock_abi >= 4 && !network {
            features.push("landlock_net");
        }
        if s.landlock_abi >= 6 {
            features.push("landlock_scope");
        }
    } else {
        missing
            .push("Landlock (Linux 5.13 or later with landlock in the lsm= boot parameter)".into());
    }
    if s.seccomp {
        features.extend(["seccomp", "no_new_privs"]);
        if !namespaces && !network {
            features.push("net_seccomp");
        }
    } else {
        missing.push("seccomp filters (CONFIG_SECCOMP_FILTER)".into());
    }
    features.sort_unstable();
    let level = if missing.is_empty() {
        SandboxLevel::Full
    } else if features.is_empty() {
        SandboxLevel::None
    } else {
        SandboxLevel::Partial
    };
    FeaturePlan {
        features,
        level,
        missing,
    }
}

/// Everything the forked children need, prepared for one task.
pub(crate) struct Prepared {
    plan: FeaturePlan,
    network: bool,
    task_dir: PathBuf,
    child: Option<Child>,
    status_r: OwnedFd,
}

/// Prepares the sandbox for one task whose host working directory is `workdir`.
///
/// # Errors
/// A [`Refusal`] (as text) when the policy forbids running the task, or a description of what
/// could not be prepared.
pub(crate) fn prepare(
    settings: &Settings<'_>,
    needs: TaskNeeds,
    workdir: &Path,
    keep_work_dir: bool,
    rlimits: Rlimits,
) -> Result<Prepared, String> {
    super::check_can_serve(settings, needs).map_err(|e: Refusal| e.to_string())?;
    let plan = plan_features(settings, needs);
    let network = needs.network && settings.allow_network;
    let (status_r, status_w) = status_pipe().map_err(|e| format!("pipe: {e}"))?;
    let cwd_of = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| format!("working directory {} contains NUL", p.display()))
    };
    if settings.policy == SandboxPolicy::None {
        let child = Child {
            drop_to: None,
            ns: None,
            cwd: cwd_of(workdir)?,
            rlimits: Some(rlimits),
            no_new_privs: false,
            landlock: None,
            landlock_late: Vec::new(),
            seccomp: Vec::new(),
            status_w,
            probe: false,
            lifeline: None,
        };
        return Ok(Prepared {
            plan,
            network,
            task_dir: workdir.to_path_buf(),
            child: Some(child),
            status_r,
        });
    }
    let s = support(settings.user);
    let drop_to = s.drop_to.clone().transpose()?;
    if let Some((uid, gid)) = drop_to {
        // The task's own directory (used as is without namespaces, bind-mounted when kept).
        std::os::unix::fs::chown(workdir, Some(uid), Some(gid))
            .map_err(|e| format!("cannot hand {} to runner.user: {e}", workdir.display()))?;
    }
    let ns = match &s.namespaces {
        Ok(()) if settings.namespaces => {
            let (uid, gid) = drop_to.unwrap_or_else(effective_ids);
            let tmp = if keep_work_dir {
                // A path, not a descriptor: the source of a bind mount must be in the new mount
                // namespace, and the path is resolved there before /tmp is covered.
                TmpMount::Bind(cwd_of(workdir)?)
            } else {
                TmpMount::Tmpfs(tmpfs_options(settings.disk_quota_bytes))
            };
            Some(NsPlan::new(uid, gid, !network, tmp))
        }
        _ => None,
    };
    let task_dir = if ns.is_some() {
        PathBuf::from(TASK_DIR_IN_NS)
    } else {
        workdir.to_path_buf()
    };
    let (landlock, landlock_late) = if s.landlock_abi >= 1 {
        let abi = ABI::from(s.landlock_abi);
        // Landlock rules name inodes, and a rule on a mount point does not cover what is
        // mounted over it: the private /tmp and /proc get their rules inside the namespace,
        // after they are mounted.
        let (writable, late) = if ns.is_some() {
            let late = vec![
                LateRule::new(TASK_DIR_IN_NS, AccessFs::from_all(abi).bits()),
                LateRule::new("/proc", AccessFs::from_read(abi).bits()),
            ];
            (None, late)
        } else {
            (Some(workdir), Vec::new())
        };
        let ruleset = landlock_ruleset(abi, settings.read_only_paths, writable, network)?;
        (Some(ruleset), late)
    } else {
        (None, Vec::new())
    };
    let mut seccomp = Vec::new();
    if s.seccomp {
        seccomp = seccomp_programs(ns.is_none() && !network)?;
    }
    let child = Child {
        drop_to,
        ns,
        cwd: cwd_of(&task_dir)?,
        rlimits: Some(rlimits),
        no_new_privs: s.seccomp,
        landlock,
        landlock_late,
        seccomp,
        status_w,
        probe: false,
        lifeline: None,
    };
    Ok(Prepared {
        plan,
        network,
        task_dir,
        child: Some(child),
        status_r,
    })
}

impl Prepared {
    /// The record for the task's result.
    pub fn info(&self) -> crate::model::SandboxInfo {
        self.plan.info(self.network)
    }

    /// The task's working directory as the task sees it (its `HOME`, `TMPDIR` and cwd).
    pub fn task_dir(&self) -> &Path {
        &self.task_dir
    }

    /// Makes `cmd` enter the sandbox between fork and exec, with a guard process that kills
    /// the task's process group when the node dies (see the module docs). `cmd` must start a
    /// process group of its own. Call once.
    pub fn install(&mut self, cmd: &mut Command) {
        if let Some(mut child) = self.child.take() {
            child.lifeline = libc::pid_t::try_from(std::process::id()).ok();
            child.install(cmd);
        }
    }

    /// Describes a failed spawn, naming the sandbox step that failed, if one did.
    pub fn explain(&self, err: &io::Error) -> String {
        explain(&self.status_r, err)
    }
}

fn tmpfs_options(quota: u64) -> CString {
    // size=0 means no size limit for tmpfs.
    CString::new(format!("size={quota},nr_inodes={TMPFS_INODES},mode=0700"))
        .expect("no NUL in numbers")
}

fn landlock_ruleset(
    abi: ABI,
    extra_read_only: &[PathBuf],
    writable: Option<&Path>,
    network: bool,
) -> Result<OwnedFd, String> {
    let err = |e: landlock::RulesetError| format!("cannot build the Landlock ruleset: {e}");
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?;
    if !network && abi >= ABI::V4 {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(err)?;
    }
    if abi >= ABI::V6 {
        ruleset = ruleset.scope(Scope::from_all(abi)).map_err(err)?;
    }
    let system = READ_ONLY.iter().map(PathBuf::from);
    // Without namespaces the host's /proc is the task's (guarded by Landlock's ptrace rules).
    let host_proc = writable.map(|_| PathBuf::from("/proc"));
    let read_only = system
        .chain(host_proc)
        .chain(extra_read_only.iter().cloned());
    let created = ruleset
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(read_only, AccessFs::from_read(abi)))
        .map_err(err)?
        .add_rules(path_beneath_rules(
            READ_WRITE_DEVICES,
            AccessFs::from_all(abi),
        ))
        .map_err(err)?
        .add_rules(path_beneath_rules(writable, AccessFs::from_all(abi)))
        .map_err(err)?;
    let fd: Option<OwnedFd> = created.into();
    fd.ok_or_else(|| "Landlock is not enabled in this kernel".to_owned())
}

/// System calls no task needs and attackers like, denied with `EPERM`.
fn denied_syscalls() -> Vec<i64> {
    let mut list = vec![
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_bpf,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_perf_event_open,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_setns,
        libc::SYS_unshare,
        libc::SYS_userfaultfd,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_reboot,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_syslog,
        libc::SYS_vhangup,
    ];
    #[cfg(target_arch = "x86_64")]
    list.extend([libc::SYS_iopl, libc::SYS_ioperm]);
    list
}

/// The seccomp programs, in installation order.
fn seccomp_programs(deny_inet: bool) -> Result<Vec<BpfProgram>, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("seccomp is not supported on this architecture: {e}"))?;
    let err = |e: seccompiler::BackendError| format!("cannot build the seccomp filter: {e}");
    let cond = |arg: u8, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(err)
    };
    let mut rules: std::collections::BTreeMap<i64, Vec<SeccompRule>> = denied_syscalls()
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    // New namespaces through clone (the flags are the first argument on every architecture
    // Crabnet builds for).
    let ns_flags = (libc::CLONE_NEWNS
        | libc::CLONE_NEWCGROUP
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET) as u64;
    rules.insert(libc::SYS_clone, ns_flag_rules(ns_flags).map_err(err)?);
    if deny_inet {
        let families = [libc::AF_INET, libc::AF_INET6, libc::AF_PACKET];
        let mut socket_rules = Vec::new();
        for family in families {
            socket_rules.push(
                SeccompRule::new(vec![cond(0, SeccompCmpOp::Eq, family as u64)?]).map_err(err)?,
            );
        }
        rules.insert(libc::SYS_socket, socket_rules);
    }
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(err)?;
    // clone3 passes its flags in memory, out of a filter's reach: make libc fall back to clone.
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(err)?;
    Ok(vec![
        deny.try_into().map_err(err)?,
        clone3.try_into().map_err(err)?,
    ])
}

/// One rule per namespace flag: `flags & flag == flag` (the rules of a syscall are or-ed).
fn ns_flag_rules(ns_flags: u64) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let mut out = Vec::new();
    for bit in 0..64 {
        let flag = 1u64 << bit;
        if ns_flags & flag != 0 {
            out.push(SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?])?);
        }
    }
    Ok(out)
}

fn status_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // Non-blocking: reading the failed step never waits, whatever the children hold.
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads the step a child reported before failing and turns the spawn error into a message.
fn explain(status_r: &OwnedFd, err: &io::Error) -> String {
    let mut byte = [0u8; 1];
    // SAFETY: reading one byte into a valid buffer (the pipe is non-blocking). A child that
    // failed wrote its step before it reported the error that made the spawn fail.
    let n = unsafe { libc::read(status_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
    if n != 1 {
        return err.to_string();
    }
    let step = Step::ALL
        .into_iter()
        .find(|s| *s as u8 == byte[0])
        .map_or("preparing the sandbox", Step::doing);
    format!("task sandbox setup failed while {step}: {err}")
}

/// The steps of the sandbox's set-up: a child that fails at one writes it (as a byte) to the
/// status pipe, and [`explain`] names it in the spawn error.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Step {
    User = 1,
    Unshare,
    IdMap,
    Fork,
    Mount,
    Tmp,
    Proc,
    Cwd,
    Rlimit,
    NoNewPrivs,
    Landlock,
    Seccomp,
}

impl Step {
    /// Every step.
    const ALL: [Step; 12] = {
        use Step::*;
        [
            User, Unshare, IdMap, Fork, Mount, Tmp, Proc, Cwd, Rlimit, NoNewPrivs, Landlock,
            Seccomp,
        ]
    };

    /// What the step does, for humans.
    fn doing(self) -> &'static str {
        match self {
            Step::User => "switching to runner.user (setresuid/setresgid)",
            Step::Unshare => {
                "creating user, mount, PID and network namespaces (unshare; are unprivileged \
                 user namespaces disabled? see sysctl user.max_user_namespaces and \
                 kernel.unprivileged_userns_clone)"
            }
            Step::IdMap => "mapping the task's uid in its user namespace (/proc/self/uid_map)",
            Step::Fork => "starting the sandbox's init process (fork)",
            Step::Mount => "making the mount namespace private",
            Step::Tmp => "mounting the task's private /tmp (tmpfs)",
            Step::Proc => "mounting the task's private /proc",
            Step::Cwd => "entering the task's working directory",
            Step::Rlimit => "applying resource limits",
            Step::NoNewPrivs => "setting no_new_privs",
            Step::Landlock => "entering the Landlock domain (landlock_restrict_self)",
            Step::Seccomp => "installing the seccomp filter",
        }
    }
}

/// How the task's private `/tmp` is made.
enum TmpMount {
    /// A fresh tmpfs with these mount options (size cap = disk quota).
    Tmpfs(CString),
    /// The host working directory (this path), kept after the run (`runner.keep_work_dirs`).
    Bind(CString),
}

struct NsPlan {
    flags: libc::c_int,
    uid_map: CString,
    gid_map: CString,
    tmp: TmpMount,
}

impl NsPlan {
    fn new(uid: libc::uid_t, gid: libc::gid_t, new_net: bool, tmp: TmpMount) -> NsPlan {
        let mut flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS;
        if new_net {
            flags |= libc::CLONE_NEWNET;
        }
        NsPlan {
            flags,
            uid_map: CString::new(format!("{uid} {uid} 1")).expect("no NUL"),
            gid_map: CString::new(format!("{gid} {gid} 1")).expect("no NUL"),
            tmp,
        }
    }
}

/// A Landlock rule added inside the namespace, once its path exists there.
struct LateRule {
    path: CString,
    access: u64,
}

impl LateRule {
    fn new(path: &str, access: u64) -> LateRule {
        LateRule {
            path: CString::new(path).expect("no NUL in constant paths"),
            access,
        }
    }
}

/// `struct landlock_path_beneath_attr` of the kernel's uapi.
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// `LANDLOCK_RULE_PATH_BENEATH`.
const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;

/// The plan executed between fork and exec.
struct Child {
    drop_to: Option<(libc::uid_t, libc::gid_t)>,
    ns: Option<NsPlan>,
    cwd: CString,
    rlimits: Option<Rlimits>,
    no_new_privs: bool,
    landlock: Option<OwnedFd>,
    landlock_late: Vec<LateRule>,
    seccomp: Vec<BpfProgram>,
    status_w: OwnedFd,
    /// Exit with status 0 instead of exec'ing (the namespace probe).
    probe: bool,
    /// The node's process id when the task's process group must die with the node (a task
    /// started by the runner, in a process group of its own); `None` for the probe.
    lifeline: Option<libc::pid_t>,
}

type StepResult = Result<(), (Step, io::Error)>;

fn check(step: Step, rc: libc::c_long) -> StepResult {
    if rc < 0 {
        Err((step, io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

impl Child {
    fn install(self, cmd: &mut Command) {
        // SAFETY: `enter` only makes raw system calls on memory prepared before the fork (no
        // allocation, no locks), as required between fork and exec.
        unsafe {
            cmd.pre_exec(move || match self.enter() {
                Ok(()) => Ok(()),
                Err((step, err)) => {
                    let byte = [step as u8];
                    libc::write(self.status_w.as_raw_fd(), byte.as_ptr().cast(), 1);
                    Err(err)
                }
            });
        }
    }

    /// Runs in the forked child; returns in the process that goes on to exec the task.
    ///
    /// # Safety
    /// Only between fork and exec.
    unsafe fn enter(&self) -> StepResult {
        unsafe {
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            check(
                Step::Rlimit,
                libc::setrlimit(libc::RLIMIT_CORE, &no_core).into(),
            )?;
            if let Some((uid, gid)) = self.drop_to {
                check(Step::User, libc::setgroups(0, std::ptr::null()).into())?;
                check(Step::User, libc::setresgid(gid, gid, gid).into())?;
                check(Step::User, libc::setresuid(uid, uid, uid).into())?;
                // Changing uids made the process undumpable, which locks /proc/self/*_map.
                check(
                    Step::User,
                    libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0).into(),
                )?;
            }
            if let Some(ns) = &self.ns {
                self.enter_namespaces(ns)?;
            } else if let Some(node) = self.lifeline {
                guard_task(node)?;
            }
            check(Step::Cwd, libc::chdir(self.cwd.as_ptr()).into())?;
            if let Some(rlimits) = &self.rlimits {
                rlimits.apply().map_err(|e| (Step::Rlimit, e))?;
            }
            if self.no_new_privs {
                check(
                    Step::NoNewPrivs,
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into(),
                )?;
            }
            if let Some(fd) = &self.landlock {
                for rule in &self.landlock_late {
                    let dir = libc::open(rule.path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                    check(Step::Landlock, dir.into())?;
                    let attr = PathBeneathAttr {
                        allowed_access: rule.access,
                        parent_fd: dir,
                    };
                    let rc = libc::syscall(
                        libc::SYS_landlock_add_rule,
                        fd.as_raw_fd(),
                        LANDLOCK_RULE_PATH_BENEATH,
                        &attr as *const PathBeneathAttr,
                        0u32,
                    );
                    libc::close(dir);
                    check(Step::Landlock, rc)?;
                }
                check(
                    Step::Landlock,
                    libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32),
                )?;
            }
            for program in &self.seccomp {
                seccompiler::apply_filter(program).map_err(|e| {
                    let err = match e {
                        seccompiler::Error::Seccomp(e) | seccompiler::Error::Prctl(e) => e,
                        _ => io::Error::from_raw_os_error(libc::EINVAL),
                    };
                    (Step::Seccomp, err)
                })?;
            }
            if self.probe {
                libc::_exit(0);
            }
            Ok(())
        }
    }

    /// Enters the namespaces and forks twice; returns in the task process (C).
    unsafe fn enter_namespaces(&self, ns: &NsPlan) -> StepResult {
        unsafe {
            check(Step::Unshare, libc::unshare(ns.flags).into())?;
            // "deny" may be absent on old kernels; the gid map then fails and says so.
            let _ = write_file(c"/proc/self/setgroups", b"deny");
            write_file(c"/proc/self/uid_map", ns.uid_map.as_bytes())
                .map_err(|e| (Step::IdMap, e))?;
            write_file(c"/proc/self/gid_map", ns.gid_map.as_bytes())
                .map_err(|e| (Step::IdMap, e))?;
            let mut relay = [0 as libc::c_int; 2];
            check(
                Step::Fork,
                libc::pipe2(relay.as_mut_ptr(), libc::O_CLOEXEC).into(),
            )?;
            let [relay_r, relay_w] = relay;
            let init = libc::fork();
            check(Step::Fork, init.into())?;
            if init > 0 {
                // A: outside the PID namespace. Keep only the relay; wait; exit like the task.
                if let Some(node) = self.lifeline {
                    arm_lifeline(node);
                }
                close_all_but(relay_r);
                let mut status: libc::c_int = 0;
                let got = read_status(relay_r, &mut status);
                let mut init_status: libc::c_int = 0;
                while libc::waitpid(init, &mut init_status, 0) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
                exit_like(if got { status } else { init_status });
            }
            // B: PID 1 of the new namespace.
            libc::close(relay_r);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            check(
                Step::Mount,
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )
                .into(),
            )?;
            let rc = match &ns.tmp {
                TmpMount::Bind(source) => libc::mount(
                    source.as_ptr(),
                    c"/tmp".as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ),
                TmpMount::Tmpfs(options) => libc::mount(
                    c"tmpfs".as_ptr(),
                    c"/tmp".as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    options.as_ptr().cast(),
                ),
            };
            check(Step::Tmp, rc.into())?;
            check(
                Step::Proc,
                libc::mount(
                    c"proc".as_ptr(),
                    c"/proc".as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                )
                .into(),
            )?;
            let task = libc::fork();
            check(Step::Fork, task.into())?;
            if task > 0 {
                // B as init: reap everything, report the task's status, then end the
                // namespace (the kernel kills whatever is left).
                close_all_but(relay_w);
                loop {
                    let mut status: libc::c_int = 0;
                    let pid = libc::waitpid(-1, &mut status, 0);
                    if pid == task {
                        let bytes = status.to_ne_bytes();
                        libc::write(relay_w, bytes.as_ptr().cast(), bytes.len());
                        libc::_exit(0);
                    }
                    if pid < 0 && *libc::__errno_location() != libc::EINTR {
                        libc::_exit(127);
                    }
                }
            }
            // C: the task.
            libc::close(relay_w);
            Ok(())
        }
    }
}

/// The parent-death signal of the task's guard process (A): it then kills its process group.
pub(crate) const LIFELINE_SIGNAL: libc::c_int = libc::SIGHUP;

/// Forks the task (C) off a guard process (A) that relays its exit status; returns in C.
///
/// # Safety
/// Only between fork and exec.
unsafe fn guard_task(node: libc::pid_t) -> StepResult {
    unsafe {
        let task = libc::fork();
        check(Step::Fork, task.into())?;
        if task > 0 {
            arm_lifeline(node);
            close_all();
            let mut status: libc::c_int = 0;
            loop {
                let pid = libc::waitpid(task, &mut status, 0);
                if pid == task {
                    exec_exit_like(status);
                }
                if pid < 0 && *libc::__errno_location() != libc::EINTR {
                    libc::_exit(127);
                }
            }
        }
        Ok(())
    }
}

/// Makes this guard process kill its process group (the task's) when the node dies: when the
/// node's forking thread ends the kernel sends [`LIFELINE_SIGNAL`]; a node that died before
/// this call is noticed by the parent pid having changed.
///
/// # Safety
/// Only in the guard process, between fork and exec.
unsafe fn arm_lifeline(node: libc::pid_t) {
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = kill_own_group as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(LIFELINE_SIGNAL, &action, std::ptr::null_mut());
        unblock_signal(LIFELINE_SIGNAL);
        libc::prctl(libc::PR_SET_PDEATHSIG, LIFELINE_SIGNAL, 0, 0, 0);
        if libc::getppid() != node {
            kill_own_group(LIFELINE_SIGNAL);
        }
    }
}

/// The guard's handler of [`LIFELINE_SIGNAL`]: `SIGKILL` to the process group the guard leads
/// (the task's; a guard that leads none kills nothing), then exit.
extern "C" fn kill_own_group(_signal: libc::c_int) {
    // SAFETY: async-signal-safe system calls only.
    unsafe {
        libc::killpg(libc::getpid(), libc::SIGKILL);
        libc::_exit(128 + libc::SIGKILL);
    }
}

/// Ends this process the way `status` says the task ended, by exec'ing `/bin/sh` to exit or
/// raise the same (falling back to [`exit_like`]). An exec, because memory checkers (valgrind)
/// report a forked copy of the node that exits without one as leaking everything it inherited.
///
/// # Safety
/// Only in a forked child: no allocation (the script is written into a stack buffer).
unsafe fn exec_exit_like(status: libc::c_int) -> ! {
    unsafe {
        let mut script = [0u8; 32];
        let (prefix, value): (&[u8], libc::c_int) = if libc::WIFEXITED(status) {
            (b"exit ", libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            // The signal must act on the shell as it did on the task (a disposition set to
            // default survives exec, as does the mask).
            restore_signal(sig);
            (b"kill -", sig)
        } else {
            exit_like(status)
        };
        let mut len = prefix.len();
        script[..len].copy_from_slice(prefix);
        len += write_decimal(&mut script[len..], value);
        if libc::WIFSIGNALED(status) {
            // `kill -N $$`: the shell ends by the signal, as the task did.
            let tail = b" $$";
            script[len..len + tail.len()].copy_from_slice(tail);
            len += tail.len();
        }
        script[len] = 0;
        let argv = [
            c"/bin/sh".as_ptr(),
            c"-c".as_ptr(),
            script.as_ptr().cast(),
            std::ptr::null(),
        ];
        let envp = [std::ptr::null::<libc::c_char>()];
        libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
        exit_like(status)
    }
}

/// Writes `value` (0 to 999) in decimal at the start of `out`; returns how many bytes.
fn write_decimal(out: &mut [u8], value: libc::c_int) -> usize {
    let value = value.clamp(0, 999) as u32;
    let digits = [value / 100, value / 10 % 10, value % 10];
    let skip = if value >= 100 {
        0
    } else if value >= 10 {
        1
    } else {
        2
    };
    let mut n = 0;
    for d in &digits[skip..] {
        out[n] = b'0' + *d as u8;
        n += 1;
    }
    n
}

/// Closes every descriptor.
unsafe fn close_all() {
    unsafe { close_range(0, libc::c_uint::MAX) }
}

/// Writes `data` to a /proc file in one call.
unsafe fn write_file(path: &CStr, data: &[u8]) -> io::Result<()> {
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = io::Error::last_os_error();
        libc::close(fd);
        if n != data.len() as isize {
            return Err(err);
        }
        Ok(())
    }
}

/// Closes every descriptor except `keep` (the relay pipe end).
unsafe fn close_all_but(keep: RawFd) {
    unsafe {
        let keep = keep as libc::c_uint;
        if keep > 0 {
            close_range(0, keep - 1);
        }
        close_range(keep + 1, libc::c_uint::MAX);
    }
}

unsafe fn close_range(first: libc::c_uint, last: libc::c_uint) {
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, last, 0u32) == 0 {
            return;
        }
        // Kernels before 5.9: close one by one up to the descriptor limit.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(65_536) as libc::c_uint
        } else {
            4096
        };
        let mut fd = first;
        while fd <= last && fd < max {
            libc::close(fd as libc::c_int);
            fd += 1;
        }
    }
}

/// Reads the task's wait status from the relay; `false` when init died without sending it.
unsafe fn read_status(fd: RawFd, status: &mut libc::c_int) -> bool {
    unsafe {
        let mut bytes = [0u8; 4];
        let mut have = 0usize;
        while have < bytes.len() {
            let n = libc::read(fd, bytes[have..].as_mut_ptr().cast(), bytes.len() - have);
            if n > 0 {
                have += n as usize;
            } else if n == 0 || *libc::__errno_location() != libc::EINTR {
                return false;
            }
        }
        *status = libc::c_int::from_ne_bytes(bytes);
        true
    }
}

/// Gives `sig` its default action and unblocks it in this thread, so that it acts on this
/// process as it did on the task.
///
/// # Safety
/// Only in a forked child (async-signal-safe system calls only).
unsafe fn restore_signal(sig: libc::c_int) {
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        unblock_signal(sig);
    }
}

/// Unblocks `sig` in this thread.
///
/// # Safety
/// Only in a forked child (async-signal-safe system calls only).
unsafe fn unblock_signal(sig: libc::c_int) {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Ends this process the way `status` says the task ended (same exit code or signal).
unsafe fn exit_like(status: libc::c_int) -> ! {
    unsafe {
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            restore_signal(sig);
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig);
        }
        libc::_exit(127)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spawn error names the step a child wrote to the status pipe: every step by its own
    /// byte (1 to 12, in order), an unknown byte as the sandbox's preparation, and no byte
    /// not at all.
    #[test]
    fn a_failed_spawn_names_the_step_the_child_wrote() {
        let err = io::Error::from_raw_os_error(libc::EPERM);
        let written = |byte: Option<u8>| {
            let (r, w) = status_pipe().unwrap();
            if let Some(byte) = byte {
                // SAFETY: writing one byte from a valid buffer to the pipe's write end.
                let n = unsafe { libc::write(w.as_raw_fd(), [byte].as_ptr().cast(), 1) };
                assert_eq!(n, 1);
            }
            explain(&r, &err)
        };
        for (i, step) in Step::ALL.into_iter().enumerate() {
            assert_eq!(step as usize, i + 1);
            assert_eq!(
                written(Some(step as u8)),
                format!("task sandbox setup failed while {}: {err}", step.doing())
            );
        }
        assert!(written(Some(Step::Seccomp as u8)).contains("installing the seccomp filter"));
        assert!(written(Some(Step::User as u8)).contains("setresuid"));
        assert!(written(Some(13)).contains("failed while preparing the sandbox: "));
        assert_eq!(written(None), err.to_string());
    }

    fn settings(policy: SandboxPolicy) -> Settings<'static> {
        Settings {
            policy,
            allow_network: false,
            read_only_paths: &[],
            user: "nobody",
            disk_quota_bytes: 1 << 20,
            keep_work_dirs: false,
            namespaces: true,
        }
    }

    fn no_kernel() -> Support {
        Support {
            landlock_abi: 0,
            seccomp: false,
            drop_to: None,
            namespaces: Err("unshare: EPERM".into()),
        }
    }

    #[test]
    fn missing_features_are_named_and_lower_the_level() {
        let s = settings(SandboxPolicy::BestEffort);
        let plan = plan_with(&no_kernel(), &s, TaskNeeds::default());
        assert_eq!(plan.level, SandboxLevel::None);
        assert!(plan.features.is_empty());
        assert_eq!(plan.missing.len(), 3, "{:?}", plan.missing);
        assert!(plan.missing.iter().any(|m| m.contains("Landlock")));
        assert!(plan.missing.iter().any(|m| m.contains("seccomp")));
        assert!(plan.missing.iter().any(|m| m.contains("unshare: EPERM")));
        let partial = Support {
            landlock_abi: 3,
            seccomp: true,
            ..no_kernel()
        };
        let plan = plan_with(&partial, &s, TaskNeeds::default());
        assert_eq!(plan.level, SandboxLevel::Partial);
        assert_eq!(
            plan.features,
            ["landlock_fs", "net_seccomp", "no_new_privs", "seccomp"]
        );
    }

    #[test]
    fn runner_user_must_exist_and_must_not_be_root() {
        assert!(lookup_user("nobody").is_ok_and(|(uid, _)| uid != 0));
        assert!(lookup_user("4242").is_ok_and(|(uid, gid)| uid == 4242 && gid == 4242));
        for bad in ["root", "0"] {
            let e = lookup_user(bad).unwrap_err();
            assert!(e.contains("root"), "{bad}: {e}");
        }
        let e = lookup_user("no-such-user-crabnet").unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        assert!(lookup_user("a\0b").unwrap_err().contains("NUL"));
    }

    #[test]
    fn network_seeds_keep_the_network_only_when_allowed() {
        let full = Support {
            landlock_abi: 7,
            seccomp: true,
            drop_to: None,
            namespaces: Ok(()),
        };
        let mut s = settings(SandboxPolicy::Required);
        let plain = plan_with(&full, &s, TaskNeeds::default());
        assert_eq!(plain.level, SandboxLevel::Full);
        assert!(plain.features.contains(&"net_ns"));
        assert!(plain.features.contains(&"landlock_net"));
        s.allow_network = true;
        let needs = TaskNeeds {
            network: true,
            ..TaskNeeds::default()
        };
        let open = plan_with(&full, &s, needs);
        assert_eq!(open.level, SandboxLevel::Full);
        assert!(!open.features.contains(&"net_ns"));
        assert!(!open.features.contains(&"landlock_net"));
    }
}
