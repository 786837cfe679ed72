//! The MPMC protocol (many producers, many consumers, each record taken
//! exactly once), independent of where its memory lives; loom checks it.
//!
//! # Protocol
//! - Producers reserve under a small lock whose word holds the owner's pid
//!   (so a dead owner is recognised and the lock taken over). Under the lock
//!   a producer advances `reclaim` past released records, checks
//!   `end + 64 <= reclaim + capacity`, clears the *next* commit word, writes
//!   its header as `RESERVED` (with its slot and generation in `aux`), a PAD
//!   before it if it wraps, and moves `tail`. Reservation order is therefore
//!   a single chain; the cleared next word means a consumer never reads stale
//!   payload bytes as a header.
//! - Commit: an unused tail of the reservation becomes a PAD, `len` is
//!   stored (Release), and `commit` goes `RESERVED -> DATA` by CAS (Release).
//!   The CAS fails only if consumers already tombstoned the reservation.
//! - Consumers read `head`, publish it as their *intent*, load the commit
//!   word at `head` (Acquire) and claim a DATA record by CAS on `head`.
//!   PADs and TOMBSTONEs are claimed the same way and released at once.
//!   Dropping a record stores `commit = RELEASED` (Release), which the
//!   producer walking `reclaim` Acquire-loads before reusing the bytes.
//! - A record RESERVED longer than `orphan_timeout` whose owner slot is dead
//!   (or reused: the generation differs) becomes a TOMBSTONE (CAS).
//! - A DATA record below `head` that stays unreleased longer than
//!   `orphan_timeout` while no live consumer's intent names it was taken by
//!   a consumer that died: the walking producer releases it.

use crate::broadcast_core::valid_position;
use crate::error::{Error, Result};
use crate::layout::{rec, record_size, slot, MpmcControl, NO_INTENT, RECORD_ALIGN, RECORD_HEADER};
use crate::liveness::ProcessId;
use crate::mem::RingMem;
use crate::peer::{claim_slot, slot_owner, PeerOptions};
use crate::sync::{spin_hint, Ordering};
use crate::wait::{block_on, Deadline, Spinner, Wait};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Waiter bit of the lock word; the low bits hold the owner's pid.
const LOCK_WAITERS: u32 = 1 << 31;
const LOCK_PID: u32 = !LOCK_WAITERS;

/// `aux` word naming a producer slot and its generation.
fn owner_tag(slot: usize, gen: u32) -> u32 {
    (slot as u32 & 0xffff) | (gen << 16)
}

/// A producer's reservation (process-local bookkeeping).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MResv {
    pub start: u64,
    pub max_len: u64,
}

/// The number of consumer slots is stored here; producer slots follow them.
pub(crate) struct Layout {
    pub consumers: usize,
    pub producers: usize,
}

/// One producer.
pub(crate) struct ProducerCore<M> {
    pub(crate) mem: M,
    slot: usize,
    tag: u32,
    me: ProcessId,
    spinner: Spinner,
    pub(crate) opts: PeerOptions,
    /// A record that has blocked `reclaim` since when: kept across calls,
    /// so producers using short timeouts still release orphans.
    stuck: Cell<Option<(u64, Instant)>>,
    /// The lock holder seen waiting, and since when (across calls too).
    lock_held: Option<(u32, Instant)>,
}

impl<M: RingMem<Control = MpmcControl>> ProducerCore<M> {
    pub(crate) fn join(mem: M, lay: &Layout, me: ProcessId, opts: PeerOptions) -> Result<Self> {
        let range = lay.consumers..lay.consumers + lay.producers;
        let slot = claim_slot(range.map(|i| (i, mem.slot(i))), me, slot::ACTIVE)?;
        mem.slot(slot).cursor.store(NO_INTENT, Ordering::Relaxed);
        let gen = mem.slot(slot).gen.load(Ordering::Relaxed);
        Ok(ProducerCore {
            tag: owner_tag(slot, gen),
            mem,
            slot,
            me,
            spinner: Spinner::new(opts.wait),
            opts,
            stuck: Cell::new(None),
            lock_held: None,
        })
    }

    pub(crate) fn max_inline(&self) -> u64 {
        self.mem.capacity() / 2 - RECORD_HEADER as u64
    }

    /// Reserves room for up to `max_len` payload bytes.
    pub(crate) fn reserve(&mut self, max_len: u64, wait: &Wait<'_>) -> Result<MResv> {
        debug_assert!(max_len <= self.max_inline());
        let deadline = wait.start();
        let mem = &self.mem;
        let me = self.me;
        let tag = self.tag;
        let opts = self.opts;
        let stuck = &self.stuck;
        let held = &mut self.lock_held;
        block_on(
            &mut self.spinner,
            &mem.ctrl().space_ec,
            &deadline,
            opts.liveness_interval,
            || {
                if mem.ctrl().closed.load(Ordering::Acquire) != 0 {
                    return Err(Error::Closed);
                }
                lock(mem, me, &deadline, &opts, held)?;
                let r = try_reserve(mem, max_len, tag, &opts, stuck);
                unlock(mem);
                Ok(r)
            },
            |_| Ok(()),
        )
    }

    pub(crate) fn payload(&self, r: &MResv) -> *mut u8 {
        self.mem.data(r.start + RECORD_HEADER as u64)
    }

    /// Publishes `r` with `len` bytes as `state` (DATA or OVERFLOW).
    pub(crate) fn commit(&mut self, r: MResv, len: u64, state: u64) -> Result<()> {
        debug_assert!(len <= r.max_len);
        let used = record_size(len);
        let span = record_size(r.max_len);
        if used < span {
            let p = self.mem.header(r.start + used);
            p.len.store(
                (span - used - RECORD_HEADER as u64) as u32,
                Ordering::Relaxed,
            );
            p.aux.store(0, Ordering::Relaxed);
            p.commit
                .store(rec::word(r.start + used, rec::PAD), Ordering::Release);
        }
        let h = self.mem.header(r.start);
        // Release: a tombstoner that reads this len also sees the pad above.
        h.len.store(len as u32, Ordering::Release);
        // SYNC W(commit): pairs with the consumer's Acquire load of `commit`.
        let ok = h
            .commit
            .compare_exchange(
                rec::word(r.start, rec::RESERVED),
                rec::word(r.start, state),
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_ok();
        self.mem.ctrl().data_ec.notify();
        if ok {
            Ok(())
        } else {
            Err(Error::Evicted)
        }
    }

    /// Gives up `r`: it becomes a tombstone consumers skip.
    pub(crate) fn abort(&mut self, r: MResv) {
        let h = self.mem.header(r.start);
        let _ = h.commit.compare_exchange(
            rec::word(r.start, rec::RESERVED),
            rec::word(r.start, rec::TOMBSTONE),
            Ordering::Release,
            Ordering::Relaxed,
        );
        self.mem.ctrl().data_ec.notify();
    }

    /// Closes the ring for everyone: consumers drain, then get `Closed`.
    pub(crate) fn close_ring(&self) {
        self.mem.ctrl().closed.store(1, Ordering::Release);
        self.mem.ctrl().data_ec.notify_always();
        self.mem.ctrl().space_ec.notify_always();
    }

    pub(crate) fn leave(&mut self) {
        let _ = self.mem.slot(self.slot).state.compare_exchange(
            slot::ACTIVE,
            slot::FREE,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

/// Takes the reservation lock, taking it over from a dead owner.
fn lock<M: RingMem<Control = MpmcControl>>(
    mem: &M,
    me: ProcessId,
    deadline: &Deadline<'_>,
    opts: &PeerOptions,
    held_since: &mut Option<(u32, Instant)>,
) -> Result<()> {
    let l = &mem.ctrl().lock;
    let mine = me.pid & LOCK_PID;
    let mut spins = 0u32;
    let mut slept = false;
    loop {
        let cur = l.word.load(Ordering::Relaxed);
        if cur == 0 {
            let new = if slept { mine | LOCK_WAITERS } else { mine };
            if l.word
                .compare_exchange(0, new, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                l.owner_start.store(me.start_time, Ordering::Relaxed);
                // Release: a waiter that reads our pid here also reads our start time.
                l.owner_pid.store(me.pid, Ordering::Release);
                *held_since = None;
                return Ok(());
            }
            continue;
        }
        if spins < 64 && !cfg!(loom) {
            spins += 1;
            spin_hint();
            if spins > 16 {
                std::thread::yield_now();
            }
            continue;
        }
        if cur & LOCK_WAITERS == 0
            && l.word
                .compare_exchange(
                    cur,
                    cur | LOCK_WAITERS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            continue;
        }
        let now = Instant::now();
        deadline.check(now)?;
        crate::futex::wait(
            &l.word,
            cur | LOCK_WAITERS,
            Some(deadline.slice(now, opts.liveness_interval)),
        );
        slept = true;
        // A holder that stays put for a whole interval may be dead.
        let owner = cur & LOCK_PID;
        match *held_since {
            Some((p, t)) if p == owner && t.elapsed() >= opts.liveness_interval => {
                let start = if l.owner_pid.load(Ordering::Acquire) == owner {
                    l.owner_start.load(Ordering::Relaxed)
                } else {
                    0
                };
                let who = ProcessId {
                    pid: owner,
                    start_time: start,
                };
                let now_word = l.word.load(Ordering::Relaxed);
                if now_word & LOCK_PID == owner
                    && !who.is_alive()
                    && l.word
                        .compare_exchange(
                            now_word,
                            mine | LOCK_WAITERS,
                            Ordering::Acquire,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    log::warn!("shoal mpmc: took over the reservation lock of dead pid {owner}");
                    l.owner_start.store(me.start_time, Ordering::Relaxed);
                    l.owner_pid.store(me.pid, Ordering::Release);
                    recover_reservation(mem);
                    return Ok(());
                }
                *held_since = Some((owner, Instant::now()));
            }
            Some((p, _)) if p == owner => {}
            _ => *held_since = Some((owner, Instant::now())),
        }
    }
}

fn unlock<M: RingMem<Control = MpmcControl>>(mem: &M) {
    let l = &mem.ctrl().lock;
    l.owner_pid.store(0, Ordering::Relaxed);
    let old = l.word.swap(0, Ordering::Release);
    if old & LOCK_WAITERS != 0 {
        crate::futex::wake(&l.word, 1);
    }
}

/// After taking the lock from a dead owner: finish the reservation it may
/// have half-made (headers written, `tail` not yet moved).
fn recover_reservation<M: RingMem<Control = MpmcControl>>(mem: &M) {
    let cap = mem.capacity();
    let l = &mem.ctrl().lock;
    let tail = l.tail.load(Ordering::Relaxed);
    if !valid_position(tail) {
        return;
    }
    let h = mem.header(tail);
    let c = h.commit.load(Ordering::Acquire);
    let mut start = tail;
    if c == rec::word(tail, rec::PAD) {
        let len = u64::from(h.len.load(Ordering::Relaxed));
        let next = tail + RECORD_HEADER as u64 + len;
        if next % cap != 0 || next - tail > cap {
            return;
        }
        start = next;
    } else if c != rec::word(tail, rec::RESERVED) {
        return;
    }
    let hs = mem.header(start);
    if hs.commit.load(Ordering::Acquire) & !rec::MASK != start {
        return;
    }
    let len = u64::from(hs.len.load(Ordering::Relaxed));
    if record_size(len) > cap / 2 {
        return;
    }
    l.tail.store(start + record_size(len), Ordering::Relaxed);
}

/// Under the lock: reserve if there is room. `None` means wait for space.
fn try_reserve<M: RingMem<Control = MpmcControl>>(
    mem: &M,
    max_len: u64,
    tag: u32,
    opts: &PeerOptions,
    stuck: &Cell<Option<(u64, Instant)>>,
) -> Option<MResv> {
    let cap = mem.capacity();
    let l = &mem.ctrl().lock;
    let tail = l.tail.load(Ordering::Relaxed);
    let reclaim = l.reclaim.load(Ordering::Relaxed);
    if !valid_position(tail) || !valid_position(reclaim) || reclaim > tail {
        // Corrupt shared state: refuse to write anywhere.
        return None;
    }
    let size = record_size(max_len);
    let off = tail & (cap - 1);
    let (start, pad) = if off + size > cap {
        (tail + (cap - off), true)
    } else {
        (tail, false)
    };
    let end = start + size;
    if end + RECORD_ALIGN as u64 > reclaim + cap
        && !advance_reclaim(mem, end + RECORD_ALIGN as u64 - cap, tail, opts, stuck)
    {
        return None;
    }
    mem.header(end).commit.store(0, Ordering::Relaxed);
    let h = mem.header(start);
    h.len.store(max_len as u32, Ordering::Relaxed);
    h.aux.store(tag, Ordering::Relaxed);
    h.commit
        .store(rec::word(start, rec::RESERVED), Ordering::Release);
    if pad {
        let p = mem.header(tail);
        p.len.store(
            (start - tail - RECORD_HEADER as u64) as u32,
            Ordering::Relaxed,
        );
        p.aux.store(0, Ordering::Relaxed);
        p.commit.store(rec::word(tail, rec::PAD), Ordering::Release);
    }
    l.tail.store(end, Ordering::Relaxed);
    Some(MResv { start, max_len })
}

/// Under the lock: moves `reclaim` past released records until it reaches
/// `target` (true) or a record still in use (false).
fn advance_reclaim<M: RingMem<Control = MpmcControl>>(
    mem: &M,
    target: u64,
    tail: u64,
    opts: &PeerOptions,
    stuck: &Cell<Option<(u64, Instant)>>,
) -> bool {
    let cap = mem.capacity();
    let l = &mem.ctrl().lock;
    let mut r = l.reclaim.load(Ordering::Relaxed);
    while r < target && r < tail {
        let h = mem.header(r);
        // SYNC R(release): pairs with the consumer's Release store of RELEASED.
        let c = h.commit.load(Ordering::Acquire);
        if c != rec::word(r, rec::RELEASED) && !release_orphan(mem, r, c, opts, stuck) {
            break;
        }
        let len = u64::from(h.len.load(Ordering::Relaxed));
        let span = record_size(len);
        if span > cap {
            // A corrupt length: stop here rather than jump anywhere.
            break;
        }
        r += span;
    }
    l.reclaim.store(r, Ordering::Relaxed);
    r >= target
}

/// A record at `r` (below `head`) that was taken but never released: if it
/// stayed so for `orphan_timeout` and no live consumer claims it, release it.
fn release_orphan<M: RingMem<Control = MpmcControl>>(
    mem: &M,
    r: u64,
    c: u64,
    opts: &PeerOptions,
    stuck: &Cell<Option<(u64, Instant)>>,
) -> bool {
    let state = c & rec::MASK;
    // Any record a consumer claimed (DATA, OVERFLOW, or a PAD or TOMBSTONE
    // it was about to mark released) can be orphaned by its death.
    if c & !rec::MASK != r
        || !matches!(state, rec::DATA | rec::OVERFLOW | rec::PAD | rec::TOMBSTONE)
    {
        return false;
    }
    if mem.ctrl().head.load(Ordering::Acquire) <= r {
        return false; // not taken yet: the consumers are just slow
    }
    match stuck.get() {
        Some((p, t)) if p == r => {
            if t.elapsed() < opts.orphan_timeout {
                return false;
            }
        }
        _ => {
            stuck.set(Some((r, Instant::now())));
            return false;
        }
    }
    // Producer slots hold NO_INTENT, so scanning every slot is harmless.
    for i in 0..mem.nslots() {
        let s = mem.slot(i);
        if s.state.load(Ordering::Acquire) == slot::ACTIVE
            && s.cursor.load(Ordering::Relaxed) == r
            && slot_owner(s).is_alive()
        {
            return false;
        }
    }
    let h = mem.header(r);
    if h.commit
        .compare_exchange(
            c,
            rec::word(r, rec::RELEASED),
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok()
    {
        log::warn!("shoal mpmc: reclaimed record at {r} taken by a consumer that died");
        stuck.set(None);
        true
    } else {
        false
    }
}

/// A record a consumer took.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MGot {
    pub pos: u64,
    pub len: u64,
    pub state: u64,
}

/// One consumer.
pub(crate) struct ConsumerCore<M> {
    pub(crate) mem: M,
    slot: usize,
    producers: std::ops::Range<usize>,
    spinner: Spinner,
    stuck: Option<(u64, Instant)>,
    pub(crate) opts: PeerOptions,
    creator: ProcessId,
}

impl<M: RingMem<Control = MpmcControl>> ConsumerCore<M> {
    pub(crate) fn join(
        mem: M,
        lay: &Layout,
        me: ProcessId,
        creator: ProcessId,
        opts: PeerOptions,
    ) -> Result<Self> {
        let slot = claim_slot(
            (0..lay.consumers).map(|i| (i, mem.slot(i))),
            me,
            slot::ACTIVE,
        )?;
        mem.slot(slot).cursor.store(NO_INTENT, Ordering::Relaxed);
        Ok(ConsumerCore {
            mem,
            slot,
            producers: lay.consumers..lay.consumers + lay.producers,
            spinner: Spinner::new(opts.wait),
            stuck: None,
            opts,
            creator,
        })
    }

    /// Takes the next record if one is ready.
    pub(crate) fn poll(&mut self) -> Result<Option<MGot>> {
        poll_take(
            &self.mem,
            self.slot,
            &self.producers,
            &self.opts,
            &mut self.stuck,
        )
    }

    /// Waits for the next record.
    pub(crate) fn take(&mut self, wait: &Wait<'_>) -> Result<MGot> {
        let deadline = wait.start();
        let mem = &self.mem;
        let slot = self.slot;
        let producers = &self.producers;
        let opts = self.opts;
        let stuck = &mut self.stuck;
        let creator = self.creator;
        let gone = Cell::new(false);
        block_on(
            &mut self.spinner,
            &mem.ctrl().data_ec,
            &deadline,
            opts.liveness_interval,
            || match poll_take(mem, slot, producers, &opts, stuck)? {
                Some(g) => Ok(Some(g)),
                None if gone.get() => Err(Error::WriterGone { pid: creator.pid }),
                None => Ok(None),
            },
            |_| {
                // Nobody can ever produce again: the creator is dead and no
                // live producer is attached.
                let any_producer = producers.clone().any(|i| {
                    let s = mem.slot(i);
                    s.state.load(Ordering::Acquire) == slot::ACTIVE && slot_owner(s).is_alive()
                });
                if !any_producer && !creator.is_alive() {
                    gone.set(true);
                }
                Ok(())
            },
        )
    }

    /// Releases the record at `pos`.
    pub(crate) fn release(&mut self, pos: u64) {
        let h = self.mem.header(pos);
        let c = h.commit.load(Ordering::Relaxed);
        // A CAS, not a store: if a producer already released it as an
        // orphan (we looked dead), a late store must not land on the next
        // lap's commit word.
        if c == rec::word(pos, rec::DATA) || c == rec::word(pos, rec::OVERFLOW) {
            // SYNC W(release): pairs with the producer's Acquire in advance_reclaim.
            let _ = h.commit.compare_exchange(
                c,
                rec::word(pos, rec::RELEASED),
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
        self.mem
            .slot(self.slot)
            .cursor
            .store(NO_INTENT, Ordering::Release);
        self.mem.ctrl().space_ec.notify();
    }

    pub(crate) fn leave(&mut self) {
        let s = self.mem.slot(self.slot);
        s.cursor.store(NO_INTENT, Ordering::Relaxed);
        let _ = s.state.compare_exchange(
            slot::ACTIVE,
            slot::FREE,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

fn poll_take<M: RingMem<Control = MpmcControl>>(
    mem: &M,
    me: usize,
    producers: &std::ops::Range<usize>,
    opts: &PeerOptions,
    stuck: &mut Option<(u64, Instant)>,
) -> Result<Option<MGot>> {
    let cap = mem.capacity();
    let ctrl = mem.ctrl();
    let intent = &mem.slot(me).cursor;
    loop {
        let h_pos = ctrl.head.load(Ordering::Acquire);
        if !valid_position(h_pos) {
            return Err(Error::Corrupt { what: "head" });
        }
        intent.store(h_pos, Ordering::Relaxed);
        let h = mem.header(h_pos);
        // SYNC R(commit): pairs with the producer's Release CAS of `commit`.
        let c = h.commit.load(Ordering::Acquire);
        if c == 0 || c & !rec::MASK != h_pos {
            if ctrl.head.load(Ordering::Acquire) != h_pos {
                continue;
            }
            intent.store(NO_INTENT, Ordering::Relaxed);
            if ctrl.closed.load(Ordering::Acquire) != 0 {
                let c2 = h.commit.load(Ordering::Acquire);
                if c2 == 0 || c2 & !rec::MASK != h_pos {
                    return Err(Error::Closed);
                }
                continue;
            }
            return Ok(None);
        }
        let state = c & rec::MASK;
        match state {
            rec::DATA | rec::OVERFLOW | rec::PAD | rec::TOMBSTONE => {
                let len = u64::from(h.len.load(Ordering::Acquire));
                let next = h_pos + record_size(len);
                let bad = if state == rec::PAD {
                    // Wrap pads reach the end of the ring; shrink pads fill
                    // the unused tail of a reservation: whole lines either way.
                    (RECORD_HEADER as u64 + len) % RECORD_ALIGN as u64 != 0 || len >= cap
                } else {
                    record_size(len) > cap / 2
                };
                // Never hand out (or skip across) bytes past the data area.
                let bad = bad || (h_pos & (cap - 1)) + record_size(len) > cap;
                if bad {
                    if ctrl.head.load(Ordering::Acquire) != h_pos {
                        continue;
                    }
                    return Err(Error::Corrupt {
                        what: "record length",
                    });
                }
                if ctrl
                    .head
                    .compare_exchange(h_pos, next, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                *stuck = None;
                if state == rec::DATA || state == rec::OVERFLOW {
                    return Ok(Some(MGot {
                        pos: h_pos,
                        len,
                        state,
                    }));
                }
                // PAD or TOMBSTONE: nothing to deliver; release and go on.
                h.commit
                    .store(rec::word(h_pos, rec::RELEASED), Ordering::Release);
                ctrl.space_ec.notify();
            }
            rec::RESERVED => {
                // A producer is writing it. Is that producer still there?
                let now = Instant::now();
                match *stuck {
                    Some((p, t)) if p == h_pos => {
                        if now - t >= opts.orphan_timeout {
                            *stuck = Some((h_pos, now));
                            if owner_dead(mem, h.aux.load(Ordering::Relaxed), producers)
                                && ctrl.head.load(Ordering::Acquire) == h_pos
                                && h.commit
                                    .compare_exchange(
                                        c,
                                        rec::word(h_pos, rec::TOMBSTONE),
                                        Ordering::AcqRel,
                                        Ordering::Relaxed,
                                    )
                                    .is_ok()
                            {
                                log::warn!(
                                    "shoal mpmc: record at {h_pos} reserved by a dead producer became a tombstone"
                                );
                                continue;
                            }
                        }
                    }
                    _ => *stuck = Some((h_pos, now)),
                }
                intent.store(NO_INTENT, Ordering::Relaxed);
                return Ok(None);
            }
            _ => {
                if ctrl.head.load(Ordering::Acquire) != h_pos {
                    continue;
                }
                return Err(Error::Corrupt {
                    what: "record state",
                });
            }
        }
    }
}

/// Whether the producer named by `aux` is gone (dead, or its slot reused).
fn owner_dead<M: RingMem<Control = MpmcControl>>(
    mem: &M,
    aux: u32,
    producers: &std::ops::Range<usize>,
) -> bool {
    let idx = (aux & 0xffff) as usize;
    let gen = aux >> 16;
    if !producers.contains(&idx) {
        return true;
    }
    let s = mem.slot(idx);
    if s.gen.load(Ordering::Relaxed) & 0xffff != gen & 0xffff {
        return true;
    }
    s.state.load(Ordering::Acquire) != slot::ACTIVE || !slot_owner(s).is_alive()
}

/// Time a consumer waits on one record before judging its producer.
#[allow(dead_code)]
pub(crate) const DEFAULT_ORPHAN: Duration = Duration::from_millis(100);

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::layout::MpmcControl;
    use crate::mem::HeapMem;
    use std::sync::Arc;
    use std::time::Duration;

    fn mem(c: usize, p: usize, cap: u64) -> Arc<HeapMem<MpmcControl>> {
        let ctrl = MpmcControl::new();
        Arc::new(HeapMem::new(ctrl, c + p, cap))
    }
    fn opts() -> PeerOptions {
        PeerOptions::default().orphan_timeout(Duration::from_millis(20))
    }

    /// A consumer killed between claiming a wrap PAD and releasing it must
    /// not wedge the producers.
    #[test]
    fn dead_consumer_on_pad_wedges_producers() {
        let m = mem(2, 1, 4096);
        let lay = Layout {
            consumers: 2,
            producers: 1,
        };
        let me = ProcessId::current();
        let mut p = ProducerCore::join(m.clone(), &lay, me, opts()).unwrap();
        let mut c = ConsumerCore::join(m.clone(), &lay, me, me, opts()).unwrap();
        // The "dead" consumer: pid 0 is always judged dead.
        let _dead = ConsumerCore::join(
            m.clone(),
            &lay,
            ProcessId {
                pid: 0,
                start_time: 0,
            },
            me,
            opts(),
        )
        .unwrap();
        for _ in 0..3 {
            let r = p.reserve(1100, &Wait::forever()).unwrap();
            p.commit(r, 1100, rec::DATA).unwrap();
            let g = c.take(&Wait::no_wait()).unwrap();
            c.release(g.pos);
        }
        // Wraps: PAD at 3072, record at 4096.
        let r = p.reserve(1100, &Wait::forever()).unwrap();
        assert_eq!(r.start, 4096);
        p.commit(r, 1100, rec::DATA).unwrap();
        // Dead consumer claimed the pad (CAS head) and died before RELEASED.
        m.ctrl()
            .head
            .compare_exchange(3456, 4096, Ordering::AcqRel, Ordering::Relaxed)
            .unwrap();
        let g = c.take(&Wait::no_wait()).unwrap();
        c.release(g.pos);
        let mut sent = 0;
        loop {
            match p.reserve(1100, &Wait::timeout(Duration::from_millis(500))) {
                Ok(r) => {
                    p.commit(r, 1100, rec::DATA).unwrap();
                    sent += 1;
                    let g = c.take(&Wait::no_wait()).unwrap();
                    c.release(g.pos);
                }
                Err(e) => {
                    panic!(
                        "WEDGED after {sent} more records: {e:?}; reclaim={} head={} tail={}",
                        m.ctrl().lock.reclaim.load(Ordering::Relaxed),
                        m.ctrl().head.load(Ordering::Relaxed),
                        m.ctrl().lock.tail.load(Ordering::Relaxed)
                    );
                }
            }
            if sent > 20 {
                break;
            }
        }
    }

    /// A consumer dies holding a DATA record; producers that only ever use
    /// short timeouts still release the orphan (the stuck state persists).
    #[test]
    fn orphan_never_released_with_short_timeouts() {
        let m = mem(2, 1, 4096);
        let lay = Layout {
            consumers: 2,
            producers: 1,
        };
        let me = ProcessId::current();
        let mut p = ProducerCore::join(m.clone(), &lay, me, opts()).unwrap();
        let mut c = ConsumerCore::join(m.clone(), &lay, me, me, opts()).unwrap();
        let mut dead = ConsumerCore::join(
            m.clone(),
            &lay,
            ProcessId {
                pid: 0,
                start_time: 0,
            },
            me,
            opts(),
        )
        .unwrap();
        let r = p.reserve(1000, &Wait::forever()).unwrap();
        p.commit(r, 1000, rec::DATA).unwrap();
        let _g = dead.poll().unwrap().unwrap(); // taken, never released
        let mut ok = 0;
        let mut fails = 0;
        for _ in 0..40 {
            match p.reserve(1000, &Wait::timeout(Duration::from_millis(10))) {
                Ok(r) => {
                    p.commit(r, 1000, rec::DATA).unwrap();
                    ok += 1;
                    let g = c.take(&Wait::no_wait()).unwrap();
                    c.release(g.pos);
                }
                Err(_) => fails += 1,
            }
        }
        // The first calls fail until `orphan_timeout` has passed since the
        // orphan was first seen; then the orphan is released and the rest
        // succeed, although no single call waited that long.
        assert!(
            ok >= 30 && fails <= 8,
            "short timeouts: ok={ok} fails={fails}"
        );
    }
}
