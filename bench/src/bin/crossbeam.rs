//! In-process reference for the MPMC cell: crossbeam's `ArrayQueue` (the
//! Vyukov bounded queue) with 2 producer and 2 consumer threads, 64-byte
//! messages.
//!
//! `crossbeam mpmc --ms T` prints one JSON [`Measurement`].
#![allow(clippy::disallowed_types)] // plain std atomics, in-process

use crossbeam_queue::ArrayQueue;
use shoal_bench::measure::Measurement;
use shoal_bench::proc::Args;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let a = Args::from_env(2);
    let run = Duration::from_millis(a.get("ms", 500u64));
    let q = Arc::new(ArrayQueue::<[u8; 64]>::new(16384));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let taken = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..2)
        .map(|_| {
            let (q, stop) = (q.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        let mut m = [7u8; 64];
                        while let Err(back) = q.push(m) {
                            m = back;
                            std::thread::yield_now();
                        }
                    }
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let (q, done, taken) = (q.clone(), done.clone(), taken.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                loop {
                    match q.pop() {
                        Some(m) => {
                            std::hint::black_box(m[0]);
                            n += 1;
                        }
                        None if done.load(Ordering::Acquire) => break,
                        None => std::thread::yield_now(),
                    }
                }
                taken.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        let _ = p.join();
    }
    done.store(true, Ordering::Release);
    for c in consumers {
        let _ = c.join();
    }
    let mut m = Measurement::new("crossbeam", "workqueue", "spin", "throughput_msgs_per_s")
        .payload(64)
        .readers(2)
        .processes(1)
        .transport("in-process");
    m.samples
        .push(taken.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64());
    m.emit();
}
