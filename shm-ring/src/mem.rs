//! Where a ring's words live: in a mapped segment, or (for loom and unit
//! tests) in ordinary heap memory with the same structure.
//!
//! Ring code is written once against [`RingMem`]; loom checks it on
//! [`HeapMem`], production runs it on [`ShmMem`].

use crate::error::{Result, SegmentLabel};
use crate::layout::{RecordHeader, Slot, RECORD_ALIGN};
use crate::pad::CachePadded;
#[cfg(not(loom))]
use crate::segment::Segment;

/// Access to one ring's control lines, slots and data area.
pub(crate) trait RingMem {
    /// The control-line structure (`BroadcastControl` or `MpmcControl`).
    type Control;
    fn ctrl(&self) -> &Self::Control;
    /// Bytes in the data area (a power of two).
    fn capacity(&self) -> u64;
    /// Number of slots.
    fn nslots(&self) -> usize;
    /// Slot `i` (`i < nslots`).
    fn slot(&self, i: usize) -> &Slot;
    /// The header of the record at absolute position `pos` (64-byte aligned).
    fn header(&self, pos: u64) -> &RecordHeader;
    /// Pointer to the byte at absolute position `pos`; valid up to the end of
    /// the data area.
    fn data(&self, pos: u64) -> *mut u8;
    /// The segment's name, for error messages.
    fn label(&self) -> SegmentLabel;
    /// Takes lease `byte` (see [`crate::lease`]) for this endpoint;
    /// `Ok(false)` if another endpoint holds it.
    fn take_lease(&self, byte: u64) -> Result<bool>;
    /// Gives up lease `byte` of this endpoint.
    fn drop_lease(&self, byte: u64);
    /// Whether another endpoint holds lease `byte`: whether the participant
    /// it stands for is alive.
    fn lease_held(&self, byte: u64) -> bool;
}

/// A ring inside a mapped [`Segment`].
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct ShmMem<C> {
    pub(crate) seg: Segment,
    ctrl: *const C,
    slots: *const CachePadded<Slot>,
    nslots: usize,
    data: *mut u8,
    mask: u64,
}

// SAFETY: the pointers point into the mapping `seg` keeps alive as long as
// this value lives, and moving them between threads changes nothing about
// what they point to. Control words are only accessed through atomics.
// Payload bytes are only accessed through raw pointers that the ring
// protocols hand to one party at a time; that exclusivity holds against
// *correct* peers only (a malicious same-uid process can write anything).
#[cfg(not(loom))]
unsafe impl<C> Send for ShmMem<C> {}
// SAFETY: `&ShmMem` exposes only atomics (`ctrl`, `slot`, `header`) and raw
// pointers; the same reasoning as for `Send` applies.
#[cfg(not(loom))]
unsafe impl<C> Sync for ShmMem<C> {}

#[cfg(not(loom))]
impl<C> ShmMem<C> {
    /// Views a validated ring segment. `nslots` is the total slot count after
    /// the control structure.
    pub(crate) fn new(seg: Segment, nslots: usize) -> Self {
        let ctrl = seg.control_ptr() as *const C;
        // SAFETY: validation checked control_size == size_of::<C>() + slots,
        // so the slot array follows the control structure inside the mapping.
        let slots =
            unsafe { seg.control_ptr().add(std::mem::size_of::<C>()) } as *const CachePadded<Slot>;
        let data = seg.data_ptr();
        let mask = seg.header().data_capacity - 1;
        ShmMem {
            seg,
            ctrl,
            slots,
            nslots,
            data,
            mask,
        }
    }
}

#[cfg(not(loom))]
impl<C> RingMem for ShmMem<C> {
    type Control = C;
    #[inline]
    fn ctrl(&self) -> &C {
        // SAFETY: `ctrl` points at a C inside the live mapping, 128-aligned
        // (page + multiples of 128); zeroed memory is a valid C (atomics).
        unsafe { &*self.ctrl }
    }
    #[inline]
    fn capacity(&self) -> u64 {
        self.mask + 1
    }
    #[inline]
    fn nslots(&self) -> usize {
        self.nslots
    }
    #[inline]
    fn slot(&self, i: usize) -> &Slot {
        assert!(i < self.nslots);
        // SAFETY: i < nslots, and the slot array lies inside the mapping.
        unsafe { &*self.slots.add(i) }
    }
    #[inline]
    fn header(&self, pos: u64) -> &RecordHeader {
        let off = (pos & self.mask) as usize & !(RECORD_ALIGN - 1);
        // SAFETY: off < capacity and 64-aligned, so 16 header bytes fit; the
        // data area is page aligned. Any bit pattern is a valid header.
        unsafe { &*(self.data.add(off) as *const RecordHeader) }
    }
    #[inline]
    fn data(&self, pos: u64) -> *mut u8 {
        // SAFETY: the masked offset is inside the data area.
        unsafe { self.data.add((pos & self.mask) as usize) }
    }
    fn label(&self) -> SegmentLabel {
        SegmentLabel(Some(*self.seg.name()))
    }
    fn take_lease(&self, byte: u64) -> Result<bool> {
        crate::lease::try_take(self.seg.fd(), byte)
    }
    fn drop_lease(&self, byte: u64) {
        crate::lease::give_up(self.seg.fd(), byte)
    }
    fn lease_held(&self, byte: u64) -> bool {
        crate::lease::held_by_other(self.seg.fd(), byte, 1)
    }
}

/// A ring in heap memory: headers and payload bytes kept apart, so loom
/// tracks the headers as atomics. Used by loom models and unit tests.
#[allow(dead_code)]
pub(crate) struct HeapMem<C> {
    ctrl: Box<C>,
    slots: Box<[CachePadded<Slot>]>,
    headers: Box<[RecordHeader]>,
    bytes: Box<[std::cell::UnsafeCell<u8>]>,
    mask: u64,
    /// Simulated leases (owner, then one per slot): 1 while held. All
    /// endpoints share one `HeapMem`, so "held by another" is just "held".
    leases: Box<[crate::sync::AtomicU32]>,
}

// SAFETY: payload bytes are only written by the party the ring protocol
// gives them to, exactly as in shared memory.
unsafe impl<C: Send> Send for HeapMem<C> {}
// SAFETY: as above.
unsafe impl<C: Sync> Sync for HeapMem<C> {}

#[allow(dead_code)]
impl<C> HeapMem<C> {
    pub(crate) fn new(ctrl: C, nslots: usize, capacity: u64) -> Self {
        assert!(capacity.is_power_of_two() && capacity >= RECORD_ALIGN as u64);
        let lines = (capacity / RECORD_ALIGN as u64) as usize;
        HeapMem {
            ctrl: Box::new(ctrl),
            slots: (0..nslots).map(|_| CachePadded::new(Slot::new())).collect(),
            headers: (0..lines)
                .map(|_| RecordHeader {
                    commit: crate::sync::AtomicU64::new(0),
                    len: crate::sync::AtomicU32::new(0),
                    aux: crate::sync::AtomicU32::new(0),
                })
                .collect(),
            bytes: (0..capacity)
                .map(|_| std::cell::UnsafeCell::new(0))
                .collect(),
            mask: capacity - 1,
            leases: (0..=nslots)
                .map(|_| crate::sync::AtomicU32::new(0))
                .collect(),
        }
    }

    /// Simulates the death of the holder of lease `byte`.
    pub(crate) fn kill(&self, byte: u64) {
        if let Some(l) = self.leases.get(byte as usize) {
            l.store(0, crate::sync::Ordering::Release);
        }
    }
}

impl<C> RingMem for HeapMem<C> {
    type Control = C;
    fn ctrl(&self) -> &C {
        &self.ctrl
    }
    fn capacity(&self) -> u64 {
        self.mask + 1
    }
    fn nslots(&self) -> usize {
        self.slots.len()
    }
    fn slot(&self, i: usize) -> &Slot {
        &self.slots[i]
    }
    fn header(&self, pos: u64) -> &RecordHeader {
        &self.headers[((pos & self.mask) / RECORD_ALIGN as u64) as usize]
    }
    fn data(&self, pos: u64) -> *mut u8 {
        self.bytes[(pos & self.mask) as usize].get()
    }
    fn label(&self) -> SegmentLabel {
        SegmentLabel(None)
    }
    fn take_lease(&self, byte: u64) -> Result<bool> {
        let Some(l) = self.leases.get(byte as usize) else {
            return Ok(false);
        };
        Ok(l.compare_exchange(
            0,
            1,
            crate::sync::Ordering::AcqRel,
            crate::sync::Ordering::Relaxed,
        )
        .is_ok())
    }
    fn drop_lease(&self, byte: u64) {
        self.kill(byte)
    }
    fn lease_held(&self, byte: u64) -> bool {
        self.leases
            .get(byte as usize)
            .is_some_and(|l| l.load(crate::sync::Ordering::Acquire) != 0)
    }
}

impl<M: RingMem> RingMem for std::sync::Arc<M> {
    type Control = M::Control;
    fn ctrl(&self) -> &M::Control {
        (**self).ctrl()
    }
    fn capacity(&self) -> u64 {
        (**self).capacity()
    }
    fn nslots(&self) -> usize {
        (**self).nslots()
    }
    fn slot(&self, i: usize) -> &Slot {
        (**self).slot(i)
    }
    fn header(&self, pos: u64) -> &RecordHeader {
        (**self).header(pos)
    }
    fn data(&self, pos: u64) -> *mut u8 {
        (**self).data(pos)
    }
    fn label(&self) -> SegmentLabel {
        (**self).label()
    }
    fn take_lease(&self, byte: u64) -> Result<bool> {
        (**self).take_lease(byte)
    }
    fn drop_lease(&self, byte: u64) {
        (**self).drop_lease(byte)
    }
    fn lease_held(&self, byte: u64) -> bool {
        (**self).lease_held(byte)
    }
}
