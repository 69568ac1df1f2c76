//! HTTP plumbing: JSON errors, strict extractors, the middleware that enforces the rules
//! every route shares (methods, bodies, hosts, the bearer token, panics, headers), and the
//! connection loop with its timeouts and caps.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures::FutureExt;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;
use utoipa::ToSchema;

use super::AppState;
use crate::error::{Error, ErrorKind};
use crate::lock;

/// Name of the cookie that carries the token for browsers.
pub(crate) const TOKEN_COOKIE: &str = "crabnet_token";

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong.
    pub(crate) error: ErrorDetail,
}

/// An error's details.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// The HTTP status code.
    pub(crate) status: u16,
    /// A stable name: an error kind of the core (`validation`, `not_found`, `stopped`,
    /// `store`, ...) or an HTTP one (`unauthorized`, `forbidden`, `method_not_allowed`,
    /// `unavailable`).
    pub(crate) kind: String,
    /// A human-readable explanation.
    pub(crate) message: String,
}

/// An error answered as JSON.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "validation", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match e.kind() {
            ErrorKind::Validation => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Stopped | ErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!("monitoring API: {e}");
        }
        ApiError {
            status,
            kind: e.kind().as_str(),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                status: self.status.as_u16(),
                kind: self.kind.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"crabnet\""),
                );
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            _ => {}
        }
        response
    }
}

/// `Query<T>` whose failures are 400 JSON errors.
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(q) => Ok(ApiQuery(q.0)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// `Path<T>` whose failures are 400 JSON errors.
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(p) => Ok(ApiPath(p.0)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Adds the shared rules around `router`.
pub(crate) fn wrap(router: Router, state: Arc<AppState>) -> Router {
    router
        .layer(middleware::from_fn_with_state(state, guard))
        .layer(middleware::from_fn(outer))
}

/// Panics become 500 JSON errors; every response gets the security headers.
async fn outer(req: Request, next: Next) -> Response {
    let mut response = match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!("monitoring API handler panicked: {what}");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request handler failed",
            )
            .into_response()
        }
    };
    let headers = response.headers_mut();
    let set = |h: &mut HeaderMap, name, value: &'static str| {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    };
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::CACHE_CONTROL, "no-store");
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    );
    response
}

/// Methods, bodies, hosts and the token.
async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "{} is not allowed: the monitoring API is read-only (GET and HEAD)",
                req.method()
            ),
        )
        .into_response();
    }
    let headers = req.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || match headers.get(header::CONTENT_LENGTH) {
            None => false,
            Some(v) => v.to_str().ok().and_then(|v| v.parse::<u64>().ok()) != Some(0),
        };
    if has_body {
        return ApiError::bad_request("requests to the monitoring API take no body")
            .into_response();
    }
    let path = req.uri().path();
    match &state.token {
        None => {
            if let Some(host) = headers.get(header::HOST)
                && !loopback_host(host)
            {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "without a token the monitoring API answers only requests addressed to a \
                     loopback host (127.0.0.1, [::1] or localhost)",
                )
                .into_response();
            }
        }
        Some(token) if path != "/health" => {
            if !authorized(headers, token) {
                // A browser opens `/?token=TOKEN` once; the cookie carries it from then on.
                if let Some(response) = token_login(&req, token) {
                    return response;
                }
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this monitoring API needs its token: send `Authorization: Bearer TOKEN`, \
                     or open /?token=TOKEN in a browser",
                )
                .into_response();
            }
        }
        Some(_) => {}
    }
    next.run(req).await
}

/// Whether the `Host` header names a loopback address or `localhost` (any port).
fn loopback_host(host: &HeaderValue) -> bool {
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((ip, _)) => ip,
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (scheme, value) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| value.trim())
        })
        .any(|v| same(v, token));
    bearer
        || headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(name, value)| name == TOKEN_COOKIE && same(value, token))
}

/// For a dashboard page opened with the right `?token=`: a redirect to the same path that
/// sets the cookie (so the token leaves the address bar and the history).
fn token_login(req: &Request, token: &str) -> Option<Response> {
    let path = req.uri().path();
    if path.starts_with("/api/") || path == "/api" || path == "/metrics" {
        return None;
    }
    let given = query_param(req.uri(), "token")?;
    if !same(&given, token) {
        return None;
    }
    let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
    // One leading slash: `//host` would send the browser elsewhere.
    let location = format!("/{}", path.trim_start_matches('/'));
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_str(&location).ok()?);
    headers.insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).ok()?);
    Some(response)
}

fn query_param(uri: &axum::http::Uri, key: &str) -> Option<String> {
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri).ok()?;
    pairs.0.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Compares secrets in time that depends only on their lengths.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------------------------------------
// Connections: the server's own accept loop, with timeouts and connection caps, so that slow or
// greedy clients cannot hold descriptors and memory.

/// Largest request head (request line and headers) a connection may buffer.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How [`serve`] treats connections (from [`WebConfig`](super::WebConfig)).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// Time to send a complete request head: from the connection's start, or from the first
    /// byte of a later request on a kept-alive connection.
    pub(crate) header_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request; also how long a response
    /// may stay blocked on a client that does not read it.
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_per_ip: usize,
}

/// Serves `app` on `listener` until `stop` turns true (or its sender goes away), then stops
/// accepting, lets open requests finish (event streams end on the same signal) and returns.
///
/// When a cap (total, or per source address) is reached, the connection that has waited
/// longest for a request (idle, or with an incomplete request head) is closed to make room;
/// when every connection is busy with a response, the new one gets a 503 and is closed.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry {
        limits,
        open: Mutex::new(Open::default()),
    });
    let mut tasks = JoinSet::new();
    let mut stopping = stop.clone();
    let mut warned: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = async { stopping.wait_for(|s| *s).await.map(|_| ()) } => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match registry.admit(peer.ip()) {
                    Some(slot) => {
                        tasks.spawn(serve_connection(stream, app.clone(), slot, stop.clone()));
                    }
                    None => refuse(stream),
                },
                Err(e) if connection_error(&e) => {}
                Err(e) => {
                    // Out of descriptors or memory: say so now and then, and let the backlog
                    // wait instead of spinning.
                    if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!("monitoring API cannot accept connections: {e}");
                        warned = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

fn connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionRefused | K::ConnectionAborted | K::ConnectionReset
    )
}

/// Answers a connection over the caps with a 503 (if the socket takes it at once) and closes it.
fn refuse(stream: TcpStream) {
    let body = serde_json::to_string(&ErrorBody {
        error: ErrorDetail {
            status: 503,
            kind: "unavailable".into(),
            message: "too many connections are open: try again later".into(),
        },
    })
    .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\ncache-control: no-store\r\n\
         x-content-type-options: nosniff\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
    tracing::debug!("monitoring API: refused a connection (too many open)");
}

/// Serves one connection until it ends, times out, is evicted or the server stops.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    slot: Slot,
    mut stop: watch::Receiver<bool>,
) {
    let conn = slot.conn.clone();
    let limits = slot.registry.limits;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(Watched {
        inner: stream,
        conn: conn.clone(),
    });
    let service = ConnService {
        app,
        conn: conn.clone(),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.max_buf_size(MAX_HEAD_BYTES);
    let served = builder.serve_connection(io, service);
    let mut served = std::pin::pin!(served);
    let mut stopping = false;
    loop {
        let deadline = conn.deadline(&limits);
        if deadline.is_some_and(|d| d <= Instant::now()) {
            tracing::debug!("monitoring API: closed a connection ({})", conn.why());
            break;
        }
        let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(far_future));
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("monitoring API connection: {e}");
                }
                break;
            }
            _ = conn.wake.notified() => {}
            _ = sleep, if deadline.is_some() => {}
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) }, if !stopping => {
                served.as_mut().graceful_shutdown();
                stopping = true;
            }
        }
    }
    // Dropping `served` closes the socket; dropping `slot` frees the place.
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// The open connections, for the caps and eviction.
struct Registry {
    limits: ConnLimits,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    /// By id, that is by age.
    conns: BTreeMap<u64, Arc<Conn>>,
    /// Connections per source (not counting evicted ones).
    per_source: HashMap<IpAddr, usize>,
    /// Evicted connections whose tasks have not ended yet.
    evicting: usize,
}

impl Registry {
    /// A place for a new connection from `ip`, made by evicting a waiting connection if a cap
    /// is reached; `None` when there is none to evict.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let source = source_key(ip);
        let limits = &self.limits;
        let mut open = lock(&self.open);
        // Evicted connections close within moments; never hold more than twice the cap.
        if open.conns.len() >= limits.max_connections.saturating_mul(2) {
            return None;
        }
        let from_source = open.per_source.get(&source).copied().unwrap_or(0);
        let source_full = from_source >= limits.max_per_ip;
        let all_full = open.conns.len() - open.evicting >= limits.max_connections;
        if source_full || all_full {
            let victim = open
                .conns
                .values()
                .filter(|c| !source_full || c.source == source)
                .filter_map(|c| c.waiting_since().map(|t| (t, c)))
                .min_by_key(|(t, _)| *t)
                .map(|(_, c)| c.clone())?;
            victim.evict();
            open.evicting += 1;
            if let Some(n) = open.per_source.get_mut(&victim.source) {
                *n -= 1;
                if *n == 0 {
                    open.per_source.remove(&victim.source);
                }
            }
        }
        let id = open.next_id;
        open.next_id += 1;
        let conn = Arc::new(Conn {
            id,
            source,
            activity: Mutex::new(Activity::new()),
            wake: Notify::new(),
        });
        open.conns.insert(id, conn.clone());
        *open.per_source.entry(source).or_insert(0) += 1;
        Some(Slot {
            registry: self.clone(),
            conn,
        })
    }

    fn remove(&self, conn: &Conn) {
        let mut open = lock(&self.open);
        if open.conns.remove(&conn.id).is_none() {
            return;
        }
        if conn.evicted() {
            open.evicting -= 1;
        } else if let Some(n) = open.per_source.get_mut(&conn.source) {
            *n -= 1;
            if *n == 0 {
                open.per_source.remove(&conn.source);
            }
        }
    }
}

/// What the per-address cap counts: the address, or for IPv6 its /64 (one host's usual share).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// A connection's place in the registry, freed on drop.
struct Slot {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.remove(&self.conn);
    }
}

/// One connection, as its timeouts and the eviction see it.
struct Conn {
    id: u64,
    source: IpAddr,
    activity: Mutex<Activity>,
    /// Wakes the connection's task when its deadline may have moved earlier.
    wake: Notify,
}

struct Activity {
    opened: Instant,
    /// Requests started on this connection.
    served: u64,
    /// Requests whose responses are not finished.
    in_flight: usize,
    /// Since when no request is in flight.
    idle_since: Instant,
    /// When the first byte of the next request head arrived (while idle).
    head_since: Option<Instant>,
    /// Bytes arrived while a request was in flight (a pipelined next request).
    read_while_busy: bool,
    /// Since when a write waits for the client to read.
    write_blocked_since: Option<Instant>,
    evicted: bool,
}

impl Activity {
    fn new() -> Self {
        let now = Instant::now();
        Activity {
            opened: now,
            served: 0,
            in_flight: 0,
            idle_since: now,
            head_since: None,
            read_while_busy: false,
            write_blocked_since: None,
            evicted: false,
        }
    }
}

impl Conn {
    fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        lock(&self.activity)
    }

    /// When the connection must be closed, if nothing changes; `None`: not while it is busy.
    fn deadline(&self, limits: &ConnLimits) -> Option<Instant> {
        let a = self.activity();
        if a.evicted {
            Some(a.opened)
        } else if a.in_flight > 0 {
            a.write_blocked_since.map(|t| t + limits.idle_timeout)
        } else if a.served == 0 {
            Some(a.opened + limits.header_timeout)
        } else if let Some(t) = a.head_since {
            Some(t + limits.header_timeout)
        } else {
            Some(a.idle_since + limits.idle_timeout)
        }
    }

    /// Why [`Self::deadline`] passed, for the log.
    fn why(&self) -> &'static str {
        let a = self.activity();
        if a.evicted {
            "evicted to make room"
        } else if a.in_flight > 0 {
            "the client stopped reading"
        } else if a.served == 0 || a.head_since.is_some() {
            "header timeout"
        } else {
            "idle timeout"
        }
    }

    /// Since when it waits for a request; `None` while busy or once evicted.
    fn waiting_since(&self) -> Option<Instant> {
        let a = self.activity();
        (!a.evicted && a.in_flight == 0).then_some(a.idle_since)
    }

    fn evicted(&self) -> bool {
        self.activity().evicted
    }

    fn evict(&self) {
        self.activity().evicted = true;
        self.wake.notify_one();
    }

    fn on_read(&self) {
        let mut a = self.activity();
        if a.in_flight > 0 {
            a.read_while_busy = true;
        } else if a.head_since.is_none() {
            a.head_since = Some(Instant::now());
            drop(a);
            self.wake.notify_one();
        }
    }

    fn on_write(&self, blocked: bool) {
        let mut a = self.activity();
        match (blocked, a.write_blocked_since) {
            (true, None) => {
                a.write_blocked_since = Some(Instant::now());
                drop(a);
                self.wake.notify_one();
            }
            (false, Some(_)) => a.write_blocked_since = None,
            _ => {}
        }
    }

    fn request_started(&self) {
        let mut a = self.activity();
        a.in_flight += 1;
        a.served += 1;
        a.head_since = None;
        a.read_while_busy = false;
    }

    fn request_finished(&self) {
        let mut a = self.activity();
        a.in_flight = a.in_flight.saturating_sub(1);
        if a.in_flight == 0 {
            let now = Instant::now();
            a.idle_since = now;
            a.head_since = a.read_while_busy.then_some(now);
            a.read_while_busy = false;
            a.write_blocked_since = None;
            drop(a);
            self.wake.notify_one();
        }
    }
}

/// The socket, reporting reads and blocked writes to its [`Conn`].
struct Watched {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.on_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.conn.on_write(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.conn.on_write(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router for one connection: marks the connection busy from a request's head until its
/// response body is finished (or dropped).
#[derive(Clone)]
struct ConnService {
    app: Router,
    conn: Arc<Conn>,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for ConnService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        self.conn.request_started();
        let busy = Busy(self.conn.clone());
        let app = self.app.clone();
        Box::pin(async move {
            let response = app.oneshot(req.map(Body::new)).await?;
            Ok(response.map(|body| Body::new(Tracked { body, _busy: busy })))
        })
    }
}

/// Ends a request's busy time when dropped.
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body that keeps its connection busy until it is finished.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for ok in [
            "127.0.0.1:80",
            "127.0.0.1",
            "localhost:7980",
            "LOCALHOST",
            "[::1]:7980",
            "127.1.2.3:9",
        ] {
            assert!(loopback_host(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in [
            "evil.example:7980",
            "10.0.0.1:80",
            "[::2]:1",
            "[::1",
            "localhost.evil.example",
        ] {
            assert!(!loopback_host(&HeaderValue::from_static(bad)), "{bad}");
        }
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
        let uri = "/?a=1&token=x%20y".parse().unwrap();
        assert_eq!(query_param(&uri, "token").as_deref(), Some("x y"));
    }
}
