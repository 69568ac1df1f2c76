//! The retention settings (config section `[retention]`), owned here and gathered into
//! [`Config`](crate::config::Config) by `config.rs`. This module builds only on the error
//! type and the settings' limits, so the configuration does not build on the store.

use serde::{Deserialize, Serialize};

use crate::config::limits;
use crate::error::{Result, check_range};

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
