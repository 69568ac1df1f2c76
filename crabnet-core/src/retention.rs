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
//! [`Store::events_pruned_through`] that events were pruned.
//!
//! The work runs in the node's housekeeping, every `retention.interval_secs`, in batches of
//! at most `retention.batch_size` seeds or events, one transaction per batch, with the store
//! lock released between batches. See `docs/PROTOCOL.md` section "Retention".

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::config::limits;
use crate::error::{Result, check_range};
use crate::model::{Millis, SeedStatus};
use crate::state::SeedView;
use crate::store::Store;

/// Retention of ended seeds and events, part of the node's TOML config (section
/// `[retention]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Seeds that ended (settled, cancelled, expired, failed) are pruned this many seconds
    /// after they ended, with their messages, outbox rows and events. 0 keeps them forever.
    pub seeds_after_secs: u64,
    /// How long the id of a pruned seed is remembered so that sync does not bring it back,
    /// in seconds from when it was pruned.
    pub tombstones_after_secs: u64,
    /// Events older than this many seconds are pruned. 0: no age limit.
    pub events_max_age_secs: u64,
    /// Most events kept; the oldest go first.
    pub events_max_rows: u64,
    /// How often retention runs, in seconds (sooner while a run left work behind).
    pub interval_secs: u32,
    /// Most seeds or events pruned in one transaction.
    pub batch_size: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            seeds_after_secs: 7 * limits::DAY_SECS,
            tombstones_after_secs: 30 * limits::DAY_SECS,
            events_max_age_secs: 30 * limits::DAY_SECS,
            events_max_rows: 200_000,
            interval_secs: 60,
            batch_size: 500,
        }
    }
}

impl RetentionConfig {
    /// Checks every setting against its range (the error names the key and the range).
    pub fn validate(&self) -> Result<()> {
        check_range(
            "retention.seeds_after_secs",
            self.seeds_after_secs,
            0,
            10 * limits::YEAR_SECS,
        )?;
        check_range(
            "retention.tombstones_after_secs",
            self.tombstones_after_secs,
            3600,
            10 * limits::YEAR_SECS,
        )?;
        check_range(
            "retention.events_max_age_secs",
            self.events_max_age_secs,
            0,
            10 * limits::YEAR_SECS,
        )?;
        check_range(
            "retention.events_max_rows",
            self.events_max_rows,
            100,
            1_000_000_000,
        )?;
        check_range(
            "retention.interval_secs",
            self.interval_secs,
            1,
            limits::DAY_SECS as u32,
        )?;
        check_range("retention.batch_size", self.batch_size, 1, 100_000)
    }
}

/// When a seed ended (Unix ms, the timestamp of the message that ended it), or `None` while it
/// may still change: settled (the settlement), cancelled (the cancellation), expired (the
/// award or reassignment that left no winner) and failed (the failure; under rules 2 the
/// publisher may still reassign or cancel a failed seed, and retention ends that chance).
pub fn ended_at(view: &SeedView) -> Option<Millis> {
    let at = match view.status {
        SeedStatus::Open | SeedStatus::Claimed | SeedStatus::Completed => return None,
        SeedStatus::Settled => view.settlement.as_ref().map(|s| s.settled_at),
        SeedStatus::Cancelled => view.cancelled_at,
        SeedStatus::Failed => view.failed_at,
        SeedStatus::Inconclusive => view.inconclusive_at,
        SeedStatus::Expired => view.award.as_ref().map(|a| a.round_started_at),
    };
    Some(at.unwrap_or(view.updated_at))
}

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
        *self.next_run.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs retention if it is due at `now`: at most a few batches of each kind, each in its
    /// own transaction, locking `store` only for one batch at a time. When work is left, the
    /// next run is due at the next call; otherwise after `retention.interval_secs`.
    pub fn run_if_due(&self, store: &Mutex<Store>, now: Millis) -> Result<Pruned> {
        let c = &self.config;
        let interval = u64::from(c.interval_secs) * 1000;
        {
            let mut next = self.next_run.lock().unwrap_or_else(|p| p.into_inner());
            if now < *next {
                return Ok(Pruned::default());
            }
            // A run that fails is retried after the interval, not at every tick.
            *next = now.saturating_add(interval);
        }
        let batch = c.batch_size as usize;
        let lock = || store.lock().unwrap_or_else(|p| p.into_inner());
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
            *self.next_run.lock().unwrap_or_else(|p| p.into_inner()) = now;
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
