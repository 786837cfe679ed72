//! Liveness and stalled peers across real processes (issue 6 items 4, 6,
//! 7 and 9): kernel leases see live peers in other pid namespaces; waiters
//! that die registered stop costing wake-ups; an async consumer gets past
//! a dead producer's reservation; a live peer that stalls ends the waits it
//! blocks with `Stalled` naming it.

mod common;

use common::{say, spawn, Peer};
use shoal_shm_ring::{
    BroadcastConfig, BroadcastReader, BroadcastWriter, Error, Handle, MpmcConfig, MpmcConsumer,
    MpmcProducer, MpmcRing, PeerOptions, ReaderOptions, ReadyFd, Wait,
};
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);

fn quick_peers() -> PeerOptions {
    PeerOptions::default()
        .liveness_interval(Duration::from_millis(10))
        .orphan_timeout(Duration::from_millis(50))
        .stall_timeout(Some(Duration::from_millis(300)))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a child role in a new pid namespace (and a mount namespace with its
/// own /proc, as containers have), sharing /dev/shm with us.
fn spawn_in_pid_namespace(role: &str, args: &[String]) -> Peer {
    common::spawn_wrapped(
        &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"],
        role,
        args,
    )
}

fn readable(r: &ReadyFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) == 1 }
}

fn stop_self() {
    // SAFETY: raising a signal at ourselves has no memory effects.
    unsafe { libc::raise(libc::SIGSTOP) };
}

#[test]
fn child_main() {
    let Some((role, a)) = common::role() else {
        return;
    };
    match role.as_str() {
        // Reads `n` records slowly, checking each.
        "slow_reader" => {
            let h: Handle = a[0].parse().unwrap();
            let n: u32 = a[1].parse().unwrap();
            let opts = ReaderOptions {
                peer: quick_peers(),
                ..Default::default()
            };
            let mut r = BroadcastReader::attach_with(&h, &opts).unwrap();
            say(&format!("joined {}", std::process::id()));
            for i in 0..n {
                let g = r.recv_with(Wait::timeout(20 * SEC)).unwrap();
                assert_eq!(&g[..4], &i.to_le_bytes());
                drop(g);
                std::thread::sleep(Duration::from_millis(2));
            }
            say("ok");
        }
        // A writer that sends one record late, then closes.
        "late_writer" => {
            let mut w = BroadcastWriter::create(
                &BroadcastConfig::new(1 << 12, 1).peer_options(quick_peers()),
            )
            .unwrap();
            say(&format!("handle {}", w.handle()));
            w.wait_for_readers(1, Wait::timeout(10 * SEC)).unwrap();
            std::thread::sleep(Duration::from_millis(400));
            w.send(b"late").unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        // Parks in recv forever (to be killed).
        "parked_reader" => {
            let h: Handle = a[0].parse().unwrap();
            let mut r = BroadcastReader::attach(&h).unwrap();
            say("joined");
            let _ = r.recv();
        }
        // Arms a ReadyFd and sleeps (to be killed).
        "armed_reader" => {
            let h: Handle = a[0].parse().unwrap();
            let mut r = BroadcastReader::attach(&h).unwrap();
            let ready = r.ready_fd().unwrap();
            ready.arm();
            assert!(r.try_recv().unwrap().is_none());
            say("armed");
            std::thread::sleep(60 * SEC);
        }
        // Joins and stops itself (SIGSTOP) without reading.
        "stopping_reader" => {
            let h: Handle = a[0].parse().unwrap();
            let _r = BroadcastReader::attach(&h).unwrap();
            say("joined");
            stop_self();
            std::thread::sleep(60 * SEC);
        }
        // Reserves, then stops (or sleeps, to be killed) without committing.
        "stopping_producer" | "dying_producer" => {
            let h: Handle = a[0].parse().unwrap();
            let mut p = MpmcProducer::attach(&h).unwrap();
            let mut res = p.reserve(64).unwrap();
            res[..4].copy_from_slice(b"held");
            say("reserved");
            if role == "stopping_producer" {
                stop_self();
            }
            std::thread::sleep(60 * SEC);
        }
        // Takes a record and stops while holding it.
        "stopping_consumer" => {
            let h: Handle = a[0].parse().unwrap();
            let mut c = MpmcConsumer::attach(&h).unwrap();
            let g = c.take_with(Wait::timeout(10 * SEC)).unwrap();
            say("holding");
            stop_self();
            drop(g);
            std::thread::sleep(60 * SEC);
        }
        other => panic!("unknown role {other}"),
    }
}

fn kill(peer: Peer) {
    let pid = peer.pid() as i32;
    // SAFETY: signals to our own child; no memory effects.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    peer.kill9();
}

/// Issue 6 item 4: a live reader in another pid namespace (its pid means
/// nothing here) is never evicted: it receives every record.
#[test]
fn a_reader_in_another_pid_namespace_is_alive() {
    if !is_root() {
        eprintln!("skipped: needs root for pid namespaces");
        return;
    }
    let mut w = BroadcastWriter::create(
        &BroadcastConfig::new(1 << 12, 1).peer_options(quick_peers().stall_timeout(None)),
    )
    .unwrap();
    let n = 200u32;
    let mut child = spawn_in_pid_namespace("slow_reader", &[w.handle().to_string(), n.to_string()]);
    let joined = child.expect_line(10 * SEC);
    assert_eq!(
        joined, "joined 1",
        "the reader runs as pid 1 of its namespace"
    );
    w.wait_for_readers(1, Wait::timeout(10 * SEC)).unwrap();
    for i in 0..n {
        // 512-byte records: the 4 KiB ring fills, the writer waits on the
        // slow reader, and would evict it if it judged by pid.
        let mut r = w.reserve_with(512, Wait::timeout(10 * SEC)).unwrap();
        r[..4].copy_from_slice(&i.to_le_bytes());
        r.commit(512).unwrap();
    }
    assert_eq!(w.active_readers(), 1);
    assert_eq!(child.expect_line(20 * SEC), "ok");
    assert!(child.wait(10 * SEC).success());
}

/// Issue 6 item 4: a live writer in another pid namespace is not reported
/// gone to a reader waiting for it.
#[test]
fn a_writer_in_another_pid_namespace_is_alive() {
    if !is_root() {
        eprintln!("skipped: needs root for pid namespaces");
        return;
    }
    let mut child = spawn_in_pid_namespace("late_writer", &[]);
    let line = child.expect_line(10 * SEC);
    let h: Handle = line.strip_prefix("handle ").unwrap().parse().unwrap();
    let opts = ReaderOptions {
        peer: quick_peers(),
        ..Default::default()
    };
    let mut r = BroadcastReader::attach_with(&h, &opts).unwrap();
    assert!(r.writer_alive());
    let g = r.recv_with(Wait::timeout(10 * SEC)).unwrap();
    assert_eq!(&*g, b"late");
    drop(g);
    assert!(matches!(
        r.recv_with(Wait::timeout(10 * SEC)),
        Err(Error::Closed)
    ));
    assert!(child.wait(10 * SEC).success());
}

/// Issue 6 item 6: a reader that dies parked leaves its waiter bit set;
/// the writer's wakes that find nobody clear it, so sends stop making
/// system calls.
#[test]
fn a_reader_killed_while_parked_stops_costing_wakeups() {
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 2)).unwrap();
    let mut child = spawn("parked_reader", &[w.handle().to_string()]);
    assert_eq!(child.expect_line(10 * SEC), "joined");
    w.wait_for_readers(1, Wait::timeout(10 * SEC)).unwrap();
    let t0 = Instant::now();
    while w.registered_waiters() == 0 {
        assert!(t0.elapsed() < 10 * SEC, "the reader never parked");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill9();
    for i in 0..200u32 {
        w.send(&i.to_le_bytes()).unwrap();
    }
    assert_eq!(w.registered_waiters(), 0, "a dead waiter's bit leaked");
}

/// Issue 6 item 6: the same for a process killed with an armed `ReadyFd`.
#[test]
fn a_reader_killed_with_an_armed_fd_stops_costing_wakeups() {
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 2)).unwrap();
    let mut child = spawn("armed_reader", &[w.handle().to_string()]);
    assert_eq!(child.expect_line(10 * SEC), "armed");
    w.wait_for_readers(1, Wait::timeout(10 * SEC)).unwrap();
    assert_eq!(w.registered_waiters(), 1);
    child.kill9();
    for i in 0..200u32 {
        w.send(&i.to_le_bytes()).unwrap();
    }
    assert_eq!(w.registered_waiters(), 0, "a dead armed fd's bit leaked");
}

/// Issue 6 item 6: two threads arming one `ReadyFd` at once register one
/// waiter, which the wake removes.
#[test]
fn two_threads_arming_one_fd_leave_no_waiter_behind() {
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 2)).unwrap();
    let r = BroadcastReader::attach(&w.handle()).unwrap();
    w.wait_for_readers(1, Wait::no_wait()).unwrap();
    let ready = std::sync::Arc::new(r.ready_fd().unwrap());
    for round in 0..200u32 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let (r2, b2) = (ready.clone(), barrier.clone());
        let t = std::thread::spawn(move || {
            b2.wait();
            r2.arm();
        });
        barrier.wait();
        ready.arm();
        t.join().unwrap();
        w.send(&round.to_le_bytes()).unwrap();
        assert!(readable(&ready, 5 * SEC));
        ready.clear();
        let t0 = Instant::now();
        while w.registered_waiters() != 0 {
            assert!(t0.elapsed() < 5 * SEC, "round {round}: a waiter leaked");
            std::thread::yield_now();
        }
    }
}

/// Issue 6 item 7: an async consumer (the `ReadyFd` loop) gets past the
/// reservation of a producer that was killed before committing.
#[test]
fn an_async_consumer_gets_past_a_dead_producers_reservation() {
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 14, 2, 1)).unwrap();
    let h = ring.handle();
    let mut c = MpmcConsumer::attach_with(&h, quick_peers(), None).unwrap();
    let mut dying = spawn("dying_producer", &[h.to_string()]);
    assert_eq!(dying.expect_line(10 * SEC), "reserved");
    let mut p = ring.producer().unwrap();
    p.send(b"after").unwrap();
    dying.kill9();
    let ready = c.ready_fd().unwrap();
    let t0 = Instant::now();
    let got = loop {
        if let Some(g) = c.try_take().unwrap() {
            break g.to_vec();
        }
        ready.arm();
        if let Some(g) = c.try_take().unwrap() {
            break g.to_vec();
        }
        assert!(
            readable(&ready, 3 * SEC),
            "the armed fd stayed silent for 3 s"
        );
        ready.clear();
        assert!(t0.elapsed() < 3 * SEC, "no progress for 3 s");
    };
    assert_eq!(got, b"after");
    assert!(t0.elapsed() < SEC, "took {:?}", t0.elapsed());
}

/// Issue 6 item 9: a reader stopped with SIGSTOP ends the writer's wait
/// with `Stalled` naming it, instead of freezing the writer.
#[test]
fn a_stopped_reader_makes_the_writer_fail_with_stalled() {
    let mut w =
        BroadcastWriter::create(&BroadcastConfig::new(1 << 12, 1).peer_options(quick_peers()))
            .unwrap();
    let mut child = spawn("stopping_reader", &[w.handle().to_string()]);
    assert_eq!(child.expect_line(10 * SEC), "joined");
    w.wait_for_readers(1, Wait::timeout(10 * SEC)).unwrap();
    let t0 = Instant::now();
    let err = loop {
        if let Err(e) = w.send(&[1u8; 500]) {
            break e;
        }
        assert!(t0.elapsed() < 10 * SEC);
    };
    let pid = child.pid();
    assert!(
        matches!(err, Error::Stalled { role: "reader", pid: p, .. } if p == pid),
        "{err:?}"
    );
    assert!(t0.elapsed() < 3 * SEC, "{:?}", t0.elapsed());
    kill(child);
}

/// Issue 6 item 9: a producer stopped while holding a reservation ends the
/// consumers' wait with `Stalled`; once it is killed, its reservation is
/// skipped and what follows is delivered.
#[test]
fn a_stopped_producer_makes_consumers_fail_with_stalled() {
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 14, 2, 1)).unwrap();
    let h = ring.handle();
    let mut c = MpmcConsumer::attach_with(&h, quick_peers(), None).unwrap();
    let mut child = spawn("stopping_producer", &[h.to_string()]);
    assert_eq!(child.expect_line(10 * SEC), "reserved");
    let mut p = ring.producer().unwrap();
    p.send(b"after").unwrap();
    let t0 = Instant::now();
    let err = c.take_with(Wait::timeout(10 * SEC)).unwrap_err();
    let pid = child.pid();
    assert!(
        matches!(err, Error::Stalled { role: "producer", pid: q, .. } if q == pid),
        "{err:?}"
    );
    assert!(t0.elapsed() < 3 * SEC, "{:?}", t0.elapsed());
    kill(child);
    assert_eq!(&*c.take_with(Wait::timeout(5 * SEC)).unwrap(), b"after");
}

/// Issue 6 item 9: a consumer stopped while holding a record ends the
/// producers' wait for space with `Stalled` (the record is never reclaimed
/// under it); once it is killed, producers go on.
#[test]
fn a_stopped_consumer_holding_a_record_makes_producers_fail_with_stalled() {
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 12, 1, 2)).unwrap();
    let h = ring.handle();
    let mut p = MpmcProducer::attach_with(&h, quick_peers(), None).unwrap();
    p.send(&[5u8; 200]).unwrap();
    let mut child = spawn("stopping_consumer", &[h.to_string()]);
    assert_eq!(child.expect_line(10 * SEC), "holding");
    let t0 = Instant::now();
    let err = loop {
        if let Err(e) = p.send_with(&[6u8; 200], Wait::timeout(10 * SEC)) {
            break e;
        }
        assert!(t0.elapsed() < 10 * SEC);
    };
    let pid = child.pid();
    assert!(
        matches!(err, Error::Stalled { role: "consumer", pid: q, .. } if q == pid),
        "{err:?}"
    );
    assert!(t0.elapsed() < 3 * SEC, "{:?}", t0.elapsed());
    kill(child);
    // The dead consumer's record is reclaimed; space comes back.
    let mut c = ring.consumer().unwrap();
    let mut taken = 0;
    while c.try_take().unwrap().is_some() {
        taken += 1;
    }
    assert!(taken > 0);
    p.send_with(&[7u8; 200], Wait::timeout(5 * SEC)).unwrap();
}
