//! Replicated execution (rules 3): the award names `replicas` runners, each claims and runs
//! on its own, and results are compared by [`ResultKey`] (output hash and exit code). Once
//! `quorum` agree the seed completes with that result; without a quorum the publisher's node
//! escalates (awards the next best bids) or ends the seed `inconclusive`. Everything here is
//! a function of the seed's message set, like the rest of [`super::fold`]; the rules are in
//! `docs/PROTOCOL.md`, section 3b.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    Action, BidView, ClaimView, DECISION_MARGIN_MS, SeedView, Verdict, Violation, invalid_decision,
    not_publisher, pending, rejected, winner_order, wrong_status,
};
use crate::model::{
    BidId, Body, Deadlines, Escalation, Message, MessageId, Millis, NodeId, Replication, ResultKey,
    SeedStatus, Settlement, SettlementOutcome, TaskResult,
};

/// Where one replica of a replicated seed stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaStanding {
    /// Awarded, not claimed yet.
    Awarded,
    /// Claimed, no result yet.
    Claimed,
    /// Reported a result; no quorum (yet).
    Reported,
    /// Its result agrees with the quorum.
    Agreed,
    /// Its result differs from the quorum's.
    Dissented,
    /// It let its claim or result deadline pass and an escalation ended its turn.
    Lapsed,
}

impl ReplicaStanding {
    /// The standing's name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaStanding::Awarded => "awarded",
            ReplicaStanding::Claimed => "claimed",
            ReplicaStanding::Reported => "reported",
            ReplicaStanding::Agreed => "agreed",
            ReplicaStanding::Dissented => "dissented",
            ReplicaStanding::Lapsed => "lapsed",
        }
    }
}

/// One awarded runner of a replicated seed (rules 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaView {
    /// The awarded bid.
    pub bid_id: BidId,
    /// Its bidder, the runner.
    pub runner: NodeId,
    /// Its price.
    pub price: u64,
    /// 0 when the award named it, `n` when the `n`-th escalation did.
    pub step: u32,
    /// When it was awarded (the award's or the escalation's time, Unix ms).
    pub assigned_at: Millis,
    /// When it claimed (Unix ms).
    #[schema(required)]
    pub claimed_at: Option<Millis>,
    /// When it reported (the result message's time, Unix ms).
    #[schema(required)]
    pub reported_at: Option<Millis>,
    /// The claim message that counts for it.
    #[schema(required)]
    pub claim_message: Option<MessageId>,
    /// The result message that counts for it.
    #[schema(required)]
    pub result_message: Option<MessageId>,
    /// Its result.
    #[schema(required)]
    pub result: Option<TaskResult>,
    /// Where it stands.
    pub standing: ReplicaStanding,
}

impl ReplicaView {
    fn timing(&self) -> Timing {
        Timing {
            assigned_at: self.assigned_at,
            claimed_at: self.claimed_at,
            reported_at: self.reported_at,
        }
    }
}

/// The times that decide whether a replica acted in time.
struct Timing {
    assigned_at: Millis,
    claimed_at: Option<Millis>,
    reported_at: Option<Millis>,
}

impl Timing {
    fn claim_deadline(&self, d: &Deadlines) -> Millis {
        self.assigned_at
            .saturating_add(d.claim_secs.saturating_mul(1000))
    }

    fn claimed_in_time(&self, d: &Deadlines) -> bool {
        self.claimed_at.is_some_and(|c| c <= self.claim_deadline(d))
    }

    fn result_deadline(&self, d: &Deadlines, timeout_secs: u64) -> Option<Millis> {
        self.claimed_at.map(|c| {
            c.saturating_add(
                timeout_secs
                    .saturating_add(d.result_grace_secs)
                    .saturating_mul(1000),
            )
        })
    }

    /// Whether it claimed and reported, both in time.
    fn reported_in_time(&self, d: &Deadlines, timeout_secs: u64) -> bool {
        self.claimed_in_time(d)
            && matches!(
                (self.reported_at, self.result_deadline(d, timeout_secs)),
                (Some(r), Some(dl)) if r <= dl
            )
    }

    /// The deadline after which an escalation may end this replica's turn: the result
    /// deadline once it claimed in time, the claim deadline otherwise.
    fn deadline(&self, d: &Deadlines, timeout_secs: u64) -> Millis {
        if self.claimed_in_time(d) {
            self.result_deadline(d, timeout_secs).unwrap_or(Millis::MAX)
        } else {
            self.claim_deadline(d)
        }
    }
}

/// The `n` best of `bids` by the winner rule, best first.
pub(super) fn best_bids<'a>(bids: impl IntoIterator<Item = &'a BidView>, n: usize) -> Vec<BidId> {
    let mut sorted: Vec<&BidView> = bids.into_iter().collect();
    sorted.sort_by(|a, b| winner_order(a, b));
    sorted
        .into_iter()
        .take(n)
        .map(|b| b.bid.id.clone())
        .collect()
}

/// A replica during the fold.
struct Slot<'a> {
    bid: BidId,
    runner: NodeId,
    price: u64,
    step: u32,
    start: Millis,
    claim: Option<&'a Message>,
    result: Option<&'a Message>,
    lapsed: bool,
}

impl Slot<'_> {
    fn timing(&self) -> Timing {
        Timing {
            assigned_at: self.start,
            claimed_at: self.claim.map(|m| m.timestamp),
            reported_at: self.result.map(|m| m.timestamp),
        }
    }

    fn key(&self) -> Option<ResultKey> {
        match self.result.map(|m| &m.body) {
            Some(Body::ResultReported(r)) => Some(r.key()),
            _ => None,
        }
    }
}

/// Result keys and the replicas (indices) that reported them, in replica order.
type Groups = BTreeMap<ResultKey, Vec<usize>>;

/// The key at least `quorum` replicas agree on. By the bound `2 * quorum > replicas` and the
/// escalation rule at most one key can reach it; should two ever, the larger group, then the
/// one with the earliest replica wins.
fn quorum_key(groups: &Groups, quorum: u32) -> Option<&ResultKey> {
    groups
        .iter()
        .filter(|(_, ix)| ix.len() >= quorum as usize)
        .min_by_key(|(_, ix)| (std::cmp::Reverse(ix.len()), ix[0]))
        .map(|(k, _)| k)
}

/// The winners the next escalation must name, given the results that count: as many of the
/// next best considered bids (bidders not awarded yet) as the largest group lacks to the
/// quorum, or none when too few are left or `max_replicas` would be exceeded.
fn expected_winners<'b>(
    v: &'b SeedView,
    rep: &Replication,
    awarded: impl IntoIterator<Item = &'b NodeId>,
    largest_group: usize,
) -> Vec<BidId> {
    let need = (rep.quorum as usize).saturating_sub(largest_group);
    let had: HashSet<&NodeId> = awarded.into_iter().collect();
    if had.len() + need > rep.max_replicas as usize {
        return Vec::new();
    }
    let Some(award) = &v.award else {
        return Vec::new();
    };
    let left = award
        .considered
        .iter()
        .filter_map(|id| v.bids.iter().find(|b| &b.bid.id == id))
        .filter(|b| !had.contains(&b.bid.bidder));
    let next = best_bids(left, need);
    if next.len() < need { Vec::new() } else { next }
}

/// The lifecycle of a replicated seed after the publisher's first decision
/// ([`super::first_decision`], step 1); every message of `decisions`, `claims` and `results`
/// gets a verdict.
pub(super) fn lifecycle(
    v: &mut SeedView,
    verdicts: &mut BTreeMap<MessageId, Verdict>,
    decisions: &[&Message],
    claims: &[&Message],
    results: &[&Message],
) {
    let rep = *v.seed.replication().expect("called for replicated seeds");
    let d = *v.seed.deadlines().expect("rules 3 seeds carry deadlines");
    let timeout = v.seed.timeout_secs;
    // 2. The awarded replicas, escalation after escalation.
    let mut slots: Vec<Slot<'_>> = Vec::new();
    if let Some(award) = &v.award
        && v.status == SeedStatus::Open
    {
        let considered = award
            .considered
            .iter()
            .filter_map(|id| v.bids.iter().find(|b| &b.bid.id == id));
        for id in best_bids(considered, rep.replicas as usize) {
            let b = v.bids.iter().find(|b| b.bid.id == id).expect("a known bid");
            slots.push(Slot {
                bid: id,
                runner: b.bid.bidder.clone(),
                price: b.bid.price,
                step: 0,
                start: award.closed_at,
                claim: None,
                result: None,
                lapsed: false,
            });
        }
    }
    let mut step = 0;
    // Why each escalation that was looked at did not hold, and whether it may still.
    let mut why: BTreeMap<&MessageId, (Violation, bool)> = BTreeMap::new();
    while !slots.is_empty() {
        attach(&mut slots, claims, results);
        // The escalation for the next step, judged only by what it names (section 3b): so
        // claims and results that arrive after it, whatever their dates, cannot undo it.
        let next = decisions.iter().copied().find_map(|m| {
            if verdicts.contains_key(&m.id) {
                return None;
            }
            let Body::SeedEscalated(e) = &m.body else {
                return None;
            };
            if e.step != step + 1 {
                return None;
            }
            let checked = if m.sender != v.seed.publisher {
                Err((not_publisher(v, Action::Escalate), false))
            } else {
                check_escalation(v, &rep, &d, timeout, &slots, m, e, claims, results)
                    .map_err(|(reason, may_hold)| (invalid_decision(v, reason), may_hold))
            };
            match checked {
                Ok(basis) => Some((m, e, basis)),
                Err(reason) => {
                    why.entry(&m.id).or_insert(reason);
                    None
                }
            }
        });
        let Some((m, e, basis)) = next else { break };
        verdicts.insert(m.id.clone(), Verdict::Applied);
        for (s, seen) in slots.iter_mut().filter(|s| !s.lapsed).zip(basis) {
            if seen.counted {
                // The replica counts with the claim and result the escalation names.
                s.claim = seen.claim;
                s.result = seen.result;
                continue;
            }
            s.lapsed = true;
            let t = s.timing();
            let lapsed = |msg: &Message| {
                rejected(Violation::Lapsed {
                    seed_id: v.seed.id.clone(),
                    node: msg.sender.clone(),
                    round: s.step,
                })
            };
            if let Some(c) = s.claim {
                let verdict = if t.claimed_in_time(&d) {
                    Verdict::Applied
                } else {
                    lapsed(c)
                };
                verdicts.insert(c.id.clone(), verdict);
            }
            if let Some(r) = s.result {
                verdicts.insert(r.id.clone(), lapsed(r));
            }
        }
        step = e.step;
        if e.winners.is_empty() {
            v.status = SeedStatus::Inconclusive;
            v.inconclusive_at = Some(m.timestamp);
            break;
        }
        for id in &e.winners {
            let b = v
                .bids
                .iter()
                .find(|b| &b.bid.id == id)
                .expect("an expected bid");
            slots.push(Slot {
                bid: id.clone(),
                runner: b.bid.bidder.clone(),
                price: b.bid.price,
                step,
                start: m.timestamp,
                claim: None,
                result: None,
                lapsed: false,
            });
        }
    }
    // 3. The live replicas' steps count, late ones too (no escalation ended their turn).
    for s in slots.iter().filter(|s| !s.lapsed) {
        for m in s.claim.iter().chain(&s.result) {
            verdicts.insert(m.id.clone(), Verdict::Applied);
        }
    }
    let all: Groups = groups(slots.iter().enumerate().filter(|(_, s)| !s.lapsed));
    let quorum = match v.status {
        SeedStatus::Inconclusive => None,
        _ => quorum_key(&all, rep.quorum).cloned(),
    };
    // A replica's claim makes the seed claimed for good (an escalation may end the replica's
    // turn, not its claim), so the status never goes back to open.
    if matches!(v.status, SeedStatus::Open) && !slots.is_empty() {
        if quorum.is_some() {
            v.status = SeedStatus::Completed;
        } else if slots
            .iter()
            .any(|s| s.claim.is_some() && (!s.lapsed || s.timing().claimed_in_time(&d)))
        {
            v.status = SeedStatus::Claimed;
        }
    }
    if let Some(k) = &quorum {
        let first = all[k][0];
        if let Some(Body::ResultReported(r)) = slots[first].result.map(|m| &m.body) {
            v.result = Some(r.clone());
        }
    }
    v.claim = slots
        .iter()
        .find(|s| !s.lapsed && s.claim.is_some())
        .map(|s| ClaimView {
            claimer: s.runner.clone(),
            bid_id: s.bid.clone(),
            claimed_at: s.claim.map_or(0, |c| c.timestamp),
        });
    v.replicas = slots
        .iter()
        .map(|s| ReplicaView {
            bid_id: s.bid.clone(),
            runner: s.runner.clone(),
            price: s.price,
            step: s.step,
            assigned_at: s.start,
            claimed_at: s.claim.map(|m| m.timestamp),
            reported_at: s.result.map(|m| m.timestamp),
            claim_message: s.claim.map(|m| m.id.clone()),
            result_message: s.result.map(|m| m.id.clone()),
            result: match s.result.map(|m| &m.body) {
                Some(Body::ResultReported(r)) => Some(r.clone()),
                _ => None,
            },
            standing: match (s.lapsed, s.key(), &quorum) {
                (true, _, _) => ReplicaStanding::Lapsed,
                (false, Some(k), Some(q)) if &k == q => ReplicaStanding::Agreed,
                (false, Some(_), Some(_)) => ReplicaStanding::Dissented,
                (false, Some(_), None) => ReplicaStanding::Reported,
                (false, None, _) if s.claim.is_some() => ReplicaStanding::Claimed,
                (false, None, _) => ReplicaStanding::Awarded,
            },
        })
        .collect();
    // 4. Everything that did not count says why.
    let final_or_done = v.status.is_final() || v.status == SeedStatus::Completed;
    let slot_of = |node: &NodeId| slots.iter().find(|s| &s.runner == node);
    for msg in unanswered(verdicts, claims) {
        let Body::SeedClaimed(c) = &msg.body else {
            continue;
        };
        let verdict = match slot_of(&msg.sender) {
            _ if v.award.is_none() && !v.status.is_final() => pending(Violation::BiddingOpen {
                seed_id: v.seed.id.clone(),
                window_end: v.seed.window_end(),
                max_bids: v.seed.max_bids,
            }),
            Some(s) if s.lapsed => lapsed_verdict(v, msg, s.step),
            Some(s) if s.bid == c.bid_id => rejected(wrong_status(v, Action::Claim)),
            _ if v.status.is_final() => rejected(wrong_status(v, Action::Claim)),
            _ => rejected(Violation::NotWinningBidder {
                seed_id: v.seed.id.clone(),
                node: msg.sender.clone(),
            }),
        };
        verdicts.insert(msg.id.clone(), verdict);
    }
    for msg in unanswered(verdicts, results) {
        let verdict = match slot_of(&msg.sender) {
            Some(s) if s.lapsed => lapsed_verdict(v, msg, s.step),
            Some(s) if s.claim.is_none() && !v.status.is_final() => {
                pending(wrong_status(v, Action::Run))
            }
            Some(_) => rejected(wrong_status(v, Action::Run)),
            None if v.award.is_none() && !v.status.is_final() => {
                pending(wrong_status(v, Action::Run))
            }
            None => rejected(Violation::NotClaimer {
                seed_id: v.seed.id.clone(),
                node: msg.sender.clone(),
            }),
        };
        verdicts.insert(msg.id.clone(), verdict);
    }
    for msg in unanswered(verdicts, decisions) {
        let action = match &msg.body {
            Body::BiddingClosed(_) => Action::Close,
            Body::SeedCancelled(_) => Action::Cancel,
            Body::SeedFailed(_) => Action::Fail,
            Body::SeedReassigned(_) => Action::Reassign,
            _ => Action::Escalate,
        };
        let verdict = if msg.sender != v.seed.publisher {
            rejected(not_publisher(v, action))
        } else {
            match &msg.body {
                Body::BiddingClosed(_) if v.status == SeedStatus::Open => {
                    rejected(Violation::BiddingClosed {
                        seed_id: v.seed.id.clone(),
                    })
                }
                Body::SeedCancelled(c) if c.after.is_none() && v.status == SeedStatus::Open =>
                {
                    rejected(Violation::BiddingClosed {
                        seed_id: v.seed.id.clone(),
                    })
                }
                Body::SeedEscalated(e) => match why.remove(&msg.id) {
                    Some((reason, true)) => pending(reason),
                    Some((reason, false)) => rejected(reason),
                    None if final_or_done => rejected(wrong_status(v, action)),
                    None if v.award.is_none() || e.step > step + 1 => {
                        pending(Violation::RoundNotReached {
                            seed_id: v.seed.id.clone(),
                            round: e.step,
                        })
                    }
                    None => rejected(wrong_status(v, action)),
                },
                Body::SeedCancelled(_) | Body::SeedReassigned(_) | Body::SeedFailed(_) => {
                    rejected(invalid_decision(
                        v,
                        "a replicated seed is not reassigned, failed or cancelled after its award: its publisher escalates it".into(),
                    ))
                }
                _ => rejected(wrong_status(v, action)),
            }
        };
        verdicts.insert(msg.id.clone(), verdict);
    }
}

/// The messages of `msgs` that have no verdict yet (ids are unique: fold drops duplicates).
fn unanswered<'m>(
    verdicts: &BTreeMap<MessageId, Verdict>,
    msgs: &[&'m Message],
) -> Vec<&'m Message> {
    msgs.iter()
        .copied()
        .filter(|m| !verdicts.contains_key(&m.id))
        .collect()
}

fn lapsed_verdict(v: &SeedView, m: &Message, round: u32) -> Verdict {
    rejected(Violation::Lapsed {
        seed_id: v.seed.id.clone(),
        node: m.sender.clone(),
        round,
    })
}

/// What an escalation says about one live replica: the claim and result its publisher held,
/// and whether that replica counts (claimed and reported in time) or lapses.
struct Seen<'a> {
    claim: Option<&'a Message>,
    result: Option<&'a Message>,
    counted: bool,
}

/// Checks escalation `e` (message `m`) against the live replicas and the claims and results it
/// names in `seen`, nothing else; returns, per live replica in order, what it saw. An error
/// says why it does not hold, and whether it may still (a named message has not arrived).
#[allow(clippy::too_many_arguments)]
fn check_escalation<'a>(
    v: &SeedView,
    rep: &Replication,
    d: &Deadlines,
    timeout: u64,
    slots: &[Slot<'a>],
    m: &Message,
    e: &Escalation,
    claims: &[&'a Message],
    results: &[&'a Message],
) -> Result<Vec<Seen<'a>>, (String, bool)> {
    let live: Vec<&Slot<'a>> = slots.iter().filter(|s| !s.lapsed).collect();
    let mut basis: Vec<Seen<'a>> = live
        .iter()
        .map(|_| Seen {
            claim: None,
            result: None,
            counted: false,
        })
        .collect();
    let mut missing = Vec::new();
    for id in &e.seen {
        let found = claims.iter().chain(results).copied().find(|c| &c.id == id);
        let Some(msg) = found else {
            missing.push(id.as_str());
            continue;
        };
        let Some(i) = live.iter().position(|s| s.runner == msg.sender) else {
            return Err((
                format!("it names message {id}, which is not from a runner still in the race"),
                false,
            ));
        };
        let slot = &mut basis[i];
        let place = match &msg.body {
            Body::SeedClaimed(c) if c.bid_id == live[i].bid => &mut slot.claim,
            Body::ResultReported(_) => &mut slot.result,
            _ => {
                return Err((
                    format!("it names claim {id}, which is not for the runner's awarded bid"),
                    false,
                ));
            }
        };
        if place.replace(msg).is_some() {
            return Err((
                format!(
                    "it names two claims or two results of runner {}",
                    msg.sender
                ),
                false,
            ));
        }
    }
    if !missing.is_empty() {
        return Err((
            format!(
                "it names claims or results this node does not hold yet: {}",
                missing.join(", ")
            ),
            true,
        ));
    }
    let mut counted = Groups::new();
    for (i, (s, seen)) in live.iter().zip(basis.iter_mut()).enumerate() {
        if seen.result.is_some() && seen.claim.is_none() {
            return Err((
                format!("it names a result of runner {} without its claim", s.runner),
                false,
            ));
        }
        let t = Timing {
            assigned_at: s.start,
            claimed_at: seen.claim.map(|c| c.timestamp),
            reported_at: seen.result.map(|r| r.timestamp),
        };
        seen.counted = t.reported_in_time(d, timeout);
        if seen.counted {
            if let Some(Body::ResultReported(r)) = seen.result.map(|r| &r.body) {
                counted.entry(r.key()).or_default().push(i);
            }
        } else if m.timestamp < t.deadline(d, timeout) {
            return Err((
                format!(
                    "runner {} may still claim or report until {} (unix ms) by what it names",
                    s.runner,
                    t.deadline(d, timeout)
                ),
                false,
            ));
        }
    }
    if quorum_key(&counted, rep.quorum).is_some() {
        return Err((
            "the results it names already reach the quorum".to_owned(),
            false,
        ));
    }
    let largest = counted.values().map(Vec::len).max().unwrap_or(0);
    let expected = expected_winners(v, rep, slots.iter().map(|s| &s.runner), largest);
    if e.winners != expected {
        let reason = if expected.is_empty() {
            "the quorum can no longer be reached, so the escalation must name no winner".to_owned()
        } else {
            format!(
                "the escalation must award the next best bids: {}",
                expected
                    .iter()
                    .map(BidId::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err((reason, false));
    }
    Ok(basis)
}

/// Gives every live replica its claim (naming its bid) and, once claimed, its result: the
/// first of each by its runner in fold order.
fn attach<'a>(slots: &mut [Slot<'a>], claims: &[&'a Message], results: &[&'a Message]) {
    for s in slots.iter_mut().filter(|s| !s.lapsed) {
        if s.claim.is_none() {
            s.claim = claims.iter().copied().find(|m| {
                m.sender == s.runner && matches!(&m.body, Body::SeedClaimed(c) if c.bid_id == s.bid)
            });
        }
        if s.claim.is_some() && s.result.is_none() {
            s.result = results.iter().copied().find(|m| m.sender == s.runner);
        }
    }
}

fn groups<'s, 'a: 's>(slots: impl Iterator<Item = (usize, &'s Slot<'a>)>) -> Groups {
    let mut groups = Groups::new();
    for (i, s) in slots {
        if let Some(k) = s.key() {
            groups.entry(k).or_default().push(i);
        }
    }
    groups
}

/// Checks a replicated seed's settlement; returns the amount it must carry.
pub(super) fn check_payment(v: &SeedView, s: &Settlement) -> Result<u64, Violation> {
    let invalid = |reason: String| Violation::InvalidPayment {
        seed_id: v.seed.id.clone(),
        reason,
    };
    let quorum = v.seed.replication().map_or(1, |r| r.quorum);
    match s.outcome {
        SettlementOutcome::Rejected if s.paid.is_empty() => Ok(0),
        SettlementOutcome::Rejected => Err(invalid("a rejected settlement pays nobody".into())),
        SettlementOutcome::Accepted => {
            let mut amount = 0u64;
            let mut seen = HashSet::new();
            for node in &s.paid {
                if !seen.insert(node) {
                    return Err(invalid(format!("runner {node} is paid twice")));
                }
                match v.replicas.iter().find(|r| &r.runner == node) {
                    Some(r) if r.standing == ReplicaStanding::Agreed => {
                        amount = amount.saturating_add(r.price);
                    }
                    _ => {
                        return Err(invalid(format!(
                            "runner {node} has no result that agrees with the quorum"
                        )));
                    }
                }
            }
            if s.paid.len() < quorum as usize {
                return Err(invalid(format!(
                    "it pays {} runners, the quorum is {quorum}",
                    s.paid.len()
                )));
            }
            Ok(amount)
        }
    }
}

/// The live replica of `node`.
fn replica_of<'v>(v: &'v SeedView, node: &NodeId) -> Option<&'v ReplicaView> {
    v.replicas
        .iter()
        .find(|r| &r.runner == node && r.standing != ReplicaStanding::Lapsed)
}

/// Local claim check of a replicated seed: `node` holds a live, unclaimed replica and its claim
/// window lasts.
pub(super) fn check_local_claim(
    v: &SeedView,
    node: &NodeId,
    now: Millis,
) -> Result<BidId, Violation> {
    if v.award.is_none() && v.status == SeedStatus::Open {
        return Err(Violation::BiddingOpen {
            seed_id: v.seed.id.clone(),
            window_end: v.seed.window_end(),
            max_bids: v.seed.max_bids,
        });
    }
    if !matches!(v.status, SeedStatus::Open | SeedStatus::Claimed) {
        return Err(wrong_status(v, Action::Claim));
    }
    let Some(r) = replica_of(v, node) else {
        return Err(Violation::NotWinningBidder {
            seed_id: v.seed.id.clone(),
            node: node.clone(),
        });
    };
    if r.claimed_at.is_some() {
        return Err(wrong_status(v, Action::Claim));
    }
    let d = v.seed.deadlines().expect("rules 3 seeds carry deadlines");
    let deadline = r.timing().claim_deadline(d);
    if now > deadline {
        return Err(Violation::DeadlinePassed {
            seed_id: v.seed.id.clone(),
            action: Action::Claim,
            deadline,
        });
    }
    Ok(r.bid_id.clone())
}

/// Local run check of a replicated seed: `node` claimed a live replica and has not reported.
/// A replica may still run after the quorum was reached (its result is recorded as agreeing
/// or dissenting).
pub(super) fn check_local_run(v: &SeedView, node: &NodeId) -> Result<(), Violation> {
    let not_claimer = || Violation::NotClaimer {
        seed_id: v.seed.id.clone(),
        node: node.clone(),
    };
    if v.status.is_final() {
        return Err(wrong_status(v, Action::Run));
    }
    match replica_of(v, node) {
        Some(r) if r.claimed_at.is_some() && r.result.is_none() => Ok(()),
        Some(r) if r.claimed_at.is_none() => Err(wrong_status(v, Action::Run)),
        Some(_) => Err(wrong_status(v, Action::Run)),
        None => Err(not_claimer()),
    }
}

/// When the escalation of an awarded, undecided replicated seed becomes due: once every live
/// replica reported in time, or the last deadline of those that did not passed (plus the
/// margin). `None` once the seed completed or ended.
fn escalation_due_at(v: &SeedView) -> Option<Millis> {
    if !matches!(v.status, SeedStatus::Open | SeedStatus::Claimed) || v.replicas.is_empty() {
        return None;
    }
    let d = v.seed.deadlines()?;
    let timeout = v.seed.timeout_secs;
    let last = v
        .replicas
        .iter()
        .filter(|r| r.standing != ReplicaStanding::Lapsed)
        .map(ReplicaView::timing)
        .filter(|t| !t.reported_in_time(d, timeout))
        .map(|t| t.deadline(d, timeout).saturating_add(DECISION_MARGIN_MS))
        .max();
    Some(last.unwrap_or(0))
}

/// The escalation the publisher's node owes at `now`, if any.
fn due_escalation(v: &SeedView, now: Millis) -> Option<Escalation> {
    if now < escalation_due_at(v)? {
        return None;
    }
    let rep = v.seed.replication()?;
    let d = v.seed.deadlines()?;
    let mut groups: BTreeMap<ResultKey, usize> = BTreeMap::new();
    for r in &v.replicas {
        if r.standing != ReplicaStanding::Lapsed
            && r.timing().reported_in_time(d, v.seed.timeout_secs)
            && let Some(res) = &r.result
        {
            *groups.entry(res.key()).or_default() += 1;
        }
    }
    let largest = groups.values().copied().max().unwrap_or(0);
    if largest >= rep.quorum as usize {
        // The quorum is reached with results that are still on their way to being applied.
        return None;
    }
    Some(Escalation {
        seed_id: v.seed.id.clone(),
        step: v.replicas.iter().map(|r| r.step).max().unwrap_or(0) + 1,
        winners: expected_winners(v, rep, v.replicas.iter().map(|r| &r.runner), largest),
        seen: v
            .replicas
            .iter()
            .filter(|r| r.standing != ReplicaStanding::Lapsed)
            .flat_map(|r| r.claim_message.iter().chain(&r.result_message))
            .cloned()
            .collect(),
    })
}

/// [`SeedView::due_decision`] for an awarded replicated seed: escalate when due, settle by
/// the result when the settlement window passed.
pub(super) fn due_decision(v: &SeedView, now: Millis) -> Option<Body> {
    match v.status {
        SeedStatus::Open | SeedStatus::Claimed => due_escalation(v, now).map(Body::SeedEscalated),
        SeedStatus::Completed
            if v.settlement.is_none()
                && v.settle_deadline()
                    .is_some_and(|dl| now >= dl.saturating_add(DECISION_MARGIN_MS)) =>
        {
            let success = v.result.as_ref().is_some_and(|r| r.success);
            Some(Body::SeedSettled(v.settlement_for(
                success,
                "settled by the node: the settlement window passed",
            )))
        }
        _ => None,
    }
}

/// [`SeedView::next_decision_at`] for an awarded replicated seed.
pub(super) fn next_decision_at(v: &SeedView) -> Option<Millis> {
    match v.status {
        SeedStatus::Open | SeedStatus::Claimed => escalation_due_at(v),
        SeedStatus::Completed if v.settlement.is_none() => v
            .settle_deadline()
            .map(|d| d.saturating_add(DECISION_MARGIN_MS)),
        _ => None,
    }
}
