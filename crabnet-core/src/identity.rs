//! Node identity: two signing key pairs (Ed25519, ML-DSA-44), two encryption key pairs
//! (X25519, ML-KEM-768), and the self-certifying node id derived from the signing keys.
//!
//! The secret seeds live in `<data_dir>/identity.key` (mode 0600, never logged). The file
//! format is the ASCII line `crabnet-identity-v1\n` followed by 164 bytes: key epoch (u32
//! big-endian), Ed25519 seed (32), ML-DSA-44 seed (32), X25519 secret (32), ML-KEM-768 seed (64).
//! After a key rotation ([`crate::rotation`]) the node id no longer derives from the current
//! keys, so the file is `crabnet-identity-v2\n`, the node id (32 bytes), then the same 164
//! bytes (epoch 2 or later).

use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{KemPublic, KemSecret, KemSeeds, SigningPublic, SigningSecret, SigningSeeds};
use crate::error::{Error, ErrorKind, Result};
use crate::model::NodeId;

const MAGIC: &[u8] = b"crabnet-identity-v1\n";
const MAGIC_V2: &[u8] = b"crabnet-identity-v2\n";
const BODY_LEN: usize = 4 + 32 + 32 + 32 + 64;
/// Domain-separation label of the node id hash.
pub const NODE_ID_LABEL: &[u8] = b"crabnet/v1/node-id";

/// Derives the node id from the two signing public keys:
/// `SHA-256(label || ed25519 public key || ML-DSA-44 public key)`.
pub fn node_id_for(signing: &SigningPublic) -> NodeId {
    let mut h = Sha256::new();
    h.update(NODE_ID_LABEL);
    h.update(signing.ed25519());
    h.update(signing.ml_dsa());
    NodeId::from_bytes(h.finalize().into())
}

/// The public half of an identity, as announced in `NodeHello` and kept in the peer table.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicIdentity {
    /// The node id (derived from the epoch-1 signing keys; from `signing` until the node
    /// rotates its keys).
    pub node_id: NodeId,
    /// Ed25519 + ML-DSA-44 verification keys.
    pub signing: SigningPublic,
    /// X25519 + ML-KEM-768 encryption keys.
    pub kem: KemPublic,
    /// Key epoch (starts at 1; each key rotation adds 1).
    pub epoch: u32,
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicIdentity")
            .field("node_id", &self.node_id)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl PublicIdentity {
    /// Builds a public identity from encoded keys, checking them and deriving the node id.
    pub fn from_parts(signing: &[u8], kem: &[u8], epoch: u32) -> Result<Self> {
        let signing = SigningPublic::from_bytes(signing)?;
        let kem = KemPublic::from_bytes(kem)?;
        Ok(PublicIdentity {
            node_id: node_id_for(&signing),
            signing,
            kem,
            epoch,
        })
    }

    /// A short fingerprint of the keys for humans: the first 16 hex digits of the node id.
    pub fn fingerprint(&self) -> &str {
        &self.node_id.as_str()[..16]
    }
}

/// A node's full identity, secrets included.
pub struct Identity {
    signing: SigningSecret,
    kem: KemSecret,
    public: PublicIdentity,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.public.node_id)
            .field("secrets", &"<redacted>")
            .finish()
    }
}

impl Identity {
    /// A fresh identity from the operating system's random source.
    pub fn generate() -> Result<Self> {
        Ok(Self::from_secrets(
            SigningSecret::generate()?,
            KemSecret::generate()?,
            1,
        ))
    }

    /// An identity from fixed seeds (test vectors, deterministic simulations).
    pub fn from_seeds(signing: &SigningSeeds, kem: &KemSeeds, epoch: u32) -> Self {
        Self::from_secrets(
            SigningSecret::from_seeds(signing),
            KemSecret::from_seeds(kem),
            epoch,
        )
    }

    /// Deterministic keys for unit tests: every seed byte is `tag`, the keys are at `epoch`.
    #[cfg(test)]
    pub(crate) fn from_tag(tag: u8, epoch: u32) -> Self {
        Self::from_seeds(
            &SigningSeeds {
                ed25519: [tag; 32],
                ml_dsa: [tag; 32],
            },
            &KemSeeds {
                x25519: [tag; 32],
                ml_kem: [tag; 64],
            },
            epoch,
        )
    }

    fn from_secrets(signing: SigningSecret, kem: KemSecret, epoch: u32) -> Self {
        let signing_public = signing.public();
        let public = PublicIdentity {
            node_id: node_id_for(&signing_public),
            signing: signing_public,
            kem: kem.public(),
            epoch,
        };
        Identity {
            signing,
            kem,
            public,
        }
    }

    /// The same keys under `node_id`: the identity of a node that rotated to these keys (the
    /// id stays that of its epoch-1 keys).
    pub fn with_node_id(mut self, node_id: NodeId) -> Self {
        self.public.node_id = node_id;
        self
    }

    /// Fresh keys for the next epoch of this node (same id, epoch + 1), from the operating
    /// system's random source.
    pub fn next(&self) -> Result<Self> {
        let epoch = self.public.epoch.checked_add(1).ok_or_else(|| {
            Error::new(
                ErrorKind::Validation,
                "the key epoch cannot grow any further",
            )
        })?;
        Ok(
            Self::from_secrets(SigningSecret::generate()?, KemSecret::generate()?, epoch)
                .with_node_id(self.public.node_id.clone()),
        )
    }

    /// The node id.
    pub fn node_id(&self) -> &NodeId {
        &self.public.node_id
    }

    /// The public keys.
    pub fn public(&self) -> &PublicIdentity {
        &self.public
    }

    /// The signing secret.
    pub fn signing(&self) -> &SigningSecret {
        &self.signing
    }

    /// The decryption secret.
    pub fn kem(&self) -> &KemSecret {
        &self.kem
    }

    /// Loads the identity file, or creates one (mode 0600) when there is none. Returns the
    /// identity and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool)> {
        match std::fs::File::open(path) {
            Ok(file) => Ok((Self::read(file, path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Self::generate()?;
                identity.write_new(path)?;
                Ok((identity, true))
            }
            Err(e) => Err(cannot_open(path, "identity file", e)),
        }
    }

    /// Loads an existing identity file (one that others can read is refused).
    pub fn load(path: &Path) -> Result<Self> {
        Self::read(open_secret_file(path, "identity file")?, path)
    }

    fn read(file: std::fs::File, path: &Path) -> Result<Self> {
        let bytes = read_secret_file(file, path, "identity file", MAGIC.len() + BODY_LEN)?;
        let bad = |why: &str| {
            Error::new(
                ErrorKind::Config,
                format!("identity file {} is invalid: {why}", path.display()),
            )
        };
        let (node_id, body) = if let Some(rest) = bytes.strip_prefix(MAGIC) {
            (None, rest)
        } else if let Some(rest) = bytes.strip_prefix(MAGIC_V2)
            && rest.len() >= 32
        {
            let id: [u8; 32] = rest[..32].try_into().expect("32 bytes");
            (Some(NodeId::from_bytes(id)), &rest[32..])
        } else {
            return Err(bad("unknown format"));
        };
        if body.len() != BODY_LEN {
            return Err(bad(&format!(
                "expected {BODY_LEN} key bytes, found {}",
                body.len()
            )));
        }
        let epoch = u32::from_be_bytes(body[0..4].try_into().expect("4 bytes"));
        let mut signing = SigningSeeds {
            ed25519: [0; 32],
            ml_dsa: [0; 32],
        };
        signing.ed25519.copy_from_slice(&body[4..36]);
        signing.ml_dsa.copy_from_slice(&body[36..68]);
        let mut kem = KemSeeds {
            x25519: [0; 32],
            ml_kem: [0; 64],
        };
        kem.x25519.copy_from_slice(&body[68..100]);
        kem.ml_kem.copy_from_slice(&body[100..164]);
        if epoch == 0 {
            return Err(bad("key epoch 0"));
        }
        let identity = Self::from_seeds(&signing, &kem, epoch);
        match node_id {
            None => Ok(identity),
            Some(_) if epoch < 2 => Err(bad("a rotated identity with key epoch 1")),
            Some(id) => Ok(identity.with_node_id(id)),
        }
    }

    /// Replaces the identity file at `path` atomically (a new file, mode 0600, renamed over
    /// the old one, directory synced): a crash leaves either the old or the new keys.
    pub fn replace_file(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("key.new");
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.write_new(&tmp)?;
        std::fs::rename(&tmp, path).map_err(|e| {
            Error::with_source(
                ErrorKind::Io,
                format!("cannot replace identity file {}: {e}", path.display()),
                e,
            )
        })?;
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            d.sync_all()?;
        }
        Ok(())
    }

    /// Writes the identity to a new file (mode 0600); an existing file is never overwritten.
    pub fn write_new(&self, path: &Path) -> Result<()> {
        let mut bytes = Zeroizing::new(Vec::with_capacity(MAGIC_V2.len() + 32 + BODY_LEN));
        if node_id_for(&self.public.signing) == self.public.node_id {
            bytes.extend_from_slice(MAGIC);
        } else {
            bytes.extend_from_slice(MAGIC_V2);
            let mut id = [0u8; 32];
            hex::decode_to_slice(self.public.node_id.as_str(), &mut id)
                .expect("node ids are 64 hex digits");
            bytes.extend_from_slice(&id);
        }
        bytes.extend_from_slice(&self.public.epoch.to_be_bytes());
        let signing = self.signing.to_seeds();
        let kem = self.kem.to_seeds();
        bytes.extend_from_slice(&signing.ed25519);
        bytes.extend_from_slice(&signing.ml_dsa);
        bytes.extend_from_slice(&kem.x25519);
        bytes.extend_from_slice(&kem.ml_kem);
        let written = write_secret_file(path, &bytes, "identity file");
        bytes.zeroize();
        written
    }
}

/// Creates `path` (which must not exist) with mode 0600 and writes the secret `bytes` to it,
/// synced to disk; `what` names the file in errors.
pub(crate) fn write_secret_file(path: &Path, bytes: &[u8], what: &str) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| {
        Error::with_source(
            ErrorKind::Io,
            format!("cannot create {what} {}: {e}", path.display()),
            e,
        )
    })?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// Opens the secret file `path`; `what` names it in errors.
pub(crate) fn open_secret_file(path: &Path, what: &str) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| cannot_open(path, what, e))
}

fn cannot_open(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::with_source(
        ErrorKind::Io,
        format!("cannot open {what} {}: {e}", path.display()),
        e,
    )
}

/// Reads the secret file `file` (opened from `path`) whole, into a buffer of `expected_len`
/// bytes (so that no copy of the secret is left behind by a reallocation) that is zeroized
/// when dropped; refuses a file that others can read. `what` names the file in errors.
pub(crate) fn read_secret_file(
    mut file: std::fs::File,
    path: &Path,
    what: &str,
    expected_len: usize,
) -> Result<Zeroizing<Vec<u8>>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mode = file.metadata()?.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{what} {} is readable by others (mode {mode:o}); run `chmod 600` on it",
                    path.display()
                ),
            ));
        }
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(expected_len));
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Asserts that the secret file at `path` (written by [`write_secret_file`]) has mode 0600,
/// then makes it readable by others and asserts that `read` refuses it.
#[cfg(all(test, unix))]
pub(crate) fn assert_private_secret_file<T: fmt::Debug>(
    path: &Path,
    read: impl Fn(&Path) -> Result<T>,
) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = read(path).unwrap_err();
    assert!(err.to_string().contains("readable by others"), "{err}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_file_round_trips_with_mode_0600_and_a_stable_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let (a, created) = Identity::load_or_create(&path).unwrap();
        assert!(created);
        let (b, created) = Identity::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a.node_id(), b.node_id());
        assert_eq!(a.public(), b.public());
        assert_eq!(node_id_for(&a.public().signing), *a.node_id());
        #[cfg(unix)]
        assert_private_secret_file(&path, Identity::load_or_create);
    }

    #[test]
    fn damaged_identity_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&path).unwrap();
        f.write_all(b"crabnet-identity-v1\nshort").unwrap();
        drop(f);
        let err = Identity::load_or_create(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("expected 164 key bytes"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let id = Identity::from_seeds(
            &SigningSeeds {
                ed25519: [0x11; 32],
                ml_dsa: [0x22; 32],
            },
            &KemSeeds {
                x25519: [0x33; 32],
                ml_kem: [0x44; 64],
            },
            1,
        );
        let text = format!("{id:?}");
        assert!(text.contains("redacted"));
        for secret in ["1111", "2222", "3333", "4444", "17, 17"] {
            assert!(!text.contains(secret), "{text}");
        }
    }
}
