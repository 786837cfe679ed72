//! One conformance suite, generic over the `Wire` trait, run against every
//! backend this build has and the in-process reference (issue 7): the same
//! behaviour from every wire, so they cannot drift apart.

use shoal_transport::{
    Address, Error, InProc, Options, Publisher, Puller, Pusher, Replier, Requester, Subscriber,
    Wire,
};
use std::collections::BTreeSet;
use std::time::Duration;

mod common;

use common::{rt, SEC};

/// Payload `i` of `n` bytes.
fn payload(i: usize, n: usize) -> Vec<u8> {
    (0..n).map(|k| (k * 131 + i * 7) as u8).collect()
}

/// Sizes from 0 B to 64 MiB.
const SIZES: [usize; 9] = [0, 1, 15, 16, 100, 4096, 100_000, 3 << 20, 64 << 20];

async fn pubsub<W: Wire>(a: Address) {
    let o = Options::default().max_message(64 << 20);
    let mut p = W::bind_publisher(&a, &o).await.unwrap();
    let a = p.address();
    let mut all = W::connect_subscriber(&a, &o).await.unwrap();
    let mut some = W::connect_subscriber(&a, &o).await.unwrap();
    some.subscribe(b"x.");
    p.wait_for_subscribers(2, 5 * SEC).await.unwrap();
    let reader = |mut s: W::Subscriber, want: Vec<(Vec<u8>, Vec<u8>)>| async move {
        let mut peers = BTreeSet::new();
        for (i, (t, m)) in want.iter().enumerate() {
            let f = tokio::time::timeout(20 * SEC, s.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(f.topic(), &t[..], "message {i}");
            assert_eq!(&*f, &m[..], "message {i}");
            peers.insert(f.peer().expect("every frame names its sender"));
        }
        // One publisher: one sender id.
        assert_eq!(peers.len(), 1);
        s
    };
    let msgs: Vec<(Vec<u8>, Vec<u8>)> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let t = if i % 2 == 0 {
                b"x.even".to_vec()
            } else {
                b"odd".to_vec()
            };
            (t, payload(i, n))
        })
        .collect();
    let evens: Vec<_> = msgs
        .iter()
        .filter(|(t, _)| t.starts_with(b"x."))
        .cloned()
        .collect();
    let h1 = tokio::spawn(reader(all, msgs.clone()));
    let h2 = tokio::spawn(reader(some, evens));
    for (t, m) in &msgs {
        p.send(t, m).await.unwrap();
    }
    all = h1.await.unwrap();
    some = h2.await.unwrap();
    // Oversized: refused before anything is sent.
    let e = p.send(b"", &vec![0u8; (64 << 20) + 1]).await.unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    // Close: subscribers get Closed after everything sent.
    p.send(b"x.last", b"bye").await.unwrap();
    drop(p);
    for s in [&mut all, &mut some] {
        assert_eq!(&*s.recv().await.unwrap(), b"bye");
        assert!(matches!(s.recv().await, Err(Error::Closed)));
    }
}

async fn backpressure_and_cancellation<W: Wire>(a: Address) {
    let o = Options::default()
        .capacity(1 << 14)
        .send_timeout(Some(Duration::from_millis(200)));
    let mut p = W::bind_publisher(&a, &o).await.unwrap();
    let a = p.address();
    let mut s = W::connect_subscriber(&a, &o).await.unwrap();
    p.wait_for_subscribers(1, 5 * SEC).await.unwrap();
    // A receive cancelled by its timeout takes nothing.
    assert!(tokio::time::timeout(Duration::from_millis(30), s.recv())
        .await
        .is_err());
    // An unread subscriber holds the publisher back; the send times out.
    let mut sent = 0u32;
    let e = loop {
        match p.send(b"", &sent.to_le_bytes().repeat(256)).await {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 10_000, "nothing held the publisher back");
    };
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    // Nothing was dropped.
    for i in 0..sent {
        assert_eq!(&s.recv().await.unwrap()[..4], &i.to_le_bytes());
    }
}

async fn pushpull<W: Wire>(a: Address) {
    let o = Options::default().capacity(1 << 16);
    let mut q1 = W::bind_puller(&a, &o).await.unwrap();
    let a = q1.address();
    let mut q2 = W::connect_puller(&a, &o).await.unwrap();
    let mut push = W::connect_pusher(&a, &o).await.unwrap();
    const N: u32 = 1000;
    let mut push2 = W::connect_pusher(&a, &o).await.unwrap();
    let pull = |mut q: W::Puller| async move {
        let mut got = Vec::new();
        while let Ok(Ok(f)) = tokio::time::timeout(SEC / 2, q.recv()).await {
            let v = u32::from_le_bytes(f[..4].try_into().unwrap());
            got.push((v, f.peer().expect("every frame names its sender")));
        }
        (q, got)
    };
    let (h1, h2) = (tokio::spawn(pull(q1)), tokio::spawn(pull(q2)));
    for i in 0..N {
        // Even numbers from one pusher, odd from the other.
        let p = if i % 2 == 0 { &mut push } else { &mut push2 };
        p.send(&i.to_le_bytes()).await.unwrap();
    }
    // Everything sent is in the queue (or taken) once flushed.
    push.flush().await.unwrap();
    push2.flush().await.unwrap();
    let ((r1, g1), (r2, g2)) = (h1.await.unwrap(), h2.await.unwrap());
    // Each pusher is one sender id, and the two differ.
    let by_parity: BTreeSet<(u32, shoal_transport::PeerId)> =
        g1.iter().chain(&g2).map(|&(v, p)| (v % 2, p)).collect();
    assert_eq!(by_parity.len(), 2, "{by_parity:?}");
    let g1: Vec<u32> = g1.into_iter().map(|(v, _)| v).collect();
    let g2: Vec<u32> = g2.into_iter().map(|(v, _)| v).collect();
    (q1, q2) = (r1, r2);
    assert_eq!(g1.len() + g2.len(), N as usize, "lost or duplicated");
    let all: BTreeSet<u32> = g1.iter().chain(&g2).copied().collect();
    assert_eq!(all, (0..N).collect());
    for g in [&g1, &g2] {
        for parity in 0..2 {
            let mine: Vec<u32> = g.iter().copied().filter(|v| v % 2 == parity).collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "reordered");
        }
    }
    // Every size, whole.
    for (i, &n) in SIZES[..8].iter().enumerate() {
        push.send(&payload(i, n)).await.unwrap();
        let f = tokio::time::timeout(10 * SEC, q1.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*f, &payload(i, n)[..], "size {n}");
    }
    drop(q2);
}

async fn reqrep<W: Wire>(a: Address) {
    let o = Options::default();
    let mut server = W::bind_replier(&a, &o).await.unwrap();
    let a = server.address();
    let clients: Vec<_> = (0..2u32)
        .map(|k| {
            let (a, o) = (a.clone(), o.clone());
            tokio::spawn(async move {
                let mut c = W::connect_requester(&a, &o).await.unwrap();
                for i in 0..200u32 {
                    let q = format!("{k}:{i}");
                    let r = tokio::time::timeout(5 * SEC, c.request(q.as_bytes()))
                        .await
                        .unwrap()
                        .unwrap();
                    assert_eq!(&*r, format!("{q}!").as_bytes());
                }
            })
        })
        .collect();
    for i in 0..400 {
        if i % 2 == 0 {
            server.serve_one(|q| [q, b"!"].concat()).await.unwrap();
        } else {
            server
                .serve_one_into(|q, out| {
                    out.extend_from_slice(q);
                    out.extend_from_slice(b"!");
                })
                .await
                .unwrap();
        }
    }
    for c in clients {
        c.await.unwrap();
    }
}

/// A replier whose `serve_one` is dropped again and again while it waits
/// (a serving loop that looks at a stop flag between short timeouts)
/// loses no request: every request is answered once.
async fn serve_cancelled<W: Wire>(a: Address) {
    let o = Options::default();
    let mut server = W::bind_replier(&a, &o).await.unwrap();
    let a = server.address();
    let client = tokio::spawn(async move {
        let mut c = W::connect_requester(&a, &o).await.unwrap();
        for i in 0..300u32 {
            let q = i.to_le_bytes();
            {
                let r = tokio::time::timeout(10 * SEC, c.request(&q))
                    .await
                    .expect("a request lost by a cancelled serve_one")
                    .unwrap();
                assert_eq!(&*r, &q);
            }
            if i % 7 == 0 {
                tokio::time::sleep(std::time::Duration::from_micros(300)).await;
            }
        }
    });
    let mut served = 0;
    let start = std::time::Instant::now();
    while served < 300 {
        assert!(
            start.elapsed() < 60 * SEC,
            "{served} of 300 requests served"
        );
        // Timeouts short enough to fall mid-receive now and then.
        let t = std::time::Duration::from_micros(50 + (served as u64 * 37) % 400);
        if let Ok(r) = tokio::time::timeout(t, server.serve_one(|q| q.to_vec())).await {
            r.unwrap();
            served += 1;
        }
    }
    client.await.unwrap();
}

/// Requests cut short at every point of their exchange (before they are
/// sent, while the replier has them, while the reply is on its way) leave
/// nothing behind: each request that completes gets its own reply, never
/// a late one meant for a request given up before it.
async fn requests_cancelled<W: Wire>(a: Address) {
    let o = Options::default();
    let mut server = W::bind_replier(&a, &o).await.unwrap();
    let a = server.address();
    let serving = tokio::spawn(async move {
        let mut k = 0u64;
        loop {
            // A replier that is sometimes slow, so that cancellations
            // fall while it holds the request, too.
            k += 1;
            if k.is_multiple_of(3) {
                tokio::time::sleep(Duration::from_micros(50 + (k * 97) % 700)).await;
            }
            if server.serve_one(|q| q.to_vec()).await.is_err() {
                return;
            }
        }
    });
    let mut c = W::connect_requester(&a, &o).await.unwrap();
    let (mut cut, mut whole) = (0, 0);
    for i in 0..300u32 {
        let q = i.to_le_bytes();
        let t = Duration::from_micros(u64::from(i * 53) % 900);
        match tokio::time::timeout(t, c.request(&q)).await {
            Err(_) => cut += 1,
            Ok(r) => {
                assert_eq!(&*r.unwrap(), &q, "request {i} got another's reply");
                whole += 1;
            }
        }
        let q = (i + 1_000_000).to_le_bytes();
        let r = tokio::time::timeout(10 * SEC, c.request(&q))
            .await
            .expect("a request after a cancelled one is answered")
            .unwrap();
        assert_eq!(&*r, &q, "the request after {i} got another's reply");
    }
    println!("{cut} requests cut short, {whole} answered in time");
    assert!(cut > 0);
    serving.abort();
}

/// Replies written in place (`serve_one_into`) arrive exactly as written:
/// empty, around the first allocation's size, and large ones written in
/// many small pieces (the wire's memory grows under the writer) or
/// reserved first.
async fn replies_in_place<W: Wire>(a: Address) {
    let o = Options::default();
    let mut server = W::bind_replier(&a, &o).await.unwrap();
    let a = server.address();
    let sizes = [0usize, 1, 200, 255, 256, 257, 300, 4096, 100_000, 1 << 20];
    let client = tokio::spawn(async move {
        let mut c = W::connect_requester(&a, &o).await.unwrap();
        for (i, &n) in sizes.iter().enumerate() {
            for reserve in [false, true] {
                let q = [n.to_le_bytes(), (i as u64).to_le_bytes()].concat();
                let r = tokio::time::timeout(10 * SEC, c.request(&q))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(r.len(), n, "reply {i} (reserve {reserve})");
                assert!(
                    r.iter().enumerate().all(|(k, &b)| b == (k % 251) as u8),
                    "reply {i} (reserve {reserve}) differs"
                );
            }
        }
    });
    for k in 0..2 * sizes.len() {
        server
            .serve_one_into(|q, out| {
                let n = usize::from_le_bytes(q[..8].try_into().unwrap());
                if k % 2 == 1 {
                    out.reserve(n);
                }
                let bytes: Vec<u8> = (0..n).map(|k| (k % 251) as u8).collect();
                for piece in bytes.chunks(1000) {
                    std::io::Write::write_all(out, piece).unwrap();
                }
                assert_eq!(out.len(), n);
            })
            .await
            .unwrap();
    }
    client.await.unwrap();
}

/// A reply over the replier's message limit is refused to the replier,
/// and its requester learns at once that no answer comes (an error, not a
/// wait without end); the replier then serves on. Network wires only: the
/// shm and in-process repliers do not apply `max_message` to replies.
#[cfg(any(feature = "nng", feature = "quic"))]
async fn reply_over_limit<W: Wire>(a: Address) {
    let o = Options::default()
        .max_message(1024)
        .connect_timeout(Duration::from_millis(500));
    let mut server = W::bind_replier(&a, &o).await.unwrap();
    let a = server.address();
    let client = tokio::spawn(async move {
        let mut c = W::connect_requester(&a, &o).await.unwrap();
        let big = tokio::time::timeout(10 * SEC, c.request(b"big"))
            .await
            .map(|r| r.map(|f| f.len()));
        assert!(
            matches!(big, Ok(Err(_))),
            "an unanswerable request: {big:?}"
        );
        let mut c = W::connect_requester(&a, &o).await.unwrap();
        let r = tokio::time::timeout(10 * SEC, c.request(b"small"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*r, b"small!");
    });
    let served = async {
        loop {
            match server
                .serve_one(|q| {
                    if q == b"big" {
                        vec![0; 4096]
                    } else {
                        [q, b"!"].concat()
                    }
                })
                .await
            {
                Err(Error::TooLarge { .. }) => continue,
                r => r.unwrap(),
            }
        }
    };
    tokio::select! {
        _ = served => {}
        r = client => r.unwrap(),
    }
}

/// `a` as a binder takes it: without a QUIC pin (a binder makes its own
/// certificate).
fn bindable(a: &Address) -> Address {
    match a {
        Address::Quic { host, port, .. } => Address::Quic {
            host: host.clone(),
            port: *port,
            pin: None,
        },
        a => a.clone(),
    }
}

async fn unbound<W: Wire>(a: Address) {
    let o = Options::default().connect_timeout(Duration::from_millis(200));
    match W::connect_subscriber(&a, &o).await {
        Err(Error::NotBound { .. }) => {}
        Err(e) => panic!("connecting to nobody: {e}"),
        Ok(_) => panic!("connected to nobody"),
    }
    let p = W::bind_publisher(&bindable(&a), &o).await.unwrap();
    match W::bind_publisher(&bindable(&p.address()), &o).await {
        Err(Error::AddrInUse { .. }) => {}
        Err(e) => panic!("binding a bound address: {e}"),
        Ok(_) => panic!("bound a bound address twice"),
    }
}

/// `quic://127.0.0.1:PORT?pin=…` with a UDP port free a moment ago and a
/// pin nobody has (binders drop the pin; connecting to it finds nobody).
#[cfg(feature = "quic")]
fn quic_addr(_tag: &str) -> Address {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("quic://127.0.0.1:{port}?pin={}", "ab".repeat(32))
        .parse()
        .unwrap()
}

/// `SCHEME://c-TAG-PID`.
fn named(scheme: &str, tag: &str) -> Address {
    format!("{scheme}://c-{tag}-{}", std::process::id())
        .parse()
        .unwrap()
}

macro_rules! suite {
    ($module:ident, $wire:ty, $addr:expr) => {
        mod $module {
            use super::*;

            fn addr(tag: &str) -> Address {
                let f: fn(&str) -> Address = $addr;
                f(tag)
            }

            #[test]
            fn publish_subscribe() {
                rt().block_on(pubsub::<$wire>(bindable(&addr("pubsub"))));
            }

            #[test]
            fn backpressure_and_cancellation() {
                rt().block_on(super::backpressure_and_cancellation::<$wire>(bindable(
                    &addr("bp"),
                )));
            }

            #[test]
            fn push_pull() {
                rt().block_on(pushpull::<$wire>(bindable(&addr("pushpull"))));
            }

            #[test]
            fn request_reply() {
                rt().block_on(reqrep::<$wire>(bindable(&addr("reqrep"))));
            }

            #[test]
            fn a_cancelled_serve_loses_no_request() {
                rt().block_on(serve_cancelled::<$wire>(bindable(&addr("cancel"))));
            }

            #[test]
            fn requests_cancelled_leave_no_reply_behind() {
                rt().block_on(requests_cancelled::<$wire>(bindable(&addr("cut"))));
            }

            #[test]
            fn replies_written_in_place() {
                rt().block_on(replies_in_place::<$wire>(bindable(&addr("inplace"))));
            }

            #[test]
            fn unbound_and_taken_names() {
                rt().block_on(unbound::<$wire>(addr("names")));
            }
        }
    };
}

suite!(inproc, InProc, |t| named("inproc", t));
#[cfg(feature = "shm")]
suite!(shm, shoal_transport::Shm, |t| named("shm", t));
#[cfg(feature = "nng")]
suite!(nng_ipc, shoal_transport::Nng, common::ipc_addr);
#[cfg(feature = "nng")]
suite!(nng_tcp, shoal_transport::Nng, |_| common::tcp_addr(
    "nng+tcp"
));
#[cfg(feature = "quic")]
suite!(quic, shoal_transport::Quic, quic_addr);

/// [`reply_over_limit`] on each network wire.
#[cfg(any(feature = "nng", feature = "quic"))]
mod reply_limit {
    use super::*;

    #[cfg(feature = "nng")]
    #[test]
    fn nng_tcp_a_reply_over_the_limit_is_an_error_for_both_ends() {
        rt().block_on(reply_over_limit::<shoal_transport::Nng>(common::tcp_addr(
            "nng+tcp",
        )));
    }

    #[cfg(feature = "nng")]
    #[test]
    fn nng_ipc_a_reply_over_the_limit_is_an_error_for_both_ends() {
        rt().block_on(reply_over_limit::<shoal_transport::Nng>(common::ipc_addr(
            "overlimit",
        )));
    }

    #[cfg(feature = "quic")]
    #[test]
    fn quic_a_reply_over_the_limit_is_an_error_for_both_ends() {
        rt().block_on(reply_over_limit::<shoal_transport::Quic>(bindable(
            &quic_addr("overlimit"),
        )));
    }
}
