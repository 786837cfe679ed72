//! What the ranks of one group on one host share: a [`SharedRegion`]
//! made by the host's first rank, where they meet for barriers and pass
//! broadcasts, waiting on futexes (a short spin or a few milliseconds of
//! yielding, then parked: no core is burnt for long while a rank waits).
//! Each rank holds a lease named by its place
//! on the host, so a rank that died is seen at once, whatever killed it.
//!
//! Layout (every field at a fixed offset; the region's bytes can be
//! written by any process of the user, so lengths read back are checked
//! against this rank's own figures):
//!
//! | offset | what |
//! |---|---|
//! | 0 | magic, ranks on the host, buffer bytes, broken |
//! | 64 | barrier: ranks arrived |
//! | 128 | barrier: generation (the futex word), failed generation, sleepers, who runs the part across hosts (144) |
//! | 192 | broadcast: generation (futex), chunk length, failed generation, sleepers, value length |
//! | 256 | broadcast: readers done (futex), sleepers |
//!
//! A waiter spins a little (only with a core per rank), yields its core a
//! little (up to 10 ms when ranks share cores), then parks on the
//! futex, counted as a sleeper: a waker makes the system call only when
//! somebody sleeps.
//! | 320 + 64 i | rank i's slot: the barrier generation it arrived at |
//! | after the slots | [`LOCKS`] locks of 128 bytes, then per place and lock the ticket it holds or waits with |
//! | page after those | the broadcast buffer |

use crate::error::{Error, Result};
use crate::ticket::{Skipped, Ticketing};
use shoal_shm_ring::{futex_wait, futex_wake, SegmentName, SharedRegion};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// "SHOALND2": the second layout (locks marked with their tickets).
const MAGIC: u64 = 0x5348_4f41_4c4e_4432;
/// Set once a rank's group broke (an earlier collective failed on it):
/// every wait of the host's ranks ends failed from then on.
const BROKEN: usize = 24;
const ARRIVED: usize = 64;
/// The smallest broadcast buffer (a smaller one asked for is this).
const MIN_BUFFER: usize = 4096;
const BAR_GEN: usize = 128;
const BAR_FAILED: usize = 132;
const BAR_SLEEP: usize = 136;
/// The rank running a barrier's part across hosts: its generation above,
/// its place + 1 below (so the others, which have all arrived, look at
/// its lease while they wait for it).
const BAR_RUNNER: usize = 144;
const BC_GEN: usize = 192;
const BC_LEN: usize = 200;
const BC_FAILED: usize = 208;
const BC_SLEEP: usize = 212;
const BC_TOTAL: usize = 216;
const BC_DONE: usize = 256;
const DONE_SLEEP: usize = 260;
const SLOTS: usize = 320;
const SLOT: usize = 64;

/// How long a waiter spins before it yields.
const SPIN: u32 = 20_000;
/// How long a waiter yields its core before it parks, when every rank of
/// the host has a core of its own (after its spin): a wake-up through the
/// kernel costs more than most waits in a collective, but an idle rank
/// must not burn a core.
const YIELD: Duration = Duration::from_micros(50);
/// How long a waiter yields its core before it parks, when the host's
/// ranks share cores (no spin). Yielding there gives the core to the
/// ranks waited for, which need it, so it costs little; parking costs
/// more than on a host with a core per rank: a rank that parks can leave
/// its (virtual) CPU halted, its wake-up then takes tens of microseconds,
/// and the ranks waiting on it park in turn. Measured on this project's
/// 2-core VM, a 4-rank barrier loop took about twice as long with a 50 us
/// window as with this one (5 ms measured between the two). An idle rank
/// still parks after it: at most 10 ms of yielding per wait.
const YIELD_SHARED: Duration = Duration::from_millis(10);

/// How long one park lasts before the waiter looks at its deadline and
/// its peers' leases.
const PARK: Duration = Duration::from_millis(20);

/// This rank's view of its host's shared state.
pub(crate) struct Node {
    region: SharedRegion,
    /// Ranks of the group on this host, and this rank's place among them.
    local: u32,
    me: u32,
    buffer: usize,
    /// Looks a waiter makes before it yields: many when every rank of the
    /// host has a core of its own, none when they share cores (spinning
    /// then takes the core from the rank waited for).
    spin: u32,
    /// How long a wait yields before it parks ([`YIELD`] or
    /// [`YIELD_SHARED`]).
    yield_for: Duration,
}

/// [`Node::yield_for`] for `local` ranks on this host.
fn yield_for(local: u32) -> Duration {
    if spin_for(local) == 0 {
        YIELD_SHARED
    } else {
        YIELD
    }
}

/// [`Node::spin`] for `local` ranks on this host.
fn spin_for(local: u32) -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if local as usize <= cpus {
        SPIN
    } else {
        0
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("region", self.region.name())
            .field("local", &self.local)
            .field("me", &self.me)
            .finish()
    }
}

/// Bytes before the buffer.
fn buffer_at(local: u32) -> usize {
    (locks_at(local) + LOCKS * LOCK + 8 * LOCKS * local as usize).next_multiple_of(4096)
}

/// Bytes before the lock table (see [`crate::lock`]'s shared-memory
/// locks): after the slots.
fn locks_at(local: u32) -> usize {
    (SLOTS + SLOT * local as usize).next_multiple_of(64)
}

/// Locks a host's shared state holds (more names go through the
/// rendezvous).
pub(crate) const LOCKS: usize = 32;
/// Bytes of one lock: a line its waiters watch (the ticket served, the
/// futex word counting its moves, the sleepers), apart from the line its
/// takers and holder write (the next ticket, the holder, when it got
/// it, a dead holder's record), so that taking a ticket or recording a
/// holder does not pull the line every waiter spins on away from them.
const LOCK: usize = 128;
/// The lock's name (its hash), claimed once.
const L_NAME: usize = 0;
const L_NEXT: usize = 8;
/// The holder's mark (its place and ticket).
const L_HOLDER: usize = 16;
/// A dead holder's record (its place, and the ticket it is for).
const L_DIED: usize = 24;
const L_SINCE: usize = 32;
// 40: unused (the first layout's second word of the record).
/// The last ticket granted (a record is for a ticket after it).
const L_GRANTED: usize = 48;
const L_SERVING: usize = 64;
const L_WORD: usize = 72;
const L_SLEEPERS: usize = 76;

/// Why a wait ended without its event.
pub(crate) enum Stop {
    /// Past the deadline; these local places had not come.
    Timeout(Vec<u32>),
    /// These local places' processes are gone.
    Dead(Vec<u32>),
    /// The event failed elsewhere (the generation was marked failed).
    Failed,
}

impl Node {
    /// Creates the host's state, for `local` ranks with a broadcast
    /// buffer of `buffer` bytes, as place 0.
    pub(crate) fn create(local: u32, buffer: usize) -> Result<Node> {
        let buffer = buffer.max(MIN_BUFFER);
        let len = buffer_at(local) + buffer;
        let region = SharedRegion::create(len as u64, "shoal-node")?;
        let n = Node {
            region,
            local,
            me: 0,
            buffer,
            spin: spin_for(local),
            yield_for: yield_for(local),
        };
        // SAFETY: offsets 0..24 are inside the region (at least a page),
        // 8-aligned; nobody else has its name yet.
        unsafe {
            let p = n.region.as_ptr();
            (p as *mut u64).write(MAGIC);
            (p.add(8) as *mut u32).write(local);
            (p.add(16) as *mut u64).write(buffer as u64);
        }
        // No broadcast yet: the buffer is free (every reader "done").
        n.u32_at(BC_DONE).store(local - 1, Ordering::Release);
        n.hold()?;
        Ok(n)
    }

    /// Attaches to the host's state `name` as place `me` of `local`.
    pub(crate) fn attach(name: &str, local: u32, me: u32, buffer: usize) -> Result<Node> {
        let buffer = buffer.max(MIN_BUFFER);
        let name: SegmentName = name
            .parse()
            .map_err(|_| Error::BadArguments(format!("{name:?} is not a region name")))?;
        let region = SharedRegion::attach(&name)?;
        if region.len() < buffer_at(local) + buffer {
            return Err(Error::Malformed {
                what: "the host's shared state",
                why: format!("{} bytes, fewer than {} ranks need", region.len(), local),
            });
        }
        // SAFETY: the region holds at least one page; the fields are
        // 8-aligned plain integers (read with volatile reads: the creator
        // wrote them before publishing the name).
        let (magic, l, b) = unsafe {
            let p = region.as_ptr();
            (
                (p as *const u64).read_volatile(),
                (p.add(8) as *const u32).read_volatile(),
                (p.add(16) as *const u64).read_volatile(),
            )
        };
        if magic != MAGIC || l != local || b != buffer as u64 {
            return Err(Error::Malformed {
                what: "the host's shared state",
                why: format!(
                    "magic {magic:#x}, {l} ranks, {b} buffer bytes; expected {MAGIC:#x}, {local}, {buffer}"
                ),
            });
        }
        let n = Node {
            region,
            local,
            me,
            buffer,
            spin: spin_for(local),
            yield_for: yield_for(local),
        };
        n.hold()?;
        // A place is free to attach only once its last process is gone:
        // tickets that process held or waited with are given up (a dead
        // holder's mark still names it to the next holder).
        for slot in 0..LOCKS {
            n.ticket_of(me, slot).store(0, Ordering::SeqCst);
        }
        Ok(n)
    }

    fn hold(&self) -> Result<()> {
        if self.region.hold(self.me)? {
            Ok(())
        } else {
            Err(Error::BadArguments(format!(
                "place {} on this host is taken by a live process",
                self.me
            )))
        }
    }

    /// The region's name (for the other ranks of the host).
    pub(crate) fn name(&self) -> String {
        self.region.name().to_string()
    }

    fn u32_at(&self, at: usize) -> &AtomicU32 {
        debug_assert!(at + 4 <= self.region.len() && at.is_multiple_of(4));
        // SAFETY: every offset used is a 4-aligned field inside the region
        // (the constants above, slots below buffer_at(local), which
        // `attach` checked the region holds); the region is mapped while
        // `self` lives; shared atomics are how processes share it.
        unsafe { &*(self.region.as_ptr().add(at) as *const AtomicU32) }
    }

    fn u64_at(&self, at: usize) -> &AtomicU64 {
        debug_assert!(at + 8 <= self.region.len() && at.is_multiple_of(8));
        // SAFETY: as in `u32_at`, for an 8-aligned field.
        unsafe { &*(self.region.as_ptr().add(at) as *const AtomicU64) }
    }

    fn slot(&self, place: u32) -> &AtomicU32 {
        self.u32_at(SLOTS + SLOT * place as usize)
    }

    /// The places whose processes are gone (their leases free).
    fn dead(&self, among: impl Iterator<Item = u32>) -> Vec<u32> {
        among
            .filter(|p| *p != self.me && !self.region.held(*p))
            .collect()
    }

    /// Waits until `word` is no longer `current`; `pending` names the
    /// places still awaited (for errors), `failed` is the word marking a
    /// failed generation.
    fn wait_change(
        &self,
        word: &AtomicU32,
        sleepers: &AtomicU32,
        current: u32,
        failed: Option<&AtomicU32>,
        end: Instant,
        pending: &dyn Fn() -> Vec<u32>,
    ) -> std::result::Result<(), Stop> {
        let broken = self.u32_at(BROKEN);
        let changed = || {
            if word.load(Ordering::SeqCst) == current {
                if broken.load(Ordering::Acquire) != 0 {
                    return Some(Err(Stop::Failed));
                }
                return None;
            }
            if failed.is_some_and(|f| f.load(Ordering::Acquire) == current.wrapping_add(1)) {
                return Some(Err(Stop::Failed));
            }
            Some(Ok(()))
        };
        // Plain looks, no pause instruction: on this kind of machine a
        // pause costs ~100 cycles, and the word changes within a cache
        // line transfer of the store.
        for _ in 0..self.spin {
            if let Some(r) = changed() {
                return r;
            }
        }
        let yield_end = Instant::now() + self.yield_for;
        loop {
            if let Some(r) = changed() {
                return r;
            }
            let now = Instant::now();
            if now >= end {
                return Err(Stop::Timeout(pending()));
            }
            if now < yield_end {
                std::thread::yield_now();
                continue;
            }
            // SYNC: the sleeper count goes up before the word is looked at
            // again (both SeqCst); a waker stores the word, then reads the
            // count (SeqCst): one of the two sees the other.
            // SYNC B(broken): counted a sleeper first, then the broken
            // mark looked at again (both SeqCst); `set_broken` stores the
            // mark, then reads the count (SeqCst): either this look sees
            // the mark, or `set_broken` sees this sleeper and wakes it
            // until it is gone.
            sleepers.fetch_add(1, Ordering::SeqCst);
            if broken.load(Ordering::SeqCst) != 0 {
                sleepers.fetch_sub(1, Ordering::SeqCst);
                return Err(Stop::Failed);
            }
            let woken = futex_wait(word, current, Some(PARK.min(end - now)));
            sleepers.fetch_sub(1, Ordering::SeqCst);
            if !woken {
                let dead = self.dead(pending().into_iter());
                // The event may have come meanwhile from a place that
                // then went (a barrier's runner that let everyone go and
                // exited): it counts, not the death.
                if let Some(r) = changed() {
                    return r;
                }
                if !dead.is_empty() {
                    return Err(Stop::Dead(dead));
                }
            }
        }
    }

    /// Marks the group broken on this host: the host's ranks waiting in a
    /// collective, or entering one, fail at once instead of waiting for
    /// this rank.
    ///
    /// A wake alone can be lost: a waiter between its last look and its
    /// park sleeps through a wake sent then (its word did not change). A
    /// waiter counts itself a sleeper and looks at the mark again before
    /// it parks (SYNC B(broken) in `wait_change`), so one that missed the
    /// mark is counted here; the wakes are sent again while any sleeper is
    /// counted, for at most one [`PARK`] (after which every waiter looks
    /// again by itself; a sleeper that died stays counted, so a later
    /// call on that host takes the whole bound).
    pub(crate) fn set_broken(&self) {
        self.u32_at(BROKEN).store(1, Ordering::SeqCst);
        let until = Instant::now() + PARK;
        loop {
            let mut sleeping = false;
            for (w, s) in [
                (BAR_GEN, BAR_SLEEP),
                (BC_GEN, BC_SLEEP),
                (BC_DONE, DONE_SLEEP),
            ] {
                sleeping |= self.u32_at(s).load(Ordering::SeqCst) > 0;
                futex_wake(self.u32_at(w), u32::MAX);
            }
            if !sleeping || Instant::now() >= until {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Wakes the sleepers on `word` (after it changed), if any.
    fn wake(word: &AtomicU32, sleepers: &AtomicU32, n: u32) {
        if sleepers.load(Ordering::SeqCst) > 0 {
            futex_wake(word, n);
        }
    }

    /// The local part of a barrier: waits until every rank of the host
    /// arrived; the last to arrive runs `across` (the hosts' barrier)
    /// before it lets the others go. Its error is every rank's.
    pub(crate) fn barrier(
        &self,
        timeout: Duration,
        across: impl FnOnce() -> Result<()>,
    ) -> std::result::Result<(), BarrierError> {
        let end = Instant::now() + timeout;
        let gen = self.u32_at(BAR_GEN);
        let g = gen.load(Ordering::Acquire);
        self.slot(self.me)
            .store(g.wrapping_add(1), Ordering::Relaxed);
        let arrived = self.u32_at(ARRIVED).fetch_add(1, Ordering::AcqRel) + 1;
        if arrived >= self.local {
            self.u32_at(ARRIVED).store(0, Ordering::Relaxed);
            self.u64_at(BAR_RUNNER).store(
                u64::from(g) << 32 | u64::from(self.me + 1),
                Ordering::Release,
            );
            let r = across();
            // The failed mark names this generation, or (success) one that
            // is not the next: a mark left by an old failure would match
            // again once the generation wraps.
            let mark = if r.is_err() { g.wrapping_add(1) } else { g };
            self.u32_at(BAR_FAILED).store(mark, Ordering::Release);
            gen.store(g.wrapping_add(1), Ordering::SeqCst);
            Node::wake(gen, self.u32_at(BAR_SLEEP), u32::MAX);
            return r.map_err(BarrierError::Across);
        }
        // Who holds the barrier up: the places that have not arrived; once
        // all have, the one running the part across hosts (or, before it
        // said so, or if it died between its arrival and its count, every
        // other place): their leases are looked at while this one waits,
        // so a death anywhere is named, not waited out.
        let not_come = || -> Vec<u32> {
            (0..self.local)
                .filter(|p| self.slot(*p).load(Ordering::Relaxed) != g.wrapping_add(1))
                .collect()
        };
        let pending = || {
            let missing = not_come();
            if !missing.is_empty() {
                return missing;
            }
            let runner = self.u64_at(BAR_RUNNER).load(Ordering::Acquire);
            match ((runner >> 32) as u32, (runner as u32).checked_sub(1)) {
                (rg, Some(p)) if rg == g && p < self.local => vec![p],
                _ => (0..self.local).filter(|p| *p != self.me).collect(),
            }
        };
        self.wait_change(
            gen,
            self.u32_at(BAR_SLEEP),
            g,
            Some(self.u32_at(BAR_FAILED)),
            end,
            &pending,
        )
        .map_err(|stop| match stop {
            // Out of time with every place here: the part across hosts
            // did not end (the one running it is alive, or it would be
            // named dead).
            Stop::Timeout(_) => Stop::Timeout(not_come()),
            stop => stop,
        })
        .map_err(BarrierError::Local)
    }

    /// The local part of a broadcast, by the rank that has the value on
    /// this host: passes `value` through the buffer, a chunk at a time
    /// (each once every other rank of the host took the last one).
    /// `Err(())` instead of a value tells the readers the broadcast
    /// failed.
    ///
    /// Returns the generation the broadcast left (the putter's `last` for
    /// its next [`take`](Self::take)).
    pub(crate) fn put(
        &self,
        value: std::result::Result<&[u8], ()>,
        timeout: Duration,
    ) -> std::result::Result<u32, Stop> {
        let end = Instant::now() + timeout;
        let Ok(bytes) = value else {
            return self.put_chunk(Err(()), 0, end);
        };
        let mut at = 0;
        loop {
            let n = (bytes.len() - at).min(self.buffer);
            let g = self.put_chunk(Ok(&bytes[at..at + n]), bytes.len() as u64, end)?;
            at += n;
            if at >= bytes.len() {
                return Ok(g);
            }
        }
    }

    fn put_chunk(
        &self,
        chunk: std::result::Result<&[u8], ()>,
        total: u64,
        end: Instant,
    ) -> std::result::Result<u32, Stop> {
        let gen = self.u32_at(BC_GEN);
        let done = self.u32_at(BC_DONE);
        let g = gen.load(Ordering::Acquire);
        // The readers of the last chunk (every other rank of the host)
        // counted themselves done: the buffer is free.
        let readers = self.local - 1;
        loop {
            let d = done.load(Ordering::Acquire);
            if d >= readers {
                break;
            }
            let all: Vec<u32> = (0..self.local).collect();
            self.wait_change(done, self.u32_at(DONE_SLEEP), d, None, end, &|| all.clone())?;
        }
        done.store(0, Ordering::Relaxed);
        match chunk {
            Ok(b) => {
                debug_assert!(b.len() <= self.buffer);
                // SAFETY: the buffer starts at buffer_at(local) and holds
                // `self.buffer` bytes (checked at attach); `b` is at most
                // that long; no reader reads it until the generation moves
                // (Release below), and every reader of the last chunk is
                // done with it.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        b.as_ptr(),
                        self.region.as_ptr().add(buffer_at(self.local)),
                        b.len().min(self.buffer),
                    );
                }
                self.u64_at(BC_LEN).store(b.len() as u64, Ordering::Relaxed);
                self.u64_at(BC_TOTAL).store(total, Ordering::Relaxed);
                // Not the next generation: see `barrier`.
                self.u32_at(BC_FAILED).store(g, Ordering::Relaxed);
            }
            Err(()) => self
                .u32_at(BC_FAILED)
                .store(g.wrapping_add(1), Ordering::Relaxed),
        }
        gen.store(g.wrapping_add(1), Ordering::SeqCst);
        Node::wake(gen, self.u32_at(BC_SLEEP), u32::MAX);
        Ok(g.wrapping_add(1))
    }

    /// The local part of a broadcast, by a rank that reads it: the
    /// value's bytes, a chunk at a time, appended to `out` (at most
    /// `max` bytes: a longer value is read through and refused); `from`
    /// is the place of the rank that puts it, `last` the generation this
    /// rank saw last.
    pub(crate) fn take(
        &self,
        from: u32,
        timeout: Duration,
        last: &mut u32,
        max: usize,
        out: &mut rkyv::util::AlignedVec,
    ) -> std::result::Result<(), TakeError> {
        let end = Instant::now() + timeout;
        let mut total = None;
        let mut too_long = false;
        let mut seen = 0u64;
        loop {
            let (len, t) = self.take_chunk(from, end, last, |chunk, t| {
                if t as usize > max {
                    too_long = true;
                } else {
                    if out.is_empty() {
                        out.reserve(t as usize);
                    }
                    out.extend_from_slice(chunk);
                }
            })?;
            let first = *total.get_or_insert(t);
            if (len == 0 && t != 0) || t != first {
                // A chunk of nothing, or a total that changed: not what a
                // putter of this build writes.
                return Err(TakeError::Malformed);
            }
            seen += len as u64;
            if seen >= t {
                break;
            }
        }
        if too_long {
            return Err(TakeError::TooLong(total.unwrap_or_default()));
        }
        Ok(())
    }

    /// One chunk: hands its bytes and the value's length to `take`;
    /// returns the chunk's length and the value's.
    fn take_chunk(
        &self,
        from: u32,
        end: Instant,
        last: &mut u32,
        take: impl FnOnce(&[u8], u64),
    ) -> std::result::Result<(usize, u64), TakeError> {
        let gen = self.u32_at(BC_GEN);
        let g = *last;
        let done = self.u32_at(BC_DONE);
        let waited = self.wait_change(
            gen,
            self.u32_at(BC_SLEEP),
            g,
            Some(self.u32_at(BC_FAILED)),
            end,
            &|| vec![from],
        );
        if let Err(e) = waited {
            if matches!(e, Stop::Failed) {
                // Nothing to read, but this rank is done with the round.
                *last = g.wrapping_add(1);
                done.fetch_add(1, Ordering::SeqCst);
                Node::wake(done, self.u32_at(DONE_SLEEP), 1);
            }
            return Err(TakeError::Stop(e));
        }
        *last = g.wrapping_add(1);
        let len = (self.u64_at(BC_LEN).load(Ordering::Relaxed) as usize).min(self.buffer);
        let total = self.u64_at(BC_TOTAL).load(Ordering::Relaxed);
        // SAFETY: `len` is clamped to the buffer's size (checked at
        // attach); the putter wrote these bytes before the generation
        // moved (Acquire in wait_change) and does not write them again
        // until this rank counts itself done below; the slice does not
        // outlive `take` (which copies it out). Not covered: a process of
        // the same user writing the region outside the protocol.
        let bytes = unsafe {
            std::slice::from_raw_parts(self.region.as_ptr().add(buffer_at(self.local)), len)
        };
        take(bytes, total);
        done.fetch_add(1, Ordering::SeqCst);
        Node::wake(done, self.u32_at(DONE_SLEEP), 1);
        Ok((len, total))
    }

    // The host's locks: FIFO ticket locks, each a slot of the lock table
    // (name, next ticket, the holder's mark, a dead holder's record, when
    // the holder got it, the last ticket granted, the ticket served, a
    // futex word counting the moves of the ticket served and its
    // sleepers), and per place and lock the ticket the place holds or
    // waits with (+1; 0: none; u64::MAX: taking one now). The protocol
    // is `crate::ticket`'s: a ticket whose place is gone (lease free) or
    // that nobody holds is skipped, so a waiter that gave up or died
    // holds up nobody; a holder that died passes the lock on marked.

    fn lock_u64(&self, slot: usize, at: usize) -> &AtomicU64 {
        self.u64_at(locks_at(self.local) + LOCK * slot + at)
    }

    fn lock_u32(&self, slot: usize, at: usize) -> &AtomicU32 {
        self.u32_at(locks_at(self.local) + LOCK * slot + at)
    }

    fn ticket_of(&self, place: u32, slot: usize) -> &AtomicU64 {
        self.u64_at(locks_at(self.local) + LOCK * LOCKS + 8 * (LOCKS * place as usize + slot))
    }

    /// The lock slot named `hash` (nonzero), claimed if new; `None` when
    /// the table is full.
    pub(crate) fn lock_slot(&self, hash: u64) -> Option<usize> {
        let hash = hash | 1;
        for s in 0..LOCKS {
            let name = self.lock_u64(s, L_NAME);
            match name.load(Ordering::Acquire) {
                h if h == hash => return Some(s),
                0 => match name.compare_exchange(0, hash, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return Some(s),
                    Err(h) if h == hash => return Some(s),
                    Err(_) => {}
                },
                _ => {}
            }
        }
        None
    }

    /// Lock `slot`'s words as this place sees them (the protocol: see
    /// [`crate::ticket`]).
    fn ticketing<'a>(
        &'a self,
        slot: usize,
    ) -> Ticketing<'a, AtomicU64, impl Fn(u32) -> &'a AtomicU64, impl Fn(u32) -> bool + 'a> {
        Ticketing {
            next: self.lock_u64(slot, L_NEXT),
            serving: self.lock_u64(slot, L_SERVING),
            holder: self.lock_u64(slot, L_HOLDER),
            record: self.lock_u64(slot, L_DIED),
            granted: self.lock_u64(slot, L_GRANTED),
            tickets: move |p| self.ticket_of(p, slot),
            alive: move |p| self.region.held(p),
            places: self.local,
            me: self.me,
        }
    }

    /// Lock `slot`'s served ticket moved: its waiters look again.
    fn moved(&self, slot: usize) {
        let word = self.lock_u32(slot, L_WORD);
        word.fetch_add(1, Ordering::SeqCst);
        Node::wake(word, self.lock_u32(slot, L_SLEEPERS), u32::MAX);
    }

    /// Skips lock `slot`'s ticket `sv` if its place is gone (see
    /// [`Ticketing::skip_gone`]), naming a dead holder in the log.
    fn skip_gone(&self, slot: usize, sv: u64, who: &dyn Fn(u32) -> (u32, u32)) {
        self.after_skips(slot, &self.ticketing(slot).skip_gone(sv), who);
    }

    /// What skips did, told: waiters woken if `serving` moved, then a
    /// dead holder named in the log (waiters first: a log subscriber that
    /// panics must not leave them parked).
    fn after_skips(&self, slot: usize, s: &Skipped, who: &dyn Fn(u32) -> (u32, u32)) {
        if s.moved {
            self.moved(slot);
        }
        if let Some(p) = s.died {
            log_dead_holder(who(p));
        }
    }

    /// Takes lock `slot` as this place: waits up to `wait` (`None`:
    /// forever; zero: only if free now). `who` names a place's rank and
    /// pid; a holder kept past `notice` is logged once, named.
    pub(crate) fn lock(
        &self,
        slot: usize,
        wait: Option<Duration>,
        notice: Duration,
        who: &dyn Fn(u32) -> (u32, u32),
    ) -> Option<ShmGrant> {
        let l = self.ticketing(slot);
        let word = self.lock_u32(slot, L_WORD);
        let sleepers = self.lock_u32(slot, L_SLEEPERS);
        if wait == Some(Duration::ZERO) {
            // Tickets of waiters that gave up or died are skipped first:
            // only a live holder or waiter makes the lock busy.
            let (free, did) = l.free_now();
            self.after_skips(slot, &did, who);
            if !free {
                return None;
            }
        }
        let t = l.take();
        // Until granted, the ticket is given up however this call ends (a
        // timeout, or a panic in a log subscriber while it waits): a live
        // place's ticket left behind would hold up every later one.
        let mut waiting = Waiting {
            node: self,
            slot,
            ticket: Some(t),
        };
        // The clock is read once the spin is over, unless the wait has a
        // deadline (a hand-off within the spin reads it not at all).
        let mut start = wait.map(|_| Instant::now());
        let end = wait.and_then(|w| start?.checked_add(w.max(Duration::from_micros(1))));
        let mut noticed = false;
        let mut looks = 0u32;
        loop {
            // The futex word counts the moves of `serving`: read first, a
            // move after it changes it, so a park on it misses none.
            let w = word.load(Ordering::SeqCst);
            let sv = l.serving();
            if sv == t {
                break;
            }
            looks += 1;
            if looks < self.spin {
                continue;
            }
            let now = Instant::now();
            let start = *start.get_or_insert(now);
            if end.is_some_and(|e| now >= e) {
                // Given up by `waiting`'s drop (and passed on, if a
                // skipper granted it meanwhile).
                return None;
            }
            // Past the spin: the served ticket's place is looked at (a
            // lease query per place, so not on every look).
            self.skip_gone(slot, sv, who);
            if !noticed && now - start >= notice {
                noticed = true;
                if let Some(h) = l.holder().filter(|h| *h < self.local) {
                    let (rank, pid) = who(h);
                    let since = self.lock_u64(slot, L_SINCE).load(Ordering::Relaxed);
                    tracing::warn!(
                        "shoal lock: rank {rank} (pid {pid}) has held the lock for {:?}; rank {} waits",
                        Duration::from_nanos(mono_ns().saturating_sub(since)),
                        who(self.me).0
                    );
                }
            }
            // (Not the collectives' window: a FIFO lock's waiters behind
            // the next one wait for several holds, and hand-offs measured
            // faster with them parked.)
            if now - start < YIELD {
                std::thread::yield_now();
                continue;
            }
            sleepers.fetch_add(1, Ordering::SeqCst);
            if word.load(Ordering::SeqCst) == w {
                futex_wait(word, w, Some(PARK));
            }
            sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        waiting.ticket = None;
        let died = l.grant(t);
        self.lock_u64(slot, L_SINCE)
            .store(mono_ns(), Ordering::Relaxed);
        Some(ShmGrant {
            died: died.map(who),
            died_place: died,
            ticket: t,
        })
    }

    /// Gives lock `slot` back; `not_repaired`: the place of the dead
    /// holder to name to the next one (the state was not repaired), if
    /// any.
    pub(crate) fn unlock(&self, slot: usize, not_repaired: Option<u32>) {
        if self.ticketing(slot).unlock(not_repaired) {
            self.moved(slot);
        }
    }

    /// This rank's place on the host.
    pub(crate) fn place(&self) -> u32 {
        self.me
    }
}

/// Names, in the log, a holder found dead holding a host lock (by the
/// one skipper that cleared its mark).
fn log_dead_holder((rank, pid): (u32, u32)) {
    tracing::warn!(
        rank,
        pid,
        "shoal lock: its holder died holding it; passed on marked"
    );
}

/// A ticket of a host lock being waited with: given up when dropped
/// before it was granted (`ticket` taken out then).
struct Waiting<'a> {
    node: &'a Node,
    slot: usize,
    ticket: Option<u64>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket {
            if self.node.ticketing(self.slot).give_up(t) {
                self.node.moved(self.slot);
            }
        }
    }
}

/// Why a broadcast's local part gave nothing.
pub(crate) enum TakeError {
    /// The wait ended.
    Stop(Stop),
    /// The value is longer than this rank takes (its length).
    TooLong(u64),
    /// The buffer's fields are not what a putter writes.
    Malformed,
}

/// How a barrier failed.
pub(crate) enum BarrierError {
    /// On this host.
    Local(Stop),
    /// Between hosts (the last rank here ran that part).
    Across(Error),
}

/// A grant of a host lock.
pub(crate) struct ShmGrant {
    /// The dead holder (rank, pid) the lock was left by, if any.
    pub(crate) died: Option<(u32, u32)>,
    /// Its place on the host.
    pub(crate) died_place: Option<u32>,
    /// The grant's ticket (its place in request order).
    pub(crate) ticket: u64,
}

/// This host's monotonic clock in ns (one clock for every process; the
/// coarse one, a few ms fine and cheaper to read: it times the stall
/// notice only).
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A holder dies while the ticket after its own belongs to a waiter
    /// that gave up: the record of the death, meant for that ticket,
    /// reaches the next holder instead of being lost with the skip.
    #[test]
    fn a_dead_holder_is_reported_past_a_ticket_given_up() {
        let c = Node::create(3, 0).unwrap();
        let name = c.name();
        let a = Node::attach(&name, 3, 1, 0).unwrap();
        let b = Node::attach(&name, 3, 2, 0).unwrap();
        let slot = c.lock_slot(42).unwrap();
        let who = |p: u32| (p, 1000 + p);
        let notice = Duration::from_secs(60);
        let held = a.lock(slot, None, notice, &who).unwrap();
        assert_eq!(held.died, None);
        // b's ticket comes next; b gives up waiting.
        assert!(b
            .lock(slot, Some(Duration::from_millis(20)), notice, &who)
            .is_none());
        let waiter = std::thread::spawn(move || {
            c.lock(slot, Some(Duration::from_secs(20)), notice, &who)
                .map(|g| g.died)
        });
        std::thread::sleep(Duration::from_millis(50));
        // a dies holding the lock (its lease goes with it).
        drop(a);
        assert_eq!(waiter.join().unwrap(), Some(Some((1, 1001))));
    }

    // The wake path only: the race the repeated wakes close (a waiter
    // between its last look and its park) is too narrow to hit on demand.
    #[test]
    fn a_broken_mark_wakes_parked_waiters_at_once() {
        let first = Node::create(3, 0).unwrap();
        let name = first.name();
        let waiters: Vec<_> = (1..3u32)
            .map(|me| {
                let name = name.clone();
                std::thread::spawn(move || {
                    let n = Node::attach(&name, 3, me, 0).unwrap();
                    let r = n.barrier(Duration::from_secs(20), || Ok(()));
                    (
                        matches!(r, Err(BarrierError::Local(Stop::Failed))),
                        Instant::now(),
                    )
                })
            })
            .collect();
        // Past the waiters' yielding: parked.
        std::thread::sleep(YIELD_SHARED + Duration::from_millis(100));
        let marked = Instant::now();
        first.set_broken();
        // Wakes again while a sleeper is counted, for one park at most.
        assert!(
            marked.elapsed() < Duration::from_secs(1),
            "{:?}",
            marked.elapsed()
        );
        for w in waiters {
            let (failed, at) = w.join().unwrap();
            assert!(failed, "the waiter did not fail");
            let after = at.duration_since(marked);
            assert!(after < Duration::from_secs(1), "{after:?}");
        }
    }
}
