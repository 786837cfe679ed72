//! shoal's shm-ring measured across processes.
//!
//! `shoal pingpong --size B --mode spin|park --iters N`
//! `shoal broadcast --size B --readers R --ms T [--mode spin|park]`
//! `shoal mpmc --size B --ms T`
//! `shoal idle --ms T`
//! `shoal wake --idle-us U --iters N`
//!
//! Prints one JSON [`Measurement`] per line. Peers are forked after the
//! rings exist; results come back through an anonymous shared mapping.
#![allow(clippy::disallowed_types)] // plain std atomics on a shared mapping

use shoal_bench::measure::Measurement;
use shoal_bench::proc::{fork, thread_cpu, Args};
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

fn pingpong(size: usize, mode: &str, iters: u64, pin: bool) -> Result<Measurement, Error> {
    let map = SharedMap::new(1 << 16).expect("mmap");
    let cfg = BroadcastConfig::new(ring_for(size), 1).peer_options(peer(mode));
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
            for _ in 0..iters + 1000 {
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
        Measurement::new("shoal", "pingpong", mode, "latency_one_way_ns").payload(size as u64);
    let mut stamp = [0u8; 64];
    for i in 0..iters + 1000 {
        stamp[..8].copy_from_slice(&i.to_le_bytes());
        let t0 = Instant::now();
        let mut r = ping.reserve(size)?;
        r[..touch].copy_from_slice(&stamp[..touch]);
        r.commit(size)?;
        let g = rx.recv_with(Wait::timeout(10 * SEC))?;
        let dt = t0.elapsed();
        debug_assert_eq!(&g[..8.min(touch)], &stamp[..8.min(touch)]);
        drop(g);
        if i >= 1000 {
            m.samples.push(dt.as_nanos() as f64 / 2.0);
        }
    }
    let _ = child.wait();
    Ok(m)
}

fn broadcast(
    size: usize,
    readers: u32,
    mode: &str,
    run: Duration,
    cap: u64,
) -> Result<Measurement, Error> {
    let map = SharedMap::new(1 << 16).expect("mmap");
    // Default: about two records in flight (plus the ring's slack), at least
    // 256 KiB: small enough to stay in cache, like the stream floor's buffer.
    let cap = if cap > 0 {
        cap
    } else {
        ((size as u64 + 64) * 2 + 128)
            .next_power_of_two()
            .max(1 << 18)
    };
    let cfg = BroadcastConfig::new(cap, readers).peer_options(peer(mode));
    let mut w = BroadcastWriter::create(&cfg)?;
    let h = w.handle();
    let touch_all = size >= 4096;
    let children: Vec<_> = (0..readers as usize)
        .map(|k| {
            fork(|| {
                let go = || -> Result<(), Error> {
                    let mut r = BroadcastReader::attach_with(&h, &reader_opts(mode))?;
                    let mut n = 0u64;
                    let mut sink = 0u64;
                    let mut t0 = None;
                    loop {
                        match r.recv_with(Wait::timeout(30 * SEC)) {
                            Ok(g) => {
                                t0.get_or_insert_with(Instant::now);
                                if touch_all {
                                    // Touch every byte, as a consumer would.
                                    for c in g.chunks_exact(8) {
                                        sink = sink.wrapping_add(u64::from_le_bytes(
                                            c.try_into().unwrap_or([0; 8]),
                                        ));
                                    }
                                } else {
                                    sink = sink.wrapping_add(u64::from(g[0]));
                                }
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
    w.wait_for_readers(readers, Wait::timeout(10 * SEC))?;
    let t0 = Instant::now();
    let mut i = 0u64;
    while t0.elapsed() < run {
        for _ in 0..64 {
            let mut r = w.reserve(size)?;
            if touch_all {
                r.fill(i as u8);
            } else {
                r[..8.min(size)].copy_from_slice(&i.to_le_bytes()[..8.min(size)]);
            }
            r.commit(size)?;
            i += 1;
        }
    }
    drop(w);
    let (metric, scale) = if touch_all {
        ("throughput_bytes_per_s", size as f64)
    } else {
        ("throughput_msgs_per_s", 1.0)
    };
    let mut m = Measurement::new("shoal", "broadcast", mode, metric)
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

/// CPU used by a reader blocked on an idle ring, as % of one core.
fn idle(run: Duration) -> Result<Measurement, Error> {
    let map = SharedMap::new(4096).expect("mmap");
    let w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 1))?;
    let h = w.handle();
    let child = fork(|| {
        let go = || -> Result<(), Error> {
            let mut r = BroadcastReader::attach(&h)?;
            let c0 = thread_cpu();
            let t0 = Instant::now();
            let res = r.recv_with(Wait::timeout(run));
            let pct = (thread_cpu() - c0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
            if !matches!(res, Err(Error::Timeout)) {
                return Err(Error::Closed);
            }
            map.at::<AtomicU64>(0)
                .store(pct.to_bits(), Ordering::Release);
            map.at::<AtomicU64>(128).store(1, Ordering::Release);
            Ok(())
        };
        i32::from(go().is_err())
    })
    .expect("fork");
    let ok = matches!(child.wait(), Ok(0));
    drop(w);
    let mut m = Measurement::new("shoal", "idle", "park", "idle_cpu_percent").processes(2);
    if ok && map.at::<AtomicU64>(128).load(Ordering::Acquire) == 1 {
        m.samples.push(f64::from_bits(
            map.at::<AtomicU64>(0).load(Ordering::Acquire),
        ));
    }
    Ok(m)
}

/// Latency from send to the parked reader running, after `idle` of silence.
fn wake(idle: Duration, iters: u64, liveness: Duration) -> Result<Measurement, Error> {
    let map = SharedMap::new(4096).expect("mmap");
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 1))?;
    let h = w.handle();
    let lat = map.at::<AtomicU64>(0);
    lat.store(u64::MAX, Ordering::Release);
    // Waker and sleeper on different CPUs, as in the futex floor cell.
    let child = fork(|| {
        shoal_bench::proc::pin(1);
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
    shoal_bench::proc::pin(0);
    w.wait_for_readers(1, Wait::timeout(10 * SEC))?;
    let mode = if idle >= Duration::from_millis(100) {
        "idle"
    } else {
        "back-to-back"
    };
    let mut m = Measurement::new("shoal", &format!("wake-{mode}"), "park", "wake_latency_ns");
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
    let r = match cmd.as_str() {
        "pingpong" => pingpong(size, &mode, a.get("iters", 10_000u64), a.has("pin")),
        "broadcast" => broadcast(size, a.get("readers", 1u32), &mode, ms, a.get("cap", 0u64)),
        "mpmc" => mpmc(size, ms),
        "idle" => idle(ms),
        "wake" => wake(
            Duration::from_micros(a.get("idle-us", 0u64)),
            a.get("iters", 5u64),
            Duration::from_millis(a.get("liveness-ms", 50u64)),
        ),
        _ => {
            eprintln!("usage: shoal <pingpong|broadcast|mpmc|idle|wake> [--size B] [--mode spin|park] [--iters N] [--readers R] [--ms T] [--idle-us U]");
            std::process::exit(2);
        }
    };
    match r {
        Ok(m) => m.emit(),
        Err(e) => {
            let mut m = Measurement::new("shoal", &cmd, &mode, "error");
            m.error = Some(e.to_string());
            m.emit();
        }
    }
}
