//! The trust policy across real `crabnet listen` processes over UDP on 127.0.0.1, set up with
//! the `crabnet trust` commands as an operator would: an anchor, certificates for two of three
//! nodes, anchored mode everywhere; the uncertified node is refused, then the anchor revokes a
//! certified node and the receiving node refuses it, also after it restarts.

mod support;

use serde_json::Value;
use support::{Net, run_bounded};

/// `message_rejected` events of node `i` for `not_admitted`, as (sender, message kind).
fn not_admitted(net: &Net, i: usize) -> Vec<(String, String)> {
    net.events(i)
        .iter()
        .filter(|e| e["type"] == "message_rejected" && e["reason"] == "not_admitted")
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
            (s(&e["sender"]), s(&e["message_kind"]))
        })
        .collect()
}

/// Node 1 publishes until node 0 records the refusal of one of its seeds (a datagram may be
/// lost on a loaded machine, and node 0 never syncs from a node it does not admit); none of
/// them is ever stored on node 0.
#[track_caller]
fn expect_seeds_refused(net: &Net, id1: &str, tag: &str) {
    let refused_seeds = || {
        not_admitted(net, 0)
            .iter()
            .filter(|(s, k)| *s == id1 && k == "seed_created")
            .count()
    };
    let before = refused_seeds();
    let mut published = Vec::new();
    let mut last = None::<std::time::Instant>;
    net.wait(
        &format!("node 0 refuses the revoked node's seed {tag}"),
        || {
            if refused_seeds() > before {
                return Ok(());
            }
            if last.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(5)) {
                let n = published.len();
                published.push(net.publish(1, &format!("echo {tag} {n}"), 1));
                last = Some(std::time::Instant::now());
            }
            Err(format!("{:?}", not_admitted(net, 0)))
        },
    );
    for seed in &published {
        assert!(!net.run(0, &["seed", "show", seed]).success(), "{seed}");
    }
}

fn trust(net: &Net, args: &[&str]) -> support::Out {
    let mut cmd = net.command();
    cmd.arg("trust").args(args);
    let mut shown = vec!["trust".to_owned()];
    shown.extend(args.iter().map(|s| s.to_string()));
    run_bounded(cmd, shown)
}

#[test]
fn anchored_network_refuses_uncertified_and_revoked_nodes_across_a_restart() {
    let mut net = Net::new(3);
    let key = net.sandbox.path().join("anchor.key");
    let key_s = key.to_str().unwrap().to_owned();
    let created = trust(&net, &["--json", "anchor-new", "--out", &key_s])
        .ok()
        .json();
    let public_file = created["public_file"].as_str().unwrap().to_owned();
    assert_eq!(
        std::fs::read_to_string(&public_file).unwrap().trim(),
        created["public"].as_str().unwrap()
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // Nodes 0 and 1 get certificates; node 2 does not. All run in anchored mode; node 0 gives
    // every rejection its own event so the test can tell which frame was refused.
    for i in 0..3 {
        let dir = net.nodes[i].dir.clone();
        let mut section = format!("\n[trust]\nmode = \"anchored\"\nanchors = [{public_file:?}]\n");
        if i < 2 {
            let id_file = dir.join("identity.json");
            let cert = dir.join("node.cert");
            net.run(
                i,
                &["trust", "identity", "--out", id_file.to_str().unwrap()],
            )
            .ok();
            let shown = trust(
                &net,
                &[
                    "--json",
                    "sign",
                    "--anchor",
                    &key_s,
                    "--identity",
                    id_file.to_str().unwrap(),
                    "--out",
                    cert.to_str().unwrap(),
                ],
            )
            .ok()
            .json();
            assert_eq!(shown["node_id"], net.id(i));
            section.push_str(&format!("certificate = {:?}\n", cert.to_str().unwrap()));
        }
        let path = dir.join("config.toml");
        let mut text = std::fs::read_to_string(&path).unwrap();
        if i == 0 {
            text = text.replace("[network]\n", "[network]\nreject_event_window_ms = 0\n");
        }
        std::fs::write(&path, text + &section).unwrap();
    }
    let status = net.run(0, &["--json", "trust", "show"]).ok().json();
    assert_eq!(status["mode"], "anchored");
    assert_eq!(status["anchors"][0], created["anchor_id"]);

    let all = [0, 1, 2];
    net.start_mesh(&all, &all);
    net.wait_peers(0, &[1]);
    net.wait_peers(1, &[0]);

    // The certified node's seed arrives; the uncertified node's never does.
    let from_2 = net.publish(2, "echo uncertified", 1);
    let from_1 = net.publish(1, "echo certified", 1);
    net.wait_seed(0, &from_1, "gets the certified node's seed", |_| true);
    let (id1, id2) = (net.id(1).to_owned(), net.id(2).to_owned());
    net.wait("node 0 refuses node 2's seed", || {
        let refused = not_admitted(&net, 0);
        refused
            .iter()
            .any(|(s, k)| *s == id2 && k == "seed_created")
            .then_some(())
            .ok_or(format!("{refused:?}"))
    });
    assert!(!net.run(0, &["seed", "show", &from_2]).success());
    let peers = net.run(0, &["--json", "peers"]).ok().json();
    assert!(!peers.to_string().contains(&id2), "{peers}");

    // The anchor revokes node 1; node 0 imports the revocation while it runs.
    let rev = net.sandbox.path().join("node1.rev");
    trust(
        &net,
        &[
            "revoke",
            "--anchor",
            &key_s,
            "--node",
            &id1,
            "--out",
            rev.to_str().unwrap(),
        ],
    )
    .ok();
    let shown = trust(&net, &["--json", "show", rev.to_str().unwrap()])
        .ok()
        .json();
    assert_eq!(shown["target"], id1.as_str());
    net.run(0, &["trust", "import", rev.to_str().unwrap()]).ok();

    // The running node applies the import at its next housekeeping tick: wait until it
    // refuses anything of node 1's (hellos and digests come every second) before publishing.
    net.wait("node 0 applies the revocation", || {
        let refused = not_admitted(&net, 0);
        refused
            .iter()
            .any(|(s, _)| *s == id1)
            .then_some(())
            .ok_or(format!("{refused:?}"))
    });
    expect_seeds_refused(&net, &id1, "after revocation");

    // Restarted, node 0 still refuses node 1 (the revocation is stored).
    net.kill(0);
    net.restart(0);
    expect_seeds_refused(&net, &id1, "after restart");
    assert!(net.run(0, &["seed", "show", &from_1]).success());
    net.assert_alive(&all);
}
