//! The node's alerting tasks (see [`crate::alerts`]): the evaluator, which samples the node
//! and records rule transitions, and the webhook sender.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::liveness::latest_sighting;
use super::{Node, background_blocking};
use crate::alerts::webhook::{self, Hooks, backoff_ms};
use crate::alerts::{ActiveAlert, AlertsConfig, Evaluator, Sample, Transition, disk_free_bytes};
use crate::error::Result;
use crate::store::AlertReadings;

/// What the node needs to run alerting, prepared before the node starts (so that an unreadable
/// webhook secret fails the start, not a task).
#[derive(Debug)]
pub(crate) struct Alerting {
    hooks: Option<webhook::Hooks>,
}

impl Alerting {
    /// Reads the webhook secrets when `listening` (only the node on the network alerts) and
    /// alerting is enabled.
    pub(crate) fn prepare(config: &AlertsConfig, listening: bool) -> Result<Alerting> {
        let hooks = if listening && config.enabled {
            Some(webhook::Hooks::load(config)?)
        } else {
            None
        };
        Ok(Alerting { hooks })
    }

    /// Starts the evaluator and, with webhooks, the sender; both end when their shutdown
    /// receiver changes.
    pub(crate) fn spawn(
        self,
        node: &Node,
        stop: impl Fn() -> watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let Some(hooks) = self.hooks else {
            return Vec::new();
        };
        let wake = std::sync::Arc::new(Notify::new());
        let mut tasks = vec![tokio::spawn(evaluate_loop(
            node.clone(),
            wake.clone(),
            stop(),
        ))];
        if !hooks.is_empty() {
            tasks.push(tokio::spawn(send_loop(node.clone(), hooks, wake, stop())));
        }
        tasks
    }
}

impl Node {
    /// The alerts firing now (as recorded by the node on the network of this data directory),
    /// in rule order.
    pub async fn active_alerts(&self) -> Result<Vec<ActiveAlert>> {
        let node = self.clone();
        tokio::task::spawn_blocking(move || node.with_store(|s| s.active_alerts()))
            .await
            .map_err(|e| crate::Error::internal(format!("alerts task failed: {e}")))?
    }

    /// Webhook deliveries waiting to be sent (or retried).
    pub async fn webhook_queue_len(&self) -> Result<u64> {
        let node = self.clone();
        tokio::task::spawn_blocking(move || node.with_store(|s| s.webhook_pending()))
            .await
            .map_err(|e| crate::Error::internal(format!("alerts task failed: {e}")))?
    }

    /// Measures what the rules look at.
    fn alert_sample(&self) -> Result<Sample> {
        let now = self.now_ms();
        let config = self.config();
        let window = self.hello_interval_ms().saturating_mul(3);
        let mut sample = self.with_store(|s| {
            let AlertReadings {
                counters,
                sightings,
                outbox_pending,
                outbox_oldest,
                oldest_pending_message,
            } = s.alert_readings()?;
            let counter = |name: &str| counters.get(name).copied().unwrap_or(0);
            let rejected_total = counters
                .iter()
                .filter(|(k, _)| k.starts_with("rejected.") && *k != "rejected.duplicate")
                .map(|(_, v)| *v)
                .fold(0u64, u64::saturating_add);
            let failed = counter("runs.failed")
                .saturating_add(counter("runs.timed_out"))
                .saturating_add(counter("runs.errored"));
            // The sightings, not the peer rows: the count needs no keys (100 peers' keys are
            // 250 KB to read at every sample).
            let pending = self.inner.liveness.pending_all();
            let live_peers = sightings
                .iter()
                .filter(|p| {
                    let seen = latest_sighting(p.last_seen, pending.get(&p.node_id).copied());
                    now.saturating_sub(seen) <= window
                })
                .count() as u64;
            Ok(Sample {
                live_peers: self.transport_name().map(|_| live_peers),
                outbox_pending,
                outbox_oldest_ms: outbox_oldest.map_or(0, |at| now.saturating_sub(at)),
                rejected_total,
                runs_total: failed.saturating_add(counter("runs.succeeded")),
                runs_failed_total: failed,
                sync_lag_ms: oldest_pending_message.map_or(0, |at| now.saturating_sub(at)),
                disk_free_bytes: None,
            })
        })?;
        sample.disk_free_bytes = disk_free_bytes(&config.data_dir);
        Ok(sample)
    }

    /// Records each transition: its event, the alert's row, a delivery per webhook.
    fn record_alert_transitions(&self, transitions: Vec<Transition>) -> Result<()> {
        let config = &self.config().alerts;
        let urls: Vec<String> = config.webhooks.iter().map(|h| h.url.clone()).collect();
        let payload = webhook::Payload::new(self.id().clone(), self.config().name.clone());
        for t in transitions {
            match &t {
                Transition::Firing(a) => {
                    tracing::warn!(alert = %a.alert, "alert firing: {}", a.detail)
                }
                Transition::Resolved { alert, .. } => {
                    tracing::info!(alert = %alert.alert, "alert resolved")
                }
            }
            self.with_store(|s| {
                s.record_alert(self.now_ms(), &t, &urls, config.webhook_queue_max, &|e| {
                    payload.body(e)
                })
            })?;
        }
        Ok(())
    }
}

async fn evaluate_loop(
    node: Node,
    wake: std::sync::Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let config = node.config().alerts.clone();
    let active = match node.active_alerts().await {
        Ok(active) => active,
        Err(e) => {
            tracing::warn!("alerts: cannot read the active alerts, rules stay off: {e}");
            return;
        }
    };
    let mut evaluator = Evaluator::new(config.clone(), active);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(config.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let n = node.clone();
        let work = move || n.alert_sample();
        let cannot = "alerts: cannot sample the node";
        let Some(sample) = background_blocking(cannot, "alerts: sample", work).await else {
            continue;
        };
        let transitions = evaluator.evaluate(node.now_ms(), &sample);
        if transitions.is_empty() {
            continue;
        }
        let n = node.clone();
        let recorded =
            tokio::task::spawn_blocking(move || n.record_alert_transitions(transitions)).await;
        match recorded {
            Ok(Ok(())) => wake.notify_one(),
            Ok(Err(e)) => tracing::warn!("alerts: cannot record a transition: {e}"),
            Err(e) => tracing::error!("alerts: record task failed: {e}"),
        }
    }
}

/// Sends due deliveries until the node stops; wakes when a transition was queued, and at
/// least once a second for retries.
async fn send_loop(
    node: Node,
    hooks: Hooks,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let hooks = Arc::new(hooks);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = wake.notified() => {}
            _ = tick.tick() => {}
        }
        let n = node.clone();
        let work = move || n.with_store(|s| s.webhook_due(n.now_ms(), 32));
        let cannot = "alerts: cannot read the webhook queue";
        let Some(due) = background_blocking(cannot, "alerts: webhook queue", work).await else {
            continue;
        };
        for delivery in due {
            if *shutdown.borrow() {
                return;
            }
            let (n, h) = (node.clone(), hooks.clone());
            let done = tokio::task::spawn_blocking(move || {
                let config = h.config();
                let Some(posted) = h.deliver(&delivery.url, n.id(), delivery.seq, &delivery.body)
                else {
                    // The webhook was removed from the config since it was queued.
                    return n.with_store(|s| s.webhook_finish(delivery.seq, false));
                };
                match posted {
                    Ok(()) => n.with_store(|s| s.webhook_finish(delivery.seq, true)),
                    Err(e) => {
                        let attempts = delivery.attempts.saturating_add(1);
                        if attempts >= config.webhook_max_attempts {
                            tracing::warn!(
                                url = %delivery.url,
                                "alerts: webhook delivery dropped after {attempts} attempts: {e}"
                            );
                            n.with_store(|s| s.webhook_finish(delivery.seq, false))
                        } else {
                            tracing::debug!(url = %delivery.url, "alerts: webhook delivery failed: {e}");
                            let next = n.now_ms().saturating_add(backoff_ms(config, delivery.attempts));
                            n.with_store(|s| s.webhook_retry(delivery.seq, next, &e.to_string()))
                        }
                    }
                }
            })
            .await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("alerts: cannot update the webhook queue: {e}"),
                Err(e) => tracing::error!("alerts: webhook task failed: {e}"),
            }
        }
    }
}
