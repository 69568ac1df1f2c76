//! The alert rules' names and a firing alert: the types the store, the events and the API
//! share, apart from the tasks that evaluate and deliver alerts (which build on the node).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::Millis;

/// The alert rules.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AlertName {
    /// No peer sent a verified hello recently, for `alerts.no_peers_secs`.
    NoPeers,
    /// At least `alerts.outbox_backlog` messages wait to be sent.
    OutboxBacklog,
    /// The oldest unsent message waits `alerts.outbox_oldest_secs` or more.
    OutboxStale,
    /// At least `alerts.reject_max` messages were rejected within the rate window.
    RejectRate,
    /// At least `alerts.runner_failure_percent` % of the tasks run within the rate window
    /// failed.
    RunnerFailures,
    /// A received message waits `alerts.sync_lag_secs` or more for one it depends on.
    SyncLag,
    /// Less than `alerts.disk_free_min_bytes` are free on the data directory's file system.
    DiskLow,
}

impl AlertName {
    /// Every rule, in the order they are evaluated and shown.
    pub const ALL: [AlertName; 7] = [
        AlertName::NoPeers,
        AlertName::OutboxBacklog,
        AlertName::OutboxStale,
        AlertName::RejectRate,
        AlertName::RunnerFailures,
        AlertName::SyncLag,
        AlertName::DiskLow,
    ];

    /// The rule's name, as in JSON, events and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertName::NoPeers => "no_peers",
            AlertName::OutboxBacklog => "outbox_backlog",
            AlertName::OutboxStale => "outbox_stale",
            AlertName::RejectRate => "reject_rate",
            AlertName::RunnerFailures => "runner_failures",
            AlertName::SyncLag => "sync_lag",
            AlertName::DiskLow => "disk_low",
        }
    }

    /// The rule with this name.
    pub fn parse(name: &str) -> Option<AlertName> {
        AlertName::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

crate::display_as_str!(AlertName);

/// An alert that is firing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ActiveAlert {
    /// The rule.
    pub alert: AlertName,
    /// When it fired (Unix ms).
    pub since: Millis,
    /// The rule's value at the latest evaluation (peers, messages, seconds, percent or bytes;
    /// see the rule).
    pub value: u64,
    /// The configured threshold.
    pub threshold: u64,
    /// What is wrong, for humans.
    pub detail: String,
}
