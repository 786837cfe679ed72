//! Peers on other hosts: the network endpoints a channel uses for them,
//! chosen by the address's backend (`nng+tcp://`, `nng+ipc://` with the
//! `nng` feature, `quic://` with `quic`). An address whose backend this
//! build lacks is refused with an error naming the feature.
//!
//! A publisher is driven from the writer's thread (through
//! [`Blocking`]): a send returns once the network took it, and its errors
//! are the send's. A subscriber runs on a thread of its own (its
//! connection must be served while the reader is busy elsewhere) and
//! hands what it receives over a bounded queue: when the reader falls
//! behind, the queue fills, the thread stops reading, and the publisher's
//! flow control holds the writer back, as a full ring would.

pub(crate) mod ask;
pub(crate) mod serve;

use crate::error::{Error, Result};
use shoal_transport::{Address, Backend, Options, OwnedFrame};
use std::time::Duration;

#[cfg(any(feature = "nng", feature = "quic"))]
use shoal_transport::{blocking::Blocking, Frame, Subscriber, Wire};

/// Batches a subscriber's thread holds for its reader.
const FEED_DEPTH: usize = 4;
/// Most messages in one batch (what was there at once, handed over with
/// one wake-up instead of one each).
#[cfg(any(feature = "nng", feature = "quic"))]
const BATCH_MAX: usize = 32;
/// Most payload bytes in one batch (past the first message).
#[cfg(any(feature = "nng", feature = "quic"))]
const BATCH_BYTES: usize = 4 << 20;

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

/// A publisher for a channel's remote readers.
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
                Blocking::new(shoal_transport::Nng::bind_publisher(addr, opts))
                    .map_err(Error::Net)?,
            )),
            #[cfg(feature = "quic")]
            Backend::Quic => Ok(NetPublisher::Quic(
                Blocking::new(shoal_transport::Quic::bind_publisher(addr, opts))
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
            NetPublisher::Nng(p) => p.publish(topic, payload).map_err(Error::Net),
            #[cfg(feature = "quic")]
            NetPublisher::Quic(p) => p.publish(topic, payload).map_err(Error::Net),
            #[cfg(not(any(feature = "nng", feature = "quic")))]
            NetPublisher::None(n) => match *n {},
        }
    }

    /// Waits until `n` subscribers receive (up to `timeout`); how many do.
    #[cfg_attr(not(any(feature = "nng", feature = "quic")), allow(unused_variables))]
    pub(crate) fn wait_for_subscribers(&mut self, n: u32, timeout: Duration) -> Result<u32> {
        match self {
            #[cfg(feature = "nng")]
            NetPublisher::Nng(p) => p.wait_for_subscribers(n, timeout).map_err(Error::Net),
            #[cfg(feature = "quic")]
            NetPublisher::Quic(p) => p.wait_for_subscribers(n, timeout).map_err(Error::Net),
            #[cfg(not(any(feature = "nng", feature = "quic")))]
            NetPublisher::None(n) => match *n {},
        }
    }
}

/// What a subscriber's thread hands its reader.
type Item = shoal_transport::Result<OwnedFrame>;

/// A subscriber on a thread of its own, and the queue it fills.
pub(crate) struct NetFeed {
    rx: tokio::sync::mpsc::Receiver<Vec<Item>>,
    /// The rest of the last batch, oldest first.
    pending: std::collections::VecDeque<Item>,
}

impl std::fmt::Debug for NetFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetFeed")
    }
}

impl NetFeed {
    /// Connects a subscriber to the publisher at `addr` (checked by
    /// [`address`]); returns once it is connected, or with why not.
    #[cfg_attr(
        not(any(feature = "nng", feature = "quic")),
        allow(unused_variables, unreachable_code)
    )]
    /// Once subscribed, it says `hello` (bytes, at an address) if given:
    /// how a remote reader tells the writer who it is.
    pub(crate) fn connect(
        addr: &Address,
        opts: &Options,
        hello: Option<(Address, Vec<u8>)>,
    ) -> Result<NetFeed> {
        let (tx, rx) = tokio::sync::mpsc::channel(FEED_DEPTH);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Item>(1);
        let (addr2, opts2) = (addr.clone(), opts.clone());
        let run: Box<dyn FnOnce() + Send> = match addr.backend() {
            #[cfg(feature = "nng")]
            Backend::Nng => {
                Box::new(move || feed::<shoal_transport::Nng>(addr2, opts2, hello, tx, ready_tx))
            }
            #[cfg(feature = "quic")]
            Backend::Quic => {
                Box::new(move || feed::<shoal_transport::Quic>(addr2, opts2, hello, tx, ready_tx))
            }
            _ => {
                return Err(Error::Net(shoal_transport::Error::BackendMissing {
                    address: addr.to_string(),
                    feature: addr.backend().feature(),
                }))
            }
        };
        std::thread::Builder::new()
            .name("shoal-net-feed".into())
            .spawn(run)
            .map_err(|source| Error::Io {
                what: "starting a remote reader's thread",
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(_)) => Ok(NetFeed {
                rx,
                pending: Default::default(),
            }),
            Ok(Err(e)) => Err(Error::Net(e)),
            Err(_) => Err(Error::Net(shoal_transport::Error::Closed)),
        }
    }

    /// The next message, waiting up to `timeout` (`None`: as long as it
    /// takes); `Ok(None)` when the time ran out. Blocks the thread (no
    /// runtime needed, none entered: also callable from inside one, where
    /// it blocks that thread as any blocking call does).
    pub(crate) fn recv_blocking(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<OwnedFrame>> {
        if let Some(i) = self.pending.pop_front() {
            return item(i).map(Some);
        }
        match park_on(self.rx.recv(), timeout) {
            None => Ok(None),
            Some(None) => gone(),
            Some(Some(batch)) => self.unpack(batch).map(Some),
        }
    }

    /// The first of `batch`, the rest kept for the next receives.
    fn unpack(&mut self, batch: Vec<Item>) -> Result<OwnedFrame> {
        let mut it = batch.into_iter();
        let first = it.next();
        self.pending.extend(it);
        match first {
            Some(i) => item(i),
            // The feed never sends an empty batch.
            None => gone(),
        }
    }

    /// The next message if one is there now.
    pub(crate) fn try_recv(&mut self) -> Result<Option<OwnedFrame>> {
        use tokio::sync::mpsc::error::TryRecvError;
        if let Some(i) = self.pending.pop_front() {
            return item(i).map(Some);
        }
        match self.rx.try_recv() {
            Ok(batch) => self.unpack(batch).map(Some),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => gone(),
        }
    }

    /// The next message, awaited. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Result<OwnedFrame> {
        if let Some(i) = self.pending.pop_front() {
            return item(i);
        }
        match self.rx.recv().await {
            Some(batch) => self.unpack(batch),
            None => gone(),
        }
    }
}

/// A received item as the channel reports it: the publisher closing is
/// the ring's `Closed` (what a local reader of a closed broadcast gets).
fn item(i: Item) -> Result<OwnedFrame> {
    match i {
        Ok(f) => Ok(f),
        Err(shoal_transport::Error::Closed) => Err(shoal_shm_ring::Error::Closed.into()),
        Err(e) => Err(Error::Net(e)),
    }
}

/// `fut`'s output if it is ready at the first poll (a receive that would
/// wait is dropped: receives are cancel-safe).
#[cfg(any(feature = "nng", feature = "quic"))]
fn poll_once<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
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

/// The feed's thread is gone (it ended after reporting why).
fn gone<T>() -> Result<T> {
    Err(shoal_shm_ring::Error::Closed.into())
}

/// A subscriber's thread: connects, says how that went, then hands every
/// message (or the error that ends it) to the reader until the reader is
/// gone.
#[cfg(any(feature = "nng", feature = "quic"))]
fn feed<W: Wire>(
    addr: Address,
    opts: Options,
    hello: Option<(Address, Vec<u8>)>,
    tx: tokio::sync::mpsc::Sender<Vec<Item>>,
    ready: std::sync::mpsc::SyncSender<Item>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(source) => {
            let _ = ready.send(Err(shoal_transport::Error::Io {
                what: "starting a remote reader's runtime".into(),
                source,
            }));
            return;
        }
    };
    rt.block_on(async move {
        let mut sub = match W::connect_subscriber(&addr, &opts).await {
            Ok(s) => {
                if let Some((door, bytes)) = hello {
                    // Best effort: a reader whose hello is lost reads all
                    // the same, counted but not named.
                    let said = async {
                        let mut r = ask::NetRequester::connect(&door, &opts).await?;
                        r.request(&bytes).await.map(drop)
                    };
                    if let Err(e) = tokio::time::timeout(opts.connect_timeout, said)
                        .await
                        .unwrap_or(Err(Error::Net(shoal_transport::Error::Closed)))
                    {
                        tracing::debug!(error = %e, "remote reader: its hello did not reach the writer");
                    }
                }
                // The reader only looks at whether this is an error.
                let _ = ready.send(Ok(Frame::owned(
                    shoal_transport::AlignedBuf::with_capacity(0),
                )
                .into_owned()));
                s
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        loop {
            let got = tokio::select! {
                r = sub.recv() => Some(r.map(Frame::into_owned)),
                _ = tx.closed() => None,
            };
            let Some(item) = got else { break };
            // The publisher closing ends the feed; other errors are said
            // once and receiving goes on (the subscriber connects again:
            // a writer that is gone for good gives `PeerGone` at each
            // try, each after the connect timeout).
            let mut end = matches!(item, Err(shoal_transport::Error::Closed));
            let mut bytes = 0;
            let mut batch = vec![item];
            // What else is there already goes with it (one hand-over).
            while !end && batch.len() < BATCH_MAX && bytes < BATCH_BYTES {
                let Some(more) = poll_once(sub.recv()) else {
                    break;
                };
                let more = more.map(Frame::into_owned);
                bytes += more.as_ref().map_or(0, |f| f.len());
                end = matches!(more, Err(shoal_transport::Error::Closed));
                batch.push(more);
            }
            if tx.send(batch).await.is_err() || end {
                break;
            }
        }
        // Dropping the subscriber closes its connection; the runtime's
        // drivers send that on, if they get to run before the runtime
        // goes (else the publisher lingers for the connection until its
        // own timeout).
        drop(sub);
        tokio::time::sleep(Duration::from_millis(20)).await;
    });
}
