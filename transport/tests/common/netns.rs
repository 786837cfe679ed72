//! Two "hosts" on one machine: two network namespaces joined by a veth
//! pair, for tests of network wires (nng+tcp, QUIC) across hosts.
//!
//! ```ignore
//! let Some(pair) = netns::Pair::create_or_skip("pubsub") else { return };
//! let server = pair.addr(0); // 10.x.y.1, in namespace 0
//! let child = proc::Child::spawn(pair.self_command(1, TEST, "sub", &env), "sub");
//! ```
//!
//! Needs root and iproute2's `ip`; [`Pair::create_or_skip`] says why not
//! and returns `None` otherwise. Names are unique per test process (its
//! pid, and a counter), so tests in parallel do not collide; the
//! namespaces (and with them the veth pair) are deleted when the [`Pair`]
//! is dropped, on a failing assertion too, and a later test deletes those
//! that a killed test process left behind.
//!
//! Traffic between the two stays on this machine: each namespace has
//! only its loopback and its end of the pair.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Two network namespaces joined by a veth pair, deleted on drop.
pub struct Pair {
    names: [String; 2],
    /// The veth ends (gone with their namespaces; deleted by name too in
    /// case creating the pair stopped before they were moved).
    ifs: [String; 2],
    addrs: [Ipv4Addr; 2],
}

/// Runs `ip ARGS`; its error output when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why two namespaces cannot be made here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    match Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => None,
        _ => Some("iproute2's `ip` is not installed".into()),
    }
}

/// Deletes namespaces `shoal-PID-…` whose process is gone (left by a
/// test process that was killed before its guard ran).
fn delete_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("shoal-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Pair {
    /// Creates the pair, or says why it cannot be made here.
    pub fn create(tag: &str) -> Result<Pair, String> {
        if let Some(why) = unavailable() {
            return Err(why);
        }
        delete_stale();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let names = [
            format!("shoal-{pid}-{n}-{tag}-a"),
            format!("shoal-{pid}-{n}-{tag}-b"),
        ];
        // Interface names hold at most 15 bytes.
        let ifs = [format!("sv{pid:x}{n:x}a"), format!("sv{pid:x}{n:x}b")];
        // A /24 of its own per pair (each namespace routes only its own
        // link, so this is for readable logs, not to avoid collisions).
        let k = pid.wrapping_mul(31).wrapping_add(n);
        let (x, y) = (64 + (k >> 8) % 64, k % 256);
        let addrs = [
            Ipv4Addr::new(10, x as u8, y as u8, 1),
            Ipv4Addr::new(10, x as u8, y as u8, 2),
        ];
        let mut pair = Pair {
            names: [String::new(), String::new()],
            ifs: ifs.clone(),
            addrs,
        };
        for (i, name) in names.iter().enumerate() {
            ip(&["netns", "add", name])?;
            // Owned from here: deleted on drop whatever fails next.
            pair.names[i] = name.clone();
        }
        ip(&[
            "link", "add", &ifs[0], "type", "veth", "peer", "name", &ifs[1],
        ])?;
        for i in 0..2 {
            let (name, ifc) = (&pair.names[i], &ifs[i]);
            let cidr = format!("{}/24", addrs[i]);
            ip(&["link", "set", ifc, "netns", name])?;
            ip(&["-n", name, "addr", "add", &cidr, "dev", ifc])?;
            ip(&["-n", name, "link", "set", ifc, "up"])?;
            ip(&["-n", name, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// [`create`](Self::create), or `None` after printing why the test
    /// is skipped.
    pub fn create_or_skip(tag: &str) -> Option<Pair> {
        match Pair::create(tag) {
            Ok(p) => Some(p),
            Err(why) => {
                eprintln!("SKIPPED: two network namespaces cannot be made here: {why}");
                println!("SKIPPED: two network namespaces cannot be made here: {why}");
                None
            }
        }
    }

    /// The name of namespace `side` (0 or 1).
    pub fn name(&self, side: usize) -> &str {
        &self.names[side]
    }

    /// The address of namespace `side` (0 or 1) on the link between them.
    pub fn addr(&self, side: usize) -> Ipv4Addr {
        self.addrs[side]
    }

    /// `program ARGS` to run inside namespace `side`.
    pub fn command(&self, side: usize, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.names[side], program])
            .args(args);
        c
    }

    /// This test binary's test `test`, as `role` with the environment
    /// `env`, inside namespace `side` (see `proc::self_command`).
    pub fn self_command(
        &self,
        side: usize,
        test: &str,
        role: &str,
        env: &[(&str, String)],
    ) -> Command {
        let exe = std::env::current_exe().unwrap();
        let mut c = self.command(
            side,
            exe.to_str().unwrap(),
            &["--exact", test, "--nocapture"],
        );
        c.env(super::proc::ROLE, role);
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth end in it, and with it
        // the other end.
        for name in &self.names {
            if !name.is_empty() {
                if let Err(e) = ip(&["netns", "del", name]) {
                    eprintln!("cleaning up: {e}");
                }
            }
        }
        for ifc in &self.ifs {
            let _ = Command::new("ip")
                .args(["link", "del", ifc])
                .stderr(Stdio::null())
                .status();
        }
    }
}
