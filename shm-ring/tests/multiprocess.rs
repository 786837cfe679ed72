//! Real processes: streams with checksums, exactly-once delivery, and peers
//! killed with SIGKILL at bad moments.

mod common;

use common::{check, fill, say, size_of_record, spawn};
use shoal_shm_ring::{
    cleanup_stale, BroadcastConfig, BroadcastReader, BroadcastWriter, Error, Handle, MpmcConfig,
    MpmcConsumer, MpmcProducer, MpmcRing, PeerOptions, ReaderOptions, Wait,
};
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);

fn fast_peers() -> PeerOptions {
    PeerOptions::default()
        .liveness_interval(Duration::from_millis(20))
        .orphan_timeout(Duration::from_millis(100))
}

/// Sends record `seq` (its size from `size_of_record`) in place.
fn send_seq(w: &mut BroadcastWriter, seq: u64) -> Result<(), Error> {
    let len = size_of_record(seq);
    let mut r = w.reserve(len)?;
    r[..8].copy_from_slice(&seq.to_le_bytes());
    fill(seq, &mut r[8..len]);
    r.commit(len)
}

fn verify(buf: &[u8], expect_seq: u64) {
    let seq = u64::from_le_bytes(buf[..8].try_into().unwrap());
    assert_eq!(seq, expect_seq, "out of order");
    assert_eq!(buf.len(), size_of_record(seq), "wrong length at {seq}");
    assert!(check(seq, &buf[8..]), "corrupt payload at {seq}");
}

#[test]
fn child_main() {
    let Some((role, a)) = common::role() else {
        return;
    };
    let code = match role.as_str() {
        "bc_reader" => {
            let h: Handle = a[0].parse().unwrap();
            let n: u64 = a[1].parse().unwrap();
            let mut r = BroadcastReader::attach_with(
                &h,
                &ReaderOptions {
                    peer: fast_peers(),
                    ..Default::default()
                },
            )
            .unwrap();
            say("joined");
            for seq in 0..n {
                let g = r.recv_with(Wait::timeout(20 * SEC)).unwrap();
                verify(&g, seq);
            }
            let end = r.recv_with(Wait::timeout(20 * SEC));
            assert!(
                matches!(end, Err(Error::Closed)),
                "expected Closed, got {end:?}"
            );
            say(&format!("ok {n}"));
            0
        }
        "bc_stall_reader" => {
            let h: Handle = a[0].parse().unwrap();
            let n: u64 = a[1].parse().unwrap();
            let mut r = BroadcastReader::attach(&h).unwrap();
            say("joined");
            for seq in 0..n {
                let g = r.recv_with(Wait::timeout(20 * SEC)).unwrap();
                verify(&g, seq);
            }
            // Hold the next record too, then stall with it.
            let _g = r.recv_with(Wait::timeout(20 * SEC)).unwrap();
            say("stalled");
            std::thread::sleep(60 * SEC);
            1
        }
        "bc_writer_then_hang" => {
            let n: u64 = a[0].parse().unwrap();
            let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 2)).unwrap();
            say(&format!("handle {}", w.handle()));
            w.wait_for_readers(1, Wait::timeout(20 * SEC)).unwrap();
            for seq in 0..n {
                send_seq(&mut w, seq).unwrap();
            }
            say("sent");
            std::thread::sleep(60 * SEC);
            1
        }
        "creator_hang" => {
            let w = BroadcastWriter::create(&BroadcastConfig::new(1 << 14, 1)).unwrap();
            say(&w.handle().name().to_string());
            std::thread::sleep(60 * SEC);
            1
        }
        "mq_producer" => {
            let h: Handle = a[0].parse().unwrap();
            let id: u64 = a[1].parse().unwrap();
            let n: u64 = a[2].parse().unwrap();
            let mut p = MpmcProducer::attach_with(&h, fast_peers(), None).unwrap();
            for seq in 0..n {
                let tag = (id << 32) | seq;
                let len = size_of_record(seq).max(16);
                let mut r = p.reserve(len).unwrap();
                r[..8].copy_from_slice(&tag.to_le_bytes());
                fill(tag, &mut r[8..len]);
                r.commit(len).unwrap();
            }
            0
        }
        "mq_consumer" => {
            let h: Handle = a[0].parse().unwrap();
            let out = &a[1];
            let mut c = MpmcConsumer::attach_with(&h, fast_peers(), None).unwrap();
            say("joined");
            let mut got: Vec<u64> = Vec::new();
            loop {
                match c.take_with(Wait::timeout(30 * SEC)) {
                    Ok(g) => {
                        let tag = u64::from_le_bytes(g[..8].try_into().unwrap());
                        assert!(check(tag, &g[8..]), "corrupt payload {tag:#x}");
                        got.push(tag);
                    }
                    Err(Error::Closed) => break,
                    Err(e) => panic!("take: {e}"),
                }
            }
            let bytes: Vec<u8> = got.iter().flat_map(|t| t.to_le_bytes()).collect();
            std::fs::write(out, bytes).unwrap();
            say(&format!("ok {}", got.len()));
            0
        }
        "mq_reserve_hang" => {
            let h: Handle = a[0].parse().unwrap();
            let mut p = MpmcProducer::attach(&h).unwrap();
            let mut r = p.reserve(100).unwrap();
            r[..4].copy_from_slice(b"half");
            say("reserved");
            std::thread::sleep(60 * SEC);
            std::mem::forget(r);
            1
        }
        "mq_claim_send_hang" => {
            // Claims `claimed`, sends `sent` of them, then hangs owing the rest.
            let h: Handle = a[0].parse().unwrap();
            let claimed: u64 = a[1].parse().unwrap();
            let sent: u64 = a[2].parse().unwrap();
            let mut p = MpmcProducer::attach_with(&h, fast_peers(), None).unwrap();
            p.claim(claimed).unwrap();
            for i in 0..sent {
                p.send(&i.to_le_bytes()).unwrap();
            }
            say("owing");
            std::thread::sleep(60 * SEC);
            1
        }
        "mq_take_hang" => {
            let h: Handle = a[0].parse().unwrap();
            let mut c = MpmcConsumer::attach(&h).unwrap();
            let g = c.take_with(Wait::timeout(20 * SEC)).unwrap();
            say(&format!("holding {}", g.len()));
            std::thread::sleep(60 * SEC);
            1
        }
        other => panic!("unknown role {other}"),
    };
    std::process::exit(code);
}

#[test]
fn broadcast_one_writer_three_reader_processes() {
    const N: u64 = 100_000;
    let mut w =
        BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 4).peer_options(fast_peers()))
            .unwrap();
    let h = w.handle().to_string();
    let mut readers: Vec<_> = (0..3)
        .map(|_| spawn("bc_reader", &[h.clone(), N.to_string()]))
        .collect();
    for r in &mut readers {
        assert_eq!(r.expect_line(10 * SEC), "joined");
    }
    assert_eq!(w.wait_for_readers(3, Wait::timeout(10 * SEC)).unwrap(), 3);
    for seq in 0..N {
        send_seq(&mut w, seq).unwrap();
    }
    drop(w); // close: readers see Closed after the last record
    for mut r in readers {
        assert_eq!(r.expect_line(60 * SEC), format!("ok {N}"));
        assert!(r.wait(10 * SEC).success());
    }
}

fn read_tags(path: &std::path::Path) -> Vec<u64> {
    std::fs::read(path)
        .unwrap()
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn mpmc_two_producers_two_consumers_exactly_once() {
    const N: u64 = 50_000;
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 16, 3, 2)).unwrap();
    let h = ring.handle().to_string();
    let dir = std::env::temp_dir();
    let files: Vec<_> = (0..2)
        .map(|i| dir.join(format!("shoal-mq-{}-{i}", std::process::id())))
        .collect();
    let mut consumers: Vec<_> = files
        .iter()
        .map(|f| spawn("mq_consumer", &[h.clone(), f.display().to_string()]))
        .collect();
    for c in &mut consumers {
        assert_eq!(c.expect_line(10 * SEC), "joined");
    }
    let producers: Vec<_> = (1..=2u64)
        .map(|id| spawn("mq_producer", &[h.clone(), id.to_string(), N.to_string()]))
        .collect();
    for p in producers {
        assert!(p.wait(120 * SEC).success());
    }
    ring.producer().unwrap().close_ring();
    let mut all = Vec::new();
    for (mut c, f) in consumers.into_iter().zip(&files) {
        let line = c.expect_line(60 * SEC);
        assert!(line.starts_with("ok "), "{line}");
        assert!(c.wait(10 * SEC).success());
        all.extend(read_tags(f));
        let _ = std::fs::remove_file(f);
    }
    assert_eq!(all.len() as u64, 2 * N, "lost or duplicated records");
    all.sort_unstable();
    let expect: Vec<u64> = (1..=2u64)
        .flat_map(|id| (0..N).map(move |s| (id << 32) | s))
        .collect();
    assert_eq!(all, expect, "every record exactly once");
}

#[test]
fn reader_killed_mid_stream_does_not_stop_the_writer_or_the_others() {
    const N: u64 = 20_000;
    let peers = fast_peers();
    let mut w =
        BroadcastWriter::create(&BroadcastConfig::new(1 << 14, 4).peer_options(peers)).unwrap();
    let h = w.handle().to_string();
    let mut staller = spawn("bc_stall_reader", &[h.clone(), "500".into()]);
    let mut good: Vec<_> = (0..2)
        .map(|_| spawn("bc_reader", &[h.clone(), N.to_string()]))
        .collect();
    assert_eq!(staller.expect_line(10 * SEC), "joined");
    for r in &mut good {
        assert_eq!(r.expect_line(10 * SEC), "joined");
    }
    w.wait_for_readers(3, Wait::timeout(10 * SEC)).unwrap();
    let killer = std::thread::spawn(move || {
        assert_eq!(staller.expect_line(30 * SEC), "stalled");
        std::thread::sleep(Duration::from_millis(200));
        staller.kill9();
    });
    let t0 = Instant::now();
    for seq in 0..N {
        // Never blocked for long: the dead reader is evicted within its
        // liveness interval once the writer waits on it.
        send_seq(&mut w, seq).unwrap();
    }
    let took = t0.elapsed();
    killer.join().unwrap();
    assert_eq!(w.active_readers(), 2, "the dead reader was evicted");
    drop(w);
    for mut r in good {
        assert_eq!(r.expect_line(60 * SEC), format!("ok {N}"));
        assert!(r.wait(10 * SEC).success());
    }
    assert!(took < 20 * SEC, "writer took {took:?}");
}

#[test]
fn killed_writer_gives_writer_gone_after_the_data() {
    let mut wr = spawn("bc_writer_then_hang", &["300".into()]);
    let line = wr.expect_line(10 * SEC);
    let h: Handle = line.strip_prefix("handle ").unwrap().parse().unwrap();
    let mut r = BroadcastReader::attach_with(
        &h,
        &ReaderOptions {
            peer: fast_peers(),
            ..Default::default()
        },
    )
    .unwrap();
    // Read everything it sent, then it dies.
    for seq in 0..300 {
        let g = r.recv_with(Wait::timeout(10 * SEC)).unwrap();
        verify(&g, seq);
    }
    assert_eq!(wr.expect_line(10 * SEC), "sent");
    // An async caller armed on the ring learns of the death too.
    let ready = r.ready_fd().unwrap();
    ready.arm();
    assert!(r.try_recv().unwrap().is_none());
    let pid = wr.pid();
    wr.kill9_no_reap(); // a zombie counts as dead too
    let mut pfd = libc::pollfd {
        fd: ready.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let woke = unsafe { libc::poll(&mut pfd, 1, 2000) };
    assert_eq!(woke, 1, "ready fd not woken");
    assert!(!r.writer_alive());
    let t0 = Instant::now();
    let e = r.recv_with(Wait::timeout(10 * SEC)).unwrap_err();
    let took = t0.elapsed();
    assert!(
        matches!(e, Error::WriterGone { pid: p } if p == pid),
        "{e:?}"
    );
    assert!(took < 2 * SEC, "WriterGone took {took:?}");
    let _ = wr.child.wait();
    // A live reader still holds the segment: cleanup keeps it.
    let report = cleanup_stale().unwrap();
    assert!(!report.removed.contains(&h.name().to_string()));
    drop(ready);
    drop(r);
    // The last reader out of a ring whose writer died removes its name.
    assert!(!std::path::Path::new(&format!("/dev/shm/{}", h.name())).exists());
}

#[test]
fn producer_killed_between_reserve_and_commit_is_skipped() {
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 14, 2, 1)).unwrap();
    let h = ring.handle();
    let mut dying = spawn("mq_reserve_hang", &[h.to_string()]);
    assert_eq!(dying.expect_line(10 * SEC), "reserved");
    let mut p = MpmcProducer::attach_with(&h, fast_peers(), None).unwrap();
    let mut c = MpmcConsumer::attach_with(&h, fast_peers(), None).unwrap();
    p.send(b"after").unwrap();
    // The half-written record blocks the head while its producer lives.
    assert!(matches!(
        c.take_with(Wait::timeout(Duration::from_millis(300))),
        Err(Error::Timeout)
    ));
    dying.kill9();
    let t0 = Instant::now();
    let g = c.take_with(Wait::timeout(5 * SEC)).unwrap();
    assert_eq!(&*g, b"after");
    drop(g);
    assert!(t0.elapsed() < 2 * SEC);
    // The queue keeps working, wrap-around included.
    for i in 0..2000u32 {
        p.send(&i.to_le_bytes()).unwrap();
        let g = c.take_with(Wait::timeout(5 * SEC)).unwrap();
        assert_eq!(&*g, &i.to_le_bytes());
    }
}

/// Work accounting across processes: a producer killed (SIGKILL) while it
/// owes claimed messages ends a consumer's wait with `ProducersLost`
/// naming how many, once the rest is taken; never a hang.
#[test]
fn producer_killed_owing_claimed_messages_ends_the_work_incomplete() {
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 14, 2, 1)).unwrap();
    let h = ring.handle();
    let mut dying = spawn(
        "mq_claim_send_hang",
        &[h.to_string(), "5".into(), "2".into()],
    );
    assert_eq!(dying.expect_line(10 * SEC), "owing");
    let mut p = MpmcProducer::attach_with(&h, fast_peers(), None).unwrap();
    let mut c = MpmcConsumer::attach_with(&h, fast_peers(), None).unwrap();
    p.send(b"mine").unwrap();
    p.close_claims().unwrap();
    for _ in 0..3 {
        drop(c.take_with(Wait::timeout(5 * SEC)).unwrap());
    }
    // Three more are owed by a live process: the consumer waits.
    assert!(matches!(
        c.take_with(Wait::timeout(Duration::from_millis(300))),
        Err(Error::Timeout)
    ));
    dying.kill9();
    let t0 = Instant::now();
    match c.take_with(Wait::timeout(5 * SEC)) {
        Err(Error::ProducersLost { lost: 3, pid }) => assert_ne!(pid, 0),
        other => panic!("expected ProducersLost of 3, got {other:?}"),
    }
    assert!(t0.elapsed() < 2 * SEC, "took {:?}", t0.elapsed());
}

/// The same death seen by an async consumer: its armed ReadyFd turns
/// readable (no notify comes from a dead producer), and its next look
/// ends the work.
#[test]
fn an_armed_ready_fd_wakes_when_an_owing_producer_dies() {
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 14, 2, 1)).unwrap();
    let h = ring.handle();
    let mut dying = spawn(
        "mq_claim_send_hang",
        &[h.to_string(), "2".into(), "0".into()],
    );
    assert_eq!(dying.expect_line(10 * SEC), "owing");
    let mut closer = MpmcProducer::attach_with(&h, fast_peers(), None).unwrap();
    closer.close_claims().unwrap();
    let mut c = MpmcConsumer::attach_with(&h, fast_peers(), None).unwrap();
    let fd = c.ready_fd().unwrap();
    assert!(matches!(c.try_take(), Ok(None)));
    fd.arm();
    assert!(matches!(c.try_take(), Ok(None)));
    dying.kill9();
    let t0 = Instant::now();
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, 5000) };
    assert_eq!(n, 1, "the ready fd never turned readable");
    assert!(t0.elapsed() < 2 * SEC);
    fd.clear();
    assert!(matches!(
        c.try_take(),
        Err(Error::ProducersLost { lost: 2, .. })
    ));
}

/// Work accounting across processes: the work finishes when the last
/// claimed message is taken, with the producers in other processes.
#[test]
fn claimed_work_from_other_processes_finishes_after_the_last_message() {
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 14, 3, 1)).unwrap();
    let h = ring.handle();
    let mut ps: Vec<_> = (0..2)
        .map(|_| {
            spawn(
                "mq_claim_send_hang",
                &[h.to_string(), "4".into(), "4".into()],
            )
        })
        .collect();
    for p in &mut ps {
        assert_eq!(p.expect_line(10 * SEC), "owing");
    }
    let mut closer = MpmcProducer::attach_with(&h, fast_peers(), None).unwrap();
    closer.close_claims().unwrap();
    let mut c = MpmcConsumer::attach_with(&h, fast_peers(), None).unwrap();
    for _ in 0..8 {
        drop(c.take_with(Wait::timeout(5 * SEC)).unwrap());
    }
    assert!(matches!(
        c.take_with(Wait::timeout(5 * SEC)),
        Err(Error::Finished)
    ));
    // The producers owe nothing: killing them changes nothing.
    for p in ps {
        p.kill9();
    }
    assert!(matches!(c.try_take(), Err(Error::Finished)));
}

#[test]
fn consumer_killed_holding_a_record_is_reclaimed() {
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 12, 1, 2)).unwrap();
    let h = ring.handle();
    let mut p = MpmcProducer::attach_with(&h, fast_peers(), None).unwrap();
    let mut dying = spawn("mq_take_hang", &[h.to_string()]);
    p.send(&[7u8; 100]).unwrap();
    assert_eq!(dying.expect_line(10 * SEC), "holding 100");
    dying.kill9();
    // Producers can fill the ring many times over: the orphan is released.
    let mut c = MpmcConsumer::attach_with(&h, fast_peers(), None).unwrap();
    let t0 = Instant::now();
    for i in 0..500u32 {
        p.send_with(&[i as u8; 200], Wait::timeout(5 * SEC))
            .unwrap();
        let g = c.take_with(Wait::timeout(5 * SEC)).unwrap();
        assert_eq!(g[0], i as u8);
    }
    assert!(t0.elapsed() < 5 * SEC);
}

#[test]
fn cleanup_stale_removes_only_dead_creators_segments() {
    let live = BroadcastWriter::create(&BroadcastConfig::new(1 << 14, 1)).unwrap();
    let live_name = live.handle().name().to_string();
    let mut c = spawn("creator_hang", &[]);
    let dead_name = c.expect_line(10 * SEC);
    let path = format!("/dev/shm/{dead_name}");
    assert!(std::path::Path::new(&path).exists());
    // While the creator lives, its segment stays.
    let r = cleanup_stale().unwrap();
    assert!(!r.removed.contains(&dead_name));
    c.kill9();
    let r = cleanup_stale().unwrap();
    assert!(r.removed.contains(&dead_name), "{r:?}");
    assert!(!r.removed.contains(&live_name));
    assert!(!std::path::Path::new(&path).exists());
    assert!(std::path::Path::new(&format!("/dev/shm/{live_name}")).exists());
}
