//! In-process costs of the ring operations (criterion): reserve+commit with
//! guard acquire+release, the same on the MPMC ring, and the empty poll that
//! a spinning waiter repeats.
#![allow(missing_docs)] // criterion's macros generate undocumented items

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shoal_shm_ring::{
    BroadcastConfig, BroadcastReader, BroadcastWriter, MpmcConfig, MpmcRing, Wait,
};
use std::hint::black_box;

fn broadcast(c: &mut Criterion) {
    let mut g = c.benchmark_group("broadcast");
    g.throughput(Throughput::Elements(1));
    let mut w = BroadcastWriter::create(&BroadcastConfig::new(1 << 20, 2)).unwrap();
    let mut r = BroadcastReader::attach(&w.handle()).unwrap();
    w.wait_for_readers(1, Wait::no_wait()).unwrap();
    g.bench_function("reserve_commit_recv_release_64B", |b| {
        b.iter(|| {
            let mut res = w.reserve(64).unwrap();
            res[0] = 1;
            res.commit(64).unwrap();
            let guard = r.try_recv().unwrap().unwrap();
            black_box(guard[0]);
        })
    });
    g.bench_function("poll_empty", |b| {
        b.iter(|| black_box(r.try_recv().unwrap().is_none()))
    });
    // The wait path up to the first clock read: poll, deadline, WouldBlock.
    g.bench_function("recv_no_wait_empty", |b| {
        b.iter(|| black_box(r.recv_with(Wait::no_wait()).is_err()))
    });
    g.finish();
}

fn mpmc(c: &mut Criterion) {
    let mut g = c.benchmark_group("mpmc");
    g.throughput(Throughput::Elements(1));
    let ring = MpmcRing::create(&MpmcConfig::new(1 << 20, 1, 1)).unwrap();
    let mut p = ring.producer().unwrap();
    let mut q = ring.consumer().unwrap();
    g.bench_function("reserve_commit_take_release_64B", |b| {
        b.iter(|| {
            let mut res = p.reserve(64).unwrap();
            res[0] = 1;
            res.commit(64).unwrap();
            let guard = q.try_take().unwrap().unwrap();
            black_box(guard[0]);
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = broadcast, mpmc
}
criterion_main!(benches);
