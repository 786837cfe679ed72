//! Fixed-count loops over a broadcast ring, for instruction counts under
//! `valgrind --tool=callgrind` and a quick look at cross-process throughput
//! (the benchmark matrix, `cargo xtask bench-matrix`, is the real measure).
//!
//! ```text
//! cargo build --release -p shoal-shm-ring --example microloop
//! valgrind --tool=callgrind target/release/examples/microloop 100000   # in-process
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
    let Some(size) = cross else {
        let mut r = BroadcastReader::attach(&w.handle())?;
        w.wait_for_readers(1, Wait::no_wait())?;
        let mut sum = 0u64;
        for i in 0..n {
            let mut res = w.reserve(64)?;
            res[0] = i as u8;
            res.commit(64)?;
            if let Some(g) = r.try_recv()? {
                sum += u64::from(g[0]);
            }
        }
        println!("{n} rounds, checksum {sum}");
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
