//! OpenWrt support: `persist.layout: openwrt` and `packaging/openwrt/`.
//!
//! The commands that write (`plan`, `apply`, `verify`, `boot`, `restore`) run as the real
//! binary against copies of the fixture kernel trees, with every root in a temporary
//! directory (`common::tree::Tree`, as in apply_tree.rs). The procd init script runs
//! under /bin/sh (and busybox ash, OpenWrt's shell, when it is installed) through a
//! stand-in for OpenWrt's /etc/rc.common whose procd functions record their calls, with
//! stubs for `ctune` and `logger`. No OpenWrt system, procd or kmodloader runs here:
//! docs/packages.md says what that leaves unproven.

use crate::common;

use common::tree::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const OPENWRT: &str = "namespaces:\n  mode: initial\npersist:\n  layout: openwrt\n";

const MODULES_D_FILE: &str = "modules.d/00-ctune";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What ubox's kmodloader (`main_loader`) takes from one /etc/modules.d file: per line,
/// the text before the first space is the module (its basename, without `.ko`), the rest
/// the options, passed to init_module as they are. A line whose first word names no
/// module is skipped; here a module name is what the kernel's are made of.
fn kmodloader_reads(text: &str) -> Vec<(String, Option<String>)> {
    text.split('\n')
        .filter_map(|line| {
            let (module, opts) = match line.split_once(' ') {
                Some((m, o)) => (m, Some(o.to_string())),
                None => (line, None),
            };
            let module = module.rsplit('/').next().unwrap_or(module);
            let module = module.split(".ko").next().unwrap_or(module);
            let named = !module.is_empty()
                && module
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            named.then(|| (module.to_string(), opts))
        })
        .collect()
}

#[test]
fn kmodloader_reading_skips_comments_and_keeps_options_verbatim() {
    assert_eq!(
        kmodloader_reads("# a comment naming nf_conntrack\nnf_conntrack hashsize=4096\n\n"),
        [(
            "nf_conntrack".to_string(),
            Some("hashsize=4096".to_string())
        )]
    );
    assert_eq!(
        kmodloader_reads("nf_conntrack\n"),
        [("nf_conntrack".to_string(), None)]
    );
    // A trailing space is part of the options: what ctune must never write.
    assert_eq!(
        kmodloader_reads("nf_conntrack hashsize=1 \n")[0]
            .1
            .as_deref(),
        Some("hashsize=1 ")
    );
}

/// The module lines of ctune's modules.d file, checked to be exactly one well-formed
/// `nf_conntrack [hashsize=N]` line; returns N.
fn module_line(text: &str) -> Option<u64> {
    assert!(text.starts_with(HEADER), "{text}");
    assert!(text.ends_with('\n') && !text.contains('\r'), "{text:?}");
    for line in text.lines().filter(|l| l.starts_with('#')) {
        assert_eq!(
            line.split(' ').next(),
            Some("#"),
            "a comment's first word must name no module: {line:?}"
        );
    }
    let read = kmodloader_reads(text);
    assert_eq!(read.len(), 1, "one module line: {read:?} in\n{text}");
    let (module, opts) = &read[0];
    assert_eq!(module, "nf_conntrack");
    opts.as_deref().map(|o| {
        let n = o
            .strip_prefix("hashsize=")
            .unwrap_or_else(|| panic!("options {o:?}"));
        assert!(n.bytes().all(|b| b.is_ascii_digit()), "options {o:?}");
        n.parse().expect("hashsize fits u64")
    })
}

/// apply on a modular conntrack under pressure: the sysctl.d file and kmodloader's file,
/// nothing in modprobe.d or modules-load.d; plan shows the same files first.
#[test]
fn apply_writes_sysctl_d_and_modules_d_only() {
    let t = Tree::new(K419, OPENWRT);
    t.pressure(K419_MAX);

    let plan = t.expect(&["plan", "--sample", "0"], 0);
    let shown = |rel: &str| plan.contains(&t.etc().join(rel).display().to_string());
    assert!(shown(SYSCTL_FILE) && shown(MODULES_D_FILE), "{plan}");
    assert!(!shown(MODPROBE_FILE) && !shown(MODULES_LOAD_FILE), "{plan}");
    assert!(
        plan.contains("Applied at boot by /etc/init.d/sysctl"),
        "{plan}"
    );
    let json = t.run(&["plan", "--sample", "0", "--json"]);
    assert_eq!(json.status.code(), Some(0));
    let json: Value = serde_json::from_slice(&json.stdout).expect("plan JSON");
    let paths: Vec<String> = json["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        [SYSCTL_FILE, MODULES_D_FILE].map(|r| t.etc().join(r).display().to_string())
    );
    let planned = |key: &str| {
        json["plan"]["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["key"] == key)
            .map(|c| c["new"].as_u64().unwrap())
            .expect("a planned change")
    };
    let (new_max, new_b) = (planned(MAX), planned(BUCKETS));
    let modules_new = json["files"][1]["new"].as_str().unwrap();
    assert_eq!(module_line(modules_new), Some(new_b), "{modules_new}");
    assert!(t.etc_files().is_empty(), "plan wrote nothing");

    let out = t.expect(&["apply"], 0);
    assert_eq!((t.get(MAX), t.get(BUCKETS)), (new_max, new_b), "{out}");
    assert_eq!(t.etc_files(), [MODULES_D_FILE, SYSCTL_FILE], "{out}");
    let sysctl = t.etc_file(SYSCTL_FILE);
    assert!(sysctl.starts_with(HEADER), "{sysctl}");
    assert_eq!(
        sysctl_lines(&sysctl),
        [(MAX.to_string(), new_max), (BUCKETS.to_string(), new_b)]
    );
    let modules = t.etc_file(MODULES_D_FILE);
    assert_eq!(modules, modules_new, "the file the plan showed");
    assert_eq!(module_line(&modules), Some(new_b));
    t.assert_written(&out, &[SYSCTL_FILE, MODULES_D_FILE]);

    // A second apply has nothing to do and rewrites neither file.
    let again = t.expect(&["apply"], 0);
    assert!(again.starts_with("nothing to change\n"), "{again}");
    assert!(!again.contains("wrote "), "{again}");
    assert_eq!(t.etc_file(MODULES_D_FILE), modules);
}

/// Built-in conntrack: no module to give options to, so only the sysctl.d file.
#[test]
fn built_in_conntrack_gets_no_modules_d_file() {
    let t = Tree::new(K618, OPENWRT);
    t.pressure(K618_MAX);
    t.expect(&["apply"], 0);
    assert_eq!(t.etc_files(), [SYSCTL_FILE]);
}

/// verify checks kmodloader's file like any other: ok as written, each change named.
#[test]
fn verify_checks_the_modules_d_file() {
    let t = Tree::new(K419, OPENWRT);
    t.pressure(K419_MAX);
    t.expect(&["apply"], 0);
    let path = t.etc().join(MODULES_D_FILE);
    let shown = path.display().to_string();
    let out = t.expect(&["verify"], 0);
    assert!(out.lines().any(|l| l == format!("ok    {shown}")), "{out}");
    assert!(
        !out.contains("modprobe.d") && !out.contains("modules-load.d"),
        "{out}"
    );

    let good = fs::read_to_string(&path).unwrap();
    let hashsize = module_line(&good).expect("a hash size");
    fs::write(
        &path,
        good.replace(&format!("hashsize={hashsize}"), "hashsize=1"),
    )
    .unwrap();
    let out = t.expect(&["verify"], 7);
    let want = format!(
        "DIFF  {shown}: expected nf_conntrack hashsize={hashsize}, found nf_conntrack hashsize=1"
    );
    assert!(
        out.lines().any(|l| l.starts_with(&want)),
        "{want} in:\n{out}"
    );

    fs::remove_file(&path).unwrap();
    let out = t.expect(&["verify"], 7);
    assert!(
        out.contains(&format!(
            "DIFF  {shown}: expected ctune's file, found missing"
        )),
        "{out}"
    );
    // apply puts it back.
    t.expect(&["apply"], 0);
    assert_eq!(fs::read_to_string(&path).unwrap(), good);
    t.expect(&["verify"], 0);
}

/// After a reboot, with the values as if /etc/init.d/sysctl had not applied 99-ctune.conf:
/// `ctune boot` puts the persisted values in force from the files the OpenWrt layout
/// wrote. First as kmodloader leaves the module loaded with the persisted hash size (the
/// kernel then sizes max itself, 8 x hashsize, the one value the raise-only boot step
/// lowers), then as a load without options leaves it.
#[test]
fn boot_applies_the_persisted_values_from_the_openwrt_files() {
    let t = Tree::new(K419, OPENWRT);
    t.pressure(K419_MAX);
    t.expect(&["apply"], 0);
    let persisted = sysctl_lines(&t.etc_file(SYSCTL_FILE));
    let (max, buckets) = (persisted[0].1, persisted[1].1);
    let hashsize = module_line(&t.etc_file(MODULES_D_FILE)).unwrap();
    assert_eq!(hashsize, buckets);

    // The module loaded with hashsize=N by kmodloader, before any sysctl.
    t.set(COUNT, 0);
    t.set(BUCKETS, hashsize);
    t.set(MAX, hashsize * 8);
    let out = t.expect(&["boot"], 0);
    assert_eq!((t.get(MAX), t.get(BUCKETS)), (max, buckets), "{out}");

    // The module loaded without options (the file was missing or read too late): both
    // values raised from the sysctl.d file.
    t.set(BUCKETS, K419_BUCKETS);
    t.set(MAX, K419_MAX);
    let out = t.expect(&["boot"], 0);
    assert_eq!((t.get(MAX), t.get(BUCKETS)), (max, buckets), "{out}");
    let want = format!("{MAX}: {K419_MAX} -> {max} (persisted value applied)");
    assert!(out.lines().any(|l| l == want), "{out}");
}

/// restore removes ctune's OpenWrt files (and ctune's files of the other layout, left
/// from before the switch); someone else's file at such a path is left alone.
#[test]
fn restore_removes_the_openwrt_files() {
    let t = Tree::new(K419, OPENWRT);
    t.pressure(K419_MAX);
    t.expect(&["apply"], 0);
    // ctune's file from a systemd-layout run before, and someone else's modules-load.d
    // file.
    fs::create_dir_all(t.etc().join("modprobe.d")).unwrap();
    fs::write(
        t.etc().join(MODPROBE_FILE),
        format!("{HEADER}options nf_conntrack hashsize=1024\n"),
    )
    .unwrap();
    fs::create_dir_all(t.etc().join("modules-load.d")).unwrap();
    fs::write(t.etc().join(MODULES_LOAD_FILE), "nf_conntrack\n").unwrap();
    // Named by the dry run as a leftover.
    let plan = t.expect(&["plan", "--sample", "0"], 0);
    assert!(
        plan.contains(&format!(
            "{} is ctune's file from another persist.layout",
            t.etc().join(MODPROBE_FILE).display()
        )),
        "{plan}"
    );
    assert!(
        !plan.contains(&format!(
            "{} is ctune's",
            t.etc().join(MODULES_LOAD_FILE).display()
        )),
        "not ctune's: {plan}"
    );

    t.set(COUNT, 100);
    let out = t.expect(&["restore"], 0);
    assert_eq!(
        (t.get(MAX), t.get(BUCKETS)),
        (K419_MAX, K419_BUCKETS),
        "{out}"
    );
    assert_eq!(t.etc_files(), [MODULES_LOAD_FILE], "{out}");
    assert_eq!(t.etc_file(MODULES_LOAD_FILE), "nf_conntrack\n");
    assert!(!t.root().join("state/state.json").exists(), "{out}");
}

/// A modules.d file at ctune's path without ctune's header is someone else's: apply
/// leaves it (and says so through the write error), restore refuses to remove it.
#[test]
fn someone_elses_modules_d_file_is_not_removed() {
    let t = Tree::new(K419, OPENWRT);
    t.pressure(K419_MAX);
    t.expect(&["apply"], 0);
    fs::write(t.etc().join(MODULES_D_FILE), "nf_conntrack hashsize=4096\n").unwrap();
    let out = t.expect(&["verify"], 7);
    assert!(out.contains("a file without ctune's header"), "{out}");
    t.set(COUNT, 100);
    let out = t.expect(&["restore"], 4);
    assert!(
        out.contains("not removed: it does not carry ctune's header"),
        "{out}"
    );
    assert_eq!(
        t.etc_file(MODULES_D_FILE),
        "nf_conntrack hashsize=4096\n",
        "left alone"
    );
}

/// OpenWrt's /etc/init.d/sysctl applies /etc/sysctl.conf after every sysctl.d file: a
/// key set there wins at boot, and ctune says so (systemd-sysctl does not read it).
#[test]
fn a_key_in_etc_sysctl_conf_is_named_on_openwrt() {
    let t = Tree::new(K419, OPENWRT);
    t.pressure(K419_MAX);
    fs::create_dir_all(t.etc()).unwrap();
    fs::write(
        t.etc().join("sysctl.conf"),
        "net.netfilter.nf_conntrack_max=16384\n",
    )
    .unwrap();
    let want = format!(
        "{} sets {MAX} = 16384 and is applied after 99-ctune.conf at boot",
        t.etc().join("sysctl.conf").display()
    );
    let plan = t.expect(&["plan", "--sample", "0"], 0);
    assert!(plan.contains(&want), "{plan}");
    t.config(INITIAL);
    let plan = t.expect(&["plan", "--sample", "0"], 0);
    assert!(!plan.contains(&want), "systemd layout: {plan}");
}

/// The sample config for OpenWrt selects the layout.
#[test]
fn the_sample_config_selects_the_openwrt_layout() {
    let sample = fs::read_to_string(repo().join("packaging/openwrt/ctune.yaml")).unwrap();
    let t = Tree::new(K419, &format!("{sample}{INITIAL}"));
    t.pressure(K419_MAX);
    t.expect(&["apply"], 0);
    assert_eq!(t.etc_files(), [MODULES_D_FILE, SYSCTL_FILE]);
}

// ---------------------------------------------------------------------------------------
// The procd init script.

const INIT: &str = "packaging/openwrt/ctune.init";

/// A stand-in for OpenWrt's /etc/rc.common (package/base-files/files/etc/rc.common) in
/// the same order: default actions, the init script sourced, then for USE_PROCD the
/// procd versions of start/stop/reload around procd.sh's functions, which here record
/// their calls (one line each, every argument in brackets) in $CALLS instead of calling
/// ubus.
const RC_COMMON: &str = r#"#!/bin/sh
initscript=$1
action=${2:-help}
shift 2

record() {
	_line=$1; shift
	for _a in "$@"; do _line="$_line [$_a]"; done
	printf '%s\n' "$_line" >> "$CALLS"
}

start() { return 0; }
stop() { return 0; }
reload() { restart; }
restart() { trap '' TERM; stop "$@"; start "$@"; }
boot() { start "$@"; }
shutdown() { stop; }
enable() {
	name="$(basename "${initscript}")"
	err=1
	[ "$START" ] && ln -sf "../init.d/$name" "$IPKG_INSTROOT/etc/rc.d/S${START}${name##S[0-9][0-9]}" && err=0
	[ "$STOP" ] && ln -sf "../init.d/$name" "$IPKG_INSTROOT/etc/rc.d/K${STOP}${name##K[0-9][0-9]}" && err=0
	return $err
}
start_service() { return 0; }
stop_service() { return 0; }
service_triggers() { return 0; }
service_running() { return 0; }

. "$initscript"

[ -n "$USE_PROCD" ] && {
	procd_open_service() { record procd_open_service "$@"; }
	procd_close_service() { service_triggers; record procd_close_service "$@"; }
	procd_open_instance() { record procd_open_instance "$@"; }
	procd_set_param() { record procd_set_param "$@"; }
	procd_append_param() { record procd_append_param "$@"; }
	procd_close_instance() { record procd_close_instance "$@"; }
	procd_add_reload_trigger() { record procd_add_reload_trigger "$@"; }
	procd_send_signal() { record procd_send_signal "$@"; }
	procd_kill() { record procd_kill "$@"; }
	rc_procd() {
		method=set
		[ -n "$2" ] && method=add
		procd_open_service "$(basename "$initscript")" "$initscript"
		"$@"
		procd_close_service "$method"
	}
	start() {
		rc_procd start_service "$@"
	}
	stop() {
		stop_service "$@"
		procd_kill "$(basename "$initscript")" "$1"
	}
	reload() {
		if eval "type reload_service" 2>/dev/null >/dev/null; then
			reload_service "$@"
		else
			start
		fi
	}
}

case " start stop reload restart boot shutdown enable " in
	*" $action "*) $action "$@" ;;
	*) echo "unknown action $action" >&2; exit 1 ;;
esac
"#;

/// The stub `ctune`: records its arguments, prints a line, exits $CTUNE_STUB_EXIT.
const CTUNE_STUB: &str = r#"#!/bin/sh
_line=ctune
for _a in "$@"; do _line="$_line [$_a]"; done
printf '%s\n' "$_line" >> "$CALLS"
echo "stub ctune $1"
exit "${CTUNE_STUB_EXIT:-0}"
"#;

/// The stub `logger`: records its arguments and each line it is given.
const LOGGER_STUB: &str = r#"#!/bin/sh
_line=logger
for _a in "$@"; do _line="$_line [$_a]"; done
printf '%s\n' "$_line" >> "$CALLS"
while IFS= read -r l; do printf 'logged: %s\n' "$l" >> "$CALLS"; done
"#;

/// The shells to run the script with: /bin/sh, and busybox ash (OpenWrt's /bin/sh)
/// when installed.
fn shells() -> Vec<Vec<String>> {
    let mut v = vec![vec!["/bin/sh".to_string()]];
    let busybox = Command::new("busybox")
        .arg("sh")
        .arg("-c")
        .arg("true")
        .output();
    if busybox.is_ok_and(|o| o.status.success()) {
        v.push(vec!["busybox".into(), "sh".into()]);
    } else {
        eprintln!("busybox not installed: the init script runs under /bin/sh only");
    }
    v
}

/// The init script installed in a temporary root, as /etc/init.d/ctune, with PROG and
/// CONFIG pointed into it; stubs in bin/.
struct Openwrt {
    dir: tempfile::TempDir,
}

impl Openwrt {
    fn new(with_config: bool) -> Openwrt {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let script = fs::read_to_string(repo().join(INIT)).unwrap();
        let prog = "PROG=/usr/sbin/ctune\n";
        let config = "CONFIG=/etc/ctune/ctune.yaml\n";
        assert_eq!(script.matches(prog).count(), 1, "{INIT} sets {prog}");
        assert_eq!(script.matches(config).count(), 1, "{INIT} sets {config}");
        let script = script
            .replace(prog, &format!("PROG={}/bin/ctune\n", root.display()))
            .replace(
                config,
                &format!("CONFIG={}/etc/ctune/ctune.yaml\n", root.display()),
            );
        for d in ["etc/init.d", "etc/rc.d", "etc/ctune", "bin"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let exec = |rel: &str, text: &str| {
            fs::write(root.join(rel), text).unwrap();
            fs::set_permissions(root.join(rel), fs::Permissions::from_mode(0o755)).unwrap();
        };
        exec("etc/init.d/ctune", &script);
        exec("etc/rc.common", RC_COMMON);
        exec("bin/ctune", CTUNE_STUB);
        exec("bin/logger", LOGGER_STUB);
        if with_config {
            fs::copy(
                repo().join("packaging/openwrt/ctune.yaml"),
                root.join("etc/ctune/ctune.yaml"),
            )
            .unwrap();
        }
        Openwrt { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `sh /etc/rc.common /etc/init.d/ctune ACTION`, as the script's `#!/bin/sh
    /// /etc/rc.common` line has the kernel run it; returns the recorded calls.
    fn action(
        &self,
        shell: &[String],
        action: &str,
        env: &[(&str, &str)],
    ) -> (Output, Vec<String>) {
        let calls = self.root().join("calls");
        let _ = fs::remove_file(&calls);
        let path = format!(
            "{}:{}",
            self.root().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new(&shell[0])
            .args(&shell[1..])
            .arg(self.root().join("etc/rc.common"))
            .arg(self.root().join("etc/init.d/ctune"))
            .arg(action)
            .env("PATH", path)
            .env("CALLS", &calls)
            .env("IPKG_INSTROOT", self.root())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let recorded = fs::read_to_string(&calls).unwrap_or_default();
        (out, recorded.lines().map(str::to_string).collect())
    }

    fn prog(&self) -> String {
        self.root().join("bin/ctune").display().to_string()
    }

    fn config(&self) -> String {
        self.root()
            .join("etc/ctune/ctune.yaml")
            .display()
            .to_string()
    }

    /// The arguments both commands get after the subcommand.
    fn common_args(&self) -> String {
        format!(
            "[--config] [{}] [--state-dir] [/etc/ctune/state] [--run-root] [/var/run]",
            self.config()
        )
    }
}

fn position(calls: &[String], prefix: &str) -> usize {
    calls
        .iter()
        .position(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("no call {prefix:?} in {calls:#?}"))
}

#[test]
fn init_script_is_valid_shell() {
    for shell in shells() {
        let out = Command::new(&shell[0])
            .args(&shell[1..])
            .arg("-n")
            .arg(repo().join(INIT))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shell:?} -n {INIT}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let script = fs::read_to_string(repo().join(INIT)).unwrap();
    assert!(script.starts_with("#!/bin/sh /etc/rc.common\n"), "{script}");
    assert!(script.lines().any(|l| l == "USE_PROCD=1"), "{script}");
    let mode = fs::metadata(repo().join(INIT))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "{INIT} is executable");
}

/// START: after /etc/init.d/sysctl (START=11), before the firewall (19) and the network
/// (20); `enable` links it there.
#[test]
fn init_script_starts_after_sysctl_and_before_the_firewall() {
    let script = fs::read_to_string(repo().join(INIT)).unwrap();
    let start: u32 = script
        .lines()
        .find_map(|l| l.strip_prefix("START="))
        .expect("START=")
        .parse()
        .unwrap();
    assert!(start > 11 && start < 19, "START={start}");
    for shell in shells() {
        let o = Openwrt::new(true);
        let (out, _) = o.action(&shell, "enable", &[]);
        assert!(out.status.success(), "{out:?}");
        let link = o.root().join(format!("etc/rc.d/S{start}ctune"));
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("../init.d/ctune"),
            "{shell:?}"
        );
    }
}

/// At boot: `ctune boot` first (its output to syslog), then the agent as a respawned
/// procd instance with its output in syslog.
#[test]
fn init_script_boot_runs_ctune_boot_then_the_agent() {
    for shell in shells() {
        let o = Openwrt::new(true);
        let (out, calls) = o.action(&shell, "boot", &[]);
        assert!(out.status.success(), "{shell:?}: {out:?}");
        let boot = format!("ctune [boot] {}", o.common_args());
        assert!(calls.contains(&boot), "{shell:?}: {boot} in {calls:#?}");
        assert!(
            calls.contains(&"logger [-t] [ctune-boot]".to_string()),
            "{calls:#?}"
        );
        assert!(
            calls.contains(&"logged: stub ctune boot".to_string()),
            "{calls:#?}"
        );
        let service = format!(
            "procd_open_service [ctune] [{}]",
            o.root().join("etc/init.d/ctune").display()
        );
        let command = format!(
            "procd_set_param [command] [{}] [run] {}",
            o.prog(),
            o.common_args()
        );
        let ordered = [
            boot.as_str(),
            "procd_open_instance [agent]",
            &command,
            "procd_set_param [respawn] [3600] [5] [5]",
            "procd_set_param [stdout] [1]",
            "procd_set_param [stderr] [1]",
            "procd_close_instance",
            "procd_close_service [set]",
        ];
        let at: Vec<usize> = ordered.iter().map(|c| position(&calls, c)).collect();
        assert!(
            at.windows(2).all(|w| w[0] < w[1]),
            "{shell:?}: out of order {at:?}: {calls:#?}"
        );
        assert!(position(&calls, &service) < at[1], "{calls:#?}");
        assert_eq!(
            calls.iter().filter(|c| c.starts_with("ctune ")).count(),
            1,
            "ctune runs once, the agent is procd's: {calls:#?}"
        );
    }
}

/// A failed boot step is logged and the agent starts anyway (it reports and fixes what
/// the boot step could not).
#[test]
fn init_script_starts_the_agent_after_a_failed_boot_step() {
    for shell in shells() {
        let o = Openwrt::new(true);
        let (out, calls) = o.action(&shell, "boot", &[("CTUNE_STUB_EXIT", "3")]);
        assert!(out.status.success(), "{shell:?}: {out:?}");
        assert!(
            calls.contains(&"logged: ctune boot failed (exit 3); the agent starts anyway".into()),
            "{shell:?}: {calls:#?}"
        );
        position(&calls, "procd_open_instance [agent]");
    }
}

/// A manual start (the service was stopped) runs the agent only: the boot step belongs
/// to boot, and would find the agent's lock while it runs.
#[test]
fn init_script_start_reload_and_stop() {
    for shell in shells() {
        let o = Openwrt::new(true);
        let (out, calls) = o.action(&shell, "start", &[]);
        assert!(out.status.success(), "{shell:?}: {out:?}");
        assert!(!calls.iter().any(|c| c.starts_with("ctune ")), "{calls:#?}");
        position(
            &calls,
            &format!("procd_set_param [command] [{}] [run]", o.prog()),
        );

        let (out, calls) = o.action(&shell, "reload", &[]);
        assert!(out.status.success(), "{shell:?}: {out:?}");
        assert_eq!(
            calls,
            ["procd_send_signal [ctune] [agent] [HUP]"],
            "{shell:?}: reload is SIGHUP to the agent, no restart"
        );

        let (out, calls) = o.action(&shell, "stop", &[]);
        assert!(out.status.success(), "{shell:?}: {out:?}");
        assert_eq!(calls, ["procd_kill [ctune] []"], "{shell:?}");
    }
}

/// Without /etc/ctune/ctune.yaml the built-in defaults would persist to modprobe.d,
/// which OpenWrt does not read: the script refuses to start and says what to install.
#[test]
fn init_script_refuses_to_start_without_its_config() {
    for shell in shells() {
        let o = Openwrt::new(false);
        let (out, calls) = o.action(&shell, "boot", &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("ctune.yaml is missing") && stderr.contains("persist.layout: openwrt"),
            "{shell:?}: {stderr}"
        );
        assert!(
            !calls
                .iter()
                .any(|c| c.starts_with("ctune ") || c.starts_with("procd_open_instance")),
            "{calls:#?}"
        );
    }
}
