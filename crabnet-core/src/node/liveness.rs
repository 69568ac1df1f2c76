//! Periodic hellos that change nothing: recognised in memory, not written (issue 13).
//!
//! A peer broadcasts its hello every hello interval ([`Node::hello_interval`]), freshly signed
//! each time (a new message id and timestamp), with the same content (keys, addresses, name,
//! certificate, rotations) as long as nothing about it changed. Every receiver used to store
//! each one: an update of the peer's row and a seen-id row, two fsync'd transactions per peer
//! per interval, so an idle node's work grew with the network.
//!
//! Now a hello whose payload is byte for byte the payload of the last hello this node verified
//! and stored for that sender (compared by SHA-256 digest, kept here) still has both
//! signatures checked (a forged or altered copy must not buy a cheaper path to any state) and
//! its admission checked again (a certificate may have expired or been revoked), but then
//! only moves the peer's `last_seen` in memory, to the hello's own signed timestamp (never
//! later than its receipt, so a replayed copy proves nothing newer than the original did).
//! Housekeeping writes the pending `last_seen` values of all peers in one transaction once per
//! hello interval, and before any admission decision, which reads them (a new peer may
//! evict an idle one). Readers in this process see the newer values at once.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::{Node, lock};
use crate::config::NetworkConfig;
use crate::envelope;
use crate::error::Result;
use crate::identity::PublicIdentity;
use crate::model::{Millis, NodeId};
use crate::monitor::RejectReason;
use crate::network::Acceptance;
use crate::store::{PeerSighting, Store};

impl Node {
    /// The cheap path for a hello whose signatures verified (see the module docs): when its
    /// payload is that of the last hello stored for its sender, the sender is still in the peer
    /// table with the hello's key epoch and no newer epoch is known, and it is still admitted,
    /// only its `last_seen` moves (in memory): `Some(Accept)`. `Some(verdict)` for a refused
    /// admission, `None` when the full path must run.
    pub(super) fn refresh_unchanged_hello(
        &self,
        parsed: &envelope::Parsed<'_>,
        identity: &PublicIdentity,
        hello: &envelope::Hello,
        from: &str,
        now: Millis,
    ) -> Result<Option<Acceptance>> {
        let h = &parsed.header;
        if !self.inner.liveness.unchanged(&h.sender, parsed.payload())
            || self.inner.trust.key_epoch(&h.sender) != identity.epoch
        {
            return Ok(None);
        }
        let mut store = lock(&self.inner.store);
        let known = store.peer(&h.sender)?.is_some_and(|p| {
            p.identity.epoch == identity.epoch && p.identity.signing == identity.signing
        });
        if !known {
            drop(store);
            // Evicted or forgotten since: admitted again through the full path.
            self.inner.liveness.forget(&h.sender);
            return Ok(None);
        }
        // A certificate may have expired or been revoked since (checked in memory for a
        // certificate already held; no write).
        let admitted = self.inner.trust.admit_hello(
            identity,
            hello.certificate.as_deref(),
            h.timestamp,
            &mut store,
            now,
        )?;
        drop(store);
        if let Err(detail) = admitted {
            return self
                .reject(from, Some(h), RejectReason::NotAdmitted, detail)
                .map(Some);
        }
        // The hello's own signed time, never later than now: a replayed copy proves nothing
        // newer than the original did.
        self.inner.liveness.seen(&h.sender, h.timestamp.min(now));
        self.inner.recent.insert(parsed.frame());
        self.inner.rejections.count("hellos.refreshed");
        Ok(Some(Acceptance::Accept))
    }

    /// Writes the `last_seen` values refreshed in memory (housekeeping, once per
    /// hello interval, and when the node stops).
    pub(super) fn write_liveness(&self) -> Result<()> {
        let seen = self.inner.liveness.take_pending();
        if seen.is_empty() {
            return Ok(());
        }
        let written = lock(&self.inner.store).touch_peers(&seen);
        if written.is_err() {
            self.inner.liveness.restore(seen);
        }
        written
    }

    /// The hello interval, in ms, for the peers that count in `store` now, with the `last_seen`
    /// values refreshed in memory (see [`hello_interval_for`]); `current_ms` is the interval
    /// the node runs with.
    pub(super) fn size_hello_interval_from(
        &self,
        store: &Store,
        now: Millis,
        current_ms: u64,
    ) -> Result<u64> {
        let sightings = store.peer_sightings()?;
        let pending = self.inner.liveness.pending_all();
        Ok(hello_interval_for(
            &self.inner.config.network,
            &sightings,
            &pending,
            now,
            current_ms,
        ))
    }

    /// `peer`'s `last_seen`, with a newer value refreshed in memory and not yet written.
    pub(super) fn last_seen(&self, peer: &crate::store::Peer) -> Millis {
        latest_sighting(
            peer.last_seen,
            self.inner.liveness.pending(&peer.identity.node_id),
        )
    }
}

/// When a peer was last heard from: its stored `last_seen`, or the newer value not yet
/// written (`pending`).
pub(super) fn latest_sighting(stored: Millis, pending: Option<Millis>) -> Millis {
    pending.map_or(stored, |at| at.max(stored))
}

/// The hello interval, in ms, of a node that runs with an interval of `current_ms` and knows
/// the peers `sightings` (with the newer `last_seen` values `pending`, by node id) at `now`:
/// [`NetworkConfig::hello_interval_ms`] of the peers that count ([`counted_peers`]), those
/// heard from within the active window (three intervals of `current_ms`) and heard again at
/// least one `network.hello_interval_secs` after their first hello.
pub(super) fn hello_interval_for(
    net: &NetworkConfig,
    sightings: &[PeerSighting],
    pending: &HashMap<String, Millis>,
    now: Millis,
    current_ms: u64,
) -> u64 {
    let since = now.saturating_sub(current_ms.saturating_mul(3));
    let base = net.hello_interval_ms(0);
    net.hello_interval_ms(counted_peers(sightings, pending, since, base))
}

/// How many of the peers `sightings` count toward the hello interval: those whose latest hello
/// (the newer of `last_seen` and the value `pending` for them) is at or after `since`, and at
/// least `again_after` ms after their first hello (an identity heard once, however many of
/// them one source makes, does not count); the peers admitted from one IP address (see
/// [`PeerSighting::admitted_from`]) count once together.
pub(super) fn counted_peers(
    sightings: &[PeerSighting],
    pending: &HashMap<String, Millis>,
    since: Millis,
    again_after: u64,
) -> usize {
    let mut addresses = HashSet::new();
    let mut counted = 0;
    for s in sightings {
        let last = latest_sighting(s.last_seen, pending.get(&s.node_id).copied());
        if last < since || last < s.first_seen.saturating_add(again_after) {
            continue;
        }
        match &s.admitted_from {
            Some(address) if !addresses.insert(address.as_str()) => {}
            _ => counted += 1,
        }
    }
    counted
}

/// What this node knows of a peer's latest stored hello.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// SHA-256 of the payload of the last hello verified and stored for the peer.
    digest: [u8; 32],
    /// A `last_seen` newer than the stored one, not yet written.
    pending: Option<Millis>,
}

/// The digests of the hellos stored per peer, and the `last_seen` values not yet written.
#[derive(Debug)]
pub(super) struct Liveness {
    state: Mutex<HashMap<NodeId, Entry>>,
    /// Most entries kept (a bound on memory when peers come and go); beyond it, entries with
    /// nothing pending are forgotten (their next hello takes the full path again).
    cap: usize,
    /// Whether some entry has a `last_seen` pending (kept with `state`, under its lock).
    any: std::sync::atomic::AtomicBool,
    /// Notified when the first `last_seen` comes to be pending ([`Liveness::sooner`]).
    sooner: tokio::sync::Notify,
}

fn digest(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

impl Liveness {
    /// Keeps at most `cap` entries with nothing pending (at least 16).
    pub(super) fn new(cap: usize) -> Self {
        Liveness {
            state: Mutex::new(HashMap::new()),
            cap: cap.max(16),
            any: std::sync::atomic::AtomicBool::new(false),
            sooner: tokio::sync::Notify::new(),
        }
    }

    /// Completes when a `last_seen` came to be pending while none was: the writer, asleep
    /// until its next duty, then knows when this one is due.
    pub(super) fn sooner(&self) -> tokio::sync::futures::Notified<'_> {
        self.sooner.notified()
    }

    /// A hello of `node` with `payload` was verified and stored (its `last_seen` with it).
    pub(super) fn stored(&self, node: &NodeId, payload: &[u8]) {
        let mut st = lock(&self.state);
        if st.len() >= self.cap && !st.contains_key(node) {
            st.retain(|_, e| e.pending.is_some());
        }
        let pending = st.get(node).and_then(|e| e.pending);
        st.insert(
            node.clone(),
            Entry {
                digest: digest(payload),
                pending,
            },
        );
    }

    /// Whether `payload` is that of the last hello verified and stored for `node`.
    pub(super) fn unchanged(&self, node: &NodeId, payload: &[u8]) -> bool {
        let st = lock(&self.state);
        st.get(node).is_some_and(|e| e.digest == digest(payload))
    }

    /// `node` was seen at `at` (kept when it is newer than what is pending).
    pub(super) fn seen(&self, node: &NodeId, at: Millis) {
        let mut st = lock(&self.state);
        if let Some(e) = st.get_mut(node) {
            e.pending = Some(e.pending.map_or(at, |p| p.max(at)));
            let first = !self.any.swap(true, std::sync::atomic::Ordering::Relaxed);
            drop(st);
            if first {
                self.sooner.notify_one();
            }
        }
    }

    /// The `last_seen` of `node` not yet written, if any.
    pub(super) fn pending(&self, node: &NodeId) -> Option<Millis> {
        lock(&self.state).get(node).and_then(|e| e.pending)
    }

    /// The `last_seen` values not yet written, by node id (left pending).
    pub(super) fn pending_all(&self) -> HashMap<String, Millis> {
        lock(&self.state)
            .iter()
            .filter_map(|(node, e)| e.pending.map(|at| (node.as_str().to_owned(), at)))
            .collect()
    }

    /// Whether any `last_seen` waits to be written.
    pub(super) fn any_pending(&self) -> bool {
        self.any.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes the `last_seen` values waiting to be written.
    pub(super) fn take_pending(&self) -> Vec<(NodeId, Millis)> {
        let mut st = lock(&self.state);
        self.any.store(false, std::sync::atomic::Ordering::Relaxed);
        st.iter_mut()
            .filter_map(|(node, e)| e.pending.take().map(|at| (node.clone(), at)))
            .collect()
    }

    /// Gives back values that could not be written (the store failed), to try again.
    pub(super) fn restore(&self, seen: Vec<(NodeId, Millis)>) {
        for (node, at) in seen {
            self.seen(&node, at);
        }
    }

    /// Forgets `node` (its hello changed, or it left the table): its next hello is checked in
    /// full.
    pub(super) fn forget(&self, node: &NodeId) {
        let mut st = lock(&self.state);
        if st.remove(node).is_some_and(|e| e.pending.is_some()) {
            let any = st.values().any(|e| e.pending.is_some());
            self.any.store(any, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n; 32])
    }

    #[test]
    fn only_the_stored_payload_is_unchanged_and_pending_values_are_taken_once() {
        let l = Liveness::new(16);
        assert!(!l.unchanged(&id(1), b"hello"), "nothing stored yet");
        l.seen(&id(1), 5);
        assert!(!l.any_pending(), "an unknown node is not tracked");
        l.stored(&id(1), b"hello");
        assert!(l.unchanged(&id(1), b"hello"));
        assert!(!l.unchanged(&id(1), b"hellp"));
        assert!(!l.unchanged(&id(2), b"hello"));
        l.seen(&id(1), 10);
        l.seen(&id(1), 7);
        assert_eq!(l.pending(&id(1)), Some(10), "the newest time wins");
        assert_eq!(l.take_pending(), vec![(id(1), 10)]);
        assert!(!l.any_pending());
        l.restore(vec![(id(1), 12)]);
        assert_eq!(l.pending(&id(1)), Some(12));
        // A new stored hello keeps what is pending; forgetting drops both.
        l.stored(&id(1), b"other");
        assert_eq!(l.pending(&id(1)), Some(12));
        assert!(!l.unchanged(&id(1), b"hello"));
        l.forget(&id(1));
        assert!(!l.unchanged(&id(1), b"other"));
        assert_eq!(l.pending(&id(1)), None);
    }

    fn sighting(n: u8, first: Millis, last: Millis, from: Option<&str>) -> PeerSighting {
        PeerSighting {
            node_id: id(n).as_str().to_owned(),
            first_seen: first,
            last_seen: last,
            admitted_from: from.map(str::to_owned),
        }
    }

    #[test]
    fn peers_count_when_heard_again_within_the_window_and_once_per_address() {
        let none = HashMap::new();
        // Window from 10_000, heard again at least 1_000 after the first hello.
        let count = |rows: &[PeerSighting], pending: &HashMap<String, Millis>| {
            counted_peers(rows, pending, 10_000, 1_000)
        };
        assert_eq!(count(&[sighting(1, 9_000, 10_000, None)], &none), 1);
        assert_eq!(
            count(&[sighting(1, 9_000, 9_999, None)], &none),
            0,
            "silent for longer than the window"
        );
        assert_eq!(
            count(&[sighting(1, 10_000, 10_999, None)], &none),
            0,
            "not heard again an interval after its first hello"
        );
        assert_eq!(count(&[sighting(1, 10_000, 11_000, None)], &none), 1);
        // A newer `last_seen` not yet written counts, an older one does not.
        let row = [sighting(1, 9_000, 9_500, None)];
        let newer = HashMap::from([(id(1).as_str().to_owned(), 10_500)]);
        let older = HashMap::from([(id(1).as_str().to_owned(), 9_000)]);
        assert_eq!(count(&row, &newer), 1);
        assert_eq!(count(&row, &older), 0);
        // Peers admitted from one address count once; without an address, each counts.
        let rows = [
            sighting(1, 0, 20_000, Some("192.0.2.7")),
            sighting(2, 0, 20_000, Some("192.0.2.7")),
            sighting(3, 0, 20_000, Some("192.0.2.8")),
            sighting(4, 0, 20_000, None),
            sighting(5, 0, 20_000, None),
            // Does not count, so does not use up its address.
            sighting(6, 19_500, 20_000, Some("192.0.2.9")),
        ];
        assert_eq!(count(&rows, &none), 4);
    }

    #[test]
    fn the_interval_is_sized_by_the_peers_that_count_in_the_current_window() {
        let mut net = NetworkConfig::with_hellos(1, 2);
        // Twenty peers heard again, the latest hello 5 s ago.
        let rows: Vec<_> = (0..20).map(|n| sighting(n, 0, 10_000, None)).collect();
        let none = HashMap::new();
        // In a window of three 1 s intervals: none counts; of three 2 s intervals: all do.
        assert_eq!(hello_interval_for(&net, &rows, &none, 15_000, 1_000), 1_000);
        assert_eq!(
            hello_interval_for(&net, &rows, &none, 15_000, 2_000),
            10_000
        );
        net.hellos_per_interval = 0;
        assert_eq!(hello_interval_for(&net, &rows, &none, 15_000, 2_000), 1_000);
    }

    #[test]
    fn the_table_is_bounded_but_keeps_what_is_pending() {
        let l = Liveness::new(16);
        for n in 0..16 {
            l.stored(&id(n), b"h");
        }
        l.seen(&id(3), 1);
        l.stored(&id(100), b"h");
        assert!(l.unchanged(&id(100), b"h"));
        assert_eq!(l.pending(&id(3)), Some(1), "a pending value survives");
        assert!(!l.unchanged(&id(4), b"h"), "idle entries made room");
    }
}
