//! Hostile peers against the nng backend's listeners on tcp (issue 7
//! item 6): an nng publisher, an nng queue (the binding puller) and an
//! nng replier, each serving a well-behaved client of its own while raw
//! TCP peers send random bytes, a length prefix of 4 GiB or more, a
//! truncated frame and then nothing, nothing at all, well-framed messages
//! whose bodies are wrong in every way the backend checks, or valid
//! questions, many at once, whose answers they never read.
//!
//! For every attack: nothing panics, memory stays bounded, the bad peer's
//! connection is dropped where the code says so, and the well-behaved
//! client keeps at least half the rate it had without attackers (windows
//! of 0.6 s, attack threads throttled so they load the listener, not the
//! machine). The exception is the one the design makes (DESIGN.md:
//! pub/sub delivers everything; `pubsub.rs`: a subscriber that is alive
//! but does not read holds the publisher back until its send timeout): a
//! registered subscriber that asks as a subscriber does, once, and then
//! stops reading stops the publisher, so there the test asserts the send
//! timeout instead, and that the publisher recovers at once when that
//! subscriber's connection closes.
#![cfg(feature = "nng")]

mod common;

use common::sp::{self, control, op, with_envelope, Sp};
use common::{rt, SEC};
use shoal_transport::{
    Kind, NngPublisher, NngPuller, NngPusher, NngReplier, NngRequester, NngSubscriber, Options,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One measuring window.
const WINDOW: Duration = Duration::from_millis(600);
/// Largest payload the queue and the replier take.
const MAX: usize = 1 << 20;
/// nng's receive limit above it (`sock::OVERHEAD`).
const OVERHEAD: usize = 64 * 1024;
/// The publisher's receive limit (it takes only small questions).
const PUB_LIMIT: usize = 1024 + OVERHEAD;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics on any thread (an nng task that panicked would
/// otherwise die silently inside the runtime).
fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
}

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Publisher,
    Queue,
    Replier,
}

impl Target {
    /// nng's receive limit at this listener.
    fn limit(self) -> usize {
        match self {
            Target::Publisher => PUB_LIMIT,
            _ => MAX + OVERHEAD,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    /// (a) random bytes instead of a handshake: dropped.
    RandomBytes,
    /// (b) a handshake, then a length prefix of 4 GiB or more (or just
    /// past the limit): dropped.
    HugeLength,
    /// (c) a handshake, then part of a frame, then nothing: held (nng
    /// waits for the rest), costs a connection.
    Truncated,
    /// (d) connect and send nothing: nng drops it after its 10 s
    /// handshake timeout (`silent_peers_are_dropped_...`).
    Silent,
    /// Well-framed messages with bodies that are wrong: dropped.
    BadBodies,
    /// (e) valid questions, many at once, answers never read (for the
    /// publisher: a registered subscriber's polls): dropped once the
    /// peer asks more at once than a shoal endpoint does, or leaves
    /// answers unread.
    NoRead,
}

const ATTACKS: [Attack; 6] = [
    Attack::RandomBytes,
    Attack::HugeLength,
    Attack::Truncated,
    Attack::Silent,
    Attack::BadBodies,
    Attack::NoRead,
];

/// A small deterministic random generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// What the attackers saw.
#[derive(Default)]
struct Seen {
    connections: AtomicU64,
    /// Connections the listener dropped as it should.
    dropped: AtomicU64,
    /// Bad peers the listener kept though the code says it drops them.
    failures: Mutex<Vec<String>>,
}

impl Seen {
    fn fail(&self, what: String) {
        let mut f = self.failures.lock().unwrap();
        if f.len() < 20 {
            f.push(what);
        }
    }
    /// Expects `c` to be dropped after `what`.
    fn expect_drop(&self, c: &mut Sp, what: &str) {
        if c.closed_within(2 * SEC) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            self.fail(format!("kept a peer that sent {what}"));
        }
    }
}

/// Well-framed bodies that are wrong for `target`, named.
fn bad_bodies(target: Target) -> Vec<(&'static str, Vec<u8>)> {
    let good_push = with_envelope(control(op::PUSH, 7, 0, 1), Kind::Message, b"x", 7);
    let good_ask = with_envelope(control(op::ASK, 7, 0, 0), Kind::Request, b"x", 7);
    let mut v: Vec<(&'static str, Vec<u8>)> = vec![
        ("an empty body", vec![]),
        ("random bytes", Rng(99).bytes(200)),
        (
            "a truncated control block",
            control(op::HELLO, 1, 0, 0)[..20].to_vec(),
        ),
        ("a bad magic", {
            let mut c = control(op::HELLO, 1, 0, 0);
            c[0] = b'X';
            c
        }),
        ("a bad version", {
            let mut c = control(op::HELLO, 1, 0, 0);
            c[4] = 1;
            c
        }),
        ("op 0", control(0, 1, 0, 0)),
        ("op 200", control(200, 1, 0, 0)),
        ("reserved bytes set", {
            let mut c = control(op::HELLO, 1, 0, 0);
            c[6] = 1;
            c
        }),
        ("padding bytes set", {
            let mut c = control(op::HELLO, 1, 0, 0);
            c[40] = 1;
            c
        }),
    ];
    let envelope_lies = |good: &Vec<u8>, kind_wrong: Kind| -> Vec<(&'static str, Vec<u8>)> {
        let ctl = good[..44].to_vec();
        vec![
            ("no envelope", ctl.clone()),
            ("an envelope cut short", good[..good.len() - 8].to_vec()),
            ("a body length past the end", {
                let mut m = good.clone();
                m[44..48].copy_from_slice(&4096u32.to_le_bytes());
                m
            }),
            ("a body length of 4 GiB - 16", {
                let mut m = good.clone();
                m[44..48].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
                m
            }),
            ("two envelopes where one goes", {
                let mut m = good.clone();
                m.extend_from_slice(&good[44..]);
                m
            }),
            (
                "the wrong envelope kind",
                with_envelope(ctl.clone(), kind_wrong, b"x", 7),
            ),
            ("a topic longer than the body", {
                let mut m = good.clone();
                m[38..40].copy_from_slice(&1000u16.to_le_bytes());
                m
            }),
            ("a payload over the limit (header only)", {
                let mut m = ctl.clone();
                let h = shoal_transport::Header::new(Kind::Message, b"", MAX + 1, 7).unwrap();
                m.extend_from_slice(&h.encode());
                m
            }),
        ]
    };
    match target {
        Target::Publisher => {
            v.push(("a push", good_push));
            v.push(("an ask", good_ask));
            v.push(("a pull", control(op::PULL, 1, 0, 0)));
            v.push(("an answer", control(op::ANSWER, 1, 0, 0)));
        }
        Target::Queue => {
            v.push(("a hello", control(op::HELLO, 1, 0, 0)));
            v.push(("an ask", good_ask));
            v.extend(envelope_lies(&good_push, Kind::Request));
        }
        Target::Replier => {
            v.push(("a hello", control(op::HELLO, 1, 0, 0)));
            v.push(("a push", good_push));
            v.push(("a poll", control(op::POLL, 1, 0, 0)));
            v.extend(envelope_lies(&good_ask, Kind::Message));
        }
    }
    v
}

/// Runs `attack` against `target` at `addr` on threads of its own until
/// `stop`.
fn spawn_attack(
    attack: Attack,
    target: Target,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
) -> Vec<std::thread::JoinHandle<()>> {
    let threads = match attack {
        Attack::RandomBytes | Attack::HugeLength | Attack::BadBodies => 2,
        _ => 1,
    };
    (0..threads)
        .map(|t| {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || attack_loop(attack, target, addr, t, &stop, &seen))
        })
        .collect()
}

fn attack_loop(
    attack: Attack,
    target: Target,
    addr: SocketAddr,
    thread: u64,
    stop: &AtomicBool,
    seen: &Seen,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((thread + 1) * 7919));
    // Connections an attack keeps open (held until the attack stops).
    let mut held: Vec<Sp> = Vec::new();
    let pause = || std::thread::sleep(Duration::from_millis(5));
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        match attack {
            Attack::RandomBytes => {
                let Ok(mut c) = Sp::raw(addr) else { continue };
                seen.connections.fetch_add(1, Ordering::Relaxed);
                let n = 1 + (rng.next() % 4096) as usize;
                let mut b = rng.bytes(n);
                if b.len() >= 2 {
                    b[1] = b'X'; // never a valid handshake by chance
                }
                use std::io::Write;
                if c.s.write_all(&b).is_ok() && b.len() >= 8 {
                    seen.expect_drop(&mut c, "random bytes");
                }
                pause();
            }
            Attack::HugeLength => {
                let Ok(mut c) = Sp::req(addr) else { continue };
                seen.connections.fetch_add(1, Ordering::Relaxed);
                let len: u64 = match round % 4 {
                    0 => 1 << 32,
                    1 => u64::MAX,
                    2 => 1 << 40,
                    _ => target.limit() as u64 + 1,
                };
                use std::io::Write;
                let mut m = len.to_be_bytes().to_vec();
                m.extend_from_slice(&[0x80, 0, 0, 1, 0, 0]);
                if c.s.write_all(&m).is_ok() {
                    seen.expect_drop(&mut c, &format!("a {len}-byte length prefix"));
                }
                pause();
            }
            Attack::Truncated => {
                if held.len() < 32 {
                    if let Ok(mut c) = Sp::req(addr) {
                        seen.connections.fetch_add(1, Ordering::Relaxed);
                        use std::io::Write;
                        // The longest frame nng takes, and 100 bytes of it.
                        let mut m = (target.limit() as u64).to_be_bytes().to_vec();
                        m.extend_from_slice(&[0x80, 0, 0, 1]);
                        m.extend_from_slice(&[0u8; 96]);
                        let _ = c.s.write_all(&m);
                        held.push(c);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Attack::Silent => {
                if held.len() < 32 {
                    if let Ok(c) = Sp::raw(addr) {
                        seen.connections.fetch_add(1, Ordering::Relaxed);
                        held.push(c);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Attack::BadBodies => {
                let bodies = bad_bodies(target);
                let (what, body) = &bodies[(round as usize * 2 + thread as usize) % bodies.len()];
                let Ok(mut c) = Sp::req(addr) else { continue };
                seen.connections.fetch_add(1, Ordering::Relaxed);
                if c.request(rng.next() as u32, body).is_ok() {
                    seen.expect_drop(&mut c, what);
                }
                pause();
            }
            Attack::NoRead => {
                if held.len() < 4 {
                    if let Ok(c) = no_read_peer(target, addr, &mut rng, 8) {
                        seen.connections.fetch_add(1, Ordering::Relaxed);
                        held.push(c);
                    }
                }
                // Keep asking on the held connections, reading nothing:
                // big answers (the replier echoes), or many questions at
                // once that the queue holds while it has nothing to give.
                for c in &mut held {
                    let _ = c.s.set_write_timeout(Some(Duration::from_millis(50)));
                    let (q, n) = match target {
                        Target::Publisher => (control(op::POLL, 0, 0, 0), 1),
                        Target::Queue => (control(op::PULL, 1, 0, 1000), 40),
                        Target::Replier => (
                            with_envelope(
                                control(op::ASK, 7, 0, 0),
                                Kind::Request,
                                &vec![7u8; 256 << 10],
                                7,
                            ),
                            1,
                        ),
                    };
                    for _ in 0..n {
                        let _ = c.request(rng.next() as u32, &q);
                    }
                }
                // Connections the listener dropped (it does, for a peer
                // that asks more at once than a shoal endpoint, or leaves
                // answers unread) are replaced.
                held.retain(|c| {
                    let gone = c.hung_up();
                    if gone {
                        seen.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    !gone
                });
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A peer that asks valid questions and never reads; for the publisher,
/// registered as a subscriber and then `polls` polls from cursor 0 at
/// once (acknowledging nothing).
fn no_read_peer(
    target: Target,
    addr: SocketAddr,
    rng: &mut Rng,
    polls: u32,
) -> std::io::Result<Sp> {
    let mut c = Sp::req(addr)?;
    if target == Target::Publisher {
        let id = rng.next() | 1;
        c.request(1, &control(op::HELLO, id, 0, 0))?;
        // Registered before it polls (the one answer it reads).
        let welcome = c.recv(1024, 2 * SEC)?;
        if sp::parse_control(&welcome[4..]).map(|w| w.0) != Some(2) {
            return Err(std::io::Error::other("no welcome"));
        }
        for k in 0..polls {
            c.request(2 + k, &control(op::POLL, id, 0, 0))?;
        }
    }
    Ok(c)
}

/// The listener under test with its well-behaved client running, counting
/// what the client gets done.
struct Served {
    addr: SocketAddr,
    done: Arc<AtomicU64>,
    /// Sends that ended with a timeout (the publisher, the pusher).
    timeouts: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn serve(target: Target) -> Served {
    let a = common::tcp_addr("nng+tcp");
    let done = Arc::new(AtomicU64::new(0));
    let timeouts = Arc::new(AtomicU64::new(0));
    let (d, to) = (done.clone(), timeouts.clone());
    let o = Options::default()
        .max_message(MAX)
        .capacity(256 << 10)
        .send_timeout(Some(SEC / 2))
        .stall_timeout(3 * SEC)
        .connect_timeout(5 * SEC);
    let tasks = match target {
        Target::Publisher => {
            let mut p = NngPublisher::bind(&a, &o).unwrap();
            let mut s = NngSubscriber::connect(&a, &o).await.unwrap();
            p.wait_for_subscribers(1, 5 * SEC).await.unwrap();
            vec![
                tokio::spawn(async move {
                    loop {
                        if p.send(b"t", &[5u8; 256]).await.is_err() {
                            to.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }),
                tokio::spawn(async move {
                    loop {
                        match s.recv().await {
                            Ok(f) => assert_eq!(f.len(), 256),
                            // The publisher's task was aborted first.
                            Err(shoal_transport::Error::Closed) => return,
                            Err(e) => panic!("the good subscriber: {e}"),
                        }
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                }),
            ]
        }
        Target::Queue => {
            let mut q = NngPuller::bind(&a, &o).unwrap();
            let mut p = NngPusher::connect(&a, &o).await.unwrap();
            vec![
                tokio::spawn(async move {
                    loop {
                        let f = q.recv().await.unwrap();
                        assert_eq!(f.len(), 256);
                    }
                }),
                tokio::spawn(async move {
                    loop {
                        match p.send(&[5u8; 256]).await {
                            Ok(()) => d.fetch_add(1, Ordering::Relaxed),
                            Err(_) => to.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }),
            ]
        }
        Target::Replier => {
            let mut r = NngReplier::bind(&a, &o).unwrap();
            let mut q = NngRequester::connect(&a, &o).await.unwrap();
            vec![
                tokio::spawn(async move {
                    loop {
                        r.serve_one(|req| req.to_vec()).await.unwrap();
                    }
                }),
                tokio::spawn(async move {
                    loop {
                        let f = q.request(&[5u8; 256]).await.unwrap();
                        assert_eq!(f.len(), 256);
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                }),
            ]
        }
    };
    let addr = sp::socket_addr(&a);
    Served {
        addr,
        done,
        timeouts,
        tasks,
    }
}

/// What the well-behaved client gets done per second over one window.
async fn rate(s: &Served) -> f64 {
    let t0 = Instant::now();
    let n0 = s.done.load(Ordering::Relaxed);
    tokio::time::sleep(WINDOW).await;
    let n1 = s.done.load(Ordering::Relaxed);
    (n1 - n0) as f64 / t0.elapsed().as_secs_f64()
}

/// Runs `attacks` at once against `s` for one window after a short
/// start; the client's rate meanwhile and what the attackers saw.
async fn under_attack(target: Target, s: &Served, attacks: &[Attack]) -> (f64, Arc<Seen>) {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let threads: Vec<_> = attacks
        .iter()
        .flat_map(|&k| spawn_attack(k, target, s.addr, stop.clone(), seen.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = rate(s).await;
    stop.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || {
        for t in threads {
            t.join().unwrap();
        }
    })
    .await
    .unwrap();
    (r, seen)
}

/// Every attack in turn, then all at once, against `target`: the ratio
/// of the client's rate under attack to its rate without (the slower of
/// the windows just before and after, which absorbs other tests' load on
/// this 2-core machine) must be at least 0.5 in one of three windows.
fn hostile(target: Target) {
    count_panics();
    rt().block_on(async {
        tokio::time::timeout(80 * SEC, async {
            let s = serve(target).await;
            // Warm up, then settle the baseline.
            let _ = rate(&s).await;
            let rss0 = rss();
            let mut report = Vec::new();
            let mut failures = Vec::new();
            // A registered subscriber that leaves its answers unread holds
            // a publisher back by design: tested on its own below.
            let attacks: Vec<Attack> = ATTACKS
                .iter()
                .copied()
                .filter(|&a| !(target == Target::Publisher && a == Attack::NoRead))
                .collect();
            let mut plan: Vec<Vec<Attack>> = attacks.iter().map(|&a| vec![a]).collect();
            plan.push(attacks);
            let mut before = rate(&s).await;
            for attacks in plan {
                let name = if attacks.len() == 1 {
                    format!("{:?}", attacks[0])
                } else {
                    "all at once".into()
                };
                // A window this machine's other load slowed is measured
                // again (twice at most): an attack that really holds the
                // client below half its rate does so every time.
                // The rate before the first window is the baseline of every
                // attempt (one measured between attempts could be one the
                // attack had lastingly lowered).
                let base = before;
                for attempt in 0..3 {
                    let (r, seen) = under_attack(target, &s, &attacks).await;
                    let after = rate(&s).await;
                    let normal = base.min(after).max(1.0);
                    let ratio = r / normal;
                    let line = format!(
                        "{target:?} {name}: {r:.0}/s under attack vs {base:.0}/s before, {after:.0}/s after: ratio {ratio:.2}; {} connections, {} dropped",
                        seen.connections.load(Ordering::Relaxed),
                        seen.dropped.load(Ordering::Relaxed),
                    );
                    println!("{line}");
                    report.push(line);
                    for f in seen.failures.lock().unwrap().iter() {
                        failures.push(format!("{name}: {f}"));
                    }
                    before = after;
                    if ratio >= 0.5 || attempt == 2 {
                        if ratio < 0.5 {
                            failures.push(format!("{name}: ratio {ratio:.2} three times"));
                        }
                        if attacks == [Attack::NoRead] && seen.dropped.load(Ordering::Relaxed) == 0
                        {
                            failures.push(format!("{name}: no connection dropped"));
                        }
                        break;
                    }
                }
            }
            let grown = rss().saturating_sub(rss0);
            println!("{target:?}: resident memory grew {} KiB over the attacks", grown >> 10);
            assert!(grown < 128 << 20, "memory grew {} MiB", grown >> 20);
            assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
            assert!(failures.is_empty(), "{failures:#?}\n{report:#?}");
            drop(s);
        })
        .await
        .expect("the hostile test hung");
    });
}

#[test]
fn hostile_peers_against_a_publisher() {
    hostile(Target::Publisher);
}

#[test]
fn hostile_peers_against_a_queue() {
    hostile(Target::Queue);
}

#[test]
fn hostile_peers_against_a_replier() {
    hostile(Target::Replier);
}

/// (e) against the publisher, as the design has it: a registered
/// subscriber that stops reading holds the publisher back (nothing is
/// dropped for a live subscriber), so sends end with Timeout after the
/// send timeout rather than hang, memory stays within the capacity, and
/// once that subscriber's connection closes the publisher goes on at
/// once at its normal rate. One that asks more at once than a subscriber
/// does is dropped at once, and so is a connection that registers a
/// second subscriber (the table of subscribers stays bounded).
#[test]
fn a_subscriber_that_stops_reading_holds_the_publisher_back_until_it_goes() {
    count_panics();
    rt().block_on(async {
        tokio::time::timeout(20 * SEC, async {
            let s = serve(Target::Publisher).await;
            let _ = rate(&s).await;
            let normal = rate(&s).await;
            let rss0 = rss();
            let mut rng = Rng(5);
            let peer = no_read_peer(Target::Publisher, s.addr, &mut rng, 1).unwrap();
            let t0 = Instant::now();
            // Held back: the sends time out (send timeout 0.5 s).
            while s.timeouts.load(Ordering::Relaxed) == 0 {
                assert!(t0.elapsed() < 5 * SEC, "the publisher was not held back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let held = rate(&s).await;
            println!(
                "publisher: {normal:.0}/s normally, {held:.0}/s while a registered subscriber reads nothing ({} sends timed out)",
                s.timeouts.load(Ordering::Relaxed)
            );
            let grown = rss().saturating_sub(rss0);
            assert!(grown < 32 << 20, "memory grew {} MiB", grown >> 20);
            // It goes: the publisher evicts it and goes on.
            peer.s.shutdown(std::net::Shutdown::Both).unwrap();
            drop(peer);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let after = rate(&s).await;
            println!("publisher: {after:.0}/s once it hung up");
            assert!(after >= 0.5 * normal, "{after:.0}/s vs {normal:.0}/s");

            // A registered subscriber that asks more at once than one does
            // (polls held while there is nothing new) is dropped, and does
            // not hold the publisher's contexts.
            let idle = common::tcp_addr("nng+tcp");
            let mut p = NngPublisher::bind(&idle, &Options::default()).unwrap();
            let mut greedy = no_read_peer(Target::Publisher, sp::socket_addr(&idle), &mut rng, 8)
                .unwrap();
            assert!(
                greedy.closed_within(2 * SEC),
                "a peer with 8 polls at once was kept"
            );
            // One connection registering a second subscriber is dropped
            // (and its first is evicted with it).
            let mut two = Sp::req(sp::socket_addr(&idle)).unwrap();
            for (k, id) in [11u64, 12].into_iter().enumerate() {
                two.request(k as u32, &control(op::HELLO, id, 0, 0)).unwrap();
                if k == 0 {
                    two.recv(1024, 2 * SEC).unwrap();
                }
            }
            assert!(
                two.closed_within(2 * SEC),
                "a connection registering two subscribers was kept"
            );
            let o = Options::default().connect_timeout(2 * SEC);
            let mut good = NngSubscriber::connect(&idle, &o).await.unwrap();
            p.wait_for_subscribers(1, 2 * SEC).await.unwrap();
            p.send(b"", b"still serving").await.unwrap();
            let f = tokio::time::timeout(2 * SEC, good.recv()).await.unwrap().unwrap();
            assert_eq!(&*f, b"still serving");
            assert_eq!(PANICS.load(Ordering::SeqCst), 0);
        })
        .await
        .expect("hung");
    });
}

/// (d) A peer that connects and sends nothing is dropped by nng's 10 s
/// handshake timeout (nng's tcp transport). One that completes the
/// handshake and then sends nothing is dropped by the listener's idle
/// reaper after the stall timeout (a queue here; a replier does not reap,
/// since its requesters wait silently for slow answers).
#[test]
fn silent_peers_are_dropped_before_and_after_the_handshake() {
    rt().block_on(async {
        let s = serve(Target::Queue).await;
        let addr = s.addr;
        let t = tokio::task::spawn_blocking(move || {
            let mut silent = Sp::raw(addr).unwrap();
            let mut idle = Sp::req(addr).unwrap();
            let t0 = Instant::now();
            // Handshaken, then silent: dropped after the stall timeout (3 s
            // here) by the listener's idle reaper.
            let idle_dropped = idle.closed_within(8 * SEC);
            let idle_after = t0.elapsed();
            // Never handshaken: dropped by nng's own handshake timeout.
            let dropped = silent.closed_within(15 * SEC);
            let after = t0.elapsed();
            (dropped, after, idle_dropped, idle_after)
        });
        let (dropped, after, idle_dropped, idle_after) = tokio::time::timeout(20 * SEC, t)
            .await
            .expect("hung")
            .unwrap();
        println!("silent peer dropped: {dropped} after {after:?}; idle handshaken peer dropped: {idle_dropped} after {idle_after:?}");
        assert!(dropped, "a peer that sent nothing was kept 15 s");
        assert!(after < 12 * SEC);
        assert!(idle_dropped, "a handshaken peer that sent nothing was kept 8 s");
        assert!(rate(&s).await > 0.0);
    });
}

/// A listener played by hand: speaks REP's handshake, then answers each
/// request (its id first) with what `answer` makes of the request's body
/// (after the id), until the returned flag is set.
fn fake_rep(
    answer: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static,
) -> (shoal_transport::Address, Arc<AtomicBool>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = format!("nng+tcp://{}", l.local_addr().unwrap())
        .parse()
        .unwrap();
    l.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, answer) = (stop.clone(), Arc::new(answer));
    std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let (stop3, answer) = (stop2.clone(), answer.clone());
            std::thread::spawn(move || {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let mut h = [0u8; 8];
                if s.write_all(&sp::handshake(sp::REP0)).is_err() || s.read_exact(&mut h).is_err() {
                    return;
                }
                let mut c = Sp { s };
                while !stop3.load(Ordering::Relaxed) {
                    let Ok(m) = c.recv(1 << 20, Duration::from_millis(100)) else {
                        continue;
                    };
                    let mut r = m[..4].to_vec();
                    r.extend_from_slice(&answer(&m[4..]));
                    if c.send(&r).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (a, stop)
}

/// The client ends against listeners that lie: a publisher whose batch
/// says 5 messages and carries 1, or starts past the cursor, or carries a
/// payload over the limit; a queue whose item is cut short; a replier
/// whose answer is of the wrong kind or garbage. Each receive ends with
/// an error (Corrupt or TooLarge), never a panic or a hang.
#[test]
fn clients_refuse_listeners_that_lie() {
    count_panics();
    rt().block_on(async {
        let o = Options::default()
            .max_message(4096)
            .connect_timeout(2 * SEC);
        let bad = |e: &shoal_transport::Error| {
            matches!(
                e,
                shoal_transport::Error::Corrupt { .. } | shoal_transport::Error::TooLarge { .. }
            )
        };
        type Make = Box<dyn Fn() -> Vec<u8> + Send + Sync>;
        let batches: [(&str, Make); 3] = [
            (
                "a count that lies",
                Box::new(|| with_envelope(control(4, 77, 0, 5), Kind::Message, b"x", 77)),
            ),
            (
                "a batch past the cursor",
                Box::new(|| with_envelope(control(4, 77, 9, 1), Kind::Message, b"x", 77)),
            ),
            (
                "a payload over the limit",
                Box::new(|| with_envelope(control(4, 77, 0, 1), Kind::Message, &[1; 5000], 77)),
            ),
        ];
        for (what, batch) in batches {
            let (a, stop) = fake_rep(move |q| match sp::parse_control(q) {
                Some((op::HELLO, ..)) => control(2, 77, 0, 0),
                _ => batch(),
            });
            let mut s = NngSubscriber::connect(&a, &o).await.unwrap();
            let e = tokio::time::timeout(5 * SEC, s.recv())
                .await
                .unwrap_or_else(|_| panic!("{what}: hung"))
                .err()
                .unwrap_or_else(|| panic!("{what}: accepted"));
            assert!(bad(&e), "{what}: {e}");
            stop.store(true, Ordering::Relaxed);
        }

        let (a, stop) = fake_rep(|_| {
            let m = with_envelope(control(11, 1, 0, 0), Kind::Message, &[3; 100], 5);
            m[..m.len() - 40].to_vec()
        });
        let mut p = NngPuller::connect(&a, &o).await.unwrap();
        let e = tokio::time::timeout(5 * SEC, p.recv())
            .await
            .expect("a remote puller hung on a cut item")
            .unwrap_err();
        assert!(bad(&e), "cut item: {e}");
        stop.store(true, Ordering::Relaxed);

        for (what, reply) in [
            (
                "the wrong kind",
                with_envelope(control(op::ANSWER, 1, 0, 0), Kind::Message, b"x", 1),
            ),
            ("garbage", Rng(3).bytes(64)),
        ] {
            let (a, stop) = fake_rep(move |_| reply.clone());
            let mut r = NngRequester::connect(&a, &o).await.unwrap();
            let e = tokio::time::timeout(5 * SEC, r.request(b"q"))
                .await
                .unwrap_or_else(|_| panic!("{what}: hung"))
                .unwrap_err();
            assert!(bad(&e), "{what}: {e}");
            stop.store(true, Ordering::Relaxed);
        }
        assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    });
}

/// A listener takes at most `4 × max_peers` connections (a replier here):
/// connections past that are closed at once, the ones it has keep being
/// served, and a closed one's place is free again.
#[test]
fn a_listener_takes_no_more_connections_than_its_limit() {
    let a = common::tcp_addr("nng+tcp");
    rt().block_on(async {
        let o = Options::default().max_peers(1);
        let mut r = NngReplier::bind(&a, &o).unwrap();
        let a = r.address();
        let server = tokio::spawn(async move {
            loop {
                if r.serve_one(|q| q.to_vec()).await.is_err() {
                    return;
                }
            }
        });
        let addr = sp::socket_addr(&a);
        let (mut kept, refused) = tokio::task::spawn_blocking(move || {
            let mut kept = Vec::new();
            for _ in 0..4 {
                kept.push(Sp::req(addr).unwrap());
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut extra = Sp::raw(addr).unwrap();
            let _ = std::io::Write::write_all(&mut extra.s, &sp::handshake(sp::REQ0));
            (kept, extra.closed_within(Duration::from_secs(3)))
        })
        .await
        .unwrap();
        assert!(refused, "a fifth connection was taken");
        // The four it has are served.
        let good = with_envelope(control(op::ASK, 7, 0, 0), Kind::Request, b"x", 7);
        let kept = tokio::task::spawn_blocking(move || {
            for (i, c) in kept.iter_mut().enumerate() {
                c.request(i as u32, &good).unwrap();
                let answer = c.recv(1 << 16, Duration::from_secs(5)).unwrap();
                assert!(sp::parse_control(&answer[4..]).is_some(), "connection {i}");
            }
            kept
        })
        .await
        .unwrap();
        // One closed makes room for one more.
        drop(kept.into_iter().next());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut c = NngRequester::connect(&a, &o).await.unwrap();
        let f = tokio::time::timeout(5 * SEC, c.request(b"again"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&f[..], b"again");
        server.abort();
    });
}

/// A peer that copies a pusher's id (every frame names it) and pushes
/// under it with a huge sequence number changes nothing for that pusher:
/// the queue tells pushers apart by a key no puller sees.
#[test]
fn a_peer_claiming_a_pushers_id_cannot_silence_it() {
    let a = common::tcp_addr("nng+tcp");
    rt().block_on(async {
        let o = Options::default();
        let mut q = NngPuller::bind(&a, &o).unwrap();
        let a = q.address();
        let mut p = NngPusher::connect(&a, &o).await.unwrap();
        p.send(b"first").await.unwrap();
        let f = tokio::time::timeout(5 * SEC, q.recv())
            .await
            .unwrap()
            .unwrap();
        let id = f.peer().expect("a frame names its pusher").0;
        let addr = sp::socket_addr(&a);
        tokio::task::spawn_blocking(move || {
            let mut c = Sp::req(addr).unwrap();
            let push = with_envelope(
                control(op::PUSH, id, 0, u64::MAX - 1),
                Kind::Message,
                b"x",
                id,
            );
            c.request(1, &push).unwrap();
            let _ = c.recv(1 << 16, Duration::from_secs(5));
        })
        .await
        .unwrap();
        let spoofed = tokio::time::timeout(5 * SEC, q.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&spoofed[..], b"x");
        for i in 0..100u32 {
            p.send(&i.to_le_bytes()).await.unwrap();
        }
        p.flush().await.unwrap();
        for i in 0..100u32 {
            let f = tokio::time::timeout(5 * SEC, q.recv())
                .await
                .expect("the pusher was silenced")
                .unwrap();
            assert_eq!(&f[..], &i.to_le_bytes());
        }
    });
}

/// Pushes that carry a large envelope the queue already has beside a new
/// small one: the queue keeps the small one alone, not the large body it
/// came in (else `capacity` would bound a few bytes per item while every
/// body stayed held).
#[test]
fn a_push_taken_in_part_does_not_hold_its_whole_body() {
    let a = common::tcp_addr("nng+tcp");
    rt().block_on(async {
        let o = Options::default().capacity(64 << 20);
        let q = NngPuller::bind(&a, &o).unwrap();
        let addr = sp::socket_addr(&q.address());
        let before = rss();
        let grown = tokio::task::spawn_blocking(move || {
            let mut c = Sp::req(addr).unwrap();
            let big = vec![7u8; 1 << 20];
            let key = 0x5eed;
            // Sequence 1: the big envelope alone, queued.
            let one = with_envelope(control(op::PUSH, key, 1 << 32, 1), Kind::Message, &big, key);
            c.request(1, &one).unwrap();
            c.recv(1 << 16, Duration::from_secs(5)).unwrap();
            // Then 1..k again, each time with one new small envelope: only
            // the small one is queued.
            for k in 2..=40u64 {
                let mut m = control(op::PUSH, key, 2 << 32, k - 1);
                let mut envs = with_envelope(Vec::new(), Kind::Message, &big, key);
                envs.extend(with_envelope(Vec::new(), Kind::Message, b"s", key));
                m.extend(envs);
                c.request(k as u32, &m).unwrap();
                let answer = c.recv(1 << 16, Duration::from_secs(5)).unwrap();
                let (op, last, _, _) = sp::parse_control(&answer[4..]).unwrap();
                assert_eq!((op, last), (8, k), "queued through {k}");
            }
        });
        grown.await.unwrap();
        let grown = rss().saturating_sub(before);
        // 40 bodies of 1 MiB held would be 40 MiB.
        assert!(grown < 16 << 20, "memory grew {} MiB", grown >> 20);
        drop(q);
    });
}
