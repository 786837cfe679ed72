//! WorkQueue and Gather peers that reach their queue through its bridge
//! (loopback here; across network namespaces and processes in the
//! workspace's `tests/`): the same claims, close and termination as
//! local peers, each message taken once, typed messages read in place,
//! a producer that leaves owing claimed messages named to consumers.

#![cfg(any(feature = "nng", feature = "quic"))]

use shoal_channel::{
    Consumer, Error, Gather, GatherWriter, Producer, QueueOptions, TryPutError, TryTake, WorkQueue,
};
use std::collections::HashSet;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

fn opts(bind: &str) -> QueueOptions {
    QueueOptions::default()
        .capacity(1 << 16)
        .remote(bind)
        .take_timeout(Some(30 * SEC))
        .put_timeout(Some(30 * SEC))
}

/// Local and remote producers and consumers on one queue: every message
/// taken exactly once, and every consumer ends with `None`.
fn mixed(bind: &str) {
    let o = opts(bind);
    let q = WorkQueue::create(&o).unwrap();
    let h = q.handle().clone();
    assert!(h.remote().is_some());
    const EACH: u64 = 300;
    let producers: Vec<Producer> = vec![
        q.producer().unwrap(),
        Producer::attach_remote(&h, &o).unwrap(),
        Producer::attach_remote(&h, &o).unwrap(),
    ];
    assert_eq!(
        producers.iter().map(|p| p.is_remote()).collect::<Vec<_>>(),
        [false, true, true]
    );
    let consumers: Vec<Consumer> = vec![
        q.consumer().unwrap(),
        Consumer::attach_remote(&h, &o).unwrap(),
        Consumer::attach_remote(&h, &o).unwrap(),
    ];
    let mut sending = Vec::new();
    for (i, mut p) in producers.into_iter().enumerate() {
        p.claim(EACH).unwrap();
        sending.push(std::thread::spawn(move || {
            for n in 0..EACH {
                // Sizes from empty to past the ring's inline limit.
                let len = (n as usize * 331) % 40_000;
                let mut m = vec![(n % 251) as u8; len.max(16)];
                m[..8].copy_from_slice(&(i as u64).to_le_bytes());
                m[8..16].copy_from_slice(&n.to_le_bytes());
                p.put(&m).unwrap();
            }
            assert_eq!(p.owed(), 0);
        }));
    }
    let mut closer = q.producer().unwrap();
    let taking: Vec<_> = consumers
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(t) = c.take().unwrap() {
                    let p = u64::from_le_bytes(t[..8].try_into().unwrap());
                    let n = u64::from_le_bytes(t[8..16].try_into().unwrap());
                    assert!(t[16..].iter().all(|&b| b == (n % 251) as u8));
                    got.push((p, n));
                }
                got
            })
        })
        .collect();
    closer.close().unwrap();
    for s in sending {
        s.join().unwrap();
    }
    let mut all = HashSet::new();
    let mut per = Vec::new();
    for t in taking {
        let got = t.join().unwrap();
        per.push(got.len());
        for m in got {
            assert!(all.insert(m), "{m:?} taken twice");
        }
    }
    assert_eq!(all.len() as u64, 3 * EACH, "taken per consumer: {per:?}");
}

/// A remote producer dropped owing claimed messages: consumers (local and
/// remote) take what was put, then end with `ProducersLost`.
fn lost(bind: &str) {
    let o = opts(bind);
    let q = WorkQueue::create(&o).unwrap();
    let h = q.handle().clone();
    let mut p = Producer::attach_remote(&h, &o).unwrap();
    let mut c = Consumer::attach_remote(&h, &o).unwrap();
    let mut local = q.consumer().unwrap();
    p.claim(5).unwrap();
    p.close().unwrap();
    p.put(b"one").unwrap();
    p.put(b"two").unwrap();
    assert_eq!(p.owed(), 3);
    drop(p);
    let mut got = Vec::new();
    let end = loop {
        match c.take() {
            Ok(Some(t)) => got.push(t.to_vec()),
            Ok(None) => panic!("the work cannot end complete"),
            Err(e) => break e,
        }
    };
    assert!(matches!(end, Error::ProducersLost { lost: 3, .. }), "{end}");
    assert!(matches!(local.take(), Err(Error::ProducersLost { .. })));
    assert_eq!(got, [b"one".to_vec(), b"two".to_vec()]);
}

/// Try forms, typed values, a closed queue and async forms, remote.
fn forms(bind: &str) {
    #[derive(rkyv::Archive, rkyv::Serialize)]
    struct Job {
        id: u64,
        name: String,
    }
    let o = opts(bind).capacity(4096);
    let q = WorkQueue::create(&o).unwrap();
    let h = q.handle().clone();
    let mut p = Producer::attach_remote(&h, &o).unwrap();
    let mut c = Consumer::attach_remote(&h, &o).unwrap();
    assert!(matches!(c.try_take().unwrap(), TryTake::Empty));
    // Fill the ring and the producer's buffer: try_put hands the
    // message back. (Up to a batch on its way and a full buffer behind
    // it, 1 MiB each, fit before that: a thousand messages each.)
    let msg = [9u8; 1000];
    let mut sent = 0;
    while sent < 10_000 {
        match p.try_put(&msg) {
            Ok(()) => sent += 1,
            Err(TryPutError::Full(back)) => {
                assert_eq!(back.len(), 1000);
                break;
            }
            Err(TryPutError::Failed(e)) => panic!("{e}"),
        }
    }
    assert!((2..10_000).contains(&sent), "{sent}");
    for _ in 0..sent {
        assert_eq!(&*c.take().unwrap().unwrap(), &msg[..]);
    }
    p.flush().unwrap();
    // A take that times out says so.
    match c.take_within(Duration::from_millis(300)) {
        Err(Error::Timeout { .. }) => {}
        t => panic!("{t:?}"),
    }
    p.put_value(&Job {
        id: 7,
        name: "resize".into(),
    })
    .unwrap();
    {
        let t = c.take().unwrap().unwrap();
        let job = t.archived::<Job>().unwrap();
        assert_eq!((job.id.to_native(), job.name.as_str()), (7, "resize"));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        p.put_async(b"async").await.unwrap();
        assert_eq!(&*c.take_async().await.unwrap().unwrap(), b"async");
    });
    // Closed: a producer that owes nothing can no longer put or claim.
    p.close().unwrap();
    // A remote put is shipped in the background: the refusal comes with
    // the flush (or the next call).
    let late = p.put(b"late").and_then(|()| p.flush());
    assert!(matches!(late, Err(Error::Closed)), "{late:?}");
    assert!(matches!(p.claim(1), Err(Error::Closed)));
    assert!(c.take().unwrap().is_none());
    assert!(matches!(c.try_take().unwrap(), TryTake::Finished));
}

/// Remote gather writers: each message with its sender, then the end.
fn gather(bind: &str) {
    let o = opts(bind);
    let mut g = Gather::create(&o).unwrap();
    let h = g.handle().clone();
    let mut writers: Vec<GatherWriter> = (0..3)
        .map(|i| GatherWriter::attach_remote(&h, i, &o).unwrap())
        .collect();
    for w in &mut writers {
        w.claim(2).unwrap();
    }
    g.close().unwrap();
    for w in &mut writers {
        let i = w.sender().index;
        w.send(format!("a{i}").as_bytes()).unwrap();
        w.send_value(&(i as u64 * 10)).unwrap();
    }
    let mut seen = Vec::new();
    while let Some(m) = g.recv().unwrap() {
        let s = m.sender();
        assert_eq!(s.pid, std::process::id());
        if m.len() == 2 {
            assert_eq!(&*m, format!("a{}", s.index).as_bytes());
        } else {
            let v: &rkyv::Archived<u64> = m.archived::<u64>().unwrap();
            assert_eq!(v.to_native(), s.index as u64 * 10);
        }
        seen.push(s.index);
    }
    seen.sort();
    assert_eq!(seen, [0, 0, 1, 1, 2, 2]);
    // A gather's reader is its maker: no remote consumers.
    let c = Consumer::attach_remote(&h, &o);
    assert!(c.is_err());
}

/// Remote endpoints made and dropped inside an async runtime (their own
/// runtime shuts down in the background: no panic), and a message larger
/// than the network carries, taken remotely in parts.
fn in_async_and_large(bind: &str) {
    let net = shoal_transport::Options::default().max_message(64 << 10);
    let o = opts(bind).net(net).capacity(1 << 16);
    let q = WorkQueue::create(&o).unwrap();
    let h = q.handle().clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let mut local = q.producer().unwrap();
    local.put(&big).unwrap();
    local.put(b"small").unwrap();
    let o2 = o.clone();
    let got = rt.block_on(async move {
        let mut p = Producer::attach_remote(&h, &o2).unwrap();
        p.put_async(b"from async").await.unwrap();
        let mut c = Consumer::attach_remote(&h, &o2).unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(c.take_async().await.unwrap().unwrap().to_vec());
        }
        drop(c);
        drop(p);
        got
    });
    assert_eq!(got[0], big);
    assert_eq!(got[1], b"small");
    assert_eq!(got[2], b"from async");
    // Too large for the network from a remote producer: refused at once.
    let mut p = Producer::attach_remote(q.handle(), &o).unwrap();
    assert!(matches!(p.put(&big), Err(Error::Net(_))));
}

/// A remote consumer whose network takes smaller messages than the
/// queue's host's, prefetching: replies are cut to its size (the join
/// settles on the smaller), nothing is lost.
fn mismatched_limits(bind: &str) {
    let q = WorkQueue::create(&opts(bind)).unwrap();
    let small = opts(bind)
        .net(shoal_transport::Options::default().max_message(16 << 10))
        .prefetch(64);
    let mut c = Consumer::attach_remote(q.handle(), &small).unwrap();
    let mut p = q.producer().unwrap();
    let msgs: Vec<Vec<u8>> = (0..100u32)
        .map(|i| vec![i as u8; if i == 50 { 100_000 } else { 2000 }])
        .collect();
    p.claim(100).unwrap();
    p.close().unwrap();
    let taking = std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Some(t) = c.take().unwrap() {
            got.push(t.to_vec());
        }
        got
    });
    for m in &msgs {
        p.put(m).unwrap();
    }
    assert_eq!(taking.join().unwrap(), msgs);
}

/// Remote peers that attach with a longer lease than the queue's
/// creator keeps (8 s, against 1 s) stay in through a quiet spell of
/// three of the bridge's leases: they beat within the bridge's lease,
/// which the join tells them (by their own, every 2 s, they were
/// dropped).
fn leases_differ(bind: &str) {
    let q = WorkQueue::create(&opts(bind).lease(SEC)).unwrap();
    let theirs = opts(bind).lease(8 * SEC);
    let mut p = Producer::attach_remote(q.handle(), &theirs).unwrap();
    let mut c = Consumer::attach_remote(q.handle(), &theirs).unwrap();
    p.claim(3).unwrap();
    std::thread::sleep(3 * SEC);
    for m in [b"a", b"b", b"c"] {
        p.put(m).unwrap();
    }
    p.close().unwrap();
    let mut got = Vec::new();
    while let Some(t) = c.take().unwrap() {
        got.push(t.to_vec());
    }
    assert_eq!(got, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
}

/// A remote consumer whose takes are cancelled at every point, among
/// them while a reply that comes in parts is half there (its network
/// takes less than a batch): the next take goes on from where the
/// cancelled one was; every message arrives once, whole, in order.
fn cancelled_takes(bind: &str) {
    let q = WorkQueue::create(&opts(bind)).unwrap();
    let small = opts(bind)
        .net(shoal_transport::Options::default().max_message(16 << 10))
        .prefetch(64);
    let mut c = Consumer::attach_remote(q.handle(), &small).unwrap();
    let mut p = q.producer().unwrap();
    let msgs: Vec<Vec<u8>> = (0..40u32)
        .map(|i| {
            let mut m = vec![i as u8; if i % 4 == 0 { 100_000 } else { 3000 }];
            m[..4].copy_from_slice(&i.to_le_bytes());
            m
        })
        .collect();
    p.claim(40).unwrap();
    p.close().unwrap();
    let sent = msgs.clone();
    let putting = std::thread::spawn(move || {
        for m in &sent {
            p.put(m).unwrap();
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (got, cut) = rt.block_on(async {
        let mut got = Vec::new();
        let mut cut = 0u64;
        for n in 0u64.. {
            // Cut short after 30 us to 1 ms, varying; from the 3000th
            // try on, not at all (so the test ends, however slow).
            let t = Duration::from_micros(30 + (n * 137) % 1000);
            let took = if n < 3000 {
                tokio::time::timeout(t, c.take_async()).await
            } else {
                Ok(c.take_async().await)
            };
            match took {
                Err(_) => cut += 1,
                Ok(Ok(Some(m))) => got.push(m.to_vec()),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => panic!("take: {e}"),
            }
        }
        (got, cut)
    });
    putting.join().unwrap();
    assert!(cut > 0);
    assert_eq!(got.len(), msgs.len(), "{cut} takes cut short");
    assert!(got == msgs, "messages differ ({cut} takes cut short)");
}

/// A remote consumer whose network carries 16 KiB, prefetching a
/// thousand messages: batches of a megabyte and more, and a 2 MiB
/// message, come in parts and are taken whole.
fn large_batches_in_parts(bind: &str) {
    let q = WorkQueue::create(&opts(bind).capacity(16 << 20)).unwrap();
    let small = opts(bind)
        .net(shoal_transport::Options::default().max_message(16 << 10))
        .prefetch(1024);
    let mut c = Consumer::attach_remote(q.handle(), &small).unwrap();
    let mut p = q.producer().unwrap();
    let msgs: Vec<Vec<u8>> = (0..1200u32)
        .map(|i| vec![i as u8; if i == 600 { 2 << 20 } else { 2000 }])
        .collect();
    p.claim(msgs.len() as u64).unwrap();
    p.close().unwrap();
    let sent = msgs.clone();
    let putting = std::thread::spawn(move || {
        for m in &sent {
            p.put(m).unwrap();
        }
    });
    // Taken once they are all in, so batches come full.
    putting.join().unwrap();
    let mut got = Vec::new();
    while let Some(t) = c.take().unwrap() {
        got.push(t.to_vec());
    }
    assert_eq!(got.len(), msgs.len());
    assert!(got == msgs);
}

/// A remote producer whose messages nobody takes cannot fill the queue
/// host's `/dev/shm`: large messages hold ring room in proportion to
/// their size, so the ring fills after some dozens of 256 KiB messages
/// (not a thousand, one per 64-byte descriptor), and the producer's put
/// times out. Every message
/// it put is then taken, in order.
fn large_puts_nobody_takes(bind: &str) {
    const LEN: usize = 256 << 10;
    let o = opts(bind).put_timeout(Some(SEC));
    let q = WorkQueue::create(&o).unwrap();
    let mut c = q.consumer().unwrap();
    let mut p = Producer::attach_remote(q.handle(), &o).unwrap();
    let msg = |i: u32| {
        let mut m = vec![(i % 251) as u8; LEN];
        m[..4].copy_from_slice(&i.to_le_bytes());
        m
    };
    let mut put = 0u32;
    loop {
        match p.put(&msg(put)) {
            Ok(()) => put += 1,
            Err(Error::Timeout { .. }) => break,
            Err(e) => panic!("put {put}: {e}"),
        }
        assert!(
            put < 200,
            "{put} messages of 256 KiB went in, nobody taking"
        );
    }
    eprintln!("{put} messages of {LEN} B put before the queue was full");
    for i in 0..put {
        let t = c
            .take_within(5 * SEC)
            .unwrap()
            .unwrap_or_else(|| panic!("message {i} of {put} never came"));
        assert!(*t == msg(i)[..], "message {i} came back changed");
    }
}

/// Handles that do not fit: a queue without remote peers, another build.
#[test]
fn remote_attach_needs_a_bridge() {
    let q = WorkQueue::create(&QueueOptions::default()).unwrap();
    let e = Producer::attach_remote(q.handle(), &QueueOptions::default()).unwrap_err();
    assert!(matches!(e, Error::BadHandle(_)), "{e}");
}

/// The cases above, over one wire.
macro_rules! over {
    ($wire:ident, $feature:literal, $at:literal) => {
        #[cfg(feature = $feature)]
        mod $wire {
            const AT: &str = $at;
            #[test]
            fn mixed_peers() {
                super::mixed(AT);
            }
            #[test]
            fn lost_producer() {
                super::lost(AT);
            }
            #[test]
            fn forms() {
                super::forms(AT);
            }
            #[test]
            fn gather() {
                super::gather(AT);
            }
            #[test]
            fn in_async_and_large() {
                super::in_async_and_large(AT);
            }
            #[test]
            fn mismatched_limits() {
                super::mismatched_limits(AT);
            }
            #[test]
            fn large_batches_in_parts() {
                super::large_batches_in_parts(AT);
            }
            #[test]
            fn cancelled_takes() {
                super::cancelled_takes(AT);
            }
            #[test]
            fn leases_differ() {
                super::leases_differ(AT);
            }
            #[test]
            fn large_puts_nobody_takes() {
                super::large_puts_nobody_takes(AT);
            }
        }
    };
}

over!(nng, "nng", "nng+tcp://127.0.0.1:0");
over!(quic, "quic", "quic://127.0.0.1:0");

/// A hostile peer at the bridge (nng): garbage, a join from another
/// build or for another kind, and requests on a session without its
/// token are each answered with a failure, change nothing, and the queue
/// goes on serving its real peers.
#[cfg(feature = "nng")]
#[test]
fn hostile_requests_at_the_bridge_change_nothing() {
    use shoal_transport::{Address, NngRequester, Options};
    let o = opts("nng+tcp://127.0.0.1:0");
    let q = WorkQueue::create(&o).unwrap();
    let h = q.handle().clone();
    let door: Address = h.remote().unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The status byte of each reply.
    let statuses: Vec<u8> = rt.block_on(async {
        let mut r = NngRequester::connect(&door, &Options::default())
            .await
            .unwrap();
        let mut out = Vec::new();
        // Garbage, a short head, an unknown operation.
        for req in [vec![0xffu8; 100], vec![1, 2, 3], {
            let mut v = vec![0u8; 24];
            v[0] = 99;
            v
        }] {
            out.push(r.request(&req).await.unwrap()[0]);
        }
        // A join whose fixed part is there, from another build (a format
        // of its own) and for another kind.
        let mut join = vec![1u8, 0, 0, 0, 0, 0, 0, 0];
        join.extend_from_slice(&[0; 16]);
        let body = |kind: u8, format: &str| {
            // This build's protocol version.
            let mut b = 2u32.to_le_bytes().to_vec();
            b.extend_from_slice(&[1, kind, 0, 0]);
            b.extend_from_slice(&[0; 40]);
            b.extend_from_slice(format.as_bytes());
            b
        };
        let mut other_build = join.clone();
        other_build.extend_from_slice(&body(1, "ch9.another-build"));
        out.push(r.request(&other_build).await.unwrap()[0]);
        let mut other_kind = join.clone();
        other_kind.extend_from_slice(&body(3, shoal_channel::handle::format()));
        out.push(r.request(&other_kind).await.unwrap()[0]);
        out
    });
    // Failed (5) three times, Incompatible (6), WrongKind (7).
    assert_eq!(statuses, [5, 5, 5, 6, 7]);
    // The queue serves its real peers as before.
    let mut p = Producer::attach_remote(&h, &o).unwrap();
    let mut c = Consumer::attach_remote(&h, &o).unwrap();
    p.claim(1).unwrap();
    p.close().unwrap();
    p.put(b"still here").unwrap();
    assert_eq!(&*c.take().unwrap().unwrap(), b"still here");
    assert!(c.take().unwrap().is_none());
}
