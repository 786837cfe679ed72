//! Just enough of nng's wire format to play a peer by hand over a plain
//! TCP stream (for hostile-peer tests), and of the nng backend's own
//! protocol (`transport/src/nng/proto.rs`) to build its messages.
//!
//! The SP-over-TCP handshake is 8 bytes each way: `0 'S' 'P' 0`, the
//! sender's protocol (u16 big-endian), `0 0`. Then each message is an
//! 8-byte big-endian length and the body. A REQ request's body starts
//! with a 4-byte big-endian request id with the high bit set; the REP
//! answer starts with the same id.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// nng's REQ v0 protocol number.
pub const REQ0: u16 = 0x30;
/// nng's REP v0 protocol number.
pub const REP0: u16 = 0x31;

/// The 8-byte SP handshake of protocol `proto`.
pub fn handshake(proto: u16) -> [u8; 8] {
    let p = proto.to_be_bytes();
    [0, b'S', b'P', 0, p[0], p[1], 0, 0]
}

/// The socket address of an `nng+tcp://HOST:PORT` address.
pub fn socket_addr(a: &shoal_transport::Address) -> SocketAddr {
    let s = a.to_string();
    let hostport = s.strip_prefix("nng+tcp://").expect("an nng+tcp address");
    hostport.parse().expect("HOST:PORT")
}

/// A hand-driven SP connection.
pub struct Sp {
    /// The stream.
    pub s: TcpStream,
}

impl Sp {
    /// A TCP connection to `addr`, nothing sent.
    pub fn raw(addr: SocketAddr) -> std::io::Result<Sp> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        Ok(Sp { s })
    }

    /// A connection to `addr` that has shaken hands as a REQ peer (and
    /// checked the listener's answer).
    pub fn req(addr: SocketAddr) -> std::io::Result<Sp> {
        let mut sp = Sp::raw(addr)?;
        sp.s.write_all(&handshake(REQ0))?;
        sp.s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut h = [0u8; 8];
        sp.s.read_exact(&mut h)?;
        if h != handshake(REP0) {
            return Err(std::io::Error::other(format!("handshake {h:?}")));
        }
        Ok(sp)
    }

    /// Sends one message: its length, big-endian, then `body`.
    pub fn send(&mut self, body: &[u8]) -> std::io::Result<()> {
        let mut m = Vec::with_capacity(8 + body.len());
        m.extend_from_slice(&(body.len() as u64).to_be_bytes());
        m.extend_from_slice(body);
        self.s.write_all(&m)
    }

    /// Sends request `id` (high bit set here) carrying `body`.
    pub fn request(&mut self, id: u32, body: &[u8]) -> std::io::Result<()> {
        let mut m = (id | 0x8000_0000).to_be_bytes().to_vec();
        m.extend_from_slice(body);
        self.send(&m)
    }

    /// Receives one message (the request id first), of at most `limit`
    /// bytes, within `timeout`.
    pub fn recv(&mut self, limit: usize, timeout: Duration) -> std::io::Result<Vec<u8>> {
        self.s.set_read_timeout(Some(timeout))?;
        let mut len = [0u8; 8];
        self.s.read_exact(&mut len)?;
        let n = u64::from_be_bytes(len);
        if n > limit as u64 {
            return Err(std::io::Error::other(format!("{n}-byte message")));
        }
        let mut b = vec![0u8; n as usize];
        self.s.read_exact(&mut b)?;
        Ok(b)
    }

    /// Whether the listener has closed the connection (or it broke),
    /// without reading anything from it.
    pub fn hung_up(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut p = libc::pollfd {
            fd: self.s.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// Whether the listener closes the connection within `timeout`
    /// (whatever it still sends before is read and dropped).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = self.s.set_read_timeout(Some(left));
            match self.s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }
}

/// nng backend ops (`proto.rs`'s `Op`).
pub mod op {
    pub const HELLO: u8 = 1;
    pub const POLL: u8 = 3;
    pub const PUSH: u8 = 7;
    pub const PULL: u8 = 10;
    pub const ASK: u8 = 13;
    pub const ANSWER: u8 = 14;
    pub const ACK: u8 = 15;
}

/// The nng backend's 44-byte control block (version 2).
pub fn control(op: u8, a: u64, b: u64, c: u64) -> Vec<u8> {
    let mut out = vec![0u8; 44];
    out[0..4].copy_from_slice(b"SHNG");
    out[4] = 2;
    out[5] = op;
    out[8..16].copy_from_slice(&a.to_le_bytes());
    out[16..24].copy_from_slice(&b.to_le_bytes());
    out[24..32].copy_from_slice(&c.to_le_bytes());
    out
}

/// A control block, then one envelope of `kind` carrying `payload`,
/// padded as the backend pads it.
pub fn with_envelope(
    ctl: Vec<u8>,
    kind: shoal_transport::Kind,
    payload: &[u8],
    id: u64,
) -> Vec<u8> {
    let mut m = ctl;
    let h = shoal_transport::Header::new(kind, b"", payload.len(), id).unwrap();
    shoal_transport::envelope::encode_into(&h, b"", payload, &mut m);
    m.resize(m.len() + (16 - payload.len() % 16) % 16, 0);
    m
}

/// Parses a control block's op and words (`None`: not one).
pub fn parse_control(m: &[u8]) -> Option<(u8, u64, u64, u64)> {
    if m.len() < 44 || &m[0..4] != b"SHNG" {
        return None;
    }
    let w = |i: usize| u64::from_le_bytes(m[i..i + 8].try_into().unwrap());
    Some((m[5], w(8), w(16), w(24)))
}
