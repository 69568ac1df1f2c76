//! The event and state schema: one JSON Schema (draft 2020-12) document for the JSON objects
//! a node hands to subscribers, C and Python hosts, the web API and the `events.ndjson` log,
//! generated from the core types (their `utoipa` schemas, which the web API's OpenAPI
//! document is also built from).
//!
//! The committed copy is `docs/schema.json`, summarised for readers in `docs/EVENTS.md`;
//! `crabnet-core/tests/schema.rs` fails when either is out of date and rewrites both with
//! `CRABNET_BLESS=1 cargo test -p crabnet-core --test schema`.
//!
//! A property listed in `required` is always written (as `null` when it has no value); a
//! property that is not required is left out when it has its default (for example
//! `Seed.network` when false), so readers must treat it as optional.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use utoipa::openapi::{RefOr, Schema};

use crate::monitor::Event;
use crate::node::{Overview, PeerInfo};
use crate::rotation::RotationInfo;
use crate::state::SeedView;

/// The `$id` of the schema document.
pub const SCHEMA_ID: &str = "https://crabnet.invalid/schema/events-and-state.json";

/// The top-level types of the document, under `$defs`: an event (an `events.ndjson` line, an
/// event callback's JSON), a seed in full, a node summary and a peer.
pub const ROOTS: [&str; 4] = ["Event", "SeedView", "Overview", "PeerInfo"];

/// The schema document. Its root validates one event; `$defs` holds every type, among them
/// the [`ROOTS`], so a host validates a seed against `schema.json#/$defs/SeedView`.
pub fn json_schema() -> Value {
    let mut schemas: Vec<(String, RefOr<Schema>)> = Vec::new();
    collect::<Event>(&mut schemas);
    collect::<SeedView>(&mut schemas);
    collect::<Overview>(&mut schemas);
    collect::<PeerInfo>(&mut schemas);
    collect::<RotationInfo>(&mut schemas);
    // Sorted by name, each once (a type used in several places is collected several times).
    let mut defs: BTreeMap<String, Value> = schemas
        .into_iter()
        .map(|(name, schema)| {
            let value = serde_json::to_value(schema).unwrap_or(Value::Null);
            (name, value)
        })
        .collect();
    // Aliases of primitive types (`Millis` is a `u64`) come out as references to a schema
    // named after the primitive: inline those.
    let primitives: BTreeMap<String, Value> = defs
        .iter()
        .filter(|(name, _)| name.starts_with(|c: char| c.is_ascii_lowercase()))
        .map(|(name, schema)| (name.clone(), schema.clone()))
        .collect();
    defs.retain(|name, _| !primitives.contains_key(name));
    let mut defs = Value::Object(defs.into_iter().collect());
    rewrite_refs(&mut defs, &primitives);

    let mut doc = Map::new();
    doc.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    doc.insert("$id".into(), json!(SCHEMA_ID));
    doc.insert("title".into(), json!("Crabnet events and state"));
    doc.insert(
        "description".into(),
        json!(
            "The JSON objects a Crabnet node produces: events (the root; one per line of \
             events.ndjson, one per event callback), seeds in full ($defs/SeedView), the node \
             summary ($defs/Overview), peers ($defs/PeerInfo) and key rotations \
             ($defs/RotationInfo). Generated from the core \
             types; docs/EVENTS.md lists the same in prose. A required property is always \
             present (null when it has no value); any other property is left out when it has \
             its default."
        ),
    );
    doc.insert("$ref".into(), json!("#/$defs/Event"));
    doc.insert("$defs".into(), defs);
    Value::Object(doc)
}

/// Collects `T`'s schema and the schemas of every type it refers to.
fn collect<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(schemas);
}

/// Points OpenAPI component references (`#/components/schemas/X`) at `$defs`, and replaces
/// references to `primitives` by their schema.
fn rewrite_refs(value: &mut Value, primitives: &BTreeMap<String, Value>) {
    match value {
        Value::Object(map) => {
            let target = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
                .map(str::to_owned);
            if let Some(name) = target {
                match primitives.get(&name) {
                    Some(Value::Object(inline)) => {
                        map.remove("$ref");
                        for (k, v) in inline {
                            map.entry(k.clone()).or_insert_with(|| v.clone());
                        }
                    }
                    _ => {
                        map.insert("$ref".into(), json!(format!("#/$defs/{name}")));
                    }
                }
            }
            for v in map.values_mut() {
                rewrite_refs(v, primitives);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_refs(v, primitives)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r.clone());
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    /// Every reference resolves inside the document, and every root type is there.
    #[test]
    fn references_resolve_within_the_document() {
        let doc = json_schema();
        let defs = doc["$defs"].as_object().unwrap();
        for root in ROOTS {
            assert!(defs.contains_key(root), "{root} missing");
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 20, "{}", all.len());
        for r in all {
            let name = r.strip_prefix("#/$defs/").unwrap_or_else(|| panic!("{r}"));
            assert!(defs.contains_key(name), "dangling reference {r}");
        }
    }

    /// `Millis` fields are plain integers, not references to a type named `u64`.
    #[test]
    fn primitive_aliases_are_inlined() {
        let doc = json_schema();
        assert!(doc["$defs"].get("u64").is_none());
        let at = &doc["$defs"]["Event"]["allOf"][1]["properties"]["at"];
        assert_eq!(at["type"], "integer", "{at}");
        assert_eq!(at["description"], "When it happened (Unix ms).");
    }
}
