//! Decisions this node owes as a publisher (closing bidding, re-awarding, expiring), each at
//! its own due time.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::operations::known;
use super::{Node, lock};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Award, Body, Message, Millis, NodeId};
use crate::reputation::{self, AwardPolicy};
use crate::state::SeedView;

impl Node {
    /// Issues every decision this node owes as a publisher (see [`SeedView::due_decision`]):
    /// awards when bidding is due to close and, under rules 2, reassignments, failures and
    /// settlements when their deadlines have passed. Reads the seeds of ours whose decisions
    /// are due, and when the next one is, from the store's index of decision times (never every
    /// open seed: a publisher of thousands of seeds takes thousands of decisions); it runs at
    /// start, when another process wrote to the store, and when the timer says a decision is
    /// due, and sets the timer to the next one.
    pub(super) fn issue_due_decisions(&self) -> Result<()> {
        let now = self.now_ms();
        let timers = &self.inner.timers;
        // Reset before the query: a seed published meanwhile schedules itself again
        // (after its commit), whichever of the two comes first.
        timers.decide_at.store(u64::MAX, Ordering::Relaxed);
        let found = lock(&self.inner.store).due_decisions(&self.inner.id, now);
        let found = found.inspect_err(|_| {
            // Retried in a second, as the caller says (not every tick: a full or broken disk
            // would fill the log).
            timers
                .decide_at
                .fetch_min(now.saturating_add(1_000), Ordering::Relaxed);
        })?;
        if let Some(at) = found.next_at {
            timers.decide_at.fetch_min(at, Ordering::Relaxed);
        }
        for view in found.due {
            if !self.decide(&view, now) {
                self.schedule_decision(&view);
            }
        }
        Ok(())
    }

    /// [`Node::issue_due_decisions`] when the timer says a decision is due; no store access
    /// otherwise.
    pub(super) fn issue_decisions_if_due(&self) -> Result<()> {
        if self.inner.timers.decide_at.load(Ordering::Relaxed) <= self.now_ms() {
            self.issue_due_decisions()?;
        }
        Ok(())
    }

    /// After a received message was applied (or deferred): when its seed is one of ours (the
    /// message may be our own, restored by sync), issues what is due at once (an award when
    /// `max_bids` bids are in) and moves the timer. A seed of ours that left the timer may come
    /// back to it: a claim made in time that arrives after this node expired the seed for want
    /// of it overrides the expiry, and the seed then owes its result deadline (found by
    /// `tests/simulator.rs`). A message about another publisher's seed costs one read of its
    /// publisher, not of its state.
    pub(super) fn reschedule_decision(&self, message: &Message, now: Millis) -> Result<()> {
        let id = message.seed_id();
        let store = lock(&self.inner.store);
        if store.publisher_of(id)?.as_ref() != Some(&self.inner.id) {
            return Ok(());
        }
        let Some(view) = store.seed(id)? else {
            return Ok(());
        };
        drop(store);
        if !self.decide(&view, now) {
            self.schedule_decision(&view);
        }
        Ok(())
    }

    /// Brings the decision timer nearer for a seed of ours that owes a decision sooner (the
    /// store keeps the decision time of each of our seeds: a seed that owes none leaves the
    /// timer by itself).
    pub(super) fn schedule_decision(&self, view: &SeedView) {
        if view.seed.publisher != self.inner.id {
            return;
        }
        if let Some(at) = view.next_decision_at() {
            self.inner.timers.decide_at.fetch_min(at, Ordering::Relaxed);
        }
    }

    /// Issues the decision due on `view` at `now`, if any; true when it did (the new state
    /// schedules itself through `commit_local`). Otherwise the caller schedules `view`: a
    /// decision that failed is then still due, and tried again on the next tick.
    fn decide(&self, view: &SeedView, now: Millis) -> bool {
        let Some(due) = view.due_decision(now) else {
            return false;
        };
        let id = view.seed.id.clone();
        let kind = due.kind();
        // Under `award.policy = "price_and_reputation"` the award weighs the reputation of
        // the bidders it considers (theirs only, not the whole table), read before the
        // commit, which holds the store.
        let reputations = match (&due, self.inner.config.award.policy) {
            (Body::BiddingClosed(award), AwardPolicy::PriceAndReputation) => {
                let bidders = considered_bidders(view, award);
                match lock(&self.inner.store).reputations_from_of(&self.inner.id, &bidders) {
                    Ok(r) => Some((bidders, r)),
                    Err(e) => {
                        tracing::warn!(seed = %id, "cannot read reputations: {e}");
                        return false;
                    }
                }
            }
            _ => None,
        };
        if let (Some((_, reps)), Body::BiddingClosed(award)) = (&reputations, &due)
            && let Err(retry_at) = reputation::weigh_award(view, award, reps, now)
        {
            // Bids were left out: bidding may not close before the window ends. The seed stays
            // due in the store; the timer alone waits.
            self.inner
                .timers
                .decide_at
                .fetch_min(retry_at, Ordering::Relaxed);
            return true;
        }
        let result = self.commit_local(&id, |v| {
            let v = known(v, &id)?;
            // Another thread or process may have decided meanwhile.
            let due = v
                .due_decision(now)
                .filter(|b| b.kind() == kind)
                .ok_or_else(|| Error::new(ErrorKind::State, "already decided"))?;
            match (&reputations, due) {
                (Some((read, reps)), Body::BiddingClosed(award)) => {
                    // A bid that arrived since the read: weigh again with its bidder's
                    // reputation (the seed stays due; the next pass reads it).
                    if !considered_bidders(v, &award).is_subset(read) {
                        tracing::debug!(seed = %id, "a bid came before the award: weighed again");
                        return Err(Error::new(ErrorKind::State, "bids changed"));
                    }
                    reputation::weigh_award(v, &award, reps, now)
                        .map(Body::BiddingClosed)
                        .map_err(|_| Error::new(ErrorKind::State, "not due yet"))
                }
                (_, due) => Ok(due),
            }
        });
        match result {
            Ok(_) => true,
            // Decided meanwhile: the next look reads the new state.
            Err(e) if e.kind() == ErrorKind::State => false,
            Err(e) => {
                tracing::warn!(seed = %id, "cannot issue the due {kind}: {e}");
                false
            }
        }
    }
}

/// The bidders of the bids `award` considers.
fn considered_bidders(view: &SeedView, award: &Award) -> BTreeSet<NodeId> {
    view.bids
        .iter()
        .filter(|b| award.considered.contains(&b.bid.id))
        .map(|b| b.bid.bidder.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::clock::ManualClock;
    use crate::config::Config;
    use crate::model::{SeedId, SeedStatus};
    use crate::network::MemoryHub;
    use crate::node::{Node, PublishRequest};
    use crate::reputation::AwardPolicy;
    use crate::state::SeedView;

    /// A node on `hub` that awards by price and reputation, on `clock` when given (then its
    /// housekeeping looks once at the start and not again for a minute: the test's decisions
    /// are the only ones). Hellos go out at the start (and answer new peers), not again.
    async fn start(
        hub: &MemoryHub,
        dir: &tempfile::TempDir,
        name: &str,
        clock: Option<&ManualClock>,
    ) -> Node {
        let mut c = Config::with_data_dir(dir.path().join(name));
        c.name = name.into();
        c.award.policy = AwardPolicy::PriceAndReputation;
        c.network.hello_interval_secs = 3600;
        if clock.is_some() {
            c.network.tick_ms = 60_000;
        }
        let transport = Box::new(hub.join(name));
        match clock {
            Some(clock) => {
                Node::start_with_clock(c, Some(transport), Arc::new(clock.clone())).await
            }
            None => Node::start_with_transport(c, transport).await,
        }
        .unwrap()
    }

    /// `node`'s view of `id` once it holds `bids` bids (up to 20 s).
    async fn with_bids(node: &Node, id: &SeedId, bids: usize) -> SeedView {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(view) = node.seed(id).await
                && view.bids.len() >= bids
            {
                return view;
            }
            assert!(Instant::now() < deadline, "never {bids} bids on {id}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Under `price_and_reputation` an award weighs the reputations it read before its commit.
    /// A bid stored between that read and the commit (here: a decision on a view read before
    /// the bid arrived) makes the commit refuse ("bids changed"), so that no award is weighed
    /// without a considered bidder's reputation; the seed stays open, and the next decision,
    /// on the fresh view, weighs every bid.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_award_read_before_a_new_bid_is_refused_and_weighed_again_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let hub = MemoryHub::new();
        let clock = ManualClock::new(crate::clock::now_ms());
        let publisher = start(&hub, &dir, "p", Some(&clock)).await;
        let first = start(&hub, &dir, "b1", None).await;
        let second = start(&hub, &dir, "b2", None).await;
        for node in [&publisher, &first, &second] {
            node.wait_for_peers(2, Duration::from_secs(20))
                .await
                .unwrap();
        }
        // The window ends only when the publisher's clock is moved past it.
        let published = publisher
            .publish(PublishRequest {
                bid_window_secs: 60,
                ..PublishRequest::new("true")
            })
            .await
            .unwrap();
        let id = published.seed.id.clone();
        with_bids(&first, &id, 0).await;
        first.bid(&id, 40).await.unwrap();
        let stale = with_bids(&publisher, &id, 1).await;
        with_bids(&second, &id, 0).await;
        second.bid(&id, 30).await.unwrap();
        with_bids(&publisher, &id, 2).await;

        clock.set(stale.seed.window_end() + 1);
        let now = publisher.now_ms();
        assert!(
            stale.due_decision(now).is_some(),
            "the stale view owes an award"
        );
        let node = publisher.clone();
        let decided = tokio::task::spawn_blocking(move || node.decide(&stale, now))
            .await
            .unwrap();
        assert!(!decided, "awarded on a view without the second bid");
        let fresh = publisher.seed(&id).await.unwrap();
        assert_eq!(fresh.status, SeedStatus::Open);
        assert!(fresh.award.is_none(), "the refused award was stored");

        // The next decision, on the fresh view, weighs both bids.
        let node = publisher.clone();
        let decided = tokio::task::spawn_blocking(move || node.decide(&fresh, now))
            .await
            .unwrap();
        assert!(decided, "no award on the fresh view");
        let awarded = publisher.seed(&id).await.unwrap();
        let award = awarded.award.expect("awarded on the fresh view");
        assert_eq!(award.considered.len(), 2, "both bids weighed: {award:?}");
        assert_eq!(award.winner_node.as_ref(), Some(second.id()));
        for node in [publisher, first, second] {
            node.stop().await.unwrap();
        }
    }
}
