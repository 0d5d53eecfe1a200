//! One step as a state machine: each phase is a function that takes the driver's answer
//! and returns the next [`Action`].

use std::time::Duration;

use super::samples::targets;
use super::{Action, BACKGROUND, Controller, Event, Mode, ONSET};
use crate::model::Observation;
use crate::plan::{Change, Plan, Target};
use crate::policy::{self, PolicyState};

/// Where a step is, waiting for which answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// The finished background samples, before deciding.
    Collecting,
    /// `apply`'s sample before deciding: started.
    SampleStarting,
    /// `apply`'s sample before deciding: waited for.
    SampleWaiting,
    /// The operator's originals, before the kernel is touched.
    SavingOriginals,
    /// The onset's global changes.
    OnsetApplying,
    /// The onset's wait for a background round.
    OnsetCollecting,
    /// The onset's own samples.
    OnsetSampling,
    /// The rest of the changes.
    Applying,
    /// The files for what is in force.
    Persisting,
    /// The background round after the step.
    Starting,
    /// The memory, last.
    Saving,
    /// A preview's files; `true` once decided again with onset samples.
    Previewing(bool),
    /// A preview's onset samples.
    PreviewSampling,
    /// The timeouts of namespaces that rose while unread.
    ReadingTimeouts,
}

/// The step in progress.
#[derive(Debug)]
pub(super) struct Step {
    phase: Phase,
    /// The step's time.
    now: Duration,
    /// The decision before it.
    prev: PolicyState,
    /// What is decided (None before the first decision).
    plan: Option<Plan>,
    /// The memory after it.
    next: PolicyState,
    /// The changes of the last [`Action::Apply`], until answered.
    asking: Vec<Change>,
    /// The changes applied, and whether each took effect.
    applied: Vec<(Change, bool)>,
    /// The onset applied the global changes.
    early: bool,
    /// The namespaces sampled at the onset.
    onset: Vec<u64>,
    /// What went wrong with samples.
    notes: Vec<crate::model::Note>,
    /// The role the step decides with.
    role: crate::role::InForce,
}

/// Takes the answer to the step's last action.
pub(super) fn handle(
    c: &mut Controller,
    obs: &mut Observation,
    ev: Event,
    clock: Duration,
) -> Action {
    let Some(phase) = c.step.as_ref().map(|s| s.phase) else {
        return match ev {
            Event::Observed => observed(c, obs, clock),
            other => protocol(c, other),
        };
    };
    match (phase, ev) {
        (Phase::Collecting, Event::Collected { samples, running }) => {
            collected(c, samples, running, false);
            decide(c, obs)
        }
        (Phase::ReadingTimeouts, Event::TimeoutsRead) => {
            redecide(c, obs);
            decided(c, obs)
        }
        (Phase::SampleStarting, Event::Started(true)) => {
            c.samples.running = true;
            to(
                c,
                Phase::SampleWaiting,
                Action::Collect {
                    wait: Duration::MAX,
                },
            )
        }
        (Phase::SampleStarting, Event::Started(false)) => originals(c, obs),
        (Phase::SampleWaiting, Event::Collected { samples, running }) => {
            collected(c, samples, running, false);
            attach(c, obs, clock);
            redecide(c, obs);
            originals(c, obs)
        }
        (Phase::SavingOriginals, Event::Saved(true)) => onset(c, obs),
        (Phase::SavingOriginals, Event::Saved(false)) => done(c, obs, clock),
        (Phase::OnsetApplying, Event::Applied(ok)) => {
            record(c, ok);
            onset_collect(c, obs, clock)
        }
        (Phase::OnsetCollecting, Event::Collected { samples, running }) => {
            collected(c, samples, running, false);
            onset_sample(c, obs, clock)
        }
        (Phase::OnsetSampling, Event::Sampled(taken)) => {
            let notes = c.samples.take_in(&mut c.memory.compositions, taken, true);
            step(c).notes.extend(notes);
            attach(c, obs, clock);
            redecide(c, obs);
            apply_rest(c)
        }
        (Phase::Applying, Event::Applied(ok)) => {
            record(c, ok);
            persist(c)
        }
        (Phase::Persisting, Event::Persisted) => start_background(c, obs),
        (Phase::Starting, Event::Started(ok)) => {
            c.samples.running = ok;
            to(c, Phase::Saving, Action::Save)
        }
        (Phase::Saving, Event::Saved(_)) => done(c, obs, clock),
        (Phase::Previewing(again), Event::Persisted) => preview_onset(c, obs, again),
        (Phase::PreviewSampling, Event::Sampled(taken)) => preview_sampled(c, obs, taken, clock),
        (_, other) => protocol(c, other),
    }
}

/// A preview's onset samples are in: decided again with them, and rendered.
fn preview_sampled(
    c: &mut Controller,
    obs: &mut Observation,
    taken: Vec<super::Taken>,
    clock: Duration,
) -> Action {
    let s = &mut c.samples;
    if s.take_in_preview(&mut c.memory.compositions, taken) {
        attach(c, obs, clock);
        redecide(c, obs);
        let (plan, managed) = (step(c).plan().clone(), managed(c));
        to(
            c,
            Phase::Previewing(true),
            Action::Persist { plan, managed },
        )
    } else {
        preview_done(c, obs)
    }
}

/// A driver answered what was not asked: a bug in the driver (the drivers are this
/// crate's callers, and their tests run every phase), not a condition of the host.
fn protocol(c: &mut Controller, ev: Event) -> Action {
    let phase = c.step.as_ref().map(|s| s.phase);
    panic!("ctune bug: the step at {phase:?} was answered with {ev:?}");
}

impl Step {
    fn plan(&self) -> &Plan {
        self.plan.as_ref().expect("decided")
    }
}

fn step(c: &mut Controller) -> &mut Step {
    c.step.as_mut().expect("a step in progress")
}

fn to(c: &mut Controller, phase: Phase, action: Action) -> Action {
    step(c).phase = phase;
    action
}

/// The samples the decision sees, attached to `obs` at `at`.
fn attach(c: &Controller, obs: &mut Observation, at: Duration) {
    policy::attach_recent_compositions(obs, &c.memory.compositions, &c.cfg, at);
}

/// A background round's samples, when it finished.
fn collected(c: &mut Controller, taken: Vec<super::Taken>, running: bool, onset: bool) {
    c.samples.running = running;
    let notes = c.samples.take_in(&mut c.memory.compositions, taken, onset);
    step(c).notes.extend(notes);
}

/// The observation is read: the step begins, at `now`.
fn observed(c: &mut Controller, obs: &mut Observation, now: Duration) -> Action {
    let prev = match (&c.mode, &c.baseline) {
        (Mode::Preview, Some((first, at))) => policy::with_sample(&c.memory.policy, first, *at),
        _ => c.memory.policy.clone(),
    };
    let role = take_role(c, obs, now);
    c.step = Some(Step {
        phase: Phase::Collecting,
        now,
        next: prev.clone(),
        prev,
        plan: None,
        asking: Vec::new(),
        applied: Vec::new(),
        early: false,
        onset: Vec::new(),
        notes: Vec::new(),
        role,
    });
    if c.mode != Mode::Preview && c.samples.running {
        return Action::Collect {
            wait: Duration::ZERO,
        };
    }
    decide(c, obs)
}

/// The role for this step, from the host's facts in `obs` under `role: auto`; the
/// config in force follows it.
fn take_role(c: &mut Controller, obs: &Observation, now: Duration) -> crate::role::InForce {
    let (held, role) = crate::role::in_force(
        c.base.role,
        c.memory.role.as_ref(),
        obs.host.facts.as_ref(),
        now,
    );
    c.memory.role = held;
    let mut role = role;
    role.config_keys = c.base.budget_keys_set.clone();
    if role.role != c.role {
        c.role = role.role;
        c.cfg = c.base.for_role(role.role);
    }
    role
}

/// Decides on `obs` with the samples in: the first decision of the step. A namespace
/// whose timeouts were left unread and that rose above normal has them read first.
fn decide(c: &mut Controller, obs: &mut Observation) -> Action {
    let now = step(c).now;
    attach(c, obs, now);
    redecide(c, obs);
    let targets = unread_above_normal(obs, step(c).plan());
    if !targets.is_empty() {
        let keys = c.keys.clone();
        return to(
            c,
            Phase::ReadingTimeouts,
            Action::ReadTimeouts { targets, keys },
        );
    }
    decided(c, obs)
}

/// The namespaces whose level in `plan` is above normal and whose timeouts were not read.
fn unread_above_normal(obs: &Observation, plan: &Plan) -> Vec<super::SampleTarget> {
    let above = plan.above(crate::pressure::Level::Normal);
    obs.namespaces
        .iter()
        .filter(|n| (n.timeouts_unread || n.counters_unread) && above.contains(&n.id.inode))
        .map(|n| super::SampleTarget {
            id: n.id.clone(),
            handle: n.handle.clone(),
        })
        .collect()
}

/// Goes on from the step's decision, as the mode asks.
fn decided(c: &mut Controller, obs: &mut Observation) -> Action {
    match c.mode {
        Mode::Preview => {
            let (plan, managed) = (step(c).plan().clone(), managed(c));
            to(
                c,
                Phase::Previewing(false),
                Action::Persist { plan, managed },
            )
        }
        Mode::Apply => sample_before_deciding(c, obs),
        Mode::Agent => originals(c, obs),
    }
}

/// Decides (again) with what `obs` holds now, from the memory before the step. After an
/// onset, the global changes stay those applied ([`policy::with_globals_of`]).
fn redecide(c: &mut Controller, obs: &Observation) {
    let s = c.step.as_mut().expect("a step in progress");
    let (mut plan, next) = policy::decide(obs, &c.cfg, &s.prev, s.now);
    plan.role = Some(s.role.clone());
    s.plan = Some(match s.plan.take() {
        Some(first) if s.early => policy::with_globals_of(plan, &first),
        _ => plan,
    });
    s.next = next;
}

/// `apply`: the due samples first, waited for, and the decision taken again with them.
fn sample_before_deciding(c: &mut Controller, obs: &mut Observation) -> Action {
    match background_due(c, obs) {
        Some(action) => to(c, Phase::SampleStarting, action),
        None => originals(c, obs),
    }
}

/// The operator's value from before ctune's first change of a global key is saved before
/// the kernel is touched: if it cannot be, nothing is changed, so `restore` can always
/// put it back.
fn originals(c: &mut Controller, obs: &mut Observation) -> Action {
    let mut added = false;
    for ch in step(c).plan().changes.clone() {
        if ch.target == Target::Global && !c.memory.original.contains_key(&ch.key) {
            c.memory.original.insert(ch.key.clone(), ch.old);
            added = true;
        }
    }
    if added {
        return to(c, Phase::SavingOriginals, Action::Save);
    }
    onset(c, obs)
}

/// At the onset of pressure ([`policy::onset_samples_due`]), the agent applies the plan's
/// global changes, samples the namespaces due (first waiting, as long as an onset sample
/// may take, for a background round under way, which may bring theirs) and decides
/// again with the samples. A step waits 1.5 s at most, and a namespace whose onset
/// sample said nothing is not waited for again within the interval.
fn onset(c: &mut Controller, obs: &mut Observation) -> Action {
    if c.mode != Mode::Agent || !c.can_sample {
        return apply_rest(c);
    }
    let not_now = c.samples.not_now();
    let s = c.step.as_ref().expect("a step in progress");
    let due: Vec<u64> = policy::onset_samples_due(
        obs,
        s.plan(),
        &c.memory.compositions,
        &not_now,
        &c.cfg,
        s.now,
    )
    .iter()
    .map(|n| n.id.inode)
    .collect();
    if due.is_empty() {
        return apply_rest(c);
    }
    let globals: Vec<Change> = s
        .plan()
        .changes
        .iter()
        .filter(|ch| ch.target == Target::Global)
        .cloned()
        .collect();
    let s = step(c);
    s.onset = due;
    s.early = true;
    if globals.is_empty() {
        let now = s.now;
        return onset_collect(c, obs, now);
    }
    ask(c, Phase::OnsetApplying, globals)
}

/// The onset's wait for a background round under way.
fn onset_collect(c: &mut Controller, obs: &mut Observation, clock: Duration) -> Action {
    if c.samples.running {
        let wait = ONSET.max_time;
        return to(c, Phase::OnsetCollecting, Action::Collect { wait });
    }
    onset_sample(c, obs, clock)
}

/// The onset's own samples: the namespaces due that the background round did not bring.
/// While that round still runs, none (no second sampler): the tiers decide this step.
fn onset_sample(c: &mut Controller, obs: &mut Observation, clock: Duration) -> Action {
    attach(c, obs, clock);
    let s = c.step.as_ref().expect("a step in progress");
    let still: Vec<&crate::model::NamespaceObs> = obs
        .namespaces
        .iter()
        .filter(|n| s.onset.contains(&n.id.inode) && n.composition.is_none())
        .filter(|n| !c.samples.failed.contains_key(&n.id.inode))
        .collect();
    if c.samples.running {
        for n in still {
            c.samples.missed.insert(n.id.inode, clock);
        }
    } else if !still.is_empty() {
        let targets = targets(still);
        let action = Action::Sample {
            targets,
            bounds: ONSET,
        };
        return to(c, Phase::OnsetSampling, action);
    }
    redecide(c, obs);
    apply_rest(c)
}

/// The plan's changes, but the global ones the onset applied already.
fn apply_rest(c: &mut Controller) -> Action {
    let s = step(c);
    let rest: Vec<Change> = s
        .plan()
        .changes
        .iter()
        .filter(|ch| !s.early || ch.target != Target::Global)
        .cloned()
        .collect();
    if rest.is_empty() {
        return persist(c);
    }
    ask(c, Phase::Applying, rest)
}

/// Asks for `changes` to be applied, remembering them for the answer.
fn ask(c: &mut Controller, phase: Phase, changes: Vec<Change>) -> Action {
    step(c).asking = changes.clone();
    to(c, phase, Action::Apply(changes))
}

/// Keeps whether each change of the last [`Action::Apply`] took effect; a failed one is
/// forgotten by the next memory, so the next decision sees the truth (and tries again).
fn record(c: &mut Controller, ok: Vec<bool>) {
    let s = step(c);
    for (ch, ok) in std::mem::take(&mut s.asking).into_iter().zip(ok) {
        if !ok {
            s.next.forget_failed(&s.prev, &ch);
        }
        s.applied.push((ch, ok));
    }
}

/// Every global key ctune manages after the step.
fn managed(c: &mut Controller) -> Vec<String> {
    step(c).next.applied.keys().cloned().collect()
}

/// Persist what is in force now: the plan without the changes that failed.
fn persist(c: &mut Controller) -> Action {
    let managed = managed(c);
    let s = step(c);
    let mut plan = s.plan().clone();
    plan.changes = s
        .applied
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(ch, _)| ch.clone())
        .collect();
    to(c, Phase::Persisting, Action::Persist { plan, managed })
}

/// After the step: forgets the samples of namespaces back at normal (or gone), and starts
/// a background round for each namespace at the elevated level or above whose sample is
/// older than `agent.composition_interval` (unless one runs). The steps go on meanwhile:
/// a dump of a large table under a flood takes seconds, and must not hold up a raise of
/// max; the next step after it ends takes the samples in.
fn start_background(c: &mut Controller, obs: &Observation) -> Action {
    let s = step(c);
    c.memory.policy = s.next.clone();
    match background_due(c, obs) {
        Some(action) => to(c, Phase::Starting, action),
        None => to(c, Phase::Saving, Action::Save),
    }
}

/// The background round due after deciding: forgets the samples of namespaces no longer
/// pressed, and the misses older than the interval; none while a round runs, or where
/// the driver cannot sample.
fn background_due(c: &mut Controller, obs: &Observation) -> Option<Action> {
    let s = c.step.as_ref().expect("a step in progress");
    let (plan, now) = (s.plan(), s.now);
    policy::forget_compositions(&mut c.memory.compositions, plan, &c.cfg);
    let every = c.cfg.agent.composition_interval;
    c.samples
        .missed
        .retain(|_, at| now.saturating_sub(*at) < every);
    if c.samples.running || !c.can_sample {
        return None;
    }
    let due = policy::compositions_due(
        obs,
        plan,
        &c.memory.compositions,
        &c.samples.failed,
        &c.cfg,
        now,
    );
    (!due.is_empty()).then(|| Action::StartSampling {
        targets: targets(due),
        bounds: BACKGROUND,
    })
}

/// The step is over: the probe and the schedule learn from it.
fn done(c: &mut Controller, obs: &Observation, clock: Duration) -> Action {
    let s = c.step.take().expect("a step in progress");
    let raised = s
        .applied
        .iter()
        .any(|(ch, ok)| *ok && ch.key == crate::tunables::MAX);
    c.pacing
        .after_step(obs, s.plan(), raised, (s.now, clock), &c.cfg);
    Action::Done {
        plan: s.plan.expect("a step ends decided"),
        notes: s.notes,
    }
}

/// A preview's onset samples: those the agent would take after deciding this plan.
fn preview_onset(c: &mut Controller, obs: &mut Observation, again: bool) -> Action {
    if again || !c.can_sample {
        return preview_done(c, obs);
    }
    let s = c.step.as_ref().expect("a step in progress");
    let due = policy::onset_samples_due(
        obs,
        s.plan(),
        &c.memory.compositions,
        &c.samples.missed,
        &c.cfg,
        s.now,
    );
    if due.is_empty() {
        return preview_done(c, obs);
    }
    let targets = targets(due);
    let action = Action::Sample {
        targets,
        bounds: ONSET,
    };
    to(c, Phase::PreviewSampling, action)
}

/// A preview ends: this reading is the baseline of the next.
fn preview_done(c: &mut Controller, obs: &Observation) -> Action {
    let s = c.step.take().expect("a step in progress");
    c.baseline = Some((obs.clone(), s.now));
    Action::Done {
        plan: s.plan.expect("a step ends decided"),
        notes: s.notes,
    }
}
