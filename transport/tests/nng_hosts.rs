//! The nng backend across two "hosts" (issue 7): two network namespaces
//! joined by a veth pair (`common::netns`), a process in each, nng+tcp to
//! the other namespace's address. Needs root and iproute2; skipped (with
//! the reason printed) otherwise.
#![cfg(feature = "nng")]

mod common;

use common::netns::Pair;
use common::proc::{self, say, var, Child};
use common::{rt, SEC};
use shoal_transport::{
    Address, Error, NngPublisher, NngPuller, NngPusher, NngReplier, NngRequester, NngSubscriber,
    Options,
};
use std::collections::BTreeSet;
use std::time::Duration;

/// The test every child runs.
const CHILD: &str = "nng_hosts_child";
/// Messages each test moves.
const N: u64 = 300;

/// Payload `i`: its number, then up to 64 KiB of deterministic bytes.
fn payload(i: u64) -> Vec<u8> {
    let n = 8 + (i as usize * 7919) % (64 << 10);
    let mut p: Vec<u8> = (0..n).map(|k| (k as u64 * 13 + i) as u8).collect();
    p[..8].copy_from_slice(&i.to_le_bytes());
    p
}

fn number(p: &[u8]) -> u64 {
    u64::from_le_bytes(p[..8].try_into().unwrap())
}

/// The address side 0 of `pair` listens at.
fn server(pair: &Pair) -> Address {
    format!("nng+tcp://{}:5555", pair.addr(0)).parse().unwrap()
}

/// Spawns `role` in namespace `side` of `pair`, for `a`.
fn spawn(pair: &Pair, side: usize, role: &str, a: &Address) -> Child {
    let env = [("SHOAL_ADDR", a.to_string())];
    Child::spawn(
        pair.self_command(side, CHILD, role, &env),
        &format!("{role} in {}", pair.name(side)),
    )
}

/// Every process of these tests but the first: does nothing unless
/// started as a child by one of them.
#[test]
fn nng_hosts_child() {
    let Some(role) = proc::role() else { return };
    rt().block_on(async {
        let a: Address = var("SHOAL_ADDR").parse().unwrap();
        let o = Options::default().connect_timeout(5 * SEC);
        let work = async {
            match role.as_str() {
                "pub" => {
                    let mut p = NngPublisher::bind(&a, &o).unwrap();
                    say("bound");
                    p.wait_for_subscribers(1, 10 * SEC).await.unwrap();
                    for i in 0..N {
                        p.send(b"t", &payload(i)).await.unwrap();
                    }
                    drop(p);
                    // Closing lingers until the subscriber has it all.
                    let _ = tokio::task::spawn_blocking(proc::hear).await;
                }
                "sub" => {
                    let mut s = NngSubscriber::connect(&a, &o).await.unwrap();
                    for i in 0..N {
                        let f = s.recv().await.unwrap();
                        assert_eq!(&*f, &payload(i)[..], "message {i}");
                    }
                    assert!(matches!(s.recv().await, Err(Error::Closed)));
                    say("done");
                }
                "queue" => {
                    let mut q = NngPuller::bind(&a, &o).unwrap();
                    say("bound");
                    let mut got = BTreeSet::new();
                    while got.len() < N as usize {
                        let f = q.recv().await.unwrap();
                        assert_eq!(&*f, &payload(number(&f))[..]);
                        assert!(got.insert(number(&f)), "{} twice", number(&f));
                    }
                    assert_eq!(got, (0..N).collect());
                    say("done");
                }
                "pusher" => {
                    let mut p = NngPusher::connect(&a, &o).await.unwrap();
                    for i in 0..N {
                        p.send(&payload(i)).await.unwrap();
                    }
                    // Sends return once in the pusher's window: the
                    // process must not end before the queue has them.
                    p.flush().await.unwrap();
                    say("pushed");
                }
                "replier" => {
                    let mut r = NngReplier::bind(&a, &o).unwrap();
                    say("bound");
                    loop {
                        r.serve_one(|q| q.iter().rev().copied().collect())
                            .await
                            .unwrap();
                    }
                }
                "requester" => {
                    let mut r = NngRequester::connect(&a, &o).await.unwrap();
                    for i in 0..N {
                        let q = payload(i);
                        let f = r.request(&q).await.unwrap();
                        assert!(f.iter().eq(q.iter().rev()), "reply {i}");
                    }
                    say("done");
                }
                r => panic!("unknown role {r}"),
            }
        };
        tokio::time::timeout(20 * SEC, work)
            .await
            .unwrap_or_else(|_| panic!("child {role} hung"));
    });
}

/// Runs `body` with a fresh pair of namespaces, bounded in time; skips
/// (printing why) where namespaces cannot be made.
fn with_pair(tag: &str, body: impl AsyncFnOnce(&Pair)) {
    let Some(pair) = Pair::create_or_skip(tag) else {
        return;
    };
    rt().block_on(async {
        tokio::time::timeout(25 * SEC, body(&pair))
            .await
            .expect("the test hung");
    });
    drop(pair);
}

/// A publisher on one host, a subscriber on the other: everything
/// arrives, in order, then Closed.
#[test]
fn pubsub_across_two_hosts() {
    with_pair("ps", async |pair| {
        let a = server(pair);
        let mut p = spawn(pair, 0, "pub", &a);
        p.expect("bound", 10 * SEC).await;
        let mut s = spawn(pair, 1, "sub", &a);
        s.expect("done", 20 * SEC).await;
        s.wait_success(5 * SEC).await;
        p.tell("exit");
        p.wait_success(5 * SEC).await;
    });
}

/// The queue on one host, a pusher on the other: every message arrives
/// once.
#[test]
fn pushpull_across_two_hosts() {
    with_pair("pp", async |pair| {
        let a = server(pair);
        let mut q = spawn(pair, 0, "queue", &a);
        q.expect("bound", 10 * SEC).await;
        let mut p = spawn(pair, 1, "pusher", &a);
        p.expect("pushed", 20 * SEC).await;
        q.expect("done", 10 * SEC).await;
        q.wait_success(5 * SEC).await;
        p.wait_success(5 * SEC).await;
    });
}

/// A replier on one host, a requester on the other: every reply is the
/// answer to its own request.
#[test]
fn reqrep_across_two_hosts() {
    with_pair("rr", async |pair| {
        let a = server(pair);
        let mut r = spawn(pair, 0, "replier", &a);
        r.expect("bound", 10 * SEC).await;
        let mut q = spawn(pair, 1, "requester", &a);
        q.expect("done", 20 * SEC).await;
        q.wait_success(5 * SEC).await;
        // The replier serves until killed (on drop).
        assert!(r.next(Duration::from_millis(10)).await.is_none());
    });
}
