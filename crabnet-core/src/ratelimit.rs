//! Per-key allowances on the receive path, in memory and bounded.
//!
//! * [`Limiter`]: token buckets (a rate per second and a burst) keyed by a transport source or
//!   a sender. A bucket that has refilled completely is indistinguishable from a new one, so it
//!   is forgotten when room is needed; when every tracked key is busy, new keys share one
//!   overflow bucket, so spoofed keys cannot grow memory.
//! * [`Credits`]: what a requester may still be sent in sync answers within the current
//!   window: a fixed budget for sources the transport vouches for, and for others `ratio` times
//!   the bytes of the sync digests they sent, so that nobody can make this node send more than
//!   `ratio` times what it received to a forged address (an anti-amplification limit, as
//!   QUIC's for unvalidated addresses).
//!
//! Both read the time they are given, in Unix milliseconds from the node's
//! [`Clock`](crate::clock::Clock), so a simulated node's limits follow its simulated clock and
//! a run replays the same way. A clock set back refills nothing until it passes the time it
//! was at; one set forward refills at most to the burst, or opens a new credit window.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::lock;
use crate::model::Millis;

/// How often a full [`Limiter`] looks for buckets to forget (a sweep visits every key), in ms.
const SWEEP_EVERY_MS: Millis = 100;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Millis,
}

impl Bucket {
    fn full(burst: f64, now: Millis) -> Self {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Millis) {
        let dt = now.saturating_sub(self.at) as f64 / 1000.0;
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = self.at.max(now);
    }

    fn take(&mut self, rate: f64, burst: f64, now: Millis) -> bool {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Buckets {
    map: HashMap<String, Bucket>,
    overflow: Bucket,
    last_sweep: Option<Millis>,
}

/// Token buckets keyed by string, at most `max_keys` of them (see the module docs).
#[derive(Debug)]
pub(crate) struct Limiter {
    rate: f64,
    burst: f64,
    max_keys: usize,
    inner: Mutex<Buckets>,
}

impl Limiter {
    /// `rate` tokens per second, at most `burst` saved up, one bucket per key for up to
    /// `max_keys` keys.
    pub fn new(rate: u32, burst: u32, max_keys: usize) -> Self {
        let burst = f64::from(burst.max(1));
        Limiter {
            rate: f64::from(rate),
            burst,
            max_keys,
            inner: Mutex::new(Buckets {
                map: HashMap::new(),
                overflow: Bucket::full(burst, 0),
                last_sweep: None,
            }),
        }
    }

    /// Takes one token from `key`'s bucket at time `now` (Unix ms); `false` when it is empty
    /// (the frame is over the limit).
    pub fn allow(&self, key: &str, now: Millis) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        let mut guard = lock(&self.inner);
        let b = &mut *guard;
        if let Some(bucket) = b.map.get_mut(key) {
            return bucket.take(rate, burst, now);
        }
        if b.map.len() >= self.max_keys
            && b.last_sweep
                .is_none_or(|t| now.saturating_sub(t) >= SWEEP_EVERY_MS)
        {
            b.last_sweep = Some(now);
            b.map.retain(|_, bucket| {
                bucket.refill(rate, burst, now);
                bucket.tokens < burst
            });
        }
        if b.map.len() < self.max_keys {
            let mut bucket = Bucket::full(burst, now);
            let ok = bucket.take(rate, burst, now);
            b.map.insert(key.to_owned(), bucket);
            ok
        } else {
            b.overflow.take(rate, burst, now)
        }
    }

    /// How many keys have a bucket of their own.
    #[cfg(test)]
    fn keys(&self) -> usize {
        lock(&self.inner).map.len()
    }
}

#[derive(Debug, Clone, Copy)]
struct Credit {
    opened: Millis,
    earned: u64,
    spent: u64,
}

/// Sync-answer credit per requester (see the module docs).
#[derive(Debug)]
pub(crate) struct Credits {
    window: Duration,
    max_keys: usize,
    inner: Mutex<HashMap<String, Credit>>,
}

impl Credits {
    /// Credit per `window`; at most `max_keys` requesters are tracked at once (further ones
    /// earn nothing until a window closes).
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Credits {
            window,
            max_keys,
            inner: Mutex::new(HashMap::new()),
        }
    }

    /// Credits `key` with `amount` more bytes at time `now` (Unix ms), up to `cap` earned in
    /// the window; returns what it may still be sent.
    pub fn earn(&self, key: &str, amount: u64, cap: u64, now: Millis) -> u64 {
        let mut map = lock(&self.inner);
        let window = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        let open = |c: &Credit| now.saturating_sub(c.opened) < window;
        if !map.contains_key(key) && map.len() >= self.max_keys {
            map.retain(|_, c| open(c));
            if map.len() >= self.max_keys {
                return 0;
            }
        }
        let c = map.entry(key.to_owned()).or_insert(Credit {
            opened: now,
            earned: 0,
            spent: 0,
        });
        if !open(c) {
            *c = Credit {
                opened: now,
                earned: 0,
                spent: 0,
            };
        }
        c.earned = c.earned.saturating_add(amount).min(cap.max(c.earned));
        c.earned - c.spent
    }

    /// Records `bytes` sent to `key`.
    pub fn spend(&self, key: &str, bytes: usize) {
        if let Some(c) = lock(&self.inner).get_mut(key) {
            c.spent = c.spent.saturating_add(bytes as u64).min(c.earned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let l = Limiter::new(10, 5, 8);
        let t0: Millis = 1_700_000_000_000;
        assert_eq!((0..20).filter(|_| l.allow("a", t0)).count(), 5);
        // Another key has its own bucket.
        assert!(l.allow("b", t0));
        // Half a second refills five tokens, not more.
        let t1 = t0 + 500;
        assert_eq!((0..20).filter(|_| l.allow("a", t1)).count(), 5);
        // A long pause refills to the burst only.
        let t2 = t1 + 3_600_000;
        assert_eq!((0..20).filter(|_| l.allow("a", t2)).count(), 5);
    }

    #[test]
    fn a_clock_set_back_refills_nothing_until_it_passes_where_it_was() {
        let l = Limiter::new(10, 2, 8);
        let t0: Millis = 1_700_000_000_000;
        assert!(l.allow("a", t0) && l.allow("a", t0) && !l.allow("a", t0));
        // An hour back, then forward to just before t0: still nothing.
        assert!(!l.allow("a", t0 - 3_600_000));
        assert!(!l.allow("a", t0 - 1));
        // 100 ms past t0 refills one token (10 per second).
        assert!(l.allow("a", t0 + 100) && !l.allow("a", t0 + 100));
    }

    #[test]
    fn spoofed_keys_share_one_overflow_bucket_and_idle_keys_are_forgotten() {
        let l = Limiter::new(1, 3, 4);
        let t0: Millis = 1_700_000_000_000;
        for k in ["a", "b", "c", "d"] {
            assert!(l.allow(k, t0));
        }
        // Every tracked key is busy: new keys draw on the overflow bucket (burst 3).
        let allowed = (0..100)
            .filter(|i| l.allow(&format!("spoofed{i}"), t0))
            .count();
        assert_eq!(allowed, 3);
        assert_eq!(l.keys(), 4);
        // Once the tracked buckets refilled, a new key gets a bucket of its own again.
        let later = t0 + 10_000;
        assert!(l.allow("e", later));
        assert!(l.keys() <= 4);
        assert!(l.allow("e", later) && l.allow("e", later) && !l.allow("e", later));
    }

    #[test]
    fn credits_add_up_within_a_window_up_to_the_cap() {
        let c = Credits::new(Duration::from_secs(10), 2);
        let t0: Millis = 1_700_000_000_000;
        let max = u64::MAX;
        assert_eq!(c.earn("a", 200, max, t0), 200);
        c.spend("a", 150);
        assert_eq!(c.earn("a", 20, max, t0), 70);
        c.spend("a", 1000);
        assert_eq!(c.earn("a", 0, max, t0), 0);
        // A new window starts from nothing.
        assert_eq!(c.earn("a", 2, max, t0 + 10_000), 2);
        // A budget: earned once per window, however often it is asked for.
        assert_eq!(c.earn("b", 100, 100, t0), 100);
        c.spend("b", 60);
        assert_eq!(c.earn("b", 100, 100, t0), 40);
        // At most two requesters tracked while their windows are open.
        assert_eq!(c.earn("c", 1, max, t0), 0);
        assert_eq!(c.earn("c", 1, max, t0 + 11_000), 1);
    }
}
