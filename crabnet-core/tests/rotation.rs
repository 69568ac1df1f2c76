//! Key rotation (docs/PROTOCOL.md section 2g) against running nodes over the in-memory hub:
//! forged, skipping, replayed and conflicting statements change nothing; a rotated node's old
//! keys work only during the grace period; a node that rotates keeps its id and its peers;
//! the committed rotation vectors.

mod support;

use std::time::{Duration, Instant};
use support::forge::{
    config, counter, dir_and_hub, eventually_knows, hello, hello_rotated, identity, list_frame,
    mesh, seal, seed_message, start, start_with_wire, wait_counter,
};
use support::vectors::{check_committed, vector_identity};

use crabnet_core::clock::now_ms;
use crabnet_core::envelope::{self, Kind};
use crabnet_core::identity::Identity;
use crabnet_core::model::Message;
use crabnet_core::network::{MemoryTransport, Transport};
use crabnet_core::rotation::{Added, Chains, Rotation};
use crabnet_core::trust::Revocation;
use crabnet_core::{Config, MemoryHub, Node, NodeId};

const HOUR: u64 = 3_600_000;

/// `from`'s next keys (deterministic from `tag`) and the statement naming them, dated `at`.
fn rotate(from: &Identity, tag: u32, at: u64) -> (Identity, Rotation) {
    let next = identity(tag, from.public().epoch + 1).with_node_id(from.node_id().clone());
    let r = Rotation::sign(from, next.public(), at, [0; 32]).unwrap();
    (next, r)
}

/// A `key_rotations` envelope from `sender` carrying `items`.
fn rotations_frame(sender: &Identity, items: &[&Rotation]) -> Vec<u8> {
    list_frame(
        sender,
        Kind::KeyRotations,
        items.iter().map(|r| r.to_bytes()),
    )
}

/// Starts the node under attack with `c` on `hub` and a raw wire beside it, over which `peers`
/// introduce themselves by their hellos (the node's first: this waits until it accepted all).
async fn victim(c: Config, hub: &MemoryHub, peers: &[&Identity]) -> (Node, MemoryTransport) {
    let (node, mut wire) = start_with_wire(c, hub).await;
    for id in peers {
        wire.broadcast(&hello(id)).unwrap();
    }
    wait_counter(&node, "hellos.accepted", peers.len() as u64).await;
    (node, wire)
}

/// Sends a seed signed by `signer` (author `signer`'s node id) dated `at`.
fn send_seed_at(wire: &mut MemoryTransport, signer: &Identity, at: u64) -> Message {
    let m = seed_message(signer, 1, at);
    wire.broadcast(&seal(signer, &m, 3600)).unwrap();
    m
}

/// The rotation statements stored in the database `db`.
fn stored_rotations(db: &std::path::Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM rotations", [], |r| r.get(0))
        .unwrap()
}

async fn epoch_of(node: &Node, id: &NodeId) -> u32 {
    node.peers()
        .await
        .unwrap()
        .into_iter()
        .find(|p| &p.node_id == id)
        .map(|p| p.key_epoch)
        .unwrap_or(0)
}

/// A rotation signed by a third party, one that skips an epoch, one for a revoked node, one
/// dated in the future and a second statement for an epoch already passed are refused; a
/// replayed statement changes nothing; only the real rotation moves the peer to its new keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_skipping_revoked_and_replayed_rotations_change_nothing() {
    let (dir, hub) = dir_and_hub();
    let alice = identity(0x11, 1);
    let mallory = identity(0x66, 1);
    let bob = identity(0x22, 1);
    let c = config(dir.path(), "victim");
    let (node, mut wire) = victim(c, &hub, &[&alice, &mallory, &bob]).await;
    let now = now_ms();

    // Mallory signs a rotation of Alice's id to keys of her own.
    let mallory_as_alice = identity(0x66, 1).with_node_id(alice.node_id().clone());
    let (stolen, forged) = rotate(&mallory_as_alice, 0x67, now);
    wire.broadcast(&rotations_frame(&mallory, &[&forged]))
        .unwrap();
    wait_counter(&node, "trust.rotations_refused", 1).await;
    // ... and a hello with those keys carrying the forged chain.
    wire.broadcast(&hello_rotated(&stolen, vec![forged.to_bytes().to_vec()]))
        .unwrap();
    wait_counter(&node, "rejected.key_mismatch", 1).await;
    let m = send_seed_at(&mut wire, &stolen, now);
    wait_counter(&node, "rejected.bad_signature", 1).await;
    assert!(node.seed(m.seed_id()).await.is_err());
    assert_eq!(epoch_of(&node, alice.node_id()).await, 1);

    // Epoch 3 before epoch 2 skips an epoch.
    let (alice2, r2) = rotate(&alice, 0x12, now);
    let (_alice3, r3) = rotate(&alice2, 0x13, now);
    wire.broadcast(&rotations_frame(&mallory, &[&r3])).unwrap();
    wait_counter(&node, "trust.rotations_refused", 2).await;
    assert_eq!(epoch_of(&node, alice.node_id()).await, 1);

    // A revoked node cannot rotate.
    let revoked = Revocation::by_node(&bob, now - 1000, now - 1000, [0; 32]).unwrap();
    wire.broadcast(&list_frame(&bob, Kind::Revocations, [revoked.to_bytes()]))
        .unwrap();
    wait_counter(&node, "trust.revocations_added", 1).await;
    let (_bob2, rb) = rotate(&bob, 0x23, now);
    wire.broadcast(&rotations_frame(&alice, &[&rb])).unwrap();
    wait_counter(&node, "trust.rotations_refused", 3).await;

    // A statement dated an hour ahead (it would stretch the old keys' grace period and bar
    // the owner's next rotation until then) is refused.
    let (_ahead, r_ahead) = rotate(&alice, 0x18, now + HOUR);
    wire.broadcast(&rotations_frame(&mallory, &[&r_ahead]))
        .unwrap();
    wait_counter(&node, "trust.rotations_refused", 4).await;
    assert_eq!(epoch_of(&node, alice.node_id()).await, 1);

    // The real rotation, relayed by anyone, moves Alice to her new keys.
    wire.broadcast(&rotations_frame(&mallory, &[&r2])).unwrap();
    wait_counter(&node, "trust.rotations_added", 1).await;
    assert_eq!(epoch_of(&node, alice.node_id()).await, 2);
    let m = send_seed_at(&mut wire, &alice2, now_ms());
    eventually_knows(&node, m.seed_id()).await;

    // Replayed: nothing new. Another epoch-2 statement (say from a stolen epoch-1 key):
    // refused, the first one stands.
    wire.broadcast(&rotations_frame(&mallory, &[&r2])).unwrap();
    let (_other, conflicting) = rotate(&alice, 0x19, now + 1);
    wire.broadcast(&rotations_frame(&mallory, &[&conflicting]))
        .unwrap();
    wait_counter(&node, "trust.rotations_refused", 5).await;
    assert_eq!(counter(&node, "trust.rotations_added").await, 1);
    // An old epoch-1 hello (replayed) does not move the peer back.
    wire.broadcast(&hello(&alice)).unwrap();
    wait_counter(&node, "hellos.stale_epoch", 1).await;
    assert_eq!(epoch_of(&node, alice.node_id()).await, 2);
    node.stop().await.unwrap();
}

/// Anyone can make valid rotation statements for fresh identities of their own: relayed in
/// `key_rotations` lists, those for nodes that are not in the peer table are refused and not
/// stored (a peer cannot fill the store with them; a node brings its chain in its hello).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_for_strangers_are_not_stored() {
    const FRAMES: u32 = 20;
    const PER_FRAME: u32 = 5;
    let (dir, hub) = dir_and_hub();
    let c = config(dir.path(), "victim");
    let db = c.data_dir.join("crabnet.db");
    let relay = identity(0x71, 1);
    let (node, mut wire) = victim(c, &hub, &[&relay]).await;
    let now = now_ms();
    for f in 0..FRAMES {
        let statements: Vec<Rotation> = (0..PER_FRAME)
            .map(|i| rotate(&identity(10_000 + f * PER_FRAME + i, 1), 20_000 + i, now).1)
            .collect();
        let refs: Vec<&Rotation> = statements.iter().collect();
        wire.broadcast(&rotations_frame(&relay, &refs)).unwrap();
    }
    wait_counter(
        &node,
        "trust.rotations_refused",
        u64::from(FRAMES * PER_FRAME),
    )
    .await;
    assert_eq!(counter(&node, "trust.rotations_added").await, 0);
    node.stop().await.unwrap();
    assert_eq!(stored_rotations(&db), 0);
}

/// A hello carries its node's rotation chain; when the node is refused (a full peer table
/// here), the chain is not stored either: fresh identities with chains of their own cannot
/// fill the store through hellos. An admitted node's chain is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_hello_leaves_no_rotation_behind() {
    let (dir, hub) = dir_and_hub();
    let mut c = config(dir.path(), "victim");
    c.network.max_peers = 1;
    let db = c.data_dir.join("crabnet.db");
    // The one peer the table holds, active and the author of a stored message.
    let alice = identity(0x81, 1);
    let (node, mut wire) = victim(c, &hub, &[&alice]).await;
    let m = send_seed_at(&mut wire, &alice, now_ms());
    eventually_knows(&node, m.seed_id()).await;

    let stranger = identity(0x82, 1);
    let (stranger2, r) = rotate(&stranger, 0x83, now_ms());
    wire.broadcast(&hello_rotated(&stranger2, vec![r.to_bytes().to_vec()]))
        .unwrap();
    wait_counter(&node, "peers.refused", 1).await;
    assert_eq!(counter(&node, "trust.rotations_added").await, 0);
    assert_eq!(epoch_of(&node, stranger.node_id()).await, 0);
    node.stop().await.unwrap();
    assert_eq!(stored_rotations(&db), 0);

    // With room, the same hello is admitted and its chain kept.
    let mut c = config(dir.path(), "victim");
    c.network.max_peers = 4;
    let node = start(c, &hub).await;
    wire.broadcast(&hello_rotated(&stranger2, vec![r.to_bytes().to_vec()]))
        .unwrap();
    wait_counter(&node, "trust.rotations_added", 1).await;
    assert_eq!(epoch_of(&node, stranger.node_id()).await, 2);
    node.stop().await.unwrap();
}

/// Old keys are accepted during the grace period after the rotation's time and refused as
/// `rotated_key` after it; the new keys work at once, also for a node that learns the chain
/// from the rotated node's hello only. Encryption to a rotated node uses its new keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_keys_work_only_during_the_grace_period() {
    let (dir, hub) = dir_and_hub();
    let (node, mut wire) = start_with_wire(config(dir.path(), "victim"), &hub).await;
    let now = now_ms();
    // Alice rotated two hours ago (the grace period is one hour): the node first hears of her
    // by a hello with her new keys and her chain.
    let alice = identity(0x11, 1);
    let (alice2, _) = rotate(&alice, 0x12, now - 2 * HOUR);
    let r_alice = Rotation::sign(&alice, alice2.public(), now - 2 * HOUR, [0; 32]).unwrap();
    wire.broadcast(&hello_rotated(&alice2, vec![r_alice.to_bytes().to_vec()]))
        .unwrap();
    // Carol rotates now: the node knew her old keys.
    let carol = identity(0x33, 1);
    wire.broadcast(&hello(&carol)).unwrap();
    wait_counter(&node, "hellos.accepted", 2).await;
    assert_eq!(epoch_of(&node, alice.node_id()).await, 2);
    let (carol2, r_carol) = rotate(&carol, 0x34, now);
    wire.broadcast(&rotations_frame(&alice2, &[&r_carol]))
        .unwrap();
    wait_counter(&node, "trust.rotations_added", 2).await;

    let late = send_seed_at(&mut wire, &alice, now);
    wait_counter(&node, "rejected.rotated_key", 1).await;
    assert!(node.seed(late.seed_id()).await.is_err());
    for m in [
        send_seed_at(&mut wire, &alice2, now),
        send_seed_at(&mut wire, &carol, now),
        send_seed_at(&mut wire, &carol2, now),
    ] {
        eventually_knows(&node, m.seed_id()).await;
    }
    assert_eq!(counter(&node, "rejected.rotated_key").await, 1);

    // A private seed for Carol is sealed to her new encryption keys.
    let mut req = crabnet_core::PublishRequest::new("true");
    req.private_to = vec![carol.node_id().clone()];
    node.publish(req).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "the private seed never came");
        let Ok(Some(frame)) = tokio::time::timeout(
            Duration::from_secs(1),
            crabnet_core::network::recv(&mut wire),
        )
        .await
        else {
            continue;
        };
        let Ok(parsed) = envelope::parse(&frame.bytes, envelope::MAX_ENVELOPE_BYTES) else {
            continue;
        };
        if parsed.header.kind != Kind::Domain(crabnet_core::model::MessageKind::SeedCreated) {
            continue;
        }
        assert!(parsed.message(carol.node_id(), carol2.kem()).is_ok());
        assert!(parsed.message(carol.node_id(), carol.kem()).is_err());
        break;
    }
    node.stop().await.unwrap();
}

/// Frames signed with keys a node has not learned yet (the rotation statement is still on its
/// way: UDP reorders, gossip relays overtake) wait for the statement instead of being
/// rejected as `bad_signature`; a forgery in a known peer's name is still rejected once the
/// hold is over, and when the hold is full it is rejected at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_signed_with_unannounced_keys_waits_for_the_rotation() {
    let (dir, hub) = dir_and_hub();
    let mut c = config(dir.path(), "victim");
    c.network.unknown_sender_hold_ms = 1_000;
    let carol = identity(0x51, 1);
    let (node, mut wire) = victim(c, &hub, &[&carol]).await;
    let now = now_ms();

    // Carol rotated; her first frame under the new keys overtakes the statement.
    let (carol2, r_carol) = rotate(&carol, 0x52, now);
    let early = send_seed_at(&mut wire, &carol2, now);
    wait_counter(&node, "messages.held", 1).await;
    wire.broadcast(&rotations_frame(&carol, &[&r_carol]))
        .unwrap();
    eventually_knows(&node, early.seed_id()).await;
    wait_counter(&node, "messages.held_released", 1).await;
    assert_eq!(counter(&node, "rejected.bad_signature").await, 0);

    // A forgery in Carol's name (keys she never had) waits, then is rejected as such.
    let mallory = identity(0x53, 2).with_node_id(carol.node_id().clone());
    let forged = send_seed_at(&mut wire, &mallory, now);
    wait_counter(&node, "rejected.bad_signature", 1).await;
    assert!(node.seed(forged.seed_id()).await.is_err());
    assert_eq!(counter(&node, "messages.held_expired").await, 1);

    // A forgery released by Carol's next rotation fails again: rejected at once, not held
    // (and verified) again.
    let forged = send_seed_at(&mut wire, &mallory, now_ms());
    wait_counter(&node, "messages.held", 3).await;
    let (_carol3, r3) = rotate(&carol2, 0x54, now_ms());
    wire.broadcast(&rotations_frame(&carol2, &[&r3])).unwrap();
    wait_counter(&node, "rejected.bad_signature", 2).await;
    assert_eq!(counter(&node, "messages.held").await, 3);
    assert_eq!(counter(&node, "messages.held_expired").await, 1);
    assert!(node.seed(forged.seed_id()).await.is_err());

    // A flood of forgeries fills this source's share of Carol's hold; each one past it
    // pushes out the oldest, which is rejected at once.
    for _ in 0..80 {
        send_seed_at(&mut wire, &mallory, now_ms());
    }
    wait_counter(&node, "messages.held_evicted", 72).await;
    wait_counter(&node, "rejected.bad_signature", 82).await;
    node.stop().await.unwrap();
}

/// A node rotates while running: its peer switches to the new keys and accepts what it
/// publishes before and after; after a restart it has the same id and the new keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_node_keeps_its_id_and_its_peers() {
    let (dir, hub) = dir_and_hub();
    let mut ca = config(dir.path(), "a");
    ca.network.hello_interval_secs = 1;
    let cb = config(dir.path(), "b");
    let a = start(ca.clone(), &hub).await;
    let b = start(cb, &hub).await;
    mesh(&[&a, &b]).await;
    let id = a.id().clone();
    let before = a
        .publish(crabnet_core::PublishRequest::new("true"))
        .await
        .unwrap();

    let old_keys = a.public_identity();
    let r = a.rotate_keys().await.unwrap();
    assert_eq!((r.epoch, &r.node_id), (2, &id));
    assert_eq!(a.public_identity().epoch, 2);
    assert_eq!(a.public_identity().node_id, id);
    let after = a
        .publish(crabnet_core::PublishRequest::new("true"))
        .await
        .unwrap();
    for s in [&before, &after] {
        eventually_knows(&b, &s.seed.id).await;
    }
    assert_eq!(epoch_of(&b, &id).await, 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["identity.key", "identity.key.epoch-1"] {
            let mode = std::fs::metadata(ca.data_dir.join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
    assert!(!ca.data_dir.join("identity.key.next").exists());

    a.stop().await.unwrap();
    let a = start(ca.clone(), &hub).await;
    assert_eq!(a.id(), &id);
    assert_eq!(a.public_identity(), r.next);
    let again = a
        .publish(crabnet_core::PublishRequest::new("true"))
        .await
        .unwrap();
    eventually_knows(&b, &again.seed.id).await;
    // A peer that has not learned of the rotation yet seals to the old keys: still opened.
    let mut wire = hub.join("wire");
    let stranger = identity(0x44, 1);
    wire.broadcast(&hello(&stranger)).unwrap();
    a.wait_for_peers(2, Duration::from_secs(10)).await.unwrap();
    let mut m = seed_message(&stranger, 1, now_ms());
    if let crabnet_core::model::Body::SeedCreated(seed) = &mut m.body {
        seed.audience = vec![id.clone()];
    }
    let sealed = envelope::message_envelope(
        &stranger,
        &m,
        60,
        &[(&id, &old_keys.kem)],
        envelope::MAX_ENVELOPE_BYTES,
        &mut envelope::os_rng,
    )
    .unwrap();
    wire.broadcast(&sealed).unwrap();
    eventually_knows(&a, m.seed_id()).await;

    // A second rotation chains from the first.
    let r3 = a.rotate_keys().await.unwrap();
    assert_eq!(r3.epoch, 3);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

// ------------------------------------------------------------------------------------------
// Test vectors (docs/PROTOCOL.md section 2g)
// ------------------------------------------------------------------------------------------

fn rotation_vectors() -> serde_json::Value {
    let first = vector_identity(0x01, 1);
    let next = vector_identity(0x11, 2).with_node_id(first.node_id().clone());
    let t0 = 1_764_201_600_000;
    let r = Rotation::sign(&first, next.public(), t0, [0; 32]).unwrap();
    serde_json::json!({
        "about": "Crabnet key rotation test vectors (docs/PROTOCOL.md section 2g). The node's epoch-1 keys are the envelope vectors' sender (tag 0x01: Ed25519 seed 32 x 0x01, ML-DSA-44 seed 32 x 0x02, X25519 secret 32 x 0x03, ML-KEM-768 seed 64 x 0x04); its epoch-2 keys use tag 0x11 (seeds 0x11, 0x12, 0x13, 0x14). The ML-DSA-44 signature uses all-zero signing randomness (deterministic); real signers use fresh randomness.",
        "node_id": first.node_id(),
        "previous_signing_public": hex::encode(first.public().signing.to_bytes()),
        "next_signing_public": hex::encode(next.public().signing.to_bytes()),
        "next_kem_public": hex::encode(next.public().kem.to_bytes()),
        "epoch": 2,
        "rotated_at": t0,
        "statement": hex::encode(r.to_bytes()),
    })
}

/// The committed vector is what the implementation produces, byte for byte
/// (`CRABNET_REGENERATE_VECTORS=1` rewrites it after an intended change), and it chains from
/// the node id.
#[test]
fn committed_rotation_vectors_match_and_verify() {
    let committed = check_committed(
        "rotation.json",
        &rotation_vectors(),
        "the rotation encoding changed",
    );
    let bytes = hex::decode(committed["statement"].as_str().unwrap()).unwrap();
    let r = Rotation::parse(&bytes).unwrap();
    assert_eq!(r.node_id.as_str(), committed["node_id"]);
    assert_eq!(r.epoch, 2);
    let mut chains = Chains::default();
    assert_eq!(chains.add(&r), Ok(Added::New));
    assert_eq!(
        hex::encode(chains.keys_at(&r.node_id, 2).unwrap().kem.to_bytes()),
        committed["next_kem_public"]
    );
}
