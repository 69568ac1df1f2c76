//! Upper bounds of the numeric settings: generous, but finite, so that no setting can overflow
//! a computation, allocate without bound or make a timer panic.

/// A minute, in milliseconds.
pub const MINUTE_MS: u64 = 60_000;
/// An hour, in milliseconds.
pub const HOUR_MS: u64 = 3_600_000;
/// A day, in milliseconds.
pub const DAY_MS: u64 = 86_400_000;
/// A day, in seconds.
pub const DAY_SECS: u64 = 86_400;
/// A year (365 days), in seconds.
pub const YEAR_SECS: u64 = 365 * DAY_SECS;
/// Largest byte limit of a task (1 PiB).
pub const MAX_BYTES: u64 = 1 << 50;
/// Largest process limit of a task (Linux's `PID_MAX_LIMIT`).
pub const MAX_PROCESSES: u64 = 4_194_304;
/// Largest event log file before rotation (1 TiB).
pub const MAX_LOG_BYTES: u64 = 1 << 40;
/// Most rotated event log files kept.
pub const MAX_LOG_RETAIN: u32 = 1_000;
/// Largest per-subscriber event buffer (the bus allocates it up front).
pub const MAX_BUS_CAPACITY: usize = 65_536;
/// Highest frame rate or burst limit, per second or at once.
pub const MAX_FRAME_RATE: u32 = 10_000_000;
/// Widest Lamport window (2^62: a clock plus its window stays a valid counter).
pub const MAX_LAMPORT_WINDOW: u64 = 1 << 62;
/// Largest peer table.
pub const MAX_PEERS: usize = 1_000_000;
/// Highest sync answer ratio.
pub const MAX_SYNC_ANSWER_RATIO: u32 = 1_000;
/// Largest sync answer budget per interval (1 TiB).
pub const MAX_SYNC_BUDGET: u64 = 1 << 40;
