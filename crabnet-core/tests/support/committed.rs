//! Files committed to the repository that a test regenerates from the code (`docs/schema.json`,
//! `docs/EVENTS.md`, `include/crabnet.h`): the test fails when the committed file is stale, and
//! rewrites it under `CRABNET_BLESS=1`. Included by path from `crabnet-ffi/tests/header.rs` too.

use std::path::Path;

/// Writes `generated` to `path` when `CRABNET_BLESS` is set; otherwise panics with
/// `stale(line)` unless the committed file is exactly `generated` (`line`: the first line, from
/// 1, that differs).
#[track_caller]
pub fn check_or_bless(path: &Path, generated: &str, stale: impl FnOnce(usize) -> String) {
    if std::env::var_os("CRABNET_BLESS").is_some() {
        std::fs::write(path, generated).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || committed.lines().count().min(generated.lines().count()) + 1,
                |i| i + 1,
            );
        panic!("{}", stale(line));
    }
}
