//! The step's order, driven through the protocol with a scripted driver: what is asked,
//! in which order, and what a failure stops.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::model::Governed;
use crate::plan::Target;
use crate::policy::testkit::obs;
use crate::tunables::KERNEL_DEFAULT_TIMEOUTS;

/// A config whose ceiling cannot grow past `cap`: a table near it is pressed, and its
/// timeouts are lowered (an onset), with composition samples every minute.
fn capped(cap: u64) -> Config {
    let yaml =
        format!("namespaces:\n  mode: initial\nceiling:\n  min_max: 1024\n  max_cap: {cap}\n");
    crate::config::parse(&yaml, Path::new("<test>")).expect("config")
}

/// One namespace at `count` of `max`, with the kernel's default timeouts.
fn table(max: u64, count: u64) -> Observation {
    let mut o = obs(max, &[count]);
    o.namespaces[0].timeouts = KERNEL_DEFAULT_TIMEOUTS
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    o
}

/// What an action asks, in a word.
fn kind(a: &Action) -> &'static str {
    match a {
        Action::Observe { .. } => "observe",
        Action::Collect { .. } => "collect",
        Action::Save => "save",
        Action::Apply(ch) if ch.iter().all(|c| c.target == Target::Global) => "apply-global",
        Action::Apply(_) => "apply",
        Action::Sample { .. } => "sample",
        Action::StartSampling { .. } => "start-sampling",
        Action::Persist { .. } => "persist",
        Action::ReadTimeouts { .. } => "read-timeouts",
        Action::Done { .. } => "done",
    }
}

/// A sample of one UDP-only table of `entries`.
fn udp(entries: u64, at: Duration) -> Governed {
    Governed {
        entries,
        by_key: BTreeMap::from([("nf_conntrack_udp_timeout".to_string(), entries)]),
        partial: false,
        taken_at: at,
        age_secs: 0,
    }
}

/// Drives one step at `now` on `o`, answering every action as a kernel would (every
/// change takes effect, every sample reads a UDP table, saves as `save_ok` says);
/// returns the actions asked, in order, and the plan.
fn drive(
    c: &mut Controller,
    o: &mut Observation,
    now: Duration,
    save_ok: bool,
) -> (Vec<&'static str>, Plan) {
    let mut asked = vec![kind(&c.begin(now))];
    let mut action = c.handle(o, Event::Observed, now);
    loop {
        asked.push(kind(&action));
        let event = match action {
            Action::Done { plan, .. } => return (asked, plan),
            Action::Observe { .. } => panic!("a second observation"),
            Action::Collect { .. } => Event::Collected {
                samples: Vec::new(),
                running: false,
            },
            Action::Save => Event::Saved(save_ok),
            Action::Apply(ch) => Event::Applied(vec![true; ch.len()]),
            Action::Sample { targets, .. } => Event::Sampled(
                targets
                    .into_iter()
                    .map(|t| Taken {
                        id: t.id,
                        result: Ok(udp(o.namespaces[0].count.unwrap_or(0), now)),
                        at: now,
                    })
                    .collect(),
            ),
            Action::StartSampling { .. } => Event::Started(true),
            Action::Persist { .. } => Event::Persisted,
            Action::ReadTimeouts { targets, keys } => {
                for n in &mut o.namespaces {
                    if targets.iter().any(|t| t.id.inode == n.id.inode) {
                        n.timeouts_unread = false;
                        n.timeouts = KERNEL_DEFAULT_TIMEOUTS
                            .iter()
                            .filter(|(k, _)| keys.as_ref().is_none_or(|keys| keys.contains(*k)))
                            .map(|(k, v)| (k.to_string(), *v))
                            .collect();
                    }
                }
                Event::TimeoutsRead
            }
        };
        action = c.handle(o, event, now);
    }
}

/// A controller with no memory of earlier steps, its table capped at `cap` bytes, that
/// may (`can_sample`) take composition samples.
fn fresh(cap: u64, mode: Mode, can_sample: bool) -> Controller {
    Controller::new(
        capped(cap),
        mode,
        Memory::default(),
        can_sample,
        Duration::ZERO,
    )
}

#[test]
fn a_quiet_step_observes_persists_and_saves_and_asks_nothing_else() {
    let mut c = fresh(1 << 20, Mode::Agent, true);
    let mut o = table(262_144, 1000);
    let (asked, plan) = drive(&mut c, &mut o, Duration::from_secs(1), true);
    assert!(plan.changes.is_empty(), "{:?}", plan.changes);
    assert_eq!(asked, ["observe", "persist", "save", "done"]);
    assert_eq!(c.wake(Duration::from_secs(1)), Wake::Nothing);
}

/// A namespace whose timeouts were left unread (it was at normal, nothing lowered) and
/// that rises has them read before anything is applied, and the decision lowers them;
/// the next step's observation asks for them up front, while they stay lowered.
#[test]
fn a_namespace_that_rises_unread_has_its_timeouts_read_then_lowered() {
    let mut c = fresh(10_000, Mode::Agent, true);
    let mut o = table(10_000, 9_800);
    let inode = o.namespaces[0].id.inode;
    o.namespaces[0].timeouts.clear();
    o.namespaces[0].timeouts_unread = true;
    let (asked, plan) = drive(&mut c, &mut o, Duration::from_secs(1), true);
    assert_eq!(
        asked,
        [
            "observe",
            "read-timeouts",
            "sample",
            "apply",
            "persist",
            "save",
            "done"
        ],
    );
    let keys: Vec<&str> = plan.changes.iter().map(|c| c.key.as_str()).collect();
    assert!(keys.contains(&"nf_conntrack_udp_timeout"), "{keys:?}");
    let Action::Observe { timeouts, .. } = c.begin(Duration::from_secs(2)) else {
        panic!("a step begins with an observation")
    };
    assert!(timeouts.namespaces.contains(&inode), "{timeouts:?}");
    assert!(
        timeouts
            .keys
            .as_ref()
            .is_some_and(|k| k.contains("nf_conntrack_udp_timeout")),
        "{timeouts:?}"
    );
}

/// A quiet namespace's timeouts are not asked for: nothing there could use them.
#[test]
fn a_quiet_namespace_is_not_asked_for_its_timeouts() {
    let mut c = fresh(1 << 20, Mode::Agent, true);
    let mut o = table(262_144, 1000);
    o.namespaces[0].timeouts.clear();
    o.namespaces[0].timeouts_unread = true;
    let (asked, plan) = drive(&mut c, &mut o, Duration::from_secs(1), true);
    assert_eq!(asked, ["observe", "persist", "save", "done"]);
    assert!(plan.changes.is_empty(), "{:?}", plan.changes);
    let Action::Observe { timeouts, .. } = c.begin(Duration::from_secs(2)) else {
        panic!("a step begins with an observation")
    };
    assert!(timeouts.namespaces.is_empty(), "{timeouts:?}");
}

/// At the onset of pressure the originals are saved before anything is applied, the
/// namespace is sampled before its timeouts are applied, and the sample decides them:
/// a UDP table keeps its established timeout. Then no background sample is due (the
/// onset's is fresh).
#[test]
fn at_the_onset_the_sample_comes_before_the_timeouts_and_decides_them() {
    let mut c = fresh(10_000, Mode::Agent, true);
    let mut o = table(10_000, 9_800);
    let (asked, plan) = drive(&mut c, &mut o, Duration::from_secs(1), true);
    assert_eq!(
        asked,
        ["observe", "sample", "apply", "persist", "save", "done"],
        "the onset sample before the timeouts; none in the background after it"
    );
    let keys: Vec<&str> = plan.changes.iter().map(|c| c.key.as_str()).collect();
    assert!(keys.contains(&"nf_conntrack_udp_timeout"), "{keys:?}");
    assert!(
        !keys.contains(&"nf_conntrack_tcp_timeout_established"),
        "{keys:?}"
    );
    assert!(
        o.namespaces[0].composition.is_some(),
        "the decision weighed the sample"
    );
}

/// When the operator's values cannot be saved, nothing is applied: `restore` must always
/// be able to put them back.
/// Where a step both raises a global key and lowers timeouts at the onset, the global
/// change is applied (after the operator's value is saved) before the dump: a sample
/// never delays a raise of max.
#[test]
fn at_the_onset_the_global_changes_come_before_the_sample() {
    let mut c = fresh(10_000, Mode::Agent, true);
    // The hash is far below max / 4: it grows, while max is at the ceiling.
    let mut o = table(10_000, 9_800);
    o.global.buckets = Some(512);
    let (asked, plan) = drive(&mut c, &mut o, Duration::from_secs(1), true);
    assert!(
        plan.global_change(crate::tunables::BUCKETS).is_some(),
        "{:?}",
        plan.changes
    );
    assert_eq!(
        asked,
        [
            "observe",
            "save",
            "apply-global",
            "sample",
            "apply",
            "persist",
            "save",
            "done"
        ]
    );
}

#[test]
fn an_unsaved_original_stops_the_step_before_the_kernel() {
    let mut c = fresh(1 << 20, Mode::Agent, true);
    let mut o = table(8192, 8000);
    let (asked, plan) = drive(&mut c, &mut o, Duration::from_secs(1), false);
    assert!(plan.global_change(crate::tunables::MAX).is_some());
    assert_eq!(asked, ["observe", "save", "done"]);
    assert_eq!(c.memory().original.get(crate::tunables::MAX), Some(&8192));
    // The memory did not move on: the next step decides the same raise again.
    assert!(c.memory().policy.applied.is_empty());
}

/// A preview (the dry run, `status`) renders and may sample, and never applies, saves or
/// starts a background round; its next reading measures from this one.
#[test]
fn a_preview_only_renders_and_samples() {
    let mut c = fresh(10_000, Mode::Preview, true);
    let mut o = table(10_000, 9_800);
    let (asked, _) = drive(&mut c, &mut o, Duration::from_secs(1), true);
    assert!(
        asked
            .iter()
            .all(|a| ["observe", "persist", "sample", "done"].contains(a)),
        "{asked:?}"
    );
    assert!(asked.contains(&"sample"), "{asked:?}");
    assert!(c.memory().original.is_empty() && c.memory().policy.applied.is_empty());
    assert!(c.baseline.is_some());
}

/// A driver that cannot sample (a fixture tree) is never asked to.
#[test]
fn no_sample_is_asked_of_a_driver_that_cannot() {
    let mut c = fresh(10_000, Mode::Agent, false);
    let mut o = table(10_000, 9_800);
    let (asked, plan) = drive(&mut c, &mut o, Duration::from_secs(1), true);
    assert!(
        !asked.contains(&"sample") && !asked.contains(&"start-sampling"),
        "{asked:?}"
    );
    // The tiers alone decide: the established timeout is among the cuts at the ceiling.
    assert!(!plan.changes.is_empty());
}

/// A quiet namespace's counters are skipped for three idle steps, then read, and a loss
/// in between is measured at that read against the last one: nothing is missed, it is
/// seen at most four idle periods late.
#[test]
fn a_quiet_namespace_is_counted_between_reads_and_its_loss_is_seen_at_the_next() {
    let mut c = fresh(1 << 20, Mode::Agent, true);
    let mut o = table(262_144, 1000);
    let inode = o.namespaces[0].id.inode;
    let idle = c.config().agent.idle_interval;
    let t0 = Duration::from_secs(100);
    drive(&mut c, &mut o, t0, true);
    let count_only = |c: &mut Controller, at: Duration| {
        let Action::Observe { count_only, .. } = c.begin(at) else {
            panic!("a step begins with an observation")
        };
        count_only.contains(&inode)
    };
    let every = QUIET_REREAD.div_ceil(2);
    for k in 1..every {
        assert!(count_only(&mut c, t0 + idle * k), "idle step {k}");
        let mut quiet = o.clone();
        quiet.namespaces[0].stat = None;
        quiet.namespaces[0].counters_unread = true;
        let (_, plan) = drive(&mut c, &mut quiet, t0 + idle * k, true);
        assert_eq!(
            plan.namespaces[0].drop_delta, None,
            "nothing measured unread"
        );
    }
    let due = t0 + idle * every;
    assert!(!count_only(&mut c, due), "read again at idle step {every}");
    crate::policy::testkit::bump(&mut o, 0, "drop", 9);
    let (_, plan) = drive(&mut c, &mut o, due, true);
    assert_eq!(
        plan.namespaces[0].drop_delta,
        Some(9),
        "{:?}",
        plan.explanations
    );
}

/// A namespace near its watermark, or above normal, is read at every step.
#[test]
fn a_busy_namespace_is_never_count_only() {
    let mut c = fresh(1 << 20, Mode::Agent, true);
    let mut o = table(262_144, 120_000);
    drive(&mut c, &mut o, Duration::from_secs(100), true);
    let Action::Observe { count_only, .. } = c.begin(Duration::from_secs(105)) else {
        panic!("a step begins with an observation")
    };
    assert!(count_only.is_empty(), "{count_only:?}");
}

/// The slab's objects as a probe reads them, with a 2-CPU host's unseen entries.
fn total(objects: u64) -> crate::probe::TotalReading {
    crate::probe::TotalReading {
        objects,
        unseen: 256,
    }
}

/// The next wake, which must be a probe: its time, its time to the step, and what it
/// reads first.
fn probe_due(c: &mut Controller) -> (Duration, Duration, crate::probe::ProbeRead) {
    let t = c.next_wake();
    match c.wake(t) {
        Wake::Probe { until_step, read } => (t, until_step, read),
        other => panic!("expected a probe at {t:?}, got {other:?}"),
    }
}

/// Once a step has shown the table's total holds the counts, a probe reads the total
/// first: a flat total reads nothing else; a rise that could bring the fullest namespace
/// to the watermark has every count read, and the counts decide.
#[test]
fn the_probe_reads_the_total_first_once_a_step_shows_it_holds_the_counts() {
    use crate::probe::ProbeRead;
    let mut c = fresh(1 << 30, Mode::Agent, true);
    let mut o = table(262_144, 1000);
    o.host.table_entries = Some(1100);
    let inode = o.namespaces[0].id.inode;
    drive(&mut c, &mut o, Duration::from_secs(1), true);
    let (t, until_step, read) = probe_due(&mut c);
    assert_eq!(read, ProbeRead::Total);
    assert!(
        !c.probed_total(t, until_step, Some(total(1100))),
        "a flat total"
    );
    // 150000 more entries somewhere: 1000 + 150000 is short of the watermark (196608),
    // but at the rate the total rose it would pass it before the step.
    let (t, until_step, read) = probe_due(&mut c);
    assert_eq!(read, ProbeRead::Total);
    assert!(c.probed_total(t, until_step, Some(total(151_100))));
    // The counts say where: the namespace itself, filling fast.
    assert!(c.probed(t, until_step, &[(inode, 151_000)]));
}

/// A total short of the counts (a kernel whose slab does not hold every namespace's
/// entries), or one that cannot be read, is never trusted: the probe reads every count.
#[test]
fn a_total_short_of_the_counts_or_unreadable_is_never_trusted() {
    use crate::probe::{ProbeRead, Trust};
    let mut c = fresh(1 << 30, Mode::Agent, true);
    let mut o = table(262_144, 5000);
    o.host.table_entries = Some(100);
    drive(&mut c, &mut o, Duration::from_secs(1), true);
    assert_eq!(c.total_trust(), Trust::Refused);
    assert_eq!(probe_due(&mut c).2, ProbeRead::Each);

    let mut c = fresh(1 << 30, Mode::Agent, true);
    let mut o = table(262_144, 5000);
    o.host.table_entries = Some(5100);
    drive(&mut c, &mut o, Duration::from_secs(1), true);
    let (t, until_step, read) = probe_due(&mut c);
    assert_eq!(read, ProbeRead::Total);
    assert!(c.probed_total(t, until_step, None), "unreadable: read each");
    assert_eq!(c.total_trust(), Trust::Refused);
    let mut o = table(262_144, 5000);
    o.host.table_entries = Some(5100);
    drive(&mut c, &mut o, t + Duration::from_secs(5), true);
    assert_eq!(probe_due(&mut c).2, ProbeRead::Each, "refused for good");
}

/// A namespace kept unread at a step (its process gone while ctune remembers it) may
/// have grown unmeasured: the probes until the next step read every count.
#[test]
fn a_namespace_left_uncounted_has_every_count_read_until_the_next_step() {
    use crate::probe::ProbeRead;
    let mut c = fresh(1 << 30, Mode::Agent, true);
    let mut o = obs(262_144, &[1000, 500]);
    o.host.table_entries = Some(1600);
    drive(&mut c, &mut o, Duration::from_secs(1), true);
    assert_eq!(probe_due(&mut c).2, ProbeRead::Total);
    let mut o = obs(262_144, &[1000, 500]);
    o.host.table_entries = Some(1600);
    o.namespaces[1].count = None;
    drive(&mut c, &mut o, Duration::from_secs(10), true);
    assert_eq!(probe_due(&mut c).2, ProbeRead::Each);
}

/// `role: auto`: the facts in the observation decide the budget the step takes; a node
/// that joins is adopted at once and said once, a smaller budget only after settling,
/// and the role held is in the memory a restart starts from.
#[test]
fn the_role_follows_the_facts_and_a_smaller_budget_waits() {
    use crate::config::Role;
    use crate::role::{HostFacts, SETTLE, Source};
    let mut c = fresh(100_000, Mode::Agent, false);
    let mut o = table(65536, 100);
    let facts = |cni: bool| HostFacts {
        cni_interfaces: if cni { vec!["cni0".into()] } else { Vec::new() },
        ..HostFacts::default()
    };
    let step = |c: &mut Controller, o: &mut Observation, cni: bool, at: Duration| {
        o.host.facts = Some(facts(cni));
        let plan = drive(c, o, at, true).1;
        let role = plan.role.clone().expect("a step says its role");
        (role, plan.ceiling.memory_fraction)
    };
    let (r, share) = step(&mut c, &mut o, false, Duration::from_secs(1));
    assert_eq!(
        (r.role, r.source, r.changed, share),
        (Role::Host, Source::Auto, None, 0.05)
    );
    let (r, share) = step(&mut c, &mut o, true, Duration::from_secs(2));
    assert_eq!((r.role, share), (Role::Node, 0.10));
    assert_eq!(r.changed.map(|ch| ch.from), Some(Role::Host));
    let (r, _) = step(&mut c, &mut o, true, Duration::from_secs(3));
    assert_eq!(r.changed, None, "said once");
    let gone = Duration::from_secs(4);
    let (r, share) = step(&mut c, &mut o, false, gone);
    assert_eq!(
        (r.role, share),
        (Role::Node, 0.10),
        "held while the facts settle"
    );
    assert_eq!(
        r.pending.map(|p| (p.role, p.seconds_left)),
        Some((Role::Host, SETTLE.as_secs()))
    );
    let restarted = Controller::new(
        capped(100_000),
        Mode::Agent,
        c.memory().clone(),
        false,
        gone,
    );
    assert_eq!(
        restarted.role(),
        Role::Node,
        "a restart keeps the role held"
    );
    let (r, share) = step(&mut c, &mut o, false, gone + SETTLE);
    assert_eq!((r.role, share), (Role::Host, 0.05));
    // Without facts (not read), the role held stays.
    o.host.facts = None;
    assert_eq!(
        drive(&mut c, &mut o, gone + SETTLE * 2, true)
            .1
            .role
            .unwrap()
            .role,
        Role::Host
    );
}
