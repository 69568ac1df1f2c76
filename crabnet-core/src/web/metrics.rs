//! `/metrics`: the node's counters and gauges in the Prometheus text format (version 0.0.4),
//! plus the latency of the store queries this API issues.

use std::fmt::Write;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::alerts::{ActiveAlert, AlertName};
use crate::model::{SandboxLevel, SeedStatus};
use crate::monitor::RejectReason;
use crate::node::Overview;

/// Every rejection reason, in the order counters are shown.
pub(crate) const REJECT_REASONS: [RejectReason; 13] = [
    RejectReason::Malformed,
    RejectReason::Oversized,
    RejectReason::Duplicate,
    RejectReason::BadSignature,
    RejectReason::UnknownSender,
    RejectReason::Replay,
    RejectReason::Expired,
    RejectReason::KeyMismatch,
    RejectReason::Rule,
    RejectReason::NotAdmitted,
    RejectReason::RateLimited,
    RejectReason::LamportAhead,
    RejectReason::RotatedKey,
];

/// Compile-time reminder: a new reason fails this match until it is added above.
const _: fn(RejectReason) = |r| match r {
    RejectReason::Malformed
    | RejectReason::Oversized
    | RejectReason::Duplicate
    | RejectReason::BadSignature
    | RejectReason::UnknownSender
    | RejectReason::Replay
    | RejectReason::Expired
    | RejectReason::KeyMismatch
    | RejectReason::Rule
    | RejectReason::NotAdmitted
    | RejectReason::RateLimited
    | RejectReason::LamportAhead
    | RejectReason::RotatedKey => {}
};

/// Store queries the API issues, timed separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Query {
    Overview,
    Seeds,
    Seed,
    Peers,
    Events,
    Alerts,
}

impl Query {
    const ALL: [Query; 6] = [
        Query::Overview,
        Query::Seeds,
        Query::Seed,
        Query::Peers,
        Query::Events,
        Query::Alerts,
    ];

    fn name(self) -> &'static str {
        match self {
            Query::Overview => "overview",
            Query::Seeds => "seeds",
            Query::Seed => "seed",
            Query::Peers => "peers",
            Query::Events => "events",
            Query::Alerts => "alerts",
        }
    }
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last one is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, seconds: f64) {
        let i = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Measurements of the web layer itself.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    store: [Histogram; Query::ALL.len()],
    streams_open: AtomicU64,
}

impl Metrics {
    /// Runs a store query and records how long it took (including the wait for the store).
    pub(crate) async fn timed<T>(&self, query: Query, f: impl Future<Output = T>) -> T {
        let start = Instant::now();
        let out = f.await;
        self.store[query as usize].observe(start.elapsed().as_secs_f64());
        out
    }

    /// Counts an open event stream until the guard is dropped.
    pub(crate) fn stream_opened(self: &std::sync::Arc<Self>) -> StreamGuard {
        self.streams_open.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }
}

/// Counts one open event stream.
pub(crate) struct StreamGuard(std::sync::Arc<Metrics>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Escapes a label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let parts: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", parts.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family with one sample.
    fn single(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        self.family(name, kind, help);
        self.sample(name, labels, value);
    }
}

/// A sandbox level as a gauge value: the higher, the stronger the isolation.
fn level_value(level: SandboxLevel) -> u8 {
    match level {
        SandboxLevel::None => 0,
        SandboxLevel::Partial => 1,
        SandboxLevel::Full => 2,
    }
}

/// What the alert gauges show.
#[derive(Debug, Default)]
pub(crate) struct Alerting {
    /// The alerts firing now.
    pub active: Vec<ActiveAlert>,
    /// Webhook deliveries queued.
    pub webhook_queue: u64,
    /// Peers whose latest hello is recent (within three hello intervals).
    pub peers_active: u64,
}

/// The whole exposition.
pub(crate) fn render(overview: &Overview, alerting: &Alerting, metrics: &Metrics) -> String {
    let mut out = Out(String::new());
    let counter = |name: &str| overview.counters.get(name).copied().unwrap_or(0);

    out.single(
        "crabnet_node_info",
        "gauge",
        "The node's identity; the value is always 1.",
        &[
            ("node_id", overview.node_id.as_str()),
            ("name", &overview.name),
            ("transport", overview.transport.as_deref().unwrap_or("none")),
            ("version", env!("CARGO_PKG_VERSION")),
        ],
        1,
    );

    out.single(
        "crabnet_messages_accepted_total",
        "counter",
        "Remote messages accepted and applied to a seed's state.",
        &[],
        counter("messages.accepted"),
    );
    out.single(
        "crabnet_messages_deferred_total",
        "counter",
        "Remote messages stored to take effect once the message they depend on arrives.",
        &[],
        counter("messages.deferred"),
    );
    out.family(
        "crabnet_messages_rejected_total",
        "counter",
        "Remote messages rejected, by reason.",
    );
    for reason in REJECT_REASONS {
        let r = reason.as_str();
        out.sample(
            "crabnet_messages_rejected_total",
            &[("reason", r)],
            counter(&format!("rejected.{r}")),
        );
    }
    out.single(
        "crabnet_envelopes_sent_total",
        "counter",
        "Envelopes of this node's own messages handed to the transport.",
        &[],
        counter("messages.sent"),
    );

    out.family(
        "crabnet_seeds",
        "gauge",
        "Seeds known to this node, by status.",
    );
    for status in SeedStatus::ALL {
        let n = overview.seeds_by_status.get(&status).copied().unwrap_or(0);
        out.sample("crabnet_seeds", &[("status", status.as_str())], n);
    }

    out.family(
        "crabnet_runner_outcomes_total",
        "counter",
        "Tasks this node ran, by outcome (error: the command could not be run).",
    );
    for (outcome, name) in [
        ("success", "runs.succeeded"),
        ("failure", "runs.failed"),
        ("timeout", "runs.timed_out"),
        ("interrupted", "runs.interrupted"),
        ("error", "runs.errored"),
    ] {
        out.sample(
            "crabnet_runner_outcomes_total",
            &[("outcome", outcome)],
            counter(name),
        );
    }

    out.single(
        "crabnet_task_sandbox_level",
        "gauge",
        "The sandbox this node builds around the tasks it runs: 0 none, 1 partial, 2 full \
         (0 when the policy is required and the system lacks a feature); labelled with the \
         runner.sandbox policy.",
        &[("policy", overview.sandbox.policy.as_str())],
        level_value(overview.sandbox.level),
    );
    out.single(
        "crabnet_task_sandbox_can_run",
        "gauge",
        "1 when this node can run tasks under its sandbox policy, 0 when it refuses to bid \
         and to run.",
        &[],
        u8::from(overview.sandbox.can_run),
    );

    out.single(
        "crabnet_peers",
        "gauge",
        "Peers whose signed hello this node verified.",
        &[],
        overview.peers,
    );
    out.single(
        "crabnet_peers_active",
        "gauge",
        "Peers whose latest verified hello arrived within three hello intervals.",
        &[],
        alerting.peers_active,
    );

    out.family(
        "crabnet_alert_active",
        "gauge",
        "1 while the node's alert rule is firing, else 0 (see the [alerts] config section).",
    );
    for name in AlertName::ALL {
        let firing = alerting.active.iter().any(|a| a.alert == name);
        out.sample(
            "crabnet_alert_active",
            &[("alert", name.as_str())],
            u8::from(firing),
        );
    }
    out.family(
        "crabnet_alert_since_seconds",
        "gauge",
        "When a firing alert fired (Unix seconds); only firing alerts have a sample.",
    );
    for a in &alerting.active {
        out.sample(
            "crabnet_alert_since_seconds",
            &[("alert", a.alert.as_str())],
            a.since / 1000,
        );
    }
    out.single(
        "crabnet_alert_webhook_queue",
        "gauge",
        "Alert webhook deliveries waiting to be sent or retried.",
        &[],
        alerting.webhook_queue,
    );
    out.single(
        "crabnet_outbox_pending",
        "gauge",
        "Messages of this node waiting to be sent.",
        &[],
        overview.outbox_pending,
    );
    out.single(
        "crabnet_events_recorded_total",
        "counter",
        "Events recorded in the node's durable log (the latest sequence number).",
        &[],
        overview.last_event_seq,
    );
    out.family(
        "crabnet_node_counter_total",
        "counter",
        "Every counter of the node's store, by its name.",
    );
    for (name, value) in &overview.counters {
        out.sample("crabnet_node_counter_total", &[("name", name)], value);
    }

    out.family(
        "crabnet_store_query_duration_seconds",
        "histogram",
        "Latency of the store queries this monitoring API issued, by query, including the \
         wait for the store lock and a blocking thread.",
    );
    for query in Query::ALL {
        let h = &metrics.store[query as usize];
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += h.buckets[i].load(Ordering::Relaxed);
            out.sample(
                "crabnet_store_query_duration_seconds_bucket",
                &[("query", query.name()), ("le", &le.to_string())],
                cumulative,
            );
        }
        cumulative += h.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        out.sample(
            "crabnet_store_query_duration_seconds_bucket",
            &[("query", query.name()), ("le", "+Inf")],
            cumulative,
        );
        out.sample(
            "crabnet_store_query_duration_seconds_sum",
            &[("query", query.name())],
            h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        );
        out.sample(
            "crabnet_store_query_duration_seconds_count",
            &[("query", query.name())],
            h.count.load(Ordering::Relaxed),
        );
    }

    out.single(
        "crabnet_web_event_streams",
        "gauge",
        "Event streams (server-sent events) open now.",
        &[],
        metrics.streams_open.load(Ordering::Relaxed),
    );
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{SandboxPolicy, SandboxStatus};

    pub(super) fn overview(name: &str, sandbox: SandboxStatus) -> Overview {
        Overview {
            node_id: crate::model::NodeId::from_bytes([7; 32]),
            name: name.into(),
            data_dir: "/tmp".into(),
            transport: None,
            seeds_by_status: Default::default(),
            outbox_pending: 0,
            counters: Default::default(),
            last_event_seq: 0,
            events_pruned_through: 0,
            state_digest: String::new(),
            peers: 0,
            addresses: Vec::new(),
            sandbox,
        }
    }

    fn sandbox(policy: SandboxPolicy, level: SandboxLevel, can_run: bool) -> SandboxStatus {
        SandboxStatus {
            policy,
            level,
            features: Vec::new(),
            missing: Vec::new(),
            allow_network: false,
            can_run,
        }
    }

    /// The value of the sample `series` (name and labels as written) in `text`.
    fn value<'a>(text: &'a str, series: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn sandbox_gauges_show_policy_level_and_whether_tasks_run() {
        use SandboxLevel::{Full, None as Unisolated, Partial};
        use SandboxPolicy::{BestEffort, None as NoSandbox, Required};
        let m = Metrics::default();
        // policy, level, can run; the gauges' level and can-run values.
        for (policy, isolation, runs, level, can_run) in [
            (Required, Full, true, "2", "1"),
            (Required, Unisolated, false, "0", "0"),
            (BestEffort, Partial, true, "1", "1"),
            (NoSandbox, Unisolated, true, "0", "1"),
        ] {
            let status = sandbox(policy, isolation, runs);
            let policy = status.policy.as_str();
            let text = render(&overview("n", status), &Alerting::default(), &m);
            let series = format!("crabnet_task_sandbox_level{{policy=\"{policy}\"}}");
            assert_eq!(value(&text, &series), level, "{text}");
            assert_eq!(value(&text, "crabnet_task_sandbox_can_run"), can_run);
            assert_eq!(text.matches("crabnet_task_sandbox_level{").count(), 1);
            assert!(text.contains("# TYPE crabnet_task_sandbox_level gauge\n"));
            assert!(text.contains("# TYPE crabnet_task_sandbox_can_run gauge\n"));
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_escaped() {
        let m = Metrics::default();
        m.store[Query::Seed as usize].observe(0.0001);
        m.store[Query::Seed as usize].observe(0.003);
        m.store[Query::Seed as usize].observe(10.0);
        let status = crate::runner::RunnerConfig::default().sandbox_status();
        let overview = overview("a \"quoted\"\nname\\", status);
        let text = render(&overview, &Alerting::default(), &m);
        assert!(text.contains(r#"name="a \"quoted\"\nname\\""#), "{text}");
        let bucket = |le: &str| {
            let prefix = format!(
                "crabnet_store_query_duration_seconds_bucket{{query=\"seed\",le=\"{le}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no bucket {le}\n{text}"))
                .to_owned()
        };
        assert_eq!(bucket("0.0005"), "1");
        assert_eq!(bucket("0.005"), "2");
        assert_eq!(bucket("2.5"), "2");
        assert_eq!(bucket("+Inf"), "3");
        assert!(text.contains("crabnet_store_query_duration_seconds_count{query=\"seed\"} 3"));
    }
}

#[cfg(test)]
mod alert_tests {
    use super::*;

    #[test]
    fn every_rule_has_an_alert_gauge_and_firing_ones_are_1() {
        let status = crate::runner::RunnerConfig::default().sandbox_status();
        let o = Overview {
            peers: 3,
            ..super::tests::overview("n", status)
        };
        let alerting = Alerting {
            active: vec![ActiveAlert {
                alert: AlertName::NoPeers,
                since: 1_700_000_000_000,
                value: 0,
                threshold: 120,
                detail: "none".into(),
            }],
            webhook_queue: 2,
            peers_active: 0,
        };
        let text = render(&o, &alerting, &Metrics::default());
        for name in AlertName::ALL {
            let want = if name == AlertName::NoPeers { "1" } else { "0" };
            let series = format!("crabnet_alert_active{{alert=\"{name}\"}} {want}\n");
            assert!(text.contains(&series), "{series}\n{text}");
        }
        assert!(text.contains("crabnet_alert_since_seconds{alert=\"no_peers\"} 1700000000\n"));
        assert!(text.contains("crabnet_alert_webhook_queue 2\n"));
        assert!(text.contains("crabnet_peers_active 0\n"));
        assert!(text.contains("crabnet_peers 3\n"));

        // The shipped Prometheus rules use only metrics the node exports.
        let rules = include_str!("../../../ops/prometheus/crabnet-rules.yml");
        let mut used: Vec<&str> = rules
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("crabnet_"))
            .collect();
        used.sort();
        used.dedup();
        assert!(used.len() >= 6, "{used:?}");
        for name in used {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "the rules use {name}, which /metrics does not export"
            );
        }
    }
}
