//! The node's API operations: local commits (publish, bid, claim, settle, reassign, cancel),
//! reads of seeds, events, peers and trust state.

use std::time::Duration;

use super::group::LocalOp;
use super::{Node, Overview, PeerInfo, PublishRequest, lock};
use crate::clock::random_bytes;
use crate::envelope::{self, EnvelopeError};
use crate::error::{Error, ErrorKind, Result};
use crate::identity::PublicIdentity;
use crate::model::{
    Bid, BidId, Body, Cancellation, Claim, Message, MessageId, Millis, RoundEnd, Seed, SeedId,
    SeedStatus,
};
use crate::monitor::Event;
use crate::sandbox::Refusal;
use crate::state::{self, SeedView, Violation};
use crate::store::Peer;
use crate::trust;

impl Node {
    /// Commits a local message that the node issues itself (a decision, a run's result) in a
    /// transaction of its own, or as part of the receive batch this thread has open. The API's
    /// operations go through the group commit instead (`node/group.rs`).
    pub(super) fn commit_local(
        &self,
        seed_id: &SeedId,
        build: impl FnOnce(Option<&SeedView>) -> Result<Body>,
    ) -> Result<SeedView> {
        let now = self.now_ms();
        let view = self.with_store(|s| {
            let peers = s.peers()?;
            let view = s
                .commit_local(&self.inner.id, seed_id, now, build, |m, v| {
                    self.seal(m, &v.seed, &peers)
                })
                .map(|(_, view, _)| view)?;
            self.schedule_decision(&view);
            Ok(view)
        })?;
        self.inner.wake_outbox.notify_one();
        Ok(view)
    }

    /// An API operation on an existing seed through the group commit (`node/group.rs`):
    /// `build` makes the message's body from the seed's current state and its id (an unknown
    /// seed fails with [`Violation::UnknownSeed`] before `build` runs).
    fn commit_api(
        &self,
        seed_id: &SeedId,
        build: impl FnOnce(&Node, &SeedView, &SeedId) -> Result<Body> + Send + 'static,
    ) -> Result<SeedView> {
        let id = seed_id.clone();
        self.commit_queued(LocalOp::Build {
            seed_id: seed_id.clone(),
            now: self.now_ms(),
            build: Box::new(move |n, v| build(n, known(v, &id)?, &id)),
        })
    }

    /// [`Node::commit_api`] on the blocking pool.
    async fn commit_api_blocking(
        &self,
        seed_id: &SeedId,
        build: impl FnOnce(&Node, &SeedView, &SeedId) -> Result<Body> + Send + 'static,
    ) -> Result<SeedView> {
        let seed_id = seed_id.clone();
        self.blocking(move |n| n.commit_api(&seed_id, build)).await
    }

    /// Signs a local message about `seed`, sealing it to the seed's audience when the seed is
    /// private (`peers` must then hold the audience's keys).
    pub(super) fn seal(&self, message: &Message, seed: &Seed, peers: &[Peer]) -> Result<Vec<u8>> {
        let mut recipients = Vec::new();
        if !seed.audience.is_empty() {
            for id in seed.audience.iter().chain([&seed.publisher]) {
                if id == &self.inner.id {
                    continue;
                }
                let peer = peers.iter().find(|p| &p.identity.node_id == id).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Network,
                        format!(
                            "cannot encrypt to node {id}: no hello from it yet, so its keys are unknown"
                        ),
                    )
                })?;
                recipients.push((&peer.identity.node_id, &peer.identity.kem));
            }
        }
        let net = &self.inner.config.network;
        envelope::message_envelope(
            &self.keys(),
            message,
            net.message_ttl_secs,
            &recipients,
            net.max_envelope_bytes,
            &mut envelope::os_rng,
        )
        .map_err(|e| match e {
            EnvelopeError::Oversized { .. } => Error::new(
                ErrorKind::Validation,
                format!("the {} message is too large to send: {e}", message.kind()),
            ),
            e => Error::internal(format!("cannot build envelope: {e}")),
        })
    }

    /// Publishes a seed; returns its state once it is committed. The seed's message is
    /// stamped and signed on the caller's thread, then committed together with whatever other
    /// callers queued meanwhile (group commit, see `node/group.rs`).
    pub async fn publish(&self, req: PublishRequest) -> Result<SeedView> {
        self.blocking(move |n| {
            let op = n.signed_seed(req)?;
            n.commit_queued(op)
        })
        .await
    }

    /// The new seed `req` describes as a message stamped with the next Lamport counter and
    /// signed (sealed to its audience when it is private), ready for its group.
    pub(super) fn signed_seed(&self, req: PublishRequest) -> Result<LocalOp> {
        let now = self.now_ms();
        let seed = Seed {
            id: SeedId::from_bytes(random_bytes()),
            publisher: self.inner.id.clone(),
            command: req.command,
            description: req.description,
            min_price: req.min_price,
            max_price: req.max_price,
            bid_window_secs: req.bid_window_secs,
            max_bids: req.max_bids,
            timeout_secs: req.timeout_secs,
            created_at: now,
            audience: req.private_to,
            network: req.network,
            isolation: req.isolation,
            rules: Seed::rules_for(req.replication.as_ref()),
            deadlines: Some(req.deadlines),
            replication: req.replication,
        };
        seed.check_fields()
            .map_err(|e| Error::new(ErrorKind::Validation, format!("invalid seed: {e}")))?;
        // A private seed is sealed to its audience: their keys come from the peer table.
        let peers = if seed.audience.is_empty() {
            Vec::new()
        } else {
            lock(&self.inner.store).peers()?
        };
        // The creation time equals the message timestamp: the same clock reading.
        let message = Message {
            id: MessageId::from_bytes(random_bytes()),
            sender: self.inner.id.clone(),
            lamport: self.inner.lamport.next()?,
            timestamp: now,
            body: Body::SeedCreated(seed),
        };
        message
            .check_well_formed()
            .map_err(|e| Error::new(ErrorKind::Validation, e))?;
        let Body::SeedCreated(seed) = &message.body else {
            return Err(Error::internal("a new seed's message must be seed_created"));
        };
        let envelope = self.seal(&message, seed, &peers)?;
        Ok(LocalOp::Signed {
            message: Box::new(message),
            envelope,
        })
    }

    /// Bids `price` on a seed.
    pub async fn bid(&self, seed_id: &SeedId, price: u64) -> Result<SeedView> {
        let seed_id = seed_id.clone();
        self.blocking(move |n| {
            let view = n.commit_api(&seed_id, move |n, v, id| {
                let me = n.inner.id.clone();
                state::check_local_bid(v, &me, n.now_ms())?;
                // Never offer to run what this node's sandbox policy cannot serve.
                n.inner
                    .config
                    .runner
                    .check_can_serve(&v.seed)
                    .map_err(|e| refusal(id, e))?;
                Ok(Body::BidPlaced(Bid {
                    id: BidId::from_bytes(random_bytes()),
                    seed_id: id.clone(),
                    bidder: me,
                    price,
                }))
            })?;
            n.issue_decisions_if_due()?;
            n.seed_blocking(&seed_id).or(Ok(view))
        })
        .await
    }

    /// Claims a seed this node won.
    pub async fn claim(&self, seed_id: &SeedId) -> Result<SeedView> {
        let seed_id = seed_id.clone();
        self.blocking(move |n| {
            n.issue_decisions_if_due()?;
            n.commit_api(&seed_id, |n, v, id| {
                let me = n.inner.id.clone();
                let bid_id = state::check_local_claim(v, &me, n.now_ms())?;
                Ok(Body::SeedClaimed(Claim {
                    seed_id: id.clone(),
                    claimer: me,
                    bid_id,
                }))
            })
        })
        .await
    }

    /// Settles a completed seed this node published: accept (the winning price is due; for a
    /// replicated seed each agreeing runner's price) or reject.
    pub async fn settle(&self, seed_id: &SeedId, accept: bool, note: &str) -> Result<SeedView> {
        let note = note.to_owned();
        self.commit_api_blocking(seed_id, move |_, v, _| {
            Ok(Body::SeedSettled(v.settlement_for(accept, &note)))
        })
        .await
    }

    /// Starts the next round of a seed this node published (rules 2): after its current round
    /// failed, or once its winner let the claim window pass. The next best bid whose bidder has
    /// not had a round wins; with none left the seed expires.
    pub async fn reassign(&self, seed_id: &SeedId) -> Result<SeedView> {
        self.commit_api_blocking(seed_id, |n, v, id| {
            state::check_local_reassign(v, &n.inner.id, n.now_ms())?;
            let next = v
                .reassignment()
                .ok_or_else(|| Error::internal(format!("seed {id} has no award to reassign")))?;
            Ok(Body::SeedReassigned(next))
        })
        .await
    }

    /// Cancels a seed this node published: while bidding is open, or (rules 2) once the
    /// winner let the claim window pass or the current round failed.
    pub async fn cancel(&self, seed_id: &SeedId) -> Result<SeedView> {
        self.commit_api_blocking(seed_id, |_, v, id| {
            // Under rules 2 a cancellation after the award says how the round ended.
            let after = match (v.seed.deadlines(), v.status, &v.award) {
                (None, _, _) | (_, _, None) => None,
                (Some(_), SeedStatus::Failed, Some(_)) => Some(RoundEnd::Failed),
                (Some(_), _, Some(_)) => Some(RoundEnd::Unclaimed),
            };
            Ok(Body::SeedCancelled(Cancellation {
                seed_id: id.clone(),
                after,
            }))
        })
        .await
    }

    /// One seed's state; [`ErrorKind::NotFound`] if it is unknown here.
    pub async fn seed(&self, seed_id: &SeedId) -> Result<SeedView> {
        let seed_id = seed_id.clone();
        self.blocking(move |n| n.seed_blocking(&seed_id)).await
    }

    pub(super) fn seed_blocking(&self, seed_id: &SeedId) -> Result<SeedView> {
        lock(&self.inner.store).seed(seed_id)?.ok_or_else(|| {
            Violation::UnknownSeed {
                seed_id: seed_id.clone(),
            }
            .into()
        })
    }

    /// Seeds known here, newest first, optionally filtered by status.
    pub async fn seeds(&self, status: Option<SeedStatus>) -> Result<Vec<SeedView>> {
        self.blocking(move |n| lock(&n.inner.store).seeds(status, usize::MAX))
            .await
    }

    /// The newest `limit` seeds known here, optionally only those with `status`.
    pub async fn recent_seeds(
        &self,
        status: Option<SeedStatus>,
        limit: usize,
    ) -> Result<Vec<SeedView>> {
        self.blocking(move |n| lock(&n.inner.store).seeds(status, limit))
            .await
    }

    /// A summary of the node.
    pub async fn overview(&self) -> Result<Overview> {
        self.blocking(|n| {
            let store = lock(&n.inner.store);
            Ok(Overview {
                node_id: n.inner.id.clone(),
                name: n.inner.config.name.clone(),
                data_dir: n.inner.config.data_dir.display().to_string(),
                transport: n.inner.transport_name.clone(),
                seeds_by_status: store.status_counts()?,
                outbox_pending: store.outbox_pending()?,
                counters: {
                    let mut c = store.counters()?;
                    for (k, v) in n.inner.rejections.pending_counters() {
                        *c.entry(k).or_default() += v;
                    }
                    c
                },
                last_event_seq: store.last_event_seq()?,
                events_pruned_through: store.events_pruned_through()?,
                state_digest: store.digest()?,
                peers: store.peer_count()? as u64,
                addresses: lock(&n.inner.addresses).clone(),
                sandbox: n.inner.config.runner.sandbox_status(),
            })
        })
        .await
    }

    /// Events after sequence number `after` from the durable log, oldest first.
    pub async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.blocking(move |n| lock(&n.inner.store).events_after(after, limit))
            .await
    }

    /// The sequence number of the last event pruned by the bound on the durable log (0 when
    /// none was; see [`crate::retention`]): a cursor below it has missed events.
    pub async fn events_pruned_through(&self) -> Result<u64> {
        self.blocking(|n| lock(&n.inner.store).events_pruned_through())
            .await
    }

    /// The peers this node has verified hellos from.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>> {
        self.blocking(|n| {
            let store = lock(&n.inner.store);
            let mut reputations = store.reputations()?;
            Ok(store
                .peers()?
                .into_iter()
                .map(|p| PeerInfo {
                    last_seen: n.last_seen(&p),
                    reputation: reputations.remove(&p.identity.node_id).unwrap_or_default(),
                    fingerprint: p.identity.fingerprint().to_owned(),
                    node_id: p.identity.node_id,
                    name: p.name,
                    addresses: p.addresses,
                    key_epoch: p.identity.epoch,
                    first_seen: p.first_seen,
                })
                .collect())
        })
        .await
    }

    /// Every runner's reputation as the signed messages this node holds tell it (peers and
    /// nodes no longer in the peer table alike); see [`crate::reputation`].
    pub async fn reputations(
        &self,
    ) -> Result<std::collections::BTreeMap<crate::model::NodeId, crate::reputation::Reputation>>
    {
        self.blocking(|n| lock(&n.inner.store).reputations()).await
    }

    /// Waits until at least `count` peers are known (their hellos arrived), or fails with
    /// [`ErrorKind::Network`] after `timeout`.
    pub async fn wait_for_peers(&self, count: usize, timeout: Duration) -> Result<Vec<PeerInfo>> {
        let now = tokio::time::Instant::now();
        // A timeout too large to represent means "no deadline" in practice (a year).
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
        loop {
            let peers = self.peers().await?;
            if peers.len() >= count {
                return Ok(peers);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Network,
                    format!(
                        "node {} knows {} peers after {timeout:?}, expected {count}",
                        self.inner.config.name,
                        peers.len()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// This node's public keys (what `crabnet trust sign` certifies).
    pub fn public_identity(&self) -> PublicIdentity {
        self.keys().public().clone()
    }

    /// The trust policy in force: mode, anchors, this node's certificate, certified and
    /// revoked nodes.
    pub async fn trust_status(&self) -> Result<trust::TrustStatus> {
        self.blocking(|n| {
            n.inner.trust.refresh(&lock(&n.inner.store))?;
            Ok(n.inner.trust.status())
        })
        .await
    }

    /// Verifies and stores a revocation (signed by a configured anchor, or by a node about
    /// itself); a listening node applies it at once and sends it with its hellos. Returns
    /// whether it was new.
    pub async fn import_revocation(&self, bytes: Vec<u8>) -> Result<bool> {
        self.blocking(move |n| {
            let added = n.with_store(|s| n.inner.trust.add_revocation(&bytes, s, n.now_ms()))?;
            Ok(added?)
        })
        .await
    }

    /// Revokes this node's own keys from `from` (Unix ms) on: peers then refuse anything it
    /// signs dated at or after that time. Returns the signed revocation.
    pub async fn revoke_self(&self, from: Millis) -> Result<trust::Revocation> {
        self.blocking(move |n| {
            let mut randomness = [0u8; 32];
            envelope::os_rng(&mut randomness);
            let r = trust::Revocation::by_node(&n.keys(), from, n.now_ms(), randomness)?;
            n.with_store(|s| n.inner.trust.add_revocation(r.to_bytes(), s, n.now_ms()))??;
            Ok(r)
        })
        .await
    }

    /// The name of the transport the node runs on (`memory`, `udp`, `dht`), if any.
    pub fn transport_name(&self) -> Option<&str> {
        self.inner.transport_name.as_deref()
    }
}

pub(super) fn known<'a>(view: Option<&'a SeedView>, seed_id: &SeedId) -> Result<&'a SeedView> {
    view.ok_or_else(|| {
        Violation::UnknownSeed {
            seed_id: seed_id.clone(),
        }
        .into()
    })
}

/// The refusal of a task this node's runner policy cannot serve, as an API error.
pub(super) fn refusal(seed_id: &SeedId, e: Refusal) -> Error {
    Error::with_source(
        ErrorKind::Runner,
        format!("this node cannot serve seed {seed_id}: {e}"),
        e,
    )
}
