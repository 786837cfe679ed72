//! Push/pull over shared memory (issue 7): each message to exactly one
//! puller, every size, backpressure, cancellation, another process.
#![cfg(feature = "shm")]

mod common;

use common::{rt, SEC};

use shoal_transport::{Address, Error, Options, ShmPuller, ShmPusher};
use std::collections::BTreeSet;
use std::time::Duration;

fn addr(tag: &str) -> Address {
    common::shm_addr("tq", tag)
}

#[test]
fn every_message_goes_to_exactly_one_puller() {
    rt().block_on(async {
        let a = addr("once");
        let o = Options::default().capacity(1 << 16);
        let mut p1 = ShmPuller::bind(&a, &o).unwrap();
        let mut p2 = ShmPuller::connect(&a, &o).await.unwrap();
        const N: u32 = 2000;
        let pushers: Vec<_> = (0..2u32)
            .map(|k| {
                let a = a.clone();
                let o = o.clone();
                tokio::spawn(async move {
                    let mut s = ShmPusher::connect(&a, &o).await.unwrap();
                    for i in 0..N {
                        s.send(&(k * N + i).to_le_bytes()).await.unwrap();
                    }
                })
            })
            .collect();
        let pull = |mut p: ShmPuller| async move {
            let mut got = Vec::new();
            while let Ok(Ok(f)) = tokio::time::timeout(SEC / 2, p.recv()).await {
                got.push(u32::from_le_bytes(f[..4].try_into().unwrap()));
            }
            (p, got)
        };
        let (h1, h2) = (tokio::spawn(pull(p1)), tokio::spawn(pull(p2)));
        for p in pushers {
            p.await.unwrap();
        }
        let ((q1, g1), (q2, g2)) = (h1.await.unwrap(), h2.await.unwrap());
        (p1, p2) = (q1, q2);
        let all: BTreeSet<u32> = g1.iter().chain(&g2).copied().collect();
        assert_eq!(
            g1.len() + g2.len(),
            (2 * N) as usize,
            "duplicates or losses"
        );
        assert_eq!(all, (0..2 * N).collect::<BTreeSet<_>>());
        // Each pusher's messages arrive in its order at each puller.
        for g in [&g1, &g2] {
            for k in 0..2 {
                let mine: Vec<u32> = g.iter().copied().filter(|v| v / N == k).collect();
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "pusher {k} reordered");
            }
        }
        drop((p1, p2));
    });
}

#[test]
fn messages_of_every_size_arrive_whole_and_aligned() {
    rt().block_on(async {
        let a = addr("sizes");
        let o = Options::default();
        let mut pull = ShmPuller::bind(&a, &o).unwrap();
        let mut push = ShmPusher::connect(&a, &o).await.unwrap();
        for (i, n) in [0usize, 1, 33, 4096, 200_000, 3 << 20]
            .into_iter()
            .enumerate()
        {
            let m: Vec<u8> = (0..n).map(|k| (k * 7 + i) as u8).collect();
            push.send(&m).await.unwrap();
            let f = tokio::time::timeout(5 * SEC, pull.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&*f, &m[..], "size {n}");
            assert_eq!(f.as_ptr() as usize % 16, 0, "size {n}");
        }
    });
}

#[test]
fn a_cancelled_recv_takes_nothing_and_a_full_queue_times_out() {
    rt().block_on(async {
        let a = addr("cancel");
        let o = Options::default()
            .capacity(1 << 14)
            .send_timeout(Some(Duration::from_millis(200)));
        let mut pull = ShmPuller::bind(&a, &o).unwrap();
        let mut push = ShmPusher::connect(&a, &o).await.unwrap();
        // Nothing there: the recv is cancelled by the timeout.
        assert!(tokio::time::timeout(Duration::from_millis(50), pull.recv())
            .await
            .is_err());
        let mut sent = 0u32;
        let e = loop {
            match push.send(&sent.to_le_bytes().repeat(100)).await {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 100, "a 16 KiB queue took 40 KiB");
        };
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        for i in 0..sent {
            let f = pull.recv().await.unwrap();
            assert_eq!(&f[..4], &i.to_le_bytes());
        }
        push.send(b"room again").await.unwrap();
        assert_eq!(&*pull.recv().await.unwrap(), b"room again");
    });
}

/// A pusher in another process.
#[test]
fn a_pusher_in_another_process() {
    if let Ok(name) = std::env::var("SHOAL_TQ_PUSH") {
        rt().block_on(async {
            let a: Address = format!("shm://{name}").parse().unwrap();
            let mut s = ShmPusher::connect(&a, &Options::default()).await.unwrap();
            for i in 0..1000u32 {
                s.send(&i.to_le_bytes().repeat((i % 50) as usize + 1))
                    .await
                    .unwrap();
            }
        });
        return;
    }
    rt().block_on(async {
        let a = addr("xproc");
        let Address::Shm { name } = &a else {
            unreachable!()
        };
        let mut pull = ShmPuller::bind(&a, &Options::default()).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "a_pusher_in_another_process", "--nocapture"])
            .env("SHOAL_TQ_PUSH", name)
            .spawn()
            .unwrap();
        for i in 0..1000u32 {
            let f = tokio::time::timeout(10 * SEC, pull.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&*f, &i.to_le_bytes().repeat((i % 50) as usize + 1)[..]);
        }
        assert!(child.wait().unwrap().success());
    });
}

/// Review 9 (D1): waiting for room in a full queue used to reserve and drop
/// (in an MPMC ring that leaves a tombstone, not room), so a pusher facing
/// a slow puller could spin through dead records and outlive its timeout.
/// Now the send itself waits: large records through a small queue and a
/// slow puller all arrive, in order, in bounded time.
#[test]
fn a_full_queue_and_a_slow_puller_lose_nothing_and_leave_no_dead_records() {
    rt().block_on(async {
        let a = addr("slow");
        let o = Options::default().capacity(1 << 14);
        let mut pull = ShmPuller::bind(&a, &o).unwrap();
        let mut push = ShmPusher::connect(&a, &o).await.unwrap();
        let puller = tokio::spawn(async move {
            for i in 0..60u32 {
                let (head, len) = {
                    let f = tokio::time::timeout(5 * SEC, pull.recv())
                        .await
                        .unwrap()
                        .unwrap();
                    (f[..4].to_vec(), f.len())
                };
                assert_eq!(head, i.to_le_bytes(), "record {i}");
                assert_eq!(len, 3000);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let t0 = std::time::Instant::now();
        for i in 0..60u32 {
            let mut m = vec![0u8; 3000];
            m[..4].copy_from_slice(&i.to_le_bytes());
            push.send(&m).await.unwrap();
        }
        puller.await.unwrap();
        assert!(t0.elapsed() < 10 * SEC, "took {:?}", t0.elapsed());
    });
}

/// Review 9 (D4): a send cancelled while it waits for room goes on in the
/// blocking pool; dropping the pusher makes it give up, so the runtime
/// shuts down promptly instead of waiting for a puller that never comes.
#[test]
fn dropping_a_pusher_ends_its_background_wait() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = rt();
        let a = addr("shutdown");
        let o = Options::default().capacity(1 << 14);
        rt.block_on(async {
            let _pull = ShmPuller::bind(&a, &o).unwrap();
            let mut push = ShmPusher::connect(&a, &o).await.unwrap();
            // Fill the queue, then a send that waits and is cancelled.
            while tokio::time::timeout(Duration::from_millis(20), push.send(&[0u8; 2000]))
                .await
                .is_ok()
            {}
            drop(push);
        });
        drop(rt);
        tx.send(()).unwrap();
    });
    rx.recv_timeout(5 * SEC)
        .expect("the runtime did not shut down: a background send kept waiting");
}

/// Issue 7 item 7: a pusher whose puller died (another process, aborting)
/// moves to the puller that binds the name next, by itself.
#[test]
fn a_pusher_moves_to_the_next_puller() {
    if let Ok(name) = std::env::var("SHOAL_TQ_PULL") {
        rt().block_on(async {
            let a: Address = format!("shm://{name}").parse().unwrap();
            let mut q = ShmPuller::bind(&a, &Options::default()).unwrap();
            for i in 0..5u8 {
                let f = tokio::time::timeout(10 * SEC, q.recv())
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(&*f, &[i]);
            }
            std::process::abort();
        });
        return;
    }
    rt().block_on(async {
        let a = addr("moves");
        let Address::Shm { name } = &a else {
            unreachable!()
        };
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_pusher_moves_to_the_next_puller",
                "--nocapture",
            ])
            .env("SHOAL_TQ_PULL", name)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut push = ShmPusher::connect(&a, &Options::default()).await.unwrap();
        for i in 0..5u8 {
            push.send(&[i]).await.unwrap();
        }
        let _ = child.wait();
        let mut q = ShmPuller::bind(&a, &Options::default()).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        push.send(b"after").await.unwrap();
        let f = tokio::time::timeout(5 * SEC, q.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*f, b"after");
    });
}

/// Review 11: a send cancelled while waiting for room in a full queue goes
/// on in the background; when the queue's puller dies and the name is bound
/// again, that wait gives up, so the pusher's next send moves on instead of
/// hanging behind it.
#[test]
fn a_cancelled_wait_for_room_does_not_hold_the_pusher_when_the_puller_moves() {
    if let Ok(name) = std::env::var("SHOAL_TQ_FULL") {
        rt().block_on(async {
            let a: Address = format!("shm://{name}").parse().unwrap();
            let _q = ShmPuller::bind(&a, &Options::default().capacity(1 << 14)).unwrap();
            std::thread::sleep(Duration::from_millis(500));
            std::process::abort();
        });
    }
    rt().block_on(async {
        let a = addr("fullmove");
        let Address::Shm { name } = &a else {
            unreachable!()
        };
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_cancelled_wait_for_room_does_not_hold_the_pusher_when_the_puller_moves",
                "--nocapture",
            ])
            .env("SHOAL_TQ_FULL", name)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut push = ShmPusher::connect(&a, &Options::default()).await.unwrap();
        // Fill the queue; the last send waits for room and is cancelled.
        while tokio::time::timeout(Duration::from_millis(20), push.send(&[0u8; 2000]))
            .await
            .is_ok()
        {}
        let _ = child.wait();
        let mut q = ShmPuller::bind(&a, &Options::default()).unwrap();
        tokio::time::timeout(5 * SEC, push.send(b"after"))
            .await
            .expect("the next send hung behind the cancelled wait")
            .unwrap();
        let f = tokio::time::timeout(5 * SEC, q.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*f, b"after");
    });
}

/// Review 10 (D2): when the puller that bound the queue goes, pullers that
/// joined it keep receiving what pushers send, until the name is bound to
/// another queue.
#[test]
fn joined_pullers_outlive_the_binding_puller() {
    rt().block_on(async {
        let a = addr("joined");
        let o = Options::default();
        let binder = ShmPuller::bind(&a, &o).unwrap();
        let mut joined = ShmPuller::connect(&a, &o).await.unwrap();
        let mut push = ShmPusher::connect(&a, &o).await.unwrap();
        drop(binder);
        tokio::time::sleep(Duration::from_millis(20)).await;
        for i in 0..10u8 {
            push.send(&[i]).await.unwrap();
        }
        for i in 0..10u8 {
            let f = tokio::time::timeout(5 * SEC, joined.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&*f, &[i]);
        }
    });
}
