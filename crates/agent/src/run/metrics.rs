//! What the agent exports for Prometheus (docs/metrics.md is the list): each step's
//! report rendered in the text format, written as node_exporter's textfile
//! (`ctune.prom`, replaced atomically) and served on `GET /metrics` when configured.
//!
//! Everything printed from outside (namespace names) is escaped as the format requires,
//! and the number of namespaces exported is bounded: a host with thousands of short-lived
//! pods must not flood Prometheus with series.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::run::engine::StepReport;
use ctune_core::ceiling::{Bound, Ceiling};
use ctune_core::config::{Config, Metrics as Settings, TextfileDir};
use ctune_core::model::NamespaceObs;
use ctune_core::plan::Target;
use ctune_core::pressure::Level;
use ctune_core::sysctl;
use ctune_core::tunables;

/// The textfile's name in the collector directory.
pub const TEXTFILE: &str = "ctune.prom";

/// ctune's own counters, kept across steps (from the agent's start: Prometheus's
/// `rate()` handles the reset at a restart).
#[derive(Debug, Default)]
struct Counters {
    /// Applied changes by (key without prefix, "up"/"down").
    changes: BTreeMap<(String, &'static str), u64>,
    apply_errors: u64,
    persist_errors: u64,
    last_change_unix: f64,
    /// Per namespace inode: table-full and clash drops seen between steps.
    table_full: BTreeMap<u64, u64>,
    clash: BTreeMap<u64, u64>,
    /// Per namespace inode: the count and when, for the fill rate.
    last_count: BTreeMap<u64, (u64, Duration)>,
    /// Per namespace inode: seconds to full at the last fill rate.
    time_to_full: BTreeMap<u64, f64>,
}

/// What the HTTP server hands out: the last rendering for `GET /metrics`, and when the
/// next control step is due for `GET /healthz`.
#[derive(Debug)]
pub struct Served {
    /// The last rendering.
    pub text: String,
    /// When the loop expects to finish its next step: a liveness probe fails once this is
    /// `grace` past, so a hung step (a blocked read of /proc, a stuck setns) gets the
    /// agent restarted where no systemd watchdog watches it (a container).
    pub step_due: Instant,
    /// How late a step may be before `/healthz` reports the agent stale
    /// (`metrics.healthz_grace`): generous, since a loaded host delays a step by seconds,
    /// and a restart is the last resort.
    pub grace: Duration,
}

/// Who takes a step's rendering ([`Exporter::takers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takers {
    /// The HTTP server.
    pub server: bool,
    /// The textfile, due now.
    pub textfile: Option<PathBuf>,
}

/// The exporter: counters, what the HTTP server serves, and the textfile's schedule.
#[derive(Debug)]
pub struct Exporter {
    counters: Counters,
    /// Shared with the HTTP server.
    pub served: Arc<Mutex<Served>>,
    textfile_written: Option<Instant>,
    /// The last textfile failure, logged once until it changes.
    textfile_error: Option<String>,
    /// An HTTP server takes the text ([`serve`] started): it is rendered at every step.
    pub serving: bool,
}

impl Default for Exporter {
    fn default() -> Self {
        Exporter {
            counters: Counters::default(),
            served: Arc::new(Mutex::new(Served {
                text: String::new(),
                step_due: Instant::now(),
                grace: Duration::from_secs(60),
            })),
            textfile_written: None,
            textfile_error: None,
            serving: false,
        }
    }
}

/// Where the textfile goes for these settings, if anywhere.
pub fn textfile_path(m: &Settings) -> Option<PathBuf> {
    match &m.textfile_dir {
        TextfileDir::Off => None,
        TextfileDir::Auto => {
            let dir = std::path::Path::new(TextfileDir::DEBIAN);
            dir.is_dir().then(|| dir.join(TEXTFILE))
        }
        TextfileDir::Dir(d) => Some(d.join(TEXTFILE)),
    }
}

impl Exporter {
    /// Takes in a step: counts it, and renders when someone takes the text: the server,
    /// or the textfile when the step changed something or its interval passed. Rendering
    /// is most of a quiet step's cost on a node of many namespaces (a dozen series each),
    /// so it is not paid for no one.
    pub fn after_step(
        &mut self,
        r: &StepReport,
        (cfg, held): (&Config, &BTreeSet<String>),
        now: Duration,
        takers: Option<Takers>,
    ) {
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.counters.record(r, now, unix);
        if let Ok(mut shared) = self.served.lock() {
            shared.grace = cfg.metrics.healthz_grace;
        }
        let Some(takers) = takers else {
            return;
        };
        let text = render(&View {
            report: r,
            cfg,
            held,
            counters: &self.counters,
            unix,
        });
        if takers.server
            && let Ok(mut shared) = self.served.lock()
        {
            shared.text.clone_from(&text);
        }
        if let Some(path) = takers.textfile {
            self.write_textfile(&path, &text);
        }
    }

    /// Who takes the rendering of `r`: the server, the textfile when due; None: no
    /// one, and nothing is rendered. Decided once, before the report is filled
    /// ([`crate::run::engine::Engine::fill_unread`]), and given to
    /// [`Exporter::after_step`].
    pub fn takers(&self, r: &StepReport, cfg: &Config) -> Option<Takers> {
        let textfile = self.textfile_due(r, cfg);
        (self.serving || textfile.is_some()).then_some(Takers {
            server: self.serving,
            textfile,
        })
    }

    /// The textfile to write after `r`, when one is configured and due: the step
    /// changed something, or the interval passed.
    fn textfile_due(&self, r: &StepReport, cfg: &Config) -> Option<PathBuf> {
        let due = self
            .textfile_written
            .is_none_or(|t| t.elapsed() >= cfg.metrics.textfile_interval)
            || !r.outcomes.is_empty();
        due.then(|| textfile_path(&cfg.metrics)).flatten()
    }

    /// Takes the settings the server needs before the first step (the grace of
    /// `/healthz`; later steps keep it current with reloads).
    pub fn configure(&self, m: &Settings) {
        if let Ok(mut shared) = self.served.lock() {
            shared.grace = m.healthz_grace;
        }
    }

    /// Records when the loop will finish its next step (after every step, observed or
    /// not: liveness is the loop turning, not the host being readable).
    pub fn next_step_in(&self, period: Duration) {
        if let Ok(mut shared) = self.served.lock() {
            shared.step_due = Instant::now() + period;
        }
    }

    fn write_textfile(&mut self, path: &Path, text: &str) {
        let result = crate::act::atomic::write(path, text.as_bytes(), 0o644);
        self.textfile_written = Some(Instant::now());
        match result {
            Ok(_) => {
                if self.textfile_error.take().is_some() {
                    tracing::info!("resolved: metrics written to {}", path.display());
                }
            }
            Err(e) => {
                let msg = format!("metrics textfile: {e}");
                if self.textfile_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!("{msg}");
                    self.textfile_error = Some(msg);
                }
            }
        }
    }
}

impl Counters {
    fn record(&mut self, r: &StepReport, now: Duration, unix: f64) {
        for o in &r.outcomes {
            match &o.result {
                Ok(()) => {
                    let dir = if o.change.new > o.change.old {
                        "up"
                    } else {
                        "down"
                    };
                    *self
                        .changes
                        .entry((sysctl::short(&o.change.key).to_string(), dir))
                        .or_default() += 1;
                    self.last_change_unix = unix;
                }
                Err(_) => self.apply_errors += 1,
            }
        }
        let failed_files = r.files.iter().filter(|f| f.result.is_err()).count();
        self.persist_errors += failed_files as u64 + u64::from(r.state_error.is_some());
        for v in &r.plan.namespaces {
            let ino = v.netns.inode;
            *self.table_full.entry(ino).or_default() += v.drop_delta.unwrap_or(0);
            *self.clash.entry(ino).or_default() += v.clash_delta.unwrap_or(0);
        }
        self.fill_rates(r, now);
        // Namespaces that are gone take their series with them.
        let live: BTreeSet<u64> = r
            .observation
            .namespaces
            .iter()
            .map(|n| n.id.inode)
            .collect();
        for map in [&mut self.table_full, &mut self.clash] {
            map.retain(|ino, _| live.contains(ino));
        }
        self.last_count.retain(|ino, _| live.contains(ino));
        self.time_to_full.retain(|ino, _| live.contains(ino));
    }

    /// Seconds to full per namespace, at the rate since the previous step.
    fn fill_rates(&mut self, r: &StepReport, now: Duration) {
        let max = r.observation.global.max;
        for n in &r.observation.namespaces {
            let Some(count) = n.count else { continue };
            let before = self.last_count.insert(n.id.inode, (count, now));
            let rate = before.and_then(|(c, at)| {
                let dt = now.checked_sub(at)?.as_secs_f64();
                (dt > 0.0 && count > c).then(|| (count - c) as f64 / dt)
            });
            match rate {
                Some(rate) => {
                    let left = max.saturating_sub(count) as f64;
                    self.time_to_full.insert(n.id.inode, left / rate);
                }
                None => {
                    self.time_to_full.remove(&n.id.inode);
                }
            }
        }
    }
}

/// What one rendering reads.
struct View<'a> {
    report: &'a StepReport,
    cfg: &'a Config,
    held: &'a BTreeSet<String>,
    counters: &'a Counters,
    unix: f64,
}

/// A label value as the text format requires, appended to `out`: backslash, double
/// quote and line feed escaped (names come from other users).
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The `netns` label: `init` (or ctune's own name) for its own namespace, the name for
/// one in /run/netns, `ino:<inode>` for one found through a process (whose name changes
/// with the process).
fn netns_label(n: &NamespaceObs) -> String {
    match &n.handle {
        Some(p) if p.starts_with("/proc") || p.to_string_lossy().contains("/ns/net") => {
            format!("ino:{}", n.id.inode)
        }
        _ => n.id.name.clone(),
    }
}

/// A family: HELP and TYPE, then each sample.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One line, written in place: a node of a thousand namespaces renders thousands.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        for (i, (k, v)) in labels.iter().enumerate() {
            self.out.push(if i == 0 { '{' } else { ',' });
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_into(self.out, v);
            self.out.push('"');
        }
        if !labels.is_empty() {
            self.out.push('}');
        }
        if value.is_finite() {
            let _ = writeln!(self.out, " {value}");
        } else {
            self.out.push_str(" NaN\n");
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.head(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// The value of a global key after the step: the applied change's, else the observed.
fn global_after(r: &StepReport, key: &str, observed: Option<u64>) -> Option<u64> {
    r.outcomes
        .iter()
        .find(|o| o.result.is_ok() && o.change.key == key && o.change.target == Target::Global)
        .map(|o| o.change.new)
        .or(observed)
}

/// The exported namespaces: ctune's own first, then the fullest; and how many were left
/// out.
fn exported(r: &StepReport, limit: usize) -> (Vec<&NamespaceObs>, usize) {
    let mut all: Vec<&NamespaceObs> = r.observation.namespaces.iter().collect();
    all.sort_by_key(|n| (n.handle.is_some(), std::cmp::Reverse(n.count.unwrap_or(0))));
    let left = all.len().saturating_sub(limit);
    all.truncate(limit);
    (all, left)
}

/// The whole exposition.
fn render(v: &View) -> String {
    let mut out = String::new();
    let r = v.report;
    let max = global_after(r, tunables::MAX, Some(r.observation.global.max)).unwrap_or(0);
    let (spaces, left) = exported(r, v.cfg.metrics.max_namespaces);
    per_namespace(&mut Family { out: &mut out }, v, &spaces, max);
    global(&mut Family { out: &mut out }, v, max, left);
    out
}

fn per_namespace(f: &mut Family, v: &View, spaces: &[&NamespaceObs], max: u64) {
    let labelled: Vec<(String, &NamespaceObs)> =
        spaces.iter().map(|n| (netns_label(n), *n)).collect();
    let gauge =
        |f: &mut Family, name: &str, help: &str, value: &dyn Fn(&NamespaceObs) -> Option<f64>| {
            f.head(name, "gauge", help);
            for (label, n) in &labelled {
                if let Some(x) = value(n) {
                    f.sample(name, &[("netns", label)], x);
                }
            }
        };
    gauge(
        f,
        "ctune_nf_conntrack_entries",
        "Entries in the namespace's conntrack table (nf_conntrack_count).",
        &|n| n.count.map(|c| c as f64),
    );
    gauge(
        f,
        "ctune_nf_conntrack_entries_limit",
        "The max that applies to the namespace (nf_conntrack_max).",
        &|_| Some(max as f64),
    );
    gauge(
        f,
        "ctune_nf_conntrack_utilisation_ratio",
        "Entries / entries_limit.",
        &|n| n.count.map(|c| c as f64 / max.max(1) as f64),
    );
    let level = |n: &NamespaceObs| {
        v.report
            .plan
            .namespaces
            .iter()
            .find(|x| x.netns.inode == n.id.inode)
            .map(|x| match x.level {
                Level::Normal => 0.0,
                Level::Elevated => 1.0,
                Level::Critical => 2.0,
            })
    };
    gauge(
        f,
        "ctune_pressure_level",
        "ctune's pressure level after its last step: 0 normal, 1 elevated, 2 critical.",
        &level,
    );
    gauge(
        f,
        "ctune_time_to_full_seconds",
        "Seconds until the table is full at the fill rate between the last two steps (only while rising).",
        &|n| v.counters.time_to_full.get(&n.id.inode).copied(),
    );
    timeouts(f, v, &labelled);
    kernel_counters(f, &labelled);
    let ours = [
        (
            "ctune_table_full_drops_total",
            "Drops for a full table seen between ctune's steps (insert clashes split off), since ctune started.",
            &v.counters.table_full,
        ),
        (
            "ctune_clash_drops_total",
            "Drops by insert clashes seen between ctune's steps (not a full table), since ctune started.",
            &v.counters.clash,
        ),
    ];
    for (name, help, map) in ours {
        f.head(name, "counter", help);
        for (label, n) in &labelled {
            f.sample(
                name,
                &[("netns", label)],
                map.get(&n.id.inode).copied().unwrap_or(0) as f64,
            );
        }
    }
}

/// The kernel's own counters of each namespace, and where they were read.
fn kernel_counters(f: &mut Family, labelled: &[(String, &NamespaceObs)]) {
    let stats = [
        (
            "drop",
            "drop",
            "The kernel's drop counter: packets dropped for a full table and by insert clashes.",
        ),
        (
            "early_drop",
            "early_drop",
            "The kernel's early_drop counter: entries evicted to make room.",
        ),
        (
            "insert_failed",
            "insert_failed",
            "The kernel's insert_failed counter.",
        ),
        (
            "chaintoolong",
            "chainlength",
            "The kernel's chaintoolong counter: inserts refused for hash chains over 64.",
        ),
    ];
    for (metric, column, help) in stats {
        let name = format!("ctune_nf_conntrack_stat_{metric}_total");
        f.head(&name, "counter", help);
        for (label, n) in labelled {
            if let Some(x) = n.counter(column) {
                f.sample(&name, &[("netns", label)], x as f64);
            }
        }
    }
    let name = "ctune_nf_conntrack_stat_source";
    f.head(
        name,
        "gauge",
        "1, labelled with where the counters above were read: procfs (/proc/net/stat/nf_conntrack) or ctnetlink.",
    );
    for (label, n) in labelled {
        if let Some(s) = &n.stat {
            f.sample(name, &[("netns", label), ("source", s.source.name())], 1.0);
        }
    }
}

/// The timeouts ctune manages (those with a floor), as in force after the step.
fn timeouts(f: &mut Family, v: &View, labelled: &[(String, &NamespaceObs)]) {
    let name = "ctune_nf_conntrack_timeout_seconds";
    f.head(
        name,
        "gauge",
        "Each timeout ctune manages (has a floor for), as in force.",
    );
    for (label, n) in labelled {
        for (key, live) in &n.timeouts {
            if v.cfg.timeouts.floor_of(key).is_none() {
                continue;
            }
            let applied = v.report.outcomes.iter().find(|o| {
                o.result.is_ok()
                    && o.change.key == *key
                    && matches!(&o.change.target, Target::Namespace { netns } if netns.inode == n.id.inode)
            });
            let value = applied.map_or(*live, |o| o.change.new);
            f.sample(
                name,
                &[("netns", label), ("key", sysctl::short(key))],
                value as f64,
            );
        }
    }
}

/// The families that are not per namespace: the ceiling and the hash, ctune's changes,
/// and ctune's own health.
fn global(f: &mut Family, v: &View, max: u64, left: usize) {
    let r = v.report;
    ceiling(f, &r.plan.ceiling, max);
    if let Some(role) = &r.plan.role {
        role_family(f, role);
    }
    if let Some(b) = global_after(r, tunables::BUCKETS, r.observation.global.buckets) {
        f.one(
            "ctune_nf_conntrack_buckets",
            "gauge",
            "The global hash size (nf_conntrack_buckets).",
            b as f64,
        );
    }
    changes(f, v);
    health(f, v, left);
}

/// The role in force (1 for it, 0 for the others), labelled by where it comes from.
fn role_family(f: &mut Family, r: &ctune_core::role::InForce) {
    f.head(
        "ctune_role",
        "gauge",
        "1 for the role whose memory budget is in force (source: auto or config).",
    );
    let source = match r.source {
        ctune_core::role::Source::Auto => "auto",
        ctune_core::role::Source::Config => "config",
    };
    for role in ctune_core::config::Role::ALL {
        f.sample(
            "ctune_role",
            &[("role", role.name()), ("source", source)],
            f64::from(u8::from(r.role == role)),
        );
    }
}

/// How far max may grow, and what bounds it: the ceiling, its memory budget and the term
/// that bounds that, and the memory one entry and the whole table cost.
fn ceiling(f: &mut Family, c: &Ceiling, max: u64) {
    f.one(
        "ctune_ceiling_entries",
        "gauge",
        "The largest max ctune may set now.",
        c.value as f64,
    );
    f.one(
        "ctune_ceiling_bytes",
        "gauge",
        "The memory budget the ceiling comes from.",
        c.budget_bytes as f64,
    );
    f.head(
        "ctune_ceiling_bound",
        "gauge",
        "1 for the term that bounds the memory budget.",
    );
    for (name, bound) in [
        ("share", Bound::Share),
        ("floor", Bound::Floor),
        ("spare", Bound::Spare),
        ("cap", Bound::Cap),
    ] {
        f.sample(
            "ctune_ceiling_bound",
            &[("bound", name)],
            f64::from(u8::from(c.bound == bound)),
        );
    }
    f.one(
        "ctune_at_ceiling",
        "gauge",
        "1 when max is at or above the ceiling: growth has no room left.",
        f64::from(u8::from(max >= c.value)),
    );
    f.one(
        "ctune_bytes_per_entry",
        "gauge",
        "Bytes one entry costs: slab object, extensions, hash share.",
        c.bytes_per_entry as f64,
    );
    f.one(
        "ctune_table_memory_bytes",
        "gauge",
        "What the table (every namespace's entries and the hash) costs now.",
        c.table_bytes as f64,
    );
}

/// The changes ctune applied since it started, by key and direction, and when the last
/// one was.
fn changes(f: &mut Family, v: &View) {
    f.head(
        "ctune_changes_total",
        "counter",
        "Changes ctune applied, by key and direction.",
    );
    // Every key ctune may change is exported from the start, at 0: a series that first
    // appears at 1 hides its first change from increase().
    let mut keys: BTreeSet<String> = [tunables::MAX, tunables::BUCKETS]
        .map(|k| sysctl::short(k).to_string())
        .into();
    keys.extend(v.cfg.timeouts.floors.keys().cloned());
    keys.extend(v.counters.changes.keys().map(|(k, _)| k.clone()));
    for key in &keys {
        for dir in ["up", "down"] {
            let n = v.counters.changes.get(&(key.clone(), dir)).copied();
            let labels = [("key", key.as_str()), ("direction", dir)];
            f.sample("ctune_changes_total", &labels, n.unwrap_or(0) as f64);
        }
    }
    f.one(
        "ctune_last_change_timestamp_seconds",
        "gauge",
        "Unix time of the last applied change (0: none yet).",
        v.counters.last_change_unix,
    );
}

/// What an alert on ctune itself watches: keys it leaves alone, what failed, when it last
/// stepped, the namespaces left out, and its version.
fn health(f: &mut Family, v: &View, left: usize) {
    f.head(
        "ctune_operator_held",
        "gauge",
        "1 for a global key someone else set, which ctune leaves alone.",
    );
    for key in v.held {
        f.sample("ctune_operator_held", &[("key", sysctl::short(key))], 1.0);
    }
    f.one(
        "ctune_apply_errors_total",
        "counter",
        "Changes that did not take effect.",
        v.counters.apply_errors as f64,
    );
    f.one(
        "ctune_persist_errors_total",
        "counter",
        "Persisted files (and state saves) that could not be written.",
        v.counters.persist_errors as f64,
    );
    f.one(
        "ctune_last_step_timestamp_seconds",
        "gauge",
        "Unix time of the last control step.",
        v.unix,
    );
    f.one(
        "ctune_namespaces_unexported",
        "gauge",
        "Namespaces watched but not exported (over metrics.max_namespaces).",
        left as f64,
    );
    f.head("ctune_build_info", "gauge", "1, with ctune's version.");
    f.sample(
        "ctune_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
}

/// Connections open at once from every client together: far under the agent's open
/// files, and far over what Prometheus and a probe need.
const MAX_CONNECTIONS: usize = 256;
/// Connections open at once from one address. A client holding more is closed at
/// accept, so one host (a flood of unfinished requests) cannot take the slots that a
/// scrape or the kubelet's probe from another address needs.
const MAX_PER_CLIENT: usize = 8;
/// A client that has not sent its whole request head by then is dropped: a connection
/// that never finishes its request holds its slot one second, not ten.
const HEAD_TIMEOUT: Duration = Duration::from_secs(1);
/// A connection that has not finished its exchange by then is dropped.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` and serves `GET /metrics` (the last rendering) and `GET /healthz` (200
/// while steps come on time, 503 once one is `metrics.healthz_grace` late) on a thread
/// and runtime of their own: a scrape never waits for a step (one at the onset of
/// pressure waits up to 1.5 s for its samples), and a hung step (a stuck read or setns)
/// cannot hang `/healthz`, whose 503 is what gets it restarted. Binding fails here, with
/// a message that says what to do (the packaged unit allows only local sockets).
pub fn serve(addr: std::net::SocketAddr, served: Arc<Mutex<Served>>) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| {
            let refused = e.raw_os_error() == Some(nix::errno::Errno::EAFNOSUPPORT as i32);
            let hint = if refused {
                "; under systemd, install systemd/ctune.service.d/metrics-http.conf (the unit allows only local and netlink sockets)"
            } else {
                ""
            };
            std::io::Error::new(e.kind(), format!("metrics.listen {addr}: {e}{hint}"))
        })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ctune-metrics".into())
        .spawn(move || rt.block_on(accept(listener, served)))?;
    tracing::info!("serving metrics on http://{addr}/metrics");
    Ok(())
}

/// The server's loop. Every connection is accepted at once and served on its own task,
/// so none waits behind another's unfinished request; what is open is bounded by
/// [`Slots`] (in all, and per client address), each connection serves one request
/// (no keep-alive), and its request head must arrive within [`HEAD_TIMEOUT`].
async fn accept(listener: std::net::TcpListener, served: Arc<Mutex<Served>>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        tracing::error!("metrics: the listening socket could not join the runtime");
        return;
    };
    let slots = Slots::default();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // Out of descriptors, or a connection reset before it was taken: wait a
            // little rather than spin on the error.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Over a limit: dropping the stream closes it at once.
        let Some(slot) = slots.take(peer.ip()) else {
            tracing::debug!(%peer, "metrics: connection refused, too many open");
            continue;
        };
        let served = Arc::clone(&served);
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| respond(req, Arc::clone(&served)));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .keep_alive(false)
                .serve_connection(io, service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}

/// The connections open, in all and per client address.
#[derive(Default, Clone)]
struct Slots(Arc<Mutex<(usize, std::collections::HashMap<std::net::IpAddr, usize>)>>);

/// One open connection's place in [`Slots`], given back when dropped.
struct Slot {
    slots: Slots,
    ip: std::net::IpAddr,
}

impl Slots {
    /// A place for a connection from `ip`, unless all [`MAX_CONNECTIONS`] are taken or
    /// `ip` holds [`MAX_PER_CLIENT`].
    fn take(&self, ip: std::net::IpAddr) -> Option<Slot> {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *guard;
        if *total >= MAX_CONNECTIONS {
            return None;
        }
        // Refused only when it already holds some: no entry is left for a refusal.
        let mine = per.entry(ip).or_insert(0);
        if *mine >= MAX_PER_CLIENT {
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.slots.0.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *guard;
        *total -= 1;
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
    }
}

type Body = http_body_util::Full<bytes::Bytes>;

/// `/healthz`: the status and the line that says why, from when the next step was due
/// and how late it may be.
fn liveness(step_due: Option<(Instant, Duration)>, now: Instant) -> (u16, String) {
    let Some((due, grace)) = step_due else {
        return (
            503,
            "stale: the agent's state is unreadable (a panicked step)\n".into(),
        );
    };
    match now.checked_duration_since(due) {
        None => (200, "ok: the next control step is on time\n".into()),
        Some(late) if late <= grace => (
            200,
            format!("ok: the next control step is {}s late\n", late.as_secs()),
        ),
        Some(late) => (
            503,
            format!(
                "stale: the control step due {}s ago has not finished (a hung read or setns?); restarting the agent is the remedy\n",
                late.as_secs()
            ),
        ),
    }
}

async fn respond(
    req: hyper::Request<hyper::body::Incoming>,
    served: Arc<Mutex<Served>>,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    let reply = |status: u16, ctype: &str, body: String| {
        let mut r = hyper::Response::new(Body::new(bytes::Bytes::from(body)));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
        if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    let plain = "text/plain; charset=utf-8";
    Ok(match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => {
            let body = served.lock().map(|s| s.text.clone()).unwrap_or_default();
            reply(200, "text/plain; version=0.0.4; charset=utf-8", body)
        }
        (&hyper::Method::GET, "/healthz") => {
            let due = served.lock().map(|s| (s.step_due, s.grace)).ok();
            let (status, body) = liveness(due, Instant::now());
            reply(status, plain, body)
        }
        (&hyper::Method::GET, _) => reply(
            404,
            plain,
            "ctune serves /metrics and /healthz only\n".into(),
        ),
        _ => reply(405, plain, "GET only\n".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One address holds at most MAX_PER_CLIENT connections and all of them together at
    /// most MAX_CONNECTIONS; a closed one frees its place, and nothing is kept for an
    /// address with none open.
    #[test]
    fn slots_bound_each_client_and_all_of_them() {
        let slots = Slots::default();
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let b: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        let mut held: Vec<Slot> = (0..MAX_PER_CLIENT)
            .map(|_| slots.take(a).unwrap())
            .collect();
        assert!(slots.take(a).is_none(), "a ninth from one address");
        assert!(slots.take(b).is_some(), "another address is served");
        held.pop();
        assert!(
            slots.take(a).is_some(),
            "a closed connection frees its place"
        );
        drop(held);
        let many: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map(|i| {
                slots
                    .take(std::net::IpAddr::from([
                        10,
                        0,
                        (i / 256) as u8,
                        (i % 256) as u8,
                    ]))
                    .unwrap()
            })
            .collect();
        assert!(slots.take(b).is_none(), "all places taken");
        drop(many);
        assert_eq!(slots.0.lock().unwrap().0, 0);
        assert!(slots.0.lock().unwrap().1.is_empty(), "no address kept");
    }

    #[test]
    fn label_values_from_other_users_are_escaped() {
        let mut out = String::new();
        escape_into(&mut out, "a\"b\\c\nd");
        assert_eq!(out, "a\\\"b\\\\c\\nd");
        let mut out = String::new();
        Family { out: &mut out }.sample("m", &[("netns", "x\"} 1\nevil 2")], 3.0);
        assert_eq!(out, "m{netns=\"x\\\"} 1\\nevil 2\"} 3\n");
        assert_eq!(out.lines().count(), 1, "one sample, one line");
    }

    #[test]
    fn healthz_fails_only_once_a_step_is_a_grace_late() {
        let t0 = Instant::now();
        let due = t0 + Duration::from_secs(5);
        let grace = Duration::from_secs(60);
        assert_eq!(liveness(Some((due, grace)), t0).0, 200);
        assert_eq!(liveness(Some((due, grace)), due + grace).0, 200);
        let (code, why) = liveness(Some((due, grace)), due + grace + Duration::from_secs(1));
        assert_eq!(code, 503, "{why}");
        assert!(why.contains("61s ago"), "{why}");
        assert_eq!(liveness(None, t0).0, 503);
    }

    #[test]
    fn a_value_that_is_not_finite_is_nan_not_inf_text() {
        let mut out = String::new();
        Family { out: &mut out }.sample("m", &[], f64::INFINITY);
        assert_eq!(out, "m NaN\n");
    }
}
