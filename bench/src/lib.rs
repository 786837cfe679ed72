//! # shoal-bench
//!
//! Harness binaries that measure shoal and the systems users would pick
//! instead, and `matrix`, which runs them interleaved with the physical floor
//! and writes results in the format of the project's `BENCH.md`.
//!
//! - [`measure`]: samples, percentiles, the row format, placement labels.
//! - [`proc`]: forked peer processes, CPU pinning, CPU-time accounting.
//! - [`shared`]: anonymous shared mappings and a cross-process clock.
//! - [`report`]: results.csv and results.md (ratios, targets).
//! - [`plot`]: SVG plots of latency vs payload and throughput vs readers.
//!
//! Binaries: `floor` (cache line, stream, memcpy, futex), `shoal` (the
//! shm-ring cells), `crossbeam` (in-process MPMC reference), `matrix` (the
//! orchestrator behind `cargo xtask bench-matrix`).

pub mod measure;
pub mod plot;
pub mod proc;
pub mod report;
pub mod shared;
