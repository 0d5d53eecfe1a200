//! The outcome of one traffic scenario run under several policies, as the live benchmark
//! and the simulator both report it: a markdown table and a timeline plot (SVG).

use serde::{Deserialize, Serialize};
use std::path::Path;

use ctune::report::SCHEMA;
use ctune_core::pressure::Level;
use ctune_core::units::fmt_bytes;

/// One point of a run's timeline. The fields after `max` came later: reports written
/// before them read back with None (not recorded), and a source leaves None what it
/// cannot know.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    /// Entries in the measured namespace (the simulator: the busiest).
    pub count: u64,
    /// nf_conntrack_max in force.
    pub max: u64,
    /// ctune's ceiling in force: that of its latest step (the simulator's `ctune` runs;
    /// None for other policies and live runs, where the agent's plan is not read).
    #[serde(default)]
    pub ceiling: Option<u64>,
    /// Packets dropped for a full table since the run started, as the run's
    /// `kernel_drops` counts them (clashes apart): cumulative.
    #[serde(default)]
    pub kernel_drops: Option<u64>,
    /// Entries evicted (`early_drop`) since the run started, as the run's `early_drops`:
    /// cumulative.
    #[serde(default)]
    pub early_drops: Option<u64>,
    /// ctune's pressure level after its latest step, in its most pressed namespace (the
    /// plan's `level`; the simulator's `ctune` runs only).
    #[serde(default)]
    pub level: Option<Level>,
    /// Whether any watched timeout is below its value at the start now (the run's
    /// `timeouts_lowered` says whether it ever was).
    #[serde(default)]
    pub timeouts_lowered: Option<bool>,
}

impl Sample {
    /// A sample with only the count and max known.
    pub fn new(t: f64, count: u64, max: u64) -> Sample {
        Sample {
            t,
            count,
            max,
            ceiling: None,
            kernel_drops: None,
            early_drops: None,
            level: None,
            timeouts_lowered: None,
        }
    }
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
    /// Long-lived sessions the run held (opened at their start).
    #[serde(default)]
    pub sessions: u64,
    /// Of those, sessions broken: their entry was gone when their next packet came.
    #[serde(default)]
    pub sessions_broken: u64,
    /// The most the table's memory exceeded what the host could spare (MemTotal less
    /// everything else and ctune's reserve), in bytes: a policy that wins by taking
    /// memory the host needs has not won (the simulator only; None live).
    #[serde(default)]
    pub over_spare_bytes: Option<u64>,
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

/// A scenario's runs: what `ctune-lab simulate --json` prints and `ctune-bench` saves,
/// after `"schema"` (ctune's [`SCHEMA`], one version for every documented `--json`; the
/// serializer writes it, so it is not a field to fill, and reading ignores it).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub scenario: String,
    /// What produced it: `live` or `simulated`.
    pub source: String,
    /// One run per policy, in the order run.
    pub runs: Vec<PolicyRun>,
}

impl Serialize for ScenarioReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'r> {
            schema: u32,
            scenario: &'r str,
            source: &'r str,
            runs: &'r [PolicyRun],
        }
        // Every field, so one added to ScenarioReport cannot be left out here.
        let ScenarioReport {
            scenario,
            source,
            runs,
        } = self;
        Json {
            schema: SCHEMA,
            scenario,
            source,
            runs,
        }
        .serialize(s)
    }
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
            "sessions broken",
        ];
        if !live {
            header.remove(2);
            header.push("over spare");
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
                format!("{} of {}", r.sessions_broken, r.sessions),
            ];
            if !live {
                row.remove(2);
                row.push(fmt_bytes(r.over_spare_bytes.unwrap_or(0)));
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

    /// Draws the timeline, one block per policy (so no policy's lines hide another's):
    /// the count with max and ctune's ceiling; drops and evictions per second; ctune's
    /// pressure level, over a band where timeouts are lowered. One legend for all, above
    /// the blocks; axes with SI suffixes (1M, 500k) and times (30s, 5m, 1h).
    pub fn plot_svg(&self, path: &Path) -> Result<(), String> {
        plot::draw(self, path)
    }
}

/// A value with an SI suffix (1.2M, 500k), as the plots label their axes.
pub fn plot_si(v: f64) -> String {
    plot::si(v)
}

/// The timeline plot: what an operator needs to judge a policy, per policy.
mod plot {
    use plotters::coord::Shift;
    use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
    use plotters::coord::types::RangedCoordf64;
    use plotters::prelude::*;
    use std::path::Path;

    use super::{PolicyRun, Sample, ScenarioReport};
    use ctune_core::pressure::Level;

    const WIDTH: u32 = 1000;
    const CAPTION: u32 = 34;
    const BLOCK_TITLE: u32 = 26;
    const TOP: u32 = 210;
    const MIDDLE: u32 = 120;
    const BOTTOM: u32 = 86;
    /// Below the bottom panel: its time axis.
    const X_AXIS: u32 = 48;
    const GAP: u32 = 14;
    /// Above each panel, so its top label clears the panel above.
    const PANEL_GAP: u32 = 10;
    const Y_AXIS: u32 = 78;
    const BLOCK: u32 = BLOCK_TITLE + TOP + MIDDLE + BOTTOM + X_AXIS + GAP;

    const COUNT: RGBColor = RGBColor(31, 119, 180);
    const MAX: RGBColor = RGBColor(0, 0, 0);
    const CEILING: RGBColor = RGBColor(110, 110, 110);
    const DROPS: RGBColor = RGBColor(214, 39, 40);
    const EVICTIONS: RGBColor = RGBColor(255, 127, 14);
    const LEVEL: RGBColor = RGBColor(118, 42, 131);
    const LOWERED: RGBColor = RGBColor(254, 226, 160);
    const GRID: RGBColor = RGBColor(225, 225, 225);

    fn err(e: impl std::fmt::Display) -> String {
        e.to_string()
    }

    /// `v` with an SI suffix and at most three significant digits: 0, 950, 1.5k, 500k,
    /// 1M, 1.05M, 2.5G.
    pub fn si(v: f64) -> String {
        let (scaled, suffix) = [(1e9, "G"), (1e6, "M"), (1e3, "k")]
            .into_iter()
            .find(|(unit, _)| v.abs() >= *unit)
            .map_or((v, ""), |(unit, s)| (v / unit, s));
        let digits = if scaled.abs() >= 100.0 {
            0
        } else if scaled.abs() >= 10.0 {
            1
        } else {
            2
        };
        let text = format!("{scaled:.digits$}");
        let text = if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text
        };
        // Rounding may reach the next unit (999.6k prints as 1000k): say 1M.
        match (text.as_str(), suffix) {
            ("1000", "k") => "1M".into(),
            ("1000", "M") => "1G".into(),
            ("-0", _) => "0".into(),
            _ => format!("{text}{suffix}"),
        }
    }

    /// Seconds as a time of the run: 45s, 2m, 1m30s, 1h, 1h30m.
    pub fn fmt_time(t: f64) -> String {
        let secs = t.round() as u64;
        let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
        match (h, m, s) {
            (0, 0, s) => format!("{s}s"),
            (0, m, 0) => format!("{m}m"),
            (0, m, s) => format!("{m}m{s}s"),
            (h, 0, 0) => format!("{h}h"),
            (h, m, 0) => format!("{h}h{m}m"),
            (h, m, s) => format!("{h}h{m}m{s}s"),
        }
    }

    /// Time ticks at a round step, at most about ten.
    pub fn time_ticks(t_end: f64) -> Vec<f64> {
        const STEPS: [f64; 16] = [
            1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
            7200.0, 21600.0, 86400.0,
        ];
        let step = STEPS
            .into_iter()
            .find(|s| t_end / s <= 10.0)
            .unwrap_or(86400.0);
        (0..)
            .map(|i| i as f64 * step)
            .take_while(|t| *t <= t_end + 1e-9)
            .collect()
    }

    /// Value ticks: 0 and round multiples up to `top`, at most about five.
    fn value_ticks(top: f64) -> Vec<f64> {
        let raw = top / 5.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .into_iter()
            .map(|m| m * mag)
            .find(|s| top / s <= 5.0)
            .unwrap_or(10.0 * mag);
        (0..)
            .map(|i| i as f64 * step)
            .take_while(|v| *v <= top + 1e-9)
            .collect()
    }

    /// A value held until the next sample, drawn as steps; only the changes are kept.
    fn steps(points: impl IntoIterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64)> = Vec::new();
        let mut last: Option<(f64, f64)> = None;
        for (t, v) in points {
            match last {
                Some((_, prev)) if prev == v => {}
                Some((_, prev)) => {
                    out.push((t, prev));
                    out.push((t, v));
                }
                None => out.push((t, v)),
            }
            last = Some((t, v));
        }
        if let (Some((t, v)), Some(end)) = (last, out.last())
            && end.0 < t
        {
            out.push((t, v));
        }
        out
    }

    /// At most two points (the lowest and the highest, in time order) per 1/1000 of the
    /// run: the line looks the same at the plot's width and the file stays small.
    fn envelope(points: &[(f64, f64)], t_end: f64) -> Vec<(f64, f64)> {
        let width = t_end / 1000.0;
        let mut out = Vec::new();
        let mut i = 0;
        while i < points.len() {
            let bin = (points[i].0 / width).floor();
            let mut j = i;
            let (mut lo, mut hi) = (points[i], points[i]);
            while j < points.len() && (points[j].0 / width).floor() == bin {
                if points[j].1 < lo.1 {
                    lo = points[j];
                }
                if points[j].1 > hi.1 {
                    hi = points[j];
                }
                j += 1;
            }
            if lo.0 <= hi.0 {
                out.push(lo);
                if hi != lo {
                    out.push(hi);
                }
            } else {
                out.push(hi);
                out.push(lo);
            }
            i = j;
        }
        out
    }

    /// A cumulative count as a rate per second over windows of at least `window` seconds,
    /// drawn as steps; None when the samples do not carry it.
    fn rate(
        samples: &[Sample],
        window: f64,
        f: fn(&Sample) -> Option<u64>,
    ) -> Option<Vec<(f64, f64)>> {
        let mut points = Vec::new();
        let mut from: Option<(f64, u64)> = None;
        for s in samples {
            let v = f(s)?;
            match from {
                None => from = Some((s.t, v)),
                Some((t0, v0)) if s.t - t0 >= window => {
                    let r = v.saturating_sub(v0) as f64 / (s.t - t0);
                    points.push((t0, r));
                    points.push((s.t, r));
                    from = Some((s.t, v));
                }
                Some(_) => {}
            }
        }
        Some(steps(points))
    }

    /// The y range of a panel: from 0 to a little above the highest value (1 when all
    /// are 0).
    fn top_of(values: impl Iterator<Item = f64>) -> f64 {
        let top = values.fold(0.0_f64, f64::max);
        if top > 0.0 { top * 1.08 } else { 1.0 }
    }

    /// One line of what the run lost and reached, above its panels.
    fn summary(r: &PolicyRun) -> String {
        let lowered = match (r.timeouts_lowered, r.timeouts_restored) {
            (false, _) => "timeouts untouched",
            (true, true) => "timeouts lowered, restored",
            (true, false) => "timeouts lowered, not restored",
        };
        format!(
            "{}: lost {} of {} flows, {} evicted, {} of {} sessions broken, peak count {}, final max {}; {lowered}",
            r.policy,
            si(r.failed_attempts as f64),
            si(r.attempts as f64),
            si(r.early_drops as f64),
            si(r.sessions_broken as f64),
            si(r.sessions as f64),
            si(r.peak_count as f64),
            si(r.final_max as f64),
        )
    }

    /// The legend's entries: label, style, dashed.
    fn legend_items() -> [(&'static str, ShapeStyle, bool); 7] {
        [
            ("count", COUNT.stroke_width(4), false),
            ("nf_conntrack_max", MAX.stroke_width(1), false),
            ("ctune's ceiling", CEILING.stroke_width(2), true),
            ("drops/s", DROPS.stroke_width(2), false),
            ("evictions/s", EVICTIONS.stroke_width(2), false),
            ("ctune's level", LEVEL.stroke_width(2), false),
            ("timeouts lowered", LOWERED.filled(), false),
        ]
    }
    const LEGEND_ROW: u32 = 24;

    fn legend_font() -> TextStyle<'static> {
        ("sans-serif", 16).into()
    }

    /// Legend entries per row, in columns of equal width.
    const LEGEND_COLUMNS: usize = 4;

    /// The legend: every line and band, once, above the blocks, in a grid.
    fn legend(area: &DrawingArea<SVGBackend, Shift>) -> Result<(), String> {
        let column = (WIDTH - Y_AXIS - 20) as usize / LEGEND_COLUMNS;
        for (i, (label, style, dashed)) in legend_items().into_iter().enumerate() {
            let x = (Y_AXIS as usize + column * (i % LEGEND_COLUMNS)) as i32;
            let y = 12 + (LEGEND_ROW as usize * (i / LEGEND_COLUMNS)) as i32;
            if style.filled {
                area.draw(&Rectangle::new([(x, y - 7), (x + 24, y + 7)], style))
                    .map_err(err)?;
            } else if dashed {
                for dx in [0, 10, 20] {
                    area.draw(&PathElement::new(vec![(x + dx, y), (x + dx + 5, y)], style))
                        .map_err(err)?;
                }
            } else {
                area.draw(&PathElement::new(vec![(x, y), (x + 24, y)], style))
                    .map_err(err)?;
            }
            area.draw(&Text::new(label, (x + 30, y - 8), legend_font()))
                .map_err(err)?;
        }
        Ok(())
    }

    pub fn draw(report: &ScenarioReport, path: &Path) -> Result<(), String> {
        let t_end = report
            .runs
            .iter()
            .flat_map(|r| r.samples.last())
            .map(|s| s.t)
            .fold(1.0_f64, f64::max);
        let blocks = report.runs.len().max(1) as u32;
        let rows = legend_items().len().div_ceil(LEGEND_COLUMNS) as u32;
        let legend_height = LEGEND_ROW * rows + 6;
        let height = CAPTION + legend_height + blocks * BLOCK;
        let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (caption, rest) = root.split_vertically(CAPTION);
        caption
            .draw(&Text::new(
                format!(
                    "{} ({}): each policy's table over the same traffic",
                    report.scenario, report.source
                ),
                (Y_AXIS as i32, 8),
                ("sans-serif", 22).into_font(),
            ))
            .map_err(err)?;
        let (legend_area, mut rest) = rest.split_vertically(legend_height);
        legend(&legend_area)?;
        let ticks = time_ticks(t_end);
        for run in &report.runs {
            let (block, below) = rest.split_vertically(BLOCK);
            rest = below;
            draw_block(&block, run, t_end, &ticks)?;
        }
        root.present().map_err(err)
    }

    /// A linear axis with the ticks given (plotters' own with_key_points cannot be
    /// labelled with a formatter on f64).
    struct Ticked {
        range: std::ops::Range<f64>,
        ticks: Vec<f64>,
    }

    impl Ranged for Ticked {
        type FormatOption = DefaultFormatting;
        type ValueType = f64;

        fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
            RangedCoordf64::from(self.range.clone()).map(v, limit)
        }

        fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
            if hint.weight().allow_light_points() {
                Vec::new()
            } else {
                self.ticks.clone()
            }
        }

        fn range(&self) -> std::ops::Range<f64> {
            self.range.clone()
        }
    }

    /// A panel: the plot area with its value axis, the time grid, and the time axis
    /// only under the bottom panel.
    fn panel<'a, 'b>(
        area: &'a DrawingArea<SVGBackend<'b>, Shift>,
        t_end: f64,
        ticks: &[f64],
        y: (std::ops::Range<f64>, Vec<f64>),
        y_desc: &str,
        y_fmt: &dyn Fn(&f64) -> String,
        time_axis: bool,
    ) -> Result<ChartContext<'a, SVGBackend<'b>, Cartesian2d<Ticked, Ticked>>, String> {
        let (y_range, y_ticks) = y;
        let mut chart = ChartBuilder::on(area)
            .margin_right(32)
            .margin_top(PANEL_GAP)
            .x_label_area_size(if time_axis { X_AXIS } else { 0 })
            .y_label_area_size(Y_AXIS)
            .build_cartesian_2d(
                Ticked {
                    range: 0.0..t_end,
                    ticks: ticks.to_vec(),
                },
                Ticked {
                    range: y_range,
                    ticks: y_ticks,
                },
            )
            .map_err(err)?;
        let mut mesh = chart.configure_mesh();
        mesh.bold_line_style(GRID)
            .light_line_style(TRANSPARENT)
            .axis_style(RGBColor(90, 90, 90))
            .y_desc(y_desc)
            .y_label_formatter(y_fmt)
            .x_label_formatter(&|t| fmt_time(*t))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 15));
        if time_axis {
            mesh.x_desc("time since the run started");
        }
        mesh.draw().map_err(err)?;
        Ok(chart)
    }

    fn draw_block(
        block: &DrawingArea<SVGBackend, Shift>,
        run: &PolicyRun,
        t_end: f64,
        ticks: &[f64],
    ) -> Result<(), String> {
        let (title, rest) = block.split_vertically(BLOCK_TITLE);
        title
            .draw(&Text::new(
                summary(run),
                (Y_AXIS as i32, 6),
                ("sans-serif", 16, FontStyle::Bold).into_font(),
            ))
            .map_err(err)?;
        let (top_area, rest) = rest.split_vertically(TOP);
        let (middle_area, rest) = rest.split_vertically(MIDDLE);
        let (bottom_area, _) = rest.split_vertically(BOTTOM + X_AXIS);
        count_panel(&top_area, run, t_end, ticks)?;
        losses_panel(&middle_area, run, t_end, ticks)?;
        level_panel(&bottom_area, run, t_end, ticks)
    }

    /// Top: the count against max and the ceiling.
    fn count_panel(
        top_area: &DrawingArea<SVGBackend, Shift>,
        run: &PolicyRun,
        t_end: f64,
        ticks: &[f64],
    ) -> Result<(), String> {
        let s = &run.samples;
        let count: Vec<(f64, f64)> = s.iter().map(|s| (s.t, s.count as f64)).collect();
        let max = steps(s.iter().map(|s| (s.t, s.max as f64)));
        let ceiling = steps(s.iter().filter_map(|s| s.ceiling.map(|c| (s.t, c as f64))));
        let top = top_of(count.iter().chain(&max).chain(&ceiling).map(|(_, v)| *v));
        let mut chart = panel(
            top_area,
            t_end,
            ticks,
            (0.0..top, value_ticks(top)),
            "entries",
            &|v| si(*v),
            false,
        )?;
        // The count wide and max narrow over it: a full table shows both.
        chart
            .draw_series(LineSeries::new(
                envelope(&count, t_end),
                COUNT.stroke_width(4),
            ))
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(max.iter().copied(), MAX.stroke_width(1)))
            .map_err(err)?;
        if !ceiling.is_empty() {
            chart
                .draw_series(DashedLineSeries::new(
                    ceiling.iter().copied(),
                    8,
                    5,
                    CEILING.stroke_width(2),
                ))
                .map_err(err)?;
        }

        Ok(())
    }

    /// Middle: drops and evictions per second.
    fn losses_panel(
        middle_area: &DrawingArea<SVGBackend, Shift>,
        run: &PolicyRun,
        t_end: f64,
        ticks: &[f64],
    ) -> Result<(), String> {
        let s = &run.samples;
        let window = (t_end / 300.0).max(1.0);
        let drops = rate(s, window, |s| s.kernel_drops);
        let evictions = rate(s, window, |s| s.early_drops);
        let top = top_of(drops.iter().chain(&evictions).flatten().map(|(_, v)| *v));
        let quiet = drops
            .iter()
            .chain(&evictions)
            .flatten()
            .all(|(_, v)| *v == 0.0);
        let mut chart = panel(
            middle_area,
            t_end,
            ticks,
            (0.0..top, if quiet { vec![0.0] } else { value_ticks(top) }),
            "per second",
            &|v| si(*v),
            false,
        )?;
        for (series, colour) in [(&evictions, EVICTIONS), (&drops, DROPS)] {
            if let Some(points) = series {
                chart
                    .draw_series(LineSeries::new(
                        points.iter().copied(),
                        colour.stroke_width(2),
                    ))
                    .map_err(err)?;
            }
        }
        let note = match (&drops, quiet) {
            (None, _) => Some("drops and evictions not recorded in this report"),
            (Some(_), true) => Some("nothing dropped or evicted"),
            _ => None,
        };
        if let Some(note) = note {
            chart
                .plotting_area()
                .draw(&Text::new(
                    note,
                    (t_end * 0.02, top * 0.6),
                    ("sans-serif", 16),
                ))
                .map_err(err)?;
        }

        Ok(())
    }

    /// Bottom: the level, over a band where timeouts are lowered.
    fn level_panel(
        bottom_area: &DrawingArea<SVGBackend, Shift>,
        run: &PolicyRun,
        t_end: f64,
        ticks: &[f64],
    ) -> Result<(), String> {
        let s = &run.samples;
        let mut chart = panel(
            bottom_area,
            t_end,
            ticks,
            (-0.3..2.3, vec![0.0, 1.0, 2.0]),
            "level",
            &|v| match v.round() as i64 {
                0 => "normal".into(),
                1 => "elevated".into(),
                2 => "critical".into(),
                _ => String::new(),
            },
            true,
        )?;
        let mut bands = Vec::new();
        let mut start: Option<f64> = None;
        for (i, x) in s.iter().enumerate() {
            let on = x.timeouts_lowered == Some(true);
            match (on, start) {
                (true, None) => start = Some(x.t),
                (false, Some(t0)) => {
                    bands.push((t0, x.t));
                    start = None;
                }
                _ => {}
            }
            if i + 1 == s.len()
                && let Some(t0) = start
            {
                bands.push((t0, x.t));
            }
        }
        chart
            .draw_series(
                bands
                    .iter()
                    .map(|(a, b)| Rectangle::new([(*a, -0.3), (*b, 2.3)], LOWERED.filled())),
            )
            .map_err(err)?;
        let level = steps(s.iter().filter_map(|s| {
            s.level.map(|l| {
                let y = match l {
                    Level::Normal => 0.0,
                    Level::Elevated => 1.0,
                    Level::Critical => 2.0,
                };
                (s.t, y)
            })
        }));
        if level.is_empty() {
            let note = if run.policy == "ctune" {
                "ctune's level not recorded in this report (live runs do not read its plan)"
            } else {
                "no pressure levels: only ctune has them"
            };
            chart
                .plotting_area()
                .draw(&Text::new(note, (t_end * 0.02, 1.5), ("sans-serif", 16)))
                .map_err(err)?;
        } else {
            chart
                .draw_series(LineSeries::new(level, LEVEL.stroke_width(2)))
                .map_err(err)?;
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn si_suffixes() {
            let cases = [
                (0.0, "0"),
                (950.0, "950"),
                (1500.0, "1.5k"),
                (65536.0, "65.5k"),
                (500_000.0, "500k"),
                (999_999.0, "1M"),
                (1_000_000.0, "1M"),
                (1_048_576.0, "1.05M"),
                (2.5e9, "2.5G"),
                (0.5, "0.5"),
            ];
            for (v, want) in cases {
                assert_eq!(si(v), want, "{v}");
            }
        }

        #[test]
        fn times_and_ticks() {
            assert_eq!(fmt_time(45.0), "45s");
            assert_eq!(fmt_time(120.0), "2m");
            assert_eq!(fmt_time(90.0), "1m30s");
            assert_eq!(fmt_time(3600.0), "1h");
            assert_eq!(time_ticks(600.0).len(), 11);
            assert_eq!(time_ticks(3600.0)[1], 600.0);
            assert_eq!(value_ticks(1.08e6), vec![0.0, 2.5e5, 5e5, 7.5e5, 1e6]);
        }

        #[test]
        fn steps_keep_changes_only() {
            let s = steps([(0.0, 1.0), (1.0, 1.0), (2.0, 3.0), (3.0, 3.0)]);
            assert_eq!(s, vec![(0.0, 1.0), (2.0, 1.0), (2.0, 3.0), (3.0, 3.0)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, count: u64, max: u64) -> Sample {
        Sample::new(t, count, max)
    }

    #[test]
    fn schema_first_and_samples_of_older_reports_read() {
        let r = ScenarioReport {
            scenario: "x".into(),
            source: "simulated".into(),
            runs: Vec::new(),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.starts_with(&format!("{{\"schema\":{SCHEMA},")),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<ScenarioReport>(&json).unwrap(), r);
        let old: Sample = serde_json::from_str(r#"{"t":1.5,"count":2,"max":3}"#).unwrap();
        assert_eq!(old, s(1.5, 2, 3));
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
            sessions: 10,
            sessions_broken: 3,
            over_spare_bytes: Some(0),
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
                "| static | 5 of 100 | 0 | 0 | 3 of 10 | 0 B | 90 | 100 | 512 | 4.0 KiB | did not react | no |"
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
            svg.starts_with("<svg")
                && svg.contains("static: lost 5 of 100 flows")
                && svg.contains("no pressure levels"),
            "{}",
            &svg[..200.min(svg.len())]
        );
        // Every line and band in the legend, one row above the blocks.
        for label in [
            "count",
            "nf_conntrack_max",
            "ctune&apos;s ceiling",
            "drops/s",
            "evictions/s",
            "ctune&apos;s level",
            "timeouts lowered",
        ] {
            assert!(
                svg.contains(&format!("\n{label}\n")),
                "{label} not in the legend"
            );
        }
    }
}
