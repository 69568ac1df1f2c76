//! Envelopes: the signed (and optionally encrypted) wire form of every message. This module is
//! the trust boundary; `docs/PROTOCOL.md` section 2 describes the format byte by byte.
//!
//! ```text
//! offset  size  field
//!      0     3  magic "CRB"
//!      3     1  version (1)
//!      4     1  kind (0 node_hello, 1 seed_created, 2 bid_placed, 3 bidding_closed,
//!               4 seed_cancelled, 5 seed_claimed, 6 result_reported, 7 seed_settled,
//!               8 sync_digest, 9 sync_batch, 10 revocations, 11 key_rotations,
//!               12 sync_range, 13 sync_want, 20 seed_reassigned, 21 seed_failed)
//!      5     1  flags (bit 0: payload sealed to recipients; other bits 0)
//!      6    32  sender node id
//!     38    16  message id
//!     54     8  timestamp, Unix ms, big-endian
//!     62     4  ttl, seconds, big-endian
//!     66     8  Lamport counter, big-endian
//!     74     4  payload length N, big-endian
//!     78     N  payload: CBOR body, or the sealed form of it
//!   78+N    64  Ed25519 signature
//!  142+N  2420  ML-DSA-44 signature
//! ```
//!
//! Both signatures cover bytes `0..78+N` exactly as sent, with the context
//! `crabnet/v1/envelope`; a receiver verifies the bytes it received before it looks at the
//! payload.

use serde::{Deserialize, Serialize};

use crate::crypto::{
    self, DUAL_SIGNATURE_LEN, DualSignature, KemPublic, KemSecret, ML_KEM_768_CIPHERTEXT_LEN,
    NONCE_LEN, RecipientEntry, Sealed, SigningPublic, WRAPPED_KEY_LEN, X25519_PUBLIC_KEY_LEN,
};
use crate::identity::Identity;
use crate::model::{Body, Message, MessageId, MessageKind, Millis, NodeId};

/// The four magic bytes' first three: identifies a Crabnet envelope.
pub const MAGIC: &[u8; 3] = b"CRB";
/// The envelope format version this build writes and reads.
pub const VERSION: u8 = 1;
/// Signature context (domain separation) for envelopes.
pub const SIGNATURE_CONTEXT: &[u8] = b"crabnet/v1/envelope";
/// Size of the fixed header, up to and including the payload length.
pub const HEADER_LEN: usize = 78;
/// Bytes an envelope adds around its payload (header and both signatures).
pub const OVERHEAD: usize = HEADER_LEN + DUAL_SIGNATURE_LEN;
/// Largest envelope any transport may carry (1 MiB); transports may have lower limits.
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;
/// Size of one recipient entry in a sealed payload.
pub const RECIPIENT_ENTRY_LEN: usize = 32 + ML_KEM_768_CIPHERTEXT_LEN + WRAPPED_KEY_LEN;
const AAD_LEN: usize = 74;
const FLAG_SEALED: u8 = 1;

/// What an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A node announces its keys.
    NodeHello,
    /// A node describes what it holds (sync).
    SyncDigest,
    /// Stored envelopes sent verbatim to a peer that lacks them (sync).
    SyncBatch,
    /// Revocations (trust policy), sent with hellos.
    Revocations,
    /// Key rotation statements ([`crate::rotation`]), sent with hellos.
    KeyRotations,
    /// One round of range-based set reconciliation (sync, [`crate::sync::range`]).
    SyncRange,
    /// Message ids a node asks a peer for after reconciliation (sync).
    SyncWant,
    /// A domain message.
    Domain(MessageKind),
}

impl Kind {
    /// The kind's byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            Kind::NodeHello => 0,
            Kind::SyncDigest => 8,
            Kind::SyncBatch => 9,
            Kind::Revocations => 10,
            Kind::KeyRotations => 11,
            Kind::SyncRange => 12,
            Kind::SyncWant => 13,
            Kind::Domain(k) => match k {
                MessageKind::SeedCreated => 1,
                MessageKind::BidPlaced => 2,
                MessageKind::BiddingClosed => 3,
                MessageKind::SeedCancelled => 4,
                MessageKind::SeedClaimed => 5,
                MessageKind::ResultReported => 6,
                MessageKind::SeedSettled => 7,
                MessageKind::SeedReassigned => 20,
                MessageKind::SeedFailed => 21,
                MessageKind::SeedEscalated => 22,
            },
        }
    }

    /// The kind for a wire byte.
    pub fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            0 => Kind::NodeHello,
            1 => Kind::Domain(MessageKind::SeedCreated),
            2 => Kind::Domain(MessageKind::BidPlaced),
            3 => Kind::Domain(MessageKind::BiddingClosed),
            4 => Kind::Domain(MessageKind::SeedCancelled),
            5 => Kind::Domain(MessageKind::SeedClaimed),
            6 => Kind::Domain(MessageKind::ResultReported),
            7 => Kind::Domain(MessageKind::SeedSettled),
            8 => Kind::SyncDigest,
            9 => Kind::SyncBatch,
            10 => Kind::Revocations,
            11 => Kind::KeyRotations,
            12 => Kind::SyncRange,
            13 => Kind::SyncWant,
            20 => Kind::Domain(MessageKind::SeedReassigned),
            21 => Kind::Domain(MessageKind::SeedFailed),
            22 => Kind::Domain(MessageKind::SeedEscalated),
            _ => return None,
        })
    }

    /// The kind's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::NodeHello => "node_hello",
            Kind::SyncDigest => "sync_digest",
            Kind::SyncBatch => "sync_batch",
            Kind::Revocations => "revocations",
            Kind::KeyRotations => "key_rotations",
            Kind::SyncRange => "sync_range",
            Kind::SyncWant => "sync_want",
            Kind::Domain(k) => k.as_str(),
        }
    }
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Larger than the limit.
    #[error("envelope of {size} bytes exceeds the limit of {limit} bytes")]
    Oversized {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a well-formed envelope.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// A signature does not verify.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// The payload is sealed to other nodes.
    #[error("envelope is addressed to other nodes")]
    NotForMe,
    /// The payload could not be decrypted.
    #[error("cannot decrypt envelope: {0}")]
    Decrypt(String),
}

fn malformed(why: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Malformed(why.into())
}

/// The fixed header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// What the envelope carries.
    pub kind: Kind,
    /// Whether the payload is sealed to recipients.
    pub sealed: bool,
    /// The sending node.
    pub sender: NodeId,
    /// The message id.
    pub message_id: MessageId,
    /// The sender's clock (Unix ms).
    pub timestamp: Millis,
    /// How long the envelope is fresh, in seconds after `timestamp`.
    pub ttl_secs: u32,
    /// The sender's Lamport counter.
    pub lamport: u64,
}

impl Header {
    fn write_aad(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.kind.code());
        out.push(if self.sealed { FLAG_SEALED } else { 0 });
        out.extend_from_slice(&hex::decode(self.sender.as_str()).expect("ids are hex"));
        out.extend_from_slice(&hex::decode(self.message_id.as_str()).expect("ids are hex"));
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ttl_secs.to_be_bytes());
        out.extend_from_slice(&self.lamport.to_be_bytes());
    }
}

/// A node's announcement of its keys, name and addresses (the payload of `node_hello`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Human-readable name.
    pub name: String,
    /// Transport addresses where the node listens.
    pub addresses: Vec<String>,
    /// Key epoch.
    pub key_epoch: u32,
    /// Ed25519 + ML-DSA-44 public keys ([`crypto::SigningPublic::to_bytes`]).
    #[serde(with = "serde_bytes_vec")]
    pub signing_public: Vec<u8>,
    /// X25519 + ML-KEM-768 public keys ([`crypto::KemPublic::to_bytes`]).
    #[serde(with = "serde_bytes_vec")]
    pub kem_public: Vec<u8>,
    /// The node's membership certificate ([`crate::trust::Certificate`]), when it has one;
    /// left out of the CBOR map when absent.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    pub certificate: Option<Vec<u8>>,
    /// The node's key rotation chain ([`crate::rotation::Rotation`] statements, oldest first)
    /// when its key epoch is above 1; left out of the CBOR map when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotations: Vec<serde_bytes::ByteBuf>,
}

/// Serializes `Vec<u8>` as a CBOR byte string rather than an array of integers.
mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// A structurally valid envelope whose signatures are not verified yet.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The header.
    pub header: Header,
    frame: &'a [u8],
    signed: &'a [u8],
    payload: &'a [u8],
    signature: DualSignature,
}

/// Splits an envelope into its parts, checking sizes and structure only.
pub fn parse(bytes: &[u8], limit: usize) -> Result<Parsed<'_>, EnvelopeError> {
    let limit = limit.min(MAX_ENVELOPE_BYTES);
    if bytes.len() > limit {
        return Err(EnvelopeError::Oversized {
            size: bytes.len(),
            limit,
        });
    }
    if bytes.len() < OVERHEAD {
        return Err(malformed(format!(
            "{} bytes is shorter than the {OVERHEAD}-byte minimum",
            bytes.len()
        )));
    }
    if &bytes[0..3] != MAGIC {
        return Err(malformed("bad magic"));
    }
    if bytes[3] != VERSION {
        return Err(malformed(format!("unsupported version {}", bytes[3])));
    }
    let kind =
        Kind::from_code(bytes[4]).ok_or_else(|| malformed(format!("unknown kind {}", bytes[4])))?;
    let flags = bytes[5];
    if flags & !FLAG_SEALED != 0 {
        return Err(malformed(format!("unknown flags {flags:#04x}")));
    }
    let be64 = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let be32 = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let sender = NodeId::from_bytes(bytes[6..38].try_into().expect("32 bytes"));
    let message_id = MessageId::from_bytes(bytes[38..54].try_into().expect("16 bytes"));
    let len = be32(74) as usize;
    if bytes.len() != OVERHEAD + len {
        return Err(malformed(format!(
            "payload length {len} does not match the envelope size {}",
            bytes.len()
        )));
    }
    let signed = &bytes[..HEADER_LEN + len];
    let signature = DualSignature::from_bytes(&bytes[HEADER_LEN + len..])
        .map_err(|e| malformed(format!("signature field: {e}")))?;
    Ok(Parsed {
        frame: bytes,
        header: Header {
            kind,
            sealed: flags & FLAG_SEALED != 0,
            sender,
            message_id,
            timestamp: be64(54),
            ttl_secs: be32(62),
            lamport: be64(66),
        },
        signed,
        payload: &bytes[HEADER_LEN..HEADER_LEN + len],
        signature,
    })
}

impl<'a> Parsed<'a> {
    /// The whole envelope, as received.
    pub fn frame(&self) -> &'a [u8] {
        self.frame
    }

    /// The payload bytes as received (sealed or not), covered by the signatures.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Verifies both signatures over the received bytes with the sender's keys.
    pub fn verify(&self, key: &SigningPublic) -> Result<(), EnvelopeError> {
        key.verify(self.signed, SIGNATURE_CONTEXT, &self.signature)
            .map_err(|e| EnvelopeError::BadSignature(e.to_string()))
    }

    /// The hello payload of a `node_hello` envelope (never sealed).
    pub fn hello(&self) -> Result<Hello, EnvelopeError> {
        self.plain(Kind::NodeHello)
    }

    /// The CBOR payload of a plain (never sealed) envelope of `kind`: `node_hello`,
    /// `sync_digest` ([`crate::sync::Digest`]) or `sync_batch` ([`crate::sync::Batch`]).
    pub fn plain<T: serde::de::DeserializeOwned>(&self, kind: Kind) -> Result<T, EnvelopeError> {
        if self.header.kind != kind || self.header.sealed {
            return Err(malformed(format!("not a plain {} envelope", kind.name())));
        }
        ciborium::from_reader(self.payload)
            .map_err(|e| malformed(format!("{} payload: {e}", kind.name())))
    }

    /// The recipients of a sealed payload (empty for a plain one).
    pub fn recipients(&self) -> Result<Vec<NodeId>, EnvelopeError> {
        if !self.header.sealed {
            return Ok(Vec::new());
        }
        Ok(decode_sealed(self.payload)?
            .recipients
            .iter()
            .map(|r| NodeId::from_bytes(r.id.as_slice().try_into().expect("32-byte ids")))
            .collect())
    }

    /// The domain message inside, decrypting a sealed payload as `me`.
    pub fn message(&self, me: &NodeId, kem: &KemSecret) -> Result<Message, EnvelopeError> {
        let Kind::Domain(kind) = self.header.kind else {
            return Err(malformed(format!(
                "{} carries no domain message",
                self.header.kind.name()
            )));
        };
        let plain;
        let payload = if self.header.sealed {
            let sealed = decode_sealed(self.payload)?;
            let my_id = hex::decode(me.as_str()).expect("ids are hex");
            plain = crypto::open(&sealed, &self.signed[..AAD_LEN], &my_id, kem).map_err(
                |e| match e {
                    crypto::CryptoError::NotARecipient => EnvelopeError::NotForMe,
                    e => EnvelopeError::Decrypt(e.to_string()),
                },
            )?;
            &plain[..]
        } else {
            self.payload
        };
        let body: Body =
            ciborium::from_reader(payload).map_err(|e| malformed(format!("payload: {e}")))?;
        if body.kind() != kind {
            return Err(malformed(format!(
                "payload is {} but the header says {}",
                body.kind(),
                kind
            )));
        }
        Ok(Message {
            id: self.header.message_id.clone(),
            sender: self.header.sender.clone(),
            lamport: self.header.lamport,
            timestamp: self.header.timestamp,
            body,
        })
    }
}

fn decode_sealed(p: &[u8]) -> Result<Sealed, EnvelopeError> {
    const FIXED: usize = NONCE_LEN + X25519_PUBLIC_KEY_LEN + 2;
    if p.len() < FIXED {
        return Err(malformed("sealed payload too short"));
    }
    let nonce: [u8; NONCE_LEN] = p[..NONCE_LEN].try_into().expect("nonce");
    let ephemeral_x25519: [u8; 32] = p[NONCE_LEN..NONCE_LEN + 32].try_into().expect("key");
    let count = u16::from_be_bytes([p[FIXED - 2], p[FIXED - 1]]) as usize;
    if count == 0 {
        return Err(malformed("sealed payload without recipients"));
    }
    let entries_end = FIXED + count * RECIPIENT_ENTRY_LEN;
    if p.len() < entries_end + crypto::AEAD_TAG_LEN {
        return Err(malformed("sealed payload shorter than its recipient list"));
    }
    let recipients = p[FIXED..entries_end]
        .chunks_exact(RECIPIENT_ENTRY_LEN)
        .map(|e| RecipientEntry {
            id: e[..32].to_vec(),
            ml_kem_ciphertext: e[32..32 + ML_KEM_768_CIPHERTEXT_LEN].to_vec(),
            wrapped_key: e[32 + ML_KEM_768_CIPHERTEXT_LEN..].to_vec(),
        })
        .collect();
    Ok(Sealed {
        nonce,
        ephemeral_x25519,
        ciphertext: p[entries_end..].to_vec(),
        recipients,
    })
}

fn encode_sealed(s: &Sealed, out: &mut Vec<u8>) {
    out.extend_from_slice(&s.nonce);
    out.extend_from_slice(&s.ephemeral_x25519);
    out.extend_from_slice(&(s.recipients.len() as u16).to_be_bytes());
    for r in &s.recipients {
        out.extend_from_slice(&r.id);
        out.extend_from_slice(&r.ml_kem_ciphertext);
        out.extend_from_slice(&r.wrapped_key);
    }
    out.extend_from_slice(&s.ciphertext);
}

/// Randomness for building envelopes: the OS source, or a fixed stream for test vectors.
pub type Rng<'a> = &'a mut dyn FnMut(&mut [u8]);

/// Builds and signs an envelope. `recipients` empty means a plain payload; otherwise the
/// payload is sealed to each `(node id, keys)`. Fails when the result would exceed `limit`.
pub fn build(
    identity: &Identity,
    header: &Header,
    payload: &[u8],
    recipients: &[(&NodeId, &KemPublic)],
    limit: usize,
    rng: Rng<'_>,
) -> Result<Vec<u8>, EnvelopeError> {
    if header.sender != *identity.node_id() {
        return Err(malformed("the sender must be the signing identity"));
    }
    if header.sealed == recipients.is_empty() {
        return Err(malformed("the sealed flag must match the recipient list"));
    }
    if recipients.len() > u16::MAX as usize {
        return Err(malformed("too many recipients"));
    }
    let limit = limit.min(MAX_ENVELOPE_BYTES);
    let estimate = OVERHEAD
        + payload.len()
        + if recipients.is_empty() {
            0
        } else {
            NONCE_LEN + 34 + crypto::AEAD_TAG_LEN + recipients.len() * RECIPIENT_ENTRY_LEN
        };
    if estimate > limit {
        return Err(EnvelopeError::Oversized {
            size: estimate,
            limit,
        });
    }
    let mut out = Vec::with_capacity(estimate);
    header.write_aad(&mut out);
    out.extend_from_slice(&[0; 4]);
    if recipients.is_empty() {
        out.extend_from_slice(payload);
    } else {
        let ids: Vec<Vec<u8>> = recipients
            .iter()
            .map(|(id, _)| hex::decode(id.as_str()).expect("ids are hex"))
            .collect();
        let list: Vec<(&[u8], &KemPublic)> = ids
            .iter()
            .zip(recipients)
            .map(|(id, (_, k))| (id.as_slice(), *k))
            .collect();
        let sealed = crypto::seal(payload, &out[..AAD_LEN], &list, &mut |b: &mut [u8]| rng(b))
            .map_err(|e| malformed(format!("cannot seal: {e}")))?;
        encode_sealed(&sealed, &mut out);
    }
    let len = (out.len() - HEADER_LEN) as u32;
    out[AAD_LEN..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    let mut randomness = [0u8; 32];
    rng(&mut randomness);
    let sig = identity
        .signing()
        .sign(&out, SIGNATURE_CONTEXT, randomness)
        .map_err(|e| malformed(format!("cannot sign: {e}")))?;
    out.extend_from_slice(&sig.to_bytes());
    debug_assert_eq!(out.len(), estimate);
    Ok(out)
}

/// Randomness from the operating system.
pub fn os_rng(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system random source failed");
}

/// Encodes a domain body as its CBOR payload.
pub fn encode_body(body: &Body) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(body, &mut out).expect("bodies encode");
    out
}

/// Encodes a hello (or another plain payload) as CBOR.
pub fn encode_hello<T: Serialize>(hello: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(hello, &mut out).expect("payloads encode");
    out
}

/// Builds the signed envelope of a domain message, sealed to `recipients` when not empty.
pub fn message_envelope(
    identity: &Identity,
    message: &Message,
    ttl_secs: u32,
    recipients: &[(&NodeId, &KemPublic)],
    limit: usize,
    rng: Rng<'_>,
) -> Result<Vec<u8>, EnvelopeError> {
    let header = Header {
        kind: Kind::Domain(message.kind()),
        sealed: !recipients.is_empty(),
        sender: message.sender.clone(),
        message_id: message.id.clone(),
        timestamp: message.timestamp,
        ttl_secs,
        lamport: message.lamport,
    };
    build(
        identity,
        &header,
        &encode_body(&message.body),
        recipients,
        limit,
        rng,
    )
}
