//! The opt-in LAN paths, mDNS (libp2p) and UDP broadcast, inside a network namespace each test
//! makes for itself: nothing they send can leave this machine's test.
//!
//! Each `#[test]` here re-runs one `#[ignore]`d test of this binary under `unshare -rn` (a user
//! and network namespace of its own, which vanish with the process). Inside, that test adds a
//! veth pair with addresses in 10.77.0.0/24, the LAN the nodes share (loopback alone carries
//! no multicast), and runs its nodes in process. The inner tests refuse to run anywhere else:
//! run them through the outer ones.
//!
//! Where user namespaces or `ip` are missing, the outer tests say so and pass, unless
//! `CRABNET_REQUIRE_NAMESPACES=1` (set by `tests/run-all.sh`, so CI always runs them):
//! [`support::namespace`].

mod support;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crabnet_core::network::{DhtConfig, UdpConfig};
use crabnet_core::{Node, PublishRequest};
use support::forge::{lively_config, poll, stop_all, wait_view};
use support::namespace::{self, Kind};

/// Set by the outer test for the inner one it runs in the namespace.
const INSIDE: &str = "CRABNET_LAN_NAMESPACE";
/// The two addresses of the namespace's LAN (one per end of the veth pair).
const LAN_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const LAN_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The LAN's broadcast address.
const LAN_BROADCAST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 255);
/// mDNS's group and port (RFC 6762).
const MDNS_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
const MDNS_PORT: u16 = 5353;
/// How long anything here may take (the nodes hello every second).
const WITHIN: Duration = Duration::from_secs(30);

/// Runs the ignored test `inner` of this binary in a new user and network namespace.
fn in_namespace(inner: &str) {
    namespace::run_inside(Kind::Net, inner, INSIDE, &[&["ip", "-V"]]);
}

/// Inside the namespace: checks that it is a fresh one (loopback only), then brings up
/// loopback and a veth pair, `LAN_A` on one end and `LAN_B` on the other.
fn lan() {
    namespace::check_inside(Kind::Net, INSIDE, "the network");
    let devices = std::fs::read_to_string("/proc/self/net/dev").unwrap();
    let names: Vec<&str> = devices
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(names, ["lo"], "not a fresh network namespace");
    for args in [
        "link set lo up",
        "link add lan0 type veth peer name lan1",
        "addr add 10.77.0.1/24 broadcast 10.77.0.255 dev lan0",
        "addr add 10.77.0.2/24 broadcast 10.77.0.255 dev lan1",
        "link set lan0 up",
        "link set lan1 up",
    ] {
        ip(args);
    }
}

/// Runs `ip ARGS` (split at spaces) and checks that it succeeded.
fn ip(args: &str) {
    let status = Command::new("ip").args(args.split(' ')).status().unwrap();
    assert!(status.success(), "ip {args}: {status}");
}

/// A node on libp2p listening on TCP at `ip`, with mDNS on or off, and no peer to dial.
async fn dht_node(dir: &Path, name: &str, ip: Ipv4Addr, mdns: bool) -> Node {
    let dht = DhtConfig {
        listen: vec![format!("/ip4/{ip}/tcp/0")],
        mdns,
        ..DhtConfig::default()
    };
    Node::start_with_dht(lively_config(dir, name), dht)
        .await
        .unwrap()
}

/// A node on UDP bound to all addresses at `port`, sending to `broadcast` and to no peer.
async fn udp_node(dir: &Path, name: &str, port: u16, broadcast: Option<SocketAddr>) -> Node {
    let udp = UdpConfig {
        bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        peers: Vec::new(),
        broadcast,
    };
    let transport = Box::new(crabnet_core::network::UdpTransport::bind(udp).unwrap());
    Node::start_with_transport(lively_config(dir, name), transport)
        .await
        .unwrap()
}

/// Publishes a seed on `from` and waits until `to` holds it: the two found each other.
async fn seed_crosses(from: &Node, to: &Node) {
    to.wait_for_peers(1, WITHIN).await.unwrap();
    let view = from
        .publish(PublishRequest::new("echo across the lan"))
        .await
        .unwrap();
    wait_view(to, &view.seed.id, WITHIN, "arrive", |_| true).await;
}

/// A socket in mDNS's group on `LAN_A`'s interface, sharing port 5353 with any mDNS responder
/// of the namespace (as responders share it).
fn mdns_listener() -> UdpSocket {
    // SAFETY: a new socket whose descriptor is handed to `UdpSocket`, which owns it from here.
    let socket = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        UdpSocket::from_raw_fd(fd)
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    for option in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        let on: libc::c_int = 1;
        // SAFETY: `fd` is open; the option value is a c_int of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: MDNS_PORT.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    // SAFETY: `addr` is a sockaddr_in of the size given.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind :5353: {}", std::io::Error::last_os_error());
    socket.join_multicast_v4(&MDNS_GROUP, &LAN_A).unwrap();
    socket
}

/// Whether a datagram arrives on `socket` within `wait`.
fn hears(socket: &UdpSocket, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 9000];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        if socket.recv_from(&mut buf).is_ok() {
            return true;
        }
    }
    false
}

#[test]
fn mdns_finds_a_peer_on_the_lan() {
    in_namespace("inner_mdns_finds_a_peer_on_the_lan");
}

#[test]
fn mdns_is_silent_unless_asked() {
    in_namespace("inner_mdns_is_silent_unless_asked");
}

#[test]
fn a_listen_address_that_goes_away_is_no_longer_shown() {
    in_namespace("inner_a_listen_address_that_goes_away_is_no_longer_shown");
}

#[test]
fn udp_broadcast_finds_a_peer_on_the_lan() {
    in_namespace("inner_udp_broadcast_finds_a_peer_on_the_lan");
}

/// Two libp2p nodes given no peer at all find each other by mDNS, and gossip a seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "changes the network: runs inside the namespace mdns_finds_a_peer_on_the_lan makes"]
async fn inner_mdns_finds_a_peer_on_the_lan() {
    lan();
    let dir = tempfile::tempdir().unwrap();
    let a = dht_node(dir.path(), "a", LAN_A, true).await;
    let b = dht_node(dir.path(), "b", LAN_B, true).await;
    seed_crosses(&a, &b).await;
    stop_all([a, b]).await;
}

/// A libp2p node with mDNS off (the default) sends nothing to mDNS's group; the same listener
/// hears a node with it on (so that the silence means something).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "changes the network: runs inside the namespace mdns_is_silent_unless_asked makes"]
async fn inner_mdns_is_silent_unless_asked() {
    lan();
    assert!(!DhtConfig::default().mdns, "mDNS must be off by default");
    let dir = tempfile::tempdir().unwrap();
    let listener = mdns_listener();
    let quiet = dht_node(dir.path(), "quiet", LAN_A, DhtConfig::default().mdns).await;
    let heard = tokio::task::block_in_place(|| hears(&listener, Duration::from_secs(3)));
    assert!(!heard, "a node with mDNS off sent to mDNS's group");
    let loud = dht_node(dir.path(), "loud", LAN_B, true).await;
    let heard = tokio::task::block_in_place(|| hears(&listener, WITHIN));
    assert!(heard, "the listener never heard a node with mDNS on");
    stop_all([quiet, loud]).await;
}

/// Two UDP nodes given no peer: `a` sends to the LAN's broadcast address at `b`'s port, `b`
/// broadcasts nothing (the default). `b` hears `a`'s hello and answers it at its source, so
/// they find each other and seeds cross both ways. Two nodes that broadcast nothing never meet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "changes the network: runs inside the namespace udp_broadcast_finds_a_peer_on_the_lan \
            makes"]
async fn inner_udp_broadcast_finds_a_peer_on_the_lan() {
    lan();
    assert_eq!(
        UdpConfig::default().broadcast,
        None,
        "broadcast must be off by default"
    );
    let dir = tempfile::tempdir().unwrap();
    let quiet_since = Instant::now();
    let c = udp_node(dir.path(), "c", 7103, None).await;
    let d = udp_node(dir.path(), "d", 7104, None).await;
    let a = udp_node(dir.path(), "a", 7101, Some((LAN_BROADCAST, 7102).into())).await;
    let b = udp_node(dir.path(), "b", 7102, None).await;
    seed_crosses(&a, &b).await;
    seed_crosses(&b, &a).await;
    let name = |p: &crabnet_core::PeerInfo| p.name.clone();
    let known: Vec<String> = a.peers().await.unwrap().iter().map(name).collect();
    assert_eq!(known, ["b"], "a knows only b");
    let known: Vec<String> = b.peers().await.unwrap().iter().map(name).collect();
    assert_eq!(known, ["a"], "b knows only a");
    // Three hello intervals at least since c and d started.
    let quiet_for = Duration::from_secs(3);
    tokio::time::sleep(quiet_for.saturating_sub(quiet_since.elapsed())).await;
    for quiet in [&c, &d] {
        assert_eq!(
            quiet.peers().await.unwrap(),
            [],
            "a node that broadcasts nothing"
        );
    }
    stop_all([a, b, c, d]).await;
}

/// A libp2p node listening on all addresses shows each of the LAN's, and announces them in its
/// hellos; when one is taken off its interface (a laptop leaving a network, a DHCP lease
/// ending), the node stops showing it, and a peer stops seeing it in the node's hellos; when
/// it comes back, it is shown again. An address two listeners have (one on all addresses, one
/// on loopback, sharing a port) is shown once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "changes the network: runs inside the namespace \
            a_listen_address_that_goes_away_is_no_longer_shown makes"]
async fn inner_a_listen_address_that_goes_away_is_no_longer_shown() {
    lan();
    let dir = tempfile::tempdir().unwrap();
    // A free port: nothing else runs in this namespace.
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dht = DhtConfig {
        listen: vec![
            format!("/ip4/0.0.0.0/tcp/{port}"),
            format!("/ip4/127.0.0.1/tcp/{port}"),
        ],
        ..DhtConfig::default()
    };
    let a = Node::start_with_dht(lively_config(dir.path(), "a"), dht)
        .await
        .unwrap();
    let dht = DhtConfig {
        listen: vec![format!("/ip4/{LAN_A}/tcp/0")],
        peers: vec![format!("/ip4/{LAN_A}/tcp/{port}")],
        ..DhtConfig::default()
    };
    let b = Node::start_with_dht(lively_config(dir.path(), "b"), dht)
        .await
        .unwrap();
    let on = |ip: Ipv4Addr| move |a: &&String| a.starts_with(&format!("/ip4/{ip}/tcp/{port}/"));
    // What `a` shows, and what `b` last heard from it, once both list `LAN_B` or not.
    let lists = |want_b: bool| {
        let (a, b) = (&a, &b);
        move || async move {
            let shown = a.overview().await.unwrap().addresses;
            let peers = b.peers().await.unwrap();
            let heard = peers.into_iter().find(|p| p.name == "a")?.addresses;
            let has_b = |l: &[String]| l.iter().any(|x| on(LAN_B)(&x));
            let both = has_b(&shown) == want_b && has_b(&heard) == want_b;
            (both && shown.iter().any(|x| on(LAN_A)(&x))).then_some((shown, heard))
        }
    };
    let what = |state: &'static str| move || format!("{LAN_B} was never {state} for a and b");
    let (shown, heard) = poll(WITHIN, what("listed"), lists(true)).await;
    for list in [&shown, &heard] {
        let loopback = list.iter().filter(on(Ipv4Addr::LOCALHOST)).count();
        assert_eq!(loopback, 1, "loopback listed once: {list:?}");
    }
    ip("addr del 10.77.0.2/24 dev lan1");
    let (shown, _) = poll(WITHIN, what("gone"), lists(false)).await;
    assert_eq!(
        shown.iter().filter(on(Ipv4Addr::LOCALHOST)).count(),
        1,
        "{shown:?}"
    );
    ip("addr add 10.77.0.2/24 broadcast 10.77.0.255 dev lan1");
    let (shown, _) = poll(WITHIN, what("back"), lists(true)).await;
    assert_eq!(shown.iter().filter(on(LAN_B)).count(), 1, "{shown:?}");
    stop_all([a, b]).await;
}
