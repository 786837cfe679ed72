//! Request/reply over QUIC: a requester asks on one bidirectional stream
//! that it keeps, one exchange after another, so a reply needs no
//! routing: it goes back on the stream its request came on. A request
//! cut short (cancelled, or failed) drops its stream, which resets it,
//! and the next request opens a new one, so a late reply never answers
//! the wrong question. The replier takes requests from all its
//! connections through one queue; a request whose asker gave up gets
//! nowhere with its reply, and that is all. A requester whose connection
//! broke connects again on its next request.
//!
//! Keeping the stream spares each exchange the stream's opening and
//! closing (quinn's per-stream state, and the credit frames that retiring
//! streams make the peer send): raw quinn's own round trip is faster on
//! one long stream than with a stream per request.

use super::conn::{self, Bound, Client, Outgoing, Reader, FIRST_ENVELOPE};
use crate::address::Address;
use crate::envelope::{Decoded, Kind, HEADER_LEN};
use crate::error::{Error, Result};
use crate::frame::{Frame, PeerId};
use crate::options::Options;
use crate::reply::Reply;
use quinn::{Connection, VarInt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Asking end over QUIC.
pub struct QuicRequester {
    client: Client,
    id: u64,
    opts: Options,
    /// The stream the exchanges go on, once opened.
    stream: Option<Box<Exchanges>>,
}

/// A requester's stream: one exchange after another.
struct Exchanges {
    send: Outgoing,
    reader: Reader,
    /// The connection it belongs to (`stable_id`).
    conn: usize,
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
            stream: None,
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
        // this request began is made again, and the request asked again.
        // A connection closed as idle had no exchange in progress, and
        // none begins on it after, so the replier never took the first
        // request (unless an earlier reply took longer than the stall
        // timeout to arrive after it was handed to quinn: the replier
        // counts that long from an exchange's end).
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
        let conn = self.client.conn.stable_id();
        // Taken out for the exchange and put back once it ended well: an
        // exchange cancelled or failed drops its stream, which resets it
        // (the replier sees it end, and its late reply goes nowhere). A
        // stream of a connection since replaced is dropped too.
        let mut s = match self.stream.take().filter(|s| s.conn == conn) {
            Some(s) => s,
            None => {
                let (send, recv) = self
                    .client
                    .conn
                    .open_bi()
                    .await
                    .map_err(|e| conn::lost(&e, &a))?;
                Box::new(Exchanges {
                    send: Outgoing::new(send),
                    reader: Reader::new(recv, self.opts.max_message),
                    conn,
                })
            }
        };
        conn::write(&mut s.send.send, Kind::Request, b"", payload, self.id, &a).await?;
        let d = s.reader.expect(Kind::Reply, Duration::MAX, &a).await?;
        self.stream = Some(s);
        let peer = d.header.id;
        Ok(d.into_frame()?.with_peer(peer))
    }
}

/// A request, and where its answer goes: the task serving its stream
/// waits for the reply's envelope, and a token to hold until the asker
/// has it. Dropped unanswered, the stream is reset.
type Incoming = (Decoded, oneshot::Sender<(bytes::Bytes, Arc<()>)>);

/// How long a dropped replier waits for its last replies to be read.
pub const LINGER: Duration = Duration::from_secs(1);

/// Answering end over QUIC.
pub struct QuicReplier {
    rx: mpsc::Receiver<Incoming>,
    endpoint: quinn::Endpoint,
    /// One clone per reply not yet read by its asker.
    in_flight: Arc<()>,
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

/// Reads requests from one connection into the replier's queue, and
/// writes each stream's replies as they come.
async fn connection(
    conn: Connection,
    tx: mpsc::Sender<Incoming>,
    address: Address,
    max: usize,
    stall: Duration,
) {
    let remote = conn.remote_address();
    let a = address.clone();
    conn::streams(conn, stall, &a, move |send, recv, mut token| {
        let (tx, address) = (tx.clone(), address.clone());
        async move {
            let mut send = Outgoing::new(send);
            let mut reader = Reader::new(recv, max);
            // From here every way out resets the stream unless it ended
            // cleanly: an asker learns at once (PeerGone), never waits.
            loop {
                let d = match reader
                    .expect(Kind::Request, FIRST_ENVELOPE, &address)
                    .await
                {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(%address, %remote, error = %e, "QUIC replier: bad request; stream reset");
                        return;
                    }
                };
                let (answer, reply) = oneshot::channel();
                if tx.send((d, answer)).await.is_err() {
                    return;
                }
                // No reply (the replier refused it, or was dropped) resets
                // the stream. The queue's closing is watched too: a request
                // pushed just as the replier dropped, after its drain, is
                // never dropped nor answered.
                let answered = tokio::select! {
                    biased;
                    r = reply => r.ok(),
                    _ = tx.closed() => None,
                };
                let Some((env, in_flight)) = answered else {
                    return;
                };
                // A requester that does not read a large reply holds up
                // nobody else (its turn, at most); it has the stall
                // timeout to take it. The buffer goes to quinn as it is.
                match tokio::time::timeout(stall, send.send.write_chunk(env)).await {
                    Ok(Ok(())) => {}
                    // An asker that gave up: its reply has nowhere to go.
                    Ok(Err(_)) => return,
                    Err(_) => {
                        tracing::warn!(%address, %remote, "QUIC replier: a requester did not read its reply within the stall timeout; stream reset");
                        return;
                    }
                }
                // Between exchanges the stream holds no turn, and the
                // connection may be closed as idle (a stall timeout after
                // this at the earliest). The reply counts as in flight
                // until the next bytes come on the stream (a requester of
                // this crate sends them only once it has read the reply),
                // or the stream ends, or the replier drops (which then
                // waits for it, up to LINGER).
                let paused = token.pause();
                let next = tokio::select! {
                    biased;
                    next = reader.fill(&address) => next,
                    _ = tx.closed() => Ok(false),
                };
                match next {
                    Ok(true) => drop(in_flight),
                    // The asker ended the stream, or the replier is gone:
                    // the stream ends, once what was sent is acknowledged.
                    Ok(false) => {
                        let stopped = send.send.stopped();
                        send.done();
                        let _ = tokio::time::timeout(LINGER, stopped).await;
                        drop(in_flight);
                        return;
                    }
                    Err(_) => return,
                }
                token = match paused.resume().await {
                    Some(t) => t,
                    None => return,
                };
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
        let (d, reply) = self.rx.recv().await.ok_or(Error::Closed)?;
        // From here every way out drops `reply`, which resets the stream:
        // the asker learns at once (PeerGone), never waits.
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
        // The stream's task writes it; until the asker has read it, the
        // replier's drop waits for it (up to LINGER) before closing the
        // connections.
        let h = crate::envelope::Header::new(Kind::Reply, b"", len, self.id)?;
        env[..HEADER_LEN].copy_from_slice(&h.encode());
        let _ = reply.send((bytes::Bytes::from(env), self.in_flight.clone()));
        Ok(())
    }
}
