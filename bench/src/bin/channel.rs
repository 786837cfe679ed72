//! shoal-channel measured across processes.
//!
//! `channel workqueue --producers P --consumers C --size B --ms T [--raw]`:
//! WorkQueue throughput, P producer processes putting B-byte messages as
//! fast as the queue takes them and C consumer processes taking them, for
//! T ms; then the producers stop, the queue is closed, and the consumers
//! drain it and end (`take` returns `None`: the termination path runs in
//! every cell). Metric `throughput_msgs_per_s` (messages taken), one
//! sample per 100 ms slice; pattern `channel-workqueue`, mode `park` (waits spin,
//! then park), `readers` = C, processes P + C.
//!
//! With `--raw`: the peer, the raw MPMC ring underneath (shoal-shm-ring)
//! in the same configuration, closed outright at the end (system
//! `shm-ring`): what the channel adds over the ring.
//!
//! `channel broadcast --readers R --size B --ms T [--raw]`: Broadcast
//! throughput on one host, R reader processes, the slowest reader's
//! rate per 100 ms slice (pattern `channel-broadcast`), beside the raw broadcast
//! ring with `--raw`.
//!
//! `channel broadcast-latency --readers R --size B --iters N [--raw]`:
//! from a send to every reader having it, one message at a time (metric
//! `latency_one_way_ns`), beside the raw broadcast ring with `--raw`.
//!
//! `channel broadcast-net --wire nng-tcp|quic --readers R --size B --ms T
//! [--raw] [--hosts]`: Broadcast throughput to R remote reader processes
//! through the writer's network publisher, the slowest reader's rate,
//! beside the transport's own publish/subscribe with `--raw`; on
//! loopback, or with `--hosts` across two network namespaces joined by a
//! veth pair (root; transport `nng-tcp-netns` / `quic-netns`).
//! `channel broadcast-net-latency ... --iters N`: the same, one message
//! at a time, from its send until every reader has it (metric
//! `latency_one_way_ns`).
//!
//! `channel workqueue-net --wire nng-tcp|quic --remote producer|consumer
//! --size B --ms T [--raw] [--hosts]`: WorkQueue throughput with its
//! producer (or consumer) on another host, reaching the queue through its
//! bridge (a remote consumer prefetching 64, or `--prefetch N`: mode
//! `prefetch-N`), beside the transport's own
//! push/pull between the same hosts with `--raw` (patterns
//! `channel-workqueue-remote-put` / `-take`).
//!
//! `channel rpc --workers W --iters N [--raw]`: an Rpc call's round trip
//! to W worker processes (pattern `channel-rpc`), beside the same fan-out
//! and fan-in on the raw rings with `--raw`.
//!
//! `channel typed --iters N`: what reading a small struct taken from a
//! WorkQueue as a validated rkyv archive adds over its raw bytes, in
//! place (metric `typed_receive_overhead_ns`).
//!
//! Prints one JSON [`Measurement`] per line.

use shoal_bench::measure::Measurement;
use shoal_bench::proc::{fork, Args};
use shoal_bench::shared::SharedMap;
use shoal_channel::{Consumer, Producer, QueueOptions, WorkQueue};
use shoal_shm_ring::{MpmcConfig, MpmcConsumer, MpmcProducer, MpmcRing, Wait};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SLICE: Duration = Duration::from_millis(100);
/// Messages a consumer takes between updates of its shared counter.
const BATCH: u64 = 64;
const CAPACITY: u64 = 1 << 20;

/// Where each process's counter lives in the shared map (a line pair each).
fn slot(i: usize) -> usize {
    128 + i * 128
}

fn workqueue(p: usize, c: usize, size: usize, run: Duration, raw: bool) -> Measurement {
    let system = if raw { "shm-ring" } else { "shoal" };
    let m = Measurement::new(system, "channel-workqueue", "park", "throughput_msgs_per_s")
        .payload(size as u64)
        .readers(c as u32)
        .processes((p + c) as u32);
    let r = (|| -> Result<Vec<f64>, String> {
        let map = SharedMap::new(4096 + 128 * (p + c)).map_err(|e| e.to_string())?;
        let stop = map.at::<AtomicU64>(0);
        let opts = QueueOptions::default()
            .capacity(CAPACITY)
            .peers(p as u32 + 1, c as u32);
        // The queue (or the raw ring) lives in this process.
        let (queue, ring) = if raw {
            let cfg = MpmcConfig::new(CAPACITY, p as u32 + 1, c as u32);
            (
                None,
                Some(MpmcRing::create(&cfg).map_err(|e| e.to_string())?),
            )
        } else {
            (
                Some(WorkQueue::create(&opts).map_err(|e| e.to_string())?),
                None,
            )
        };
        let mut kids = Vec::new();
        for k in 0..c {
            let counter = map.at::<AtomicU64>(slot(k));
            let (queue, ring) = (&queue, &ring);
            let opts = &opts;
            kids.push(
                fork(move || {
                    let mut n = 0u64;
                    let flush = |n: u64| counter.store(n, Ordering::Release);
                    if let Some(q) = queue {
                        let Ok(mut c) = Consumer::attach_with(q.handle(), opts) else {
                            return 1;
                        };
                        loop {
                            match c.take() {
                                Ok(Some(msg)) => {
                                    std::hint::black_box(msg.first());
                                    n += 1;
                                    if n.is_multiple_of(BATCH) {
                                        flush(n);
                                    }
                                }
                                Ok(None) => break,
                                Err(_) => return 1,
                            }
                        }
                    } else if let Some(r) = ring {
                        let Ok(mut c) = MpmcConsumer::attach(&r.handle()) else {
                            return 1;
                        };
                        loop {
                            match c.take_with(Wait::timeout(Duration::from_secs(30))) {
                                Ok(g) => {
                                    std::hint::black_box(g.first());
                                    n += 1;
                                    if n.is_multiple_of(BATCH) {
                                        flush(n);
                                    }
                                }
                                Err(shoal_shm_ring::Error::Closed) => break,
                                Err(_) => return 1,
                            }
                        }
                    }
                    flush(n);
                    0
                })
                .map_err(|e| e.to_string())?,
            );
        }
        let msg = vec![7u8; size];
        let producers: Vec<_> = (0..p)
            .map(|_| {
                let (queue, ring, msg) = (&queue, &ring, &msg);
                let opts = &opts;
                fork(move || {
                    if let Some(q) = queue {
                        let Ok(mut p) = Producer::attach_with(q.handle(), opts) else {
                            return 1;
                        };
                        while stop.load(Ordering::Relaxed) == 0 {
                            for _ in 0..64 {
                                if p.put(msg).is_err() {
                                    return 1;
                                }
                            }
                        }
                    } else if let Some(r) = ring {
                        let Ok(mut p) = MpmcProducer::attach(&r.handle()) else {
                            return 1;
                        };
                        while stop.load(Ordering::Relaxed) == 0 {
                            for _ in 0..64 {
                                if p.send(msg).is_err() {
                                    return 1;
                                }
                            }
                        }
                    }
                    0
                })
                .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        let total = || -> u64 {
            (0..c)
                .map(|k| map.at::<AtomicU64>(slot(k)).load(Ordering::Acquire))
                .sum()
        };
        let mut samples = Vec::new();
        // One slice of warm-up, then a sample per slice.
        std::thread::sleep(SLICE);
        let end = Instant::now() + run;
        let (mut t, mut n) = (Instant::now(), total());
        while Instant::now() < end {
            std::thread::sleep(SLICE);
            let (t1, n1) = (Instant::now(), total());
            samples.push((n1 - n) as f64 / (t1 - t).as_secs_f64());
            (t, n) = (t1, n1);
        }
        stop.store(1, Ordering::Relaxed);
        let mut failed = 0;
        for k in producers {
            failed += i32::from(k.wait() != Ok(0));
        }
        // The end: the consumers drain and stop.
        if let Some(q) = &queue {
            q.producer()
                .and_then(|mut p| p.close())
                .map_err(|e| e.to_string())?;
        }
        if let Some(r) = &ring {
            r.producer().map_err(|e| e.to_string())?.close_ring();
        }
        for k in kids {
            failed += i32::from(k.wait() != Ok(0));
        }
        if failed > 0 {
            return Err(format!("{failed} of {} processes failed", p + c));
        }
        Ok(samples)
    })();
    finish(m, r)
}

/// `m` with the samples of a run, or why it failed.
fn finish(mut m: Measurement, r: Result<Vec<f64>, String>) -> Measurement {
    match r {
        Ok(s) => m.samples = s,
        Err(e) => m.error = Some(e),
    }
    m
}

/// The count of the slowest of `readers` reader processes (each keeps
/// its count in its slot of `map`).
fn slowest(map: &SharedMap, readers: usize) -> u64 {
    (0..readers)
        .map(|k| map.at::<AtomicU64>(slot(k)).load(Ordering::Acquire))
        .min()
        .unwrap_or(0)
}

/// Throughput to the slowest reader: calls `send` (`burst` messages at a
/// time) for `run` after one slice of warm-up; one sample per slice.
fn rate_of_slowest(
    map: &SharedMap,
    readers: usize,
    run: Duration,
    burst: usize,
    send: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Vec<f64>, String> {
    let mut samples = Vec::new();
    let start = Instant::now();
    let (mut t, mut n) = (start, 0u64);
    let mut warm = true;
    while start.elapsed() < run + SLICE {
        for _ in 0..burst {
            send()?;
        }
        if t.elapsed() >= SLICE {
            let (t1, n1) = (Instant::now(), slowest(map, readers));
            if !warm {
                samples.push((n1 - n) as f64 / (t1 - t).as_secs_f64());
            }
            warm = false;
            (t, n) = (t1, n1);
        }
    }
    Ok(samples)
}

/// Latency to every reader: sends one message at a time with `send` and
/// waits until every reader counted it (through `map`, a cache line
/// away, yielding now and then: two cores); one sample per message after
/// a tenth of warm-up, in ns.
fn latency_to_all(
    map: &SharedMap,
    readers: usize,
    iters: u64,
    send: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Vec<f64>, String> {
    let wait = Duration::from_secs(20);
    let warm = iters / 10 + 1;
    let mut samples = Vec::with_capacity(iters as usize);
    for i in 1..=warm + iters {
        let t = Instant::now();
        send()?;
        let mut spins = 0u32;
        while slowest(map, readers) < i {
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            }
            if t.elapsed() > wait {
                return Err(format!("a reader never took message {i}"));
            }
            std::hint::spin_loop();
        }
        if i > warm {
            samples.push(t.elapsed().as_nanos() as f64);
        }
    }
    Ok(samples)
}

/// Broadcast throughput: this process writes `size`-byte messages as fast
/// as `readers` reader processes take them, for `run`; one sample per
/// slice, the slowest reader's rate (every reader gets every message).
/// `raw`: the broadcast ring itself (system `shm-ring`).
fn broadcast(readers: usize, size: usize, run: Duration, raw: bool) -> Measurement {
    use shoal_channel::{Broadcast, BroadcastOptions, BroadcastReceiver};
    use shoal_shm_ring::{BroadcastConfig, BroadcastReader, BroadcastWriter};
    let system = if raw { "shm-ring" } else { "shoal" };
    let m = Measurement::new(system, "channel-broadcast", "park", "throughput_msgs_per_s")
        .payload(size as u64)
        .readers(readers as u32)
        .processes(readers as u32 + 1);
    let r = (|| -> Result<Vec<f64>, String> {
        let map = SharedMap::new(4096 + 128 * readers).map_err(|e| e.to_string())?;
        let cap = 1u64 << 20;
        let (mut chan, mut ring) = if raw {
            let w = BroadcastWriter::create(&BroadcastConfig::new(cap, readers as u32))
                .map_err(|e| e.to_string())?;
            (None, Some(w))
        } else {
            let b = Broadcast::create(&BroadcastOptions::new(readers as u32).capacity(cap))
                .map_err(|e| e.to_string())?;
            (Some(b), None)
        };
        let handle = chan.as_ref().map(|b| b.handle().clone());
        let ring_handle = ring.as_ref().map(|w| w.handle());
        let mut kids = Vec::new();
        for k in 0..readers {
            let counter = map.at::<AtomicU64>(slot(k));
            let (handle, ring_handle) = (&handle, &ring_handle);
            kids.push(
                fork(move || {
                    let mut n = 0u64;
                    if let Some(h) = handle {
                        let Ok(mut r) = BroadcastReceiver::attach(h, k as u32) else {
                            return 1;
                        };
                        while let Ok(msg) = r.recv() {
                            std::hint::black_box(msg.first());
                            n += 1;
                            if n.is_multiple_of(BATCH) {
                                counter.store(n, Ordering::Release);
                            }
                        }
                    } else if let Some(h) = ring_handle {
                        let Ok(mut r) = BroadcastReader::attach(h) else {
                            return 1;
                        };
                        while let Ok(g) = r.recv() {
                            std::hint::black_box(g.first());
                            n += 1;
                            if n.is_multiple_of(BATCH) {
                                counter.store(n, Ordering::Release);
                            }
                        }
                    }
                    0
                })
                .map_err(|e| e.to_string())?,
            );
        }
        let wait = Duration::from_secs(20);
        if let Some(b) = &mut chan {
            b.wait_until_ready(wait).map_err(|e| e.to_string())?;
        }
        if let Some(w) = &mut ring {
            w.wait_for_readers(readers as u32, Wait::timeout(wait))
                .map_err(|e| e.to_string())?;
        }
        let msg = vec![7u8; size];
        let samples = rate_of_slowest(&map, readers, run, 256, &mut || {
            if let Some(b) = &mut chan {
                b.send(&msg).map_err(|e| e.to_string())?;
            }
            if let Some(w) = &mut ring {
                w.send(&msg).map_err(|e| e.to_string())?;
            }
            Ok(())
        })?;
        // The end: readers see the writer go.
        drop(chan);
        drop(ring);
        for k in kids {
            let _ = k.wait();
        }
        Ok(samples)
    })();
    finish(m, r)
}

/// Broadcast latency: this process sends one `size`-byte message at a
/// time and waits until each of `readers` reader processes took it (a
/// reader stores the message's number in its slot of a shared map once it
/// has it); one sample per message: from the send to the last reader's
/// store, in ns (metric `latency_one_way_ns`: a one-way delivery to every
/// reader, plus one cache-line hand-over back). `raw`: the broadcast ring
/// itself.
fn broadcast_latency(readers: usize, size: usize, iters: u64, raw: bool) -> Measurement {
    use shoal_channel::{Broadcast, BroadcastOptions, BroadcastReceiver};
    use shoal_shm_ring::{BroadcastConfig, BroadcastReader, BroadcastWriter};
    let system = if raw { "shm-ring" } else { "shoal" };
    let m = Measurement::new(system, "channel-broadcast", "park", "latency_one_way_ns")
        .payload(size as u64)
        .readers(readers as u32)
        .processes(readers as u32 + 1);
    let r = (|| -> Result<Vec<f64>, String> {
        let map = SharedMap::new(4096 + 128 * readers).map_err(|e| e.to_string())?;
        let cap = (4u64 << 20).max((size as u64 * 8).next_power_of_two());
        let (mut chan, mut ring) = if raw {
            let w = BroadcastWriter::create(&BroadcastConfig::new(cap, readers as u32))
                .map_err(|e| e.to_string())?;
            (None, Some(w))
        } else {
            let b = Broadcast::create(&BroadcastOptions::new(readers as u32).capacity(cap))
                .map_err(|e| e.to_string())?;
            (Some(b), None)
        };
        let handle = chan.as_ref().map(|b| b.handle().clone());
        let ring_handle = ring.as_ref().map(|w| w.handle());
        let mut kids = Vec::new();
        for k in 0..readers {
            let got = map.at::<AtomicU64>(slot(k));
            let (handle, ring_handle) = (&handle, &ring_handle);
            kids.push(
                fork(move || {
                    if let Some(h) = handle {
                        let Ok(mut r) = BroadcastReceiver::attach(h, k as u32) else {
                            return 1;
                        };
                        while let Ok(msg) = r.recv() {
                            got.store(msg.seq() + 1, Ordering::Release);
                        }
                    } else if let Some(h) = ring_handle {
                        let Ok(mut r) = BroadcastReader::attach(h) else {
                            return 1;
                        };
                        let mut n = 0;
                        while let Ok(g) = r.recv() {
                            std::hint::black_box(g.first());
                            n += 1;
                            got.store(n, Ordering::Release);
                        }
                    }
                    0
                })
                .map_err(|e| e.to_string())?,
            );
        }
        let wait = Duration::from_secs(20);
        if let Some(b) = &mut chan {
            b.wait_until_ready(wait).map_err(|e| e.to_string())?;
        }
        if let Some(w) = &mut ring {
            w.wait_for_readers(readers as u32, Wait::timeout(wait))
                .map_err(|e| e.to_string())?;
        }
        let msg = vec![7u8; size];
        let samples = latency_to_all(&map, readers, iters, &mut || {
            if let Some(b) = &mut chan {
                b.send(&msg).map_err(|e| e.to_string())?;
            }
            if let Some(w) = &mut ring {
                w.send(&msg).map_err(|e| e.to_string())?;
            }
            Ok(())
        })?;
        drop(chan);
        drop(ring);
        for k in kids {
            let _ = k.wait();
        }
        Ok(samples)
    })();
    finish(m, r)
}

/// Rpc round trip: one small request to `workers` worker processes and
/// every reply back, one sample per call, in ns (metric
/// `latency_one_way_ns` of the pattern `channel-rpc`: the whole round
/// trip). `raw`: the same fan-out and fan-in on the rings under it (a
/// broadcast ring out, an MPMC ring back), without the Rpc's headers,
/// hellos and bookkeeping.
fn rpc(workers: usize, iters: u64, raw: bool) -> Measurement {
    use shoal_channel::{Rpc, RpcOptions, RpcWorker};
    use shoal_shm_ring::{BroadcastConfig, BroadcastReader, BroadcastWriter};
    let system = if raw { "shm-ring" } else { "shoal" };
    let m = Measurement::new(system, "channel-rpc", "park", "latency_one_way_ns")
        .payload(64)
        .readers(workers as u32)
        .processes(workers as u32 + 1);
    let r = (|| -> Result<Vec<f64>, String> {
        let cap = 1u64 << 20;
        let o = RpcOptions::new(workers as u32)
            .capacity(cap)
            .reply_capacity(cap);
        let mut rpc_ = if raw {
            None
        } else {
            Some(Rpc::create(&o).map_err(|e| e.to_string())?)
        };
        let (mut out, back) = if raw {
            (
                Some(
                    BroadcastWriter::create(&BroadcastConfig::new(cap, workers as u32))
                        .map_err(|e| e.to_string())?,
                ),
                Some(
                    MpmcRing::create(&MpmcConfig::new(cap, workers as u32 + 1, 1))
                        .map_err(|e| e.to_string())?,
                ),
            )
        } else {
            (None, None)
        };
        let handle = rpc_.as_ref().map(|r| r.handle().clone());
        let out_handle = out.as_ref().map(|w| w.handle());
        let mut kids = Vec::new();
        for k in 0..workers {
            let (handle, out_handle, back, o) = (&handle, &out_handle, &back, &o);
            kids.push(
                fork(move || {
                    if let Some(h) = handle {
                        let Ok(mut w) = RpcWorker::attach_with(h, k as u32, o) else {
                            return 1;
                        };
                        if w.serve(|req| Ok(req.to_vec())).is_err() {
                            return 1;
                        }
                    } else if let (Some(h), Some(b)) = (out_handle, back) {
                        let (Ok(mut r), Ok(mut p)) = (
                            BroadcastReader::attach(h),
                            MpmcProducer::attach(&b.handle()),
                        ) else {
                            return 1;
                        };
                        while let Ok(g) = r.recv() {
                            if p.send(&g).is_err() {
                                return 1;
                            }
                        }
                    }
                    0
                })
                .map_err(|e| e.to_string())?,
            );
        }
        let wait = Duration::from_secs(20);
        if let Some(r) = &mut rpc_ {
            r.wait_until_ready(wait).map_err(|e| e.to_string())?;
        }
        if let Some(w) = &mut out {
            w.wait_for_readers(workers as u32, Wait::timeout(wait))
                .map_err(|e| e.to_string())?;
        }
        let mut back_c = match &back {
            Some(b) => Some(b.consumer().map_err(|e| e.to_string())?),
            None => None,
        };
        let msg = [7u8; 64];
        let warm = iters / 10 + 1;
        let mut samples = Vec::with_capacity(iters as usize);
        for i in 0..warm + iters {
            let t = Instant::now();
            if let Some(r) = &mut rpc_ {
                let replies = r.call(&msg).map_err(|e| e.to_string())?;
                if replies.len() != workers {
                    return Err("replies missing".into());
                }
            }
            if let (Some(w), Some(c)) = (&mut out, &mut back_c) {
                w.send(&msg).map_err(|e| e.to_string())?;
                for _ in 0..workers {
                    let g = c
                        .take_with(Wait::timeout(wait))
                        .map_err(|e| e.to_string())?;
                    std::hint::black_box(g.first());
                }
            }
            if i >= warm {
                samples.push(t.elapsed().as_nanos() as f64);
            }
        }
        drop(rpc_);
        drop(out);
        for k in kids {
            let _ = k.wait();
        }
        Ok(samples)
    })();
    finish(m, r)
}

/// Two network namespaces joined by a veth pair (the transport tests'
/// helper), for cells across "hosts".
#[path = "../../../transport/tests/common/netns.rs"]
#[allow(dead_code, rustdoc::broken_intra_doc_links)]
#[doc(hidden)]
mod netns;

/// What `netns` expects of its sibling module.
mod proc {
    #[allow(dead_code)]
    pub const ROLE: &str = "SHOAL_TEST_ROLE";
}

/// Moves the calling thread into the network namespace `name` (made by
/// `ip netns add`); threads it starts afterwards are born there.
fn enter_netns(name: &str) -> Result<(), String> {
    let path = std::ffi::CString::new(format!("/run/netns/{name}")).map_err(|e| e.to_string())?;
    // SAFETY: a NUL-terminated path; open does not keep the pointer.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "opening {name}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is a namespace file just opened; setns only reads it.
    let r = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    let err = std::io::Error::last_os_error();
    // SAFETY: our own descriptor, closed once.
    unsafe { libc::close(fd) };
    if r != 0 {
        return Err(format!("entering {name}: {err}"));
    }
    Ok(())
}

/// The handle text a parent left in `map` at `at` (length, then bytes),
/// waited for up to 20 s.
fn read_text(map: &SharedMap, at: usize) -> Option<String> {
    let len = map.at::<AtomicU64>(at);
    let t = Instant::now();
    while len.load(Ordering::Acquire) == 0 {
        if t.elapsed() > Duration::from_secs(20) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let n = len.load(Ordering::Acquire) as usize;
    // SAFETY: the parent wrote `n` bytes after the length word before
    // publishing the length (Release; our Acquire load above); the map
    // is at least that long (checked by the writer).
    let bytes = unsafe { std::slice::from_raw_parts(map.as_ptr().add(at + 8), n) };
    String::from_utf8(bytes.to_vec()).ok()
}

/// Leaves `text` in `map` at `at` for [`read_text`].
fn write_text(map: &SharedMap, at: usize, text: &str) -> Result<(), String> {
    if at + 8 + text.len() > map.len() {
        return Err("handle too long for the shared map".into());
    }
    // SAFETY: in bounds (checked); no reader looks before the length is
    // published below.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), map.as_ptr().add(at + 8), text.len());
    }
    map.at::<AtomicU64>(at)
        .store(text.len() as u64, Ordering::Release);
    Ok(())
}

/// Broadcast throughput to remote readers: this process writes through a
/// Broadcast whose readers are all remote (`readers` processes attached
/// through its network publisher, over `wire` on loopback); one sample
/// per 100 ms: the slowest reader's rate. `raw`: the transport's own
/// publish/subscribe under it (system `shoal-transport`). The readers are
/// forked before any runtime starts; the address reaches them through a
/// shared map.
fn broadcast_net(
    wire: &str,
    readers: usize,
    size: usize,
    run: Duration,
    raw: bool,
    hosts: bool,
    latency: Option<u64>,
) -> Measurement {
    use shoal_channel::{Broadcast, BroadcastOptions, BroadcastReceiver, Handle};
    use shoal_transport::blocking::Blocking;
    use shoal_transport::{Address, Nng, Options, Quic, Wire};
    let system = if raw { "shoal-transport" } else { "shoal" };
    let scheme = if wire == "quic" { "quic" } else { "nng+tcp" };
    let name = format!(
        "{}{}",
        if wire == "quic" { "quic" } else { "nng-tcp" },
        if hosts { "-netns" } else { "" }
    );
    let metric = if latency.is_some() {
        "latency_one_way_ns"
    } else {
        "throughput_msgs_per_s"
    };
    let m = Measurement::new(system, "channel-broadcast", "park", metric)
        .transport(&name)
        .payload(size as u64)
        .readers(readers as u32)
        .processes(readers as u32 + 1);
    const TEXT: usize = 8192;
    // Large messages come slowly: count each, or a slice sees none.
    // Latency: each, as it comes.
    let batch = if size >= 64 << 10 || latency.is_some() {
        1
    } else {
        BATCH
    };
    let r = (|| -> Result<Vec<f64>, String> {
        // Two hosts: the writer in one network namespace, the readers in
        // the other, joined by a veth pair.
        let pair = if hosts {
            Some(netns::Pair::create("bench")?)
        } else {
            None
        };
        let bind = match &pair {
            Some(p) => format!("{scheme}://{}:0", p.addr(0)),
            None => format!("{scheme}://127.0.0.1:0"),
        };
        let map = SharedMap::new(TEXT + 4096 + 128 * readers).map_err(|e| e.to_string())?;
        let net = Options::default().max_message(size + 4096);
        let mut kids = Vec::new();
        for k in 0..readers {
            let counter = map.at::<AtomicU64>(slot(k));
            let (map, net, pair) = (&map, &net, &pair);
            kids.push(
                fork(move || {
                    if let Some(p) = pair {
                        if enter_netns(p.name(1)).is_err() {
                            return 1;
                        }
                    }
                    let Some(text) = read_text(map, TEXT) else {
                        return 1;
                    };
                    let mut n = 0u64;
                    if raw {
                        let Ok(a) = text.parse::<Address>() else {
                            return 1;
                        };
                        macro_rules! drain {
                            ($w:ty) => {{
                                let Ok(mut s) = Blocking::new(<$w>::connect_subscriber(&a, net))
                                else {
                                    return 1;
                                };
                                while let Ok(f) = s.receive() {
                                    std::hint::black_box(f.first());
                                    n += 1;
                                    if n.is_multiple_of(batch) {
                                        counter.store(n, Ordering::Release);
                                    }
                                }
                            }};
                        }
                        if wire == "quic" {
                            drain!(Quic)
                        } else {
                            drain!(Nng)
                        }
                    } else {
                        let Ok(h) = text.parse::<Handle>() else {
                            return 1;
                        };
                        let o = BroadcastOptions::new(readers as u32).net(net.clone());
                        let Ok(mut r) = BroadcastReceiver::attach_remote(&h, k as u32, &o) else {
                            return 1;
                        };
                        while let Ok(msg) = r.recv() {
                            std::hint::black_box(msg.first());
                            n += 1;
                            if n.is_multiple_of(batch) {
                                counter.store(n, Ordering::Release);
                            }
                        }
                    }
                    0
                })
                .map_err(|e| e.to_string())?,
            );
        }
        if let Some(p) = &pair {
            // Before any thread starts: the runtimes' threads inherit it.
            enter_netns(p.name(0))?;
        }
        let bind = bind.as_str();
        let wait = Duration::from_secs(20);
        let msg = vec![7u8; size];
        let a: Address = bind.parse().map_err(|e| format!("{e}"))?;
        // One sender, whichever system: `send` sends one message.
        let mut send: Box<dyn FnMut() -> Result<(), String>> = if raw {
            macro_rules! publisher {
                ($w:ty) => {{
                    let mut p =
                        Blocking::new(<$w>::bind_publisher(&a, &net)).map_err(|e| e.to_string())?;
                    write_text(
                        &map,
                        TEXT,
                        &shoal_transport::Publisher::address(p.get_mut()).to_string(),
                    )?;
                    let got = p
                        .wait_for_subscribers(readers as u32, wait)
                        .map_err(|e| e.to_string())?;
                    if got < readers as u32 {
                        return Err(format!("{got} of {readers} subscribers came"));
                    }
                    let msg = msg.clone();
                    Box::new(move || p.publish(b"", &msg).map_err(|e| e.to_string()))
                }};
            }
            if wire == "quic" {
                publisher!(Quic)
            } else {
                publisher!(Nng)
            }
        } else {
            let o = BroadcastOptions::new(readers as u32)
                .remote(readers as u32, bind)
                .net(net.clone());
            let mut b = Broadcast::create(&o).map_err(|e| e.to_string())?;
            write_text(&map, TEXT, &b.handle().to_string())?;
            b.wait_until_ready(wait).map_err(|e| e.to_string())?;
            let msg = msg.clone();
            Box::new(move || b.send(&msg).map(drop).map_err(|e| e.to_string()))
        };
        let samples = match latency {
            Some(iters) => latency_to_all(&map, readers, iters, &mut send)?,
            None => {
                let burst = if size >= 1 << 20 { 1 } else { 64 };
                rate_of_slowest(&map, readers, run, burst, &mut send)?
            }
        };
        // The end: readers learn the writer is gone.
        drop(send);
        for k in kids {
            let _ = k.wait();
        }
        Ok(samples)
    })();
    finish(m, r)
}

/// WorkQueue throughput with one peer on another host: a producer
/// putting through the queue's bridge to a consumer on the queue's host
/// (`remote` = "producer"), or a producer on the queue's host feeding a
/// consumer that takes through the bridge ("consumer"); over `wire`,
/// across two network namespaces (`hosts`, root) or loopback. One sample
/// per 100 ms: messages taken. `raw`: the transport's own push/pull
/// between the same two hosts (system `shoal-transport`; the puller binds
/// on the consumer's side). Children are forked before any runtime
/// starts; the address reaches them through a shared map.
fn workqueue_net(
    wire: &str,
    remote: &str,
    size: usize,
    run: Duration,
    raw: bool,
    hosts: bool,
    prefetch: u32,
) -> Measurement {
    use shoal_channel::Handle;
    use shoal_transport::blocking::Blocking;
    use shoal_transport::{Address, Nng, Options, Quic, Wire};
    let system = if raw { "shoal-transport" } else { "shoal" };
    let scheme = if wire == "quic" { "quic" } else { "nng+tcp" };
    let name = format!(
        "{}{}",
        if wire == "quic" { "quic" } else { "nng-tcp" },
        if hosts { "-netns" } else { "" }
    );
    let pattern = if remote == "consumer" {
        "channel-workqueue-remote-take"
    } else {
        "channel-workqueue-remote-put"
    };
    // A remote consumer's prefetch other than the usual 64 is the row's
    // mode (it sets how many messages are on their way at once).
    let mode = if prefetch == 64 || raw || remote != "consumer" {
        "park".to_string()
    } else {
        format!("prefetch-{prefetch}")
    };
    let m = Measurement::new(system, pattern, &mode, "throughput_msgs_per_s")
        .transport(&name)
        .payload(size as u64)
        .readers(1)
        .processes(3);
    const TEXT: usize = 8192;
    let batch = if size >= 64 << 10 { 1 } else { 16 };
    let r = (|| -> Result<Vec<f64>, String> {
        let pair = if hosts {
            Some(netns::Pair::create("bench")?)
        } else {
            None
        };
        // The queue's host is side 0; the remote peer is on side 1.
        let (prod_side, cons_side) = if remote == "consumer" { (0, 1) } else { (1, 0) };
        let ip = |side: usize| match &pair {
            Some(p) => p.addr(side).to_string(),
            None => "127.0.0.1".to_string(),
        };
        let map = SharedMap::new(TEXT + 4096 + 256).map_err(|e| e.to_string())?;
        let stop = map.at::<AtomicU64>(0);
        let counter = map.at::<AtomicU64>(slot(0));
        let net = Options::default().max_message((size + 4096).max(2 << 20));
        // Remote consumers take up to 64 messages at once unless told
        // (the default, 1, costs a round trip per message).
        let opts = QueueOptions::default()
            .capacity(CAPACITY)
            .net(net.clone())
            .prefetch(prefetch.max(1))
            .take_timeout(Some(Duration::from_secs(30)))
            .put_timeout(Some(Duration::from_secs(30)));
        let enter = |side: usize| -> bool {
            match &pair {
                Some(p) => enter_netns(p.name(side)).is_ok(),
                None => true,
            }
        };
        let (map, net, opts) = (&map, &net, &opts);
        let consumer = fork(move || {
            if !enter(cons_side) {
                return 1;
            }
            let mut n = 0u64;
            if raw {
                let Ok(a) = format!("{scheme}://{}:0", ip(cons_side)).parse::<Address>() else {
                    return 1;
                };
                macro_rules! pull {
                    ($w:ty) => {{
                        let Ok(mut p) = Blocking::new(<$w>::bind_puller(&a, net)) else {
                            return 1;
                        };
                        let at = shoal_transport::Puller::address(p.get_mut()).to_string();
                        if write_text(map, TEXT, &at).is_err() {
                            return 1;
                        }
                        loop {
                            match p.pull_timeout(SLICE) {
                                Ok(f) => {
                                    std::hint::black_box(f.first());
                                    n += 1;
                                    if n.is_multiple_of(batch) {
                                        counter.store(n, Ordering::Release);
                                    }
                                }
                                Err(_) if stop.load(Ordering::Acquire) != 0 => break,
                                Err(_) => {}
                            }
                        }
                    }};
                }
                if wire == "quic" {
                    pull!(Quic)
                } else {
                    pull!(Nng)
                }
            } else {
                let Some(h) = read_text(map, TEXT).and_then(|t| t.parse::<Handle>().ok()) else {
                    return 1;
                };
                let c = if cons_side == 1 {
                    Consumer::attach_remote(&h, opts)
                } else {
                    Consumer::attach_with(&h, opts)
                };
                let mut c = match c {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("workqueue-net consumer: {e}");
                        return 1;
                    }
                };
                loop {
                    match c.take() {
                        Ok(Some(msg)) => {
                            std::hint::black_box(msg.first());
                            n += 1;
                            if n.is_multiple_of(batch) {
                                counter.store(n, Ordering::Release);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            eprintln!("workqueue-net consumer: {e}");
                            return 1;
                        }
                    }
                }
            }
            counter.store(n, Ordering::Release);
            0
        })
        .map_err(|e| e.to_string())?;
        let producer = fork(move || {
            if !enter(prod_side) {
                return 1;
            }
            let Some(text) = read_text(map, TEXT) else {
                return 1;
            };
            let msg = vec![7u8; size];
            if raw {
                let Ok(a) = text.parse::<Address>() else {
                    return 1;
                };
                macro_rules! push {
                    ($w:ty) => {{
                        let Ok(mut p) = Blocking::new(<$w>::connect_pusher(&a, net)) else {
                            return 1;
                        };
                        while stop.load(Ordering::Relaxed) == 0 {
                            if p.push(&msg).is_err() {
                                return 1;
                            }
                        }
                        let _ = p.flush();
                    }};
                }
                if wire == "quic" {
                    push!(Quic)
                } else {
                    push!(Nng)
                }
            } else {
                let Ok(h) = text.parse::<Handle>() else {
                    return 1;
                };
                let p = if prod_side == 1 {
                    Producer::attach_remote(&h, opts)
                } else {
                    Producer::attach_with(&h, opts)
                };
                let mut p = match p {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("workqueue-net producer: {e}");
                        return 1;
                    }
                };
                while stop.load(Ordering::Relaxed) == 0 {
                    if let Err(e) = p.put(&msg) {
                        eprintln!("workqueue-net producer: {e}");
                        return 1;
                    }
                }
            }
            0
        })
        .map_err(|e| e.to_string())?;
        // The queue (not the raw cells': the puller is the queue) lives
        // here, on side 0.
        if let Some(p) = &pair {
            enter_netns(p.name(0))?;
        }
        let queue = if raw {
            None
        } else {
            let q = WorkQueue::create(&opts.clone().remote(&format!("{scheme}://{}:0", ip(0))))
                .map_err(|e| e.to_string())?;
            write_text(map, TEXT, &q.handle().to_string())?;
            Some(q)
        };
        let total = || counter.load(Ordering::Acquire);
        let mut samples = Vec::new();
        // Warm-up: the peers connect, then a slice.
        let t0 = Instant::now();
        while total() == 0 && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(SLICE);
        let end = Instant::now() + run;
        let (mut t, mut n) = (Instant::now(), total());
        while Instant::now() < end {
            std::thread::sleep(SLICE);
            let (t1, n1) = (Instant::now(), total());
            samples.push((n1 - n) as f64 / (t1 - t).as_secs_f64());
            (t, n) = (t1, n1);
        }
        stop.store(1, Ordering::Release);
        let mut failed = i32::from(producer.wait() != Ok(0));
        if let Some(q) = &queue {
            q.producer()
                .and_then(|mut p| p.close())
                .map_err(|e| e.to_string())?;
        }
        failed += i32::from(consumer.wait() != Ok(0));
        if failed > 0 {
            return Err(format!("{failed} of 2 processes failed"));
        }
        Ok(samples)
    })();
    finish(m, r)
}

/// A small struct, as a typed message.
#[derive(rkyv::Archive, rkyv::Serialize)]
struct Small {
    id: u64,
    price: i64,
    qty: u32,
    side: u8,
}

/// What reading a taken message as a validated archive adds over taking
/// its raw bytes: one small struct put into a WorkQueue and taken, then
/// read in place 1024 times each way per sample (metric
/// `typed_receive_overhead_ns`, pattern `workqueue-typed`, one process).
fn typed(iters: u64) -> Measurement {
    const READS: u64 = 1024;
    let mut m = Measurement::new(
        "shoal",
        "workqueue-typed",
        "none",
        "typed_receive_overhead_ns",
    )
    .processes(1);
    let r = (|| -> Result<(), String> {
        let q = WorkQueue::create(&QueueOptions::default()).map_err(|e| e.to_string())?;
        let (mut p, mut c) = (
            q.producer().map_err(|e| e.to_string())?,
            q.consumer().map_err(|e| e.to_string())?,
        );
        p.put_value(&Small {
            id: 1,
            price: 2,
            qty: 3,
            side: 1,
        })
        .map_err(|e| e.to_string())?;
        let taken = c.take().map_err(|e| e.to_string())?.ok_or("no message")?;
        m.payload_bytes = taken.len() as u64;
        let mut sink = 0u64;
        for _ in 0..iters {
            let t0 = Instant::now();
            for _ in 0..READS {
                let t = std::hint::black_box(&taken);
                sink = sink.wrapping_add(u64::from(t[0]));
            }
            let raw = t0.elapsed();
            let t1 = Instant::now();
            for _ in 0..READS {
                let t = std::hint::black_box(&taken);
                if let Ok(a) = t.archived::<Small>() {
                    sink = sink.wrapping_add(a.id.to_native());
                }
            }
            let typed = t1.elapsed();
            m.samples
                .push((typed.as_nanos() as f64 - raw.as_nanos() as f64).max(0.0) / READS as f64);
        }
        std::hint::black_box(sink);
        Ok(())
    })();
    if let Err(e) = r {
        m.error = Some(e);
    }
    m
}

fn main() {
    let cmd = std::env::args().nth(1).unwrap_or_default();
    let a = Args::from_env(2);
    let m = match cmd.as_str() {
        "workqueue" => workqueue(
            a.get("producers", 1usize).max(1),
            a.get("consumers", 1usize).max(1),
            a.get("size", 64usize),
            Duration::from_millis(a.get("ms", 1000u64)),
            a.has("raw"),
        ),
        "typed" => typed(a.get("iters", 2000u64)),
        "broadcast" => broadcast(
            a.get("readers", 1usize).max(1),
            a.get("size", 64usize),
            Duration::from_millis(a.get("ms", 1000u64)),
            a.has("raw"),
        ),
        "broadcast-latency" => broadcast_latency(
            a.get("readers", 1usize).max(1),
            a.get("size", 64usize),
            a.get("iters", 2000u64),
            a.has("raw"),
        ),
        "broadcast-net" => broadcast_net(
            &a.get("wire", "nng-tcp".to_string()),
            a.get("readers", 1usize).max(1),
            a.get("size", 64usize),
            Duration::from_millis(a.get("ms", 1000u64)),
            a.has("raw"),
            a.has("hosts"),
            None,
        ),
        "broadcast-net-latency" => broadcast_net(
            &a.get("wire", "nng-tcp".to_string()),
            a.get("readers", 1usize).max(1),
            a.get("size", 64usize),
            Duration::ZERO,
            a.has("raw"),
            a.has("hosts"),
            Some(a.get("iters", 1000u64)),
        ),
        "workqueue-net" => workqueue_net(
            &a.get("wire", "nng-tcp".to_string()),
            &a.get("remote", "producer".to_string()),
            a.get("size", 64usize),
            Duration::from_millis(a.get("ms", 1000u64)),
            a.has("raw"),
            a.has("hosts"),
            a.get("prefetch", 64u32),
        ),
        "rpc" => rpc(
            a.get("workers", 3usize).max(1),
            a.get("iters", 2000u64),
            a.has("raw"),
        ),
        _ => {
            eprintln!(
                "usage: channel workqueue --producers P --consumers C --size B --ms T [--raw] | broadcast --readers R --size B --ms T [--raw] | broadcast-latency --readers R --size B --iters N [--raw] | broadcast-net --wire nng-tcp|quic --readers R --size B --ms T [--raw] [--hosts] | broadcast-net-latency --wire W --readers R --size B --iters N [--raw] [--hosts] | workqueue-net --wire W --remote producer|consumer --size B --ms T [--raw] [--hosts] [--prefetch N] | rpc --workers W --iters N [--raw] | typed --iters N"
            );
            std::process::exit(2);
        }
    };
    m.emit();
}
