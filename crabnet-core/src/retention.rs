//! Retention: how long a node keeps ended seeds and events (issue 14 item 3, issue 12 item 3).
//!
//! A seed that ended (settled, cancelled, expired, or failed and left so by its publisher) is
//! pruned with its messages, outbox rows and events once `retention.seeds_after_secs` have
//! passed since it ended. The end time is a pure function of the seed's messages (see
//! [`ended_at`]), so every replica with the same setting prunes the same seeds. A pruned seed
//! leaves a tombstone (its id and times) for `retention.tombstones_after_secs`: while it lasts,
//! messages about the seed are refused (`retention.refused`) and sync never asks for it, so a
//! peer that still holds the seed cannot bring it back. The `events` table is bounded by age
//! and row count; a cursor older than the oldest kept event can tell from
//! [`crate::store::Store::events_pruned_through`] that events were pruned.
//!
//! The work runs in the node's housekeeping, every `retention.interval_secs`, in batches of
//! at most `retention.batch_size` seeds or events, one transaction per batch, with the store
//! lock released between batches. See `docs/PROTOCOL.md` section "Retention".

use std::sync::Mutex;

use crate::error::Result;
use crate::model::Millis;
use crate::store::SharedStore;

pub(crate) mod config;
pub use config::RetentionConfig;

/// When a seed ended; defined beside the seed views, so that the store, which records it,
/// does not build on retention.
pub use crate::state::ended_at;

/// Most batches of one kind per run; more work waits for the next tick.
const MAX_BATCHES_PER_RUN: usize = 16;

/// What one retention run removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Seeds pruned.
    pub seeds: u64,
    /// Their messages.
    pub messages: u64,
    /// Events (of pruned seeds, and past the age or row bound).
    pub events: u64,
    /// Tombstones forgotten.
    pub tombstones: u64,
}

/// The retention schedule of one node.
#[derive(Debug)]
pub struct Retention {
    config: RetentionConfig,
    next_run: Mutex<Millis>,
}

impl Retention {
    /// A schedule whose first run is due at once.
    pub fn new(config: RetentionConfig) -> Self {
        Retention {
            config,
            next_run: Mutex::new(0),
        }
    }

    /// When the next run is due (Unix ms): housekeeping wakes for it even when nothing else
    /// is due.
    pub fn next_run_at(&self) -> Millis {
        *crate::lock(&self.next_run)
    }

    /// Runs retention if it is due at `now`: at most a few batches of each kind, each in its
    /// own transaction, locking `store` only for one batch at a time. When work is left, the
    /// next run is due at the next call; otherwise after `retention.interval_secs`.
    pub(crate) fn run_if_due(&self, store: &SharedStore, now: Millis) -> Result<Pruned> {
        let c = &self.config;
        let interval = u64::from(c.interval_secs) * 1000;
        {
            let mut next = crate::lock(&self.next_run);
            if now < *next {
                return Ok(Pruned::default());
            }
            // A run that fails is retried after the interval, not at every tick.
            *next = now.saturating_add(interval);
        }
        let batch = c.batch_size as usize;
        let lock = || store.lock();
        let mut out = Pruned::default();
        let mut left = false;
        if c.seeds_after_secs > 0 {
            let before = now.saturating_sub(c.seeds_after_secs.saturating_mul(1000));
            left |= repeat(
                || {
                    let p = lock().prune_seeds(before, now, batch)?;
                    out.seeds += p.seeds;
                    out.messages += p.messages;
                    out.events += p.events;
                    Ok(p.seeds as usize)
                },
                batch,
            )?;
        }
        let forget_before = now.saturating_sub(c.tombstones_after_secs.saturating_mul(1000));
        left |= repeat(
            || {
                let n = lock().prune_tombstones(forget_before, batch)?;
                out.tombstones += n;
                Ok(n as usize)
            },
            batch,
        )?;
        let older_than = (c.events_max_age_secs > 0)
            .then(|| now.saturating_sub(c.events_max_age_secs.saturating_mul(1000)));
        left |= repeat(
            || {
                let n = lock().prune_events(older_than, c.events_max_rows, batch)?;
                out.events += n;
                Ok(n as usize)
            },
            batch,
        )?;
        if left {
            *crate::lock(&self.next_run) = now;
        }
        Ok(out)
    }
}

/// Runs `batch` until it removes less than a full batch or [`MAX_BATCHES_PER_RUN`] ran;
/// returns whether work may be left.
fn repeat(mut batch: impl FnMut() -> Result<usize>, size: usize) -> Result<bool> {
    for _ in 0..MAX_BATCHES_PER_RUN {
        if batch()? < size {
            return Ok(false);
        }
    }
    Ok(true)
}
