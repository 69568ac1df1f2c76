//! Tests that change what the machine shares (its network, its mounts) run inside Linux
//! namespaces they make for themselves (`mod support;` then `support::namespace`): an outer
//! `#[test]` re-runs one `#[ignore]`d test of the same binary under `unshare` (a user
//! namespace, mapped to root inside, plus the namespace asked for), which vanishes with the
//! process. The inner test first checks that it runs there ([`check_inside`]), so it fails
//! when run by itself (`--ignored`) instead of changing the machine.
//!
//! Where user namespaces or the tools a test needs are missing, the outer test says so (on
//! stderr, which libtest shows only with `--nocapture`) and passes, unless
//! `CRABNET_REQUIRE_NAMESPACES=1` (set by `tests/run-all.sh`, so CI always runs them).

use std::process::{Command, Stdio};
use std::time::Duration;

/// How long an inner test may take.
const INNER_TIMEOUT: Duration = Duration::from_secs(240);

/// A kind of namespace, by its name under `/proc/self/ns`, with its `unshare` flag.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A network namespace (`unshare -n`).
    Net,
    /// A mount namespace (`unshare -m`).
    Mnt,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Net => "net",
            Kind::Mnt => "mnt",
        }
    }

    fn flags(self) -> &'static str {
        match self {
            Kind::Net => "-rn",
            Kind::Mnt => "-rm",
        }
    }

    /// This process's namespace of this kind (`net:[4026531840]`).
    fn current(self) -> String {
        let link = std::fs::read_link(format!("/proc/self/ns/{}", self.name())).unwrap();
        link.to_string_lossy().into_owned()
    }
}

/// Whether `program args` runs and succeeds here.
fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs the ignored test `inner` of this binary in a new user namespace and a new namespace of
/// `kind`, with the environment variable `marker` set to this process's namespace of `kind`
/// (which [`check_inside`] compares with its own); fails with its output when it does not
/// pass. `tools` are the other commands the inner test runs, each with arguments that succeed
/// wherever it is installed (e.g. `["ip", "-V"]`).
pub fn run_inside(kind: Kind, inner: &str, marker: &str, tools: &[&[&str]]) {
    let mut missing: Vec<String> = Vec::new();
    if !works("unshare", &[kind.flags(), "true"]) {
        missing.push(format!("`unshare {}` (user namespaces)", kind.flags()));
    }
    for tool in tools {
        if !works(tool[0], &tool[1..]) {
            missing.push(format!("`{}`", tool.join(" ")));
        }
    }
    if !missing.is_empty() {
        let missing = missing.join(", ");
        assert!(
            std::env::var_os("CRABNET_REQUIRE_NAMESPACES").is_none_or(|v| v != "1"),
            "{inner} needs {missing}, which failed here (CRABNET_REQUIRE_NAMESPACES=1)"
        );
        eprintln!("SKIPPED {inner}: {missing} failed here");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("unshare");
    cmd.arg(kind.flags())
        .arg(&exe)
        .args([
            inner,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(marker, kind.current());
    let shown = vec![format!(
        "unshare {} {} {inner}",
        kind.flags(),
        exe.display()
    )];
    let out = super::run_bounded_within(cmd, shown, INNER_TIMEOUT);
    assert!(
        out.status.success() && out.stdout.contains("1 passed"),
        "{inner} in its namespace failed ({}):\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

/// Fails unless this process is the inner test [`run_inside`] started with `marker`: in a user
/// namespace of its own, and in a namespace of `kind` other than the outer test's. A test that
/// changes `what` never runs on the machine itself (e.g. with `--ignored`, or with `marker`
/// left set in the environment).
pub fn check_inside(kind: Kind, marker: &str, what: &str) {
    let outer = std::env::var(marker).unwrap_or_default();
    // The machine's own user namespace maps every uid to itself.
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let own_users = uid_map.split_whitespace().eq(["0", "0", "4294967295"]);
    assert!(
        !own_users && !outer.is_empty() && outer != kind.current(),
        "this test changes {what}: run it through its outer test, which makes a namespace"
    );
}
