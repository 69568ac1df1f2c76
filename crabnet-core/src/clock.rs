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

/// Where a [`Node`](crate::node::Node) reads the time: every lifecycle decision it makes
/// (bid windows, claim, result and settlement deadlines, envelope freshness, held-frame
/// expiry, retention, seen-id expiry, outbox retries) and every timestamp it signs come from
/// its clock. Nodes use the system clock unless started with another one
/// ([`Node::start_with_clock`](crate::node::Node::start_with_clock)); tests and the
/// deterministic simulator use a [`ManualClock`].
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current Unix time in milliseconds.
    fn now_ms(&self) -> Millis;
}

/// The operating system's wall clock ([`now_ms`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        now_ms()
    }
}

/// A clock that moves only when told to (tests, simulations). Clones share one time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl ManualClock {
    /// A clock that reads `start_ms` (Unix ms) until it is moved.
    pub fn new(start_ms: Millis) -> Self {
        ManualClock(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
            start_ms,
        )))
    }

    /// Sets the time to `ms` (it may go backwards, like a wall clock that was set back).
    pub fn set(&self, ms: Millis) {
        self.0.store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Moves the time `ms` forward.
    pub fn advance(&self, ms: Millis) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
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
