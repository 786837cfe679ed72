//! Peer processes by `fork`, CPU pinning and CPU-time accounting.
//!
//! Harness binaries are single-threaded when they fork, so the child may run
//! ordinary Rust code; it leaves with `_exit`, so it never runs the parent's
//! destructors (which would, for example, unlink the parent's segments).

use std::time::Duration;

/// A forked child process.
#[derive(Debug)]
pub struct Child {
    pid: libc::pid_t,
}

/// Forks; the child runs `f` and exits with its return value.
pub fn fork<F: FnOnce() -> i32>(f: F) -> std::io::Result<Child> {
    // SAFETY: the harness binaries call this while single-threaded; the
    // child only runs `f` and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // SAFETY: terminates the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    Ok(Child { pid })
}

impl Child {
    /// Waits for the child; `Ok(code)` when it exited normally.
    pub fn wait(self) -> Result<i32, String> {
        let mut st = 0;
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(self.pid, &mut st, 0) };
        std::mem::forget(self);
        if r < 0 {
            return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
        }
        if libc::WIFEXITED(st) {
            Ok(libc::WEXITSTATUS(st))
        } else {
            Err(format!("child died with status {st:#x}"))
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // A child not waited for is killed, never left running.
        // SAFETY: signals and reaps our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// Pins the calling thread to `cpu` (ignored if it fails: a VM may refuse).
pub fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % cores().max(1) as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Online CPUs.
pub fn cores() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as u32
}

/// CPU time (user + system) used by the calling thread so far.
pub fn thread_cpu() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills `ru` on success.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()) } != 0 {
        return Duration::ZERO;
    }
    // SAFETY: initialized by the successful call.
    let ru = unsafe { ru.assume_init() };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(us(ru.ru_utime) + us(ru.ru_stime))
}

/// Context switches (voluntary plus involuntary) of every thread of process
/// `pid` so far, from `/proc/<pid>/task/*/status`; `None` if the process is
/// gone or the counts cannot be read.
pub fn ctxt_switches(pid: i32) -> Option<u64> {
    let mut total = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let status = std::fs::read_to_string(t.ok()?.path().join("status")).ok()?;
        total += status
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                matches!(k, "voluntary_ctxt_switches" | "nonvoluntary_ctxt_switches")
                    .then(|| v.trim().parse::<u64>().ok())?
            })
            .sum::<u64>();
    }
    Some(total)
}

/// Parses `--name value` pairs from the command line (after the subcommand).
pub struct Args(Vec<String>);

impl Args {
    /// The process arguments after `skip` leading ones.
    pub fn from_env(skip: usize) -> Self {
        Args(std::env::args().skip(skip).collect())
    }
    /// The value after `--name`, parsed, or `default`.
    pub fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        let flag = format!("--{name}");
        self.0
            .iter()
            .position(|a| *a == flag)
            .and_then(|i| self.0.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
    /// Whether `--name` is present.
    pub fn has(&self, name: &str) -> bool {
        let flag = format!("--{name}");
        self.0.contains(&flag)
    }
}
