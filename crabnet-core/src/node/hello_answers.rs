//! Answers to new peers' hellos (issue 12). A node answers the hello of a peer it did not know
//! with its own hello, then its revocation and key-rotation lists, so that the newcomer learns
//! its keys at once. Anyone can make a valid hello for a fresh identity, so an answer must not
//! cost more than the hello that asked for it, nor reach anyone but the one who asked:
//!
//! * only hellos received live are answered (one inside a sync batch came from a relay), and
//!   only toward the transport source the hello came from ([`Transport::answer_hello`]): never
//!   to the addresses it announces, never to every peer;
//! * within two token buckets taken when the hello is accepted: one per transport source
//!   (`network.hello_answer_source_rate_per_sec`, `hello_answer_source_burst`; a UDP source
//!   outside loopback and `peer_address_exempt` is its IP address, a global IPv6 one its /64,
//!   whatever port it sends from: [`ingress::rate_key`]) and one for
//!   all sources (`network.hello_answer_rate_per_sec`, `hello_answer_burst`); a hello over
//!   either limit is not answered (`hellos.answers_limited`) and does not start a sync
//!   exchange;
//! * the sync exchange that follows is started by the one of the two nodes with the lower id
//!   (compared as the hex strings are): a node answering a peer with a lower id leaves it to
//!   the peer, which starts it on our answer (a new peer's hello to it). Both starting one
//!   would cross: two queries and two replies, one exchange then yielding to the other;
//! * to a source the transport cannot vouch for (a UDP address that is not a configured peer:
//!   it may be forged), the frames of the answer go out in order while they fit in
//!   `network.sync_answer_ratio` times the bytes of the hellos received from it per
//!   `network.hello_interval_secs`; the first that does not fit ends the answer
//!   (`hellos.answers_cut`). Bytes sent in answers are counted as `hellos.answer_bytes`.

use std::sync::Mutex;
use std::time::Duration;

use super::{Node, lock};
use crate::config::NetworkConfig;
use crate::ingress;
use crate::model::NodeId;
use crate::network::Transport;
use crate::ratelimit::{Credits, Limiter};

/// Most hellos waiting for their answer (the network task takes them all at each turn).
const MAX_WAITING: usize = 256;
/// Most transport sources with a bucket or a credit of their own.
const MAX_SOURCES: usize = 4096;

/// A new peer's hello to answer.
struct Wanted {
    source: ingress::Source,
    announced: Vec<String>,
    received: usize,
}

/// The hellos waiting for an answer and the limits on answering them (see the module docs).
pub(super) struct HelloAnswers {
    waiting: Mutex<Vec<Wanted>>,
    global: Limiter,
    sources: Limiter,
    credits: Credits,
}

impl std::fmt::Debug for HelloAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HelloAnswers").finish_non_exhaustive()
    }
}

impl HelloAnswers {
    /// Limits from `network.hello_answer_*`, credit windows of `network.hello_interval_secs`.
    pub(super) fn new(net: &NetworkConfig) -> Self {
        HelloAnswers {
            waiting: Mutex::new(Vec::new()),
            global: Limiter::new(net.hello_answer_rate_per_sec, net.hello_answer_burst, 1),
            sources: Limiter::new(
                net.hello_answer_source_rate_per_sec,
                net.hello_answer_source_burst,
                MAX_SOURCES,
            ),
            credits: Credits::new(
                Duration::from_secs(u64::from(net.hello_interval_secs)),
                MAX_SOURCES,
            ),
        }
    }
}

impl HelloAnswers {
    /// Whether answers wait to be sent.
    pub(super) fn any_waiting(&self) -> bool {
        !lock(&self.waiting).is_empty()
    }

    /// Forgets the waiting answers; returns whether there were any (a node driven without a
    /// network task answers the hello itself).
    pub(super) fn take_any(&self) -> bool {
        !std::mem::take(&mut *lock(&self.waiting)).is_empty()
    }
}

impl Node {
    /// Asks the network task to answer a new peer's hello of `received` bytes that came live
    /// from `source` announcing `announced`, signed by `peer`, and to start a sync exchange
    /// when this node's id is the lower one (see the module docs), when the rate limits allow;
    /// returns whether they did.
    pub(super) fn want_hello_answer(
        &self,
        source: &ingress::Source,
        peer: &NodeId,
        announced: &[String],
        received: usize,
    ) -> bool {
        let answers = &self.inner.hello_answers;
        let now = self.now_ms();
        let exempt = &self.inner.config.network.peer_address_exempt;
        let allowed = answers
            .sources
            .allow(&ingress::rate_key(&source.from, exempt), now)
            && answers.global.allow("", now);
        let queued = allowed && {
            let mut waiting = lock(&answers.waiting);
            let room = waiting.len() < MAX_WAITING;
            if room {
                waiting.push(Wanted {
                    source: source.clone(),
                    announced: announced.to_vec(),
                    received,
                });
            }
            room
        };
        if !queued {
            self.inner.rejections.count("hellos.answers_limited");
            return false;
        }
        self.inner.hello_wanted.notify_one();
        if self.inner.id < *peer {
            self.inner.sync_wanted.notify_one();
        } else {
            self.inner.rejections.count("sync.exchanges_left_to_peer");
        }
        true
    }

    /// Sends the waiting answers (in the network task): `hello`, then what follows a hello
    /// (`statements`: revocations, rotations, read beforehand off the network task), each to
    /// the source of the hello it answers, within the source's credit.
    pub(super) fn answer_hellos(
        &self,
        transport: &mut dyn Transport,
        hello: Option<Vec<u8>>,
        statements: Vec<Vec<u8>>,
    ) {
        let waiting = std::mem::take(&mut *lock(&self.inner.hello_answers.waiting));
        let Some(hello) = hello else {
            return;
        };
        if waiting.is_empty() {
            return;
        }
        let mut frames = vec![hello];
        frames.extend(statements);
        let ratio = u64::from(self.inner.config.network.sync_answer_ratio);
        let credits = &self.inner.hello_answers.credits;
        for w in waiting {
            let from = w.source.from.as_str();
            let credit = if w.source.verified {
                u64::MAX
            } else {
                let earned = (w.received as u64).saturating_mul(ratio);
                credits.earn(from, earned, u64::MAX, self.now_ms())
            };
            let mut sent = 0u64;
            for frame in &frames {
                let len = frame.len() as u64;
                if sent.saturating_add(len) > credit {
                    self.inner.rejections.count("hellos.answers_cut");
                    break;
                }
                if let Err(e) = transport.answer_hello(from, &w.announced, frame) {
                    tracing::debug!("cannot answer a hello from {from}: {e}");
                    break;
                }
                sent += len;
            }
            if !w.source.verified {
                credits.spend(from, sent as usize);
            }
            self.inner.rejections.add("hellos.answer_bytes", sent);
        }
    }
}
