//! One-way throughput across two processes: a sender process sends
//! messages of one size as fast as its wire takes them, and the receiving
//! process (this one) counts them for a while. Metric
//! `throughput_msgs_per_s`, one sample per 50 ms, pattern `oneway`; the
//! sender is killed when the receiver has measured enough.
//!
//! - `shoal`: shoal's push/pull (the pusher's `send` loop) or its
//!   publish/subscribe with one subscriber, over `nng-tcp`, `nng-ipc` or
//!   `quic`, through the generic `Wire` API;
//! - `nng_raw`: raw nng PUSH/PULL (same NNG), blocking calls;
//! - `quinn_raw`: raw quinn, one unidirectional stream carrying the
//!   messages back to back, no framing (the floor of a stream over QUIC);
//! - `tcp_raw`: plain tokio TCP, the same, as a reference.

use super::{rt, told};
use shoal_bench::measure::Measurement;
use shoal_bench::proc::fork;
use shoal_transport::{Address, Options, Publisher, Puller, Pusher, Subscriber, Wire};
use shoal_transport::{Nng, Quic};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// How long one sample counts: long enough that messages delivered in
/// bursts (a batch at a time) average out.
const SLICE: Duration = Duration::from_millis(50);

/// Receives with `$one` (a `Result<(), String>` expression receiving one
/// message) for `$ms` milliseconds after one warm-up slice, pushing the
/// msgs/s of each [`SLICE`] to `$m.samples`.
macro_rules! drained {
    ($m:expr, $size:expr, $ms:expr, $one:expr) => {{
        let _ = $size;
        let end = Instant::now() + SLICE + Duration::from_millis($ms);
        let mut first = true;
        'all: loop {
            let t0 = Instant::now();
            let mut n = 0u64;
            while t0.elapsed() < SLICE {
                let r: Result<(), String> = $one;
                if let Err(e) = r {
                    $m.error = Some(e);
                    break 'all;
                }
                n += 1;
            }
            if !first {
                $m.samples.push(n as f64 / t0.elapsed().as_secs_f64());
            }
            first = false;
            if Instant::now() >= end && $m.samples.len() >= 3 {
                break;
            }
        }
    }};
}

fn measurement(system: &str, mode: &str, size: usize, transport: &str) -> Measurement {
    Measurement::new(system, "oneway", mode, "throughput_msgs_per_s")
        .payload(size as u64)
        .transport(transport)
}

/// shoal over `wire`: `pattern` is `push` (push/pull; mode `park`) or
/// `pub` (publish/subscribe to one subscriber; mode `pubsub`).
pub fn shoal(wire: &str, pattern: &str, size: usize, ms: u64, capacity: u64) -> Measurement {
    let mode = if pattern == "pub" { "pubsub" } else { "park" };
    let mut m = measurement("shoal", mode, size, wire);
    let bind: Address = match wire {
        "nng-ipc" => format!("nng+ipc:///tmp/shoal-bench-ow-{}.sock", std::process::id()),
        "nng-tcp" => "nng+tcp://127.0.0.1:0".into(),
        _ => "quic://127.0.0.1:0".into(),
    }
    .parse()
    .expect("address");
    let r = match (wire, pattern) {
        ("quic", "pub") => via_pubsub::<Quic>(&mut m, bind, size, ms, capacity),
        ("quic", _) => via_queue::<Quic>(&mut m, bind, size, ms, capacity),
        (_, "pub") => via_pubsub::<Nng>(&mut m, bind, size, ms, capacity),
        _ => via_queue::<Nng>(&mut m, bind, size, ms, capacity),
    };
    if let Err(e) = r {
        m.error.get_or_insert(e);
    }
    m
}

/// shoal's buffer bytes per peer in these runs unless told otherwise
/// (`--capacity`): deep enough for nng, whose pushes wait ~200 us for
/// their answers. Raw quinn gets the flow-control windows shoal's QUIC
/// backend sets for it (see `quinn_transport`): a deeper buffer costs
/// either side the same, its data read back cold (4 KiB messages: raw
/// quinn at 8 MiB ran 0.65-0.82x raw quinn at its default 1.25 MB).
pub const CAPACITY: u64 = 8 << 20;

fn opts(capacity: u64) -> Options {
    Options::default().capacity(capacity)
}

/// Push/pull: this process binds the puller and measures; the child
/// pushes.
fn via_queue<W: Wire>(
    m: &mut Measurement,
    bind: Address,
    size: usize,
    ms: u64,
    capacity: u64,
) -> Result<(), String> {
    let (mut tell, hear) = UnixStream::pair().map_err(|e| e.to_string())?;
    // The child forks before this process starts a runtime.
    let child = fork(move || {
        let Ok(line) = told(&hear) else { return 1 };
        let Ok(addr) = line.parse::<Address>() else {
            return 1;
        };
        rt().block_on(async move {
            let Ok(mut p) = W::connect_pusher(&addr, &opts(capacity)).await else {
                return 1;
            };
            let q = vec![7u8; size];
            while p.send(&q).await.is_ok() {}
            0
        })
    })
    .map_err(|e| e.to_string())?;
    rt().block_on(async {
        let mut puller = W::bind_puller(&bind, &opts(capacity))
            .await
            .map_err(|e| e.to_string())?;
        let _ = writeln!(tell, "{}", puller.address());
        drained!(
            m,
            size,
            ms,
            puller
                .recv()
                .await
                .map(|f| debug_assert_eq!(f.len(), size))
                .map_err(|e| e.to_string())
        );
        Ok::<(), String>(())
    })?;
    drop(child);
    Ok(())
}

/// Publish/subscribe: the child binds the publisher and sends once this
/// process subscribed; this process measures.
fn via_pubsub<W: Wire>(
    m: &mut Measurement,
    bind: Address,
    size: usize,
    ms: u64,
    capacity: u64,
) -> Result<(), String> {
    let (mut tell, hear) = UnixStream::pair().map_err(|e| e.to_string())?;
    let child = fork(move || {
        rt().block_on(async move {
            let mut p = match W::bind_publisher(&bind, &opts(capacity)).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = writeln!(tell, "error {e}");
                    return 1;
                }
            };
            let _ = writeln!(tell, "{}", p.address());
            if p.wait_for_subscribers(1, Duration::from_secs(20))
                .await
                .is_err()
            {
                return 1;
            }
            let q = vec![7u8; size];
            while p.send(b"", &q).await.is_ok() {}
            0
        })
    })
    .map_err(|e| e.to_string())?;
    let addr: Address = told(&hear)?
        .parse()
        .map_err(|e: shoal_transport::Error| e.to_string())?;
    rt().block_on(async {
        let mut s = W::connect_subscriber(&addr, &opts(capacity))
            .await
            .map_err(|e| e.to_string())?;
        drained!(
            m,
            size,
            ms,
            s.recv()
                .await
                .map(|f| debug_assert_eq!(f.len(), size))
                .map_err(|e| e.to_string())
        );
        Ok::<(), String>(())
    })?;
    drop(child);
    Ok(())
}

/// Raw nng PUSH/PULL: this process pulls (listening), the child pushes.
pub fn nng_raw(size: usize, ms: u64, ipc: bool) -> Measurement {
    let mut m = measurement("nng", "park", size, if ipc { "nng-ipc" } else { "nng-tcp" });
    let url = super::nng_raw_url("ow-raw", ipc);
    let r = (|| {
        use nng::options::Options as _;
        // Fork before this process starts nng's threads; the child dials
        // in the background until the listener is up.
        let u = url.clone();
        let child = fork(move || {
            let Ok(p) = nng::Socket::new(nng::Protocol::Push0) else {
                return 1;
            };
            if p.dial_async(&u).is_err() {
                return 1;
            }
            let q = vec![7u8; size];
            while p.send(&q[..]).is_ok() {}
            0
        })
        .map_err(|e| e.to_string())?;
        let s = nng::Socket::new(nng::Protocol::Pull0).map_err(|e| e.to_string())?;
        s.set_opt::<nng::options::RecvMaxSize>(size + 4096)
            .map_err(|e| e.to_string())?;
        s.listen(&url).map_err(|e| e.to_string())?;
        drained!(
            m,
            size,
            ms,
            s.recv()
                .map(|f| debug_assert_eq!(f.len(), size))
                .map_err(|e| e.to_string())
        );
        drop(child);
        Ok::<(), String>(())
    })();
    if let Err(e) = r {
        m.error.get_or_insert(e);
    }
    m
}

/// Raw quinn: the child opens one unidirectional stream and writes the
/// messages back to back; this process (the server) reads them.
pub fn quinn_raw(size: usize, ms: u64, capacity: u64) -> Measurement {
    use shoal_transport::quic::tls::Identity;
    use std::sync::Arc;
    let mut m = measurement("quinn", "park", size, "quic");
    let r = (|| {
        let id = Identity::generate().map_err(|e| e.to_string())?;
        let pin = id.pin();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = sock.local_addr().map_err(|e| e.to_string())?.port();
        let child = fork(move || {
            rt().block_on(async move {
                let r = async {
                    let (_ep, conn) = super::quinn_connect(pin, port, capacity).await?;
                    let mut s = conn.open_uni().await.map_err(|e| e.to_string())?;
                    let q = vec![7u8; size];
                    while s.write_all(&q).await.is_ok() {}
                    Ok::<(), String>(())
                };
                i32::from(r.await.is_err())
            })
        })
        .map_err(|e| e.to_string())?;
        rt().block_on(async {
            let cfg = super::quinn_server_config(&id, capacity)?;
            let ep = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(cfg),
                sock,
                Arc::new(quinn::TokioRuntime),
            )
            .map_err(|e| e.to_string())?;
            let conn = tokio::time::timeout(Duration::from_secs(20), ep.accept())
                .await
                .map_err(|_| "no connection".to_string())?
                .ok_or("endpoint closed")?
                .await
                .map_err(|e| e.to_string())?;
            let mut r = conn.accept_uni().await.map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; size];
            drained!(
                m,
                size,
                ms,
                r.read_exact(&mut buf).await.map_err(|e| e.to_string())
            );
            Ok::<(), String>(())
        })?;
        drop(child);
        Ok::<(), String>(())
    })();
    if let Err(e) = r {
        m.error.get_or_insert(e);
    }
    m
}

/// Plain TCP (tokio): the child connects and writes the messages back to
/// back; this process reads them.
pub fn tcp_raw(size: usize, ms: u64) -> Measurement {
    let mut m = measurement("tokio-tcp", "park", size, "tcp");
    let r = (|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        let child = fork(move || {
            let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                return 1;
            };
            let q = vec![7u8; size];
            while s.write_all(&q).is_ok() {}
            0
        })
        .map_err(|e| e.to_string())?;
        let (s, _) = l.accept().map_err(|e| e.to_string())?;
        rt().block_on(async {
            use tokio::io::AsyncReadExt;
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
            let mut s = tokio::net::TcpStream::from_std(s).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; size];
            drained!(
                m,
                size,
                ms,
                s.read_exact(&mut buf)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            );
            Ok::<(), String>(())
        })?;
        drop(child);
        Ok::<(), String>(())
    })();
    if let Err(e) = r {
        m.error.get_or_insert(e);
    }
    m
}
