//! The trust policy (docs/PROTOCOL.md section 2f) against a running node, in memory: node-id
//! allow and deny lists, anchored membership with certificates and revocations. The same policy
//! across real `crabnet listen` processes and restarts is in `tests/trust_e2e.rs`.

mod support;

use std::time::Duration;
use support::forge::{
    config, counter, dir_and_hub, eventually_knows, hello, hello_signed_by, identity, list_frame,
    seal, seed_message, start, start_with_wire, wait_counter,
};
use support::vectors::{check_committed, vector_identity};

use crabnet_core::clock::now_ms;
use crabnet_core::crypto::SigningSeeds;
use crabnet_core::envelope::Kind;
use crabnet_core::identity::Identity;
use crabnet_core::model::Message;
use crabnet_core::monitor::RejectReason;
use crabnet_core::network::{MemoryTransport, Transport};
use crabnet_core::store::{Store, StoreConfig};
use crabnet_core::trust::{AnchorKey, Certificate, Revocation, RevocationTarget, Roles, TrustMode};
use crabnet_core::{Config, EventKind, Node, NodeId};

/// `id`'s hello carrying `certificate`.
fn hello_cert(id: &Identity, certificate: Option<Vec<u8>>) -> Vec<u8> {
    hello_signed_by(id, id, certificate)
}

/// `id`'s hello carrying a certificate for `id` from anchor `a` (see [`certify`]).
fn certified_hello(
    a: &AnchorKey,
    id: &Identity,
    serial: u8,
    window: (u64, u64),
    roles: Roles,
) -> Vec<u8> {
    hello_cert(id, Some(certify(a, id, serial, window, roles)))
}

/// Each of `ids` sends a seed over `wire`, and waits until `node` refused all of them as not
/// admitted: none is there.
async fn all_refused(node: &Node, wire: &mut MemoryTransport, ids: &[&Identity]) {
    let refused_before = counter(node, "rejected.not_admitted").await;
    let sent: Vec<Message> = ids.iter().map(|id| send_seed(wire, id)).collect();
    wait_counter(
        node,
        "rejected.not_admitted",
        refused_before + sent.len() as u64,
    )
    .await;
    for m in &sent {
        assert!(node.seed(m.seed_id()).await.is_err());
    }
}

/// `id` sends a seed over `wire`: returned once `node` has it (10 s at most).
async fn accepted_seed(node: &Node, wire: &mut MemoryTransport, id: &Identity) -> Message {
    let m = send_seed(wire, id);
    eventually_knows(node, m.seed_id()).await;
    m
}

fn send_seed(wire: &mut MemoryTransport, id: &Identity) -> Message {
    let m = seed_message(id, 1, now_ms());
    wire.broadcast(&seal(id, &m, 60)).unwrap();
    m
}

async fn peer_ids(node: &Node) -> Vec<NodeId> {
    node.peers()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.node_id)
        .collect()
}

/// Whether the node's database has any trace of message `id` (stored or remembered as seen),
/// read through a second connection.
fn stored_trace(c: &Config, m: &Message) -> bool {
    let store = Store::open(&c.db_path(), &StoreConfig::default()).unwrap();
    store.is_known(&m.id).unwrap()
}

fn not_admitted_events(events: &[crabnet_core::Event], who: &NodeId) -> usize {
    events
        .iter()
        .filter(|e| {
            matches!(&e.kind, EventKind::MessageRejected {
                reason: RejectReason::NotAdmitted,
                sender: Some(s),
                ..
            } if s == who)
        })
        .count()
}

/// A denied node's hello and messages are dropped before any signature check or transaction:
/// the `rejected.not_admitted` counter counts them, the node is not in the peer table, nothing
/// about its messages is stored, and the flood is one event (aggregated per source and reason).
/// Other nodes are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_nodes_are_dropped_without_a_database_write() {
    let (dir, hub) = dir_and_hub();
    let mallory = identity(0x66, 1);
    let alice = identity(0x11, 1);
    let mut c = config(dir.path(), "victim");
    c.trust.deny = vec![mallory.node_id().clone()];
    let (node, mut wire) = start_with_wire(c.clone(), &hub).await;

    wire.broadcast(&hello(&mallory)).unwrap();
    let mut sent = Vec::new();
    for _ in 0..20 {
        sent.push(send_seed(&mut wire, &mallory));
    }
    wait_counter(&node, "rejected.not_admitted", 21).await;
    wire.broadcast(&hello(&alice)).unwrap();
    accepted_seed(&node, &mut wire, &alice).await;

    assert_eq!(peer_ids(&node).await, vec![alice.node_id().clone()]);
    for m in &sent {
        assert!(node.seed(m.seed_id()).await.is_err());
        assert!(!stored_trace(&c, m), "a denied message left a trace");
    }
    let events = node.events_after(0, 10_000).await.unwrap();
    assert_eq!(
        not_admitted_events(&events, mallory.node_id()),
        1,
        "{events:?}"
    );
    node.stop().await.unwrap();
}

/// With a non-empty allow list only the listed nodes are admitted (and a node both allowed and
/// denied is denied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_admits_only_its_nodes() {
    let (dir, hub) = dir_and_hub();
    let (alice, bob, carol) = (identity(0x11, 1), identity(0x22, 1), identity(0x33, 1));
    let mut c = config(dir.path(), "n");
    c.trust.allow = vec![alice.node_id().clone(), carol.node_id().clone()];
    c.trust.deny = vec![carol.node_id().clone()];
    let (node, mut wire) = start_with_wire(c, &hub).await;
    for id in [&alice, &bob, &carol] {
        wire.broadcast(&hello(id)).unwrap();
    }
    let from_bob = send_seed(&mut wire, &bob);
    accepted_seed(&node, &mut wire, &alice).await;
    wait_counter(&node, "rejected.not_admitted", 3).await;
    assert!(node.seed(from_bob.seed_id()).await.is_err());
    assert_eq!(peer_ids(&node).await, vec![alice.node_id().clone()]);
    node.stop().await.unwrap();
}

#[test]
fn trust_lists_are_checked_when_the_config_loads() {
    let e = Config::from_toml("[trust]\ndeny = [\"abc\"]\n").unwrap_err();
    assert_eq!(e.kind(), crabnet_core::ErrorKind::Config);
    assert!(e.to_string().contains("trust.deny"), "{e}");
    let e = Config::from_toml(&format!(
        "[trust]\nallow = [\n  \"{}\",\n  \"{}\",\n]\n",
        "ab".repeat(32),
        "xy".repeat(32)
    ))
    .unwrap_err();
    assert!(e.to_string().contains("trust.allow"), "{e}");
    let ok = Config::from_toml(&format!("[trust]\nallow = [\"{}\"]\n", "AB".repeat(32)));
    assert!(ok.is_err(), "node ids are lowercase hex");
    let c = Config::from_toml(&format!("[trust]\nallow = [\"{}\"]\n", "ab".repeat(32))).unwrap();
    assert_eq!(c.trust.allow.len(), 1);
    assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
}

fn anchor(tag: u8) -> AnchorKey {
    AnchorKey::from_seeds(&SigningSeeds {
        ed25519: [tag; 32],
        ml_dsa: [tag.wrapping_add(1); 32],
    })
}

fn certify(a: &AnchorKey, id: &Identity, serial: u8, window: (u64, u64), roles: Roles) -> Vec<u8> {
    Certificate::sign(
        a,
        id.public(),
        [serial; 16],
        window.0,
        window.1,
        roles,
        [0; 32],
    )
    .unwrap()
    .to_bytes()
    .to_vec()
}

fn anchored(dir: &std::path::Path, name: &str, a: &AnchorKey) -> Config {
    let mut c = config(dir, name);
    c.trust.mode = TrustMode::Anchored;
    c.trust.anchors = vec![hex::encode(a.public().to_bytes())];
    c
}

const ALWAYS: (u64, u64) = (0, u64::MAX);

/// Anchored mode admits exactly the nodes with a valid certificate from a configured anchor,
/// for their own keys, within its window, and only for the roles it grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchored_mode_admits_only_certified_nodes_in_their_roles() {
    let (dir, hub) = dir_and_hub();
    let a = anchor(0xa0);
    let other_anchor = anchor(0xb0);
    let (node, mut wire) = start_with_wire(anchored(dir.path(), "n", &a), &hub).await;
    let (alice, mallory, bob, carol, dave, erin) = (
        identity(0x11, 1),
        identity(0x66, 1),
        identity(0x22, 1),
        identity(0x33, 1),
        identity(0x44, 1),
        identity(0x55, 1),
    );
    let mut refused = 0;
    // No certificate; a certificate from an unknown anchor; Alice's certificate in Dave's
    // hello; an expired certificate: all refused, none enters the peer table.
    wire.broadcast(&hello(&mallory)).unwrap();
    wire.broadcast(&certified_hello(&other_anchor, &bob, 2, ALWAYS, Roles::ALL))
        .unwrap();
    wire.broadcast(&hello_cert(
        &dave,
        Some(certify(&a, &alice, 3, ALWAYS, Roles::ALL)),
    ))
    .unwrap();
    let past = (1, now_ms() - 3_600_000);
    wire.broadcast(&certified_hello(&a, &erin, 4, past, Roles::ALL))
        .unwrap();
    refused += 4;
    // Messages from them are refused before any signature check.
    let from_mallory = send_seed(&mut wire, &mallory);
    refused += 1;
    wait_counter(&node, "rejected.not_admitted", refused).await;

    // Alice (both roles) and Carol (run only) are admitted.
    wire.broadcast(&certified_hello(&a, &alice, 1, ALWAYS, Roles::ALL))
        .unwrap();
    let run_only = Roles {
        publish: false,
        run: true,
    };
    wire.broadcast(&certified_hello(&a, &carol, 5, ALWAYS, run_only))
        .unwrap();
    node.wait_for_peers(2, Duration::from_secs(10))
        .await
        .unwrap();
    accepted_seed(&node, &mut wire, &alice).await;
    // Carol may bid and run, not publish.
    let from_carol = send_seed(&mut wire, &carol);
    refused += 1;
    wait_counter(&node, "rejected.not_admitted", refused).await;
    assert!(node.seed(from_carol.seed_id()).await.is_err());
    assert!(node.seed(from_mallory.seed_id()).await.is_err());
    let mut want = vec![alice.node_id().clone(), carol.node_id().clone()];
    want.sort();
    assert_eq!(peer_ids(&node).await, want);
    let status = node.trust_status().await.unwrap();
    assert_eq!(status.certified, want);
    node.stop().await.unwrap();
}

/// An anchor revokes a node (from a time on) and a node revokes itself: everything they sign
/// from then on is refused, also after the receiving node restarts; what was signed before
/// stays valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_hold_across_a_restart() {
    let (dir, hub) = dir_and_hub();
    let a = anchor(0xa0);
    let c = anchored(dir.path(), "n", &a);
    let (node, mut wire) = start_with_wire(c.clone(), &hub).await;
    let (alice, bob, carol) = (identity(0x11, 1), identity(0x22, 1), identity(0x33, 1));
    for (i, id) in [&alice, &bob, &carol].into_iter().enumerate() {
        wire.broadcast(&certified_hello(&a, id, i as u8, ALWAYS, Roles::ALL))
            .unwrap();
    }
    node.wait_for_peers(3, Duration::from_secs(10))
        .await
        .unwrap();
    let before = accepted_seed(&node, &mut wire, &alice).await;

    // The anchor revokes Alice's node id and Bob's certificate (serial 1), from now on.
    let now = now_ms();
    for target in [
        RevocationTarget::Node(alice.node_id().clone()),
        RevocationTarget::Certificate([1; 16]),
    ] {
        let r = Revocation::by_anchor(&a, target, now, now, [0; 32]).unwrap();
        assert!(node.import_revocation(r.to_bytes().to_vec()).await.unwrap());
        assert!(!node.import_revocation(r.to_bytes().to_vec()).await.unwrap());
    }
    // Carol revokes herself and says so over the wire, in a `revocations` envelope.
    let own = Revocation::by_node(&carol, now, now, [0; 32]).unwrap();
    let frame = list_frame(&carol, Kind::Revocations, [own.to_bytes()]);
    wire.broadcast(&frame).unwrap();
    wait_counter(&node, "trust.revocations_added", 1).await;
    // An anchor this node does not trust cannot revoke anyone.
    let stranger = Revocation::by_anchor(
        &anchor(0xb0),
        RevocationTarget::Node(identity(0x77, 1).node_id().clone()),
        now,
        now,
        [0; 32],
    )
    .unwrap();
    assert!(
        node.import_revocation(stranger.to_bytes().to_vec())
            .await
            .is_err()
    );

    all_refused(&node, &mut wire, &[&alice, &bob, &carol]).await;
    let status = node.trust_status().await.unwrap();
    assert_eq!(status.revoked_nodes.len(), 2, "{status:?}");
    assert_eq!(status.revoked_certificates.len(), 1, "{status:?}");
    node.stop().await.unwrap();
    drop(node);

    // After a restart the revocations still hold; the message from before is still there.
    let node = start(c, &hub).await;
    assert!(node.seed(before.seed_id()).await.is_ok());
    all_refused(&node, &mut wire, &[&alice, &bob, &carol]).await;
    node.stop().await.unwrap();
}

/// A node refuses to start with a certificate that is not its own or not from its anchors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_certificate_that_is_not_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let a = anchor(0xa0);
    let mut c = anchored(dir.path(), "n", &a);
    let path = dir.path().join("n.cert");
    std::fs::write(
        &path,
        certify(&a, &identity(0x11, 1), 1, ALWAYS, Roles::ALL),
    )
    .unwrap();
    c.trust.certificate = Some(path);
    let e = Node::start(c).await.unwrap_err();
    assert_eq!(e.kind(), crabnet_core::ErrorKind::Config);
    assert!(e.to_string().contains("trust.certificate"), "{e}");
}

// ------------------------------------------------------------------------------------------
// Test vectors (docs/PROTOCOL.md section 2f)
// ------------------------------------------------------------------------------------------

fn trust_vectors() -> serde_json::Value {
    let a = anchor(0xa0);
    let n = vector_identity(0x01, 1);
    let t0 = 1_764_201_600_000;
    let cert = Certificate::sign(
        &a,
        n.public(),
        [0x5e; 16],
        t0,
        t0 + 365 * 86_400_000,
        Roles {
            publish: true,
            run: false,
        },
        [0; 32],
    )
    .unwrap();
    let by_anchor_node = Revocation::by_anchor(
        &a,
        RevocationTarget::Node(n.node_id().clone()),
        t0 + 1000,
        t0 + 2000,
        [0; 32],
    )
    .unwrap();
    let by_anchor_serial = Revocation::by_anchor(
        &a,
        RevocationTarget::Certificate([0x5e; 16]),
        t0 + 1000,
        t0 + 2000,
        [0; 32],
    )
    .unwrap();
    let by_self = Revocation::by_node(&n, t0 + 3000, t0 + 3000, [0; 32]).unwrap();
    serde_json::json!({
        "about": "Crabnet trust test vectors (docs/PROTOCOL.md section 2f). The anchor's keys come from seeds: Ed25519 seed = 32 bytes of 0xa0, ML-DSA-44 seed = 32 bytes of 0xa1. The node's keys are the envelope vectors' sender (tag 0x01: Ed25519 seed 32 x 0x01, ML-DSA-44 seed 32 x 0x02, X25519 secret 32 x 0x03, ML-KEM-768 seed 64 x 0x04, epoch 1). Every ML-DSA-44 signature uses all-zero signing randomness (deterministic); real signers use fresh randomness.",
        "anchor": {
            "public": hex::encode(a.public().to_bytes()),
            "anchor_id": hex::encode(a.id()),
        },
        "node": {
            "node_id": n.node_id(),
            "signing_public": hex::encode(n.public().signing.to_bytes()),
            "kem_public": hex::encode(n.public().kem.to_bytes()),
        },
        "certificate": {
            "serial": hex::encode([0x5e; 16]),
            "not_before": t0,
            "not_after": t0 + 365 * 86_400_000,
            "roles": "publish",
            "bytes": hex::encode(cert.to_bytes()),
        },
        "revocations": {
            "anchor_revokes_node": hex::encode(by_anchor_node.to_bytes()),
            "anchor_revokes_certificate": hex::encode(by_anchor_serial.to_bytes()),
            "node_revokes_itself": hex::encode(by_self.to_bytes()),
        },
    })
}

/// The committed vectors are what the implementation produces, byte for byte
/// (`CRABNET_REGENERATE_VECTORS=1` rewrites them after an intended change), and they verify
/// exactly under their issuers.
#[test]
fn committed_trust_vectors_match_and_verify() {
    let committed = check_committed(
        "trust.json",
        &trust_vectors(),
        "the trust encodings changed",
    );
    let bytes = |v: &serde_json::Value| hex::decode(v.as_str().unwrap()).unwrap();
    let anchor_key =
        crabnet_core::crypto::SigningPublic::from_bytes(&bytes(&committed["anchor"]["public"]))
            .unwrap();
    let cert = Certificate::parse(&bytes(&committed["certificate"]["bytes"])).unwrap();
    cert.verify(std::slice::from_ref(&anchor_key)).unwrap();
    assert!(cert.verify(&[]).is_err());
    assert_eq!(cert.node.node_id.as_str(), committed["node"]["node_id"]);
    assert!(cert.roles.publish && !cert.roles.run);
    for (name, needs_anchor) in [
        ("anchor_revokes_node", true),
        ("anchor_revokes_certificate", true),
        ("node_revokes_itself", false),
    ] {
        let r = Revocation::parse(&bytes(&committed["revocations"][name])).unwrap();
        r.verify(std::slice::from_ref(&anchor_key)).unwrap();
        assert_eq!(r.verify(&[]).is_ok(), !needs_anchor, "{name}");
    }
}
