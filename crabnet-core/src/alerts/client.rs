//! A minimal blocking HTTP/1.1 client for webhook posts: one request per connection
//! (`Connection: close`), over TCP or TLS (rustls, the one libp2p already builds, with the
//! system's or a configured CA bundle). Redirects are not followed. Runs on a blocking thread.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::Target;

/// The system's CA bundle (Debian and derivatives).
const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Longest status line and headers read from a receiver.
const MAX_HEAD: usize = 16 * 1024;

/// One request.
pub(crate) struct Request<'a> {
    pub target: &'a Target,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    pub timeout: Duration,
}

/// A TLS client configuration trusting the certificates in `ca_file` (PEM; default: the
/// system's bundle).
pub(crate) fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let path = ca_file.unwrap_or(Path::new(SYSTEM_CA_FILE));
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
        // Bundles may hold certificates rustls cannot use; skip those.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!("no usable certificate in {}", path.display()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Posts the request and returns the answer's status code.
pub(crate) fn post(
    req: &Request<'_>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<u16, String> {
    let t = req.target;
    let deadline = Instant::now() + req.timeout;
    let addrs: Vec<_> = (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", t.host))?
        .collect();
    let mut last = format!("{} has no address", t.host);
    let mut stream = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    let stream = stream.ok_or(last)?;
    // Each read and write gets the time left until the deadline (the TLS handshake's too),
    // so that a receiver that trickles its answer cannot stretch the delivery.
    let _ = stream.set_nodelay(true);
    let stream = DeadlineStream {
        socket: stream,
        at: deadline,
    };

    let host = if t.host.contains(':') {
        format!("[{}]", t.host)
    } else {
        t.host.clone()
    };
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: crabnet/{}\r\nConnection: close\r\nContent-Length: {}\r\n",
        t.path,
        t.port,
        env!("CARGO_PKG_VERSION"),
        req.body.len()
    );
    for (k, v) in req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");

    match tls {
        None => exchange(stream, head.as_bytes(), req.body),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(t.host.clone())
                .map_err(|e| format!("bad TLS server name {}: {e}", t.host))?;
            let conn = rustls::ClientConnection::new(config, name)
                .map_err(|e| format!("TLS setup failed: {e}"))?;
            exchange(
                rustls::StreamOwned::new(conn, stream),
                head.as_bytes(),
                req.body,
            )
        }
    }
}

/// A connection whose every read and write must end by `at`: each gets the time left as
/// its socket timeout, and none starts once it is over.
struct DeadlineStream {
    /// The connection.
    socket: TcpStream,
    /// When the delivery must be over.
    at: Instant,
}

impl DeadlineStream {
    /// The time left, or a timeout error once the deadline passed.
    fn left(&self) -> std::io::Result<Duration> {
        let left = self.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the delivery timed out",
            ));
        }
        Ok(left)
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.socket.set_read_timeout(Some(self.left()?))?;
        self.socket.read(buf)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.socket.set_write_timeout(Some(self.left()?))?;
        self.socket.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.socket.flush()
    }
}

/// Writes the request and reads the status line of the answer.
fn exchange(mut stream: impl Read + Write, head: &[u8], body: &[u8]) -> Result<u16, String> {
    stream
        .write_all(head)
        .and_then(|()| stream.write_all(body))
        .and_then(|()| stream.flush())
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        if buf.len() > MAX_HEAD {
            return Err("the answer's status line is too long".into());
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("the receiver closed the connection without an answer".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("cannot read the answer: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let mut parts = line.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => Err(format!(
            "not an HTTP answer: {:?}",
            line.lines().next().unwrap_or("")
        )),
    }
}
