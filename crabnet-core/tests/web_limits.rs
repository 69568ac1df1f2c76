//! The monitoring server under slow and greedy clients, over real connections on 127.0.0.1:
//! header and idle timeouts, the total and per-address connection caps, and `since` cursors
//! beyond the log.

// Only the raw HTTP helpers of `support`, not the whole harness (this suite uses some).
#[allow(dead_code)]
#[path = "support/http.rs"]
mod http;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crabnet_core::web::{WebConfig, WebHandle};
use crabnet_core::{Config, Node, PublishRequest};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use http::{get_head, read_into_until, read_to_close};

/// A node without network and its monitoring server.
struct Server {
    node: Node,
    web: Option<WebHandle>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(web: WebConfig) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(Config::with_data_dir(dir.path()))
            .await
            .unwrap();
        let web = node.serve_web(web).await.unwrap();
        let addr = web.local_addr();
        assert_eq!(addr.ip().to_string(), "127.0.0.1");
        Server {
            node,
            web: Some(web),
            addr,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        self.web.take().unwrap().shutdown().await.unwrap();
        self.node.stop().await.unwrap();
    }
}

/// One response on a (possibly kept-alive) connection: status and body.
async fn response(tcp: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed before the response head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("content-length");
    while raw.len() < end + length {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed inside the body");
        raw.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&raw[end..end + length]).into_owned();
    (status, body)
}

/// `GET path` on a new connection, answered within `within`.
async fn get(addr: SocketAddr, path: &str, within: Duration) -> (u16, String) {
    tokio::time::timeout(within, async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let head = get_head(path, "127.0.0.1", true);
        tcp.write_all(head.as_bytes()).await.unwrap();
        response(&mut tcp).await
    })
    .await
    .unwrap_or_else(|_| panic!("GET {path} was not answered within {within:?}"))
}

/// Waits until the server closes `tcp` (end of stream or reset), discarding what it sends.
async fn closed(tcp: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Raises this process's soft descriptor limit to the hard limit; returns the new soft limit.
fn raise_fd_limit() -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
    }
    lim.rlim_cur
}

/// Descriptors this process holds (client and server sockets both count).
#[cfg(target_os = "linux")]
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[cfg(not(target_os = "linux"))]
fn open_fds() -> usize {
    0
}

/// The attack: thousands of connections that send nothing or half a request head.
/// `/health` keeps answering at once, the server holds at most `max_connections_per_ip` of
/// them, and it closes every one after the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_slow_connections_neither_starve_health_nor_hold_descriptors() {
    let limit = raise_fd_limit();
    // 3,000 client sockets plus what the server and the test harness need.
    let n = if limit >= 3_600 {
        3_000
    } else {
        let n = limit.saturating_sub(600) as usize;
        eprintln!("RLIMIT_NOFILE is {limit}: scaled to {n} slow connections");
        n
    };
    assert!(n >= 200, "RLIMIT_NOFILE {limit} is too low for this test");
    let web = WebConfig {
        header_timeout_secs: 1,
        idle_timeout_secs: 1,
        ..WebConfig::local(0)
    };
    let per_ip = web.max_connections_per_ip;
    let s = Server::start(web).await;
    let addr = s.addr;
    let baseline = open_fds();

    let started = Instant::now();
    let mut slow = Vec::with_capacity(n);
    while slow.len() < n {
        // Bursts of 250 connects: the server listens with a backlog of 1024 (with tokio's
        // default of 128 the kernel drops SYNs of such bursts and clients retry a second later).
        let batch = (n - slow.len()).min(250);
        let opened = futures::future::join_all((0..batch).map(|_| TcpStream::connect(addr))).await;
        for tcp in opened {
            let mut tcp = tcp.expect("connect (the listener keeps accepting)");
            if slow.len() % 2 == 1 {
                // Half a request head; the rest never comes.
                let _ = tcp
                    .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                    .await;
            }
            slow.push(tcp);
        }
    }
    eprintln!("opened {n} slow connections in {:?}", started.elapsed());

    // The server holds at most the per-address cap of them (all come from 127.0.0.1).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = open_fds().saturating_sub(baseline).saturating_sub(n);
    assert!(
        held <= per_ip + 32,
        "the server holds {held} descriptors for {n} slow connections (cap {per_ip})"
    );

    // /health answers promptly while they are open.
    for _ in 0..5 {
        let asked = Instant::now();
        let (status, body) = get(addr, "/health", Duration::from_secs(3)).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
    }

    // Every slow connection is closed by the server: the newest after the 1 s header timeout,
    // the others earlier (refused or evicted to make room).
    tokio::time::timeout(
        Duration::from_secs(6),
        futures::future::join_all(slow.iter_mut().map(closed)),
    )
    .await
    .expect("the server closes every slow connection after the header timeout");
    let held = open_fds().saturating_sub(baseline).saturating_sub(n);
    assert!(held <= 32, "{held} server descriptors still open");
    drop(slow);

    let (status, _) = get(addr, "/health", Duration::from_secs(3)).await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_cuts_slow_heads_and_idle_timeout_ends_kept_alive_connections() {
    let s = Server::start(WebConfig {
        header_timeout_secs: 1,
        idle_timeout_secs: 3,
        ..WebConfig::local(0)
    })
    .await;
    let addr = s.addr;

    // Silent: closed after the header timeout.
    let silent = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let t = Instant::now();
        closed(&mut tcp).await;
        t.elapsed()
    });
    // Slowloris: one byte every 100 ms is activity, but the head never completes in time.
    let trickle = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let t = Instant::now();
        let request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ".to_vec();
        let mut bytes = request.into_iter().chain(std::iter::repeat(b'a'));
        loop {
            tokio::select! {
                _ = closed(&mut tcp) => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if tcp.write_all(&[bytes.next().unwrap()]).await.is_err() {
                        break;
                    }
                }
            }
        }
        t.elapsed()
    });

    // Kept alive: a pause longer than the header timeout between requests is fine...
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(get_head("/health", "127.0.0.1", false).as_bytes())
        .await
        .unwrap();
    assert_eq!(response(&mut tcp).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    // (A large response, too: the OpenAPI document, well over the 64 KiB head buffer.)
    tcp.write_all(get_head("/api/openapi.json", "127.0.0.1", false).as_bytes())
        .await
        .unwrap();
    let (status, body) = response(&mut tcp).await;
    assert_eq!(status, 200);
    assert!(body.len() > 64 * 1024, "{}", body.len());
    assert!(serde_json::from_str::<Value>(&body).unwrap()["paths"].is_object());
    // ... and after the idle timeout the server closes the connection.
    let idle = Instant::now();
    tokio::time::timeout(Duration::from_secs(8), closed(&mut tcp))
        .await
        .expect("closed after the idle timeout");
    let idle = idle.elapsed();
    assert!(
        idle >= Duration::from_millis(2_500) && idle < Duration::from_secs(6),
        "idle connection closed after {idle:?} (idle timeout 3 s)"
    );

    for (what, task) in [("silent", silent), ("trickling", trickle)] {
        let took = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap_or_else(|_| panic!("the {what} connection is still open"))
            .unwrap();
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(3),
            "{what} connection closed after {took:?} (header timeout 1 s)"
        );
    }
    s.stop().await;
}

/// Opens `/api/events/stream` and reads its response head.
async fn open_stream(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(get_head("/api/events/stream", "127.0.0.1", false).as_bytes())
        .await
        .unwrap();
    let mut seen = String::new();
    read_into_until(&mut tcp, &mut seen, "\r\n\r\n").await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    tcp
}

async fn read_until(tcp: &mut TcpStream, needle: &str, within: Duration) {
    let mut seen = String::new();
    tokio::time::timeout(within, read_into_until(tcp, &mut seen, needle))
        .await
        .unwrap_or_else(|_| panic!("{needle:?} did not arrive: {seen}"));
}

/// Connections busy with a response (event streams) are neither timed out nor evicted; a
/// connection that waits for a request makes room for a new one; when every connection is
/// busy a new one gets a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_connections_stay_idle_ones_make_room_and_a_full_server_answers_503() {
    let s = Server::start(WebConfig {
        header_timeout_secs: 5,
        idle_timeout_secs: 1,
        max_connections: 8,
        max_connections_per_ip: 3,
        ..WebConfig::local(0)
    })
    .await;
    let addr = s.addr;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(open_stream(addr).await);
    }

    // Three busy connections from 127.0.0.1: a fourth is refused, with a JSON 503.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (raw, _) = read_to_close(&mut tcp, Duration::from_secs(3), "refused at once").await;
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
    let body: Value = serde_json::from_str(raw.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["error"]["kind"], "unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("connections"),
        "{body}"
    );

    // Longer than the idle timeout: the streams are still there and deliver events.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let seed = s
        .node
        .publish(PublishRequest::new("echo busy"))
        .await
        .unwrap();
    for tcp in &mut streams {
        read_until(tcp, seed.seed.id.as_str(), Duration::from_secs(10)).await;
    }

    // One stream ends; a silent connection takes its place; a request evicts the silent one
    // (long before its 5 s header timeout).
    drop(streams.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = get(addr, "/health", Duration::from_secs(3)).await;
    assert_eq!(status, 200, "{body}");
    let evicted = Instant::now();
    tokio::time::timeout(Duration::from_secs(2), closed(&mut silent))
        .await
        .expect("the waiting connection was closed to make room");
    assert!(evicted.elapsed() < Duration::from_secs(2));
    drop(streams);
    s.stop().await;
}

/// `since` is a u64 end to end: a cursor at or beyond 2^63 (which once wrapped to a negative
/// SQLite integer) or past the last event lists nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_beyond_the_log_lists_nothing() {
    let s = Server::start(WebConfig::local(0)).await;
    let addr = s.addr;
    s.node
        .publish(PublishRequest::new("echo cursor"))
        .await
        .unwrap();
    let within = Duration::from_secs(5);
    let (status, body) = get(addr, "/api/events?since=0", within).await;
    assert_eq!(status, 200, "{body}");
    let all: Value = serde_json::from_str(&body).unwrap();
    let events = all["events"].as_array().unwrap();
    assert!(!events.is_empty(), "{all}");
    let last = all["next_since"].as_u64().unwrap();
    assert_eq!(events.last().unwrap()["seq"].as_u64(), Some(last));
    for since in [
        last,
        last + 1,
        i64::MAX as u64,
        1 << 63,
        (1 << 63) + 1,
        u64::MAX - 1,
        u64::MAX,
    ] {
        let (status, body) = get(addr, &format!("/api/events?since={since}"), within).await;
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            page["events"],
            serde_json::json!([]),
            "since={since}: {page}"
        );
        assert_eq!(page["more"], false, "since={since}: {page}");
        assert_eq!(page["next_since"].as_u64(), Some(since), "{page}");
        assert_eq!(
            s.node.events_after(since, 1000).await.unwrap().len(),
            0,
            "since={since}"
        );
    }
    // The stream with such a cursor replays nothing, and a new event after it neither.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let beyond = format!("/api/events/stream?since={}", 1u64 << 63);
    tcp.write_all(get_head(&beyond, "127.0.0.1", false).as_bytes())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(500), tcp.read_to_end(&mut seen)).await;
    s.node
        .publish(PublishRequest::new("echo after"))
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_millis(700), tcp.read_to_end(&mut seen)).await;
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    let (_, body) = seen.split_once("\r\n\r\n").unwrap();
    assert!(!body.contains("data:"), "nothing is replayed: {body}");
    s.stop().await;
}
