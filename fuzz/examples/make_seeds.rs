//! Writes the seed corpus of `envelope_decode` (deterministic: the same bytes every run).
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example make_seeds -- fuzz/seeds/envelope_decode
//! ```

use std::path::PathBuf;

use crabnet_core::crypto::KemPublic;
use crabnet_core::envelope::{self, Header, Hello, Kind, MAX_ENVELOPE_BYTES};
use crabnet_core::identity::Identity;
use crabnet_core::model::{
    Award, Bid, BidId, Body, Message, MessageId, NodeId, Seed, SeedId, Settlement,
    SettlementOutcome,
};

/// A fixed byte stream (xorshift64*), so the seeds are reproducible. Never use outside tests.
fn fixed_rng() -> impl FnMut(&mut [u8]) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    move |buf: &mut [u8]| {
        for b in buf {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            *b = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
        }
    }
}

fn message(sender: &NodeId, n: u8, body: Body) -> Message {
    Message {
        id: MessageId::from_bytes([n; 16]),
        sender: sender.clone(),
        lamport: u64::from(n),
        timestamp: 1_700_000_000_000 + u64::from(n),
        body,
    }
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds/envelope_decode".into()),
    );
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    let sender = crabnet_fuzz::sender();
    let me = crabnet_fuzz::receiver();
    let other: Identity = crabnet_fuzz::identity(3);
    let from = sender.node_id();
    let seed_id = SeedId::from_bytes([5; 16]);
    let mut rng = fixed_rng();
    let write = |name: &str, bytes: Vec<u8>| {
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    };

    let hello = Hello {
        name: "sender".into(),
        addresses: vec!["127.0.0.1:7946".into()],
        key_epoch: 1,
        signing_public: sender.public().signing.to_bytes(),
        kem_public: sender.public().kem.to_bytes(),
        certificate: None,
        rotations: Vec::new(),
    };
    let header = Header {
        kind: Kind::NodeHello,
        sealed: false,
        sender: from.clone(),
        message_id: MessageId::from_bytes([1; 16]),
        timestamp: 1_700_000_000_000,
        ttl_secs: 120,
        lamport: 0,
    };
    let bytes = envelope::build(
        &sender,
        &header,
        &envelope::encode_hello(&hello),
        &[],
        MAX_ENVELOPE_BYTES,
        &mut rng,
    )
    .expect("hello");
    write("hello", bytes);

    let bodies = [
        Body::SeedCreated(Seed {
            id: seed_id.clone(),
            publisher: from.clone(),
            command: "echo hi".into(),
            description: "a seed".into(),
            min_price: 1,
            max_price: 50,
            bid_window_secs: 60,
            max_bids: 3,
            timeout_secs: 30,
            created_at: 1_700_000_000_002,
            audience: vec![me.node_id().clone()],
            network: false,
            isolation: crabnet_core::model::SandboxLevel::Full,
            rules: crabnet_core::model::rules::V2,
            deadlines: Some(crabnet_core::model::Deadlines::default()),
            replication: None,
        }),
        Body::BidPlaced(Bid {
            id: BidId::from_bytes([6; 16]),
            seed_id: seed_id.clone(),
            bidder: from.clone(),
            price: 20,
        }),
        Body::BiddingClosed(Award {
            seed_id: seed_id.clone(),
            considered: vec![BidId::from_bytes([6; 16])],
            winner: Some(BidId::from_bytes([6; 16])),
            winners: Vec::new(),
        }),
        Body::SeedSettled(Settlement {
            seed_id: seed_id.clone(),
            outcome: SettlementOutcome::Accepted,
            amount: 20,
            note: "ok".into(),
            paid: Vec::new(),
        }),
    ];
    for (n, body) in bodies.into_iter().enumerate() {
        let msg = message(from, n as u8 + 2, body);
        let name = msg.kind().as_str();
        let plain =
            envelope::message_envelope(&sender, &msg, 60, &[], MAX_ENVELOPE_BYTES, &mut rng)
                .expect("plain envelope");
        write(&format!("plain_{name}"), plain);
        if n == 0 {
            let to = |ids: &[&Identity]| -> Vec<(NodeId, KemPublic)> {
                ids.iter()
                    .map(|i| (i.node_id().clone(), i.public().kem.clone()))
                    .collect()
            };
            for (label, recipients) in [
                ("me", to(&[&me])),
                ("other_and_me", to(&[&other, &me])),
                ("other", to(&[&other])),
            ] {
                let list: Vec<(&NodeId, &KemPublic)> =
                    recipients.iter().map(|(id, k)| (id, k)).collect();
                let sealed = envelope::message_envelope(
                    &sender,
                    &msg,
                    60,
                    &list,
                    MAX_ENVELOPE_BYTES,
                    &mut rng,
                )
                .expect("sealed envelope");
                write(&format!("sealed_{name}_to_{label}"), sealed);
            }
        }
    }
    println!("seeds written to {}", dir.display());
}
