//! Peers' public keys, parsed once per peer instead of once per received frame.
//!
//! Parsing a peer's keys is not free: the Ed25519 point is decompressed and re-encoded, the
//! X25519 key is checked against small order with one scalar multiplication, and the ML-KEM-768
//! key gets the FIPS 203 modulus check; together more than a signature verification. The
//! store reads a peer's row for every frame from it, so it keeps the parsed keys here, keyed by
//! node id, and reuses them while the stored bytes are byte for byte the same. A received
//! hello that repeats its sender's stored keys (every periodic hello does) takes them from
//! here too.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::crypto::{ED25519_PUBLIC_KEY_LEN, X25519_PUBLIC_KEY_LEN};
use crate::error::Result;
use crate::identity::PublicIdentity;

/// Parsed identities by node id, at most `capacity` of them (all forgotten when full).
#[derive(Debug)]
pub(crate) struct ParsedKeys {
    capacity: usize,
    map: Mutex<HashMap<String, PublicIdentity>>,
}

impl ParsedKeys {
    /// Remembers up to `capacity` identities.
    pub fn new(capacity: usize) -> Self {
        ParsedKeys {
            capacity,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The identity made of the encoded keys `signing` and `kem` and `epoch`, stored for
    /// `node_id`: from the cache when the same bytes were parsed before, else parsed (and
    /// checked) by [`PublicIdentity::from_parts`] and remembered.
    pub fn identity(
        &self,
        node_id: &str,
        signing: &[u8],
        kem: &[u8],
        epoch: u32,
    ) -> Result<PublicIdentity> {
        if let Some(known) = self.cached(node_id, signing, kem, epoch) {
            return Ok(known);
        }
        let identity = PublicIdentity::from_parts(signing, kem, epoch)?;
        let mut map = crate::lock(&self.map);
        if map.len() >= self.capacity && !map.contains_key(node_id) {
            map.clear();
        }
        if self.capacity > 0 {
            map.insert(node_id.to_owned(), identity.clone());
        }
        Ok(identity)
    }

    /// The identity cached for `node_id` when it was parsed from exactly these encoded keys
    /// (the same value [`PublicIdentity::from_parts`] gives for them), else `None`. Looks
    /// only: keys that are still anyone's word (a received hello's, before its signature is
    /// checked and its row stored) are parsed by the caller and never cached, so that a stream
    /// of made-up identities cannot push the stored peers' keys out.
    pub fn cached(
        &self,
        node_id: &str,
        signing: &[u8],
        kem: &[u8],
        epoch: u32,
    ) -> Option<PublicIdentity> {
        let map = crate::lock(&self.map);
        map.get(node_id)
            .filter(|known| same_keys(known, signing, kem, epoch))
            .cloned()
    }
}

/// Whether `known` was parsed from exactly these bytes.
fn same_keys(known: &PublicIdentity, signing: &[u8], kem: &[u8], epoch: u32) -> bool {
    let (ed25519, ml_dsa) = signing.split_at(signing.len().min(ED25519_PUBLIC_KEY_LEN));
    let (x25519, ml_kem) = kem.split_at(kem.len().min(X25519_PUBLIC_KEY_LEN));
    known.epoch == epoch
        && known.signing.ed25519()[..] == *ed25519
        && known.signing.ml_dsa()[..] == *ml_dsa
        && known.kem.x25519()[..] == *x25519
        && known.kem.ml_kem()[..] == *ml_kem
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    /// The public identity of tag `n` at epoch 1, and its signing and KEM keys' bytes.
    fn identity(n: u8) -> (PublicIdentity, Vec<u8>, Vec<u8>) {
        let p = Identity::from_tag(n, 1).public().clone();
        let (sig, kem) = (p.signing.to_bytes(), p.kem.to_bytes());
        (p, sig, kem)
    }

    #[test]
    fn cached_keys_are_reused_only_for_the_same_bytes() {
        let cache = ParsedKeys::new(2);
        let (a, sig, kem) = identity(1);
        let id = a.node_id.as_str();
        assert_eq!(cache.identity(id, &sig, &kem, 1).unwrap(), a);
        assert_eq!(cache.identity(id, &sig, &kem, 1).unwrap(), a);
        // Other bytes under the same id are parsed again, never served from the cache.
        let (b, sig_b, kem_b) = identity(2);
        assert_eq!(cache.identity(id, &sig_b, &kem_b, 1).unwrap(), b);
        assert_eq!(cache.identity(id, &sig, &kem, 3).unwrap().epoch, 3);
        // Damaged keys are an error, cached or not.
        let mut bad = kem.clone();
        bad[..32].copy_from_slice(&[0; 32]);
        assert!(cache.identity(id, &sig, &bad, 1).is_err());
        assert!(cache.identity(id, &sig[..100], &kem, 1).is_err());
        // Full: forgets, keeps working.
        for n in 3..6 {
            let (p, sig, kem) = identity(n);
            let got = cache.identity(p.node_id.as_str(), &sig, &kem, 1);
            assert_eq!(got.unwrap(), p);
        }
        assert!(cache.map.lock().unwrap().len() <= 2);
    }

    #[test]
    fn a_look_serves_only_the_same_bytes_and_caches_nothing() {
        let cache = ParsedKeys::new(8);
        let (a, sig, kem) = identity(1);
        let id = a.node_id.as_str();
        assert_eq!(cache.cached(id, &sig, &kem, 1), None);
        assert!(cache.map.lock().unwrap().is_empty());
        // Cached by a stored row's read: served for the same bytes and epoch only.
        cache.identity(id, &sig, &kem, 1).unwrap();
        assert_eq!(cache.cached(id, &sig, &kem, 1), Some(a.clone()));
        assert_eq!(cache.cached(id, &sig, &kem, 2), None);
        // Other keys claiming the same id are not served, and replace nothing.
        let (b, sig_b, kem_b) = identity(2);
        assert_eq!(cache.cached(id, &sig_b, &kem_b, 1), None);
        let mut bad = kem.clone();
        bad[..32].copy_from_slice(&[0; 32]);
        assert_eq!(cache.cached(id, &sig, &bad, 1), None);
        assert_eq!(cache.cached(b.node_id.as_str(), &sig_b, &kem_b, 1), None);
        assert_eq!(cache.map.lock().unwrap().len(), 1);
        assert_eq!(cache.map.lock().unwrap().get(id), Some(&a));
    }
}
