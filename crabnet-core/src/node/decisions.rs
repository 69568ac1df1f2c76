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
    /// store keeps every seed's decision time: a seed that owes none leaves the timer by
    /// itself).
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
