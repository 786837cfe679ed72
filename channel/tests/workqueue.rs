//! The work queue between threads of one process: every message taken
//! exactly once, termination (claims, the close, producers gone), the
//! blocking, try and async forms, typed messages, timeouts, bad handles.

use proptest::prelude::*;
use shoal_channel::{
    Consumer, Error, Handle, Producer, QueueOptions, TryPutError, TryTake, WorkQueue,
};
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn opts() -> QueueOptions {
    QueueOptions::default()
        .capacity(1 << 16)
        .take_timeout(Some(Duration::from_secs(20)))
        .put_timeout(Some(Duration::from_secs(20)))
}

/// A message naming its producer and number.
fn msg(producer: u64, n: u64) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[..8].copy_from_slice(&producer.to_le_bytes());
    m[8..].copy_from_slice(&n.to_le_bytes());
    m
}

fn id(m: &[u8]) -> (u64, u64) {
    let p = u64::from_le_bytes(m[..8].try_into().expect("16-byte message"));
    let n = u64::from_le_bytes(m[8..16].try_into().expect("16-byte message"));
    (p, n)
}

/// Consumers on threads, each taking until `None`; every id taken.
fn consume(q: &WorkQueue, consumers: usize) -> Vec<std::thread::JoinHandle<Vec<(u64, u64)>>> {
    (0..consumers)
        .map(|_| {
            let mut c = q.consumer().expect("consumer");
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(m) = c.take().expect("take") {
                    got.push(id(&m));
                }
                got
            })
        })
        .collect()
}

#[test]
fn claimed_messages_from_three_producers_are_each_taken_once_then_every_consumer_ends() {
    let q = WorkQueue::create(&opts()).unwrap();
    let consumers = consume(&q, 3);
    let per = 2000u64;
    let producers: Vec<_> = (0..3u64)
        .map(|p| {
            let mut prod = q.producer().unwrap();
            prod.claim(per).unwrap();
            std::thread::spawn(move || {
                for n in 0..per {
                    prod.put(&msg(p, n)).unwrap();
                }
                assert_eq!(prod.owed(), 0);
            })
        })
        .collect();
    // Closed while the producers still owe: the work goes on until they paid.
    q.producer().unwrap().close().unwrap();
    for p in producers {
        p.join().unwrap();
    }
    let mut all = HashSet::new();
    for c in consumers {
        for m in c.join().unwrap() {
            assert!(all.insert(m), "{m:?} taken twice");
        }
    }
    assert_eq!(all.len() as u64, 3 * per);
}

#[test]
fn after_the_close_only_claimed_messages_may_be_put() {
    let q = WorkQueue::create(&opts()).unwrap();
    let (mut a, mut b, mut c) = (
        q.producer().unwrap(),
        q.producer().unwrap(),
        q.consumer().unwrap(),
    );
    a.claim(1).unwrap();
    b.put(b"unclaimed, before the close").unwrap();
    b.close().unwrap();
    assert!(matches!(b.put(b"late"), Err(Error::Closed)));
    assert!(matches!(b.claim(1), Err(Error::Closed)));
    assert!(matches!(
        b.try_put(b"late"),
        Err(TryPutError::Failed(Error::Closed))
    ));
    a.put(b"claimed").unwrap();
    let mut got = Vec::new();
    while let Some(m) = c.take().unwrap() {
        got.push(m.to_vec());
    }
    assert_eq!(got.len(), 2);
    assert!(c.take().unwrap().is_none(), "stays over");
}

#[test]
fn a_producer_dropped_owing_ends_the_work_with_producers_lost() {
    let q = WorkQueue::create(&opts()).unwrap();
    let mut c = q.consumer().unwrap();
    let mut p = q.producer().unwrap();
    p.claim(5).unwrap();
    p.put(b"1").unwrap();
    p.close().unwrap();
    drop(p);
    assert_eq!(&*c.take().unwrap().unwrap(), b"1");
    let end = c.take().map(|m| m.map(|m| m.to_vec()));
    match end {
        Err(Error::ProducersLost { lost: 4, .. }) => {}
        other => panic!("expected ProducersLost of 4, got {other:?}"),
    }
}

#[test]
fn try_put_hands_the_message_back_when_full_and_put_waits_for_room() {
    let q = WorkQueue::create(&opts().capacity(4096)).unwrap();
    let (mut p, mut c) = (q.producer().unwrap(), q.consumer().unwrap());
    let big = [9u8; 1000];
    let mut n = 0;
    let back = loop {
        match p.try_put(&big) {
            Ok(()) => n += 1,
            Err(TryPutError::Full(m)) => break m,
            Err(TryPutError::Failed(e)) => panic!("{e}"),
        }
    };
    assert_eq!(back.as_ptr(), big.as_ptr(), "the very message handed back");
    assert!(n >= 1);
    // A blocking put waits until a consumer makes room.
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        drop(c.take().unwrap());
        c
    });
    let t0 = Instant::now();
    p.put(&big).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(50));
    drop(t.join().unwrap());
}

#[test]
fn puts_and_takes_time_out_with_a_typed_error() {
    let o = opts()
        .capacity(4096)
        .put_timeout(Some(Duration::from_millis(100)))
        .take_timeout(Some(Duration::from_millis(100)));
    let q = WorkQueue::create(&o).unwrap();
    let (mut p, mut c) = (q.producer().unwrap(), q.consumer().unwrap());
    let t0 = Instant::now();
    assert!(matches!(c.take(), Err(Error::Timeout { .. })));
    assert!(t0.elapsed() < Duration::from_secs(2));
    while p.try_put(&[1u8; 1000]).is_ok() {}
    let t0 = Instant::now();
    assert!(matches!(p.put(&[1u8; 1000]), Err(Error::Timeout { .. })));
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "current_thread")]
async fn async_puts_wait_for_room_and_async_takes_end_with_none() {
    let q = WorkQueue::create(&opts().capacity(4096)).unwrap();
    let (mut p, mut c) = (q.producer().unwrap(), q.consumer().unwrap());
    p.claim(50).unwrap();
    p.close().unwrap();
    let producer = async move {
        for i in 0..50u64 {
            // 50 x 1000 B through a 4 KiB ring: most puts wait for room.
            let mut m = [0u8; 1000];
            m[..8].copy_from_slice(&i.to_le_bytes());
            p.put_async(&m).await.unwrap();
        }
    };
    let consumer = async move {
        let mut next = 0u64;
        while let Some(m) = c.take_async().await.unwrap() {
            assert_eq!(u64::from_le_bytes(m[..8].try_into().unwrap()), next);
            next += 1;
        }
        next
    };
    let ((), got) = tokio::join!(producer, consumer);
    assert_eq!(got, 50);
}

#[tokio::test(flavor = "current_thread")]
async fn take_async_can_be_cancelled_and_raced_without_losing_a_message() {
    let q = WorkQueue::create(&opts()).unwrap();
    let (mut p, mut c) = (q.producer().unwrap(), q.consumer().unwrap());
    // Cancelled while waiting: nothing taken.
    let r = tokio::time::timeout(Duration::from_millis(50), c.take_async())
        .await
        .is_err();
    assert!(r);
    p.put(b"kept").unwrap();
    tokio::select! {
        m = c.take_async() => assert_eq!(&*m.unwrap().unwrap(), b"kept"),
        () = tokio::time::sleep(Duration::from_secs(5)) => panic!("never taken"),
    }
}

#[test]
fn typed_messages_are_read_in_place_and_checked() {
    #[derive(rkyv::Archive, rkyv::Serialize, Debug)]
    struct Task {
        id: u32,
        input: Vec<u8>,
    }
    let q = WorkQueue::create(&opts()).unwrap();
    let (mut p, mut c) = (q.producer().unwrap(), q.consumer().unwrap());
    for (i, len) in [(1u32, 10usize), (2, 5000), (3, 40_000)] {
        p.put_value(&Task {
            id: i,
            input: vec![i as u8; len],
        })
        .unwrap();
    }
    for (i, len) in [(1u32, 10usize), (2, 5000), (3, 40_000)] {
        let m = c.take().unwrap().unwrap();
        assert!((m.as_ptr() as usize).is_multiple_of(16));
        let t = m.archived::<Task>().unwrap();
        assert_eq!(t.id, i);
        assert_eq!(t.input.len(), len);
    }
    // Bytes that are not a Task: an error, not a panic.
    p.put(&[0xff; 3]).unwrap();
    let m = c.take().unwrap().unwrap();
    assert!(matches!(m.archived::<Task>(), Err(Error::Archive(_))));
}

#[test]
fn messages_larger_than_the_ring_travel_whole() {
    let q = WorkQueue::create(&opts().capacity(1 << 16)).unwrap();
    let (mut p, mut c) = (q.producer().unwrap(), q.consumer().unwrap());
    let big: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
    p.put(&big).unwrap();
    p.put(b"small").unwrap();
    assert_eq!(&*c.take().unwrap().unwrap(), &big[..]);
    assert_eq!(&*c.take().unwrap().unwrap(), b"small");
}

#[test]
fn bad_handles_are_clear_errors() {
    let q = WorkQueue::create(&opts()).unwrap();
    let text = q.handle().to_string();
    let ours = shoal_channel::handle::format();
    for bad in [
        String::new(),
        "workqueue".into(),
        format!("nonsense@shm://x?fmt={ours}"),
        "workqueue@tcp://x?fmt=y".into(),
        "workqueue@shm://x".into(),
        "workqueue@shm://?fmt=y".into(),
    ] {
        assert!(
            matches!(bad.parse::<Handle>(), Err(Error::BadHandle(_))),
            "{bad:?}"
        );
    }
    // Another build's format.
    let other = text.replace("?fmt=ch2.", "?fmt=ch9.");
    let h: Handle = other.parse().unwrap();
    match Consumer::attach(&h) {
        Err(Error::Incompatible { ours, theirs }) => {
            assert!(ours.starts_with("ch2."));
            assert!(theirs.starts_with("ch9."));
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    // Garbage bytes.
    assert!(matches!(
        Handle::from_bytes(&[1, 2, 3]),
        Err(Error::BadHandle(_))
    ));
    assert!(matches!(
        Handle::from_bytes(&[0xff; 64]),
        Err(Error::BadHandle(_))
    ));
    // Truncated bytes, another build's bytes, bytes flipped anywhere: an
    // error or a handle, never a panic.
    let bytes = q.handle().to_bytes().unwrap();
    for n in 0..bytes.len() {
        assert!(Handle::from_bytes(&bytes[..n]).is_err(), "{n} bytes");
    }
    let mut other = bytes.clone();
    other[10..13].copy_from_slice(b"ch9");
    assert!(matches!(
        Handle::from_bytes(&other),
        Err(Error::Incompatible { .. })
    ));
    for i in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0x5a;
        let _ = Handle::from_bytes(&flipped);
    }
    // Another build with more after its host.
    let later = format!("{}&port=7", text.replace("?fmt=ch2.", "?fmt=ch3."));
    assert!(matches!(
        later.parse::<Handle>(),
        Err(Error::Incompatible { .. })
    ));
    // A kind this build does not know, from another build.
    let newer = text
        .replacen("workqueue@", "broadcast2@", 1)
        .replace("?fmt=ch2.", "?fmt=ch3.");
    assert!(matches!(
        newer.parse::<Handle>(),
        Err(Error::Incompatible { .. })
    ));
    // A queue that is gone.
    let h = q.handle().clone();
    drop(q);
    match Producer::attach(&h) {
        Err(Error::Vanished { .. }) => {}
        other => panic!("expected Vanished, got {other:?}"),
    }
}

#[test]
fn a_ring_of_another_kind_or_format_is_refused_by_name() {
    // A plain MPMC ring (no channel format tag) named in a queue handle.
    let ring =
        shoal_shm_ring::MpmcRing::create(&shoal_shm_ring::MpmcConfig::new(1 << 14, 1, 1)).unwrap();
    let q = WorkQueue::create(&opts()).unwrap();
    let text = q.handle().to_string();
    let forged = text.replace(&q.ring_handle().to_string(), &ring.handle().to_string());
    let h: Handle = forged.parse().unwrap();
    match Consumer::attach(&h) {
        Err(Error::Incompatible { ours, .. }) => assert!(ours.starts_with("shoal-wq2")),
        other => panic!("expected Incompatible, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random producers (each claiming some messages and putting some
    /// unclaimed ones), consumers, and a close at a random moment: every
    /// message put is taken exactly once, every consumer ends with `None`,
    /// and nobody hangs (every wait is bounded, so a hang fails the test).
    #[test]
    fn termination_is_exact_whatever_the_schedule(
        producers in proptest::collection::vec((0u64..300, 0u64..300), 1..4),
        consumers in 1usize..4,
        close_after_us in 0u64..3000,
        try_takers in any::<bool>(),
    ) {
        let q = WorkQueue::create(&opts()).unwrap();
        let takers: Vec<_> = (0..consumers)
            .map(|k| {
                let mut c = q.consumer().unwrap();
                let poll = try_takers && k == 0;
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let t0 = Instant::now();
                    loop {
                        if poll {
                            match c.try_take().unwrap() {
                                TryTake::Taken(m) => got.push(id(&m)),
                                TryTake::Empty => std::thread::yield_now(),
                                TryTake::Finished => break,
                            }
                            assert!(t0.elapsed() < Duration::from_secs(20), "try_take never ended");
                        } else {
                            match c.take().unwrap() {
                                Some(m) => got.push(id(&m)),
                                None => break,
                            }
                        }
                    }
                    got
                })
            })
            .collect();
        let puts: Vec<_> = producers
            .iter()
            .enumerate()
            .map(|(i, &(claimed, unclaimed))| {
                let mut p = q.producer().unwrap();
                std::thread::spawn(move || {
                    let i = i as u64;
                    let mut sent = Vec::new();
                    let mut n = 0;
                    // Unclaimed puts race the close: refused once it came.
                    for _ in 0..unclaimed {
                        match p.put(&msg(i, n)) {
                            Ok(()) => sent.push((i, n)),
                            Err(Error::Closed) => break,
                            Err(e) => panic!("{e}"),
                        }
                        n += 1;
                    }
                    if p.claim(claimed).is_ok() {
                        for _ in 0..claimed {
                            p.put(&msg(i, n)).unwrap();
                            sent.push((i, n));
                            n += 1;
                        }
                    }
                    sent
                })
            })
            .collect();
        std::thread::sleep(Duration::from_micros(close_after_us));
        q.producer().unwrap().close().unwrap();
        let mut sent = HashSet::new();
        for p in puts {
            sent.extend(p.join().unwrap());
        }
        let mut taken = HashSet::new();
        for t in takers {
            for m in t.join().unwrap() {
                prop_assert!(taken.insert(m), "{:?} taken twice", m);
            }
        }
        prop_assert_eq!(taken, sent);
    }
}

/// Review: endpoints attached before the queue was dropped keep working,
/// their async forms included (their readiness fds reopen the segment
/// through the endpoint's own descriptor, not its unlinked name).
#[tokio::test(flavor = "current_thread")]
async fn async_endpoints_keep_working_after_the_queue_is_dropped() {
    let q = WorkQueue::create(&opts().capacity(4096)).unwrap();
    let (mut p, mut c) = (q.producer().unwrap(), q.consumer().unwrap());
    drop(q);
    let waited = tokio::time::timeout(Duration::from_millis(100), c.take_async())
        .await
        .map(|r| r.map(|m| m.map(|m| m.to_vec())));
    assert!(waited.is_err(), "waited (no error): {waited:?}");
    while p.try_put(&[3u8; 1000]).is_ok() {}
    let (put, taken) = tokio::join!(p.put_async(&[4u8; 1000]), async {
        let mut n = 0;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), c.take_async())
            .await
            .unwrap_or(Ok(None))
        {
            n += usize::from(m[0] == 4);
        }
        n
    });
    put.unwrap();
    assert_eq!(taken, 1);
}

/// Review: timeouts of zero and of Duration::MAX are a try and no
/// timeout, with the usual errors, never a panic.
#[tokio::test(flavor = "current_thread")]
async fn zero_and_endless_timeouts_behave() {
    let zero = opts()
        .capacity(4096)
        .take_timeout(Some(Duration::ZERO))
        .put_timeout(Some(Duration::ZERO));
    let q = WorkQueue::create(&zero).unwrap();
    let (mut p, mut c) = (q.producer().unwrap(), q.consumer().unwrap());
    assert!(matches!(c.take(), Err(Error::Timeout { .. })));
    assert!(matches!(c.take_async().await, Err(Error::Timeout { .. })));
    while p.try_put(&[1u8; 1000]).is_ok() {}
    assert!(matches!(p.put(&[1u8; 1000]), Err(Error::Timeout { .. })));
    assert!(matches!(
        p.put_async(&[1u8; 1000]).await,
        Err(Error::Timeout { .. })
    ));
    let endless = opts()
        .take_timeout(Some(Duration::MAX))
        .put_timeout(Some(Duration::MAX));
    let q = WorkQueue::create(&endless).unwrap();
    let (mut p, mut c) = (q.producer().unwrap(), q.consumer().unwrap());
    p.put_async(b"x").await.unwrap();
    assert_eq!(&*c.take_async().await.unwrap().unwrap(), b"x");
}

/// Review: an async consumer of a queue whose creator and producers are
/// all gone (claims never closed) is told nobody can produce, as a
/// blocking one is, instead of waiting for ever.
#[tokio::test(flavor = "current_thread")]
async fn an_async_take_learns_that_nobody_can_produce() {
    let q = WorkQueue::create(&opts()).unwrap();
    let mut c = q.consumer().unwrap();
    drop(q);
    let r = tokio::time::timeout(Duration::from_secs(5), c.take_async())
        .await
        .expect("ended within 5 s");
    assert!(
        matches!(
            r,
            Err(Error::Ring(shoal_shm_ring::Error::WriterGone { .. }))
        ),
        "{r:?}"
    );
}
