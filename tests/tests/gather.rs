//! shoal-channel's Gather across processes: results from writer processes
//! come home once each, naming their sender (index, pid); a writer killed
//! with SIGKILL owing results ends the reader with `ProducersLost`.

use shoal_channel::{Error, Gather, GatherWriter, Handle, QueueOptions};
use shoal_tests::{say, spawn};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);

fn opts() -> QueueOptions {
    let peer = shoal_shm_ring::PeerOptions::default()
        .liveness_interval(Duration::from_millis(10))
        .orphan_timeout(Duration::from_millis(50));
    QueueOptions::default()
        .capacity(1 << 16)
        .take_timeout(Some(30 * SEC))
        .put_timeout(Some(30 * SEC))
        .peer(peer)
}

fn run(role: &str, a: &[String]) -> i32 {
    // writer HANDLE INDEX N DELAY_US: claims N results, sends them.
    if role != "writer" {
        return 2;
    }
    let (Some(Ok(h)), Some(Ok(index)), Some(Ok(n)), Some(Ok(delay))) = (
        a.first().map(|v| v.parse::<Handle>()),
        a.get(1).map(|v| v.parse::<u32>()),
        a.get(2).map(|v| v.parse::<u32>()),
        a.get(3).map(|v| v.parse::<u64>()),
    ) else {
        return 2;
    };
    let Ok(mut w) = GatherWriter::attach_with(&h, index, &opts()) else {
        return 3;
    };
    if w.claim(u64::from(n)).is_err() {
        return 4;
    }
    say("claimed");
    for i in 0..n {
        if w.send(&i.to_le_bytes()).is_err() {
            return 5;
        }
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
    }
    0
}

#[test]
fn child_main() {
    shoal_tests::child(run);
}

#[test]
fn results_from_three_writer_processes_name_their_senders() {
    let mut g = Gather::create(&opts()).unwrap();
    let h = g.handle().to_string();
    let mut writers: Vec<_> = (0..3u32)
        .map(|i| {
            spawn(
                "writer",
                &[h.clone(), i.to_string(), "1000".into(), "0".into()],
            )
        })
        .collect();
    for w in &mut writers {
        assert_eq!(w.expect_line(20 * SEC), "claimed");
    }
    g.close().unwrap();
    let pids: Vec<u32> = writers.iter().map(|w| w.pid()).collect();
    let mut per: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    while let Some(m) = g.recv().unwrap() {
        let s = m.sender();
        assert_eq!(
            s.pid, pids[s.index as usize],
            "index {} came from pid {}",
            s.index, s.pid
        );
        per.entry(s.index)
            .or_default()
            .push(u32::from_le_bytes(m[..].try_into().unwrap()));
    }
    for (i, v) in per {
        assert_eq!(v, (0..1000).collect::<Vec<_>>(), "writer {i}");
    }
    for w in writers {
        assert!(w.wait(20 * SEC).success());
    }
}

#[test]
fn a_writer_killed_owing_results_ends_the_reader_with_producers_lost() {
    let mut g = Gather::create(&opts()).unwrap();
    let h = g.handle().to_string();
    let mut w = spawn("writer", &[h, "0".into(), "100000".into(), "200".into()]);
    assert_eq!(w.expect_line(20 * SEC), "claimed");
    g.close().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    w.kill9();
    let t0 = Instant::now();
    let mut got = 0u32;
    let end = loop {
        match g.recv() {
            Ok(Some(m)) => {
                assert_eq!(u32::from_le_bytes(m[..].try_into().unwrap()), got);
                got += 1;
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    assert!(t0.elapsed() < 10 * SEC);
    match end {
        Some(Error::ProducersLost { lost, .. }) => {
            let owed = 100_000 - u64::from(got);
            assert!(lost == owed || lost == owed + 1, "lost {lost}, owed {owed}");
        }
        other => panic!("expected ProducersLost, got {other:?} after {got}"),
    }
}
