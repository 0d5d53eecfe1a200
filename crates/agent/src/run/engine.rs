//! The kernel's side of the control step ([`ctune_core::controller`]), for `ctune
//! apply`, the agent, the dry run and `status`: the controller decides what comes next,
//! this reads, applies, samples, persists and saves. Everything that can fail is tried
//! and reported; nothing is left half-written (files are replaced atomically, the state
//! last).

use ctune_core::model::{Note, NoteKind};
use std::collections::HashMap;
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
use ctune_core::controller::{Action, Controller, Event, Mode, SampleBounds, SampleTarget, Taken};
use ctune_core::model::Observation;
use ctune_core::plan::Plan;

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
    pub notes: Vec<Note>,
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

/// Readings of the kernel for the one-shot commands (the dry run, `status`): the
/// controller in [`Mode::Preview`], which takes each reading's predecessor as the
/// baseline of the counters, so a command tells loss *now* (over its sample) from loss
/// since boot, as the agent does between steps. Without a previous reading, rises are
/// measured against ctune's saved state (the agent's last step, when recent).
#[derive(Debug)]
pub struct Sampler<'a> {
    roots: &'a Roots,
    ctl: Controller,
    /// When the previous reading was taken.
    last: Option<Duration>,
    /// Read every timeout of every namespace (`status` shows them), not only where the
    /// decision needs them (the dry run).
    everywhere: bool,
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
        cfg: &Config,
        saved: &State,
        first_reading: bool,
    ) -> Result<Sampler<'a>, ObserveError> {
        let now = state::now();
        let memory = saved.memory();
        let ctl = Controller::new(
            cfg.clone(),
            Mode::Preview,
            memory,
            roots.proc_is_live(),
            now,
        );
        let mut s = Sampler {
            roots,
            ctl,
            last: None,
            everywhere: false,
        };
        if first_reading {
            // The baseline is for the counters' rise: the timeouts come with the reading.
            let own_only = observe::Reads {
                keys: observe::TimeoutKeys::All,
                only_in: Some(Default::default()),
                count_only: Default::default(),
                keep_counts: false,
                seen: None,
            };
            let obs = observe::observe_with(roots, &cfg.namespaces, &own_only)?;
            let at = state::now();
            s.ctl.set_baseline(obs, at);
            s.last = Some(at);
        }
        Ok(s)
    }

    /// Reads every timeout of every namespace, not only those the decision needs.
    pub fn everywhere(mut self) -> Self {
        self.everywhere = true;
        self
    }

    /// Reads again and decides, with the previous reading as the baseline.
    pub fn read(&mut self) -> Result<Sample, ObserveError> {
        let Action::Observe { timeouts, .. } = self.ctl.begin(state::now()) else {
            unreachable!("a step begins with an observation")
        };
        let reads = match self.everywhere {
            true => observe::Reads::everywhere(),
            // A one-shot command keeps nothing for later steps.
            false => observe::Reads::of(&timeouts, &Default::default(), false),
        };
        let mut obs = observe::observe_with(self.roots, &self.ctl.config().namespaces, &reads)?;
        let now = state::now();
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |at| now.saturating_sub(at));
        let mut preview = None;
        let mut action = self.ctl.handle(&mut obs, Event::Observed, now);
        loop {
            let event = match action {
                Action::Persist { plan, managed } => {
                    let managed: Vec<&str> = managed.iter().map(String::as_str).collect();
                    let layout = self.ctl.config().persist.layout;
                    let (files, notes) = persist::render(self.roots, layout, &obs, &plan, &managed);
                    preview = Some(Preview { plan, files, notes });
                    Event::Persisted
                }
                Action::Sample { targets, bounds } => Event::Sampled(sample_now(targets, bounds)),
                Action::ReadTimeouts { targets, keys } => {
                    read_timeouts(self.roots, &mut obs, &targets, keys.as_ref())
                }
                Action::Done { .. } => break,
                other => unreachable!("a preview does not {other:?}"),
            };
            action = self.ctl.handle(&mut obs, event, state::now());
        }
        self.last = Some(now);
        Ok(Sample {
            observation: obs,
            preview: preview.expect("a preview renders its files"),
            elapsed,
        })
    }
}

/// Answers [`Action::ReadTimeouts`].
fn read_timeouts(
    roots: &Roots,
    obs: &mut Observation,
    targets: &[SampleTarget],
    keys: Option<&std::collections::BTreeSet<String>>,
) -> Event {
    let targets: Vec<_> = targets
        .iter()
        .filter_map(|t| Some((t.id.clone(), t.handle.clone()?)))
        .collect();
    observe::read_timeouts_into(roots, obs, &targets, &observe::TimeoutKeys::of(keys));
    Event::TimeoutsRead
}

/// The bounds of a dump, as the controller gives them.
fn limits(bounds: SampleBounds) -> ctnetlink::Limits {
    ctnetlink::Limits {
        max_entries: bounds.max_entries,
        max_time: bounds.max_time,
    }
}

/// Starts a thread that samples `targets` within `bounds`, one after the other. A new
/// thread starts in the namespace of the one that creates it: ctune's own, which it
/// samples first, before entering the others.
fn spawn_sampler(
    mut targets: Vec<SampleTarget>,
    bounds: SampleBounds,
) -> Option<std::thread::JoinHandle<Vec<Taken>>> {
    std::thread::Builder::new()
        .name("ctune-sample".into())
        .spawn(move || {
            targets.sort_by_key(|t| t.handle.is_some());
            targets
                .into_iter()
                .map(|t| {
                    let at = state::now();
                    let entered = match &t.handle {
                        None => Ok(()),
                        Some(path) => netns::enter(&netns::Handle {
                            id: t.id.clone(),
                            path: path.clone(),
                        }),
                    };
                    let result = entered.map_err(String::from).and_then(|()| {
                        ctnetlink::governed(&limits(bounds), at).map_err(|e| e.to_string())
                    });
                    Taken {
                        id: t.id,
                        result,
                        at,
                    }
                })
                .collect()
        })
        .ok()
}

/// Samples `targets` within `bounds` and waits for the samples ([`spawn_sampler`]): none
/// when no thread could be started.
fn sample_now(targets: Vec<SampleTarget>, bounds: SampleBounds) -> Vec<Taken> {
    spawn_sampler(targets, bounds)
        .and_then(|h| h.join().ok())
        .unwrap_or_default()
}

/// The imperative shell around the controller: the kernel, the files and the state
/// file for its actions.
#[derive(Debug)]
pub struct Engine {
    /// Where everything lives.
    pub roots: Roots,
    /// The step, its memory and its clock.
    ctl: Controller,
    /// The kernel's boot id, saved with the memory.
    boot_id: String,
    /// The state as last saved (or loaded), without its sample times.
    saved: State,
    /// The thread taking composition samples, while it runs.
    sampling: Option<std::thread::JoinHandle<Vec<Taken>>>,
    /// Each watched namespace's counters and timeouts as last read: a step that left
    /// them unread ([`ctune_core::controller::quiet`], [`TimeoutReads`]) reports these
    /// (its metrics keep their series), marked unread.
    ///
    /// [`TimeoutReads`]: ctune_core::controller::TimeoutReads
    last_read: HashMap<u64, LastRead>,
    /// Whether a step's report is filled from `last_read` ([`Engine::fill_unread`]): the
    /// agent's loop turns it off and fills only a report its metrics will render.
    pub fill_reports: bool,
}

/// What was last read of one namespace.
#[derive(Debug, Clone, Default)]
struct LastRead {
    stat: Option<ctune_core::model::ConntrackStat>,
    timeouts: std::collections::BTreeMap<String, u64>,
}

/// What a step's actions did, for its report.
#[derive(Debug, Default)]
struct Done {
    outcomes: Vec<Outcome>,
    files: Vec<FileResult>,
    notes: Vec<String>,
    state_error: Option<StateError>,
}

impl Engine {
    /// Loads the state and prepares the agent's steps.
    pub fn new(roots: Roots, config: Config) -> Result<Engine, StateError> {
        Engine::with_mode(roots, config, Mode::Agent)
    }

    /// Loads the state and prepares a step in `mode` ([`Mode::Apply`] for the one-shot
    /// `apply`: a due composition sample is taken before deciding).
    pub fn with_mode(roots: Roots, config: Config, mode: Mode) -> Result<Engine, StateError> {
        let state = state::load(&roots)?;
        let ctl = Controller::new(
            config,
            mode,
            state.memory(),
            roots.proc_is_live(),
            state::now(),
        );
        Ok(Engine {
            roots,
            ctl,
            boot_id: state.boot_id.clone(),
            saved: state::untimed(state),
            sampling: None,
            last_read: HashMap::new(),
            fill_reports: true,
        })
    }

    /// Remembers what `obs` read and forgets namespaces no longer watched: after the
    /// decision, so a later report can show what a step left unread.
    fn remember(&mut self, obs: &Observation) {
        let live: std::collections::HashSet<u64> =
            obs.namespaces.iter().map(|n| n.id.inode).collect();
        self.last_read.retain(|inode, _| live.contains(inode));
        for n in &obs.namespaces {
            let Some(last) = self.last_read.get_mut(&n.id.inode) else {
                // Known from its first full reading on (a new namespace's timeouts are
                // read at its first visit: [`observe::Reads::seen`]).
                if !n.timeouts_unread && !n.counters_unread && n.error.is_none() {
                    let last = LastRead {
                        stat: n.stat.clone(),
                        timeouts: n.timeouts.clone(),
                    };
                    self.last_read.insert(n.id.inode, last);
                }
                continue;
            };
            if !n.counters_unread {
                last.stat.clone_from(&n.stat);
            }
            if !n.timeouts_unread {
                last.timeouts.clone_from(&n.timeouts);
            }
        }
    }

    /// Fills what a step's `obs` left unread from the last reading (still marked
    /// unread), for a report that shows every namespace: the metrics keep their series.
    /// On a node of a thousand namespaces the copies cost more than the step's reads, so
    /// the agent fills only a report its metrics render.
    pub fn fill_unread(&self, obs: &mut Observation) {
        for n in &mut obs.namespaces {
            let Some(last) = self.last_read.get(&n.id.inode) else {
                continue;
            };
            if n.counters_unread {
                n.stat.clone_from(&last.stat);
            }
            if n.timeouts_unread {
                n.timeouts.clone_from(&last.timeouts);
            }
        }
    }

    /// The config in force.
    pub fn config(&self) -> &Config {
        self.ctl.config()
    }

    /// What the controller remembers.
    pub fn memory(&self) -> &ctune_core::controller::Memory {
        self.ctl.memory()
    }

    /// The controller: its clock and probe, for the agent's loop.
    pub fn controller(&mut self) -> &mut Controller {
        &mut self.ctl
    }

    /// What ctune remembers now.
    pub fn state(&self) -> State {
        State::of(self.boot_id.clone(), self.ctl.memory())
    }

    /// Saves the state when it changed in more than the times of the counter samples:
    /// the agent steps every second, and a router's flash should not be rewritten for a
    /// timestamp. A later `ctune apply` then sees an older sample, which only makes it
    /// measure no rise from it.
    fn save_if_changed(&mut self) -> Result<(), StateError> {
        let untimed = state::untimed(self.state());
        if untimed == self.saved {
            return Ok(());
        }
        state::save(&self.roots, &self.state())?;
        self.saved = untimed;
        Ok(())
    }

    /// The finished background samples, waiting up to `wait` for a sampler still
    /// running.
    fn collect(&mut self, wait: Duration) -> Event {
        if wait == Duration::MAX {
            let samples = self.sampling.take().and_then(|h| h.join().ok());
            return Event::Collected {
                samples: samples.unwrap_or_default(),
                running: false,
            };
        }
        let deadline = std::time::Instant::now() + wait;
        while self.sampling.as_ref().is_some_and(|h| !h.is_finished())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        match self.sampling.take() {
            Some(h) if h.is_finished() => Event::Collected {
                samples: h.join().unwrap_or_default(),
                running: false,
            },
            Some(h) => {
                self.sampling = Some(h);
                Event::Collected {
                    samples: Vec::new(),
                    running: true,
                }
            }
            None => Event::Collected {
                samples: Vec::new(),
                running: false,
            },
        }
    }

    /// Writes the files for what is in force.
    fn persist(&self, obs: &Observation, plan: &Plan, managed: &[String], done: &mut Done) {
        let managed: Vec<&str> = managed.iter().map(String::as_str).collect();
        let layout = self.ctl.config().persist.layout;
        let (updates, notes) = persist::render(&self.roots, layout, obs, plan, &managed);
        done.files = updates
            .into_iter()
            .map(|update| {
                let result = atomic::write(&update.path, update.new.as_bytes(), 0o644);
                FileResult { update, result }
            })
            .collect();
        done.notes = notes;
    }

    /// Answers one action of the controller (not [`Action::Observe`] or
    /// [`Action::Done`]).
    fn answer(&mut self, obs: &mut Observation, action: Action, done: &mut Done) -> Event {
        match action {
            Action::ReadTimeouts { targets, keys } => {
                read_timeouts(&self.roots, obs, &targets, keys.as_ref())
            }
            Action::Collect { wait } => self.collect(wait),
            Action::Save => {
                let result = self.save_if_changed();
                let ok = result.is_ok();
                done.state_error = result.err();
                Event::Saved(ok)
            }
            Action::Apply(changes) => {
                let outcomes = apply::apply(&self.roots, obs, &changes);
                let ok = outcomes.iter().map(|o| o.result.is_ok()).collect();
                done.outcomes.extend(outcomes);
                Event::Applied(ok)
            }
            Action::Sample { targets, bounds } => Event::Sampled(sample_now(targets, bounds)),
            Action::StartSampling { targets, bounds } => {
                self.sampling = spawn_sampler(targets, bounds);
                Event::Started(self.sampling.is_some())
            }
            Action::Persist { plan, managed } => {
                self.persist(obs, &plan, &managed, done);
                Event::Persisted
            }
            Action::Observe { .. } | Action::Done { .. } => {
                unreachable!("observe and done are the step's ends")
            }
        }
    }

    /// Observes, decides, applies, persists, and saves the state: one step of the
    /// controller ([`ctune_core::controller`]), at `now`.
    pub fn step(&mut self, now: Duration) -> Result<StepReport, ObserveError> {
        let Action::Observe {
            timeouts,
            count_only,
        } = self.ctl.begin(now)
        else {
            unreachable!("a step begins with an observation")
        };
        let mut reads = observe::Reads::of(&timeouts, &count_only, true);
        reads.seen = Some(self.last_read.keys().copied().collect());
        let mut obs = observe::observe_with(&self.roots, &self.ctl.config().namespaces, &reads)
            .inspect_err(|_| self.ctl.step_failed(state::now()))?;
        let mut done = Done::default();
        let mut action = self.ctl.handle(&mut obs, Event::Observed, now);
        let (plan, sample_notes) = loop {
            if let Action::Done { plan, notes } = action {
                break (plan, notes);
            }
            let event = self.answer(&mut obs, action, &mut done);
            action = self.ctl.handle(&mut obs, event, state::now());
        };
        self.remember(&obs);
        if self.fill_reports {
            self.fill_unread(&mut obs);
        }
        let mut notes = obs.notes.clone();
        notes.extend(sample_notes);
        notes.extend(done.notes.iter().map(|n| Note::persisted(n)));
        // The record of what took effect; a failure to keep it never fails the step.
        if let Err(e) = history::record_step(
            &self.roots,
            &plan,
            &done.outcomes,
            std::time::SystemTime::now(),
        ) {
            notes.push(Note::new(
                NoteKind::State,
                "history",
                format!("this step's changes are not in ctune's history: {e}"),
            ));
        }
        Ok(StepReport {
            observation: obs,
            plan,
            outcomes: done.outcomes,
            files: done.files,
            notes,
            state_error: done.state_error,
        })
    }
}
