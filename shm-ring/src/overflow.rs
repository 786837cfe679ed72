//! Records too large for the ring travel in a dedicated overflow segment
//! whose descriptor travels in the ring: still zero-copy, no socket hop, no
//! size limit but memory.

use crate::error::{Error, Result};
use crate::layout::{SegmentKind, FORMAT_TAG_LEN, HEADER_PAGE};
use crate::name::SegmentName;
use crate::segment::{Segment, SegmentSpec};

/// The ring record that stands for an overflow segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct OverflowDesc {
    /// Sequence number; the segment is `<ring name>.o<seq>`.
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
    if d.len > seg.header().payload_len {
        return Err(Error::Corrupt {
            what: "overflow descriptor length",
        });
    }
    Ok(seg)
}

/// Maps the overflow segment named by a ring record whose payload (at
/// `payload`, `len_in_ring` bytes, both taken from a committed record) is a
/// descriptor. Returns the segment and the payload length it carries.
pub(crate) fn open_record(
    ring: &SegmentName,
    payload: *const u8,
    len_in_ring: u64,
) -> Result<(Segment, usize)> {
    if len_in_ring != DESC_LEN {
        return Err(Error::Corrupt {
            what: "overflow descriptor",
        });
    }
    // SAFETY: the record holds DESC_LEN payload bytes (checked) inside the ring.
    let d = unsafe { OverflowDesc::read(payload) };
    let seg = open(ring, &d)?;
    Ok((seg, d.len as usize))
}

/// Outstanding overflow segments of one writer, with the ring position of
/// the record naming each; a fixed table, no allocation.
pub(crate) struct OverflowTable {
    entries: [Option<(u64, Segment)>; OVERFLOW_SLOTS],
}

/// Overflow records one writer may have in flight.
pub(crate) const OVERFLOW_SLOTS: usize = 16;

impl OverflowTable {
    pub(crate) fn new() -> Self {
        OverflowTable {
            entries: std::array::from_fn(|_| None),
        }
    }

    /// Drops (unlinks and unmaps) every entry whose record is below `released`.
    pub(crate) fn reclaim(&mut self, released: u64) {
        for e in self.entries.iter_mut() {
            if matches!(e, Some((pos, _)) if *pos < released) {
                *e = None;
            }
        }
    }

    /// The position of the oldest entry, if the table is full.
    pub(crate) fn oldest_if_full(&self) -> Option<u64> {
        if self.entries.iter().any(Option::is_none) {
            return None;
        }
        self.entries.iter().flatten().map(|(p, _)| *p).min()
    }

    /// The position of the newest entry, if any.
    pub(crate) fn newest(&self) -> Option<u64> {
        self.entries.iter().flatten().map(|(p, _)| *p).max()
    }

    /// Keeps every outstanding file on disk (forgets ownership).
    pub(crate) fn disown_all(&mut self) {
        for (_, seg) in self.entries.iter_mut().flatten() {
            seg.disown();
        }
    }

    /// Stores `seg` for the record at `pos`; the caller made room.
    pub(crate) fn insert(&mut self, pos: u64, seg: Segment) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.is_none()) {
            *e = Some((pos, seg));
        }
    }
}
