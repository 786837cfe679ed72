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
//! - SYNC W(release)/R(release): a reader moves its published cursor with a
//!   Release CAS; the writer Acquire-loads cursors before reusing lines. The
//!   CAS compares the generation tag in the cursor word, so a reader that
//!   lost its slot cannot move the cursor of the slot's next owner.
//! - Publishing is lazy: a reader publishes once it released an eighth of
//!   the ring since its last publication, right after an overflow record
//!   (so the writer can recycle its segment), and, while the writer says
//!   it waits for space (`want_space`, set until a wait succeeds; the
//!   writer raises it as soon as it comes within an eighth of the ring of
//!   what it saw released, and lowers it when a rescan shows room to
//!   spare), once a 64th of the ring was released; while the writer is
//!   blocked (`want_space` then names the position it waits for), as
//!   soon as the reader released that far; and at every empty poll (so
//!   before the reader waits). Publishing at every release instead cost a
//!   reader that is slower than the writer a contended line per record,
//!   and made it slower still (a third of the rate). A reader thus holds
//!   back less than an eighth of the ring unpublished, even one that
//!   stops calling; inline records are at most a quarter of the ring, so a record
//!   and the pad before it need at most half of it, and laziness alone
//!   never blocks the writer. A reader that pauses with unread records
//!   still pending may hold back up to an eighth of the ring it released
//!   before pausing, on top of the records it has not read.
//! - Joining: a reader takes its slot's lease, claims the slot (generation
//!   and state in one CAS) and marks it PENDING; at its next reservation the
//!   writer sets the cursor to its own position and marks the slot ACTIVE
//!   (Release, by CAS on the same generation), so a reader never gates lines
//!   the writer already reused.
//! - Liveness: a writer blocked by a reader whose lease is free (the
//!   process died) evicts it; a live reader that blocks it past
//!   `stall_timeout` ends the wait with `Stalled`, never with an eviction:
//!   the writer never reuses a record a live reader may hold. Readers of a
//!   writer whose lease is free get `WriterGone` once they drained what it
//!   committed.
//!
//! [`RecordHeader`]: crate::layout::RecordHeader

use crate::error::{Error, Result};
use crate::layout::{
    rec, record_size, slot, tagged, untag, valid_position, BroadcastControl, Own, Slot,
    GEN_TAG_MASK, RECORD_ALIGN, RECORD_HEADER,
};
use crate::lease;
use crate::liveness::ProcessId;
use crate::mem::RingMem;
use crate::peer::{
    claim_slot, leave_slot, repair_waiters, slot_alive, slot_owner, PeerOptions, SlotToken,
    FUTILE_REPAIR,
};
use crate::sync::Ordering;
use crate::wait::{block_on, Checks, Deadline, Spinner, Wait, Waiter};
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
    /// Every line from the end of the last record up to here has a zero
    /// commit word (cleared ahead in batches, see `reserve`).
    cleared: u64,
    /// `min(limit - capacity / 8, cleared)`, or less: a record that does
    /// not wrap and ends, with the line after it, at or below this has its
    /// room and its cleared line (`reserve`'s fast path, which also checks
    /// the length, the join count and that no reservation is open).
    fast_limit: u64,
    /// A reservation was handed out and neither committed nor abandoned
    /// yet (it may be forgotten, or its caller failed after `reserve`).
    open: bool,
    /// After a large record, the commit word of the line where the next
    /// record of the same size would end was cleared early (`guess_ahead`);
    /// this is that line's position, `NO_GUESS` when there is none or it
    /// may have been dirtied since.
    guessed: u64,
    joins_seen: u32,
    spinner: Spinner,
    pub(crate) opts: PeerOptions,
    /// Notifies that found a waiter bit but nobody asleep.
    futile: u32,
}

/// How far past a reservation the writer clears commit words in one go.
const CLEAR_AHEAD: u64 = 64 * RECORD_ALIGN as u64;

/// `WriterCore::guessed` when no line was cleared early.
const NO_GUESS: u64 = u64::MAX;

/// Cursor below which no active reader holds anything, given writer `pos`.
/// A reader whose cursor no correct reader could have (ahead of the writer,
/// or more than a ring behind it) is evicted and logged: its slot is
/// corrupt, and waiting on it would wait forever.
fn scan_min<M: RingMem<Control = BroadcastControl>>(mem: &M, pos: u64) -> u64 {
    let cap = mem.capacity();
    let mut min = pos;
    for i in 0..mem.nslots() {
        let s = mem.slot(i);
        let w = s.own.load(Ordering::Acquire);
        let o = Own::unpack(w);
        if o.state != slot::ACTIVE {
            continue;
        }
        // SYNC R(release): pairs with the reader's Release CAS of its cursor.
        let c = s.cursor.load(Ordering::Acquire);
        if c & GEN_TAG_MASK != o.gen as u64 & GEN_TAG_MASK {
            // Written by another generation: the slot is changing hands.
            // A claimer resets the state before the cursor, so look again.
            if s.own.load(Ordering::Acquire) != w {
                continue;
            }
        }
        let c = untag(c);
        if c > pos || c + cap < pos {
            evict(mem, i, w, "its cursor is impossible", c);
            continue;
        }
        min = min.min(c);
    }
    min
}

/// Frees slot `i` seen as `w` (its owner is dead, or its slot corrupt) and
/// clears its waiter bits. Returns whether this call did it.
fn evict<M: RingMem<Control = BroadcastControl>>(
    mem: &M,
    i: usize,
    w: u64,
    why: &str,
    value: u64,
) -> bool {
    let o = Own::unpack(w);
    let free = Own {
        gen: o.gen,
        state: slot::FREE,
    };
    // The dead owner's waiter bits, as they are before the slot is freed: a
    // new owner that claims it afterwards changes that word, and the clear
    // below then leaves its registration alone.
    let bits = mem.ctrl().data_ec.slot_word(i);
    let ok = mem
        .slot(i)
        .own
        .compare_exchange(w, free.pack(), Ordering::AcqRel, Ordering::Relaxed)
        .is_ok();
    if ok {
        mem.ctrl().data_ec.clear_slot_if(i, bits);
        log::warn!(
            "shoal broadcast {}: evicted reader slot {i} (pid {}): {why} ({value:#x})",
            mem.label(),
            slot_owner(mem.slot(i)).pid
        );
    }
    ok
}

impl<M: RingMem<Control = BroadcastControl>> WriterCore<M> {
    pub(crate) fn new(mem: M, opts: PeerOptions) -> Self {
        // The writer's lease is its proof of life for the readers. A shared
        // memory segment's creator holds it already; in heap memory (tests)
        // it is taken here.
        let _ = mem.take_lease(lease::OWNER);
        let cap = mem.capacity();
        WriterCore {
            mem,
            pos: 0,
            limit: cap,
            // A new ring is all zeroes.
            cleared: cap,
            fast_limit: cap - cap / 8,
            guessed: NO_GUESS,
            open: false,
            joins_seen: 0,
            spinner: Spinner::new(opts.wait),
            opts,
            futile: 0,
        }
    }

    /// The largest payload a record in this ring may carry: a quarter of
    /// the ring (less the header). With a wrap pad before it, a record then
    /// needs at most half the ring, so the eighth of it a reader may hold
    /// back unpublished never blocks the writer by itself.
    pub(crate) fn max_inline(&self) -> u64 {
        self.mem.capacity() / 4 - RECORD_HEADER as u64
    }

    /// Active readers right now.
    pub(crate) fn active_readers(&self) -> u32 {
        count_active(&self.mem)
    }

    /// Activates readers that joined since the last call.
    #[inline]
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
    ///
    /// The common case (no open reservation, no join, no wrap, room and
    /// cleared lines known to be there) is a handful of instructions; the
    /// rest is `reserve_slow`.
    #[inline]
    pub(crate) fn reserve(&mut self, max_len: u64, wait: &Wait<'_>) -> Result<Resv> {
        debug_assert!(max_len <= self.max_inline());
        if let Some(r) = self.try_reserve(max_len) {
            return Ok(r);
        }
        self.reserve_slow(max_len, wait)
    }

    /// `reserve`'s common case: an inline record (`max_len <=
    /// max_inline()`, checked here) with no open reservation, no join, no
    /// wrap, and room and cleared lines known to be there. `None` means
    /// "call `reserve`" (or the overflow path).
    #[inline(always)]
    pub(crate) fn try_reserve(&mut self, max_len: u64) -> Option<Resv> {
        if max_len > self.max_inline() {
            return None;
        }
        let cap = self.mem.capacity();
        let size = record_size(max_len);
        let start = self.pos;
        if !self.open
            && (start & (cap - 1)) + size <= cap
            && start + size + RECORD_ALIGN as u64 <= self.fast_limit
            && self.mem.ctrl().status.joins.load(Ordering::Acquire) == self.joins_seen
        {
            self.open = true;
            return Some(Resv {
                start,
                pad: false,
                max_len,
            });
        }
        None
    }

    /// Recomputes `fast_limit` from `limit` and `cleared`. Called where
    /// `cleared` drops and where the reservation paths move `limit`; a
    /// `limit` raised elsewhere (the overflow path's waits) leaves
    /// `fast_limit` lower than it could be, which only costs slow paths.
    #[inline]
    fn refresh_fast_limit(&mut self) {
        let cap = self.mem.capacity();
        self.fast_limit = self.limit.saturating_sub(cap / 8).min(self.cleared);
    }

    /// Everything `reserve`'s fast path leaves out.
    #[inline(never)]
    fn reserve_slow(&mut self, max_len: u64, wait: &Wait<'_>) -> Result<Resv> {
        let r = self.reserve_checked(max_len, wait);
        self.refresh_fast_limit();
        r
    }

    /// The whole of `reserve`, every check made.
    fn reserve_checked(&mut self, max_len: u64, wait: &Wait<'_>) -> Result<Resv> {
        let cap = self.mem.capacity();
        let size = record_size(max_len);
        if self.open {
            // The last reservation was never closed (forgotten, or its
            // caller failed after reserving): its lines may be dirty.
            self.cleared = self.cleared.min(self.pos);
            self.guessed = NO_GUESS;
        }
        self.process_joins();
        let off = self.pos & (cap - 1);
        let (start, pad) = if off + size > cap {
            (self.pos + (cap - off), true)
        } else {
            (self.pos, false)
        };
        self.wait_until_free(start + size + RECORD_ALIGN as u64, wait)?;
        // The commit word after the record must read "not written" before
        // the record is published (so a reader moving on never takes stale
        // bytes for a header). Clear such words ahead, a batch of lines at a
        // time, as far as readers have released: a store to a line a reader
        // still caches must wait for its invalidation, and every later store
        // (the commit the reader waits for among them) waits behind it.
        // Batched, those round trips overlap and happen once per batch
        // instead of once per record, and the lines are then already ours
        // when the records are written.
        let after = start + size + RECORD_ALIGN as u64;
        if after > self.cleared {
            self.clear_ahead(after, size);
        }
        self.open = true;
        Ok(Resv {
            start,
            pad,
            max_len,
        })
    }

    /// Blocks until every active reader released everything before
    /// `need - capacity`. A dead reader is evicted; a live one that holds
    /// the wait up past `stall_timeout` ends it with [`Error::Stalled`].
    ///
    /// Readers publish lazily (up to an eighth of the ring late): once the
    /// writer gets within that eighth of what it last saw released, it
    /// raises `want_space` ([`WANT_SOON`]) so readers publish every 64th
    /// of the ring, and lowers it again when a rescan shows room to spare;
    /// while it is blocked, `want_space` names the position it waits for
    /// ([`want_floor`]), and each reader publishes as soon as it released
    /// that far.
    #[inline]
    pub(crate) fn wait_until_free(&mut self, need: u64, wait: &Wait<'_>) -> Result<()> {
        if need + self.mem.capacity() / 8 <= self.limit {
            return Ok(());
        }
        self.wait_until_free_slow(need, wait)
    }

    #[inline(never)]
    fn wait_until_free_slow(&mut self, need: u64, wait: &Wait<'_>) -> Result<()> {
        let cap = self.mem.capacity();
        let status = &self.mem.ctrl().status;
        self.limit = scan_min(&self.mem, self.pos) + cap;
        if need + cap / 8 <= self.limit {
            if status.want_space.load(Ordering::Relaxed) != 0 {
                status.want_space.store(0, Ordering::Relaxed);
            }
            return Ok(());
        }
        if status.want_space.load(Ordering::Relaxed) == WANT_NONE {
            status.want_space.store(WANT_SOON, Ordering::Relaxed);
        }
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
        // Readers that release up to `floor` publish at once (a 64th of
        // the ring at a time would keep a slow reader's releases from the
        // writer for as long as it takes to release that much).
        status
            .want_space
            .store(want_floor(floor), Ordering::Relaxed);
        // `want_space` stays raised afterwards, also when this wait fails:
        // a writer that gave up (no_wait, timeout) still wants the space
        // when it tries again. A later rescan with room to spare lowers it.
        let r = block_on(
            &mut self.spinner,
            &mem.ctrl().space_ec,
            Waiter::owner(),
            &deadline,
            Checks::every(opts.liveness_interval),
            || {
                *limit = scan_min(mem, pos) + cap;
                Ok((need <= *limit).then_some(()))
            },
            |stalled| check_blockers(mem, floor, stalled.waited, &opts, &logged),
        );
        mem.ctrl()
            .status
            .want_space
            .store(WANT_SOON, Ordering::Relaxed);
        r
    }

    /// Clears commit words from the cleared frontier up to at least
    /// `after`, and as far as a batch and released lines allow. Lines inside
    /// the reservation (which ends one line before `after`) are skipped:
    /// they hold its payload, and a short commit or an abandoned
    /// reservation pulls the frontier back before anything past them is
    /// trusted.
    #[inline(never)]
    fn clear_ahead(&mut self, after: u64, size: u64) {
        // A batch pays off only if the next records land in it: after a
        // record as large as the batch, clear just the line it needs,
        // unless the last commit cleared it already (`guess_ahead`).
        let batch = if size < CLEAR_AHEAD { CLEAR_AHEAD } else { 0 };
        let to = (after + batch).min(self.limit).max(after);
        let mut p = self.cleared.max(self.pos).max(after - RECORD_ALIGN as u64);
        if batch == 0 && p == after - RECORD_ALIGN as u64 && p == self.guessed {
            p = to;
        }
        while p < to {
            self.mem.header(p).commit.store(0, Ordering::Relaxed);
            p += RECORD_ALIGN as u64;
        }
        self.cleared = to;
    }

    /// After committing a large record ending at `end`: readies, off the
    /// next record's path, the lines a next record of the same `size` needs
    /// (its second line, and the commit word after it), so that
    /// `reserve` finds the line after it clear and the user's first payload
    /// store finds its line owned. For large records `clear_ahead` clears
    /// one line, just before the payload is written; that store waits for
    /// the line to come back from the reader's cache, and the commit behind
    /// it. Here the wait overlaps the reader's work instead.
    ///
    /// Only lines every reader released (below `limit`) and past `end` are
    /// touched: writing zeroes there is invisible (a zero commit word reads
    /// "not written", and payload lines of unreserved space hold nothing).
    #[inline(never)]
    fn guess_ahead(&mut self, end: u64, size: u64) {
        self.guessed = NO_GUESS;
        let cap = self.mem.capacity();
        let line = RECORD_ALIGN as u64;
        let after = end + size;
        if (end & (cap - 1)) + size > cap {
            return;
        }
        if after + line > self.limit {
            // Readers publish lazily: look at what they released (the
            // reader is busy with the record just committed meanwhile).
            self.limit = scan_min(&self.mem, self.pos) + cap;
            self.refresh_fast_limit();
            let status = &self.mem.ctrl().status;
            if after + line + cap / 8 <= self.limit
                && status.want_space.load(Ordering::Relaxed) != 0
            {
                // Room to spare, as `wait_until_free_slow` would lower it.
                status.want_space.store(0, Ordering::Relaxed);
            }
            if after + line > self.limit {
                return;
            }
        }
        // The next record's second line (its first payload line but for
        // the 48 bytes that share the header's; any store takes the line).
        self.mem
            .header(end + line)
            .commit
            .store(0, Ordering::Relaxed);
        if after >= self.cleared.max(end) {
            self.mem.header(after).commit.store(0, Ordering::Relaxed);
            self.guessed = after;
        }
    }

    /// `r` will not be committed: its lines may hold payload bytes, so
    /// commit words from the writer's position on must be cleared again
    /// (from the position, not `r.start`: before a wrap pad, `clear_ahead`
    /// skipped the tail lines in between too).
    pub(crate) fn abandon(&mut self, _r: &Resv) {
        self.open = false;
        self.cleared = self.cleared.min(self.pos);
        self.guessed = NO_GUESS;
        self.refresh_fast_limit();
    }

    /// Pointer to the payload of `r`.
    #[inline]
    pub(crate) fn payload(&self, r: &Resv) -> *mut u8 {
        self.mem.data(r.start + RECORD_HEADER as u64)
    }

    /// Publishes `r` with a `len`-byte payload (`len <= r.max_len`) as `state`
    /// (`DATA` or `OVERFLOW`), and wakes sleeping readers.
    #[inline(always)]
    pub(crate) fn commit(&mut self, r: Resv, len: u64, state: u64) {
        debug_assert!(len <= r.max_len);
        let end = r.start + record_size(len);
        if r.pad || end != r.start + record_size(r.max_len) {
            return self.commit_unusual(r, len, state);
        }
        self.open = false;
        let h = self.mem.header(r.start);
        h.len.store(len as u32, Ordering::Relaxed);
        // SYNC W(commit): pairs with the reader's Acquire load of `commit`.
        h.commit.store(rec::word(r.start, state), Ordering::Release);
        self.pos = end;
        self.notify_readers();
        if end - r.start >= CLEAR_AHEAD {
            self.guess_ahead(end, end - r.start);
        }
    }

    /// `commit` of a record that a pad precedes, or that is shorter (in
    /// lines) than its reservation.
    #[inline(never)]
    fn commit_unusual(&mut self, r: Resv, len: u64, state: u64) {
        self.open = false;
        let end = r.start + record_size(len);
        let h = self.mem.header(r.start);
        h.len.store(len as u32, Ordering::Relaxed);
        // The next record's commit word must read "not written" before this
        // one is published: `reserve` cleared it for a full-size record; a
        // shorter one ends earlier, inside the reservation.
        if end != r.start + record_size(r.max_len) {
            self.mem.header(end).commit.store(0, Ordering::Relaxed);
            // The rest of the reservation may hold payload bytes: clear
            // again from the line after `end` on.
            self.cleared = self.cleared.min(end + RECORD_ALIGN as u64);
            self.fast_limit = self.fast_limit.min(self.cleared);
            self.guessed = NO_GUESS;
        }
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
        self.notify_readers();
    }

    /// Wakes sleeping readers after a commit (a barrier and a look at the
    /// waiter map when nobody sleeps).
    #[inline(always)]
    fn notify_readers(&mut self) {
        let n = self.mem.nslots();
        if self.mem.ctrl().data_ec.notify(n) {
            self.note_futile_wake();
        }
    }

    /// Counts a wake that found a waiter bit but nobody asleep; a run of
    /// them repairs the waiter map (a waiter died registered).
    #[inline(never)]
    fn note_futile_wake(&mut self) {
        self.futile += 1;
        if self.futile >= FUTILE_REPAIR {
            self.futile = 0;
            let n = self.mem.nslots();
            repair_waiters(&self.mem, &self.mem.ctrl().data_ec, 0, n, false);
        }
    }

    /// Scans the readers now; returns the position below which every active
    /// reader released everything.
    pub(crate) fn rescan_floor(&mut self) -> u64 {
        let cap = self.mem.capacity();
        self.limit = scan_min(&self.mem, self.pos) + cap;
        self.refresh_fast_limit();
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
            Waiter::owner(),
            &deadline,
            Checks::every(self.opts.liveness_interval),
            || {
                let j = mem.ctrl().status.joins.load(Ordering::Acquire);
                if j != *joins_seen {
                    *joins_seen = j;
                    activate_pending(mem, pos);
                }
                let active = count_active(mem);
                Ok((active >= n).then_some(active))
            },
            |_| Ok(()),
        )
    }

    /// Evicts every dead reader now, as a blocked writer would (models and
    /// tests drive this directly: loom does not let time pass).
    #[cfg(loom)]
    pub(crate) fn evict_dead_now(&self) -> Result<()> {
        let opts = PeerOptions {
            stall_timeout: None,
            ..self.opts
        };
        check_blockers(
            &self.mem,
            u64::MAX,
            std::time::Duration::ZERO,
            &opts,
            &Cell::new(true),
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

fn count_active<M: RingMem<Control = BroadcastControl>>(mem: &M) -> u32 {
    (0..mem.nslots())
        .filter(|&i| Own::unpack(mem.slot(i).own.load(Ordering::Relaxed)).state == slot::ACTIVE)
        .count() as u32
}

/// Makes every PENDING reader ACTIVE with its cursor at `pos`.
fn activate_pending<M: RingMem<Control = BroadcastControl>>(mem: &M, pos: u64) {
    for i in 0..mem.nslots() {
        let s = mem.slot(i);
        let w = s.own.load(Ordering::Acquire);
        let o = Own::unpack(w);
        if o.state == slot::PENDING {
            // The cursor first, tagged with the generation we activate: if
            // the slot changes hands meanwhile, the CAS below fails and the
            // next owner's claim rewrites the cursor anyway.
            s.cursor.store(tagged(pos, o.gen), Ordering::Relaxed);
            let active = Own {
                gen: o.gen,
                state: slot::ACTIVE,
            };
            // SYNC W(activate): pairs with the reader's Acquire of `own`.
            let _ = s
                .own
                .compare_exchange(w, active.pack(), Ordering::Release, Ordering::Relaxed);
        }
    }
}

/// Called while the writer is blocked: evicts dead readers holding lines
/// below `floor`; ends the wait with `Stalled` when a live one held it up
/// past the stall timeout; logs the slowest once.
fn check_blockers<M: RingMem<Control = BroadcastControl>>(
    mem: &M,
    floor: u64,
    waited: std::time::Duration,
    opts: &PeerOptions,
    logged: &Cell<bool>,
) -> Result<()> {
    for i in 0..mem.nslots() {
        let s = mem.slot(i);
        let w = s.own.load(Ordering::Acquire);
        if Own::unpack(w).state != slot::ACTIVE || untag(s.cursor.load(Ordering::Acquire)) >= floor
        {
            continue;
        }
        if !slot_alive(mem, i) {
            evict(mem, i, w, "its process is gone (lease free)", 0);
            continue;
        }
        let who = slot_owner(s);
        let tag = label(s);
        if opts.stall_timeout.is_some_and(|t| waited >= t) {
            log::warn!(
                "shoal broadcast {}: writer gives up after {:?}: reader slot {i}{tag} (pid {}) holds unreleased records",
                mem.label(),
                waited,
                who.pid
            );
            return Err(Error::Stalled {
                role: "reader",
                slot: i as u32,
                pid: who.pid,
                waited,
            });
        }
        if waited >= opts.slow_peer_log && !logged.get() {
            logged.set(true);
            log::warn!(
                "shoal broadcast {}: writer blocked for {:?} by reader slot {i}{tag} (pid {})",
                mem.label(),
                waited,
                who.pid
            );
        }
    }
    Ok(())
}

/// ", reader N" for a slot whose owner gave its label, else nothing.
fn label(s: &Slot) -> String {
    match s.tag.load(Ordering::Relaxed) {
        0 => String::new(),
        t => format!(", reader {}", t - 1),
    }
}

/// The readers in a broadcast ring now (joined or active): slot, label
/// (see [`Slot::tag`]), pid, and whether active.
pub(crate) fn readers<M: RingMem<Control = BroadcastControl>>(
    mem: &M,
) -> Vec<(u32, Option<u32>, u32, bool)> {
    (0..mem.nslots())
        .filter_map(|i| {
            let s = mem.slot(i);
            let state = Own::unpack(s.own.load(Ordering::Acquire)).state;
            (state == slot::ACTIVE || state == slot::PENDING).then(|| {
                let tag = s.tag.load(Ordering::Relaxed);
                (
                    i as u32,
                    tag.checked_sub(1),
                    s.pid.load(Ordering::Relaxed),
                    state == slot::ACTIVE,
                )
            })
        })
        .collect()
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
    st: ReaderState,
    spinner: Spinner,
    pub(crate) opts: PeerOptions,
}

/// A reader's process-local position.
struct ReaderState {
    token: SlotToken,
    /// The next record to read. Everything below it is released, except
    /// what `holds` keeps.
    cursor: u64,
    /// Records handed out to be held (see [`ReaderCore::hold`]), oldest
    /// first: the position published to the writer stops at the oldest.
    holds: Holds,
    /// An overflow record went back while an older record was held: the
    /// writer is to be told as soon as the position moves (it recycles
    /// overflow segments, and may be waiting for one).
    urgent_pending: bool,
    /// The cursor word as this reader last wrote (or was given) it.
    published: u64,
    /// Publish after releasing this many bytes (an eighth of the ring).
    publish_every: u64,
    /// ... or this many (a 64th of the ring) while the writer wants space.
    publish_soon: u64,
    active: bool,
    /// Set when this reader found its slot no longer its own.
    evicted: bool,
}

impl<M: RingMem<Control = BroadcastControl>> ReaderCore<M> {
    /// Claims a reader slot; the writer activates it at its next reservation.
    pub(crate) fn join(mem: M, me: ProcessId, opts: PeerOptions) -> Result<Self> {
        let token = claim_slot(&mem, 0..mem.nslots(), me, slot::PENDING, 0, |i, _| {
            mem.ctrl().data_ec.clear_slot(i)
        })?;
        mem.ctrl().status.joins.fetch_add(1, Ordering::Release);
        // A writer waiting for readers sleeps on the space eventcount.
        mem.ctrl().space_ec.notify(0);
        let publish_every = mem.capacity() / 8;
        let publish_soon = (mem.capacity() / 64).max(RECORD_ALIGN as u64);
        Ok(ReaderCore {
            mem,
            st: ReaderState {
                token,
                cursor: 0,
                holds: Holds::default(),
                urgent_pending: false,
                published: 0,
                publish_every,
                publish_soon,
                active: false,
                evicted: false,
            },
            spinner: Spinner::new(opts.wait),
            opts,
        })
    }

    /// Labels this reader's slot with `tag` (logs name it; the writer
    /// lists it).
    pub(crate) fn set_tag(&self, tag: u32) {
        let s = self.mem.slot(self.st.token.index);
        if self.st.token.owns(s).is_some() {
            s.tag.store(tag.saturating_add(1), Ordering::Relaxed);
        }
    }

    /// Whether the writer made this reader active (it receives every
    /// record committed from then on), as its slot says now.
    pub(crate) fn is_active(&self) -> bool {
        self.st.active
            || self
                .st
                .token
                .owns(self.mem.slot(self.st.token.index))
                .is_some_and(|o| o.state == slot::ACTIVE)
    }

    /// The slot this reader holds.
    pub(crate) fn slot_index(&self) -> usize {
        self.st.token.index
    }

    /// The slot and generation this reader claimed.
    pub(crate) fn token(&self) -> SlotToken {
        self.st.token
    }

    /// Looks for the next record without waiting.
    #[inline]
    pub(crate) fn poll(&mut self) -> Result<Option<Got>> {
        if self.st.evicted {
            return Err(Error::Evicted);
        }
        self.st.poll_ring(&self.mem)
    }

    /// A data record at the cursor, if that is what is there (the common
    /// case of `recv`, inline; `None` means "ask `recv_wait`").
    #[inline(always)]
    pub(crate) fn poll_data(&self) -> Option<Got> {
        if self.st.evicted {
            return None;
        }
        self.st.poll_data(&self.mem)
    }

    /// Waits for the next record (the loom models' entry point; the
    /// public reader calls `poll_data` and `recv_wait` itself).
    #[cfg(loom)]
    pub(crate) fn recv(&mut self, wait: &Wait<'_>) -> Result<Got> {
        let deadline = wait.start();
        loop {
            if let Some(g) = self.poll_data() {
                return Ok(g);
            }
            self.recv_wait(&deadline)?;
            if let Some(g) = self.poll()? {
                return Ok(g);
            }
        }
    }

    /// Waits until a record (of any kind) is at the cursor; `poll` then
    /// returns it. (The wait says only "ready": a record passed back up
    /// through the wait loop's layers of `Result` costs the caller copies
    /// on the path where latency counts.)
    #[inline(never)]
    pub(crate) fn recv_wait(&mut self, deadline: &Deadline<'_>) -> Result<()> {
        if self.st.evicted {
            return Err(Error::Evicted);
        }
        let writer_dead = Cell::new(false);
        let me = Waiter::blocking(self.st.token.index);
        let mem = &self.mem;
        let st = &mut self.st;
        block_on(
            &mut self.spinner,
            &mem.ctrl().data_ec,
            me,
            deadline,
            // Only the writer's death can end an idle wait early (besides
            // a record, which wakes it at once): back off while idle.
            Checks {
                every: self.opts.liveness_interval,
                idle_backoff: true,
            },
            || match st.poll_ring(mem)? {
                Some(_) => Ok(Some(())),
                None if writer_dead.get() => Err(Error::WriterGone {
                    pid: mem.ctrl().writer.pid.load(Ordering::Relaxed),
                }),
                None => Ok(None),
            },
            |_| {
                if !mem.lease_held(lease::OWNER) {
                    // Its waiter bit (if it died parked) would make every
                    // release a system call.
                    mem.ctrl().space_ec.clear_owner();
                    writer_dead.set(true);
                }
                Ok(())
            },
        )
    }

    /// Releases everything before `next` (the record just read), but what
    /// is held; tells the writer now if `urgent` (an overflow record, whose
    /// segment the writer recycles), else lazily (see the module
    /// documentation).
    #[inline(always)]
    pub(crate) fn release(&mut self, next: u64, urgent: bool) {
        let st = &mut self.st;
        st.cursor = next;
        st.maybe_publish(&self.mem, urgent);
    }

    /// Takes record `g` (just read) as held: the cursor moves past it, but
    /// the position the writer sees stays at or below it until
    /// [`release_hold`](Self::release_hold). `pin` names the overflow
    /// segment it pins, if any (kept for the release; an overflow record
    /// is urgent: the writer is told at once when it goes back).
    /// `TooLarge` past [`MAX_HELD`] records held at once (nothing taken).
    #[inline]
    pub(crate) fn hold(&mut self, g: &Got, pin: Option<u64>) -> Result<()> {
        let st = &mut self.st;
        st.holds.push(Hold {
            start: g.pos,
            pin: pin.unwrap_or(NO_PIN),
        })?;
        st.cursor = g.next;
        Ok(())
    }

    /// Where this reader reads next (the record a `poll_data` returns).
    #[inline(always)]
    pub(crate) fn cursor(&self) -> u64 {
        self.st.cursor
    }

    /// Whether the writer evicted this reader.
    #[inline(always)]
    pub(crate) fn is_evicted(&self) -> bool {
        self.st.evicted
    }

    /// Whether the record at `start` is held (and not yet released), by a
    /// reader that still owns its slot.
    pub(crate) fn is_held(&self, start: u64) -> bool {
        !self.st.evicted && self.st.holds.find(start).is_some()
    }

    /// Releases the held record at `start`: the position the writer sees
    /// moves up to the oldest record still held (records go back in order,
    /// whatever order they are released in). `None` when no record at
    /// `start` is held, else the overflow segment it pinned, if any.
    #[inline]
    pub(crate) fn release_hold(&mut self, start: u64) -> Option<Option<u64>> {
        let st = &mut self.st;
        let pin = st.holds.release(start)?;
        let pin = (pin != NO_PIN).then_some(pin);
        st.maybe_publish(&self.mem, pin.is_some());
        Some(pin)
    }

    /// Gives the slot back.
    pub(crate) fn leave(&mut self) {
        let mem = &self.mem;
        leave_slot(mem, self.st.token, |i| mem.ctrl().data_ec.clear_slot(i));
        mem.ctrl().space_ec.notify(0);
    }
}

/// `want_space`: the writer has room to spare.
const WANT_NONE: u32 = 0;
/// `want_space`: the writer came within an eighth of the ring of what it
/// saw released; readers publish every 64th of the ring they release.
const WANT_SOON: u32 = 1;
/// `want_space` bit: the writer is blocked until every reader released up
/// to a position (see [`want_floor`]); a reader publishes as soon as it
/// released that far.
const WANT_FLOOR: u32 = 2;
/// The line bits of a position, masked out of a floor in `want_space`.
const LINE_BITS: u32 = RECORD_ALIGN as u32 - 1;

/// `want_space` for a writer blocked until every reader released up to
/// `floor`: its low 32 bits, rounded up to a line, with [`WANT_FLOOR`].
/// Released positions are whole lines, so a position reaches the rounded
/// floor exactly when it reaches `floor` (rounding down would let a
/// reader published one line short of an unaligned floor count as past
/// it, and not publish the release the writer waits for).
fn want_floor(floor: u64) -> u32 {
    ((floor as u32).wrapping_add(LINE_BITS) & !LINE_BITS) | WANT_FLOOR
}

/// Whether a reader released up to `to` reached the floor in `want`. The
/// floor keeps only its low 32 bits, compared by wrapping: a reader that
/// blocks the writer is less than a ring (at most 2 GiB) behind its
/// floor, and none is a ring ahead of it (the record the writer waits to
/// write is not committed yet).
fn reaches(to: u64, want: u32) -> bool {
    want & WANT_FLOOR != 0 && (to as u32).wrapping_sub(want & !LINE_BITS) < 1 << 31
}

/// Most records a broadcast reader holds at once.
pub const MAX_HELD: usize = 64;

/// A record a reader holds.
#[derive(Debug, Clone, Copy, Default)]
struct Hold {
    start: u64,
    /// The overflow segment it pins ([`NO_PIN`]: a ring record). An
    /// overflow record is urgent: the writer is told at once when it goes
    /// back.
    pin: u64,
}

/// [`Hold::pin`] of a record in the ring.
const NO_PIN: u64 = u64::MAX;

/// The records a reader holds, oldest first, in a fixed ring (no
/// allocation on the receive path).
#[derive(Debug)]
struct Holds {
    ring: [Hold; MAX_HELD],
    head: usize,
    len: usize,
}

impl Default for Holds {
    fn default() -> Self {
        Holds {
            ring: [Hold::default(); MAX_HELD],
            head: 0,
            len: 0,
        }
    }
}

impl Holds {
    #[inline(always)]
    fn at(&self, i: usize) -> usize {
        (self.head + i) % MAX_HELD
    }

    #[inline]
    fn push(&mut self, h: Hold) -> Result<()> {
        if self.len == MAX_HELD {
            return Err(Error::TooLarge {
                what: "records held at once by one reader",
                got: MAX_HELD as u64 + 1,
                limit: MAX_HELD as u64,
            });
        }
        let i = self.at(self.len);
        self.ring[i] = h;
        self.len += 1;
        Ok(())
    }

    /// Marks the record at `start` released and drops the released ones at
    /// the front; whether one of those was urgent (`None`: not held).
    /// The place (0 = oldest) of the record at `start`, if held.
    fn find(&self, start: u64) -> Option<usize> {
        (0..self.len).find(|&k| self.ring[self.at(k)].start == start)
    }

    /// Forgets the record at `start` (the others keep their order, so
    /// only what is held counts against [`MAX_HELD`]); its pin (`None`:
    /// not held).
    #[inline]
    fn release(&mut self, start: u64) -> Option<u64> {
        // The common case: the oldest goes back first.
        if self.len > 0 && self.ring[self.head].start == start {
            let pin = self.ring[self.head].pin;
            self.len -= 1;
            // Empty: the next hold goes to the first entry again, so a
            // reader that holds one record at a time touches one line of
            // this ring, not each of its lines in turn.
            self.head = if self.len == 0 { 0 } else { self.at(1) };
            return Some(pin);
        }
        let k = self.find(start)?;
        let pin = self.ring[self.at(k)].pin;
        for j in k..self.len - 1 {
            let (to, from) = (self.at(j), self.at(j + 1));
            self.ring[to] = self.ring[from];
        }
        self.len -= 1;
        Some(pin)
    }

    /// The oldest record held, if any.
    fn oldest(&self) -> Option<u64> {
        (self.len > 0).then(|| self.ring[self.head].start)
    }
}

impl ReaderState {
    /// What the writer may reuse below: the cursor, or the oldest record
    /// still held.
    #[inline(always)]
    fn released_to(&self) -> u64 {
        match self.holds.oldest() {
            Some(start) => start.min(self.cursor),
            None => self.cursor,
        }
    }

    /// Publishes, when the released position moved, now if `urgent` (or
    /// an urgent release is pending behind a held record), or once an
    /// eighth of the ring was released since the last time, or a 64th
    /// when the writer wants space. An urgent release that does not move the
    /// position (an older record is held) waits for the next move.
    #[inline(always)]
    fn maybe_publish<M: RingMem<Control = BroadcastControl>>(&mut self, mem: &M, urgent: bool) {
        let to = self.released_to();
        let from = untag(self.published).min(to);
        let urgent = urgent || self.urgent_pending;
        if to == from {
            self.urgent_pending = urgent;
            return;
        }
        let moved = to - from;
        if urgent || moved >= self.publish_every || {
            let want = mem.ctrl().status.want_space.load(Ordering::Relaxed);
            // A floor: once, when this release reaches it (a reader that
            // published past it no longer holds the writer up). Loads are
            // Relaxed with no fence against the writer's store: a release
            // that crossed the floor before the reader saw it is published
            // by the next release or empty poll (the test is against what
            // was published), so the writer waits at most one more record.
            want != WANT_NONE
                && (moved >= self.publish_soon || (reaches(to, want) && !reaches(from, want)))
        } {
            self.publish(mem);
            self.urgent_pending = false;
        }
    }

    /// Publishes the released position to the writer.
    fn publish<M: RingMem<Control = BroadcastControl>>(&mut self, mem: &M) {
        let s = mem.slot(self.token.index);
        let word = tagged(self.released_to(), self.token.gen);
        // SYNC W(release): pairs with the writer's Acquire load of cursors.
        // A CAS against our last word: it fails if the slot changed hands.
        match s
            .cursor
            .compare_exchange(self.published, word, Ordering::Release, Ordering::Relaxed)
        {
            Ok(_) => self.published = word,
            Err(_) => self.evicted = true,
        }
        mem.ctrl().space_ec.notify(0);
        if self.token.owns(s).is_none() {
            self.evicted = true;
        }
    }

    /// One look at the ring at the cursor.
    #[inline]
    fn poll_ring<M: RingMem<Control = BroadcastControl>>(
        &mut self,
        mem: &M,
    ) -> Result<Option<Got>> {
        match self.poll_data(mem) {
            Some(g) => Ok(Some(g)),
            None => self.poll_ring_slow(mem),
        }
    }

    /// The common case alone: an active reader with a data record at its
    /// cursor whose length fits in half the ring (the slow path's bound). `None` means "look closer" (`poll_ring_slow`).
    #[inline(always)]
    fn poll_data<M: RingMem<Control = BroadcastControl>>(&self, mem: &M) -> Option<Got> {
        if !self.active {
            return None;
        }
        let pos = self.cursor;
        let h = mem.header(pos);
        // SYNC R(commit): pairs with the writer's Release store of `commit`.
        if h.commit.load(Ordering::Acquire) != rec::word(pos, rec::DATA) {
            return None;
        }
        let len = u64::from(h.len.load(Ordering::Relaxed));
        let size = record_size(len);
        let cap = mem.capacity();
        // A real writer never lets a record cross the end of the ring; a
        // forged length goes the slow way, which reports it as corrupt
        // unless a writer rewrote it in between.
        (size <= cap / 2 && (pos & (cap - 1)) + size <= cap).then_some(Got {
            pos,
            len,
            next: pos + size,
            state: rec::DATA,
        })
    }

    /// Everything but a data record at the cursor of an active reader:
    /// activation, pads, overflow records, an empty ring, corruption.
    #[inline(never)]
    fn poll_ring_slow<M: RingMem<Control = BroadcastControl>>(
        &mut self,
        mem: &M,
    ) -> Result<Option<Got>> {
        let cap = mem.capacity();
        let s = mem.slot(self.token.index);
        if !self.active {
            // SYNC R(activate): pairs with the writer's Release in activate_pending.
            match self.token.owns(s).map(|o| o.state) {
                Some(slot::ACTIVE) => {
                    let w = s.cursor.load(Ordering::Relaxed);
                    let c = untag(w);
                    if w != tagged(c, self.token.gen) || !valid_position(c) {
                        self.evicted = true;
                        return Err(Error::corrupt(
                            mem.label(),
                            "reader cursor at activation",
                            w,
                            "a 64-byte aligned position tagged with the slot's generation",
                        ));
                    }
                    self.cursor = c;
                    self.published = w;
                    self.active = true;
                }
                Some(_) => return closed_or_none(mem),
                None => {
                    self.evicted = true;
                    return Err(Error::Evicted);
                }
            }
        }
        loop {
            let pos = self.cursor;
            let h = mem.header(pos);
            // SYNC R(commit): pairs with the writer's Release store of `commit`.
            let c = h.commit.load(Ordering::Acquire);
            if c == 0 || c & !rec::MASK != pos {
                // Not written yet (cleared, or a word from an earlier lap).
                // (No prefetch of the next line here: pulling a line the
                // writer is about to write costs the writer an invalidation.)
                if self.released_to() != untag(self.published)
                    && mem.ctrl().status.want_space.load(Ordering::Relaxed) != 0
                {
                    self.publish(mem);
                }
                if self.token.owns(s).map(|o| o.state) != Some(slot::ACTIVE) {
                    self.evicted = true;
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
                        return Err(Error::corrupt(
                            mem.label(),
                            "record length",
                            len,
                            "a record within half the ring, not crossing its end",
                        ));
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
                    if !next.is_multiple_of(cap) || next - pos > cap {
                        return Err(Error::corrupt(
                            mem.label(),
                            "pad length",
                            len,
                            "a pad reaching exactly the end of the ring",
                        ));
                    }
                    self.cursor = next;
                }
                st => {
                    return Err(Error::corrupt(
                        mem.label(),
                        "record state",
                        st,
                        "DATA, OVERFLOW or PAD",
                    ))
                }
            }
        }
    }
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
        r.release(g.next, false);
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

    /// Writes, into every line of `r`, a header that would pass for a
    /// committed record at that line's position (the worst payload bytes a
    /// user could leave there).
    fn forge_headers(w: &WriterCore<Arc<HeapMem<BroadcastControl>>>, r: &Resv) {
        let mut p = r.start + RECORD_ALIGN as u64;
        while p < r.start + record_size(r.max_len) + RECORD_ALIGN as u64 {
            let h = w.mem.header(p);
            h.len.store(8, Ordering::Relaxed);
            h.commit.store(rec::word(p, rec::DATA), Ordering::Relaxed);
            p += RECORD_ALIGN as u64;
        }
    }

    /// Commit words are cleared ahead in batches; a short commit or an
    /// abandoned reservation may leave payload bytes that look like headers
    /// past the record's end: the reader must never take them for records.
    #[test]
    fn payload_left_by_short_or_abandoned_reservations_is_never_a_record() {
        let m = ring(4096, 1);
        let mut w = WriterCore::new(m.clone(), PeerOptions::default());
        let mut r = ReaderCore::join(m.clone(), me(), PeerOptions::default()).unwrap();
        send(&mut w, b"first");
        assert_eq!(read(&mut r).unwrap(), b"first");
        for round in 0..40u64 {
            // Abandoned: forged headers everywhere, then dropped.
            let big = w.reserve(1000, &Wait::forever()).unwrap();
            forge_headers(&w, &big);
            w.abandon(&big);
            // A smaller record committed in full inside the dirty span.
            send(&mut w, &[round as u8; 400]);
            assert_eq!(read(&mut r).unwrap(), vec![round as u8; 400]);
            assert!(
                read(&mut r).is_none(),
                "round {round}: read past an abandoned one"
            );
            // Short: forged headers past what is committed, then a full one.
            let res = w.reserve(900, &Wait::forever()).unwrap();
            forge_headers(&w, &res);
            // SAFETY: the reservation owns 900 payload bytes.
            unsafe { *w.payload(&res) = round as u8 };
            w.commit(res, 8, rec::DATA);
            send(&mut w, &[7; 200]);
            let got = read(&mut r).expect("the committed record");
            assert_eq!(got.len(), 8);
            assert_eq!(got[0], round as u8);
            assert_eq!(read(&mut r).unwrap(), vec![7; 200]);
            assert!(
                read(&mut r).is_none(),
                "round {round}: read past a short one"
            );
        }
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

/// Regressions from the second adversarial review: lazy publication.
#[cfg(all(test, not(loom)))]
mod review2_tests {
    use super::*;
    use crate::mem::HeapMem;
    use std::sync::Arc;
    use std::time::Duration;

    type Mem = Arc<HeapMem<BroadcastControl>>;

    fn ring(cap: u64) -> Mem {
        Arc::new(HeapMem::new(BroadcastControl::new(), 1, cap))
    }
    fn send(w: &mut WriterCore<Mem>, len: u64, wait: &Wait<'_>) -> Result<()> {
        let r = w.reserve(len, wait)?;
        w.commit(r, len, rec::DATA);
        Ok(())
    }
    /// Reads one record and drops the "guard" (release), as ReadGuard::drop does.
    fn read_one(r: &mut ReaderCore<Mem>) -> bool {
        match r.poll().unwrap() {
            Some(g) => {
                r.release(g.next, false);
                true
            }
            None => false,
        }
    }
    fn published(m: &Mem) -> u64 {
        untag(m.slot(0).cursor.load(Ordering::Relaxed))
    }

    /// Second review: a reader that released records and then paused
    /// (records still pending) kept that space from the writer. A writer
    /// within an eighth of the ring of what it saw released now raises
    /// `want_space` before it is short, so readers publish every 64th of
    /// the ring they release (here 64 bytes: every record) while the ring
    /// is nearly full, and the space is there.
    #[test]
    fn a_paused_reader_does_not_keep_released_space_from_a_full_ring() {
        let m = ring(4096);
        let o = PeerOptions::default().stall_timeout(Some(Duration::from_millis(200)));
        let mut w = WriterCore::new(m.clone(), o);
        let mut r = ReaderCore::join(m.clone(), ProcessId::current(), o).unwrap();
        for _ in 0..31 {
            send(&mut w, 112, &Wait::no_wait()).unwrap();
        }
        for _ in 0..3 {
            assert!(read_one(&mut r));
        }
        // ... the reader pauses here, holding nothing back.
        assert_eq!(published(&m), 384);
        send(&mut w, 112, &Wait::no_wait()).unwrap();
    }

    /// Third review: readers that publish only every 64th of the ring
    /// while the writer wants space kept a slow reader's releases from a
    /// blocked writer for as long as that reader took to release a 64th
    /// (with small records and a slow reader, past the stall timeout: a
    /// false `Stalled`). A blocked writer now names the position it waits
    /// for, and the release that reaches it is published at once.
    #[test]
    fn a_blocked_writer_gets_a_slow_readers_release_at_once() {
        // 64 KiB: a 64th is 1 KiB, eight 128-byte records.
        let m = ring(1 << 16);
        let o = PeerOptions::default().stall_timeout(Some(Duration::from_secs(5)));
        let mut w = WriterCore::new(m.clone(), o);
        let mut r = ReaderCore::join(m.clone(), ProcessId::current(), o).unwrap();
        send(&mut w, 112, &Wait::forever()).unwrap(); // activates r
        while send(&mut w, 112, &Wait::no_wait()).is_ok() {}
        let t = std::time::Instant::now();
        let writer = std::thread::spawn(move || {
            send(&mut w, 112, &Wait::timeout(Duration::from_secs(5))).map(|()| t.elapsed())
        });
        // The writer is blocked (it names its floor) ...
        let t0 = std::time::Instant::now();
        while m.ctrl().status.want_space.load(Ordering::Relaxed) & WANT_FLOOR == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the writer never blocked"
            );
            std::thread::yield_now();
        }
        // ... and this reader releases one record at a time, slowly.
        let mut released = 0;
        while !writer.is_finished() && released < 16 {
            assert!(read_one(&mut r));
            released += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        let took = writer.join().unwrap().unwrap();
        assert!(
            released <= 2,
            "the writer waited for {released} releases ({took:?})"
        );
    }

    #[test]
    fn floors_compare_across_32_bit_wraps() {
        let f = (5u64 << 32) + (1 << 32) - 128; // just below a wrap
        let want = want_floor(f);
        assert!(!reaches(f - 64, want));
        assert!(reaches(f, want));
        assert!(reaches(f + 128, want)); // past the wrap
        assert!(reaches(f + (1 << 30), want));
        assert!(!reaches(f - (1 << 30), want));
        assert!(!reaches(f, WANT_SOON));
        // An unaligned floor (an overflow segment's wait): the line at it
        // does not reach it, the next one does.
        let odd = want_floor(f + 1);
        assert!(!reaches(f, odd));
        assert!(reaches(f + 64, odd));
    }

    /// `want_space` is cleared only when a blocked wait *succeeds*. A wait
    /// that failed (no_wait / timeout / Stalled / cancel) leaves it set, and
    /// the next slow path that succeeds on its first rescan (line ~233)
    /// returns before clearing it: from then on every reader publishes
    /// (CAS + notify) on every release, i.e. lazy publication is off for
    /// good while the writer never has to park again.
    #[test]
    fn want_space_is_lowered_once_the_writer_has_room_again() {
        for fail_once in [false, true] {
            let m = ring(4096);
            let o = PeerOptions::default();
            let mut w = WriterCore::new(m.clone(), o);
            let mut r = ReaderCore::join(m.clone(), ProcessId::current(), o).unwrap();
            send(&mut w, 112, &Wait::forever()).unwrap(); // activates r
            assert!(read_one(&mut r));
            if fail_once {
                // One try_send that finds the ring full.
                while send(&mut w, 112, &Wait::no_wait()).is_ok() {}
                while read_one(&mut r) {}
            }
            let mut eager = 0;
            for _ in 0..100 {
                // Batches of 4 records, then the reader drains them.
                for _ in 0..4 {
                    send(&mut w, 112, &Wait::forever()).unwrap();
                }
                assert!(read_one(&mut r));
                // Lazy: the next record is committed, nothing published yet.
                if published(&m) == r.st.cursor {
                    eager += 1;
                }
                while read_one(&mut r) {}
            }
            let flag = m.ctrl().status.want_space.load(Ordering::Relaxed);
            eprintln!("fail_once={fail_once}: want_space={flag}, eager publications {eager}/100");
            assert_eq!(
                eager, 0,
                "fail_once={fail_once}: want_space={flag} stayed set; every release published"
            );
        }
    }

    /// Review 7: after a large commit, `guess_ahead` may rescan the readers
    /// and find room, so the next reservations never reach the slow path
    /// that lowers `want_space`; it must lower it itself, or every release
    /// publishes (CAS + notify) for good.
    #[test]
    fn want_space_is_lowered_when_a_large_commit_rescans() {
        const BIG: u64 = 8192 - RECORD_HEADER as u64;
        let m = ring(32768);
        let o = PeerOptions::default();
        let mut w = WriterCore::new(m.clone(), o);
        let mut r = ReaderCore::join(m.clone(), ProcessId::current(), o).unwrap();
        send(&mut w, 112, &Wait::forever()).unwrap(); // activates r
        assert!(read_one(&mut r));
        // Large records, each read at once: the writer never waits.
        for _ in 0..8 {
            send(&mut w, BIG, &Wait::forever()).unwrap();
            assert!(read_one(&mut r));
        }
        // Left raised, as a wait that failed (no_wait, timeout) leaves it.
        let want = &m.ctrl().status.want_space;
        want.store(1, Ordering::Relaxed);
        for _ in 0..8 {
            send(&mut w, BIG, &Wait::forever()).unwrap();
            assert!(read_one(&mut r));
        }
        assert_eq!(
            want.load(Ordering::Relaxed),
            0,
            "want_space stayed raised though the writer always had room"
        );
    }
}

/// Regressions from the third adversarial review: the clear-ahead frontier
/// against short, abandoned, forgotten and wrapping reservations (unit tests
/// and proptests with every inner line forged to look like a record).
#[cfg(all(test, not(loom)))]
#[path = "clear_ahead_tests.rs"]
mod clear_ahead_tests;
