//! The broadcast protocol (one writer, many readers), independent of where
//! its memory lives; loom checks this exact code.
//!
//! # Protocol
//! - Positions are absolute 64-bit byte offsets; a record at `pos` lives at
//!   `pos mod capacity`, starts with a [`RecordHeader`], and occupies
//!   `record_size(len)` bytes. A record that would cross the end of the ring
//!   is preceded by a PAD record filling the tail.
//! - The writer may write a line only when every active reader has released
//!   it: `end + 64 <= min(cursor) + capacity`. The extra line is where the
//!   writer clears the *next* record's commit word before publishing, so a
//!   reader that moves on never reads stale payload bytes as a header.
//! - SYNC W(commit)/R(commit): the writer fills header fields and payload,
//!   then stores `commit = pos | DATA` with Release; a reader Acquire-loads it.
//! - SYNC W(release)/R(release): a reader stores its cursor with Release when
//!   it drops a record; the writer Acquire-loads cursors before reusing lines.
//! - Joining: a reader claims a slot and marks it PENDING; at its next
//!   reservation the writer sets the cursor to its own position and marks the
//!   slot ACTIVE (Release), so a reader never gates lines the writer already
//!   reused.
//! - Liveness: a writer blocked by a dead reader evicts it; readers of a dead
//!   writer get `WriterGone` once they drained what it committed.
//!
//! [`RecordHeader`]: crate::layout::RecordHeader

use crate::error::{Error, Result};
use crate::layout::{rec, record_size, slot, BroadcastControl, RECORD_ALIGN, RECORD_HEADER};
use crate::liveness::ProcessId;
use crate::mem::RingMem;
use crate::peer::{slot_owner, PeerOptions};
use crate::sync::Ordering;
use crate::wait::{block_on, Spinner, Wait};
use std::cell::Cell;

/// A reservation inside the ring (process-local bookkeeping).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resv {
    /// Where the record starts.
    pub start: u64,
    /// Whether a pad must precede it (from the writer's position to `start`).
    pub pad: bool,
    /// The most payload bytes it may hold.
    pub max_len: u64,
}

/// The writer's side.
pub(crate) struct WriterCore<M> {
    pub(crate) mem: M,
    /// Next position to write (everything before it is committed).
    pos: u64,
    /// The writer may use positions below this (cached `min(cursor) + cap`).
    limit: u64,
    joins_seen: u32,
    spinner: Spinner,
    pub(crate) opts: PeerOptions,
}

/// Whether a position read from shared memory is one a ring can hold:
/// 64-byte aligned and far from overflowing when sizes are added to it.
pub(crate) fn valid_position(p: u64) -> bool {
    p % RECORD_ALIGN as u64 == 0 && p < MAX_POSITION
}

/// Positions stay below this (2^62 bytes: centuries at memory bandwidth).
pub(crate) const MAX_POSITION: u64 = 1 << 62;

/// Cursor below which no active reader holds anything, given writer `pos`.
fn scan_min<M: RingMem<Control = BroadcastControl>>(mem: &M, pos: u64) -> u64 {
    let mut min = pos;
    for i in 0..mem.nslots() {
        let s = mem.slot(i);
        if s.state.load(Ordering::Acquire) == slot::ACTIVE {
            // SYNC R(release): pairs with the reader's Release store of its cursor.
            let c = s.cursor.load(Ordering::Acquire);
            min = min.min(c);
        }
    }
    min
}

impl<M: RingMem<Control = BroadcastControl>> WriterCore<M> {
    pub(crate) fn new(mem: M, opts: PeerOptions) -> Self {
        let cap = mem.capacity();
        WriterCore {
            mem,
            pos: 0,
            limit: cap,
            joins_seen: 0,
            spinner: Spinner::new(opts.wait),
            opts,
        }
    }

    /// The largest payload a record in this ring may carry.
    pub(crate) fn max_inline(&self) -> u64 {
        self.mem.capacity() / 2 - RECORD_HEADER as u64
    }

    /// Active readers right now.
    pub(crate) fn active_readers(&self) -> u32 {
        (0..self.mem.nslots())
            .filter(|&i| self.mem.slot(i).state.load(Ordering::Relaxed) == slot::ACTIVE)
            .count() as u32
    }

    /// Activates readers that joined since the last call.
    fn process_joins(&mut self) {
        let j = self.mem.ctrl().status.joins.load(Ordering::Acquire);
        if j == self.joins_seen {
            return;
        }
        self.joins_seen = j;
        activate_pending(&self.mem, self.pos);
    }

    /// Reserves room for a record of up to `max_len` payload bytes
    /// (`max_len <= max_inline()`), waiting for readers to release space.
    pub(crate) fn reserve(&mut self, max_len: u64, wait: &Wait<'_>) -> Result<Resv> {
        debug_assert!(max_len <= self.max_inline());
        let cap = self.mem.capacity();
        let size = record_size(max_len);
        self.process_joins();
        let off = self.pos & (cap - 1);
        let (start, pad) = if off + size > cap {
            (self.pos + (cap - off), true)
        } else {
            (self.pos, false)
        };
        self.wait_until_free(start + size + RECORD_ALIGN as u64, wait)?;
        Ok(Resv {
            start,
            pad,
            max_len,
        })
    }

    /// Blocks until every active reader released everything before
    /// `need - capacity`.
    pub(crate) fn wait_until_free(&mut self, need: u64, wait: &Wait<'_>) -> Result<()> {
        if need <= self.limit {
            return Ok(());
        }
        let cap = self.mem.capacity();
        self.limit = scan_min(&self.mem, self.pos) + cap;
        if need <= self.limit {
            return Ok(());
        }
        let deadline = wait.start();
        let mem = &self.mem;
        let pos = self.pos;
        let limit = &mut self.limit;
        let opts = self.opts;
        let logged = Cell::new(false);
        let floor = need - cap;
        block_on(
            &mut self.spinner,
            &mem.ctrl().space_ec,
            &deadline,
            opts.liveness_interval,
            || {
                *limit = scan_min(mem, pos) + cap;
                Ok((need <= *limit).then_some(()))
            },
            |stalled| {
                evict_blockers(mem, floor, stalled.waited, &opts, &logged);
                Ok(())
            },
        )
    }

    /// Pointer to the payload of `r`.
    pub(crate) fn payload(&self, r: &Resv) -> *mut u8 {
        self.mem.data(r.start + RECORD_HEADER as u64)
    }

    /// Publishes `r` with a `len`-byte payload (`len <= r.max_len`) as `state`
    /// (`DATA` or `OVERFLOW`), and wakes sleeping readers.
    pub(crate) fn commit(&mut self, r: Resv, len: u64, state: u64) {
        debug_assert!(len <= r.max_len);
        let end = r.start + record_size(len);
        let h = self.mem.header(r.start);
        h.len.store(len as u32, Ordering::Relaxed);
        h.aux.store(0, Ordering::Relaxed);
        // Clear the next record's commit word (free: `reserve` checked the
        // extra line) before publishing this one.
        self.mem.header(end).commit.store(0, Ordering::Relaxed);
        // SYNC W(commit): pairs with the reader's Acquire load of `commit`.
        h.commit.store(rec::word(r.start, state), Ordering::Release);
        if r.pad {
            let p = self.mem.header(self.pos);
            p.len.store(
                (r.start - self.pos - RECORD_HEADER as u64) as u32,
                Ordering::Relaxed,
            );
            p.aux.store(0, Ordering::Relaxed);
            // SYNC W(commit) of the pad; the record after it was published first.
            p.commit
                .store(rec::word(self.pos, rec::PAD), Ordering::Release);
        }
        self.pos = end;
        self.mem.ctrl().data_ec.notify();
    }

    /// Scans the readers now; returns the position below which every active
    /// reader released everything.
    pub(crate) fn rescan_floor(&mut self) -> u64 {
        let cap = self.mem.capacity();
        self.limit = scan_min(&self.mem, self.pos) + cap;
        self.limit - cap
    }

    /// Every active reader released everything below this (cached).
    pub(crate) fn released_floor(&self) -> u64 {
        self.limit.saturating_sub(self.mem.capacity())
    }

    /// Waits until at least `n` readers are active (activating pending ones).
    pub(crate) fn wait_for_readers(&mut self, n: u32, wait: &Wait<'_>) -> Result<u32> {
        let deadline = wait.start();
        let mem = &self.mem;
        let pos = self.pos;
        let joins_seen = &mut self.joins_seen;
        block_on(
            &mut self.spinner,
            &mem.ctrl().space_ec,
            &deadline,
            self.opts.liveness_interval,
            || {
                let j = mem.ctrl().status.joins.load(Ordering::Acquire);
                if j != *joins_seen {
                    *joins_seen = j;
                    activate_pending(mem, pos);
                }
                let active = (0..mem.nslots())
                    .filter(|&i| mem.slot(i).state.load(Ordering::Relaxed) == slot::ACTIVE)
                    .count() as u32;
                Ok((active >= n).then_some(active))
            },
            |_| Ok(()),
        )
    }

    /// The committed write position.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// Marks the ring closed and wakes every reader.
    pub(crate) fn close(&self) {
        self.mem.ctrl().status.closed.store(1, Ordering::Release);
        self.mem.ctrl().data_ec.notify_always();
    }
}

/// Makes every PENDING reader ACTIVE with its cursor at `pos`.
fn activate_pending<M: RingMem<Control = BroadcastControl>>(mem: &M, pos: u64) {
    for i in 0..mem.nslots() {
        let s = mem.slot(i);
        if s.state.load(Ordering::Acquire) == slot::PENDING {
            s.cursor.store(pos, Ordering::Relaxed);
            // SYNC W(activate): pairs with the reader's Acquire of its state.
            let _ = s.state.compare_exchange(
                slot::PENDING,
                slot::ACTIVE,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
    }
}

/// Evicts dead readers holding lines below `floor`; evicts stalled live ones
/// if the options say so; logs the slowest once.
fn evict_blockers<M: RingMem<Control = BroadcastControl>>(
    mem: &M,
    floor: u64,
    waited: std::time::Duration,
    opts: &PeerOptions,
    logged: &Cell<bool>,
) {
    for i in 0..mem.nslots() {
        let s = mem.slot(i);
        if s.state.load(Ordering::Acquire) != slot::ACTIVE
            || s.cursor.load(Ordering::Acquire) >= floor
        {
            continue;
        }
        let who = slot_owner(s);
        if !who.is_alive() {
            if s.state
                .compare_exchange(
                    slot::ACTIVE,
                    slot::FREE,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                log::info!(
                    "shoal broadcast: evicted dead reader slot {i} (pid {})",
                    who.pid
                );
            }
        } else if opts.stall_timeout.is_some_and(|t| waited >= t) {
            if s.state
                .compare_exchange(
                    slot::ACTIVE,
                    slot::EVICTED,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                log::warn!(
                    "shoal broadcast: evicted reader slot {i} (pid {}) stalled for {:?}",
                    who.pid,
                    waited
                );
                mem.ctrl().data_ec.notify_always();
            }
        } else if waited >= opts.slow_peer_log && !logged.get() {
            logged.set(true);
            log::warn!(
                "shoal broadcast: writer blocked for {:?} by reader slot {i} (pid {})",
                waited,
                who.pid
            );
        }
    }
}

/// A record a reader got: where it is and what it is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Got {
    pub pos: u64,
    pub len: u64,
    pub next: u64,
    pub state: u64,
}

/// A reader's side.
pub(crate) struct ReaderCore<M> {
    pub(crate) mem: M,
    slot: usize,
    cursor: u64,
    active: bool,
    /// Set when a release found the slot no longer ACTIVE: the writer
    /// evicted this (stalled) reader and may have reused what it read.
    evicted: bool,
    spinner: Spinner,
    pub(crate) opts: PeerOptions,
}

impl<M: RingMem<Control = BroadcastControl>> ReaderCore<M> {
    /// Claims a reader slot; the writer activates it at its next reservation.
    pub(crate) fn join(mem: M, me: ProcessId, opts: PeerOptions) -> Result<Self> {
        let slot = crate::peer::claim_slot(
            (0..mem.nslots()).map(|i| (i, mem.slot(i))),
            me,
            slot::PENDING,
        )?;
        mem.ctrl().status.joins.fetch_add(1, Ordering::Release);
        // A writer waiting for readers sleeps on the space eventcount.
        mem.ctrl().space_ec.notify();
        Ok(ReaderCore {
            mem,
            slot,
            cursor: 0,
            active: false,
            evicted: false,
            spinner: Spinner::new(opts.wait),
            opts,
        })
    }

    /// The slot this reader holds.
    pub(crate) fn slot_index(&self) -> usize {
        self.slot
    }

    /// Looks for the next record without waiting.
    pub(crate) fn poll(&mut self) -> Result<Option<Got>> {
        if self.evicted {
            return Err(Error::Evicted);
        }
        poll_ring(&self.mem, self.slot, &mut self.cursor, &mut self.active)
    }

    /// Waits for the next record.
    pub(crate) fn recv(&mut self, wait: &Wait<'_>) -> Result<Got> {
        if self.evicted {
            return Err(Error::Evicted);
        }
        let deadline = wait.start();
        let mem = &self.mem;
        let slot = self.slot;
        let cursor = &mut self.cursor;
        let active = &mut self.active;
        let writer_dead = Cell::new(false);
        block_on(
            &mut self.spinner,
            &mem.ctrl().data_ec,
            &deadline,
            self.opts.liveness_interval,
            || match poll_ring(mem, slot, cursor, active)? {
                Some(g) => Ok(Some(g)),
                None if writer_dead.get() => Err(Error::WriterGone {
                    pid: mem.ctrl().writer.pid.load(Ordering::Relaxed),
                }),
                None => Ok(None),
            },
            |_| {
                let w = &mem.ctrl().writer;
                let id = ProcessId {
                    pid: w.pid.load(Ordering::Relaxed),
                    start_time: w.start_time.load(Ordering::Relaxed),
                };
                if !id.is_alive() {
                    writer_dead.set(true);
                }
                Ok(())
            },
        )
    }

    /// Releases everything before `next` (the record just read) to the writer.
    pub(crate) fn release(&mut self, next: u64) {
        self.cursor = next;
        // SYNC W(release): pairs with the writer's Acquire load of cursors.
        let s = self.mem.slot(self.slot);
        s.cursor.store(next, Ordering::Release);
        self.mem.ctrl().space_ec.notify();
        // Evicted while holding the record (only with a stall timeout): its
        // bytes may have been reused; say so on the next call.
        if s.state.load(Ordering::Acquire) != slot::ACTIVE {
            self.evicted = true;
        }
    }

    /// Gives the slot back.
    pub(crate) fn leave(&mut self) {
        let s = self.mem.slot(self.slot);
        for st in [slot::ACTIVE, slot::PENDING, slot::EVICTED] {
            if s.state
                .compare_exchange(st, slot::FREE, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
        }
        self.mem.ctrl().space_ec.notify();
    }
}

/// One look at the ring for reader `slot_idx` at `*cursor`.
fn poll_ring<M: RingMem<Control = BroadcastControl>>(
    mem: &M,
    slot_idx: usize,
    cursor: &mut u64,
    active: &mut bool,
) -> Result<Option<Got>> {
    let cap = mem.capacity();
    let s = mem.slot(slot_idx);
    if !*active {
        // SYNC R(activate): pairs with the writer's Release in process_joins.
        match s.state.load(Ordering::Acquire) {
            slot::ACTIVE => {
                let c = s.cursor.load(Ordering::Relaxed);
                if !valid_position(c) {
                    return Err(Error::Corrupt {
                        what: "reader cursor",
                    });
                }
                *cursor = c;
                *active = true;
            }
            slot::PENDING => return closed_or_none(mem),
            _ => return Err(Error::Evicted),
        }
    }
    loop {
        let pos = *cursor;
        let h = mem.header(pos);
        // SYNC R(commit): pairs with the writer's Release store of `commit`.
        let c = h.commit.load(Ordering::Acquire);
        if c == 0 || c & !rec::MASK != pos {
            // Not written yet (cleared, or a word from an earlier lap).
            // While we wait, ask for the line after the header too: a
            // record's payload usually continues there, and fetching it now
            // overlaps its transfer with the header's instead of following it.
            prefetch(mem.data(pos + RECORD_ALIGN as u64));
            let st = s.state.load(Ordering::Relaxed);
            if st != slot::ACTIVE {
                return Err(Error::Evicted);
            }
            return closed_or_none_at(mem, h, pos);
        }
        let len = u64::from(h.len.load(Ordering::Relaxed));
        match c & rec::MASK {
            rec::DATA | rec::OVERFLOW => {
                // A real writer never lets a record cross the end of the
                // ring (it pads first); a forged one must not make the guard
                // read past the data area.
                if record_size(len) > cap / 2 || (pos & (cap - 1)) + record_size(len) > cap {
                    return Err(Error::Corrupt {
                        what: "record length",
                    });
                }
                return Ok(Some(Got {
                    pos,
                    len,
                    next: pos + record_size(len),
                    state: c & rec::MASK,
                }));
            }
            rec::PAD => {
                let next = pos + RECORD_HEADER as u64 + len;
                if next % cap != 0 || next - pos > cap {
                    return Err(Error::Corrupt { what: "pad length" });
                }
                *cursor = next;
            }
            _ => {
                return Err(Error::Corrupt {
                    what: "record state",
                })
            }
        }
    }
}

/// A read prefetch hint; no effect on memory contents or ordering.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    // SAFETY: prefetch is only a hint: it never faults and never reads
    // memory architecturally, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(all(target_arch = "x86_64", not(loom))))]
    let _ = p;
}

fn closed_or_none<M: RingMem<Control = BroadcastControl>>(mem: &M) -> Result<Option<Got>> {
    if mem.ctrl().status.closed.load(Ordering::Acquire) != 0 {
        return Err(Error::Closed);
    }
    Ok(None)
}

/// `Closed` if the writer closed and nothing is at `pos`; else not ready.
fn closed_or_none_at<M: RingMem<Control = BroadcastControl>>(
    mem: &M,
    h: &crate::layout::RecordHeader,
    pos: u64,
) -> Result<Option<Got>> {
    if mem.ctrl().status.closed.load(Ordering::Acquire) != 0 {
        // Everything committed before `closed` is visible now: look again.
        let c = h.commit.load(Ordering::Acquire);
        if c == 0 || c & !rec::MASK != pos {
            return Err(Error::Closed);
        }
    }
    Ok(None)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mem::HeapMem;
    use std::sync::Arc;

    fn ring(cap: u64, readers: usize) -> Arc<HeapMem<BroadcastControl>> {
        Arc::new(HeapMem::new(BroadcastControl::new(), readers, cap))
    }

    fn me() -> ProcessId {
        ProcessId::current()
    }

    fn send(w: &mut WriterCore<Arc<HeapMem<BroadcastControl>>>, bytes: &[u8]) {
        let r = w.reserve(bytes.len() as u64, &Wait::forever()).unwrap();
        // SAFETY: the reservation owns max_len payload bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), w.payload(&r), bytes.len()) };
        w.commit(r, bytes.len() as u64, rec::DATA);
    }

    fn read(r: &mut ReaderCore<Arc<HeapMem<BroadcastControl>>>) -> Option<Vec<u8>> {
        let g = r.poll().unwrap()?;
        let p = r.mem.data(g.pos + RECORD_HEADER as u64);
        // SAFETY: the record is committed and not yet released.
        let v = unsafe { std::slice::from_raw_parts(p, g.len as usize) }.to_vec();
        r.release(g.next);
        Some(v)
    }

    #[test]
    fn reader_joins_at_the_writers_position_and_sees_every_record() {
        let m = ring(4096, 2);
        let mut w = WriterCore::new(m.clone(), PeerOptions::default());
        send(&mut w, b"before");
        let mut r = ReaderCore::join(m.clone(), me(), PeerOptions::default()).unwrap();
        assert!(read(&mut r).is_none());
        for i in 0..200u32 {
            let msg = vec![i as u8; (i as usize * 7) % 300];
            send(&mut w, &msg);
            assert_eq!(read(&mut r).unwrap(), msg);
        }
    }

    #[test]
    fn writer_waits_for_the_slowest_reader() {
        let m = ring(4096, 2);
        let mut w = WriterCore::new(m.clone(), PeerOptions::default());
        let mut r = ReaderCore::join(m.clone(), me(), PeerOptions::default()).unwrap();
        send(&mut w, b"x"); // activates the reader
        let mut sent = 1;
        while w.reserve(100, &Wait::no_wait()).is_ok() {
            send(&mut w, &[1; 100]);
            sent += 1;
        }
        assert!(sent < 4096 / 128 + 2);
        let mut got = 0;
        while read(&mut r).is_some() {
            got += 1;
        }
        assert_eq!(got, sent);
        assert!(w.reserve(100, &Wait::no_wait()).is_ok());
    }

    #[test]
    fn close_is_reported_after_the_data() {
        let m = ring(4096, 1);
        let mut w = WriterCore::new(m.clone(), PeerOptions::default());
        let mut r = ReaderCore::join(m.clone(), me(), PeerOptions::default()).unwrap();
        send(&mut w, b"a");
        send(&mut w, b"b");
        w.close();
        assert_eq!(read(&mut r).unwrap(), b"a");
        assert_eq!(read(&mut r).unwrap(), b"b");
        assert!(matches!(r.poll(), Err(Error::Closed)));
    }

    #[test]
    fn slots_run_out_and_come_back() {
        let m = ring(4096, 1);
        let mut r1 = ReaderCore::join(m.clone(), me(), PeerOptions::default()).unwrap();
        assert!(matches!(
            ReaderCore::join(m.clone(), me(), PeerOptions::default()),
            Err(Error::NoFreeSlot { slots: 1 })
        ));
        r1.leave();
        ReaderCore::join(m.clone(), me(), PeerOptions::default()).unwrap();
    }
}
