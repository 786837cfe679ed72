//! Peers on other hosts: the network endpoints a channel uses for them,
//! chosen by the address's backend (`nng+tcp://`, `nng+ipc://` with the
//! `nng` feature, `quic://` with `quic`). An address whose backend this
//! build lacks is refused with an error naming the feature.
//!
//! A publisher is driven from the writer's thread (through
//! [`Blocking`]): a send returns once the network took it, and its errors
//! are the send's. A subscriber lives on a runtime of its own, which
//! serves its connection while the reader is busy elsewhere, and is
//! received from on the reader's thread ([`direct`]): when the reader
//! falls behind, the publisher's flow control holds the writer back, as a
//! full ring would.

pub(crate) mod ask;
pub(crate) mod direct;
pub(crate) mod serve;

use crate::error::{Error, Result};
use shoal_transport::{Address, Backend, Options};
use std::time::Duration;

#[cfg(any(feature = "nng", feature = "quic"))]
use shoal_transport::{blocking::Blocking, Wire};

/// An address for remote peers, checked: parsed, a network backend, and
/// one this build has.
pub(crate) fn address(url: &str) -> Result<Address> {
    let a: Address = url.parse().map_err(Error::Net)?;
    if !matches!(a.backend(), Backend::Nng | Backend::Quic) {
        return Err(Error::Net(shoal_transport::Error::BadAddress {
            address: url.to_string(),
            why: "peers on other hosts need a network address (nng+tcp://, nng+ipc://, quic://)"
                .into(),
        }));
    }
    a.check_available().map_err(Error::Net)?;
    Ok(a)
}

/// `addr` on any port of its host (QUIC: no pin; an ipc path: with
/// `suffix`): where a second endpoint binds beside a first one.
pub(crate) fn any_port(addr: &Address, suffix: &str) -> Address {
    match addr {
        Address::NngTcp { host, native, .. } => Address::NngTcp {
            host: host.clone(),
            port: 0,
            native: *native,
        },
        Address::Quic { host, .. } => Address::Quic {
            host: host.clone(),
            port: 0,
            pin: None,
        },
        Address::NngIpc { path, native } => {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            Address::NngIpc {
                path: p.into(),
                native: *native,
            }
        }
        other => other.clone(),
    }
}

/// The error for an address whose backend this build lacks.
pub(crate) fn missing(addr: &Address) -> Error {
    Error::Net(shoal_transport::Error::BackendMissing {
        address: addr.to_string(),
        feature: addr.backend().feature(),
    })
}

/// Runs `f`, which blocks on a tokio runtime of its own (a transport's
/// [`Blocking`] wrapper), from wherever it is called: blocking on one
/// runtime inside another panics in tokio, so inside a multi-thread
/// runtime `f` runs in `block_in_place` (the runtime's other tasks go on
/// on its other threads), inside a current-thread one on a thread of its
/// own (the caller's thread waits for it: its runtime's other tasks wait
/// with it, as they would for any blocking call).
#[cfg(any(feature = "nng", feature = "quic"))]
pub(crate) fn outside_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Err(_) => f(),
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

/// A publisher for a channel's remote readers. Its calls block; they may
/// be made from inside a tokio runtime (see [`outside_runtime`]).
pub(crate) enum NetPublisher {
    /// Over nng.
    #[cfg(feature = "nng")]
    Nng(Blocking<shoal_transport::NngPublisher>),
    /// Over QUIC.
    #[cfg(feature = "quic")]
    Quic(Blocking<shoal_transport::QuicPublisher>),
    /// No network backend in this build: never made.
    #[cfg(not(any(feature = "nng", feature = "quic")))]
    #[allow(dead_code)]
    None(std::convert::Infallible),
}

impl std::fmt::Debug for NetPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetPublisher")
    }
}

impl NetPublisher {
    /// Binds a publisher at `addr` (checked by [`address`]).
    #[cfg_attr(not(any(feature = "nng", feature = "quic")), allow(unused_variables))]
    pub(crate) fn bind(addr: &Address, opts: &Options) -> Result<NetPublisher> {
        match addr.backend() {
            #[cfg(feature = "nng")]
            Backend::Nng => Ok(NetPublisher::Nng(
                outside_runtime(|| Blocking::new(shoal_transport::Nng::bind_publisher(addr, opts)))
                    .map_err(Error::Net)?,
            )),
            #[cfg(feature = "quic")]
            Backend::Quic => Ok(NetPublisher::Quic(
                outside_runtime(|| {
                    Blocking::new(shoal_transport::Quic::bind_publisher(addr, opts))
                })
                .map_err(Error::Net)?,
            )),
            _ => Err(Error::Net(shoal_transport::Error::BackendMissing {
                address: addr.to_string(),
                feature: addr.backend().feature(),
            })),
        }
    }

    /// The address remote readers connect to (with the port bound and
    /// QUIC's certificate pin).
    pub(crate) fn address(&mut self) -> Address {
        match self {
            #[cfg(feature = "nng")]
            NetPublisher::Nng(p) => p.get_mut().address(),
            #[cfg(feature = "quic")]
            NetPublisher::Quic(p) => p.get_mut().address(),
            #[cfg(not(any(feature = "nng", feature = "quic")))]
            NetPublisher::None(n) => match *n {},
        }
    }

    /// Sends `payload` under `topic` to every subscriber, waiting for the
    /// slowest (up to the options' send timeout).
    #[cfg_attr(not(any(feature = "nng", feature = "quic")), allow(unused_variables))]
    pub(crate) fn publish(&mut self, topic: &[u8], payload: &[u8]) -> Result<()> {
        match self {
            #[cfg(feature = "nng")]
            NetPublisher::Nng(p) => {
                outside_runtime(|| p.publish(topic, payload)).map_err(Error::Net)
            }
            #[cfg(feature = "quic")]
            NetPublisher::Quic(p) => {
                outside_runtime(|| p.publish(topic, payload)).map_err(Error::Net)
            }
            #[cfg(not(any(feature = "nng", feature = "quic")))]
            NetPublisher::None(n) => match *n {},
        }
    }

    /// Waits until `n` subscribers receive (up to `timeout`); how many do.
    #[cfg_attr(not(any(feature = "nng", feature = "quic")), allow(unused_variables))]
    pub(crate) fn wait_for_subscribers(&mut self, n: u32, timeout: Duration) -> Result<u32> {
        match self {
            #[cfg(feature = "nng")]
            NetPublisher::Nng(p) => {
                outside_runtime(|| p.wait_for_subscribers(n, timeout)).map_err(Error::Net)
            }
            #[cfg(feature = "quic")]
            NetPublisher::Quic(p) => {
                outside_runtime(|| p.wait_for_subscribers(n, timeout)).map_err(Error::Net)
            }
            #[cfg(not(any(feature = "nng", feature = "quic")))]
            NetPublisher::None(n) => match *n {},
        }
    }
}

/// Runs `fut` to completion on this thread, parking it between polls, for
/// up to `timeout`; `None` when the time ran out. For futures that only
/// need a waker (channel receives), not a runtime's drivers.
pub(crate) fn park_on<F: std::future::Future>(
    fut: F,
    timeout: Option<Duration>,
) -> Option<F::Output> {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let end = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
    let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        match end {
            None => std::thread::park(),
            Some(end) => {
                let left = end.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return None;
                }
                std::thread::park_timeout(left);
            }
        }
    }
}
