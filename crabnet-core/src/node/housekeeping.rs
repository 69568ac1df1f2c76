//! Housekeeping: every periodic duty on its own trigger, and the NDJSON event log writer.

use std::fs::OpenOptions;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::{Node, background_blocking, lock};
use crate::error::{Error, Result};
use crate::model::Millis;
use crate::store::CommitWatch;

impl Node {
    /// Background upkeep, on the `network.tick_ms` tick, doing store work only when something is
    /// due. Its duties, each with what makes it due:
    ///
    /// * decisions on seeds of ours ([`Node::issue_due_decisions`]): the decision timer
    ///   ([`SeedView::next_decision_at`]: a bid window ended, a rules-2 deadline passed), or
    ///   another process (a CLI command, a binding) committed to the database (checked with
    ///   SQLite's `data_version`, which costs no table read);
    /// * rejection counters and events, and held envelopes whose author's hello did not come in
    ///   time ([`Node::flush_rejections`]): rejections or unusual counters counted, a window
    ///   open, the oldest held envelope's expiry, or routine counters waiting for
    ///   `network.counter_write_secs` since the last write (routine counters alone wait: an
    ///   idle node does not write after each frame it received);
    /// * the `last_seen` of peers whose unchanged hellos were only noted in memory
    ///   ([`Node::write_liveness`]): once per hello interval ([`Node::hello_interval`]);
    /// * retention ([`crate::retention::Retention::run_if_due`]), the rotation chains of
    ///   nodes that left the peer table ([`crate::trust::Trust::prune_chains`]), strangers'
    ///   self-revocations past their cap and expired certificates
    ///   ([`crate::trust::Trust::prune_revocations`]): its own schedule,
    ///   `retention.interval_secs` (at once while work is left);
    /// * seen-id expiry: the earliest expiry;
    /// * revocations and rotations another process stored (`Trust::refresh`), and events it
    ///   recorded (to the bus and the log): the database changed;
    /// * switching to keys another process on this data directory rotated to
    ///   ([`Node::follow_own_rotation`]): the database changed, or this node's chain is ahead
    ///   of its keys (a switch that could not load the keys yet is tried again);
    /// * the outbox: the earliest retry, or the database changed (another process queued).
    ///
    /// It looks every tick while busy. An idle node sleeps until a duty is due, another
    /// store on the database (a CLI command, a binding) rings its bell after a commit
    /// ([`CommitWatch`]: the node's own commits do not wake it), something counted in memory
    /// comes due sooner ([`crate::ingress::Rejections::sooner`]: the first counter after a
    /// write, a rejection; [`super::liveness::Liveness::sooner`]: the first `last_seen` to
    /// write), or at most [`IDLE_SLEEP_MAX`]; changes made through this node wake the tasks
    /// directly. A bell, rung once the commit is visible, brings a look at once: what the
    /// other process queued goes out then, the duties of the change follow at the next full
    /// look (at most one per tick). "The database changed" is SQLite's `data_version`, read
    /// after a bell, and on every look while the bells are not watched (the first
    /// [`WATCH_AFTER`] of a node without a network, or where they cannot be): an idle node
    /// does not query its store when it wakes. A write by a program other than crabnet rings no
    /// bell and is seen at a full look: within [`IDLE_SLEEP_MAX`] when idle. So is a step of the
    /// node's clock (a [`crate::clock::Clock`] set forward, the system clock stepped).
    pub(super) async fn housekeeping(self, mut shutdown: watch::Receiver<bool>) {
        let tick = Duration::from_millis(self.inner.config.network.tick_ms);
        let mut last_version = None;
        // The first look at once (decisions may have come due while the node was down).
        let start = tokio::time::Instant::now();
        // The bells are watched from the first look, or, without a network (a CLI command, an
        // offline binding), from the first after WATCH_AFTER (until then every look reads the
        // version); every commit of another store after that is heard.
        let own_bell = lock(&self.inner.store).bell().map(str::to_owned);
        let db_path = self.inner.config.db_path();
        let mut bells = CommitWatch::unwatched();
        let networked = self.inner.transport_name.is_some();
        let mut watch_at = Some(if networked {
            start
        } else {
            start + WATCH_AFTER
        });
        // The last full look (duties), at most one per tick.
        let mut last_full = start.checked_sub(tick).unwrap_or(start);
        let mut first = true;
        // A look between full ones saw another process's commit: the next full look, a tick
        // after the last, does its duties.
        let mut changed_since_full = false;
        loop {
            // Full looks: busy (a change waits for its duties, or the bells are not watched),
            // every tick; idle, asleep until the next duty is due (or what is counted in
            // memory comes due sooner), at most IDLE_SLEEP_MAX, never sooner than a tick
            // after the last. A bell between them brings a look that only asks whether the
            // database changed, and if so wakes the outbox.
            let busy = first || !bells.is_watched() || changed_since_full;
            let full_at = if busy {
                last_full + tick
            } else {
                let now = self.now_ms();
                let due_in = Duration::from_millis(self.next_duty_at(now).saturating_sub(now));
                last_full + due_in.clamp(tick, IDLE_SLEEP_MAX.max(tick))
            };
            let wake = watch_at.map_or(full_at, |at| full_at.min(at));
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.inner.rejections.sooner(), if !busy => {}
                _ = self.inner.liveness.sooner(), if !busy => {}
                _ = bells.written() => {}
            }
            let look = tokio::time::Instant::now();
            #[cfg(test)]
            self.inner.timers.looks.fetch_add(1, Ordering::Relaxed);
            let full = first || look >= last_full + tick;
            first = false;
            let now = self.now_ms();
            let watched_now = watch_at.is_some_and(|at| look >= at);
            if watched_now {
                watch_at = None;
                bells = CommitWatch::new(&db_path, own_bell.as_deref());
            }
            // (A commit between the last look and the new watch: this look reads the version.)
            let changed = if watched_now || bells.maybe_written() || last_version.is_none() {
                self.database_changed(&mut last_version).await
            } else {
                false
            };
            if !full {
                if changed {
                    // What another process queued goes out now; the duties of a change
                    // (its events, revocations, decisions) at the next full look, so that a
                    // process committing thousands of times a second does not bring them on
                    // each commit.
                    changed_since_full = true;
                    self.send_outbox_now();
                }
                continue;
            }
            last_full = look;
            let changed = changed || std::mem::take(&mut changed_since_full);
            let due = self.due_duties(now, changed);
            let timers = &self.inner.timers;
            let retry_due = timers.retry_at.load(Ordering::Relaxed) <= now;
            if !due.any() {
                if retry_due {
                    self.send_outbox_now();
                }
                continue;
            }
            let node = self.clone();
            let done = tokio::task::spawn_blocking(move || node.run_duties(now, &due)).await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("housekeeping failed: {e}"),
                Err(e) => tracing::error!("housekeeping task failed: {e}"),
            }
            if changed || retry_due {
                // Another process may have queued messages to send.
                self.send_outbox_now();
            }
        }
    }

    /// Wakes the outbox sender now (a retry came due, or another process queued messages);
    /// its next pass sets the retry timer again.
    fn send_outbox_now(&self) {
        self.inner
            .timers
            .retry_at
            .store(u64::MAX, Ordering::Relaxed);
        self.inner.wake_outbox.notify_one();
    }

    /// Whether another process committed to the database since the version `last` was read
    /// (SQLite's `data_version`; `last` becomes the version read now).
    async fn database_changed(&self, last: &mut Option<i64>) -> bool {
        // Read on this thread when the store is free; when it is busy, wait for it off the
        // async thread (skipping the look would delay what another process wrote, e.g. a
        // revocation, behind frames that arrive meanwhile).
        let quick = self.inner.store.try_lock().map(|s| s.data_version());
        let version = match quick {
            Some(v) => v,
            None => {
                let node = self.clone();
                tokio::task::spawn_blocking(move || lock(&node.inner.store).data_version())
                    .await
                    .unwrap_or_else(|e| Err(Error::internal(e.to_string())))
            }
        };
        match version {
            Ok(v) => last.replace(v) != Some(v),
            Err(e) => {
                tracing::warn!("cannot read the database version: {e}");
                true
            }
        }
    }

    /// When the next duty is due by what is known now (node clock): `now` when something
    /// waits in memory (rejections to record, keys to follow), else the earliest of the
    /// duties' timers (decisions, seen-id expiry, outbox retry, retention, held frames'
    /// expiry; counters and `last_seen` values when some wait).
    fn next_duty_at(&self, now: Millis) -> Millis {
        let timers = &self.inner.timers;
        let rejections = &self.inner.rejections;
        if rejections.rejections_pending() || self.behind_own_rotation() {
            return now;
        }
        let mut at = [&timers.decide_at, &timers.prune_at, &timers.retry_at]
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .min()
            .unwrap_or(u64::MAX)
            .min(self.inner.retention.next_run_at());
        if let Some(expiry) = self.inner.held.next_expiry() {
            at = at.min(expiry);
        }
        if !rejections.is_idle() {
            at = at.min(timers.counters_at.load(Ordering::Relaxed));
        }
        if self.inner.liveness.any_pending() {
            at = at.min(timers.liveness_at.load(Ordering::Relaxed));
        }
        at
    }

    /// The duties due at `now` (`changed`: another process wrote to the database).
    pub(super) fn due_duties(&self, now: Millis, changed: bool) -> Duties {
        let timers = &self.inner.timers;
        let held = self.inner.held.next_expiry().is_some_and(|at| at <= now);
        let rejections = &self.inner.rejections;
        let urgent = held || rejections.rejections_pending();
        Duties {
            changed,
            decide: timers.decide_at.load(Ordering::Relaxed) <= now,
            prune: timers.prune_at.load(Ordering::Relaxed) <= now,
            retention: self.inner.retention.next_run_at() <= now,
            rotation: self.behind_own_rotation(),
            rejections: urgent
                || (!rejections.is_idle() && timers.counters_at.load(Ordering::Relaxed) <= now),
            rejections_urgent: urgent,
            liveness: timers.liveness_at.load(Ordering::Relaxed) <= now
                && self.inner.liveness.any_pending(),
        }
    }

    /// Does the store work of the duties `due` at `now` (on a blocking thread).
    pub(super) fn run_duties(&self, now: Millis, due: &Duties) -> Result<()> {
        let node = self;
        // Each duty on its own: one failing (a busy or full disk) must not hold back
        // the others, e.g. held frames whose verdicts are due.
        if (due.changed || due.decide)
            && let Err(e) = node.issue_due_decisions()
        {
            tracing::warn!("cannot issue due decisions (retried in a second): {e}");
        }
        let timers = &node.inner.timers;
        if due.rejections {
            // After rejections, whatever was counted with them a moment later goes on the
            // next tick; routine counters alone wait.
            let wait = if due.rejections_urgent {
                0
            } else {
                u64::from(node.inner.config.network.counter_write_secs) * 1000
            };
            scheduled(&timers.counters_at, now.saturating_add(wait), || {
                node.flush_rejections()
                    .map_err(|e| format!("cannot record rejections (retried next tick): {e}"))
            });
        }
        if due.liveness {
            let every = node.hello_interval_ms();
            scheduled(&timers.liveness_at, now.saturating_add(every), || {
                node.write_liveness()
                    .map_err(|e| format!("cannot record when peers were last seen: {e}"))
            });
        }
        if due.retention
            && let Err(e) = node.inner.retention.run_if_due(&node.inner.store, now)
        {
            tracing::warn!("retention failed (retried in retention.interval_secs): {e}");
        }
        // Rotation chains of nodes this node forgot (evicted peers), on the same schedule.
        if due.retention
            && let Err(e) = node.inner.trust.prune_chains(&mut lock(&node.inner.store))
        {
            tracing::warn!("cannot prune rotation chains: {e}");
        }
        // Self-revocations of strangers past their cap (a peer that left the table turns its
        // own into one) and expired certificates, on the same schedule.
        if due.retention
            && let Err(e) = node
                .inner
                .trust
                .prune_revocations(&mut lock(&node.inner.store), now)
        {
            tracing::warn!("cannot prune revocations and certificates: {e}");
        }
        let mut store = lock(&node.inner.store);
        if due.prune {
            store.prune_seen(now)?;
            // The next expiry, but at least a second apart: expiries close together
            // are pruned together. With none stored, an id seen from now on expires
            // `store.seen_ttl_secs` from now at the earliest.
            let ttl_ms = node.inner.config.store.seen_ttl_secs.saturating_mul(1000);
            let next = store
                .next_seen_expiry()?
                .unwrap_or_else(|| now.saturating_add(ttl_ms));
            node.inner
                .timers
                .prune_at
                .store(next.max(now.saturating_add(1000)), Ordering::Relaxed);
        }
        if due.changed {
            // Revocations and rotations another process added (`crabnet trust
            // import`, `revoke`, `rotate`), events it recorded.
            node.inner.trust.refresh(&store)?;
            node.pump_events(&store, true);
        }
        drop(store);
        if due.changed || due.rotation {
            node.follow_own_rotation()?;
        }
        Ok(())
    }

    /// Appends new events to the NDJSON log. Several processes may share a data directory: a
    /// file lock serializes writers; the log's last line says what is written (the newest
    /// rotated file's when the current file is empty or gone: [`NdjsonLog::last_seq`]), and a
    /// cursor in the database says it when the files are gone (removed or moved away by
    /// hand). A last line this database never numbered belongs to another database's log (the
    /// database removed or restored from a backup, the log kept) and is not trusted. `last`:
    /// this node stops, write the cursor now.
    ///
    /// The store is locked only to read events and the cursor, never while the file is
    /// written and synced (received frames and API calls wait for the store). The cursor is a
    /// commit of its own (a sync under `store.sync = full`), so it is written at most every
    /// [`LOG_CURSOR_WRITE_MS`] and at stop: a file removed by hand after a crash in that window
    /// gets again the events of the window (without a crash, this process remembers what it
    /// appended). Returns whether the cursor was left behind (the
    /// log writer comes back for it).
    pub(super) fn write_log(&self, last: bool) -> Result<bool> {
        self.write_log_with(last, false)
    }

    /// [`Node::write_log`] at stop: the counters waiting in memory (and any rejection
    /// summary due) are written in the transaction of the cursor, drained under the same hold
    /// of the store, so that a stopping node's last commit is one. When the cursor does not
    /// move, they stay in memory.
    pub(super) fn write_log_at_stop(&self) -> Result<bool> {
        self.write_log_with(true, true)
    }

    fn write_log_with(&self, last: bool, with_counters: bool) -> Result<bool> {
        let Some(log) = &self.inner.log else {
            return Ok(false);
        };
        let lock_path = self.inner.config.data_dir.join("events.ndjson.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        file.lock()?;
        let (stored, issued) = {
            let store = lock(&self.inner.store);
            (store.log_cursor()?, store.last_event_seq_issued()?)
        };
        // The file may be ahead of the cursor (a process died between the two writes, or the
        // cursor waits for its next write); what this process appended is known even when
        // the file was moved away meanwhile (logrotate).
        let mut in_file = log.last_seq()?.unwrap_or(0);
        if in_file > issued {
            tracing::warn!(
                "the event log {} ends with event {in_file}, which this database never \
                 numbered (it has {issued}): a log of another database; this one's events \
                 are appended after it",
                log.path().display()
            );
            in_file = 0;
        }
        let mut cursor = stored.max(in_file).max(log.last_appended());
        loop {
            let events = lock(&self.inner.store).events_after(cursor, 1000)?;
            let Some(seq) = events.last().map(|e| e.seq) else {
                break;
            };
            log.append(&events)?;
            cursor = seq;
        }
        let timers = &self.inner.timers;
        let now = self.now_ms();
        let mut behind = cursor > stored;
        if behind && (last || timers.log_cursor_at.load(Ordering::Relaxed) <= now) {
            // The file first: the cursor never says more than the disk holds.
            log.sync()?;
            let mut store = lock(&self.inner.store);
            if with_counters {
                // Drained and written under one hold of the store, as the overview reads both.
                let (counters, events) = self.inner.rejections.drain(now);
                let written = store.add_counters_with_cursor(now, &counters, events, Some(cursor));
                if written.is_err() {
                    self.inner.rejections.restore(counters);
                }
                self.pump_events(&store, false);
                written?;
            } else {
                store.set_log_cursor(cursor)?;
            }
            drop(store);
            timers
                .log_cursor_at
                .store(now.saturating_add(LOG_CURSOR_WRITE_MS), Ordering::Relaxed);
            behind = false;
        }
        file.unlock()?;
        Ok(behind)
    }

    /// Writes the event log when there are new events, and its cursor when that was left
    /// behind ([`Node::write_log`]): at most once per [`LOG_WRITE_GAP`], so that the events of
    /// a steady stream of commits (a received seed each, say) are appended together.
    pub(super) async fn log_writer(self, mut shutdown: watch::Receiver<bool>) {
        let mut behind = false;
        let mut last_write: Option<tokio::time::Instant> = None;
        loop {
            // Only polled while the cursor is behind.
            let at = self.inner.timers.log_cursor_at.load(Ordering::Relaxed);
            let cursor_due = Duration::from_millis(at.saturating_sub(self.now_ms()));
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.inner.wake_log.notified() => {}
                _ = tokio::time::sleep(cursor_due), if behind => {}
            }
            if let Some(at) = last_write {
                // (At stop, the node writes what is left itself.)
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep_until(at + LOG_WRITE_GAP) => {}
                }
            }
            last_write = Some(tokio::time::Instant::now());
            #[cfg(test)]
            self.inner.timers.log_writes.fetch_add(1, Ordering::Relaxed);
            let node = self.clone();
            let work = move || node.write_log(false);
            behind = background_blocking("cannot write the event log", "event log", work)
                .await
                .unwrap_or(false);
        }
    }
}

/// Sets a duty's next run to `next`, then runs it; a failure is logged.
fn scheduled(
    at: &std::sync::atomic::AtomicU64,
    next: Millis,
    run: impl FnOnce() -> std::result::Result<(), String>,
) {
    at.store(next, Ordering::Relaxed);
    if let Err(e) = run() {
        tracing::warn!("{e}");
    }
}

/// Which housekeeping duties are due (see [`Node::housekeeping`]).
pub(super) struct Duties {
    changed: bool,
    decide: bool,
    prune: bool,
    retention: bool,
    rotation: bool,
    rejections: bool,
    /// Rejections or held frames are due (not only counters).
    rejections_urgent: bool,
    liveness: bool,
}

/// The least time between two writes of the event log: each is a lock, a few opens and store
/// reads on a blocking thread, and a node receiving seeds one by one wrote after each.
const LOG_WRITE_GAP: Duration = Duration::from_millis(100);

/// How long the event log's cursor waits to be written after the log (ms): the cursor is a
/// commit of its own. (Routine counters wait `network.counter_write_secs`, 30 s by default:
/// in an idle network every node receives hellos all the time, and 5 s made their writes a
/// commit every 5 s per idle node.)
pub(super) const LOG_CURSOR_WRITE_MS: u64 = 5_000;

/// How long a node without a network runs before its housekeeping watches the bells of the
/// other stores on its database ([`CommitWatch`]); until then it looks every tick. A
/// short-lived node (a CLI command) so opens no watch: closing one cost such a process 8 ms
/// (the kernel waits for the watch's marks to be destroyed), which doubled a `crabnet status`
/// beside a listener. A node with a network watches from its first look: a listener started
/// a moment ago hears a CLI's commit at once.
const WATCH_AFTER: Duration = Duration::from_secs(1);

/// The longest an idle node's housekeeping sleeps when no duty is due sooner. What is counted
/// in memory meanwhile wakes it ([`crate::ingress::Rejections::sooner`],
/// [`super::liveness::Liveness::sooner`]); so do other stores' commits, while their bells
/// are watched ([`CommitWatch`]). This bounds what nothing wakes
/// it for (it looked every 4 ticks, a second by default, before: a quarter of an idle node's
/// wake-ups).
const IDLE_SLEEP_MAX: Duration = Duration::from_secs(10);

impl Duties {
    /// Whether any store work is due.
    pub(super) fn any(&self) -> bool {
        self.changed
            || self.decide
            || self.prune
            || self.rejections
            || self.retention
            || self.rotation
            || self.liveness
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The config of a node in `dir` without a network whose housekeeping ticks every 20 ms.
    fn ticking_config(dir: &tempfile::TempDir) -> Config {
        let mut config = Config::with_data_dir(dir.path().join("node"));
        config.network.tick_ms = 20;
        config
    }

    /// A node without a network (a CLI command's) stops with one commit: the counters its
    /// operation left in memory are written with the event log's cursor; with the log off,
    /// they are its one commit. Before, the counters and the cursor were a commit each (each
    /// an fsync, and a ring of the bell that wakes a node listening on the directory).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_without_a_network_stops_with_one_commit() {
        for log in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut config = Config::with_data_dir(dir.path().join("node"));
            config.events.log_enabled = log;
            let node = Node::start(config).await.unwrap();
            // The log writer's first cursor write waits 5 s after the start; held off here so
            // that a slow machine cannot bring it inside the window measured.
            node.inner
                .timers
                .log_cursor_at
                .store(u64::MAX, Ordering::Relaxed);
            node.publish(crate::node::PublishRequest::new("true"))
                .await
                .unwrap();
            let before = lock(&node.inner.store).commits();
            node.stop().await.unwrap();
            let store = lock(&node.inner.store);
            assert_eq!(store.commits() - before, 1, "log {log}");
            assert_eq!(store.counters().unwrap().get("local.groups"), Some(&1));
            let last = store.last_event_seq().unwrap();
            assert_eq!(store.log_cursor().unwrap(), if log { last } else { 0 });
        }
    }

    /// A node without a network whose housekeeping ticks every 20 ms.
    async fn idle_node() -> (tempfile::TempDir, Node) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ticking_config(&dir);
        config.events.log_enabled = false;
        (dir, Node::start(config).await.unwrap())
    }

    /// How many times the node's housekeeping woke so far.
    fn looks(node: &Node) -> u64 {
        node.inner.timers.looks.load(Ordering::Relaxed)
    }

    /// How many times housekeeping wakes in each of three windows of a second.
    async fn looks_per_second(node: &Node) -> Vec<u64> {
        let mut counts = Vec::new();
        for _ in 0..3 {
            let before = looks(node);
            tokio::time::sleep(Duration::from_secs(1)).await;
            counts.push(looks(node) - before);
        }
        counts
    }

    /// An idle node's housekeeping sleeps until a duty is due: nothing counted in memory,
    /// nothing due, no commit. Before, it looked every 4 ticks (12 times a second here, once a
    /// second with the default tick), a quarter of an idle node's wake-ups.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_node_does_not_look_while_nothing_is_due() {
        let (_dir, node) = idle_node().await;
        // One window at least is past the node's first second (looking every tick until
        // it watches the other stores' bells).
        let counts = looks_per_second(&node).await;
        assert!(
            counts.iter().min().is_some_and(|n| *n <= 1),
            "looks per second while idle: {counts:?}"
        );
        node.stop().await.unwrap();
    }

    /// Returns once housekeeping slept through 300 ms (no look).
    async fn wait_asleep(node: &Node) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let before = looks(node);
            tokio::time::sleep(Duration::from_millis(300)).await;
            if looks(node) == before {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "never asleep");
        }
    }

    /// An idle node ([`idle_node`]) whose housekeeping sleeps ([`wait_asleep`]).
    async fn asleep_node() -> (tempfile::TempDir, Node) {
        let (dir, node) = idle_node().await;
        wait_asleep(&node).await;
        (dir, node)
    }

    /// Polls `done` every 10 ms, for up to 5 s after `start`; returns the time since `start`.
    async fn time_until(start: tokio::time::Instant, done: impl Fn() -> bool) -> Duration {
        while !done() && start.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        start.elapsed()
    }

    /// The stored value of counter `name` (0 when it was never written).
    fn stored_counter(node: &Node, name: &str) -> u64 {
        let counters = lock(&node.inner.store).counters().unwrap();
        counters.get(name).copied().unwrap_or(0)
    }

    /// Routine counters (a healthy network's: unchanged hellos, sync upkeep) counted all the
    /// time, as an idle node in a network counts the hellos it receives, are written at most
    /// once per `network.counter_write_secs`, the first time too: each write is a commit.
    /// Before, every 5 s, and the first one at once (a CLI command's counters were a commit of
    /// their own).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn routine_counters_counted_all_the_time_are_written_twice_a_minute() {
        let (_dir, node) = idle_node().await;
        let first = tokio::time::Instant::now();
        // One every 100 ms for 6 s.
        let mut more = 0;
        while first.elapsed() < Duration::from_secs(6) {
            node.inner.rejections.count("hellos.refreshed");
            more += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            stored_counter(&node, "hellos.refreshed"),
            0,
            "routine counters were written within 6 s"
        );
        // The overview has them all the same.
        let overview = node.overview().await.unwrap();
        assert_eq!(overview.counters["hellos.refreshed"], more);
        node.stop().await.unwrap();
    }

    /// A `last_seen` noted in memory (an unchanged hello) while housekeeping sleeps until the
    /// next routine counter write wakes it when that value is due sooner: it is written on
    /// time, not up to `network.counter_write_secs` late.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_last_seen_noted_while_housekeeping_sleeps_is_written_when_due() {
        let (_dir, node) = idle_node().await;
        // A routine counter waits: housekeeping sleeps until its write, 30 s away.
        node.inner.rejections.count("hellos.refreshed");
        wait_asleep(&node).await;
        // The value is taken to be written (a peer unknown to the store: nothing to update).
        let peer = crate::model::NodeId::from_bytes([7; 32]);
        node.inner.liveness.stored(&peer, b"hello");
        let noted = tokio::time::Instant::now();
        node.inner.liveness.seen(&peer, node.now_ms());
        let took = time_until(noted, || !node.inner.liveness.any_pending()).await;
        assert!(
            took < Duration::from_secs(2),
            "the last_seen was written {took:?} after it was noted"
        );
        node.stop().await.unwrap();
    }

    /// What is counted in memory while housekeeping sleeps wakes it: a rejection is written
    /// within a few ticks, not at the end of the longest sleep.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rejection_counted_while_housekeeping_sleeps_is_written_at_once() {
        // Asleep, then a rejection comes in.
        let (_dir, node) = asleep_node().await;
        let rejection = crate::ingress::Rejection::new(
            "memory:peer",
            None,
            crate::monitor::RejectReason::Malformed,
            "test".into(),
        );
        let counted = tokio::time::Instant::now();
        node.inner.rejections.note(rejection, node.now_ms());
        let written = || stored_counter(&node, "rejected.malformed") > 0;
        let took = time_until(counted, written).await;
        assert!(
            took < IDLE_SLEEP_MAX / 4,
            "the rejection was written {took:?} after it was counted"
        );
        node.stop().await.unwrap();
    }

    /// The node's own commits do not wake its housekeeping. Before, a write to the database's
    /// log (whoever made it) brought quick looks at 1, 2, 4 ... 128 ms, waiting for a commit
    /// of another process to become visible: eight looks for each of its own commits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_nodes_own_commits_do_not_wake_its_housekeeping() {
        let (_dir, node) = asleep_node().await;
        let before = looks(&node);
        // 40 commits over 2 s.
        for n in 1..=40 {
            lock(&node.inner.store).set_log_cursor(n).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let looks = looks(&node) - before;
        assert!(
            looks <= 2,
            "{looks} looks after 40 of the node's own commits"
        );
        node.stop().await.unwrap();
    }

    /// Another store on the same database (a CLI command beside `crabnet listen`) is heard at
    /// once: an event it records reaches the node's subscribers within a tick or so, not at
    /// the end of the longest sleep.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_stores_commit_is_heard_at_once() {
        let (_dir, node) = idle_node().await;
        let mut events = node.subscribe();
        let open = || {
            crate::store::Store::open(
                &node.inner.config.db_path(),
                &crate::store::StoreConfig::default(),
            )
            .unwrap()
        };
        // Opened before the node watches the bells (its first second), then one opened after.
        let mut other = open();
        for round in 0..4 {
            wait_asleep(&node).await;
            if round == 2 {
                other = open();
                wait_asleep(&node).await;
            }
            let committed = tokio::time::Instant::now();
            let peer = crate::model::NodeId::from_bytes([round; 32]);
            other
                .record_event(
                    node.now_ms(),
                    crate::monitor::EventKind::NodeStarted {
                        node_id: peer.clone(),
                        transport: None,
                    },
                )
                .unwrap();
            loop {
                let left = Duration::from_secs(5).saturating_sub(committed.elapsed());
                let event = tokio::time::timeout(left, events.recv())
                    .await
                    .expect("the other store's event never came")
                    .unwrap();
                if matches!(&event.kind, crate::monitor::EventKind::NodeStarted { node_id, .. } if *node_id == peer)
                {
                    break;
                }
            }
            let took = committed.elapsed();
            assert!(
                took < IDLE_SLEEP_MAX / 4,
                "round {round}: the other store's commit was seen after {took:?}"
            );
        }
        node.stop().await.unwrap();
    }

    /// The event log is written at most once per LOG_WRITE_GAP: a node committing events all
    /// the time (a seed received every 10 ms, say) appends them together. Before, it wrote
    /// after each commit: a lock, opens and store reads on a blocking thread each time. Every
    /// event still reaches the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_event_log_gathers_the_events_of_a_stream_of_commits() {
        let dir = tempfile::tempdir().unwrap();
        let config = ticking_config(&dir);
        let log = config.event_log_path();
        let node = Node::start(config).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let writes = || node.inner.timers.log_writes.load(Ordering::Relaxed);
        let before = writes();
        let started = tokio::time::Instant::now();
        for n in 0..100u8 {
            node.with_store(|s| {
                s.record_event(
                    node.now_ms(),
                    crate::monitor::EventKind::NodeStarted {
                        node_id: crate::model::NodeId::from_bytes([n; 32]),
                        transport: None,
                    },
                )
            })
            .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let written = writes() - before;
        let took = started.elapsed();
        // One per gap, and a few more at the edges (on a slow machine the commits spread).
        let most = (took.as_millis() / LOG_WRITE_GAP.as_millis()) as u64 + 3;
        assert!(
            written <= most,
            "{written} writes of the log for 100 commits over {took:?}"
        );
        node.stop().await.unwrap();
        let lines = std::fs::read_to_string(&log).unwrap();
        for n in 0..100u8 {
            let id = crate::model::NodeId::from_bytes([n; 32]).to_string();
            assert!(lines.contains(&id), "event {n} is not in the log");
        }
    }
}
