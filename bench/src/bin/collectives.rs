//! shoal's collectives measured beside Open MPI in the same run.
//!
//! `collectives OP --procs N [--iters I] [--size B] [--tasks T] [--mpi]`
//! starts N ranks (this binary again, with the variables `cargo xtask run`
//! sets) and prints rank 0's measurement; with `--mpi`, Open MPI's figure
//! for the same operation instead (`bench/mpi/mpi_peer.c`, compiled with
//! mpicc and started with `mpirun`; reported as an error naming what is
//! missing when Open MPI is not installed). OPs:
//!
//! - `barrier`: the mean time of a barrier, timed on rank 0 over batches
//!   of 50 back-to-back barriers (`--iters` in all; `barrier_ns`);
//! - `bcast`: a broadcast of `--size` bytes from rank 0 after an untimed
//!   barrier: the slowest rank's time to have it (`latency_one_way_ns`);
//! - `lock`: every rank takes and gives back the group lock `--iters`
//!   times at once: time per grant (`lock_handoff_ns`);
//! - `array`: rank 0 sets a 1000x1000 f64 block (the whole array) of a
//!   SharedArray: the set's time on rank 0, beside a memcpy of the same
//!   8 MB in the same process (system `memcpy`);
//! - `batch`: `--tasks` tasks worked by every rank (worker groups of
//!   one): tasks per second from the first hand-out to the last finish
//!   (not to the moment the last rank learns that none is left).
//!
//! Ranks are placed as mpirun places its own: one per core while the
//! cores suffice, unbound when oversubscribed.

use shoal_bench::measure::Measurement;
use shoal_bench::proc::Args;
use shoal_collectives::{Batch, BatchOptions, Group, GroupOptions, SharedArray};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Barriers timed together for one barrier sample.
const BARRIER_BATCH: u32 = 50;

fn main() {
    let a = Args::from_env(1);
    let op = std::env::args().nth(1).unwrap_or_default();
    if std::env::var("SHOAL_RANK").is_ok() {
        if let Err(e) = rank(&op, &a) {
            eprintln!("collectives {op}: rank failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    let procs = a.get("procs", 4u32).max(1);
    let r = if a.has("mpi") {
        mpi(&op, procs, &a)
    } else {
        launch(procs)
    };
    if let Err(e) = r {
        let (pattern, metric) = shape(&op);
        let mut m = Measurement::new(
            if a.has("mpi") { "openmpi" } else { "shoal" },
            pattern,
            "park",
            metric,
        )
        .processes(procs)
        .readers(procs.saturating_sub(1))
        .payload(a.get("size", 0u64));
        m.error = Some(e);
        m.emit();
    }
}

/// The pattern and metric of an op.
fn shape(op: &str) -> (&'static str, &'static str) {
    match op {
        "barrier" => ("barrier", "barrier_ns"),
        "bcast" => ("collective-broadcast", "latency_one_way_ns"),
        "lock" => ("lock", "lock_handoff_ns"),
        "array" => ("shared-array-set", "latency_ns"),
        _ => ("batch", "throughput_msgs_per_s"),
    }
}

/// Starts `procs` ranks of this binary with the same arguments; prints
/// rank 0's output.
fn launch(procs: u32) -> Result<(), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut kids = Vec::new();
    for r in 0..procs {
        let child = Command::new(&exe)
            .args(&args)
            .env("SHOAL_RANK", r.to_string())
            .env("SHOAL_SIZE", procs.to_string())
            .env("SHOAL_RENDEZVOUS", format!("127.0.0.1:{port}"))
            .env_remove("SHOAL_HOST")
            .stdout(if r == 0 {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .spawn()
            .map_err(|e| e.to_string())?;
        kids.push(child);
    }
    let mut out = String::new();
    let mut failed = None;
    for (r, k) in kids.into_iter().enumerate() {
        let o = k.wait_with_output().map_err(|e| e.to_string())?;
        if r == 0 {
            out = String::from_utf8_lossy(&o.stdout).into_owned();
        }
        if !o.status.success() {
            failed = Some(format!("rank {r} exited {}", o.status));
        }
    }
    if let Some(f) = failed {
        return Err(f);
    }
    print!("{out}");
    Ok(())
}

/// Open MPI's figure for `op`.
fn mpi(op: &str, procs: u32, a: &Args) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe.with_file_name("mpi_peer");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/mpi/mpi_peer.c");
    let stale = match (std::fs::metadata(&bin), std::fs::metadata(src)) {
        (Ok(b), Ok(s)) => b.modified().ok() < s.modified().ok(),
        _ => true,
    };
    if stale {
        let st = Command::new("mpicc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(src)
            .status()
            .map_err(|e| format!("skipped: Open MPI's mpicc is not installed ({e}); cargo xtask bench-matrix provisions it (as root)"))?;
        if !st.success() {
            return Err(format!("mpicc failed ({st})"));
        }
    }
    let iters = a.get("iters", 1000u32).to_string();
    let mut args = vec![op.to_string()];
    if op == "bcast" {
        args.push(a.get("size", 8u64).to_string());
    }
    args.push(iters);
    let o = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-n"])
        .arg(procs.to_string())
        .arg(&bin)
        .args(&args)
        .output()
        .map_err(|e| format!("skipped: mpirun is not installed ({e})"))?;
    if !o.status.success() {
        return Err(format!(
            "mpirun exited {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    print!("{}", String::from_utf8_lossy(&o.stdout));
    Ok(())
}

/// This host's monotonic clock in ns (one clock for every process).
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// From the first rank's start to the last rank's end, in ns (on rank 0;
/// `None` elsewhere): a rank the barrier let go late does not shorten it.
fn span(g: &Group, start: u64, end: u64) -> Result<Option<f64>, String> {
    let all = g.gather(0, &(start, end)).map_err(|x| x.to_string())?;
    Ok(all.map(|v| {
        let pairs: Vec<(u64, u64)> = v.iter().filter_map(|x| x.deserialize().ok()).collect();
        let first = pairs.iter().map(|p| p.0).min().unwrap_or(0);
        let last = pairs.iter().map(|p| p.1).max().unwrap_or(0);
        last.saturating_sub(first) as f64
    }))
}

/// One rank's part; rank 0 prints the measurement.
fn rank(op: &str, a: &Args) -> Result<(), String> {
    let e = |x: shoal_collectives::Error| x.to_string();
    let g = Group::from_env_with(&GroupOptions::default().timeout(Duration::from_secs(120)))
        .map_err(e)?;
    let procs = g.size();
    // As mpirun places its ranks: one per core while there are cores
    // enough, unbound when oversubscribed.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if procs as usize <= cpus {
        shoal_bench::proc::pin(g.rank() as usize % cpus);
    }
    let iters = a.get("iters", 1000u32);
    let (pattern, metric) = shape(op);
    let m = Measurement::new("shoal", pattern, "park", metric)
        .processes(procs)
        .readers(procs.saturating_sub(1));
    let mut samples = Vec::new();
    match op {
        "barrier" => {
            for _ in 0..100 {
                g.barrier().map_err(e)?;
            }
            // The mean of a batch of back-to-back barriers (as OSU's
            // osu_barrier reports): one call's time is bimodal under a
            // central counter (the last rank to arrive returns at once,
            // and waits in its next call instead).
            for _ in 0..(iters / BARRIER_BATCH).max(1) {
                let t = Instant::now();
                for _ in 0..BARRIER_BATCH {
                    g.barrier().map_err(e)?;
                }
                samples.push(t.elapsed().as_nanos() as f64 / f64::from(BARRIER_BATCH));
            }
        }
        "bcast" => {
            // From the root's start to the last rank's having it, on one
            // clock (the host's monotonic clock): a rank the barrier let
            // go late does not shorten it.
            let size = a.get("size", 8usize);
            let value = vec![7u8; size];
            let mut starts = Vec::with_capacity(iters as usize);
            let mut ends = Vec::with_capacity(iters as usize);
            for i in 0..iters + 20 {
                g.barrier().map_err(e)?;
                let t = mono_ns();
                let v = g
                    .broadcast(0, (g.rank() == 0).then_some(&value))
                    .map_err(e)?;
                let end = mono_ns();
                std::hint::black_box(v.get().len());
                if i >= 20 {
                    starts.push(t);
                    ends.push(end);
                }
            }
            if let Some(all) = g.gather(0, &ends).map_err(e)? {
                let all: Vec<Vec<u64>> = all
                    .iter()
                    .map(|v| v.deserialize())
                    .collect::<Result<_, _>>()
                    .map_err(e)?;
                samples = (0..starts.len())
                    .map(|i| {
                        let last = all.iter().map(|v| v[i]).max().unwrap_or(0);
                        last.saturating_sub(starts[i]) as f64
                    })
                    .collect();
            }
            if g.rank() == 0 {
                let mut m = m.payload(size as u64);
                m.samples = samples;
                m.emit();
            }
            return g.barrier().map_err(e);
        }
        "lock" => {
            let lock = g.lock("bench").map_err(e)?;
            let mut count = 0u64;
            for _ in 0..5 {
                g.barrier().map_err(e)?;
                let t = mono_ns();
                for _ in 0..iters {
                    let _guard = lock.lock().map_err(e)?;
                    count = std::hint::black_box(count + 1);
                }
                if let Some(span) = span(&g, t, mono_ns())? {
                    samples.push(span / (f64::from(iters) * f64::from(procs)));
                }
            }
        }
        "array" => {
            let arr = SharedArray::<f64>::new(&g, &[1000, 1000]).map_err(e)?;
            let block: Vec<f64> = (0..1_000_000).map(|i| i as f64).collect();
            let mut dst = vec![0f64; 1_000_000];
            let mut copies = Vec::new();
            for i in 0..iters + 3 {
                g.barrier().map_err(e)?;
                let t = Instant::now();
                arr.set(
                    (g.rank() == 0).then_some(&block[..]),
                    &[1000, 1000],
                    &[0, 0],
                    0,
                )
                .map_err(e)?;
                let dt = t.elapsed().as_nanos() as f64;
                if g.rank() == 0 {
                    let t = Instant::now();
                    dst.copy_from_slice(&block);
                    std::hint::black_box(&dst);
                    let c = t.elapsed().as_nanos() as f64;
                    if i >= 3 {
                        samples.push(dt);
                        copies.push(c);
                    }
                }
            }
            if g.rank() == 0 {
                let mut c = Measurement::new("memcpy", "shared-array-set", "none", "latency_ns")
                    .payload(8_000_000)
                    .processes(1)
                    .readers(procs.saturating_sub(1));
                c.samples = copies;
                c.emit();
            }
            let mut m = m.payload(8_000_000);
            m.samples = samples;
            if g.rank() == 0 {
                m.emit();
            }
            return g.barrier().map_err(e);
        }
        "batch" => {
            let tasks = a.get("tasks", 1000u64);
            for _ in 0..5 {
                let mut b = Batch::new(&g, tasks, 1, &BatchOptions::default()).map_err(e)?;
                g.barrier().map_err(e)?;
                let t = mono_ns();
                // The last finish: the call that returned None began by
                // finishing this rank's last task (its answer, None, may
                // come later: the rank waits for tasks of others that
                // could come back, and on this oversubscribed host for
                // its turn on a core).
                // A rank that found none left finished nothing: its end
                // is no finish (0), and its start is no hand-out (the
                // latest start of any rank at most).
                let mut had = false;
                let (t, end) = loop {
                    let before = mono_ns();
                    match b.next_task().map_err(e)? {
                        Some(_) => had = true,
                        None if had => break (t, before),
                        None => break (u64::MAX, 0),
                    }
                };
                b.finish_all().map_err(e)?;
                if let Some(span) = span(&g, t, end)? {
                    samples.push(tasks as f64 / (span / 1e9));
                }
            }
            let mut m = m.payload(tasks);
            m.samples = samples;
            if g.rank() == 0 {
                m.emit();
            }
            return g.barrier().map_err(e);
        }
        other => return Err(format!("unknown op {other}")),
    }
    if g.rank() == 0 {
        let mut m = m;
        m.samples = samples;
        m.emit();
    }
    g.barrier().map_err(e)
}
