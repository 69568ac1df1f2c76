//! The blocking facade: a [`BlockingNode`] owns its own tokio runtime so that callers without
//! one (the C ABI, Python, scripts) drive a node with plain function calls. No runtime juggling
//! is left to those layers, and nothing in them holds domain logic.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::Config;
use crate::demo::{DemoOptions, DemoReport};
use crate::error::{Error, ErrorKind, Result};
use crate::lock;
use crate::model::{SeedId, SeedStatus};
use crate::monitor::{Event, Subscription};
use crate::network::{DhtConfig, MemoryHub, Transport, UdpConfig, UdpTransport};
use crate::node::{Node, Overview, PublishRequest};
use crate::state::SeedView;
use crate::web::{WebConfig, WebHandle};

/// A node driven by blocking calls. Every method may be called from any thread.
///
/// Event listeners ([`BlockingNode::add_listener`]) run on one dedicated thread owned by the
/// node, never while an internal lock is held, so a listener may call back into the node (also
/// to add or remove listeners). [`BlockingNode::stop`] delivers the last events, waits for
/// the listener in progress, and no listener runs after it returns.
pub struct BlockingNode {
    runtime: Arc<NodeRuntime>,
    node: Node,
    listeners: Arc<Listeners>,
}

impl std::fmt::Debug for BlockingNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingNode")
            .field("node", &self.node)
            .finish()
    }
}

/// A listener callback.
pub type Listener = Arc<dyn Fn(&Event) + Send + Sync>;

/// Identifies a listener for [`BlockingNode::remove_listener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerId(pub u64);

struct Listeners {
    /// Tells this node's events thread from any other (see [`EVENTS_THREAD_OF`]).
    uid: u64,
    next: AtomicU64,
    map: Mutex<BTreeMap<u64, Listener>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    closing: AtomicBool,
}

impl Default for Listeners {
    fn default() -> Self {
        static NEXT_UID: AtomicU64 = AtomicU64::new(1);
        Listeners {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            next: AtomicU64::default(),
            map: Mutex::default(),
            thread: Mutex::default(),
            closing: AtomicBool::default(),
        }
    }
}

thread_local! {
    /// On an events thread: the `uid` of the [`Listeners`] it serves (0 elsewhere).
    ///
    /// A plain `const` cell, not `std::thread::current()`: that allocates a thread handle on
    /// first use, and on a host's thread not started by Rust (the main thread of a C program)
    /// nothing frees it, which memory checkers report as a leak.
    static EVENTS_THREAD_OF: Cell<u64> = const { Cell::new(0) };
}

/// The tokio runtime of a [`BlockingNode`] (shared with its web handles and subscriptions).
/// Dropping it ends every task of the node (libp2p's timers, which run on this runtime,
/// included), and then stops libp2p's timer thread if a timer made outside any runtime started
/// it and none is left ([`crate::network::stop_timer_thread`]), so that a host which stopped
/// and freed its nodes runs no thread of Crabnet's any more.
#[derive(Debug)]
struct NodeRuntime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for NodeRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("the runtime is taken only on drop")
    }
}

impl Drop for NodeRuntime {
    fn drop(&mut self) {
        // Waits for the worker threads, which drop the tasks (and libp2p's timers) first.
        drop(self.0.take());
        crate::network::stop_timer_thread();
    }
}

fn runtime() -> Result<NodeRuntime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("crabnet")
        .enable_all()
        .build()
        .map(|r| NodeRuntime(Some(r)))
        .map_err(|e| {
            Error::with_source(ErrorKind::Internal, format!("cannot start runtime: {e}"), e)
        })
}

impl BlockingNode {
    /// Starts a node without a network (see [`Node::start`]).
    pub fn start(config: Config) -> Result<Self> {
        let runtime = Arc::new(runtime()?);
        let node = runtime.block_on(Node::start(config))?;
        Ok(Self::wrap(runtime, node))
    }

    /// Starts a node on the network described by `network`.
    pub fn start_on(config: Config, network: NetworkSpec) -> Result<Self> {
        let runtime = Arc::new(runtime()?);
        let node = runtime.block_on(async move {
            match network {
                NetworkSpec::Offline => Node::start(config).await,
                NetworkSpec::Memory { hub, name } => {
                    Node::start_with_transport(config, Box::new(hub.join(&name))).await
                }
                NetworkSpec::Udp(udp) => {
                    let transport = UdpTransport::bind(udp)?;
                    Node::start_with_transport(config, Box::new(transport)).await
                }
                NetworkSpec::Dht(dht) => Node::start_with_dht(config, dht).await,
            }
        })?;
        Ok(Self::wrap(runtime, node))
    }

    /// Starts a node with a transport (see [`Node::start_with_transport`]).
    pub fn start_with_transport(config: Config, transport: Box<dyn Transport>) -> Result<Self> {
        let runtime = Arc::new(runtime()?);
        let node = runtime.block_on(Node::start_with_transport(config, transport))?;
        Ok(Self::wrap(runtime, node))
    }

    fn wrap(runtime: Arc<NodeRuntime>, node: Node) -> Self {
        BlockingNode {
            runtime,
            node,
            listeners: Arc::default(),
        }
    }

    /// Adds a listener called with every event from now on, on the node's events thread.
    /// Fails with [`ErrorKind::Stopped`] after [`BlockingNode::stop`].
    pub fn add_listener(&self, listener: Listener) -> Result<ListenerId> {
        if self.node.is_stopped() || self.listeners.closing.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Stopped, "the node has been stopped"));
        }
        let id = self.listeners.next.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&self.listeners.map).insert(id, listener);
        let mut thread = lock(&self.listeners.thread);
        if thread.is_none() {
            let mut sub = self.node.subscribe();
            let runtime = self.runtime.clone();
            let listeners = self.listeners.clone();
            let handle = std::thread::Builder::new()
                .name("crabnet-events".into())
                .spawn(move || {
                    EVENTS_THREAD_OF.with(|c| c.set(listeners.uid));
                    loop {
                        let next = runtime.block_on(async {
                            tokio::time::timeout(Duration::from_millis(50), sub.recv()).await
                        });
                        let event = match next {
                            Ok(Some(e)) => e,
                            Ok(None) => return,
                            Err(_) if listeners.closing.load(Ordering::SeqCst) => return,
                            Err(_) => continue,
                        };
                        // Call outside the lock: listeners may add or remove listeners.
                        let current: Vec<Listener> =
                            lock(&listeners.map).values().cloned().collect();
                        for l in current {
                            let call = std::panic::AssertUnwindSafe(|| l(&event));
                            if std::panic::catch_unwind(call).is_err() {
                                tracing::error!(
                                    event = event.kind.name(),
                                    "an event listener panicked"
                                );
                            }
                        }
                    }
                })
                .map_err(|e| {
                    Error::with_source(
                        ErrorKind::Internal,
                        format!("cannot start the events thread: {e}"),
                        e,
                    )
                })?;
            *thread = Some(handle);
        }
        Ok(ListenerId(id))
    }

    /// Removes a listener; returns whether it was registered. Safe to call from inside a
    /// listener; an event already being delivered may still reach it.
    pub fn remove_listener(&self, id: ListenerId) -> bool {
        lock(&self.listeners.map).remove(&id.0).is_some()
    }

    /// Stops the events thread after it delivered every event published so far.
    fn close_listeners(&self) {
        self.listeners.closing.store(true, Ordering::SeqCst);
        let thread = lock(&self.listeners.thread).take();
        if let Some(handle) = thread {
            if EVENTS_THREAD_OF.with(Cell::get) == self.listeners.uid {
                // Called from a listener: the thread ends after this callback returns.
                return;
            }
            if handle.join().is_err() {
                tracing::error!("an event listener panicked");
            }
        }
        lock(&self.listeners.map).clear();
    }

    /// The async node inside, for callers that mix both styles.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// See [`Node::stop`]; also ends listener delivery (see the type docs).
    pub fn stop(&self) -> Result<()> {
        let stopped = self.runtime.block_on(self.node.stop());
        self.close_listeners();
        stopped
    }

    /// See [`Node::rotate_keys`]; returns what the statement says.
    pub fn rotate_keys(&self) -> Result<crate::rotation::RotationInfo> {
        self.runtime
            .block_on(self.node.rotate_keys())
            .map(|r| r.info())
    }

    /// See [`Node::publish`].
    pub fn publish(&self, req: PublishRequest) -> Result<SeedView> {
        self.runtime.block_on(self.node.publish(req))
    }

    /// See [`Node::bid`].
    pub fn bid(&self, seed_id: &SeedId, price: u64) -> Result<SeedView> {
        self.runtime.block_on(self.node.bid(seed_id, price))
    }

    /// See [`Node::claim`].
    pub fn claim(&self, seed_id: &SeedId) -> Result<SeedView> {
        self.runtime.block_on(self.node.claim(seed_id))
    }

    /// See [`Node::run`].
    pub fn run(&self, seed_id: &SeedId) -> Result<SeedView> {
        self.runtime.block_on(self.node.run(seed_id))
    }

    /// See [`Node::settle`].
    pub fn settle(&self, seed_id: &SeedId, accept: bool, note: &str) -> Result<SeedView> {
        self.runtime
            .block_on(self.node.settle(seed_id, accept, note))
    }

    /// See [`Node::cancel`].
    pub fn cancel(&self, seed_id: &SeedId) -> Result<SeedView> {
        self.runtime.block_on(self.node.cancel(seed_id))
    }

    /// See [`Node::reassign`].
    pub fn reassign(&self, seed_id: &SeedId) -> Result<SeedView> {
        self.runtime.block_on(self.node.reassign(seed_id))
    }

    /// See [`Node::seed`].
    pub fn seed(&self, seed_id: &SeedId) -> Result<SeedView> {
        self.runtime.block_on(self.node.seed(seed_id))
    }

    /// See [`Node::seeds`].
    pub fn seeds(&self, status: Option<SeedStatus>) -> Result<Vec<SeedView>> {
        self.runtime.block_on(self.node.seeds(status))
    }

    /// See [`Node::overview`].
    pub fn overview(&self) -> Result<Overview> {
        self.runtime.block_on(self.node.overview())
    }

    /// See [`Node::peers`].
    pub fn peers(&self) -> Result<Vec<crate::node::PeerInfo>> {
        self.runtime.block_on(self.node.peers())
    }

    /// See [`Node::wait_for_peers`].
    pub fn wait_for_peers(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<crate::node::PeerInfo>> {
        self.runtime
            .block_on(self.node.wait_for_peers(count, timeout))
    }

    /// See [`Node::events_after`].
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.runtime.block_on(self.node.events_after(after, limit))
    }

    /// See [`Node::events_pruned_through`].
    pub fn events_pruned_through(&self) -> Result<u64> {
        self.runtime.block_on(self.node.events_pruned_through())
    }

    /// Starts the monitoring HTTP API and dashboard of this node (see [`Node::serve_web`]) on
    /// the node's runtime. It serves until the returned handle is shut down or dropped; after
    /// [`BlockingNode::stop`] it keeps answering, `/health` with 503.
    pub fn serve_web(&self, config: WebConfig) -> Result<BlockingWebHandle> {
        let inner = self.runtime.block_on(self.node.serve_web(config))?;
        Ok(BlockingWebHandle {
            runtime: self.runtime.clone(),
            addr: inner.local_addr(),
            inner: Some(inner),
        })
    }

    /// Subscribes to events from now on.
    pub fn subscribe(&self) -> BlockingSubscription {
        BlockingSubscription {
            runtime: self.runtime.clone(),
            inner: self.node.subscribe(),
        }
    }
}

impl Drop for BlockingNode {
    fn drop(&mut self) {
        if !self.node.is_stopped()
            && let Err(e) = self.stop()
        {
            tracing::warn!("stopping node on drop failed: {e}");
        }
        self.close_listeners();
    }
}

/// Which network a [`BlockingNode`] joins.
#[derive(Debug, Clone)]
pub enum NetworkSpec {
    /// None: operations wait in the outbox for a listening node on the same data directory.
    Offline,
    /// An in-process hub shared with other nodes of this process.
    Memory {
        /// The hub.
        hub: MemoryHub,
        /// This member's name on the hub.
        name: String,
    },
    /// UDP unicast to configured peers.
    Udp(UdpConfig),
    /// libp2p (gossipsub, Kademlia, identify, request-response, optional mDNS).
    Dht(DhtConfig),
}

/// Runs the demo network (see [`crate::demo::run`]) with a runtime of its own.
pub fn run_demo(opts: &DemoOptions, say: &mut (dyn FnMut(String) + Send)) -> Result<DemoReport> {
    runtime()?.block_on(crate::demo::run(opts, say))
}

/// A running monitoring API started by [`BlockingNode::serve_web`]. Dropping it shuts the
/// server down without waiting; [`BlockingWebHandle::shutdown`] waits.
pub struct BlockingWebHandle {
    runtime: Arc<NodeRuntime>,
    addr: std::net::SocketAddr,
    inner: Option<WebHandle>,
}

impl std::fmt::Debug for BlockingWebHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingWebHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

impl BlockingWebHandle {
    /// The bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The dashboard's URL, e.g. `http://127.0.0.1:7980/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops accepting connections, ends the event streams, and waits (at most 5 s) for open
    /// requests to finish (see [`WebHandle::shutdown`]). Calling it again does nothing.
    pub fn shutdown(&mut self) -> Result<()> {
        match self.inner.take() {
            Some(inner) => self.runtime.block_on(inner.shutdown()),
            None => Ok(()),
        }
    }
}

/// A subscription read with blocking calls.
#[derive(Debug)]
pub struct BlockingSubscription {
    runtime: Arc<NodeRuntime>,
    inner: Subscription,
}

impl BlockingSubscription {
    /// Waits up to `timeout` for the next event. `Ok(None)` on timeout; an error of kind
    /// [`ErrorKind::Stopped`] once the node is gone and every event was read.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Event>> {
        let inner = &mut self.inner;
        match self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, inner.recv()).await })
        {
            Ok(Some(e)) => Ok(Some(e)),
            Ok(None) => Err(Error::new(ErrorKind::Stopped, "the node has been stopped")),
            Err(_) => Ok(None),
        }
    }
}
