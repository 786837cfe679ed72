//! # shoal-bench
//!
//! Harness binaries that measure shoal and the systems users would pick
//! instead, and `matrix`, which runs them interleaved with the physical floor
//! and writes results in the format of the project's `BENCH.md`.
//!
//! - [`measure`]: samples, percentiles, the row format, placement labels.
//! - [`proc`]: forked peer processes, CPU pinning, CPU-time accounting.
//! - [`shared`]: anonymous shared mappings and a cross-process clock.
//! - [`shape`]: what shoal's cells occupy and do (record and ring sizes,
//!   how payloads are written and read), shared with the floors.
//! - [`report`]: results.csv and results.md (ratios, targets).
//! - [`plot`]: SVG plots of latency vs payload and throughput vs readers.
//!
//! Binaries: `floor` (cache line, plain SPSC ring for 64 B records and for
//! a 1 MiB stream, memcpy, futex), `shoal` (the shm-ring cells),
//! `iceoryx2` (the peer), `crossbeam` (in-process MPMC reference), `matrix`
//! (the orchestrator behind `cargo xtask bench-matrix`).
//!
//! Beyond `BENCH.md`'s lists, rows may carry the metric
//! `idle_wakeups_per_s` (context switches per second of a reader parked on
//! an idle ring, from `/proc/<pid>/task/*/status`) and the patterns `ring`
//! (the floor of the 64 B broadcast 1->1 cell), `stream-overflow` /
//! `stream-inline` (1-2 MiB records through a 2 MiB / 16 MiB ring),
//! `broadcast-unpinned` (a 1->1 broadcast left to the scheduler) and
//! `futex-idle-unpinned` / `wake-idle-unpinned`. Two-process cells pin
//! their processes to different CPUs unless the pattern says `unpinned`;
//! the 1->3 and 1->7 broadcast cells (more processes than CPUs) are left to
//! the scheduler.

pub mod measure;
pub mod plot;
pub mod proc;
pub mod report;
pub mod shape;
pub mod shared;
