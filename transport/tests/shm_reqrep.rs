//! Request/reply over shared memory (issue 7): replies routed to the right
//! requester, late replies of cancelled requests dropped, a gone requester
//! does not stop the replier, a requester in another process.
#![cfg(feature = "shm")]

mod common;

use common::{rt, SEC};

use shoal_transport::{Address, Options, ShmReplier, ShmRequester};
use std::time::Duration;

fn addr(tag: &str) -> Address {
    common::shm_addr("tr", tag)
}

/// Serves `n` requests: the reply is the request with "!" appended.
async fn serve(server: &mut ShmReplier, n: usize) {
    for _ in 0..n {
        let (req, replies) = server.recv().await.unwrap();
        let answer = [&req[..], b"!"].concat();
        replies.reply(&req, &answer).await.unwrap();
    }
}

#[test]
fn each_requester_gets_its_own_replies() {
    rt().block_on(async {
        let a = addr("route");
        let o = Options::default();
        let mut server = ShmReplier::bind(&a, &o).unwrap();
        let clients: Vec<_> = (0..3u32)
            .map(|k| {
                let (a, o) = (a.clone(), o.clone());
                tokio::spawn(async move {
                    let mut c = ShmRequester::connect(&a, &o).await.unwrap();
                    for i in 0..300u32 {
                        let q = format!("client {k} request {i}");
                        let r = tokio::time::timeout(5 * SEC, c.request(q.as_bytes()))
                            .await
                            .unwrap()
                            .unwrap();
                        assert_eq!(&*r, format!("{q}!").as_bytes());
                    }
                })
            })
            .collect();
        serve(&mut server, 900).await;
        for c in clients {
            c.await.unwrap();
        }
    });
}

#[test]
fn a_late_reply_to_a_cancelled_request_is_dropped() {
    rt().block_on(async {
        let a = addr("late");
        let o = Options::default();
        let mut server = ShmReplier::bind(&a, &o).unwrap();
        let mut c = ShmRequester::connect(&a, &o).await.unwrap();
        // Cancelled before anybody serves it.
        assert!(
            tokio::time::timeout(Duration::from_millis(30), c.request(b"first"))
                .await
                .is_err()
        );
        let (r, _) = tokio::join!(c.request(b"second"), serve(&mut server, 2));
        assert_eq!(&*r.unwrap(), b"second!");
    });
}

#[test]
fn a_gone_requester_does_not_stop_the_replier() {
    rt().block_on(async {
        let a = addr("gone");
        let o = Options::default();
        let mut server = ShmReplier::bind(&a, &o).unwrap();
        {
            let mut c = ShmRequester::connect(&a, &o).await.unwrap();
            let _ = tokio::time::timeout(Duration::from_millis(30), c.request(b"orphan")).await;
        }
        let (req, replies) = server.recv().await.unwrap();
        assert_eq!(&req[..], b"orphan");
        let e = replies.reply(&req, b"nobody listens").await.unwrap_err();
        assert!(matches!(e, shoal_transport::Error::PeerGone { .. }), "{e}");
        drop(req);
        let mut c = ShmRequester::connect(&a, &o).await.unwrap();
        let (r, _) = tokio::join!(c.request(b"next"), serve(&mut server, 1));
        assert_eq!(&*r.unwrap(), b"next!");
    });
}

/// A requester in another process.
#[test]
fn a_requester_in_another_process() {
    if let Ok(name) = std::env::var("SHOAL_TR_REQ") {
        rt().block_on(async {
            let a: Address = format!("shm://{name}").parse().unwrap();
            let mut c = ShmRequester::connect(&a, &Options::default())
                .await
                .unwrap();
            for i in 0..500u32 {
                let q = i.to_le_bytes().repeat(1 + i as usize % 40);
                let r = tokio::time::timeout(5 * SEC, c.request(&q))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(&r[..q.len()], &q[..]);
                assert_eq!(&r[q.len()..], b"!");
            }
        });
        return;
    }
    rt().block_on(async {
        let a = addr("xproc");
        let Address::Shm { name } = &a else {
            unreachable!()
        };
        let mut server = ShmReplier::bind(&a, &Options::default()).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "a_requester_in_another_process", "--nocapture"])
            .env("SHOAL_TR_REQ", name)
            .spawn()
            .unwrap();
        tokio::time::timeout(20 * SEC, serve(&mut server, 500))
            .await
            .unwrap();
        assert!(child.wait().unwrap().success());
    });
}

/// Review 9 (D2): a requester whose replier dies while it waits gets
/// PeerGone, not an endless wait.
#[test]
fn a_requester_learns_that_its_replier_is_gone() {
    rt().block_on(async {
        let a = addr("dead-replier");
        let o = Options::default();
        let server = ShmReplier::bind(&a, &o).unwrap();
        let mut c = ShmRequester::connect(&a, &o).await.unwrap();
        let killer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(server);
        });
        let e = tokio::time::timeout(5 * SEC, c.request(b"anyone?"))
            .await
            .expect("the requester waited on")
            .unwrap_err();
        assert!(matches!(e, shoal_transport::Error::PeerGone { .. }), "{e}");
        killer.await.unwrap();
    });
}

/// Review 9 (D3): a requester that stops reading its replies no longer
/// stalls the replier for everybody: its reply times out (1 s by default)
/// and the next requester is served.
#[test]
fn a_requester_that_stops_reading_does_not_stall_the_replier() {
    rt().block_on(async {
        let a = addr("deaf");
        let o = Options::default().capacity(1 << 14);
        let mut server = ShmReplier::bind(&a, &o).unwrap();
        let mut deaf = ShmRequester::connect(&a, &o).await.unwrap();
        // Requests whose replies it stops waiting for: they fill its queue.
        for _ in 0..6 {
            let _ =
                tokio::time::timeout(Duration::from_millis(50), deaf.request(&[1u8; 1000])).await;
        }
        let mut timeouts = 0;
        // Serve until no request came for a while.
        while let Ok(r) = tokio::time::timeout(Duration::from_millis(300), server.recv()).await {
            let (req, replies) = r.unwrap();
            if let Err(e) = replies.reply(&req, &[2u8; 5000]).await {
                assert!(matches!(e, shoal_transport::Error::Timeout { .. }), "{e}");
                timeouts += 1;
            }
        }
        assert!(timeouts >= 1, "the deaf requester's queue never filled");
        let mut c = ShmRequester::connect(&a, &o).await.unwrap();
        let (r, _) = tokio::join!(c.request(b"me"), serve(&mut server, 1));
        assert_eq!(&*r.unwrap(), b"me!");
        drop(deaf);
    });
}

/// Issue 7 item 8: a replier sees which requester sent each request.
#[test]
fn requests_name_their_requester() {
    rt().block_on(async {
        let a = addr("peers");
        let o = Options::default();
        let mut server = ShmReplier::bind(&a, &o).unwrap();
        let mut c1 = ShmRequester::connect(&a, &o).await.unwrap();
        let mut c2 = ShmRequester::connect(&a, &o).await.unwrap();
        let mut seen = std::collections::BTreeMap::new();
        let serve = async {
            for _ in 0..4 {
                let (req, replies) = server.recv().await.unwrap();
                seen.entry(req[0])
                    .or_insert_with(Vec::new)
                    .push(req.peer().unwrap());
                replies.reply(&req, b"ok").await.unwrap();
            }
        };
        let ask = async {
            for _ in 0..2 {
                c1.request(&[1]).await.unwrap();
                c2.request(&[2]).await.unwrap();
            }
        };
        tokio::join!(serve, ask);
        let (p1, p2) = (&seen[&1], &seen[&2]);
        assert!(p1.iter().all(|p| *p == p1[0]) && p2.iter().all(|p| *p == p2[0]));
        assert_ne!(p1[0], p2[0]);
    });
}
