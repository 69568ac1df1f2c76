//! Which peer addresses a libp2p node keeps and dials. Every address a peer hands over
//! (identify's list of its own, the peers a Kademlia answer names) is the peer's word: taken as
//! it is, a peer could make every node that met it dial a third party, and the network would
//! amplify the peer's traffic at that party. The routing table takes a peer's addresses only on
//! the IP address its connection came from; a Kademlia answer's addresses on an IP address
//! unknown to the node are dialed a few times a minute at most.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::ops::{Deref, DerefMut};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::{Endpoint, transport::PortUse};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, kad};

/// How many times a minute a node dials an IP address that only the answer to a Kademlia
/// query gave it, on which none of the peers in its routing table is: a peer may answer with
/// any addresses, and without a limit could aim every node that asks it at a third party.
pub const QUERY_DIALS_PER_IP_PER_MINUTE: usize = 4;
/// How many addresses a Kademlia answer gave for a peer one dial of that peer tries.
const QUERY_ADDRESSES_PER_DIAL: usize = 2;
/// The window of [`QUERY_DIALS_PER_IP_PER_MINUTE`].
const QUERY_DIAL_WINDOW: Duration = Duration::from_secs(60);
/// How many IP addresses the count of query dials remembers (a minute each).
const QUERY_DIAL_IPS: usize = 4096;

type Store = kad::store::MemoryStore;

/// How many of a peer's addresses the routing table keeps: its TCP and QUIC addresses, with
/// room to spare. identify lets a peer list up to 4 KiB of addresses, and push new lists at any
/// time.
const MAX_PEER_ADDRESSES: usize = 4;

/// The addresses a peer listed in identify that the node may dial later and hand to other
/// nodes: only those on the IP address its connection `remote` came from (TCP or QUIC, at most
/// [`MAX_PEER_ADDRESSES`], none naming another peer). A peer may list any address; taken as
/// they are, a peer could make every node that met it dial a third party (a reflection of its
/// traffic through the network). An address on its own IP address reaches at most its own host.
pub(super) fn dialable_addresses(
    peer: &PeerId,
    remote: &Multiaddr,
    listed: Vec<Multiaddr>,
) -> Vec<Multiaddr> {
    let Some(remote_ip) = remote.iter().next().and_then(|p| ip_of(&p)) else {
        return Vec::new();
    };
    let mut kept: Vec<Multiaddr> = Vec::new();
    for addr in listed {
        if kept.len() == MAX_PEER_ADDRESSES {
            break;
        }
        if dialable_ip(peer, &addr) == Some(remote_ip) && !kept.contains(&addr) {
            kept.push(addr);
        }
    }
    kept
}

/// Whether `addr` is on the local network (a private, link-local or loopback IP address), where
/// mDNS answers come from.
pub(super) fn on_local_network(addr: &Multiaddr) -> bool {
    match addr.iter().next().and_then(|p| ip_of(&p)) {
        Some(IpAddr::V4(ip)) => ip.is_private() || ip.is_link_local() || ip.is_loopback(),
        Some(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.is_unique_local() || ip.is_unicast_link_local()
        }
        None => false,
    }
}

/// An IP address, IPv4-mapped IPv6 addresses as IPv4.
fn ip_of(p: &Protocol) -> Option<IpAddr> {
    match p {
        Protocol::Ip4(ip) => Some(IpAddr::from(*ip)),
        Protocol::Ip6(ip) => Some(IpAddr::from(*ip).to_canonical()),
        _ => None,
    }
}

/// The IP address of `addr` if it is one a node dials: an IP address and TCP, or UDP and QUIC,
/// optionally followed by `/p2p/<peer>` naming `peer`. Not a DNS name (it may resolve to
/// anything), a relay or any other protocol.
fn dialable_ip(peer: &PeerId, addr: &Multiaddr) -> Option<IpAddr> {
    let mut parts = addr.iter();
    let ip = ip_of(&parts.next()?)?;
    match parts.next()? {
        Protocol::Tcp(_) => {}
        Protocol::Udp(_) if parts.next()? == Protocol::QuicV1 => {}
        _ => return None,
    }
    match parts.next() {
        None => Some(ip),
        Some(Protocol::P2p(id)) if id == *peer && parts.next().is_none() => Some(ip),
        Some(_) => None,
    }
}

/// Makes `addrs` (already checked by [`dialable_addresses`]) `peer`'s addresses in the routing
/// table, in place of those it had: a peer that pushes new lists again and again cannot grow its
/// entry.
pub(super) fn set_routing_addresses(
    kad: &mut kad::Behaviour<Store>,
    peer: &PeerId,
    addrs: Vec<Multiaddr>,
) {
    // Kademlia keeps addresses with the peer's id at the end; compared that way, an address
    // listed again is not taken for a new one (and removed).
    let addrs: Vec<Multiaddr> = addrs
        .into_iter()
        .filter_map(|a| a.with_p2p(*peer).ok())
        .collect();
    if addrs.is_empty() {
        return;
    }
    let old = routing_addresses(kad, peer);
    for addr in &addrs {
        add_to_routing_table(kad, peer, addr.clone());
    }
    for addr in old.iter().filter(|a| !addrs.contains(a)) {
        kad.remove_address(peer, addr);
    }
}

/// Adds `peer`'s address to Kademlia's routing table, unless the peer's bucket is full and does
/// not hold it. Kademlia would then dial the bucket's least recently seen disconnected peer to
/// learn whether it is still there. Disconnected entries are the rule now that connections
/// outside the mesh idle out, so every new peer would bring a dial of an old one, which idles
/// out in turn (a version that closed connections itself went into a loop of dials and closes
/// this way, and a network of a hundred took three times as long to form).
fn add_to_routing_table(kad: &mut kad::Behaviour<Store>, peer: &PeerId, addr: Multiaddr) {
    let full = match kad.kbucket(*peer) {
        Some(bucket) => {
            bucket.num_entries() >= kad::K_VALUE.get()
                && !bucket.iter().any(|e| e.node.key.preimage() == peer)
        }
        None => false,
    };
    if !full {
        kad.add_address(peer, addr);
    }
}

/// `peer`'s addresses in the routing table, with the `/p2p/<peer>` Kademlia gives them.
fn routing_addresses(kad: &mut kad::Behaviour<Store>, peer: &PeerId) -> Vec<Multiaddr> {
    kad.kbucket(*peer)
        .and_then(|bucket| {
            bucket
                .iter()
                .find(|e| e.node.key.preimage() == peer)
                .map(|e| e.node.value.iter().cloned().collect())
        })
        .unwrap_or_default()
}

/// Dials a node made of IP addresses that Kademlia answers gave, per IP address, within the
/// last minute.
#[derive(Default)]
struct QueryDials {
    by_ip: HashMap<IpAddr, (Instant, usize)>,
}

impl QueryDials {
    /// Whether the node may dial `ip` once more now, counting the dial if so.
    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.by_ip.len() >= QUERY_DIAL_IPS && !self.by_ip.contains_key(&ip) {
            self.by_ip
                .retain(|_, (since, _)| now.saturating_duration_since(*since) < QUERY_DIAL_WINDOW);
            if self.by_ip.len() >= QUERY_DIAL_IPS {
                return false;
            }
        }
        let (since, count) = self.by_ip.entry(ip).or_insert((now, 0));
        if now.saturating_duration_since(*since) >= QUERY_DIAL_WINDOW {
            *since = now;
            *count = 0;
        }
        if *count >= QUERY_DIALS_PER_IP_PER_MINUTE {
            return false;
        }
        *count += 1;
        true
    }
}

/// Kademlia, with the addresses of its queries' answers checked before the node dials them.
/// Kademlia dials a peer that an answer named at the addresses the answer gave; those pass
/// here only if they are TCP or QUIC on an IP address (at most [`QUERY_ADDRESSES_PER_DIAL`] per
/// dial), on an IP address that a peer in the routing table is on, or else within
/// [`QUERY_DIALS_PER_IP_PER_MINUTE`]. A peer's addresses in the routing table (checked by
/// [`dialable_addresses`], or configured) pass as they are.
pub(super) struct Kademlia {
    inner: kad::Behaviour<Store>,
    query_dials: QueryDials,
}

impl Kademlia {
    pub(super) fn new(inner: kad::Behaviour<Store>) -> Self {
        Kademlia {
            inner,
            query_dials: QueryDials::default(),
        }
    }

    /// The addresses the node dials `peer` at, of those Kademlia `offered`.
    fn checked(&mut self, peer: &PeerId, offered: Vec<Multiaddr>, now: Instant) -> Vec<Multiaddr> {
        let table = routing_addresses(&mut self.inner, peer);
        let mut known_ips: Option<HashSet<IpAddr>> = None;
        let mut kept = Vec::new();
        let mut from_answers = 0;
        for addr in offered {
            if kept.contains(&addr) {
                continue;
            }
            let full = addr.clone().with_p2p(*peer).unwrap_or_else(|a| a);
            if table.contains(&full) {
                kept.push(addr);
                continue;
            }
            if from_answers == QUERY_ADDRESSES_PER_DIAL {
                continue;
            }
            let Some(ip) = dialable_ip(peer, &addr) else {
                continue;
            };
            let known = known_ips.get_or_insert_with(|| table_ips(&mut self.inner));
            if known.contains(&ip) || self.query_dials.allow(ip, now) {
                from_answers += 1;
                kept.push(addr);
            } else {
                tracing::debug!(
                    "not dialing {addr} for {peer}: a Kademlia answer's address, dialed enough this minute"
                );
            }
        }
        kept
    }
}

/// The IP addresses of the peers in the routing table.
fn table_ips(kad: &mut kad::Behaviour<Store>) -> HashSet<IpAddr> {
    let mut ips = HashSet::new();
    for bucket in kad.kbuckets() {
        for entry in bucket.iter() {
            for addr in entry.node.value.iter() {
                if let Some(ip) = addr.iter().next().and_then(|p| ip_of(&p)) {
                    ips.insert(ip);
                }
            }
        }
    }
    ips
}

impl Deref for Kademlia {
    type Target = kad::Behaviour<Store>;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl DerefMut for Kademlia {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

impl NetworkBehaviour for Kademlia {
    type ConnectionHandler = <kad::Behaviour<Store> as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = kad::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        let offered = self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )?;
        Ok(match maybe_peer {
            Some(peer) if !offered.is_empty() => self.checked(&peer, offered, Instant::now()),
            _ => offered,
        })
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_on_the_ip_address_a_peer_connected_from_are_kept_and_only_a_few() {
        let peer = PeerId::random();
        let other = PeerId::random();
        let a = |s: &str| s.parse::<Multiaddr>().unwrap();
        let remote = a("/ip4/10.0.0.5/tcp/40123");
        let listed = vec![
            a("/ip4/10.0.0.5/tcp/7000"),
            a("/ip4/10.0.0.5/udp/7000/quic-v1"),
            a(&format!("/ip4/10.0.0.5/tcp/7001/p2p/{peer}")),
            // Another host, a name, another peer's id, a relay, plain UDP, a duplicate.
            a("/ip4/10.0.0.6/tcp/7000"),
            a("/dns4/example.org/tcp/7000"),
            a(&format!("/ip4/10.0.0.5/tcp/7002/p2p/{other}")),
            a(&format!("/ip4/10.0.0.5/tcp/7003/p2p/{peer}/p2p-circuit")),
            a("/ip4/10.0.0.5/udp/7000"),
            a("/ip4/10.0.0.5/tcp/7000"),
        ];
        assert_eq!(
            dialable_addresses(&peer, &remote, listed),
            vec![
                a("/ip4/10.0.0.5/tcp/7000"),
                a("/ip4/10.0.0.5/udp/7000/quic-v1"),
                a(&format!("/ip4/10.0.0.5/tcp/7001/p2p/{peer}")),
            ]
        );
        // Many ports on its own address: the first few.
        let many: Vec<Multiaddr> = (0..100)
            .map(|p| a(&format!("/ip4/10.0.0.5/tcp/{}", 8000 + p)))
            .collect();
        assert_eq!(
            dialable_addresses(&peer, &remote, many.clone()),
            many[..MAX_PEER_ADDRESSES].to_vec()
        );
        // IPv6, an IPv4 peer seen through an IPv4-mapped address, and a remote without an IP.
        assert_eq!(
            dialable_addresses(
                &peer,
                &a("/ip6/::1/tcp/1"),
                vec![a("/ip6/::1/tcp/2"), a("/ip4/127.0.0.1/tcp/2")]
            ),
            vec![a("/ip6/::1/tcp/2")]
        );
        assert_eq!(
            dialable_addresses(
                &peer,
                &a("/ip6/::ffff:10.0.0.5/tcp/1"),
                vec![a("/ip4/10.0.0.5/tcp/2")]
            ),
            vec![a("/ip4/10.0.0.5/tcp/2")]
        );
        assert!(dialable_addresses(&peer, &a("/dns4/x/tcp/1"), many).is_empty());
    }

    #[test]
    fn a_peer_listing_new_addresses_again_and_again_keeps_a_bounded_entry() {
        let local = PeerId::random();
        let mut kad = kad::Behaviour::new(local, kad::store::MemoryStore::new(local));
        let peer = PeerId::random();
        let entry = |kad: &mut kad::Behaviour<Store>| routing_addresses(kad, &peer);
        let listed = |round: u16| -> Vec<Multiaddr> {
            (0..MAX_PEER_ADDRESSES as u16)
                .map(|i| {
                    format!("/ip4/10.0.0.5/tcp/{}", 1000 + round * 10 + i)
                        .parse()
                        .unwrap()
                })
                .collect()
        };
        let stored = |round: u16| -> Vec<Multiaddr> {
            listed(round)
                .into_iter()
                .map(|a| a.with_p2p(peer).unwrap())
                .collect()
        };
        for round in 0..50u16 {
            set_routing_addresses(&mut kad, &peer, listed(round));
            assert_eq!(entry(&mut kad), stored(round), "round {round}");
        }
        // The same list again (an honest peer identifying anew), with or without its id.
        set_routing_addresses(&mut kad, &peer, listed(49));
        assert_eq!(entry(&mut kad), stored(49));
        set_routing_addresses(&mut kad, &peer, stored(49));
        assert_eq!(entry(&mut kad), stored(49));
        // Part of it: the rest goes.
        set_routing_addresses(&mut kad, &peer, listed(49)[..1].to_vec());
        assert_eq!(entry(&mut kad), stored(49)[..1].to_vec());
        // An empty list (nothing dialable) leaves the entry as it was.
        let before = entry(&mut kad);
        set_routing_addresses(&mut kad, &peer, Vec::new());
        assert_eq!(entry(&mut kad), before);
    }

    #[test]
    fn a_kademlia_answers_addresses_on_an_unknown_ip_are_dialed_a_few_times_a_minute() {
        let local = PeerId::random();
        let mut kad = Kademlia::new(kad::Behaviour::new(local, Store::new(local)));
        let known = PeerId::random();
        kad.add_address(&known, "/ip4/10.0.0.5/tcp/7000".parse().unwrap());
        let a = |s: String| s.parse::<Multiaddr>().unwrap();
        let t0 = Instant::now();
        // A peer of the routing table: its own addresses pass as they are.
        assert_eq!(
            kad.checked(
                &known,
                vec![a(format!("/ip4/10.0.0.5/tcp/7000/p2p/{known}"))],
                t0
            ),
            vec![a(format!("/ip4/10.0.0.5/tcp/7000/p2p/{known}"))]
        );
        // Named by an answer, on the known host's IP address: at most two addresses a dial,
        // TCP or QUIC only, none naming another peer, but as often as asked.
        let fresh = PeerId::random();
        for _ in 0..20 {
            assert_eq!(
                kad.checked(
                    &fresh,
                    vec![
                        a("/dns4/example.org/tcp/1".into()),
                        a(format!("/ip4/10.0.0.5/tcp/1/p2p/{known}")),
                        a("/ip4/10.0.0.5/udp/2".into()),
                        a("/ip4/10.0.0.5/tcp/3".into()),
                        a("/ip4/10.0.0.5/udp/4/quic-v1".into()),
                        a("/ip4/10.0.0.5/tcp/5".into()),
                    ],
                    t0
                ),
                vec![
                    a("/ip4/10.0.0.5/tcp/3".into()),
                    a("/ip4/10.0.0.5/udp/4/quic-v1".into())
                ]
            );
        }
        // On an IP address no peer of the table is on: a few dials a minute, across peers.
        let dialed: usize = (0..40)
            .map(|i| {
                kad.checked(
                    &PeerId::random(),
                    vec![a(format!("/ip4/192.0.2.7/tcp/{i}"))],
                    t0,
                )
                .len()
            })
            .sum();
        assert_eq!(dialed, QUERY_DIALS_PER_IP_PER_MINUTE);
        // Another such address is counted apart, and a minute later the first one again.
        assert_eq!(
            kad.checked(
                &PeerId::random(),
                vec![a("/ip4/192.0.2.8/tcp/1".into())],
                t0
            )
            .len(),
            1
        );
        let later = t0 + QUERY_DIAL_WINDOW;
        assert_eq!(
            kad.checked(
                &PeerId::random(),
                vec![a("/ip4/192.0.2.7/tcp/1".into())],
                later
            )
            .len(),
            1
        );
    }

    #[test]
    fn mdns_peers_are_dialed_only_on_the_local_network() {
        for local in [
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/172.16.0.1/udp/1/quic-v1",
            "/ip4/192.168.1.9/tcp/1",
            "/ip4/169.254.0.1/tcp/1",
            "/ip4/127.0.0.1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
            "/ip6/::1/tcp/1",
        ] {
            assert!(on_local_network(&local.parse().unwrap()), "{local}");
        }
        for far in [
            "/ip4/8.8.8.8/tcp/1",
            "/ip4/192.0.2.1/tcp/1",
            "/ip6/2001:db8::1/tcp/1",
            "/dns4/localhost/tcp/1",
        ] {
            assert!(!on_local_network(&far.parse().unwrap()), "{far}");
        }
    }

    #[test]
    fn the_count_of_query_dials_stays_bounded_under_a_spray_of_ip_addresses() {
        let mut dials = QueryDials::default();
        let t0 = Instant::now();
        for i in 0..(QUERY_DIAL_IPS as u32 * 3) {
            let _ = dials.allow(IpAddr::from(std::net::Ipv4Addr::from(i)), t0);
            assert!(dials.by_ip.len() <= QUERY_DIAL_IPS);
        }
        // Full within the minute: a new IP address waits; after it, the old ones go.
        assert!(!dials.allow(IpAddr::from([203, 0, 113, 1]), t0));
        assert!(dials.allow(IpAddr::from([203, 0, 113, 1]), t0 + QUERY_DIAL_WINDOW));
        assert_eq!(dials.by_ip.len(), 1);
    }
}
