//! Request/reply over QUIC: each request is one bidirectional stream, so
//! its reply needs no routing: it goes back on the stream it came on.
//! The replier takes requests from all its connections through one queue;
//! a request whose asker gave up (its stream was reset) gets nowhere with
//! its reply, and that is all. A requester whose connection broke connects
//! again on its next request.

use super::conn::{self, Bound, Client, InProgress, Outgoing, Reader, FIRST_ENVELOPE};
use crate::address::Address;
use crate::envelope::{Decoded, Kind, HEADER_LEN};
use crate::error::{Error, Result};
use crate::frame::{Frame, PeerId};
use crate::options::Options;
use crate::reply::Reply;
use quinn::{Connection, VarInt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Asking end over QUIC.
pub struct QuicRequester {
    client: Client,
    id: u64,
    opts: Options,
}

impl std::fmt::Debug for QuicRequester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicRequester")
            .field("address", &self.client.address)
            .finish_non_exhaustive()
    }
}

impl Drop for QuicRequester {
    fn drop(&mut self) {
        self.client
            .conn
            .close(VarInt::from_u32(conn::CLOSED), b"requester dropped");
    }
}

impl QuicRequester {
    /// Connects to the replier at `address` (with its pin).
    pub async fn connect(address: &Address, opts: &Options) -> Result<QuicRequester> {
        Ok(QuicRequester {
            client: conn::connect(address, opts).await?,
            id: PeerId::random().0,
            opts: opts.clone(),
        })
    }

    /// Sends `payload` and waits for the reply; [`Error::PeerGone`] when
    /// the connection breaks (the replier died, or went silent for the
    /// idle timeout).
    pub async fn request(&mut self, payload: &[u8]) -> Result<Frame<'static>> {
        if payload.len() > self.opts.max_message {
            return Err(Error::TooLarge {
                what: "payload",
                got: payload.len() as u64,
                limit: self.opts.max_message as u64,
            });
        }
        // Twice at most: a connection the replier closed as idle just as
        // this request began is made again, and the request asked again
        // (the replier had no stream open, so it never saw the first).
        for attempt in 0..2 {
            conn::reconnect_if_lost(&mut self.client, &self.opts).await?;
            match self.ask(payload).await {
                Err(_) if attempt == 0 && conn::closed_idle(&self.client.conn) => continue,
                r => return r,
            }
        }
        Err(Error::PeerGone {
            address: self.client.address.to_string(),
        })
    }

    async fn ask(&mut self, payload: &[u8]) -> Result<Frame<'static>> {
        let a = self.client.address.clone();
        let (send, recv) = self
            .client
            .conn
            .open_bi()
            .await
            .map_err(|e| conn::lost(&e, &a))?;
        let mut send = Outgoing::new(send);
        conn::write(&mut send.send, Kind::Request, b"", payload, self.id, &a).await?;
        send.done();
        let mut reader = Reader::new(recv, self.opts.max_message);
        let d = reader.expect(Kind::Reply, Duration::MAX, &a).await?;
        reader.end(FIRST_ENVELOPE, &a).await?;
        let peer = d.header.id;
        Ok(d.into_frame()?.with_peer(peer))
    }
}

/// A request, the stream to answer on, and its in-progress token (held
/// until the answer is written: the stream keeps its connection's turn).
type Incoming = (Decoded, quinn::SendStream, InProgress);

/// How long a dropped replier waits for its last replies to be read.
pub const LINGER: Duration = Duration::from_secs(1);

/// Answering end over QUIC.
pub struct QuicReplier {
    rx: mpsc::Receiver<Incoming>,
    endpoint: quinn::Endpoint,
    /// One clone per reply not yet read by its asker.
    in_flight: Arc<()>,
    stall: Duration,
    address: Address,
    id: u64,
    max_message: usize,
    acceptor: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for QuicReplier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicReplier")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Drop for QuicReplier {
    /// Stops taking requests; closes the connections once the replies
    /// sent were read (up to [`LINGER`]), so requesters then learn at once
    /// that nobody will answer.
    fn drop(&mut self) {
        self.acceptor.abort();
        self.rx.close();
        let (endpoint, in_flight) = (self.endpoint.clone(), self.in_flight.clone());
        let close = async move {
            let deadline = tokio::time::Instant::now() + LINGER;
            while Arc::strong_count(&in_flight) > 1 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            endpoint.close(VarInt::from_u32(conn::CLOSED), b"replier closed");
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(close);
            }
            Err(_) => self
                .endpoint
                .close(VarInt::from_u32(conn::CLOSED), b"replier closed"),
        }
    }
}

/// Reads requests from one connection into the replier's queue.
async fn connection(
    conn: Connection,
    tx: mpsc::Sender<Incoming>,
    address: Address,
    max: usize,
    idle: Duration,
) {
    let remote = conn.remote_address();
    let a = address.clone();
    conn::streams(conn, idle, &a, move |send, recv, token| {
        let (tx, address) = (tx.clone(), address.clone());
        async move {
            let mut reader = Reader::new(recv, max);
            let request = async {
                let d = reader
                    .expect(Kind::Request, FIRST_ENVELOPE, &address)
                    .await?;
                reader.end(FIRST_ENVELOPE, &address).await?;
                Ok::<_, Error>(d)
            };
            match request.await {
                // A replier that is gone resets the stream (the asker
                // gets PeerGone at once, not a clean end).
                Ok(d) => {
                    if let Err(mpsc::error::SendError((_, send, _))) =
                        tx.send((d, send, token)).await
                    {
                        drop(Outgoing::new(send));
                    }
                }
                Err(e) => {
                    tracing::warn!(%address, %remote, error = %e, "QUIC replier: bad request; stream reset");
                    drop(Outgoing::new(send));
                }
            }
        }
    })
    .await;
}

impl QuicReplier {
    /// Binds a replier at `address` (`quic://HOST:PORT`, no pin).
    pub async fn bind(address: &Address, opts: &Options) -> Result<QuicReplier> {
        let Bound { endpoint, address } = conn::bind(address, opts).await?;
        let (tx, rx) = mpsc::channel(conn::SERVED as usize);
        let (a, max, max_conns, stall) = (
            address.clone(),
            opts.max_message,
            opts.listener_conns(),
            opts.stall_timeout,
        );
        let ep = endpoint.clone();
        let slots = conn::Slots::default();
        let acceptor = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (tx, a, slots) = (tx.clone(), a.clone(), slots.clone());
                tokio::spawn(async move {
                    if let Some((c, _slot)) = conn::accept(incoming, &slots, max_conns).await {
                        connection(c, tx, a, max, stall).await;
                    }
                });
            }
        });
        Ok(QuicReplier {
            rx,
            endpoint,
            in_flight: Arc::new(()),
            stall: opts.stall_timeout,
            address,
            id: PeerId::random().0,
            max_message: opts.max_message,
            acceptor,
        })
    }

    /// The address to connect to: the bound port and the certificate pin.
    pub fn address(&self) -> Address {
        self.address.clone()
    }

    /// Receives one request and replies with what `answer` makes of it
    /// (the frame names the requester).
    pub async fn serve_one<F>(&mut self, answer: F) -> Result<()>
    where
        F: FnOnce(&Frame<'static>) -> Vec<u8> + Send,
    {
        self.serve_one_into(|req, out| out.extend_from_slice(&answer(req)))
            .await
    }

    /// As [`serve_one`](Self::serve_one), `answer` writing the reply
    /// straight into the buffer the stream sends (after room for the
    /// envelope header, filled in once the length is known).
    pub async fn serve_one_into<F>(&mut self, answer: F) -> Result<()>
    where
        F: FnOnce(&Frame<'static>, &mut Reply<'_>) + Send,
    {
        let (d, send, conn_token) = self.rx.recv().await.ok_or(Error::Closed)?;
        // From here every way out resets the stream unless the reply is
        // written: the asker learns at once (PeerGone), never waits.
        let send = Outgoing::new(send);
        let peer = d.header.id;
        let req = d.into_frame()?.with_peer(peer);
        let mut env = Vec::with_capacity(HEADER_LEN + 256);
        env.resize(HEADER_LEN, 0);
        let len = {
            let mut out = Reply::new(&mut env);
            answer(&req, &mut out);
            out.len()
        };
        drop(req);
        if len > self.max_message {
            return Err(Error::TooLarge {
                what: "reply",
                got: len as u64,
                limit: self.max_message as u64,
            });
        }
        // Written in the background, so a requester that does not read a
        // large reply holds up nobody else; it has the stall timeout to
        // take it. Until it has read it, the replier's drop waits for it
        // (up to LINGER) before closing the connections. The buffer goes
        // to quinn as it is (no copy).
        let h = crate::envelope::Header::new(Kind::Reply, b"", len, self.id)?;
        env[..HEADER_LEN].copy_from_slice(&h.encode());
        let env = bytes::Bytes::from(env);
        let (token, stall, address) = (self.in_flight.clone(), self.stall, self.address.clone());
        tokio::spawn(async move {
            let _in_progress = conn_token;
            let mut send = send;
            match tokio::time::timeout(stall, send.send.write_chunk(env)).await {
                Ok(Ok(())) => {
                    let stopped = send.send.stopped();
                    send.done();
                    let _ = tokio::time::timeout(LINGER, stopped).await;
                }
                // An asker that gave up: its reply has nowhere to go.
                Ok(Err(_)) => {}
                Err(_) => {
                    tracing::warn!(%address, "QUIC replier: a requester did not read its reply within the stall timeout; stream reset");
                }
            }
            drop(token);
        });
        Ok(())
    }
}
