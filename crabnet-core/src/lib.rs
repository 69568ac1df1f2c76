//! Crabnet: a peer-to-peer compute-task marketplace node, as an embeddable library.
//!
//! A node publishes a *seed* (a shell command with a price range, a bid window and a bid
//! limit); other nodes *bid*; the publisher's node closes bidding and names the winner; the
//! winner *claims* the seed, *runs* it locally and reports a [`model::TaskResult`]; the
//! publisher *settles*. Every change is one database transaction that also records its events
//! and an outbox row, and travels to other nodes as a message.
//!
//! Start with [`node::Node`] (async) or [`embed::BlockingNode`] (blocking, owns its runtime).
//! The rules that make replicas converge are in [`state`] and in `docs/PROTOCOL.md`.
//!
//! ```no_run
//! # async fn demo() -> crabnet_core::Result<()> {
//! use crabnet_core::{Config, Node, PublishRequest};
//! // A private temporary data directory (a service keeps one of its own).
//! let dir = tempfile::tempdir()?;
//! let node = Node::start(Config::with_data_dir(dir.path())).await?;
//! let seed = node.publish(PublishRequest::new("echo hello")).await?;
//! println!("published {}", seed.seed.id);
//! node.stop().await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

/// Implements `Display` for types with an `as_str(&self) -> &'static str` name: the name.
macro_rules! display_as_str {
    ($($name:ty),+) => {$(
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // `pad`, not `write_str`: width and alignment (`{:<9}`) apply.
                f.pad(self.as_str())
            }
        }
    )+};
}
pub(crate) use display_as_str;

pub mod alerts;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod embed;
pub mod envelope;
pub mod error;
mod heap;
pub mod identity;
mod ingress;
mod keycache;
pub mod logging;
pub mod model;
pub mod monitor;
pub mod network;
pub mod node;
pub mod perf;
mod ratelimit;
pub mod reputation;
pub mod retention;
pub mod rotation;
pub mod runner;
pub mod sandbox;
pub mod schema;
pub mod state;
pub mod store;
pub mod sync;
pub mod trust;
pub mod web;

pub use config::Config;
pub use embed::{BlockingNode, BlockingSubscription, BlockingWebHandle, NetworkSpec};
pub use error::{Error, ErrorKind, Result};
pub use model::{NodeId, SeedId, SeedStatus};
pub use monitor::{Event, EventKind, Subscription};
pub use network::{MemoryHub, Transport};
pub use node::{Node, Overview, PeerInfo, PublishRequest};
pub use state::SeedView;

/// Locks `m`, also when a thread panicked while holding it (the poison is ignored).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
