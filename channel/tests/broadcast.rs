//! Broadcast between threads: every reader gets every message in order
//! with its sequence number, several held at once, typed and large
//! messages, readiness, releases from other threads, the writer gone.

use shoal_channel::{Broadcast, BroadcastOptions, BroadcastReceiver, Error, Received};
use std::time::Duration;

fn opts(readers: u32) -> BroadcastOptions {
    BroadcastOptions::new(readers)
        .capacity(1 << 16)
        .recv_timeout(Some(Duration::from_secs(20)))
        .send_timeout(Some(Duration::from_secs(20)))
}

fn msg(i: u64) -> Vec<u8> {
    (0..(i % 300) as usize + 8)
        .map(|k| (i as usize * 7 + k) as u8)
        .collect()
}

#[test]
fn every_reader_gets_every_message_in_order() {
    let o = opts(3);
    let mut b = Broadcast::create(&o).unwrap();
    let readers: Vec<_> = (0..3u32)
        .map(|i| {
            let mut r = BroadcastReceiver::attach_with(b.handle(), i, &o).unwrap();
            std::thread::spawn(move || {
                for n in 0..2000u64 {
                    let m = r.recv().unwrap();
                    assert_eq!(m.seq(), n);
                    assert_eq!(&*m, &msg(n)[..]);
                }
            })
        })
        .collect();
    b.wait_until_ready(Duration::from_secs(10)).unwrap();
    for n in 0..2000u64 {
        assert_eq!(b.send(&msg(n)).unwrap(), n);
    }
    for r in readers {
        r.join().unwrap();
    }
}

#[test]
fn a_reader_holds_several_messages_and_drops_them_in_any_order() {
    let o = opts(1);
    let mut b = Broadcast::create(&o).unwrap();
    let mut r = BroadcastReceiver::attach_with(b.handle(), 0, &o).unwrap();
    b.wait_until_ready(Duration::from_secs(5)).unwrap();
    for round in 0..20u64 {
        for k in 0..10 {
            b.send(&msg(round * 10 + k)).unwrap();
        }
        let mut held: Vec<Received> = (0..10).map(|_| r.recv().unwrap()).collect();
        for (k, m) in held.iter().enumerate() {
            assert_eq!(&**m, &msg(round * 10 + k as u64)[..]);
        }
        // Newest first, then the rest.
        held.reverse();
        drop(held);
    }
}

#[test]
fn messages_dropped_in_other_threads_are_released() {
    let o = opts(1).capacity(4096);
    let mut b = Broadcast::create(&o).unwrap();
    let mut r = BroadcastReceiver::attach_with(b.handle(), 0, &o).unwrap();
    b.wait_until_ready(Duration::from_secs(5)).unwrap();
    let writer = std::thread::spawn(move || {
        for n in 0..500u64 {
            b.send(&[n as u8; 900]).unwrap();
        }
        b
    });
    // Each message is handed to a worker thread that drops it later,
    // while this thread is already waiting in the next receive.
    let (tx, rx) = std::sync::mpsc::channel::<Received>();
    let dropper = std::thread::spawn(move || {
        let mut n = 0u64;
        for m in rx {
            assert_eq!(m[0], n as u8);
            std::thread::sleep(Duration::from_micros(200));
            drop(m);
            n += 1;
        }
        n
    });
    for _ in 0..500 {
        tx.send(r.recv().unwrap()).unwrap();
    }
    drop(tx);
    assert_eq!(dropper.join().unwrap(), 500);
    drop(writer.join().unwrap());
}

#[test]
fn typed_and_large_messages_are_read_in_place() {
    #[derive(rkyv::Archive, rkyv::Serialize)]
    struct Step {
        n: u64,
        tokens: Vec<u32>,
    }
    let o = opts(1);
    let mut b = Broadcast::create(&o).unwrap();
    let mut r = BroadcastReceiver::attach_with(b.handle(), 0, &o).unwrap();
    b.wait_until_ready(Duration::from_secs(5)).unwrap();
    b.send_value(&Step {
        n: 3,
        tokens: (0..500_000).collect(),
    })
    .unwrap();
    let big: Vec<u8> = (0..(3 << 20)).map(|i| (i % 253) as u8).collect();
    b.send(&big).unwrap();
    let s = r.recv().unwrap();
    assert!((s.as_ptr() as usize).is_multiple_of(16));
    let step = s.archived::<Step>().unwrap();
    assert_eq!(step.n, 3);
    assert_eq!(step.tokens.len(), 500_000);
    let m = r.recv().unwrap();
    assert_eq!(m.seq(), 1);
    assert_eq!(&*m, &big[..]);
}

#[test]
fn readiness_names_how_many_readers_never_came() {
    let o = opts(3);
    let mut b = Broadcast::create(&o).unwrap();
    let _r = BroadcastReceiver::attach_with(b.handle(), 1, &o).unwrap();
    match b.wait_until_ready(Duration::from_millis(200)) {
        Err(
            e @ Error::ReadersMissing {
                expected: 3,
                joined: 1,
                ..
            },
        ) => {
            let Error::ReadersMissing { missing, .. } = &e else {
                unreachable!()
            };
            assert_eq!(missing, &[0, 2]);
            assert!(e.to_string().contains("missing readers [0, 2]"), "{e}");
        }
        other => panic!("expected ReadersMissing, got {other:?}"),
    }
}

#[test]
fn receives_time_out_and_end_when_the_writer_is_gone() {
    let o = opts(1).recv_timeout(Some(Duration::from_millis(100)));
    let mut b = Broadcast::create(&o).unwrap();
    let mut r = BroadcastReceiver::attach_with(b.handle(), 0, &o).unwrap();
    b.wait_until_ready(Duration::from_secs(5)).unwrap();
    assert!(matches!(r.recv(), Err(Error::Timeout { .. })));
    b.send(b"last").unwrap();
    drop(b);
    assert_eq!(&*r.recv().unwrap(), b"last");
    assert!(r.recv().is_err());
}

#[test]
fn a_broadcast_handle_is_refused_by_other_kinds() {
    let b = Broadcast::create(&opts(1)).unwrap();
    assert!(matches!(
        shoal_channel::Consumer::attach(b.handle()),
        Err(Error::WrongKind { .. })
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn async_receives_get_everything_then_learn_the_writer_is_gone() {
    let o = opts(1).capacity(4096);
    let mut b = Broadcast::create(&o).unwrap();
    let mut r = BroadcastReceiver::attach_with(b.handle(), 0, &o).unwrap();
    b.wait_until_ready(Duration::from_secs(5)).unwrap();
    // Cancelled while waiting: nothing received.
    let waited = tokio::time::timeout(Duration::from_millis(50), r.recv_async())
        .await
        .is_err();
    assert!(waited);
    let writer = std::thread::spawn(move || {
        for n in 0..200u64 {
            b.send(&[n as u8; 700]).unwrap();
            if n % 50 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    for n in 0..200u64 {
        let m = r.recv_async().await.unwrap();
        assert_eq!((m.seq(), m[0]), (n, n as u8));
    }
    writer.join().unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), r.recv_async())
        .await
        .expect("ended within 5 s");
    assert!(end.is_err(), "{end:?}");
}

#[test]
fn a_zero_receive_timeout_still_looks_once() {
    let o = opts(1).recv_timeout(Some(Duration::ZERO));
    let mut b = Broadcast::create(&o).unwrap();
    let mut r = BroadcastReceiver::attach_with(b.handle(), 0, &o).unwrap();
    b.wait_until_ready(Duration::from_secs(5)).unwrap();
    assert!(matches!(r.recv(), Err(Error::Timeout { .. })));
    b.send(b"ready").unwrap();
    assert_eq!(&*r.recv().unwrap(), b"ready");
}

/// A receiver dropped while messages it handed out are still held: they
/// stay readable (in other threads too); once the last drops, the reader
/// detaches, and meanwhile their records go back to the ring as they
/// drop, so the writer is not held up by a receiver that is gone.
#[test]
fn messages_outlive_their_receiver_and_the_reader_then_detaches() {
    let o = opts(1).capacity(4096);
    let mut b = Broadcast::create(&o).unwrap();
    let mut r = BroadcastReceiver::attach_with(b.handle(), 0, &o).unwrap();
    b.wait_until_ready(Duration::from_secs(5)).unwrap();
    for n in 0..3u64 {
        b.send(&[n as u8; 1000]).unwrap();
    }
    let held: Vec<Received> = (0..3).map(|_| r.recv().unwrap()).collect();
    drop(r);
    assert_eq!(b.active_readers(), 1, "held messages keep the reader");
    // The ring is full of held records: the writer waits...
    let sent = std::thread::scope(|s| {
        let w = s.spawn(|| b.send(&[9u8; 1000]));
        let mut held = held;
        std::thread::sleep(Duration::from_millis(30));
        // ... until they drop (one in another thread), in any order.
        let last = held.pop().unwrap();
        assert_eq!(&*last, &[2u8; 1000][..]);
        s.spawn(move || drop(last)).join().unwrap();
        for (n, m) in held.iter().enumerate() {
            assert_eq!(&**m, &[n as u8; 1000][..]);
        }
        drop(held);
        w.join().unwrap()
    });
    assert!(sent.is_ok(), "{sent:?}");
    let t = std::time::Instant::now();
    while b.active_readers() != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the reader never detached"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Receivers and what they hand out move between threads, and an async
/// receive can be spawned on a multi-threaded runtime.
#[test]
fn receivers_and_messages_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<BroadcastReceiver>();
    send_sync::<Received>();
    fn send_only<T: Send>() {}
    send_only::<shoal_channel::RpcWorker>();
    let o = opts(1);
    let b = Broadcast::create(&o).unwrap();
    let mut r = BroadcastReceiver::attach_with(b.handle(), 0, &o).unwrap();
    send(&r.recv_async());
}

/// A reader learns when the writer counts it in: from then on it gets
/// every message.
#[test]
fn a_reader_waits_until_the_writer_counts_it_in() {
    let o = opts(1);
    let mut b = Broadcast::create(&o).unwrap();
    let mut r = BroadcastReceiver::attach_with(b.handle(), 0, &o).unwrap();
    assert!(matches!(
        r.wait_until_active(Duration::from_millis(50)),
        Err(Error::Timeout { .. })
    ));
    std::thread::scope(|s| {
        s.spawn(|| b.wait_until_ready(Duration::from_secs(10)).unwrap());
        r.wait_until_active(Duration::from_secs(10)).unwrap();
    });
    b.send(b"counted").unwrap();
    assert_eq!(&*r.recv().unwrap(), b"counted");
}

/// A receive waiting for a message that never comes ends when its token
/// is cancelled, and the receiver goes on afterwards.
#[test]
fn a_waiting_receive_can_be_cancelled() {
    let o = opts(1).recv_timeout(None);
    let mut b = Broadcast::create(&o).unwrap();
    let mut r = BroadcastReceiver::attach_with(b.handle(), 0, &o).unwrap();
    b.wait_until_ready(Duration::from_secs(5)).unwrap();
    let stop = shoal_channel::CancelToken::new();
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        let stop2 = stop.clone();
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            stop2.cancel();
        });
        assert!(matches!(
            r.recv_cancellable(&stop),
            Err(Error::Cancelled { .. })
        ));
    });
    assert!(t.elapsed() < Duration::from_secs(5));
    b.send(b"after").unwrap();
    let fresh = shoal_channel::CancelToken::new();
    assert_eq!(&*r.recv_cancellable(&fresh).unwrap(), b"after");
}
