//! shoal's shm-ring measured across processes.
//!
//! `shoal pingpong --size B --mode spin|park --iters N [--pin] [--cap B]`
//! `shoal broadcast --size B --readers R --ms T [--mode spin|park] [--cap B] [--pin]`
//! `shoal stream --min B --max B --cap B --ms T [--mode spin|park] [--pin]`
//! `shoal mpmc --size B --ms T`
//! `shoal idle --ms T`
//! `shoal wake --idle-us U --iters N [--no-pin]`
//!
//! Metrics beyond `BENCH.md`'s list: `idle` also reports
//! `idle_wakeups_per_s`, the context switches per second of the parked
//! reader's process (see [`idle`]). Patterns beyond it: `stream-overflow`
//! and `stream-inline` (see [`stream`]), `broadcast-unpinned` (a 1->1
//! broadcast left to the scheduler), `wake-idle-unpinned`, and
//! `pingpong-<K>k`: a ping-pong through rings of K KiB given by `--cap`
//! instead of the usual [`ring_for`] (at least 64 KiB).
//!
//! Prints one JSON [`Measurement`] per line. Peers are forked after the
//! rings exist; results come back through an anonymous shared mapping.
#![allow(clippy::disallowed_types)] // plain std atomics on a shared mapping

use shoal_bench::measure::Measurement;
use shoal_bench::proc::{ctxt_switches, fork, thread_cpu, Args};
use shoal_bench::shape;
use shoal_bench::shared::{now_ns, SharedMap};
use shoal_shm_ring::{
    BroadcastConfig, BroadcastReader, BroadcastWriter, Error, Handle, MpmcConfig, MpmcConsumer,
    MpmcProducer, MpmcRing, PeerOptions, ReaderOptions, Wait, WaitStrategy,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);

fn peer(mode: &str) -> PeerOptions {
    PeerOptions::default().wait_strategy(if mode == "spin" {
        WaitStrategy::Spin
    } else {
        WaitStrategy::Adaptive
    })
}

fn reader_opts(mode: &str) -> ReaderOptions {
    ReaderOptions {
        peer: peer(mode),
        ..Default::default()
    }
}

/// A ring big enough that a `size`-byte record stays inline, 4 of them fit.
fn ring_for(size: usize) -> u64 {
    ((size as u64 + 64) * 4).next_power_of_two().max(1 << 16)
}

/// Passes a handle through the shared map (fixed 64-byte slot + ready flag).
fn put_handle(map: &SharedMap, slot: usize, h: &Handle) {
    let s = h.to_string();
    let base = 1024 + slot * 128;
    // SAFETY: the 128-byte slot at `base` is inside the map and only this
    // process writes it before publishing the flag below.
    unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), map.as_ptr().add(base), s.len().min(120)) };
    map.at::<AtomicU64>(base + 120)
        .store(s.len() as u64, Ordering::Release);
}

fn get_handle(map: &SharedMap, slot: usize) -> Handle {
    let base = 1024 + slot * 128;
    let t0 = Instant::now();
    let len = loop {
        let l = map.at::<AtomicU64>(base + 120).load(Ordering::Acquire);
        if l != 0 {
            break l as usize;
        }
        assert!(t0.elapsed() < 10 * SEC, "peer never published its handle");
        std::thread::sleep(Duration::from_micros(100));
    };
    // SAFETY: published with Release before `len` became nonzero.
    let b = unsafe { std::slice::from_raw_parts(map.as_ptr().add(base), len) };
    std::str::from_utf8(b)
        .expect("utf8")
        .parse()
        .expect("handle")
}

/// Round trips per latency sample (the floor's `pingpong` uses the same).
const BATCH: u64 = 32;
/// Round trips before the first sample.
const WARMUP_ROUND_TRIPS: u64 = 1024;

/// Round trips a ping-pong run makes: warm-up plus `iters`, whole batches.
fn round_trips(iters: u64) -> u64 {
    (iters + WARMUP_ROUND_TRIPS).div_ceil(BATCH) * BATCH
}

fn pingpong(
    size: usize,
    mode: &str,
    iters: u64,
    pin: bool,
    cap: u64,
) -> Result<Measurement, Error> {
    let map = SharedMap::new(1 << 16).expect("mmap");
    // A ring other than the cell's usual one is named in the pattern.
    let pattern = if cap == 0 {
        "pingpong".to_string()
    } else {
        format!("pingpong-{}k", cap / 1024)
    };
    let cap = if cap == 0 { ring_for(size) } else { cap };
    let cfg = BroadcastConfig::new(cap, 1).peer_options(peer(mode));
    let mut ping = BroadcastWriter::create(&cfg)?;
    let ping_h = ping.handle();
    let touch = size.min(64);
    let child = fork(|| {
        if pin {
            shoal_bench::proc::pin(1);
        }
        let run = || -> Result<(), Error> {
            let mut rx = BroadcastReader::attach_with(&ping_h, &reader_opts(mode))?;
            let mut pong = BroadcastWriter::create(&cfg)?;
            put_handle(&map, 0, &pong.handle());
            pong.wait_for_readers(1, Wait::timeout(10 * SEC))?;
            for _ in 0..round_trips(iters) {
                let g = rx.recv_with(Wait::timeout(10 * SEC))?;
                let mut r = pong.reserve(size)?;
                r[..touch].copy_from_slice(&g[..touch]);
                // Reply first, then release the request.
                r.commit(size)?;
                drop(g);
            }
            Ok(())
        };
        i32::from(run().is_err())
    })
    .expect("fork");
    if pin {
        shoal_bench::proc::pin(0);
    }
    let mut rx = BroadcastReader::attach_with(&get_handle(&map, 0), &reader_opts(mode))?;
    ping.wait_for_readers(1, Wait::timeout(10 * SEC))?;
    let mut m =
        Measurement::new("shoal", &pattern, mode, "latency_one_way_ns").payload(size as u64);
    let mut stamp = [0u8; 64];
    let mut i = 0u64;
    for batch in 0..round_trips(iters) / BATCH {
        // Timed in batches of round trips, exactly as the floor is: a
        // clock read per round trip would add its own cost to every sample.
        let t0 = Instant::now();
        for _ in 0..BATCH {
            stamp[..8].copy_from_slice(&i.to_le_bytes());
            i += 1;
            let mut r = ping.reserve(size)?;
            r[..touch].copy_from_slice(&stamp[..touch]);
            r.commit(size)?;
            let g = rx.recv_with(Wait::timeout(10 * SEC))?;
            debug_assert_eq!(&g[..8.min(touch)], &stamp[..8.min(touch)]);
            drop(g);
        }
        let dt = t0.elapsed();
        if batch * BATCH >= WARMUP_ROUND_TRIPS {
            m.samples.push(dt.as_nanos() as f64 / (2 * BATCH) as f64);
        }
    }
    let _ = child.wait();
    Ok(m)
}

/// One writer, `readers` reader processes; the writer writes every payload
/// byte, every reader reads every payload byte ([`shape::fill`],
/// [`shape::sum`], as the ring floor does). Per-reader messages per second
/// below 4 KiB, bytes per second from 4 KiB up. The ring is
/// [`shape::broadcast_cap`] unless `cap` says otherwise. With `pin` the
/// writer runs on CPU 0 and reader `k` on CPU `1 + k` (modulo the CPUs);
/// a 1->1 run without it reports pattern `broadcast-unpinned`.
fn broadcast(
    size: usize,
    readers: u32,
    mode: &str,
    run: Duration,
    cap: u64,
    pin: bool,
) -> Result<Measurement, Error> {
    let map = SharedMap::new(1 << 16).expect("mmap");
    let cap = if cap > 0 {
        cap
    } else {
        shape::broadcast_cap(size)
    };
    let cfg = BroadcastConfig::new(cap, readers).peer_options(peer(mode));
    let mut w = BroadcastWriter::create(&cfg)?;
    let h = w.handle();
    let children: Vec<_> = (0..readers as usize)
        .map(|k| {
            fork(|| {
                if pin {
                    shoal_bench::proc::pin(1 + k);
                }
                let go = || -> Result<(), Error> {
                    let mut r = BroadcastReader::attach_with(&h, &reader_opts(mode))?;
                    let mut n = 0u64;
                    let mut sink = 0u64;
                    let mut t0 = None;
                    loop {
                        match r.recv_with(Wait::timeout(30 * SEC)) {
                            Ok(g) => {
                                t0.get_or_insert_with(Instant::now);
                                sink = sink.wrapping_add(shape::sum(&g));
                                n += 1;
                            }
                            Err(Error::Closed) => break,
                            Err(e) => return Err(e),
                        }
                    }
                    std::hint::black_box(sink);
                    let secs = t0.map(|t| t.elapsed().as_secs_f64()).unwrap_or(1.0);
                    map.at::<AtomicU64>(k * 128)
                        .store((n as f64 / secs).to_bits(), Ordering::Release);
                    Ok(())
                };
                i32::from(go().is_err())
            })
            .expect("fork")
        })
        .collect();
    if pin {
        shoal_bench::proc::pin(0);
    }
    w.wait_for_readers(readers, Wait::timeout(10 * SEC))?;
    let t0 = Instant::now();
    let mut i = 0u64;
    while t0.elapsed() < run {
        for _ in 0..64 {
            let mut r = w.reserve(size)?;
            shape::fill(&mut r, i as u8);
            r.commit(size)?;
            i += 1;
        }
    }
    drop(w);
    let (metric, scale) = if size >= 4096 {
        ("throughput_bytes_per_s", size as f64)
    } else {
        ("throughput_msgs_per_s", 1.0)
    };
    // 1->1 unpinned is its own row: two processes left to the scheduler
    // often share one CPU, and a parking ring then hands over within one
    // core's cache, which says nothing about a cross-core hand-over.
    let pattern = if pin || readers > 1 {
        "broadcast"
    } else {
        "broadcast-unpinned"
    };
    let mut m = Measurement::new("shoal", pattern, mode, metric)
        .payload(size as u64)
        .readers(readers)
        .processes(readers + 1);
    for (k, c) in children.into_iter().enumerate() {
        let ok = matches!(c.wait(), Ok(0));
        let rate = f64::from_bits(map.at::<AtomicU64>(k * 128).load(Ordering::Acquire));
        if ok && rate > 0.0 {
            m.samples.push(rate * scale);
        }
    }
    Ok(m)
}

/// Records of varying size (deterministic, [`shape::Sizes`] in `[min, max)`)
/// from one writer to one reader through a `cap`-byte ring, the writer
/// writing and the reader reading every byte. Pattern `stream-overflow`
/// when every record exceeds the ring's inline limit (each goes through an
/// overflow segment), `stream-inline` when every record fits inline,
/// `stream-mixed` otherwise; `payload_bytes` is `min`. Reports bytes and
/// records per second, counted by the reader after `WARMUP` records (the
/// first ones also create the overflow segments the writer then recycles,
/// and fault in the ring's pages).
fn stream(
    min: usize,
    max: usize,
    cap: u64,
    mode: &str,
    run: Duration,
    pin: bool,
) -> Result<Vec<Measurement>, Error> {
    const WARMUP: u64 = 8;
    let map = SharedMap::new(4096).expect("mmap");
    let cfg = BroadcastConfig::new(cap, 1).peer_options(peer(mode));
    let mut w = BroadcastWriter::create(&cfg)?;
    let inline = w.max_inline();
    let pattern = if min > inline {
        "stream-overflow"
    } else if max <= inline + 1 {
        "stream-inline"
    } else {
        "stream-mixed"
    };
    let h = w.handle();
    let (bytes_out, msgs_out) = (map.at::<AtomicU64>(0), map.at::<AtomicU64>(128));
    let child = fork(|| {
        if pin {
            shoal_bench::proc::pin(1);
        }
        // Ok(false): a record of the wrong size arrived (lost or reordered).
        let go = || -> Result<bool, Error> {
            let mut r = BroadcastReader::attach_with(&h, &reader_opts(mode))?;
            let mut sizes = shape::Sizes::new(min, max);
            let (mut n, mut bytes, mut sink) = (0u64, 0u64, 0u64);
            let mut t0 = None;
            loop {
                match r.recv_with(Wait::timeout(30 * SEC)) {
                    Ok(g) => {
                        if Some(g.len()) != sizes.next() {
                            return Ok(false);
                        }
                        sink = sink.wrapping_add(shape::sum(&g));
                        n += 1;
                        if n == WARMUP {
                            t0 = Some(Instant::now());
                        } else if n > WARMUP {
                            bytes += g.len() as u64;
                        }
                    }
                    Err(Error::Closed) => break,
                    Err(e) => return Err(e),
                }
            }
            std::hint::black_box(sink);
            let secs = t0.map_or(0.0, |t| t.elapsed().as_secs_f64());
            if secs > 0.0 {
                bytes_out.store((bytes as f64 / secs).to_bits(), Ordering::Release);
                msgs_out.store(((n - WARMUP) as f64 / secs).to_bits(), Ordering::Release);
            }
            Ok(true)
        };
        i32::from(!matches!(go(), Ok(true)))
    })
    .expect("fork");
    if pin {
        shoal_bench::proc::pin(0);
    }
    w.wait_for_readers(1, Wait::timeout(10 * SEC))?;
    let mut sizes = shape::Sizes::new(min, max);
    let t0 = Instant::now();
    let mut i = 0u64;
    while t0.elapsed() < run || i < 2 * WARMUP {
        let len = sizes.next().unwrap_or(min);
        let mut r = w.reserve(len)?;
        shape::fill(&mut r, i as u8);
        r.commit(len)?;
        i += 1;
    }
    drop(w);
    let ok = matches!(child.wait(), Ok(0));
    let row = |metric: &str, v: &AtomicU64| {
        let mut m = Measurement::new("shoal", pattern, mode, metric).payload(min as u64);
        let v = f64::from_bits(v.load(Ordering::Acquire));
        if ok && v > 0.0 {
            m.samples.push(v);
        } else {
            m.error = Some("stream reader failed or saw a wrong record".into());
        }
        m
    };
    Ok(vec![
        row("throughput_bytes_per_s", bytes_out),
        row("throughput_msgs_per_s", msgs_out),
    ])
}

fn mpmc(size: usize, run: Duration) -> Result<Measurement, Error> {
    let map = SharedMap::new(1 << 16).expect("mmap");
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 20, 3, 2))?;
    let h = ring.handle();
    let stop = map.at::<AtomicU64>(4096);
    let mut kids = Vec::new();
    for k in 0..2usize {
        kids.push(
            fork(|| {
                let go = || -> Result<(), Error> {
                    let mut c = MpmcConsumer::attach(&h)?;
                    let mut n = 0u64;
                    loop {
                        match c.take_with(Wait::timeout(30 * SEC)) {
                            Ok(g) => {
                                std::hint::black_box(g[0]);
                                n += 1;
                            }
                            Err(Error::Closed) => break,
                            Err(e) => return Err(e),
                        }
                    }
                    map.at::<AtomicU64>(k * 128).store(n, Ordering::Release);
                    Ok(())
                };
                i32::from(go().is_err())
            })
            .expect("fork"),
        );
    }
    let producers: Vec<_> = (0..2)
        .map(|_| {
            fork(|| {
                let go = || -> Result<(), Error> {
                    let mut p = MpmcProducer::attach(&h)?;
                    let buf = [7u8; 64];
                    while stop.load(Ordering::Relaxed) == 0 {
                        for _ in 0..64 {
                            p.send(&buf[..size.min(64)])?;
                        }
                    }
                    Ok(())
                };
                i32::from(go().is_err())
            })
            .expect("fork")
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(run);
    stop.store(1, Ordering::Relaxed);
    for p in producers {
        let _ = p.wait();
    }
    ring.producer()?.close_ring();
    for k in kids {
        let _ = k.wait();
    }
    let secs = t0.elapsed().as_secs_f64();
    let total: u64 = (0..2)
        .map(|k| map.at::<AtomicU64>(k * 128).load(Ordering::Acquire))
        .sum();
    let mut m = Measurement::new("shoal", "workqueue", "park", "throughput_msgs_per_s")
        .payload(size as u64)
        .readers(2)
        .processes(4);
    m.samples.push(total as f64 / secs);
    Ok(m)
}

/// A reader blocked on an idle ring for `run`: the CPU it used, as % of one
/// core (`idle_cpu_percent`, its own CPU time over the whole wait), and how
/// often its process woke up (`idle_wakeups_per_s`: voluntary plus
/// involuntary context switches of all its threads, read from
/// `/proc/<pid>/task/*/status` by this process at the start and the end of
/// the middle of the wait, divided by the seconds between the two reads;
/// every wake-up of a parked thread is one switch back out).
fn idle(run: Duration) -> Result<Vec<Measurement>, Error> {
    let map = SharedMap::new(4096).expect("mmap");
    let w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 1))?;
    let h = w.handle();
    let (cpu_out, done, waiting) = (
        map.at::<AtomicU64>(0),
        map.at::<AtomicU64>(128),
        map.at::<AtomicU64>(256),
    );
    let child = fork(|| {
        let go = || -> Result<(), Error> {
            let mut r = BroadcastReader::attach(&h)?;
            let c0 = thread_cpu();
            let t0 = Instant::now();
            waiting.store(1, Ordering::Release);
            let res = r.recv_with(Wait::timeout(run));
            let pct = (thread_cpu() - c0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
            if !matches!(res, Err(Error::Timeout)) {
                return Err(Error::Closed);
            }
            cpu_out.store(pct.to_bits(), Ordering::Release);
            done.store(1, Ordering::Release);
            Ok(())
        };
        i32::from(go().is_err())
    })
    .expect("fork");
    // The window: from when the reader has surely parked (past its spin
    // window) to well before its timeout ends the wait.
    let settle = (run / 10).min(Duration::from_millis(100));
    let margin = (run / 5).min(Duration::from_millis(200));
    let t_wait = Instant::now();
    while waiting.load(Ordering::Acquire) == 0 && t_wait.elapsed() < 10 * SEC {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(settle);
    let c0 = ctxt_switches(child.pid());
    let t0 = Instant::now();
    std::thread::sleep(run.saturating_sub(settle + margin));
    let c1 = ctxt_switches(child.pid());
    let secs = t0.elapsed().as_secs_f64();
    let ok = matches!(child.wait(), Ok(0)) && done.load(Ordering::Acquire) == 1;
    drop(w);
    let mut cpu = Measurement::new("shoal", "idle", "park", "idle_cpu_percent").processes(2);
    let mut wakeups = Measurement::new("shoal", "idle", "park", "idle_wakeups_per_s").processes(2);
    if ok {
        cpu.samples
            .push(f64::from_bits(cpu_out.load(Ordering::Acquire)));
        match (c0, c1) {
            (Some(a), Some(b)) if secs > 0.0 => {
                wakeups.samples.push(b.saturating_sub(a) as f64 / secs)
            }
            _ => wakeups.error = Some("cannot read the reader's context switches".into()),
        }
    } else {
        let e = "the idle reader failed".to_string();
        cpu.error = Some(e.clone());
        wakeups.error = Some(e);
    }
    Ok(vec![cpu, wakeups])
}

/// Latency from send to the parked reader running, after `idle` of silence.
/// With `pinned`, writer and reader run on different CPUs (as in the futex
/// floor cell); without, where the scheduler puts them (pattern
/// `wake-…-unpinned`).
fn wake(
    idle: Duration,
    iters: u64,
    liveness: Duration,
    pinned: bool,
) -> Result<Measurement, Error> {
    let map = SharedMap::new(4096).expect("mmap");
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 1))?;
    let h = w.handle();
    let lat = map.at::<AtomicU64>(0);
    lat.store(u64::MAX, Ordering::Release);
    let child = fork(|| {
        if pinned {
            shoal_bench::proc::pin(1);
        }
        let go = || -> Result<(), Error> {
            let opts = ReaderOptions {
                peer: PeerOptions::default().liveness_interval(liveness),
                ..Default::default()
            };
            let mut r = BroadcastReader::attach_with(&h, &opts)?;
            for _ in 0..iters {
                let g = r.recv_with(Wait::timeout(30 * SEC))?;
                let now = now_ns();
                let sent = u64::from_le_bytes(g[..8].try_into().unwrap_or([0; 8]));
                lat.store(now.saturating_sub(sent), Ordering::Release);
            }
            Ok(())
        };
        i32::from(go().is_err())
    })
    .expect("fork");
    if pinned {
        shoal_bench::proc::pin(0);
    }
    w.wait_for_readers(1, Wait::timeout(10 * SEC))?;
    let mode = if idle >= Duration::from_millis(100) {
        "idle"
    } else {
        "back-to-back"
    };
    let pattern = format!("wake-{mode}{}", if pinned { "" } else { "-unpinned" });
    let mut m = Measurement::new("shoal", &pattern, "park", "wake_latency_ns");
    for _ in 0..iters {
        std::thread::sleep(idle.max(Duration::from_micros(200)));
        w.send(&now_ns().to_le_bytes())?;
        // Wait passively: a spinning measurer could sit on the CPU the
        // kernel wakes the reader on, and the cell would time the scheduler.
        let t0 = Instant::now();
        loop {
            std::thread::sleep(Duration::from_micros(200));
            let v = lat.swap(u64::MAX, Ordering::AcqRel);
            if v != u64::MAX {
                m.samples.push(v as f64);
                break;
            }
            if t0.elapsed() > 10 * SEC {
                m.error = Some("reader never woke".into());
                break;
            }
        }
    }
    let _ = child.wait();
    Ok(m)
}

fn main() {
    let cmd = std::env::args().nth(1).unwrap_or_default();
    let a = Args::from_env(2);
    let size = a.get("size", 64usize);
    let mode = a.get("mode", "park".to_string());
    let ms = Duration::from_millis(a.get("ms", 500u64));
    let one = |r: Result<Measurement, Error>| r.map(|m| vec![m]);
    let r = match cmd.as_str() {
        "pingpong" => one(pingpong(
            size,
            &mode,
            a.get("iters", 10_000u64),
            a.has("pin"),
            a.get("cap", 0u64),
        )),
        "broadcast" => one(broadcast(
            size,
            a.get("readers", 1u32),
            &mode,
            ms,
            a.get("cap", 0u64),
            a.has("pin"),
        )),
        "stream" => {
            let min = a.get("min", 1usize << 20);
            stream(
                min,
                a.get("max", 2 * min),
                a.get("cap", 2u64 << 20),
                &mode,
                ms,
                a.has("pin"),
            )
        }
        "mpmc" => one(mpmc(size, ms)),
        "idle" => idle(ms),
        "wake" => one(wake(
            Duration::from_micros(a.get("idle-us", 0u64)),
            a.get("iters", 5u64),
            Duration::from_millis(a.get("liveness-ms", 50u64)),
            !a.has("no-pin"),
        )),
        _ => {
            eprintln!("usage: shoal <pingpong|broadcast|stream|mpmc|idle|wake> [--size B] [--mode spin|park] [--iters N] [--readers R] [--ms T] [--cap B] [--min B --max B] [--idle-us U] [--pin | --no-pin]");
            std::process::exit(2);
        }
    };
    match r {
        Ok(ms) => ms.iter().for_each(Measurement::emit),
        Err(e) => {
            let mut m = Measurement::new("shoal", &cmd, &mode, "error");
            m.error = Some(e.to_string());
            m.emit();
        }
    }
}
