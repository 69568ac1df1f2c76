//! Key rotation (docs/PROTOCOL.md section 2g): a node replaces its keys and keeps its id.
//!
//! A node's id is the hash of its first signing keys (key epoch 1, [`crate::identity`]). To
//! move to new keys it signs a [`Rotation`] statement with its current keys naming its next
//! signing and encryption keys and `key_epoch + 1`. The statements of one node form a chain
//! from its id: the first is signed by the keys the id derives from, each later one by the
//! keys the one before named. [`Chains`] holds the verified chains of every node this node
//! knows about and answers which keys were valid for a node when: the current ones always, an
//! older epoch's only until its successor's `rotated_at` plus the grace period
//! (`trust.rotation_grace_secs`).

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::crypto::{
    DUAL_SIGNATURE_LEN, DualSignature, KEM_PUBLIC_LEN, KemPublic, SIGNING_PUBLIC_LEN, SigningPublic,
};
use crate::error::{Error, ErrorKind, Result};
use crate::identity::{Identity, PublicIdentity, node_id_for};
use crate::model::{Millis, NodeId};

/// Signature context (domain separation) of rotation statements.
pub const ROTATION_CONTEXT: &[u8] = b"crabnet/v1/key-rotation";
/// Version byte of rotation statements.
pub const ROTATION_VERSION: u8 = 1;
/// Signed part of a statement (everything before the signatures).
const SIGNED_LEN: usize = 1 + 32 + 4 + 8 + SIGNING_PUBLIC_LEN + SIGNING_PUBLIC_LEN + KEM_PUBLIC_LEN;
/// Size of an encoded rotation statement.
pub const ROTATION_LEN: usize = SIGNED_LEN + DUAL_SIGNATURE_LEN;
/// The most rotations one node may chain (bounds memory per node and the hello's size).
pub const MAX_CHAIN: usize = 64;

/// Why a rotation statement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    /// Not a well-formed statement.
    #[error("malformed rotation statement: {0}")]
    Malformed(String),
    /// It is not signed by the node's keys of the epoch before the one it names.
    #[error("rotation of node {node} to epoch {epoch}: not signed by its current keys")]
    NotCurrentKeys {
        /// The node.
        node: NodeId,
        /// The epoch the statement names.
        epoch: u32,
    },
    /// It names an epoch more than one beyond the latest known one.
    #[error("rotation of node {node} to epoch {epoch} skips epochs (latest known: {known})")]
    SkipsEpoch {
        /// The node.
        node: NodeId,
        /// The epoch the statement names.
        epoch: u32,
        /// The latest known epoch.
        known: u32,
    },
    /// Another statement for the same epoch is already known (the first one stands).
    #[error("rotation of node {node} to epoch {epoch} conflicts with the one already known")]
    Conflict {
        /// The node.
        node: NodeId,
        /// The epoch the statement names.
        epoch: u32,
    },
    /// Dated before the rotation it follows.
    #[error("rotation of node {node} to epoch {epoch} is dated before the previous rotation")]
    Backdated {
        /// The node.
        node: NodeId,
        /// The epoch the statement names.
        epoch: u32,
    },
    /// The node is revoked at the statement's time.
    #[error("rotation of node {0}: the node is revoked")]
    Revoked(NodeId),
    /// The node already rotated [`MAX_CHAIN`] times.
    #[error("node {0} has rotated its keys too often (at most {MAX_CHAIN} times)")]
    ChainTooLong(NodeId),
}

crate::error::error_from!(RotationError => Validation);

/// A signed statement: node `node_id` moves from the keys of epoch `epoch - 1` (`previous`,
/// which sign it) to `next` at `rotated_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The node (the id of its epoch-1 keys).
    pub node_id: NodeId,
    /// The new key epoch (at least 2).
    pub epoch: u32,
    /// When the rotation takes effect (Unix ms); the old keys stay valid for the grace period
    /// after it.
    pub rotated_at: Millis,
    /// The signing keys of epoch `epoch - 1`, which sign the statement.
    pub previous: SigningPublic,
    /// The new keys (with `node_id` and `epoch`).
    pub next: PublicIdentity,
    bytes: Vec<u8>,
}

impl Rotation {
    /// `current` names its next keys: signing and encryption keys of `next` (whose id and
    /// epoch are ignored: the statement keeps `current`'s id and names its epoch + 1).
    /// `ml_dsa_randomness` as in [`crate::crypto::SigningSecret::sign`] (all zeros only for
    /// test vectors).
    pub fn sign(
        current: &Identity,
        next: &PublicIdentity,
        rotated_at: Millis,
        ml_dsa_randomness: [u8; 32],
    ) -> Result<Rotation> {
        let epoch = current.public().epoch.checked_add(1).ok_or_else(|| {
            Error::new(
                ErrorKind::Validation,
                "the key epoch cannot grow any further",
            )
        })?;
        let mut out = Vec::with_capacity(ROTATION_LEN);
        out.push(ROTATION_VERSION);
        out.extend_from_slice(&id_bytes(current.node_id()));
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&rotated_at.to_be_bytes());
        out.extend_from_slice(&current.public().signing.to_bytes());
        out.extend_from_slice(&next.signing.to_bytes());
        out.extend_from_slice(&next.kem.to_bytes());
        debug_assert_eq!(out.len(), SIGNED_LEN);
        let sig = current
            .signing()
            .sign(&out, ROTATION_CONTEXT, ml_dsa_randomness)?;
        out.extend_from_slice(&sig.to_bytes());
        Ok(Rotation::parse(&out)?)
    }

    /// Decodes a statement, checking its structure (not its signature).
    pub fn parse(bytes: &[u8]) -> Result<Rotation, RotationError> {
        let bad = |why: String| RotationError::Malformed(why);
        if bytes.len() != ROTATION_LEN {
            return Err(bad(format!(
                "{} bytes, expected {ROTATION_LEN}",
                bytes.len()
            )));
        }
        if bytes[0] != ROTATION_VERSION {
            return Err(bad(format!("unknown version {}", bytes[0])));
        }
        let mut at = 1;
        let mut take = |n: usize| {
            let part = &bytes[at..at + n];
            at += n;
            part
        };
        let node_id = NodeId::from_bytes(take(32).try_into().expect("32 bytes"));
        let epoch = u32::from_be_bytes(take(4).try_into().expect("4 bytes"));
        let rotated_at = u64::from_be_bytes(take(8).try_into().expect("8 bytes"));
        let previous = SigningPublic::from_bytes(take(SIGNING_PUBLIC_LEN))
            .map_err(|e| bad(format!("previous keys: {e}")))?;
        let signing = SigningPublic::from_bytes(take(SIGNING_PUBLIC_LEN))
            .map_err(|e| bad(format!("next signing keys: {e}")))?;
        let kem = KemPublic::from_bytes(take(KEM_PUBLIC_LEN))
            .map_err(|e| bad(format!("next encryption keys: {e}")))?;
        if epoch < 2 {
            return Err(bad(format!(
                "epoch {epoch}: rotations name epoch 2 or later"
            )));
        }
        if signing == previous {
            return Err(bad("the next signing keys are the previous ones".into()));
        }
        Ok(Rotation {
            next: PublicIdentity {
                node_id: node_id.clone(),
                signing,
                kem,
                epoch,
            },
            node_id,
            epoch,
            rotated_at,
            previous,
            bytes: bytes.to_vec(),
        })
    }

    /// Checks both signatures with the statement's `previous` keys (not whether those are the
    /// node's keys of the epoch before: see [`Chains::add`]).
    fn verify_signature(&self) -> Result<(), RotationError> {
        let not_current = || RotationError::NotCurrentKeys {
            node: self.node_id.clone(),
            epoch: self.epoch,
        };
        let sig = DualSignature::from_bytes(&self.bytes[SIGNED_LEN..])
            .map_err(|e| RotationError::Malformed(e.to_string()))?;
        self.previous
            .verify(&self.bytes[..SIGNED_LEN], ROTATION_CONTEXT, &sig)
            .map_err(|_| not_current())
    }

    /// The statement's content for people and bindings (JSON).
    pub fn info(&self) -> RotationInfo {
        RotationInfo {
            node_id: self.node_id.clone(),
            key_epoch: self.epoch,
            rotated_at: self.rotated_at,
            signing_public: hex::encode(self.next.signing.to_bytes()),
            kem_public: hex::encode(self.next.kem.to_bytes()),
        }
    }

    /// `SHA-256` of the encoded statement.
    pub fn id(&self) -> [u8; 32] {
        Sha256::digest(&self.bytes).into()
    }

    /// The encoded statement.
    pub fn to_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// What a rotation did (the result of [`crate::Node::rotate_keys`] in the bindings).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RotationInfo {
    /// The node (unchanged by the rotation).
    pub node_id: NodeId,
    /// Its new key epoch.
    pub key_epoch: u32,
    /// When the rotation took effect (Unix ms); the old keys' grace period starts here.
    pub rotated_at: Millis,
    /// The new Ed25519 + ML-DSA-44 public keys, hex.
    pub signing_public: String,
    /// The new X25519 + ML-KEM-768 public keys, hex.
    pub kem_public: String,
}

fn id_bytes(id: &NodeId) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(id.as_str(), &mut out).expect("node ids are 64 hex digits");
    out
}

/// What [`Chains::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new link: the node's keys changed.
    New,
    /// Already known (a replay or a relay's copy): nothing changed.
    Known,
}

/// A key an author rotated away from, still accepted within the grace period
/// ([`Chains::old_keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldKey {
    /// The old epoch's signing keys.
    pub keys: SigningPublic,
    /// The epoch.
    pub epoch: u32,
    /// Until when (Unix ms, exclusive) envelopes signed with them are accepted: the next
    /// rotation's time plus the grace period.
    pub valid_until: Millis,
}

/// The verified rotation chains of the nodes this node knows about.
#[derive(Debug, Default)]
pub struct Chains {
    by_node: HashMap<NodeId, Vec<Rotation>>,
}

impl Chains {
    /// Verifies `r` against the node's chain and appends it. A statement already known is
    /// [`Added::Known`]; one for an epoch already passed with other content is a
    /// [`RotationError::Conflict`] (the first one known stands); one more than one epoch ahead
    /// is [`RotationError::SkipsEpoch`]; one not signed by the keys of the epoch before is
    /// [`RotationError::NotCurrentKeys`].
    pub fn add(&mut self, r: &Rotation) -> Result<Added, RotationError> {
        let chain = self
            .by_node
            .get(&r.node_id)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let known = 1 + chain.len() as u32;
        if r.epoch <= known {
            let held = &chain[(r.epoch - 2) as usize];
            return if held.bytes == r.bytes {
                Ok(Added::Known)
            } else {
                Err(RotationError::Conflict {
                    node: r.node_id.clone(),
                    epoch: r.epoch,
                })
            };
        }
        if r.epoch != known + 1 {
            return Err(RotationError::SkipsEpoch {
                node: r.node_id.clone(),
                epoch: r.epoch,
                known,
            });
        }
        if chain.len() >= MAX_CHAIN {
            return Err(RotationError::ChainTooLong(r.node_id.clone()));
        }
        let current_ok = match chain.last() {
            None => node_id_for(&r.previous) == r.node_id,
            Some(last) => last.next.signing == r.previous,
        };
        if !current_ok {
            return Err(RotationError::NotCurrentKeys {
                node: r.node_id.clone(),
                epoch: r.epoch,
            });
        }
        if chain
            .last()
            .is_some_and(|last| r.rotated_at < last.rotated_at)
        {
            return Err(RotationError::Backdated {
                node: r.node_id.clone(),
                epoch: r.epoch,
            });
        }
        r.verify_signature()?;
        self.by_node
            .entry(r.node_id.clone())
            .or_default()
            .push(r.clone());
        Ok(Added::New)
    }

    /// The node's latest keys by rotation, if it ever rotated.
    pub fn current(&self, node: &NodeId) -> Option<&PublicIdentity> {
        self.by_node.get(node)?.last().map(|r| &r.next)
    }

    /// A copy of `node`'s chain alone, to verify more statements on without keeping them.
    pub fn for_node(&self, node: &NodeId) -> Chains {
        let mut by_node = HashMap::new();
        if let Some(chain) = self.by_node.get(node) {
            by_node.insert(node.clone(), chain.clone());
        }
        Chains { by_node }
    }

    /// The node's latest known epoch (1 when it never rotated).
    pub fn epoch(&self, node: &NodeId) -> u32 {
        1 + self.by_node.get(node).map_or(0, Vec::len) as u32
    }

    /// The node's keys of `epoch` (2 or later), when its chain reaches that far.
    pub fn keys_at(&self, node: &NodeId, epoch: u32) -> Option<&PublicIdentity> {
        let index = usize::try_from(epoch.checked_sub(2)?).ok()?;
        self.by_node.get(node)?.get(index).map(|r| &r.next)
    }

    /// The node's replaced signing keys, newest first, with the time until which each stays
    /// valid under a grace period of `grace_ms`.
    pub fn old_keys(&self, node: &NodeId, grace_ms: u64) -> Vec<OldKey> {
        let Some(chain) = self.by_node.get(node) else {
            return Vec::new();
        };
        chain
            .iter()
            .rev()
            .map(|r| OldKey {
                keys: r.previous.clone(),
                epoch: r.epoch - 1,
                valid_until: r.rotated_at.saturating_add(grace_ms),
            })
            .collect()
    }

    /// Whether `keys` are the node's signing keys of some epoch 2 or later on its chain.
    pub fn has_keys(&self, node: &NodeId, keys: &SigningPublic) -> bool {
        self.by_node
            .get(node)
            .is_some_and(|c| c.iter().any(|r| r.next.signing == *keys))
    }

    /// The node's chain, oldest first (as its hello carries it).
    pub fn chain(&self, node: &NodeId) -> Vec<Vec<u8>> {
        self.by_node
            .get(node)
            .map(|c| c.iter().map(|r| r.bytes.clone()).collect())
            .unwrap_or_default()
    }

    /// Every statement held, each node's oldest first.
    pub fn all(&self) -> Vec<Vec<u8>> {
        let mut nodes: Vec<&NodeId> = self.by_node.keys().collect();
        nodes.sort();
        nodes.into_iter().flat_map(|n| self.chain(n)).collect()
    }

    /// Forgets `node`'s chain (its statements were pruned from the store).
    pub fn forget(&mut self, node: &NodeId) {
        self.by_node.remove(node);
    }

    /// How many statements are held.
    pub fn len(&self) -> usize {
        self.by_node.values().map(Vec::len).sum()
    }

    /// Whether no statement is held.
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(tag: u8, epoch: u32) -> Identity {
        Identity::from_tag(tag, epoch)
    }

    #[test]
    fn a_chain_grows_one_epoch_at_a_time_signed_by_the_current_keys() {
        let first = keys(1, 1);
        let second = keys(2, 2).with_node_id(first.node_id().clone());
        let third = keys(3, 3);
        let r2 = Rotation::sign(&first, second.public(), 100, [0; 32]).unwrap();
        assert_eq!(r2.to_bytes().len(), ROTATION_LEN);
        let r3 = Rotation::sign(&second, third.public(), 200, [0; 32]).unwrap();
        assert_eq!((r2.epoch, r3.epoch), (2, 3));
        assert_eq!(r3.node_id, *first.node_id());

        let mut chains = Chains::default();
        // Epoch 3 before epoch 2: skips.
        assert!(matches!(
            chains.add(&r3),
            Err(RotationError::SkipsEpoch { .. })
        ));
        assert_eq!(chains.add(&r2), Ok(Added::New));
        assert_eq!(chains.add(&r2), Ok(Added::Known));
        assert_eq!(chains.add(&r3), Ok(Added::New));
        assert_eq!(chains.epoch(first.node_id()), 3);
        assert_eq!(chains.current(first.node_id()), Some(&r3.next));
        assert_eq!(chains.keys_at(first.node_id(), 2), Some(&r2.next));
        let old = chains.old_keys(first.node_id(), 10);
        assert_eq!(old[0].epoch, 2);
        assert_eq!(old[0].valid_until, 210);
        assert_eq!(old[1].keys, first.public().signing);

        // A second statement for epoch 2 (say from a stolen epoch-1 key): refused.
        let other = Rotation::sign(&first, keys(9, 2).public(), 150, [0; 32]).unwrap();
        assert!(matches!(
            chains.add(&other),
            Err(RotationError::Conflict { .. })
        ));
    }

    #[test]
    fn a_statement_signed_by_other_keys_is_refused() {
        let first = keys(1, 1);
        let thief = keys(7, 1).with_node_id(first.node_id().clone());
        let forged = Rotation::sign(&thief, keys(8, 2).public(), 100, [0; 32]).unwrap();
        let mut chains = Chains::default();
        assert!(matches!(
            chains.add(&forged),
            Err(RotationError::NotCurrentKeys { .. })
        ));
        // The real previous keys written in, the signature still the thief's.
        let mut bytes = forged.to_bytes().to_vec();
        bytes[45..45 + SIGNING_PUBLIC_LEN].copy_from_slice(&first.public().signing.to_bytes());
        let r = Rotation::parse(&bytes).unwrap();
        assert!(matches!(
            chains.add(&r),
            Err(RotationError::NotCurrentKeys { .. })
        ));
        assert!(chains.is_empty());
        // Every byte counts.
        let good = Rotation::sign(&first, keys(2, 2).public(), 100, [0; 32]).unwrap();
        for i in (0..ROTATION_LEN)
            .step_by(131)
            .chain([0, 1, 33, 37, SIGNED_LEN])
        {
            let mut bytes = good.to_bytes().to_vec();
            bytes[i] ^= 1;
            let accepted =
                Rotation::parse(&bytes).is_ok_and(|r| Chains::default().add(&r) == Ok(Added::New));
            assert!(!accepted, "byte {i} flipped and still accepted");
        }
    }
}
