//! Replicated execution and reputation with real processes (issue 17): `crabnet listen`
//! nodes over UDP on 127.0.0.1, driven by CLI commands on their data directories (the harness
//! in `tests/support`). A lying runner is a node whose `config.toml` sets the test-only
//! `runner.forge_output_hash`: it reports `FORGED_OUTPUT_SHA256` instead of its real output
//! hash (all liars the same one, so that two liars agree with each other). Only test builds
//! (debug assertions on, as `cargo test` builds the `crabnet` binary) accept that setting; a
//! release build refuses to start with it.
//!
//! - three replicas, one liar: the seed completes with the honest result, settlement pays the
//!   two honest runners, the liar's reputation shows a dissent on every node, identical
//!   across nodes and after a restart; then, with `award.policy = "price_and_reputation"`,
//!   the publisher passes over the liar's far lower bid on its next seed;
//! - four replicas with quorum 3, two liars: a 2-2 split; the publisher's node escalates to
//!   the next best bid, whose honest result completes the seed.

mod support;

use serde_json::Value;

use support::Net;

const LIAR: &str = "[runner]\nforge_output_hash = true\n";

/// Makes node `i` a lying runner.
fn make_liar(net: &Net, i: usize) {
    let path = net.nodes[i].dir.join("config.toml");
    let mut config = std::fs::read_to_string(&path).unwrap();
    config.push_str(LIAR);
    std::fs::write(path, config).unwrap();
}

/// Waits until node `i` shows itself among the replicas of `seed`, then claims and runs it.
fn claim_and_run_replica(net: &Net, i: usize, seed: &str) -> Value {
    let me = net.id(i).to_owned();
    net.wait_seed(i, seed, "awards a replica to it", |v| {
        v["replicas"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| r["runner"] == me.as_str()))
    });
    net.run(i, &["seed", "claim", seed]).ok();
    net.run(i, &["--json", "seed", "run", seed]).ok().json()
}

/// The replica of `node` in a seed view.
fn replica<'v>(v: &'v Value, node: &str) -> &'v Value {
    v["replicas"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["runner"] == node))
        .unwrap_or_else(|| panic!("no replica of {node}: {v:#}"))
}

/// `crabnet peers --json` on node `i`: each peer's reputation by node id.
fn reputations(net: &Net, i: usize) -> Vec<(String, Value)> {
    let peers = net.run(i, &["--json", "peers"]).ok().json();
    let mut out: Vec<(String, Value)> = peers
        .as_array()
        .expect("peers is a list")
        .iter()
        .map(|p| {
            (
                p["node_id"].as_str().unwrap().to_owned(),
                p["reputation"].clone(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn reputation_of(net: &Net, at: usize, of: usize) -> Value {
    reputations(net, at)
        .into_iter()
        .find(|(id, _)| id == net.id(of))
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("node {at} does not know node {of}"))
}

#[test]
fn three_replicas_with_a_liar_complete_honestly_and_the_liar_loses_reputation() {
    let mut net = Net::new(4);
    let all = [0, 1, 2, 3];
    make_liar(&net, 3);
    // The publisher weighs reputation when it awards (nobody has any yet for the first seed).
    let config = net.nodes[0].dir.join("config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[award]\npolicy = \"price_and_reputation\"\n");
    std::fs::write(config, text).unwrap();
    net.start_mesh(&all, &all);
    net.wait_mesh(&all);

    let seed = net.publish_with(
        0,
        "echo replicated",
        3,
        &["--replicas", "3", "--quorum", "2"],
    );
    // The liar bids lowest: price alone awards it too.
    for (i, price) in [(1, 20), (2, 30), (3, 10)] {
        net.bid(i, &seed, price);
    }
    // The liar runs first: once two honest results agree, a replica may no longer claim.
    for i in [3, 1, 2] {
        claim_and_run_replica(&net, i, &seed);
    }
    let v = net.wait_status(0, &seed, "completed");
    let liar = net.id(3).to_owned();
    assert_eq!(replica(&v, &liar)["standing"], "dissented", "{v:#}");
    assert_eq!(
        replica(&v, &liar)["result"]["output_sha256"],
        crabnet_core::runner::FORGED_OUTPUT_SHA256
    );
    for i in [1, 2] {
        assert_eq!(replica(&v, net.id(i))["standing"], "agreed", "{v:#}");
    }
    // The text view lists the terms and every replica with its standing.
    let text = net.run(0, &["seed", "show", &seed]).ok().stdout;
    assert!(
        text.contains("replicas    3 (quorum 2, at most 3, hash combined)"),
        "{text}"
    );
    assert_eq!(text.matches("\nreplica     ").count(), 3, "{text}");
    assert!(text.contains(": dissented, exit 0 sha256 "), "{text}");
    let honest = replica(&v, net.id(1))["result"]["output_sha256"].clone();
    assert_eq!(v["result"]["output_sha256"], honest, "{v:#}");
    assert_ne!(honest, crabnet_core::runner::FORGED_OUTPUT_SHA256);

    // The publisher pays the agreeing runners, each its own price.
    let settled = net.run(0, &["--json", "seed", "settle", &seed]).ok().json();
    assert_eq!(settled["status"], "settled", "{settled:#}");
    assert_eq!(settled["settlement"]["amount"], 50, "{settled:#}");
    let paid = settled["settlement"]["paid"].as_array().unwrap().clone();
    assert_eq!(paid.len(), 2, "{settled:#}");
    assert!(!paid.iter().any(|p| p == liar.as_str()), "{settled:#}");

    let digest = net.wait_converged(&all, "the settled replicated seed");
    assert!(!digest.is_empty());
    // Every node holds the same messages, so every node tells the same reputation.
    let at0 = reputation_of(&net, 0, 3);
    assert_eq!(at0["dissented"], 1, "{at0:#}");
    assert_eq!(at0["agreed"], 0, "{at0:#}");
    assert_eq!(at0["settlements_accepted"], 0, "{at0:#}");
    let good = reputation_of(&net, 0, 1);
    assert_eq!(
        (good["agreed"].clone(), good["settlements_accepted"].clone()),
        (1.into(), 1.into())
    );
    for i in [1, 2] {
        assert_eq!(reputation_of(&net, i, 3), at0, "node {i} on the liar");
    }
    assert_eq!(reputation_of(&net, 3, 1), good, "the liar on node 1");
    // The text output shows the counts too.
    let text = net.run(0, &["peers"]).ok().stdout;
    assert!(
        text.contains("AGREED/DISSENT/MISSED") && text.contains("0/1/0"),
        "{text}"
    );

    // A restart keeps it (derived from the stored messages).
    net.stop(0);
    assert_eq!(
        reputation_of(&net, 0, 3),
        at0,
        "read with the listener stopped"
    );
    net.restart(0);
    assert_eq!(reputation_of(&net, 0, 3), at0, "after the restart");

    // Next seed, run once: the liar bids far lowest, but with its dissent it weighs
    // 5 * (1 + 4) = 25 against node 1's 20, so node 1 wins; the liar's bid is left out of the
    // award, which therefore waits for the end of the bid window.
    let out = net
        .run(
            0,
            &[
                "seed",
                "publish",
                "--command",
                "echo next",
                "--max-bids",
                "3",
                "--bid-window",
                "6",
                "--min-price",
                "1",
                "--max-price",
                "100",
            ],
        )
        .ok();
    let next = out.stdout.trim().to_owned();
    for (i, price) in [(3, 5), (1, 20), (2, 30)] {
        net.bid(i, &next, price);
    }
    let v = net.wait_award(0, &next, 1, 20);
    let considered = v["award"]["considered"].as_array().unwrap();
    assert_eq!(considered.len(), 2, "{v:#}");
    let liar_bid = v["bids"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bidder"] == liar.as_str())
        .unwrap()["id"]
        .clone();
    assert!(!considered.contains(&liar_bid), "{v:#}");
    assert!(
        v["award"]["closed_at"].as_u64().unwrap()
            >= v["seed"]["created_at"].as_u64().unwrap() + 6_000,
        "closed at the window's end, not when the third bid came: {v:#}"
    );
    // Every node accepts the award (the winner rule holds among the considered bids).
    for i in [1, 2, 3] {
        net.wait_award(i, &next, 1, 20);
    }
}

#[test]
fn a_two_two_split_escalates_to_the_next_best_bid() {
    let mut net = Net::new(6);
    let all = [0, 1, 2, 3, 4, 5];
    make_liar(&net, 3);
    make_liar(&net, 4);
    net.start_mesh(&all, &all);
    net.wait_mesh(&all);

    let seed = net.publish_with(
        0,
        "echo split",
        5,
        &["--replicas", "4", "--quorum", "3", "--max-replicas", "5"],
    );
    for (i, price) in [(1, 10), (2, 20), (3, 30), (4, 40), (5, 50)] {
        net.bid(i, &seed, price);
    }
    // The four best bids win; node 5 waits.
    let v = net.wait_seed(0, &seed, "awards four replicas", |v| {
        v["replicas"].as_array().is_some_and(|r| r.len() == 4)
    });
    assert!(
        v["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["runner"] != net.id(5))
    );
    for i in [1, 2, 3, 4] {
        claim_and_run_replica(&net, i, &seed);
    }
    // Two honest results, two identical forged ones: no quorum of 3. The publisher's node
    // escalates by one replica (3 - 2), the next best bid: node 5.
    let v = net.wait_seed(0, &seed, "escalates", |v| {
        v["replicas"].as_array().is_some_and(|r| r.len() == 5)
    });
    let fifth = replica(&v, net.id(5));
    assert_eq!(fifth["step"], 1, "{v:#}");
    assert_eq!(fifth["standing"], "awarded", "{v:#}");
    assert_eq!(v["status"], "claimed", "{v:#}");
    let events = net.events(0);
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "seed_escalated" && e["step"] == 1),
        "an escalation event: {events:#?}"
    );

    claim_and_run_replica(&net, 5, &seed);
    let v = net.wait_status(0, &seed, "completed");
    for i in [1, 2, 5] {
        assert_eq!(replica(&v, net.id(i))["standing"], "agreed", "{v:#}");
    }
    for i in [3, 4] {
        assert_eq!(replica(&v, net.id(i))["standing"], "dissented", "{v:#}");
    }
    assert_ne!(
        v["result"]["output_sha256"],
        crabnet_core::runner::FORGED_OUTPUT_SHA256
    );
    net.wait_converged(&all, "the escalated seed");
}
