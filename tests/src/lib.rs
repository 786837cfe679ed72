//! Helpers for shoal's multi-process integration tests (the tests are in
//! `tests/`): a test binary re-executes itself as a child running a role,
//! passed in the environment, and talks to it through lines on stdout.
//!
//! ```no_run
//! // In a test file: `#[test] fn child_main() { shoal_tests::child(run) }`
//! // dispatches roles; a test spawns one with
//! let mut peer = shoal_tests::spawn("producer", &["handle".into()]);
//! assert_eq!(peer.expect_line(std::time::Duration::from_secs(10)), "ready");
//! ```

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const ROLE: &str = "SHOAL_TEST_ROLE";
const ARGS: &str = "SHOAL_TEST_ARGS";

/// Spawns this test binary as a child running `role` with `args` (the
/// binary must have a `child_main` test that calls [`child`]).
pub fn spawn(role: &str, args: &[String]) -> Peer {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(ROLE, role);
    spawn_command(cmd, args)
}

/// Spawns `cmd` (this test binary, as a role: for example a network
/// namespace's `self_command`) with `args`, reading its stdout.
pub fn spawn_command(mut cmd: Command, args: &[String]) -> Peer {
    let mut child = cmd
        .env(ARGS, args.join("\x1f"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    Peer { child, out }
}

/// In a child: runs `run(role, args)` and exits with its code; in the
/// test process itself (no role), returns at once.
pub fn child(run: impl FnOnce(&str, &[String]) -> i32) {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let args = std::env::var(ARGS).unwrap_or_default();
    let args: Vec<String> = if args.is_empty() {
        vec![]
    } else {
        args.split('\x1f').map(str::to_string).collect()
    };
    std::process::exit(run(&role, &args));
}

/// In a child: prints a line the parent reads with [`Peer::expect_line`].
pub fn say(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "@ {line}");
    let _ = o.flush();
}

/// A child process and its stdout.
pub struct Peer {
    /// The process.
    pub child: Child,
    out: BufReader<ChildStdout>,
}

impl Peer {
    /// The next line the child said (see [`say`]); panics if it exits
    /// first, or says nothing within `timeout`.
    pub fn expect_line(&mut self, timeout: Duration) -> String {
        let t0 = Instant::now();
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.out.read_line(&mut line).expect("read child stdout");
            assert!(n > 0, "child exited before saying anything");
            // libtest may print "test child_main ... " before our text.
            if let Some(i) = line.find("@ ") {
                return line[i + 2..].trim_end().to_string();
            }
            assert!(
                t0.elapsed() < timeout,
                "no line from child within {timeout:?}"
            );
        }
    }

    /// Waits for the child to exit, at most `timeout` (then kills it and
    /// panics).
    pub fn wait(mut self, timeout: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            if t0.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("child did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL now (no cleanup runs in the child), then reap it.
    pub fn kill9(mut self) {
        // SAFETY: a signal to our own child's pid; no memory is touched.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// SIGKILL now, then every line it said that was not read yet.
    pub fn kill9_rest(mut self) -> Vec<String> {
        // SAFETY: a signal to our own child's pid; no memory is touched.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        let mut said = Vec::new();
        let mut line = String::new();
        while matches!(self.out.read_line(&mut line), Ok(n) if n > 0) {
            if let Some(i) = line.find("@ ") {
                said.push(line[i + 2..].trim_end().to_string());
            }
            line.clear();
        }
        said
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // A test that failed half-way leaves no child behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
