//! Hostile peers against QUIC listeners (issue 7, item 6): garbage
//! datagrams, a 4 GiB length prefix, random bytes, a truncated envelope,
//! streams and connections that send nothing, a requester that never
//! reads its replies. Each is dropped or refused, nothing panics, memory
//! stays bounded, and a well-behaved requester keeps at least half its
//! rate while they run.
//!
//! The attackers share this process and its two cores with the listener
//! and the well-behaved client, and the machine's speed drifts from one
//! second to the next, so a rate measured alone before the attack and one
//! measured under it a few seconds later differ by noise as much as by
//! the attack (a run in CI measured 4732/s alone where runs here measure
//! 2600-3300/s). The tests alternate short windows with no hostile peer
//! at all (each drops its connections while paused) and with all of them
//! attacking, and compare both the medians and the means of the two
//! kinds (a mean shows a window that stalled; a median shrugs it off).
#![cfg(feature = "quic")]

mod common;

use common::{rt, SEC};
use shoal_transport::envelope::{encode_into, Header, Kind};
use shoal_transport::quic::tls::client_config;
use shoal_transport::{Address, Options, QuicReplier, QuicRequester};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn parts(a: &Address) -> (SocketAddr, [u8; 32]) {
    match a {
        Address::Quic {
            port,
            pin: Some(pin),
            ..
        } => (([127, 0, 0, 1], *port).into(), *pin),
        other => panic!("not a bound QUIC address: {other}"),
    }
}

/// A raw QUIC connection to `a` with the right pin: a peer that speaks
/// QUIC and TLS correctly and then misbehaves.
async fn raw(a: &Address) -> quinn::Connection {
    try_raw(a).await.expect("connected")
}

/// [`raw`], or `None` when the listener does not take the connection.
async fn try_raw(a: &Address) -> Option<quinn::Connection> {
    let (sa, pin) = parts(a);
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(client_config(pin).unwrap()).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    ep.connect(sa, "shoal").ok()?.await.ok()
}

/// A stream to `a` on `conn`, connecting first when there is none or the
/// listener has closed it; `None` after a short pause when it cannot.
async fn stream_to(
    a: &Address,
    conn: &mut Option<quinn::Connection>,
) -> Option<(quinn::SendStream, quinn::RecvStream)> {
    if let Some(c) = conn {
        if let Ok(s) = c.open_bi().await {
            return Some(s);
        }
    }
    *conn = try_raw(a).await;
    match conn {
        Some(c) => c.open_bi().await.ok(),
        None => {
            tokio::time::sleep(Duration::from_millis(20)).await;
            None
        }
    }
}

/// One envelope of `kind`, as a pusher or puller writes it.
fn env(kind: Kind, payload: &[u8], id: u64) -> Vec<u8> {
    let mut v = Vec::new();
    encode_into(
        &Header::new(kind, b"", payload.len(), id).unwrap(),
        b"",
        payload,
        &mut v,
    );
    v
}

/// Round trips a well-behaved requester makes in `window`.
async fn rate(c: &mut QuicRequester, window: Duration) -> f64 {
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < window {
        let r = tokio::time::timeout(5 * SEC, c.request(b"ping"))
            .await
            .expect("a well-behaved request is answered")
            .unwrap();
        assert_eq!(&*r, b"ping");
        n += 1;
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Switches a test's hostile peers on and off: they attack while
/// [`Attack::go`] says so, and close their connections while paused, so
/// that a paused window has no hostile peer at all.
#[derive(Default)]
struct Attack {
    stop: AtomicBool,
    pause: AtomicBool,
}

impl Attack {
    /// Whether an attacker goes on: waits while paused, false once
    /// stopped.
    async fn go(&self) -> bool {
        while self.pause.load(Ordering::Relaxed) && !self.stopped() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        !self.stopped()
    }

    /// Whether attackers are to stand down (paused or stopped): time to
    /// close their connections.
    fn paused(&self) -> bool {
        self.pause.load(Ordering::Relaxed) || self.stopped()
    }

    /// Waits until the attack pauses or stops (a holder holds until then).
    async fn hold(&self) {
        while !self.paused() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Closes `conn`, if any, as an attacker that stands down does.
fn stand_down(conn: &mut Option<quinn::Connection>) {
    if let Some(c) = conn.take() {
        c.close(0u32.into(), b"paused");
    }
}

/// Windows with no hostile peer and with the attack on, in turn, for a
/// well-behaved client's rate: the caller measures a window of the length
/// [`Windows::next`] gives and records it, until `next` says none is left.
struct Windows<'a> {
    attack: &'a Attack,
    alone: Vec<f64>,
    under: Vec<f64>,
}

/// The well-behaved client's rates, alone and under attack.
struct Compared {
    median: (f64, f64),
    mean: (f64, f64),
}

impl Compared {
    /// Fails unless the rate under attack is at least half the rate
    /// alone, by the medians and by the means.
    fn check(&self) {
        let ((a, u), (ma, mu)) = (self.median, self.mean);
        assert!(
            u >= 0.5 * a,
            "median {u:.0}/s under attack vs {a:.0}/s alone"
        );
        assert!(
            mu >= 0.5 * ma,
            "mean {mu:.0}/s under attack vs {ma:.0}/s alone"
        );
    }
}

impl std::fmt::Display for Compared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ((a, u), (ma, mu)) = (self.median, self.mean);
        write!(
            f,
            "medians of 300 ms windows {a:.0}/s alone, {u:.0}/s under attack ({:.2}x); means {ma:.0}/s, {mu:.0}/s ({:.2}x)",
            u / a,
            mu / ma
        )
    }
}

impl<'a> Windows<'a> {
    const ROUNDS: usize = 5;

    fn new(attack: &'a Attack) -> Self {
        Windows {
            attack,
            alone: Vec::new(),
            under: Vec::new(),
        }
    }

    /// Pauses or starts the attack for the next window (and lets the
    /// attackers close or open their connections) and gives its length,
    /// or `None` when every window is measured.
    async fn next(&mut self) -> Option<Duration> {
        let n = self.alone.len() + self.under.len();
        if n == 2 * Self::ROUNDS {
            return None;
        }
        self.attack
            .pause
            .store(n.is_multiple_of(2), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
        Some(Duration::from_millis(300))
    }

    /// The rate measured over the window `next` gave.
    fn record(&mut self, rate: f64) {
        if self.alone.len() > self.under.len() {
            self.under.push(rate);
        } else {
            self.alone.push(rate);
        }
    }

    /// The rates compared; the attack is left paused.
    fn compared(mut self) -> Compared {
        self.attack.pause.store(true, Ordering::Relaxed);
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        Compared {
            median: (median(&mut self.alone), median(&mut self.under)),
            mean: (mean(&self.alone), mean(&self.under)),
        }
    }
}

/// Hostile streams on one connection to `a` (a new one when the
/// listener closes it, or after a pause), over and over while `attack`
/// goes.
async fn hostile_streams(a: Address, attack: Arc<Attack>) -> u64 {
    let mut refused = 0u64;
    let mut k = 0u64;
    let mut conn = None;
    loop {
        if attack.paused() {
            stand_down(&mut conn);
        }
        if !attack.go().await {
            break;
        }
        k += 1;
        let Some((mut send, mut recv)) = stream_to(&a, &mut conn).await else {
            continue;
        };
        let bytes: Vec<u8> = match k % 4 {
            // A 4 GiB body length, kind Request.
            0 => {
                let mut h = vec![0u8; 16];
                h[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
                h[4] = 2;
                h
            }
            // Random bytes.
            1 => (0..200u64).map(|i| (i * 2654435761 + k) as u8).collect(),
            // A truncated envelope: a header promising 100 bytes, 10 sent.
            2 => {
                let mut h = vec![0u8; 26];
                h[0..4].copy_from_slice(&100u32.to_le_bytes());
                h[4] = 2;
                h
            }
            // A valid header of the wrong kind (a credit with a body).
            _ => {
                let mut h = vec![0u8; 32];
                h[0..4].copy_from_slice(&16u32.to_le_bytes());
                h[4] = 4;
                h
            }
        };
        refuses(&mut send, &mut recv, &bytes, "a hostile stream").await;
        refused += 1;
    }
    refused
}

/// Writes `bytes` on a stream and finishes it; the listener answers with
/// a reset (or nothing), never a reply.
async fn refuses(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    bytes: &[u8],
    what: &str,
) {
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let mut buf = [0u8; 64];
    if let Ok(Ok(Some(n))) = tokio::time::timeout(2 * SEC, recv.read(&mut buf)).await {
        assert!(n == 0, "{what} was answered");
    }
    tokio::time::sleep(Duration::from_millis(2)).await;
}

#[test]
fn hostile_peers_do_not_stop_a_replier_serving_others() {
    rt().block_on(async {
        let o = Options::default()
            .max_message(1 << 20)
            .stall_timeout(Duration::from_millis(500));
        let mut r = QuicReplier::bind(&"quic://127.0.0.1:0".parse().unwrap(), &o)
            .await
            .unwrap();
        let a = r.address();
        tokio::spawn(async move {
            loop {
                // Large replies for the requester that never reads them;
                // small ones for the rest.
                let ok = r
                    .serve_one(|q| {
                        if &q[..] == b"big" {
                            vec![7u8; 900 << 10]
                        } else {
                            q.to_vec()
                        }
                    })
                    .await;
                if ok.is_err() {
                    return;
                }
            }
        });
        let mut good = QuicRequester::connect(&a, &o).await.unwrap();
        let _ = rate(&mut good, SEC / 4).await; // warm up
        let rss0 = rss();

        let attack = Arc::new(Attack::default());
        let mut attacks = Vec::new();
        // Garbage datagrams at the listener's port.
        {
            let (sa, _) = parts(&a);
            let attack = attack.clone();
            attacks.push(tokio::spawn(async move {
                let u = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let mut k = 0u64;
                while attack.go().await {
                    k += 1;
                    let d: Vec<u8> = (0..1200u64).map(|i| (i * 31 + k) as u8).collect();
                    let _ = u.send_to(&d, sa).await;
                    // Hostile, not a flood: a volumetric attack on the
                    // CPU is not something an endpoint can answer.
                    if k.is_multiple_of(8) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                0
            }));
        }
        // Hostile streams on two connections.
        for _ in 0..2 {
            attacks.push(tokio::spawn(hostile_streams(a.clone(), attack.clone())));
        }
        // Holders, made anew for each window of the attack: slowloris
        // (connections, and streams, that send nothing) and a requester
        // that asks for large replies and never reads them.
        {
            let (a, attack) = (a.clone(), attack.clone());
            attacks.push(tokio::spawn(async move {
                let mut asked = 0u64;
                while attack.go().await {
                    let mut idle = Vec::new();
                    for _ in 0..4 {
                        if let Some(c) = try_raw(&a).await {
                            let s = c.open_bi().await.ok();
                            idle.push((Some(c), s));
                        }
                    }
                    let mut conn = try_raw(&a).await;
                    let mut held = Vec::new();
                    while let Some(c) = conn.as_ref().filter(|_| !attack.paused()) {
                        if held.len() == 8 {
                            break;
                        }
                        let Ok((mut send, recv)) = c.open_bi().await else {
                            break;
                        };
                        let mut h = vec![0u8; 16];
                        h[0..4].copy_from_slice(&16u32.to_le_bytes());
                        h[4] = 2;
                        h.extend_from_slice(b"big");
                        h.resize(32, 0);
                        let _ = send.write_all(&h).await;
                        let _ = send.finish();
                        held.push(recv);
                        asked += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    attack.hold().await;
                    drop(held);
                    stand_down(&mut conn);
                    for (c, _) in &mut idle {
                        stand_down(c);
                    }
                }
                asked
            }));
        }
        let mut windows = Windows::new(&attack);
        while let Some(w) = windows.next().await {
            windows.record(rate(&mut good, w).await);
        }
        let compared = windows.compared();
        attack.stop.store(true, Ordering::Relaxed);
        let mut refused = 0;
        for t in attacks {
            refused += t.await.unwrap();
        }
        println!(
            "well-behaved requester: {compared}; \
             {refused} hostile streams refused or unread; RSS {} -> {} MiB",
            rss0 >> 20,
            rss() >> 20
        );
        compared.check();
        assert!(refused > 0);
        assert!(rss() < rss0 + (256 << 20), "memory grew without bound");
    });
}

/// A peer that connects and opens nothing is closed after the stall
/// timeout; a well-behaved requester that was idle as long is closed the
/// same way and simply connects again on its next request.
#[test]
fn idle_connections_are_closed_and_clients_come_back() {
    rt().block_on(async {
        let o = Options::default().stall_timeout(Duration::from_millis(400));
        let mut r = QuicReplier::bind(&"quic://127.0.0.1:0".parse().unwrap(), &o)
            .await
            .unwrap();
        let a = r.address();
        tokio::spawn(async move { while r.serve_one(|q| q.to_vec()).await.is_ok() {} });
        let slow = raw(&a).await;
        let mut good = QuicRequester::connect(&a, &o).await.unwrap();
        assert_eq!(&*good.request(b"1").await.unwrap(), b"1");
        let t0 = Instant::now();
        let why = tokio::time::timeout(5 * SEC, slow.closed())
            .await
            .expect("an idle connection is closed");
        println!("idle peer closed after {:?}: {why}", t0.elapsed());
        assert!(t0.elapsed() >= Duration::from_millis(300));
        // The requester was idle as long: closed too, and back on its own.
        tokio::time::sleep(Duration::from_millis(600)).await;
        for i in 0..3u8 {
            let r = tokio::time::timeout(5 * SEC, good.request(&[i]))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&*r, &[i]);
        }
    });
}

/// With more than half its connection slots taken, a listener makes new
/// clients prove their address (QUIC Retry) before they get a slot;
/// well-behaved clients still connect.
#[test]
fn clients_still_connect_when_slots_are_scarce() {
    rt().block_on(async {
        // max_peers 2: 8 connection slots at a replier, retry from 4.
        let o = Options::default().max_peers(2);
        let mut r = QuicReplier::bind(&"quic://127.0.0.1:0".parse().unwrap(), &o)
            .await
            .unwrap();
        let a = r.address();
        tokio::spawn(async move { while r.serve_one(|q| q.to_vec()).await.is_ok() {} });
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(raw(&a).await);
        }
        let mut c = tokio::time::timeout(5 * SEC, QuicRequester::connect(&a, &o))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*c.request(b"hi").await.unwrap(), b"hi");
        drop(held);
    });
}

/// A push batch sent again (its answer lost with a connection) is queued
/// once: the queue knows each pusher's last sequence number by its key.
/// Batches are written by hand here, as a pusher writes them.
#[test]
fn a_push_batch_sent_again_is_queued_once() {
    use shoal_transport::QuicPuller;
    rt().block_on(async {
        let bind: Address = "quic://127.0.0.1:0".parse().unwrap();
        let mut q = QuicPuller::bind(&bind, &Options::default()).await.unwrap();
        let conn = raw(&q.address()).await;
        let key = 0xfeed;
        // (first sequence number, messages): 1-2, 1-2 again, 2-3.
        let mut answers = Vec::new();
        for (first, msgs) in [(1u64, ["a", "b"]), (1, ["a", "b"]), (2, ["b", "c"])] {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let mut bytes = env(Kind::Batch, &first.to_le_bytes(), key);
            for m in msgs {
                bytes.extend(env(Kind::Message, m.as_bytes(), 9));
            }
            send.write_all(&bytes).await.unwrap();
            send.finish().unwrap();
            let answer = tokio::time::timeout(5 * SEC, recv.read_to_end(1024))
                .await
                .unwrap()
                .unwrap();
            let mut h = [0u8; 16];
            h.copy_from_slice(&answer[..16]);
            answers.push(u64::from_le_bytes(h[8..16].try_into().unwrap()));
        }
        assert_eq!(answers, [2, 2, 3], "the last sequence number queued");
        let mut got = Vec::new();
        while let Ok(Ok(f)) = tokio::time::timeout(SEC / 2, q.recv()).await {
            got.push(String::from_utf8(f.to_vec()).unwrap());
        }
        assert_eq!(got, ["a", "b", "c"]);
    });
}

/// A batch sent again that has to wait for room after the queue left out
/// what it held: it keeps each message's own number however often it
/// wakes, so what is queued and what the queue answers agree (a batch
/// that trimmed itself again on each wake-up lost messages).
#[test]
fn a_resent_batch_that_waits_for_room_keeps_its_numbers() {
    use shoal_transport::QuicPuller;
    async fn batch(conn: &quinn::Connection, key: u64, first: u64, msgs: &[&str]) -> u64 {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut bytes = env(Kind::Batch, &first.to_le_bytes(), key);
        for m in msgs {
            bytes.extend(env(Kind::Message, m.as_bytes(), 9));
        }
        send.write_all(&bytes).await.unwrap();
        send.finish().unwrap();
        let answer = recv.read_to_end(1024).await.unwrap();
        u64::from_le_bytes(answer[8..16].try_into().unwrap())
    }
    rt().block_on(async {
        let bind: Address = "quic://127.0.0.1:0".parse().unwrap();
        // Room for about one message: the queue takes a batch when empty.
        let o = Options::default().capacity(300);
        let mut q = QuicPuller::bind(&bind, &o).await.unwrap();
        let conn = raw(&q.address()).await;
        assert_eq!(batch(&conn, 7, 1, &["m1", "m2"]).await, 2);
        // 1 and 2 again, 3 and 4 new: it must wait for room.
        let c = conn.clone();
        let resent = tokio::spawn(async move { batch(&c, 7, 1, &["m1", "m2", "m3", "m4"]).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!resent.is_finished(), "it found room in a full queue");
        let mut got = Vec::new();
        for _ in 0..4 {
            let f = tokio::time::timeout(5 * SEC, q.recv())
                .await
                .unwrap()
                .unwrap();
            got.push(String::from_utf8(f.to_vec()).unwrap());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(got, ["m1", "m2", "m3", "m4"]);
        assert_eq!(
            tokio::time::timeout(5 * SEC, resent)
                .await
                .unwrap()
                .unwrap(),
            4
        );
        assert_eq!(batch(&conn, 7, 3, &["m3", "m4", "m5"]).await, 5);
        let f = tokio::time::timeout(5 * SEC, q.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&f[..], b"m5");
        assert!(
            tokio::time::timeout(SEC / 2, q.recv()).await.is_err(),
            "a message came twice"
        );
    });
}

/// Hostile batch streams at a queue at `a` (on one connection, a new one
/// when the listener closes it or after a pause), over and over while
/// `attack` goes: batch
/// headers that lie (a short payload, number 0, a number with no room
/// above it), a header with nothing after it, a pull inside a batch, a
/// batch that never ends, and many tiny messages under fresh keys.
async fn hostile_batches(a: Address, attack: Arc<Attack>) -> u64 {
    let mut refused = 0u64;
    let mut k = 0u64;
    let mut conn = None;
    // Streams kept open, never finished (quinn finishes a dropped one).
    let mut open = Vec::new();
    loop {
        if attack.paused() {
            open.clear();
            stand_down(&mut conn);
        }
        if !attack.go().await {
            break;
        }
        k += 1;
        let Some((mut send, mut recv)) = stream_to(&a, &mut conn).await else {
            continue;
        };
        let bytes: Vec<u8> = match k % 6 {
            0 => env(Kind::Batch, &[1, 2, 3], k),
            1 => env(Kind::Batch, &0u64.to_le_bytes(), k),
            2 => env(Kind::Batch, &u64::MAX.to_le_bytes(), k),
            3 => env(Kind::Batch, &1u64.to_le_bytes(), k),
            4 => {
                let mut b = env(Kind::Batch, &1u64.to_le_bytes(), k);
                b.extend(env(Kind::Message, b"x", 1));
                b.extend(env(Kind::Request, b"", 1));
                b
            }
            _ => {
                // A batch that never ends: written, not finished.
                let mut b = env(Kind::Batch, &1u64.to_le_bytes(), k);
                b.extend(env(Kind::Message, b"never ends", 1));
                let _ = send.write_all(&b).await;
                if open.len() < 4 {
                    open.push(send);
                } else {
                    // Given up half way: the queue takes nothing of it.
                    let _ = send.reset(0u32.into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                refused += 1;
                continue;
            }
        };
        let what = format!("a hostile batch ({})", k % 6);
        refuses(&mut send, &mut recv, &bytes, &what).await;
        refused += 1;
    }
    refused
}

#[test]
fn hostile_peers_do_not_stop_a_queue_serving_others() {
    use shoal_transport::{QuicPuller, QuicPusher};
    rt().block_on(async {
        let o = Options::default()
            .max_message(1 << 20)
            .stall_timeout(Duration::from_millis(500));
        let mut q = QuicPuller::bind(&"quic://127.0.0.1:0".parse().unwrap(), &o)
            .await
            .unwrap();
        let a = q.address();
        let mut p = QuicPusher::connect(&a, &o).await.unwrap();
        // Messages through the queue per second: one sent, one taken.
        async fn through(p: &mut QuicPusher, q: &mut QuicPuller, window: Duration) -> f64 {
            let t0 = Instant::now();
            let mut n = 0u64;
            while t0.elapsed() < window {
                p.send(b"work").await.unwrap();
                let f = tokio::time::timeout(5 * SEC, q.recv())
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(&f[..], b"work", "a hostile message reached the puller");
                n += 1;
            }
            n as f64 / t0.elapsed().as_secs_f64()
        }
        let _ = through(&mut p, &mut q, SEC / 4).await; // warm up
        let rss0 = rss();

        // A puller that asks for items and never acknowledges them (40 of
        // them, on 8 streams): the queue lends it some, takes its
        // connection after the stall timeout, and hands what it lent to
        // the well-behaved puller: each message once, none lost. (Each
        // message lent to it waits out that timeout: a work queue cannot
        // tell such a puller from a slow one sooner; so it is not among
        // the attackers of the windows below, which a one-at-a-time
        // client would measure as stalls of the timeout's length.)
        {
            let conn = raw(&a).await;
            let h = env(Kind::Request, b"", 5);
            let mut held = Vec::new();
            for _ in 0..8 {
                let (mut send, recv) = conn.open_bi().await.unwrap();
                send.write_all(&h).await.unwrap();
                held.push((send, recv));
            }
            let t0 = Instant::now();
            for i in 0..20u32 {
                p.send(&i.to_le_bytes()).await.unwrap();
            }
            // Nobody else takes yet: each of its 8 asks is answered with
            // an item (waiting here, not sleeping a guess, so a loaded
            // machine cannot let the well-behaved puller take all 20
            // first and leave it holding nothing to be dropped for).
            for (_, recv) in &mut held {
                let mut b = [0u8; 64];
                tokio::time::timeout(5 * SEC, recv.read(&mut b))
                    .await
                    .expect("the queue lends the puller that never acknowledges an item")
                    .unwrap();
            }
            let mut got = std::collections::HashSet::new();
            while got.len() < 20 {
                let f = tokio::time::timeout(5 * SEC, q.recv())
                    .await
                    .expect("a message lent to the puller that never acknowledges came back")
                    .unwrap();
                assert!(got.insert(f.to_vec()), "{:?} taken twice", &f[..]);
            }
            tokio::time::timeout(5 * SEC, conn.closed())
                .await
                .expect("the puller that never acknowledges is dropped");
            println!(
                "a puller that never acknowledges: dropped; its messages came within {:?}",
                t0.elapsed()
            );
            drop(held);
        }

        let attack = Arc::new(Attack::default());
        let mut attacks = Vec::new();
        for _ in 0..2 {
            attacks.push(tokio::spawn(hostile_streams(a.clone(), attack.clone())));
        }
        for _ in 0..2 {
            attacks.push(tokio::spawn(hostile_batches(a.clone(), attack.clone())));
        }
        let mut windows = Windows::new(&attack);
        while let Some(w) = windows.next().await {
            windows.record(through(&mut p, &mut q, w).await);
        }
        let compared = windows.compared();
        attack.stop.store(true, Ordering::Relaxed);
        let mut refused = 0;
        for t in attacks {
            refused += t.await.unwrap();
        }
        println!(
            "well-behaved pusher and puller: {compared}; \
             {refused} hostile streams refused; RSS {} -> {} MiB",
            rss0 >> 20,
            rss() >> 20
        );
        compared.check();
        assert!(refused > 0);
        assert!(rss() < rss0 + (256 << 20), "memory grew without bound");
    });
}

/// One exchange on a kept stream, as a requester of this crate makes it:
/// a request envelope, then the reply's, decoded from what comes.
async fn exchange_on(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    dec: &mut shoal_transport::envelope::Decoder,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    send.write_all(&env(Kind::Request, payload, 5))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let c = tokio::time::timeout(5 * SEC, recv.read_chunk(1 << 16, true))
            .await
            .map_err(|_| "no reply within 5 s".to_string())?
            .map_err(|e| e.to_string())?
            .ok_or("the stream ended")?;
        let (used, d) = dec.feed(&c.bytes).map_err(|e| e.to_string())?;
        assert_eq!(used, c.bytes.len());
        if let Some(d) = d {
            return Ok(d.payload().to_vec());
        }
    }
}

/// Binds an echoing replier with stall timeout `stall`, which waits
/// `delay` before it takes each request (the request is in progress
/// meanwhile), and asks it `n` times on one kept stream of a raw
/// connection, `pause` after each reply; whether the connection is still
/// open after.
async fn ask_on_one_stream(stall: Duration, delay: Duration, n: u32, pause: Duration) -> bool {
    use shoal_transport::envelope::Decoder;
    let o = Options::default().stall_timeout(stall);
    let mut r = QuicReplier::bind(&"quic://127.0.0.1:0".parse().unwrap(), &o)
        .await
        .unwrap();
    let a = r.address();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(delay).await;
            if r.serve_one(|q| q.to_vec()).await.is_err() {
                return;
            }
        }
    });
    let conn = raw(&a).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut dec = Decoder::new(1 << 20);
    let t0 = Instant::now();
    for i in 0..n {
        let q = i.to_le_bytes();
        let reply = exchange_on(&mut send, &mut recv, &mut dec, &q)
            .await
            .unwrap_or_else(|e| panic!("exchange {i} after {:?}: {e}", t0.elapsed()));
        assert_eq!(reply, q);
        tokio::time::sleep(pause).await;
    }
    conn.close_reason().is_none()
}

/// A requester asking on one stream now and then, more often than the
/// stall timeout, is never closed as idle: its stream holds no turn
/// between two exchanges, but the exchanges count as the connection's
/// activity. (A peer that connects and sends nothing still is closed:
/// [`idle_connections_are_closed_and_clients_come_back`].)
#[test]
fn a_requester_asking_on_one_stream_more_often_than_the_stall_timeout_stays_connected() {
    let ms = Duration::from_millis;
    let open = rt().block_on(ask_on_one_stream(ms(300), ms(0), 12, ms(130)));
    assert!(open, "closed as idle");
}

/// The end of an exchange counts as activity too: a requester whose
/// requests each take longer than the stall timeout to answer, and that
/// asks again a little less than the stall timeout after each reply, is
/// not closed as idle in between (its reply, handed to quinn, has a whole
/// stall timeout to arrive).
#[test]
fn slow_exchanges_with_pauses_shorter_than_the_stall_timeout_stay_connected() {
    let ms = Duration::from_millis;
    let open = rt().block_on(ask_on_one_stream(ms(600), ms(900), 3, ms(400)));
    assert!(open, "closed as idle");
}
