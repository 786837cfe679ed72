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

use crate::error::{Error, Result};
use crate::futex;
use crate::liveness::ProcessId;
use crate::segment::Segment;
use crate::sync::{AtomicU32, Ordering};
use crate::wait::EventCount;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

const IDLE: u32 = 0;
const ARMED: u32 = 1;
const STOP: u32 = 2;

/// How long the helper sleeps before looking at the peer and the stop flag.
const SLICE: Duration = Duration::from_millis(50);

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
    /// The peer whose death should wake the caller, if any.
    peer: Option<ProcessId>,
}

// SAFETY: the segment is shared memory accessed through atomics only; the
// eventfd is a plain fd; everything else is atomics.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    fn ec(&self) -> &EventCount {
        // SAFETY: `ec_offset` is the offset of the data eventcount inside
        // the validated control structure of this segment's kind, which lies
        // inside the mapping `seg` keeps alive.
        unsafe { &*(self.seg.control_ptr().add(self.ec_offset) as *const EventCount) }
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
    pub(crate) fn new(seg: Segment, ec_offset: usize, peer: Option<ProcessId>) -> Result<Self> {
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
            peer,
        });
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("shoal-ready".into())
            .spawn(move || helper(&s2))
            .map_err(|source| Error::Io {
                op: "spawn readiness thread",
                source,
            })?;
        Ok(ReadyFd {
            shared,
            thread: Some(thread),
        })
    }

    /// The eventfd to register with an event loop (readable = look again).
    pub fn as_raw_fd(&self) -> RawFd {
        self.shared.efd.as_raw_fd()
    }

    /// Registers interest: the fd turns readable at the next notify of the
    /// ring (or its close, or the watched peer's death). Re-check the ring
    /// after this call and before waiting on the fd. Arming while armed
    /// does nothing.
    pub fn arm(&self) {
        let s = &self.shared;
        if s.state.load(Ordering::Acquire) == ARMED {
            return;
        }
        // Registered here, in the caller's thread, so the caller's re-check
        // that follows closes the race (see `wait`'s eventcount).
        let key = s.ec().prepare();
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
        // Wake the helper if it sleeps on the ring (others sleeping there
        // wake spuriously, re-check and sleep again).
        s.ec().wake_sleepers();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The helper thread: sleep until armed, then on the ring until notified.
fn helper(s: &Shared) {
    loop {
        match s.state.load(Ordering::Acquire) {
            STOP => {
                if s.registered.swap(0, Ordering::AcqRel) == 1 {
                    s.ec().unregister();
                }
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
        while !ec.changed(key) {
            ec.sleep(key, SLICE);
            if s.state.load(Ordering::Acquire) == STOP {
                stop = true;
                break;
            }
            if ec.changed(key) {
                break;
            }
            if s.peer.is_some_and(|p| !p.is_alive()) {
                break;
            }
        }
        s.registered.store(0, Ordering::Release);
        ec.unregister();
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
