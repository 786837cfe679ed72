//! shoal-channel's Broadcast across processes: three reader processes
//! each get every message in order; a reader killed with SIGKILL
//! mid-stream does not stop the writer or the others.

use shoal_channel::{Broadcast, BroadcastOptions, BroadcastReceiver, Handle};
use shoal_tests::{say, spawn};
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);
const N: u64 = 3000;

fn opts() -> BroadcastOptions {
    let peer = shoal_shm_ring::PeerOptions::default().liveness_interval(Duration::from_millis(10));
    BroadcastOptions::new(3)
        .capacity(1 << 16)
        .recv_timeout(Some(30 * SEC))
        .send_timeout(Some(30 * SEC))
        .peer(peer)
}

fn msg(i: u64) -> Vec<u8> {
    (0..(i % 500) as usize + 16)
        .map(|k| (i as usize * 13 + k) as u8)
        .collect()
}

fn run(role: &str, a: &[String]) -> i32 {
    // writer: creates a broadcast for one reader, says its handle, sends
    // five messages once the reader came, then hangs.
    if role == "writer" {
        let Ok(mut b) = Broadcast::create(&BroadcastOptions::new(1)) else {
            return 3;
        };
        say(&b.handle().to_string());
        if b.wait_until_ready(20 * SEC).is_err() {
            return 4;
        }
        for n in 0..5 {
            if b.send(&msg(n)).is_err() {
                return 5;
            }
        }
        say("sent");
        std::thread::sleep(60 * SEC);
        return 1;
    }
    // reader HANDLE INDEX [STOP_AFTER]: reads N messages (or hangs after
    // STOP_AFTER, holding one).
    if role != "reader" {
        return 2;
    }
    let (Some(Ok(h)), Some(Ok(index))) = (
        a.first().map(|v| v.parse::<Handle>()),
        a.get(1).map(|v| v.parse::<u32>()),
    ) else {
        return 2;
    };
    let stop: Option<u64> = a.get(2).and_then(|v| v.parse().ok());
    let Ok(mut r) = BroadcastReceiver::attach_with(&h, index, &opts()) else {
        return 3;
    };
    say("joined");
    for n in 0..N {
        let Ok(m) = r.recv() else { return 4 };
        if m.seq() != n || *m != msg(n)[..] {
            return 5;
        }
        if stop == Some(n) {
            say("stalled");
            std::thread::sleep(60 * SEC);
            return 6;
        }
    }
    say("ok");
    0
}

#[test]
fn child_main() {
    shoal_tests::child(run);
}

#[test]
fn three_reader_processes_get_every_message_and_a_killed_one_stops_nothing() {
    let mut b = Broadcast::create(&opts()).unwrap();
    let h = b.handle().to_string();
    let mut readers: Vec<_> = (0..2u32)
        .map(|i| spawn("reader", &[h.clone(), i.to_string()]))
        .collect();
    let mut dying = spawn("reader", &[h.clone(), "2".into(), "100".into()]);
    for r in &mut readers {
        assert_eq!(r.expect_line(20 * SEC), "joined");
    }
    assert_eq!(dying.expect_line(20 * SEC), "joined");
    b.wait_until_ready(20 * SEC).unwrap();
    let killer = std::thread::spawn(move || {
        assert_eq!(dying.expect_line(20 * SEC), "stalled");
        dying.kill9();
    });
    for n in 0..N {
        assert_eq!(b.send(&msg(n)).unwrap(), n);
    }
    killer.join().unwrap();
    for mut r in readers {
        assert_eq!(r.expect_line(30 * SEC), "ok");
        assert!(r.wait(20 * SEC).success());
    }
}

/// A reader with default options (no receive timeout) learns that its
/// writer was SIGKILLed, after receiving what it sent: never a hang.
#[test]
fn a_reader_of_a_killed_writer_gets_writer_gone() {
    let mut w = spawn("writer", &[]);
    let h: Handle = w.expect_line(20 * SEC).parse().unwrap();
    let mut r = BroadcastReceiver::attach(&h, 0).unwrap();
    assert_eq!(w.expect_line(20 * SEC), "sent");
    for n in 0..5 {
        assert_eq!(&*r.recv().unwrap(), &msg(n)[..]);
    }
    w.kill9();
    let t0 = std::time::Instant::now();
    match r.recv() {
        Err(shoal_channel::Error::Ring(shoal_shm_ring::Error::WriterGone { .. })) => {}
        other => panic!("expected WriterGone, got {other:?}"),
    }
    assert!(t0.elapsed() < 5 * SEC, "took {:?}", t0.elapsed());
}
