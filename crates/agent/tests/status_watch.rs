//! `ctune status --watch` under a pseudo-terminal (util-linux `script`): it redraws in
//! place on the alternate screen, refreshes, and ends cleanly on q, on Ctrl-C typed at
//! the terminal and on SIGINT, with the terminal put back. Without a terminal it prints
//! one plain report per refresh.

use crate::common;

use common::Tree;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ENTER_ALT: &str = "\x1b[?1049h";
const LEAVE_ALT: &str = "\x1b[?1049l";
const HEADER: &str = "ctune status --watch: every 1s";

/// `ctune status --watch` on a fixture tree inside `script`'s pseudo-terminal; output
/// collected by a reader thread.
struct Watch {
    child: Child,
    out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    _tree: Tree,
}

impl Watch {
    fn start() -> Watch {
        let tree = Tree::copy("kernel-6.18");
        // `exec`: script runs the command through $SHELL, and dash (Debian's /bin/sh,
        // script's shell when SHELL is unset, as under CI) forks for it where bash
        // execs; a SIGINT sent to the shell would never reach ctune.
        let mut cmd = vec!["exec".to_string(), env!("CARGO_BIN_EXE_ctune").to_string()];
        cmd.extend(tree.root_args());
        cmd.extend(["status", "--watch", "--sample", "1s"].map(String::from));
        let mut child = Command::new("script")
            .args(["-qfec", &cmd.join(" "), "/dev/null"])
            .env("TERM", "xterm")
            .env("SHELL", "/bin/sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("script (util-linux)");
        let mut stdout = child.stdout.take().unwrap();
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&out);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Watch {
            child,
            out,
            _tree: tree,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Waits until the header was drawn `n` times (bounded).
    fn refreshes(&self, n: usize) -> bool {
        common::wait_for(Duration::from_secs(10), || {
            self.text().matches(HEADER).count() >= n
        })
    }

    fn exit_within(&mut self, limit: Duration) -> Option<i32> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The ctune process under `script` (its only child, exec'd by the shell).
    fn ctune_pid(&self) -> i32 {
        let out = Command::new("pgrep")
            .args(["-P", &self.child.id().to_string(), "-x", "ctune"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("ctune as the direct child of script")
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_clean_end(w: &mut Watch, how: &str) {
    let code = w.exit_within(Duration::from_secs(3));
    let text = w.text();
    assert_eq!(code, Some(0), "{how}: no clean exit; saw:\n{text:?}");
    assert!(
        text.contains(ENTER_ALT),
        "{how}: never entered the alternate screen"
    );
    let left = text.rfind(LEAVE_ALT).expect("left the alternate screen");
    assert!(
        left > text.rfind(HEADER).unwrap(),
        "{how}: the screen was not put back last"
    );
}

#[test]
fn q_ends_the_watch_after_a_few_refreshes() {
    let mut w = Watch::start();
    assert!(w.refreshes(3), "fewer than 3 refreshes: {:?}", w.text());
    let text = w.text();
    assert!(text.contains("health: healthy"), "{text:?}");
    // Raw mode: lines end with CR LF, so the table stays aligned.
    assert!(text.contains("\r\nNAMESPACE"), "{text:?}");
    w.child.stdin.as_mut().unwrap().write_all(b"q").unwrap();
    assert_clean_end(&mut w, "q");
}

#[test]
fn ctrl_c_at_the_terminal_ends_the_watch() {
    let mut w = Watch::start();
    assert!(w.refreshes(1), "no refresh: {:?}", w.text());
    w.child.stdin.as_mut().unwrap().write_all(b"\x03").unwrap();
    assert_clean_end(&mut w, "Ctrl-C");
}

#[test]
fn sigint_ends_the_watch_with_the_terminal_put_back() {
    let mut w = Watch::start();
    assert!(w.refreshes(1), "no refresh: {:?}", w.text());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.ctune_pid()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_clean_end(&mut w, "SIGINT");
}

#[test]
fn without_a_terminal_each_refresh_is_a_plain_report() {
    let tree = Tree::copy("kernel-6.18");
    let child = Command::new(env!("CARGO_BIN_EXE_ctune"))
        .args(tree.root_args())
        .args(["status", "--watch", "--sample", "1s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        !text.contains('\x1b'),
        "escape sequences without a terminal: {text:?}"
    );
    assert!(text.matches("health: healthy").count() >= 2, "{text}");
}
