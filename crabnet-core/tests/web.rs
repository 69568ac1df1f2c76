//! The monitoring HTTP API: every route against the generated OpenAPI document, the shared
//! rules (token, hosts, methods, bodies, 404s), bad queries, the live stream, a real listener,
//! and the CLI's `listen --http` / `demo --serve`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use crabnet_core::demo::DemoNetwork;
use crabnet_core::web::{self, WebConfig};
use crabnet_core::{ErrorKind, Node, PublishRequest, SeedView};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::demo::demo_after_lifecycle;
use support::http::{get_head, http, read_into_until, read_to_close};
use support::{Listeners, Sandbox, run_bounded, strs};
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789abcdef";

/// A demo network (alice publishes, bob and carol bid) after one whole lifecycle.
struct Fixture {
    net: DemoNetwork,
    seed: SeedView,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (net, seed) = demo_after_lifecycle(dir.path(), "echo web test").await;
        Fixture {
            net,
            seed,
            _dir: dir,
        }
    }

    fn publisher(&self) -> &Node {
        &self.net.nodes[0].1
    }

    /// The node that won and ran the demo task.
    fn winner(&self) -> &Node {
        let winner = self
            .seed
            .award
            .as_ref()
            .unwrap()
            .winner_node
            .clone()
            .unwrap();
        &self
            .net
            .nodes
            .iter()
            .find(|(_, n)| n.id() == &winner)
            .unwrap()
            .1
    }

    /// A started fixture and the router of its publisher with the default settings.
    async fn with_app() -> (Fixture, Router) {
        let f = Fixture::start().await;
        let app = f.app();
        (f, app)
    }

    fn app(&self) -> Router {
        web::router(self.publisher().clone(), &WebConfig::local(0)).unwrap()
    }

    fn app_with(&self, config: WebConfig) -> Router {
        web::router(self.publisher().clone(), &config).unwrap()
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn content_type(&self) -> String {
        self.headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    /// Asserts a JSON error with this status and kind.
    fn assert_error(&self, status: u16, kind: &str) -> String {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        assert!(
            self.content_type().starts_with("application/json"),
            "{}",
            self.content_type()
        );
        let body = self.json();
        assert_eq!(body["error"]["status"], status, "{body}");
        assert_eq!(body["error"]["kind"], kind, "{body}");
        body["error"]["message"].as_str().unwrap().to_owned()
    }
}

/// A request from a loopback client (what the API answers without a token).
fn request(method: Method, path: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1:7980")
}

/// [`request`] without a body.
fn empty(method: Method, path: &str) -> Request<Body> {
    request(method, path).body(Body::empty()).unwrap()
}

/// The router's response to `req`, its body unread.
async fn respond(app: &Router, req: Request<Body>) -> axum::response::Response {
    app.clone().oneshot(req).await.unwrap()
}

async fn send(app: &Router, req: Request<Body>) -> Reply {
    let response = respond(app, req).await;
    let status = response.status();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the body ends")
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

async fn get(app: &Router, path: &str) -> Reply {
    send(app, empty(Method::GET, path)).await
}

/// A page of `/api/events` (`query`: its query string, e.g. `since=3&limit=10`) as JSON.
async fn events_page(app: &Router, query: &str) -> Value {
    get(app, &format!("/api/events?{query}")).await.json()
}

/// Every event of the fixture's publisher (one page of up to 1000), oldest first.
async fn all_events(app: &Router) -> Vec<Value> {
    events_page(app, "limit=1000").await["events"]
        .as_array()
        .unwrap()
        .clone()
}

/// Opens an event stream through the router; returns the status and the first `n` SSE
/// messages (`id`, parsed `data`).
async fn stream_events(app: &Router, req: Request<Body>, n: usize) -> Vec<(String, Value)> {
    let response = respond(app, req).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = response.into_body();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let messages = sse_messages(&text);
        if messages.len() >= n {
            return messages.into_iter().take(n).collect();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, body.frame())
            .await
            .unwrap_or_else(|_| panic!("only {} events arrived:\n{text}", messages.len()))
            .expect("the stream goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

/// Complete SSE messages in `text`: (id, data as JSON).
fn sse_messages(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let complete = match text.rfind("\n\n") {
        Some(i) => &text[..i],
        None => return out,
    };
    for block in complete.split("\n\n") {
        let mut id = String::new();
        let mut data = String::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        if !data.is_empty() {
            out.push((id, serde_json::from_str(&data).unwrap()));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The OpenAPI document

/// Validates `instance` against `schema` (which may `$ref` the document's components).
fn check_schema(doc: &Value, schema: &Value, instance: &Value) -> Result<(), String> {
    let mut root = json!({ "allOf": [schema] });
    root["components"] = doc["components"].clone();
    let validator = jsonschema::validator_for(&root).map_err(|e| format!("bad schema: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// Checks a reply against the operation's documented responses: the status is documented,
/// the content type is one of its media types, and a JSON body matches the schema.
fn conforms(doc: &Value, path: &str, reply: &Reply) {
    let op = &doc["paths"][path]["get"];
    let response = &op["responses"][reply.status.as_str()];
    assert!(
        response.is_object(),
        "GET {path} answered {} which its documentation does not list ({})",
        reply.status,
        reply.text()
    );
    let content_type = reply.content_type();
    let essence = content_type.split(';').next().unwrap().trim();
    let media = &response["content"][essence];
    assert!(
        media.is_object(),
        "GET {path} {}: content type {content_type} is not documented: {}",
        reply.status,
        response["content"]
    );
    if essence == "application/json" {
        let body = reply.json();
        if let Err(e) = check_schema(doc, &media["schema"], &body) {
            panic!(
                "GET {path} {}: the body does not match its schema:\n{e}\n{body:#}",
                reply.status
            );
        }
    }
}

/// The documented routes, with example values for their path parameters.
fn concrete(path: &str, seed_id: &str) -> String {
    path.replace("{id}", seed_id).replace("{file}", "app.js")
}

const ROUTES: [&str; 12] = [
    "/",
    "/api/alerts",
    "/api/events",
    "/api/events/stream",
    "/api/openapi.json",
    "/api/overview",
    "/api/seeds",
    "/api/seeds/{id}",
    "/api/topology",
    "/assets/{file}",
    "/health",
    "/metrics",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_answers_as_documented() {
    let (f, app) = Fixture::with_app().await;
    let doc = serde_json::to_value(web::openapi()).unwrap();

    // The served document is the generated one, and it lists exactly the routes we serve.
    let served = get(&app, "/api/openapi.json").await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.json(), doc);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort();
    assert_eq!(paths, ROUTES);

    // The schemas are strict enough to notice a wrong body.
    let schema = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    assert!(check_schema(&doc, &schema("OverviewResponse"), &json!({})).is_err());
    let half_event = json!({"seq": 1, "at": 2, "type": "seed_published"});
    assert!(check_schema(&doc, &schema("Event"), &half_event).is_err());
    let odd_event = json!({"seq": 1, "at": 2, "type": "seed_cancelled", "seed_id": 7});
    assert!(check_schema(&doc, &schema("Event"), &odd_event).is_err());

    // The sandbox fields: optional on seeds and results (left out at their defaults), always
    // in the overview; levels and policies are closed sets.
    let schemas = &doc["components"]["schemas"];
    let required = |name: &str| -> Vec<String> {
        serde_json::from_value(schemas[name]["required"].clone()).unwrap()
    };
    for (name, field) in [
        ("Seed", "network"),
        ("Seed", "isolation"),
        ("TaskResult", "sandbox"),
    ] {
        assert!(
            schemas[name]["properties"][field].is_object(),
            "{name}.{field}"
        );
        assert!(
            !required(name).contains(&field.to_owned()),
            "{name}.{field}"
        );
    }
    assert!(required("OverviewResponse").contains(&"sandbox".to_owned()));
    assert!(required("SandboxInfo").contains(&"level".to_owned()));
    let status = f.publisher().overview().await.unwrap().sandbox;
    let status = serde_json::to_value(status).unwrap();
    check_schema(&doc, &schema("SandboxStatus"), &status).unwrap();
    let mut odd_status = status.clone();
    odd_status["policy"] = json!("sometimes");
    assert!(check_schema(&doc, &schema("SandboxStatus"), &odd_status).is_err());
    assert!(check_schema(&doc, &schema("SandboxLevel"), &json!("airtight")).is_err());

    let seed_id = f.seed.seed.id.to_string();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let ops: Vec<&String> = item.as_object().unwrap().keys().collect();
        assert_eq!(ops, ["get"], "{path}: only GET is documented");
        let url = concrete(path, &seed_id);
        if path == "/api/events/stream" {
            let req = empty(Method::GET, &format!("{url}?since=0"));
            let first = stream_events(&app, req, 3).await;
            let event_schema = json!({"$ref": "#/components/schemas/Event"});
            for (id, event) in &first {
                check_schema(&doc, &event_schema, event)
                    .unwrap_or_else(|e| panic!("stream event does not match Event:\n{e}"));
                assert_eq!(id, &event["seq"].to_string());
            }
            continue;
        }
        let reply = get(&app, &url).await;
        assert_eq!(reply.status, StatusCode::OK, "GET {url}: {}", reply.text());
        conforms(&doc, path, &reply);

        // The errors the middleware answers with are documented for every route too.
        let post = send(&app, empty(Method::POST, &url)).await;
        assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
        conforms(&doc, path, &post);
        let with_body = send(
            &app,
            request(Method::GET, &url)
                .header("content-length", "2")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
        assert_eq!(with_body.status, StatusCode::BAD_REQUEST);
        conforms(&doc, path, &with_body);
        let rebinding = send(
            &app,
            Request::get(&url)
                .header("host", "attacker.example:7980")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(rebinding.status, StatusCode::FORBIDDEN);
        conforms(&doc, path, &rebinding);
    }

    // With a token, every route but /health answers 401 without it, as documented.
    let locked = f.app_with(WebConfig {
        token: Some(TOKEN.into()),
        ..WebConfig::local(0)
    });
    for path in ROUTES {
        let reply = get(&locked, &concrete(path, &seed_id)).await;
        if path == "/health" {
            assert_eq!(reply.status, StatusCode::OK);
        } else {
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
            conforms(&doc, path, &reply);
        }
    }

    // Documented error answers of the handlers themselves.
    conforms(&doc, "/api/seeds/{id}", &get(&app, "/api/seeds/00ff").await);
    let unknown = format!("/api/seeds/{}", "ab".repeat(16));
    conforms(&doc, "/api/seeds/{id}", &get(&app, &unknown).await);
    conforms(&doc, "/api/events", &get(&app, "/api/events?limit=0").await);
    conforms(
        &doc,
        "/api/seeds",
        &get(&app, "/api/seeds?status=nope").await,
    );
    conforms(&doc, "/assets/{file}", &get(&app, "/assets/nope.js").await);
    f.net.stop().await.unwrap();
    conforms(&doc, "/health", &get(&app, "/health").await);
    conforms(&doc, "/api/overview", &get(&app, "/api/overview").await);
}

// ---------------------------------------------------------------------------------------------
// Handlers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_overview_topology_and_seeds_show_the_network() {
    let (f, app) = Fixture::with_app().await;
    let alice = f.publisher();

    let health = get(&app, "/health").await;
    assert_eq!(health.status, StatusCode::OK);
    let h = health.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["node_id"], alice.id().to_string());
    assert_eq!(h["store"]["ok"], true);
    assert_eq!(h["transport"]["name"], "memory");
    assert_eq!(h["transport"]["running"], true);
    assert_eq!(h["transport"]["peers"], 2);

    let o = get(&app, "/api/overview").await.json();
    assert_eq!(o["node"]["name"], "alice");
    assert_eq!(o["node"]["fingerprint"], alice.id().as_str()[..16]);
    assert_eq!(o["seeds_by_status"]["settled"], 1);
    assert_eq!(o["seeds_by_status"]["open"], 0);
    assert_eq!(o["seeds_total"], 1);
    assert_eq!(o["recent_seeds"][0]["id"], f.seed.seed.id.to_string());
    assert_eq!(o["recent_seeds"][0]["status"], "settled");
    assert_eq!(o["recent_seeds"][0]["bids"], 2);
    assert_eq!(o["peers"].as_array().unwrap().len(), 2);
    assert_eq!(o["rejections"].as_object().unwrap().len(), 13);
    assert_eq!(o["rejections"]["bad_signature"], 0);
    assert!(o["counters"]["messages.sent"].as_u64().unwrap() >= 3);
    assert!(o["last_event_seq"].as_u64().unwrap() > 5);
    // The task sandbox: the node's policy (the demo's is best_effort), and this machine
    // builds the full sandbox.
    let policy = alice.config().runner.sandbox.as_str();
    assert_eq!(o["sandbox"]["policy"], policy, "{o:#}");
    assert_eq!(o["sandbox"]["level"], "full", "{o:#}");
    assert_eq!(o["sandbox"]["can_run"], true);
    assert_eq!(o["sandbox"]["allow_network"], false);
    assert_eq!(o["sandbox"]["missing"], json!([]));
    assert!(
        o["sandbox"]["features"]
            .as_array()
            .unwrap()
            .contains(&json!("landlock_fs")),
        "{o:#}"
    );
    // The demo task's result records the sandbox it ran in.
    assert_eq!(o["recent_seeds"][0]["sandbox_level"], "full");
    assert_eq!(o["recent_seeds"][0]["network"], false);

    let t = get(&app, "/api/topology").await.json();
    let names = strs(&t["peers"], "name");
    assert_eq!(names.len(), 2);
    assert!(
        names.contains(&"bob") && names.contains(&"carol"),
        "{names:?}"
    );
    for p in t["peers"].as_array().unwrap() {
        assert_eq!(p["active"], true);
        assert_eq!(p["fingerprint"].as_str().unwrap().len(), 16);
        assert!(
            p["node_id"]
                .as_str()
                .unwrap()
                .starts_with(p["fingerprint"].as_str().unwrap())
        );
    }
    assert_eq!(t["links"].as_array().unwrap().len(), 2);
    assert_eq!(t["links"][0]["from"], alice.id().to_string());
    assert_eq!(t["links"][0]["transport"], "memory");

    // A second, open seed: the list is newest first and filters by status.
    let open = alice
        .publish(PublishRequest::new("echo second"))
        .await
        .unwrap();
    let list = get(&app, "/api/seeds").await.json();
    let ids = strs(&list["seeds"], "id");
    assert_eq!(ids, [open.seed.id.as_str(), f.seed.seed.id.as_str()]);
    let only_open = get(&app, "/api/seeds?status=open").await.json();
    assert_eq!(only_open["seeds"].as_array().unwrap().len(), 1);
    assert_eq!(only_open["seeds"][0]["command"], "echo second");
    assert_eq!(only_open["seeds"][0]["sandbox_level"], Value::Null); // no result yet
    assert_eq!(
        get(&app, "/api/seeds?limit=1").await.json()["seeds"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // One seed in full.
    let detail = get(&app, &format!("/api/seeds/{}", f.seed.seed.id)).await;
    assert_eq!(detail.status, StatusCode::OK);
    let d = detail.json();
    assert_eq!(d["status"], "settled");
    assert_eq!(d["bids"].as_array().unwrap().len(), 2);
    assert!(d["award"]["winner_node"].is_string());
    assert!(d["claim"]["claimer"].is_string());
    assert_eq!(d["result"]["success"], true);
    assert_eq!(d["result"]["sandbox"]["level"], "full");
    assert_eq!(d["result"]["sandbox"]["network"], false);
    assert!(
        d["result"]["output_excerpt"]
            .as_str()
            .unwrap()
            .contains("web test")
    );
    assert_eq!(d["settlement"]["outcome"], "accepted");

    // A seed that needs the network and a weaker sandbox: its document carries both.
    let doc = serde_json::to_value(web::openapi()).unwrap();
    let online = alice
        .publish(PublishRequest {
            network: true,
            isolation: crabnet_core::model::SandboxLevel::Partial,
            ..PublishRequest::new("echo online")
        })
        .await
        .unwrap();
    let reply = get(&app, &format!("/api/seeds/{}", online.seed.id)).await;
    conforms(&doc, "/api/seeds/{id}", &reply);
    assert_eq!(reply.json()["seed"]["network"], true);
    assert_eq!(reply.json()["seed"]["isolation"], "partial");
    let listed = get(&app, "/api/seeds?status=open").await;
    conforms(&doc, "/api/seeds", &listed);
    let seeds = listed.json()["seeds"].as_array().unwrap().clone();
    let row = seeds
        .iter()
        .find(|r| r["id"] == online.seed.id.as_str())
        .unwrap();
    assert_eq!(row["network"], true);
    assert_eq!(row["sandbox_level"], Value::Null);

    f.net.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_page_in_stable_order_and_filter_by_kind() {
    let (f, app) = Fixture::with_app().await;
    let all = all_events(&app).await;
    assert!(all.len() > 10, "{}", all.len());
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // Pages of 3 add up to the same events, once each, in the same order.
    let mut paged = Vec::new();
    let mut since = 0;
    loop {
        let page = events_page(&app, &format!("since={since}&limit=3")).await;
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= 3);
        paged.extend(events.iter().cloned());
        since = page["next_since"].as_u64().unwrap();
        if !page["more"].as_bool().unwrap() {
            break;
        }
    }
    // The log may grow between the two reads (gossip copies arriving late): the pages hold
    // every event of the first read, in order, followed only by newer ones.
    assert!(paged.len() >= all.len(), "{} < {}", paged.len(), all.len());
    assert_eq!(paged[..all.len()], all[..]);
    let newer: Vec<u64> = paged[all.len()..]
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(
        newer.iter().all(|&s| s > *seqs.last().unwrap()),
        "{newer:?}"
    );

    let filtered = events_page(&app, "kind=seed_settled,bid_placed").await;
    let types = strs(&filtered["events"], "type");
    assert_eq!(types, ["bid_placed", "bid_placed", "seed_settled"]);
    assert_eq!(filtered["more"], false);
    let last = events_page(&app, "kind=seed_settled&limit=1").await;
    assert_eq!(last["events"][0]["type"], "seed_settled");
    let after = last["next_since"].as_u64().unwrap();
    let rest = events_page(&app, &format!("kind=seed_settled&since={after}")).await;
    assert_eq!(rest["events"].as_array().unwrap().len(), 0);
    f.net.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queries_paths_and_bodies_get_400() {
    let (f, app) = Fixture::with_app().await;
    for (path, needle) in [
        ("/api/events?limit=0", "limit"),
        ("/api/events?limit=1001", "limit"),
        ("/api/events?limit=many", "limit"),
        ("/api/events?since=-1", "since"),
        ("/api/events?since=99999999999999999999999", "since"),
        ("/api/events?kind=nope", "nope"),
        ("/api/events?kind=", "kind"),
        ("/api/events?kind=seed_published,,bid_placed", "kind"),
        ("/api/events?sinse=1", "sinse"),
        ("/api/events?limit=1&limit=2", "limit"),
        ("/api/events/stream?since=x", "since"),
        ("/api/events/stream?kind=everything", "everything"),
        ("/api/seeds?status=running", "running"),
        ("/api/seeds?limit=0", "limit"),
        ("/api/seeds?limit=-5", "limit"),
        ("/api/seeds?extra=1", "extra"),
        ("/api/seeds/not-an-id", "SeedId"),
        ("/api/seeds/ABCDEF0123456789ABCDEF0123456789", "SeedId"),
        ("/api/seeds/%FF%FE", ""),
        ("/api/seeds/%E2%82", ""),
    ] {
        let reply = get(&app, path).await;
        let message = reply.assert_error(400, "validation");
        assert!(message.contains(needle), "{path}: {message}");
    }
    // Bad UTF-8 and bad percent-encoding in the query.
    for path in ["/api/events?kind=%FF", "/api/seeds?status=%"] {
        get(&app, path).await.assert_error(400, "validation");
    }
    // A bad Last-Event-ID.
    let reply = send(
        &app,
        request(Method::GET, "/api/events/stream")
            .header("last-event-id", "yesterday")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    reply.assert_error(400, "validation");
    // Request bodies are refused, whatever they hold.
    for (headers, body) in [
        (vec![("content-length", "5")], "hello"),
        (vec![("transfer-encoding", "chunked")], "\u{0}\u{1}garbage"),
        (vec![("content-length", "nope")], ""),
    ] {
        let mut req = request(Method::GET, "/api/overview");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let reply = send(&app, req.body(Body::from(body)).unwrap()).await;
        reply.assert_error(400, "validation");
    }
    // The server still answers normally afterwards.
    assert_eq!(get(&app, "/api/overview").await.status, StatusCode::OK);
    f.net.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_get_and_head_are_allowed() {
    let (f, app) = Fixture::with_app().await;
    for method in [
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::TRACE,
        Method::from_bytes(b"BREW").unwrap(),
    ] {
        for path in [
            "/health",
            "/api/seeds",
            "/api/nope",
            "/",
            "/some/page",
            "/metrics",
        ] {
            let reply = send(&app, empty(method.clone(), path)).await;
            reply.assert_error(405, "method_not_allowed");
            assert_eq!(reply.headers["allow"], "GET, HEAD", "{method} {path}");
        }
    }
    let head = send(&app, empty(Method::HEAD, "/api/overview")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert!(head.content_type().starts_with("application/json"));
    let head = send(&app, empty(Method::HEAD, "/")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    f.net.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_api_paths_are_json_404_and_other_paths_serve_the_dashboard() {
    let (f, app) = Fixture::with_app().await;
    for path in [
        "/api",
        "/api/",
        "/api/nope",
        "/api/seeds/",
        "/api/events/stream/more",
        &format!("/api/seeds/{}/bids", f.seed.seed.id),
        &format!("/api/seeds/{}", "0".repeat(32)),
    ] {
        let message = get(&app, path).await.assert_error(404, "not_found");
        assert!(!message.is_empty());
    }
    for path in [
        "/",
        "/index.html",
        "/seeds/123",
        "/a/b/c?x=1",
        "/favicon.ico",
        "/%FF",
    ] {
        let reply = get(&app, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.content_type(), "text/html; charset=utf-8");
        assert!(reply.text().contains("<title>Crabnet"), "{path}");
        assert!(
            reply.headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'self'")
        );
    }
    let js = get(&app, "/assets/app.js").await;
    assert_eq!(js.status, StatusCode::OK);
    assert_eq!(js.content_type(), "text/javascript; charset=utf-8");
    assert!(js.text().contains("EventSource"));
    let css = get(&app, "/assets/style.css").await;
    assert_eq!(css.content_type(), "text/css; charset=utf-8");
    for path in [
        "/assets/nope.js",
        "/assets/..",
        "/assets/.hidden",
        "/assets/%2e%2e%2fCargo.toml",
    ] {
        get(&app, path).await.assert_error(404, "not_found");
    }
    f.net.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_everything_but_health() {
    let f = Fixture::start().await;
    let app = f.app_with(WebConfig {
        token: Some(TOKEN.into()),
        ..WebConfig::local(0)
    });
    assert_eq!(get(&app, "/health").await.status, StatusCode::OK);
    for path in [
        "/api/overview",
        "/metrics",
        "/",
        "/api/nope",
        "/assets/app.js",
    ] {
        let reply = get(&app, path).await;
        reply.assert_error(401, "unauthorized");
        assert_eq!(
            reply.headers["www-authenticate"],
            "Bearer realm=\"crabnet\""
        );
    }
    let with = |value: &str| {
        request(Method::GET, "/api/overview")
            .header("authorization", value)
            .body(Body::empty())
            .unwrap()
    };
    for wrong in [
        "Bearer nope".to_string(),
        format!("Bearer {TOKEN}x"),
        format!("Basic {TOKEN}"),
        TOKEN.to_string(),
        "Bearer".to_string(),
    ] {
        send(&app, with(&wrong))
            .await
            .assert_error(401, "unauthorized");
    }
    assert_eq!(
        send(&app, with(&format!("Bearer {TOKEN}"))).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, with(&format!("bearer {TOKEN}"))).await.status,
        StatusCode::OK
    );
    // With a token, any Host is fine (the server may be reached by name).
    let named = Request::get("/api/overview")
        .header("host", "monitor.example:7980")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, named).await.status, StatusCode::OK);

    // Browsers: /?token= sets the cookie and redirects to the bare page; the cookie works.
    let login = get(&app, &format!("/?token={TOKEN}")).await;
    assert_eq!(login.status, StatusCode::SEE_OTHER);
    assert_eq!(login.headers["location"], "/");
    let cookie = login.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    for path in ["/", "/api/overview", "/api/events?limit=1"] {
        let req = request(Method::GET, path)
            .header("cookie", format!("theme=dark; {pair}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&app, req).await.status, StatusCode::OK, "{path}");
    }
    let elsewhere = get(&app, &format!("//attacker.example/x?token={TOKEN}")).await;
    assert_eq!(elsewhere.status, StatusCode::SEE_OTHER);
    assert_eq!(elsewhere.headers["location"], "/attacker.example/x");
    get(&app, "/?token=wrong-token-0123456789")
        .await
        .assert_error(401, "unauthorized");
    get(&app, &format!("/api/overview?token={TOKEN}"))
        .await
        .assert_error(401, "unauthorized");
    f.net.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_loopback_hosts_are_answered() {
    let (f, app) = Fixture::with_app().await;
    for host in [
        "127.0.0.1:7980",
        "localhost:7980",
        "[::1]:7980",
        "localhost",
    ] {
        let req = Request::get("/api/overview")
            .header("host", host)
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&app, req).await.status, StatusCode::OK, "{host}");
    }
    for host in [
        "attacker.example",
        "attacker.example:7980",
        "192.168.1.5:7980",
    ] {
        for path in ["/", "/api/overview", "/health"] {
            let req = Request::get(path)
                .header("host", host)
                .body(Body::empty())
                .unwrap();
            send(&app, req).await.assert_error(403, "forbidden");
        }
    }
    f.net.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_use_the_prometheus_text_format() {
    let (f, app) = Fixture::with_app().await;
    let _ = get(&app, "/api/overview").await;
    let reply = get(&app, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.content_type(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = reply.text();
    let mut families = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            families.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        // name{labels} value
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| families.contains(*f))
            .unwrap_or(name);
        assert!(families.contains(family), "sample before its TYPE: {line}");
    }
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    };
    assert!(value("crabnet_envelopes_sent_total") >= 3.0);
    assert!(value("crabnet_messages_accepted_total") >= 3.0);
    assert_eq!(
        value("crabnet_messages_rejected_total{reason=\"bad_signature\"}"),
        0.0
    );
    assert_eq!(value("crabnet_seeds{status=\"settled\"}"), 1.0);
    assert_eq!(value("crabnet_seeds{status=\"open\"}"), 0.0);
    assert_eq!(value("crabnet_peers"), 2.0);
    assert!(value("crabnet_store_query_duration_seconds_count{query=\"overview\"}") >= 1.0);
    assert!(
        value("crabnet_store_query_duration_seconds_bucket{query=\"overview\",le=\"+Inf\"}") >= 1.0
    );
    assert_eq!(
        value("crabnet_runner_outcomes_total{outcome=\"success\"}"),
        0.0
    );
    let policy = f.publisher().config().runner.sandbox.as_str();
    assert_eq!(
        value(&format!(
            "crabnet_task_sandbox_level{{policy=\"{policy}\"}}"
        )),
        2.0
    );
    assert_eq!(value("crabnet_task_sandbox_can_run"), 1.0);

    // The winner ran the task: its runner outcome counts it.
    let winner = web::router(f.winner().clone(), &WebConfig::local(0)).unwrap();
    let text = get(&winner, "/metrics").await.text();
    assert!(
        text.contains("crabnet_runner_outcomes_total{outcome=\"success\"} 1\n"),
        "{text}"
    );
    f.net.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The live stream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_replays_resumes_filters_and_goes_live() {
    let (f, app) = Fixture::with_app().await;
    let alice = f.publisher();
    let all = all_events(&app).await;
    let third = all[2]["seq"].as_u64().unwrap();

    // Last-Event-ID (as a reconnecting EventSource sends it) beats ?since.
    let req = request(Method::GET, "/api/events/stream?since=0")
        .header("last-event-id", third.to_string())
        .body(Body::empty())
        .unwrap();
    let got = stream_events(&app, req, 2).await;
    assert_eq!(got[0].1, all[3]);
    assert_eq!(got[1].1, all[4]);

    // A filter.
    let req = empty(Method::GET, "/api/events/stream?since=0&kind=bid_placed");
    let bids = stream_events(&app, req, 2).await;
    assert!(bids.iter().all(|(_, e)| e["type"] == "bid_placed"));

    // Without since: only what happens from now on.
    let req = empty(Method::GET, "/api/events/stream?kind=seed_published");
    let live = tokio::spawn({
        let app = app.clone();
        async move { stream_events(&app, req, 1).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seed = alice
        .publish(PublishRequest::new("echo live"))
        .await
        .unwrap();
    let got = live.await.unwrap();
    assert_eq!(got[0].1["seed_id"], seed.seed.id.to_string());
    assert_eq!(got[0].1["command"], "echo live");
    f.net.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_limited() {
    let f = Fixture::start().await;
    let app = f.app_with(WebConfig {
        max_streams: 1,
        ..WebConfig::local(0)
    });
    let open = respond(&app, empty(Method::GET, "/api/events/stream")).await;
    assert_eq!(open.status(), StatusCode::OK);
    get(&app, "/api/events/stream")
        .await
        .assert_error(503, "unavailable");
    drop(open);
    let again = respond(&app, empty(Method::GET, "/api/events/stream")).await;
    assert_eq!(again.status(), StatusCode::OK);
    f.net.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// A real listener

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binds_port_zero_streams_live_and_shuts_down_with_streams_open() {
    let f = Fixture::start().await;
    let alice = f.publisher().clone();
    let handle = alice.serve_web(WebConfig::local(0)).await.unwrap();
    let addr = handle.local_addr();
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);
    assert_eq!(handle.url(), format!("http://{addr}/"));

    let (status, _, body) = http(addr, &get_head("/health", &addr.to_string(), true)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");

    // A live stream over a real connection sees a new publish.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!(
            "GET /api/events/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut seen = String::new();
    read_into_until(&mut tcp, &mut seen, "text/event-stream").await;
    let seed = alice
        .publish(PublishRequest::new("echo over tcp"))
        .await
        .unwrap();
    let published = read_into_until(&mut tcp, &mut seen, seed.seed.id.as_str());
    tokio::time::timeout(Duration::from_secs(10), published)
        .await
        .expect("the publish arrives on the stream");
    assert!(seen.contains("\"type\":\"seed_published\""), "{seen}");

    // Shutdown ends the open stream and returns promptly.
    let started = Instant::now();
    handle.shutdown().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let _ = read_to_close(
        &mut tcp,
        Duration::from_secs(5),
        "the stream ends at shutdown",
    )
    .await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    f.net.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_are_refused_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(crabnet_core::Config::with_data_dir(dir.path()))
        .await
        .unwrap();
    let public = WebConfig {
        bind: "0.0.0.0:0".parse().unwrap(),
        ..WebConfig::default()
    };
    let e = web::serve(node.clone(), public.clone()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(
        e.to_string().contains("0.0.0.0:0") && e.to_string().contains("token"),
        "{e}"
    );
    let short = WebConfig {
        token: Some("short".into()),
        ..WebConfig::local(0)
    };
    assert!(
        web::serve(node.clone(), short)
            .await
            .unwrap_err()
            .to_string()
            .contains("16")
    );
    let spaces = WebConfig {
        token: Some("a token with spaces in it".into()),
        ..WebConfig::local(0)
    };
    assert_eq!(
        web::serve(node.clone(), spaces).await.unwrap_err().kind(),
        ErrorKind::Config
    );
    let no_dir = WebConfig {
        assets_dir: Some(dir.path().join("missing")),
        ..WebConfig::local(0)
    };
    assert_eq!(
        web::serve(node.clone(), no_dir).await.unwrap_err().kind(),
        ErrorKind::Config
    );
    // A taken port is an I/O error that says which address.
    let first = web::serve(node.clone(), WebConfig::local(0)).await.unwrap();
    let taken = WebConfig {
        bind: first.local_addr(),
        ..WebConfig::default()
    };
    let e = web::serve(node.clone(), taken).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(
        e.to_string().contains(&first.local_addr().to_string()),
        "{e}"
    );
    // A public bind with a token is fine (here: on the unspecified address, port 0).
    let guarded = web::serve(
        node.clone(),
        WebConfig {
            token: Some(TOKEN.into()),
            ..public
        },
    )
    .await
    .unwrap();
    let local = SocketAddr::from(([127, 0, 0, 1], guarded.local_addr().port()));
    let (status, head, _) = http(local, &get_head("/api/overview", "10.1.2.3", true)).await;
    assert_eq!(status, 401, "{head}");
    let (status, _, _) = http(local, &get_head("/health", "10.1.2.3", true)).await;
    assert_eq!(status, 200);
    guarded.shutdown().await.unwrap();
    first.shutdown().await.unwrap();
    // The [web] section of the config file.
    let config = crabnet_core::Config::from_toml(
        "[web]\nbind = \"127.0.0.1:9999\"\ntoken = \"0123456789abcdef0123\"\nmax_streams = 4\n",
    )
    .unwrap();
    assert_eq!(config.web.bind.port(), 9999);
    assert!(
        !format!("{config:?}").contains("0123456789abcdef0123"),
        "the token is redacted"
    );
    let e = crabnet_core::Config::from_toml("[web]\nbind = \"0.0.0.0:80\"\n").unwrap_err();
    assert!(e.to_string().contains("token"), "{e}");
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_assets_directory_overrides_embedded_files() {
    let f = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("index.html"),
        "<title>Crabnet custom</title>",
    )
    .unwrap();
    let app = f.app_with(WebConfig {
        assets_dir: Some(dir.path().to_path_buf()),
        ..WebConfig::local(0)
    });
    assert_eq!(get(&app, "/").await.text(), "<title>Crabnet custom</title>");
    assert_eq!(
        get(&app, "/some/page").await.text(),
        "<title>Crabnet custom</title>"
    );
    assert!(
        get(&app, "/assets/app.js")
            .await
            .text()
            .contains("EventSource")
    );
    std::fs::write(dir.path().join("app.js"), "// mine").unwrap();
    assert_eq!(get(&app, "/assets/app.js").await.text(), "// mine");
    f.net.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The CLI

/// `crabnet` processes on one data directory in a sandbox; the long-running ones are owned by
/// the harness's listeners (killed when this is dropped).
struct Cli {
    sb: Sandbox,
    data: std::path::PathBuf,
    procs: Listeners,
}

impl Cli {
    /// A sandbox whose data directory `data` exists.
    fn new() -> Cli {
        let sb = Sandbox::new("crabnet-web-cli-");
        let data = sb.dir("data");
        std::fs::create_dir(&data).unwrap();
        Cli {
            sb,
            data,
            procs: Listeners::default(),
        }
    }

    /// `crabnet --data-dir DATA ARGS...`; `crabnet demo ARGS...` (the demo's nodes have
    /// directories of their own, and it refuses `--data-dir`).
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = self.sb.command();
        if args.first() != Some(&"demo") {
            cmd.arg("--data-dir").arg(&self.data);
        }
        cmd.args(args);
        cmd
    }

    /// Starts `crabnet ARGS...` ([`Cli::command`]) as process `name`; returns its index.
    fn spawn(&mut self, name: &str, args: &[&str]) -> usize {
        let mut cmd = self.command(args);
        cmd.env("CRABNET_LOG", "warn");
        self.procs.spawn(name, cmd, self.sb.path())
    }

    /// Waits for a line of process `i` containing `needle`.
    fn line_with(&mut self, i: usize, needle: &str) -> String {
        let what = format!("print {needle:?}");
        self.procs
            .wait_line(i, &what, Duration::from_secs(60), |l| l.contains(needle))
    }

    /// Runs `crabnet --data-dir DATA ARGS...` to its end (bounded).
    fn run(&self, args: &[&str]) -> support::Out {
        run_bounded(
            self.command(args),
            args.iter().map(|a| a.to_string()).collect(),
        )
    }
}

/// The address in a line like `dashboard http://127.0.0.1:PORT/ ...`.
fn url_addr(line: &str) -> SocketAddr {
    let start = line.find("http://").unwrap() + "http://".len();
    let rest = &line[start..];
    rest[..rest.find('/').unwrap()].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_listen_serves_the_dashboard_unless_told_not_to() {
    let mut cli = Cli::new();
    let listen = ["listen", "--bind", "127.0.0.1:0", "--http", "127.0.0.1:0"];
    let listener = cli.spawn("listen", &listen);
    let line = cli.line_with(listener, "dashboard http://");
    let addr = url_addr(&line);
    let (status, _, body) = http(addr, &get_head("/health", &addr.to_string(), true)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = http(addr, &get_head("/", &addr.to_string(), true)).await;
    assert_eq!(status, 200);
    assert!(body.contains("<title>Crabnet"));
    // A seed published by another CLI process on the same data directory is seen.
    let out = cli
        .run(&["seed", "publish", "--command", "echo from cli"])
        .ok();
    let id = out.stdout.trim().to_owned();
    let (status, _, body) = http(
        addr,
        &get_head(&format!("/api/seeds/{id}"), "localhost", true),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(cli.procs.interrupt(listener).success());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    // --no-http: no dashboard line, no server.
    let quiet = cli.spawn("quiet", &["listen", "--bind", "127.0.0.1:0", "--no-http"]);
    cli.line_with(quiet, "listening on udp");
    assert!(cli.procs.interrupt(quiet).success());
    let printed = cli.procs.stdout(quiet);
    assert!(!printed.contains("http://"), "{printed}");

    // The default address taken (by another node, say): the node runs without a dashboard
    // and says why. An address asked for must work.
    let _holder = std::net::TcpListener::bind("127.0.0.1:7980"); // taken either way
    let unlucky = cli.spawn("unlucky", &["--json", "listen", "--bind", "127.0.0.1:0"]);
    // The pretty-printed banner ends with a line "}".
    let within = Duration::from_secs(60);
    cli.procs
        .wait_line(unlucky, "print its banner", within, |l| l == "}");
    let status = cli.procs.interrupt(unlucky);
    assert!(status.success(), "{status}\n{}", cli.procs.logs());
    let printed = cli.procs.stdout(unlucky);
    let banner = &printed[..printed.find("\n}\n").unwrap() + 3];
    let banner: Value = serde_json::from_str(banner).unwrap();
    assert_eq!(banner["http"], Value::Null, "{banner}");
    let stderr = cli.procs.stderr(unlucky);
    assert!(
        stderr.contains("without the dashboard") && stderr.contains("127.0.0.1:7980"),
        "{stderr}"
    );
    let taken = cli.run(&[
        "listen",
        "--bind",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:7980",
    ]);
    assert_eq!(taken.status.code(), Some(1), "{}", taken.describe());
    assert!(taken.stderr.contains("cannot bind"), "{}", taken.describe());

    // A public bind without a token is refused before anything runs.
    let out = cli.run(&["listen", "--bind", "127.0.0.1:0", "--http", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("token") && out.stderr.contains("0.0.0.0"),
        "{}",
        out.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_demo_serve_keeps_serving_until_ctrl_c() {
    let mut cli = Cli::new();
    let demo = cli.spawn("demo", &["demo", "--serve", "--http", "127.0.0.1:0"]);
    let line = cli.line_with(demo, "dashboard http://");
    let addr = url_addr(&line);
    let data_line = cli.line_with(demo, "--data-dir");
    assert!(data_line.contains("alice"), "{data_line}");
    let (status, _, body) = http(addr, &get_head("/api/overview", &addr.to_string(), true)).await;
    assert_eq!(status, 200, "{body}");
    let o: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(o["node"]["name"], "alice");
    assert_eq!(o["seeds_by_status"]["settled"], 1);
    assert_eq!(o["peers"].as_array().unwrap().len(), 2);
    // Still serving a moment later: the demo network keeps running.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, body) = http(addr, &get_head("/health", &addr.to_string(), true)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"running\":true"), "{body}");
    assert!(cli.procs.interrupt(demo).success());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
