//! Admission to the peer table from one network address in anchored mode (issue 12): the cap
//! per address (`network.max_peers_per_address`) applies as in open mode. Certificates bound
//! the identities an anchor vouches for, not how many of them arrive through one address: an
//! anchor that certified many nodes (or a certified node's stolen siblings) must not fill the
//! table from one place. Frames are handed to the trust boundary directly with a UDP source
//! outside loopback (a loopback source is exempt, and tests send nothing off 127.0.0.1).

use crate::config::Config;
use crate::crypto::SigningSeeds;
use crate::envelope::{self, Header, Hello, Kind, MAX_ENVELOPE_BYTES};
use crate::identity::Identity;
use crate::ingress::Source;
use crate::model::MessageId;
use crate::network::{Acceptance, MemoryHub};
use crate::trust::{AnchorKey, Certificate, Roles, TrustMode};

use super::Node;

fn certified_hello(anchor: &AnchorKey, id: &Identity, serial: u8) -> Vec<u8> {
    let cert = Certificate::sign(
        anchor,
        id.public(),
        [serial; 16],
        0,
        u64::MAX,
        Roles::ALL,
        [0; 32],
    )
    .unwrap();
    let hello = Hello {
        name: format!("certified-{serial}"),
        addresses: vec![],
        key_epoch: 1,
        signing_public: id.public().signing.to_bytes(),
        kem_public: id.public().kem.to_bytes(),
        certificate: Some(cert.to_bytes().to_vec()),
        rotations: vec![],
    };
    let mut message_id = [0u8; 16];
    message_id[0] = serial;
    hello_envelope(id, &hello, MessageId::from_bytes(message_id))
}

/// The hello of `id` named `name`: no addresses, no certificate, no rotations.
pub(super) fn plain_hello(id: &Identity, name: &str) -> Hello {
    Hello {
        name: name.into(),
        addresses: vec![],
        key_epoch: id.public().epoch,
        signing_public: id.public().signing.to_bytes(),
        kem_public: id.public().kem.to_bytes(),
        certificate: None,
        rotations: vec![],
    }
}

/// `hello` as `id`'s signed hello envelope, with `message_id`, dated now.
pub(super) fn hello_envelope(id: &Identity, hello: &Hello, message_id: MessageId) -> Vec<u8> {
    hello_envelope_at(id, hello, message_id, crate::clock::now_ms())
}

/// `hello` as `id`'s signed hello envelope, with `message_id`, dated `timestamp`.
fn hello_envelope_at(
    id: &Identity,
    hello: &Hello,
    message_id: MessageId,
    timestamp: crate::model::Millis,
) -> Vec<u8> {
    let header = Header {
        kind: Kind::NodeHello,
        sealed: false,
        sender: id.node_id().clone(),
        message_id,
        timestamp,
        ttl_secs: 60,
        lamport: 0,
    };
    signed_envelope(id, &header, &envelope::encode_hello(hello))
}

/// `payload` as `id`'s signed plain envelope of `kind` (a sync frame, say), with a fresh
/// message id, dated now.
pub(super) fn plain_envelope<T: serde::Serialize>(
    id: &Identity,
    kind: Kind,
    payload: &T,
) -> Vec<u8> {
    let header = Header {
        kind,
        sealed: false,
        sender: id.node_id().clone(),
        message_id: MessageId::from_bytes(crate::clock::random_bytes()),
        timestamp: crate::clock::now_ms(),
        ttl_secs: 60,
        lamport: 0,
    };
    signed_envelope(id, &header, &envelope::encode_hello(payload))
}

/// `payload` under `header` as `id`'s signed plain envelope.
pub(super) fn signed_envelope(id: &Identity, header: &Header, payload: &[u8]) -> Vec<u8> {
    envelope::build(
        id,
        header,
        payload,
        &[],
        MAX_ENVELOPE_BYTES,
        &mut envelope::os_rng,
    )
    .unwrap()
}

/// A node's configuration in a fresh temporary directory (returned too, to be kept while the
/// node runs), without an event log file.
fn quiet_config() -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::with_data_dir(dir.path().join("n"));
    c.events.log_enabled = false;
    (dir, c)
}

/// Starts a node with configuration `c` on a memory hub of its own.
async fn start_on_hub(c: Config) -> Node {
    let transport = MemoryHub::new().join("n");
    Node::start_with_transport(c, Box::new(transport))
        .await
        .unwrap()
}

/// A source the transport does not vouch for.
fn unverified(from: impl Into<String>) -> Source {
    Source {
        from: from.into(),
        verified: false,
    }
}

/// Hands each frame to `node`'s trust boundary in turn, on the blocking pool; their verdicts.
async fn receive_all(node: &Node, frames: Vec<(Vec<u8>, Source)>) -> Vec<Acceptance> {
    let node = node.clone();
    tokio::task::spawn_blocking(move || {
        frames
            .iter()
            .map(|(frame, source)| {
                node.receive_frame(frame, source, MAX_ENVELOPE_BYTES, &mut None)
                    .unwrap()
                    .acceptance
            })
            .collect()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchored_mode_caps_certified_peers_from_one_address() {
    let anchor = AnchorKey::from_seeds(&SigningSeeds {
        ed25519: [0xa1; 32],
        ml_dsa: [0xa2; 32],
    });
    let (_dir, mut c) = quiet_config();
    c.trust.mode = TrustMode::Anchored;
    c.trust.anchors = vec![hex::encode(anchor.public().to_bytes())];
    c.network.max_peers_per_address = 3;
    let node = start_on_hub(c).await;
    let one = unverified("udp:192.0.2.7:7946");
    let other = unverified("udp:198.51.100.9:7946");
    let frames = (1..=6u8)
        .map(|i| {
            let hello = certified_hello(&anchor, &Identity::from_tag(i, 1), i);
            (hello, if i <= 5 { one.clone() } else { other.clone() })
        })
        .collect();
    let verdicts = receive_all(&node, frames).await;
    // Three from the first address get in, the next two are refused (valid, so `Ignore`), and
    // another address still has room.
    use Acceptance::{Accept, Ignore};
    assert_eq!(verdicts, [Accept, Accept, Accept, Ignore, Ignore, Accept]);
    assert_eq!(node.peers().await.unwrap().len(), 4);
    assert_eq!(
        node.overview().await.unwrap().counters.get("peers.refused"),
        Some(&2)
    );
    node.stop().await.unwrap();
}

/// Attack: one host holds a whole IPv6 /64 (the usual allocation) and sends hellos of fresh
/// identities, each from another of its addresses. Counted per full address, every one of
/// them got in (and each counted toward the hello interval as a peer of its own): the
/// `network.max_peers_per_address` cap did not apply. Sources count as their /64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_addresses_of_one_ipv6_network_share_the_cap_per_address() {
    let (_dir, mut c) = quiet_config();
    c.network.max_peers_per_address = 3;
    let node = start_on_hub(c).await;
    let sources: Vec<Source> = (1..=6)
        .map(|i| format!("udp:[2001:db8:1:2::{i:x}]:7946"))
        .chain([
            // Another /64, and an IPv4-mapped address (counted as its IPv4 address).
            "udp:[2001:db8:1:3::1]:7946".to_owned(),
            "udp:[::ffff:192.0.2.7]:7946".to_owned(),
        ])
        .map(unverified)
        .collect();
    let frames = sources
        .into_iter()
        .enumerate()
        .map(|(i, source)| {
            let id = Identity::from_tag(40 + i as u8, 0);
            let hello = plain_hello(&id, &format!("v6-{i}"));
            let message_id = MessageId::from_bytes(crate::clock::random_bytes());
            (hello_envelope(&id, &hello, message_id), source)
        })
        .collect();
    let verdicts = receive_all(&node, frames).await;
    use Acceptance::{Accept, Ignore};
    assert_eq!(
        verdicts,
        [
            Accept, Accept, Accept, Ignore, Ignore, Ignore, Accept, Accept
        ]
    );
    assert_eq!(node.peers().await.unwrap().len(), 5);
    node.stop().await.unwrap();
}

/// Issue 13: the hello interval is sized by the peers heard again after their first hello, and
/// the peers admitted from one IP address count once together: identities one address makes
/// (up to `network.max_peers_per_address` of them get in) stretch it no more than one node.
/// The node's clock and the hellos' timestamps are set by the test (no network task runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_from_one_address_stretch_the_hello_interval_as_one_peer() {
    let (_dir, mut c) = quiet_config();
    c.network.hello_interval_secs = 1;
    c.network.hellos_per_interval = 2;
    let t0 = crate::clock::now_ms();
    let clock = crate::clock::ManualClock::new(t0);
    let node = Node::start_with_clock(c, None, std::sync::Arc::new(clock.clone()))
        .await
        .unwrap();
    let source = |address: &str| unverified(format!("udp:{address}:7946"));
    // Sixteen identities (the per-address cap) from one address, three from three others.
    let senders: Vec<(Identity, Source)> = (1..=19u8)
        .map(|i| {
            let from = if i <= 16 {
                source("192.0.2.7")
            } else {
                source(&format!("198.51.100.{i}"))
            };
            (Identity::from_tag(i, 1), from)
        })
        .collect();
    let hello_of = |id: &Identity| Hello {
        name: "sybil".into(),
        addresses: vec![],
        key_epoch: 1,
        signing_public: id.public().signing.to_bytes(),
        kem_public: id.public().kem.to_bytes(),
        certificate: None,
        rotations: vec![],
    };
    let round = |at: crate::model::Millis, serial: u8| {
        let frames: Vec<(Vec<u8>, Source)> = senders
            .iter()
            .map(|(id, from)| {
                let mut message_id = [serial; 16];
                message_id[0] = id.node_id().as_str().as_bytes()[0];
                message_id[1] = id.node_id().as_str().as_bytes()[1];
                let hello =
                    hello_envelope_at(id, &hello_of(id), MessageId::from_bytes(message_id), at);
                (hello, from.clone())
            })
            .collect();
        receive_all(&node, frames)
    };
    let verdicts = round(t0, 1).await;
    assert!(
        verdicts.iter().all(|v| *v == Acceptance::Accept),
        "{verdicts:?}"
    );
    assert_eq!(node.peers().await.unwrap().len(), 19);
    // Heard once: none counts.
    assert_eq!(node.size_hello_interval(), 1000);

    // Heard again a second later: the sixteen count as one peer, with the three others four
    // peers, two intervals (not 19 / 2).
    clock.set(t0 + 1000);
    let verdicts = round(t0 + 1000, 2).await;
    assert!(
        verdicts.iter().all(|v| *v == Acceptance::Accept),
        "{verdicts:?}"
    );
    assert_eq!(
        node.overview()
            .await
            .unwrap()
            .counters
            .get("hellos.refreshed"),
        Some(&19)
    );
    assert_eq!(node.size_hello_interval(), 2000);
    assert_eq!(node.hello_interval(), std::time::Duration::from_secs(2));

    // Silent for three such intervals: none counts any more.
    clock.set(t0 + 1000 + 6001);
    assert_eq!(node.size_hello_interval(), 1000);
    node.stop().await.unwrap();
}
