//! shoal-channel's Broadcast across two hosts, with local and remote
//! readers on one broadcast: two network namespaces joined by a veth pair
//! (the transport's test helper), the writer and one reader in the first
//! (on the writer's host: they read the ring), two readers in the second
//! (another host, by `SHOAL_HOST`: they read the writer's network
//! publisher). Every reader gets every message, of every size, in the
//! same order with the same sequence numbers, then learns the writer
//! closed. Over nng+tcp and over QUIC. Needs root and iproute2; skipped
//! (with the reason printed) otherwise.
#![cfg(any(feature = "nng", feature = "quic"))]

#[path = "../../transport/tests/common/netns.rs"]
#[allow(dead_code)] // the helper's other uses
mod netns;

/// What `netns` expects of its sibling module: the role variable.
mod proc {
    pub const ROLE: &str = "SHOAL_TEST_ROLE";
}

use shoal_channel::{Broadcast, BroadcastOptions, BroadcastReceiver, Error, Handle};
use shoal_tests::{say, spawn_command, Peer};
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);
const N: u64 = 400;

/// Message `i`: 16 bytes to 1.5 MiB, deterministic.
fn msg(i: u64) -> Vec<u8> {
    let n = match i % 5 {
        0 => 16,
        1 => 1000,
        2 => 64 << 10,
        3 => 300,
        _ => (1 << 20) + (i as usize * 4099) % (512 << 10),
    };
    (0..n).map(|k| (k as u64 * 31 + i) as u8).collect()
}

fn opts() -> BroadcastOptions {
    BroadcastOptions::new(3)
        .capacity(1 << 20)
        .recv_timeout(Some(30 * SEC))
        .send_timeout(Some(30 * SEC))
}

fn run(role: &str, a: &[String]) -> i32 {
    match (role, a) {
        // writer BIND: one local and two remote readers; says its
        // handle, sends N messages once all came, then closes.
        ("writer", [bind]) => {
            let mut b = match Broadcast::create(&opts().remote(2, bind)) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("writer: {e}");
                    return 3;
                }
            };
            say(&b.handle().to_string());
            if let Err(e) = b.wait_until_ready(30 * SEC) {
                eprintln!("writer: {e}");
                return 4;
            }
            for i in 0..N {
                match b.send(&msg(i)) {
                    Ok(seq) if seq == i => {}
                    other => {
                        eprintln!("writer: send {i}: {other:?}");
                        return 5;
                    }
                }
            }
            drop(b);
            say("sent");
            0
        }
        // reader HANDLE INDEX: every message in order, then the close.
        ("reader", [h, index]) => {
            let (Ok(h), Ok(index)) = (h.parse::<Handle>(), index.parse::<u32>()) else {
                return 2;
            };
            let mut r = match BroadcastReceiver::attach_with(&h, index, &opts()) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("reader {index}: {e}");
                    return 3;
                }
            };
            say(if r.is_remote() { "remote" } else { "local" });
            for i in 0..N {
                match r.recv() {
                    Ok(m) if m.seq() == i && *m == msg(i)[..] => {}
                    Ok(m) => {
                        eprintln!(
                            "reader {index}: message {i} came as seq {} ({} bytes)",
                            m.seq(),
                            m.len()
                        );
                        return 4;
                    }
                    Err(e) => {
                        eprintln!("reader {index}: message {i}: {e}");
                        return 5;
                    }
                }
            }
            match r.recv() {
                Err(Error::Ring(shoal_shm_ring::Error::Closed)) => {
                    say("done");
                    0
                }
                other => {
                    eprintln!("reader {index}: after the last message: {other:?}");
                    6
                }
            }
        }
        // hanging-writer BIND: one remote reader; sends 5, then hangs
        // (until killed).
        ("hanging-writer", [bind]) => {
            let mut o = opts().remote(1, bind);
            o.readers = 1;
            let Ok(mut b) = Broadcast::create(&o) else {
                return 3;
            };
            say(&b.handle().to_string());
            if b.wait_until_ready(30 * SEC).is_err() {
                return 4;
            }
            for i in 0..5 {
                if b.send(&msg(i)).is_err() {
                    return 5;
                }
            }
            say("sent");
            std::thread::sleep(120 * SEC);
            1
        }
        // orphan HANDLE: reads 5, says so, then says what ends its wait.
        ("orphan", [h]) => {
            let Ok(h) = h.parse::<Handle>() else { return 2 };
            let mut o = opts();
            o.net = o.net.connect_timeout(2 * SEC);
            let Ok(mut r) = BroadcastReceiver::attach_with(&h, 0, &o) else {
                return 3;
            };
            for i in 0..5 {
                match r.recv() {
                    Ok(m) if *m == msg(i)[..] => {}
                    _ => return 4,
                }
            }
            say("read");
            match r.recv() {
                Ok(_) => say("a message from nowhere"),
                Err(e) => say(&format!("error: {e}")),
            }
            0
        }
        _ => 2,
    }
}

#[test]
fn child_main() {
    shoal_tests::child(run);
}

fn child(pair: &netns::Pair, side: usize, host: &str, role: &str, args: &[String]) -> Peer {
    let env = [("SHOAL_HOST", host.to_string())];
    spawn_command(pair.self_command(side, "child_main", role, &env), args)
}

fn local_and_remote_readers_get_everything_in_order(scheme: &str) {
    let Some(pair) = netns::Pair::create_or_skip("bcast") else {
        return;
    };
    let bind = format!("{scheme}://{}:0", pair.addr(0));
    let mut writer = child(&pair, 0, "host-a", "writer", &[bind]);
    let handle = writer.expect_line(30 * SEC);
    let h: Handle = handle.parse().unwrap();
    assert!(
        h.remote().is_some_and(|r| r.starts_with(scheme)),
        "{handle}"
    );
    let mut readers = vec![
        child(&pair, 0, "host-a", "reader", &[handle.clone(), "0".into()]),
        child(&pair, 1, "host-b", "reader", &[handle.clone(), "1".into()]),
        child(&pair, 1, "host-b", "reader", &[handle.clone(), "2".into()]),
    ];
    let kinds: Vec<String> = readers
        .iter_mut()
        .map(|r| r.expect_line(30 * SEC))
        .collect();
    assert_eq!(kinds, ["local", "remote", "remote"]);
    assert_eq!(writer.expect_line(120 * SEC), "sent");
    for r in &mut readers {
        assert_eq!(r.expect_line(120 * SEC), "done");
    }
    for r in readers {
        assert!(r.wait(30 * SEC).success());
    }
    assert!(writer.wait(30 * SEC).success());
}

#[cfg(feature = "nng")]
#[test]
fn over_nng_local_and_remote_readers_get_everything_in_order() {
    local_and_remote_readers_get_everything_in_order("nng+tcp");
}

#[cfg(feature = "quic")]
#[test]
fn over_quic_local_and_remote_readers_get_everything_in_order() {
    local_and_remote_readers_get_everything_in_order("quic");
}

/// A remote reader whose writer is killed (SIGKILL, on the other host)
/// gets an error, not a hang.
#[cfg(feature = "nng")]
#[test]
fn a_remote_reader_of_a_killed_writer_gets_an_error() {
    let Some(pair) = netns::Pair::create_or_skip("bkill") else {
        return;
    };
    let bind = format!("nng+tcp://{}:0", pair.addr(0));
    let mut writer = child(&pair, 0, "host-a", "hanging-writer", &[bind]);
    let handle = writer.expect_line(30 * SEC);
    let mut reader = child(&pair, 1, "host-b", "orphan", &[handle]);
    assert_eq!(writer.expect_line(30 * SEC), "sent");
    assert_eq!(reader.expect_line(30 * SEC), "read");
    writer.kill9();
    let t = std::time::Instant::now();
    let said = reader.expect_line(60 * SEC);
    assert!(said.starts_with("error: network"), "{said}");
    assert!(t.elapsed() < 30 * SEC, "{:?}", t.elapsed());
    assert!(reader.wait(30 * SEC).success());
}
