//! The outcome of one traffic scenario run under several policies, as the live benchmark
//! and the simulator both report it: a markdown table and a timeline plot (SVG).

use plotters::prelude::*;
use serde::{Deserialize, Serialize};
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
    /// Milliseconds from the count crossing the high watermark to a larger max in
    /// force; None only with a `reaction_note`.
    pub reaction_ms: Option<f64>,
    /// Why there is no latency (growth came first, never needed, no reaction); None
    /// when there is one.
    pub reaction_note: Option<String>,
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
fn reaction_latency(samples: &[Sample], watermark: f64) -> Option<f64> {
    let cross = samples
        .iter()
        .find(|s| s.max > 0 && s.count as f64 >= watermark * s.max as f64)?;
    samples
        .iter()
        .find(|s| s.t >= cross.t && s.max > cross.max)
        .map(|s| s.t - cross.t)
}

/// How a policy reacted once the count crossed the high watermark: a latency in ms, or
/// why there is none. One definition for the simulator and the live benchmark; `grew`
/// counts growth during the run only (kube-proxy's setting before traffic is its start).
pub fn reaction(samples: &[Sample], watermark: f64, grew: bool) -> (Option<f64>, Option<String>) {
    if let Some(s) = reaction_latency(samples, watermark) {
        return (Some((s * 1000.0).round()), None);
    }
    let note = match (grew, crossed(samples, watermark)) {
        (true, false) => "ahead of the watermark: grew before the count reached it",
        (false, false) => "never needed: the count stayed below the watermark",
        (true, true) => "crossed after its last growth: at its ceiling or cap",
        (false, true) => "did not react: max never grew",
    };
    (None, Some(note.to_string()))
}

/// A Markdown table: the first row is the header; numbers align right.
fn markdown_table(title: &str, rows: &[Vec<String>]) -> String {
    let mut out = format!("### {title}\n\n");
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    out += &line(&rows[0]);
    let align: Vec<String> = (0..rows[0].len())
        .map(|i| {
            if i == 0 || i + 1 == rows[0].len() {
                "---"
            } else {
                "---:"
            }
            .to_string()
        })
        .collect();
    out += &format!("|{}|\n", align.join("|"));
    for r in &rows[1..] {
        out += &line(r);
    }
    out
}

/// Columns padded to their widest cell; numbers align right.
fn text_table(title: &str, rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = format!("{title}\n");
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 || i + 1 == r.len() {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}

/// How to print a report's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Columns aligned with spaces, for a terminal.
    Text,
    /// A Markdown table, for docs.
    Markdown,
}

impl ScenarioReport {
    /// The markdown table, one row per policy.
    pub fn markdown(&self) -> String {
        self.table(Format::Markdown)
    }

    /// The table, one row per policy. Live reports have a kernel drops column: there a
    /// refused flow and a dropped packet are counted apart. In the model each lost flow is
    /// one kernel drop, so the column would repeat the lost one.
    pub fn table(&self, format: Format) -> String {
        let live = self.source == "live";
        let mut header = vec![
            "policy",
            "lost flows",
            "kernel drops",
            "clash drops",
            "evicted",
        ];
        if !live {
            header.remove(2);
        }
        header.extend([
            "peak count",
            "final max",
            "final hash",
            "memory at peak",
            "reaction",
            "timeouts lowered / restored",
        ]);
        let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
        for r in &self.runs {
            let mut row = vec![
                r.policy.clone(),
                format!("{} of {}", r.failed_attempts, r.attempts),
                r.kernel_drops.to_string(),
                r.clash_drops.to_string(),
                r.early_drops.to_string(),
            ];
            if !live {
                row.remove(2);
            }
            row.extend([
                r.peak_count.to_string(),
                r.final_max.to_string(),
                r.final_buckets.to_string(),
                fmt_bytes(r.memory_bytes),
                match (r.reaction_ms, &r.reaction_note) {
                    (Some(ms), _) => format!("{ms:.0} ms"),
                    (None, Some(note)) => note.split(':').next().unwrap_or(note).to_string(),
                    (None, None) => "-".to_string(),
                },
                match (r.timeouts_lowered, r.timeouts_restored) {
                    (false, _) => "no".to_string(),
                    (true, true) => "yes / yes".to_string(),
                    (true, false) => "yes / no".to_string(),
                },
            ]);
            rows.push(row);
        }
        let title = format!("{} ({})", self.scenario, self.source);
        match format {
            Format::Markdown => markdown_table(&title, &rows),
            Format::Text => text_table(&title, &rows),
        }
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
        assert_eq!(reaction(&samples, 0.75, true), (Some(300.0), None));
        let (ms, note) = reaction(&samples[..3], 0.75, false);
        assert!(ms.is_none() && note.is_some_and(|n| n.starts_with("did not react")));
        let (ms, note) = reaction(&[s(0.0, 1, 100)], 0.75, false);
        assert!(ms.is_none() && note.is_some_and(|n| n.starts_with("never needed")));
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
            reaction_ms: None,
            reaction_note: Some("did not react: max never grew".into()),
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
                "| static | 5 of 100 | 0 | 0 | 90 | 100 | 512 | 4.0 KiB | did not react | no |"
            ),
            "{md}"
        );
        let text = r.table(Format::Text);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ramp (simulated)");
        assert!(
            lines[1].starts_with("policy  lost flows  clash drops"),
            "{text}"
        );
        assert!(lines[2].starts_with("static    5 of 100"), "{text}");
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
