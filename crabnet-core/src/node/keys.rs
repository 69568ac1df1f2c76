//! Key rotation of a running node (docs/PROTOCOL.md section 2g): [`Node::rotate_keys`], the
//! receive-side checks that follow peers' rotations, and following a rotation that another
//! process on the same data directory made.
//!
//! Files in the data directory: `identity.key` holds the current keys. While a rotation is
//! under way the next keys wait in `identity.key.next` until the statement is stored, then
//! replace `identity.key` by an atomic rename (a crash in between is finished or undone at the
//! next start). The replaced keys are kept in `identity.key.epoch-N` (mode 0600) until their
//! grace period is over; they are removed by the next rotation after that.

use std::path::PathBuf;
use std::sync::Arc;

use super::receive::Via;
use super::{Node, lock};
use crate::config::Config;
use crate::envelope::{self, Kind};
use crate::error::{Error, ErrorKind, Result};
use crate::identity::{Identity, PublicIdentity};
use crate::model::{Millis, NodeId};
use crate::monitor::RejectReason;
use crate::network::Acceptance;
use crate::rotation::{Added, Rotation};
use crate::store::Store;
use crate::sync;

/// At most this many replaced keys are tried for one envelope.
const MAX_OLD_KEYS_TRIED: usize = 3;

fn pending_path(config: &Config) -> PathBuf {
    config.identity_path().with_extension("key.next")
}

fn old_key_path(config: &Config, epoch: u32) -> PathBuf {
    config
        .identity_path()
        .with_extension(format!("key.epoch-{epoch}"))
}

fn remove_if_present(path: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn same_keys(a: &PublicIdentity, b: &PublicIdentity) -> bool {
    a.node_id == b.node_id && a.epoch == b.epoch && a.signing == b.signing && a.kem == b.kem
}

/// First line of `libp2p.key`; 32 secret bytes follow.
const LIBP2P_MAGIC: &[u8] = b"crabnet-libp2p-v1\n";

/// The secret of this node's libp2p key, from `libp2p.key` (mode 0600). The first start on
/// libp2p derives it from the node's Ed25519 seed and writes the file, so that the peer id
/// stays the same after key rotations (the seed changes; the file does not).
pub(super) fn libp2p_secret(
    config: &Config,
    identity: &Identity,
) -> Result<zeroize::Zeroizing<[u8; 32]>> {
    let path = config.data_dir.join("libp2p.key");
    let read = |bytes: &[u8]| -> Result<zeroize::Zeroizing<[u8; 32]>> {
        match bytes.strip_prefix(LIBP2P_MAGIC).map(<[u8; 32]>::try_from) {
            Some(Ok(secret)) => Ok(zeroize::Zeroizing::new(secret)),
            _ => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{} is not a Crabnet libp2p key file (delete it to derive a new one; the \
                     node's libp2p peer id then changes)",
                    path.display()
                ),
            )),
        }
    };
    match std::fs::read(&path) {
        Ok(bytes) => return read(&zeroize::Zeroizing::new(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let secret = crate::network::libp2p_secret(&identity.signing().to_seeds().ed25519);
    let mut bytes = zeroize::Zeroizing::new(LIBP2P_MAGIC.to_vec());
    bytes.extend_from_slice(&*secret);
    // Written aside and renamed into place: a concurrent start reads a whole file or none.
    let tmp = config
        .data_dir
        .join(format!("libp2p.key.{}.tmp", std::process::id()));
    remove_if_present(&tmp)?;
    crate::identity::write_secret_file(&tmp, &bytes, "libp2p key file")?;
    std::fs::rename(&tmp, &path)?;
    Ok(secret)
}

/// The keys replaced by the latest rotation, when their file is still there.
pub(super) fn previous_keys(config: &Config, current: &Identity) -> Option<Identity> {
    let epoch = current.public().epoch.checked_sub(1).filter(|&e| e >= 1)?;
    Identity::load(&old_key_path(config, epoch))
        .ok()
        .filter(|old| old.node_id() == current.node_id() && old.public().epoch == epoch)
}

/// At start: finishes a rotation whose statement was stored but whose keys were not yet moved
/// into `identity.key`, or drops next keys whose statement was never stored.
pub(super) fn finish_pending_rotation(
    config: &Config,
    identity: Identity,
    store: &Store,
) -> Result<Identity> {
    let pending = pending_path(config);
    if !pending.exists() {
        return Ok(identity);
    }
    let next = Identity::load(&pending)?;
    let committed = store
        .rotations()?
        .iter()
        .any(|bytes| Rotation::parse(bytes).is_ok_and(|r| same_keys(&r.next, next.public())));
    if committed
        && next.node_id() == identity.node_id()
        && next.public().epoch > identity.public().epoch
    {
        std::fs::rename(&pending, config.identity_path())?;
        return Ok(next);
    }
    remove_if_present(&pending)?;
    Ok(identity)
}

impl Node {
    /// The current keys.
    pub(super) fn keys(&self) -> Arc<Identity> {
        self.inner
            .identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rotates this node's keys: fresh signing and encryption keys for the next key epoch,
    /// announced by a statement signed with the current keys, persisted and sent to peers with
    /// the next hello (sent at once by a listening node; a listening process on the same data
    /// directory switches at its next housekeeping tick). The node id stays the same. Peers
    /// accept envelopes signed with the old keys for `trust.rotation_grace_secs` after the
    /// statement's time. Returns the statement.
    pub async fn rotate_keys(&self) -> Result<Rotation> {
        self.blocking(|n| n.rotate_keys_blocking()).await
    }

    fn rotate_keys_blocking(&self) -> Result<Rotation> {
        let config = &self.inner.config;
        // One rotation at a time per data directory, across processes.
        let guard = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(config.data_dir.join("rotate.lock"))?;
        guard.lock()?;
        self.follow_own_rotation()?;
        let current = self.keys();
        if self.inner.trust.key_epoch(&self.inner.id) != current.public().epoch {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{} does not hold this node's latest keys (epoch {}); restart the node",
                    config.identity_path().display(),
                    self.inner.trust.key_epoch(&self.inner.id)
                ),
            ));
        }
        let next = current.next()?;
        let mut randomness = [0u8; 32];
        envelope::os_rng(&mut randomness);
        let now = self.now_ms();
        let statement = Rotation::sign(&current, next.public(), now, randomness)?;
        // The old keys, kept for the grace period; the next keys, pending until the statement
        // is stored (storing it is what commits the rotation).
        let old_path = old_key_path(config, current.public().epoch);
        remove_if_present(&old_path)?;
        current.write_new(&old_path)?;
        let pending = pending_path(config);
        remove_if_present(&pending)?;
        next.write_new(&pending)?;
        let added =
            self.with_store(|s| self.inner.trust.add_rotation(statement.to_bytes(), s, now));
        match added {
            Ok(Ok(Added::New)) => {}
            Ok(Ok(Added::Known)) => {
                return Err(Error::internal("a fresh rotation was already known"));
            }
            Ok(Err(e)) => {
                remove_if_present(&pending)?;
                return Err(e.into());
            }
            Err(e) => {
                remove_if_present(&pending)?;
                return Err(e);
            }
        }
        std::fs::rename(&pending, config.identity_path())?;
        if let Ok(dir) = std::fs::File::open(&config.data_dir) {
            dir.sync_all()?;
        }
        self.switch_keys(Arc::new(next));
        // Replaced keys whose grace period is over are no longer needed.
        for old in self.inner.trust.old_keys(&self.inner.id) {
            if old.valid_until <= now {
                remove_if_present(&old_key_path(config, old.epoch))?;
            }
        }
        tracing::info!(
            "rotated keys to epoch {} (node id unchanged)",
            statement.epoch
        );
        Ok(statement)
    }

    /// Whether this node's chain (as last read from the store) is at a later epoch than the
    /// keys it uses: another process rotated them. No store access.
    pub(super) fn behind_own_rotation(&self) -> bool {
        self.inner.trust.key_epoch(&self.inner.id) > self.keys().public().epoch
    }

    /// Switches to keys another process on this data directory rotated to (its statement is
    /// in the store and its keys in `identity.key`, or still in `identity.key.next`).
    pub(super) fn follow_own_rotation(&self) -> Result<()> {
        if !self.behind_own_rotation() {
            return Ok(());
        }
        let me = &self.inner.id;
        let epoch = self.inner.trust.key_epoch(me);
        let Some(expected) = self.inner.trust.keys_at(me, epoch) else {
            return Ok(());
        };
        let config = &self.inner.config;
        for path in [config.identity_path(), pending_path(config)] {
            if let Ok(loaded) = Identity::load(&path)
                && same_keys(loaded.public(), &expected)
            {
                self.switch_keys(Arc::new(loaded));
                tracing::info!("now using the keys of epoch {epoch}");
                return Ok(());
            }
        }
        Ok(())
    }

    /// Uses `next` from now on; the keys it replaces still open what peers sealed to them.
    fn switch_keys(&self, next: Arc<Identity>) {
        let old = std::mem::replace(
            &mut *self
                .inner
                .identity
                .write()
                .unwrap_or_else(|p| p.into_inner()),
            next,
        );
        *self
            .inner
            .previous
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(old);
        self.inner.hello_changed.notify_one();
    }

    /// Opens an envelope for this node: with the current keys, or, when a peer sealed it to
    /// the keys replaced by the latest rotation (it had not learned of it yet), with those.
    pub(super) fn open(
        &self,
        parsed: &envelope::Parsed<'_>,
    ) -> std::result::Result<crate::model::Message, envelope::EnvelopeError> {
        let first = parsed.message(&self.inner.id, self.keys().kem());
        if matches!(first, Ok(_) | Err(envelope::EnvelopeError::NotForMe)) {
            return first;
        }
        let previous = self
            .inner
            .previous
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match previous {
            Some(old) => parsed.message(&self.inner.id, old.kem()).or(first),
            None => first,
        }
    }

    /// Verifies an envelope's signatures with its author's current signing keys, or with keys
    /// the author replaced by a rotation while their grace period lasts (the envelope's
    /// timestamp, and for live frames also this node's clock, before the successor's
    /// `rotated_at` plus `trust.rotation_grace_secs`). After it: [`RejectReason::RotatedKey`].
    pub(super) fn verify_signer(
        &self,
        parsed: &envelope::Parsed<'_>,
        current: &crate::crypto::SigningPublic,
        via: Via,
        now: Millis,
    ) -> std::result::Result<(), (RejectReason, String)> {
        if self.inner.verified.take(parsed.frame(), current) {
            return Ok(());
        }
        let Err(e) = parsed.verify(current) else {
            return Ok(());
        };
        let h = &parsed.header;
        let old = self.inner.trust.old_keys(&h.sender);
        for (i, k) in old.iter().take(MAX_OLD_KEYS_TRIED).enumerate() {
            let in_grace = h.timestamp < k.valid_until;
            // Beyond the newest replaced keys, only ones still in their grace period matter.
            if i > 0 && !in_grace {
                break;
            }
            if parsed.verify(&k.keys).is_ok() {
                if in_grace && (via == Via::Sync || now < k.valid_until) {
                    return Ok(());
                }
                return Err((
                    RejectReason::RotatedKey,
                    format!(
                        "signed with the sender's keys of epoch {}, which it rotated; they were \
                         accepted until {} (trust.rotation_grace_secs)",
                        k.epoch, k.valid_until
                    ),
                ));
            }
        }
        Err((RejectReason::BadSignature, e.to_string()))
    }

    /// For a hello whose signatures verified with the keys it announces: learns the rotation
    /// chain it carries, then checks its key epoch against the node's chain. `Ok(Err(_))`: the
    /// hello goes no further (stale, or keys not on the chain). `Ok(Ok(true))`: the node is
    /// not in the peer table yet and its chain was only verified; the caller stores it with
    /// [`Node::keep_hello_chain`] once the node is admitted (a refused node leaves nothing).
    pub(super) fn check_hello_epoch(
        &self,
        identity: &PublicIdentity,
        hello: &envelope::Hello,
        from: &str,
        h: &envelope::Header,
        now: Millis,
    ) -> Result<std::result::Result<bool, Acceptance>> {
        let node = &identity.node_id;
        if !hello.rotations.is_empty() && hello.rotations.len() >= identity.epoch as usize {
            let detail = format!(
                "a hello of key epoch {} carries {} rotations",
                identity.epoch,
                hello.rotations.len()
            );
            return self
                .reject(from, Some(h), RejectReason::Malformed, detail)
                .map(Err);
        }
        let mut deferred = false;
        if self.inner.trust.key_epoch(node) < identity.epoch {
            if lock(&self.inner.store).peer(node)?.is_some() {
                for item in &hello.rotations {
                    self.add_rotation(item, now, false)?;
                }
            } else {
                // Verified now, stored only once the node is admitted.
                deferred = true;
            }
        }
        let known = self.inner.trust.key_epoch(node);
        if known > 1 && identity.epoch < known {
            // An old hello (relayed or synced late): the node has newer keys.
            self.inner.rejections.count("hellos.stale_epoch");
            return Ok(Err(Acceptance::Ignore));
        }
        if identity.epoch <= 1 {
            // The id derives from these keys (checked before).
            return Ok(Ok(false));
        }
        let keys = if deferred {
            let skew =
                u64::from(self.inner.config.network.max_clock_skew_secs).saturating_mul(1000);
            let latest = now.saturating_add(skew);
            self.inner
                .trust
                .keys_by_chain(node, &hello.rotations, identity.epoch, latest)
        } else {
            self.inner.trust.keys_at(node, identity.epoch)
        };
        match keys {
            Some(k) if same_keys(&k, identity) => {
                if !deferred {
                    self.with_store(|s| s.rotate_peer(identity))?;
                }
                Ok(Ok(deferred))
            }
            _ => {
                let detail = format!(
                    "the keys of epoch {} are not on the node's rotation chain",
                    identity.epoch
                );
                self.reject(from, Some(h), RejectReason::KeyMismatch, detail)?;
                Ok(Err(Acceptance::Ignore))
            }
        }
    }

    /// Stores the rotation chain of a hello whose node was just admitted (see
    /// [`Node::check_hello_epoch`]).
    pub(super) fn keep_hello_chain(&self, hello: &envelope::Hello, now: Millis) -> Result<()> {
        for item in &hello.rotations {
            self.add_rotation(item, now, false)?;
        }
        Ok(())
    }

    /// Verifies and adds a peer's rotation statement; returns its node when its keys moved
    /// on. A statement dated beyond the clock skew is refused until its time comes (it would
    /// stretch the replaced keys' grace period and bar the node's next rotation until then;
    /// hellos carry it again). With `known_only` (statements relayed in a `key_rotations`
    /// list), one for a node without a peer-table entry is refused: anyone can make valid
    /// statements for fresh identities, storing them would let a peer fill the store, and a
    /// node this one does not know brings its chain in its hello.
    fn add_rotation(&self, item: &[u8], now: Millis, known_only: bool) -> Result<Option<NodeId>> {
        let refuse = |why: String| {
            tracing::debug!("refused a key rotation: {why}");
            self.inner.rejections.count("trust.rotations_refused");
        };
        let r = match Rotation::parse(item) {
            Ok(r) => r,
            Err(e) => {
                refuse(e.to_string());
                return Ok(None);
            }
        };
        let skew = u64::from(self.inner.config.network.max_clock_skew_secs).saturating_mul(1000);
        if r.rotated_at > now.saturating_add(skew) {
            refuse(format!(
                "node {} dated it {} ms in the future",
                r.node_id,
                r.rotated_at - now
            ));
            return Ok(None);
        }
        if known_only
            && r.node_id != self.inner.id
            && lock(&self.inner.store).peer(&r.node_id)?.is_none()
        {
            refuse(format!("node {} is not in the peer table", r.node_id));
            return Ok(None);
        }
        let added = self.with_store(|s| self.inner.trust.add_parsed_rotation(&r, s, now))?;
        match added {
            Ok(Added::New) => {
                self.with_store(|s| s.count("trust.rotations_added"))?;
                Ok(Some(r.node_id))
            }
            Ok(Added::Known) => Ok(None),
            Err(e) => {
                refuse(e.to_string());
                Ok(None)
            }
        }
    }

    /// Applies a peer's list of rotation statements; each is verified on its own against its
    /// node's chain (its signer, not the envelope's sender, vouches for it). Returns the nodes
    /// whose keys moved on (envelopes held for them are due another look).
    pub(super) fn receive_rotations(&self, list: &sync::Batch, now: Millis) -> Result<Vec<NodeId>> {
        let mut moved = Vec::new();
        for item in &list.items {
            if let Some(node) = self.add_rotation(item, now, true)?
                && !moved.contains(&node)
            {
                moved.push(node);
            }
        }
        Ok(moved)
    }

    /// The `key_rotations` envelopes sent after each hello: every statement this node holds.
    pub(super) fn rotation_frames(&self) -> Result<Vec<Vec<u8>>> {
        if self.inner.trust.stored_rotations() == 0 {
            return Ok(Vec::new());
        }
        let all = lock(&self.inner.store).rotations()?;
        self.statement_frames(Kind::KeyRotations, all)
    }
}
