//! The trust boundary: every received frame (envelope, hello, digest, batch, revocation) is
//! checked, cheap checks before costly ones, then applied or refused with a reason.

use super::reconcile::Ask;
use super::{Node, lock};
use crate::clock::random_bytes;
use crate::envelope::{self, EnvelopeError, Header, Kind};
use crate::error::{Error, Result};
use crate::identity::PublicIdentity;
use crate::ingress;
use crate::model::{MessageId, Millis, NodeId};
use crate::monitor::{EventKind, RejectReason};
use crate::network::{Acceptance, Ack, Handled};
use crate::store::{PeerUpdate, RemoteOutcome};
use crate::sync;

impl Node {
    /// Counts a rejected frame and records its event, unless an event for the same source and
    /// reason was recorded within `network.reject_event_window_ms` (then the window's summary
    /// covers it): a flood costs memory, not one transaction per frame.
    pub(super) fn reject(
        &self,
        from: &str,
        header: Option<&Header>,
        reason: RejectReason,
        detail: String,
    ) -> Result<Acceptance> {
        self.record_rejection(ingress::Rejection::new(from, header, reason, detail))
    }

    /// Rejects as malformed a frame from `from` (header `h`) whose payload does not decode.
    pub(super) fn malformed(
        &self,
        from: &str,
        h: &Header,
        e: impl std::fmt::Display,
    ) -> Result<Acceptance> {
        self.reject(from, Some(h), RejectReason::Malformed, e.to_string())
    }

    /// Counts `rejection` and records its event as [`Node::reject`] does.
    pub(super) fn record_rejection(&self, rejection: ingress::Rejection) -> Result<Acceptance> {
        let reason = rejection.reason;
        let now = self.now_ms();
        if let Some(event) = self.inner.rejections.note(rejection, now) {
            self.with_store(|s| s.record_event(now, event))?;
        }
        Ok(verdict(reason))
    }

    /// A frame the gate refused at `now`: counted in memory; its event (the first per source
    /// and reason in a window) is the only write.
    pub(super) async fn refuse(&self, rejection: ingress::Rejection, now: Millis) -> Handled {
        let acceptance = verdict(rejection.reason);
        if let Some(event) = self.inner.rejections.note(rejection, now) {
            let node = self.clone();
            let written = tokio::task::spawn_blocking(move || {
                node.with_store(|s| s.record_event(now, event))
            })
            .await;
            if let Ok(Err(e)) = written {
                tracing::warn!("cannot record a rejection: {e}");
            }
        }
        Handled {
            acceptance,
            replies: Vec::new(),
        }
    }

    /// Writes the rejection counters and window summaries held in memory (housekeeping).
    pub(super) fn flush_rejections(&self) -> Result<()> {
        self.flush_rejections_if(false)
    }

    /// [`Node::flush_rejections`] when rejection or hold events wait; when only counters do,
    /// they stay in memory: a stopping node writes them with the event log's cursor, in one
    /// commit ([`Node::write_log_at_stop`]).
    pub(super) fn flush_rejection_events(&self) -> Result<()> {
        self.flush_rejections_if(true)
    }

    fn flush_rejections_if(&self, events_only: bool) -> Result<()> {
        let now = self.now_ms();
        let (expired, acks) = self.inner.held.expire(now, &self.inner.rejections);
        for (ack, reason) in acks {
            let _ = ack.send(Handled {
                acceptance: verdict(reason),
                replies: Vec::new(),
            });
        }
        // Drained under the store lock, as `overview` reads both: a counter is never in
        // neither place.
        let mut store = lock(&self.inner.store);
        let (counters, mut events) = self.inner.rejections.drain(now);
        events.extend(expired);
        if events.is_empty() && (events_only || counters.is_empty()) {
            if !counters.is_empty() {
                self.inner.rejections.restore(counters);
            }
            return Ok(());
        }
        let written = store.add_counters(now, &counters, events);
        if written.is_err() {
            self.inner.rejections.restore(counters);
        }
        self.pump_events(&store, false);
        written.map(|_| ())
    }

    /// The trust boundary: checks one received frame (size, structure, freshness, sender in
    /// the peer table, both signatures over the received bytes, replay), opens it if it is
    /// sealed to this node, and applies it. Every rejection is an event and a counter.
    ///
    /// `ack` is the transport's verdict channel, if it has one: when the frame is held (its
    /// author's hello or key rotation is on its way), the hold takes it and answers it later.
    pub(super) fn receive_frame(
        &self,
        bytes: &[u8],
        source: &ingress::Source,
        max: usize,
        ack: &mut Option<Ack>,
    ) -> Result<Handled> {
        self.receive_frame_via(bytes, source, max, Via::Live, ack)
    }

    /// [`Node::receive_frame`] for a frame that arrived `via` (the items of a sync batch).
    pub(super) fn receive_frame_via(
        &self,
        bytes: &[u8],
        source: &ingress::Source,
        max: usize,
        via: Via,
        ack: &mut Option<Ack>,
    ) -> Result<Handled> {
        let mut replies = Vec::new();
        let acceptance = self.receive_envelope(bytes, source, max, via, &mut replies, ack)?;
        Ok(Handled {
            acceptance,
            replies,
        })
    }

    /// One envelope, received live or inside a sync batch (then stale envelopes are expected:
    /// freshness and the replay floor do not apply, deduplication and signatures do). Frames
    /// to send in answer are appended to `replies`; a held frame takes `ack`.
    fn receive_envelope(
        &self,
        bytes: &[u8],
        source: &ingress::Source,
        max: usize,
        via: Via,
        replies: &mut Vec<Vec<u8>>,
        ack: &mut Option<Ack>,
    ) -> Result<Acceptance> {
        let from = source.from.as_str();
        let now = self.now_ms();
        let parsed = match envelope::parse(bytes, max) {
            Ok(p) => p,
            Err(e) => {
                let reason = match e {
                    EnvelopeError::Oversized { .. } => RejectReason::Oversized,
                    _ => RejectReason::Malformed,
                };
                return self.reject(from, None, reason, e.to_string());
            }
        };
        let h = &parsed.header;
        // Before any signature check or transaction: is the author admitted at all?
        if let Err(detail) = self.inner.trust.check_frame(h) {
            return self.reject(from, Some(h), RejectReason::NotAdmitted, detail);
        }
        if h.sender == self.inner.id {
            // Our own envelopes come back through relays and sync; anything else that claims
            // to be from this node is a forgery, checked like every other sender's frame.
            let current = self.keys().public().signing.clone();
            if let Err((reason, detail)) = self.verify_signer(&parsed, &current, via, now) {
                let detail = format!("claims to come from this node: {detail}");
                return self.reject(from, Some(h), reason, detail);
            }
            self.inner.rejections.count("messages.self_echo");
            return Ok(Acceptance::Ignore);
        }
        if self.inner.recent.contains(bytes) {
            // A copy of an envelope the store holds (gossip relays and sync answers deliver
            // copies as a matter of course): counted, no signature check, no transaction.
            let counter = match h.kind {
                Kind::NodeHello => "hellos.duplicate",
                _ => "messages.duplicate",
            };
            self.inner.rejections.count(counter);
            return Ok(Acceptance::Ignore);
        }
        let net = &self.inner.config.network;
        let skew = net.max_clock_skew_secs as u64 * 1000;
        if via == Via::Sync
            && matches!(
                h.kind,
                Kind::SyncDigest | Kind::SyncBatch | Kind::SyncRange | Kind::SyncWant
            )
        {
            let detail = "sync envelope nested in a sync batch".to_owned();
            return self.reject(from, Some(h), RejectReason::Malformed, detail);
        }
        // Inside a sync batch, envelopes are old by design (section 7): freshness applies to
        // envelopes received live only; everything else is checked below.
        if via != Via::Sync {
            if h.timestamp > now + skew {
                let detail = format!("dated {} ms in the future", h.timestamp - now);
                return self.reject(from, Some(h), RejectReason::Expired, detail);
            }
            let expires = h.timestamp.saturating_add(h.ttl_secs as u64 * 1000);
            if now > expires.saturating_add(skew) {
                let detail = format!("expired {} ms ago", now - expires);
                return self.reject(from, Some(h), RejectReason::Expired, detail);
            }
        }
        // Before any signature: a counter far ahead would drag this node's clock (and every
        // counter it stamps) along, up to the largest one representable.
        let clock = lock(&self.inner.store).lamport_clock()?;
        let limit = clock
            .saturating_add(net.lamport_window)
            .min(crate::store::MAX_LAMPORT);
        if h.lamport > limit {
            let detail = format!(
                "Lamport counter {} is more than network.lamport_window ({}) ahead of this \
                 node's clock ({clock})",
                h.lamport, net.lamport_window
            );
            return self.reject(from, Some(h), RejectReason::LamportAhead, detail);
        }
        if h.kind == Kind::NodeHello {
            let admission = crate::store::Admission {
                max_peers: net.max_peers,
                // A peer that missed four hellos in a row is idle.
                idle_before: now.saturating_sub(self.hello_interval_ms().saturating_mul(4)),
                // Hellos relayed inside sync batches name the relay, not their author.
                address: (via != Via::Sync)
                    .then(|| source.capped_address(&net.peer_address_exempt))
                    .flatten(),
                max_per_address: net.max_peers_per_address,
            };
            let epoch = self.inner.trust.key_epoch(&h.sender);
            // Answered toward its source when it came live (in a sync batch: from a relay).
            let answer_to = (via == Via::Live).then_some(source);
            let acceptance =
                self.receive_hello(&parsed, bytes, from, now, &admission, answer_to)?;
            if acceptance == Acceptance::Accept {
                let sender = &h.sender;
                self.release_held(sender, RejectReason::UnknownSender, source, max, replies)?;
                if self.inner.trust.key_epoch(sender) != epoch {
                    // The hello carried the rotation that envelopes were waiting for.
                    self.release_held(sender, RejectReason::BadSignature, source, max, replies)?;
                }
            }
            return Ok(acceptance);
        }
        let peer = lock(&self.inner.store).peer(&h.sender)?;
        let Some(peer) = peer else {
            let detail = "no verified hello from this sender".to_owned();
            if via != Via::Live {
                return self.reject(from, Some(h), RejectReason::UnknownSender, detail);
            }
            // Held until the hello arrives (hellos and the first envelopes cross at startup).
            let rejection =
                ingress::Rejection::new(from, Some(h), RejectReason::UnknownSender, detail);
            if let Err(refused) = self.hold(bytes, source, rejection, ack, now, false) {
                return refused;
            }
            // The hello may have been applied since the lookup: then nothing releases this
            // envelope but us.
            if lock(&self.inner.store).peer(&h.sender)?.is_some() {
                self.release_held(&h.sender, RejectReason::UnknownSender, source, max, replies)?;
            }
            return Ok(Acceptance::Ignore);
        };
        let epoch = self.inner.trust.key_epoch(&h.sender);
        if let Err((reason, detail)) = self.verify_signer(&parsed, &peer.identity.signing, via, now)
        {
            if reason != RejectReason::BadSignature || via != Via::Live {
                return self.reject(from, Some(h), reason, detail);
            }
            // Signed with keys this node does not know: a forgery, or the sender rotated and
            // the statement is still on its way (datagrams reorder, gossip relays overtake).
            // Held like an unknown sender's envelope until a rotation of the sender arrives;
            // rejected as `bad_signature` when the hold is over or full.
            let rejection = ingress::Rejection::new(from, Some(h), reason, detail);
            // Sources other than the sender's own address get a small share of its slots.
            let own = ingress::is_own_source(&peer.addresses, from);
            if let Err(refused) = self.hold(bytes, source, rejection, ack, now, own) {
                return refused;
            }
            // The rotation may have been applied since the check: then nothing releases this
            // envelope but us.
            if self.inner.trust.key_epoch(&h.sender) != epoch {
                self.release_held(&h.sender, RejectReason::BadSignature, source, max, replies)?;
            }
            return Ok(Acceptance::Ignore);
        }
        // The signatures proved the sender: now its budget pays (a sync batch's envelopes were
        // paid for by the batch).
        if via != Via::Sync
            && let Err(limited) = self.inner.gate.charge_sender(h, from, now)
        {
            return self.record_rejection(limited);
        }
        if matches!(
            h.kind,
            Kind::SyncDigest
                | Kind::SyncBatch
                | Kind::SyncRange
                | Kind::SyncWant
                | Kind::Revocations
                | Kind::KeyRotations
        ) {
            // Sync envelopes are answered once: a replay must not make us resend everything.
            let fresh = self.with_store(|s| {
                if s.is_known(&h.message_id)? {
                    return Ok(false);
                }
                let counter = match h.kind {
                    Kind::SyncDigest => "sync.digests_received",
                    Kind::Revocations => "trust.revocation_lists_received",
                    Kind::KeyRotations => "trust.rotation_lists_received",
                    Kind::SyncRange => "sync.ranges_received",
                    Kind::SyncWant => "sync.wants_received",
                    _ => "sync.batches_received",
                };
                s.remember(&h.message_id, &h.sender, h.lamport, now, counter)?;
                Ok(true)
            })?;
            if !fresh {
                let detail = format!("{} was already received", h.kind.name());
                return self.reject(from, Some(h), RejectReason::Duplicate, detail);
            }
        }
        match h.kind {
            Kind::SyncDigest => {
                return match parsed.plain::<sync::Digest>(Kind::SyncDigest) {
                    Ok(d) => {
                        self.answer_digest(&h.sender, &d, bytes.len(), source, replies)?;
                        Ok(Acceptance::Ignore)
                    }
                    Err(e) => self.malformed(from, h, e),
                };
            }
            Kind::SyncBatch => {
                let batch = match parsed.plain::<sync::Batch>(Kind::SyncBatch) {
                    Ok(b) => b,
                    Err(e) => return self.malformed(from, h, e),
                };
                // Its envelopes in groups, one transaction each, as runs of live envelopes are
                // (a repair round or a catch-up brings hundreds: one commit each cost one fsync
                // each); its hellos alone.
                let kinds = batch
                    .items
                    .iter()
                    .map(|item| envelope::parse(item, max).ok().map(|p| p.header.kind))
                    .collect();
                let items = batch.items.into_iter().map(|bytes| super::batch::Arrival {
                    bytes: bytes.into_vec(),
                    source: source.clone(),
                    ack: None,
                });
                let received = self.receive_runs(items.collect(), kinds, max, Via::Sync);
                replies.extend(received.into_iter().flat_map(|r| r.handled.replies));
                return Ok(Acceptance::Ignore);
            }
            Kind::SyncRange => {
                return match parsed.plain::<sync::range::Round>(Kind::SyncRange) {
                    Ok(round) => {
                        self.answer_sync(h, Ask::Range(&round), bytes.len(), source, max, replies)
                    }
                    Err(e) => self.malformed(from, h, e),
                };
            }
            Kind::SyncWant => {
                return match parsed.plain::<sync::range::Want>(Kind::SyncWant) {
                    Ok(want) => {
                        self.answer_sync(h, Ask::Want(&want), bytes.len(), source, max, replies)
                    }
                    Err(e) => self.malformed(from, h, e),
                };
            }
            Kind::Revocations => {
                return match parsed.plain::<sync::Batch>(Kind::Revocations) {
                    Ok(list) => self.receive_revocations(&list, &h.sender, now),
                    Err(e) => self.malformed(from, h, e),
                };
            }
            Kind::KeyRotations => {
                return match parsed.plain::<sync::Batch>(Kind::KeyRotations) {
                    Ok(list) => {
                        let moved = self.receive_rotations(&list, now)?;
                        for node in moved {
                            self.release_held(
                                &node,
                                RejectReason::BadSignature,
                                source,
                                max,
                                replies,
                            )?;
                        }
                        Ok(Acceptance::Accept)
                    }
                    Err(e) => self.malformed(from, h, e),
                };
            }
            Kind::NodeHello | Kind::Domain(_) => {}
        }
        if via != Via::Sync
            && h.lamport <= peer.replay_floor
            && !lock(&self.inner.store).is_known(&h.message_id)?
        {
            let detail = format!(
                "Lamport counter {} is at or below the sender's replay floor {}",
                h.lamport, peer.replay_floor
            );
            return self.reject(from, Some(h), RejectReason::Replay, detail);
        }
        let message = match self.open(&parsed) {
            Ok(m) => m,
            Err(EnvelopeError::NotForMe) => {
                // Sealed to other nodes: remembered (deduplicated) and relayed, not applied.
                return self.with_store(|s| {
                    if s.is_known(&h.message_id)? {
                        // A copy: counted in memory, as any copy is (no commit per copy), and
                        // its next copies are found without a signature check.
                        self.inner.rejections.count("messages.not_for_us_duplicate");
                        self.inner.recent.insert(bytes);
                        return Ok(Acceptance::Ignore);
                    }
                    s.remember(
                        &h.message_id,
                        &h.sender,
                        h.lamport,
                        now,
                        "messages.not_for_us",
                    )?;
                    self.inner.recent.insert(bytes);
                    Ok(Acceptance::Accept)
                });
            }
            Err(e) => return self.malformed(from, h, e),
        };
        let outcome = self.with_store(|s| {
            s.apply_remote(&message, bytes, now)
                .map(|(outcome, _)| outcome)
        })?;
        if outcome == RemoteOutcome::Pruned {
            // Its seed was pruned here: not applied, not relayed, no event (sync offers it
            // again and again while a peer holds it).
            self.inner.rejections.count("retention.refused");
            return Ok(Acceptance::Ignore);
        }
        self.inner.recent.insert(bytes);
        if outcome == RemoteOutcome::Duplicate {
            // A copy of a stored envelope that `recent` no longer held (after a restart, say):
            // counted in memory, as any copy is; the store wrote nothing.
            self.inner.rejections.count("messages.duplicate");
        }
        if matches!(outcome, RemoteOutcome::Applied | RemoteOutcome::Deferred(_)) {
            self.reschedule_decision(&message, now)?;
        }
        Ok(match outcome {
            RemoteOutcome::Duplicate => Acceptance::Ignore,
            RemoteOutcome::Rejected(RejectReason::Malformed, _) => Acceptance::Reject,
            // A rule violation is validly signed and may be pending elsewhere: forward it.
            _ => Acceptance::Accept,
        })
    }

    /// Applies the envelopes held for `sender` for `reason`: until its hello arrived
    /// (`unknown_sender`), or a rotation of its keys (`bad_signature`); one just did, from
    /// `source`. Answers to them go back only when they came from the same source.
    pub(super) fn release_held(
        &self,
        sender: &NodeId,
        reason: RejectReason,
        source: &ingress::Source,
        max: usize,
        replies: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        for held in self
            .inner
            .held
            .release(sender, reason, &self.inner.rejections)
        {
            let mut answers = Vec::new();
            let mut ack = held.ack;
            // Each released frame on its own: an error with one (the store, say) must not
            // lose the others, which already left the queue, nor their verdict channels.
            let acceptance = self
                .receive_envelope(
                    &held.bytes,
                    &held.source,
                    max,
                    Via::Released,
                    &mut answers,
                    &mut ack,
                )
                .unwrap_or_else(|e| {
                    tracing::warn!("cannot apply a released frame: {e}");
                    Acceptance::Ignore
                });
            match ack {
                // The transport learns the verdict now (gossip forwards what was accepted) and
                // carries the answers to the frame's source.
                Some(ack) => self.answer(
                    ack,
                    Handled {
                        acceptance,
                        replies: answers,
                    },
                ),
                None if held.source.from == source.from => replies.extend(answers),
                None => {}
            }
        }
        Ok(())
    }

    /// Holds a received envelope of `rejection.sender` (see [`ingress::HoldQueue`]), taking
    /// the transport's verdict channel; `own_source`: it came from the sender's own address.
    /// `Err` carries the verdict of an envelope that did not fit: rejected at once. Older held
    /// frames it pushed out are rejected here, their verdict channels answered
    /// ([`Node::answer`]: after the commit of an open batch).
    fn hold(
        &self,
        bytes: &[u8],
        source: &ingress::Source,
        rejection: ingress::Rejection,
        ack: &mut Option<Ack>,
        now: Millis,
        own_source: bool,
    ) -> std::result::Result<(), Result<Acceptance>> {
        let Some(sender) = rejection.sender.clone() else {
            return Err(self.record_rejection(rejection));
        };
        let frame = ingress::HeldFrame::new(bytes, source, rejection, ack.take(), now)
            .with_own_source(own_source);
        match self.inner.held.hold(&sender, frame, &self.inner.rejections) {
            // Already held: this copy's verdict channel is answered now, as for any copy.
            Ok(ingress::Hold::Copy(copy)) => {
                *ack = copy.ack;
                Ok(())
            }
            Ok(ingress::Hold::Held(evicted)) => {
                // The oldest frames of a full share made room: rejected now, with the reason
                // they were held for. Their verdicts leave as released frames' do (after the
                // commit of an open batch), and each frame on its own: an error recording one
                // rejection must not lose the others' verdicts (they already left the queue).
                for old in evicted {
                    let reason = old.rejection.reason;
                    let acceptance = self.record_rejection(old.rejection).unwrap_or_else(|e| {
                        tracing::warn!("cannot record the rejection of an evicted frame: {e}");
                        verdict(reason)
                    });
                    if let Some(old_ack) = old.ack {
                        self.answer(
                            old_ack,
                            Handled {
                                acceptance,
                                replies: Vec::new(),
                            },
                        );
                    }
                }
                Ok(())
            }
            Err(frame) => {
                *ack = frame.ack;
                Err(self.record_rejection(frame.rejection))
            }
        }
    }

    pub(super) fn plain_frame(&self, kind: Kind, payload: &[u8], ttl_secs: u32) -> Result<Vec<u8>> {
        let header = Header {
            kind,
            sealed: false,
            sender: self.inner.id.clone(),
            message_id: MessageId::from_bytes(random_bytes()),
            timestamp: self.now_ms(),
            ttl_secs,
            lamport: 0,
        };
        envelope::build(
            &self.keys(),
            &header,
            payload,
            &[],
            self.inner.config.network.max_envelope_bytes,
            &mut envelope::os_rng,
        )
        .map_err(|e| Error::internal(format!("cannot build {} envelope: {e}", kind.name())))
    }

    fn receive_hello(
        &self,
        parsed: &envelope::Parsed<'_>,
        bytes: &[u8],
        from: &str,
        now: Millis,
        admission: &crate::store::Admission,
        answer_to: Option<&ingress::Source>,
    ) -> Result<Acceptance> {
        let h = &parsed.header;
        if lock(&self.inner.store).is_known(&h.message_id)? {
            // Counted in memory, as any copy is: a copy with the id of a stored hello and
            // bytes of its own (anyone can make them) costs no transaction.
            self.inner.rejections.count("hellos.duplicate");
            return Ok(Acceptance::Ignore);
        }
        let hello = match parsed.hello() {
            Ok(hello) => hello,
            Err(e) => return self.malformed(from, h, e),
        };
        // A periodic hello repeats its sender's stored keys: parsed once, when stored.
        let cached = lock(&self.inner.store).cached_identity(
            &h.sender,
            &hello.signing_public,
            &hello.kem_public,
            hello.key_epoch,
        );
        let parsed_keys = match cached {
            Some(identity) => Ok(identity),
            None => PublicIdentity::from_parts(
                &hello.signing_public,
                &hello.kem_public,
                hello.key_epoch,
            ),
        };
        let identity = match parsed_keys {
            // Rotated keys: the id is that of the node's first keys (checked by its chain).
            Ok(mut i) if i.epoch > 1 => {
                i.node_id = h.sender.clone();
                i
            }
            Ok(i) => i,
            Err(e) => {
                return self.reject(
                    from,
                    Some(h),
                    RejectReason::Malformed,
                    format!("hello keys: {e}"),
                );
            }
        };
        if identity.node_id != h.sender {
            let detail = format!(
                "node id {} does not match its keys ({})",
                h.sender, identity.node_id
            );
            return self.reject(from, Some(h), RejectReason::KeyMismatch, detail);
        }
        if let Err(e) = parsed.verify(&identity.signing) {
            return self.reject(from, Some(h), RejectReason::BadSignature, e.to_string());
        }
        // A live hello (one with a source to answer) is paid for by its proven sender. First
        // keys prove the id (it is derived from them); rotated keys prove it when they are the
        // keys this node holds for the id, otherwise only once their chain is checked below:
        // anyone can sign a hello of epoch 2 naming a peer's id with keys of its own.
        let proven = identity.epoch <= 1
            || lock(&self.inner.store).peer(&h.sender)?.is_some_and(|p| {
                p.identity.epoch == identity.epoch && p.identity.signing == identity.signing
            });
        if answer_to.is_some()
            && proven
            && let Err(limited) = self.inner.gate.charge_sender(h, from, now)
        {
            return self.record_rejection(limited);
        }
        if let Some(acceptance) =
            self.refresh_unchanged_hello(parsed, &identity, &hello, from, now)?
        {
            return Ok(acceptance);
        }
        let keep_chain = match self.check_hello_epoch(&identity, &hello, from, h, now)? {
            Ok(keep_chain) => keep_chain,
            Err(verdict) => return Ok(verdict),
        };
        if answer_to.is_some()
            && !proven
            && let Err(limited) = self.inner.gate.charge_sender(h, from, now)
        {
            return self.record_rejection(limited);
        }
        let certificate = hello.certificate.as_deref();
        let admitted = self.with_store(|s| {
            self.inner
                .trust
                .admit_hello(&identity, certificate, h.timestamp, s, now)
        })?;
        if let Err(detail) = admitted {
            return self.reject(from, Some(h), RejectReason::NotAdmitted, detail);
        }
        let mut seen = Vec::new();
        let update = self.with_store(|s| {
            // Admitting a new peer reads `last_seen` (an idle peer may make room): the values
            // refreshed in memory are written first (see `node/liveness.rs`).
            if self.inner.liveness.any_pending() && s.peer(&identity.node_id)?.is_none() {
                seen = self.inner.liveness.take_pending();
                s.touch_peers(&seen)?;
            }
            let update = s.upsert_peer(
                &identity,
                &hello.name,
                &hello.addresses,
                bytes,
                now,
                admission,
            )?;
            if matches!(update, PeerUpdate::New | PeerUpdate::Refreshed) {
                s.remember(&h.message_id, &h.sender, h.lamport, now, "hellos.accepted")?;
                self.inner.recent.insert(bytes);
            }
            if update == PeerUpdate::New {
                s.record_event(
                    now,
                    EventKind::PeerDiscovered {
                        node_id: identity.node_id.clone(),
                        name: hello.name.clone(),
                        addresses: hello.addresses.clone(),
                    },
                )?;
            }
            Ok(update)
        });
        let update = match update {
            Ok(update) => update,
            Err(e) => {
                self.inner.liveness.restore(seen);
                return Err(e);
            }
        };
        // What the next hello of this sender is compared with (see `node/liveness.rs`).
        match update {
            PeerUpdate::New | PeerUpdate::Refreshed => {
                self.inner.liveness.stored(&h.sender, parsed.payload())
            }
            PeerUpdate::KeyMismatch | PeerUpdate::Refused => self.inner.liveness.forget(&h.sender),
        }
        match update {
            // Validly signed by the id's own signing key: not the relay's fault.
            PeerUpdate::KeyMismatch => self
                .reject(
                    from,
                    Some(h),
                    RejectReason::KeyMismatch,
                    "a known node id announced different keys".into(),
                )
                .map(|_| Acceptance::Ignore),
            PeerUpdate::New => {
                if keep_chain {
                    self.keep_hello_chain(&hello, now)?;
                }
                // Answer a new peer (toward the source of its hello only) so that it learns
                // our keys too, then compare holdings; both within limits.
                if let Some(source) = answer_to {
                    self.want_hello_answer(source, &h.sender, &hello.addresses, bytes.len());
                }
                Ok(Acceptance::Accept)
            }
            PeerUpdate::Refreshed => Ok(Acceptance::Accept),
            // Valid, but this node has no room for it: counted in memory, not written.
            PeerUpdate::Refused => {
                self.inner.rejections.count("peers.refused");
                Ok(Acceptance::Ignore)
            }
        }
    }

    /// Applies a peer's revocation list; each item is verified on its own (its signer, not the
    /// envelope's sender, vouches for it).
    fn receive_revocations(
        &self,
        list: &sync::Batch,
        source: &NodeId,
        now: Millis,
    ) -> Result<Acceptance> {
        use crate::trust::Relayed;
        let mut added_any = false;
        for item in &list.items {
            let added = self.with_store(|s| {
                self.inner
                    .trust
                    .add_relayed_revocation(item, source, s, now)
            })?;
            match added {
                Ok(Relayed::New) => {
                    added_any = true;
                    self.with_store(|s| s.count("trust.revocations_added"))?
                }
                Ok(Relayed::Known) => {}
                Ok(Relayed::OverShare) => self.inner.rejections.count("trust.revocations_capped"),
                Err(e) => {
                    tracing::debug!("refused a revocation: {e}");
                    self.inner.rejections.count("trust.revocations_refused");
                }
            }
        }
        // Strangers' self-revocations are capped at once: a list cannot grow the store past
        // the bound by more than its own items.
        if added_any {
            self.with_store(|s| self.inner.trust.prune_revocations(s, now))?;
        }
        Ok(Acceptance::Accept)
    }
}

/// What a transport is told about a rejected frame. Only what the bytes themselves prove
/// invalid (malformed, oversized, a bad signature, a hello whose id does not match its keys)
/// penalises the peer that sent it; failures that depend on this node's state (an author whose
/// hello it lacks, an expired or replayed envelope, a duplicate, a rule) may be relayed by an
/// honest peer and are ignored.
fn verdict(reason: RejectReason) -> Acceptance {
    match reason {
        RejectReason::Malformed
        | RejectReason::Oversized
        | RejectReason::BadSignature
        | RejectReason::KeyMismatch => Acceptance::Reject,
        RejectReason::Duplicate
        | RejectReason::UnknownSender
        | RejectReason::Replay
        | RejectReason::Expired
        | RejectReason::Rule
        | RejectReason::NotAdmitted
        | RejectReason::RateLimited
        | RejectReason::LamportAhead
        | RejectReason::RotatedKey => Acceptance::Ignore,
    }
}

/// How an envelope arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// Directly from its author or a relay, now.
    Live,
    /// Received live, held, and released now that its author's hello or rotation arrived:
    /// checked as a live frame, but never held again (a forgery is rejected at once).
    Released,
    /// Inside a sync batch: possibly old.
    Sync,
}

/// Envelopes remembered in memory to recognise relayed copies without a transaction.
pub(super) const RECENT_FRAMES: usize = 65_536;

/// Sync requesters whose credit is tracked at once.
pub(super) const SYNC_REQUESTERS: usize = 4096;

#[cfg(test)]
mod tests {
    use super::super::{Node, lock};
    use crate::config::Config;
    use crate::envelope::{self, Header, Kind, MAX_ENVELOPE_BYTES};
    use crate::identity::Identity;
    use crate::ingress::{HOLD_MAX_PER_SENDER, Source};
    use crate::model::{MessageId, MessageKind};
    use crate::network::{Acceptance, MemoryHub};

    /// A signed seed envelope of `id` (its payload does not matter: it is held unread).
    fn envelope_of(id: &Identity, n: usize) -> Vec<u8> {
        let mut message_id = [0u8; 16];
        message_id[..8].copy_from_slice(&(n as u64 + 1).to_be_bytes());
        let header = Header {
            kind: Kind::Domain(MessageKind::SeedCreated),
            sealed: false,
            sender: id.node_id().clone(),
            message_id: MessageId::from_bytes(message_id),
            timestamp: crate::clock::now_ms(),
            ttl_secs: 60,
            lamport: 1,
        };
        envelope::build(
            id,
            &header,
            b"not read",
            &[],
            MAX_ENVELOPE_BYTES,
            &mut envelope::os_rng,
        )
        .unwrap()
    }

    /// Envelopes of a sender whose hello has not come are held; the oldest, pushed out when its
    /// share is full, are rejected. Inside a receive batch their verdicts leave with the
    /// batch's commit, as those of released frames do: none before it (a transport must not
    /// act on the verdicts of a batch that may still roll back), each exactly once after.
    /// Before, the frames pushed out were answered at once, inside the batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verdicts_of_frames_pushed_out_of_the_hold_leave_with_their_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::with_data_dir(dir.path().join("n"));
        c.events.log_enabled = false;
        let hub = MemoryHub::new();
        let node = Node::start_with_transport(c, Box::new(hub.join("n")))
            .await
            .unwrap();
        let stranger = Identity::from_tag(9, 1);
        let frames: Vec<Vec<u8>> = (0..HOLD_MAX_PER_SENDER + 3)
            .map(|i| envelope_of(&stranger, i))
            .collect();
        let n = node.clone();
        let (early, deferred, mut receivers) = tokio::task::spawn_blocking(move || {
            let source = Source {
                from: "memory:stranger".into(),
                verified: false,
            };
            let batch = n
                .inner
                .store
                .begin_batch(crate::store::Ops::Shared)
                .unwrap();
            let mut receivers = Vec::new();
            for f in &frames {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let mut ack = Some(tx);
                let handled = n
                    .receive_frame(f, &source, MAX_ENVELOPE_BYTES, &mut ack)
                    .unwrap();
                assert_eq!(handled.acceptance, Acceptance::Ignore);
                assert!(ack.is_none(), "the frame is held with its verdict channel");
                receivers.push(rx);
            }
            let early = receivers
                .iter_mut()
                .filter_map(|rx| rx.try_recv().ok())
                .count();
            let deferred = lock(&n.inner.deferred_acks).len();
            batch.end(true).unwrap();
            // As a receive batch does once it committed.
            for (ack, handled) in std::mem::take(&mut *lock(&n.inner.deferred_acks)) {
                let _ = ack.send(handled);
            }
            (early, deferred, receivers)
        })
        .await
        .unwrap();
        assert_eq!(early, 0, "verdicts answered before the batch committed");
        assert!(deferred > 0, "no frame was pushed out of the hold");
        // The oldest frames were pushed out: each has its verdict now, the others are held.
        for (i, rx) in receivers.iter_mut().enumerate() {
            match rx.try_recv() {
                Ok(handled) => {
                    assert!(i < deferred, "frame {i} answered, not pushed out");
                    assert_eq!(handled.acceptance, Acceptance::Ignore);
                }
                Err(_) => assert!(i >= deferred, "pushed-out frame {i} got no verdict"),
            }
        }
        node.stop().await.unwrap();
    }
}
