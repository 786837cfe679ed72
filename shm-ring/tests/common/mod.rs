//! Helpers for tests that run peers in separate processes.
//!
//! A test binary re-executes itself with `--exact child_main`, passing the
//! role and its arguments in the environment; `child_main` dispatches.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Spawns this test binary as a child running `role` with `args`.
pub fn spawn(role: &str, args: &[String]) -> Peer {
    spawn_wrapped(&[], role, args)
}

/// Like [`spawn`], but runs the child under the command `wrapper` (for
/// example `["unshare", "--pid", "--fork"]`) with the test binary appended.
pub fn spawn_wrapped(wrapper: &[&str], role: &str, args: &[String]) -> Peer {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let mut child = cmd
        .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env("SHOAL_TEST_ROLE", role)
        .env("SHOAL_TEST_ARGS", args.join("\x1f"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    Peer { child, out }
}

/// The role and arguments of this process, if it is a child.
pub fn role() -> Option<(String, Vec<String>)> {
    let role = std::env::var("SHOAL_TEST_ROLE").ok()?;
    let args = std::env::var("SHOAL_TEST_ARGS").unwrap_or_default();
    let args = if args.is_empty() {
        vec![]
    } else {
        args.split('\x1f').map(str::to_string).collect()
    };
    Some((role, args))
}

/// Prints a line the parent reads (`@ key value...`).
pub fn say(line: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    writeln!(o, "@ {line}").unwrap();
    o.flush().unwrap();
}

/// A child process and its stdout.
pub struct Peer {
    pub child: Child,
    out: BufReader<ChildStdout>,
}

impl Peer {
    /// Reads lines until one starting with `@ ` arrives; returns the rest.
    /// Panics after `timeout` (the reader thread is abandoned).
    pub fn expect_line(&mut self, timeout: Duration) -> String {
        let t0 = Instant::now();
        let mut line = String::new();
        loop {
            line.clear();
            // Blocking read; children print promptly or exit (EOF).
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

    /// Waits for the child to exit, at most `timeout`; kills it past that.
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
        // SAFETY: sending a signal to our own child's pid has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// SIGKILL without reaping: the child stays a zombie, as a crashed peer
    /// whose parent has not yet waited would.
    pub fn kill9_no_reap(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Deterministic payload for record `seq` of `len` bytes.
pub fn fill(seq: u64, buf: &mut [u8]) {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Checks a payload made by [`fill`].
pub fn check(seq: u64, buf: &[u8]) -> bool {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        if chunk != &b[..chunk.len()] {
            return false;
        }
    }
    true
}

/// Size of record `seq` in a stream: mostly small, some medium.
pub fn size_of_record(seq: u64) -> usize {
    let h = seq.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
    match h % 16 {
        0 => 8 + (h as usize % 4000),
        1..=3 => 8 + (h as usize % 400),
        _ => 8 + (h as usize % 56),
    }
}

/// How many overflow files of ring `ring` exist in /dev/shm.
pub fn overflow_files(ring: &str) -> usize {
    overflow_entries(ring).count()
}

/// The entries of `/dev/shm` that are overflow files of `ring`.
pub fn overflow_entries(ring: &str) -> impl Iterator<Item = std::fs::DirEntry> {
    let prefix = format!("{ring}.o");
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter(move |e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
}

/// A payload of `len` bytes that differs for every `seq`.
pub fn pattern(seq: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8)
        .collect()
}
