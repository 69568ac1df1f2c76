//! Events: what happened in the node, for subscribers and for the `events.ndjson` log.
//!
//! Events are written to the store in the same transaction as the change they describe, so
//! their sequence numbers are durable and gap-free. The node then publishes them on an
//! in-process [`EventBus`] (bounded; a subscriber that falls behind gets an
//! [`EventKind::EventsDropped`] notice instead of slowing anyone down) and appends them to a
//! rotating NDJSON log.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::ToSchema;

use crate::alerts::alert::AlertName;
use crate::model::SettlementOutcome;
use crate::model::{BidId, MessageId, MessageKind, Millis, NodeId, SeedId, SeedStatus};
use crate::state::Violation;

/// One event with its sequence number and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Position in the node's event log (1, 2, ...); 0 for notices that are not logged.
    pub seq: u64,
    /// When it happened (Unix ms).
    pub at: Millis,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

fn one() -> u64 {
    1
}

/// Why a remote message was rejected; each reason has a counter.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// It could not be decoded or its fields are invalid.
    Malformed,
    /// It was larger than allowed.
    Oversized,
    /// A sync envelope (digest, batch, revocation list) that was already received: a replay.
    /// Copies of other envelopes (gossip relays, sync answers) are counted as
    /// `messages.duplicate`, not rejected.
    Duplicate,
    /// A signature does not verify with any of the sender's known keys (for a known sender,
    /// after `network.unknown_sender_hold_ms` without a key rotation of it arriving).
    BadSignature,
    /// The sender is not in the peer table: no verified hello arrived within
    /// `network.unknown_sender_hold_ms` (or the hold queue was full, or it came inside a sync
    /// batch without its hello).
    UnknownSender,
    /// It is older than the sender's replay floor: a replay of a forgotten message.
    Replay,
    /// Its time to live is over, or it is dated too far in the future.
    Expired,
    /// A hello whose node id does not match its keys, or a known node id with other keys.
    KeyMismatch,
    /// It breaks a lifecycle rule (see the violation in the event).
    Rule,
    /// Its author is not admitted by this node's trust policy (deny or allow list).
    NotAdmitted,
    /// Its transport source, or its sender (proven by its signatures), sent more frames than
    /// the rate limit allows (`network.source_rate_per_sec`, `network.sender_rate_per_sec`).
    RateLimited,
    /// Its Lamport counter is more than `network.lamport_window` ahead of this node's clock.
    LamportAhead,
    /// Signed with keys its author replaced by a key rotation, after their grace period
    /// (`trust.rotation_grace_secs`).
    RotatedKey,
}

impl RejectReason {
    /// The reason's name, as in JSON and counter names.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::Oversized => "oversized",
            RejectReason::Duplicate => "duplicate",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::UnknownSender => "unknown_sender",
            RejectReason::Replay => "replay",
            RejectReason::Expired => "expired",
            RejectReason::KeyMismatch => "key_mismatch",
            RejectReason::Rule => "rule",
            RejectReason::NotAdmitted => "not_admitted",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::LamportAhead => "lamport_ahead",
            RejectReason::RotatedKey => "rotated_key",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The node started.
    NodeStarted {
        /// This node.
        node_id: NodeId,
        /// The transport in use, if any.
        #[schema(required)]
        transport: Option<String>,
    },
    /// The node stopped.
    NodeStopped {
        /// This node.
        node_id: NodeId,
    },
    /// A seed was published.
    SeedPublished {
        /// The seed.
        seed_id: SeedId,
        /// Its publisher.
        publisher: NodeId,
        /// Its command.
        command: String,
    },
    /// A bid was placed.
    BidPlaced {
        /// The seed.
        seed_id: SeedId,
        /// The bid.
        bid_id: BidId,
        /// The bidder.
        bidder: NodeId,
        /// The price.
        price: u64,
    },
    /// The publisher closed bidding.
    BiddingClosed {
        /// The seed.
        seed_id: SeedId,
        /// The winning bid, if any.
        #[schema(required)]
        winner: Option<BidId>,
        /// The winning node, if any.
        #[schema(required)]
        winner_node: Option<NodeId>,
        /// The winning price, if any.
        #[schema(required)]
        price: Option<u64>,
    },
    /// The winner claimed the seed.
    SeedClaimed {
        /// The seed.
        seed_id: SeedId,
        /// The claimer.
        claimer: NodeId,
    },
    /// This node started running a task.
    TaskStarted {
        /// The seed.
        seed_id: SeedId,
        /// The command.
        command: String,
    },
    /// A result was recorded.
    ResultRecorded {
        /// The seed.
        seed_id: SeedId,
        /// The node that ran it.
        runner: NodeId,
        /// Exit code 0, no timeout and not interrupted.
        success: bool,
        /// The run was interrupted: its node stopped or crashed while the task ran (the
        /// seed's result says so too, in `result.interrupted`). Absent when false.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        interrupted: bool,
        /// Exit code, if any.
        #[schema(required)]
        exit_code: Option<i32>,
        /// Run time.
        duration_ms: u64,
        /// SHA-256 of the output.
        output_sha256: String,
    },
    /// The publisher settled.
    SeedSettled {
        /// The seed.
        seed_id: SeedId,
        /// Accepted or rejected.
        outcome: SettlementOutcome,
        /// Amount due.
        amount: u64,
    },
    /// The publisher cancelled.
    SeedCancelled {
        /// The seed.
        seed_id: SeedId,
    },
    /// The publisher moved the seed to the next best bid (rules 2: the previous winner did
    /// not claim in time, or its round failed).
    SeedReassigned {
        /// The seed.
        seed_id: SeedId,
        /// The round this starts.
        round: u32,
        /// The new winning bid; none when no bid was left (the seed expired).
        #[schema(required)]
        winner: Option<BidId>,
        /// The new winning bidder.
        #[schema(required)]
        winner_node: Option<NodeId>,
        /// The new winning price.
        #[schema(required)]
        price: Option<u64>,
    },
    /// The publisher declared a claimed round failed (rules 2: no result in time).
    SeedFailed {
        /// The seed.
        seed_id: SeedId,
        /// The round that failed.
        round: u32,
        /// The claimer that did not report.
        #[schema(required)]
        claimer: Option<NodeId>,
    },
    /// The publisher awarded a replicated seed to more runners, or ended it inconclusive
    /// (rules 3: its results reached no quorum).
    SeedEscalated {
        /// The seed.
        seed_id: SeedId,
        /// The escalation step.
        step: u32,
        /// The runners awarded; empty when the seed ended inconclusive.
        winners: Vec<NodeId>,
    },
    /// A seed's status changed.
    StatusChanged {
        /// The seed.
        seed_id: SeedId,
        /// Previous status (`None` when the seed just became known).
        #[schema(required)]
        from: Option<SeedStatus>,
        /// New status.
        to: SeedStatus,
    },
    /// A node's verified hello added it to the peer table.
    PeerDiscovered {
        /// The peer.
        node_id: NodeId,
        /// Its name.
        name: String,
        /// Its announced addresses.
        addresses: Vec<String>,
    },
    /// A remote message was accepted and applied.
    MessageAccepted {
        /// The message.
        message_id: MessageId,
        /// Its kind.
        message_kind: MessageKind,
        /// Its sender.
        sender: NodeId,
    },
    /// A remote message was stored but waits for another message before it takes effect.
    MessageDeferred {
        /// The message.
        message_id: MessageId,
        /// Its kind.
        message_kind: MessageKind,
        /// Its sender.
        sender: NodeId,
        /// What it waits for.
        reason: Violation,
    },
    /// A remote message was rejected.
    MessageRejected {
        /// The message, when it could be decoded.
        #[schema(required)]
        message_id: Option<MessageId>,
        /// Its kind, when known.
        #[schema(required)]
        message_kind: Option<MessageKind>,
        /// Its sender, when known.
        #[schema(required)]
        sender: Option<NodeId>,
        /// The reason class.
        reason: RejectReason,
        /// The violated rule, for [`RejectReason::Rule`].
        #[schema(required)]
        violation: Option<Violation>,
        /// A human-readable explanation.
        detail: String,
        /// The transport address the frame came from: the relay, which need not be its author
        /// (`sender`). Absent for messages rejected inside the store.
        #[serde(default)]
        #[schema(required)]
        source: Option<String>,
        /// How many rejections of this reason from this source the event stands for: 1, or, for
        /// the summary at the end of an aggregation window (`network.reject_event_window_ms`),
        /// the rejections that got no event of their own (the latest one is described).
        #[serde(default = "one")]
        #[schema(required)]
        count: u64,
    },
    /// The transport reported a change (started, listening on an address, peers found, fell
    /// back...).
    TransportStatus {
        /// The transport.
        transport: String,
        /// What happened.
        detail: String,
    },
    /// A message could not be sent; it stays in the outbox and is retried.
    SendFailed {
        /// The message.
        message_id: MessageId,
        /// Why.
        detail: String,
    },
    /// An alert rule's condition held long enough: the alert fires (see "Alerting" in the
    /// README).
    AlertFiring {
        /// The rule.
        alert: AlertName,
        /// The rule's value (peers, messages, seconds, percent or bytes; see the rule).
        value: u64,
        /// The configured threshold.
        threshold: u64,
        /// What is wrong, for humans.
        detail: String,
    },
    /// A firing alert's condition stayed clear long enough: the alert is resolved.
    AlertResolved {
        /// The rule.
        alert: AlertName,
        /// The rule's value now.
        value: u64,
        /// The configured threshold.
        threshold: u64,
        /// When the alert fired (Unix ms).
        since: Millis,
        /// What was wrong, for humans.
        detail: String,
    },
    /// This subscriber fell behind and missed events (not logged; only for that subscriber).
    EventsDropped {
        /// How many events were missed.
        count: u64,
    },
}

impl EventKind {
    /// The event's type name, as in JSON.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::NodeStarted { .. } => "node_started",
            EventKind::NodeStopped { .. } => "node_stopped",
            EventKind::SeedPublished { .. } => "seed_published",
            EventKind::BidPlaced { .. } => "bid_placed",
            EventKind::BiddingClosed { .. } => "bidding_closed",
            EventKind::SeedClaimed { .. } => "seed_claimed",
            EventKind::TaskStarted { .. } => "task_started",
            EventKind::ResultRecorded { .. } => "result_recorded",
            EventKind::SeedSettled { .. } => "seed_settled",
            EventKind::SeedCancelled { .. } => "seed_cancelled",
            EventKind::SeedReassigned { .. } => "seed_reassigned",
            EventKind::SeedFailed { .. } => "seed_failed",
            EventKind::SeedEscalated { .. } => "seed_escalated",
            EventKind::StatusChanged { .. } => "status_changed",
            EventKind::PeerDiscovered { .. } => "peer_discovered",
            EventKind::MessageAccepted { .. } => "message_accepted",
            EventKind::MessageDeferred { .. } => "message_deferred",
            EventKind::MessageRejected { .. } => "message_rejected",
            EventKind::TransportStatus { .. } => "transport_status",
            EventKind::SendFailed { .. } => "send_failed",
            EventKind::AlertFiring { .. } => "alert_firing",
            EventKind::AlertResolved { .. } => "alert_resolved",
            EventKind::EventsDropped { .. } => "events_dropped",
        }
    }
}

/// In-process fan-out of events to any number of subscribers. Once closed, subscribers read
/// what is left and then see the end of the stream.
#[derive(Debug)]
pub struct EventBus {
    tx: std::sync::Mutex<Option<broadcast::Sender<Event>>>,
    capacity: usize,
}

impl EventBus {
    /// A bus that buffers up to `capacity` events per subscriber.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        EventBus {
            tx: std::sync::Mutex::new(Some(tx)),
            capacity: capacity.max(1),
        }
    }

    fn sender(&self) -> Option<broadcast::Sender<Event>> {
        crate::lock(&self.tx).clone()
    }

    /// Delivers an event to current subscribers; never blocks. Does nothing once closed.
    pub fn publish(&self, event: Event) {
        if let Some(tx) = self.sender() {
            // No subscribers is fine.
            let _ = tx.send(event);
        }
    }

    /// A new subscription that sees events published from now on (an ended one once closed).
    pub fn subscribe(&self) -> Subscription {
        let rx = match self.sender() {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(self.capacity).1,
        };
        Subscription { rx }
    }

    /// Ends the stream: subscribers get what was published, then `None`.
    pub fn close(&self) {
        crate::lock(&self.tx).take();
    }
}

/// A stream of events for one subscriber.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Event>,
}

impl Subscription {
    /// The next event; `None` once the node is gone. A subscriber that fell behind receives one
    /// [`EventKind::EventsDropped`] event saying how many it missed.
    pub async fn recv(&mut self) -> Option<Event> {
        match self.rx.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(dropped(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event if one is ready, without waiting. `Ok(None)` when none is ready,
    /// `Err(())` once the node is gone.
    #[allow(clippy::result_unit_err)]
    pub fn try_recv(&mut self) -> Result<Option<Event>, ()> {
        match self.rx.try_recv() {
            Ok(e) => Ok(Some(e)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Ok(Some(dropped(n))),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Closed) => Err(()),
        }
    }
}

fn dropped(count: u64) -> Event {
    Event {
        seq: 0,
        at: crate::clock::now_ms(),
        kind: EventKind::EventsDropped { count },
    }
}

/// An append-only NDJSON file with size-based rotation: when the next line would take the file
/// past `max_bytes`, `events.ndjson` becomes `events.ndjson.1` (older files shift up) and at
/// most `retain` rotated files are kept.
#[derive(Debug)]
pub struct NdjsonLog {
    path: PathBuf,
    max_bytes: u64,
    retain: u32,
    /// The file as this log object last left it: read back by [`NdjsonLog::last_seq`] while
    /// the file is unchanged.
    left: std::sync::Mutex<Option<Left>>,
    /// The file this log object last appended to, kept open: [`NdjsonLog::sync`] makes it
    /// durable even when it was moved away since (logrotate), and an append to another file
    /// syncs it first.
    written: std::sync::Mutex<Option<File>>,
}

/// The current file after an append: its identity, its length and the last event in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Left {
    dev: u64,
    ino: u64,
    len: u64,
    /// Last modification (ns since the epoch): an inode reused by a new file of the same
    /// length is not taken for the old one.
    mtime: i128,
    seq: u64,
}

/// Whether two metadata describe the same file (device and inode).
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

impl Left {
    fn of(meta: &fs::Metadata, seq: u64) -> Left {
        use std::os::unix::fs::MetadataExt;
        Left {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            seq,
        }
    }
}

impl NdjsonLog {
    /// A log at `path`.
    pub fn new(path: impl Into<PathBuf>, max_bytes: u64, retain: u32) -> Self {
        NdjsonLog {
            path: path.into(),
            max_bytes: max_bytes.max(1),
            retain,
            left: std::sync::Mutex::new(None),
            written: std::sync::Mutex::new(None),
        }
    }

    /// The current log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes durable what this object appended (to the file it last wrote, wherever that is
    /// now) and what is in the current file (other processes append to it too).
    pub fn sync(&self) -> io::Result<()> {
        let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let current = match OpenOptions::new().append(true).open(&self.path) {
            Ok(file) => Some(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(old) = written.as_ref() {
            let moved = match &current {
                Some(current) => !same_file(&old.metadata()?, &current.metadata()?),
                None => true,
            };
            if moved {
                old.sync_data()?;
            }
        }
        match current {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }

    /// Syncs the directory of the log (its renames and new files). A filesystem that cannot
    /// sync a directory (`EINVAL`) is left alone, as SQLite does.
    fn sync_dir(&self) -> io::Result<()> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        match File::open(dir)?.sync_all() {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            other => other,
        }
    }

    /// Appends events, one JSON object per line, rotating as needed (a file is synced before it
    /// is rotated away, and the new one after its first lines). The appended lines survive the
    /// process (a crash included); they are durable on the disk after [`NdjsonLog::sync`],
    /// which the writer calls before it records how far the log goes.
    pub fn append(&self, events: &[Event]) -> io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut file = self.open()?;
        let mut size = file.metadata()?.len();
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        // The file last appended to is another one now (moved away, or rotated by another
        // process): what this object wrote there is made durable before it is let go (kept
        // until then, whatever fails, so that the next sync tries again).
        if let Some(old) = written.as_ref()
            && !same_file(&old.metadata()?, &file.metadata()?)
        {
            old.sync_data()?;
        }
        let mut rotated = false;
        for event in events {
            let mut line = serde_json::to_vec(event).map_err(io::Error::other)?;
            line.push(b'\n');
            if size > 0 && size + line.len() as u64 > self.max_bytes {
                file.sync_data()?;
                drop(file);
                self.rotate()?;
                file = self.open()?;
                size = 0;
                rotated = true;
            }
            file.write_all(&line)?;
            size += line.len() as u64;
        }
        if rotated {
            // The new file's first lines, and its entry in the directory, are durable before
            // the append returns: a power loss that kept the renamed file complete and the new
            // one empty would make the next writer append events again (narrowed to the
            // append itself, not closed).
            file.sync_data()?;
            self.sync_dir()?;
        }
        let last = events.last().map_or(0, |e| e.seq);
        *self.left.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Left::of(&file.metadata()?, last));
        *written = Some(file);
        Ok(())
    }

    /// The sequence number of the last complete event in the log: the current file's last
    /// line, after cutting off a torn one (a crash in the middle of a write), or, when the
    /// current file is empty (after that cut) or missing, the last line of the newest rotated
    /// file (`.1`): a power loss in the middle of a rotation may keep the rename and lose the
    /// new file's lines or its entry. `None` when neither holds an event.
    /// While the current file is the one this log object last appended to, with the length it
    /// left (nobody else wrote to it since), that is known without reading the file.
    pub fn last_seq(&self) -> io::Result<Option<u64>> {
        let known = *self.left.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(left) = known {
            match fs::metadata(&self.path) {
                Ok(meta) if Left::of(&meta, left.seq) == left => return Ok(Some(left.seq)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(seq) = last_complete_seq(&self.path, true)? {
            return Ok(Some(seq));
        }
        // Only an empty or missing file: one whose tail holds no complete event (a line
        // longer than the tail read) says nothing of where the log ends.
        match fs::metadata(&self.path) {
            Ok(meta) if meta.len() > 0 => Ok(None),
            Ok(_) => last_complete_seq(&self.rotated(1), false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                last_complete_seq(&self.rotated(1), false)
            }
            Err(e) => Err(e),
        }
    }

    /// The sequence number of the last event this log object appended (0: none), wherever
    /// that file is now.
    pub fn last_appended(&self) -> u64 {
        self.left
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or(0, |l| l.seq)
    }

    fn open(&self) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&self) -> io::Result<()> {
        if self.retain == 0 {
            return fs::remove_file(&self.path);
        }
        match fs::remove_file(self.rotated(self.retain)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        for n in (1..self.retain).rev() {
            match fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        fs::rename(&self.path, self.rotated(1))
    }
}

/// The sequence number of the last complete event in the file at `path`, read from its last
/// 64 KiB; `None` for a missing file or one without a complete event there. `cut`: a torn last
/// line (a crash in the middle of a write) is cut off the file, so that the next append starts
/// a line of its own.
fn last_complete_seq(path: &Path, cut: bool) -> io::Result<Option<u64>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match OpenOptions::new().read(true).write(cut).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let complete = match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None if start == 0 => 0,
        None => return Ok(None),
    };
    if cut && complete < tail.len() {
        file.set_len(start + complete as u64)?;
        file.sync_data()?;
    }
    let lines = &tail[..complete];
    let last = lines[..lines.len().saturating_sub(1)]
        .rsplit(|b| *b == b'\n')
        .next()
        .filter(|l| !l.is_empty());
    Ok(last
        .and_then(|l| serde_json::from_slice::<Event>(l).ok())
        .map(|e| e.seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> Event {
        Event {
            seq,
            at: 1,
            kind: EventKind::SeedCancelled {
                seed_id: SeedId::from_bytes([seq as u8; 16]),
            },
        }
    }

    #[tokio::test]
    async fn slow_subscriber_gets_a_drop_notice_and_never_blocks_the_publisher() {
        let bus = EventBus::new(4);
        let mut slow = bus.subscribe();
        for i in 1..=10 {
            bus.publish(ev(i));
        }
        let first = slow.recv().await.unwrap();
        assert_eq!(first.kind, EventKind::EventsDropped { count: 6 });
        let next = slow.recv().await.unwrap();
        assert_eq!(next.seq, 7);
    }

    #[test]
    fn last_seq_reads_the_last_complete_line_and_cuts_a_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = NdjsonLog::new(dir.path().join("events.ndjson"), 1 << 20, 1);
        assert_eq!(log.last_seq().unwrap(), None);
        log.append(&[ev(1), ev(2)]).unwrap();
        assert_eq!(log.last_seq().unwrap(), Some(2));
        let mut f = OpenOptions::new().append(true).open(log.path()).unwrap();
        f.write_all(b"{\"seq\":3,\"at\"").unwrap();
        drop(f);
        assert_eq!(log.last_seq().unwrap(), Some(2));
        let text = fs::read_to_string(log.path()).unwrap();
        assert!(
            text.ends_with('\n') && text.lines().count() == 2,
            "{text:?}"
        );
    }

    #[test]
    fn last_seq_sees_what_another_writer_appended_or_rotated() {
        // Two processes on one data directory: each has its own log object on the same file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let ours = NdjsonLog::new(&path, 1 << 20, 2);
        let theirs = NdjsonLog::new(&path, 1 << 20, 2);
        ours.append(&[ev(1), ev(2)]).unwrap();
        assert_eq!(ours.last_seq().unwrap(), Some(2));
        theirs.append(&[ev(3)]).unwrap();
        assert_eq!(ours.last_seq().unwrap(), Some(3), "appended by the other");
        // The other rotates: the current file is a new one.
        let small = NdjsonLog::new(&path, 1, 2);
        small.append(&[ev(4)]).unwrap();
        assert_eq!(ours.last_seq().unwrap(), Some(4), "rotated by the other");
        ours.append(&[ev(5)]).unwrap();
        assert_eq!(theirs.last_seq().unwrap(), Some(5));
        // Moved away (logrotate): nothing is known of the file any more, but what this log
        // object appended is; the log goes at least as far as the rotated file.
        fs::remove_file(&path).unwrap();
        assert_eq!(
            ours.last_seq().unwrap(),
            Some(3),
            "the rotated file's last line"
        );
        fs::remove_file(dir.path().join("events.ndjson.1")).unwrap();
        assert_eq!(ours.last_seq().unwrap(), None);
        assert_eq!(ours.last_appended(), 5);
        assert_eq!(theirs.last_appended(), 3);
        ours.append(&[ev(6)]).unwrap();
        assert_eq!(ours.last_seq().unwrap(), Some(6));
    }

    #[test]
    fn a_power_loss_during_a_rotation_does_not_make_the_next_writer_append_again() {
        // A rotation renames the full file to `.1` and writes the new lines to a new file; a
        // power loss before the new file and the directory are synced may keep the rename and
        // lose the new file's lines (empty file) or its directory entry (no file). The next
        // process (a new log object, nothing in memory) must continue after `.1`'s last line,
        // not from the database's cursor (up to 5 s older), which would append those events
        // to the log a second time.
        for lost_entry in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("events.ndjson");
            let before = NdjsonLog::new(&path, 300, 2);
            for i in 1..=12 {
                before.append(&[ev(i)]).unwrap();
            }
            let rotated = fs::read_to_string(dir.path().join("events.ndjson.1")).unwrap();
            let last_rotated: Event =
                serde_json::from_str(rotated.lines().last().unwrap()).unwrap();
            // What the disk keeps: `.1` whole, the current file empty or gone.
            if lost_entry {
                fs::remove_file(&path).unwrap();
            } else {
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(0)
                    .unwrap();
            }
            let after = NdjsonLog::new(&path, 300, 2);
            assert_eq!(
                after.last_seq().unwrap(),
                Some(last_rotated.seq),
                "the log goes as far as its rotated file (current file {})",
                if lost_entry { "gone" } else { "empty" }
            );
            // The same holds for the object that wrote it (it knows the file it left).
            assert_eq!(before.last_seq().unwrap(), Some(last_rotated.seq));
        }
    }

    #[tokio::test]
    async fn every_subscriber_sees_every_event() {
        let bus = EventBus::new(16);
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        bus.publish(ev(1));
        assert_eq!(a.recv().await.unwrap().seq, 1);
        assert_eq!(b.recv().await.unwrap().seq, 1);
        assert_eq!(a.try_recv(), Ok(None));
        bus.publish(ev(2));
        bus.close();
        assert_eq!(
            a.recv().await.unwrap().seq,
            2,
            "events before close are delivered"
        );
        assert_eq!(a.recv().await, None);
        assert_eq!(bus.subscribe().recv().await, None);
    }

    #[test]
    fn log_rotates_by_size_and_keeps_only_retain_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = NdjsonLog::new(dir.path().join("events.ndjson"), 300, 2);
        for i in 1..=40 {
            log.append(&[ev(i)]).unwrap();
        }
        let cur = fs::read_to_string(log.path()).unwrap();
        assert!(cur.len() <= 300, "current file is {} bytes", cur.len());
        assert!(dir.path().join("events.ndjson.1").exists());
        assert!(dir.path().join("events.ndjson.2").exists());
        assert!(!dir.path().join("events.ndjson.3").exists());
        // Lines are whole JSON objects and the newest event is in the current file.
        let last: Event = serde_json::from_str(cur.lines().last().unwrap()).unwrap();
        assert_eq!(last.seq, 40);
        let older = fs::read_to_string(dir.path().join("events.ndjson.1")).unwrap();
        let first_older: Event = serde_json::from_str(older.lines().next().unwrap()).unwrap();
        assert!(first_older.seq < last.seq);
    }
}
