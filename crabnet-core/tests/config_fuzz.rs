//! Configuration fuzzing (issue 12, "Hostile peers"; issue 15): TOML documents with arbitrary
//! values (0, negative, u64::MAX, i64::MIN, huge strings, wrong types) for every key of the
//! `[retention]`, `[alerts]` (with `[[alerts.webhooks]]`), `[award]`, `[store]`, `[trust]` and
//! `[network]` sections. Parsing and validation never panic; a document is either accepted
//! with every value read back unchanged and inside its documented range, or refused with a
//! config error that names the key.

use crabnet_core::{Config, ErrorKind};
use proptest::prelude::*;

/// Value kinds a key takes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// An integer with its documented range (inclusive).
    Int(i128, i128),
    /// A string.
    Str,
    /// A boolean.
    Bool,
    /// A list of strings.
    StrList,
}

const DAY: i128 = 86_400;
const YEAR: i128 = 365 * DAY;

/// Every key of the fuzzed sections, with its documented range.
fn keys() -> Vec<(&'static str, &'static str, Kind)> {
    use Kind::*;
    vec![
        ("retention", "seeds_after_secs", Int(0, 10 * YEAR)),
        ("retention", "tombstones_after_secs", Int(3600, 10 * YEAR)),
        ("retention", "events_max_age_secs", Int(0, 10 * YEAR)),
        ("retention", "events_max_rows", Int(100, 1_000_000_000)),
        ("retention", "interval_secs", Int(1, DAY)),
        ("retention", "batch_size", Int(1, 100_000)),
        ("alerts", "enabled", Bool),
        ("alerts", "interval_ms", Int(10, 3_600_000)),
        ("alerts", "for_secs", Int(0, DAY)),
        ("alerts", "resolve_secs", Int(0, DAY)),
        ("alerts", "rate_window_secs", Int(1, DAY)),
        ("alerts", "no_peers_secs", Int(0, 30 * DAY)),
        ("alerts", "outbox_backlog", Int(0, 1 << 40)),
        ("alerts", "outbox_oldest_secs", Int(0, 30 * DAY)),
        ("alerts", "reject_max", Int(0, 1 << 40)),
        ("alerts", "runner_failure_percent", Int(0, 100)),
        ("alerts", "runner_min_runs", Int(1, 1 << 40)),
        ("alerts", "sync_lag_secs", Int(0, 30 * DAY)),
        ("alerts", "disk_free_min_bytes", Int(0, 1 << 50)),
        ("alerts", "webhook_timeout_ms", Int(100, 60_000)),
        ("alerts", "webhook_retry_base_ms", Int(1, 3_600_000)),
        ("alerts", "webhook_retry_max_ms", Int(1, 86_400_000)),
        ("alerts", "webhook_max_attempts", Int(1, 1_000)),
        ("alerts", "webhook_queue_max", Int(1, 1_000_000)),
        ("alerts.webhooks", "url", Str),
        ("alerts.webhooks", "secret_file", Str),
        ("alerts.webhooks", "ca_file", Str),
        ("award", "policy", Str),
        ("store", "busy_timeout_ms", Int(0, 3_600_000)),
        ("store", "seen_ttl_secs", Int(1, 10 * YEAR)),
        ("store", "sync", Str),
        ("trust", "mode", Str),
        ("trust", "allow", StrList),
        ("trust", "deny", StrList),
        ("trust", "anchors", StrList),
        ("trust", "certificate", Str),
        ("trust", "rotation_grace_secs", Int(0, 7 * DAY)),
        ("network", "tick_ms", Int(1, 60_000)),
        ("network", "retry_base_ms", Int(1, 3_600_000)),
        ("network", "retry_max_ms", Int(1, 86_400_000)),
        ("network", "message_ttl_secs", Int(1, YEAR)),
        ("network", "max_clock_skew_secs", Int(0, DAY)),
        ("network", "hello_interval_secs", Int(1, DAY)),
        ("network", "hellos_per_interval", Int(0, 1_000_000)),
        ("network", "sync_interval_secs", Int(1, DAY)),
        ("network", "reject_event_window_ms", Int(0, 3_600_000)),
        ("network", "unknown_sender_hold_ms", Int(0, 60_000)),
        ("network", "max_envelope_bytes", Int(8 * 1024, 1 << 20)),
        ("network", "source_rate_per_sec", Int(1, 10_000_000)),
        ("network", "source_burst", Int(1, 10_000_000)),
        ("network", "sender_rate_per_sec", Int(1, 10_000_000)),
        ("network", "sender_burst", Int(1, 10_000_000)),
        ("network", "lamport_window", Int(1, 1 << 62)),
        ("network", "max_peers", Int(1, 1_000_000)),
        ("network", "max_peers_per_address", Int(1, 1_000_000)),
        ("network", "peer_address_exempt", StrList),
        ("network", "sync_answer_ratio", Int(1, 1_000)),
        ("network", "sync_budget_bytes", Int(64 * 1024, 1 << 40)),
        ("network", "hello_answer_rate_per_sec", Int(1, 10_000_000)),
        ("network", "hello_answer_burst", Int(1, 10_000_000)),
        (
            "network",
            "hello_answer_source_rate_per_sec",
            Int(1, 10_000_000),
        ),
        ("network", "hello_answer_source_burst", Int(1, 10_000_000)),
        ("network", "release_heap", Bool),
    ]
}

/// TOML integers: edges, huge, negative, and in-range ones.
fn integer() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            0i128,
            1,
            -1,
            i64::MIN as i128,
            i64::MAX as i128,
            u64::MAX as i128,
            1 << 63,
            u32::MAX as i128,
            u32::MAX as i128 + 1,
            100,
            3600,
            60_000,
        ]),
        3 => 0i128..200_000,
        1 => any::<i64>().prop_map(i128::from),
    ]
    .prop_map(|n| n.to_string())
}

/// A TOML string: plausible values, garbage, and a huge one.
fn string() -> impl Strategy<Value = String> {
    let plausible = [
        "",
        "http://127.0.0.1:9/hook",
        "https://127.0.0.1/",
        "ftp://127.0.0.1/",
        "http://user:pw@127.0.0.1/",
        "/nonexistent/secret",
        "price",
        "price_and_reputation",
        "normal",
        "full",
        "open",
        "anchored",
        "127.0.0.1",
        &"ab".repeat(32),
    ];
    prop_oneof![
        3 => prop::sample::select(plausible.map(str::to_owned).to_vec()),
        2 => "[ -~]{0,24}",
        1 => (1usize..4).prop_map(|n| "x".repeat(n * 400_000)),
    ]
    .prop_map(|s| toml::Value::String(s).to_string())
}

/// Any value of any type for a key whose expected kind is `kind`: mostly the right type.
fn value(kind: Kind) -> BoxedStrategy<String> {
    let right = match kind {
        Kind::Int(..) => integer().boxed(),
        Kind::Str => string().boxed(),
        Kind::Bool => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        Kind::StrList => prop::collection::vec(string(), 0..3)
            .prop_map(|v| format!("[{}]", v.join(", ")))
            .boxed(),
    };
    let wrong = prop_oneof![
        integer(),
        string(),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("1.5".to_owned()),
        Just("-inf".to_owned()),
        Just("[1, 2]".to_owned()),
        Just("{ a = 1 }".to_owned()),
        Just("1979-05-27T07:32:00Z".to_owned()),
    ];
    prop_oneof![4 => right, 1 => wrong].boxed()
}

/// One key (index into [`keys`]) with a value.
fn entry() -> impl Strategy<Value = (usize, String)> {
    (0..keys().len()).prop_flat_map(|i| (Just(i), value(keys()[i].2)))
}

/// The TOML text of the entries, one table per section (webhook keys go into one
/// `[[alerts.webhooks]]` entry, written last, so that a following key cannot land in it).
fn document(entries: &[(usize, String)]) -> String {
    let keys = keys();
    let mut sections: Vec<(&str, Vec<(&str, &str)>)> = Vec::new();
    for (i, v) in entries {
        let (section, key, _) = keys[*i];
        match sections.iter_mut().find(|(s, _)| *s == section) {
            Some((_, list)) => {
                if !list.iter().any(|(k, _)| *k == key) {
                    list.push((key, v));
                }
            }
            None => sections.push((section, vec![(key, v.as_str())])),
        }
    }
    sections.sort_by_key(|(s, _)| *s == "alerts.webhooks");
    let mut text = String::new();
    for (section, list) in sections {
        if section == "alerts.webhooks" {
            text.push_str("[[alerts.webhooks]]\n");
        } else {
            text.push_str(&format!("[{section}]\n"));
        }
        for (k, v) in list {
            text.push_str(&format!("{k} = {v}\n"));
        }
    }
    text
}

/// The value a parsed config holds for a key, as TOML.
fn read_back(config: &Config, section: &str, key: &str) -> Option<toml::Value> {
    let table: toml::Table = toml::from_str(&config.to_toml()).unwrap();
    let mut at = &toml::Value::Table(table);
    for part in section.split('.') {
        at = at.get(part)?;
    }
    if let toml::Value::Array(a) = at {
        at = a.first()?;
    }
    at.get(key).cloned()
}

/// At most 300 characters of `text`, for failure messages.
fn short(text: &str) -> String {
    text.chars().take(300).collect()
}

/// Checks one document: no panic; accepted with the values unchanged and in range, or
/// refused naming one of its keys (`named` lists the names an error may use).
fn check(entries: &[(usize, String)]) -> Result<(), TestCaseError> {
    let keys = keys();
    let text = document(entries);
    let shown = short(&text);
    let result = std::panic::catch_unwind(|| Config::from_toml(&text));
    let Ok(result) = result else {
        return Err(TestCaseError::fail(format!("panicked on:\n{shown}")));
    };
    match result {
        Ok(config) => {
            prop_assert!(config.validate().is_ok(), "{}", shown);
            let written: toml::Table = toml::from_str(&text).unwrap();
            for (i, _) in entries {
                let (section, key, kind) = keys[*i];
                let Some(got) = read_back(&config, section, key) else {
                    continue;
                };
                let mut want = &toml::Value::Table(written.clone());
                for part in section.split('.') {
                    want = want.get(part).unwrap();
                }
                if let toml::Value::Array(a) = want {
                    want = &a[0];
                }
                let want = want.get(key).unwrap();
                if let Kind::Int(min, max) = kind {
                    let n = got.as_integer().unwrap() as i128;
                    prop_assert!(
                        (min..=max).contains(&n),
                        "{section}.{key} = {n} accepted outside {min}..={max}:\n{shown}"
                    );
                    prop_assert_eq!(Some(n), want.as_integer().map(i128::from), "{}", shown);
                }
            }
        }
        Err(e) => {
            let message = e.to_string();
            prop_assert_eq!(e.kind(), ErrorKind::Config, "{}", short(&message));
            prop_assert!(!message.contains('\n'), "one line: {}", short(&message));
            prop_assert!(message.len() < 1024, "long: {}", short(&message));
            // A cross-field error names both keys, or (freshness) the key it must cover.
            let named = entries.iter().any(|(i, _)| {
                let (section, key, _) = keys[*i];
                message.contains(&format!("{section}.{key}"))
                    || (section == "network" && message.contains("store.seen_ttl_secs"))
                    || (section == "alerts.webhooks" && message.contains("alerts.webhooks"))
            });
            prop_assert!(
                named,
                "the error names no key of the document: {}\n{}",
                short(&message),
                shown
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// One key with an arbitrary value: accepted within its range, or an error naming it.
    #[test]
    fn one_arbitrary_key(entry in entry()) {
        check(&[entry])?;
    }

    /// Several keys of several sections at once.
    #[test]
    fn many_arbitrary_keys(entries in prop::collection::vec(entry(), 1..12)) {
        check(&entries)?;
    }
}

/// Every key alone, at every edge value: the exhaustive companion of the property.
#[test]
fn every_key_at_the_edges() {
    let edges = [
        "0".to_owned(),
        "-1".to_owned(),
        i64::MIN.to_string(),
        i64::MAX.to_string(),
        u64::MAX.to_string(),
        (1u128 << 63).to_string(),
        "\"\"".to_owned(),
        format!("\"{}\"", "x".repeat(1 << 20)),
        "true".to_owned(),
        "1.5".to_owned(),
        "[]".to_owned(),
        "{}".to_owned(),
    ];
    for i in 0..keys().len() {
        for v in &edges {
            check(&[(i, v.clone())]).unwrap_or_else(|e| panic!("{}: {e}", keys()[i].1));
        }
    }
}
