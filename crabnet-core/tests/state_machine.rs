//! The seed state machine: every lifecycle transition and every rejection, plus the
//! convergence property (same messages in any order, with duplicates -> same state) and
//! monotonicity (no message moves a seed backwards).

use crabnet_core::model::{
    Award, Bid, BidId, Body, Cancellation, Claim, Deadlines, Failure, Message, MessageId, NodeId,
    Reassignment, RoundEnd, Seed, SeedId, SeedStatus, Settlement, SettlementOutcome,
};
use crabnet_core::state::{self, Verdict, Violation, fold};
use proptest::prelude::*;

#[path = "support/fold_fixtures.rs"]
mod fold_fixtures;
use fold_fixtures::{deliver_order, task_result};

const T0: u64 = 1_700_000_000_000;

fn node(n: u8) -> NodeId {
    NodeId::from_bytes([n; 32])
}

fn seed_id() -> SeedId {
    SeedId::from_bytes([0xaa; 16])
}

fn bid_id(n: u8) -> BidId {
    BidId::from_bytes([n; 16])
}

struct Ids(u64);

impl Ids {
    fn next(&mut self) -> MessageId {
        self.0 += 1;
        let mut b = [0u8; 16];
        b[8..].copy_from_slice(&self.0.to_be_bytes());
        MessageId::from_bytes(b)
    }
}

fn msg(ids: &mut Ids, sender: NodeId, lamport: u64, timestamp: u64, body: Body) -> Message {
    Message {
        id: ids.next(),
        sender,
        lamport,
        timestamp,
        body,
    }
}

fn seed(max_bids: u32, window: u64) -> Seed {
    Seed {
        bid_window_secs: window,
        max_bids,
        ..fold_fixtures::seed(seed_id(), node(1), T0)
    }
}

fn create(ids: &mut Ids, s: Seed) -> Message {
    let publisher = s.publisher.clone();
    msg(ids, publisher, 1, T0, Body::SeedCreated(s))
}

fn bid(ids: &mut Ids, bidder: u8, price: u64, at: u64) -> Message {
    msg(
        ids,
        node(bidder),
        2,
        at,
        Body::BidPlaced(Bid {
            id: bid_id(bidder),
            seed_id: seed_id(),
            bidder: node(bidder),
            price,
        }),
    )
}

fn award(ids: &mut Ids, sender: u8, considered: &[u8], winner: Option<u8>, at: u64) -> Message {
    msg(
        ids,
        node(sender),
        3,
        at,
        Body::BiddingClosed(Award {
            seed_id: seed_id(),
            considered: considered.iter().map(|b| bid_id(*b)).collect(),
            winner: winner.map(bid_id),
            winners: Vec::new(),
        }),
    )
}

fn claim(ids: &mut Ids, claimer: u8, bid: u8) -> Message {
    msg(
        ids,
        node(claimer),
        4,
        T0 + 20_000,
        Body::SeedClaimed(Claim {
            seed_id: seed_id(),
            claimer: node(claimer),
            bid_id: bid_id(bid),
        }),
    )
}

fn result(ids: &mut Ids, runner: u8) -> Message {
    msg(
        ids,
        node(runner),
        5,
        T0 + 21_000,
        Body::ResultReported(task_result(
            seed_id(),
            node(runner),
            "0".repeat(64),
            T0 + 20_505,
        )),
    )
}

fn settle(ids: &mut Ids, sender: u8, accept: bool, amount: u64) -> Message {
    msg(
        ids,
        node(sender),
        6,
        T0 + 22_000,
        Body::SeedSettled(Settlement {
            seed_id: seed_id(),
            outcome: if accept {
                SettlementOutcome::Accepted
            } else {
                SettlementOutcome::Rejected
            },
            amount,
            note: String::new(),
            paid: Vec::new(),
        }),
    )
}

fn cancel(ids: &mut Ids, sender: u8, at: u64) -> Message {
    msg(
        ids,
        node(sender),
        3,
        at,
        Body::SeedCancelled(Cancellation {
            seed_id: seed_id(),
            after: None,
        }),
    )
}

fn verdict_of(msgs: &[Message], m: &Message) -> Verdict {
    fold(msgs).verdicts[&m.id].clone()
}

fn rejected_with(msgs: &[Message], m: &Message) -> Violation {
    match verdict_of(msgs, m) {
        Verdict::Rejected { reason } => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn pending_with(msgs: &[Message], m: &Message) -> Violation {
    match verdict_of(msgs, m) {
        Verdict::Pending { reason } => reason,
        other => panic!("expected pending, got {other:?}"),
    }
}

/// Asserts that `m`, delivered after `msgs`, is rejected for a reason matching the pattern.
macro_rules! assert_rejected {
    ($msgs:expr, $m:expr, $reason:pat) => {{
        let reason = rejected_with($msgs, $m);
        assert!(matches!(reason, $reason), "rejected as {reason:?}");
    }};
}

/// Asserts that `m`, delivered after `msgs`, waits for a reason matching the pattern.
macro_rules! assert_pending {
    ($msgs:expr, $m:expr, $reason:pat) => {{
        let reason = pending_with($msgs, $m);
        assert!(matches!(reason, $reason), "pending as {reason:?}");
    }};
}

/// In the history `msgs`, the publisher's decision `early` came before its deadline and is
/// refused as invalid, and round 0's message `late` came after it and is refused as lapsed.
fn refused_early_and_late(msgs: &[Message], early: &Message, late: &Message) {
    assert_rejected!(msgs, early, Violation::InvalidDecision { .. });
    assert_rejected!(msgs, late, Violation::Lapsed { round: 0, .. });
}

fn status(msgs: &[Message]) -> SeedStatus {
    fold(msgs).view.expect("seed known").status
}

/// A complete honest lifecycle: bids from 2 and 3, 3 wins at 20.
fn lifecycle(ids: &mut Ids) -> Vec<Message> {
    vec![
        create(ids, seed(2, 10)),
        bid(ids, 2, 30, T0 + 100),
        bid(ids, 3, 20, T0 + 200),
        award(ids, 1, &[2, 3], Some(3), T0 + 300),
        claim(ids, 3, 3),
        result(ids, 3),
        settle(ids, 1, true, 20),
    ]
}

#[test]
fn full_lifecycle_reaches_each_status_in_order() {
    let mut ids = Ids(0);
    let all = lifecycle(&mut ids);
    let expected = [
        SeedStatus::Open,
        SeedStatus::Open,
        SeedStatus::Open,
        SeedStatus::Open,
        SeedStatus::Claimed,
        SeedStatus::Completed,
        SeedStatus::Settled,
    ];
    for (n, want) in expected.iter().enumerate() {
        assert_eq!(status(&all[..=n]), *want, "after {} messages", n + 1);
    }
    let v = fold(&all).view.unwrap();
    assert!(fold(&all).verdicts.values().all(|v| *v == Verdict::Applied));
    assert_eq!(v.award.as_ref().unwrap().winner_node, Some(node(3)));
    assert_eq!(v.award.as_ref().unwrap().price, Some(20));
    assert_eq!(v.settlement.unwrap().settlement.amount, 20);
    assert_eq!(v.bids.len(), 2);
}

#[test]
fn winner_rule_is_lowest_price_then_earliest_then_lowest_node_id() {
    let mut ids = Ids(0);
    let s = create(&mut ids, seed(3, 10));
    // Same price: earliest wins.
    let b2 = bid(&mut ids, 2, 20, T0 + 200);
    let b3 = bid(&mut ids, 3, 20, T0 + 100);
    let b4 = bid(&mut ids, 4, 50, T0 + 50);
    let v = fold([&s, &b2, &b3, &b4]).view.unwrap();
    assert_eq!(v.due_award(T0).unwrap().winner, Some(bid_id(3)));
    // Same price and time: lowest node id wins.
    let b5 = bid(&mut ids, 5, 20, T0 + 100);
    let b6 = bid(&mut ids, 6, 20, T0 + 100);
    let v = fold([&s, &b6, &b5]).view.unwrap();
    assert_eq!(v.due_award(T0 + 10_000).unwrap().winner, Some(bid_id(5)));
    // An award naming another winner is invalid.
    let wrong = award(&mut ids, 1, &[2, 3, 4], Some(4), T0 + 300);
    let all = [s, b2, b3, b4, wrong.clone()];
    assert_rejected!(&all, &wrong, Violation::InvalidAward { .. });
}

#[test]
fn bidding_closes_early_only_when_full_and_expires_without_bids() {
    let mut ids = Ids(0);
    let s = create(&mut ids, seed(2, 10));
    let b2 = bid(&mut ids, 2, 30, T0 + 100);
    let v = fold([&s, &b2]).view.unwrap();
    assert_eq!(v.due_award(T0 + 500), None, "one of two bids, window open");
    let early = award(&mut ids, 1, &[2], Some(2), T0 + 500);
    let all = [s.clone(), b2.clone(), early.clone()];
    assert_rejected!(&all, &early, Violation::InvalidAward { .. });
    // After the window the same award is fine.
    let late = award(&mut ids, 1, &[2], Some(2), T0 + 10_001);
    assert_eq!(
        verdict_of(&[s.clone(), b2.clone(), late.clone()], &late),
        Verdict::Applied
    );
    // No bids: expiry, only after the window.
    let v = fold([&s]).view.unwrap();
    let due = v.due_award(T0 + 10_000).unwrap();
    assert!(due.considered.is_empty() && due.winner.is_none());
    let too_soon = award(&mut ids, 1, &[], None, T0 + 5_000);
    assert_rejected!(
        &[s.clone(), too_soon.clone()],
        &too_soon,
        Violation::InvalidAward { .. }
    );
    let expire = award(&mut ids, 1, &[], None, T0 + 10_000);
    assert_eq!(status(&[s.clone(), expire.clone()]), SeedStatus::Expired);
    // Nothing moves an expired seed.
    let c = claim(&mut ids, 2, 2);
    assert_rejected!(
        &[s, expire, c.clone()],
        &c,
        Violation::WrongStatus {
            status: SeedStatus::Expired,
            ..
        }
    );
}

#[test]
fn every_bid_rejection_has_its_reason() {
    let mut ids = Ids(0);
    let s = create(&mut ids, seed(2, 10));
    let low = bid(&mut ids, 2, 9, T0 + 1);
    let high = bid(&mut ids, 3, 101, T0 + 1);
    let late = bid(&mut ids, 4, 50, T0 + 10_001);
    let early = bid(&mut ids, 5, 50, T0 - 1);
    let all = [
        s.clone(),
        low.clone(),
        high.clone(),
        late.clone(),
        early.clone(),
    ];
    assert_rejected!(&all, &low, Violation::PriceOutOfRange { price: 9, .. });
    assert_rejected!(&all, &high, Violation::PriceOutOfRange { price: 101, .. });
    assert_rejected!(&all, &late, Violation::BidWindowClosed { .. });
    assert_rejected!(&all, &early, Violation::BidBeforePublication { .. });
    // A bid for a seed not known yet waits for it.
    let orphan = bid(&mut ids, 6, 50, T0 + 1);
    assert_pending!(
        std::slice::from_ref(&orphan),
        &orphan,
        Violation::UnknownSeed { .. }
    );
    // A bid is malformed when its sender is not the bidder.
    let mut forged = bid(&mut ids, 7, 50, T0 + 1);
    forged.sender = node(8);
    assert_rejected!(&[s, forged.clone()], &forged, Violation::Malformed { .. });
}

#[test]
fn local_bid_checks_cover_limit_duplicates_window_and_closed_bidding() {
    let mut ids = Ids(0);
    let s = create(&mut ids, seed(1, 10));
    let v = fold([&s]).view.unwrap();
    assert_eq!(state::check_local_bid(&v, &node(2), T0 + 1), Ok(()));
    assert!(matches!(
        state::check_local_bid(&v, &node(2), T0 + 10_001),
        Err(Violation::BidWindowClosed { .. })
    ));
    let b2 = bid(&mut ids, 2, 30, T0 + 100);
    let v = fold([&s, &b2]).view.unwrap();
    assert!(matches!(
        state::check_local_bid(&v, &node(2), T0 + 200),
        Err(Violation::AlreadyBid { .. })
    ));
    assert!(matches!(
        state::check_local_bid(&v, &node(3), T0 + 200),
        Err(Violation::BidLimitReached { max_bids: 1, .. })
    ));
    let a = award(&mut ids, 1, &[2], Some(2), T0 + 300);
    let v = fold([&s, &b2, &a]).view.unwrap();
    assert!(matches!(
        state::check_local_bid(&v, &node(3), T0 + 400),
        Err(Violation::BiddingClosed { .. })
    ));
}

#[test]
fn only_the_publisher_closes_cancels_and_settles() {
    let mut ids = Ids(0);
    let all = lifecycle(&mut ids);
    let foreign_award = award(&mut ids, 2, &[2, 3], Some(3), T0 + 300);
    let foreign_cancel = cancel(&mut ids, 2, T0 + 50);
    let foreign_settle = settle(&mut ids, 3, true, 20);
    let mut msgs = all.clone();
    msgs.extend([
        foreign_award.clone(),
        foreign_cancel.clone(),
        foreign_settle.clone(),
    ]);
    for m in [&foreign_award, &foreign_cancel, &foreign_settle] {
        assert!(
            matches!(rejected_with(&msgs, m), Violation::NotPublisher { .. }),
            "{m:?}"
        );
    }
    assert_eq!(status(&msgs), SeedStatus::Settled);
}

#[test]
fn only_the_winner_claims_and_only_the_claimer_reports() {
    let mut ids = Ids(0);
    let all = lifecycle(&mut ids);
    let loser_claim = claim(&mut ids, 2, 2);
    let outsider_result = result(&mut ids, 2);
    let mut msgs = all[..4].to_vec();
    msgs.push(loser_claim.clone());
    assert_rejected!(&msgs, &loser_claim, Violation::NotWinningBidder { .. });
    assert!(matches!(
        state::check_local_claim(&fold(&msgs).view.unwrap(), &node(2), T0),
        Err(Violation::NotWinningBidder { .. })
    ));
    msgs.push(all[4].clone());
    msgs.push(outsider_result.clone());
    assert_rejected!(&msgs, &outsider_result, Violation::NotClaimer { .. });
    assert!(matches!(
        state::check_local_run(&fold(&msgs).view.unwrap(), &node(2)),
        Err(Violation::NotClaimer { .. })
    ));
    assert_eq!(
        state::check_local_run(&fold(&msgs).view.unwrap(), &node(3)),
        Ok(())
    );
    // The winner claiming with another bid id is not the winning claim.
    let mut ids2 = Ids(100);
    let wrong_bid = claim(&mut ids2, 3, 2);
    let mut m2 = all[..4].to_vec();
    m2.push(wrong_bid.clone());
    assert_rejected!(&m2, &wrong_bid, Violation::NotWinningBidder { .. });
}

#[test]
fn steps_out_of_order_wait_for_their_predecessor() {
    let mut ids = Ids(0);
    let all = lifecycle(&mut ids);
    // Claim before the award: pending, with the "bidding still open" reason.
    let early = [all[0].clone(), all[4].clone()];
    assert_pending!(&early, &all[4], Violation::BiddingOpen { .. });
    assert!(matches!(
        state::check_local_claim(&fold(&all[..3]).view.unwrap(), &node(3), T0),
        Err(Violation::BiddingOpen { .. })
    ));
    // Result before the claim, settlement before the result: pending.
    let r = [all[0].clone(), all[5].clone()];
    assert_pending!(&r, &all[5], Violation::WrongStatus { .. });
    let st = all[..5]
        .iter()
        .cloned()
        .chain([all[6].clone()])
        .collect::<Vec<_>>();
    assert_pending!(
        &st,
        &all[6],
        Violation::WrongStatus {
            status: SeedStatus::Claimed,
            ..
        }
    );
    // An award naming a bid not received yet waits for it.
    let a = [all[0].clone(), all[1].clone(), all[3].clone()];
    assert_pending!(&a, &all[3], Violation::MissingBid { .. });
    // Everything arriving backwards still ends settled.
    let reversed: Vec<Message> = all.iter().rev().cloned().collect();
    assert_eq!(fold(&reversed), fold(&all));
}

#[test]
fn cancel_only_while_bidding_is_open() {
    let mut ids = Ids(0);
    let all = lifecycle(&mut ids);
    let c = cancel(&mut ids, 1, T0 + 150);
    let msgs = [all[0].clone(), all[1].clone(), c.clone()];
    assert_eq!(status(&msgs), SeedStatus::Cancelled);
    // Bids still valid as facts, but no award, claim or settlement can follow.
    let after = award(&mut ids, 1, &[2], Some(2), T0 + 20_000);
    let msgs2 = [all[0].clone(), all[1].clone(), c.clone(), after.clone()];
    assert_rejected!(
        &msgs2,
        &after,
        Violation::WrongStatus {
            status: SeedStatus::Cancelled,
            ..
        }
    );
    // After the award the publisher can no longer cancel.
    let late_cancel = cancel(&mut ids, 1, T0 + 400);
    let mut msgs3 = all[..4].to_vec();
    msgs3[3].lamport = 3;
    let mut lc = late_cancel.clone();
    lc.lamport = 9;
    msgs3.push(lc.clone());
    assert_rejected!(&msgs3, &lc, Violation::BiddingClosed { .. });
}

#[test]
fn settlement_amount_must_be_the_winning_price_or_zero() {
    let mut ids = Ids(0);
    let mut all = lifecycle(&mut ids);
    all.pop();
    let wrong = settle(&mut ids, 1, true, 99);
    let mut msgs = all.clone();
    msgs.push(wrong.clone());
    assert_rejected!(
        &msgs,
        &wrong,
        Violation::WrongAmount {
            expected: 20,
            got: 99,
            ..
        }
    );
    let reject = settle(&mut ids, 1, false, 0);
    all.push(reject);
    let v = fold(&all).view.unwrap();
    assert_eq!(v.status, SeedStatus::Settled);
    assert_eq!(
        v.settlement.unwrap().settlement.outcome,
        SettlementOutcome::Rejected
    );
    // A rejected settlement with an amount is malformed.
    let bad = settle(&mut ids, 1, false, 5);
    assert_rejected!(
        &[all[0].clone(), bad.clone()],
        &bad,
        Violation::Malformed { .. }
    );
}

#[test]
fn duplicate_creation_keeps_the_first() {
    let mut ids = Ids(0);
    let a = create(&mut ids, seed(2, 10));
    let mut s2 = seed(2, 10);
    s2.command = "echo other".into();
    let mut b = create(&mut ids, s2);
    b.lamport = 5;
    let f = fold([&b, &a]);
    assert_eq!(f.view.unwrap().seed.command, "echo hi");
    assert!(matches!(
        f.verdicts[&b.id],
        Verdict::Rejected {
            reason: Violation::DuplicateSeed { .. }
        }
    ));
}

// ---------------------------------------------------------------------------------------------
// Convergence and monotonicity over generated histories.

#[derive(Debug, Clone)]
struct Scenario {
    max_bids: u32,
    window: u64,
    bids: Vec<(u8, u64, i64)>, // bidder, price, offset from T0 in ms
    seen_by_publisher: Vec<bool>,
    cancel_instead: bool,
    accept: bool,
    double_bid: bool,
    extra_noise: bool,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        1u32..4,
        1u64..5,
        prop::collection::vec((0u8..6, 0u64..130, -500i64..7_000), 0..7),
        prop::collection::vec(any::<bool>(), 7),
        prop::bool::weighted(0.15),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(max_bids, window, bids, seen, cancel_instead, accept, double_bid, extra_noise)| {
                Scenario {
                    max_bids,
                    window,
                    bids,
                    seen_by_publisher: seen,
                    cancel_instead,
                    accept,
                    double_bid,
                    extra_noise,
                }
            },
        )
}

/// Builds the messages of an honest history (plus adversarial noise) from a scenario.
fn history(sc: &Scenario) -> Vec<Message> {
    let mut ids = Ids(0);
    let s = seed(sc.max_bids, sc.window);
    let creation = create(&mut ids, s.clone());
    let mut msgs = vec![creation.clone()];
    let mut used = std::collections::HashSet::new();
    for (i, (b, price, off)) in sc.bids.iter().enumerate() {
        let bidder = 10 + b;
        if !used.insert(bidder) {
            continue;
        }
        let mut m = bid(&mut ids, bidder, *price, (T0 as i64 + off) as u64);
        m.lamport = 2 + i as u64;
        msgs.push(m);
    }
    if sc.double_bid && msgs.len() > 1 {
        // A dishonest bidder sends a second bid with another id.
        let first = msgs[1].clone();
        if let Body::BidPlaced(b) = &first.body {
            let mut again = msg(
                &mut ids,
                first.sender.clone(),
                1,
                first.timestamp,
                Body::BidPlaced(Bid {
                    id: BidId::from_bytes([0xee; 16]),
                    price: 10,
                    ..b.clone()
                }),
            );
            again.lamport = 1;
            msgs.push(again);
        }
    }
    // The publisher closes bidding on the bids it has seen, at the end of the window.
    let publisher_view: Vec<Message> = msgs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || sc.seen_by_publisher[*i % 7])
        .map(|(_, m)| m.clone())
        .collect();
    let view = fold(&publisher_view).view.unwrap();
    let close_at = s.window_end() + 1;
    if sc.cancel_instead {
        msgs.push(cancel(&mut ids, 1, T0 + 10));
    } else if let Some(a) = view.due_award(close_at) {
        let mut am = msg(
            &mut ids,
            node(1),
            20,
            close_at,
            Body::BiddingClosed(a.clone()),
        );
        am.lamport = 20;
        msgs.push(am);
        let folded = fold(
            &publisher_view
                .iter()
                .cloned()
                .chain([msgs.last().unwrap().clone()])
                .collect::<Vec<_>>(),
        );
        let v = folded.view.unwrap();
        if let (Some(winner_bid), Some(winner)) = (
            v.award.as_ref().unwrap().winner.clone(),
            v.award.as_ref().unwrap().winner_node.clone(),
        ) {
            let price = v.award.as_ref().unwrap().price.unwrap();
            let mut c = msg(
                &mut ids,
                winner.clone(),
                21,
                close_at + 10,
                Body::SeedClaimed(Claim {
                    seed_id: seed_id(),
                    claimer: winner.clone(),
                    bid_id: winner_bid,
                }),
            );
            c.lamport = 21;
            msgs.push(c);
            let mut r = result(&mut ids, 0);
            r.sender = winner.clone();
            if let Body::ResultReported(res) = &mut r.body {
                res.runner = winner.clone();
            }
            r.lamport = 22;
            msgs.push(r);
            let mut st = settle(&mut ids, 1, sc.accept, if sc.accept { price } else { 0 });
            st.lamport = 23;
            msgs.push(st);
        }
    }
    if sc.extra_noise {
        // Adversarial messages that must never take effect.
        msgs.push(claim(&mut ids, 99, 99));
        msgs.push(cancel(&mut ids, 98, T0 + 5));
        msgs.push(settle(&mut ids, 97, true, 1));
        let mut r = result(&mut ids, 96);
        r.lamport = 1;
        msgs.push(r);
    }
    msgs
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn replicas_converge_and_never_move_backwards(sc in scenario(), seeds in prop::collection::vec(any::<u64>(), 4)) {
        let msgs = history(&sc);
        let reference = fold(&msgs);
        let reference_digest = state::digest(reference.view.iter());
        for s in seeds {
            let mut received: Vec<Message> = Vec::new();
            let mut last: Option<SeedStatus> = None;
            for i in deliver_order(msgs.len(), s) {
                received.push(msgs[i].clone());
                let f = fold(&received);
                if let Some(v) = &f.view {
                    if let Some(prev) = last {
                        prop_assert!(prev.can_reach(v.status, v.seed.rules), "moved from {prev} to {}", v.status);
                    }
                    last = Some(v.status);
                }
            }
            let f = fold(&received);
            prop_assert_eq!(&f, &reference);
            prop_assert_eq!(state::digest(f.view.iter()), reference_digest.clone());
        }
        // Adversarial messages never take effect.
        if sc.extra_noise {
            let v = reference.view.unwrap();
            prop_assert!(v.claim.as_ref().is_none_or(|c| c.claimer != node(99)));
            prop_assert!(v.result.as_ref().is_none_or(|r| r.runner != node(96)));
            prop_assert!(v.cancelled_at.is_none() || sc.cancel_instead);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rules 2: deadlines, reassignment, failure, late cancellation, rule versions.

const CLAIM_S: u64 = 10;
const GRACE_S: u64 = 5;
const SETTLE_S: u64 = 60;

fn seed_v2(max_bids: u32) -> Seed {
    Seed {
        rules: crabnet_core::model::rules::V2,
        deadlines: Some(Deadlines {
            claim_secs: CLAIM_S,
            result_grace_secs: GRACE_S,
            settle_secs: SETTLE_S,
        }),
        ..seed(max_bids, 5)
    }
}

fn at(mut m: Message, timestamp: u64, lamport: u64) -> Message {
    m.timestamp = timestamp;
    m.lamport = lamport;
    m
}

fn reassign(ids: &mut Ids, round: u32, winner: Option<u8>, t: u64, lamport: u64) -> Message {
    reassign_after(ids, round, winner, t, lamport, RoundEnd::Unclaimed)
}

fn reassign_after(
    ids: &mut Ids,
    round: u32,
    winner: Option<u8>,
    t: u64,
    lamport: u64,
    after: RoundEnd,
) -> Message {
    let body = Body::SeedReassigned(Reassignment {
        seed_id: seed_id(),
        round,
        winner: winner.map(bid_id),
        after,
    });
    msg(ids, node(1), lamport, t, body)
}

fn fail(ids: &mut Ids, round: u32, t: u64, lamport: u64) -> Message {
    let body = Body::SeedFailed(Failure {
        seed_id: seed_id(),
        round,
    });
    msg(ids, node(1), lamport, t, body)
}

/// Bids from 2 (30), 3 (20) and 4 (40); 3 wins round 0 at `AWARD`.
const AWARD: u64 = T0 + 6_000;
const CLAIM_END: u64 = AWARD + CLAIM_S * 1000;

fn awarded_v2(ids: &mut Ids) -> Vec<Message> {
    vec![
        create(ids, seed_v2(3)),
        bid(ids, 2, 30, T0 + 100),
        bid(ids, 3, 20, T0 + 200),
        bid(ids, 4, 40, T0 + 300),
        award(ids, 1, &[2, 3, 4], Some(3), AWARD),
    ]
}

#[test]
fn an_unclaimed_award_moves_to_the_next_best_bid_and_a_late_claim_loses() {
    let mut ids = Ids(0);
    let mut msgs = awarded_v2(&mut ids);
    let view = fold(&msgs).view.unwrap();
    assert_eq!(view.claim_deadline(), Some(CLAIM_END));
    assert_eq!(view.due_decision(CLAIM_END), None, "the margin is not over");
    let due = view
        .due_decision(CLAIM_END + state::DECISION_MARGIN_MS)
        .expect("a reassignment is due");
    assert!(matches!(&due, Body::SeedReassigned(r) if r.round == 1 && r.winner == Some(bid_id(2))));

    // Too early: refused with the deadline, and the winner can still claim.
    let early = reassign(&mut ids, 1, Some(2), CLAIM_END - 1, 10);
    let late_claim = at(claim(&mut ids, 3, 3), CLAIM_END + 1, 11);
    let r1 = reassign(&mut ids, 1, Some(2), CLAIM_END + 2_000, 12);
    msgs.extend([early.clone(), late_claim.clone(), r1.clone()]);
    refused_early_and_late(&msgs, &early, &late_claim);
    let v = fold(&msgs).view.unwrap();
    assert_eq!(v.status, SeedStatus::Open);
    let award = v.award.as_ref().unwrap();
    assert_eq!(
        (award.round, award.winner_node.clone(), award.price),
        (1, Some(node(2)), Some(30))
    );
    assert_eq!(v.past_rounds.len(), 1);
    assert_eq!(v.past_rounds[0].ended, RoundEnd::Unclaimed);
    assert_eq!(
        state::check_local_claim(&v, &node(3), CLAIM_END + 3_000),
        Err(Violation::NotWinningBidder {
            seed_id: seed_id(),
            node: node(3)
        })
    );

    // The new winner claims in time, runs and is settled.
    let c2 = at(claim(&mut ids, 2, 2), CLAIM_END + 5_000, 13);
    let mut r = at(result(&mut ids, 2), CLAIM_END + 6_000, 14);
    if let Body::ResultReported(res) = &mut r.body {
        res.started_at = CLAIM_END + 5_500;
        res.finished_at = CLAIM_END + 5_600;
    }
    let st = at(settle(&mut ids, 1, true, 30), CLAIM_END + 7_000, 15);
    msgs.extend([c2, r, st]);
    assert_eq!(status(&msgs), SeedStatus::Settled);
}

#[test]
fn a_claim_in_time_beats_a_reassignment_and_the_last_bidder_expires_the_seed() {
    let mut ids = Ids(0);
    let mut msgs = awarded_v2(&mut ids);
    // The claim is dated in time but arrives after the publisher's reassignment.
    let in_time = at(claim(&mut ids, 3, 3), CLAIM_END - 1, 9);
    let r1 = reassign(&mut ids, 1, Some(2), CLAIM_END + 2_000, 12);
    msgs.extend([r1.clone(), in_time.clone()]);
    assert_rejected!(&msgs, &r1, Violation::WrongStatus { .. });
    assert_eq!(verdict_of(&msgs, &in_time), Verdict::Applied);
    assert_eq!(status(&msgs), SeedStatus::Claimed);

    // Nobody claims: rounds 1 and 2 lapse, round 3 has no bid left and the seed expires.
    let mut ids = Ids(100);
    let mut msgs = awarded_v2(&mut ids);
    let t1 = CLAIM_END + 2_000;
    let t2 = t1 + CLAIM_S * 1000 + 2_000;
    let t3 = t2 + CLAIM_S * 1000 + 2_000;
    let skip = reassign(&mut ids, 2, Some(4), t2, 21);
    msgs.push(skip.clone());
    assert_pending!(&msgs, &skip, Violation::RoundNotReached { round: 2, .. });
    let wrong = reassign(&mut ids, 1, Some(4), t1, 19);
    msgs.extend([wrong.clone(), reassign(&mut ids, 1, Some(2), t1 + 1, 20)]);
    assert_rejected!(&msgs, &wrong, Violation::InvalidDecision { .. });
    assert_eq!(verdict_of(&msgs, &skip), Verdict::Applied);
    msgs.push(reassign(&mut ids, 3, None, t3, 22));
    let v = fold(&msgs).view.unwrap();
    assert_eq!(v.status, SeedStatus::Expired);
    assert_eq!(v.past_rounds.len(), 3);
    assert_eq!(v.due_decision(t3 + 100_000), None);
}

#[test]
fn a_claimer_without_a_result_fails_its_round_and_the_publisher_reassigns_or_cancels() {
    let mut ids = Ids(0);
    let mut msgs = awarded_v2(&mut ids);
    let claimed_at = AWARD + 1_000;
    msgs.push(at(claim(&mut ids, 3, 3), claimed_at, 9));
    let v = fold(&msgs).view.unwrap();
    let deadline = claimed_at + (10 + GRACE_S) * 1000; // the seed's timeout is 10 s
    assert_eq!(v.result_deadline(), Some(deadline));
    assert_eq!(v.due_decision(deadline + 1_999), None);
    assert!(matches!(
        v.due_decision(deadline + 2_000),
        Some(Body::SeedFailed(f)) if f.round == 0
    ));

    let early = fail(&mut ids, 0, deadline - 1, 10);
    let late_result = at(result(&mut ids, 3), deadline + 1, 11);
    let failure = fail(&mut ids, 0, deadline + 2_000, 12);
    msgs.extend([early.clone(), late_result.clone(), failure.clone()]);
    refused_early_and_late(&msgs, &early, &late_result);
    let v = fold(&msgs).view.unwrap();
    assert_eq!(v.status, SeedStatus::Failed);
    assert_eq!(v.failed_at, Some(deadline + 2_000));
    assert_eq!(
        v.due_decision(deadline + 1_000_000),
        None,
        "a failed round waits for the operator"
    );
    assert!(state::check_local_reassign(&v, &node(1), deadline + 3_000).is_ok());
    assert!(state::check_local_reassign(&v, &node(2), deadline + 3_000).is_err());

    // Reassigned: the next best bid (2) wins round 1.
    let mut reopened = msgs.clone();
    let unclaimed = reassign(&mut ids, 1, Some(2), deadline + 3_000, 13);
    let mut wrong_cause = msgs.clone();
    wrong_cause.push(unclaimed.clone());
    assert_rejected!(&wrong_cause, &unclaimed, Violation::WrongStatus { .. });
    reopened.push(reassign_after(
        &mut ids,
        1,
        Some(2),
        deadline + 3_000,
        13,
        RoundEnd::Failed,
    ));
    let v = fold(&reopened).view.unwrap();
    assert_eq!(v.status, SeedStatus::Open);
    assert_eq!(v.award.as_ref().unwrap().winner_node, Some(node(2)));
    assert_eq!(v.past_rounds[0].ended, RoundEnd::Failed);
    assert_eq!(v.past_rounds[0].claimed_at, Some(claimed_at));
    assert!(v.claim.is_none() && v.failed_at.is_none());

    // Or cancelled.
    let mut c = at(cancel(&mut ids, 1, 0), deadline + 3_000, 13);
    if let Body::SeedCancelled(x) = &mut c.body {
        x.after = Some(RoundEnd::Failed);
    }
    msgs.push(c);
    assert_eq!(status(&msgs), SeedStatus::Cancelled);
}

#[test]
fn a_result_in_time_beats_a_failure_and_an_unsettled_result_is_settled_by_the_node() {
    let mut ids = Ids(0);
    let mut msgs = awarded_v2(&mut ids);
    msgs.push(at(claim(&mut ids, 3, 3), AWARD + 1_000, 9));
    let deadline = AWARD + 1_000 + (10 + GRACE_S) * 1000;
    let r = at(result(&mut ids, 3), deadline, 10);
    let failure = fail(&mut ids, 0, deadline + 2_000, 11);
    msgs.extend([failure.clone(), r.clone()]);
    assert_eq!(verdict_of(&msgs, &r), Verdict::Applied);
    assert_rejected!(&msgs, &failure, Violation::WrongStatus { .. });
    let v = fold(&msgs).view.unwrap();
    assert_eq!(v.status, SeedStatus::Completed);
    let finished = v.result.as_ref().unwrap().finished_at;
    assert_eq!(v.settle_deadline(), Some(finished + SETTLE_S * 1000));
    match v.due_decision(finished + SETTLE_S * 1000 + 2_000) {
        Some(Body::SeedSettled(s)) => {
            assert_eq!((s.outcome, s.amount), (SettlementOutcome::Accepted, 20));
        }
        other => panic!("expected a settlement, got {other:?}"),
    }
}

#[test]
fn a_late_cancel_needs_the_claim_window_over_and_rules_one_has_no_deadlines() {
    let mut ids = Ids(0);
    let mut msgs = awarded_v2(&mut ids);
    let mut early = at(cancel(&mut ids, 1, 0), CLAIM_END - 1, 10);
    if let Body::SeedCancelled(x) = &mut early.body {
        x.after = Some(RoundEnd::Unclaimed);
    }
    msgs.push(early.clone());
    match rejected_with(&msgs, &early) {
        Violation::InvalidDecision { reason, .. } => assert!(reason.contains("bidding is closed")),
        other => panic!("{other:?}"),
    }
    let mut late = at(early, CLAIM_END + 2_000, 11);
    late.id = ids.next();
    msgs.push(late);
    assert_eq!(status(&msgs), SeedStatus::Cancelled);

    // Rules 1: the same decisions are refused, nothing changes.
    let mut ids = Ids(0);
    let mut v1 = lifecycle(&mut ids);
    v1.truncate(4);
    let r = reassign(&mut ids, 1, Some(2), T0 + 1_000_000, 10);
    let f = fail(&mut ids, 0, T0 + 1_000_000, 11);
    v1.extend([r.clone(), f.clone()]);
    assert_rejected!(&v1, &r, Violation::NoDeadlines { .. });
    assert_rejected!(&v1, &f, Violation::NoDeadlines { .. });
    assert_eq!(status(&v1), SeedStatus::Open);
    assert_eq!(fold(&v1).view.unwrap().due_decision(u64::MAX / 2), None);
}

#[test]
fn a_seed_under_unknown_rules_is_refused_with_its_version() {
    let mut ids = Ids(0);
    let mut s = seed_v2(1);
    s.rules = 4;
    let creation = create(&mut ids, s);
    let b = bid(&mut ids, 2, 30, T0 + 100);
    let msgs = vec![creation.clone(), b.clone()];
    let f = fold(&msgs);
    assert!(f.view.is_none());
    for m in [&creation, &b] {
        match rejected_with(&msgs, m) {
            Violation::UnknownRules { rules, known, .. } => assert_eq!((rules, known), (4, 3)),
            other => panic!("{other:?}"),
        }
    }
    // A rules 2 seed must carry deadlines, a rules 1 seed must not.
    let mut bad = seed_v2(1);
    bad.deadlines = None;
    assert!(bad.check_fields().unwrap_err().contains("deadlines"));
    let mut bad = seed(1, 5);
    bad.deadlines = Some(Deadlines::default());
    assert!(bad.check_fields().is_err());
    let mut bad = seed_v2(1);
    bad.deadlines = Some(Deadlines {
        claim_secs: 0,
        ..Deadlines::default()
    });
    assert!(bad.check_fields().unwrap_err().contains("claim window"));
}

#[test]
fn a_publisher_may_not_bid_on_its_own_seed_under_rules_two() {
    // Rules 2: the publisher's bid is rejected, an award naming it is invalid, and the award
    // the publisher's node computes leaves it out.
    let mut ids = Ids(0);
    let creation = create(&mut ids, seed_v2(2));
    let own = bid(&mut ids, 1, 10, T0 + 100);
    let other = bid(&mut ids, 2, 30, T0 + 200);
    let msgs = vec![creation.clone(), own.clone(), other.clone()];
    let reason = rejected_with(&msgs, &own);
    assert_eq!(reason, Violation::OwnSeed { seed_id: seed_id() });
    assert_eq!(
        reason.to_string(),
        format!("the publisher of seed {} may not bid on it", seed_id())
    );
    assert_eq!(verdict_of(&msgs, &other), Verdict::Applied);
    let v = fold(&msgs).view.unwrap();
    assert_eq!(v.bids.len(), 1);
    let due = v.due_award(T0 + 6_000).unwrap();
    assert_eq!(due.considered, vec![bid_id(2)]);
    assert_eq!(due.winner, Some(bid_id(2)));
    let naming_own = award(&mut ids, 1, &[1, 2], Some(1), T0 + 6_000);
    let with_award = [msgs.clone(), vec![naming_own.clone()]].concat();
    assert_rejected!(&with_award, &naming_own, Violation::InvalidAward { .. });
    assert_eq!(status(&with_award), SeedStatus::Open);

    // Rules 1: seeds stored before the rule fold as they always did; the self-bid counts and
    // can win.
    let mut ids = Ids(0);
    let creation = create(&mut ids, seed(2, 5));
    let own = bid(&mut ids, 1, 10, T0 + 100);
    let other = bid(&mut ids, 2, 30, T0 + 200);
    let won = award(&mut ids, 1, &[1, 2], Some(1), T0 + 6_000);
    let msgs = vec![creation, own.clone(), other, won.clone()];
    assert_eq!(verdict_of(&msgs, &own), Verdict::Applied);
    assert_eq!(verdict_of(&msgs, &won), Verdict::Applied);
    let v = fold(&msgs).view.unwrap();
    assert_eq!(v.award.unwrap().winner_node, Some(node(1)));
}

#[test]
fn a_publisher_is_refused_locally_to_bid_on_its_own_seed_under_any_rules() {
    for s in [seed(2, 5), seed_v2(2)] {
        let mut ids = Ids(0);
        let creation = create(&mut ids, s);
        let v = fold([&creation]).view.unwrap();
        assert_eq!(
            state::check_local_bid(&v, &node(1), T0 + 1),
            Err(Violation::OwnSeed { seed_id: seed_id() })
        );
        assert_eq!(state::check_local_bid(&v, &node(2), T0 + 1), Ok(()));
        let err =
            crabnet_core::Error::from(state::check_local_bid(&v, &node(1), T0 + 1).unwrap_err());
        assert_eq!(err.kind(), crabnet_core::ErrorKind::State);
    }
}

/// How the winner of a round behaves in a simulated rules 2 history.
#[derive(Debug, Clone, Copy)]
enum Winner {
    ClaimsAndReports,
    NeverClaims,
    ClaimsButNeverReports,
    ClaimsLate,
}

fn winner_strategy() -> impl Strategy<Value = Winner> {
    prop_oneof![
        Just(Winner::ClaimsAndReports),
        Just(Winner::NeverClaims),
        Just(Winner::ClaimsButNeverReports),
        Just(Winner::ClaimsLate),
    ]
}

/// Bid prices, and how the winner of each round behaves: what the properties below build their
/// rules 2 histories from (see [`history_v2`]).
fn histories_v2() -> impl Strategy<Value = (Vec<u64>, Vec<Winner>)> {
    (
        prop::collection::vec(0u64..50, 0..4),
        prop::collection::vec(winner_strategy(), 1..4),
    )
}

/// An honest rules 2 history: bidders behave as given, the publisher's node issues every due
/// decision (checked once a second) and its operator reassigns every failed round.
fn history_v2(prices: &[u64], behaviour: &[Winner]) -> (Vec<Message>, u64) {
    let mut ids = Ids(1000);
    let mut msgs = vec![create(&mut ids, seed_v2(prices.len().max(1) as u32))];
    for (i, p) in prices.iter().enumerate() {
        let mut m = bid(&mut ids, 10 + i as u8, 10 + p, T0 + 100 * (i as u64 + 1));
        m.lamport = 2;
        msgs.push(m);
    }
    let mut lamport = 10;
    let mut acted: std::collections::HashSet<(u32, u8)> = Default::default();
    let mut t = T0 + 5_000;
    let end = T0 + 400_000;
    while t < end {
        t += 1_000;
        let v = fold(&msgs).view.unwrap();
        if let Some(body) = v.due_decision(t) {
            lamport += 1;
            msgs.push(msg(&mut ids, node(1), lamport, t, body));
            continue;
        }
        if v.status == SeedStatus::Failed {
            lamport += 1;
            let body = Body::SeedReassigned(v.reassignment().unwrap());
            msgs.push(msg(&mut ids, node(1), lamport, t, body));
            continue;
        }
        let Some(award) = v.award.clone() else {
            continue;
        };
        let Some(w) = award.winner_node.clone() else {
            continue;
        };
        let who = (0..prices.len())
            .find(|i| node(10 + *i as u8) == w)
            .unwrap();
        let behave = behaviour[who % behaviour.len()];
        let round_start = award.round_started_at;
        lamport += 1;
        match (v.status, behave) {
            (SeedStatus::Open, Winner::ClaimsAndReports | Winner::ClaimsButNeverReports)
                if acted.insert((award.round, 0)) =>
            {
                let c = Body::SeedClaimed(Claim {
                    seed_id: seed_id(),
                    claimer: w.clone(),
                    bid_id: award.winner.clone().unwrap(),
                });
                msgs.push(msg(&mut ids, w, lamport, round_start + 1_000, c));
            }
            (SeedStatus::Open, Winner::ClaimsLate)
                if t > round_start + CLAIM_S * 1000 && acted.insert((award.round, 0)) =>
            {
                let c = Body::SeedClaimed(Claim {
                    seed_id: seed_id(),
                    claimer: w.clone(),
                    bid_id: award.winner.clone().unwrap(),
                });
                msgs.push(msg(&mut ids, w, lamport, t, c));
            }
            (SeedStatus::Claimed, Winner::ClaimsAndReports | Winner::ClaimsLate)
                if acted.insert((award.round, 1)) =>
            {
                let mut r = result(&mut ids, 0);
                r.sender = w.clone();
                r.lamport = lamport;
                r.timestamp = t;
                if let Body::ResultReported(res) = &mut r.body {
                    res.runner = w;
                    res.started_at = t - 10;
                    res.finished_at = t - 5;
                }
                msgs.push(r);
            }
            _ => {}
        }
    }
    (msgs, end)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Rules 2: any delivery order of an honest history with unresponsive winners converges,
    /// rounds never go back, and every lifecycle ends: nothing is left open past a deadline.
    #[test]
    fn deadlines_end_every_lifecycle_and_replicas_converge(
        (prices, behaviour) in histories_v2(),
        seeds in prop::collection::vec(any::<u64>(), 3),
    ) {
        let (msgs, end) = history_v2(&prices, &behaviour);
        let reference = fold(&msgs);
        let v = reference.view.clone().unwrap();
        prop_assert!(
            matches!(v.status, SeedStatus::Settled | SeedStatus::Expired),
            "ended {} after {:?}", v.status, behaviour
        );
        prop_assert_eq!(v.due_decision(end), None);
        for s in seeds {
            let mut received: Vec<Message> = Vec::new();
            let mut round = 0;
            for i in deliver_order(msgs.len(), s) {
                received.push(msgs[i].clone());
                if let Some(a) = fold(&received).view.and_then(|v| v.award) {
                    prop_assert!(a.round >= round, "round {} after {}", a.round, round);
                    round = a.round;
                }
            }
            prop_assert_eq!(&fold(&received), &reference);
        }
    }
}

/// Deadline decisions forged by a node that is not the publisher (the lapsed winner wanting
/// the seed back, a bystander) never take effect, whenever they are dated.
#[test]
fn only_the_publisher_reassigns_or_fails_a_round() {
    let mut ids = Ids(0);
    let mut msgs = awarded_v2(&mut ids);
    let mut forged_reassign = reassign(&mut ids, 1, Some(2), CLAIM_END + 5_000, 10);
    forged_reassign.sender = node(2);
    msgs.push(forged_reassign.clone());
    assert_rejected!(&msgs, &forged_reassign, Violation::NotPublisher { .. });
    assert_eq!(fold(&msgs).view.unwrap().award.unwrap().round, 0);

    msgs.push(at(claim(&mut ids, 3, 3), AWARD + 1_000, 11));
    let mut forged_fail = fail(&mut ids, 0, T0 + 10_000_000, 12);
    forged_fail.sender = node(4);
    msgs.push(forged_fail.clone());
    assert_rejected!(&msgs, &forged_fail, Violation::NotPublisher { .. });
    assert_eq!(status(&msgs), SeedStatus::Claimed);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// `next_decision_at` says exactly from when `due_decision` has a decision, at every step
    /// of a rules 2 lifecycle: a node that schedules its next look by it decides neither
    /// later nor never.
    #[test]
    fn the_next_decision_time_is_when_a_decision_becomes_due(
        (prices, behaviour) in histories_v2(),
    ) {
        let (msgs, end) = history_v2(&prices, &behaviour);
        for n in 1..=msgs.len() {
            let v = fold(&msgs[..n]).view.unwrap();
            let next = v.next_decision_at();
            let mut times: Vec<u64> = (T0..end).step_by(7_000).collect();
            if let Some(at) = next {
                times.extend([at.saturating_sub(1), at, at + 1]);
            }
            for t in times {
                prop_assert_eq!(
                    v.due_decision(t).is_some(),
                    next.is_some_and(|at| at <= t),
                    "{} at {} (next {:?})", v.status, t, next
                );
            }
        }
    }
}
