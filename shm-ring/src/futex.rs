//! Cross-process futex wait and wake on a word in shared memory.
//!
//! The futex is always *shared* (no `FUTEX_PRIVATE_FLAG`): the kernel keys a
//! shared futex by the physical page, so a waiter in one process is found by a
//! waker in another even when the segment is mapped at different addresses.
//! `atomic-wait` and `rustix-futex-sync` hard-code private futexes, which
//! silently never wake across processes; that is why this module exists.
//!
//! Under `cfg(loom)` the futex is modelled by one mutex and condition
//! variable: the compare-and-sleep is atomic with respect to wakes, exactly
//! the guarantee `FUTEX_WAIT` gives, and timeouts are ignored, so a lost
//! wake-up shows up as a deadlock in the model checker.

use crate::sync::AtomicU32;
use std::time::Duration;

/// Why a futex wait returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitResult {
    /// Woken, the word differed, or the wait was interrupted: re-check.
    Woken,
    /// The timeout elapsed.
    TimedOut,
}

/// Sleeps while `*word == expected`, for at most `timeout`.
#[cfg(not(loom))]
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> WaitResult {
    let ts;
    let ts_ptr = match timeout {
        Some(d) => {
            ts = libc::timespec {
                tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            };
            &ts as *const libc::timespec
        }
        None => std::ptr::null(),
    };
    // SAFETY: `word` is a live, 4-byte aligned AtomicU32 for the duration of
    // the call; FUTEX_WAIT only reads it. `ts_ptr` is null or points to `ts`,
    // which outlives the call. The futex is shared (no PRIVATE flag) on
    // purpose: the word lives in memory mapped by several processes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word as *const AtomicU32 as *const u32,
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT) {
        WaitResult::TimedOut
    } else {
        WaitResult::Woken
    }
}

/// Wakes up to `n` waiters sleeping on `word`; returns how many were woken.
#[cfg(not(loom))]
pub(crate) fn wake(word: &AtomicU32, n: u32) -> u32 {
    let n = n.min(i32::MAX as u32) as i32;
    // SAFETY: `word` is a live AtomicU32; FUTEX_WAKE does not access memory
    // through the pointer, it only uses the address as a key.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word as *const AtomicU32 as *const u32,
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    r.max(0) as u32
}

#[cfg(loom)]
mod model {
    use loom::sync::{Condvar, Mutex};
    loom::lazy_static! {
        pub(super) static ref FUTEX: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());
    }
}

/// Loom model of `FUTEX_WAIT`: compare and sleep under one lock.
#[cfg(loom)]
pub(crate) fn wait(word: &AtomicU32, expected: u32, _timeout: Option<Duration>) -> WaitResult {
    use crate::sync::Ordering;
    let (lock, cv) = &*model::FUTEX;
    let guard = lock.lock().unwrap();
    if word.load(Ordering::SeqCst) != expected {
        return WaitResult::Woken;
    }
    drop(cv.wait(guard).unwrap());
    WaitResult::Woken
}

/// Loom model of `FUTEX_WAKE`: wakes every sleeper (spurious wakes are allowed).
#[cfg(loom)]
pub(crate) fn wake(_word: &AtomicU32, _n: u32) -> u32 {
    let (lock, cv) = &*model::FUTEX;
    let _guard = lock.lock().unwrap();
    cv.notify_all();
    1
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::Ordering;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn wait_returns_at_once_when_word_differs() {
        let w = AtomicU32::new(1);
        assert_eq!(wait(&w, 0, Some(Duration::from_secs(5))), WaitResult::Woken);
    }

    #[test]
    fn wait_times_out() {
        let w = AtomicU32::new(0);
        let t = Instant::now();
        assert_eq!(
            wait(&w, 0, Some(Duration::from_millis(20))),
            WaitResult::TimedOut
        );
        assert!(t.elapsed() >= Duration::from_millis(15));
    }

    #[test]
    fn wake_reaches_a_sleeper() {
        let w = Arc::new(AtomicU32::new(0));
        let w2 = w.clone();
        let t = std::thread::spawn(move || {
            while w2.load(Ordering::SeqCst) == 0 {
                wait(&w2, 0, Some(Duration::from_secs(5)));
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        w.store(1, Ordering::SeqCst);
        wake(&w, u32::MAX);
        t.join().unwrap();
    }
}
