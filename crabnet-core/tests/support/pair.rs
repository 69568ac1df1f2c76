//! A publisher and a runner in one process, on one in-memory hub (`mod support;` then
//! `support::pair`). A publisher may not bid on its own seed, so a test of one node's
//! lifecycle (bid, claim, run) needs a second node that publishes and awards.

use std::time::{Duration, Instant};

use crabnet_core::{BlockingNode, Config, MemoryHub, PublishRequest, SeedId, SeedView};

/// Longest a pair waits for a replicated change.
const PAIR_WAIT: Duration = Duration::from_secs(20);

/// Two nodes that verified each other's hello: `publisher` publishes, awards and settles;
/// `runner` bids, claims and runs.
pub struct Pair {
    pub hub: MemoryHub,
    pub publisher: BlockingNode,
    pub runner: BlockingNode,
}

impl Pair {
    /// Starts both nodes on a new hub and waits until each knows the other.
    pub fn start(publisher: Config, runner: Config) -> Pair {
        let hub = MemoryHub::new();
        let publisher =
            BlockingNode::start_with_transport(publisher, Box::new(hub.join("publisher")))
                .expect("start the publisher");
        let runner = BlockingNode::start_with_transport(runner, Box::new(hub.join("runner")))
            .expect("start the runner");
        for n in [&publisher, &runner] {
            n.wait_for_peers(1, PAIR_WAIT).expect("the nodes meet");
        }
        Pair {
            hub,
            publisher,
            runner,
        }
    }

    /// Publishes `req` on the publisher; the runner bids `price` once it knows the seed.
    /// Returns the seed id and the runner's view after its bid.
    pub fn bid(&self, req: PublishRequest, price: u64) -> (SeedId, SeedView) {
        let id = self.publisher.publish(req).expect("publish").seed.id;
        wait_seed(&self.runner, &id, "the runner knows the seed", |_| true);
        let view = self.runner.bid(&id, price).expect("the runner bids");
        (id, view)
    }

    /// [`Pair::bid`] with `max_bids` 1, then waits until the runner sees the award to itself.
    pub fn awarded(&self, command: &str, price: u64) -> SeedId {
        let (id, _) = self.bid(
            PublishRequest {
                max_bids: 1,
                ..PublishRequest::new(command)
            },
            price,
        );
        self.wait_award(&id);
        id
    }

    /// [`Pair::awarded`], then the runner claims.
    pub fn claimed(&self, command: &str, price: u64) -> SeedId {
        let id = self.awarded(command, price);
        self.runner.claim(&id).expect("the runner claims");
        id
    }

    /// Waits until the runner sees the seed awarded to itself; returns its view.
    pub fn wait_award(&self, id: &SeedId) -> SeedView {
        let me = self.runner.node().id().clone();
        wait_seed(&self.runner, id, "the runner sees its award", |v| {
            v.award
                .as_ref()
                .is_some_and(|a| a.winner_node.as_ref() == Some(&me))
        })
    }

    /// Waits until the publisher sees the runner's result, then settles.
    pub fn settle(&self, id: &SeedId, accept: bool, note: &str) -> SeedView {
        wait_seed(&self.publisher, id, "the publisher sees the result", |v| {
            v.result.is_some()
        });
        self.publisher
            .settle(id, accept, note)
            .expect("the publisher settles")
    }
}

/// Polls `node` until it knows the seed in a state for which `done` holds; returns the view.
#[track_caller]
pub fn wait_seed(
    node: &BlockingNode,
    id: &SeedId,
    what: &str,
    done: impl Fn(&SeedView) -> bool,
) -> SeedView {
    let deadline = Instant::now() + PAIR_WAIT;
    loop {
        let seen = node.seed(id);
        if let Ok(v) = &seen
            && done(v)
        {
            return seen.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
