//! Handing the allocator's free memory back to the system. glibc keeps what a program freed in
//! its arenas (one per thread that allocated, up to eight per core) instead of returning it:
//! a node of a 100-node libp2p network held 44 MB resident a minute after 100 seeds had spread
//! through it, and 36.6 MB after `malloc_trim` (BENCHMARKS.md, session 21). A networked node
//! releases the heap a little after it worked ([`AfterWork`]: frames applied, its outbox sent,
//! libp2p connections closed), unless `network.release_heap` is off; SQLite's page cache of
//! the node's store goes first, so that the trim returns it too (a node's cache goes at each
//! of its releases, also when the gap below leaves the trim to another node's release).
//! Trims are process-wide, as the allocator is: at most one per [`RELEASE_GAP`], whoever
//! asks, so that traffic, or peers that connect and leave in a loop, cannot make a node walk
//! its arenas more often; in a network, where hellos and sync rounds arrive all the time,
//! that is once a minute. Without glibc (another C library) nothing is scheduled or counted;
//! under glibc with another allocator the trim finds little to return.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The least time between two releases of the heap in one process.
pub(crate) const RELEASE_GAP: Duration = Duration::from_secs(60);

/// How long after the first work since the last release a node releases the heap (when
/// [`RELEASE_GAP`] allows it then): a burst of frames is usually over by then.
pub(crate) const AFTER_WORK: Duration = Duration::from_secs(5);

/// Whether a release hands anything back here: glibc's `malloc_trim` exists on Linux with
/// glibc only; elsewhere a node schedules no release and counts none.
const TRIMS: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// When this process last released the heap.
static LAST_RELEASE: Mutex<Option<Instant>> = Mutex::new(None);

fn last_release() -> Option<Instant> {
    *crate::lock(&LAST_RELEASE)
}

/// Releases the heap's free memory (on a blocking thread of the current runtime, or on this
/// thread outside one), unless this process did within [`RELEASE_GAP`] of `now`; whether it
/// did. `caches` runs first, on the same thread: what the node lets go of so that the trim
/// can return it too (SQLite's page cache). It runs when the trim is refused too: the gap
/// bounds the walk over the process's arenas, and each node of a process has caches of its
/// own.
fn release(now: Instant, caches: impl FnOnce() + Send + 'static) -> bool {
    let allowed_now = {
        let mut last = crate::lock(&LAST_RELEASE);
        let ok = allowed(*last, now);
        if ok {
            *last = Some(now);
        }
        ok
    };
    if allowed_now {
        off_the_runtime(move || {
            caches();
            trim();
        });
    } else {
        off_the_runtime(caches);
    }
    allowed_now
}

/// Runs `work` on a blocking thread of the current runtime, or on this thread outside one.
fn off_the_runtime(work: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(work)),
        Err(_) => work(),
    }
}

/// Whether a release at `now` keeps [`RELEASE_GAP`] after the `last` one.
fn allowed(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= RELEASE_GAP)
}

/// The earliest time after `now` that a release keeps [`RELEASE_GAP`] after the `last` one.
fn next_allowed(last: Option<Instant>, now: Instant) -> Instant {
    last.map_or(now, |t| (t + RELEASE_GAP).max(now))
}

/// Hands glibc's free pages back to the kernel (nothing elsewhere: no release is scheduled
/// without glibc, see [`TRIMS`]).
fn trim() {
    // SAFETY: malloc_trim only returns free pages of glibc's arenas to the kernel; it takes
    // the arenas' locks like any allocation.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One node's release after work: [`AFTER_WORK`] after the first work since its last release,
/// or once [`RELEASE_GAP`] allows. Steady work releases once per gap; the work after the last
/// release is released at most a gap after it ended. A release of the process (another node's)
/// that came after the node's latest work covers it.
#[derive(Debug)]
pub(crate) struct AfterWork {
    /// Whether the node releases at all (`network.release_heap`, and glibc present).
    enabled: bool,
    /// The latest work not yet released, and when its release is due.
    pending: Option<(Instant, Instant)>,
}

impl AfterWork {
    /// A node's schedule, with nothing due; `enabled` is `network.release_heap`.
    pub(crate) fn new(enabled: bool) -> Self {
        AfterWork {
            enabled: enabled && TRIMS,
            pending: None,
        }
    }

    /// The node worked at `now` (applied frames, sent its outbox, closed connections): a
    /// release becomes due, if none is (and if the node releases at all).
    pub(crate) fn worked(&mut self, now: Instant) {
        if !self.enabled {
            return;
        }
        self.pending = Some(match self.pending {
            Some((_, due)) => (now, due),
            None => (now, schedule(last_release(), now)),
        });
    }

    /// When the release is due, if one is.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.pending.map(|(_, due)| due)
    }

    /// The due time came (`now`): lets `caches` go and releases the heap (see [`release`]),
    /// and says so, or, when another release of the process came within the gap, lets only
    /// `caches` go and leaves the trim to that release (it came after the node's latest work)
    /// or waits for the gap to allow one.
    pub(crate) fn release(&mut self, now: Instant, caches: impl FnOnce() + Send + 'static) -> bool {
        let Some((latest, _)) = self.pending else {
            return false;
        };
        if release(now, caches) {
            self.pending = None;
            return true;
        }
        self.pending = after_refusal(last_release(), latest, now);
        false
    }
}

/// What stays due after a release at `now` was refused, the process having released last at
/// `last` and the node's latest work not yet released being at `latest`: nothing when that
/// release came after the work, else a release once the gap allows.
fn after_refusal(
    last: Option<Instant>,
    latest: Instant,
    now: Instant,
) -> Option<(Instant, Instant)> {
    if last.is_some_and(|t| t >= latest) {
        None
    } else {
        Some((latest, next_allowed(last, now)))
    }
}

/// When work at `now` is released, the process having released last at `last`.
fn schedule(last: Option<Instant>, now: Instant) -> Instant {
    (now + AFTER_WORK).max(next_allowed(last, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn work_is_released_shortly_after_it_began_and_at_most_once_per_gap() {
        let t0 = Instant::now();
        // Nothing released yet: shortly after the work.
        assert_eq!(schedule(None, t0), t0 + AFTER_WORK);
        // Long after the last release: the same.
        let t1 = t0 + RELEASE_GAP * 3;
        assert_eq!(schedule(Some(t0), t1), t1 + AFTER_WORK);
        // Soon after the last release: a gap after it.
        let t2 = t0 + Duration::from_secs(1);
        assert_eq!(schedule(Some(t0), t2), t0 + RELEASE_GAP);
        assert!(!allowed(
            Some(t0),
            t0 + RELEASE_GAP - Duration::from_millis(1)
        ));
        assert!(allowed(Some(t0), t0 + RELEASE_GAP));
        assert!(allowed(None, t0));
    }

    /// Two nodes in one process: the other node's release covers this node's work only when
    /// it came after this node's latest work.
    #[test]
    fn another_release_covers_only_the_work_before_it() {
        let t0 = Instant::now();
        let other = t0 + Duration::from_secs(1);
        let now = t0 + AFTER_WORK;
        // This node worked at t0 and last at t0 + 3 s; the other released at t0 + 1 s.
        let latest = t0 + Duration::from_secs(3);
        assert_eq!(
            after_refusal(Some(other), latest, now),
            Some((latest, other + RELEASE_GAP))
        );
        // Its latest work came before the other release: covered.
        assert_eq!(after_refusal(Some(other), t0, now), None);
        assert_eq!(after_refusal(Some(other), other, now), None);
    }

    #[test]
    fn a_node_keeps_its_release_due_until_the_gap_allows_it() {
        if !TRIMS {
            return;
        }
        let mut off = AfterWork::new(false);
        off.worked(Instant::now());
        assert_eq!(
            off.due(),
            None,
            "a node told not to release schedules nothing"
        );
        let mut after = AfterWork::new(true);
        assert_eq!(after.due(), None);
        assert!(!after.release(Instant::now(), || ()), "nothing to release");
        let now = Instant::now();
        after.worked(now);
        let due = after.due().expect("work makes a release due");
        assert!(due >= now + AFTER_WORK);
        // More work before it is due does not push it back.
        after.worked(now + Duration::from_secs(1));
        assert_eq!(after.due(), Some(due));
        // Released; or another release of this test process came first: after the latest
        // work (nothing left due) or before it (due again once the gap allows).
        // The node's caches go either way (on this thread, outside a runtime): the gap
        // bounds only the process-wide trim.
        let let_go = Arc::new(AtomicBool::new(false));
        let flag = let_go.clone();
        if !after.release(due, move || flag.store(true, Ordering::SeqCst))
            && let Some(again) = after.due()
        {
            assert!(again > due && again <= due + RELEASE_GAP);
        }
        assert!(let_go.load(Ordering::SeqCst), "the caches were let go");
        // Refused by the gap (the release above, or another test's, came at `due` or later):
        // the caches go all the same.
        after.worked(due);
        let again = Arc::new(AtomicBool::new(false));
        let flag = again.clone();
        assert!(!after.release(due, move || flag.store(true, Ordering::SeqCst)));
        assert!(
            again.load(Ordering::SeqCst),
            "the caches go when the trim is refused"
        );
    }
}
