//! Wall-clock time and randomness, the only sources of non-determinism the node feeds into
//! the pure state machine.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::Millis;

/// The current Unix time in milliseconds.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// `N` bytes from the operating system's random source.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // The OS random source failing is unrecoverable for a node that mints identifiers.
    getrandom::fill(&mut buf).expect("the operating system random source failed");
    buf
}

/// Formats a Unix-ms time as RFC 3339 (UTC, millisecond precision).
pub fn format_ms(ms: Millis) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}
