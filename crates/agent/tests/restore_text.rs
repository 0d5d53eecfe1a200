//! `ctune restore`'s whole standard output, pinned byte for byte (the temporary root
//! written `<root>`) in every case it has words for: values put back, refused (under
//! load, out of bounds, the hash while max stays up), kept (someone else's now), files
//! removed or not (no header, unreadable, another layout's), timeouts per namespace, and
//! no state at all. The decisions behind it are tables of cases in ctune-core's
//! `restore`; this pins the shell that reads, performs and reports them (issue 23: the
//! split into a plan and a shell must not change a byte).
//!
//! Runs the real binary against copies of the 4.19 fixture tree (`common::tree::Tree`,
//! as in apply_tree.rs): nothing on the host is read or written.

use crate::common;

use common::tree::*;
use serde_json::{Value, json};
use std::fs;

/// Runs `args`, requires exit code `want`, and returns stdout with the root as `<root>`.
fn stdout(t: &Tree, args: &[&str], want: i32) -> String {
    let out = t.run(args);
    let all = common::text(&out);
    assert_eq!(code(&out), want, "ctune {args:?}:\n{all}");
    String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .replace(t.root().to_str().expect("UTF-8 root"), "<root>")
}

/// The 4.19 tree after an `apply` under pressure (max 65536 -> 131072, buckets 16384 ->
/// 32768, the three files written), its count back to `count`.
fn applied(count: u64) -> Tree {
    let t = Tree::new(K419, INITIAL);
    t.pressure(K419_MAX);
    t.expect(&["apply"], 0);
    assert_eq!((t.get(MAX), t.get(BUCKETS)), (131_072, 32_768));
    t.set(COUNT, count);
    t
}

/// The state's key of the initial namespace: the inode of the copy's
/// `proc/self/ns/net`, a plain file here, so another number in every copy.
fn init_inode(t: &Tree) -> String {
    let st = t.state_json();
    let namespaces = st["policy"]["namespaces"].as_object().expect("namespaces");
    assert_eq!(namespaces.len(), 1, "{st:#}");
    namespaces.keys().next().expect("one namespace").clone()
}

/// Rewrites the state file through `edit`.
fn edit_state(t: &Tree, edit: impl FnOnce(&mut Value)) {
    let mut st = t.state_json();
    edit(&mut st);
    fs::write(t.state_file(), st.to_string()).expect("write state");
}

/// What `restore` prints after `applied`: both globals back, ctune's three files gone.
const RESTORED_ALL: &str = "\
restored nf_conntrack_max [global]: 131072 -> 65536
restored nf_conntrack_buckets [global]: 32768 -> 16384
removed <root>/etc/sysctl.d/99-ctune.conf
removed <root>/etc/modules-load.d/ctune.conf
removed <root>/etc/modprobe.d/ctune.conf
";

#[test]
fn everything_put_back_and_removed_then_nothing_left() {
    let t = applied(100);
    assert_eq!(stdout(&t, &["restore"], 0), RESTORED_ALL);
    assert_eq!(
        stdout(&t, &["restore"], 0),
        "no state file: ctune has not changed any kernel value it knows of\n"
    );
}

#[test]
fn max_under_load_is_refused_with_the_hash_then_forced() {
    let t = applied(K419_MAX * 85 / 100);
    assert_eq!(
        stdout(&t, &["restore"], 4),
        "\
not restored: nf_conntrack_max: not lowering 131072 -> 65536: the busiest namespace holds 55705 entries, and 65536 would leave less than 25% headroom (new flows would be dropped); wait for the load to fall, or use --force
not restored: nf_conntrack_buckets: not shrinking 32768 -> 16384 while max stays up
"
    );
    // Still ctune's: the files stay, for max and buckets as they are.
    assert_eq!(
        sysctl_lines(&t.etc_file(SYSCTL_FILE)),
        [(MAX.to_string(), 131_072), (BUCKETS.to_string(), 32_768)]
    );
    assert_eq!(stdout(&t, &["restore", "--force"], 0), RESTORED_ALL);
}

#[test]
fn a_value_someone_else_set_is_kept_and_the_rest_finishes() {
    let t = applied(100);
    t.set(MAX, 200_000);
    assert_eq!(
        stdout(&t, &["restore"], 0),
        "\
restored nf_conntrack_buckets [global]: 32768 -> 16384
kept: nf_conntrack_max: left at 200000: someone else changed it after ctune set it, so it is theirs (ctune's record of 65536 is dropped)
removed <root>/etc/sysctl.d/99-ctune.conf
removed <root>/etc/modules-load.d/ctune.conf
removed <root>/etc/modprobe.d/ctune.conf
"
    );
    assert_eq!(t.get(MAX), 200_000);
    assert!(!t.state_file().exists());
}

#[test]
fn a_recorded_value_outside_the_bounds_is_refused_with_the_state_file() {
    let t = applied(100);
    edit_state(&t, |st| st["original"][MAX] = json!(1));
    assert_eq!(
        stdout(&t, &["restore", "--force"], 4),
        "\
not restored: nf_conntrack_max = 1 refused: below 1024, the smallest max ctune writes (recorded in <root>/state/state.json)
not restored: nf_conntrack_buckets: not shrinking 32768 -> 16384 while max stays up
"
    );
    assert_eq!(t.get(MAX), 131_072);
}

#[test]
fn timeouts_are_put_back_kept_or_refused_per_namespace() {
    let t = applied(100);
    t.set("nf_conntrack_udp_timeout", 10);
    t.set("nf_conntrack_tcp_timeout_close_wait", 45);
    let init = init_inode(&t);
    edit_state(&t, |st| {
        st["policy"]["namespaces"][&init]["lowered"] = json!({
            "nf_conntrack_generic_timeout": {"baseline": 0, "set": 600},
            "nf_conntrack_tcp_timeout_close_wait": {"baseline": 60, "set": 20},
            "nf_conntrack_udp_timeout": {"baseline": 30, "set": 10},
            "nf_conntrack_sctp_timeout_closed": {"baseline": 10, "set": 3},
        });
    });
    assert_eq!(
        stdout(&t, &["restore"], 4),
        "\
restored nf_conntrack_max [global]: 131072 -> 65536
restored nf_conntrack_buckets [global]: 32768 -> 16384
restored nf_conntrack_udp_timeout [netns init]: 10s -> 30s
not restored: nf_conntrack_generic_timeout = 0 refused: outside 1 ..= 2147483 seconds in init (recorded in the state)
kept: nf_conntrack_tcp_timeout_close_wait in init: left at 45: someone else changed it after ctune set 20
removed <root>/etc/sysctl.d/99-ctune.conf
removed <root>/etc/modules-load.d/ctune.conf
removed <root>/etc/modprobe.d/ctune.conf
"
    );
    assert_eq!(t.get("nf_conntrack_udp_timeout"), 30);
    assert_eq!(t.get("nf_conntrack_tcp_timeout_close_wait"), 45);
    // The refusal keeps the state, without what was put back.
    let st = t.state_json();
    assert!(st["original"].as_object().expect("original").is_empty());
    assert_eq!(
        st["policy"]["namespaces"][&init]["lowered"],
        json!({
            "nf_conntrack_generic_timeout": {"baseline": 0, "set": 600},
            "nf_conntrack_tcp_timeout_close_wait": {"baseline": 60, "set": 20},
            "nf_conntrack_sctp_timeout_closed": {"baseline": 10, "set": 3},
        })
    );
}

#[test]
fn files_without_the_header_or_unreadable_stay_and_another_layouts_go() {
    let t = applied(100);
    fs::write(
        t.etc().join(MODPROBE_FILE),
        "options nf_conntrack hashsize=4096\n",
    )
    .unwrap();
    fs::remove_file(t.etc().join(MODULES_LOAD_FILE)).unwrap();
    fs::create_dir(t.etc().join(MODULES_LOAD_FILE)).unwrap();
    // OpenWrt's file, ctune's (written before persist.layout changed): removed.
    fs::create_dir_all(t.etc().join("modules.d")).unwrap();
    fs::write(
        t.etc().join("modules.d/00-ctune"),
        format!("{HEADER}nf_conntrack hashsize=16384\n"),
    )
    .unwrap();
    assert_eq!(
        stdout(&t, &["restore"], 4),
        "\
restored nf_conntrack_max [global]: 131072 -> 65536
restored nf_conntrack_buckets [global]: 32768 -> 16384
not restored: <root>/etc/modules-load.d/ctune.conf: unexpected content (not a regular file (a directory): refused): not removed
not restored: <root>/etc/modprobe.d/ctune.conf: not removed: it does not carry ctune's header, so someone else wrote it
removed <root>/etc/sysctl.d/99-ctune.conf
removed <root>/etc/modules.d/00-ctune
"
    );
    assert!(t.state_file().is_file(), "kept: restore is not complete");
}

#[test]
fn another_layouts_file_without_the_header_is_none_of_restores_business() {
    let t = applied(100);
    fs::create_dir_all(t.etc().join("modules.d")).unwrap();
    fs::write(t.etc().join("modules.d/00-ctune"), "nf_conntrack\n").unwrap();
    assert_eq!(stdout(&t, &["restore"], 0), RESTORED_ALL);
    assert_eq!(t.etc_file("modules.d/00-ctune"), "nf_conntrack\n");
}
