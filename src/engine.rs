//! One control step, shared by `ctune apply` and the agent: observe, decide, apply,
//! persist, remember. Everything that can fail is tried and reported; nothing is left
//! half-written (files are replaced atomically, the state last).

use std::time::Duration;

use crate::apply::{self, Outcome};
use crate::atomic;
use crate::config::Config;
use crate::observe::{self, Observation, ObserveError};
use crate::persist::{self, FileUpdate};
use crate::plan::{Plan, Target};
use crate::roots::Roots;
use crate::state::{self, State, StateError};

/// One file a step wrote (or failed to write).
#[derive(Debug)]
pub struct FileResult {
    /// What was to be written.
    pub update: FileUpdate,
    /// Written, unchanged, or why not.
    pub result: Result<atomic::Outcome, atomic::WriteError>,
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
    /// Whether everything planned took effect and was persisted.
    pub fn complete(&self) -> bool {
        self.outcomes.iter().all(|o| o.result.is_ok())
            && self.files.iter().all(|f| f.result.is_ok())
            && self.state_error.is_none()
    }
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
}

impl Engine {
    /// Loads the state and prepares a step.
    pub fn new(roots: Roots, config: Config) -> Result<Engine, StateError> {
        let state = state::load(&roots)?;
        Ok(Engine {
            roots,
            config,
            state,
        })
    }

    /// Observes, decides, applies, persists, and saves the state.
    pub fn step(&mut self, now: Duration) -> Result<StepReport, ObserveError> {
        let obs = observe::observe(&self.roots, &self.config.namespaces)?;
        let prev = self.state.policy.clone();
        let (plan, mut next) = crate::policy::decide(&obs, &self.config, &prev, now);
        let outcomes = apply::apply(&self.roots, &obs, &plan.changes);
        for o in &outcomes {
            match &o.result {
                Err(_) => next.forget_failed(&prev, &o.change),
                Ok(()) if o.change.target == Target::Global => {
                    // The operator's value from before ctune's first change of this key.
                    self.state
                        .original
                        .entry(o.change.key.clone())
                        .or_insert(o.change.old);
                }
                Ok(()) => {}
            }
        }
        // Persist what is in force now: the plan without the changes that failed.
        let mut effective = plan.clone();
        effective.changes = outcomes
            .iter()
            .filter(|o| o.result.is_ok())
            .map(|o| o.change.clone())
            .collect();
        let managed: Vec<&str> = next.applied.keys().map(String::as_str).collect();
        let (updates, file_notes) = persist::render(&self.roots, &obs, &effective, &managed);
        let files = updates
            .into_iter()
            .map(|update| {
                let result = atomic::write(&update.path, update.new.as_bytes(), 0o644);
                FileResult { update, result }
            })
            .collect();
        self.state.policy = next;
        let state_error = state::save(&self.roots, &self.state).err();
        let mut notes = obs.notes.clone();
        notes.extend(file_notes);
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
