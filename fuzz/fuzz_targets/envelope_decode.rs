//! Envelope decoding on arbitrary bytes: `envelope::parse`, then everything a receiver does with
//! a parsed envelope (`verify`, `hello`, `recipients`, `message` as a fixed identity). Nothing
//! may panic; errors are fine.
//!
//! Each input is tried twice: as it is, and "repaired" (magic, version, kind, flags and the
//! payload length forced valid) so that mutated payloads reach the payload decoders instead of
//! stopping at the header checks.

#![no_main]

use std::sync::LazyLock;

use crabnet_core::envelope::{self, HEADER_LEN, MAGIC, MAX_ENVELOPE_BYTES, OVERHEAD, VERSION};
use crabnet_core::identity::Identity;
use libfuzzer_sys::fuzz_target;

static ME: LazyLock<Identity> = LazyLock::new(crabnet_fuzz::receiver);
static SENDER: LazyLock<Identity> = LazyLock::new(crabnet_fuzz::sender);

fn receive(bytes: &[u8]) -> bool {
    let Ok(parsed) = envelope::parse(bytes, MAX_ENVELOPE_BYTES) else {
        return false;
    };
    // Signatures over arbitrary bytes (the seed corpus is signed by SENDER).
    let _ = parsed.verify(&SENDER.public().signing);
    let _ = parsed.hello();
    if let Ok(recipients) = parsed.recipients() {
        assert!(parsed.header.sealed || recipients.is_empty());
    }
    let _ = parsed.message(ME.node_id(), ME.kem());
    true
}

fuzz_target!(|data: &[u8]| {
    receive(data);

    if (OVERHEAD..=MAX_ENVELOPE_BYTES).contains(&data.len()) {
        let mut repaired = data.to_vec();
        repaired[..3].copy_from_slice(MAGIC);
        repaired[3] = VERSION;
        repaired[4] %= 8;
        repaired[5] &= 1;
        let len = (data.len() - OVERHEAD) as u32;
        repaired[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        assert!(receive(&repaired), "a well-framed envelope must parse");
    }
});
