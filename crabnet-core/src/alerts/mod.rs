//! Alerting: rules over the node's health evaluated on a timer, `alert_firing` and
//! `alert_resolved` events, and signed webhook deliveries.
//!
//! The node that holds the network (and so the data directory's listen lock) runs two tasks:
//!
//! - the evaluator: every `alerts.interval_ms` it takes a [`Sample`] (live peers, outbox,
//!   counters, deferred messages, free disk space) and feeds it to the rules ([`rules`]). A
//!   transition is one store transaction: its event, the alert's row in the `alerts` table (so
//!   `status`, `/api/alerts` and a restarted node know what is firing), and one queued
//!   delivery per webhook;
//! - the sender ([`webhook`]): posts queued deliveries, retries failures with exponential
//!   backoff up to `alerts.webhook_max_attempts`, and never holds the store while it waits
//!   for a receiver.
//!
//! Both run apart from the network loop and housekeeping; a slow or dead receiver delays
//! nothing but its own deliveries. The tasks themselves live with the node
//! (`node/alerting.rs`); this module holds the rules, the configuration and the webhook
//! format, and builds on nothing of the node.

use std::path::Path;

pub(crate) mod alert;
mod client;
pub mod config;
pub mod rules;
pub mod webhook;

pub use alert::{ActiveAlert, AlertName};
pub use config::{AlertsConfig, WebhookConfig};
pub use rules::{Evaluator, Sample, Transition};

/// Free bytes for unprivileged users on the file system holding `path` (`statvfs`).
pub(crate) fn disk_free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated string and `stat` a writable statvfs.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    (rc == 0).then(|| (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}
