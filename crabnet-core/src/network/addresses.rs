//! Which peer addresses a libp2p node keeps and dials. Every address a peer hands over
//! (identify's list of its own, the peers a Kademlia answer names) is the peer's word: taken as
//! it is, a peer could make every node that met it dial a third party, and the network would
//! amplify the peer's traffic at that party. The routing table takes a peer's addresses only on
//! the IP address its connection came from; addresses the node has not verified (a Kademlia
//! answer's, mDNS's) that lead nowhere are dialed a limited number of times a minute per host,
//! per network and in all.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::ops::{Deref, DerefMut};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::{Endpoint, transport::PortUse};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, DialError, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use libp2p_kad as kad;

/// How many unverified addresses (a Kademlia answer's) a minute a node dials on IP addresses
/// that no peer of its routing table is on, counted per network (an IPv4 /24, an IPv6 /64): a
/// peer may answer with any addresses, and without a limit could aim every node that asks it
/// at a third party.
pub const UNVERIFIED_DIALS_PER_NETWORK_PER_MINUTE: usize = 4;
/// How many such addresses a minute a node dials in all networks together (so that addresses
/// spread over many networks cannot multiply the limit above).
const UNVERIFIED_DIALS_IN_NEW_NETWORKS_PER_MINUTE: usize = 64;
/// How many unverified addresses a minute a node dials on an IP address that a peer of its
/// routing table is on (the nodes of one host find each other this way; any port of that host
/// could be named).
const UNVERIFIED_DIALS_PER_KNOWN_HOST_PER_MINUTE: usize = 64;
/// How many unverified addresses a minute a node dials in all.
const UNVERIFIED_DIALS_IN_ALL_PER_MINUTE: usize = 256;
/// How many unverified addresses one dial of a peer tries.
const UNVERIFIED_ADDRESSES_PER_DIAL: usize = 2;
/// The window of the limits above.
const DIAL_WINDOW: Duration = Duration::from_secs(60);
/// How many hosts and networks the counts remember (a minute each).
const DIAL_COUNTS: usize = 4096;
/// How many dials under way the guard remembers what they added to the counts of (a dial
/// whose end it never hears of is forgotten after [`DIAL_WINDOW`]).
const DIALS_UNDER_WAY: usize = 1024;

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

/// Whether `addr` is on the local network (a private or link-local IP address), where mDNS
/// answers come from. Not loopback: an answer naming it would aim the node at its own host.
fn on_local_network(addr: &Multiaddr) -> bool {
    match addr.iter().next().and_then(|p| ip_of(&p)) {
        Some(IpAddr::V4(ip)) => ip.is_private() || ip.is_link_local(),
        Some(IpAddr::V6(ip)) => ip.is_unique_local() || ip.is_unicast_link_local(),
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
pub(super) fn add_to_routing_table(
    kad: &mut kad::Behaviour<Store>,
    peer: &PeerId,
    addr: Multiaddr,
) {
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

/// What an unverified address counts against: the host, if a peer of the routing table is on
/// that IP address, else its network (/24, /64).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum DialTarget {
    KnownHost(IpAddr),
    Network(IpAddr),
    /// An mDNS find on the local network: counted in all only (the nodes of a network segment
    /// are found in bursts, and mDNS does not tell a find again).
    LocalNetwork,
}

impl DialTarget {
    fn of(ip: IpAddr, known: &HashSet<IpAddr>) -> Self {
        if known.contains(&ip) {
            return DialTarget::KnownHost(ip);
        }
        DialTarget::Network(match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                IpAddr::from([a, b, c, 0])
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        })
    }

    /// The counts one address dialed at this target adds to, with their limits.
    fn counts(self) -> impl Iterator<Item = (Count, usize)> {
        let (own, new_networks) = match self {
            DialTarget::KnownHost(ip) => (
                Some((Count::Host(ip), UNVERIFIED_DIALS_PER_KNOWN_HOST_PER_MINUTE)),
                None,
            ),
            DialTarget::Network(net) => (
                Some((Count::Network(net), UNVERIFIED_DIALS_PER_NETWORK_PER_MINUTE)),
                Some((
                    Count::NewNetworks,
                    UNVERIFIED_DIALS_IN_NEW_NETWORKS_PER_MINUTE,
                )),
            ),
            DialTarget::LocalNetwork => (None, None),
        };
        [
            own,
            new_networks,
            Some((Count::All, UNVERIFIED_DIALS_IN_ALL_PER_MINUTE)),
        ]
        .into_iter()
        .flatten()
    }
}

/// A count of unverified addresses dialed within its current minute.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Count {
    Host(IpAddr),
    Network(IpAddr),
    NewNetworks,
    All,
}

/// What one address added to the counts: each count with the start of the window it added to
/// (a refund to a window that has since started again is not made).
type Charge = Vec<(Count, Instant)>;

/// What a dial's unverified addresses added to the counts, address by address (without their
/// `/p2p` part): only the address a dial reached gives its part back.
type Charges = Vec<(Multiaddr, Charge)>;

/// Unverified addresses dialed within the current minute (a window that starts at a count's
/// first address). A dial that reaches the peer it meant to gives its addresses back: only
/// addresses that lead nowhere (or to somebody else) use up the limits.
#[derive(Default)]
struct DialCounts {
    counts: HashMap<Count, (Instant, usize)>,
}

impl DialCounts {
    /// Counts one address dialed at `target` now, unless a count is at its limit.
    fn allow(&mut self, target: DialTarget, now: Instant) -> Option<Charge> {
        let fresh = |since: Instant| now.saturating_duration_since(since) < DIAL_WINDOW;
        for (count, limit) in target.counts() {
            if let Some((since, n)) = self.counts.get(&count)
                && fresh(*since)
                && *n >= limit
            {
                return None;
            }
        }
        let missing = |counts: &HashMap<Count, (Instant, usize)>| {
            target
                .counts()
                .filter(|(c, _)| !counts.contains_key(c))
                .count()
        };
        if self.counts.len() + missing(&self.counts) > DIAL_COUNTS {
            self.counts.retain(|_, (since, _)| fresh(*since));
            if self.counts.len() + missing(&self.counts) > DIAL_COUNTS {
                return None;
            }
        }
        let mut charge = Vec::with_capacity(3);
        for (count, _) in target.counts() {
            let window = self.counts.entry(count).or_insert((now, 0));
            if !fresh(window.0) {
                *window = (now, 0);
            }
            window.1 += 1;
            charge.push((count, window.0));
        }
        Some(charge)
    }

    /// Gives back what a dial added, to the windows it added to.
    fn refund(&mut self, charge: &[(Count, Instant)]) {
        for (count, at) in charge {
            if let Some((since, n)) = self.counts.get_mut(count)
                && since == at
            {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// The addresses a dial of `peer` goes to, of those the behaviours `offered`, and what the
    /// unverified ones among them added to the counts. A peer with addresses in the routing
    /// table (`table`) is dialed at those alone: an unverified address beside them could lead
    /// to somebody else, whose answer first would fail the dial (and take the peer out of the
    /// routing table). A peer without is dialed at most at [`UNVERIFIED_ADDRESSES_PER_DIAL`]
    /// unverified addresses, TCP or QUIC on an IP address, within the limits. A dial with
    /// `explicit` addresses (the caller's, which the swarm dials anyway) takes none. `known`
    /// lists the IP addresses of the routing table's peers, worked out only if needed.
    fn checked(
        &mut self,
        peer: &PeerId,
        explicit: bool,
        offered: Vec<Multiaddr>,
        table: &[Multiaddr],
        known: impl FnOnce() -> HashSet<IpAddr>,
        now: Instant,
    ) -> (Vec<Multiaddr>, Charges) {
        let table: HashSet<Multiaddr> = table.iter().map(without_peer).collect();
        let mut seen = HashSet::new();
        let mut kept = Vec::new();
        let mut charges = Charges::new();
        if !table.is_empty() || explicit {
            for addr in offered {
                let bare = without_peer(&addr);
                if table.contains(&bare) && seen.insert(bare) {
                    kept.push(addr);
                }
            }
            return (kept, charges);
        }
        let known_ips = known();
        for addr in offered {
            if kept.len() == UNVERIFIED_ADDRESSES_PER_DIAL {
                break;
            }
            let Some(ip) = dialable_ip(peer, &addr) else {
                continue;
            };
            let bare = without_peer(&addr);
            if !seen.insert(bare.clone()) {
                continue;
            }
            match self.allow(DialTarget::of(ip, &known_ips), now) {
                Some(charge) => {
                    charges.push((bare, charge));
                    kept.push(addr);
                }
                None => tracing::debug!(
                    "not dialing {addr} for {peer}: dialed enough there this minute"
                ),
            }
        }
        (kept, charges)
    }
}

/// `addr` without a final `/p2p/<peer>`.
fn without_peer(addr: &Multiaddr) -> Multiaddr {
    let mut bare = addr.clone();
    if let Some(Protocol::P2p(_)) = bare.iter().last() {
        bare.pop();
    }
    bare
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

/// A behaviour with a Kademlia routing table, whose addresses the node has verified.
pub(super) trait RoutingTable {
    /// The Kademlia behaviour.
    fn kademlia(&mut self) -> &mut kad::Behaviour<Store>;
}

/// The node's behaviours, with every address they offer for a dial checked first
/// ([`DialCounts::checked`]). Kademlia dials the peers a query's answer names at the addresses
/// the answer gave; mDNS offers the addresses anyone on the network segment announced; and
/// request-response offers those mDNS passed on. A peer's addresses in the routing table
/// (checked by [`dialable_addresses`], or configured) pass as they are.
pub(super) struct DialGuard<B> {
    inner: B,
    counts: DialCounts,
    /// What each dial under way added to the counts, and when it started.
    under_way: HashMap<ConnectionId, (Instant, Charges)>,
}

impl<B> DialGuard<B> {
    /// `inner`, guarded, with nothing counted yet.
    pub(super) fn new(inner: B) -> Self {
        DialGuard {
            inner,
            counts: DialCounts::default(),
            under_way: HashMap::new(),
        }
    }

    /// Remembers what the dial `connection` added to the counts, to give it back if the dial
    /// reaches its peer.
    fn track(&mut self, connection: ConnectionId, charges: Charges, now: Instant) {
        if charges.is_empty() {
            return;
        }
        if self.under_way.len() >= DIALS_UNDER_WAY {
            self.under_way
                .retain(|_, (since, _)| now.saturating_duration_since(*since) < DIAL_WINDOW);
            if self.under_way.len() >= DIALS_UNDER_WAY {
                return;
            }
        }
        self.under_way.insert(connection, (now, charges));
    }
}

impl<B: RoutingTable> DialGuard<B> {
    /// A dial of `peer`, which mDNS found at `found`: at most
    /// [`UNVERIFIED_ADDRESSES_PER_DIAL`] of them, TCP or QUIC on a private or link-local IP
    /// address, each counted (in all); `None` if none is left, or if the peer has addresses in
    /// the routing table (mDNS answers are anyone's word: a failed dial would take the peer
    /// out of the table). Such a dial carries its addresses itself, which the guard does not
    /// see otherwise.
    pub(super) fn local_dial(&mut self, peer: PeerId, found: Vec<Multiaddr>) -> Option<DialOpts> {
        if !routing_addresses(self.inner.kademlia(), &peer).is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut kept = Vec::new();
        let mut charges = Charges::new();
        for addr in found {
            if kept.len() == UNVERIFIED_ADDRESSES_PER_DIAL {
                break;
            }
            let bare = without_peer(&addr);
            if dialable_ip(&peer, &addr).is_none()
                || !on_local_network(&addr)
                || charges.iter().any(|(a, _)| *a == bare)
            {
                continue;
            }
            if let Some(charge) = self.counts.allow(DialTarget::LocalNetwork, now) {
                charges.push((bare, charge));
                kept.push(addr);
            }
        }
        if kept.is_empty() {
            return None;
        }
        let opts = DialOpts::peer_id(peer).addresses(kept).build();
        self.track(opts.connection_id(), charges, now);
        Some(opts)
    }
}

impl<B> Deref for DialGuard<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B> DerefMut for DialGuard<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: NetworkBehaviour + RoutingTable> NetworkBehaviour for DialGuard<B> {
    type ConnectionHandler = B::ConnectionHandler;
    type ToSwarm = B::ToSwarm;

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
        let offered = match self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        ) {
            Ok(offered) => offered,
            // Refused before anything was sent: what an mDNS dial added comes back.
            Err(denied) => {
                if let Some((_, charges)) = self.under_way.remove(&connection_id) {
                    for (_, charge) in &charges {
                        self.counts.refund(charge);
                    }
                }
                return Err(denied);
            }
        };
        let Some(peer) = maybe_peer else {
            return Ok(offered);
        };
        if offered.is_empty() {
            return Ok(offered);
        }
        let kad = self.inner.kademlia();
        let table = routing_addresses(kad, &peer);
        let now = Instant::now();
        let (kept, charges) = self.counts.checked(
            &peer,
            !addresses.is_empty(),
            offered,
            &table,
            || table_ips(kad),
            now,
        );
        self.track(connection_id, charges, now);
        Ok(kept)
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
        match &event {
            // The address the dial reached gives its part back; the others may have led
            // nowhere, or been dialed at once beside it.
            FromSwarm::ConnectionEstablished(established) => {
                if let Some((_, charges)) = self.under_way.remove(&established.connection_id) {
                    let reached = without_peer(established.endpoint.get_remote_address());
                    for (addr, charge) in &charges {
                        if *addr == reached {
                            self.counts.refund(charge);
                        }
                    }
                }
            }
            // A dial that sent nothing (refused before it started) gives everything back.
            FromSwarm::DialFailure(failure) => {
                if let Some((_, charges)) = self.under_way.remove(&failure.connection_id)
                    && matches!(
                        failure.error,
                        DialError::DialPeerConditionFalse(_) | DialError::NoAddresses
                    )
                {
                    for (_, charge) in &charges {
                        self.counts.refund(charge);
                    }
                }
            }
            _ => {}
        }
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
    use libp2p::core::ConnectedPoint;

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

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    /// Checks one dial of a fresh peer at `offered` (none in the routing table; 10.0.0.5 is the
    /// IP address of a peer that is): the addresses that passed, and what they added.
    fn dial(counts: &mut DialCounts, offered: Vec<Multiaddr>, now: Instant) -> (usize, Charges) {
        let known = || HashSet::from([IpAddr::from([10, 0, 0, 5])]);
        let (kept, charge) = counts.checked(&PeerId::random(), false, offered, &[], known, now);
        (kept.len(), charge)
    }

    fn dials(
        counts: &mut DialCounts,
        offered: impl Iterator<Item = String>,
        now: Instant,
    ) -> usize {
        offered.map(|o| dial(counts, vec![a(&o)], now).0).sum()
    }

    #[test]
    fn a_peer_in_the_routing_table_is_dialed_at_its_table_addresses_alone() {
        let mut counts = DialCounts::default();
        let peer = PeerId::random();
        let t0 = Instant::now();
        let table = [
            a(&format!("/ip4/10.0.0.5/tcp/7000/p2p/{peer}")),
            a("/ip4/10.0.0.5/tcp/7001"),
        ];
        let known = || HashSet::from([IpAddr::from([10, 0, 0, 5])]);
        let offered = vec![
            a("/ip4/10.0.0.5/tcp/7000"),
            a("/ip4/10.0.0.6/tcp/1"),
            a(&format!("/ip4/10.0.0.5/tcp/7001/p2p/{peer}")),
            a("/ip4/10.0.0.5/tcp/7000"),
        ];
        for explicit in [false, true] {
            let (kept, charge) =
                counts.checked(&peer, explicit, offered.clone(), &table, known, t0);
            assert_eq!(
                kept,
                vec![
                    a("/ip4/10.0.0.5/tcp/7000"),
                    a(&format!("/ip4/10.0.0.5/tcp/7001/p2p/{peer}"))
                ]
            );
            assert!(charge.is_empty());
        }
        // A dial with addresses of its own takes no unverified one either.
        let (kept, _) = counts.checked(&peer, true, vec![a("/ip4/10.0.0.5/tcp/9")], &[], known, t0);
        assert!(kept.is_empty());
    }

    #[test]
    fn a_peer_known_only_by_hearsay_is_dialed_at_two_checked_addresses() {
        let mut counts = DialCounts::default();
        let peer = PeerId::random();
        let other = PeerId::random();
        let known = || HashSet::from([IpAddr::from([10, 0, 0, 5])]);
        let (kept, charge) = counts.checked(
            &peer,
            false,
            vec![
                a("/dns4/example.org/tcp/1"),
                a(&format!("/ip4/10.0.0.5/tcp/1/p2p/{other}")),
                a("/ip4/10.0.0.5/udp/2"),
                a("/ip4/10.0.0.5/tcp/3"),
                a(&format!("/ip4/10.0.0.5/tcp/3/p2p/{peer}")),
                a("/ip4/10.0.0.5/udp/4/quic-v1"),
                a("/ip4/10.0.0.5/tcp/5"),
            ],
            &[],
            known,
            Instant::now(),
        );
        assert_eq!(
            kept,
            vec![a("/ip4/10.0.0.5/tcp/3"), a("/ip4/10.0.0.5/udp/4/quic-v1")]
        );
        // Each counted against the host and in all.
        assert_eq!(charge.len(), 2);
        assert!(charge.iter().all(|(_, c)| c.len() == 2));
    }

    #[test]
    fn unverified_addresses_that_lead_nowhere_are_dialed_a_limited_number_of_times_a_minute() {
        let mut counts = DialCounts::default();
        let t0 = Instant::now();
        // A host a peer of the routing table is on (any port of it).
        let host = dials(
            &mut counts,
            (0..100).map(|i| format!("/ip4/10.0.0.5/tcp/{i}")),
            t0,
        );
        assert_eq!(host, UNVERIFIED_DIALS_PER_KNOWN_HOST_PER_MINUTE);
        // A network none is on, across its addresses: a /24, a /64.
        let net = dials(
            &mut counts,
            (0..100).map(|i| format!("/ip4/192.0.2.{i}/tcp/1")),
            t0,
        );
        assert_eq!(net, UNVERIFIED_DIALS_PER_NETWORK_PER_MINUTE);
        let net6 = dials(
            &mut counts,
            (0..100).map(|i| format!("/ip6/2001:db8::{i:x}/tcp/1")),
            t0,
        );
        assert_eq!(net6, UNVERIFIED_DIALS_PER_NETWORK_PER_MINUTE);
        // A minute later, again.
        let later = t0 + DIAL_WINDOW;
        assert_eq!(
            dial(&mut counts, vec![a("/ip4/192.0.2.1/tcp/1")], later).0,
            1
        );
        assert_eq!(
            dial(&mut counts, vec![a("/ip4/10.0.0.5/tcp/1")], later).0,
            1
        );
    }

    #[test]
    fn a_dial_that_reaches_its_peer_gives_its_addresses_back() {
        let mut counts = DialCounts::default();
        let t0 = Instant::now();
        // Honest peers of a network no peer of the table is on, each reached: no limit.
        for i in 0..100 {
            let (n, charges) = dial(&mut counts, vec![a(&format!("/ip4/192.0.2.{i}/tcp/1"))], t0);
            assert_eq!(n, 1, "peer {i}");
            counts.refund(&charges[0].1);
        }
        // A refund to a window that started again since is not made.
        let (_, stale) = dial(&mut counts, vec![a("/ip4/198.51.100.1/tcp/1")], t0);
        let later = t0 + DIAL_WINDOW;
        let (_, fresh) = dial(&mut counts, vec![a("/ip4/198.51.100.2/tcp/1")], later);
        counts.refund(&stale[0].1);
        counts.refund(&stale[0].1);
        let net = Count::Network(IpAddr::from([198, 51, 100, 0]));
        assert_eq!(counts.counts[&net].1, 1);
        counts.refund(&fresh[0].1);
        assert_eq!(counts.counts[&net].1, 0);
    }

    #[test]
    fn addresses_spread_over_many_networks_or_hosts_are_dialed_a_bounded_number_of_times() {
        let mut counts = DialCounts::default();
        let t0 = Instant::now();
        let spread = (0..10_000u32).map(|i| {
            let [_, b, c, _] = (i << 8).to_be_bytes();
            format!("/ip4/100.{b}.{c}.1/tcp/1")
        });
        assert_eq!(
            dials(&mut counts, spread, t0),
            UNVERIFIED_DIALS_IN_NEW_NETWORKS_PER_MINUTE
        );
        // Known hosts: their own limits, and one in all.
        let mut all = UNVERIFIED_DIALS_IN_NEW_NETWORKS_PER_MINUTE;
        for i in 0..10_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            all += counts.allow(DialTarget::KnownHost(ip), t0).map_or(0, |_| 1);
        }
        assert_eq!(all, UNVERIFIED_DIALS_IN_ALL_PER_MINUTE);
        // Refused targets are not remembered.
        assert!(counts.counts.len() <= UNVERIFIED_DIALS_IN_ALL_PER_MINUTE + 2);
        // A minute later, again.
        assert_eq!(
            dial(
                &mut counts,
                vec![a("/ip4/100.0.0.1/tcp/1")],
                t0 + DIAL_WINDOW
            )
            .0,
            1
        );
    }

    /// A stand-in for the node's behaviours: a routing table, and addresses to offer.
    struct Offering {
        kad: kad::Behaviour<Store>,
        offer: Vec<Multiaddr>,
    }

    impl RoutingTable for Offering {
        fn kademlia(&mut self) -> &mut kad::Behaviour<Store> {
            &mut self.kad
        }
    }

    impl NetworkBehaviour for Offering {
        type ConnectionHandler = libp2p::swarm::dummy::ConnectionHandler;
        type ToSwarm = std::convert::Infallible;

        fn handle_established_inbound_connection(
            &mut self,
            _: ConnectionId,
            _: PeerId,
            _: &Multiaddr,
            _: &Multiaddr,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            Ok(libp2p::swarm::dummy::ConnectionHandler)
        }

        fn handle_pending_outbound_connection(
            &mut self,
            _: ConnectionId,
            _: Option<PeerId>,
            _: &[Multiaddr],
            _: Endpoint,
        ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
            Ok(self.offer.clone())
        }

        fn handle_established_outbound_connection(
            &mut self,
            _: ConnectionId,
            _: PeerId,
            _: &Multiaddr,
            _: Endpoint,
            _: PortUse,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            Ok(libp2p::swarm::dummy::ConnectionHandler)
        }

        fn on_swarm_event(&mut self, _: FromSwarm) {}

        fn on_connection_handler_event(
            &mut self,
            _: PeerId,
            _: ConnectionId,
            event: THandlerOutEvent<Self>,
        ) {
            match event {}
        }

        fn poll(
            &mut self,
            _: &mut Context<'_>,
        ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
            Poll::Pending
        }
    }

    /// A liar that names, for peers whose keys it holds, a third party's address beside its
    /// own: its own connects, and gives back its own part only. The third party's network is
    /// still dialed a few times a minute at most.
    #[test]
    fn the_guard_gives_back_only_what_the_address_a_dial_reached_added() {
        let local = PeerId::random();
        let third = a("/ip4/192.0.2.1/tcp/1");
        let liar = a("/ip4/198.51.100.1/tcp/1");
        let mut guard = DialGuard::new(Offering {
            kad: kad::Behaviour::new(local, Store::new(local)),
            offer: vec![third.clone(), liar.clone()],
        });
        let mut third_dialed = 0;
        for id in 0..20 {
            let peer = PeerId::random();
            let connection = ConnectionId::new_unchecked(id);
            let kept = guard
                .handle_pending_outbound_connection(connection, Some(peer), &[], Endpoint::Dialer)
                .unwrap();
            third_dialed += usize::from(kept.contains(&third));
            assert!(kept.contains(&liar), "dial {id}: {kept:?}");
            let reached = ConnectedPoint::Dialer {
                address: liar.clone().with_p2p(peer).unwrap(),
                role_override: Endpoint::Dialer,
                port_use: PortUse::Reuse,
            };
            guard.on_swarm_event(FromSwarm::ConnectionEstablished(
                libp2p::swarm::behaviour::ConnectionEstablished {
                    peer_id: peer,
                    connection_id: connection,
                    endpoint: &reached,
                    failed_addresses: &[],
                    other_established: 0,
                },
            ));
        }
        assert_eq!(third_dialed, UNVERIFIED_DIALS_PER_NETWORK_PER_MINUTE);
        assert!(guard.under_way.is_empty());
        // A dial that sent nothing (no address was left) gives all back.
        let connection = ConnectionId::new_unchecked(100);
        let peer = PeerId::random();
        guard
            .handle_pending_outbound_connection(connection, Some(peer), &[], Endpoint::Dialer)
            .unwrap();
        let liar_net = Count::Network(IpAddr::from([198, 51, 100, 0]));
        assert_eq!(guard.counts.counts[&liar_net].1, 1);
        guard.on_swarm_event(FromSwarm::DialFailure(
            libp2p::swarm::behaviour::DialFailure {
                peer_id: Some(peer),
                error: &DialError::NoAddresses,
                connection_id: connection,
            },
        ));
        assert_eq!(guard.counts.counts[&liar_net].1, 0);
        assert!(guard.under_way.is_empty());
        // A dial that reached somebody else, or nobody, gives nothing back.
        for (id, error) in [
            (
                101,
                DialError::WrongPeerId {
                    obtained: PeerId::random(),
                    address: liar.clone(),
                },
            ),
            (102, DialError::Transport(Vec::new())),
        ] {
            let connection = ConnectionId::new_unchecked(id);
            let peer = PeerId::random();
            guard
                .handle_pending_outbound_connection(connection, Some(peer), &[], Endpoint::Dialer)
                .unwrap();
            guard.on_swarm_event(FromSwarm::DialFailure(
                libp2p::swarm::behaviour::DialFailure {
                    peer_id: Some(peer),
                    error: &error,
                    connection_id: connection,
                },
            ));
        }
        assert_eq!(guard.counts.counts[&liar_net].1, 2);
        assert!(guard.under_way.is_empty());
    }

    #[test]
    fn mdns_finds_are_dialed_at_two_local_addresses_counted_in_all() {
        let local = PeerId::random();
        let mut guard = DialGuard::new(Offering {
            kad: kad::Behaviour::new(local, Store::new(local)),
            offer: Vec::new(),
        });
        let peer = PeerId::random();
        let opts = guard
            .local_dial(
                peer,
                vec![
                    a("/ip4/127.0.0.1/tcp/1"),
                    a("/ip4/8.8.8.8/tcp/1"),
                    a("/ip4/192.168.1.9/tcp/1"),
                    a("/ip4/192.168.1.9/udp/1/quic-v1"),
                    a("/ip4/192.168.1.10/tcp/1"),
                ],
            )
            .unwrap();
        assert_eq!(opts.get_peer_id(), Some(peer));
        // Counted in all only, the two addresses kept.
        assert_eq!(guard.counts.counts.len(), 1);
        assert_eq!(guard.counts.counts[&Count::All].1, 2);
        let charged: Vec<&Multiaddr> = guard.under_way[&opts.connection_id()]
            .1
            .iter()
            .map(|(a, _)| a)
            .collect();
        assert_eq!(
            charged,
            [
                &a("/ip4/192.168.1.9/tcp/1"),
                &a("/ip4/192.168.1.9/udp/1/quic-v1")
            ]
        );
        assert!(
            guard
                .local_dial(peer, vec![a("/ip4/127.0.0.1/tcp/1")])
                .is_none()
        );
        // A peer of the routing table is not dialed at what mDNS says.
        let known = PeerId::random();
        guard
            .kademlia()
            .add_address(&known, a("/ip4/10.0.0.5/tcp/7000"));
        assert!(
            guard
                .local_dial(known, vec![a("/ip4/192.168.1.9/tcp/1")])
                .is_none()
        );
    }

    #[test]
    fn mdns_peers_are_dialed_only_on_the_local_network() {
        for local in [
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/172.16.0.1/udp/1/quic-v1",
            "/ip4/192.168.1.9/tcp/1",
            "/ip4/169.254.0.1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
        ] {
            assert!(on_local_network(&a(local)), "{local}");
        }
        for far in [
            "/ip4/8.8.8.8/tcp/1",
            "/ip4/192.0.2.1/tcp/1",
            "/ip6/2001:db8::1/tcp/1",
            "/dns4/localhost/tcp/1",
            // The node's own host.
            "/ip4/127.0.0.1/tcp/1",
            "/ip6/::1/tcp/1",
        ] {
            assert!(!on_local_network(&a(far)), "{far}");
        }
    }
}
