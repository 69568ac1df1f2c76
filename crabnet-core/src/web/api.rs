//! The routes, their response types and the OpenAPI document generated from them.
//!
//! Every route is registered through [`utoipa_axum::routes!`], so a handler without its
//! `#[utoipa::path]` documentation cannot be served, and the document lists exactly what the
//! router serves.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, watch};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::assets;
use super::http::{ApiError, ApiPath, ApiQuery, ErrorBody};
use super::metrics::{self, Metrics, Query, REJECT_REASONS, StreamGuard};
use crate::alerts::ActiveAlert;
use crate::error::ErrorKind;
use crate::model::{Millis, NodeId, SandboxLevel, SeedId, SeedStatus};
use crate::monitor::{Event, EventKind, Subscription};
use crate::node::{Node, Overview, PeerInfo};
use crate::sandbox::SandboxStatus;
use crate::state::SeedView;

type S = Arc<AppState>;

/// Most items one page returns.
const MAX_LIMIT: usize = 1000;
/// Items one page returns unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// Seeds in the overview's `recent_seeds`.
const RECENT_SEEDS: usize = 10;
/// Events read from the store per query while paging or streaming.
const BATCH: usize = 500;
/// Most events one `/api/events` request scans (matching or not) before it answers.
const MAX_SCAN: usize = 20 * BATCH;

/// Every event type name (the `type` field of an event), for the `kind` filter, in the order
/// [`EventKind`] declares them (a unit test checks them against the schema).
pub(crate) const EVENT_KINDS: [&str; 23] = [
    "node_started",
    "node_stopped",
    "seed_published",
    "bid_placed",
    "bidding_closed",
    "seed_claimed",
    "task_started",
    "result_recorded",
    "seed_settled",
    "seed_cancelled",
    "seed_reassigned",
    "seed_failed",
    "seed_escalated",
    "status_changed",
    "peer_discovered",
    "message_accepted",
    "message_deferred",
    "message_rejected",
    "transport_status",
    "send_failed",
    "alert_firing",
    "alert_resolved",
    "events_dropped",
];

// ---------------------------------------------------------------------------------------------
// Response types

/// Liveness and the state of the store and the transport.
#[derive(Debug, Serialize, ToSchema)]
struct Health {
    /// `ok`, or `unavailable` when the node stopped or its store fails (then the status code
    /// is 503).
    #[schema(example = "ok")]
    status: String,
    /// This node's id.
    node_id: NodeId,
    /// This node's name.
    name: String,
    /// Version of the Crabnet core serving this.
    version: String,
    /// The store.
    store: StoreHealth,
    /// The transport.
    transport: TransportHealth,
}

/// Whether the store answers.
#[derive(Debug, Serialize, ToSchema)]
struct StoreHealth {
    /// Whether a query succeeded just now.
    ok: bool,
    /// How long that query took, in milliseconds.
    latency_ms: f64,
    /// Why it failed, if it did.
    error: Option<String>,
}

/// Whether the node runs on a network.
#[derive(Debug, Serialize, ToSchema)]
struct TransportHealth {
    /// The transport (`memory`, `udp`, `dht`...), if the node has one.
    name: Option<String>,
    /// Whether the node has a transport and has not stopped.
    running: bool,
    /// Peers whose signed hello was verified (when the store answers).
    peers: u64,
}

/// Who this node is and where it runs.
#[derive(Debug, Serialize, ToSchema)]
struct NodeInfo {
    /// Its id (hex of 32 bytes, derived from its public keys).
    node_id: NodeId,
    /// Its name.
    name: String,
    /// The first 16 hex digits of its id: what peers show as its key fingerprint.
    fingerprint: String,
    /// The transport, if any.
    transport: Option<String>,
    /// Where peers reach it.
    addresses: Vec<String>,
    /// Its data directory.
    data_dir: String,
    /// Version of the Crabnet core.
    version: String,
}

/// A peer as the monitor shows it.
#[derive(Debug, Serialize, ToSchema)]
struct PeerView {
    /// Its node id.
    node_id: NodeId,
    /// Its name.
    name: String,
    /// The fingerprint of its keys (first 16 hex digits of its self-certifying id).
    fingerprint: String,
    /// Addresses it announced.
    addresses: Vec<String>,
    /// Its key epoch.
    key_epoch: u32,
    /// Its first verified hello (Unix ms).
    first_seen: Millis,
    /// Its latest verified hello (Unix ms).
    last_seen: Millis,
    /// Whether a hello arrived within the last `active_window_ms` (three hello intervals).
    active: bool,
    /// Its reputation as a runner, from the signed history this node holds.
    reputation: crate::reputation::Reputation,
}

/// One line of the seeds table.
#[derive(Debug, Serialize, ToSchema)]
struct SeedSummary {
    /// Seed id.
    id: SeedId,
    /// Lifecycle status.
    status: SeedStatus,
    /// The command's first line, at most 120 characters.
    command: String,
    /// Description for humans.
    description: String,
    /// The publishing node.
    publisher: NodeId,
    /// Whether the seed is private to chosen nodes.
    private: bool,
    /// Lowest acceptable price.
    min_price: u64,
    /// Highest acceptable price.
    max_price: u64,
    /// Bid limit.
    max_bids: u32,
    /// Valid bids so far.
    bids: u64,
    /// The winning node, once bidding closed with a winner.
    winner_node: Option<NodeId>,
    /// The winning price.
    price: Option<u64>,
    /// The node that claimed it.
    claimer: Option<NodeId>,
    /// Whether the reported run succeeded, once there is a result.
    success: Option<bool>,
    /// Whether the command needs network access (only nodes that allow it bid).
    network: bool,
    /// The sandbox level the command ran under, once there is a result (`none` also for
    /// results of nodes that do not report it).
    sandbox_level: Option<SandboxLevel>,
    /// Publication time (Unix ms).
    created_at: Millis,
    /// Time of the latest change (Unix ms).
    updated_at: Millis,
}

/// The dashboard's summary of the node.
#[derive(Debug, Serialize, ToSchema)]
struct OverviewResponse {
    /// This node.
    node: NodeInfo,
    /// Seeds per status (every status, zeros included).
    seeds_by_status: BTreeMap<String, u64>,
    /// All seeds known here.
    seeds_total: u64,
    /// The newest seeds (at most 10).
    recent_seeds: Vec<SeedSummary>,
    /// Known peers.
    peers: Vec<PeerView>,
    /// Rejected remote messages per reason (every reason, zeros included).
    rejections: BTreeMap<String, u64>,
    /// All rejected remote messages.
    rejected_total: u64,
    /// Every counter of the node (`messages.accepted`, `rejected.<reason>`, `runs.*`...).
    counters: BTreeMap<String, u64>,
    /// Messages waiting to be sent.
    outbox_pending: u64,
    /// Sequence number of the latest event.
    last_event_seq: u64,
    /// Digest of the whole seed state (equal on converged replicas).
    state_digest: String,
    /// The sandbox this node builds around the tasks it runs: policy, level, features, and
    /// what is missing for the full sandbox.
    sandbox: SandboxStatus,
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
struct EventsPage {
    /// Matching events, oldest first.
    events: Vec<Event>,
    /// Pass this as `since` to get the next page: the sequence number of the last event
    /// looked at (matching the filter or not).
    next_since: u64,
    /// Whether events after `next_since` exist.
    more: bool,
    /// The last event pruned by retention (`[retention]` in the config; 0: none was). A
    /// `since` below it missed the events up to it: they no longer exist.
    pruned_through: u64,
}

/// A page of seeds.
#[derive(Debug, Serialize, ToSchema)]
struct SeedsPage {
    /// Seeds, newest first.
    seeds: Vec<SeedSummary>,
}

/// This node, its peers and the links between them.
#[derive(Debug, Serialize, ToSchema)]
struct Topology {
    /// This node.
    node: NodeInfo,
    /// Its peers.
    peers: Vec<PeerView>,
    /// The links this node has: one per peer whose hello it verified.
    links: Vec<Link>,
    /// A peer counts as active when its latest hello is at most this old (ms).
    active_window_ms: u64,
}

/// A link between two nodes.
#[derive(Debug, Serialize, ToSchema)]
struct Link {
    /// This node.
    from: NodeId,
    /// The peer.
    to: NodeId,
    /// The transport the hellos came over.
    transport: Option<String>,
    /// Whether the peer's latest hello is recent (see `active_window_ms`).
    active: bool,
    /// The peer's latest hello (Unix ms).
    last_seen: Millis,
}

// ---------------------------------------------------------------------------------------------
// Query parameters

/// Paging and filtering of events.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Only events with a larger sequence number (default 0: from the start).
    since: Option<u64>,
    /// Most events to return, 1 to 1000 (default 100).
    limit: Option<usize>,
    /// Only these event types, comma-separated (e.g. `seed_published,message_rejected`).
    kind: Option<String>,
}

/// Where a stream starts and what it carries.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// Start after this sequence number (a `Last-Event-ID` header takes precedence). Without
    /// either, the stream starts with the next event.
    since: Option<u64>,
    /// Only these event types, comma-separated.
    kind: Option<String>,
}

/// Filtering of seeds.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SeedsQuery {
    /// Only seeds with this status.
    status: Option<SeedStatus>,
    /// Most seeds to return, 1 to 1000 (default 100).
    limit: Option<usize>,
}

/// The page size a `limit` parameter asks for: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when
/// absent.
fn page_limit(given: Option<usize>) -> Result<usize, ApiError> {
    match given {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {n}"
        ))),
    }
}

/// The event types a `kind` parameter keeps (all when absent).
struct Kinds(Option<Vec<&'static str>>);

impl Kinds {
    fn parse(given: Option<&str>) -> Result<Kinds, ApiError> {
        let Some(text) = given else {
            return Ok(Kinds(None));
        };
        let mut out = Vec::new();
        for name in text.split(',').map(str::trim) {
            match EVENT_KINDS.iter().find(|k| **k == name) {
                Some(k) => out.push(*k),
                None => {
                    return Err(ApiError::bad_request(format!(
                        "unknown event type {:?} in kind; expected a comma-separated list of: {}",
                        crate::model::truncate_for_message(name),
                        EVENT_KINDS.join(", ")
                    )));
                }
            }
        }
        Ok(Kinds(Some(out)))
    }

    fn keep(&self, event: &Event) -> bool {
        self.0
            .as_ref()
            .is_none_or(|k| k.contains(&event.kind.name()))
    }
}

/// Up to `n` events after sequence number `cursor` from the node's durable log, oldest first
/// (timed as an events query).
async fn events_after(
    node: &Node,
    metrics: &Metrics,
    cursor: u64,
    n: usize,
) -> crate::Result<Vec<Event>> {
    metrics
        .timed(Query::Events, node.events_after(cursor, n))
        .await
}

// ---------------------------------------------------------------------------------------------
// Conversions

fn node_info(o: &Overview) -> NodeInfo {
    NodeInfo {
        fingerprint: o.node_id.as_str()[..16].to_owned(),
        node_id: o.node_id.clone(),
        name: o.name.clone(),
        transport: o.transport.clone(),
        addresses: o.addresses.clone(),
        data_dir: o.data_dir.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

fn active_window_ms(node: &Node) -> u64 {
    node.hello_interval_ms().saturating_mul(3)
}

/// The peers as the monitor shows them, active or not as of now.
fn peer_views(node: &Node, peers: Vec<PeerInfo>) -> Vec<PeerView> {
    let now = node.now_ms();
    let window = active_window_ms(node);
    peers
        .into_iter()
        .map(|p| peer_view(p, now, window))
        .collect()
}

fn peer_view(p: PeerInfo, now: Millis, window: u64) -> PeerView {
    PeerView {
        active: now.saturating_sub(p.last_seen) <= window,
        node_id: p.node_id,
        name: p.name,
        fingerprint: p.fingerprint,
        addresses: p.addresses,
        key_epoch: p.key_epoch,
        first_seen: p.first_seen,
        last_seen: p.last_seen,
        reputation: p.reputation,
    }
}

fn summary(v: &SeedView) -> SeedSummary {
    let first_line = v.seed.command.lines().next().unwrap_or("");
    let mut command: String = first_line.chars().take(120).collect();
    if command.len() < v.seed.command.len() {
        command.push('…');
    }
    SeedSummary {
        id: v.seed.id.clone(),
        status: v.status,
        command,
        description: v.seed.description.clone(),
        publisher: v.seed.publisher.clone(),
        private: !v.seed.audience.is_empty(),
        min_price: v.seed.min_price,
        max_price: v.seed.max_price,
        max_bids: v.seed.max_bids,
        bids: v.bids.len() as u64,
        winner_node: v.award.as_ref().and_then(|a| a.winner_node.clone()),
        price: v.award.as_ref().and_then(|a| a.price),
        claimer: v.claim.as_ref().map(|c| c.claimer.clone()),
        success: v.result.as_ref().map(|r| r.success),
        network: v.seed.network,
        sandbox_level: v.result.as_ref().map(|r| r.sandbox.level),
        created_at: v.seed.created_at,
        updated_at: v.updated_at,
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

/// Liveness: whether the node runs, its store answers and it has a transport.
///
/// Never needs the token (for load balancers and supervisors); shows no addresses.
#[utoipa::path(
    get,
    path = "/health",
    tag = "monitor",
    security(()),
    responses(
        (status = 200, description = "The node runs and its store answers", body = Health),
        (status = 503, description = "The node stopped or its store fails", body = Health),
    )
)]
async fn health(State(s): State<S>) -> (StatusCode, Json<Health>) {
    let start = std::time::Instant::now();
    let peers = s.metrics.timed(Query::Peers, s.node.peers()).await;
    let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
    let stopped = s.node.is_stopped();
    let transport = s.node.transport_name().map(str::to_owned);
    let ok = peers.is_ok() && !stopped;
    let health = Health {
        status: if ok { "ok" } else { "unavailable" }.into(),
        node_id: s.node.id().clone(),
        name: s.node.config().name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        store: StoreHealth {
            ok: peers.is_ok(),
            latency_ms,
            error: peers.as_ref().err().map(|e| e.to_string()),
        },
        transport: TransportHealth {
            running: transport.is_some() && !stopped,
            name: transport,
            peers: peers.map(|p| p.len() as u64).unwrap_or(0),
        },
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health))
}

/// Node identity, seed counts, the newest seeds, peers, rejection counters and the task
/// sandbox.
#[utoipa::path(
    get,
    path = "/api/overview",
    tag = "monitor",
    responses(
        (status = 200, description = "The summary", body = OverviewResponse),
        (status = 503, description = "The node stopped", body = ErrorBody),
    )
)]
async fn overview(State(s): State<S>) -> Result<Json<OverviewResponse>, ApiError> {
    let m = &s.metrics;
    let (o, recent, peers) = tokio::join!(
        m.timed(Query::Overview, s.node.overview()),
        m.timed(Query::Seeds, s.node.recent_seeds(None, RECENT_SEEDS)),
        m.timed(Query::Peers, s.node.peers()),
    );
    let (o, recent, peers) = (o?, recent?, peers?);
    let seeds_by_status: BTreeMap<String, u64> = SeedStatus::ALL
        .iter()
        .map(|st| {
            let n = o.seeds_by_status.get(st).copied().unwrap_or(0);
            (st.as_str().to_owned(), n)
        })
        .collect();
    let rejections: BTreeMap<String, u64> = REJECT_REASONS
        .iter()
        .map(|r| {
            let key = format!("rejected.{}", r.as_str());
            (
                r.as_str().to_owned(),
                o.counters.get(&key).copied().unwrap_or(0),
            )
        })
        .collect();
    Ok(Json(OverviewResponse {
        node: node_info(&o),
        seeds_total: seeds_by_status.values().sum(),
        seeds_by_status,
        recent_seeds: recent.iter().map(summary).collect(),
        peers: peer_views(&s.node, peers),
        rejected_total: rejections.values().sum(),
        rejections,
        counters: o.counters.clone(),
        outbox_pending: o.outbox_pending,
        last_event_seq: o.last_event_seq,
        state_digest: o.state_digest.clone(),
        sandbox: o.sandbox.clone(),
    }))
}

/// Events from the node's durable log, oldest first, in pages.
///
/// The order is stable: sequence numbers only grow. To read everything, start with `since=0`
/// and pass each page's `next_since` until `more` is false.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "monitor",
    params(EventsQuery),
    responses(
        (status = 200, description = "A page of events", body = EventsPage),
        (status = 400, description = "A malformed or out-of-range parameter", body = ErrorBody),
        (status = 503, description = "The node stopped", body = ErrorBody),
    )
)]
async fn events(
    State(s): State<S>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    let limit = page_limit(q.limit)?;
    let kinds = Kinds::parse(q.kind.as_deref())?;
    let mut cursor = q.since.unwrap_or(0);
    let pruned_through = s.node.events_pruned_through().await?;
    let mut events = Vec::new();
    let mut scanned = 0;
    let more = loop {
        let batch = events_after(&s.node, &s.metrics, cursor, BATCH).await?;
        let n = batch.len();
        let mut rest = batch.into_iter();
        for e in rest.by_ref() {
            cursor = e.seq;
            scanned += 1;
            if kinds.keep(&e) {
                events.push(e);
                if events.len() == limit {
                    break;
                }
            }
        }
        let unread = rest.len();
        if unread > 0 {
            break true;
        }
        if n < BATCH {
            break false;
        }
        if events.len() == limit || scanned >= MAX_SCAN {
            break !events_after(&s.node, &s.metrics, cursor, 1)
                .await?
                .is_empty();
        }
    };
    Ok(Json(EventsPage {
        events,
        next_since: cursor,
        more,
        pruned_through,
    }))
}

/// Events live, as server-sent events.
///
/// Each message has `id:` the event's sequence number and `data:` the event as JSON (the
/// `Event` schema). Events come from the durable log in order, without gaps, also when the
/// client is slow; a reconnecting `EventSource` resumes after its `Last-Event-ID`. A comment
/// line keeps the connection alive every 15 s.
#[utoipa::path(
    get,
    path = "/api/events/stream",
    tag = "monitor",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this sequence number"),
    ),
    responses(
        (status = 200, description = "An endless stream of events", body = String, content_type = "text/event-stream"),
        (status = 400, description = "A malformed parameter or Last-Event-ID", body = ErrorBody),
        (status = 503, description = "Too many streams are open, or the node stopped", body = ErrorBody),
    )
)]
async fn stream(
    State(s): State<S>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<sse::Event, Infallible>>>, ApiError> {
    let kinds = Kinds::parse(q.kind.as_deref())?;
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("Last-Event-ID must be an event sequence number")
                })?,
        ),
    };
    if s.node.is_stopped() {
        return Err(ApiError::from(crate::Error::new(
            ErrorKind::Stopped,
            "the node has been stopped",
        )));
    }
    let permit = s.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(format!(
            "too many event streams are open (at most {})",
            s.max_streams
        ))
    })?;
    let tail = Tail {
        // Subscribe before the first read, so nothing committed in between is missed.
        sub: s.node.subscribe(),
        node: s.node.clone(),
        cursor: resume.or(q.since),
        kinds,
        queue: VecDeque::new(),
        shutdown: s.shutdown.clone(),
        metrics: s.metrics.clone(),
        _permit: permit,
        _open: s.metrics.stream_opened(),
    };
    let events = futures::stream::unfold(tail, next_event);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The state of one event stream.
struct Tail {
    node: Node,
    sub: Subscription,
    /// The last sequence number delivered or skipped; `None` until the first live event says
    /// where "now" is.
    cursor: Option<u64>,
    kinds: Kinds,
    queue: VecDeque<Event>,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    _permit: OwnedSemaphorePermit,
    _open: StreamGuard,
}

/// The bus only wakes the stream; what it sends is read from the durable log, so a slow
/// client misses nothing and sees every event once, in order.
async fn next_event(mut t: Tail) -> Option<(Result<sse::Event, Infallible>, Tail)> {
    loop {
        if let Some(e) = t.queue.pop_front() {
            let data = serde_json::to_string(&e).unwrap_or_default();
            let event = sse::Event::default().id(e.seq.to_string()).data(data);
            return Some((Ok(event), t));
        }
        if let Some(cursor) = t.cursor {
            // Events pruned by retention after the cursor: said once, as a missed count.
            match t.node.events_pruned_through().await {
                Ok(pruned) if pruned > cursor => {
                    t.cursor = Some(pruned);
                    let missed = Event {
                        seq: pruned,
                        at: t.node.now_ms(),
                        kind: EventKind::EventsDropped {
                            count: pruned - cursor,
                        },
                    };
                    if t.kinds.keep(&missed) {
                        t.queue.push_back(missed);
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Stopped => return None,
                Err(e) => tracing::warn!("event stream cannot read the retention mark: {e}"),
            }
            match events_after(&t.node, &t.metrics, cursor, BATCH).await {
                Ok(batch) => {
                    let full = batch.len() == BATCH;
                    for e in batch {
                        t.cursor = Some(e.seq);
                        if t.kinds.keep(&e) {
                            t.queue.push_back(e);
                        }
                    }
                    if full || !t.queue.is_empty() {
                        continue;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Stopped => return None,
                Err(e) => tracing::warn!("event stream cannot read events: {e}"),
            }
        }
        tokio::select! {
            _ = t.shutdown.wait_for(|stop| *stop) => return None,
            e = t.sub.recv() => {
                let mut next = e;
                loop {
                    match next {
                        None => return None,
                        Some(e) if t.cursor.is_none() && e.seq > 0 => t.cursor = Some(e.seq - 1),
                        Some(_) => {}
                    }
                    match t.sub.try_recv() {
                        Ok(Some(e)) => next = Some(e),
                        Ok(None) => break,
                        Err(()) => return None,
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                if t.node.is_stopped() {
                    return None;
                }
            }
        }
    }
}

/// This node, its known peers with their key fingerprints, and the links.
#[utoipa::path(
    get,
    path = "/api/topology",
    tag = "monitor",
    responses(
        (status = 200, description = "The topology as this node sees it", body = Topology),
        (status = 503, description = "The node stopped", body = ErrorBody),
    )
)]
async fn topology(State(s): State<S>) -> Result<Json<Topology>, ApiError> {
    let m = &s.metrics;
    let (o, peers) = tokio::join!(
        m.timed(Query::Overview, s.node.overview()),
        m.timed(Query::Peers, s.node.peers()),
    );
    let (o, peers) = (o?, peers?);
    let peers = peer_views(&s.node, peers);
    let links = peers
        .iter()
        .map(|p| Link {
            from: o.node_id.clone(),
            to: p.node_id.clone(),
            transport: o.transport.clone(),
            active: p.active,
            last_seen: p.last_seen,
        })
        .collect();
    Ok(Json(Topology {
        node: node_info(&o),
        peers,
        links,
        active_window_ms: active_window_ms(&s.node),
    }))
}

/// The alerts firing now and the webhook queue.
#[derive(Debug, Serialize, ToSchema)]
struct AlertsView {
    /// Whether this node evaluates the alert rules (it runs the network and `alerts.enabled`
    /// is set); otherwise the list shows what the node on the network last recorded.
    evaluated: bool,
    /// The alerts firing now, in rule order.
    active: Vec<ActiveAlert>,
    /// Webhook deliveries waiting to be sent or retried.
    webhook_queue: u64,
}

/// The alerts firing now (see the `[alerts]` config section), and the webhook queue.
#[utoipa::path(
    get,
    path = "/api/alerts",
    tag = "monitor",
    responses(
        (status = 200, description = "Active alerts", body = AlertsView),
        (status = 503, description = "The node stopped", body = ErrorBody),
    )
)]
async fn alerts(State(s): State<S>) -> Result<Json<AlertsView>, ApiError> {
    let m = &s.metrics;
    let (active, queue) = tokio::join!(
        m.timed(Query::Alerts, s.node.active_alerts()),
        m.timed(Query::Alerts, s.node.webhook_queue_len()),
    );
    Ok(Json(AlertsView {
        evaluated: s.node.transport_name().is_some() && s.node.config().alerts.enabled,
        active: active?,
        webhook_queue: queue?,
    }))
}

/// Seeds known to this node, newest first.
#[utoipa::path(
    get,
    path = "/api/seeds",
    tag = "monitor",
    params(SeedsQuery),
    responses(
        (status = 200, description = "Seeds", body = SeedsPage),
        (status = 400, description = "A malformed or out-of-range parameter", body = ErrorBody),
        (status = 503, description = "The node stopped", body = ErrorBody),
    )
)]
async fn seeds(
    State(s): State<S>,
    ApiQuery(q): ApiQuery<SeedsQuery>,
) -> Result<Json<SeedsPage>, ApiError> {
    let limit = page_limit(q.limit)?;
    let seeds = s
        .metrics
        .timed(Query::Seeds, s.node.recent_seeds(q.status, limit))
        .await?;
    Ok(Json(SeedsPage {
        seeds: seeds.iter().map(summary).collect(),
    }))
}

/// One seed in full: terms, bids, award, claim, result and settlement.
#[utoipa::path(
    get,
    path = "/api/seeds/{id}",
    tag = "monitor",
    params(("id" = String, Path, description = "Seed id: 32 lowercase hex digits")),
    responses(
        (status = 200, description = "The seed's state", body = SeedView),
        (status = 400, description = "The id is malformed", body = ErrorBody),
        (status = 404, description = "No seed with this id is known here", body = ErrorBody),
        (status = 503, description = "The node stopped", body = ErrorBody),
    )
)]
async fn seed(
    State(s): State<S>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SeedView>, ApiError> {
    let id = SeedId::parse(&id)?;
    let view = s.metrics.timed(Query::Seed, s.node.seed(&id)).await?;
    Ok(Json(view))
}

/// Counters and gauges in the Prometheus text format: messages accepted and rejected by
/// reason, envelopes sent, seeds by status, runner outcomes, the task sandbox (level by
/// policy, whether tasks can run), peers, outbox, store latency.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "monitor",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
        (status = 503, description = "The node stopped", body = ErrorBody),
    )
)]
async fn prometheus(State(s): State<S>) -> Result<Response, ApiError> {
    let m = &s.metrics;
    let (o, peers, active, queue) = tokio::join!(
        m.timed(Query::Overview, s.node.overview()),
        m.timed(Query::Peers, s.node.peers()),
        m.timed(Query::Alerts, s.node.active_alerts()),
        m.timed(Query::Alerts, s.node.webhook_queue_len()),
    );
    let live = peer_views(&s.node, peers?)
        .iter()
        .filter(|p| p.active)
        .count() as u64;
    let alerting = metrics::Alerting {
        active: active?,
        webhook_queue: queue?,
        peers_active: live,
    };
    let text = metrics::render(&o?, &alerting, &s.metrics);
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "monitor",
    responses((status = 200, description = "The OpenAPI document of this API", content_type = "application/json", body = Object))
)]
async fn openapi_json() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let doc = DOC.get_or_init(|| openapi().to_pretty_json().unwrap_or_default());
    let mut response = doc.clone().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The dashboard page. Every other path outside `/api/` serves it too.
#[utoipa::path(
    get,
    path = "/",
    tag = "dashboard",
    responses((status = 200, description = "The dashboard", body = String, content_type = "text/html"))
)]
async fn dashboard(State(s): State<S>) -> Response {
    page(&s).await
}

/// A file of the dashboard (script, style sheet, icon).
#[utoipa::path(
    get,
    path = "/assets/{file}",
    tag = "dashboard",
    params(("file" = String, Path, description = "File name, e.g. `app.js`")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"),
            (String = "text/css"),
            (String = "image/svg+xml"),
            (String = "text/html"),
        )),
        (status = 404, description = "No such file", body = ErrorBody),
    )
)]
async fn asset(State(s): State<S>, ApiPath(file): ApiPath<String>) -> Response {
    match assets::load(s.assets_dir.as_deref(), &file).await {
        Some(r) => r,
        None => ApiError::not_found(format!("no dashboard asset {file:?}")).into_response(),
    }
}

async fn page(s: &AppState) -> Response {
    match assets::load(s.assets_dir.as_deref(), "index.html").await {
        Some(r) => r,
        None => ApiError::not_found("the dashboard page is missing").into_response(),
    }
}

/// Unknown `/api/...` paths get a JSON 404; any other path gets the dashboard.
async fn fallback(State(s): State<S>, uri: Uri) -> Response {
    let path = uri.path();
    if path == "/api" || path.starts_with("/api/") {
        return ApiError::not_found(format!(
            "no API route {}; the routes are listed in /api/openapi.json",
            crate::model::truncate_for_message(path)
        ))
        .into_response();
    }
    page(&s).await
}

// ---------------------------------------------------------------------------------------------
// The document and the router

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Crabnet monitoring API",
        description = "Read-only monitoring of one Crabnet node: health, seeds, events (paged and live), topology and Prometheus metrics. Only GET and HEAD are served."
    ),
    tags(
        (name = "monitor", description = "The node's state and events"),
        (name = "dashboard", description = "The web dashboard"),
    ),
    components(schemas(ErrorBody)),
    modifiers(&Shared),
)]
struct ApiDoc;

/// Adds what every route shares: the optional bearer token and the errors that the
/// middleware may answer with.
struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Required when the server is configured with a token ([web] token); \
                         browsers may use the cookie that /?token=TOKEN sets instead.",
                    ))
                    .build(),
            ),
        );
        // Without a token no authentication is needed; with one, the bearer scheme.
        doc.security = Some(vec![
            SecurityRequirement::default(),
            SecurityRequirement::new("bearer", Vec::<String>::new()),
        ]);
    }
}

/// Errors any operation may answer with, added after the paths are collected.
fn add_shared_errors(doc: &mut utoipa::openapi::OpenApi) {
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        for op in [&mut item.get, &mut item.head].into_iter().flatten() {
            let responses = &mut op.responses.responses;
            let mut add = |code: &str, description: &str| {
                responses
                    .entry(code.to_owned())
                    .or_insert_with(|| error(description).into());
            };
            add(
                "400",
                "A malformed request (a request body, a bad path or query value)",
            );
            if path != "/health" {
                add(
                    "401",
                    "The server has a token and the request does not carry it",
                );
            }
            add(
                "403",
                "Without a token, the Host header must name a loopback address",
            );
            add(
                "405",
                "Only GET and HEAD are allowed (the Allow header says so)",
            );
            add("500", "An internal error");
        }
    }
}

fn api_router() -> OpenApiRouter<S> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(overview))
        .routes(routes!(events))
        .routes(routes!(stream))
        .routes(routes!(topology))
        .routes(routes!(seeds))
        .routes(routes!(seed))
        .routes(routes!(alerts))
        .routes(routes!(prometheus))
        .routes(routes!(openapi_json))
        .routes(routes!(dashboard))
        .routes(routes!(asset))
}

/// The OpenAPI document of the monitoring API (what `/api/openapi.json` serves), generated
/// from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = api_router().split_for_parts();
    add_shared_errors(&mut doc);
    doc
}

/// The router with every documented route and the fallback.
pub(crate) fn routes(state: S) -> axum::Router {
    let (router, _) = api_router().split_for_parts();
    router.fallback(fallback).with_state(state)
}

#[cfg(test)]
mod tests {
    use super::EVENT_KINDS;

    /// The `kind` filter knows every event type of the schema (generated from `EventKind`), in
    /// declaration order, and nothing else.
    #[test]
    fn event_kinds_are_the_event_types_of_the_schema() {
        let doc = crate::schema::json_schema();
        let types: Vec<&str> = doc["$defs"]["EventKind"]["oneOf"]
            .as_array()
            .expect("EventKind is a oneOf")
            .iter()
            .map(|v| {
                v["properties"]["type"]["enum"][0]
                    .as_str()
                    .expect("a type name")
            })
            .collect();
        assert_eq!(types, EVENT_KINDS);
    }
}
