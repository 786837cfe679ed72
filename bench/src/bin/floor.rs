//! The physical floor: cross-process cache-line ping-pong, a plain SPSC
//! ring doing the work of shoal's broadcast 1->1 cells (64 B records and a
//! 1 MiB stream), memcpy bandwidth, and a bare cross-process futex wake.
//!
//! `floor pingpong [--iters N]`
//! `floor ring [--size B] [--record B] [--cap B] [--publish B] [--ms T]`
//! `floor stream [--size B] [--record B] [--cap B] [--publish B] [--ms T]`
//! `floor memcpy [--size B] [--iters N]`
//! `floor futex [--idle-us U] [--iters N] [--no-pin]`
//!
//! `ring` (records per second, payload 64 B by default) and `stream` (bytes
//! per second, payload 1 MiB by default) are the same ring; by default its
//! records are the size shoal's records occupy for the payload and the ring
//! is the size the `shoal broadcast` cell creates for it (see
//! [`shoal_bench::shape`]). Prints one JSON [`Measurement`] per line.
#![allow(clippy::disallowed_types)] // plain std atomics on a shared mapping

use shoal_bench::measure::Measurement;
use shoal_bench::proc::{fork, Args};
use shoal_bench::shape::{self, RECORD_HEADER};
use shoal_bench::shared::{now_ns, SharedMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);

/// Round trips per floor sample (the clock would dominate a single one).
const BATCH: u64 = 32;

fn pingpong(iters: u64) -> Measurement {
    let map = SharedMap::new(4096).expect("mmap");
    let (a, b) = (map.at::<AtomicU64>(0), map.at::<AtomicU64>(128));
    // Pinned to different CPUs: two pure spinners left to the scheduler
    // sometimes share one CPU, and then every hop waits for a tick.
    let child = fork(|| {
        shoal_bench::proc::pin(1);
        for i in 1..=iters * BATCH {
            while a.load(Ordering::Acquire) != i {
                std::hint::spin_loop();
            }
            b.store(i, Ordering::Release);
        }
        0
    })
    .expect("fork");
    shoal_bench::proc::pin(0);
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

/// Control lines of the ring floor, each on its own 128-byte line.
const RING_DONE: usize = 0; // writer: records written + 1, once, at the end
const RING_RPOS: usize = 128; // reader: the position it released
const RING_READY: usize = 256; // reader: attached and polling
const RING_RATE: usize = 384; // reader: its result (f64 bits), at the end
/// Where the ring's data starts (page aligned, like a segment's data area).
const RING_DATA: usize = 4096;
/// Spins between checks of the clock while waiting on the peer.
const SPIN_CHECK: u32 = 1 << 16;

/// What one ring floor run moves and how.
struct RingShape {
    /// Payload bytes per record (written by the writer, read by the reader).
    size: usize,
    /// Bytes per record in the ring, header included.
    record: usize,
    /// Ring bytes.
    cap: usize,
    /// The reader publishes its position after releasing this many bytes
    /// (and whenever it finds the ring empty).
    publish: u64,
}

/// A plain two-process SPSC ring doing the work of shoal's broadcast 1->1
/// cells, as fast as this machine lets a plain ring do it.
///
/// Records of `record` bytes follow each other in a `cap`-byte ring (one
/// that would cross the end starts at the beginning instead, as shoal pads);
/// each starts with a commit word the writer stores last (Release, the
/// record's sequence number + 1, so a word left from the previous lap never
/// matches) after writing every payload byte; the reader polls the commit
/// word of the record it needs next (Acquire): that word is the writer's
/// position as the reader sees it, on the line it must fetch anyway, so the
/// reader reads no other writer line while records flow. The reader reads
/// every payload byte, then publishes its position (its own 128-byte line)
/// once per `publish` bytes released, or when it finds the ring empty; the
/// writer re-reads that position only when its cached copy says full.
///
/// Writer and reader are pinned to different CPUs: two pure spinners left
/// to the scheduler often share one CPU for hundreds of milliseconds after
/// the fork, and then hand over once per 4 ms tick. The writer runs for
/// `run` (checking the clock every 64 records, as the shoal cell does); the
/// reader reports records (or bytes) per second from its first record to
/// the last.
///
/// Tried on this VM and left out, as they did not make the 64 B ring
/// faster: the writer prefetching lines ahead for writing (`prefetchw`),
/// and a reader that, finding the ring empty, waits for a batch of records
/// instead of the next one. What does change it is the ring size: with 64 B
/// payloads a ring much larger than the L2 (4 MiB instead of 256 KiB) ran
/// several times faster, as lines then come back through the L3 instead of
/// bouncing between the two cores' caches; the floor keeps shoal's size.
fn ring(pattern: &str, shape: &RingShape, run: Duration, bytes: bool) -> Measurement {
    let RingShape {
        size,
        record,
        cap,
        publish,
    } = *shape;
    let metric = if bytes {
        "throughput_bytes_per_s"
    } else {
        "throughput_msgs_per_s"
    };
    let mut m = Measurement::new("floor", pattern, "spin", metric).payload(size as u64);
    if record < RECORD_HEADER + size || record % 8 != 0 || record > cap {
        m.error = Some(format!(
            "bad ring shape: {size} B payload, {record} B records, {cap} B ring"
        ));
        return m;
    }
    let map = SharedMap::new(RING_DATA + cap).expect("mmap");
    let done = map.at::<AtomicU64>(RING_DONE);
    let rpos = map.at::<AtomicU64>(RING_RPOS);
    let ready = map.at::<AtomicU64>(RING_READY);
    let rate = map.at::<AtomicU64>(RING_RATE);
    let data = map.as_ptr().wrapping_add(RING_DATA);
    let commit = |off: usize| -> &AtomicU64 {
        // SAFETY: callers pass a record start: a multiple of `record` (a
        // multiple of 8, checked above) with `off + record <= cap`, so the
        // word is 8-aligned (the data area is page aligned) and inside the
        // mapping, which outlives every use (the closure borrows `map`).
        // Record starts are the same every lap and payloads start 16 bytes
        // after them, so these 8 bytes are only ever accessed through this
        // atomic; an all-zero AtomicU64 is valid.
        unsafe { &*(data.add(off) as *const AtomicU64) }
    };
    let child = fork(|| {
        shoal_bench::proc::pin(1);
        let (mut pos, mut off, mut seq, mut published) = (0u64, 0usize, 0u64, 0u64);
        let mut sink = 0u64;
        let mut t0 = None;
        ready.store(1, Ordering::Release);
        'records: loop {
            if off + record > cap {
                pos += (cap - off) as u64;
                off = 0;
            }
            let c = commit(off);
            if c.load(Ordering::Acquire) != seq + 1 {
                // Empty: let the writer see everything released, then poll.
                if pos != published {
                    rpos.store(pos, Ordering::Release);
                    published = pos;
                }
                let mut spins = 0u32;
                while c.load(Ordering::Acquire) != seq + 1 {
                    if done.load(Ordering::Acquire) == seq + 1 {
                        break 'records;
                    }
                    std::hint::spin_loop();
                    spins += 1;
                    if spins == SPIN_CHECK {
                        spins = 0;
                        if t0.is_some_and(|t: Instant| t.elapsed() > run + 30 * SEC) {
                            return 1;
                        }
                    }
                }
            }
            t0.get_or_insert_with(Instant::now);
            // SAFETY: the record's commit word said `seq + 1` (Acquire), so
            // the writer wrote these payload bytes before it and will not
            // touch them again until our published position passes them;
            // they lie inside the mapping (`off + record <= cap`).
            let p = unsafe {
                std::slice::from_raw_parts(data.add(off + RECORD_HEADER) as *const u8, size)
            };
            sink = sink.wrapping_add(shape::sum(p));
            seq += 1;
            pos += record as u64;
            off += record;
            if pos - published >= publish {
                rpos.store(pos, Ordering::Release);
                published = pos;
            }
        }
        std::hint::black_box(sink);
        let secs = t0.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let per_s = if secs > 0.0 { seq as f64 / secs } else { 0.0 };
        let scale = if bytes { size as f64 } else { 1.0 };
        rate.store((per_s * scale).to_bits(), Ordering::Release);
        0
    })
    .expect("fork");
    shoal_bench::proc::pin(0);
    while ready.load(Ordering::Acquire) == 0 {
        std::thread::sleep(Duration::from_micros(100));
    }
    let (mut pos, mut off, mut seq) = (0u64, 0usize, 0u64);
    // Positions below `limit` are free (cached reader position + cap).
    let mut limit = cap as u64;
    let t0 = Instant::now();
    'run: while t0.elapsed() < run {
        for _ in 0..64 {
            if off + record > cap {
                pos += (cap - off) as u64;
                off = 0;
            }
            let end = pos + record as u64;
            if end > limit {
                let mut spins = 0u32;
                loop {
                    limit = rpos.load(Ordering::Acquire) + cap as u64;
                    if end <= limit {
                        break;
                    }
                    std::hint::spin_loop();
                    spins += 1;
                    if spins == SPIN_CHECK {
                        spins = 0;
                        if t0.elapsed() > run + 30 * SEC {
                            m.error = Some("reader stopped releasing records".into());
                            break 'run;
                        }
                    }
                }
            }
            // SAFETY: `[pos, end)` is below `limit`, so the reader released
            // these bytes (Acquire of its position) and reads them again
            // only after the commit below; they lie inside the mapping, and
            // the payload does not overlap the commit word.
            let p = unsafe { std::slice::from_raw_parts_mut(data.add(off + RECORD_HEADER), size) };
            shape::fill(p, seq as u8);
            seq += 1;
            commit(off).store(seq, Ordering::Release);
            pos = end;
            off += record;
        }
    }
    done.store(seq + 1, Ordering::Release);
    let ok = matches!(child.wait(), Ok(0));
    let v = f64::from_bits(rate.load(Ordering::Acquire));
    if ok && v > 0.0 {
        m.samples.push(v);
    } else if m.error.is_none() {
        m.error = Some("ring reader failed".into());
    }
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
/// waiter records how long after the stamp it ran again. With `pinned` the
/// two run on different CPUs (the cross-core wake); without, where the
/// scheduler puts them (pattern `futex-…-unpinned`).
fn futex(iters: u64, idle: Duration, pinned: bool) -> Measurement {
    let map = SharedMap::new(4096).expect("mmap");
    let word = map.at::<AtomicU32>(0);
    let asleep = map.at::<AtomicU32>(128);
    let stamp = map.at::<AtomicU64>(256);
    let lat = map.at::<AtomicU64>(384);
    // Pinned: waker and sleeper on different CPUs, the cross-core wake.
    let child = fork(|| {
        if pinned {
            shoal_bench::proc::pin(1);
        }
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
    if pinned {
        shoal_bench::proc::pin(0);
    }
    let mut m = Measurement::new("floor", "futex", "park", "wake_latency_ns");
    m.pattern = format!("futex-{mode}{}", if pinned { "" } else { "-unpinned" });
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
    let ring_shape = |default_size: usize| {
        let size = a.get("size", default_size);
        let record = a.get("record", shape::record_size(size));
        let cap = a.get("cap", shape::broadcast_cap(size) as usize);
        RingShape {
            size,
            record,
            cap,
            // Shoal's readers publish once per eighth of the ring; so does
            // this one unless told otherwise.
            publish: a.get("publish", (cap as u64 / 8).max(1)),
        }
    };
    let run = Duration::from_millis(a.get("ms", 300u64));
    let m = match cmd.as_str() {
        "pingpong" => pingpong(iters),
        "ringpong" => ringpong(iters, a.get("size", 48usize), a.get("cap", 65536usize)),
        "ring" => ring("ring", &ring_shape(64), run, false),
        "stream" => ring("stream", &ring_shape(1 << 20), run, true),
        "memcpy" => memcpy(iters, a.get("size", 4096usize)),
        "futex" => futex(
            iters,
            Duration::from_micros(a.get("idle-us", 0u64)),
            !a.has("no-pin"),
        ),
        _ => {
            eprintln!(
                "usage: floor <pingpong|ringpong|ring|stream|memcpy|futex> [--iters N] [--size B] [--record B] [--cap B] [--publish B] [--ms T] [--idle-us U] [--no-pin]"
            );
            std::process::exit(2);
        }
    };
    m.emit();
}

/// Lines the plain ring's writer clears ahead in one go (as shoal's does).
const RINGPONG_CLEAR: u64 = 64;

/// The plain-ring ping-pong floor: the cache-line ping-pong's hand-over
/// done through two plain SPSC rings of `cap` bytes, as cheaply as this
/// machine lets a ring do it, to put shoal's ping-pong beside a ring that
/// does no more than moving the record.
///
/// Records are `record_size(size)` bytes (shoal's 16-byte header, then the
/// payload, 64-byte aligned). The writer copies the payload in, stores the
/// length, then the commit word (Release, the record's sequence number + 1,
/// so a word from an earlier lap never matches); every 64 lines it first
/// clears the first word of each of the next 64 lines (shoal's batched
/// clear-ahead, which on this VM takes the invalidation of lines the reader
/// still caches off each record's path: without it the plain ring is 5-15
/// ns slower).
/// The reader spins (`spin_loop`) on the commit word of the record it
/// needs, then copies the payload out. There is no flow control: in a
/// ping-pong the peer has always consumed a record long before its line
/// comes round again. Both rings live in one shared anonymous mapping; the
/// two processes are pinned to CPUs 0 and 1, like every latency cell.
///
/// What it shows on this VM (48 B payloads, header and payload in one
/// line): at 4 KiB the ring costs about what the bare cache-line ping-pong
/// costs; at 64 KiB, 25-30 ns more per hop (near mode): the lines of a
/// larger ring come back through the L2 instead of staying in L1. With two
/// lines per record (64 B payloads) this plain ring is slower than shoal's,
/// so the matrix shows it beside the 48 B cell only.
fn ringpong(iters: u64, size: usize, cap: usize) -> Measurement {
    let record = shape::record_size(size);
    let map = SharedMap::new(2 * cap + 4096).expect("mmap");
    let base = map.as_ptr() as usize;
    let (ring_a, ring_b) = (base + 4096, base + 4096 + cap);
    let nrec = (cap / record) as u64;
    // Lines cleared in one go: 64, or what leaves two records alone.
    let clear = (RINGPONG_CLEAR as usize).min((cap - 2 * record) / 64);
    let word = |ring: usize, seq: u64, off: usize| -> &AtomicU64 {
        let at = ring + ((seq % nrec) as usize) * record + off;
        // SAFETY: `at` is 8-byte aligned inside the mapping (records are
        // 64-byte aligned, `off` is a multiple of 8 inside the record,
        // `seq % nrec` < records per ring), which lives as long as `map`,
        // i.e. this whole function.
        unsafe { &*(at as *const AtomicU64) }
    };
    let put = |ring: usize, seq: u64, src: &[u8]| {
        // Every `clear` lines, clear the first word of each of the next
        // `clear` lines (commit words and payload lines alike, as shoal's
        // writer does), starting with the next record.
        let first = (seq as usize * record) / 64;
        let last = ((seq as usize + 1) * record - 1) / 64;
        if clear > 0 && (first..=last).any(|l| l.is_multiple_of(clear)) {
            let base = (seq as usize + 1) * record;
            for k in 0..clear {
                let at = ring + (base + k * 64) % cap;
                // SAFETY: a 64-byte aligned line inside ring `ring` of the
                // mapping; no record there is committed and unread (see
                // `clear`).
                unsafe { (*(at as *const AtomicU64)).store(0, Ordering::Relaxed) };
            }
        }
        let at = ring + ((seq % nrec) as usize) * record;
        // SAFETY: the payload area of record `seq` (`size` bytes after the
        // 16-byte header, inside the record) belongs to the writer until it
        // stores the commit word below; the peer reads it only after that.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), (at + 16) as *mut u8, src.len()) };
        word(ring, seq, 8).store(src.len() as u64, Ordering::Relaxed);
        word(ring, seq, 0).store(seq + 1, Ordering::Release);
    };
    let get = |ring: usize, seq: u64, dst: &mut [u8]| {
        let c = word(ring, seq, 0);
        while c.load(Ordering::Acquire) != seq + 1 {
            std::hint::spin_loop();
        }
        let n = (word(ring, seq, 8).load(Ordering::Relaxed) as usize).min(dst.len());
        let at = ring + ((seq % nrec) as usize) * record;
        // SAFETY: the record is committed (Acquire above) and not reused
        // before this side writes its reply (see the ping-pong argument in
        // the function's documentation); `n` is at most `size`.
        unsafe { std::ptr::copy_nonoverlapping((at + 16) as *const u8, dst.as_mut_ptr(), n) };
    };
    let child = fork(|| {
        shoal_bench::proc::pin(1);
        let mut buf = vec![0u8; size];
        for s in 0..iters * BATCH {
            get(ring_a, s, &mut buf);
            put(ring_b, s, &buf);
        }
        0
    })
    .expect("fork");
    shoal_bench::proc::pin(0);
    let pattern = format!("ringpong-{}k", cap / 1024);
    let mut m =
        Measurement::new("floor", &pattern, "spin", "latency_one_way_ns").payload(size as u64);
    let mut buf = vec![0u8; size];
    let mut s = 0u64;
    for _ in 0..iters {
        let t0 = Instant::now();
        for _ in 0..BATCH {
            let n = 8.min(size);
            buf[..n].copy_from_slice(&s.to_le_bytes()[..n]);
            put(ring_a, s, &buf);
            get(ring_b, s, &mut buf);
            s += 1;
        }
        m.samples
            .push(t0.elapsed().as_nanos() as f64 / (2 * BATCH) as f64);
    }
    let _ = child.wait();
    m
}
