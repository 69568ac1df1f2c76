//! The embeddable node: the one handle that the CLI, the C ABI and the Python module wrap.
//!
//! A [`Node`] owns its store, its event bus and (optionally) a transport. Local operations
//! (`publish`, `bid`, `claim`, `run`, `settle`, `cancel`) validate against the seed's current
//! state and commit the message, its events and its outbox row in one transaction; background
//! tasks send the outbox, apply received messages, close bidding on seeds this node published
//! when it is due, and append events to the NDJSON log.
//!
//! Shutdown order ([`Node::stop`]): refuse new operations, let runs in progress finish within
//! `runner.stop_grace_ms` or kill them and record them as interrupted (see `node/runs.rs`),
//! signal the background tasks and wait for them (the network task sends what is due first),
//! record `node_stopped`, deliver the last events to subscribers and the log, then release the
//! data-directory lock.
//!
//! Layout: this file holds the handle, start and stop; `node/operations.rs` the API operations
//! and the local commit path; `node/receive.rs` the trust boundary every received frame
//! crosses; `node/batch.rs` how frames that arrive together are verified in parallel and
//! applied in one transaction; `node/group.rs` how the API's concurrent local operations
//! are committed together; `node/network_loop.rs` receiving, the outbox and announcements;
//! `node/decisions.rs` what this node owes as a publisher; `node/housekeeping.rs` the timers and
//! the event log; `node/keys.rs` key rotation; `node/runs.rs` running claimed seeds.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::identity::Identity;
use crate::ingress;
use crate::model::{Deadlines, Millis, NodeId, SandboxLevel, SeedStatus};
use crate::monitor::{EventBus, EventKind, NdjsonLog, Subscription};
use crate::network::{self, Transport};
use crate::sandbox::{SandboxPolicy, SandboxStatus};
use crate::store::{SharedStore, Store};
use crate::trust;

pub use driven::Driven;
use receive::{RECENT_FRAMES, SYNC_REQUESTERS};

#[cfg(test)]
mod admission_tests;
mod alerting;
mod batch;
mod decisions;
mod driven;
mod group;
mod hello_answers;
mod housekeeping;
mod keys;
mod liveness;
mod network_loop;
mod operations;
mod receive;
mod reconcile;
mod runs;

/// What to publish. `Default` gives a usable seed apart from the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishRequest {
    /// Shell command to run.
    pub command: String,
    /// Description for humans.
    pub description: String,
    /// Lowest acceptable price.
    pub min_price: u64,
    /// Highest acceptable price.
    pub max_price: u64,
    /// Bid window in seconds.
    pub bid_window_secs: u64,
    /// Bidding closes early once this many bids arrived.
    pub max_bids: u32,
    /// Run timeout in seconds.
    pub timeout_secs: u64,
    /// Make the seed private to these nodes (and the publisher): every message about it is
    /// encrypted to them. Their hellos must have been received. Empty: public.
    pub private_to: Vec<NodeId>,
    /// The command needs network access: only nodes whose `runner.allow_network` is set bid.
    pub network: bool,
    /// The strongest sandbox the command works under (default `full`); see
    /// [`crate::model::Seed::isolation`].
    pub isolation: SandboxLevel,
    /// Claim window, result grace and settlement window (see [`Deadlines`]; each 1 s to 30
    /// days).
    pub deadlines: Deadlines,
    /// Run the command on several nodes and complete on a quorum of agreeing results (see
    /// [`crate::model::Replication`]); `None`: one runner. A replicated seed follows rules 3,
    /// which nodes of earlier versions refuse.
    pub replication: Option<crate::model::Replication>,
}

impl Default for PublishRequest {
    fn default() -> Self {
        PublishRequest {
            command: String::new(),
            description: String::new(),
            min_price: 1,
            max_price: 100,
            bid_window_secs: 30,
            max_bids: 5,
            timeout_secs: 60,
            private_to: Vec::new(),
            network: false,
            isolation: SandboxLevel::Full,
            deadlines: Deadlines::default(),
            replication: None,
        }
    }
}

impl PublishRequest {
    /// A request for `command` with default terms.
    pub fn new(command: impl Into<String>) -> Self {
        PublishRequest {
            command: command.into(),
            ..Self::default()
        }
    }
}

/// A peer as shown to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PeerInfo {
    /// Its node id.
    pub node_id: NodeId,
    /// Its name.
    pub name: String,
    /// Its announced addresses.
    pub addresses: Vec<String>,
    /// Fingerprint of its keys (the first 16 hex digits of its self-certifying id).
    pub fingerprint: String,
    /// Its key epoch.
    pub key_epoch: u32,
    /// First hello (Unix ms).
    pub first_seen: Millis,
    /// Latest hello (Unix ms).
    pub last_seen: Millis,
    /// What the signed messages this node holds say about the peer as a runner (results it
    /// reported, agreed with or dissented from, settlements); never the peer's own claims.
    #[serde(default)]
    #[schema(required)]
    pub reputation: crate::reputation::Reputation,
}

/// A summary of the node's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Overview {
    /// This node's id.
    pub node_id: NodeId,
    /// This node's name.
    pub name: String,
    /// The data directory.
    pub data_dir: String,
    /// The transport in use, if any.
    #[schema(required)]
    pub transport: Option<String>,
    /// Number of seeds per status.
    pub seeds_by_status: std::collections::BTreeMap<SeedStatus, u64>,
    /// Messages waiting to be sent.
    pub outbox_pending: u64,
    /// Counters: accepted, deferred, sent, rejected by reason.
    pub counters: std::collections::BTreeMap<String, u64>,
    /// Sequence number of the latest event.
    pub last_event_seq: u64,
    /// Sequence number of the last event pruned by the bound on the durable log (0 when none
    /// was): a reader whose cursor is below it has missed events.
    pub events_pruned_through: u64,
    /// Digest of the whole seed state (equal on converged replicas running one version; its
    /// value changed with schema version 14).
    pub state_digest: String,
    /// Number of peers with a verified hello.
    pub peers: u64,
    /// Where peers reach this node (transport addresses).
    pub addresses: Vec<String>,
    /// The sandbox this node builds around tasks it runs.
    pub sandbox: SandboxStatus,
}

struct Inner {
    id: NodeId,
    addresses: Mutex<Vec<String>>,
    /// The current keys; replaced when the node rotates them ([`Node::rotate_keys`]).
    identity: std::sync::RwLock<Arc<Identity>>,
    /// The keys replaced by the latest rotation, to open envelopes peers sealed to them
    /// before they learned of it.
    previous: std::sync::RwLock<Option<Arc<Identity>>>,
    /// Set when `hello_answers` has entries.
    hello_wanted: Notify,
    /// New peers waiting for our hello, and the limits on answering them.
    hello_answers: hello_answers::HelloAnswers,
    /// Set when the hello changed (the keys rotated): it is broadcast again at once.
    hello_changed: Notify,
    /// The current interval between periodic hellos, in ms ([`Node::hello_interval`]).
    hello_every_ms: AtomicU64,
    sync_wanted: Notify,
    config: Config,
    store: SharedStore,
    bus: EventBus,
    log: Option<NdjsonLog>,
    transport_name: Option<String>,
    /// The last event published to the bus, and the store's count of changed rows then
    /// ([`Node::pump_events`]).
    published: Mutex<Pumped>,
    stopped: AtomicBool,
    shutdown: watch::Sender<bool>,
    wake_outbox: Notify,
    wake_log: Notify,
    rejections: ingress::Rejections,
    gate: ingress::Gate,
    sync_credit: crate::ratelimit::Credits,
    /// Bytes of `sync_batch` envelopes the answers to the frames being received may still
    /// carry, over all their sources ([`reconcile::BATCH_ANSWER_BYTES`] per batch), an equal
    /// share each.
    answer_room: Mutex<reconcile::AnswerRoom>,
    /// The stored messages as reconciliation items, rebuilt when the store changed.
    sync_index: reconcile::IndexCache,
    recent: ingress::RecentFrames,
    /// Signatures verified in parallel for the batch being applied (see `node/batch.rs`).
    verified: ingress::PreVerified,
    /// Verdicts on released frames, given once the batch that applied them is committed.
    deferred_acks: Mutex<Vec<(network::Ack, network::Handled)>>,
    /// The API's local operations waiting for their group commit (see `node/group.rs`).
    local: group::LocalQueue,
    /// Lamport counters for messages stamped before their transaction (a publish).
    lamport: crate::store::LamportCounter,
    held: ingress::HoldQueue,
    /// Unchanged periodic hellos, recognised without a write (see `node/liveness.rs`).
    liveness: liveness::Liveness,
    trust: trust::Trust,
    timers: Timers,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    lock: Mutex<Option<File>>,
    runs: runs::Runs,
    retention: crate::retention::Retention,
    /// The clock every decision reads ([`Node::now_ms`]); `None`: the system clock.
    clock: Option<Arc<dyn Clock>>,
}

/// When, after its first connection, a node broadcasts a new hello (gossip needs the
/// subscriptions exchanged first, and publishes the same bytes only once).
const JOIN_HELLO_DELAYS: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(3),
    Duration::from_secs(8),
];

/// Outbox messages sent per store read.
const OUTBOX_BATCH: usize = 256;

/// When housekeeping has store work to do (Unix ms; `u64::MAX`: nothing scheduled). They start
/// at 0, so the first tick does everything once.
#[derive(Debug, Default)]
struct Timers {
    /// The earliest time a seed of ours owes a decision ([`SeedView::next_decision_at`]).
    decide_at: AtomicU64,
    /// The earliest expiry of a seen message id.
    prune_at: AtomicU64,
    /// The earliest outbox retry.
    retry_at: AtomicU64,
    /// When counters counted in memory are written next (they wait for it when nothing else
    /// is due: an idle node does not write after every frame it received).
    counters_at: AtomicU64,
    /// When the `last_seen` values refreshed in memory are written next.
    liveness_at: AtomicU64,
    /// When the event log's cursor in the database may be written next ([`Node::write_log`]).
    log_cursor_at: AtomicU64,
    /// How many times housekeeping woke (tests of how an idle node sleeps).
    #[cfg(test)]
    looks: AtomicU64,
    /// How many times the log writer wrote (tests of how its writes gather).
    #[cfg(test)]
    log_writes: AtomicU64,
}

/// What [`Node::pump_events`] published last.
#[derive(Debug)]
struct Pumped {
    /// The last event published to the bus.
    seq: u64,
    /// [`Store::total_changes`] when the store was last read for events (`None`: read next
    /// time).
    changes: Option<u64>,
}

/// A running Crabnet node. Cheap to clone; all clones share one node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .field("name", &self.inner.config.name)
            .finish()
    }
}

/// Something that locks into a mutex guard: a mutex, or the store (which a receive batch
/// holds across operations, see [`SharedStore`]).
trait Lock {
    type Target;
    fn guard(&self) -> MutexGuard<'_, Self::Target>;
}

impl<T> Lock for Mutex<T> {
    type Target = T;
    fn guard(&self) -> MutexGuard<'_, T> {
        crate::lock(self)
    }
}

impl Lock for SharedStore {
    type Target = Store;
    fn guard(&self) -> MutexGuard<'_, Store> {
        self.lock()
    }
}

fn lock<L: Lock>(m: &L) -> MutexGuard<'_, L::Target> {
    m.guard()
}

/// Runs `work` (store reads and the like) on the blocking pool for a background task that goes
/// on without its result when it fails: `None`, after a warning `{cannot}: {error}`, or an error
/// `{task} task failed: {error}` when the work's own task failed.
async fn background_blocking<T, E>(
    cannot: &str,
    task: &str,
    work: impl FnOnce() -> std::result::Result<T, E> + Send + 'static,
) -> Option<T>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::warn!("{cannot}: {e}");
            None
        }
        Err(e) => {
            tracing::error!("{task} task failed: {e}");
            None
        }
    }
}

fn create_private_dir(path: &std::path::Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path).map_err(|e| {
        Error::with_source(
            ErrorKind::Io,
            format!("cannot create data directory {}: {e}", path.display()),
            e,
        )
    })
}

/// How long a start waits for the listen lock while the process that holds it is this one
/// ([`take_listen_lock`]).
const OWN_LOCK_WAIT: Duration = Duration::from_secs(3);

/// Takes the data directory's listen lock (`flock`), writing this process's id into it. A lock
/// held by this very process is waited for a while ([`OWN_LOCK_WAIT`]): a lock belongs to the
/// open file, and a child forked by any thread of the process (a task's sandbox set-up runs
/// between fork and exec) holds a copy of every open file until it execs, so a node of this
/// process that stopped a moment ago can still look like it listens.
fn take_listen_lock(config: &Config) -> Result<File> {
    let path = config.lock_path();
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    let since = std::time::Instant::now();
    let ours = std::process::id().to_string();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                if holder == ours && since.elapsed() < OWN_LOCK_WAIT {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "another crabnet node is already listening on data directory {}{}",
                        config.data_dir.display(),
                        if holder.is_empty() {
                            String::new()
                        } else {
                            format!(" (pid {holder})")
                        }
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(e.into()),
        }
    }
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_data()?;
    Ok(file)
}

impl Node {
    /// Starts a node without a network: local operations, events and the log work; messages
    /// wait in the outbox for a node with a transport on the same data directory.
    pub async fn start(config: Config) -> Result<Node> {
        Self::start_inner(config, None, None, false).await
    }

    /// Starts a node that exchanges messages through `transport`. Such a node holds the data
    /// directory's listen lock: a second one on the same directory fails with
    /// [`ErrorKind::Busy`].
    pub async fn start_with_transport(
        config: Config,
        transport: Box<dyn Transport>,
    ) -> Result<Node> {
        Self::start_inner(config, Some(transport), None, false).await
    }

    /// Starts a node (with `transport`, if any, as [`Node::start_with_transport`]) that reads
    /// the time from `clock` instead of the system clock: every deadline, expiry, freshness
    /// check and timestamp it signs (see [`Clock`]). Tests and simulations use it with a
    /// [`ManualClock`](crate::clock::ManualClock); the background timers still tick in real
    /// time and look at `clock` when they do.
    pub async fn start_with_clock(
        config: Config,
        transport: Option<Box<dyn Transport>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Node> {
        Self::start_inner(config, transport, Some(clock), false).await
    }

    /// Starts a node on libp2p (see [`network::DhtTransport`]); its libp2p key derives from
    /// the node's identity and is kept in `libp2p.key`, so its peer id is stable across
    /// restarts and key rotations.
    pub async fn start_with_dht(config: Config, dht: network::DhtConfig) -> Result<Node> {
        config.validate()?;
        let cfg = config.clone();
        let key = tokio::task::spawn_blocking(move || -> Result<_> {
            create_private_dir(&cfg.data_dir)?;
            let (identity, _) = Identity::load_or_create(&cfg.identity_path())?;
            let secret = keys::libp2p_secret(&cfg, &identity)?;
            Ok(network::libp2p_keypair(&secret))
        })
        .await
        .map_err(|e| Error::internal(format!("start task failed: {e}")))??;
        let transport = network::DhtTransport::start(dht, key)?;
        Self::start_inner(config, Some(transport), None, false).await
    }

    /// `driven`: no background task at all (see [`Driven`]); the node counts as one on a
    /// network (it takes the listen lock and runs other nodes' tasks).
    async fn start_inner(
        config: Config,
        transport: Option<Box<dyn Transport>>,
        clock: Option<Arc<dyn Clock>>,
        driven: bool,
    ) -> Result<Node> {
        config.validate()?;
        let cfg = config.clone();
        let listening = transport.is_some() || driven;
        // Only the node on the network alerts; an unreadable webhook secret fails the start.
        let alerting = alerting::Alerting::prepare(&config.alerts, listening)?;
        let (store, identity, lock_file, policy) = tokio::task::spawn_blocking(move || -> Result<_> {
            create_private_dir(&cfg.data_dir)?;
            if listening {
                // Only a node on a network runs other nodes' tasks.
                warn_about_sandbox(&cfg.runner.sandbox_status());
                check_task_root(&cfg.runner);
            }
            let lock_file = if listening {
                Some(take_listen_lock(&cfg)?)
            } else {
                None
            };
            let (identity, _) = Identity::load_or_create(&cfg.identity_path())?;
            let mut store = Store::open(&cfg.db_path(), &cfg.store)?;
            let stored = store.node_id_or_init(identity.node_id())?;
            if &stored != identity.node_id() {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "the database in {} belongs to node {stored}, but {} holds the keys of node {}",
                        cfg.data_dir.display(),
                        cfg.identity_path().display(),
                        identity.node_id()
                    ),
                ));
            }
            let identity = keys::finish_pending_rotation(&cfg, identity, &store)?;
            let policy = trust::Trust::load(identity.public(), &cfg.trust, &store)?;
            Ok((store, identity, lock_file, policy))
        })
        .await
        .map_err(|e| Error::internal(format!("start task failed: {e}")))??;

        let published = store.last_event_seq()?;
        let lamport = store.lamport_counter();
        // Judged in the active window of the longest interval the peer table could give: the
        // first periodic hello sizes it again.
        let sightings = store.peer_sightings()?;
        let started = clock
            .as_ref()
            .map_or_else(crate::clock::now_ms, |c| c.now_ms());
        let hello_every_ms = liveness::hello_interval_for(
            &config.network,
            &sightings,
            &Default::default(),
            started,
            config.network.hello_interval_ms(sightings.len()),
        );
        let log = config.events.log_enabled.then(|| {
            NdjsonLog::new(
                config.event_log_path(),
                config.events.log_max_bytes,
                config.events.log_retain,
            )
        });
        let (shutdown, _) = watch::channel(false);
        let node = Node {
            inner: Arc::new(Inner {
                id: identity.node_id().clone(),
                addresses: Mutex::new(
                    transport
                        .as_ref()
                        .map(|t| t.local_addresses())
                        .unwrap_or_default(),
                ),
                previous: std::sync::RwLock::new(
                    keys::previous_keys(&config, &identity).map(Arc::new),
                ),
                identity: std::sync::RwLock::new(Arc::new(identity)),
                hello_wanted: Notify::new(),
                hello_answers: hello_answers::HelloAnswers::new(&config.network),
                hello_changed: Notify::new(),
                hello_every_ms: AtomicU64::new(hello_every_ms),
                sync_wanted: Notify::new(),
                bus: EventBus::new(config.events.bus_capacity),
                log,
                transport_name: match &transport {
                    Some(t) => Some(t.name().to_owned()),
                    None => driven.then(|| driven::TRANSPORT_NAME.to_owned()),
                },
                store: SharedStore::new(store),
                published: Mutex::new(Pumped {
                    seq: published,
                    changes: None,
                }),
                stopped: AtomicBool::new(false),
                shutdown,
                wake_outbox: Notify::new(),
                wake_log: Notify::new(),
                rejections: ingress::Rejections::new(config.network.reject_event_window_ms),
                retention: crate::retention::Retention::new(config.retention.clone()),
                gate: ingress::Gate::new(&config.network),
                sync_credit: crate::ratelimit::Credits::new(
                    Duration::from_secs(config.network.sync_interval_secs.into()),
                    SYNC_REQUESTERS,
                ),
                answer_room: Mutex::new(reconcile::AnswerRoom::default()),
                sync_index: reconcile::IndexCache::default(),
                recent: ingress::RecentFrames::new(RECENT_FRAMES),
                verified: ingress::PreVerified::new(),
                deferred_acks: Mutex::new(Vec::new()),
                local: group::LocalQueue::default(),
                lamport,
                held: ingress::HoldQueue::new(config.network.unknown_sender_hold_ms),
                liveness: liveness::Liveness::new(config.network.max_peers.saturating_mul(2)),
                trust: policy,
                timers: Timers {
                    // The first writes of the routine counters and of the event log's cursor
                    // wait too: a short-lived node (a CLI command) writes both once, at stop,
                    // in one commit.
                    counters_at: AtomicU64::new(started.saturating_add(
                        u64::from(config.network.counter_write_secs).saturating_mul(1000),
                    )),
                    log_cursor_at: AtomicU64::new(
                        started.saturating_add(housekeeping::LOG_CURSOR_WRITE_MS),
                    ),
                    ..Timers::default()
                },
                tasks: Mutex::new(Vec::new()),
                lock: Mutex::new(lock_file),
                runs: runs::Runs::new(),
                config,
                clock,
            }),
        };
        if let Some(name) = node.inner.transport_name.clone() {
            let id = node.inner.id.clone();
            node.blocking(move |n| {
                n.with_store(|s| {
                    s.record_event(
                        n.now_ms(),
                        EventKind::NodeStarted {
                            node_id: id,
                            transport: Some(name),
                        },
                    )
                })
            })
            .await?;
        }
        node.blocking(|n| {
            n.with_store(|s| s.fill_digest_shares())?;
            n.issue_due_decisions()
        })
        .await?;
        node.blocking(|n| n.record_orphaned_runs()).await?;
        if driven {
            return Ok(node);
        }

        let mut tasks = Vec::new();
        // Receivers exist before the tasks run, so a stop right after start is never missed.
        let stop = || node.inner.shutdown.subscribe();
        tasks.push(tokio::spawn(node.clone().housekeeping(stop())));
        if node.inner.log.is_some() {
            // Once at start: the log may lag the events (a process stopped between them).
            node.inner.wake_log.notify_one();
            tasks.push(tokio::spawn(node.clone().log_writer(stop())));
        }
        if let Some(t) = transport {
            tasks.push(tokio::spawn(node.clone().network_loop(t, stop())));
        }
        tasks.extend(alerting.spawn(&node, stop));
        *lock(&node.inner.tasks) = tasks;
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.inner.id
    }

    /// The time on this node's clock (Unix ms): the system clock, unless the node was started
    /// with another one ([`Node::start_with_clock`]).
    pub fn now_ms(&self) -> crate::model::Millis {
        match &self.inner.clock {
            Some(clock) => clock.now_ms(),
            None => crate::clock::now_ms(),
        }
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The current interval between this node's periodic hellos: `network.hello_interval_secs`,
    /// stretched in a network larger than `network.hellos_per_interval` nodes (see
    /// [`crate::config::NetworkConfig::hello_interval_ms`]; worked out again at each periodic
    /// hello from the peer table). A peer counts as active while its latest hello is at most
    /// three such intervals old, and as idle (evictable) after four. The peers that stretch it
    /// are the active ones heard again at least `network.hello_interval_secs` after their
    /// first hello, those admitted from one (capped) IP address counting once together: fresh
    /// identities that sent one hello each, or many identities behind one address, do not
    /// stretch it.
    pub fn hello_interval(&self) -> Duration {
        Duration::from_millis(self.hello_interval_ms())
    }

    /// How long this node waits between its periodic sync rounds now:
    /// `network.sync_interval_secs` while its store changes, twice as long after each round over
    /// a store unchanged since the round before, up to six times (docs/PROTOCOL.md section 7).
    pub fn sync_round_interval(&self) -> Duration {
        Duration::from_millis(self.next_sync_round_ms())
    }

    pub(crate) fn hello_interval_ms(&self) -> u64 {
        self.inner.hello_every_ms.load(Ordering::Relaxed)
    }

    /// Subscribes to events from now on.
    pub fn subscribe(&self) -> Subscription {
        self.inner.bus.subscribe()
    }

    /// Whether [`Node::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    /// Stops the node gracefully; see the module docs for the order. Calling it twice is fine.
    pub async fn stop(&self) -> Result<()> {
        if self.inner.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // While the network still runs, so that interrupted results go out now.
        self.inner.runs.interrupt_all().await;
        self.inner.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        for t in tasks {
            if let Err(e) = t.await
                && e.is_panic()
            {
                tracing::error!("a background task panicked: {e}");
            }
        }
        let node = self.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            // Rejection and hold events now (they belong in the log); the counters waiting in
            // memory go with the event log's cursor: a CLI command stops with one commit (one
            // sync, one ring of the bell), not two.
            node.flush_rejection_events()?;
            node.write_liveness()?;
            if node.inner.transport_name.is_some() {
                let id = node.inner.id.clone();
                node.with_store(|s| {
                    s.record_event(node.now_ms(), EventKind::NodeStopped { node_id: id })
                })?;
            }
            let logged = node.write_log_at_stop();
            // What is left (no event log, no cursor to move, the log failed): its own commit.
            let flushed = node.flush_rejections();
            logged?;
            flushed?;
            // Subscribers read the last events, then see the end of the stream.
            node.inner.bus.close();
            *lock(&node.inner.lock) = None;
            Ok(())
        })
        .await
        .map_err(|e| Error::internal(format!("stop task failed: {e}")))?
    }

    /// Runs `f` on a blocking thread with access to this node.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Node) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if self.is_stopped() {
            return Err(Error::new(ErrorKind::Stopped, "the node has been stopped"));
        }
        let node = self.clone();
        tokio::task::spawn_blocking(move || f(&node))
            .await
            .map_err(|e| Error::internal(format!("node task failed: {e}")))?
    }

    /// Runs `f` with the store locked, then delivers any new events (inside a receive batch:
    /// once the batch is committed).
    pub(crate) fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        let mut store = lock(&self.inner.store);
        let out = f(&mut store);
        if !store.in_batch() {
            self.pump_events(&store, false);
        }
        out
    }

    /// Publishes events committed since the last pump to the bus and, when there were any,
    /// wakes the log writer (an idle node opens no file). Without `others` (events another
    /// process may have committed: housekeeping saw the database change), the store is read
    /// only when this node changed rows since the last pump (a read-only store call, most of
    /// them, costs no query).
    fn pump_events(&self, store: &Store, others: bool) {
        let mut pumped = lock(&self.inner.published);
        let changes = store.total_changes();
        if !others && pumped.changes == Some(changes) {
            return;
        }
        pumped.changes = Some(changes);
        let before = pumped.seq;
        const PAGE: usize = 512;
        loop {
            match store.events_after(pumped.seq, PAGE) {
                Ok(events) => {
                    let full = events.len() == PAGE;
                    for e in events {
                        pumped.seq = e.seq;
                        self.inner.bus.publish(e);
                    }
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!("cannot read events: {e}");
                    // Read again at the next pump.
                    pumped.changes = None;
                    break;
                }
            }
        }
        if pumped.seq != before {
            self.inner.wake_log.notify_one();
        }
    }
}

/// At a start on a network, for a node that runs tasks as `runner.user`: says when that user
/// cannot reach the work root ([`runner::task_root_blocked`](crate::runner::task_root_blocked)),
/// before any task is accepted rather than when one runs. Creates nothing.
fn check_task_root(runner: &crate::runner::RunnerConfig) {
    let root = runner.work_root();
    if let Some(closed) = crate::runner::task_root_blocked(&root, runner) {
        tracing::warn!(
            "runner.user {:?} cannot enter {closed} on the way to the work root {}: task \
             directories will go to crabnet-work-<uid> under /var/tmp (or /tmp) instead. To \
             choose where they go, set runner.work_root to a directory runner.user can reach",
            runner.user,
            root.display()
        );
    }
}

/// Says at every start on a network (any transport) when tasks will run without the full
/// sandbox, or not at all.
fn warn_about_sandbox(status: &SandboxStatus) {
    match status.policy {
        SandboxPolicy::None => tracing::warn!(
            "runner.sandbox = \"none\": tasks published by other nodes run without a sandbox, \
             as this node's user, and can read its keys and files"
        ),
        SandboxPolicy::Required if !status.can_run => tracing::warn!(
            missing = %status.missing.join("; "),
            "this system cannot build the task sandbox: the node refuses to bid and to run \
             (runner.sandbox = \"required\")"
        ),
        SandboxPolicy::BestEffort if status.level != SandboxLevel::Full => tracing::warn!(
            missing = %status.missing.join("; "),
            features = %status.features.join(","),
            level = %status.level,
            "tasks run without the full sandbox (runner.sandbox = \"best_effort\")"
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node of this process stopped, but a child forked meanwhile by another thread (a
    /// task's sandbox set-up runs between fork and exec) still holds a copy of its lock file:
    /// the start again waits for it instead of failing "already listening" (the simulator,
    /// which runs schedules on several threads of one process, hit this). A lock held by
    /// another process fails at once.
    #[test]
    fn a_listen_lock_held_by_a_forked_copy_of_this_process_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::with_data_dir(dir.path().join("n"));
        std::fs::create_dir_all(&config.data_dir).unwrap();
        let first = take_listen_lock(&config).unwrap();
        // A dup shares the open file, and with it the lock, as a forked child's copy does.
        let copy = first.try_clone().unwrap();
        drop(first);
        let child = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(copy);
        });
        let again = take_listen_lock(&config);
        child.join().unwrap();
        let again = again.expect("the lock of a stopped node of this process");

        // Another process's lock (its id in the file) is not waited for.
        let copy = again.try_clone().unwrap();
        std::fs::write(config.lock_path(), "1\n").unwrap();
        drop(again);
        let started = std::time::Instant::now();
        let err = take_listen_lock(&config).unwrap_err();
        assert!(started.elapsed() < OWN_LOCK_WAIT, "{err}");
        assert!(
            err.to_string().contains("already listening") && err.to_string().contains("(pid 1)"),
            "{err}"
        );
        drop(copy);
    }
}
