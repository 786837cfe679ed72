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
//! its host went silent for the idle timeout) is dropped from the set.
//!
//! A subscriber is registered when `connect` returns: the publisher opens
//! its stream with a greeting once it has added the subscriber, and
//! `connect` waits for that greeting. Dropping the publisher finishes
//! every stream: subscribers read what was sent, then get
//! [`Error::Closed`]. A subscriber whose publisher vanished connects again
//! on its next receive (to a restarted publisher at the same address, if
//! its certificate still matches the pin; a restarted publisher makes a
//! new certificate unless given the old identity, so in practice this
//! reconnects across broken connections, not across restarts).

use super::conn::{self, Bound, Client, Reader, FIRST_ENVELOPE};
use crate::address::Address;
use crate::envelope::{encode_into, Header, Kind};
use crate::error::{Error, Result};
use crate::frame::{Frame, PeerId};
use crate::options::Options;
use quinn::{Connection, VarInt};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// Messages queued per subscriber beyond what its stream holds.
const QUEUE: usize = 64;
/// How long a finished stream's connection is kept for its subscriber to
/// read the rest after the publisher is dropped.
pub const LINGER: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Sub {
    tx: mpsc::Sender<Arc<Vec<u8>>>,
}

struct PubShared {
    subs: Mutex<Vec<Sub>>,
    joined: Notify,
    id: u64,
    max_peers: usize,
}

/// Publishing end over QUIC.
pub struct QuicPublisher {
    shared: Arc<PubShared>,
    address: Address,
    max_message: usize,
    send_timeout: Option<Duration>,
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
        lock(&self.shared.subs).clear();
    }
}

/// Feeds one subscriber's stream until the publisher closes or the
/// subscriber goes.
async fn writer(shared: Arc<PubShared>, conn: Connection, address: Address, capacity: usize) {
    let mut send = match conn.open_uni().await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(%address, error = %e, "QUIC publisher: cannot open a subscriber's stream");
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<Arc<Vec<u8>>>(QUEUE.min(capacity.max(1)));
    lock(&shared.subs).push(Sub { tx });
    // The greeting: the subscriber is in the set from here on.
    if conn::write(&mut send, Kind::Reply, b"", b"", shared.id, &address)
        .await
        .is_err()
    {
        return;
    }
    shared.joined.notify_waiters();
    while let Some(env) = rx.recv().await {
        if let Err(e) = send.write_all(&env).await {
            tracing::info!(%address, remote = %conn.remote_address(), error = %e, "QUIC publisher: subscriber gone; dropped");
            return;
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
            subs: Mutex::new(Vec::new()),
            joined: Notify::new(),
            id: PeerId::random().0,
            max_peers: opts.max_peers as usize,
        });
        let (s, a, cap) = (shared.clone(), address.clone(), opts.capacity as usize);
        let acceptor = tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let live = lock(&s.subs).iter().filter(|x| !x.tx.is_closed()).count();
                let (s, a) = (s.clone(), a.clone());
                tokio::spawn(async move {
                    if let Some(c) = conn::accept(incoming, live, s.max_peers).await {
                        writer(s, c, a, cap).await;
                    }
                });
            }
        });
        Ok(QuicPublisher {
            shared,
            address,
            max_message: opts.max_message,
            send_timeout: opts.send_timeout,
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
        let h = Header::new(Kind::Message, topic, payload.len(), self.shared.id)?;
        let mut env =
            Vec::with_capacity(crate::envelope::HEADER_LEN + topic.len() + 16 + payload.len());
        encode_into(&h, topic, payload, &mut env);
        let env = Arc::new(env);
        let subs: Vec<mpsc::Sender<Arc<Vec<u8>>>> = lock(&self.shared.subs)
            .iter()
            .map(|s| s.tx.clone())
            .collect();
        let deadline = self.send_timeout.map(|t| Instant::now() + t);
        let mut permits = Vec::with_capacity(subs.len());
        for tx in &subs {
            let room = tx.reserve();
            let p = match deadline {
                None => room.await,
                Some(d) => tokio::time::timeout(d.saturating_duration_since(Instant::now()), room)
                    .await
                    .map_err(|_| Error::Timeout {
                        what: "send (waiting for slow subscribers)",
                        after: self.send_timeout.unwrap_or_default(),
                    })?,
            };
            // A subscriber that is gone has no room to wait for.
            if let Ok(p) = p {
                permits.push(p);
            }
        }
        for p in permits {
            p.send(env.clone());
        }
        lock(&self.shared.subs).retain(|s| !s.tx.is_closed());
        Ok(())
    }

    /// Waits until at least `n` subscribers are connected.
    pub async fn wait_for_subscribers(&mut self, n: u32, timeout: Duration) -> Result<u32> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut joined = pin!(self.shared.joined.notified());
            joined.as_mut().enable();
            let k = {
                let mut subs = lock(&self.shared.subs);
                subs.retain(|s| !s.tx.is_closed());
                subs.len() as u32
            };
            if k >= n {
                return Ok(k);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    what: "waiting for subscribers",
                    after: timeout,
                });
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), joined).await;
        }
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
            match self.reader.next(&address).await {
                Ok(Some(d)) => {
                    if d.header.kind != Kind::Message {
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
                Err(Error::PeerGone { .. }) => {
                    let (client, reader, publisher) =
                        join(&address, &self.opts)
                            .await
                            .map_err(|_| Error::PeerGone {
                                address: address.to_string(),
                            })?;
                    tracing::info!(%address, "QUIC subscriber: connected again");
                    (self.client, self.reader, self.publisher) = (client, reader, publisher);
                }
                Err(e) => return Err(e),
            }
        }
    }
}
