//! End-to-end attack test: a hostile publisher must not be able to read the runner's secret
//! identity through a task's output.
//!
//! Two real `crabnet listen --transport udp` processes on 127.0.0.1 (harness in
//! `tests/support/mod.rs`): node A, the victim, and node B, the attacker. B publishes seeds
//! whose commands print A's `identity.key` in base64, once by a path relative to the task's
//! working directory (task work dirs used to live in `<data_dir>/work/<task>/`, where
//! `../../identity.key` is the node's key) and once by the absolute path of A's data directory
//! (which an attacker may guess). A's operator bids, wins, claims and runs each seed with the
//! CLI on A's data directory while A's listener runs; A's signed `result_reported` reaches B.
//! B's view of the result must then hold no trace of A's key, and the task must have run and
//! failed (the runner cannot read the key).

mod support;

use support::Net;

/// `crabnet-identity-v1\n`, the public header of an identity file (identity.rs).
const IDENTITY_MAGIC: &[u8] = b"crabnet-identity-v1\n";
/// Secret bytes in a window that must not show up in the output (in any encoding tried).
const WINDOW: usize = 12;

/// Standard base64 with padding (what `base64 -w0` prints).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What of the identity file `key` appears in `text`, if anything: the whole file in base64,
/// or any `WINDOW`-byte run of its secret part raw, in base64 (at every alignment) or in hex.
fn key_leaks(key: &[u8], text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let whole = base64(key);
    if text.contains(&whole) {
        found.push(format!(
            "the whole identity file, base64-encoded ({} chars)",
            whole.len()
        ));
    }
    let secret = key.strip_prefix(IDENTITY_MAGIC).unwrap_or(key);
    assert!(secret.len() >= WINDOW, "identity file too short: {key:?}");
    if let Some(w) = secret
        .windows(WINDOW)
        .find(|w| text.as_bytes().windows(WINDOW).any(|t| t == *w))
    {
        found.push(format!("raw secret bytes {}", hex::encode(w)));
    }
    let chars = WINDOW * 4 / 3;
    for align in 0..3 {
        let encoded = base64(&secret[align..]);
        let encoded = encoded.trim_end_matches('=');
        if let Some(i) =
            (0..=encoded.len() - chars).find(|&i| text.contains(&encoded[i..i + chars]))
        {
            found.push(format!(
                "secret bytes in base64 ({}, alignment {align})",
                &encoded[i..i + chars]
            ));
        }
    }
    let hex = hex::encode(secret);
    let lower = text.to_ascii_lowercase();
    if let Some(i) = (0..=hex.len() - 2 * WINDOW)
        .step_by(2)
        .find(|&i| lower.contains(&hex[i..i + 2 * WINDOW]))
    {
        found.push(format!("secret bytes in hex ({})", &hex[i..i + 2 * WINDOW]));
    }
    found
}

#[test]
fn key_leaks_finds_the_encodings_it_claims_to() {
    let mut key = IDENTITY_MAGIC.to_vec();
    key.extend((0u8..164).map(|i| i.wrapping_mul(97).wrapping_add(13)));
    assert_eq!(base64(b"ab"), "YWI=");
    assert_eq!(base64(b"abc"), "YWJj");
    assert_eq!(base64(b"abcd"), "YWJjZA==");
    assert!(key_leaks(&key, "no key here: Permission denied").is_empty());
    assert!(
        key_leaks(&key, "crabnet-identity-v1\n").is_empty(),
        "the header is public"
    );
    let full = key_leaks(&key, &format!("x{}y", base64(&key)));
    assert!(full[0].starts_with("the whole identity file"), "{full:?}");
    let tail = base64(&key[IDENTITY_MAGIC.len() + 50..IDENTITY_MAGIC.len() + 80]);
    assert!(
        !key_leaks(&key, &tail).is_empty(),
        "a base64 run of the secret"
    );
    let hex = hex::encode(&key[IDENTITY_MAGIC.len() + 7..IDENTITY_MAGIC.len() + 40]);
    assert!(
        !key_leaks(&key, &hex.to_uppercase()).is_empty(),
        "a hex run"
    );
}

/// One probe of the attack: what it tries, the seed's command, the seed's id.
struct Probe {
    what: &'static str,
    command: String,
    seed: String,
}

/// B publishes "print the runner's identity key" seeds; A bids, wins, claims and runs them.
/// A's result reaches B; B's view of it must not contain A's key, and the task must have run
/// and failed, in the full sandbox that A's result reports. (Before the task sandbox, the runner
/// read the key and B received it.)
#[test]
fn hostile_seed_cannot_exfiltrate_the_runners_identity_key() {
    let mut net = Net::new(2);
    let (a, b) = (0, 1);
    net.start(a, &[b]);
    net.start(b, &[a]);
    net.wait_mesh(&[a, b]);

    let key_path = std::fs::canonicalize(net.nodes[a].dir.join("identity.key"))
        .expect("A's identity.key exists after init");
    let key = std::fs::read(&key_path).expect("read A's identity.key");
    assert!(
        key.starts_with(IDENTITY_MAGIC),
        "unexpected identity file format"
    );
    let key_path = key_path.to_str().expect("UTF-8 temp path").to_owned();
    assert!(!key_path.contains('\''), "{key_path}");

    let mut probes = vec![
        Probe {
            what: "relative path from the task's work dir",
            command: "base64 -w0 ../../identity.key".to_owned(),
            seed: String::new(),
        },
        Probe {
            what: "absolute path of A's data dir",
            command: format!("base64 -w0 '{key_path}'"),
            seed: String::new(),
        },
    ];
    for (n, probe) in probes.iter_mut().enumerate() {
        probe.seed = net.publish(b, &probe.command, 1);
        let price = 5 + n as u64;
        net.bid(a, &probe.seed, price);
        net.wait_award(a, &probe.seed, a, price);
        net.run(a, &["seed", "claim", &probe.seed]).ok();
        let ran = net
            .run(a, &["--json", "seed", "run", &probe.seed])
            .ok()
            .json();
        assert_eq!(ran["status"], "completed", "A ran the seed: {ran:#}");
    }

    let mut problems = Vec::new();
    for probe in &probes {
        // What a user of B sees: the seed with A's result, as it arrived over the network.
        let v = net.wait_seed(b, &probe.seed, "receives A's result", |v| {
            !v["result"].is_null()
        });
        let result = &v["result"];
        assert_eq!(result["runner"], net.id(a), "{v:#}");
        assert_eq!(result["sandbox"]["level"], "full", "{v:#}");
        let excerpt = result["output_excerpt"].as_str().unwrap_or_default();
        // The excerpt, and anything else in B's view of the seed.
        let mut leaks = key_leaks(&key, excerpt);
        leaks.extend(key_leaks(&key, &v.to_string()));
        leaks.sort();
        leaks.dedup();
        if !leaks.is_empty() {
            problems.push(format!(
                "[{}] `{}`: B's `seed show` holds A's identity.key: {}\n    output_excerpt: {excerpt:?}",
                probe.what,
                probe.command,
                leaks.join("; ")
            ));
        }
        let exit_code = result["exit_code"].as_i64();
        if result["success"] != false || exit_code.is_none_or(|c| c == 0) {
            problems.push(format!(
                "[{}] `{}`: the task did not fail with a non-zero exit code (exit code {exit_code:?}, success {}); reading the key must fail",
                probe.what, probe.command, result["success"]
            ));
        }
    }
    net.assert_alive(&[a, b]);
    assert!(
        problems.is_empty(),
        "a hostile seed exfiltrated the runner's secret key to its publisher:\n{}",
        problems.join("\n")
    );
}
