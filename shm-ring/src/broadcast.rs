//! The broadcast ring in shared memory: one [`BroadcastWriter`], up to R
//! [`BroadcastReader`]s in any processes; every reader receives every record,
//! in order, zero-copy.

use crate::broadcast_core::{Got, ReaderCore, Resv, WriterCore};
use crate::error::{Error, Result};
use crate::layout::{
    format_tag, rec, tag_string, BroadcastControl, SegmentKind, FORMAT_TAG_LEN, MAX_CAPACITY,
    MAX_SLOTS, MIN_CAPACITY,
};
use crate::lease;
use crate::liveness::ProcessId;
use crate::mem::{RingMem, ShmMem};
use crate::name::{Handle, SegmentName};
use crate::overflow::{OverflowCache, OverflowDesc, OverflowPool, DESC_LEN};
use crate::peer::PeerOptions;
use crate::segment::{control_size, Segment, SegmentSpec};
use crate::sync::Ordering;
use crate::wait::Wait;
use std::ops::{Deref, DerefMut};

/// How to create a broadcast ring.
///
/// ```
/// use shoal_shm_ring::BroadcastConfig;
/// let cfg = BroadcastConfig::new(1 << 20, 4).payload_format(b"rkyv-le-aligned");
/// assert_eq!(cfg.capacity, 1 << 20);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct BroadcastConfig {
    /// Bytes in the data area: a power of two, 4 KiB to 2 GiB. A record
    /// larger than a quarter of it travels through an overflow segment.
    pub capacity: u64,
    /// Most readers at once (1 to 1024).
    pub readers: u32,
    /// Tag naming the payload format; attachers may require a match.
    pub format: [u8; FORMAT_TAG_LEN],
    /// Waiting and liveness options of the writer.
    pub peer: PeerOptions,
}

impl BroadcastConfig {
    /// A ring of `capacity` bytes for up to `readers` readers.
    pub fn new(capacity: u64, readers: u32) -> Self {
        BroadcastConfig {
            capacity,
            readers,
            format: [0; FORMAT_TAG_LEN],
            peer: PeerOptions::default(),
        }
    }
    /// Sets the payload-format tag (at most 32 bytes; longer is cut).
    pub fn payload_format(mut self, tag: &[u8]) -> Self {
        self.format = format_tag(tag);
        self
    }
    /// Sets the writer's peer options.
    pub fn peer_options(mut self, p: PeerOptions) -> Self {
        self.peer = p;
        self
    }
    fn validate(&self) -> Result<()> {
        if !self.capacity.is_power_of_two() || self.capacity < MIN_CAPACITY {
            return Err(Error::InvalidConfig(
                "capacity must be a power of two of at least 4096",
            ));
        }
        if self.capacity > MAX_CAPACITY {
            return Err(Error::TooLarge {
                what: "capacity",
                got: self.capacity,
                limit: MAX_CAPACITY,
            });
        }
        if self.readers == 0 || self.readers > MAX_SLOTS {
            return Err(Error::InvalidConfig("readers must be between 1 and 1024"));
        }
        Ok(())
    }
}

/// The single writer of a broadcast ring. Creating it creates the segment;
/// dropping it closes the ring (readers drain, then get [`Error::Closed`])
/// and unlinks the segment name. If overflow records are still unread,
/// dropping waits up to 200 ms for the readers to pass them, so their files
/// can be removed too.
///
/// ```
/// use shoal_shm_ring::{BroadcastConfig, BroadcastReader, BroadcastWriter};
/// let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 2))?;
/// let mut r = BroadcastReader::attach(&w.handle())?;
/// w.send(b"hello")?; // activates r at its next reservation
/// w.send(b"world")?;
/// assert_eq!(&*r.recv()?, b"hello");
/// let mut res = w.reserve(64)?;       // zero-copy: write in place ...
/// res[..3].copy_from_slice(b"abc");
/// res.commit(3)?;                     // ... and publish 3 bytes
/// assert_eq!(&*r.recv()?, b"world");
/// assert_eq!(&*r.recv()?, b"abc");
/// # Ok::<(), shoal_shm_ring::Error>(())
/// ```
pub struct BroadcastWriter {
    core: WriterCore<ShmMem<BroadcastControl>>,
    /// Overflow segments: in flight, free for reuse, and the one of the
    /// reservation in progress (kept here, not in the reservation, so
    /// reservations stay small to move).
    overflow: OverflowPool,
    /// Name part of the pending overflow segment.
    pending_seq: u64,
    format: [u8; FORMAT_TAG_LEN],
}

impl std::fmt::Debug for BroadcastWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastWriter")
            .field("name", self.core.mem.seg.name())
            .field("position", &self.core.position())
            .finish()
    }
}

impl BroadcastWriter {
    /// Creates a ring segment and becomes its writer.
    pub fn create(cfg: &BroadcastConfig) -> Result<Self> {
        cfg.validate()?;
        let spec = SegmentSpec {
            kind: SegmentKind::Broadcast,
            control_size: control_size(SegmentKind::Broadcast, cfg.readers, 0),
            data_capacity: cfg.capacity,
            slots: cfg.readers,
            producer_slots: 0,
            payload_len: 0,
            payload_format: cfg.format,
        };
        let seg = Segment::create(&spec, "bc")?;
        let mem = ShmMem::<BroadcastControl>::new(seg, cfg.readers as usize);
        let me = ProcessId::current();
        let w = &mem.ctrl().writer;
        w.pid.store(me.pid, Ordering::Relaxed);
        w.start_time.store(me.start_time, Ordering::Relaxed);
        Ok(BroadcastWriter {
            core: WriterCore::new(mem, cfg.peer),
            overflow: OverflowPool::new(),
            pending_seq: 0,
            format: cfg.format,
        })
    }

    /// The handle readers attach with.
    pub fn handle(&self) -> Handle {
        Handle::new(*self.core.mem.seg.name())
    }

    /// Readers currently receiving.
    pub fn active_readers(&self) -> u32 {
        self.core.active_readers()
    }

    /// The readers in the ring now, joined or active: each one's slot,
    /// the label it gave ([`BroadcastReader::set_tag`]), its pid (a hint:
    /// in another pid namespace it names another process) and whether it
    /// is active yet.
    ///
    /// ```
    /// use shoal_shm_ring::{BroadcastConfig, BroadcastReader, BroadcastWriter};
    /// let w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 2))?;
    /// let r = BroadcastReader::attach(&w.handle())?;
    /// r.set_tag(7);
    /// let seen = w.readers();
    /// assert_eq!(seen.len(), 1);
    /// assert_eq!(seen[0].tag, Some(7));
    /// # Ok::<(), shoal_shm_ring::Error>(())
    /// ```
    pub fn readers(&self) -> Vec<ReaderSeen> {
        crate::broadcast_core::readers(&self.core.mem)
            .into_iter()
            .map(|(slot, tag, pid, active)| ReaderSeen {
                slot,
                tag,
                pid,
                active,
            })
            .collect()
    }

    /// Whether the process holding reader slot `slot` (as
    /// [`readers`](Self::readers) names it) is alive: its kernel lease on
    /// the segment is held. Unlike a pid, this means the same in every
    /// pid namespace. False for a slot out of range.
    ///
    /// ```
    /// use shoal_shm_ring::{BroadcastConfig, BroadcastReader, BroadcastWriter};
    /// let w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 2))?;
    /// let r = BroadcastReader::attach(&w.handle())?;
    /// let slot = w.readers()[0].slot;
    /// assert!(w.reader_alive(slot));
    /// drop(r);
    /// assert!(!w.reader_alive(slot));
    /// # Ok::<(), shoal_shm_ring::Error>(())
    /// ```
    pub fn reader_alive(&self, slot: u32) -> bool {
        (slot as usize) < self.core.mem.nslots()
            && crate::peer::slot_alive(&self.core.mem, slot as usize)
    }

    /// The largest payload that still travels inside the ring.
    pub fn max_inline(&self) -> usize {
        self.core.max_inline() as usize
    }

    /// Waiters registered on the ring's futexes right now (blocked readers
    /// and armed [`ReadyFd`](crate::ReadyFd)s, plus the writer itself):
    /// for tests and diagnostics. A waiter that died registered is cleared
    /// when its slot is evicted or taken over, or after a run of wakes that
    /// found nobody.
    #[doc(hidden)]
    pub fn registered_waiters(&self) -> u32 {
        let n = self.core.mem.nslots();
        let c = self.core.mem.ctrl();
        c.data_ec.registered(n) + c.space_ec.registered(0)
    }

    /// Waits until at least `n` readers have joined, and makes them active
    /// at the current position: every record sent afterwards reaches them.
    /// Returns the number of active readers.
    pub fn wait_for_readers(&mut self, n: u32, wait: Wait<'_>) -> Result<u32> {
        self.core.wait_for_readers(n, &wait)
    }

    /// Reserves `max_len` bytes, waiting as long as it takes for readers to
    /// release space (dead readers are evicted, so this cannot hang on one).
    #[inline]
    pub fn reserve(&mut self, max_len: usize) -> Result<Reservation<'_>> {
        self.reserve_with(max_len, Wait::forever())
    }

    /// Reserves `max_len` bytes, waiting as `wait` allows.
    ///
    /// The reservation derefs to `max_len` writable bytes inside shared
    /// memory (or inside an overflow segment, for records larger than
    /// [`max_inline`](Self::max_inline)); [`Reservation::commit`] publishes a
    /// prefix of them. Dropping it uncommitted publishes nothing.
    #[inline(always)]
    pub fn reserve_with(&mut self, max_len: usize, wait: Wait<'_>) -> Result<Reservation<'_>> {
        // The common case inline; the rest returns the parts of the
        // reservation (not the reservation itself), so both paths meet in
        // registers instead of in a stack copy.
        let p = match self.core.try_reserve(max_len as u64) {
            Some(resv) => Reserved {
                buf: self.core.payload(&resv),
                resv,
                ov: false,
            },
            None => self.reserve_slow(max_len as u64, wait)?,
        };
        Ok(Reservation {
            writer: self,
            resv: p.resv,
            buf: p.buf,
            len: max_len,
            ov: p.ov,
            committed: false,
        })
    }

    /// [`reserve_with`](Self::reserve_with) past its common case.
    #[inline(never)]
    fn reserve_slow(&mut self, max_len: u64, wait: Wait<'_>) -> Result<Reserved> {
        if max_len <= self.core.max_inline() {
            let resv = self.core.reserve(max_len, &wait)?;
            return Ok(Reserved {
                buf: self.core.payload(&resv),
                resv,
                ov: false,
            });
        }
        self.reserve_overflow(max_len, wait)
    }

    /// The large-record path of [`reserve_with`](Self::reserve_with).
    fn reserve_overflow(&mut self, max_len: u64, wait: Wait<'_>) -> Result<Reserved> {
        // Room in the overflow table first, then in the ring.
        self.overflow.reclaim(self.core.released_floor());
        while let Some(oldest) = self.overflow.oldest_if_full() {
            let cap = self.core.mem.capacity();
            self.core.wait_until_free(oldest + 1 + cap, &wait)?;
            self.overflow.reclaim(oldest + 1);
        }
        let resv = self.core.reserve(DESC_LEN, &wait)?;
        // A recycled segment, or a new one with a random name (another
        // local user cannot pre-create it).
        let (buf, seq) = self
            .overflow
            .take(self.core.mem.seg.name(), max_len, self.format)?;
        self.pending_seq = seq;
        Ok(Reserved {
            resv,
            buf,
            ov: true,
        })
    }

    /// Copies `bytes` into the ring as one record.
    #[inline]
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.send_with(bytes, Wait::forever())
    }

    /// Copies `bytes` into the ring as one record, waiting as `wait` allows.
    #[inline]
    pub fn send_with(&mut self, bytes: &[u8], wait: Wait<'_>) -> Result<()> {
        let mut r = self.reserve_with(bytes.len(), wait)?;
        r.copy_from_slice(bytes);
        r.commit(bytes.len())
    }

    /// Closes the ring: readers receive what was committed, then `Closed`.
    pub fn close(self) {
        drop(self)
    }
}

impl BroadcastWriter {
    /// Publishes the descriptor of the pending overflow segment in `resv`.
    #[inline(never)]
    fn commit_overflow(&mut self, resv: Resv, len: u64) {
        let d = OverflowDesc {
            seq: self.pending_seq,
            len,
        };
        // SAFETY: the reservation holds DESC_LEN payload bytes.
        unsafe { d.write(self.core.payload(&resv)) };
        self.overflow.commit_pending(resv.start);
        self.core.commit(resv, DESC_LEN, rec::OVERFLOW);
    }
}

/// How long a closing writer waits for readers to pass its last overflow
/// records before leaving their files to `cleanup_stale`.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

impl Drop for BroadcastWriter {
    #[inline]
    fn drop(&mut self) {
        self.core.close();
        // Overflow records committed before the close may not be read yet.
        // Give the readers a moment to pass them, then drop (unlink) the
        // files they are done with; leave the rest on disk (cleanup_stale
        // removes them once this process is gone) rather than lose records.
        if let Some(newest) = self.overflow.newest() {
            let cap = self.core.mem.capacity();
            let _ = self
                .core
                .wait_until_free(newest + 1 + cap, &Wait::timeout(CLOSE_GRACE));
        }
        self.overflow.reclaim(self.core.rescan_floor());
        let unread = self.overflow.has_in_flight();
        self.overflow.close();
        if !crate::lease::any_held(self.core.mem.seg.fd()) {
            // No reader left at all: nobody can read the files left behind.
            crate::overflow::remove_all(self.core.mem.seg.name());
        } else if unread {
            // Readers still drain records whose files are left to them: keep
            // the ring's name too, so `cleanup_stale` sees the readers'
            // leases on it and keeps the files; the last reader out removes
            // the name and the files.
            self.core.mem.seg.disown();
        }
    }
}

/// What a reservation is made of, without the writer it borrows.
struct Reserved {
    resv: Resv,
    buf: *mut u8,
    ov: bool,
}

/// Space reserved in a ring, writable in place. Derefs to the reserved bytes.
pub struct Reservation<'a> {
    writer: &'a mut BroadcastWriter,
    resv: Resv,
    buf: *mut u8,
    len: usize,
    /// Whether the payload lives in the writer's pending overflow segment.
    ov: bool,
    committed: bool,
}

impl Reservation<'_> {
    /// Publishes the first `len` bytes to every reader.
    #[inline(always)]
    pub fn commit(mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::TooLarge {
                what: "commit length",
                got: len as u64,
                limit: self.len as u64,
            });
        }
        self.committed = true;
        if std::mem::replace(&mut self.ov, false) {
            self.writer.commit_overflow(self.resv, len as u64);
        } else {
            self.writer.core.commit(self.resv, len as u64, rec::DATA);
        }
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    #[inline]
    fn drop(&mut self) {
        if !self.committed {
            self.writer.core.abandon(&self.resv);
        }
        if self.ov {
            // Not committed: the overflow segment is free again.
            self.writer.overflow.abandon_pending();
        }
    }
}

impl Deref for Reservation<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: `buf` points at `len` bytes inside the mapping (the ring's
        // data area, checked free by `reserve`, or a fresh overflow segment)
        // that this reservation owns until it is committed or dropped: a
        // correct reader never reads past the last committed record, and the
        // writer is single. A malicious same-uid process could still write
        // them; reading them back is reading untrusted bytes either way.
        unsafe { std::slice::from_raw_parts(self.buf, self.len) }
    }
}

impl DerefMut for Reservation<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.buf, self.len) }
    }
}

/// How a reader attaches.
#[derive(Debug, Clone, Default)]
pub struct ReaderOptions {
    /// Waiting and liveness options.
    pub peer: PeerOptions,
    /// If set, the segment's payload-format tag must equal this.
    pub expect_format: Option<[u8; FORMAT_TAG_LEN]>,
}

/// A reader a writer sees in its ring (see [`BroadcastWriter::readers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderSeen {
    /// Its slot.
    pub slot: u32,
    /// The label it gave, if any.
    pub tag: Option<u32>,
    /// Its pid as it recorded it.
    pub pid: u32,
    /// Whether the writer activated it yet.
    pub active: bool,
}

/// One reader of a broadcast ring. It receives every record committed after
/// it joined, in order; dropping it leaves the ring.
pub struct BroadcastReader {
    core: ReaderCore<ShmMem<BroadcastControl>>,
    /// Mappings of overflow segments this reader has read from.
    overflow: OverflowCache,
    /// Set while a `ReadyFd` of this reader exists.
    ready_taken: std::sync::Arc<crate::sync::AtomicBool>,
    /// Its identity in the records it holds (see [`Held`]).
    id: u64,
}

impl std::fmt::Debug for BroadcastReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastReader")
            .field("name", self.core.mem.seg.name())
            .field("slot", &self.core.slot_index())
            .finish()
    }
}

impl BroadcastReader {
    /// Attaches to the ring `handle` names, with default options.
    pub fn attach(handle: &Handle) -> Result<Self> {
        Self::attach_with(handle, &ReaderOptions::default())
    }

    /// Attaches with explicit options.
    pub fn attach_with(handle: &Handle, opts: &ReaderOptions) -> Result<Self> {
        let seg = Segment::attach(handle.name(), SegmentKind::Broadcast)?;
        if let Some(f) = opts.expect_format {
            if seg.header().payload_format != f {
                return Err(Error::FormatMismatch {
                    ours: tag_string(&f),
                    theirs: tag_string(&seg.header().payload_format),
                });
            }
        }
        let n = seg.header().slots as usize;
        let mem = ShmMem::<BroadcastControl>::new(seg, n);
        Ok(BroadcastReader {
            core: ReaderCore::join(mem, ProcessId::current(), opts.peer)?,
            overflow: OverflowCache::new(),
            ready_taken: Default::default(),
            id: crate::name::random_u64()?,
        })
    }

    /// An eventfd that turns readable when this ring may have a record, for
    /// async runtimes; see [`ReadyFd`](crate::ReadyFd) for the protocol.
    /// It also turns readable when the writer dies (check
    /// [`writer_alive`](Self::writer_alive) after a wake with nothing to read).
    /// One per reader at a time: a second call while the first lives fails
    /// with [`Error::InvalidConfig`].
    ///
    /// ```
    /// use shoal_shm_ring::{BroadcastConfig, BroadcastReader, BroadcastWriter, Wait};
    /// let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 1))?;
    /// let mut r = BroadcastReader::attach(&w.handle())?;
    /// w.wait_for_readers(1, Wait::no_wait())?;
    /// let ready = r.ready_fd()?;
    /// ready.arm();
    /// assert!(r.try_recv()?.is_none()); // re-check after arming
    /// w.send(b"x")?;
    /// // ... an event loop would now see `ready.as_raw_fd()` readable ...
    /// # let mut p = libc::pollfd { fd: ready.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    /// # assert_eq!(unsafe { libc::poll(&mut p, 1, 5000) }, 1);
    /// ready.clear();
    /// assert_eq!(&*r.try_recv()?.unwrap(), b"x");
    /// # Ok::<(), shoal_shm_ring::Error>(())
    /// ```
    pub fn ready_fd(&self) -> Result<crate::ReadyFd> {
        let seg = self.core.mem.seg.reopen(SegmentKind::Broadcast)?;
        let t = self.core.token();
        crate::ReadyFd::new(
            seg,
            std::mem::offset_of!(BroadcastControl, data_ec),
            crate::wait::Waiter::ready(t.index),
            crate::ready::Recheck::WriterLease,
            crate::ready::slot_own_offset::<BroadcastControl>(t.index),
            t.gen,
            self.ready_taken.clone(),
        )
    }

    /// Labels this reader with `tag` (a reader's index in its channel):
    /// the writer's logs about a slow reader name it, and
    /// [`BroadcastWriter::readers`] lists it.
    pub fn set_tag(&self, tag: u32) {
        self.core.set_tag(tag)
    }

    /// Whether the writer made this reader active: it receives every
    /// record committed from then on. The writer activates the readers
    /// that joined at its next reservation, and while it waits for
    /// readers ([`BroadcastWriter::wait_for_readers`]).
    ///
    /// ```
    /// use shoal_shm_ring::{BroadcastConfig, BroadcastReader, BroadcastWriter, Wait};
    /// let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 1))?;
    /// let r = BroadcastReader::attach(&w.handle())?;
    /// assert!(!r.is_active());
    /// w.wait_for_readers(1, Wait::forever())?;
    /// assert!(r.is_active());
    /// # Ok::<(), shoal_shm_ring::Error>(())
    /// ```
    pub fn is_active(&self) -> bool {
        self.core.is_active()
    }

    /// Whether the writer still holds the ring: its process runs and it has
    /// not dropped its [`BroadcastWriter`] (its lease is held).
    pub fn writer_alive(&self) -> bool {
        self.core.mem.lease_held(lease::OWNER)
    }

    /// The writer's pid as it recorded it (a hint: in another pid namespace
    /// it names another process).
    pub fn writer_pid(&self) -> u32 {
        self.core.mem.ctrl().writer.pid.load(Ordering::Relaxed)
    }

    /// The payload-format tag the writer set.
    pub fn payload_format(&self) -> String {
        tag_string(&self.core.mem.seg.header().payload_format)
    }

    /// Waits for the next record.
    #[inline]
    pub fn recv(&mut self) -> Result<ReadGuard<'_>> {
        self.recv_with(Wait::forever())
    }

    /// Waits for the next record as `wait` allows; with [`Wait::no_wait`] a
    /// missing record is [`Error::WouldBlock`].
    #[inline(always)]
    pub fn recv_with(&mut self, wait: Wait<'_>) -> Result<ReadGuard<'_>> {
        // As in `BroadcastWriter::reserve_with`: the slow path returns the
        // guard's parts, so both paths meet in registers.
        let p = match self.core.poll_data() {
            Some(g) => self.data_parts(g),
            None => self.recv_slow(wait)?,
        };
        Ok(self.guard_from(p))
    }

    /// `recv_with` past its common case (a data record ready).
    #[inline(never)]
    fn recv_slow(&mut self, wait: Wait<'_>) -> Result<GuardParts> {
        // One deadline for the whole call, however often the loop runs (it
        // runs again only if the record the wait saw is gone, which a
        // correct writer cannot make happen).
        let deadline = wait.start();
        loop {
            self.core.recv_wait(&deadline)?;
            // A record is at the cursor now (nobody else moves it).
            if let Some(g) = self.core.poll_data() {
                return Ok(self.data_parts(g));
            }
            if let Some(g) = self.core.poll()? {
                return self.parts(g);
            }
        }
    }

    /// The next record's bytes if one is ready, without taking it: the
    /// next [`try_recv`](Self::try_recv) returns the same record. Errors as
    /// `try_recv` does (`Closed` once the writer closed and everything was
    /// read, `Evicted`, `Corrupt`); like `try_recv`, it releases an
    /// overflow record whose segment cannot be mapped (the error says so)
    /// rather than wedge on it. For event loops that decide whether to
    /// wait, or whether a record is theirs, before borrowing the reader for
    /// a guard.
    ///
    /// ```
    /// use shoal_shm_ring::{BroadcastConfig, BroadcastReader, BroadcastWriter, Wait};
    /// let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 1))?;
    /// let mut r = BroadcastReader::attach(&w.handle())?;
    /// w.wait_for_readers(1, Wait::no_wait())?;
    /// assert!(r.peek()?.is_none());
    /// w.send(b"x")?;
    /// assert_eq!(r.peek()?, Some(&b"x"[..]));
    /// assert_eq!(&*r.try_recv()?.unwrap(), b"x");
    /// # Ok::<(), shoal_shm_ring::Error>(())
    /// ```
    pub fn peek(&mut self) -> Result<Option<&[u8]>> {
        let p = match self.core.poll_data() {
            Some(g) => self.data_parts(g),
            None => match self.try_recv_slow()? {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        // SAFETY: as for `ReadGuard`'s deref: `p` describes a committed,
        // unreleased record inside a mapping this reader owns (the ring's,
        // or a cached overflow segment's), bounds-checked when it was read;
        // the returned slice borrows the reader mutably, so the cursor
        // cannot move (and the record cannot be released) while it lives.
        Ok(Some(unsafe { std::slice::from_raw_parts(p.ptr, p.len) }))
    }

    /// The next record if one is ready, without waiting.
    #[inline(always)]
    pub fn try_recv(&mut self) -> Result<Option<ReadGuard<'_>>> {
        let p = match self.core.poll_data() {
            Some(g) => self.data_parts(g),
            None => match self.try_recv_slow()? {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        Ok(Some(self.guard_from(p)))
    }

    /// `try_recv` past its common case.
    #[inline(never)]
    fn try_recv_slow(&mut self) -> Result<Option<GuardParts>> {
        match self.core.poll()? {
            Some(g) => self.parts(g).map(Some),
            None => Ok(None),
        }
    }

    /// The guard parts of record `g`: its payload in the ring, or in its
    /// overflow segment.
    fn parts(&mut self, g: Got) -> Result<GuardParts> {
        if g.state == rec::OVERFLOW {
            let payload = self
                .core
                .mem
                .data(g.pos + crate::layout::RECORD_HEADER as u64);
            return self.overflow_parts(g, payload);
        }
        Ok(self.data_parts(g))
    }

    /// The guard parts of a data record (its payload inside the ring).
    #[inline(always)]
    fn data_parts(&self, g: Got) -> GuardParts {
        GuardParts {
            next: g.next,
            urgent: false,
            ptr: self
                .core
                .mem
                .data(g.pos + crate::layout::RECORD_HEADER as u64),
            len: g.len as usize,
        }
    }

    #[inline(always)]
    fn guard_from(&mut self, p: GuardParts) -> ReadGuard<'_> {
        ReadGuard {
            reader: self,
            next: p.next,
            urgent: p.urgent,
            ptr: p.ptr,
            len: p.len,
        }
    }

    /// The overflow-record path of `guard`.
    #[inline(never)]
    fn overflow_parts(&mut self, g: Got, payload: *mut u8) -> Result<GuardParts> {
        let name = *self.core.mem.seg.name();
        let (ptr, len) = match self.overflow.open(&name, payload, g.len) {
            Ok(v) => v,
            Err(e) => {
                // Skip the record we cannot map, rather than wedge on it.
                self.core.release(g.next, true);
                return Err(e);
            }
        };
        Ok(GuardParts {
            next: g.next,
            urgent: true,
            ptr,
            len,
        })
    }
}

impl BroadcastReader {
    /// Receives the next record and holds it, without borrowing the
    /// reader: several records can be held at once (up to
    /// [`MAX_HELD`](crate::MAX_HELD)) while later ones are received. Each
    /// stays in place until [`release_held`](Self::release_held); the ring
    /// gets them back in order, whatever order they are released in (the
    /// writer waits for the oldest). Read one with
    /// [`held_bytes`](Self::held_bytes).
    ///
    /// ```
    /// use shoal_shm_ring::{BroadcastConfig, BroadcastReader, BroadcastWriter, Wait};
    /// let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 1))?;
    /// let mut r = BroadcastReader::attach(&w.handle())?;
    /// w.wait_for_readers(1, Wait::no_wait())?;
    /// w.send(b"step 1")?;
    /// w.send(b"step 2")?;
    /// let one = r.recv_held_with(Wait::forever())?;
    /// let two = r.recv_held_with(Wait::forever())?;
    /// assert_eq!(r.held_bytes(&one), Some(&b"step 1"[..]));
    /// assert_eq!(r.held_bytes(&two), Some(&b"step 2"[..]));
    /// r.release_held(two).expect("ours");
    /// r.release_held(one).expect("ours");
    /// # Ok::<(), shoal_shm_ring::Error>(())
    /// ```
    pub fn recv_held_with(&mut self, wait: Wait<'_>) -> Result<Held> {
        let deadline = wait.start();
        loop {
            if let Some(h) = self.try_recv_held()? {
                return Ok(h);
            }
            self.core.recv_wait(&deadline)?;
        }
    }

    /// [`recv_held_with`](Self::recv_held_with) if a record is ready now.
    #[inline]
    pub fn try_recv_held(&mut self) -> Result<Option<Held>> {
        // The common case inline: a data record, and room to hold it.
        if let Some(g) = self.core.poll_data() {
            if self.core.hold(&g, None).is_ok() {
                let p = self.data_parts(g);
                return Ok(Some(Held {
                    start: g.pos,
                    owner: self.id(),
                    ptr: p.ptr,
                    len: p.len,
                }));
            }
        }
        self.try_recv_held_slow()
    }

    /// `try_recv_held` past its common case.
    #[inline(never)]
    fn try_recv_held_slow(&mut self) -> Result<Option<Held>> {
        let Some(g) = self.core.poll()? else {
            return Ok(None);
        };
        let (ptr, len, pinned) = if g.state == rec::OVERFLOW {
            let payload = self
                .core
                .mem
                .data(g.pos + crate::layout::RECORD_HEADER as u64);
            let name = *self.core.mem.seg.name();
            match self.overflow.open_pinned(&name, payload, g.len) {
                Ok((p, l, seq)) => (p, l, Some(seq)),
                Err(e) => {
                    // Skip the record we cannot map, rather than wedge on it.
                    self.core.release(g.next, true);
                    return Err(e);
                }
            }
        } else {
            let p = self.data_parts(g);
            (p.ptr, p.len, None)
        };
        if let Err(e) = self.core.hold(&g, pinned) {
            if let Some(seq) = pinned {
                self.overflow.unpin(seq);
            }
            return Err(e);
        }
        Ok(Some(Held {
            start: g.pos,
            owner: self.id(),
            ptr,
            len,
        }))
    }

    /// The bytes of a record this reader holds (`None` for a record held
    /// by another reader).
    #[inline]
    pub fn held_bytes<'a>(&'a self, h: &'a Held) -> Option<&'a [u8]> {
        if h.owner != self.id() || !self.core.is_held(h.start) {
            return None;
        }
        // SAFETY: `h` was handed out by this reader (same id) and the record
        // at its position is still held (checked), so the writer does not
        // reuse its bytes: it only reuses what this reader's published
        // position lets it, which stays at or below the oldest held record;
        // an overflow record's mapping is pinned in this reader's cache
        // (never dropped while pinned) and a ring record's is this reader's
        // own, both living as long as `self`, borrowed for `'a`. What
        // breaks this: a malicious or buggy same-uid process writing the
        // segment (see `ReadGuard`).
        Some(unsafe { std::slice::from_raw_parts(h.ptr, h.len) })
    }

    /// Gives a held record back. A ticket of another reader (or one this
    /// reader no longer holds) is handed back untouched, so its own
    /// reader can still release it.
    #[inline]
    pub fn release_held(&mut self, h: Held) -> std::result::Result<(), Held> {
        if h.owner != self.id() || !self.release_position(h.start) {
            return Err(h);
        }
        Ok(())
    }

    /// Gives back the record this reader holds at `position` (what
    /// [`Held::position`] said): the same as [`release_held`] with its
    /// ticket, for a caller that keeps positions instead of tickets. False
    /// if this reader holds no record there (nothing changes). Positions
    /// are the ring's, the same for every reader: pass only positions of
    /// this reader's own tickets (another reader's would release this
    /// reader's record at that position, and its ticket's bytes with it).
    ///
    /// [`release_held`]: Self::release_held
    #[inline]
    pub fn release_position(&mut self, position: u64) -> bool {
        match self.core.release_hold(position) {
            None => false,
            Some(pin) => {
                if let Some(seq) = pin {
                    self.overflow.unpin(seq);
                }
                true
            }
        }
    }

    /// The data record at the cursor, read without taking it: the cursor
    /// stays on it (so the writer does not reuse it, and the next look
    /// finds it again) until [`advance_peeked`](Self::advance_peeked)
    /// gives it back or [`hold_peeked`](Self::hold_peeked) holds it.
    /// `None` when the next record is not a plain data record ready now
    /// (nothing yet, an overflow record, a pad, a reader not active yet):
    /// [`try_recv_held`](Self::try_recv_held) (or a receive) takes those.
    ///
    /// For a caller that usually gives a record back before it reads the
    /// next: a peeked record costs what a [`recv`](Self::recv) does, a held
    /// one a little more.
    ///
    /// ```
    /// use shoal_shm_ring::{BroadcastConfig, BroadcastReader, BroadcastWriter, Wait};
    /// let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 1))?;
    /// let mut r = BroadcastReader::attach(&w.handle())?;
    /// w.wait_for_readers(1, Wait::no_wait())?;
    /// for m in [&b"a"[..], b"b", b"c"] {
    ///     w.send(m)?;
    /// }
    /// // A reader not yet active (before its first receive) peeks nothing.
    /// assert_eq!(&*r.recv()?, b"a");
    /// let p = r.try_peek().expect("a record");
    /// assert_eq!(r.peeked_bytes(&p), Some(&b"b"[..]));
    /// assert!(r.advance_peeked(&p));
    /// let p = r.try_peek().expect("the next");
    /// let held = r.hold_peeked(&p)?;
    /// assert_eq!(r.held_bytes(&held), Some(&b"c"[..]));
    /// r.release_held(held).expect("ours");
    /// # Ok::<(), shoal_shm_ring::Error>(())
    /// ```
    #[inline]
    pub fn try_peek(&mut self) -> Option<Peeked> {
        let g = self.core.poll_data()?;
        let p = self.data_parts(g);
        Some(Peeked {
            start: g.pos,
            next: g.next,
            owner: self.id(),
            ptr: p.ptr,
            len: p.len,
        })
    }

    /// The bytes of the record `p` peeked, while the cursor is still on
    /// it (`None`: another reader's, or given back or held since).
    #[inline]
    pub fn peeked_bytes<'a>(&'a self, p: &'a Peeked) -> Option<&'a [u8]> {
        if !self.owns_peek(p) {
            return None;
        }
        // SAFETY: the cursor is on the record (checked), so the position
        // this reader publishes stays at or below its start and the
        // writer does not reuse its bytes; the mapping is this reader's,
        // living as long as `self`, borrowed for `'a`. What breaks this: a
        // malicious or buggy same-uid process writing the segment (see
        // `ReadGuard`).
        Some(unsafe { std::slice::from_raw_parts(p.ptr, p.len) })
    }

    /// Whether `p` is this reader's peek and the cursor is still on it
    /// (of a reader still owning its slot).
    #[inline(always)]
    fn owns_peek(&self, p: &Peeked) -> bool {
        p.owner == self.id() && self.core.cursor() == p.start && !self.core.is_evicted()
    }

    /// Gives the peeked record back, as the drop of a [`ReadGuard`] does:
    /// the cursor moves past it. False (nothing changes) if the cursor is
    /// no longer on it, or it is another reader's.
    #[inline]
    pub fn advance_peeked(&mut self, p: &Peeked) -> bool {
        if !self.owns_peek(p) {
            return false;
        }
        self.core.release(p.next, false);
        true
    }

    /// Holds the peeked record (see [`recv_held_with`]): the cursor moves
    /// past it, the writer does not reuse it until it is released.
    /// `TooLarge` past [`MAX_HELD`](crate::MAX_HELD) records held at once;
    /// [`Error::InvalidConfig`] if the cursor is no longer on it (or the
    /// reader was evicted).
    ///
    /// [`recv_held_with`]: Self::recv_held_with
    #[inline]
    pub fn hold_peeked(&mut self, p: &Peeked) -> Result<Held> {
        if !self.owns_peek(p) {
            return Err(Error::InvalidConfig("a peeked record the cursor has left"));
        }
        let g = Got {
            pos: p.start,
            len: p.len as u64,
            next: p.next,
            state: rec::DATA,
        };
        self.core.hold(&g, None)?;
        Ok(Held {
            start: p.start,
            owner: self.id(),
            ptr: p.ptr,
            len: p.len,
        })
    }

    /// Waits (as `wait` allows) until a record is at the cursor, without
    /// taking it: the next [`try_peek`](Self::try_peek) or
    /// [`try_recv_held`](Self::try_recv_held) finds it (or what ended the
    /// wait: `Closed`, `WriterGone`, ...).
    pub fn wait_for_record(&mut self, wait: Wait<'_>) -> Result<()> {
        let deadline = wait.start();
        self.core.recv_wait(&deadline)
    }

    /// This reader's identity in the `Held` values it hands out (random,
    /// drawn when it attached).
    #[inline(always)]
    fn id(&self) -> u64 {
        self.id
    }
}

/// A data record a [`BroadcastReader`] peeked at (see
/// [`BroadcastReader::try_peek`]): a ticket, not a borrow; it stays
/// protected while the reader's cursor is on it, and is given back or
/// held through the reader.
#[derive(Debug)]
pub struct Peeked {
    start: u64,
    next: u64,
    owner: u64,
    ptr: *const u8,
    len: usize,
}

impl Peeked {
    /// Its position in the ring.
    pub fn position(&self) -> u64 {
        self.start
    }

    /// Where its bytes are, for a caller that reads them while the cursor
    /// is on the record (see [`BroadcastReader::peeked_bytes`]).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

// SAFETY: a Peeked is a ticket (positions and a pointer it never
// dereferences itself): its bytes are read only through its reader.
unsafe impl Send for Peeked {}
// SAFETY: as above.
unsafe impl Sync for Peeked {}

/// A record a [`BroadcastReader`] received and holds (see
/// [`BroadcastReader::recv_held_with`]): a ticket, not a borrow; its bytes
/// are read through the reader, and the ring gets it back when it is
/// released. Dropped without being released, it stays held until its
/// reader is dropped (and the writer waits for it).
#[derive(Debug)]
#[must_use = "a held record stays held (and the writer waits for it) until released"]
pub struct Held {
    start: u64,
    owner: u64,
    ptr: *const u8,
    len: usize,
}

// SAFETY: a Held is a ticket (positions and a pointer it never
// dereferences itself): its bytes are only read through
// `BroadcastReader::held_bytes`, by the reader that made it, under that
// reader's borrow.
unsafe impl Send for Held {}
// SAFETY: as above: shared references to a Held give no access to its
// bytes without the reader.
unsafe impl Sync for Held {}

impl Held {
    /// The length of the record's bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the record is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The record's position in the ring (for
    /// [`BroadcastReader::release_position`]).
    pub fn position(&self) -> u64 {
        self.start
    }

    /// Where the record's bytes start. Reading through it is the
    /// caller's `unsafe` promise that the ticket is still held by the
    /// reader that made it and that reader is alive (what
    /// [`BroadcastReader::held_bytes`] checks); the safe way is
    /// `held_bytes`.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
}

/// What a read guard is made of, without the reader it borrows.
struct GuardParts {
    next: u64,
    urgent: bool,
    ptr: *const u8,
    len: usize,
}

impl Drop for BroadcastReader {
    #[inline]
    fn drop(&mut self) {
        self.core.leave();
        // The last one out of a finished ring removes what is left of it.
        let c = self.core.mem.ctrl();
        let done = c.status.closed.load(Ordering::Acquire) != 0 || !self.writer_alive();
        crate::overflow::last_out(&self.core.mem.seg, done);
    }
}

/// A received record, in place in shared memory. Derefs to its bytes; the
/// writer may reuse them only after the guard is dropped.
///
/// The bytes stay put while the guard lives against every *correct* peer:
/// the writer never reuses a record a live reader has not released (a
/// reader that stalls makes the writer's wait end with
/// [`Error::Stalled`], it is never evicted). A *malicious* process of the
/// same user can map the segment and write anything at any time, including
/// these bytes: shoal's segments are private to one uid, not a security
/// boundary between processes of that uid.
pub struct ReadGuard<'a> {
    reader: &'a mut BroadcastReader,
    next: u64,
    /// An overflow record: tell the writer at once when it is released.
    urgent: bool,
    ptr: *const u8,
    len: usize,
}

impl Deref for ReadGuard<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` lies inside the mapping (the length was
        // bounds-checked against the data area or the overflow segment when
        // the record was read) and the mapping outlives the guard (the
        // guard borrows the reader that owns it). The record is committed
        // and this reader has not moved its cursor past it, so a correct
        // writer does not write these bytes while the guard lives: it only
        // reuses lines every ACTIVE reader released, and it never evicts a
        // live reader (only one whose lease the kernel dropped, i.e. whose
        // process died or closed the descriptor holding it). What breaks
        // this: a malicious or buggy same-uid process writing the segment.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for ReadGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.reader.core.release(self.next, self.urgent);
    }
}

impl std::fmt::Debug for ReadGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadGuard").field("len", &self.len).finish()
    }
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<BroadcastWriter>();
    is_send::<BroadcastReader>();
    let _ = SegmentName::new;
}
