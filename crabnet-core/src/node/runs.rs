//! Running a claimed seed's command, and what becomes of runs a stop or a crash cut short.
//!
//! A run is *active* from the moment [`Node::run`] is called until its result is recorded.
//! [`Node::stop`] waits for active runs: each gets `runner.stop_grace_ms` to finish on its own;
//! then its task is killed (the whole process group, or the PID namespace) and reaped, and the
//! run is recorded with a [`TaskResult`] that says `interrupted` (reported to the publisher like
//! any result, so the seed is `completed` and never runs again by itself). On Linux a task never
//! outlives its node's process: the runner's guard process kills it when the node dies (see
//! `sandbox::linux`). Other platforms have no such guard: a task whose node's process died
//! (a crash, `kill -9`) runs on unsupervised (no timeout, its output unread) until it ends by
//! itself. On every platform a run whose process died without recording anything leaves its
//! marker in the store; the next node on the data directory records it as interrupted when it
//! starts (and before any run), so a restart never executes the command again silently:
//! [`Node::run`] on that seed fails with a state error, and running the work again takes a new
//! seed. (The marker names the node's process, not the task's: a marker whose process id was
//! reused by a live process counts as a run in progress, so `run` fails with
//! [`ErrorKind::Busy`] until that process is gone, and then it is recorded as interrupted.)

use std::time::Duration;

use tokio::sync::watch;

use super::operations::{known, refusal};
use super::{Node, lock};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Body, OutputHash, SandboxInfo, SeedId, TaskResult};
use crate::monitor::EventKind;
use crate::runner::{self, RunOutcome, RunRequest, RunnerError};
use crate::state::{self, SeedView};

/// The run bookkeeping of a node.
pub(super) struct Runs {
    /// Becomes `true` when a stop begins.
    stopping: watch::Sender<bool>,
    /// How many runs are active.
    active: watch::Sender<usize>,
}

impl Runs {
    pub(super) fn new() -> Runs {
        Runs {
            stopping: watch::Sender::new(false),
            active: watch::Sender::new(0),
        }
    }

    /// Tells active runs to end (after the grace period) and waits until every one of them
    /// recorded its result. Runs cannot begin any more: the node refuses operations first.
    pub(super) async fn interrupt_all(&self) {
        self.stopping.send_replace(true);
        let mut active = self.active.subscribe();
        // The sender lives as long as `self`.
        let _ = active.wait_for(|n| *n == 0).await;
    }
}

/// Counts one active run for as long as it lives.
struct Active(watch::Sender<usize>);

impl Active {
    fn new(runs: &Runs) -> Active {
        runs.active.send_modify(|n| *n += 1);
        Active(runs.active.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Records a begun run as interrupted if its future is dropped before it recorded a result
/// (the caller gave up waiting): the task itself is killed by the runner's own guard.
struct Begun {
    node: Node,
    seed_id: SeedId,
    started_at: u64,
    active: Option<Active>,
}

impl Begun {
    fn done(mut self) -> Active {
        self.active.take().expect("taken once")
    }
}

impl Drop for Begun {
    fn drop(&mut self) {
        let Some(active) = self.active.take() else {
            return;
        };
        let (node, seed_id, started_at) =
            (self.node.clone(), self.seed_id.clone(), self.started_at);
        let record = move || {
            if let Err(e) = node.record_lost_run(&seed_id, started_at, std::process::id()) {
                tracing::warn!(seed = %seed_id, "cannot record an abandoned run: {e}");
            }
            drop(active);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(record);
            }
            Err(_) => record(),
        }
    }
}

impl Node {
    /// Runs a seed this node claimed, records and broadcasts its result. The command runs only
    /// because this node's operator asked for it; nothing runs on a remote request.
    ///
    /// If the node stops meanwhile ([`Node::stop`]), the command gets `runner.stop_grace_ms`
    /// to finish, then it is killed and the result says `interrupted` (returned here too). A run
    /// cut short by a crash is recorded as interrupted when the node starts again; either way
    /// the seed is `completed` and a later `run` fails with [`ErrorKind::State`].
    pub async fn run(&self, seed_id: &SeedId) -> Result<SeedView> {
        // Counted before the node's stopped check, so a stop cannot miss this run.
        let active = Active::new(&self.inner.runs);
        let id = seed_id.clone();
        let (seed, started_at) = self
            .blocking(move |n| {
                n.record_orphaned_runs()?;
                let view = n.seed_blocking(&id)?;
                state::check_local_run(&view, &n.inner.id)?;
                n.inner
                    .config
                    .runner
                    .check_can_serve(&view.seed)
                    .map_err(|e| refusal(&id, e))?;
                let started_at = n.now_ms();
                n.with_store(|s| {
                    s.begin_run(&id, std::process::id(), started_at)?;
                    s.record_event(
                        n.now_ms(),
                        EventKind::TaskStarted {
                            seed_id: id.clone(),
                            command: view.seed.command.clone(),
                        },
                    )
                })?;
                Ok((view.seed, started_at))
            })
            .await?;
        let begun = Begun {
            node: self.clone(),
            seed_id: seed.id.clone(),
            started_at,
            active: Some(active),
        };
        let work_root = self.inner.config.runner.work_root();
        let grace = Duration::from_millis(self.inner.config.runner.stop_grace_ms);
        let mut stopping = self.inner.runs.stopping.subscribe();
        let interrupt = async move {
            if stopping.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(grace).await;
        };
        let outcome = runner::run_interruptible(
            RunRequest {
                task_id: seed.id.as_str(),
                command: &seed.command,
                timeout: Duration::from_secs(seed.timeout_secs),
                work_root: &work_root,
                network: seed.network,
                isolation: seed.isolation,
                // The same for every replica of the seed, so that tools that embed a date
                // produce the same output everywhere.
                source_date_epoch: Some(seed.created_at / 1000),
                output: seed.replication().map_or(OutputHash::Combined, |r| r.hash),
            },
            &self.inner.config.runner,
            interrupt,
        )
        .await;
        let active = begun.done();
        let outcome = outcome.map(|o| self.on_node_clock(o, started_at));
        let node = self.clone();
        let id = seed.id.clone();
        // Not `blocking`: a stop in progress waits for this very record.
        let recorded = tokio::task::spawn_blocking(move || node.record_run(&id, outcome))
            .await
            .map_err(|e| Error::internal(format!("node task failed: {e}")));
        drop(active);
        recorded?
    }

    /// The run's times on this node's clock: the runner reads the system clock, so under
    /// another clock ([`Node::start_with_clock`]) the run starts when the node began it and
    /// lasts what the runner measured.
    fn on_node_clock(&self, mut outcome: RunOutcome, started_at: u64) -> RunOutcome {
        if self.inner.clock.is_some() {
            outcome.started_at_ms = started_at;
            outcome.finished_at_ms = started_at.saturating_add(outcome.duration_ms);
        }
        outcome
    }

    /// Records how a run ended (its result, or its error) and clears its marker.
    fn record_run(
        &self,
        id: &SeedId,
        outcome: std::result::Result<RunOutcome, RunnerError>,
    ) -> Result<SeedView> {
        self.with_store(|s| s.count(run_counter(&outcome)))?;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                self.with_store(|s| s.end_run(id))?;
                return Err(Error::with_source(
                    ErrorKind::Runner,
                    format!("cannot run seed {id}: {e}"),
                    e,
                ));
            }
        };
        if outcome.interrupted {
            tracing::warn!(
                seed = %id,
                "the node is stopping: the task was killed and its result recorded as interrupted"
            );
        }
        let result = TaskResult {
            seed_id: id.clone(),
            runner: self.inner.id.clone(),
            success: outcome.success(),
            exit_code: outcome.exit_code,
            signal: outcome.signal,
            timed_out: outcome.timed_out,
            interrupted: outcome.interrupted,
            duration_ms: outcome.duration_ms,
            // A lying runner for tests (see `RunnerConfig::forge_output_hash`).
            output_sha256: if self.inner.config.runner.forge_output_hash {
                runner::FORGED_OUTPUT_SHA256.to_owned()
            } else {
                outcome.output_sha256
            },
            output_bytes: outcome.output_bytes,
            output_excerpt: outcome.output_excerpt,
            output_truncated: outcome.output_truncated,
            started_at: outcome.started_at_ms,
            finished_at: outcome.finished_at_ms,
            sandbox: outcome.sandbox,
        };
        let committed = self.commit_result(result);
        // The marker goes after the result: a crash in between leaves a marker whose seed is
        // no longer claimed, which the next start simply clears.
        self.with_store(|s| s.end_run(id))?;
        committed
    }

    fn commit_result(&self, result: TaskResult) -> Result<SeedView> {
        let id = result.seed_id.clone();
        self.commit_local(&id, |v| {
            let v = known(v, &id)?;
            state::check_local_run(v, &result.runner)?;
            Ok(Body::ResultReported(result))
        })
    }

    /// Records every run whose process is gone without a result as interrupted (see the
    /// module docs). Called when the node starts and before each run.
    pub(super) fn record_orphaned_runs(&self) -> Result<()> {
        let orphans = lock(&self.inner.store).orphaned_runs()?;
        for (seed_id, pid, started_at) in orphans {
            self.record_lost_run(&seed_id, started_at, pid)?;
        }
        Ok(())
    }

    /// Records the run of `seed_id` begun at `started_at` by process `pid`, which ended without
    /// a result, as interrupted (if the seed still waits for one), and clears its marker.
    fn record_lost_run(&self, seed_id: &SeedId, started_at: u64, pid: u32) -> Result<()> {
        let view = lock(&self.inner.store).seed(seed_id)?;
        let waiting = view
            .as_ref()
            .is_some_and(|v| state::check_local_run(v, &self.inner.id).is_ok());
        if waiting {
            tracing::warn!(
                seed = %seed_id,
                pid,
                "a run of this seed ended without a result (its process is gone); recorded as \
                 interrupted, not run again"
            );
            let now = self.now_ms().max(started_at);
            let result = TaskResult {
                seed_id: seed_id.clone(),
                runner: self.inner.id.clone(),
                exit_code: None,
                signal: None,
                timed_out: false,
                interrupted: true,
                success: false,
                duration_ms: now - started_at,
                output_sha256: EMPTY_SHA256.into(),
                output_bytes: 0,
                output_excerpt: String::new(),
                output_truncated: false,
                started_at,
                finished_at: now,
                sandbox: SandboxInfo::default(),
            };
            self.with_store(|s| s.count("runs.interrupted"))?;
            self.commit_result(result)?;
        }
        self.with_store(|s| s.end_run(seed_id))
    }
}

/// SHA-256 of no bytes: the output hash of a run found dead after a crash.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The counter a run's outcome bumps (shown by `/metrics` as runner outcomes).
fn run_counter(outcome: &std::result::Result<RunOutcome, RunnerError>) -> &'static str {
    match outcome {
        Err(_) => "runs.errored",
        Ok(o) if o.interrupted => "runs.interrupted",
        Ok(o) if o.timed_out => "runs.timed_out",
        Ok(o) if o.success() => "runs.succeeded",
        Ok(_) => "runs.failed",
    }
}
