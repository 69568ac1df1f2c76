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
    Award, Bid, BidId, Body, Message, MessageId, MessageKind, Millis, NodeId, Seed, SeedId,
    SeedStatus, Settlement, SettlementOutcome, TaskResult,
};

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
    pub winner: Option<BidId>,
    /// The winning bidder, if any.
    pub winner_node: Option<NodeId>,
    /// The winning price, if any.
    pub price: Option<u64>,
    /// When bidding closed (Unix ms).
    pub closed_at: Millis,
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
    pub award: Option<AwardView>,
    /// The winner's claim.
    pub claim: Option<ClaimView>,
    /// The claimer's result.
    pub result: Option<TaskResult>,
    /// The publisher's settlement.
    pub settlement: Option<SettlementView>,
    /// When the publisher cancelled it (Unix ms).
    pub cancelled_at: Option<Millis>,
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
        })
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
        MessageKind::BiddingClosed | MessageKind::SeedCancelled => 2,
        MessageKind::SeedClaimed => 3,
        MessageKind::ResultReported => 4,
        MessageKind::SeedSettled => 5,
    }
}

/// Computes the state of one seed from every message about it, in any order, with
/// duplicates. All messages must concern the same seed.
pub fn fold<'a>(messages: impl IntoIterator<Item = &'a Message>) -> Folded {
    let mut msgs: Vec<&Message> = messages.into_iter().collect();
    msgs.sort_by(|a, b| {
        (kind_rank(a.kind()), a.order_key()).cmp(&(kind_rank(b.kind()), b.order_key()))
    });
    msgs.dedup_by(|a, b| a.id == b.id);

    let mut verdicts = BTreeMap::new();
    let mut view: Option<SeedView> = None;
    let mut rejected_bids: HashSet<&BidId> = HashSet::new();
    let mut first_creation: Option<&MessageId> = None;

    for msg in &msgs {
        let verdict = match msg.check_well_formed() {
            Err(reason) => Verdict::Rejected {
                reason: Violation::Malformed { reason },
            },
            Ok(()) => match (&msg.body, view.as_mut()) {
                (Body::SeedCreated(seed), None) => {
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
                        updated_at: msg.timestamp,
                    });
                    Verdict::Applied
                }
                (Body::SeedCreated(seed), Some(_)) => Verdict::Rejected {
                    reason: Violation::DuplicateSeed {
                        seed_id: seed.id.clone(),
                        first: first_creation.cloned().expect("creation recorded"),
                    },
                },
                (body, None) => Verdict::Pending {
                    reason: Violation::UnknownSeed {
                        seed_id: body.seed_id().clone(),
                    },
                },
                (Body::BidPlaced(bid), Some(v)) => {
                    let verdict = apply_bid(v, msg, bid);
                    if !matches!(verdict, Verdict::Applied) {
                        rejected_bids.insert(&bid.id);
                    }
                    verdict
                }
                (Body::BiddingClosed(award), Some(v)) => apply_award(v, msg, award, &rejected_bids),
                (Body::SeedCancelled(_), Some(v)) => apply_cancel(v, msg),
                (Body::SeedClaimed(claim), Some(v)) => apply_claim(v, msg, &claim.bid_id),
                (Body::ResultReported(result), Some(v)) => apply_result(v, msg, result),
                (Body::SeedSettled(settlement), Some(v)) => apply_settlement(v, msg, settlement),
            },
        };
        if matches!(verdict, Verdict::Applied)
            && let Some(v) = view.as_mut()
        {
            v.updated_at = v.updated_at.max(msg.timestamp);
        }
        verdicts.insert(msg.id.clone(), verdict);
    }
    Folded { view, verdicts }
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

fn apply_claim(v: &mut SeedView, msg: &Message, bid_id: &BidId) -> Verdict {
    match claim_check(v, &msg.sender) {
        Err(verdict) => verdict,
        Ok(winning) if &winning != bid_id => rejected(Violation::NotWinningBidder {
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

fn apply_result(v: &mut SeedView, msg: &Message, result: &TaskResult) -> Verdict {
    if let Err(verdict) = run_check(v, &msg.sender) {
        return verdict;
    }
    v.status = SeedStatus::Completed;
    v.result = Some(result.clone());
    Verdict::Applied
}

fn apply_settlement(v: &mut SeedView, msg: &Message, settlement: &Settlement) -> Verdict {
    if msg.sender != v.seed.publisher {
        return rejected(not_publisher(v, Action::Settle));
    }
    match v.status {
        SeedStatus::Completed => {}
        SeedStatus::Open | SeedStatus::Claimed => {
            return pending(wrong_status(v, Action::Settle));
        }
        _ => return rejected(wrong_status(v, Action::Settle)),
    }
    let expected = match settlement.outcome {
        SettlementOutcome::Accepted => v.award.as_ref().and_then(|a| a.price).unwrap_or(0),
        SettlementOutcome::Rejected => 0,
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
/// bidding must not be closed and the bid limit must not be reached.
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

/// Checks that `node` may claim the seed now; returns the winning bid.
pub fn check_local_claim(v: &SeedView, node: &NodeId) -> Result<BidId, Violation> {
    claim_check(v, node).map_err(verdict_reason)
}

/// Checks that `node` may run the seed now (it is claimed by `node`).
pub fn check_local_run(v: &SeedView, node: &NodeId) -> Result<(), Violation> {
    run_check(v, node).map_err(verdict_reason)
}

fn verdict_reason(v: Verdict) -> Violation {
    match v {
        Verdict::Pending { reason } | Verdict::Rejected { reason } => reason,
        Verdict::Applied => unreachable!("only failed checks carry a reason"),
    }
}

/// A stable digest of a set of seed views (SHA-256 over their canonical JSON, in seed id
/// order), equal on replicas that hold the same state.
pub fn digest<'a>(views: impl IntoIterator<Item = &'a SeedView>) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&SeedView> = views.into_iter().collect();
    sorted.sort_by(|a, b| a.seed.id.cmp(&b.seed.id));
    let mut hasher = Sha256::new();
    for v in sorted {
        let json = serde_json::to_vec(v).expect("views serialize");
        hasher.update((json.len() as u64).to_be_bytes());
        hasher.update(&json);
    }
    hex::encode(hasher.finalize())
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
