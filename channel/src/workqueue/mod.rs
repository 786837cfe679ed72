//! The work queue: many producers, many consumers, each message taken
//! once, with termination nobody has to guess.
//!
//! Messages travel through one MPMC ring in shared memory (records of any
//! size: small ones in the ring, large ones through overflow segments,
//! zero-copy both ways). Termination is the ring's work accounting:
//! producers [`claim`](Producer::claim) what they will send, someone
//! [`close`](Producer::close)s the queue (no more claims; unclaimed puts
//! stop), and once every claimed message was put and taken, consumers get
//! `None`. A producer that dies (or is dropped) owing claimed messages
//! makes them end with [`Error::ProducersLost`](crate::Error::ProducersLost)
//! once the rest is taken.
//!
//! Producers and consumers on other hosts (with the `nng` or `quic`
//! feature) reach the queue through its bridge, which the creating
//! process runs when [`QueueOptions::remote`] names where: they do what
//! local ones do, with the same rules, over request/reply.
//!
//! - [`producer`]: [`Producer`]: claim, close, put (blocking, try, async,
//!   typed).
//! - [`consumer`]: [`Consumer`] and what it takes ([`Taken`],
//!   [`TryTake`]).
//! - `bridge`: the creator's side of remote peers: a door, and a proxy
//!   endpoint and thread per peer.
//! - `remote`: a remote peer's side.
//! - `wire`: the bytes they exchange.

pub(crate) mod bridge;
pub mod consumer;
pub mod producer;
pub(crate) mod remote;
pub(crate) mod wire;

pub use consumer::{Consumer, Taken, TryTake};
pub use producer::{Producer, TryPutError};

use crate::error::Result;
use crate::handle::{ring_tag, Handle, Kind};
use shoal_shm_ring::{MpmcConfig, MpmcRing, PeerOptions};
use std::time::Duration;

/// How to create a work queue, and how its endpoints wait.
///
/// ```
/// use shoal_channel::QueueOptions;
/// use std::time::Duration;
/// let o = QueueOptions::default()
///     .capacity(4 << 20)
///     .take_timeout(Some(Duration::from_secs(30)));
/// assert_eq!(o.capacity, 4 << 20);
/// ```
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Bytes of the ring (a power of two, 4 KiB to 2 GiB). Messages larger
    /// than half of it travel through overflow segments of their own.
    /// Default 1 MiB.
    pub capacity: u64,
    /// Most producers attached at once. Default 64.
    pub producers: u32,
    /// Most consumers attached at once. Default 64.
    pub consumers: u32,
    /// How long a put waits for room before [`Error::Timeout`]
    /// (`None`: as long as it takes). Default `None`.
    ///
    /// [`Error::Timeout`]: crate::Error::Timeout
    pub put_timeout: Option<Duration>,
    /// How long a take waits for a message before [`Error::Timeout`]
    /// (`None`: until a message comes or the work is over). Default `None`.
    ///
    /// [`Error::Timeout`]: crate::Error::Timeout
    pub take_timeout: Option<Duration>,
    /// How endpoints judge their peers (liveness checks, stall limits).
    pub peer: PeerOptions,
    /// Where the queue's bridge takes producers and consumers on other
    /// hosts (`nng+tcp://IP:PORT`, `quic://IP:PORT`, port 0 for any; the
    /// handle then carries the port bound, and QUIC's pin). `None` (the
    /// default): peers on this host only.
    pub remote: Option<String>,
    /// The network endpoints' options (largest message, connect and stall
    /// timeouts), for the bridge and remote peers.
    pub net: shoal_transport::Options,
    /// How long a remote peer may be silent before the bridge counts it
    /// gone: a remote producer that dies owing claimed messages is known
    /// within this. The creator's lease is the one the bridge keeps; it
    /// tells each peer that joins, and the peer's heartbeat comes every
    /// quarter of the smaller of that and its own. Default 2 s.
    pub lease: Duration,
    /// How many messages a remote consumer takes at once, at most (what
    /// is there: it never waits for more than one), and, when a batch
    /// came full, asks for ahead. Default 1: each message goes to
    /// whichever consumer asks next, and nothing is taken for a consumer
    /// that does not hand it out. More makes a busy queue much cheaper
    /// to drain over the network (64 B messages across two network
    /// namespaces here: about 0.2 M/s at 64, 1.5-1.7 M/s at 1024, over
    /// nng+tcp and QUIC alike), at a price: messages taken for a
    /// consumer and not handed out when it is dropped or dies (up to
    /// twice this many) are lost, counted as taken (a warning names how
    /// many on a drop).
    pub prefetch: u32,
    /// How many bytes past the first message a remote consumer takes at
    /// once, at most. Default 1 MiB.
    pub prefetch_bytes: usize,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            capacity: 1 << 20,
            producers: 64,
            consumers: 64,
            put_timeout: None,
            take_timeout: None,
            peer: PeerOptions::default(),
            remote: None,
            net: shoal_transport::Options::default(),
            lease: Duration::from_secs(2),
            prefetch: 1,
            prefetch_bytes: 1 << 20,
        }
    }
}

impl QueueOptions {
    /// Sets [`capacity`](Self::capacity).
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }
    /// Sets [`producers`](Self::producers) and [`consumers`](Self::consumers).
    pub fn peers(mut self, producers: u32, consumers: u32) -> Self {
        self.producers = producers;
        self.consumers = consumers;
        self
    }
    /// Sets [`put_timeout`](Self::put_timeout).
    pub fn put_timeout(mut self, t: Option<Duration>) -> Self {
        self.put_timeout = t;
        self
    }
    /// Sets [`take_timeout`](Self::take_timeout).
    pub fn take_timeout(mut self, t: Option<Duration>) -> Self {
        self.take_timeout = t;
        self
    }
    /// Sets [`peer`](Self::peer).
    pub fn peer(mut self, p: PeerOptions) -> Self {
        self.peer = p;
        self
    }
    /// Sets [`remote`](Self::remote): where peers on other hosts join.
    pub fn remote(mut self, bind: &str) -> Self {
        self.remote = Some(bind.to_string());
        self
    }
    /// Sets [`net`](Self::net).
    pub fn net(mut self, o: shoal_transport::Options) -> Self {
        self.net = o;
        self
    }
    /// Sets [`lease`](Self::lease).
    pub fn lease(mut self, t: Duration) -> Self {
        self.lease = t;
        self
    }
    /// Sets [`prefetch`](Self::prefetch).
    pub fn prefetch(mut self, messages: u32) -> Self {
        self.prefetch = messages;
        self
    }
    /// The network options of the bridge and remote peers.
    pub(crate) fn net_options(&self) -> shoal_transport::Options {
        let mut o = self.net.clone();
        o.max_peers = o
            .max_peers
            .max(self.producers.saturating_add(self.consumers));
        o
    }
}

/// A work queue, held by the process that created it: its shared memory
/// lives while this value does (endpoints on this host already attached
/// keep working after it is dropped; new ones cannot attach). Its bridge
/// to other hosts, if any, stops with it: remote endpoints then fail.
///
/// ```
/// use shoal_channel::{QueueOptions, WorkQueue};
/// let q = WorkQueue::create(&QueueOptions::default())?;
/// let (mut p, mut c) = (q.producer()?, q.consumer()?);
/// p.put(b"task")?;
/// assert_eq!(&*c.take()?.expect("a message"), b"task");
/// # Ok::<(), shoal_channel::Error>(())
/// ```
#[derive(Debug)]
pub struct WorkQueue {
    ring: MpmcRing,
    handle: Handle,
    opts: QueueOptions,
    /// Remote peers' way in, if the queue takes any.
    bridge: Option<bridge::Bridge>,
}

impl WorkQueue {
    /// Creates a queue in shared memory.
    pub fn create(opts: &QueueOptions) -> Result<WorkQueue> {
        WorkQueue::create_kind(opts, Kind::WorkQueue)
    }

    /// Creates the ring of a channel of `kind` built on a work queue.
    pub(crate) fn create_kind(opts: &QueueOptions, kind: Kind) -> Result<WorkQueue> {
        let cfg = MpmcConfig::new(opts.capacity, opts.producers, opts.consumers)
            .payload_format(ring_tag(kind).as_bytes());
        let ring = MpmcRing::create(&cfg)?;
        let mut handle = Handle::new(kind, ring.handle().to_string());
        let bridge = match &opts.remote {
            Some(_) => Some(bridge::Bridge::start(&handle, kind, opts)?),
            None => None,
        };
        if let Some(b) = &bridge {
            handle = handle.with_remote(b.address().to_string());
        }
        Ok(WorkQueue {
            ring,
            handle,
            opts: opts.clone(),
            bridge,
        })
    }

    /// The handle other processes attach with.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// A producer in this process (with this queue's options).
    pub fn producer(&self) -> Result<Producer> {
        Producer::attach_kind(&self.handle, &self.opts, Kind::WorkQueue, Vec::new())
    }

    /// A consumer in this process (with this queue's options).
    pub fn consumer(&self) -> Result<Consumer> {
        Consumer::attach_kind(&self.handle, &self.opts, Kind::WorkQueue, 0)
    }

    /// The remote peers that joined through the bridge so far.
    pub(crate) fn remote_peers(&self) -> Vec<bridge::PeerInfo> {
        match &self.bridge {
            Some(b) => b
                .roster()
                .lock()
                .map(|r| r.clone())
                .unwrap_or_else(|p| p.into_inner().clone()),
            None => Vec::new(),
        }
    }

    /// The ring's handle (for tests and diagnostics).
    #[doc(hidden)]
    pub fn ring_handle(&self) -> shoal_shm_ring::Handle {
        self.ring.handle()
    }
}

/// Attaches an endpoint with `join`, trying again twice when every slot
/// looked taken: a consumer settling a dead producer's debt holds that
/// slot's lease for a moment.
pub(crate) fn attach<T>(join: impl Fn() -> shoal_shm_ring::Result<T>) -> crate::error::Result<T> {
    let mut tries = 0;
    loop {
        match join() {
            Err(shoal_shm_ring::Error::NoFreeSlot { .. }) if tries < 2 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            r => return r.map_err(crate::error::attach_error),
        }
    }
}

/// The payload-format tag the ring of a channel of `kind` must carry.
pub(crate) fn expected_tag(kind: Kind) -> [u8; shoal_shm_ring::FORMAT_TAG_LEN] {
    let tag = ring_tag(kind);
    let mut t = [0u8; shoal_shm_ring::FORMAT_TAG_LEN];
    let n = tag.len().min(t.len());
    t[..n].copy_from_slice(&tag.as_bytes()[..n]);
    t
}
