//! What the bytes of a segment mean: the header page, the control lines, the
//! participant slots and the record header, plus the ABI fingerprint that
//! makes two builds with different layouts refuse each other.
//!
//! Nothing here is a pointer: only offsets, sizes and 64-bit sequences.
//! Every shared structure is `repr(C)` with explicit 128-byte padding.

use crate::pad::{CachePadded, CACHE_PAD};
use crate::sync::{AtomicU32, AtomicU64};
use crate::wait::EventCount;

/// First eight bytes of every segment: `b"SHOALSEG"` little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHOALSEG");
/// Layout version; bumped on any incompatible change of this module or
/// of what records mean (6: an MPMC overflow descriptor's record is as
/// long as the ring room it holds, 16 bytes or more).
pub const LAYOUT_VERSION: u32 = 6;
/// Size of the header page; control lines start here.
pub const HEADER_PAGE: usize = 4096;
/// Records start on, and are padded to, this many bytes.
pub const RECORD_ALIGN: usize = 64;
/// Bytes of the record header that precedes every payload.
/// (A literal, not `size_of`: under loom the atomics are bigger; the
/// constant is checked against the real struct below.)
pub const RECORD_HEADER: usize = 16;
/// Length of the payload-format tag in the header.
pub const FORMAT_TAG_LEN: usize = 32;
/// Upper bound on participant slots of one ring.
pub const MAX_SLOTS: u32 = 1024;
/// Smallest data area of a ring.
pub const MIN_CAPACITY: u64 = 4096;
/// Largest data area of a ring (lengths in record headers are 32-bit).
pub const MAX_CAPACITY: u64 = 1 << 31;

/// Segment states (the `state` word, written last by the creator).
pub(crate) const STATE_INITIALIZING: u32 = 0;
pub(crate) const STATE_READY: u32 = 0x5245_4459; // "READ" "Y"
pub(crate) const STATE_POISONED: u32 = 0xDEAD_0001;

/// What a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SegmentKind {
    /// A broadcast ring: one writer, many readers.
    Broadcast = 1,
    /// An MPMC ring: many producers, many consumers.
    Mpmc = 2,
    /// One oversized record of a ring.
    Overflow = 3,
    /// A plain shared region (see `SharedRegion`).
    Region = 4,
}

impl SegmentKind {
    pub(crate) fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Broadcast),
            2 => Some(Self::Mpmc),
            3 => Some(Self::Overflow),
            4 => Some(Self::Region),
            _ => None,
        }
    }
    /// A human name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Broadcast => "broadcast ring",
            Self::Mpmc => "MPMC ring",
            Self::Overflow => "overflow record",
            Self::Region => "shared region",
        }
    }
}

/// The header page's leading structure.
///
/// Written once by the creator before `state` turns Ready (Release); an
/// attacher copies it out once after an Acquire of `state` and validates the
/// copy, never the live bytes (no double fetch).
#[repr(C)]
pub(crate) struct SegmentHeader {
    pub magic: u64,
    pub layout_version: u32,
    pub state: AtomicU32,
    pub abi_fingerprint: u64,
    pub kind: u32,
    pub flags: u32,
    pub total_size: u64,
    pub control_offset: u64,
    pub control_size: u64,
    pub data_offset: u64,
    pub data_capacity: u64,
    pub slots: u32,
    pub producer_slots: u32,
    pub creator_uid: u32,
    pub creator_pid: u32,
    pub creator_start_time: u64,
    /// For overflow segments: the payload length.
    pub payload_len: u64,
    pub payload_format: [u8; FORMAT_TAG_LEN],
}

/// A plain copy of a segment's header page, taken once and then validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderCopy {
    /// Magic number.
    pub magic: u64,
    /// Layout version.
    pub layout_version: u32,
    /// Initialization state word.
    pub state: u32,
    /// ABI fingerprint of the creating build.
    pub abi_fingerprint: u64,
    /// Segment kind (raw).
    pub kind: u32,
    /// Reserved flags.
    pub flags: u32,
    /// Whole file size.
    pub total_size: u64,
    /// Offset of the control lines.
    pub control_offset: u64,
    /// Size of the control lines and slots.
    pub control_size: u64,
    /// Offset of the data area.
    pub data_offset: u64,
    /// Bytes in the data area.
    pub data_capacity: u64,
    /// Reader or consumer slots.
    pub slots: u32,
    /// Producer slots (MPMC).
    pub producer_slots: u32,
    /// Creator's uid.
    pub creator_uid: u32,
    /// Creator's pid.
    pub creator_pid: u32,
    /// Creator's start time.
    pub creator_start_time: u64,
    /// Payload length (overflow segments).
    pub payload_len: u64,
    /// Payload-format tag.
    pub payload_format: [u8; FORMAT_TAG_LEN],
}

/// Every record starts with this, on a 64-byte boundary.
///
/// `commit` holds the record's absolute ring position ORed with a state in
/// its low bits (positions are 64-byte aligned, so the low six bits are
/// free). A reader polls this one word: data and publication arrive in one
/// cache-line transfer. A stale word from an earlier lap carries another
/// position, so it never matches.
#[derive(Debug)]
#[repr(C, align(16))]
pub(crate) struct RecordHeader {
    pub commit: AtomicU64,
    /// Payload length in bytes (pads: bytes after the header to the end of the pad).
    pub len: AtomicU32,
    /// MPMC: owner slot (low 16 bits) and the slot's generation (high 16 bits).
    pub aux: AtomicU32,
}

/// Record states, in the low bits of `commit`.
pub(crate) mod rec {
    /// Claimed by a producer, not yet committed (MPMC).
    pub const RESERVED: u64 = 1;
    /// Committed data.
    pub const DATA: u64 = 2;
    /// Padding to the end of the ring; skip it.
    pub const PAD: u64 = 3;
    /// Committed, and the payload is an overflow descriptor.
    pub const OVERFLOW: u64 = 4;
    /// Left by a dead producer; skip it.
    pub const TOMBSTONE: u64 = 5;
    /// Consumed and released (MPMC).
    pub const RELEASED: u64 = 6;
    /// Mask of the state bits.
    pub const MASK: u64 = 63;

    /// The commit word for `state` at absolute position `pos`.
    #[inline]
    pub const fn word(pos: u64, state: u64) -> u64 {
        pos | state
    }
}

/// Positions stay below this (2^62 bytes: centuries at memory bandwidth).
pub(crate) const MAX_POSITION: u64 = 1 << 62;

/// Whether a position read from shared memory is one a ring can hold:
/// 64-byte aligned and far from overflowing when sizes are added to it.
#[inline]
pub(crate) fn valid_position(p: u64) -> bool {
    p.is_multiple_of(RECORD_ALIGN as u64) && p < MAX_POSITION
}

/// The payload-format tag for `tag` (cut to [`FORMAT_TAG_LEN`] bytes).
pub(crate) fn format_tag(tag: &[u8]) -> [u8; FORMAT_TAG_LEN] {
    let mut t = [0u8; FORMAT_TAG_LEN];
    let n = tag.len().min(FORMAT_TAG_LEN);
    t[..n].copy_from_slice(&tag[..n]);
    t
}

/// A payload-format tag as text (up to its first NUL).
pub(crate) fn tag_string(t: &[u8; FORMAT_TAG_LEN]) -> String {
    let end = t.iter().position(|&b| b == 0).unwrap_or(t.len());
    String::from_utf8_lossy(&t[..end]).into_owned()
}

/// Bytes a record with a `len`-byte payload occupies.
#[inline]
pub(crate) const fn record_size(len: u64) -> u64 {
    (RECORD_HEADER as u64 + len + RECORD_ALIGN as u64 - 1) & !(RECORD_ALIGN as u64 - 1)
}

/// Participant slot states (low byte of [`Slot::own`]).
pub(crate) mod slot {
    /// Unused.
    pub const FREE: u32 = 0;
    /// Being filled in by a joining process (which holds the slot's lease).
    pub const CLAIMED: u32 = 1;
    /// Broadcast: joined, waiting for the writer to set its cursor.
    pub const PENDING: u32 = 2;
    /// Taking part.
    pub const ACTIVE: u32 = 3;
}

/// The ownership word of a slot: generation (high 32 bits) and state (low
/// byte). Every claim moves the generation on, by one CAS on the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Own {
    pub gen: u32,
    pub state: u32,
}

impl Own {
    #[inline]
    pub const fn pack(self) -> u64 {
        ((self.gen as u64) << 32) | (self.state as u64 & 0xff)
    }
    #[inline]
    pub const fn unpack(w: u64) -> Own {
        Own {
            gen: (w >> 32) as u32,
            state: (w & 0xff) as u32,
        }
    }
}

/// Bits of a slot's generation carried in the low bits of its cursor or
/// intent word (positions are 64-byte aligned, so six bits are free): an
/// owner's compare-and-swap on that word fails once another generation owns
/// the slot.
pub(crate) const GEN_TAG_MASK: u64 = RECORD_ALIGN as u64 - 1;

/// The cursor/intent word for position `pos` written by generation `gen`.
#[inline]
pub(crate) const fn tagged(pos: u64, gen: u32) -> u64 {
    pos | (gen as u64 & GEN_TAG_MASK)
}

/// The position part of a tagged cursor/intent word.
#[inline]
pub(crate) const fn untag(w: u64) -> u64 {
    w & !GEN_TAG_MASK
}

/// The position part of an MPMC consumer's intent word when it holds nothing.
pub(crate) const NO_INTENT: u64 = !GEN_TAG_MASK;

/// One participant (reader, consumer or producer) on its own line pair.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Slot {
    /// Generation and state, see [`Own`].
    pub own: AtomicU64,
    /// The owner's pid, for logs only (in another pid namespace it names
    /// another process, or none): liveness is the slot's lease.
    pub pid: AtomicU32,
    /// A label its owner chose, plus one (0: none): a broadcast reader's
    /// index in its channel, for logs and for naming who is missing; an
    /// MPMC producer's the pid it puts for (a proxy's, see
    /// [`MpmcProducer::act_for`](crate::MpmcProducer::act_for)), named
    /// when it leaves owing.
    pub tag: AtomicU32,
    /// The owner's start time, for logs only.
    pub start_time: AtomicU64,
    /// Broadcast: released-up-to position; MPMC consumer: the record it
    /// claims or holds (`NO_INTENT` when none). Either way tagged with the
    /// low bits of the owner's generation (see [`tagged`]).
    pub cursor: AtomicU64,
}

impl Slot {
    #[cfg_attr(not(loom), allow(dead_code))]
    pub(crate) fn new() -> Self {
        Slot {
            own: AtomicU64::new(0),
            pid: AtomicU32::new(0),
            tag: AtomicU32::new(0),
            start_time: AtomicU64::new(0),
            cursor: AtomicU64::new(0),
        }
    }
}

/// Who the writer is: written once at creation; for logs and error
/// messages only (the writer's liveness is its lease).
#[derive(Debug)]
#[repr(C)]
pub(crate) struct WriterLine {
    pub pid: AtomicU32,
    pub _pad: AtomicU32,
    pub start_time: AtomicU64,
}

/// Rarely written words that readers poll while idle.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct StatusLine {
    /// Nonzero once the writer closed the ring.
    pub closed: AtomicU32,
    /// Bumped by each joining reader; the writer then activates pending slots.
    pub joins: AtomicU32,
    /// Nonzero while the writer waits for space: readers then publish
    /// their cursors at once instead of every eighth of the ring.
    pub want_space: AtomicU32,
}

/// Control lines of a broadcast ring, followed by `slots` reader slots.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct BroadcastControl {
    pub writer: CachePadded<WriterLine>,
    pub status: CachePadded<StatusLine>,
    /// Readers sleep here waiting for data.
    pub data_ec: CachePadded<EventCount>,
    /// The writer sleeps here waiting for readers to release space.
    pub space_ec: CachePadded<EventCount>,
}

impl BroadcastControl {
    #[cfg_attr(not(loom), allow(dead_code))]
    pub(crate) fn new() -> Self {
        BroadcastControl {
            writer: CachePadded::new(WriterLine {
                pid: AtomicU32::new(0),
                _pad: AtomicU32::new(0),
                start_time: AtomicU64::new(0),
            }),
            status: CachePadded::new(StatusLine {
                closed: AtomicU32::new(0),
                joins: AtomicU32::new(0),
                want_space: AtomicU32::new(0),
            }),
            data_ec: CachePadded::new(EventCount::new()),
            space_ec: CachePadded::new(EventCount::new()),
        }
    }
}

/// The MPMC reservation lock and the positions it guards.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct MpmcLockLine {
    /// 0 when free; else the holder's producer slot and generation (see
    /// `mpmc_core::lock_word`) and a waiters bit.
    pub word: AtomicU32,
    pub _pad: AtomicU32,
    /// Next reservation position.
    pub tail: AtomicU64,
    /// Everything below this position is free for producers.
    pub reclaim: AtomicU64,
}

/// Control lines of an MPMC ring, followed by consumer then producer slots.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct MpmcControl {
    pub lock: CachePadded<MpmcLockLine>,
    /// Next record to claim; consumers CAS it forward.
    pub head: CachePadded<AtomicU64>,
    /// Consumers sleep here waiting for data.
    pub data_ec: CachePadded<EventCount>,
    /// Producers sleep here waiting for space.
    pub space_ec: CachePadded<EventCount>,
    /// Nonzero once closed: consumers drain, then get `Closed` (or, when
    /// the work accounting closed it, how the work ended: see [`WorkLine`]).
    pub closed: CachePadded<AtomicU32>,
    /// Work accounting: claims, their closing, what dead producers owed.
    pub work: CachePadded<WorkLine>,
}

/// The MPMC ring's work accounting (see `mpmc_core`, "Work accounting").
/// What each producer owes (claimed and not yet committed) sits in its
/// slot's cursor word, as [`owed_word`].
#[derive(Debug)]
#[repr(C)]
pub(crate) struct WorkLine {
    /// Nonzero once no more may be claimed.
    pub claims_closed: AtomicU32,
    /// How the work ended, once it did: [`work::COMPLETE`] or
    /// [`work::INCOMPLETE`] (0 while it has not).
    pub outcome: AtomicU32,
    /// Messages claimed by producers that died or left before committing
    /// them.
    pub lost: AtomicU64,
    /// The pid of the last such producer (for the error only).
    pub lost_pid: AtomicU32,
    pub _pad: AtomicU32,
}

/// Values of [`WorkLine::outcome`].
pub(crate) mod work {
    /// Every claimed message was committed (consumers drain, then finish).
    pub const COMPLETE: u32 = 1;
    /// Some claimed messages never will be: their producer is gone.
    pub const INCOMPLETE: u32 = 2;
}

/// Bits the owed count is shifted by in a producer's cursor word (below
/// them, the generation tag).
const OWED_SHIFT: u32 = GEN_TAG_MASK.count_ones();

/// Set in every producer's cursor word: no record position (all below
/// 2^62) looks like it, so a scan for the consumer holding a record can
/// never take a producer for it.
const OWED_MARK: u64 = 1 << 62;

/// Most messages one producer may owe at once.
pub(crate) const MAX_OWED: u64 = (1 << 40) - 1;

/// A producer's cursor word: it owes `owed` claimed messages, written by
/// generation `gen`.
#[inline]
pub(crate) const fn owed_word(owed: u64, gen: u32) -> u64 {
    tagged((owed << OWED_SHIFT) | OWED_MARK, gen)
}

/// The owed count of a producer's cursor word (0 for a slot never
/// claimed, whose word is 0).
#[inline]
pub(crate) const fn owed_of(w: u64) -> u64 {
    (untag(w) & !OWED_MARK) >> OWED_SHIFT
}

impl MpmcControl {
    #[cfg_attr(not(loom), allow(dead_code))]
    pub(crate) fn new() -> Self {
        MpmcControl {
            lock: CachePadded::new(MpmcLockLine {
                word: AtomicU32::new(0),
                _pad: AtomicU32::new(0),
                tail: AtomicU64::new(0),
                reclaim: AtomicU64::new(0),
            }),
            head: CachePadded::new(AtomicU64::new(0)),
            data_ec: CachePadded::new(EventCount::new()),
            space_ec: CachePadded::new(EventCount::new()),
            closed: CachePadded::new(AtomicU32::new(0)),
            work: CachePadded::new(WorkLine {
                claims_closed: AtomicU32::new(0),
                outcome: AtomicU32::new(0),
                lost: AtomicU64::new(0),
                lost_pid: AtomicU32::new(0),
                _pad: AtomicU32::new(0),
            }),
        }
    }
}

const fn fnv1a(mut h: u64, v: u64) -> u64 {
    let bytes = v.to_le_bytes();
    let mut i = 0;
    while i < 8 {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

/// Hash of everything two builds must agree on to share a segment: sizes and
/// alignments of every shared structure, the padding unit, record alignment,
/// endianness, pointer width and the layout version.
pub const ABI_FINGERPRINT: u64 = {
    use std::mem::{align_of, size_of};
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    h = fnv1a(h, LAYOUT_VERSION as u64);
    h = fnv1a(h, size_of::<SegmentHeader>() as u64);
    h = fnv1a(h, align_of::<SegmentHeader>() as u64);
    h = fnv1a(h, size_of::<RecordHeader>() as u64);
    h = fnv1a(h, align_of::<RecordHeader>() as u64);
    h = fnv1a(h, size_of::<CachePadded<Slot>>() as u64);
    h = fnv1a(h, size_of::<BroadcastControl>() as u64);
    h = fnv1a(h, size_of::<MpmcControl>() as u64);
    h = fnv1a(h, CACHE_PAD as u64);
    h = fnv1a(h, RECORD_ALIGN as u64);
    h = fnv1a(h, HEADER_PAGE as u64);
    h = fnv1a(h, cfg!(target_endian = "little") as u64);
    h = fnv1a(h, size_of::<usize>() as u64);
    h
};

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<SegmentHeader>() <= HEADER_PAGE);
    assert!(std::mem::size_of::<RecordHeader>() == RECORD_HEADER);
    assert!(std::mem::size_of::<CachePadded<Slot>>() == CACHE_PAD);
    assert!(std::mem::size_of::<BroadcastControl>().is_multiple_of(CACHE_PAD));
    assert!(std::mem::size_of::<MpmcControl>().is_multiple_of(CACHE_PAD));
};

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn record_sizes_round_to_lines() {
        assert_eq!(record_size(0), 64);
        assert_eq!(record_size(48), 64);
        assert_eq!(record_size(49), 128);
        assert_eq!(record_size(64), 128);
    }

    #[test]
    fn commit_words_carry_position_and_state() {
        let w = rec::word(4096, rec::DATA);
        assert_eq!(w & rec::MASK, rec::DATA);
        assert_eq!(w & !rec::MASK, 4096);
        assert_ne!(rec::word(0, rec::DATA), 0);
    }

    #[test]
    fn owed_words_keep_count_and_generation_apart() {
        let w = owed_word(MAX_OWED, 0x2b);
        assert_eq!(owed_of(w), MAX_OWED);
        assert_eq!(w & GEN_TAG_MASK, 0x2b);
        assert_eq!(owed_of(owed_word(0, 7)), 0);
        // Never a consumer's "holds nothing" word, nor a record position.
        assert_ne!(untag(w), NO_INTENT);
        assert!(!valid_position(untag(owed_word(0, 0))));
        assert!(!valid_position(untag(owed_word(1, 0))));
        assert_eq!(owed_of(0), 0);
    }
}

#[cfg(all(test, not(loom)))]
mod offsets {
    use super::*;

    /// tests/hostile.rs forges these words by byte offset: keep them in step.
    #[test]
    fn offsets_the_hostile_tests_forge_at() {
        assert_eq!(std::mem::size_of::<BroadcastControl>(), 1024);
        assert_eq!(std::mem::offset_of!(MpmcLockLine, tail), 8);
        assert_eq!(std::mem::offset_of!(MpmcLockLine, reclaim), 16);
        assert_eq!(std::mem::offset_of!(MpmcControl, head), 128);
        assert_eq!(std::mem::offset_of!(Slot, own), 0);
        assert_eq!(std::mem::offset_of!(Slot, cursor), 24);
    }
}
