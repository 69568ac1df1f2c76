//! Fixed identities shared by the fuzz targets and the seed generator
//! (`cargo run --manifest-path fuzz/Cargo.toml --example make_seeds`).

use crabnet_core::crypto::{KemSeeds, SigningSeeds};
use crabnet_core::identity::Identity;

/// A fixed identity from one seed byte (deterministic keys and node id).
pub fn identity(seed: u8) -> Identity {
    Identity::from_seeds(
        &SigningSeeds {
            ed25519: [seed; 32],
            ml_dsa: [seed ^ 0x11; 32],
        },
        &KemSeeds {
            x25519: [seed ^ 0x22; 32],
            ml_kem: [seed ^ 0x33; 64],
        },
        1,
    )
}

/// The receiving node of the fuzz targets.
pub fn receiver() -> Identity {
    identity(1)
}

/// The node that signed the seed envelopes.
pub fn sender() -> Identity {
    identity(2)
}
