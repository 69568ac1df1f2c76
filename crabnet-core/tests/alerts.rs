//! Alerting end to end: a node alone on its network fires `no_peers` and resolves it when a
//! peer arrives; webhook deliveries reach a receiver on 127.0.0.1 signed, are retried after a
//! 500, and wait in the database across a restart while the receiver does not answer.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crabnet_core::alerts::webhook::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crabnet_core::alerts::{AlertName, WebhookConfig};
use crabnet_core::clock::now_ms;
use crabnet_core::{Config, Event, EventKind, MemoryHub, Node};
use support::forge::config;

const SECRET: &str = "a-shared-webhook-secret";

/// Fast rules: `no_peers` after 300 ms alone, resolved at once when clear.
fn alerting(dir: &std::path::Path, name: &str) -> Config {
    let mut c = config(dir, name);
    c.network.hello_interval_secs = 1;
    c.alerts.interval_ms = 50;
    c.alerts.no_peers_secs = 0;
    c.alerts.for_secs = 0;
    c.alerts.resolve_secs = 0;
    c.alerts.disk_free_min_bytes = 0;
    c
}

fn with_webhook(mut c: Config, url: &str, dir: &std::path::Path) -> Config {
    use std::os::unix::fs::OpenOptionsExt;
    let secret = dir.join("webhook.secret");
    if !secret.exists() {
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&secret)
            .unwrap();
        writeln!(f, "{SECRET}").unwrap();
    }
    c.alerts.no_peers_secs = 1;
    c.alerts.webhooks = vec![WebhookConfig {
        url: url.into(),
        secret_file: secret,
        ca_file: None,
    }];
    c.alerts.webhook_timeout_ms = 300;
    c.alerts.webhook_retry_base_ms = 50;
    c.alerts.webhook_retry_max_ms = 200;
    c
}

/// Waits for the first event that `pick` accepts.
async fn wait_event<T>(
    sub: &mut crabnet_core::Subscription,
    what: &str,
    pick: impl Fn(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let e = tokio::time::timeout_at(deadline, sub.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} within 20 s"))
            .expect("the node is running");
        if let Some(t) = pick(&e) {
            return t;
        }
    }
}

fn firing(e: &Event) -> Option<AlertName> {
    match e.kind {
        EventKind::AlertFiring { alert, .. } => Some(alert),
        _ => None,
    }
}

fn resolved(e: &Event) -> Option<AlertName> {
    match e.kind {
        EventKind::AlertResolved { alert, .. } => Some(alert),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_alone_fires_no_peers_and_resolves_it_when_a_peer_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let hub = MemoryHub::new();
    let mut c = alerting(dir.path(), "a");
    c.alerts.no_peers_secs = 1;
    let a = Node::start_with_transport(c, Box::new(hub.join("a")))
        .await
        .unwrap();
    let mut events = a.subscribe();
    assert_eq!(
        wait_event(&mut events, "alert_firing", firing).await,
        AlertName::NoPeers
    );
    let active = a.active_alerts().await.unwrap();
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0].alert, AlertName::NoPeers);

    let b = Node::start_with_transport(alerting(dir.path(), "b"), Box::new(hub.join("b")))
        .await
        .unwrap();
    assert_eq!(
        wait_event(&mut events, "alert_resolved", resolved).await,
        AlertName::NoPeers
    );
    assert!(a.active_alerts().await.unwrap().is_empty());
    // Both events are in the durable log too.
    let logged: Vec<&'static str> = a
        .events_after(0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind.name())
        .filter(|n| n.starts_with("alert_"))
        .collect();
    assert_eq!(logged, ["alert_firing", "alert_resolved"]);
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

/// One request the receiver got.
#[derive(Debug)]
struct Received {
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 request and answers `status`.
fn serve_one(stream: TcpStream, status: u16) -> Received {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("POST /hook HTTP/1.1"), "{line:?}");
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let len: usize = headers["content-length"].parse().unwrap();
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let mut stream = reader.into_inner();
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    Received { headers, body }
}

/// Answers each request with the next status of `script`, then stops.
fn receiver(listener: TcpListener, script: Vec<u16>) -> mpsc::Receiver<(u16, Received)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for status in script {
            let (stream, _) = listener.accept().unwrap();
            if tx.send((status, serve_one(stream, status))).is_err() {
                return;
            }
        }
    });
    rx
}

fn next(rx: &mpsc::Receiver<(u16, Received)>) -> (u16, Received) {
    rx.recv_timeout(Duration::from_secs(20))
        .expect("a webhook delivery within 20 s")
}

/// Checks the signature as a receiver would and returns the body as JSON.
fn verified(r: &Received) -> serde_json::Value {
    let ts: u64 = r.headers[&TIMESTAMP_HEADER.to_ascii_lowercase()]
        .parse()
        .unwrap();
    let sig = &r.headers[&SIGNATURE_HEADER.to_ascii_lowercase()];
    assert!(
        webhook::verify(SECRET.as_bytes(), ts, &r.body, sig, now_ms() / 1000, 300),
        "signature {sig} does not verify"
    );
    assert!(!webhook::verify(
        b"wrong secret",
        ts,
        &r.body,
        sig,
        now_ms() / 1000,
        300
    ));
    assert_eq!(r.headers["content-type"], "application/json");
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_retried_after_a_500() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let rx = receiver(listener, vec![500, 200]);
    let hub = MemoryHub::new();
    let c = with_webhook(alerting(dir.path(), "a"), &url, dir.path());
    let a = Node::start_with_transport(c, Box::new(hub.join("a")))
        .await
        .unwrap();

    let (status, first) = next(&rx);
    assert_eq!(status, 500);
    let body = verified(&first);
    assert_eq!(body["node_id"], a.id().to_string());
    assert_eq!(body["event"]["type"], "alert_firing");
    assert_eq!(body["event"]["alert"], "no_peers");
    let (status, second) = next(&rx);
    assert_eq!(status, 200);
    assert_eq!(verified(&second), body, "the retry carries the same event");
    assert_eq!(
        first.headers["x-crabnet-delivery"], second.headers["x-crabnet-delivery"],
        "one delivery, two attempts"
    );
    // Delivered: the queue empties and the counters say what happened.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.webhook_queue_len().await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the queue did not empty");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counters = a.overview().await.unwrap().counters;
    assert_eq!(
        counters.get("alerts.webhook_failed"),
        Some(&1),
        "{counters:?}"
    );
    assert_eq!(
        counters.get("alerts.webhook_delivered"),
        Some(&1),
        "{counters:?}"
    );
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_deliveries_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Bound but not accepting yet: connections wait in the backlog and every attempt times
    // out, so the delivery stays queued.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let hub = MemoryHub::new();
    let c = with_webhook(alerting(dir.path(), "a"), &url, dir.path());
    let a = Node::start_with_transport(c.clone(), Box::new(hub.join("a")))
        .await
        .unwrap();
    let mut events = a.subscribe();
    wait_event(&mut events, "alert_firing", firing).await;
    assert_eq!(a.webhook_queue_len().await.unwrap(), 1);
    let fired_seq = a
        .events_after(0, 1000)
        .await
        .unwrap()
        .iter()
        .find(|e| firing(e).is_some())
        .unwrap()
        .seq;
    a.stop().await.unwrap();
    drop(a);

    // The queue is in the database: a node without a network sees it.
    let offline = Node::start(c.clone()).await.unwrap();
    assert_eq!(offline.webhook_queue_len().await.unwrap(), 1);
    assert_eq!(offline.active_alerts().await.unwrap().len(), 1);
    offline.stop().await.unwrap();
    drop(offline);

    // The receiver answers now; the restarted node delivers what was queued before (and does
    // not fire `no_peers` again: it is still firing).
    let hub = MemoryHub::new();
    let a = Node::start_with_transport(c, Box::new(hub.join("a")))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        // Attempts that timed out before the restart left connections in the backlog; they
        // closed without a request and are skipped.
        let (stream, _) = listener.accept().unwrap();
        let mut peek = [0u8; 1];
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        if stream.peek(&mut peek).map(|n| n == 0).unwrap_or(true) {
            assert!(Instant::now() < deadline, "no delivery after the restart");
            continue;
        }
        let r = serve_one(stream, 200);
        break verified(&r);
    };
    assert_eq!(body["event"]["type"], "alert_firing");
    assert_eq!(body["event"]["seq"], fired_seq);
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.webhook_queue_len().await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the queue did not empty");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let firings = a
        .events_after(0, 1000)
        .await
        .unwrap()
        .iter()
        .filter(|e| firing(e).is_some())
        .count();
    assert_eq!(firings, 1, "no second firing after the restart");
    a.stop().await.unwrap();
}
