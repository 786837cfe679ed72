//! The QUIC backend between real processes (issue 7): on one host, and
//! across two "hosts" (network namespaces joined by a veth pair, as root;
//! skipped with the reason printed otherwise). Each server process binds
//! port 0 and says its address, certificate pin included, which the
//! clients are started with.
#![cfg(feature = "quic")]

mod common;

use common::netns::Pair;
use common::proc::{self, say, var, Child};
use common::{rt, SEC};
use shoal_transport::quic::tls::Identity;
use shoal_transport::{
    Address, Error, Options, QuicPublisher, QuicPuller, QuicPusher, QuicReplier, QuicRequester,
    QuicSubscriber,
};
use std::collections::BTreeSet;
use std::time::Duration;

/// The test every child runs.
const CHILD: &str = "quic_process_child";
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

/// Every process of these tests but the first: does nothing unless
/// started as a child by one of them.
#[test]
fn quic_process_child() {
    let Some(role) = proc::role() else { return };
    rt().block_on(async {
        let a: Address = var("SHOAL_ADDR").parse().unwrap();
        let o = Options::default().connect_timeout(5 * SEC);
        let work = async {
            match role.as_str() {
                "pub" => {
                    let mut p = QuicPublisher::bind(&a, &o).await.unwrap();
                    say(format!("bound {}", p.address()));
                    p.wait_for_subscribers(1, 10 * SEC).await.unwrap();
                    for i in 0..N {
                        p.send(b"t", &payload(i)).await.unwrap();
                    }
                    drop(p);
                    let _ = tokio::task::spawn_blocking(proc::hear).await;
                }
                "sub" => {
                    let mut s = QuicSubscriber::connect(&a, &o).await.unwrap();
                    for i in 0..N {
                        let f = s.recv().await.unwrap();
                        assert_eq!(&*f, &payload(i)[..], "message {i}");
                    }
                    assert!(matches!(s.recv().await, Err(Error::Closed)));
                    say("done");
                }
                "queue" => {
                    let mut q = QuicPuller::bind(&a, &o).await.unwrap();
                    say(format!("bound {}", q.address()));
                    let mut got = BTreeSet::new();
                    // Until, with what the remote puller took (the
                    // parent says which), every message was taken.
                    let line = tokio::task::spawn_blocking(proc::hear).await.unwrap();
                    let took: BTreeSet<u64> = line
                        .trim()
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| s.parse().unwrap())
                        .collect();
                    while got.union(&took).count() < N as usize {
                        let Ok(f) = tokio::time::timeout(8 * SEC, q.recv()).await else {
                            let missing: Vec<u64> = (0..N)
                                .filter(|n| !got.contains(n) && !took.contains(n))
                                .collect();
                            say(format!("stuck: missing {missing:?}"));
                            continue;
                        };
                        let f = f.unwrap();
                        assert_eq!(&*f, &payload(number(&f))[..]);
                        got.insert(number(&f));
                    }
                    let got: Vec<String> = got.iter().map(|n| n.to_string()).collect();
                    say(format!("got {}", got.join(",")));
                    // Bound until the parent is done (the last push's
                    // acknowledgement must reach the pusher first).
                    let _ = tokio::task::spawn_blocking(proc::hear).await;
                }
                "pusher" => {
                    let mut p = QuicPusher::connect(&a, &o).await.unwrap();
                    for i in 0..N {
                        p.send(&payload(i)).await.unwrap();
                    }
                    // Sends return once in the pusher's window: the
                    // process must not end before the queue has them.
                    p.flush().await.unwrap();
                    say("pushed");
                }
                "puller" => {
                    // Takes and reports 50 messages, then sits with a pull
                    // cancelled half way (the queue may have sent it an
                    // item it never acknowledged) until it is killed. (A
                    // message it acknowledged is printed before the next
                    // pull, so a kill cannot hide one from the parent.)
                    let mut q = QuicPuller::connect(&a, &o).await.unwrap();
                    for _ in 0..50 {
                        let f = q.recv().await.unwrap();
                        assert_eq!(&*f, &payload(number(&f))[..]);
                        say(format!("took {}", number(&f)));
                    }
                    if let Ok(r) = tokio::time::timeout(Duration::from_micros(300), q.recv()).await
                    {
                        // Not cancelled after all: it took one more.
                        let f = r.unwrap();
                        say(format!("took {}", number(&f)));
                    }
                    say("idle");
                    std::future::pending::<()>().await;
                }
                "replier" => {
                    let mut r = QuicReplier::bind(&a, &o).await.unwrap();
                    say(format!("bound {}", r.address()));
                    loop {
                        r.serve_one(|q| q.iter().rev().copied().collect())
                            .await
                            .unwrap();
                    }
                }
                "requester" => {
                    let mut r = QuicRequester::connect(&a, &o).await.unwrap();
                    for i in 0..N {
                        let q = payload(i);
                        let f = r.request(&q).await.unwrap();
                        assert!(f.iter().eq(q.iter().rev()), "reply {i}");
                    }
                    say("done");
                }
                "pub-id" => {
                    // Binds with the identity the parent saved, and
                    // publishes a numbered message every 5 ms until killed.
                    let id = Identity::load(std::path::Path::new(&var("SHOAL_IDENTITY"))).unwrap();
                    let o = o.clone().identity(std::sync::Arc::new(id));
                    let mut p = QuicPublisher::bind(&a, &o).await.unwrap();
                    say(format!("bound {}", p.address()));
                    p.wait_for_subscribers(1, 10 * SEC).await.unwrap();
                    for i in 0u64.. {
                        p.send(b"t", &i.to_le_bytes()).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                "queue-id" => {
                    let id = Identity::load(std::path::Path::new(&var("SHOAL_IDENTITY"))).unwrap();
                    let o = o.clone().identity(std::sync::Arc::new(id));
                    let mut q = QuicPuller::bind(&a, &o).await.unwrap();
                    say(format!("bound {}", q.address()));
                    loop {
                        let f = q.recv().await.unwrap();
                        say(format!("got {}", number(&f)));
                    }
                }
                r => panic!("unknown role {r}"),
            }
        };
        tokio::time::timeout(25 * SEC, work)
            .await
            .unwrap_or_else(|_| panic!("child {role} hung"));
    });
}

/// Where the children run: this host, or one side of a pair of
/// namespaces.
#[derive(Clone, Copy)]
enum Place<'a> {
    Here,
    Side(&'a Pair, usize),
}

fn spawn(place: Place<'_>, role: &str, a: &Address) -> Child {
    let env = [("SHOAL_ADDR", a.to_string())];
    match place {
        Place::Here => proc::spawn(CHILD, role, &env),
        Place::Side(pair, side) => Child::spawn(
            pair.self_command(side, CHILD, role, &env),
            &format!("{role} in {}", pair.name(side)),
        ),
    }
}

/// The address a server child said it bound.
async fn bound(c: &mut Child) -> Address {
    let line = c.expect("bound ", 10 * SEC).await;
    line["bound ".len()..].trim().parse().unwrap()
}

async fn pubsub(server: Place<'_>, client: Place<'_>, bind: &Address) {
    let mut p = spawn(server, "pub", bind);
    let a = bound(&mut p).await;
    let mut s = spawn(client, "sub", &a);
    s.expect("done", 20 * SEC).await;
    s.wait_success(5 * SEC).await;
    p.tell("exit");
    p.wait_success(5 * SEC).await;
}

/// Pushes from one process; a remote puller takes some and is killed
/// mid-stream; the queue's own puller takes the rest: every message is
/// taken, none lost (the killed one's last may come twice: allowed).
async fn pushpull(server: Place<'_>, client: Place<'_>, bind: &Address) {
    let mut q = spawn(server, "queue", bind);
    let a = bound(&mut q).await;
    let mut puller = spawn(client, "puller", &a);
    let mut pusher = spawn(client, "pusher", &a);
    let mut took = BTreeSet::new();
    while took.len() < 50 {
        let line = puller.expect("took ", 20 * SEC).await;
        took.insert(line["took ".len()..].trim().parse::<u64>().unwrap());
    }
    loop {
        let line = puller.expect("", 20 * SEC).await;
        if let Some(n) = line.strip_prefix("took ") {
            took.insert(n.trim().parse::<u64>().unwrap());
        } else if line.starts_with("idle") {
            break;
        }
    }
    puller.kill();
    let took_list: Vec<String> = took.iter().map(|n| n.to_string()).collect();
    q.tell(&took_list.join(","));
    pusher.expect("pushed", 20 * SEC).await;
    let line = q.expect("got ", 30 * SEC).await;
    let got: BTreeSet<u64> = line["got ".len()..]
        .trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let all: BTreeSet<u64> = got.union(&took).copied().collect();
    assert_eq!(all, (0..N).collect(), "a message was lost");
    pusher.wait_success(5 * SEC).await;
    q.tell("exit");
    q.wait_success(5 * SEC).await;
}

async fn reqrep(server: Place<'_>, client: Place<'_>, bind: &Address) {
    let mut r = spawn(server, "replier", bind);
    let a = bound(&mut r).await;
    let mut q = spawn(client, "requester", &a);
    q.expect("done", 20 * SEC).await;
    q.wait_success(5 * SEC).await;
}

fn here() -> Address {
    "quic://127.0.0.1:0".parse().unwrap()
}

#[test]
fn pubsub_between_processes() {
    rt().block_on(pubsub(Place::Here, Place::Here, &here()));
}

#[test]
fn pushpull_between_processes_with_a_puller_killed() {
    rt().block_on(pushpull(Place::Here, Place::Here, &here()));
}

#[test]
fn reqrep_between_processes() {
    rt().block_on(reqrep(Place::Here, Place::Here, &here()));
}

/// A replier killed with SIGKILL: a pending request ends with a typed
/// error within the idle timeout, not a hang.
#[test]
fn a_killed_replier_ends_the_pending_request() {
    rt().block_on(async {
        let mut r = spawn(Place::Here, "replier", &here());
        let a = bound(&mut r).await;
        let o = Options::default().connect_timeout(SEC);
        let mut c = QuicRequester::connect(&a, &o).await.unwrap();
        assert_eq!(c.request(b"ab").await.unwrap().to_vec(), b"ba");
        r.kill();
        let e = tokio::time::timeout(20 * SEC, c.request(b"?"))
            .await
            .expect("a request to a killed replier ends")
            .unwrap_err();
        assert!(matches!(e, Error::PeerGone { .. }), "{e}");
    });
}

/// Runs `body` with a fresh pair of namespaces; skips (printing why)
/// where namespaces cannot be made.
fn across(tag: &str, body: impl AsyncFnOnce(&Pair, Address)) {
    let Some(pair) = Pair::create_or_skip(tag) else {
        return;
    };
    let bind: Address = format!("quic://{}:0", pair.addr(0)).parse().unwrap();
    rt().block_on(async {
        tokio::time::timeout(40 * SEC, body(&pair, bind))
            .await
            .expect("the test hung");
    });
    drop(pair);
}

#[test]
fn pubsub_across_two_hosts() {
    across("qps", async |pair, bind| {
        pubsub(Place::Side(pair, 0), Place::Side(pair, 1), &bind).await
    });
}

#[test]
fn pushpull_across_two_hosts() {
    across("qpp", async |pair, bind| {
        pushpull(Place::Side(pair, 0), Place::Side(pair, 1), &bind).await
    });
}

#[test]
fn reqrep_across_two_hosts() {
    across("qrr", async |pair, bind| {
        reqrep(Place::Side(pair, 0), Place::Side(pair, 1), &bind).await
    });
}

/// A saved identity and a fixed port, so a restarted server is the same
/// server to its clients (same address, same pin).
fn restartable(tag: &str) -> (Address, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("shoal-test-id-{tag}-{}", std::process::id()));
    Identity::generate().unwrap().save(&path).unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    (format!("quic://127.0.0.1:{port}").parse().unwrap(), path)
}

fn spawn_with_identity(role: &str, a: &Address, id: &std::path::Path) -> Child {
    let env = [
        ("SHOAL_ADDR", a.to_string()),
        ("SHOAL_IDENTITY", id.display().to_string()),
    ];
    proc::spawn(CHILD, role, &env)
}

/// A publisher killed with SIGKILL and restarted with its identity: the
/// same subscriber, not rebuilt, reports the break once and then receives
/// the new publisher's messages.
#[test]
fn a_subscriber_follows_a_publisher_restarted_with_its_identity() {
    rt().block_on(async {
        let (bind, id) = restartable("pub");
        let mut p = spawn_with_identity("pub-id", &bind, &id);
        let a = bound(&mut p).await;
        let o = Options::default().connect_timeout(5 * SEC);
        let mut s = QuicSubscriber::connect(&a, &o).await.unwrap();
        for _ in 0..3 {
            tokio::time::timeout(5 * SEC, s.recv())
                .await
                .unwrap()
                .unwrap();
        }
        p.kill();
        let mut p2 = spawn_with_identity("pub-id", &bind, &id);
        assert_eq!(bound(&mut p2).await, a, "same address, same pin");
        let mut errors = Vec::new();
        let mut after = 0;
        while after < 3 {
            match tokio::time::timeout(20 * SEC, s.recv())
                .await
                .expect("the subscriber follows the restarted publisher")
            {
                Ok(_) if !errors.is_empty() => after += 1,
                Ok(_) => {}
                Err(e) => {
                    assert!(
                        matches!(e, Error::Evicted { .. } | Error::PeerGone { .. }),
                        "{e}"
                    );
                    errors.push(e.to_string());
                    assert!(errors.len() < 10, "{errors:?}");
                }
            }
        }
        let _ = std::fs::remove_file(&id);
    });
}

/// A queue killed and restarted with its identity: the same pusher, not
/// rebuilt, sends to the new queue.
#[test]
fn a_pusher_follows_a_queue_restarted_with_its_identity() {
    rt().block_on(async {
        let (bind, id) = restartable("queue");
        let mut q = spawn_with_identity("queue-id", &bind, &id);
        let a = bound(&mut q).await;
        let o = Options::default().connect_timeout(5 * SEC);
        let mut p = QuicPusher::connect(&a, &o).await.unwrap();
        for i in 0..5u64 {
            p.send(&payload(i)).await.unwrap();
        }
        q.expect("got 4", 10 * SEC).await;
        q.kill();
        let mut q2 = spawn_with_identity("queue-id", &bind, &id);
        assert_eq!(bound(&mut q2).await, a);
        // Sends while it was away may fail (typed); later ones arrive.
        let mut sent = 0;
        for i in 100..200u64 {
            match tokio::time::timeout(20 * SEC, p.send(&payload(i)))
                .await
                .unwrap()
            {
                Ok(()) => sent += 1,
                Err(e) => assert!(matches!(e, Error::PeerGone { .. } | Error::Closed), "{e}"),
            }
            if sent >= 5 {
                break;
            }
        }
        assert!(sent >= 5, "the pusher never reached the restarted queue");
        q2.expect("got 1", 10 * SEC).await;
        let _ = std::fs::remove_file(&id);
    });
}
