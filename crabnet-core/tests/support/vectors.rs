//! The committed test vectors (`tests/vectors/*.json`, docs/PROTOCOL.md): the keys they are
//! made with and the check that the implementation still produces them byte for byte.

use crabnet_core::crypto::{KemSeeds, SigningSeeds};
use crabnet_core::identity::Identity;
use serde_json::Value;

/// Keys as in `tests/vectors/envelopes.json`: for tag t, Ed25519 seed = 32 bytes of t, ML-DSA-44
/// seed = 32 bytes of t+1, X25519 secret = 32 bytes of t+2, ML-KEM-768 seed = 64 bytes of t+3.
pub fn vector_identity(tag: u8, epoch: u32) -> Identity {
    Identity::from_seeds(
        &SigningSeeds {
            ed25519: [tag; 32],
            ml_dsa: [tag.wrapping_add(1); 32],
        },
        &KemSeeds {
            x25519: [tag.wrapping_add(2); 32],
            ml_kem: [tag.wrapping_add(3); 64],
        },
        epoch,
    )
}

/// The path of the committed vector file `name` (in `tests/vectors`).
pub fn vector_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name)
}

/// The committed vector file `name`, parsed.
pub fn committed(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(vector_path(name)).expect("vector file")).unwrap()
}

/// Asserts that the committed vector file `name` is `fresh` (what the implementation produces
/// now); `changed` says what changed otherwise. `CRABNET_REGENERATE_VECTORS=1` rewrites the file
/// first, after an intended change. Returns the committed vectors.
#[track_caller]
pub fn check_committed(name: &str, fresh: &Value, changed: &str) -> Value {
    if std::env::var_os("CRABNET_REGENERATE_VECTORS").is_some() {
        let path = vector_path(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let text = serde_json::to_string_pretty(fresh).unwrap() + "\n";
        std::fs::write(path, text).unwrap();
    }
    let committed = committed(name);
    assert_eq!(
        &committed, fresh,
        "{changed}; if intended, regenerate with CRABNET_REGENERATE_VECTORS=1 and update docs/PROTOCOL.md"
    );
    committed
}
