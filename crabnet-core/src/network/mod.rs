//! Transports: how frames leave and reach a node.
//!
//! A [`Transport`] moves opaque frames; it never touches the store or the state machine. The
//! node owns its transport in one task that sends outbox frames and hands received frames to
//! the trust boundary. [`MemoryHub`] connects nodes inside one process (tests, the demo).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use crate::error::{Error, ErrorKind, Result};

mod addresses;
mod dht;
mod udp;
pub use addresses::UNVERIFIED_DIALS_PER_NETWORK_PER_MINUTE;
pub(crate) use dht::peer_of as libp2p_peer_of;
pub use dht::{
    DhtConfig, DhtTransport, KAD_PROTOCOL, SYNC_PROTOCOL, TOPIC, libp2p_keypair, libp2p_secret,
    stop_timer_thread,
};
pub(crate) use udp::parse_source as udp_source;
pub use udp::{UdpConfig, UdpTransport};

/// A frame received from a peer.
#[derive(Debug)]
pub struct InboundFrame {
    /// The frame's bytes.
    pub bytes: Vec<u8>,
    /// The peer's transport address, for diagnostics.
    pub from: String,
    /// Set by transports that want to know the node's verdict (to forward or drop the frame
    /// and score its sender) and to carry the node's answers back to the requester.
    pub ack: Option<Ack>,
}

/// Where a node sends its verdict on a frame and the answers to it. A node may keep it while
/// it holds the frame (an author whose hello or key rotation is on its way) and answer when it
/// decides: `Accept` once the frame applies (so gossip forwards it then), or the rejection's
/// verdict when the hold is over.
pub type Ack = tokio::sync::oneshot::Sender<Handled>;

impl InboundFrame {
    /// A frame without acknowledgement.
    pub fn new(bytes: Vec<u8>, from: impl Into<String>) -> Self {
        InboundFrame {
            bytes,
            from: from.into(),
            ack: None,
        }
    }
}

/// What the node made of an inbound frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// Valid: forward it.
    Accept,
    /// Harmless but not worth forwarding (a duplicate, our own message).
    Ignore,
    /// Invalid: drop it and penalise the peer that sent it.
    Reject,
}

/// The node's answer to an acknowledged frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// The verdict.
    pub acceptance: Acceptance,
    /// Frames to send back (sync answers).
    pub replies: Vec<Vec<u8>>,
}

/// Something a transport reports to the node.
#[derive(Debug)]
#[non_exhaustive]
pub enum Incoming {
    /// A frame from a peer.
    Frame(InboundFrame),
    /// A change worth an event (started, fell back, peers found...).
    Status(String),
    /// A connection to a peer opened: addresses for [`Transport::send_to_announced`] that reach
    /// it (the node sends it its hello, so that the peer need not wait for the next periodic
    /// one).
    Connected(Vec<String>),
    /// The transport dropped frames before reading them, and no frame came with the news
    /// ([`Transport::dropped`] rose): the end of a burst that overflowed a receive buffer.
    Lost,
    /// Connections closed, and what they used is free: a moment to hand the allocator's free
    /// memory back to the system (`network.release_heap`).
    Closed,
}

/// A way to exchange frames with peers.
pub trait Transport: Send + 'static {
    /// Short backend name (`memory`, `udp`, ...).
    fn name(&self) -> &str;

    /// The largest frame this transport carries; larger frames are refused at send time.
    fn max_frame_bytes(&self) -> usize;

    /// Addresses where peers reach this node, announced in hellos.
    fn local_addresses(&self) -> Vec<String>;

    /// Sends a frame to every peer. Must not block for long.
    fn broadcast(&mut self, frame: &[u8]) -> Result<()>;

    /// Sends a sync query to every peer, where the transport may use a request-response
    /// exchange whose answers come back as frames. By default the same as `broadcast`.
    fn sync(&mut self, frame: &[u8]) -> Result<()> {
        self.broadcast(frame)
    }

    /// Sends a frame to the one peer that announced `addresses` (in [`Incoming::Connected`]),
    /// where the transport can address a single peer by its announced identity (libp2p: the
    /// `/p2p/<peer id>` suffix); by default, and when none of the addresses names a peer, to
    /// every peer like `broadcast`. Network addresses among `addresses` are never dialed or
    /// sent to: anyone can announce anyone's address.
    fn send_to_announced(&mut self, addresses: &[String], frame: &[u8]) -> Result<()> {
        let _ = addresses;
        self.broadcast(frame)
    }

    /// Sends a frame in answer to a new peer's hello received from `from` (its
    /// [`InboundFrame::from`]) that announced `announced`: to the announcing peer over a
    /// connection the transport already has to it (libp2p), else to the source `from` like
    /// [`Transport::send_to`] (UDP, in-process). Never to an announced network address, never
    /// dialing one: a forged hello must not turn this node against a third party. By default
    /// [`Transport::send_to`].
    fn answer_hello(&mut self, from: &str, announced: &[String], frame: &[u8]) -> Result<()> {
        let _ = announced;
        self.send_to(from, frame)
    }

    /// Sends a frame to the one peer a received frame came from (`to` is that frame's
    /// [`InboundFrame::from`]): sync answers go only to their requester. Transports that cannot
    /// address one peer refuse, and the frame is not sent.
    fn send_to(&mut self, to: &str, frame: &[u8]) -> Result<()> {
        let _ = frame;
        Err(Error::new(
            ErrorKind::Network,
            format!("the {} transport cannot send to {to} alone", self.name()),
        ))
    }

    /// Whether frames that claim to come from `from` provably do (a connection, an in-process
    /// hub, a configured UDP peer), so that answers to it cannot be reflected at a third party
    /// by a forged source address. Sync answers to other sources are limited to
    /// `network.sync_answer_ratio` times what they sent.
    fn source_verified(&self, from: &str) -> bool {
        let _ = from;
        false
    }

    /// Polls for the next frame or status report; `Ready(None)` when the transport is closed.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Incoming>>;

    /// How many inbound frames this transport knows were lost before it could read them (a
    /// full receive buffer) since it started; 0 when it cannot tell. UDP on Linux learns of
    /// drops with the next datagram that arrives after them, and asks the kernel when its
    /// socket is drained (then it reports [`Incoming::Lost`]). The node counts them as
    /// `transport.dropped`.
    fn dropped(&self) -> u64 {
        0
    }
}

/// Implements the named [`Transport`] methods of a wrapper, inside its `impl Transport`, by
/// calling them on its field `$inner`: `delegate_transport!(inner: name, broadcast)`. The
/// wrapper writes the methods it changes itself; those it names nowhere keep their defaults.
macro_rules! delegate_transport {
    ($inner:ident: $($method:ident),+ $(,)?) => {
        $($crate::network::delegate_transport!(@one $inner $method);)+
    };
    (@one $inner:ident name) => {
        fn name(&self) -> &str {
            self.$inner.name()
        }
    };
    (@one $inner:ident max_frame_bytes) => {
        fn max_frame_bytes(&self) -> usize {
            self.$inner.max_frame_bytes()
        }
    };
    (@one $inner:ident local_addresses) => {
        fn local_addresses(&self) -> Vec<String> {
            self.$inner.local_addresses()
        }
    };
    (@one $inner:ident broadcast) => {
        fn broadcast(&mut self, frame: &[u8]) -> $crate::error::Result<()> {
            self.$inner.broadcast(frame)
        }
    };
    (@one $inner:ident send_to_announced) => {
        fn send_to_announced(
            &mut self,
            addresses: &[String],
            frame: &[u8],
        ) -> $crate::error::Result<()> {
            self.$inner.send_to_announced(addresses, frame)
        }
    };
    (@one $inner:ident answer_hello) => {
        fn answer_hello(
            &mut self,
            from: &str,
            announced: &[String],
            frame: &[u8],
        ) -> $crate::error::Result<()> {
            self.$inner.answer_hello(from, announced, frame)
        }
    };
    (@one $inner:ident send_to) => {
        fn send_to(&mut self, to: &str, frame: &[u8]) -> $crate::error::Result<()> {
            self.$inner.send_to(to, frame)
        }
    };
    (@one $inner:ident source_verified) => {
        fn source_verified(&self, from: &str) -> bool {
            self.$inner.source_verified(from)
        }
    };
    (@one $inner:ident dropped) => {
        fn dropped(&self) -> u64 {
            self.$inner.dropped()
        }
    };
}
pub(crate) use delegate_transport;

/// Checks a frame against a transport's size limit.
pub fn check_frame_size(transport: &dyn Transport, frame: &[u8]) -> Result<()> {
    let max = transport.max_frame_bytes();
    if frame.len() > max {
        return Err(Error::new(
            ErrorKind::Network,
            format!(
                "frame of {} bytes exceeds the {} transport's limit of {max} bytes",
                frame.len(),
                transport.name()
            ),
        ));
    }
    Ok(())
}

#[derive(Debug, Default)]
struct HubState {
    next_id: u64,
    members: BTreeMap<u64, Member>,
}

#[derive(Debug)]
struct Member {
    name: String,
    tx: mpsc::UnboundedSender<InboundFrame>,
    isolated: bool,
}

/// An in-process network: every frame broadcast by one member reaches all the others.
#[derive(Debug, Clone, Default)]
pub struct MemoryHub {
    state: Arc<Mutex<HubState>>,
}

impl MemoryHub {
    /// The largest frame the in-memory transport carries (1 MiB).
    pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a member called `name` and returns its transport.
    pub fn join(&self, name: &str) -> MemoryTransport {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = crate::lock(&self.state);
        state.next_id += 1;
        let id = state.next_id;
        state.members.insert(
            id,
            Member {
                name: name.to_owned(),
                tx,
                isolated: false,
            },
        );
        MemoryTransport {
            hub: self.clone(),
            id,
            name: name.to_owned(),
            rx,
        }
    }

    /// Cuts a member off (`true`) or reconnects it (`false`); frames to or from an isolated
    /// member are dropped, as in a network partition.
    pub fn set_isolated(&self, name: &str, isolated: bool) {
        let mut state = crate::lock(&self.state);
        for m in state.members.values_mut().filter(|m| m.name == name) {
            m.isolated = isolated;
        }
    }
}

/// One member of a [`MemoryHub`].
#[derive(Debug)]
pub struct MemoryTransport {
    hub: MemoryHub,
    id: u64,
    name: String,
    rx: mpsc::UnboundedReceiver<InboundFrame>,
}

impl Transport for MemoryTransport {
    fn name(&self) -> &str {
        "memory"
    }

    fn max_frame_bytes(&self) -> usize {
        MemoryHub::MAX_FRAME_BYTES
    }

    fn local_addresses(&self) -> Vec<String> {
        vec![format!("memory:{}", self.name)]
    }

    fn broadcast(&mut self, frame: &[u8]) -> Result<()> {
        self.deliver(frame, |_| true)
    }

    fn send_to(&mut self, to: &str, frame: &[u8]) -> Result<()> {
        let name = to.strip_prefix("memory:").unwrap_or(to);
        self.deliver(frame, |member| member.name == name)
    }

    fn source_verified(&self, _from: &str) -> bool {
        // Members of one process cannot forge each other's names.
        true
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        self.rx.poll_recv(cx).map(|f| f.map(Incoming::Frame))
    }
}

impl MemoryTransport {
    /// Sends `frame` to every other member that `to` picks, unless this member or that one is
    /// isolated.
    fn deliver(&self, frame: &[u8], to: impl Fn(&Member) -> bool) -> Result<()> {
        check_frame_size(self, frame)?;
        let state = crate::lock(&self.hub.state);
        if state.members.get(&self.id).is_some_and(|m| m.isolated) {
            return Ok(());
        }
        for (id, member) in &state.members {
            if *id != self.id && !member.isolated && to(member) {
                // A member that left simply misses the frame.
                let _ = member.tx.send(InboundFrame::new(
                    frame.to_vec(),
                    format!("memory:{}", self.name),
                ));
            }
        }
        Ok(())
    }
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        let mut state = crate::lock(&self.hub.state);
        state.members.remove(&self.id);
    }
}

/// Waits for the next frame or status report of a transport.
pub async fn next(transport: &mut dyn Transport) -> Option<Incoming> {
    std::future::poll_fn(|cx| transport.poll_recv(cx)).await
}

/// Waits for the next frame of a transport, skipping status reports.
pub async fn recv(transport: &mut dyn Transport) -> Option<InboundFrame> {
    loop {
        match next(transport).await? {
            Incoming::Frame(f) => return Some(f),
            Incoming::Status(_) | Incoming::Connected(_) | Incoming::Lost | Incoming::Closed => {
                continue;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_reach_every_other_member_but_not_the_sender_or_isolated_ones() {
        let hub = MemoryHub::new();
        let mut a = hub.join("a");
        let mut b = hub.join("b");
        let mut c = hub.join("c");
        a.broadcast(b"one").unwrap();
        assert_eq!(recv(&mut b).await.unwrap().bytes, b"one");
        assert_eq!(recv(&mut c).await.unwrap().bytes, b"one");
        hub.set_isolated("c", true);
        b.broadcast(b"two").unwrap();
        assert_eq!(recv(&mut a).await.unwrap().bytes, b"two");
        hub.set_isolated("c", false);
        // Answers go to one member only.
        a.send_to("memory:b", b"for b").unwrap();
        a.broadcast(b"three").unwrap();
        assert_eq!(recv(&mut b).await.unwrap().bytes, b"for b");
        let got = recv(&mut c).await.unwrap();
        assert_eq!(
            got.bytes, b"three",
            "the frame sent during isolation is lost"
        );
        assert_eq!(got.from, "memory:a");
    }

    #[test]
    fn oversized_frames_are_refused_with_a_clear_error() {
        let hub = MemoryHub::new();
        let mut a = hub.join("a");
        let err = a
            .broadcast(&vec![0u8; MemoryHub::MAX_FRAME_BYTES + 1])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Network);
        assert!(err.to_string().contains("exceeds"), "{err}");
    }
}
