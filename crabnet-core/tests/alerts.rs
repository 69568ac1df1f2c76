//! Alerting end to end: a node alone on its network fires `no_peers` and resolves it when a peer
//! arrives; a runner whose tasks fail fires `runner_failures`, a node sent forged frames on
//! 127.0.0.1 fires `reject_rate` (gossip duplicates do not count), and a node cut off from its
//! peers fires `outbox_backlog`, each resolved when the condition clears; webhook deliveries reach
//! a receiver on 127.0.0.1 signed, are retried after a 500, wait in the database across a restart
//! while the receiver does not answer, and over https reach only a receiver whose certificate the
//! configured CA file vouches for; hostile receivers (silent, trickling, flooding) neither stall
//! nor flood the node.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crabnet_core::alerts::webhook::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crabnet_core::alerts::{AlertName, WebhookConfig};
use crabnet_core::clock::now_ms;
use crabnet_core::{Config, Event, EventKind, MemoryHub, Node, PublishRequest};
use support::forge::{self, config, dir_and_hub, start, wait_counter, wait_view};

const SECRET: &str = "a-shared-webhook-secret";

/// Fast rules (evaluated every 50 ms, no hold, resolved at once when clear); `no_peers` off.
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
    let (dir, hub) = dir_and_hub();
    let mut c = alerting(dir.path(), "a");
    c.alerts.no_peers_secs = 1;
    let a = start(c, &hub).await;
    let mut events = a.subscribe();
    assert_eq!(
        wait_event(&mut events, "alert_firing", firing).await,
        AlertName::NoPeers
    );
    let active = a.active_alerts().await.unwrap();
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0].alert, AlertName::NoPeers);

    let b = start(alerting(dir.path(), "b"), &hub).await;
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

/// The first `alert_firing` of `alert` (skipping other alerts); returns its value.
async fn wait_firing(sub: &mut crabnet_core::Subscription, alert: AlertName) -> u64 {
    wait_event(sub, alert.as_str(), |e| match &e.kind {
        EventKind::AlertFiring {
            alert: a, value, ..
        } if *a == alert => Some(*value),
        _ => None,
    })
    .await
}

/// The first `alert_resolved` of `alert`.
async fn wait_resolved(sub: &mut crabnet_core::Subscription, alert: AlertName) {
    wait_event(sub, alert.as_str(), |e| match &e.kind {
        EventKind::AlertResolved { alert: a, .. } if *a == alert => Some(()),
        _ => None,
    })
    .await
}

/// The `alert_firing` events `node` recorded, oldest first.
async fn firing_events(node: &Node) -> Vec<Event> {
    let events = node.events_after(0, 100_000).await.unwrap();
    events.into_iter().filter(|e| firing(e).is_some()).collect()
}

/// The alerts `node` recorded as firing, by name.
async fn firing_names(node: &Node) -> Vec<AlertName> {
    firing_events(node)
        .await
        .iter()
        .filter_map(firing)
        .collect()
}

/// The runner (with `runner`'s alert rules) bids on, claims and runs a seed of `command`
/// published by `publisher`.
async fn run_seed(publisher: &Node, runner: &Node, command: &str) {
    let within = Duration::from_secs(20);
    let id = forge::publish_for_bids(publisher, command, 1).await.seed.id;
    wait_view(runner, &id, within, "arrive", |_| true).await;
    runner.bid(&id, 5).await.unwrap();
    let me = runner.id().clone();
    wait_view(runner, &id, within, "awarded to the runner", |v| {
        v.award
            .as_ref()
            .is_some_and(|a| a.winner_node.as_ref() == Some(&me))
    })
    .await;
    runner.claim(&id).await.unwrap();
    runner.run(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_tasks_fire_runner_failures_and_it_resolves_when_the_window_has_passed() {
    let (dir, hub) = dir_and_hub();
    let publisher = start(alerting(dir.path(), "publisher"), &hub).await;
    let mut c = alerting(dir.path(), "runner");
    c.runner.work_root = Some(dir.path().join("work"));
    c.alerts.runner_failure_percent = 50;
    c.alerts.runner_min_runs = 2;
    c.alerts.rate_window_secs = 5;
    let runner = start(c, &hub).await;
    let mut events = runner.subscribe();
    runner
        .wait_for_peers(1, Duration::from_secs(10))
        .await
        .unwrap();
    publisher
        .wait_for_peers(1, Duration::from_secs(10))
        .await
        .unwrap();

    // One failed run is below runner_min_runs, however often the rules look.
    run_seed(&publisher, &runner, "exit 1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !firing_names(&runner)
            .await
            .contains(&AlertName::RunnerFailures),
        "one run is below runner_min_runs"
    );
    run_seed(&publisher, &runner, "exit 1").await;
    let percent = wait_firing(&mut events, AlertName::RunnerFailures).await;
    assert_eq!(percent, 100);
    let active = runner.active_alerts().await.unwrap();
    assert!(
        active.iter().any(|a| a.alert == AlertName::RunnerFailures),
        "{active:?}"
    );
    // No more failures: once the 5 s window is past, the rule clears.
    wait_resolved(&mut events, AlertName::RunnerFailures).await;
    runner.stop().await.unwrap();
    publisher.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_frames_fire_reject_rate_but_gossip_duplicates_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = alerting(dir.path(), "n");
    c.alerts.reject_max = 5;
    c.alerts.rate_window_secs = 3;
    let (node, addr) = forge::udp_node(c, vec![]).await;
    let mut events = node.subscribe();
    let wire = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let alice = forge::identity(0x11, 1);
    let mallory = forge::identity(0x66, 1);
    wire.send_to(&forge::hello(&alice), addr).unwrap();
    node.wait_for_peers(1, Duration::from_secs(10))
        .await
        .unwrap();

    // Gossip duplicates: one of Alice's messages, 20 times (as when every peer relays it).
    let m = forge::seed_message(&alice, 1, now_ms());
    let frame = forge::seal(&alice, &m, 60);
    for _ in 0..20 {
        wire.send_to(&frame, addr).unwrap();
    }
    wait_counter(&node, "messages.duplicate", 19).await;
    // Several evaluations see the duplicates; none of them is a rejection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(firing_names(&node).await, []);

    // Forged frames: messages that claim to be Alice's, signed by Mallory.
    for lamport in 2..12 {
        let m = forge::seed_message(&alice, lamport, now_ms());
        let real = forge::seal(&alice, &m, 60);
        let cut = real.len() - crabnet_core::crypto::DUAL_SIGNATURE_LEN;
        let sig = mallory
            .signing()
            .sign(
                &real[..cut],
                crabnet_core::envelope::SIGNATURE_CONTEXT,
                [1; 32],
            )
            .unwrap();
        let mut forged = real[..cut].to_vec();
        forged.extend_from_slice(&sig.to_bytes());
        wire.send_to(&forged, addr).unwrap();
    }
    let rejected = wait_firing(&mut events, AlertName::RejectRate).await;
    assert!(rejected >= 5, "{rejected}");
    assert_eq!(firing_names(&node).await, [AlertName::RejectRate]);
    // Nothing forged any more: the rule clears once the 3 s window is past.
    wait_resolved(&mut events, AlertName::RejectRate).await;
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_its_peers_fires_outbox_backlog_until_its_outbox_drains() {
    let (dir, hub) = dir_and_hub();
    let mut c = alerting(dir.path(), "n");
    c.alerts.outbox_backlog = 3;
    c.network.retry_base_ms = 50;
    c.network.retry_max_ms = 100;
    let cut = Arc::new(AtomicBool::new(true));
    let node = forge::start_severable(c, &hub, cut.clone()).await;
    let mut events = node.subscribe();
    for i in 0..2 {
        node.publish(PublishRequest::new(format!("echo {i}")))
            .await
            .unwrap();
    }
    // Two messages wait: below the threshold, whatever the evaluations since.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(firing_names(&node).await, []);
    node.publish(PublishRequest::new("echo 2")).await.unwrap();
    let pending = wait_firing(&mut events, AlertName::OutboxBacklog).await;
    assert!(pending >= 3, "{pending}");
    assert!(node.overview().await.unwrap().outbox_pending >= 3);

    // Back on the network: the retries go out and the alert resolves.
    cut.store(false, Ordering::SeqCst);
    wait_resolved(&mut events, AlertName::OutboxBacklog).await;
    let node = &node;
    forge::poll(
        Duration::from_secs(20),
        || "the outbox never drained".into(),
        || async move { (node.overview().await.unwrap().outbox_pending == 0).then_some(()) },
    )
    .await;
    node.stop().await.unwrap();
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
    serve_on(stream, status)
}

/// Reads one HTTP/1.1 request from `stream` (plain or TLS) and answers `status`.
fn serve_on(stream: impl Read + Write, status: u16) -> Received {
    try_serve_on(stream, status).expect("a whole webhook request")
}

/// [`serve_on`], failing on a connection that breaks or carries no webhook request.
fn try_serve_on(stream: impl Read + Write, status: u16) -> std::io::Result<Received> {
    let mut reader = BufReader::new(stream);
    let received = read_request(&mut reader)?;
    let mut stream = reader.into_inner();
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    stream.flush()?;
    Ok(received)
}

/// Reads one webhook request.
fn read_request(reader: &mut BufReader<impl Read>) -> std::io::Result<Received> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.starts_with("POST /hook HTTP/1.1") {
        return Err(bad(format!("request line {line:?}")));
    }
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| bad(format!("header {l:?}")))?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| bad("no content-length".into()))?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok(Received { headers, body })
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

/// Serves webhook requests over TLS (`server`) on `listener` in a thread: at most `attempts`
/// connections, until one carries a whole request; sends what each connection brought
/// (`None`: the handshake or the request failed).
fn tls_receiver(
    listener: TcpListener,
    server: Arc<rustls::ServerConfig>,
    attempts: usize,
) -> mpsc::Receiver<Option<Received>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..attempts {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let conn = rustls::ServerConnection::new(server.clone()).unwrap();
            let received = try_serve_on(rustls::StreamOwned::new(conn, stream), 200).ok();
            let served = received.is_some();
            if tx.send(received).is_err() || served {
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

/// Waits (10 s at most) until `node`'s webhook queue is empty, then checks that its one
/// delivery succeeded after `failures` failed attempts.
async fn delivered_once_after_failures(node: &Node, failures: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.webhook_queue_len().await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the queue did not empty");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counters = node.overview().await.unwrap().counters;
    assert_eq!(
        counters.get("alerts.webhook_failed"),
        Some(&failures),
        "{counters:?}"
    );
    assert_eq!(
        counters.get("alerts.webhook_delivered"),
        Some(&1),
        "{counters:?}"
    );
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
    let a = start(c, &hub).await;

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
    delivered_once_after_failures(&a, 1).await;
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
    let a = start(c.clone(), &hub).await;
    let mut events = a.subscribe();
    wait_event(&mut events, "alert_firing", firing).await;
    assert_eq!(a.webhook_queue_len().await.unwrap(), 1);
    let fired_seq = firing_events(&a).await[0].seq;
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
    let a = start(c, &hub).await;
    // Every connection is answered 200 from now on, also those that attempts before the
    // restart left in the backlog (their clients are gone: those answers reach nobody).
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    listener.set_nonblocking(true).unwrap();
    let serving = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream
                            .set_read_timeout(Some(Duration::from_secs(2)))
                            .unwrap();
                        if let Ok(r) = try_serve_on(stream, 200) {
                            let _ = tx.send(r);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    };
    // A 2xx answer reached the restarted node: before the restart no attempt got one.
    support::forge::wait_counter(&a, "alerts.webhook_delivered", 1).await;
    assert_eq!(a.webhook_queue_len().await.unwrap(), 0);
    stop.store(true, Ordering::SeqCst);
    serving.join().unwrap();
    let bodies: Vec<serde_json::Value> = rx.try_iter().map(|r| verified(&r)).collect();
    assert!(!bodies.is_empty());
    for body in &bodies {
        assert_eq!(body["event"]["type"], "alert_firing");
        assert_eq!(
            body["event"]["seq"], fired_seq,
            "the delivery queued before"
        );
    }
    let firings = firing_events(&a).await.len();
    assert_eq!(firings, 1, "no second firing after the restart");
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhooks_verify_the_receiver_against_the_configured_ca() {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let dir = tempfile::tempdir().unwrap();
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der())),
            )
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Bounded: a few connections at most (a client trying ::1 first never reaches here).
    let rx = tls_receiver(listener, server.clone(), 5);
    let hub = MemoryHub::new();
    let mut c = with_webhook(
        alerting(dir.path(), "a"),
        &format!("https://localhost:{port}/hook"),
        dir.path(),
    );
    c.alerts.webhooks[0].ca_file = Some(ca);
    let a = start(c, &hub).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Some(r)) => break r,
            Ok(None) => continue,
            Err(_) => panic!("an https delivery within 20 s"),
        }
    };
    let body = verified(&r);
    assert_eq!(body["event"]["alert"], "no_peers");
    a.stop().await.unwrap();

    // A node whose CA file does not vouch for the receiver's certificate sends it nothing:
    // the handshake fails and the delivery waits for a retry.
    let other = dir.path().join("other-ca.pem");
    let rcgen::CertifiedKey {
        cert: other_cert, ..
    } = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&other, other_cert.pem()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut c = with_webhook(
        alerting(dir.path(), "b"),
        &format!("https://localhost:{port}/hook"),
        dir.path(),
    );
    c.alerts.webhooks[0].ca_file = Some(other);
    let rx = tls_receiver(listener, server, 3);
    let b = start(c, &hub).await;
    support::forge::wait_counter(&b, "alerts.webhook_failed", 1).await;
    assert_eq!(b.webhook_queue_len().await.unwrap(), 1, "still queued");
    b.stop().await.unwrap();
    assert!(
        rx.try_iter().all(|served| served.is_none()),
        "a request reached a receiver the CA file does not vouch for"
    );
}

/// How a hostile receiver treats one webhook request.
#[derive(Debug, Clone, Copy)]
enum Hostile {
    /// Reads the request and never answers (slowloris).
    Silent,
    /// Sends a status line one byte at a time, never ending it.
    Trickle,
    /// Answers 500 with an endless chunked body.
    EndlessChunks,
    /// Answers 200 with a 100 MB body.
    HugeBody,
}

/// What a hostile receiver saw of one connection.
#[derive(Debug)]
struct Attack {
    received: Received,
    /// The node closed the connection (within 20 s).
    closed_by_node: bool,
    /// Bytes of the answer the receiver got written before the node closed.
    bytes_sent: u64,
}

/// Sends `chunk` until the peer closes, `limit` bytes went out or 20 s passed; returns the
/// bytes sent and whether the peer closed.
fn flood(stream: &mut TcpStream, chunk: &[u8], limit: u64, pause: Duration) -> (u64, bool) {
    let until = Instant::now() + Duration::from_secs(20);
    let mut sent = 0u64;
    while sent < limit && Instant::now() < until {
        match stream.write(chunk) {
            Ok(n) => sent += n as u64,
            Err(_) => return (sent, true),
        }
        std::thread::sleep(pause);
    }
    (sent, false)
}

/// Serves each connection with the next behaviour of `script`.
fn hostile_receiver(listener: TcpListener, script: Vec<Hostile>) -> mpsc::Receiver<Attack> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for how in script {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            stream
                .set_write_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let received = read_request(&mut BufReader::new(&stream)).unwrap();
            let (bytes_sent, closed_by_node) = match how {
                Hostile::Silent => match stream.read(&mut [0; 1]) {
                    Ok(n) => (0, n == 0),
                    Err(e) => (
                        0,
                        !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                    ),
                },
                Hostile::Trickle => flood(&mut stream, b"H", u64::MAX, Duration::from_millis(20)),
                Hostile::EndlessChunks => {
                    let head = b"HTTP/1.1 500 X\r\nTransfer-Encoding: chunked\r\n\r\n";
                    stream.write_all(head).unwrap();
                    let chunk = [b"10000\r\n".as_slice(), &[b'x'; 0x10000], b"\r\n"].concat();
                    flood(&mut stream, &chunk, u64::MAX, Duration::ZERO)
                }
                Hostile::HugeBody => {
                    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n";
                    stream.write_all(head).unwrap();
                    flood(&mut stream, &[b'x'; 0x10000], 100 << 20, Duration::ZERO)
                }
            };
            let attack = Attack {
                received,
                closed_by_node,
                bytes_sent,
            };
            if tx.send(attack).is_err() {
                return;
            }
        }
    });
    rx
}

/// Issue 12 ("Hostile peers"), issue 15: webhook receivers that attack the node. A receiver
/// that never answers, one that trickles its answer byte by byte, one that streams an endless
/// chunked body and one that sends 100 MB: each attempt ends within
/// `alerts.webhook_timeout_ms` (the node closes the connection; it reads no body), a failed
/// attempt is retried as the same delivery, a 2xx delivers it whatever follows, and the node
/// keeps answering and publishing meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_webhook_receivers_neither_stall_nor_flood_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let script = vec![
        Hostile::Silent,
        Hostile::Trickle,
        Hostile::EndlessChunks,
        Hostile::HugeBody,
    ];
    let rx = hostile_receiver(listener, script.clone());
    let hub = MemoryHub::new();
    let c = with_webhook(alerting(dir.path(), "a"), &url, dir.path());
    let a = start(c, &hub).await;

    let mut deliveries = Vec::new();
    for how in script {
        let rx = &rx;
        let attack = tokio::task::block_in_place(|| rx.recv_timeout(Duration::from_secs(30)))
            .unwrap_or_else(|_| panic!("no attempt reached the {how:?} receiver"));
        assert!(
            attack.closed_by_node,
            "{how:?}: the node still held the connection after 20 s ({} bytes sent)",
            attack.bytes_sent
        );
        assert!(
            attack.bytes_sent < 100 << 20,
            "{how:?}: the node read the whole answer"
        );
        deliveries.push(attack.received.headers["x-crabnet-delivery"].clone());
        // The node keeps working while its webhook is attacked.
        a.overview().await.unwrap();
        a.publish(crabnet_core::PublishRequest {
            command: "echo x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert!(
        deliveries.windows(2).all(|w| w[0] == w[1]),
        "one delivery, retried: {deliveries:?}"
    );
    // The 200 (whatever body followed) delivered it; the three attacks before it failed.
    delivered_once_after_failures(&a, 3).await;
    assert_eq!(a.seeds(None).await.unwrap().len(), 4);
    a.stop().await.unwrap();
}
