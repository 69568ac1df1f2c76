//! Receiving in batches: the frames that are already waiting when the network task turns to
//! the transport are applied together (at most [`BATCH_FRAMES`] frames or [`BATCH_BYTES`]
//! bytes; a lone frame is not kept waiting for company).
//!
//! 1. The gate ([`crate::ingress::Gate`]) runs in the network task, as for a single frame.
//! 2. On one blocking thread, in arrival order: a run of consecutive message envelopes (the
//!    bulk of the traffic) is a *group*; every other frame (a hello, a sync frame, revocations,
//!    key rotations, which change what later frames are checked against) is received alone,
//!    between the groups, exactly as before.
//! 3. For a group: the signatures of the envelopes whose author is known are verified in
//!    parallel, one thread per core ([`Node::pre_verify`]); then the group is applied in one
//!    store transaction ([`crate::store::SharedStore::begin_batch`]): each envelope crosses
//!    the whole trust boundary in turn (a verified signature is taken from the parallel pass
//!    when the bytes and the keys are the same), each store operation in a savepoint of its
//!    own, so an envelope that fails leaves the others alone; copies within the group are
//!    recognised as duplicates, as they are across frames. One commit (one fsync under
//!    `store.sync = full`) ends the group. A group of one envelope opens no batch: each
//!    store operation of its receive is its own transaction, with no savepoint.
//! 4. Only after the commit: verdicts go back to the transport (gossip forwards what was
//!    accepted), events are delivered, and the outbox is drained once if anything was written
//!    to it. A commit that fails rolls the whole group back: every verdict is `ignore`, and
//!    the recent-frames memory forgets what it learned, so copies are checked again.
//!
//! While a group's transaction is open, other threads (API calls, housekeeping) wait for its
//! commit before they touch the store, and go first when it is over. Counters:
//! `ingress.batches`, `ingress.batch_frames` (their sizes summed), `ingress.batches_full`
//! (the queue held a full batch or more: the node is behind), `ingress.groups`,
//! `ingress.group_frames` and `ingress.verified_parallel`.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use super::reconcile::AnswerRoom;
use super::{Node, lock};
use crate::crypto::SigningPublic;
use crate::envelope::{self, Kind};
use crate::ingress;
use crate::model::NodeId;
use crate::network::{Acceptance, Ack, Handled};

/// Most frames taken into one batch.
pub(super) const BATCH_FRAMES: usize = 256;
/// Most bytes of frames taken into one batch (the frame that crosses it is still taken).
pub(super) const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A frame that passed the gate.
pub(super) struct Arrival {
    pub bytes: Vec<u8>,
    pub source: ingress::Source,
    pub ack: Option<Ack>,
}

/// What became of an [`Arrival`].
pub(super) struct Received {
    pub handled: Handled,
    pub from: String,
    /// The verdict channel, unless the frame is held (the hold answers it later).
    pub ack: Option<Ack>,
    /// Whether the frame came with a verdict channel.
    pub acked: bool,
}

impl Node {
    /// Receives `frames` (they passed the gate) in arrival order, the message envelopes among
    /// them in groups (see the module docs).
    pub(super) fn receive_batch(&self, frames: Vec<Arrival>, max: usize) -> Vec<Received> {
        let kinds: Vec<Option<Kind>> = frames
            .iter()
            .map(|f| envelope::parse(&f.bytes, max).ok().map(|p| p.header.kind))
            .collect();
        // The sources that ask for answers share the room of the batch's answers.
        let askers: HashSet<&str> = frames
            .iter()
            .zip(&kinds)
            .filter(|(_, kind)| kind.is_some_and(AnswerRoom::asks))
            .map(|(f, _)| AnswerRoom::key(&f.source))
            .collect();
        self.open_answer_room(askers.len());
        let mut out = Vec::with_capacity(frames.len());
        let mut group = Vec::new();
        for (frame, kind) in frames.into_iter().zip(kinds) {
            let groupable = matches!(kind, Some(Kind::Domain(_)));
            if groupable {
                group.push(frame);
                continue;
            }
            if !group.is_empty() {
                out.extend(self.apply_group(std::mem::take(&mut group), max));
            }
            out.push(self.receive_one(frame, max));
        }
        if !group.is_empty() {
            out.extend(self.apply_group(group, max));
        }
        out
    }

    /// One frame across the trust boundary; an error is logged and the verdict is `ignore`.
    fn receive_one(&self, frame: Arrival, max: usize) -> Received {
        let Arrival { bytes, source, ack } = frame;
        let acked = ack.is_some();
        let mut ack = ack;
        let handled = self
            .receive_frame(&bytes, &source, max, &mut ack)
            .unwrap_or_else(|e| {
                tracing::warn!("cannot apply received frame: {e}");
                ignored()
            });
        Received {
            handled,
            from: source.from,
            ack,
            acked,
        }
    }

    /// Message envelopes applied in one transaction (see the module docs).
    fn apply_group(&self, frames: Vec<Arrival>, max: usize) -> Vec<Received> {
        self.inner.rejections.count("ingress.groups");
        self.inner
            .rejections
            .add("ingress.group_frames", frames.len() as u64);
        self.pre_verify(&frames, max);
        // A lone envelope opens no batch: its store operations commit on their own, as those
        // of any other frame received alone (usually one: the apply). A batch would wrap each
        // in a savepoint, whose journal of page images outgrows what SQLite keeps in memory,
        // so every such envelope wrote a temporary file.
        // Without a batch each envelope commits on its own, as a lone frame does.
        let batch = self.inner.store.batch_for(frames.len(), "received frames");
        let mut results: Vec<Received> = frames
            .into_iter()
            .map(|f| self.receive_one(f, max))
            .collect();
        let committed = batch.map_or(Ok(()), |b| b.end(true));
        self.inner.verified.clear();
        let deferred = std::mem::take(&mut *lock(&self.inner.deferred_acks));
        match committed {
            Ok(()) => {
                for (ack, handled) in deferred {
                    let _ = ack.send(handled);
                }
            }
            Err(e) => {
                tracing::warn!(
                    "cannot commit {} received envelopes; sync brings them again: {e}",
                    results.len()
                );
                // What the group taught the memory of stored frames is not stored.
                self.inner.recent.clear();
                for r in &mut results {
                    r.handled = ignored();
                }
                for (ack, _) in deferred {
                    let _ = ack.send(ignored());
                }
            }
        }
        // Deliver the group's events, now that they are committed.
        let _ = self.with_store(|_| Ok(()));
        results
    }

    /// Verifies, on one thread per core, the signatures of the group's envelopes whose author
    /// this node knows, and remembers those that verified ([`ingress::PreVerified`]): the
    /// trust boundary then skips their verification. Copies of stored frames, this node's own
    /// envelopes and authors that are not admitted are left to the trust boundary.
    fn pre_verify(&self, frames: &[Arrival], max: usize) {
        if frames.len() < 2 {
            return;
        }
        let threads = cores();
        if threads < 2 {
            return;
        }
        let mut signers: HashMap<NodeId, Option<SigningPublic>> = HashMap::new();
        let mut jobs: Vec<(usize, SigningPublic)> = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let Ok(parsed) = envelope::parse(&frame.bytes, max) else {
                continue;
            };
            let h = &parsed.header;
            if h.sender == self.inner.id
                || self.inner.trust.check_frame(h).is_err()
                || self.inner.recent.contains(&frame.bytes)
            {
                continue;
            }
            let signer = signers.entry(h.sender.clone()).or_insert_with(|| {
                lock(&self.inner.store)
                    .peer(&h.sender)
                    .ok()
                    .flatten()
                    .map(|p| p.identity.signing)
            });
            if let Some(signer) = signer {
                jobs.push((i, signer.clone()));
            }
        }
        if jobs.len() < 2 {
            return;
        }
        let verify = |chunk: &[(usize, SigningPublic)]| -> Vec<usize> {
            chunk
                .iter()
                .enumerate()
                .filter(|(_, (i, signer))| {
                    envelope::parse(&frames[*i].bytes, max).is_ok_and(|p| p.verify(signer).is_ok())
                })
                .map(|(j, _)| j)
                .collect()
        };
        let verify = &verify;
        let size = jobs.len().div_ceil(threads.min(jobs.len()));
        let chunks: Vec<&[(usize, SigningPublic)]> = jobs.chunks(size).collect();
        let verified: Vec<Vec<usize>> = std::thread::scope(|scope| {
            let others: Vec<_> = chunks[1..]
                .iter()
                .map(|chunk| scope.spawn(move || verify(chunk)))
                .collect();
            let mut all = vec![verify(chunks[0])];
            all.extend(others.into_iter().map(|h| h.join().unwrap_or_default()));
            all
        });
        let mut count = 0;
        for (chunk, ok) in chunks.iter().zip(verified) {
            for j in ok {
                let (i, signer) = &chunk[j];
                self.inner
                    .verified
                    .insert(&frames[*i].bytes, signer.clone());
                count += 1;
            }
        }
        self.inner
            .rejections
            .add("ingress.verified_parallel", count);
    }

    /// Gives a held frame's verdict to its transport: at once, or after the commit when a
    /// batch is open (a frame accepted inside a group must not be forwarded before it is
    /// durable).
    pub(super) fn answer(&self, ack: Ack, handled: Handled) {
        if lock(&self.inner.store).in_batch() {
            lock(&self.inner.deferred_acks).push((ack, handled));
        } else {
            let _ = ack.send(handled);
        }
    }
}

/// The cores this process may use, read once per process: on Linux `available_parallelism`
/// reads the cgroup's files (four opens and a scheduler call) every time, and a group is
/// verified per batch. A later change of the process's affinity or CPU quota is not seen.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn ignored() -> Handled {
    Handled {
        acceptance: Acceptance::Ignore,
        replies: Vec::new(),
    }
}
