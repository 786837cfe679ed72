//! Fixed-count loops over a broadcast ring, for instruction counts under
//! `valgrind --tool=callgrind` and a quick look at cross-process throughput
//! (the benchmark matrix, `cargo xtask bench-matrix`, is the real measure).
//!
//! ```text
//! cargo build --release -p shoal-shm-ring --example microloop
//! valgrind --tool=callgrind target/release/examples/microloop 100000   # in-process
//! valgrind --tool=callgrind target/release/examples/microloop 100000 --echo  # ping-pong work
//! target/release/examples/microloop 20000000 --cross 64              # 1 reader process
//! ```
use shoal_shm_ring::{BroadcastConfig, BroadcastReader, BroadcastWriter, Wait, WaitStrategy};
use std::time::Instant;

fn main() -> Result<(), shoal_shm_ring::Error> {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let cross = args
        .iter()
        .position(|a| a == "--cross")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse::<usize>().ok());
    let peer = shoal_shm_ring::PeerOptions::default().wait_strategy(WaitStrategy::Spin);
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 20, 2).peer_options(peer))?;
    if args.iter().any(|a| a == "--echo") {
        // One thread plays both sides of a ping-pong over two rings: the
        // instructions of one round trip (two hops), without any waiting.
        let mut pong = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 2))?;
        let mut ping = BroadcastWriter::create(&BroadcastConfig::new(1 << 16, 2))?;
        let mut rx_ping = BroadcastReader::attach(&ping.handle())?;
        let mut rx_pong = BroadcastReader::attach(&pong.handle())?;
        ping.wait_for_readers(1, Wait::no_wait())?;
        pong.wait_for_readers(1, Wait::no_wait())?;
        let stamp = [7u8; 64];
        let mut sum = 0u64;
        let t0 = Instant::now();
        for _ in 0..n {
            let mut r = ping.reserve(48)?;
            r.copy_from_slice(&stamp[..48]);
            r.commit(48)?;
            let g = rx_ping.recv_with(Wait::timeout(std::time::Duration::from_secs(1)))?;
            let mut r = pong.reserve(48)?;
            r.copy_from_slice(&g[..48]);
            r.commit(48)?;
            drop(g);
            let g = rx_pong.recv_with(Wait::timeout(std::time::Duration::from_secs(1)))?;
            sum += u64::from(g[0]);
        }
        println!(
            "{n} echo round trips, checksum {sum}: {:.1} ns per round trip (in process)",
            t0.elapsed().as_nanos() as f64 / n as f64
        );
        return Ok(());
    }
    let Some(size) = cross else {
        let mut r = BroadcastReader::attach(&w.handle())?;
        w.wait_for_readers(1, Wait::no_wait())?;
        let mut sum = 0u64;
        let t0 = Instant::now();
        for i in 0..n {
            let mut res = w.reserve(64)?;
            res[0] = i as u8;
            res.commit(64)?;
            if let Some(g) = r.try_recv()? {
                sum += u64::from(g[0]);
            }
        }
        println!(
            "{n} rounds, checksum {sum}: {:.1} ns per round (in process)",
            t0.elapsed().as_nanos() as f64 / n as f64
        );
        return Ok(());
    };
    let handle = w.handle();
    // SAFETY: the process is single-threaded here; the child only attaches
    // to the ring by name, reads, and exits without returning.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let opts = shoal_shm_ring::ReaderOptions {
            peer,
            ..Default::default()
        };
        let mut r = BroadcastReader::attach_with(&handle, &opts)?;
        let mut sum = 0u64;
        for _ in 0..n {
            let g = r.recv()?;
            sum = sum.wrapping_add(u64::from(g[0]) + u64::from(g[g.len() - 1]));
        }
        std::process::exit((sum & 1) as i32);
    }
    w.wait_for_readers(1, Wait::timeout(std::time::Duration::from_secs(10)))?;
    let payload = vec![7u8; size];
    let t0 = Instant::now();
    for _ in 0..n {
        w.send(&payload)?;
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let dt = t0.elapsed();
    println!(
        "{n} x {size} B: {:.1} M msg/s ({:.1} ns per message)",
        n as f64 / dt.as_secs_f64() / 1e6,
        dt.as_nanos() as f64 / n as f64
    );
    Ok(())
}
