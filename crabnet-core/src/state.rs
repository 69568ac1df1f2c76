//! The seed state machine: a pure function from the set of messages about one seed to its
//! state.
//!
//! [`fold`] sorts the messages by kind (in dependency order: creation, bids, publisher
//! decisions, claim, result, settlement), then by Lamport counter and message id, and applies
//! them one by one. The outcome depends only on the *set* of messages, never on the order in
//! which they arrived or on duplicates, so every replica that holds the same messages computes
//! the same state. Each step after bidding has exactly one author (the publisher decides, the
//! winner claims, the claimer reports, the publisher settles) and depends on the previous step,
//! so for honest publishers adding a message can only move a seed forward. The rules are
//! written down in `docs/PROTOCOL.md`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, ErrorKind};
use crate::model::{
    Award, Bid, BidId, Body, Message, MessageId, MessageKind, Millis, NodeId, RoundEnd, Seed,
    SeedId, SeedStatus, Settlement, SettlementOutcome, TaskResult,
};

mod replicated;

pub use replicated::{ReplicaStanding, ReplicaView};

/// Why a message was not applied (yet), or why a local operation is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, ToSchema)]
#[serde(tag = "rule", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Violation {
    /// The message is not well formed.
    #[error("malformed message: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// No seed with this id is known (yet).
    #[error("unknown seed {seed_id}")]
    UnknownSeed {
        /// The seed asked for.
        seed_id: SeedId,
    },
    /// Another message already created a seed with this id.
    #[error("seed {seed_id} was already created by message {first}")]
    DuplicateSeed {
        /// The seed.
        seed_id: SeedId,
        /// The creation that counts.
        first: MessageId,
    },
    /// The operation is not possible in the seed's status.
    #[error("cannot {action} seed {seed_id}: it is {status}")]
    WrongStatus {
        /// The seed.
        seed_id: SeedId,
        /// Its status.
        status: SeedStatus,
        /// What was attempted.
        action: Action,
    },
    /// Only the publisher may do this.
    #[error("only the publisher {publisher} may {action} seed {seed_id}")]
    NotPublisher {
        /// The seed.
        seed_id: SeedId,
        /// Its publisher.
        publisher: NodeId,
        /// What was attempted.
        action: Action,
    },
    /// The bid window has closed.
    #[error("the bid window of seed {seed_id} closed at {window_end} (unix ms)")]
    BidWindowClosed {
        /// The seed.
        seed_id: SeedId,
        /// When the window closed.
        window_end: Millis,
    },
    /// A bid is dated before the seed was published.
    #[error("bid is dated before seed {seed_id} was published")]
    BidBeforePublication {
        /// The seed.
        seed_id: SeedId,
    },
    /// Bidding was already closed by the publisher.
    #[error("bidding on seed {seed_id} is closed")]
    BiddingClosed {
        /// The seed.
        seed_id: SeedId,
    },
    /// The price is outside the seed's range.
    #[error("price {price} is outside the range {min}..={max} of seed {seed_id}")]
    PriceOutOfRange {
        /// The seed.
        seed_id: SeedId,
        /// The offered price.
        price: u64,
        /// The lowest acceptable price.
        min: u64,
        /// The highest acceptable price.
        max: u64,
    },
    /// The seed already has as many bids as it takes.
    #[error("seed {seed_id} already has its limit of {max_bids} bids")]
    BidLimitReached {
        /// The seed.
        seed_id: SeedId,
        /// The limit.
        max_bids: u32,
    },
    /// The bidder already bid on this seed.
    #[error("node {bidder} already bid on seed {seed_id}")]
    AlreadyBid {
        /// The seed.
        seed_id: SeedId,
        /// The bidder.
        bidder: NodeId,
    },
    /// A publisher may not bid on its own seed (rules 2 in the fold; every seed locally).
    #[error("the publisher of seed {seed_id} may not bid on it")]
    OwnSeed {
        /// The seed.
        seed_id: SeedId,
    },
    /// Bidding is still open, so there is no winner yet.
    #[error(
        "bidding on seed {seed_id} is still open: the winner is decided when the window closes at {window_end} (unix ms) or when {max_bids} bids have arrived"
    )]
    BiddingOpen {
        /// The seed.
        seed_id: SeedId,
        /// When the window closes.
        window_end: Millis,
        /// The bid limit.
        max_bids: u32,
    },
    /// The publisher's award does not follow the rules.
    #[error("invalid award for seed {seed_id}: {reason}")]
    InvalidAward {
        /// The seed.
        seed_id: SeedId,
        /// What is wrong.
        reason: String,
    },
    /// A bid the award refers to has not arrived (yet).
    #[error("award for seed {seed_id} refers to bid {bid_id}, which is not known here")]
    MissingBid {
        /// The seed.
        seed_id: SeedId,
        /// The missing bid.
        bid_id: BidId,
    },
    /// Only the winning bidder may claim.
    #[error("node {node} is not the winning bidder of seed {seed_id}")]
    NotWinningBidder {
        /// The seed.
        seed_id: SeedId,
        /// The node that tried.
        node: NodeId,
    },
    /// Only the claimer may report a result or run the task.
    #[error("node {node} is not the claimer of seed {seed_id}")]
    NotClaimer {
        /// The seed.
        seed_id: SeedId,
        /// The node that tried.
        node: NodeId,
    },
    /// The seed follows a rule version this node does not know.
    #[error(
        "seed {seed_id} follows rule version {rules}, which this node does not know (it knows 1 to {known})"
    )]
    UnknownRules {
        /// The seed.
        seed_id: SeedId,
        /// The seed's rule version.
        rules: u32,
        /// The newest rule version this node knows.
        known: u32,
    },
    /// Deadline decisions exist only under rules 2.
    #[error("seed {seed_id} follows rules 1, which have no deadlines")]
    NoDeadlines {
        /// The seed.
        seed_id: SeedId,
    },
    /// A reassignment, failure or late cancellation that the rules do not allow (yet).
    #[error("the publisher's decision on seed {seed_id} does not hold: {reason}")]
    InvalidDecision {
        /// The seed.
        seed_id: SeedId,
        /// What is wrong.
        reason: String,
    },
    /// A decision about a later round than the seed has reached.
    #[error("seed {seed_id} has not reached round {round} yet")]
    RoundNotReached {
        /// The seed.
        seed_id: SeedId,
        /// The round the message is about.
        round: u32,
    },
    /// The node acted after its deadline and the publisher ended its round.
    #[error(
        "node {node} acted after the deadline of round {round} of seed {seed_id}, which the publisher ended"
    )]
    Lapsed {
        /// The seed.
        seed_id: SeedId,
        /// The node that acted too late.
        node: NodeId,
        /// Its round.
        round: u32,
    },
    /// A local step comes after its deadline.
    #[error("too late to {action} seed {seed_id}: the deadline was {deadline} (unix ms)")]
    DeadlinePassed {
        /// The seed.
        seed_id: SeedId,
        /// What was attempted.
        action: Action,
        /// The deadline.
        deadline: Millis,
    },
    /// A replicated seed's settlement names runners it may not pay (rules 3).
    #[error("invalid settlement of seed {seed_id}: {reason}")]
    InvalidPayment {
        /// The seed.
        seed_id: SeedId,
        /// What is wrong.
        reason: String,
    },
    /// A settlement's amount is not the winning price.
    #[error("settlement amount {got} for seed {seed_id} must be the winning price {expected}")]
    WrongAmount {
        /// The seed.
        seed_id: SeedId,
        /// The winning price.
        expected: u64,
        /// The amount given.
        got: u64,
    },
}

impl From<Violation> for Error {
    fn from(v: Violation) -> Self {
        let kind = match v {
            Violation::UnknownSeed { .. } => ErrorKind::NotFound,
            Violation::Malformed { .. } | Violation::PriceOutOfRange { .. } => {
                ErrorKind::Validation
            }
            _ => ErrorKind::State,
        };
        Error::with_rule(kind, v)
    }
}

impl Error {
    /// The lifecycle rule that was violated, for [`ErrorKind::State`] errors.
    pub fn violation(&self) -> Option<&Violation> {
        self.rule()
    }
}

/// An operation on a seed, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Place a bid.
    Bid,
    /// Close bidding.
    Close,
    /// Cancel.
    Cancel,
    /// Claim.
    Claim,
    /// Run or report a result.
    Run,
    /// Settle.
    Settle,
    /// Reassign to the next best bid.
    Reassign,
    /// Declare a round failed.
    Fail,
    /// Award a replicated seed to more runners.
    Escalate,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Bid => "bid on",
            Action::Close => "close bidding on",
            Action::Cancel => "cancel",
            Action::Claim => "claim",
            Action::Run => "run",
            Action::Settle => "settle",
            Action::Reassign => "reassign",
            Action::Fail => "declare failed",
            Action::Escalate => "escalate",
        })
    }
}

/// What the state machine made of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// The message is part of the seed's state.
    Applied,
    /// The message waits for another one (its seed, a bid, the previous lifecycle step).
    Pending {
        /// What it waits for.
        reason: Violation,
    },
    /// The message breaks a rule and has no effect.
    Rejected {
        /// The rule it breaks.
        reason: Violation,
    },
}

/// A bid as part of a seed's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BidView {
    /// The bid.
    #[serde(flatten)]
    pub bid: Bid,
    /// When it was placed (Unix ms, the bidder's clock).
    pub placed_at: Millis,
}

/// The publisher's award as part of a seed's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AwardView {
    /// The bids taken into account.
    pub considered: Vec<BidId>,
    /// The winning bid, if any.
    #[schema(required)]
    pub winner: Option<BidId>,
    /// The winning bidder, if any.
    #[schema(required)]
    pub winner_node: Option<NodeId>,
    /// The winning price, if any.
    #[schema(required)]
    pub price: Option<u64>,
    /// When bidding closed (Unix ms).
    pub closed_at: Millis,
    /// The current round: 0 for the award, one more for every reassignment (rules 2). The
    /// `winner`, `winner_node` and `price` above are the current round's.
    #[serde(default)]
    #[schema(required)]
    pub round: u32,
    /// When the current round started: the award's or the latest reassignment's time.
    #[serde(default)]
    #[schema(required)]
    pub round_started_at: Millis,
}

/// An earlier round of an awarded seed (rules 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PastRound {
    /// The round number (0 is the award).
    pub round: u32,
    /// The bid that won the round.
    pub winner: BidId,
    /// Its bidder.
    pub winner_node: NodeId,
    /// When it claimed, if it did (Unix ms).
    #[schema(required)]
    pub claimed_at: Option<Millis>,
    /// How the round ended.
    pub ended: RoundEnd,
    /// When the publisher ended it (Unix ms).
    pub ended_at: Millis,
}

/// The claim as part of a seed's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClaimView {
    /// The claiming node.
    pub claimer: NodeId,
    /// The winning bid.
    pub bid_id: BidId,
    /// When it was claimed (Unix ms).
    pub claimed_at: Millis,
}

/// The settlement as part of a seed's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SettlementView {
    /// The settlement.
    #[serde(flatten)]
    pub settlement: Settlement,
    /// When it was settled (Unix ms).
    pub settled_at: Millis,
}

/// Everything known about one seed: the result of [`fold`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SeedView {
    /// The seed as published.
    pub seed: Seed,
    /// Its lifecycle status.
    pub status: SeedStatus,
    /// Valid bids (price in range, placed inside the window), in placement order. Honest nodes
    /// bid once per seed; should a node bid twice, both bids are listed and an award considers
    /// at most one bid per node.
    pub bids: Vec<BidView>,
    /// The publisher's award, once bidding closed.
    #[schema(required)]
    pub award: Option<AwardView>,
    /// The winner's claim.
    #[schema(required)]
    pub claim: Option<ClaimView>,
    /// The claimer's result.
    #[schema(required)]
    pub result: Option<TaskResult>,
    /// The publisher's settlement.
    #[schema(required)]
    pub settlement: Option<SettlementView>,
    /// When the publisher cancelled it (Unix ms).
    #[schema(required)]
    pub cancelled_at: Option<Millis>,
    /// When the publisher declared the current round failed (Unix ms; status `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<Millis>,
    /// Earlier rounds, oldest first (rules 2: rounds whose winner did not claim or failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past_rounds: Vec<PastRound>,
    /// Rules 3: every awarded runner, in award order (the award's winners best first, then
    /// those of each escalation), with its claim, result and standing. For a replicated seed
    /// `claim` is the first replica's claim and `result` the quorum's result (the first
    /// agreeing replica's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaView>,
    /// When the publisher ended a replicated seed without a quorum (Unix ms; status
    /// `inconclusive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconclusive_at: Option<Millis>,
    /// Time of the latest applied message (Unix ms).
    pub updated_at: Millis,
}

impl SeedView {
    /// The winning bid's view, once bidding closed with a winner.
    pub fn winning_bid(&self) -> Option<&BidView> {
        let winner = self.award.as_ref()?.winner.as_ref()?;
        self.bids.iter().find(|b| &b.bid.id == winner)
    }

    /// The award the publisher should issue at `now`, if bidding is due to close: the window
    /// has ended or `max_bids` bids are in. Considers the earliest `max_bids` bids.
    pub fn due_award(&self, now: Millis) -> Option<Award> {
        if self.status != SeedStatus::Open || self.award.is_some() {
            return None;
        }
        let bidders: HashSet<&NodeId> = self.bids.iter().map(|b| &b.bid.bidder).collect();
        let full = bidders.len() >= self.seed.max_bids as usize;
        if !full && now < self.seed.window_end() {
            return None;
        }
        // Earliest bids first, one per bidder, at most `max_bids`.
        let mut bids: Vec<&BidView> = self.bids.iter().collect();
        bids.sort_by(|a, b| {
            (a.placed_at, &a.bid.bidder, &a.bid.id).cmp(&(b.placed_at, &b.bid.bidder, &b.bid.id))
        });
        let mut seen = HashSet::new();
        bids.retain(|b| seen.insert(&b.bid.bidder));
        bids.truncate(self.seed.max_bids as usize);
        let winner = bids.iter().copied().min_by(|a, b| winner_order(a, b));
        Some(Award {
            seed_id: self.seed.id.clone(),
            considered: bids.iter().map(|b| b.bid.id.clone()).collect(),
            winner: winner.map(|b| b.bid.id.clone()),
            winners: match self.seed.replication() {
                Some(rep) => replicated::best_bids(bids.iter().copied(), rep.replicas as usize),
                None => Vec::new(),
            },
        })
    }
}

impl SeedView {
    /// Until when (Unix ms) the current round's winner may claim (rules 2, awarded seeds).
    pub fn claim_deadline(&self) -> Option<Millis> {
        let d = self.seed.deadlines()?;
        let award = self.award.as_ref()?;
        award.winner.as_ref()?;
        Some(
            award
                .round_started_at
                .saturating_add(d.claim_secs.saturating_mul(1000)),
        )
    }

    /// Until when (Unix ms) the claimer may report its result: the claim time plus the seed's
    /// timeout plus its result grace (rules 2, claimed seeds).
    pub fn result_deadline(&self) -> Option<Millis> {
        let d = self.seed.deadlines()?;
        let claim = self.claim.as_ref()?;
        Some(
            claim.claimed_at.saturating_add(
                self.seed
                    .timeout_secs
                    .saturating_add(d.result_grace_secs)
                    .saturating_mul(1000),
            ),
        )
    }

    /// Until when (Unix ms) the publisher's operator may settle a completed seed before its
    /// node settles by the result (rules 2).
    pub fn settle_deadline(&self) -> Option<Millis> {
        let d = self.seed.deadlines()?;
        let result = self.result.as_ref()?;
        Some(
            result
                .finished_at
                .saturating_add(d.settle_secs.saturating_mul(1000)),
        )
    }

    /// The settlement the publisher signs when it accepts (or rejects) the result: accepted
    /// pays the winning price, or under rules 3 every runner whose result agrees with the
    /// quorum (each its own price); rejected pays nothing.
    pub fn settlement_for(&self, accept: bool, note: &str) -> Settlement {
        let (amount, paid) = match (accept, self.seed.replication()) {
            (false, _) => (0, Vec::new()),
            (true, None) => (
                self.award.as_ref().and_then(|a| a.price).unwrap_or(0),
                Vec::new(),
            ),
            (true, Some(_)) => {
                let agreed = self
                    .replicas
                    .iter()
                    .filter(|r| r.standing == ReplicaStanding::Agreed);
                (
                    agreed
                        .clone()
                        .fold(0u64, |sum, r| sum.saturating_add(r.price)),
                    agreed.map(|r| r.runner.clone()).collect(),
                )
            }
        };
        Settlement {
            seed_id: self.seed.id.clone(),
            outcome: if accept {
                SettlementOutcome::Accepted
            } else {
                SettlementOutcome::Rejected
            },
            amount,
            note: note.to_owned(),
            paid,
        }
    }

    /// The considered bid that wins the next round: the best by the winner rule among bidders
    /// that have not had a round yet.
    pub fn next_winner(&self) -> Option<&BidView> {
        let award = self.award.as_ref()?;
        let had: HashSet<&NodeId> = self
            .past_rounds
            .iter()
            .map(|r| &r.winner_node)
            .chain(award.winner_node.as_ref())
            .collect();
        award
            .considered
            .iter()
            .filter_map(|id| self.bids.iter().find(|b| &b.bid.id == id))
            .filter(|b| !had.contains(&b.bid.bidder))
            .min_by(|a, b| winner_order(a, b))
    }

    /// The reassignment that starts the next round (after the current round failed, or its
    /// winner let the claim window pass).
    pub fn reassignment(&self) -> Option<crate::model::Reassignment> {
        let award = self.award.as_ref()?;
        Some(crate::model::Reassignment {
            seed_id: self.seed.id.clone(),
            round: award.round + 1,
            winner: self.next_winner().map(|b| b.bid.id.clone()),
            after: if self.status == SeedStatus::Failed {
                RoundEnd::Failed
            } else {
                RoundEnd::Unclaimed
            },
        })
    }

    /// The decision the publisher's node owes at `now`, if any: close bidding when it is due,
    /// and under rules 2 (each [`DECISION_MARGIN_MS`] after its deadline) reassign a seed whose
    /// winner did not claim, fail a round without a result, and settle a completed seed by its
    /// result when the operator did not. A failed round waits for the operator (reassign or
    /// cancel).
    pub fn due_decision(&self, now: Millis) -> Option<Body> {
        if let Some(award) = self.due_award(now) {
            return Some(Body::BiddingClosed(award));
        }
        if self.seed.replication().is_some() {
            return replicated::due_decision(self, now);
        }
        let past = |deadline: Option<Millis>| {
            deadline.is_some_and(|d| now >= d.saturating_add(DECISION_MARGIN_MS))
        };
        match self.status {
            SeedStatus::Open if past(self.claim_deadline()) => {
                self.reassignment().map(Body::SeedReassigned)
            }
            SeedStatus::Claimed if past(self.result_deadline()) => {
                Some(Body::SeedFailed(crate::model::Failure {
                    seed_id: self.seed.id.clone(),
                    round: self.award.as_ref().map_or(0, |a| a.round),
                }))
            }
            SeedStatus::Completed if self.settlement.is_none() && past(self.settle_deadline()) => {
                let success = self.result.as_ref().is_some_and(|r| r.success);
                Some(Body::SeedSettled(self.settlement_for(
                    success,
                    "settled by the node: the settlement window passed",
                )))
            }
            _ => None,
        }
    }

    /// From when (Unix ms) [`SeedView::due_decision`] has a decision for this state, if it
    /// ever will without another message: the end of the bid window (at once when `max_bids`
    /// bids are in), or a rules-2 deadline plus [`DECISION_MARGIN_MS`]. A node schedules its
    /// next look at the seeds it published by this, instead of looking after every message.
    ///
    /// The store keeps this time with each state (`seeds.decide_at`, schema version 12) and
    /// nothing recomputes the stored times at start: a change to this function needs a store
    /// migration that marks the undecided seeds due (`decide_at = 0`, as migration 12 does),
    /// so that the timer's first read gives each its new time.
    pub fn next_decision_at(&self) -> Option<Millis> {
        let after =
            |deadline: Option<Millis>| deadline.map(|d| d.saturating_add(DECISION_MARGIN_MS));
        if self.seed.replication().is_some() && self.award.is_some() {
            return replicated::next_decision_at(self);
        }
        match self.status {
            SeedStatus::Open if self.award.is_none() => {
                let bidders: HashSet<&NodeId> = self.bids.iter().map(|b| &b.bid.bidder).collect();
                if bidders.len() >= self.seed.max_bids as usize {
                    Some(0)
                } else {
                    Some(self.seed.window_end())
                }
            }
            SeedStatus::Open => after(self.claim_deadline()),
            SeedStatus::Claimed => after(self.result_deadline()),
            SeedStatus::Completed if self.settlement.is_none() => after(self.settle_deadline()),
            _ => None,
        }
    }
}

/// The winner rule: lowest price, then earliest placement, then lowest bidder id, then lowest
/// bid id.
pub fn winner_order(a: &BidView, b: &BidView) -> Ordering {
    (a.bid.price, a.placed_at, &a.bid.bidder, &a.bid.id).cmp(&(
        b.bid.price,
        b.placed_at,
        &b.bid.bidder,
        &b.bid.id,
    ))
}

/// The outcome of [`fold`]: the seed's state (if its creation is known) and a verdict for
/// every distinct message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folded {
    /// The seed's state, `None` while its creation message is missing.
    pub view: Option<SeedView>,
    /// Verdict per message id.
    pub verdicts: BTreeMap<MessageId, Verdict>,
}

fn kind_rank(kind: MessageKind) -> u8 {
    match kind {
        MessageKind::SeedCreated => 0,
        MessageKind::BidPlaced => 1,
        // Publisher decisions share one sequence so that the earliest one wins.
        MessageKind::BiddingClosed
        | MessageKind::SeedCancelled
        | MessageKind::SeedReassigned
        | MessageKind::SeedFailed
        | MessageKind::SeedEscalated => 2,
        MessageKind::SeedClaimed => 3,
        MessageKind::ResultReported => 4,
        MessageKind::SeedSettled => 5,
    }
}

/// How long after a deadline the publisher's node waits before acting on it, so that a step
/// taken just in time has arrived (network delay, clock skew).
pub const DECISION_MARGIN_MS: Millis = 2_000;

/// Computes the state of one seed from every message about it, in any order, with
/// duplicates. All messages must concern the same seed.
pub fn fold<'a>(messages: impl IntoIterator<Item = &'a Message>) -> Folded {
    let mut msgs: Vec<&Message> = messages.into_iter().collect();
    msgs.sort_by(|a, b| {
        (kind_rank(a.kind()), a.order_key()).cmp(&(kind_rank(b.kind()), b.order_key()))
    });
    msgs.dedup_by(|a, b| a.id == b.id);

    let mut verdicts: BTreeMap<MessageId, Verdict> = BTreeMap::new();
    let mut view: Option<SeedView> = None;
    let mut unknown_rules: Option<Violation> = None;
    let mut first_creation: Option<&MessageId> = None;
    let mut by_rank: [Vec<&Message>; 6] = Default::default();
    for msg in msgs {
        // A seed under rules this node does not know is refused as such, not as malformed.
        if let Body::SeedCreated(seed) = &msg.body
            && seed.rules > crate::model::rules::CURRENT
        {
            let reason = Violation::UnknownRules {
                seed_id: seed.id.clone(),
                rules: seed.rules,
                known: crate::model::rules::CURRENT,
            };
            if first_creation.is_none() {
                first_creation = Some(&msg.id);
                unknown_rules = Some(reason.clone());
            }
            verdicts.insert(msg.id.clone(), rejected(reason));
            continue;
        }
        match msg.check_well_formed() {
            Err(reason) => {
                verdicts.insert(msg.id.clone(), rejected(Violation::Malformed { reason }));
            }
            Ok(()) => by_rank[kind_rank(msg.kind()) as usize].push(msg),
        }
    }
    let [creations, bids, decisions, claims, results, settlements] = by_rank;

    for msg in creations {
        let Body::SeedCreated(seed) = &msg.body else {
            continue;
        };
        let verdict = match first_creation {
            None => {
                first_creation = Some(&msg.id);
                view = Some(SeedView {
                    seed: seed.clone(),
                    status: SeedStatus::Open,
                    bids: Vec::new(),
                    award: None,
                    claim: None,
                    result: None,
                    settlement: None,
                    cancelled_at: None,
                    failed_at: None,
                    past_rounds: Vec::new(),
                    replicas: Vec::new(),
                    inconclusive_at: None,
                    updated_at: msg.timestamp,
                });
                Verdict::Applied
            }
            Some(first) => rejected(Violation::DuplicateSeed {
                seed_id: seed.id.clone(),
                first: first.clone(),
            }),
        };
        verdicts.insert(msg.id.clone(), verdict);
    }
    let rest = || {
        bids.iter()
            .chain(&decisions)
            .chain(&claims)
            .chain(&results)
            .chain(&settlements)
    };
    let Some(mut v) = view else {
        for msg in rest() {
            let verdict = match &unknown_rules {
                Some(reason) => rejected(reason.clone()),
                None => pending(Violation::UnknownSeed {
                    seed_id: msg.seed_id().clone(),
                }),
            };
            verdicts.insert(msg.id.clone(), verdict);
        }
        return Folded {
            view: None,
            verdicts,
        };
    };

    let mut rejected_bids: HashSet<&BidId> = HashSet::new();
    for msg in &bids {
        let Body::BidPlaced(bid) = &msg.body else {
            continue;
        };
        let verdict = apply_bid(&mut v, msg, bid);
        if !matches!(verdict, Verdict::Applied) {
            rejected_bids.insert(&bid.id);
        }
        verdicts.insert(msg.id.clone(), verdict);
    }

    first_decision(&mut v, &mut verdicts, &decisions, &rejected_bids);
    let rounds = if v.seed.replication().is_some() {
        replicated::lifecycle
    } else {
        lifecycle
    };
    rounds(&mut v, &mut verdicts, &decisions, &claims, &results);

    for msg in &settlements {
        let Body::SeedSettled(settlement) = &msg.body else {
            continue;
        };
        let verdict = apply_settlement(&mut v, msg, settlement);
        verdicts.insert(msg.id.clone(), verdict);
    }

    for msg in rest() {
        if matches!(verdicts.get(&msg.id), Some(Verdict::Applied)) {
            v.updated_at = v.updated_at.max(msg.timestamp);
        }
    }
    Folded {
        view: Some(v),
        verdicts,
    }
}

/// The publisher's first decision after bidding, for every kind of seed: the first valid
/// award or cancellation of `decisions`, in the publisher's order, gets its verdict.
fn first_decision(
    v: &mut SeedView,
    verdicts: &mut BTreeMap<MessageId, Verdict>,
    decisions: &[&Message],
    rejected_bids: &HashSet<&BidId>,
) {
    for msg in decisions {
        if v.status != SeedStatus::Open || v.award.is_some() {
            break;
        }
        let verdict = match &msg.body {
            Body::BiddingClosed(award) => apply_award(v, msg, award, rejected_bids),
            Body::SeedCancelled(c) if c.after.is_none() => apply_cancel(v, msg),
            _ => continue,
        };
        verdicts.insert(msg.id.clone(), verdict);
    }
}

/// The lifecycle after the publisher's first decision ([`first_decision`]): round after round
/// of claim and result, ended under rules 2 by the publisher's deadline decisions
/// (reassignment, failure, late cancellation). A step taken in time beats the publisher's
/// decision; a step taken after its deadline loses to it. Every message of `decisions`,
/// `claims` and `results` gets a verdict.
fn lifecycle(
    v: &mut SeedView,
    verdicts: &mut BTreeMap<MessageId, Verdict>,
    decisions: &[&Message],
    claims: &[&Message],
    results: &[&Message],
) {
    let deadlines = v.seed.deadlines().copied();
    // 2. Rounds.
    let mut why: BTreeMap<&MessageId, Violation> = BTreeMap::new();
    let used = |verdicts: &BTreeMap<MessageId, Verdict>, m: &Message| verdicts.contains_key(&m.id);
    if let Some(d) = deadlines {
        loop {
            if v.status != SeedStatus::Open {
                break;
            }
            let Some(award) = &v.award else { break };
            let (Some(bid_id), Some(winner)) = (award.winner.clone(), award.winner_node.clone())
            else {
                break;
            };
            let round = award.round;
            let claim_deadline = award
                .round_started_at
                .saturating_add(d.claim_secs.saturating_mul(1000));
            let claim = claims.iter().copied().find(|m| {
                !used(verdicts, m)
                    && m.sender == winner
                    && matches!(&m.body, Body::SeedClaimed(c) if c.bid_id == bid_id)
            });
            if claim.is_none_or(|c| c.timestamp > claim_deadline) {
                // The winner did not claim in time: the publisher's first decision that ends
                // the round counts.
                let ended = decisions.iter().copied().find(|m| {
                    if used(verdicts, m) {
                        return false;
                    }
                    let ok = match &m.body {
                        Body::SeedCancelled(c) if c.after == Some(RoundEnd::Unclaimed) => Ok(()),
                        Body::SeedReassigned(r)
                            if r.round == round + 1 && r.after == RoundEnd::Unclaimed =>
                        {
                            check_reassignment(v, r)
                        }
                        _ => return false,
                    }
                    .and_then(|()| {
                        if m.sender != v.seed.publisher {
                            Err(not_publisher(v, Action::Reassign))
                        } else if m.timestamp < claim_deadline {
                            Err(invalid_decision(
                                v,
                                format!(
                                    "bidding is closed and the winner of round {round} may claim until {claim_deadline} (unix ms)"
                                ),
                            ))
                        } else {
                            Ok(())
                        }
                    });
                    match ok {
                        Ok(()) => true,
                        Err(reason) => {
                            why.entry(&m.id).or_insert(reason);
                            false
                        }
                    }
                });
                if let Some(m) = ended {
                    if let Some(c) = claim {
                        verdicts.insert(c.id.clone(), lapsed(v, c, round));
                    }
                    verdicts.insert(m.id.clone(), Verdict::Applied);
                    v.past_rounds.push(PastRound {
                        round,
                        winner: bid_id,
                        winner_node: winner,
                        claimed_at: None,
                        ended: RoundEnd::Unclaimed,
                        ended_at: m.timestamp,
                    });
                    end_round(v, m);
                    continue;
                }
            }
            let Some(c) = claim else { break };
            verdicts.insert(c.id.clone(), Verdict::Applied);
            v.status = SeedStatus::Claimed;
            v.claim = Some(ClaimView {
                claimer: winner.clone(),
                bid_id: bid_id.clone(),
                claimed_at: c.timestamp,
            });
            let result_deadline = v.result_deadline().unwrap_or(Millis::MAX);
            let result = results
                .iter()
                .copied()
                .find(|m| !used(verdicts, m) && m.sender == winner);
            if result.is_some_and(|r| r.timestamp <= result_deadline) {
                break;
            }
            // No result in time: the publisher's failure of this round counts.
            let failure = decisions.iter().copied().find(|m| {
                if used(verdicts, m) {
                    return false;
                }
                let Body::SeedFailed(f) = &m.body else {
                    return false;
                };
                if f.round != round {
                    return false;
                }
                let reason = if m.sender != v.seed.publisher {
                    not_publisher(v, Action::Fail)
                } else if m.timestamp < result_deadline {
                    invalid_decision(
                        v,
                        format!(
                            "the claimer of round {round} has until {result_deadline} (unix ms) to report"
                        ),
                    )
                } else {
                    return true;
                };
                why.entry(&m.id).or_insert(reason);
                false
            });
            let Some(f) = failure else { break };
            if let Some(r) = result {
                verdicts.insert(r.id.clone(), lapsed(v, r, round));
            }
            verdicts.insert(f.id.clone(), Verdict::Applied);
            v.status = SeedStatus::Failed;
            v.failed_at = Some(f.timestamp);
            // After a failure the publisher may reassign or cancel, at any time.
            let next = decisions.iter().copied().find(|m| {
                if used(verdicts, m) || m.sender != v.seed.publisher {
                    return false;
                }
                match &m.body {
                    Body::SeedCancelled(c) => c.after == Some(RoundEnd::Failed),
                    Body::SeedReassigned(r)
                        if r.round == round + 1 && r.after == RoundEnd::Failed =>
                    {
                        match check_reassignment(v, r) {
                            Ok(()) => true,
                            Err(reason) => {
                                why.entry(&m.id).or_insert(reason);
                                false
                            }
                        }
                    }
                    _ => false,
                }
            });
            let Some(m) = next else { break };
            verdicts.insert(m.id.clone(), Verdict::Applied);
            v.past_rounds.push(PastRound {
                round,
                winner: bid_id,
                winner_node: winner,
                claimed_at: Some(c.timestamp),
                ended: RoundEnd::Failed,
                ended_at: f.timestamp,
            });
            v.claim = None;
            v.failed_at = None;
            v.status = SeedStatus::Open;
            end_round(v, m);
        }
    }
    // 3. The current round's claim and result (rules 1: the only round).
    current_round(v, verdicts, claims, |v, msg| {
        let Body::SeedClaimed(claim) = &msg.body else {
            return None;
        };
        Some(match claim_check(v, &msg.sender) {
            Err(verdict) => verdict,
            Ok(winning) if winning != claim.bid_id => rejected(Violation::NotWinningBidder {
                seed_id: v.seed.id.clone(),
                node: msg.sender.clone(),
            }),
            Ok(winning) => {
                v.status = SeedStatus::Claimed;
                v.claim = Some(ClaimView {
                    claimer: msg.sender.clone(),
                    bid_id: winning,
                    claimed_at: msg.timestamp,
                });
                Verdict::Applied
            }
        })
    });
    current_round(v, verdicts, results, |v, msg| {
        let Body::ResultReported(result) = &msg.body else {
            return None;
        };
        Some(match run_check(v, &msg.sender) {
            Err(verdict) => verdict,
            Ok(()) => {
                v.status = SeedStatus::Completed;
                v.result = Some(result.clone());
                Verdict::Applied
            }
        })
    });
    // 4. Every decision that did not count says why.
    for msg in decisions {
        if used(verdicts, msg) {
            continue;
        }
        let verdict = match (&msg.body, deadlines) {
            (Body::SeedEscalated(_), _) => rejected(invalid_decision(
                v,
                "only replicated seeds (rules 3) escalate".into(),
            )),
            (body, _) if msg.sender != v.seed.publisher => rejected(not_publisher(
                v,
                match body {
                    Body::BiddingClosed(_) => Action::Close,
                    Body::SeedCancelled(_) => Action::Cancel,
                    Body::SeedFailed(_) => Action::Fail,
                    _ => Action::Reassign,
                },
            )),
            (Body::BiddingClosed(_), _) => rejected(if v.status == SeedStatus::Open {
                Violation::BiddingClosed {
                    seed_id: v.seed.id.clone(),
                }
            } else {
                wrong_status(v, Action::Close)
            }),
            (Body::SeedCancelled(_), None) => rejected(if v.status == SeedStatus::Open {
                Violation::BiddingClosed {
                    seed_id: v.seed.id.clone(),
                }
            } else {
                wrong_status(v, Action::Cancel)
            }),
            (Body::SeedReassigned(_) | Body::SeedFailed(_), None) => {
                rejected(Violation::NoDeadlines {
                    seed_id: v.seed.id.clone(),
                })
            }
            (body, Some(_)) => {
                let current = v.award.as_ref().map(|a| a.round);
                let action = match body {
                    Body::SeedCancelled(_) => Action::Cancel,
                    Body::SeedFailed(_) => Action::Fail,
                    _ => Action::Reassign,
                };
                let failed = v.status == SeedStatus::Failed;
                // A decision for a later round, or one that waits for the current round to
                // end the way it says, may still hold once the missing messages arrive.
                let later = match (body, current) {
                    (Body::SeedReassigned(r), Some(c)) if r.round > c + 1 => Some(r.round),
                    (Body::SeedFailed(f), Some(c)) if f.round > c => Some(f.round),
                    _ => None,
                };
                let waits = match (body, current) {
                    (Body::SeedReassigned(r), Some(c)) => {
                        r.round == c + 1 && r.after == RoundEnd::Failed && !failed
                    }
                    (Body::SeedFailed(f), Some(c)) => f.round == c && v.status == SeedStatus::Open,
                    (Body::SeedCancelled(cn), Some(_)) => {
                        cn.after == Some(RoundEnd::Failed) && !failed
                    }
                    (_, None) => true,
                    _ => false,
                };
                if let Some(reason) = why.remove(&msg.id) {
                    rejected(reason)
                } else if v.status.is_final() || v.status == SeedStatus::Completed {
                    rejected(wrong_status(v, action))
                } else if let Some(round) = later {
                    pending(Violation::RoundNotReached {
                        seed_id: v.seed.id.clone(),
                        round,
                    })
                } else if waits {
                    pending(wrong_status(v, action))
                } else {
                    rejected(wrong_status(v, action))
                }
            }
            (Body::SeedCreated(_) | Body::BidPlaced(_), _)
            | (Body::SeedClaimed(_) | Body::ResultReported(_) | Body::SeedSettled(_), None) => {
                unreachable!("only decisions are ranked with decisions")
            }
        };
        verdicts.insert(msg.id.clone(), verdict);
    }
}

/// Gives every message of `msgs` that has no verdict yet the one `step` finds for it in the
/// current round (`step` passes over a message of another kind with `None`), unless it is a
/// step of a past round's winner ([`past_winner`]).
fn current_round(
    v: &mut SeedView,
    verdicts: &mut BTreeMap<MessageId, Verdict>,
    msgs: &[&Message],
    step: impl Fn(&mut SeedView, &Message) -> Option<Verdict>,
) {
    for msg in msgs {
        if verdicts.contains_key(&msg.id) {
            continue;
        }
        let Some(verdict) = step(v, msg) else {
            continue;
        };
        let verdict = past_winner(v, msg).unwrap_or(verdict);
        verdicts.insert(msg.id.clone(), verdict);
    }
}

/// Ends the current round with the publisher's cancellation or reassignment `m`.
fn end_round(v: &mut SeedView, m: &Message) {
    match &m.body {
        Body::SeedCancelled(_) => {
            v.status = SeedStatus::Cancelled;
            v.cancelled_at = Some(m.timestamp);
        }
        Body::SeedReassigned(r) => {
            let next = r
                .winner
                .as_ref()
                .and_then(|id| v.bids.iter().find(|b| &b.bid.id == id))
                .map(|b| (b.bid.bidder.clone(), b.bid.price));
            let award = v.award.as_mut().expect("a reassigned seed was awarded");
            award.round = r.round;
            award.round_started_at = m.timestamp;
            award.winner = r.winner.clone();
            award.winner_node = next.as_ref().map(|(n, _)| n.clone());
            award.price = next.map(|(_, p)| p);
            v.status = if r.winner.is_some() {
                SeedStatus::Open
            } else {
                SeedStatus::Expired
            };
        }
        _ => unreachable!("only cancellations and reassignments end a round"),
    }
}

/// Checks that a reassignment names the bid the rules pick next.
fn check_reassignment(v: &SeedView, r: &crate::model::Reassignment) -> Result<(), Violation> {
    let next = v.next_winner().map(|b| b.bid.id.clone());
    if next == r.winner {
        Ok(())
    } else {
        Err(invalid_decision(
            v,
            match next {
                Some(b) => format!("the next winner must be the best remaining bid {b}"),
                None => "no bid is left, so the reassignment must name no winner".into(),
            },
        ))
    }
}

fn invalid_decision(v: &SeedView, reason: String) -> Violation {
    Violation::InvalidDecision {
        seed_id: v.seed.id.clone(),
        reason,
    }
}

fn lapsed(v: &SeedView, m: &Message, round: u32) -> Verdict {
    rejected(Violation::Lapsed {
        seed_id: v.seed.id.clone(),
        node: m.sender.clone(),
        round,
    })
}

/// A claim or result from the winner of an earlier round came after its round ended.
fn past_winner(v: &SeedView, m: &Message) -> Option<Verdict> {
    v.past_rounds
        .iter()
        .find(|r| r.winner_node == m.sender)
        .map(|r| lapsed(v, m, r.round))
}

fn rejected(reason: Violation) -> Verdict {
    Verdict::Rejected { reason }
}

fn pending(reason: Violation) -> Verdict {
    Verdict::Pending { reason }
}

fn wrong_status(v: &SeedView, action: Action) -> Violation {
    Violation::WrongStatus {
        seed_id: v.seed.id.clone(),
        status: v.status,
        action,
    }
}

fn not_publisher(v: &SeedView, action: Action) -> Violation {
    Violation::NotPublisher {
        seed_id: v.seed.id.clone(),
        publisher: v.seed.publisher.clone(),
        action,
    }
}

fn apply_bid(v: &mut SeedView, msg: &Message, bid: &Bid) -> Verdict {
    let seed = &v.seed;
    // Rules 1 seeds stored before this rule existed fold as they always did.
    if seed.rules >= crate::model::rules::V2 && msg.sender == seed.publisher {
        return rejected(Violation::OwnSeed {
            seed_id: seed.id.clone(),
        });
    }
    if bid.price < seed.min_price || bid.price > seed.max_price {
        return rejected(Violation::PriceOutOfRange {
            seed_id: seed.id.clone(),
            price: bid.price,
            min: seed.min_price,
            max: seed.max_price,
        });
    }
    if msg.timestamp < seed.created_at {
        return rejected(Violation::BidBeforePublication {
            seed_id: seed.id.clone(),
        });
    }
    if msg.timestamp > seed.window_end() {
        return rejected(Violation::BidWindowClosed {
            seed_id: seed.id.clone(),
            window_end: seed.window_end(),
        });
    }
    let view = BidView {
        bid: bid.clone(),
        placed_at: msg.timestamp,
    };
    let at = v
        .bids
        .partition_point(|b| (b.placed_at, &b.bid.id) <= (view.placed_at, &view.bid.id));
    v.bids.insert(at, view);
    Verdict::Applied
}

fn apply_cancel(v: &mut SeedView, msg: &Message) -> Verdict {
    if msg.sender != v.seed.publisher {
        return rejected(not_publisher(v, Action::Cancel));
    }
    if v.status != SeedStatus::Open || v.award.is_some() {
        return rejected(if v.award.is_some() && v.status == SeedStatus::Open {
            Violation::BiddingClosed {
                seed_id: v.seed.id.clone(),
            }
        } else {
            wrong_status(v, Action::Cancel)
        });
    }
    v.status = SeedStatus::Cancelled;
    v.cancelled_at = Some(msg.timestamp);
    Verdict::Applied
}

fn apply_award(
    v: &mut SeedView,
    msg: &Message,
    award: &Award,
    rejected_bids: &HashSet<&BidId>,
) -> Verdict {
    let seed_id = v.seed.id.clone();
    if msg.sender != v.seed.publisher {
        return rejected(not_publisher(v, Action::Close));
    }
    if v.status != SeedStatus::Open || v.award.is_some() {
        return rejected(if v.award.is_some() && v.status == SeedStatus::Open {
            Violation::BiddingClosed { seed_id }
        } else {
            wrong_status(v, Action::Close)
        });
    }
    let invalid = |reason: String| {
        rejected(Violation::InvalidAward {
            seed_id: seed_id.clone(),
            reason,
        })
    };
    if award.considered.len() > v.seed.max_bids as usize {
        return invalid(format!(
            "it considers {} bids, the limit is {}",
            award.considered.len(),
            v.seed.max_bids
        ));
    }
    let mut considered: Vec<&BidView> = Vec::with_capacity(award.considered.len());
    for id in &award.considered {
        if considered.iter().any(|b| &b.bid.id == id) {
            return invalid(format!("bid {id} is listed twice"));
        }
        match v.bids.iter().find(|b| &b.bid.id == id) {
            Some(b) => {
                if considered.iter().any(|c| c.bid.bidder == b.bid.bidder) {
                    return invalid(format!("two bids from node {}", b.bid.bidder));
                }
                considered.push(b);
            }
            None if rejected_bids.contains(id) => {
                return invalid(format!("bid {id} is not a valid bid"));
            }
            None => {
                return pending(Violation::MissingBid {
                    seed_id,
                    bid_id: id.clone(),
                });
            }
        }
    }
    let full = considered.len() == v.seed.max_bids as usize;
    if !full && msg.timestamp < v.seed.window_end() {
        return invalid(format!(
            "bidding closed before the window ended with only {} of {} bids",
            considered.len(),
            v.seed.max_bids
        ));
    }
    if let Some(rep) = v.seed.replication() {
        let expected = replicated::best_bids(considered.iter().copied(), rep.replicas as usize);
        if award.winners != expected {
            return invalid(format!(
                "the winners must be the {} best considered bids",
                rep.replicas
            ));
        }
    } else if !award.winners.is_empty() {
        return invalid("only replicated seeds (rules 3) have several winners".into());
    }
    let best = considered.iter().copied().min_by(|a, b| winner_order(a, b));
    if best.map(|b| &b.bid.id) != award.winner.as_ref() {
        return invalid(match best {
            Some(b) => format!("the winner must be the best bid {}", b.bid.id),
            None => "a winner is named but no bids are considered".into(),
        });
    }
    v.award = Some(AwardView {
        considered: award.considered.clone(),
        winner: award.winner.clone(),
        winner_node: best.map(|b| b.bid.bidder.clone()),
        price: best.map(|b| b.bid.price),
        closed_at: msg.timestamp,
        round: 0,
        round_started_at: msg.timestamp,
    });
    if best.is_none() {
        v.status = SeedStatus::Expired;
    }
    Verdict::Applied
}

/// Checks whether `node` may claim now; `Ok(winning bid)` or the reason (pending or final).
fn claim_check(v: &SeedView, node: &NodeId) -> Result<BidId, Verdict> {
    let seed_id = v.seed.id.clone();
    match v.status {
        SeedStatus::Open => {}
        SeedStatus::Expired | SeedStatus::Cancelled => {
            return Err(rejected(wrong_status(v, Action::Claim)));
        }
        _ => return Err(rejected(wrong_status(v, Action::Claim))),
    }
    let Some(award) = &v.award else {
        return Err(pending(Violation::BiddingOpen {
            seed_id,
            window_end: v.seed.window_end(),
            max_bids: v.seed.max_bids,
        }));
    };
    match (&award.winner, &award.winner_node) {
        (Some(bid), Some(winner)) if winner == node => Ok(bid.clone()),
        _ => Err(rejected(Violation::NotWinningBidder {
            seed_id,
            node: node.clone(),
        })),
    }
}

/// Checks whether `node` may run the seed / report its result now.
fn run_check(v: &SeedView, node: &NodeId) -> Result<(), Verdict> {
    let not_claimer = || {
        rejected(Violation::NotClaimer {
            seed_id: v.seed.id.clone(),
            node: node.clone(),
        })
    };
    match v.status {
        SeedStatus::Claimed => match &v.claim {
            Some(c) if &c.claimer == node => Ok(()),
            _ => Err(not_claimer()),
        },
        SeedStatus::Open => match v.award.as_ref().and_then(|a| a.winner_node.as_ref()) {
            Some(winner) if winner != node => Err(not_claimer()),
            _ => Err(pending(wrong_status(v, Action::Run))),
        },
        _ => Err(rejected(wrong_status(v, Action::Run))),
    }
}

fn apply_settlement(v: &mut SeedView, msg: &Message, settlement: &Settlement) -> Verdict {
    if msg.sender != v.seed.publisher {
        return rejected(not_publisher(v, Action::Settle));
    }
    match v.status {
        SeedStatus::Completed => {}
        SeedStatus::Open | SeedStatus::Claimed | SeedStatus::Failed => {
            return pending(wrong_status(v, Action::Settle));
        }
        _ => return rejected(wrong_status(v, Action::Settle)),
    }
    let expected = if v.seed.replication().is_some() {
        match replicated::check_payment(v, settlement) {
            Ok(amount) => amount,
            Err(reason) => return rejected(reason),
        }
    } else if !settlement.paid.is_empty() {
        return rejected(Violation::InvalidPayment {
            seed_id: v.seed.id.clone(),
            reason: "only replicated seeds (rules 3) name the runners paid".into(),
        });
    } else {
        match settlement.outcome {
            SettlementOutcome::Accepted => v.award.as_ref().and_then(|a| a.price).unwrap_or(0),
            SettlementOutcome::Rejected => 0,
        }
    };
    if settlement.amount != expected {
        return rejected(Violation::WrongAmount {
            seed_id: v.seed.id.clone(),
            expected,
            got: settlement.amount,
        });
    }
    v.status = SeedStatus::Settled;
    v.settlement = Some(SettlementView {
        settlement: settlement.clone(),
        settled_at: msg.timestamp,
    });
    Verdict::Applied
}

/// Checks that `node` may place a new bid at `now`, beyond what [`fold`] checks for any bid:
/// bidding must not be closed, the node must not be the seed's publisher (under any rules) and
/// the bid limit must not be reached.
pub fn check_local_bid(v: &SeedView, node: &NodeId, now: Millis) -> Result<(), Violation> {
    let seed_id = v.seed.id.clone();
    if v.status != SeedStatus::Open {
        return Err(wrong_status(v, Action::Bid));
    }
    if v.award.is_some() {
        return Err(Violation::BiddingClosed { seed_id });
    }
    if now > v.seed.window_end() {
        return Err(Violation::BidWindowClosed {
            seed_id,
            window_end: v.seed.window_end(),
        });
    }
    if node == &v.seed.publisher {
        return Err(Violation::OwnSeed { seed_id });
    }
    if v.bids.iter().any(|b| &b.bid.bidder == node) {
        return Err(Violation::AlreadyBid {
            seed_id,
            bidder: node.clone(),
        });
    }
    if v.bids.len() >= v.seed.max_bids as usize {
        return Err(Violation::BidLimitReached {
            seed_id,
            max_bids: v.seed.max_bids,
        });
    }
    Ok(())
}

/// Checks that `node` may claim the seed at `now` (under rules 2, within the claim window);
/// returns the winning bid.
pub fn check_local_claim(v: &SeedView, node: &NodeId, now: Millis) -> Result<BidId, Violation> {
    if v.seed.replication().is_some() {
        return replicated::check_local_claim(v, node, now);
    }
    let bid = claim_check(v, node).map_err(verdict_reason)?;
    match v.claim_deadline() {
        Some(deadline) if now > deadline => Err(Violation::DeadlinePassed {
            seed_id: v.seed.id.clone(),
            action: Action::Claim,
            deadline,
        }),
        _ => Ok(bid),
    }
}

/// Checks that this node, the publisher, may start the next round now: the current round
/// failed, or its winner let the claim window pass (rules 2).
pub fn check_local_reassign(v: &SeedView, node: &NodeId, now: Millis) -> Result<(), Violation> {
    if node != &v.seed.publisher {
        return Err(not_publisher(v, Action::Reassign));
    }
    if v.seed.deadlines().is_none() {
        return Err(Violation::NoDeadlines {
            seed_id: v.seed.id.clone(),
        });
    }
    if v.seed.replication().is_some() {
        return Err(invalid_decision(
            v,
            "a replicated seed is not reassigned: its publisher's node escalates it".into(),
        ));
    }
    match (v.status, v.claim_deadline()) {
        (SeedStatus::Failed, _) => Ok(()),
        (SeedStatus::Open, Some(deadline)) if now >= deadline => Ok(()),
        (SeedStatus::Open, Some(deadline)) => Err(invalid_decision(
            v,
            format!("the winner may claim until {deadline} (unix ms)"),
        )),
        _ => Err(wrong_status(v, Action::Reassign)),
    }
}

/// Checks that `node` may run the seed now (it is claimed by `node`).
pub fn check_local_run(v: &SeedView, node: &NodeId) -> Result<(), Violation> {
    if v.seed.replication().is_some() {
        return replicated::check_local_run(v, node);
    }
    run_check(v, node).map_err(verdict_reason)
}

fn verdict_reason(v: Verdict) -> Violation {
    match v {
        Verdict::Pending { reason } | Verdict::Rejected { reason } => reason,
        Verdict::Applied => unreachable!("only failed checks carry a reason"),
    }
}

/// A stable digest of a set of seed views, equal on replicas (of one version) that hold the
/// same state: SHA-256 over each view's [`view_hash`], in seed id order. A store keeps each
/// seed's hash with its state, so that its digest reads 32 bytes a seed, not every state.
pub fn digest<'a>(views: impl IntoIterator<Item = &'a SeedView>) -> String {
    let mut sorted: Vec<&SeedView> = views.into_iter().collect();
    sorted.sort_by(|a, b| a.seed.id.cmp(&b.seed.id));
    digest_of_hashes(
        sorted
            .into_iter()
            .map(|v| view_hash(&serde_json::to_vec(v).expect("views serialize"))),
    )
}

/// What one seed adds to [`digest`]: SHA-256 over its state's canonical JSON (as `serde_json`
/// writes a [`SeedView`]), its length first.
pub fn view_hash(json: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update((json.len() as u64).to_be_bytes());
    hasher.update(json);
    hasher.finalize().into()
}

/// [`digest`] of the seeds whose [`view_hash`]es are `hashes`, in seed id order.
pub fn digest_of_hashes(hashes: impl IntoIterator<Item = [u8; 32]>) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for hash in hashes {
        hasher.update(hash);
    }
    hex::encode(hasher.finalize())
}

/// When a seed ended (Unix ms, the timestamp of the message that ended it), or `None` while it
/// may still change: settled (the settlement), cancelled (the cancellation), expired (the
/// award or reassignment that left no winner) and failed (the failure; under rules 2 the
/// publisher may still reassign or cancel a failed seed, and retention ends that chance).
pub fn ended_at(view: &SeedView) -> Option<Millis> {
    let at = match view.status {
        SeedStatus::Open | SeedStatus::Claimed | SeedStatus::Completed => return None,
        SeedStatus::Settled => view.settlement.as_ref().map(|s| s.settled_at),
        SeedStatus::Cancelled => view.cancelled_at,
        SeedStatus::Failed => view.failed_at,
        SeedStatus::Inconclusive => view.inconclusive_at,
        SeedStatus::Expired => view.award.as_ref().map(|a| a.round_started_at),
    };
    Some(at.unwrap_or(view.updated_at))
}

/// Convenience for simulations: folds messages of many seeds, one state per seed.
pub fn fold_all<'a>(messages: impl IntoIterator<Item = &'a Message>) -> BTreeMap<SeedId, Folded> {
    let mut by_seed: BTreeMap<SeedId, Vec<&Message>> = BTreeMap::new();
    for m in messages {
        by_seed.entry(m.seed_id().clone()).or_default().push(m);
    }
    by_seed
        .into_iter()
        .map(|(id, msgs)| (id, fold(msgs)))
        .collect()
}
