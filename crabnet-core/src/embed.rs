//! The blocking facade: a [`BlockingNode`] owns its own tokio runtime so that callers without
//! one (the C ABI, Python, scripts) drive a node with plain function calls. No runtime juggling
//! is left to those layers, and nothing in them holds domain logic.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{SeedId, SeedStatus};
use crate::monitor::{Event, Subscription};
use crate::network::Transport;
use crate::node::{Node, Overview, PublishRequest};
use crate::state::SeedView;

/// A node driven by blocking calls. Every method may be called from any thread.
#[derive(Debug)]
pub struct BlockingNode {
    runtime: Arc<tokio::runtime::Runtime>,
    node: Node,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("crabnet")
        .enable_all()
        .build()
        .map_err(|e| {
            Error::with_source(ErrorKind::Internal, format!("cannot start runtime: {e}"), e)
        })
}

impl BlockingNode {
    /// Starts a node without a network (see [`Node::start`]).
    pub fn start(config: Config) -> Result<Self> {
        let runtime = Arc::new(runtime()?);
        let node = runtime.block_on(Node::start(config))?;
        Ok(BlockingNode { runtime, node })
    }

    /// Starts a node with a transport (see [`Node::start_with_transport`]).
    pub fn start_with_transport(config: Config, transport: Box<dyn Transport>) -> Result<Self> {
        let runtime = Arc::new(runtime()?);
        let node = runtime.block_on(Node::start_with_transport(config, transport))?;
        Ok(BlockingNode { runtime, node })
    }

    /// The async node inside, for callers that mix both styles.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// See [`Node::stop`].
    pub fn stop(&self) -> Result<()> {
        self.runtime.block_on(self.node.stop())
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

    /// See [`Node::events_after`].
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.runtime.block_on(self.node.events_after(after, limit))
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
            && let Err(e) = self.runtime.block_on(self.node.stop())
        {
            tracing::warn!("stopping node on drop failed: {e}");
        }
    }
}

/// A subscription read with blocking calls.
#[derive(Debug)]
pub struct BlockingSubscription {
    runtime: Arc<tokio::runtime::Runtime>,
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
