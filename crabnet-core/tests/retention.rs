//! Retention (issue 14 item 3, issue 12 item 3) on running nodes on the in-memory hub: a
//! pruned seed is not pulled back by sync from a peer that still holds it, an idle node prunes
//! on its own interval, and a flood of rejections leaves the events table bounded.

mod support;

use std::time::{Duration, Instant};

use crabnet_core::network::Transport;
use crabnet_core::web::{self, WebConfig};
use crabnet_core::{Config, ErrorKind, PublishRequest, SeedStatus};
use support::forge::{counter, dir_and_hub, mesh, poll, short_seen_window, start, wait_counter};

fn config(dir: &std::path::Path, name: &str) -> Config {
    let mut c = support::forge::config(dir, name);
    c.network.sync_interval_secs = 1;
    c.events.log_enabled = false;
    c.retention.interval_secs = 1;
    c
}

async fn wait_until<F: Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let what = || format!("waiting until {what}");
    poll(Duration::from_secs(20), what, || {
        let done = done();
        async move { done.await.then_some(()) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruned_seed_is_not_pulled_back_by_sync_from_a_peer_that_still_holds_it() {
    let (dir, hub) = dir_and_hub();
    let mut short = config(dir.path(), "short");
    short.retention.seeds_after_secs = 1;
    // Message ids are remembered for two seconds only, so that after a restart (which also
    // empties the in-memory filter of recent frames) nothing but the tombstone stands between
    // the peer's copies and the store.
    short_seen_window(&mut short);
    let mut forever = config(dir.path(), "forever");
    forever.retention.seeds_after_secs = 0;
    let a = start(short.clone(), &hub).await;
    let b = start(forever, &hub).await;
    mesh(&[&a, &b]).await;

    // The peer publishes both seeds (this node's own messages never come back as new).
    let kept = b.publish(PublishRequest::new("echo kept")).await.unwrap();
    let ended = b.publish(PublishRequest::new("echo ended")).await.unwrap();
    let id = ended.seed.id.clone();
    b.cancel(&id).await.unwrap();
    wait_until("this node holds the cancelled seed", || async {
        a.seed(&id)
            .await
            .is_ok_and(|v| v.status == SeedStatus::Cancelled)
    })
    .await;

    // The short horizon passes: the cancelled seed is pruned here, the open one stays.
    wait_counter(&a, "retention.seeds_pruned", 1).await;
    assert_eq!(a.seed(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let accepted = counter(&a, "messages.accepted").await;
    let rounds = counter(&a, "sync.ranges_received").await;
    let wants = counter(&b, "sync.wants_received").await;
    a.stop().await.unwrap();
    let a = start(short, &hub).await;
    // The peer, which keeps everything, still holds the seed's messages: reconciliation finds
    // them as a difference round after round, and this node never asks for them.
    wait_counter(&a, "sync.ranges_received", rounds + 6).await;
    assert_eq!(
        counter(&b, "sync.wants_received").await,
        wants,
        "this node asked for messages of the pruned seed"
    );
    assert_eq!(a.seed(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(counter(&a, "retention.seeds_pruned").await, 1);
    assert_eq!(
        counter(&a, "messages.accepted").await,
        accepted,
        "nothing re-applied"
    );
    wait_until("this node holds the open seed", || async {
        a.seed(&kept.seed.id).await.is_ok()
    })
    .await;
    assert_eq!(
        b.seed(&id).await.unwrap().status,
        SeedStatus::Cancelled,
        "the peer keeps its copy"
    );
    let o = a.overview().await.unwrap();
    assert_eq!(o.seeds_by_status.values().sum::<u64>(), 1, "{o:?}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// A node with nothing else to do (no peer, no decision due, no other process) still prunes
/// on its own `retention.interval_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_node_prunes_on_its_own_interval() {
    let (dir, hub) = dir_and_hub();
    let mut c = config(dir.path(), "alone");
    c.retention.seeds_after_secs = 1;
    let node = start(c, &hub).await;
    let id = node
        .publish(PublishRequest::new("echo ended"))
        .await
        .unwrap()
        .seed
        .id;
    node.cancel(&id).await.unwrap();
    wait_counter(&node, "retention.seeds_pruned", 1).await;
    assert_eq!(
        node.seed(&id).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_rejections_leaves_the_events_table_bounded() {
    let (dir, hub) = dir_and_hub();
    let mut c = config(dir.path(), "target");
    c.network.reject_event_window_ms = 0; // one event per rejected frame
    c.retention.events_max_rows = 100;
    let node = start(c, &hub).await;
    let mut rogue = hub.join("rogue");
    const FRAMES: u64 = 600;
    for i in 0..FRAMES {
        rogue.broadcast(format!("garbage {i}").as_bytes()).unwrap();
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    wait_counter(&node, "rejected.malformed", FRAMES).await;
    wait_until("the events table is back within its bound", || async {
        node.events_after(0, 100_000).await.unwrap().len() <= 100
    })
    .await;
    assert!(counter(&node, "retention.events_pruned").await >= FRAMES - 100);
    // A reader whose cursor is older than the oldest event kept can tell what it missed.
    let through = node.events_pruned_through().await.unwrap();
    let kept = node.events_after(0, 100_000).await.unwrap();
    assert!(through >= FRAMES - 100, "{through}");
    assert!(kept.iter().all(|e| e.seq > through));
    // So can readers of the HTTP API: the page says how far events were pruned, and a stream
    // from before that starts with the count it missed.
    let app = web::router(node.clone(), &WebConfig::local(0)).unwrap();
    let page = http_body(&app, "/api/events?since=0&limit=1", false).await;
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert!(
        page["pruned_through"].as_u64().unwrap() >= through,
        "{page}"
    );
    let stream = http_body(&app, "/api/events/stream?since=0", true).await;
    let data = stream
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .unwrap_or_else(|| panic!("no event: {stream}"));
    let first: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
    assert_eq!(first["type"], "events_dropped", "{first}");
    assert!(first["count"].as_u64().unwrap() >= through, "{first}");
    node.stop().await.unwrap();
}

/// The body of a GET from a loopback client; of a stream, its first complete message.
async fn http_body(app: &axum::Router, path: &str, stream: bool) -> String {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let req = axum::http::Request::get(path)
        .header("host", "127.0.0.1:7980")
        .body(axum::body::Body::empty())
        .unwrap();
    let mut body = app.clone().oneshot(req).await.unwrap().into_body();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(stream && text.contains("\n\n")) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(frame) = tokio::time::timeout(left, body.frame()).await.unwrap() else {
            break;
        };
        if let Ok(data) = frame.unwrap().into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    text
}
