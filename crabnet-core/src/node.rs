//! The embeddable node: the one handle that the CLI, the C ABI and the Python module wrap.
//!
//! A [`Node`] owns its store, its event bus and (optionally) a transport. Local operations
//! (`publish`, `bid`, `claim`, `run`, `settle`, `cancel`) validate against the seed's current
//! state and commit the message, its events and its outbox row in one transaction; background
//! tasks send the outbox, apply received messages, close bidding on seeds this node published
//! when it is due, and append events to the NDJSON log.
//!
//! Shutdown order ([`Node::stop`]): refuse new operations, let runs in progress finish within
//! `runner.stop_grace_ms` or kill them and record them as interrupted (see [`runs`]), signal the
//! background tasks and wait for them (the network task sends what is due first), record `node_stopped`, deliver the last
//! events to subscribers and the log, then release the data-directory lock.

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::clock::{now_ms, random_bytes};
use crate::config::Config;
use crate::envelope::{self, EnvelopeError, Header, Kind};
use crate::error::{Error, ErrorKind, Result};
use crate::identity::{Identity, PublicIdentity};
use crate::ingress;
use crate::model::{
    Bid, BidId, Body, Cancellation, Claim, Deadlines, Message, MessageId, Millis, NodeId, RoundEnd,
    SandboxLevel, Seed, SeedId, SeedStatus, Settlement, SettlementOutcome, rules,
};
use crate::monitor::{Event, EventBus, EventKind, NdjsonLog, RejectReason, Subscription};
use crate::network::{self, Acceptance, Handled, InboundFrame, Incoming, Transport};
use crate::sandbox::{Refusal, SandboxPolicy, SandboxStatus};
use crate::state::{self, SeedView, Violation};
use crate::store::{Peer, PeerUpdate, RemoteOutcome, Store};
use crate::sync;
use crate::trust;

mod keys;
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
    /// Digest of the whole seed state (equal on converged replicas).
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
    /// Addresses of new peers waiting for our hello.
    hello_answers: Mutex<Vec<Vec<String>>>,
    /// Set when the hello changed (the keys rotated): it is broadcast again at once.
    hello_changed: Notify,
    sync_wanted: Notify,
    config: Config,
    store: Mutex<Store>,
    bus: EventBus,
    log: Option<NdjsonLog>,
    transport_name: Option<String>,
    published_seq: Mutex<u64>,
    stopped: AtomicBool,
    shutdown: watch::Sender<bool>,
    wake_outbox: Notify,
    wake_log: Notify,
    rejections: ingress::Rejections,
    gate: ingress::Gate,
    sync_credit: crate::ratelimit::Credits,
    recent: ingress::RecentFrames,
    held: ingress::HoldQueue,
    trust: trust::Trust,
    timers: Timers,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    lock: Mutex<Option<File>>,
    runs: runs::Runs,
    retention: crate::retention::Retention,
}

/// When, after its first connection, a node broadcasts its hello again (gossip needs the
/// subscriptions exchanged first).
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
    /// Seeds of ours that will owe a decision: a frame about one of them may move its time.
    deciding: Mutex<HashSet<SeedId>>,
    /// The earliest expiry of a seen message id.
    prune_at: AtomicU64,
    /// The earliest outbox retry.
    retry_at: AtomicU64,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

fn take_listen_lock(config: &Config) -> Result<File> {
    let path = config.lock_path();
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
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
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_data()?;
    Ok(file)
}

impl Node {
    /// Starts a node without a network: local operations, events and the log work; messages
    /// wait in the outbox for a node with a transport on the same data directory.
    pub async fn start(config: Config) -> Result<Node> {
        Self::start_inner(config, None).await
    }

    /// Starts a node that exchanges messages through `transport`. Such a node holds the data
    /// directory's listen lock: a second one on the same directory fails with
    /// [`ErrorKind::Busy`].
    pub async fn start_with_transport(
        config: Config,
        transport: Box<dyn Transport>,
    ) -> Result<Node> {
        Self::start_inner(config, Some(transport)).await
    }

    /// Starts a node on libp2p (see [`network::DhtTransport`]); its libp2p key derives from
    /// the node's identity, so its peer id is stable across restarts.
    pub async fn start_with_dht(config: Config, dht: network::DhtConfig) -> Result<Node> {
        config.validate()?;
        let cfg = config.clone();
        let key = tokio::task::spawn_blocking(move || -> Result<_> {
            create_private_dir(&cfg.data_dir)?;
            let (identity, _) = Identity::load_or_create(&cfg.identity_path())?;
            Ok(network::libp2p_key(&identity.signing().to_seeds().ed25519))
        })
        .await
        .map_err(|e| Error::internal(format!("start task failed: {e}")))??;
        let transport = network::DhtTransport::start(dht, key)?;
        Self::start_inner(config, Some(transport)).await
    }

    async fn start_inner(config: Config, transport: Option<Box<dyn Transport>>) -> Result<Node> {
        config.validate()?;
        let cfg = config.clone();
        let listening = transport.is_some();
        // Only the node on the network alerts; an unreadable webhook secret fails the start.
        let alerting = crate::alerts::Alerting::prepare(&config.alerts, listening)?;
        let (store, identity, lock_file, policy) = tokio::task::spawn_blocking(move || -> Result<_> {
            create_private_dir(&cfg.data_dir)?;
            if listening {
                // Only a node on a network runs other nodes' tasks.
                warn_about_sandbox(&cfg.runner.sandbox_status());
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
                hello_answers: Mutex::new(Vec::new()),
                hello_changed: Notify::new(),
                sync_wanted: Notify::new(),
                bus: EventBus::new(config.events.bus_capacity),
                log,
                transport_name: transport.as_ref().map(|t| t.name().to_owned()),
                store: Mutex::new(store),
                published_seq: Mutex::new(published),
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
                recent: ingress::RecentFrames::new(RECENT_FRAMES),
                held: ingress::HoldQueue::new(config.network.unknown_sender_hold_ms),
                trust: policy,
                timers: Timers::default(),
                tasks: Mutex::new(Vec::new()),
                lock: Mutex::new(lock_file),
                runs: runs::Runs::new(),
                config,
            }),
        };
        if let Some(name) = node.inner.transport_name.clone() {
            let id = node.inner.id.clone();
            node.blocking(move |n| {
                n.with_store(|s| {
                    s.record_event(
                        now_ms(),
                        EventKind::NodeStarted {
                            node_id: id,
                            transport: Some(name),
                        },
                    )
                })
            })
            .await?;
        }
        node.blocking(|n| n.issue_due_decisions()).await?;
        node.blocking(|n| n.record_orphaned_runs()).await?;

        let mut tasks = Vec::new();
        // Receivers exist before the tasks run, so a stop right after start is never missed.
        let stop = || node.inner.shutdown.subscribe();
        tasks.push(tokio::spawn(node.clone().housekeeping(stop())));
        if node.inner.log.is_some() {
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

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
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
            node.flush_rejections()?;
            if node.inner.transport_name.is_some() {
                let id = node.inner.id.clone();
                node.with_store(|s| {
                    s.record_event(now_ms(), EventKind::NodeStopped { node_id: id })
                })?;
            }
            node.write_log()?;
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

    /// Runs `f` with the store locked, then delivers any new events.
    pub(crate) fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        let mut store = lock(&self.inner.store);
        let out = f(&mut store);
        self.pump_events(&store);
        out
    }

    /// Publishes events committed since the last pump (by this or another process) to the bus
    /// and wakes the log writer.
    fn pump_events(&self, store: &Store) {
        let mut seq = lock(&self.inner.published_seq);
        loop {
            match store.events_after(*seq, 512) {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    for e in events {
                        *seq = e.seq;
                        self.inner.bus.publish(e);
                    }
                }
                Err(e) => {
                    tracing::warn!("cannot read events: {e}");
                    break;
                }
            }
        }
        self.inner.wake_log.notify_one();
    }

    fn commit_local(
        &self,
        seed_id: &SeedId,
        build: impl FnOnce(Option<&SeedView>) -> Result<Body>,
    ) -> Result<SeedView> {
        self.commit_local_at(seed_id, now_ms(), build)
    }

    fn commit_local_at(
        &self,
        seed_id: &SeedId,
        now: Millis,
        build: impl FnOnce(Option<&SeedView>) -> Result<Body>,
    ) -> Result<SeedView> {
        let view = self.with_store(|s| {
            let peers = s.peers()?;
            let view = s
                .commit_local(&self.inner.id, seed_id, now, build, |m, v| {
                    self.seal(m, v, &peers)
                })
                .map(|(_, view, _)| view)?;
            self.schedule_decision(&view);
            Ok(view)
        })?;
        self.inner.wake_outbox.notify_one();
        Ok(view)
    }

    /// Signs a local message, sealing it to the seed's audience when the seed is private.
    fn seal(&self, message: &Message, view: &SeedView, peers: &[Peer]) -> Result<Vec<u8>> {
        let seed = &view.seed;
        let mut recipients = Vec::new();
        if !seed.audience.is_empty() {
            for id in seed.audience.iter().chain([&seed.publisher]) {
                if id == &self.inner.id {
                    continue;
                }
                let peer = peers.iter().find(|p| &p.identity.node_id == id).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Network,
                        format!(
                            "cannot encrypt to node {id}: no hello from it yet, so its keys are unknown"
                        ),
                    )
                })?;
                recipients.push((&peer.identity.node_id, &peer.identity.kem));
            }
        }
        let net = &self.inner.config.network;
        envelope::message_envelope(
            &self.keys(),
            message,
            net.message_ttl_secs,
            &recipients,
            net.max_envelope_bytes,
            &mut envelope::os_rng,
        )
        .map_err(|e| match e {
            EnvelopeError::Oversized { .. } => Error::new(
                ErrorKind::Validation,
                format!("the {} message is too large to send: {e}", message.kind()),
            ),
            e => Error::internal(format!("cannot build envelope: {e}")),
        })
    }

    /// Publishes a seed; returns its state.
    pub async fn publish(&self, req: PublishRequest) -> Result<SeedView> {
        self.blocking(move |n| {
            let now = now_ms();
            let seed = Seed {
                id: SeedId::from_bytes(random_bytes()),
                publisher: n.inner.id.clone(),
                command: req.command,
                description: req.description,
                min_price: req.min_price,
                max_price: req.max_price,
                bid_window_secs: req.bid_window_secs,
                max_bids: req.max_bids,
                timeout_secs: req.timeout_secs,
                created_at: now,
                audience: req.private_to,
                network: req.network,
                isolation: req.isolation,
                rules: rules::CURRENT,
                deadlines: Some(req.deadlines),
            };
            seed.check_fields()
                .map_err(|e| Error::new(ErrorKind::Validation, format!("invalid seed: {e}")))?;
            let id = seed.id.clone();
            // The creation time must equal the message timestamp: commit with the same clock.
            n.commit_local_at(&id, now, |_| Ok(Body::SeedCreated(seed)))
        })
        .await
    }

    /// Bids `price` on a seed.
    pub async fn bid(&self, seed_id: &SeedId, price: u64) -> Result<SeedView> {
        let seed_id = seed_id.clone();
        self.blocking(move |n| {
            let me = n.inner.id.clone();
            let runner_cfg = &n.inner.config.runner;
            let view = n.commit_local(&seed_id, |v| {
                let v = known(v, &seed_id)?;
                state::check_local_bid(v, &me, now_ms())?;
                // Never offer to run what this node's sandbox policy cannot serve.
                runner_cfg
                    .check_can_serve(&v.seed)
                    .map_err(|e| refusal(&seed_id, e))?;
                Ok(Body::BidPlaced(Bid {
                    id: BidId::from_bytes(random_bytes()),
                    seed_id: seed_id.clone(),
                    bidder: me.clone(),
                    price,
                }))
            })?;
            n.issue_decisions_if_due()?;
            n.seed_blocking(&seed_id).or(Ok(view))
        })
        .await
    }

    /// Claims a seed this node won.
    pub async fn claim(&self, seed_id: &SeedId) -> Result<SeedView> {
        let seed_id = seed_id.clone();
        self.blocking(move |n| {
            n.issue_decisions_if_due()?;
            let me = n.inner.id.clone();
            n.commit_local(&seed_id, |v| {
                let v = known(v, &seed_id)?;
                let bid_id = state::check_local_claim(v, &me, now_ms())?;
                Ok(Body::SeedClaimed(Claim {
                    seed_id: seed_id.clone(),
                    claimer: me.clone(),
                    bid_id,
                }))
            })
        })
        .await
    }

    /// Settles a completed seed this node published: accept (the winning price is due) or
    /// reject.
    pub async fn settle(&self, seed_id: &SeedId, accept: bool, note: &str) -> Result<SeedView> {
        let seed_id = seed_id.clone();
        let note = note.to_owned();
        self.blocking(move |n| {
            n.commit_local(&seed_id, |v| {
                let v = known(v, &seed_id)?;
                let amount = if accept {
                    v.award.as_ref().and_then(|a| a.price).unwrap_or(0)
                } else {
                    0
                };
                Ok(Body::SeedSettled(Settlement {
                    seed_id: seed_id.clone(),
                    outcome: if accept {
                        SettlementOutcome::Accepted
                    } else {
                        SettlementOutcome::Rejected
                    },
                    amount,
                    note,
                }))
            })
        })
        .await
    }

    /// Starts the next round of a seed this node published (rules 2): after its current round
    /// failed, or once its winner let the claim window pass. The next best bid whose bidder has
    /// not had a round wins; with none left the seed expires.
    pub async fn reassign(&self, seed_id: &SeedId) -> Result<SeedView> {
        let seed_id = seed_id.clone();
        self.blocking(move |n| {
            let me = n.inner.id.clone();
            n.commit_local(&seed_id, |v| {
                let v = known(v, &seed_id)?;
                state::check_local_reassign(v, &me, now_ms())?;
                let next = v.reassignment().ok_or_else(|| {
                    Error::internal(format!("seed {seed_id} has no award to reassign"))
                })?;
                Ok(Body::SeedReassigned(next))
            })
        })
        .await
    }

    /// Cancels a seed this node published: while bidding is open, or (rules 2) once the
    /// winner let the claim window pass or the current round failed.
    pub async fn cancel(&self, seed_id: &SeedId) -> Result<SeedView> {
        let seed_id = seed_id.clone();
        self.blocking(move |n| {
            n.commit_local(&seed_id, |v| {
                let v = known(v, &seed_id)?;
                // Under rules 2 a cancellation after the award says how the round ended.
                let after = match (v.seed.deadlines(), v.status, &v.award) {
                    (None, _, _) | (_, _, None) => None,
                    (Some(_), SeedStatus::Failed, Some(_)) => Some(RoundEnd::Failed),
                    (Some(_), _, Some(_)) => Some(RoundEnd::Unclaimed),
                };
                Ok(Body::SeedCancelled(Cancellation {
                    seed_id: seed_id.clone(),
                    after,
                }))
            })
        })
        .await
    }

    /// One seed's state; [`ErrorKind::NotFound`] if it is unknown here.
    pub async fn seed(&self, seed_id: &SeedId) -> Result<SeedView> {
        let seed_id = seed_id.clone();
        self.blocking(move |n| n.seed_blocking(&seed_id)).await
    }

    fn seed_blocking(&self, seed_id: &SeedId) -> Result<SeedView> {
        lock(&self.inner.store).seed(seed_id)?.ok_or_else(|| {
            Violation::UnknownSeed {
                seed_id: seed_id.clone(),
            }
            .into()
        })
    }

    /// Seeds known here, newest first, optionally filtered by status.
    pub async fn seeds(&self, status: Option<SeedStatus>) -> Result<Vec<SeedView>> {
        self.blocking(move |n| lock(&n.inner.store).seeds(status, usize::MAX))
            .await
    }

    /// The newest `limit` seeds known here, optionally only those with `status`.
    pub async fn recent_seeds(
        &self,
        status: Option<SeedStatus>,
        limit: usize,
    ) -> Result<Vec<SeedView>> {
        self.blocking(move |n| lock(&n.inner.store).seeds(status, limit))
            .await
    }

    /// The name of the transport the node runs on (`memory`, `udp`, `dht`), if any.
    pub fn transport_name(&self) -> Option<&str> {
        self.inner.transport_name.as_deref()
    }

    /// Starts the monitoring HTTP API and dashboard of this node (see [`crate::web`]); it
    /// runs until the returned handle is shut down or dropped.
    pub async fn serve_web(&self, config: crate::web::WebConfig) -> Result<crate::web::WebHandle> {
        crate::web::serve(self.clone(), config).await
    }

    /// A summary of the node.
    pub async fn overview(&self) -> Result<Overview> {
        self.blocking(|n| {
            let store = lock(&n.inner.store);
            Ok(Overview {
                node_id: n.inner.id.clone(),
                name: n.inner.config.name.clone(),
                data_dir: n.inner.config.data_dir.display().to_string(),
                transport: n.inner.transport_name.clone(),
                seeds_by_status: store.status_counts()?,
                outbox_pending: store.outbox_pending()?,
                counters: {
                    let mut c = store.counters()?;
                    for (k, v) in n.inner.rejections.pending_counters() {
                        *c.entry(k).or_default() += v;
                    }
                    c
                },
                last_event_seq: store.last_event_seq()?,
                state_digest: store.digest()?,
                peers: store.peers()?.len() as u64,
                addresses: lock(&n.inner.addresses).clone(),
                sandbox: n.inner.config.runner.sandbox_status(),
            })
        })
        .await
    }

    /// Events after sequence number `after` from the durable log, oldest first.
    pub async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.blocking(move |n| lock(&n.inner.store).events_after(after, limit))
            .await
    }

    /// The sequence number of the last event pruned by the bound on the durable log (0 when
    /// none was; see [`crate::retention`]): a cursor below it has missed events.
    pub async fn events_pruned_through(&self) -> Result<u64> {
        self.blocking(|n| lock(&n.inner.store).events_pruned_through())
            .await
    }

    /// Counts a rejected frame and records its event, unless an event for the same source and
    /// reason was recorded within `network.reject_event_window_ms` (then the window's summary
    /// covers it): a flood costs memory, not one transaction per frame.
    fn reject(
        &self,
        from: &str,
        header: Option<&Header>,
        reason: RejectReason,
        detail: String,
    ) -> Result<Acceptance> {
        self.record_rejection(ingress::Rejection::new(from, header, reason, detail))
    }

    /// Counts `rejection` and records its event as [`Node::reject`] does.
    fn record_rejection(&self, rejection: ingress::Rejection) -> Result<Acceptance> {
        let reason = rejection.reason;
        let now = now_ms();
        if let Some(event) = self.inner.rejections.note(rejection, now) {
            self.with_store(|s| s.record_event(now, event))?;
        }
        Ok(verdict(reason))
    }

    /// A frame the gate refused: counted in memory; its event (the first per source and
    /// reason in a window) is the only write.
    async fn refuse(&self, rejection: ingress::Rejection) -> Handled {
        let acceptance = verdict(rejection.reason);
        let now = now_ms();
        if let Some(event) = self.inner.rejections.note(rejection, now) {
            let node = self.clone();
            let written = tokio::task::spawn_blocking(move || {
                node.with_store(|s| s.record_event(now, event))
            })
            .await;
            if let Ok(Err(e)) = written {
                tracing::warn!("cannot record a rejection: {e}");
            }
        }
        Handled {
            acceptance,
            replies: Vec::new(),
        }
    }

    /// Writes the rejection counters and window summaries held in memory (housekeeping).
    fn flush_rejections(&self) -> Result<()> {
        let now = now_ms();
        let expired = self.inner.held.expire(now, &self.inner.rejections);
        let (counters, mut events) = self.inner.rejections.drain(now);
        events.extend(expired);
        if counters.is_empty() && events.is_empty() {
            return Ok(());
        }
        let written = self.with_store(|s| s.add_counters(now, &counters, events));
        if written.is_err() {
            self.inner.rejections.restore(counters);
        }
        written.map(|_| ())
    }

    /// The trust boundary: checks one received frame (size, structure, freshness, sender in
    /// the peer table, both signatures over the received bytes, replay), opens it if it is
    /// sealed to this node, and applies it. Every rejection is an event and a counter.
    fn receive_frame(&self, bytes: &[u8], source: &ingress::Source, max: usize) -> Result<Handled> {
        let mut replies = Vec::new();
        let acceptance = self.receive_envelope(bytes, source, max, Via::Live, &mut replies)?;
        Ok(Handled {
            acceptance,
            replies,
        })
    }

    /// One envelope, received live or inside a sync batch (then stale envelopes are expected:
    /// freshness and the replay floor do not apply, deduplication and signatures do). Frames
    /// to send in answer are appended to `replies`.
    fn receive_envelope(
        &self,
        bytes: &[u8],
        source: &ingress::Source,
        max: usize,
        via: Via,
        replies: &mut Vec<Vec<u8>>,
    ) -> Result<Acceptance> {
        let from = source.from.as_str();
        let now = now_ms();
        let parsed = match envelope::parse(bytes, max) {
            Ok(p) => p,
            Err(e) => {
                let reason = match e {
                    EnvelopeError::Oversized { .. } => RejectReason::Oversized,
                    _ => RejectReason::Malformed,
                };
                return self.reject(from, None, reason, e.to_string());
            }
        };
        let h = &parsed.header;
        // Before any signature check or transaction: is the author admitted at all?
        if let Err(detail) = self.inner.trust.check_frame(h) {
            return self.reject(from, Some(h), RejectReason::NotAdmitted, detail);
        }
        if h.sender == self.inner.id {
            // Our own envelopes come back through relays and sync; anything else that claims
            // to be from this node is a forgery, checked like every other sender's frame.
            let current = self.keys().public().signing.clone();
            if let Err((reason, detail)) = self.verify_signer(&parsed, &current, via, now) {
                let detail = format!("claims to come from this node: {detail}");
                return self.reject(from, Some(h), reason, detail);
            }
            self.inner.rejections.count("messages.self_echo");
            return Ok(Acceptance::Ignore);
        }
        if self.inner.recent.contains(bytes) {
            // A copy of an envelope the store holds (gossip relays and sync answers deliver
            // copies as a matter of course): counted, no signature check, no transaction.
            let counter = match h.kind {
                Kind::NodeHello => "hellos.duplicate",
                _ => "messages.duplicate",
            };
            self.inner.rejections.count(counter);
            return Ok(Acceptance::Ignore);
        }
        let net = &self.inner.config.network;
        let skew = net.max_clock_skew_secs as u64 * 1000;
        if via == Via::Sync && matches!(h.kind, Kind::SyncDigest | Kind::SyncBatch) {
            let detail = "sync envelope nested in a sync batch".to_owned();
            return self.reject(from, Some(h), RejectReason::Malformed, detail);
        }
        if via == Via::Sync {
            // Stale by design; everything else is checked below.
        } else if h.timestamp > now + skew {
            let detail = format!("dated {} ms in the future", h.timestamp - now);
            return self.reject(from, Some(h), RejectReason::Expired, detail);
        }
        let expires = h.timestamp.saturating_add(h.ttl_secs as u64 * 1000);
        if now > expires.saturating_add(skew) {
            let detail = format!("expired {} ms ago", now - expires);
            return self.reject(from, Some(h), RejectReason::Expired, detail);
        }
        // Before any signature: a counter far ahead would drag this node's clock (and every
        // counter it stamps) along, up to the largest one representable.
        let clock = lock(&self.inner.store).lamport_clock()?;
        let limit = clock
            .saturating_add(net.lamport_window)
            .min(crate::store::MAX_LAMPORT);
        if h.lamport > limit {
            let detail = format!(
                "Lamport counter {} is more than network.lamport_window ({}) ahead of this \
                 node's clock ({clock})",
                h.lamport, net.lamport_window
            );
            return self.reject(from, Some(h), RejectReason::LamportAhead, detail);
        }
        if h.kind == Kind::NodeHello {
            let admission = crate::store::Admission {
                max_peers: net.max_peers,
                // A peer that missed four hellos in a row is idle.
                idle_before: now
                    .saturating_sub(u64::from(net.hello_interval_secs).saturating_mul(4000)),
                // Hellos relayed inside sync batches name the relay, not their author.
                address: (via == Via::Live)
                    .then(|| source.capped_address(&net.peer_address_exempt))
                    .flatten(),
                max_per_address: net.max_peers_per_address,
            };
            let acceptance = self.receive_hello(&parsed, bytes, from, now, &admission)?;
            if acceptance == Acceptance::Accept {
                self.release_held(&h.sender, source, max, replies)?;
            }
            return Ok(acceptance);
        }
        let peer = lock(&self.inner.store).peer(&h.sender)?;
        let Some(peer) = peer else {
            let detail = "no verified hello from this sender".to_owned();
            if via == Via::Sync {
                return self.reject(from, Some(h), RejectReason::UnknownSender, detail);
            }
            // Held until the hello arrives (hellos and the first envelopes cross at startup).
            let rejection =
                ingress::Rejection::new(from, Some(h), RejectReason::UnknownSender, detail);
            let held = self.inner.held.hold(
                &h.sender,
                bytes,
                source,
                rejection,
                now,
                &self.inner.rejections,
            );
            if let Err(rejection) = held {
                return self.record_rejection(rejection);
            }
            // The hello may have been applied since the lookup: then nothing releases this
            // envelope but us.
            if lock(&self.inner.store).peer(&h.sender)?.is_some() {
                self.release_held(&h.sender, source, max, replies)?;
            }
            return Ok(Acceptance::Ignore);
        };
        if let Err((reason, detail)) = self.verify_signer(&parsed, &peer.identity.signing, via, now)
        {
            return self.reject(from, Some(h), reason, detail);
        }
        if matches!(
            h.kind,
            Kind::SyncDigest | Kind::SyncBatch | Kind::Revocations | Kind::KeyRotations
        ) {
            // Sync envelopes are answered once: a replay must not make us resend everything.
            let fresh = self.with_store(|s| {
                if s.is_known(&h.message_id)? {
                    return Ok(false);
                }
                let counter = match h.kind {
                    Kind::SyncDigest => "sync.digests_received",
                    Kind::Revocations => "trust.revocation_lists_received",
                    Kind::KeyRotations => "trust.rotation_lists_received",
                    _ => "sync.batches_received",
                };
                s.remember(&h.message_id, &h.sender, h.lamport, now, counter)?;
                Ok(true)
            })?;
            if !fresh {
                let detail = format!("{} was already received", h.kind.name());
                return self.reject(from, Some(h), RejectReason::Duplicate, detail);
            }
        }
        match h.kind {
            Kind::SyncDigest => {
                return match parsed.plain::<sync::Digest>(Kind::SyncDigest) {
                    Ok(d) => {
                        self.answer_digest(&h.sender, &d, bytes.len(), source, replies)?;
                        Ok(Acceptance::Ignore)
                    }
                    Err(e) => self.reject(from, Some(h), RejectReason::Malformed, e.to_string()),
                };
            }
            Kind::SyncBatch => {
                let batch = match parsed.plain::<sync::Batch>(Kind::SyncBatch) {
                    Ok(b) => b,
                    Err(e) => {
                        return self.reject(from, Some(h), RejectReason::Malformed, e.to_string());
                    }
                };
                for item in &batch.items {
                    self.receive_envelope(item, source, max, Via::Sync, replies)?;
                }
                return Ok(Acceptance::Ignore);
            }
            Kind::Revocations => {
                return match parsed.plain::<sync::Batch>(Kind::Revocations) {
                    Ok(list) => self.receive_revocations(&list, now),
                    Err(e) => self.reject(from, Some(h), RejectReason::Malformed, e.to_string()),
                };
            }
            Kind::KeyRotations => {
                return match parsed.plain::<sync::Batch>(Kind::KeyRotations) {
                    Ok(list) => self.receive_rotations(&list, now),
                    Err(e) => self.reject(from, Some(h), RejectReason::Malformed, e.to_string()),
                };
            }
            Kind::NodeHello | Kind::Domain(_) => {}
        }
        if via == Via::Live
            && h.lamport <= peer.replay_floor
            && !lock(&self.inner.store).is_known(&h.message_id)?
        {
            let detail = format!(
                "Lamport counter {} is at or below the sender's replay floor {}",
                h.lamport, peer.replay_floor
            );
            return self.reject(from, Some(h), RejectReason::Replay, detail);
        }
        let message = match self.open(&parsed) {
            Ok(m) => m,
            Err(EnvelopeError::NotForMe) => {
                // Sealed to other nodes: remembered (deduplicated) and relayed, not applied.
                return self.with_store(|s| {
                    if s.is_known(&h.message_id)? {
                        s.count("messages.not_for_us_duplicate")?;
                        return Ok(Acceptance::Ignore);
                    }
                    s.remember(
                        &h.message_id,
                        &h.sender,
                        h.lamport,
                        now,
                        "messages.not_for_us",
                    )?;
                    self.inner.recent.insert(bytes);
                    Ok(Acceptance::Accept)
                });
            }
            Err(e) => return self.reject(from, Some(h), RejectReason::Malformed, e.to_string()),
        };
        let outcome = self.with_store(|s| {
            s.apply_remote(&self.inner.id, &message, bytes, now)
                .map(|(outcome, _)| outcome)
        })?;
        if outcome == RemoteOutcome::Pruned {
            // Its seed was pruned here: not applied, not relayed, no event (sync offers it
            // again and again while a peer holds it).
            self.inner.rejections.count("retention.refused");
            return Ok(Acceptance::Ignore);
        }
        self.inner.recent.insert(bytes);
        if matches!(outcome, RemoteOutcome::Applied | RemoteOutcome::Deferred(_)) {
            self.reschedule_decision(&message, now)?;
        }
        Ok(match outcome {
            RemoteOutcome::Duplicate => Acceptance::Ignore,
            RemoteOutcome::Rejected(RejectReason::Malformed, _) => Acceptance::Reject,
            // A rule violation is validly signed and may be pending elsewhere: forward it.
            _ => Acceptance::Accept,
        })
    }

    /// Applies the envelopes held for `sender` until its hello arrived (one of them just did,
    /// from `source`). Answers to them go back only when they came from the same source.
    fn release_held(
        &self,
        sender: &NodeId,
        source: &ingress::Source,
        max: usize,
        replies: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        for held in self.inner.held.release(sender, &self.inner.rejections) {
            let mut answers = Vec::new();
            self.receive_envelope(&held.bytes, &held.source, max, Via::Live, &mut answers)?;
            if held.source.from == source.from {
                replies.extend(answers);
            }
        }
        Ok(())
    }

    /// Answers a peer's digest (of `digest_bytes`, from `source`): the seeds it lacks (with
    /// their authors' hellos) in batches, and our own digest when it holds seeds we lack
    /// (unless its digest is itself a reply), all within the source's sync credit.
    fn answer_digest(
        &self,
        requester: &NodeId,
        digest: &sync::Digest,
        digest_bytes: usize,
        source: &ingress::Source,
        replies: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        let net = &self.inner.config.network;
        let max_payload = net.max_envelope_bytes - envelope::OVERHEAD;
        let (cmp, items) = {
            let store = lock(&self.inner.store);
            let ours = store.sync_digest(DIGEST_LIMIT)?;
            let cmp = sync::compare(&ours, &store.without_pruned(&digest.seeds)?);
            let mut hellos = Vec::new();
            let mut envelopes = Vec::new();
            let mut authors = std::collections::BTreeSet::new();
            for seed in &cmp.to_send {
                // A private seed goes only to its audience; others could not open it anyway.
                if let Some(view) = store.seed(seed)?
                    && !view.seed.audience.is_empty()
                    && !view.seed.audience.contains(requester)
                    && &view.seed.publisher != requester
                {
                    continue;
                }
                for (sender, env) in store.seed_envelopes(seed)? {
                    if sender != self.inner.id
                        && authors.insert(sender.clone())
                        && let Some(hello) = store.peer_hello(&sender)?
                    {
                        hellos.push(hello);
                    }
                    envelopes.push(env);
                }
            }
            hellos.extend(envelopes);
            (cmp, hellos)
        };
        let (amount, cap) = if source.verified {
            (net.sync_budget_bytes, net.sync_budget_bytes)
        } else {
            let earned = (digest_bytes as u64).saturating_mul(net.sync_answer_ratio.into());
            (earned, u64::MAX)
        };
        let available =
            self.inner
                .sync_credit
                .earn(&source.from, amount, cap, std::time::Instant::now());
        let mut left = available;
        let mut queue: std::collections::VecDeque<Vec<u8>> = items.into();
        loop {
            // Room for the payload once the batch's own header and signatures are counted.
            let room = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .saturating_sub(envelope::OVERHEAD + BATCH_FRAME_SLACK);
            let batch = sync::next_batch(&mut queue, room, max_payload);
            if batch.items.is_empty() {
                break;
            }
            let frame = self.plain_frame(Kind::SyncBatch, &envelope::encode_hello(&batch), 60)?;
            if frame.len() as u64 > left {
                break;
            }
            left -= frame.len() as u64;
            replies.push(frame);
        }
        if cmp.peer_has_more && !digest.reply {
            let frame = self.digest_frame(true)?;
            if frame.len() as u64 <= left {
                left -= frame.len() as u64;
                replies.push(frame);
            }
        }
        if !queue.is_empty() {
            self.inner.rejections.count("sync.answers_over_budget");
        }
        self.inner
            .sync_credit
            .spend(&source.from, (available - left) as usize);
        Ok(())
    }

    /// Our sync digest as a signed envelope.
    fn digest_frame(&self, reply: bool) -> Result<Vec<u8>> {
        let seeds = lock(&self.inner.store).sync_digest(DIGEST_LIMIT)?;
        let digest = sync::Digest { reply, seeds };
        self.plain_frame(Kind::SyncDigest, &envelope::encode_hello(&digest), 60)
    }

    fn plain_frame(&self, kind: Kind, payload: &[u8], ttl_secs: u32) -> Result<Vec<u8>> {
        let header = Header {
            kind,
            sealed: false,
            sender: self.inner.id.clone(),
            message_id: MessageId::from_bytes(random_bytes()),
            timestamp: now_ms(),
            ttl_secs,
            lamport: 0,
        };
        envelope::build(
            &self.keys(),
            &header,
            payload,
            &[],
            self.inner.config.network.max_envelope_bytes,
            &mut envelope::os_rng,
        )
        .map_err(|e| Error::internal(format!("cannot build {} envelope: {e}", kind.name())))
    }

    fn receive_hello(
        &self,
        parsed: &envelope::Parsed<'_>,
        bytes: &[u8],
        from: &str,
        now: Millis,
        admission: &crate::store::Admission,
    ) -> Result<Acceptance> {
        let h = &parsed.header;
        if lock(&self.inner.store).is_known(&h.message_id)? {
            self.with_store(|s| s.count("hellos.duplicate"))?;
            return Ok(Acceptance::Ignore);
        }
        let hello = match parsed.hello() {
            Ok(hello) => hello,
            Err(e) => return self.reject(from, Some(h), RejectReason::Malformed, e.to_string()),
        };
        let identity = match PublicIdentity::from_parts(
            &hello.signing_public,
            &hello.kem_public,
            hello.key_epoch,
        ) {
            // Rotated keys: the id is that of the node's first keys (checked by its chain).
            Ok(mut i) if i.epoch > 1 => {
                i.node_id = h.sender.clone();
                i
            }
            Ok(i) => i,
            Err(e) => {
                return self.reject(
                    from,
                    Some(h),
                    RejectReason::Malformed,
                    format!("hello keys: {e}"),
                );
            }
        };
        if identity.node_id != h.sender {
            let detail = format!(
                "node id {} does not match its keys ({})",
                h.sender, identity.node_id
            );
            return self.reject(from, Some(h), RejectReason::KeyMismatch, detail);
        }
        if let Err(e) = parsed.verify(&identity.signing) {
            return self.reject(from, Some(h), RejectReason::BadSignature, e.to_string());
        }
        if let Err(verdict) = self.check_hello_epoch(&identity, &hello, from, h, now)? {
            return Ok(verdict);
        }
        let certificate = hello.certificate.as_deref();
        let admitted = self.with_store(|s| {
            self.inner
                .trust
                .admit_hello(&identity, certificate, h.timestamp, s, now)
        })?;
        if let Err(detail) = admitted {
            return self.reject(from, Some(h), RejectReason::NotAdmitted, detail);
        }
        let update = self.with_store(|s| {
            let update = s.upsert_peer(
                &identity,
                &hello.name,
                &hello.addresses,
                bytes,
                now,
                admission,
            )?;
            if matches!(update, PeerUpdate::New | PeerUpdate::Refreshed) {
                s.remember(&h.message_id, &h.sender, h.lamport, now, "hellos.accepted")?;
                self.inner.recent.insert(bytes);
            }
            if update == PeerUpdate::New {
                s.record_event(
                    now,
                    EventKind::PeerDiscovered {
                        node_id: identity.node_id.clone(),
                        name: hello.name.clone(),
                        addresses: hello.addresses.clone(),
                    },
                )?;
            }
            Ok(update)
        })?;
        match update {
            // Validly signed by the id's own signing key: not the relay's fault.
            PeerUpdate::KeyMismatch => self
                .reject(
                    from,
                    Some(h),
                    RejectReason::KeyMismatch,
                    "a known node id announced different keys".into(),
                )
                .map(|_| Acceptance::Ignore),
            PeerUpdate::New => {
                // Answer a new peer (that peer only) so that it learns our keys too, then
                // compare holdings.
                lock(&self.inner.hello_answers).push(hello.addresses.clone());
                self.inner.hello_wanted.notify_one();
                self.inner.sync_wanted.notify_one();
                Ok(Acceptance::Accept)
            }
            PeerUpdate::Refreshed => Ok(Acceptance::Accept),
            // Valid, but this node has no room for it (counted as `peers.refused`).
            PeerUpdate::Refused => Ok(Acceptance::Ignore),
        }
    }

    /// The peers this node has verified hellos from.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>> {
        self.blocking(|n| {
            Ok(lock(&n.inner.store)
                .peers()?
                .into_iter()
                .map(|p| PeerInfo {
                    fingerprint: p.identity.fingerprint().to_owned(),
                    node_id: p.identity.node_id,
                    name: p.name,
                    addresses: p.addresses,
                    key_epoch: p.identity.epoch,
                    first_seen: p.first_seen,
                    last_seen: p.last_seen,
                })
                .collect())
        })
        .await
    }

    /// Waits until at least `count` peers are known (their hellos arrived), or fails with
    /// [`ErrorKind::Network`] after `timeout`.
    pub async fn wait_for_peers(&self, count: usize, timeout: Duration) -> Result<Vec<PeerInfo>> {
        let now = tokio::time::Instant::now();
        // A timeout too large to represent means "no deadline" in practice (a year).
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
        loop {
            let peers = self.peers().await?;
            if peers.len() >= count {
                return Ok(peers);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Network,
                    format!(
                        "node {} knows {} peers after {timeout:?}, expected {count}",
                        self.inner.config.name,
                        peers.len()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The latest hello broadcast, rebuilt (not sent) when the transport's addresses changed
    /// since: peers answer a hello at the addresses it announces.
    fn latest_hello(
        &self,
        transport: &dyn Transport,
        cache: &mut Option<(Vec<String>, Vec<u8>)>,
    ) -> Option<Vec<u8>> {
        let addresses = transport.local_addresses();
        if cache.as_ref().is_none_or(|(a, _)| *a != addresses) {
            match self.hello_frame(&addresses) {
                Ok(frame) => {
                    *lock(&self.inner.addresses) = addresses.clone();
                    *cache = Some((addresses, frame));
                }
                Err(e) => tracing::warn!("cannot build hello: {e}"),
            }
        }
        cache.as_ref().map(|(_, frame)| frame.clone())
    }

    /// Builds the hello for the transport's current addresses (they can appear after start:
    /// libp2p listeners) and keys, broadcasts it with what follows a hello, and keeps it in
    /// `cache` for the answers to new peers.
    fn broadcast_hello(
        &self,
        transport: &mut dyn Transport,
        cache: &mut Option<(Vec<String>, Vec<u8>)>,
    ) {
        let addresses = transport.local_addresses();
        *lock(&self.inner.addresses) = addresses.clone();
        match self.hello_frame(&addresses) {
            Ok(frame) => {
                if let Err(e) = transport
                    .broadcast(&frame)
                    .and_then(|()| self.send_after_hello(transport, None))
                {
                    tracing::debug!("cannot send hello: {e}");
                }
                *cache = Some((addresses, frame));
            }
            Err(e) => tracing::warn!("cannot build hello: {e}"),
        }
    }

    /// Sends what follows a hello, the revocations and the key rotation statements this node
    /// holds: to every peer, or to the one that announced `to` (see
    /// [`Transport::send_to_announced`]).
    fn send_after_hello(&self, transport: &mut dyn Transport, to: Option<&[String]>) -> Result<()> {
        let mut frames = self.revocation_frames()?;
        frames.extend(self.rotation_frames()?);
        for frame in frames {
            match to {
                Some(to) => transport.send_to_announced(to, &frame)?,
                None => transport.broadcast(&frame)?,
            }
        }
        Ok(())
    }

    fn hello_frame(&self, addresses: &[String]) -> Result<Vec<u8>> {
        let identity = &self.keys();
        let hello = envelope::Hello {
            name: self.inner.config.name.clone(),
            addresses: addresses.to_vec(),
            key_epoch: identity.public().epoch,
            signing_public: identity.public().signing.to_bytes(),
            kem_public: identity.public().kem.to_bytes(),
            certificate: self.inner.trust.own_certificate(),
            rotations: self
                .inner
                .trust
                .rotation_chain(&self.inner.id)
                .into_iter()
                .map(serde_bytes::ByteBuf::from)
                .collect(),
        };
        let ttl = self
            .inner
            .config
            .network
            .hello_interval_secs
            .saturating_mul(4);
        self.plain_frame(Kind::NodeHello, &envelope::encode_hello(&hello), ttl)
    }

    /// The `revocations` envelopes sent after each hello: every revocation this node holds.
    fn revocation_frames(&self) -> Result<Vec<Vec<u8>>> {
        if self.inner.trust.stored_revocations() == 0 {
            return Ok(Vec::new());
        }
        let all = lock(&self.inner.store).revocations()?;
        let max_payload = self.inner.config.network.max_envelope_bytes - envelope::OVERHEAD;
        sync::pack(all, max_payload)
            .iter()
            .map(|list| self.plain_frame(Kind::Revocations, &envelope::encode_hello(list), 60))
            .collect()
    }

    /// Applies a peer's revocation list; each item is verified on its own (its signer, not the
    /// envelope's sender, vouches for it).
    fn receive_revocations(&self, list: &sync::Batch, now: Millis) -> Result<Acceptance> {
        for item in &list.items {
            let added = self.with_store(|s| self.inner.trust.add_revocation(item, s, now))?;
            match added {
                Ok(true) => self.with_store(|s| s.count("trust.revocations_added"))?,
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!("refused a revocation: {e}");
                    self.inner.rejections.count("trust.revocations_refused");
                }
            }
        }
        Ok(Acceptance::Accept)
    }

    /// This node's public keys (what `crabnet trust sign` certifies).
    pub fn public_identity(&self) -> PublicIdentity {
        self.keys().public().clone()
    }

    /// The trust policy in force: mode, anchors, this node's certificate, certified and
    /// revoked nodes.
    pub async fn trust_status(&self) -> Result<trust::TrustStatus> {
        self.blocking(|n| {
            n.inner.trust.refresh(&lock(&n.inner.store))?;
            Ok(n.inner.trust.status())
        })
        .await
    }

    /// Verifies and stores a revocation (signed by a configured anchor, or by a node about
    /// itself); a listening node applies it at once and sends it with its hellos. Returns
    /// whether it was new.
    pub async fn import_revocation(&self, bytes: Vec<u8>) -> Result<bool> {
        self.blocking(move |n| {
            let added = n.with_store(|s| n.inner.trust.add_revocation(&bytes, s, now_ms()))?;
            Ok(added?)
        })
        .await
    }

    /// Revokes this node's own keys from `from` (Unix ms) on: peers then refuse anything it
    /// signs dated at or after that time. Returns the signed revocation.
    pub async fn revoke_self(&self, from: Millis) -> Result<trust::Revocation> {
        self.blocking(move |n| {
            let mut randomness = [0u8; 32];
            envelope::os_rng(&mut randomness);
            let r = trust::Revocation::by_node(&n.keys(), from, now_ms(), randomness)?;
            n.with_store(|s| n.inner.trust.add_revocation(r.to_bytes(), s, now_ms()))??;
            Ok(r)
        })
        .await
    }

    /// Issues every decision this node owes as a publisher (see [`SeedView::due_decision`]):
    /// awards when bidding is due to close and, under rules 2, reassignments, failures and
    /// settlements when their deadlines have passed. Reads every undecided seed of ours, so it
    /// runs at start, when another process wrote to the store, and when the timer says a
    /// decision is due; it sets the timer to the next one.
    fn issue_due_decisions(&self) -> Result<()> {
        let now = now_ms();
        let timers = &self.inner.timers;
        // Reset before the query: a seed published meanwhile schedules itself again
        // (`commit_local_at`), whichever of the two comes first.
        timers.decide_at.store(u64::MAX, Ordering::Relaxed);
        lock(&timers.deciding).clear();
        let pending = lock(&self.inner.store).undecided_seeds_of(&self.inner.id)?;
        for view in pending {
            if !self.decide(&view, now) {
                self.schedule_decision(&view);
            }
        }
        Ok(())
    }

    /// [`Node::issue_due_decisions`] when the timer says a decision is due; no store access
    /// otherwise.
    fn issue_decisions_if_due(&self) -> Result<()> {
        if self.inner.timers.decide_at.load(Ordering::Relaxed) <= now_ms() {
            self.issue_due_decisions()?;
        }
        Ok(())
    }

    /// After a received message was applied (or deferred): when its seed is one of ours that
    /// owes decisions (or the message is our own, restored by sync), reads that seed alone,
    /// issues what is due at once (an award when `max_bids` bids are in) and moves the timer.
    /// Other messages cost nothing here.
    fn reschedule_decision(&self, message: &Message, now: Millis) -> Result<()> {
        let id = message.seed_id();
        let ours =
            message.sender == self.inner.id || lock(&self.inner.timers.deciding).contains(id);
        if !ours {
            return Ok(());
        }
        let Some(view) = lock(&self.inner.store).seed(id)? else {
            return Ok(());
        };
        if !self.decide(&view, now) {
            self.schedule_decision(&view);
        }
        Ok(())
    }

    /// Puts a seed of ours on the decision timer (or takes it off when it owes no more).
    fn schedule_decision(&self, view: &SeedView) {
        if view.seed.publisher != self.inner.id {
            return;
        }
        let timers = &self.inner.timers;
        let mut deciding = lock(&timers.deciding);
        match view.next_decision_at() {
            Some(at) => {
                deciding.insert(view.seed.id.clone());
                timers.decide_at.fetch_min(at, Ordering::Relaxed);
            }
            None => {
                deciding.remove(&view.seed.id);
            }
        }
    }

    /// Issues the decision due on `view` at `now`, if any; true when it did (the new state
    /// schedules itself through `commit_local_at`). Otherwise the caller schedules `view`: a
    /// decision that failed is then still due, and tried again on the next tick.
    fn decide(&self, view: &SeedView, now: Millis) -> bool {
        let Some(due) = view.due_decision(now) else {
            return false;
        };
        let id = view.seed.id.clone();
        let kind = due.kind();
        let result = self.commit_local(&id, |v| {
            let v = known(v, &id)?;
            // Another thread or process may have decided meanwhile.
            v.due_decision(now)
                .filter(|b| b.kind() == kind)
                .ok_or_else(|| Error::new(ErrorKind::State, "already decided"))
        });
        match result {
            Ok(_) => true,
            // Decided meanwhile: the next look reads the new state.
            Err(e) if e.kind() == ErrorKind::State => false,
            Err(e) => {
                tracing::warn!(seed = %id, "cannot issue the due {kind}: {e}");
                false
            }
        }
    }

    /// Background upkeep, on the `network.tick_ms` tick, doing store work only when something is
    /// due. Its duties, each with what makes it due:
    ///
    /// * decisions on seeds of ours ([`Node::issue_due_decisions`]): the decision timer
    ///   ([`SeedView::next_decision_at`]: a bid window ended, a rules-2 deadline passed), or
    ///   another process (a CLI command, a binding) committed to the database (checked with
    ///   SQLite's `data_version`, which costs no table read);
    /// * rejection counters and events, and held envelopes whose author's hello did not come in
    ///   time ([`Node::flush_rejections`]): counters waiting, or the oldest held envelope's
    ///   expiry;
    /// * retention ([`crate::retention::Retention::run_if_due`]): its own schedule,
    ///   `retention.interval_secs` (at once while work is left);
    /// * seen-id expiry: the earliest expiry;
    /// * revocations and rotations another process stored (`Trust::refresh`), and events it
    ///   recorded (to the bus and the log): the database changed;
    /// * switching to keys another process on this data directory rotated to
    ///   ([`Node::follow_own_rotation`]): the database changed, or this node's chain is ahead
    ///   of its keys (a switch that could not load the keys yet is tried again);
    /// * the outbox: the earliest retry, or the database changed (another process queued).
    ///
    /// An idle node only wakes on the tick; changes made through this node wake the tasks
    /// directly.
    async fn housekeeping(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick =
            tokio::time::interval(Duration::from_millis(self.inner.config.network.tick_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_version = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let now = now_ms();
            // Read on this thread when the store is free; when it is busy, wait for it off the
            // async thread (skipping the look would delay what another process wrote, e.g. a
            // revocation, behind frames that arrive meanwhile).
            let quick = self.inner.store.try_lock().ok().map(|s| s.data_version());
            let version = match quick {
                Some(v) => v,
                None => {
                    let node = self.clone();
                    tokio::task::spawn_blocking(move || lock(&node.inner.store).data_version())
                        .await
                        .unwrap_or_else(|e| Err(Error::internal(e.to_string())))
                }
            };
            let changed = match version {
                Ok(v) => last_version.replace(v) != Some(v),
                Err(e) => {
                    tracing::warn!("cannot read the database version: {e}");
                    true
                }
            };
            let timers = &self.inner.timers;
            let decide_due = timers.decide_at.load(Ordering::Relaxed) <= now;
            let prune_due = timers.prune_at.load(Ordering::Relaxed) <= now;
            let retry_due = timers.retry_at.load(Ordering::Relaxed) <= now;
            let retention_due = self.inner.retention.next_run_at() <= now;
            let held_due = self.inner.held.next_expiry().is_some_and(|at| at <= now);
            let rotation_due = self.behind_own_rotation();
            let rejections = !self.inner.rejections.is_idle() || held_due;
            if !(changed || decide_due || prune_due || rejections || retention_due || rotation_due)
            {
                if retry_due {
                    timers.retry_at.store(u64::MAX, Ordering::Relaxed);
                    self.inner.wake_outbox.notify_one();
                }
                continue;
            }
            let node = self.clone();
            let done = tokio::task::spawn_blocking(move || -> Result<()> {
                if changed || decide_due {
                    node.issue_due_decisions()?;
                }
                if rejections {
                    node.flush_rejections()?;
                }
                if retention_due
                    && let Err(e) = node.inner.retention.run_if_due(&node.inner.store, now)
                {
                    tracing::warn!("retention failed (retried in retention.interval_secs): {e}");
                }
                let mut store = lock(&node.inner.store);
                if prune_due {
                    store.prune_seen(now)?;
                    // The next expiry, but at least a second apart: expiries close together
                    // are pruned together.
                    let next = store.next_seen_expiry()?.unwrap_or(u64::MAX);
                    node.inner
                        .timers
                        .prune_at
                        .store(next.max(now.saturating_add(1000)), Ordering::Relaxed);
                }
                if changed {
                    // Revocations and rotations another process added (`crabnet trust
                    // import`, `revoke`, `rotate`), events it recorded.
                    node.inner.trust.refresh(&store)?;
                    node.pump_events(&store);
                }
                drop(store);
                if changed || rotation_due {
                    node.follow_own_rotation()?;
                }
                Ok(())
            })
            .await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("housekeeping failed: {e}"),
                Err(e) => tracing::error!("housekeeping task failed: {e}"),
            }
            if changed || retry_due {
                // Another process may have queued messages to send.
                timers.retry_at.store(u64::MAX, Ordering::Relaxed);
                self.inner.wake_outbox.notify_one();
            }
        }
    }

    /// Appends new events to the NDJSON log. Several processes may share a data directory: a
    /// file lock serializes writers and the cursor in the database says what is written.
    fn write_log(&self) -> Result<()> {
        let Some(log) = &self.inner.log else {
            return Ok(());
        };
        let lock_path = self.inner.config.data_dir.join("events.ndjson.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        file.lock()?;
        let mut store = lock(&self.inner.store);
        // The file may be ahead of the cursor if a process died between the two writes.
        let mut cursor = store.log_cursor()?.max(log.last_seq()?.unwrap_or(0));
        loop {
            let events = store.events_after(cursor, 1000)?;
            let Some(last) = events.last().map(|e| e.seq) else {
                break;
            };
            log.append(&events)?;
            store.set_log_cursor(last)?;
            cursor = last;
        }
        drop(store);
        file.unlock()?;
        Ok(())
    }

    async fn log_writer(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.inner.wake_log.notified() => {}
            }
            let node = self.clone();
            match tokio::task::spawn_blocking(move || node.write_log()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("cannot write the event log: {e}"),
                Err(e) => tracing::error!("event log task failed: {e}"),
            }
        }
    }

    async fn network_loop(
        self,
        mut transport: Box<dyn Transport>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut hello_tick = tokio::time::interval(Duration::from_secs(
            self.inner.config.network.hello_interval_secs as u64,
        ));
        *lock(&self.inner.addresses) = transport.local_addresses();
        // Hellos: one broadcast at start and one per interval. A new peer (a connection opened,
        // or a hello from an unknown node) gets the latest of them sent to it alone: a
        // broadcast would make every node verify one more hello per newcomer, and the same
        // bytes again cost a peer that has them only a lookup.
        let mut hello: Option<(Vec<String>, Vec<u8>)> = None;
        // After the first connection (when gossip can carry it), the hello is broadcast again:
        // the one at start reached nobody, and this is how the nodes that this node does not
        // connect to learn of it (they answer it, each to this node alone). The same bytes go
        // out a few times, in case the first attempt found no subscribed peer yet: a peer that
        // has them drops a copy after a lookup, and gossip does not send them twice.
        let mut joined = false;
        let mut join_hellos: Vec<tokio::time::Instant> = Vec::new();
        let mut sync_tick = tokio::time::interval(Duration::from_secs(
            self.inner.config.network.sync_interval_secs as u64,
        ));
        let mut sync_due: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(join_hellos.last().copied().unwrap_or_else(tokio::time::Instant::now)), if !join_hellos.is_empty() => {
                    join_hellos.pop();
                    if let Some(frame) = self.latest_hello(transport.as_ref(), &mut hello)
                        && let Err(e) = transport.broadcast(&frame).and_then(|()| self.send_after_hello(transport.as_mut(), None))
                    {
                        tracing::debug!("cannot send hello: {e}");
                    }
                }
                _ = hello_tick.tick() => self.broadcast_hello(transport.as_mut(), &mut hello),
                _ = self.inner.hello_wanted.notified() => {
                    let answers = std::mem::take(&mut *lock(&self.inner.hello_answers));
                    if let Some(frame) = self.latest_hello(transport.as_ref(), &mut hello) {
                        for to in answers {
                            if let Err(e) = transport.send_to_announced(&to, &frame).and_then(|()| self.send_after_hello(transport.as_mut(), Some(&to))) {
                                tracing::debug!("cannot answer a hello: {e}");
                            }
                        }
                    }
                }
                _ = sync_tick.tick() => sync_due = Some(tokio::time::Instant::now()),
                _ = self.inner.sync_wanted.notified() => {
                    // Give hellos a moment to cross first.
                    let at = tokio::time::Instant::now() + Duration::from_millis(100);
                    sync_due = Some(sync_due.map_or(at, |d| d.min(at)));
                }
                _ = tokio::time::sleep_until(sync_due.unwrap_or_else(tokio::time::Instant::now)), if sync_due.is_some() => {
                    sync_due = None;
                    let node = self.clone();
                    match tokio::task::spawn_blocking(move || node.digest_frame(false)).await {
                        Ok(Ok(frame)) => {
                            if let Err(e) = transport.sync(&frame) {
                                tracing::debug!("cannot send sync digest: {e}");
                            }
                        }
                        Ok(Err(e)) => tracing::warn!("cannot build sync digest: {e}"),
                        Err(e) => tracing::error!("sync task failed: {e}"),
                    }
                }
                _ = self.inner.hello_changed.notified() => self.broadcast_hello(transport.as_mut(), &mut hello),
                _ = shutdown.changed() => {
                    self.drain_outbox(transport.as_mut()).await;
                    return;
                }
                incoming = network::next(transport.as_mut()) => {
                    let frame = match incoming {
                        None => {
                            tracing::warn!("transport closed");
                            return;
                        }
                        Some(Incoming::Status(detail)) => {
                            let node = self.clone();
                            let name = transport.name().to_owned();
                            let _ = tokio::task::spawn_blocking(move || {
                                node.with_store(|s| {
                                    s.record_event(now_ms(), EventKind::TransportStatus { transport: name, detail })
                                })
                            })
                            .await;
                            continue;
                        }
                        Some(Incoming::Connected(to)) => {
                            if !joined {
                                joined = true;
                                let now = tokio::time::Instant::now();
                                // Latest first: the next one due is at the end.
                                join_hellos = JOIN_HELLO_DELAYS.iter().rev().map(|d| now + *d).collect();
                            }
                            if let Some(frame) = self.latest_hello(transport.as_ref(), &mut hello)
                                && let Err(e) = transport.send_to_announced(&to, &frame).and_then(|()| self.send_after_hello(transport.as_mut(), Some(&to)))
                            {
                                tracing::debug!("cannot send hello to a new connection: {e}");
                            }
                            continue;
                        }
                        Some(Incoming::Frame(frame)) => frame,
                    };
                    let max = transport.max_frame_bytes();
                    let InboundFrame { bytes, from, ack } = frame;
                    if let Err(rejection) = self.inner.gate.admit(&bytes, &from, max) {
                        // Refused before any blocking work: no transaction, no outbox scan.
                        let handled = self.refuse(rejection).await;
                        if let Some(ack) = ack {
                            let _ = ack.send(handled);
                        }
                        continue;
                    }
                    let node = self.clone();
                    let source = ingress::Source { verified: transport.source_verified(&from), from };
                    let res = tokio::task::spawn_blocking(move || {
                        let handled = node.receive_frame(&bytes, &source, max);
                        (handled, source.from)
                    })
                    .await;
                    let (res, from) = match res {
                        Ok((handled, from)) => (Ok(handled), from),
                        Err(e) => (Err(e), String::new()),
                    };
                    let handled = match res {
                        Ok(Ok(handled)) => handled,
                        Ok(Err(e)) => {
                            tracing::warn!("cannot apply received frame: {e}");
                            Handled { acceptance: Acceptance::Ignore, replies: Vec::new() }
                        }
                        Err(e) => {
                            tracing::error!("receive task failed: {e}");
                            Handled { acceptance: Acceptance::Ignore, replies: Vec::new() }
                        }
                    };
                    match ack {
                        // The transport forwards or drops the frame and carries the answers.
                        Some(ack) => {
                            let _ = ack.send(handled);
                        }
                        // Answers go to the requester only, never to every peer.
                        None => {
                            for frame in handled.replies {
                                if let Err(e) = transport.send_to(&from, &frame) {
                                    tracing::debug!("cannot send sync answer: {e}");
                                }
                            }
                        }
                    }
                    // Whatever the frame caused (an award, say) was committed through
                    // `commit_local`, which wakes the outbox: it goes out on the next turn.
                }
                _ = self.inner.wake_outbox.notified() => self.drain_outbox(transport.as_mut()).await,
            }
        }
    }

    /// Sends the outbox messages that are due, then schedules the next look: at once when
    /// there were more than one batch, else at the earliest retry (housekeeping wakes it).
    async fn drain_outbox(&self, transport: &mut dyn Transport) {
        let node = self.clone();
        let due = tokio::task::spawn_blocking(move || {
            lock(&node.inner.store).outbox_due(now_ms(), OUTBOX_BATCH)
        })
        .await;
        let items = match due {
            Ok(Ok(items)) => items,
            Ok(Err(e)) => {
                tracing::warn!("cannot read the outbox: {e}");
                return;
            }
            Err(e) => {
                tracing::error!("outbox task failed: {e}");
                return;
            }
        };
        let full = items.len() == OUTBOX_BATCH;
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            let sent = transport.broadcast(&item.envelope);
            results.push((item, sent));
        }
        let node = self.clone();
        let net = self.inner.config.network.clone();
        let _ = tokio::task::spawn_blocking(move || {
            node.with_store(|s| {
                let now = now_ms();
                for (item, sent) in results {
                    match sent {
                        Ok(()) => s.outbox_sent(item.seq, now)?,
                        Err(e) => {
                            let shift = item.attempts.min(20);
                            let delay = net
                                .retry_base_ms
                                .saturating_mul(1u64 << shift)
                                .min(net.retry_max_ms);
                            s.outbox_retry(item.seq, now + delay)?;
                            s.record_event(
                                now,
                                EventKind::SendFailed {
                                    message_id: item.message_id.clone(),
                                    detail: e.to_string(),
                                },
                            )?;
                        }
                    }
                }
                if let Some(at) = s.outbox_next_attempt()? {
                    node.inner.timers.retry_at.fetch_min(at, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .await;
        if full {
            self.inner.wake_outbox.notify_one();
        }
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

/// The refusal of a task this node's runner policy cannot serve, as an API error.
fn refusal(seed_id: &SeedId, e: Refusal) -> Error {
    Error::with_source(
        ErrorKind::Runner,
        format!("this node cannot serve seed {seed_id}: {e}"),
        e,
    )
}

/// What a transport is told about a rejected frame. Only what the bytes themselves prove
/// invalid (malformed, oversized, a bad signature, a hello whose id does not match its keys)
/// penalises the peer that sent it; failures that depend on this node's state (an author whose
/// hello it lacks, an expired or replayed envelope, a duplicate, a rule) may be relayed by an
/// honest peer and are ignored.
fn verdict(reason: RejectReason) -> Acceptance {
    match reason {
        RejectReason::Malformed
        | RejectReason::Oversized
        | RejectReason::BadSignature
        | RejectReason::KeyMismatch => Acceptance::Reject,
        RejectReason::Duplicate
        | RejectReason::UnknownSender
        | RejectReason::Replay
        | RejectReason::Expired
        | RejectReason::Rule
        | RejectReason::NotAdmitted
        | RejectReason::RateLimited
        | RejectReason::LamportAhead
        | RejectReason::RotatedKey => Acceptance::Ignore,
    }
}

/// How an envelope arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Directly from its author or a relay, now.
    Live,
    /// Inside a sync batch: possibly old.
    Sync,
}

/// Envelopes remembered in memory to recognise relayed copies without a transaction.
const RECENT_FRAMES: usize = 65_536;

/// Sync requesters whose credit is tracked at once.
const SYNC_REQUESTERS: usize = 4096;

/// Bytes a sync batch's envelope may add to its payload beyond [`envelope::OVERHEAD`].
const BATCH_FRAME_SLACK: usize = 16;

/// Most seeds listed in one digest (about 40 bytes each, so a digest fits one datagram).
const DIGEST_LIMIT: usize = 1200;

fn known<'a>(view: Option<&'a SeedView>, seed_id: &SeedId) -> Result<&'a SeedView> {
    view.ok_or_else(|| {
        Violation::UnknownSeed {
            seed_id: seed_id.clone(),
        }
        .into()
    })
}
