//! What one control step of the agent costs, in process: `cargo bench --bench agent_cost`.
//!
//! No benchmark framework: each case is warmed up, then timed `SAMPLES` times with
//! `std::time::Instant`; a sample is one call, or the mean of a batch of calls when one
//! call is too short to time alone (the batch is printed). The table gives the median,
//! the 90th percentile and the fastest sample.
//!
//! What is measured:
//! - `Engine::step` (observe, decide, apply, persist, save the state) against a copy of
//!   `tests/fixtures/kernel-6.18` in a temporary directory, with every root pointing at
//!   the copy and `namespaces: {mode: initial}`: the real kernel is never written. The
//!   fixture is idle (count 8000 of max 262144), so after the first step the plan is
//!   empty: this is the tick "when nothing changes". The harness checks that it is
//!   empty and that no persisted file was written, and counts the steps that rewrote
//!   the state file (each one is a write with two fsyncs); the same step with the tree
//!   on tmpfs (/dev/shm), where fsync returns at once, shows the step without the disk;
//!   `state::save` is also timed alone, with and without a change.
//! - `observe::observe` alone and `policy::decide` alone, on the fixture copy, and also
//!   `observe` + `decide` against the live `/proc` and `/sys` (read-only), with what most
//!   of `observe` is: reading every timeout key with open/read/close, beside the same
//!   reads with pread from descriptors kept open.
//! - The count probe: `/proc/sys/net/netfilter/nf_conntrack_count` of the live kernel
//!   opened once and read with pread(2), as the agent's `Probe` does, alone and with the
//!   parse and the `probe::step_now` rule; and for comparison the open/read/close that
//!   `observe` does per file. Reading is safe; nothing is written.
//! - Cost against table size: the fixture's count set to 1k, 100k and 10M (max = 4 x
//!   count, hash = max / 4, so every size sits at 25 % and the plan stays empty; MemTotal
//!   1 TiB and `ceiling.max_cap` INT_MAX so that 40M is under the ceiling and every size
//!   gets a plan of the same shape), for `decide` and for `Engine::step`, the sizes of a
//!   group sampled round-robin; and `decide` with the count varied under the fixture's max.
//!
//! An argument filters the cases by substring (`cargo bench --bench agent_cost -- count`
//! runs only the count probe; `benches/cost.sh` uses that inside a filled namespace).

use std::fs::{self, File};
use std::hint::black_box;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ctune::act::state;
use ctune::run::engine::Engine;
use ctune::sense::observe;
use ctune::sense::roots::Roots;
use ctune_core::config::{self, Config};
use ctune_core::model::Observation;
use ctune_core::policy::{self, PolicyState};
use ctune_core::probe::{self, Reading};
use ctune_core::tunables;

const SAMPLES: usize = 1000;
const LIVE_COUNT: &str = "/proc/sys/net/netfilter/nf_conntrack_count";
const INITIAL: &str = "namespaces:\n  mode: initial\n";
/// MemTotal for the size comparison: 1 TiB.
const BIG_MEM: u64 = 1 << 40;

/// One timed case.
struct Stats {
    name: String,
    batch: usize,
    median: Duration,
    p90: Duration,
    min: Duration,
}

/// One case to time: `batch` calls of `f` make one sample.
struct Case<'a> {
    name: String,
    batch: usize,
    f: Box<dyn FnMut() + 'a>,
}

impl<'a> Case<'a> {
    fn new(name: impl Into<String>, batch: usize, f: impl FnMut() + 'a) -> Case<'a> {
        Case {
            name: name.into(),
            batch,
            f: Box::new(f),
        }
    }
}

/// Warms each case up `warmup` times, then takes `SAMPLES` samples of each, round-robin:
/// cases compared with each other see the same machine noise.
fn measure_set(warmup: usize, mut cases: Vec<Case<'_>>) -> Vec<Stats> {
    for c in &mut cases {
        for _ in 0..warmup {
            (c.f)();
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(SAMPLES); cases.len()];
    for _ in 0..SAMPLES {
        for (c, out) in cases.iter_mut().zip(&mut samples) {
            let t = Instant::now();
            for _ in 0..c.batch {
                (c.f)();
            }
            out.push(t.elapsed() / c.batch as u32);
        }
    }
    cases
        .iter()
        .zip(samples)
        .map(|(c, mut per_call)| {
            per_call.sort_unstable();
            let at = |q: f64| per_call[((per_call.len() - 1) as f64 * q).round() as usize];
            Stats {
                name: c.name.clone(),
                batch: c.batch,
                median: at(0.5),
                p90: at(0.9),
                min: per_call[0],
            }
        })
        .collect()
}

/// Times one case alone.
fn measure(name: &str, warmup: usize, batch: usize, f: impl FnMut()) -> Stats {
    measure_set(warmup, vec![Case::new(name, batch, f)])
        .pop()
        .expect("one case")
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

/// Prints one markdown table.
fn table(title: &str, rows: &[Stats]) {
    if rows.is_empty() {
        return;
    }
    println!("\n### {title}\n");
    println!("| case | batch | median | p90 | min |");
    println!("|---|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.name,
            r.batch,
            fmt(r.median),
            fmt(r.p90),
            fmt(r.min)
        );
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).expect("create dir");
    for entry in fs::read_dir(src).expect("read fixture dir") {
        let entry = entry.expect("fixture entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            fs::copy(entry.path(), &to).expect("copy fixture file");
        }
    }
}

/// A copy of the 6.18 fixture tree with all five roots inside one temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::new_in(&std::env::temp_dir())
    }

    fn new_in(parent: &Path) -> Fixture {
        let dir = tempfile::tempdir_in(parent).expect("tempdir");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/kernel-6.18");
        copy_dir(&src.join("proc"), &dir.path().join("proc"));
        copy_dir(&src.join("sys"), &dir.path().join("sys"));
        Fixture { dir }
    }

    fn roots(&self) -> Roots {
        let r = self.dir.path();
        Roots::all_under(r)
    }

    fn set(&self, key: &str, value: u64) {
        let p = self.roots().sysctl(key);
        fs::write(p, format!("{value}\n")).expect("write fixture sysctl");
    }

    fn set_hashsize(&self, value: u64) {
        fs::write(self.roots().hashsize_param(), format!("{value}\n")).expect("write hashsize");
    }

    /// Count `n`, max 4n, hash max / 4: 25 % utilisation at every size.
    /// With a 1 TiB MemTotal, 90 % of it available (the budget follows what the host
    /// can spare), so that with `big_config` every size is under the ceiling and the
    /// plans of all sizes have the same shape.
    fn size(&self, n: u64) {
        self.set("nf_conntrack_count", n);
        self.set("nf_conntrack_max", 4 * n);
        self.set("nf_conntrack_buckets", n);
        self.set_hashsize(n);
        let meminfo = self.roots().meminfo();
        let text = fs::read_to_string(&meminfo).expect("read meminfo");
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("MemTotal:") {
                    format!("MemTotal:       {} kB\n", BIG_MEM / 1024)
                } else if l.starts_with("MemAvailable:") {
                    format!("MemAvailable:   {} kB\n", BIG_MEM / 1024 * 9 / 10)
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        fs::write(meminfo, text).expect("write meminfo");
    }
}

fn initial_config() -> Config {
    config::parse(INITIAL, Path::new("<bench>")).expect("config parses")
}

/// `mode: initial` with max_cap at the kernel's limit (INT_MAX): with 1 TiB of memory
/// the ceiling is ~142M, above every max of the size comparison.
fn big_config() -> Config {
    let yaml = format!("{INITIAL}ceiling:\n  max_cap: 2147483647\n");
    config::parse(&yaml, Path::new("<bench>")).expect("config parses")
}

/// The identity of the state file: a rewrite (temp file + rename) changes the inode.
fn state_ident(roots: &Roots) -> Option<(u64, i64)> {
    fs::metadata(state::path(roots))
        .ok()
        .map(|m| (m.ino(), m.mtime_nsec()))
}

/// An engine on a fixture copy, stepped while idle. Checks that no step planned a change
/// or wrote a persisted file, and counts the steps that rewrote the state file (a rewrite
/// is temp file + fsync + rename + fsync dir).
struct IdleStep {
    name: String,
    roots: Roots,
    engine: Engine,
    changes: usize,
    written: usize,
    rewrites: usize,
    steps: usize,
    ident: Option<(u64, i64)>,
}

impl IdleStep {
    /// Steps a few times first: the first step of a fresh state differs.
    fn new(name: &str, fx: &Fixture, cfg: &Config) -> IdleStep {
        let roots = fx.roots();
        let mut engine = Engine::new(roots.clone(), cfg.clone()).expect("engine");
        for _ in 0..3 {
            let r = engine.step(state::now()).expect("step");
            assert!(r.complete(), "{name}: warm-up step incomplete: {r:?}");
        }
        IdleStep {
            name: name.to_string(),
            ident: state_ident(&roots),
            roots,
            engine,
            changes: 0,
            written: 0,
            rewrites: 0,
            steps: 0,
        }
    }

    fn step(&mut self) {
        let r = self.engine.step(state::now()).expect("step");
        self.changes += r.plan.changes.len();
        self.written += r
            .files
            .iter()
            .filter(|f| matches!(f.result, Ok(ctune::act::atomic::WriteOutcome::Written)))
            .count();
        let now = state_ident(&self.roots);
        self.rewrites += usize::from(now != self.ident);
        self.ident = now;
        self.steps += 1;
        black_box(r);
    }

    /// The case's name with what the steps did; fails if one planned or persisted.
    fn label(&self) -> String {
        assert_eq!(
            self.changes, 0,
            "{}: an idle step planned changes",
            self.name
        );
        assert_eq!(self.written, 0, "{}: an idle step wrote a file", self.name);
        format!(
            "{}; state.json rewritten on {} of {} steps",
            self.name, self.rewrites, self.steps
        )
    }
}

/// Times idle steps of several fixture copies, interleaved.
fn time_idle_steps(mut steppers: Vec<IdleStep>) -> Vec<Stats> {
    let cases = steppers
        .iter_mut()
        .map(|s| Case::new(s.name.clone(), 1, move || s.step()))
        .collect();
    let mut stats = measure_set(50, cases);
    for (st, s) in stats.iter_mut().zip(&steppers) {
        st.name = s.label();
    }
    stats
}

/// A case timing `decide` on one observation; the name says how many changes it plans.
fn decide_case<'a>(
    name: &str,
    obs: &'a Observation,
    cfg: &'a Config,
    prev: &'a PolicyState,
) -> Case<'a> {
    let now = state::now();
    let (plan, _) = policy::decide(obs, cfg, prev, now);
    let name = format!("{name} ({} change(s) planned)", plan.changes.len());
    Case::new(name, 10, move || {
        black_box(policy::decide(
            black_box(obs),
            black_box(cfg),
            black_box(prev),
            now,
        ));
    })
}

/// The per-CPU counters, read the two ways observe can read them (issue 22): the
/// procfs file through a kept descriptor, and ctnetlink through a kept socket (the
/// agent's own namespace) or a new one (each other namespace, from the reader thread).
fn counter_reads(roots: &Roots) -> Vec<Stats> {
    let file = roots.stat_file();
    let mut rows = Vec::new();
    if ctune::sense::kfile::read_text(&file).is_ok() {
        rows.push(measure(
            "counters: /proc/net/stat/nf_conntrack, kept descriptor, read + parse",
            1000,
            1,
            || {
                let text = ctune::sense::kfile::read_text(&file).expect("stat file");
                black_box(ctune_core::model::stat::parse(&text).expect("parse"));
            },
        ));
    }
    let netlink = || ctune::sense::ctstats::read(roots.netlink());
    match netlink() {
        Ok(_) => {
            rows.push(measure(
                "counters: ctnetlink GET_STATS + GET_STATS_CPU, kept socket",
                1000,
                1,
                || {
                    black_box(netlink().expect("ctnetlink stats"));
                },
            ));
            rows.push(measure(
                "counters: ctnetlink, a new socket each read (another namespace)",
                1000,
                1,
                || {
                    ctune::sense::ctstats::forget_kept();
                    black_box(netlink().expect("ctnetlink stats"));
                },
            ));
        }
        Err(e) => println!(
            "
ctnetlink counters skipped: {e}"
        ),
    }
    rows
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let cfg = initial_config();
    println!(
        "agent_cost: {SAMPLES} samples per case after warm-up; times are per call (a batch is timed as a whole and divided); load average {}",
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    // 1. One tick on the fixture, and its parts.
    let mut tick = Vec::new();
    if wanted("tick") || wanted("fixture") {
        let fx = Fixture::new();
        let roots = fx.roots();
        // The same step with the whole tree on tmpfs, where fsync returns at once.
        let shm = Path::new("/dev/shm");
        let fx_shm = shm.is_dir().then(|| Fixture::new_in(shm));
        let mut steppers = vec![IdleStep::new(
            &format!(
                "Engine::step, idle fixture (tick, plan empty), tree in {}",
                std::env::temp_dir().display()
            ),
            &fx,
            &cfg,
        )];
        if let Some(f) = &fx_shm {
            steppers.push(IdleStep::new(
                "Engine::step, same, tree in /dev/shm (tmpfs: fsync returns at once)",
                f,
                &cfg,
            ));
        }
        tick.extend(time_idle_steps(steppers));
        tick.push(measure("observe::observe, fixture", 100, 1, || {
            black_box(observe::observe(&roots, &cfg.namespaces).expect("observe"));
        }));
        let obs = observe::observe(&roots, &cfg.namespaces).expect("observe");
        let prev = state::load(&roots).expect("state").policy;
        tick.extend(measure_set(
            1000,
            vec![decide_case("policy::decide, fixture", &obs, &cfg, &prev)],
        ));
        let st = state::load(&roots).expect("state");
        tick.push(measure(
            "state::save, content unchanged (read + compare)",
            100,
            1,
            || state::save(&roots, &st).expect("save"),
        ));
        // Two states that differ in one timestamp, as consecutive ticks' states do.
        let mut other = st.clone();
        other.policy.low_since = Some(Duration::from_secs(1));
        let mut flip = false;
        tick.push(measure(
            "state::save, content changed (temp + fsync + rename + fsync dir)",
            20,
            1,
            || {
                flip = !flip;
                state::save(&roots, if flip { &other } else { &st }).expect("save");
            },
        ));
    }
    table("One control step on the fixture copy (tempdir)", &tick);

    // 2. The same reads against the live kernel (read-only).
    let mut live = Vec::new();
    if wanted("live") {
        let roots = Roots::default();
        match observe::observe(&roots, &cfg.namespaces) {
            Ok(obs) => {
                live.push(measure(
                    "observe::observe, live /proc (mode initial)",
                    100,
                    1,
                    || {
                        black_box(observe::observe(&roots, &cfg.namespaces).expect("observe"));
                    },
                ));
                let prev = PolicyState::default();
                live.extend(measure_set(
                    1000,
                    vec![decide_case(
                        "policy::decide, live observation",
                        &obs,
                        &cfg,
                        &prev,
                    )],
                ));
            }
            Err(e) => println!("\nlive observe skipped: {e}"),
        }
        live.extend(counter_reads(&roots));
        // What observe spends most of its time on: one open/read/close per timeout key.
        // The same values read with pread from descriptors kept open, for comparison.
        let dir = roots.netfilter_sysctl_dir();
        let mut keys: Vec<PathBuf> = fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_str().is_some_and(tunables::is_timeout_key))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        keys.sort();
        if !keys.is_empty() {
            let n = keys.len();
            live.push(measure(
                &format!("{n} timeout keys, open + read + close each (as observe read them before kept descriptors)"),
                100,
                1,
                || {
                    for k in &keys {
                        black_box(ctune::sense::kfile::read_u64(k).expect("read timeout"));
                    }
                },
            ));
            let files: Vec<File> = keys
                .iter()
                .map(|k| File::open(k).expect("open timeout"))
                .collect();
            let mut buf = [0u8; 32];
            live.push(measure(
                &format!("{n} timeout keys, pread from descriptors kept open"),
                100,
                1,
                || {
                    for f in &files {
                        black_box(f.read_at(&mut buf, 0).expect("pread timeout"));
                    }
                },
            ));
        }
    }
    table("Observe and decide on the live kernel (read-only)", &live);

    // 3. The count probe.
    let mut count = Vec::new();
    if wanted("count") {
        match File::open(LIVE_COUNT) {
            Ok(f) => {
                let mut buf = [0u8; 32];
                let n = f.read_at(&mut buf, 0).expect("pread count");
                let value: u64 = std::str::from_utf8(&buf[..n])
                    .expect("utf8")
                    .trim()
                    .parse()
                    .expect("count");
                let name = format!("pread nf_conntrack_count (live, count {value})");
                count.push(measure(&name, 1000, 10, || {
                    black_box(f.read_at(black_box(&mut buf), 0).expect("pread"));
                }));
                let mut last: Option<Reading> = None;
                count.push(measure(
                    "probe: pread + parse + probe::step_now (live)",
                    1000,
                    10,
                    || {
                        let n = f.read_at(&mut buf, 0).expect("pread");
                        let c: u64 = std::str::from_utf8(&buf[..n])
                            .ok()
                            .and_then(|t| t.trim().parse().ok())
                            .unwrap_or(0);
                        let now = Reading {
                            at: state::now(),
                            count: c,
                        };
                        black_box(probe::step_now(
                            last,
                            now,
                            262_144,
                            Duration::from_millis(500),
                            &cfg,
                        ));
                        last = Some(now);
                    },
                ));
                count.push(measure(
                    "kfile::read_u64 (live; a descriptor kept open after the first call)",
                    1000,
                    10,
                    || {
                        black_box(
                            ctune::sense::kfile::read_u64(Path::new(LIVE_COUNT))
                                .expect("read count"),
                        );
                    },
                ));
            }
            Err(e) => println!("\ncount probe skipped: {LIVE_COUNT}: {e}"),
        }
    }
    table("Count probe (live kernel, read-only)", &count);

    // 4. Cost against table size: the cases of each group are sampled round-robin.
    let mut sizes = Vec::new();
    if wanted("size") {
        const SIZES: [u64; 3] = [1_000, 100_000, 10_000_000];
        let fx = Fixture::new();
        let roots = fx.roots();
        let base = observe::observe(&roots, &cfg.namespaces).expect("observe");
        let prev = PolicyState::default();
        let big = big_config();
        let scaled: Vec<Observation> = SIZES
            .iter()
            .map(|&n| {
                let mut obs = base.clone();
                obs.namespaces[0].count = Some(n);
                obs.global.max = 4 * n;
                obs.global.buckets = Some(n);
                obs.global.hashsize = Some(n);
                obs.host.memory.total_bytes = BIG_MEM;
                obs
            })
            .collect();
        let fixed: Vec<Observation> = SIZES
            .iter()
            .map(|&n| {
                let mut obs = base.clone();
                obs.namespaces[0].count = Some(n);
                obs
            })
            .collect();
        sizes.extend(measure_set(
            1000,
            SIZES
                .iter()
                .zip(&scaled)
                .map(|(n, obs)| {
                    decide_case(
                        &format!("decide, count {n}, max {}", 4 * n),
                        obs,
                        &big,
                        &prev,
                    )
                })
                .collect(),
        ));
        sizes.extend(measure_set(
            1000,
            SIZES
                .iter()
                .zip(&fixed)
                .map(|(n, obs)| {
                    let name = format!("decide, count {n}, max fixed {}", base.global.max);
                    decide_case(&name, obs, &cfg, &prev)
                })
                .collect(),
        ));
        let fixtures: Vec<Fixture> = SIZES
            .iter()
            .map(|&n| {
                let fx = Fixture::new();
                fx.size(n);
                fx
            })
            .collect();
        sizes.extend(time_idle_steps(
            SIZES
                .iter()
                .zip(&fixtures)
                .map(|(n, fx)| {
                    let name = format!("Engine::step (idle), count {n}, max {}", 4 * n);
                    IdleStep::new(&name, fx, &big)
                })
                .collect(),
        ));
    }
    table(
        "Cost against table size (fixture; each group sampled round-robin)",
        &sizes,
    );
    println!();
}
