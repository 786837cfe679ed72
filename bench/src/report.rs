//! Writing results: `results.json`, `results.csv`, and `results.md` with
//! shoal beside each peer, the ratio, and the targets checked.

use crate::measure::Row;
use std::fmt::Write as _;

/// Formats a figure with a unit suited to its metric.
pub fn fmt_value(metric: &str, v: Option<f64>) -> String {
    let Some(v) = v else { return "-".into() };
    match metric {
        "latency_one_way_ns" | "wake_latency_ns" | "latency_round_trip_ns" => {
            if v >= 1e6 {
                format!("{:.2} ms", v / 1e6)
            } else if v >= 1e4 {
                format!("{:.1} us", v / 1e3)
            } else {
                format!("{v:.0} ns")
            }
        }
        "throughput_msgs_per_s" if v >= 1e5 => format!("{:.2} M/s", v / 1e6),
        "throughput_msgs_per_s" => format!("{:.2} k/s", v / 1e3),
        "throughput_bytes_per_s" => format!("{:.2} GB/s", v / 1e9),
        "idle_cpu_percent" => format!("{v:.3} %"),
        "idle_wakeups_per_s" => format!("{v:.1} /s"),
        "typed_receive_overhead_ns" => format!("{v:.1} ns"),
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

/// The peers a shoal row is compared with: every row of the same cell
/// that matches, one per system and mode, the one in the matching waiting
/// mode first.
fn peers_of<'a>(r: &Row, rows: &'a [Row]) -> Vec<&'a Row> {
    fn peer_mode(m: &str) -> &str {
        match m {
            "park" => "waitset",
            // shoal's blocking wrappers against a raw library's blocking
            // calls (raw nng's rows say "park").
            "blocking" => "park",
            other => other,
        }
    }
    let same_cell = |p: &&Row| {
        p.system != "shoal"
            && p.system != "floor"
            && p.pattern == r.pattern
            // The network patterns, and the channels' remote cells, run
            // over several wires: a peer of their own each.
            && (!matches!(
                r.pattern.as_str(),
                "rpc"
                    | "oneway"
                    | "channel-broadcast"
                    | "channel-workqueue-remote-put"
                    | "channel-workqueue-remote-take"
            ) || p.transport == r.transport)
            && p.payload_bytes == r.payload_bytes
            && p.readers == r.readers
            && p.metric == r.metric
            && p.error.is_none()
    };
    let mut peers: Vec<&Row> = Vec::new();
    for p in rows.iter().filter(same_cell) {
        if !peers
            .iter()
            .any(|q| q.system == p.system && q.mode == p.mode)
        {
            peers.push(p);
        }
    }
    // The peer in the matching waiting mode first (stable: the rest keep
    // the order they were measured in).
    peers.sort_by_key(|p| p.mode != peer_mode(&r.mode));
    peers
}

/// The floor measured interleaved in the same cell as throughput row `r`
/// (same floors around it, same work), if any.
fn cell_floor<'a>(r: &Row, rows: &'a [Row]) -> Option<&'a Row> {
    rows.iter().find(|f| {
        f.system == "floor"
            && f.error.is_none()
            && f.floor_ns.is_some()
            && f.floor_ns == r.floor_ns
            && f.metric == r.metric
            && f.payload_bytes == r.payload_bytes
            && f.readers == r.readers
    })
}

/// The markdown report: every row, then the targets. "vs floor" is a
/// latency over the cache-line floor around its cell, or a throughput over
/// the throughput floor measured interleaved in its cell.
pub fn markdown(rows: &[Row], title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {title}\n");
    let _ = writeln!(
        s,
        "| system | transport | pattern | mode | payload | readers | procs | metric | placement | p50 | p99 | floor around | vs floor | vs peer |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let floor = r
            .floor_ns
            .map(|[a, b]| format!("{a:.0}/{b:.0} ns"))
            .unwrap_or_else(|| "-".into());
        let vs_floor = match (r.metric.as_str(), r.p50, r.floor_ns) {
            ("latency_one_way_ns", Some(p), Some([a, b])) if r.system != "floor" => {
                format!("{:.2}x", p / ((a + b) / 2.0))
            }
            (m, Some(p), Some(_)) if r.system != "floor" && m.starts_with("throughput") => {
                cell_floor(r, rows)
                    .and_then(|f| f.p50)
                    .map(|f| format!("{:.2}x", p / f))
                    .unwrap_or_default()
            }
            _ => String::new(),
        };
        let vs_peer = match (r.system.as_str(), r.p50) {
            ("shoal", Some(v)) => {
                let peers = peers_of(r, rows);
                // The mode is named when a system is there in several.
                let named = |p: &Row| {
                    if peers.iter().filter(|q| q.system == p.system).count() > 1 {
                        format!("{} {}", p.system, p.mode)
                    } else {
                        p.system.clone()
                    }
                };
                peers
                    .iter()
                    .filter_map(|p| match p.p50 {
                        Some(pv) if pv > 0.0 => Some(format!("{:.2}x {}", v / pv, named(p))),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }
            _ => String::new(),
        };
        let (p50, p99) = match &r.error {
            Some(e) => (format!("error: {e}"), String::new()),
            None => (fmt_value(&r.metric, r.p50), fmt_value(&r.metric, r.p99)),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.system,
            r.transport,
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

/// The placement two rows were measured in: one word when they agree.
fn placed(a: &Row, b: &Row) -> String {
    if a.placement == b.placement {
        a.placement.clone()
    } else {
        format!("{} / {}", a.placement, b.placement)
    }
}

/// Whether two rows of different cells may be compared: both in the same
/// mode, and not mixed (a figure of one mode says nothing about the other).
fn same_mode(a: &Row, b: &Row) -> bool {
    a.placement == b.placement && a.placement != "mixed"
}

/// Why a cell in this placement is reported but not judged, if it is: the
/// issue's targets are set for the near and the far mode; SMT siblings
/// (one physical core, a 21-27 ns floor) are a third mode they do not cover.
fn unjudged(placement: &str) -> Option<&'static str> {
    match placement {
        "mixed" => Some("not judged"),
        "sibling" => Some("SMT siblings: no target in this mode"),
        _ => None,
    }
}

/// One line of the targets table.
struct Target {
    name: String,
    measured: String,
    /// `None`: not judged in this run (the measured text says why).
    verdict: Option<bool>,
}

/// A target judged on a cross-cell comparison: only when both cells were in
/// the same, unmixed placement.
fn across(name: String, a: &Row, b: &Row, measured: String, ok: bool) -> Target {
    let at = placed(a, b);
    if let (true, Some(why)) = (same_mode(a, b), unjudged(&a.placement)) {
        return Target {
            name,
            measured: format!("{measured} ({at}: {why})"),
            verdict: None,
        };
    }
    if same_mode(a, b) {
        Target {
            name,
            measured: format!("{measured} ({at})"),
            verdict: Some(ok),
        }
    } else {
        Target {
            name,
            measured: format!("{measured} ({at}: placements differ, not judged)"),
            verdict: None,
        }
    }
}

/// A target whose bound depends on the placement: `near` and `far` bounds
/// (`None`: no target in that mode); a mixed cell is not judged.
fn by_mode(
    name: String,
    r: &Row,
    measured: String,
    near: Option<bool>,
    far: Option<bool>,
) -> Target {
    let (verdict, note) = match r.placement.as_str() {
        "near" => (
            near,
            if near.is_none() {
                ": no target in this mode"
            } else {
                ""
            },
        ),
        "far" => (
            far,
            if far.is_none() {
                ": no target in this mode"
            } else {
                ""
            },
        ),
        "sibling" => (None, ": SMT siblings, no target in this mode"),
        _ => (None, ": not judged"),
    };
    Target {
        name,
        measured: format!("{measured} ({}{note})", r.placement),
        verdict,
    }
}

/// A target on two figures of one cell, measured interleaved: judged in
/// the near or the far mode, which it names; in a mixed cell the rounds of
/// the two figures may have run in different modes, so it is not judged.
fn within(name: String, r: &Row, measured: String, ok: bool) -> Target {
    if let Some(why) = unjudged(&r.placement) {
        return Target {
            name,
            measured: format!("{measured} ({}: {why})", r.placement),
            verdict: None,
        };
    }
    slow(name, r, measured, ok)
}

/// A target on figures in microseconds or more (wake-ups, idle CPU), which
/// a cache-line transfer mode of 50 or 150 ns does not move: judged in any
/// placement, which it names.
fn slow(name: String, r: &Row, measured: String, ok: bool) -> Target {
    Target {
        name,
        measured: format!("{measured} ({})", r.placement),
        verdict: Some(ok),
    }
}

/// The targets of the benchmark issue, checked against this run's rows.
///
/// Every line names the placement (near, far, sibling, mixed) of the cell
/// it was judged on. A target is judged only in a cell measured wholly in
/// the near or wholly in the far mode (across cells: both in the same one),
/// with the bound of that mode where the bounds differ; a mixed cell, and
/// one where the two vCPUs were SMT siblings of one core, is reported, not
/// judged. Exception: wake latencies and idle CPU, figures of tens of
/// microseconds and more that the cache-line mode does not move, are
/// judged in any placement.
pub fn targets(rows: &[Row]) -> String {
    let mut t: Vec<Target> = Vec::new();
    let pp_in = |pattern: &str, size: u64, mode: &str, sys: &str| {
        find(rows, |r| {
            r.system == sys && r.pattern == pattern && r.payload_bytes == size && r.mode == mode
        })
    };
    let pp = |size: u64, mode: &str, sys: &str| pp_in("pingpong", size, mode, sys);
    // A ping-pong latency target, on the usual ring (64 KiB) and on a 4 KiB
    // one, each beside the plain ring of that size measured in its cell.
    let latency = |t: &mut Vec<Target>, size: u64, what: &str, near: f64, far: Option<f64>| {
        for (pattern, ring, plain) in [
            ("pingpong", "64 KiB", "ringpong-64k"),
            ("pingpong-4k", "4 KiB", "ringpong-4k"),
        ] {
            let Some(r) = pp_in(pattern, size, "spin", "shoal") else {
                continue;
            };
            let (Some(p), Some(f)) = (r.p50, floor_mid(r)) else {
                continue;
            };
            let plain = pp_in(plain, size, "spin", "floor")
                .and_then(|q| q.p50)
                .map(|q| format!("; a plain ring of that size: {q:.0} ns = {:.2}x", q / f))
                .unwrap_or_default();
            let bounds = match far {
                Some(b) => format!("<= {near}x the cache-line floor around it in the near mode, <= {b}x in the far mode"),
                None => format!("<= {near}x the cache-line floor around it in the near mode"),
            };
            t.push(by_mode(
                format!("{what}, spin, pinned, {ring} ring: {bounds}"),
                r,
                format!("{p:.0} ns = {:.2}x floor {f:.0} ns{plain}", p / f),
                Some(p <= near * f),
                far.map(|b| p <= b * f),
            ));
        }
    };
    latency(&mut t, 64, "64 B ping-pong", 2.0, Some(1.5));
    if let Some(r) = pp(64, "spin", "shoal") {
        if let Some(i) = pp(64, "spin", "iceoryx2") {
            if let (Some(p), Some(ip)) = (r.p50, i.p50) {
                t.push(within(
                    "64 B ping-pong, spin: <= 0.7x iceoryx2 busy-poll".into(),
                    r,
                    format!("{p:.0} ns vs {ip:.0} ns = {:.2}x", p / ip),
                    p <= 0.7 * ip,
                ));
            }
        }
        for big in [1u64 << 20, 16 << 20] {
            if let Some(b) = pp(big, "spin", "shoal") {
                if let (Some(bp), Some(p)) = (b.p50, r.p50) {
                    t.push(across(
                        format!(
                            "{} MiB ping-pong (in-place write): <= 1.2x the 64 B figure",
                            big >> 20
                        ),
                        b,
                        r,
                        format!("{bp:.0} ns = {:.2}x of {p:.0} ns", bp / p),
                        bp <= 1.2 * p,
                    ));
                }
            }
        }
        if let Some(k) = pp(64, "park", "shoal") {
            if let (Some(a50), Some(a99), Some(s50), Some(s99)) = (k.p50, k.p99, r.p50, r.p99) {
                t.push(within(
                    "no park convoy: default-mode ping-pong p50 and p99 <= 1.2x spin".into(),
                    k,
                    format!(
                        "p50 {a50:.0}/{s50:.0} ns = {:.2}x, p99 {a99:.0}/{s99:.0} ns = {:.2}x",
                        a50 / s50,
                        a99 / s99
                    ),
                    a50 <= 1.2 * s50 && a99 <= 1.2 * s99,
                ));
            }
        }
    }
    latency(
        &mut t,
        48,
        "48 B ping-pong (header and payload in one line)",
        1.5,
        None,
    );
    for (suffix, how) in [("", "pinned"), ("-unpinned", "unpinned")] {
        let wake = find(rows, |r| {
            r.system == "shoal" && r.pattern == format!("wake-idle{suffix}")
        });
        let futex = find(rows, |r| {
            r.system == "floor" && r.pattern == format!("futex-idle{suffix}")
        });
        if let (Some(w), Some(f)) = (wake, futex) {
            if let (Some(wv), Some(fv)) = (w.p50, f.p50) {
                t.push(slow(
                    format!("wake of a parked reader after 1 s idle, {how}: <= 1.2x the bare futex wake, {how}"),
                    w,
                    format!("{:.1} us vs {:.1} us = {:.2}x", wv / 1e3, fv / 1e3, wv / fv),
                    wv <= 1.2 * fv,
                ));
            }
        }
    }
    let wake = find(rows, |r| r.system == "shoal" && r.pattern == "wake-idle");
    let ice_wake = find(rows, |r| r.system == "iceoryx2" && r.pattern == "wake-idle");
    if let (Some(w), Some(i)) = (wake, ice_wake) {
        if let (Some(wv), Some(iv)) = (w.p50, i.p50) {
            t.push(slow(
                "wake of a parked reader after 1 s idle: below iceoryx2's WaitSet figure".into(),
                w,
                format!("{:.1} us vs {:.1} us = {:.2}x", wv / 1e3, iv / 1e3, wv / iv),
                wv < iv,
            ));
        }
    }
    if let Some(r) = find(rows, |r| {
        r.system == "shoal" && r.pattern == "idle" && r.metric == "idle_cpu_percent"
    }) {
        if let Some(i) = r.p50 {
            t.push(slow(
                "blocked reader CPU: < 0.5 % of a core".into(),
                r,
                format!("{i:.3} %"),
                i < 0.5,
            ));
        }
    }
    if let Some(r) = find(rows, |r| {
        r.system == "shoal" && r.pattern == "rpc" && r.transport == "shm"
    }) {
        if let Some(p) = r.p50 {
            t.push(slow(
                "shm request/reply round trip (async API, 64 B): < 1 us".into(),
                r,
                format!("{:.2} us", p / 1000.0),
                p < 1000.0,
            ));
        }
    }
    if let Some(r) = find(rows, |r| r.system == "shoal" && r.pattern == "rpc-typed") {
        if let Some(p) = r.p50 {
            t.push(slow(
                "typed (rkyv, validated) receive of a small struct: adds < 20 ns over raw bytes"
                    .into(),
                r,
                format!("{p:.1} ns"),
                p < 20.0,
            ));
        }
    }
    let bc = |pattern: &str, size: u64, n: u32| {
        find(rows, |r| {
            r.system == "shoal" && r.pattern == pattern && r.payload_bytes == size && r.readers == n
        })
    };
    if let Some(one) = bc("broadcast", 64, 1) {
        if let Some(v) = one.p50 {
            t.push(by_mode(
                "broadcast 64 B 1->1, pinned: >= 10 M msg/s near, 5 M far".into(),
                one,
                format!("{:.2} M/s", v / 1e6),
                Some(v >= 10e6),
                Some(v >= 5e6),
            ));
        }
        let ring = find(rows, |r| {
            r.system == "floor" && r.pattern == "ring" && r.floor_ns == one.floor_ns
        });
        if let (Some(v), Some(f)) = (one.p50, ring.and_then(|r| r.p50)) {
            t.push(within(
                "broadcast 64 B 1->1: >= 0.5x the plain-ring floor around it".into(),
                one,
                format!("{:.2} M/s vs {:.2} M/s = {:.2}x", v / 1e6, f / 1e6, v / f),
                v >= 0.5 * f,
            ));
        }
    }
    // Fan-out cells are left to the scheduler (more processes than CPUs):
    // compared with the 1->1 cell left to it too, when there is one.
    if let Some(one) = bc("broadcast-unpinned", 64, 1).or_else(|| bc("broadcast", 64, 1)) {
        for (n, frac) in [(3u32, 3.0), (7, 5.0)] {
            if let (Some(x), Some(v)) = (bc("broadcast", 64, n), one.p50) {
                if let Some(xv) = x.p50 {
                    t.push(across(
                        format!(
                            "broadcast 64 B 1->{n}: per reader >= 1/{frac} of 1->1 ({})",
                            if one.pattern == "broadcast" {
                                "pinned"
                            } else {
                                "unpinned"
                            }
                        ),
                        x,
                        one,
                        format!(
                            "{:.2} M/s = 1/{:.2} of {:.2} M/s",
                            xv / 1e6,
                            v / xv,
                            v / 1e6
                        ),
                        xv * frac >= v,
                    ));
                }
            }
        }
    }
    if let Some(big) = bc("broadcast", 1 << 20, 1) {
        let stream = find(rows, |r| {
            r.system == "floor" && r.pattern == "stream" && r.floor_ns == big.floor_ns
        })
        .or_else(|| find(rows, |r| r.system == "floor" && r.pattern == "stream"));
        if let (Some(b), Some(s)) = (big.p50, stream.and_then(|r| r.p50)) {
            t.push(within(
                "1 MiB 1->1, every byte written and read: >= 0.8x the stream floor".into(),
                big,
                format!("{:.2} GB/s vs {:.2} GB/s = {:.2}x", b / 1e9, s / 1e9, b / s),
                b >= 0.8 * s,
            ));
        }
    }
    let st = |pattern: &str| {
        find(rows, |r| {
            r.system == "shoal" && r.pattern == pattern && r.metric == "throughput_bytes_per_s"
        })
    };
    if let (Some(o), Some(i)) = (st("stream-overflow"), st("stream-inline")) {
        if let (Some(ov), Some(iv)) = (o.p50, i.p50) {
            t.push(within(
                "overflow stream (1-2 MiB records through a 2 MiB ring): >= 1/1.5 of the same stream through a 16 MiB ring".into(),
                o,
                format!(
                    "{:.2} GB/s vs {:.2} GB/s = 1/{:.2}",
                    ov / 1e9,
                    iv / 1e9,
                    iv / ov
                ),
                ov * 1.5 >= iv,
            ));
        }
    }
    let mut s = String::from(
        "## Targets (this run)\n\n| target | measured (placement) | verdict |\n|---|---|---|\n",
    );
    for Target {
        name,
        measured,
        verdict,
    } in t
    {
        let v = match verdict {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "-",
        };
        let _ = writeln!(s, "| {name} | {measured} | {v} |");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: &str, pattern: &str, payload: u64, metric: &str, p50: f64, floor: f64) -> Row {
        Row {
            system: system.into(),
            transport: "shm".into(),
            pattern: pattern.into(),
            mode: "spin".into(),
            placement: crate::measure::placement(floor, floor).into(),
            payload_bytes: payload,
            readers: 1,
            processes: 2,
            metric: metric.into(),
            p50: Some(p50),
            p99: Some(p50),
            mean: Some(p50),
            samples: 3,
            git_rev: "x".into(),
            cores: 2,
            floor_ns: Some([floor, floor]),
            error: None,
        }
    }

    fn line<'a>(md: &'a str, start: &str) -> &'a str {
        md.lines()
            .find(|l| l.starts_with(&format!("| {start}")))
            .unwrap_or_else(|| panic!("no target line {start:?} in\n{md}"))
    }

    #[test]
    fn a_shoal_row_is_compared_with_every_peer_of_its_cell() {
        let lat = "latency_round_trip_ns";
        let net = |system: &str, mode: &str, p50: f64| {
            let mut r = row(system, "rpc", 64, lat, p50, 50.0);
            r.transport = "nng-tcp".into();
            r.mode = mode.into();
            r
        };
        let mut quic = net("quinn", "park", 50.0);
        quic.transport = "quic".into();
        let rows = [
            net("shoal", "park", 110.0),
            net("nng", "park", 100.0),
            net("nng", "aio", 110.0),
            // Another wire's peer is not this row's.
            quic,
        ];
        let md = markdown(&rows, "t");
        let shoal = md
            .lines()
            .find(|l| l.starts_with("| shoal"))
            .unwrap_or_default();
        assert!(
            shoal.ends_with("| 1.10x nng park, 1.00x nng aio |"),
            "{shoal}"
        );
    }

    #[test]
    fn pingpong_bound_depends_on_the_mode() {
        let lat = "latency_one_way_ns";
        // 1.8 floors: met near (<= 2x), missed far (<= 1.5x).
        let near = targets(&[row("shoal", "pingpong", 64, lat, 90.0, 50.0)]);
        assert!(line(&near, "64 B ping-pong, spin, pinned").ends_with("(near) | met |"));
        let far = targets(&[row("shoal", "pingpong", 64, lat, 270.0, 150.0)]);
        assert!(line(&far, "64 B ping-pong, spin, pinned").ends_with("(far) | MISSED |"));
        let mut mixed = row("shoal", "pingpong", 64, lat, 90.0, 50.0);
        mixed.floor_ns = Some([50.0, 150.0]);
        mixed.placement = "mixed".into();
        let m = targets(&[mixed]);
        assert!(line(&m, "64 B ping-pong, spin, pinned").ends_with("(mixed: not judged) | - |"));
        // SMT siblings (a 21 ns floor): reported, not judged.
        let sib = targets(&[row("shoal", "pingpong", 64, lat, 62.0, 21.0)]);
        assert!(line(&sib, "64 B ping-pong, spin, pinned")
            .ends_with("(sibling: SMT siblings, no target in this mode) | - |"));
        // 48 B: judged near only.
        let far48 = targets(&[row("shoal", "pingpong", 48, lat, 200.0, 150.0)]);
        assert!(line(&far48, "48 B ping-pong").contains("far: no target in this mode) | - |"));
    }

    #[test]
    fn pingpong_targets_are_judged_per_ring_beside_the_plain_ring() {
        let lat = "latency_one_way_ns";
        let md = targets(&[
            row("shoal", "pingpong", 48, lat, 80.0, 50.0),
            row("shoal", "pingpong-4k", 48, lat, 70.0, 50.0),
            row("floor", "ringpong-64k", 48, lat, 78.0, 50.0),
            row("floor", "ringpong-4k", 48, lat, 52.0, 50.0),
        ]);
        let big = line(
            &md,
            "48 B ping-pong (header and payload in one line), spin, pinned, 64 KiB ring",
        );
        assert!(
            big.contains("a plain ring of that size: 78 ns = 1.56x"),
            "{big}"
        );
        assert!(big.ends_with("(near) | MISSED |"), "{big}");
        let small = line(
            &md,
            "48 B ping-pong (header and payload in one line), spin, pinned, 4 KiB ring",
        );
        assert!(
            small.contains("a plain ring of that size: 52 ns = 1.04x"),
            "{small}"
        );
        assert!(small.ends_with("(near) | met |"), "{small}");
    }

    #[test]
    fn ring_floor_target_uses_the_floor_of_the_same_cell() {
        let msgs = "throughput_msgs_per_s";
        let rows = [
            row("floor", "ring", 64, msgs, 10e6, 50.0),
            row("shoal", "broadcast", 64, msgs, 6e6, 50.0),
            // Another cell's ring floor (different floors around it).
            row("floor", "ring", 64, msgs, 100e6, 51.0),
        ];
        let t = targets(&rows);
        let l = line(&t, "broadcast 64 B 1->1: >= 0.5x the plain-ring floor");
        assert!(l.contains("= 0.60x (near) | met |"), "{l}");
        let md = markdown(&rows, "t");
        assert!(md.contains("| 0.60x |"), "{md}");
    }

    #[test]
    fn mixed_cells_are_reported_not_judged() {
        let b = "throughput_bytes_per_s";
        let mut f = row("floor", "stream", 1 << 20, b, 10e9, 50.0);
        let mut s = row("shoal", "broadcast", 1 << 20, b, 13e9, 50.0);
        for r in [&mut f, &mut s] {
            r.floor_ns = Some([50.0, 150.0]);
            r.placement = "mixed".into();
        }
        let t = targets(&[f, s]);
        let l = line(&t, "1 MiB 1->1");
        assert!(l.ends_with("= 1.30x (mixed: not judged) | - |"), "{l}");
        // Wake latencies do not depend on the cache-line mode.
        let mut w = row("shoal", "wake-idle", 0, "wake_latency_ns", 60e3, 50.0);
        let mut fx = row("floor", "futex-idle", 0, "wake_latency_ns", 55e3, 50.0);
        for r in [&mut w, &mut fx] {
            r.placement = "mixed".into();
        }
        let t = targets(&[w, fx]);
        assert!(
            line(&t, "wake of a parked reader after 1 s idle, pinned").ends_with("(mixed) | met |")
        );
    }

    #[test]
    fn cross_cell_targets_need_one_placement() {
        let lat = "latency_one_way_ns";
        let rows = [
            row("shoal", "pingpong", 64, lat, 100.0, 50.0),
            row("shoal", "pingpong", 1 << 20, lat, 300.0, 150.0),
        ];
        let t = targets(&rows);
        let l = line(&t, "1 MiB ping-pong");
        assert!(
            l.contains("(far / near: placements differ, not judged) | - |"),
            "{l}"
        );
    }

    #[test]
    fn overflow_stream_is_judged_against_the_inline_stream() {
        let b = "throughput_bytes_per_s";
        let t = targets(&[
            row("shoal", "stream-overflow", 1 << 20, b, 8e9, 150.0),
            row("shoal", "stream-inline", 1 << 20, b, 10e9, 150.0),
        ]);
        assert!(line(&t, "overflow stream").ends_with("= 1/1.25 (far) | met |"));
    }
}
