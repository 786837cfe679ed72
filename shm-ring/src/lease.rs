//! Proof of life that the kernel keeps: open-file-description locks.
//!
//! Every participant of a ring holds a write lock (`F_OFD_SETLK`) on one
//! byte of the segment file's *lease space*, through a file description it
//! opened itself. The kernel drops the lock when the last descriptor of that
//! description closes, which happens when the process dies, whatever killed
//! it. Locks live on the inode, so they are seen across pid namespaces (two
//! containers sharing `/dev/shm` see each other's leases although each sees
//! the other's pids as dead) and are immune to pid reuse.
//!
//! Byte `LEASE_BASE + 0` is the ring's *owner* (the broadcast writer, or
//! the process that created an MPMC ring); byte `LEASE_BASE + 1 + i` is
//! participant slot `i`. The lease space lies far beyond the end of any
//! segment: locks need not cover existing bytes.
//!
//! What can fool it, and in which direction:
//! - A child forked *without exec* inherits the descriptor and with it the
//!   lock: the parent's death then goes unnoticed until the child exits too
//!   (judged alive too long, never dead too early). The descriptors are
//!   `O_CLOEXEC`, so `exec` drops them.
//! - A live process that closes descriptors it does not own (a daemonizing
//!   `close_range`) drops its leases and is judged dead while alive. The
//!   slot generation carried in every owner-side write keeps such a process
//!   from writing into a slot somebody else took over.

use crate::error::{Error, Result};
use std::os::fd::RawFd;

/// First byte of the lease space (far past any segment's end).
pub(crate) const LEASE_BASE: i64 = 1 << 40;
/// Lease byte of the ring's owner (writer or MPMC creator).
pub(crate) const OWNER: u64 = 0;

/// The lease byte of participant slot `i`.
#[inline]
pub(crate) const fn slot_byte(i: usize) -> u64 {
    1 + i as u64
}

fn flock_for(byte: u64, len: i64, kind: libc::c_int) -> libc::flock {
    // SAFETY: `flock` is a plain C struct; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = LEASE_BASE + byte as i64;
    fl.l_len = len;
    fl.l_pid = 0; // required for OFD locks
    fl
}

/// Takes the lease `byte` through `fd` without waiting. `Ok(false)` if some
/// other open file description holds it.
pub(crate) fn try_take(fd: RawFd, byte: u64) -> Result<bool> {
    let mut fl = flock_for(byte, 1, libc::F_WRLCK);
    // SAFETY: `fl` is a valid flock that outlives the call; fcntl does not
    // keep the pointer.
    let r = unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &mut fl) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(Error::Io {
            op: "fcntl(F_OFD_SETLK)",
            path: crate::error::SegmentLabel(None),
            source: e,
        }),
    }
}

/// Gives up the lease `byte` held through `fd` (no effect if not held).
pub(crate) fn give_up(fd: RawFd, byte: u64) {
    let mut fl = flock_for(byte, 1, libc::F_UNLCK);
    // SAFETY: as in `try_take`.
    unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &mut fl) };
}

/// Whether an open file description other than `fd`'s holds lease `byte`
/// (`len` bytes from it; 0 means to the end of the lease space). Errors
/// count as held: judging a live peer dead is worse than waiting longer.
pub(crate) fn held_by_other(fd: RawFd, byte: u64, len: i64) -> bool {
    let mut fl = flock_for(byte, len, libc::F_WRLCK);
    // SAFETY: as in `try_take`; F_OFD_GETLK writes the result into `fl`.
    let r = unsafe { libc::fcntl(fd, libc::F_OFD_GETLK, &mut fl) };
    if r != 0 {
        return true;
    }
    fl.l_type != libc::F_UNLCK as libc::c_short
}

/// Whether anybody holds any lease on the file open at `fd` (through
/// another open file description than `fd`'s).
pub(crate) fn any_held(fd: RawFd) -> bool {
    held_by_other(fd, 0, 0)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn open(path: &std::path::Path) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    }

    #[test]
    fn a_lease_excludes_other_descriptions_and_ends_with_them() {
        let path = std::env::temp_dir().join(format!("shoal-lease-test-{}", std::process::id()));
        let a = open(&path);
        let b = open(&path);
        assert!(try_take(a.as_raw_fd(), 3).unwrap());
        assert!(
            try_take(a.as_raw_fd(), 3).unwrap(),
            "re-taking our own is fine"
        );
        assert!(!try_take(b.as_raw_fd(), 3).unwrap());
        assert!(held_by_other(b.as_raw_fd(), 3, 1));
        assert!(
            !held_by_other(a.as_raw_fd(), 3, 1),
            "our own lock is not another's"
        );
        assert!(!held_by_other(b.as_raw_fd(), 4, 1));
        assert!(any_held(b.as_raw_fd()));
        drop(a); // closing the description drops its locks
        assert!(!held_by_other(b.as_raw_fd(), 3, 1));
        assert!(!any_held(b.as_raw_fd()));
        assert!(try_take(b.as_raw_fd(), 3).unwrap());
        give_up(b.as_raw_fd(), 3);
        let c = open(&path);
        assert!(!held_by_other(c.as_raw_fd(), 3, 1));
        let _ = std::fs::remove_file(&path);
    }
}
