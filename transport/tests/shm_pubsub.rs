//! Publish/subscribe over shared memory (issue 7): delivery, order, sizes,
//! topics, typed frames, backpressure, close, a dead publisher, and a
//! subscriber in another process.
#![cfg(feature = "shm")]

mod common;

use common::{rt, SEC};

use shoal_transport::{Address, Error, Options, ShmPublisher, ShmSubscriber};
use std::time::Duration;

fn addr(tag: &str) -> Address {
    common::shm_addr("t", tag)
}

/// Deterministic payload `i` of `len` bytes.
fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|k| (k as u64 * 31 + i * 7) as u8).collect()
}

#[test]
fn every_subscriber_gets_every_message_in_order_at_every_size() {
    rt().block_on(async {
        let a = addr("order");
        let opts = Options::default().capacity(1 << 20);
        let mut p = ShmPublisher::bind(&a, &opts).unwrap();
        let mut s1 = ShmSubscriber::connect(&a, &opts).await.unwrap();
        let mut s2 = ShmSubscriber::connect(&a, &opts).await.unwrap();
        p.wait_for_subscribers(2, 5 * SEC).await.unwrap();
        // 0 B to 3 MiB: inline records and overflow segments alike.
        let sizes = [0usize, 1, 15, 16, 17, 48, 4096, 65_536, 300_000, 3 << 20];
        let reader = |mut s: ShmSubscriber| async move {
            for (i, &n) in sizes.iter().enumerate() {
                let f = tokio::time::timeout(5 * SEC, s.recv())
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(f.topic(), b"t", "message {i}");
                assert_eq!(&*f, &payload(i as u64, n)[..], "message {i}");
                assert_eq!(f.as_ptr() as usize % 16, 0, "message {i} misaligned");
            }
            s
        };
        let r1 = tokio::spawn(reader(s1));
        let r2 = tokio::spawn(reader(s2));
        for (i, &n) in sizes.iter().enumerate() {
            p.send(b"t", &payload(i as u64, n)).await.unwrap();
        }
        s1 = r1.await.unwrap();
        s2 = r2.await.unwrap();
        drop(p);
        for s in [&mut s1, &mut s2] {
            assert!(matches!(s.recv().await, Err(Error::Closed)));
        }
    });
}

#[test]
fn subscribers_get_only_the_topics_they_asked_for() {
    rt().block_on(async {
        let a = addr("topics");
        let o = Options::default();
        let mut p = ShmPublisher::bind(&a, &o).unwrap();
        let mut all = ShmSubscriber::connect(&a, &o).await.unwrap();
        let mut px = ShmSubscriber::connect(&a, &o).await.unwrap();
        px.subscribe(b"prices.");
        px.subscribe(b"halt");
        p.wait_for_subscribers(2, 5 * SEC).await.unwrap();
        let topics: [&[u8]; 5] = [b"prices.eu", b"news", b"halt", b"", b"prices.us"];
        for (i, t) in topics.iter().enumerate() {
            p.send(t, &[i as u8]).await.unwrap();
        }
        drop(p);
        let mut got_all = Vec::new();
        while let Ok(f) = all.recv().await {
            got_all.push(f[0]);
        }
        let mut got_px = Vec::new();
        while let Ok(f) = px.recv().await {
            got_px.push((f.topic().to_vec(), f[0]));
        }
        assert_eq!(got_all, [0, 1, 2, 3, 4]);
        assert_eq!(
            got_px,
            [
                (b"prices.eu".to_vec(), 0),
                (b"halt".to_vec(), 2),
                (b"prices.us".to_vec(), 4)
            ]
        );
    });
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Tick {
    seq: u64,
    symbol: String,
    levels: Vec<u32>,
}

#[test]
fn typed_messages_are_read_in_place_and_validated() {
    rt().block_on(async {
        let a = addr("typed");
        let o = Options::default().capacity(1 << 16);
        let mut p = ShmPublisher::bind(&a, &o).unwrap();
        let mut s = ShmSubscriber::connect(&a, &o).await.unwrap();
        p.wait_for_subscribers(1, 5 * SEC).await.unwrap();
        // Small ones archive straight into the ring; a big one spills and
        // grows the hint.
        for (seq, n) in [(1u64, 3usize), (2, 2000), (3, 5)] {
            let t = Tick {
                seq,
                symbol: "ABC".into(),
                levels: (0..n as u32).collect(),
            };
            p.send_value(b"ticks", &t).await.unwrap();
            let f = s.recv().await.unwrap();
            assert!(f.is_borrowed());
            let Ok(t) = f.archived::<Tick>() else {
                panic!("invalid archive")
            };
            assert_eq!(t.seq.to_native(), seq);
            assert_eq!(t.symbol.as_str(), "ABC");
            assert_eq!(t.levels.len(), n);
        }
        // Raw bytes that are no archive are an error, not a panic.
        p.send(b"ticks", &[0xff; 24]).await.unwrap();
        let f = s.recv().await.unwrap();
        assert!(f.archived::<Tick>().is_err());
    });
}

#[test]
fn a_full_ring_holds_the_publisher_back_and_a_send_timeout_ends_the_wait() {
    rt().block_on(async {
        let a = addr("full");
        let o = Options::default()
            .capacity(1 << 14)
            .send_timeout(Some(Duration::from_millis(200)));
        let mut p = ShmPublisher::bind(&a, &o).unwrap();
        let mut s = ShmSubscriber::connect(&a, &o).await.unwrap();
        p.wait_for_subscribers(1, 5 * SEC).await.unwrap();
        let mut sent = 0u32;
        let err = loop {
            match p.send(b"", &[7u8; 1000]).await {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 100, "a 16 KiB ring took 100 KiB unread");
        };
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        // Nothing was lost: the subscriber reads exactly what was sent,
        // and then the publisher has room again.
        for _ in 0..sent {
            assert_eq!(s.recv().await.unwrap().len(), 1000);
        }
        p.send(b"", b"again").await.unwrap();
        assert_eq!(&*s.recv().await.unwrap(), b"again");
    });
}

#[test]
fn a_name_is_held_by_its_live_publisher_only() {
    rt().block_on(async {
        let a = addr("name");
        let o = Options::default();
        let p = ShmPublisher::bind(&a, &o).unwrap();
        assert!(matches!(
            ShmPublisher::bind(&a, &o),
            Err(Error::AddrInUse { .. })
        ));
        drop(p);
        let _p2 = ShmPublisher::bind(&a, &o).unwrap();
        let missing = addr("nobody");
        let e = ShmSubscriber::connect(&missing, &o.connect_timeout(Duration::from_millis(50)))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NotBound { .. }), "{e}");
    });
}

#[test]
fn oversized_messages_are_refused_before_they_are_sent() {
    rt().block_on(async {
        let a = addr("big");
        let o = Options::default().max_message(1000);
        let mut p = ShmPublisher::bind(&a, &o).unwrap();
        let e = p.send(b"", &[0u8; 1001]).await.unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        p.send(b"", &[0u8; 1000]).await.unwrap();
    });
}

/// A subscriber in another process; the publisher, another process too,
/// then dies without closing (abort): the subscriber drains what was sent,
/// then gets PeerGone, not a hang.
#[test]
fn a_subscriber_in_another_process_sees_everything_then_its_publisher_die() {
    if let Ok(name) = std::env::var("SHOAL_T_SUB") {
        return subscriber_child(&name);
    }
    let a = addr("xproc");
    let name = match &a {
        Address::Shm { name } => name.clone(),
        _ => unreachable!(),
    };
    // The publisher is a child too, so it can be killed.
    let exe = std::env::current_exe().unwrap();
    let mut publisher = std::process::Command::new(&exe)
        .args(["--exact", "publisher_child_entry", "--nocapture"])
        .env("SHOAL_T_PUB", &name)
        .spawn()
        .unwrap();
    let sub = std::process::Command::new(&exe)
        .args([
            "--exact",
            "a_subscriber_in_another_process_sees_everything_then_its_publisher_die",
            "--nocapture",
        ])
        .env("SHOAL_T_SUB", &name)
        .output();
    let _ = publisher.kill();
    let _ = publisher.wait();
    let out = sub.unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUBSCRIBER OK"), "{text}");
    // The dead publisher's name file stays behind: cleanup removes it (and
    // leaves live names alone), and the name is free again either way.
    let live = ShmPublisher::bind(&addr("live"), &Options::default()).unwrap();
    let path = format!("/dev/shm/shoalname.{name}");
    assert!(std::path::Path::new(&path).exists());
    assert!(shoal_transport::shm::names::cleanup_stale().unwrap() >= 1);
    assert!(!std::path::Path::new(&path).exists());
    assert!(
        std::path::Path::new(&format!("/dev/shm/shoalname.t-live-{}", std::process::id())).exists()
    );
    drop(live);
    rt().block_on(async {
        let p = ShmPublisher::bind(&a, &Options::default());
        assert!(p.is_ok(), "{:?}", p.err());
    });
}

fn subscriber_child(name: &str) {
    rt().block_on(async {
        let a: Address = format!("shm://{name}").parse().unwrap();
        let o = Options::default();
        let mut s = ShmSubscriber::connect(&a, &o).await.unwrap();
        for i in 0..1000u64 {
            let f = tokio::time::timeout(10 * SEC, s.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                &*f,
                &payload(i, (i as usize * 13) % 5000)[..],
                "message {i}"
            );
        }
        // The publisher aborts a moment after its last send.
        let t0 = std::time::Instant::now();
        let e = tokio::time::timeout(10 * SEC, s.recv())
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, Error::PeerGone { .. }), "{e}");
        println!("SUBSCRIBER OK after {:?}", t0.elapsed());
    });
}

/// Run only as a child of the cross-process test.
#[test]
fn publisher_child_entry() {
    let Ok(name) = std::env::var("SHOAL_T_PUB") else {
        return;
    };
    rt().block_on(async {
        let a: Address = format!("shm://{name}").parse().unwrap();
        let o = Options::default();
        let mut p = ShmPublisher::bind(&a, &o).unwrap();
        p.wait_for_subscribers(1, 10 * SEC).await.unwrap();
        for i in 0..1000u64 {
            p.send(b"", &payload(i, (i as usize * 13) % 5000))
                .await
                .unwrap();
        }
        // Die without closing anything (no destructor runs), once the
        // subscriber had time to drain what was sent.
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::process::abort();
    });
}

/// Review 8 (C1): a send cancelled while it waits for room left the
/// writer's lock to a blocking-pool wait, and the next call blocked the
/// runtime thread on that lock. On a current-thread runtime whose
/// subscriber needs that thread to drain, that froze everything until the
/// old wait gave up. The next call now joins the old wait first.
#[test]
fn a_cancelled_send_does_not_freeze_the_runtime() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let a = addr("cancelled");
            let o = Options::default().capacity(1 << 14);
            let mut p = ShmPublisher::bind(&a, &o).unwrap();
            let mut s = ShmSubscriber::connect(&a, &o).await.unwrap();
            p.wait_for_subscribers(1, 5 * SEC).await.unwrap();
            let mut sent = 0u32;
            // Fill the ring; the send that finds it full is cancelled.
            loop {
                let r = tokio::time::timeout(Duration::from_millis(50), p.send(b"", &[1u8; 1000]));
                match r.await {
                    Ok(r) => {
                        r.unwrap();
                        sent += 1;
                    }
                    Err(_) => break,
                }
            }
            let t0 = std::time::Instant::now();
            // The subscriber drains on this same thread while the next
            // send waits: both must finish promptly.
            let drain = async {
                for _ in 0..=sent {
                    s.recv().await.unwrap();
                }
            };
            let send = async {
                p.send(b"", b"after").await.unwrap();
            };
            tokio::time::timeout(5 * SEC, async { tokio::join!(drain, send) })
                .await
                .expect("the runtime froze");
            assert!(t0.elapsed() < 2 * SEC, "took {:?}", t0.elapsed());
        });
}

/// Review 8 (C8, C4): what sits at a name file's path is trusted only if
/// it is a regular 0600 file of ours: a planted FIFO neither hangs a
/// connect nor a bind, a file with other permissions is refused, and the
/// ring cleanup of shoal-shm-ring leaves live name files alone.
#[test]
fn planted_name_files_are_refused_and_ring_cleanup_spares_live_names() {
    rt().block_on(async {
        let o = Options::default().connect_timeout(Duration::from_millis(100));
        let fifo = addr("fifo");
        let Address::Shm { name } = &fifo else {
            unreachable!()
        };
        let path = format!("/dev/shm/shoalname.{name}");
        let c = std::ffi::CString::new(path.clone()).unwrap();
        // SAFETY: a NUL-terminated path; mkfifo creates a FIFO there.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t0 = std::time::Instant::now();
        assert!(ShmSubscriber::connect(&fifo, &o).await.is_err());
        assert!(ShmPublisher::bind(&fifo, &o).is_err());
        assert!(t0.elapsed() < 2 * SEC);
        std::fs::remove_file(&path).unwrap();

        let open = addr("mode");
        let Address::Shm { name } = &open else {
            unreachable!()
        };
        let path = format!("/dev/shm/shoalname.{name}");
        std::fs::write(&path, b"shm://shoal-bc-0000000000000000").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let e = ShmPublisher::bind(&open, &o).unwrap_err();
        assert!(e.to_string().contains("0600"), "{e}");
        std::fs::remove_file(&path).unwrap();

        let live = addr("spared");
        let _p = ShmPublisher::bind(&live, &o).unwrap();
        shoal_shm_ring::cleanup_stale().unwrap();
        assert!(ShmSubscriber::connect(&live, &o).await.is_ok());
    });
}

/// A name file a binder left half-written (garbage) is taken over.
#[test]
fn a_garbage_name_file_of_ours_is_taken_over() {
    let a = addr("garbage");
    let Address::Shm { name } = &a else {
        unreachable!()
    };
    let path = format!("/dev/shm/shoalname.{name}");
    std::fs::write(&path, b"not a handle").unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let p = ShmPublisher::bind(&a, &Options::default()).unwrap();
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .starts_with("shm://shoal-bc-"));
    drop(p);
    assert!(!std::path::Path::new(&path).exists());
}

/// Issue 7 item 7: a subscriber whose publisher died (another process,
/// aborting) reports PeerGone once, then reconnects by itself to the
/// publisher that binds the name next.
#[test]
fn a_subscriber_reconnects_to_the_next_publisher() {
    if let Ok(name) = std::env::var("SHOAL_T_PUB2") {
        rt().block_on(async {
            let a: Address = format!("shm://{name}").parse().unwrap();
            let mut p = ShmPublisher::bind(&a, &Options::default()).unwrap();
            p.wait_for_subscribers(1, 10 * SEC).await.unwrap();
            for i in 0..10u8 {
                p.send(b"", &[i]).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            std::process::abort();
        });
        return;
    }
    rt().block_on(async {
        let a = addr("reconnect");
        let Address::Shm { name } = &a else {
            unreachable!()
        };
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_subscriber_reconnects_to_the_next_publisher",
                "--nocapture",
            ])
            .env("SHOAL_T_PUB2", name)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut s = ShmSubscriber::connect(&a, &Options::default())
            .await
            .unwrap();
        for i in 0..10u8 {
            assert_eq!(&*s.recv().await.unwrap(), &[i]);
        }
        let e = tokio::time::timeout(10 * SEC, s.recv())
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, Error::PeerGone { .. }), "{e}");
        let _ = child.wait();
        // The next receive waits for a new publisher and gets its message.
        let next = tokio::spawn(async move {
            let f = tokio::time::timeout(10 * SEC, s.recv())
                .await
                .unwrap()
                .unwrap();
            f.to_vec()
        });
        let mut p = ShmPublisher::bind(&a, &Options::default()).unwrap();
        p.wait_for_subscribers(1, 10 * SEC).await.unwrap();
        p.send(b"", b"again").await.unwrap();
        assert_eq!(next.await.unwrap(), b"again");
    });
}

/// Review 10: a send cancelled while it waits for room leaves that wait in
/// the blocking pool; dropping the publisher cancels it, so the runtime
/// shuts down promptly (it used to wait out the stall timeout).
#[test]
fn dropping_a_publisher_ends_its_background_wait() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = rt();
        let a = addr("pubdrop");
        let o = Options::default().capacity(1 << 14);
        rt.block_on(async {
            let mut p = ShmPublisher::bind(&a, &o).unwrap();
            let _s = ShmSubscriber::connect(&a, &o).await.unwrap();
            p.wait_for_subscribers(1, 5 * SEC).await.unwrap();
            // Fill the ring (the subscriber never reads), then a send
            // that waits and is cancelled.
            while tokio::time::timeout(Duration::from_millis(20), p.send(b"", &[0u8; 2000]))
                .await
                .is_ok()
            {}
            drop(p);
        });
        drop(rt);
        tx.send(()).unwrap();
    });
    rx.recv_timeout(3 * SEC)
        .expect("the runtime did not shut down: a background wait kept waiting");
}
