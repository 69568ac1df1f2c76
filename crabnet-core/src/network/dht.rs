//! libp2p: the distributed engine. Gossipsub carries envelopes to every node (validated by the
//! node's trust boundary before they are forwarded), a request-response protocol carries sync
//! queries and their answers, Kademlia finds peers beyond the configured ones, identify tells
//! Kademlia which addresses to use, and mDNS (opt-in) finds peers on the local network. TCP
//! (noise + yamux), and QUIC: a node dials its peers' QUIC addresses, and listens on QUIC only
//! when a listen address says so (by default TCP alone: a QUIC endpoint costs an idle node of a
//! 100-node network 1.5 MB of memory and its keep-alive pings, BENCHMARKS.md session 21). The
//! standard protocols let other libp2p implementations join.
//!
//! When libp2p cannot start, or has no connected peer, and UDP settings are given, frames go
//! over UDP instead; the node gets a status event each time this changes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle};
// The patched gossipsub and Kademlia (vendor/*/PATCHED.md), the crates `libp2p` re-exports.
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, identify, identity, mdns, noise, request_response,
    tcp, yamux,
};
use libp2p_gossipsub as gossipsub;
use libp2p_kad as kad;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::addresses::{
    DialGuard, RoutingTable, add_to_routing_table, dialable_addresses, set_routing_addresses,
};
use super::{Acceptance, Handled, InboundFrame, Incoming, Transport, UdpConfig, UdpTransport};
use crate::envelope::MAX_ENVELOPE_BYTES;
use crate::error::{Error, ErrorKind, Result};
use crate::lock;

/// The gossipsub topic every Crabnet envelope is published on. Its messages are anonymous
/// (no libp2p signature, source or sequence number: the envelope carries its own signatures);
/// version 1 of the topic carried signed messages.
pub const TOPIC: &str = "crabnet/v2/envelopes";
/// The request-response protocol carrying sync queries, wants and their answers.
pub const SYNC_PROTOCOL: &str = "/crabnet/sync/1.0.0";
/// The Kademlia protocol name (a private DHT for Crabnet nodes).
pub const KAD_PROTOCOL: &str = "/crabnet/kad/1.0.0";

/// Default of [`DhtConfig::colocation_threshold`].
pub const DEFAULT_COLOCATION_THRESHOLD: u32 = 64;

/// How long a connection that no protocol uses stays open. Gossipsub keeps its mesh peers'
/// connections alive, and only those (vendor/libp2p-gossipsub/PATCHED.md); a connection that
/// a Kademlia query, a routing-table dial or a newcomer's dial to a hub opened closes this
/// long after its last use, so that a node holds its mesh and little else (libp2p's examples
/// use 60 s; 30 s frees a network's formation sooner).
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Fewer connected peers (and dials under way) than this, gossipsub's `mesh_n_low` below which
/// it grafts more peers, and the node dials peers of its Kademlia routing table, up to
/// [`DIAL_TARGET`], so that the mesh has peers to graft when some of its own leave. At or above
/// it the mesh is content and a dialed peer would only idle out again.
const MESH_FLOOR: usize = 5;
/// Once the node is connected to this many peers fewer than the most it was connected to since
/// it last did so, the libp2p task reports [`Incoming::Closed`]: what closed connections used
/// stays in glibc's arenas until the node releases it (`crate::heap`).
const RELEASE_AFTER_CLOSED: usize = 8;
/// How often a node checks whether it has too few connections (and whether it has none).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// How long a node without any connection waits before it dials its configured peers (and
/// bootstraps Kademlia) again, and again after each such wait while it stays alone.
const REDIAL_EVERY: Duration = Duration::from_secs(10);

/// libp2p settings (section `[dht]` of the CLI's view; embedders fill it directly). Addresses
/// are IP addresses: one with a host name is refused at start (no DNS transport is built in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DhtConfig {
    /// Multiaddresses to listen on (default TCP on 127.0.0.1, a free port; add
    /// `/ip4/.../udp/PORT/quic-v1` to listen on QUIC too).
    pub listen: Vec<String>,
    /// Multiaddresses to dial at start (with or without a `/p2p/<peer id>` suffix), and again
    /// while the node has no connection.
    pub peers: Vec<String>,
    /// Kademlia bootstrap nodes: multiaddresses ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<String>,
    /// Announce and discover peers with mDNS on the local network (off by default).
    pub mdns: bool,
    /// UDP settings to fall back to when libp2p cannot start or has no peers.
    pub udp_fallback: Option<UdpConfig>,
    /// How many peers may share one IP address before gossipsub's IP-colocation penalty
    /// applies to them (a Sybil defence). Default 64, so that the nodes of one host, cluster or
    /// NAT can form a network; loopback and `colocation_whitelist` are always exempt.
    pub colocation_threshold: u32,
    /// IP addresses exempt from the colocation penalty besides loopback (e.g. a NAT's public
    /// address that many honest nodes share).
    pub colocation_whitelist: Vec<std::net::IpAddr>,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            peers: Vec::new(),
            bootstrap: Vec::new(),
            mdns: false,
            udp_fallback: None,
            colocation_threshold: DEFAULT_COLOCATION_THRESHOLD,
            colocation_whitelist: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SyncRequest(#[serde(with = "serde_bytes")] Vec<u8>);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SyncResponse {
    frames: Vec<serde_bytes::ByteBuf>,
}

/// The node's libp2p behaviours. The swarm runs them inside a [`DialGuard`], which checks
/// the addresses they offer for a dial.
#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    sync: request_response::cbor::Behaviour<SyncRequest, SyncResponse>,
}

impl RoutingTable for Behaviour {
    fn kademlia(&mut self) -> &mut kad::Behaviour<kad::store::MemoryStore> {
        &mut self.kad
    }
}

/// The gossipsub heartbeat (mesh upkeep and IHAVE gossip): libp2p's default, one second (it
/// was 500 ms here; an idle node wakes for each, issue 13).
const GOSSIP_HEARTBEAT: Duration = Duration::from_secs(1);

/// How many gossipsub heartbeats a message stays in the message cache (15 s), so that it can
/// still be forwarded after a slow validation and served to IWANT requests.
const GOSSIP_HISTORY_HEARTBEATS: usize = 15;

/// QUIC keep-alive: a ping on an otherwise silent connection every 15 s, and a connection
/// silent for 40 s is closed (libp2p's defaults, 5 s and 10 s, cost an idle node with a dozen
/// connections five pings and their acknowledgements a second; issue 13). 15 s still holds
/// the mappings of common NATs (30 s and more for UDP).
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(15);
const QUIC_IDLE_TIMEOUT_MS: u32 = 40_000;

/// How often a frame for one peer ([`Transport::send_to_announced`]: a hello for a new peer) is
/// sent again when its request was lost (the connection closed before the response; one of
/// two connections a simultaneous dial made, say), and the first delay (doubling). It is sent
/// only while the node is still connected to the peer: a request would otherwise dial it.
/// Without it a lost answer left a pair of nodes
/// unknown to each other until the next periodic hello (30 s). A request that timed out is not
/// sent again: the peer has it queued, and a copy would only lengthen its queue.
const UNICAST_RETRIES: u32 = 3;
const UNICAST_RETRY_DELAY: Duration = Duration::from_millis(500);

/// How many connected peers get each sync query (chosen at random each time; over UDP, the
/// configured peers in turn). Anti-entropy with a few random peers per interval reaches
/// everyone in O(log n) intervals, while a query to every peer would cost each node work in
/// proportion to the network's size.
pub const SYNC_FANOUT: usize = 3;

/// Every this many sync queries, one of the [`SYNC_FANOUT`] peers is a peer of the routing table
/// outside the gossip mesh, connected or not (the query dials it; the connection idles out
/// afterwards): a node's connections are its mesh, and two parts of a network whose meshes do
/// not meet would otherwise never reconcile. Once a minute at the default 10 s sync interval.
const SYNC_AFIELD_EVERY: u64 = 6;

/// How many connected peers a node dials up to: when Kademlia adds a peer to its routing table
/// while the node has fewer, and when it has fewer than [`MESH_FLOOR`] (issue 13). Gossipsub's
/// mesh needs 5 to 12 and Kademlia none beyond its queries: a dial per discovered peer made
/// every node hold a connection to nearly every other, each with its gossipsub, identify and
/// QUIC upkeep. Peers that dial this node, and the connections Kademlia's own queries open, are
/// not limited; those outside the gossip mesh close when idle ([`IDLE_CONNECTION_TIMEOUT`]).
pub const DIAL_TARGET: usize = 12;

enum Command {
    Broadcast(Vec<u8>),
    Sync(Vec<u8>),
    /// A frame for one peer, over the request-response protocol, sent only while the node is
    /// connected to it (a request never dials).
    SendTo {
        peer: PeerId,
        frame: Vec<u8>,
    },
}

/// Up to `k` of `items`, chosen uniformly at random (a partial Fisher-Yates shuffle).
fn choose<T>(mut items: Vec<T>, k: usize) -> Vec<T> {
    let k = k.min(items.len());
    for i in 0..k {
        let r = u64::from_le_bytes(crate::clock::random_bytes());
        let j = i + (r % (items.len() - i) as u64) as usize;
        items.swap(i, j);
    }
    items.truncate(k);
    items
}

/// The peer id in announced addresses (`.../p2p/<peer id>`), when they name exactly one peer.
/// The network addresses before the suffix are not used: anyone can announce anyone's
/// address, and dialing it on a hello's word would let one forged hello make every node that
/// receives it connect to a machine of the sender's choice.
pub(crate) fn peer_of(addresses: &[String]) -> Option<PeerId> {
    let mut peer = None;
    for a in addresses {
        let Ok(mut addr) = a.parse::<Multiaddr>() else {
            continue;
        };
        let Some(libp2p::multiaddr::Protocol::P2p(id)) = addr.pop() else {
            continue;
        };
        if peer.is_some_and(|p| p != id) {
            return None;
        }
        peer = Some(id);
    }
    peer
}

/// The libp2p transport (backend name `dht`).
pub struct DhtTransport {
    commands: mpsc::UnboundedSender<Command>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    shared: Arc<Shared>,
    udp: Option<UdpTransport>,
    using_udp: bool,
}

#[derive(Default)]
struct Shared {
    addresses: Mutex<Vec<String>>,
    connected: Mutex<HashSet<PeerId>>,
    peer_id: Mutex<Option<PeerId>>,
}

impl std::fmt::Debug for DhtTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhtTransport")
            .field("peer_id", &self.peer_id())
            .finish_non_exhaustive()
    }
}

fn net_err(what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Network, what.to_string())
}

fn parse_addr(text: &str) -> Result<Multiaddr> {
    let addr: Multiaddr = text
        .parse()
        .map_err(|e| net_err(format!("invalid multiaddress {text:?}: {e}")))?;
    use libp2p::multiaddr::Protocol;
    if addr.iter().any(|p| {
        matches!(
            p,
            Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) | Protocol::Dnsaddr(_)
        )
    }) {
        return Err(net_err(format!(
            "invalid multiaddress {text:?}: host names are not resolved here (this build of \
             libp2p has no DNS transport); give an IP address (/ip4/... or /ip6/...)"
        )));
    }
    Ok(addr)
}

/// The secret of a node's libp2p key, derived from its Ed25519 seed (a separate key, so that
/// transport and envelope signatures never share one).
pub fn libp2p_secret(ed25519_seed: &[u8; 32]) -> zeroize::Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(b"crabnet/v1/libp2p-key");
    h.update(ed25519_seed);
    zeroize::Zeroizing::new(h.finalize().into())
}

/// The libp2p key pair for a secret from [`libp2p_secret`].
pub fn libp2p_keypair(secret: &[u8; 32]) -> identity::Keypair {
    let mut copy = zeroize::Zeroizing::new(*secret);
    identity::Keypair::ed25519_from_bytes(&mut *copy).expect("32 bytes are a key")
}

impl DhtTransport {
    /// Starts libp2p with `key`. Must be called inside a tokio runtime. When libp2p cannot
    /// start and `config.udp_fallback` is set, returns a UDP transport that says so in its
    /// first status report.
    pub fn start(config: DhtConfig, key: identity::Keypair) -> Result<Box<dyn Transport>> {
        match Self::start_libp2p(&config, key) {
            Ok(t) => Ok(Box::new(t)),
            Err(e) => match &config.udp_fallback {
                Some(udp) => {
                    let udp = UdpTransport::bind(udp.clone())?;
                    Ok(Box::new(Announced {
                        inner: udp,
                        notice: Some(format!("libp2p could not start ({e}); using UDP")),
                    }))
                }
                None => Err(e),
            },
        }
    }

    fn start_libp2p(config: &DhtConfig, key: identity::Keypair) -> Result<DhtTransport> {
        let peer_id = key.public().to_peer_id();
        let mdns_enabled = config.mdns;
        let colocation_threshold = f64::from(config.colocation_threshold.max(1));
        let mut colocation_whitelist: std::collections::HashSet<std::net::IpAddr> = [
            std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ]
        .into();
        colocation_whitelist.extend(config.colocation_whitelist.iter().copied());
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| net_err(format!("cannot set up TCP: {e}")))?
            .with_quic_config(|mut c| {
                c.keep_alive_interval = QUIC_KEEP_ALIVE;
                c.max_idle_timeout = QUIC_IDLE_TIMEOUT_MS;
                c
            })
            .with_behaviour(|key| {
                let gossip_config = gossipsub::ConfigBuilder::default()
                    // Anonymous messages: every envelope is signed by its author's node keys and
                    // checked by the trust boundary before it is forwarded, so a libp2p
                    // signature would only repeat that work. gossipsub checks a message's
                    // signature on every copy it receives, duplicates included: in an idle
                    // network of 100 nodes this was 16% of each node's CPU (issue 13).
                    .validation_mode(gossipsub::ValidationMode::Anonymous)
                    .validate_messages()
                    .max_transmit_size(MAX_ENVELOPE_BYTES + 1024)
                    .heartbeat_interval(GOSSIP_HEARTBEAT)
                    // A message is forwarded only after the node validated it, and only while
                    // it is still in the message cache: the default 5 heartbeats (2.5 s at
                    // 500 ms) were shorter than the validation queue of a busy node in a
                    // network of a hundred on one machine ("Message not in cache. Ignoring
                    // forwarding"), and hellos then never reached some nodes. 15 s.
                    .history_length(GOSSIP_HISTORY_HEARTBEATS)
                    // Content ids: the same envelope relayed by anyone is one message.
                    .message_id_fn(|m: &gossipsub::Message| {
                        gossipsub::MessageId::from(Sha256::digest(&m.data)[..20].to_vec())
                    })
                    .build()
                    .map_err(|e| format!("gossipsub config: {e}"))?;
                let mut gossipsub = gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Anonymous,
                    gossip_config,
                )?;
                let mut params = gossipsub::PeerScoreParams {
                    ip_colocation_factor_threshold: colocation_threshold,
                    ip_colocation_factor_whitelist: colocation_whitelist,
                    ..Default::default()
                };
                let topic_params = gossipsub::TopicScoreParams {
                    topic_weight: 1.0,
                    time_in_mesh_weight: 0.0,
                    time_in_mesh_quantum: Duration::from_secs(1),
                    first_message_deliveries_weight: 0.0,
                    mesh_message_deliveries_weight: 0.0,
                    mesh_failure_penalty_weight: 0.0,
                    invalid_message_deliveries_weight: -10.0,
                    invalid_message_deliveries_decay: 0.5,
                    ..Default::default()
                };
                params
                    .topics
                    .insert(gossipsub::IdentTopic::new(TOPIC).hash(), topic_params);
                gossipsub.with_peer_score(params, gossipsub::PeerScoreThresholds::default())?;
                let peer = key.public().to_peer_id();
                // Peers enter the routing table from identify (and mDNS, and the configured
                // bootstrap nodes; [`add_to_routing_table`]), not on every connection.
                let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
                kad_config.set_kbucket_inserts(kad::BucketInserts::Manual);
                let mut kad = kad::Behaviour::with_config(
                    peer,
                    kad::store::MemoryStore::new(peer),
                    kad_config,
                );
                kad.set_mode(Some(kad::Mode::Server));
                // No cache of the addresses peers list: identify would dial them as they are,
                // and hand them to request-response, which dials them too. They go into the
                // routing table checked (`dialable_addresses`).
                let identify = identify::Behaviour::new(
                    identify::Config::new("/crabnet/1.0.0".into(), key.public()).with_cache_size(0),
                );
                let mdns = if mdns_enabled {
                    Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer)?)
                } else {
                    None
                };
                let sync = request_response::cbor::Behaviour::new(
                    [(
                        StreamProtocol::new(SYNC_PROTOCOL),
                        request_response::ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(30)),
                );
                Ok(DialGuard::new(Behaviour {
                    gossipsub,
                    kad,
                    identify,
                    mdns: Toggle::from(mdns),
                    sync,
                }))
            })
            .map_err(|e| net_err(format!("cannot set up libp2p: {e}")))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
            .build();

        let topic = gossipsub::IdentTopic::new(TOPIC);
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map_err(|e| net_err(format!("cannot subscribe: {e}")))?;
        for addr in &config.listen {
            swarm.listen_on(parse_addr(addr)?).map_err(|e| {
                let cause = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                net_err(format!("cannot listen on {addr}: {e}{cause}"))
            })?;
        }
        let mut bootstrap = Vec::with_capacity(config.bootstrap.len());
        for addr in &config.bootstrap {
            let addr = parse_addr(addr)?;
            let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
                return Err(net_err(format!(
                    "bootstrap address {addr} must end with /p2p/<peer id>"
                )));
            };
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            bootstrap.push((peer, addr));
        }
        if !bootstrap.is_empty() {
            // No known peers is reported as an error; the peers may come later.
            let _ = swarm.behaviour_mut().kad.bootstrap();
        }
        let peers: Vec<Multiaddr> = config
            .peers
            .iter()
            .map(|a| parse_addr(a))
            .collect::<Result<_>>()?;
        for addr in &peers {
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!("cannot dial {addr}: {e}");
            }
        }
        let udp = config
            .udp_fallback
            .clone()
            .map(UdpTransport::bind)
            .transpose()?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        *lock(&shared.peer_id) = Some(peer_id);
        let _ = incoming_tx.send(Incoming::Status(format!("libp2p started as {peer_id}")));
        let upkeep = Upkeep { peers, bootstrap };
        tokio::spawn(run(
            swarm,
            topic,
            command_rx,
            incoming_tx,
            shared.clone(),
            upkeep,
        ));
        Ok(DhtTransport {
            commands,
            incoming,
            shared,
            udp,
            using_udp: false,
        })
    }

    /// This node's libp2p peer id.
    pub fn peer_id(&self) -> Option<PeerId> {
        *lock(&self.shared.peer_id)
    }

    /// Number of currently connected libp2p peers.
    pub fn connected_peers(&self) -> usize {
        lock(&self.shared.connected).len()
    }

    /// Listen addresses with the `/p2p/<peer id>` suffix, as other nodes dial them.
    pub fn listen_addresses(&self) -> Vec<String> {
        lock(&self.shared.addresses).clone()
    }
}

/// Stops the thread that runs libp2p's timers made outside any Tokio runtime (the global helper
/// thread of futures-timer, patched: `vendor/futures-timer/PATCHED.md`) if no such timer exists
/// any more, and waits for it to end; the next such timer starts it again. Returns whether the
/// thread is gone (`false`: such a timer still exists).
///
/// A libp2p node's timers are made on its runtime and run on it, so the thread normally never
/// starts. [`crate::BlockingNode`] calls this when its runtime is dropped. Hosts that run
/// [`Node`]s with the libp2p transport on a runtime of their own may call it after dropping
/// that runtime when they need the process to end without threads of Crabnet's (for example
/// under valgrind).
///
/// [`Node`]: crate::node::Node
pub fn stop_timer_thread() -> bool {
    let stopped = futures_timer::stop_global_thread();
    if !stopped {
        tracing::debug!("libp2p timers still exist; their thread keeps running");
    }
    stopped
}

impl Transport for DhtTransport {
    fn name(&self) -> &str {
        "dht"
    }

    /// What the UDP side (fallback) lost; libp2p's streams lose nothing unnoticed.
    fn dropped(&self) -> u64 {
        self.udp.as_ref().map_or(0, |u| u.dropped())
    }

    fn max_frame_bytes(&self) -> usize {
        match &self.udp {
            Some(u) => u.max_frame_bytes(),
            None => MAX_ENVELOPE_BYTES,
        }
    }

    fn local_addresses(&self) -> Vec<String> {
        let mut out = self.listen_addresses();
        if let Some(u) = &self.udp {
            out.extend(u.local_addresses());
        }
        out
    }

    fn broadcast(&mut self, frame: &[u8]) -> Result<()> {
        super::check_frame_size(self, frame)?;
        self.commands
            .send(Command::Broadcast(frame.to_vec()))
            .map_err(|_| net_err("the libp2p task has stopped"))?;
        self.fallback(frame)
    }

    fn send_to_announced(&mut self, addresses: &[String], frame: &[u8]) -> Result<()> {
        let Some(peer) = peer_of(addresses) else {
            return self.broadcast(frame);
        };
        super::check_frame_size(self, frame)?;
        self.commands
            .send(Command::SendTo {
                peer,
                frame: frame.to_vec(),
            })
            .map_err(|_| net_err("the libp2p task has stopped"))?;
        self.fallback(frame)
    }

    fn answer_hello(&mut self, from: &str, announced: &[String], frame: &[u8]) -> Result<()> {
        if let Some(peer) = peer_of(announced)
            && lock(&self.shared.connected).contains(&peer)
        {
            return self.send_to_peer(peer, frame);
        }
        match &mut self.udp {
            Some(udp) if from.starts_with("udp:") => udp.send_to(from, frame),
            // Relayed by gossip from a peer that is not the hello's author: the author hears
            // from this node by gossip (its hellos) and sync.
            _ => Err(net_err(format!(
                "not connected to the peer that announced {announced:?}"
            ))),
        }
    }

    fn sync(&mut self, frame: &[u8]) -> Result<()> {
        self.commands
            .send(Command::Sync(frame.to_vec()))
            .map_err(|_| net_err("the libp2p task has stopped"))?;
        self.sync_fallback(frame)
    }

    fn send_to(&mut self, to: &str, frame: &[u8]) -> Result<()> {
        // Answers to a request travel back in its response; what a node sends after a
        // response (the next round of a sync exchange) is a new request to that peer alone.
        if let Some(peer) = to.strip_prefix("libp2p:") {
            let peer: PeerId = peer
                .parse()
                .map_err(|_| net_err(format!("cannot send to {to} alone")))?;
            return self.send_to_peer(peer, frame);
        }
        match &mut self.udp {
            Some(udp) if to.starts_with("udp:") => udp.send_to(to, frame),
            _ => Err(net_err(format!("cannot send to {to} alone"))),
        }
    }

    fn source_verified(&self, from: &str) -> bool {
        // A libp2p peer id is authenticated by the connection's handshake.
        from.starts_with("libp2p:") || self.udp.as_ref().is_some_and(|u| u.source_verified(from))
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        if let Poll::Ready(item) = self.incoming.poll_recv(cx) {
            return Poll::Ready(item);
        }
        if let Some(udp) = &mut self.udp
            && let Poll::Ready(Some(item)) = udp.poll_recv(cx)
        {
            return Poll::Ready(Some(item));
        }
        let no_peers = self.connected_peers() == 0;
        if self.udp.is_some() && no_peers != self.using_udp {
            self.using_udp = no_peers;
            let detail = if no_peers {
                "no libp2p peers connected; sending over UDP as well"
            } else {
                "libp2p peers connected; UDP fallback idle"
            };
            return Poll::Ready(Some(Incoming::Status(detail.into())));
        }
        Poll::Pending
    }
}

impl DhtTransport {
    /// Sends `frame` to one connected libp2p peer alone (request-response).
    fn send_to_peer(&mut self, peer: PeerId, frame: &[u8]) -> Result<()> {
        super::check_frame_size(self, frame)?;
        self.commands
            .send(Command::SendTo {
                peer,
                frame: frame.to_vec(),
            })
            .map_err(|_| net_err("the libp2p task has stopped"))
    }

    fn fallback(&mut self, frame: &[u8]) -> Result<()> {
        if self.connected_peers() == 0
            && let Some(udp) = &mut self.udp
        {
            udp.broadcast(frame)?;
        }
        Ok(())
    }

    /// A sync query over the UDP fallback (while no libp2p peer is connected) goes to a few
    /// of its peers, as over UDP alone ([`UdpTransport::sync`]).
    fn sync_fallback(&mut self, frame: &[u8]) -> Result<()> {
        if self.connected_peers() == 0
            && let Some(udp) = &mut self.udp
        {
            udp.sync(frame)?;
        }
        Ok(())
    }
}

/// A transport whose first report is a notice (the UDP fallback when libp2p failed).
struct Announced<T> {
    inner: T,
    notice: Option<String>,
}

impl<T: Transport> Transport for Announced<T> {
    super::delegate_transport!(
        inner: name,
        max_frame_bytes,
        local_addresses,
        broadcast,
        send_to_announced,
        answer_hello,
        send_to,
        source_verified,
        dropped,
    );
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        if let Some(n) = self.notice.take() {
            return Poll::Ready(Some(Incoming::Status(n)));
        }
        self.inner.poll_recv(cx)
    }
}

type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Done>> + Send>>;

enum Done {
    Gossip {
        id: gossipsub::MessageId,
        source: PeerId,
        handled: Handled,
    },
    Request {
        channel: request_response::ResponseChannel<SyncResponse>,
        handled: Handled,
    },
    /// A frame for one peer whose request failed, due to be sent again.
    Resend {
        peer: PeerId,
        frame: Vec<u8>,
        attempt: u32,
    },
}

fn ask(
    incoming: &mpsc::UnboundedSender<Incoming>,
    bytes: Vec<u8>,
    from: String,
) -> Option<oneshot::Receiver<Handled>> {
    let (tx, rx) = oneshot::channel();
    let frame = InboundFrame {
        bytes,
        from,
        ack: Some(tx),
    };
    incoming.send(Incoming::Frame(frame)).ok().map(|_| rx)
}

/// What the libp2p task does on its own: keep enough peers for the gossip mesh, and find the
/// network again when it lost every connection.
struct Upkeep {
    /// [`DhtConfig::peers`], dialed again while the node has no connection.
    peers: Vec<Multiaddr>,
    /// [`DhtConfig::bootstrap`]'s nodes: put back into the routing table (a failed dial takes a
    /// peer out of it) before Kademlia bootstraps again while the node has no connection.
    bootstrap: Vec<(PeerId, Multiaddr)>,
}

/// The peers to dial when the node is connected to fewer than [`MESH_FLOOR`] of them, counting
/// the `dialing` under way: up to [`DIAL_TARGET`] in all, chosen at random from the routing
/// table's peers it is not connected to.
fn peers_to_dial<P: Copy + Eq + std::hash::Hash>(
    table: Vec<P>,
    connected: &HashSet<P>,
    dialing: usize,
) -> Vec<P> {
    let have = connected.len().saturating_add(dialing);
    if have >= MESH_FLOOR {
        return Vec::new();
    }
    let unconnected = table
        .into_iter()
        .filter(|p| !connected.contains(p))
        .collect();
    choose(unconnected, DIAL_TARGET - have)
}

/// The peers a sync query goes to: [`SYNC_FANOUT`] of `near` (the mesh, or the connected peers
/// while the mesh is empty) chosen at random, and when `afield`, one of them replaced by a
/// random peer of the routing `table` that is not in `near`.
fn sync_targets<P: Copy + Eq + std::hash::Hash>(
    near: Vec<P>,
    table: Vec<P>,
    afield: bool,
) -> Vec<P> {
    let mut out = choose(near.clone(), SYNC_FANOUT);
    if afield {
        let near: HashSet<P> = near.into_iter().collect();
        let far: Vec<P> = table.into_iter().filter(|p| !near.contains(p)).collect();
        if let Some(peer) = choose(far, 1).pop() {
            if out.len() >= SYNC_FANOUT {
                out.pop();
            }
            out.push(peer);
        }
    }
    out
}

/// Whether enough connections closed for a release of the heap: the node is connected to
/// `held` peers, and was connected to at most `most_held` since it last said so.
fn connections_closed(most_held: usize, held: usize) -> bool {
    most_held.saturating_sub(held) >= RELEASE_AFTER_CLOSED
}

/// The peers in Kademlia's routing table.
fn routing_table_peers(kad: &mut kad::Behaviour<kad::store::MemoryStore>) -> Vec<PeerId> {
    kad.kbuckets()
        .flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
        .collect()
}

/// Stops showing `gone` (listen addresses, without the `/p2p/` suffix) unless another of the
/// swarm's listeners still has it (TCP listeners share ports: a wildcard one and one on a
/// specific IP may list the same address), and reports each one no longer shown, so that the
/// node refreshes what it shows and announces.
fn forget_listen_addresses(
    swarm: &Swarm<DialGuard<Behaviour>>,
    shared: &Shared,
    incoming: &mpsc::UnboundedSender<Incoming>,
    gone: impl IntoIterator<Item = Multiaddr>,
) {
    let local = *swarm.local_peer_id();
    for address in gone {
        if swarm.listeners().any(|a| *a == address) {
            continue;
        }
        let full = address.with_p2p(local).unwrap_or_else(|a| a).to_string();
        let removed = {
            let mut addresses = lock(&shared.addresses);
            let before = addresses.len();
            addresses.retain(|a| *a != full);
            addresses.len() != before
        };
        if removed {
            let _ = incoming.send(Incoming::Status(format!("no longer listening on {full}")));
        }
    }
}

async fn run(
    mut swarm: Swarm<DialGuard<Behaviour>>,
    topic: gossipsub::IdentTopic,
    mut commands: mpsc::UnboundedReceiver<Command>,
    incoming: mpsc::UnboundedSender<Incoming>,
    shared: Arc<Shared>,
    upkeep: Upkeep,
) {
    let mut pending: FuturesUnordered<Pending> = FuturesUnordered::new();
    // Requests carrying a frame for one peer, until answered: (peer, frame, attempt).
    let mut unicast: HashMap<request_response::OutboundRequestId, (PeerId, Vec<u8>, u32)> =
        HashMap::new();
    // The remote address of every open connection, and whether the node dialed it: a peer's
    // listed addresses are checked against the one its identify message came over.
    let mut remotes: HashMap<libp2p::swarm::ConnectionId, (Multiaddr, bool)> = HashMap::new();
    let kad_protocol = StreamProtocol::new(KAD_PROTOCOL);
    // Since when the node has had no connection (the configured peers were dialed at start).
    let mut alone_since = Some(Instant::now());
    // The most peers connected since the node was last told that connections closed.
    let mut most_held = 0;
    // Sync queries sent, for the one afield every SYNC_AFIELD_EVERY.
    let mut sync_rounds: u64 = 0;
    let mut upkeep_tick = tokio::time::interval(UPKEEP_EVERY);
    upkeep_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = upkeep_tick.tick() => {
                let now = Instant::now();
                if let Some(since) = alone_since
                    && now.saturating_duration_since(since) >= REDIAL_EVERY
                {
                    alone_since = Some(now);
                    for addr in &upkeep.peers {
                        if let Err(e) = swarm.dial(addr.clone()) {
                            tracing::debug!("cannot dial {addr} again: {e}");
                        }
                    }
                    if !upkeep.bootstrap.is_empty() {
                        let kad = &mut swarm.behaviour_mut().kad;
                        for (peer, addr) in &upkeep.bootstrap {
                            add_to_routing_table(kad, peer, addr.clone());
                        }
                        let _ = kad.bootstrap();
                    }
                }
                let connected = lock(&shared.connected).clone();
                if connections_closed(most_held, connected.len()) {
                    most_held = connected.len();
                    let _ = incoming.send(Incoming::Closed);
                }
                let dialing = swarm.network_info().connection_counters().num_pending_outgoing() as usize;
                if connected.len().saturating_add(dialing) < MESH_FLOOR {
                    let table = routing_table_peers(&mut swarm.behaviour_mut().kad);
                    for peer in peers_to_dial(table, &connected, dialing) {
                        let _ = swarm.dial(peer);
                    }
                }
            }
            command = commands.recv() => match command {
                // The node dropped its transport: shut down.
                None => return,
                Some(Command::Broadcast(frame)) => {
                    match swarm.behaviour_mut().gossipsub.publish(topic.clone(), frame) {
                        Ok(_) | Err(gossipsub::PublishError::Duplicate) => {}
                        // Nobody to send to yet; sync delivers it later.
                        Err(e) => tracing::debug!("gossipsub publish: {e}"),
                    }
                }
                Some(Command::Sync(frame)) => {
                    // Peers of the gossip mesh (while it has any): the connections that stay
                    // open, so that a sync query does not keep another one from closing; now
                    // and then one peer afield (SYNC_AFIELD_EVERY).
                    let mut peers: Vec<PeerId> =
                        swarm.behaviour().gossipsub.mesh_peers(&topic.hash()).copied().collect();
                    if peers.is_empty() {
                        peers = lock(&shared.connected).iter().copied().collect();
                    }
                    sync_rounds = sync_rounds.wrapping_add(1);
                    let afield = sync_rounds.is_multiple_of(SYNC_AFIELD_EVERY);
                    let table = if afield {
                        routing_table_peers(&mut swarm.behaviour_mut().kad)
                    } else {
                        Vec::new()
                    };
                    for peer in sync_targets(peers, table, afield) {
                        swarm.behaviour_mut().sync.send_request(&peer, SyncRequest(frame.clone()));
                    }
                }
                // A frame for one peer goes over a connection that exists: a request to a peer
                // without one would dial it, and keep a connection open that the node let idle
                // out.
                Some(Command::SendTo { peer, frame }) => {
                    if peer != *swarm.local_peer_id() && swarm.is_connected(&peer) {
                        let id = swarm.behaviour_mut().sync.send_request(&peer, SyncRequest(frame.clone()));
                        unicast.insert(id, (peer, frame, 0));
                    } else {
                        tracing::debug!("not sending a frame to {peer}: not connected");
                    }
                }
            },
            Some(done) = pending.next(), if !pending.is_empty() => match done {
                Some(Done::Gossip { id, source, handled }) => {
                    let acceptance = match handled.acceptance {
                        Acceptance::Accept => gossipsub::MessageAcceptance::Accept,
                        Acceptance::Ignore => gossipsub::MessageAcceptance::Ignore,
                        Acceptance::Reject => gossipsub::MessageAcceptance::Reject,
                    };
                    swarm.behaviour_mut().gossipsub.report_message_validation_result(&id, &source, acceptance);
                    // Sync answers go only to a requester, over request-response; a query
                    // gossiped to everyone is not answered to everyone.
                    if !handled.replies.is_empty() {
                        tracing::debug!("not answering a sync envelope received by gossip");
                    }
                }
                Some(Done::Request { channel, handled }) => {
                    let frames = handled.replies.into_iter().map(serde_bytes::ByteBuf::from).collect();
                    let _ = swarm.behaviour_mut().sync.send_response(channel, SyncResponse { frames });
                }
                Some(Done::Resend { peer, frame, attempt }) if swarm.is_connected(&peer) => {
                    let id = swarm.behaviour_mut().sync.send_request(&peer, SyncRequest(frame.clone()));
                    unicast.insert(id, (peer, frame, attempt));
                }
                Some(Done::Resend { peer, .. }) => {
                    tracing::debug!("not sending a frame to {peer} again: not connected");
                }
                None => {}
            },
            event = swarm.select_next_some() => {
                if let SwarmEvent::ConnectionClosed { connection_id, .. } = &event {
                    remotes.remove(connection_id);
                }
                match event {
                    // A peer that cannot be reached leaves the routing table (it comes back
                    // through identify when it connects again): with buckets filled by identify
                    // alone, a dead entry would otherwise stay for good and be dialed again and
                    // again.
                    SwarmEvent::OutgoingConnectionError {
                        peer_id: Some(peer),
                        error:
                            libp2p::swarm::DialError::Transport(_)
                            | libp2p::swarm::DialError::WrongPeerId { .. }
                            | libp2p::swarm::DialError::NoAddresses,
                        ..
                    } if !swarm.is_connected(&peer) => {
                        swarm.behaviour_mut().kad.remove_peer(&peer);
                    }
                    SwarmEvent::NewListenAddr { address, .. } => {
                        let full = address.with_p2p(*swarm.local_peer_id()).unwrap_or_else(|a| a);
                        let full = full.to_string();
                        let added = {
                            let mut addresses = lock(&shared.addresses);
                            let new = !addresses.contains(&full);
                            if new {
                                addresses.push(full.clone());
                            }
                            new
                        };
                        // The node shows its addresses from now on, not from its next hello.
                        if added {
                            let _ = incoming.send(Incoming::Status(format!("listening on {full}")));
                        }
                    }
                    // An address gone from its interface (a network left, a lease ended), or a
                    // listener closed: no longer shown, nor announced in hellos.
                    SwarmEvent::ExpiredListenAddr { address, .. } => {
                        forget_listen_addresses(&swarm, &shared, &incoming, [address]);
                    }
                    SwarmEvent::ListenerClosed { addresses, .. } => {
                        forget_listen_addresses(&swarm, &shared, &incoming, addresses);
                    }
                    SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                        remotes.insert(connection_id, (endpoint.get_remote_address().clone(), endpoint.is_dialer()));
                        let first = {
                            let mut connected = lock(&shared.connected);
                            let first = connected.insert(peer_id);
                            most_held = most_held.max(connected.len());
                            first
                        };
                        if first {
                            alone_since = None;
                            let _ = incoming.send(Incoming::Status(format!("connected to libp2p peer {peer_id}")));
                            let _ = incoming.send(Incoming::Connected(vec![format!("/p2p/{peer_id}")]));
                        }
                    }
                    SwarmEvent::ConnectionClosed { peer_id, num_established: 0, cause, .. }
                        if lock(&shared.connected).remove(&peer_id) =>
                    {
                        if lock(&shared.connected).is_empty() {
                            alone_since = Some(Instant::now());
                        }
                        let why = cause.map(|c| format!(": {c}")).unwrap_or_default();
                        let _ = incoming.send(Incoming::Status(format!("disconnected from libp2p peer {peer_id}{why}")));
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                        propagation_source,
                        message_id,
                        message,
                    })) => {
                        if let Some(rx) = ask(&incoming, message.data, format!("libp2p:{propagation_source}")) {
                            pending.push(Box::pin(async move {
                                rx.await.ok().map(|handled| Done::Gossip { id: message_id, source: propagation_source, handled })
                            }));
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message { peer, message, .. })) => match message {
                        request_response::Message::Request { request, channel, .. } => {
                            if let Some(rx) = ask(&incoming, request.0, format!("libp2p:{peer}")) {
                                pending.push(Box::pin(async move {
                                    rx.await.ok().map(|handled| Done::Request { channel, handled })
                                }));
                            }
                        }
                        request_response::Message::Response { request_id, response } => {
                            unicast.remove(&request_id);
                            for frame in response.frames {
                                let _ = incoming.send(Incoming::Frame(InboundFrame::new(frame.into_vec(), format!("libp2p:{peer}"))));
                            }
                        }
                    },
                    SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::OutboundFailure { peer, request_id, error, .. })) => {
                        // A sync query is sent again on the next interval anyway; a frame for one
                        // peer (a hello it waits for) whose request was lost is sent again a few
                        // times, later each time. If the peer did get it, a copy costs it a lookup.
                        let lost = matches!(
                            error,
                            request_response::OutboundFailure::DialFailure
                                | request_response::OutboundFailure::ConnectionClosed
                        );
                        match unicast.remove(&request_id) {
                            Some((peer, frame, attempt)) if lost && attempt < UNICAST_RETRIES => {
                                tracing::debug!("request to {peer} failed ({error}), sending it again");
                                let delay = UNICAST_RETRY_DELAY * 2u32.pow(attempt);
                                pending.push(Box::pin(async move {
                                    tokio::time::sleep(delay).await;
                                    Some(Done::Resend { peer, frame, attempt: attempt + 1 })
                                }));
                            }
                            _ => tracing::debug!("request to {peer} failed: {error}"),
                        }
                    }
                    // Only peers that speak our DHT protocol go into the routing table, with the
                    // addresses they list on the IP address they connected from.
                    SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, connection_id, info }))
                        if info.protocols.contains(&kad_protocol) =>
                    {
                        if let Some((remote, dialed)) = remotes.get(&connection_id) {
                            let mut addrs = dialable_addresses(&peer_id, remote, info.listen_addrs);
                            // A peer that lists none on the address it is reached at (one behind a
                            // one-to-one NAT, say) is still reachable where the node dialed it.
                            if addrs.is_empty() && *dialed {
                                addrs = dialable_addresses(&peer_id, remote, vec![remote.clone()]);
                            }
                            set_routing_addresses(&mut swarm.behaviour_mut().kad, &peer_id, addrs);
                        } else {
                            tracing::debug!("identify message of {peer_id} over a connection already closed");
                        }
                    }
                    // Anyone on the network segment can answer mDNS: a peer found that way is
                    // dialed only at an address on the local network, not if it is in the
                    // routing table, and enters the table through identify once connected.
                    SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                        let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                        for (peer, addr) in found {
                            by_peer.entry(peer).or_default().push(addr);
                        }
                        for (peer, addrs) in by_peer {
                            if swarm.is_connected(&peer) {
                                continue;
                            }
                            match swarm.behaviour_mut().local_dial(peer, addrs) {
                                None => tracing::debug!("not dialing mDNS peer {peer}: in the routing table, no local address, or dialed enough this minute"),
                                Some(opts) => {
                                    if let Err(e) = swarm.dial(opts) {
                                        tracing::debug!("cannot dial mDNS peer {peer}: {e}");
                                    }
                                }
                            }
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, .. }))
                        if !swarm.is_connected(&peer) && lock(&shared.connected).len() < DIAL_TARGET =>
                    {
                        let _ = swarm.dial(peer);
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_with_few_connections_dials_routing_table_peers_it_is_not_connected_to() {
        let table: Vec<u32> = (0..40).collect();
        let connected = |n: u32| (0..n).collect::<HashSet<u32>>();
        // Enough peers for the mesh, counting the dials under way: nobody.
        assert!(peers_to_dial(table.clone(), &connected(MESH_FLOOR as u32), 0).is_empty());
        assert!(peers_to_dial(table.clone(), &connected(1), MESH_FLOOR - 1).is_empty());
        // Fewer (none at all included): up to DIAL_TARGET in all, none of them connected
        // already, no peer twice.
        for n in 0..MESH_FLOOR as u32 {
            let got = peers_to_dial(table.clone(), &connected(n), 0);
            assert_eq!(got.len(), DIAL_TARGET - n as usize, "{got:?}");
            assert!(got.iter().all(|p| *p >= n), "{got:?}");
            assert_eq!(got.iter().collect::<HashSet<_>>().len(), got.len());
        }
        assert_eq!(
            peers_to_dial(table.clone(), &connected(1), 2).len(),
            DIAL_TARGET - 3
        );
        // A small table gives what it has.
        assert_eq!(peers_to_dial(vec![0, 1, 2], &connected(1), 0).len(), 2);
    }

    #[test]
    fn a_host_name_in_an_address_is_refused_with_a_clear_error() {
        assert!(parse_addr("/ip4/127.0.0.1/tcp/4001").is_ok());
        for text in [
            "/dns4/example.org/tcp/4001",
            "/dns/example.org/udp/4001/quic-v1",
            "/dns6/example.org/tcp/4001",
            "/dnsaddr/bootstrap.example.org",
        ] {
            let e = parse_addr(text).unwrap_err().to_string();
            assert!(e.contains("host names are not resolved"), "{text}: {e}");
            assert!(e.contains(text), "{e}");
        }
        assert!(parse_addr("not an address").is_err());
    }

    #[test]
    fn the_heap_is_released_once_enough_peers_left() {
        assert!(!connections_closed(0, 0));
        assert!(!connections_closed(12, 12));
        assert!(!connections_closed(12, 12 - RELEASE_AFTER_CLOSED + 1));
        assert!(connections_closed(12, 12 - RELEASE_AFTER_CLOSED));
        assert!(connections_closed(99, 8));
    }

    #[test]
    fn every_so_often_one_sync_query_goes_to_a_routing_table_peer_outside_the_mesh() {
        let mesh: Vec<u32> = (0..8).collect();
        let table: Vec<u32> = (0..40).collect();
        // Usually the mesh alone.
        let got = sync_targets(mesh.clone(), table.clone(), false);
        assert_eq!(got.len(), SYNC_FANOUT);
        assert!(got.iter().all(|p| *p < 8), "{got:?}");
        // Afield: the same number of peers, one of them outside the mesh.
        for _ in 0..50 {
            let got = sync_targets(mesh.clone(), table.clone(), true);
            assert_eq!(got.len(), SYNC_FANOUT, "{got:?}");
            assert_eq!(got.iter().filter(|p| **p >= 8).count(), 1, "{got:?}");
            assert_eq!(got.iter().collect::<HashSet<_>>().len(), got.len());
        }
        // A small mesh gets the far peer on top; a table of mesh peers only adds nobody.
        assert_eq!(sync_targets(vec![1], table.clone(), true).len(), 2);
        assert_eq!(
            sync_targets(mesh.clone(), mesh.clone(), true).len(),
            SYNC_FANOUT
        );
        assert!(sync_targets(Vec::<u32>::new(), Vec::new(), true).is_empty());
    }

    #[test]
    fn choose_takes_distinct_items_and_at_most_k() {
        for n in 0..8 {
            let got = choose((0..n).collect::<Vec<u32>>(), SYNC_FANOUT);
            assert_eq!(got.len(), n.min(SYNC_FANOUT as u32) as usize);
            let distinct: HashSet<u32> = got.iter().copied().collect();
            assert_eq!(distinct.len(), got.len(), "{got:?}");
            assert!(got.iter().all(|&x| x < n));
        }
        // Over many draws every item of a larger set gets picked: not always the first ones.
        let mut seen = HashSet::new();
        for _ in 0..200 {
            seen.extend(choose((0..10).collect::<Vec<u32>>(), 3));
        }
        assert_eq!(seen.len(), 10, "{seen:?}");
    }

    #[test]
    fn peer_of_reads_one_peer_from_announced_addresses() {
        let key = identity::Keypair::generate_ed25519();
        let id = key.public().to_peer_id();
        let other = identity::Keypair::generate_ed25519().public().to_peer_id();
        let tcp = format!("/ip4/127.0.0.1/tcp/4001/p2p/{id}");
        let quic = format!("/ip4/127.0.0.1/udp/4001/quic-v1/p2p/{id}");
        let peer = peer_of(&[tcp, quic.clone(), "udp:127.0.0.1:9".into()]).unwrap();
        assert_eq!(peer, id);
        // A bare peer id.
        assert_eq!(peer_of(&[format!("/p2p/{id}")]), Some(id));
        // No peer id, or two different ones: no single peer.
        assert!(peer_of(&["/ip4/127.0.0.1/tcp/4001".into(), "garbage".into()]).is_none());
        assert!(peer_of(&[quic, format!("/p2p/{other}")]).is_none());
        assert!(peer_of(&[]).is_none());
    }
}
