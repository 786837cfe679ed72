//! Random sequences of record sizes, overflow sizes included: every reader
//! sees exactly the writer's sequence, byte for byte.

use proptest::prelude::*;
use shoal_shm_ring::{
    BroadcastConfig, BroadcastReader, BroadcastWriter, Error, MpmcConfig, MpmcRing, Wait,
};
use std::collections::VecDeque;

fn payload(seq: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq.wrapping_mul(31) ^ i.wrapping_mul(7)) as u8)
        .collect()
}

/// One record: the bytes reserved, and the prefix committed.
#[derive(Debug, Clone)]
struct Rec {
    reserve: usize,
    commit: usize,
}

fn recs(cap: usize) -> impl Strategy<Value = Vec<Rec>> {
    let size = prop_oneof![
        6 => 0..64usize,
        3 => 64..1024usize,
        2 => 1024..cap / 2,
        1 => cap / 2..cap * 3, // overflow segments
    ];
    proptest::collection::vec(
        (size, 0u8..=255).prop_map(|(reserve, f)| Rec {
            reserve,
            commit: reserve * f as usize / 255,
        }),
        1..120,
    )
}

fn drain(r: &mut BroadcastReader, expect: &mut VecDeque<Vec<u8>>) {
    while let Some(g) = r.try_recv().unwrap() {
        let want = expect.pop_front().expect("reader got more than was sent");
        assert_eq!(&*g, &want[..]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn broadcast_readers_see_exactly_the_sequence(records in recs(8192), lag in 0usize..4) {
        let mut w = BroadcastWriter::create(&BroadcastConfig::new(8192, 3)).unwrap();
        let mut r1 = BroadcastReader::attach(&w.handle()).unwrap();
        let mut r2 = BroadcastReader::attach(&w.handle()).unwrap();
        w.wait_for_readers(2, Wait::no_wait()).unwrap();
        let mut q1 = VecDeque::new();
        let mut q2 = VecDeque::new();
        for (seq, rec) in records.iter().enumerate() {
            let data = payload(seq, rec.commit);
            loop {
                match w.reserve_with(rec.reserve, Wait::no_wait()) {
                    Ok(mut res) => {
                        assert_eq!(res.len(), rec.reserve);
                        res[..rec.commit].copy_from_slice(&data);
                        res.commit(rec.commit).unwrap();
                        break;
                    }
                    Err(Error::WouldBlock) => {
                        drain(&mut r1, &mut q1);
                        drain(&mut r2, &mut q2);
                    }
                    Err(e) => panic!("reserve: {e}"),
                }
            }
            q1.push_back(data.clone());
            q2.push_back(data);
            // Reader 1 keeps up; reader 2 lags behind by `lag` records.
            drain(&mut r1, &mut q1);
            if q2.len() > lag {
                drain(&mut r2, &mut q2);
            }
        }
        drain(&mut r1, &mut q1);
        drain(&mut r2, &mut q2);
        prop_assert!(q1.is_empty() && q2.is_empty());
    }

    #[test]
    fn mpmc_delivers_the_sequence_once(records in recs(8192)) {
        let ring = MpmcRing::create(&MpmcConfig::new(8192, 1, 1)).unwrap();
        let mut p = ring.producer().unwrap();
        let mut c = ring.consumer().unwrap();
        let mut q = VecDeque::new();
        for (seq, rec) in records.iter().enumerate() {
            let data = payload(seq, rec.commit);
            loop {
                match p.reserve_with(rec.reserve, Wait::no_wait()) {
                    Ok(mut res) => {
                        res[..rec.commit].copy_from_slice(&data);
                        res.commit(rec.commit).unwrap();
                        break;
                    }
                    Err(Error::WouldBlock) => {
                        while let Some(g) = c.try_take().unwrap() {
                            let want: Vec<u8> = q.pop_front().unwrap();
                            assert_eq!(&*g, &want[..]);
                        }
                    }
                    Err(e) => panic!("reserve: {e}"),
                }
            }
            q.push_back(data);
        }
        while let Some(g) = c.try_take().unwrap() {
            let want: Vec<u8> = q.pop_front().unwrap();
            assert_eq!(&*g, &want[..]);
        }
        prop_assert!(q.is_empty());
    }
}
