//! UDP: unicast to configured peers, plus opt-in broadcast. The small LAN and fallback path.

use std::task::{Context, Poll};

use super::{InboundFrame, Incoming, Transport, check_frame_size};
use crate::error::{Error, ErrorKind, Result};

/// UDP transport settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UdpConfig {
    /// Local address to bind.
    pub bind: std::net::SocketAddr,
    /// Peers that receive every frame (unicast), except sync queries: each goes to three of
    /// them in turn ([`Transport::sync`]).
    pub peers: Vec<std::net::SocketAddr>,
    /// Also send every frame to this broadcast address (off by default: a node announces
    /// itself only on networks its operator chose).
    pub broadcast: Option<std::net::SocketAddr>,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            bind: std::net::SocketAddr::from(([127, 0, 0, 1], 7946)),
            peers: Vec::new(),
            broadcast: None,
        }
    }
}

/// Unicast (and opt-in broadcast) over UDP: the small LAN and fallback path.
#[derive(Debug)]
pub struct UdpTransport {
    socket: tokio::net::UdpSocket,
    config: UdpConfig,
    rx: RecvBatch,
    /// Where in `config.peers` the next sync query goes ([`Transport::sync`]): they take
    /// turns, from a random start.
    next_sync: usize,
}

impl UdpTransport {
    /// The largest UDP payload over IPv4.
    pub const MAX_FRAME_BYTES: usize = 65_507;

    /// Binds the socket. Must be called inside a tokio runtime.
    pub fn bind(config: UdpConfig) -> Result<Self> {
        let socket = std::net::UdpSocket::bind(config.bind).map_err(|e| {
            Error::with_source(
                ErrorKind::Network,
                format!("cannot bind UDP socket on {}: {e}", config.bind),
                e,
            )
        })?;
        Self::from_socket(socket, config)
    }

    /// Takes a socket already bound (handed over by a supervisor, or held since the port was
    /// chosen, so that no other process can take it meanwhile); `config.bind` is replaced by
    /// the socket's address. Must be called inside a tokio runtime.
    pub fn from_socket(socket: std::net::UdpSocket, mut config: UdpConfig) -> Result<Self> {
        config.bind = socket.local_addr()?;
        socket.set_nonblocking(true)?;
        grow_receive_buffer(&socket);
        if config.broadcast.is_some() {
            socket.set_broadcast(true)?;
        }
        report_drops(&socket);
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        let next_sync = usize::from_le_bytes(crate::clock::random_bytes());
        Ok(UdpTransport {
            socket,
            config,
            rx: RecvBatch::new(),
            next_sync,
        })
    }

    /// The bound local address (useful when binding port 0).
    pub fn local_addr(&self) -> Result<std::net::SocketAddr> {
        Ok(self.socket.local_addr()?)
    }
}

/// The socket address of a `udp:<address>` source.
pub(crate) fn parse_source(from: &str) -> Option<std::net::SocketAddr> {
    from.strip_prefix("udp:")?.parse().ok()
}

/// Asks for a 4 MiB receive buffer (the kernel caps it at `net.core.rmem_max`) so that bursts
/// of envelopes are not dropped before the node reads them; sync repairs what is still lost.
fn grow_receive_buffer(socket: &std::net::UdpSocket) {
    #[cfg(unix)]
    set_socket_option(
        socket,
        libc::SO_RCVBUF,
        4 * 1024 * 1024,
        "grow the UDP receive buffer",
    );
    #[cfg(not(unix))]
    let _ = socket;
}

/// Sets the integer `SOL_SOCKET` option `name` of `socket` to `value`; a refusal is logged
/// (at debug level, naming `what` was wanted) and otherwise ignored.
#[cfg(unix)]
fn set_socket_option(
    socket: &std::net::UdpSocket,
    name: libc::c_int,
    value: libc::c_int,
    what: &str,
) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!("cannot {what}: {}", std::io::Error::last_os_error());
    }
}

impl Transport for UdpTransport {
    fn name(&self) -> &str {
        "udp"
    }

    fn max_frame_bytes(&self) -> usize {
        Self::MAX_FRAME_BYTES
    }

    fn local_addresses(&self) -> Vec<String> {
        self.socket
            .local_addr()
            .map(|a| vec![format!("udp:{a}")])
            .unwrap_or_default()
    }

    fn broadcast(&mut self, frame: &[u8]) -> Result<()> {
        check_frame_size(self, frame)?;
        let targets = self
            .config
            .peers
            .iter()
            .copied()
            .chain(self.config.broadcast);
        send_each(&self.socket, frame, targets)
    }

    /// The query goes to `SYNC_FANOUT` (`network::dht`) of the configured peers, taking
    /// turns (each of `n` peers gets one of every `ceil(n / 3)` queries, one per sync round,
    /// and answers queries of its own in between), and to the broadcast address when one is
    /// set. To every
    /// peer, as before, each node would answer and reconcile with every other node every
    /// interval: work and datagrams in proportion to the network's size, whose bursts of
    /// answers overflowed the receivers' buffers in a network of dozens of nodes; the losses
    /// then looked like differences to the next exchanges, which sent the same envelopes again
    /// to everyone.
    fn sync(&mut self, frame: &[u8]) -> Result<()> {
        check_frame_size(self, frame)?;
        let peers = &self.config.peers;
        let count = super::dht::SYNC_FANOUT.min(peers.len());
        let start = if peers.is_empty() {
            0
        } else {
            self.next_sync % peers.len()
        };
        self.next_sync = start + count;
        let targets = (0..count)
            .map(|i| peers[(start + i) % peers.len()])
            .chain(self.config.broadcast);
        send_each(&self.socket, frame, targets)
    }

    fn send_to(&mut self, to: &str, frame: &[u8]) -> Result<()> {
        check_frame_size(self, frame)?;
        let addr = parse_source(to).ok_or_else(|| {
            Error::new(
                ErrorKind::Network,
                format!("{to} is not a UDP source address"),
            )
        })?;
        self.socket.try_send_to(frame, addr).map_err(|e| {
            Error::with_source(ErrorKind::Network, format!("cannot send to {addr}: {e}"), e)
        })?;
        Ok(())
    }

    fn source_verified(&self, from: &str) -> bool {
        // A datagram's source address can be forged; the operator's own peer list cannot.
        parse_source(from).is_some_and(|a| self.config.peers.contains(&a))
    }

    fn dropped(&self) -> u64 {
        self.rx.dropped
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        loop {
            if let Some(frame) = self.rx.next_frame() {
                return Poll::Ready(Some(Incoming::Frame(frame)));
            }
            match self.socket.poll_recv_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {}
                // The runtime's I/O driver is gone (shutting down).
                Poll::Ready(Err(e)) => {
                    tracing::debug!("udp socket closed: {e}");
                    return Poll::Ready(None);
                }
            }
            let (socket, rx) = (&self.socket, &mut self.rx);
            match socket.try_io(tokio::io::Interest::READABLE, || rx.fill(socket)) {
                Ok(()) => {}
                // The socket is drained: `poll_recv_ready` waits for the next datagram. What
                // the kernel dropped at the end of a burst comes with no later datagram, so
                // its count is asked for now.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if self.rx.ask_kernel_drops(&self.socket) {
                        return Poll::Ready(Some(Incoming::Lost));
                    }
                }
                // ICMP errors from earlier sends surface here on Linux; they do not close the
                // socket.
                Err(e) => tracing::debug!("udp receive error: {e}"),
            }
        }
    }
}

/// Datagrams read with one system call (`recvmmsg` on Linux, one by one elsewhere).
const RECV_BATCH: usize = 16;
/// Room for one datagram: one byte more than the largest frame, so that a larger datagram is
/// seen as oversized (and rejected as such) rather than cut.
const SLOT_BYTES: usize = UdpTransport::MAX_FRAME_BYTES + 1;

/// Datagrams read together and not yet handed to the node, and the source string of the last
/// one (under a flood from one address, each datagram reuses it instead of formatting it).
struct RecvBatch {
    /// [`RECV_BATCH`] slots of [`SLOT_BYTES`]; pages the kernel never writes stay unmapped.
    buf: Vec<u8>,
    /// Length and source of each datagram read into the slots.
    got: Vec<(usize, std::net::SocketAddr)>,
    /// The next slot to hand out.
    next: usize,
    last_from: Option<(std::net::SocketAddr, String)>,
    /// Datagrams the kernel dropped at this socket (receive buffer full) since it was bound,
    /// and the kernel's 32-bit count when last reported.
    dropped: u64,
    kernel_drops: u32,
    /// Whether the kernel tells the drop count when asked (`SO_MEMINFO`).
    meminfo: bool,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("queued", &(self.got.len() - self.next))
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl RecvBatch {
    fn new() -> Self {
        RecvBatch {
            buf: vec![0; RECV_BATCH * SLOT_BYTES],
            got: Vec::with_capacity(RECV_BATCH),
            next: 0,
            last_from: None,
            dropped: 0,
            kernel_drops: 0,
            meminfo: true,
        }
    }

    /// The next datagram read and not yet handed out.
    fn next_frame(&mut self) -> Option<InboundFrame> {
        let (len, from) = *self.got.get(self.next)?;
        let at = self.next * SLOT_BYTES;
        self.next += 1;
        let source = match &self.last_from {
            Some((addr, source)) if *addr == from => source.clone(),
            _ => {
                let source = format!("udp:{from}");
                self.last_from = Some((from, source.clone()));
                source
            }
        };
        Some(InboundFrame::new(self.buf[at..at + len].to_vec(), source))
    }

    /// Reads the datagrams waiting at `socket`, up to [`RECV_BATCH`], into the slots (which
    /// must all have been handed out). `WouldBlock` when there are none.
    #[cfg(target_os = "linux")]
    fn fill(&mut self, socket: &tokio::net::UdpSocket) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        debug_assert_eq!(self.next, self.got.len(), "slots still queued");
        self.got.clear();
        self.next = 0;
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut names: [libc::sockaddr_storage; RECV_BATCH] = unsafe { std::mem::zeroed() };
        // Room for one `SO_RXQ_OVFL` message (a u32) per datagram, aligned for `cmsghdr`.
        let mut controls = [[0u64; 4]; RECV_BATCH];
        // SAFETY: as above.
        let mut iovs: [libc::iovec; RECV_BATCH] = unsafe { std::mem::zeroed() };
        for (iov, slot) in iovs.iter_mut().zip(self.buf.chunks_exact_mut(SLOT_BYTES)) {
            iov.iov_base = slot.as_mut_ptr().cast();
            iov.iov_len = slot.len();
        }
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        for (i, m) in msgs.iter_mut().enumerate() {
            m.msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            m.msg_hdr.msg_iov = &mut iovs[i];
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_control = controls[i].as_mut_ptr().cast();
            m.msg_hdr.msg_controllen = std::mem::size_of_val(&controls[i]) as _;
        }
        // SAFETY: every header points at live buffers of the lengths it states, for the
        // duration of the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                RECV_BATCH as _,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for (m, name) in msgs.iter().zip(&names).take(n as usize) {
            // SAFETY: the kernel filled the control buffer of this header.
            if let Some(drops) = unsafe { drop_count(&m.msg_hdr) } {
                self.kernel_dropped(drops);
            }
            // A source that is neither IPv4 nor IPv6 cannot be answered; its datagram is
            // skipped.
            if let Some(from) = socket_addr(name) {
                self.got.push(((m.msg_len as usize).min(SLOT_BYTES), from));
            }
        }
        Ok(())
    }

    /// Takes the kernel's count of datagrams dropped at the socket, `drops` (32 bits, wrapping):
    /// returns whether it rose. A datagram queued before later drops reports a lower count
    /// than the one last taken (asked for with [`RecvBatch::ask_kernel_drops`]): not news.
    fn kernel_dropped(&mut self, drops: u32) -> bool {
        let new = drops.wrapping_sub(self.kernel_drops);
        if new == 0 || new > u32::MAX / 2 {
            return false;
        }
        self.dropped += u64::from(new);
        self.kernel_drops = drops;
        true
    }

    /// Asks the kernel how many datagrams it dropped at `socket` (`SO_MEMINFO`), for a socket
    /// just drained: returns whether the count rose. Without it, datagrams dropped at the end
    /// of a burst went unnoticed until the next datagram arrived (`SO_RXQ_OVFL` comes with a
    /// datagram), and with them the repair of what they carried.
    #[cfg(target_os = "linux")]
    fn ask_kernel_drops(&mut self, socket: &tokio::net::UdpSocket) -> bool {
        use std::os::fd::AsRawFd;
        if !self.meminfo {
            return false;
        }
        let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
        let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
        // SAFETY: `info` has room for `len` bytes, and the kernel writes at most that many.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MEMINFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        // Older kernels (and some sandboxes) have no SO_MEMINFO, or no drop count in it: not
        // asked again.
        if rc != 0 || (len as usize) < std::mem::size_of_val(&info) {
            self.meminfo = false;
            return false;
        }
        self.kernel_dropped(info[libc::SK_MEMINFO_DROPS as usize])
    }

    #[cfg(not(target_os = "linux"))]
    fn ask_kernel_drops(&mut self, _socket: &tokio::net::UdpSocket) -> bool {
        false
    }

    /// Reads one datagram waiting at `socket` into the first slot. `WouldBlock` when there is
    /// none.
    #[cfg(not(target_os = "linux"))]
    fn fill(&mut self, socket: &tokio::net::UdpSocket) -> std::io::Result<()> {
        debug_assert_eq!(self.next, self.got.len(), "slots still queued");
        self.got.clear();
        self.next = 0;
        let (len, from) = socket.try_recv_from(&mut self.buf[..SLOT_BYTES])?;
        self.got.push((len, from));
        Ok(())
    }
}

/// The kernel's count of datagrams dropped at the socket, from the `SO_RXQ_OVFL` message the
/// kernel attaches to a datagram once any was dropped.
///
/// # Safety
/// `hdr` is a header the kernel filled, with its control buffer still alive.
#[cfg(target_os = "linux")]
unsafe fn drop_count(hdr: &libc::msghdr) -> Option<u32> {
    // SAFETY: the caller's promise; the CMSG_* functions stay within `msg_controllen`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_RXQ_OVFL {
                let data = libc::CMSG_DATA(cmsg).cast::<u32>();
                return Some(data.read_unaligned());
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
}

/// The IPv4 or IPv6 address in `name`.
#[cfg(target_os = "linux")]
fn socket_addr(name: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    match libc::c_int::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a `sockaddr_in`.
            let a =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some((ip, u16::from_be(a.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a `sockaddr_in6`.
            let a =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(std::net::SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Asks the kernel to report, with each datagram, how many it dropped at this socket
/// (`SO_RXQ_OVFL`), so that the node knows when frames of its peers may have been lost.
fn report_drops(socket: &std::net::UdpSocket) {
    #[cfg(target_os = "linux")]
    set_socket_option(socket, libc::SO_RXQ_OVFL, 1, "ask for UDP drop counts");
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// Sends `frame` to each of `targets`; the error names every address that failed.
fn send_each(
    socket: &tokio::net::UdpSocket,
    frame: &[u8],
    targets: impl IntoIterator<Item = std::net::SocketAddr>,
) -> Result<()> {
    let mut failures = Vec::new();
    for addr in targets {
        if let Err(e) = socket.try_send_to(frame, addr) {
            failures.push(format!("{addr}: {e}"));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Network,
            format!("cannot send to {}", failures.join(", ")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datagrams waiting at `socket` (loopback delivers a datagram before `send_to` returns).
    fn waiting(socket: &std::net::UdpSocket) -> usize {
        let mut buf = [0u8; 64];
        let mut n = 0;
        while socket.recv_from(&mut buf).is_ok() {
            n += 1;
        }
        n
    }

    /// A transport made from a socket the caller bound keeps that socket (and its port: no
    /// window in which another process could take it) and receives on it.
    #[tokio::test]
    async fn a_transport_takes_a_socket_already_bound() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = socket.local_addr().unwrap();
        let config = UdpConfig {
            bind: "127.0.0.1:9".parse().unwrap(),
            ..UdpConfig::default()
        };
        let mut udp = UdpTransport::from_socket(socket, config).unwrap();
        assert_eq!(udp.local_addr().unwrap(), at);
        assert_eq!(
            udp.config.bind, at,
            "the configured address is the socket's"
        );
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"frame", at).unwrap();
        let wait = std::time::Duration::from_secs(10);
        match tokio::time::timeout(wait, crate::network::next(&mut udp)).await {
            Ok(Some(Incoming::Frame(f))) => assert_eq!(&f.bytes[..], b"frame"),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Datagrams dropped at the end of a burst (the receive buffer full, nothing sent after)
    /// are counted once the socket is drained, and reported as [`Incoming::Lost`]: the kernel's
    /// count came only with a later datagram, and there was none (before, `dropped()` stayed 0
    /// and nothing repaired what the burst lost).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn drops_at_the_end_of_a_burst_are_reported_when_the_socket_drains() {
        let mut udp = UdpTransport::bind(UdpConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            peers: Vec::new(),
            broadcast: None,
        })
        .unwrap();
        let to = udp.local_addr().unwrap();
        if !udp.rx.ask_kernel_drops(&udp.socket) && !udp.rx.meminfo {
            eprintln!("skipped: this kernel does not tell a socket's drop count (SO_MEMINFO)");
            return;
        }
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Far more than the receive buffer holds (at most a few MiB), sent before any is read.
        let sent = 600;
        let datagram = vec![7u8; 60_000];
        for _ in 0..sent {
            sender.send_to(&datagram, to).unwrap();
        }
        let (mut frames, mut lost) = (0u64, 0);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while frames + udp.dropped() < sent && tokio::time::Instant::now() < deadline {
            let wait = std::time::Duration::from_millis(300);
            match tokio::time::timeout(wait, crate::network::next(&mut udp)).await {
                Ok(Some(Incoming::Frame(_))) => frames += 1,
                Ok(Some(Incoming::Lost)) => {
                    // Reported only when the count rose.
                    assert!(udp.dropped() > lost, "a loss reported twice");
                    lost = udp.dropped();
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => {}
            }
        }
        assert!(
            frames < sent,
            "nothing was dropped: the test sent too little"
        );
        assert_eq!(
            udp.dropped(),
            sent - frames,
            "every datagram is read or counted"
        );
        assert_eq!(lost, udp.dropped(), "every loss is reported");
    }

    /// A sync query goes to three of the configured peers, not to every one: in a network of
    /// dozens of nodes, a query to every peer made every node answer and reconcile with every
    /// other each interval, and the bursts of answers overflowed the receivers' buffers. The
    /// peers take turns, so each one is queried within `ceil(n / 3)` intervals.
    #[tokio::test]
    async fn a_sync_query_goes_to_a_few_peers_in_turn() {
        let peers: Vec<std::net::UdpSocket> = (0..10)
            .map(|_| {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        let mut udp = UdpTransport::bind(UdpConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            peers: peers.iter().map(|s| s.local_addr().unwrap()).collect(),
            broadcast: None,
        })
        .unwrap();
        // A fresh socket is writable once the runtime's driver has seen it.
        udp.socket.writable().await.unwrap();
        let mut queried = vec![0; peers.len()];
        for round in 0..4 {
            udp.sync(b"query").unwrap();
            let got: Vec<usize> = peers.iter().map(waiting).collect();
            assert_eq!(
                got.iter().sum::<usize>(),
                3,
                "round {round}: peers reached {got:?}"
            );
            for (q, g) in queried.iter_mut().zip(&got) {
                *q += g;
            }
        }
        assert!(
            queried.iter().all(|q| *q >= 1),
            "a peer was left out of four rounds: {queried:?}"
        );
        // Every other frame still goes to every peer.
        udp.broadcast(b"hello").unwrap();
        assert!(peers.iter().all(|s| waiting(s) == 1));
    }
}
