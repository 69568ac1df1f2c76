//! The trust policy's settings (config section `[trust]`), owned here and gathered into
//! [`Config`](crate::config::Config) by `config.rs`. This module builds only on the crypto
//! types, the model's ids and the error type, so the configuration does not build on the
//! trust machinery (nor on the store it uses).

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use crate::crypto::SigningPublic;
use crate::error::{Error, ErrorKind, Result, check_range};
use crate::model::NodeId;

/// Who may join: anyone with valid keys, or only nodes certified by a trust anchor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustMode {
    /// Any node with a valid self-certifying hello is admitted (subject to the lists).
    #[default]
    Open,
    /// Only nodes with a valid membership certificate from a configured anchor.
    Anchored,
}

/// The trust policy (section `[trust]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    /// `open` (default) or `anchored`.
    pub mode: TrustMode,
    /// When not empty, only these nodes are admitted.
    #[serde(deserialize_with = "allow_list")]
    pub allow: Vec<NodeId>,
    /// These nodes are never admitted (this wins over `allow`).
    #[serde(deserialize_with = "deny_list")]
    pub deny: Vec<NodeId>,
    /// Trust anchors: each the anchor's public key in hex, or the path of a file holding it
    /// (as `crabnet trust anchor-new` writes it). Anchored mode needs at least one; in open
    /// mode they still sign revocations.
    pub anchors: Vec<String>,
    /// This node's membership certificate (a file from `crabnet trust sign`), sent with its
    /// hello.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<PathBuf>,
    /// How long after a peer's key rotation (its statement's `rotated_at`) envelopes signed
    /// with its previous keys are still accepted, in seconds (0..=604800, default 3600).
    pub rotation_grace_secs: u64,
    /// How many self-revocations of nodes this node knows nothing else of (not a peer, not
    /// the author of a stored message, no certificate) it keeps (0..=1000000, default 1024);
    /// past it, the oldest are evicted (`trust.revocations_evicted`).
    pub max_stranger_revocations: u64,
    /// How many of those one relaying node may have added (since this node started) while
    /// they are kept (0..=1000000, default 64); past it, more from it are not kept
    /// (`trust.revocations_capped`).
    pub max_stranger_revocations_per_source: u64,
    /// How long after the end of its validity window (`not_after`) a stored certificate of
    /// another node is kept, in seconds (0..=31536000, default 604800).
    pub certificate_grace_secs: u64,
}

/// Default of `trust.rotation_grace_secs`: one hour.
pub const DEFAULT_ROTATION_GRACE_SECS: u64 = 3600;
/// Largest `trust.rotation_grace_secs`: seven days.
pub const MAX_ROTATION_GRACE_SECS: u64 = 7 * 86_400;
/// Default of `trust.max_stranger_revocations`.
pub const DEFAULT_MAX_STRANGER_REVOCATIONS: u64 = 1024;
/// Largest `trust.max_stranger_revocations`.
pub const MAX_STRANGER_REVOCATIONS: u64 = 1_000_000;
/// Default of `trust.max_stranger_revocations_per_source`.
pub const DEFAULT_MAX_STRANGER_REVOCATIONS_PER_SOURCE: u64 = 64;
/// Default of `trust.certificate_grace_secs`: seven days.
pub const DEFAULT_CERTIFICATE_GRACE_SECS: u64 = 7 * 86_400;
/// Largest `trust.certificate_grace_secs`: a year.
pub const MAX_CERTIFICATE_GRACE_SECS: u64 = 365 * 86_400;

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            mode: TrustMode::default(),
            allow: Vec::new(),
            deny: Vec::new(),
            anchors: Vec::new(),
            certificate: None,
            rotation_grace_secs: DEFAULT_ROTATION_GRACE_SECS,
            max_stranger_revocations: DEFAULT_MAX_STRANGER_REVOCATIONS,
            max_stranger_revocations_per_source: DEFAULT_MAX_STRANGER_REVOCATIONS_PER_SOURCE,
            certificate_grace_secs: DEFAULT_CERTIFICATE_GRACE_SECS,
        }
    }
}

impl TrustConfig {
    /// Checks what needs no file access: anchored mode names an anchor, entries are not empty.
    pub fn validate(&self) -> Result<()> {
        if self.rotation_grace_secs > MAX_ROTATION_GRACE_SECS {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "trust.rotation_grace_secs = {} is out of range (0..={MAX_ROTATION_GRACE_SECS})",
                    self.rotation_grace_secs
                ),
            ));
        }
        check_range(
            "trust.max_stranger_revocations",
            self.max_stranger_revocations,
            0,
            MAX_STRANGER_REVOCATIONS,
        )?;
        check_range(
            "trust.max_stranger_revocations_per_source",
            self.max_stranger_revocations_per_source,
            0,
            MAX_STRANGER_REVOCATIONS,
        )?;
        check_range(
            "trust.certificate_grace_secs",
            self.certificate_grace_secs,
            0,
            MAX_CERTIFICATE_GRACE_SECS,
        )?;
        if self.mode == TrustMode::Anchored && self.anchors.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                "trust.anchors must name at least one anchor when trust.mode = \"anchored\"",
            ));
        }
        if self.anchors.iter().any(|a| a.trim().is_empty()) {
            return Err(Error::new(
                ErrorKind::Config,
                "trust.anchors: an entry is empty",
            ));
        }
        if self
            .certificate
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(Error::new(
                ErrorKind::Config,
                "trust.certificate must not be empty (leave it out for none)",
            ));
        }
        Ok(())
    }

    /// The anchors' public keys, reading the entries that are file paths.
    pub fn anchor_keys(&self) -> Result<Vec<SigningPublic>> {
        self.anchors
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let bad = |why: String| {
                    Error::new(ErrorKind::Config, format!("trust.anchors[{i}]: {why}"))
                };
                let text = entry.trim();
                let hex_text = if is_hex(text) {
                    text.to_owned()
                } else {
                    std::fs::read_to_string(text)
                        .map_err(|e| bad(format!("cannot read anchor file {text}: {e}")))?
                        .trim()
                        .to_owned()
                };
                let bytes = hex::decode(&hex_text)
                    .map_err(|_| bad("not an anchor public key (hex)".into()))?;
                SigningPublic::from_bytes(&bytes)
                    .map_err(|e| bad(format!("not an anchor public key: {e}")))
            })
            .collect()
    }
}

fn is_hex(text: &str) -> bool {
    !text.is_empty() && text.len().is_multiple_of(2) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn node_ids<'de, D: Deserializer<'de>>(d: D, key: &str) -> Result<Vec<NodeId>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .map(|t| {
            NodeId::parse(t).map_err(|_| {
                serde::de::Error::custom(format!(
                    "{key}: {t:?} is not a node id (64 lowercase hex digits)"
                ))
            })
        })
        .collect()
}

fn allow_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NodeId>, D::Error> {
    node_ids(d, "trust.allow")
}

fn deny_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NodeId>, D::Error> {
    node_ids(d, "trust.deny")
}
