//! Waiting for another process's lock on the database.
//!
//! Another process on the same data directory (a CLI command, a binding) holds the database's
//! write lock for as long as one of its commits takes: a few hundred microseconds, the fsync
//! included, more when the disk is busy. SQLite's own busy handler (`busy_timeout`) sleeps 1,
//! 2, 5, 10, 15 ms ... between tries, so a write that met such a commit waited a millisecond or
//! more, and 18 ms once it met four commits in a row, with the node's store held meanwhile
//! (nothing received was applied). [`handler`] tries again after [`FIRST_SLEEP`], doubling up
//! to [`FAST_MAX`], then every [`SLOW_SLEEP`] once it has waited [`FAST_FOR`] (a long write of
//! the other process: retention, a migration), and gives up after the configured timeout
//! (`store.busy_timeout_ms`) as SQLite's would.

use std::time::{Duration, Instant};

/// The first sleep after the lock was found taken.
const FIRST_SLEEP: Duration = Duration::from_micros(25);
/// The longest sleep while the wait is young.
const FAST_MAX: Duration = Duration::from_millis(1);
/// How long the wait is young: tries up to every [`FAST_MAX`] meanwhile.
const FAST_FOR: Duration = Duration::from_millis(100);
/// The sleep between tries after [`FAST_FOR`].
const SLOW_SLEEP: Duration = Duration::from_millis(5);

/// A busy handler for `rusqlite::Connection::busy_handler`: called with the number of tries
/// already made for the same lock, it sleeps and says to try again, or says to give up (the
/// statement fails with `SQLITE_BUSY`) once `timeout` has passed since the first try.
pub(super) fn handler(timeout: Duration) -> impl FnMut(i32) -> bool + Send + 'static {
    let mut since = Instant::now();
    move |tries| {
        if tries == 0 {
            since = Instant::now();
        }
        let waited = since.elapsed();
        let Some(left) = timeout.checked_sub(waited).filter(|l| !l.is_zero()) else {
            return false;
        };
        std::thread::sleep(sleep_after(tries, waited).min(left));
        true
    }
}

/// The sleep after `tries` tries that took `waited` so far.
fn sleep_after(tries: i32, waited: Duration) -> Duration {
    if waited >= FAST_FOR {
        return SLOW_SLEEP;
    }
    let doublings = u32::try_from(tries.clamp(0, 16)).unwrap_or(0);
    FIRST_SLEEP.saturating_mul(1 << doublings).min(FAST_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::config::StoreConfig;

    /// A store on `dir`'s database with this busy timeout, and another connection to it that
    /// holds its write lock.
    fn locked_store(dir: &std::path::Path, busy_timeout_ms: u64) -> (Store, rusqlite::Connection) {
        let path = dir.join("crabnet.db");
        let config = StoreConfig {
            busy_timeout_ms,
            ..StoreConfig::default()
        };
        let store = Store::open(&path, &config).unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        (store, other)
    }

    /// A write that meets another process's write lock waits for it and is made once the
    /// lock is released.
    #[test]
    fn a_write_waits_for_another_connections_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, other) = locked_store(dir.path(), 10_000);
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.execute_batch("COMMIT").unwrap();
        });
        store.count("busy.test").unwrap();
        holder.join().unwrap();
        assert_eq!(store.counters().unwrap().get("busy.test"), Some(&1));
    }

    /// A lock that is not released: the write fails with a clear error once the configured
    /// timeout has passed (not sooner), writes nothing, and the store works again afterwards.
    #[test]
    fn a_write_gives_up_after_the_configured_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, other) = locked_store(dir.path(), 200);
        let start = Instant::now();
        let err = store.count("busy.test").unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(err.to_string().contains("locked"), "{err}");
        drop(other);
        assert_eq!(store.counters().unwrap().get("busy.test"), None);
        store.count("busy.test").unwrap();
        assert_eq!(store.counters().unwrap().get("busy.test"), Some(&1));
    }

    #[test]
    fn sleeps_start_short_double_and_slow_down_in_a_long_wait() {
        let young = Duration::from_millis(3);
        let sleeps: Vec<_> = (0..8).map(|t| sleep_after(t, young)).collect();
        let us = |n| Duration::from_micros(n);
        assert_eq!(
            sleeps,
            [
                us(25),
                us(50),
                us(100),
                us(200),
                us(400),
                us(800),
                us(1000),
                us(1000)
            ]
        );
        assert_eq!(sleep_after(i32::MAX, young), FAST_MAX);
        assert_eq!(sleep_after(-1, young), FIRST_SLEEP);
        assert_eq!(sleep_after(3, FAST_FOR), SLOW_SLEEP);
    }

    #[test]
    fn a_zero_timeout_gives_up_at_once() {
        let mut h = handler(Duration::ZERO);
        assert!(!h(0));
        assert!(!h(1));
    }
}
