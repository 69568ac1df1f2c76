//! The alert rules as a pure state machine: a [`Sample`] of the node's health goes in with the
//! time it was taken, the transitions (firing, resolved) come out. Time is an input, so the
//! rules are tested without sleeping.
//!
//! Hysteresis: a rule fires only after its condition held for the rule's hold time (the
//! `no_peers_secs` window for `no_peers`, `for_secs` for the others), and resolves only after
//! the condition stayed clear for `resolve_secs`. A value that hovers around its threshold
//! therefore makes one firing and, once it settles, one resolution, never a stream of both.

use std::collections::{BTreeMap, VecDeque};

use super::alert::{ActiveAlert, AlertName};
use super::config::AlertsConfig;
use crate::model::Millis;

/// What the node looked like at one moment. `None`: not measurable now (the rule is skipped
/// and counts as clear).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Peers whose verified hello arrived recently; `None` for a node without a network.
    pub live_peers: Option<u64>,
    /// Messages waiting in the outbox.
    pub outbox_pending: u64,
    /// Age of the oldest unsent outbox message, in ms (0 when the outbox is empty).
    pub outbox_oldest_ms: u64,
    /// Rejected remote messages since the store was created (all reasons but `duplicate`).
    pub rejected_total: u64,
    /// Tasks this node ran to an outcome (success, failure, timeout, error).
    pub runs_total: u64,
    /// Of those, the ones that failed, timed out or could not be run.
    pub runs_failed_total: u64,
    /// Age of the oldest received message still waiting for one it depends on, in ms.
    pub sync_lag_ms: u64,
    /// Free bytes for unprivileged users on the data directory's file system.
    pub disk_free_bytes: Option<u64>,
}

/// A change of one alert's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The alert started firing.
    Firing(ActiveAlert),
    /// The alert stopped firing.
    Resolved {
        /// The alert as it was while firing.
        alert: ActiveAlert,
        /// The value that cleared it.
        value: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Clear {
        bad_since: Option<Millis>,
    },
    Firing {
        alert: ActiveAlert,
        clear_since: Option<Millis>,
    },
}

/// Counter readings kept for the rate rules' window.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Millis,
    rejected: u64,
    runs: u64,
    failed: u64,
}

/// The evaluator: the state of every rule, and the counter history of the rate rules.
#[derive(Debug)]
pub struct Evaluator {
    config: AlertsConfig,
    states: BTreeMap<AlertName, State>,
    history: VecDeque<Reading>,
}

/// One rule's reading: whether it is beyond its threshold, the value, the threshold and a
/// sentence for humans.
struct Check {
    bad: bool,
    value: u64,
    threshold: u64,
    detail: String,
}

impl Evaluator {
    /// An evaluator with every rule clear, apart from `active` (alerts still firing when the
    /// node last stopped: they resolve once their condition clears).
    pub fn new(config: AlertsConfig, active: Vec<ActiveAlert>) -> Self {
        let mut states: BTreeMap<AlertName, State> = AlertName::ALL
            .iter()
            .map(|n| (*n, State::Clear { bad_since: None }))
            .collect();
        for alert in active {
            states.insert(
                alert.alert,
                State::Firing {
                    alert,
                    clear_since: None,
                },
            );
        }
        Evaluator {
            config,
            states,
            history: VecDeque::new(),
        }
    }

    /// The alerts firing now, in name order.
    pub fn active(&self) -> Vec<ActiveAlert> {
        self.states
            .values()
            .filter_map(|s| match s {
                State::Firing { alert, .. } => Some(alert.clone()),
                State::Clear { .. } => None,
            })
            .collect()
    }

    /// Takes a sample taken at `now` and returns what changed.
    pub fn evaluate(&mut self, now: Millis, sample: &Sample) -> Vec<Transition> {
        let (rejected, runs, failed) = self.window(now, sample);
        let mut out = Vec::new();
        for name in AlertName::ALL {
            let check = self.check(name, sample, rejected, runs, failed);
            let hold_ms = match name {
                AlertName::NoPeers => self.config.no_peers_secs.saturating_mul(1000),
                _ => self.config.for_secs.saturating_mul(1000),
            };
            let resolve_ms = self.config.resolve_secs.saturating_mul(1000);
            let state = self.states.get_mut(&name).expect("every rule has a state");
            match (state.clone(), check) {
                (State::Clear { .. }, None) => *state = State::Clear { bad_since: None },
                (State::Clear { bad_since }, Some(c)) => {
                    if !c.bad {
                        *state = State::Clear { bad_since: None };
                        continue;
                    }
                    let since = bad_since.unwrap_or(now);
                    if now.saturating_sub(since) >= hold_ms {
                        let alert = ActiveAlert {
                            alert: name,
                            since: now,
                            value: c.value,
                            threshold: c.threshold,
                            detail: c.detail,
                        };
                        out.push(Transition::Firing(alert.clone()));
                        *state = State::Firing {
                            alert,
                            clear_since: None,
                        };
                    } else {
                        *state = State::Clear {
                            bad_since: Some(since),
                        };
                    }
                }
                (State::Firing { alert, .. }, None) => {
                    // The rule was switched off: nothing fires it any more.
                    out.push(Transition::Resolved { alert, value: 0 });
                    *state = State::Clear { bad_since: None };
                }
                (
                    State::Firing {
                        mut alert,
                        clear_since,
                    },
                    Some(c),
                ) => {
                    if c.bad {
                        alert.value = c.value;
                        alert.detail = c.detail;
                        *state = State::Firing {
                            alert,
                            clear_since: None,
                        };
                        continue;
                    }
                    let since = clear_since.unwrap_or(now);
                    if now.saturating_sub(since) >= resolve_ms {
                        out.push(Transition::Resolved {
                            alert,
                            value: c.value,
                        });
                        *state = State::Clear { bad_since: None };
                    } else {
                        *state = State::Firing {
                            alert,
                            clear_since: Some(since),
                        };
                    }
                }
            }
        }
        out
    }

    /// Adds the sample's counters to the history and returns the rejections, runs and failed
    /// runs within the rate window (from the oldest reading still in it).
    fn window(&mut self, now: Millis, sample: &Sample) -> (u64, u64, u64) {
        let window_ms = self.config.rate_window_secs.saturating_mul(1000);
        self.history.push_back(Reading {
            at: now,
            rejected: sample.rejected_total,
            runs: sample.runs_total,
            failed: sample.runs_failed_total,
        });
        while self.history.len() > 1
            && self
                .history
                .get(1)
                .is_some_and(|r| now.saturating_sub(r.at) >= window_ms)
        {
            self.history.pop_front();
        }
        let first = self.history.front().copied().expect("just pushed");
        (
            sample.rejected_total.saturating_sub(first.rejected),
            sample.runs_total.saturating_sub(first.runs),
            sample.runs_failed_total.saturating_sub(first.failed),
        )
    }

    /// The reading of rule `name`; `None` when it is switched off or cannot be measured.
    fn check(
        &self,
        name: AlertName,
        s: &Sample,
        rejected: u64,
        runs: u64,
        failed: u64,
    ) -> Option<Check> {
        let c = &self.config;
        let window = c.rate_window_secs;
        match name {
            AlertName::NoPeers => {
                let peers = s.live_peers?;
                (c.no_peers_secs > 0).then(|| Check {
                    bad: peers == 0,
                    value: peers,
                    threshold: c.no_peers_secs,
                    detail: format!("no verified peer for {} s or more", c.no_peers_secs),
                })
            }
            AlertName::OutboxBacklog => (c.outbox_backlog > 0).then(|| Check {
                bad: s.outbox_pending >= c.outbox_backlog,
                value: s.outbox_pending,
                threshold: c.outbox_backlog,
                detail: format!(
                    "{} messages waiting to be sent (threshold {})",
                    s.outbox_pending, c.outbox_backlog
                ),
            }),
            AlertName::OutboxStale => (c.outbox_oldest_secs > 0).then(|| {
                let age = s.outbox_oldest_ms / 1000;
                Check {
                    bad: s.outbox_pending > 0 && age >= c.outbox_oldest_secs,
                    value: age,
                    threshold: c.outbox_oldest_secs,
                    detail: format!(
                        "the oldest unsent message waits for {age} s (threshold {} s)",
                        c.outbox_oldest_secs
                    ),
                }
            }),
            AlertName::RejectRate => (c.reject_max > 0).then(|| Check {
                bad: rejected >= c.reject_max,
                value: rejected,
                threshold: c.reject_max,
                detail: format!(
                    "{rejected} messages rejected in {window} s (threshold {})",
                    c.reject_max
                ),
            }),
            AlertName::RunnerFailures => (c.runner_failure_percent > 0).then(|| {
                let percent = (failed.saturating_mul(100)).checked_div(runs).unwrap_or(0);
                Check {
                    bad: runs >= c.runner_min_runs.max(1)
                        && percent >= u64::from(c.runner_failure_percent),
                    value: percent,
                    threshold: u64::from(c.runner_failure_percent),
                    detail: format!(
                        "{failed} of {runs} tasks failed in {window} s ({percent} %, threshold {} %)",
                        c.runner_failure_percent
                    ),
                }
            }),
            AlertName::SyncLag => (c.sync_lag_secs > 0).then(|| {
                let lag = s.sync_lag_ms / 1000;
                Check {
                    bad: lag >= c.sync_lag_secs,
                    value: lag,
                    threshold: c.sync_lag_secs,
                    detail: format!(
                        "a received message waits {lag} s for one it depends on (threshold {} s)",
                        c.sync_lag_secs
                    ),
                }
            }),
            AlertName::DiskLow => {
                let free = s.disk_free_bytes?;
                (c.disk_free_min_bytes > 0).then(|| Check {
                    bad: free < c.disk_free_min_bytes,
                    value: free,
                    threshold: c.disk_free_min_bytes,
                    detail: format!(
                        "{free} bytes free on the data directory's file system (threshold {})",
                        c.disk_free_min_bytes
                    ),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Millis = 1000;

    fn config() -> AlertsConfig {
        AlertsConfig {
            for_secs: 10,
            resolve_secs: 30,
            no_peers_secs: 60,
            rate_window_secs: 100,
            ..AlertsConfig::default()
        }
    }

    /// A healthy sample: a peer, empty outbox, plenty of disk.
    fn healthy() -> Sample {
        Sample {
            live_peers: Some(1),
            disk_free_bytes: Some(1 << 40),
            ..Sample::default()
        }
    }

    fn names(ts: &[Transition]) -> Vec<String> {
        ts.iter()
            .map(|t| match t {
                Transition::Firing(a) => format!("+{}", a.alert),
                Transition::Resolved { alert, .. } => format!("-{}", alert.alert),
            })
            .collect()
    }

    #[test]
    fn no_peers_fires_after_its_window_and_resolves_after_resolve_secs() {
        let mut e = Evaluator::new(config(), Vec::new());
        let t0 = 1_000_000;
        let alone = Sample {
            live_peers: Some(0),
            ..healthy()
        };
        assert!(e.evaluate(t0, &alone).is_empty());
        assert!(e.evaluate(t0 + 59 * S, &alone).is_empty(), "not yet 60 s");
        let fired = e.evaluate(t0 + 60 * S, &alone);
        assert_eq!(names(&fired), ["+no_peers"]);
        let Transition::Firing(a) = &fired[0] else {
            unreachable!()
        };
        assert_eq!((a.since, a.value, a.threshold), (t0 + 60 * S, 0, 60));
        assert_eq!(e.active().len(), 1);
        // Still alone: no second firing.
        assert!(e.evaluate(t0 + 200 * S, &alone).is_empty());
        // A peer arrives: resolved only once it stayed for resolve_secs.
        assert!(e.evaluate(t0 + 201 * S, &healthy()).is_empty());
        assert!(e.evaluate(t0 + 230 * S, &healthy()).is_empty());
        let resolved = e.evaluate(t0 + 231 * S, &healthy());
        assert_eq!(names(&resolved), ["-no_peers"]);
        assert!(e.active().is_empty());
    }

    #[test]
    fn a_value_hovering_at_its_threshold_does_not_flap() {
        let mut e = Evaluator::new(config(), Vec::new());
        let backlog = |n| Sample {
            outbox_pending: n,
            ..healthy()
        };
        let threshold = AlertsConfig::default().outbox_backlog;
        let mut all = Vec::new();
        // Above and below the threshold every 5 s: never 10 s above in a row, so nothing fires.
        for i in 0..40u64 {
            let n = if i % 2 == 0 { threshold } else { threshold - 1 };
            all.extend(e.evaluate(i * 5 * S, &backlog(n)));
        }
        assert!(all.is_empty(), "{:?}", names(&all));
        // Above for 10 s: fires once; then hovering again never resolves (never 30 s clear)
        // and never fires twice.
        let t = 1_000 * S;
        all.extend(e.evaluate(t, &backlog(threshold)));
        all.extend(e.evaluate(t + 10 * S, &backlog(threshold)));
        for i in 0..40u64 {
            let n = if i % 3 == 0 { threshold } else { 0 };
            all.extend(e.evaluate(t + 20 * S + i * 10 * S, &backlog(n)));
        }
        assert_eq!(names(&all), ["+outbox_backlog"]);
        // Clear for good: exactly one resolution.
        let t = 2_000 * S;
        for i in 0..10u64 {
            all.extend(e.evaluate(t + i * 10 * S, &backlog(0)));
        }
        assert_eq!(names(&all), ["+outbox_backlog", "-outbox_backlog"]);
    }

    #[test]
    fn rate_rules_count_within_their_window() {
        let mut e = Evaluator::new(
            AlertsConfig {
                for_secs: 0,
                resolve_secs: 0,
                reject_max: 10,
                ..config()
            },
            Vec::new(),
        );
        let rejected = |n| Sample {
            rejected_total: n,
            ..healthy()
        };
        // 9 rejections within the 100 s window: clear; the 10th fires.
        assert!(
            e.evaluate(0, &rejected(1000)).is_empty(),
            "a baseline, not a burst"
        );
        assert!(e.evaluate(50 * S, &rejected(1009)).is_empty());
        assert_eq!(
            names(&e.evaluate(60 * S, &rejected(1010))),
            ["+reject_rate"]
        );
        // No new rejections: the burst leaves the window and the alert resolves.
        assert!(e.evaluate(90 * S, &rejected(1010)).is_empty());
        assert_eq!(
            names(&e.evaluate(160 * S, &rejected(1010))),
            ["-reject_rate"]
        );

        // Runner failures: a percentage, once enough tasks ran.
        let mut e = Evaluator::new(
            AlertsConfig {
                for_secs: 0,
                resolve_secs: 0,
                runner_failure_percent: 50,
                runner_min_runs: 4,
                ..config()
            },
            Vec::new(),
        );
        let runs = |total, failed| Sample {
            runs_total: total,
            runs_failed_total: failed,
            ..healthy()
        };
        assert!(e.evaluate(0, &runs(0, 0)).is_empty());
        assert!(
            e.evaluate(10 * S, &runs(3, 3)).is_empty(),
            "3 runs are too few"
        );
        let fired = e.evaluate(20 * S, &runs(4, 3));
        assert_eq!(names(&fired), ["+runner_failures"]);
        let Transition::Firing(a) = &fired[0] else {
            unreachable!()
        };
        assert_eq!((a.value, a.threshold), (75, 50));
    }

    #[test]
    fn every_rule_fires_on_its_own_measure_and_zero_switches_it_off() {
        let cfg = AlertsConfig {
            for_secs: 0,
            resolve_secs: 0,
            outbox_oldest_secs: 60,
            sync_lag_secs: 60,
            disk_free_min_bytes: 1000,
            ..config()
        };
        let mut e = Evaluator::new(cfg.clone(), Vec::new());
        let bad = Sample {
            outbox_pending: 1,
            outbox_oldest_ms: 61 * S,
            sync_lag_ms: 60 * S,
            disk_free_bytes: Some(999),
            ..healthy()
        };
        let fired = e.evaluate(0, &bad);
        assert_eq!(names(&fired), ["+outbox_stale", "+sync_lag", "+disk_low"]);
        // A node without a network and a file system without statvfs measure nothing.
        let unmeasured = Sample {
            live_peers: None,
            disk_free_bytes: None,
            ..healthy()
        };
        let mut e = Evaluator::new(cfg.clone(), Vec::new());
        assert!(e.evaluate(0, &unmeasured).is_empty());
        assert!(e.evaluate(1_000 * S, &unmeasured).is_empty());
        // Thresholds of 0 switch rules off.
        let off = AlertsConfig {
            no_peers_secs: 0,
            outbox_backlog: 0,
            outbox_oldest_secs: 0,
            reject_max: 0,
            runner_failure_percent: 0,
            sync_lag_secs: 0,
            disk_free_min_bytes: 0,
            ..cfg
        };
        let mut e = Evaluator::new(off, Vec::new());
        let worst = Sample {
            live_peers: Some(0),
            outbox_pending: u64::MAX,
            outbox_oldest_ms: u64::MAX,
            rejected_total: u64::MAX,
            runs_total: u64::MAX,
            runs_failed_total: u64::MAX,
            sync_lag_ms: u64::MAX,
            disk_free_bytes: Some(0),
        };
        assert!(e.evaluate(0, &Sample::default()).is_empty());
        assert!(e.evaluate(1_000_000 * S, &worst).is_empty());
    }

    #[test]
    fn alerts_active_before_a_restart_resolve_when_clear() {
        let before = ActiveAlert {
            alert: AlertName::NoPeers,
            since: 5,
            value: 0,
            threshold: 60,
            detail: "no verified peer".into(),
        };
        let mut e = Evaluator::new(config(), vec![before.clone()]);
        assert_eq!(e.active(), std::slice::from_ref(&before));
        assert!(e.evaluate(0, &healthy()).is_empty());
        let resolved = e.evaluate(30 * S, &healthy());
        assert_eq!(
            resolved,
            [Transition::Resolved {
                alert: before,
                value: 1
            }]
        );
        // A rule switched off while firing resolves at once.
        let mut e = Evaluator::new(
            AlertsConfig {
                disk_free_min_bytes: 0,
                ..config()
            },
            vec![ActiveAlert {
                alert: AlertName::DiskLow,
                since: 1,
                value: 1,
                threshold: 2,
                detail: String::new(),
            }],
        );
        assert_eq!(names(&e.evaluate(0, &healthy())), ["-disk_low"]);
    }
}
