//! A node driven step by step, for the deterministic simulator (`tests/simulator.rs`): no
//! background task, no transport and no real timer. Whoever drives it hands it each received
//! frame ([`Driven::receive`]), collects what it sends ([`Driven::outbox`],
//! [`Driven::hello`], [`Driven::sync_query`] and the answers `receive` returns), and runs its
//! housekeeping at the time its clock says ([`Driven::tick`]); so a run is a pure function of
//! the order of those calls and of the clock. Every step goes through the code the network
//! and housekeeping tasks use: the gate and trust boundary, the outbox, the decision timer,
//! retention.

use std::sync::Arc;

use super::{Node, OUTBOX_BATCH, lock};
use crate::clock::Clock;
use crate::config::Config;
use crate::error::Result;
use crate::ingress;

/// The transport name a driven node reports (in [`Node::transport_name`] and its events).
pub(super) const TRANSPORT_NAME: &str = "driven";

/// The largest frame a driven node builds or accepts: the in-memory hub's.
const MAX_FRAME_BYTES: usize = crate::network::MemoryHub::MAX_FRAME_BYTES;

/// A [`Node`] without background tasks, moved forward only by the calls below (see the module
/// docs). Its rate limits and sync credit still count in real time: a simulation configures
/// them out of the way (`network.source_rate_per_sec`, `network.sync_budget_bytes`).
#[derive(Debug, Clone)]
pub struct Driven {
    node: Node,
}

impl Driven {
    /// Starts a driven node on `config` (its data directory may hold a node that stopped:
    /// a restart) whose time is `clock`. Like a node on a network, it takes the data
    /// directory's listen lock.
    pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<Driven> {
        let node = Node::start_inner(config, None, Some(clock), true).await?;
        Ok(Driven { node })
    }

    /// The node, for its API operations (`publish`, `bid`, `claim`, `run`, `settle`, reads).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Hands the node one frame received from `from` (any name, the same for every frame of
    /// one peer), through the receive gate and the trust boundary. Returns the frames it
    /// answers with, to be delivered to `from` alone (sync answers, and its hello when the
    /// frame was the hello of a new peer).
    pub fn receive(&self, bytes: &[u8], from: &str) -> Result<Vec<Vec<u8>>> {
        let node = &self.node;
        if let Err(rejection) = node
            .inner
            .gate
            .admit(bytes, from, MAX_FRAME_BYTES, node.now_ms())
        {
            node.record_rejection(rejection)?;
            return Ok(Vec::new());
        }
        let source = ingress::Source {
            from: from.to_owned(),
            verified: true,
        };
        node.open_answer_room(1);
        let mut replies = node
            .receive_frame(bytes, &source, MAX_FRAME_BYTES, &mut None)?
            .replies;
        // A new peer is answered with our hello, as the network task does (the driver sends
        // sync queries when it decides to).
        if node.inner.hello_answers.take_any() {
            let addresses = lock(&node.inner.addresses).clone();
            replies.push(node.hello_frame(&addresses)?);
        }
        Ok(replies)
    }

    /// Runs the housekeeping due at the clock's time: decisions this node owes as a publisher,
    /// held frames whose hold is over, rejection counters, retention, seen-id expiry.
    pub fn tick(&self) -> Result<()> {
        let now = self.node.now_ms();
        let due = self.node.due_duties(now, false);
        if due.any() {
            self.node.run_duties(now, &due)?;
        }
        Ok(())
    }

    /// The messages due in the outbox, marked as sent: to be broadcast to every peer.
    pub fn outbox(&self) -> Result<Vec<Vec<u8>>> {
        let now = self.node.now_ms();
        let mut frames = Vec::new();
        loop {
            let items = lock(&self.node.inner.store).outbox_due(now, OUTBOX_BATCH)?;
            let full = items.len() == OUTBOX_BATCH;
            let seqs: Vec<i64> = items.iter().map(|i| i.seq).collect();
            self.node
                .with_store(|s| s.outbox_settle(&seqs, &[], Vec::new(), now))?;
            frames.extend(items.into_iter().map(|i| i.envelope));
            if !full {
                return Ok(frames);
            }
        }
    }

    /// This node's hello (announcing `addresses`), as its network task broadcasts it.
    /// The node answers new peers with a hello announcing the same addresses.
    pub fn hello(&self, addresses: &[String]) -> Result<Vec<u8>> {
        *lock(&self.node.inner.addresses) = addresses.to_vec();
        self.node.hello_frame(addresses)
    }

    /// The first query of a sync exchange, as the network task sends it every
    /// `network.sync_interval_secs` (to be broadcast; the answers come back through
    /// [`Driven::receive`]); `None` while the node knows no peer.
    pub fn sync_query(&self) -> Result<Option<Vec<u8>>> {
        self.node.range_query_frame(MAX_FRAME_BYTES, true)
    }

    /// Stops the node ([`Node::stop`]); its data directory can then be started again.
    pub async fn stop(&self) -> Result<()> {
        self.node.stop().await
    }
}
