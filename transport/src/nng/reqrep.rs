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

use super::direct::{DirectAio, RawMsg, Watching};
use super::proto::{locate, Control, Op, CONTROL_LEN};
use super::sock::{
    ask_parts, begin, close_pipe, context, failed, lock, message_of, pipe_id, Body, Sock, Started,
};
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
fn unwrap(msg: impl Received, op: Op, kind: Kind, max: usize) -> Result<Frame<'static>> {
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

/// A received nng message, however it was received (awaited, or waited
/// for on the calling thread).
trait Received: AsRef<[u8]> + Send + Sync + 'static {
    /// The id of the connection it came on.
    fn peer(&mut self) -> u64;
}

impl Received for Body {
    fn peer(&mut self) -> u64 {
        pipe_id(self.0.pipe())
    }
}

impl Received for RawMsg {
    fn peer(&mut self) -> u64 {
        self.pipe_id()
    }
}

fn locate_one(msg: impl Received, op: Op, kind: Kind, max: usize) -> Result<Located> {
    let c = Control::decode(msg.as_ref())?;
    if c.op != op {
        return Err(Error::Corrupt {
            what: "nng op",
            found: c.op as u64,
            expected: "13 (ask) to a replier, 14 (answer) to a requester",
        });
    }
    let found = locate(msg.as_ref(), 1, kind, max)?;
    let e = found[0].clone();
    let body = SharedBytes(Arc::new(msg));
    Ok((body, e.topic, e.payload, e.header.id))
}

/// A plain body (`?native`) where it lies, its peer the connection.
fn locate_plain(mut msg: impl Received, max: usize) -> Result<Located> {
    let len = msg.as_ref().len();
    Error::check_payload(len, max)?;
    let peer = msg.peer();
    Ok((SharedBytes(Arc::new(msg)), 0..0, 0..len, peer))
}

/// A plain body (`?native`) as a frame naming its connection.
fn plain(msg: impl Received, max: usize) -> Result<Frame<'static>> {
    let (body, topic, payload, peer) = locate_plain(msg, max)?;
    Ok(Frame::shared(body, topic, payload)?.with_peer(peer))
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
    /// For requests from a plain thread ([`request_blocking`]
    /// (Self::request_blocking)), made at the first.
    direct: Option<DirectAio>,
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
            direct: None,
        })
    }

    /// Sends `payload` and waits for the reply; [`Error::PeerGone`] when
    /// the replier's connection is gone for the connect timeout.
    pub async fn request(&mut self, payload: &[u8]) -> Result<Frame<'static>> {
        Error::check_payload(payload.len(), self.max_message)?;
        if self.native {
            let r = ask_parts(&self.sock, &self.ctx, &[payload], self.gone_after).await?;
            return plain(Body(r), self.max_message);
        }
        let (pre, pad) = wrap(Op::Ask, Kind::Request, self.id, payload.len())?;
        let parts: [&[u8]; 3] = [&pre, payload, &ZEROS[..pad]];
        let r = ask_parts(&self.sock, &self.ctx, &parts, self.gone_after).await?;
        unwrap(Body(r), Op::Answer, Kind::Reply, self.max_message)
    }

    /// [`request`](Self::request) from a plain thread, giving up after
    /// `timeout` (`None`: as long as the replier lives): the thread waits
    /// for the answer itself, one wake-up fewer per round trip than a
    /// request awaited from tokio (see `direct`). When no connection
    /// stands, or the last one goes while the question is out, it goes on
    /// as [`request`](Self::request) does, driven by `rt`: waits for a
    /// connection for the connect timeout and asks again.
    pub fn request_blocking(
        &mut self,
        rt: &tokio::runtime::Runtime,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Frame<'static>> {
        Error::check_payload(payload.len(), self.max_message)?;
        let t0 = std::time::Instant::now();
        if let Some(r) = self.ask_direct(payload, timeout) {
            return r;
        }
        let left = timeout.map(|t| t.saturating_sub(t0.elapsed()));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(Error::Timeout {
                what: "request",
                after: timeout.unwrap_or_default(),
            });
        }
        crate::blocking::within(rt, left, "request", self.request(payload))
    }

    /// One question and its answer waited for on this thread; `None` when
    /// no connection stands or the last one went meanwhile (the question
    /// is to be asked again).
    fn ask_direct(
        &mut self,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Option<Result<Frame<'static>>> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let left = || deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let timed_out = || Error::Timeout {
            what: "request",
            after: timeout.unwrap_or_default(),
        };
        if self.direct.is_none() {
            self.direct = DirectAio::new().ok();
        }
        let aio = self.direct.as_mut()?;
        let pipes = &self.sock.pipes;
        let _watching = Watching::new(pipes, aio);
        // Looked at once watched: a connection that goes from now on
        // cancels the wait.
        if pipes.count() == 0 {
            return None;
        }
        let m = if self.native {
            message_of(&[payload])
        } else {
            let (pre, pad) = match wrap(Op::Ask, Kind::Request, self.id, payload.len()) {
                Ok(w) => w,
                Err(e) => return Some(Err(e)),
            };
            message_of(&[&pre, payload, &ZEROS[..pad]])
        };
        let address = &self.sock.address;
        match aio.send(&self.ctx, m, left(), Some(pipes)) {
            Ok(()) => {}
            Err(nng::Error::Canceled | nng::Error::ConnectionReset) => return None,
            Err(nng::Error::TimedOut) => return Some(Err(timed_out())),
            Err(e) => return Some(Err(failed(e, address))),
        }
        match aio.recv(&self.ctx, left(), Some(pipes)) {
            Ok(r) if self.native => Some(plain(r, self.max_message)),
            Ok(r) => Some(unwrap(r, Op::Answer, Kind::Reply, self.max_message)),
            // The connection the question went on broke (no resend time:
            // see `sock::ask_parts`), or the last one went.
            Err(nng::Error::Canceled | nng::Error::ConnectionReset) => None,
            Err(nng::Error::TimedOut) => Some(Err(timed_out())),
            Err(e) => Some(Err(failed(e, address))),
        }
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
    /// For requests waited for on a plain thread ([`serve_one_blocking`]
    /// (Self::serve_one_blocking)), made at the first.
    direct: Option<DirectAio>,
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
            direct: None,
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
                Some((_, r)) => r.wait().await,
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
            let pipe = m.pipe();
            if let Some(req) = self.admit(Body(m), pipe) {
                break (req, pipe);
            }
        };
        self.answer(k, req, pipe, answer)
    }

    /// [`serve_one_into`](Self::serve_one_into) from a plain thread: the
    /// thread waits for the request itself, one wake-up fewer than a
    /// request awaited from tokio (see `direct`); `rt` runs what the
    /// replier does in the background.
    pub fn serve_one_blocking<F>(&mut self, rt: &tokio::runtime::Runtime, answer: F) -> Result<()>
    where
        F: FnOnce(&Frame<'static>, &mut Reply<'_>) + Send,
    {
        // A receive a cancelled call left going is finished that way.
        if self.receiving.is_some() {
            return rt.block_on(self.serve_one_into(answer));
        }
        if self.direct.is_none() {
            self.direct =
                Some(DirectAio::new().map_err(|e| super::sock::failed(e, &self.sock.address))?);
        }
        let k = self.turn;
        self.turn ^= 1;
        rt.block_on(self.settle(k))?;
        let (req, pipe) = loop {
            let Some(aio) = self.direct.as_mut() else {
                return Err(Error::Closed);
            };
            let m = match aio.recv(&self.ctxs[k], None, None) {
                Ok(m) => m,
                Err(e) => return Err(super::sock::failed(e, &self.sock.address)),
            };
            let pipe = super::direct::pipe_of(&m);
            if let Some(req) = self.admit(m, pipe) {
                break (req, pipe);
            }
        };
        self.answer(k, req, pipe, answer)
    }

    /// Looks at a request that came on `pipe`: where its payload lies, or
    /// `None` when it is dropped (its connection with it, logged): it is
    /// not well formed, or its requester asks without reading the answers.
    fn admit(&self, msg: impl Received, pipe: Option<nng::Pipe>) -> Option<Located> {
        if let Some(p) = pipe {
            self.sock.pipes.touch(p);
            if lock(&self.waiting).get(&p).copied().unwrap_or(0) >= MAX_WAITING {
                tracing::warn!(address = %self.sock.address, "nng replier: a requester asks without reading the answers; dropping its connection");
                close_pipe(p);
                return None;
            }
        }
        let located = if self.native {
            locate_plain(msg, self.max_message)
        } else {
            locate_one(msg, Op::Ask, Kind::Request, self.max_message)
        };
        match located {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(address = %self.sock.address, error = %e, "nng replier: bad request; dropping its connection");
                if let Some(p) = pipe {
                    close_pipe(p);
                }
                None
            }
        }
    }

    /// Answers `req`, received on context `k` from `pipe`, with what
    /// `answer` writes, and hands the answer to nng.
    fn answer<F>(
        &mut self,
        k: usize,
        req: Located,
        pipe: Option<nng::Pipe>,
        answer: F,
    ) -> Result<()>
    where
        F: FnOnce(&Frame<'static>, &mut Reply<'_>) + Send,
    {
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
