//! The envelope format as an attacker sees it: committed test vectors, tampering, forged and
//! partial signatures, recipients, and arbitrary bytes.
//!
//! Set `CRABNET_REGENERATE_VECTORS=1` to rewrite `tests/vectors/envelopes.json` after an
//! intentional format change (and describe the change in docs/PROTOCOL.md).

mod support;

use crabnet_core::envelope::{self, EnvelopeError, Header, Kind, MAX_ENVELOPE_BYTES};
use crabnet_core::identity::Identity;
use crabnet_core::model::{Body, Message, MessageId, NodeId, Seed, SeedId};
use proptest::prelude::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::vectors::{self, vector_identity};

/// A deterministic byte stream: SHA-256("crabnet-test-rng" || counter as u64 BE) blocks.
struct Stream {
    counter: u64,
    buf: Vec<u8>,
}

impl Stream {
    fn new() -> Self {
        Stream {
            counter: 0,
            buf: Vec::new(),
        }
    }

    fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.buf.is_empty() {
                let mut h = Sha256::new();
                h.update(b"crabnet-test-rng");
                h.update(self.counter.to_be_bytes());
                self.counter += 1;
                self.buf = h.finalize().to_vec();
                self.buf.reverse();
            }
            *b = self.buf.pop().expect("refilled");
        }
    }
}

fn identity(tag: u8) -> Identity {
    vector_identity(tag, 1)
}

fn sender() -> Identity {
    identity(0x01)
}

fn recipients() -> Vec<Identity> {
    vec![identity(0x10), identity(0x20), identity(0x30)]
}

fn message(sender: &NodeId) -> Message {
    Message {
        id: MessageId::from_bytes([0xab; 16]),
        sender: sender.clone(),
        lamport: 7,
        timestamp: 1_764_201_600_000,
        body: Body::SeedCreated(Seed {
            command: "echo hello".into(),
            description: "test vector".into(),
            min_price: 1,
            timeout_secs: 60,
            ..support::fold_fixtures::seed(
                SeedId::from_bytes([0xcd; 16]),
                sender.clone(),
                1_764_201_600_000,
            )
        }),
    }
}

const TTL: u32 = 3600;

fn build(to: &[&Identity], rng: &mut Stream) -> Vec<u8> {
    let s = sender();
    let list: Vec<_> = to.iter().map(|r| (r.node_id(), &r.public().kem)).collect();
    envelope::message_envelope(
        &s,
        &message(s.node_id()),
        TTL,
        &list,
        MAX_ENVELOPE_BYTES,
        &mut |b| rng.fill(b),
    )
    .unwrap()
}

fn vectors() -> Value {
    let s = sender();
    let rs = recipients();
    let mut rng = Stream::new();
    let plain = build(&[], &mut rng);
    let sealed_1 = build(&[&rs[0]], &mut rng);
    let sealed_3 = build(&[&rs[0], &rs[1], &rs[2]], &mut rng);
    let who = |i: &Identity, tag: u8| {
        json!({
            "seed_tag": tag,
            "node_id": i.node_id(),
            "signing_public": hex::encode(i.public().signing.to_bytes()),
            "kem_public": hex::encode(i.public().kem.to_bytes()),
        })
    };
    json!({
        "about": "Crabnet envelope test vectors (docs/PROTOCOL.md section 2). Keys come from seeds: for tag t, Ed25519 seed = 32 bytes of t, ML-DSA-44 seed = 32 bytes of t+1, X25519 secret = 32 bytes of t+2, ML-KEM-768 seed = 64 bytes of t+3, epoch 1. Randomness is the stream SHA-256(\"crabnet-test-rng\" || u64 BE counter) from counter 0, consumed in order by the three envelopes: content key, nonce, ephemeral X25519 secret, one 32-byte ML-KEM encapsulation seed per recipient (sealed only), then 32 bytes of ML-DSA signing randomness.",
        "ttl_secs": TTL,
        "sender": who(&s, 0x01),
        "recipients": [who(&rs[0], 0x10), who(&rs[1], 0x20), who(&rs[2], 0x30)],
        "message": message(s.node_id()),
        "envelopes": {
            "plain": hex::encode(&plain),
            "sealed_to_first_recipient": hex::encode(&sealed_1),
            "sealed_to_three_recipients": hex::encode(&sealed_3),
        }
    })
}

fn committed() -> Value {
    vectors::committed("envelopes.json")
}

fn envelope_bytes(name: &str) -> Vec<u8> {
    hex::decode(committed()["envelopes"][name].as_str().unwrap()).unwrap()
}

#[test]
fn committed_vectors_match_the_implementation() {
    vectors::check_committed(
        "envelopes.json",
        &vectors(),
        "the envelope encoding changed",
    );
}

#[test]
fn committed_vectors_verify_and_open_for_exactly_their_recipients() {
    let s = sender();
    let rs = recipients();
    let outsider = identity(0x40);
    let expected = message(s.node_id());
    let cases: [(&str, &[usize]); 3] = [
        ("plain", &[]),
        ("sealed_to_first_recipient", &[0]),
        ("sealed_to_three_recipients", &[0, 1, 2]),
    ];
    for (name, to) in cases {
        let bytes = envelope_bytes(name);
        let p = envelope::parse(&bytes, MAX_ENVELOPE_BYTES).unwrap();
        assert_eq!(p.header.sender, *s.node_id());
        assert_eq!(p.header.sealed, !to.is_empty(), "{name}");
        p.verify(&s.public().signing).unwrap();
        let listed: Vec<NodeId> = to.iter().map(|i| rs[*i].node_id().clone()).collect();
        assert_eq!(p.recipients().unwrap(), listed, "{name}");
        for (i, r) in rs.iter().enumerate() {
            let got = p.message(r.node_id(), r.kem());
            if to.is_empty() || to.contains(&i) {
                assert_eq!(got.unwrap(), expected, "{name} for recipient {i}");
            } else {
                assert_eq!(got.unwrap_err(), EnvelopeError::NotForMe, "{name} for {i}");
            }
        }
        if !to.is_empty() {
            assert_eq!(
                p.message(outsider.node_id(), outsider.kem()).unwrap_err(),
                EnvelopeError::NotForMe
            );
            // A recipient's secret used under another recipient's id does not open it.
            let err = p.message(rs[to[0]].node_id(), outsider.kem()).unwrap_err();
            assert!(matches!(err, EnvelopeError::Decrypt(_)), "{err:?}");
        }
    }
}

/// Parses, verifies with the sender's keys and opens as the first recipient: `Ok` only when
/// every check passes.
fn accept(bytes: &[u8]) -> Result<Message, EnvelopeError> {
    let s = sender();
    let r = &recipients()[0];
    let p = envelope::parse(bytes, MAX_ENVELOPE_BYTES)?;
    if p.header.sender != *s.node_id() {
        return Err(EnvelopeError::BadSignature("unknown sender".into()));
    }
    p.verify(&s.public().signing)?;
    p.message(r.node_id(), r.kem())
}

#[test]
fn every_single_byte_flip_is_rejected() {
    for name in ["plain", "sealed_to_first_recipient"] {
        let good = envelope_bytes(name);
        assert!(accept(&good).is_ok());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(
                accept(&bad).is_err(),
                "{name}: flipping byte {i} was accepted"
            );
        }
        // Truncation and extension are rejected too.
        assert!(accept(&good[..good.len() - 1]).is_err());
        let mut longer = good.clone();
        longer.push(0);
        assert!(accept(&longer).is_err());
    }
}

fn resign_with(bytes: &[u8], signer: &Identity) -> Vec<u8> {
    let signed = &bytes[..bytes.len() - crabnet_core::crypto::DUAL_SIGNATURE_LEN];
    let sig = signer
        .signing()
        .sign(signed, envelope::SIGNATURE_CONTEXT, [7; 32])
        .unwrap();
    let mut out = signed.to_vec();
    out.extend_from_slice(&sig.to_bytes());
    out
}

#[test]
fn signatures_from_other_keys_and_half_signatures_are_rejected() {
    let good = envelope_bytes("plain");
    let s = sender();
    let mallory = identity(0x66);
    // Signed completely by other keys.
    let forged = resign_with(&good, &mallory);
    let err = accept(&forged).unwrap_err();
    assert!(matches!(err, EnvelopeError::BadSignature(_)), "{err:?}");
    // Each signature alone is not enough: take one half from the real signature and the
    // other from Mallory's signature over the same bytes.
    let split = good.len() - crabnet_core::crypto::DUAL_SIGNATURE_LEN + 64;
    let mut ed_only = good[..split].to_vec();
    ed_only.extend_from_slice(&forged[split..]);
    let err = accept(&ed_only).unwrap_err().to_string();
    assert!(err.contains("ML-DSA"), "{err}");
    let mut dsa_only = forged[..split].to_vec();
    dsa_only.extend_from_slice(&good[split..]);
    let err = accept(&dsa_only).unwrap_err().to_string();
    assert!(err.contains("Ed25519"), "{err}");
    // Re-signing by the real sender verifies (the check above is not vacuous).
    assert!(accept(&resign_with(&good, &s)).is_ok());
}

#[test]
fn tampered_sealed_parts_fail_cleanly_even_when_validly_signed() {
    let good = envelope_bytes("sealed_to_first_recipient");
    let s = sender();
    let payload = envelope::HEADER_LEN;
    // nonce, ephemeral key, an ML-KEM ciphertext byte, a wrapped-key byte, a ciphertext byte
    let entry = payload + 12 + 32 + 2;
    let spots = [
        ("nonce", payload + 3),
        ("ephemeral key", payload + 12 + 5),
        ("recipient id", entry + 1),
        ("ML-KEM ciphertext", entry + 32 + 100),
        ("wrapped key", entry + 32 + 1088 + 3),
        ("ciphertext", entry + envelope::RECIPIENT_ENTRY_LEN + 2),
    ];
    for (what, at) in spots {
        let mut bad = good.clone();
        bad[at] ^= 0x80;
        let bad = resign_with(&bad, &s);
        let err = accept(&bad).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Decrypt(_) | EnvelopeError::NotForMe),
            "{what}: {err:?}"
        );
    }
}

#[test]
fn oversized_envelopes_are_refused_when_built_and_when_received() {
    let s = sender();
    let mut m = message(s.node_id());
    if let Body::SeedCreated(seed) = &mut m.body {
        seed.description = "x".repeat(4000);
    }
    let err =
        envelope::message_envelope(&s, &m, TTL, &[], 4096, &mut envelope::os_rng).unwrap_err();
    assert!(matches!(err, EnvelopeError::Oversized { .. }), "{err:?}");
    let bytes =
        envelope::message_envelope(&s, &m, TTL, &[], MAX_ENVELOPE_BYTES, &mut envelope::os_rng)
            .unwrap();
    let err = envelope::parse(&bytes, 4096).unwrap_err();
    assert!(matches!(err, EnvelopeError::Oversized { .. }), "{err:?}");
}

#[test]
fn a_hello_must_be_plain_and_domain_payloads_must_match_their_kind() {
    let s = sender();
    let header = Header {
        kind: Kind::NodeHello,
        sealed: false,
        sender: s.node_id().clone(),
        message_id: MessageId::from_bytes([1; 16]),
        timestamp: 1,
        ttl_secs: 60,
        lamport: 0,
    };
    // A hello envelope whose payload is a domain body does not decode as a hello.
    let body = envelope::encode_body(&message(s.node_id()).body);
    let plain = |header: &Header| {
        envelope::build(
            &s,
            header,
            &body,
            &[],
            MAX_ENVELOPE_BYTES,
            &mut envelope::os_rng,
        )
        .unwrap()
    };
    let bytes = plain(&header);
    let p = envelope::parse(&bytes, MAX_ENVELOPE_BYTES).unwrap();
    assert!(matches!(p.hello(), Err(EnvelopeError::Malformed(_))));
    assert!(matches!(
        p.message(s.node_id(), s.kem()),
        Err(EnvelopeError::Malformed(_))
    ));
    // A bid_placed header around a seed_created body is malformed.
    let header = Header {
        kind: Kind::Domain(crabnet_core::model::MessageKind::BidPlaced),
        ..header
    };
    let bytes = plain(&header);
    let p = envelope::parse(&bytes, MAX_ENVELOPE_BYTES).unwrap();
    let err = p.message(s.node_id(), s.kem()).unwrap_err().to_string();
    assert!(err.contains("header says"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let s = sender();
        if let Ok(p) = envelope::parse(&bytes, MAX_ENVELOPE_BYTES) {
            let _ = p.verify(&s.public().signing);
            let _ = p.hello();
            let _ = p.recipients();
            let _ = p.message(s.node_id(), s.kem());
        }
    }

    #[test]
    fn mutated_envelopes_never_panic_and_are_never_accepted(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = envelope_bytes("sealed_to_first_recipient");
        let good = bytes.clone();
        for (i, v) in edits {
            let at = i.index(bytes.len());
            bytes[at] = v;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let res = accept(&bytes);
        prop_assert!(res.is_err() || bytes == good);
    }
}
