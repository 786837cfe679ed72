//! Push/pull over a shared-memory work queue (an MPMC ring): each message
//! goes to exactly one puller. The first puller binds `shm://NAME` (it
//! creates the ring); more pullers and any number of pushers connect.
//!
//! Records carry the same envelope as publish/subscribe (kind, topic,
//! payload 16-byte aligned), so a payload is read in place.

use super::names::{self, Binding};
use super::pubsub::{format, pad16, parse_as, put_envelope_as, shm_name};
use crate::address::Address;
use crate::envelope::HEADER_LEN;
use crate::envelope::{Header, Kind};
use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::options::Options;
use shoal_shm_ring::{
    CancelToken, Handle, MpmcConfig, MpmcConsumer, MpmcProducer, MpmcRing, PeerOptions, ReadyFd,
    SegmentKind, Wait, FORMAT_TAG_LEN,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

fn format_tag() -> [u8; FORMAT_TAG_LEN] {
    let mut t = [0u8; FORMAT_TAG_LEN];
    let f = format();
    t[..f.len()].copy_from_slice(f);
    t
}

/// The ring bound at `address`, waiting up to `timeout` for a binding
/// whose creator lives.
async fn lookup_live(address: &Address, timeout: Duration) -> Result<Handle> {
    let name = shm_name(address)?;
    let t0 = Instant::now();
    loop {
        if let Some(h) = names::lookup(name)? {
            if shoal_shm_ring::Segment::attach(h.name(), SegmentKind::Mpmc)
                .map(|s| s.creator_alive())
                .unwrap_or(false)
            {
                return Ok(h);
            }
        }
        if t0.elapsed() >= timeout {
            return Err(Error::NotBound {
                address: address.to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The pushing end: connects to the queue a puller bound.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use shoal_transport::{Address, Options, ShmPuller, ShmPusher};
/// let addr: Address = format!("shm://doc-push-{}", std::process::id()).parse()?;
/// let mut puller = ShmPuller::bind(&addr, &Options::default())?;
/// let mut pusher = ShmPusher::connect(&addr, &Options::default()).await?;
/// pusher.send(b"job 1").await?;
/// assert_eq!(&*puller.recv().await?, b"job 1");
/// # Ok::<(), shoal_transport::Error>(())
/// # }).unwrap();
/// ```
pub struct ShmPusher {
    producer: Arc<Mutex<MpmcProducer>>,
    /// The queue's segment, for its creator's liveness.
    ring: Arc<shoal_shm_ring::Segment>,
    /// Cancels the send waiting in the blocking pool, if any (when this
    /// pusher drops, or its queue's puller moved).
    cancel: Arc<CancelToken>,
    pending: Option<JoinHandle<Result<()>>>,
    max_message: usize,
    send_timeout: Option<Duration>,
    /// The address connected to (none for a requester's reply queue), to
    /// reconnect with when the queue's puller is gone.
    reconnect: Option<(Address, Options)>,
    /// When the queue's creator was last seen alive ([`coarse_ms`]).
    checked: u64,
    /// This pusher's id, in every message's envelope (`Frame::peer`).
    peer: u64,
}

/// Milliseconds of a coarse monotonic clock (a few nanoseconds to read,
/// against some 20 for the precise one: it is read on every send).
fn coarse_ms() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer given; the
    // clock id is a constant the kernel knows. On failure `t` stays zero,
    // which `ShmPusher::ensure_puller` takes as "check now".
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

/// How often a pusher checks that its queue's puller lives (a queue whose
/// puller died is read by nobody: the pusher moves to the next binding).
const PULLER_CHECK: Duration = Duration::from_millis(10);

impl std::fmt::Debug for ShmPusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmPusher").finish_non_exhaustive()
    }
}

impl ShmPusher {
    /// Attaches as a producer to the queue bound at `address`, waiting up
    /// to `opts.connect_timeout` for it.
    pub async fn connect(address: &Address, opts: &Options) -> Result<Self> {
        let h = lookup_live(address, opts.connect_timeout).await?;
        let mut p = Self::attach(&h, opts)?;
        p.reconnect = Some((address.clone(), opts.clone()));
        Ok(p)
    }

    /// Checks, at most every 10 ms, that the queue's puller lives; if it
    /// died, moves to the queue bound at the address now (waiting up to
    /// `connect_timeout`). Records it had queued for the dead puller and
    /// nobody took are lost with it.
    async fn ensure_puller(&mut self) -> Result<()> {
        let now = coarse_ms();
        // (A clock that failed reads 0: then every send checks.)
        if now != 0 && now.saturating_sub(self.checked) < PULLER_CHECK.as_millis() as u64 {
            return Ok(());
        }
        self.checked = now;
        if self.peer_alive() {
            return Ok(());
        }
        let Some((address, opts)) = self.reconnect.clone() else {
            return Err(Error::PeerGone {
                address: "a requester's reply queue".into(),
            });
        };
        // The binding puller died. Move only once the name is bound to
        // another live queue: until then pullers that joined this queue
        // (ShmPuller::connect) may still be draining it.
        if let Some(h) = rebound(&address, self.ring.name())? {
            self.join_pending().await;
            let peer = self.peer;
            *self = ShmPusher::attach(&h, &opts)?;
            // The same pusher, moved: it keeps its id.
            self.peer = peer;
            self.reconnect = Some((address, opts));
        }
        Ok(())
    }

    /// Queues `payload` for exactly one puller, waiting while the queue is
    /// full (see [`Options::send_timeout`], which bounds the whole wait).
    /// Cancelled before the queue was found full, it queued nothing; once
    /// waiting for room, the send goes on in the background and ends
    /// (queued, timed out, or given up because the queue's puller moved)
    /// before this pusher's next send goes out.
    pub async fn send(&mut self, payload: &[u8]) -> Result<()> {
        let peer = self.peer;
        self.send_as(Kind::Message, &[], peer, payload).await
    }

    /// Attaches as a producer to the queue `handle` names (a requester's
    /// reply queue).
    pub(crate) fn attach(handle: &Handle, opts: &Options) -> Result<Self> {
        let producer =
            MpmcProducer::attach_with(handle, PeerOptions::default(), Some(format_tag()))?;
        let ring = Arc::new(shoal_shm_ring::Segment::attach(
            handle.name(),
            SegmentKind::Mpmc,
        )?);
        Ok(ShmPusher {
            producer: Arc::new(Mutex::new(producer)),
            ring,
            cancel: Arc::new(CancelToken::new()),
            pending: None,
            max_message: opts.max_message,
            send_timeout: opts.send_timeout,
            reconnect: None,
            checked: coarse_ms(),
            peer: crate::frame::PeerId::random().0,
        })
    }

    /// [`send`](Self::send) of a message of `kind`, `topic` and `id`.
    pub(crate) async fn send_as(
        &mut self,
        kind: Kind,
        topic: &[u8],
        id: u64,
        payload: &[u8],
    ) -> Result<()> {
        Header::new(kind, topic, payload.len(), id)?;
        if payload.len() > self.max_message {
            return Err(Error::TooLarge {
                what: "payload",
                got: payload.len() as u64,
                limit: self.max_message as u64,
            });
        }
        self.join_pending().await;
        self.ensure_puller().await?;
        let len = HEADER_LEN + pad16(topic.len()) + payload.len();
        {
            let mut p = self.producer.lock().unwrap_or_else(|e| e.into_inner());
            let res = p.reserve_with(len, Wait::no_wait());
            match res {
                Ok(mut r) => {
                    let off = put_envelope_as(&mut r, kind, topic, payload.len(), id)?;
                    r[off..off + payload.len()].copy_from_slice(payload);
                    r.commit(len)?;
                    return Ok(());
                }
                Err(shoal_shm_ring::Error::WouldBlock) => {}
                Err(e) => return Err(e.into()),
            };
        }
        // The queue is full: the whole send moves to the blocking pool,
        // where the ring's own wait takes the room as it comes (a
        // reservation dropped in an MPMC ring is a tombstone, not room
        // given back, so waiting and sending cannot be separated). It is
        // one wait, so the ring's stall detection holds (a live puller
        // holding a record past its stall_timeout ends it with Stalled),
        // and it can be cancelled: when this pusher drops, or when the
        // queue's binding puller died and the name is bound elsewhere.
        let p = self.producer.clone();
        let cancel = Arc::new(CancelToken::new());
        self.cancel = cancel.clone();
        let wait_for = self.send_timeout;
        let ring_name = self.ring.name().as_str().to_string();
        let (topic, payload) = (topic.to_vec(), payload.to_vec());
        self.pending = Some(tokio::task::spawn_blocking(move || -> Result<()> {
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            let wait = match wait_for {
                Some(t) => Wait::timeout(t),
                None => Wait::forever(),
            };
            let res = p.reserve_with(len, wait.with_cancel(&cancel));
            match res {
                Ok(mut r) => {
                    let off = put_envelope_as(&mut r, kind, &topic, payload.len(), id)?;
                    r[off..off + payload.len()].copy_from_slice(&payload);
                    r.commit(len)?;
                    Ok(())
                }
                Err(shoal_shm_ring::Error::Timeout | shoal_shm_ring::Error::WouldBlock) => {
                    Err(Error::Timeout {
                        what: "push (waiting for room in the queue)",
                        after: wait_for.unwrap_or_default(),
                    })
                }
                Err(shoal_shm_ring::Error::Cancelled) => {
                    Err(Error::PeerGone { address: ring_name })
                }
                Err(e) => Err(e.into()),
            }
        }));
        self.await_pending().await.unwrap_or(Ok(()))
    }

    /// Awaits the send waiting in the blocking pool, if any, and returns
    /// its outcome. Meanwhile, every [`PULLER_WATCH`], it checks that the
    /// queue is still read: a queue whose binding puller died and whose
    /// name is bound elsewhere (or a reply queue whose requester died)
    /// cancels the wait, which then ends with `PeerGone`.
    async fn await_pending(&mut self) -> Option<Result<()>> {
        loop {
            let h = self.pending.as_mut()?;
            tokio::select! {
                joined = h => {
                    self.pending = None;
                    return Some(joined.map_err(|e| Error::Io {
                        what: "waiting for room in the queue".into(),
                        source: std::io::Error::other(e),
                    }).and_then(|r| r));
                }
                _ = tokio::time::sleep(PULLER_WATCH) => {
                    if !self.ring.creator_alive() {
                        let moved = match &self.reconnect {
                            Some((a, _)) => matches!(rebound(a, self.ring.name()), Ok(Some(_))),
                            None => true,
                        };
                        if moved {
                            self.cancel.cancel();
                        }
                    }
                }
            }
        }
    }

    /// Finishes a send left waiting by a cancelled call (so sends from this
    /// pusher stay in order, and no later call blocks on the lock it holds),
    /// with the same watch on the queue's puller as the call had.
    async fn join_pending(&mut self) {
        // Its outcome belonged to the cancelled call.
        let _ = self.await_pending().await;
    }

    /// Whether the queue's creator (the puller that bound it, or the
    /// requester whose reply queue it is) still lives.
    pub(crate) fn peer_alive(&self) -> bool {
        self.ring.creator_alive()
    }
}

impl Drop for ShmPusher {
    fn drop(&mut self) {
        // A send still waiting in the blocking pool gives up (its wait
        // looks at the token every few milliseconds).
        self.cancel.cancel();
    }
}

/// The live queue bound at `address` now, if it is another than `current`.
fn rebound(address: &Address, current: &shoal_shm_ring::SegmentName) -> Result<Option<Handle>> {
    let name = shm_name(address)?;
    Ok(names::lookup(name)?.filter(|h| {
        h.name() != current
            && shoal_shm_ring::Segment::attach(h.name(), SegmentKind::Mpmc)
                .map(|s| s.creator_alive())
                .unwrap_or(false)
    }))
}

/// How often a send waiting for room checks whether its queue's puller
/// moved (see `ShmPusher::send_as`).
const PULLER_WATCH: Duration = Duration::from_millis(100);

/// `&mut ShmPuller` as a raw pointer that a `Send` future may hold across
/// an await (see [`ShmPuller::recv`]).
struct SelfPtr(*mut ShmPuller);

// SAFETY: a `SelfPtr` only ever points to the `ShmPuller` whose `&mut` the
// `recv` future holding it has borrowed for its whole life; moving that
// future to another thread moves the exclusive borrow with it, and
// `ShmPuller` itself is `Send`.
unsafe impl Send for SelfPtr {}

/// The pulling end: each message is taken by exactly one puller.
pub struct ShmPuller {
    /// Declared first, so it is dropped first: the name goes before the
    /// ring it names.
    _binding: Option<Binding>,
    consumer: MpmcConsumer,
    ready: AsyncFd<ReadyFd>,
    max_message: usize,
    spin: Duration,
    /// The ring, kept by the puller that bound it (its creator).
    _ring: Option<MpmcRing>,
    /// The address bound or connected to (none for a requester's private
    /// reply queue).
    address: Option<Address>,
}

impl std::fmt::Debug for ShmPuller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmPuller").finish_non_exhaustive()
    }
}

impl ShmPuller {
    pub(crate) fn with(
        consumer: MpmcConsumer,
        opts: &Options,
        ring: Option<MpmcRing>,
        binding: Option<Binding>,
    ) -> Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Io {
                what: "a shm puller or replier is made inside a tokio runtime (its waits are registered there)".into(),
                source: std::io::Error::other("no tokio runtime"),
            });
        }
        let fd = consumer.ready_fd()?;
        // SAFETY: a ReadyFd owns its eventfd for its whole life and always
        // returns that descriptor from as_raw_fd; the AsyncFd owns the
        // ReadyFd, so the fd stays open and the same until it drops.
        let ready = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| Error::Io {
            what: "registering the queue's ReadyFd with tokio".into(),
            source: e.into(),
        })?;
        Ok(ShmPuller {
            _binding: binding,
            consumer,
            ready,
            max_message: opts.max_message,
            spin: opts.spin,
            _ring: ring,
            address: None,
        })
    }

    /// Creates a queue of `opts.capacity` bytes (up to `opts.max_peers`
    /// pushers and as many pullers), binds it to `address`, and pulls from
    /// it.
    pub fn bind(address: &Address, opts: &Options) -> Result<Self> {
        let name = shm_name(address)?;
        let cfg =
            MpmcConfig::new(opts.capacity, opts.max_peers, opts.max_peers).payload_format(format());
        let ring = MpmcRing::create(&cfg)?;
        let binding = Binding::bind(name, &ring.handle(), &address.to_string())?;
        let consumer =
            MpmcConsumer::attach_with(&ring.handle(), PeerOptions::default(), Some(format_tag()))?;
        let mut p = Self::with(consumer, opts, Some(ring), Some(binding))?;
        p.address = Some(address.clone());
        Ok(p)
    }

    /// Pulls from the queue bound at `address`, beside its other pullers.
    pub async fn connect(address: &Address, opts: &Options) -> Result<Self> {
        let h = lookup_live(address, opts.connect_timeout).await?;
        let consumer = MpmcConsumer::attach_with(&h, PeerOptions::default(), Some(format_tag()))?;
        let mut p = Self::with(consumer, opts, None, None)?;
        p.address = Some(address.clone());
        Ok(p)
    }

    /// The address this puller bound or connected to.
    pub fn address(&self) -> Option<&Address> {
        self.address.as_ref()
    }

    /// Takes the next message if one is there: its envelope checked, or
    /// the record released and the error returned.
    fn take_now(&mut self, kind: Kind) -> Result<Option<(Header, Frame<'_>)>> {
        let max = self.max_message;
        let taken = self.consumer.try_take().map_err(|e| match e {
            shoal_shm_ring::Error::Closed => Error::Closed,
            e => Error::Ring(e),
        })?;
        let Some(g) = taken else {
            return Ok(None);
        };
        let (h, topic, payload) = parse_as(max, &g, kind)?;
        Ok(Some((h, Frame::taken(g, topic, payload))))
    }

    /// Waits for the next message and takes it (no other puller gets it).
    /// Cancel-safe: dropped before it returns, it took nothing. A
    /// malformed record is released and its error returned.
    pub async fn recv(&mut self) -> Result<Frame<'_>> {
        let (h, f) = self.recv_as(Kind::Message).await?;
        Ok(f.with_peer(h.id))
    }

    /// [`recv`](Self::recv) of a message of `kind`, with its header.
    pub(crate) async fn recv_as(&mut self, kind: Kind) -> Result<(Header, Frame<'_>)> {
        self.recv_watching(kind, None::<(Duration, fn() -> bool)>)
            .await
    }

    /// [`recv_as`](Self::recv_as) that, once parked, asks `watch.1` every
    /// `watch.0` whether the peer it waits for lives, and ends with
    /// `PeerGone` when not. (The spin phase creates no timer.)
    pub(crate) async fn recv_watching(
        &mut self,
        kind: Kind,
        watch: Option<(Duration, impl Fn() -> bool + Send)>,
    ) -> Result<(Header, Frame<'_>)> {
        // The borrow checker cannot see that a frame borrowed from `self`
        // and returned on one path is dead on the other (NLL "problem case
        // 3"), so each use below reborrows `self` afresh from this pointer;
        // `self` itself is not touched again.
        let this = SelfPtr(self);
        // SAFETY: as in the loop below.
        let spin = unsafe { &*this.0 }.spin;
        if !spin.is_zero() {
            // Poll a little first: a busy peer answers in well under the
            // cost of a wake-up through the runtime.
            let t0 = Instant::now();
            let mut polls = 0u32;
            loop {
                // SAFETY: as in the loop below.
                if let Some(f) = unsafe { &mut *this.0 }.take_now(kind)? {
                    return Ok(f);
                }
                std::hint::spin_loop();
                polls += 1;
                if polls.is_multiple_of(64) && t0.elapsed() >= spin {
                    break;
                }
            }
        }
        loop {
            // SAFETY: `this` comes from the `&mut self` this call holds for
            // its whole length, and no other reference to `*this` is live:
            // the previous reborrow either was returned (ending the loop)
            // or ended with its statement.
            if let Some(f) = unsafe { &mut *this.0 }.take_now(kind)? {
                return Ok(f);
            }
            // SAFETY: as above.
            unsafe { &mut *this.0 }.ready.get_ref().arm();
            // SAFETY: as above.
            if let Some(f) = unsafe { &mut *this.0 }.take_now(kind)? {
                return Ok(f);
            }
            // SAFETY: as above; the reborrow lives until the readiness
            // guard is dropped at the end of this iteration.
            let me = unsafe { &mut *this.0 };
            let ready = match &watch {
                None => me.ready.readable().await,
                Some((every, alive)) => {
                    match tokio::time::timeout(*every, me.ready.readable()).await {
                        Ok(r) => r,
                        Err(_) if !alive() => {
                            // Liveness first, then one more look: what the
                            // peer sent before it died is still delivered.
                            // SAFETY: as above (`me`'s last use was the
                            // timed-out wait, dropped by now).
                            if let Some(f) = unsafe { &mut *this.0 }.take_now(kind)? {
                                return Ok(f);
                            }
                            return Err(Error::PeerGone {
                                address: "the peer this queue waits for".into(),
                            });
                        }
                        Err(_) => continue,
                    }
                }
            };
            let mut guard = ready.map_err(|source| Error::Io {
                what: "awaiting the queue's ReadyFd".into(),
                source,
            })?;
            guard.get_inner().clear();
            guard.clear_ready();
        }
    }
}
