//! SVG plots of a run's rows, drawn with `plotters` (SVG backend only: no
//! system fonts or C libraries; text is left to the SVG viewer).
//!
//! - `latency_vs_payload.svg`: ping-pong one-way latency (p50 solid, p99
//!   dashed) against payload size, log-log, one colour per (system, mode),
//!   with the cache-line floor measured around the cells as a flat line.
//! - `throughput_vs_readers.svg`: broadcast throughput per reader (p50)
//!   against the number of readers, one series per (system, mode, payload).
//!
//! A plot with no matching rows is still written, with a note saying so.

use crate::measure::Row;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name of the latency plot.
pub const LATENCY_SVG: &str = "latency_vs_payload.svg";
/// File name of the throughput plot.
pub const THROUGHPUT_SVG: &str = "throughput_vs_readers.svg";

const SIZE: (u32, u32) = (1000, 640);
const FONT: &str = "sans-serif";

/// Series colours, distinguishable and printable.
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
const FLOOR_COLOR: RGBColor = RGBColor(90, 90, 90);
const LIGHT_LINE: RGBColor = RGBColor(244, 244, 244);

/// Writes `latency_vs_payload.svg` and `throughput_vs_readers.svg` for `rows`
/// into `dir` (created if missing) and returns their paths.
///
/// Rows with an error or without a positive finite p50 are left out; a plot
/// with nothing left to draw carries a note instead of data.
pub fn write_plots(rows: &[Row], dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lat = dir.join(LATENCY_SVG);
    latency_plot(rows, &lat).map_err(|e| format!("{}: {e}", lat.display()))?;
    let thr = dir.join(THROUGHPUT_SVG);
    throughput_plot(rows, &thr).map_err(|e| format!("{}: {e}", thr.display()))?;
    Ok(vec![lat, thr])
}

fn positive(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite() && *x > 0.0)
}

fn usable(r: &Row) -> bool {
    r.error.is_none() && positive(r.p50).is_some()
}

/// "rev abc123, 2 cores" when every row agrees, else an empty string.
fn provenance(rows: &[&Row]) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    if rows
        .iter()
        .all(|r| r.git_rev == first.git_rev && r.cores == first.cores)
    {
        format!(" (rev {}, {} cores)", first.git_rev, first.cores)
    } else {
        String::new()
    }
}

/// Bytes as `64 B`, `4 KiB`, `16 MiB` (1-2 significant digits).
fn bytes_label(b: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if (v - v.round()).abs() < 1e-6 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A log-axis latency tick: 1 to 5 times a power of ten get a label
/// (ns, or us from 10 us), the others only a grid line, so labels never crowd.
fn ns_label(v: f64) -> String {
    if !(v.is_finite() && v > 0.0) {
        return String::new();
    }
    let mantissa = (v / 10f64.powf(v.log10().floor())).round() as u32;
    if !(1..=5).contains(&mantissa) {
        String::new()
    } else if v >= 1e4 {
        format!("{:.0} us", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// Draws a titled, empty plot with `note` in the middle.
fn no_data(path: &Path, title: &str, note: &str) -> Result<(), String> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let area = root.titled(title, (FONT, 26)).map_err(|e| e.to_string())?;
    let (w, h) = area.dim_in_pixel();
    let style = TextStyle::from((FONT, 20).into_font())
        .color(&FLOOR_COLOR)
        .pos(text_anchor::Pos::new(
            text_anchor::HPos::Center,
            text_anchor::VPos::Center,
        ));
    area.draw_text(note, &style, (w as i32 / 2, h as i32 / 2))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// A white canvas tall enough for a legend of `entries` lines, and the
/// fraction of the plotting area's height that legend takes.
fn canvas(
    path: &Path,
    entries: usize,
) -> Result<(DrawingArea<SVGBackend<'_>, Shift>, f64), String> {
    let h = SIZE.1 + 20 * entries.saturating_sub(8) as u32;
    let root = SVGBackend::new(path, (SIZE.0, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    // Caption, margins and the x label area take about 115 px; a legend
    // line about 19 px, plus its padding.
    let frac = (entries as f64 * 19.0 + 24.0) / (f64::from(h) - 115.0) + 0.04;
    Ok((root, frac.min(0.8)))
}

/// One (system, mode) series of the latency plot: (payload, p50, p99).
type LatencySeries = Vec<(f64, f64, Option<f64>)>;

fn latency_plot(rows: &[Row], path: &Path) -> Result<(), String> {
    let picked: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.metric == "latency_one_way_ns"
                && r.pattern == "pingpong"
                && r.payload_bytes > 0
                && usable(r)
        })
        .collect();
    let title = format!(
        "One-way latency vs payload, ping-pong{}",
        provenance(&picked)
    );
    if picked.is_empty() {
        return no_data(
            path,
            &title,
            "no data: no error-free rows with pattern=pingpong, metric=latency_one_way_ns",
        );
    }

    let mut series: BTreeMap<(String, String), LatencySeries> = BTreeMap::new();
    for r in &picked {
        if let Some(p50) = positive(r.p50) {
            series
                .entry((r.system.clone(), r.mode.clone()))
                .or_default()
                .push((r.payload_bytes as f64, p50, positive(r.p99)));
        }
    }
    for s in series.values_mut() {
        s.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let floors: Vec<f64> = picked
        .iter()
        .filter_map(|r| r.floor_ns)
        .map(|[a, b]| (a + b) / 2.0)
        .filter(|x| x.is_finite() && *x > 0.0)
        .collect();
    let floor = (!floors.is_empty()).then(|| floors.iter().sum::<f64>() / floors.len() as f64);

    // x: powers of 4 from an even power of two, so 64 B, 4 KiB, 1 MiB, 16 MiB
    // all land on ticks.
    let (mut xmin, mut xmax) = (f64::INFINITY, 0.0f64);
    let (mut ymin, mut ymax) = (f64::INFINITY, 0.0f64);
    for s in series.values() {
        for &(x, p50, p99) in s {
            xmin = xmin.min(x);
            xmax = xmax.max(x);
            ymin = ymin.min(p50);
            ymax = ymax.max(p99.unwrap_or(p50)).max(p50);
        }
    }
    if let Some(f) = floor {
        ymin = ymin.min(f);
        ymax = ymax.max(f);
    }
    let mut lo = xmin.log2().floor() as i32 - 1;
    if lo % 2 != 0 {
        lo -= 1;
    }
    let hi = (xmax.log2().ceil() as i32 + 1).max(lo + 2);
    let x_range = 2f64.powi(lo)..2f64.powi(hi);
    // Head room above the data for the legend (log scale).
    let entries = 2 * series.len() + usize::from(floor.is_some());
    let (root, frac) = canvas(path, entries)?;
    let mut bottom = ymin / 1.6;
    if bottom.log10().floor() == (ymax * 1.15).log10().floor() {
        // Reach down to a power of ten so the axis has labelled ticks.
        bottom = 10f64.powf(bottom.log10().floor());
    }
    let (ylo, yhi) = (bottom.ln(), (ymax * 1.15).ln());
    let y_range = ylo.exp()..(ylo + (yhi - ylo) / (1.0 - frac)).exp();

    let mut chart = ChartBuilder::on(&root)
        .caption(&title, (FONT, 24))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range.clone().log_scale().base(2.0), y_range.log_scale())
        .map_err(|e| e.to_string())?;
    // No fractional byte ticks (a 1 B payload puts the axis start below 1).
    let xfmt = |v: &f64| {
        if *v < 1.0 {
            String::new()
        } else {
            bytes_label(*v)
        }
    };
    let yfmt = |v: &f64| ns_label(*v);
    chart
        .configure_mesh()
        .x_desc("payload size (bytes, log scale)")
        .y_desc("one-way latency (ns, log scale)")
        .x_labels(12)
        .y_labels(30)
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .axis_desc_style((FONT, 18))
        .label_style((FONT, 14))
        .light_line_style(LIGHT_LINE)
        .draw()
        .map_err(|e| e.to_string())?;

    if let Some(f) = floor {
        let style = FLOOR_COLOR.stroke_width(2);
        chart
            .draw_series(LineSeries::new(
                [(x_range.start, f), (x_range.end, f)],
                style,
            ))
            .map_err(|e| e.to_string())?
            .label(format!(
                "cache-line floor, mean around the cells: {f:.0} ns"
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
    }

    for (i, ((system, mode), pts)) in series.iter().enumerate() {
        let c = color(i);
        let solid = c.stroke_width(2);
        chart
            .draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), solid))
            .map_err(|e| e.to_string())?
            .label(format!("{system} {mode}: p50"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], solid));
        chart
            .draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 4, c.filled())))
            .map_err(|e| e.to_string())?;
        let p99: Vec<(f64, f64)> = pts.iter().filter_map(|p| p.2.map(|v| (p.0, v))).collect();
        if p99.is_empty() {
            continue;
        }
        chart
            .draw_series(DashedLineSeries::new(p99.iter().copied(), 8, 5, solid))
            .map_err(|e| e.to_string())?
            .label(format!("{system} {mode}: p99 (dashed)"))
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (9, 0)], solid)
                    + PathElement::new(vec![(15, 0), (24, 0)], solid)
            });
        chart
            .draw_series(
                p99.iter()
                    .map(|&p| TriangleMarker::new(p, 5, c.stroke_width(1))),
            )
            .map_err(|e| e.to_string())?;
    }

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

fn throughput_plot(rows: &[Row], path: &Path) -> Result<(), String> {
    let picked: Vec<&Row> = rows
        .iter()
        .filter(|r| r.pattern == "broadcast" && r.metric == "throughput_msgs_per_s" && usable(r))
        .collect();
    let title = format!(
        "Broadcast throughput per reader vs readers{}",
        provenance(&picked)
    );
    if picked.is_empty() {
        return no_data(
            path,
            &title,
            "no data: no error-free rows with pattern=broadcast, metric=throughput_msgs_per_s",
        );
    }

    // (system, mode, payload) -> (readers, M msg/s)
    let mut series: BTreeMap<(String, String, u64), Vec<(u32, f64)>> = BTreeMap::new();
    for r in &picked {
        if let Some(v) = positive(r.p50) {
            series
                .entry((r.system.clone(), r.mode.clone(), r.payload_bytes))
                .or_default()
                .push((r.readers, v / 1e6));
        }
    }
    for s in series.values_mut() {
        s.sort_by_key(|p| p.0);
    }
    let xmax = picked
        .iter()
        .map(|r| r.readers)
        .max()
        .unwrap_or(1)
        .saturating_add(1);
    let ymax = series
        .values()
        .flatten()
        .map(|p| p.1)
        .fold(0.0f64, f64::max);
    let (root, frac) = canvas(path, series.len())?;

    let mut chart = ChartBuilder::on(&root)
        .caption(&title, (FONT, 24))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0u32..xmax, 0.0..ymax * 1.08 / (1.0 - frac))
        .map_err(|e| e.to_string())?;
    let xfmt = |v: &u32| format!("{v}");
    let yfmt = |v: &f64| format!("{v:.1}");
    chart
        .configure_mesh()
        .x_desc("readers per message stream")
        .y_desc("throughput per reader, p50 (M msg/s)")
        .x_labels((xmax as usize).saturating_add(1).min(17))
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .axis_desc_style((FONT, 18))
        .label_style((FONT, 14))
        .light_line_style(LIGHT_LINE)
        .draw()
        .map_err(|e| e.to_string())?;

    for (i, ((system, mode, payload), pts)) in series.iter().enumerate() {
        let c = color(i);
        let style = c.stroke_width(2);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), style))
            .map_err(|e| e.to_string())?
            .label(format!(
                "{system} {mode}, {} payload",
                bytes_label(*payload as f64)
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(pts.iter().map(|&(n, v)| {
                EmptyElement::at((n, v))
                    + Text::new(
                        format!("{v:.2}"),
                        (7, -5),
                        TextStyle::from((FONT, 13).into_font()).color(&c).pos(
                            text_anchor::Pos::new(
                                text_anchor::HPos::Left,
                                text_anchor::VPos::Bottom,
                            ),
                        ),
                    )
            }))
            .map_err(|e| e.to_string())?;
    }

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pattern: &str, mode: &str, payload: u64, readers: u32, metric: &str, p50: f64) -> Row {
        Row {
            system: "shoal".into(),
            transport: "shm".into(),
            pattern: pattern.into(),
            mode: mode.into(),
            placement: "far".into(),
            payload_bytes: payload,
            readers,
            processes: readers.saturating_add(1),
            metric: metric.into(),
            p50: Some(p50),
            p99: Some(p50 * 1.4),
            mean: Some(p50 * 1.05),
            samples: 100,
            git_rev: "test".into(),
            cores: 2,
            floor_ns: Some([95.0, 105.0]),
            error: None,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shoal-plot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn check(paths: &[PathBuf]) -> Vec<String> {
        assert_eq!(paths.len(), 2);
        paths
            .iter()
            .map(|p| {
                let s = std::fs::read_to_string(p).expect("plot written");
                assert!(s.contains("<svg"), "{} is not SVG", p.display());
                s
            })
            .collect()
    }

    #[test]
    fn writes_both_plots_from_synthetic_rows() {
        let lat = "latency_one_way_ns";
        let thr = "throughput_msgs_per_s";
        let mut rows = vec![
            row("pingpong", "spin", 64, 1, lat, 300.0),
            row("pingpong", "spin", 4096, 1, lat, 330.0),
            row("pingpong", "park", 64, 1, lat, 310.0),
            row("pingpong", "park", 1 << 20, 1, lat, 320.0),
            row("broadcast", "park", 64, 1, thr, 7e6),
            row("broadcast", "park", 64, 3, thr, 2.3e6),
            row("broadcast", "park", 64, 7, thr, 1.2e6),
            // Left out: other metric, an error, no p50, zero payload.
            row(
                "broadcast",
                "park",
                1 << 20,
                1,
                "throughput_bytes_per_s",
                8e9,
            ),
            row("pingpong", "spin", 16 << 20, 1, lat, 500.0),
            row("pingpong", "spin", 0, 1, lat, 100.0),
            row("pingpong", "park", 16 << 20, 1, lat, f64::NAN),
        ];
        rows[8].error = Some("failed".into());
        rows[4].p50 = None;
        let dir = temp_dir("rows");
        let paths = write_plots(&rows, &dir).expect("plots");
        let svgs = check(&paths);
        assert!(paths[0].ends_with(LATENCY_SVG) && paths[1].ends_with(THROUGHPUT_SVG));
        assert!(svgs[0].contains("cache-line floor") && svgs[0].contains("shoal spin: p50"));
        assert!(svgs[1].contains("shoal park, 64 B payload"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lone_points_and_odd_values_do_not_panic() {
        let mut one = row("pingpong", "spin", 1, 1, "latency_one_way_ns", 1e9);
        one.floor_ns = None;
        one.p99 = Some(f64::INFINITY);
        let mut wide = row(
            "broadcast",
            "spin",
            8,
            u32::MAX,
            "throughput_msgs_per_s",
            1.0,
        );
        wide.system = "peer, with \"quotes\" & <angles>".into();
        let dir = temp_dir("odd");
        check(&write_plots(&[one, wide], &dir).expect("plots"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_data_yields_a_note() {
        let dir = temp_dir("empty");
        let svgs = check(&write_plots(&[], &dir).expect("plots"));
        assert!(svgs.iter().all(|s| s.contains("no data")));
        assert_eq!(ns_label(300.0), "300");
        assert_eq!(ns_label(700.0), "");
        assert_eq!(ns_label(20_000.0), "20 us");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
