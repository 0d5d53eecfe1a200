//! One control step, shared by `ctune apply` and the agent: observe, decide, apply,
//! persist, remember. Everything that can fail is tried and reported; nothing is left
//! half-written (files are replaced atomically, the state last).

use std::time::Duration;

use crate::act::apply::{self, Outcome};
use crate::act::atomic;
use crate::act::history;
use crate::act::persist::{self, FileUpdate};
use crate::act::state::{self, State, StateError};
use crate::sense::ctnetlink;
use crate::sense::netns;
use crate::sense::observe::{self, ObserveError};
use crate::sense::roots::Roots;
use ctune_core::config::Config;
use ctune_core::model::{NetnsId, Observation};
use ctune_core::plan::{Change, Plan, Target};
use ctune_core::policy::PolicyState;
use ctune_core::units::printable;

/// One file a step wrote (or failed to write).
#[derive(Debug)]
pub struct FileResult {
    /// What was to be written.
    pub update: FileUpdate,
    /// Written, unchanged, or why not.
    pub result: Result<atomic::WriteOutcome, atomic::WriteError>,
}

/// What one step did.
#[derive(Debug)]
pub struct StepReport {
    /// What was read.
    pub observation: Observation,
    /// What was decided.
    pub plan: Plan,
    /// Each change and whether it took effect.
    pub outcomes: Vec<Outcome>,
    /// Persisted files.
    pub files: Vec<FileResult>,
    /// Notes from observation and rendering.
    pub notes: Vec<String>,
    /// The state could not be saved.
    pub state_error: Option<StateError>,
}

impl StepReport {
    /// What went wrong, in one sentence, or None when everything took effect.
    pub fn failure_summary(&self) -> Option<String> {
        if self.complete() {
            return None;
        }
        let failed = self.outcomes.iter().filter(|o| o.result.is_err()).count();
        Some(
            if self.outcomes.is_empty() && !self.plan.changes.is_empty() {
                "nothing was changed: ctune's state (the operator's values, for `ctune restore`) could not be saved first".into()
            } else if failed > 0 {
                format!("{failed} change(s) did not take effect (see above)")
            } else if self.files.iter().any(|f| f.result.is_err()) {
                "the kernel values are in force, but not all were persisted: they would not survive a reboot (see above)".into()
            } else {
                "the kernel values are in force and persisted, but ctune's state could not be saved (see above)".into()
            },
        )
    }

    /// Whether everything planned took effect and was persisted.
    pub fn complete(&self) -> bool {
        self.outcomes.iter().all(|o| o.result.is_ok())
            && self.files.iter().all(|f| f.result.is_ok())
            && self.state_error.is_none()
    }
}

/// What a step would do now, before anything is written: the plan decided from ctune's
/// saved state, and the files a step would write for it. The dry run shows this.
#[derive(Debug)]
pub struct Preview {
    /// What would change, and why.
    pub plan: Plan,
    /// The persisted files, with their current content for a diff.
    pub files: Vec<FileUpdate>,
    /// Notes from rendering the files.
    pub notes: Vec<String>,
}

/// Decides as a step would from `prev` and renders the files it would write.
pub fn preview(
    roots: &Roots,
    cfg: &Config,
    obs: &Observation,
    prev: &PolicyState,
    now: Duration,
) -> Preview {
    let (plan, next) = ctune_core::policy::decide(obs, cfg, prev, now);
    let (files, notes) = files_for(roots, cfg, obs, &plan, &next);
    Preview { plan, files, notes }
}

/// Readings of the kernel for the one-shot commands (the dry run, `status`): each
/// decision takes the reading before it as the previous sample, so a command tells loss
/// *now* (over its sample) from loss since boot, as the agent does between steps.
/// Without a previous reading, rises are measured against ctune's saved state (the
/// agent's last step, when recent).
#[derive(Debug)]
pub struct Sampler<'a> {
    roots: &'a Roots,
    cfg: &'a Config,
    saved: &'a State,
    last: Option<(Observation, Duration)>,
    /// Onset samples this command took itself (as the agent would at the onset of
    /// pressure, [`Engine::onset`]), added to the saved ones.
    taken: std::collections::BTreeMap<u64, ctune_core::model::Governed>,
    /// Namespaces whose onset sample failed or said nothing, as failed at the end of
    /// time: never due again for this command (`status --watch` reads every second).
    missed: std::collections::BTreeMap<u64, Duration>,
}

/// One reading and the decision on it.
#[derive(Debug)]
pub struct Sample {
    /// What was read.
    pub observation: Observation,
    /// What a step would do now.
    pub preview: Preview,
    /// Since the previous reading (zero when there was none).
    pub elapsed: Duration,
}

impl<'a> Sampler<'a> {
    /// A sampler; with `first_reading`, the first reading is taken now.
    pub fn start(
        roots: &'a Roots,
        cfg: &'a Config,
        saved: &'a State,
        first_reading: bool,
    ) -> Result<Sampler<'a>, ObserveError> {
        let mut s = Sampler {
            roots,
            cfg,
            saved,
            last: None,
            taken: Default::default(),
            missed: Default::default(),
        };
        if first_reading {
            s.last = Some((observe::observe(roots, &cfg.namespaces)?, state::now()));
        }
        Ok(s)
    }

    /// The saved composition samples and the ones this command took.
    fn samples(&self) -> std::collections::BTreeMap<u64, ctune_core::model::Governed> {
        let mut all = self.saved.compositions.clone();
        all.extend(self.taken.clone());
        all
    }

    /// Takes the onset samples the agent would take after deciding `plan` (read-only:
    /// a dump changes nothing); true when one came. One that fails is left out (the tiers
    /// decide, as they would for the agent).
    fn take_onset_samples(&mut self, obs: &Observation, plan: &Plan, now: Duration) -> bool {
        if !self.roots.proc_is_live() {
            return false;
        }
        let samples = self.samples();
        let due =
            ctune_core::policy::onset_samples_due(obs, plan, &samples, &self.missed, self.cfg, now);
        if due.is_empty() {
            return false;
        }
        let before = self.taken.len();
        for (id, result, _) in sample_now(sampler_targets(due), ONSET_LIMITS) {
            match result {
                Ok(g) if g.informative() => {
                    self.taken.insert(id.inode, g);
                }
                _ => {
                    self.missed.insert(id.inode, Duration::MAX);
                }
            }
        }
        self.taken.len() > before
    }

    /// Reads again and decides, with the previous reading as the baseline.
    pub fn read(&mut self) -> Result<Sample, ObserveError> {
        let mut obs = observe::observe(self.roots, &self.cfg.namespaces)?;
        let now = state::now();
        ctune_core::policy::attach_recent_compositions(&mut obs, &self.samples(), self.cfg, now);
        let (prev, elapsed) = match &self.last {
            Some((first, at)) => (
                ctune_core::policy::with_sample(&self.saved.policy, first, *at),
                now.saturating_sub(*at),
            ),
            None => (self.saved.policy.clone(), Duration::ZERO),
        };
        let mut preview = preview(self.roots, self.cfg, &obs, &prev, now);
        if self.take_onset_samples(&obs, &preview.plan, now) {
            ctune_core::policy::attach_recent_compositions(
                &mut obs,
                &self.samples(),
                self.cfg,
                state::now(),
            );
            preview = self::preview(self.roots, self.cfg, &obs, &prev, now);
        }
        self.last = Some((obs.clone(), now));
        Ok(Sample {
            observation: obs,
            preview,
            elapsed,
        })
    }
}

/// The files for the values in force after `plan`: the keys it changes and every key
/// ctune manages in the state that follows it (so a persist that failed is retried).
fn files_for(
    roots: &Roots,
    cfg: &Config,
    obs: &Observation,
    plan: &Plan,
    next: &PolicyState,
) -> (Vec<FileUpdate>, Vec<String>) {
    let managed: Vec<&str> = next.applied.keys().map(String::as_str).collect();
    persist::render(roots, cfg.persist.layout, obs, plan, &managed)
}

/// The bounds of one composition sample in the agent. A dump sends the entries in hash
/// order, a random order, so its first 65536 entries put every key's share within 0.4 %
/// of the table's (95 %): ample for `timeouts.min_share` (1 %), at about 0.16 s of the
/// kernel's time where reading a million entries costs it 2.5 s. Two seconds at most,
/// for a namespace that is a small part of the host's table (the dump walks the whole
/// hash table, every namespace's entries, to find its own).
const SAMPLE_LIMITS: ctnetlink::Limits = ctnetlink::Limits {
    max_entries: 65_536,
    max_time: Duration::from_secs(2),
};

/// The bounds of an onset sample ([`ctune_core::policy::onset_samples_due`]): the step
/// waits for it (after its global changes are in force), so half a second at most; a
/// sample cut shorter than [`ctune_core::model::MIN_PARTIAL_SAMPLE`] entries is left for
/// the background one.
const ONSET_LIMITS: ctnetlink::Limits = ctnetlink::Limits {
    max_entries: SAMPLE_LIMITS.max_entries,
    max_time: Duration::from_millis(500),
};

/// The namespaces to sample, as handles to enter (`true`: ctune's own, not entered).
fn sampler_targets(due: Vec<&ctune_core::model::NamespaceObs>) -> Vec<(netns::Handle, bool)> {
    due.into_iter()
        .map(|n| {
            let h = netns::Handle {
                id: n.id.clone(),
                path: n.handle.clone().unwrap_or_default(),
            };
            (h, n.handle.is_none())
        })
        .collect()
}

/// Starts a thread that samples `due` within `limits`, one after the other. A new thread
/// starts in the namespace of the one that creates it: ctune's own, which it samples
/// first, before entering the others.
fn spawn_sampler(
    mut due: Vec<(netns::Handle, bool)>,
    limits: ctnetlink::Limits,
) -> Option<std::thread::JoinHandle<Vec<TakenSample>>> {
    std::thread::Builder::new()
        .name("ctune-sample".into())
        .spawn(move || {
            due.sort_by_key(|(_, own)| !own);
            due.into_iter()
                .map(|(h, own)| {
                    let taken_at = state::now();
                    let result = if own { Ok(()) } else { netns::enter(&h) }.and_then(|()| {
                        ctnetlink::governed(&limits, taken_at).map_err(|e| e.to_string())
                    });
                    (h.id, result, taken_at)
                })
                .collect()
        })
        .ok()
}

/// Samples `due` within `limits` and waits for the samples ([`spawn_sampler`]): none
/// when no thread could be started.
fn sample_now(due: Vec<(netns::Handle, bool)>, limits: ctnetlink::Limits) -> Vec<TakenSample> {
    spawn_sampler(due, limits)
        .and_then(|h| h.join().ok())
        .unwrap_or_default()
}

/// Gives the observation the state's composition samples, as the agent's decision sees
/// them: a sample older than three `agent.composition_interval`s is left out.
pub fn attach_samples(obs: &mut Observation, state: &State, cfg: &Config, now: Duration) {
    ctune_core::policy::attach_recent_compositions(obs, &state.compositions, cfg, now);
}

/// The imperative shell around the policy.
#[derive(Debug)]
pub struct Engine {
    /// Where everything lives.
    pub roots: Roots,
    /// The config in force.
    pub config: Config,
    /// What ctune remembers.
    pub state: State,
    /// The state as last saved (or loaded), without its sample times.
    saved: State,
    /// Take a due composition sample before deciding (and decide again with it), not in
    /// the background after applying: for the one-shot `apply`, where a second's dump
    /// delays nothing that waits on it. The agent's steps wait only for an onset sample
    /// (a namespace newly pressed, [`Engine::onset`]), and only once max is raised.
    pub sample_before_deciding: bool,
    /// Namespaces whose last sample failed, and when: not tried again before
    /// `agent.composition_interval` has passed (their timeouts follow the tiers).
    sample_failed: std::collections::BTreeMap<u64, Duration>,
    /// Namespaces whose onset sample read too little to say anything, and when: no onset
    /// sample again before `agent.composition_interval` has passed (the background one,
    /// with its longer time, still runs), so no step waits for them over and over.
    onset_missed: std::collections::BTreeMap<u64, Duration>,
    /// The thread taking composition samples, while it runs.
    sampling: Option<std::thread::JoinHandle<Vec<TakenSample>>>,
}

/// One namespace's composition sample as the sampling thread returns it, with when it
/// was taken.
type TakenSample = (
    NetnsId,
    Result<ctune_core::model::Governed, String>,
    Duration,
);

impl Engine {
    /// Loads the state and prepares a step.
    pub fn new(roots: Roots, config: Config) -> Result<Engine, StateError> {
        let state = state::load(&roots)?;
        Ok(Engine {
            roots,
            config,
            saved: state::untimed(&state),
            state,
            sample_before_deciding: false,
            sample_failed: Default::default(),
            onset_missed: Default::default(),
            sampling: None,
        })
    }

    /// Saves the state when it changed in more than the times of the counter samples:
    /// the agent steps every second, and a router's flash should not be rewritten for a
    /// timestamp. A later `ctune apply` then sees an older sample, which only makes it
    /// measure no rise from it.
    fn save_if_changed(&mut self) -> Result<(), StateError> {
        let untimed = state::untimed(&self.state);
        if untimed == self.saved {
            return Ok(());
        }
        state::save(&self.roots, &self.state)?;
        self.saved = untimed;
        Ok(())
    }

    /// Takes in the samples of a finished sampling thread (without waiting for one still
    /// running, unless `wait`); returns notes on the dumps that failed.
    fn collect_samples(&mut self, wait: bool) -> Vec<String> {
        let finished = self.sampling.as_ref().is_some_and(|h| h.is_finished());
        if !(finished || (wait && self.sampling.is_some())) {
            return Vec::new();
        }
        let Some(handle) = self.sampling.take() else {
            return Vec::new();
        };
        let results = handle.join().unwrap_or_else(|_| Vec::new());
        self.take_in(results, false)
    }

    /// Keeps the samples taken; returns notes on the dumps that failed. A sample too
    /// small to weigh timeouts ([`ctune_core::model::Governed::informative`]) is kept
    /// out: an `onset` one leaves the namespace due for the background sample (with its
    /// longer time), any other counts as a failure (not retried before the interval).
    fn take_in(&mut self, results: Vec<TakenSample>, onset: bool) -> Vec<String> {
        let mut notes = Vec::new();
        for (id, result, taken_at) in results {
            match result {
                Ok(g) if g.informative() => {
                    self.state.compositions.insert(id.inode, g);
                    self.sample_failed.remove(&id.inode);
                }
                Ok(_) if onset => {
                    self.onset_missed.insert(id.inode, taken_at);
                }
                Ok(g) => {
                    self.sample_failed.insert(id.inode, taken_at);
                    notes.push(format!(
                        "netns {}: the composition sample read only {} entries before its time \
                         was up; its timeouts follow the tiers alone",
                        printable(&id.name),
                        g.entries
                    ));
                }
                Err(e) => {
                    self.sample_failed.insert(id.inode, taken_at);
                    notes.push(format!(
                        "netns {}: no composition sample ({e}); its timeouts follow the tiers alone",
                        printable(&id.name)
                    ));
                }
            }
        }
        notes
    }

    /// After a step: forgets the samples of namespaces back at normal (or gone), and
    /// starts a thread that samples each namespace at the elevated level or above whose
    /// sample is older than `agent.composition_interval` (unless one is running). The
    /// steps go on meanwhile: a dump of a large table under a flood takes seconds, and
    /// must not hold up a raise of max; the next step after it ends takes the samples in.
    fn start_sampling(&mut self, obs: &Observation, plan: &Plan, now: Duration) {
        ctune_core::policy::forget_compositions(&mut self.state.compositions, plan, &self.config);
        let every = self.config.agent.composition_interval;
        self.onset_missed
            .retain(|_, at| now.saturating_sub(*at) < every);
        if self.sampling.is_some() || !self.roots.proc_is_live() {
            return;
        }
        let due = ctune_core::policy::compositions_due(
            obs,
            plan,
            &self.state.compositions,
            &self.sample_failed,
            &self.config,
            now,
        );
        let due = sampler_targets(due);
        if due.is_empty() {
            return;
        }
        self.sampling = spawn_sampler(due, SAMPLE_LIMITS);
    }

    /// At the onset of pressure ([`ctune_core::policy::onset_samples_due`]): applies
    /// `plan`'s global changes, samples the namespaces due (waiting, within
    /// [`ONSET_LIMITS`] each; first, as long again, for a background sample under way,
    /// which may bring theirs) and decides again with the samples. A step waits 1.5 s at
    /// most ([`ctune_core::policy::MAX_ONSET_SAMPLES`] dumps and that wait), and a
    /// namespace whose onset sample said nothing is not waited for again within the
    /// interval. Returns the plan and state to go on with (the
    /// new decision with the global changes applied) and the outcomes of those changes;
    /// `plan` and `next` as they were, and no outcome, when no namespace is due. The
    /// operator's values of the global keys must be saved before.
    fn onset(
        &mut self,
        obs: &mut Observation,
        (plan, next): (Plan, PolicyState),
        prev: &PolicyState,
        now: Duration,
        notes: &mut Vec<String>,
    ) -> (Plan, PolicyState, Vec<Outcome>) {
        if !self.roots.proc_is_live() {
            return (plan, next, Vec::new());
        }
        let mut not_now = self.sample_failed.clone();
        not_now.extend(self.onset_missed.iter().map(|(k, v)| (*k, *v)));
        let due: Vec<u64> = ctune_core::policy::onset_samples_due(
            obs,
            &plan,
            &self.state.compositions,
            &not_now,
            &self.config,
            now,
        )
        .iter()
        .map(|n| n.id.inode)
        .collect();
        if due.is_empty() {
            return (plan, next, Vec::new());
        }
        let globals: Vec<Change> = plan
            .changes
            .iter()
            .filter(|c| c.target == Target::Global)
            .cloned()
            .collect();
        let early = apply::apply(&self.roots, obs, &globals);
        // A background sample under way may bring theirs: waited for as long as an onset
        // sample may take, no longer (it may be dumping several large tables).
        let deadline = std::time::Instant::now() + ONSET_LIMITS.max_time;
        while self.sampling.as_ref().is_some_and(|h| !h.is_finished())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        notes.extend(self.collect_samples(false));
        let fresh = state::now();
        attach_samples(obs, &self.state, &self.config, fresh);
        let still: Vec<&ctune_core::model::NamespaceObs> = obs
            .namespaces
            .iter()
            .filter(|n| due.contains(&n.id.inode) && n.composition.is_none())
            .filter(|n| !self.sample_failed.contains_key(&n.id.inode))
            .collect();
        if self.sampling.is_some() {
            // Still running: no second thread, the tiers decide this step, and these
            // namespaces are not waited for again within the interval.
            for n in still {
                self.onset_missed.insert(n.id.inode, fresh);
            }
        } else if !still.is_empty() {
            let taken = sample_now(sampler_targets(still), ONSET_LIMITS);
            notes.extend(self.take_in(taken, true));
            attach_samples(obs, &self.state, &self.config, state::now());
        }
        let (again, next) = ctune_core::policy::decide(obs, &self.config, prev, now);
        (
            ctune_core::policy::with_globals_of(again, &plan),
            next,
            early,
        )
    }

    /// Observes, decides, applies, persists, and saves the state.
    pub fn step(&mut self, now: Duration) -> Result<StepReport, ObserveError> {
        // Only the timeouts ctune may change (or has changed): a step reads a dozen
        // files, not every key the kernel has.
        let mut keys: std::collections::BTreeSet<String> = self
            .config
            .timeouts
            .floors
            .keys()
            .map(|k| format!("nf_conntrack_{k}"))
            .collect();
        for ns in self.state.policy.namespaces.values() {
            keys.extend(ns.lowered.keys().cloned());
        }
        let mut obs = observe::observe_keys(
            &self.roots,
            &self.config.namespaces,
            &observe::TimeoutKeys::Only(keys),
        )?;
        let mut sample_notes = self.collect_samples(false);
        attach_samples(&mut obs, &self.state, &self.config, now);
        let prev = self.state.policy.clone();
        let (mut plan, mut next) = ctune_core::policy::decide(&obs, &self.config, &prev, now);
        if self.sample_before_deciding {
            self.start_sampling(&obs, &plan, now);
            if self.sampling.is_some() {
                sample_notes.extend(self.collect_samples(true));
                // Sampled or failed: the tiers decide where no sample came. The samples
                // were taken after `now` (one namespace after the other): their age is
                // taken at the clock now.
                attach_samples(&mut obs, &self.state, &self.config, state::now());
                (plan, next) = ctune_core::policy::decide(&obs, &self.config, &prev, now);
            }
        }
        // The operator's value from before ctune's first change of a global key is saved
        // before the kernel is touched: if it cannot be, nothing is changed, so `restore`
        // can always put it back.
        let mut originals_added = false;
        for ch in plan.changes.iter().filter(|c| c.target == Target::Global) {
            if !self.state.original.contains_key(&ch.key) {
                self.state.original.insert(ch.key.clone(), ch.old);
                originals_added = true;
            }
        }
        if originals_added && let Err(e) = self.save_if_changed() {
            let notes = obs.notes.clone();
            return Ok(StepReport {
                observation: obs,
                plan,
                outcomes: Vec::new(),
                files: Vec::new(),
                notes,
                state_error: Some(e),
            });
        }
        let mut outcomes = Vec::new();
        if !self.sample_before_deciding {
            (plan, next, outcomes) =
                self.onset(&mut obs, (plan, next), &prev, now, &mut sample_notes);
        }
        // The global changes, when the onset applied them already, are not applied again.
        let rest: Vec<Change> = plan
            .changes
            .iter()
            .filter(|c| outcomes.is_empty() || c.target != Target::Global)
            .cloned()
            .collect();
        outcomes.extend(apply::apply(&self.roots, &obs, &rest));
        for o in outcomes.iter().filter(|o| o.result.is_err()) {
            next.forget_failed(&prev, &o.change);
        }
        // Persist what is in force now: the plan without the changes that failed.
        let mut effective = plan.clone();
        effective.changes = outcomes
            .iter()
            .filter(|o| o.result.is_ok())
            .map(|o| o.change.clone())
            .collect();
        let (updates, file_notes) = files_for(&self.roots, &self.config, &obs, &effective, &next);
        let files = updates
            .into_iter()
            .map(|update| {
                let result = atomic::write(&update.path, update.new.as_bytes(), 0o644);
                FileResult { update, result }
            })
            .collect();
        self.state.policy = next;
        let mut notes = obs.notes.clone();
        notes.extend(sample_notes);
        self.start_sampling(&obs, &plan, now);
        let state_error = self.save_if_changed().err();
        notes.extend(file_notes);
        // The record of what took effect; a failure to keep it never fails the step.
        if let Err(e) =
            history::record_step(&self.roots, &plan, &outcomes, std::time::SystemTime::now())
        {
            notes.push(format!(
                "this step's changes are not in ctune's history: {e}"
            ));
        }
        Ok(StepReport {
            observation: obs,
            plan,
            outcomes,
            files,
            notes,
            state_error,
        })
    }
}
