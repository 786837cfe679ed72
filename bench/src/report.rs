//! Writing results: `results.json`, `results.csv`, and `results.md` with
//! shoal beside each peer, the ratio, and the targets checked.

use crate::measure::Row;
use std::fmt::Write as _;

/// Formats a figure with a unit suited to its metric.
pub fn fmt_value(metric: &str, v: Option<f64>) -> String {
    let Some(v) = v else { return "-".into() };
    match metric {
        "latency_one_way_ns" | "wake_latency_ns" => {
            if v >= 1e6 {
                format!("{:.2} ms", v / 1e6)
            } else if v >= 1e4 {
                format!("{:.1} us", v / 1e3)
            } else {
                format!("{v:.0} ns")
            }
        }
        "throughput_msgs_per_s" => format!("{:.2} M/s", v / 1e6),
        "throughput_bytes_per_s" => format!("{:.2} GB/s", v / 1e9),
        "idle_cpu_percent" => format!("{v:.3} %"),
        _ => format!("{v:.3}"),
    }
}

fn size(b: u64) -> String {
    match b {
        0 => "-".into(),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// CSV of all rows.
pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "system,transport,pattern,mode,placement,payload_bytes,readers,processes,metric,p50,p99,mean,samples,git_rev,cores,floor_before_ns,floor_after_ns,error\n",
    );
    let f = |v: Option<f64>| v.map(|x| format!("{x}")).unwrap_or_default();
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.system,
            r.transport,
            r.pattern,
            r.mode,
            r.placement,
            r.payload_bytes,
            r.readers,
            r.processes,
            r.metric,
            f(r.p50),
            f(r.p99),
            f(r.mean),
            r.samples,
            r.git_rev,
            r.cores,
            f(r.floor_ns.map(|x| x[0])),
            f(r.floor_ns.map(|x| x[1])),
            r.error.as_deref().unwrap_or("").replace(',', ";")
        );
    }
    s
}

/// The peer a shoal row is compared with, if any row of the same cell matches.
fn peer_of<'a>(r: &Row, rows: &'a [Row]) -> Option<&'a Row> {
    fn peer_mode(m: &str) -> &str {
        match m {
            "park" => "waitset",
            other => other,
        }
    }
    let same_cell = |p: &&Row| {
        p.system != "shoal"
            && p.system != "floor"
            && p.pattern == r.pattern
            && p.payload_bytes == r.payload_bytes
            && p.readers == r.readers
            && p.metric == r.metric
            && p.error.is_none()
    };
    // The peer in the matching waiting mode, else the peer in any mode.
    rows.iter()
        .filter(same_cell)
        .find(|p| p.mode == peer_mode(&r.mode))
        .or_else(|| rows.iter().find(same_cell))
}

/// The markdown report: every row, then the targets.
pub fn markdown(rows: &[Row], title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {title}\n");
    let _ = writeln!(
        s,
        "| system | pattern | mode | payload | readers | procs | metric | placement | p50 | p99 | floor around | vs floor | vs peer |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let floor = r
            .floor_ns
            .map(|[a, b]| format!("{a:.0}/{b:.0} ns"))
            .unwrap_or_else(|| "-".into());
        let vs_floor = match (r.metric.as_str(), r.p50, r.floor_ns) {
            ("latency_one_way_ns", Some(p), Some([a, b])) if r.system != "floor" => {
                format!("{:.2}x", p / ((a + b) / 2.0))
            }
            _ => String::new(),
        };
        let vs_peer = if r.system == "shoal" {
            match (peer_of(r, rows), r.p50) {
                (Some(p), Some(v)) => match p.p50 {
                    Some(pv) if pv > 0.0 => format!("{:.2}x {}", v / pv, p.system),
                    _ => String::new(),
                },
                _ => String::new(),
            }
        } else {
            String::new()
        };
        let (p50, p99) = match &r.error {
            Some(e) => (format!("error: {e}"), String::new()),
            None => (fmt_value(&r.metric, r.p50), fmt_value(&r.metric, r.p99)),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.system,
            r.pattern,
            r.mode,
            size(r.payload_bytes),
            r.readers,
            r.processes,
            r.metric,
            r.placement,
            p50,
            p99,
            floor,
            vs_floor,
            vs_peer
        );
    }
    s
}

fn find(rows: &[Row], f: impl Fn(&Row) -> bool) -> Option<&Row> {
    rows.iter().find(|r| f(r) && r.error.is_none())
}

fn floor_mid(r: &Row) -> Option<f64> {
    r.floor_ns.map(|[a, b]| (a + b) / 2.0)
}

/// The targets of the benchmark issue, checked against this run's rows.
pub fn targets(rows: &[Row]) -> String {
    let mut t: Vec<(String, String, Option<bool>)> = Vec::new();
    let pp = |size: u64, mode: &str, sys: &str| {
        find(rows, |r| {
            r.system == sys && r.pattern == "pingpong" && r.payload_bytes == size && r.mode == mode
        })
    };
    if let Some(r) = pp(64, "spin", "shoal") {
        if let (Some(p), Some(f)) = (r.p50, floor_mid(r)) {
            t.push((
                "64 B ping-pong, spin: <= 2x the cache-line floor around it".into(),
                format!(
                    "{p:.0} ns = {:.2}x floor {f:.0} ns ({})",
                    p / f,
                    r.placement
                ),
                Some(p <= 2.0 * f),
            ));
        }
        if let Some(i) = pp(64, "spin", "iceoryx2") {
            if let (Some(p), Some(ip)) = (r.p50, i.p50) {
                t.push((
                    "64 B ping-pong, spin: <= 0.7x iceoryx2 busy-poll".into(),
                    format!("{p:.0} ns vs {ip:.0} ns = {:.2}x", p / ip),
                    Some(p <= 0.7 * ip),
                ));
            }
        }
        for big in [1u64 << 20, 16 << 20] {
            if let (Some(b), Some(p)) = (pp(big, "spin", "shoal").and_then(|b| b.p50), r.p50) {
                t.push((
                    format!(
                        "{} MiB ping-pong (in-place write): <= 1.2x the 64 B figure",
                        big >> 20
                    ),
                    format!("{b:.0} ns = {:.2}x of {p:.0} ns", b / p),
                    Some(b <= 1.2 * p),
                ));
            }
        }
        if let Some(k) = pp(64, "park", "shoal") {
            if let (Some(a50), Some(a99), Some(s50), Some(s99)) = (k.p50, k.p99, r.p50, r.p99) {
                t.push((
                    "no park convoy: default-mode ping-pong p50 and p99 <= 1.2x spin".into(),
                    format!(
                        "p50 {a50:.0}/{s50:.0} ns = {:.2}x, p99 {a99:.0}/{s99:.0} ns = {:.2}x",
                        a50 / s50,
                        a99 / s99
                    ),
                    Some(a50 <= 1.2 * s50 && a99 <= 1.2 * s99),
                ));
            }
        }
    }
    let wake = find(rows, |r| r.system == "shoal" && r.pattern == "wake-idle");
    let futex = find(rows, |r| r.system == "floor" && r.pattern == "futex-idle");
    if let (Some(w), Some(f)) = (wake.and_then(|w| w.p50), futex.and_then(|f| f.p50)) {
        t.push((
            "wake of a parked reader after 1 s idle: <= 1.2x bare futex wake".into(),
            format!("{:.1} us vs {:.1} us = {:.2}x", w / 1e3, f / 1e3, w / f),
            Some(w <= 1.2 * f),
        ));
    }
    let ice_wake = find(rows, |r| r.system == "iceoryx2" && r.pattern == "wake-idle");
    if let (Some(w), Some(i)) = (wake.and_then(|w| w.p50), ice_wake.and_then(|r| r.p50)) {
        t.push((
            "wake of a parked reader after 1 s idle: below iceoryx2's WaitSet figure".into(),
            format!("{:.1} us vs {:.1} us = {:.2}x", w / 1e3, i / 1e3, w / i),
            Some(w < i),
        ));
    }
    if let Some(i) = find(rows, |r| r.system == "shoal" && r.pattern == "idle").and_then(|r| r.p50)
    {
        t.push((
            "blocked reader CPU: < 0.5 % of a core".into(),
            format!("{i:.3} %"),
            Some(i < 0.5),
        ));
    }
    let bc = |n: u32| {
        find(rows, |r| {
            r.system == "shoal"
                && r.pattern == "broadcast"
                && r.payload_bytes == 64
                && r.readers == n
        })
    };
    if let Some(one) = bc(1) {
        if let Some(v) = one.p50 {
            let need = if one.placement == "near" { 10e6 } else { 5e6 };
            t.push((
                "broadcast 64 B 1->1: >= 10 M msg/s near, 5 M far".into(),
                format!("{:.2} M/s ({})", v / 1e6, one.placement),
                Some(v >= need),
            ));
            for (n, frac) in [(3u32, 3.0), (7, 5.0)] {
                if let Some(x) = bc(n).and_then(|r| r.p50) {
                    t.push((
                        format!("broadcast 64 B 1->{n}: per reader >= 1/{frac} of 1->1"),
                        format!("{:.2} M/s = 1/{:.2} of {:.2} M/s", x / 1e6, v / x, v / 1e6),
                        Some(x * frac >= v),
                    ));
                }
            }
        }
    }
    let big = find(rows, |r| {
        r.system == "shoal" && r.pattern == "broadcast" && r.payload_bytes == 1 << 20
    });
    let stream = find(rows, |r| r.system == "floor" && r.pattern == "stream");
    if let (Some(b), Some(s)) = (big.and_then(|r| r.p50), stream.and_then(|r| r.p50)) {
        t.push((
            "1 MiB 1->1, reader touching every byte: >= 0.8x the stream floor".into(),
            format!("{:.2} GB/s vs {:.2} GB/s = {:.2}x", b / 1e9, s / 1e9, b / s),
            Some(b >= 0.8 * s),
        ));
    }
    let mut s =
        String::from("## Targets (this run)\n\n| target | measured | verdict |\n|---|---|---|\n");
    for (name, got, ok) in t {
        let v = match ok {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "-",
        };
        let _ = writeln!(s, "| {name} | {got} | {v} |");
    }
    s
}
