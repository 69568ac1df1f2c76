//! Bookkeeping in front of the store for the receive path: frames that are rejected or already
//! known cost memory, not disk.
//!
//! * [`Rejections`] counts rejected frames in memory (written to the store's counters in one
//!   transaction per housekeeping tick) and lets through at most one `message_rejected` event
//!   per source and reason as it happens, plus one summary per window for the rejections it
//!   held back; the window is `network.reject_event_window_ms`.
//! * [`Gate`] runs the checks that need neither the store nor a signature, in the network task
//!   before a frame is handed to a blocking thread: size, structure, then the rate limit per
//!   transport source. A frame it refuses costs a hash lookup or two. The limit per sender is
//!   charged by the trust boundary once the signatures proved who the sender is
//!   ([`Gate::charge_sender`]).
//! * [`RecentFrames`] remembers the envelopes the store already holds (a keyed hash of their
//!   bytes), so byte-identical copies relayed by other peers are recognised before any
//!   signature check or transaction. A copy with a byte changed is a different frame and goes
//!   through every check.
//! * [`HoldQueue`] keeps envelopes whose author's hello has not arrived yet (hellos and the
//!   first envelopes cross at startup), and envelopes of a known author whose signatures do
//!   not verify with any of its known keys (it may have rotated them, with the statement still
//!   on its way), for `network.unknown_sender_hold_ms`, and hands them back when a hello or a
//!   rotation of the author arrives. It is bounded in envelopes, bytes and envelopes per
//!   sender, and envelopes failing a known author's keys from a transport source that is not
//!   the author's own address get a small share of the author's slots (per source, and in
//!   all), so that forgeries in a peer's name cannot crowd out its real frames. It keeps the
//!   newest: a frame past a bound pushes out the oldest of that bound's share, so forgeries
//!   sent before a real frame (even from its author's own address) cannot keep it out. What
//!   is pushed out, and what waits longer, is rejected with the reason it was held for
//!   (`unknown_sender`, `bad_signature`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

use crate::config::NetworkConfig;
use crate::crypto::SigningPublic;
use crate::envelope::{self, EnvelopeError, Header, Kind};
use crate::lock;
use crate::model::{MessageId, MessageKind, Millis, NodeId};
use crate::monitor::{EventKind, RejectReason};
use crate::network::Ack;
use crate::ratelimit::Limiter;

/// Most (source, reason) windows tracked at once; further sources share one window per reason,
/// so spoofed source addresses cannot turn each frame into an event.
const MAX_WINDOWS: usize = 4096;
/// The source name of the shared window.
const OTHER_SOURCES: &str = "(other sources)";

/// One rejected frame, as the trust boundary saw it.
#[derive(Debug, Clone)]
pub(crate) struct Rejection {
    /// Where the frame came from (the relay's transport address).
    pub source: String,
    /// The envelope's id, when its header decoded.
    pub message_id: Option<MessageId>,
    /// The message kind, when known.
    pub message_kind: Option<MessageKind>,
    /// The claimed author, when the header decoded.
    pub sender: Option<NodeId>,
    /// Why it was rejected.
    pub reason: RejectReason,
    /// Explanation.
    pub detail: String,
}

impl Rejection {
    /// A rejection of a frame from `from`, described by its header when that decoded.
    pub fn new(from: &str, header: Option<&Header>, reason: RejectReason, detail: String) -> Self {
        let message_kind = match header.map(|h| h.kind) {
            Some(Kind::Domain(k)) => Some(k),
            _ => None,
        };
        Rejection {
            source: from.to_owned(),
            message_id: header.map(|h| h.message_id.clone()),
            message_kind,
            sender: header.map(|h| h.sender.clone()),
            reason,
            detail,
        }
    }

    fn event(self, count: u64) -> EventKind {
        EventKind::MessageRejected {
            message_id: self.message_id,
            message_kind: self.message_kind,
            sender: self.sender,
            reason: self.reason,
            violation: None,
            detail: self.detail,
            source: Some(self.source),
            count,
        }
    }
}

#[derive(Debug)]
struct Window {
    opened_at: Millis,
    /// Rejections held back since the window opened, and the latest of them.
    held: u64,
    latest: Option<Rejection>,
}

#[derive(Debug, Default)]
struct State {
    counters: BTreeMap<String, u64>,
    /// Rejections per reason not yet in `counters` (`rejected.<reason>`): counted without
    /// building a counter name per frame.
    rejected: BTreeMap<RejectReason, u64>,
    /// Open windows by reason, then source (looked up by the source's text, without a copy);
    /// `open` of them in all.
    windows: HashMap<RejectReason, HashMap<String, Window>>,
    open: usize,
    /// A counter outside [`ROUTINE_COUNTERS`] waits to be written.
    unusual: bool,
}

/// How soon what waits in [`State`] is to be written: ordered, so that a change that makes it
/// sooner can be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// Nothing waits.
    Nothing,
    /// Only routine counters ([`ROUTINE_COUNTERS`]): they wait for the next counter write.
    Routine,
    /// Rejections, unusual counters or an open window ([`Rejections::rejections_pending`]).
    Soon,
}

/// Counters that a healthy, idle node bumps as frames come in (batch sizes, copies, unchanged
/// hellos, sync upkeep, the heap released once a minute) or as API calls are grouped
/// (`local.*`, whose operations write anyway): they may wait to be written (see
/// [`Rejections::rejections_pending`]).
const ROUTINE_COUNTERS: &[&str] = &[
    "ingress.",
    "local.",
    "hellos.refreshed",
    "hellos.duplicate",
    "messages.duplicate",
    "messages.not_for_us_duplicate",
    "messages.self_echo",
    "sync.",
    "heap.",
];

impl State {
    /// How soon what waits here is to be written.
    fn due(&self) -> Due {
        if !self.rejected.is_empty() || self.open > 0 || self.unusual {
            Due::Soon
        } else if !self.counters.is_empty() {
            Due::Routine
        } else {
            Due::Nothing
        }
    }

    /// Moves the per-reason counts into `counters` (rejection counters are not routine: they
    /// stay due soon).
    fn merge_rejected(&mut self) {
        if !self.rejected.is_empty() {
            self.unusual = true;
        }
        for (reason, n) in std::mem::take(&mut self.rejected) {
            let counter = format!("rejected.{}", reason.as_str());
            *self.counters.entry(counter).or_default() += n;
        }
    }
}

/// Rejection counters and aggregated events (see the module docs).
#[derive(Debug)]
pub(crate) struct Rejections {
    window_ms: u64,
    state: Mutex<State>,
    /// Notified when what waits to be written becomes due sooner ([`Rejections::sooner`]).
    sooner: tokio::sync::Notify,
}

impl Rejections {
    /// Aggregates over windows of `window_ms`; 0 gives every rejection its own event.
    pub fn new(window_ms: u64) -> Self {
        Rejections {
            window_ms,
            state: Mutex::new(State::default()),
            sooner: tokio::sync::Notify::new(),
        }
    }

    /// Completes when what waits to be written became due sooner since the writer last looked
    /// (the first counter after a write, the first rejection or unusual counter): the writer
    /// may sleep until its next write is due, and wakes for this instead of polling. A held
    /// envelope counts `messages.held` (not routine), so holding one notifies; a refreshed
    /// hello counts a routine counter, which notifies only when nothing else waited (the
    /// `last_seen` it notes has a notification of its own).
    pub fn sooner(&self) -> tokio::sync::futures::Notified<'_> {
        self.sooner.notified()
    }

    /// Notifies [`Rejections::sooner`] when `st` became due sooner than `before`.
    fn notify_if_sooner(&self, st: &State, before: Due) {
        if st.due() > before {
            self.sooner.notify_one();
        }
    }

    /// Counts one rejection. Returns the event to record now, or `None` when it is held back
    /// for the window's summary.
    pub fn note(&self, r: Rejection, now: Millis) -> Option<EventKind> {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let before = st.due();
        *st.rejected.entry(r.reason).or_default() += 1;
        self.notify_if_sooner(st, before);
        if self.window_ms == 0 {
            return Some(r.event(1));
        }
        let by_source = st.windows.entry(r.reason).or_default();
        let source = if by_source.contains_key(r.source.as_str()) || st.open < MAX_WINDOWS {
            r.source.as_str()
        } else {
            OTHER_SOURCES
        };
        if let Some(w) = by_source.get_mut(source) {
            w.held += 1;
            w.latest = Some(r);
            return None;
        }
        by_source.insert(
            source.to_owned(),
            Window {
                opened_at: now,
                held: 0,
                latest: None,
            },
        );
        st.open += 1;
        Some(r.event(1))
    }

    /// Counts something that is not a rejection (a duplicate hello, our own echo), written
    /// with the rejection counters.
    pub fn count(&self, counter: &str) {
        self.add(counter, 1);
    }

    /// Adds `n` to a counter that is not a rejection (bytes sent by sync), written with the
    /// rejection counters.
    pub fn add(&self, counter: &str, n: u64) {
        let mut state = lock(&self.state);
        let before = state.due();
        if !state.unusual && !ROUTINE_COUNTERS.iter().any(|c| counter.starts_with(c)) {
            state.unusual = true;
        }
        if let Some(value) = state.counters.get_mut(counter) {
            *value = value.saturating_add(n);
        } else {
            state.counters.insert(counter.to_owned(), n);
        }
        self.notify_if_sooner(&state, before);
    }

    /// Closes the windows that are over: returns the counters not yet written and one summary
    /// event per window that held rejections back (its `count` says how many).
    pub fn drain(&self, now: Millis) -> (BTreeMap<String, u64>, Vec<EventKind>) {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        st.merge_rejected();
        st.unusual = false;
        let counters = std::mem::take(&mut st.counters);
        let mut events = Vec::new();
        let window_ms = self.window_ms;
        let mut closed = 0;
        st.windows.retain(|_, by_source| {
            by_source.retain(|_, w| {
                if now.saturating_sub(w.opened_at) < window_ms {
                    return true;
                }
                if let Some(latest) = w.latest.take() {
                    events.push(latest.event(w.held));
                }
                closed += 1;
                false
            });
            !by_source.is_empty()
        });
        st.open -= closed;
        (counters, events)
    }

    /// Nothing to write: no counters pending and no aggregation window open.
    pub fn is_idle(&self) -> bool {
        lock(&self.state).due() == Due::Nothing
    }

    /// Whether rejections or counters other than routine ones ([`ROUTINE_COUNTERS`]) wait to
    /// be written, or an aggregation window is open (its summary event is due when it closes).
    /// Routine counters alone may wait longer.
    pub fn rejections_pending(&self) -> bool {
        lock(&self.state).due() == Due::Soon
    }

    /// Counters counted but not yet written to the store.
    pub fn pending_counters(&self) -> BTreeMap<String, u64> {
        let mut st = lock(&self.state);
        st.merge_rejected();
        st.counters.clone()
    }

    /// Gives back counters that could not be written (the store failed), to try again.
    pub fn restore(&self, counters: BTreeMap<String, u64>) {
        let mut st = lock(&self.state);
        st.unusual = true;
        for (k, v) in counters {
            *st.counters.entry(k).or_default() += v;
        }
    }
}

/// Where a frame came from, as the transport said.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// The transport address (`udp:...`, `libp2p:...`, `memory:...`).
    pub from: String,
    /// Whether the transport vouches for it (see `Transport::source_verified`).
    pub verified: bool,
}

impl Source {
    /// The IP address a new peer counts against under `network.max_peers_per_address`
    /// ([`capped_address`]). libp2p frames are relayed by gossip, so their source is not
    /// their author's address, and they count against the table's size only.
    pub fn capped_address(&self, exempt: &[IpAddr]) -> Option<String> {
        capped_address(&self.from, exempt)
    }
}

/// The IP address of the UDP source `from` as the per-address limits count it: `None` when
/// it is loopback, unspecified or in `exempt` (many honest nodes may share those), and for a
/// source that is not a UDP address. A global IPv6 source counts as its /64 network
/// (`2001:db8:1:2::/64`): one host is commonly given a whole /64, so one attacker could
/// otherwise count as many times as it has addresses (link-local and unique local addresses
/// count on their own: a LAN's hosts share one /64); an IPv4-mapped address counts as its
/// IPv4 address.
pub(crate) fn capped_address(from: &str, exempt: &[IpAddr]) -> Option<String> {
    let ip = crate::network::udp_source(from)?.ip().to_canonical();
    if ip.is_loopback() || ip.is_unspecified() || exempt.iter().any(|e| e.to_canonical() == ip) {
        return None;
    }
    Some(match ip {
        // Link-local (fe80::/10) and unique local (fc00::/7) addresses: a LAN's hosts share
        // one /64 there, each counts on its own (like private IPv4 addresses).
        IpAddr::V6(v6) if !v6.is_unicast_link_local() && !v6.is_unique_local() => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            format!("{}/64", Ipv6Addr::from(network))
        }
        ip => ip.to_string(),
    })
}

/// The token bucket a frame from the transport source `from` is charged to: a UDP source's
/// IP address as [`capped_address`] counts it (a sender that changes ports, or addresses
/// within its IPv6 /64, keeps its bucket), else the source itself (one per address and port
/// on loopback and exempt addresses, one per libp2p peer).
pub(crate) fn rate_key<'a>(from: &'a str, exempt: &[IpAddr]) -> Cow<'a, str> {
    match capped_address(from, exempt) {
        Some(address) => Cow::Owned(format!("ip:{address}")),
        None => Cow::Borrowed(from),
    }
}

/// Most transport sources and claimed senders with a token bucket of their own.
const MAX_BUCKETS: usize = 16_384;

/// The cheap checks in front of everything else (see the module docs).
#[derive(Debug)]
pub(crate) struct Gate {
    sources: Limiter,
    senders: Limiter,
    /// `network.peer_address_exempt`: sources there keep a bucket per address and port.
    exempt: Vec<IpAddr>,
}

impl Gate {
    /// Rate limits from `network.source_*` and `network.sender_*`.
    pub fn new(net: &NetworkConfig) -> Self {
        Gate {
            sources: Limiter::new(net.source_rate_per_sec, net.source_burst, MAX_BUCKETS),
            senders: Limiter::new(net.sender_rate_per_sec, net.sender_burst, MAX_BUCKETS),
            exempt: net.peer_address_exempt.clone(),
        }
    }

    /// Size (at most `max` bytes), structure, then one token from the bucket of the transport
    /// source `from` (its IP address outside loopback and exempt addresses:
    /// [`rate_key`]). A sync batch is one frame: the envelopes inside it are not charged again
    /// (they are bounded by the frame's size). The claimed sender is charged later, once the
    /// signatures proved the claim ([`Gate::charge_sender`]).
    pub fn admit(
        &self,
        bytes: &[u8],
        from: &str,
        max: usize,
        now: Millis,
    ) -> Result<(), Rejection> {
        let parsed = envelope::parse(bytes, max).map_err(|e| {
            let reason = match e {
                EnvelopeError::Oversized { .. } => RejectReason::Oversized,
                _ => RejectReason::Malformed,
            };
            Rejection::new(from, None, reason, e.to_string())
        })?;
        if !self.sources.allow(&rate_key(from, &self.exempt), now) {
            let detail = "the source sends more frames than network.source_rate_per_sec";
            let h = &parsed.header;
            return Err(Rejection::new(
                from,
                Some(h),
                RejectReason::RateLimited,
                detail.into(),
            ));
        }
        Ok(())
    }

    /// One token from the bucket of the frame's sender, over all sources: called once its
    /// signatures verified with the sender's keys, so that frames forged in a peer's name
    /// (which only the source's bucket pays for) cannot use up the peer's budget.
    pub fn charge_sender(&self, h: &Header, from: &str, now: Millis) -> Result<(), Rejection> {
        if self.senders.allow(h.sender.as_str(), now) {
            return Ok(());
        }
        let detail = "the sender sends more frames than network.sender_rate_per_sec";
        Err(Rejection::new(
            from,
            Some(h),
            RejectReason::RateLimited,
            detail.into(),
        ))
    }
}

/// A bounded set of frames the store holds (oldest forgotten first), as 64-bit hashes under a
/// per-process random key, so that nobody can make a new frame look like a known one.
#[derive(Debug)]
pub(crate) struct RecentFrames {
    capacity: usize,
    key: std::collections::hash_map::RandomState,
    inner: Mutex<Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    set: HashSet<u64>,
    /// Oldest first.
    order: VecDeque<u64>,
    /// The frames remembered since the open store batch began ([`RecentFrames::begin`]).
    batch: Option<Vec<u64>>,
}

impl RecentFrames {
    /// Remembers up to `capacity` frames.
    pub fn new(capacity: usize) -> Self {
        RecentFrames {
            capacity,
            key: std::collections::hash_map::RandomState::new(),
            inner: Mutex::new(Memory::default()),
        }
    }

    fn hash(&self, frame: &[u8]) -> u64 {
        self.key.hash_one(frame)
    }

    /// Whether this exact frame is known to be in the store.
    pub fn contains(&self, frame: &[u8]) -> bool {
        let h = self.hash(frame);
        lock(&self.inner).set.contains(&h)
    }

    /// A store batch begins: the frames remembered from now on are its own, until
    /// [`RecentFrames::end`].
    pub fn begin(&self) {
        lock(&self.inner).batch = Some(Vec::new());
    }

    /// The store batch ended: committed (`kept`), or rolled back, and then the frames
    /// remembered since [`RecentFrames::begin`] are forgotten (the store does not hold
    /// them), whichever path put them there (a group's frames, frames a hello released
    /// meanwhile); the others stay. One pass over the memory, for a batch that failed.
    pub fn end(&self, kept: bool) {
        let mut memory = lock(&self.inner);
        let Some(batch) = memory.batch.take() else {
            return;
        };
        if kept || batch.is_empty() {
            return;
        }
        let gone: HashSet<u64> = batch.into_iter().collect();
        memory.set.retain(|h| !gone.contains(h));
        memory.order.retain(|h| !gone.contains(h));
    }

    /// Records that the store now holds `frame`.
    pub fn insert(&self, frame: &[u8]) {
        let h = self.hash(frame);
        let mut memory = lock(&self.inner);
        if self.capacity == 0 || !memory.set.insert(h) {
            return;
        }
        memory.order.push_back(h);
        if let Some(batch) = &mut memory.batch {
            batch.push(h);
        }
        while memory.order.len() > self.capacity {
            if let Some(old) = memory.order.pop_front() {
                memory.set.remove(&old);
            }
        }
    }
}

/// Envelopes whose signatures were verified ahead of their turn, on several threads, while
/// their batch waited to be applied (see `node/batch.rs`): when the trust boundary reaches
/// the same bytes with the same signer's keys, it takes the result instead of verifying
/// again. Anything else (other keys, a changed byte) is verified as usual. Emptied after
/// every batch.
#[derive(Debug)]
pub(crate) struct PreVerified {
    key: std::collections::hash_map::RandomState,
    /// By keyed hash of the frame: the frames (as received) and the keys they verified with.
    frames: Mutex<HashMap<u64, Vec<VerifiedFrame>>>,
}

/// A frame and the signer keys its signatures verified with.
type VerifiedFrame = (Vec<u8>, SigningPublic);

impl PreVerified {
    /// Empty.
    pub fn new() -> Self {
        PreVerified {
            key: std::collections::hash_map::RandomState::new(),
            frames: Mutex::new(HashMap::new()),
        }
    }

    /// Records that both signatures of `frame` verified with `signer`.
    pub fn insert(&self, frame: &[u8], signer: SigningPublic) {
        let h = self.key.hash_one(frame);
        lock(&self.frames)
            .entry(h)
            .or_default()
            .push((frame.to_vec(), signer));
    }

    /// Whether `frame` was verified with `signer`; forgets it.
    pub fn take(&self, frame: &[u8], signer: &SigningPublic) -> bool {
        let h = self.key.hash_one(frame);
        let mut frames = lock(&self.frames);
        let Some(known) = frames.get_mut(&h) else {
            return false;
        };
        let Some(at) = known.iter().position(|(f, k)| f == frame && k == signer) else {
            return false;
        };
        known.swap_remove(at);
        if known.is_empty() {
            frames.remove(&h);
        }
        true
    }

    /// Forgets everything.
    pub fn clear(&self) {
        lock(&self.frames).clear();
    }
}

/// Most envelopes held at once, over all senders.
pub(crate) const HOLD_MAX_FRAMES: usize = 1024;
/// Most bytes of envelopes held at once.
pub(crate) const HOLD_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Most envelopes held for one sender.
pub(crate) const HOLD_MAX_PER_SENDER: usize = 64;
/// Most envelopes of one sender that fail its known keys (`bad_signature` holds) held from one
/// transport source that is not the sender's own address: anyone can forge frames in a known
/// peer's name, and these must not take the slots of the peer's real frames.
pub(crate) const HOLD_MAX_PER_OTHER_SOURCE: usize = 8;
/// Slots of each sender kept for `bad_signature` holds from its own address: from other
/// sources, at most `HOLD_MAX_PER_SENDER - HOLD_OWN_RESERVE` are held.
pub(crate) const HOLD_OWN_RESERVE: usize = 16;

/// Whether `from` (a frame's transport source) is one of the addresses a peer announced in its
/// hello: the same UDP or in-process address, or the libp2p peer id of a `/p2p/<id>` address.
pub(crate) fn is_own_source(announced: &[String], from: &str) -> bool {
    let peer = from.strip_prefix("libp2p:");
    announced.iter().any(|a| {
        a == from
            || peer.is_some_and(|id| {
                a.rsplit_once("/p2p/")
                    .is_some_and(|(_, announced_id)| announced_id == id)
            })
    })
}

/// What [`HoldQueue::expire`] gives back: the events to record, and the verdict channels to
/// answer, each with the reason its envelope was rejected.
pub(crate) type Expired = (Vec<EventKind>, Vec<(Ack, RejectReason)>);

/// An envelope waiting for its author's hello or key rotation.
#[derive(Debug)]
pub(crate) struct HeldFrame {
    /// The envelope as received.
    pub bytes: Vec<u8>,
    /// Where it came from.
    pub source: Source,
    /// What is recorded when the hello or rotation does not come in time.
    pub rejection: Rejection,
    held_at: Millis,
    /// The transport's verdict channel, answered when the envelope is released or expires.
    pub ack: Option<Ack>,
    /// Whether it came from its sender's own address ([`is_own_source`]).
    pub own_source: bool,
    /// A keyed hash of `bytes` ([`HoldQueue::hold`] sets it), to find copies without comparing
    /// the bytes of every held frame.
    digest: u64,
}

impl HeldFrame {
    /// An envelope to hold from `now`, rejected with `rejection` if nothing releases it.
    pub fn new(
        bytes: &[u8],
        source: &Source,
        rejection: Rejection,
        ack: Option<Ack>,
        now: Millis,
    ) -> Self {
        HeldFrame {
            bytes: bytes.to_vec(),
            source: source.clone(),
            rejection,
            held_at: now,
            ack,
            own_source: false,
            digest: 0,
        }
    }

    /// Marks it as received from its sender's own address (see [`is_own_source`]).
    pub fn with_own_source(mut self, own: bool) -> Self {
        self.own_source = own;
        self
    }

    /// Whether it counts against the share of sources other than the sender's own address.
    fn other_source(&self) -> bool {
        self.rejection.reason == RejectReason::BadSignature && !self.own_source
    }
}

#[derive(Debug, Default)]
struct HoldState {
    senders: HashMap<NodeId, VecDeque<HeldFrame>>,
    frames: usize,
    bytes: usize,
}

/// Which bound a frame to hold would exceed ([`HoldState::full_share`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Share {
    /// The frames of a known sender failing its keys from the frame's source, which is not
    /// the sender's own address ([`HOLD_MAX_PER_OTHER_SOURCE`]).
    ThisOtherSource,
    /// Those from all sources other than the sender's own address.
    OtherSources,
    /// The sender's frames ([`HOLD_MAX_PER_SENDER`]).
    Sender,
    /// All frames and bytes.
    All,
}

impl HoldState {
    /// The first bound, from the narrowest, that holding `frame` for `sender` would exceed.
    fn full_share(&self, sender: &NodeId, frame: &HeldFrame) -> Option<Share> {
        let queue = self.senders.get(sender);
        if frame.other_source()
            && let Some(q) = queue
        {
            let (mut all, mut this) = (0, 0);
            for f in q.iter().filter(|f| f.other_source()) {
                all += 1;
                this += usize::from(f.source.from == frame.source.from);
            }
            if this >= HOLD_MAX_PER_OTHER_SOURCE {
                return Some(Share::ThisOtherSource);
            }
            if all >= HOLD_MAX_PER_SENDER - HOLD_OWN_RESERVE {
                return Some(Share::OtherSources);
            }
        }
        if queue.map_or(0, VecDeque::len) >= HOLD_MAX_PER_SENDER {
            return Some(Share::Sender);
        }
        if self.frames >= HOLD_MAX_FRAMES
            || self.bytes.saturating_add(frame.bytes.len()) > HOLD_MAX_BYTES
        {
            return Some(Share::All);
        }
        None
    }

    /// Removes the oldest held frame of `share` (for `frame`'s source and kind), if any.
    fn evict_oldest(
        &mut self,
        sender: &NodeId,
        share: Share,
        frame: &HeldFrame,
    ) -> Option<HeldFrame> {
        let owner = match share {
            Share::All => self
                .senders
                .iter()
                .filter_map(|(id, q)| q.front().map(|f| (f.held_at, id)))
                .min_by_key(|(at, _)| *at)
                .map(|(_, id)| id.clone())?,
            _ => sender.clone(),
        };
        let queue = self.senders.get_mut(&owner)?;
        let at = match share {
            Share::ThisOtherSource => queue
                .iter()
                .position(|f| f.other_source() && f.source.from == frame.source.from),
            Share::OtherSources => queue.iter().position(HeldFrame::other_source),
            Share::Sender => queue
                .iter()
                .position(|f| f.other_source() == frame.other_source())
                .or(Some(0)),
            Share::All => Some(0),
        }?;
        let old = queue.remove(at)?;
        if queue.is_empty() {
            self.senders.remove(&owner);
        }
        self.frames -= 1;
        self.bytes -= old.bytes.len();
        Some(old)
    }
}

/// What [`HoldQueue::hold`] did with a frame.
#[derive(Debug)]
pub(crate) enum Hold {
    /// Held; the frames that made room for it, for the caller to reject.
    Held(Vec<HeldFrame>),
    /// A copy of a frame already held for the sender (the same bytes, held for the same
    /// reason; relays deliver copies): not held twice. Given back, for the caller to answer
    /// its verdict channel.
    Copy(Box<HeldFrame>),
}

/// Envelopes from authors whose hello or key rotation has not arrived yet (see the module
/// docs). Counters: `messages.held`, `messages.held_released`, `messages.held_expired`,
/// `messages.held_evicted` (pushed out by a newer frame) and `messages.held_overflow` (larger
/// than the byte bound, refused); those are rejected at once, with the reason they were (or
/// would have been) held for.
#[derive(Debug)]
pub(crate) struct HoldQueue {
    hold_ms: u64,
    state: Mutex<HoldState>,
    /// The key of the frames' digests (random per queue: a peer cannot make collisions).
    key: std::collections::hash_map::RandomState,
}

impl HoldQueue {
    /// Holds envelopes for `hold_ms` milliseconds; 0 holds nothing.
    pub fn new(hold_ms: u64) -> Self {
        HoldQueue {
            hold_ms,
            state: Mutex::new(HoldState::default()),
            key: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Holds `frame` from `sender`. When a bound is reached, the oldest held frame of the
    /// share the frame would overflow makes room (counted as `messages.held_evicted`): the
    /// envelope does not say which keys signed it, so a forgery in a sender's name cannot be
    /// told from its real frame until the hello or rotation arrives, and holding the newest
    /// frames means forgeries sent before a real frame cannot keep it out (its hello or
    /// rotation follows it closely). Shares: this source's 8 and all other sources' 48 of a
    /// known sender's `bad_signature` holds, the sender's 64 (the oldest frame of its own
    /// kind: from the sender's own address or not), and all 1,024 frames and 8 MiB (the oldest
    /// frame of any sender). `Ok` gives back the evicted frames, for the caller to record their
    /// rejections and answer their verdict channels, or a copy of a frame held already (one
    /// slot, counted as `messages.duplicate`; from the sender's own address if either came from
    /// there; held on as the newest, as if it arrived now); a frame that is not held (holding
    /// is off, or it is larger than the byte bound) is given back as `Err`, to be rejected at
    /// once.
    pub fn hold(
        &self,
        sender: &NodeId,
        frame: HeldFrame,
        counters: &Rejections,
    ) -> Result<Hold, Box<HeldFrame>> {
        if self.hold_ms == 0 || frame.bytes.len() > HOLD_MAX_BYTES {
            if self.hold_ms != 0 {
                counters.count("messages.held_overflow");
            }
            return Err(Box::new(frame));
        }
        let mut frame = frame;
        frame.digest = self.key.hash_one(&frame.bytes);
        let mut st = lock(&self.state);
        if let Some(queue) = st.senders.get_mut(sender)
            && let Some(at) = queue.iter().position(|f| {
                f.digest == frame.digest
                    && f.rejection.reason == frame.rejection.reason
                    && f.bytes == frame.bytes
            })
            && let Some(mut held) = queue.remove(at)
        {
            // Held again as the newest: forgeries sent before this copy cannot push it out,
            // as they could not push out a frame that arrived now.
            held.own_source |= frame.own_source;
            held.held_at = held.held_at.max(frame.held_at);
            queue.push_back(held);
            drop(st);
            counters.count("messages.duplicate");
            return Ok(Hold::Copy(Box::new(frame)));
        }
        let mut evicted = Vec::new();
        while let Some(share) = st.full_share(sender, &frame) {
            match st.evict_oldest(sender, share, &frame) {
                Some(old) => evicted.push(old),
                None => {
                    drop(st);
                    counters.count("messages.held_overflow");
                    return Err(Box::new(frame));
                }
            }
        }
        st.frames += 1;
        st.bytes += frame.bytes.len();
        st.senders
            .entry(sender.clone())
            .or_default()
            .push_back(frame);
        drop(st);
        counters.count("messages.held");
        if !evicted.is_empty() {
            counters.add("messages.held_evicted", evicted.len() as u64);
        }
        Ok(Hold::Held(evicted))
    }

    /// Hands back the envelopes held for `sender` for `reason` (`unknown_sender`: its hello
    /// arrived; `bad_signature`: its keys moved on), oldest first; others stay.
    pub fn release(
        &self,
        sender: &NodeId,
        reason: RejectReason,
        counters: &Rejections,
    ) -> Vec<HeldFrame> {
        let mut st = lock(&self.state);
        let Some(queue) = st.senders.remove(sender) else {
            return Vec::new();
        };
        let (frames, kept): (VecDeque<HeldFrame>, VecDeque<HeldFrame>) = queue
            .into_iter()
            .partition(|f| f.rejection.reason == reason);
        if !kept.is_empty() {
            st.senders.insert(sender.clone(), kept);
        }
        st.frames -= frames.len();
        st.bytes -= frames.iter().map(|f| f.bytes.len()).sum::<usize>();
        drop(st);
        if !frames.is_empty() {
            counters.add("messages.held_released", frames.len() as u64);
        }
        frames.into()
    }

    /// When the oldest held envelope expires (Unix ms), if any is held.
    pub fn next_expiry(&self) -> Option<Millis> {
        let st = lock(&self.state);
        if st.frames == 0 {
            return None;
        }
        st.senders
            .values()
            .filter_map(|q| q.front())
            .map(|f| f.held_at.saturating_add(self.hold_ms))
            .min()
    }

    /// Drops the envelopes held for `hold_ms` or longer and rejects each with the reason it was
    /// held for (`unknown_sender`, `bad_signature`) through `counters`; returns the events to
    /// record and the verdict channels to answer with each one's reason.
    pub fn expire(&self, now: Millis, counters: &Rejections) -> Expired {
        let mut expired = Vec::new();
        let mut acks = Vec::new();
        {
            let mut st = lock(&self.state);
            if st.frames == 0 {
                return (Vec::new(), Vec::new());
            }
            let hold_ms = self.hold_ms;
            let (mut frames, mut bytes) = (0, 0);
            st.senders.retain(|_, queue| {
                while queue
                    .front()
                    .is_some_and(|f| now.saturating_sub(f.held_at) >= hold_ms)
                {
                    if let Some(f) = queue.pop_front() {
                        frames += 1;
                        bytes += f.bytes.len();
                        if let Some(ack) = f.ack {
                            acks.push((ack, f.rejection.reason));
                        }
                        expired.push(f.rejection);
                    }
                }
                !queue.is_empty()
            });
            st.frames -= frames;
            st.bytes -= bytes;
        }
        let mut events = Vec::new();
        for mut r in expired {
            counters.count("messages.held_expired");
            r.detail = match r.reason {
                RejectReason::UnknownSender => format!(
                    "no verified hello from this sender within {} ms",
                    self.hold_ms
                ),
                _ => format!(
                    "{}; no key rotation of the sender came within {} ms",
                    r.detail, self.hold_ms
                ),
            };
            events.extend(counters.note(r, now));
        }
        (events, acks)
    }

    /// How many envelopes of `sender` from transport source `from` are held.
    #[cfg(test)]
    fn held_from(&self, sender: &NodeId, from: &str) -> usize {
        let st = lock(&self.state);
        st.senders
            .get(sender)
            .map_or(0, |q| q.iter().filter(|f| f.source.from == from).count())
    }

    /// Envelopes and bytes held now.
    #[cfg(test)]
    fn size(&self) -> (usize, usize) {
        let st = lock(&self.state);
        let frames: usize = st.senders.values().map(VecDeque::len).sum();
        let bytes: usize = st.senders.values().flatten().map(|f| f.bytes.len()).sum();
        assert_eq!((frames, bytes), (st.frames, st.bytes), "bookkeeping");
        (frames, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(source: &str, reason: RejectReason) -> Rejection {
        Rejection {
            source: source.into(),
            message_id: None,
            message_kind: None,
            sender: None,
            reason,
            detail: "bad".into(),
        }
    }

    fn count_of(e: &EventKind) -> u64 {
        match e {
            EventKind::MessageRejected { count, .. } => *count,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_flood_from_one_source_is_one_event_and_one_summary_per_window() {
        let r = Rejections::new(1000);
        let first = r.note(rejection("udp:1.2.3.4:5", RejectReason::Malformed), 0);
        assert_eq!(count_of(&first.unwrap()), 1);
        for t in 1..10_000 {
            assert!(
                r.note(rejection("udp:1.2.3.4:5", RejectReason::Malformed), t % 999)
                    .is_none()
            );
        }
        // Another reason or source is its own window.
        assert!(
            r.note(rejection("udp:1.2.3.4:5", RejectReason::Expired), 5)
                .is_some()
        );
        let (counters, events) = r.drain(500);
        assert_eq!(counters["rejected.malformed"], 10_000);
        assert!(events.is_empty(), "windows still open: {events:?}");
        let (counters, events) = r.drain(1000);
        assert!(counters.is_empty());
        assert_eq!(events.len(), 1);
        assert_eq!(count_of(&events[0]), 9_999);
        // After the window, the next rejection is an event again.
        assert!(
            r.note(rejection("udp:1.2.3.4:5", RejectReason::Malformed), 1001)
                .is_some()
        );
    }

    #[test]
    fn many_sources_share_a_bounded_number_of_windows() {
        let r = Rejections::new(1000);
        let mut immediate = 0;
        for i in 0..(MAX_WINDOWS + 10_000) {
            if r.note(
                rejection(&format!("udp:10.0.0.1:{i}"), RejectReason::Malformed),
                0,
            )
            .is_some()
            {
                immediate += 1;
            }
        }
        assert_eq!(immediate, MAX_WINDOWS + 1);
        let st = lock(&r.state);
        let open: usize = st.windows.values().map(HashMap::len).sum();
        assert_eq!(open, st.open);
        assert!(open <= MAX_WINDOWS + 1);
    }

    #[test]
    fn window_zero_reports_every_rejection() {
        let r = Rejections::new(0);
        for _ in 0..3 {
            assert!(r.note(rejection("a", RejectReason::Replay), 0).is_some());
        }
        assert_eq!(r.pending_counters()["rejected.replay"], 3);
    }

    #[test]
    fn only_udp_sources_outside_loopback_and_the_exempt_list_count_per_address() {
        let src = |from: &str| Source {
            from: from.into(),
            verified: false,
        };
        let exempt = ["192.0.2.7".parse().unwrap()];
        assert_eq!(
            src("udp:192.0.2.1:7946").capped_address(&exempt).as_deref(),
            Some("192.0.2.1")
        );
        // IPv6 by /64 network; IPv4-mapped as IPv4.
        for (from, counted) in [
            ("udp:[2001:db8::1]:7946", "2001:db8::/64"),
            ("udp:[2001:db8:0:0:ffff:1:2:3]:1", "2001:db8::/64"),
            ("udp:[2001:db8:a:b:c:d:e:f]:7946", "2001:db8:a:b::/64"),
            ("udp:[::ffff:192.0.2.1]:7946", "192.0.2.1"),
            // A LAN's hosts share one /64 of link-local or unique local addresses.
            ("udp:[fe80::1:2]:7946", "fe80::1:2"),
            ("udp:[fd12:3456:789a:1::7]:7946", "fd12:3456:789a:1::7"),
        ] {
            assert_eq!(
                src(from).capped_address(&exempt).as_deref(),
                Some(counted),
                "{from}"
            );
        }
        for from in [
            "udp:127.0.0.1:7946",
            "udp:[::1]:7946",
            "udp:[::ffff:127.0.0.1]:7946",
            "udp:192.0.2.7:1",
            "udp:[::ffff:192.0.2.7]:1",
            "libp2p:12D3KooW",
            "memory:a",
        ] {
            assert_eq!(src(from).capped_address(&exempt), None, "{from}");
        }
    }

    fn sender(n: u64) -> NodeId {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&n.to_be_bytes());
        NodeId::from_bytes(b)
    }

    fn source() -> Source {
        Source {
            from: "udp:192.0.2.1:7946".into(),
            verified: false,
        }
    }

    fn unknown(n: u64) -> Rejection {
        Rejection {
            sender: Some(sender(n)),
            ..rejection("udp:192.0.2.1:7946", RejectReason::UnknownSender)
        }
    }

    /// Offers `bytes` from `sender(n)`, who said no hello yet, to `q` at `now`; whether it
    /// is held.
    fn offer(q: &HoldQueue, n: u64, bytes: &[u8], now: Millis, counters: &Rejections) -> bool {
        let held = q.hold(
            &sender(n),
            HeldFrame::new(bytes, &source(), unknown(n), None, now),
            counters,
        );
        matches!(held, Ok(Hold::Held(_)))
    }

    /// The frames a hold pushed out (panics unless the frame was held).
    fn pushed_out(hold: Result<Hold, Box<HeldFrame>>) -> Vec<HeldFrame> {
        match hold {
            Ok(Hold::Held(evicted)) => evicted,
            other => panic!("not held: {other:?}"),
        }
    }

    /// A flood of envelopes from ever new senders that never say hello: the queue never holds
    /// more than its bounds, keeps the newest (the oldest make room and are given back, for
    /// the caller to reject), and rejects what it held when the hold time is over, with one
    /// event for the source (the rest go to the window's summary).
    #[test]
    fn a_flood_of_unknown_senders_stays_within_the_bounds() {
        let counters = Rejections::new(10_000);
        let q = HoldQueue::new(5_000);
        let frame = vec![7u8; 3000];
        let flood = 5 * HOLD_MAX_FRAMES as u64;
        let mut evicted = 0;
        for n in 0..flood {
            let f = HeldFrame::new(&frame, &source(), unknown(n), None, n / 100);
            evicted += pushed_out(q.hold(&sender(n), f, &counters)).len() as u64;
            let (frames, bytes) = q.size();
            assert!(frames <= HOLD_MAX_FRAMES && bytes <= HOLD_MAX_BYTES);
        }
        let held = HOLD_MAX_FRAMES as u64;
        assert_eq!(evicted, flood - held);
        let c = counters.pending_counters();
        assert_eq!(c["messages.held"], flood);
        assert_eq!(c["messages.held_evicted"], flood - held);
        assert!(!c.contains_key("messages.held_overflow"));
        // The newest are held: the last sender's frame, not the first one's.
        assert!(
            q.release(&sender(0), RejectReason::UnknownSender, &counters)
                .is_empty()
        );
        let last = q.release(&sender(flood - 1), RejectReason::UnknownSender, &counters);
        assert_eq!(last.len(), 1);
        let held = held - 1;

        // Nothing is due before the hold time; then everything is rejected.
        assert!(q.expire(4_999, &counters).0.is_empty());
        let (events, acks) = q.expire(5_000 + flood / 100, &counters);
        assert!(acks.is_empty(), "none of these had a verdict channel");
        assert_eq!(q.size(), (0, 0));
        let c = counters.pending_counters();
        assert_eq!(c["messages.held_expired"], held);
        assert_eq!(c["rejected.unknown_sender"], held);
        assert_eq!(events.len(), 1, "{events:?}");
        match &events[0] {
            EventKind::MessageRejected { reason, detail, .. } => {
                assert_eq!(*reason, RejectReason::UnknownSender);
                assert!(detail.contains("within 5000 ms"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Large envelopes hit the byte bound first; one sender cannot take the whole queue.
    #[test]
    fn bytes_and_envelopes_per_sender_are_bounded() {
        let counters = Rejections::new(0);
        let q = HoldQueue::new(5_000);
        let big = vec![0u8; 65_000];
        let fits = HOLD_MAX_BYTES / big.len();
        for n in 0..(fits as u64 + 10) {
            offer(&q, n, &big, 0, &counters);
        }
        assert_eq!(q.size(), (fits, fits * big.len()));

        let q = HoldQueue::new(5_000);
        for i in 0..HOLD_MAX_PER_SENDER + 5 {
            offer(&q, 1, format!("x{i}").as_bytes(), 0, &counters);
        }
        assert_eq!(q.size().0, HOLD_MAX_PER_SENDER);
        assert!(offer(&q, 2, b"x", 0, &counters));
    }

    /// Copies of a held frame (relays deliver several) take no slot of their own and push
    /// nothing out: the sender's other frames stay, and each copy is given back with its
    /// verdict channel, counted as a duplicate. A copy from the sender's own address makes the
    /// held frame count as one from there.
    #[test]
    fn copies_of_a_held_frame_take_no_slot() {
        let counters = Rejections::new(0);
        let q = HoldQueue::new(5_000);
        for i in 0..HOLD_MAX_PER_SENDER {
            assert!(offer(&q, 1, format!("frame {i}").as_bytes(), 0, &counters));
        }
        for _ in 0..3 * HOLD_MAX_PER_SENDER {
            let (tx, _rx) = tokio::sync::oneshot::channel();
            let copy = HeldFrame::new(b"frame 0", &source(), unknown(1), Some(tx), 1);
            match q.hold(&sender(1), copy, &counters) {
                Ok(Hold::Copy(copy)) => assert!(copy.ack.is_some()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(q.size().0, HOLD_MAX_PER_SENDER);
        let c = counters.pending_counters();
        assert_eq!(c["messages.held"], HOLD_MAX_PER_SENDER as u64);
        assert_eq!(c["messages.duplicate"], 3 * HOLD_MAX_PER_SENDER as u64);
        assert!(!c.contains_key("messages.held_evicted"), "{c:?}");
        let back = q.release(&sender(1), RejectReason::UnknownSender, &counters);
        assert_eq!(back.len(), HOLD_MAX_PER_SENDER);
        assert_eq!(
            back[back.len() - 1].bytes,
            b"frame 0",
            "held on as the newest"
        );
        // Held for another reason, the same bytes are another frame.
        let x = sender(2);
        let r = |reason| Rejection {
            sender: Some(x.clone()),
            ..rejection("udp:192.0.2.66:1", reason)
        };
        let other = Source {
            from: "udp:192.0.2.66:1".into(),
            verified: false,
        };
        let f = HeldFrame::new(b"f", &other, r(RejectReason::BadSignature), None, 0);
        assert!(matches!(q.hold(&x, f, &counters), Ok(Hold::Held(_))));
        let f = HeldFrame::new(b"f", &other, r(RejectReason::UnknownSender), None, 0);
        assert!(matches!(q.hold(&x, f, &counters), Ok(Hold::Held(_))));
        // The same frame from the sender's own address: it counts as its own from now on.
        let own = HeldFrame::new(b"f", &source(), r(RejectReason::BadSignature), None, 0);
        let own = own.with_own_source(true);
        assert!(matches!(q.hold(&x, own, &counters), Ok(Hold::Copy(_))));
        assert_eq!(q.held_from(&x, "udp:192.0.2.66:1"), 2);
        let st = lock(&q.state);
        let forged = st.senders[&x].iter().filter(|f| f.other_source()).count();
        assert_eq!(
            forged, 0,
            "the copy from its own address made it the sender's own"
        );
    }

    /// A copy of a held frame holds it on as the newest: forgeries in its sender's name sent
    /// before the copy cannot push it out, as they could not push out a frame arriving then.
    #[test]
    fn a_copy_holds_its_frame_on_as_the_newest() {
        let counters = Rejections::new(0);
        let q = HoldQueue::new(5_000);
        assert!(offer(&q, 1, b"real", 0, &counters));
        for i in 1..HOLD_MAX_PER_SENDER {
            assert!(offer(&q, 1, format!("forged {i}").as_bytes(), 1, &counters));
        }
        assert!(!offer(&q, 1, b"real", 2, &counters), "a copy");
        for i in 0..HOLD_MAX_PER_SENDER - 1 {
            assert!(offer(
                &q,
                1,
                format!("forged again {i}").as_bytes(),
                3,
                &counters
            ));
        }
        let back = q.release(&sender(1), RejectReason::UnknownSender, &counters);
        assert_eq!(back.len(), HOLD_MAX_PER_SENDER);
        assert_eq!(back[0].bytes, b"real", "the oldest now");
        assert_eq!(back[0].held_at, 2, "its hold runs from the copy");
    }

    /// When the hello arrives, the sender's envelopes come back in arrival order and leave
    /// the queue; other senders' stay.
    #[test]
    fn release_hands_back_one_senders_envelopes_in_order() {
        let counters = Rejections::new(0);
        let q = HoldQueue::new(5_000);
        for (n, bytes) in [(1, b"a"), (2, b"b"), (1, b"c")] {
            assert!(offer(&q, n, bytes, 0, &counters));
        }
        let back: Vec<Vec<u8>> = q
            .release(&sender(1), RejectReason::UnknownSender, &counters)
            .into_iter()
            .map(|f| f.bytes)
            .collect();
        assert_eq!(back, vec![b"a".to_vec(), b"c".to_vec()]);
        assert_eq!(q.size(), (1, 1));
        assert!(
            q.release(&sender(1), RejectReason::UnknownSender, &counters)
                .is_empty()
        );
        assert_eq!(counters.pending_counters()["messages.held_released"], 2);
        // Disabled: nothing is held.
        let off = HoldQueue::new(0);
        assert!(!offer(&off, 3, b"x", 0, &counters));
    }

    /// A held envelope's verdict channel is answered when it expires, with the reason it was
    /// held for: `bad_signature` (a forgery in a known peer's name, proven once no rotation
    /// came) is what penalises the relay; `unknown_sender` is not its fault.
    #[test]
    fn expiry_gives_back_each_verdict_channel_with_its_reason() {
        let counters = Rejections::new(60_000);
        let q = HoldQueue::new(100);
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let forged = Rejection {
            sender: Some(sender(7)),
            ..rejection("udp:192.0.2.1:7946", RejectReason::BadSignature)
        };
        let forged = HeldFrame::new(b"f", &source(), forged, Some(tx), 0);
        assert!(q.hold(&sender(7), forged, &counters).is_ok());
        assert!(rx.try_recv().is_err(), "no verdict while held");
        // A hello of the sender releases what waited for it, not what waits for new keys.
        let early = HeldFrame::new(b"e", &source(), unknown(7), None, 0);
        assert!(q.hold(&sender(7), early, &counters).is_ok());
        let back = q.release(&sender(7), RejectReason::UnknownSender, &counters);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].bytes, b"e");
        assert_eq!(q.size(), (1, 1));
        let (events, acks) = q.expire(100, &counters);
        assert_eq!(events.len(), 1);
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].1, RejectReason::BadSignature);
        assert_eq!(counters.pending_counters()["rejected.bad_signature"], 1);
    }

    /// Frames failing a known sender's keys from sources other than its own address: one
    /// source holds at most its share, all of them together leave the sender's reserve free,
    /// and frames from the sender's own address still fit.
    #[test]
    fn bad_signature_holds_from_other_sources_leave_room_for_the_senders_own() {
        let counters = Rejections::new(0);
        let q = HoldQueue::new(5_000);
        let x = sender(1);
        // Each forgery its own bytes (copies of one would take one slot).
        let made = std::cell::Cell::new(0u32);
        let forged = |from: &str| {
            made.set(made.get() + 1);
            let source = Source {
                from: from.into(),
                verified: false,
            };
            let r = Rejection {
                sender: Some(x.clone()),
                ..rejection(from, RejectReason::BadSignature)
            };
            HeldFrame::new(format!("f{}", made.get()).as_bytes(), &source, r, None, 0)
        };
        let from_one = "udp:192.0.2.66:1";
        for _ in 0..64 {
            pushed_out(q.hold(&x, forged(from_one), &counters));
        }
        assert_eq!(q.held_from(&x, from_one), HOLD_MAX_PER_OTHER_SOURCE);
        for port in 2..20 {
            let from = format!("udp:192.0.2.66:{port}");
            for _ in 0..64 {
                pushed_out(q.hold(&x, forged(&from), &counters));
            }
        }
        let others = |q: &HoldQueue| {
            let st = lock(&q.state);
            st.senders[&x].iter().filter(|f| f.other_source()).count()
        };
        assert_eq!(others(&q), HOLD_MAX_PER_SENDER - HOLD_OWN_RESERVE);
        let own = "udp:192.0.2.1:7946";
        for _ in 0..64 {
            let f = forged(own).with_own_source(true);
            pushed_out(q.hold(&x, f, &counters));
        }
        // The sender's own frames push out only their own kind: its reserve is theirs, the
        // other sources keep their share.
        assert_eq!(q.held_from(&x, own), HOLD_OWN_RESERVE);
        assert_eq!(others(&q), HOLD_MAX_PER_SENDER - HOLD_OWN_RESERVE);
        // And the newest own frame is always held: forgeries sent before it cannot keep it out.
        let mut real = forged(own).with_own_source(true);
        real.bytes = b"real".to_vec();
        let evicted = pushed_out(q.hold(&x, real, &counters));
        assert_eq!(evicted.len(), 1);
        assert!(evicted[0].own_source && evicted[0].bytes.starts_with(b"f"));
        let back = q.release(&x, RejectReason::BadSignature, &counters);
        assert!(back.iter().any(|f| f.bytes == b"real"));
        // Frames of unknown senders are not limited per source (nothing is known of them).
        for _ in 0..HOLD_MAX_PER_OTHER_SOURCE + 1 {
            let f = HeldFrame::new(&made.get().to_be_bytes(), &source(), unknown(2), None, 0);
            made.set(made.get() + 1);
            assert!(q.hold(&sender(2), f, &counters).is_ok());
        }
    }

    #[test]
    fn own_sources_are_the_announced_addresses_or_peer_id() {
        let announced = [
            "udp:192.0.2.1:7946".to_owned(),
            "/ip4/192.0.2.1/tcp/4001/p2p/12D3KooWAlice".to_owned(),
        ];
        assert!(is_own_source(&announced, "udp:192.0.2.1:7946"));
        assert!(is_own_source(&announced, "libp2p:12D3KooWAlice"));
        assert!(!is_own_source(&announced, "libp2p:12D3KooWMallory"));
        assert!(!is_own_source(&announced, "udp:192.0.2.1:7947"));
        assert!(!is_own_source(&[], "memory:a"));
    }

    #[test]
    fn recent_frames_forget_the_oldest_and_tell_a_changed_byte() {
        let frames = RecentFrames::new(2);
        let (a, b, c) = (
            b"frame a".as_slice(),
            b"frame b".as_slice(),
            b"frame c".as_slice(),
        );
        frames.insert(a);
        frames.insert(b);
        frames.insert(a);
        frames.insert(c);
        assert!(!frames.contains(a));
        assert!(frames.contains(b) && frames.contains(c));
        assert!(!frames.contains(b"frame B"));
        // What a batch remembered is forgotten when it rolls back, the rest stays; kept when
        // it commits; stored again, it is known again.
        let frames = RecentFrames::new(4);
        frames.insert(a);
        frames.begin();
        frames.insert(b);
        frames.insert(a);
        frames.end(false);
        assert!(frames.contains(a) && !frames.contains(b));
        frames.begin();
        frames.insert(b);
        frames.insert(c);
        frames.end(true);
        frames.end(false);
        assert!(frames.contains(a) && frames.contains(b) && frames.contains(c));
    }
}
