//! shoal-channel's WorkQueue across processes: producers and consumers in
//! separate processes, claim/close termination, and peers killed with
//! SIGKILL at bad moments: survivors end (with `None`, or with
//! `ProducersLost` naming what a dead producer owed) within their timeout,
//! and no message is taken twice.

use shoal_channel::{Consumer, Error, Handle, Producer, QueueOptions, WorkQueue};
use shoal_tests::{say, spawn, Peer};
use std::collections::{BTreeMap, HashSet};
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

fn msg(producer: u64, n: u64) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[..8].copy_from_slice(&producer.to_le_bytes());
    m[8..].copy_from_slice(&n.to_le_bytes());
    m
}

fn id(m: &[u8]) -> Option<(u64, u64)> {
    Some((
        u64::from_le_bytes(m.get(..8)?.try_into().ok()?),
        u64::from_le_bytes(m.get(8..16)?.try_into().ok()?),
    ))
}

fn run(role: &str, a: &[String]) -> i32 {
    let handle: Handle = match a.first().map(|h| h.parse()) {
        Some(Ok(h)) => h,
        _ => return 2,
    };
    match role {
        // producer HANDLE ID CLAIM DELAY_US: claims, then puts them.
        "producer" => {
            let (Some(pid), Some(claim), Some(delay)) = (
                a.get(1).and_then(|v| v.parse::<u64>().ok()),
                a.get(2).and_then(|v| v.parse::<u64>().ok()),
                a.get(3).and_then(|v| v.parse::<u64>().ok()),
            ) else {
                return 2;
            };
            let Ok(mut p) = Producer::attach_with(&handle, &opts()) else {
                return 3;
            };
            if p.claim(claim).is_err() {
                return 4;
            }
            say("claimed");
            for n in 0..claim {
                if p.put(&msg(pid, n)).is_err() {
                    return 5;
                }
                if delay > 0 {
                    std::thread::sleep(Duration::from_micros(delay));
                }
            }
            say("done");
            0
        }
        // consumer HANDLE: takes until the end, then reports what it took
        // and how it ended.
        "consumer" => {
            let Ok(mut c) = Consumer::attach_with(&handle, &opts()) else {
                return 3;
            };
            say("joined");
            let mut got = Vec::new();
            let end = loop {
                match c.take() {
                    Ok(Some(m)) => match id(&m) {
                        Some(i) => got.push(format!("{}:{}", i.0, i.1)),
                        None => break "error short message".to_string(),
                    },
                    Ok(None) => break "none".to_string(),
                    Err(Error::ProducersLost { lost, .. }) => break format!("lost {lost}"),
                    Err(e) => break format!("error {e}"),
                }
            };
            say(&format!("took {}", got.join(",")));
            say(&format!("end {end}"));
            0
        }
        // holder HANDLE: takes one message and hangs holding it.
        "holder" => {
            let Ok(mut c) = Consumer::attach_with(&handle, &opts()) else {
                return 3;
            };
            let held = c.take();
            say(&format!("holding {}", matches!(held, Ok(Some(_)))));
            std::thread::sleep(60 * SEC);
            1
        }
        _ => 2,
    }
}

#[test]
fn child_main() {
    shoal_tests::child(run);
}

/// What a consumer process reported: the ids it took, and how it ended.
fn report(c: &mut Peer) -> (Vec<(u64, u64)>, String) {
    let took = c.expect_line(60 * SEC);
    let took = took.strip_prefix("took ").unwrap_or("");
    let ids = took
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (p, n) = s.split_once(':').expect("id");
            (p.parse().expect("producer"), n.parse().expect("number"))
        })
        .collect();
    let end = c.expect_line(60 * SEC);
    (ids, end.strip_prefix("end ").unwrap_or(&end).to_string())
}

fn spawn_consumers(h: &Handle, n: usize) -> Vec<Peer> {
    (0..n)
        .map(|_| {
            let mut c = spawn("consumer", &[h.to_string()]);
            assert_eq!(c.expect_line(20 * SEC), "joined");
            c
        })
        .collect()
}

/// Every id taken once across the reports; per producer, the numbers.
fn collect(reports: &[(Vec<(u64, u64)>, String)]) -> BTreeMap<u64, Vec<u64>> {
    let mut seen = HashSet::new();
    let mut per: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (ids, _) in reports {
        for &(p, n) in ids {
            assert!(seen.insert((p, n)), "{p}:{n} taken twice");
            per.entry(p).or_default().push(n);
        }
    }
    for v in per.values_mut() {
        v.sort_unstable();
    }
    per
}

#[test]
fn producers_and_consumers_in_four_processes_take_every_message_once_then_end() {
    let q = WorkQueue::create(&opts()).unwrap();
    let h = q.handle().clone();
    let mut consumers = spawn_consumers(&h, 2);
    let mut producers: Vec<Peer> = (0..2u64)
        .map(|i| {
            spawn(
                "producer",
                &[h.to_string(), i.to_string(), "3000".into(), "0".into()],
            )
        })
        .collect();
    for p in &mut producers {
        assert_eq!(p.expect_line(20 * SEC), "claimed");
    }
    q.producer().unwrap().close().unwrap();
    let reports: Vec<_> = consumers.iter_mut().map(report).collect();
    for (_, end) in &reports {
        assert_eq!(end, "none");
    }
    let per = collect(&reports);
    for i in 0..2 {
        assert_eq!(per[&i], (0..3000).collect::<Vec<_>>());
    }
    for p in producers {
        assert!(p.wait(20 * SEC).success());
    }
}

#[test]
fn a_producer_killed_mid_run_ends_the_consumers_with_what_it_owed() {
    let q = WorkQueue::create(&opts()).unwrap();
    let h = q.handle().clone();
    let mut consumers = spawn_consumers(&h, 2);
    let mut steady = spawn(
        "producer",
        &[h.to_string(), "0".into(), "500".into(), "0".into()],
    );
    let mut dying = spawn(
        "producer",
        &[h.to_string(), "1".into(), "100000".into(), "100".into()],
    );
    assert_eq!(steady.expect_line(20 * SEC), "claimed");
    assert_eq!(dying.expect_line(20 * SEC), "claimed");
    q.producer().unwrap().close().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    dying.kill9();
    let t0 = Instant::now();
    let reports: Vec<_> = consumers.iter_mut().map(report).collect();
    assert!(
        t0.elapsed() < 10 * SEC,
        "consumers took {:?} to end",
        t0.elapsed()
    );
    let per = collect(&reports);
    assert_eq!(per[&0], (0..500).collect::<Vec<_>>());
    // What the dead producer put came through, in full, no gaps.
    let put = per.get(&1).map_or(0, Vec::len) as u64;
    assert_eq!(
        per.get(&1).cloned().unwrap_or_default(),
        (0..put).collect::<Vec<_>>()
    );
    assert!(put > 0 && put < 100_000, "killed after {put} puts");
    // Every consumer ends with what it owed: exact, or one more when it
    // died between publishing a message and counting it.
    for (_, end) in &reports {
        let lost: u64 = end
            .strip_prefix("lost ")
            .unwrap_or_else(|| panic!("expected lost, got {end}"))
            .parse()
            .unwrap();
        assert!(
            lost == 100_000 - put || lost == 100_000 - put + 1,
            "lost {lost} after {put}"
        );
    }
    assert!(steady.wait(20 * SEC).success());
}

#[test]
fn a_consumer_killed_holding_a_message_does_not_stop_the_others() {
    let q = WorkQueue::create(&opts()).unwrap();
    let h = q.handle().clone();
    let mut p = q.producer().unwrap();
    p.claim(200).unwrap();
    p.put(&msg(0, 0)).unwrap();
    let mut holder = spawn("holder", &[h.to_string()]);
    assert_eq!(holder.expect_line(20 * SEC), "holding true");
    let mut consumers = spawn_consumers(&h, 2);
    holder.kill9();
    for n in 1..200 {
        p.put(&msg(0, n)).unwrap();
    }
    p.close().unwrap();
    let reports: Vec<_> = consumers.iter_mut().map(report).collect();
    for (_, end) in &reports {
        assert_eq!(end, "none");
    }
    // Message 0 died with the consumer that took it; the rest came once.
    let per = collect(&reports);
    assert_eq!(per[&0], (1..200).collect::<Vec<_>>());
}

/// SIGKILL at random moments of a producer's run, several times: the
/// survivors always end within their timeout, nothing is taken twice,
/// and what the dead producer put arrives with no gap.
#[test]
fn producers_killed_at_random_moments_never_hang_the_consumers() {
    let mut seed = std::process::id() as u64 | 1;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..5 {
        let q = WorkQueue::create(&opts()).unwrap();
        let h = q.handle().clone();
        let mut consumers = spawn_consumers(&h, 2);
        let mut dying = spawn(
            "producer",
            &[
                h.to_string(),
                "7".into(),
                "2000".into(),
                rand(50).to_string(),
            ],
        );
        assert_eq!(dying.expect_line(20 * SEC), "claimed");
        if round % 2 == 0 {
            q.producer().unwrap().close().unwrap();
        }
        std::thread::sleep(Duration::from_micros(rand(30_000)));
        dying.kill9();
        if round % 2 == 1 {
            q.producer().unwrap().close().unwrap();
        }
        let t0 = Instant::now();
        let reports: Vec<_> = consumers.iter_mut().map(report).collect();
        assert!(t0.elapsed() < 10 * SEC, "round {round}: {:?}", t0.elapsed());
        let per = collect(&reports);
        let put = per.get(&7).map_or(0, Vec::len) as u64;
        assert_eq!(
            per.get(&7).cloned().unwrap_or_default(),
            (0..put).collect::<Vec<_>>()
        );
        for (_, end) in &reports {
            if put == 2000 {
                assert!(end == "none" || end == "lost 1", "round {round}: {end}");
            } else {
                assert!(end.starts_with("lost "), "round {round}: {end} after {put}");
            }
        }
    }
}
