//! A Broadcast with local and remote readers on one host: remote readers
//! attach through the writer's network publisher (loopback here; across
//! network namespaces in the workspace's `tests/`), and get what the
//! ring's readers get, in the same order, typed messages in place too.

use shoal_channel::{Broadcast, BroadcastOptions, BroadcastReceiver, Error};
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

fn opts(readers: u32) -> BroadcastOptions {
    BroadcastOptions::new(readers)
        .capacity(1 << 16)
        .recv_timeout(Some(20 * SEC))
        .send_timeout(Some(20 * SEC))
}

#[cfg(any(feature = "nng", feature = "quic"))]
fn mixed(bind: &str) {
    #[derive(rkyv::Archive, rkyv::Serialize)]
    struct Step {
        n: u64,
        tokens: Vec<u32>,
    }
    let o = opts(3).remote(2, bind);
    let mut b = Broadcast::create(&o).unwrap();
    let h = b.handle().clone();
    assert!(h.remote().is_some());
    // This host's readers would read the ring; these two are made remote.
    let readers: Vec<BroadcastReceiver> = vec![
        BroadcastReceiver::attach_with(&h, 0, &o).unwrap(),
        BroadcastReceiver::attach_remote(&h, 1, &o).unwrap(),
        BroadcastReceiver::attach_remote(&h, 2, &o).unwrap(),
    ];
    assert_eq!(
        readers.iter().map(|r| r.is_remote()).collect::<Vec<_>>(),
        [false, true, true]
    );
    b.wait_until_ready(10 * SEC).unwrap();
    let threads: Vec<_> = readers
        .into_iter()
        .map(|mut r| {
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for n in 0..200u64 {
                    let m = r.recv().unwrap();
                    assert_eq!(m.seq(), n);
                    if n % 2 == 0 {
                        assert_eq!(&*m, &vec![n as u8; (n as usize * 97) % 5000][..]);
                    } else {
                        let s = m.archived::<Step>().unwrap();
                        assert_eq!(s.n, n);
                        assert_eq!(s.tokens.len(), n as usize);
                    }
                    // Several held at once, local or remote.
                    held.push(m);
                    if held.len() > 5 {
                        held.remove(0);
                    }
                }
                drop(held);
                matches!(r.recv(), Err(Error::Ring(shoal_shm_ring::Error::Closed)))
            })
        })
        .collect();
    for n in 0..200u64 {
        let seq = if n % 2 == 0 {
            b.send(&vec![n as u8; (n as usize * 97) % 5000]).unwrap()
        } else {
            b.send_value(&Step {
                n,
                tokens: (0..n as u32).collect(),
            })
            .unwrap()
        };
        assert_eq!(seq, n);
    }
    drop(b);
    for t in threads {
        assert!(
            t.join().unwrap(),
            "a reader did not learn the writer closed"
        );
    }
}

#[cfg(feature = "nng")]
#[test]
fn local_and_remote_readers_over_nng_get_everything_in_order() {
    mixed("nng+tcp://127.0.0.1:0");
}

#[cfg(feature = "quic")]
#[test]
fn local_and_remote_readers_over_quic_get_everything_in_order() {
    mixed("quic://127.0.0.1:0");
}

/// All readers counted remote: a reader on this host that attaches to
/// the ring anyway still gets everything (the ring is written whatever
/// the count).
#[cfg(feature = "nng")]
#[test]
fn a_local_reader_of_an_all_remote_broadcast_still_reads() {
    let o = opts(1).remote(1, "nng+tcp://127.0.0.1:0");
    let mut b = Broadcast::create(&o).unwrap();
    let mut far = BroadcastReceiver::attach_remote(b.handle(), 0, &o).unwrap();
    let mut near = BroadcastReceiver::attach_local(b.handle(), 1, &o).unwrap();
    b.wait_until_ready(10 * SEC).unwrap();
    b.send(b"one").unwrap();
    // The local reader was not waited for: it reads from when the writer
    // saw it, which a send after its attach guarantees.
    b.send(b"two").unwrap();
    assert_eq!(&*far.recv().unwrap(), b"one");
    assert_eq!(&*far.recv().unwrap(), b"two");
    let first = near.recv().unwrap();
    assert!(&*first == b"one" || &*first == b"two");
}

#[cfg(feature = "nng")]
/// A message the network cannot carry (over its size limit) fails the
/// send for every reader: the local one does not get it either, and the
/// next message has its number, for both.
#[cfg(feature = "nng")]
#[test]
fn a_send_the_network_refuses_reaches_no_reader() {
    let o = opts(2)
        .remote(1, "nng+tcp://127.0.0.1:0")
        .net(shoal_transport::Options::default().max_message(4096));
    let mut b = Broadcast::create(&o).unwrap();
    let h = b.handle().clone();
    let mut local = BroadcastReceiver::attach_with(&h, 0, &o).unwrap();
    let mut remote = BroadcastReceiver::attach_remote(&h, 1, &o).unwrap();
    b.wait_until_ready(10 * SEC).unwrap();
    assert_eq!(b.send(b"first").unwrap(), 0);
    assert!(b.send(&[7u8; 10_000]).is_err());
    assert_eq!(b.send(b"second").unwrap(), 1);
    for r in [&mut local, &mut remote] {
        let m = r.recv().unwrap();
        assert_eq!((&*m, m.seq()), (&b"first"[..], 0));
        drop(m);
        let m = r.recv().unwrap();
        assert_eq!((&*m, m.seq()), (&b"second"[..], 1));
    }
}

#[test]
fn remote_readers_that_never_come_are_counted() {
    let o = opts(2).remote(1, "nng+tcp://127.0.0.1:0");
    let mut b = Broadcast::create(&o).unwrap();
    let _local = BroadcastReceiver::attach_with(b.handle(), 0, &o).unwrap();
    match b.wait_until_ready(Duration::from_millis(300)) {
        Err(Error::ReadersMissing {
            expected, joined, ..
        }) => assert_eq!((expected, joined), (2, 1)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn remote_readers_need_an_address_and_a_backend() {
    assert!(matches!(
        Broadcast::create(&BroadcastOptions::new(2).remote(3, "nng+tcp://127.0.0.1:0")),
        Err(Error::BadOptions(_))
    ));
    let mut o = opts(2);
    o.remote_readers = 1;
    assert!(matches!(Broadcast::create(&o), Err(Error::BadOptions(_))));
    assert!(matches!(
        Broadcast::create(&opts(2).remote(1, "shm://nope")),
        Err(Error::Net(_))
    ));
    // A writer that took no remote readers refuses them.
    let b = Broadcast::create(&opts(1)).unwrap();
    assert!(matches!(
        BroadcastReceiver::attach_remote(b.handle(), 0, &opts(1)),
        Err(Error::BadHandle(_))
    ));
    #[cfg(not(feature = "quic"))]
    match Broadcast::create(&opts(2).remote(1, "quic://127.0.0.1:0")) {
        Err(Error::Net(e)) => assert!(e.to_string().contains("quic"), "{e}"),
        other => panic!("{other:?}"),
    }
}

/// A remote reader whose publisher is not a Broadcast's (a peer sending
/// frames of another protocol): each such message is refused with a
/// clear error, and what follows is read.
#[cfg(feature = "nng")]
#[test]
fn frames_of_another_protocol_are_refused_by_name() {
    use shoal_channel::Handle;
    use shoal_transport::blocking::Blocking;
    use shoal_transport::{Nng, Options, Wire};
    let a: shoal_transport::Address = "nng+tcp://127.0.0.1:0".parse().unwrap();
    let mut p = Blocking::new(Nng::bind_publisher(&a, &Options::default())).unwrap();
    let at = shoal_transport::Publisher::address(p.get_mut()).to_string();
    // A real broadcast's handle, its remote address swapped for the
    // foreign publisher's.
    let b = Broadcast::create(&opts(1).remote(1, "nng+tcp://127.0.0.1:0")).unwrap();
    let text = b.handle().to_string();
    let (head, _) = text.split_once("&remote=").unwrap();
    let h: Handle = format!("{head}&remote={at}").parse().unwrap();
    let mut r = BroadcastReceiver::attach_remote(&h, 0, &opts(1)).unwrap();
    p.wait_for_subscribers(1, 10 * SEC).unwrap();
    p.publish(b"no sequence number", b"junk").unwrap();
    p.publish(&7u64.to_le_bytes(), b"fine").unwrap();
    match r.recv() {
        Err(Error::Malformed { what, .. }) => assert!(what.contains("sequence"), "{what}"),
        other => panic!("{other:?}"),
    }
    let m = r.recv().unwrap();
    assert_eq!((m.seq(), &*m), (7, &b"fine"[..]));
}

/// A remote reader awaited from tokio gets every message, then the close.
#[cfg(feature = "nng")]
#[test]
fn a_remote_reader_awaits_its_messages() {
    let o = opts(1).remote(1, "nng+tcp://127.0.0.1:0");
    let mut b = Broadcast::create(&o).unwrap();
    let mut r = BroadcastReceiver::attach_remote(b.handle(), 0, &o).unwrap();
    b.wait_until_ready(10 * SEC).unwrap();
    let reader = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let task = tokio::spawn(async move {
                for n in 0..100u64 {
                    let m = r.recv_async().await.unwrap();
                    assert_eq!((m.seq(), m[0]), (n, n as u8));
                }
                matches!(
                    r.recv_async().await,
                    Err(Error::Ring(shoal_shm_ring::Error::Closed))
                )
            });
            task.await.unwrap()
        })
    });
    for n in 0..100u64 {
        b.send(&[n as u8; 100]).unwrap();
    }
    drop(b);
    assert!(reader.join().unwrap(), "the close was not seen");
}

/// A remote receive waiting for a message that never comes ends when its
/// token is cancelled.
#[cfg(feature = "nng")]
#[test]
fn a_remote_receive_can_be_cancelled() {
    let o = opts(1)
        .remote(1, "nng+tcp://127.0.0.1:0")
        .recv_timeout(None);
    let mut b = Broadcast::create(&o).unwrap();
    let mut r = BroadcastReceiver::attach_remote(b.handle(), 0, &o).unwrap();
    b.wait_until_ready(10 * SEC).unwrap();
    let stop = shoal_channel::CancelToken::new();
    stop.cancel();
    assert!(matches!(
        r.recv_cancellable(&stop),
        Err(Error::Cancelled { .. })
    ));
    b.send(b"after").unwrap();
    let fresh = shoal_channel::CancelToken::new();
    assert_eq!(&*r.recv_cancellable(&fresh).unwrap(), b"after");
}

/// Readiness within 800 ms fails with `ReadersMissing` saying
/// `(expected, joined)` and naming `missing`.
#[cfg(any(feature = "nng", feature = "quic"))]
fn expect_missing(b: &mut Broadcast, counts: (u32, u32), missing: &[u32]) {
    match b.wait_until_ready(Duration::from_millis(800)) {
        Err(Error::ReadersMissing {
            expected,
            joined,
            missing: named,
            ..
        }) => {
            assert_eq!((expected, joined), counts);
            assert_eq!(named, missing);
        }
        other => panic!("not ReadersMissing: {other:?}"),
    }
}

/// Readiness names the readers that never came, remote ones too (each
/// remote reader says who it is once subscribed); the writer lists the
/// remote readers that came.
#[cfg(any(feature = "nng", feature = "quic"))]
fn names_missing_remote_readers(bind: &str) {
    let o = opts(3).remote(2, bind);
    let mut b = Broadcast::create(&o).unwrap();
    let h = b.handle().clone();
    let _r0 = BroadcastReceiver::attach_with(&h, 0, &o).unwrap();
    let _r1 = BroadcastReceiver::attach_remote(&h, 1, &o).unwrap();
    expect_missing(&mut b, (3, 2), &[2]);
    let far = b.remote_readers();
    assert_eq!(far.len(), 1);
    assert_eq!((far[0].index, far[0].pid), (1, std::process::id()));
}

#[cfg(feature = "nng")]
#[test]
fn nng_readiness_names_missing_remote_readers() {
    names_missing_remote_readers("nng+tcp://127.0.0.1:0");
}

#[cfg(feature = "quic")]
#[test]
fn quic_readiness_names_missing_remote_readers() {
    names_missing_remote_readers("quic://127.0.0.1:0");
}

/// A connection to the publisher is not a reader: a stranger subscribed
/// there (no hello) leaves readiness waiting for the reader it stands in
/// for, named; the reader itself then makes it ready.
#[cfg(any(feature = "nng", feature = "quic"))]
fn a_stranger_connection_is_not_a_reader<W: shoal_transport::Wire>(bind: &str)
where
    W::Subscriber: Send + 'static,
{
    use shoal_transport::Subscriber;
    let o = opts(2).remote(1, bind);
    let mut b = Broadcast::create(&o).unwrap();
    let h = b.handle().clone();
    let _local = BroadcastReceiver::attach_with(&h, 0, &o).unwrap();
    let at: shoal_transport::Address = h
        .remote()
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut stranger = rt.block_on(W::connect_subscriber(&at, &o.net)).unwrap();
    rt.spawn(async move { while stranger.recv().await.is_ok() {} });
    // (A stranger's connection must not make it ready.)
    expect_missing(&mut b, (2, 1), &[1]);
    let mut r = BroadcastReceiver::attach_remote(&h, 1, &o).unwrap();
    b.wait_until_ready(10 * SEC).unwrap();
    b.send(b"to both").unwrap();
    assert_eq!(&*r.recv().unwrap(), b"to both");
    rt.shutdown_background();
}

#[cfg(feature = "nng")]
#[test]
fn nng_a_stranger_connection_is_not_a_reader() {
    a_stranger_connection_is_not_a_reader::<shoal_transport::Nng>("nng+tcp://127.0.0.1:0");
}

#[cfg(feature = "quic")]
#[test]
fn quic_a_stranger_connection_is_not_a_reader() {
    a_stranger_connection_is_not_a_reader::<shoal_transport::Quic>("quic://127.0.0.1:0");
}

/// What the library logged, captured by a subscriber of the whole process
/// (the broadcast's door logs from a thread of its own).
#[cfg(any(feature = "nng", feature = "quic"))]
mod capture {
    use std::sync::{Mutex, OnceLock};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

    struct Capture;

    struct Line(String);

    impl Visit for Line {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            use std::fmt::Write;
            let _ = write!(self.0, "{}={value:?} ", field.name());
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, e: &Event<'_>) {
            let mut l = Line(String::new());
            e.record(&mut l);
            LINES.lock().unwrap_or_else(|p| p.into_inner()).push(l.0);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    /// Starts capturing (once per process).
    pub fn start() {
        static ONCE: OnceLock<()> = OnceLock::new();
        ONCE.get_or_init(|| {
            let _ = tracing::subscriber::set_global_default(Capture);
        });
    }

    /// The lines logged so far that contain `s`.
    pub fn lines_with(s: &str) -> Vec<String> {
        let l = LINES.lock().unwrap_or_else(|p| p.into_inner());
        l.iter().filter(|l| l.contains(s)).cloned().collect()
    }
}

/// A remote reader that stops reading holds the writer back; past the
/// peer options' `slow_peer_log` the writer's log names it (index, pid,
/// host) and how far it got, as the ring names a slow local reader.
#[cfg(any(feature = "nng", feature = "quic"))]
fn names_a_slow_remote_reader(bind: &str) {
    capture::start();
    let o = opts(2)
        .remote(2, bind)
        .peer(shoal_shm_ring::PeerOptions::default().slow_peer_log(Duration::from_millis(300)))
        .net(shoal_transport::Options::default().stall_timeout(3 * SEC));
    let mut b = Broadcast::create(&o).unwrap();
    let h = b.handle().clone();
    let quick = o.clone().recv_timeout(Some(Duration::from_millis(100)));
    let mut fast = BroadcastReceiver::attach_remote(&h, 0, &quick).unwrap();
    let mut slow = BroadcastReceiver::attach_remote(&h, 1, &o).unwrap();
    b.wait_until_ready(10 * SEC).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    // One reader keeps up; the other reads three messages and stops.
    let keeps_up = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            match fast.recv() {
                Ok(_) | Err(Error::Timeout { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
    });
    for n in 0..3u8 {
        b.send(&[n; 1000]).unwrap();
        assert_eq!(slow.recv().unwrap().seq(), u64::from(n));
    }
    // Its progress reaches the writer.
    std::thread::sleep(Duration::from_millis(700));
    let payload = vec![7u8; 64 << 10];
    let end = std::time::Instant::now() + 20 * SEC;
    let named = format!(
        "reader 1 (pid {}, host {:#x}) has 3 of",
        std::process::id(),
        shoal_channel::gather::host_id()
    );
    while capture::lines_with(&named).is_empty() && std::time::Instant::now() < end {
        // Held back until the publisher drops the stalled reader (after
        // the stall timeout); sends then go on to the one left.
        let _ = b.send(&payload);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    keeps_up.join().unwrap();
    let lines = capture::lines_with(&named);
    assert!(
        !lines.is_empty(),
        "not named; logged: {:?}",
        capture::lines_with("shoal broadcast")
    );
    eprintln!("logged: {}", lines[0]);
    assert!(lines[0].contains("writer blocked"), "{}", lines[0]);
    // The reader that kept up is not named.
    assert!(!lines[0].contains("reader 0 "), "{}", lines[0]);
    drop(slow);
}

#[cfg(feature = "nng")]
#[test]
fn nng_a_slow_remote_reader_is_named_in_the_log() {
    names_a_slow_remote_reader("nng+tcp://127.0.0.1:0");
}

#[cfg(feature = "quic")]
#[test]
fn quic_a_slow_remote_reader_is_named_in_the_log() {
    names_a_slow_remote_reader("quic://127.0.0.1:0");
}
