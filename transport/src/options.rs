//! What every endpoint can be told, whatever its wire.

use std::time::Duration;

/// Endpoint options. The defaults suit a few processes exchanging messages
/// of up to a few MiB.
///
/// ```
/// use shoal_transport::Options;
/// let o = Options::default().capacity(4 << 20).max_message(1 << 20);
/// assert_eq!(o.max_message, 1 << 20);
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    /// Ring bytes (shm) or buffer bytes per peer (network). Default 1 MiB.
    pub capacity: u64,
    /// Most subscribers (or pullers) at once. Default 16. Network
    /// listeners take at most this many connections at once for a
    /// publisher (twice as many over nng, whose subscribers redial), and
    /// four times as many for a queue or a replier (pushers, pullers and
    /// requesters); more are closed at once.
    pub max_peers: u32,
    /// Largest payload accepted, sent or received, checked before anything
    /// is allocated for it. Default 64 MiB.
    pub max_message: usize,
    /// How long a send may wait for room (a slow receiver); `None` waits
    /// as long as the receivers live. Default `None`.
    pub send_timeout: Option<Duration>,
    /// How long connecting waits for the address to be bound. Default 10 s.
    pub connect_timeout: Duration,
    /// Network wires: how long a live peer that does not read (a
    /// subscriber, a puller or requester not taking what was sent to it)
    /// may hold this endpoint back before it is dropped, so the others go
    /// on. Default 10 s.
    pub stall_timeout: Duration,
    /// How long a shared-memory receive polls before it parks and lets
    /// the runtime wait for a wake-up. A wake-up through the runtime costs
    /// tens of microseconds; polling catches a reply or the next request
    /// of a busy peer in well under one, at the price of holding the
    /// runtime thread while it polls. Default 50 µs; zero parks at once.
    /// Network receives park at once: over nng, operations complete on
    /// nng's own threads, which need the CPU a polling thread would hold.
    pub spin: Duration,
    /// QUIC: the certificate and key a binding endpoint presents. `None`
    /// (the default) makes a fresh one per bind, so a restarted server has
    /// a new pin; give it the identity it had (see
    /// [`Identity::load`](crate::quic::tls::Identity::load)) and its
    /// clients connect again by themselves.
    #[cfg(feature = "quic")]
    pub identity: Option<std::sync::Arc<crate::quic::tls::Identity>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            capacity: 1 << 20,
            max_peers: 16,
            max_message: 64 << 20,
            send_timeout: None,
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(10),
            spin: Duration::from_micros(50),
            #[cfg(feature = "quic")]
            identity: None,
        }
    }
}

impl Options {
    /// Connections a queue or replier listener takes at once.
    #[cfg_attr(not(any(feature = "nng", feature = "quic")), allow(dead_code))]
    pub(crate) fn listener_conns(&self) -> usize {
        4 * self.max_peers as usize
    }

    /// Sets [`capacity`](Self::capacity).
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }
    /// Sets [`max_peers`](Self::max_peers).
    pub fn max_peers(mut self, n: u32) -> Self {
        self.max_peers = n;
        self
    }
    /// Sets [`max_message`](Self::max_message).
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }
    /// Sets [`send_timeout`](Self::send_timeout).
    pub fn send_timeout(mut self, t: Option<Duration>) -> Self {
        self.send_timeout = t;
        self
    }
    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }
    /// Sets [`stall_timeout`](Self::stall_timeout).
    pub fn stall_timeout(mut self, t: Duration) -> Self {
        self.stall_timeout = t;
        self
    }
    /// Sets [`identity`](Self::identity).
    #[cfg(feature = "quic")]
    pub fn identity(mut self, id: std::sync::Arc<crate::quic::tls::Identity>) -> Self {
        self.identity = Some(id);
        self
    }
    /// Sets [`spin`](Self::spin).
    pub fn spin(mut self, t: Duration) -> Self {
        self.spin = t;
        self
    }
}
