//! Publish/subscribe over QUIC: one unidirectional stream from the
//! publisher to each subscriber, carrying envelopes.
//!
//! Every subscriber's stream is fed by a writer task through a bounded
//! queue; a send first waits for room in every live subscriber's queue
//! (so a cancelled send sent nothing), then hands the message to each.
//! QUIC's flow control holds a writer back while its subscriber does not
//! read, so the slowest subscriber holds the publisher back once its
//! stream window (`capacity` bytes) and queue are full: nothing is
//! dropped. A subscriber whose connection breaks (its process died, or
//! its host went silent for the idle timeout) is dropped from the set, and
//! so is a live one that holds a send back for longer than the stall
//! timeout (its connection is closed; it learns with [`Error::Evicted`]).
//!
//! A subscriber is registered when `connect` returns: the publisher opens
//! its stream with a greeting once it has added the subscriber, and
//! `connect` waits for that greeting. Dropping the publisher finishes
//! every stream: subscribers read what was sent, then get
//! [`Error::Closed`]. A subscriber whose connection broke or was closed by
//! the publisher connects again and reports it once ([`Error::Evicted`]:
//! what was sent meanwhile is lost to it); when it cannot, the receive
//! returns [`Error::PeerGone`] and the next one tries again. A publisher
//! restarted with the identity it had (`Options::identity`, saved with
//! `Identity::save`) keeps its pin, and its subscribers follow it that way;
//! one that makes a fresh certificate has a new pin, which its old
//! subscribers refuse.

use super::conn::{self, Bound, Client, Reader, FIRST_ENVELOPE};
use crate::address::Address;
use crate::envelope::{encode_into, Header, Kind};
use crate::error::{Error, Result};
use crate::frame::{Frame, PeerId};
use crate::options::Options;
use crate::waiting::until_count;
use quinn::{Connection, VarInt};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

/// A message queued for one subscriber, holding its share of that
/// subscriber's room until written.
type Queued = (Arc<crate::recycle::Recycled>, OwnedSemaphorePermit);

/// Bytes a subscriber's stream is given at a time (its progress is noted
/// after each).
const PIECE: usize = 64 << 10;
/// How long a finished stream's connection is kept for its subscriber to
/// read the rest after the publisher is dropped.
pub const LINGER: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Sub {
    tx: mpsc::UnboundedSender<Queued>,
    /// Bytes it may have queued beyond what its stream holds: `capacity`
    /// (or one message), each message charged its envelope and
    /// [`OVERHEAD`]. Messages are shared between subscribers, so the
    /// publisher holds about the slowest one's `capacity` (and one message)
    /// whatever their sizes.
    room: Arc<Semaphore>,
    conn: Connection,
    /// When its writer last got a message onto its stream (or it joined).
    progress: Arc<Mutex<Instant>>,
}

#[derive(Default)]
struct Subs {
    list: Vec<Sub>,
    /// The publisher was dropped: writers joining late finish at once.
    closed: bool,
}

struct PubShared {
    subs: Mutex<Subs>,
    joined: Notify,
    id: u64,
    max_peers: usize,
}

/// Publishing end over QUIC.
pub struct QuicPublisher {
    shared: Arc<PubShared>,
    address: Address,
    max_message: usize,
    capacity: usize,
    send_timeout: Option<Duration>,
    stall_timeout: Duration,
    acceptor: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for QuicPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicPublisher")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Drop for QuicPublisher {
    fn drop(&mut self) {
        self.acceptor.abort();
        // Dropping the senders ends every writer, which finishes its
        // stream after what is queued.
        let mut subs = lock(&self.shared.subs);
        subs.closed = true;
        subs.list.clear();
    }
}

/// Bytes a queued message is charged beyond its envelope (its place in
/// the channel, its permit, its share of the message).
const OVERHEAD: usize = 128;

/// Closes a subscriber's room when its writer ends.
struct Closes(Arc<Semaphore>);

impl Drop for Closes {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Permits (bytes) of a subscriber's room for `capacity`.
fn room_of(capacity: usize) -> usize {
    capacity.clamp(1, u32::MAX as usize)
}

/// Feeds one subscriber's stream until the publisher closes or the
/// subscriber goes.
async fn writer(
    shared: Arc<PubShared>,
    conn: Connection,
    address: Address,
    capacity: usize,
    stall: Duration,
) {
    // A client that grants no stream (or takes no greeting) in time is
    // not a subscriber: its connection, and its slot, go.
    let mut send = match tokio::time::timeout(FIRST_ENVELOPE, conn.open_uni()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%address, error = %e, "QUIC publisher: cannot open a subscriber's stream");
            return;
        }
        Err(_) => {
            tracing::warn!(%address, remote = %conn.remote_address(), "QUIC publisher: a client granted no stream in time; dropped");
            conn.close(VarInt::from_u32(conn::EVICTED), b"no stream");
            return;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Queued>();
    let room = Arc::new(Semaphore::new(room_of(capacity)));
    // However this writer ends, a send waiting for its room stops waiting.
    let _closes = Closes(room.clone());
    let progress = Arc::new(Mutex::new(Instant::now()));
    {
        let mut subs = lock(&shared.subs);
        if subs.closed {
            let _ = send.finish();
            return;
        }
        subs.list.push(Sub {
            tx,
            room,
            conn: conn.clone(),
            progress: progress.clone(),
        });
    }
    // The greeting: the subscriber is in the set from here on.
    let greeting = conn::write(&mut send, Kind::Reply, b"", b"", shared.id, &address);
    if !matches!(
        tokio::time::timeout(FIRST_ENVELOPE, greeting).await,
        Ok(Ok(()))
    ) {
        conn.close(VarInt::from_u32(conn::EVICTED), b"no greeting");
        return;
    }
    shared.joined.notify_waiters();
    loop {
        let (env, _room) = match rx.try_recv() {
            Ok(m) => m,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                let Some(m) = rx.recv().await else { break };
                // It had taken everything: its stall clock starts now, not
                // when it last wrote (an idle subscriber is not stalled).
                *lock(&progress) = Instant::now();
                m
            }
        };
        // In pieces, progress noted after each: a large message to a
        // subscriber on a slow link takes long, but it is reading. A piece
        // it does not take within the stall timeout ends it (also once the
        // publisher is gone, when no send looks at its clock any more).
        // Handed to quinn as they are (shared, not copied again).
        let whole = conn::shared_bytes(&env);
        let mut at = 0;
        while at < whole.len() {
            let piece = whole.slice(at..(at + PIECE).min(whole.len()));
            at += piece.len();
            match tokio::time::timeout(stall, send.write_chunk(piece)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::info!(%address, remote = %conn.remote_address(), error = %e, "QUIC publisher: subscriber gone; dropped");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%address, remote = %conn.remote_address(), ?stall, "QUIC publisher: a subscriber took nothing for the stall timeout; dropped");
                    conn.close(VarInt::from_u32(conn::EVICTED), b"stalled");
                    return;
                }
            }
            *lock(&progress) = Instant::now();
        }
    }
    // Closed: finish, and give the subscriber time to read the rest.
    let _ = send.finish();
    let _ = tokio::time::timeout(LINGER, conn.closed()).await;
    conn.close(VarInt::from_u32(conn::CLOSED), b"closed");
}

impl QuicPublisher {
    /// Binds a publisher at `address` (`quic://HOST:PORT`, port 0 for any;
    /// no pin: [`address`](Self::address) gives the one to connect with).
    pub async fn bind(address: &Address, opts: &Options) -> Result<QuicPublisher> {
        let Bound { endpoint, address } = conn::bind(address, opts).await?;
        let shared = Arc::new(PubShared {
            subs: Mutex::new(Subs::default()),
            joined: Notify::new(),
            id: PeerId::random().0,
            max_peers: opts.max_peers as usize,
        });
        let (s, a, cap) = (shared.clone(), address.clone(), opts.capacity as usize);
        let stall = opts.stall_timeout;
        let slots = conn::Slots::default();
        let acceptor = tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let (s, a, slots) = (s.clone(), a.clone(), slots.clone());
                tokio::spawn(async move {
                    if let Some((c, _slot)) = conn::accept(incoming, &slots, s.max_peers).await {
                        writer(s, c, a, cap, stall).await;
                    }
                });
            }
        });
        Ok(QuicPublisher {
            shared,
            address,
            max_message: opts.max_message,
            capacity: opts.capacity as usize,
            send_timeout: opts.send_timeout,
            stall_timeout: opts.stall_timeout,
            acceptor,
        })
    }

    /// The address to connect to: the bound port and the certificate pin.
    pub fn address(&self) -> Address {
        self.address.clone()
    }

    /// Sends `payload` under `topic` to every subscriber, waiting for room
    /// at the slowest (up to the send timeout).
    pub async fn send(&mut self, topic: &[u8], payload: &[u8]) -> Result<()> {
        if payload.len() > self.max_message {
            return Err(Error::TooLarge {
                what: "payload",
                got: payload.len() as u64,
                limit: self.max_message as u64,
            });
        }
        // A send that finds room awaits nothing; a loop of them (with no
        // subscriber, say) would never give the runtime back.
        tokio::task::coop::consume_budget().await;
        let h = Header::new(Kind::Message, topic, payload.len(), self.shared.id)?;
        let mut env = crate::recycle::Recycled::with_capacity(
            crate::envelope::HEADER_LEN + topic.len() + 16 + payload.len(),
        );
        encode_into(&h, topic, payload, &mut env);
        let env = Arc::new(env);
        type Entry = (
            mpsc::UnboundedSender<Queued>,
            Arc<Semaphore>,
            Connection,
            Arc<Mutex<Instant>>,
        );
        let subs: Vec<Entry> = lock(&self.shared.subs)
            .list
            .iter()
            .map(|s| {
                (
                    s.tx.clone(),
                    s.room.clone(),
                    s.conn.clone(),
                    s.progress.clone(),
                )
            })
            .collect();
        // Its share of a subscriber's room: its bytes, or all the room for
        // one larger than that.
        let need = (env.len() + OVERHEAD).clamp(1, room_of(self.capacity)) as u32;
        let deadline = self.send_timeout.map(|t| Instant::now() + t);
        // A subscriber is stalled when its stream has taken nothing for
        // the stall timeout (slow but reading is waited for); N stalled
        // subscribers are found after one stall timeout, not N. Stall
        // eviction comes before the send's own deadline, so a send timeout
        // shorter than the stall timeout cannot keep a stalled subscriber.
        let mut permits = Vec::with_capacity(subs.len());
        for (tx, room, conn, progress) in &subs {
            loop {
                let stall = *lock(progress) + self.stall_timeout;
                let until = deadline.map_or(stall, |d| d.min(stall));
                let left = until.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, room.clone().acquire_many_owned(need)).await {
                    Ok(Ok(p)) => {
                        permits.push((tx.clone(), p));
                        break;
                    }
                    // Gone (its writer ended): no room to wait for.
                    Ok(Err(_)) => break,
                    Err(_) if lock(progress).elapsed() >= self.stall_timeout => {
                        tracing::warn!(address = %self.address, remote = %conn.remote_address(), stall = ?self.stall_timeout, "QUIC publisher: a subscriber held sends back past the stall timeout; dropped");
                        conn.close(VarInt::from_u32(conn::EVICTED), b"stalled");
                        lock(&self.shared.subs)
                            .list
                            .retain(|s| !s.tx.same_channel(tx));
                        break;
                    }
                    Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => {
                        return Err(Error::Timeout {
                            what: "send (waiting for slow subscribers)",
                            after: self.send_timeout.unwrap_or_default(),
                        })
                    }
                    Err(_) => continue,
                }
            }
        }
        for (tx, p) in permits {
            let _ = tx.send((env.clone(), p));
        }
        lock(&self.shared.subs).list.retain(|s| !s.tx.is_closed());
        Ok(())
    }

    /// Waits until at least `n` subscribers are connected.
    pub async fn wait_for_subscribers(&mut self, n: u32, timeout: Duration) -> Result<u32> {
        let shared = &self.shared;
        let count = || {
            let mut subs = lock(&shared.subs);
            subs.list.retain(|s| !s.tx.is_closed());
            subs.list.len() as u32
        };
        until_count(&shared.joined, count, n, timeout, "waiting for subscribers").await
    }
}

/// Subscribing end over QUIC.
pub struct QuicSubscriber {
    client: Client,
    reader: Reader,
    publisher: u64,
    prefixes: Vec<Vec<u8>>,
    opts: Options,
    closed: bool,
    /// The connection was dropped for bad data: connect again first.
    broken: bool,
}

impl std::fmt::Debug for QuicSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicSubscriber")
            .field("address", &self.client.address)
            .finish_non_exhaustive()
    }
}

impl Drop for QuicSubscriber {
    fn drop(&mut self) {
        self.client
            .conn
            .close(VarInt::from_u32(conn::CLOSED), b"subscriber dropped");
    }
}

/// Connects and waits for the publisher's greeting.
async fn join(address: &Address, opts: &Options) -> Result<(Client, Reader, u64)> {
    let client = conn::connect(address, opts).await?;
    let recv = tokio::time::timeout(FIRST_ENVELOPE, client.conn.accept_uni())
        .await
        .map_err(|_| Error::Timeout {
            what: "waiting for the publisher's stream",
            after: FIRST_ENVELOPE,
        })?
        .map_err(|e| conn::lost(&e, address))?;
    let mut reader = Reader::new(recv, opts.max_message);
    let hello = reader.expect(Kind::Reply, FIRST_ENVELOPE, address).await?;
    Ok((client, reader, hello.header.id))
}

impl QuicSubscriber {
    /// Connects to the publisher at `address` (with its pin); it receives
    /// everything sent once this returns.
    pub async fn connect(address: &Address, opts: &Options) -> Result<QuicSubscriber> {
        let (client, reader, publisher) = join(address, opts).await?;
        Ok(QuicSubscriber {
            client,
            reader,
            publisher,
            prefixes: Vec::new(),
            opts: opts.clone(),
            closed: false,
            broken: false,
        })
    }

    /// Receives only topics starting with `prefix` (several: any of them;
    /// none: everything).
    pub fn subscribe(&mut self, prefix: &[u8]) {
        self.prefixes.push(prefix.to_vec());
    }

    /// The next message under a subscribed topic; [`Error::Closed`] once
    /// the publisher closed and everything was received;
    /// [`Error::PeerGone`] when the connection broke and could not be made
    /// again within the connect timeout (the next receive tries again).
    pub async fn recv(&mut self) -> Result<Frame<'static>> {
        loop {
            if self.closed {
                return Err(Error::Closed);
            }
            let address = self.client.address.clone();
            if self.broken {
                self.rejoin(&address).await?;
                self.broken = false;
            }
            match self.reader.next(&address).await {
                Ok(Some(d)) => {
                    if d.header.kind != Kind::Message {
                        self.drop_connection();
                        return Err(Error::Corrupt {
                            what: "envelope kind from a publisher",
                            found: d.header.kind as u64,
                            expected: "1 (message)",
                        });
                    }
                    if self.prefixes.is_empty()
                        || self.prefixes.iter().any(|p| d.topic().starts_with(p))
                    {
                        let peer = self.publisher;
                        return Ok(d.into_frame()?.with_peer(peer));
                    }
                }
                Ok(None) | Err(Error::Closed) => {
                    self.closed = true;
                }
                Err(Error::PeerGone { .. } | Error::Evicted { .. }) => {
                    // Connected again, but what was sent meanwhile is lost
                    // to this subscriber: said once, not silently.
                    self.rejoin(&address).await?;
                    return Err(Error::Evicted {
                        address: address.to_string(),
                    });
                }
                Err(e) => {
                    // Malformed or oversized data: the stream cannot be
                    // resynchronised; the next receive connects again.
                    self.drop_connection();
                    return Err(e);
                }
            }
        }
    }

    /// Closes the connection after bad data from the publisher.
    fn drop_connection(&mut self) {
        self.client
            .conn
            .close(VarInt::from_u32(conn::BAD_DATA), b"bad data");
        self.broken = true;
    }

    /// Connects again; [`Error::PeerGone`] when that fails.
    async fn rejoin(&mut self, address: &Address) -> Result<()> {
        let (client, reader, publisher) =
            join(address, &self.opts)
                .await
                .map_err(|_| Error::PeerGone {
                    address: address.to_string(),
                })?;
        tracing::info!(%address, "QUIC subscriber: connected again");
        (self.client, self.reader, self.publisher) = (client, reader, publisher);
        Ok(())
    }
}
