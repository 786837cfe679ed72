//! shoal-transport measured across processes.
//!
//! `transport rpc --size B --iters N [--pin]`: request/reply round trips
//! over shared memory (`shm://`), a replier process and a requester
//! process, timed in batches of 32 round trips. Metric
//! `latency_round_trip_ns` (beyond BENCH.md's list: one request and its
//! reply, end to end through the async API).
//!
//! `transport typed --iters N`: what reading a small struct as a validated
//! rkyv archive adds over taking the raw bytes of the same frame, in
//! process (metric `typed_receive_overhead_ns`, one sample per batch of
//! 1024 reads; pattern `rpc-typed`, processes 1).
//!
//! Prints one JSON [`Measurement`] per line.

use shoal_bench::measure::Measurement;
use shoal_bench::proc::{fork, Args};
use shoal_transport::{Address, AlignedBuf, Frame, Options, ShmReplier, ShmRequester};
use std::time::Instant;

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
        "rpc" => rpc(
            a.get("size", 64usize),
            a.get("iters", 4000u64),
            a.has("pin"),
        ),
        "typed" => typed(a.get("iters", 2000u64)),
        _ => {
            eprintln!("usage: transport <rpc --size B --iters N [--pin] | typed --iters N>");
            std::process::exit(2);
        }
    };
    m.emit();
}
