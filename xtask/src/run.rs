//! `cargo xtask run`: a local launcher (like mpirun) for shoal's
//! collectives. It starts N processes of one command, tells each its
//! place through the variables `shoal_collectives::launcher` reads, streams
//! their output prefixed by rank, and waits for them all.
//!
//! Each process gets `SHOAL_RANK`, `SHOAL_SIZE`, `SHOAL_LOCAL_RANK`,
//! `SHOAL_LOCAL_SIZE`, `SHOAL_NODE` (its host) and `SHOAL_RENDEZVOUS`
//! (where rank 0 will bind its rendezvous listener; the launcher does not
//! listen there itself). Ranks are placed on hosts in blocks: host h gets
//! ranks `h*N/H` to `(h+1)*N/H - 1`. Each run makes a random
//! `SHOAL_SECRET` (unless one is set), so rank 0's rendezvous lets in this
//! run's ranks only.
//!
//! With one host (the default) the processes run on this machine as they
//! are and `SHOAL_HOST` is unset. With `--hosts H` above 1 each host is a
//! network namespace (see [`crate::netns`]), every process runs under
//! `ip netns exec`, and `SHOAL_HOST=shoal-run-host-{h}` tells the ranks
//! apart, for they share a kernel.
//!
//! Rank 0 inherits the launcher's stdin; the others read from
//! `/dev/null`. When a rank fails, the others get `--grace` seconds to
//! finish before they are killed (with whatever they started).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::netns::Hosts;

const USAGE: &str =
    "usage: cargo xtask run -n N [--hosts H] [--grace SECS] [--timeout SECS] -- CMD [ARGS...]";

/// The rendezvous port across namespaces: they are fresh, so nothing else
/// listens there.
const NETNS_PORT: u16 = 29500;

/// How long to wait for the ranks' output to drain once they have all
/// exited (a process a rank left behind may hold its pipes open).
const DRAIN: Duration = Duration::from_secs(5);

/// How often the launcher looks at its processes.
const POLL: Duration = Duration::from_millis(20);

/// What `cargo xtask run` was asked to do.
#[derive(Debug)]
struct Options {
    /// Processes in all (N).
    ranks: usize,
    /// Hosts to spread them over (H).
    hosts: usize,
    /// How long the others may run on after a rank failed.
    grace: Duration,
    /// How long the whole run may take, if limited.
    timeout: Option<Duration>,
    /// The command and its arguments.
    cmd: Vec<String>,
}

/// Parses the task's arguments (those after `run`).
fn parse(args: &[String]) -> Result<Options, String> {
    let mut ranks = None;
    let mut hosts = 1;
    let mut grace = Duration::from_secs(30);
    let mut timeout = None;
    let mut cmd = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            cmd = it.cloned().collect();
            break;
        }
        if !arg.starts_with('-') {
            cmd = std::iter::once(arg).chain(it).cloned().collect();
            break;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag {
            "-n" | "--np" => ranks = Some(count(flag, &value()?)?),
            "--hosts" => hosts = count(flag, &value()?)?,
            "--grace" => grace = seconds(flag, &value()?)?,
            "--timeout" => timeout = Some(seconds(flag, &value()?)?),
            _ => return Err(format!("unknown option {arg}\n{USAGE}")),
        }
    }
    let ranks = ranks.ok_or_else(|| format!("-n N is required\n{USAGE}"))?;
    if cmd.is_empty() {
        return Err(format!("no command to run\n{USAGE}"));
    }
    if hosts > ranks {
        return Err(format!(
            "--hosts {hosts} is more than the {ranks} ranks: every host needs a rank"
        ));
    }
    Ok(Options {
        ranks,
        hosts,
        grace,
        timeout,
        cmd,
    })
}

/// A count of at least 1.
fn count(flag: &str, v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{flag} {v:?}: expected a whole number of at least 1"
        )),
    }
}

/// A duration in (possibly fractional) seconds.
fn seconds(flag: &str, v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{flag} {v:?}: expected a number of seconds"))
}

/// Where each rank goes: host h holds ranks `first(h)..first(h + 1)`.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// N.
    ranks: usize,
    /// H, at most N.
    hosts: usize,
}

impl Layout {
    /// Host h's first rank (`first(H)` is N).
    fn first(self, h: usize) -> usize {
        h * self.ranks / self.hosts
    }

    /// The host of rank `r`.
    fn host_of(self, r: usize) -> usize {
        // The last host whose first rank is at most r.
        (0..self.hosts)
            .rev()
            .find(|&h| self.first(h) <= r)
            .unwrap_or(0)
    }

    /// Rank `r`'s `(host, local rank, local size)`.
    fn place(self, r: usize) -> (usize, usize, usize) {
        let h = self.host_of(r);
        (h, r - self.first(h), self.first(h + 1) - self.first(h))
    }
}

/// One started process.
struct Rank {
    /// Its rank.
    index: usize,
    /// The process (`ip netns exec` execs the command: same process).
    child: Child,
    /// How it ended, once it has.
    status: Option<ExitStatus>,
    /// Why the launcher killed it, if it did.
    killed: Option<String>,
}

/// The started processes; dropping it kills those still running (a run
/// that fails half way leaves none behind).
struct Ranks(Vec<Rank>);

impl Drop for Ranks {
    fn drop(&mut self) {
        let running: Vec<&mut Rank> = self.0.iter_mut().filter(|r| r.status.is_none()).collect();
        kill(running, "the launcher is giving up");
    }
}

/// Runs `cargo xtask run ARGS` (the arguments after `run`): see the
/// module doc.
pub fn launch(args: &[String]) -> Result<(), String> {
    let opts = parse(args)?;
    let layout = Layout {
        ranks: opts.ranks,
        hosts: opts.hosts,
    };
    // Declared before the ranks so that it is dropped after them: the
    // namespaces go once nothing runs in them.
    let hosts = if opts.hosts > 1 {
        Some(Hosts::create(opts.hosts)?)
    } else {
        None
    };
    let rendezvous = match &hosts {
        Some(hosts) => format!("{}:{NETNS_PORT}", hosts.address(0)),
        None => format!("127.0.0.1:{}", free_port()?),
    };
    let secret = match std::env::var_os("SHOAL_SECRET") {
        Some(s) if !s.is_empty() => None, // inherited as it is
        _ => Some(random_secret()?),
    };
    eprintln!("{}", header(&opts, hosts.as_ref(), &rendezvous));
    let t0 = Instant::now();
    let (done_tx, done_rx) = mpsc::channel();
    let mut ranks = Ranks(Vec::with_capacity(opts.ranks));
    for r in 0..opts.ranks {
        let mut cmd = command(&opts, layout, hosts.as_ref(), &rendezvous, r);
        if let Some(s) = &secret {
            cmd.env("SHOAL_SECRET", s);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("rank {r}: cannot start {:?}: {e}", opts.cmd[0]))?;
        if let Some(out) = child.stdout.take() {
            pump(r, out, false, done_tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            pump(r, err, true, done_tx.clone());
        }
        ranks.0.push(Rank {
            index: r,
            child,
            status: None,
            killed: None,
        });
    }
    drop(done_tx);
    supervise(&mut ranks.0, opts.grace, opts.timeout, t0);
    drain(&done_rx);
    summarize(&ranks.0, t0)
}

/// The one-line header: ranks, hosts, rendezvous.
fn header(opts: &Options, hosts: Option<&Hosts>, rendezvous: &str) -> String {
    let s = |n: usize| if n == 1 { "" } else { "s" };
    let place = match hosts {
        Some(h) => format!(
            "{} hosts (namespaces {})",
            opts.hosts,
            h.namespaces().join(", ")
        ),
        None => "1 host (this machine)".into(),
    };
    format!(
        "xtask run: {} rank{} on {place}, rendezvous {rendezvous}: {}",
        opts.ranks,
        s(opts.ranks),
        opts.cmd.join(" ")
    )
}

/// 16 random bytes in hex, for the run's `SHOAL_SECRET`.
fn random_secret() -> Result<String, String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("cannot read /dev/urandom for the run's secret: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A loopback port nothing listens on now, for rank 0's rendezvous.
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))?;
    let port = l
        .local_addr()
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))?
        .port();
    Ok(port)
}

/// The command that starts rank `r`, with its environment and pipes.
fn command(
    opts: &Options,
    layout: Layout,
    hosts: Option<&Hosts>,
    rendezvous: &str,
    r: usize,
) -> Command {
    let (h, local_rank, local_size) = layout.place(r);
    let mut c = match hosts {
        Some(hosts) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &hosts.namespace(h)])
                .args(&opts.cmd)
                .env("SHOAL_HOST", format!("shoal-run-host-{h}"));
            c
        }
        None => {
            let mut c = Command::new(&opts.cmd[0]);
            c.args(&opts.cmd[1..]).env_remove("SHOAL_HOST");
            c
        }
    };
    c.env("SHOAL_RANK", r.to_string())
        .env("SHOAL_SIZE", opts.ranks.to_string())
        .env("SHOAL_LOCAL_RANK", local_rank.to_string())
        .env("SHOAL_LOCAL_SIZE", local_size.to_string())
        .env("SHOAL_NODE", h.to_string())
        .env("SHOAL_RENDEZVOUS", rendezvous)
        .stdin(if r == 0 {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Copies `src` to the launcher's stdout (or stderr) line by line, each
/// line prefixed with `[rank r] `, on a thread of its own that sends on
/// `done` when `src` closes. Write errors (a closed stdout) are ignored:
/// the pipe is still drained so that the rank does not block.
fn pump(r: usize, src: impl Read + Send + 'static, to_stderr: bool, done: mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let prefix = format!("[rank {r}] ");
        let mut src = BufReader::new(src);
        let mut line = Vec::new();
        loop {
            line.clear();
            line.extend_from_slice(prefix.as_bytes());
            match src.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            // One write per line, under the lock, so lines never mix.
            let _ = if to_stderr {
                std::io::stderr().lock().write_all(&line)
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(&line).and_then(|()| out.flush())
            };
        }
        let _ = done.send(());
    });
}

/// Waits for every rank. After the first failure the others get `grace`
/// to finish; after `timeout` (from `t0`) everything is killed.
fn supervise(ranks: &mut [Rank], grace: Duration, timeout: Option<Duration>, t0: Instant) {
    let mut grace_end: Option<(Instant, usize)> = None;
    loop {
        let mut running = 0;
        for rank in ranks.iter_mut().filter(|r| r.status.is_none()) {
            match rank.child.try_wait() {
                Ok(Some(st)) => {
                    rank.status = Some(st);
                    if !st.success() && grace_end.is_none() {
                        grace_end = Some((Instant::now() + grace, rank.index));
                    }
                }
                Ok(None) => running += 1,
                Err(e) => {
                    let why = format!("cannot wait for it: {e}");
                    kill(vec![rank], &why);
                }
            }
        }
        if running == 0 {
            return;
        }
        let now = Instant::now();
        if let Some((end, failed)) = grace_end {
            if now >= end {
                let why = format!(
                    "still running {:.1}s after rank {failed} failed",
                    grace.as_secs_f64()
                );
                kill(ranks.iter_mut().collect(), &why);
                return;
            }
        }
        if let Some(limit) = timeout {
            if now >= t0 + limit {
                let why = format!("still running at the {:.1}s timeout", limit.as_secs_f64());
                kill(ranks.iter_mut().collect(), &why);
                return;
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Kills those of `ranks` still running, with every process they
/// started, says which, and reaps them.
fn kill(ranks: Vec<&mut Rank>, why: &str) {
    let mut running: Vec<&mut Rank> = ranks.into_iter().filter(|r| r.status.is_none()).collect();
    if running.is_empty() {
        return;
    }
    let which: Vec<String> = running.iter().map(|r| r.index.to_string()).collect();
    eprintln!("xtask run: killing rank(s) {} ({why})", which.join(", "));
    for rank in &mut running {
        kill_tree(&mut rank.child);
        rank.killed = Some(why.to_string());
    }
    for rank in running {
        match rank.child.wait() {
            Ok(st) => rank.status = Some(st),
            // Cannot happen for a child not yet reaped; count it failed.
            Err(_) => rank.status = Some(ExitStatus::from_raw(9)),
        }
    }
}

/// SIGKILLs `child` and its descendants: all are stopped first, so that
/// none forks unseen, then killed (descendants found through `/proc`).
fn kill_tree(child: &mut Child) {
    let root = child.id();
    signal("STOP", &tree(root));
    signal("KILL", &tree(root));
    let _ = child.kill();
}

/// `root` and all its descendants, from the parents in `/proc/*/stat`.
fn tree(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...", where comm may hold anything.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while let Some(&p) = found.get(i) {
        found.extend(parents.iter().filter(|&&(_, pp)| pp == p).map(|&(c, _)| c));
        i += 1;
    }
    found
}

/// Sends `sig` (a name such as `KILL`) to `pids` with kill(1); processes
/// already gone are no error.
fn signal(sig: &str, pids: &[u32]) {
    let _ = Command::new("kill")
        .args(["-s", sig, "--"])
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits for the output pumps to finish, at most [`DRAIN`].
fn drain(done: &mpsc::Receiver<()>) {
    let end = Instant::now() + DRAIN;
    loop {
        match done.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                eprintln!(
                    "xtask run: some output is still open {}s after every rank exited \
                     (a process left behind?); not waiting for it",
                    DRAIN.as_secs()
                );
                return;
            }
        }
    }
}

/// How a process ended, in words.
fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("code {c}"),
        (None, Some(s)) => format!(
            "signal {s}{}",
            if st.core_dumped() {
                " (core dumped)"
            } else {
                ""
            }
        ),
        (None, None) => st.to_string(),
    }
}

/// Prints a line per failed rank; fails if any did.
fn summarize(ranks: &[Rank], t0: Instant) -> Result<(), String> {
    let mut failed = 0;
    for rank in ranks {
        let Some(st) = rank.status else { continue };
        if st.success() {
            continue;
        }
        failed += 1;
        let killed = match &rank.killed {
            Some(why) => format!(", killed by the launcher ({why})"),
            None => String::new(),
        };
        eprintln!(
            "xtask run: rank {} exited with {}{killed}",
            rank.index,
            describe(st)
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    if failed == 0 {
        eprintln!(
            "xtask run: all {} ranks succeeded in {secs:.1}s",
            ranks.len()
        );
        Ok(())
    } else {
        Err(format!(
            "run: {failed} of {} ranks failed ({secs:.1}s)",
            ranks.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn blocks() {
        let l = Layout { ranks: 5, hosts: 2 };
        let placed: Vec<_> = (0..5).map(|r| l.place(r)).collect();
        assert_eq!(
            placed,
            [(0, 0, 2), (0, 1, 2), (1, 0, 3), (1, 1, 3), (1, 2, 3)]
        );
        let one = Layout { ranks: 3, hosts: 1 };
        assert_eq!(one.place(2), (0, 2, 3));
        let each = Layout { ranks: 3, hosts: 3 };
        assert_eq!(each.place(2), (2, 0, 1));
    }

    #[test]
    fn parses() {
        let o = parse(&args("-n 4 --hosts=2 --grace 2.5 -- sh -c x")).unwrap();
        assert_eq!((o.ranks, o.hosts), (4, 2));
        assert_eq!(o.grace, Duration::from_millis(2500));
        assert_eq!(o.timeout, None);
        assert_eq!(o.cmd, ["sh", "-c", "x"]);
        let o = parse(&args("-n 1 --timeout 3 true -n")).unwrap();
        assert_eq!(o.cmd, ["true", "-n"]);
        assert_eq!(o.timeout, Some(Duration::from_secs(3)));
        for bad in [
            "-n 0 -- true",
            "-n 2 --hosts 3 -- true",
            "--hosts 1 -- true",
            "-n 2",
            "-n 2 --grace -1 -- true",
            "-n 2 --bogus -- true",
            "-n",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
    }
}
