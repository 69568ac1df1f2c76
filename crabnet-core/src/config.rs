//! Node configuration: one struct with serde support, loadable from TOML, with safe defaults.
//!
//! The sections of the modules that own their settings ([`RunnerConfig`], [`StoreConfig`],
//! [`TrustConfig`], [`RetentionConfig`], [`AlertsConfig`], [`WebConfig`]) are defined there,
//! in a `config` submodule (the runner's in `runner.rs`) that builds on low-level modules
//! only (error, model, crypto, this module's [`limits`]), never on this module's [`Config`]
//! nor on the node; they are gathered here from those submodules, so no import cycle runs
//! through the configuration. The `[events]` and `[network]` sections configure the node
//! itself and are defined here.
//!
//! Data directory layout:
//!
//! ```text
//! <data_dir>/
//!   crabnet.db, crabnet.db-wal, crabnet.db-shm   SQLite database (state, events, outbox)
//!   crabnet.db-bells/                            one file per open store, written after
//!                                                each commit (`store::CommitWatch`)
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

use crate::alerts::config::AlertsConfig;
use crate::error::{Error, ErrorKind, Result, check_range};
use crate::reputation::AwardConfig;
use crate::retention::config::RetentionConfig;
use crate::runner::RunnerConfig;
use crate::store::config::StoreConfig;
use crate::trust::config::TrustConfig;
use crate::web::config::WebConfig;

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
    pub web: WebConfig,
    /// Which nodes this node admits.
    pub trust: TrustConfig,
    /// How long ended seeds and events are kept.
    pub retention: RetentionConfig,
    /// Alert rules and webhooks.
    pub alerts: AlertsConfig,
    /// How this node picks the winners of its seeds.
    pub award: AwardConfig,
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
            web: WebConfig::default(),
            trust: TrustConfig::default(),
            retention: RetentionConfig::default(),
            alerts: AlertsConfig::default(),
            award: AwardConfig::default(),
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

/// How many times `network.hello_interval_secs` a node's hello interval may grow to in a large
/// network (see [`NetworkConfig::hellos_per_interval`]).
pub const MAX_HELLO_STRETCH: u64 = 10;

impl NetworkConfig {
    /// The interval between periodic hellos, in milliseconds, of a node that counts `peers`
    /// peers: `hello_interval_secs`, stretched by `peers / hellos_per_interval` when that is
    /// above 1, at most [`MAX_HELLO_STRETCH`] times `hello_interval_secs`. Peers count as
    /// active while their latest hello is at most three such intervals old; the node counts
    /// the active ones heard again after their first hello, once per IP address (see
    /// [`crate::node::Node::hello_interval`]).
    pub fn hello_interval_ms(&self, peers: usize) -> u64 {
        let base = u64::from(self.hello_interval_secs) * 1000;
        let per = self.hellos_per_interval as u64;
        if per == 0 {
            return base;
        }
        let stretched = base.saturating_mul(peers as u64) / per;
        stretched.clamp(base, base.saturating_mul(MAX_HELLO_STRETCH))
    }

    /// The defaults with `hello_interval_secs` and `hellos_per_interval` set (for tests).
    #[cfg(test)]
    pub(crate) fn with_hellos(hello_interval_secs: u32, hellos_per_interval: usize) -> Self {
        NetworkConfig {
            hello_interval_secs,
            hellos_per_interval,
            ..NetworkConfig::default()
        }
    }
}

/// Network timing (section `[network]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// How often the node looks whether another process (a CLI command, a binding) wrote to
    /// its database, in milliseconds: then it sends what they queued and delivers their events.
    /// The look reads no table; an idle node does no other store work until something is due
    /// (a bid window or a deadline of its own seeds ends, a retry, an expiry).
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
    /// How often the node announces itself with a hello, in seconds, while it counts at most
    /// `hellos_per_interval` peers (see [`NetworkConfig::hello_interval_ms`]).
    pub hello_interval_secs: u32,
    /// How many periodic hellos the network as a whole should send per `hello_interval_secs`.
    /// A node that counts more peers than this (active ones heard more than once, see
    /// [`crate::node::Node::hello_interval`]) stretches its own interval in proportion (at
    /// most [`MAX_HELLO_STRETCH`]-fold), so that the hellos every node verifies stay about this
    /// many per interval as the network grows; it judges its peers' liveness by the same
    /// stretched interval. 0: never stretch.
    pub hellos_per_interval: usize,
    /// How often the node starts a sync exchange (a reconciliation query) with its peers, so
    /// that it learns and asks for what it lacks, in seconds, while its store changes; up to
    /// six times as long while it does not ([`crate::Node::sync_round_interval`]).
    pub sync_interval_secs: u32,
    /// Rejected frames from one source with one reason get one `message_rejected` event as they
    /// happen and one summary per window of this many milliseconds (0: an event for each).
    pub reject_event_window_ms: u64,
    /// How long the counters of a healthy network (batch sizes, copies, unchanged hellos, sync
    /// upkeep) wait in memory before they are written, in seconds, when nothing else is due:
    /// each write is a commit, and an idle node in a network counts hellos all the time. The
    /// node's own overview and `/metrics` have them at once; another process reading the data
    /// directory (`crabnet status`) sees them this much later at most. Rejections are written
    /// at once.
    pub counter_write_secs: u32,
    /// How long an envelope whose author's hello has not arrived yet is held (hellos and the
    /// first envelopes cross at startup), in milliseconds; applied when the hello arrives,
    /// rejected as `unknown_sender` after this long (0: rejected at once). Envelopes of a
    /// known author signed with keys this node does not know (a rotation on its way) are held
    /// as long, then rejected as `bad_signature`. At most 60,000; over libp2p, a verdict later
    /// than gossipsub's message cache (15 s) is lost (the message is neither forwarded nor
    /// penalised).
    pub unknown_sender_hold_ms: u64,
    /// Largest envelope this node creates; operations whose message would be larger fail.
    /// The default fits one UDP datagram.
    pub max_envelope_bytes: usize,
    /// Frames per second one transport source may send before further frames are
    /// `rate_limited`; a sync batch is one frame. A UDP source is its IP address, whatever
    /// the port (a global IPv6 one its /64), except on loopback and `peer_address_exempt`
    /// addresses, where each address and port has its own; a libp2p source is its peer.
    pub source_rate_per_sec: u32,
    /// Frames one transport source may send at once above its rate.
    pub source_burst: u32,
    /// Frames per second one sender (node id in the header) may send, over all sources,
    /// before further frames are `rate_limited`; charged once a frame's signatures verified,
    /// so forgeries in a sender's name do not use it up.
    pub sender_rate_per_sec: u32,
    /// Frames one sender may send at once above its rate.
    pub sender_burst: u32,
    /// Envelopes whose Lamport counter is more than this far ahead of the node's clock are
    /// rejected (`lamport_ahead`) and do not move the clock.
    pub lamport_window: u64,
    /// Most peers in the peer table; when it is full, a new peer replaces an idle one or one
    /// that never sent anything but hellos, or is refused.
    pub max_peers: usize,
    /// Most peers admitted from one IP address (of a UDP source); loopback and
    /// `peer_address_exempt` are exempt (many honest nodes may share them).
    pub max_peers_per_address: usize,
    /// IP addresses exempt from `max_peers_per_address` besides loopback (e.g. a NAT's public
    /// address); a UDP source there also has rate-limit buckets per address and port
    /// (`source_rate_per_sec`, `hello_answer_source_rate_per_sec`) instead of one per IP.
    pub peer_address_exempt: Vec<std::net::IpAddr>,
    /// A requester whose source address the transport cannot vouch for (a UDP address that is
    /// not a configured peer) receives at most this many times the bytes of the sync envelopes
    /// it sent per `sync_interval_secs` in answers (anti-amplification); likewise, a new peer's
    /// hello from such a source is answered with at most this many times its bytes per
    /// `hello_interval_secs`.
    pub sync_answer_ratio: u32,
    /// Bytes of sync answers one vouched-for requester (libp2p peer, configured UDP peer) may
    /// receive per `sync_interval_secs`.
    pub sync_budget_bytes: u64,
    /// Hellos of new peers answered per second, over all sources (the answer is this node's
    /// hello, then its revocation and rotation lists); hellos over the limit are not answered
    /// (counted as `hellos.answers_limited`).
    pub hello_answer_rate_per_sec: u32,
    /// Hellos of new peers answered at once above `hello_answer_rate_per_sec`.
    pub hello_answer_burst: u32,
    /// Hellos of new peers answered per second to one transport source (counted as under
    /// `source_rate_per_sec`: a UDP source by IP address).
    pub hello_answer_source_rate_per_sec: u32,
    /// Hellos of new peers answered at once to one transport source above its rate.
    pub hello_answer_source_burst: u32,
    /// Hand the allocator's free memory back to the system (glibc's `malloc_trim`, which walks
    /// every arena of the process), with the pages the store's SQLite connection caches, a few
    /// seconds after the node worked and after its libp2p connections closed, at most once a
    /// minute per process; counted as `heap.released`.
    /// A host program that manages its own memory may turn it off (for every node it runs:
    /// the trim is process-wide).
    pub release_heap: bool,
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
            hellos_per_interval: 30,
            sync_interval_secs: 10,
            reject_event_window_ms: 10_000,
            counter_write_secs: 30,
            unknown_sender_hold_ms: 5_000,
            max_envelope_bytes: 65_507,
            source_rate_per_sec: 10_000,
            source_burst: 20_000,
            sender_rate_per_sec: 10_000,
            sender_burst: 20_000,
            lamport_window: 1_000_000,
            max_peers: 1024,
            max_peers_per_address: 16,
            peer_address_exempt: Vec::new(),
            sync_answer_ratio: 2,
            sync_budget_bytes: 16 * 1024 * 1024,
            hello_answer_rate_per_sec: 20,
            hello_answer_burst: 100,
            hello_answer_source_rate_per_sec: 1,
            hello_answer_source_burst: 10,
            release_heap: true,
        }
    }
}

pub mod limits;

/// The dotted name of the key whose line `before` (a prefix of `text`) ends in: `section.key`
/// (`array.key` in an `[[array]]` entry), or `key` at the top level; the table's name if
/// that line is a table header (an error there is about the table, e.g. a missing field).
fn key_at(text: &str, before: &str) -> Option<String> {
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    if let Some(table) = header(line) {
        return Some(table.to_owned());
    }
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let section = text[..line_start].lines().rev().find_map(header);
    Some(match section {
        Some(section) => format!("{section}.{key}"),
        None => key.to_owned(),
    })
}

/// The table a `[table]` or `[[array]]` header line names.
fn header(line: &str) -> Option<&str> {
    let line = line.trim();
    let name = match line.strip_prefix("[[") {
        Some(rest) => rest.split("]]").next(),
        None => line.strip_prefix('[').and_then(|l| l.split(']').next()),
    }?;
    Some(name.trim().trim_matches('"'))
}

/// A parse error's message with a long middle (the parser quotes the offending value, which
/// may be megabytes long) cut out, keeping its start and its end (what was expected).
fn bounded(message: &str) -> String {
    const HEAD: usize = 160;
    const TAIL: usize = 80;
    let chars = message.chars().count();
    if chars <= HEAD + TAIL {
        return message.to_owned();
    }
    let head: String = message.chars().take(HEAD).collect();
    let tail: String = message.chars().skip(chars - TAIL).collect();
    format!("{head}...{tail}")
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
            let message = bounded(&e.message().split_whitespace().collect::<Vec<_>>().join(" "));
            let (mut key, mut at) = (String::new(), String::new());
            if let Some(span) = e.span() {
                let mut start = span.start.min(text.len());
                while !text.is_char_boundary(start) {
                    start -= 1;
                }
                let before = &text[..start];
                at = format!(" (line {})", before.matches('\n').count() + 1);
                if let Some(name) = key_at(text, before)
                    && !message.contains(&name)
                {
                    key = format!("{name}: ");
                }
            }
            Error::new(
                ErrorKind::Config,
                format!("invalid config: {key}{message}{at}"),
            )
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

    /// Checks values that serde cannot: every number against its allowed range (the error
    /// names the key and the range), and the settings that depend on each other.
    pub fn validate(&self) -> Result<()> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(Error::new(ErrorKind::Config, "data_dir must not be empty"));
        }
        let r = &self.runner;
        check_range(
            "runner.max_output_bytes",
            r.max_output_bytes,
            0,
            crate::model::limits::MAX_EXCERPT_BYTES,
        )?;
        // 0 = no limit for the rlimits and the quota; the caps only keep values sane.
        check_range("runner.cpu_seconds", r.cpu_seconds, 0, limits::YEAR_SECS)?;
        // A stop waits this long at most for a task in progress: one hour.
        check_range("runner.stop_grace_ms", r.stop_grace_ms, 0, 3_600_000)?;
        check_range(
            "runner.address_space_bytes",
            r.address_space_bytes,
            0,
            limits::MAX_BYTES,
        )?;
        check_range(
            "runner.file_size_bytes",
            r.file_size_bytes,
            0,
            limits::MAX_BYTES,
        )?;
        check_range(
            "runner.max_processes",
            r.max_processes,
            0,
            limits::MAX_PROCESSES,
        )?;
        check_range(
            "runner.disk_quota_bytes",
            r.disk_quota_bytes,
            0,
            limits::MAX_BYTES,
        )?;
        if r.work_root
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(Error::new(
                ErrorKind::Config,
                "runner.work_root must not be empty (leave it out for the default)",
            ));
        }
        if r.user.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                "runner.user must not be empty",
            ));
        }
        r.check_test_only(cfg!(debug_assertions))
            .map_err(|e| Error::new(ErrorKind::Config, e))?;

        let st = &self.store;
        check_range(
            "store.busy_timeout_ms",
            st.busy_timeout_ms,
            0,
            limits::HOUR_MS,
        )?;
        check_range(
            "store.seen_ttl_secs",
            st.seen_ttl_secs,
            1,
            10 * limits::YEAR_SECS,
        )?;

        let ev = &self.events;
        check_range(
            "events.log_max_bytes",
            ev.log_max_bytes,
            1,
            limits::MAX_LOG_BYTES,
        )?;
        check_range(
            "events.log_retain",
            ev.log_retain,
            0,
            limits::MAX_LOG_RETAIN,
        )?;
        check_range(
            "events.bus_capacity",
            ev.bus_capacity,
            1,
            limits::MAX_BUS_CAPACITY,
        )?;

        let net = &self.network;
        check_range("network.tick_ms", net.tick_ms, 1, limits::MINUTE_MS)?;
        check_range(
            "network.retry_base_ms",
            net.retry_base_ms,
            1,
            limits::HOUR_MS,
        )?;
        if net.retry_max_ms < net.retry_base_ms || net.retry_max_ms > limits::DAY_MS {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "network.retry_max_ms must be between network.retry_base_ms ({}) and {} \
                     (got {})",
                    net.retry_base_ms,
                    limits::DAY_MS,
                    net.retry_max_ms
                ),
            ));
        }
        check_range(
            "network.message_ttl_secs",
            net.message_ttl_secs,
            1,
            limits::YEAR_SECS as u32,
        )?;
        check_range(
            "network.max_clock_skew_secs",
            net.max_clock_skew_secs,
            0,
            limits::DAY_SECS as u32,
        )?;
        check_range(
            "network.hello_interval_secs",
            net.hello_interval_secs,
            1,
            limits::DAY_SECS as u32,
        )?;
        check_range(
            "network.hellos_per_interval",
            net.hellos_per_interval,
            0,
            limits::MAX_PEERS,
        )?;
        check_range(
            "network.sync_interval_secs",
            net.sync_interval_secs,
            1,
            limits::DAY_SECS as u32,
        )?;
        check_range(
            "network.reject_event_window_ms",
            net.reject_event_window_ms,
            0,
            limits::HOUR_MS,
        )?;
        check_range(
            "network.counter_write_secs",
            net.counter_write_secs,
            1,
            3600,
        )?;
        check_range(
            "network.unknown_sender_hold_ms",
            net.unknown_sender_hold_ms,
            0,
            limits::MINUTE_MS,
        )?;
        check_range(
            "network.max_envelope_bytes",
            net.max_envelope_bytes,
            8 * 1024,
            crate::envelope::MAX_ENVELOPE_BYTES,
        )?;
        check_range(
            "network.source_rate_per_sec",
            net.source_rate_per_sec,
            1,
            limits::MAX_FRAME_RATE,
        )?;
        check_range(
            "network.source_burst",
            net.source_burst,
            1,
            limits::MAX_FRAME_RATE,
        )?;
        check_range(
            "network.sender_rate_per_sec",
            net.sender_rate_per_sec,
            1,
            limits::MAX_FRAME_RATE,
        )?;
        check_range(
            "network.sender_burst",
            net.sender_burst,
            1,
            limits::MAX_FRAME_RATE,
        )?;
        check_range(
            "network.lamport_window",
            net.lamport_window,
            1,
            limits::MAX_LAMPORT_WINDOW,
        )?;
        check_range("network.max_peers", net.max_peers, 1, limits::MAX_PEERS)?;
        check_range(
            "network.max_peers_per_address",
            net.max_peers_per_address,
            1,
            limits::MAX_PEERS,
        )?;
        check_range(
            "network.sync_answer_ratio",
            net.sync_answer_ratio,
            1,
            limits::MAX_SYNC_ANSWER_RATIO,
        )?;
        check_range(
            "network.sync_budget_bytes",
            net.sync_budget_bytes,
            64 * 1024,
            limits::MAX_SYNC_BUDGET,
        )?;
        for (key, value) in [
            (
                "network.hello_answer_rate_per_sec",
                net.hello_answer_rate_per_sec,
            ),
            ("network.hello_answer_burst", net.hello_answer_burst),
            (
                "network.hello_answer_source_rate_per_sec",
                net.hello_answer_source_rate_per_sec,
            ),
            (
                "network.hello_answer_source_burst",
                net.hello_answer_source_burst,
            ),
        ] {
            check_range(key, value, 1, limits::MAX_FRAME_RATE)?;
        }
        // Both are bounded above, so neither sum nor product can overflow.
        let fresh_secs = net.message_ttl_secs as u64 + net.max_clock_skew_secs as u64;
        if st.seen_ttl_secs < fresh_secs {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "store.seen_ttl_secs ({}) must cover network.message_ttl_secs + \
                     max_clock_skew_secs ({fresh_secs} s) so that replays are recognised",
                    st.seen_ttl_secs,
                ),
            ));
        }

        self.trust.validate()?;
        self.retention.validate()?;
        self.alerts.validate()?;
        self.web.validate()
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
    fn the_hello_interval_grows_with_the_peers_known_up_to_ten_times() {
        let mut net = NetworkConfig::with_hellos(30, 30);
        assert_eq!(net.hello_interval_ms(0), 30_000);
        assert_eq!(net.hello_interval_ms(30), 30_000);
        assert_eq!(net.hello_interval_ms(45), 45_000);
        assert_eq!(net.hello_interval_ms(100), 100_000);
        assert_eq!(net.hello_interval_ms(300), 300_000);
        assert_eq!(net.hello_interval_ms(100_000), 300_000);
        assert_eq!(net.hello_interval_ms(usize::MAX), 300_000);
        net.hellos_per_interval = 0;
        assert_eq!(net.hello_interval_ms(100_000), 30_000);
        net.hellos_per_interval = 1;
        net.hello_interval_secs = limits::DAY_SECS as u32;
        assert_eq!(net.hello_interval_ms(5), 5 * limits::DAY_SECS * 1000);
    }

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

    /// Values that once panicked the node (a zero interval for a tokio timer, multiplications
    /// that overflowed, allocations sized by the config) or wrapped silently.
    #[test]
    fn previously_panicking_values_are_config_errors_naming_the_key_and_range() {
        let huge = i64::MAX;
        for (toml, key) in [
            (
                "[network]\nsync_interval_secs = 0",
                "network.sync_interval_secs",
            ),
            (
                "[network]\nhello_interval_secs = 0",
                "network.hello_interval_secs",
            ),
            (
                "[network]\ncounter_write_secs = 0",
                "network.counter_write_secs",
            ),
            ("[network]\ntick_ms = 0", "network.tick_ms"),
            (
                "[network]\nsource_rate_per_sec = 0",
                "network.source_rate_per_sec",
            ),
            ("[network]\nsender_burst = 0", "network.sender_burst"),
            (
                &format!("[network]\nlamport_window = {huge}"),
                "network.lamport_window",
            ),
            ("[network]\nmax_peers = 0", "network.max_peers"),
            (
                "[network]\nmax_peers_per_address = 0",
                "network.max_peers_per_address",
            ),
            (
                "[network]\nsync_answer_ratio = 0",
                "network.sync_answer_ratio",
            ),
            (
                "[network]\nsync_budget_bytes = 1",
                "network.sync_budget_bytes",
            ),
            (&format!("[network]\ntick_ms = {huge}"), "network.tick_ms"),
            (
                &format!("[network]\nsync_interval_secs = {}", u32::MAX),
                "network.sync_interval_secs",
            ),
            (
                &format!("[network]\nmessage_ttl_secs = {}", u32::MAX),
                "network.message_ttl_secs",
            ),
            (
                &format!("[network]\nretry_base_ms = {huge}"),
                "network.retry_base_ms",
            ),
            (
                &format!("[network]\nretry_max_ms = {huge}"),
                "network.retry_max_ms",
            ),
            (
                &format!("[store]\nseen_ttl_secs = {huge}"),
                "store.seen_ttl_secs",
            ),
            (
                &format!("[store]\nbusy_timeout_ms = {huge}"),
                "store.busy_timeout_ms",
            ),
            (
                &format!("[events]\nbus_capacity = {huge}"),
                "events.bus_capacity",
            ),
            ("[events]\nbus_capacity = 0", "events.bus_capacity"),
            (
                &format!("[events]\nlog_retain = {}", u32::MAX),
                "events.log_retain",
            ),
            ("[events]\nlog_max_bytes = 0", "events.log_max_bytes"),
            (&format!("[web]\nmax_streams = {huge}"), "web.max_streams"),
            ("[web]\nheader_timeout_secs = 0", "web.header_timeout_secs"),
            (
                &format!("[web]\nidle_timeout_secs = {huge}"),
                "web.idle_timeout_secs",
            ),
            ("[web]\nmax_connections = 0", "web.max_connections"),
            ("[retention]\ninterval_secs = 0", "retention.interval_secs"),
            ("[retention]\nbatch_size = 0", "retention.batch_size"),
            (
                "[retention]\nevents_max_rows = 0",
                "retention.events_max_rows",
            ),
            (
                "[retention]\ntombstones_after_secs = 0",
                "retention.tombstones_after_secs",
            ),
            (
                &format!("[retention]\nseeds_after_secs = {huge}"),
                "retention.seeds_after_secs",
            ),
            (
                &format!("[retention]\nevents_max_age_secs = {huge}"),
                "retention.events_max_age_secs",
            ),
            (
                "[web]\nmax_connections = 10\nmax_connections_per_ip = 11",
                "web.max_connections_per_ip",
            ),
            (
                &format!("[runner]\ncpu_seconds = {huge}"),
                "runner.cpu_seconds",
            ),
            (
                &format!("[runner]\nmax_processes = {huge}"),
                "runner.max_processes",
            ),
            (
                &format!("[runner]\ndisk_quota_bytes = {huge}"),
                "runner.disk_quota_bytes",
            ),
            (
                &format!("[runner]\naddress_space_bytes = {huge}"),
                "runner.address_space_bytes",
            ),
            (
                &format!("[runner]\nfile_size_bytes = {huge}"),
                "runner.file_size_bytes",
            ),
            (
                &format!("[runner]\nmax_output_bytes = {huge}"),
                "runner.max_output_bytes",
            ),
        ] {
            let e = Config::from_toml(toml).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{toml}: {e}");
            let m = e.to_string();
            assert!(m.contains(key), "{toml}: {m}");
            assert!(m.contains("between"), "{toml}: the range: {m}");
        }
        // Out of the type's range (negative, or beyond u32) is a parse error naming the key.
        for (toml, key) in [
            (
                "[network]\nsync_interval_secs = -1",
                "network.sync_interval_secs: invalid value: integer `-1`, expected u32 (line 2)",
            ),
            (
                "name = \"n\"\n\n[store]\nbusy_timeout_ms = -5",
                "store.busy_timeout_ms",
            ),
            (
                "[network]\nhello_interval_secs = 4294967296",
                "network.hello_interval_secs",
            ),
            ("[events]\nbus_capacity = 1.5", "events.bus_capacity"),
        ] {
            let e = Config::from_toml(toml).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{toml}: {e}");
            assert!(e.to_string().contains(key), "{toml}: {e}");
        }
        // Embedders (C, Python) can set values TOML cannot express, up to u64::MAX.
        let mut c = Config::with_data_dir("/tmp/x");
        c.store.seen_ttl_secs = u64::MAX;
        crate::error::assert_err_contains(c.validate(), "store.seen_ttl_secs");
        let mut c = Config::with_data_dir("/tmp/x");
        c.web.max_streams = usize::MAX;
        crate::error::assert_err_contains(c.validate(), "web.max_streams");
        // The bounds themselves are fine, defaults too.
        let mut c = Config::with_data_dir("/tmp/x");
        c.runner.cpu_seconds = 0;
        c.runner.address_space_bytes = 0;
        c.runner.file_size_bytes = 0;
        c.runner.max_processes = 0;
        c.runner.disk_quota_bytes = 0;
        c.store.busy_timeout_ms = limits::HOUR_MS;
        c.store.seen_ttl_secs = 10 * limits::YEAR_SECS;
        c.events.bus_capacity = limits::MAX_BUS_CAPACITY;
        c.network.sync_interval_secs = limits::DAY_SECS as u32;
        c.retention.seeds_after_secs = 0;
        c.retention.events_max_age_secs = 0;
        c.web.max_connections = crate::web::config::MAX_CONNECTIONS;
        c.validate().unwrap();
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }

    /// The lying runner of the replication tests is refused by release builds, whichever way
    /// the configuration comes (TOML file, JSON of the C and Python bindings: all go through
    /// `validate` when a node starts), and is left out of a configuration written back.
    #[test]
    fn the_lying_runner_is_for_test_builds_only() {
        let text = "data_dir = \"/tmp/x\"\n[runner]\nforge_output_hash = true\n";
        let c: Config = toml::from_str(text).unwrap();
        assert!(c.runner.forge_output_hash);
        let refused = c.runner.check_test_only(false).unwrap_err();
        assert!(refused.contains("runner.forge_output_hash"), "{refused}");
        assert!(refused.contains("release build"), "{refused}");
        assert_eq!(c.runner.check_test_only(true), Ok(()));
        // This build: a test build accepts it, a release build refuses it.
        assert_eq!(c.validate().is_ok(), cfg!(debug_assertions));
        assert_eq!(Config::from_toml(text).is_ok(), cfg!(debug_assertions));
        if !cfg!(debug_assertions) {
            crate::error::assert_err_contains(c.validate(), "forge_output_hash");
        }
        // Off, it is fine everywhere, and a default configuration does not mention it.
        let off = Config::with_data_dir("/tmp/x");
        assert_eq!(off.runner.check_test_only(false), Ok(()));
        assert!(!off.to_toml().contains("forge_output_hash"));
    }

    mod arbitrary {
        use super::*;
        use proptest::prelude::*;

        /// Every key of every section (what the defaults serialize, plus the optional ones),
        /// and whether it holds a number.
        fn known_keys() -> Vec<(Option<String>, String, bool)> {
            let table: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
            let mut keys = Vec::new();
            for (k, v) in &table {
                match v {
                    toml::Value::Table(section) => keys.extend(
                        section
                            .iter()
                            .map(|(f, v)| (Some(k.clone()), f.clone(), v.is_integer())),
                    ),
                    v => keys.push((None, k.clone(), v.is_integer())),
                }
            }
            for (section, key) in [
                ("web", "token"),
                ("web", "assets_dir"),
                ("runner", "work_root"),
                ("runner", "keep_workdirs"),
            ] {
                keys.push((Some(section.into()), key.into(), false));
            }
            assert!(keys.iter().filter(|k| k.2).count() >= 24, "{keys:?}");
            keys
        }

        /// TOML integers: small, at the edges, huge, negative.
        fn toml_integer() -> impl Strategy<Value = String> {
            prop_oneof![
                2 => prop_oneof![
                    Just(0i64),
                    Just(1),
                    Just(-1),
                    Just(i64::MAX),
                    Just(i64::MIN),
                    Just(u32::MAX as i64),
                    Just(u32::MAX as i64 + 1),
                    Just(1 << 50),
                    Just((1 << 50) + 1),
                    Just(1 << 53),
                    Just(65_536),
                    Just(65_537),
                    Just(8_192),
                    Just(86_400),
                    Just(3_600_000),
                ],
                4 => 0i64..100_000,
                1 => 0i64..=u32::MAX as i64 + 1,
                2 => any::<i64>(),
            ]
            .prop_map(|n| n.to_string())
        }

        /// Any TOML value: mostly integers, also others.
        fn toml_value() -> impl Strategy<Value = String> {
            prop_oneof![
                6 => toml_integer(),
                1 => any::<f64>().prop_map(|f| {
                    if f.is_finite() { format!("{f:e}") } else { "inf".into() }
                }),
                1 => any::<bool>().prop_map(|b| b.to_string()),
                1 => prop_oneof![
                    Just("\"\"".to_owned()),
                    Just("\"127.0.0.1:0\"".to_owned()),
                    Just("\"0.0.0.0:80\"".to_owned()),
                    Just("\"normal\"".to_owned()),
                    Just("\"best_effort\"".to_owned()),
                    Just("\"0123456789abcdef0123\"".to_owned()),
                    "\"[ -~&&[^\"\\\\]]{0,20}\"",
                ],
                1 => prop::collection::vec(any::<i64>(), 0..3)
                    .prop_map(|v| format!("{v:?}")),
            ]
        }

        /// A TOML document over the known keys: numeric keys mostly get integers (so that many
        /// documents parse and reach `validate`), any key sometimes gets anything; now and then
        /// an unknown key.
        fn toml_document() -> impl Strategy<Value = String> {
            let keys = known_keys();
            let n = keys.len();
            let sections = vec!["runner", "store", "events", "network", "web", "retention"];
            (
                prop::collection::vec(
                    (
                        0..n,
                        prop::bool::weighted(0.9),
                        toml_integer(),
                        toml_value(),
                    ),
                    0..20,
                ),
                prop::option::weighted(
                    0.05,
                    (prop::sample::select(sections), "[a-z_]{1,12}", toml_value()),
                ),
            )
                .prop_map(move |(picked, unknown)| {
                    let mut doc: std::collections::BTreeMap<
                        Option<String>,
                        std::collections::BTreeMap<String, String>,
                    > = Default::default();
                    for (i, typed, integer, anything) in picked {
                        let (section, key, numeric) = keys[i].clone();
                        let value = match (typed, numeric) {
                            (true, true) => integer,
                            (true, false) => continue,
                            (false, _) => anything,
                        };
                        doc.entry(section).or_default().insert(key, value);
                    }
                    if let Some((section, key, value)) = unknown {
                        doc.entry(Some(section.into()))
                            .or_default()
                            .insert(key, value);
                    }
                    let mut text = String::new();
                    // Top-level keys first (the `None` entry sorts first), then the sections.
                    for (section, entries) in doc {
                        if let Some(section) = section {
                            text.push_str(&format!("[{section}]\n"));
                        }
                        for (k, v) in entries {
                            text.push_str(&format!("{k} = {v}\n"));
                        }
                    }
                    text
                })
        }

        /// JSON values for a config built by an embedder: any u64, and more.
        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            prop_oneof![
                4 => any::<u64>().prop_map(serde_json::Value::from),
                3 => (0u64..100_000).prop_map(serde_json::Value::from),
                2 => prop_oneof![
                    Just(0u64),
                    Just(u64::MAX),
                    Just(u32::MAX as u64),
                    Just(usize::MAX as u64 >> 3),
                    Just(i64::MAX as u64 + 1),
                ]
                .prop_map(serde_json::Value::from),
                1 => any::<i64>().prop_map(serde_json::Value::from),
                1 => any::<bool>().prop_map(serde_json::Value::from),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            /// Arbitrary TOML never panics: it parses into a valid config (which serializes
            /// and reads back the same), or it is a one-line config error.
            #[test]
            fn arbitrary_toml_never_panics(text in toml_document()) {
                match Config::from_toml(&text) {
                    Ok(config) => {
                        prop_assert!(config.validate().is_ok());
                        let again = Config::from_toml(&config.to_toml());
                        prop_assert_eq!(again.ok(), Some(config));
                    }
                    Err(e) => {
                        prop_assert_eq!(e.kind(), ErrorKind::Config);
                        prop_assert!(!e.to_string().contains('\n'), "{}", e);
                    }
                }
            }

            /// Numbers TOML cannot hold (beyond i64::MAX) through serde, as the C ABI and
            /// Python pass them: validate never panics, and a valid config serializes.
            #[test]
            fn arbitrary_numbers_from_embedders_never_panic(
                picked in prop::collection::vec(
                    (0..known_keys().len(), json_value()),
                    0..16,
                ),
            ) {
                let keys = known_keys();
                let mut doc = serde_json::to_value(Config::with_data_dir("/tmp/x")).unwrap();
                for (i, value) in picked {
                    let (section, key, _) = &keys[i];
                    let target = match section {
                        Some(s) => &mut doc[s.as_str()],
                        None => &mut doc,
                    };
                    target[key.as_str()] = value;
                }
                if let Ok(config) = serde_json::from_value::<Config>(doc)
                    && config.validate().is_ok()
                {
                    prop_assert_eq!(Config::from_toml(&config.to_toml()).ok(), Some(config));
                }
            }
        }
    }
}
