//! The trust policy: which nodes a node admits (docs/PROTOCOL.md section 2f).
//!
//! * `[trust] deny = [..]`: these node ids are never admitted.
//! * `[trust] allow = [..]`: when not empty, only these node ids are admitted (a node both
//!   allowed and denied is denied).
//! * `[trust] mode = "anchored"`: a node is admitted only with a membership [`Certificate`]
//!   dual-signed by one of the configured trust anchors (`trust.anchors`), carried in its hello;
//!   its roles say which messages it may author.
//! * [`Revocation`]s, signed by an anchor or by a node about itself, withdraw a node or a
//!   certificate from a point in time on; they are persisted and travel in `revocations`
//!   envelopes sent with every hello. What is kept of forgotten nodes is bounded
//!   (`Trust::prune_revocations`): self-revocations of strangers are capped
//!   (`trust.max_stranger_revocations`) and not sent on, and certificates expire
//!   (`trust.certificate_grace_secs` after their validity).
//!
//! The receive path asks `Trust::check_frame` about every frame right after its header is
//! parsed, before any signature check or database access, and `Trust::admit_hello` about a
//! hello once its signatures verified; refusals are
//! [`RejectReason::NotAdmitted`](crate::monitor::RejectReason::NotAdmitted).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::{
    DUAL_SIGNATURE_LEN, DualSignature, KEM_PUBLIC_LEN, SIGNING_PUBLIC_LEN, SigningPublic,
    SigningSecret, SigningSeeds,
};
use crate::envelope::{Header, Kind};
use crate::error::{Error, ErrorKind, Result};
use crate::identity::{self, Identity, PublicIdentity};
use crate::lock;
use crate::model::{MessageKind, Millis, NodeId};
use crate::store::Store;

pub(crate) mod config;
pub use config::{DEFAULT_ROTATION_GRACE_SECS, MAX_ROTATION_GRACE_SECS, TrustConfig, TrustMode};

/// Signature context (domain separation) of membership certificates.
pub const CERTIFICATE_CONTEXT: &[u8] = b"crabnet/v1/certificate";
/// Signature context (domain separation) of revocations.
pub const REVOCATION_CONTEXT: &[u8] = b"crabnet/v1/revocation";
/// Domain-separation label of the anchor id hash.
pub const ANCHOR_ID_LABEL: &[u8] = b"crabnet/v1/anchor-id";
/// Version byte of certificates and revocations.
pub const FORMAT_VERSION: u8 = 1;
/// Signed part of a certificate (everything before the signatures).
const CERT_SIGNED_LEN: usize =
    1 + 32 + 16 + 32 + 4 + 8 + 8 + 1 + SIGNING_PUBLIC_LEN + KEM_PUBLIC_LEN;
/// Size of an encoded certificate.
pub const CERTIFICATE_LEN: usize = CERT_SIGNED_LEN + DUAL_SIGNATURE_LEN;
/// Signed part of a revocation.
const REV_SIGNED_LEN: usize = 1 + 1 + SIGNING_PUBLIC_LEN + 1 + 32 + 8 + 8;
/// Size of an encoded revocation.
pub const REVOCATION_LEN: usize = REV_SIGNED_LEN + DUAL_SIGNATURE_LEN;
const ANCHOR_MAGIC: &[u8] = b"crabnet-anchor-v1\n";

/// The 32 bytes of a node id.
fn id_bytes(id: &NodeId) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(id.as_str(), &mut out).expect("node ids are 64 hex digits");
    out
}

// ---------------------------------------------------------------------------------------------
// Formats
// ---------------------------------------------------------------------------------------------

/// Why a certificate, revocation or anchor key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// Not a well-formed certificate or revocation.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Why it is malformed.
        why: String,
    },
    /// Signed by an anchor this node does not trust.
    #[error("signed by an anchor that is not in trust.anchors ({0})")]
    UnknownAnchor(String),
    /// A signature does not verify.
    #[error("bad signature: {0}")]
    BadSignature(String),
}

crate::error::error_from!(TrustError => Validation);

fn malformed(what: &'static str, why: impl Into<String>) -> TrustError {
    TrustError::Malformed {
        what,
        why: why.into(),
    }
}

/// An anchor id: `SHA-256("crabnet/v1/anchor-id" || Ed25519 key || ML-DSA-44 key)`.
pub fn anchor_id(key: &SigningPublic) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(ANCHOR_ID_LABEL);
    h.update(key.ed25519());
    h.update(key.ml_dsa());
    h.finalize().into()
}

/// What a certified node may author. Hellos, sync and revocation envelopes need no role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    /// `seed_created`, `bidding_closed`, `seed_cancelled`, `seed_settled`.
    pub publish: bool,
    /// `bid_placed`, `seed_claimed`, `result_reported`.
    pub run: bool,
}

impl Roles {
    /// Both roles.
    pub const ALL: Roles = Roles {
        publish: true,
        run: true,
    };

    fn bits(self) -> u8 {
        u8::from(self.publish) | (u8::from(self.run) << 1)
    }

    fn from_bits(bits: u8) -> Option<Roles> {
        (bits & !3 == 0).then_some(Roles {
            publish: bits & 1 != 0,
            run: bits & 2 != 0,
        })
    }

    /// Parses a role name: `publish` or `run`.
    pub fn with(mut self, name: &str) -> Result<Roles> {
        match name {
            "publish" => self.publish = true,
            "run" => self.run = true,
            other => {
                return Err(Error::new(
                    ErrorKind::Validation,
                    format!("unknown role {other:?} (roles: publish, run)"),
                ));
            }
        }
        Ok(self)
    }

    /// Whether these roles allow authoring `kind`.
    pub fn allow(self, kind: MessageKind) -> bool {
        match kind {
            MessageKind::SeedCreated
            | MessageKind::BiddingClosed
            | MessageKind::SeedCancelled
            | MessageKind::SeedReassigned
            | MessageKind::SeedFailed
            | MessageKind::SeedEscalated
            | MessageKind::SeedSettled => self.publish,
            MessageKind::BidPlaced | MessageKind::SeedClaimed | MessageKind::ResultReported => {
                self.run
            }
        }
    }
}

/// A membership certificate: an anchor vouches for a node's keys, for a time, in some roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The signing anchor's id ([`anchor_id`]).
    pub anchor: [u8; 32],
    /// Chosen by the anchor; revocations may name it.
    pub serial: [u8; 16],
    /// The node and its keys (its id derives from its signing keys).
    pub node: PublicIdentity,
    /// Valid from (Unix ms, inclusive).
    pub not_before: Millis,
    /// Valid until (Unix ms, inclusive).
    pub not_after: Millis,
    /// What the node may author.
    pub roles: Roles,
    bytes: Vec<u8>,
}

impl Certificate {
    /// The anchor signs a certificate for `node`. `ml_dsa_randomness` as in
    /// [`SigningSecret::sign`] (all zeros only for test vectors).
    pub fn sign(
        anchor: &AnchorKey,
        node: &PublicIdentity,
        serial: [u8; 16],
        not_before: Millis,
        not_after: Millis,
        roles: Roles,
        ml_dsa_randomness: [u8; 32],
    ) -> Result<Certificate> {
        if not_before > not_after {
            return Err(Error::new(
                ErrorKind::Validation,
                "a certificate's not_before must not be after its not_after",
            ));
        }
        let mut out = Vec::with_capacity(CERTIFICATE_LEN);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&anchor.id());
        out.extend_from_slice(&serial);
        out.extend_from_slice(&id_bytes(&node.node_id));
        out.extend_from_slice(&node.epoch.to_be_bytes());
        out.extend_from_slice(&not_before.to_be_bytes());
        out.extend_from_slice(&not_after.to_be_bytes());
        out.push(roles.bits());
        out.extend_from_slice(&node.signing.to_bytes());
        out.extend_from_slice(&node.kem.to_bytes());
        debug_assert_eq!(out.len(), CERT_SIGNED_LEN);
        let sig = anchor
            .secret
            .sign(&out, CERTIFICATE_CONTEXT, ml_dsa_randomness)?;
        out.extend_from_slice(&sig.to_bytes());
        Ok(Certificate::parse(&out)?)
    }

    /// Decodes a certificate, checking its structure (not its signature: see
    /// [`Certificate::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<Certificate, TrustError> {
        const WHAT: &str = "certificate";
        let mut r = Reader::versioned(bytes, WHAT, CERTIFICATE_LEN)?;
        let anchor = r.array::<32>();
        let serial = r.array::<16>();
        let node_id = NodeId::from_bytes(r.array::<32>());
        let epoch = u32::from_be_bytes(r.array());
        let not_before = u64::from_be_bytes(r.array());
        let not_after = u64::from_be_bytes(r.array());
        let roles = Roles::from_bits(r.array::<1>()[0])
            .ok_or_else(|| malformed(WHAT, "unknown role bits"))?;
        let signing = r.take(SIGNING_PUBLIC_LEN);
        let kem = r.take(KEM_PUBLIC_LEN);
        let node = PublicIdentity::from_parts(signing, kem, epoch)
            .map_err(|e| malformed(WHAT, format!("node keys: {e}")))?;
        if node.node_id != node_id {
            return Err(malformed(WHAT, "the node id does not match its keys"));
        }
        if epoch == 0 || not_before > not_after {
            return Err(malformed(WHAT, "key epoch 0, or an empty validity window"));
        }
        Ok(Certificate {
            anchor,
            serial,
            node,
            not_before,
            not_after,
            roles,
            bytes: bytes.to_vec(),
        })
    }

    /// Checks the anchor is one of `anchors` and both of its signatures verify.
    pub fn verify(&self, anchors: &[SigningPublic]) -> Result<(), TrustError> {
        let key = anchors
            .iter()
            .find(|k| anchor_id(k) == self.anchor)
            .ok_or_else(|| TrustError::UnknownAnchor(hex::encode(self.anchor)))?;
        let sig = DualSignature::from_bytes(&self.bytes[CERT_SIGNED_LEN..])
            .map_err(|e| malformed("certificate", e.to_string()))?;
        key.verify(&self.bytes[..CERT_SIGNED_LEN], CERTIFICATE_CONTEXT, &sig)
            .map_err(|e| TrustError::BadSignature(e.to_string()))
    }

    /// Whether the certificate covers time `at`.
    pub fn valid_at(&self, at: Millis) -> bool {
        self.not_before <= at && at <= self.not_after
    }

    /// The encoded certificate.
    pub fn to_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// What became of a relayed revocation ([`Trust::add_relayed_revocation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Relayed {
    /// Verified, stored and applied.
    New,
    /// Already held.
    Known,
    /// A stranger's self-revocation past its relaying node's share: not kept.
    OverShare,
}

/// What a revocation withdraws.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RevocationTarget {
    /// A node, with every key and certificate it has.
    Node(NodeId),
    /// One certificate, by serial.
    Certificate([u8; 16]),
}

/// Who signed a revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issuer {
    /// A trust anchor.
    Anchor,
    /// The revoked node itself.
    Node,
}

/// A signed statement that everything the target signs from `revoked_from` on is void.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Who signed it.
    pub issuer: Issuer,
    /// The issuer's signing keys.
    pub issuer_key: SigningPublic,
    /// What is revoked.
    pub target: RevocationTarget,
    /// Anything the target signed at or after this time (Unix ms) is rejected.
    pub revoked_from: Millis,
    /// When the revocation was issued (Unix ms).
    pub issued_at: Millis,
    bytes: Vec<u8>,
}

impl Revocation {
    /// An anchor revokes a node or a certificate.
    pub fn by_anchor(
        anchor: &AnchorKey,
        target: RevocationTarget,
        revoked_from: Millis,
        issued_at: Millis,
        ml_dsa_randomness: [u8; 32],
    ) -> Result<Revocation> {
        Self::sign(
            Issuer::Anchor,
            &anchor.secret,
            target,
            revoked_from,
            issued_at,
            ml_dsa_randomness,
        )
    }

    /// A node revokes its own keys.
    pub fn by_node(
        identity: &Identity,
        revoked_from: Millis,
        issued_at: Millis,
        ml_dsa_randomness: [u8; 32],
    ) -> Result<Revocation> {
        Self::sign(
            Issuer::Node,
            identity.signing(),
            RevocationTarget::Node(identity.node_id().clone()),
            revoked_from,
            issued_at,
            ml_dsa_randomness,
        )
    }

    fn sign(
        issuer: Issuer,
        secret: &SigningSecret,
        target: RevocationTarget,
        revoked_from: Millis,
        issued_at: Millis,
        ml_dsa_randomness: [u8; 32],
    ) -> Result<Revocation> {
        let mut out = Vec::with_capacity(REVOCATION_LEN);
        out.push(FORMAT_VERSION);
        out.push(match issuer {
            Issuer::Anchor => 0,
            Issuer::Node => 1,
        });
        out.extend_from_slice(&secret.public().to_bytes());
        match &target {
            RevocationTarget::Node(id) => {
                out.push(0);
                out.extend_from_slice(&id_bytes(id));
            }
            RevocationTarget::Certificate(serial) => {
                out.push(1);
                out.extend_from_slice(serial);
                out.extend_from_slice(&[0; 16]);
            }
        }
        out.extend_from_slice(&revoked_from.to_be_bytes());
        out.extend_from_slice(&issued_at.to_be_bytes());
        debug_assert_eq!(out.len(), REV_SIGNED_LEN);
        let sig = secret.sign(&out, REVOCATION_CONTEXT, ml_dsa_randomness)?;
        out.extend_from_slice(&sig.to_bytes());
        Ok(Revocation::parse(&out)?)
    }

    /// Decodes a revocation, checking its structure (not its signature: see
    /// [`Revocation::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<Revocation, TrustError> {
        const WHAT: &str = "revocation";
        let mut r = Reader::versioned(bytes, WHAT, REVOCATION_LEN)?;
        let issuer = match r.array::<1>()[0] {
            0 => Issuer::Anchor,
            1 => Issuer::Node,
            other => return Err(malformed(WHAT, format!("unknown issuer kind {other}"))),
        };
        let issuer_key = SigningPublic::from_bytes(r.take(SIGNING_PUBLIC_LEN))
            .map_err(|e| malformed(WHAT, format!("issuer key: {e}")))?;
        let kind = r.array::<1>()[0];
        let target_bytes = r.array::<32>();
        let target = match kind {
            0 => RevocationTarget::Node(NodeId::from_bytes(target_bytes)),
            1 if target_bytes[16..] == [0; 16] => {
                RevocationTarget::Certificate(target_bytes[..16].try_into().expect("16 bytes"))
            }
            _ => return Err(malformed(WHAT, "unknown target")),
        };
        let revoked_from = u64::from_be_bytes(r.array());
        let issued_at = u64::from_be_bytes(r.array());
        if issuer == Issuer::Node && !matches!(target, RevocationTarget::Node(_)) {
            return Err(malformed(WHAT, "a node may revoke only its own node id"));
        }
        Ok(Revocation {
            issuer,
            issuer_key,
            target,
            revoked_from,
            issued_at,
            bytes: bytes.to_vec(),
        })
    }

    /// Checks the issuer (a node revoking itself with the keys its id derives from, or one of
    /// `anchors`) and both signatures.
    pub fn verify(&self, anchors: &[SigningPublic]) -> Result<(), TrustError> {
        self.verify_with(anchors, &crate::rotation::Chains::default())
    }

    /// As [`Revocation::verify`], and a node that rotated its keys may also revoke itself
    /// with the keys of any epoch on its rotation chain in `chains`.
    pub(crate) fn verify_with(
        &self,
        anchors: &[SigningPublic],
        chains: &crate::rotation::Chains,
    ) -> Result<(), TrustError> {
        if self.issuer == Issuer::Anchor && !anchors.contains(&self.issuer_key) {
            return Err(TrustError::UnknownAnchor(hex::encode(anchor_id(
                &self.issuer_key,
            ))));
        }
        if self.issuer == Issuer::Node
            && let RevocationTarget::Node(id) = &self.target
            && crate::identity::node_id_for(&self.issuer_key) != *id
            && !chains.has_keys(id, &self.issuer_key)
        {
            return Err(malformed(
                "revocation",
                "a node may revoke only its own node id (with keys of its own)",
            ));
        }
        let sig = DualSignature::from_bytes(&self.bytes[REV_SIGNED_LEN..])
            .map_err(|e| malformed("revocation", e.to_string()))?;
        self.issuer_key
            .verify(&self.bytes[..REV_SIGNED_LEN], REVOCATION_CONTEXT, &sig)
            .map_err(|e| TrustError::BadSignature(e.to_string()))
    }

    /// `SHA-256` of the encoded revocation: its identity for deduplication.
    pub fn id(&self) -> [u8; 32] {
        Sha256::digest(&self.bytes).into()
    }

    /// The encoded revocation.
    pub fn to_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Reads fixed-size fields from a buffer whose length was checked beforehand.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A reader of the fields after the format version of `bytes`, a `what` that must be
    /// `len` bytes long and of [`FORMAT_VERSION`].
    fn versioned(bytes: &'a [u8], what: &'static str, len: usize) -> Result<Self, TrustError> {
        if bytes.len() != len {
            return Err(malformed(
                what,
                format!("{} bytes, expected {len}", bytes.len()),
            ));
        }
        if bytes[0] != FORMAT_VERSION {
            return Err(malformed(what, format!("unknown version {}", bytes[0])));
        }
        Ok(Reader(&bytes[1..]))
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        self.take(N).try_into().expect("length checked")
    }
}

/// A trust anchor's signing key pair. The secret file is `crabnet-anchor-v1\n` followed by the
/// Ed25519 seed (32 bytes) and the ML-DSA-44 seed (32 bytes), mode 0600.
pub struct AnchorKey {
    secret: SigningSecret,
}

impl std::fmt::Debug for AnchorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnchorKey")
            .field("id", &hex::encode(self.id()))
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl AnchorKey {
    /// A fresh anchor key from the operating system's random source.
    pub fn generate() -> Result<AnchorKey> {
        Ok(AnchorKey {
            secret: SigningSecret::generate()?,
        })
    }

    /// An anchor key from fixed seeds (test vectors).
    pub fn from_seeds(seeds: &SigningSeeds) -> AnchorKey {
        AnchorKey {
            secret: SigningSecret::from_seeds(seeds),
        }
    }

    /// The public key that goes into `trust.anchors`.
    pub fn public(&self) -> SigningPublic {
        self.secret.public()
    }

    /// The anchor id ([`anchor_id`]).
    pub fn id(&self) -> [u8; 32] {
        anchor_id(&self.public())
    }

    /// Writes the secret key to a new file (mode 0600); an existing file is never overwritten.
    pub fn write_new(&self, path: &Path) -> Result<()> {
        let seeds = self.secret.to_seeds();
        let mut bytes = Zeroizing::new(Vec::with_capacity(ANCHOR_MAGIC.len() + 64));
        bytes.extend_from_slice(ANCHOR_MAGIC);
        bytes.extend_from_slice(&seeds.ed25519);
        bytes.extend_from_slice(&seeds.ml_dsa);
        crate::identity::write_secret_file(path, &bytes, "anchor key file")
    }

    /// Reads a secret key file; refuses one that others can read.
    pub fn read(path: &Path) -> Result<AnchorKey> {
        const WHAT: &str = "anchor key file";
        let file = identity::open_secret_file(path, WHAT)?;
        let bytes = identity::read_secret_file(file, path, WHAT, ANCHOR_MAGIC.len() + 64)?;
        let body = bytes
            .strip_prefix(ANCHOR_MAGIC)
            .filter(|b| b.len() == 64)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    format!("{} is not an anchor key file", path.display()),
                )
            })?;
        let mut seeds = SigningSeeds {
            ed25519: [0; 32],
            ml_dsa: [0; 32],
        };
        seeds.ed25519.copy_from_slice(&body[..32]);
        seeds.ml_dsa.copy_from_slice(&body[32..]);
        Ok(AnchorKey::from_seeds(&seeds))
    }
}

/// A node's public identity as a file (`crabnet trust identity`), the input of
/// `crabnet trust sign`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// The node id.
    pub node_id: NodeId,
    /// Its key epoch.
    pub key_epoch: u32,
    /// Ed25519 + ML-DSA-44 public keys, hex.
    pub signing_public: String,
    /// X25519 + ML-KEM-768 public keys, hex.
    pub kem_public: String,
}

impl IdentityRecord {
    /// The record of `identity`.
    pub fn of(identity: &PublicIdentity) -> IdentityRecord {
        IdentityRecord {
            node_id: identity.node_id.clone(),
            key_epoch: identity.epoch,
            signing_public: hex::encode(identity.signing.to_bytes()),
            kem_public: hex::encode(identity.kem.to_bytes()),
        }
    }

    /// The identity it describes, checking the keys and that the id derives from them.
    pub fn identity(&self) -> Result<PublicIdentity> {
        let bad = |why: &str| Error::new(ErrorKind::Validation, format!("identity record: {why}"));
        let signing = hex::decode(&self.signing_public).map_err(|_| bad("signing_public"))?;
        let kem = hex::decode(&self.kem_public).map_err(|_| bad("kem_public"))?;
        let identity = PublicIdentity::from_parts(&signing, &kem, self.key_epoch)?;
        if identity.node_id != self.node_id {
            return Err(bad("the node id does not match its keys"));
        }
        Ok(identity)
    }
}

// ---------------------------------------------------------------------------------------------
// The policy at run time
// ---------------------------------------------------------------------------------------------

/// What a node knows about trust, for `crabnet trust show` and embedders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustStatus {
    /// `open` or `anchored`.
    pub mode: TrustMode,
    /// Ids of the configured anchors (hex).
    pub anchors: Vec<String>,
    /// Serial (hex) of this node's own certificate, if it has one.
    pub certificate_serial: Option<String>,
    /// Its validity window (Unix ms), if it has one.
    pub certificate_valid: Option<(Millis, Millis)>,
    /// Nodes with an accepted certificate.
    pub certified: Vec<NodeId>,
    /// Revoked nodes and the time they are revoked from.
    pub revoked_nodes: Vec<(NodeId, Millis)>,
    /// Revoked certificate serials (hex) and the time they are revoked from.
    pub revoked_certificates: Vec<(String, Millis)>,
}

#[derive(Debug, Default)]
struct State {
    chains: crate::rotation::Chains,
    stored_rotations: u64,
    certificates: HashMap<NodeId, Certificate>,
    revoked_nodes: HashMap<NodeId, Millis>,
    revoked_serials: HashMap<[u8; 16], Millis>,
    known: HashSet<[u8; 32]>,
    stored_revocations: u64,
    /// The relaying node of each stranger's self-revocation added since start (see
    /// [`Trust::add_relayed_revocation`]).
    relayed_by: HashMap<[u8; 32], NodeId>,
    /// Those of each relaying node (its share), by id, with their targets.
    relayed: HashMap<NodeId, HashMap<[u8; 32], NodeId>>,
    /// The store's [`Store::generation`] when each relaying node's share was last checked
    /// against the store (see [`Trust::add_relayed_revocation`]).
    share_checked: HashMap<NodeId, (i64, u64)>,
}

impl State {
    fn apply(&mut self, r: &Revocation) {
        if !self.known.insert(r.id()) {
            return;
        }
        match &r.target {
            RevocationTarget::Node(id) => {
                let at = self.revoked_nodes.entry(id.clone()).or_insert(Millis::MAX);
                *at = (*at).min(r.revoked_from);
            }
            RevocationTarget::Certificate(serial) => {
                let at = self.revoked_serials.entry(*serial).or_insert(Millis::MAX);
                *at = (*at).min(r.revoked_from);
            }
        }
    }

    /// Forgets which node relayed the revocation `id`.
    fn unattribute(&mut self, id: &[u8; 32]) {
        if let Some(source) = self.relayed_by.remove(id)
            && let Some(share) = self.relayed.get_mut(&source)
        {
            share.remove(id);
            if share.is_empty() {
                self.relayed.remove(&source);
                self.share_checked.remove(&source);
            }
        }
    }

    /// How many strangers' self-revocations `source` relayed that are kept and counted.
    fn share(&self, source: &NodeId) -> u64 {
        self.relayed.get(source).map_or(0, |s| s.len() as u64)
    }

    fn node_revoked_at(&self, id: &NodeId, at: Millis) -> bool {
        self.revoked_nodes.get(id).is_some_and(|&from| at >= from)
    }

    fn serial_revoked_at(&self, serial: &[u8; 16], at: Millis) -> bool {
        self.revoked_serials
            .get(serial)
            .is_some_and(|&from| at >= from)
    }
}

/// A node's trust policy at run time: the configuration, and the certificates and revocations
/// it accepted (persisted in the store, kept in memory for the checks).
#[derive(Debug)]
pub(crate) struct Trust {
    me: NodeId,
    mode: TrustMode,
    allow: HashSet<NodeId>,
    deny: HashSet<NodeId>,
    anchors: Vec<SigningPublic>,
    own_certificate: Option<Certificate>,
    state: Mutex<State>,
    rotation_grace_ms: u64,
    /// `trust.max_stranger_revocations`.
    max_stranger_revocations: u64,
    /// `trust.max_stranger_revocations_per_source`.
    max_stranger_revocations_per_source: u64,
    /// `trust.certificate_grace_secs`, in ms.
    certificate_grace_ms: u64,
}

impl Trust {
    /// The policy of the node `me` under `config`, with what `store` holds. Fails when an
    /// anchor or this node's certificate cannot be read, or the certificate is not this node's
    /// or (with anchors configured) not signed by one of them.
    pub fn load(me: &PublicIdentity, config: &TrustConfig, store: &Store) -> Result<Trust> {
        let anchors = config.anchor_keys()?;
        let mut chains = crate::rotation::Chains::default();
        for bytes in store.rotations()? {
            // Stored in epoch order per node; verified again (a damaged row ends that chain).
            if let Ok(r) = crate::rotation::Rotation::parse(&bytes) {
                let _ = chains.add(&r);
            }
        }
        let own_certificate = match &config.certificate {
            None => None,
            Some(path) => {
                let bad = |why: String| {
                    Error::new(
                        ErrorKind::Config,
                        format!("trust.certificate {}: {why}", path.display()),
                    )
                };
                let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
                let cert = Certificate::parse(&bytes).map_err(|e| bad(e.to_string()))?;
                if !covers(&cert, me, &chains) {
                    return Err(bad(format!(
                        "it certifies node {} (epoch {}), not this node's keys ({}, epoch {})",
                        cert.node.node_id, cert.node.epoch, me.node_id, me.epoch
                    )));
                }
                if !anchors.is_empty() {
                    cert.verify(&anchors).map_err(|e| bad(e.to_string()))?;
                }
                Some(cert)
            }
        };
        let trust = Trust {
            me: me.node_id.clone(),
            mode: config.mode,
            allow: config.allow.iter().cloned().collect(),
            deny: config.deny.iter().cloned().collect(),
            anchors,
            own_certificate,
            state: Mutex::new(State {
                stored_rotations: store.rotation_count()?,
                chains,
                ..State::default()
            }),
            rotation_grace_ms: config.rotation_grace_secs.saturating_mul(1000),
            max_stranger_revocations: config.max_stranger_revocations,
            max_stranger_revocations_per_source: config.max_stranger_revocations_per_source,
            certificate_grace_ms: config.certificate_grace_secs.saturating_mul(1000),
        };
        {
            let mut st = lock(&trust.state);
            for bytes in store.certificates()? {
                // Anchors may have changed since it was stored: keep only what still verifies.
                if let Ok(c) = Certificate::parse(&bytes)
                    && c.verify(&trust.anchors).is_ok()
                {
                    st.certificates.insert(c.node.node_id.clone(), c);
                }
            }
        }
        trust.refresh(store)?;
        Ok(trust)
    }

    /// Picks up revocations that another process (`crabnet trust import`, `revoke --self`)
    /// added to the store. Cheap when nothing changed (one count).
    pub fn refresh(&self, store: &Store) -> Result<()> {
        let rotations = store.rotation_count()?;
        if lock(&self.state).stored_rotations != rotations {
            let all = store.rotations()?;
            let mut st = lock(&self.state);
            for bytes in &all {
                if let Ok(r) = crate::rotation::Rotation::parse(bytes) {
                    let _ = st.chains.add(&r);
                }
            }
            st.stored_rotations = rotations;
        }
        let count = store.revocation_count()?;
        if lock(&self.state).stored_revocations == count {
            return Ok(());
        }
        let all = store.revocations()?;
        let mut st = lock(&self.state);
        for bytes in &all {
            if let Ok(r) = Revocation::parse(bytes)
                && !st.known.contains(&r.id())
                && r.verify_with(&self.anchors, &st.chains).is_ok()
            {
                st.apply(&r);
            }
        }
        st.stored_revocations = count;
        Ok(())
    }

    /// Whether the author of a frame with this header is admitted; the error explains why not.
    /// Cheap: no signature check, no database access. This node's own frames are always
    /// admitted here (they are checked against its own keys). A hello's certificate is checked
    /// by [`Trust::admit_hello`] once the hello's signatures verified.
    pub fn check_frame(&self, header: &Header) -> Result<(), String> {
        let sender = &header.sender;
        if *sender == self.me {
            return Ok(());
        }
        if self.deny.contains(sender) {
            return Err("the sender is in trust.deny".into());
        }
        if !self.allow.is_empty() && !self.allow.contains(sender) {
            return Err("the sender is not in trust.allow".into());
        }
        // A revoked node may still deliver revocations (its own, say).
        if header.kind == Kind::Revocations {
            return Ok(());
        }
        let at = header.timestamp;
        let st = lock(&self.state);
        if st.node_revoked_at(sender, at) {
            return Err(format!(
                "the sender is revoked from {} on",
                st.revoked_nodes[sender]
            ));
        }
        if self.mode == TrustMode::Open || header.kind == Kind::NodeHello {
            return Ok(());
        }
        let cert = st
            .certificates
            .get(sender)
            .ok_or("no membership certificate from this sender (trust.mode = \"anchored\")")?;
        check_certificate(cert, &st, at)?;
        if let Kind::Domain(kind) = header.kind
            && !cert.roles.allow(kind)
        {
            return Err(format!(
                "the sender's certificate does not allow it to author {kind}"
            ));
        }
        Ok(())
    }

    /// Admission of a hello whose signatures verified with `identity`, dated `at`: in anchored
    /// mode it must carry a valid certificate for exactly these keys. An accepted certificate
    /// is persisted. The inner error explains a refusal.
    pub fn admit_hello(
        &self,
        identity: &PublicIdentity,
        certificate: Option<&[u8]>,
        at: Millis,
        store: &mut Store,
        now: Millis,
    ) -> Result<Result<(), String>> {
        if self.mode == TrustMode::Open {
            return Ok(Ok(()));
        }
        let Some(bytes) = certificate else {
            return Ok(Err(
                "the hello carries no membership certificate (trust.mode = \"anchored\")".into(),
            ));
        };
        {
            let st = lock(&self.state);
            if let Some(held) = st.certificates.get(&identity.node_id)
                && held.to_bytes() == bytes
            {
                return Ok(check_certificate(held, &st, at));
            }
        }
        let cert = match Certificate::parse(bytes) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if let Err(e) = cert.verify(&self.anchors) {
            return Ok(Err(format!("certificate: {e}")));
        }
        if !covers(&cert, identity, &lock(&self.state).chains) {
            return Ok(Err(
                "the certificate is for other keys than the hello's".into()
            ));
        }
        if let Err(e) = check_certificate(&cert, &lock(&self.state), at) {
            return Ok(Err(e));
        }
        store.put_certificate(&identity.node_id, cert.to_bytes(), now)?;
        lock(&self.state)
            .certificates
            .insert(identity.node_id.clone(), cert);
        Ok(Ok(()))
    }

    /// Verifies a revocation and, when it is new, persists and applies it. `Ok(Ok(true))`: new;
    /// `Ok(Ok(false))`: already known; the inner error: refused.
    pub fn add_revocation(
        &self,
        bytes: &[u8],
        store: &mut Store,
        now: Millis,
    ) -> Result<Result<bool, TrustError>> {
        match Revocation::parse(bytes) {
            Ok(r) => self.add_parsed_revocation(&r, store, now),
            Err(e) => Ok(Err(e)),
        }
    }

    /// [`Trust::add_revocation`] for a revocation already parsed.
    fn add_parsed_revocation(
        &self,
        r: &Revocation,
        store: &mut Store,
        now: Millis,
    ) -> Result<Result<bool, TrustError>> {
        if lock(&self.state).known.contains(&r.id()) {
            return Ok(Ok(false));
        }
        if let Err(e) = r.verify_with(&self.anchors, &lock(&self.state).chains) {
            return Ok(Err(e));
        }
        let new = store.put_revocation(&hex::encode(r.id()), r.to_bytes(), now)?;
        let mut st = lock(&self.state);
        st.apply(r);
        if new {
            st.stored_revocations += 1;
        }
        Ok(Ok(true))
    }

    /// [`Trust::add_revocation`] for a revocation relayed by `source` (the sender of a
    /// `revocations` envelope). A node's own revocation of a *stranger* (a node this node does
    /// not know: [`Store::node_known`], the test [`Store::prune_trust`] makes) counts against
    /// `source`'s share: while `source` has `trust.max_stranger_revocations_per_source` of them
    /// kept, more are not kept ([`Relayed::OverShare`]). One relaying node can thus push out at
    /// most that many older ones (the oldest go past `trust.max_stranger_revocations`). A full
    /// share is checked against the store again before it refuses one (when the store changed
    /// since the last check): a counted revocation whose target became known since (a peer, the
    /// author of a stored message, a certificate holder), which pruning no longer evicts, leaves
    /// the share. Attribution is kept in memory: a restart starts every share afresh.
    pub fn add_relayed_revocation(
        &self,
        bytes: &[u8],
        source: &NodeId,
        store: &mut Store,
        now: Millis,
    ) -> Result<Result<Relayed, TrustError>> {
        let r = match Revocation::parse(bytes) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let id = r.id();
        // Lists repeat what they carried before: known ones cost no lookup and no share.
        if lock(&self.state).known.contains(&id) {
            return Ok(Ok(Relayed::Known));
        }
        let stranger = match (&r.issuer, &r.target) {
            (Issuer::Node, RevocationTarget::Node(node)) => !store.node_known(&self.me, node)?,
            _ => false,
        };
        if stranger && !self.share_has_room(source, store)? {
            return Ok(Ok(Relayed::OverShare));
        }
        Ok(match self.add_parsed_revocation(&r, store, now)? {
            Ok(true) => {
                if let (true, RevocationTarget::Node(target)) = (stranger, &r.target) {
                    let mut st = lock(&self.state);
                    st.relayed_by.insert(id, source.clone());
                    st.relayed
                        .entry(source.clone())
                        .or_default()
                        .insert(id, target.clone());
                }
                Ok(Relayed::New)
            }
            Ok(false) => Ok(Relayed::Known),
            Err(e) => Err(e),
        })
    }

    /// Whether `source`'s share of strangers' self-revocations has room for one more. A full
    /// share is first checked against the store, once per change of the store
    /// ([`Store::generation`]): the revocations whose targets became known leave it.
    fn share_has_room(&self, source: &NodeId, store: &Store) -> Result<bool> {
        let max = self.max_stranger_revocations_per_source;
        let counted: Vec<([u8; 32], NodeId)> = {
            let st = lock(&self.state);
            let share = st.share(source);
            if share < max {
                return Ok(true);
            }
            if share == 0 {
                // `trust.max_stranger_revocations_per_source = 0`: none is kept.
                return Ok(false);
            }
            let generation = store.generation()?;
            if st.share_checked.get(source) == Some(&generation) {
                return Ok(false);
            }
            st.relayed.get(source).map_or_else(Vec::new, |share| {
                share.iter().map(|(id, t)| (*id, t.clone())).collect()
            })
        };
        let mut known = Vec::new();
        for (id, target) in counted {
            if store.node_known(&self.me, &target)? {
                known.push(id);
            }
        }
        let generation = store.generation()?;
        let mut st = lock(&self.state);
        for id in &known {
            st.unattribute(id);
        }
        let room = st.share(source) < max;
        if !room && st.relayed.contains_key(source) {
            st.share_checked.insert(source.clone(), generation);
        }
        Ok(room)
    }

    /// How many revocations the store held when last looked at (0: none to send with hellos,
    /// no need to read the store).
    pub fn stored_revocations(&self) -> u64 {
        lock(&self.state).stored_revocations
    }

    /// How many rotation statements the store held when last looked at (0: none to send
    /// with hellos, no need to read the store).
    pub fn stored_rotations(&self) -> u64 {
        lock(&self.state).stored_rotations
    }

    /// Verifies a key rotation statement against its node's chain and, when it is new,
    /// persists it and moves the node's entry in the peer table to the new keys. A statement
    /// of a node revoked at its `rotated_at` is refused. `Ok(Ok(Added::Known))`: already held.
    pub fn add_rotation(
        &self,
        bytes: &[u8],
        store: &mut Store,
        now: Millis,
    ) -> Result<Result<crate::rotation::Added, crate::rotation::RotationError>> {
        match crate::rotation::Rotation::parse(bytes) {
            Ok(r) => self.add_parsed_rotation(&r, store, now),
            Err(e) => Ok(Err(e)),
        }
    }

    /// [`Trust::add_rotation`] for a statement already parsed.
    pub fn add_parsed_rotation(
        &self,
        r: &crate::rotation::Rotation,
        store: &mut Store,
        now: Millis,
    ) -> Result<Result<crate::rotation::Added, crate::rotation::RotationError>> {
        use crate::rotation::{Added, RotationError};
        {
            let mut st = lock(&self.state);
            if st.node_revoked_at(&r.node_id, r.rotated_at) {
                return Ok(Err(RotationError::Revoked(r.node_id.clone())));
            }
            match st.chains.add(r) {
                Ok(Added::New) => {}
                other => return Ok(other),
            }
        }
        if store.put_rotation(&r.node_id, r.epoch, r.to_bytes(), now)? {
            lock(&self.state).stored_rotations += 1;
        }
        store.rotate_peer(&r.next)?;
        Ok(Ok(Added::New))
    }

    /// `node`'s keys of `epoch` by its chain extended with the statements `items` (those
    /// for other nodes, dated after `latest`, or not verifying are skipped), without keeping
    /// anything: how a hello's chain is checked before its node is admitted.
    pub fn keys_by_chain(
        &self,
        node: &NodeId,
        items: &[serde_bytes::ByteBuf],
        epoch: u32,
        latest: Millis,
    ) -> Option<PublicIdentity> {
        let mut scratch = lock(&self.state).chains.for_node(node);
        for item in items {
            if let Ok(r) = crate::rotation::Rotation::parse(item)
                && r.node_id == *node
                && r.rotated_at <= latest
            {
                let _ = scratch.add(&r);
            }
        }
        scratch.keys_at(node, epoch).cloned()
    }

    /// A node's keys of `epoch` by its rotation chain (epoch 2 or later).
    pub fn keys_at(&self, node: &NodeId, epoch: u32) -> Option<PublicIdentity> {
        lock(&self.state).chains.keys_at(node, epoch).cloned()
    }

    /// A node's latest known key epoch (1 when it never rotated).
    pub fn key_epoch(&self, node: &NodeId) -> u32 {
        lock(&self.state).chains.epoch(node)
    }

    /// A node's replaced signing keys, newest first, each with the time until which it is
    /// accepted (its successor's `rotated_at` plus `trust.rotation_grace_secs`).
    pub fn old_keys(&self, node: &NodeId) -> Vec<crate::rotation::OldKey> {
        lock(&self.state)
            .chains
            .old_keys(node, self.rotation_grace_ms)
    }

    /// Prunes the rotation chains of nodes that are neither in the peer table nor authors of
    /// stored messages, from the store and from memory ([`Store::prune_rotations`]).
    pub fn prune_chains(&self, store: &mut Store) -> Result<()> {
        let gone = store.prune_rotations(&self.me)?;
        if gone.is_empty() {
            return Ok(());
        }
        let count = store.rotation_count()?;
        let mut st = lock(&self.state);
        for node in &gone {
            st.chains.forget(node);
        }
        st.stored_rotations = count;
        Ok(())
    }

    /// Bounds what the store and memory keep of nodes this node forgot
    /// ([`Store::prune_trust`]): self-revocations of strangers past
    /// `trust.max_stranger_revocations` (the oldest go) and certificates more than
    /// `trust.certificate_grace_secs` past their validity. A target whose revocation went keeps
    /// the others stored for it (an anchor's, an older one of its own).
    pub fn prune_revocations(&self, store: &mut Store, now: Millis) -> Result<()> {
        let pruned = store.prune_trust(
            &self.me,
            self.max_stranger_revocations,
            now.saturating_sub(self.certificate_grace_ms),
        )?;
        if pruned.revocations.is_empty() && pruned.certificates.is_empty() {
            return Ok(());
        }
        let mut targets = HashSet::new();
        {
            let mut st = lock(&self.state);
            for node in &pruned.certificates {
                st.certificates.remove(node);
            }
            for bytes in &pruned.revocations {
                if let Ok(r) = Revocation::parse(bytes) {
                    st.known.remove(&r.id());
                    st.unattribute(&r.id());
                    if let RevocationTarget::Node(node) = r.target {
                        targets.insert(node);
                    }
                }
            }
        }
        for node in targets {
            let left = store.node_revocations(&node)?;
            let mut st = lock(&self.state);
            st.revoked_nodes.remove(&node);
            for bytes in &left {
                if let Ok(r) = Revocation::parse(bytes)
                    && r.verify_with(&self.anchors, &st.chains).is_ok()
                {
                    st.known.remove(&r.id());
                    st.apply(&r);
                }
            }
        }
        let count = store.revocation_count()?;
        lock(&self.state).stored_revocations = count;
        Ok(())
    }

    /// A node's rotation chain, oldest first.
    pub fn rotation_chain(&self, node: &NodeId) -> Vec<Vec<u8>> {
        lock(&self.state).chains.chain(node)
    }

    /// This node's certificate, for its hello.
    pub fn own_certificate(&self) -> Option<Vec<u8>> {
        self.own_certificate.as_ref().map(|c| c.to_bytes().to_vec())
    }

    /// A summary.
    pub fn status(&self) -> TrustStatus {
        let st = lock(&self.state);
        let mut certified: Vec<NodeId> = st.certificates.keys().cloned().collect();
        certified.sort();
        let mut revoked_nodes: Vec<_> = st
            .revoked_nodes
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        revoked_nodes.sort();
        let mut revoked_certificates: Vec<_> = st
            .revoked_serials
            .iter()
            .map(|(k, v)| (hex::encode(k), *v))
            .collect();
        revoked_certificates.sort();
        TrustStatus {
            mode: self.mode,
            anchors: self
                .anchors
                .iter()
                .map(|a| hex::encode(anchor_id(a)))
                .collect(),
            certificate_serial: self.own_certificate.as_ref().map(|c| hex::encode(c.serial)),
            certificate_valid: self
                .own_certificate
                .as_ref()
                .map(|c| (c.not_before, c.not_after)),
            certified,
            revoked_nodes,
            revoked_certificates,
        }
    }
}

/// Whether `cert` vouches for `identity`: it names exactly these keys and epoch, or it names
/// the same node at an earlier epoch whose keys are on the node's rotation chain (rotations
/// chain from the certified keys; the node id, and so revocation by id, stays the same).
fn covers(cert: &Certificate, identity: &PublicIdentity, chains: &crate::rotation::Chains) -> bool {
    if cert.node == *identity {
        return true;
    }
    let node = &identity.node_id;
    if cert.node.node_id != *node || cert.node.epoch >= identity.epoch {
        return false;
    }
    let on_chain = |epoch: u32, keys: &PublicIdentity| {
        if epoch == 1 {
            // Epoch-1 keys are the ones the id derives from (checked when the certificate
            // was parsed).
            true
        } else {
            chains
                .keys_at(node, epoch)
                .is_some_and(|k| k.signing == keys.signing && k.kem == keys.kem)
        }
    };
    on_chain(cert.node.epoch, &cert.node)
        && chains
            .keys_at(node, identity.epoch)
            .is_some_and(|k| k.signing == identity.signing && k.kem == identity.kem)
}

fn check_certificate(cert: &Certificate, st: &State, at: Millis) -> Result<(), String> {
    if !cert.valid_at(at) {
        return Err(format!(
            "the sender's certificate is valid from {} to {}, not at {at}",
            cert.not_before, cert.not_after
        ));
    }
    if st.serial_revoked_at(&cert.serial, at) {
        return Err(format!(
            "the sender's certificate {} is revoked",
            hex::encode(cert.serial)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(tag: u8) -> Identity {
        Identity::from_tag(tag, 1)
    }

    fn anchor(tag: u8) -> AnchorKey {
        AnchorKey::from_seeds(&SigningSeeds {
            ed25519: [tag; 32],
            ml_dsa: [tag; 32],
        })
    }

    #[test]
    fn certificates_verify_only_under_their_anchor_and_every_byte_counts() {
        let a = anchor(1);
        let n = node(2);
        let c = Certificate::sign(&a, n.public(), [7; 16], 10, 20, Roles::ALL, [0; 32]).unwrap();
        assert_eq!(c.to_bytes().len(), CERTIFICATE_LEN);
        c.verify(&[a.public()]).unwrap();
        assert!(matches!(
            c.verify(&[anchor(3).public()]),
            Err(TrustError::UnknownAnchor(_))
        ));
        assert!(c.valid_at(10) && c.valid_at(20) && !c.valid_at(21) && !c.valid_at(9));
        // Flip one byte at a time (a sample across every field): never a valid certificate.
        for i in (0..CERTIFICATE_LEN)
            .step_by(97)
            .chain([0, 49, 101, CERT_SIGNED_LEN])
        {
            let mut bytes = c.to_bytes().to_vec();
            bytes[i] ^= 0x01;
            let ok = Certificate::parse(&bytes).is_ok_and(|c| c.verify(&[a.public()]).is_ok());
            assert!(!ok, "byte {i} flipped and still valid");
        }
        assert!(Certificate::sign(&a, n.public(), [7; 16], 21, 20, Roles::ALL, [0; 32]).is_err());
    }

    #[test]
    fn a_node_may_revoke_only_itself_and_anchors_must_be_configured() {
        let a = anchor(1);
        let n = node(2);
        let own = Revocation::by_node(&n, 5, 6, [0; 32]).unwrap();
        own.verify(&[]).unwrap();
        assert_eq!(own.target, RevocationTarget::Node(n.node_id().clone()));
        // Rewrite the target to another node: structurally refused.
        let mut bytes = own.to_bytes().to_vec();
        let at = 2 + SIGNING_PUBLIC_LEN + 1;
        bytes[at..at + 32].copy_from_slice(&id_bytes(node(3).node_id()));
        assert!(Revocation::parse(&bytes).is_ok_and(|r| r.verify(&[]).is_err()));
        let by_anchor =
            Revocation::by_anchor(&a, RevocationTarget::Certificate([9; 16]), 1, 2, [0; 32])
                .unwrap();
        by_anchor.verify(&[a.public()]).unwrap();
        assert!(matches!(
            by_anchor.verify(&[]),
            Err(TrustError::UnknownAnchor(_))
        ));
        let mut bytes = by_anchor.to_bytes().to_vec();
        bytes[REV_SIGNED_LEN - 1] ^= 1;
        let r = Revocation::parse(&bytes).unwrap();
        assert!(matches!(
            r.verify(&[a.public()]),
            Err(TrustError::BadSignature(_))
        ));
    }

    /// Node 2's trust under `config` with anchor 1 configured, on a fresh store.
    fn node_2_trusting_anchor_1(
        mut config: TrustConfig,
    ) -> (tempfile::TempDir, Store, AnchorKey, Identity, Trust) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("db"),
            &crate::store::config::StoreConfig::default(),
        )
        .unwrap();
        let a = anchor(1);
        let me = node(2);
        config.anchors = vec![hex::encode(a.public().to_bytes())];
        let trust = Trust::load(me.public(), &config, &store).unwrap();
        (dir, store, a, me, trust)
    }

    fn revoked_nodes(trust: &Trust) -> Vec<NodeId> {
        let status = trust.status();
        status.revoked_nodes.into_iter().map(|(n, _)| n).collect()
    }

    /// What trust keeps of forgotten nodes is bounded: certificates go once their validity
    /// plus `trust.certificate_grace_secs` is over; self-revocations of strangers past
    /// `trust.max_stranger_revocations` go, oldest first, from the store and from memory;
    /// an anchor's revocations and this node's own stay, whatever their number.
    #[test]
    fn expired_certificates_and_surplus_stranger_revocations_are_pruned() {
        let (_dir, mut store, a, me, trust) = node_2_trusting_anchor_1(TrustConfig {
            mode: TrustMode::Anchored,
            max_stranger_revocations: 1,
            certificate_grace_secs: 10,
            ..TrustConfig::default()
        });
        // Two certificates: one valid until 1,000, one until 100,000.
        let (old, young) = (node(3), node(4));
        for (n, until) in [(&old, 1_000), (&young, 100_000)] {
            let c = Certificate::sign(
                &a,
                n.public(),
                [until as u8; 16],
                0,
                until,
                Roles::ALL,
                [0; 32],
            )
            .unwrap();
            trust
                .admit_hello(n.public(), Some(c.to_bytes()), 500, &mut store, 500)
                .unwrap()
                .unwrap();
        }
        // Self-revocations of three strangers (received in this order), an anchor's revocation
        // of a fourth, and this node's own.
        let strangers = [node(5), node(6), node(7)];
        for (t, n) in strangers.iter().enumerate() {
            let r = Revocation::by_node(n, 1, 1, [0; 32]).unwrap();
            assert_eq!(
                trust
                    .add_revocation(r.to_bytes(), &mut store, 10 + t as u64)
                    .unwrap(),
                Ok(true)
            );
        }
        let by_anchor = Revocation::by_anchor(
            &a,
            RevocationTarget::Node(node(8).node_id().clone()),
            1,
            1,
            [0; 32],
        )
        .unwrap();
        let own = Revocation::by_node(&me, 1, 1, [0; 32]).unwrap();
        for r in [&by_anchor, &own] {
            assert_eq!(
                trust.add_revocation(r.to_bytes(), &mut store, 5).unwrap(),
                Ok(true)
            );
        }
        assert_eq!(trust.status().revoked_nodes.len(), 5);

        // At 11,000 the old certificate is just within its grace (10 s).
        trust.prune_revocations(&mut store, 11_000).unwrap();
        assert_eq!(trust.status().certified.len(), 2);
        // The newest stranger's revocation stays; the anchor's and our own are not counted.
        let revoked = revoked_nodes(&trust);
        assert_eq!(revoked.len(), 3, "{revoked:?}");
        for kept in [strangers[2].node_id(), node(8).node_id(), me.node_id()] {
            assert!(revoked.contains(kept), "{kept} was pruned");
        }
        assert_eq!(store.revocation_count().unwrap(), 3);
        let counters = store.counters().unwrap();
        assert_eq!(counters["trust.revocations_evicted"], 2);
        // An evicted revocation is forgotten: it may be added again (and is capped again).
        let again = Revocation::by_node(&strangers[0], 1, 1, [0; 32]).unwrap();
        assert_eq!(
            trust
                .add_revocation(again.to_bytes(), &mut store, 20)
                .unwrap(),
            Ok(true)
        );

        trust.prune_revocations(&mut store, 11_001).unwrap();
        assert_eq!(trust.status().certified, vec![young.node_id().clone()]);
        assert_eq!(store.certificates().unwrap().len(), 1);
        assert_eq!(store.counters().unwrap()["trust.certificates_expired"], 1);
        // The revocation added last is now the newest stranger's.
        let revoked = revoked_nodes(&trust);
        assert!(
            revoked.contains(strangers[0].node_id()) && !revoked.contains(strangers[2].node_id())
        );
        // The valid range of the new keys is checked at load.
        for (key, value) in [
            ("max_stranger_revocations_per_source", 1_000_001),
            ("max_stranger_revocations", 1_000_001),
            ("certificate_grace_secs", 365 * 86_400 + 1),
        ] {
            let mut c = TrustConfig::default();
            match key {
                "max_stranger_revocations" => c.max_stranger_revocations = value,
                "max_stranger_revocations_per_source" => {
                    c.max_stranger_revocations_per_source = value
                }
                _ => c.certificate_grace_secs = value,
            }
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains(&format!("trust.{key}")) && e.contains("between"),
                "{e}"
            );
        }
    }

    /// One relaying node may have only its share of strangers' self-revocations kept: past
    /// it, more from it are not kept (others' are); an anchor's revocations and this node's own
    /// are not counted; once one of its revocations is evicted, its share has room again.
    #[test]
    fn each_relaying_node_has_a_share_of_strangers_revocations() {
        let (_dir, mut store, a, me, trust) = node_2_trusting_anchor_1(TrustConfig {
            max_stranger_revocations: 2,
            max_stranger_revocations_per_source: 2,
            ..TrustConfig::default()
        });
        let (mallory, carol) = (node(3).node_id().clone(), node(4).node_id().clone());
        let relay = |by: &NodeId, r: &Revocation, store: &mut Store, at: Millis| {
            trust
                .add_relayed_revocation(r.to_bytes(), by, store, at)
                .unwrap()
                .unwrap()
        };
        let own = |tag: u8| Revocation::by_node(&node(tag), 1, 1, [0; 32]).unwrap();
        assert_eq!(relay(&mallory, &own(10), &mut store, 1), Relayed::New);
        assert_eq!(relay(&mallory, &own(11), &mut store, 2), Relayed::New);
        assert_eq!(relay(&mallory, &own(12), &mut store, 3), Relayed::OverShare);
        assert_eq!(relay(&mallory, &own(10), &mut store, 3), Relayed::Known);
        // Not strangers' self-revocations: not counted.
        let by_anchor =
            Revocation::by_anchor(&a, RevocationTarget::Node(mallory.clone()), 1, 1, [0; 32])
                .unwrap();
        assert_eq!(relay(&mallory, &by_anchor, &mut store, 4), Relayed::New);
        let mine = Revocation::by_node(&me, 1, 1, [0; 32]).unwrap();
        assert_eq!(relay(&mallory, &mine, &mut store, 4), Relayed::New);
        // Another relaying node has its own share.
        assert_eq!(relay(&carol, &own(13), &mut store, 5), Relayed::New);
        // Past the total, Mallory's oldest goes, and her share has room again.
        trust.prune_revocations(&mut store, 6).unwrap();
        assert_eq!(store.counters().unwrap()["trust.revocations_evicted"], 1);
        assert!(!revoked_nodes(&trust).contains(node(10).node_id()));
        assert_eq!(relay(&mallory, &own(12), &mut store, 7), Relayed::New);
    }

    /// Stores a message authored by `author` (a seed it publishes): it becomes a node this node
    /// knows, though not a peer.
    fn store_message_of(store: &mut Store, author: &NodeId, tag: u8) {
        crate::store::publish_test_seed(store, author, tag, 1);
    }

    /// A relaying node's share counts the self-revocations of strangers exactly as pruning
    /// does: those of authors of stored messages (never evicted) do not fill it, and one whose
    /// target became known since (it authored a stored message) leaves it. Before, a source
    /// that relayed the self-revocations of two message authors had its share of two full
    /// until a restart, and a stranger's real revocation from it was refused (`OverShare`).
    #[test]
    fn revocations_of_known_authors_do_not_fill_a_relaying_nodes_share() {
        let (_dir, mut store, _a, _me, trust) = node_2_trusting_anchor_1(TrustConfig {
            max_stranger_revocations: 100,
            max_stranger_revocations_per_source: 2,
            ..TrustConfig::default()
        });
        let mallory = node(3).node_id().clone();
        let relay = |r: &Revocation, store: &mut Store, at: Millis| {
            trust
                .add_relayed_revocation(r.to_bytes(), &mallory, store, at)
                .unwrap()
                .unwrap()
        };
        let own = |tag: u8| Revocation::by_node(&node(tag), 1, 1, [0; 32]).unwrap();
        // Three authors of stored messages (not peers) revoke themselves; Mallory relays them.
        for tag in [10, 11, 12] {
            store_message_of(&mut store, node(tag).node_id(), tag);
        }
        for (t, tag) in [10, 11, 12].into_iter().enumerate() {
            assert_eq!(
                relay(&own(tag), &mut store, 1 + t as u64),
                Relayed::New,
                "{tag}"
            );
        }
        // Pruning does not count them either: none is evicted.
        trust.prune_revocations(&mut store, 5).unwrap();
        assert_eq!(store.revocation_count().unwrap(), 3);
        // Her share is whole: two strangers' revocations are kept, the third is not.
        assert_eq!(relay(&own(20), &mut store, 6), Relayed::New);
        assert_eq!(relay(&own(21), &mut store, 7), Relayed::New);
        assert_eq!(relay(&own(22), &mut store, 8), Relayed::OverShare);
        // A stranger becomes known (a message of its own is stored): its revocation leaves her
        // share, and pruning keeps it whatever the total.
        store_message_of(&mut store, node(20).node_id(), 20);
        assert_eq!(relay(&own(22), &mut store, 9), Relayed::New);
        assert_eq!(relay(&own(23), &mut store, 10), Relayed::OverShare);
        trust.prune_revocations(&mut store, 11).unwrap();
        assert_eq!(store.revocation_count().unwrap(), 6);
    }

    #[test]
    fn anchor_key_files_are_private_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anchor.key");
        let a = AnchorKey::generate().unwrap();
        a.write_new(&path).unwrap();
        assert!(a.write_new(&path).is_err(), "never overwritten");
        assert_eq!(AnchorKey::read(&path).unwrap().public(), a.public());
        assert!(!format!("{a:?}").contains(&hex::encode(a.secret.to_seeds().ed25519)));
        #[cfg(unix)]
        crate::identity::assert_private_secret_file(&path, AnchorKey::read);
    }

    #[test]
    fn anchored_mode_needs_an_anchor_and_anchors_must_be_keys() {
        let mut c = TrustConfig {
            mode: TrustMode::Anchored,
            ..TrustConfig::default()
        };
        crate::error::assert_err_contains(c.validate(), "trust.anchors");
        c.anchors = vec!["abcd".into()];
        c.validate().unwrap();
        let e = c.anchor_keys().unwrap_err();
        assert!(e.to_string().contains("trust.anchors[0]"), "{e}");
        c.anchors = vec![hex::encode(anchor(1).public().to_bytes())];
        assert_eq!(c.anchor_keys().unwrap(), vec![anchor(1).public()]);
    }
}
