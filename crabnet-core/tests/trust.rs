//! The trust boundary of a running node, attacked through a real transport: unknown and forged
//! senders, key mismatches, replays (also after a restart and below the replay floor), stale
//! and future envelopes, and private seeds that outsiders relay but cannot read.

mod support;

use std::time::{Duration, Instant};
use support::forge::{
    claim_and_run_when_awarded, config, dir_and_hub, eventually_knows, hello, hello_signed_by,
    identity, meshed, seal, seed_message, short_seen_window, start, start_with_wire, tcp_swarm,
    wait_counter, wait_view_until,
};

use crabnet_core::clock::now_ms;
use crabnet_core::envelope::{self, MAX_ENVELOPE_BYTES};
use crabnet_core::identity::Identity;
use crabnet_core::model::{Message, SeedId};
use crabnet_core::network::{MemoryTransport, Transport};
use crabnet_core::{ErrorKind, Node, PublishRequest, SeedStatus};

async fn knows(node: &Node, id: &SeedId) -> bool {
    node.seed(id).await.is_ok()
}

fn id_of(m: &Message) -> SeedId {
    m.seed_id().clone()
}

/// A node (tag `tag`) that says hello to `node` over `wire`, once `node` admitted it.
async fn admitted(node: &Node, wire: &mut MemoryTransport, tag: u32) -> Identity {
    let id = identity(tag, 1);
    wire.broadcast(&hello(&id)).unwrap();
    node.wait_for_peers(1, Duration::from_secs(10))
        .await
        .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_forged_and_mismatched_senders_are_rejected() {
    let (dir, hub) = dir_and_hub();
    let (node, mut wire) = start_with_wire(config(dir.path(), "victim"), &hub).await;
    let mallory = identity(0x66, 1);
    let alice = identity(0x11, 1);

    // 1. A validly signed message from a sender without a hello.
    let m = seal_and_send(&mut wire, &mallory, now_ms());
    wait_counter(&node, "rejected.unknown_sender", 1).await;
    assert!(!knows(&node, &id_of(&m)).await);

    // 2. Alice says hello; a message claiming to be from Alice but signed by Mallory fails.
    wire.broadcast(&hello(&alice)).unwrap();
    node.wait_for_peers(1, Duration::from_secs(10))
        .await
        .unwrap();
    let forged = {
        let m = seed_message(&alice, 1, now_ms());
        let real = seal(&alice, &m, 60);
        let cut = real.len() - crabnet_core::crypto::DUAL_SIGNATURE_LEN;
        let sig = mallory
            .signing()
            .sign(&real[..cut], envelope::SIGNATURE_CONTEXT, [1; 32])
            .unwrap();
        let mut f = real[..cut].to_vec();
        f.extend_from_slice(&sig.to_bytes());
        (m, f)
    };
    wire.broadcast(&forged.1).unwrap();
    wait_counter(&node, "rejected.bad_signature", 1).await;
    assert!(!knows(&node, &id_of(&forged.0)).await);

    // 3. A hello whose node id is not derived from its keys.
    wire.broadcast(&hello_signed_by(&mallory, &alice, None))
        .unwrap();
    wait_counter(&node, "rejected.key_mismatch", 1).await;
    // 4. A known node id announcing other keys (here: another epoch) is refused.
    wire.broadcast(&hello(&identity(0x11, 2))).unwrap();
    wait_counter(&node, "rejected.key_mismatch", 2).await;
    let peers = node.peers().await.unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].key_epoch, 1);

    // Alice's real messages still work.
    let m = seal_and_send(&mut wire, &alice, now_ms());
    eventually_knows(&node, &id_of(&m)).await;
    node.stop().await.unwrap();
}

fn seal_and_send(wire: &mut MemoryTransport, id: &Identity, at: u64) -> Message {
    let m = seed_message(id, 1, at);
    wire.broadcast(&seal(id, &m, 60)).unwrap();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_future_envelopes_are_rejected_as_expired() {
    let (dir, hub) = dir_and_hub();
    let (node, mut wire) = start_with_wire(config(dir.path(), "n"), &hub).await;
    let alice = admitted(&node, &mut wire, 0x11).await;
    let old = seal_and_send(&mut wire, &alice, now_ms() - 3_600_000);
    let future = seal_and_send(&mut wire, &alice, now_ms() + 3_600_000);
    wait_counter(&node, "rejected.expired", 2).await;
    assert!(!knows(&node, &id_of(&old)).await);
    assert!(!knows(&node, &id_of(&future)).await);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_rejected_before_and_after_a_restart() {
    let (dir, hub) = dir_and_hub();
    let (node, mut wire) = start_with_wire(config(dir.path(), "n"), &hub).await;
    let alice = admitted(&node, &mut wire, 0x11).await;
    let m = seed_message(&alice, 3, now_ms());
    let bytes = seal(&alice, &m, 600);
    wire.broadcast(&bytes).unwrap();
    eventually_knows(&node, &id_of(&m)).await;
    let digest = node.overview().await.unwrap().state_digest;
    wire.broadcast(&bytes).unwrap();
    wait_counter(&node, "messages.duplicate", 1).await;
    node.stop().await.unwrap();
    drop(node);

    let node = start(config(dir.path(), "n"), &hub).await;
    wire.broadcast(&bytes).unwrap();
    wait_counter(&node, "messages.duplicate", 2).await;
    assert_eq!(node.overview().await.unwrap().state_digest, digest);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_below_the_senders_replay_floor_is_a_replay() {
    let (dir, hub) = dir_and_hub();
    let mut c = config(dir.path(), "n");
    short_seen_window(&mut c);
    let (node, mut wire) = start_with_wire(c, &hub).await;
    let alice = admitted(&node, &mut wire, 0x11).await;
    let first = seed_message(&alice, 50, now_ms());
    wire.broadcast(&seal(&alice, &first, 60)).unwrap();
    eventually_knows(&node, &id_of(&first)).await;
    // Once the seen window has passed, the id is forgotten but the floor remembers.
    // (Two ids expire: Alice's hello and her message.)
    wait_counter(&node, "seen.expired", 2).await;
    let old = seed_message(&alice, 40, now_ms());
    wire.broadcast(&seal(&alice, &old, 60)).unwrap();
    wait_counter(&node, "rejected.replay", 1).await;
    assert!(!knows(&node, &id_of(&old)).await);
    // A newer message from Alice is fine.
    let newer = seed_message(&alice, 51, now_ms());
    wire.broadcast(&seal(&alice, &newer, 60)).unwrap();
    eventually_knows(&node, &id_of(&newer)).await;
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_seeds_reach_only_their_audience() {
    let (dir, hub) = dir_and_hub();
    let [a, b, c] = meshed(dir.path(), &hub, ["a", "b", "c"]).await;
    // Unknown audience members are refused up front.
    let stranger = identity(0x77, 1).node_id().clone();
    let err = a
        .publish(PublishRequest {
            private_to: vec![stranger],
            ..PublishRequest::new("true")
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Network);
    assert!(err.to_string().contains("no hello"), "{err}");

    let seed = a
        .publish(PublishRequest {
            private_to: vec![b.id().clone()],
            max_bids: 1,
            ..PublishRequest::new("echo secret-output")
        })
        .await
        .unwrap();
    let id = seed.seed.id.clone();
    eventually_knows(&b, &id).await;
    b.bid(&id, 5).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let pause = Duration::from_millis(10);
    claim_and_run_when_awarded(&b, &id, deadline, pause, "award never arrived").await;
    wait_view_until(&a, &id, deadline, pause, "result never arrived", |v| {
        v.status == SeedStatus::Completed
    })
    .await;
    a.settle(&id, true, "").await.unwrap();
    wait_view_until(&b, &id, deadline, pause, "settlement never arrived", |v| {
        v.status == SeedStatus::Settled
    })
    .await;
    // Carol received every envelope (creation, bid, award, claim, result, settlement) but
    // could open none of them.
    wait_counter(&c, "messages.not_for_us", 6).await;
    assert_eq!(c.seed(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        a.overview().await.unwrap().state_digest,
        b.overview().await.unwrap().state_digest
    );
    for n in [a, b, c] {
        n.stop().await.unwrap();
    }
}

/// A transport whose frames come from the test, each with an acknowledgement channel: the
/// verdict the node would report to gossipsub.
struct Probe {
    rx: tokio::sync::mpsc::UnboundedReceiver<crabnet_core::network::Incoming>,
}

impl Transport for Probe {
    fn name(&self) -> &str {
        "probe"
    }
    fn max_frame_bytes(&self) -> usize {
        MAX_ENVELOPE_BYTES
    }
    fn local_addresses(&self) -> Vec<String> {
        Vec::new()
    }
    fn broadcast(&mut self, _frame: &[u8]) -> crabnet_core::Result<()> {
        Ok(())
    }
    fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<crabnet_core::network::Incoming>> {
        self.rx.poll_recv(cx)
    }
}

type Frames = tokio::sync::mpsc::UnboundedSender<crabnet_core::network::Incoming>;

async fn verdict(frames: &Frames, bytes: Vec<u8>) -> crabnet_core::network::Acceptance {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut frame = crabnet_core::network::InboundFrame::new(bytes, "relay-7");
    frame.ack = Some(tx);
    frames
        .send(crabnet_core::network::Incoming::Frame(frame))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("a verdict")
        .expect("the node answered")
        .acceptance
}

/// What gossipsub hears decides whether the relaying peer is penalised: only frames whose bytes
/// are invalid may cost an honest relay its score; frames that fail because of this node's own
/// state (an author it has no hello from, a duplicate, an expired envelope) are ignored. A
/// frame held for its author's hello gets its verdict when the hello comes: `Accept` (gossip
/// forwards it then). A bad signature from a known author is held too (it may have rotated its
/// keys) and is rejected when no rotation came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_what_the_bytes_prove_invalid_penalises_the_relay() {
    use crabnet_core::network::Acceptance;
    let dir = tempfile::tempdir().unwrap();
    let (frames, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut c = config(dir.path(), "n");
    // Every rejection its own event (all frames here come from one relay).
    c.network.reject_event_window_ms = 0;
    c.network.unknown_sender_hold_ms = 300;
    let node = Node::start_with_transport(c, Box::new(Probe { rx }))
        .await
        .unwrap();
    let author = identity(41, 0);
    let now = now_ms();

    // Valid, but the author's hello has not arrived: an honest relay's frame.
    let early = seal(&author, &seed_message(&author, 1, now), 60);
    assert_eq!(verdict(&frames, early).await, Acceptance::Ignore);
    // Held until the hello comes, then accepted.
    let waiting = seal(&author, &seed_message(&author, 6, now), 60);
    let relay = frames.clone();
    let waiting = tokio::spawn(async move { verdict(&relay, waiting).await });
    wait_counter(&node, "messages.held", 2).await;
    // Expired: not the relay's fault either.
    let stale = seal(&author, &seed_message(&author, 2, now - 3_600_000), 60);
    assert_eq!(verdict(&frames, stale).await, Acceptance::Ignore);
    // Once the hello is in, the same kind of frame is accepted, and its copy is a duplicate.
    assert_eq!(verdict(&frames, hello(&author)).await, Acceptance::Accept);
    assert_eq!(waiting.await.unwrap(), Acceptance::Accept);
    let fresh = seal(&author, &seed_message(&author, 3, now), 60);
    assert_eq!(verdict(&frames, fresh.clone()).await, Acceptance::Accept);
    assert_eq!(verdict(&frames, fresh.clone()).await, Acceptance::Ignore);

    // Garbage and broken signatures are proven by the bytes.
    assert_eq!(
        verdict(&frames, b"garbage".to_vec()).await,
        Acceptance::Reject
    );
    let mut flipped = seal(&author, &seed_message(&author, 4, now), 60);
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_eq!(verdict(&frames, flipped).await, Acceptance::Reject);

    // A frame that claims to come from the receiving node itself, signed by someone else: a
    // forgery, rejected with an event (it used to be dropped silently as our own echo).
    // (The header's sender is bytes 6..38; the signatures were made by `author`.)
    let mut forged = seal(&author, &seed_message(&author, 5, now), 60);
    let own_id: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&node.id().as_str()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    forged[6..38].copy_from_slice(&own_id);
    assert_eq!(verdict(&frames, forged).await, Acceptance::Reject);
    let events = node.events_after(0, 1000).await.unwrap();
    assert!(
        events.iter().any(|e| matches!(
            &e.kind,
            crabnet_core::EventKind::MessageRejected {
                sender: Some(s),
                reason: crabnet_core::monitor::RejectReason::BadSignature,
                ..
            } if s == node.id()
        )),
        "no bad_signature event for the forgery: {events:?}"
    );
    node.stop().await.unwrap();
}

/// An independent libp2p peer with gossipsub's default settings (default message ids, default
/// scoring) relays valid envelopes whose author the node has never heard of, as an honest relay
/// does when hellos and messages cross. The node must not penalise it: after the author's hello
/// the same peer's next envelope is applied. (Reporting such frames as invalid used to graylist
/// the relay after four of them, and its later valid frames were dropped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_libp2p_peer_relaying_valid_traffic_is_not_penalised() {
    use futures::StreamExt;
    use libp2p::{gossipsub, swarm::SwarmEvent};

    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with_dht(config(dir.path(), "n"), Default::default())
        .await
        .unwrap();
    let addr: libp2p::Multiaddr = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let o = node.overview().await.unwrap();
            if let Some(a) = o.addresses.iter().find(|a| a.contains("/tcp/")) {
                break a.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "no tcp address");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    let gossip = |_: &libp2p::identity::Keypair| {
        gossipsub::Behaviour::<gossipsub::IdentityTransform>::new(
            gossipsub::MessageAuthenticity::Anonymous,
            gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Anonymous)
                // Content ids, as nodes use (anonymous messages have no source or
                // sequence number to tell them apart).
                .message_id_fn(|m: &gossipsub::Message| {
                    use sha2::Digest;
                    gossipsub::MessageId::from(sha2::Sha256::digest(&m.data)[..20].to_vec())
                })
                .build()
                .unwrap(),
        )
        .unwrap()
    };
    let mut relay = tcp_swarm(libp2p::identity::Keypair::generate_ed25519(), gossip, |c| c);
    let topic = gossipsub::IdentTopic::new(crabnet_core::network::TOPIC);
    relay.behaviour_mut().subscribe(&topic).unwrap();
    relay.dial(addr).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, relay.select_next_some())
            .await
            .expect("the node never subscribed to the topic");
        if let SwarmEvent::Behaviour(gossipsub::Event::Subscribed { .. }) = event {
            break;
        }
    }

    let author = identity(57, 0);
    let now = now_ms();
    let early: Vec<Message> = (1..=6).map(|l| seed_message(&author, l, now)).collect();
    for m in &early {
        relay
            .behaviour_mut()
            .publish(topic.clone(), seal(&author, m, 60))
            .unwrap();
    }
    wait_counter(&node, "rejected.unknown_sender", early.len() as u64).await;
    relay
        .behaviour_mut()
        .publish(topic.clone(), hello(&author))
        .unwrap();
    let later = seed_message(&author, 10, now);
    let mut published_later = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !knows(&node, &id_of(&later)).await {
        assert!(
            Instant::now() < deadline,
            "the relay's valid envelope never arrived: the relay was penalised"
        );
        if !published_later && node.peers().await.unwrap().len() == 1 {
            relay
                .behaviour_mut()
                .publish(topic.clone(), seal(&author, &later, 60))
                .unwrap();
            published_later = true;
        }
        // Drive the relay's swarm meanwhile.
        let _ = tokio::time::timeout(Duration::from_millis(20), relay.select_next_some()).await;
    }
    node.stop().await.unwrap();
}
