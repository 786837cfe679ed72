//! Blocking behaviour: timeouts, cancellation, wake-ups, and that a blocked
//! reader burns no CPU.

use shoal_shm_ring::{
    BroadcastConfig, BroadcastReader, BroadcastWriter, CancelToken, Error, MpmcConfig, MpmcRing,
    Wait,
};
use std::time::{Duration, Instant};

fn thread_cpu() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills `ru` on success.
    let r = unsafe { libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()) };
    assert_eq!(r, 0);
    // SAFETY: initialized by the successful call above.
    let ru = unsafe { ru.assume_init() };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(us(ru.ru_utime) + us(ru.ru_stime))
}

fn pair() -> (BroadcastWriter, BroadcastReader) {
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 14, 2)).unwrap();
    let r = BroadcastReader::attach(&w.handle()).unwrap();
    w.wait_for_readers(1, Wait::no_wait()).unwrap();
    (w, r)
}

#[test]
fn a_blocked_reader_uses_almost_no_cpu() {
    let (_w, mut r) = pair();
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    let e = r
        .recv_with(Wait::timeout(Duration::from_millis(800)))
        .unwrap_err();
    let wall = t0.elapsed();
    let cpu = thread_cpu() - cpu0;
    assert!(matches!(e, Error::Timeout));
    assert!(wall >= Duration::from_millis(790), "{wall:?}");
    // Spinning the adaptive window once (<= 1 ms) plus a few liveness
    // checks: far below 5 % of the wait.
    assert!(
        cpu < wall / 20,
        "blocked reader used {cpu:?} of CPU in {wall:?}"
    );
}

#[test]
fn a_parked_reader_is_woken_by_a_send() {
    let (mut w, mut r) = pair();
    let t = std::thread::spawn(move || {
        let t0 = Instant::now();
        let g = r.recv_with(Wait::timeout(Duration::from_secs(10))).unwrap();
        assert_eq!(&*g, b"wake");
        t0.elapsed()
    });
    std::thread::sleep(Duration::from_millis(100));
    w.send(b"wake").unwrap();
    let waited = t.join().unwrap();
    assert!(waited < Duration::from_secs(5));
}

#[test]
fn timeouts_and_no_wait_return_promptly() {
    let (mut w, mut r) = pair();
    assert!(matches!(
        r.recv_with(Wait::no_wait()),
        Err(Error::WouldBlock)
    ));
    assert!(r.try_recv().unwrap().is_none());
    let t0 = Instant::now();
    assert!(matches!(
        r.recv_with(Wait::timeout(Duration::from_millis(30))),
        Err(Error::Timeout)
    ));
    assert!(t0.elapsed() < Duration::from_secs(2));
    // A full ring: the writer times out instead of overwriting.
    while w.send_with(&[0; 1000], Wait::no_wait()).is_ok() {}
    let t0 = Instant::now();
    assert!(matches!(
        w.send_with(&[0; 1000], Wait::timeout(Duration::from_millis(30))),
        Err(Error::Timeout)
    ));
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn cancel_ends_blocked_calls_on_both_rings() {
    let (_w, mut r) = pair();
    let tok = CancelToken::new();
    let t2 = tok.clone();
    let c = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        t2.cancel();
    });
    let t0 = Instant::now();
    assert!(matches!(
        r.recv_with(Wait::forever().with_cancel(&tok)),
        Err(Error::Cancelled)
    ));
    assert!(t0.elapsed() < Duration::from_secs(2));
    c.join().unwrap();

    let ring = MpmcRing::create(&MpmcConfig::new(1 << 12, 1, 1)).unwrap();
    let mut cons = ring.consumer().unwrap();
    let tok = CancelToken::new();
    tok.cancel();
    assert!(matches!(
        cons.take_with(Wait::forever().with_cancel(&tok)),
        Err(Error::Cancelled)
    ));
}

#[test]
fn a_reader_that_joins_late_starts_at_the_current_position() {
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 14, 2)).unwrap();
    w.send(b"nobody hears this").unwrap();
    let mut r = BroadcastReader::attach(&w.handle()).unwrap();
    w.send(b"first").unwrap();
    assert_eq!(&*r.recv_with(Wait::no_wait()).unwrap(), b"first");
}

#[test]
fn closed_mpmc_ring_drains_then_reports_closed() {
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 12, 1, 1)).unwrap();
    let mut p = ring.producer().unwrap();
    let mut c = ring.consumer().unwrap();
    p.send(b"a").unwrap();
    p.close_ring();
    assert!(matches!(p.send(b"b"), Err(Error::Closed)));
    assert_eq!(&*c.take().unwrap(), b"a");
    assert!(matches!(c.take(), Err(Error::Closed)));
}

/// Issue 6 item 2: with a stall timeout, a live reader that holds a guard
/// is never evicted and its bytes never change; the writer's wait ends with
/// `Stalled` naming it instead.
#[test]
fn a_stalled_live_reader_ends_the_writers_wait_and_keeps_its_bytes() {
    use shoal_shm_ring::PeerOptions;
    let peer = PeerOptions::default()
        .liveness_interval(Duration::from_millis(10))
        .stall_timeout(Some(Duration::from_millis(100)));
    let mut w =
        BroadcastWriter::create(&BroadcastConfig::new(1 << 12, 2).peer_options(peer)).unwrap();
    let mut slow = BroadcastReader::attach(&w.handle()).unwrap();
    let mut fast = BroadcastReader::attach(&w.handle()).unwrap();
    w.wait_for_readers(2, Wait::no_wait()).unwrap();
    w.send(&[7u8; 1000]).unwrap();
    let held = slow.recv().unwrap(); // held across everything below
    assert_eq!(&*fast.recv().unwrap(), &[7u8; 1000][..]);
    let t0 = Instant::now();
    let mut sent = 0u32;
    let err = loop {
        match w.send_with(&[9u8; 1000], Wait::timeout(Duration::from_secs(5))) {
            Ok(()) => {
                sent += 1;
                assert_eq!(&*fast.recv().unwrap(), &[9u8; 1000][..]);
            }
            Err(e) => break e,
        }
        assert!(sent < 100, "the writer overwrote a held record");
    };
    assert!(
        matches!(err, Error::Stalled { role: "reader", slot: 0, pid, .. } if pid == std::process::id()),
        "{err:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(held.iter().all(|&b| b == 7), "bytes changed under a guard");
    assert_eq!(w.active_readers(), 2);
    drop(held);
    // Released: the writer goes on, and the slow reader gets every record.
    w.send_with(&[9u8; 1000], Wait::timeout(Duration::from_secs(5)))
        .unwrap();
    for _ in 0..=sent {
        assert_eq!(&*slow.recv().unwrap(), &[9u8; 1000][..]);
    }
}

/// Readers publish their position lazily while records keep coming; one
/// that read everything sent so far and then stops calling must not hold
/// the writer back, even for records that wrap the ring behind a pad.
#[test]
fn a_caught_up_reader_that_stops_calling_does_not_block_the_writer() {
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 12, 1)).unwrap();
    let mut r = BroadcastReader::attach(&w.handle()).unwrap();
    w.wait_for_readers(1, Wait::no_wait()).unwrap();
    for round in 0..50u32 {
        // Sizes that leave the writer just short of the ring's end, so the
        // next record wraps behind a pad.
        let size = [700usize, 1500, 1900, 64][round as usize % 4];
        w.send_with(&vec![round as u8; size], Wait::no_wait())
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        // Read exactly what was sent; never poll an empty ring.
        let g = r.recv_with(Wait::no_wait()).unwrap();
        assert_eq!(g.len(), size);
    }
}

/// Review finding: a huge `liveness_interval` (the field is public) made a
/// blocked call panic on `Instant` overflow.
#[test]
fn a_huge_liveness_interval_does_not_panic() {
    use shoal_shm_ring::{PeerOptions, ReaderOptions};
    let w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 1)).unwrap();
    let opts = ReaderOptions {
        peer: PeerOptions {
            liveness_interval: Duration::MAX,
            ..PeerOptions::default()
        },
        expect_format: None,
    };
    let mut r = BroadcastReader::attach_with(&w.handle(), &opts).unwrap();
    assert!(matches!(
        r.recv_with(Wait::timeout(Duration::from_millis(10))),
        Err(Error::Timeout)
    ));
}

/// Issue 6 item 1: readers attaching at the same moment never share a
/// slot (the old two-word claim gave [0, 0, 1] about once in 10 000).
#[test]
fn readers_attaching_at_once_get_distinct_slots() {
    use std::sync::{Arc, Barrier};
    let w = BroadcastWriter::create(&BroadcastConfig::new(1 << 12, 3)).unwrap();
    let h = w.handle();
    for round in 0..3000 {
        let barrier = Arc::new(Barrier::new(3));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (b, h) = (barrier.clone(), h);
                std::thread::spawn(move || {
                    b.wait();
                    BroadcastReader::attach(&h).unwrap()
                })
            })
            .collect();
        let readers: Vec<BroadcastReader> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        let mut slots: Vec<String> = readers
            .iter()
            .map(|r| {
                let d = format!("{r:?}");
                d[d.find("slot").unwrap()..].to_string()
            })
            .collect();
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len(), 3, "round {round}: two readers share a slot");
    }
}
