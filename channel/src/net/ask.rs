//! Request/reply between a channel's peers on other hosts and the bridge
//! on the channel's host: the asking end ([`NetAsker`], with a heartbeat
//! of its own) and the answering end ([`NetReplier`]).
//!
//! An asker runs its requests on a runtime of its own (one worker
//! thread), so a request can be waited for from any thread, inside an
//! async runtime or not, by parking or by awaiting, and its heartbeat
//! keeps going while the caller is busy elsewhere: the bridge judges an
//! asker gone by its silence, so a live one must never fall silent.

use super::park_on;
use crate::error::{Error, Result};
use shoal_transport::{Address, Options, OwnedFrame};
use std::time::Duration;

#[cfg(any(feature = "nng", feature = "quic"))]
use shoal_transport::{Backend, Frame, Reply};

/// A requester over whichever wire the address names.
pub(crate) enum NetRequester {
    /// Over nng.
    #[cfg(feature = "nng")]
    Nng(shoal_transport::NngRequester),
    /// Over QUIC.
    #[cfg(feature = "quic")]
    Quic(shoal_transport::QuicRequester),
    /// No network backend in this build: never made.
    #[cfg(not(any(feature = "nng", feature = "quic")))]
    #[allow(dead_code)]
    None(std::convert::Infallible),
}

impl NetRequester {
    /// Connects to the replier at `addr` (checked by
    /// [`address`](super::address)).
    #[cfg_attr(not(any(feature = "nng", feature = "quic")), allow(unused_variables))]
    pub(crate) async fn connect(addr: &Address, opts: &Options) -> Result<NetRequester> {
        match addr.backend() {
            #[cfg(feature = "nng")]
            Backend::Nng => Ok(NetRequester::Nng(
                shoal_transport::NngRequester::connect(addr, opts)
                    .await
                    .map_err(Error::Net)?,
            )),
            #[cfg(feature = "quic")]
            Backend::Quic => Ok(NetRequester::Quic(
                shoal_transport::QuicRequester::connect(addr, opts)
                    .await
                    .map_err(Error::Net)?,
            )),
            _ => Err(super::missing(addr)),
        }
    }

    /// Sends `payload` and waits for the reply.
    #[cfg_attr(not(any(feature = "nng", feature = "quic")), allow(unused_variables))]
    pub(crate) async fn request(&mut self, payload: &[u8]) -> Result<OwnedFrame> {
        match self {
            #[cfg(feature = "nng")]
            NetRequester::Nng(r) => r
                .request(payload)
                .await
                .map(Frame::into_owned)
                .map_err(Error::Net),
            #[cfg(feature = "quic")]
            NetRequester::Quic(r) => r
                .request(payload)
                .await
                .map(Frame::into_owned)
                .map_err(Error::Net),
            #[cfg(not(any(feature = "nng", feature = "quic")))]
            NetRequester::None(n) => match *n {},
        }
    }
}

/// What a request's task gives back: the requester, and how it went.
type Done = (NetRequester, Result<OwnedFrame>);

/// Where the requester is between requests.
// Boxing the idle requester would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Slot {
    /// Free.
    Idle(NetRequester),
    /// Asking, for a waiter that was dropped (an async call cancelled):
    /// the request runs to its end, and the next request first waits for
    /// it and keeps its reply (see [`NetAsker::stray`]).
    Busy(tokio::task::JoinHandle<Done>),
    /// Unusable: a request got no reply within its limit (the host is
    /// stuck, or the network), or its task failed. Asking again could do
    /// a request twice, so every later request fails.
    Broken,
    /// Taken for a task of its own (see [`NetAsker::take_requester`]).
    Lent,
}

/// An asking end with a runtime of its own and, once
/// [`heartbeat`](Self::heartbeat) started it, a heartbeat on a second
/// connection.
pub(crate) struct NetAsker {
    /// Shut down in the background on drop (dropping a runtime blocks,
    /// which tokio refuses inside another runtime).
    rt: Option<tokio::runtime::Runtime>,
    slot: Slot,
    /// The reply of a request whose waiter was dropped, found by the next
    /// request.
    stray: Option<Result<OwnedFrame>>,
    address: Address,
    opts: Options,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for NetAsker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetAsker")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// A runtime that shuts down in the background when dropped.
struct Rt(Option<tokio::runtime::Runtime>);

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl NetAsker {
    /// Connects to the replier at `addr` (checked by
    /// [`address`](super::address)). Callable from any thread, inside an
    /// async runtime or not (it parks the thread while it connects).
    pub(crate) fn connect(addr: &Address, opts: &Options) -> Result<NetAsker> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("shoal-net-ask")
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                what: "starting a remote endpoint's runtime",
                source,
            })?;
        let mut rt = Rt(Some(rt));
        let (a, o) = (addr.clone(), opts.clone());
        let connect = match &rt.0 {
            Some(r) => r.spawn(async move { NetRequester::connect(&a, &o).await }),
            None => return Err(broken()),
        };
        let req = match park_on(connect, None) {
            Some(Ok(r)) => r?,
            _ => return Err(broken()),
        };
        Ok(NetAsker {
            rt: rt.0.take(),
            slot: Slot::Idle(req),
            stray: None,
            address: addr.clone(),
            opts: opts.clone(),
            heartbeat: None,
        })
    }

    /// Spawns `fut` on this asker's runtime.
    pub(crate) fn spawn<F>(&self, fut: F) -> Result<tokio::task::JoinHandle<F::Output>>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.rt {
            Some(rt) => Ok(rt.spawn(fut)),
            None => Err(broken()),
        }
    }

    /// Sends `ping` every `every` on a second connection, for as long as
    /// this asker lives (what it gets back is not looked at: the bridge
    /// only needs to hear it).
    pub(crate) fn heartbeat(&mut self, ping: Vec<u8>, every: Duration) -> Result<()> {
        let (a, o) = (self.address.clone(), self.opts.clone());
        self.heartbeat = Some(self.spawn(async move {
            let mut req: Option<NetRequester> = None;
            loop {
                tokio::time::sleep(every).await;
                if req.is_none() {
                    req = NetRequester::connect(&a, &o).await.ok();
                }
                let Some(r) = req.as_mut() else { continue };
                match tokio::time::timeout(every.saturating_mul(4), r.request(&ping)).await {
                    Ok(Ok(_)) => {}
                    // Connected again at the next beat.
                    _ => req = None,
                }
            }
        })?);
        Ok(())
    }

    /// The requester, for a task of its own (once the request on its way
    /// ended); this asker asks nothing more itself.
    pub(crate) fn take_requester(&mut self) -> Result<NetRequester> {
        self.settle()?;
        match std::mem::replace(&mut self.slot, Slot::Lent) {
            Slot::Idle(r) => Ok(r),
            other => {
                self.slot = other;
                Err(broken())
            }
        }
    }

    /// The reply of a request whose waiter was dropped, once the next
    /// request (or this call) found it.
    pub(crate) fn stray(&mut self) -> Option<Result<OwnedFrame>> {
        if matches!(self.slot, Slot::Busy(_)) && self.settle().is_err() {
            return None;
        }
        self.stray.take()
    }

    /// [`stray`](Self::stray), awaited (the thread is not blocked while
    /// the request left on its way ends).
    pub(crate) async fn stray_async(&mut self) -> Option<Result<OwnedFrame>> {
        let stall = self.opts.stall_timeout;
        let done = match &mut self.slot {
            Slot::Busy(h) => Some(tokio::time::timeout(stall, &mut *h).await),
            _ => None,
        };
        match done {
            Some(Ok(Ok((r, got)))) => {
                self.slot = Slot::Idle(r);
                self.stray = Some(got);
            }
            Some(_) => {
                if let Slot::Busy(h) = &self.slot {
                    h.abort();
                }
                self.slot = Slot::Broken;
            }
            None => {}
        }
        self.stray.take()
    }

    /// Whether a request is on its way that nobody waits for.
    pub(crate) fn is_busy(&self) -> bool {
        matches!(self.slot, Slot::Busy(_))
    }

    /// Waits for a request left on its way (up to the stall timeout) and
    /// keeps its reply in `stray`.
    fn settle(&mut self) -> Result<()> {
        if let Slot::Busy(h) = &mut self.slot {
            match park_on(h, Some(self.opts.stall_timeout)) {
                Some(Ok((r, got))) => {
                    self.slot = Slot::Idle(r);
                    self.stray = Some(got);
                }
                Some(Err(_)) | None => self.slot = Slot::Broken,
            }
        }
        match self.slot {
            Slot::Broken | Slot::Lent => Err(broken()),
            _ => Ok(()),
        }
    }

    /// Starts `payload` on its way, once the request before it ended.
    fn start(&mut self, payload: Vec<u8>) -> Result<tokio::task::JoinHandle<Done>> {
        self.settle()?;
        let Slot::Idle(req) = std::mem::replace(&mut self.slot, Slot::Broken) else {
            return Err(broken());
        };
        self.spawn(async move {
            let mut req = req;
            let r = req.request(&payload).await;
            (req, r)
        })
    }

    /// Starts `payload` on its way without waiting: its reply is the next
    /// [`stray`](Self::stray) (a request asked ahead, such as the next
    /// batch of a busy queue).
    pub(crate) fn ask_ahead(&mut self, payload: Vec<u8>) -> Result<()> {
        let h = self.start(payload)?;
        self.slot = Slot::Busy(h);
        Ok(())
    }

    /// Asks `payload` and waits (parking the thread) up to `limit` for the
    /// reply. A reply that does not come in time leaves this asker
    /// broken: asking again could do the request twice.
    pub(crate) fn ask(&mut self, payload: Vec<u8>, limit: Duration) -> Result<OwnedFrame> {
        let mut h = self.start(payload)?;
        match park_on(&mut h, Some(limit)) {
            None => {
                h.abort();
                Err(stuck(limit))
            }
            Some(done) => self.finish(done),
        }
    }

    /// [`ask`](Self::ask), awaited (without a runtime of the caller's: the
    /// request runs on this asker's own). Dropped before the reply came,
    /// the request goes on, and its reply is kept for
    /// [`stray`](Self::stray).
    pub(crate) async fn ask_async(
        &mut self,
        payload: Vec<u8>,
        limit: Duration,
    ) -> Result<OwnedFrame> {
        let h = self.start(payload)?;
        self.slot = Slot::Busy(h);
        let Slot::Busy(h) = &mut self.slot else {
            return Err(broken());
        };
        let done = match tokio::time::timeout(limit, &mut *h).await {
            Err(_) => {
                h.abort();
                self.slot = Slot::Broken;
                return Err(stuck(limit));
            }
            Ok(done) => done,
        };
        self.finish(done)
    }

    /// The requester back in its slot, and the reply.
    fn finish(
        &mut self,
        done: std::result::Result<Done, tokio::task::JoinError>,
    ) -> Result<OwnedFrame> {
        match done {
            Ok((req, r)) => {
                self.slot = Slot::Idle(req);
                r
            }
            Err(_) => {
                self.slot = Slot::Broken;
                Err(broken())
            }
        }
    }
}

impl Drop for NetAsker {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        drop(Rt(self.rt.take()));
    }
}

fn broken() -> Error {
    Error::Remote("this endpoint's connection to the channel's host is unusable (a request got no reply in time)".into())
}

fn stuck(limit: Duration) -> Error {
    Error::Timeout {
        what: "a reply from the channel's host (this endpoint is unusable now)",
        after: limit,
    }
}

/// A replier over whichever wire the address names.
pub(crate) enum NetReplier {
    /// Over nng.
    #[cfg(feature = "nng")]
    Nng(shoal_transport::NngReplier),
    /// Over QUIC.
    #[cfg(feature = "quic")]
    Quic(shoal_transport::QuicReplier),
    /// No network backend in this build: never made.
    #[cfg(not(any(feature = "nng", feature = "quic")))]
    #[allow(dead_code)]
    None(std::convert::Infallible),
}

impl NetReplier {
    /// Binds a replier at `addr` (checked by [`address`](super::address)),
    /// inside the runtime that will serve it.
    #[cfg_attr(not(any(feature = "nng", feature = "quic")), allow(unused_variables))]
    pub(crate) async fn bind(addr: &Address, opts: &Options) -> Result<NetReplier> {
        match addr.backend() {
            #[cfg(feature = "nng")]
            Backend::Nng => Ok(NetReplier::Nng(
                shoal_transport::NngReplier::bind(addr, opts).map_err(Error::Net)?,
            )),
            #[cfg(feature = "quic")]
            Backend::Quic => Ok(NetReplier::Quic(
                shoal_transport::QuicReplier::bind(addr, opts)
                    .await
                    .map_err(Error::Net)?,
            )),
            _ => Err(super::missing(addr)),
        }
    }

    /// The address askers connect to (the port bound, QUIC's pin).
    pub(crate) fn address(&self) -> Address {
        match self {
            #[cfg(feature = "nng")]
            NetReplier::Nng(r) => r.address(),
            #[cfg(feature = "quic")]
            NetReplier::Quic(r) => r.address(),
            #[cfg(not(any(feature = "nng", feature = "quic")))]
            NetReplier::None(n) => match *n {},
        }
    }

    /// Receives one request and answers it with what `answer` writes
    /// (given the request's bytes). Cancel-safe while it waits for a
    /// request.
    #[cfg(any(feature = "nng", feature = "quic"))]
    pub(crate) async fn serve_one<F>(&mut self, answer: F) -> Result<()>
    where
        F: FnOnce(&[u8], &mut Reply<'_>) + Send,
    {
        match self {
            #[cfg(feature = "nng")]
            NetReplier::Nng(r) => r
                .serve_one_into(|req, out| answer(req, out))
                .await
                .map_err(Error::Net),
            #[cfg(feature = "quic")]
            NetReplier::Quic(r) => r
                .serve_one_into(|req, out| answer(req, out))
                .await
                .map_err(Error::Net),
        }
    }
}
