//! Node configuration: one struct with serde support, loadable from TOML, with safe defaults.
//!
//! Data directory layout:
//!
//! ```text
//! <data_dir>/
//!   crabnet.db, crabnet.db-wal, crabnet.db-shm   SQLite database (state, events, outbox)
//!   events.ndjson, events.ndjson.1, ...          event log with size-based rotation
//!   identity.key                                 the node's secret keys (mode 0600)
//!   listen.lock                                  held by the node that runs the network
//!   config.toml                                  optional; read by the CLI when present
//! ```
//!
//! Task working directories are never inside the data directory: see
//! [`RunnerConfig::work_root`](crate::runner::RunnerConfig::work_root).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::runner::RunnerConfig;
use crate::store::StoreConfig;

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory for the database, logs and task working directories.
    pub data_dir: PathBuf,
    /// Human-readable node name (not an identity).
    pub name: String,
    /// Task runner limits.
    pub runner: RunnerConfig,
    /// Database tuning.
    pub store: StoreConfig,
    /// Event delivery and logging.
    pub events: EventsConfig,
    /// Network timing.
    pub network: NetworkConfig,
    /// The monitoring HTTP API and dashboard.
    pub web: crate::web::WebConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: default_data_dir(),
            name: "crabnet".into(),
            runner: RunnerConfig::default(),
            store: StoreConfig::default(),
            events: EventsConfig::default(),
            network: NetworkConfig::default(),
            web: crate::web::WebConfig::default(),
        }
    }
}

/// Event delivery and the NDJSON log (section `[events]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Whether to append events to `events.ndjson`.
    pub log_enabled: bool,
    /// Rotate the log when it would grow past this many bytes.
    pub log_max_bytes: u64,
    /// How many rotated log files to keep.
    pub log_retain: u32,
    /// Events buffered per in-process subscriber before it is told it missed some.
    pub bus_capacity: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            log_enabled: true,
            log_max_bytes: 16 * 1024 * 1024,
            log_retain: 5,
            bus_capacity: 1024,
        }
    }
}

/// Network timing (section `[network]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// How often the node checks its outbox, closes due bidding and picks up events written by
    /// other processes, in milliseconds.
    pub tick_ms: u64,
    /// First retry delay for a message that could not be sent, in milliseconds (doubles per
    /// attempt).
    pub retry_base_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
    /// How long an envelope this node signs stays fresh, in seconds.
    pub message_ttl_secs: u32,
    /// How far a sender's clock may run ahead of ours, in seconds.
    pub max_clock_skew_secs: u32,
    /// How often the node announces itself with a hello, in seconds.
    pub hello_interval_secs: u32,
    /// How often the node sends its sync digest so peers can send what it lacks, in seconds.
    pub sync_interval_secs: u32,
    /// Largest envelope this node creates; operations whose message would be larger fail.
    /// The default fits one UDP datagram.
    pub max_envelope_bytes: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            tick_ms: 250,
            retry_base_ms: 500,
            retry_max_ms: 60_000,
            message_ttl_secs: 24 * 3600,
            max_clock_skew_secs: 120,
            hello_interval_secs: 30,
            sync_interval_secs: 10,
            max_envelope_bytes: 65_507,
        }
    }
}

/// The per-user default data directory (`$XDG_DATA_HOME/crabnet` on Linux).
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .map(|d| d.join("crabnet"))
        .unwrap_or_else(|| PathBuf::from(".crabnet"))
}

impl Config {
    /// Defaults with the given data directory.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            ..Config::default()
        }
    }

    /// Parses a TOML document; unknown keys are errors.
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
            Error::new(ErrorKind::Config, format!("invalid config: {message}{at}"))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::with_source(
                ErrorKind::Config,
                format!("cannot read config file {}: {e}", path.display()),
                e,
            )
        })?;
        Self::from_toml(&text)
            .map_err(|e| Error::new(ErrorKind::Config, format!("{}: {e}", path.display())))
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::new(ErrorKind::Config, msg));
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir must not be empty".into());
        }
        if self.events.bus_capacity == 0 {
            return bad("events.bus_capacity must be at least 1".into());
        }
        if self.network.tick_ms == 0 {
            return bad("network.tick_ms must be at least 1".into());
        }
        if self.network.retry_base_ms == 0 || self.network.retry_max_ms < self.network.retry_base_ms
        {
            return bad("network.retry_base_ms must be at least 1 and at most retry_max_ms".into());
        }
        let fresh_ms =
            (self.network.message_ttl_secs as u64 + self.network.max_clock_skew_secs as u64) * 1000;
        if self.store.seen_ttl_secs * 1000 < fresh_ms {
            return bad(format!(
                "store.seen_ttl_secs ({}) must cover network.message_ttl_secs + max_clock_skew_secs ({} s) so that replays are recognised",
                self.store.seen_ttl_secs,
                fresh_ms / 1000
            ));
        }
        if self.network.message_ttl_secs == 0 || self.network.hello_interval_secs == 0 {
            return bad(
                "network.message_ttl_secs and hello_interval_secs must be at least 1".into(),
            );
        }
        if self.network.max_envelope_bytes < 8 * 1024
            || self.network.max_envelope_bytes > crate::envelope::MAX_ENVELOPE_BYTES
        {
            return bad(format!(
                "network.max_envelope_bytes must be between 8192 and {}",
                crate::envelope::MAX_ENVELOPE_BYTES
            ));
        }
        self.web.validate()?;
        if self.runner.max_output_bytes > crate::model::limits::MAX_EXCERPT_BYTES {
            return bad(format!(
                "runner.max_output_bytes must be at most {}",
                crate::model::limits::MAX_EXCERPT_BYTES
            ));
        }
        Ok(())
    }

    /// Path of the database file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("crabnet.db")
    }

    /// Path of the current event log.
    pub fn event_log_path(&self) -> PathBuf {
        self.data_dir.join("events.ndjson")
    }

    /// The node's key file.
    pub fn identity_path(&self) -> PathBuf {
        self.data_dir.join("identity.key")
    }

    /// The lock file held by a listening node.
    pub fn lock_path(&self) -> PathBuf {
        self.data_dir.join("listen.lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_partial_files_use_defaults() {
        let c = Config::with_data_dir("/tmp/x");
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
        let partial = Config::from_toml("name = \"n1\"\n[runner]\ncpu_seconds = 5\n").unwrap();
        assert_eq!(partial.name, "n1");
        assert_eq!(partial.runner.cpu_seconds, 5);
        assert_eq!(partial.events, EventsConfig::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_config_errors() {
        let e = Config::from_toml("nmae = \"typo\"").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("nmae"), "{e}");
        let e = Config::from_toml("[events]\nbus_capacity = 0").unwrap_err();
        assert!(e.to_string().contains("bus_capacity"), "{e}");
        let e = Config::from_toml("[network]\ntick_ms = \"fast\"").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(!e.to_string().contains('\n'), "one line: {e}");
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
