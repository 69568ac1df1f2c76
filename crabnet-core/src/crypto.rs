//! Hybrid (classical + post-quantum) primitives for Crabnet.
//!
//! This is the only module that talks to the primitive crates. Everything that touches
//! `libcrux` types lives in the private `pq` submodule and works on plain byte arrays, so
//! switching to another ML-KEM / ML-DSA backend is a change inside this file.
//!
//! # Signatures
//!
//! A [`SigningSecret`] holds two 32-byte seeds: an Ed25519 secret key and an ML-DSA-44
//! (FIPS 204) key-generation seed. [`SigningSecret::sign`] produces a [`DualSignature`] made of
//! both signatures, and [`SigningPublic::verify`] accepts only if **both** verify.
//!
//! Both signatures are bound to a caller-chosen `context` (at most [`MAX_CONTEXT_LEN`] bytes):
//! ML-DSA-44 uses its native context string (pure ML-DSA, FIPS 204 Algorithm 2), and Ed25519
//! (RFC 8032 pure Ed25519, which has no context parameter) signs the same framing that FIPS 204
//! uses internally:
//!
//! ```text
//! ed25519 message = 0x00 || u8(len(context)) || context || msg
//! ```
//!
//! Ed25519 verification uses `verify_strict` (rejects small-order keys and `R`, non-canonical
//! `S`), and [`SigningPublic::from_bytes`] only accepts canonical, non-small-order Ed25519 keys.
//!
//! # Hybrid multi-recipient sealing
//!
//! [`seal`] encrypts a payload once with ChaCha20-Poly1305 under a random 32-byte content key
//! (random 12-byte nonce, caller `aad` bound). One ephemeral X25519 key is drawn per call and
//! shared by all recipients. For each recipient (an id and a [`KemPublic`]):
//!
//! 1. `(ct, ss_mlkem) = ML-KEM-768.Encaps(recipient.ml_kem, 32 fresh random bytes)`
//! 2. `ss_x25519 = X25519(ephemeral_secret, recipient.x25519)` (all-zero result rejected)
//! 3. `wrap_key = HKDF-SHA256(salt = empty, ikm = ss_mlkem || ss_x25519, info, L = 32)` with
//!    the `info` layout below
//! 4. `wrapped_key = ChaCha20-Poly1305(wrap_key, nonce = 12 zero bytes, aad = recipient id,
//!    content_key)` (48 bytes). The all-zero nonce is sound because every wrap key is fresh
//!    (it depends on fresh ML-KEM randomness) and encrypts exactly one message.
//!
//! HKDF `info` (byte by byte, `||` is concatenation):
//!
//! | offset | length | content |
//! |---|---|---|
//! | 0 | 15 | ASCII `crabnet/v1/wrap` ([`WRAP_INFO_LABEL`]) |
//! | 15 | 32 | ephemeral X25519 public key ([`Sealed::ephemeral_x25519`]) |
//! | 47 | 32 | recipient X25519 public key |
//! | 79 | 1088 | ML-KEM-768 ciphertext for this recipient |
//! | 1167 | 2 | length of the recipient id, unsigned big-endian `u16` |
//! | 1169 | n | recipient id bytes |
//!
//! Like X-Wing, the X25519 part binds the ephemeral and recipient X25519 keys, which makes the
//! shared ephemeral key safe to reuse across recipients (Bellare, Boldyreva, Staddon, PKC 2003);
//! the ML-KEM shared secret already binds the recipient's ML-KEM key (FIPS 203 hashes `H(ek)`
//! into it), and the ciphertext and id are bound as well.
//!
//! Randomness is drawn from the caller's `rng` in this fixed order (part of the contract for
//! committed test vectors): content key (32 bytes), payload nonce (12), ephemeral X25519 secret
//! (32), then 32 bytes of ML-KEM encapsulation randomness per recipient in `recipients` order.
//!
//! [`seal`] provides confidentiality only. Any recipient learns the content key and could
//! re-encrypt a different payload for the other recipients, so the sender must be
//! authenticated by a signature over the sealed bytes (the envelope layer's job).
//!
//! # Secrets
//!
//! Secret types are built from seeds and store them (seeds are what gets written to disk),
//! together with the expanded ML-DSA-44 signing key and ML-KEM-768 decapsulation key derived
//! from them once, at construction: signing and opening then cost the library calls alone,
//! not a key generation each. Everything secret lives on the heap (moving a handle does not
//! copy key bytes), is wiped on drop, and prints `<redacted>` in `Debug`. Wiping is best
//! effort: the primitive crates take some arguments by value and may leave copies on the
//! stack.
//!
//! # The floor
//!
//! [`RawSignatures`] makes the bare library calls behind [`SigningSecret::sign`] and
//! [`SigningPublic::verify`] with every key expanded and every input prepared in advance: the
//! floor that the benchmarks and `crabnet bench` measure the envelope layer and the node
//! against.

use std::collections::HashSet;
use std::fmt;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use ed25519_dalek::{
    Signature as Ed25519Signature, Signer as _, SigningKey as Ed25519SigningKey,
    VerifyingKey as Ed25519VerifyingKey,
};
use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{PublicKey as X25519PublicKey, StaticSecret as X25519Secret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of an ML-KEM-768 public (encapsulation) key in bytes.
pub const ML_KEM_768_PUBLIC_KEY_LEN: usize = 1184;
/// Length of an ML-KEM-768 ciphertext in bytes.
pub const ML_KEM_768_CIPHERTEXT_LEN: usize = 1088;
/// Length of an ML-KEM-768 key-generation seed (`d || z`, FIPS 203) in bytes.
pub const ML_KEM_768_SEED_LEN: usize = 64;
/// Length of an ML-DSA-44 verification key in bytes.
pub const ML_DSA_44_VERIFYING_KEY_LEN: usize = 1312;
/// Length of an ML-DSA-44 signature in bytes.
pub const ML_DSA_44_SIGNATURE_LEN: usize = 2420;
/// Length of an ML-DSA-44 key-generation seed (`ξ`, FIPS 204) in bytes.
pub const ML_DSA_44_SEED_LEN: usize = 32;
/// Length of an Ed25519 public key in bytes.
pub const ED25519_PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature in bytes.
pub const ED25519_SIGNATURE_LEN: usize = 64;
/// Length of an Ed25519 secret key (seed) in bytes.
pub const ED25519_SEED_LEN: usize = 32;
/// Length of an X25519 public key in bytes.
pub const X25519_PUBLIC_KEY_LEN: usize = 32;
/// Length of an X25519 secret key in bytes.
pub const X25519_SECRET_LEN: usize = 32;
/// Length of [`SigningPublic::to_bytes`]: Ed25519 key then ML-DSA-44 key.
pub const SIGNING_PUBLIC_LEN: usize = ED25519_PUBLIC_KEY_LEN + ML_DSA_44_VERIFYING_KEY_LEN;
/// Length of [`DualSignature::to_bytes`]: Ed25519 signature then ML-DSA-44 signature.
pub const DUAL_SIGNATURE_LEN: usize = ED25519_SIGNATURE_LEN + ML_DSA_44_SIGNATURE_LEN;
/// Length of [`KemPublic::to_bytes`]: X25519 key then ML-KEM-768 key.
pub const KEM_PUBLIC_LEN: usize = X25519_PUBLIC_KEY_LEN + ML_KEM_768_PUBLIC_KEY_LEN;
/// Length of the ChaCha20-Poly1305 nonce of a [`Sealed`] payload.
pub const NONCE_LEN: usize = 12;
/// Length of a ChaCha20-Poly1305 authentication tag.
pub const AEAD_TAG_LEN: usize = 16;
/// Length of the symmetric content key and of each wrap key.
pub const CONTENT_KEY_LEN: usize = 32;
/// Length of [`RecipientEntry::wrapped_key`]: encrypted content key plus tag.
pub const WRAPPED_KEY_LEN: usize = CONTENT_KEY_LEN + AEAD_TAG_LEN;
/// Longest signature context accepted (the FIPS 204 limit).
pub const MAX_CONTEXT_LEN: usize = 255;
/// Longest recipient id accepted (its length is encoded as a `u16` in the HKDF info).
pub const MAX_RECIPIENT_ID_LEN: usize = u16::MAX as usize;
/// Label at the start of the HKDF info that derives each wrap key.
pub const WRAP_INFO_LABEL: &[u8] = b"crabnet/v1/wrap";

/// Nonce of the content-key wrap: each wrap key encrypts exactly one message.
const WRAP_NONCE: [u8; NONCE_LEN] = [0u8; NONCE_LEN];
/// Fixed X25519 scalar used to detect small-order public keys (any clamped scalar works).
const LOW_ORDER_PROBE: [u8; 32] = [0x5a; 32];

/// Which half of a [`DualSignature`] is meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureAlgorithm {
    /// Ed25519 (RFC 8032).
    Ed25519,
    /// ML-DSA-44 (FIPS 204).
    MlDsa44,
}

impl fmt::Display for SignatureAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureAlgorithm::Ed25519 => "Ed25519",
            SignatureAlgorithm::MlDsa44 => "ML-DSA-44",
        })
    }
}

/// Errors of this module. They never contain secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// An input had the wrong length.
    #[error("{what}: expected {expected} bytes, got {got}")]
    BadLength {
        /// What was being parsed.
        what: &'static str,
        /// The required length (the maximum for variable-length inputs).
        expected: usize,
        /// The length that was given.
        got: usize,
    },
    /// A public key is malformed or unusable (e.g. an Ed25519 point that does not decode, a
    /// small-order point, or an ML-KEM key whose coefficients are out of range).
    #[error("invalid {0} public key")]
    InvalidPublicKey(&'static str),
    /// The named signature did not verify.
    #[error("{0} signature is invalid")]
    SignatureInvalid(SignatureAlgorithm),
    /// A signature context is longer than [`MAX_CONTEXT_LEN`] bytes.
    #[error("signature context is {0} bytes, at most 255 allowed")]
    ContextTooLong(usize),
    /// A recipient id is longer than [`MAX_RECIPIENT_ID_LEN`] bytes.
    #[error("recipient id is {0} bytes, at most 65535 allowed")]
    RecipientIdTooLong(usize),
    /// [`seal`] was called without recipients.
    #[error("no recipients")]
    NoRecipients,
    /// [`seal`] was given the same recipient id twice.
    #[error("duplicate recipient id")]
    DuplicateRecipient,
    /// [`open`] found no entry for the given id.
    #[error("not a recipient of this sealed payload")]
    NotARecipient,
    /// Authenticated decryption failed: wrong key, or the sealed data or aad were altered.
    #[error("decryption failed")]
    DecryptFailed,
    /// The payload is too large for ChaCha20-Poly1305.
    #[error("payload too large")]
    PayloadTooLarge,
    /// ML-DSA signing gave up (rejection sampling did not terminate in its bound).
    #[error("ML-DSA-44 signing failed")]
    SigningFailed,
    /// The operating system random number generator failed.
    #[error("random number generator failed")]
    Rng,
}

// ---------------------------------------------------------------------------------------------
// Seeds and secrets
// ---------------------------------------------------------------------------------------------

/// The two seeds a [`SigningSecret`] is made of. Wiped on drop; `Debug` prints `<redacted>`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SigningSeeds {
    /// Ed25519 secret key (RFC 8032 32-byte seed).
    pub ed25519: [u8; ED25519_SEED_LEN],
    /// ML-DSA-44 key-generation seed `ξ` (FIPS 204).
    pub ml_dsa: [u8; ML_DSA_44_SEED_LEN],
}

/// The two seeds a [`KemSecret`] is made of. Wiped on drop; `Debug` prints `<redacted>`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct KemSeeds {
    /// X25519 secret key (clamped when used).
    pub x25519: [u8; X25519_SECRET_LEN],
    /// ML-KEM-768 key-generation seed `d || z` (FIPS 203).
    pub ml_kem: [u8; ML_KEM_768_SEED_LEN],
}

/// Implements `Debug` as `Name(<redacted>)`, for the types that hold secrets.
macro_rules! redacted_debug {
    ($($name:ident),+) => {$(
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    )+};
}

redacted_debug!(SigningSeeds, KemSeeds, SigningSecret, KemSecret);

/// Boxed seeds `$seeds { $a, $b }` (two byte arrays) filled from the operating system RNG, for
/// a secret's `generate`; returns the RNG's error from the calling function.
macro_rules! random_seeds {
    ($seeds:ident, $a:ident, $b:ident) => {{
        let mut seeds = Box::new($seeds {
            $a: [0; _],
            $b: [0; _],
        });
        fill_random(&mut seeds.$a)?;
        fill_random(&mut seeds.$b)?;
        seeds
    }};
}

/// A signing identity: an Ed25519 key and an ML-DSA-44 seed, wiped on drop.
pub struct SigningSecret {
    inner: Box<SigningInner>,
}

struct SigningInner {
    /// Holds the 32-byte seed (and the public key); wipes itself on drop.
    ed25519: Ed25519SigningKey,
    ml_dsa_seed: Zeroizing<[u8; ML_DSA_44_SEED_LEN]>,
    /// Expanded from `ml_dsa_seed` once; wipes itself on drop.
    ml_dsa_key: pq::DsaSigningKey,
    ml_dsa_public: Box<[u8; ML_DSA_44_VERIFYING_KEY_LEN]>,
}

impl SigningSecret {
    /// Generates fresh seeds from the operating system RNG.
    pub fn generate() -> Result<Self, CryptoError> {
        let seeds = random_seeds!(SigningSeeds, ed25519, ml_dsa);
        Ok(Self::from_seeds(&seeds))
    }

    /// Rebuilds a secret from its seeds (deterministic: same seeds, same keys). Runs ML-DSA-44
    /// key generation once; the expanded key is kept for signing.
    pub fn from_seeds(seeds: &SigningSeeds) -> Self {
        let (ml_dsa_key, ml_dsa_public) = pq::ml_dsa_key_pair(&seeds.ml_dsa);
        Self {
            inner: Box::new(SigningInner {
                ed25519: Ed25519SigningKey::from_bytes(&seeds.ed25519),
                ml_dsa_seed: Zeroizing::new(seeds.ml_dsa),
                ml_dsa_key,
                ml_dsa_public,
            }),
        }
    }

    /// Returns the seeds, for storage. The container wipes itself on drop.
    pub fn to_seeds(&self) -> SigningSeeds {
        SigningSeeds {
            ed25519: self.inner.ed25519.to_bytes(),
            ml_dsa: *self.inner.ml_dsa_seed,
        }
    }

    /// The public keys.
    pub fn public(&self) -> SigningPublic {
        SigningPublic {
            ed25519: self.inner.ed25519.verifying_key(),
            ml_dsa: self.inner.ml_dsa_public.clone(),
        }
    }

    /// Signs `msg` under `context` with both algorithms.
    ///
    /// `ml_dsa_randomness` must be 32 fresh random bytes per signature (hedged ML-DSA); all
    /// zeros gives the deterministic variant, for committed test vectors only. Ed25519 is
    /// deterministic. Fails if `context` is longer than [`MAX_CONTEXT_LEN`].
    pub fn sign(
        &self,
        msg: &[u8],
        context: &[u8],
        ml_dsa_randomness: [u8; 32],
    ) -> Result<DualSignature, CryptoError> {
        check_context(context)?;
        let framed = ed25519_framed_message(msg, context);
        let ed25519 = self.inner.ed25519.sign(&framed).to_bytes();
        let ml_dsa = pq::ml_dsa_sign(&self.inner.ml_dsa_key, msg, context, ml_dsa_randomness)?;
        Ok(DualSignature { ed25519, ml_dsa })
    }

    /// Like [`SigningSecret::sign`], with ML-DSA randomness from the operating system RNG.
    pub fn sign_random(&self, msg: &[u8], context: &[u8]) -> Result<DualSignature, CryptoError> {
        let mut randomness = Zeroizing::new([0u8; 32]);
        fill_random(&mut randomness[..])?;
        self.sign(msg, context, *randomness)
    }
}

/// A decryption identity: an X25519 secret and an ML-KEM-768 seed, wiped on drop.
pub struct KemSecret {
    inner: Box<KemInner>,
}

struct KemInner {
    /// Wipes itself on drop.
    x25519: X25519Secret,
    /// Public, cached because [`open`] needs it for the HKDF info.
    x25519_public: [u8; X25519_PUBLIC_KEY_LEN],
    ml_kem_seed: Zeroizing<[u8; ML_KEM_768_SEED_LEN]>,
    /// Expanded from `ml_kem_seed` once; wipes itself on drop.
    ml_kem_key: pq::KemPrivateKey,
    ml_kem_public: Box<[u8; ML_KEM_768_PUBLIC_KEY_LEN]>,
}

impl KemSecret {
    /// Generates fresh seeds from the operating system RNG.
    pub fn generate() -> Result<Self, CryptoError> {
        let seeds = random_seeds!(KemSeeds, x25519, ml_kem);
        Ok(Self::from_seeds(&seeds))
    }

    /// Rebuilds a secret from its seeds (deterministic: same seeds, same keys). Runs ML-KEM-768
    /// key generation once; the expanded key is kept for opening.
    pub fn from_seeds(seeds: &KemSeeds) -> Self {
        let x25519 = X25519Secret::from(seeds.x25519);
        let x25519_public = X25519PublicKey::from(&x25519).to_bytes();
        let (ml_kem_key, ml_kem_public) = pq::ml_kem_key_pair(&seeds.ml_kem);
        Self {
            inner: Box::new(KemInner {
                x25519,
                x25519_public,
                ml_kem_seed: Zeroizing::new(seeds.ml_kem),
                ml_kem_key,
                ml_kem_public,
            }),
        }
    }

    /// Returns the seeds, for storage. The container wipes itself on drop.
    pub fn to_seeds(&self) -> KemSeeds {
        KemSeeds {
            x25519: self.inner.x25519.to_bytes(),
            ml_kem: *self.inner.ml_kem_seed,
        }
    }

    /// The public keys.
    pub fn public(&self) -> KemPublic {
        KemPublic {
            x25519: self.inner.x25519_public,
            ml_kem: self.inner.ml_kem_public.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Public keys and signatures
// ---------------------------------------------------------------------------------------------

/// The public half of a [`SigningSecret`]. Always holds validated keys.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SigningPublic {
    ed25519: Ed25519VerifyingKey,
    ml_dsa: Box<[u8; ML_DSA_44_VERIFYING_KEY_LEN]>,
}

impl fmt::Debug for SigningPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_pair(
            f,
            "SigningPublic",
            ("ed25519", self.ed25519.as_bytes()),
            ("ml_dsa", &self.ml_dsa[..]),
        )
    }
}

impl SigningPublic {
    /// The Ed25519 public key.
    pub fn ed25519(&self) -> &[u8; ED25519_PUBLIC_KEY_LEN] {
        self.ed25519.as_bytes()
    }

    /// The ML-DSA-44 verification key.
    pub fn ml_dsa(&self) -> &[u8; ML_DSA_44_VERIFYING_KEY_LEN] {
        &self.ml_dsa
    }

    /// Encodes as `ed25519 (32) || ml_dsa (1312)`, [`SIGNING_PUBLIC_LEN`] bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        [&self.ed25519.as_bytes()[..], &self.ml_dsa[..]].concat()
    }

    /// Decodes [`SigningPublic::to_bytes`], checking the length and that the Ed25519 key is a
    /// canonically encoded point that is not of small order.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let (ed, ml) =
            split_fixed::<SIGNING_PUBLIC_LEN>("signing public key", bytes, ED25519_PUBLIC_KEY_LEN)?;
        Ok(Self {
            ed25519: ed25519_verifying_key(fixed_ref("Ed25519 public key", ed)?)?,
            ml_dsa: Box::new(*fixed_ref("ML-DSA-44 verification key", ml)?),
        })
    }

    /// Verifies a [`DualSignature`] over `msg` under `context`. Both halves must verify; the
    /// error names the first one that failed (Ed25519 is checked first).
    pub fn verify(
        &self,
        msg: &[u8],
        context: &[u8],
        signature: &DualSignature,
    ) -> Result<(), CryptoError> {
        check_context(context)?;
        let framed = ed25519_framed_message(msg, context);
        if !ed25519_verify(&self.ed25519, &framed, &signature.ed25519) {
            return Err(CryptoError::SignatureInvalid(SignatureAlgorithm::Ed25519));
        }
        if !pq::ml_dsa_verify(&self.ml_dsa, msg, context, &signature.ml_dsa) {
            return Err(CryptoError::SignatureInvalid(SignatureAlgorithm::MlDsa44));
        }
        Ok(())
    }
}

/// An Ed25519 signature and an ML-DSA-44 signature over the same message and context.
#[derive(Clone, PartialEq, Eq)]
pub struct DualSignature {
    /// The Ed25519 signature over `0x00 || u8(len(context)) || context || msg`.
    pub ed25519: [u8; ED25519_SIGNATURE_LEN],
    /// The ML-DSA-44 signature over `msg` with `context`.
    pub ml_dsa: Box<[u8; ML_DSA_44_SIGNATURE_LEN]>,
}

impl fmt::Debug for DualSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_pair(
            f,
            "DualSignature",
            ("ed25519", &self.ed25519),
            ("ml_dsa", &self.ml_dsa[..]),
        )
    }
}

impl DualSignature {
    /// Encodes as `ed25519 (64) || ml_dsa (2420)`, [`DUAL_SIGNATURE_LEN`] bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        [&self.ed25519[..], &self.ml_dsa[..]].concat()
    }

    /// Decodes [`DualSignature::to_bytes`] (checks the length only).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let (ed, ml) =
            split_fixed::<DUAL_SIGNATURE_LEN>("dual signature", bytes, ED25519_SIGNATURE_LEN)?;
        Ok(Self {
            ed25519: *fixed_ref("Ed25519 signature", ed)?,
            ml_dsa: Box::new(*fixed_ref("ML-DSA-44 signature", ml)?),
        })
    }
}

/// The public half of a [`KemSecret`]. Always holds validated keys.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KemPublic {
    x25519: [u8; X25519_PUBLIC_KEY_LEN],
    ml_kem: Box<[u8; ML_KEM_768_PUBLIC_KEY_LEN]>,
}

impl fmt::Debug for KemPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_pair(
            f,
            "KemPublic",
            ("x25519", &self.x25519),
            ("ml_kem", &self.ml_kem[..]),
        )
    }
}

impl KemPublic {
    /// The X25519 public key.
    pub fn x25519(&self) -> &[u8; X25519_PUBLIC_KEY_LEN] {
        &self.x25519
    }

    /// The ML-KEM-768 encapsulation key.
    pub fn ml_kem(&self) -> &[u8; ML_KEM_768_PUBLIC_KEY_LEN] {
        &self.ml_kem
    }

    /// Encodes as `x25519 (32) || ml_kem (1184)`, [`KEM_PUBLIC_LEN`] bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        [&self.x25519[..], &self.ml_kem[..]].concat()
    }

    /// Decodes [`KemPublic::to_bytes`], checking the length, that the X25519 key is not of
    /// small order, and the FIPS 203 encapsulation-key check (coefficients below q).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let (x, ml) =
            split_fixed::<KEM_PUBLIC_LEN>("KEM public key", bytes, X25519_PUBLIC_KEY_LEN)?;
        Ok(Self {
            x25519: x25519_public_key(fixed_ref("X25519 public key", x)?)?,
            ml_kem: ml_kem_public_key(ml)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The floor
// ---------------------------------------------------------------------------------------------

/// The bare library calls behind [`SigningSecret::sign`] and [`SigningPublic::verify`] for one
/// fixed message and context, with every key expanded and the Ed25519 framing prepared in
/// advance: Ed25519 (dalek, `verify_strict`) and ML-DSA-44 (libcrux) and nothing else. For
/// measurements: what a signature costs when nothing around the libraries costs anything.
pub struct RawSignatures {
    ed25519: Ed25519SigningKey,
    ed25519_public: Ed25519VerifyingKey,
    ml_dsa: pq::RawDsa,
    msg: Vec<u8>,
    framed: Vec<u8>,
    context: Vec<u8>,
}

impl fmt::Debug for RawSignatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawSignatures")
            .field("keys", &"<redacted>")
            .field("msg_len", &self.msg.len())
            .finish()
    }
}

/// A signature made by [`RawSignatures::sign`], in the libraries' own types.
pub struct RawSignature {
    ed25519: Ed25519Signature,
    ml_dsa: pq::RawDsaSignature,
}

impl fmt::Debug for RawSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawSignature")
            .field("ed25519", &Abbrev(&self.ed25519.to_bytes()))
            .finish_non_exhaustive()
    }
}

impl RawSignatures {
    /// Expands the keys of `seeds` and prepares `msg` under `context` (the same bytes
    /// [`SigningSecret::sign`] would sign).
    pub fn new(seeds: &SigningSeeds, msg: &[u8], context: &[u8]) -> Result<Self, CryptoError> {
        check_context(context)?;
        let ed25519 = Ed25519SigningKey::from_bytes(&seeds.ed25519);
        Ok(RawSignatures {
            ed25519_public: ed25519.verifying_key(),
            ed25519,
            ml_dsa: pq::RawDsa::new(&seeds.ml_dsa),
            msg: msg.to_vec(),
            framed: ed25519_framed_message(msg, context),
            context: context.to_vec(),
        })
    }

    /// Signs the prepared message with both algorithms (`ml_dsa_randomness` as in
    /// [`SigningSecret::sign`]).
    pub fn sign(&self, ml_dsa_randomness: [u8; 32]) -> Result<RawSignature, CryptoError> {
        Ok(RawSignature {
            ed25519: self.ed25519.sign(&self.framed),
            ml_dsa: self
                .ml_dsa
                .sign(&self.msg, &self.context, ml_dsa_randomness)?,
        })
    }

    /// Whether both halves of `signature` verify over the prepared message.
    pub fn verify(&self, signature: &RawSignature) -> bool {
        self.ed25519_public
            .verify_strict(&self.framed, &signature.ed25519)
            .is_ok()
            && self
                .ml_dsa
                .verify(&self.msg, &self.context, &signature.ml_dsa)
    }
}

// ---------------------------------------------------------------------------------------------
// Sealing
// ---------------------------------------------------------------------------------------------

/// A payload sealed to one or more recipients. Plain public data, encoded by the envelope layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// ChaCha20-Poly1305 nonce of [`Sealed::ciphertext`].
    pub nonce: [u8; NONCE_LEN],
    /// The ephemeral X25519 public key shared by all recipients.
    pub ephemeral_x25519: [u8; X25519_PUBLIC_KEY_LEN],
    /// The payload encrypted under the content key, tag appended (payload length + 16 bytes).
    pub ciphertext: Vec<u8>,
    /// One entry per recipient, in the order given to [`seal`].
    pub recipients: Vec<RecipientEntry>,
}

/// The content key wrapped for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientEntry {
    /// The recipient id given to [`seal`] (at most [`MAX_RECIPIENT_ID_LEN`] bytes).
    pub id: Vec<u8>,
    /// ML-KEM-768 ciphertext ([`ML_KEM_768_CIPHERTEXT_LEN`] bytes).
    pub ml_kem_ciphertext: Vec<u8>,
    /// The content key encrypted under this recipient's wrap key ([`WRAPPED_KEY_LEN`] bytes).
    pub wrapped_key: Vec<u8>,
}

/// Seals `payload` (with `aad` authenticated but not encrypted) to every `(id, key)` in
/// `recipients`, drawing randomness from `rng` in the order given in the module docs.
///
/// `rng` must fill the buffer with cryptographically secure random bytes; a fixed byte stream
/// gives reproducible output for test vectors. Fails on an empty or duplicate recipient list
/// or an id longer than [`MAX_RECIPIENT_ID_LEN`].
pub fn seal(
    payload: &[u8],
    aad: &[u8],
    recipients: &[(&[u8], &KemPublic)],
    rng: &mut impl FnMut(&mut [u8]),
) -> Result<Sealed, CryptoError> {
    if recipients.is_empty() {
        return Err(CryptoError::NoRecipients);
    }
    let mut seen = HashSet::with_capacity(recipients.len());
    for (id, _) in recipients {
        if id.len() > MAX_RECIPIENT_ID_LEN {
            return Err(CryptoError::RecipientIdTooLong(id.len()));
        }
        if !seen.insert(*id) {
            return Err(CryptoError::DuplicateRecipient);
        }
    }

    let mut content_key = Zeroizing::new([0u8; CONTENT_KEY_LEN]);
    rng(&mut content_key[..]);
    let mut nonce = [0u8; NONCE_LEN];
    rng(&mut nonce);
    let ephemeral = {
        let mut bytes = Zeroizing::new([0u8; X25519_SECRET_LEN]);
        rng(&mut bytes[..]);
        X25519Secret::from(*bytes)
    };
    let ephemeral_x25519 = X25519PublicKey::from(&ephemeral).to_bytes();

    let ciphertext = aead_encrypt(&content_key, &nonce, aad, payload)?;

    let mut entries = Vec::with_capacity(recipients.len());
    for (id, public) in recipients {
        let mut randomness = Zeroizing::new([0u8; 32]);
        rng(&mut randomness[..]);
        let (ml_kem_ciphertext, ss_ml_kem) = pq::ml_kem_encapsulate(&public.ml_kem, *randomness);
        let ss_x25519 = x25519_agree(&ephemeral, &public.x25519)
            .ok_or(CryptoError::InvalidPublicKey("X25519"))?;
        let wrap_key = derive_wrap_key(
            &ss_ml_kem,
            &ss_x25519,
            &ephemeral_x25519,
            &public.x25519,
            &ml_kem_ciphertext,
            id,
        )?;
        let wrapped_key = aead_encrypt(&wrap_key, &WRAP_NONCE, id, &content_key[..])?;
        entries.push(RecipientEntry {
            id: id.to_vec(),
            ml_kem_ciphertext: ml_kem_ciphertext.to_vec(),
            wrapped_key,
        });
    }

    Ok(Sealed {
        nonce,
        ephemeral_x25519,
        ciphertext,
        recipients: entries,
    })
}

/// Like [`seal`], with randomness from the operating system RNG.
pub fn seal_random(
    payload: &[u8],
    aad: &[u8],
    recipients: &[(&[u8], &KemPublic)],
) -> Result<Sealed, CryptoError> {
    let mut failed = false;
    let sealed = seal(payload, aad, recipients, &mut |buf: &mut [u8]| {
        if getrandom::fill(buf).is_err() {
            failed = true;
        }
    });
    if failed {
        return Err(CryptoError::Rng);
    }
    sealed
}

/// Opens a [`Sealed`] payload as recipient `my_id` holding `my_secret`.
///
/// Uses the first entry whose id equals `my_id` ([`CryptoError::NotARecipient`] if none).
/// Any alteration of the sealed data or `aad`, or the wrong secret for `my_id`, gives
/// [`CryptoError::DecryptFailed`] (or a length / public-key error for malformed fields).
pub fn open(
    sealed: &Sealed,
    aad: &[u8],
    my_id: &[u8],
    my_secret: &KemSecret,
) -> Result<Vec<u8>, CryptoError> {
    let entry = sealed
        .recipients
        .iter()
        .find(|entry| entry.id == my_id)
        .ok_or(CryptoError::NotARecipient)?;
    let ml_kem_ciphertext: &[u8; ML_KEM_768_CIPHERTEXT_LEN] =
        fixed_ref("ML-KEM-768 ciphertext", &entry.ml_kem_ciphertext)?;
    let _: &[u8; WRAPPED_KEY_LEN] = fixed_ref("wrapped key", &entry.wrapped_key)?;

    let inner = &my_secret.inner;
    let ss_x25519 = x25519_agree(&inner.x25519, &sealed.ephemeral_x25519)
        .ok_or(CryptoError::InvalidPublicKey("ephemeral X25519"))?;
    let ss_ml_kem = pq::ml_kem_decapsulate(&inner.ml_kem_key, ml_kem_ciphertext);
    let wrap_key = derive_wrap_key(
        &ss_ml_kem,
        &ss_x25519,
        &sealed.ephemeral_x25519,
        &inner.x25519_public,
        ml_kem_ciphertext,
        my_id,
    )?;
    let content_key = Zeroizing::new(aead_decrypt(
        &wrap_key,
        &WRAP_NONCE,
        my_id,
        &entry.wrapped_key,
    )?);
    let content_key: &[u8; CONTENT_KEY_LEN] =
        fixed_ref("content key", &content_key).map_err(|_| CryptoError::DecryptFailed)?;
    aead_decrypt(content_key, &sealed.nonce, aad, &sealed.ciphertext)
}

// ---------------------------------------------------------------------------------------------
// Primitive helpers (the Wycheproof tests call these same functions)
// ---------------------------------------------------------------------------------------------

/// Fills `buf` from the operating system RNG.
fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|_| CryptoError::Rng)
}

/// Views `bytes` as a fixed-size array, or reports its length.
fn fixed_ref<'a, const N: usize>(
    what: &'static str,
    bytes: &'a [u8],
) -> Result<&'a [u8; N], CryptoError> {
    bytes.try_into().map_err(|_| CryptoError::BadLength {
        what,
        expected: N,
        got: bytes.len(),
    })
}

/// Splits `bytes`, which must be `N` long (`what` names them in the error), at `at`.
fn split_fixed<'a, const N: usize>(
    what: &'static str,
    bytes: &'a [u8],
    at: usize,
) -> Result<(&'a [u8], &'a [u8]), CryptoError> {
    let all: &[u8; N] = fixed_ref(what, bytes)?;
    Ok(all.split_at(at))
}

fn check_context(context: &[u8]) -> Result<(), CryptoError> {
    if context.len() > MAX_CONTEXT_LEN {
        return Err(CryptoError::ContextTooLong(context.len()));
    }
    Ok(())
}

/// `0x00 || u8(len(context)) || context || msg`; the caller has checked the context length.
fn ed25519_framed_message(msg: &[u8], context: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(2 + context.len() + msg.len());
    framed.push(0);
    framed.push(context.len() as u8);
    framed.extend_from_slice(context);
    framed.extend_from_slice(msg);
    framed
}

/// Parses an Ed25519 public key: a canonical encoding of a point that is not of small order.
fn ed25519_verifying_key(bytes: &[u8; 32]) -> Result<Ed25519VerifyingKey, CryptoError> {
    let key = Ed25519VerifyingKey::from_bytes(bytes)
        .map_err(|_| CryptoError::InvalidPublicKey("Ed25519"))?;
    if key.is_weak() || key.to_edwards().compress().to_bytes() != *bytes {
        return Err(CryptoError::InvalidPublicKey("Ed25519"));
    }
    Ok(key)
}

/// Strict Ed25519 verification (RFC 8032 with small-order and malleability checks).
fn ed25519_verify(key: &Ed25519VerifyingKey, msg: &[u8], signature: &[u8; 64]) -> bool {
    key.verify_strict(msg, &Ed25519Signature::from_bytes(signature))
        .is_ok()
}

/// X25519; `None` if the result is all zero (the peer key has small order).
fn x25519_agree(secret: &X25519Secret, their_public: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
    let shared = secret.diffie_hellman(&X25519PublicKey::from(*their_public));
    if !shared.was_contributory() {
        return None;
    }
    Some(Zeroizing::new(shared.to_bytes()))
}

/// Rejects small-order X25519 keys (their product with any clamped scalar is zero).
fn x25519_public_key(bytes: &[u8; 32]) -> Result<[u8; 32], CryptoError> {
    match x25519_agree(&X25519Secret::from(LOW_ORDER_PROBE), bytes) {
        Some(_) => Ok(*bytes),
        None => Err(CryptoError::InvalidPublicKey("X25519")),
    }
}

/// Parses and validates an ML-KEM-768 encapsulation key (FIPS 203 section 7.2 check).
fn ml_kem_public_key(bytes: &[u8]) -> Result<Box<[u8; ML_KEM_768_PUBLIC_KEY_LEN]>, CryptoError> {
    let key: &[u8; ML_KEM_768_PUBLIC_KEY_LEN] = fixed_ref("ML-KEM-768 public key", bytes)?;
    if !pq::ml_kem_public_key_is_valid(key) {
        return Err(CryptoError::InvalidPublicKey("ML-KEM-768"));
    }
    Ok(Box::new(*key))
}

/// HKDF-SHA256 with the info given as parts (hashed as their concatenation).
fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[&[u8]], okm: &mut [u8]) -> Result<(), CryptoError> {
    let got = okm.len();
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand_multi_info(info, okm)
        .map_err(|_| CryptoError::BadLength {
            what: "HKDF-SHA256 output (maximum)",
            expected: 255 * 32,
            got,
        })
}

/// The per-recipient wrap key; see the module docs for the exact HKDF input.
fn derive_wrap_key(
    ss_ml_kem: &[u8; 32],
    ss_x25519: &[u8; 32],
    ephemeral_x25519: &[u8; 32],
    recipient_x25519: &[u8; 32],
    ml_kem_ciphertext: &[u8; ML_KEM_768_CIPHERTEXT_LEN],
    recipient_id: &[u8],
) -> Result<Zeroizing<[u8; CONTENT_KEY_LEN]>, CryptoError> {
    let id_len = u16::try_from(recipient_id.len())
        .map_err(|_| CryptoError::RecipientIdTooLong(recipient_id.len()))?
        .to_be_bytes();
    let mut ikm = Zeroizing::new([0u8; 64]);
    ikm[..32].copy_from_slice(ss_ml_kem);
    ikm[32..].copy_from_slice(ss_x25519);
    let mut wrap_key = Zeroizing::new([0u8; CONTENT_KEY_LEN]);
    hkdf_sha256(
        &[],
        &ikm[..],
        &[
            WRAP_INFO_LABEL,
            ephemeral_x25519,
            recipient_x25519,
            ml_kem_ciphertext,
            &id_len,
            recipient_id,
        ],
        &mut wrap_key[..],
    )?;
    Ok(wrap_key)
}

/// ChaCha20-Poly1305 encryption; returns ciphertext with the 16-byte tag appended.
fn aead_encrypt(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    ChaCha20Poly1305::new(key.into())
        .encrypt(
            nonce.into(),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::PayloadTooLarge)
}

/// ChaCha20-Poly1305 decryption of ciphertext-with-tag.
fn aead_decrypt(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    ChaCha20Poly1305::new(key.into())
        .decrypt(
            nonce.into(),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| CryptoError::DecryptFailed)
}

/// `Debug` helper for long public byte strings: first bytes in hex and the length.
struct Abbrev<'a>(&'a [u8]);

impl fmt::Debug for Abbrev<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0.iter().take(8) {
            write!(f, "{byte:02x}")?;
        }
        if self.0.len() > 8 {
            f.write_str("..")?;
        }
        write!(f, " ({} bytes)", self.0.len())
    }
}

/// `Debug` of a public two-part value (keys or signatures): `name { a: .., b: .. }`, each part
/// abbreviated.
fn debug_pair(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    (a_name, a): (&str, &[u8]),
    (b_name, b): (&str, &[u8]),
) -> fmt::Result {
    f.debug_struct(name)
        .field(a_name, &Abbrev(a))
        .field(b_name, &Abbrev(b))
        .finish()
}

// ---------------------------------------------------------------------------------------------
// libcrux backend: the only code that names libcrux types
// ---------------------------------------------------------------------------------------------

/// ML-KEM-768 and ML-DSA-44 through libcrux, on plain byte arrays.
mod pq {
    use libcrux_ml_dsa::SigningError;
    use libcrux_ml_dsa::ml_dsa_44::{
        self, MLDSA44Signature, MLDSA44SigningKey, MLDSA44VerificationKey,
    };
    use libcrux_ml_kem::mlkem768::{
        self, MlKem768Ciphertext, MlKem768PrivateKey, MlKem768PublicKey,
    };
    use zeroize::{Zeroize, Zeroizing};

    use super::{
        CryptoError, ML_DSA_44_SEED_LEN, ML_DSA_44_SIGNATURE_LEN, ML_DSA_44_VERIFYING_KEY_LEN,
        ML_KEM_768_CIPHERTEXT_LEN, ML_KEM_768_PUBLIC_KEY_LEN, ML_KEM_768_SEED_LEN,
    };

    const _: () = {
        assert!(MLDSA44VerificationKey::len() == ML_DSA_44_VERIFYING_KEY_LEN);
        assert!(MLDSA44Signature::len() == ML_DSA_44_SIGNATURE_LEN);
        assert!(libcrux_ml_dsa::KEY_GENERATION_RANDOMNESS_SIZE == ML_DSA_44_SEED_LEN);
        assert!(MlKem768PublicKey::len() == ML_KEM_768_PUBLIC_KEY_LEN);
        assert!(MlKem768Ciphertext::len() == ML_KEM_768_CIPHERTEXT_LEN);
        assert!(libcrux_ml_kem::KEY_GENERATION_SEED_SIZE == ML_KEM_768_SEED_LEN);
    };

    /// Expanded ML-DSA-44 signing key; libcrux types do not wipe themselves.
    pub(super) struct DsaSigningKey(MLDSA44SigningKey);

    impl Drop for DsaSigningKey {
        fn drop(&mut self) {
            self.0.as_mut_slice().zeroize();
        }
    }

    /// Expanded ML-KEM-768 decapsulation key; libcrux types do not wipe themselves.
    pub(super) struct KemPrivateKey(MlKem768PrivateKey);

    impl Drop for KemPrivateKey {
        fn drop(&mut self) {
            self.0[0..].zeroize();
        }
    }

    fn dsa_key_pair(seed: &[u8; ML_DSA_44_SEED_LEN]) -> (DsaSigningKey, MLDSA44VerificationKey) {
        let pair = ml_dsa_44::generate_key_pair(*seed);
        (DsaSigningKey(pair.signing_key), pair.verification_key)
    }

    fn kem_key_pair(seed: &[u8; ML_KEM_768_SEED_LEN]) -> (KemPrivateKey, MlKem768PublicKey) {
        let (private, public) = mlkem768::generate_key_pair(*seed).into_parts();
        (KemPrivateKey(private), public)
    }

    /// ML-DSA-44 key generation: the expanded signing key and the encoded verification key.
    pub(super) fn ml_dsa_key_pair(
        seed: &[u8; ML_DSA_44_SEED_LEN],
    ) -> (DsaSigningKey, Box<[u8; ML_DSA_44_VERIFYING_KEY_LEN]>) {
        let (signing_key, verification_key) = dsa_key_pair(seed);
        (signing_key, Box::new(*verification_key.as_ref()))
    }

    /// ML-KEM-768 key generation: the expanded decapsulation key and the encapsulation key.
    pub(super) fn ml_kem_key_pair(
        seed: &[u8; ML_KEM_768_SEED_LEN],
    ) -> (KemPrivateKey, Box<[u8; ML_KEM_768_PUBLIC_KEY_LEN]>) {
        let (private, public) = kem_key_pair(seed);
        (private, Box::new(*public.as_slice()))
    }

    #[cfg(test)]
    pub(super) fn ml_dsa_verifying_key(
        seed: &[u8; ML_DSA_44_SEED_LEN],
    ) -> Box<[u8; ML_DSA_44_VERIFYING_KEY_LEN]> {
        ml_dsa_key_pair(seed).1
    }

    /// The caller has checked the context length; libcrux checks it again.
    pub(super) fn ml_dsa_sign(
        signing_key: &DsaSigningKey,
        msg: &[u8],
        context: &[u8],
        randomness: [u8; 32],
    ) -> Result<Box<[u8; ML_DSA_44_SIGNATURE_LEN]>, CryptoError> {
        match ml_dsa_44::sign(&signing_key.0, msg, context, randomness) {
            Ok(signature) => Ok(Box::new(*signature.as_ref())),
            Err(SigningError::ContextTooLongError) => {
                Err(CryptoError::ContextTooLong(context.len()))
            }
            Err(SigningError::RejectionSamplingError) => Err(CryptoError::SigningFailed),
        }
    }

    pub(super) fn ml_dsa_verify(
        key: &[u8; ML_DSA_44_VERIFYING_KEY_LEN],
        msg: &[u8],
        context: &[u8],
        signature: &[u8; ML_DSA_44_SIGNATURE_LEN],
    ) -> bool {
        let key = MLDSA44VerificationKey::new(*key);
        let signature = MLDSA44Signature::new(*signature);
        ml_dsa_44::verify(&key, msg, context, &signature).is_ok()
    }

    #[cfg(test)]
    pub(super) fn ml_kem_public_key(
        seed: &[u8; ML_KEM_768_SEED_LEN],
    ) -> Box<[u8; ML_KEM_768_PUBLIC_KEY_LEN]> {
        ml_kem_key_pair(seed).1
    }

    pub(super) fn ml_kem_public_key_is_valid(key: &[u8; ML_KEM_768_PUBLIC_KEY_LEN]) -> bool {
        mlkem768::validate_public_key(&MlKem768PublicKey::from(key))
    }

    /// The caller passes a key that passed `ml_kem_public_key_is_valid`.
    pub(super) fn ml_kem_encapsulate(
        key: &[u8; ML_KEM_768_PUBLIC_KEY_LEN],
        randomness: [u8; 32],
    ) -> (Box<[u8; ML_KEM_768_CIPHERTEXT_LEN]>, Zeroizing<[u8; 32]>) {
        let (ciphertext, shared) = mlkem768::encapsulate(&MlKem768PublicKey::from(key), randomness);
        (Box::new(*ciphertext.as_slice()), Zeroizing::new(shared))
    }

    /// Implicit rejection: a bad ciphertext gives a pseudorandom secret, never an error.
    pub(super) fn ml_kem_decapsulate(
        private: &KemPrivateKey,
        ciphertext: &[u8; ML_KEM_768_CIPHERTEXT_LEN],
    ) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(mlkem768::decapsulate(
            &private.0,
            &MlKem768Ciphertext::from(ciphertext),
        ))
    }

    /// ML-DSA-44 with both keys held in libcrux's own types: the floor ([`super::RawSignatures`]).
    pub(super) struct RawDsa {
        signing_key: DsaSigningKey,
        verification_key: MLDSA44VerificationKey,
    }

    /// An ML-DSA-44 signature in libcrux's own type.
    pub(super) struct RawDsaSignature(MLDSA44Signature);

    #[cfg(test)]
    impl RawDsaSignature {
        pub(super) fn bytes(&self) -> &[u8] {
            self.0.as_ref()
        }
    }

    impl RawDsa {
        pub(super) fn new(seed: &[u8; ML_DSA_44_SEED_LEN]) -> Self {
            let (signing_key, verification_key) = dsa_key_pair(seed);
            RawDsa {
                signing_key,
                verification_key,
            }
        }

        pub(super) fn sign(
            &self,
            msg: &[u8],
            context: &[u8],
            randomness: [u8; 32],
        ) -> Result<RawDsaSignature, CryptoError> {
            ml_dsa_44::sign(&self.signing_key.0, msg, context, randomness)
                .map(RawDsaSignature)
                .map_err(|_| CryptoError::SigningFailed)
        }

        pub(super) fn verify(&self, msg: &[u8], context: &[u8], sig: &RawDsaSignature) -> bool {
            ml_dsa_44::verify(&self.verification_key, msg, context, &sig.0).is_ok()
        }
    }

    /// The expanded decapsulation key, for the Wycheproof key-generation vectors.
    #[cfg(test)]
    pub(super) fn ml_kem_expanded_private_key(seed: &[u8; ML_KEM_768_SEED_LEN]) -> Vec<u8> {
        let (private, _public) = kem_key_pair(seed);
        private.0.as_slice().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    const CTX: &[u8] = b"crabnet/v1/test";

    fn signing_secret(n: u8) -> SigningSecret {
        SigningSecret::from_seeds(&SigningSeeds {
            ed25519: [n; 32],
            ml_dsa: [n ^ 0x80; 32],
        })
    }

    fn kem_secret(n: u8) -> KemSecret {
        KemSecret::from_seeds(&KemSeeds {
            x25519: [n; 32],
            ml_kem: [n ^ 0x80; 64],
        })
    }

    /// Deterministic byte stream (SHA-256 in counter mode) standing in for an RNG.
    fn test_rng(seed: u8) -> impl FnMut(&mut [u8]) {
        let mut stream = Vec::new();
        let mut counter = 0u64;
        move |buf: &mut [u8]| {
            while stream.len() < buf.len() {
                let block = Sha256::new()
                    .chain_update([seed])
                    .chain_update(counter.to_be_bytes())
                    .finalize();
                counter += 1;
                stream.extend_from_slice(&block);
            }
            buf.copy_from_slice(&stream[..buf.len()]);
            stream.drain(..buf.len());
        }
    }

    // ----- signatures -------------------------------------------------------------------------

    #[test]
    fn the_floor_signs_the_same_bytes_as_the_secret_and_checks_both_halves() {
        let seeds = SigningSeeds {
            ed25519: [5; 32],
            ml_dsa: [6; 32],
        };
        let secret = SigningSecret::from_seeds(&seeds);
        let raw = RawSignatures::new(&seeds, b"message", CTX).unwrap();
        let ours = secret.sign(b"message", CTX, [0; 32]).unwrap();
        let floor = raw.sign([0; 32]).unwrap();
        assert_eq!(floor.ed25519.to_bytes(), ours.ed25519);
        assert_eq!(floor.ml_dsa.bytes()[..], ours.ml_dsa[..]);
        assert!(raw.verify(&floor));
        // Another message, another context, or another key: refused.
        for other in [
            RawSignatures::new(&seeds, b"messagf", CTX).unwrap(),
            RawSignatures::new(&seeds, b"message", b"other").unwrap(),
        ] {
            assert!(!other.verify(&floor));
        }
        let stranger = SigningSeeds {
            ed25519: [5; 32],
            ml_dsa: [7; 32],
        };
        assert!(
            !RawSignatures::new(&stranger, b"message", CTX)
                .unwrap()
                .verify(&floor)
        );
        assert!(RawSignatures::new(&seeds, b"m", &[0; 256]).is_err());
    }

    #[test]
    fn secrets_keep_expanded_keys_that_match_their_seeds() {
        // The cached expanded keys give what keys derived from the seeds give.
        let secret = signing_secret(9);
        let (key, public) = pq::ml_dsa_key_pair(&secret.to_seeds().ml_dsa);
        assert_eq!(secret.public().ml_dsa()[..], public[..]);
        let sig = secret.sign(b"m", CTX, [0; 32]).unwrap();
        assert_eq!(
            pq::ml_dsa_sign(&key, b"m", CTX, [0; 32]).unwrap(),
            sig.ml_dsa
        );
        let kem = kem_secret(9);
        assert_eq!(
            kem.public().ml_kem()[..],
            pq::ml_kem_key_pair(&kem.to_seeds().ml_kem).1[..]
        );
    }

    #[test]
    fn sign_verify_round_trip() {
        let secret = signing_secret(1);
        let public = secret.public();
        let sig = secret.sign_random(b"hello", CTX).unwrap();
        assert_eq!(public.verify(b"hello", CTX, &sig), Ok(()));
        // Empty message and empty context are fine too.
        let sig2 = secret.sign(b"", b"", [3; 32]).unwrap();
        assert_eq!(public.verify(b"", b"", &sig2), Ok(()));

        let public2 = SigningPublic::from_bytes(&public.to_bytes()).unwrap();
        assert_eq!(public2, public);
        assert_eq!(public.to_bytes().len(), SIGNING_PUBLIC_LEN);
        let sig3 = DualSignature::from_bytes(&sig.to_bytes()).unwrap();
        assert_eq!(sig3, sig);
        assert_eq!(sig.to_bytes().len(), DUAL_SIGNATURE_LEN);
        assert_eq!(public2.verify(b"hello", CTX, &sig3), Ok(()));

        let again = SigningSecret::from_seeds(&secret.to_seeds());
        assert_eq!(again.public(), public);
    }

    #[test]
    fn each_half_is_required() {
        let (a, b) = (signing_secret(1), signing_secret(2));
        let public = a.public();
        let sa = a.sign(b"msg", CTX, [7; 32]).unwrap();
        let sb = b.sign(b"msg", CTX, [7; 32]).unwrap();
        let other_ml_dsa = DualSignature {
            ed25519: sa.ed25519,
            ml_dsa: sb.ml_dsa.clone(),
        };
        assert_eq!(
            public.verify(b"msg", CTX, &other_ml_dsa),
            Err(CryptoError::SignatureInvalid(SignatureAlgorithm::MlDsa44))
        );
        let other_ed25519 = DualSignature {
            ed25519: sb.ed25519,
            ml_dsa: sa.ml_dsa.clone(),
        };
        assert_eq!(
            public.verify(b"msg", CTX, &other_ed25519),
            Err(CryptoError::SignatureInvalid(SignatureAlgorithm::Ed25519))
        );
        let zero_ml_dsa = DualSignature {
            ed25519: sa.ed25519,
            ml_dsa: Box::new([0; ML_DSA_44_SIGNATURE_LEN]),
        };
        assert_eq!(
            public.verify(b"msg", CTX, &zero_ml_dsa),
            Err(CryptoError::SignatureInvalid(SignatureAlgorithm::MlDsa44))
        );
        // Each single corrupted byte of either half is caught and attributed.
        for i in 0..ED25519_SIGNATURE_LEN {
            let mut bad = sa.clone();
            bad.ed25519[i] ^= 0x01;
            assert_eq!(
                public.verify(b"msg", CTX, &bad),
                Err(CryptoError::SignatureInvalid(SignatureAlgorithm::Ed25519)),
                "Ed25519 byte {i}"
            );
        }
        for i in (0..ML_DSA_44_SIGNATURE_LEN).step_by(37) {
            let mut bad = sa.clone();
            bad.ml_dsa[i] ^= 0x01;
            assert_eq!(
                public.verify(b"msg", CTX, &bad),
                Err(CryptoError::SignatureInvalid(SignatureAlgorithm::MlDsa44)),
                "ML-DSA byte {i}"
            );
        }
    }

    #[test]
    fn context_is_bound() {
        let secret = signing_secret(3);
        let public = secret.public();
        let sig = secret.sign(b"msg", b"ctx-a", [1; 32]).unwrap();
        assert_eq!(
            public.verify(b"msg", b"ctx-b", &sig),
            Err(CryptoError::SignatureInvalid(SignatureAlgorithm::Ed25519))
        );
        assert_eq!(
            public.verify(b"msg", b"", &sig),
            Err(CryptoError::SignatureInvalid(SignatureAlgorithm::Ed25519))
        );
        // The ML-DSA half binds the context on its own as well.
        assert!(pq::ml_dsa_verify(
            public.ml_dsa(),
            b"msg",
            b"ctx-a",
            &sig.ml_dsa
        ));
        assert!(!pq::ml_dsa_verify(
            public.ml_dsa(),
            b"msg",
            b"ctx-b",
            &sig.ml_dsa
        ));
        // The length prefix keeps (context, msg) unambiguous for Ed25519.
        let sig = secret.sign(b"c", b"ab", [1; 32]).unwrap();
        assert_eq!(public.verify(b"c", b"ab", &sig), Ok(()));
        assert_eq!(
            public.verify(b"bc", b"a", &sig),
            Err(CryptoError::SignatureInvalid(SignatureAlgorithm::Ed25519))
        );
    }

    #[test]
    fn context_length_limit() {
        let secret = signing_secret(4);
        let public = secret.public();
        let max = [7u8; MAX_CONTEXT_LEN];
        let sig = secret.sign(b"m", &max, [0; 32]).unwrap();
        assert_eq!(public.verify(b"m", &max, &sig), Ok(()));
        let long = [7u8; MAX_CONTEXT_LEN + 1];
        assert_eq!(
            secret.sign(b"m", &long, [0; 32]).err(),
            Some(CryptoError::ContextTooLong(256))
        );
        assert_eq!(
            public.verify(b"m", &long, &sig),
            Err(CryptoError::ContextTooLong(256))
        );
    }

    #[test]
    fn every_flipped_message_bit_fails() {
        let secret = signing_secret(5);
        let public = secret.public();
        let msg = b"a message of some length".to_vec();
        let sig = secret.sign(&msg, CTX, [9; 32]).unwrap();
        assert_eq!(public.verify(&msg, CTX, &sig), Ok(()));
        for bit in 0..msg.len() * 8 {
            let mut bad = msg.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(public.verify(&bad, CTX, &sig).is_err(), "bit {bit}");
            // Both halves reject it on their own.
            let framed = ed25519_framed_message(&bad, CTX);
            assert!(!ed25519_verify(&public.ed25519, &framed, &sig.ed25519));
            assert!(!pq::ml_dsa_verify(public.ml_dsa(), &bad, CTX, &sig.ml_dsa));
        }
        // Appending or truncating fails too.
        let mut longer = msg.clone();
        longer.push(0);
        assert!(public.verify(&longer, CTX, &sig).is_err());
        assert!(public.verify(&msg[..msg.len() - 1], CTX, &sig).is_err());
    }

    /// A signature with a small-order `R` passes cofactorless RFC 8032 verification but must
    /// fail here (`verify_strict`).
    #[test]
    fn ed25519_small_order_r_is_rejected() {
        use curve25519_dalek::Scalar;
        let secret = signing_secret(8);
        let public = secret.public();
        let framed = ed25519_framed_message(b"msg", CTX);
        let mut r = [0u8; 32];
        r[0] = 1; // the identity point
        let digest: [u8; 64] = sha2::Sha512::new()
            .chain_update(r)
            .chain_update(public.ed25519())
            .chain_update(&framed)
            .finalize()
            .into();
        let s = Scalar::from_bytes_mod_order_wide(&digest) * secret.inner.ed25519.to_scalar();
        let mut forged = [0u8; 64];
        forged[..32].copy_from_slice(&r);
        forged[32..].copy_from_slice(&s.to_bytes());
        let lenient = ed25519_dalek::Verifier::verify(
            &public.ed25519,
            &framed,
            &Ed25519Signature::from_bytes(&forged),
        );
        assert!(lenient.is_ok(), "the forged signature is not a useful test");
        let dual = DualSignature {
            ed25519: forged,
            ml_dsa: secret.sign(b"msg", CTX, [0; 32]).unwrap().ml_dsa,
        };
        assert_eq!(
            public.verify(b"msg", CTX, &dual),
            Err(CryptoError::SignatureInvalid(SignatureAlgorithm::Ed25519))
        );
    }

    #[test]
    fn signing_public_from_bytes_validates() {
        let good = signing_secret(6).public().to_bytes();
        assert_eq!(
            SigningPublic::from_bytes(&good[..SIGNING_PUBLIC_LEN - 1]),
            Err(CryptoError::BadLength {
                what: "signing public key",
                expected: SIGNING_PUBLIC_LEN,
                got: SIGNING_PUBLIC_LEN - 1
            })
        );
        assert!(SigningPublic::from_bytes(&[good.clone(), vec![0]].concat()).is_err());
        assert!(DualSignature::from_bytes(&[0u8; DUAL_SIGNATURE_LEN - 1]).is_err());

        let with_ed25519 = |ed: [u8; 32]| {
            let mut bytes = good.clone();
            bytes[..32].copy_from_slice(&ed);
            SigningPublic::from_bytes(&bytes)
        };
        // The identity point decodes but has small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            with_ed25519(identity),
            Err(CryptoError::InvalidPublicKey("Ed25519"))
        );
        // y = p + k (k < 19) are non-canonical encodings; all are refused.
        for k in 0u8..19 {
            let mut y = [0xffu8; 32];
            y[31] = 0x7f;
            y[0] = 0xed + k;
            assert_eq!(
                with_ed25519(y),
                Err(CryptoError::InvalidPublicKey("Ed25519")),
                "p + {k}"
            );
            y[31] |= 0x80; // sign bit set
            assert!(with_ed25519(y).is_err(), "p + {k}, negative x");
        }
        // Some y have no point at all; find one and check it is refused.
        let undecodable = (2u8..=255)
            .map(|b| {
                let mut y = [0u8; 32];
                y[0] = b;
                y
            })
            .find(|y| Ed25519VerifyingKey::from_bytes(y).is_err())
            .unwrap();
        assert_eq!(
            with_ed25519(undecodable),
            Err(CryptoError::InvalidPublicKey("Ed25519"))
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let seeds = SigningSeeds {
            ed25519: [0xab; 32],
            ml_dsa: [0xcd; 32],
        };
        let kem_seeds = KemSeeds {
            x25519: [0xab; 32],
            ml_kem: [0xcd; 64],
        };
        let texts = [
            format!("{seeds:?}"),
            format!("{:?}", SigningSecret::from_seeds(&seeds)),
            format!("{kem_seeds:?}"),
            format!("{:?}", KemSecret::from_seeds(&kem_seeds)),
            format!("{:#?}", SigningSecret::from_seeds(&seeds)),
        ];
        for text in texts {
            assert!(text.contains("<redacted>"), "{text}");
            for leak in ["abab", "cdcd", "171", "205", "AB", "CD"] {
                assert!(!text.contains(leak), "{text} contains {leak}");
            }
        }
        // Public values are printed abbreviated.
        let public = format!("{:?}", signing_secret(1).public());
        assert!(public.contains("(1312 bytes)"), "{public}");
    }

    #[test]
    fn generate_uses_fresh_randomness() {
        let a = SigningSecret::generate().unwrap();
        let b = SigningSecret::generate().unwrap();
        assert_ne!(a.public(), b.public());
        let k1 = KemSecret::generate().unwrap();
        let k2 = KemSecret::generate().unwrap();
        assert_ne!(k1.public(), k2.public());
        let s1 = a.sign_random(b"m", CTX).unwrap();
        let s2 = a.sign_random(b"m", CTX).unwrap();
        assert_eq!(s1.ed25519, s2.ed25519); // Ed25519 is deterministic
        assert_ne!(s1.ml_dsa, s2.ml_dsa); // hedged ML-DSA is not
    }

    // ----- KEM keys and sealing ---------------------------------------------------------------

    #[test]
    fn kem_public_round_trip_and_validation() {
        let secret = kem_secret(1);
        let public = secret.public();
        let bytes = public.to_bytes();
        assert_eq!(bytes.len(), KEM_PUBLIC_LEN);
        assert_eq!(KemPublic::from_bytes(&bytes).unwrap(), public);
        assert_eq!(KemSecret::from_seeds(&secret.to_seeds()).public(), public);
        assert!(matches!(
            KemPublic::from_bytes(&bytes[1..]),
            Err(CryptoError::BadLength { .. })
        ));

        // Small-order X25519 keys: 0, 1, and p - 1 (u-coordinates).
        let mut p_minus_1 = [0xffu8; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        let mut one = [0u8; 32];
        one[0] = 1;
        for low in [[0u8; 32], one, p_minus_1] {
            let mut bad = bytes.clone();
            bad[..32].copy_from_slice(&low);
            assert_eq!(
                KemPublic::from_bytes(&bad),
                Err(CryptoError::InvalidPublicKey("X25519"))
            );
        }
        // An ML-KEM coefficient >= q (0xfff = 4095 > 3329).
        let mut bad = bytes.clone();
        bad[32] = 0xff;
        bad[33] |= 0x0f;
        assert_eq!(
            KemPublic::from_bytes(&bad),
            Err(CryptoError::InvalidPublicKey("ML-KEM-768"))
        );
    }

    #[test]
    fn seal_open_one_recipient() {
        let bob = kem_secret(2);
        let sealed = seal_random(b"payload", b"aad", &[(b"bob", &bob.public())]).unwrap();
        assert_eq!(sealed.recipients.len(), 1);
        assert_eq!(sealed.ciphertext.len(), 7 + AEAD_TAG_LEN);
        let entry = &sealed.recipients[0];
        assert_eq!(entry.id, b"bob");
        assert_eq!(entry.ml_kem_ciphertext.len(), ML_KEM_768_CIPHERTEXT_LEN);
        assert_eq!(entry.wrapped_key.len(), WRAPPED_KEY_LEN);
        assert_eq!(open(&sealed, b"aad", b"bob", &bob).unwrap(), b"payload");
    }

    #[test]
    fn seal_open_three_recipients() {
        let secrets = [kem_secret(1), kem_secret(2), kem_secret(3)];
        let ids: [&[u8]; 3] = [b"alice", b"bob", b"carol"];
        let publics: Vec<KemPublic> = secrets.iter().map(KemSecret::public).collect();
        let recipients: Vec<(&[u8], &KemPublic)> = ids.iter().copied().zip(&publics).collect();
        let payload = vec![0x42u8; 1000];
        let sealed = seal(&payload, b"hdr", &recipients, &mut test_rng(1)).unwrap();
        for (id, secret) in ids.iter().zip(&secrets) {
            assert_eq!(open(&sealed, b"hdr", id, secret).unwrap(), payload);
        }
        // Someone else.
        assert_eq!(
            open(&sealed, b"hdr", b"mallory", &kem_secret(9)),
            Err(CryptoError::NotARecipient)
        );
        // A recipient's secret used under another recipient's id.
        assert_eq!(
            open(&sealed, b"hdr", b"alice", &secrets[1]),
            Err(CryptoError::DecryptFailed)
        );
        assert_eq!(
            open(&sealed, b"hdr", b"carol", &secrets[0]),
            Err(CryptoError::DecryptFailed)
        );
        // A non-recipient's secret under a recipient's id.
        assert_eq!(
            open(&sealed, b"hdr", b"bob", &kem_secret(9)),
            Err(CryptoError::DecryptFailed)
        );
    }

    #[test]
    fn seal_edge_cases() {
        let bob = kem_secret(2);
        let bob_public = bob.public();
        let sealed = seal_random(b"", b"", &[(b"bob", &bob_public)]).unwrap();
        assert_eq!(sealed.ciphertext.len(), AEAD_TAG_LEN);
        assert_eq!(open(&sealed, b"", b"bob", &bob).unwrap(), b"");
        // The empty id is allowed.
        let sealed = seal_random(b"x", b"", &[(b"", &bob_public)]).unwrap();
        assert_eq!(open(&sealed, b"", b"", &bob).unwrap(), b"x");

        assert_eq!(seal_random(b"x", b"", &[]), Err(CryptoError::NoRecipients));
        assert_eq!(
            seal_random(b"x", b"", &[(b"bob", &bob_public), (b"bob", &bob_public)]),
            Err(CryptoError::DuplicateRecipient)
        );
        let long_id = vec![1u8; MAX_RECIPIENT_ID_LEN + 1];
        assert_eq!(
            seal_random(b"x", b"", &[(&long_id, &bob_public)]),
            Err(CryptoError::RecipientIdTooLong(MAX_RECIPIENT_ID_LEN + 1))
        );
        let max_id = vec![1u8; MAX_RECIPIENT_ID_LEN];
        let sealed = seal_random(b"x", b"", &[(&max_id, &bob_public)]).unwrap();
        assert_eq!(open(&sealed, b"", &max_id, &bob).unwrap(), b"x");
    }

    #[test]
    fn tampering_is_detected() {
        let (alice, bob) = (kem_secret(1), kem_secret(2));
        let (alice_public, bob_public) = (alice.public(), bob.public());
        let original = seal(
            b"the payload",
            b"aad",
            &[(b"alice", &alice_public), (b"bob", &bob_public)],
            &mut test_rng(2),
        )
        .unwrap();
        assert_eq!(
            open(&original, b"aad", b"bob", &bob).unwrap(),
            b"the payload"
        );

        let mut cases: Vec<(String, Sealed)> = Vec::new();
        let mut push = |name: String, edit: &dyn Fn(&mut Sealed)| {
            let mut sealed = original.clone();
            edit(&mut sealed);
            assert_ne!(sealed, original, "{name} changed nothing");
            cases.push((name, sealed));
        };
        for i in 0..NONCE_LEN {
            push(format!("nonce[{i}]"), &|s| s.nonce[i] ^= 1);
        }
        for i in 0..X25519_PUBLIC_KEY_LEN {
            push(format!("ephemeral[{i}]"), &|s| s.ephemeral_x25519[i] ^= 1);
        }
        push("ephemeral bit 255".into(), &|s| {
            s.ephemeral_x25519[31] ^= 0x80
        });
        push("ephemeral zero".into(), &|s| s.ephemeral_x25519 = [0; 32]);
        for i in 0..original.ciphertext.len() {
            push(format!("ciphertext[{i}]"), &|s| s.ciphertext[i] ^= 0x80);
        }
        push("ciphertext empty".into(), &|s| s.ciphertext.clear());
        push("ciphertext short".into(), &|s| s.ciphertext.truncate(15));
        push("ciphertext cut".into(), &|s| s.ciphertext.truncate(20));
        push("ciphertext longer".into(), &|s| s.ciphertext.push(0));
        for i in (0..ML_KEM_768_CIPHERTEXT_LEN).step_by(31).chain([1087]) {
            push(format!("ml_kem_ciphertext[{i}]"), &|s| {
                s.recipients[1].ml_kem_ciphertext[i] ^= 4
            });
        }
        push("ml_kem_ciphertext short".into(), &|s| {
            s.recipients[1].ml_kem_ciphertext.pop();
        });
        push("ml_kem_ciphertext of alice".into(), &|s| {
            s.recipients[1].ml_kem_ciphertext = s.recipients[0].ml_kem_ciphertext.clone()
        });
        for i in 0..WRAPPED_KEY_LEN {
            push(format!("wrapped_key[{i}]"), &|s| {
                s.recipients[1].wrapped_key[i] ^= 1
            });
        }
        push("wrapped_key short".into(), &|s| {
            s.recipients[1].wrapped_key.pop();
        });
        push("wrapped_key of alice".into(), &|s| {
            s.recipients[1].wrapped_key = s.recipients[0].wrapped_key.clone()
        });
        push("ids swapped".into(), &|s| {
            s.recipients[0].id = b"bob".to_vec();
            s.recipients[1].id = b"alice".to_vec();
        });
        push("entries swapped".into(), &|s| s.recipients.swap(0, 1));
        push("bob renamed".into(), &|s| {
            s.recipients[1].id = b"bob2".to_vec()
        });
        push("bob removed".into(), &|s| {
            s.recipients.remove(1);
        });

        for (name, sealed) in &cases {
            let result = open(sealed, b"aad", b"bob", &bob);
            let ok = match name.as_str() {
                // Reordering entries does not change what bob reads.
                "entries swapped" => result.as_deref() == Ok(&b"the payload"[..]),
                "bob renamed" | "bob removed" => result == Err(CryptoError::NotARecipient),
                "ephemeral zero" => {
                    result == Err(CryptoError::InvalidPublicKey("ephemeral X25519"))
                }
                "ml_kem_ciphertext short" | "wrapped_key short" => {
                    matches!(result, Err(CryptoError::BadLength { .. }))
                }
                // Every other change must fail authentication (a flipped ephemeral key could
                // also land on a small-order point).
                _ => matches!(
                    result,
                    Err(CryptoError::DecryptFailed | CryptoError::InvalidPublicKey(_))
                ),
            };
            assert!(ok, "{name}: {result:?}");
            // Alice's entry is untouched in most cases; she still opens or fails cleanly.
            let _ = open(sealed, b"aad", b"alice", &alice);
        }
        // Wrong aad.
        for aad in [&b""[..], b"aaD", b"aad\0", b"aa"] {
            assert_eq!(
                open(&original, aad, b"bob", &bob),
                Err(CryptoError::DecryptFailed)
            );
        }
    }

    #[test]
    fn deterministic_with_same_seeds_and_rng() {
        let publics = [kem_secret(1).public(), kem_secret(2).public()];
        let recipients: [(&[u8], &KemPublic); 2] = [(b"a", &publics[0]), (b"b", &publics[1])];
        let one = seal(b"payload", b"aad", &recipients, &mut test_rng(7)).unwrap();
        let two = seal(b"payload", b"aad", &recipients, &mut test_rng(7)).unwrap();
        assert_eq!(one, two);
        let other = seal(b"payload", b"aad", &recipients, &mut test_rng(8)).unwrap();
        assert_ne!(one.ciphertext, other.ciphertext);
        assert_ne!(one.recipients[0], other.recipients[0]);

        let s1 = signing_secret(1).sign(b"m", CTX, [0; 32]).unwrap();
        let s2 = signing_secret(1).sign(b"m", CTX, [0; 32]).unwrap();
        assert_eq!(s1, s2);
        let s3 = signing_secret(1).sign(b"m", CTX, [1; 32]).unwrap();
        assert_ne!(s1.ml_dsa, s3.ml_dsa);
    }

    /// Rebuilds a sealed payload by hand from the documented layout: randomness order, HKDF
    /// info offsets and the wrap AEAD. Fails if the code and the docs drift apart.
    #[test]
    fn sealed_layout_matches_docs() {
        let bob = kem_secret(2);
        let bob_public = bob.public();
        let sealed = seal(
            b"payload",
            b"aad",
            &[(b"bob", &bob_public)],
            &mut test_rng(3),
        )
        .unwrap();

        let mut stream = [0u8; 32 + 12 + 32 + 32];
        test_rng(3)(&mut stream);
        let content_key: [u8; 32] = stream[..32].try_into().unwrap();
        assert_eq!(sealed.nonce[..], stream[32..44]);
        let ephemeral = X25519Secret::from(<[u8; 32]>::try_from(&stream[44..76]).unwrap());
        assert_eq!(
            sealed.ephemeral_x25519,
            X25519PublicKey::from(&ephemeral).to_bytes()
        );
        let kem_randomness: [u8; 32] = stream[76..108].try_into().unwrap();
        let (kem_ct, ss_kem) = pq::ml_kem_encapsulate(bob_public.ml_kem(), kem_randomness);
        assert_eq!(sealed.recipients[0].ml_kem_ciphertext, kem_ct.to_vec());

        let ss_x = ephemeral
            .diffie_hellman(&X25519PublicKey::from(*bob_public.x25519()))
            .to_bytes();
        let mut info = Vec::new();
        info.extend_from_slice(b"crabnet/v1/wrap");
        assert_eq!(info.len(), 15);
        info.extend_from_slice(&sealed.ephemeral_x25519);
        assert_eq!(info.len(), 47);
        info.extend_from_slice(bob_public.x25519());
        assert_eq!(info.len(), 79);
        info.extend_from_slice(&kem_ct[..]);
        assert_eq!(info.len(), 1167);
        info.extend_from_slice(&[0, 3]);
        info.extend_from_slice(b"bob");
        assert_eq!(info.len(), 1172);
        let ikm = [&ss_kem[..], &ss_x[..]].concat();
        let mut wrap_key = [0u8; 32];
        Hkdf::<Sha256>::new(None, &ikm)
            .expand(&info, &mut wrap_key)
            .unwrap();
        let wrapped = aead_encrypt(&wrap_key, &[0; 12], b"bob", &content_key).unwrap();
        assert_eq!(sealed.recipients[0].wrapped_key, wrapped);
        let body = aead_encrypt(&content_key, &sealed.nonce, b"aad", b"payload").unwrap();
        assert_eq!(sealed.ciphertext, body);
    }

    // ----- Wycheproof -------------------------------------------------------------------------

    /// What our code did with one Wycheproof case.
    #[derive(Debug, PartialEq)]
    enum Outcome {
        /// Accepted, and any output matched the vector.
        Accepted,
        /// Refused (an error or a failed check).
        Rejected,
        /// Accepted but produced a different output: always a failure.
        Mismatch,
    }

    fn outcome(result: Result<bool, CryptoError>) -> Outcome {
        match result {
            Ok(true) => Outcome::Accepted,
            Ok(false) => Outcome::Mismatch,
            Err(_) => Outcome::Rejected,
        }
    }

    /// Checks every case and returns how many ran.
    struct Tally {
        name: &'static str,
        ran: usize,
        failures: Vec<String>,
    }

    impl Tally {
        fn new(name: &'static str) -> Self {
            Self {
                name,
                ran: 0,
                failures: Vec::new(),
            }
        }

        fn check(&mut self, tc_id: usize, expected: wycheproof::TestResult, got: Outcome) {
            use wycheproof::TestResult::{Acceptable, Invalid, Valid};
            self.ran += 1;
            let fine = match (expected, &got) {
                (_, Outcome::Mismatch) => false,
                (Valid, Outcome::Accepted) | (Invalid, Outcome::Rejected) => true,
                (Valid, Outcome::Rejected) | (Invalid, Outcome::Accepted) => false,
                (Acceptable, _) => true,
            };
            if !fine {
                self.failures
                    .push(format!("tc {tc_id}: expected {expected:?}, got {got:?}"));
            }
        }

        fn finish(self, at_least: usize) {
            eprintln!("{}: {} cases checked", self.name, self.ran);
            assert!(
                self.failures.is_empty(),
                "{}: {:#?}",
                self.name,
                self.failures
            );
            assert!(
                self.ran >= at_least,
                "{}: only {} cases ran",
                self.name,
                self.ran
            );
        }
    }

    /// The outcome of a verification: `false` is a rejection, not a mismatch.
    fn verify_outcome(result: Result<bool, CryptoError>) -> Outcome {
        match result {
            Ok(false) => Outcome::Rejected,
            other => outcome(other),
        }
    }

    /// Runs `$check` (a block giving `Result<bool, CryptoError>`, with `$group` and `$test`
    /// bound) on every test of every group in `$groups`, and tallies `$outcome` of its result.
    macro_rules! tally_each {
        ($tally:ident, $groups:expr, $outcome:ident, |$group:ident, $test:ident| $check:block) => {
            for $group in $groups {
                for $test in &$group.tests {
                    let result: Result<bool, CryptoError> = (|| $check)();
                    $tally.check($test.tc_id, $test.result, $outcome(result));
                }
            }
        };
    }

    fn bytes(b: &Option<wycheproof::ByteString>) -> &[u8] {
        b.as_ref().map_or(&[][..], |b| b.as_ref())
    }

    #[test]
    fn wycheproof_ml_dsa_44_verify() {
        use wycheproof::mldsa_verify::{TestName, TestSet};
        let set = TestSet::load(TestName::MlDsa44Verify).unwrap();
        let mut tally = Tally::new("ML-DSA-44 verify");
        tally_each!(tally, &set.test_groups, verify_outcome, |group, test| {
            let ctx = bytes(&test.ctx);
            let key = fixed_ref("key", &group.pubkey)?;
            check_context(ctx)?;
            let sig = fixed_ref("sig", &test.sig)?;
            Ok(pq::ml_dsa_verify(key, &test.msg, ctx, sig))
        });
        tally.finish(180);
    }

    #[test]
    fn wycheproof_ml_dsa_44_sign_from_seed() {
        use wycheproof::mldsa_sign::{TestFlag, TestName, TestSet};
        let set = TestSet::load(TestName::MlDsa44SignSeed).unwrap();
        let mut tally = Tally::new("ML-DSA-44 sign (seed)");
        for group in &set.test_groups {
            for test in &group.tests {
                // Sign_internal (external mu only) is not an operation this module offers.
                if test.msg.is_none() || test.flags.contains(&TestFlag::Internal) {
                    continue;
                }
                let ctx = bytes(&test.ctx);
                let result = (|| {
                    let seed = fixed_ref("seed", bytes(&group.privseed))?;
                    let public = pq::ml_dsa_verifying_key(seed);
                    let randomness = match &test.rnd {
                        Some(rnd) => *fixed_ref("rnd", rnd)?,
                        None => [0; 32],
                    };
                    check_context(ctx)?;
                    let msg = bytes(&test.msg);
                    let sig = pq::ml_dsa_sign(&pq::ml_dsa_key_pair(seed).0, msg, ctx, randomness)?;
                    Ok(public[..] == bytes(&group.pubkey)[..]
                        && sig[..] == test.sig[..]
                        && pq::ml_dsa_verify(&public, msg, ctx, &sig))
                })();
                tally.check(test.tc_id, test.result, outcome(result));
            }
        }
        tally.finish(70);
    }

    #[test]
    fn wycheproof_ml_kem_768() {
        use wycheproof::mlkem::{TestName, TestSet};
        let mut tally = Tally::new("ML-KEM-768");
        // Key generation from seed, then decapsulation (includes implicit rejection cases).
        let groups = TestSet::load(TestName::MlKem768).unwrap().test_groups;
        tally_each!(tally, groups, outcome, |_group, test| {
            let seed = fixed_ref("seed", bytes(&test.seed))?;
            let public = pq::ml_kem_public_key(seed);
            let ct = fixed_ref("ML-KEM-768 ciphertext", bytes(&test.ct))?;
            let shared = pq::ml_kem_decapsulate(&pq::ml_kem_key_pair(seed).0, ct);
            Ok(public[..] == bytes(&test.encaps_key)[..]
                && shared[..] == bytes(&test.shared_secret)[..])
        });
        // Encapsulation with fixed randomness, through the validating key parser.
        let groups = TestSet::load(TestName::MlKem768Encaps).unwrap().test_groups;
        tally_each!(tally, groups, outcome, |_group, test| {
            let key = ml_kem_public_key(bytes(&test.encaps_key))?;
            let m = *fixed_ref("m", bytes(&test.msg))?;
            let (ct, shared) = pq::ml_kem_encapsulate(&key, m);
            Ok(ct[..] == bytes(&test.ct)[..] && shared[..] == bytes(&test.shared_secret)[..])
        });
        // Key generation: both the public and the expanded private key.
        let groups = TestSet::load(TestName::MlKem768KeyGenSeed)
            .unwrap()
            .test_groups;
        tally_each!(tally, groups, outcome, |_group, test| {
            let seed = fixed_ref("seed", bytes(&test.seed))?;
            Ok(
                pq::ml_kem_public_key(seed)[..] == bytes(&test.encaps_key)[..]
                    && pq::ml_kem_expanded_private_key(seed) == bytes(&test.decaps_key),
            )
        });
        tally.finish(201 + 265 + 100);
    }

    #[test]
    fn wycheproof_x25519() {
        use wycheproof::xdh::{TestName, TestSet};
        let mut tally = Tally::new("X25519");
        let groups = TestSet::load(TestName::X25519).unwrap().test_groups;
        tally_each!(tally, groups, outcome, |_group, test| {
            let secret = X25519Secret::from(*fixed_ref("secret", &test.private_key)?);
            let public = fixed_ref("public", &test.public_key)?;
            let shared =
                x25519_agree(&secret, public).ok_or(CryptoError::InvalidPublicKey("X25519"))?;
            // The key parser must agree with the agreement on small-order points.
            x25519_public_key(public)?;
            Ok(shared[..] == test.shared_secret[..])
        });
        tally.finish(518);
    }

    #[test]
    fn wycheproof_ed25519() {
        use wycheproof::eddsa::{TestName, TestSet};
        let mut tally = Tally::new("Ed25519");
        let groups = TestSet::load(TestName::Ed25519).unwrap().test_groups;
        tally_each!(tally, groups, verify_outcome, |group, test| {
            let key = ed25519_verifying_key(fixed_ref("key", &group.key.pk)?)?;
            let sig = fixed_ref("sig", &test.sig)?;
            Ok(ed25519_verify(&key, &test.msg, sig))
        });
        tally.finish(150);
    }

    #[test]
    fn wycheproof_chacha20_poly1305() {
        use wycheproof::aead::{TestName, TestSet};
        let mut tally = Tally::new("ChaCha20-Poly1305");
        let groups = TestSet::load(TestName::ChaCha20Poly1305)
            .unwrap()
            .test_groups;
        tally_each!(tally, groups, outcome, |_group, test| {
            let key = fixed_ref("key", &test.key)?;
            let nonce = fixed_ref("nonce", &test.nonce)?;
            let sealed = [&test.ct[..], &test.tag[..]].concat();
            let plain = aead_decrypt(key, nonce, &test.aad, &sealed)?;
            let again = aead_encrypt(key, nonce, &test.aad, &test.pt)?;
            Ok(plain == test.pt[..] && again == sealed)
        });
        tally.finish(300);
    }

    #[test]
    fn wycheproof_hkdf_sha256() {
        use wycheproof::hkdf::{TestName, TestSet};
        let mut tally = Tally::new("HKDF-SHA256");
        let groups = TestSet::load(TestName::HkdfSha256).unwrap().test_groups;
        tally_each!(tally, groups, outcome, |_group, test| {
            let mut okm = vec![0u8; test.size];
            hkdf_sha256(&test.salt, &test.ikm, &[&test.info], &mut okm)?;
            Ok(okm == test.okm[..])
        });
        tally.finish(80);
    }

    // ----- cross-check against RustCrypto -----------------------------------------------------

    fn seed_bytes<const N: usize>(label: &str, i: u8) -> [u8; N] {
        let mut out = [0u8; N];
        for (n, chunk) in out.chunks_mut(32).enumerate() {
            let block = Sha256::new()
                .chain_update(label.as_bytes())
                .chain_update([i, n as u8])
                .finalize();
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        out
    }

    #[test]
    fn ml_kem_matches_rustcrypto() {
        use ml_kem::{Decapsulate as _, KeyExport as _};
        for i in 0..4u8 {
            let seed: [u8; 64] = seed_bytes("ml-kem seed", i);
            let m: [u8; 32] = seed_bytes("ml-kem m", i);
            let theirs = ml_kem::DecapsulationKey768::from_seed(seed.into());
            let ours = pq::ml_kem_public_key(&seed);
            assert_eq!(theirs.encapsulation_key().to_bytes()[..], ours[..]);

            let (their_ct, their_ss) = theirs
                .encapsulation_key()
                .encapsulate_deterministic(&m.into());
            let (our_ct, our_ss) = pq::ml_kem_encapsulate(&ours, m);
            assert_eq!(their_ct[..], our_ct[..]);
            assert_eq!(their_ss[..], our_ss[..]);
            let private = pq::ml_kem_key_pair(&seed).0;
            assert_eq!(pq::ml_kem_decapsulate(&private, &our_ct)[..], our_ss[..]);

            // Implicit rejection gives the same pseudorandom secret on both sides.
            let mut bad_ct = *our_ct;
            bad_ct[i as usize * 100] ^= 1;
            let ours_rejected = pq::ml_kem_decapsulate(&private, &bad_ct);
            assert_ne!(ours_rejected[..], our_ss[..]);
            assert_eq!(theirs.decapsulate(&bad_ct.into())[..], ours_rejected[..]);

            // Through the public API as well.
            let secret = KemSecret::from_seeds(&KemSeeds {
                x25519: [i; 32],
                ml_kem: seed,
            });
            assert_eq!(
                secret.public().ml_kem()[..],
                theirs.encapsulation_key().to_bytes()[..]
            );
        }
    }

    #[test]
    fn ml_dsa_matches_rustcrypto() {
        for i in 0..4u8 {
            let seed: [u8; 32] = seed_bytes("ml-dsa seed", i);
            let msg: Vec<u8> = (0..i as usize * 50).map(|n| n as u8).collect();
            let ctx: &[u8] = if i % 2 == 0 { CTX } else { b"" };
            let theirs = ml_dsa::ExpandedSigningKey::<ml_dsa::MlDsa44>::from_seed(&seed.into());
            let their_vk = theirs.verifying_key();
            assert_eq!(their_vk.encode()[..], pq::ml_dsa_verifying_key(&seed)[..]);

            // Deterministic signatures (randomness all zero) are identical.
            let their_sig = theirs.sign_deterministic(&msg, ctx).unwrap().encode();
            let secret = SigningSecret::from_seeds(&SigningSeeds {
                ed25519: [i; 32],
                ml_dsa: seed,
            });
            let our_sig = secret.sign(&msg, ctx, [0; 32]).unwrap();
            assert_eq!(their_sig[..], our_sig.ml_dsa[..]);
            assert_eq!(secret.public().ml_dsa()[..], their_vk.encode()[..]);

            // Hedged signatures from libcrux verify under RustCrypto.
            let hedged = secret.sign(&msg, ctx, [i + 1; 32]).unwrap();
            assert_ne!(hedged.ml_dsa, our_sig.ml_dsa);
            let decoded = ml_dsa::Signature::<ml_dsa::MlDsa44>::decode(
                &ml_dsa::EncodedSignature::<ml_dsa::MlDsa44>::try_from(&hedged.ml_dsa[..]).unwrap(),
            )
            .unwrap();
            assert!(their_vk.verify_with_context(&msg, ctx, &decoded));
            assert!(!their_vk.verify_with_context(&msg, b"other", &decoded));
        }
    }
}
