//! shoal-channel's Rpc across processes: three worker processes answer
//! every call; one killed with SIGKILL mid-run is named dead by the next
//! call (well before the call timeout), and the survivors keep answering.

use shoal_channel::{Error, Handle, Rpc, RpcOptions, RpcWorker};
use shoal_tests::{say, spawn, spawn_command};
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);

fn opts() -> RpcOptions {
    let peer = shoal_shm_ring::PeerOptions::default().liveness_interval(Duration::from_millis(10));
    RpcOptions::new(3)
        .capacity(1 << 16)
        .reply_capacity(1 << 16)
        .call_timeout(30 * SEC)
        .peer(peer)
}

fn run(role: &str, a: &[String]) -> i32 {
    // worker HANDLE INDEX: answers "INDEX:REQUEST" (failing "fail",
    // taking 300 ms over "slow") until the caller goes; remote-worker:
    // the same, attached over the network.
    if role != "worker" && role != "remote-worker" {
        return 2;
    }
    let (Some(Ok(h)), Some(Ok(index))) = (
        a.first().map(|v| v.parse::<Handle>()),
        a.get(1).map(|v| v.parse::<u32>()),
    ) else {
        return 2;
    };
    let w = if role == "worker" {
        RpcWorker::attach_with(&h, index, &opts())
    } else {
        RpcWorker::attach_remote(&h, index, &opts())
    };
    let Ok(mut w) = w else {
        return 3;
    };
    say("attached");
    let served = w.serve(|req| {
        if &req[..] == b"fail" {
            return Err(format!("worker {index} says no"));
        }
        if &req[..] == b"slow" {
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok([format!("{index}:").as_bytes(), &req[..]].concat())
    });
    match served {
        Ok(_) => 0,
        Err(_) => 4,
    }
}

#[test]
fn child_main() {
    shoal_tests::child(run);
}

#[test]
fn a_killed_worker_is_named_and_the_survivors_keep_answering() {
    let mut rpc = Rpc::create(&opts()).unwrap();
    let h = rpc.handle().to_string();
    let mut workers: Vec<_> = (0..3u32)
        .map(|i| spawn("worker", &[h.clone(), i.to_string()]))
        .collect();
    for w in &mut workers {
        assert_eq!(w.expect_line(20 * SEC), "attached");
    }
    rpc.wait_until_ready(20 * SEC).unwrap();
    for n in 0..100 {
        let req = format!("call {n}");
        let replies = rpc.call(req.as_bytes()).unwrap();
        for (i, r) in replies.iter().enumerate() {
            assert_eq!(r.worker.index, i as u32);
            assert_eq!(r.worker.pid, workers[i].pid());
            assert_eq!(r.ok().unwrap(), format!("{i}:{req}").as_bytes());
        }
    }
    // A failure status comes back as such.
    let replies = rpc.call(b"fail").unwrap();
    assert_eq!(replies[2].result.as_ref().unwrap_err(), "worker 2 says no");
    // Worker 1 dies.
    let dead = workers.remove(1);
    let dead_pid = dead.pid();
    dead.kill9();
    let t = Instant::now();
    match rpc.call(b"after") {
        Err(Error::NoReply {
            missing, replies, ..
        }) => {
            assert_eq!(missing.len(), 1, "{missing:?}");
            assert_eq!(
                (missing[0].index, missing[0].pid, missing[0].dead),
                (1, dead_pid, true)
            );
            let from: Vec<u32> = replies.iter().map(|r| r.worker.index).collect();
            assert_eq!(from, [0, 2]);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        t.elapsed() < 10 * SEC,
        "the dead worker was waited for {:?}",
        t.elapsed()
    );
    assert_eq!(rpc.dead_workers(), [1]);
    // Later calls go to the survivors only.
    for n in 0..20 {
        let replies = rpc.call(format!("later {n}").as_bytes()).unwrap();
        let from: Vec<u32> = replies.iter().map(|r| r.worker.index).collect();
        assert_eq!(from, [0, 2]);
    }
    // Worker 1 comes back, in a new process: asked again from the next
    // call on.
    let mut back = spawn("worker", &[h.clone(), "1".into()]);
    assert_eq!(back.expect_line(20 * SEC), "attached");
    let t = Instant::now();
    loop {
        let replies = rpc.call(b"again").unwrap();
        let from: Vec<u32> = replies.iter().map(|r| r.worker.index).collect();
        if from == [0, 1, 2] {
            assert_eq!(replies[1].worker.pid, back.pid());
            assert_eq!(replies[1].ok().unwrap(), b"1:again");
            break;
        }
        assert_eq!(from, [0, 2]);
        assert!(t.elapsed() < 10 * SEC, "worker 1 never came back");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(rpc.dead_workers().is_empty());
    workers.push(back);
    drop(rpc);
    for w in workers {
        assert!(w.wait(20 * SEC).success());
    }
}

/// A worker in a pid namespace of its own (its pid means nothing to the
/// caller) killed with SIGKILL: named dead by the next call from its
/// reader slot's lease, well before the call timeout. Needs root
/// (`unshare --pid`); skipped with the reason printed otherwise.
#[test]
fn a_killed_worker_in_another_pid_namespace_is_named_dead() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: unshare --pid needs root");
        return;
    }
    let mut rpc = Rpc::create(&opts()).unwrap();
    let h = rpc.handle().to_string();
    let mut workers: Vec<_> = (0..3u32)
        .map(|i| {
            let args = [h.clone(), i.to_string()];
            if i != 1 {
                return spawn("worker", &args);
            }
            // Killed with unshare, its child (pid 1 of the namespace)
            // goes too.
            let mut cmd = std::process::Command::new("unshare");
            cmd.args(["--pid", "--fork", "--kill-child"])
                .arg(std::env::current_exe().unwrap())
                .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
                .env("SHOAL_TEST_ROLE", "worker");
            spawn_command(cmd, &args)
        })
        .collect();
    for w in &mut workers {
        assert_eq!(w.expect_line(20 * SEC), "attached");
    }
    rpc.wait_until_ready(20 * SEC).unwrap();
    let replies = rpc.call(b"hello").unwrap();
    assert_eq!(replies[1].ok().unwrap(), b"1:hello");
    workers.remove(1).kill9();
    let t = Instant::now();
    match rpc.call(b"after") {
        Err(Error::NoReply { missing, .. }) => {
            assert_eq!(missing.len(), 1, "{missing:?}");
            assert_eq!((missing[0].index, missing[0].dead), (1, true));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        t.elapsed() < 10 * SEC,
        "the dead worker was waited for {:?}",
        t.elapsed()
    );
    assert_eq!(rpc.dead_workers(), [1]);
}

/// A local worker killed with SIGKILL (its reader slot left in the
/// requests' ring, lease free) that comes back over the network under
/// the same index is asked, not named dead by the slot its earlier life
/// left, even on calls slow enough to look at the workers' liveness.
#[cfg(feature = "nng")]
#[test]
fn a_local_worker_back_over_the_network_is_not_named_dead_by_its_old_slot() {
    let o = opts()
        .remote(1, "nng+tcp://127.0.0.1:0")
        .lease(Duration::from_millis(800));
    let mut rpc = Rpc::create(&o).unwrap();
    let h = rpc.handle().to_string();
    let mut workers: Vec<_> = (0..3u32)
        .map(|i| {
            let role = if i == 2 { "remote-worker" } else { "worker" };
            spawn(role, &[h.clone(), i.to_string()])
        })
        .collect();
    for w in &mut workers {
        assert_eq!(w.expect_line(20 * SEC), "attached");
    }
    rpc.wait_until_ready(20 * SEC).unwrap();
    assert_eq!(rpc.call(b"hello").unwrap().len(), 3);
    workers.remove(1).kill9();
    assert!(matches!(rpc.call(b"after"), Err(Error::NoReply { .. })));
    let mut back = spawn("remote-worker", &[h.clone(), "1".into()]);
    assert_eq!(back.expect_line(20 * SEC), "attached");
    let t = Instant::now();
    loop {
        let replies = rpc.call(b"slow").unwrap();
        let from: Vec<u32> = replies.iter().map(|r| r.worker.index).collect();
        if from == [0, 1, 2] {
            break;
        }
        assert!(
            t.elapsed() < 20 * SEC,
            "worker 1 never asked again: {from:?}"
        );
    }
    // Slow calls (past the caller's first look at the workers' liveness)
    // keep asking it.
    for _ in 0..3 {
        let replies = rpc.call(b"slow").unwrap();
        let from: Vec<u32> = replies.iter().map(|r| r.worker.index).collect();
        assert_eq!(from, [0, 1, 2]);
    }
    assert!(rpc.dead_workers().is_empty(), "{:?}", rpc.dead_workers());
}
