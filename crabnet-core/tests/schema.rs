//! The committed event and state schema (`docs/schema.json`) and its readable summary
//! (`docs/EVENTS.md`) must be exactly what the core types generate, and what a node writes
//! must conform to the committed schema.
//!
//! After changing an event, a seed view or another type they contain, regenerate both:
//! `CRABNET_BLESS=1 cargo test -p crabnet-core --test schema`
//! (then update the Python classes in `crabnet-py/python/crabnet/_model.py` until
//! `tests/python/test_schema.py` passes).

#[path = "support/committed.rs"]
mod committed;
#[path = "support/demo.rs"]
mod demo;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crabnet_core::schema::{self, ROOTS};
use serde_json::{Value, json};

use committed::check_or_bless;

const REGENERATE: &str = "CRABNET_BLESS=1 cargo test -p crabnet-core --test schema";

fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

/// Compares `generated` with the committed file, or writes it under `CRABNET_BLESS`.
#[track_caller]
fn check_committed(name: &str, generated: &str) {
    check_or_bless(&docs_dir().join(name), generated, |line| {
        format!(
            "docs/{name} is out of date with the core types (first difference at line {line}); \
             regenerate it with\n    {REGENERATE}\nand make the Python classes \
             (crabnet-py/python/crabnet/_model.py) match (tests/python/test_schema.py)"
        )
    })
}

#[test]
fn committed_schema_and_summary_are_up_to_date() {
    let doc = schema::json_schema();
    let mut text = serde_json::to_string_pretty(&doc).unwrap();
    text.push('\n');
    check_committed("schema.json", &text);
    check_committed("EVENTS.md", &markdown(&doc));
}

/// The summary names every event type and the nested seed fields hosts ask about.
#[test]
fn summary_lists_every_event_and_nested_seed_fields() {
    let doc = schema::json_schema();
    let text = markdown(&doc);
    for t in event_types(&doc) {
        assert!(text.contains(&format!("### `{t}`")), "{t} missing");
    }
    assert!(event_types(&doc).len() >= 20);
    for field in [
        "`award.winner`",
        "`result.output_excerpt`",
        "`result.sandbox.level`",
        "`bids[].price`",
        "`seed.deadlines.claim_secs`",
        "`sandbox.can_run`",
    ] {
        assert!(text.contains(field), "{field} missing");
    }
}

/// Everything a node writes in a whole lifecycle (every node's events, seeds, summary and
/// peers) validates against the schema (the generated one, which the test above keeps equal
/// to the committed one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifecycle_conforms_to_the_schema() {
    let doc = schema::json_schema();
    let validator = |root: &str| {
        let mut d = doc.clone();
        d["$ref"] = json!(format!("#/$defs/{root}"));
        jsonschema::validator_for(&d).unwrap()
    };
    let [event, seed_view, overview, peer] = ROOTS.map(validator);
    let check = |v: &jsonschema::Validator, what: &str, value: Value| {
        let errors: Vec<String> = v
            .iter_errors(&value)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what} does not match docs/schema.json:\n{}\n{value:#}",
            errors.join("\n")
        );
    };

    let dir = tempfile::tempdir().unwrap();
    let (net, _) = demo::demo_after_lifecycle(dir.path(), "echo schema").await;
    let mut seen = BTreeSet::new();
    for (name, node) in &net.nodes {
        for e in node.events_after(0, 10_000).await.unwrap() {
            let value = serde_json::to_value(&e).unwrap();
            seen.insert(value["type"].as_str().unwrap().to_owned());
            check(&event, &format!("{name}'s event"), value);
        }
        for s in node.seeds(None).await.unwrap() {
            check(&seed_view, "a seed", serde_json::to_value(&s).unwrap());
        }
        let o = node.overview().await.unwrap();
        check(&overview, "the overview", serde_json::to_value(&o).unwrap());
        for p in node.peers().await.unwrap() {
            check(&peer, "a peer", serde_json::to_value(&p).unwrap());
        }
    }
    for t in [
        "seed_published",
        "bid_placed",
        "result_recorded",
        "seed_settled",
    ] {
        assert!(seen.contains(t), "no {t} event in {seen:?}");
    }
    // The document is strict enough to notice a missing field or a wrong type.
    let bad = json!({"seq": 1, "at": 2, "type": "seed_cancelled"});
    assert!(!event.is_valid(&bad));
    let bad = json!({"seq": 1, "at": "2", "type": "node_stopped", "node_id": "00"});
    assert!(!event.is_valid(&bad));
    net.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// docs/EVENTS.md, rendered from the schema document

fn defs(doc: &Value) -> &serde_json::Map<String, Value> {
    doc["$defs"].as_object().unwrap()
}

fn ref_name(schema: &Value) -> Option<&str> {
    schema.get("$ref")?.as_str()?.strip_prefix("#/$defs/")
}

/// The variants of a tagged enum (`oneOf` of objects with a one-value `tag` property).
fn variants<'a>(schema: &'a Value, tag: &str) -> Vec<(&'a str, &'a Value)> {
    schema["oneOf"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|v| Some((v["properties"][tag]["enum"][0].as_str()?, v)))
                .collect()
        })
        .unwrap_or_default()
}

fn event_types(doc: &Value) -> Vec<&str> {
    variants(&defs(doc)["EventKind"], "type")
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// One line of prose: the first paragraph, with rustdoc links reduced to code.
fn prose(schema: &Value) -> String {
    let text = schema["description"].as_str().unwrap_or("");
    let first = text.split("\n\n").next().unwrap_or("");
    let mut out = first.replace('\n', " ").replace('|', "\\|");
    while let Some(start) = out.find("[`") {
        let Some(len) = out[start..].find("`]") else {
            break;
        };
        let inner = out[start + 1..start + len + 1].to_owned();
        out.replace_range(start..start + len + 2, &inner);
    }
    out
}

/// The schema without its `null` alternative, and whether it had one.
fn strip_null(schema: &Value) -> (Value, bool) {
    if let Some(all) = schema["oneOf"].as_array()
        && all.len() == 2
        && let Some(i) = all.iter().position(|s| s["type"] == "null")
    {
        let mut inner = all[1 - i].clone();
        if inner.get("description").is_none()
            && let Some(d) = schema.get("description")
        {
            inner["description"] = d.clone();
        }
        return (inner, true);
    }
    if let Some(types) = schema["type"].as_array()
        && types.iter().any(|t| t == "null")
    {
        let mut inner = schema.clone();
        let rest: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
        inner["type"] = json!(rest[0]);
        return (inner, true);
    }
    (schema.clone(), false)
}

/// A short type name for a property schema.
fn type_name(doc: &Value, schema: &Value) -> String {
    let (schema, nullable) = strip_null(schema);
    let base = if let Some(name) = ref_name(&schema) {
        let def = &defs(doc)[name];
        if def.get("enum").is_some() {
            format!("[`{name}`](#{})", name.to_lowercase())
        } else if name.ends_with("Id") {
            format!("`{name}` (hex)")
        } else if name == "Violation" {
            "[`Violation`](#violation)".to_owned()
        } else {
            format!("`{name}`")
        }
    } else {
        match schema["type"].as_str() {
            Some("array") => format!("array of {}", type_name(doc, &schema["items"])),
            Some("object") if schema.get("additionalProperties").is_some() => format!(
                "map of {} to {}",
                type_name(doc, &schema["propertyNames"]),
                type_name(doc, &schema["additionalProperties"])
            ),
            Some("string") if schema.get("enum").is_some() => "string (enumerated)".to_owned(),
            Some(t) => t.to_owned(),
            None => "any".to_owned(),
        }
    };
    if nullable {
        format!("{base} or null")
    } else {
        base
    }
}

/// The object schema a property expands to (a referenced object, with flattened parts
/// merged), if any.
fn object_of<'a>(doc: &'a Value, schema: &'a Value) -> Option<Vec<(&'a Value, bool)>> {
    let name = ref_name(schema)?;
    let def = &defs(doc)[name];
    parts(doc, def)
}

/// The property-bearing parts of an object schema (`allOf` pieces come from flattening).
fn parts<'a>(doc: &'a Value, def: &'a Value) -> Option<Vec<(&'a Value, bool)>> {
    if def.get("properties").is_some() {
        return Some(vec![(def, true)]);
    }
    let all = def["allOf"].as_array()?;
    let mut out = Vec::new();
    for piece in all {
        if piece.get("properties").is_some() {
            out.push((piece, true));
        } else if let Some(inner) = object_of(doc, piece) {
            out.extend(inner);
        }
    }
    Some(out)
}

/// Table rows for an object's properties, nested objects expanded with dotted paths.
fn rows(doc: &Value, pieces: &[(&Value, bool)], prefix: &str, skip: &[&str], out: &mut String) {
    let mut props: Vec<(&String, &Value, bool)> = Vec::new();
    for (piece, _) in pieces {
        let required: Vec<&str> = piece["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (name, p) in piece["properties"].as_object().unwrap() {
            if !skip.contains(&name.as_str()) {
                props.push((name, p, required.contains(&name.as_str())));
            }
        }
    }
    props.sort_by(|a, b| a.0.cmp(b.0));
    for (name, p, required) in props {
        let path = format!("{prefix}{name}");
        let presence = if required { "always" } else { "optional" };
        let (inner, _) = strip_null(p);
        let desc = if p.get("description").is_some() {
            prose(p)
        } else {
            prose(&inner)
        };
        writeln!(
            out,
            "| `{path}` | {} | {presence} | {desc} |",
            type_name(doc, p)
        )
        .unwrap();
        if let Some(nested) = object_of(doc, &inner) {
            rows(doc, &nested, &format!("{path}."), &[], out);
        } else if inner["type"] == "array"
            && let Some(nested) = object_of(doc, &inner["items"])
        {
            rows(doc, &nested, &format!("{path}[]."), &[], out);
        }
    }
}

const TABLE_HEAD: &str = "| field | type | present | description |\n|---|---|---|---|\n";

fn object_section(doc: &Value, out: &mut String, title: &str, name: &str) {
    let def = &defs(doc)[name];
    writeln!(out, "## {title} (`{name}`)\n\n{}\n", prose(def)).unwrap();
    out.push_str(TABLE_HEAD);
    rows(doc, &parts(doc, def).unwrap(), "", &[], out);
    out.push('\n');
}

fn markdown(doc: &Value) -> String {
    let d = defs(doc);
    let mut out = String::new();
    out.push_str(
        "<!-- Generated from the core types by crabnet-core/tests/schema.rs; do not edit.\n     \
         Regenerate with: CRABNET_BLESS=1 cargo test -p crabnet-core --test schema -->\n\n\
         # Crabnet events and state\n\n\
         The JSON objects a node produces: events (through `Node::subscribe`, C event \
         callbacks and `crabnet_node_next_event`, Python `Node.events()`, `/api/events` and \
         the `events.ndjson` log), seeds in full, the node summary and peers. The JSON \
         Schema (draft 2020-12) with the same content is [`schema.json`](schema.json); the \
         wire messages between nodes are described in [`PROTOCOL.md`](PROTOCOL.md).\n\n\
         Ids are lowercase hexadecimal strings (a `NodeId` has 64 digits, a `SeedId`, \
         `BidId` or `MessageId` 32). Times are Unix milliseconds. A field marked *always* \
         is present in every object (as `null` when its type allows it and it has no \
         value); an *optional* field is left out when it has its default. Readers should \
         ignore fields they do not know: new versions add fields and event types.\n\n",
    );

    // Events.
    let event = &d["Event"];
    let kinds = &d["EventKind"];
    out.push_str("## Events\n\n");
    writeln!(
        out,
        "{} Every event has these fields, and those of its type below:\n",
        prose(event)
    )
    .unwrap();
    out.push_str(TABLE_HEAD);
    out.push_str("| `type` | string | always | The event's type: one of the names below. |\n");
    let common: Vec<(&Value, bool)> = event["allOf"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p.get("properties").is_some())
        .map(|p| (p, true))
        .collect();
    rows(doc, &common, "", &[], &mut out);
    out.push_str("\n| `type` | what happened |\n|---|---|\n");
    let all = variants(kinds, "type");
    for (name, v) in &all {
        writeln!(out, "| [`{name}`](#{name}) | {} |", prose(v)).unwrap();
    }
    out.push('\n');
    for (name, v) in &all {
        writeln!(out, "### `{name}`\n\n{}\n", prose(v)).unwrap();
        let own = v["properties"].as_object().unwrap();
        if own.len() > 1 {
            out.push_str(TABLE_HEAD);
            rows(doc, &[(v, true)], "", &["type"], &mut out);
            out.push('\n');
        } else {
            out.push_str("No fields besides `seq`, `at` and `type`.\n\n");
        }
    }

    object_section(doc, &mut out, "Seed in full", "SeedView");
    object_section(doc, &mut out, "Node summary", "Overview");
    object_section(doc, &mut out, "Peer", "PeerInfo");

    // Violations: a tagged enum on `rule`.
    let violation = &d["Violation"];
    writeln!(
        out,
        "## Violation\n\n{} An object with a `rule` and that rule's fields:\n",
        prose(violation)
    )
    .unwrap();
    out.push_str("| `rule` | fields | meaning |\n|---|---|---|\n");
    for (rule, v) in variants(violation, "rule") {
        let fields: Vec<String> = v["properties"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "rule")
            .map(|k| format!("`{k}`"))
            .collect();
        writeln!(out, "| `{rule}` | {} | {} |", fields.join(", "), prose(v)).unwrap();
    }
    out.push('\n');

    // Enumerations.
    out.push_str("## Enumerations\n\n");
    for (name, def) in d {
        if let Some(values) = def["enum"].as_array() {
            let values: Vec<String> = values
                .iter()
                .map(|v| format!("`{}`", v.as_str().unwrap()))
                .collect();
            writeln!(
                out,
                "### `{name}`\n\n{}\n\n{}\n",
                prose(def),
                values.join(", ")
            )
            .unwrap();
        }
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}
