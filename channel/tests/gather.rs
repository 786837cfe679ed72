//! Gather between threads: every result comes home once with its sender,
//! typed results read in place, termination, malformed records refused.

use shoal_channel::gather::host_id;
use shoal_channel::{Error, Gather, GatherWriter, QueueOptions, TryGather};
use std::collections::BTreeMap;
use std::time::Duration;

fn opts() -> QueueOptions {
    QueueOptions::default()
        .capacity(1 << 16)
        .take_timeout(Some(Duration::from_secs(20)))
        .put_timeout(Some(Duration::from_secs(20)))
}

#[test]
fn results_from_four_writers_come_home_once_each_with_their_sender() {
    let mut g = Gather::create(&opts()).unwrap();
    let writers: Vec<_> = (0..4u32)
        .map(|i| {
            let mut w = GatherWriter::attach_with(g.handle(), i, &opts()).unwrap();
            w.claim(500).unwrap();
            std::thread::spawn(move || {
                for n in 0..500u32 {
                    w.send(&n.to_le_bytes()).unwrap();
                }
            })
        })
        .collect();
    g.close().unwrap();
    let mut per: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    while let Some(m) = g.recv().unwrap() {
        let s = m.sender();
        assert_eq!(s.pid, std::process::id());
        assert_eq!(s.host, host_id());
        per.entry(s.index)
            .or_default()
            .push(u32::from_le_bytes(m[..].try_into().unwrap()));
    }
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(per.len(), 4);
    for (_, v) in per {
        // One writer's results arrive in the order it sent them.
        assert_eq!(v, (0..500).collect::<Vec<_>>());
    }
}

#[test]
fn typed_results_are_read_in_place() {
    #[derive(rkyv::Archive, rkyv::Serialize)]
    struct Output {
        step: u64,
        logits: Vec<f32>,
    }
    let mut g = Gather::create(&opts()).unwrap();
    let mut w = GatherWriter::attach(g.handle(), 7).unwrap();
    w.send_value(&Output {
        step: 9,
        logits: vec![0.5; 3000],
    })
    .unwrap();
    let m = g.recv().unwrap().unwrap();
    assert_eq!(m.sender().index, 7);
    assert!((m.as_ptr() as usize).is_multiple_of(16));
    let o = m.archived::<Output>().unwrap();
    assert_eq!(o.step, 9);
    assert_eq!(o.logits.len(), 3000);
}

#[test]
fn a_writer_dropped_owing_ends_the_gather_with_producers_lost() {
    let mut g = Gather::create(&opts()).unwrap();
    let mut w = GatherWriter::attach(g.handle(), 0).unwrap();
    w.claim(3).unwrap();
    w.send(b"one").unwrap();
    g.close().unwrap();
    drop(w);
    assert_eq!(&*g.recv().unwrap().unwrap(), b"one");
    assert!(matches!(
        g.recv().map(|m| m.map(|m| m.to_vec())),
        Err(Error::ProducersLost { lost: 2, .. })
    ));
}

#[test]
fn a_record_without_a_sender_header_is_refused_and_the_gather_goes_on() {
    let mut g = Gather::create(&opts()).unwrap();
    // A peer that writes the ring without the gather's protocol.
    let text = g.handle().to_string();
    let ring = text
        .split_once('@')
        .and_then(|(_, r)| r.split_once("?fmt="))
        .map(|(r, _)| r.to_string())
        .unwrap();
    let mut raw = shoal_shm_ring::MpmcProducer::attach(&ring.parse().unwrap()).unwrap();
    raw.send(b"abc").unwrap();
    let mut w = GatherWriter::attach(g.handle(), 1).unwrap();
    w.send(b"fine").unwrap();
    assert!(matches!(
        g.recv().map(|m| m.map(|m| m.to_vec())),
        Err(Error::Malformed { len: 3, .. })
    ));
    assert_eq!(&*g.recv().unwrap().unwrap(), b"fine");
    assert!(matches!(g.try_recv().unwrap(), TryGather::Empty));
}

#[test]
fn a_gather_handle_is_not_a_work_queue_handle() {
    let g = Gather::create(&opts()).unwrap();
    assert!(matches!(
        shoal_channel::Consumer::attach(g.handle()),
        Err(Error::WrongKind { .. })
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn async_writers_and_reader() {
    let mut g = Gather::create(&opts().capacity(4096)).unwrap();
    let mut w = GatherWriter::attach(g.handle(), 2).unwrap();
    w.claim(40).unwrap();
    g.close().unwrap();
    let send = async move {
        for i in 0..40u8 {
            w.send_async(&[i; 500]).await.unwrap();
        }
    };
    let recv = async {
        let mut n = 0u8;
        while let Some(m) = g.recv_async().await.unwrap() {
            assert_eq!(m[0], n);
            n += 1;
        }
        n
    };
    let ((), n) = tokio::join!(send, recv);
    assert_eq!(n, 40);
}
