//! The outcome of one traffic scenario run under several policies, as the live benchmark
//! and the simulator both report it: a markdown table and a timeline plot (SVG).

use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

use ctune_core::units::fmt_bytes;

/// One point of a run's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    /// Entries in the measured namespace.
    pub count: u64,
    /// nf_conntrack_max in force.
    pub max: u64,
}

/// What one policy did with the scenario's traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRun {
    /// `static`, `kube-proxy`, `ctune`.
    pub policy: String,
    /// Packets the kernel dropped for lack of an entry (`drop` in the measured namespace,
    /// less the clashes).
    pub kernel_drops: u64,
    /// Packets lost to unresolved insert clashes (`drop` with `insert_failed`): the same
    /// under every policy, since no limit or timeout prevents a race.
    #[serde(default)]
    pub clash_drops: u64,
    /// Flow attempts the generator saw fail (refused sends, failed connects).
    pub failed_attempts: u64,
    /// Flow attempts made.
    pub attempts: u64,
    /// Unassured entries evicted to make room.
    pub early_drops: u64,
    /// Highest count seen.
    pub peak_count: u64,
    /// max at the end.
    pub final_max: u64,
    /// Hash size at the end.
    pub final_buckets: u64,
    /// Memory the table cost at its peak (entries x (slab + extensions) + buckets x 8).
    pub memory_bytes: u64,
    /// Whether max ever grew during the run.
    pub grew: bool,
    /// Whether the count ever reached the high watermark of the max in force.
    #[serde(default)]
    pub crossed: bool,
    /// Seconds from the count crossing the high watermark to a larger max in force;
    /// None when it never crossed (growth came first) or max never grew.
    pub reaction_latency: Option<f64>,
    /// Whether timeouts were lowered during the run.
    pub timeouts_lowered: bool,
    /// Whether every lowered timeout was back at its starting value at the end.
    pub timeouts_restored: bool,
    /// The timeline.
    pub samples: Vec<Sample>,
}

/// A scenario's runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub scenario: String,
    /// What produced it: `live` or `simulated`.
    pub source: String,
    /// One run per policy, in the order run.
    pub runs: Vec<PolicyRun>,
}

/// Whether any sample's count reached `watermark` x the max then in force.
pub fn crossed(samples: &[Sample], watermark: f64) -> bool {
    samples
        .iter()
        .any(|s| s.max > 0 && s.count as f64 >= watermark * s.max as f64)
}

/// Seconds from the first sample at or above `watermark` x max to the first sample with
/// a larger max than the one in force then.
pub fn reaction_latency(samples: &[Sample], watermark: f64) -> Option<f64> {
    let cross = samples
        .iter()
        .find(|s| s.max > 0 && s.count as f64 >= watermark * s.max as f64)?;
    samples
        .iter()
        .find(|s| s.t >= cross.t && s.max > cross.max)
        .map(|s| s.t - cross.t)
}

impl ScenarioReport {
    /// The markdown table, one row per policy.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "### {} ({})\n", self.scenario, self.source);
        let _ = writeln!(
            out,
            "| policy | lost (kernel drop) | clash drops | failed attempts | evicted (early drop) | peak count | final max | final hash | memory at peak | reaction | timeouts lowered / restored |"
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for r in &self.runs {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} of {} | {} | {} | {} | {} | {} | {} | {} |",
                r.policy,
                r.kernel_drops,
                r.clash_drops,
                r.failed_attempts,
                r.attempts,
                r.early_drops,
                r.peak_count,
                r.final_max,
                r.final_buckets,
                fmt_bytes(r.memory_bytes),
                match (r.grew, r.crossed, r.reaction_latency) {
                    (_, _, Some(s)) => format!("{:.0} ms", s * 1000.0),
                    (_, false, None) if r.grew => "ahead of the watermark".to_string(),
                    (_, false, None) => "never needed".to_string(),
                    (true, true, None) => "crossed after its last growth".to_string(),
                    (false, true, None) => "did not react".to_string(),
                },
                match (r.timeouts_lowered, r.timeouts_restored) {
                    (false, _) => "no".to_string(),
                    (true, true) => "yes / yes".to_string(),
                    (true, false) => "yes / no".to_string(),
                }
            );
        }
        out
    }

    /// Draws count (solid) and max (dashed-looking thin line) per policy over time.
    pub fn plot_svg(&self, path: &Path) -> Result<(), String> {
        let t_end = self
            .runs
            .iter()
            .flat_map(|r| r.samples.last())
            .map(|s| s.t)
            .fold(1.0_f64, f64::max);
        let y_end = self
            .runs
            .iter()
            .flat_map(|r| r.samples.iter())
            .map(|s| s.count.max(s.max))
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.05;
        let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{} ({}): count and nf_conntrack_max",
                    self.scenario, self.source
                ),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..t_end, 0.0..y_end)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("entries")
            .draw()
            .map_err(|e| e.to_string())?;
        let colours = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
        for (i, r) in self.runs.iter().enumerate() {
            let c = colours[i % colours.len()];
            chart
                .draw_series(LineSeries::new(
                    r.samples.iter().map(|s| (s.t, s.count as f64)),
                    c.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(format!("{} count", r.policy))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart
                .draw_series(LineSeries::new(
                    r.samples.iter().map(|s| (s.t, s.max as f64)),
                    c.mix(0.5).stroke_width(1),
                ))
                .map_err(|e| e.to_string())?
                .label(format!("{} max", r.policy))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.mix(0.5)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, count: u64, max: u64) -> Sample {
        Sample { t, count, max }
    }

    #[test]
    fn latency_from_crossing_to_growth() {
        let samples = [
            s(0.0, 10, 100),
            s(1.0, 80, 100),
            s(1.2, 90, 100),
            s(1.3, 95, 200),
        ];
        let l = reaction_latency(&samples, 0.75).unwrap();
        assert!((l - 0.3).abs() < 1e-9);
        assert_eq!(reaction_latency(&samples[..3], 0.75), None, "never grew");
        assert_eq!(
            reaction_latency(&[s(0.0, 1, 100)], 0.75),
            None,
            "never crossed"
        );
    }

    #[test]
    fn table_and_plot() {
        let run = PolicyRun {
            policy: "static".into(),
            kernel_drops: 5,
            clash_drops: 0,
            failed_attempts: 5,
            attempts: 100,
            early_drops: 0,
            peak_count: 90,
            final_max: 100,
            final_buckets: 512,
            memory_bytes: 4096,
            grew: false,
            crossed: true,
            reaction_latency: None,
            timeouts_lowered: false,
            timeouts_restored: false,
            samples: vec![s(0.0, 0, 100), s(1.0, 90, 100)],
        };
        let r = ScenarioReport {
            scenario: "ramp".into(),
            source: "simulated".into(),
            runs: vec![run],
        };
        let md = r.markdown();
        assert!(
            md.contains(
                "| static | 5 | 0 | 5 of 100 | 0 | 90 | 100 | 512 | 4.0 KiB | did not react | no |"
            ),
            "{md}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ramp.svg");
        r.plot_svg(&p).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("static count"),
            "{}",
            &svg[..200.min(svg.len())]
        );
    }
}
