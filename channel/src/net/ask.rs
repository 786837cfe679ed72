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
    /// Asking (a request whose waiter gave up or was dropped still runs
    /// to its end; the next request waits for it first).
    Busy(tokio::task::JoinHandle<Done>),
    /// Lost with a task that panicked or was cancelled.
    Broken,
}

/// An asking end with a runtime of its own and, once
/// [`heartbeat`](Self::heartbeat) started it, a heartbeat on a second
/// connection.
pub(crate) struct NetAsker {
    rt: tokio::runtime::Runtime,
    slot: Slot,
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

impl NetAsker {
    /// Connects to the replier at `addr` (checked by
    /// [`address`](super::address)).
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
        let (a, o) = (addr.clone(), opts.clone());
        let connect = rt.spawn(async move { NetRequester::connect(&a, &o).await });
        let req = match park_on(connect, None) {
            Some(Ok(r)) => r?,
            _ => return Err(Error::Net(shoal_transport::Error::Closed)),
        };
        Ok(NetAsker {
            rt,
            slot: Slot::Idle(req),
            address: addr.clone(),
            opts: opts.clone(),
            heartbeat: None,
        })
    }

    /// Sends `ping` every `every` on a second connection, for as long as
    /// this asker lives (what it gets back is not looked at: the bridge
    /// only needs to hear it).
    pub(crate) fn heartbeat(&mut self, ping: Vec<u8>, every: Duration) {
        let (a, o) = (self.address.clone(), self.opts.clone());
        self.heartbeat = Some(self.rt.spawn(async move {
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
        }));
    }

    /// Starts `payload` on its way, once the request before it ended.
    fn start(&mut self, payload: Vec<u8>) -> Result<&mut tokio::task::JoinHandle<Done>> {
        let req = match std::mem::replace(&mut self.slot, Slot::Broken) {
            Slot::Idle(r) => r,
            // Every request ends within the bridge's wait cap and the
            // network's timeouts; a bridge alive but stuck for longer
            // than the stall timeout loses this asker.
            Slot::Busy(h) => match park_on(h, Some(self.opts.stall_timeout)) {
                Some(Ok((r, _))) => r,
                _ => return Err(broken()),
            },
            Slot::Broken => return Err(broken()),
        };
        let h = self.rt.spawn(async move {
            let mut req = req;
            let r = req.request(&payload).await;
            (req, r)
        });
        self.slot = Slot::Busy(h);
        match &mut self.slot {
            Slot::Busy(h) => Ok(h),
            _ => Err(broken()),
        }
    }

    /// Asks `payload` and waits (parking the thread) up to `limit` for the
    /// reply; a request whose reply did not come in time goes on, and
    /// the next waits for it.
    pub(crate) fn ask(&mut self, payload: Vec<u8>, limit: Duration) -> Result<OwnedFrame> {
        let h = self.start(payload)?;
        match park_on(h, Some(limit)) {
            None => Err(Error::Timeout {
                what: "a reply from the channel's host",
                after: limit,
            }),
            Some(done) => self.finish(done),
        }
    }

    /// [`ask`](Self::ask), awaited (without a runtime of the caller's: the
    /// request runs on this asker's own).
    pub(crate) async fn ask_async(
        &mut self,
        payload: Vec<u8>,
        limit: Duration,
    ) -> Result<OwnedFrame> {
        let h = self.start(payload)?;
        match tokio::time::timeout(limit, h).await {
            Err(_) => Err(Error::Timeout {
                what: "a reply from the channel's host",
                after: limit,
            }),
            Ok(done) => self.finish(done),
        }
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
    }
}

fn broken() -> Error {
    Error::Net(shoal_transport::Error::Closed)
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
