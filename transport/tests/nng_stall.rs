//! An nng subscriber that stops reading while alive (issue 7, item 6): the
//! publisher drops it after the stall timeout and goes on for the others;
//! it learns it ([`Error::Evicted`]), in order up to there, and nothing
//! the others get is lost.
#![cfg(feature = "nng")]

mod common;

use common::{rt, SEC};
use shoal_transport::{Error, NngPublisher, NngSubscriber, Options};
use std::time::Duration;

#[test]
fn a_subscriber_that_stops_reading_is_evicted_and_the_others_go_on() {
    rt().block_on(async {
        let o = Options::default()
            .capacity(16 << 10)
            // 2 s: a live subscriber starved of CPU by a loaded machine
            // must not look stalled.
            .stall_timeout(2 * SEC);
        let mut p = NngPublisher::bind(&common::ipc_addr("stall"), &o).unwrap();
        let a = p.address();
        let mut live = NngSubscriber::connect(&a, &o).await.unwrap();
        let mut stalled = NngSubscriber::connect(&a, &o).await.unwrap();
        p.wait_for_subscribers(2, 5 * SEC).await.unwrap();
        const N: u32 = 3000;
        let reader = tokio::spawn(async move {
            for i in 0..N {
                let f = tokio::time::timeout(10 * SEC, live.recv())
                    .await
                    .expect("the live subscriber keeps receiving")
                    .unwrap();
                assert_eq!(&f[..4], &i.to_le_bytes(), "in order, nothing lost");
            }
        });
        // 3 MiB through a 16 KiB buffer: the stalled subscriber would hold
        // it back for good.
        for i in 0..N {
            let m = [i.to_le_bytes().as_slice(), &[0u8; 1020]].concat();
            tokio::time::timeout(10 * SEC, p.send(b"", &m))
                .await
                .expect("a stalled subscriber holds sends back only for the stall timeout")
                .unwrap();
        }
        reader.await.unwrap();
        assert_eq!(p.wait_for_subscribers(1, SEC).await.unwrap(), 1);
        let mut next = 0u32;
        let e = loop {
            match tokio::time::timeout(10 * SEC, stalled.recv())
                .await
                .unwrap()
            {
                Ok(f) => {
                    assert_eq!(&f[..4], &next.to_le_bytes());
                    next += 1;
                }
                Err(e) => break e,
            }
        };
        assert!(next < N, "it was dropped before the end");
        assert!(matches!(e, Error::Evicted { .. }), "{e}");
    });
}

/// A send timeout shorter than the stall timeout does not keep a stalled
/// subscriber for ever: sends time out until its cursor has been still
/// for the stall timeout, then it is dropped and sends go through again.
#[test]
fn a_short_send_timeout_still_lets_a_stalled_subscriber_go() {
    rt().block_on(async {
        let o = Options::default()
            .capacity(16 << 10)
            .send_timeout(Some(Duration::from_millis(100)))
            .stall_timeout(Duration::from_millis(400));
        let mut p = NngPublisher::bind(&common::ipc_addr("short"), &o).unwrap();
        let a = p.address();
        let _stalled = NngSubscriber::connect(&a, &o).await.unwrap();
        p.wait_for_subscribers(1, 5 * SEC).await.unwrap();
        let t0 = std::time::Instant::now();
        let (mut timeouts, mut ok_after) = (0, 0);
        while ok_after < 200 {
            assert!(
                t0.elapsed() < 10 * SEC,
                "the stalled subscriber was never dropped"
            );
            match p.send(b"", &[0u8; 1024]).await {
                Ok(()) if timeouts > 0 => ok_after += 1,
                Ok(()) => {}
                Err(Error::Timeout { .. }) => timeouts += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(timeouts > 0, "the subscriber did hold sends back first");
    });
}

/// A subscriber that reads steadily but slower than the publisher sends,
/// behind a publisher whose buffer holds a few MiB, is waited for: its
/// cursor moves only once it took a whole answer, so answers it takes
/// slowly stay small enough to be taken well within the stall timeout
/// (256 KiB at 1 MiB/s: an eighth of it; 2 s leaves room for a loaded
/// machine).
#[test]
fn a_slow_but_reading_subscriber_behind_a_deep_buffer_is_waited_for() {
    rt().block_on(async {
        let o = Options::default().capacity(2 << 20).stall_timeout(2 * SEC);
        let mut p = NngPublisher::bind(&common::ipc_addr("slowdeep"), &o).unwrap();
        let a = p.address();
        let mut slow = NngSubscriber::connect(&a, &o).await.unwrap();
        p.wait_for_subscribers(1, 5 * SEC).await.unwrap();
        const N: u32 = 4096;
        let reader = tokio::spawn(async move {
            for i in 0..N {
                {
                    let f = tokio::time::timeout(10 * SEC, slow.recv())
                        .await
                        .expect("the slow subscriber keeps receiving")
                        .expect("the slow subscriber is not evicted");
                    assert_eq!(&f[..4], &i.to_le_bytes(), "in order, nothing lost");
                }
                if i % 10 == 9 {
                    // 10 KiB per 10 ms: about 1 MiB/s.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        // 4 MiB: twice the buffer, so sends wait for the reader.
        for i in 0..N {
            let m = [i.to_le_bytes().as_slice(), &[0u8; 1020]].concat();
            tokio::time::timeout(20 * SEC, p.send(b"", &m))
                .await
                .expect("a slow reader holds sends back, not for ever")
                .unwrap();
        }
        reader.await.unwrap();
        assert_eq!(p.wait_for_subscribers(1, SEC).await.unwrap(), 1);
    });
}
