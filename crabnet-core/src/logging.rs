//! Logs for hosts: the node's `tracing` events, filtered by `CRABNET_LOG`, forwarded to a
//! callback of the embedding program (the C ABI's log callback, Python's `logging`).
//!
//! The node reports conditions an operator should see (a task run without a sandbox, a peer
//! that cannot be dialled, a store that fails) as `tracing` events. The `crabnet` CLI prints
//! them to stderr; an embedding program installs a *sink* with [`set_sink`] and receives each
//! event as a [`Record`]: level, target and the formatted message with its fields.
//!
//! - **Filter.** The `CRABNET_LOG` environment variable, an [`EnvFilter`] directive string
//!   (`warn`, `crabnet_core=debug,libp2p=info`, ...), decides which events are forwarded; when
//!   it is unset or empty, the level given to [`set_sink`] does. An invalid value is ignored
//!   (with a warning through the sink). [`env_filter`] is the one place that reads it, for the
//!   CLI too.
//! - **Never blocking the node.** Events go through a bounded queue ([`QUEUE_CAPACITY`]
//!   records) to one thread owned by this module (`crabnet-log`), which calls the sink. A full
//!   queue drops the record and counts it ([`dropped_records`]); the sink then receives a
//!   warning saying how many were dropped. Messages longer than [`MAX_MESSAGE_BYTES`] are cut.
//!   A slow or blocked sink therefore delays only other log records, never network or store
//!   work.
//! - **Once per process, any number of times.** A process has one global `tracing`
//!   subscriber: the first [`set_sink`] installs this module's (and fails if the program
//!   installed another one); later calls swap the sink and the filter. [`remove_sink`] stops
//!   forwarding and ends the thread.
//! - **No secrets.** Records carry only what the node's events say, and the node never puts
//!   key material, tokens or task output in an event.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::error::{Error, ErrorKind, Result};
use crate::lock;

/// A record's level (re-exported from `tracing`).
pub use tracing::Level;
/// The most verbose level a sink receives (re-exported from `tracing`).
pub use tracing::level_filters::LevelFilter;

/// The environment variable holding the log filter (an [`EnvFilter`] directive string).
pub const ENV_VAR: &str = "CRABNET_LOG";

/// How many records wait for the sink at most; more are dropped and counted.
pub const QUEUE_CAPACITY: usize = 1024;

/// The longest message forwarded, in bytes; longer ones are cut at a character boundary and
/// end with `" [...]"`.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024;

/// The target of the records this module itself produces (dropped records, invalid filter).
const OWN_TARGET: &str = "crabnet_core::logging";

/// One log event, as a sink receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The event's level.
    pub level: Level,
    /// Where it comes from: a Rust module path such as `crabnet_core::node`.
    pub target: String,
    /// The message followed by the event's other fields as ` key=value`.
    pub message: String,
}

impl Record {
    /// The target as a dotted name under `crabnet`, for hosts with hierarchical logger names
    /// (Python's `logging`): `crabnet_core::node` becomes `crabnet.core.node`, a dependency's
    /// `libp2p_swarm` becomes `crabnet.libp2p_swarm`.
    pub fn logger_name(&self) -> String {
        let dotted = self.target.replace("::", ".");
        match dotted.strip_prefix("crabnet_") {
            Some(rest) => format!("crabnet.{rest}"),
            None if dotted == "crabnet" || dotted.starts_with("crabnet.") => dotted,
            None => format!("crabnet.{dotted}"),
        }
    }

    fn own(level: Level, message: String) -> Record {
        Record {
            level,
            target: OWN_TARGET.to_owned(),
            message,
        }
    }

    fn from_event(event: &Event<'_>) -> Record {
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        let mut message = visitor.message;
        if !visitor.fields.is_empty() {
            if !message.is_empty() {
                message.push(' ');
            }
            message.push_str(&visitor.fields);
        }
        truncate(&mut message);
        Record {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            message,
        }
    }
}

fn truncate(message: &mut String) {
    const MARK: &str = " [...]";
    if message.len() <= MAX_MESSAGE_BYTES {
        return;
    }
    let mut end = MAX_MESSAGE_BYTES - MARK.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(MARK);
}

/// Collects an event's `message` and its other fields (` key=value`, like the CLI prints).
#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl MessageVisitor {
    fn push_field(&mut self, field: &Field, value: std::fmt::Arguments<'_>) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = self.message.write_fmt(value);
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={}", field.name(), value);
        }
    }
}

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push_field(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push_field(field, format_args!("{value:?}"));
    }
}

/// Reads `CRABNET_LOG`: the filter it names, or `default` when it is unset or empty. When it
/// is set but invalid, the filter is `default` and the second value says why, for a warning
/// once a subscriber is installed. The CLI and [`set_sink`] both use this.
pub fn env_filter(default: LevelFilter) -> (EnvFilter, Option<String>) {
    let value = std::env::var_os(ENV_VAR);
    match value.as_ref().map(|v| v.to_str()) {
        None => parse_filter(None, default),
        Some(Some(text)) => parse_filter(Some(text), default),
        Some(None) => (
            fallback(default),
            Some(format!("{ENV_VAR} is not valid UTF-8; using {default}")),
        ),
    }
}

fn fallback(default: LevelFilter) -> EnvFilter {
    EnvFilter::default().add_directive(default.into())
}

fn parse_filter(value: Option<&str>, default: LevelFilter) -> (EnvFilter, Option<String>) {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => (fallback(default), None),
        Some(text) => match EnvFilter::builder().parse(text) {
            Ok(filter) => (filter, None),
            Err(e) => (
                fallback(default),
                Some(format!(
                    "{ENV_VAR}={text:?} is invalid ({e}); using {default}"
                )),
            ),
        },
    }
}

/// What a sink is: called on the `crabnet-log` thread, one record at a time.
type Sink = Arc<dyn Fn(&Record) + Send + Sync>;

/// The process-wide forwarding state.
struct Hub {
    state: Mutex<State>,
    /// Signalled when a sink call ends.
    idle: Condvar,
    /// The queue's sending side while a worker runs; locked only around `try_send`.
    sender: Mutex<Option<SyncSender<Record>>>,
    dropped: AtomicU64,
}

struct State {
    sink: Option<Sink>,
    worker: Option<Worker>,
    /// Sink calls in progress.
    calling: u32,
    next_worker: u64,
}

struct Worker {
    id: u64,
    thread: JoinHandle<()>,
}

static HUB: Hub = Hub {
    state: Mutex::new(State {
        sink: None,
        worker: None,
        calling: 0,
        next_worker: 1,
    }),
    idle: Condvar::new(),
    sender: Mutex::new(None),
    dropped: AtomicU64::new(0),
};

thread_local! {
    /// The id of the worker this thread is (0: not a worker).
    static WORKER_ID: Cell<u64> = const { Cell::new(0) };
}

fn worker_id() -> u64 {
    WORKER_ID.try_with(Cell::get).unwrap_or(0)
}

/// The handle that swaps the installed subscriber's filter.
type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// The global subscriber's filter handle, or why it could not be installed.
static INSTALLED: OnceLock<std::result::Result<FilterHandle, String>> = OnceLock::new();

/// Installs the global subscriber on first use; the error says why it could not be.
fn subscriber() -> Result<&'static FilterHandle> {
    INSTALLED
        .get_or_init(|| {
            let (filter, handle) = reload::Layer::new(EnvFilter::new("off"));
            let subscriber = tracing_subscriber::registry().with(HostLayer.with_filter(filter));
            tracing::subscriber::set_global_default(subscriber)
                .map(|()| handle)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| {
            Error::new(
                ErrorKind::Busy,
                format!(
                    "cannot forward logs: another tracing subscriber is installed in this \
                     process ({e}); its output is where Crabnet's logs go"
                ),
            )
        })
}

/// The layer of the global subscriber: queues every event its filter lets through.
struct HostLayer;

impl<S: Subscriber> Layer<S> for HostLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        queue(Record::from_event(event));
    }
}

fn queue(record: Record) {
    let sender = lock(&HUB.sender);
    if let Some(tx) = sender.as_ref()
        && let Err(TrySendError::Full(_)) = tx.try_send(record)
    {
        HUB.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Forwards every log event that passes the filter to `sink`, from now on until the next
/// [`set_sink`] or [`remove_sink`].
///
/// `max_level` is the most verbose level forwarded when `CRABNET_LOG` is unset or empty
/// (usually [`LevelFilter::WARN`]); when it is set, `CRABNET_LOG` alone decides. The sink runs
/// on the `crabnet-log` thread, one record at a time; a panic in it is caught. Calling this
/// again replaces the sink (and re-reads `CRABNET_LOG`); when it returns, the previous sink is
/// not running and will not be called again, except when this is called from inside that
/// sink.
///
/// Errors: [`ErrorKind::Busy`] when the program installed its own global `tracing`
/// subscriber (then its output gets Crabnet's events), [`ErrorKind::Io`] when the thread
/// cannot be started.
pub fn set_sink(
    max_level: LevelFilter,
    sink: impl Fn(&Record) + Send + Sync + 'static,
) -> Result<()> {
    let handle = subscriber()?;
    let (filter, invalid) = env_filter(max_level);
    let mut state = lock(&HUB.state);
    if state.worker.is_none() {
        let id = state.next_worker;
        state.next_worker += 1;
        let (tx, rx) = sync_channel(QUEUE_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("crabnet-log".into())
            .spawn(move || run_worker(id, rx))
            .map_err(|e| Error::with_source(ErrorKind::Io, "cannot start the log thread", e))?;
        *lock(&HUB.sender) = Some(tx);
        state.worker = Some(Worker { id, thread });
    }
    let old = state.sink.replace(Arc::new(sink));
    let state = wait_idle(state);
    drop(state);
    drop(old);
    handle
        .reload(filter)
        .map_err(|e| Error::with_source(ErrorKind::Internal, "cannot set the log filter", e))?;
    if let Some(why) = invalid {
        tracing::warn!(target: OWN_TARGET, "{why}");
    }
    Ok(())
}

/// Stops forwarding: records not delivered yet are discarded, the `crabnet-log` thread ends
/// and, when this returns, the sink is not running and will not be called again (unless this
/// is called from inside the sink, which then simply returns first). Does nothing when no
/// sink is installed.
pub fn remove_sink() {
    let mut state = lock(&HUB.state);
    let old = state.sink.take();
    let worker = state.worker.take();
    // Closes the queue: the worker drains it (discarding) and ends.
    *lock(&HUB.sender) = None;
    let state = wait_idle(state);
    drop(state);
    drop(old);
    if let Some(Ok(handle)) = INSTALLED.get() {
        // Nothing is forwarded: let every callsite be disabled again.
        let _ = handle.reload(EnvFilter::new("off"));
    }
    if let Some(worker) = worker
        && worker.id != worker_id()
    {
        let _ = worker.thread.join();
    }
}

/// How many records were dropped since the process started because the queue to the sink was
/// full (a sink slower than the node's logging).
pub fn dropped_records() -> u64 {
    HUB.dropped.load(Ordering::Relaxed)
}

/// Waits until no sink call is in progress, unless the caller is a worker (a sink calling
/// [`set_sink`] or [`remove_sink`]), which must not wait for itself.
fn wait_idle(mut state: MutexGuard<'_, State>) -> MutexGuard<'_, State> {
    if worker_id() != 0 {
        return state;
    }
    while state.calling > 0 {
        state = HUB.idle.wait(state).unwrap_or_else(|p| p.into_inner());
    }
    state
}

fn run_worker(id: u64, rx: Receiver<Record>) {
    let _ = WORKER_ID.try_with(|w| w.set(id));
    let mut reported = HUB.dropped.load(Ordering::Relaxed);
    while let Ok(record) = rx.recv() {
        let dropped = HUB.dropped.load(Ordering::Relaxed);
        if dropped > reported {
            let notice = Record::own(
                Level::WARN,
                format!(
                    "{} log records dropped: the log callback is slower than the node's \
                     logging",
                    dropped - reported
                ),
            );
            reported = dropped;
            deliver(id, &notice);
        }
        deliver(id, &record);
    }
}

/// Calls the sink with `record` if worker `id` is still the current one.
fn deliver(id: u64, record: &Record) {
    let sink = {
        let mut state = lock(&HUB.state);
        if state.worker.as_ref().map(|w| w.id) != Some(id) {
            return;
        }
        let Some(sink) = state.sink.clone() else {
            return;
        };
        state.calling += 1;
        sink
    };
    // A panicking sink loses its record, not the thread (and not the waiters).
    let _ = catch_unwind(AssertUnwindSafe(|| sink(record)));
    drop(sink);
    lock(&HUB.state).calling -= 1;
    HUB.idle.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(target: &str) -> Record {
        Record {
            level: Level::WARN,
            target: target.to_owned(),
            message: String::new(),
        }
    }

    #[test]
    fn logger_names_are_under_crabnet() {
        assert_eq!(
            record("crabnet_core::node").logger_name(),
            "crabnet.core.node"
        );
        assert_eq!(record("crabnet_ffi").logger_name(), "crabnet.ffi");
        assert_eq!(record("crabnet").logger_name(), "crabnet");
        assert_eq!(
            record("libp2p_swarm::connection").logger_name(),
            "crabnet.libp2p_swarm.connection"
        );
    }

    #[test]
    fn filter_strings() {
        let (f, why) = parse_filter(None, LevelFilter::WARN);
        assert_eq!(f.max_level_hint(), Some(LevelFilter::WARN));
        assert!(why.is_none());
        let (f, why) = parse_filter(Some("  "), LevelFilter::ERROR);
        assert_eq!(f.max_level_hint(), Some(LevelFilter::ERROR));
        assert!(why.is_none());
        let (f, why) = parse_filter(Some("crabnet_core=debug"), LevelFilter::WARN);
        assert_eq!(f.max_level_hint(), Some(LevelFilter::DEBUG));
        assert!(why.is_none());
        let (f, why) = parse_filter(Some("crabnet_core=loud"), LevelFilter::WARN);
        assert_eq!(f.max_level_hint(), Some(LevelFilter::WARN));
        assert!(why.unwrap().contains("CRABNET_LOG"));
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let mut m = "é".repeat(MAX_MESSAGE_BYTES);
        truncate(&mut m);
        assert!(m.len() <= MAX_MESSAGE_BYTES);
        assert!(m.ends_with(" [...]"));
        let mut short = "short".to_owned();
        truncate(&mut short);
        assert_eq!(short, "short");
    }
}
