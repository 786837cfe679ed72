//! The network namespaces `cargo xtask run --hosts H` runs its ranks in:
//! one namespace per host, `shoal-run-{pid}-{h}`, each with `lo` and one
//! end of a veth pair (`eth0`, `10.X.Y.(h+1)/24`), and a hub namespace,
//! `shoal-run-{pid}-hub`, whose bridge the other ends are enslaved to.
//! Nothing is added to the root namespace, so the ranks' traffic stays
//! among these namespaces.

use std::process::Command;

/// Every namespace a run creates starts with this, followed by the
/// launcher's pid.
const PREFIX: &str = "shoal-run-";

/// The bridge in the hub namespace.
const BRIDGE: &str = "br0";

/// The hosts' end of each veth pair, inside the host's namespace.
const HOST_IF: &str = "eth0";

/// The namespaces of one run; dropping it deletes every namespace it
/// created, so a run that fails half way leaves none behind.
pub struct Hosts {
    /// The launcher's pid, which names the namespaces.
    pid: u32,
    /// How many host namespaces (the hub not counted).
    hosts: usize,
    /// The `10.X.Y.0/24` subnet's X and Y.
    subnet: (u8, u8),
    /// The namespaces created so far, to delete on drop.
    created: Vec<String>,
}

impl Hosts {
    /// Checks the run can make namespaces (root, `ip`), deletes the
    /// leftovers of runs whose launcher is gone, then creates `hosts` host
    /// namespaces joined by the hub's bridge.
    pub fn create(hosts: usize) -> Result<Hosts, String> {
        if hosts > 253 {
            return Err(format!(
                "--hosts {hosts}: at most 253 hosts fit in the run's /24 subnet"
            ));
        }
        if !is_root()? {
            return Err("--hosts needs root (network namespaces)".into());
        }
        ip(&["-V"]).map_err(|e| format!("--hosts needs iproute2's `ip`: {e}"))?;
        let pid = std::process::id();
        remove_stale(pid)?;
        let mut me = Hosts {
            pid,
            hosts,
            subnet: subnet(pid),
            created: Vec::new(),
        };
        let hub = me.hub();
        me.add(&hub)?;
        ip(&["-n", &hub, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", BRIDGE, "up"])?;
        for h in 0..hosts {
            me.add_host(h)?;
        }
        Ok(me)
    }

    /// The namespace of host `h`.
    pub fn namespace(&self, h: usize) -> String {
        format!("{PREFIX}{}-{h}", self.pid)
    }

    /// Host `h`'s address (no prefix length).
    pub fn address(&self, h: usize) -> String {
        let (x, y) = self.subnet;
        format!("10.{x}.{y}.{}", h + 1)
    }

    /// The host namespaces, in host order.
    pub fn namespaces(&self) -> Vec<String> {
        (0..self.hosts).map(|h| self.namespace(h)).collect()
    }

    /// The hub namespace, which holds the bridge.
    fn hub(&self) -> String {
        format!("{PREFIX}{}-hub", self.pid)
    }

    /// Creates namespace `name` and remembers to delete it.
    fn add(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_string());
        Ok(())
    }

    /// Creates host `h`'s namespace, with `lo` up and a veth pair from its
    /// `eth0` to the hub's bridge.
    fn add_host(&mut self, h: usize) -> Result<(), String> {
        let ns = self.namespace(h);
        let hub = self.hub();
        self.add(&ns)?;
        // Interface names are per namespace: `h{h}` (at most 4 bytes)
        // need only be unique in the hub.
        let port = format!("h{h}");
        ip(&[
            "-n", &ns, "link", "add", HOST_IF, "type", "veth", "peer", "name", &port, "netns", &hub,
        ])?;
        ip(&["-n", &hub, "link", "set", &port, "master", BRIDGE, "up"])?;
        let addr = format!("{}/24", self.address(h));
        ip(&["-n", &ns, "addr", "add", &addr, "dev", HOST_IF])?;
        ip(&["-n", &ns, "link", "set", HOST_IF, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"]).map(drop)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for name in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", name]) {
                eprintln!("xtask run: cannot delete namespace {name}: {e}");
            }
        }
    }
}

/// The run's subnet, `10.X.Y.0/24`, from the launcher's pid, so that
/// concurrent runs differ (they are apart anyway: each has its own hub).
fn subnet(pid: u32) -> (u8, u8) {
    let x = 64 + (pid >> 8) % 64;
    let y = pid % 256;
    // Both are below 256 by construction.
    (x as u8, y as u8)
}

/// Runs `ip ARGS`, quietly; its stderr is the error.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: cannot start: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process's effective uid is 0, from `/proc/self/status`
/// (else `id -u`).
pub(crate) fn is_root() -> Result<bool, String> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        // "Uid:\treal\teffective\tsaved\tfs"
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1));
        if let Some(euid) = euid {
            return Ok(euid == "0");
        }
    }
    let out = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("cannot tell whether this is root (id -u: {e})"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Deletes the `shoal-run-{pid}-*` namespaces whose launcher no longer
/// runs (killed before it could clean up), and any named by this
/// process's own pid, which cannot be in use yet.
fn remove_stale(me: u32) -> Result<(), String> {
    let list = ip(&["netns", "list"])?;
    // Lines read "NAME" or "NAME (id: N)".
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = launcher_pid(name) else {
            continue;
        };
        let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
        if gone || pid == me {
            eprintln!("xtask run: deleting namespace {name} left by launcher {pid}");
            ip(&["netns", "del", name])?;
        }
    }
    Ok(())
}

/// The launcher pid in a namespace name `shoal-run-{pid}-{suffix}`, if
/// `name` is one.
fn launcher_pid(name: &str) -> Option<u32> {
    let (pid, suffix) = name.strip_prefix(PREFIX)?.split_once('-')?;
    let ok = suffix == "hub" || suffix.parse::<usize>().is_ok();
    ok.then(|| pid.parse().ok()).flatten()
}
