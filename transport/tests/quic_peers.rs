//! QUIC peers that misbehave while alive (issue 7): a subscriber that
//! stops reading is dropped after the stall timeout while the others go
//! on, and learns it (no silent loss).
#![cfg(feature = "quic")]

mod common;

use common::{rt, SEC};
use shoal_transport::{Error, Options, QuicPublisher, QuicSubscriber};
use std::time::Duration;

#[test]
fn a_subscriber_that_stops_reading_is_dropped_and_the_others_go_on() {
    rt().block_on(async {
        // 2 s: a live subscriber starved of CPU by a loaded machine (CI
        // runs tests side by side on 2 cores) must not look stalled.
        let o = Options::default().capacity(64 << 10).stall_timeout(2 * SEC);
        let mut p = QuicPublisher::bind(&"quic://127.0.0.1:0".parse().unwrap(), &o)
            .await
            .unwrap();
        let a = p.address();
        let mut live = QuicSubscriber::connect(&a, &o).await.unwrap();
        let mut stalled = QuicSubscriber::connect(&a, &o).await.unwrap();
        p.wait_for_subscribers(2, 5 * SEC).await.unwrap();
        const N: u32 = 2000;
        let reader = tokio::spawn(async move {
            for i in 0..N {
                let f = tokio::time::timeout(10 * SEC, live.recv())
                    .await
                    .expect("the live subscriber keeps receiving")
                    .unwrap();
                assert_eq!(&f[..4], &i.to_le_bytes(), "in order, nothing lost");
            }
        });
        // 2 MiB: far more than the stalled subscriber's window and queue.
        for i in 0..N {
            let m = [i.to_le_bytes().as_slice(), &[0u8; 1020]].concat();
            tokio::time::timeout(10 * SEC, p.send(b"", &m))
                .await
                .expect(
                    "the stalled subscriber holds the publisher back only for the stall timeout",
                )
                .unwrap();
        }
        reader.await.unwrap();
        // The stalled one reads what reached it, in order, then learns it
        // was dropped.
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
        assert!(
            matches!(e, Error::Evicted { .. } | Error::PeerGone { .. }),
            "{e}"
        );
    });
}

/// A subscriber that reads slowly but steadily holds the publisher back
/// (backpressure) and is never dropped for it.
#[test]
fn a_slow_but_reading_subscriber_is_waited_for() {
    rt().block_on(async {
        let o = Options::default()
            .capacity(64 << 10)
            // Pauses of 100 ms against 1 s: room for a loaded machine.
            .stall_timeout(SEC);
        let mut p = QuicPublisher::bind(&"quic://127.0.0.1:0".parse().unwrap(), &o)
            .await
            .unwrap();
        let a = p.address();
        let mut slow = QuicSubscriber::connect(&a, &o).await.unwrap();
        p.wait_for_subscribers(1, 5 * SEC).await.unwrap();
        const N: u32 = 400;
        let reader = tokio::spawn(async move {
            for i in 0..N {
                {
                    let f = tokio::time::timeout(10 * SEC, slow.recv())
                        .await
                        .unwrap()
                        .unwrap();
                    assert_eq!(&f[..4], &i.to_le_bytes(), "in order, nothing lost");
                }
                if i % 10 == 0 {
                    // 100 ms per 10 messages of 8 KiB: far slower than the
                    // publisher, never still for the stall timeout.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        for i in 0..N {
            let m = [i.to_le_bytes().as_slice(), &[0u8; 8188]].concat();
            p.send(b"", &m).await.unwrap();
        }
        reader.await.unwrap();
    });
}

/// A send timeout shorter than the stall timeout does not keep a stalled
/// subscriber for ever: sends time out until it has been still for the
/// stall timeout, then it is dropped and sends go through again.
#[test]
fn a_short_send_timeout_still_lets_a_stalled_subscriber_go() {
    rt().block_on(async {
        let o = Options::default()
            .capacity(64 << 10)
            .send_timeout(Some(Duration::from_millis(100)))
            .stall_timeout(Duration::from_millis(400));
        let mut p = QuicPublisher::bind(&"quic://127.0.0.1:0".parse().unwrap(), &o)
            .await
            .unwrap();
        let a = p.address();
        let _stalled = QuicSubscriber::connect(&a, &o).await.unwrap();
        p.wait_for_subscribers(1, 5 * SEC).await.unwrap();
        let t0 = std::time::Instant::now();
        let mut timeouts = 0;
        let mut ok_after = 0;
        while ok_after < 200 {
            assert!(
                t0.elapsed() < 10 * SEC,
                "the stalled subscriber was never dropped"
            );
            match p.send(b"", &[0u8; 4096]).await {
                Ok(()) if timeouts > 0 => ok_after += 1,
                Ok(()) => {}
                Err(Error::Timeout { .. }) => timeouts += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(timeouts > 0, "the subscriber did hold sends back first");
    });
}

/// What a publisher holds for a subscriber that does not read is bounded
/// by `capacity` in bytes, not by a count of messages: large messages to
/// a stalled subscriber hold sends back after about `capacity` (and what
/// the subscriber's stream window takes), not after dozens of them.
#[test]
fn a_stalled_subscriber_holds_no_more_than_capacity() {
    rt().block_on(async {
        let o = Options::default()
            .capacity(4 << 20)
            .send_timeout(Some(Duration::from_millis(500)))
            .stall_timeout(60 * SEC);
        let mut p = QuicPublisher::bind(&"quic://127.0.0.1:0".parse().unwrap(), &o)
            .await
            .unwrap();
        let a = p.address();
        let _s = QuicSubscriber::connect(&a, &o).await.unwrap();
        p.wait_for_subscribers(1, 10 * SEC).await.unwrap();
        let big = vec![1u8; 1 << 20];
        let mut sent = 0;
        let e = loop {
            match p.send(b"", &big).await {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 64, "nothing held the publisher back");
        };
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        // 4 MiB of room, a message being written, and the stream's window.
        assert!(
            sent <= 12,
            "{sent} messages of 1 MiB held for one subscriber"
        );
    });
}
