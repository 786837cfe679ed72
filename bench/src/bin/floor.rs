//! The physical floor: cross-process cache-line ping-pong, a 1 MiB stream
//! hand-over, memcpy bandwidth, and a bare cross-process futex wake.
//!
//! `floor <pingpong|stream|memcpy|futex> [--iters N] [--size B] [--idle-us U]`
//! prints one JSON [`Measurement`] per line.
#![allow(clippy::disallowed_types)] // plain std atomics on a shared mapping

use shoal_bench::measure::Measurement;
use shoal_bench::proc::{fork, Args};
use shoal_bench::shared::{now_ns, SharedMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Round trips per floor sample (the clock would dominate a single one).
const BATCH: u64 = 32;

fn pingpong(iters: u64) -> Measurement {
    let map = SharedMap::new(4096).expect("mmap");
    let (a, b) = (map.at::<AtomicU64>(0), map.at::<AtomicU64>(128));
    let child = fork(|| {
        for i in 1..=iters * BATCH {
            while a.load(Ordering::Acquire) != i {
                std::hint::spin_loop();
            }
            b.store(i, Ordering::Release);
        }
        0
    })
    .expect("fork");
    let mut m = Measurement::new("floor", "pingpong", "spin", "latency_one_way_ns").payload(8);
    let mut i = 0;
    for _ in 0..iters {
        let t0 = Instant::now();
        for _ in 0..BATCH {
            i += 1;
            a.store(i, Ordering::Release);
            while b.load(Ordering::Acquire) != i {
                std::hint::spin_loop();
            }
        }
        m.samples
            .push(t0.elapsed().as_nanos() as f64 / (2 * BATCH) as f64);
    }
    let _ = child.wait();
    m
}

fn stream(iters: u64, size: usize) -> Measurement {
    let map = SharedMap::new(size + 4096).expect("mmap");
    let (flag, ack) = (map.at::<AtomicU64>(0), map.at::<AtomicU64>(128));
    let buf = map.as_ptr().wrapping_add(4096);
    let child = fork(|| {
        let mut sink = 0u64;
        for i in 1..=iters {
            while flag.load(Ordering::Acquire) != i {
                std::hint::spin_loop();
            }
            // SAFETY: the writer does not touch the buffer until we ack.
            let s = unsafe { std::slice::from_raw_parts(buf as *const u64, size / 8) };
            sink = sink.wrapping_add(s.iter().fold(0u64, |x, &y| x.wrapping_add(y)));
            ack.store(i, Ordering::Release);
        }
        std::hint::black_box(sink);
        0
    })
    .expect("fork");
    let mut m =
        Measurement::new("floor", "stream", "spin", "throughput_bytes_per_s").payload(size as u64);
    for i in 1..=iters {
        let t0 = Instant::now();
        // SAFETY: the reader does not touch the buffer until we flag.
        unsafe { std::ptr::write_bytes(buf, i as u8, size) };
        flag.store(i, Ordering::Release);
        while ack.load(Ordering::Acquire) != i {
            std::hint::spin_loop();
        }
        m.samples.push(size as f64 / t0.elapsed().as_secs_f64());
    }
    let _ = child.wait();
    m
}

fn memcpy(iters: u64, size: usize) -> Measurement {
    let src = vec![1u8; size];
    let mut dst = vec![0u8; size];
    let mut m = Measurement::new("floor", "memcpy", "none", "throughput_bytes_per_s")
        .payload(size as u64)
        .processes(1)
        .transport("none");
    // Small copies are timed in batches so the clock does not dominate.
    let reps = (1 << 22) / size.max(1) + 1;
    for _ in 0..iters {
        let t0 = Instant::now();
        for _ in 0..reps {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
        }
        m.samples
            .push((size * reps) as f64 / t0.elapsed().as_secs_f64());
    }
    m
}

fn futex_wait(w: &AtomicU32, val: u32) {
    // SAFETY: a shared FUTEX_WAIT on a live word in a shared mapping.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            w as *const AtomicU32,
            libc::FUTEX_WAIT,
            val,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

fn futex_wake(w: &AtomicU32) {
    // SAFETY: a shared FUTEX_WAKE; the address is only a key.
    unsafe { libc::syscall(libc::SYS_futex, w as *const AtomicU32, libc::FUTEX_WAKE, 1) };
}

/// The waker sleeps `idle`, stamps the time, bumps the word and wakes; the
/// waiter records how long after the stamp it ran again.
fn futex(iters: u64, idle: Duration) -> Measurement {
    let map = SharedMap::new(4096).expect("mmap");
    let word = map.at::<AtomicU32>(0);
    let asleep = map.at::<AtomicU32>(128);
    let stamp = map.at::<AtomicU64>(256);
    let lat = map.at::<AtomicU64>(384);
    // Waker and sleeper on different CPUs: the cross-core wake.
    let child = fork(|| {
        shoal_bench::proc::pin(1);
        for i in 0..iters as u32 {
            asleep.store(i + 1, Ordering::Release);
            while word.load(Ordering::Acquire) == i {
                futex_wait(word, i);
            }
            let now = now_ns();
            lat.store(
                now.saturating_sub(stamp.load(Ordering::Acquire)),
                Ordering::Release,
            );
        }
        0
    })
    .expect("fork");
    let mode = if idle >= Duration::from_millis(100) {
        "idle"
    } else {
        "back-to-back"
    };
    shoal_bench::proc::pin(0);
    let mut m = Measurement::new("floor", "futex", "park", "wake_latency_ns");
    m.pattern = format!("futex-{mode}");
    for i in 0..iters as u32 {
        while asleep.load(Ordering::Acquire) != i + 1 {
            std::hint::spin_loop();
        }
        // Let the waiter reach FUTEX_WAIT (and its vCPU halt).
        std::thread::sleep(idle.max(Duration::from_micros(200)));
        lat.store(u64::MAX, Ordering::Release);
        stamp.store(now_ns(), Ordering::Release);
        word.store(i + 1, Ordering::Release);
        futex_wake(word);
        // Wait passively (see the shoal wake cell): never spin on the CPU
        // the waiter may be woken on.
        while lat.load(Ordering::Acquire) == u64::MAX {
            std::thread::sleep(Duration::from_micros(200));
        }
        m.samples.push(lat.load(Ordering::Acquire) as f64);
    }
    let _ = child.wait();
    m
}

fn main() {
    let cmd = std::env::args().nth(1).unwrap_or_default();
    let a = Args::from_env(2);
    let iters = a.get("iters", 2000u64);
    let m = match cmd.as_str() {
        "pingpong" => pingpong(iters),
        "stream" => stream(iters, a.get("size", 1usize << 20)),
        "memcpy" => memcpy(iters, a.get("size", 4096usize)),
        "futex" => futex(iters, Duration::from_micros(a.get("idle-us", 0u64))),
        _ => {
            eprintln!(
                "usage: floor <pingpong|stream|memcpy|futex> [--iters N] [--size B] [--idle-us U]"
            );
            std::process::exit(2);
        }
    };
    m.emit();
}
