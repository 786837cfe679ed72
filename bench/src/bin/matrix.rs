//! The benchmark matrix: runs the harness binaries beside this one, each
//! compared pair interleaved (A B A B ...) with the cache-line floor measured
//! right before and after every cell, and writes `results.json`,
//! `results.csv`, `results.md` (and the SVG plots) into `--out DIR`.
//!
//! `matrix [--quick] [--out DIR] [--only SUBSTRING]`, or
//! `matrix --render DIR`: rewrite DIR's `results.md`, `results.csv` and
//! plots from its `results.json`, placements recomputed from the floors
//! recorded around each cell (after a change to the report).

use shoal_bench::measure::{Measurement, Row};
use shoal_bench::proc::{cores, Args};
use shoal_bench::report;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// One cell: entries measured interleaved, `rounds` times each.
struct Cell {
    name: String,
    entries: Vec<Vec<String>>,
    rounds: u32,
}

fn cell(name: &str, rounds: u32, entries: &[&str]) -> Cell {
    Cell {
        name: name.into(),
        entries: entries
            .iter()
            .map(|e| e.split_whitespace().map(str::to_string).collect())
            .collect(),
        rounds,
    }
}

fn cells(quick: bool) -> Vec<Cell> {
    let (it, r) = if quick { (4000, 3) } else { (20000, 5) };
    let ms = if quick { 300 } else { 1000 };
    let idle_s = 5;
    let wake_rounds = if quick { 5 } else { 15 };
    let mut v = Vec::new();
    for size in [64usize, 4096, 1 << 20, 16 << 20] {
        let iters = if size >= 1 << 20 { it / 4 } else { it };
        let mut e = vec![
            format!("shoal pingpong --pin --mode spin --size {size} --iters {iters}"),
            format!("iceoryx2 pingpong --pin --mode spin --size {size} --iters {iters}"),
            format!("shoal pingpong --pin --mode park --size {size} --iters {iters}"),
        ];
        if size == 64 {
            // The same through the smallest ring.
            e.push(format!(
                "shoal pingpong --pin --mode spin --size 64 --iters {it} --cap 4096"
            ));
        }
        let e: Vec<&str> = e.iter().map(String::as_str).collect();
        v.push(cell(&format!("pingpong {size} B"), r, &e));
    }
    // Header and payload in one cache line, through the usual ring and the
    // smallest, each beside a plain ring of that size doing only the
    // hand-over (see floor's ringpong).
    v.push(cell(
        "pingpong 48 B (one line)",
        r,
        &[
            &format!("shoal pingpong --pin --mode spin --size 48 --iters {it}"),
            &format!("shoal pingpong --pin --mode spin --size 48 --iters {it} --cap 4096"),
            &format!("floor ringpong --size 48 --iters {it} --cap 65536"),
            &format!("floor ringpong --size 48 --iters {it} --cap 4096"),
        ],
    ));
    // The transport layer (issue 7): request/reply over shm, and what a
    // typed (rkyv) receive adds over raw bytes.
    v.push(cell(
        "transport shm request/reply",
        r,
        &[
            &format!("transport rpc --pin --size 64 --iters {}", it / 4),
            &format!("transport typed --iters {}", it / 4),
        ],
    ));
    // The network wires (issue 7), beside the raw libraries under them in
    // the same run, and plain tokio TCP as the reference under all: round
    // trips (shoal's request/reply, awaited from tokio and through its
    // blocking wrappers, against raw nng REQ/REP with blocking calls and
    // driven through aio from tokio, raw quinn with one stream
    // and with a stream per request) and one-way throughput
    // (shoal's push/pull and pub/sub against raw nng PUSH/PULL and one raw
    // quinn stream), at 64 B, 4 KiB and 1 MiB, all on loopback.
    for size in [64usize, 4096, 1 << 20] {
        let n = if size >= 1 << 20 { it / 40 } else { it / 8 };
        let rr: Vec<String> = [
            "rpc --wire nng-tcp",
            "rpc --wire nng-tcp --blocking",
            "nng-raw",
            "nng-raw --aio",
            "rpc --wire nng-ipc",
            "rpc --wire nng-ipc --blocking",
            "nng-raw --ipc",
            "nng-raw --ipc --aio",
            "rpc --wire quic",
            "quinn-raw",
            "quinn-raw --stream-per-request",
            "tcp-raw",
        ]
        .iter()
        .map(|e| format!("transport {e} --size {size} --iters {n}"))
        .collect();
        let rr: Vec<&str> = rr.iter().map(String::as_str).collect();
        v.push(cell(
            &format!("transport network request/reply {size} B"),
            r,
            &rr,
        ));
        let ow: Vec<String> = [
            "oneway --wire nng-tcp",
            "oneway-raw --peer nng",
            "oneway --wire nng-ipc",
            "oneway-raw --peer nng-ipc",
            "oneway --wire quic",
            "oneway-raw --peer quinn",
            "oneway-raw --peer tcp",
            "oneway --wire nng-tcp --pub",
            "oneway --wire quic --pub",
        ]
        .iter()
        .map(|e| format!("transport {e} --size {size} --ms {ms}"))
        .collect();
        let ow: Vec<&str> = ow.iter().map(String::as_str).collect();
        v.push(cell(&format!("transport network one-way {size} B"), r, &ow));
    }
    v.push(cell(
        "pingpong 64 B blocking (iceoryx2 WaitSet)",
        r,
        &[&format!(
            "iceoryx2 pingpong --pin --mode waitset --size 64 --iters {}",
            it / 4
        )],
    ));
    v.push(cell(
        "wake after idle, pinned",
        wake_rounds,
        &[
            "floor futex --idle-us 1000000 --iters 1",
            "shoal wake --idle-us 1000000 --iters 1",
            "iceoryx2 wake --idle-us 1000000 --iters 1",
        ],
    ));
    v.push(cell(
        "wake after idle, unpinned",
        wake_rounds,
        &[
            "floor futex --idle-us 1000000 --iters 1 --no-pin",
            "shoal wake --idle-us 1000000 --iters 1 --no-pin",
        ],
    ));
    v.push(cell("wake back-to-back", 1, &["floor futex --iters 20"]));
    // 1->1: writer and reader pinned to different CPUs, floor and peers
    // alike (the cross-core hand-over the placement label describes); shoal
    // once more unpinned, where the two often share one CPU.
    v.push(cell(
        "broadcast 64 B 1->1 vs ring floor",
        r,
        &[
            &format!("floor ring --size 64 --ms {ms}"),
            &format!("shoal broadcast --pin --size 64 --readers 1 --ms {ms}"),
            &format!("iceoryx2 broadcast --pin --size 64 --readers 1 --ms {ms}"),
            &format!("shoal broadcast --size 64 --readers 1 --ms {ms}"),
        ],
    ));
    for readers in [3, 7] {
        v.push(cell(
            &format!("broadcast 64 B 1->{readers}"),
            r - 1,
            &[
                &format!("shoal broadcast --size 64 --readers {readers} --ms {ms}"),
                &format!("iceoryx2 broadcast --size 64 --readers {readers} --ms {ms}"),
            ],
        ));
    }
    v.push(cell(
        "broadcast 1 MiB 1->1 vs stream floor",
        r,
        &[
            &format!("floor stream --size 1048576 --ms {ms}"),
            &format!("shoal broadcast --pin --size 1048576 --readers 1 --ms {ms}"),
            &format!("iceoryx2 broadcast --pin --size 1048576 --readers 1 --ms {ms}"),
            &format!("shoal broadcast --size 1048576 --readers 1 --ms {ms}"),
        ],
    ));
    for readers in [3, 7] {
        v.push(cell(
            &format!("broadcast 1 MiB 1->{readers}"),
            r - 1,
            &[
                &format!("shoal broadcast --size 1048576 --readers {readers} --ms {ms}"),
                &format!("iceoryx2 broadcast --size 1048576 --readers {readers} --ms {ms}"),
            ],
        ));
    }
    // 1-2 MiB records: through a 2 MiB ring every one takes an overflow
    // segment (inline limit 1 MiB - 16 B), through a 16 MiB ring none does.
    v.push(cell(
        "stream 1-2 MiB 1->1 overflow vs inline",
        r,
        &[
            &format!("shoal stream --pin --min 1048576 --max 2097152 --cap 2097152 --ms {ms}"),
            &format!("shoal stream --pin --min 1048576 --max 2097152 --cap 16777216 --ms {ms}"),
        ],
    ));
    v.push(cell(
        "workqueue 2x2 64 B",
        r - 1,
        &[
            &format!("shoal mpmc --size 64 --ms {ms}"),
            &format!("crossbeam mpmc --ms {ms}"),
        ],
    ));
    // The channel layer (issue 8): WorkQueue throughput across processes,
    // producers x consumers 1x1, 2x2, 4x4 (4x4 oversubscribes the two
    // cores: waits must park), beside the raw MPMC ring under it; and what
    // a typed (rkyv) read of a taken small struct adds over its bytes.
    let wq: Vec<String> = [(1, 1), (2, 2), (4, 4)]
        .iter()
        .flat_map(|(p, c)| {
            let base =
                format!("channel workqueue --producers {p} --consumers {c} --size 64 --ms {ms}");
            [base.clone(), format!("{base} --raw")]
        })
        .collect();
    let wq: Vec<String> = wq
        .into_iter()
        .chain(std::iter::once(format!("channel typed --iters {}", it / 4)))
        .collect();
    let wq: Vec<&str> = wq.iter().map(String::as_str).collect();
    v.push(cell("channel workqueue 64 B", r - 1, &wq));
    // Broadcast on one host (issue 8): the slowest reader's rate with 1, 3
    // and 7 reader processes (7 oversubscribes the two cores), 64 B and
    // 1 MiB, beside the raw broadcast ring in the same run.
    let bc: Vec<String> = [(1, 64usize), (3, 64), (7, 64), (3, 1 << 20)]
        .iter()
        .flat_map(|(readers, size)| {
            let base = format!("channel broadcast --readers {readers} --size {size} --ms {ms}");
            [base.clone(), format!("{base} --raw")]
        })
        .collect();
    let bc: Vec<&str> = bc.iter().map(String::as_str).collect();
    v.push(cell("channel broadcast", r - 1, &bc));
    // Broadcast latency (a send until every reader has it, one message at
    // a time; readers park between messages) by readers and size, beside
    // the raw ring.
    let lat_iters = if quick { 300 } else { 2000 };
    let bl: Vec<String> = [(1, 64usize), (3, 64), (7, 64), (1, 1 << 20), (3, 1 << 20)]
        .iter()
        .flat_map(|(readers, size)| {
            let base = format!(
                "channel broadcast-latency --readers {readers} --size {size} --iters {lat_iters}"
            );
            [base.clone(), format!("{base} --raw")]
        })
        .collect();
    let bl: Vec<&str> = bl.iter().map(String::as_str).collect();
    v.push(cell("channel broadcast latency", r - 1, &bl));
    // Broadcast to readers on another host (two network namespaces joined
    // by a veth pair; needs root), over nng+tcp and QUIC, beside the
    // transport's own publish/subscribe under it: throughput, and latency
    // (one message at a time until every reader has it).
    for size in [64usize, 1 << 20] {
        // Seven remote readers at 64 B only (eight processes on two
        // cores: a megabyte each would take the cell's whole time).
        let readers: &[(&str, usize)] = if size == 64 {
            &[
                ("nng-tcp", 1),
                ("nng-tcp", 3),
                ("nng-tcp", 7),
                ("quic", 1),
                ("quic", 3),
                ("quic", 7),
            ]
        } else {
            &[("nng-tcp", 1), ("nng-tcp", 3), ("quic", 1), ("quic", 3)]
        };
        let bn: Vec<String> = readers
            .iter()
            .flat_map(|(wire, readers)| {
                let base = format!(
                    "channel broadcast-net --hosts --wire {wire} --readers {readers} --size {size} --ms {ms}"
                );
                [base.clone(), format!("{base} --raw")]
            })
            .collect();
        let bn: Vec<&str> = bn.iter().map(String::as_str).collect();
        v.push(cell(
            &format!("channel broadcast remote {size} B"),
            r - 1,
            &bn,
        ));
    }
    let bl: Vec<String> = [("nng-tcp", 1), ("nng-tcp", 3), ("quic", 1), ("quic", 3)]
        .iter()
        .flat_map(|(wire, readers)| {
            let base = format!(
                "channel broadcast-net-latency --hosts --wire {wire} --readers {readers} --size 64 --iters {}",
                lat_iters / 2
            );
            [base.clone(), format!("{base} --raw")]
        })
        .collect();
    let bl: Vec<&str> = bl.iter().map(String::as_str).collect();
    v.push(cell("channel broadcast remote latency 64 B", r - 1, &bl));
    // WorkQueue with its producer, or its consumer, on another host
    // (reaching the queue through its bridge), over nng+tcp and QUIC
    // across two network namespaces, beside the transport's own push/pull
    // between the same hosts.
    let wn: Vec<String> = ["nng-tcp", "quic"]
        .iter()
        .flat_map(|wire| {
            ["producer", "consumer"].into_iter().flat_map(move |remote| {
                let base = format!(
                    "channel workqueue-net --hosts --wire {wire} --remote {remote} --size 64 --ms {ms}"
                );
                let mut e = vec![base.clone(), format!("{base} --raw")];
                if remote == "consumer" {
                    // A deeper prefetch: what a consumer that may lose
                    // more when it dies gains in throughput.
                    e.push(format!("{base} --prefetch 1024"));
                }
                e
            })
        })
        .collect();
    let wn: Vec<&str> = wn.iter().map(String::as_str).collect();
    v.push(cell("channel workqueue remote 64 B", r - 1, &wn));
    // Rpc round trip to 3 worker processes, beside the same fan-out and
    // fan-in on the raw rings.
    let rpc = format!("channel rpc --workers 3 --iters {lat_iters}");
    v.push(cell(
        "channel rpc 3 workers",
        r - 1,
        &[&rpc, &format!("{rpc} --raw")],
    ));
    v.push(cell(
        "idle reader CPU and wake-ups",
        1,
        &[&format!("shoal idle --ms {}", idle_s * 1000)],
    ));
    // Collectives (issue 9), beside Open MPI in the same run (its cells
    // report an error naming what is missing when Open MPI is not
    // installed; `cargo xtask bench-matrix` provisions it as root).
    let ci = if quick { 500 } else { 3000 };
    let coll = |entries: Vec<String>| -> Vec<String> {
        entries
            .into_iter()
            .flat_map(|e| [e.clone(), format!("{e} --mpi")])
            .collect()
    };
    // Barriers are timed in batches of 50: 40 samples (quick), 200.
    let bi = if quick { 2000 } else { 10_000 };
    let barrier = coll(vec![
        format!("collectives barrier --procs 2 --iters {bi}"),
        format!("collectives barrier --procs 4 --iters {bi}"),
    ]);
    let barrier: Vec<&str> = barrier.iter().map(String::as_str).collect();
    v.push(cell("collectives barrier", r - 1, &barrier));
    let bcast = coll(vec![
        format!("collectives bcast --procs 4 --size 8 --iters {ci}"),
        format!(
            "collectives bcast --procs 4 --size 1048576 --iters {}",
            ci / 10
        ),
    ]);
    let bcast: Vec<&str> = bcast.iter().map(String::as_str).collect();
    v.push(cell("collectives broadcast", r - 1, &bcast));
    // 5 rounds of this many grants per rank: short rounds are mostly the
    // start of a round (ranks not yet queued), on both sides.
    // Two ranks (one per core, pinned as mpirun pins them) measure the
    // hand-off itself; four on two cores add the scheduler's.
    let li = if quick { 600 } else { 3000 };
    let lock = coll(vec![
        format!("collectives lock --procs 2 --iters {}", 5 * li),
        format!("collectives lock --procs 4 --iters {li}"),
    ]);
    let lock: Vec<&str> = lock.iter().map(String::as_str).collect();
    v.push(cell("collectives lock", r - 1, &lock));
    v.push(cell(
        "collectives shared array",
        r - 1,
        &[&format!(
            "collectives array --procs 4 --iters {}",
            if quick { 10 } else { 40 }
        )],
    ));
    v.push(cell(
        "collectives batch",
        r - 1,
        &[
            "collectives batch --procs 4 --tasks 1000",
            "collectives batch --procs 4 --tasks 100000",
        ],
    ));
    let memcpy: Vec<String> = [64usize, 4096, 1 << 20, 16 << 20, 64 << 20]
        .iter()
        .map(|s| {
            format!(
                "floor memcpy --size {s} --iters {}",
                if quick { 5 } else { 20 }
            )
        })
        .collect();
    v.push(Cell {
        name: "memcpy".into(),
        entries: memcpy
            .iter()
            .map(|e| e.split_whitespace().map(str::to_string).collect())
            .collect(),
        rounds: 1,
    });
    v
}

/// Runs one harness invocation; returns its measurements (or an error one).
fn run_entry(dir: &Path, e: &[String]) -> Vec<Measurement> {
    let out = Command::new(dir.join(&e[0])).args(&e[1..]).output();
    let fail = |msg: String| {
        let mut m = Measurement::new(
            &e[0],
            e.get(1).map(String::as_str).unwrap_or("?"),
            "none",
            "error",
        );
        m.error = Some(msg);
        vec![m]
    };
    match out {
        Err(err) => fail(format!("cannot run {}: {err}", e[0])),
        Ok(o) => {
            let ms: Vec<Measurement> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if ms.is_empty() {
                fail(format!(
                    "{} exited {} without results: {}",
                    e.join(" "),
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                ))
            } else {
                ms
            }
        }
    }
}

/// The cache-line floor's median one-way latency right now.
fn floor_now(dir: &Path) -> f64 {
    let ms = run_entry(
        dir,
        &[
            "floor".into(),
            "pingpong".into(),
            "--iters".into(),
            "1500".into(),
        ],
    );
    ms.first()
        .filter(|m| !m.samples.is_empty())
        .map(|m| shoal_bench::measure::summarize(&m.samples).0)
        .unwrap_or(f64::NAN)
}

fn git_rev() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Writes `results.json`, `results.csv`, `results.md` and the plots of
/// `rows` into `out`; returns the markdown.
fn write_outputs(rows: &[Row], title: &str, out: &Path) -> String {
    let md = format!(
        "{}\n{}",
        report::markdown(rows, title),
        report::targets(rows)
    );
    let json = serde_json::to_string_pretty(rows).unwrap_or_default();
    let writes = [
        ("results.json", json),
        ("results.csv", report::csv(rows)),
        ("results.md", md.clone()),
    ];
    for (name, body) in writes {
        if let Err(e) = std::fs::write(out.join(name), body) {
            eprintln!("matrix: cannot write {name}: {e}");
        }
    }
    match shoal_bench::plot::write_plots(rows, out) {
        Ok(paths) => {
            for p in paths {
                eprintln!("matrix: plot {}", p.display());
            }
        }
        Err(e) => eprintln!("matrix: plots failed: {e}"),
    }
    md
}

/// `--render DIR`: the outputs of a recorded run, rewritten by this build's
/// report (placements recomputed from each row's floors).
fn render(dir: &Path) -> Result<(), String> {
    let json = std::fs::read_to_string(dir.join("results.json"))
        .map_err(|e| format!("{}: {e}", dir.join("results.json").display()))?;
    let mut rows: Vec<Row> = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    for r in &mut rows {
        if let Some([a, b]) = r.floor_ns {
            r.placement = shoal_bench::measure::placement(a, b).into();
        }
    }
    let md = std::fs::read_to_string(dir.join("results.md")).unwrap_or_default();
    let title = md
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .unwrap_or("shoal bench matrix")
        .to_string();
    println!("{}", write_outputs(&rows, &title, dir));
    Ok(())
}

fn main() {
    let a = Args::from_env(1);
    if a.has("render") {
        let dir = PathBuf::from(a.get("render", String::new()));
        if let Err(e) = render(&dir) {
            eprintln!("matrix: --render {}: {e}", dir.display());
            std::process::exit(1);
        }
        return;
    }
    let quick = a.has("quick");
    let out = PathBuf::from(a.get("out", "target/bench-matrix".to_string()));
    let only = a.get("only", String::new());
    let dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let rev = git_rev();
    let ncores = cores();
    let t_all = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    for c in cells(quick).into_iter().filter(|c| c.name.contains(&only)) {
        let t0 = Instant::now();
        let before = floor_now(&dir);
        let mut merged: BTreeMap<String, Measurement> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for _ in 0..c.rounds {
            for e in &c.entries {
                for m in run_entry(&dir, e) {
                    let k = m.key();
                    match merged.get_mut(&k) {
                        Some(acc) => {
                            acc.samples.extend(m.samples);
                            if acc.error.is_none() {
                                acc.error = m.error;
                            }
                        }
                        None => {
                            order.push(k.clone());
                            merged.insert(k, m);
                        }
                    }
                }
            }
        }
        let after = floor_now(&dir);
        for k in order {
            if let Some(m) = merged.get(&k) {
                rows.push(Row::from_measurement(
                    m,
                    Some([before, after]),
                    &rev,
                    ncores,
                ));
            }
        }
        eprintln!(
            "matrix: {:<40} {:>6.1}s",
            c.name,
            t0.elapsed().as_secs_f64()
        );
    }
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("matrix: cannot create {}: {e}", out.display());
        std::process::exit(1);
    }
    let title = format!(
        "shoal bench matrix ({}, rev {rev}, {ncores} cores, {:.0} s)",
        if quick { "quick" } else { "full" },
        t_all.elapsed().as_secs_f64()
    );
    let md = write_outputs(&rows, &title, &out);
    println!("{md}");
    eprintln!("matrix: wrote {}", out.display());
}
