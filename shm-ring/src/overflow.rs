//! Records too large for the ring travel in an overflow segment whose
//! descriptor travels in the ring: still zero-copy, no socket hop, no size
//! limit but memory.
//!
//! A broadcast writer recycles its overflow segments ([`OverflowPool`]) and
//! readers cache their mappings ([`OverflowCache`]), so a stream of large
//! records creates, zeroes and maps files only while the pool warms up. An
//! MPMC producer pools its segments the same way, reusing one once the
//! record naming it was released (its commit word moved on); when its
//! in-flight table is full (consumers lag), it falls back to a one-shot
//! segment that the consumer taking it unlinks. An MPMC descriptor holds
//! ring room in proportion to its segment's size (`OVERFLOW_RATIO`), so
//! the ring's room bounds the overflow bytes in flight. Overflow payloads
//! start on a page boundary.

use crate::error::{Error, Result};
use crate::layout::{SegmentKind, FORMAT_TAG_LEN, HEADER_PAGE};
use crate::lease;
use crate::name::{random_u64, SegmentName};
use crate::segment::{Segment, SegmentSpec};
use std::os::fd::AsRawFd;

/// The ring record that stands for an overflow segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct OverflowDesc {
    /// Random name part; the segment is `<ring name>.o<seq in hex>`.
    pub seq: u64,
    /// Payload bytes committed.
    pub len: u64,
}

/// Bytes of a descriptor in the ring.
pub(crate) const DESC_LEN: u64 = std::mem::size_of::<OverflowDesc>() as u64;

impl OverflowDesc {
    /// Writes the descriptor at `p`.
    ///
    /// # Safety
    /// `p` must be valid for `DESC_LEN` bytes of writes.
    pub(crate) unsafe fn write(&self, p: *mut u8) {
        // SAFETY: guaranteed by the caller; unaligned write needs no alignment.
        unsafe { std::ptr::write_unaligned(p as *mut OverflowDesc, *self) }
    }

    /// Reads a descriptor at `p` (a copy: the bytes are peer-writable).
    ///
    /// # Safety
    /// `p` must be valid for `DESC_LEN` bytes of reads.
    pub(crate) unsafe fn read(p: *const u8) -> Self {
        // SAFETY: guaranteed by the caller; any bit pattern is a valid desc.
        unsafe { std::ptr::read_volatile(p as *const OverflowDesc) }
    }
}

/// Creates the overflow segment `seq` of `ring` for up to `max_len` bytes.
pub(crate) fn create(
    ring: &SegmentName,
    seq: u64,
    max_len: u64,
    format: [u8; FORMAT_TAG_LEN],
) -> Result<Segment> {
    let cap = max_len
        .checked_add(HEADER_PAGE as u64 - 1)
        .ok_or(Error::TooLarge {
            what: "record",
            got: max_len,
            limit: isize::MAX as u64,
        })?
        & !(HEADER_PAGE as u64 - 1);
    let spec = SegmentSpec {
        kind: SegmentKind::Overflow,
        control_size: 0,
        data_capacity: cap.max(HEADER_PAGE as u64),
        slots: 0,
        producer_slots: 0,
        payload_len: max_len,
        payload_format: format,
    };
    Segment::create_named(&spec, ring.overflow(seq)?)
}

/// Maps the overflow segment a descriptor names, checking its length.
pub(crate) fn open(ring: &SegmentName, d: &OverflowDesc) -> Result<Segment> {
    let seg = Segment::attach(&ring.overflow(d.seq)?, SegmentKind::Overflow)?;
    check_len(&seg, d)?;
    Ok(seg)
}

/// Top bit of a descriptor's `len` word: the segment belongs to its
/// writer's pool (readers keep their mapping and never unlink it); without
/// it, an MPMC record's segment is one-shot and its consumer unlinks it.
pub(crate) const POOLED: u64 = 1 << 63;

/// The descriptor of a committed ring record, copied once (its `len`
/// without the [`POOLED`] flag), and whether it names a pooled segment.
pub(crate) fn descriptor(
    ring: &SegmentName,
    payload: *const u8,
    len_in_ring: u64,
) -> Result<(OverflowDesc, bool)> {
    // (An MPMC descriptor's record is as long as the ring room it holds:
    // the descriptor is its first 16 bytes.)
    if len_in_ring < DESC_LEN {
        return Err(Error::corrupt(
            *ring,
            "overflow descriptor length in the ring",
            len_in_ring,
            "16 or more",
        ));
    }
    // SAFETY: callers pass the payload of a record at a 64-byte aligned
    // position of the data area, so its first DESC_LEN bytes (after the
    // 16-byte header, in the record's first line) lie inside the mapping
    // whatever its length says; the copy is taken once (peer-writable
    // bytes).
    let mut d = unsafe { OverflowDesc::read(payload) };
    let pooled = d.len & POOLED != 0;
    d.len &= !POOLED;
    Ok((d, pooled))
}

/// Copies the descriptor out of a committed ring record (its `len` without
/// the [`POOLED`] flag).
fn read_desc(ring: &SegmentName, payload: *const u8, len_in_ring: u64) -> Result<OverflowDesc> {
    descriptor(ring, payload, len_in_ring).map(|(d, _)| d)
}

/// Whether the ring mapped as `seg` still has a name in /dev/shm.
fn linked(seg: &Segment) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills `st` on success; the fd is open for `seg`'s life.
    if unsafe { libc::fstat(seg.fd(), st.as_mut_ptr()) } != 0 {
        return true;
    }
    // SAFETY: fstat returned 0, so `st` is initialized.
    unsafe { st.assume_init() }.st_nlink > 0
}

/// Called by each participant leaving the ring mapped as `seg`: the last one
/// out of a ring that is finished (`done`: its writer closed or died) or
/// whose name is gone removes the ring's name and every overflow file left
/// (records nobody will take any more die with the ring).
pub(crate) fn last_out(seg: &Segment, done: bool) {
    if lease::any_held(seg.fd()) {
        return;
    }
    let linked = linked(seg);
    if linked && !done {
        return;
    }
    if linked {
        let _ = seg.unlink();
    }
    remove_all(seg.name());
}

/// The overflow files of `ring` (name part and name) on which nobody holds
/// a lease. Not a hot path (reads the directory).
pub(crate) fn unleased_files(ring: &SegmentName) -> Vec<(u64, SegmentName)> {
    overflow_files_of(ring)
        .filter(|(_, name)| {
            crate::segment::open_shm(name, libc::O_RDONLY)
                .is_ok_and(|fd| !lease::any_held(fd.as_raw_fd()))
        })
        .collect()
}

/// The overflow files of `ring` in /dev/shm: name part and name.
fn overflow_files_of(ring: &SegmentName) -> impl Iterator<Item = (u64, SegmentName)> + '_ {
    std::fs::read_dir(crate::name::SHM_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |entry| {
            let name = SegmentName::from_bytes(entry.file_name().as_encoded_bytes()).ok()?;
            let (of, seq) = name.overflow_parts()?;
            (of == *ring).then_some((seq, name))
        })
}

/// Removes every `<ring>.o*` file (best effort; not a hot path).
pub(crate) fn remove_all(ring: &SegmentName) {
    for (_, name) in overflow_files_of(ring) {
        let path = name.path();
        // SAFETY: NUL-terminated path; unlink does not keep it.
        unsafe { libc::unlink(path.as_ptr()) };
    }
}

/// Removes overflow file `seq` of `ring` by name: one named by a rejected
/// one-shot record (the MPMC consumer that took it is its only reader), or
/// a departed MPMC producer's segment whose last record was released. Best
/// effort; the name parts are random, so a name unlinked twice is just gone.
pub(crate) fn discard(ring: &SegmentName, seq: u64) {
    if let Ok(name) = ring.overflow(seq) {
        let path = name.path();
        // SAFETY: NUL-terminated path; unlink does not keep the pointer.
        unsafe { libc::unlink(path.as_ptr()) };
    }
}

/// Smallest overflow segment the broadcast pool makes (records up to this
/// size share one size class).
pub(crate) const MIN_POOL_SEGMENT: u64 = 64 << 10;

/// About the bytes an overflow segment for `max_len` payload bytes takes
/// in `/dev/shm`: its header page and its payload in whole pages (as
/// [`create`] sizes it).
pub(crate) fn segment_bytes(max_len: u64) -> u64 {
    let page = HEADER_PAGE as u64;
    max_len
        .div_ceil(page)
        .max(1)
        .saturating_add(1)
        .saturating_mul(page)
}

/// The payload capacity of a new pooled segment for `max_len` bytes: the
/// next power of two, at least [`MIN_POOL_SEGMENT`].
pub(crate) fn pool_class(max_len: u64) -> u64 {
    max_len
        .checked_next_power_of_two()
        .unwrap_or(max_len)
        .max(MIN_POOL_SEGMENT)
}

/// A broadcast writer's overflow segments: those named by records readers
/// may still read (*in flight*, with the ring position of the record), and
/// those every reader released (*free*, kept mapped for the next large
/// record). Recycling them is what makes a stream of large records cheap:
/// no file creation, zeroing, mapping or page faults per record, on either
/// side (readers cache their mappings too, see [`OverflowCache`]). Fixed
/// tables, no allocation.
pub(crate) struct OverflowPool {
    in_flight: [Option<(u64, PoolSeg)>; OVERFLOW_SLOTS],
    free: [Option<PoolSeg>; FREE_SLOTS],
    /// The segment of the reservation in progress.
    pending: Option<PoolSeg>,
    /// Counts frees, to reuse the most recently freed segment first.
    frees: u64,
}

/// One pooled overflow segment: its name part and mapping.
pub(crate) struct PoolSeg {
    pub seq: u64,
    pub seg: Segment,
    /// When it was last put on the free list (a pool-local counter).
    freed: u64,
}

impl PoolSeg {
    /// Payload bytes it can carry.
    fn capacity(&self) -> u64 {
        self.seg.header().payload_len
    }
}

/// Overflow records one writer may have in flight.
pub(crate) const OVERFLOW_SLOTS: usize = 8;
/// Released overflow segments a writer keeps for reuse: as many as it can
/// have in flight, so a writer running ahead of its readers and then
/// catching its breath keeps its whole working set.
pub(crate) const FREE_SLOTS: usize = OVERFLOW_SLOTS;
/// Bytes of free overflow segments a writer keeps beyond the first.
pub(crate) const FREE_BYTES: u64 = 64 << 20;

impl OverflowPool {
    pub(crate) fn new() -> Self {
        OverflowPool {
            in_flight: std::array::from_fn(|_| None),
            free: std::array::from_fn(|_| None),
            pending: None,
            frees: 0,
        }
    }

    /// Moves every in-flight segment whose record is below `released` to
    /// the free list (dropping, that is unlinking, the smallest free one if
    /// the list is full).
    pub(crate) fn reclaim(&mut self, released: u64) {
        self.reclaim_where(|pos| pos < released);
    }

    /// Moves every in-flight segment whose record at `pos` satisfies
    /// `released(pos)` to the free list.
    pub(crate) fn reclaim_where(&mut self, released: impl Fn(u64) -> bool) {
        for i in 0..self.in_flight.len() {
            if matches!(&self.in_flight[i], Some((pos, _)) if released(*pos)) {
                if let Some((_, ps)) = self.in_flight[i].take() {
                    self.put_free(ps);
                }
            }
        }
    }

    fn put_free(&mut self, mut ps: PoolSeg) {
        self.frees += 1;
        ps.freed = self.frees;
        let kept: u64 = self.free.iter().flatten().map(PoolSeg::capacity).sum();
        if kept > 0 && kept + ps.capacity() > FREE_BYTES {
            return; // dropped: unlinked and unmapped
        }
        if let Some(slot) = self.free.iter_mut().find(|f| f.is_none()) {
            *slot = Some(ps);
            return;
        }
        // Full: keep the larger segments (they serve every smaller record).
        let smallest = self
            .free
            .iter_mut()
            .min_by_key(|f| f.as_ref().map_or(0, PoolSeg::capacity));
        if let Some(slot) = smallest {
            if slot.as_ref().is_some_and(|f| f.capacity() < ps.capacity()) {
                *slot = Some(ps);
            }
        }
    }

    /// The position of the oldest in-flight record, if the table is full.
    pub(crate) fn oldest_if_full(&self) -> Option<u64> {
        if self.in_flight.iter().any(Option::is_none) {
            return None;
        }
        self.in_flight.iter().flatten().map(|(p, _)| *p).min()
    }

    /// The position of the newest in-flight record, if any.
    pub(crate) fn newest(&self) -> Option<u64> {
        self.in_flight.iter().flatten().map(|(p, _)| *p).max()
    }

    /// Makes a segment of at least `max_len` payload bytes the pending one
    /// (the smallest free one that fits, or a new one of the next power of
    /// two) and returns its payload pointer and name part.
    pub(crate) fn take(
        &mut self,
        ring: &SegmentName,
        max_len: u64,
        format: [u8; FORMAT_TAG_LEN],
    ) -> Result<(*mut u8, u64)> {
        let fit = self
            .free
            .iter_mut()
            .filter(|f| f.as_ref().is_some_and(|f| f.capacity() >= max_len))
            // The smallest that fits, and of those the most recently freed:
            // its pages are the likeliest to be in the caches still.
            .min_by_key(|f| {
                f.as_ref()
                    .map_or((u64::MAX, 0), |f| (f.capacity(), u64::MAX - f.freed))
            })
            .and_then(Option::take);
        let ps = match fit {
            Some(ps) => ps,
            None => {
                let class = pool_class(max_len);
                let seq = random_u64()?;
                PoolSeg {
                    seq,
                    seg: create(ring, seq, class, format)?,
                    freed: 0,
                }
            }
        };
        let out = (ps.seg.data_ptr(), ps.seq);
        self.pending = Some(ps);
        Ok(out)
    }

    /// The pending segment's record was committed at ring position `pos`;
    /// the caller made room (`oldest_if_full` was `None`).
    pub(crate) fn commit_pending(&mut self, pos: u64) {
        if let Some(ps) = self.pending.take() {
            if let Some(e) = self.in_flight.iter_mut().find(|e| e.is_none()) {
                *e = Some((pos, ps));
            }
        }
    }

    /// The pending reservation was dropped: its segment is free again.
    pub(crate) fn abandon_pending(&mut self) {
        if let Some(ps) = self.pending.take() {
            self.put_free(ps);
        }
    }

    /// Whether records readers have not released yet name segments.
    pub(crate) fn has_in_flight(&self) -> bool {
        self.in_flight.iter().any(Option::is_some)
    }

    /// When an MPMC producer leaves: unlinks the free segments and the
    /// pending one, drops the in-flight ones' mappings and leases (their
    /// files stay for the records naming them) and returns those records'
    /// ring positions and segments' name parts, so the caller can remove
    /// the files of records released meanwhile.
    pub(crate) fn leave(&mut self) -> [Option<(u64, u64)>; OVERFLOW_SLOTS] {
        self.pending = None;
        for f in self.free.iter_mut() {
            *f = None;
        }
        std::array::from_fn(|i| {
            self.in_flight[i].take().map(|(pos, mut ps)| {
                ps.seg.disown();
                (pos, ps.seq)
            })
        })
    }

    /// On close: unlinks the free segments now, and leaves the files of
    /// records readers may still read on disk (they are removed by the last
    /// participant to leave, or by `cleanup_stale`).
    pub(crate) fn close(&mut self) {
        self.pending = None;
        for f in self.free.iter_mut() {
            *f = None;
        }
        for (_, ps) in self.in_flight.iter_mut().flatten() {
            ps.seg.disown();
        }
    }
}

/// A reader's cache of overflow mappings, keyed by name part: a record in a
/// segment it has seen before costs no open, validation, mapping or page
/// faults. Entries whose writer dropped them (their owner lease is free) go
/// first when room is needed.
pub(crate) struct OverflowCache {
    /// (name part, mapping, last use, records held in it: a pinned entry
    /// is never dropped, so a held record's bytes stay mapped).
    entries: [Option<(u64, Segment, u64, u32)>; CACHE_SLOTS],
    tick: u64,
}

/// Overflow mappings one reader keeps: as many as a writer can have at once
/// (in flight and free), so a steady stream never maps a segment twice.
/// A mapping costs address space and page-table entries only: the pages
/// are the writer's, shared.
pub(crate) const CACHE_SLOTS: usize = OVERFLOW_SLOTS + FREE_SLOTS;

// Records a broadcast reader holds pin their mappings; they are in flight
// for the writer, so at most OVERFLOW_SLOTS distinct segments are pinned:
// a free cache slot always remains.
const _: () = assert!(CACHE_SLOTS > OVERFLOW_SLOTS);

impl OverflowCache {
    pub(crate) fn new() -> Self {
        OverflowCache {
            entries: std::array::from_fn(|_| None),
            tick: 0,
        }
    }

    /// The payload pointer and length of the record whose descriptor is at
    /// `payload` (`len_in_ring` bytes, both from a committed ring record).
    pub(crate) fn open(
        &mut self,
        ring: &SegmentName,
        payload: *const u8,
        len_in_ring: u64,
    ) -> Result<(*const u8, usize)> {
        let d = read_desc(ring, payload, len_in_ring)?;
        self.open_desc(ring, &d)
    }

    /// [`open`](Self::open), pinning the mapping until [`unpin`]
    /// (Self::unpin) with the returned name part: for a record held past
    /// later opens.
    pub(crate) fn open_pinned(
        &mut self,
        ring: &SegmentName,
        payload: *const u8,
        len_in_ring: u64,
    ) -> Result<(*const u8, usize, u64)> {
        let d = read_desc(ring, payload, len_in_ring)?;
        let (ptr, len) = self.open_desc(ring, &d)?;
        for e in self.entries.iter_mut().flatten() {
            if e.0 == d.seq {
                e.3 += 1;
            }
        }
        Ok((ptr, len, d.seq))
    }

    /// Undoes one [`open_pinned`](Self::open_pinned) of segment `seq`.
    pub(crate) fn unpin(&mut self, seq: u64) {
        for e in self.entries.iter_mut().flatten() {
            if e.0 == seq {
                e.3 = e.3.saturating_sub(1);
            }
        }
    }

    /// [`open`](Self::open) for a descriptor already copied out.
    pub(crate) fn open_desc(
        &mut self,
        ring: &SegmentName,
        d: &OverflowDesc,
    ) -> Result<(*const u8, usize)> {
        let d = *d;
        self.tick += 1;
        let tick = self.tick;
        if let Some((_, seg, used, _)) = self.entries.iter_mut().flatten().find(|e| e.0 == d.seq) {
            *used = tick;
            return check_len(seg, &d).map(|()| (seg.data_ptr() as *const u8, d.len as usize));
        }
        // Drop mappings of segments the writer retired, then the least
        // recently used one if still full; never one a held record pins.
        for e in self.entries.iter_mut() {
            if matches!(e, Some((_, s, _, 0)) if !lease::held_by_other(s.fd(), lease::OWNER, 1)) {
                *e = None;
            }
        }
        let slot = match self.entries.iter().position(Option::is_none) {
            Some(i) => i,
            None => self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| matches!(e, Some((_, _, _, 0))))
                .min_by_key(|(_, e)| e.as_ref().map_or(0, |e| e.2))
                .map(|(i, _)| i)
                .ok_or(Error::TooLarge {
                    what: "overflow segments pinned by held records",
                    got: CACHE_SLOTS as u64 + 1,
                    limit: CACHE_SLOTS as u64,
                })?,
        };
        let seg = open(ring, &d)?;
        let ptr = seg.data_ptr() as *const u8;
        self.entries[slot] = Some((d.seq, seg, tick, 0));
        Ok((ptr, d.len as usize))
    }
}

impl OverflowCache {
    /// Whether the writer that pooled segment `seq` is gone (its lease on
    /// the segment is free): then nobody will reuse it, and no record
    /// committed after the answer can name it (the caller orders its later
    /// loads after the answer with a fence: the kernel may give it without
    /// taking its lock). Asked *after* releasing a record, a yes does not mean
    /// the released record was the segment's last: the writer may have
    /// reused the segment for a newer record in between and then left.
    pub(crate) fn writer_gone(&self, seq: u64) -> bool {
        self.entries
            .iter()
            .flatten()
            .any(|(s, seg, _, _)| *s == seq && !lease::held_by_other(seg.fd(), lease::OWNER, 1))
    }

    /// Forgets and unlinks segment `seq` (its writer is gone and no
    /// unreleased record names it).
    pub(crate) fn remove(&mut self, seq: u64) {
        for e in self.entries.iter_mut() {
            if matches!(e, Some((s, _, _, 0)) if *s == seq) {
                if let Some((_, seg, _, _)) = e.take() {
                    let _ = seg.unlink();
                }
            }
        }
    }
}

fn check_len(seg: &Segment, d: &OverflowDesc) -> Result<()> {
    if d.len > seg.header().payload_len {
        return Err(Error::corrupt(
            *seg.name(),
            "overflow descriptor length",
            d.len,
            "at most the overflow segment's payload length",
        ));
    }
    Ok(())
}
