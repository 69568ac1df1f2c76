//! The dashboard served from a `BlockingNode`: the same server as `crabnet listen` (health,
//! the dashboard page, the API), on an ephemeral loopback port.

use std::io::{Read, Write};
use std::net::TcpStream;

use crabnet_core::web::WebConfig;
use crabnet_core::{BlockingNode, Config};

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn a_blocking_node_serves_the_dashboard_on_an_ephemeral_port_until_shut_down() {
    let dir = tempfile::tempdir().unwrap();
    let node = BlockingNode::start(Config::with_data_dir(dir.path().join("n"))).unwrap();
    let mut web = node
        .serve_web(WebConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..WebConfig::default()
        })
        .unwrap();
    let addr = web.local_addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    assert_eq!(web.url(), format!("http://{addr}/"));
    let id = node.node().id().to_string();
    let health = get(addr, "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains(&id), "{health}");
    // The dashboard itself, and the API it reads.
    let page = get(addr, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<title>Crabnet dashboard</title>"), "{page}");
    let overview = get(addr, "/api/overview");
    assert!(overview.starts_with("HTTP/1.1 200"), "{overview}");
    assert!(
        overview.contains(&format!("\"node_id\":\"{id}\"")),
        "{overview}"
    );

    node.stop().unwrap();
    let health = get(addr, "/health");
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    web.shutdown().unwrap();
    web.shutdown().unwrap();
    assert!(TcpStream::connect(addr).is_err());
}
