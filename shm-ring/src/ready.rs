//! A file descriptor that becomes readable when a ring may have something
//! for a reader or consumer, so async runtimes (epoll, tokio's `AsyncFd`)
//! can await a ring without a thread of their own blocking on it.
//!
//! A ring's waiters sleep on a futex, which no event loop can poll. A
//! [`ReadyFd`] owns an eventfd and one helper thread. [`ReadyFd::arm`]
//! registers interest on the ring's data eventcount *in the caller's
//! thread* (so the usual re-check closes the race, exactly as for a
//! blocking waiter) and hands the wait to the helper, which sleeps on the
//! futex and signals the eventfd when the writer notifies (or closes, or
//! dies). While nobody is armed nothing is registered, so commits stay free
//! of system calls.
//!
//! The loop an async caller runs:
//! 1. `try_recv()`; if a record is there, done.
//! 2. `arm()`, then `try_recv()` again; if a record is there, done.
//! 3. Await readability of `as_raw_fd()`, call `clear()`, go to 1. After a
//!    wake with nothing to read, check the peer (for example
//!    [`BroadcastReader::writer_alive`](crate::BroadcastReader::writer_alive)).
//!
//! Every armed wait is bounded: besides notifies, the fd turns readable when
//! the broadcast writer's lease is dropped (it died), and, for an MPMC
//! consumer, at least every `orphan_timeout` while the record at the head of
//! the queue stays reserved, so the consumer's next `try_take` can judge
//! (and skip) a dead producer's reservation.

use crate::error::{Error, Result};
use crate::futex;
use crate::layout::{rec, MpmcControl, RecordHeader, RECORD_ALIGN};
use crate::layout::{slot, Own};
use crate::lease;
use crate::segment::Segment;
use crate::sync::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use crate::wait::{EventCount, Waiter};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

const IDLE: u32 = 0;
const ARMED: u32 = 1;
const STOP: u32 = 2;

/// How long the helper sleeps before looking at the peer and the stop flag.
const SLICE: Duration = Duration::from_millis(50);

/// Offset, from the control area, of slot `i`'s ownership word in a ring
/// whose control structure is `C`.
pub(crate) fn slot_own_offset<C>(i: usize) -> usize {
    std::mem::size_of::<C>()
        + i * std::mem::size_of::<crate::pad::CachePadded<crate::layout::Slot>>()
        + std::mem::offset_of!(crate::layout::Slot, own)
}

/// What, besides a notify, makes an armed fd readable.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Recheck {
    /// The broadcast writer's lease is free (it died).
    WriterLease,
    /// The MPMC record at head stayed RESERVED for `every`: the consumer
    /// should look again, to judge its producer.
    MpmcHead { every: Duration },
    /// Every `every` at least (an MPMC producer waiting for space: only a
    /// producer's next try reclaims the records of dead consumers).
    Every(Duration),
}

struct Shared {
    efd: OwnedFd,
    /// The ring mapping the helper sleeps in (its own attach, so the
    /// endpoint's lifetime does not bind the thread's).
    seg: Segment,
    /// Byte offset of the data eventcount from the control area.
    ec_offset: usize,
    state: AtomicU32,
    key: AtomicU32,
    /// 1 while a registration made by `arm` is outstanding (only the helper
    /// undoes it).
    registered: AtomicU32,
    /// This endpoint's bit in the eventcount's waiter map.
    waiter: Waiter,
    recheck: Recheck,
    /// Offset of the endpoint's slot ownership word from the control area,
    /// and the generation the endpoint owns: the bit is only ever touched
    /// while the slot is still the endpoint's.
    own_offset: usize,
    gen: u32,
    /// Cleared when this `ReadyFd` is dropped: one per endpoint at a time.
    taken: Arc<AtomicBool>,
}

// SAFETY: `Shared` holds a `Segment` (a mapping whose pointer is never
// mutated; the helper only touches the eventcount and, read-only, the MPMC
// head through atomics), an owned fd, and atomics; none of them is tied to
// the thread that made it.
unsafe impl Send for Shared {}
// SAFETY: shared access goes through atomics and fd syscalls only.
unsafe impl Sync for Shared {}

impl Shared {
    fn ec(&self) -> &EventCount {
        // SAFETY: `ec_offset` is the offset of the data eventcount inside
        // the validated control structure of this segment's kind, which lies
        // inside the mapping `seg` keeps alive.
        unsafe { &*(self.seg.control_ptr().add(self.ec_offset) as *const EventCount) }
    }

    /// Whether the endpoint still owns its slot (same generation, in use).
    fn owns(&self) -> bool {
        // SAFETY: `own_offset` is the offset of a slot's ownership word
        // inside the validated control area of this segment (computed from
        // the slot index the endpoint claimed); the mapping lives as long as
        // `seg`. Any bit pattern is a valid `AtomicU64`.
        let own = unsafe { &*(self.seg.control_ptr().add(self.own_offset) as *const AtomicU64) };
        let o = Own::unpack(own.load(Ordering::Acquire));
        o.gen == self.gen && o.state != slot::FREE
    }

    /// Withdraws the registration, if it is still this endpoint's to withdraw.
    fn unregister(&self) {
        if self.registered.swap(0, Ordering::AcqRel) == 1 && self.owns() {
            self.ec().unregister(self.waiter);
        }
    }

    /// Whether the MPMC record at head is a reservation (read-only peek).
    fn head_reserved(&self) -> bool {
        let ctrl = self.seg.control_ptr() as *const MpmcControl;
        // SAFETY: `Recheck::MpmcHead` is only used with a validated MPMC
        // segment, whose control area starts with an `MpmcControl` (zeroed
        // memory is a valid value: atomics) inside the mapping.
        let head = unsafe { (*ctrl).head.load(Ordering::Acquire) };
        let cap = self.seg.header().data_capacity;
        let off = (head & (cap - 1)) & !(RECORD_ALIGN as u64 - 1);
        // SAFETY: `off` is 64-aligned and below the data capacity validated
        // at attach, so a 16-byte header lies inside the data area.
        let h = unsafe { &*(self.seg.data_ptr().add(off as usize) as *const RecordHeader) };
        let c = h.commit.load(Ordering::Acquire);
        c & rec::MASK == rec::RESERVED && c & !rec::MASK == head
    }

    /// Whether the armed wait should end now, besides a notify.
    /// Whether an MPMC ring's claims are closed and its work not yet over:
    /// only a consumer's look can find that an owing producer died (no
    /// notify comes), so the consumer must look again.
    fn work_pending(&self) -> bool {
        let ctrl = self.seg.control_ptr() as *const MpmcControl;
        // SAFETY: `Recheck::MpmcHead` is only used with a validated MPMC
        // segment, whose control area starts with an `MpmcControl` (zeroed
        // memory is a valid value: atomics) inside the mapping this
        // Shared holds.
        let w = unsafe { &(*ctrl).work };
        w.claims_closed.load(Ordering::Acquire) != 0 && w.outcome.load(Ordering::Acquire) == 0
    }

    fn recheck_due(&self, armed_at: Instant) -> bool {
        match self.recheck {
            Recheck::WriterLease => !lease::held_by_other(self.seg.fd(), lease::OWNER, 1),
            Recheck::MpmcHead { every } => {
                armed_at.elapsed() >= every && (self.head_reserved() || self.work_pending())
            }
            Recheck::Every(every) => armed_at.elapsed() >= every,
        }
    }

    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one` to our eventfd; EAGAIN (counter
        // full) only means it is already readable.
        unsafe { libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// An eventfd that turns readable when the ring it watches may have data.
/// See the module documentation for the protocol.
pub struct ReadyFd {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ReadyFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyFd")
            .field("fd", &self.shared.efd.as_raw_fd())
            .finish()
    }
}

impl ReadyFd {
    /// Watches the data eventcount at `ec_offset` in the control area of
    /// `seg` (a fresh mapping of the endpoint's segment).
    pub(crate) fn new(
        seg: Segment,
        ec_offset: usize,
        waiter: Waiter,
        recheck: Recheck,
        own_offset: usize,
        gen: u32,
        taken: Arc<AtomicBool>,
    ) -> Result<Self> {
        if taken.swap(true, Ordering::AcqRel) {
            return Err(Error::InvalidConfig(
                "this endpoint already has a ReadyFd; drop it before making another",
            ));
        }
        // Until the `ReadyFd` exists (and its drop resets the flag), a
        // failure must give the flag back.
        let give_back = taken.clone();
        let r = (move || -> Result<Self> {
            // SAFETY: eventfd has no memory preconditions.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if fd < 0 {
                return Err(Error::last_os("eventfd"));
            }
            // SAFETY: `fd` is a fresh descriptor we own.
            let efd = unsafe { OwnedFd::from_raw_fd(fd) };
            let shared = Arc::new(Shared {
                efd,
                seg,
                ec_offset,
                state: AtomicU32::new(IDLE),
                key: AtomicU32::new(0),
                registered: AtomicU32::new(0),
                waiter,
                recheck,
                own_offset,
                gen,
                taken,
            });
            let s2 = shared.clone();
            let thread = std::thread::Builder::new()
                .name("shoal-ready".into())
                .spawn(move || helper(&s2))
                .map_err(|source| Error::Io {
                    op: "spawn readiness thread",
                    path: crate::error::SegmentLabel(None),
                    source,
                })?;
            Ok(ReadyFd {
                shared,
                thread: Some(thread),
            })
        })();
        if r.is_err() {
            give_back.store(false, Ordering::Release);
        }
        r
    }

    /// The eventfd to register with an event loop (readable = look again).
    pub fn as_raw_fd(&self) -> RawFd {
        self.shared.efd.as_raw_fd()
    }

    /// Registers interest: the fd turns readable at the next notify of the
    /// ring (or its close, or the watched peer's death). Re-check the ring
    /// after this call and before waiting on the fd. Arming while armed
    /// does nothing; two threads arming at once register one waiter.
    pub fn arm(&self) {
        let s = &self.shared;
        if s.state.load(Ordering::Acquire) == ARMED {
            return;
        }
        if !s.owns() {
            // The endpoint lost its slot: its next call says so.
            s.signal();
            return;
        }
        // Registered here, in the caller's thread, so the caller's re-check
        // that follows closes the race (see `wait`'s eventcount). The
        // registration is this endpoint's bit: arming twice sets it twice.
        let key = s.ec().prepare(s.waiter);
        s.key.store(key, Ordering::Relaxed);
        s.registered.store(1, Ordering::Relaxed);
        s.state.store(ARMED, Ordering::Release);
        futex::wake(&s.state, 1);
    }

    /// Consumes a pending readiness signal (call after the fd was readable).
    pub fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into `v` from our non-blocking eventfd;
        // EAGAIN just means nothing was pending.
        unsafe { libc::read(self.shared.efd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

impl AsRawFd for ReadyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.shared.efd.as_raw_fd()
    }
}

impl Drop for ReadyFd {
    fn drop(&mut self) {
        let s = &self.shared;
        s.state.store(STOP, Ordering::Release);
        futex::wake(&s.state, 1);
        // Wake the helper if it sleeps on the ring, moving the sequence so
        // that a helper between its stop check and its sleep does not sleep
        // (others sleeping there wake spuriously, re-check and sleep again).
        s.ec().notify_always();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Only now (the helper withdrew its registration) may another
        // `ReadyFd` of this endpoint register the same bit.
        s.taken.store(false, Ordering::Release);
    }
}

/// The helper thread: sleep until armed, then on the ring until notified.
fn helper(s: &Shared) {
    loop {
        match s.state.load(Ordering::Acquire) {
            STOP => {
                s.unregister();
                return;
            }
            IDLE => {
                futex::wait(&s.state, IDLE, Some(SLICE));
                continue;
            }
            _ => {}
        }
        let key = s.key.load(Ordering::Relaxed);
        let ec = s.ec();
        let mut stop = false;
        let armed_at = Instant::now();
        let slice = match s.recheck {
            Recheck::MpmcHead { every } | Recheck::Every(every) => {
                SLICE.min(every).max(Duration::from_millis(1))
            }
            Recheck::WriterLease => SLICE,
        };
        let mut slice = slice;
        while !ec.changed(key) {
            ec.sleep(key, slice);
            if matches!(s.recheck, Recheck::WriterLease) {
                // Idle: only the writer's death is left to notice; look less
                // often (a notify still wakes us at once).
                slice = (slice * 2).min(crate::wait::IDLE_CHECK_MAX);
            }
            if s.state.load(Ordering::Acquire) == STOP {
                stop = true;
                break;
            }
            if ec.changed(key) || s.recheck_due(armed_at) {
                break;
            }
            // Our bit may have been cleared under us (a repair or eviction
            // racing a takeover): a notify may have found nobody. Wake the
            // caller to look again rather than sleep on, unregistered.
            if !s.owns() || !ec.is_registered(s.waiter) {
                break;
            }
        }
        s.unregister();
        if stop {
            return;
        }
        // Back to idle before signalling, so an arm() that follows the
        // wake registers anew.
        let _ = s
            .state
            .compare_exchange(ARMED, IDLE, Ordering::AcqRel, Ordering::Relaxed);
        s.signal();
    }
}
