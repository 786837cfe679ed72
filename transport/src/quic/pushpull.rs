//! Push/pull over QUIC: a work queue held by the binding puller; every
//! push and every remote pull is one bidirectional stream.
//!
//! - Push: the pusher writes its message; the queue answers once the
//!   message is queued (it waits for room, unless the pusher gives up
//!   first: a stream the pusher abandoned is never queued).
//! - Remote pull: the puller asks; the queue sends the head item and
//!   waits for the puller's acknowledgement on the same stream. An item
//!   whose stream breaks before the acknowledgement (the receive was
//!   cancelled, or the puller died) goes back to the head of the queue, so
//!   nothing is lost while the queue's process lives; an acknowledgement
//!   lost with its connection can make one message delivered twice.
//!
//! A pusher whose connection broke connects again on its next send.

use super::conn::{self, Bound, Client, Outgoing, Reader, FIRST_ENVELOPE};
use crate::address::Address;
use crate::envelope::{encode_into, Decoded, Header, Kind};
use crate::error::{Error, Result};
use crate::frame::{Frame, PeerId};
use crate::options::Options;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use std::collections::VecDeque;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct QState {
    items: VecDeque<Decoded>,
    bytes: usize,
}

struct QShared {
    state: Mutex<QState>,
    data: Notify,
    room: Notify,
    capacity: usize,
    max_message: usize,
    max_conns: usize,
    stall: Duration,
    address: Address,
}

impl QShared {
    fn put(&self, d: Decoded, front: bool) {
        let mut st = lock(&self.state);
        st.bytes += d.payload().len();
        if front {
            st.items.push_front(d);
        } else {
            st.items.push_back(d);
        }
        drop(st);
        self.data.notify_waiters();
    }

    fn take(&self) -> Option<Decoded> {
        let mut st = lock(&self.state);
        let d = st.items.pop_front()?;
        st.bytes -= d.payload().len();
        drop(st);
        self.room.notify_waiters();
        Some(d)
    }

    /// Queues `d` once there is room, unless `send` is stopped first (the
    /// pusher gave up); whether it was queued.
    async fn push(&self, d: Decoded, send: &SendStream) -> bool {
        let mut stopped = pin!(send.stopped());
        loop {
            let mut room = pin!(self.room.notified());
            room.as_mut().enable();
            {
                let st = lock(&self.state);
                if st.items.is_empty() || st.bytes + d.payload().len() <= self.capacity {
                    drop(st);
                    self.put(d, false);
                    return true;
                }
            }
            tokio::select! {
                _ = room => {}
                _ = &mut stopped => return false,
            }
        }
    }

    /// Serves one stream a peer opened: a push or a pull.
    async fn stream(self: Arc<Self>, send: SendStream, recv: RecvStream) -> Result<()> {
        let a = &self.address;
        // Reset, not finished, on every way out but a clean answer.
        let mut send = Outgoing::new(send);
        let mut reader = Reader::new(recv, self.max_message);
        let first = tokio::time::timeout(FIRST_ENVELOPE, reader.next(a))
            .await
            .map_err(|_| Error::Timeout {
                what: "a peer's first envelope",
                after: FIRST_ENVELOPE,
            })??;
        let Some(first) = first else { return Ok(()) };
        match first.header.kind {
            Kind::Message => {
                if self.push(first, &send.send).await {
                    conn::write(&mut send.send, Kind::Reply, b"", b"", 0, a).await?;
                    send.done();
                }
                Ok(())
            }
            Kind::Request => {
                // Wait for an item, or for the puller to give up.
                let item = {
                    let mut stopped = pin!(send.send.stopped());
                    loop {
                        let mut data = pin!(self.data.notified());
                        data.as_mut().enable();
                        if let Some(d) = self.take() {
                            break d;
                        }
                        tokio::select! {
                            _ = data => {}
                            _ = &mut stopped => return Ok(()),
                        }
                    }
                };
                let mut env = Vec::with_capacity(16 + item.payload().len());
                encode_into(&item.header, item.topic(), item.payload(), &mut env);
                // A puller that does not take the item, or does not say it
                // did, within the stall timeout loses it to the others.
                let acked = async {
                    tokio::time::timeout(self.stall, send.send.write_all(&env))
                        .await
                        .map_err(|_| Error::Timeout {
                            what: "sending a pulled message",
                            after: self.stall,
                        })?
                        .map_err(|e| conn::write_err(e, a))?;
                    reader.expect(Kind::Reply, self.stall, a).await
                };
                match acked.await {
                    Ok(_) => {
                        send.done();
                        Ok(())
                    }
                    Err(e) => {
                        tracing::info!(address = %a, error = %e, "QUIC queue: a pulled message was not acknowledged; queued again");
                        self.put(item, true);
                        Ok(())
                    }
                }
            }
            k => Err(Error::Corrupt {
                what: "envelope kind opening a queue stream",
                found: k as u64,
                expected: "1 (push) or 2 (pull)",
            }),
        }
    }

    async fn connection(self: Arc<Self>, conn: Connection) {
        let remote = conn.remote_address();
        let address = self.address.clone();
        conn::streams(conn, self.stall, &address, |send, recv, token| {
            let me = self.clone();
            async move {
                let _in_progress = token;
                if let Err(e) = me.clone().stream(send, recv).await {
                    tracing::warn!(address = %me.address, %remote, error = %e, "QUIC queue: bad stream from a peer; dropped");
                }
            }
        })
        .await;
    }
}

enum Side {
    Queue {
        shared: Arc<QShared>,
        endpoint: quinn::Endpoint,
        acceptor: tokio::task::JoinHandle<()>,
        address: Address,
    },
    Remote {
        client: Client,
        opts: Options,
    },
}

/// Pulling end over QUIC.
pub struct QuicPuller {
    side: Side,
}

impl std::fmt::Debug for QuicPuller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicPuller")
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

impl Drop for QuicPuller {
    fn drop(&mut self) {
        match &self.side {
            Side::Queue {
                acceptor, endpoint, ..
            } => {
                acceptor.abort();
                // Pushers and pullers learn at once that the queue is gone.
                endpoint.close(VarInt::from_u32(conn::CLOSED), b"queue closed");
            }
            Side::Remote { client, .. } => client
                .conn
                .close(VarInt::from_u32(conn::CLOSED), b"puller dropped"),
        }
    }
}

impl QuicPuller {
    /// Binds the queue at `address` (`quic://HOST:PORT`, no pin).
    pub async fn bind(address: &Address, opts: &Options) -> Result<QuicPuller> {
        let Bound { endpoint, address } = conn::bind(address, opts).await?;
        let shared = Arc::new(QShared {
            state: Mutex::new(QState::default()),
            data: Notify::new(),
            room: Notify::new(),
            capacity: opts.capacity as usize,
            max_message: opts.max_message,
            max_conns: 4 * opts.max_peers as usize,
            stall: opts.stall_timeout,
            address: address.clone(),
        });
        let (s, ep) = (shared.clone(), endpoint.clone());
        let slots = conn::Slots::default();
        let acceptor = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (s, slots) = (s.clone(), slots.clone());
                tokio::spawn(async move {
                    if let Some((c, _slot)) = conn::accept(incoming, &slots, s.max_conns).await {
                        s.connection(c).await;
                    }
                });
            }
        });
        Ok(QuicPuller {
            side: Side::Queue {
                shared,
                endpoint,
                acceptor,
                address,
            },
        })
    }

    /// Connects another puller to the queue at `address` (with its pin).
    pub async fn connect(address: &Address, opts: &Options) -> Result<QuicPuller> {
        Ok(QuicPuller {
            side: Side::Remote {
                client: conn::connect(address, opts).await?,
                opts: opts.clone(),
            },
        })
    }

    /// The queue's address (with the bound port and the pin).
    pub fn address(&self) -> Address {
        match &self.side {
            Side::Queue { address, .. } => address.clone(),
            Side::Remote { client, .. } => client.address.clone(),
        }
    }

    /// The next message.
    pub async fn recv(&mut self) -> Result<Frame<'static>> {
        match &mut self.side {
            Side::Queue { shared, .. } => loop {
                let mut data = pin!(shared.data.notified());
                data.as_mut().enable();
                if let Some(d) = shared.take() {
                    let peer = d.header.id;
                    return Ok(d.into_frame()?.with_peer(peer));
                }
                data.await;
            },
            Side::Remote { client, opts } => {
                // Twice at most, as a push (a connection closed as idle).
                for attempt in 0..2 {
                    conn::reconnect_if_lost(client, opts).await?;
                    match pull(client, opts).await {
                        Err(_) if attempt == 0 && conn::closed_idle(&client.conn) => continue,
                        r => return r,
                    }
                }
                Err(Error::PeerGone {
                    address: client.address.to_string(),
                })
            }
        }
    }
}

/// One pull from a remote queue: ask, take the item, acknowledge it.
async fn pull(client: &mut Client, opts: &Options) -> Result<Frame<'static>> {
    let a = client.address.clone();
    let (send, recv) = client
        .conn
        .open_bi()
        .await
        .map_err(|e| conn::lost(&e, &a))?;
    let mut send = Outgoing::new(send);
    conn::write(&mut send.send, Kind::Request, b"", b"", 0, &a).await?;
    let mut reader = Reader::new(recv, opts.max_message);
    let d = reader.expect(Kind::Message, Duration::MAX, &a).await?;
    conn::write(&mut send.send, Kind::Reply, b"", b"", 0, &a).await?;
    send.done();
    let peer = d.header.id;
    Ok(d.into_frame()?.with_peer(peer))
}

/// Pushing end over QUIC.
pub struct QuicPusher {
    client: Client,
    id: u64,
    opts: Options,
}

impl std::fmt::Debug for QuicPusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicPusher")
            .field("address", &self.client.address)
            .finish_non_exhaustive()
    }
}

impl Drop for QuicPusher {
    fn drop(&mut self) {
        self.client
            .conn
            .close(VarInt::from_u32(conn::CLOSED), b"pusher dropped");
    }
}

impl QuicPusher {
    /// Connects a pusher to the queue at `address` (with its pin).
    pub async fn connect(address: &Address, opts: &Options) -> Result<QuicPusher> {
        Ok(QuicPusher {
            client: conn::connect(address, opts).await?,
            id: PeerId::random().0,
            opts: opts.clone(),
        })
    }

    /// Queues `payload`, waiting for room up to the send timeout. Cancelled
    /// or timed out, the message was not queued (unless the queue took it
    /// in the very moment before).
    pub async fn send(&mut self, payload: &[u8]) -> Result<()> {
        if payload.len() > self.opts.max_message {
            return Err(Error::TooLarge {
                what: "payload",
                got: payload.len() as u64,
                limit: self.opts.max_message as u64,
            });
        }
        Header::new(Kind::Message, b"", payload.len(), self.id)?;
        let exchange = async {
            // Twice at most: a connection the queue closed as idle just as
            // this push began is made again, and the push asked again.
            for attempt in 0..2 {
                conn::reconnect_if_lost(&mut self.client, &self.opts).await?;
                let a = self.client.address.clone();
                let once = async {
                    let (send, recv) = self
                        .client
                        .conn
                        .open_bi()
                        .await
                        .map_err(|e| conn::lost(&e, &a))?;
                    let mut send = Outgoing::new(send);
                    conn::write(&mut send.send, Kind::Message, b"", payload, self.id, &a).await?;
                    let mut reader = Reader::new(recv, 1024);
                    reader.expect(Kind::Reply, Duration::MAX, &a).await?;
                    send.done();
                    Ok(())
                };
                match once.await {
                    Err(_) if attempt == 0 && conn::closed_idle(&self.client.conn) => continue,
                    r => return r,
                }
            }
            Ok(())
        };
        match self.opts.send_timeout {
            None => exchange.await,
            Some(t) => tokio::time::timeout(t, exchange)
                .await
                .map_err(|_| Error::Timeout {
                    what: "push (waiting for room)",
                    after: t,
                })?,
        }
    }
}
