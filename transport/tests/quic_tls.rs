//! QUIC's TLS (issue 7): the server's certificate is pinned by SHA-256 in
//! the address; the right pin connects, a wrong one cannot, none is an
//! error naming what is missing; IPv4, IPv6 and host names all work.
#![cfg(feature = "quic")]

mod common;

use common::{rt, SEC};
use shoal_transport::{Address, Error, Options, QuicReplier, QuicRequester};
use std::time::{Duration, Instant};

/// Serves `n` echo requests in the background.
fn echo(mut r: QuicReplier, n: usize) -> tokio::task::JoinHandle<QuicReplier> {
    tokio::spawn(async move {
        for _ in 0..n {
            r.serve_one(|q| [&q[..], b"!"].concat()).await.unwrap();
        }
        r
    })
}

fn with_pin(a: &Address, pin: Option<[u8; 32]>) -> Address {
    match a {
        Address::Quic { host, port, .. } => Address::Quic {
            host: host.clone(),
            port: *port,
            pin,
        },
        other => other.clone(),
    }
}

#[test]
fn the_right_pin_connects_and_a_wrong_one_cannot() {
    rt().block_on(async {
        let o = Options::default().connect_timeout(2 * SEC);
        let r = QuicReplier::bind(&"quic://127.0.0.1:0".parse().unwrap(), &o)
            .await
            .unwrap();
        let a = r.address();
        let Address::Quic {
            port,
            pin: Some(pin),
            ..
        } = &a
        else {
            panic!("a bound QUIC address carries its port and pin: {a}");
        };
        assert_ne!(*port, 0);
        let server = echo(r, 1);
        let mut c = QuicRequester::connect(&a, &o).await.unwrap();
        assert_eq!(&*c.request(b"hi").await.unwrap(), b"hi!");
        // Kept bound: the wrong pin below meets a live server.
        let _r = server.await.unwrap();

        // One bit off: refused at the handshake, at once (not after the
        // connect timeout), with a message saying why.
        let mut wrong = *pin;
        wrong[31] ^= 1;
        let t0 = Instant::now();
        let e = QuicRequester::connect(&with_pin(&a, Some(wrong)), &o)
            .await
            .unwrap_err();
        assert!(t0.elapsed() < o.connect_timeout, "{e}");
        assert!(e.to_string().contains("does not match the pin"), "{e}");

        // No pin: an address error naming the query parameter.
        let e = QuicRequester::connect(&with_pin(&a, None), &o)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::BadAddress { .. }), "{e}");
        assert!(e.to_string().contains("pin="), "{e}");
    });
}

#[test]
fn binding_with_a_pin_is_refused() {
    rt().block_on(async {
        let a: Address = format!("quic://127.0.0.1:0?pin={}", "00".repeat(32))
            .parse()
            .unwrap();
        let e = QuicReplier::bind(&a, &Options::default())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::BadAddress { .. }), "{e}");
    });
}

#[test]
fn ipv6_literals_and_host_names_work() {
    rt().block_on(async {
        let o = Options::default().connect_timeout(2 * SEC);
        for bind in ["quic://[::1]:0", "quic://localhost:0"] {
            let r = match QuicReplier::bind(&bind.parse().unwrap(), &o).await {
                Ok(r) => r,
                Err(e) if bind.contains("::1") => {
                    println!("skipped {bind}: no IPv6 loopback here ({e})");
                    continue;
                }
                Err(e) => panic!("{bind}: {e}"),
            };
            let a = r.address();
            let server = echo(r, 1);
            let mut c = QuicRequester::connect(&a, &o).await.unwrap();
            let reply = tokio::time::timeout(5 * SEC, c.request(bind.as_bytes()))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&*reply, [bind.as_bytes(), b"!"].concat().as_slice());
            server.await.unwrap();
        }
    });
}

#[test]
fn a_dead_replier_is_a_typed_error_not_a_hang() {
    rt().block_on(async {
        let o = Options::default().connect_timeout(Duration::from_millis(500));
        let r = QuicReplier::bind(&"quic://127.0.0.1:0".parse().unwrap(), &o)
            .await
            .unwrap();
        let a = r.address();
        let mut c = QuicRequester::connect(&a, &o).await.unwrap();
        // The replier takes the request and never answers, then goes.
        let server = tokio::spawn(async move {
            let mut r = r;
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(r.serve_one(|_| Vec::new()));
            drop(r);
        });
        let t0 = Instant::now();
        let e = tokio::time::timeout(20 * SEC, c.request(b"?"))
            .await
            .expect("a request to a replier that went away ends")
            .unwrap_err();
        assert!(
            matches!(e, Error::PeerGone { .. } | Error::Closed),
            "{e} after {:?}",
            t0.elapsed()
        );
        server.await.unwrap();
    });
}

#[test]
fn an_identity_saved_and_loaded_keeps_its_pin_and_bad_files_are_refused() {
    use shoal_transport::quic::tls::Identity;
    let dir = std::env::temp_dir();
    let path = dir.join(format!("shoal-id-test-{}", std::process::id()));
    let id = Identity::generate().unwrap();
    id.save(&path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key is readable by its owner only");
    assert_eq!(Identity::load(&path).unwrap().pin(), id.pin());
    let good = std::fs::read(&path).unwrap();
    // Truncated anywhere, a byte flipped in the key, trailing bytes: refused.
    for n in [0, 5, 30, good.len() / 2, good.len() - 1] {
        std::fs::write(&path, &good[..n]).unwrap();
        assert!(Identity::load(&path).is_err(), "truncated to {n}");
    }
    let mut flipped = good.clone();
    let last = flipped.len() - 10;
    flipped[last] ^= 0xff;
    std::fs::write(&path, &flipped).unwrap();
    assert!(Identity::load(&path).is_err(), "a damaged key");
    std::fs::write(&path, [good.as_slice(), b"x"].concat()).unwrap();
    assert!(Identity::load(&path).is_err(), "trailing bytes");
    let _ = std::fs::remove_file(&path);
}

/// A peer of another version of shoal's protocol over QUIC (another
/// ALPN, or none) is refused at the handshake, with an error that says
/// so, not one about the pin; whichever side raises the alert.
#[test]
fn a_server_of_another_protocol_version_is_refused_by_name() {
    use shoal_transport::quic::tls::Identity;
    rt().block_on(async {
        for alpn in [vec![b"shoal/1".to_vec()], vec![]] {
            let id = Identity::generate().unwrap();
            let mut tls = id.server_config().unwrap();
            tls.alpn_protocols = alpn.clone();
            let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
            let cfg = quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto));
            let ep = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
            let port = ep.local_addr().unwrap().port();
            let server = tokio::spawn(async move {
                while let Some(i) = ep.accept().await {
                    let _ = i.await;
                }
            });
            let hex: String = id.pin().iter().map(|b| format!("{b:02x}")).collect();
            let a: Address = format!("quic://127.0.0.1:{port}?pin={hex}")
                .parse()
                .unwrap();
            let o = Options::default().connect_timeout(Duration::from_secs(3));
            let t0 = Instant::now();
            let e = QuicRequester::connect(&a, &o).await.unwrap_err();
            println!("server ALPN {alpn:?}: {e}");
            assert!(t0.elapsed() < 2 * SEC, "refused at once, not retried");
            assert!(e.to_string().contains("protocol version"), "{e}");
            server.abort();
        }
    });
}

/// A reply written just before its replier is dropped still reaches its
/// requester whole (the replier's drop waits for it to be read); the
/// requester's next request then ends at once with a typed error.
#[test]
fn a_reply_sent_as_the_replier_drops_arrives_whole() {
    rt().block_on(async {
        let o = Options::default()
            .max_message(4 << 20)
            .connect_timeout(Duration::from_millis(500));
        let mut r = QuicReplier::bind(&"quic://127.0.0.1:0".parse().unwrap(), &o)
            .await
            .unwrap();
        let a = r.address();
        let mut c = QuicRequester::connect(&a, &o).await.unwrap();
        let (warm, served) = tokio::join!(c.request(b"warm"), r.serve_one(|q| q.to_vec()));
        served.unwrap();
        assert_eq!(&*warm.unwrap(), b"warm");
        let big = vec![5u8; 3 << 20];
        let server = tokio::spawn(async move {
            r.serve_one(|_| big).await.unwrap();
            drop(r);
        });
        let reply = tokio::time::timeout(10 * SEC, c.request(b"big"))
            .await
            .unwrap()
            .unwrap();
        assert!(reply.len() == 3 << 20 && reply.iter().all(|&b| b == 5));
        server.await.unwrap();
        let t0 = Instant::now();
        let e = tokio::time::timeout(10 * SEC, c.request(b"again"))
            .await
            .expect("a request to a replier that was dropped ends")
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::PeerGone { .. } | Error::Closed | Error::NotBound { .. }
            ),
            "{e}"
        );
        println!("after the replier's drop: {e} in {:?}", t0.elapsed());
    });
}
