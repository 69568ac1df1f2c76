//! The libp2p backend on loopback: gossipsub delivery validated by the trust boundary, sync
//! over request-response for a late joiner, and the UDP fallback when libp2p cannot start.

mod support;

use std::time::{Duration, Instant};

use crabnet_core::network::{DhtConfig, UdpConfig};
use crabnet_core::{EventKind, Node, PublishRequest, SeedStatus};
use support::forge::{
    claim_and_run_when_awarded, lively_config, poll, publish_for_bids, stop_all, wait_view,
};
use support::{Transport, reserve_on};

async fn tcp_address(node: &Node) -> String {
    let what = || format!("{} has no libp2p listen address", node.config().name);
    poll(Duration::from_secs(10), what, move || async move {
        let o = node.overview().await.unwrap();
        o.addresses.into_iter().find(|a| a.contains("/tcp/"))
    })
    .await
}

async fn start(dir: &std::path::Path, name: &str, peers: Vec<String>) -> Node {
    let dht = DhtConfig {
        peers,
        ..DhtConfig::default()
    };
    Node::start_with_dht(lively_config(dir, name), dht)
        .await
        .unwrap()
}

/// A TCP port on 127.0.0.1 that no other test of this binary gets. It is below the kernel's
/// ephemeral range: nothing else takes it while it is free.
fn free_port() -> u16 {
    reserve_on(std::net::Ipv4Addr::LOCALHOST.into(), Transport::Dht)
        .addr
        .port()
}

/// The libp2p address of TCP `port` on 127.0.0.1.
fn tcp_on(port: u16) -> String {
    format!("/ip4/127.0.0.1/tcp/{port}")
}

/// Starts node `name` in `dir` listening on TCP `port` of 127.0.0.1 alone, with no peers.
async fn start_listening_on(dir: &std::path::Path, name: &str, port: u16) -> Node {
    let dht = DhtConfig {
        listen: vec![tcp_on(port)],
        ..DhtConfig::default()
    };
    Node::start_with_dht(lively_config(dir, name), dht)
        .await
        .unwrap()
}

async fn wait_status(node: &Node, id: &crabnet_core::SeedId, status: SeedStatus) {
    let what = format!("as {status}");
    wait_view(node, id, Duration::from_secs(20), &what, |v| {
        v.status == status
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_libp2p_nodes_run_a_lifecycle_and_a_late_joiner_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), "a", vec![]).await;
    let addr = tcp_address(&a).await;
    let b = start(dir.path(), "b", vec![addr.clone()]).await;
    let c = start(dir.path(), "c", vec![addr.clone()]).await;
    for n in [&a, &b, &c] {
        n.wait_for_peers(2, Duration::from_secs(20)).await.unwrap();
    }
    let seed = publish_for_bids(&a, "echo over-libp2p", 2).await;
    let id = seed.seed.id.clone();
    wait_status(&b, &id, SeedStatus::Open).await;
    wait_status(&c, &id, SeedStatus::Open).await;
    b.bid(&id, 30).await.unwrap();
    c.bid(&id, 20).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let pause = Duration::from_millis(20);
    claim_and_run_when_awarded(&c, &id, deadline, pause, "award never reached c").await;
    wait_status(&a, &id, SeedStatus::Completed).await;
    a.settle(&id, true, "").await.unwrap();
    for n in [&a, &b, &c] {
        wait_status(n, &id, SeedStatus::Settled).await;
    }

    // A late joiner that only knows b catches up through sync (request-response).
    let b_addr = tcp_address(&b).await;
    let d = start(dir.path(), "d", vec![b_addr]).await;
    wait_status(&d, &id, SeedStatus::Settled).await;
    let digests: Vec<String> = futures_digests(&[&a, &b, &c, &d]).await;
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    let o = d.overview().await.unwrap();
    assert_eq!(o.transport.as_deref(), Some("dht"));
    stop_all([a, b, c, d]).await;
}

/// A node listens on TCP alone unless a listen address asks for QUIC (a QUIC endpoint costs
/// an idle node memory and keep-alive pings); one that does is reached over QUIC by a node
/// that listens on TCP alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listens_on_quic_only_when_asked_and_is_reached_over_it() {
    assert!(
        DhtConfig::default()
            .listen
            .iter()
            .all(|a| !a.contains("quic")),
        "QUIC is a default listen address"
    );
    let dir = tempfile::tempdir().unwrap();
    let tcp_only = start(dir.path(), "tcp", vec![]).await;
    tcp_address(&tcp_only).await;
    let both = DhtConfig {
        listen: vec![
            "/ip4/127.0.0.1/tcp/0".into(),
            "/ip4/127.0.0.1/udp/0/quic-v1".into(),
        ],
        ..DhtConfig::default()
    };
    let q = Node::start_with_dht(lively_config(dir.path(), "quic"), both)
        .await
        .unwrap();
    let what = || "the QUIC node has no QUIC listen address".to_owned();
    let quic = poll(Duration::from_secs(10), what, || async {
        let o = q.overview().await.unwrap();
        o.addresses.into_iter().find(|a| a.contains("/quic-v1"))
    })
    .await;
    let dialer = start(dir.path(), "dialer", vec![quic]).await;
    dialer
        .wait_for_peers(1, Duration::from_secs(20))
        .await
        .unwrap();
    // By now every listen address of the default node is up: none is a QUIC one.
    let listed = tcp_only.overview().await.unwrap().addresses;
    assert!(
        listed.iter().all(|a| !a.contains("quic")),
        "a default node listens on QUIC: {listed:?}"
    );
    stop_all([tcp_only, q, dialer]).await;
}

async fn futures_digests(nodes: &[&Node]) -> Vec<String> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(n.overview().await.unwrap().state_digest);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_that_cannot_start_falls_back_to_udp_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // A reserved port, below the kernel's ephemeral range, released for the fallback to bind.
    let udp_port = support::reserve_port().local_addr().unwrap();
    let dht = DhtConfig {
        // Not a valid multiaddress: libp2p cannot start.
        listen: vec!["/ip4/127.0.0.1/tcp/not-a-port".into()],
        udp_fallback: Some(UdpConfig {
            bind: udp_port,
            peers: vec![],
            broadcast: None,
        }),
        ..DhtConfig::default()
    };
    let node = Node::start_with_dht(lively_config(dir.path(), "f"), dht)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = node.events_after(0, 100).await.unwrap();
        let notice = events.iter().find_map(|e| match &e.kind {
            EventKind::TransportStatus { detail, .. } => Some(detail.clone()),
            _ => None,
        });
        if let Some(detail) = notice {
            assert!(detail.contains("using UDP"), "{detail}");
            break;
        }
        assert!(Instant::now() < deadline, "no fallback event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        node.overview().await.unwrap().transport.as_deref(),
        Some("udp")
    );
    // Without a fallback the error is clear.
    let err = Node::start_with_dht(
        lively_config(dir.path(), "g"),
        DhtConfig {
            listen: vec!["garbage".into()],
            ..DhtConfig::default()
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("invalid multiaddress"), "{err}");
    node.stop().await.unwrap();
}

/// libp2p listens after the node started: the node says so (`listening on ADDR`) and shows the
/// address from then on, not only from its next hello (30 s by default, a long wait for a
/// program that hands the address to its peers, as `crabnet bench --transport dht` does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shows_its_listen_address_as_soon_as_libp2p_listens() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = lively_config(dir.path(), "l");
    c.network.hello_interval_secs = 30;
    let node = Node::start_with_dht(c, DhtConfig::default()).await.unwrap();
    let what = || "no `listening on` event".to_owned();
    let listening = poll(Duration::from_secs(10), what, || async {
        let events = node.events_after(0, 100).await.unwrap();
        events.into_iter().find_map(|e| match e.kind {
            EventKind::TransportStatus { detail, .. } => {
                detail.strip_prefix("listening on ").map(str::to_owned)
            }
            _ => None,
        })
    })
    .await;
    assert!(
        listening.starts_with("/ip4/127.0.0.1/tcp/") && listening.contains("/p2p/"),
        "{listening}"
    );
    let what = || "the listen address is not in the overview".to_owned();
    poll(Duration::from_secs(2), what, || async {
        let o = node.overview().await.unwrap();
        o.addresses.contains(&listening).then_some(())
    })
    .await;
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_disconnections_are_events() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), "a", vec![]).await;
    let addr = tcp_address(&a).await;
    assert!(
        addr.contains("/p2p/12D3"),
        "the address names the peer id: {addr}"
    );
    let b = start(dir.path(), "b", vec![addr]).await;
    a.wait_for_peers(1, Duration::from_secs(20)).await.unwrap();
    b.stop().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let has = |events: &[crabnet_core::Event], what: &str| {
        events.iter().any(|e| {
            matches!(&e.kind, EventKind::TransportStatus { detail, .. } if detail.starts_with(what))
        })
    };
    loop {
        let events = a.events_after(0, 10_000).await.unwrap();
        if has(&events, "connected to libp2p peer") && has(&events, "disconnected from libp2p peer")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connect/disconnect events: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop().await.unwrap();
}

/// The libp2p peer id survives a key rotation and a restart (peers and bootstrap lists name
/// it); the key file is private; a damaged key file is a clear error, not a new identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_libp2p_peer_id_survives_a_key_rotation_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let peer_id = |addr: &str| addr.rsplit("/p2p/").next().unwrap().to_owned();
    let node = start(dir.path(), "r", Vec::new()).await;
    let before = peer_id(&tcp_address(&node).await);
    node.rotate_keys().await.unwrap();
    node.stop().await.unwrap();
    let node = start(dir.path(), "r", Vec::new()).await;
    assert_eq!(node.public_identity().epoch, 2);
    assert_eq!(peer_id(&tcp_address(&node).await), before);
    node.stop().await.unwrap();

    let key = dir.path().join("r").join("libp2p.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    std::fs::write(&key, b"not a key").unwrap();
    let err = Node::start_with_dht(lively_config(dir.path(), "r"), DhtConfig::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), crabnet_core::ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("libp2p.key"), "{err}");
}

/// The connections a node holds, as its events tell them: `connected to` minus `disconnected
/// from` libp2p peers.
async fn connections(node: &Node) -> i64 {
    let events = node.events_after(0, 100_000).await.unwrap();
    events
        .iter()
        .map(|e| match &e.kind {
            EventKind::TransportStatus { detail, .. }
                if detail.starts_with("connected to libp2p peer") =>
            {
                1
            }
            EventKind::TransportStatus { detail, .. }
                if detail.starts_with("disconnected from libp2p peer") =>
            {
                -1
            }
            _ => 0,
        })
        .sum()
}

/// A connection to a peer outside the gossip mesh closes once nothing uses it (issue 13):
/// gossipsub's substreams used to keep every connection open for good, so each node of a
/// network held one to nearly every other (99 each at 100 nodes), with their memory and
/// upkeep. Here sixteen nodes first connect to each other (a star, then Kademlia's queries);
/// every node then keeps at most gossipsub's mesh (12 peers at most), and a seed still
/// reaches everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_outside_the_gossip_mesh_close_when_idle_and_a_seed_still_reaches_everyone() {
    const N: usize = 16;
    const MESH_MAX: i64 = 12;
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path(), "n0", vec![]).await;
    let addr = tcp_address(&hub).await;
    let mut nodes = vec![hub];
    for i in 1..N {
        nodes.push(start(dir.path(), &format!("n{i}"), vec![addr.clone()]).await);
    }
    for n in &nodes {
        n.wait_for_peers(N - 1, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let counts = |nodes: &[Node]| {
        let nodes = nodes.to_vec();
        async move {
            let mut out = Vec::new();
            for n in &nodes {
                out.push(connections(n).await);
            }
            out
        }
    };
    // The hub was dialed by everyone.
    let hub_events = nodes[0].events_after(0, 100_000).await.unwrap();
    let dialed_by = hub_events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TransportStatus { detail, .. } => {
                detail.strip_prefix("connected to libp2p peer ")
            }
            _ => None,
        })
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert!(dialed_by >= N - 1, "the hub saw {dialed_by} peers connect");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = counts(&nodes).await;
        if now.iter().all(|&c| c <= MESH_MAX) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections per node stay above the mesh's {MESH_MAX}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A seed from the last node to start reaches every node through the connections kept.
    let seed = nodes[N - 1]
        .publish(PublishRequest::new("echo through-the-mesh"))
        .await
        .unwrap();
    for n in &nodes {
        wait_status(n, &seed.seed.id, SeedStatus::Open).await;
    }
    let now = counts(&nodes).await;
    assert!(
        now.iter().all(|&c| c > 0 && c <= MESH_MAX),
        "connections per node: {now:?}"
    );
    stop_all(nodes).await;
}

/// A node whose configured peer was not up yet when it started dials it again while it has
/// no connection, and joins once the peer is there (it used to stay alone for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_alone_dials_its_configured_peer_again_until_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let early = start(dir.path(), "early", vec![tcp_on(port)]).await;
    // Its first dial fails: nobody listens there yet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let late = start_listening_on(dir.path(), "late", port).await;
    early
        .wait_for_peers(1, Duration::from_secs(40))
        .await
        .unwrap();
    late.wait_for_peers(1, Duration::from_secs(20))
        .await
        .unwrap();
    stop_all([early, late]).await;
}

/// A node whose Kademlia bootstrap node was down when it started (its dial failed, which takes
/// a peer out of the routing table) bootstraps from it again while it has no connection, and
/// joins once it is up (it used to stay alone for good: the bootstrap node was gone from the
/// routing table, and nothing put it back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_alone_bootstraps_again_from_its_bootstrap_node_until_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The bootstrap node's address, with its peer id (kept in its data directory).
    let boot = start_listening_on(dir.path(), "boot", port).await;
    let boot_addr = tcp_address(&boot).await;
    boot.stop().await.unwrap();
    // Its first bootstrap fails for certain: a stand-in takes the connection and drops it.
    let stand_in = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let early = Node::start_with_dht(
        lively_config(dir.path(), "early"),
        DhtConfig {
            bootstrap: vec![boot_addr],
            ..DhtConfig::default()
        },
    )
    .await
    .unwrap();
    let (dialed, _) = tokio::time::timeout(Duration::from_secs(20), stand_in.accept())
        .await
        .expect("the node never dialed its bootstrap node")
        .unwrap();
    drop((dialed, stand_in));
    let boot = start_listening_on(dir.path(), "boot", port).await;
    early
        .wait_for_peers(1, Duration::from_secs(40))
        .await
        .unwrap();
    stop_all([early, boot]).await;
}

/// Peers that lie about addresses. The third party they aim at is a TCP listener on
/// 127.0.0.2: loopback too, but another IP address than the nodes' (Linux routes all of
/// 127.0.0.0/8 to the loopback interface).
#[cfg(target_os = "linux")]
mod liars {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use crabnet_core::Node;
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    use libp2p::{Multiaddr, PeerId, Swarm, identify, kad};

    use super::support::forge::tcp_swarm;
    use super::{start, tcp_address};

    /// What a lying peer runs: identify and Kademlia, so that the node takes it for one of its
    /// own, and a guard that keeps its own Kademlia from dialing the peers it makes up (only
    /// the node's dials may reach the third party).
    #[derive(libp2p::swarm::NetworkBehaviour)]
    struct Liar {
        identify: identify::Behaviour,
        kad: kad::Behaviour<kad::store::MemoryStore>,
        guard: DialsOnlyByAddress,
    }

    /// Refuses every dial of a peer by its id (Kademlia's); a dial of an address goes ahead.
    struct DialsOnlyByAddress;

    impl libp2p::swarm::NetworkBehaviour for DialsOnlyByAddress {
        type ConnectionHandler = libp2p::swarm::dummy::ConnectionHandler;
        type ToSwarm = std::convert::Infallible;

        fn handle_established_inbound_connection(
            &mut self,
            _: libp2p::swarm::ConnectionId,
            _: PeerId,
            _: &Multiaddr,
            _: &Multiaddr,
        ) -> Result<libp2p::swarm::THandler<Self>, libp2p::swarm::ConnectionDenied> {
            Ok(libp2p::swarm::dummy::ConnectionHandler)
        }

        fn handle_pending_outbound_connection(
            &mut self,
            _: libp2p::swarm::ConnectionId,
            peer: Option<PeerId>,
            _: &[Multiaddr],
            _: libp2p::core::Endpoint,
        ) -> Result<Vec<Multiaddr>, libp2p::swarm::ConnectionDenied> {
            match peer {
                Some(peer) => Err(libp2p::swarm::ConnectionDenied::new(format!(
                    "the liar does not dial {peer}"
                ))),
                None => Ok(Vec::new()),
            }
        }

        fn handle_established_outbound_connection(
            &mut self,
            _: libp2p::swarm::ConnectionId,
            _: PeerId,
            _: &Multiaddr,
            _: libp2p::core::Endpoint,
            _: libp2p::core::transport::PortUse,
        ) -> Result<libp2p::swarm::THandler<Self>, libp2p::swarm::ConnectionDenied> {
            Ok(libp2p::swarm::dummy::ConnectionHandler)
        }

        fn on_swarm_event(&mut self, _: libp2p::swarm::FromSwarm) {}

        fn on_connection_handler_event(
            &mut self,
            _: PeerId,
            _: libp2p::swarm::ConnectionId,
            event: libp2p::swarm::THandlerOutEvent<Self>,
        ) {
            match event {}
        }

        fn poll(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<
            libp2p::swarm::ToSwarm<Self::ToSwarm, libp2p::swarm::THandlerInEvent<Self>>,
        > {
            std::task::Poll::Pending
        }
    }

    fn liar() -> Swarm<Liar> {
        let behaviour = |key: &libp2p::identity::Keypair| {
            let id = key.public().to_peer_id();
            let mut config = kad::Config::new(libp2p::StreamProtocol::new(
                crabnet_core::network::KAD_PROTOCOL,
            ));
            // Room for every peer it makes up.
            config.set_kbucket_size(std::num::NonZeroUsize::new(256).unwrap());
            let mut kad = kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), config);
            kad.set_mode(Some(kad::Mode::Server));
            Liar {
                identify: identify::Behaviour::new(identify::Config::new(
                    "/crabnet/1.0.0".into(),
                    key.public(),
                )),
                kad,
                guard: DialsOnlyByAddress,
            }
        };
        let mut liar = tcp_swarm(
            libp2p::identity::Keypair::generate_ed25519(),
            behaviour,
            |c| c.with_idle_connection_timeout(Duration::from_secs(60)),
        );
        liar.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        liar
    }

    /// The third party, a TCP listener on 127.0.0.2: its port, and how many connections it
    /// accepted.
    async fn third_party() -> (u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let knocks = Arc::new(AtomicUsize::new(0));
        let counter = knocks.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        (port, knocks)
    }

    /// Drives the liar's swarm until `deadline`, or until `stop` says so of an event.
    async fn drive(
        liar: &mut Swarm<Liar>,
        deadline: tokio::time::Instant,
        mut stop: impl FnMut(&SwarmEvent<LiarEvent>) -> bool,
    ) -> bool {
        while let Ok(event) = tokio::time::timeout_at(deadline, liar.select_next_some()).await {
            if stop(&event) {
                return true;
            }
        }
        false
    }

    /// Drives the liar's swarm for `d`, whatever happens meanwhile.
    async fn drive_for(liar: &mut Swarm<Liar>, d: Duration) {
        drive(liar, tokio::time::Instant::now() + d, |_| false).await;
    }

    /// What each test here sets up: a node, its TCP address, the third party and a liar (not
    /// yet connected to the node).
    struct Scene {
        node: Node,
        addr: Multiaddr,
        /// The third party's port on 127.0.0.2.
        port: u16,
        /// How many connections the third party accepted.
        knocks: Arc<AtomicUsize>,
        liar: Swarm<Liar>,
    }

    impl Scene {
        /// Starts node `n` in `dir`, the third party and the liar.
        async fn new(dir: &std::path::Path) -> Scene {
            let node = start(dir, "n", vec![]).await;
            let addr = tcp_address(&node).await.parse().unwrap();
            let (port, knocks) = third_party().await;
            Scene {
                node,
                addr,
                port,
                knocks,
                liar: liar(),
            }
        }

        /// How many connections the third party accepted, once the liar's swarm was driven for
        /// `settle` (time for any dial the node started meanwhile to arrive).
        async fn knocks_after(&mut self, settle: Duration) -> usize {
            drive_for(&mut self.liar, settle).await;
            self.knocks.load(Ordering::SeqCst)
        }
    }

    /// Connects the liar to the node until the node has its identify message; the node's peer
    /// id.
    async fn identify_to(liar: &mut Swarm<Liar>, addr: &Multiaddr) -> PeerId {
        // By address alone: the guard refuses dials of a peer id.
        let mut by_address = addr.clone();
        if let Some(libp2p::multiaddr::Protocol::P2p(_)) = by_address.iter().last() {
            by_address.pop();
        }
        liar.dial(by_address).unwrap();
        let mut node_peer = None;
        let sent = drive(
            liar,
            tokio::time::Instant::now() + Duration::from_secs(20),
            |event| match event {
                SwarmEvent::Behaviour(LiarEvent::Identify(identify::Event::Sent {
                    peer_id,
                    ..
                })) => {
                    node_peer = Some(*peer_id);
                    true
                }
                _ => false,
            },
        )
        .await;
        assert!(sent, "the liar's identify message was never sent");
        // Time for the node to read it.
        drive_for(liar, Duration::from_secs(1)).await;
        node_peer.unwrap()
    }

    /// A peer lists in identify the addresses it listens on. They go into the node's Kademlia
    /// routing table, which the node dials when it has few peers and hands to other nodes that
    /// ask Kademlia for peers. A peer that lists somebody else's address would make every node
    /// that met it dial there: the network as an amplifier aimed at a third party. The node
    /// keeps only the addresses on the IP address the peer's connection came from. Here a
    /// lying peer on 127.0.0.1 lists the third party beside its own address and leaves; the
    /// node, alone, dials it back at its own address and never at the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_cannot_make_the_node_dial_an_address_on_another_host() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Scene::new(dir.path()).await;
        let (port, me) = (s.port, *s.liar.local_peer_id());
        for lie in [
            format!("/ip4/127.0.0.2/tcp/{port}"),
            format!("/ip4/127.0.0.2/tcp/{port}/p2p/{me}"),
        ] {
            s.liar.add_external_address(lie.parse().unwrap());
        }
        // Alone once the liar left, the node dials the peers of its routing table: the liar,
        // at its own address. (Tried a few times: on a loaded machine the liar may leave
        // before the node has read its message.)
        let mut dialed_back = false;
        for _ in 0..3 {
            let node_peer = identify_to(&mut s.liar, &s.addr).await;
            let _ = s.liar.disconnect_peer_id(node_peer);
            dialed_back = drive(
                &mut s.liar,
                tokio::time::Instant::now() + Duration::from_secs(15),
                |event| {
                    matches!(event, SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. }
                        if *peer_id == node_peer && endpoint.is_listener())
                },
            )
            .await;
            if dialed_back {
                break;
            }
        }
        assert!(dialed_back, "the node never dialed the liar back");
        // Any dial of the other address went out at the same time.
        assert_eq!(
            s.knocks_after(Duration::from_secs(2)).await,
            0,
            "the node dialed the address on 127.0.0.2 that the liar listed"
        );
        s.node.stop().await.unwrap();
    }

    /// A Kademlia query asks peers for the peers they know, with their addresses, and dials
    /// those to ask them in turn. A lying peer answers with made-up peers, all at a third
    /// party's address. On an IP address that no peer of the node's routing table is on (here
    /// 127.0.0.2; counted per /24), the node dials a few times a minute at most. (Without the
    /// limit: 60 times within seconds.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_cannot_make_the_node_dial_a_third_party_through_its_kademlia_answers() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Scene::new(dir.path()).await;
        for _ in 0..40 {
            let third: Multiaddr = format!("/ip4/127.0.0.2/tcp/{}", s.port).parse().unwrap();
            s.liar
                .behaviour_mut()
                .kad
                .add_address(&PeerId::random(), third);
        }
        identify_to(&mut s.liar, &s.addr).await;
        // The node's Kademlia bootstraps on its own once it has a peer in its routing table,
        // and asks the liar.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut asked = false;
        while !asked && tokio::time::Instant::now() < deadline {
            let slice = tokio::time::Instant::now() + Duration::from_millis(50);
            drive(&mut s.liar, slice.min(deadline), |_| false).await;
            asked = s.knocks.load(Ordering::SeqCst) > 0;
        }
        assert!(asked, "the node never dialed a peer of the liar's answer");
        let got = s.knocks_after(Duration::from_secs(3)).await;
        assert!(
            got <= crabnet_core::network::UNVERIFIED_DIALS_PER_NETWORK_PER_MINUTE,
            "the node dialed the third party {got} times"
        );
        s.node.stop().await.unwrap();
    }
}
