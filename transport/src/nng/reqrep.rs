//! Request/reply over nng's REQ/REP: nng routes each reply to its asker.
//! A request is one envelope under an `Ask` block carrying the asker's id
//! (so the replier knows who asked); the reply one under `Answer`. With a
//! `?native` address both are plain bodies, so foreign nng REQ and REP
//! sockets can be the other end; a request's peer is then the nng
//! connection it came on.
//!
//! A request whose connection breaks while it is outstanding is asked
//! again once a connection stands (`sock::ask`), so a request can reach a
//! replier twice (at least once, not exactly once) when the connection
//! breaks after it arrived; it is never asked again on a timer (which
//! would run slow requests twice).

use super::proto::{locate, Control, Op, CONTROL_LEN};
use super::sock::{ask_parts, begin, close_pipe, context, lock, pipe_id, Body, Sock, Started};
use crate::address::Address;
use crate::envelope::Kind;
use crate::envelope::{pad16, Header, HEADER_LEN};
use crate::error::{Error, Result};
use crate::frame::{Frame, PeerId, SharedBytes};
use crate::options::Options;
use crate::reply::Reply;
use nng::Message;
use nng::Protocol;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Zero bytes to pad a payload with.
const ZEROS: [u8; 16] = [0; 16];
/// The control block and envelope header before a payload.
const PRE_LEN: usize = CONTROL_LEN + HEADER_LEN;

/// What goes before a payload of `len` bytes as one envelope of `kind`
/// under an `op` block (the block and the envelope header), and how many
/// bytes of padding go after it.
fn wrap(op: Op, kind: Kind, id: u64, len: usize) -> Result<([u8; PRE_LEN], usize)> {
    let mut pre = [0u8; PRE_LEN];
    pre[..CONTROL_LEN].copy_from_slice(&Control::new(op, id, 0, 0).encode());
    pre[CONTROL_LEN..].copy_from_slice(&Header::new(kind, b"", len, id)?.encode());
    Ok((pre, pad16(len) - len))
}

/// The one envelope of kind `kind` under an `op` block in `msg`, as a
/// frame naming its sender.
fn unwrap(msg: nng::Message, op: Op, kind: Kind, max: usize) -> Result<Frame<'static>> {
    let (body, topic, payload, peer) = locate_one(msg, op, kind, max)?;
    Ok(Frame::shared(body, topic, payload)?.with_peer(peer))
}

/// Where the one envelope of `unwrap` lies (all `Send`, unlike a frame).
type Located = (
    SharedBytes,
    std::ops::Range<usize>,
    std::ops::Range<usize>,
    u64,
);

fn locate_one(msg: nng::Message, op: Op, kind: Kind, max: usize) -> Result<Located> {
    let c = Control::decode(msg.as_slice())?;
    if c.op != op {
        return Err(Error::Corrupt {
            what: "nng op",
            found: c.op as u64,
            expected: "13 (ask) to a replier, 14 (answer) to a requester",
        });
    }
    let found = locate(msg.as_slice(), 1, kind, max)?;
    let e = found[0].clone();
    let body = SharedBytes(Arc::new(Body(msg)));
    Ok((body, e.topic, e.payload, e.header.id))
}

/// A plain body (`?native`) where it lies, its peer the connection.
fn locate_plain(mut msg: nng::Message, max: usize) -> Result<Located> {
    Error::check_payload(msg.len(), max)?;
    let peer = pipe_id(msg.pipe());
    let len = msg.len();
    Ok((SharedBytes(Arc::new(Body(msg))), 0..0, 0..len, peer))
}

/// Asking end over nng.
pub struct NngRequester {
    sock: Sock,
    ctx: super::sock::Ctx,
    id: u64,
    max_message: usize,
    gone_after: Duration,
    /// `?native`: plain bodies.
    native: bool,
    /// How long a request looks for its send and its answer before
    /// parking ([`Options::spin`]).
    spin: Duration,
}

impl std::fmt::Debug for NngRequester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NngRequester")
            .field("address", &self.sock.address)
            .finish_non_exhaustive()
    }
}

impl NngRequester {
    /// Connects to the replier at `address`.
    pub async fn connect(address: &Address, opts: &Options) -> Result<NngRequester> {
        let (sock, ctx) = super::sock::dial_req(address, opts).await?;
        Ok(NngRequester {
            sock,
            ctx,
            id: PeerId::random().0,
            max_message: opts.max_message,
            gone_after: opts.connect_timeout,
            native: address.is_native(),
            spin: opts.spin,
        })
    }

    /// Sends `payload` and waits for the reply; [`Error::PeerGone`] when
    /// the replier's connection is gone for the connect timeout.
    pub async fn request(&mut self, payload: &[u8]) -> Result<Frame<'static>> {
        Error::check_payload(payload.len(), self.max_message)?;
        if self.native {
            let r = ask_parts(
                &self.sock,
                &self.ctx,
                &[payload],
                self.gone_after,
                self.spin,
            )
            .await?;
            let (body, topic, payload, peer) = locate_plain(r, self.max_message)?;
            return Ok(Frame::shared(body, topic, payload)?.with_peer(peer));
        }
        let (pre, pad) = wrap(Op::Ask, Kind::Request, self.id, payload.len())?;
        let parts: [&[u8]; 3] = [&pre, payload, &ZEROS[..pad]];
        let r = ask_parts(&self.sock, &self.ctx, &parts, self.gone_after, self.spin).await?;
        unwrap(r, Op::Answer, Kind::Reply, self.max_message)
    }
}

/// How long an answer may wait for its connection to take it (the peer
/// has not read the answers before) before that connection is closed.
pub const REPLY_WAIT: Duration = Duration::from_secs(10);
/// Answers that may wait at once for one connection; a request from a
/// connection with that many is dropped with the connection.
const MAX_WAITING: usize = 8;
/// How long an answer not yet taken when its context comes round again
/// is waited for before it is left to the background (taken at once, it
/// completes in microseconds; each wait this long is time nobody else is
/// served).
const QUICK: Duration = Duration::from_millis(2);
/// How long a dropped replier keeps its socket open for the answers it
/// handed over that were not taken yet.
const LINGER: Duration = Duration::from_secs(1);

/// Answering end over nng.
///
/// An answer is handed to nng and `serve_one` returns without waiting
/// for it to be taken (one wake-up less per request). Requests are
/// received on two nng contexts in turn, so an answer's send is still
/// going on one while the next request is received on the other; when a
/// context comes round again, its answer was taken long before, unless
/// its connection still holds an earlier answer its peer has not read.
/// Then the answer waits in the background (at most [`REPLY_WAIT`], at
/// most a few per connection) while the replier goes on serving others
/// on a fresh nng context. (Found by tests/nng_hostile.rs: one requester
/// that asked without reading blocked the replier's only context, so
/// nobody else was served.)
pub struct NngReplier {
    sock: Arc<Sock>,
    /// The two contexts requests are received on in turn.
    ctxs: [super::sock::Ctx; 2],
    /// Which of them the next request is received on.
    turn: usize,
    /// The answer last handed over on each context, until seen taken.
    sending: [Option<Sending>; 2],
    id: u64,
    max_message: usize,
    /// Answers waiting in the background, per connection.
    waiting: Arc<Mutex<HashMap<nng::Pipe, usize>>>,
    /// `?native`: plain bodies.
    native: bool,
    /// A receive started by a `serve_one` that was dropped before it
    /// completed (and its context): the next call waits for it, so a
    /// request nng handed over meanwhile is not lost with the future.
    receiving: Option<(usize, super::sock::Started)>,
    /// How long a receive looks for the next request before parking
    /// ([`Options::spin`]).
    spin: Duration,
}

impl std::fmt::Debug for NngReplier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NngReplier")
            .field("address", &self.sock.address)
            .finish_non_exhaustive()
    }
}

impl NngReplier {
    /// Binds a replier at `address`.
    pub fn bind(address: &Address, opts: &Options) -> Result<NngReplier> {
        let sock = Sock::listen_with(Protocol::Rep0, address, opts)?;
        // No idle reaping here: requests wait in nng until `serve_one`
        // takes them, so a requester's connection can be silent to us
        // while it waits for a slow replier; dropping it would run its
        // request twice.
        let ctxs = [context(&sock)?, context(&sock)?];
        Ok(NngReplier {
            sock: Arc::new(sock),
            ctxs,
            turn: 0,
            sending: [None, None],
            id: PeerId::random().0,
            max_message: opts.max_message,
            waiting: Arc::default(),
            native: address.is_native(),
            receiving: None,
            spin: opts.spin,
        })
    }

    /// The address bound (with the port chosen when it asked for port 0).
    pub fn address(&self) -> Address {
        self.sock.bound_address()
    }

    /// Receives one request and replies with what `answer` makes of it
    /// (the frame names the requester). A request that is not well formed
    /// is dropped with its connection, logged, and the next one served.
    pub async fn serve_one<F>(&mut self, answer: F) -> Result<()>
    where
        F: FnOnce(&Frame<'static>) -> Vec<u8> + Send,
    {
        self.serve_one_into(|req, out| out.extend_from_slice(&answer(req)))
            .await
    }

    /// As [`serve_one`](Self::serve_one), `answer` writing the reply
    /// straight into the nng message that carries it.
    pub async fn serve_one_into<F>(&mut self, answer: F) -> Result<()>
    where
        F: FnOnce(&Frame<'static>, &mut Reply<'_>) + Send,
    {
        let k = match &self.receiving {
            Some((k, _)) => *k,
            None => {
                let k = self.turn;
                self.turn ^= 1;
                self.settle(k).await?;
                k
            }
        };
        let (req, pipe) = loop {
            // Cancel-safe: the receive is kept while it is awaited, and
            // taken only once it completed.
            if self.receiving.is_none() {
                let ctx = &self.ctxs[k];
                self.receiving = Some((k, begin(|aio| ctx.recv(aio))?));
            }
            let got = match &mut self.receiving {
                Some((_, r)) => r.wait_spinning(self.spin).await,
                None => Err(Error::Closed),
            };
            self.receiving = None;
            let mut m = match got? {
                nng::AioResult::Recv(Ok(m)) => m,
                nng::AioResult::Recv(Err(e)) => {
                    return Err(super::sock::failed(e, &self.sock.address))
                }
                _ => return Err(Error::Closed),
            };
            if let Some(p) = m.pipe() {
                self.sock.pipes.touch(p);
            }
            let pipe = m.pipe();
            if let Some(p) = pipe {
                if lock(&self.waiting).get(&p).copied().unwrap_or(0) >= MAX_WAITING {
                    tracing::warn!(address = %self.sock.address, "nng replier: a requester asks without reading the answers; dropping its connection");
                    close_pipe(p);
                    continue;
                }
            }
            let located = if self.native {
                locate_plain(m, self.max_message)
            } else {
                locate_one(m, Op::Ask, Kind::Request, self.max_message)
            };
            match located {
                Ok(f) => break (f, pipe),
                Err(e) => {
                    tracing::warn!(address = %self.sock.address, error = %e, "nng replier: bad request; dropping its connection");
                    if let Some(p) = pipe {
                        close_pipe(p);
                    }
                }
            }
        };
        // The answer is written after room for the control block and
        // envelope header, which are filled in once its length is known.
        let pre_len = if self.native { 0 } else { PRE_LEN };
        let cap = pre_len + 256;
        let mut r = Message::with_capacity(cap);
        r.push_back(&[0u8; PRE_LEN][..pre_len]);
        let len = {
            let (body, topic, payload, peer) = req;
            let req = Frame::shared(body, topic, payload)?.with_peer(peer);
            let mut out = Reply::nng(&mut r, cap);
            answer(&req, &mut out);
            out.len()
        };
        if let Err(e) = Error::check_payload(len, self.max_message) {
            // Nothing will answer this request: its connection is dropped,
            // so its requester learns it at once instead of waiting.
            if let Some(p) = pipe {
                close_pipe(p);
            }
            return Err(e);
        }
        if !self.native {
            let (pre, pad) = wrap(Op::Answer, Kind::Reply, self.id, len)?;
            r.as_mut_slice()[..PRE_LEN].copy_from_slice(&pre);
            r.push_back(&ZEROS[..pad]);
        }
        let ctx = &self.ctxs[k];
        let op = begin(|aio| ctx.send(aio, r).map_err(|(_, e)| e))?;
        self.sending[k] = Some(Sending { op, pipe });
        Ok(())
    }

    /// Makes context `k` free to receive: the answer last handed over on
    /// it was taken, or is left to wait in the background (its
    /// connection has not taken an earlier answer yet) while `k` becomes
    /// a fresh context (a context answers one request at a time).
    async fn settle(&mut self, k: usize) -> Result<()> {
        // Kept in place while waited for: a call dropped meanwhile leaves
        // it going (dropping it would cancel the answer).
        let Some(s) = self.sending[k].as_mut() else {
            return Ok(());
        };
        // Behind an answer already waiting for its connection, this one
        // waits too: no time is spent on it.
        let behind = s.pipe.is_some_and(|p| lock(&self.waiting).contains_key(&p));
        if s.op.completed().is_some()
            || (!behind && tokio::time::timeout(QUICK, s.op.wait()).await.is_ok())
        {
            self.sending[k] = None;
            return Ok(());
        }
        let Some(s) = self.sending[k].take() else {
            return Ok(());
        };
        let ctx = std::mem::replace(&mut self.ctxs[k], context(&self.sock)?);
        let Sending { op, pipe } = s;
        if let Some(p) = pipe {
            *lock(&self.waiting).entry(p).or_insert(0) += 1;
        }
        let waiting = self.waiting.clone();
        let address = self.sock.address.clone();
        tokio::spawn(async move {
            let taken = tokio::time::timeout(REPLY_WAIT, op.result()).await.is_ok();
            drop(ctx);
            let Some(pipe) = pipe else { return };
            let mut w = lock(&waiting);
            if let Some(n) = w.get_mut(&pipe) {
                *n -= 1;
                if *n == 0 {
                    w.remove(&pipe);
                }
            }
            drop(w);
            if !taken {
                tracing::warn!(%address, "nng replier: a requester did not take its answer in time; dropping its connection");
                close_pipe(pipe);
            }
        });
        Ok(())
    }
}

/// An answer handed to nng, and the connection it goes to.
struct Sending {
    op: Started,
    pipe: Option<nng::Pipe>,
}

impl Drop for NngReplier {
    /// Closes the socket once the answers handed over were taken by their
    /// connections (up to a second in all, in the background when
    /// inside a tokio runtime; the address stays bound meanwhile).
    /// Taken is not delivered: a large answer still being written to its
    /// connection when the replier is dropped is cut off, and its
    /// requester asks again or learns that the replier is gone.
    fn drop(&mut self) {
        let going: Vec<Sending> = self
            .sending
            .iter_mut()
            .filter_map(Option::take)
            .filter_map(|mut s| s.op.completed().is_none().then_some(s))
            .collect();
        if going.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let keep = (self.sock.clone(), self.ctxs.clone());
        rt.spawn(async move {
            let deadline = tokio::time::Instant::now() + LINGER;
            for s in going {
                let _ = tokio::time::timeout_at(deadline, s.op.result()).await;
            }
            drop(keep);
        });
    }
}
