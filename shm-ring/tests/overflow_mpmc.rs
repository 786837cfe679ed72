//! MPMC overflow pooling against what went wrong in its review: transient
//! open failures, forgotten reservations, crashed and short-lived producers.
//! (The EMFILE test lowers RLIMIT_NOFILE for a moment, for the whole
//! process; the other tests here do not open files meanwhile.)

mod common;

use common::{overflow_files, pattern, say, spawn};
use shoal_shm_ring::{
    cleanup_stale, Handle, MpmcConfig, MpmcConsumer, MpmcProducer, MpmcRing, PeerOptions, Wait,
};
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

/// The tests of this file run one at a time under `cargo test` (the EMFILE
/// test lowers the descriptor limit of the whole process for a moment).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn child_main() {
    let Some((role, a)) = common::role() else {
        return;
    };
    match role.as_str() {
        // A producer process that streams a few large records (consumed
        // by its own consumer, so they go to its free list) and then is
        // SIGKILLed by the parent.
        "crashing_producer" => {
            let h: Handle = a[0].parse().unwrap();
            let mut p = MpmcProducer::attach(&h).unwrap();
            let mut c = MpmcConsumer::attach(&h).unwrap();
            for (i, n) in [40_000usize, 100_000, 200_000, 400_000]
                .into_iter()
                .enumerate()
            {
                p.send_with(&pattern(i as u32, n), Wait::timeout(5 * SEC))
                    .unwrap();
                let g = c.take_with(Wait::timeout(5 * SEC)).unwrap();
                assert_eq!(&*g, &pattern(i as u32, n)[..]);
            }
            say("done");
            std::thread::sleep(60 * SEC);
        }
        r => panic!("unknown role {r}"),
    }
}

/// A consumer that fails to map a pooled segment for a transient reason
/// (EMFILE here) must not unlink it: its producer keeps reusing it, and
/// every later record would be lost.
#[test]
fn a_transient_open_failure_loses_no_later_record() {
    let _serial = serial();
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 16, 1, 1)).unwrap();
    let name = ring.handle().name().to_string();
    let mut p = ring.producer().unwrap();
    let mut c = ring.consumer().unwrap();
    p.send(&pattern(0, 50_000)).unwrap();
    assert_eq!(overflow_files(&name), 1);
    // Run out of descriptors for a moment.
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a local struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) };
    let max_fd = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    let low = libc::rlimit {
        rlim_cur: max_fd + 8,
        rlim_max: old.rlim_max,
    };
    // SAFETY: setrlimit reads a local struct.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) };
    let mut fillers = vec![];
    while let Ok(f) = std::fs::File::open("/dev/null") {
        fillers.push(f);
    }
    let first = c.take_with(Wait::timeout(5 * SEC)).map(|g| g.len());
    drop(fillers);
    // SAFETY: setrlimit reads a local struct.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) };
    eprintln!("take under EMFILE: {first:?}");
    assert!(first.is_err(), "the take should fail under EMFILE");
    // The producer lives and reuses its one segment for every later record.
    let mut lost = vec![];
    for i in 1..6u32 {
        p.send(&pattern(i, 50_000)).unwrap();
        match c.take_with(Wait::timeout(5 * SEC)) {
            Ok(g) => assert_eq!(&*g, &pattern(i, 50_000)[..]),
            Err(e) => lost.push((i, e.to_string())),
        }
    }
    assert!(
        lost.is_empty(),
        "after one EMFILE, {} of 5 later records were lost: {lost:?}; overflow files now {}",
        lost.len(),
        overflow_files(&name)
    );
}

/// A one-shot reservation dropped with `mem::forget` (safe) must not leave
/// its segment pending for the next record's descriptor.
#[test]
fn a_forgotten_one_shot_reservation_does_not_mislabel_the_next_record() {
    let _serial = serial();
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 16, 1, 1)).unwrap();
    let peers = PeerOptions::default()
        .orphan_timeout(Duration::from_millis(20))
        .liveness_interval(Duration::from_millis(10));
    let mut p = ring.producer().unwrap();
    let mut c = MpmcConsumer::attach_with(&ring.handle(), peers, None).unwrap();
    // Fill the in-flight table: the next large record is one-shot.
    for i in 0..8u32 {
        p.send(&pattern(i, 40_000)).unwrap();
    }
    let mut r = p.reserve(40_000).unwrap();
    r.copy_from_slice(&pattern(100, 40_000));
    std::mem::forget(r);
    for i in 0..8u32 {
        let g = c.take_with(Wait::timeout(5 * SEC)).unwrap();
        assert_eq!(&*g, &pattern(i, 40_000)[..]);
    }
    // Pooled again (the 8 were released).
    p.send(&pattern(200, 40_000)).unwrap();
    drop(p); // the forgotten reservation's producer is gone: it is skipped
    let g = c.take_with(Wait::timeout(5 * SEC)).unwrap();
    assert!(
        *g == pattern(200, 40_000)[..],
        "record 200 delivered with other bytes (record 100's: {})",
        *g == pattern(100, 40_000)[..]
    );
}

/// A producer that crashes leaves its free pooled segments behind; the next
/// endpoint to attach sweeps them (no lease, no record names them), so a
/// worker that crashes and restarts does not leak more each time.
#[test]
fn crashed_producers_do_not_leak_more_with_every_crash() {
    let _serial = serial();
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 16, 2, 3)).unwrap();
    let name = ring.handle().name().to_string();
    let _c = ring.consumer().unwrap(); // the ring is in use
    let mut counts = vec![];
    for _ in 0..3 {
        let mut child = spawn("crashing_producer", &[ring.handle().to_string()]);
        assert_eq!(child.expect_line(20 * SEC), "done");
        child.kill9();
        let _ = cleanup_stale();
        counts.push(overflow_files(&name));
    }
    eprintln!("overflow files after each crash (+cleanup_stale): {counts:?}");
    assert!(
        counts.iter().all(|&n| n <= 8),
        "files grow with every crashed producer: {counts:?}"
    );
}

/// Short-lived producers that leave normally while a consumer releases
/// their last record leave no files behind.
#[test]
fn short_lived_producers_leave_no_files_behind() {
    let _serial = serial();
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 16, 1, 1)).unwrap();
    let name = ring.handle().name().to_string();
    let h = ring.handle();
    const N: u32 = 400;
    let mut c = ring.consumer().unwrap();
    let consumer = std::thread::spawn(move || {
        for i in 0..N {
            let g = c.take_with(Wait::timeout(10 * SEC)).unwrap();
            assert_eq!(g.len(), 40_000 + i as usize);
        }
        c
    });
    for i in 0..N {
        let mut p = MpmcProducer::attach(&h).unwrap();
        p.send(&vec![i as u8; 40_000 + i as usize]).unwrap();
        drop(p);
    }
    let c = consumer.join().unwrap();
    let left = overflow_files(&name);
    eprintln!("{N} short-lived producers: {left} overflow files left while the ring lives");
    drop(c);
    assert_eq!(left, 0, "files left behind while the ring lives");
}

/// Bytes of this ring's overflow files in `/dev/shm`.
fn overflow_bytes(ring: &str) -> u64 {
    common::overflow_entries(ring)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// A producer whose consumers do not take cannot fill `/dev/shm` with
/// overflow segments: each large record holds ring room in proportion to
/// its segment's size, so the ring fills (here: a try fails) once its
/// records hold about `OVERFLOW_RATIO` times the ring's capacity, and a
/// record larger than half that fills it alone. Nothing put is lost, and
/// once taken, puts go on.
#[test]
fn overflow_bytes_in_flight_are_bounded_by_the_ring() {
    let _serial = serial();
    const CAP: u64 = 1 << 16;
    // Not a power of two: pooled segments are (a 512 KiB class), and are
    // charged for what they are.
    const LEN: usize = (256 << 10) + 1;
    let ring = MpmcRing::create(&MpmcConfig::new(CAP, 1, 1)).unwrap();
    let name = ring.handle().name().to_string();
    let mut p = ring.producer().unwrap();
    let mut c = ring.consumer().unwrap();
    let mut sent = 0u32;
    loop {
        match p.send_with(&pattern(sent, LEN), Wait::no_wait()) {
            Ok(()) => sent += 1,
            Err(shoal_shm_ring::Error::WouldBlock) => break,
            Err(e) => panic!("send {sent}: {e}"),
        }
        // Without the bound, 1000 records of 256 KiB would fit.
        assert!(
            sent < 200,
            "{sent} large records went in; files hold {} bytes",
            overflow_bytes(&name)
        );
    }
    let held = overflow_bytes(&name);
    // In flight at most the ratio times the ring (a refused try makes no
    // segment).
    let bound = shoal_shm_ring::OVERFLOW_RATIO * CAP;
    eprintln!("{sent} records of {LEN} B put before the ring was full; overflow files: {held} B (bound {bound})");
    assert!(sent >= 4, "large records should still go in: only {sent}");
    assert!(held <= bound, "overflow files hold {held} B, past {bound}");
    // A put that may wait gives up at its timeout.
    let t = p.send_with(
        &pattern(sent, LEN),
        Wait::timeout(Duration::from_millis(50)),
    );
    assert!(t.is_err(), "a full ring took another record: {t:?}");
    for i in 0..sent {
        let g = c.take_with(Wait::timeout(5 * SEC)).unwrap();
        assert!(*g == pattern(i, LEN)[..], "record {i} came back changed");
    }
    // Room again.
    for i in 0..4u32 {
        p.send_with(&pattern(1000 + i, LEN), Wait::timeout(5 * SEC))
            .unwrap();
        let g = c.take_with(Wait::timeout(5 * SEC)).unwrap();
        assert!(*g == pattern(1000 + i, LEN)[..]);
    }
    // A record past 32 times the ring fills it alone.
    const HUGE: usize = 4 << 20;
    p.send_with(&pattern(7, HUGE), Wait::no_wait()).unwrap();
    let second = p.send_with(&pattern(8, HUGE), Wait::no_wait());
    assert!(
        matches!(second, Err(shoal_shm_ring::Error::WouldBlock)),
        "a second record of {HUGE} B went in beside the first: {second:?}"
    );
    let g = c.take_with(Wait::timeout(5 * SEC)).unwrap();
    assert!(*g == pattern(7, HUGE)[..]);
    drop(g);
    p.send_with(&pattern(8, HUGE), Wait::timeout(5 * SEC))
        .unwrap();
    let g = c.take_with(Wait::timeout(5 * SEC)).unwrap();
    assert!(*g == pattern(8, HUGE)[..]);
    drop(g);
    drop(c);
    drop(p);
    drop(ring);
    assert_eq!(overflow_files(&name), 0, "files left behind");
}
