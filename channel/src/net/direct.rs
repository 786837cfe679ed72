//! A remote reader's subscriber, received from on the reader's own thread:
//! the subscriber lives on a runtime of its own (one worker, which serves
//! its connection while the reader is busy elsewhere), and a receive
//! polls it directly from the reader's thread, parked while nothing is
//! there. A message reaches the reader with one wake-up (the wire's, or
//! the runtime's), not two (through a thread of the reader's and a queue).

use super::{missing, park_on};
use crate::error::{Error, Result};
use shoal_transport::{Address, Options, OwnedFrame};
use std::time::Duration;

#[cfg(any(feature = "nng", feature = "quic"))]
use shoal_transport::{Backend, Frame, Wire};

/// A subscriber over whichever wire the address names (one per remote
/// reader, made once: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Sub {
    #[cfg(feature = "nng")]
    Nng(shoal_transport::NngSubscriber),
    #[cfg(feature = "quic")]
    Quic(shoal_transport::QuicSubscriber),
    #[cfg(not(any(feature = "nng", feature = "quic")))]
    #[allow(dead_code)]
    None(std::convert::Infallible),
}

impl Sub {
    /// The next message (cancel-safe: the wire's receives are).
    #[cfg_attr(
        not(any(feature = "nng", feature = "quic")),
        allow(clippy::unused_async)
    )]
    async fn recv(&mut self) -> shoal_transport::Result<OwnedFrame> {
        match self {
            #[cfg(feature = "nng")]
            Sub::Nng(s) => s.recv().await.map(Frame::into_owned),
            #[cfg(feature = "quic")]
            Sub::Quic(s) => s.recv().await.map(Frame::into_owned),
            #[cfg(not(any(feature = "nng", feature = "quic")))]
            Sub::None(n) => match *n {},
        }
    }
}

/// A receive on its way: it owns the subscriber, and is kept (not
/// dropped) when a wait for it ends, so the next call goes on with it: a
/// receive never loses what the wire already handed it, and a reconnect
/// that takes longer than one wait still finishes.
type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = (Sub, Received)> + Send>>;

/// A value reached only through `&mut` (so sharing `&Exclusive` between
/// threads shares nothing): what lets a reader holding a receive on its
/// way stay `Sync`, as `std::sync::Exclusive` (unstable) does.
struct Exclusive<T>(T);

// SAFETY: no method gives access to the inner value through `&self` (only
// `get_mut`, through `&mut self`), so a shared reference from another
// thread cannot touch it; moving it is covered by `T: Send`. What would
// break this: adding a `&self` accessor.
unsafe impl<T: Send> Sync for Exclusive<T> {}

impl<T> Exclusive<T> {
    fn get_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// What a receive gives back.
type Received = shoal_transport::Result<OwnedFrame>;

/// A remote reader's subscriber (see the module's doc).
pub(crate) struct NetFeed {
    /// Shut down in the background on drop (after the subscriber).
    rt: Option<tokio::runtime::Runtime>,
    /// The subscriber, between receives.
    sub: Option<Sub>,
    /// The receive on its way, if any (it holds the subscriber then).
    pending: Option<Exclusive<Pending>>,
    /// The publisher closed: every later receive says so.
    closed: bool,
}

impl std::fmt::Debug for NetFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetFeed")
    }
}

impl NetFeed {
    /// Connects a subscriber to the publisher at `addr` (checked by
    /// [`address`](super::address)); once subscribed, says `hello` if
    /// given (how a remote reader tells the writer who it is, and then
    /// how far it got, on a task of the subscriber's runtime).
    #[cfg_attr(
        not(any(feature = "nng", feature = "quic")),
        allow(unused_variables, unreachable_code, unused_assignments)
    )]
    pub(crate) fn connect(
        addr: &Address,
        opts: &Options,
        hello: Option<crate::broadcast::Greeter>,
    ) -> Result<NetFeed> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("shoal-net-sub")
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                what: "starting a remote reader's runtime",
                source,
            })?;
        let (a, o) = (addr.clone(), opts.clone());
        let connect = async move {
            let sub = match a.backend() {
                #[cfg(feature = "nng")]
                Backend::Nng => Sub::Nng(
                    shoal_transport::Nng::connect_subscriber(&a, &o)
                        .await
                        .map_err(Error::Net)?,
                ),
                #[cfg(feature = "quic")]
                Backend::Quic => Sub::Quic(
                    shoal_transport::Quic::connect_subscriber(&a, &o)
                        .await
                        .map_err(Error::Net)?,
                ),
                _ => return Err(missing(&a)),
            };
            if let Some(g) = hello {
                g.greet(&o).await;
            }
            Ok(sub)
        };
        let sub = match park_on(rt.spawn(connect), None) {
            Some(Ok(r)) => r,
            _ => Err(Error::Net(shoal_transport::Error::Closed)),
        };
        match sub {
            Ok(sub) => Ok(NetFeed {
                rt: Some(rt),
                sub: Some(sub),
                pending: None,
                closed: false,
            }),
            Err(e) => {
                rt.shutdown_background();
                Err(e)
            }
        }
    }

    /// A receive's result as the channel reports it: the publisher
    /// closing is the ring's `Closed` (what a local reader of a closed
    /// broadcast gets), and stays so.
    fn settle(&mut self, r: Received) -> Result<OwnedFrame> {
        match r {
            Ok(f) => Ok(f),
            Err(shoal_transport::Error::Closed) => {
                self.closed = true;
                Err(shoal_shm_ring::Error::Closed.into())
            }
            Err(e) => Err(Error::Net(e)),
        }
    }

    /// The receive on its way, started if there is none (`None`: closed).
    fn pending(&mut self) -> Option<&mut Pending> {
        if self.pending.is_none() {
            let mut sub = self.sub.take()?;
            self.pending = Some(Exclusive(Box::pin(async move {
                let r = sub.recv().await;
                (sub, r)
            })));
        }
        self.pending.as_mut().map(Exclusive::get_mut)
    }

    /// A receive that ended: the subscriber back, and its result.
    fn finish(&mut self, (sub, r): (Sub, Received)) -> Result<OwnedFrame> {
        self.pending = None;
        self.sub = Some(sub);
        self.settle(r)
    }

    /// The next message, waiting up to `timeout` (`None`: as long as it
    /// takes); `Ok(None)` when the time ran out (the receive goes on at
    /// the next call). Parks the thread (also callable from inside a
    /// runtime, where it blocks that thread as any blocking call does).
    pub(crate) fn recv_blocking(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<OwnedFrame>> {
        if self.closed {
            return Err(shoal_shm_ring::Error::Closed.into());
        }
        let Some(handle) = self.rt.as_ref().map(|rt| rt.handle().clone()) else {
            return Err(shoal_shm_ring::Error::Closed.into());
        };
        // The subscriber's waits (timers, tasks) belong to its runtime.
        let _in = handle.enter();
        let Some(p) = self.pending() else {
            return Err(shoal_shm_ring::Error::Closed.into());
        };
        match park_on(p.as_mut(), timeout) {
            None => Ok(None),
            Some(done) => self.finish(done).map(Some),
        }
    }

    /// The next message if one is there now.
    pub(crate) fn try_recv(&mut self) -> Result<Option<OwnedFrame>> {
        self.recv_blocking(Some(Duration::ZERO))
    }

    /// The next message, awaited (on the caller's runtime; the
    /// subscriber's own serves its connection). Cancel-safe: dropped, the
    /// receive goes on at the next call.
    pub(crate) async fn recv(&mut self) -> Result<OwnedFrame> {
        if self.closed {
            return Err(shoal_shm_ring::Error::Closed.into());
        }
        let Some(rt) = self.rt.as_ref().map(|rt| rt.handle().clone()) else {
            return Err(shoal_shm_ring::Error::Closed.into());
        };
        let Some(p) = self.pending() else {
            return Err(shoal_shm_ring::Error::Closed.into());
        };
        let done = InRuntime {
            rt,
            fut: p.as_mut(),
        }
        .await;
        self.finish(done)
    }
}

/// A future polled inside a runtime's context (so what it creates, timers
/// and tasks, belongs to that runtime, whoever awaits it).
struct InRuntime<F> {
    rt: tokio::runtime::Handle,
    fut: F,
}

impl<F: std::future::Future + Unpin> std::future::Future for InRuntime<F> {
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let _in = self.rt.enter();
        std::pin::Pin::new(&mut self.fut).poll(cx)
    }
}

impl Drop for NetFeed {
    /// Drops the subscriber inside its runtime (its connection closes),
    /// lets the runtime send that for a moment, then shuts it down in the
    /// background (dropping a runtime blocks, which tokio refuses inside
    /// another runtime).
    fn drop(&mut self) {
        let Some(rt) = self.rt.take() else { return };
        {
            let _in = rt.enter();
            drop(self.pending.take());
            self.sub = None;
        }
        let pause = rt.spawn(async { tokio::time::sleep(Duration::from_millis(20)).await });
        let _ = park_on(pause, Some(Duration::from_millis(50)));
        rt.shutdown_background();
    }
}
