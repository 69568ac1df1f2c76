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

/// `hello` as `id`'s signed hello envelope, with `message_id`, dated now.
pub(super) fn hello_envelope(id: &Identity, hello: &Hello, message_id: MessageId) -> Vec<u8> {
    let header = Header {
        kind: Kind::NodeHello,
        sealed: false,
        sender: id.node_id().clone(),
        message_id,
        timestamp: crate::clock::now_ms(),
        ttl_secs: 60,
        lamport: 0,
    };
    let payload = envelope::encode_hello(hello);
    envelope::build(
        id,
        &header,
        &payload,
        &[],
        MAX_ENVELOPE_BYTES,
        &mut envelope::os_rng,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchored_mode_caps_certified_peers_from_one_address() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = AnchorKey::from_seeds(&SigningSeeds {
        ed25519: [0xa1; 32],
        ml_dsa: [0xa2; 32],
    });
    let mut c = Config::with_data_dir(dir.path().join("n"));
    c.events.log_enabled = false;
    c.trust.mode = TrustMode::Anchored;
    c.trust.anchors = vec![hex::encode(anchor.public().to_bytes())];
    c.network.max_peers_per_address = 3;
    let hub = MemoryHub::new();
    let node = Node::start_with_transport(c, Box::new(hub.join("n")))
        .await
        .unwrap();
    let one = Source {
        from: "udp:192.0.2.7:7946".into(),
        verified: false,
    };
    let other = Source {
        from: "udp:198.51.100.9:7946".into(),
        verified: false,
    };
    let n = node.clone();
    let verdicts = tokio::task::spawn_blocking(move || {
        (1..=6u8)
            .map(|i| {
                let hello = certified_hello(&anchor, &Identity::from_tag(i, 1), i);
                let source = if i <= 5 { &one } else { &other };
                n.receive_frame(&hello, source, MAX_ENVELOPE_BYTES, &mut None)
                    .unwrap()
                    .acceptance
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
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
