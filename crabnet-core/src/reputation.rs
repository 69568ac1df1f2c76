//! Reputation from signed history: per peer, counts derived only from the seed states this
//! node folded from signed messages it holds (never from what a peer says about itself), and
//! the award policy that may weigh them (section `[award]`, `docs/PROTOCOL.md` section 3c).
//!
//! Each seed contributes to the runners it involved ([`contributions`]); the store keeps one
//! row per seed and node, rewritten with the seed's state, so the totals survive restarts,
//! are equal on nodes that hold the same messages, and go with a seed when retention prunes
//! it.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{Award, Millis, NodeId, SettlementOutcome};
use crate::state::{BidView, ReplicaStanding, SeedView, winner_order};

/// What the signed messages a node holds say about one peer as a runner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct Reputation {
    /// Replicated seeds where its result agreed with the quorum.
    pub agreed: u64,
    /// Replicated seeds where its result differed from the quorum's.
    pub dissented: u64,
    /// Awards it let pass: no claim within the claim window, or no result within the
    /// result deadline (a rules 2 round that ended, or a replica that lapsed).
    pub missed_deadlines: u64,
    /// Settlements that accepted its result (and paid it).
    pub settlements_accepted: u64,
    /// Settlements that rejected its result.
    pub settlements_rejected: u64,
}

impl Reputation {
    /// Adds another count.
    pub fn add(&mut self, other: &Reputation) {
        self.agreed += other.agreed;
        self.dissented += other.dissented;
        self.missed_deadlines += other.missed_deadlines;
        self.settlements_accepted += other.settlements_accepted;
        self.settlements_rejected += other.settlements_rejected;
    }

    /// Good outcomes: agreed results and accepted settlements.
    pub fn good(&self) -> u64 {
        self.agreed.saturating_add(self.settlements_accepted)
    }

    /// Bad outcomes, weighted: a dissent counts 4, a missed deadline 2, a rejected settlement 1.
    pub fn bad(&self) -> u64 {
        self.dissented
            .saturating_mul(4)
            .saturating_add(self.missed_deadlines.saturating_mul(2))
            .saturating_add(self.settlements_rejected)
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        *self == Reputation::default()
    }
}

/// How the publisher's node picks winners (section `[award]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AwardPolicy {
    /// The winner rule alone: lowest price first.
    #[default]
    Price,
    /// Bids are ranked by `price * (1 + good + bad) / (1 + good)` (see [`Reputation`]), and
    /// bids that would outrank a better-ranked one by price alone are left out of the award.
    PriceAndReputation,
}

/// The award settings (section `[award]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwardConfig {
    /// `"price"` (default) or `"price_and_reputation"`.
    pub policy: AwardPolicy,
}

/// What one seed's state says about each runner it involved. Nothing about its publisher:
/// every step of a seed its publisher ran itself (rules 1 lets a publisher bid on its own seed)
/// is signed by that one node, its own claims about itself.
pub fn contributions(view: &SeedView) -> BTreeMap<NodeId, Reputation> {
    let mut out: BTreeMap<NodeId, Reputation> = BTreeMap::new();
    let settlement = view.settlement.as_ref().map(|s| &s.settlement);
    if view.seed.replication().is_some() {
        for r in &view.replicas {
            let rep = out.entry(r.runner.clone()).or_default();
            match r.standing {
                ReplicaStanding::Agreed => rep.agreed += 1,
                ReplicaStanding::Dissented => rep.dissented += 1,
                ReplicaStanding::Lapsed => rep.missed_deadlines += 1,
                ReplicaStanding::Awarded | ReplicaStanding::Claimed | ReplicaStanding::Reported => {
                }
            }
            match settlement.map(|s| (s.outcome, s.paid.contains(&r.runner))) {
                Some((SettlementOutcome::Accepted, true)) => rep.settlements_accepted += 1,
                Some((SettlementOutcome::Rejected, _)) if r.standing == ReplicaStanding::Agreed => {
                    rep.settlements_rejected += 1
                }
                _ => {}
            }
        }
    } else {
        for round in &view.past_rounds {
            out.entry(round.winner_node.clone())
                .or_default()
                .missed_deadlines += 1;
        }
        if let (Some(s), Some(claim)) = (settlement, &view.claim) {
            let rep = out.entry(claim.claimer.clone()).or_default();
            match s.outcome {
                SettlementOutcome::Accepted => rep.settlements_accepted += 1,
                SettlementOutcome::Rejected => rep.settlements_rejected += 1,
            }
        }
    }
    out.remove(&view.seed.publisher);
    out.retain(|_, r| !r.is_empty());
    out
}

/// Ranks two bids by reputation-weighted price, then by the winner rule.
fn weighted_order(
    a: &BidView,
    b: &BidView,
    reputations: &BTreeMap<NodeId, Reputation>,
) -> Ordering {
    let weight = |bid: &BidView| {
        let r = reputations
            .get(&bid.bid.bidder)
            .copied()
            .unwrap_or_default();
        let good = u128::from(r.good()) + 1;
        (
            u128::from(bid.bid.price) * (good + u128::from(r.bad())),
            good,
        )
    };
    let ((na, da), (nb, db)) = (weight(a), weight(b));
    // na / da against nb / db, without division.
    (na * db).cmp(&(nb * da)).then_with(|| winner_order(a, b))
}

/// Re-draws a due award under [`AwardPolicy::PriceAndReputation`]: the considered bids are
/// ranked by weighted price, and a bid is kept only when the winner rule also ranks it after
/// every bid kept before it, so that the state machine (which checks the award by the winner
/// rule among the considered bids) accepts the result and the best-weighted bids win. When
/// bids were left out and the bid window is still open, bidding may not close early (the
/// award would consider fewer than `max_bids` bids): `Err(window end)`, when to try again.
pub fn weigh_award(
    view: &SeedView,
    award: &Award,
    reputations: &BTreeMap<NodeId, Reputation>,
    now: Millis,
) -> Result<Award, Millis> {
    let mut ranked: Vec<&BidView> = award
        .considered
        .iter()
        .filter_map(|id| view.bids.iter().find(|b| &b.bid.id == id))
        .collect();
    ranked.sort_by(|a, b| weighted_order(a, b, reputations));
    let mut kept: Vec<&BidView> = Vec::with_capacity(ranked.len());
    for b in ranked {
        if kept
            .last()
            .is_none_or(|last| winner_order(b, last) == Ordering::Greater)
        {
            kept.push(b);
        }
    }
    if kept.len() != view.seed.max_bids as usize && now < view.seed.window_end() {
        return Err(view.seed.window_end());
    }
    let ids = |n: usize| kept.iter().take(n).map(|b| b.bid.id.clone()).collect();
    Ok(Award {
        seed_id: award.seed_id.clone(),
        considered: ids(kept.len()),
        winner: kept.first().map(|b| b.bid.id.clone()),
        winners: match view.seed.replication() {
            Some(r) => ids(r.replicas as usize),
            None => Vec::new(),
        },
    })
}
