//! `ctune plan` and `ctune --dry-run`: what `ctune apply` would do now, decided from
//! ctune's saved state (if any) with the counters' rise over the sample, and the files a
//! real run would write as a diff. Writes nothing.

use ctune_core::model::{Note, NoteKind};
use std::io::Write;
use std::time::Duration;

use super::Context;
use crate::act::state;
use crate::error::{EXIT_OK, Error};
use crate::report;
use crate::run::engine::{Sample, Sampler};

/// Reads the kernel twice, `sample` apart (once when zero), and prints the plan.
pub fn run(ctx: &Context, json: bool, sample: Duration) -> Result<u8, Error> {
    let mut notes = Vec::new();
    let saved = match state::load(&ctx.roots) {
        Ok(st) => st,
        Err(e) => {
            notes.push(Note::new(
                NoteKind::State,
                "state",
                format!("{e}; planning as if ctune had never run"),
            ));
            state::State::default()
        }
    };
    let mut sampler = Sampler::start(&ctx.roots, &ctx.config, &saved, !sample.is_zero())?;
    std::thread::sleep(sample);
    let Sample {
        observation: obs,
        preview,
        ..
    } = sampler.read()?;
    notes.splice(0..0, obs.notes.iter().cloned());
    notes.extend(preview.notes.iter().map(|n| Note::persisted(n)));
    let mut stdout = std::io::stdout().lock();
    if json {
        let r = report::PlanReport {
            config: ctx.source.path().display().to_string(),
            observation: &obs,
            plan: &preview.plan,
            files: &preview.files,
            notes: &notes,
        };
        serde_json::to_writer_pretty(&mut stdout, &r).map_err(std::io::Error::from)?;
        writeln!(stdout)?;
    } else {
        let text = report::plan_text(&obs, &preview.plan, &preview.files, &notes, &ctx.source);
        write!(stdout, "{text}")?;
    }
    Ok(EXIT_OK)
}
