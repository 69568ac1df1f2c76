//! Key rotation (docs/PROTOCOL.md section 2g) across real `crabnet listen` processes over UDP on
//! 127.0.0.1: node 1 rotates its keys with `crabnet trust rotate` while it runs; node 0 keeps
//! accepting its seeds and bids; a late joiner that starts after the rotation accepts node 1's
//! messages signed with the new keys; node 1 restarted keeps its id and its new keys.

mod support;

use serde_json::Value;
use support::Net;

/// Node `i`'s view of peer `j`'s key epoch (0 when it does not know `j`).
fn epoch_seen(net: &Net, i: usize, j: usize) -> u64 {
    let peers = net.run(i, &["--json", "peers"]).ok().json();
    peers
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["node_id"] == net.id(j))
        .and_then(|p| p["key_epoch"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_rotated_node_keeps_talking_to_its_peers() {
    let mut net = Net::new(3);
    let all = [0, 1, 2];
    // Node 2 joins late: its port is closed until then.
    drop(net.nodes[2].reservation.take());
    net.start_mesh(&[0, 1], &all);
    net.wait_peers(0, &[1]);
    net.wait_peers(1, &[0]);
    let before = net.publish(1, "echo before rotation", 1);
    net.wait_seed(0, &before, "gets node 1's seed", |_| true);

    let rotated: Value = net.run(1, &["--json", "trust", "rotate"]).ok().json();
    assert_eq!(rotated["node_id"], net.id(1));
    assert_eq!(rotated["key_epoch"], 2);
    net.wait("node 0 follows node 1's rotation", || {
        let e = epoch_seen(&net, 0, 1);
        (e == 2).then_some(()).ok_or(format!("epoch {e}"))
    });
    let identity = net.run(1, &["--json", "trust", "identity"]).ok().json();
    assert_eq!(identity["node_id"], net.id(1));
    assert_eq!(identity["key_epoch"], 2);

    // Seeds and bids signed with the new keys.
    let after = net.publish(1, "echo after rotation", 1);
    net.wait_seed(0, &after, "gets node 1's seed after the rotation", |_| true);
    let wanted = net.publish(0, "echo bid on me", 1);
    net.bid(1, &wanted, 7);
    net.wait_award(0, &wanted, 1, 7);

    // A late joiner learns the chain (from node 1's hello, and relayed by node 0).
    net.start(2, &[0, 1]);
    net.wait_peers(2, &[0, 1]);
    assert_eq!(epoch_seen(&net, 2, 1), 2);
    net.wait_seed(2, &after, "gets node 1's post-rotation seed", |_| true);
    net.wait_award(2, &wanted, 1, 7);

    // Restarted, node 1 has the same id and the new keys.
    net.kill(1);
    net.restart(1);
    let identity = net.run(1, &["--json", "trust", "identity"]).ok().json();
    assert_eq!(identity["node_id"], net.id(1));
    assert_eq!(identity["key_epoch"], 2);
    assert_eq!(
        identity["signing_public"],
        rotated["identity"]["signing_public"]
    );
    let again = net.publish(1, "echo after restart", 1);
    for i in [0, 2] {
        net.wait_seed(i, &again, "gets node 1's seed after its restart", |_| true);
    }
    // Around the switch, a frame signed with the new keys can overtake the statement (the
    // datagrams race): it waits for the statement instead of failing as `bad_signature`.
    let rejected = net.counters(0);
    assert_eq!(
        rejected.get("rejected.bad_signature").copied().unwrap_or(0),
        0,
        "{rejected:?}"
    );
    net.assert_alive(&all);
}
