//! Finding a test's processes by a unique argument, through `/proc` (Linux). Shared by
//! `tests/runs.rs` (as `support::procs`), and by `tests/sandbox.rs` and the unit tests of
//! `src/runner.rs` (through `#[path]`), so it uses only `std`.

/// Processes with `arg` as one of their arguments (any user, any PID namespace; zombies have
/// no command line and do not count).
pub fn processes_with_arg(arg: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir("/proc").expect("/proc is readable");
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|&b| b == 0).any(|a| a == arg.as_bytes()) {
            found.push(pid);
        }
    }
    found
}
