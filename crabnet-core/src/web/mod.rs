//! The monitoring HTTP API and live dashboard: read-only queries on a [`Node`] and its event
//! stream, served by axum.
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | liveness, store and transport status (never needs the token) |
//! | `GET /api/overview` | node identity, seed counts, recent seeds, peers, rejection counters |
//! | `GET /api/events` | durable events, paged (`since`, `limit`, `kind`), oldest first |
//! | `GET /api/events/stream` | the same events live, as server-sent events |
//! | `GET /api/topology` | this node, its peers (key fingerprints, last seen) and the links |
//! | `GET /api/seeds`, `GET /api/seeds/{id}` | seeds, newest first; one seed in full |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /api/openapi.json` | the OpenAPI document, generated from the handlers |
//! | `GET /`, `GET /assets/{file}` | the dashboard (any other path outside `/api/` serves it too) |
//!
//! The server binds `127.0.0.1:7980` by default. Binding a non-loopback address needs a bearer
//! token ([`WebConfig::token`]); with a token every route but `/health` requires
//! `Authorization: Bearer TOKEN` (or the cookie that `/?token=TOKEN` sets for browsers).
//! Without a token only loopback `Host` headers are accepted, so a web page elsewhere cannot
//! read the API through DNS rebinding. Only `GET` and `HEAD` are served (405 otherwise);
//! malformed paths, query values and request bodies get a 400 with a JSON error.
//!
//! [`serve`] speaks HTTP/1.1 and guards its descriptors and memory against slow or greedy
//! clients: a request head must arrive within [`WebConfig::header_timeout_secs`] (and fit in
//! 64 KiB), a kept-alive connection may wait [`WebConfig::idle_timeout_secs`] for its next
//! request, and at most [`WebConfig::max_connections`] connections are open, at most
//! [`WebConfig::max_connections_per_ip`] from one address. When a cap is reached, the
//! connection that has waited longest for a request is closed to make room; connections busy
//! with a response (such as event streams) are kept, and when all are busy a new connection
//! gets a 503.
//!
//! ```no_run
//! # async fn demo(node: crabnet_core::Node) -> crabnet_core::Result<()> {
//! use crabnet_core::web::{self, WebConfig};
//! let handle = web::serve(node, WebConfig::local(0)).await?;
//! println!("dashboard at {}", handle.url());
//! handle.shutdown().await?;
//! # Ok(()) }
//! ```

mod api;
mod assets;
pub(crate) mod config;
mod http;
mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::error::{Error, ErrorKind, Result};
use crate::node::Node;

pub use api::openapi;
pub use config::{
    DEFAULT_PORT, MAX_CONNECTIONS, MAX_HEADER_TIMEOUT_SECS, MAX_IDLE_TIMEOUT_SECS, MIN_TOKEN_CHARS,
    WebConfig,
};

/// Shared by every request of one server.
pub(crate) struct AppState {
    pub(crate) node: Node,
    pub(crate) token: Option<String>,
    pub(crate) assets_dir: Option<PathBuf>,
    pub(crate) streams: Arc<Semaphore>,
    pub(crate) max_streams: usize,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Keeps `shutdown` open for a router without a server (never signalled).
    _keep_open: Option<watch::Sender<bool>>,
    pub(crate) metrics: Arc<metrics::Metrics>,
}

/// The API and dashboard as an axum [`Router`](axum::Router), for embedders that mount it in
/// their own server. [`serve`] is the usual way to run it. Event streams of this router end
/// when the client leaves or the node stops. Timeouts and connection caps are the embedding
/// server's business: the router does not apply them.
pub fn router(node: Node, config: &WebConfig) -> Result<axum::Router> {
    config.validate()?;
    let (tx, rx) = watch::channel(false);
    Ok(build(node, config, rx, Some(tx)))
}

fn build(
    node: Node,
    config: &WebConfig,
    shutdown: watch::Receiver<bool>,
    keep_open: Option<watch::Sender<bool>>,
) -> axum::Router {
    let state = Arc::new(AppState {
        node,
        token: config.token.clone(),
        assets_dir: config.assets_dir.clone(),
        streams: Arc::new(Semaphore::new(config.max_streams)),
        max_streams: config.max_streams,
        shutdown,
        _keep_open: keep_open,
        metrics: Arc::default(),
    });
    http::wrap(api::routes(state.clone()), state)
}

impl Node {
    /// Starts the monitoring HTTP API and dashboard of this node (see [`crate::web`]); it
    /// runs until the returned handle is shut down or dropped.
    pub async fn serve_web(&self, config: WebConfig) -> Result<WebHandle> {
        serve(self.clone(), config).await
    }
}

/// Starts serving the API and dashboard of `node` on `config.bind` (in the current tokio
/// runtime). Fails with [`ErrorKind::Config`] for an invalid config (e.g. a non-loopback bind
/// without token) and [`ErrorKind::Io`] when the address cannot be bound.
pub async fn serve(node: Node, config: WebConfig) -> Result<WebHandle> {
    config.validate()?;
    if let Some(dir) = &config.assets_dir
        && !dir.is_dir()
    {
        return Err(Error::new(
            ErrorKind::Config,
            format!("web.assets_dir {} is not a directory", dir.display()),
        ));
    }
    let listener = listen(config.bind).map_err(|e| {
        Error::with_source(
            ErrorKind::Io,
            format!(
                "cannot bind the monitoring API to {}: {e} (choose another address with \
                 --http ADDR, or turn it off with --no-http)",
                config.bind
            ),
            e,
        )
    })?;
    let addr = listener.local_addr()?;
    let (tx, rx) = watch::channel(false);
    let app = build(node, &config, rx.clone(), None);
    let limits = http::ConnLimits {
        header_timeout: Duration::from_secs(config.header_timeout_secs),
        idle_timeout: Duration::from_secs(config.idle_timeout_secs),
        max_connections: config.max_connections,
        max_per_ip: config.max_connections_per_ip,
    };
    let task = tokio::spawn(http::serve(listener, app, limits, rx));
    Ok(WebHandle {
        addr,
        shutdown: tx,
        task: Some(task),
    })
}

/// Binds `addr` with a listen backlog of 1024 (tokio's default is 128), so that a burst of
/// connections waits for the accept loop instead of being dropped by the kernel.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A running monitoring server. Dropping it stops the server (without waiting);
/// [`WebHandle::shutdown`] stops it and waits.
#[derive(Debug)]
pub struct WebHandle {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl WebHandle {
    /// The bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The dashboard's URL, e.g. `http://127.0.0.1:7980/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops accepting connections, ends the event streams, and waits (at most 5 s) for open
    /// requests to finish.
    pub async fn shutdown(mut self) -> Result<()> {
        self.shutdown.send_replace(true);
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(Duration::from_secs(5), &mut task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(Error::with_source(
                ErrorKind::Io,
                format!("the monitoring API failed: {e}"),
                e,
            )),
            Ok(Err(e)) => Err(Error::new(
                ErrorKind::Internal,
                format!("the monitoring API task failed: {e}"),
            )),
            Err(_) => {
                task.abort();
                Ok(())
            }
        }
    }
}

impl Drop for WebHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}
