//! Raw HTTP over real TCP connections to a node's monitoring server (`tests/web.rs`,
//! `web_limits.rs`, `limits.rs`): the head of a `GET` ([`get_head`]), one whole exchange
//! ([`http`]), or a connection read to its end ([`read_to_close`]) or until some text arrives
//! ([`read_into_until`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The head of a `GET path` request to `host`, asking the server to close the connection after
/// its response (`close`) or to keep it open for more requests.
pub fn get_head(path: &str, host: &str, close: bool) -> String {
    let connection = if close { "close" } else { "keep-alive" };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {connection}\r\n\r\n")
}

/// A minimal HTTP/1.x client over TCP: status, headers and body of one request, whose whole
/// head is `request_head` (10 s at most for the response).
pub async fn http(addr: SocketAddr, request_head: &str) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request_head.as_bytes()).await.unwrap();
    let (raw, end) = read_to_close(&mut tcp, Duration::from_secs(10), "the response ends").await;
    end.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// Reads `tcp` until the server closes it, `within` at most (else fails with `what`): the text
/// received, and how the read ended (an error when the connection was reset).
pub async fn read_to_close(
    tcp: &mut TcpStream,
    within: Duration,
    what: &str,
) -> (String, std::io::Result<usize>) {
    let mut raw = Vec::new();
    let end = tokio::time::timeout(within, tcp.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("{what}"));
    (String::from_utf8_lossy(&raw).into_owned(), end)
}

/// Reads `tcp` into `seen` until `seen` contains `needle`; fails if the connection closes
/// first.
pub async fn read_into_until(tcp: &mut TcpStream, seen: &mut String, needle: &str) {
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before {needle:?}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}
