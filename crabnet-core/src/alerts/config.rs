//! The alerting settings (config section `[alerts]`), owned here and gathered into
//! [`Config`](crate::config::Config) by `config.rs`. Builds only on the error type.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result, check_range};

/// A day, in seconds: the longest hold, resolve and rate window.
const DAY_SECS: u64 = 86_400;

/// Alert rules, their thresholds and the webhooks alerts go to (section `[alerts]`). A
/// threshold of 0 switches its rule off. Rules run in the node that holds the network (the
/// listen lock); see the README's "Alerting".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Whether the rules run at all (webhook deliveries too).
    pub enabled: bool,
    /// How often the rules are evaluated, in milliseconds.
    pub interval_ms: u64,
    /// How long a condition must hold before its alert fires, in seconds (all rules but
    /// `no_peers`, whose wait is `no_peers_secs`).
    pub for_secs: u64,
    /// How long a firing alert's condition must stay clear before it resolves, in seconds.
    pub resolve_secs: u64,
    /// The window of the rate rules (`reject_rate`, `runner_failures`), in seconds.
    pub rate_window_secs: u64,
    /// `no_peers`: no peer sent a verified hello within three hello intervals for this many
    /// seconds.
    pub no_peers_secs: u64,
    /// `outbox_backlog`: at least this many messages wait to be sent.
    pub outbox_backlog: u64,
    /// `outbox_stale`: the oldest unsent message waits this many seconds or more.
    pub outbox_oldest_secs: u64,
    /// `reject_rate`: at least this many remote messages were rejected (any reason but
    /// `duplicate`) within `rate_window_secs`.
    pub reject_max: u64,
    /// `runner_failures`: at least this percentage of the tasks run within `rate_window_secs`
    /// failed, timed out or could not be run...
    pub runner_failure_percent: u32,
    /// ...provided at least this many tasks ran in the window.
    pub runner_min_runs: u64,
    /// `sync_lag`: a received message waits this many seconds or more for a message it
    /// depends on (its seed, its bid, the previous lifecycle step).
    pub sync_lag_secs: u64,
    /// `disk_low`: fewer bytes than this are free on the data directory's file system.
    pub disk_free_min_bytes: u64,
    /// Where alerts are posted (HMAC-signed JSON; see the README).
    pub webhooks: Vec<WebhookConfig>,
    /// How long one delivery may take (connect, send, answer), in milliseconds.
    pub webhook_timeout_ms: u64,
    /// Delay before the first retry of a failed delivery, in milliseconds (doubles per
    /// attempt).
    pub webhook_retry_base_ms: u64,
    /// Longest delay between retries, in milliseconds.
    pub webhook_retry_max_ms: u64,
    /// Attempts per delivery before it is dropped (and counted in
    /// `alerts.webhook_dropped`).
    pub webhook_max_attempts: u32,
    /// Most deliveries queued per webhook; when full, the oldest is dropped.
    pub webhook_queue_max: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            enabled: true,
            interval_ms: 5_000,
            for_secs: 60,
            resolve_secs: 60,
            rate_window_secs: 300,
            no_peers_secs: 120,
            outbox_backlog: 1_000,
            outbox_oldest_secs: 600,
            reject_max: 500,
            runner_failure_percent: 50,
            runner_min_runs: 3,
            sync_lag_secs: 600,
            disk_free_min_bytes: 512 * 1024 * 1024,
            webhooks: Vec::new(),
            webhook_timeout_ms: 5_000,
            webhook_retry_base_ms: 1_000,
            webhook_retry_max_ms: 300_000,
            webhook_max_attempts: 20,
            webhook_queue_max: 1_000,
        }
    }
}

/// One webhook (`[[alerts.webhooks]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://host[:port]/path` or `https://...`.
    pub url: String,
    /// A file holding the shared HMAC secret (surrounding whitespace is ignored); it must not
    /// be readable by group or others.
    pub secret_file: PathBuf,
    /// PEM file of the certificate authorities trusted for an `https` URL (default: the
    /// system's bundle, `/etc/ssl/certs/ca-certificates.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// The parts of a webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// `https`.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl WebhookConfig {
    /// The URL's parts; a config error for anything but an absolute http(s) URL without
    /// credentials.
    pub(crate) fn target(&self) -> Result<Target> {
        let bad = |why: &str| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "alerts.webhooks: url {:?} {why}",
                    crate::model::truncate_for_message(&self.url)
                ),
            )
        };
        let uri: axum::http::Uri = self.url.parse().map_err(|_| bad("is not a valid URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("must start with http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("must not hold credentials (use secret_file)"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        Ok(Target {
            tls,
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            path: uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
        })
    }
}

impl AlertsConfig {
    /// Checks every number against its range and every webhook's URL (no file access).
    pub fn validate(&self) -> Result<()> {
        check_range("alerts.interval_ms", self.interval_ms, 10, 3_600_000)?;
        check_range("alerts.for_secs", self.for_secs, 0, DAY_SECS)?;
        check_range("alerts.resolve_secs", self.resolve_secs, 0, DAY_SECS)?;
        check_range(
            "alerts.rate_window_secs",
            self.rate_window_secs,
            1,
            DAY_SECS,
        )?;
        check_range("alerts.no_peers_secs", self.no_peers_secs, 0, 30 * DAY_SECS)?;
        check_range("alerts.outbox_backlog", self.outbox_backlog, 0, 1 << 40)?;
        check_range(
            "alerts.outbox_oldest_secs",
            self.outbox_oldest_secs,
            0,
            30 * DAY_SECS,
        )?;
        check_range("alerts.reject_max", self.reject_max, 0, 1 << 40)?;
        check_range(
            "alerts.runner_failure_percent",
            self.runner_failure_percent,
            0,
            100,
        )?;
        check_range("alerts.runner_min_runs", self.runner_min_runs, 1, 1 << 40)?;
        check_range("alerts.sync_lag_secs", self.sync_lag_secs, 0, 30 * DAY_SECS)?;
        check_range(
            "alerts.disk_free_min_bytes",
            self.disk_free_min_bytes,
            0,
            1 << 50,
        )?;
        check_range(
            "alerts.webhook_timeout_ms",
            self.webhook_timeout_ms,
            100,
            60_000,
        )?;
        check_range(
            "alerts.webhook_retry_base_ms",
            self.webhook_retry_base_ms,
            1,
            3_600_000,
        )?;
        if self.webhook_retry_max_ms < self.webhook_retry_base_ms
            || self.webhook_retry_max_ms > 86_400_000
        {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "alerts.webhook_retry_max_ms must be between alerts.webhook_retry_base_ms \
                     ({}) and 86400000 (got {})",
                    self.webhook_retry_base_ms, self.webhook_retry_max_ms
                ),
            ));
        }
        check_range(
            "alerts.webhook_max_attempts",
            self.webhook_max_attempts,
            1,
            1_000,
        )?;
        check_range(
            "alerts.webhook_queue_max",
            self.webhook_queue_max,
            1,
            1_000_000,
        )?;
        check_range("alerts.webhooks (count)", self.webhooks.len(), 0, 16)?;
        for (i, hook) in self.webhooks.iter().enumerate() {
            hook.target()?;
            if hook.secret_file.as_os_str().is_empty() {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("alerts.webhooks[{i}].secret_file must not be empty"),
                ));
            }
            if self.webhooks[..i].iter().any(|h| h.url == hook.url) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "alerts.webhooks: url {:?} is listed twice",
                        crate::model::truncate_for_message(&hook.url)
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            secret_file: "/s".into(),
            ca_file: None,
        }
    }

    #[test]
    fn urls_parse_into_targets_and_bad_ones_are_config_errors() {
        let t = hook("http://127.0.0.1:9000/hook?x=1").target().unwrap();
        assert_eq!(
            t,
            Target {
                tls: false,
                host: "127.0.0.1".into(),
                port: 9000,
                path: "/hook?x=1".into()
            }
        );
        let t = hook("https://alerts.example/").target().unwrap();
        assert!(t.tls && t.port == 443 && t.path == "/");
        let t = hook("http://[::1]").target().unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("::1", 80, "/"));
        for bad in [
            "ftp://x/",
            "/relative",
            "http://user:pw@host/",
            "not a url",
            "",
        ] {
            let e = hook(bad).target().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}: {e}");
        }
    }

    #[test]
    fn ranges_and_duplicates_are_checked() {
        AlertsConfig::default().validate().unwrap();
        let mut c = AlertsConfig {
            runner_failure_percent: 101,
            ..Default::default()
        };
        crate::error::assert_err_contains(c.validate(), "runner_failure_percent");
        c.runner_failure_percent = 50;
        c.webhook_retry_max_ms = c.webhook_retry_base_ms - 1;
        crate::error::assert_err_contains(c.validate(), "webhook_retry_max_ms");
        c.webhook_retry_max_ms = 10_000;
        c.webhooks = vec![hook("http://a/"), hook("http://a/")];
        crate::error::assert_err_contains(c.validate(), "twice");
    }
}
