//! Child processes of a test: the test binary run again, filtered to one
//! test (`--exact NAME --nocapture`), told by environment variables which
//! role to play; and what such a child uses to talk back.
//!
//! A child writes lines `@@ WORDS` on its stdout ([`say`]); the parent
//! reads them ([`Child::next`], [`Child::expect`]), everything else the
//! test harness prints is skipped. The parent writes lines to the child's
//! stdin ([`Child::tell`], read with [`hear`]).
//!
//! A [`Child`] is killed (SIGKILL) and reaped when dropped, on a failing
//! assertion too; and it is started with `PR_SET_PDEATHSIG` = SIGKILL, so
//! it dies if the thread that spawned it does (a test killed by the
//! runner). Spawn from the test's own thread (the one that calls
//! `block_on`), not from a runtime's worker or blocking thread, whose end
//! would kill the child early.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The environment variable naming a child's role.
pub const ROLE: &str = "SHOAL_TEST_ROLE";

/// The role this process was started to play, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// The environment variable `name`, which the parent set.
pub fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("the parent did not set {name}"))
}

/// Tells the parent `line` (child side).
pub fn say(line: impl std::fmt::Display) {
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = writeln!(out, "@@ {line}");
    let _ = out.flush();
}

/// The next line the parent wrote to this child's stdin (child side;
/// blocks the calling thread; empty once the parent closed it).
pub fn hear() -> String {
    let mut s = String::new();
    let _ = std::io::stdin().read_line(&mut s);
    s.trim_end().to_string()
}

/// A command that runs this test binary's test `test` alone, as `role`,
/// with the environment `env`.
pub fn self_command(test: &str, role: &str, env: &[(&str, String)]) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", test, "--nocapture"]).env(ROLE, role);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Spawns this test binary again as `role` (see [`self_command`]).
pub fn spawn(test: &str, role: &str, env: &[(&str, String)]) -> Child {
    Child::spawn(self_command(test, role, env), role)
}

/// A running child process, killed and reaped when dropped.
pub struct Child {
    child: std::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// `@@` lines read while looking for another.
    backlog: VecDeque<String>,
    stdin: Option<std::process::ChildStdin>,
    label: String,
}

impl Child {
    /// Spawns `cmd` with piped stdin and stdout (stderr inherited, so a
    /// child's panic shows in the test's output), dying with this thread.
    pub fn spawn(mut cmd: Command, label: &str) -> Child {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {label}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(l) = line.strip_prefix("@@ ") {
                    if tx.send(l.to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        Child {
            child,
            lines,
            backlog: VecDeque::new(),
            stdin,
            label: label.to_string(),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line it said within `timeout`; `None` when it closed its
    /// stdout (exited) or said nothing in time.
    pub async fn next(&mut self, timeout: Duration) -> Option<String> {
        if let Some(l) = self.backlog.pop_front() {
            return Some(l);
        }
        tokio::time::timeout(timeout, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits up to `timeout` for a line starting with `prefix` (the lines
    /// before it are kept for [`next`](Self::next)); panics without one.
    pub async fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        if let Some(i) = self.backlog.iter().position(|l| l.starts_with(prefix)) {
            return self.backlog.remove(i).unwrap();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(l)) if l.starts_with(prefix) => return l,
                Ok(Some(l)) => self.backlog.push_back(l),
                Ok(None) => panic!(
                    "{} ended before saying {prefix:?} (said {:?}; {:?})",
                    self.label,
                    self.backlog,
                    self.child.try_wait()
                ),
                Err(_) => panic!(
                    "{} did not say {prefix:?} within {timeout:?} (said {:?})",
                    self.label, self.backlog
                ),
            }
        }
    }

    /// Writes `line` to its stdin.
    pub fn tell(&mut self, line: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{line}");
            let _ = s.flush();
        }
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for it to exit; panics unless it exited
    /// successfully in time.
    pub async fn wait_success(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    assert!(st.success(), "{} failed: {st}", self.label);
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(None) => panic!("{} still running after {timeout:?}", self.label),
                Err(e) => panic!("waiting for {}: {e}", self.label),
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}
