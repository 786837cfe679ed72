//! Two-process ping-pong latency over two broadcast rings.
//!
//! The parent writes to the *ping* ring (one reader: the child), the child
//! echoes every record into the *pong* ring (one reader: the parent), and the
//! parent times each round trip with [`Instant`]. Payloads are 64 B, 4 KiB and
//! 1 MiB; the rings hold 8 MiB, so even 1 MiB stays inline (both sides write
//! only its first 8 bytes in place; smaller payloads are written in full by
//! the parent and copied in full by the child). One-way latency is reported as
//! RTT / 2, after a warm-up, as percentiles in nanoseconds.
//!
//! For comparison every run first measures a *floor*: two processes (fork
//! after an anonymous `MAP_SHARED` mapping) bouncing a counter between two
//! `AtomicU64`s on separate 128-byte lines, each spinning on the other's.
//!
//! ```text
//! cargo run --release -p shoal-shm-ring --example pingpong            # floor + adaptive (default)
//! cargo run --release -p shoal-shm-ring --example pingpong -- --spin  # floor + WaitStrategy::Spin
//! cargo run --release -p shoal-shm-ring --example pingpong -- --floor # floor only
//! cargo run --release -p shoal-shm-ring --example pingpong -- --all   # floor, adaptive, spin, park
//! ```
//! `--park` measures `WaitStrategy::Park` (after the floor); `--pin` pins the
//! parent to CPU 0 and the child to CPU 1. The `cpus` column shows where the
//! parent and the child ran (sampled once per row): on a 2-CPU machine with
//! other load both may share one CPU, which changes every figure.

use shoal_shm_ring::{
    BroadcastConfig, BroadcastReader, BroadcastWriter, Error, Handle, PeerOptions, ReaderOptions,
    Wait, WaitStrategy,
};
use std::hint::spin_loop;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
// The crate's clippy.toml routes atomics through its loom-switchable
// `sync` module; this example is not model-checked, and its floor is meant to
// be exactly two raw std atomics.
#[allow(clippy::disallowed_types)]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Ring capacity: 8 MiB keeps a 1 MiB payload inline (max inline is 2 MiB - 16).
const CAPACITY: u64 = 8 << 20;
/// Payloads up to this size are written (parent) and copied (child) in full;
/// larger ones only in their first 8 bytes.
const FULL_COPY_MAX: usize = 4096;
/// Stop measuring a size after this long, whatever the iteration count.
const TIME_CAP: Duration = Duration::from_secs(2);
/// Stop warming up after this long, whatever the iteration count.
const WARMUP_CAP: Duration = Duration::from_millis(500);

struct Size {
    bytes: usize,
    warmup: u32,
    iters: u32,
}

const SIZES: [Size; 3] = [
    Size {
        bytes: 64,
        warmup: 10_000,
        iters: 100_000,
    },
    Size {
        bytes: 4096,
        warmup: 5_000,
        iters: 50_000,
    },
    Size {
        bytes: 1 << 20,
        warmup: 1_000,
        iters: 10_000,
    },
];

const FLOOR_WARMUP: u32 = 20_000;
const FLOOR_ROUNDS: u32 = 200_000;
/// Tells the floor's child to exit.
const FLOOR_STOP: u64 = u64::MAX;

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        return child_main(&args[1..]);
    }
    let mut modes: Vec<WaitStrategy> = Vec::new();
    let mut floor_only = false;
    let mut pin = false;
    for a in &args {
        match a.as_str() {
            "--spin" => modes.push(WaitStrategy::Spin),
            "--adaptive" => modes.push(WaitStrategy::Adaptive),
            "--park" => modes.push(WaitStrategy::Park),
            "--all" => modes.extend([
                WaitStrategy::Adaptive,
                WaitStrategy::Spin,
                WaitStrategy::Park,
            ]),
            "--floor" => floor_only = true,
            "--pin" => pin = true,
            other => {
                return Err(format!(
                "unknown argument {other:?}; use --spin, --adaptive, --park, --all, --floor, --pin"
            )
                .into())
            }
        }
    }
    if modes.is_empty() && !floor_only {
        modes.push(WaitStrategy::Adaptive);
    }
    if floor_only {
        modes.clear();
    }

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let clock =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "pingpong: {cpus} CPUs, clocksource {}, load average {}, Instant::now() pair {} ns, pinned: {pin}",
        clock.trim(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        timer_overhead()
    );
    if pin {
        pin_to(0)?;
    }

    // The floor runs first, while this process has no other thread (it forks).
    let (mut floor, cpus) = floor_rtts(pin)?;
    print_header();
    print_row("floor", 8, &mut floor, &cpus);

    for mode in modes {
        run_mode(mode, pin)?;
    }
    Ok(())
}

fn mode_name(s: WaitStrategy) -> &'static str {
    match s {
        WaitStrategy::Spin => "spin",
        WaitStrategy::Park => "park",
        _ => "adaptive",
    }
}

fn mode_from(name: &str) -> BoxResult<WaitStrategy> {
    Ok(match name {
        "spin" => WaitStrategy::Spin,
        "park" => WaitStrategy::Park,
        "adaptive" => WaitStrategy::Adaptive,
        other => return Err(format!("unknown wait strategy {other:?}").into()),
    })
}

/// Kills and reaps the child if it is still held when dropped (error paths).
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run_mode(mode: WaitStrategy, pin: bool) -> BoxResult<()> {
    let name = mode_name(mode);
    let opts = PeerOptions::default().wait_strategy(mode);
    let mut ping = BroadcastWriter::create(&BroadcastConfig::new(CAPACITY, 1).peer_options(opts))?;
    if ping.max_inline() < SIZES[2].bytes {
        return Err(format!("max inline {} is below 1 MiB", ping.max_inline()).into());
    }
    let mut child = ChildGuard(Some(
        Command::new(std::env::current_exe()?)
            .arg("child")
            .arg(ping.handle().to_string())
            .arg(name)
            .arg(if pin { "1" } else { "-" })
            .stdout(Stdio::piped())
            .spawn()?,
    ));
    // The child answers with the handle of the pong ring it created.
    let out = child
        .0
        .as_mut()
        .and_then(|c| c.stdout.take())
        .ok_or("child has no stdout")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    let pong_handle: Handle = line
        .trim()
        .parse()
        .map_err(|e| format!("child sent {line:?}, not a handle: {e}"))?;
    let mut pong = BroadcastReader::attach_with(
        &pong_handle,
        &ReaderOptions {
            peer: opts,
            ..ReaderOptions::default()
        },
    )?;
    ping.wait_for_readers(1, Wait::timeout(Duration::from_secs(10)))?;

    let child_pid = child.0.as_ref().map_or(0, Child::id);
    for size in &SIZES {
        let mut ph = Phases::new(size.warmup, size.iters);
        let mut cpus = String::new();
        for i in 0u64.. {
            let stamp = i.to_le_bytes();
            let t0 = Instant::now();
            let mut r = ping.reserve(size.bytes)?;
            r[..8].copy_from_slice(&stamp);
            if size.bytes <= FULL_COPY_MAX {
                r[8..size.bytes].fill(i as u8);
            }
            r.commit(size.bytes)?;
            let g = pong.recv()?;
            let ok = g.len() == size.bytes && g[..8] == stamp;
            drop(g);
            let rtt = t0.elapsed();
            if !ok {
                return Err(format!(
                    "{name}: echo of round trip {i} ({} B) does not match",
                    size.bytes
                )
                .into());
            }
            if !ph.record(rtt) {
                break;
            }
            if ph.rtts.len() == 64 && cpus.is_empty() {
                cpus = placement(child_pid);
            }
        }
        print_row(name, size.bytes, &mut ph.rtts, &cpus);
    }

    // Closing the ping ring tells the child to finish.
    drop(ping);
    match pong.recv() {
        Err(Error::Closed) => {}
        Ok(_) => return Err("unexpected record on the pong ring".into()),
        Err(e) => return Err(e.into()),
    }
    let status = child.0.take().ok_or("child already reaped")?.wait()?;
    if !status.success() {
        return Err(format!("{name}: child failed: {status}").into());
    }
    Ok(())
}

/// The echoing child: `pingpong child <ping handle> <strategy> <cpu or ->`.
fn child_main(args: &[String]) -> BoxResult<()> {
    let [handle, mode, cpu] = args else {
        return Err("usage: pingpong child <handle> <spin|adaptive|park> <cpu|->".into());
    };
    if let Ok(cpu) = cpu.parse::<usize>() {
        pin_to(cpu)?;
    }
    let opts = PeerOptions::default().wait_strategy(mode_from(mode)?);
    let handle: Handle = handle.parse()?;
    let mut ping = BroadcastReader::attach_with(
        &handle,
        &ReaderOptions {
            peer: opts,
            ..ReaderOptions::default()
        },
    )?;
    let mut pong = BroadcastWriter::create(&BroadcastConfig::new(CAPACITY, 1).peer_options(opts))?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", pong.handle())?;
        stdout.flush()?;
    }
    pong.wait_for_readers(1, Wait::timeout(Duration::from_secs(10)))?;
    loop {
        let g = match ping.recv() {
            Ok(g) => g,
            Err(Error::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let n = g.len();
        let mut r = pong.reserve(n)?;
        let copy = if n <= FULL_COPY_MAX { n } else { n.min(8) };
        r[..copy].copy_from_slice(&g[..copy]);
        // Release the ping record before publishing the echo, so the parent's
        // next reservation never waits for our release.
        drop(g);
        r.commit(n)?;
    }
}

/// A warm-up, then a measurement, each bounded by a count and a time (so a
/// slow configuration, say both processes on one CPU, still ends quickly).
struct Phases {
    warmup: u32,
    iters: u32,
    done: u32,
    measuring: bool,
    since: Instant,
    rtts: Vec<u64>,
}

impl Phases {
    fn new(warmup: u32, iters: u32) -> Self {
        Phases {
            warmup,
            iters,
            done: 0,
            measuring: false,
            since: Instant::now(),
            rtts: Vec::with_capacity(iters as usize),
        }
    }

    /// Counts one round trip (kept once warm); `false` when enough are kept.
    fn record(&mut self, rtt: Duration) -> bool {
        if !self.measuring {
            self.done += 1;
            if self.done >= self.warmup
                || (self.done.is_multiple_of(64) && self.since.elapsed() > WARMUP_CAP)
            {
                self.measuring = true;
                self.since = Instant::now();
            }
            return true;
        }
        self.rtts.push(rtt.as_nanos() as u64);
        let n = self.rtts.len();
        n < self.iters as usize && !(n.is_multiple_of(64) && self.since.elapsed() > TIME_CAP)
    }
}

/// Median cost of two back-to-back `Instant::now()` calls, in ns.
fn timer_overhead() -> u64 {
    let mut v: Vec<u64> = (0..1001)
        .map(|_| {
            let a = Instant::now();
            let b = Instant::now();
            (b - a).as_nanos() as u64
        })
        .collect();
    v.sort_unstable();
    v[v.len() / 2]
}

fn print_header() {
    println!(
        "{:<9} {:>8} {:>8} {:>7} | one-way (RTT/2), ns: {:>6} {:>7} {:>7} {:>8} {:>9}",
        "mode", "size", "rounds", "cpus", "min", "p50", "p99", "p99.9", "max"
    );
}

fn print_row(mode: &str, bytes: usize, rtts: &mut [u64], cpus: &str) {
    if rtts.is_empty() {
        println!("{mode:<9} {:>8} no samples", fmt_size(bytes));
        return;
    }
    rtts.sort_unstable();
    let pct = |p: f64| rtts[((rtts.len() as f64 * p) as usize).min(rtts.len() - 1)] / 2;
    println!(
        "{mode:<9} {:>8} {:>8} {:>7} |                      {:>6} {:>7} {:>7} {:>8} {:>9}",
        fmt_size(bytes),
        rtts.len(),
        cpus,
        rtts[0] / 2,
        pct(0.50),
        pct(0.99),
        pct(0.999),
        rtts[rtts.len() - 1] / 2
    );
}

fn fmt_size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// "parent CPU/child CPU" right now (the child's from `/proc/<pid>/stat`).
fn placement(child: u32) -> String {
    // SAFETY: sched_getcpu has no preconditions.
    let me = unsafe { libc::sched_getcpu() };
    let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
    // Field 39 ("processor"); fields after the ")" closing the command name start at 3.
    let theirs = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(39 - 3))
        .unwrap_or("?");
    format!("{me}/{theirs}")
}

/// Pins the calling process to `cpu`.
fn pin_to(cpu: usize) -> BoxResult<()> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit inside `set`; it checks `cpu` against the set's size.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(format!(
            "sched_setaffinity(cpu {cpu}): {}",
            std::io::Error::last_os_error()
        )
        .into());
    }
    Ok(())
}

/// The floor: a counter bounced between two processes through two atomics on
/// separate 128-byte lines of an anonymous shared mapping. Returns the round
/// trip times after the warm-up, and where both processes ran.
#[allow(clippy::disallowed_types)] // raw std atomics on purpose: see the `use` above
fn floor_rtts(pin: bool) -> BoxResult<(Vec<u64>, String)> {
    const LEN: usize = 4096;
    // SAFETY: a fresh anonymous shared mapping; no file, the kernel picks the address.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()).into());
    }
    let base = p.cast::<u8>();
    // SAFETY: the mapping is LEN bytes, page aligned and zero filled, and
    // stays mapped until the munmap at the end of this function, after the
    // last use of both references. Offsets 0 and 128 are 8-byte aligned, and
    // zero bytes are a valid AtomicU64. Both processes only touch it through
    // atomics.
    let (ping, pong) = unsafe {
        (
            &*base.cast::<AtomicU64>(),
            &*base.add(128).cast::<AtomicU64>(),
        )
    };
    let parent = std::process::id();
    let mut ph = Phases::new(FLOOR_WARMUP, FLOOR_ROUNDS);

    // SAFETY: this process runs no other thread here (the floor runs before
    // any thread or child is started), so the child's copy of the address
    // space is consistent. The child only spins on the shared atomics and
    // calls the async-signal-safe sched_setaffinity, getppid and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: `p` is the LEN-byte mapping made above; no reference to it is used afterwards.
        unsafe { libc::munmap(p, LEN) };
        return Err(format!("fork: {e}").into());
    }
    if pid == 0 {
        if pin {
            // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            // SAFETY: CPU_SET writes one bit inside `set`.
            unsafe { libc::CPU_SET(1, &mut set) };
            // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this process.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        }
        let mut i = 1u64;
        let mut spins = 0u32;
        loop {
            let v = ping.load(Ordering::Acquire);
            if v == i {
                pong.store(i, Ordering::Release);
                i += 1;
                continue;
            }
            if v == FLOOR_STOP {
                break;
            }
            spin_loop();
            spins = spins.wrapping_add(1);
            // SAFETY: getppid has no preconditions.
            if spins.is_multiple_of(1 << 20) && unsafe { libc::getppid() } as u32 != parent {
                // SAFETY: ends the child at once, running no destructor or atexit handler.
                unsafe { libc::_exit(1) };
            }
        }
        // SAFETY: as above; the forked child must not unwind into the parent's code.
        unsafe { libc::_exit(0) };
    }

    let mut result = Ok(());
    let mut cpus = String::new();
    'rounds: for i in 1u64.. {
        let t0 = Instant::now();
        ping.store(i, Ordering::Release);
        let mut spins = 0u32;
        while pong.load(Ordering::Acquire) != i {
            spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1 << 20) {
                let mut st = 0;
                // SAFETY: `pid` is our child; WNOHANG makes this a poll.
                if unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) } != 0 {
                    result = Err(format!("floor child exited early (status {st:#x})"));
                    break 'rounds;
                }
            }
        }
        let rtt = t0.elapsed();
        if !ph.record(rtt) {
            break;
        }
        if ph.rtts.len() == 64 && cpus.is_empty() {
            cpus = placement(pid as u32);
        }
    }
    ping.store(FLOOR_STOP, Ordering::Release);
    if result.is_ok() {
        let mut st = 0;
        // SAFETY: `pid` is our child, which exits after the last round.
        if unsafe { libc::waitpid(pid, &mut st, 0) } != pid
            || !libc::WIFEXITED(st)
            || libc::WEXITSTATUS(st) != 0
        {
            result = Err(format!("floor child failed (status {st:#x})"));
        }
    }
    // SAFETY: the LEN-byte mapping made above; `ping` and `pong` are not used
    // after this point, and the child has exited (or was found gone).
    unsafe { libc::munmap(p, LEN) };
    result?;
    Ok((ph.rtts, cpus))
}
