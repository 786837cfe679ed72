//! What a local Broadcast adds per message over the raw broadcast ring,
//! without scheduling in the way: one thread writes 7000 64 B messages
//! (less than the 1 MiB ring holds), then reads them back, through the
//! raw ring and through shoal's Broadcast in turn; prints ns per message
//! written and read for each. Run pinned to one CPU:
//! `taskset -c 1 target/release/examples/broadcast_drain`.
//!
//! Session 22 (AMD EPYC VM): raw write 17-20 ns, read 4.3-4.8 ns; shoal
//! write 21-25 ns, read 7.2-8.5 ns. With 3 or 7 readers sharing 2 cores
//! every reader's cost counts, which is where the matrix's local
//! Broadcast cells lose 15 % to the raw ring.

use shoal_channel::{Broadcast, BroadcastOptions, BroadcastReceiver};
use shoal_shm_ring::{BroadcastConfig, BroadcastReader, BroadcastWriter, Wait};
use std::time::{Duration, Instant};
const N: usize = 7000;
fn main() {
    // A bench tool: a failure here is the tool's, not a peer's.
    let cap = 1u64 << 20;
    let msg = [7u8; 64];
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(cap, 1)).unwrap();
    let mut r = BroadcastReader::attach(&w.handle()).unwrap();
    w.wait_for_readers(1, Wait::timeout(Duration::from_secs(5)))
        .unwrap();
    let mut b = Broadcast::create(&BroadcastOptions::new(1).capacity(cap)).unwrap();
    let mut br = BroadcastReceiver::attach(b.handle(), 0).unwrap();
    b.wait_until_ready(Duration::from_secs(5)).unwrap();
    for round in 0..6 {
        let (mut tw, mut tr, mut sw, mut sr) = (
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        );
        for _ in 0..200 {
            let t = Instant::now();
            for _ in 0..N {
                w.send(&msg).unwrap();
            }
            tw += t.elapsed();
            let t = Instant::now();
            for _ in 0..N {
                let g = r.recv().unwrap();
                std::hint::black_box(g.first());
            }
            tr += t.elapsed();
            let t = Instant::now();
            for _ in 0..N {
                b.send(&msg).unwrap();
            }
            sw += t.elapsed();
            let t = Instant::now();
            for _ in 0..N {
                let m = br.recv().unwrap();
                std::hint::black_box(m.first());
            }
            sr += t.elapsed();
        }
        let per = |d: Duration| d.as_nanos() as f64 / (200 * N) as f64;
        println!(
            "round {round}: raw write {:.2} read {:.2} | shoal write {:.2} read {:.2} ns/msg",
            per(tw),
            per(tr),
            per(sw),
            per(sr)
        );
    }
}
