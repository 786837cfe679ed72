//! Samples, percentiles and the result row format (`BENCH.md`).

use serde::{Deserialize, Serialize};

/// What one harness invocation reports for one cell: raw samples, so rounds
/// measured interleaved with a peer can be merged before taking percentiles.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Measurement {
    /// shoal | floor | iceoryx2 | crossbeam | ...
    pub system: String,
    /// shm | in-process | none
    pub transport: String,
    /// pingpong | broadcast | workqueue | ring | stream | memcpy | futex | idle | wake
    /// (see the crate documentation for the `-unpinned` and `stream-` variants)
    pub pattern: String,
    /// spin | park | waitset | none
    pub mode: String,
    /// Payload bytes per message.
    pub payload_bytes: u64,
    /// Consumers per message stream.
    pub readers: u32,
    /// OS processes taking part.
    pub processes: u32,
    /// latency_one_way_ns | throughput_msgs_per_s | throughput_bytes_per_s |
    /// idle_cpu_percent | idle_wakeups_per_s | wake_latency_ns | ...
    pub metric: String,
    /// The samples (latencies in ns, or one throughput figure per run).
    #[serde(default)]
    pub samples: Vec<f64>,
    /// Set when the cell failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Measurement {
    /// A measurement of `metric` with no samples yet.
    pub fn new(system: &str, pattern: &str, mode: &str, metric: &str) -> Self {
        Measurement {
            system: system.into(),
            transport: if system == "floor" {
                "none".into()
            } else {
                "shm".into()
            },
            pattern: pattern.into(),
            mode: mode.into(),
            payload_bytes: 0,
            readers: 1,
            processes: 2,
            metric: metric.into(),
            samples: Vec::new(),
            error: None,
        }
    }
    /// Sets the payload size.
    pub fn payload(mut self, b: u64) -> Self {
        self.payload_bytes = b;
        self
    }
    /// Sets readers per stream.
    pub fn readers(mut self, r: u32) -> Self {
        self.readers = r;
        self
    }
    /// Sets the process count.
    pub fn processes(mut self, p: u32) -> Self {
        self.processes = p;
        self
    }
    /// Sets the transport.
    pub fn transport(mut self, t: &str) -> Self {
        self.transport = t.into();
        self
    }
    /// The identity of the cell: everything but samples and error.
    pub fn key(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}|{}|{}",
            self.system,
            self.transport,
            self.pattern,
            self.mode,
            self.payload_bytes,
            self.readers,
            self.processes,
            self.metric
        )
    }
    /// Prints this measurement as one JSON line on stdout (the harness protocol).
    pub fn emit(&self) {
        println!(
            "{}",
            serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
    }
}

/// One row of `results.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// See [`Measurement::system`].
    pub system: String,
    /// See [`Measurement::transport`].
    pub transport: String,
    /// See [`Measurement::pattern`].
    pub pattern: String,
    /// See [`Measurement::mode`].
    pub mode: String,
    /// near | far | mixed, from the floor measured around the cell.
    pub placement: String,
    /// See [`Measurement::payload_bytes`].
    pub payload_bytes: u64,
    /// See [`Measurement::readers`].
    pub readers: u32,
    /// See [`Measurement::processes`].
    pub processes: u32,
    /// See [`Measurement::metric`].
    pub metric: String,
    /// Median (of samples, or of repeated runs for throughput).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50: Option<f64>,
    /// 99th percentile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
    /// Mean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// Number of samples.
    pub samples: u64,
    /// Short git revision of the tree measured.
    pub git_rev: String,
    /// Cores of the machine.
    pub cores: u32,
    /// The floor one-way latency (ns) measured right before and after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_ns: Option<[f64; 2]>,
    /// Why the cell failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Percentile `p` (0..=100) of sorted `v` (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50, p99 and mean of `samples`.
pub fn summarize(samples: &[f64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    (percentile(&v, 50.0), percentile(&v, 99.0), mean)
}

/// A cache line one-way below this (ns) is the near vCPU placement.
pub const NEAR_FAR_SPLIT_NS: f64 = 90.0;

/// A cache line one-way below this (ns): the two vCPUs run on the two
/// hardware threads of one core (SMT siblings sharing L1 and L2; about
/// 21-27 ns on this VM, against 42-53 ns near and 150-210 ns far).
pub const SIBLING_SPLIT_NS: f64 = 35.0;

/// The placement mode one floor median says.
fn mode(ns: f64) -> &'static str {
    if ns < SIBLING_SPLIT_NS {
        "sibling"
    } else if ns < NEAR_FAR_SPLIT_NS {
        "near"
    } else {
        "far"
    }
}

/// Labels a cell from the floor medians measured before and after it:
/// `sibling`, `near` or `far` when both say the same, else `mixed`.
pub fn placement(before: f64, after: f64) -> &'static str {
    let (a, b) = (mode(before), mode(after));
    if a == b {
        a
    } else {
        "mixed"
    }
}

impl Row {
    /// Builds a row from merged samples.
    pub fn from_measurement(
        m: &Measurement,
        floor: Option<[f64; 2]>,
        git_rev: &str,
        cores: u32,
    ) -> Row {
        let (p50, p99, mean) = if m.samples.is_empty() {
            (None, None, None)
        } else {
            let (a, b, c) = summarize(&m.samples);
            (Some(a), Some(b), Some(c))
        };
        Row {
            system: m.system.clone(),
            transport: m.transport.clone(),
            pattern: m.pattern.clone(),
            mode: m.mode.clone(),
            placement: floor
                .map(|[a, b]| placement(a, b).to_string())
                .unwrap_or_else(|| "mixed".into()),
            payload_bytes: m.payload_bytes,
            readers: m.readers,
            processes: m.processes,
            metric: m.metric.clone(),
            p50,
            p99,
            mean,
            samples: m.samples.len() as u64,
            git_rev: git_rev.into(),
            cores,
            floor_ns: floor,
            error: m
                .error
                .clone()
                .or_else(|| m.samples.is_empty().then(|| "no samples".to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn placement_needs_both_floors_to_agree() {
        assert_eq!(placement(40.0, 45.0), "near");
        assert_eq!(placement(150.0, 140.0), "far");
        assert_eq!(placement(21.0, 25.0), "sibling");
        assert_eq!(placement(40.0, 150.0), "mixed");
        assert_eq!(placement(21.0, 45.0), "mixed");
    }

    #[test]
    fn measurements_round_trip_as_json_lines() {
        let mut m = Measurement::new("shoal", "pingpong", "spin", "latency_one_way_ns").payload(64);
        m.samples = vec![1.0, 2.0];
        let s = serde_json::to_string(&m).unwrap();
        let back: Measurement = serde_json::from_str(&s).unwrap();
        assert_eq!(back, m);
    }
}
