//! Kernel facts ctune's design and units rely on, pinned on the live kernel. Needs root;
//! global values are changed only under a guard that restores them.

use crate::common;

use common::*;
use std::process::Command;

#[test]
fn hash_size_reads_back_rounded_to_whole_pages_and_leaves_max_alone() {
    require_root("hash_size_reads_back_rounded_to_whole_pages_and_leaves_max_alone");
    let guard = GlobalGuard::save();
    let max = global("nf_conntrack_max");
    // The page size as ctune reads it (its auxiliary vector).
    let auxv = std::fs::read("/proc/self/auxv").unwrap();
    let page = ctune_core::model::auxv::page_size(&auxv, std::mem::size_of::<usize>())
        .expect("AT_PAGESZ in /proc/self/auxv");
    guard.set_buckets(1000);
    let read_back = global("nf_conntrack_buckets");
    assert_eq!(
        ctune_core::tunables::round_buckets(1000, page),
        read_back,
        "ctune rounds as the kernel does ({page} B pages)"
    );
    assert_eq!(
        global("nf_conntrack_max"),
        max,
        "a resize never changes max"
    );
}

#[test]
fn root_writes_conntrack_sysctls_without_capabilities_but_setns_needs_cap_sys_admin() {
    require_root(
        "root_writes_conntrack_sysctls_without_capabilities_but_setns_needs_cap_sys_admin",
    );
    let _guard = GlobalGuard::save();
    let max = global("nf_conntrack_max");
    // Empty bounding set: uid 0 with no capability at all (the unit's basis for not
    // granting CAP_NET_ADMIN).
    let out = Command::new("setpriv")
        .args([
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--",
            "sh",
            "-c",
        ])
        .arg(format!(
            "echo {max} > /proc/sys/net/netfilter/nf_conntrack_max"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ns = TestNetns::new("caps");
    let dir = tempfile::tempdir().unwrap();
    let cfg = named_config(dir.path(), &[&ns.name]);
    let status = |bounding: &str| -> serde_json::Value {
        let out = Command::new("setpriv")
            .args([
                "--inh-caps=-all",
                "--ambient-caps=-all",
                &format!("--bounding-set={bounding}"),
                "--",
            ])
            .arg(env!("CARGO_BIN_EXE_ctune"))
            .args(["status", "--json", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let find = |s: &serde_json::Value| {
        s["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == ns.name.as_str())
            .cloned()
            .unwrap()
    };
    let without = find(&status("-all"));
    assert!(
        without["error"].as_str().unwrap().contains("EPERM"),
        "{without:#}"
    );
    let with = find(&status("-all,+sys_admin"));
    assert!(with["error"].is_null(), "{with:#}");
}

#[test]
fn a_netfilter_carve_out_under_read_only_proc_sys_does_not_reach_other_namespaces() {
    // What systemd's ProtectKernelTunables= with ReadWritePaths=/proc/sys/net/netfilter
    // amounts to: /proc/sys bind-mounted read-only, the netfilter directory bind-mounted
    // writable on top. The host's keys stay writable; the same keys seen from another
    // network namespace are other dentries, under the read-only mount (EROFS).
    require_root("a_netfilter_carve_out_under_read_only_proc_sys_does_not_reach_other_namespaces");
    let _guard = GlobalGuard::save();
    let ns = TestNetns::new("carve");
    let max = global("nf_conntrack_max");
    let script = format!(
        "set -e
mount --make-rprivate /
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
mount --bind /proc/sys/net/netfilter /proc/sys/net/netfilter
mount -o remount,bind,rw /proc/sys/net/netfilter
echo {max} > /proc/sys/net/netfilter/nf_conntrack_max && echo host-write-ok
if nsenter --net=/run/netns/{ns} sh -c 'echo 45 > /proc/sys/net/netfilter/nf_conntrack_udp_timeout' 2>/tmp/ctune-carve-$$; then
  echo child-write-ok
else
  cat /tmp/ctune-carve-$$; echo child-write-refused
fi
rm -f /tmp/ctune-carve-$$",
        ns = ns.name
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("host-write-ok"), "{text}");
    assert!(
        text.contains("child-write-refused") && text.contains("Read-only file system"),
        "{text}"
    );
    assert_ne!(ns.read_sysctl("nf_conntrack_udp_timeout"), 45);
}
