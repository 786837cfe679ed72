//! Is a peer process still alive? A pid plus its start time.
//!
//! A bare pid is reused by the OS, so every participant record holds the pid
//! and the process start time (field 22 of `/proc/<pid>/stat`, in clock ticks
//! since boot). A peer is alive when a process with that pid exists, has the
//! same start time, and is not a zombie. Reading `/proc` here uses only stack
//! buffers: liveness checks run on wait paths that must not allocate.

use std::io::Error as IoError;

/// A process, identified so that pid reuse cannot fool a liveness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessId {
    /// The process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

/// What `/proc` says about a pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Running (or sleeping) with the expected start time.
    Alive,
    /// Gone, a zombie, or the pid now belongs to another process.
    Dead,
}

impl ProcessId {
    /// The calling process.
    ///
    /// ```
    /// let me = shoal_shm_ring::ProcessId::current();
    /// assert_eq!(me.pid, std::process::id());
    /// assert!(me.is_alive());
    /// ```
    pub fn current() -> Self {
        let pid = std::process::id();
        let start_time = match stat_of(pid) {
            Ok(Some((start, _))) => start,
            _ => 0,
        };
        ProcessId { pid, start_time }
    }

    /// Checks whether this process still runs.
    ///
    /// Errors other than "no such process" (for example `/proc` not mounted)
    /// count as alive: evicting a live peer is worse than waiting on a dead one
    /// for a while, and every wait is bounded anyway.
    pub fn liveness(&self) -> Liveness {
        if self.pid == 0 {
            return Liveness::Dead;
        }
        match stat_of(self.pid) {
            Ok(None) => Liveness::Dead,
            Ok(Some((start, state))) => {
                if (self.start_time != 0 && start != self.start_time)
                    || state == b'Z'
                    || state == b'X'
                {
                    Liveness::Dead
                } else {
                    Liveness::Alive
                }
            }
            Err(_) => {
                // SAFETY: kill with signal 0 sends nothing; it only checks
                // that the pid exists and may be signalled.
                let r = unsafe { libc::kill(self.pid as libc::pid_t, 0) };
                if r == -1 && IoError::last_os_error().raw_os_error() == Some(libc::ESRCH) {
                    Liveness::Dead
                } else {
                    Liveness::Alive
                }
            }
        }
    }

    /// `true` unless the process is known to be dead.
    pub fn is_alive(&self) -> bool {
        self.liveness() == Liveness::Alive
    }
}

/// Reads `(start_time, state)` of `pid` from `/proc`; `Ok(None)` if it does not exist.
fn stat_of(pid: u32) -> Result<Option<(u64, u8)>, IoError> {
    let mut path = [0u8; 32];
    let len = {
        let mut w = StackWriter::new(&mut path);
        w.push(b"/proc/");
        w.push_u64(u64::from(pid));
        w.push(b"/stat\0");
        w.len()
    };
    debug_assert!(len <= path.len());
    // SAFETY: `path` holds a NUL-terminated string (written just above and
    // bounded by its 32 bytes); open does not retain the pointer.
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = IoError::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => Ok(None),
            _ => Err(e),
        };
    }
    let mut buf = [0u8; 1024];
    let mut filled = 0usize;
    loop {
        // SAFETY: reads into the unfilled tail of `buf`; fd is open.
        let n = unsafe { libc::read(fd, buf[filled..].as_mut_ptr().cast(), buf.len() - filled) };
        if n < 0 {
            let e = IoError::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // SAFETY: fd is ours and open.
            unsafe { libc::close(fd) };
            return match e.raw_os_error() {
                Some(libc::ESRCH) | Some(libc::ENOENT) => Ok(None),
                _ => Err(e),
            };
        }
        if n == 0 || filled + n as usize == buf.len() {
            filled += n as usize;
            break;
        }
        filled += n as usize;
    }
    // SAFETY: fd is ours and open.
    unsafe { libc::close(fd) };
    Ok(parse_stat(&buf[..filled]))
}

/// Parses the state (field 3) and start time (field 22) out of a
/// `/proc/<pid>/stat` line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_stat(line: &[u8]) -> Option<(u64, u8)> {
    let close = line.iter().rposition(|&b| b == b')')?;
    let rest = line.get(close + 1..)?;
    let mut fields = rest
        .split(|&b| b == b' ' || b == b'\n')
        .filter(|f| !f.is_empty());
    let state = *fields.next()?.first()?;
    // Fields 4..=21 are 18 fields; field 22 follows them.
    let start = fields.nth(18)?;
    let mut v: u64 = 0;
    for &d in start {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some((v, state))
}

/// Formats into a fixed stack buffer, truncating silently (callers size it).
pub(crate) struct StackWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> StackWriter<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }
    pub(crate) fn push(&mut self, s: &[u8]) {
        for &b in s {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }
    pub(crate) fn push_u64(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
    pub(crate) fn push_hex(&mut self, v: u64, width: usize) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for i in (0..width).rev() {
            let nib = ((v >> (i * 4)) & 0xf) as usize;
            self.push(&[HEX[nib]]);
        }
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let line = b"1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10\n";
        assert_eq!(parse_stat(line), Some((987654, b'S')));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_stat(b"no paren here"), None);
        assert_eq!(parse_stat(b"1 (x) S 1 2"), None);
        assert_eq!(
            parse_stat(b"1 (x) S 1 1 1 0 -1 4 1 0 0 0 1 2 0 0 20 0 1 0 12x4 1"),
            None
        );
    }

    #[test]
    fn self_is_alive_and_a_wrong_start_time_is_dead() {
        let me = ProcessId::current();
        assert!(me.start_time > 0);
        assert_eq!(me.liveness(), Liveness::Alive);
        let imposter = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert_eq!(imposter.liveness(), Liveness::Dead);
        assert_eq!(
            ProcessId {
                pid: 0,
                start_time: 0
            }
            .liveness(),
            Liveness::Dead
        );
    }

    #[test]
    fn reaped_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let id = ProcessId { pid, start_time: 0 };
        child.wait().unwrap();
        // The pid could in theory be reused instantly; with start_time 0 we only
        // accept "dead" or a live reuse, never a panic.
        let _ = id.liveness();
    }
}
