//! Sync by range-based set reconciliation (docs/PROTOCOL.md section 7): the periodic query,
//! the answers to queries, replies and wants, and the sync credit every answer is sent within;
//! also the answers to the previous version's digests (kind 8).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::{Node, lock};
use crate::envelope::{self, Header, Kind};
use crate::error::Result;
use crate::ingress;
use crate::model::{MessageId, NodeId};
use crate::network::Acceptance;
use crate::store::SyncMark;
use crate::sync::{self, range};

/// The stored messages as reconciliation items, kept in memory between rounds and brought up
/// to date from the store's [`SyncMark`]: a round over an unchanged store reads two values
/// of the store (O(log n)); envelopes stored since the last round are read alone and merged in
/// (O(new rows) from the store, plus an in-memory merge); only a prune by retention, which
/// deletes messages, makes it read the whole store again (also once after each start).
///
/// Also remembers when each peer last sent this node a query (see [`Node::receive_range`]:
/// of two peers that query each other, the exchange of the one with the lower id goes on).
#[derive(Debug, Default)]
pub(super) struct IndexCache {
    index: Mutex<Option<Arc<Index>>>,
    /// When (node clock, Unix ms) each peer's last query arrived.
    queried_by: Mutex<BTreeMap<NodeId, u64>>,
    /// Messages recently asked of a peer (`true`) or sent to it unasked (`false`), and when:
    /// two exchanges that overlap ask for them, or send them, once.
    recent: Mutex<BTreeMap<(NodeId, bool, MessageId), u64>>,
    /// Each peer's last query answered: when, a hash of it, and our items' mark then.
    answered: Mutex<BTreeMap<NodeId, Answered>>,
    /// The pace of this node's own rounds (see [`Pace`]).
    pace: Mutex<Pace>,
    /// When (node clock, Unix ms) the last repair round went out ([`Node::repair_exchanges`]):
    /// an exchange of a peer that queried this node before then did not carry what was lost.
    repaired_at: std::sync::atomic::AtomicU64,
}

/// How long a node waits between its periodic sync rounds, in multiples of
/// `network.sync_interval_secs`: one while its store changes, doubling after each round over a
/// store unchanged since the round before, up to [`MAX_SYNC_STRETCH`]. Converged, idle nodes
/// then query six times less often (in an idle network of 30 libp2p processes the rounds every
/// 10 s were a third of each node's CPU); any new message stored brings the pace back at the
/// next round. A message a node lost is repaired by the rounds of the nodes that stored it
/// (their stores changed, so they query at the base interval), by its own next round, or at
/// once by a repair round when its transport reported the loss (these leave the pace alone).
#[derive(Debug, Default)]
struct Pace {
    /// The items' mark at the last round.
    mark: Option<SyncMark>,
    /// The current multiple (0 before the first round: one).
    stretch: u32,
}

/// How long an identical query of the same peer (over items that did not change) is not
/// answered again (or half `network.sync_interval_secs` when shorter): long enough for two
/// exchanges started together (by the interval and by a hello) to cost one, short enough that
/// a repair round's query, identical when everything its last exchange brought was lost, is
/// answered (repair rounds are at least 1 s apart).
const REPEATED_QUERY_MS: u64 = 1_000;

/// The longest wait between two periodic rounds, in multiples of `network.sync_interval_secs`.
pub(super) const MAX_SYNC_STRETCH: u32 = 6;

impl Pace {
    /// After a round over items at `mark`: the multiple of the interval to wait for the next.
    fn after_round(&mut self, mark: SyncMark) -> u32 {
        self.stretch = if self.mark == Some(mark) {
            (self.stretch.max(1) * 2).min(MAX_SYNC_STRETCH)
        } else {
            1
        };
        self.mark = Some(mark);
        self.stretch
    }
}

/// A query answered: when (node clock, Unix ms), a hash of its source and message, and the
/// mark of the items it was answered from.
type Answered = (u64, [u8; 32], SyncMark);

impl IndexCache {
    /// Of `ids` to ask of `peer` (`asked`) or to send it, those not already asked or sent
    /// less than `interval` ms before `now` (see [`IndexCache::done`]).
    fn not_recent(
        &self,
        peer: &NodeId,
        asked: bool,
        mut ids: Vec<MessageId>,
        now: u64,
        interval: u64,
    ) -> Vec<MessageId> {
        let mut recent = lock(&self.recent);
        recent.retain(|_, at| now.saturating_sub(*at) < interval);
        ids.retain(|id| !recent.contains_key(&(peer.clone(), asked, id.clone())));
        ids
    }

    /// Records that `ids` were asked of `peer` (`asked`) or sent to it at `now`: only what
    /// actually went out (within the peer's credit) counts, so what a credit cut short is
    /// asked or sent again by the next exchange, not a sync interval later.
    fn done<'a>(
        &self,
        peer: &NodeId,
        asked: bool,
        ids: impl IntoIterator<Item = &'a MessageId>,
        now: u64,
    ) {
        let mut recent = lock(&self.recent);
        for id in ids {
            recent.insert((peer.clone(), asked, id.clone()), now);
        }
    }
}

/// One snapshot of the store's items.
#[derive(Debug)]
pub(super) struct Index {
    /// The store's mark when the snapshot was taken.
    mark: SyncMark,
    /// Sorted by timestamp, then id; no duplicates.
    items: Vec<range::Item>,
    /// Private seeds and the nodes that may receive their messages.
    private: BTreeMap<[u8; 16], Vec<NodeId>>,
    /// The items of public seeds, ready to reconcile (all items when no seed is private).
    public: Arc<range::ItemSet>,
}

impl Index {
    /// The index of `items` (any order), `private` seeds among them, at `mark`.
    fn new(
        mark: SyncMark,
        mut items: Vec<range::Item>,
        private: BTreeMap<[u8; 16], Vec<NodeId>>,
    ) -> Index {
        items.sort_unstable();
        items.dedup();
        let public = Arc::new(range::ItemSet::new(
            items
                .iter()
                .copied()
                .filter(|i| !private.contains_key(&i.seed)),
        ));
        Index {
            mark,
            items,
            private,
            public,
        }
    }

    /// This index with `added` items and `private` seeds more, at `mark`: the sorted items
    /// merged with the new ones in one pass.
    fn with(
        &self,
        mark: SyncMark,
        mut added: Vec<range::Item>,
        private: BTreeMap<[u8; 16], Vec<NodeId>>,
    ) -> Index {
        added.sort_unstable();
        let mut items = Vec::with_capacity(self.items.len() + added.len());
        let (mut old, mut new) = (self.items.iter().peekable(), added.into_iter().peekable());
        loop {
            let next = match (old.peek(), new.peek()) {
                (Some(a), Some(b)) if *a <= b => old.next().copied(),
                (Some(_), Some(_)) | (None, Some(_)) => new.next(),
                (Some(_), None) => old.next().copied(),
                (None, None) => break,
            };
            if let Some(item) = next
                && items.last() != Some(&item)
            {
                items.push(item);
            }
        }
        let mut all = self.private.clone();
        all.extend(private);
        Index::new(mark, items, all)
    }
}

/// Whether the transport source `from` is the node that announced `addresses` (see
/// [`Node::source_is_sender`]).
fn source_among(from: &str, addresses: &[String]) -> bool {
    if let Some(peer) = from.strip_prefix("libp2p:") {
        return crate::network::libp2p_peer_of(addresses).is_some_and(|p| p.to_string() == peer);
    }
    addresses.iter().any(|a| {
        a == from
            || a.strip_prefix("udp:")
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                .zip(crate::network::udp_source(from))
                .is_some_and(|(a, f)| a.ip().is_unspecified() && a.port() == f.port())
    })
}

/// Private seeds keyed by their id's bytes.
fn private_by_bytes(
    seeds: BTreeMap<crate::model::SeedId, Vec<NodeId>>,
) -> BTreeMap<[u8; 16], Vec<NodeId>> {
    let mut private = BTreeMap::new();
    for (seed, allowed) in seeds {
        let mut id = [0u8; 16];
        if hex::decode_to_slice(seed.as_str(), &mut id).is_ok() {
            private.insert(id, allowed);
        }
    }
    private
}

impl Index {
    /// The items reconciled with `peer`: every public one, and those of private seeds whose
    /// audience (or publisher) is `peer`. Without a peer (the first query of an exchange,
    /// which may go to several), the public ones only; both sides apply the same rule, so a
    /// private seed never looks like a difference to a peer outside its audience.
    fn set_for(&self, peer: Option<&NodeId>) -> Arc<range::ItemSet> {
        let Some(peer) = peer.filter(|p| self.private.values().any(|a| a.contains(p))) else {
            return self.public.clone();
        };
        Arc::new(range::ItemSet::new(self.items.iter().copied().filter(
            |i| {
                self.private
                    .get(&i.seed)
                    .is_none_or(|allowed| allowed.contains(peer))
            },
        )))
    }
}

/// Room for the payload of a sync envelope sent over a transport whose frames are at most
/// `max_frame` bytes.
fn payload_room(node: &Node, max_frame: usize) -> usize {
    node.inner
        .config
        .network
        .max_envelope_bytes
        .min(max_frame)
        .saturating_sub(envelope::OVERHEAD + FRAME_SLACK)
}

/// Bytes a sync envelope may add to its payload beyond [`envelope::OVERHEAD`].
pub(super) const FRAME_SLACK: usize = 16;

/// The most bytes one answer carries, whatever the credit: over libp2p an answer is one
/// response, and responses are limited to 10 MiB. What does not fit is asked for again.
const ANSWER_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// The most bytes of `sync_batch` envelopes (pushed messages and answers to wants) that the
/// answers to one batch of received frames carry together, whatever the sources' credits: the
/// answers wait in memory until the batch is committed, and every verified peer has a credit
/// of its own (`network.sync_budget_bytes`), so dozens of peers asking at once made a node hold
/// hundreds of MiB of answers. What does not fit is found and asked for again by the next
/// exchange (counter `sync.answers_over_budget`).
pub(super) const BATCH_ANSWER_BYTES: u64 = ANSWER_MAX_BYTES;

/// What a source may still be sent in answer to what it sent: opened with
/// [`Node::open_credit`], filled with [`Node::push_frame`] and [`Node::push_batches`], closed
/// with [`Node::close_credit`].
pub(super) struct Credit {
    available: u64,
    left: u64,
    /// Whose share of the batch's answers it draws on ([`AnswerRoom::key`]).
    share: String,
}

/// The room of the answers to one batch of received frames: [`BATCH_ANSWER_BYTES`] over all
/// sources, an equal share of it per source that asks in the batch (`sync_range`,
/// `sync_want`, `sync_digest` frames), so that the first to ask cannot leave the others
/// nothing (an honest peer's repairs waited behind a flood of wants from one verified
/// identity). Sources the transport does not vouch for (a UDP address anyone can write on a
/// datagram) share one share together: frames from made-up addresses cannot divide the room
/// into crumbs. A share is at least [`Node::answer_share_floor`] (room for the largest
/// envelope with its author's hello), so past that many askers the last ones may find the
/// room spent. A share a source does not use stays unused for this batch: what does not fit is
/// asked for again by the next exchange.
#[derive(Debug, Default)]
pub(super) struct AnswerRoom {
    left: u64,
    share: u64,
    spent: HashMap<String, u64>,
}

impl AnswerRoom {
    /// Whether a frame of this kind asks for answers that draw on the room.
    pub(super) fn asks(kind: Kind) -> bool {
        matches!(kind, Kind::SyncRange | Kind::SyncWant | Kind::SyncDigest)
    }

    /// The share a source draws on: its own when the transport vouches for it, else the one
    /// all unvouched sources have together.
    pub(super) fn key(source: &ingress::Source) -> &str {
        if source.verified { &source.from } else { "" }
    }
}

impl AnswerRoom {
    /// What the share `from` may still be sent in answer within this batch.
    fn allowed(&self, from: &str) -> u64 {
        let spent = self.spent.get(from).copied().unwrap_or(0);
        self.left.min(self.share.saturating_sub(spent))
    }

    fn spend(&mut self, from: &str, bytes: u64) {
        self.left = self.left.saturating_sub(bytes);
        *self.spent.entry(from.to_owned()).or_default() += bytes;
    }
}

/// What a peer asks of this node's store: answered by [`Node::answer_sync`].
pub(super) enum Ask<'a> {
    /// A `sync_range` query or reply.
    Range(&'a range::Round),
    /// A `sync_want`: the messages the peer lacks.
    Want(&'a range::Want),
}

/// The answer being made to an [`Ask`], from [`Node::answer_sync`].
struct Answer<'a> {
    /// Room for the payload of each sync envelope of the answer.
    room: usize,
    /// The store's items.
    index: Arc<Index>,
    /// Whether the source is the sender itself, so that items of private seeds the sender
    /// may have can go to it.
    bound: bool,
    /// Where the ask came from, and the answer goes.
    source: &'a ingress::Source,
    /// Bytes of the ask, which earn an unverified source its credit.
    received: usize,
    /// The frames of the answer.
    replies: &'a mut Vec<Vec<u8>>,
}

impl Node {
    /// The items of the store, from the cache while the store did not change, brought up to
    /// date from the rows stored since when it did (see [`IndexCache`]). Counted as
    /// `sync.index_reads` (the whole store read) and `sync.index_updates` (new rows merged).
    fn sync_index(&self) -> Result<Arc<Index>> {
        let mut cache = lock(&self.inner.sync_index.index);
        let store = lock(&self.inner.store);
        let mark = store.sync_mark()?;
        let index = match cache.as_ref() {
            Some(index) if index.mark == mark => return Ok(index.clone()),
            Some(index)
                if index.mark.pruned == mark.pruned && index.mark.last_row < mark.last_row =>
            {
                let added = store.sync_items_between(index.mark.last_row, mark.last_row)?;
                let seeds: BTreeSet<[u8; 16]> = added.iter().map(|i| i.seed).collect();
                let seeds: Vec<_> = seeds
                    .into_iter()
                    .map(crate::model::SeedId::from_bytes)
                    .collect();
                let private = private_by_bytes(store.private_among(&seeds)?);
                // Merging and sealing need no store: other work goes on meanwhile (the cache
                // lock keeps a second update from starting).
                drop(store);
                self.inner.rejections.count("sync.index_updates");
                index.with(mark, added, private)
            }
            _ => {
                let items = store.sync_items_between(0, mark.last_row)?;
                let private = private_by_bytes(store.private_seeds()?);
                drop(store);
                self.inner.rejections.count("sync.index_reads");
                Index::new(mark, items, private)
            }
        };
        let index = Arc::new(index);
        *cache = Some(index.clone());
        Ok(index)
    }

    /// Whether `from` (a transport source) is `sender` itself, by the addresses its verified
    /// hello announced: over libp2p, the peer id the connection authenticated is the one its
    /// addresses name (`.../p2p/<id>`); otherwise one of its addresses (a UDP node bound to an
    /// unspecified address: the same port).
    fn source_is_sender(&self, sender: &NodeId, from: &str) -> Result<bool> {
        let Some(peer) = lock(&self.inner.store).peer(sender)? else {
            return Ok(false);
        };
        Ok(source_among(from, &peer.addresses))
    }

    /// The first query of an exchange, as a signed `sync_range` envelope for a transport whose
    /// frames are at most `max_frame` bytes (sent every `network.sync_interval_secs`); `None`
    /// while this node knows no peer (a node that starts with an empty peer table): it has
    /// nobody to exchange with yet, and every peer that could answer answers its hello first,
    /// which starts an exchange (counter `sync.queries_skipped`).
    /// A repair round (`periodic` false) leaves the pace of the periodic rounds as it is.
    pub(super) fn range_query_frame(
        &self,
        max_frame: usize,
        periodic: bool,
    ) -> Result<Option<Vec<u8>>> {
        if !lock(&self.inner.store).knows_a_peer()? {
            self.inner.rejections.count("sync.queries_skipped");
            return Ok(None);
        }
        let limit = range::frame_limit(payload_room(self, max_frame));
        let index = self.sync_index()?;
        if periodic {
            lock(&self.inner.sync_index.pace).after_round(index.mark);
        }
        let msg = index.set_for(None).query(limit);
        let frame = self.range_frame(false, msg)?;
        self.inner.rejections.count("sync.queries_sent");
        self.inner
            .rejections
            .add("sync.reconcile_bytes_sent", frame.len() as u64);
        Ok(Some(frame))
    }

    /// Prepares a repair round (frames the transport lost, see `network_loop`), the first loss
    /// it repairs `since_first` ago: the exchanges this node runs from now on do not yield to an
    /// exchange of a peer that queried it before now (that one ran before the loss, and did
    /// not carry what was lost; see [`Node::receive_range`]; this holds for every peer, until
    /// it queries again), and they ask again for messages asked of a peer before the first
    /// loss (what the loss took may be the batches that answered those wants; wants sent since
    /// may still be answered).
    pub(super) fn repair_exchanges(&self, since_first: std::time::Duration) {
        let cache = &self.inner.sync_index;
        let now = self.now_ms();
        cache
            .repaired_at
            .store(now, std::sync::atomic::Ordering::Relaxed);
        let first = now.saturating_sub(u64::try_from(since_first.as_millis()).unwrap_or(u64::MAX));
        lock(&cache.recent).retain(|(_, asked, _), at| !*asked || *at >= first);
    }

    /// How long to wait for the next periodic sync round, in ms: `network.sync_interval_secs`
    /// times the pace set by the last round (see [`Pace`]).
    pub(super) fn next_sync_round_ms(&self) -> u64 {
        let stretch = lock(&self.inner.sync_index.pace).stretch.max(1);
        u64::from(self.inner.config.network.sync_interval_secs) * 1000 * u64::from(stretch)
    }

    fn range_frame(&self, reply: bool, msg: Vec<u8>) -> Result<Vec<u8>> {
        let round = range::Round { reply, msg };
        self.plain_frame(Kind::SyncRange, &envelope::encode_hello(&round), 60)
    }

    /// A `sync_range` or `sync_want` envelope (header `h`, `received` bytes, from `source`,
    /// over a transport whose frames are at most `max_frame` bytes), answered into `replies`
    /// by [`Node::receive_range`] or [`Node::answer_want`]. The answer goes to the source: the
    /// items and envelopes of private seeds only when the source is the sender itself, not a
    /// peer that forwards (or relays) its signed query or want.
    pub(super) fn answer_sync(
        &self,
        h: &Header,
        ask: Ask<'_>,
        received: usize,
        source: &ingress::Source,
        max_frame: usize,
        replies: &mut Vec<Vec<u8>>,
    ) -> Result<Acceptance> {
        let index = self.sync_index()?;
        let bound = !index.private.is_empty() && self.source_is_sender(&h.sender, &source.from)?;
        let answer = Answer {
            room: payload_room(self, max_frame),
            index,
            bound,
            source,
            received,
            replies,
        };
        match ask {
            Ask::Range(round) => self.receive_range(h, round, answer),
            Ask::Want(want) => self.answer_want(&h.sender, want, answer),
        }
    }

    /// A `sync_range` envelope (header `h`): a query is answered with our reply; a reply with
    /// our next query while ranges still differ, with `sync_want` envelopes for the messages
    /// we lack (none of a seed pruned here), and with `sync_batch` envelopes carrying the
    /// messages the peer lacks. A reply from a peer with a lower id that sent us a query
    /// within the last `network.sync_interval_secs` ends our exchange instead (counter
    /// `sync.exchanges_yielded`): its own exchange with us finds the same difference and
    /// carries it both ways, so one exchange per pair runs at a time; unless that query came
    /// before this node's last repair round ([`Node::repair_exchanges`]).
    fn receive_range(
        &self,
        h: &Header,
        round: &range::Round,
        answer: Answer<'_>,
    ) -> Result<Acceptance> {
        let limit = range::frame_limit(answer.room);
        let now = self.now_ms();
        let interval = u64::from(self.inner.config.network.sync_interval_secs) * 1000;
        let set = answer.index.set_for(answer.bound.then_some(&h.sender));
        // Our frames, each with the ids it asks for (a want) or none.
        let mut frames: Vec<(Vec<u8>, Vec<MessageId>)> = Vec::new();
        // Whether `frames` starts with our next query.
        let mut query_first = false;
        // Messages the peer lacks, sent to it after our frames.
        let mut pushed = Vec::new();
        if !round.reply {
            // The same query again from the same peer and source, over the same items, soon
            // after (two exchanges started together: a sync interval and a hello): the first
            // answer serves both.
            let mut hasher = Sha256::new();
            hasher.update(answer.source.from.as_bytes());
            hasher.update([0]);
            hasher.update(&round.msg);
            let hash: [u8; 32] = hasher.finalize().into();
            {
                let mut answered = lock(&self.inner.sync_index.answered);
                let window = (interval / 2).min(REPEATED_QUERY_MS);
                answered.retain(|_, (at, _, _)| now.saturating_sub(*at) < window);
                if answered
                    .get(&h.sender)
                    .is_some_and(|(_, q, m)| *q == hash && *m == answer.index.mark)
                {
                    self.inner.rejections.count("sync.queries_repeated");
                    return Ok(Acceptance::Ignore);
                }
            }
            match set.answer(&round.msg, limit) {
                Ok(Some(out)) => frames.push((self.range_frame(true, out)?, Vec::new())),
                Ok(None) => {}
                Err(e) => return self.malformed(&answer.source.from, h, e),
            }
            lock(&self.inner.sync_index.answered)
                .insert(h.sender.clone(), (now, hash, answer.index.mark));
            let mut queried_by = lock(&self.inner.sync_index.queried_by);
            queried_by.retain(|_, at| now.saturating_sub(*at) <= interval);
            queried_by.insert(h.sender.clone(), now);
        } else {
            let progress = match set.follow(&round.msg, limit) {
                Ok(p) => p,
                Err(e) => return self.malformed(&answer.source.from, h, e),
            };
            let repaired_at = self
                .inner
                .sync_index
                .repaired_at
                .load(std::sync::atomic::Ordering::Relaxed);
            if h.sender < self.inner.id
                && lock(&self.inner.sync_index.queried_by)
                    .get(&h.sender)
                    .is_some_and(|at| now.saturating_sub(*at) <= interval && *at >= repaired_at)
            {
                self.inner.rejections.count("sync.exchanges_yielded");
                return Ok(Acceptance::Ignore);
            }
            if let Some(next) = progress.next {
                frames.push((self.range_frame(false, next)?, Vec::new()));
                query_first = true;
            }
            pushed = progress
                .have
                .into_iter()
                .map(|(message, _)| message)
                .take(range::want_capacity(answer.room))
                .collect();
            pushed = self
                .inner
                .sync_index
                .not_recent(&h.sender, false, pushed, now, interval);
            let mut wanted = Vec::new();
            {
                let store = lock(&self.inner.store);
                for (message, seed) in progress.need {
                    if !store.is_pruned(&seed)? && !store.is_known(&message)? {
                        wanted.push(message);
                    }
                }
            }
            let wanted = self
                .inner
                .sync_index
                .not_recent(&h.sender, true, wanted, now, interval);
            for ids in wanted.chunks(range::want_capacity(answer.room)) {
                let want = range::Want {
                    ids: ids
                        .iter()
                        .filter_map(|id| hex::decode(id.as_str()).ok())
                        .map(serde_bytes::ByteBuf::from)
                        .collect(),
                };
                frames.push((
                    self.plain_frame(Kind::SyncWant, &envelope::encode_hello(&want), 60)?,
                    ids.to_vec(),
                ));
            }
        }
        let mut credit = self.open_credit(answer.source, answer.received);
        let mut sent = 0u64;
        let mut all_sent = true;
        for (i, (frame, asked)) in frames.into_iter().enumerate() {
            let len = frame.len() as u64;
            if !self.push_frame(&mut credit, frame, answer.replies) {
                self.inner.rejections.count("sync.answers_over_budget");
                all_sent = false;
                break;
            }
            if i == 0 && query_first {
                self.inner.rejections.count("sync.queries_sent");
            }
            self.inner.sync_index.done(&h.sender, true, &asked, now);
            sent += len;
        }
        if sent > 0 {
            self.inner.rejections.add("sync.reconcile_bytes_sent", sent);
        }
        if all_sent && !pushed.is_empty() {
            // What the peer lacks goes to it at once, without waiting for its own exchange.
            let (ids, items): (Vec<_>, Vec<_>) = self
                .envelopes_for(&h.sender, &pushed, answer.bound, &answer.index)?
                .into_iter()
                .unzip();
            let went = self.push_batches(&mut credit, items, answer.room, answer.replies)?;
            self.inner
                .sync_index
                .done(&h.sender, false, ids[..went].iter().flatten(), now);
        }
        self.close_credit(answer.source, &credit);
        Ok(Acceptance::Ignore)
    }

    /// A `sync_want` envelope from `requester`: the stored envelopes it asks for, each seed's
    /// creation first, preceded by the hellos of their authors, in batches within the
    /// source's credit. A private seed's messages go only to its audience and publisher, and
    /// only when the source is the requester itself ([`Node::source_is_sender`]).
    fn answer_want(
        &self,
        requester: &NodeId,
        want: &range::Want,
        answer: Answer<'_>,
    ) -> Result<Acceptance> {
        let ids: Vec<MessageId> = want
            .ids
            .iter()
            .take(range::want_capacity(answer.room))
            .filter_map(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
            .map(MessageId::from_bytes)
            .collect();
        let items = self
            .envelopes_for(requester, &ids, answer.bound, &answer.index)?
            .into_iter()
            .map(|(_, envelope)| envelope)
            .collect();
        let mut credit = self.open_credit(answer.source, answer.received);
        self.push_batches(&mut credit, items, answer.room, answer.replies)?;
        self.close_credit(answer.source, &credit);
        Ok(Acceptance::Ignore)
    }

    /// The stored envelopes among `ids` that `requester` may receive, each seed's creation
    /// first, preceded by the hellos of their authors: a private seed's messages only when the
    /// source is the requester itself (`bound`) and it is in the seed's audience or its
    /// publisher; a sealed envelope whose seed is unknown here to nobody. Each with its
    /// message id (none for a hello).
    fn envelopes_for(
        &self,
        requester: &NodeId,
        ids: &[MessageId],
        bound: bool,
        index: &Index,
    ) -> Result<Vec<(Option<MessageId>, Vec<u8>)>> {
        let store = lock(&self.inner.store);
        let mut wanted = store.wanted_envelopes(ids)?;
        wanted.retain(|w| {
            let mut seed = [0u8; 16];
            let _ = hex::decode_to_slice(w.seed.as_str(), &mut seed);
            match index.private.get(&seed) {
                Some(allowed) => bound && allowed.contains(requester),
                // Sealed, but its seed is unknown here: we cannot tell who may have it.
                None => w.envelope.get(5).is_some_and(|flags| flags & 1 == 0),
            }
        });
        wanted.sort_by(|a, b| {
            (&a.seed, !a.creation, a.lamport).cmp(&(&b.seed, !b.creation, b.lamport))
        });
        let mut items = Vec::new();
        let mut authors = BTreeSet::new();
        for w in &wanted {
            if w.sender != self.inner.id
                && authors.insert(w.sender.clone())
                && let Some(hello) = store.peer_hello(&w.sender)?
            {
                items.push((None, hello));
            }
        }
        items.extend(wanted.into_iter().map(|w| (Some(w.id), w.envelope)));
        Ok(items)
    }

    /// Opens the credit of `source`, which just sent `received` bytes: a source the transport
    /// vouches for may receive `network.sync_budget_bytes` per `network.sync_interval_secs`,
    /// any other `network.sync_answer_ratio` times what it sent (anti-amplification); one
    /// answer at most [`ANSWER_MAX_BYTES`].
    pub(super) fn open_credit(&self, source: &ingress::Source, received: usize) -> Credit {
        let net = &self.inner.config.network;
        let (amount, cap) = if source.verified {
            (net.sync_budget_bytes, net.sync_budget_bytes)
        } else {
            let earned = (received as u64).saturating_mul(net.sync_answer_ratio.into());
            (earned, u64::MAX)
        };
        let available = self
            .inner
            .sync_credit
            .earn(&source.from, amount, cap, self.now_ms())
            .min(ANSWER_MAX_BYTES);
        Credit {
            available,
            left: available,
            share: AnswerRoom::key(source).to_owned(),
        }
    }

    /// Adds `frame` to the answers if the credit allows it.
    pub(super) fn push_frame(
        &self,
        credit: &mut Credit,
        frame: Vec<u8>,
        replies: &mut Vec<Vec<u8>>,
    ) -> bool {
        if frame.len() as u64 > credit.left {
            return false;
        }
        credit.left -= frame.len() as u64;
        replies.push(frame);
        true
    }

    /// Opens the room of the answers to a batch of received frames in which `askers` shares
    /// ask ([`AnswerRoom::key`]; at least one is assumed): [`BATCH_ANSWER_BYTES`] of
    /// `sync_batch` envelopes over all of them, an equal share each but at least
    /// [`Node::answer_share_floor`] ([`AnswerRoom`], [`Node::push_batches`]).
    pub(super) fn open_answer_room(&self, askers: usize) {
        let share = (BATCH_ANSWER_BYTES / askers.max(1) as u64).max(self.answer_share_floor());
        let mut room = lock(&self.inner.answer_room);
        room.left = BATCH_ANSWER_BYTES;
        room.share = share;
        room.spent.clear();
    }

    /// The least share of a batch's answers: room for two of the largest envelopes this node
    /// accepts (`network.max_envelope_bytes`), such as one with its author's hello, so that
    /// a share is never too small for what it must carry.
    pub(super) fn answer_share_floor(&self) -> u64 {
        2 * self.inner.config.network.max_envelope_bytes as u64
    }

    /// Packs `items` (envelopes) into `sync_batch` envelopes of at most `max_payload` bytes,
    /// in order, while the credit and the source's share of the room of the batch's answers
    /// ([`Node::open_answer_room`]) allow; stops at the first one that does not fit (a hello
    /// is never separated from the envelopes that need it). What is left waits for the next
    /// exchange (counter `sync.answers_over_budget`). Bytes of the batches: counter
    /// `sync.batch_bytes_sent`. Returns how many of `items`, from the first, went out (an
    /// envelope too large for any batch counts as gone: it never will).
    pub(super) fn push_batches(
        &self,
        credit: &mut Credit,
        items: Vec<Vec<u8>>,
        max_payload: usize,
        replies: &mut Vec<Vec<u8>>,
    ) -> Result<usize> {
        let total = items.len();
        let mut queue: std::collections::VecDeque<Vec<u8>> = items.into();
        // Items taken from the queue into a batch the credit did not allow.
        let mut held = 0;
        // The credit as far as the source's share of the batch's answers allows; what it
        // spends is taken from both.
        let batch_room = lock(&self.inner.answer_room).allowed(&credit.share);
        let mut allowed = Credit {
            available: credit.left.min(batch_room),
            left: credit.left.min(batch_room),
            share: String::new(),
        };
        loop {
            // Room for the payload once the batch's own header and signatures are counted.
            let room = usize::try_from(allowed.left)
                .unwrap_or(usize::MAX)
                .saturating_sub(envelope::OVERHEAD + FRAME_SLACK);
            let batch = sync::next_batch(&mut queue, room, max_payload);
            if batch.items.is_empty() {
                break;
            }
            let count = batch.items.len();
            let frame = self.plain_frame(Kind::SyncBatch, &envelope::encode_hello(&batch), 60)?;
            let len = frame.len() as u64;
            if !self.push_frame(&mut allowed, frame, replies) {
                held = count;
                break;
            }
            self.inner.rejections.add("sync.batch_bytes_sent", len);
        }
        let spent = allowed.available - allowed.left;
        credit.left -= spent;
        lock(&self.inner.answer_room).spend(&credit.share, spent);
        if held > 0 || !queue.is_empty() {
            self.inner.rejections.count("sync.answers_over_budget");
        }
        Ok(total - queue.len() - held)
    }

    /// Records what was spent of the credit opened with [`Node::open_credit`].
    pub(super) fn close_credit(&self, source: &ingress::Source, credit: &Credit) {
        self.inner
            .sync_credit
            .spend(&source.from, (credit.available - credit.left) as usize);
    }
}

/// The previous version's sync digests (kind 8), still answered.
impl Node {
    /// Answers a digest (kind 8) of a peer of the previous version, which this version no
    /// longer sends ([`range`](crate::sync::range) queries instead), of `digest_bytes` from
    /// `source`: the seeds it lacks (with their authors' hellos) in batches, and our own digest
    /// when it holds seeds we lack (unless its digest is itself a reply), all within the
    /// source's sync credit.
    pub(super) fn answer_digest(
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
        let mut credit = self.open_credit(source, digest_bytes);
        self.push_batches(&mut credit, items, max_payload, replies)?;
        if cmp.peer_has_more && !digest.reply {
            let frame = self.digest_frame(true)?;
            self.push_frame(&mut credit, frame, replies);
        }
        self.close_credit(source, &credit);
        Ok(())
    }

    /// Our sync digest as a signed envelope.
    fn digest_frame(&self, reply: bool) -> Result<Vec<u8>> {
        let seeds = lock(&self.inner.store).sync_digest(DIGEST_LIMIT)?;
        let digest = sync::Digest { reply, seeds };
        self.plain_frame(Kind::SyncDigest, &envelope::encode_hello(&digest), 60)
    }
}

/// Most seeds listed in one digest (about 40 bytes each, so a digest fits one datagram).
const DIGEST_LIMIT: usize = 1200;

#[cfg(test)]
mod tests {
    use super::*;

    fn item(t: u64, m: u8, s: u8) -> range::Item {
        range::Item {
            timestamp: t,
            message: [m; 16],
            seed: [s; 16],
        }
    }

    /// A source is the node whose hello announced it: the libp2p peer id all its libp2p
    /// addresses name, one of its other addresses, or the port of its unspecified UDP address.
    #[test]
    fn a_source_is_the_sender_only_by_its_announced_addresses() {
        let id = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        let libp2p = vec![
            format!("/ip4/127.0.0.1/tcp/4001/p2p/{id}"),
            format!("/ip4/127.0.0.1/udp/4001/quic-v1/p2p/{id}"),
            "udp:127.0.0.1:4002".to_owned(),
        ];
        assert!(source_among(&format!("libp2p:{id}"), &libp2p));
        assert!(!source_among("libp2p:12D3KooWOther", &libp2p));
        assert!(source_among("udp:127.0.0.1:4002", &libp2p));
        assert!(!source_among("udp:127.0.0.1:4003", &libp2p));
        // No peer id announced, or two: no libp2p source is the sender.
        assert!(!source_among(
            &format!("libp2p:{id}"),
            &["udp:127.0.0.1:9".into()]
        ));
        let two = vec![
            libp2p[0].clone(),
            format!("/p2p/{}", libp2p::PeerId::random()),
        ];
        assert!(!source_among(&format!("libp2p:{id}"), &two));
        let any = vec!["udp:0.0.0.0:7000".to_owned()];
        assert!(source_among("udp:10.1.2.3:7000", &any));
        assert!(!source_among("udp:10.1.2.3:7001", &any));
        assert!(source_among("memory:b", &["memory:b".into()]));
        assert!(!source_among("memory:c", &["memory:b".into()]));
        assert!(!source_among("memory:b", &[]));
    }

    fn mark(last_row: i64) -> SyncMark {
        SyncMark {
            last_row,
            pruned: 0,
        }
    }

    /// Items merged into an index are the index of all of them: sorted, without duplicates
    /// (a row read twice), with the private seeds of both and their items left out of the
    /// public set, whether they came before or after the seed was known to be private.
    #[test]
    fn merged_items_are_the_index_of_all_of_them() {
        let old = vec![item(5, 1, 9), item(1, 2, 9), item(9, 3, 7), item(5, 4, 8)];
        let added = vec![item(3, 5, 8), item(9, 3, 7), item(0, 6, 9), item(12, 7, 6)];
        let first = Index::new(mark(4), old.clone(), BTreeMap::new());
        let private = BTreeMap::from([([8u8; 16], vec![NodeId::from_bytes([1; 32])])]);
        let merged = first.with(mark(8), added.clone(), private.clone());
        let whole = Index::new(mark(8), [old, added].concat(), private);
        assert_eq!(merged.items, whole.items);
        assert_eq!(merged.items.len(), 7);
        assert!(merged.items.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(merged.private.len(), 1);
        assert_eq!(merged.mark, mark(8));
        // The public sets agree: an exchange between them finds nothing.
        assert!(needs(&merged.public, &whole.public).is_empty());
        // And they leave out the private seed's two items, one of them stored before.
        let all = Index::new(mark(8), merged.items.clone(), BTreeMap::new());
        let want: Vec<_> = [4u8, 5]
            .into_iter()
            .map(|m| crate::model::MessageId::from_bytes([m; 16]))
            .collect();
        assert_eq!(needs(&merged.public, &all.public), want);
    }

    /// A `sync_want` from `id` for `ids`, signed, with a fresh message id.
    fn want_from(id: &crate::identity::Identity, ids: &[MessageId]) -> Vec<u8> {
        let want = range::Want {
            ids: ids
                .iter()
                .map(|m| serde_bytes::ByteBuf::from(hex::decode(m.as_str()).unwrap()))
                .collect(),
        };
        super::super::admission_tests::plain_envelope(id, Kind::SyncWant, &want)
    }

    /// A node (sync = normal) holding 100 seeds, with 64 verified peers whose hellos it
    /// received; the ids of its stored messages.
    async fn answering_node(
        dir: &std::path::Path,
    ) -> (Node, Vec<MessageId>, Vec<crate::identity::Identity>) {
        use crate::network::MemoryHub;
        let hub = MemoryHub::new();
        let mut config = crate::config::Config::with_data_dir(dir.join("node"));
        config.name = "node".into();
        config.store.sync = crate::store::SyncMode::Normal;
        let node = Node::start_with_transport(config, Box::new(hub.join("node")))
            .await
            .unwrap();
        for i in 0..100 {
            let req = crate::PublishRequest {
                bid_window_secs: 3600,
                ..crate::PublishRequest::new(format!("echo {i}"))
            };
            node.publish(req).await.unwrap();
        }
        let index = node.sync_index().unwrap();
        let ids: Vec<MessageId> = index
            .items
            .iter()
            .map(|i| MessageId::from_bytes(i.message))
            .collect();
        assert!(ids.len() >= 100);
        let peers: Vec<_> = (0..64)
            .map(|t| crate::identity::Identity::from_tag(100 + t, 0))
            .collect();
        let hellos = peers
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let hello = super::super::admission_tests::plain_hello(id, &format!("peer{i}"));
                let message_id = MessageId::from_bytes(crate::clock::random_bytes());
                (
                    i,
                    super::super::admission_tests::hello_envelope(id, &hello, message_id),
                )
            })
            .collect();
        receive(&node, hellos).await;
        (node, ids, peers)
    }

    /// `node` receives `frames` (by peer index, from `memory:peer<i>`, verified) as one batch:
    /// the bytes of the answers to each.
    async fn receive(node: &Node, frames: Vec<(usize, Vec<u8>)>) -> Vec<usize> {
        let frames = frames
            .into_iter()
            .map(|(i, bytes)| {
                let source = ingress::Source {
                    from: format!("memory:peer{i}"),
                    verified: true,
                };
                (source, bytes)
            })
            .collect();
        receive_from(node, frames).await
    }

    /// `node` receives `frames` from their sources as one batch: the bytes of the answers to
    /// each.
    async fn receive_from(node: &Node, frames: Vec<(ingress::Source, Vec<u8>)>) -> Vec<usize> {
        let arrivals = frames
            .into_iter()
            .map(|(source, bytes)| super::super::batch::Arrival {
                bytes,
                source,
                ack: None,
            })
            .collect();
        let n = node.clone();
        let received = tokio::task::spawn_blocking(move || {
            n.receive_batch(arrivals, envelope::MAX_ENVELOPE_BYTES)
        })
        .await
        .unwrap();
        received
            .iter()
            .map(|r| r.handled.replies.iter().map(Vec::len).sum())
            .collect()
    }

    /// Attack: frames that parse as sync wants from made-up UDP addresses (anyone can write
    /// any source on a datagram), one honest want among them. Counted as askers each, they cut
    /// the honest peer's share of the batch's answers to crumbs (and are then refused at the
    /// signature check, spending nothing): the sources the transport does not vouch for share
    /// one share together.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wants_from_made_up_addresses_do_not_shrink_an_honest_peers_answers() {
        let dir = tempfile::tempdir().unwrap();
        let (node, ids, peers) = answering_node(dir.path()).await;
        let whole = receive(&node, vec![(1, want_from(&peers[1], &ids))]).await[0];
        let stranger = crate::identity::Identity::from_tag(250, 0);
        let mut frames: Vec<(ingress::Source, Vec<u8>)> = (0..200u32)
            .map(|i| {
                let source = ingress::Source {
                    from: format!("udp:203.0.113.{}:{}", i % 250, 1000 + i),
                    verified: false,
                };
                (source, want_from(&stranger, &ids[..1]))
            })
            .collect();
        let honest = ingress::Source {
            from: "memory:peer1".into(),
            verified: true,
        };
        frames.push((honest, want_from(&peers[1], &ids)));
        let answered = receive_from(&node, frames).await;
        assert_eq!(answered[..200].iter().sum::<usize>(), 0);
        assert_eq!(answered[200], whole, "the honest peer's want");
        node.stop().await.unwrap();
    }

    /// Attack: dozens of peers, each with a sync credit of its own, ask for the whole store in
    /// the same batch of frames. The answers of a batch wait in memory for its commit: they
    /// carry at most [`BATCH_ANSWER_BYTES`] of envelopes together (each peer's credit alone
    /// would let them carry 64 times the store here), each source its share, and the next
    /// batch has room again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_answers_to_one_batch_are_bounded_over_all_sources() {
        let dir = tempfile::tempdir().unwrap();
        let (node, ids, peers) = answering_node(dir.path()).await;
        let wants =
            |from: std::ops::Range<usize>| from.map(|i| (i, want_from(&peers[i], &ids))).collect();
        // Alone, a want is answered in full.
        let whole = receive(&node, wants(0..1)).await[0];
        let first = receive(&node, wants(0..peers.len())).await;
        let total: usize = first.iter().sum();
        assert!(
            (whole * peers.len()) as u64 > 2 * BATCH_ANSWER_BYTES,
            "the wants ask for too little to test the bound: {whole}"
        );
        assert!(
            total as u64 <= BATCH_ANSWER_BYTES,
            "{total} bytes of answers to one batch (each: {first:?})"
        );
        // Each source had its share: the last want of the batch was answered as the first.
        let share = BATCH_ANSWER_BYTES as usize / peers.len();
        for (i, &bytes) in first.iter().enumerate() {
            assert!(
                bytes <= share && bytes >= share / 2,
                "peer {i}: {bytes} bytes of a share of {share} ({first:?})"
            );
        }
        // The next batch has room again: what was left unanswered is answered when asked again.
        assert_eq!(receive(&node, wants(63..64)).await, vec![whole]);
        node.stop().await.unwrap();
    }

    /// Attack: one verified peer puts many wants ahead of an honest peer's in one batch. The
    /// first wants took the whole room of the batch's answers, and the honest peer's repair got
    /// nothing until it asked again (and again, while the flood went on); each source that asks
    /// in a batch now has an equal share of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_asking_first_does_not_take_the_answers_of_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (node, ids, peers) = answering_node(dir.path()).await;
        let whole = receive(&node, vec![(1, want_from(&peers[1], &ids))]).await[0];
        let flood = BATCH_ANSWER_BYTES as usize / whole + 2;
        let mut frames: Vec<(usize, Vec<u8>)> = (0..flood)
            .map(|_| (0, want_from(&peers[0], &ids)))
            .collect();
        frames.push((1, want_from(&peers[1], &ids)));
        let answered = receive(&node, frames).await;
        let flooder: usize = answered[..flood].iter().sum();
        assert!(
            flooder as u64 <= BATCH_ANSWER_BYTES / 2,
            "the flooder got {flooder} bytes ({answered:?})"
        );
        assert_eq!(
            answered[flood], whole,
            "the honest peer's want: {answered:?}"
        );
        node.stop().await.unwrap();
    }

    /// What `initiator` lacks of `responder`'s items, by a whole exchange.
    fn needs(initiator: &range::ItemSet, responder: &range::ItemSet) -> Vec<MessageId> {
        let limit = range::MIN_FRAME_LIMIT;
        let mut need = Vec::new();
        let mut query = Some(initiator.query(limit));
        while let Some(q) = query.take() {
            let Some(reply) = responder.answer(&q, limit).unwrap() else {
                break;
            };
            let p = initiator.follow(&reply, limit).unwrap();
            need.extend(p.need.into_iter().map(|(m, _)| m));
            query = p.next;
            assert!(need.len() <= 100, "no end");
        }
        need.sort();
        need
    }
}
