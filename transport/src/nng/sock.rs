//! nng sockets as this backend uses them: opened with the size limit set
//! before any peer can send, dialed with a deadline, their pipes (peer
//! connections) watched, and their asynchronous operations awaited from
//! tokio.
//!
//! Each operation runs on an nng `Aio` of its own whose completion
//! callback (on an nng thread) hands the result to a tokio one-shot
//! channel: nothing polls, no tokio thread blocks. Dropping the awaiting
//! future cancels the operation and waits for its callback to return: a
//! receive cancelled that way took nothing
//! the caller will see; a send may have been handed to nng just before
//! (then it is delivered), which the protocols above tolerate by
//! resending idempotently.

use crate::address::{Address, Host};
use crate::error::{Error, Result};
use crate::waiting::until_count;
use nng::options::Options as _;
use nng::{Aio, AioResult, Context, Message, Pipe, PipeEvent, Protocol, Socket};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

/// Room for control blocks and envelope headers above the largest payload.
pub(crate) const OVERHEAD: usize = 64 * 1024;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The nng URL of an `nng+…` address.
pub(crate) fn url(address: &Address) -> Result<String> {
    match address {
        Address::NngIpc { path, .. } => Ok(format!("ipc://{}", path.display())),
        Address::NngTcp { host, port, .. } => Ok(match host {
            Host::V6(ip) => format!("tcp://[{ip}]:{port}"),
            h => format!("tcp://{h}:{port}"),
        }),
        other => Err(Error::BadAddress {
            address: other.to_string(),
            why: "the nng backend takes nng+ipc:// and nng+tcp:// addresses".into(),
        }),
    }
}

fn io(what: impl Into<String>, e: nng::Error) -> Error {
    Error::Io {
        what: what.into(),
        source: std::io::Error::other(e),
    }
}

/// Closes the connection `pipe`; one that is already gone is no error.
///
/// `nng::Pipe::close` panics when nng answers that the pipe is gone
/// (NNG_ENOENT), which is what a peer that sent a bad message and hung up
/// at once leaves (found by tests/nng_hostile.rs: such peers killed the
/// tasks serving a queue's contexts, one per bad message, and made a
/// replier's `serve_one` panic). nng's own `nng_pipe_close` is called
/// instead (through the crate's `ffi-module`), its answer ignored.
pub(crate) fn close_pipe(pipe: Pipe) {
    // SAFETY: `nng_pipe_close` takes a pipe handle by value and only looks
    // its id up in nng's table: an id that is gone (or was never valid)
    // gets NNG_ENOENT and touches nothing.
    let _ = unsafe { nng::ffi::nng_pipe_close(pipe.nng_pipe()) };
}

/// The id nng gave the connection `pipe` (positive while it lives; 0 for
/// none), which frames carry as their peer on `?native` addresses.
pub(crate) fn pipe_id(pipe: Option<Pipe>) -> u64 {
    let Some(pipe) = pipe else { return 0 };
    // SAFETY: `nng_pipe_id` reads the id field of the handle passed by
    // value; it dereferences nothing and accepts any handle.
    let id = unsafe { nng::ffi::nng_pipe_id(pipe.nng_pipe()) };
    u64::try_from(id).unwrap_or(0)
}

/// The pipes (peer connections) of a socket, kept by nng's pipe
/// notifications.
#[derive(Default)]
pub(crate) struct Pipes {
    /// Connected pipes, and when each last brought a message (or
    /// connected).
    live: Mutex<std::collections::HashMap<Pipe, Instant>>,
    /// Pipes that were removed, newest last, at most [`DEAD_KEPT`] (nng
    /// does not reuse a pipe id soon).
    dead: Mutex<(HashSet<Pipe>, std::collections::VecDeque<Pipe>)>,
    /// Notified on every change, and when the socket closes.
    pub changed: Notify,
    /// The socket closed (its tasks end).
    closed: std::sync::atomic::AtomicBool,
    /// An operation a thread waits on directly, cancelled when the last
    /// connection goes (see `direct`).
    pub direct: Mutex<super::direct::Watch>,
}

/// Removed pipes remembered, to tell a message from a connection that
/// is already gone.
const DEAD_KEPT: usize = 4096;

impl Pipes {
    pub fn count(&self) -> usize {
        lock(&self.live).len()
    }
    /// Whether `pipe` was removed (its connection closed). Checked
    /// against every entry kept for a connection, so a registration that
    /// raced with its connection's close is not kept forever.
    pub fn is_dead(&self, pipe: Pipe) -> bool {
        lock(&self.dead).0.contains(&pipe)
    }
    /// Closes every connection (a client's socket: nng redials).
    pub fn close_all(&self) {
        let all: Vec<Pipe> = lock(&self.live).keys().copied().collect();
        for p in all {
            close_pipe(p);
        }
    }
    /// Notes that `pipe` brought a message.
    pub fn touch(&self, pipe: Pipe) {
        if let Some(t) = lock(&self.live).get_mut(&pipe) {
            *t = Instant::now();
        }
    }
}

/// Closes, every `idle / 4`, the connections of `pipes` that brought no
/// message for `idle` (a peer that connects and sends nothing, or stops);
/// ends when the socket is gone. A well-behaved client so closed while
/// idle redials by itself (nng), at the cost of one reconnection.
pub(crate) fn reap_idle(
    pipes: &Arc<Pipes>,
    idle: Duration,
    address: &Address,
    keep: impl Fn(Pipe) -> bool + Send + 'static,
) {
    let (pipes, address) = (Arc::downgrade(pipes), address.clone());
    // Never below a few holds: a well-behaved subscriber's question may
    // wait HOLD for its answer before it asks again.
    let idle = idle.max(3 * super::pubsub::HOLD);
    let every = (idle / 4).max(Duration::from_millis(10));
    // Outside a runtime (a replier bound on a plain thread) there is none.
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        loop {
            let Some(p) = pipes.upgrade() else { return };
            // Woken early when the socket closes, so a dropped endpoint
            // leaves no task sleeping on (a `Blocking` waits for them).
            let closing = p.changed.notified();
            if p.closed.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            let _ = tokio::time::timeout(every, closing).await;
            if p.closed.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            // `keep` runs after the lock is let go: it may hold the last
            // reference to its endpoint, whose drop closes the socket, and
            // nng's pipe callbacks take this lock while it closes.
            let idle_pipes: Vec<Pipe> = lock(&p.live)
                .iter()
                .filter(|(_, t)| t.elapsed() >= idle)
                .map(|(p, _)| *p)
                .collect();
            let stale: Vec<Pipe> = idle_pipes.into_iter().filter(|p| !keep(*p)).collect();
            for pipe in stale {
                tracing::info!(%address, ?idle, "nng: a peer sent nothing for the stall timeout; dropping its connection");
                close_pipe(pipe);
            }
        }
    });
}

/// A socket and its pipes.
pub(crate) struct Sock {
    pub socket: Socket,
    pub pipes: Arc<Pipes>,
    pub address: Address,
    /// The listener, when this socket listens (for the bound address).
    listener: Option<nng::Listener>,
}

impl Drop for Sock {
    fn drop(&mut self) {
        self.close();
        self.pipes
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.pipes.changed.notify_waiters();
    }
}

impl Sock {
    /// Closes the socket (its operations end with [`Error::Closed`]),
    /// never while an operation on it is being cancelled: see [`GATE`].
    pub fn close(&self) {
        let _closing = GATE.write().unwrap_or_else(|e| e.into_inner());
        self.socket.close();
    }

    /// A socket of `protocol` refusing messages above `max_message`
    /// payload bytes (nng drops a peer whose length prefix says more,
    /// before allocating).
    fn open(
        protocol: Protocol,
        address: &Address,
        max_message: usize,
        max_conns: Option<usize>,
    ) -> Result<Sock> {
        let socket = Socket::new(protocol).map_err(|e| io("opening an nng socket", e))?;
        socket
            .set_opt::<nng::options::RecvMaxSize>(max_message.saturating_add(OVERHEAD))
            .map_err(|e| io("setting the nng receive limit", e))?;
        let pipes = Arc::new(Pipes::default());
        let p = Arc::downgrade(&pipes);
        let at = address.clone();
        socket
            .pipe_notify(move |pipe, ev| {
                let Some(p) = p.upgrade() else { return };
                match ev {
                    // A listener takes at most `max_conns` connections: one
                    // more is closed before it can send anything (peers
                    // that open connections without end).
                    PipeEvent::AddPre => {
                        if max_conns.is_some_and(|m| lock(&p.live).len() >= m) {
                            tracing::warn!(address = %at, "nng: connection refused, the listener has its most");
                            close_pipe(pipe);
                        }
                        return;
                    }
                    PipeEvent::AddPost => {
                        // nng can report a pipe's removal before its
                        // addition (it starts the pipe first): one already
                        // dead is not added.
                        let dead = lock(&p.dead);
                        if !dead.0.contains(&pipe) {
                            lock(&p.live).insert(pipe, Instant::now());
                        }
                    }
                    PipeEvent::RemovePost => {
                        let mut d = lock(&p.dead);
                        let none_left = {
                            let mut live = lock(&p.live);
                            live.remove(&pipe);
                            live.is_empty()
                        };
                        if d.0.insert(pipe) {
                            d.1.push_back(pipe);
                        }
                        while d.1.len() > DEAD_KEPT {
                            if let Some(old) = d.1.pop_front() {
                                d.0.remove(&old);
                            }
                        }
                        drop(d);
                        if none_left {
                            lock(&p.direct).fire();
                        }
                    }
                    _ => return,
                }
                p.changed.notify_waiters();
            })
            .map_err(|e| io("watching nng pipes", e))?;
        Ok(Sock {
            socket,
            pipes,
            address: address.clone(),
            listener: None,
        })
    }

    /// [`listen`](Self::listen) with the message limit and connection
    /// cap `opts` give a listener.
    pub fn listen_with(
        protocol: Protocol,
        address: &Address,
        opts: &crate::options::Options,
    ) -> Result<Sock> {
        Sock::listen(protocol, address, opts.max_message, opts.listener_conns())
    }

    /// [`dial`](Self::dial) with the message limit and connect timeout of
    /// `opts`.
    pub async fn dial_with(
        protocol: Protocol,
        address: &Address,
        opts: &crate::options::Options,
    ) -> Result<Sock> {
        Sock::dial(protocol, address, opts.max_message, opts.connect_timeout).await
    }

    /// A socket listening at `address`, taking at most `max_conns`
    /// connections at once.
    pub fn listen(
        protocol: Protocol,
        address: &Address,
        max_message: usize,
        max_conns: usize,
    ) -> Result<Sock> {
        let mut s = Sock::open(protocol, address, max_message, Some(max_conns.max(1)))?;
        let url = url(address)?;
        let l = nng::Listener::new(&s.socket, &url).map_err(|e| match e {
            nng::Error::AddressInUse => Error::AddrInUse {
                address: address.to_string(),
            },
            e => io(format!("listening at {address}"), e),
        })?;
        s.listener = Some(l);
        Ok(s)
    }

    /// A socket dialing `address`, once a connection stands; nng redials
    /// by itself whenever it breaks. [`Error::NotBound`] when none stood
    /// within `timeout`.
    pub async fn dial(
        protocol: Protocol,
        address: &Address,
        max_message: usize,
        timeout: Duration,
    ) -> Result<Sock> {
        let s = Sock::open(protocol, address, max_message, None)?;
        for (opt, t) in [(0, 10u64), (1, 200)] {
            let d = Some(Duration::from_millis(t));
            let r = if opt == 0 {
                s.socket.set_opt::<nng::options::ReconnectMinTime>(d)
            } else {
                s.socket.set_opt::<nng::options::ReconnectMaxTime>(d)
            };
            r.map_err(|e| io("setting the nng redial times", e))?;
        }
        s.socket
            .dial_async(&url(address)?)
            .map_err(|e| io(format!("dialing {address}"), e))?;
        if !s.wait_connected(timeout).await {
            return Err(Error::NotBound {
                address: address.to_string(),
            });
        }
        Ok(s)
    }

    /// Waits up to `timeout` for at least one pipe; whether there is one.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let count = || self.pipes.count() as u32;
        until_count(&self.pipes.changed, count, 1, timeout, "connecting")
            .await
            .is_ok()
    }

    /// The address this socket listens at, with the port nng chose when
    /// the address asked for port 0.
    pub fn bound_address(&self) -> Address {
        match (&self.address, &self.listener) {
            (
                Address::NngTcp {
                    host,
                    port: 0,
                    native,
                },
                Some(l),
            ) => {
                // The nng crate (1.0.1) copies `sa_port` without
                // converting it from network byte order.
                match l.get_opt::<nng::options::LocalAddr>() {
                    Ok(nng::SocketAddr::Inet(a)) => Address::NngTcp {
                        host: host.clone(),
                        port: u16::from_be(a.port()),
                        native: *native,
                    },
                    Ok(nng::SocketAddr::Inet6(a)) => Address::NngTcp {
                        host: host.clone(),
                        port: u16::from_be(a.port()),
                        native: *native,
                    },
                    _ => self.address.clone(),
                }
            }
            _ => self.address.clone(),
        }
    }
}

/// Runs one asynchronous nng operation started by `start` on a fresh
/// `Aio` and awaits its result.
///
/// The task parks at once: the operation completes on one of nng's
/// threads, which needs a CPU to do it, and a runtime thread polling for
/// it takes one (on this project's 2-core VM, polling 50 us for each
/// completion made 64 B and 4 KiB round trips 4-10 % slower, over tcp
/// and ipc alike, than parking at once).
async fn run(start: impl FnOnce(&Aio) -> std::result::Result<(), nng::Error>) -> Result<AioResult> {
    begin(start)?.wait().await
}

/// Starts one asynchronous nng operation by `start` on a fresh `Aio`; its
/// result is awaited (or looked at) later, so another operation can start
/// meanwhile. Dropped before its result came, it cancels the operation.
pub(crate) fn begin(
    start: impl FnOnce(&Aio) -> std::result::Result<(), nng::Error>,
) -> Result<Started> {
    let (tx, rx) = oneshot::channel();
    let tx = Mutex::new(Some(tx));
    let aio = Aio::new(move |_, res| {
        if let Some(tx) = lock(&tx).take() {
            let _ = tx.send(res);
        }
    })
    .map_err(|e| io("allocating an nng aio", e))?;
    let aio = Quiesced(aio);
    {
        let _starting = GATE.read().unwrap_or_else(|e| e.into_inner());
        start(&aio.0).map_err(|e| io("starting an nng operation", e))?;
    }
    Ok(Started {
        rx,
        closed: false,
        _aio: aio,
    })
}

/// An nng operation in progress (see [`begin`]).
pub(crate) struct Started {
    rx: oneshot::Receiver<AioResult>,
    /// A look found the channel closed without a result (the callback
    /// gone): tokio's receiver must not be polled again after that.
    closed: bool,
    /// Declared last: dropped after `rx`, it cancels the operation if it
    /// is still going and waits for its callback.
    _aio: Quiesced,
}

impl Started {
    /// The operation's result, once it completes.
    pub async fn result(mut self) -> Result<AioResult> {
        self.wait().await
    }

    /// Waits for the operation's result (cancel-safe: dropped before it
    /// came, the operation goes on). Not to be called again once it
    /// returned.
    pub async fn wait(&mut self) -> Result<AioResult> {
        if self.closed {
            return Err(Error::Closed);
        }
        (&mut self.rx).await.map_err(|_| Error::Closed)
    }

    /// The operation's result if it completed, without waiting (taken:
    /// not to be waited for afterwards). A channel found closed without
    /// one is remembered: [`wait`](Self::wait) then says
    /// [`Error::Closed`] (tokio's receiver panics if polled after that).
    pub fn completed(&mut self) -> Option<AioResult> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(oneshot::error::TryRecvError::Closed) => {
                self.closed = true;
                None
            }
            Err(oneshot::error::TryRecvError::Empty) => None,
        }
    }
}

/// An `Aio` that, when dropped, cancels its operation and waits for its
/// callback to have returned before letting go of it.
///
/// The callback holds a reference to the `Aio` while it runs; were ours
/// dropped first, the callback's would be the last, and dropping it inside
/// the callback stops the `Aio` from its own callback thread, which waits
/// for that very callback: a deadlock (seen when a future was dropped just
/// as its operation completed). `nng_aio_wait` returns only once the
/// callback, and its reference, are gone.
struct Quiesced(Aio);

impl Drop for Quiesced {
    fn drop(&mut self) {
        {
            let _cancelling = GATE.read().unwrap_or_else(|e| e.into_inner());
            self.0.cancel();
        }
        self.0.wait();
    }
}

/// Keeps socket closes apart from everything else done on a context:
/// starting an operation, cancelling one, closing the context.
///
/// NNG 1.4 is not safe against a socket closing on one thread while
/// another works on one of its contexts. It reads an operation's cancel function and its argument (the
/// protocol's context) under its lock, then calls it after letting go; a
/// socket closing on another thread meanwhile frees that context, and the
/// cancel function locks and unlocks freed memory: the process aborts in
/// `pthread_mutex_unlock` (reproduced by four concurrent runs of a test
/// whose publisher lingers on a runtime thread while the runtime shuts
/// down and drops the publisher's serving tasks). A context closing
/// meanwhile (see [`Ctx`]), or an operation starting on it (the start
/// releases its hold of the context, the last one once the socket closed,
/// and closes it), does the same. Those, and opening a context, take
/// this lock shared, [`Sock::close`] takes it exclusively. One lock for
/// the process: cancels are short and closes rare, and a close need not
/// know which operations are on its socket. Nothing done under the shared
/// lock may take it again (a writer waiting in between would deadlock
/// both): a start closure must not drop a [`Ctx`].
pub(crate) static GATE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Maps an nng operation's failure.
pub(crate) fn failed(e: nng::Error, address: &Address) -> Error {
    match e {
        nng::Error::Closed => Error::Closed,
        nng::Error::TimedOut => Error::Timeout {
            what: "nng operation",
            after: Duration::ZERO,
        },
        // Only a REQ socket without a resend time reports this: the
        // connection its question went on broke (see `ask`).
        nng::Error::ConnectionReset => Error::PeerGone {
            address: address.to_string(),
        },
        e => io(format!("nng operation at {address}"), e),
    }
}

/// Receives on `ctx`.
pub(crate) async fn ctx_recv(ctx: &Context, address: &Address) -> Result<Message> {
    match run(|aio| ctx.recv(aio)).await? {
        AioResult::Recv(Ok(m)) => Ok(m),
        AioResult::Recv(Err(e)) => Err(failed(e, address)),
        _ => Err(Error::Closed),
    }
}

/// Sends `msg` on `ctx`.
pub(crate) async fn ctx_send(ctx: &Context, msg: Message, address: &Address) -> Result<()> {
    match run(|aio| ctx.send(aio, msg).map_err(|(_, e)| e)).await? {
        AioResult::Send(Ok(())) => Ok(()),
        AioResult::Send(Err((_, e))) => Err(failed(e, address)),
        _ => Err(Error::Closed),
    }
}

/// Receives on the socket itself (protocols without contexts: PULL, and
/// SUB, whose subscriptions are the socket's).
pub(crate) async fn sock_recv(sock: &Sock) -> Result<Message> {
    match run(|aio| sock.socket.recv_async(aio)).await? {
        AioResult::Recv(Ok(m)) => Ok(m),
        AioResult::Recv(Err(e)) => Err(failed(e, &sock.address)),
        _ => Err(Error::Closed),
    }
}

/// Sends `msg` on the socket itself (PUB, PUSH).
pub(crate) async fn sock_send(sock: &Sock, msg: Message) -> Result<()> {
    match run(|aio| sock.socket.send_async(aio, msg).map_err(|(_, e)| e)).await? {
        AioResult::Send(Ok(())) => Ok(()),
        AioResult::Send(Err((_, e))) => Err(failed(e, &sock.address)),
        _ => Err(Error::Closed),
    }
}

/// A message holding `bytes`.
pub(crate) fn message(bytes: &[u8]) -> Message {
    message_of(&[bytes])
}

/// A message of `parts`, copied once, one after the other.
pub(crate) fn message_of(parts: &[&[u8]]) -> Message {
    let mut m = Message::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        m.push_back(p);
    }
    m
}

/// A received message's bytes, shared by the frames that point into it.
pub(crate) struct Body(pub Message);

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// Asks like [`ask`], for a question the peer answers within `HOLD` (a
/// poll or a pull), allowing `answer` on top for the answer itself to
/// arrive (a large one on a slow link): a peer that does not answer in
/// that time is taken for gone (its host vanished without closing the
/// connection, or it stalled); the connection is closed, so nng redials,
/// and the caller gets [`Error::PeerGone`].
pub(crate) async fn ask_held(
    sock: &Sock,
    ctx: &Context,
    req: &[u8],
    gone_after: Duration,
    answer: Duration,
) -> Result<Message> {
    let within = super::pubsub::HOLD + gone_after + answer;
    match tokio::time::timeout(within, ask(sock, ctx, req, gone_after)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(address = %sock.address, ?within, "nng: the peer did not answer; its connection is dropped");
            sock.pipes.close_all();
            Err(Error::PeerGone {
                address: sock.address.to_string(),
            })
        }
    }
}

/// Time for an answer of up to `max` bytes to arrive at 4 MiB/s.
pub(crate) fn transfer_allowance(max: usize) -> Duration {
    Duration::from_millis((max as u64) / (4 << 10))
}

/// A REQ socket dialing `address` (as [`Sock::dial`]) and a context on it:
/// every asking end of this backend. No resend timer: a large answer on a
/// slow link must not be asked for twice; [`ask`] asks again when the
/// connection breaks.
pub(crate) async fn dial_req(
    address: &Address,
    opts: &crate::options::Options,
) -> Result<(Sock, Ctx)> {
    let sock = Sock::dial_with(Protocol::Req0, address, opts).await?;
    resend_after(&sock, None)?;
    let ctx = context(&sock)?;
    Ok((sock, ctx))
}

/// Sets how long a REQ socket waits for an answer before it asks again
/// (`None`: never; nng still asks again when a connection breaks).
pub(crate) fn resend_after(sock: &Sock, t: Option<Duration>) -> Result<()> {
    sock.socket
        .set_opt::<nng::options::protocol::reqrep::ResendTime>(t)
        .map_err(|e| io("setting the nng resend time", e))
}

/// A context of `sock` (independent request state on a shared socket).
pub(crate) fn context(sock: &Sock) -> Result<Ctx> {
    // Gated too: NNG 1.4 can leave a context opened while its socket
    // closes out of the close's list, and the close then waits for it for
    // ever.
    let ctx = {
        let _opening = GATE.read().unwrap_or_else(|e| e.into_inner());
        Context::new(&sock.socket).map_err(|e| io("opening an nng context", e))?
    };
    Ok(Ctx(Arc::new(Gated(std::mem::ManuallyDrop::new(ctx)))))
}

/// An nng context that closes through [`GATE`] once its last clone is
/// dropped: NNG 1.4 closing a context while its socket closes on another
/// thread frees the socket's lock under the context's close (an abort in
/// `pthread_mutex_lock`, reproduced when a runtime shutting down dropped a
/// publisher's serving tasks while the publisher's linger closed its
/// socket). This backend clones the `Ctx`, never the nng `Context`
/// behind its `Deref` (whose last clone would close it outside the gate).
#[derive(Clone)]
pub(crate) struct Ctx(Arc<Gated>);

/// The one nng `Context` of a [`Ctx`] and its clones.
struct Gated(std::mem::ManuallyDrop<Context>);

impl std::ops::Deref for Ctx {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.0 .0
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        let _closing = GATE.read().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the context is dropped here once, and `self.0` is not
        // used again (this is `Gated`'s own drop).
        unsafe { std::mem::ManuallyDrop::drop(&mut self.0) };
    }
}

/// Sends the question `req` on the REQ context `ctx` and waits for its
/// answer as long as the socket has a connection, or regains one within
/// `gone_after`; [`Error::PeerGone`] otherwise.
pub(crate) async fn ask(
    sock: &Sock,
    ctx: &Context,
    req: &[u8],
    gone_after: Duration,
) -> Result<Message> {
    ask_parts(sock, ctx, &[req], gone_after).await
}

/// [`ask`] with the question in parts, copied once into each message
/// asked (a batch of pushes need not be gathered into one buffer first).
pub(crate) async fn ask_parts(
    sock: &Sock,
    ctx: &Context,
    parts: &[&[u8]],
    gone_after: Duration,
) -> Result<Message> {
    let gone = || Error::PeerGone {
        address: sock.address.to_string(),
    };
    // A question whose connection breaks each time it is asked (a peer
    // that refuses it by hanging up: over its size limit, another
    // protocol version) is not asked for ever.
    let mut resets = 0;
    'ask: loop {
        let exchange = async {
            let m = message_of(parts);
            // One operation at a time on the context: NNG 1.4's REQ
            // assumes no receive is pending while its question is (a
            // receive started beside the send, then both cancelled, made
            // it free the question twice: SIGSEGV in tests/nng_silent.rs).
            ctx_send(ctx, m, &sock.address).await?;
            ctx_recv(ctx, &sock.address).await
        };
        let mut exchange = std::pin::pin!(exchange);
        let mut lost_since: Option<Instant> = None;
        loop {
            let slice = gone_after.min(Duration::from_millis(250));
            match tokio::time::timeout(slice, exchange.as_mut()).await {
                // The connection the question went on broke. nng asks
                // again by itself only on a socket with a resend time; on
                // one without (the requester's) it ends the receive with
                // ECONNRESET (found by tests/nng_process.rs: a request to a
                // killed replier ended at once with an I/O error, not
                // PeerGone). Ask again once a connection stands, as the
                // sockets with a resend time do; PeerGone when none does
                // within `gone_after`.
                Ok(Err(Error::PeerGone { .. })) => {
                    resets += 1;
                    if resets <= 3 && sock.wait_connected(gone_after).await {
                        continue 'ask;
                    }
                    return Err(gone());
                }
                Ok(r) => return r,
                Err(_) => {}
            }
            if sock.pipes.count() > 0 {
                lost_since = None;
            } else if lost_since.get_or_insert_with(Instant::now).elapsed() >= gone_after {
                return Err(gone());
            }
        }
    }
}

/// Questions in progress per connection at a listener that serves many
/// nng contexts, so that one connection cannot hold them all.
///
/// A peer of this backend asks one question at a time per endpoint (a
/// puller's acknowledgements aside, answered at once), but a raw REQ
/// peer can send many without waiting, and each took a context while it
/// was held (found by tests/nng_hostile.rs: one connection that sent 40
/// pulls at once held every context of a queue, and its pushers waited).
pub(crate) struct InProgress {
    map: Mutex<std::collections::HashMap<Pipe, usize>>,
    max: usize,
}

impl InProgress {
    /// At most `max` questions in progress per connection.
    pub fn new(max: usize) -> Arc<InProgress> {
        Arc::new(InProgress {
            map: Mutex::default(),
            max,
        })
    }

    /// Counts a question from `pipe` until the returned ticket drops;
    /// `None` (counting nothing) when `pipe` already has `max`.
    pub fn enter(self: &Arc<Self>, pipe: Pipe) -> Option<Ticket> {
        let mut m = lock(&self.map);
        let n = m.entry(pipe).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Ticket {
            owner: self.clone(),
            pipe,
        })
    }
}

/// One question counted by [`InProgress::enter`].
pub(crate) struct Ticket {
    owner: Arc<InProgress>,
    pipe: Pipe,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut m = lock(&self.owner.map);
        if let Some(n) = m.get_mut(&self.pipe) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.pipe);
            }
        }
    }
}

/// Counts the question `req` at `busy`: its ticket, or `None` after
/// dropping its connection when that connection asks more at once than
/// a peer of this backend does (`what` names the listener in the log).
pub(crate) fn admit(
    busy: &Arc<InProgress>,
    req: &mut Message,
    address: &Address,
    what: &str,
) -> Option<Option<Ticket>> {
    let Some(pipe) = req.pipe() else {
        return Some(None);
    };
    match busy.enter(pipe) {
        Some(t) => Some(Some(t)),
        None => {
            tracing::warn!(%address, "nng {what}: a peer asks more at once than a shoal endpoint does; dropping its connection");
            close_pipe(pipe);
            None
        }
    }
}

/// Sends the answer `reply` on `ctx`, waiting at most `REPLY_WAIT` for
/// the connection `pipe` to take it (its peer may have stopped reading);
/// then that connection is closed, and the context is free again.
pub(crate) async fn answer_within(
    ctx: &Context,
    reply: Message,
    pipe: Option<Pipe>,
    address: &Address,
    what: &str,
) {
    let wait = super::reqrep::REPLY_WAIT;
    if tokio::time::timeout(wait, ctx_send(ctx, reply, address))
        .await
        .is_err()
    {
        tracing::warn!(%address, "nng {what}: a peer did not take its answer in {wait:?}; dropping its connection");
        if let Some(p) = pipe {
            close_pipe(p);
        }
    }
}

/// A listener's side of one of this backend's protocols (the publisher's,
/// the queue's), served on nng contexts by [`serve`].
pub(crate) trait Service: Send + Sync + 'static {
    /// What the listener is, in logs.
    const WHAT: &'static str;
    /// Its socket.
    fn sock(&self) -> &Sock;
    /// Its questions in progress, per connection.
    fn busy(&self) -> &Arc<InProgress>;
    /// The answer to `req`, which came on `pipe`; an error drops that
    /// connection (a peer that sent something malformed).
    fn answer(
        &self,
        req: Message,
        pipe: Option<Pipe>,
    ) -> impl std::future::Future<Output = Result<Message>> + Send;
    /// Told once an answer (its control block `sent`) left.
    fn answered(&self, _sent: &super::proto::Control) {}
}

/// Serves `svc`'s questions on one context until the socket closes: each
/// connection's activity noted, its questions in progress bounded, each
/// answer sent within `REPLY_WAIT`, and a peer that sent something
/// malformed dropped with the reason logged.
pub(crate) async fn serve<S: Service>(svc: Arc<S>, ctx: Ctx) {
    let (what, address) = (S::WHAT, svc.sock().address.clone());
    loop {
        let mut req = match ctx_recv(&ctx, &address).await {
            Ok(m) => m,
            Err(Error::Closed) => return,
            Err(e) => {
                tracing::debug!(%address, error = %e, "nng {what}: receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let pipe = req.pipe();
        if let Some(p) = pipe {
            svc.sock().pipes.touch(p);
        }
        let Some(_ticket) = admit(svc.busy(), &mut req, &address, what) else {
            continue;
        };
        match svc.answer(req, pipe).await {
            Ok(reply) => {
                let sent = super::proto::Control::decode(reply.as_slice()).ok();
                answer_within(&ctx, reply, pipe, &address, what).await;
                if let Some(c) = sent {
                    svc.answered(&c);
                }
            }
            Err(e) => {
                tracing::warn!(%address, error = %e, "nng {what}: bad message from a peer; dropping its connection");
                if let Some(p) = pipe {
                    close_pipe(p);
                }
            }
        }
    }
}
