//! Webhook deliveries: the JSON body, its signature, and the sender task.
//!
//! Each alert transition queues one delivery per webhook in the database (table
//! `webhook_queue`), in the transaction that records the transition, so deliveries survive a
//! restart. The sender posts due deliveries one at a time on a blocking thread; a 2xx answer
//! removes the delivery, anything else (an error status, a refused connection, a timeout)
//! schedules the next attempt after `webhook_retry_base_ms × 2^attempts`, at most
//! `webhook_retry_max_ms`, until `webhook_max_attempts` attempts were made.
//!
//! Signature (documented in the README): the request carries
//! `X-Crabnet-Timestamp: <Unix seconds>` and
//! `X-Crabnet-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`. Receivers
//! recompute it with their copy of the secret, compare in constant time and refuse
//! timestamps more than a few minutes away from their clock, so a captured request cannot be
//! replayed later. `X-Crabnet-Delivery` identifies the delivery (the same on each retry).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde::Serialize;
use zeroize::Zeroizing;

use super::client::{self, Request};
use super::config::Target;
use super::{AlertsConfig, WebhookConfig};
use crate::clock::now_ms;
use crate::error::{Error, ErrorKind, Result};
use crate::model::NodeId;
use crate::monitor::Event;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Crabnet-Signature";
/// The header carrying the signing time (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "X-Crabnet-Timestamp";
/// The header naming the delivery (`<node id>-<queue sequence number>`).
pub const DELIVERY_HEADER: &str = "X-Crabnet-Delivery";

/// `sha256=<hex>`: the HMAC-SHA256 of `"<timestamp>." + body` under `secret`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a signature header the way a receiver should: in constant time, and only for a
/// timestamp within `tolerance_secs` of `now_secs`.
pub fn verify(
    secret: &[u8],
    timestamp: u64,
    body: &[u8],
    header: &str,
    now_secs: u64,
    tolerance_secs: u64,
) -> bool {
    if timestamp.abs_diff(now_secs) > tolerance_secs {
        return false;
    }
    let Some(given) = header
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// The JSON body of a delivery: the node and the alert event.
#[derive(Debug, Clone)]
pub(crate) struct Payload {
    node_id: NodeId,
    node_name: String,
}

#[derive(Serialize)]
struct Body<'a> {
    node_id: &'a NodeId,
    node_name: &'a str,
    event: &'a Event,
}

impl Payload {
    pub(crate) fn new(node_id: NodeId, node_name: String) -> Self {
        Payload { node_id, node_name }
    }

    /// `{"node_id": ..., "node_name": ..., "event": {"seq", "at", "type": "alert_firing", ...}}`.
    pub(crate) fn body(&self, event: &Event) -> Result<Vec<u8>> {
        serde_json::to_vec(&Body {
            node_id: &self.node_id,
            node_name: &self.node_name,
            event,
        })
        .map_err(|e| Error::internal(format!("cannot encode a webhook body: {e}")))
    }
}

/// One webhook, ready to post to.
struct Hook {
    target: Target,
    secret: Zeroizing<Vec<u8>>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hook")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// The configured webhooks by URL, with their secrets read.
#[derive(Debug, Default)]
pub(crate) struct Hooks {
    by_url: BTreeMap<String, Hook>,
    config: AlertsConfig,
}

impl Hooks {
    /// The alerting configuration the hooks were read from.
    pub(crate) fn config(&self) -> &AlertsConfig {
        &self.config
    }

    /// Posts a queued delivery to its webhook (within `alerts.webhook_timeout_ms`); `None`
    /// when the webhook was removed from the configuration since it was queued.
    pub(crate) fn deliver(
        &self,
        url: &str,
        node_id: &NodeId,
        seq: i64,
        body: &[u8],
    ) -> Option<Result<()>> {
        let hook = self.by_url.get(url)?;
        let timeout = Duration::from_millis(self.config.webhook_timeout_ms);
        Some(post(hook, node_id, seq, body, timeout))
    }
}

/// Reads a webhook secret: not empty, not readable by group or others.
fn read_secret(hook: &WebhookConfig) -> Result<Zeroizing<Vec<u8>>> {
    let path = &hook.secret_file;
    let bad = |why: String| {
        Error::new(
            ErrorKind::Config,
            format!(
                "alerts.webhooks: secret_file {} for {}: {why}",
                path.display(),
                hook.url
            ),
        )
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "readable by group or others (mode {mode:o}); chmod 600 it"
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let raw = Zeroizing::new(std::fs::read(path).map_err(|e| bad(e.to_string()))?);
    let trimmed = raw.trim_ascii();
    if trimmed.is_empty() {
        return Err(bad("is empty".into()));
    }
    Ok(Zeroizing::new(trimmed.to_vec()))
}

impl Hooks {
    /// Reads every webhook's secret (and, for https, its trusted certificates).
    pub(crate) fn load(config: &AlertsConfig) -> Result<Hooks> {
        let mut by_url = BTreeMap::new();
        for hook in &config.webhooks {
            let target = hook.target()?;
            let tls = if target.tls {
                Some(client::tls_config(hook.ca_file.as_deref()).map_err(|e| {
                    Error::new(
                        ErrorKind::Config,
                        format!("alerts.webhooks: {}: {e}", hook.url),
                    )
                })?)
            } else {
                None
            };
            by_url.insert(
                hook.url.clone(),
                Hook {
                    target,
                    secret: read_secret(hook)?,
                    tls,
                },
            );
        }
        Ok(Hooks {
            by_url,
            config: config.clone(),
        })
    }

    /// Whether no webhook is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_url.is_empty()
    }
}

/// The delay before attempt `attempts + 1` of a delivery.
pub(crate) fn backoff_ms(config: &AlertsConfig, attempts: u32) -> u64 {
    config
        .webhook_retry_base_ms
        .saturating_mul(1u64 << attempts.min(30))
        .min(config.webhook_retry_max_ms)
}

/// Posts one delivery; `Ok` for a 2xx answer.
fn post(hook: &Hook, node_id: &NodeId, seq: i64, body: &[u8], timeout: Duration) -> Result<()> {
    let timestamp = now_ms() / 1000;
    let sig = signature(&hook.secret, timestamp, body);
    let delivery = format!("{node_id}-{seq}");
    let headers = [
        ("Content-Type", "application/json"),
        (TIMESTAMP_HEADER, &timestamp.to_string()),
        (SIGNATURE_HEADER, &sig),
        (DELIVERY_HEADER, &delivery),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let status = client::post(
        &Request {
            target: &hook.target,
            headers: &headers,
            body,
            timeout,
        },
        hook.tls.clone(),
    )
    .map_err(|e| Error::new(ErrorKind::Network, e))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Network,
            format!("the receiver answered {status}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_secret_the_body_and_a_fresh_timestamp() {
        let sig = signature(b"s3cret", 1_700_000_000, b"{\"a\":1}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
        assert!(verify(
            b"s3cret",
            1_700_000_000,
            b"{\"a\":1}",
            &sig,
            1_700_000_100,
            300
        ));
        assert!(!verify(
            b"other",
            1_700_000_000,
            b"{\"a\":1}",
            &sig,
            1_700_000_000,
            300
        ));
        assert!(!verify(
            b"s3cret",
            1_700_000_000,
            b"{\"a\":2}",
            &sig,
            1_700_000_000,
            300
        ));
        assert!(!verify(
            b"s3cret",
            1_700_000_001,
            b"{\"a\":1}",
            &sig,
            1_700_000_001,
            300
        ));
        // A replay ten minutes later is refused.
        assert!(!verify(
            b"s3cret",
            1_700_000_000,
            b"{\"a\":1}",
            &sig,
            1_700_000_600,
            300
        ));
        assert!(!verify(
            b"s3cret",
            1_700_000_000,
            b"{\"a\":1}",
            "sha256=zz",
            1_700_000_000,
            300
        ));
    }

    #[test]
    fn the_queue_keeps_the_newest_deliveries_per_webhook_and_counts_the_dropped() {
        use crate::alerts::{ActiveAlert, AlertName, Transition};
        use crate::store::{Store, StoreConfig};
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db"), &StoreConfig::default()).unwrap();
        let alert = |since| ActiveAlert {
            alert: AlertName::NoPeers,
            since,
            value: 0,
            threshold: 1,
            detail: String::new(),
        };
        let urls = ["http://a/".to_owned(), "http://b/".to_owned()];
        let body = |e: &Event| Ok(e.seq.to_string().into_bytes());
        for since in 1..=3 {
            store
                .record_alert(since, &Transition::Firing(alert(since)), &urls, 2, &body)
                .unwrap();
        }
        assert_eq!(store.webhook_pending().unwrap(), 4);
        assert_eq!(store.counters().unwrap()["alerts.webhook_dropped"], 2);
        let due = store.webhook_due(10, 100).unwrap();
        let a: Vec<&[u8]> = due
            .iter()
            .filter(|d| d.url == "http://a/")
            .map(|d| d.body.as_slice())
            .collect();
        assert_eq!(
            a,
            [b"2".as_slice(), b"3".as_slice()],
            "the oldest went first"
        );
        assert_eq!(store.active_alerts().unwrap(), [alert(3)]);
        // Resolving removes the alert's row; its delivery is queued like the others.
        store
            .record_alert(
                4,
                &Transition::Resolved {
                    alert: alert(3),
                    value: 1,
                },
                &urls[..1],
                2,
                &body,
            )
            .unwrap();
        assert!(store.active_alerts().unwrap().is_empty());
        // Not due before its time; retried, then delivered.
        let first = &store.webhook_due(10, 1).unwrap()[0];
        store.webhook_retry(first.seq, 1_000, "500").unwrap();
        assert!(
            store
                .webhook_due(10, 100)
                .unwrap()
                .iter()
                .all(|d| d.seq != first.seq)
        );
        let again = store.webhook_due(1_000, 100).unwrap();
        let again = again.iter().find(|d| d.seq == first.seq).unwrap();
        assert_eq!(again.attempts, 1);
        store.webhook_finish(first.seq, true).unwrap();
        assert_eq!(store.webhook_pending().unwrap(), 3);
        assert_eq!(store.counters().unwrap()["alerts.webhook_delivered"], 1);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = AlertsConfig {
            webhook_retry_base_ms: 100,
            webhook_retry_max_ms: 1_000,
            ..Default::default()
        };
        let delays: Vec<u64> = (0..6).map(|a| backoff_ms(&config, a)).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(backoff_ms(&config, u32::MAX), 1_000);
    }

    #[test]
    fn secrets_readable_by_others_or_empty_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let hook = WebhookConfig {
            url: "http://127.0.0.1:1/".into(),
            secret_file: path.clone(),
            ca_file: None,
        };
        std::fs::write(&path, "  s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret(&hook).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(&hook).unwrap().as_slice(), b"s3cret");
        std::fs::write(&path, "\n").unwrap();
        assert!(
            read_secret(&hook)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }
}
