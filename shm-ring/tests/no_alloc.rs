//! No heap allocation on any send or receive path after creation, proved
//! with a counting global allocator. One test per binary, so no other test
//! thread allocates during the measured window.
#![allow(clippy::disallowed_types)] // tests use std atomics directly

use shoal_shm_ring::{
    BroadcastConfig, BroadcastReader, BroadcastWriter, MpmcConfig, MpmcRing, PeerOptions,
    ReaderOptions, Wait, WaitStrategy,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    // SAFETY: callers uphold GlobalAlloc's contract; we forward it as is.
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(l) }
    }
    // SAFETY: callers uphold GlobalAlloc's contract; we forward it as is.
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(p, l) }
    }
    // SAFETY: callers uphold GlobalAlloc's contract; we forward it as is.
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.load(Ordering::SeqCst)
}

#[test]
fn send_and_receive_paths_do_not_allocate() {
    // The counter counts.
    let b = allocs();
    std::hint::black_box(vec![1u8; 10]);
    assert!(allocs() > b);

    // --- broadcast, same thread: inline and overflow records ---
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 14, 2)).unwrap();
    let mut r = BroadcastReader::attach(&w.handle()).unwrap();
    w.wait_for_readers(1, Wait::no_wait()).unwrap();
    let big = vec![5u8; 20_000]; // > capacity / 2: overflow segment
    let before = allocs();
    for i in 0..10_000u32 {
        let mut res = w.reserve(64).unwrap();
        res[..4].copy_from_slice(&i.to_le_bytes());
        res.commit(4).unwrap();
        let g = r.recv().unwrap();
        assert_eq!(&*g, &i.to_le_bytes());
    }
    for _ in 0..50 {
        w.send(&big).unwrap();
        let g = r.recv().unwrap();
        assert_eq!(g.len(), big.len());
    }
    assert_eq!(allocs() - before, 0, "broadcast send/recv allocated");

    // --- MPMC, same thread: inline and overflow records ---
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 14, 1, 1)).unwrap();
    let mut p = ring.producer().unwrap();
    let mut c = ring.consumer().unwrap();
    let before = allocs();
    for i in 0..10_000u32 {
        p.send(&i.to_le_bytes()).unwrap();
        let g = c.take().unwrap();
        assert_eq!(&*g, &i.to_le_bytes());
    }
    for _ in 0..50 {
        p.send(&big).unwrap();
        let g = c.take().unwrap();
        assert_eq!(g.len(), big.len());
    }
    assert_eq!(allocs() - before, 0, "mpmc send/take allocated");

    // --- the blocking path: a reader parks on the futex and is woken ---
    let opts = PeerOptions::default().wait_strategy(WaitStrategy::Park);
    let mut w =
        BroadcastWriter::create(&BroadcastConfig::new(1 << 14, 1).peer_options(opts)).unwrap();
    let h = w.handle();
    let reader = std::thread::spawn(move || {
        let mut r = BroadcastReader::attach_with(
            &h,
            &ReaderOptions {
                peer: opts,
                ..Default::default()
            },
        )
        .unwrap();
        // Signal readiness by receiving the first record.
        r.recv().unwrap();
        let before = allocs();
        let mut n = 0;
        while n < 200 {
            let g = r.recv_with(Wait::timeout(Duration::from_secs(10))).unwrap();
            assert_eq!(g.len(), 8);
            n += 1;
        }
        allocs() - before
    });
    w.wait_for_readers(1, Wait::timeout(Duration::from_secs(10)))
        .unwrap();
    w.send(b"ready").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let before = allocs();
    for i in 0..200u64 {
        if i % 20 == 0 {
            // Let the reader fall asleep so the send must wake it.
            std::thread::sleep(Duration::from_millis(2));
        }
        w.send(&i.to_le_bytes()).unwrap();
    }
    let writer_allocs = allocs() - before;
    let reader_allocs = reader.join().unwrap();
    // The writer's window overlaps the reader's, so each count covers both
    // threads' steady state; both must be zero.
    assert_eq!(writer_allocs, 0, "park/wake path allocated (writer window)");
    assert_eq!(reader_allocs, 0, "park/wake path allocated (reader window)");
}
