//! `ctune top`: what fills each watched namespace's table. One ctnetlink dump per
//! namespace ([`crate::sense::ctnetlink`]), counted into the core's
//! [`Composition`] as it streams, within bounds on entries, time and distinct keys;
//! then shares per bucket, the top sources and ports, and per timeout key the entries
//! it governs with the timeout in force and ctune's floor. Changes nothing.

use ctune_core::model::{Note, NoteKind};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use crate::error::{EXIT_OK, Error};
use crate::sense::ctnetlink::{self, Limits};
use crate::sense::kfile;
use crate::sense::netns::{self, Handle};
use crate::sense::roots::Roots;
use ctune_core::advice::{self, Advice, Thresholds};
use ctune_core::composition::{Composition, LocalNets, Summary};
use ctune_core::config::{Config, NamespaceMode, Namespaces};
use ctune_core::tunables;
use ctune_core::units::{fmt_pct, printable};

/// Default of `--max-entries`: the entries read of a larger table are a random sample
/// ([`ctnetlink::Outcome::sampled`]), and 32768 of them put every share within 0.6 % of
/// the table's (95 %), for about 0.1 s of the kernel's time where a million entries cost
/// it about 2.5 s (docs/benchmarks.md). `--all` reads every entry.
pub const DEFAULT_MAX_ENTRIES: u64 = 32_768;
/// Default of `--max-time`.
pub const DEFAULT_MAX_TIME: Duration = Duration::from_secs(30);
/// Default of `--max-keys`: distinct keys kept per bucket (about 2 MiB at most each).
pub const DEFAULT_MAX_KEYS: usize = 65_536;
/// Default of `--top`.
pub const DEFAULT_TOP: usize = 10;

/// How `top` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only this namespace (a /run/netns name, or `init` / `self` for ctune's own).
    pub netns: Option<String>,
    /// JSON instead of text.
    pub json: bool,
    /// Keys listed per bucket.
    pub top: usize,
    /// Bounds of each dump.
    pub limits: Limits,
    /// Distinct keys kept per bucket.
    pub max_keys: usize,
}

/// One namespace's table, as `ctune top --json` prints it.
#[derive(Debug, Serialize)]
pub struct NamespaceTop {
    /// The namespace's name.
    pub name: String,
    /// Its nsfs inode.
    pub inode: u64,
    /// The kernel's count of entries (nf_conntrack_count), when readable.
    pub count: Option<u64>,
    /// Why the entries read are not the whole table (null: they are).
    pub partial: Option<String>,
    /// How long the dump took.
    pub elapsed_ms: u64,
    /// Why this namespace could not be read (null: it was).
    pub error: Option<String>,
    /// Why its local addresses could not be read (reported in the notes).
    #[serde(skip)]
    pub local_error: Option<String>,
    /// What was read.
    #[serde(flatten)]
    pub summary: Option<Summary>,
    /// What an operator should consider changing and ctune will not
    /// ([`ctune_core::advice`]); empty when nothing calls for it or nothing was read.
    pub advice: Vec<Advice>,
}

/// Everything `ctune top --json` prints.
#[derive(Debug, Serialize)]
pub struct TopReport {
    /// The JSON schema version.
    pub schema: u32,
    /// Per namespace, ctune's own first.
    pub namespaces: Vec<NamespaceTop>,
    /// What could not be seen.
    pub notes: Vec<Note>,
}

/// What one namespace's reading yields.
struct Reading {
    comp: Composition,
    outcome: ctnetlink::Outcome,
    count: Option<u64>,
    timeouts: BTreeMap<String, u64>,
    /// Why the namespace's local addresses are unknown (then no `notrack_port` advice).
    local_error: Option<String>,
}

/// The calling thread's namespace's local addresses: IPv4 `LOCAL` routes from
/// `fib_trie`, IPv6 addresses from `if_inet6` (absent without IPv6: none). Read through
/// `thread-self`, which follows the thread's namespace.
fn local_nets(roots: &Roots) -> Result<LocalNets, String> {
    let fib = roots.proc.join("thread-self/net/fib_trie");
    let fib_text = kfile::read_bounded(&fib).map_err(|e| format!("{}: {e}", fib.display()))?;
    let v6 = kfile::read_bounded(&roots.proc.join("thread-self/net/if_inet6")).unwrap_or_default();
    Ok(LocalNets::parse(&fib_text, &v6))
}

/// Dumps and counts the calling thread's namespace.
fn read_here(roots: &Roots, opts: &Options) -> Result<Reading, String> {
    let (local, local_error) = match local_nets(roots) {
        Ok(l) => (Some(l), None),
        Err(e) => (None, Some(e)),
    };
    let mut comp = Composition::new(opts.max_keys).with_local(local);
    let outcome = ctnetlink::dump(&opts.limits, &mut |f| comp.add(f)).map_err(|e| e.to_string())?;
    let count = kfile::read_u64(&roots.sysctl(tunables::COUNT)).ok();
    let timeouts = comp
        .keys()
        .filter_map(|(k, _)| k)
        .filter_map(|k| {
            kfile::read_u64(&roots.sysctl(k))
                .ok()
                .map(|v| (k.to_string(), v))
        })
        .collect();
    Ok(Reading {
        comp,
        outcome,
        count,
        timeouts,
        local_error,
    })
}

fn namespace_top(
    name: String,
    inode: u64,
    r: Result<Reading, String>,
    cfg: &Config,
    top: usize,
) -> NamespaceTop {
    match r {
        Ok(r) => {
            let mut summary = r.comp.summarize(top, &r.timeouts, &cfg.timeouts);
            // An empty read says nothing of the table: PARTIAL, not a sample.
            if r.outcome.sampled && summary.entries > 0 {
                summary = summary.sampled_from(r.count);
            }
            let advice = advice::advise(
                &summary,
                r.outcome.partial.is_none(),
                &Thresholds::default(),
            );
            NamespaceTop {
                name,
                inode,
                count: r.count,
                partial: r.outcome.partial.clone(),
                elapsed_ms: r.outcome.elapsed.as_millis() as u64,
                error: None,
                summary: Some(summary),
                advice,
                local_error: r.local_error,
            }
        }
        Err(e) => NamespaceTop {
            name,
            inode,
            count: None,
            partial: None,
            elapsed_ms: 0,
            error: Some(e),
            summary: None,
            advice: Vec::new(),
            local_error: None,
        },
    }
}

/// Reads every watched namespace (or `--netns`'s) and builds the report.
pub fn report(roots: &Roots, cfg: &Config, opts: &Options) -> Result<TopReport, Error> {
    let watched = match &opts.netns {
        Some(name) if name == "init" || name == "self" => Namespaces {
            mode: NamespaceMode::Initial,
            names: vec![],
        },
        Some(name) => Namespaces {
            mode: NamespaceMode::Named,
            names: vec![name.clone()],
        },
        None => cfg.namespaces.clone(),
    };
    let d = netns::discover(roots, &watched);
    let mut notes = d.notes.clone();
    if let Some(name) = &opts.netns
        && watched.mode == NamespaceMode::Named
        && d.others.is_empty()
    {
        return Err(Error::Partial(format!(
            "no namespace {}: {}",
            printable(name),
            notes
                .iter()
                .map(|n| n.text.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    let mut namespaces = Vec::new();
    if opts.netns.is_none() || watched.mode == NamespaceMode::Initial {
        let own = match d.own_is_initial {
            Some(false) => "self",
            _ => "init",
        };
        namespaces.push(namespace_top(
            own.into(),
            d.own_inode.unwrap_or(0),
            read_here(roots, opts),
            cfg,
            opts.top,
        ));
    }
    let handles: Vec<Handle> = d.others.clone();
    let readings = netns::read_each(&handles, |_| read_here(roots, opts));
    for (h, r) in handles.iter().zip(readings) {
        // Gone since discovery (a pod deleted): nothing to show, nothing wrong.
        if r.as_ref().is_err_and(|e| e.vanished) {
            continue;
        }
        let r = r.map_err(String::from).and_then(|r| r);
        namespaces.push(namespace_top(
            h.id.name.clone(),
            h.id.inode,
            r,
            cfg,
            opts.top,
        ));
    }
    notes.extend(namespaces.iter().flat_map(problems));
    Ok(TopReport {
        schema: crate::report::SCHEMA,
        namespaces,
        notes,
    })
}

/// What could not be read of one namespace, as notes.
fn problems(n: &NamespaceTop) -> Vec<Note> {
    let mut notes = Vec::new();
    if let Some(e) = &n.error {
        notes.push(Note::new(
            NoteKind::Namespace,
            n.name.clone(),
            format!("namespace {}: {e}", n.name),
        ));
    }
    if let Some(e) = &n.local_error {
        notes.push(Note::new(
            NoteKind::LocalAddresses,
            n.name.clone(),
            format!(
                "namespace {}: local addresses not read ({e}): no notrack advice",
                n.name
            ),
        ));
    }
    notes
}

/// Runs `top`; exit 0, or 4 (partial) when a namespace could not be read.
pub fn run(roots: &Roots, cfg: &Config, opts: &Options, out: &mut dyn Write) -> Result<u8, Error> {
    let r = report(roots, cfg, opts)?;
    if opts.json {
        serde_json::to_writer_pretty(&mut *out, &r).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", text(&r))?;
    }
    let failed = r.namespaces.iter().filter(|n| n.error.is_some()).count();
    if failed > 0 {
        return Err(Error::Partial(format!(
            "{failed} of {} namespace(s) could not be read",
            r.namespaces.len()
        )));
    }
    Ok(EXIT_OK)
}

fn row(out: &mut String, label: &str, entries: u64, share: f64, extra: &str) {
    out.push_str(&format!(
        "  {label:<40} {entries:>9} {:>6}{extra}\n",
        fmt_pct(share)
    ));
}

fn secs(v: Option<u64>) -> String {
    v.map_or("-".into(), short_secs)
}

/// A duration in at most two units, for a column: 29s, 10m, 4d23h.
fn short_secs(s: u64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let Some(i) = units.iter().position(|(u, _)| s >= *u) else {
        return "0s".into();
    };
    let (u, name) = units[i];
    let mut out = format!("{}{name}", s / u);
    if let Some((v, n)) = units.get(i + 1)
        && (s % u) / v > 0
    {
        out.push_str(&format!("{}{n}", (s % u) / v));
    }
    out
}

/// The text report.
pub fn text(r: &TopReport) -> String {
    let mut out = String::new();
    for n in &r.namespaces {
        namespace_text(&mut out, n);
    }
    if r.namespaces.is_empty() {
        out.push_str("no namespace to read\n");
    }
    for note in &r.notes {
        out.push_str(&format!("note: {}\n", printable(&note.text)));
    }
    out
}

/// One namespace's section: what was read, its shares, its tables and its advice.
fn namespace_text(out: &mut String, n: &NamespaceTop) {
    out.push_str(&format!(
        "NAMESPACE {} (inode {})",
        printable(&n.name),
        n.inode
    ));
    let Some(s) = &n.summary else {
        out.push_str(&format!(
            ": not read: {}\n\n",
            printable(n.error.as_deref().unwrap_or(""))
        ));
        return;
    };
    out.push_str(&format!(
        ": {} entries read in {} ms{}\n",
        s.entries,
        n.elapsed_ms,
        n.count
            .map_or(String::new(), |c| format!(" (kernel count {c})"))
    ));
    match (&n.partial, &s.sample) {
        (Some(p), Some(sample)) => out.push_str(&format!(
            "  SAMPLE: {p}, of {} in the table. The kernel sends them in the order of its \
             hash table, a random order, so every share below is an estimate, within {} \
             of the table's (95 %); ENTRIES count the sample. --all reads every entry.\n",
            sample.table_entries,
            fmt_pct(sample.margin_95)
        )),
        (Some(p), None) => out.push_str(&format!("  PARTIAL: {p}\n")),
        (None, _) => {}
    }
    shares_text(out, s);
    tables_text(out, s);
    advice_text(out, &n.advice);
    out.push('\n');
}

/// The shares on one line each: protocols, TCP states, assured, zones, marks.
fn shares_text(out: &mut String, s: &ctune_core::composition::Summary) {
    let inline = |v: &[ctune_core::composition::Named]| {
        v.iter()
            .map(|x| format!("{} {}", x.key, fmt_pct(x.share)))
            .collect::<Vec<_>>()
            .join("  ")
    };
    out.push_str(&format!("  protocols   {}\n", inline(&s.protocols)));
    if !s.tcp_states.is_empty() {
        out.push_str(&format!("  tcp states  {}\n", inline(&s.tcp_states)));
    }
    out.push_str(&format!(
        "  assured {}  unreplied {}\n",
        fmt_pct(s.assured.share),
        fmt_pct(s.unreplied.share)
    ));
    out.push_str(&format!("  zones       {}\n", inline(&s.zones)));
    out.push_str(&format!("  marks       {}\n", inline(&s.marks)));
}

/// The tables: sources, destination ports, and the timeout keys with their times.
fn tables_text(out: &mut String, s: &ctune_core::composition::Summary) {
    for (title, list) in [
        ("SOURCE (/24, /64)", &s.sources),
        ("DESTINATION PORT", &s.ports),
    ] {
        out.push_str(&format!(
            "\n  {title:<40} {:>9} {:>6}\n",
            "ENTRIES", "SHARE"
        ));
        for x in list.iter() {
            row(out, &x.key, x.entries, x.share, "");
        }
    }
    out.push_str(&format!(
        "\n  {:<40} {:>9} {:>6} {:>9} {:>9} {:>9} {:>9}\n",
        "TIMEOUT KEY", "ENTRIES", "SHARE", "TIMEOUT", "FLOOR", "LEFT", "LEFT MAX"
    ));
    for k in &s.timeouts {
        let extra = format!(
            " {:>9} {:>9} {:>9} {:>9}",
            secs(k.timeout_secs),
            secs(k.floor_secs),
            short_secs(k.left_mean_secs),
            short_secs(k.left_max_secs)
        );
        row(out, &k.key, k.entries, k.share, &extra);
    }
    if !s.keys_capped.is_empty() {
        out.push_str(&format!(
            "  (more distinct keys than --max-keys in: {}; the rest counted as other)\n",
            s.keys_capped.join(", ")
        ));
    }
}

/// The advice section of one namespace (nothing when there is none).
fn advice_text(out: &mut String, advice: &[Advice]) {
    if advice.is_empty() {
        return;
    }
    out.push_str("\n  Advice (ctune changes none of this)\n");
    for a in advice {
        out.push_str(&format!("  - {}: {}\n", a.kind.name(), printable(&a.text)));
        out.push_str(&format!("    warning: {}\n", printable(&a.warning)));
        if let Some(snippet) = &a.snippet {
            out.push_str("    nftables (save as a file; `nft -c -f FILE` checks it):\n");
            for line in snippet.lines() {
                out.push_str(&format!("      {}\n", line.replace('\t', "  ")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_durations() {
        let f = super::short_secs;
        assert_eq!(
            [f(0), f(29), f(600), f(431_999), f(432_000), f(54_000)],
            ["0s", "29s", "10m", "4d23h", "5d", "15h"]
        );
    }
}
