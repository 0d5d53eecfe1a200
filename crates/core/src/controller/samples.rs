//! What the controller remembers of the composition samples beside the samples
//! themselves: which namespaces' samples failed or said too little, and whether a
//! background round is running.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{SampleTarget, Taken};
use crate::model::{Governed, NamespaceObs, Note, NoteKind};
use crate::units::printable;

/// The bookkeeping of the samples.
#[derive(Debug, Default)]
pub(super) struct Bookkeeping {
    /// Namespaces whose last sample failed, and when: not tried again before
    /// `agent.composition_interval` has passed (their timeouts follow the tiers).
    pub failed: BTreeMap<u64, Duration>,
    /// Namespaces whose onset sample read too little to say anything, and when: no onset
    /// sample again before `agent.composition_interval` has passed (the background one,
    /// with its longer time, still runs), so no step waits for them over and over. In a
    /// preview, the ones that failed, for good ([`Duration::MAX`]).
    pub missed: BTreeMap<u64, Duration>,
    /// A background round was started and not yet collected whole.
    pub running: bool,
}

impl Bookkeeping {
    /// The namespaces not to sample at an onset now: failed, or missed.
    pub fn not_now(&self) -> BTreeMap<u64, Duration> {
        let mut all = self.failed.clone();
        all.extend(self.missed.iter().map(|(k, v)| (*k, *v)));
        all
    }

    /// Keeps the samples taken in `into`; returns notes on those that failed. A sample
    /// too small to weigh timeouts ([`Governed::informative`]) is kept out: an `onset`
    /// one leaves the namespace due for the background sample (with its longer time),
    /// any other counts as a failure (not retried before the interval).
    pub fn take_in(
        &mut self,
        into: &mut BTreeMap<u64, Governed>,
        taken: Vec<Taken>,
        onset: bool,
    ) -> Vec<Note> {
        let mut notes = Vec::new();
        for Taken { id, result, at } in taken {
            match result {
                Ok(g) if g.informative() => {
                    into.insert(id.inode, g);
                    self.failed.remove(&id.inode);
                }
                Ok(_) if onset => {
                    self.missed.insert(id.inode, at);
                }
                Ok(g) => {
                    self.failed.insert(id.inode, at);
                    notes.push(Note::new(
                        NoteKind::Sample,
                        id.name.clone(),
                        format!(
                            "netns {}: the composition sample read only {} entries before its \
                             time was up; its timeouts follow the tiers alone",
                            printable(&id.name),
                            g.entries
                        ),
                    ));
                }
                Err(e) => {
                    self.failed.insert(id.inode, at);
                    notes.push(Note::new(
                        NoteKind::Sample,
                        id.name.clone(),
                        format!(
                            "netns {}: no composition sample ({e}); its timeouts follow the \
                             tiers alone",
                            printable(&id.name)
                        ),
                    ));
                }
            }
        }
        notes
    }

    /// A preview's onset samples: an informative one joins `into`, any other is never
    /// tried again by this command (`status --watch` reads every second). True when one
    /// joined.
    pub fn take_in_preview(
        &mut self,
        into: &mut BTreeMap<u64, Governed>,
        taken: Vec<Taken>,
    ) -> bool {
        let mut any = false;
        for Taken { id, result, .. } in taken {
            match result {
                Ok(g) if g.informative() => {
                    into.insert(id.inode, g);
                    any = true;
                }
                _ => {
                    self.missed.insert(id.inode, Duration::MAX);
                }
            }
        }
        any
    }
}

/// The namespaces to sample, with the handles that enter them.
pub(super) fn targets<'a>(due: impl IntoIterator<Item = &'a NamespaceObs>) -> Vec<SampleTarget> {
    due.into_iter()
        .map(|n| SampleTarget {
            id: n.id.clone(),
            handle: n.handle.clone(),
        })
        .collect()
}
