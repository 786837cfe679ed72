//! The nng backend across real processes (issue 7), over nng+ipc and
//! nng+tcp: publish/subscribe with a subscriber killed while it holds the
//! publisher back, a publisher killed and bound again, push/pull with a
//! remote puller killed while it holds an unacknowledged message, a queue
//! killed and bound again under a pusher, and request/reply with its
//! replier killed under a pending request.
//!
//! Each test runs this binary again (`nng_child_process`, with
//! `SHOAL_TEST_ROLE` saying which role) for the other processes; children
//! talk back in `@@` lines on stdout (`common::proc`), are killed with
//! SIGKILL where a test says so, and are killed on drop otherwise.
#![cfg(feature = "nng")]

mod common;

use common::proc::{self, say, var, Child};
use common::{rt, SEC};
use shoal_transport::{
    Address, Error, NngPublisher, NngPuller, NngPusher, NngReplier, NngRequester, NngSubscriber,
    Options,
};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The test every child runs.
const CHILD: &str = "nng_child_process";
/// Longest any child lives.
const CHILD_LIMIT: Duration = Duration::from_secs(25);
/// Longest any test's body runs.
const TEST_LIMIT: Duration = Duration::from_secs(25);

/// Payload `i`: its number, then deterministic bytes, 8 to ~3000 bytes.
fn payload(i: u64) -> Vec<u8> {
    let n = 8 + (i as usize * 37) % 3000;
    let mut p: Vec<u8> = (0..n).map(|k| (k as u64 * 31 + i * 7) as u8).collect();
    p[..8].copy_from_slice(&i.to_le_bytes());
    p
}

/// The number a payload carries.
fn number(p: &[u8]) -> u64 {
    u64::from_le_bytes(p[..8].try_into().unwrap())
}

/// Runs a test body on a fresh runtime, failing it if it takes longer
/// than [`TEST_LIMIT`].
fn run(body: impl std::future::Future<Output = ()>) {
    rt().block_on(async {
        tokio::time::timeout(TEST_LIMIT, body)
            .await
            .expect("the test hung");
    });
}

/// Removes an ipc address's socket file (a killed binder leaves it).
fn remove_ipc(a: &Address) {
    if let Address::NngIpc { path, .. } = a {
        let _ = std::fs::remove_file(path);
    }
}

fn env(pairs: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    pairs.to_vec()
}

// ---------------------------------------------------------------------
// Children.

/// Every other process of these tests: does nothing unless started as a
/// child by one of them.
#[test]
fn nng_child_process() {
    let Some(role) = proc::role() else { return };
    // A remote puller that is killed must have said every message it took
    // before its acknowledgement can leave: on a current-thread runtime
    // the acknowledgement (a task) runs only once the receiving task
    // awaits again, after it said the message.
    let runtime = if role == "puller" {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        rt()
    };
    runtime.block_on(async {
        let work = async {
            match role.as_str() {
                "sub" => sub_child().await,
                "pub" => pub_child().await,
                "pusher" => pusher_child().await,
                "puller" => puller_child().await,
                "queue" => queue_child().await,
                "replier" => replier_child().await,
                "requester" => requester_child().await,
                r => panic!("unknown role {r}"),
            }
        };
        tokio::time::timeout(CHILD_LIMIT, work)
            .await
            .unwrap_or_else(|_| panic!("child {role} hung"));
    });
}

fn addr_var() -> Address {
    var("SHOAL_ADDR").parse().unwrap()
}

fn num_var(name: &str) -> u64 {
    var(name).parse().unwrap()
}

/// Binds with `bind`, retrying while the address is still held (a killed
/// binder's port or socket file on its way out).
async fn bind_retry<T>(mut bind: impl FnMut() -> shoal_transport::Result<T>) -> T {
    let deadline = Instant::now() + 5 * SEC;
    loop {
        match bind() {
            Ok(t) => return t,
            Err(Error::AddrInUse { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("bind: {e}"),
        }
    }
}

/// Subscriber: checks messages 0..SHOAL_N in order, then Closed; with
/// SHOAL_STALL=1 stops receiving after SHOAL_FIRST of them.
async fn sub_child() {
    let a = addr_var();
    let (n, first, stall) = (
        num_var("SHOAL_N"),
        num_var("SHOAL_FIRST"),
        var("SHOAL_STALL") == "1",
    );
    let o = Options::default().connect_timeout(5 * SEC);
    let mut s = NngSubscriber::connect(&a, &o).await.unwrap();
    say("ready");
    for i in 0..n {
        if i == first {
            if stall {
                say("stalled");
                // Holds the publisher back until the parent kills it.
                tokio::time::sleep(CHILD_LIMIT).await;
            }
            say("first");
        }
        let f = s
            .recv()
            .await
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(f.topic(), b"t");
        assert_eq!(&*f, &payload(i)[..], "message {i}");
    }
    let e = s.recv().await.unwrap_err();
    assert!(matches!(e, Error::Closed), "{e}");
    say(format!("done {n}"));
}

/// Publisher generation SHOAL_GEN: binds, waits for one subscriber,
/// sends SHOAL_N messages [GEN, i]; generation 1 then waits to be
/// killed, others close and wait for the parent's "exit".
async fn pub_child() {
    let a = addr_var();
    let (gen, n) = (num_var("SHOAL_GEN") as u8, num_var("SHOAL_N"));
    let o = Options::default();
    let mut p = bind_retry(|| NngPublisher::bind(&a, &o)).await;
    say("bound");
    p.wait_for_subscribers(1, 10 * SEC).await.unwrap();
    say("registered");
    for i in 0..n {
        p.send(b"", &[gen, i as u8]).await.unwrap();
    }
    say("sent");
    if gen == 1 {
        tokio::time::sleep(CHILD_LIMIT).await;
    }
    // Closing lingers in the background until the subscriber has it all.
    drop(p);
    let _ = tokio::task::spawn_blocking(proc::hear).await;
}

/// Pusher: pushes SHOAL_BASE.. SHOAL_BASE+SHOAL_N, SHOAL_DELAY_US apart.
async fn pusher_child() {
    let a = addr_var();
    let (base, n, delay) = (
        num_var("SHOAL_BASE"),
        num_var("SHOAL_N"),
        num_var("SHOAL_DELAY_US"),
    );
    let o = Options::default()
        .connect_timeout(5 * SEC)
        .send_timeout(Some(10 * SEC));
    let mut p = NngPusher::connect(&a, &o).await.unwrap();
    say("ready");
    for i in base..base + n {
        p.send(&payload(i)).await.unwrap();
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
    }
    p.flush().await.unwrap();
    say(format!("pushed {n}"));
}

/// Remote puller: says every message it takes; with SHOAL_STALL_AFTER=K
/// stops after K messages with one more pull asked and its answer never
/// taken (so the queue has lent it a message it will never acknowledge),
/// and waits to be killed.
async fn puller_child() {
    let a = addr_var();
    let stall_after = std::env::var("SHOAL_STALL_AFTER")
        .ok()
        .map(|v| v.parse::<u64>().unwrap());
    let o = Options::default().connect_timeout(5 * SEC);
    let mut p = NngPuller::connect(&a, &o).await.unwrap();
    say("ready");
    let mut n = 0u64;
    loop {
        if Some(n) == stall_after {
            let mut pull = std::pin::pin!(p.recv());
            // Polled once: the pull is sent; its answer is never taken.
            std::future::poll_fn(|cx| {
                let _ = pull.as_mut().poll(cx);
                std::task::Poll::Ready(())
            })
            .await;
            say("holding");
            tokio::time::sleep(CHILD_LIMIT).await;
            unreachable!();
        }
        let f = p.recv().await.unwrap();
        check_pushed(&f);
        say(format!("got {}", number(&f)));
        n += 1;
    }
}

fn check_pushed(f: &[u8]) {
    assert_eq!(f, &payload(number(f))[..], "a pushed message changed");
}

/// The binding puller as a child: says every message it takes.
async fn queue_child() {
    let a = addr_var();
    let o = Options::default();
    let mut q = bind_retry(|| NngPuller::bind(&a, &o)).await;
    say("ready");
    loop {
        let f = q.recv().await.unwrap();
        check_pushed(&f);
        say(format!("got {}", number(&f)));
    }
}

/// Replier: answers `re:` + the request; a request `hang` is never
/// answered.
async fn replier_child() {
    let a = addr_var();
    let mut r = bind_retry(|| NngReplier::bind(&a, &Options::default())).await;
    say("ready");
    loop {
        r.serve_one(|req| {
            if &req[..] == b"hang" {
                say("hanging");
                std::thread::sleep(CHILD_LIMIT);
            }
            [&b"re:"[..], req].concat()
        })
        .await
        .unwrap();
    }
}

/// Requester: SHOAL_N requests `TAG-i`, each answer checked.
async fn requester_child() {
    let a = addr_var();
    let (tag, n) = (var("SHOAL_TAG"), num_var("SHOAL_N"));
    let o = Options::default().connect_timeout(5 * SEC);
    let mut r = NngRequester::connect(&a, &o).await.unwrap();
    say("ready");
    for i in 0..n {
        let q = format!("{tag}-{i}");
        let f = r.request(q.as_bytes()).await.unwrap();
        assert_eq!(
            &*f,
            format!("re:{q}").as_bytes(),
            "{tag} got another's reply"
        );
        assert!(f.peer().is_some());
    }
    say(format!("ok {n}"));
}

// ---------------------------------------------------------------------
// Publish/subscribe.

/// A publisher (this process) and two subscriber processes: both get
/// every message in order. Then one stops receiving, holds the publisher
/// back (small capacity), and is killed: the publisher goes on (the dead
/// subscriber was evicted when its connection closed) and the other gets
/// everything, in order, then Closed.
async fn pubsub_kill_a_subscriber(a: Address) {
    const N1: u64 = 300;
    const N: u64 = 800;
    let o = Options::default()
        .capacity(16 << 10)
        .send_timeout(Some(10 * SEC));
    let mut p = NngPublisher::bind(&a, &o).unwrap();
    let a = p.address();
    let e = |stall: &str| {
        env(&[
            ("SHOAL_ADDR", a.to_string()),
            ("SHOAL_N", N.to_string()),
            ("SHOAL_FIRST", N1.to_string()),
            ("SHOAL_STALL", stall.to_string()),
        ])
    };
    let mut s1 = proc::spawn(CHILD, "sub", &e("1"));
    let mut s2 = proc::spawn(CHILD, "sub", &e("0"));
    s1.expect("ready", 10 * SEC).await;
    s2.expect("ready", 10 * SEC).await;
    p.wait_for_subscribers(2, 10 * SEC).await.unwrap();
    for i in 0..N1 {
        p.send(b"t", &payload(i)).await.unwrap();
    }
    s1.expect("stalled", 10 * SEC).await;
    s2.expect("first", 10 * SEC).await;

    let sent = Arc::new(AtomicU64::new(N1));
    let counter = sent.clone();
    let sender = tokio::spawn(async move {
        for i in N1..N {
            p.send(b"t", &payload(i)).await.unwrap();
            counter.store(i + 1, Ordering::SeqCst);
        }
        p
    });
    // The stalled subscriber holds the publisher back: sending stops.
    let mut last = sent.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = sent.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        assert!(
            now < N,
            "the publisher sent everything past a stalled subscriber"
        );
        last = now;
    }
    assert!(last < N, "not held back");
    println!("held back after {last} of {N} messages; killing the stalled subscriber");
    let t0 = Instant::now();
    s1.kill();
    let p = tokio::time::timeout(10 * SEC, sender)
        .await
        .expect("the publisher stayed blocked by a dead subscriber")
        .unwrap();
    println!(
        "the publisher went on and finished {:?} after the kill",
        t0.elapsed()
    );
    drop(p);
    s2.expect("done", 15 * SEC).await;
    s2.wait_success(5 * SEC).await;
}

#[test]
fn pubsub_processes_and_a_killed_slow_subscriber_ipc() {
    let a = common::ipc_addr("pp-sub");
    run(pubsub_kill_a_subscriber(a.clone()));
    remove_ipc(&a);
}

#[test]
fn pubsub_processes_and_a_killed_slow_subscriber_tcp() {
    run(pubsub_kill_a_subscriber(common::tcp_addr("nng+tcp")));
}

/// A subscriber (this process, never rebuilt) of a publisher process that
/// is killed and bound again 2 s later at the same address. Observed: the
/// subscriber's receive reports `PeerGone` (once per connect timeout,
/// 1 s, while nobody is bound), never `Evicted`; once the new publisher
/// is bound the subscriber registers with it by itself at its next poll
/// (which the new publisher waits for) and gets everything it sends, in
/// order, then `Closed`.
async fn pubsub_publisher_restarts(a: Address) {
    let e = |gen: u8| {
        env(&[
            ("SHOAL_ADDR", a.to_string()),
            ("SHOAL_GEN", gen.to_string()),
            ("SHOAL_N", "10".into()),
        ])
    };
    let mut p1 = proc::spawn(CHILD, "pub", &e(1));
    p1.expect("bound", 10 * SEC).await;
    let o = Options::default().connect_timeout(SEC);
    let mut s = NngSubscriber::connect(&a, &o).await.unwrap();
    for i in 0..10u8 {
        let f = tokio::time::timeout(5 * SEC, s.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*f, &[1, i]);
    }
    p1.expect("sent", 5 * SEC).await;
    p1.kill();
    let killed = Instant::now();
    // Receive through the gap and the restart.
    let reader = tokio::spawn(async move {
        let mut errors = Vec::new();
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(15 * SEC, s.recv()).await {
                Err(_) => panic!("no message, error or close within 15 s (got {got:?})"),
                Ok(Ok(f)) => got.push(f.to_vec()),
                Ok(Err(Error::Closed)) => break,
                Ok(Err(e)) => errors.push((killed.elapsed(), e.to_string())),
            }
        }
        (got, errors)
    });
    tokio::time::sleep(2 * SEC).await;
    let mut p2 = proc::spawn(CHILD, "pub", &e(2));
    p2.expect("registered", 10 * SEC).await;
    let (got, errors) = reader.await.unwrap();
    println!("between the kill and the new publisher's messages: {errors:?}");
    assert_eq!(
        got,
        (0..10u8).map(|i| vec![2, i]).collect::<Vec<_>>(),
        "the new publisher's messages, all and in order"
    );
    assert!(
        !errors.is_empty() && errors.iter().all(|(_, e)| e.contains("is gone")),
        "expected PeerGone while nothing was bound for 2 s: {errors:?}"
    );
    p2.tell("exit");
    p2.wait_success(5 * SEC).await;
}

#[test]
fn pubsub_a_subscriber_follows_a_restarted_publisher_ipc() {
    let a = common::ipc_addr("pp-restart");
    run(pubsub_publisher_restarts(a.clone()));
    remove_ipc(&a);
}

#[test]
fn pubsub_a_subscriber_follows_a_restarted_publisher_tcp() {
    run(pubsub_publisher_restarts(common::tcp_addr("nng+tcp")));
}

// ---------------------------------------------------------------------
// Push/pull.

/// Message numbers taken, by whom.
#[derive(Default)]
struct Takes {
    by: BTreeMap<&'static str, Vec<u64>>,
}

impl Takes {
    fn add(&mut self, who: &'static str, n: u64) {
        self.by.entry(who).or_default().push(n);
    }
    fn all(&self) -> BTreeSet<u64> {
        self.by.values().flatten().copied().collect()
    }
    fn of(&self, who: &str) -> &[u64] {
        self.by.get(who).map(|v| &v[..]).unwrap_or(&[])
    }
    fn counts(&self) -> Vec<(&'static str, usize)> {
        self.by.iter().map(|(k, v)| (*k, v.len())).collect()
    }
}

/// Reads `child`'s `got N` lines into `takes` as `who` (other lines are
/// returned).
fn took(line: Option<String>, who: &'static str, takes: &mut Takes) -> Option<String> {
    let l = line?;
    match l.strip_prefix("got ") {
        Some(n) => {
            takes.add(who, n.parse().unwrap());
            None
        }
        None => Some(l),
    }
}

/// The binding puller of this process taking messages on a task, a
/// little slower than it could so remote pullers get their share.
fn local_puller(mut q: NngPuller) -> tokio::sync::mpsc::UnboundedReceiver<u64> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let n = {
                let f = q.recv().await.unwrap();
                check_pushed(&f);
                number(&f)
            };
            if tx.send(n).is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    });
    rx
}

fn pushers(a: &Address, n: u64, delay_us: u64) -> Vec<Child> {
    (0..2u64)
        .map(|k| {
            proc::spawn(
                CHILD,
                "pusher",
                &env(&[
                    ("SHOAL_ADDR", a.to_string()),
                    ("SHOAL_BASE", (k * n).to_string()),
                    ("SHOAL_N", n.to_string()),
                    ("SHOAL_DELAY_US", delay_us.to_string()),
                ]),
            )
        })
        .collect()
}

/// Two pusher processes, a remote puller process and the binding puller
/// (this process): every message is taken exactly once.
async fn pushpull_once(a: Address) {
    const N: u64 = 500;
    let o = Options::default().capacity(64 << 10);
    let q = NngPuller::bind(&a, &o).unwrap();
    let a = q.address();
    let mut mine = local_puller(q);
    let mut remote = proc::spawn(CHILD, "puller", &env(&[("SHOAL_ADDR", a.to_string())]));
    remote.expect("ready", 10 * SEC).await;
    let mut push = pushers(&a, N, 100);
    let mut takes = Takes::default();
    let want: BTreeSet<u64> = (0..2 * N).collect();
    let deadline = Instant::now() + 20 * SEC;
    while takes.all() != want {
        assert!(Instant::now() < deadline, "lost: {:?}", takes.counts());
        tokio::select! {
            n = mine.recv() => takes.add("binder", n.unwrap()),
            l = remote.next(SEC) => { took(l, "remote", &mut takes); }
        }
    }
    for p in &mut push {
        p.expect("pushed", 5 * SEC).await;
        p.wait_success(5 * SEC).await;
    }
    // Anything taken twice would show up now.
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        tokio::select! {
            n = mine.recv() => takes.add("binder", n.unwrap()),
            l = remote.next(Duration::from_millis(50)) => { took(l, "remote", &mut takes); }
        }
    }
    let total: usize = takes.counts().iter().map(|c| c.1).sum();
    println!("taken: {:?}", takes.counts());
    assert_eq!(total, (2 * N) as usize, "a message was taken twice");
    assert!(
        !takes.of("remote").is_empty(),
        "the remote puller took nothing"
    );
    assert!(
        !takes.of("binder").is_empty(),
        "the binding puller took nothing"
    );
}

#[test]
fn pushpull_each_message_taken_once_across_processes_ipc() {
    let a = common::ipc_addr("pp-once");
    run(pushpull_once(a.clone()));
    remove_ipc(&a);
}

#[test]
fn pushpull_each_message_taken_once_across_processes_tcp() {
    run(pushpull_once(common::tcp_addr("nng+tcp")));
}

/// As above with two remote pullers, one of which is killed while the
/// queue has lent it a message it never acknowledged: that message goes
/// back to the queue when its connection closes, so what the survivors
/// took plus what the killed one took covers everything. Only what the
/// killed puller took may also reach a survivor (documented: an
/// acknowledgement lost with a connection).
async fn pushpull_kill_a_puller(a: Address) {
    const N: u64 = 600;
    let o = Options::default().capacity(64 << 10);
    let q = NngPuller::bind(&a, &o).unwrap();
    let a = q.address();
    let mut mine = local_puller(q);
    let mut doomed = proc::spawn(
        CHILD,
        "puller",
        &env(&[
            ("SHOAL_ADDR", a.to_string()),
            ("SHOAL_STALL_AFTER", "40".into()),
        ]),
    );
    let mut other = proc::spawn(CHILD, "puller", &env(&[("SHOAL_ADDR", a.to_string())]));
    doomed.expect("ready", 10 * SEC).await;
    other.expect("ready", 10 * SEC).await;
    let mut push = pushers(&a, N, 300);
    let mut takes = Takes::default();
    let want: BTreeSet<u64> = (0..2 * N).collect();
    let deadline = Instant::now() + 20 * SEC;
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    while takes.all() != want || !killed {
        assert!(
            Instant::now() < deadline,
            "lost {} messages: {:?}",
            want.difference(&takes.all()).count(),
            takes.counts()
        );
        if kill_at.is_some_and(|t| Instant::now() >= t) && !killed {
            doomed.kill();
            killed = true;
            println!("killed a puller after {:?}", takes.counts());
        }
        tokio::select! {
            n = mine.recv() => takes.add("binder", n.unwrap()),
            l = other.next(SEC) => { took(l, "other", &mut takes); }
            l = doomed.next(SEC), if !killed => {
                if took(l, "killed", &mut takes).is_some_and(|l| l == "holding") {
                    // Its last pull has been answered by then.
                    kill_at = Some(Instant::now() + Duration::from_millis(200));
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    for p in &mut push {
        p.expect("pushed", 10 * SEC).await;
        p.wait_success(5 * SEC).await;
    }
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        tokio::select! {
            n = mine.recv() => takes.add("binder", n.unwrap()),
            l = other.next(Duration::from_millis(50)) => { took(l, "other", &mut takes); }
        }
    }
    println!("taken: {:?}", takes.counts());
    let survivors: Vec<u64> = takes
        .of("binder")
        .iter()
        .chain(takes.of("other"))
        .copied()
        .collect();
    let unique: BTreeSet<u64> = survivors.iter().copied().collect();
    assert_eq!(
        unique.len(),
        survivors.len(),
        "survivors took a message twice"
    );
    let killed_took: BTreeSet<u64> = takes.of("killed").iter().copied().collect();
    assert_eq!(killed_took.len(), 40);
    let twice = killed_took.intersection(&unique).count();
    println!("taken by the killed puller and again by a survivor: {twice}");
    assert_eq!(takes.all(), want);
}

#[test]
fn pushpull_a_killed_puller_loses_nothing_ipc() {
    let a = common::ipc_addr("pp-kill");
    run(pushpull_kill_a_puller(a.clone()));
    remove_ipc(&a);
}

#[test]
fn pushpull_a_killed_puller_loses_nothing_tcp() {
    run(pushpull_kill_a_puller(common::tcp_addr("nng+tcp")));
}

/// A pusher (this process, never rebuilt) whose queue process is killed
/// and bound again at the same address: the messages it sends after the
/// kill reach the new queue, each once.
async fn pusher_follows_a_restarted_queue(a: Address) {
    let e = env(&[("SHOAL_ADDR", a.to_string())]);
    let mut q1 = proc::spawn(CHILD, "queue", &e);
    q1.expect("ready", 10 * SEC).await;
    let o = Options::default()
        .connect_timeout(2 * SEC)
        .send_timeout(Some(5 * SEC));
    let mut p = NngPusher::connect(&a, &o).await.unwrap();
    for i in 0..10 {
        p.send(&payload(i)).await.unwrap();
    }
    for i in 0..10 {
        assert_eq!(q1.expect("got", 5 * SEC).await, format!("got {i}"));
    }
    // Acknowledged before the kill: a message the first queue took but
    // had not acknowledged yet is sent again to the next one (its taking
    // died with it), which this test would count as a duplicate.
    p.flush().await.unwrap();
    q1.kill();
    // Keep sending while nothing is bound; the new queue comes up 300 ms
    // later.
    let sender = tokio::spawn(async move {
        let mut errors = Vec::new();
        for i in 10..40 {
            loop {
                match p.send(&payload(i)).await {
                    Ok(()) => break,
                    Err(e @ (Error::PeerGone { .. } | Error::Timeout { .. })) => {
                        errors.push(e.to_string())
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        errors
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut q2 = proc::spawn(CHILD, "queue", &e);
    q2.expect("ready", 10 * SEC).await;
    let errors = tokio::time::timeout(15 * SEC, sender)
        .await
        .expect("the pusher did not reach the new queue")
        .unwrap();
    println!("pusher errors while nothing was bound: {errors:?}");
    for i in 10..40 {
        assert_eq!(q2.expect("got", 5 * SEC).await, format!("got {i}"));
    }
    assert!(
        q2.next(Duration::from_millis(300)).await.is_none(),
        "a message arrived twice"
    );
}

#[test]
fn pushpull_a_pusher_follows_a_restarted_queue_ipc() {
    let a = common::ipc_addr("pp-requeue");
    run(pusher_follows_a_restarted_queue(a.clone()));
    remove_ipc(&a);
}

#[test]
fn pushpull_a_pusher_follows_a_restarted_queue_tcp() {
    run(pusher_follows_a_restarted_queue(common::tcp_addr(
        "nng+tcp",
    )));
}

// ---------------------------------------------------------------------
// Request/reply.

/// A replier process, two requester processes and this one asking at
/// once: each gets its own replies. Then the replier is killed while it
/// holds a request: that request ends with PeerGone within the connect
/// timeout (1 s, plus the 250 ms the requester looks at its connection),
/// not a hang.
async fn reqrep_processes_and_a_killed_replier(a: Address) {
    let mut rep = proc::spawn(CHILD, "replier", &env(&[("SHOAL_ADDR", a.to_string())]));
    rep.expect("ready", 10 * SEC).await;
    let mut askers: Vec<Child> = ["left", "right"]
        .iter()
        .map(|tag| {
            proc::spawn(
                CHILD,
                "requester",
                &env(&[
                    ("SHOAL_ADDR", a.to_string()),
                    ("SHOAL_TAG", tag.to_string()),
                    ("SHOAL_N", "300".into()),
                ]),
            )
        })
        .collect();
    let o = Options::default().connect_timeout(SEC);
    let mut r = NngRequester::connect(&a, &o).await.unwrap();
    for i in 0..300 {
        let q = format!("parent-{i}");
        let f = r.request(q.as_bytes()).await.unwrap();
        assert_eq!(&*f, format!("re:{q}").as_bytes());
    }
    for c in &mut askers {
        c.expect("ok", 10 * SEC).await;
        c.wait_success(5 * SEC).await;
    }
    let pending = tokio::spawn(async move {
        let t0 = Instant::now();
        let r = r.request(b"hang").await.map(|f| f.to_vec());
        (r, t0)
    });
    rep.expect("hanging", 5 * SEC).await;
    let killed = Instant::now();
    rep.kill();
    let (res, _) = tokio::time::timeout(10 * SEC, pending)
        .await
        .expect("a request to a killed replier hung")
        .unwrap();
    let after = killed.elapsed();
    println!("pending request ended {after:?} after the kill: {res:?}");
    assert!(matches!(res, Err(Error::PeerGone { .. })), "{res:?}");
    assert!(
        after < SEC + Duration::from_millis(1500),
        "PeerGone took {after:?}"
    );
}

#[test]
fn reqrep_processes_and_a_killed_replier_ipc() {
    let a = common::ipc_addr("pp-rr");
    run(reqrep_processes_and_a_killed_replier(a.clone()));
    remove_ipc(&a);
}

#[test]
fn reqrep_processes_and_a_killed_replier_tcp() {
    run(reqrep_processes_and_a_killed_replier(common::tcp_addr(
        "nng+tcp",
    )));
}

/// A pusher's sends return once in its window; a queue that is gone is
/// reported by `flush` (and by the sends after it), within the connect
/// timeout, and nothing waits for ever.
#[test]
fn a_pusher_whose_queue_is_gone_says_so_at_flush() {
    run(async {
        let a = common::tcp_addr("nng+tcp");
        let o = Options::default()
            .connect_timeout(SEC)
            .stall_timeout(2 * SEC);
        let mut q = NngPuller::bind(&a, &o).unwrap();
        let mut p = NngPusher::connect(&a, &o).await.unwrap();
        p.send(b"one").await.unwrap();
        p.flush().await.unwrap();
        assert_eq!(&q.recv().await.unwrap()[..], b"one");
        drop(q);
        p.send(b"two").await.unwrap();
        let t0 = std::time::Instant::now();
        let e = tokio::time::timeout(10 * SEC, p.flush())
            .await
            .expect("flush waited for ever")
            .unwrap_err();
        assert!(matches!(e, Error::PeerGone { .. }), "{e}");
        assert!(t0.elapsed() < 5 * SEC, "{:?}", t0.elapsed());
        // The window is kept: a queue bound again gets what was left.
        let mut q = NngPuller::bind(&a, &o).unwrap();
        let f = tokio::time::timeout(10 * SEC, q.recv())
            .await
            .expect("the kept message never came")
            .unwrap();
        assert_eq!(&f[..], b"two");
        p.flush().await.unwrap();
    });
}
