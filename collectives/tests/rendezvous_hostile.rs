//! Rank 0's rendezvous against hostile and broken peers: each offence
//! drops that peer (or refuses its request), and the group's own ranks
//! are served meanwhile.

use shoal_collectives::rendezvous::wire::{
    read_frame, write_frame, Reply, Request, Secret, MAX_SECRET, VERSION,
};
use shoal_collectives::rendezvous::{Client, Limits, Server};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn server(size: u32) -> Server {
    server_with(size, Secret::none())
}

fn server_with(size: u32, secret: Secret) -> Server {
    let limits = Limits {
        max_frame: 1 << 20,
        max_held: 4 << 20,
        max_connections: 64,
        hello_within: Duration::from_millis(300),
        frame_within: Duration::from_millis(500),
    };
    Server::bind("127.0.0.1:0", size, limits, secret).unwrap()
}

/// Whether the server closed `s` within `within` (reads hit the end).
fn closed(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Two real ranks run `n` barriers; how long it took.
fn ranks_run(at: &str, n: u32) -> Duration {
    ranks_run_with(at, n, &Secret::none())
}

/// [`ranks_run`], the ranks showing `secret`.
fn ranks_run_with(at: &str, n: u32, secret: &Secret) -> Duration {
    let t0 = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|rank| {
            let at = at.to_string();
            let secret = secret.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&at, rank, 2, &secret, Duration::from_secs(5), 1 << 20)
                    .unwrap();
                for i in 0..n {
                    let r = c
                        .call(
                            &Request::Collect {
                                key: format!("b{i}").into_bytes(),
                                n: 2,
                                rank,
                                want: false,
                                wait_ms: 10_000,
                                value: vec![],
                            },
                            Duration::from_secs(10),
                        )
                        .unwrap();
                    assert_eq!(r, Reply::Ok);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    t0.elapsed()
}

#[test]
fn hostile_peers_are_dropped_and_ranks_served_meanwhile() {
    let s = server(2);
    let at = s.address().to_string();
    let alone = ranks_run(&at, 200);

    // Garbage instead of a hello.
    let mut garbage = TcpStream::connect(&at).unwrap();
    garbage.write_all(&[5, 0, 0, 0, 0xff, 1, 2, 3, 4]).unwrap();
    // A 4 GiB length prefix.
    let mut huge = TcpStream::connect(&at).unwrap();
    huge.write_all(&u32::MAX.to_le_bytes()).unwrap();
    // Slowloris: connects and says nothing.
    let mut silent = TcpStream::connect(&at).unwrap();
    // A hello begun and never finished.
    let mut cut = TcpStream::connect(&at).unwrap();
    cut.write_all(&[11, 0]).unwrap();
    // A hello sent a byte at a time, slower than the frame allows.
    let mut trickle = TcpStream::connect(&at).unwrap();
    let trickler = std::thread::spawn(move || {
        let mut b = Vec::new();
        Request::Hello {
            version: VERSION,
            rank: 0,
            size: 2,
            secret: Secret::none(),
        }
        .encode(&mut b);
        let mut framed = (b.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&b);
        let t0 = Instant::now();
        for byte in framed {
            if trickle.write_all(&[byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Dropped by the hello's deadline (300 ms), not after every byte.
        assert!(closed(&mut trickle, Duration::from_secs(3)));
        t0.elapsed()
    });
    // A hello for a group of another size.
    let mut other = TcpStream::connect(&at).unwrap();
    let mut b = Vec::new();
    Request::Hello {
        version: VERSION,
        rank: 0,
        size: 3,
        secret: Secret::none(),
    }
    .encode(&mut b);
    write_frame(&mut other, &b).unwrap();
    // Another version.
    let mut old = TcpStream::connect(&at).unwrap();
    let mut b = Vec::new();
    Request::Hello {
        version: VERSION + 1,
        rank: 0,
        size: 2,
        secret: Secret::none(),
    }
    .encode(&mut b);
    write_frame(&mut old, &b).unwrap();

    // The ranks are served meanwhile, at no less than half their rate.
    let attacked = ranks_run(&at, 200);
    assert!(
        attacked < alone * 2 + Duration::from_millis(200),
        "alone {alone:?}, under attack {attacked:?}"
    );

    for (name, s) in [
        ("garbage", &mut garbage),
        ("4 GiB", &mut huge),
        ("silent", &mut silent),
        ("cut", &mut cut),
    ] {
        assert!(closed(s, Duration::from_secs(3)), "{name} still open");
    }
    let took = trickler.join().unwrap();
    assert!(took < Duration::from_secs(3), "{took:?}");
    for s in [&mut other, &mut old] {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let body = read_frame(s, 1 << 16).unwrap().unwrap();
        assert!(matches!(Reply::decode(&body).unwrap(), Reply::Refused(_)));
        assert!(closed(s, Duration::from_secs(3)));
    }
}

#[test]
fn requests_a_rank_must_not_make_are_refused() {
    let s = server(2);
    let at = s.address().to_string();
    let mut c =
        Client::connect(&at, 1, 2, &Secret::none(), Duration::from_secs(5), 1 << 20).unwrap();
    let collect = |rank, n, key: &str, value: Vec<u8>| Request::Collect {
        key: key.as_bytes().to_vec(),
        n,
        rank,
        want: true,
        wait_ms: 100,
        value,
    };
    let refused = |r: Reply| matches!(r, Reply::Refused(_));
    let w = Duration::from_secs(5);
    // A rank past the collective, a collective past the group.
    assert!(refused(c.call(&collect(2, 2, "a", vec![]), w).unwrap()));
    assert!(refused(c.call(&collect(0, 3, "a", vec![]), w).unwrap()));
    // Values past what the rendezvous holds at once.
    let big = || vec![0u8; 900 << 10];
    let mut others: Vec<Client> = (0..5)
        .map(|_| Client::connect(&at, 1, 2, &Secret::none(), w, 1 << 20).unwrap())
        .collect();
    let threads: Vec<_> = others
        .drain(..)
        .enumerate()
        .map(|(i, mut o)| {
            let req = Request::Collect {
                key: format!("held{i}").into_bytes(),
                n: 2,
                rank: 1,
                want: false,
                wait_ms: 1500,
                value: big(),
            };
            std::thread::spawn(move || o.call(&req, w).unwrap())
        })
        .collect();
    let answers: Vec<Reply> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // Four of 900 KiB fit in 4 MiB; the fifth is refused; the others
    // wait out their time for rank 0, who never comes.
    assert_eq!(
        answers.iter().filter(|r| refused((*r).clone())).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        answers
            .iter()
            .filter(|r| matches!(r, Reply::Absent(a) if a == &[0]))
            .count(),
        4
    );
    // A frame past the largest is refused, and the connection dropped.
    let mut raw = Client::connect(&at, 1, 2, &Secret::none(), w, 4 << 20).unwrap();
    let r = raw.call(&collect(1, 2, "x", vec![0; 2 << 20]), w);
    assert!(r.is_err(), "{r:?}");
    // The same rank twice in one collective.
    let mut d = Client::connect(&at, 1, 2, &Secret::none(), w, 1 << 20).unwrap();
    let first = std::thread::spawn(move || c.call(&collect(1, 2, "dup", vec![]), w).unwrap());
    std::thread::sleep(Duration::from_millis(30));
    assert!(refused(d.call(&collect(1, 2, "dup", vec![]), w).unwrap()));
    assert!(matches!(first.join().unwrap(), Reply::Absent(_)));
    // Unlocking a lock not held.
    assert!(refused(
        d.call(
            &Request::Unlock {
                key: b"l".to_vec(),
                consistent: true
            },
            w
        )
        .unwrap()
    ));
}

#[test]
fn too_many_connections_are_refused_and_the_rest_served() {
    let limits = Limits {
        max_connections: 8,
        ..Limits::for_group(2)
    };
    let s = Server::bind("127.0.0.1:0", 2, limits, Secret::none()).unwrap();
    let at = s.address().to_string();
    let idle: Vec<Client> = (0..8)
        .map(|_| {
            Client::connect(&at, 1, 2, &Secret::none(), Duration::from_secs(5), 1 << 20).unwrap()
        })
        .collect();
    let mut extra = TcpStream::connect(&at).unwrap();
    assert!(closed(&mut extra, Duration::from_secs(3)));
    drop(idle);
    // Once they left, ranks get in again.
    std::thread::sleep(Duration::from_millis(300));
    ranks_run(&at, 10);
}

/// With a secret, rank 0 lets in only the connections that show it: one
/// with another secret, or none, is refused at once (not tried again
/// until its timeout), told why without the secret, and the ranks that
/// show it are served. A rank showing a secret to a rendezvous without
/// one is refused too (the group is not the one it was started in).
#[test]
fn only_ranks_showing_the_secret_are_let_in() {
    let secret = Secret::new(b"f3a9-job-42".to_vec());
    let s = server_with(2, secret.clone());
    let at = s.address().to_string();
    ranks_run_with(&at, 20, &secret);
    for (name, shown) in [
        ("another secret", Secret::new(b"f3a9-job-43".to_vec())),
        ("a longer one", Secret::new(b"f3a9-job-42!".to_vec())),
        ("none", Secret::none()),
    ] {
        let t0 = Instant::now();
        let e =
            Client::connect(&at, 1, 2, &shown, Duration::from_secs(20), 1 << 20).expect_err(name);
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{name}: {:?}",
            t0.elapsed()
        );
        let text = e.to_string();
        assert!(text.contains("SHOAL_SECRET"), "{name}: {text}");
        assert!(!text.contains("job-4"), "{name} shows the secret: {text}");
    }
    // Still serving its own.
    ranks_run_with(&at, 20, &secret);
    // A secret too long for the wire is refused before it is sent (not
    // cut, which would let in every secret with the same beginning).
    let long = Secret::new(vec![b'x'; MAX_SECRET + 1]);
    assert!(matches!(
        Client::connect(&at, 1, 2, &long, Duration::from_secs(5), 1 << 20),
        Err(shoal_collectives::Error::BadArguments(_))
    ));

    let open = server(2);
    let e = Client::connect(
        &open.address().to_string(),
        1,
        2,
        &secret,
        Duration::from_secs(20),
        1 << 20,
    )
    .expect_err("a secret shown to a group without one");
    assert!(e.to_string().contains("has none"), "{e}");
}
