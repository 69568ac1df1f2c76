//! The network loop: receives frames, sends the outbox, and announces this node (hellos,
//! revocations and key rotations).

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::batch::{self, BATCH_BYTES, BATCH_FRAMES};
use super::{JOIN_HELLO_DELAYS, Node, OUTBOX_BATCH, background_blocking, lock};
use crate::envelope::{self, Kind};
use crate::error::Result;
use crate::ingress;
use crate::monitor::EventKind;
use crate::network::{self, InboundFrame, Incoming, Transport};
use crate::store::OutboxItem;
use crate::sync;

/// After frames were lost, how long the transport must have dropped none before the sync round
/// that finds them again goes out: a flood's next frames would meet the round's answers in the
/// same full buffer.
const REPAIR_QUIET: Duration = Duration::from_millis(200);
/// The latest a repair round goes out after the first loss it repairs (a flood that does not
/// stop is repaired while it lasts).
const REPAIR_LATEST: Duration = Duration::from_secs(2);
/// The least time between two repair rounds; it doubles while losses go on from one round to
/// the next (a flood that keeps the buffer full, garbage included), up to
/// [`REPAIR_SPACING_MAX`] (or `network.sync_interval_secs` when that is shorter): a round's own
/// answers, a burst, may overflow the buffer again, and their repair should not wait long.
const REPAIR_SPACING: Duration = Duration::from_secs(1);
/// The longest spacing between two repair rounds.
const REPAIR_SPACING_MAX: Duration = Duration::from_secs(4);
/// Most sources a repair round asks besides the transport's sync peers.
const REPAIR_SOURCES: usize = 8;

/// The repair of what the transport dropped (it tells only how many frames it lost, not which):
/// a sync round ([`Node::repair_exchanges`]) once losses stop for [`REPAIR_QUIET`], at most
/// [`REPAIR_LATEST`] after the first, and a spacing after the last round. Without it, what a
/// burst lost (a peer sending its outbox faster than this node applies) waited for the next
/// periodic round, up to `network.sync_interval_secs` (stretched up to 6x while the store does
/// not change). The round goes to the transport's sync peers and to the latest sources of
/// accepted frames ([`REPAIR_SOURCES`], heard within the sync interval): the likely senders
/// of what was lost, which the transport's sync queries may not reach (a UDP sender that is
/// not a configured peer, or one of more configured peers than a query goes to).
struct Repair {
    /// When the next round goes out.
    at: Option<tokio::time::Instant>,
    /// The first loss it repairs.
    first: Option<tokio::time::Instant>,
    /// When the last round went out, and the spacing after it.
    last: Option<tokio::time::Instant>,
    spacing: Duration,
    /// The longest spacing.
    max_spacing: Duration,
    /// How long a sender counts as recent: `network.sync_interval_secs`.
    max_age: Duration,
    /// Sources of accepted frames, newest first, and when each was last heard. Only accepted
    /// frames count (valid, new, signed by a known peer): a source address others forge
    /// cannot steer the queries without a stream of fresh signed frames, and it gets at most
    /// one query per round.
    senders: Vec<(String, tokio::time::Instant)>,
}

impl Repair {
    fn new(sync_interval: Duration) -> Repair {
        Repair {
            at: None,
            first: None,
            last: None,
            spacing: REPAIR_SPACING,
            max_spacing: sync_interval.clamp(REPAIR_SPACING, REPAIR_SPACING_MAX),
            max_age: sync_interval,
            senders: Vec::new(),
        }
    }

    /// The transport reported losses at `now`: the round is (re)scheduled.
    fn lost(&mut self, now: tokio::time::Instant) {
        let first = *self.first.get_or_insert(now);
        let at = (now + REPAIR_QUIET).min(first + REPAIR_LATEST);
        self.at = Some(self.last.map_or(at, |last| at.max(last + self.spacing)));
    }

    /// The round's query went out at `now` (it was built meanwhile): the spacing to the next
    /// round counts from here.
    fn sent(&mut self, now: tokio::time::Instant) {
        self.last = Some(now);
        if let Some(at) = self.at {
            self.at = Some(at.max(now + self.spacing));
        }
    }

    /// The accepted frames of a batch, received at `now`.
    fn heard(&mut self, received: &[batch::Received], now: tokio::time::Instant) {
        for r in received {
            if r.handled.acceptance != network::Acceptance::Accept {
                continue;
            }
            self.senders.retain(|(s, _)| *s != r.from);
            self.senders.insert(0, (r.from.clone(), now));
            self.senders.truncate(REPAIR_SOURCES);
        }
    }

    /// The round goes out at `now`: the sources to ask besides the sync peers, and how long
    /// ago the first loss it repairs was. While losses go on from one round to the next, the
    /// spacing doubles.
    fn start(&mut self, now: tokio::time::Instant) -> (Vec<String>, Duration) {
        let since_first = self
            .first
            .map_or(Duration::ZERO, |first| now.saturating_duration_since(first));
        self.spacing = match self.last {
            Some(last) if now.saturating_duration_since(last) <= self.spacing * 2 => {
                (self.spacing * 2).min(self.max_spacing)
            }
            _ => REPAIR_SPACING,
        };
        self.at = None;
        self.first = None;
        self.last = Some(now);
        let max_age = self.max_age;
        let senders = self
            .senders
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(*at) <= max_age)
            .map(|(s, _)| s.clone())
            .collect();
        (senders, since_first)
    }
}

/// A batch of received frames being applied on a blocking thread: what became of each.
type Applying = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<batch::Received>> + Send>>;

/// A sync query being built on a blocking thread (it reads the store, which the transaction of
/// a batch may hold for a while): the network task goes on reading the transport meanwhile,
/// and sends the query when it is ready ([`Node::send_query`]).
type Building = std::pin::Pin<Box<dyn std::future::Future<Output = Query> + Send>>;

/// The outbox being drained: its due envelopes read ([`Node::read_outbox`]), or what became of
/// the sent ones written ([`Node::send_outbox`]), each on a blocking thread (the transaction
/// of a batch may hold the store); the network task sends in between and reads the transport
/// meanwhile.
type Draining = std::pin::Pin<Box<dyn std::future::Future<Output = Drained> + Send>>;

/// What the periodic hello needs from the store, read on a blocking thread
/// ([`Node::prepare_hello`]): the store may be held by the transaction of a batch.
type HelloPreparing = std::pin::Pin<Box<dyn std::future::Future<Output = HelloPrepared> + Send>>;

/// The revocations and key rotation statements sent after a hello, being read on a blocking
/// thread ([`Node::read_statements`]) for the answers to new peers' hellos.
type StatementsReading = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Vec<u8>>> + Send>>;

/// What the periodic hello needs from the store.
struct HelloPrepared {
    /// The hello interval sized for the peers now, in ms ([`Node::size_hello_interval`]).
    every: u64,
    /// The revocations and key rotation statements sent after the hello.
    after: Vec<Vec<u8>>,
}

/// A step of draining the outbox done.
enum Drained {
    /// The envelopes due, oldest first (none when the outbox could not be read).
    Due(Vec<OutboxItem>),
    /// What became of the sent envelopes is written; `full`: they were a whole batch, more
    /// may be due.
    Settled { full: bool },
}

/// A sync query built: the frame (none when this node knows no peer), the sources it also goes
/// to, and whether the round is a periodic one (or a repair).
struct Query {
    frame: Option<Vec<u8>>,
    also: Vec<String>,
    periodic: bool,
}

/// Most frames, and bytes, read from the transport and waiting while a batch is applied: four
/// batches. When it is full the transport is not read until the batch is over (its own buffer
/// then takes the overflow, and drops what does not fit: counter `transport.dropped`; sync
/// repairs it), and `ingress.queue_full` counts it.
const QUEUED_FRAMES: usize = 4 * BATCH_FRAMES;
const QUEUED_BYTES: usize = 4 * BATCH_BYTES;

/// Frames read while a batch is applied, oldest first.
#[derive(Default)]
struct Queue {
    frames: std::collections::VecDeque<InboundFrame>,
    bytes: usize,
}

impl Queue {
    fn is_full(&self) -> bool {
        self.frames.len() >= QUEUED_FRAMES || self.bytes >= QUEUED_BYTES
    }

    fn push(&mut self, frame: InboundFrame) {
        self.bytes += frame.bytes.len();
        self.frames.push_back(frame);
    }

    /// The oldest frames, up to [`BATCH_FRAMES`] and [`BATCH_BYTES`] (the frame that crosses
    /// it is still taken), and whether more are left.
    fn take_batch(&mut self) -> (Vec<InboundFrame>, bool) {
        let mut frames = Vec::new();
        let mut bytes = 0;
        while frames.len() < BATCH_FRAMES && bytes < BATCH_BYTES {
            let Some(frame) = self.frames.pop_front() else {
                break;
            };
            bytes += frame.bytes.len();
            self.bytes -= frame.bytes.len();
            frames.push(frame);
        }
        let full = !self.frames.is_empty() || frames.len() >= BATCH_FRAMES || bytes >= BATCH_BYTES;
        (frames, full)
    }
}

/// The hello last built: the addresses and key epoch it announces, and its bytes.
struct HelloCache {
    addresses: Vec<String>,
    epoch: u32,
    frame: Vec<u8>,
}

impl Node {
    pub(super) async fn network_loop(
        self,
        mut transport: Box<dyn Transport>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // The next periodic hello: at once (below), then every `Node::hello_interval` (worked
        // out again after each, as the network grows or shrinks).
        let mut next_hello = tokio::time::Instant::now();
        *lock(&self.inner.addresses) = transport.local_addresses();
        // Hellos: one broadcast at start and one per interval. A new peer (a connection opened,
        // or a hello from an unknown node) gets the latest of them sent to it alone: a
        // broadcast would make every node verify one more hello per newcomer, and the same
        // bytes again cost a peer that has them only a lookup.
        let mut hello: Option<HelloCache> = None;
        // After the first connection (when gossip can carry it), the hello is broadcast again:
        // the one at start reached nobody, and this is how the nodes that this node does not
        // connect to learn of it (they answer it, each to this node alone). A new hello goes
        // out a few times, as subscriptions arrive: gossip publishes the same bytes only once,
        // so once a copy went out, a repeat of it reached nobody (and gossipsub warned).
        let mut joined = false;
        let mut join_hellos: Vec<tokio::time::Instant> = Vec::new();
        // The first periodic round is at start, before any frame is read: it goes out only when
        // the peer table was not empty then (a node that restarts catches up at once). A node
        // that starts with an empty table leaves its first exchanges to its new peers' hellos,
        // which apply the lower-id rule; a round at start that saw a peer learnt meanwhile
        // would start an exchange that rule left to the peer, and the two would cross.
        let every_hello = self.size_hello_interval();
        self.broadcast_hello(transport.as_mut(), &mut hello);
        next_hello += Duration::from_millis(every_hello);
        let first = self
            .build_query(transport.max_frame_bytes(), Vec::new(), true)
            .await;
        self.send_query(transport.as_mut(), &mut hello, first);
        // The next periodic round: `network.sync_interval_secs` after the last, stretched while
        // the store does not change (`Node::next_sync_round_ms`).
        let mut next_round =
            tokio::time::Instant::now() + Duration::from_millis(self.next_sync_round_ms());
        let mut sync_due: Option<tokio::time::Instant> = None;
        // A report that came in while frames were taken into a batch: handled next.
        let mut stash: Option<Option<Incoming>> = None;
        // Frames the transport lost before reading them, as counted so far.
        let mut dropped = 0;
        // The sync round that finds again what the transport lost.
        let sync_interval = u64::from(self.inner.config.network.sync_interval_secs);
        let mut repair = Repair::new(Duration::from_secs(sync_interval));
        // The batch being applied on a blocking thread, and the frames read meanwhile (the
        // transport is read while a batch is applied, so that its own buffer does not overflow).
        let mut applying: Option<Applying> = None;
        let mut queue = Queue::default();
        // The sync query being built, and whether it is a periodic round's; the next round
        // (periodic or repair) waits for it.
        let mut building: Option<Building> = None;
        let mut building_periodic = false;
        // The outbox being drained; a wake meanwhile waits for it.
        let mut draining: Option<Draining> = None;
        // The periodic hello being prepared; the next one is due once it is sent.
        let mut preparing_hello: Option<HelloPreparing> = None;
        // What follows the answers to new peers' hellos, being read; hellos wanted meanwhile
        // are answered with them.
        let mut reading_statements: Option<StatementsReading> = None;
        // The allocator's free memory goes back to the system a little after the node worked
        // (frames applied, its outbox sent, connections closed), at most once a minute
        // (`crate::heap`). Times on the runtime's clock.
        let mut heap = crate::heap::AfterWork::new(self.inner.config.network.release_heap);
        let clock = || tokio::time::Instant::now().into_std();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(heap.due().map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std)), if heap.due().is_some() => {
                    let node = self.clone();
                    if heap.release(clock(), move || node.release_store_cache()) {
                        self.inner.rejections.count("heap.released");
                    }
                }
                _ = tokio::time::sleep_until(join_hellos.last().copied().unwrap_or_else(tokio::time::Instant::now)), if !join_hellos.is_empty() => {
                    join_hellos.pop();
                    // A new hello with the current keys, and the statements that follow it.
                    self.broadcast_hello(transport.as_mut(), &mut hello);
                }
                _ = tokio::time::sleep_until(next_hello), if preparing_hello.is_none() => {
                    preparing_hello = Some(self.prepare_hello());
                }
                prepared = async { preparing_hello.as_mut().expect("a hello is prepared").await }, if preparing_hello.is_some() => {
                    preparing_hello = None;
                    let every = prepared.every;
                    self.send_hello(transport.as_mut(), &mut hello, prepared);
                    next_hello = tokio::time::Instant::now() + Duration::from_millis(every);
                }
                _ = self.inner.hello_wanted.notified(), if reading_statements.is_none() => {
                    // A wake left over from answers sent with the last read reads nothing.
                    if self.inner.hello_answers.any_waiting() {
                        reading_statements = Some(self.read_statements());
                    }
                }
                statements = async { reading_statements.as_mut().expect("statements are read").await }, if reading_statements.is_some() => {
                    reading_statements = None;
                    let frame = self.latest_hello(transport.as_mut(), &mut hello);
                    self.answer_hellos(transport.as_mut(), frame, statements);
                }
                _ = tokio::time::sleep_until(next_round) => {
                    // Set again after the round (below); meanwhile not due twice. A periodic
                    // round being built (wanted early) is this one.
                    next_round = tokio::time::Instant::now() + Duration::from_secs(3600);
                    if !(building.is_some() && building_periodic) {
                        sync_due = Some(tokio::time::Instant::now());
                    }
                }
                _ = self.inner.sync_wanted.notified() => {
                    // Give hellos a moment to cross first.
                    let at = tokio::time::Instant::now() + Duration::from_millis(100);
                    sync_due = Some(sync_due.map_or(at, |d| d.min(at)));
                }
                _ = tokio::time::sleep_until(repair.at.unwrap_or_else(tokio::time::Instant::now)), if repair.at.is_some() && building.is_none() => {
                    let (also, since_first) = repair.start(tokio::time::Instant::now());
                    self.inner.rejections.count("sync.repair_rounds");
                    self.repair_exchanges(since_first);
                    building = Some(self.build_query(transport.max_frame_bytes(), also, false));
                    building_periodic = false;
                }
                _ = tokio::time::sleep_until(sync_due.unwrap_or_else(tokio::time::Instant::now)), if sync_due.is_some() && building.is_none() => {
                    sync_due = None;
                    building = Some(self.build_query(transport.max_frame_bytes(), Vec::new(), true));
                    building_periodic = true;
                }
                query = async { building.as_mut().expect("a query is built").await }, if building.is_some() => {
                    building = None;
                    let periodic = query.periodic;
                    self.send_query(transport.as_mut(), &mut hello, query);
                    if periodic {
                        next_round = tokio::time::Instant::now() + Duration::from_millis(self.next_sync_round_ms());
                    } else {
                        repair.sent(tokio::time::Instant::now());
                    }
                }
                _ = self.inner.hello_changed.notified() => self.broadcast_hello(transport.as_mut(), &mut hello),
                _ = shutdown.changed() => {
                    if let Some(batch) = applying.take() {
                        self.finish_batch(transport.as_mut(), batch.await);
                    }
                    if let Some(step) = draining.take()
                        && let Drained::Due(items) = step.await
                    {
                        self.send_outbox(transport.as_mut(), &mut hello, items).await;
                    }
                    self.drain_outbox(transport.as_mut(), &mut hello).await;
                    return;
                }
                received = async { applying.as_mut().expect("a batch is applied").await }, if applying.is_some() => {
                    applying = None;
                    repair.heard(&received, tokio::time::Instant::now());
                    self.finish_batch(transport.as_mut(), received);
                    heap.worked(clock());
                    // (A batch the gate refused whole starts nothing: the next one is taken.)
                    while applying.is_none() && !queue.frames.is_empty() {
                        applying = self.next_batch(transport.as_mut(), &mut queue, &mut stash).await;
                    }
                    self.note_drops(transport.as_ref(), &mut dropped, &mut repair);
                    // Whatever the frames caused (an award, say) was committed through
                    // `commit_local`, which wakes the outbox: it goes out on the next turn,
                    // once for the whole batch.
                }
                incoming = next_incoming(transport.as_mut(), &mut stash), if !queue.is_full() => {
                    let frame = match incoming {
                        None => {
                            tracing::warn!("transport closed");
                            return;
                        }
                        Some(Incoming::Status(detail)) => {
                            // A status may be a new listen address (libp2p listens after it
                            // starts): shown at once, not from the next hello.
                            *lock(&self.inner.addresses) = transport.local_addresses();
                            let node = self.clone();
                            let name = transport.name().to_owned();
                            let _ = tokio::task::spawn_blocking(move || {
                                node.with_store(|s| {
                                    s.record_event(node.now_ms(), EventKind::TransportStatus { transport: name, detail })
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
                            if let Some(frame) = self.latest_hello(transport.as_mut(), &mut hello)
                                && let Err(e) = transport.send_to_announced(&to, &frame).and_then(|()| self.send_after_hello(transport.as_mut(), Some(&to)))
                            {
                                tracing::debug!("cannot send hello to a new connection: {e}");
                            }
                            continue;
                        }
                        Some(Incoming::Lost) => {
                            self.note_drops(transport.as_ref(), &mut dropped, &mut repair);
                            continue;
                        }
                        Some(Incoming::Closed) => {
                            heap.worked(clock());
                            continue;
                        }
                        Some(Incoming::Frame(frame)) => frame,
                    };
                    queue.push(frame);
                    if applying.is_some() && queue.is_full() {
                        self.inner.rejections.count("ingress.queue_full");
                    }
                    while applying.is_none() && !queue.frames.is_empty() {
                        applying = self.next_batch(transport.as_mut(), &mut queue, &mut stash).await;
                    }
                    // A loss is learnt with the frames read after it (UDP's overflow count
                    // comes with a datagram), whatever the gate makes of them: a flood the
                    // gate refuses whole applies no batch.
                    self.note_drops(transport.as_ref(), &mut dropped, &mut repair);
                }
                _ = self.inner.wake_outbox.notified(), if draining.is_none() => draining = Some(self.read_outbox()),
                drained = async { draining.as_mut().expect("the outbox is drained").await }, if draining.is_some() => {
                    draining = match drained {
                        Drained::Due(items) => {
                            heap.worked(clock());
                            Some(self.send_outbox(transport.as_mut(), &mut hello, items))
                        }
                        Drained::Settled { full } => {
                            if full {
                                self.inner.wake_outbox.notify_one();
                            }
                            None
                        }
                    };
                }
            }
        }
    }

    /// Lets go of SQLite's cached pages ([`crate::store::Store::release_cache`]): part of a
    /// heap release after work, on its blocking thread.
    fn release_store_cache(&self) {
        if let Err(e) = lock(&self.inner.store).release_cache() {
            tracing::debug!("cannot release the store's page cache: {e}");
        }
    }

    /// Counts what the transport dropped since `dropped` (counter `transport.dropped`) and,
    /// when it dropped more, lets `repair` schedule its round.
    fn note_drops(&self, transport: &dyn Transport, dropped: &mut u64, repair: &mut Repair) {
        let now = transport.dropped();
        if now > *dropped {
            self.inner
                .rejections
                .add("transport.dropped", now - *dropped);
            *dropped = now;
            repair.lost(tokio::time::Instant::now());
        }
    }

    /// Starts applying the next batch: the queued frames first (oldest first), then, while
    /// there is room, what the transport already holds. `None` when the gate refused them all.
    async fn next_batch(
        &self,
        transport: &mut dyn Transport,
        queue: &mut Queue,
        stash: &mut Option<Option<Incoming>>,
    ) -> Option<Applying> {
        let (mut frames, mut full) = queue.take_batch();
        if !full && queue.frames.is_empty() && stash.is_none() {
            full = take_queued(transport, &mut frames, stash).await;
        }
        self.start_batch(transport, frames, full).await
    }

    /// Receives frames that arrived together (see `node/batch.rs`): the gate here, the rest on
    /// one blocking thread, which the returned handle awaits; verdicts and answers go out after
    /// the commit ([`Node::finish_batch`]).
    async fn start_batch(
        &self,
        transport: &mut dyn Transport,
        frames: Vec<InboundFrame>,
        full: bool,
    ) -> Option<Applying> {
        let max = transport.max_frame_bytes();
        let counters = &self.inner.rejections;
        counters.count("ingress.batches");
        counters.add("ingress.batch_frames", frames.len() as u64);
        if full {
            counters.count("ingress.batches_full");
        }
        let mut admitted = Vec::with_capacity(frames.len());
        // The frames arrived together: one reading of the clock serves them all.
        let now = self.now_ms();
        for InboundFrame { bytes, from, ack } in frames {
            if let Err(rejection) = self.inner.gate.admit(&bytes, &from, max, now) {
                // Refused before any blocking work: no transaction, no outbox scan.
                let handled = self.refuse(rejection, now).await;
                if let Some(ack) = ack {
                    let _ = ack.send(handled);
                }
                continue;
            }
            let source = ingress::Source {
                verified: transport.source_verified(&from),
                from,
            };
            admitted.push(batch::Arrival { bytes, source, ack });
        }
        if admitted.is_empty() {
            return None;
        }
        let node = self.clone();
        let task = tokio::task::spawn_blocking(move || node.receive_batch(admitted, max));
        Some(Box::pin(async move {
            task.await.unwrap_or_else(|e| {
                tracing::error!("receive task failed: {e}");
                Vec::new()
            })
        }))
    }

    /// Gives a committed batch's verdicts to the transport and sends its answers.
    fn finish_batch(&self, transport: &mut dyn Transport, received: Vec<batch::Received>) {
        for batch::Received {
            handled,
            from,
            ack,
            acked,
        } in received
        {
            match ack {
                // The transport forwards or drops the frame and carries the answers.
                Some(ack) => {
                    let _ = ack.send(handled);
                }
                // Held: the hold answers when it releases or drops the frame.
                None if acked => {}
                // Answers go to the requester only, never to every peer.
                None => {
                    for frame in handled.replies {
                        if let Err(e) = transport.send_to(&from, &frame) {
                            tracing::debug!("cannot send sync answer: {e}");
                        }
                    }
                }
            }
        }
    }

    /// Sends the outbox messages that are due (one batch of them) and writes what became of
    /// them, waiting for each step (when this node stops).
    async fn drain_outbox(&self, transport: &mut dyn Transport, hello: &mut Option<HelloCache>) {
        if let Drained::Due(items) = self.read_outbox().await {
            self.send_outbox(transport, hello, items).await;
        }
    }

    /// Reads the outbox messages that are due, at most [`OUTBOX_BATCH`].
    fn read_outbox(&self) -> Draining {
        let node = self.clone();
        Box::pin(async move {
            let work = move || lock(&node.inner.store).outbox_due(node.now_ms(), OUTBOX_BATCH);
            let items = background_blocking("cannot read the outbox", "outbox", work).await;
            Drained::Due(items.unwrap_or_default())
        })
    }

    /// Sends `items` (due outbox messages) and returns the write of what became of them, which
    /// schedules the next look: at once when they were a whole batch, else at the earliest
    /// retry (housekeeping wakes the outbox).
    fn send_outbox(
        &self,
        transport: &mut dyn Transport,
        hello: &mut Option<HelloCache>,
        items: Vec<OutboxItem>,
    ) -> Draining {
        let full = items.len() == OUTBOX_BATCH;
        if !items.is_empty() {
            self.announce_new_keys(transport, hello);
        }
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            let sent = transport.broadcast(&item.envelope);
            results.push((item, sent));
        }
        let node = self.clone();
        let net = self.inner.config.network.clone();
        // Started at once: written even when the loop ends before it awaits the write.
        let task = tokio::task::spawn_blocking(move || {
            node.with_store(|s| {
                let now = node.now_ms();
                // One transaction marks the whole batch and records its failures (one fsync,
                // not one per message or failure).
                let mut done = Vec::with_capacity(results.len());
                let mut retry = Vec::new();
                let mut failed = Vec::new();
                for (item, sent) in results {
                    match sent {
                        Ok(()) => done.push(item.seq),
                        Err(e) => {
                            let shift = item.attempts.min(20);
                            let delay = net
                                .retry_base_ms
                                .saturating_mul(1u64 << shift)
                                .min(net.retry_max_ms);
                            retry.push((item.seq, now + delay));
                            failed.push(EventKind::SendFailed {
                                message_id: item.message_id,
                                detail: e.to_string(),
                            });
                        }
                    }
                }
                s.outbox_settle(&done, &retry, failed, now)?;
                if let Some(at) = s.outbox_next_attempt()? {
                    node.inner.timers.retry_at.fetch_min(at, Ordering::Relaxed);
                }
                Ok(())
            })
        });
        Box::pin(async move {
            let _ = task.await;
            Drained::Settled { full }
        })
    }

    /// The latest hello broadcast, rebuilt (not sent) when the transport's addresses changed
    /// since: peers answer a hello at the addresses it announces. New keys are broadcast first
    /// ([`Node::announce_new_keys`]).
    fn latest_hello(
        &self,
        transport: &mut dyn Transport,
        cache: &mut Option<HelloCache>,
    ) -> Option<Vec<u8>> {
        self.announce_new_keys(transport, cache);
        let addresses = transport.local_addresses();
        if cache.as_ref().is_none_or(|c| c.addresses != addresses) {
            let epoch = self.keys().public().epoch;
            match self.hello_frame(&addresses) {
                Ok(frame) => {
                    *lock(&self.inner.addresses) = addresses.clone();
                    *cache = Some(HelloCache {
                        addresses,
                        epoch,
                        frame,
                    });
                }
                Err(e) => tracing::warn!("cannot build hello: {e}"),
            }
        }
        cache.as_ref().map(|c| c.frame.clone())
    }

    /// Broadcasts the hello (with the rotation chain, then the rotation statements) when this
    /// node's keys changed since the last hello it sent, so that its peers learn the new keys
    /// before any frame signed with them: called before every frame this node signs or sends
    /// from its outbox (the outbox may hold envelopes that another process on this data
    /// directory signed after it rotated the keys).
    fn announce_new_keys(&self, transport: &mut dyn Transport, cache: &mut Option<HelloCache>) {
        let epoch = self.keys().public().epoch;
        if cache.as_ref().is_some_and(|c| c.epoch != epoch) {
            self.broadcast_hello(transport, cache);
        }
    }

    /// Builds, on a blocking thread, the first query of a sync round for frames of at most
    /// `max` bytes (none when this node knows no peer; see [`Node::range_query_frame`]); the
    /// round also goes to the sources `also` (each alone), and one that is not `periodic` (a
    /// repair) leaves the pace of the periodic ones alone.
    fn build_query(&self, max: usize, also: Vec<String>, periodic: bool) -> Building {
        let node = self.clone();
        Box::pin(async move {
            let work = move || node.range_query_frame(max, periodic);
            let frame = background_blocking("cannot build sync query", "sync", work).await;
            Query {
                frame: frame.flatten(),
                also,
                periodic,
            }
        })
    }

    /// Sends a sync round's query ([`Node::build_query`]): new keys announced first, then the
    /// query to the transport's sync peers and to each of the sources it also goes to.
    fn send_query(
        &self,
        transport: &mut dyn Transport,
        hello: &mut Option<HelloCache>,
        query: Query,
    ) {
        let Some(frame) = query.frame else {
            return;
        };
        self.announce_new_keys(transport, hello);
        if let Err(e) = transport.sync(&frame) {
            tracing::debug!("cannot send sync query: {e}");
        }
        for to in &query.also {
            if let Err(e) = transport.send_to(to, &frame) {
                tracing::debug!("cannot send sync query to {to}: {e}");
            }
        }
    }

    /// Reads what the periodic hello needs from the store on a blocking thread: its interval,
    /// sized first (the hello's freshness covers the interval that follows it), and the
    /// revocations and rotations that follow it (none when they cannot be read: logged, and
    /// the hello goes out without them, as before).
    fn prepare_hello(&self) -> HelloPreparing {
        let node = self.clone();
        Box::pin(async move {
            let current = node.hello_interval_ms();
            let work = move || -> Result<HelloPrepared> {
                let every = node.size_hello_interval();
                let after = node.statements_after_hello();
                Ok(HelloPrepared { every, after })
            };
            background_blocking("cannot prepare hello", "hello", work)
                .await
                .unwrap_or(HelloPrepared {
                    every: current,
                    after: Vec::new(),
                })
        })
    }

    /// The revocations and key rotation statements sent after a hello (reads the store when
    /// the node holds any); a list that cannot be read is logged and left out.
    fn statements_after_hello(&self) -> Vec<Vec<u8>> {
        let mut after = self.revocation_frames().unwrap_or_else(|e| {
            tracing::warn!("cannot read the revocations to send: {e}");
            Vec::new()
        });
        match self.rotation_frames() {
            Ok(rotations) => after.extend(rotations),
            Err(e) => tracing::warn!("cannot read the key rotations to send: {e}"),
        }
        after
    }

    /// [`Node::statements_after_hello`] on a blocking thread when the node holds any (the
    /// store may be held by a batch: the batch that asked for the answers, say), at once when
    /// it holds none.
    fn read_statements(&self) -> StatementsReading {
        let node = self.clone();
        Box::pin(async move {
            let trust = &node.inner.trust;
            if trust.stored_revocations() == 0 && trust.stored_rotations() == 0 {
                return Vec::new();
            }
            let work = move || Ok::<_, crate::error::Error>(node.statements_after_hello());
            background_blocking("cannot read statements", "hello answers", work)
                .await
                .unwrap_or_default()
        })
    }

    /// Builds the periodic hello for the transport's current addresses and keys, broadcasts
    /// it and what [`Node::prepare_hello`] read to follow it, and keeps it in `cache` for the
    /// answers to new peers.
    fn send_hello(
        &self,
        transport: &mut dyn Transport,
        cache: &mut Option<HelloCache>,
        prepared: HelloPrepared,
    ) {
        let addresses = transport.local_addresses();
        *lock(&self.inner.addresses) = addresses.clone();
        let epoch = self.keys().public().epoch;
        let frame = match self.hello_frame(&addresses) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!("cannot build hello: {e}");
                return;
            }
        };
        let sent = std::iter::once(&frame)
            .chain(&prepared.after)
            .try_for_each(|frame| transport.broadcast(frame));
        if let Err(e) = sent {
            tracing::debug!("cannot send hello: {e}");
        }
        *cache = Some(HelloCache {
            addresses,
            epoch,
            frame,
        });
    }

    /// Works out the hello interval for the peers that count now ([`Node::hello_interval`])
    /// and returns it, in ms. When the peer table cannot be read, the interval stays as it was.
    pub(super) fn size_hello_interval(&self) -> u64 {
        let now = self.now_ms();
        let current = self.hello_interval_ms();
        match self.with_store(|s| self.size_hello_interval_from(s, now, current)) {
            Ok(every) => {
                self.inner.hello_every_ms.store(every, Ordering::Relaxed);
                every
            }
            Err(e) => {
                tracing::warn!("cannot count peers: {e}");
                current
            }
        }
    }

    /// Builds the hello for the transport's current addresses (they can appear after start:
    /// libp2p listeners) and keys, broadcasts it with what follows a hello, and keeps it in
    /// `cache` for the answers to new peers.
    fn broadcast_hello(&self, transport: &mut dyn Transport, cache: &mut Option<HelloCache>) {
        let addresses = transport.local_addresses();
        *lock(&self.inner.addresses) = addresses.clone();
        let epoch = self.keys().public().epoch;
        match self.hello_frame(&addresses) {
            Ok(frame) => {
                if let Err(e) = transport
                    .broadcast(&frame)
                    .and_then(|()| self.send_after_hello(transport, None))
                {
                    tracing::debug!("cannot send hello: {e}");
                }
                *cache = Some(HelloCache {
                    addresses,
                    epoch,
                    frame,
                });
            }
            Err(e) => tracing::warn!("cannot build hello: {e}"),
        }
    }

    /// Sends what follows a hello, the revocations and the key rotation statements this node
    /// holds: to every peer, or to the one that announced `to` (see
    /// [`Transport::send_to_announced`]).
    fn send_after_hello(&self, transport: &mut dyn Transport, to: Option<&[String]>) -> Result<()> {
        for frame in self.statements_after_hello() {
            match to {
                Some(to) => transport.send_to_announced(to, &frame)?,
                None => transport.broadcast(&frame)?,
            }
        }
        Ok(())
    }

    pub(super) fn hello_frame(&self, addresses: &[String]) -> Result<Vec<u8>> {
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
        // Fresh for four intervals: as long as the peers keep the sender active.
        let ttl =
            u32::try_from(self.hello_interval_ms().saturating_mul(4) / 1000).unwrap_or(u32::MAX);
        self.plain_frame(Kind::NodeHello, &envelope::encode_hello(&hello), ttl)
    }

    /// The `revocations` envelopes sent after each hello: the revocations this node holds
    /// that concern nodes it knows (issued by an anchor, or a node's own revocation of a peer,
    /// of an author of stored messages, of a certificate holder or of itself), not those of
    /// strangers ([`crate::store::Store::revocations_to_send`]).
    pub(super) fn revocation_frames(&self) -> Result<Vec<Vec<u8>>> {
        if self.inner.trust.stored_revocations() == 0 {
            return Ok(Vec::new());
        }
        let all = lock(&self.inner.store).revocations_to_send(&self.inner.id)?;
        if all.is_empty() {
            return Ok(Vec::new());
        }
        self.statement_frames(Kind::Revocations, all)
    }

    /// The `kind` envelopes that carry `statements` (revocations or key rotations, each in its
    /// encoded form), as few as the envelope size allows.
    pub(super) fn statement_frames(
        &self,
        kind: Kind,
        statements: Vec<Vec<u8>>,
    ) -> Result<Vec<Vec<u8>>> {
        let max_payload = self.inner.config.network.max_envelope_bytes - envelope::OVERHEAD;
        sync::pack(statements, max_payload)
            .iter()
            .map(|list| self.plain_frame(kind, &envelope::encode_hello(list), 60))
            .collect()
    }
}

/// The next report of the transport: the one set aside while a batch was taken, or a new one.
async fn next_incoming(
    transport: &mut dyn Transport,
    stash: &mut Option<Option<Incoming>>,
) -> Option<Incoming> {
    match stash.take() {
        Some(incoming) => incoming,
        None => network::next(transport).await,
    }
}

/// Adds to `frames` the frames the transport already holds, without waiting for more, up to
/// [`BATCH_FRAMES`] frames and [`BATCH_BYTES`] bytes; a report that is not a frame ends the
/// batch and is set aside in `stash`. Returns whether the batch is full (more may wait).
async fn take_queued(
    transport: &mut dyn Transport,
    frames: &mut Vec<InboundFrame>,
    stash: &mut Option<Option<Incoming>>,
) -> bool {
    let mut bytes: usize = frames.iter().map(|f| f.bytes.len()).sum();
    std::future::poll_fn(|cx| {
        while frames.len() < BATCH_FRAMES && bytes < BATCH_BYTES {
            match transport.poll_recv(cx) {
                std::task::Poll::Ready(Some(Incoming::Frame(frame))) => {
                    bytes += frame.bytes.len();
                    frames.push(frame);
                }
                std::task::Poll::Ready(other) => {
                    *stash = Some(other);
                    return std::task::Poll::Ready(false);
                }
                std::task::Poll::Pending => return std::task::Poll::Ready(false),
            }
        }
        std::task::Poll::Ready(true)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::identity::Identity;
    use crate::model::MessageId;
    use crate::network::MemoryHub;

    /// A hello of a node this node does not know: it passes the gate, and receiving it needs
    /// the store.
    fn stranger_hello() -> Vec<u8> {
        let id = Identity::from_tag(77, 0);
        let hello = super::super::admission_tests::plain_hello(&id, "stranger");
        super::super::admission_tests::hello_envelope(&id, &hello, MessageId::from_bytes([7; 16]))
    }

    /// A node on a memory hub and a peer beside it, once the node's start-up traffic passed;
    /// the node says hello every second (so a hello is also due in the tests that wake
    /// something else: it must not stop the transport from being read either).
    async fn node_and_peer() -> (tempfile::TempDir, MemoryHub, Node, network::MemoryTransport) {
        let dir = tempfile::tempdir().unwrap();
        let hub = MemoryHub::new();
        let mut config = Config::with_data_dir(dir.path().join("node"));
        config.name = "node".into();
        config.network.hello_interval_secs = 1;
        let node = Node::start_with_transport(config, Box::new(hub.join("node")))
            .await
            .unwrap();
        let peer = hub.join("peer");
        tokio::time::sleep(Duration::from_millis(300)).await;
        (dir, hub, node, peer)
    }

    /// Another thread holding the node's store (as the transaction of a long batch does)
    /// until [`StoreHeld::release`].
    struct StoreHeld {
        release: std::sync::mpsc::Sender<()>,
        holder: std::thread::JoinHandle<()>,
    }

    impl StoreHeld {
        /// Returns once the other thread holds the store.
        fn hold(node: &Node) -> StoreHeld {
            let (held_tx, held_rx) = std::sync::mpsc::channel();
            let (release, release_rx) = std::sync::mpsc::channel::<()>();
            let node = node.clone();
            let holder = std::thread::spawn(move || {
                let _store = lock(&node.inner.store);
                held_tx.send(()).unwrap();
                // At most 15 s: a network task that waits for the store (the regression these
                // tests catch) may starve the test's own task, which then never releases it.
                let _ = release_rx.recv_timeout(Duration::from_secs(15));
            });
            held_rx.recv().unwrap();
            StoreHeld { release, holder }
        }

        fn release(self) {
            drop(self.release);
            self.holder.join().unwrap();
        }
    }

    /// `peer` sends more frames than a batch and the network task's queue hold; then waits up
    /// to 10 s for the node to count `ingress.queue_full` (not yet flushed to the store, which
    /// may be held): that count, 0 when the queue never filled.
    async fn overfill(node: &Node, peer: &mut network::MemoryTransport) -> u64 {
        let hello = stranger_hello();
        for _ in 0..(BATCH_FRAMES + QUEUED_FRAMES + 10) {
            peer.broadcast(&hello).unwrap();
        }
        let full = || {
            node.inner
                .rejections
                .pending_counters()
                .get("ingress.queue_full")
                .copied()
                .unwrap_or(0)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while full() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        full()
    }

    /// While a batch waits for the store, the network task goes on reading the transport into
    /// its queue, up to [`QUEUED_FRAMES`] (then `ingress.queue_full`): a burst larger than a
    /// batch is not left in the transport's buffer, where a UDP socket drops what does not fit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_transport_is_read_while_a_batch_is_applied() {
        let (_dir, _hub, node, mut peer) = node_and_peer().await;
        // Another thread holds the store: the first batch cannot be applied.
        let held = StoreHeld::hold(&node);
        overfill(&node, &mut peer).await;
        held.release();
        let counters = node.overview().await.unwrap().counters;
        assert!(
            counters.get("ingress.queue_full").copied().unwrap_or(0) >= 1,
            "the node did not fill its queue while its first batch waited: {counters:?}"
        );
        node.stop().await.unwrap();
    }

    /// A sync round due, the outbox woken, the periodic hello due or a new peer's hello to
    /// answer, while another thread holds the store (as the transaction of a long batch does)
    /// does not stop the network task from reading the transport: the query, the outbox and
    /// the store reads of the hellos (the interval is sized to the peer table, and revocations
    /// and rotations follow a hello) wait on a blocking thread. Before, the task waited with
    /// them, and a UDP socket dropped what arrived meanwhile (the queue never filled).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_transport_is_read_while_a_sync_query_the_outbox_or_a_hello_waits_for_the_store() {
        let ms = Duration::from_millis;
        for (what, wake, wait) in [
            (
                "a sync round",
                (|n: &Node| n.inner.sync_wanted.notify_one()) as fn(&Node),
                // The round is due 100 ms after it is wanted.
                ms(300),
            ),
            (
                "the outbox",
                |n: &Node| n.inner.wake_outbox.notify_one(),
                ms(300),
            ),
            // The next hello is due within a second.
            ("the periodic hello", |_: &Node| {}, ms(1500)),
            // A new peer's hello to answer (wanted by the batch that applied it, which holds
            // the store), the node holding a key rotation statement to send after its hello.
            (
                "the answer to a new peer's hello",
                |n: &Node| {
                    let source = ingress::Source {
                        from: "memory:peer".into(),
                        verified: true,
                    };
                    let peer = crate::model::NodeId::from_bytes([9; 32]);
                    assert!(n.want_hello_answer(&source, &peer, &[], 1000));
                },
                ms(300),
            ),
        ] {
            let (_dir, _hub, node, mut peer) = node_and_peer().await;
            if what.starts_with("the answer") {
                node.rotate_keys().await.unwrap();
                assert!(node.inner.trust.stored_rotations() > 0);
                // The node broadcasts its new hello and the rotation statement (reading the
                // store on its task); the peer has the statement before the store is held.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let incoming = tokio::time::timeout(left, network::next(&mut peer))
                        .await
                        .expect("the rotation statement was never broadcast");
                    if let Some(Incoming::Frame(f)) = incoming
                        && envelope::parse(&f.bytes, usize::MAX)
                            .is_ok_and(|p| p.header.kind == Kind::KeyRotations)
                    {
                        break;
                    }
                }
            }
            let held = StoreHeld::hold(&node);
            wake(&node);
            // Then it waits for the store.
            tokio::time::sleep(wait).await;
            let read = overfill(&node, &mut peer).await;
            held.release();
            assert!(
                read >= 1,
                "the transport was not read while {what} waited for the store"
            );
            node.stop().await.unwrap();
        }
    }

    /// A transport that loses the frames it receives while `losing` is set, as a UDP socket
    /// with its receive buffer full does, and counts them in [`Transport::dropped`]. Like UDP
    /// without configured peers (a node that others send to), its sync queries reach nobody
    /// and it vouches for no source: a peer is reached only by answering its frames.
    struct Lossy {
        inner: crate::network::MemoryTransport,
        losing: std::sync::Arc<std::sync::atomic::AtomicBool>,
        lost: std::sync::Arc<std::sync::atomic::AtomicU64>,
        /// Losses reported with [`Incoming::Lost`] when nothing else is to be read (as UDP
        /// does for a drained socket), when set: up to this count.
        reports_drained: Option<u64>,
    }

    impl Transport for Lossy {
        network::delegate_transport!(
            inner: name,
            max_frame_bytes,
            local_addresses,
            broadcast,
            send_to,
            answer_hello,
        );
        fn sync(&mut self, _frame: &[u8]) -> Result<()> {
            Ok(())
        }
        fn source_verified(&self, _from: &str) -> bool {
            false
        }
        fn poll_recv(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Incoming>> {
            loop {
                match self.inner.poll_recv(cx) {
                    std::task::Poll::Ready(Some(Incoming::Frame(_)))
                        if self.losing.load(Ordering::SeqCst) =>
                    {
                        self.lost.fetch_add(1, Ordering::SeqCst);
                    }
                    std::task::Poll::Pending => {
                        let lost = self.lost.load(Ordering::SeqCst);
                        if let Some(reported) = &mut self.reports_drained
                            && lost > *reported
                        {
                            *reported = lost;
                            return std::task::Poll::Ready(Some(Incoming::Lost));
                        }
                        return std::task::Poll::Pending;
                    }
                    other => return other,
                }
            }
        }
        fn dropped(&self) -> u64 {
            self.lost.load(Ordering::SeqCst)
        }
    }

    /// Two nodes on a memory hub, `a` behind a [`Lossy`] transport, `b` with the lower id (a's
    /// repair exchange with b must not yield to b's exchange at start, which ran before the
    /// loss). No periodic sync round or hello comes within a test (an hour away): only a
    /// repair round can bring back what `a` lost.
    struct LossyPair {
        _dir: tempfile::TempDir,
        hub: MemoryHub,
        a: Node,
        b: Node,
        losing: std::sync::Arc<std::sync::atomic::AtomicBool>,
        lost: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }

    impl LossyPair {
        /// Starts the pair with identities from tags `tag` and `tag + 1`, `a` reporting its
        /// losses when drained as [`Lossy::reports_drained`] says.
        async fn start(tag: u8, reports_drained: Option<u64>) -> LossyPair {
            let dir = tempfile::tempdir().unwrap();
            let hub = MemoryHub::new();
            let config = |name: &str| {
                let mut c = Config::with_data_dir(dir.path().join(name));
                c.name = name.into();
                c.events.log_enabled = false;
                c.network.tick_ms = 20;
                c.network.sync_interval_secs = 3600;
                c.network.hello_interval_secs = 3600;
                c
            };
            let mut ids = [Identity::from_tag(tag, 1), Identity::from_tag(tag + 1, 1)];
            ids.sort_by(|x, y| y.node_id().cmp(x.node_id()));
            for (name, id) in ["a", "b"].iter().zip(&ids) {
                std::fs::create_dir_all(dir.path().join(name)).unwrap();
                id.write_new(&dir.path().join(name).join("identity.key"))
                    .unwrap();
            }
            let losing = std::sync::Arc::default();
            let lost = std::sync::Arc::default();
            let lossy = Lossy {
                inner: hub.join("a"),
                losing: std::sync::Arc::clone(&losing),
                lost: std::sync::Arc::clone(&lost),
                reports_drained,
            };
            let a = Node::start_with_transport(config("a"), Box::new(lossy))
                .await
                .unwrap();
            let b = Node::start_with_transport(config("b"), Box::new(hub.join("b")))
                .await
                .unwrap();
            assert!(b.inner.id < a.inner.id);
            a.wait_for_peers(1, Duration::from_secs(20)).await.unwrap();
            b.wait_for_peers(1, Duration::from_secs(20)).await.unwrap();
            // Let the exchanges that follow the hellos end.
            tokio::time::sleep(Duration::from_millis(500)).await;
            LossyPair {
                _dir: dir,
                hub,
                a,
                b,
                losing,
                lost,
            }
        }

        /// `b` publishes five seeds while `a` loses every frame it receives; their ids, once
        /// `a` lost them all.
        async fn lose_burst(&self) -> Vec<crate::model::SeedId> {
            self.losing.store(true, Ordering::SeqCst);
            let mut ids = Vec::new();
            for i in 0..5 {
                ids.push(self.publish(&format!("echo lost {i}")).await);
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while self.lost.load(Ordering::SeqCst) < 5 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(self.lost.load(Ordering::SeqCst) >= 5, "the burst was lost");
            self.losing.store(false, Ordering::SeqCst);
            ids
        }

        /// `b` publishes a seed running `command`.
        async fn publish(&self, command: &str) -> crate::model::SeedId {
            let request = crate::node::PublishRequest {
                command: command.into(),
                ..Default::default()
            };
            self.b.publish(request).await.unwrap().seed.id
        }

        /// Asserts that `a` has every seed of `ids` within 10 s, and counted the loss and a
        /// repair round; `case` names the test case in a failure.
        async fn assert_repaired(&self, ids: &[crate::model::SeedId], case: &str) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let missing = loop {
                let mut missing = 0;
                for id in ids {
                    missing += usize::from(self.a.seed(id).await.is_err());
                }
                if missing == 0 || tokio::time::Instant::now() > deadline {
                    break missing;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let counters = self.a.overview().await.unwrap().counters;
            assert!(
                missing == 0,
                "{missing} of {} seeds still missing ({case}); a: {counters:?}; b: {:?}",
                ids.len(),
                self.b.overview().await.unwrap().counters
            );
            for counter in ["transport.dropped", "sync.repair_rounds"] {
                let want = if counter == "transport.dropped" { 5 } else { 1 };
                assert!(
                    counters.get(counter).copied().unwrap_or(0) >= want,
                    "{counter} ({case}): {counters:?}"
                );
            }
        }

        async fn stop(self) {
            self.a.stop().await.unwrap();
            self.b.stop().await.unwrap();
        }
    }

    /// A burst the transport could not take (a peer sending its outbox faster than this node
    /// applies: UDP drops what its buffer does not hold) is found again by a sync round as soon
    /// as the losses stop, not at the next periodic round of the sender
    /// (`network.sync_interval_secs`, here an hour away); the round asks the sources it
    /// accepted frames from, as this node's own sync queries reach nobody. Before, the five
    /// lost seeds were still missing after 10 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_the_transport_dropped_is_repaired_by_sync_at_once() {
        let pair = LossyPair::start(31, None).await;
        let mut ids = pair.lose_burst().await;
        // The next frame that arrives (the loss is learnt with it, as over UDP).
        ids.push(pair.publish("echo after").await);
        pair.assert_repaired(&ids, "learnt with the next frame")
            .await;
        pair.stop().await;
    }

    /// A loss brings a repair round however it is learnt, when no valid frame follows it:
    /// with frames the gate refuses (a flood of garbage that overflows the receive buffer
    /// applies no batch, and the valid frames it pushed out were missing until the next
    /// periodic round, here an hour away), or with nothing at all (the end of a burst: the
    /// transport reports the loss when it finds itself drained). Before, all five seeds were
    /// missing after 10 s in both cases.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn losses_are_repaired_when_no_valid_frame_follows() {
        for garbage in [true, false] {
            let pair = LossyPair::start(33, (!garbage).then_some(0)).await;
            let mut flooder = pair.hub.join("flooder");
            let ids = pair.lose_burst().await;
            // Only garbage arrives after the loss (the gate refuses it, no batch is applied),
            // or nothing.
            if garbage {
                for _ in 0..20 {
                    flooder.send_to("a", b"not an envelope").unwrap();
                }
            }
            let case = if garbage {
                "garbage after the loss"
            } else {
                "nothing after the loss"
            };
            pair.assert_repaired(&ids, case).await;
            pair.stop().await;
        }
    }

    #[test]
    fn a_repair_round_waits_for_quiet_within_bounds_and_is_spaced() {
        let t0 = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        let mut r = Repair::new(Duration::from_secs(10));
        // Losses stop: the round follows the quiet time.
        r.lost(t0);
        assert_eq!(r.at, Some(t0 + REPAIR_QUIET));
        r.lost(t0 + ms(500));
        assert_eq!(r.at, Some(t0 + ms(500) + REPAIR_QUIET));
        // Losses go on: no later than REPAIR_LATEST after the first.
        r.lost(t0 + ms(1900));
        assert_eq!(r.at, Some(t0 + REPAIR_LATEST));
        let round = t0 + REPAIR_LATEST;
        assert!(r.start(round).0.is_empty());
        assert_eq!((r.at, r.first), (None, None));
        // Never sooner than the spacing after the last round, which doubles while losses go on
        // from round to round, up to REPAIR_SPACING_MAX.
        let mut last = round;
        for spacing in [2, 4, 4, 4] {
            r.lost(last + ms(10));
            let at = r.at.unwrap();
            assert_eq!(at, last + r.spacing);
            r.start(at);
            assert_eq!(r.spacing, Duration::from_secs(spacing));
            last = at;
        }
        // After a quiet spell it is back to one second.
        let later = last + Duration::from_secs(60);
        r.lost(later);
        let start = r.at.unwrap();
        r.start(start);
        assert_eq!(r.spacing, REPAIR_SPACING);
        // The spacing counts from when the query went out (its build waited for the store),
        // also for a loss learnt meanwhile.
        r.lost(start + ms(100));
        let sent = start + ms(1500);
        r.sent(sent);
        assert_eq!(r.at, Some(sent + REPAIR_SPACING));
        r.lost(sent + ms(10));
        assert_eq!(r.at, Some(sent + REPAIR_SPACING));
    }

    #[test]
    fn a_repair_round_asks_the_latest_senders_of_accepted_frames_heard_lately() {
        let t0 = tokio::time::Instant::now();
        let received = |from: &str, acceptance| batch::Received {
            handled: network::Handled {
                acceptance,
                replies: Vec::new(),
            },
            from: from.into(),
            ack: None,
            acked: false,
        };
        let mut r = Repair::new(Duration::from_secs(10));
        let mut frames: Vec<_> = (0..10)
            .map(|i| {
                received(
                    &format!("udp:192.0.2.{i}:7946"),
                    network::Acceptance::Accept,
                )
            })
            .collect();
        frames.push(received(
            "udp:203.0.113.9:7946",
            network::Acceptance::Reject,
        ));
        r.heard(&frames, t0);
        // Newest first, at most eight, none rejected.
        let (asked, _) = r.start(t0);
        let newest: Vec<String> = (2..10)
            .rev()
            .map(|i| format!("udp:192.0.2.{i}:7946"))
            .collect();
        assert_eq!(asked, newest);
        // None heard more than the sync interval ago.
        r.heard(
            &[received(
                "udp:198.51.100.1:7946",
                network::Acceptance::Accept,
            )],
            t0 + Duration::from_secs(9),
        );
        let (asked, _) = r.start(t0 + Duration::from_secs(11));
        assert_eq!(asked, ["udp:198.51.100.1:7946"]);
        // How long ago the first loss was.
        r.lost(t0 + Duration::from_secs(20));
        r.lost(t0 + Duration::from_millis(20_500));
        let (_, since_first) = r.start(t0 + Duration::from_secs(21));
        assert_eq!(since_first, Duration::from_secs(1));
    }

    #[test]
    fn a_queue_hands_out_batches_oldest_first_and_is_bounded() {
        let mut q = Queue::default();
        for i in 0..(BATCH_FRAMES + 3) {
            q.push(InboundFrame::new(vec![i as u8; 10], "memory:x"));
        }
        assert!(!q.is_full());
        let (first, full) = q.take_batch();
        assert_eq!((first.len(), full), (BATCH_FRAMES, true));
        assert_eq!(first[1].bytes[0], 1);
        let (rest, full) = q.take_batch();
        assert_eq!((rest.len(), full, q.bytes), (3, false, 0));
        assert_eq!(rest[0].bytes[0], BATCH_FRAMES as u8);
        for _ in 0..QUEUED_FRAMES {
            q.push(InboundFrame::new(vec![0; 1], "memory:x"));
        }
        assert!(q.is_full());
    }
}
