//! shoal-transport measured across processes.
//!
//! `transport rpc --size B --iters N [--pin]`: request/reply round trips
//! over shared memory (`shm://`), a replier process and a requester
//! process, timed in batches of 32 round trips. Metric
//! `latency_round_trip_ns` (beyond BENCH.md's list: one request and its
//! reply, end to end through the async API).
//!
//! `transport rpc --wire nng-tcp|nng-ipc|quic --size B --iters N`: the
//! same over a network backend, through the generic `Wire` API (the
//! replier process binds port 0 and tells the requester its address, with
//! the QUIC pin). Metric `latency_round_trip_ns`, transport the wire.
//! With `--blocking`, both ends are driven from plain threads through
//! `shoal_transport::blocking::Blocking` (mode `blocking`; compared with
//! raw nng's blocking calls).
//!
//! `transport nng-raw --size B --iters N [--ipc] [--aio]`: the peer: raw nng
//! REQ/REP (the NNG the nng backend is built on, blocking calls, no
//! envelope), transport `tcp` or `ipc`.
//!
//! `transport nng-raw --aio ...`: the same raw REQ/REP driven the way an
//! async program drives NNG: each send and receive an nng aio whose
//! completion wakes a tokio task, on both sides (mode `aio`; what an async
//! API over this NNG costs before any protocol of its own).
//!
//! `transport quinn-raw --size B --iters N`: the peer: raw quinn, one
//! bidirectional stream, the requester writes B bytes and reads B back
//! (the floor of request/reply over QUIC: no framing, no stream per
//! request; shoal's QUIC request/reply also keeps one stream per
//! requester), same TLS (ring, TLS 1.3). With `--stream-per-request`: a
//! bidirectional stream per request, as shoal's did until 2026-12-03
//! (mode `stream-per-request`).
//!
//! `transport tcp-raw --size B --iters N`: the reference: plain tokio TCP,
//! one connection, B bytes each way (transport `tcp`).
//!
//! `transport typed --iters N`: what reading a small struct as a validated
//! rkyv archive adds over taking the raw bytes of the same frame, in
//! process (metric `typed_receive_overhead_ns`, one sample per batch of
//! 1024 reads; pattern `rpc-typed`, processes 1).
//!
//! `transport oneway --wire nng-tcp|nng-ipc|quic [--pub] --size B --ms T
//! [--capacity B]` (shoal's `Options::capacity`, default 8 MiB),
//! `transport oneway-raw --peer nng|nng-ipc|quinn|tcp --size B --ms T
//! [--capacity B]` (raw quinn given the flow-control windows shoal's QUIC
//! backend sets for that capacity): one-way throughput (see the `oneway`
//! module).
//!
//! Prints one JSON [`Measurement`] per line.

use shoal_bench::measure::Measurement;
use shoal_bench::proc::{fork, Args};
use shoal_transport::{
    Address, AlignedBuf, Frame, Nng, Options, Quic, Replier, Requester, ShmReplier, ShmRequester,
    Wire,
};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

#[path = "transport/oneway.rs"]
mod oneway;

/// Round trips per sample.
const BATCH: u64 = 32;
/// Round trips before the first sample.
const WARMUP: u64 = 1024;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn rpc(size: usize, iters: u64, pin: bool) -> Measurement {
    let total = (iters + WARMUP).div_ceil(BATCH) * BATCH;
    let addr: Address = format!("shm://bench-rpc-{}", std::process::id())
        .parse()
        .expect("address");
    let opts = Options::default().capacity(1 << 16);
    let server_addr = addr.clone();
    let server_opts = opts.clone();
    let child = fork(move || {
        if pin {
            shoal_bench::proc::pin(1);
        }
        rt().block_on(async move {
            let Ok(mut server) = ShmReplier::bind(&server_addr, &server_opts) else {
                return 1;
            };
            for _ in 0..total {
                let Ok((req, replies)) = server.recv().await else {
                    return 1;
                };
                if replies.reply(&req, &req[..]).await.is_err() {
                    return 1;
                }
            }
            0
        })
    })
    .expect("fork");
    if pin {
        shoal_bench::proc::pin(0);
    }
    let mut m =
        Measurement::new("shoal", "rpc", "park", "latency_round_trip_ns").payload(size as u64);
    rt().block_on(async {
        let mut c = match ShmRequester::connect(&addr, &opts).await {
            Ok(c) => c,
            Err(e) => {
                m.error = Some(e.to_string());
                return;
            }
        };
        let q = vec![7u8; size];
        let mut done = 0;
        while done < total {
            let t0 = Instant::now();
            for _ in 0..BATCH {
                match c.request(&q).await {
                    Ok(r) => debug_assert_eq!(r.len(), size),
                    Err(e) => {
                        m.error = Some(e.to_string());
                        return;
                    }
                }
            }
            done += BATCH;
            if done > WARMUP {
                m.samples
                    .push(t0.elapsed().as_nanos() as f64 / BATCH as f64);
            }
        }
    });
    let _ = child.wait();
    m
}

/// Round trips before the first sample over a network wire: a quarter of
/// those measured, at least one batch, at most [`WARMUP`] (a 1 MiB round
/// trip takes a millisecond).
fn warmup(iters: u64) -> u64 {
    (iters / 4).clamp(BATCH, WARMUP)
}

/// Round trips in all for `iters` measured over a network wire.
fn total_of(iters: u64) -> u64 {
    (iters + warmup(iters)).div_ceil(BATCH) * BATCH
}

/// Times `$total` round trips of `$one` (an expression giving
/// `Result<(), String>`, awaited inside) in batches of [`BATCH`], after
/// `$warm`, into `$m`.
macro_rules! timed {
    ($m:expr, $total:expr, $warm:expr, $one:expr) => {{
        let mut done = 0;
        'all: while done < $total {
            let t0 = Instant::now();
            for _ in 0..BATCH {
                let r: Result<(), String> = $one;
                if let Err(e) = r {
                    $m.error = Some(e);
                    break 'all;
                }
            }
            done += BATCH;
            if done > $warm {
                $m.samples
                    .push(t0.elapsed().as_nanos() as f64 / BATCH as f64);
            }
        }
    }};
}

/// The replier's process: binds `bind` on wire `W`, tells the parent its
/// address through `tell`, echoes `total` requests.
fn serve<W: Wire>(bind: Address, total: u64, tell: UnixStream, blocking: bool) -> i32 {
    if blocking {
        return serve_blocking::<W>(bind, total, tell);
    }
    let mut tell = tell;
    rt().block_on(async move {
        let o = Options::default();
        let mut r = match W::bind_replier(&bind, &o).await {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(tell, "error {e}");
                return 1;
            }
        };
        let _ = writeln!(tell, "{}", r.address());
        for i in 0..total {
            // The echo written straight into the wire's memory (one copy,
            // the one any answer costs).
            let echo = |q: &[u8], out: &mut shoal_transport::Reply<'_>| {
                out.reserve(q.len());
                out.extend_from_slice(q);
            };
            if let Err(e) = r.serve_one_into(echo).await {
                eprintln!("transport: server: request {i} of {total}: {e}");
                return 1;
            }
        }
        // Kept serving (the runtime keeps the wire's tasks running) until
        // the parent is done: it writes a byte (this process holds the
        // parent's end too, so no end of file would come).
        if tell.set_nonblocking(true).is_ok() {
            if let Ok(mut t) = tokio::net::UnixStream::from_std(tell) {
                let _ = tokio::io::AsyncReadExt::read(&mut t, &mut [0u8; 1]).await;
            }
        }
        0
    })
}

/// [`serve`] through the blocking wrapper, on this plain thread.
fn serve_blocking<W: Wire>(bind: Address, total: u64, mut tell: UnixStream) -> i32 {
    let o = Options::default();
    let mut r = match shoal_transport::blocking::Blocking::new(W::bind_replier(&bind, &o)) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(tell, "error {e}");
            return 1;
        }
    };
    let _ = writeln!(tell, "{}", r.get_mut().address());
    for i in 0..total {
        let echo = |q: &[u8], out: &mut shoal_transport::Reply<'_>| {
            out.reserve(q.len());
            out.extend_from_slice(q);
        };
        if let Err(e) = r.serve_one_into(echo) {
            eprintln!("transport: server: request {i} of {total}: {e}");
            return 1;
        }
    }
    let _ = std::io::Read::read(&mut tell, &mut [0u8; 1]);
    0
}

/// The address line a child process wrote, or its error.
fn told(from: &UnixStream) -> Result<String, String> {
    let mut line = String::new();
    BufReader::new(from)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let line = line.trim().to_string();
    match line.strip_prefix("error ") {
        Some(e) => Err(e.to_string()),
        None if line.is_empty() => Err("the server process said nothing".into()),
        None => Ok(line),
    }
}

/// Request/reply over a network wire of shoal's.
fn rpc_net(wire: &str, size: usize, iters: u64, blocking: bool) -> Measurement {
    let total = total_of(iters);
    let warm = warmup(iters);
    let bind: Address = match wire {
        "nng-ipc" => format!("nng+ipc:///tmp/shoal-bench-{}.sock", std::process::id()),
        "nng-tcp" => "nng+tcp://127.0.0.1:0".into(),
        _ => "quic://127.0.0.1:0".into(),
    }
    .parse()
    .expect("address");
    let mode = if blocking { "blocking" } else { "park" };
    let mut m = Measurement::new("shoal", "rpc", mode, "latency_round_trip_ns")
        .payload(size as u64)
        .transport(wire);
    let (tell, hear) = UnixStream::pair().expect("socketpair");
    let w = wire.to_string();
    let child = fork(move || match w.as_str() {
        "quic" => serve::<Quic>(bind, total, tell, blocking),
        _ => serve::<Nng>(bind, total, tell, blocking),
    })
    .expect("fork");
    let addr = match told(&hear).and_then(|a| a.parse::<Address>().map_err(|e| e.to_string())) {
        Ok(a) => a,
        Err(e) => {
            m.error = Some(e);
            let _ = child.wait();
            return m;
        }
    };
    async fn client<W: Wire>(
        m: &mut Measurement,
        addr: &Address,
        size: usize,
        total: u64,
        warm: u64,
    ) {
        let mut c = match W::connect_requester(addr, &Options::default()).await {
            Ok(c) => c,
            Err(e) => {
                m.error = Some(e.to_string());
                return;
            }
        };
        let q = vec![7u8; size];
        timed!(
            m,
            total,
            warm,
            c.request(&q)
                .await
                .map(|r| debug_assert_eq!(r.len(), q.len()))
                .map_err(|e| e.to_string())
        );
    }
    fn client_blocking<W: Wire>(
        m: &mut Measurement,
        addr: &Address,
        size: usize,
        total: u64,
        warm: u64,
    ) {
        let o = Options::default();
        let mut c = match shoal_transport::blocking::Blocking::new(W::connect_requester(addr, &o)) {
            Ok(c) => c,
            Err(e) => {
                m.error = Some(e.to_string());
                return;
            }
        };
        let q = vec![7u8; size];
        timed!(
            m,
            total,
            warm,
            c.request(&q, None)
                .map(|r| debug_assert_eq!(r.len(), q.len()))
                .map_err(|e| e.to_string())
        );
    }
    if blocking {
        match wire {
            "quic" => client_blocking::<Quic>(&mut m, &addr, size, total, warm),
            _ => client_blocking::<Nng>(&mut m, &addr, size, total, warm),
        }
    } else {
        rt().block_on(async {
            match wire {
                "quic" => client::<Quic>(&mut m, &addr, size, total, warm).await,
                _ => client::<Nng>(&mut m, &addr, size, total, warm).await,
            }
        });
    }
    let _ = (&hear).write_all(b".");
    match child.wait() {
        Ok(0) => {}
        Ok(c) if m.error.is_none() => m.error = Some(format!("server exited with {c}")),
        Err(e) if m.error.is_none() => m.error = Some(e),
        _ => {}
    }
    m
}

/// One nng operation started by `start` on a fresh aio, awaited from
/// tokio: the aio's callback (on an NNG thread) completes a oneshot
/// channel, which wakes the task.
async fn aio_op(
    start: impl FnOnce(&nng::Aio) -> Result<(), nng::Error>,
) -> Result<nng::AioResult, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let aio = nng::Aio::new(move |_, r| {
        if let Some(t) = tx.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.send(r);
        }
    })
    .map_err(|e| e.to_string())?;
    start(&aio).map_err(|e| e.to_string())?;
    let r = rx.await.map_err(|e| e.to_string());
    // The callback's own reference to the aio is gone once it returned.
    aio.wait();
    r
}

/// Raw nng REQ/REP: the peer.
fn nng_raw(size: usize, iters: u64, ipc: bool, aio: bool) -> Measurement {
    use nng::options::Options as _;
    let total = total_of(iters);
    let warm = warmup(iters);
    let url = nng_raw_url("raw", ipc);
    let mode = if aio { "aio" } else { "park" };
    let mut m = Measurement::new("nng", "rpc", mode, "latency_round_trip_ns")
        .payload(size as u64)
        .transport(if ipc { "nng-ipc" } else { "nng-tcp" });
    let (mut tell, hear) = UnixStream::pair().expect("socketpair");
    let u = url.clone();
    let child = fork(move || {
        let Ok(s) = nng::Socket::new(nng::Protocol::Rep0) else {
            return 1;
        };
        // nng refuses messages over 1 MiB by default.
        let _ = s.set_opt::<nng::options::RecvMaxSize>(size + 4096);
        if s.listen(&u).is_err() {
            let _ = writeln!(tell, "error cannot listen at {u}");
            return 1;
        }
        let _ = writeln!(tell, "{u}");
        // NNG has no linger: a process that exits right after its last
        // send cuts a reply larger than the socket's buffer short (the
        // requester then saw its connection reset, or, asking again,
        // waited for an answer nobody would give: the 1 MiB ipc cell had
        // no peer in any run until this). So the replier waits for the
        // requester's word before it goes.
        let done = |code: i32, mut tell: UnixStream| {
            let _ = std::io::Read::read(&mut tell, &mut [0u8; 1]);
            code
        };
        if aio {
            let code = rt().block_on(async {
                for _ in 0..total {
                    let q = match aio_op(|a| s.recv_async(a)).await {
                        Ok(nng::AioResult::Recv(Ok(q))) => q,
                        other => {
                            eprintln!("nng-raw aio replier: receive: {other:?}");
                            return 1;
                        }
                    };
                    match aio_op(|a| s.send_async(a, q).map_err(|(_, e)| e)).await {
                        Ok(nng::AioResult::Send(Ok(()))) => {}
                        other => {
                            eprintln!("nng-raw aio replier: send: {other:?}");
                            return 1;
                        }
                    }
                }
                0
            });
            return done(code, tell);
        }
        for _ in 0..total {
            let q = match s.recv() {
                Ok(q) => q,
                Err(e) => {
                    eprintln!("nng-raw replier: receive: {e}");
                    return 1;
                }
            };
            if let Err((_, e)) = s.send(q) {
                eprintln!("nng-raw replier: send: {e}");
                return 1;
            }
        }
        done(0, tell)
    })
    .expect("fork");
    if let Err(e) = told(&hear) {
        m.error = Some(e);
        let _ = child.wait();
        return m;
    }
    rt().block_on(async {
        let s = match nng::Socket::new(nng::Protocol::Req0) {
            Ok(s) => s,
            Err(e) => {
                m.error = Some(e.to_string());
                return;
            }
        };
        let _ = s.set_opt::<nng::options::RecvMaxSize>(size + 4096);
        // A lost exchange is an error in the report, not a hung matrix.
        let _ = s.set_opt::<nng::options::RecvTimeout>(Some(std::time::Duration::from_secs(10)));
        if let Err(e) = s.dial(&url) {
            m.error = Some(e.to_string());
            return;
        }
        let q = vec![7u8; size];
        if aio {
            timed!(m, total, warm, {
                let msg = nng::Message::from(&q[..]);
                match aio_op(|a| s.send_async(a, msg).map_err(|(_, e)| e)).await {
                    Ok(nng::AioResult::Send(Ok(()))) => match aio_op(|a| s.recv_async(a)).await {
                        Ok(nng::AioResult::Recv(Ok(r))) => {
                            debug_assert_eq!(r.len(), q.len());
                            Ok(())
                        }
                        other => Err(format!("receive: {other:?}")),
                    },
                    other => Err(format!("send: {other:?}")),
                }
            });
            return;
        }
        timed!(
            m,
            total,
            warm,
            s.send(&q[..])
                .map_err(|(_, e)| e.to_string())
                .and_then(|_| s.recv().map_err(|e| e.to_string()))
                .map(|r| debug_assert_eq!(r.len(), q.len()))
        );
    });
    if m.error.is_some() {
        // The replier may be waiting for a request that will not come:
        // killed (by the drop), not waited for.
        drop(child);
    } else {
        // The replier may go now (see `done` above).
        let _ = (&hear).write_all(b".");
        let _ = child.wait();
    }
    m
}

/// A raw quinn server configuration for `id`, with the TLS shoal's QUIC
/// backend uses: the raw peers' listening side.
fn quinn_server_config(
    id: &shoal_transport::quic::tls::Identity,
    capacity: u64,
) -> Result<quinn::ServerConfig, String> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(
        id.server_config().map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let mut c = quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto));
    c.transport_config(quinn_transport(capacity));
    Ok(c)
}

/// The flow-control windows shoal's QUIC backend sets for an endpoint of
/// `capacity` bytes (stream window = capacity, connection window four
/// times that), given to the raw quinn peers too: both then buffer the
/// same bytes, and a cell measures what shoal adds over quinn, not a
/// deeper buffer. With quinn's default window (1.25 MB) against shoal's
/// 8 MiB, 4 KiB one-way ran at 0.82x; raw quinn itself given 8 MiB ran
/// 0.65-0.82x its default here, the deeper buffer read back cold.
fn quinn_transport(capacity: u64) -> std::sync::Arc<quinn::TransportConfig> {
    let window = capacity.clamp(64 << 10, 1 << 30);
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(quinn::VarInt::from_u64(window).unwrap_or(quinn::VarInt::MAX))
        .receive_window(quinn::VarInt::from_u64(window * 4).unwrap_or(quinn::VarInt::MAX));
    std::sync::Arc::new(t)
}

/// The URL a raw nng peer listens at: an ipc path named by `tag` and
/// this process, or a loopback TCP port free a moment ago.
fn nng_raw_url(tag: &str, ipc: bool) -> String {
    if ipc {
        format!("ipc:///tmp/shoal-bench-{tag}-{}.sock", std::process::id())
    } else {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        format!("tcp://127.0.0.1:{port}")
    }
}

/// A raw quinn client connected to `127.0.0.1:port`, pinning `pin` as
/// shoal's QUIC backend does (same TLS): the raw peers' side of a
/// connection.
async fn quinn_connect(
    pin: [u8; 32],
    port: u16,
    capacity: u64,
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    use shoal_transport::quic::tls::client_config;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(
        client_config(pin).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let mut ep = quinn::Endpoint::client(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| e.to_string())?;
    let mut c = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    c.transport_config(quinn_transport(capacity));
    ep.set_default_client_config(c);
    let conn = ep
        .connect(([127, 0, 0, 1], port).into(), "shoal")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok((ep, conn))
}

/// Raw quinn, one stream: the peer.
fn quinn_raw(size: usize, iters: u64, per_request: bool) -> Measurement {
    use shoal_transport::quic::tls::Identity;
    let total = total_of(iters);
    let warm = warmup(iters);
    let mut m = Measurement::new(
        "quinn",
        "rpc",
        if per_request {
            "stream-per-request"
        } else {
            "park"
        },
        "latency_round_trip_ns",
    )
    .payload(size as u64)
    .transport("quic");
    let (mut tell, hear) = UnixStream::pair().expect("socketpair");
    let child = fork(move || {
        rt().block_on(async move {
            let served = async {
                let id = Identity::generate().map_err(|e| e.to_string())?;
                let cfg = quinn_server_config(&id, Options::default().capacity)?;
                let ep = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().expect("addr"))
                    .map_err(|e| e.to_string())?;
                let port = ep.local_addr().map_err(|e| e.to_string())?.port();
                let hex: String = id.pin().iter().map(|b| format!("{b:02x}")).collect();
                let _ = writeln!(tell, "{port} {hex}");
                let conn = ep
                    .accept()
                    .await
                    .ok_or("no connection")?
                    .await
                    .map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; size];
                if per_request {
                    for _ in 0..total {
                        let (mut send, mut recv) =
                            conn.accept_bi().await.map_err(|e| e.to_string())?;
                        recv.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
                        send.write_all(&buf).await.map_err(|e| e.to_string())?;
                        let _ = send.finish();
                    }
                } else {
                    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
                    for _ in 0..total {
                        recv.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
                        send.write_all(&buf).await.map_err(|e| e.to_string())?;
                    }
                    let _ = send.finish();
                }
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(2), conn.closed()).await;
                Ok::<(), String>(())
            };
            match served.await {
                Ok(()) => 0,
                Err(e) => {
                    let _ = writeln!(tell, "error {e}");
                    1
                }
            }
        })
    })
    .expect("fork");
    let (port, pin) = match told(&hear).and_then(|l| {
        let (p, h) = l.split_once(' ').ok_or("bad line")?;
        let port: u16 = p.parse().map_err(|_| "bad port")?;
        let a: Address = format!("quic://127.0.0.1:{port}?pin={h}")
            .parse()
            .map_err(|e: shoal_transport::Error| e.to_string())?;
        match a {
            Address::Quic { pin: Some(pin), .. } => Ok((port, pin)),
            _ => Err("no pin".to_string()),
        }
    }) {
        Ok(x) => x,
        Err(e) => {
            m.error = Some(e);
            let _ = child.wait();
            return m;
        }
    };
    rt().block_on(async {
        let r = async {
            let (ep, conn) = quinn_connect(pin, port, Options::default().capacity).await?;
            let q = vec![7u8; size];
            let mut back = vec![0u8; size];
            if per_request {
                timed!(m, total, warm, {
                    match conn.open_bi().await {
                        Ok((mut send, mut recv)) => match send.write_all(&q).await {
                            Ok(()) => {
                                let _ = send.finish();
                                recv.read_exact(&mut back).await.map_err(|e| e.to_string())
                            }
                            Err(e) => Err(e.to_string()),
                        },
                        Err(e) => Err(e.to_string()),
                    }
                });
            } else {
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                timed!(m, total, warm, {
                    match send.write_all(&q).await {
                        Ok(()) => recv.read_exact(&mut back).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                });
            }
            conn.close(0u32.into(), b"done");
            // Let the close reach the server (it waits for it).
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ep.wait_idle()).await;
            Ok::<(), String>(())
        };
        if let Err(e) = r.await {
            m.error = Some(e);
        }
    });
    let _ = child.wait();
    m
}

/// Plain TCP (tokio, `TCP_NODELAY`): the reference under every network
/// wire. The child echoes fixed-size messages with blocking calls; this
/// process writes one and reads it back.
fn tcp_raw(size: usize, iters: u64) -> Measurement {
    use std::io::Read;
    let (total, warm) = (total_of(iters), warmup(iters));
    let mut m = Measurement::new("tokio-tcp", "rpc", "park", "latency_round_trip_ns")
        .payload(size as u64)
        .transport("tcp");
    let r = (|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        let child = fork(move || {
            let Ok((mut s, _)) = l.accept() else { return 1 };
            let _ = s.set_nodelay(true);
            let mut buf = vec![0u8; size];
            for _ in 0..total {
                if s.read_exact(&mut buf).is_err() || s.write_all(&buf).is_err() {
                    return 1;
                }
            }
            0
        })
        .map_err(|e| e.to_string())?;
        rt().block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| e.to_string())?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            let q = vec![7u8; size];
            let mut back = vec![0u8; size];
            timed!(m, total, warm, {
                match s.write_all(&q).await {
                    Ok(()) => s
                        .read_exact(&mut back)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            });
            Ok::<(), String>(())
        })?;
        let _ = child.wait();
        Ok::<(), String>(())
    })();
    if let Err(e) = r {
        m.error.get_or_insert(e);
    }
    m
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Small {
    id: u64,
    price: u32,
    qty: u32,
    side: u8,
}

fn typed(iters: u64) -> Measurement {
    const READS: u64 = 1024;
    let mut buf = AlignedBuf::with_capacity(256);
    buf.resize_zeroed(256);
    let small = Small {
        id: 1,
        price: 2,
        qty: 3,
        side: 1,
    };
    let n = shoal_transport::archive_into(&small, buf.as_mut_slice())
        .ok()
        .and_then(|a| a.in_place())
        .unwrap_or(0);
    let frame = Frame::from_bytes(&buf[..n]);
    let mut m = Measurement::new("shoal", "rpc-typed", "none", "typed_receive_overhead_ns")
        .payload(n as u64)
        .processes(1)
        .transport("in-process");
    let mut sink = 0u64;
    for _ in 0..iters {
        // Raw: the bytes as the frame gives them.
        let t0 = Instant::now();
        for _ in 0..READS {
            let f = std::hint::black_box(&frame);
            sink = sink.wrapping_add(f[0] as u64);
        }
        let raw = t0.elapsed();
        // Typed: the same frame read as a validated archive.
        let t1 = Instant::now();
        for _ in 0..READS {
            let f = std::hint::black_box(&frame);
            if let Ok(a) = f.archived::<Small>() {
                sink = sink.wrapping_add(a.id.to_native());
            }
        }
        let typed = t1.elapsed();
        m.samples
            .push((typed.as_nanos() as f64 - raw.as_nanos() as f64).max(0.0) / READS as f64);
    }
    std::hint::black_box(sink);
    m
}

fn main() {
    let cmd = std::env::args().nth(1).unwrap_or_default();
    let a = Args::from_env(2);
    let m = match cmd.as_str() {
        "rpc" => match a.get("wire", "shm".to_string()).as_str() {
            "shm" => rpc(
                a.get("size", 64usize),
                a.get("iters", 4000u64),
                a.has("pin"),
            ),
            w @ ("nng-tcp" | "nng-ipc" | "quic") => rpc_net(
                w,
                a.get("size", 64usize),
                a.get("iters", 4000u64),
                a.has("blocking"),
            ),
            w => {
                eprintln!("unknown wire {w}: shm, nng-tcp, nng-ipc or quic");
                std::process::exit(2);
            }
        },
        "nng-raw" => nng_raw(
            a.get("size", 64usize),
            a.get("iters", 4000u64),
            a.has("ipc"),
            a.has("aio"),
        ),
        "quinn-raw" => quinn_raw(
            a.get("size", 64usize),
            a.get("iters", 4000u64),
            a.has("stream-per-request"),
        ),
        "typed" => typed(a.get("iters", 2000u64)),
        "tcp-raw" => tcp_raw(a.get("size", 64usize), a.get("iters", 4000u64)),
        "oneway" => oneway::shoal(
            &a.get("wire", "nng-tcp".to_string()),
            if a.has("pub") { "pub" } else { "push" },
            a.get("size", 64usize),
            a.get("ms", 1000u64),
            a.get("capacity", oneway::CAPACITY),
        ),
        "oneway-raw" => {
            let (size, ms) = (a.get("size", 64usize), a.get("ms", 1000u64));
            match a.get("peer", "nng".to_string()).as_str() {
                "nng" => oneway::nng_raw(size, ms, false),
                "nng-ipc" => oneway::nng_raw(size, ms, true),
                "quinn" => oneway::quinn_raw(size, ms, a.get("capacity", oneway::CAPACITY)),
                "tcp" => oneway::tcp_raw(size, ms),
                p => {
                    eprintln!("unknown peer {p}: nng, nng-ipc, quinn or tcp");
                    std::process::exit(2);
                }
            }
        }
        _ => {
            eprintln!("usage: transport <rpc [--wire shm|nng-tcp|nng-ipc|quic] --size B --iters N [--pin] [--blocking] | nng-raw --size B --iters N [--ipc] [--aio] | quinn-raw --size B --iters N | tcp-raw --size B --iters N | typed --iters N | oneway --wire W [--pub] --size B --ms T [--capacity B] | oneway-raw --peer nng|nng-ipc|quinn|tcp --size B --ms T [--capacity B (quinn's windows)]>");
            std::process::exit(2);
        }
    };
    m.emit();
}
