//! `ReadyFd`: an eventfd async runtimes can wait on, with no lost wake-ups.

use shoal_shm_ring::{
    BroadcastConfig, BroadcastReader, BroadcastWriter, Error, MpmcConfig, MpmcRing, ReadyFd, Wait,
};
use std::time::{Duration, Instant};

/// Waits for the fd to be readable; false on timeout.
fn readable(r: &ReadyFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    n == 1
}

fn pair() -> (BroadcastWriter, BroadcastReader) {
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 2)).unwrap();
    let r = BroadcastReader::attach(&w.handle()).unwrap();
    w.wait_for_readers(1, Wait::no_wait()).unwrap();
    (w, r)
}

#[test]
fn a_send_makes_the_armed_fd_readable() {
    let (mut w, mut r) = pair();
    let ready = r.ready_fd().unwrap();
    assert!(
        !readable(&ready, Duration::from_millis(20)),
        "readable before arming"
    );
    ready.arm();
    assert!(r.try_recv().unwrap().is_none());
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        w.send(b"hello").unwrap();
        w
    });
    assert!(readable(&ready, Duration::from_secs(5)));
    ready.clear();
    assert_eq!(&*r.try_recv().unwrap().unwrap(), b"hello");
    drop(t.join().unwrap());
}

#[test]
fn the_arm_recheck_wait_loop_never_misses_a_record() {
    // The sender races the arm/re-check of every round; a lost wake-up
    // would leave the loop waiting on the fd for the full timeout.
    let (mut w, mut r) = pair();
    let ready = r.ready_fd().unwrap();
    const N: u32 = 2000;
    let t = std::thread::spawn(move || {
        for i in 0..N {
            if i % 7 == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
            w.send(&i.to_le_bytes()).unwrap();
        }
        w
    });
    let t0 = Instant::now();
    let mut next = 0u32;
    while next < N {
        if let Some(g) = r.try_recv().unwrap() {
            assert_eq!(&*g, &next.to_le_bytes());
            next += 1;
            continue;
        }
        ready.arm();
        if let Some(g) = r.try_recv().unwrap() {
            assert_eq!(&*g, &next.to_le_bytes());
            next += 1;
            continue;
        }
        assert!(
            readable(&ready, Duration::from_secs(5)),
            "lost wake-up at record {next}"
        );
        ready.clear();
    }
    assert!(t0.elapsed() < Duration::from_secs(20));
    drop(t.join().unwrap());
}

#[test]
fn close_makes_the_armed_fd_readable_and_recv_says_closed() {
    let (w, mut r) = pair();
    let ready = r.ready_fd().unwrap();
    ready.arm();
    assert!(r.try_recv().unwrap().is_none());
    drop(w);
    assert!(readable(&ready, Duration::from_secs(5)));
    assert!(matches!(r.try_recv(), Err(Error::Closed)));
    // The writer dropped its end: it no longer holds the ring.
    assert!(!r.writer_alive());
}

#[test]
fn dropping_an_armed_fd_does_not_hang() {
    let (_w, r) = pair();
    let ready = r.ready_fd().unwrap();
    ready.arm();
    let t0 = Instant::now();
    drop(ready);
    assert!(t0.elapsed() < Duration::from_secs(1));
}

#[test]
fn mpmc_consumers_get_a_ready_fd_too() {
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 14, 1, 1)).unwrap();
    let mut p = ring.producer().unwrap();
    let mut c = ring.consumer().unwrap();
    let ready = c.ready_fd().unwrap();
    ready.arm();
    assert!(c.try_take().unwrap().is_none());
    p.send(b"job").unwrap();
    assert!(readable(&ready, Duration::from_secs(5)));
    ready.clear();
    assert_eq!(&*c.try_take().unwrap().unwrap(), b"job");
}

/// Review finding: a second `ReadyFd` of one reader shared its waiter bit,
/// and dropping it silenced the first. One per endpoint at a time now.
#[test]
fn a_second_ready_fd_for_one_reader_is_refused_until_the_first_is_dropped() {
    let (mut w, mut r) = pair();
    let a = r.ready_fd().unwrap();
    assert!(matches!(r.ready_fd(), Err(Error::InvalidConfig(_))));
    a.arm();
    assert!(r.try_recv().unwrap().is_none());
    w.send(b"x").unwrap();
    assert!(readable(&a, Duration::from_secs(3)));
    drop(a);
    let b = r.ready_fd().unwrap();
    b.clear();
    assert_eq!(&*r.try_recv().unwrap().unwrap(), b"x");
}

/// Review finding: a `ReadyFd` that outlived its reader could clear the
/// waiter bit of the slot's next owner, whose armed fd then never fired.
#[test]
fn a_stale_ready_fd_does_not_silence_the_slots_next_owner() {
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 1)).unwrap();
    let r1 = BroadcastReader::attach(&w.handle()).unwrap();
    let old = r1.ready_fd().unwrap();
    drop(r1);
    let mut r2 = BroadcastReader::attach(&w.handle()).unwrap();
    w.wait_for_readers(1, Wait::no_wait()).unwrap();
    let new = r2.ready_fd().unwrap();
    new.arm();
    assert!(r2.try_recv().unwrap().is_none());
    old.arm(); // its slot is somebody else's now: it must not touch it
    assert!(
        readable(&old, Duration::from_secs(3)),
        "a stale fd wakes its caller"
    );
    drop(old);
    std::thread::sleep(Duration::from_millis(100));
    w.send(b"x").unwrap();
    assert!(
        readable(&new, Duration::from_secs(3)),
        "the new owner's fd never fired"
    );
    assert!(r2.try_recv().unwrap().is_some());
}

fn set_nofile(soft: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `r`, a valid rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    let old = r.rlim_cur;
    r.rlim_cur = soft;
    // SAFETY: setrlimit reads `r`, a valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) }, 0);
    old
}

/// Second review: a `ReadyFd` that failed to start (EMFILE) left its
/// endpoint unable to make another.
#[test]
fn a_ready_fd_that_failed_to_start_does_not_block_later_ones() {
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 1)).unwrap();
    let r = BroadcastReader::attach(&w.handle()).unwrap();
    w.wait_for_readers(1, Wait::no_wait()).unwrap();
    let max_fd = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    let old = set_nofile(max_fd + 64);
    // Exhaust the descriptor table.
    let mut filler = vec![];
    loop {
        // SAFETY: a NUL-terminated path; open keeps no pointer.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
        if fd < 0 {
            break;
        }
        filler.push(fd);
    }
    // Free descriptors one by one until the segment attach inside
    // ready_fd() succeeds and eventfd() is what fails.
    let mut hit = None;
    while let Some(fd) = filler.pop() {
        // SAFETY: closes a descriptor this test opened.
        unsafe { libc::close(fd) };
        match r.ready_fd() {
            Err(e) if e.to_string().contains("eventfd") => {
                hit = Some(e);
                break;
            }
            Err(_) => continue,
            Ok(_) => panic!("no fd budget made eventfd fail alone"),
        }
    }
    for fd in filler.drain(..) {
        // SAFETY: closes a descriptor this test opened.
        unsafe { libc::close(fd) };
    }
    set_nofile(old);
    let e = hit.expect("eventfd failure reproduced");
    eprintln!("transient failure: {e}");
    // Descriptors are available again: a ReadyFd must be obtainable.
    match r.ready_fd() {
        Ok(_) => {}
        Err(e) => panic!("after a transient EMFILE, ready_fd() fails for good: {e:?}"),
    }
}

/// Second review: `ReadyFd::drop` cleared `taken` *before* its helper had withdrawn its
/// registration. A replacement made in that window arms the same waiter
/// bit, which the old helper then clears (`owns()` is still true: same slot
/// and generation): the new fd sleeps unregistered and fires only when its
/// helper's 50 ms slice notices the missing bit.
#[test]
fn a_replacement_ready_fd_keeps_its_registration() {
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 1)).unwrap();
    let mut r = BroadcastReader::attach(&w.handle()).unwrap();
    w.wait_for_readers(1, Wait::no_wait()).unwrap();
    let mut wiped = 0;
    let mut worst = std::time::Duration::ZERO;
    let rounds = 40;
    for _ in 0..rounds {
        let old = r.ready_fd().unwrap();
        old.arm();
        assert!(r.try_recv().unwrap().is_none());
        let t = std::thread::spawn(move || drop(old));
        // Replace it as soon as the endpoint allows.
        let new = loop {
            match r.ready_fd() {
                Ok(f) => break f,
                Err(Error::InvalidConfig(_)) => std::hint::spin_loop(),
                Err(e) => panic!("{e}"),
            }
        };
        new.arm();
        assert!(r.try_recv().unwrap().is_none());
        t.join().unwrap();
        if w.registered_waiters() == 0 {
            wiped += 1;
        }
        let t0 = std::time::Instant::now();
        w.send(b"x").unwrap();
        assert!(readable(&new, Duration::from_secs(3)));
        worst = worst.max(t0.elapsed());
        new.clear();
        drop(r.try_recv().unwrap().unwrap());
        drop(new);
    }
    eprintln!("registration wiped in {wiped}/{rounds} rounds; worst notify->readable {worst:?}");
    assert_eq!(wiped, 0, "worst latency {worst:?}");
}
