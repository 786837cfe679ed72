//! An nng publisher or queue that goes silent without closing its
//! connections (its process stopped: what a host that vanished looks
//! like from here) is a typed error for its subscribers and pullers within
//! their deadline, not a hang.
#![cfg(feature = "nng")]

mod common;

use common::proc::{self, say, var};
use common::{rt, SEC};
use shoal_transport::{Address, Error, NngPublisher, NngPuller, NngSubscriber, Options};
use std::time::{Duration, Instant};

const CHILD: &str = "nng_silent_child";

#[test]
fn nng_silent_child() {
    let Some(role) = proc::role() else { return };
    rt().block_on(async {
        let a: Address = var("SHOAL_ADDR").parse().unwrap();
        let o = Options::default();
        match role.as_str() {
            "pub" => {
                let mut p = NngPublisher::bind(&a, &o).unwrap();
                say("bound");
                p.wait_for_subscribers(1, 10 * SEC).await.unwrap();
                p.send(b"", b"one").await.unwrap();
                std::future::pending::<()>().await;
            }
            "queue" => {
                let _q = NngPuller::bind(&a, &o).unwrap();
                say("bound");
                std::future::pending::<()>().await;
            }
            r => panic!("unknown role {r}"),
        }
    });
}

fn stop(pid: u32) {
    // SAFETY: signals our own child process.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
}

#[test]
fn a_stopped_publisher_is_peer_gone_for_its_subscriber() {
    rt().block_on(async {
        let a = common::ipc_addr("silent-pub");
        let mut p = proc::spawn(CHILD, "pub", &[("SHOAL_ADDR", a.to_string())]);
        p.expect("bound", 10 * SEC).await;
        let o = Options::default().connect_timeout(SEC).max_message(1 << 20);
        let mut s = NngSubscriber::connect(&a, &o).await.unwrap();
        assert_eq!(&*s.recv().await.unwrap(), b"one");
        stop(p.pid());
        let t0 = Instant::now();
        let e = tokio::time::timeout(15 * SEC, s.recv())
            .await
            .expect("a subscriber of a stopped publisher is told, not left waiting")
            .unwrap_err();
        println!("{e} after {:?}", t0.elapsed());
        assert!(matches!(e, Error::PeerGone { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(10));
    });
}

#[test]
fn a_stopped_queue_is_peer_gone_for_its_remote_puller() {
    rt().block_on(async {
        let a = common::ipc_addr("silent-queue");
        let mut q = proc::spawn(CHILD, "queue", &[("SHOAL_ADDR", a.to_string())]);
        q.expect("bound", 10 * SEC).await;
        let o = Options::default().connect_timeout(SEC).max_message(1 << 20);
        let mut puller = NngPuller::connect(&a, &o).await.unwrap();
        stop(q.pid());
        let t0 = Instant::now();
        let e = tokio::time::timeout(15 * SEC, puller.recv())
            .await
            .expect("a puller of a stopped queue is told, not left waiting")
            .unwrap_err();
        println!("{e} after {:?}", t0.elapsed());
        assert!(matches!(e, Error::PeerGone { .. }), "{e}");
    });
}
