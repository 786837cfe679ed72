//! The MPMC ring in shared memory: [`MpmcProducer`]s and [`MpmcConsumer`]s in
//! any processes; every record is taken by exactly one consumer.

use crate::error::{Error, Result};
use crate::layout::{
    format_tag, rec, tag_string, MpmcControl, SegmentKind, FORMAT_TAG_LEN, MAX_CAPACITY, MAX_SLOTS,
    MIN_CAPACITY, RECORD_HEADER,
};
use crate::liveness::ProcessId;
use crate::mem::{RingMem, ShmMem};
use crate::mpmc_core::{ConsumerCore, Layout, MGot, MResv, ProducerCore};
use crate::name::{random_u64, Handle};
use crate::overflow::{self, OverflowCache, OverflowDesc, OverflowPool, DESC_LEN, POOLED};
use crate::peer::PeerOptions;
use crate::segment::{control_size, Segment, SegmentSpec};
use crate::wait::Wait;
use std::ops::{Deref, DerefMut};

/// How to create an MPMC ring.
///
/// ```
/// use shoal_shm_ring::MpmcConfig;
/// let cfg = MpmcConfig::new(1 << 20, 4, 4);
/// assert_eq!(cfg.consumers, 4);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct MpmcConfig {
    /// Bytes in the data area: a power of two, 4 KiB to 2 GiB.
    pub capacity: u64,
    /// Most producers at once.
    pub producers: u32,
    /// Most consumers at once.
    pub consumers: u32,
    /// Payload-format tag.
    pub format: [u8; FORMAT_TAG_LEN],
}

impl MpmcConfig {
    /// A ring of `capacity` bytes for up to `producers` and `consumers`.
    pub fn new(capacity: u64, producers: u32, consumers: u32) -> Self {
        MpmcConfig {
            capacity,
            producers,
            consumers,
            format: [0; FORMAT_TAG_LEN],
        }
    }
    /// Sets the payload-format tag.
    pub fn payload_format(mut self, tag: &[u8]) -> Self {
        self.format = format_tag(tag);
        self
    }
}

/// An MPMC ring segment. The creating process holds this; dropping it
/// unlinks the name (attached endpoints keep working).
///
/// ```
/// use shoal_shm_ring::{MpmcConfig, MpmcRing};
/// let ring = MpmcRing::create(&MpmcConfig::new(1 << 16, 2, 2))?;
/// let mut p = ring.producer()?;
/// let mut c = ring.consumer()?;
/// p.send(b"job 1")?;
/// let job = c.take()?;
/// assert_eq!(&*job, b"job 1");
/// # Ok::<(), shoal_shm_ring::Error>(())
/// ```
#[derive(Debug)]
pub struct MpmcRing {
    seg: Segment,
}

impl Drop for MpmcRing {
    fn drop(&mut self) {
        // Nobody attached: nobody can take the records left in the queue
        // once the name is gone; remove their overflow files too.
        if !crate::lease::any_held(self.seg.fd()) {
            overflow::remove_all(self.seg.name());
        }
    }
}

impl MpmcRing {
    /// Creates the segment.
    pub fn create(cfg: &MpmcConfig) -> Result<Self> {
        if !cfg.capacity.is_power_of_two() || cfg.capacity < MIN_CAPACITY {
            return Err(Error::InvalidConfig(
                "capacity must be a power of two of at least 4096",
            ));
        }
        if cfg.capacity > MAX_CAPACITY {
            return Err(Error::TooLarge {
                what: "capacity",
                got: cfg.capacity,
                limit: MAX_CAPACITY,
            });
        }
        if cfg.producers == 0
            || cfg.producers > MAX_SLOTS
            || cfg.consumers == 0
            || cfg.consumers > MAX_SLOTS
        {
            return Err(Error::InvalidConfig(
                "producers and consumers must be between 1 and 1024",
            ));
        }
        let spec = SegmentSpec {
            kind: SegmentKind::Mpmc,
            control_size: control_size(SegmentKind::Mpmc, cfg.consumers, cfg.producers),
            data_capacity: cfg.capacity,
            slots: cfg.consumers,
            producer_slots: cfg.producers,
            payload_len: 0,
            payload_format: cfg.format,
        };
        Ok(MpmcRing {
            seg: Segment::create(&spec, "mq")?,
        })
    }

    /// The handle other processes attach with.
    pub fn handle(&self) -> Handle {
        Handle::new(*self.seg.name())
    }

    /// A producer endpoint in this process.
    pub fn producer(&self) -> Result<MpmcProducer> {
        MpmcProducer::attach(&self.handle())
    }

    /// A consumer endpoint in this process.
    pub fn consumer(&self) -> Result<MpmcConsumer> {
        MpmcConsumer::attach(&self.handle())
    }
}

fn open(
    handle: &Handle,
    expect: Option<[u8; FORMAT_TAG_LEN]>,
) -> Result<(ShmMem<MpmcControl>, Layout)> {
    let seg = Segment::attach(handle.name(), SegmentKind::Mpmc)?;
    if let Some(f) = expect {
        if seg.header().payload_format != f {
            return Err(Error::FormatMismatch {
                ours: tag_string(&f),
                theirs: tag_string(&seg.header().payload_format),
            });
        }
    }
    let lay = Layout {
        consumers: seg.header().slots as usize,
        producers: seg.header().producer_slots as usize,
    };
    Ok((ShmMem::new(seg, lay.consumers + lay.producers), lay))
}

/// Removes overflow files of the ring in `mem` that nobody will read or
/// reuse: no lease is held on them (their producer is gone: it crashed, or
/// left) and no unreleased record names them. A crashed producer leaves its
/// free pooled segments (and a reservation's pending one) behind; this runs
/// when an endpoint attaches and after a dead peer's slot was freed.
///
/// The order matters: files are judged by their lease first, the ring
/// second. A one-shot file's producer drops its lease only after its record
/// is committed, so a file seen without a lease is either named by a record
/// the scan then finds, or by nothing that will ever be committed. If the
/// scan cannot walk from `reclaim` to `tail` (a corrupt ring), it removes
/// nothing.
fn sweep_orphaned_overflow(mem: &ShmMem<MpmcControl>) {
    let ring = *mem.seg.name();
    let mut candidates = overflow::unleased_files(&ring);
    if candidates.is_empty() {
        return;
    }
    let walked = for_each_unreleased_overflow(mem, |seq| {
        candidates.retain(|&(s, _)| s != seq);
    });
    if !walked {
        return; // the ring moved (or is corrupt): judge nothing
    }
    for (_, name) in candidates {
        let path = name.path();
        // SAFETY: NUL-terminated path; unlink keeps no pointer.
        if unsafe { libc::unlink(path.as_ptr()) } == 0 {
            log::info!("shoal mpmc {ring}: removed orphaned overflow file {name}");
        }
    }
}

/// Calls `f` with the overflow name part of every committed, unreleased
/// overflow record between the ring's reclaim point and its tail, as
/// loaded on entry. Returns false when the span cannot be walked (the ring
/// is corrupt); `f` may have been called for part of it then.
///
/// Records move under the walk: producers reuse a record's space only once
/// `reclaim` has passed it, so each record's header and descriptor are
/// read first and `reclaim` after (an Acquire fence between): if it has
/// not passed the record, what was read was that record's; if it has, the
/// record and all before it are released and the walk goes on from there.
fn for_each_unreleased_overflow(mem: &ShmMem<MpmcControl>, mut f: impl FnMut(u64)) -> bool {
    use crate::layout::{rec, record_size, valid_position};
    use crate::sync::{fence, Ordering};
    let ring = *mem.seg.name();
    let cap = mem.capacity();
    let l = &mem.ctrl().lock;
    let mut r = l.reclaim.load(Ordering::Acquire);
    let tail = l.tail.load(Ordering::Acquire);
    if !valid_position(r) || !valid_position(tail) || r > tail || tail - r > cap {
        return false;
    }
    while r < tail {
        let h = mem.header(r);
        let c = h.commit.load(Ordering::Acquire);
        let len = u64::from(h.len.load(Ordering::Acquire));
        let named = (c & rec::MASK == rec::OVERFLOW && len >= DESC_LEN)
            .then(|| overflow::descriptor(&ring, mem.data(r + RECORD_HEADER as u64), len))
            .and_then(|d| d.ok())
            .map(|(d, _)| d.seq);
        fence(Ordering::Acquire);
        let reclaim = l.reclaim.load(Ordering::Relaxed);
        if reclaim > r {
            // Released up to `reclaim` (a record boundary) meanwhile.
            if !valid_position(reclaim) {
                return false;
            }
            r = reclaim;
            continue;
        }
        let span = record_size(len);
        if c & !rec::MASK != r || span > cap || r + span > tail {
            return false;
        }
        if let Some(seq) = named {
            f(seq);
        }
        r += span;
    }
    true
}

/// Bytes of overflow segment one byte of ring room stands for.
///
/// A large record travels in an overflow segment named by a descriptor
/// in the ring. Were descriptors 64 bytes whatever they name, the
/// segments in flight would be bounded only by the ring's room for
/// descriptors (a thousand per 64 KiB), times the largest message, and
/// producers whose records nobody takes (remote ones, through a channel's
/// bridge) could fill `/dev/shm`. So a descriptor reserves ring room for
/// its segment's size (a one-shot segment's, or the size class of a
/// pooled one) over `OVERFLOW_RATIO`, at most the largest inline record,
/// held until the record is released. Whatever the number of producers,
/// the segments made for records in flight so hold at most
/// `OVERFLOW_RATIO` times the ring's capacity, or one record larger than
/// half that (bounded only by the message size) beside at most half, and
/// a producer past it waits for room as for any record. Outside the
/// bound: the segments each producer keeps once their records were
/// released, for reuse (up to 8 free ones, 64 MiB beyond the first, and
/// up to 8 released ones it has not looked at since), also when such a
/// segment, larger than needed, carries a record again.
///
/// Room runs out sooner for large records. A consumer that holds a record
/// larger than half the bound and puts another such record into the same
/// ring waits for its own record: its put ends with `Stalled` after the
/// stall timeout.
pub const OVERFLOW_RATIO: u64 = 64;

/// The ring room the descriptor of an overflow record reserves (see
/// [`OVERFLOW_RATIO`]): the size of a segment for `len` payload bytes
/// over the ratio; `max_inline` is the ring's largest inline payload.
fn overflow_room(len: u64, max_inline: u64) -> u64 {
    (overflow::segment_bytes(len) / OVERFLOW_RATIO).clamp(DESC_LEN, max_inline.max(DESC_LEN))
}

/// A producer of an MPMC ring.
pub struct MpmcProducer {
    core: ProducerCore<ShmMem<MpmcControl>>,
    /// Recycled overflow segments (see `overflow`).
    pool: OverflowPool,
    /// The one-shot overflow segment of the reservation in progress (when
    /// the pool has too many records in flight).
    pending_ov: Option<(u64, Segment)>,
    /// Name part of the pending pooled segment.
    pending_seq: u64,
    format: [u8; FORMAT_TAG_LEN],
    /// Set while a `ReadyFd` of this producer exists.
    ready_taken: std::sync::Arc<crate::sync::AtomicBool>,
}

impl std::fmt::Debug for MpmcProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpmcProducer")
            .field("name", self.core.mem.seg.name())
            .finish()
    }
}

impl MpmcProducer {
    /// Attaches as a producer with default options.
    pub fn attach(handle: &Handle) -> Result<Self> {
        Self::attach_with(handle, PeerOptions::default(), None)
    }

    /// Attaches with explicit options, optionally requiring a payload format.
    pub fn attach_with(
        handle: &Handle,
        peer: PeerOptions,
        expect_format: Option<[u8; FORMAT_TAG_LEN]>,
    ) -> Result<Self> {
        let (mem, lay) = open(handle, expect_format)?;
        let format = mem.seg.header().payload_format;
        sweep_orphaned_overflow(&mem);
        Ok(MpmcProducer {
            core: ProducerCore::join(mem, &lay, ProcessId::current(), peer)?,
            pool: OverflowPool::new(),
            pending_ov: None,
            pending_seq: 0,
            format,
            ready_taken: Default::default(),
        })
    }

    /// An eventfd that turns readable when this ring may have room for
    /// this producer, for async runtimes: the [`ReadyFd`](crate::ReadyFd)
    /// protocol with `try`-reservations ([`Wait::no_wait`]) in place of
    /// `try_recv`. Besides the consumers' releases, it turns readable at
    /// least every `orphan_timeout` while armed (only a producer's next
    /// try reclaims what a dead consumer held). One per producer at a
    /// time.
    pub fn space_fd(&self) -> Result<crate::ReadyFd> {
        let seg = self.core.mem.seg.reopen(SegmentKind::Mpmc)?;
        let t = self.core.token();
        let consumers = seg.header().slots as usize;
        crate::ReadyFd::new(
            seg,
            std::mem::offset_of!(MpmcControl, space_ec),
            crate::wait::Waiter::ready(t.index - consumers),
            crate::ready::Recheck::Every(self.core.opts.orphan_timeout),
            crate::ready::slot_own_offset::<MpmcControl>(t.index),
            t.gen,
            self.ready_taken.clone(),
        )
    }

    /// The largest payload that still travels inside the ring.
    pub fn max_inline(&self) -> usize {
        self.core.max_inline() as usize
    }

    /// Consumer waiters registered on the ring's data futex right now
    /// (blocked consumers and armed [`ReadyFd`](crate::ReadyFd)s): for
    /// tests and diagnostics.
    #[doc(hidden)]
    pub fn registered_consumer_waiters(&self) -> u32 {
        self.core.registered_consumers()
    }

    /// Reserves `max_len` bytes, waiting for space as long as it takes.
    pub fn reserve(&mut self, max_len: usize) -> Result<MpmcReservation<'_>> {
        self.reserve_with(max_len, Wait::forever())
    }

    /// Reserves `max_len` bytes, waiting as `wait` allows.
    pub fn reserve_with(&mut self, max_len: usize, wait: Wait<'_>) -> Result<MpmcReservation<'_>> {
        let max_len = max_len as u64;
        if max_len <= self.core.max_inline() {
            let resv = self.core.reserve(max_len, &wait)?;
            let buf = self.core.payload(&resv);
            return Ok(MpmcReservation {
                producer: self,
                resv: Some(resv),
                buf,
                len: max_len as usize,
                ov: false,
            });
        }
        self.reserve_overflow(max_len, wait)
    }

    /// The large-record path of [`reserve_with`](Self::reserve_with).
    #[inline(never)]
    fn reserve_overflow(&mut self, max_len: u64, wait: Wait<'_>) -> Result<MpmcReservation<'_>> {
        // A reservation that was forgotten (`mem::forget`) leaves its
        // segment pending: drop it (a one-shot file is unlinked), so no
        // later record names it.
        self.pending_ov = None;
        self.pool.abandon_pending();
        if self.core.take_dead_freed() {
            sweep_orphaned_overflow(&self.core.mem);
        }
        let core = &self.core;
        self.pool.reclaim_where(|pos| core.record_released(pos));
        let oneshot_seq = random_u64()?;
        let ring = *self.core.mem.seg.name();
        let max_inline = self.core.max_inline();
        // The descriptor holds ring room in proportion to the segment's
        // size (see `overflow_room`): that bounds the overflow in flight.
        let (buf, resv) = if self.pool.oldest_if_full().is_none() {
            // A recycled segment (or a new pooled one), taken once the
            // ring had room for the descriptor, charged for the size
            // class a new segment would have (a larger free segment
            // reused is a free one: outside the bound, see
            // OVERFLOW_RATIO).
            let room = overflow_room(overflow::pool_class(max_len), max_inline);
            let resv = self.core.reserve(room, &wait)?;
            let (buf, seq) = match self.pool.take(&ring, max_len, self.format) {
                Ok(v) => v,
                Err(e) => {
                    self.core.abort(resv);
                    return Err(e);
                }
            };
            self.pending_seq = seq;
            (buf, resv)
        } else {
            // Consumers lag: a one-shot segment its consumer unlinks, made
            // once the ring had room for it.
            let resv = self
                .core
                .reserve(overflow_room(max_len, max_inline), &wait)?;
            let seq = oneshot_seq;
            let seg = match overflow::create(&ring, seq, max_len, self.format) {
                Ok(s) => s,
                Err(e) => {
                    self.core.abort(resv);
                    return Err(e);
                }
            };
            let buf = seg.data_ptr();
            self.pending_ov = Some((seq, seg));
            (buf, resv)
        };
        Ok(MpmcReservation {
            producer: self,
            resv: Some(resv),
            buf,
            len: max_len as usize,
            ov: true,
        })
    }

    /// Copies `bytes` into the ring as one record.
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.send_with(bytes, Wait::forever())
    }

    /// Copies `bytes` in as one record, waiting as `wait` allows.
    pub fn send_with(&mut self, bytes: &[u8], wait: Wait<'_>) -> Result<()> {
        let mut r = self.reserve_with(bytes.len(), wait)?;
        r.copy_from_slice(bytes);
        r.commit(bytes.len())
    }

    /// Closes the ring for everyone: consumers take what was committed, then
    /// get [`Error::Closed`]; further reservations fail with `Closed`.
    pub fn close_ring(&self) {
        self.core.close_ring();
    }

    /// Work accounting: promises `n` more messages from this producer.
    ///
    /// Consumers learn that the work is over (every claimed message taken,
    /// then [`Error::Finished`]) only once claims are closed
    /// ([`close_claims`](Self::close_claims)) and every producer sent what
    /// it claimed; a producer that dies (or is dropped) owing makes them
    /// end with [`Error::ProducersLost`] instead of waiting for ever.
    /// While claims are open, a producer may also send without claiming;
    /// once they are closed, only what was claimed can be sent. Fails with
    /// [`Error::Closed`] once claims are closed.
    ///
    /// ```
    /// use shoal_shm_ring::{Error, MpmcConfig, MpmcRing};
    /// let ring = MpmcRing::create(&MpmcConfig::new(1 << 16, 2, 2))?;
    /// let (mut p, mut c) = (ring.producer()?, ring.consumer()?);
    /// p.claim(2)?;
    /// p.close_claims()?; // no more claims; the two still count
    /// p.send(b"one")?;
    /// drop(c.take()?);
    /// assert!(matches!(c.try_take(), Ok(None))); // one more is owed
    /// p.send(b"two")?;
    /// drop(c.take()?);
    /// assert!(matches!(c.take(), Err(Error::Finished)));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn claim(&mut self, n: u64) -> Result<()> {
        self.claim_with(n, Wait::forever())
    }

    /// [`claim`](Self::claim), waiting for the reservation lock as `wait`
    /// allows.
    pub fn claim_with(&mut self, n: u64, wait: Wait<'_>) -> Result<()> {
        self.core.claim(n, &wait)
    }

    /// Messages this producer claimed and has not sent yet.
    pub fn owed(&self) -> u64 {
        self.core.owed()
    }

    /// Names process `pid` as the one this producer puts for: a proxy
    /// that puts on behalf of a producer elsewhere (another host's,
    /// through a bridge) labels its slot so, and if it leaves owing
    /// claimed messages (its producer died, or left), the
    /// [`ProducersLost`](Error::ProducersLost) consumers get names `pid`.
    /// A label only: liveness stays with the attaching process (its
    /// lease), and what this process itself does (holding the
    /// reservation lock or a record too long: [`Error::Stalled`]) still
    /// names this process, the one to act on.
    ///
    /// ```
    /// use shoal_shm_ring::{Error, MpmcConfig, MpmcRing};
    ///
    /// let ring = MpmcRing::create(&MpmcConfig::new(1 << 12, 2, 1))?;
    /// let mut proxy = ring.producer()?;
    /// proxy.act_for(4242);
    /// proxy.claim(2)?;
    /// proxy.close_claims()?;
    /// drop(proxy); // leaves owing 2
    /// let mut c = ring.consumer()?;
    /// assert!(matches!(c.take(), Err(Error::ProducersLost { lost: 2, pid: 4242 })));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn act_for(&self, pid: u32) {
        self.core.act_for(pid);
    }

    /// Work accounting: closes claims for every producer of the ring. What
    /// was claimed can still be sent; a send owing nothing fails with
    /// [`Error::Closed`]. Once every claimed message was sent, consumers
    /// take what is left and then get [`Error::Finished`] (see
    /// [`claim`](Self::claim)).
    pub fn close_claims(&mut self) -> Result<()> {
        self.core.close_claims(&Wait::forever())
    }

    /// [`close_claims`](Self::close_claims), waiting as `wait` allows for
    /// the lock it takes ([`Error::Timeout`] when it did not get it: the
    /// queue is not closed then).
    pub fn close_claims_with(&mut self, wait: Wait<'_>) -> Result<()> {
        self.core.close_claims(&wait)
    }
}

impl Drop for MpmcProducer {
    fn drop(&mut self) {
        // Segments of released records go with the free ones; those of
        // records not yet released stay for their consumers. Our leases on
        // them go first, then each record is looked at again: one released
        // since is removed here; one released later is removed by the
        // consumer releasing it, which finds our lease gone (it asks after
        // its release, and we look again after dropping the lease, so one
        // of the two sees the other: the kernel's per-file lock list orders
        // its query against our unlock). Both may unlink the name; the
        // second finds it gone. A record released another way (an orphan
        // released for a dead consumer, one whose segment failed to open)
        // leaves its file to the next sweep, the ring's end or
        // `cleanup_stale`.
        let core = &self.core;
        self.pool.reclaim_where(|pos| core.record_released(pos));
        let ring = *self.core.mem.seg.name();
        for (pos, seq) in self.pool.leave().into_iter().flatten() {
            if self.core.record_released(pos) {
                overflow::discard(&ring, seq);
            }
        }
        self.core.leave();
        // The last one out of a ring whose name is gone removes the files
        // of records nobody took.
        overflow::last_out(&self.core.mem.seg, false);
    }
}

/// Space reserved in an MPMC ring. Dropping it uncommitted leaves a
/// tombstone that consumers skip.
pub struct MpmcReservation<'a> {
    producer: &'a mut MpmcProducer,
    resv: Option<MResv>,
    buf: *mut u8,
    len: usize,
    /// Whether the payload lives in the producer's pending overflow segment.
    ov: bool,
}

impl MpmcReservation<'_> {
    /// Publishes the first `len` bytes; exactly one consumer will take them.
    ///
    /// Fails with [`Error::Evicted`] if consumers judged this producer dead
    /// and skipped the reservation (it stayed uncommitted past their
    /// `orphan_timeout` while this process looked dead).
    pub fn commit(mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::TooLarge {
                what: "commit length",
                got: len as u64,
                limit: self.len as u64,
            });
        }
        let Some(resv) = self.resv.take() else {
            return Err(Error::Closed);
        };
        if !std::mem::replace(&mut self.ov, false) {
            return self.producer.core.commit(resv, len as u64, rec::DATA);
        }
        let p = &mut *self.producer;
        match p.pending_ov.take() {
            None => {
                // Pooled: the segment returns to the pool once released.
                let d = OverflowDesc {
                    seq: p.pending_seq,
                    len: len as u64 | POOLED,
                };
                // SAFETY: the reservation holds at least DESC_LEN payload
                // bytes (`overflow_room`).
                unsafe { d.write(p.core.payload(&resv)) };
                // Committed whole: a shorter commit would leave its rest a
                // pad that holds the room until a consumer's next take.
                let r = p.core.commit(resv, resv.max_len, rec::OVERFLOW);
                if r.is_ok() {
                    p.pool.commit_pending(resv.start);
                } else {
                    p.pool.abandon_pending();
                }
                r
            }
            Some((seq, mut seg)) => {
                let d = OverflowDesc {
                    seq,
                    len: len as u64,
                };
                // SAFETY: the reservation holds at least DESC_LEN payload
                // bytes (`overflow_room`).
                unsafe { d.write(p.core.payload(&resv)) };
                // Committed whole: a shorter commit would leave its rest a
                // pad that holds the room until a consumer's next take.
                let r = p.core.commit(resv, resv.max_len, rec::OVERFLOW);
                if r.is_ok() {
                    // The consumer that takes the record unlinks the segment;
                    // on failure it is dropped (unlinked) here.
                    seg.disown();
                }
                r
            }
        }
    }
}

impl Drop for MpmcReservation<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.resv.take() {
            self.producer.core.abort(r);
        }
        if self.ov {
            // Not committed: a one-shot segment is dropped (unlinked), a
            // pooled one goes back to the pool.
            if self.producer.pending_ov.take().is_none() {
                self.producer.pool.abandon_pending();
            }
        }
    }
}

impl Deref for MpmcReservation<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `buf` points at `len` bytes inside the mapping (the ring's
        // data area reserved under the lock, or a fresh overflow segment),
        // owned by this reservation: correct consumers do not read a
        // RESERVED record, and they tombstone it only once its producer is
        // dead (a live producer is never skipped).
        unsafe { std::slice::from_raw_parts(self.buf, self.len) }
    }
}

impl DerefMut for MpmcReservation<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.buf, self.len) }
    }
}

/// A consumer of an MPMC ring.
pub struct MpmcConsumer {
    core: ConsumerCore<ShmMem<MpmcControl>>,
    /// The one-shot overflow segment the current guard reads from.
    current_ov: Option<Segment>,
    /// Mappings of pooled overflow segments this consumer has read from.
    cache: OverflowCache,
    /// Set while a `ReadyFd` of this consumer exists.
    ready_taken: std::sync::Arc<crate::sync::AtomicBool>,
    /// A record taken by [`try_hold`](MpmcConsumer::try_hold) and not yet
    /// handed out.
    held: Option<MGot>,
}

impl std::fmt::Debug for MpmcConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpmcConsumer")
            .field("name", self.core.mem.seg.name())
            .finish()
    }
}

impl MpmcConsumer {
    /// Attaches as a consumer with default options.
    pub fn attach(handle: &Handle) -> Result<Self> {
        Self::attach_with(handle, PeerOptions::default(), None)
    }

    /// Attaches with explicit options, optionally requiring a payload format.
    pub fn attach_with(
        handle: &Handle,
        peer: PeerOptions,
        expect_format: Option<[u8; FORMAT_TAG_LEN]>,
    ) -> Result<Self> {
        let (mem, lay) = open(handle, expect_format)?;
        let creator = mem.seg.header().creator_pid;
        sweep_orphaned_overflow(&mem);
        Ok(MpmcConsumer {
            core: ConsumerCore::join(mem, &lay, ProcessId::current(), creator, peer)?,
            current_ov: None,
            cache: OverflowCache::new(),
            ready_taken: Default::default(),
            held: None,
        })
    }

    /// An eventfd that turns readable when this ring may have a record, for
    /// async runtimes; see [`ReadyFd`](crate::ReadyFd) for the protocol.
    /// One per consumer at a time: a second call while the first lives
    /// fails with [`Error::InvalidConfig`].
    pub fn ready_fd(&self) -> Result<crate::ReadyFd> {
        let seg = self.core.mem.seg.reopen(SegmentKind::Mpmc)?;
        let t = self.core.token();
        crate::ReadyFd::new(
            seg,
            std::mem::offset_of!(MpmcControl, data_ec),
            crate::wait::Waiter::ready(t.index),
            crate::ready::Recheck::MpmcHead {
                every: self.core.opts.orphan_timeout,
            },
            crate::ready::slot_own_offset::<MpmcControl>(t.index),
            t.gen,
            self.ready_taken.clone(),
        )
    }

    /// Waits for a record and takes it.
    ///
    /// On a ring whose work is over (see [`MpmcProducer::claim`]) it ends
    /// with [`Error::Finished`] or [`Error::ProducersLost`] once everything
    /// left was taken; on a ring closed outright, with [`Error::Closed`].
    pub fn take(&mut self) -> Result<TakeGuard<'_>> {
        self.take_with(Wait::forever())
    }

    /// Takes a record, waiting as `wait` allows.
    pub fn take_with(&mut self, wait: Wait<'_>) -> Result<TakeGuard<'_>> {
        if let Some(g) = self.held.take() {
            return self.guard(g);
        }
        let g = self.core.take(&wait);
        if self.core.take_dead_freed() {
            sweep_orphaned_overflow(&self.core.mem);
        }
        self.guard(g?)
    }

    /// Takes a record if one is ready.
    pub fn try_take(&mut self) -> Result<Option<TakeGuard<'_>>> {
        let got = match self.held.take() {
            Some(g) => Some(g),
            None => self.core.poll()?,
        };
        match got {
            Some(g) => self.guard(g).map(Some),
            None => Ok(None),
        }
    }

    /// Takes a record if one is ready and keeps it, without borrowing this
    /// consumer, for the next [`held`](Self::held) (or `take`, `try_take`)
    /// to hand out. True when one is held (taken now or before).
    ///
    /// For async loops, which cannot keep a borrowed guard across the
    /// iterations that find nothing: hold in the loop, then take the guard
    /// after it. A held record is taken: dropping the consumer with it
    /// still held loses it like any record its consumer took and never
    /// read.
    ///
    /// ```
    /// use shoal_shm_ring::{MpmcConfig, MpmcRing};
    /// let ring = MpmcRing::create(&MpmcConfig::new(1 << 16, 1, 1))?;
    /// let (mut p, mut c) = (ring.producer()?, ring.consumer()?);
    /// assert!(!c.try_hold()?);
    /// p.send(b"job")?;
    /// while !c.try_hold()? {}
    /// assert_eq!(&*c.held()?.expect("held"), b"job");
    /// # Ok::<(), shoal_shm_ring::Error>(())
    /// ```
    pub fn try_hold(&mut self) -> Result<bool> {
        if self.held.is_none() {
            self.held = self.core.poll()?;
        }
        Ok(self.held.is_some())
    }

    /// What a blocked [`take`](Self::take) checks every liveness interval,
    /// for callers that wait their own way (an async loop over the
    /// [`ready_fd`](Self::ready_fd)): frees the slots of dead producers,
    /// ends the work if it is over (the next `try_take` then says so), and
    /// fails with [`Error::WriterGone`] when nobody can ever produce again
    /// (the ring's creator is dead, no live producer is attached, and
    /// claims are not closed).
    pub fn check_peers(&mut self) -> Result<()> {
        let r = self.core.check();
        if self.core.take_dead_freed() {
            sweep_orphaned_overflow(&self.core.mem);
        }
        r
    }

    /// The record [`try_hold`](Self::try_hold) kept, as a guard (`None`
    /// when none is held).
    pub fn held(&mut self) -> Result<Option<TakeGuard<'_>>> {
        match self.held.take() {
            Some(g) => self.guard(g).map(Some),
            None => Ok(None),
        }
    }

    fn guard(&mut self, g: MGot) -> Result<TakeGuard<'_>> {
        let payload = self.core.mem.data(g.pos + RECORD_HEADER as u64);
        if g.state == rec::OVERFLOW {
            let name = *self.core.mem.seg.name();
            let (d, pooled) = match overflow::descriptor(&name, payload, g.len) {
                Ok(v) => v,
                Err(e) => {
                    self.core.release(g.pos);
                    return Err(e);
                }
            };
            if pooled {
                let (ptr, len) = match self.cache.open_desc(&name, &d) {
                    Ok(v) => v,
                    Err(e) => {
                        // Never unlink a pooled segment here: the failure
                        // may be ours (EMFILE), and its producer recycles
                        // it. What a departed producer leaves is removed
                        // with the ring.
                        self.core.release(g.pos);
                        return Err(e);
                    }
                };
                return Ok(TakeGuard {
                    consumer: self,
                    pos: g.pos,
                    ptr,
                    len,
                    pooled: Some(d.seq),
                });
            }
            let (mut seg, len) = match overflow::open(&name, &d) {
                Ok(seg) => (seg, d.len as usize),
                Err(e) => {
                    // We are its only reader: nobody will ever want the file
                    // a rejected one-shot record names; remove it with the
                    // record.
                    overflow::discard(&name, d.seq);
                    self.core.release(g.pos);
                    return Err(e);
                }
            };
            // We are its only reader: unlink the name now, unmap on drop.
            let _ = seg.unlink();
            seg.disown();
            let ptr = seg.data_ptr();
            self.current_ov = Some(seg);
            return Ok(TakeGuard {
                consumer: self,
                pos: g.pos,
                ptr,
                len,
                pooled: None,
            });
        }
        Ok(TakeGuard {
            consumer: self,
            pos: g.pos,
            ptr: payload,
            len: g.len as usize,
            pooled: None,
        })
    }
}

impl MpmcConsumer {
    /// After releasing a record in pooled segment `seq`: a pooled segment
    /// whose producer is gone is removed by the consumer releasing its last
    /// record. Asked after the release (a producer leaving drops its
    /// leases, then removes the segments of records released by then: one
    /// of us sees the other). But a live producer may have reused the
    /// segment for a newer record as soon as ours was released, and then
    /// left: the segment is removed only if no unreleased record names it.
    /// That walk reads a header per occupied record; it runs only for the
    /// last records (at most a producer's 8 in flight) of a producer that
    /// left. A walk that fails (a corrupt ring) keeps the file; the ring's
    /// end or `cleanup_stale` removes it then.
    fn released_pooled(&mut self, seq: u64) {
        if self.cache.writer_gone(seq) {
            // The kernel may answer "no lease" without taking its lock:
            // order the walk's loads after that answer, so the records the
            // producer committed before leaving are seen.
            crate::sync::fence(crate::sync::Ordering::SeqCst);
            let mut named = false;
            let walked = for_each_unreleased_overflow(&self.core.mem, |s| named |= s == seq);
            if walked && !named {
                self.cache.remove(seq);
            }
        }
    }
}

impl Drop for MpmcConsumer {
    fn drop(&mut self) {
        // A held record is released as its guard would be (an overflow
        // file of its own is removed with it).
        if let Some(g) = self.held.take() {
            drop(self.guard(g));
        }
        self.core.leave();
        overflow::last_out(&self.core.mem.seg, false);
    }
}

/// A taken record, in place; released to producers when dropped.
pub struct TakeGuard<'a> {
    consumer: &'a mut MpmcConsumer,
    pos: u64,
    ptr: *const u8,
    len: usize,
    /// The pooled overflow segment the record lives in, if any.
    pooled: Option<u64>,
}

impl Deref for TakeGuard<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` lies inside the mapping (the length was
        // bounds-checked against the data area or the overflow segment when
        // the record was taken), which outlives the guard (it borrows the
        // consumer owning the mapping). This consumer claimed the record
        // (CAS on head, after publishing its intent) and has not released
        // it, so a correct producer does not write these bytes: producers
        // reuse only RELEASED records, and release a claimed one for a
        // consumer only when no live consumer's intent names it (liveness =
        // the kernel-held lease). What breaks this: a malicious or buggy
        // same-uid process writing the segment, or this process closing the
        // descriptor that holds its lease.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for TakeGuard<'_> {
    fn drop(&mut self) {
        // Unmap a one-shot overflow segment (no-op for other records).
        self.consumer.current_ov = None;
        self.consumer.core.release(self.pos);
        if let Some(seq) = self.pooled {
            self.consumer.released_pooled(seq);
        }
    }
}

impl std::fmt::Debug for TakeGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TakeGuard").field("len", &self.len).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::SegmentName;

    /// Overflow files of the ring named `name`.
    fn files(name: &SegmentName) -> usize {
        super::sweep_tests::files(name).len()
    }

    /// Takes one record and releases it by hand, as `TakeGuard::drop`
    /// does, returning its pooled segment's name part.
    fn take_and_release(c: &mut MpmcConsumer) -> u64 {
        let g = c.take_with(Wait::no_wait()).unwrap();
        let (pos, seq) = (g.pos, g.pooled.expect("a pooled record"));
        std::mem::forget(g);
        c.current_ov = None;
        c.core.release(pos);
        seq
    }

    /// Review finding (an earlier design): a consumer that asked whether
    /// the producer was gone only after releasing, and then unlinked the
    /// segment, removed one that the producer had reused for a newer
    /// record before leaving. The consumer now also checks that no
    /// unreleased record names the segment; this replays the interleaving.
    #[test]
    fn a_release_racing_a_reuse_and_exit_keeps_the_reused_segment() {
        let ring = MpmcRing::create(&MpmcConfig::new(1 << 16, 1, 2)).unwrap();
        let mut p = ring.producer().unwrap();
        let mut c1 = ring.consumer().unwrap();
        let mut c2 = ring.consumer().unwrap();
        p.send(&[1u8; 40_000]).unwrap();
        let seq = take_and_release(&mut c1);
        // The producer reuses the segment and leaves ...
        p.send(&[2u8; 40_000]).unwrap();
        drop(p);
        // ... before the releasing consumer asks: it finds the producer
        // gone, and the segment named by record 2.
        c1.released_pooled(seq);
        let g = c2.take_with(Wait::timeout(std::time::Duration::from_secs(2)));
        assert!(g.unwrap().iter().all(|&b| b == 2), "record 2 lost");
        assert_eq!(
            files(ring.handle().name()),
            0,
            "record 2's consumer removes it"
        );
    }

    /// CI failure: a consumer asked whether the producer was gone before
    /// releasing (it was alive), and the producer, leaving, looked at the
    /// record before the release: neither removed the segment. Now the
    /// consumer asks after its release and the producer looks after
    /// dropping its leases; both orders leave nothing.
    #[test]
    fn a_release_racing_a_producer_leaving_leaves_no_file() {
        let ring = MpmcRing::create(&MpmcConfig::new(1 << 16, 1, 2)).unwrap();
        let name = *ring.handle().name();
        // The consumer releases and asks while the producer lives; the
        // producer then leaves and finds the record released.
        let mut p = ring.producer().unwrap();
        let mut c = ring.consumer().unwrap();
        p.send(&[1u8; 40_000]).unwrap();
        let seq = take_and_release(&mut c);
        c.released_pooled(seq);
        assert_eq!(files(&name), 1, "a live producer's segment was removed");
        drop(p);
        assert_eq!(
            files(&name),
            0,
            "the leaving producer left a released record's file"
        );
        // The producer leaves while the record is held; the consumer then
        // releases and finds the producer gone.
        let mut p = ring.producer().unwrap();
        p.send(&[1u8; 40_000]).unwrap();
        let g = c.take_with(Wait::no_wait()).unwrap();
        drop(p);
        assert_eq!(files(&name), 1, "a held record's file was removed");
        drop(g);
        assert_eq!(files(&name), 0, "the releasing consumer left the file");
    }
}

/// Probes from the review of the orphan sweep: what a live participant
/// still needs survives it.
#[cfg(test)]
mod sweep_tests {
    use super::*;
    use std::time::Duration;

    pub(super) fn files(ring: &crate::name::SegmentName) -> Vec<String> {
        let pre = format!("{}.o", ring.as_str());
        let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.starts_with(&pre))
            .collect();
        v.sort();
        v
    }
    fn pat(seq: u32, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8)
            .collect()
    }
    const T: Duration = Duration::from_secs(3);

    #[test]
    fn sweep_live_pooled_free_segments_survive_same_process_sweep() {
        let ring = MpmcRing::create(&MpmcConfig::new(1 << 16, 2, 2)).unwrap();
        let name = *ring.handle().name();
        let mut p = ring.producer().unwrap();
        let mut c = ring.consumer().unwrap();
        for (i, n) in [40_000usize, 100_000, 300_000].into_iter().enumerate() {
            p.send(&pat(i as u32, n)).unwrap();
            drop(c.take_with(Wait::timeout(T)).unwrap());
        }
        // Reclaim them to the free list (and one in flight).
        p.send(&pat(9, 40_000)).unwrap();
        drop(c.take_with(Wait::timeout(T)).unwrap());
        let before = files(&name);
        assert!(before.len() >= 3, "{before:?}");
        sweep_orphaned_overflow(&p.core.mem);
        let _c2 = ring.consumer().unwrap(); // attach sweep too
        assert_eq!(files(&name), before, "a live producer's pool was swept");
        for (i, n) in [300_000usize, 100_000, 40_000].into_iter().enumerate() {
            p.send(&pat(50 + i as u32, n)).unwrap();
            let g = c.take_with(Wait::timeout(T)).unwrap();
            assert!(*g == pat(50 + i as u32, n)[..]);
        }
    }

    #[test]
    fn sweep_departed_producers_in_flight_and_one_shot_records_survive_sweep() {
        let ring = MpmcRing::create(&MpmcConfig::new(1 << 16, 2, 2)).unwrap();
        let name = *ring.handle().name();
        let mut p = ring.producer().unwrap();
        for i in 0..10u32 {
            p.send(&pat(i, 40_000)).unwrap(); // 8 pooled, 2 one-shot
        }
        drop(p);
        assert_eq!(files(&name).len(), 10);
        let mut c = ring.consumer().unwrap(); // sweeps
        sweep_orphaned_overflow(&c.core.mem);
        assert_eq!(files(&name).len(), 10, "needed files swept");
        for i in 0..10u32 {
            let g = c.take_with(Wait::timeout(T)).unwrap();
            assert!(*g == pat(i, 40_000)[..], "record {i}");
        }
    }

    #[test]
    fn sweep_claimed_but_not_yet_opened_record_survives_sweep() {
        let ring = MpmcRing::create(&MpmcConfig::new(1 << 16, 2, 2)).unwrap();
        let mut p = ring.producer().unwrap();
        for i in 0..9u32 {
            p.send(&pat(i, 40_000)).unwrap(); // 8 pooled, 1 one-shot
        }
        drop(p);
        let mut c = ring.consumer().unwrap();
        for i in 0..9u32 {
            let g = c.core.take(&Wait::timeout(T)).unwrap();
            sweep_orphaned_overflow(&c.core.mem);
            let g = c.guard(g).unwrap();
            assert!(*g == pat(i, 40_000)[..], "record {i}");
        }
    }

    /// Wrap pads in [reclaim, tail): the sweep must keep what records name
    /// and still remove a true orphan.
    #[test]
    fn sweep_wrap_pads_in_range() {
        let ring = MpmcRing::create(&MpmcConfig::new(4096, 2, 2)).unwrap();
        let name = *ring.handle().name();
        let mut p = ring.producer().unwrap();
        let mut c = ring.consumer().unwrap();
        // Move tail near the end with inline records, released.
        for _ in 0..3 {
            p.send(&[7u8; 1000]).unwrap();
            drop(c.take_with(Wait::timeout(T)).unwrap());
        }
        // 3 * 1024 = 3072; a 1000-byte record now wraps (pad at 3072).
        p.send(&[8u8; 1000]).unwrap();
        p.send(&pat(1, 40_000)).unwrap();
        // An orphan: a file nobody leases and no record names.
        let mut orphan = overflow::create(&name, 0xdead_beef, 5000, [0; 32]).unwrap();
        orphan.disown();
        drop(orphan);
        let l = &c.core.mem.ctrl().lock;
        eprintln!(
            "reclaim {} tail {}",
            l.reclaim.load(crate::sync::Ordering::Relaxed),
            l.tail.load(crate::sync::Ordering::Relaxed)
        );
        assert_eq!(files(&name).len(), 2);
        sweep_orphaned_overflow(&c.core.mem);
        let left = files(&name);
        let g = c.take_with(Wait::timeout(T)).unwrap();
        assert_eq!(&*g, &[8u8; 1000][..]);
        drop(g);
        let g = c.take_with(Wait::timeout(T)).unwrap();
        assert!(*g == pat(1, 40_000)[..]);
        assert_eq!(left.len(), 1, "orphan not swept: {left:?}");
    }
}
