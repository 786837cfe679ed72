//! shoal-channel's WorkQueue, Gather and Rpc across two hosts: two
//! network namespaces joined by a veth pair (the transport's test
//! helper), the channel's creator in the first, peers in both (those in
//! the second, another host by `SHOAL_HOST`, reach it through its
//! bridge). Each message taken exactly once and every consumer ends with
//! `None`; a remote producer killed (SIGKILL) owing messages ends the
//! consumers' wait with `ProducersLost`; a remote consumer killed leaves
//! the others to finish; gathered messages carry their remote senders;
//! a remote Rpc worker killed is named dead. Over nng+tcp and QUIC.
//! Needs root and iproute2; skipped (with the reason printed) otherwise.
#![cfg(any(feature = "nng", feature = "quic"))]

#[path = "../../transport/tests/common/netns.rs"]
#[allow(dead_code)] // the helper's other uses
mod netns;

/// What `netns` expects of its sibling module: the role variable.
mod proc {
    pub const ROLE: &str = "SHOAL_TEST_ROLE";
}

use shoal_channel::{
    Consumer, Error, Gather, GatherWriter, Handle, Producer, QueueOptions, Rpc, RpcOptions,
    RpcWorker, WorkQueue,
};
use shoal_tests::{say, spawn_command, Peer};
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);
/// Messages each producer puts.
const N: u64 = 300;

fn opts() -> QueueOptions {
    QueueOptions::default()
        .capacity(1 << 18)
        .take_timeout(Some(60 * SEC))
        .put_timeout(Some(60 * SEC))
        .lease(SEC)
}

/// Producer `p`'s message `n`: its key, then filler; some past the
/// ring's inline limit (overflow segments on the queue's host).
fn msg(p: u64, n: u64) -> Vec<u8> {
    let len = match n % 7 {
        0 => 16,
        3 => 200 << 10,
        _ => 16 + (n as usize * 131) % 3000,
    };
    let mut m = vec![(n % 251) as u8; len];
    m[..8].copy_from_slice(&p.to_le_bytes());
    m[8..16].copy_from_slice(&n.to_le_bytes());
    m
}

/// A message's key (producer, number), checking its filler.
fn key(m: &[u8]) -> Option<(u64, u64)> {
    let p = u64::from_le_bytes(m.get(..8)?.try_into().ok()?);
    let n = u64::from_le_bytes(m.get(8..16)?.try_into().ok()?);
    (m[16..].iter().all(|&b| b == (n % 251) as u8) && m.len() == msg(p, n).len()).then_some((p, n))
}

/// Takes until the end; says each key taken (as "k P N"), then how it
/// ended.
fn consume(mut c: Consumer) -> i32 {
    loop {
        match c.take() {
            Ok(Some(t)) => match key(&t) {
                Some((p, n)) => say(&format!("k {p} {n}")),
                None => {
                    say(&format!("bad message of {} bytes", t.len()));
                    return 4;
                }
            },
            Ok(None) => {
                say("end");
                return 0;
            }
            Err(Error::ProducersLost { lost, pid }) => {
                say(&format!("lost {lost} by pid {pid}"));
                return 0;
            }
            Err(e) => {
                say(&format!("error: {e}"));
                return 5;
            }
        }
    }
}

fn run(role: &str, a: &[String]) -> i32 {
    let handle = |s: &String| s.parse::<Handle>().ok();
    match (role, a) {
        // owner BIND LEASE_MS: makes the queue, says its handle; a local
        // producer (0) puts N, a local consumer takes until the end.
        ("owner", [bind, lease]) => {
            let Ok(lease) = lease.parse::<u64>() else {
                return 2;
            };
            let o = opts().remote(bind).lease(Duration::from_millis(lease));
            let q = match WorkQueue::create(&o) {
                Ok(q) => q,
                Err(e) => {
                    eprintln!("owner: {e}");
                    return 3;
                }
            };
            let (Ok(mut p), Ok(c)) = (q.producer(), q.consumer()) else {
                return 3;
            };
            if p.claim(N).is_err() {
                return 3;
            }
            say(&q.handle().to_string());
            let put = std::thread::spawn(move || (0..N).all(|n| p.put(&msg(0, n)).is_ok()));
            let code = consume(c);
            if !put.join().unwrap_or(false) {
                return 6;
            }
            // Keeps the queue (and its bridge) until told.
            std::thread::sleep(2 * SEC);
            code
        }
        // producer HANDLE P COUNT CLAIM: claims CLAIM, says so, puts
        // COUNT, says so, then waits to be killed if it owes.
        ("producer", [h, p, count, claim]) => {
            let (Some(h), Ok(p), Ok(count), Ok(claim)) =
                (handle(h), p.parse::<u64>(), count.parse(), claim.parse())
            else {
                return 2;
            };
            let mut pr = match Producer::attach_with(&h, &opts()) {
                Ok(pr) if pr.is_remote() => pr,
                Ok(_) => return 7,
                Err(e) => {
                    eprintln!("producer {p}: {e}");
                    return 3;
                }
            };
            if pr.claim(claim).is_err() {
                return 3;
            }
            say(&format!("claimed by pid {}", std::process::id()));
            for n in 0..count {
                if let Err(e) = pr.put(&msg(p, n)) {
                    eprintln!("producer {p}: put {n}: {e}");
                    return 4;
                }
            }
            say("put");
            if pr.owed() > 0 {
                std::thread::sleep(120 * SEC);
            }
            0
        }
        // closer HANDLE: closes the queue from the other host.
        ("closer", [h]) => {
            let Some(h) = handle(h) else { return 2 };
            match Producer::attach_with(&h, &opts()).and_then(|mut p| p.close()) {
                Ok(()) => {
                    say("closed");
                    0
                }
                Err(e) => {
                    eprintln!("closer: {e}");
                    3
                }
            }
        }
        // consumer HANDLE: takes until the end.
        ("consumer", [h]) => {
            let Some(h) = handle(h) else { return 2 };
            match Consumer::attach_with(&h, &opts()) {
                Ok(c) if c.is_remote() => {
                    say("joined");
                    consume(c)
                }
                Ok(_) => 7,
                Err(e) => {
                    eprintln!("consumer: {e}");
                    3
                }
            }
        }
        // gather BIND: a gather with one local writer; says its handle,
        // then each message's sender index and host, then "end".
        ("gather", [bind]) => {
            let o = opts().remote(bind);
            let Ok(mut g) = Gather::create(&o) else {
                return 3;
            };
            let Ok(mut w) = GatherWriter::attach_with(g.handle(), 0, &o) else {
                return 3;
            };
            if w.claim(1).is_err() {
                return 3;
            }
            say(&g.handle().to_string());
            if w.send(b"w0").is_err() {
                return 4;
            }
            let mut n = 0;
            while n < 3 {
                match g.recv() {
                    Ok(Some(m)) => {
                        let s = m.sender();
                        say(&format!(
                            "from {} host {:x} {}",
                            s.index,
                            s.host,
                            String::from_utf8_lossy(&m)
                        ));
                        n += 1;
                    }
                    _ => return 5,
                }
            }
            0
        }
        // writer HANDLE INDEX: sends "wINDEX" to the gather.
        ("writer", [h, i]) => {
            let (Some(h), Ok(i)) = (handle(h), i.parse::<u32>()) else {
                return 2;
            };
            match GatherWriter::attach_with(&h, i, &opts())
                .and_then(|mut w| w.send(format!("w{i}").as_bytes()))
            {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("writer {i}: {e}");
                    3
                }
            }
        }
        // caller BIND: an Rpc with worker 0 local, 1 and 2 remote; says
        // its handle, then calls until a worker is named dead, and says
        // which, and how long that took.
        ("caller", [bind]) => {
            let o = RpcOptions::new(3)
                .remote(2, bind)
                .lease(SEC)
                .call_timeout(30 * SEC);
            let Ok(mut rpc) = Rpc::create(&o) else {
                return 3;
            };
            say(&rpc.handle().to_string());
            let h = rpc.handle().clone();
            let o2 = o.clone();
            std::thread::spawn(move || {
                if let Ok(mut w) = RpcWorker::attach_with(&h, 0, &o2) {
                    let _ = w.serve(|r| Ok(r.to_vec()));
                }
            });
            if let Err(e) = rpc.wait_until_ready(30 * SEC) {
                eprintln!("caller: {e}");
                return 4;
            }
            match rpc.call(b"hi") {
                Ok(r) if r.len() == 3 && r.iter().all(|r| r.ok().ok() == Some(&b"hi"[..])) => {
                    say("all answered");
                }
                other => {
                    eprintln!("caller: {other:?}");
                    return 5;
                }
            }
            // Told (by the test) that a worker was killed.
            let t = Instant::now();
            loop {
                match rpc.call(b"again") {
                    Ok(_) if t.elapsed() < 20 * SEC => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(Error::NoReply {
                        missing, replies, ..
                    }) => {
                        let dead: Vec<String> = missing
                            .iter()
                            .map(|s| format!("{}{}", s.index, if s.dead { " dead" } else { "" }))
                            .collect();
                        say(&format!(
                            "missing {} replies {} after {}ms",
                            dead.join(","),
                            replies.len(),
                            t.elapsed().as_millis()
                        ));
                        return 0;
                    }
                    other => {
                        eprintln!("caller: {other:?}");
                        return 6;
                    }
                }
            }
        }
        // worker HANDLE INDEX: a remote Rpc worker echoing requests.
        ("worker", [h, i]) => {
            let (Some(h), Ok(i)) = (handle(h), i.parse::<u32>()) else {
                return 2;
            };
            let o = RpcOptions::new(3).lease(SEC);
            match RpcWorker::attach_with(&h, i, &o) {
                Ok(mut w) if w.is_remote() => {
                    say("joined");
                    match w.serve(|r| Ok(r.to_vec())) {
                        Ok(_) => 0,
                        Err(e) => {
                            eprintln!("worker {i}: {e}");
                            4
                        }
                    }
                }
                Ok(_) => 7,
                Err(e) => {
                    eprintln!("worker {i}: {e}");
                    3
                }
            }
        }
        _ => 2,
    }
}

#[test]
fn child_main() {
    shoal_tests::child(run);
}

fn child(pair: &netns::Pair, side: usize, role: &str, args: &[String]) -> Peer {
    let host = if side == 0 { "host-a" } else { "host-b" };
    let env = [("SHOAL_HOST", host.to_string())];
    spawn_command(pair.self_command(side, "child_main", role, &env), args)
}

/// Reads a consumer's lines until its end line; the keys it took, and
/// that line.
fn keys_until_end(c: &mut Peer) -> (Vec<(u64, u64)>, String) {
    let mut keys = Vec::new();
    loop {
        let line = c.expect_line(120 * SEC);
        let parts: Vec<&str> = line.split(' ').collect();
        match parts[..] {
            ["k", p, n] => keys.push((p.parse().unwrap(), n.parse().unwrap())),
            _ => return (keys, line),
        }
    }
}

/// Local and remote producers and consumers: every message taken
/// exactly once, every consumer ends with `None`; a remote consumer
/// killed midway leaves the others to finish.
fn exactly_once(scheme: &str) {
    let Some(pair) = netns::Pair::create_or_skip("wq") else {
        return;
    };
    let bind = format!("{scheme}://{}:0", pair.addr(0));
    let mut owner = child(&pair, 0, "owner", &[bind, "1000".into()]);
    let h = owner.expect_line(30 * SEC);
    let mut consumers: Vec<Peer> = (0..3)
        .map(|_| child(&pair, 1, "consumer", std::slice::from_ref(&h)))
        .collect();
    for c in &mut consumers {
        assert_eq!(c.expect_line(30 * SEC), "joined");
    }
    let mut producers: Vec<Peer> = (1..3u64)
        .map(|p| {
            let n = N.to_string();
            child(
                &pair,
                1,
                "producer",
                &[h.clone(), p.to_string(), n.clone(), n],
            )
        })
        .collect();
    for p in &mut producers {
        assert!(p.expect_line(30 * SEC).starts_with("claimed by pid "));
    }
    let mut closer = child(&pair, 1, "closer", std::slice::from_ref(&h));
    assert_eq!(closer.expect_line(30 * SEC), "closed");
    // One remote consumer is killed once it took a few.
    let mut victim = consumers.remove(0);
    let mut said = Vec::new();
    for _ in 0..5 {
        said.push(victim.expect_line(60 * SEC));
    }
    said.extend(victim.kill9_rest());
    let victim_keys: Vec<(u64, u64)> = said
        .iter()
        .filter_map(|line| match line.split(' ').collect::<Vec<_>>()[..] {
            ["k", p, n] => Some((p.parse().unwrap(), n.parse().unwrap())),
            _ => None,
        })
        .collect();
    for p in &mut producers {
        assert_eq!(p.expect_line(120 * SEC), "put");
    }
    let mut all: Vec<(u64, u64)> = Vec::new();
    for c in consumers.iter_mut().chain(std::iter::once(&mut owner)) {
        let (keys, end) = keys_until_end(c);
        assert_eq!(end, "end");
        all.extend(keys);
    }
    let survivors = all.len();
    all.extend(victim_keys.iter().copied());
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), all.len(), "a message was taken twice");
    // The victim may have been killed with a batch on its way to it
    // (taken for it by the bridge, never received): at most one batch
    // (the options' prefetch).
    let total = 3 * N as usize;
    let prefetch = opts().prefetch as usize;
    assert!(
        all.len() <= total && all.len() + prefetch >= total,
        "{} of {total} taken ({survivors} by the survivors)",
        all.len()
    );
    for p in producers {
        assert!(p.wait(30 * SEC).success());
    }
    for c in consumers {
        assert!(c.wait(30 * SEC).success());
    }
    assert!(owner.wait(30 * SEC).success());
    assert!(closer.wait(30 * SEC).success());
}

#[cfg(feature = "nng")]
#[test]
fn over_nng_each_message_is_taken_once_across_hosts() {
    exactly_once("nng+tcp");
}

#[cfg(feature = "quic")]
#[test]
fn over_quic_each_message_is_taken_once_across_hosts() {
    exactly_once("quic");
}

/// A remote producer killed owing claimed messages: consumers on both
/// hosts take what it put, then end with `ProducersLost` within the lease
/// (and the liveness interval), not a hang.
fn killed_producer(scheme: &str) {
    let Some(pair) = netns::Pair::create_or_skip("wqk") else {
        return;
    };
    let bind = format!("{scheme}://{}:0", pair.addr(0));
    let mut owner = child(&pair, 0, "owner", &[bind, "1000".into()]);
    let h = owner.expect_line(30 * SEC);
    let mut consumer = child(&pair, 1, "consumer", std::slice::from_ref(&h));
    assert_eq!(consumer.expect_line(30 * SEC), "joined");
    let mut producer = child(
        &pair,
        1,
        "producer",
        &[h.clone(), "1".into(), "5".into(), "50".into()],
    );
    let claimed = producer.expect_line(30 * SEC);
    let pid = claimed
        .strip_prefix("claimed by pid ")
        .unwrap_or_else(|| panic!("{claimed}"))
        .to_string();
    let mut closer = child(&pair, 1, "closer", std::slice::from_ref(&h));
    assert_eq!(closer.expect_line(30 * SEC), "closed");
    assert_eq!(producer.expect_line(30 * SEC), "put");
    producer.kill9();
    let t = Instant::now();
    let mut taken = Vec::new();
    let mut ends = Vec::new();
    for c in [&mut consumer, &mut owner] {
        let (keys, end) = keys_until_end(c);
        taken.extend(keys);
        ends.push(end);
    }
    assert!(t.elapsed() < 20 * SEC, "{:?}", t.elapsed());
    // Both name the producer on the other host, not the bridge that put
    // for it.
    let by = format!(" by pid {pid}");
    assert!(
        ends.iter()
            .all(|e| e.starts_with("lost ") && e.ends_with(&by)),
        "{ends:?}, want{by}"
    );
    taken.sort();
    let mut want: Vec<(u64, u64)> = (0..N)
        .map(|n| (0, n))
        .chain((0..5).map(|n| (1, n)))
        .collect();
    want.sort();
    assert_eq!(taken, want);
    assert!(consumer.wait(30 * SEC).success());
    assert!(owner.wait(30 * SEC).success());
}

#[cfg(feature = "nng")]
#[test]
fn over_nng_a_killed_remote_producer_is_reported_lost() {
    killed_producer("nng+tcp");
}

#[cfg(feature = "quic")]
#[test]
fn over_quic_a_killed_remote_producer_is_reported_lost() {
    killed_producer("quic");
}

/// Gathered messages from writers on the other host carry their index
/// and host.
#[cfg(feature = "quic")]
#[test]
fn gathered_messages_carry_their_remote_senders() {
    let Some(pair) = netns::Pair::create_or_skip("ga") else {
        return;
    };
    let bind = format!("quic://{}:0", pair.addr(0));
    let mut g = child(&pair, 0, "gather", &[bind]);
    let h = g.expect_line(30 * SEC);
    let writers: Vec<Peer> = (1..3)
        .map(|i| child(&pair, 1, "writer", &[h.clone(), i.to_string()]))
        .collect();
    let mut lines: Vec<String> = (0..3).map(|_| g.expect_line(60 * SEC)).collect();
    lines.sort();
    let host = |name: &str| {
        format!(
            "{:x}",
            name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
        )
    };
    assert_eq!(
        lines,
        [
            format!("from 0 host {} w0", host("host-a")),
            format!("from 1 host {} w1", host("host-b")),
            format!("from 2 host {} w2", host("host-b")),
        ]
    );
    for w in writers {
        assert!(w.wait(30 * SEC).success());
    }
    assert!(g.wait(30 * SEC).success());
}

/// An Rpc with workers on the other host: all answer; one killed
/// (SIGKILL) is named dead within its lease, with the others' replies.
#[cfg(feature = "nng")]
#[test]
fn a_killed_remote_rpc_worker_is_named_dead() {
    let Some(pair) = netns::Pair::create_or_skip("rpc") else {
        return;
    };
    let bind = format!("nng+tcp://{}:0", pair.addr(0));
    let mut caller = child(&pair, 0, "caller", &[bind]);
    let h = caller.expect_line(30 * SEC);
    let mut workers: Vec<Peer> = (1..3)
        .map(|i| child(&pair, 1, "worker", &[h.clone(), i.to_string()]))
        .collect();
    for w in &mut workers {
        assert_eq!(w.expect_line(30 * SEC), "joined");
    }
    assert_eq!(caller.expect_line(60 * SEC), "all answered");
    workers.remove(1).kill9();
    let said = caller.expect_line(60 * SEC);
    assert!(said.starts_with("missing 2 dead replies 2 after"), "{said}");
    let ms: u64 = said
        .rsplit(' ')
        .next()
        .and_then(|t| t.trim_end_matches("ms").parse().ok())
        .unwrap_or(u64::MAX);
    assert!(ms < 15_000, "{said}");
    assert!(caller.wait(30 * SEC).success());
    for w in workers {
        // Its caller is gone: it ends (an error or the end of requests).
        let _ = w.wait(30 * SEC);
    }
}
