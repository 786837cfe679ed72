//! QUIC endpoints and streams as the patterns use them: binding with a
//! fresh pinned identity, connecting with a deadline and a pin, limits on
//! what a peer may open, and envelopes read from and written to streams.

use super::tls::{client_config, Identity};
use crate::address::{Address, Host};
use crate::envelope::{encode_into, Decoded, Decoder, Header, Kind};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::recycle::Recycled;
use quinn::{Connection, ConnectionError, Endpoint, ReadError, RecvStream, SendStream, VarInt};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Streams a peer may have open at once on one connection (quinn's own
/// default): the credit it is given. quinn gives credit back in steps of
/// an eighth of this, a MAX_STREAMS frame that, queued as a stream is
/// retired, often leaves in a packet of its own (which the peer
/// acknowledges): at 16, a requester asking back to back (one stream per
/// exchange) sent 0.55 packets more per exchange than at 100 (3441
/// against 2789 sendmsg over 1000 exchanges), and its 64 B round trip
/// was 1.48x raw quinn's instead of 1.16x. How many of a
/// connection's streams are read at once is [`SERVED`]'s to bound.
pub const MAX_STREAMS: u32 = 100;
/// Streams of one connection served at once (the others wait, their
/// bytes in quinn's buffers, within the connection's receive window, give
/// or take quinn's own slack): what a peer's streams can make this side
/// hold, a message each of up to the largest size while it is decoded,
/// queued or answered, stays this many messages per connection, whatever
/// the stream credit. (Replies handed to quinn and not yet read are
/// bounded by quinn's flow control instead.)
pub const SERVED: u32 = 16;
/// A connection with no traffic for this long is dead (keep-alives flow
/// every [`KEEP_ALIVE`] while both ends live).
pub const IDLE: Duration = Duration::from_secs(5);
/// Keep-alive interval.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// Longest a peer may take to send an envelope once it began (the first
/// of a stream: once the stream opened).
pub const FIRST_ENVELOPE: Duration = Duration::from_secs(10);
/// The TLS alert a handshake ends with when the two ends share no ALPN.
const NO_APPLICATION_PROTOCOL: u8 = 120;
/// Application close code of a clean close.
pub const CLOSED: u32 = 0;
/// Application close code of a peer dropped for holding the others back.
pub const EVICTED: u32 = 2;
/// Application close code of a peer dropped for sending malformed data.
pub const BAD_DATA: u32 = 3;
/// Application close code of a connection closed for doing nothing for
/// the stall timeout: at two looks a stall timeout apart, no stream in
/// progress and no exchange begun or ended in between (a client
/// reconnects on its next use).
pub const IDLE_CLOSE: u32 = 4;

/// Whether `conn` was closed by its server for being idle
/// ([`IDLE_CLOSE`]).
pub(crate) fn closed_idle(conn: &Connection) -> bool {
    matches!(conn.close_reason(), Some(ConnectionError::ApplicationClosed(c)) if c.error_code == VarInt::from_u32(IDLE_CLOSE))
}

/// A stream in progress, as [`streams`] hands it to `serve`: while it
/// lives, the stream counts as in progress (its connection is not idle)
/// and holds one of its connection's [`SERVED`] turns. Whoever answers
/// the stream keeps it until the answer is handed to quinn (a request
/// waiting for a slow replier keeps its connection; a reply that does not
/// fit in the asker's receive window keeps its turn until it does, or
/// until the stall timeout resets its stream).
///
/// A stream that carries many exchanges gives its turn back between two
/// ([`pause`](Self::pause)) and waits for one again when the next begins
/// ([`Paused::resume`]). Replies handed over and not yet read are then
/// bounded by quinn's flow control: the asker's receive window, and the
/// connection's send window.
pub(crate) struct InProgress {
    open: Arc<Activity>,
    turns: Arc<tokio::sync::Semaphore>,
    _turn: tokio::sync::OwnedSemaphorePermit,
}

/// A stream between two exchanges: no turn, not in progress (the
/// connection may be closed as idle meanwhile).
pub(crate) struct Paused {
    open: std::sync::Weak<Activity>,
    turns: Arc<tokio::sync::Semaphore>,
}

/// What [`streams`] knows of its connection's streams: the strong count
/// of the `Arc` holding it is one plus the streams in progress.
#[derive(Default)]
struct Activity(std::sync::Mutex<Tally>);

#[derive(Default)]
struct Tally {
    /// Exchanges begun or ended: a connection whose streams did something
    /// since the last look is not idle, even if none is in progress at
    /// the moment.
    changes: u64,
    /// Closed as idle: no exchange begins any more (so a request never
    /// runs on a connection its asker will find closed as idle, and asks
    /// again on another).
    closed: bool,
}

impl Activity {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        // A panic while the lock is held leaves a tally that is still
        // whole (two plain fields).
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts an exchange begun or ended; `false` once closed as idle.
    fn mark(&self) -> bool {
        let mut t = self.tally();
        t.changes += 1;
        !t.closed
    }
}

impl InProgress {
    /// Gives the turn back until [`Paused::resume`]. The end of the
    /// exchange counts as the connection's activity: it is closed as idle
    /// a whole stall timeout after it at the earliest, time for the reply
    /// handed to quinn to reach the asker.
    pub fn pause(self) -> Paused {
        self.open.mark();
        Paused {
            open: Arc::downgrade(&self.open),
            turns: self.turns.clone(),
        }
    }
}

impl Paused {
    /// Takes the stream's next exchange in progress and waits for a turn
    /// for it; `None` once the connection's streams are no longer served
    /// (it ended, or was closed as idle).
    pub async fn resume(self) -> Option<InProgress> {
        let open = self.open.upgrade()?;
        if !open.mark() {
            return None;
        }
        let turn = self.turns.clone().acquire_owned().await.ok()?;
        Some(InProgress {
            open,
            turns: self.turns,
            _turn: turn,
        })
    }
}

/// Accepts the streams a client opens on `conn` until it ends, each
/// served on a task of its own, [`SERVED`] at a time: a stream's task
/// waits for a turn before it calls `serve`, and the turn goes with the
/// [`InProgress`] token. A connection closed as idle ([`IDLE_CLOSE`]) is
/// one that, at a look every `idle`, had no stream in progress and had
/// begun or ended no exchange since the look before (a peer that
/// connects and sends nothing: at the first look, after `idle`); a
/// stream waiting for its turn is in progress.
pub(crate) async fn streams<F, Fut>(conn: Connection, idle: Duration, address: &Address, serve: F)
where
    F: Fn(SendStream, RecvStream, InProgress) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let open = Arc::new(Activity::default());
    let turns = Arc::new(tokio::sync::Semaphore::new(SERVED as usize));
    let serve = Arc::new(serve);
    let mut seen = 0;
    loop {
        match tokio::time::timeout(idle, conn.accept_bi()).await {
            Ok(Ok((mut send, recv))) => {
                // Counted in progress from here (the strong count).
                let (serve, turns, open) = (serve.clone(), turns.clone(), open.clone());
                tokio::spawn(async move {
                    match turns.clone().acquire_owned().await {
                        Ok(turn) => {
                            // Never closed yet: the strong count taken
                            // above keeps the idle look from closing.
                            open.mark();
                            let token = InProgress {
                                open,
                                turns,
                                _turn: turn,
                            };
                            serve(send, recv, token).await;
                        }
                        // Never closed; were it, the stream is reset (a
                        // dropped SendStream would end it cleanly).
                        Err(_) => {
                            let _ = send.reset(VarInt::from_u32(1));
                        }
                    }
                });
            }
            Ok(Err(_)) => return,
            Err(_) => {
                // Under the tally's lock, so that a paused stream either
                // resumed before (and counts) or finds the connection
                // closed and does not begin its exchange.
                // The close is issued under the lock too: a stream that
                // then finds the connection closed resets only after it,
                // so its asker sees the idle close (and asks again), not
                // a reset stream.
                let mut t = open.tally();
                if Arc::strong_count(&open) == 1 && t.changes == seen {
                    t.closed = true;
                    conn.close(VarInt::from_u32(IDLE_CLOSE), b"idle");
                    drop(t);
                    tracing::info!(%address, remote = %conn.remote_address(), ?idle, "QUIC: a peer began nothing for the stall timeout; connection closed");
                    return;
                }
                seen = t.changes;
            }
        }
    }
}

pub(crate) fn io(what: impl Into<String>, e: impl std::fmt::Display) -> Error {
    Error::Io {
        what: what.into(),
        source: std::io::Error::other(e.to_string()),
    }
}

fn parts(address: &Address) -> Result<(&Host, u16, Option<[u8; 32]>)> {
    match address {
        Address::Quic { host, port, pin } => Ok((host, *port, *pin)),
        other => Err(Error::BadAddress {
            address: other.to_string(),
            why: "the QUIC backend takes quic:// addresses".into(),
        }),
    }
}

/// The socket address of `host:port` (a name is looked up).
async fn resolve(address: &Address, host: &Host, port: u16) -> Result<SocketAddr> {
    match host {
        Host::V4(ip) => Ok(SocketAddr::new(IpAddr::V4(*ip), port)),
        Host::V6(ip) => Ok(SocketAddr::new(IpAddr::V6(*ip), port)),
        Host::Name(n) => tokio::net::lookup_host((n.as_str(), port))
            .await
            .map_err(|e| io(format!("looking up {n}"), e))?
            .next()
            .ok_or_else(|| Error::BadAddress {
                address: address.to_string(),
                why: format!("{n} has no address"),
            }),
    }
}

/// An encoded envelope handed to quinn without copying it: quinn sends
/// from where it was encoded, holding it (shared) until it is sent.
pub(crate) fn shared_bytes(env: &Arc<Recycled>) -> bytes::Bytes {
    bytes::Bytes::from_owner(SharedEnv(env.clone()))
}

/// See [`shared_bytes`].
struct SharedEnv(Arc<Recycled>);

impl AsRef<[u8]> for SharedEnv {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn transport(opts: &Options) -> Arc<quinn::TransportConfig> {
    let window = VarInt::from_u64(opts.capacity.clamp(64 << 10, 1 << 30)).unwrap_or(VarInt::MAX);
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE).ok())
        .keep_alive_interval(Some(KEEP_ALIVE))
        .stream_receive_window(window)
        .receive_window(
            VarInt::from_u64(window.into_inner().saturating_mul(4)).unwrap_or(VarInt::MAX),
        )
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(2));
    Arc::new(t)
}

/// A bound endpoint: its identity's pin is in [`address`](Self::address).
pub(crate) struct Bound {
    pub endpoint: Endpoint,
    pub address: Address,
}

/// Binds a server endpoint at `address` with a fresh self-signed
/// certificate; the address returned carries the bound port and the pin.
pub(crate) async fn bind(address: &Address, opts: &Options) -> Result<Bound> {
    let (host, port, pin) = parts(address)?;
    if pin.is_some() {
        return Err(Error::BadAddress {
            address: address.to_string(),
            why: "a binding address takes no pin: the endpoint makes its own certificate, \
                  and its address() gives the pin to connect with"
                .into(),
        });
    }
    let sa = resolve(address, host, port).await?;
    let fresh;
    let id = match &opts.identity {
        Some(id) => &**id,
        None => {
            fresh = Identity::generate()?;
            &fresh
        }
    };
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(id.server_config()?)
        .map_err(|e| io("QUIC server configuration", e))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport(opts));
    let endpoint = Endpoint::server(cfg, sa).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            Error::AddrInUse {
                address: address.to_string(),
            }
        } else {
            io(format!("binding {address}"), e)
        }
    })?;
    let local = endpoint
        .local_addr()
        .map_err(|e| io("reading the bound address", e))?;
    Ok(Bound {
        endpoint,
        address: Address::Quic {
            host: host.clone(),
            port: local.port(),
            pin: Some(id.pin()),
        },
    })
}

/// Counts a binder's connections, handshakes in progress included.
#[derive(Debug, Default, Clone)]
pub(crate) struct Slots(Arc<std::sync::atomic::AtomicUsize>);

/// One counted connection; uncounted when dropped.
pub(crate) struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Takes an incoming connection: refused when `max` are already counted
/// in `slots` (handshakes in progress included), dropped when its
/// handshake does not finish in time. The slot is held until the
/// returned [`Slot`] drops.
pub(crate) async fn accept(
    incoming: quinn::Incoming,
    slots: &Slots,
    max: usize,
) -> Option<(Connection, Slot)> {
    // Once half the slots are taken, a client must first prove it owns
    // its address (a QUIC Retry: one more round trip), so spoofed Initial
    // packets cannot hold slots through their handshake timeout.
    if slots.0.load(std::sync::atomic::Ordering::Acquire) >= max / 2
        && !incoming.remote_address_validated()
        && incoming.may_retry()
    {
        let _ = incoming.retry();
        return None;
    }
    let n = slots.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let slot = Slot(slots.0.clone());
    if n >= max {
        tracing::warn!(remote = %incoming.remote_address(), live = n, "QUIC: too many connections; refusing one");
        incoming.refuse();
        return None;
    }
    match tokio::time::timeout(FIRST_ENVELOPE, incoming).await {
        Ok(Ok(c)) => Some((c, slot)),
        Ok(Err(e)) => {
            tracing::info!(error = %e, "QUIC: handshake failed");
            None
        }
        Err(_) => {
            tracing::info!("QUIC: handshake too slow; dropped");
            None
        }
    }
}

/// A client connection and the endpoint under it.
pub(crate) struct Client {
    /// Held for the connection's life.
    pub _endpoint: Endpoint,
    pub conn: Connection,
    pub address: Address,
}

/// Connects to `address`, whose pin names the server certificate to
/// trust; retries until `connect_timeout` ([`Error::NotBound`]). A server
/// whose certificate does not match the pin is refused at once.
pub(crate) async fn connect(address: &Address, opts: &Options) -> Result<Client> {
    let (host, port, pin) = parts(address)?;
    let Some(pin) = pin else {
        return Err(Error::BadAddress {
            address: address.to_string(),
            why: "connecting needs the server's certificate pin: quic://HOST:PORT?pin=SHA256HEX \
                  (the binding endpoint's address() has it)"
                .into(),
        });
    };
    let sa = resolve(address, host, port).await?;
    let local: SocketAddr = match sa {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let endpoint = Endpoint::client(local).map_err(|e| io("opening a QUIC client endpoint", e))?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_config(pin)?)
        .map_err(|e| io("QUIC client configuration", e))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport(opts));
    let deadline = Instant::now() + opts.connect_timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::NotBound {
                address: address.to_string(),
            });
        }
        let attempt = endpoint
            .connect_with(cfg.clone(), sa, "shoal")
            .map_err(|e| io(format!("connecting to {address}"), e))?;
        match tokio::time::timeout(left, attempt).await {
            Ok(Ok(conn)) => {
                return Ok(Client {
                    _endpoint: endpoint,
                    conn,
                    address: address.clone(),
                })
            }
            // The TLS alert no_application_protocol (120), raised by
            // either side: the ALPNs differ, so the peer is another
            // version of shoal (or not shoal at all).
            Ok(Err(e)) if no_common_protocol(&e) => {
                return Err(Error::Io {
                    what: format!(
                        "connecting to {address}: the server speaks another protocol version \
                         (its ALPN is not {}): shoal builds of different versions do not talk",
                        String::from_utf8_lossy(super::tls::ALPN)
                    ),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "no application protocol in common",
                    ),
                })
            }
            Ok(Err(ConnectionError::TransportError(e)))
                if e.code.to_string().contains("crypto")
                    || e.to_string().contains("certificate") =>
            {
                return Err(Error::Io {
                    what: format!(
                        "connecting to {address}: the server's certificate does not match the pin"
                    ),
                    source: std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        e.to_string(),
                    ),
                })
            }
            Ok(Err(e)) => {
                tracing::debug!(%address, error = %e, "QUIC: connect attempt failed; retrying");
                tokio::time::sleep(Duration::from_millis(20).min(left)).await;
            }
            Err(_) => {
                return Err(Error::NotBound {
                    address: address.to_string(),
                })
            }
        }
    }
}

/// Whether a handshake ended for want of an ALPN both ends speak.
fn no_common_protocol(e: &ConnectionError) -> bool {
    let code = match e {
        ConnectionError::TransportError(e) => e.code,
        ConnectionError::ConnectionClosed(c) => c.error_code,
        _ => return false,
    };
    code == quinn::TransportErrorCode::crypto(NO_APPLICATION_PROTOCOL)
}

/// Connects `client` again if its connection broke (or was closed as
/// idle); [`Error::PeerGone`] when that fails.
pub(crate) async fn reconnect_if_lost(client: &mut Client, opts: &Options) -> Result<()> {
    if client.conn.close_reason().is_some() {
        let a = client.address.clone();
        *client = connect(&a, opts).await.map_err(|_| Error::PeerGone {
            address: a.to_string(),
        })?;
        tracing::info!(address = %a, "QUIC: connected again");
    }
    Ok(())
}

/// What a broken connection means to the caller.
pub(crate) fn lost(e: &ConnectionError, address: &Address) -> Error {
    match e {
        ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(CLOSED) => {
            Error::Closed
        }
        ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(EVICTED) => {
            Error::Evicted {
                address: address.to_string(),
            }
        }
        ConnectionError::LocallyClosed => Error::Closed,
        _ => Error::PeerGone {
            address: address.to_string(),
        },
    }
}

fn read_err(e: ReadError, address: &Address) -> Error {
    match e {
        ReadError::ConnectionLost(c) => lost(&c, address),
        ReadError::Reset(_) | ReadError::ClosedStream => Error::PeerGone {
            address: address.to_string(),
        },
        e => io(format!("reading from {address}"), e),
    }
}

pub(crate) fn write_err(e: quinn::WriteError, address: &Address) -> Error {
    match e {
        quinn::WriteError::ConnectionLost(c) => lost(&c, address),
        quinn::WriteError::Stopped(_) | quinn::WriteError::ClosedStream => Error::PeerGone {
            address: address.to_string(),
        },
        e => io(format!("writing to {address}"), e),
    }
}

/// Envelopes read from a stream, whatever its chunks; the size limit is
/// enforced by the decoder before it allocates.
pub(crate) struct Reader {
    pub recv: RecvStream,
    dec: Decoder,
    /// Chunks read and not yet all fed: `chunks[at..filled]`. Read
    /// several at a time, each read taking the connection's lock once
    /// instead of once per packet's chunk.
    chunks: [bytes::Bytes; CHUNKS],
    at: usize,
    filled: usize,
}

/// Chunks one read of a [`Reader`] takes at most.
const CHUNKS: usize = 16;

impl Reader {
    pub fn new(recv: RecvStream, max_message: usize) -> Reader {
        let max_body = u32::try_from(max_message.saturating_add(crate::envelope::MAX_TOPIC + 16))
            .unwrap_or(u32::MAX);
        Reader {
            recv,
            dec: Decoder::new(max_body),
            chunks: Default::default(),
            at: 0,
            filled: 0,
        }
    }

    /// Bytes read from the stream and not yet fed to the decoder.
    fn unfed(&self) -> usize {
        self.chunks[self.at..self.filled]
            .iter()
            .map(|c| c.len())
            .sum()
    }

    /// The next envelope; `None` when the stream ended cleanly between
    /// two. Cancel-safe: a cancelled call loses nothing.
    pub async fn next(&mut self, address: &Address) -> Result<Option<Decoded>> {
        loop {
            while self.at < self.filled {
                let chunk = &mut self.chunks[self.at];
                while !chunk.is_empty() {
                    let (used, m) = self.dec.feed(chunk)?;
                    let _ = chunk.split_to(used);
                    if let Some(m) = m {
                        return Ok(Some(m));
                    }
                }
                self.at += 1;
            }
            match self.recv.read_chunks(&mut self.chunks).await {
                Ok(Some(n)) => {
                    self.at = 0;
                    self.filled = n;
                }
                Ok(None) if self.dec.buffered() == 0 => return Ok(None),
                Ok(None) => {
                    return Err(Error::Corrupt {
                        what: "stream end inside an envelope (bytes held)",
                        found: self.dec.buffered() as u64,
                        expected: "0 (a stream ends between envelopes)",
                    })
                }
                Err(e) => return Err(read_err(e, address)),
            }
        }
    }

    /// Waits until the stream has bytes not yet decoded (`true`), or
    /// ended cleanly between two envelopes (`false`); holds at most one
    /// read's chunks meanwhile. Cancel-safe.
    pub async fn fill(&mut self, address: &Address) -> Result<bool> {
        if self.unfed() + self.dec.buffered() != 0 {
            return Ok(true);
        }
        match self.recv.read_chunks(&mut self.chunks).await {
            Ok(Some(n)) => {
                self.at = 0;
                self.filled = n;
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(read_err(e, address)),
        }
    }

    /// The next envelope, which must come within `within` and be of
    /// `kind`; the end of the stream is an error here.
    pub async fn expect(
        &mut self,
        kind: Kind,
        within: Duration,
        address: &Address,
    ) -> Result<Decoded> {
        let d = tokio::time::timeout(within, self.next(address))
            .await
            .map_err(|_| Error::Timeout {
                what: "waiting for a peer's envelope",
                after: within,
            })??
            // The peer ended the stream without the envelope: it closed.
            .ok_or(Error::Closed)?;
        if d.header.kind != kind {
            return Err(Error::Corrupt {
                what: "envelope kind",
                found: d.header.kind as u64,
                expected: "the kind this exchange carries",
            });
        }
        Ok(d)
    }
}

impl Reader {
    /// Reads the end of the stream, which must follow at once: a stream
    /// dropped before its end is read makes quinn ask the peer to stop
    /// sending (one more packet each way per exchange).
    pub async fn end(&mut self, within: Duration, address: &Address) -> Result<()> {
        let held = self.unfed() + self.dec.buffered();
        if held != 0 {
            return Err(Error::Corrupt {
                what: "bytes after the exchange's last envelope",
                found: held as u64,
                expected: "0",
            });
        }
        match tokio::time::timeout(within, self.recv.read_chunk(usize::MAX, true)).await {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(c))) => Err(Error::Corrupt {
                what: "bytes after the exchange's last envelope",
                found: c.bytes.len() as u64,
                expected: "0",
            }),
            Ok(Err(e)) => Err(read_err(e, address)),
            Err(_) => Err(Error::Timeout {
                what: "waiting for a peer to end its stream",
                after: within,
            }),
        }
    }
}

/// Writes one envelope to `send`.
pub(crate) async fn write(
    send: &mut SendStream,
    kind: Kind,
    topic: &[u8],
    payload: &[u8],
    id: u64,
    address: &Address,
) -> Result<()> {
    let h = Header::new(kind, topic, payload.len(), id)?;
    // quinn copies what it is given to write: a large payload goes to it
    // as it is, after its header, instead of being copied into one buffer
    // with the header first.
    let whole = payload.len() <= SEPARATE_PAYLOAD;
    let mut buf = Vec::with_capacity(
        crate::envelope::HEADER_LEN + topic.len() + 16 + if whole { payload.len() } else { 0 },
    );
    if whole {
        encode_into(&h, topic, payload, &mut buf);
    } else {
        crate::envelope::encode_head_into(&h, topic, &mut buf);
    }
    send.write_all(&buf)
        .await
        .map_err(|e| write_err(e, address))?;
    if !whole {
        send.write_all(payload)
            .await
            .map_err(|e| write_err(e, address))?;
    }
    Ok(())
}

/// Payloads above this many bytes are written apart from their header.
const SEPARATE_PAYLOAD: usize = 16 << 10;

/// A stream's sending half that is reset, not finished, if dropped before
/// [`done`](Self::done): a cancelled exchange leaves the peer a reset
/// stream, never a complete message it might act on.
pub(crate) struct Outgoing {
    pub send: SendStream,
    finished: bool,
}

impl Outgoing {
    pub fn new(send: SendStream) -> Outgoing {
        Outgoing {
            send,
            finished: false,
        }
    }
    /// Finishes the stream cleanly.
    pub fn done(mut self) {
        self.finished = true;
        let _ = self.send.finish();
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.send.reset(VarInt::from_u32(1));
        }
    }
}
