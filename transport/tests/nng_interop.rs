//! Interop with nng peers nobody here wrote: pynng (PyPI, bundling its own
//! NNG) and nngcat (Debian's nng-utils) push, pull, publish, subscribe,
//! ask and answer against shoal's nng endpoints on `?native` addresses.
//!
//! The tools are provisioned by `cargo xtask provision`; a test that still
//! finds one missing installs it (pip, apt-get) under a file lock, as root;
//! without root it prints why it skipped.
#![cfg(feature = "nng")]

mod common;

use common::proc::Child;
use common::{rt, SEC};
use shoal_transport::{
    Address, NngPublisher, NngPuller, NngPusher, NngReplier, NngRequester, NngSubscriber, Options,
};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn have_pynng() -> bool {
    Command::new("python3")
        .args(["-c", "import pynng"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn have_nngcat() -> bool {
    Command::new("nngcat")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// pynng and nngcat, installed if missing; `false` (with the reason
/// printed) when they are missing and this is not root.
fn tools() -> bool {
    if have_pynng() && have_nngcat() {
        return true;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: pynng or nngcat is missing and installing them needs root (run `cargo xtask provision` as root)");
        return false;
    }
    // One installer at a time across the test processes.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/shoal-interop-provision.lock")
        .expect("opening the provisioning lock");
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this function owns; released when the
    // file is dropped at the end of the function.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    if !have_pynng() {
        sh("python3 -m pip install --quiet pynng");
    }
    if !have_nngcat() && !sh("apt-get install -y -q nng-utils") {
        sh("apt-get update -q && apt-get install -y -q nng-utils");
    }
    assert!(have_pynng(), "pip could not install pynng");
    assert!(
        have_nngcat(),
        "apt-get could not install nng-utils (nngcat)"
    );
    true
}

/// A free loopback port: (shoal's `?native` address, nng's URL).
fn tcp() -> (Address, String) {
    let a = common::tcp_addr("nng+tcp");
    let Address::NngTcp { port, .. } = a else {
        unreachable!()
    };
    (
        format!("nng+tcp://127.0.0.1:{port}?native")
            .parse()
            .unwrap(),
        format!("tcp://127.0.0.1:{port}"),
    )
}

/// `python3 -c SCRIPT URL ARGS…`, talking `@@` lines.
fn python(script: &str, url: &str, args: &[&str]) -> Child {
    let mut c = Command::new("python3");
    c.args(["-u", "-c", script, url]).args(args);
    Child::spawn(c, "pynng")
}

/// The `i`th test message: a length that walks from 0 up to ~70 KB, one
/// in 16 of 1 MiB, every byte a function of `i` and its place.
fn body(i: usize) -> Vec<u8> {
    let len = if i % 16 == 15 {
        1 << 20
    } else {
        i * 997 % 70_000
    };
    (0..len).map(|k| ((i * 31 + k) % 251) as u8).collect()
}

/// The same function in Python, for the scripts. (pynng 0.9 fails on an
/// empty message it receives, `ffi.unpack` of NULL, so the scripts that
/// receive start at `i = 1`.)
const PY_BODY: &str = r#"
def body(i):
    n = (1 << 20) if i % 16 == 15 else i * 997 % 70000
    return bytes(((i * 31 + k) % 251) for k in range(n))
"#;

fn opts() -> Options {
    Options::default()
        .connect_timeout(10 * SEC)
        .send_timeout(Some(10 * SEC))
}

#[test]
fn pynng_pushes_to_a_shoal_puller() {
    if !tools() {
        return;
    }
    let (addr, url) = tcp();
    rt().block_on(async {
        let mut puller = NngPuller::bind(&addr, &opts()).unwrap();
        let script = format!(
            "{PY_BODY}\nimport pynng, sys\ns = pynng.Push0(send_timeout=20000)\ns.dial(sys.argv[1], block=True)\nfor i in range(40): s.send(body(i))\nprint('@@ sent', flush=True)\nsys.stdin.readline()\n"
        );
        let mut py = python(&script, &url, &[]);
        for i in 0..40 {
            let f = tokio::time::timeout(20 * SEC, puller.recv())
                .await
                .expect("pynng's push did not arrive")
                .unwrap();
            assert!(f[..] == body(i)[..], "message {i} differs");
            assert!(f.peer().is_some(), "a native frame names its connection");
        }
        py.expect("sent", 10 * SEC).await;
        py.tell("bye");
        py.wait_success(10 * SEC).await;
    });
}

#[test]
fn shoal_pushes_to_a_pynng_puller() {
    if !tools() {
        return;
    }
    let (addr, url) = tcp();
    rt().block_on(async {
        let script = format!(
            "{PY_BODY}\nimport pynng, sys\ns = pynng.Pull0(listen=sys.argv[1], recv_timeout=20000)\nprint('@@ listening', flush=True)\nfor i in range(1, 41):\n    m = s.recv()\n    print('@@ ' + ('ok' if m == body(i) else 'bad %d %d' % (i, len(m))), flush=True)\n"
        );
        let mut py = python(&script, &url, &[]);
        py.expect("listening", 20 * SEC).await;
        let mut pusher = NngPusher::connect(&addr, &opts()).await.unwrap();
        for i in 1..=40 {
            pusher.send(&body(i)).await.unwrap();
        }
        for i in 0..40 {
            let l = py.next(20 * SEC).await;
            assert_eq!(l.as_deref(), Some("ok"), "message {i}");
        }
        py.wait_success(10 * SEC).await;
    });
}

#[test]
fn pynng_publishes_to_a_shoal_subscriber_by_topic() {
    if !tools() {
        return;
    }
    let (addr, url) = tcp();
    rt().block_on(async {
        let script = "import pynng, sys, time\ns = pynng.Pub0(listen=sys.argv[1])\nprint('@@ listening', flush=True)\nend = time.time() + 30\ni = 0\nwhile time.time() < end:\n    s.send(b'a/%d' % i)\n    s.send(b'b/%d' % i)\n    i += 1\n    time.sleep(0.002)\n";
        let mut py = python(script, &url, &[]);
        py.expect("listening", 20 * SEC).await;
        let mut sub = NngSubscriber::connect(&addr, &opts()).await.unwrap();
        sub.subscribe(b"a/");
        let mut last: Option<u64> = None;
        for _ in 0..100 {
            let f = tokio::time::timeout(20 * SEC, sub.recv())
                .await
                .expect("pynng's publisher sent nothing")
                .unwrap();
            assert_eq!(f.topic(), b"a/", "only the subscribed prefix arrives");
            let n: u64 = std::str::from_utf8(&f).unwrap().parse().unwrap();
            if let Some(l) = last {
                assert_eq!(n, l + 1, "a reader that keeps up loses nothing");
            }
            last = Some(n);
        }
        py.kill();
    });
}

#[test]
fn shoal_publishes_to_a_pynng_subscriber_by_topic() {
    if !tools() {
        return;
    }
    let (addr, url) = tcp();
    rt().block_on(async {
        let mut publisher = NngPublisher::bind(&addr, &opts()).unwrap();
        let script = "import pynng, sys\ns = pynng.Sub0(recv_timeout=20000)\ns.subscribe(b'a/')\ns.dial(sys.argv[1], block=True)\nfor k in range(100):\n    print('@@ ' + s.recv().decode(), flush=True)\n";
        let mut py = python(script, &url, &[]);
        publisher.wait_for_subscribers(1, 20 * SEC).await.unwrap();
        // The subscription travels with nothing to say it arrived: send
        // until the subscriber has heard enough.
        let sender = async {
            for i in 0u64.. {
                publisher.send(b"a/", i.to_string().as_bytes()).await.unwrap();
                publisher.send(b"b/", i.to_string().as_bytes()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        let reader = async {
            let mut last: Option<u64> = None;
            for _ in 0..100 {
                let l = py.next(20 * SEC).await.expect("pynng heard nothing");
                let n: u64 = l
                    .strip_prefix("a/")
                    .unwrap_or_else(|| panic!("unsubscribed topic arrived: {l}"))
                    .parse()
                    .unwrap();
                if let Some(p) = last {
                    assert_eq!(n, p + 1, "a reader that keeps up loses nothing");
                }
                last = Some(n);
            }
        };
        tokio::select! {
            _ = sender => unreachable!(),
            _ = reader => {}
        }
        py.wait_success(10 * SEC).await;
    });
}

#[test]
fn pynng_asks_a_shoal_replier_and_shoal_asks_a_pynng_replier() {
    if !tools() {
        return;
    }
    let (addr, url) = tcp();
    rt().block_on(async {
        let mut replier = NngReplier::bind(&addr, &opts()).unwrap();
        let script = format!(
            "{PY_BODY}\nimport pynng, sys\ns = pynng.Req0(recv_timeout=20000, recv_max_size=4 << 20)\ns.dial(sys.argv[1], block=True)\nfor i in range(1, 21):\n    s.send(body(i))\n    print('@@ ' + ('ok' if s.recv() == b'r:' + body(i) else 'bad'), flush=True)\n"
        );
        let mut py = python(&script, &url, &[]);
        for _ in 0..20 {
            tokio::time::timeout(20 * SEC, replier.serve_one(|q| [b"r:", &q[..]].concat()))
                .await
                .expect("pynng asked nothing")
                .unwrap();
            assert_eq!(py.next(20 * SEC).await.as_deref(), Some("ok"));
        }
        py.wait_success(10 * SEC).await;
        drop(replier);

        let (addr, url) = tcp();
        let script = "import pynng, sys\ns = pynng.Rep0(listen=sys.argv[1], recv_timeout=20000, recv_max_size=4 << 20)\nprint('@@ listening', flush=True)\nfor i in range(20):\n    s.send(b'r:' + s.recv())\n";
        let mut py = python(script, &url, &[]);
        py.expect("listening", 20 * SEC).await;
        let mut req = NngRequester::connect(&addr, &opts()).await.unwrap();
        for i in 1..=20 {
            let q = body(i);
            let r = tokio::time::timeout(20 * SEC, req.request(&q))
                .await
                .expect("pynng did not answer")
                .unwrap();
            assert!(r[..] == [b"r:", &q[..]].concat()[..], "answer {i} differs");
        }
        py.wait_success(10 * SEC).await;
    });
}

/// Runs `cmd` (which ends by itself) for at most `limit`; its stdout.
fn bounded(mut cmd: Command, limit: Duration) -> String {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting nngcat");
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(out), &mut s);
        s
    });
    let end = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    reader.join().unwrap()
}

#[test]
fn nngcat_pushes_to_and_pulls_from_shoal() {
    if !tools() {
        return;
    }
    let (addr, url) = tcp();
    rt().block_on(async {
        let mut puller = NngPuller::bind(&addr, &opts()).unwrap();
        let mut cat = Command::new("nngcat");
        cat.args(["--push0", "--dial", &url, "--data", "from nngcat"])
            .args(["--count", "10"]);
        let cat = tokio::task::spawn_blocking(move || bounded(cat, 30 * SEC));
        for _ in 0..10 {
            let f = tokio::time::timeout(20 * SEC, puller.recv())
                .await
                .expect("nngcat's push did not arrive")
                .unwrap();
            assert_eq!(&f[..], b"from nngcat");
        }
        cat.await.unwrap();
        drop(puller);

        let (addr, url) = tcp();
        let mut cat = Command::new("nngcat");
        cat.args(["--pull0", "--listen", &url, "--quoted", "--count", "10"])
            .args(["--recv-timeout", "20"]);
        let cat = tokio::task::spawn_blocking(move || bounded(cat, 30 * SEC));
        let mut pusher = NngPusher::connect(&addr, &opts()).await.unwrap();
        for i in 0..10 {
            pusher
                .send(format!("to nngcat {i}").as_bytes())
                .await
                .unwrap();
        }
        let out = cat.await.unwrap();
        let lines: Vec<&str> = out.lines().collect();
        let want: Vec<String> = (0..10).map(|i| format!("\"to nngcat {i}\"")).collect();
        assert_eq!(lines, want, "nngcat pulled: {out:?}");
    });
}

#[test]
fn nngcat_publishes_to_and_subscribes_from_shoal() {
    if !tools() {
        return;
    }
    let (addr, url) = tcp();
    rt().block_on(async {
        let mut cat = Command::new("nngcat");
        cat.args(["--pub0", "--listen", &url, "--data", "a/news"])
            .args(["--count", "5", "--interval", "1"]);
        let first = tokio::task::spawn_blocking(move || bounded(cat, 30 * SEC));
        let mut a = NngSubscriber::connect(&addr, &opts()).await.unwrap();
        a.subscribe(b"a/");
        let mut b = NngSubscriber::connect(&addr, &opts()).await.unwrap();
        b.subscribe(b"b/");
        // nngcat publishes once a second (its interval is whole seconds).
        for _ in 0..2 {
            let f = tokio::time::timeout(20 * SEC, a.recv())
                .await
                .expect("nngcat published nothing")
                .unwrap();
            assert_eq!((f.topic(), &f[..]), (&b"a/"[..], &b"news"[..]));
        }
        assert!(
            tokio::time::timeout(SEC / 2, b.recv()).await.is_err(),
            "a subscriber to b/ got a/"
        );
        drop((a, b));
        // nngcat publishes for a few seconds more and ends by itself.

        let (addr, url) = tcp();
        let mut publisher = NngPublisher::bind(&addr, &opts()).unwrap();
        let mut cat = Command::new("nngcat");
        cat.args(["--sub0", "--dial", &url, "--subscribe", "a/", "--quoted"])
            .args(["--count", "5", "--recv-timeout", "20"]);
        let cat = tokio::task::spawn_blocking(move || bounded(cat, 30 * SEC));
        publisher.wait_for_subscribers(1, 20 * SEC).await.unwrap();
        let sender = async {
            loop {
                publisher.send(b"b/", b"other").await.unwrap();
                publisher.send(b"a/", b"mine").await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let out = tokio::select! {
            _ = sender => unreachable!(),
            out = cat => out.unwrap(),
        };
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines, vec!["\"a/mine\""; 5], "nngcat heard: {out:?}");
        first.await.unwrap();
    });
}

#[test]
fn a_foreign_peer_on_a_shoal_protocol_address_is_refused_and_others_go_on() {
    if !tools() {
        return;
    }
    // Without `?native` the queue speaks shoal's protocol over REP: nng
    // refuses a PUSH peer at its handshake, and the queue serves on.
    let a = common::tcp_addr("nng+tcp");
    let Address::NngTcp { port, .. } = a else {
        unreachable!()
    };
    let url = format!("tcp://127.0.0.1:{port}");
    rt().block_on(async {
        let mut puller = NngPuller::bind(&a, &opts()).unwrap();
        let script = "import pynng, sys\ns = pynng.Push0(send_timeout=3000)\ns.dial(sys.argv[1], block=False)\ntry:\n    s.send(b'x')\n    print('@@ sent', flush=True)\nexcept pynng.Timeout:\n    print('@@ refused', flush=True)\n";
        let mut py = python(script, &url, &[]);
        assert_eq!(py.next(20 * SEC).await.as_deref(), Some("refused"));
        let mut pusher = NngPusher::connect(&a, &opts()).await.unwrap();
        pusher.send(b"still serving").await.unwrap();
        let f = tokio::time::timeout(10 * SEC, puller.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&f[..], b"still serving");
    });
}
