//! nng request/reply through the blocking wrappers, whose calls wait on
//! the calling thread itself (`nng::direct`) instead of a runtime: answers
//! right with shoal's envelope and with `?native` bodies, each with its
//! peer; a request's timeout; a replier killed under a request (PeerGone
//! within the connect timeout, not a hang); a request while no replier is
//! there; a replier that comes back.

#![cfg(feature = "nng")]

mod common;

use common::proc::{self, say, var, Child};
use common::{rt, SEC};
use shoal_transport::blocking::Blocking;
use shoal_transport::{Address, Error, NngReplier, NngRequester, Options};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHILD: &str = "nng_blocking_child";
/// How long a child lives at most (it exits then, so nothing hangs).
const CHILD_LIMIT: Duration = Duration::from_secs(25);

/// Every other process of these tests: does nothing unless started as a
/// child by one of them.
#[test]
fn nng_blocking_child() {
    let Some(role) = proc::role() else { return };
    std::thread::spawn(|| {
        std::thread::sleep(CHILD_LIMIT);
        eprintln!("child hung");
        std::process::exit(3);
    });
    match role.as_str() {
        "replier" => replier_child(),
        r => panic!("unknown role {r}"),
    }
}

/// Binds a blocking replier at `a`, retrying while the address is still
/// held (a killed replier's port or socket file on its way out).
fn bind(a: &Address) -> Blocking<NngReplier> {
    let deadline = Instant::now() + 5 * SEC;
    loop {
        let o = Options::default();
        match Blocking::new(async { NngReplier::bind(a, &o) }) {
            Ok(r) => return r,
            Err(Error::AddrInUse { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("bind: {e}"),
        }
    }
}

/// Answers `re:` + the request from a plain thread; a request `hang` is
/// never answered.
fn serve(r: &mut Blocking<NngReplier>) -> shoal_transport::Result<()> {
    r.serve_one(|req| {
        if req == b"hang" {
            say("hanging");
            std::thread::sleep(CHILD_LIMIT);
        }
        [&b"re:"[..], req].concat()
    })
}

fn replier_child() {
    let a: Address = var("SHOAL_ADDR").parse().unwrap();
    let mut r = bind(&a);
    say("ready");
    loop {
        serve(&mut r).unwrap();
    }
}

fn spawn_replier(a: &Address) -> Child {
    let mut c = proc::spawn(CHILD, "replier", &[("SHOAL_ADDR", a.to_string())]);
    rt().block_on(c.expect("ready", 10 * SEC));
    c
}

/// Runs `f` on a thread of its own, failing if it takes over `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("a blocking call hung")
}

/// Requests of several sizes answered right by a replier process, a
/// request that times out, then the replier killed under a request, a
/// request while it is gone, and one after it came back.
fn blocking_requests_and_a_killed_replier(a: Address) {
    let mut rep = spawn_replier(&a);
    let a2 = a.clone();
    let (r, took) = within(20 * SEC, move || {
        let o = Options::default().connect_timeout(SEC);
        let mut r = Blocking::new(NngRequester::connect(&a2, &o)).unwrap();
        for i in 0..200usize {
            let q: Vec<u8> = (0..[0, 1, 100, 70_000][i % 4])
                .map(|j| (i + j) as u8)
                .collect();
            let f = r.request(&q, None).unwrap();
            assert_eq!(&f[..3], b"re:");
            assert_eq!(&f[3..], &q[..], "request {i} answered wrong");
            assert!(f.peer().is_some(), "no peer on the answer");
        }
        let t0 = Instant::now();
        let e = r
            .request(b"hang", Some(Duration::from_millis(300)))
            .map(|f| f.to_vec());
        assert!(matches!(e, Err(Error::Timeout { .. })), "{e:?}");
        (r, t0.elapsed())
    });
    println!("the timed-out request took {took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    rt().block_on(rep.expect("hanging", 5 * SEC));
    // The replier stopped answering; a request waits until it is killed.
    let (tx, rx) = mpsc::channel();
    let asker = std::thread::spawn(move || {
        let mut r = r;
        let res = r.request(b"after", None).map(|f| f.to_vec());
        let _ = tx.send(res);
        r
    });
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    rep.kill();
    let res = rx
        .recv_timeout(10 * SEC)
        .expect("a request to a killed replier hung");
    let after = killed.elapsed();
    println!("the pending request ended {after:?} after the kill: {res:?}");
    assert!(matches!(res, Err(Error::PeerGone { .. })), "{res:?}");
    assert!(after < SEC + Duration::from_millis(1500), "{after:?}");
    let mut r = asker.join().unwrap();
    // Nobody there: PeerGone within the connect timeout.
    let t0 = Instant::now();
    let res = r.request(b"nobody", None).map(|f| f.to_vec());
    assert!(matches!(res, Err(Error::PeerGone { .. })), "{res:?}");
    assert!(t0.elapsed() < 3 * SEC, "{:?}", t0.elapsed());
    // The replier comes back: the same requester is answered again.
    let _rep = spawn_replier(&a);
    let r = within(15 * SEC, move || {
        let deadline = Instant::now() + 10 * SEC;
        loop {
            match r.request(b"back", None).map(|f| f.to_vec()) {
                Ok(f) => {
                    assert_eq!(f, b"re:back");
                    return r;
                }
                Err(Error::PeerGone { .. }) if Instant::now() < deadline => {}
                Err(e) => panic!("after the replier came back: {e}"),
            }
        }
    });
    drop(r);
}

#[test]
fn blocking_requests_and_a_killed_replier_tcp() {
    blocking_requests_and_a_killed_replier(common::tcp_addr("nng+tcp"));
}

#[test]
fn blocking_requests_and_a_killed_replier_ipc() {
    let a = common::ipc_addr("blk-rr");
    blocking_requests_and_a_killed_replier(a.clone());
    if let Address::NngIpc { path, .. } = &a {
        let _ = std::fs::remove_file(path);
    }
}

/// A blocking replier and blocking requesters on threads of one process,
/// with shoal's envelope and with `?native` bodies: every requester gets
/// its own answers.
fn blocking_threads(a: Address) {
    let o = Options::default();
    let mut rep = Blocking::new(async { NngReplier::bind(&a, &o) }).unwrap();
    let a = rep.get_mut().address();
    const ASKERS: usize = 3;
    const N: usize = 100;
    let askers: Vec<_> = (0..ASKERS)
        .map(|k| {
            let a = a.clone();
            std::thread::spawn(move || {
                let mut r = Blocking::new(NngRequester::connect(&a, &Options::default())).unwrap();
                for i in 0..N {
                    let q = format!("{k}-{i}");
                    let f = r.request(q.as_bytes(), Some(10 * SEC)).unwrap();
                    assert_eq!(&f[..], format!("re:{q}").as_bytes());
                }
            })
        })
        .collect();
    let served = within(20 * SEC, move || {
        for _ in 0..ASKERS * N {
            serve(&mut rep).unwrap();
        }
        rep
    });
    for t in askers {
        t.join().unwrap();
    }
    drop(served);
}

#[test]
fn blocking_threads_with_the_envelope() {
    blocking_threads("nng+tcp://127.0.0.1:0".parse().unwrap());
}

#[test]
fn blocking_threads_with_native_bodies() {
    blocking_threads("nng+tcp://127.0.0.1:0?native".parse().unwrap());
}

/// Review finding: the direct aio kept the last call's timeout, so a
/// request without one after a request that timed out could time out
/// too. Now every operation sets its own: a slow answer to a request
/// without a timeout is waited for.
#[test]
fn a_request_without_a_timeout_after_one_that_timed_out_waits_for_a_slow_answer() {
    let o = Options::default();
    let a: Address = "nng+tcp://127.0.0.1:0".parse().unwrap();
    let mut rep = Blocking::new(async { NngReplier::bind(&a, &o) }).unwrap();
    let a = rep.get_mut().address();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            rep.serve_one(|req| {
                std::thread::sleep(Duration::from_millis(300));
                req.to_vec()
            })
            .unwrap();
        }
        rep
    });
    let answered = within(20 * SEC, move || {
        let mut r = Blocking::new(NngRequester::connect(&a, &Options::default())).unwrap();
        let e = r
            .request(b"first", Some(Duration::from_millis(50)))
            .map(|f| f.to_vec());
        assert!(matches!(e, Err(Error::Timeout { .. })), "{e:?}");
        r.request(b"second", None).map(|f| f.to_vec())
    });
    assert_eq!(answered.unwrap(), b"second");
    drop(server.join().unwrap());
}
