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
    /// Peers that receive every frame (unicast).
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
    buf: Vec<u8>,
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
        socket.set_nonblocking(true)?;
        grow_receive_buffer(&socket);
        if config.broadcast.is_some() {
            socket.set_broadcast(true)?;
        }
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        Ok(UdpTransport {
            socket,
            config,
            buf: vec![0; Self::MAX_FRAME_BYTES + 1],
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
    {
        use std::os::fd::AsRawFd;
        let size: libc::c_int = 4 * 1024 * 1024;
        // SAFETY: a valid socket descriptor and a correctly sized option value.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!(
                "cannot grow the UDP receive buffer: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = socket;
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
        let targets = self.config.peers.iter().chain(self.config.broadcast.iter());
        let mut failures = Vec::new();
        for addr in targets {
            if let Err(e) = self.socket.try_send_to(frame, *addr) {
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

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        loop {
            let mut buf = tokio::io::ReadBuf::new(&mut self.buf);
            match self.socket.poll_recv_from(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(from)) => {
                    return Poll::Ready(Some(Incoming::Frame(InboundFrame::new(
                        buf.filled().to_vec(),
                        format!("udp:{from}"),
                    ))));
                }
                // ICMP errors from earlier sends surface here on Linux; they do not close the
                // socket.
                Poll::Ready(Err(e)) => {
                    tracing::debug!("udp receive error: {e}");
                    continue;
                }
            }
        }
    }
}
