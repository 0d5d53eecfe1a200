//! `ctune status`: the command an operator runs first. It reads the kernel twice,
//! `--sample` apart, so it can say whether packets are dropping *now*, and exits with a
//! code a health check can use. `--watch` refreshes it in place until q or Ctrl-C.

use ctune_core::model::{Note, NoteKind};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::act::state::{self, State};
use crate::error::{EXIT_OK, Error};
use crate::report::{self, StatusInputs, StatusReport};
use crate::run::engine::Sampler;
use crate::sense::roots::Roots;
use ctune_core::config::Config;

/// How `status` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The time between the two readings (zero: one reading).
    pub sample: Duration,
    /// JSON instead of text (JSON lines with `--watch`).
    pub json: bool,
    /// Refresh until stopped.
    pub watch: bool,
}

/// `ctune status` as the command line asked for it.
pub fn run_command(
    ctx: super::Context,
    json: bool,
    sample: Duration,
    watch: bool,
) -> Result<u8, Error> {
    let opts = Options {
        sample,
        json,
        watch,
    };
    run(
        &ctx.roots,
        &ctx.config,
        ctx.notes,
        &opts,
        &mut std::io::stdout().lock(),
    )
}

/// The shortest refresh of `--watch`: each one reads every namespace.
pub const MIN_WATCH_PERIOD: Duration = Duration::from_secs(1);

/// Runs `status`; returns the exit code (the health, or 0 after `--watch`).
pub fn run(
    roots: &Roots,
    cfg: &Config,
    mut notes: Vec<Note>,
    opts: &Options,
    out: &mut dyn Write,
) -> Result<u8, Error> {
    let state = match state::load(roots) {
        Ok(s) => s,
        Err(e) => {
            notes.push(Note::new(
                NoteKind::State,
                "state",
                format!("{e}; what ctune changed is not shown"),
            ));
            State::default()
        }
    };
    let ctx = Context {
        roots,
        cfg,
        state: &state,
        notes,
    };
    if opts.watch {
        return watch(&ctx, opts, out);
    }
    let mut sampler = Sampler::start(roots, cfg, &state, !opts.sample.is_zero())?.everywhere();
    std::thread::sleep(opts.sample);
    let report = ctx.report(&mut sampler)?;
    print(&report, opts.json, out)?;
    Ok(report.health.exit_code())
}

/// What every report of one command is made from.
struct Context<'a> {
    roots: &'a Roots,
    cfg: &'a Config,
    state: &'a State,
    notes: Vec<Note>,
}

impl Context<'_> {
    fn report(&self, sampler: &mut Sampler) -> Result<StatusReport, Error> {
        let s = sampler.read()?;
        Ok(report::status(StatusInputs {
            obs: &s.observation,
            plan: &s.preview.plan,
            cfg: self.cfg,
            state: self.state,
            sample: s.elapsed,
            notes: self.notes.clone(),
        }))
    }
}

fn print(report: &StatusReport, json: bool, out: &mut dyn Write) -> Result<(), Error> {
    if json {
        serde_json::to_writer_pretty(&mut *out, report).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report::status_text(report))?;
    }
    out.flush()?;
    Ok(())
}

/// Refreshes every `--sample` (at least [`MIN_WATCH_PERIOD`]): in place on a terminal,
/// one report after another (JSON lines with `--json`) anywhere else. Ends on q, Esc or
/// Ctrl-C, and on SIGINT or SIGTERM, with the terminal as it was.
fn watch(ctx: &Context, opts: &Options, out: &mut dyn Write) -> Result<u8, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let period = opts.sample.max(MIN_WATCH_PERIOD);
    let screen = if std::io::stdout().is_terminal() && !opts.json {
        Some(Screen::enter()?)
    } else {
        None
    };
    let mut sampler = Sampler::start(ctx.roots, ctx.cfg, ctx.state, true)?.everywhere();
    while !wait(period, &stop, screen.is_some())? {
        let report = ctx.report(&mut sampler)?;
        if opts.json {
            serde_json::to_writer(&mut *out, &report).map_err(std::io::Error::from)?;
            writeln!(out)?;
        } else if screen.is_some() {
            Screen::draw(out, &report, period)?;
        } else {
            writeln!(out, "{}", report::status_text(&report))?;
        }
        out.flush()?;
    }
    drop(screen);
    Ok(EXIT_OK)
}

/// Waits `period`; true when the user asked to stop (a key on a terminal, a signal).
fn wait(period: Duration, stop: &AtomicBool, keys: bool) -> Result<bool, Error> {
    use crossterm::event::{self, Event, KeyCode, KeyModifiers};
    let end = Instant::now() + period;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if stop.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let slice = left.min(Duration::from_millis(100));
        if !keys {
            std::thread::sleep(slice);
            continue;
        }
        if event::poll(slice)?
            && let Event::Key(k) = event::read()?
        {
            let ctrl_c =
                k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
            if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                return Ok(true);
            }
        }
    }
    Ok(stop.load(Ordering::Relaxed))
}

/// The terminal in raw mode on the alternate screen, put back on drop (also when an
/// error ends the watch).
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        crossterm::terminal::enable_raw_mode()?;
        crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        Ok(Screen)
    }

    fn draw(out: &mut dyn Write, report: &StatusReport, period: Duration) -> std::io::Result<()> {
        let mut frame = Vec::new();
        crossterm::queue!(
            frame,
            crossterm::cursor::MoveTo(0, 0),
            crossterm::terminal::Clear(crossterm::terminal::ClearType::All)
        )?;
        let head = format!(
            "ctune status --watch: every {}; q or Ctrl-C quits\n\n",
            humantime::format_duration(period)
        );
        // Raw mode: a line feed does not return the carriage.
        let text = head + &report::status_text(report);
        frame.extend_from_slice(text.replace('\n', "\r\n").as_bytes());
        out.write_all(&frame)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = crossterm::execute!(
            std::io::stdout(),
            crossterm::cursor::Show,
            crossterm::terminal::LeaveAlternateScreen
        );
        let _ = crossterm::terminal::disable_raw_mode();
    }
}
