//! The store's settings (config section `[store]`), owned here and gathered into
//! [`Config`](crate::config::Config) by `config.rs`; this module builds on nothing of the
//! crate's.

use serde::{Deserialize, Serialize};

/// Store tuning, part of the node's TOML config (section `[store]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// How long to wait for another process's write lock, in milliseconds.
    pub busy_timeout_ms: u64,
    /// How long a remote message id is remembered in the seen table, in seconds.
    pub seen_ttl_secs: u64,
    /// `full`: every commit reaches the disk before it returns (survives power loss).
    /// `normal`: commits survive a crash of the process but the last ones may be lost on
    /// power loss; several times more operations per second (see BENCHMARKS.md).
    pub sync: SyncMode,
}

/// How hard SQLite pushes commits to the disk (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// `synchronous = FULL`.
    Full,
    /// `synchronous = NORMAL` (with WAL: durable against process crashes).
    Normal,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            busy_timeout_ms: 10_000,
            seen_ttl_secs: 7 * 24 * 3600,
            sync: SyncMode::Full,
        }
    }
}
