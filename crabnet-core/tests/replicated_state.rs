//! Replicated execution (rules 3) in the state machine: the award names `replicas` runners,
//! results are compared by output hash and exit code, a quorum completes the seed, dissenters
//! are recorded, no quorum escalates or ends `inconclusive`, settlement pays the agreeing
//! runners; and a property test over simulated histories delivered in any order.

use crabnet_core::model::{
    Bid, BidId, Body, Claim, Deadlines, Escalation, Message, MessageId, NodeId, OutputHash,
    Replication, Seed, SeedId, SeedStatus, Settlement, SettlementOutcome, TaskResult, rules,
};
use crabnet_core::reputation::Reputation;
use crabnet_core::state::{self, ReplicaStanding, SeedView, Verdict, Violation, fold};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[path = "support/fold_fixtures.rs"]
mod fold_fixtures;
use fold_fixtures::{deliver_order, task_result};

const T0: u64 = 1_700_000_000_000;
const PUBLISHER: u8 = 1;
const CLAIM_S: u64 = 30;
const GRACE_S: u64 = 20;
const TIMEOUT_S: u64 = 10;

fn node(n: u8) -> NodeId {
    NodeId::from_bytes([n; 32])
}

fn seed_id() -> SeedId {
    seed_of(0)
}

fn bid_id(n: u8) -> BidId {
    bid_of(0, n)
}

/// The id of seed `tag` (0: the seed of most tests).
fn seed_of(tag: u8) -> SeedId {
    let mut id = [0xaa; 16];
    id[15] ^= tag;
    SeedId::from_bytes(id)
}

/// The id of `bidder`'s bid on seed `tag`.
fn bid_of(tag: u8, bidder: u8) -> BidId {
    let mut id = [bidder; 16];
    id[15] ^= tag;
    BidId::from_bytes(id)
}

/// Builds messages with increasing ids and Lamport counters (a causal history) about one
/// seed; histories with different tags have distinct seed, bid and message ids.
struct History {
    msgs: Vec<Message>,
    n: u64,
    tag: u8,
    publisher: u8,
}

impl History {
    fn new(replicas: u32, quorum: u32, max_replicas: u32) -> Self {
        Self::of(0, PUBLISHER, |seed| {
            seed.replication = Some(Replication {
                replicas,
                quorum,
                max_replicas,
                hash: OutputHash::Combined,
            })
        })
    }

    /// The history of seed `tag` (0: [`seed_id`]) published by `publisher`: a rules 3 seed
    /// unless `edit` says otherwise.
    fn of(tag: u8, publisher: u8, edit: impl FnOnce(&mut Seed)) -> Self {
        let mut seed = Seed {
            min_price: 1,
            bid_window_secs: 5,
            max_bids: 10,
            timeout_secs: TIMEOUT_S,
            rules: rules::V3,
            deadlines: Some(Deadlines {
                claim_secs: CLAIM_S,
                result_grace_secs: GRACE_S,
                settle_secs: 60,
            }),
            replication: Some(Replication {
                replicas: 1,
                quorum: 1,
                max_replicas: 1,
                hash: OutputHash::Combined,
            }),
            ..fold_fixtures::seed(seed_of(tag), node(publisher), T0)
        };
        edit(&mut seed);
        let mut h = History {
            msgs: Vec::new(),
            n: 0,
            tag,
            publisher,
        };
        h.push(publisher, T0, Body::SeedCreated(seed));
        h
    }

    fn seed_id(&self) -> SeedId {
        seed_of(self.tag)
    }

    fn bid_id(&self, bidder: u8) -> BidId {
        bid_of(self.tag, bidder)
    }

    fn push(&mut self, sender: u8, at: u64, body: Body) -> Message {
        self.n += 1;
        let mut id = [0u8; 16];
        id[0] = self.tag;
        id[8..].copy_from_slice(&self.n.to_be_bytes());
        let m = Message {
            id: MessageId::from_bytes(id),
            sender: node(sender),
            lamport: self.n,
            timestamp: at,
            body,
        };
        self.msgs.push(m.clone());
        m
    }

    fn bid(&mut self, bidder: u8, price: u64) -> Message {
        let body = Body::BidPlaced(Bid {
            id: self.bid_id(bidder),
            seed_id: self.seed_id(),
            bidder: node(bidder),
            price,
        });
        self.push(bidder, T0 + 100 + bidder as u64, body)
    }

    fn view(&self) -> SeedView {
        fold(&self.msgs).view.expect("created")
    }

    /// The publisher's node issues what is due at `at`.
    fn decide(&mut self, at: u64) -> Option<Message> {
        let body = self.view().due_decision(at)?;
        Some(self.push(self.publisher, at, body))
    }

    fn claim(&mut self, runner: u8, at: u64) -> Message {
        let body = Body::SeedClaimed(Claim {
            seed_id: self.seed_id(),
            claimer: node(runner),
            bid_id: self.bid_id(runner),
        });
        self.push(runner, at, body)
    }

    fn result(&mut self, runner: u8, at: u64, hash: char) -> Message {
        let body = Body::ResultReported(TaskResult {
            output_bytes: 3,
            output_excerpt: "hi\n".into(),
            ..task_result(
                self.seed_id(),
                node(runner),
                hash.to_string().repeat(64),
                at,
            )
        });
        self.push(runner, at, body)
    }

    fn verdict(&self, m: &Message) -> Verdict {
        fold(&self.msgs).verdicts[&m.id].clone()
    }

    /// Why `body`, sent by the publisher at `at`, is rejected; panics if it is not.
    fn rejection(&mut self, at: u64, body: Body) -> Violation {
        let m = self.push(PUBLISHER, at, body);
        match self.verdict(&m) {
            Verdict::Rejected { reason } => reason,
            other => panic!("not rejected: {other:?}"),
        }
    }
}

/// The `n` of `node(n)`.
fn num(id: &NodeId) -> u8 {
    u8::from_str_radix(&id.as_str()[..2], 16).unwrap()
}

fn standings(v: &SeedView) -> Vec<(u8, ReplicaStanding)> {
    v.replicas
        .iter()
        .map(|r| (num(&r.runner), r.standing))
        .collect()
}

fn close_at() -> u64 {
    T0 + 5_000
}

/// Bids from nodes 10, 11, ... at prices 10, 20, ...; the award at the window's end.
fn awarded(replicas: u32, quorum: u32, max: u32, bidders: u8) -> History {
    let mut h = History::new(replicas, quorum, max);
    for i in 0..bidders {
        h.bid(10 + i, 10 * (i as u64 + 1));
    }
    let award = h.decide(close_at()).expect("award due");
    let Body::BiddingClosed(a) = &award.body else {
        panic!("{award:?}")
    };
    assert_eq!(a.winners.len(), replicas.min(bidders as u32) as usize);
    h
}

#[test]
fn three_replicas_one_liar_complete_with_the_honest_result_and_pay_the_agreeing() {
    let mut h = awarded(3, 2, 3, 5);
    let v = h.view();
    assert_eq!(v.status, SeedStatus::Open);
    // The three cheapest bids win, best first.
    let runners: Vec<NodeId> = v.replicas.iter().map(|r| r.runner.clone()).collect();
    assert_eq!(runners, vec![node(10), node(11), node(12)]);
    // A bidder that was not awarded cannot claim.
    let intruder = h.claim(13, close_at() + 10);
    assert!(matches!(
        h.verdict(&intruder),
        Verdict::Rejected {
            reason: Violation::NotWinningBidder { .. }
        }
    ));
    for r in [10, 11, 12] {
        h.claim(r, close_at() + 10);
    }
    assert_eq!(h.view().status, SeedStatus::Claimed);
    h.result(10, close_at() + 100, 'a');
    let liar = h.result(11, close_at() + 100, 'b');
    assert_eq!(
        h.view().status,
        SeedStatus::Claimed,
        "one vote each: no quorum yet"
    );
    assert_eq!(
        h.view().due_decision(close_at() + 200),
        None,
        "replica 12 may still report"
    );
    h.result(12, close_at() + 150, 'a');
    let v = h.view();
    assert_eq!(v.status, SeedStatus::Completed);
    assert_eq!(v.result.as_ref().unwrap().output_sha256, "a".repeat(64));
    assert_eq!(v.result.as_ref().unwrap().runner, node(10));
    let by_runner: Vec<ReplicaStanding> = v.replicas.iter().map(|r| r.standing).collect();
    assert_eq!(
        by_runner,
        vec![
            ReplicaStanding::Agreed,
            ReplicaStanding::Dissented,
            ReplicaStanding::Agreed
        ]
    );
    assert_eq!(
        h.verdict(&liar),
        Verdict::Applied,
        "a dissent is recorded, not rejected"
    );
    // Settlement pays the agreeing runners, each its own price.
    let s = v.settlement_for(true, "ok");
    assert_eq!(s.paid, vec![node(10), node(12)]);
    assert_eq!(s.amount, 10 + 30);
    // Paying the liar, or paying too few, is refused.
    let pay = |paid: Vec<NodeId>, amount: u64| {
        Body::SeedSettled(Settlement {
            paid,
            amount,
            ..s.clone()
        })
    };
    let bad = h.rejection(close_at() + 300, pay(vec![node(10), node(11)], 30));
    assert!(matches!(bad, Violation::InvalidPayment { .. }), "{bad:?}");
    let few = h.rejection(close_at() + 301, pay(vec![node(10)], 10));
    assert!(matches!(few, Violation::InvalidPayment { .. }), "{few:?}");
    let wrong = h.rejection(close_at() + 302, pay(s.paid.clone(), 41));
    assert!(
        matches!(wrong, Violation::WrongAmount { expected: 40, .. }),
        "{wrong:?}"
    );
    let ok = h.push(PUBLISHER, close_at() + 303, Body::SeedSettled(s));
    assert_eq!(h.verdict(&ok), Verdict::Applied);
    let v = h.view();
    assert_eq!(v.status, SeedStatus::Settled);
    assert_eq!(
        v.settlement.unwrap().settlement.outcome,
        SettlementOutcome::Accepted
    );
}

#[test]
fn a_two_two_split_escalates_and_the_next_replica_decides() {
    let mut h = awarded(4, 3, 5, 6);
    for r in 10..14 {
        h.claim(r, close_at() + 10);
    }
    for (r, hash) in [(10, 'a'), (11, 'b'), (12, 'a'), (13, 'b')] {
        h.result(r, close_at() + 100, hash);
    }
    let v = h.view();
    assert_eq!(v.status, SeedStatus::Claimed);
    assert!(
        v.replicas
            .iter()
            .all(|r| r.standing == ReplicaStanding::Reported)
    );
    // Every replica reported: the escalation is due at once and awards one more runner
    // (3 - 2 = 1), the next best bid.
    assert_eq!(v.next_decision_at(), Some(0));
    let esc = h.decide(close_at() + 101).expect("escalation due");
    let Body::SeedEscalated(e) = &esc.body else {
        panic!("{esc:?}")
    };
    assert_eq!((e.step, e.winners.clone()), (1, vec![bid_id(14)]));
    assert_eq!(h.verdict(&esc), Verdict::Applied);
    let v = h.view();
    assert_eq!(v.replicas.len(), 5);
    assert_eq!(v.replicas[4].step, 1);
    assert_eq!(v.replicas[4].standing, ReplicaStanding::Awarded);
    assert_eq!(v.status, SeedStatus::Claimed);
    h.claim(14, close_at() + 200);
    h.result(14, close_at() + 300, 'b');
    let v = h.view();
    assert_eq!(v.status, SeedStatus::Completed);
    assert_eq!(v.result.as_ref().unwrap().output_sha256, "b".repeat(64));
    assert_eq!(
        standings(&v)
            .into_iter()
            .map(|(_, s)| s)
            .collect::<Vec<_>>(),
        vec![
            ReplicaStanding::Dissented,
            ReplicaStanding::Agreed,
            ReplicaStanding::Dissented,
            ReplicaStanding::Agreed,
            ReplicaStanding::Agreed
        ]
    );
    // A second escalation now is refused.
    let late = h.push(
        PUBLISHER,
        close_at() + 400,
        Body::SeedEscalated(Escalation {
            seed_id: seed_id(),
            step: 2,
            winners: vec![bid_id(15)],
            seen: Vec::new(),
        }),
    );
    assert!(matches!(h.verdict(&late), Verdict::Rejected { .. }));
}

/// Three replicas (quorum 2, at most 4) claimed; 10 reported a, 11 b, 12 nothing yet.
fn three_claimed_a_b() -> History {
    split_a_b(awarded(3, 2, 4, 5), &[10, 11, 12])
}

/// `h` once `claimers` claimed 10 ms after bidding closed and, 100 ms after it, 10 reported
/// output a and 11 output b.
fn split_a_b(mut h: History, claimers: &[u8]) -> History {
    for &r in claimers {
        h.claim(r, close_at() + 10);
    }
    h.result(10, close_at() + 100, 'a');
    h.result(11, close_at() + 100, 'b');
    h
}

/// Three replicas (quorum 2, at most 4) claim; 10 reports a, 11 reports b, 12 nothing by its
/// result deadline, after which the publisher's node escalates. Returns the history, the
/// escalation and 12's result deadline.
fn escalated_without_12() -> (History, Message, u64) {
    let mut h = three_claimed_a_b();
    let result_deadline = close_at() + 10 + (TIMEOUT_S + GRACE_S) * 1000;
    let esc = h
        .decide(result_deadline + state::DECISION_MARGIN_MS)
        .expect("escalation due");
    (h, esc, result_deadline)
}

/// Attack: a runner that let its result deadline pass reports afterwards with a backdated
/// result that would have completed the seed. Judged by the claims and results the
/// escalation names, the escalation stands and the late result lapses.
#[test]
fn a_backdated_result_cannot_undo_an_escalation() {
    let (mut h, esc, result_deadline) = escalated_without_12();
    let Body::SeedEscalated(e) = &esc.body else {
        panic!("{esc:?}")
    };
    assert_eq!(e.winners, vec![bid_id(13)]);
    assert_eq!(e.seen.len(), 5, "three claims and two results");
    // Replica 12 now reports, dated inside its deadline, agreeing with replica 10.
    let backdated = h.result(12, result_deadline - 1, 'a');
    assert!(matches!(
        h.verdict(&backdated),
        Verdict::Rejected {
            reason: Violation::Lapsed { .. }
        }
    ));
    assert_eq!(h.verdict(&esc), Verdict::Applied);
    let v = h.view();
    assert_eq!(v.status, SeedStatus::Claimed);
    assert_eq!(v.result, None);
    assert_eq!(
        standings(&v),
        vec![
            (10, ReplicaStanding::Reported),
            (11, ReplicaStanding::Reported),
            (12, ReplicaStanding::Lapsed),
            (13, ReplicaStanding::Awarded),
        ]
    );
    // The escalated replica decides it.
    h.claim(13, result_deadline + 5_000);
    h.result(13, result_deadline + 6_000, 'a');
    let v = h.view();
    assert_eq!(v.status, SeedStatus::Completed);
    assert_eq!(standings(&v)[3], (13, ReplicaStanding::Agreed));
}

/// Attack: a runner that never claimed sends a claim and a result dated inside its windows
/// after the escalation that ended its turn; the escalation stands.
#[test]
fn a_backdated_claim_cannot_undo_an_escalation() {
    let mut h = split_a_b(awarded(3, 2, 4, 5), &[10, 11]);
    let claim_deadline = close_at() + CLAIM_S * 1000;
    let esc = h
        .decide(claim_deadline + state::DECISION_MARGIN_MS)
        .expect("escalation due");
    h.claim(12, close_at() + 20);
    let backdated = h.result(12, close_at() + 200, 'a');
    assert_eq!(h.verdict(&esc), Verdict::Applied);
    assert!(matches!(
        h.verdict(&backdated),
        Verdict::Rejected {
            reason: Violation::Lapsed { .. }
        }
    ));
    let v = h.view();
    assert_ne!(v.status, SeedStatus::Completed);
    assert_eq!(v.replicas.len(), 4);
    assert_eq!(v.replicas[2].standing, ReplicaStanding::Lapsed);
}

/// An escalation naming a result this node does not hold yet waits for it, then applies; one
/// naming a message of a runner outside the race is refused.
#[test]
fn an_escalation_waits_for_what_it_names() {
    let mut h = three_claimed_a_b();
    let r12 = h.result(12, close_at() + 100, 'c');
    let esc = h.decide(close_at() + 200).expect("every replica reported");
    // Deliver the escalation before replica 12's result.
    let pos = h.msgs.iter().position(|m| m.id == r12.id).unwrap();
    let held = h.msgs.remove(pos);
    assert!(matches!(h.verdict(&esc), Verdict::Pending { .. }));
    h.msgs.push(held);
    assert_eq!(h.verdict(&esc), Verdict::Applied);
    assert_eq!(
        h.view().replicas.len(),
        4,
        "one more: each result stands alone"
    );

    let mut h = split_a_b(awarded(3, 2, 4, 5), &[10, 11]);
    let stranger = h.claim(14, close_at() + 10);
    let claim_deadline = close_at() + CLAIM_S * 1000;
    let Some(Body::SeedEscalated(mut e)) = h
        .view()
        .due_decision(claim_deadline + state::DECISION_MARGIN_MS)
    else {
        panic!("escalation due")
    };
    e.seen.push(stranger.id);
    let bad = h.push(
        PUBLISHER,
        claim_deadline + state::DECISION_MARGIN_MS,
        Body::SeedEscalated(e),
    );
    assert!(matches!(
        h.verdict(&bad),
        Verdict::Rejected {
            reason: Violation::InvalidDecision { .. }
        }
    ));
}

#[test]
fn without_bids_or_room_left_the_seed_ends_inconclusive() {
    // max_replicas = replicas: no room to escalate.
    let mut h = split_a_b(awarded(2, 2, 2, 4), &[10, 11]);
    // An escalation that awards anyway is refused.
    let greedy = h.push(
        PUBLISHER,
        close_at() + 150,
        Body::SeedEscalated(Escalation {
            seed_id: seed_id(),
            step: 1,
            winners: vec![bid_id(12)],
            seen: Vec::new(),
        }),
    );
    assert!(matches!(
        h.verdict(&greedy),
        Verdict::Rejected {
            reason: Violation::InvalidDecision { .. }
        }
    ));
    let end = h.decide(close_at() + 200).expect("inconclusive due");
    let Body::SeedEscalated(e) = &end.body else {
        panic!()
    };
    assert!(e.winners.is_empty());
    let v = h.view();
    assert_eq!(v.status, SeedStatus::Inconclusive);
    assert_eq!(v.inconclusive_at, Some(close_at() + 200));
    assert!(v.status.is_final());
    assert_eq!(v.due_decision(u64::MAX / 2), None);
    // Nothing to settle.
    let s = v.settlement_for(true, "x");
    let m = h.push(PUBLISHER, close_at() + 300, Body::SeedSettled(s));
    assert!(matches!(h.verdict(&m), Verdict::Rejected { .. }));

    // Too few bids for the quorum: one bid, quorum 2.
    let mut h = awarded(3, 2, 3, 1);
    h.claim(10, close_at() + 10);
    h.result(10, close_at() + 100, 'a');
    let end = h.decide(close_at() + 101).expect("due at once");
    assert!(matches!(&end.body, Body::SeedEscalated(e) if e.winners.is_empty()));
    assert_eq!(h.view().status, SeedStatus::Inconclusive);
}

#[test]
fn a_replica_that_lets_its_deadline_pass_lapses_at_the_escalation() {
    let mut h = awarded(3, 2, 4, 5);
    let seen = vec![
        h.claim(10, close_at() + 10).id,
        h.claim(11, close_at() + 10).id,
        h.result(10, close_at() + 100, 'a').id,
        h.result(11, close_at() + 100, 'b').id,
    ];
    // Replica 12 never claims: nothing is due before its claim window is over.
    let claim_deadline = close_at() + CLAIM_S * 1000;
    let v = h.view();
    assert_eq!(
        v.next_decision_at(),
        Some(claim_deadline + state::DECISION_MARGIN_MS)
    );
    assert_eq!(v.due_decision(claim_deadline), None);
    // An escalation dated inside the window is refused: by what it names, replica 12 could
    // still claim.
    let early = h.push(
        PUBLISHER,
        claim_deadline - 1,
        Body::SeedEscalated(Escalation {
            seed_id: seed_id(),
            step: 1,
            winners: vec![bid_id(13)],
            seen,
        }),
    );
    assert!(matches!(
        h.verdict(&early),
        Verdict::Rejected {
            reason: Violation::InvalidDecision { .. }
        }
    ));
    h.msgs.pop();
    let esc = h
        .decide(claim_deadline + state::DECISION_MARGIN_MS)
        .expect("escalation due");
    assert!(matches!(&esc.body, Body::SeedEscalated(e) if e.winners == vec![bid_id(13)]));
    // Its late claim loses.
    let late = h.claim(12, claim_deadline + 5_000);
    assert!(matches!(
        h.verdict(&late),
        Verdict::Rejected {
            reason: Violation::Lapsed { .. }
        }
    ));
    let v = h.view();
    assert_eq!(v.replicas[2].standing, ReplicaStanding::Lapsed);
    // The lapsed replica may not claim locally either; the new one may.
    assert!(state::check_local_claim(&v, &node(12), claim_deadline + 6_000).is_err());
    assert_eq!(
        state::check_local_claim(&v, &node(13), claim_deadline + 6_000),
        Ok(bid_id(13))
    );
    h.claim(13, claim_deadline + 6_000);
    assert_eq!(state::check_local_run(&h.view(), &node(13)), Ok(()));
    h.result(13, claim_deadline + 7_000, 'a');
    let v = h.view();
    assert_eq!(v.status, SeedStatus::Completed);
    assert_eq!(
        v.replicas.iter().map(|r| r.standing).collect::<Vec<_>>(),
        vec![
            ReplicaStanding::Agreed,
            ReplicaStanding::Dissented,
            ReplicaStanding::Lapsed,
            ReplicaStanding::Agreed
        ]
    );
    assert!(
        state::check_local_run(&v, &node(13)).is_err(),
        "reported already"
    );
}

#[test]
fn the_award_must_name_the_best_bids_and_rules_are_checked() {
    let mut h = History::new(2, 2, 2);
    for i in 0..3u8 {
        h.bid(10 + i, 10 * (i as u64 + 1));
    }
    let mut a = h.view().due_award(close_at()).unwrap();
    assert_eq!(a.winners, vec![bid_id(10), bid_id(11)]);
    a.winners = vec![bid_id(10), bid_id(12)];
    let bad = h.push(PUBLISHER, close_at(), Body::BiddingClosed(a));
    assert!(matches!(
        h.verdict(&bad),
        Verdict::Rejected {
            reason: Violation::InvalidAward { .. }
        }
    ));
    // Bounds of the replication.
    let ok = Replication {
        replicas: 3,
        quorum: 2,
        max_replicas: 5,
        hash: OutputHash::Stdout,
    };
    assert!(ok.check().is_ok());
    for (replicas, quorum, max) in [
        (0, 0, 0),
        (3, 1, 3),
        (4, 2, 4),
        (3, 4, 3),
        (3, 2, 2),
        (3, 2, 17),
    ] {
        let r = Replication {
            replicas,
            quorum,
            max_replicas: max,
            ..ok
        };
        assert!(r.check().is_err(), "{r:?} accepted");
    }
    // Replication needs rules 3, and rules 3 needs replication.
    let mut seed = match &h.msgs[0].body {
        Body::SeedCreated(s) => s.clone(),
        _ => unreachable!(),
    };
    assert!(seed.check_fields().is_ok());
    seed.rules = rules::V2;
    assert!(seed.check_fields().unwrap_err().contains("rules 3"));
    seed.rules = rules::V3;
    seed.replication = None;
    assert!(seed.check_fields().unwrap_err().contains("replication"));
    // Old seeds are written without the field: the wire form of a rules 2 seed is unchanged.
    let json = serde_json::to_string(&Seed {
        rules: rules::V2,
        ..seed
    })
    .unwrap();
    assert!(!json.contains("replication"), "{json}");
}

// ---------------------------------------------------------------------------------------------
// Property: simulated histories with honest runners, liars (each forging its own hash),
// runners that never claim and runners that never report. Every lifecycle ends; a settled
// seed completed with the honest result when liars do not collude and pays only honest
// runners; replicas that receive the messages in any order, with duplicates, converge and
// never see a seed move backwards.

#[derive(Debug, Clone, Copy)]
enum Runner {
    Honest,
    Liar,
    NoClaim,
    NoResult,
}

fn runner_strategy() -> impl Strategy<Value = Runner> {
    prop_oneof![
        4 => Just(Runner::Honest),
        2 => Just(Runner::Liar),
        1 => Just(Runner::NoClaim),
        1 => Just(Runner::NoResult),
    ]
}

fn simulate(replicas: u32, quorum: u32, max: u32, runners: &[(Runner, u64)]) -> History {
    let mut h = History::new(replicas, quorum, max);
    for (i, (_, price)) in runners.iter().enumerate() {
        h.bid(10 + i as u8, *price);
    }
    for _ in 0..100 {
        let v = h.view();
        if v.status.is_final() {
            break;
        }
        let mut acted = false;
        for r in v
            .replicas
            .iter()
            .filter(|r| r.standing != ReplicaStanding::Lapsed)
        {
            let n = num(&r.runner);
            let behaviour = runners[(n - 10) as usize].0;
            if r.claimed_at.is_none() && !matches!(behaviour, Runner::NoClaim) {
                let b = Body::SeedClaimed(Claim {
                    seed_id: seed_id(),
                    claimer: r.runner.clone(),
                    bid_id: r.bid_id.clone(),
                });
                push_as(&mut h, &r.runner, r.assigned_at + 1_000, b);
                acted = true;
            } else if let (Some(c), None, Runner::Honest | Runner::Liar) =
                (r.claimed_at, &r.result, behaviour)
            {
                let hash = match behaviour {
                    Runner::Honest => "a".repeat(64),
                    _ => format!("{:064x}", n),
                };
                let at = c + 2_000;
                let body = Body::ResultReported(task_result(seed_id(), r.runner.clone(), hash, at));
                push_as(&mut h, &r.runner, at, body);
                acted = true;
            }
        }
        if acted {
            continue;
        }
        let Some(t) = v.next_decision_at() else { break };
        let now = t.max(close_at());
        if h.decide(now).is_none() {
            break;
        }
    }
    h
}

fn push_as(h: &mut History, sender: &NodeId, at: u64, body: Body) {
    h.n += 1;
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&h.n.to_be_bytes());
    h.msgs.push(Message {
        id: MessageId::from_bytes(id),
        sender: sender.clone(),
        lamport: h.n,
        timestamp: at,
        body,
    });
}

fn replication_strategy() -> impl Strategy<Value = (u32, u32, u32)> {
    prop_oneof![
        Just((1, 1, 2)),
        Just((2, 2, 3)),
        Just((3, 2, 3)),
        Just((3, 2, 5)),
        Just((4, 3, 5)),
        Just((5, 3, 7)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn replicated_lifecycles_end_pay_honest_runners_and_converge(
        (replicas, quorum, max) in replication_strategy(),
        runners in prop::collection::vec((runner_strategy(), 1u64..100), 0..8),
        seeds in prop::collection::vec(any::<u64>(), 3),
    ) {
        let h = simulate(replicas, quorum, max, &runners);
        let reference = fold(&h.msgs);
        let v = reference.view.clone().unwrap();
        prop_assert!(
            matches!(v.status, SeedStatus::Settled | SeedStatus::Inconclusive | SeedStatus::Expired),
            "ended {} with {:?}", v.status, v.replicas
        );
        prop_assert!(reference.verdicts.values().all(|x| matches!(x, Verdict::Applied)),
            "an honest history is applied whole: {:?}", reference.verdicts);
        prop_assert!(v.replicas.len() <= max as usize);
        // Liars forge distinct hashes, so only a quorum of one can be a lie.
        if v.status == SeedStatus::Settled && quorum >= 2 {
            let s = &v.settlement.as_ref().unwrap().settlement;
            prop_assert_eq!(&v.result.as_ref().unwrap().output_sha256, &"a".repeat(64));
            prop_assert!(s.paid.len() >= quorum as usize);
            for p in &s.paid {
                let i = (num(p) - 10) as usize;
                prop_assert!(matches!(runners[i].0, Runner::Honest));
            }
        }
        let digest = state::digest(reference.view.iter());
        for s in seeds {
            let mut received: Vec<Message> = Vec::new();
            let mut last: Option<SeedStatus> = None;
            for i in deliver_order(h.msgs.len(), s) {
                received.push(h.msgs[i].clone());
                let f = fold(&received);
                if let Some(view) = &f.view {
                    if let Some(prev) = last {
                        prop_assert!(prev.can_reach(view.status, view.seed.rules),
                            "moved from {} to {}", prev, view.status);
                    }
                    last = Some(view.status);
                }
            }
            let f = fold(&received);
            prop_assert_eq!(&f, &reference);
            prop_assert_eq!(state::digest(f.view.iter()), digest.clone());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reputation: derived from the folded states only; the same on stores that hold the same
// messages in any order, kept across a reopen, rebuilt by the migration that adds it.

/// The liar history of the first test, settled by the publisher's node.
fn liar_history() -> History {
    let mut h = split_a_b(awarded(3, 2, 3, 5), &[10, 11, 12]);
    h.result(12, close_at() + 150, 'a');
    let s = h.view().settlement_for(true, "ok");
    h.push(PUBLISHER, close_at() + 300, Body::SeedSettled(s));
    assert_eq!(h.view().status, SeedStatus::Settled);
    h
}

#[test]
fn reputation_counts_agreement_dissent_and_payment_from_the_state_alone() {
    use crabnet_core::reputation::{Reputation, contributions};
    let v = liar_history().view();
    let c = contributions(&v);
    let honest = Reputation {
        agreed: 1,
        settlements_accepted: 1,
        ..Reputation::default()
    };
    assert_eq!(c[&node(10)], honest);
    assert_eq!(c[&node(12)], honest);
    assert_eq!(
        c[&node(11)],
        Reputation {
            dissented: 1,
            ..Reputation::default()
        }
    );
    assert!(!c.contains_key(&node(13)), "not awarded: nothing to say");
    // A replica that let its claim window pass missed a deadline.
    let mut h = split_a_b(awarded(3, 2, 4, 5), &[10, 11]);
    h.decide(close_at() + CLAIM_S * 1000 + state::DECISION_MARGIN_MS)
        .expect("escalation");
    assert_eq!(contributions(&h.view())[&node(12)].missed_deadlines, 1);
}

#[test]
fn reputation_is_the_same_on_stores_with_the_same_messages_and_survives_a_reopen() {
    use crabnet_core::store::{Store, StoreConfig};
    let h = liar_history();
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| Store::open(&dir.path().join(name), &StoreConfig::default()).unwrap();
    let (mut a, mut b) = (open("a"), open("b"));
    for m in &h.msgs {
        a.apply_remote(m, b"env", T0).unwrap();
    }
    for m in h.msgs.iter().rev() {
        b.apply_remote(m, b"env", T0).unwrap();
    }
    let reps = a.reputations().unwrap();
    assert_eq!(reps, b.reputations().unwrap());
    assert_eq!(reps[&node(11)].dissented, 1);
    assert_eq!(reps[&node(10)].agreed, 1);
    assert_eq!(a.reputation(&node(11)).unwrap().dissented, 1);
    drop(a);
    let a = open("a");
    assert_eq!(a.reputations().unwrap(), reps, "kept across a reopen");
    drop(a);
    // A store from before the table existed gets it filled from the stored states.
    let conn = rusqlite::Connection::open(dir.path().join("a")).unwrap();
    conn.execute_batch(
        "DROP INDEX messages_by_sender; DROP INDEX reputation_by_node; DROP TABLE reputation;
         DROP INDEX seeds_by_update; DROP INDEX seeds_by_decision;
         ALTER TABLE seeds DROP COLUMN decide_at; DROP INDEX messages_pending;
         DROP INDEX seeds_digest; DROP TRIGGER seeds_written_by_an_older_version;
         DROP TRIGGER seeds_inserted_by_an_older_version;
         ALTER TABLE seeds DROP COLUMN view_hash; PRAGMA user_version = 8;",
    )
    .unwrap();
    drop(conn);
    assert_eq!(open("a").reputations().unwrap(), reps);
}

#[test]
fn the_reputation_policy_passes_over_a_cheap_dissenter_and_its_award_holds() {
    use crabnet_core::reputation::{Reputation, weigh_award};
    let mut h = History::new(2, 2, 2);
    h.bid(10, 10);
    h.bid(11, 20);
    h.bid(12, 30);
    let mut reps = std::collections::BTreeMap::new();
    reps.insert(
        node(10),
        Reputation {
            dissented: 2,
            ..Reputation::default()
        },
    );
    reps.insert(
        node(12),
        Reputation {
            agreed: 5,
            ..Reputation::default()
        },
    );
    let v = h.view();
    // Full (max_bids = 10 is not reached): due at the window's end only.
    let due = v.due_award(close_at()).unwrap();
    assert_eq!(due.winners, vec![bid_id(10), bid_id(11)], "by price alone");
    let weighed = weigh_award(&v, &due, &reps, close_at()).unwrap();
    // 10 weighs 10 * 9 = 90, 11 weighs 20, 12 weighs 30 * 6 / 6 = 30: 11 and 12 win, and 10
    // (cheaper than both by price) is left out so that the winner rule agrees.
    assert_eq!(weighed.winners, vec![bid_id(11), bid_id(12)]);
    assert_eq!(weighed.considered, vec![bid_id(11), bid_id(12)]);
    let m = h.push(PUBLISHER, close_at(), Body::BiddingClosed(weighed));
    assert_eq!(h.verdict(&m), Verdict::Applied);
    let runners: Vec<NodeId> = h.view().replicas.iter().map(|r| r.runner.clone()).collect();
    assert_eq!(runners, vec![node(11), node(12)]);
    // Bidding that would close early (max_bids reached) waits for the window's end when
    // bids are left out.
    let mut h = History::new(2, 2, 2);
    let Body::SeedCreated(mut seed) = h.msgs[0].body.clone() else {
        unreachable!()
    };
    seed.max_bids = 3;
    h.msgs[0].body = Body::SeedCreated(seed);
    h.bid(10, 10);
    h.bid(11, 20);
    h.bid(12, 30);
    let v = h.view();
    let early = close_at() - 4_000;
    let due = v.due_award(early).expect("full: due at once by price");
    assert_eq!(
        weigh_award(&v, &due, &reps, early),
        Err(v.seed.window_end())
    );
    // Without history nothing changes.
    let plain = weigh_award(&v, &due, &Default::default(), early).unwrap();
    assert_eq!(plain, due);
}

/// A reputation with these counts.
fn rep(agreed: u64, dissented: u64, missed: u64, accepted: u64, rejected: u64) -> Reputation {
    Reputation {
        agreed,
        dissented,
        missed_deadlines: missed,
        settlements_accepted: accepted,
        settlements_rejected: rejected,
    }
}

/// Seeds of three publishers, each settled as its publisher's node would: what each says about
/// its runners is in `reputations_count_only_signed_history_per_publisher`.
fn publishers_histories() -> Vec<History> {
    // Publisher 1 (seed 0): 10 and 12 agree and are paid, 11 dissents. Runner 11 also signs a
    // settlement of that seed paying itself, which is not the publisher's and counts nothing.
    let mut a = liar_history();
    let mut own = a.view().settlement_for(true, "paid by myself");
    own.paid = vec![node(11)];
    own.amount = 20;
    let forged = a.push(11, close_at() + 250, Body::SeedSettled(own));
    assert!(matches!(
        a.verdict(&forged),
        Verdict::Rejected {
            reason: Violation::NotPublisher { .. }
        }
    ));
    // Publisher 2 (seed 2, rules 3, 3 of 4): 12 lets its claim window pass and lapses; 11 and
    // the escalated 14 agree, 13 dissents; the publisher rejects the result.
    let mut b = History::of(2, 2, |s| {
        s.replication = Some(Replication {
            replicas: 3,
            quorum: 2,
            max_replicas: 4,
            hash: OutputHash::Combined,
        })
    });
    for (i, bidder) in [11, 12, 13, 14].into_iter().enumerate() {
        b.bid(bidder, 10 * (i as u64 + 1));
    }
    b.decide(close_at()).expect("award");
    b.claim(11, close_at() + 10);
    b.claim(13, close_at() + 10);
    b.result(11, close_at() + 100, 'a');
    b.result(13, close_at() + 100, 'b');
    let t = close_at() + CLAIM_S * 1000 + state::DECISION_MARGIN_MS;
    let esc = b.decide(t).expect("escalation");
    assert!(matches!(&esc.body, Body::SeedEscalated(e) if e.winners == vec![b.bid_id(14)]));
    b.claim(14, t + 1_000);
    b.result(14, t + 2_000, 'a');
    assert_eq!(b.view().status, SeedStatus::Completed);
    let no = b.view().settlement_for(false, "rejected");
    b.push(2, t + 3_000, Body::SeedSettled(no));
    // Publisher 2 (seed 4, rules 2): 10 wins and never claims; the publisher's node
    // reassigns to 12, which runs it and is paid.
    let mut d = History::of(4, 2, |s| {
        s.rules = rules::V2;
        s.replication = None;
    });
    d.bid(10, 10);
    d.bid(12, 20);
    d.decide(close_at()).expect("award");
    let t = close_at() + CLAIM_S * 1000 + state::DECISION_MARGIN_MS;
    let again = d.decide(t).expect("reassignment");
    assert!(matches!(again.body, Body::SeedReassigned(_)), "{again:?}");
    d.claim(12, t + 1_000);
    d.result(12, t + 2_000, 'a');
    let ok = d.view().settlement_for(true, "ok");
    d.push(2, t + 3_000, Body::SeedSettled(ok));
    // Runner 11 publishes a seed of its own (rules 1, where a publisher may still bid on its
    // own seed), wins it, runs it and pays itself: all its own claims about itself.
    let mut c = History::of(3, 11, |s| {
        s.rules = rules::V1;
        s.deadlines = None;
        s.replication = None;
    });
    c.bid(11, 10);
    c.decide(close_at()).expect("award");
    c.claim(11, close_at() + 10);
    c.result(11, close_at() + 100, 'a');
    let mine = c.view().settlement_for(true, "well done, me");
    c.push(11, close_at() + 200, Body::SeedSettled(mine));
    for h in [&a, &b, &c, &d] {
        assert!(matches!(
            h.view().status,
            SeedStatus::Settled | SeedStatus::Completed
        ));
    }
    assert_eq!(d.view().status, SeedStatus::Settled);
    assert_eq!(c.view().status, SeedStatus::Settled);
    vec![a, b, c, d]
}

/// `Store::reputations_from` with several publishers: per publisher, the counts its seeds'
/// signed messages held in the store give (agreement, dissent, missed claim deadlines under
/// rules 2 and 3, accepted and rejected settlements), nothing from messages not held, and
/// nothing from a peer's claims about itself (its own seed, a settlement it is not entitled to
/// sign); the same totals in any delivery order.
#[test]
fn reputations_count_only_signed_history_per_publisher() {
    use crabnet_core::store::{Store, StoreConfig};
    let hs = publishers_histories();
    let all: Vec<&Message> = hs.iter().flat_map(|h| &h.msgs).collect();
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| Store::open(&dir.path().join(name), &StoreConfig::default()).unwrap();
    let map = |entries: Vec<(u8, Reputation)>| -> BTreeMap<NodeId, Reputation> {
        entries.into_iter().map(|(n, r)| (node(n), r)).collect()
    };
    let from_1 = map(vec![
        (10, rep(1, 0, 0, 1, 0)),
        (11, rep(0, 1, 0, 0, 0)),
        (12, rep(1, 0, 0, 1, 0)),
    ]);
    let from_2 = map(vec![
        (10, rep(0, 0, 1, 0, 0)),
        (11, rep(1, 0, 0, 0, 1)),
        (12, rep(0, 0, 1, 1, 0)),
        (13, rep(0, 1, 0, 0, 0)),
        (14, rep(1, 0, 0, 0, 1)),
    ]);
    let mut total = from_1.clone();
    for (n, r) in &from_2 {
        total.entry(n.clone()).or_default().add(r);
    }
    let check = |s: &Store| {
        assert_eq!(s.reputations_from(&node(1)).unwrap(), from_1);
        assert_eq!(s.reputations_from(&node(2)).unwrap(), from_2);
        assert_eq!(
            s.reputations_from(&node(11)).unwrap(),
            BTreeMap::new(),
            "its own seed says nothing about runner 11"
        );
        assert_eq!(s.reputations_from(&node(0x55)).unwrap(), BTreeMap::new());
        assert_eq!(s.reputations().unwrap(), total);
        assert_eq!(s.reputation(&node(11)).unwrap(), total[&node(11)]);
    };
    // In order, and in reverse order.
    let mut forward = open("forward");
    for m in &all {
        forward.apply_remote(m, b"env", T0).unwrap();
    }
    check(&forward);
    let mut backward = open("backward");
    for m in all.iter().rev() {
        backward.apply_remote(m, b"env", T0).unwrap();
    }
    check(&backward);
    // Without publisher 1's settlement and runner 14's result: no payment for 10 and 12, and
    // seed 2 has no quorum, so 11, 13 and 14 have nothing to their name there.
    let settlement = hs[0]
        .msgs
        .iter()
        .find(|m| matches!(m.body, Body::SeedSettled(_)) && m.sender == node(PUBLISHER))
        .unwrap();
    let result_14 = hs[1]
        .msgs
        .iter()
        .find(|m| matches!(m.body, Body::ResultReported(_)) && m.sender == node(14))
        .unwrap();
    let withheld = [&settlement.id, &result_14.id];
    let mut partial = open("partial");
    for m in all.iter().filter(|m| !withheld.contains(&&m.id)) {
        partial.apply_remote(m, b"env", T0).unwrap();
    }
    assert_eq!(
        partial.reputations_from(&node(1)).unwrap(),
        map(vec![
            (10, rep(1, 0, 0, 0, 0)),
            (11, rep(0, 1, 0, 0, 0)),
            (12, rep(1, 0, 0, 0, 0)),
        ])
    );
    assert_eq!(
        partial.reputations_from(&node(2)).unwrap(),
        map(vec![(10, rep(0, 0, 1, 0, 0)), (12, rep(0, 0, 1, 1, 0))])
    );
    for m in all.iter().filter(|m| withheld.contains(&&m.id)) {
        partial.apply_remote(m, b"env", T0).unwrap();
    }
    check(&partial);
}

// ---------------------------------------------------------------------------------------------
// Escalations that name two results, in every order. The state is a function of the set of
// messages held (fold sorts them), so a node that received some messages in some order holds
// the state of that set: checking every subset, and every step from a subset to one with one
// more message, covers every delivery order (with duplicates, which change no set).

/// Every set of messages a node can hold of a history: its messages before the award always,
/// and any subset of the award and what follows (bit `i` of a mask: `rest[i]` is held).
struct Subsets<'h> {
    rest: Vec<&'h Message>,
    /// The fold of each subset, by mask.
    folds: Vec<state::Folded>,
}

impl<'h> Subsets<'h> {
    /// Folds every subset, each in two delivery orders, which must agree.
    fn of(h: &'h History) -> Self {
        let award = h
            .msgs
            .iter()
            .position(|m| matches!(m.body, Body::BiddingClosed(_)));
        let award = award.expect("awarded");
        let (base, rest) = (&h.msgs[..award], h.msgs[award..].iter().collect::<Vec<_>>());
        assert!(rest.len() <= 12, "2^{} subsets is too many", rest.len());
        let folds = (0u32..1 << rest.len())
            .map(|mask| {
                let held: Vec<&Message> = base
                    .iter()
                    .chain(
                        (0..rest.len())
                            .filter(|i| mask & (1 << i) != 0)
                            .map(|i| rest[i]),
                    )
                    .collect();
                let f = fold(held.iter().copied());
                assert_eq!(
                    f,
                    fold(held.iter().rev().copied()),
                    "order matters: {mask:b}"
                );
                f
            })
            .collect();
        Subsets { rest, folds }
    }

    fn bit(&self, m: &Message) -> u32 {
        1 << self
            .rest
            .iter()
            .position(|r| r.id == m.id)
            .expect("after the award")
    }

    /// What escalation `esc` needs to apply: itself, the award (`rest[0]`) and what it names.
    fn needs(&self, esc: &Message) -> u32 {
        let seen = named(esc);
        let named = seen.iter().fold(0, |acc, id| {
            acc | 1 << self.rest.iter().position(|r| &r.id == id).expect("held")
        });
        named | 1 | self.bit(esc)
    }

    /// Whether escalation `esc` applies in subset `mask`, checking that it does exactly when
    /// everything it needs is held and waits while it is held without some of that.
    fn applies(&self, mask: u32, esc: &Message) -> bool {
        let needs = self.needs(esc);
        let applied = mask & needs == needs;
        if mask & self.bit(esc) != 0 {
            let verdict = &self.folds[mask as usize].verdicts[&esc.id];
            if applied {
                assert_eq!(verdict, &Verdict::Applied, "{mask:b}");
            } else {
                assert!(
                    matches!(verdict, Verdict::Pending { .. }),
                    "{mask:b}: {verdict:?}"
                );
            }
        }
        applied
    }

    /// Every subset with its state.
    fn sets(&self) -> impl Iterator<Item = (u32, &state::Folded, &SeedView)> {
        self.folds
            .iter()
            .enumerate()
            .map(|(mask, f)| (mask as u32, f, f.view.as_ref().expect("created")))
    }

    /// The steps from a subset to one with one message more after which the status is one
    /// a forward-only lifecycle (rules 1) cannot reach from before: the subset, that message,
    /// the statuses before and after. Rules 3 allows one such step (`completed` back to
    /// `claimed`); the tests that find it check it is that one and that `can_reach` allows it.
    fn steps_back(&self) -> Vec<(u32, &Message, SeedStatus, SeedStatus)> {
        let mut back = Vec::new();
        for (mask, _, before) in self.sets() {
            for (i, m) in self.rest.iter().enumerate() {
                let after = &self.folds[(mask | 1 << i) as usize].view;
                let after = after.as_ref().expect("created").status;
                if mask & (1 << i) == 0 && !before.status.can_reach(after, rules::V1) {
                    back.push((mask, *m, before.status, after));
                }
            }
        }
        back
    }
}

/// Folds `h`, which ends with the seed completed by replica 10's result, and checks the
/// replicas' standings: 10 agreed, 11 dissented, then `later`.
fn completed_by_10(h: &History, later: &[(u8, ReplicaStanding)]) -> state::Folded {
    let reference = fold(&h.msgs);
    let v = reference.view.as_ref().unwrap();
    assert_eq!(v.status, SeedStatus::Completed);
    assert_eq!(v.result.as_ref().unwrap().runner, node(10));
    let first = [
        (10, ReplicaStanding::Agreed),
        (11, ReplicaStanding::Dissented),
    ];
    assert_eq!(standings(v), [&first[..], later].concat());
    reference
}

/// What escalation `esc` names.
fn named(esc: &Message) -> Vec<MessageId> {
    match &esc.body {
        Body::SeedEscalated(e) => e.seen.clone(),
        other => panic!("not an escalation: {other:?}"),
    }
}

/// Two replicas disagree (a against b); the escalation names both claims and both results and
/// awards a third, which agrees with a. In every order: the escalation applies exactly when
/// the award and the four messages it names are held and waits before (never rejected); the
/// status only moves forward; every node ends with the same state.
#[test]
fn an_escalation_naming_two_results_holds_in_every_order() {
    let mut h = split_a_b(awarded(2, 2, 3, 4), &[10, 11]);
    let esc = h.decide(close_at() + 101).expect("every replica reported");
    let Body::SeedEscalated(e) = &esc.body else {
        panic!("{esc:?}")
    };
    assert_eq!(e.winners, vec![bid_id(12)]);
    assert_eq!(named(&esc).len(), 4, "two claims and two results");
    h.claim(12, close_at() + 200);
    h.result(12, close_at() + 300, 'a');
    let reference = completed_by_10(&h, &[(12, ReplicaStanding::Agreed)]);
    assert!(reference.verdicts.values().all(|x| *x == Verdict::Applied));

    let all = Subsets::of(&h);
    for (mask, _, v) in all.sets() {
        // Without the escalation no third replica exists.
        if !all.applies(mask, &esc) {
            assert!(v.replicas.len() <= 2, "{mask:b}");
            assert_ne!(v.status, SeedStatus::Completed, "{mask:b}");
        }
    }
    assert_eq!(
        all.steps_back(),
        Vec::new(),
        "the status only moves forward"
    );
    assert_eq!(all.folds.last().unwrap(), &reference);
}

/// Three replicas; two report (a, b) and the third claims but its result is not there when its
/// deadline passes: the escalation names three claims and the two results and awards a fourth.
/// Replica 12 then sends a result dated inside its deadline that agrees with a. In every
/// order: the escalation applies once the award and what it names are held, whatever else is
/// held; the backdated result is then `lapsed` and never completes the seed; the fourth
/// replica completes it with a. The only step back is the one section 3b allows: a node that
/// held the backdated result before the escalation saw the seed completed (by 10 and 12), and
/// the escalation, which does not name that result, ends replica 12's turn.
#[test]
fn an_escalation_naming_two_results_stands_against_a_backdated_third_in_every_order() {
    let (mut h, esc, result_deadline) = escalated_without_12();
    assert_eq!(named(&esc).len(), 5, "three claims and two results");
    let backdated = h.result(12, result_deadline - 1, 'a');
    let late_claim = h.claim(13, result_deadline + 5_000);
    h.result(13, result_deadline + 6_000, 'a');
    let reference = completed_by_10(
        &h,
        &[(12, ReplicaStanding::Lapsed), (13, ReplicaStanding::Agreed)],
    );
    let lapsed = |f: &state::Folded| {
        matches!(
            f.verdicts[&backdated.id],
            Verdict::Rejected {
                reason: Violation::Lapsed { .. }
            }
        )
    };
    assert!(lapsed(&reference));
    assert_eq!(reference.verdicts[&late_claim.id], Verdict::Applied);

    let all = Subsets::of(&h);
    let late_bit = all.bit(&backdated);
    for (mask, f, v) in all.sets() {
        if all.applies(mask, &esc) {
            assert_eq!(v.replicas[2].standing, ReplicaStanding::Lapsed, "{mask:b}");
            assert!(mask & late_bit == 0 || lapsed(f), "{mask:b}");
            // Only the fourth replica can complete it now, with a.
            if v.status == SeedStatus::Completed {
                assert_eq!(v.replicas[3].standing, ReplicaStanding::Agreed, "{mask:b}");
            }
        }
    }
    let back = all.steps_back();
    assert!(
        !back.is_empty(),
        "a node that held the backdated result first"
    );
    for step in back {
        // The one step back: the escalation arrives (or its last named message does) and
        // ends the turn of replica 12, whose unnamed result had completed the seed.
        let (mask, m, before, after) = step;
        assert!(before.can_reach(after, rules::V3), "{before} -> {after}");
        let next = mask | all.bit(m);
        assert!(
            !all.applies(mask, &esc)
                && all.applies(next, &esc)
                && mask & late_bit != 0
                && (before, after) == (SeedStatus::Completed, SeedStatus::Claimed),
            "{step:?}"
        );
    }
    assert_eq!(all.folds.last().unwrap(), &reference);
}

/// An escalation naming two results of one runner is refused once both are held (it waits
/// while one is missing), whatever else arrives; the publisher's correct escalation, naming
/// the first of them, applies in every order in which it holds.
#[test]
fn an_escalation_naming_two_results_of_one_runner_is_refused_in_every_order() {
    let mut h = awarded(2, 2, 3, 4);
    h.claim(10, close_at() + 10);
    h.claim(11, close_at() + 10);
    h.result(10, close_at() + 100, 'a');
    let first = h.result(11, close_at() + 100, 'b');
    let second = h.result(11, close_at() + 110, 'c');
    assert!(matches!(h.verdict(&second), Verdict::Rejected { .. }));
    let good = h.decide(close_at() + 200).expect("every replica reported");
    assert!(named(&good).contains(&first.id) && !named(&good).contains(&second.id));
    let mut seen = named(&good);
    seen.push(second.id.clone());
    let bad = h.push(
        PUBLISHER,
        close_at() + 201,
        Body::SeedEscalated(Escalation {
            seed_id: seed_id(),
            step: 1,
            winners: vec![bid_id(12)],
            seen,
        }),
    );
    let all = Subsets::of(&h);
    let both = all.bit(&first) | all.bit(&second) | 1;
    for (mask, f, v) in all.sets() {
        let good_applied = all.applies(mask, &good);
        if good_applied {
            assert_eq!(v.replicas.len(), 3, "{mask:b}");
        }
        if mask & all.bit(&bad) == 0 {
            continue;
        }
        match &f.verdicts[&bad.id] {
            // Its step is decided by the good one.
            Verdict::Rejected { .. } if good_applied => {}
            Verdict::Rejected {
                reason: Violation::InvalidDecision { reason, .. },
            } => {
                assert_eq!(mask & both, both, "{mask:b}");
                assert!(reason.contains("two claims or two results"), "{reason}");
            }
            Verdict::Pending { .. } => {
                assert!(!good_applied && mask & both != both, "{mask:b}")
            }
            other => panic!("{mask:b}: {other:?}"),
        }
    }
    assert_eq!(
        all.folds.last().unwrap(),
        &fold(&h.msgs),
        "every message held: the good one applies"
    );
}

// ---------------------------------------------------------------------------------------------
// An escalation naming a message a node does not hold (section 3b): sync brings it, because
// the publisher's node names only messages it holds and reconciles every message it holds.

/// What node `lacking` wants of node `holding` after a range reconciliation of their stores,
/// run to its end as section 7 runs it (`lacking` initiates).
fn reconcile(
    lacking: &crabnet_core::store::Store,
    holding: &crabnet_core::store::Store,
) -> Vec<MessageId> {
    use crabnet_core::sync::range::{ItemSet, MIN_FRAME_LIMIT};
    let mine = ItemSet::new(lacking.sync_items().unwrap());
    let theirs = ItemSet::new(holding.sync_items().unwrap());
    let mut need = Vec::new();
    let mut query = mine.query(MIN_FRAME_LIMIT);
    for _ in 0..16 {
        let Some(reply) = theirs.answer(&query, MIN_FRAME_LIMIT).unwrap() else {
            break;
        };
        let progress = mine.follow(&reply, MIN_FRAME_LIMIT).unwrap();
        need.extend(progress.need.into_iter().map(|(id, _)| id));
        match progress.next {
            Some(next) => query = next,
            None => break,
        }
    }
    need
}

/// Replica 12's result is late (dated after its deadline) and reaches the publisher's node
/// before the escalation, which names it and ends 12's turn: on the publisher's node that
/// result is now `lapsed`. Another node never received it and holds the escalation pending.
/// One reconciliation with the publisher's node finds the result (every stored message is a
/// reconciliation item, whatever its verdict), the want brings it, the escalation applies and
/// both nodes hold the same state. An escalation naming a message that does not exist waits
/// on every node and harms only its publisher's seed: nobody lapses or dissents by it, and the
/// publisher's node still owes the escalation, which applies when it comes.
#[test]
fn sync_brings_what_an_escalation_names_and_a_made_up_name_harms_only_its_seed() {
    use crabnet_core::reputation::contributions;
    use crabnet_core::store::{Store, StoreConfig};
    let mut h = three_claimed_a_b();
    let result_deadline = close_at() + 10 + (TIMEOUT_S + GRACE_S) * 1000;
    let late = h.result(12, result_deadline + 1, 'c');
    let esc = h
        .decide(result_deadline + state::DECISION_MARGIN_MS)
        .expect("escalation due");
    assert!(
        named(&esc).contains(&late.id),
        "the publisher names what it holds"
    );
    assert!(matches!(
        h.verdict(&late),
        Verdict::Rejected {
            reason: Violation::Lapsed { .. }
        }
    ));
    assert_eq!(h.verdict(&esc), Verdict::Applied);

    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| Store::open(&dir.path().join(name), &StoreConfig::default()).unwrap();
    let (mut publisher, mut other) = (open("publisher"), open("other"));
    // The envelope is the message id here, so that what a want returns can be read back.
    let deliver = |s: &mut Store, m: &Message| {
        s.apply_remote(m, m.id.as_str().as_bytes(), T0).unwrap();
    };
    for m in &h.msgs {
        deliver(&mut publisher, m);
        if m.id != late.id {
            deliver(&mut other, m);
        }
    }
    let waiting = other.seed(&seed_id()).unwrap().unwrap();
    assert_eq!(waiting.replicas.len(), 3, "the escalation waits");
    assert_eq!(
        standings(&waiting)[2],
        (12, ReplicaStanding::Claimed),
        "nothing lapsed yet"
    );
    let need = reconcile(&other, &publisher);
    assert_eq!(need, vec![late.id.clone()]);
    let sent = publisher.wanted_envelopes(&need).unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].envelope, late.id.as_str().as_bytes());
    deliver(&mut other, &late);
    let v = other.seed(&seed_id()).unwrap().unwrap();
    assert_eq!(Some(&v), publisher.seed(&seed_id()).unwrap().as_ref());
    assert_eq!(v.replicas.len(), 4);
    assert_eq!(v.replicas[2].standing, ReplicaStanding::Lapsed);
    assert!(reconcile(&other, &publisher).is_empty());
    assert!(reconcile(&publisher, &other).is_empty());

    // A made-up name: every replica reported in time, and the escalation names one message
    // more, which nobody holds.
    let mut h = awarded(3, 2, 4, 5);
    for r in [10, 11, 12] {
        h.claim(r, close_at() + 10);
    }
    for (r, hash) in [(10, 'a'), (11, 'b'), (12, 'c')] {
        h.result(r, close_at() + 100, hash);
    }
    let before = h.view();
    let Some(Body::SeedEscalated(mut e)) = before.due_decision(close_at() + 200) else {
        panic!("escalation due")
    };
    e.seen.push(MessageId::from_bytes([0xee; 16]));
    let made_up = h.push(PUBLISHER, close_at() + 200, Body::SeedEscalated(e));
    assert!(matches!(h.verdict(&made_up), Verdict::Pending { .. }));
    let v = h.view();
    assert_eq!(v, before, "the seed stands as if it had not escalated");
    assert!(
        contributions(&v).is_empty(),
        "no runner lapses or dissents by it"
    );
    // The publisher's node still owes the escalation; the real one applies.
    let real = h.decide(close_at() + 300).expect("still due");
    assert_eq!(h.verdict(&real), Verdict::Applied);
    assert_eq!(h.view().replicas.len(), 4);
}
