//! The kernel matrix: every fixture tree (fixtures/kernel-*, one per distro kernel, see
//! docs/kernels.md) through the dry run, `status` and `apply`, as the real binary on a
//! copy of the tree (common::tree::Tree). What differs between kernels is asserted per
//! tree: the timeout keys ctune reads are the ones that tree has, the hash size rounds
//! to that tree's page size, a kernel without /proc/net/stat/nf_conntrack has its
//! counters read over ctnetlink (the tree's recorded replies, netlink/), and those replies
//! agree with the tree.

use crate::common;

use common::tree::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// One fixture tree and what its kernel is, as docs/kernels.md tells.
struct Kernel {
    name: &'static str,
    page: u64,
    module: bool,
    /// /proc/net/stat/nf_conntrack exists (CONFIG_NF_CONNTRACK_PROCFS).
    procfs: bool,
    /// nf_conntrack_netlink answers (else the recorded reply is an NLMSG_ERROR).
    ctnetlink: bool,
    /// The kernel's default table size for the tree's RAM: Some((max, buckets)) for the
    /// trees written from the formula; None for the two copied from real machines.
    defaults: Option<(u64, u64)>,
}

const KERNELS: &[Kernel] = &[
    Kernel {
        name: "kernel-4.18-rhel8",
        page: 65536,
        module: true,
        procfs: true,
        ctnetlink: true,
        defaults: Some((262144, 65536)),
    },
    Kernel {
        name: "kernel-4.19",
        page: 4096,
        module: true,
        procfs: true,
        ctnetlink: true,
        defaults: None,
    },
    Kernel {
        name: "kernel-5.4-ubuntu2004",
        page: 4096,
        module: true,
        procfs: false,
        ctnetlink: true,
        defaults: Some((65536, 16384)),
    },
    Kernel {
        name: "kernel-5.10-debian11",
        page: 4096,
        module: true,
        procfs: true,
        ctnetlink: true,
        defaults: Some((262144, 65536)),
    },
    Kernel {
        name: "kernel-5.10-openwrt2203",
        page: 4096,
        module: true,
        procfs: true,
        ctnetlink: false,
        defaults: Some((15872, 15872)),
    },
    Kernel {
        name: "kernel-5.15-ubuntu2204",
        page: 4096,
        module: true,
        procfs: false,
        ctnetlink: true,
        defaults: Some((262144, 262144)),
    },
    Kernel {
        name: "kernel-6.1-debian12",
        page: 4096,
        module: true,
        procfs: true,
        ctnetlink: true,
        defaults: Some((65536, 65536)),
    },
    Kernel {
        name: "kernel-6.6-openwrt2410",
        page: 4096,
        module: true,
        procfs: true,
        ctnetlink: false,
        defaults: Some((31232, 31232)),
    },
    Kernel {
        name: "kernel-6.8-ubuntu2404",
        page: 4096,
        module: true,
        procfs: false,
        ctnetlink: true,
        defaults: Some((262144, 262144)),
    },
    Kernel {
        name: "kernel-6.18",
        page: 4096,
        module: false,
        procfs: true,
        ctnetlink: true,
        defaults: None,
    },
];

fn fixture(k: &Kernel) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(k.name)
}

/// The tree's `nf_conntrack_*` files, by name, with their values.
fn sysctls(k: &Kernel) -> BTreeMap<String, u64> {
    let dir = fixture(k).join("proc/sys/net/netfilter");
    fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            let text = fs::read_to_string(&p).unwrap();
            let value = text
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {text:?}"));
            (name, value)
        })
        .collect()
}

/// The timeout keys the tree has: what `status` must show, no more, no fewer.
fn timeout_keys(k: &Kernel) -> BTreeMap<String, u64> {
    sysctls(k)
        .into_iter()
        .filter(|(n, _)| n.contains("timeout") && !n.contains("frag6"))
        .collect()
}

fn json(out: &str, what: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{what}: {e}\n{out}"))
}

fn stdout(t: &Tree, args: &[&str], want: i32) -> String {
    let out = t.run(args);
    assert_eq!(code(&out), want, "ctune {args:?}: {}", common::text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn status_reads_each_kernels_own_keys() {
    for k in KERNELS {
        let t = Tree::new(k.name, INITIAL);
        let s = json(
            &stdout(&t, &["status", "--json", "--sample", "0"], 0),
            k.name,
        );
        let all = sysctls(k);
        assert_eq!(u(&s["max"]), all[MAX], "{}", k.name);
        assert_eq!(u(&s["buckets"]), all[BUCKETS], "{}", k.name);
        let module = if k.module { "module" } else { "built_in" };
        assert_eq!(s["module"], module, "{}", k.name);
        let init = &s["namespaces"][0];
        assert_eq!(u(&init["count"]), all[COUNT], "{}", k.name);
        let shown: BTreeMap<String, u64> = init["timeouts"]
            .as_object()
            .unwrap_or_else(|| panic!("{}: no timeouts in {init:#}", k.name))
            .iter()
            .map(|(n, v)| (n.clone(), u(v)))
            .collect();
        assert_eq!(shown, timeout_keys(k), "{}: timeouts read", k.name);
        // Without the stat file the counters come over ctnetlink (the tree's recorded
        // replies), and that is no error: the kernel is built that way.
        let source = if k.procfs { "procfs" } else { "ctnetlink" };
        assert_eq!(init["counters_source"], source, "{}: {init:#}", k.name);
        assert!(init["error"].is_null(), "{}: {init:#}", k.name);
        assert!(init["drop"].is_u64(), "{}: {init:#}", k.name);
    }
}

#[test]
fn defaults_follow_the_kernel_formula_and_page_size() {
    for k in KERNELS {
        let all = sysctls(k);
        let align = k.page / 8;
        assert_eq!(
            all[BUCKETS] % align,
            0,
            "{}: buckets in whole pages",
            k.name
        );
        if let Some((max, buckets)) = k.defaults {
            assert_eq!((all[MAX], all[BUCKETS]), (max, buckets), "{}", k.name);
        }
        let auxv = fs::read(fixture(k).join("proc/self/auxv")).unwrap();
        assert_eq!(
            ctune_core::model::auxv::page_size(&auxv, 8),
            Some(k.page),
            "{}",
            k.name
        );
        let initstate = fixture(k).join("sys/module/nf_conntrack/initstate");
        assert_eq!(initstate.exists(), k.module, "{}", k.name);
        let stat = fixture(k).join("proc/net/stat/nf_conntrack");
        assert_eq!(stat.exists(), k.procfs, "{}", k.name);
    }
}

#[test]
fn dry_run_text_and_json_on_every_tree() {
    for k in KERNELS {
        let t = Tree::new(k.name, INITIAL);
        let text = stdout(&t, &["plan", "--sample", "0"], 0);
        let kind = if k.module {
            "loadable module"
        } else {
            "built in"
        };
        assert!(text.contains(kind), "{}:\n{text}", k.name);
        let plan = json(&stdout(&t, &["plan", "--sample", "0", "--json"], 0), k.name);
        assert!(plan["plan"]["changes"].is_array(), "{}", k.name);
        assert!(t.etc_files().is_empty(), "{}: a dry run wrote", k.name);
    }
}

/// Under pressure, the planned hash size is max / 4 rounded up to the tree's pages
/// (8192 buckets with 64 KiB pages), and apply writes exactly the plan and reads back.
#[test]
fn pressure_plan_rounds_to_the_page_and_apply_reads_back() {
    for k in KERNELS {
        let t = Tree::new(k.name, INITIAL);
        // A max whose quarter is no whole page on either page size.
        let align = k.page / 8;
        t.set(MAX, 100_000);
        t.set(BUCKETS, align);
        t.pressure(100_000);
        // `--sample 0`: the counters once, no second read a second later.
        let plan = json(&stdout(&t, &["plan", "--json", "--sample", "0"], 0), k.name);
        let change = |key: &str| {
            plan["plan"]["changes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["key"] == key && c["target"]["scope"] == "global")
                .map(|c| (u(&c["old"]), u(&c["new"])))
                .unwrap_or_else(|| panic!("{}: no {key} change under pressure", k.name))
        };
        let (old_max, new_max) = change(MAX);
        assert_eq!(old_max, 100_000, "{}", k.name);
        assert!(new_max > old_max, "{}: {old_max} -> {new_max}", k.name);
        let (_, new_buckets) = change(BUCKETS);
        assert_eq!(
            new_buckets,
            new_max.div_ceil(4).div_ceil(align) * align,
            "{}: max {new_max} / 4 in pages of {align} buckets",
            k.name
        );
        let out = t.expect(&["apply"], 0);
        assert_eq!(
            (t.get(MAX), t.get(BUCKETS)),
            (new_max, new_buckets),
            "{out}"
        );
        assert!(
            t.etc_file(SYSCTL_FILE)
                .contains(&format!("{MAX} = {new_max}"))
        );
        if k.module {
            let modprobe = t.etc_file(MODPROBE_FILE);
            assert!(
                modprobe.contains(&format!("hashsize={new_buckets}")),
                "{modprobe}"
            );
        }
    }
}

/// The recorded replies go through ctune's own reader (`ctstats::recorded`, what
/// `--netlink-root` reads): where the kernel has ctnetlink they give the tree's count and,
/// where it also has the stat file, every counter the file shows under the same name (the
/// mapping of ctnetlink's attributes onto the file's columns, per kernel); where it has
/// none, the kernel's refusal.
#[test]
fn recorded_netlink_replies_agree_with_the_tree() {
    use ctune::sense::ctstats::{StatsError, recorded};
    for k in KERNELS {
        let replies = recorded(&fixture(k).join("netlink"));
        if !k.ctnetlink {
            let e = replies.expect_err(k.name);
            assert!(
                matches!(
                    e,
                    StatsError::Kernel {
                        request: "IPCTNL_MSG_CT_GET_STATS",
                        errno: nix::errno::Errno::EINVAL
                    }
                ),
                "{}: EINVAL for a missing subsystem: {e}",
                k.name
            );
            continue;
        }
        let nl = replies.unwrap_or_else(|e| panic!("{}: {e}", k.name));
        assert_eq!(nl.entries, sysctls(k)[COUNT], "{}: entries", k.name);
        for key in ["drop", "early_drop", "insert_failed", "found", "invalid"] {
            assert!(nl.get(key).is_some(), "{}: no {key} over ctnetlink", k.name);
        }
        let Ok(text) = fs::read_to_string(fixture(k).join("proc/net/stat/nf_conntrack")) else {
            continue;
        };
        let file = ctune_core::model::stat::parse(&text).unwrap();
        assert_eq!(nl.entries, file.entries, "{}: entries", k.name);
        for (key, value) in &nl.counters {
            assert_eq!(
                file.get(key),
                Some(*value),
                "{}: {key} over ctnetlink and in the stat file",
                k.name
            );
        }
    }
}

/// An OpenWrt router whose stat file is gone and that lacks kmod-nf-conntrack-netlink:
/// no counters from either source; status still works and says what to install.
#[test]
fn no_stat_file_and_no_ctnetlink_says_what_to_install() {
    let t = Tree::new("kernel-6.6-openwrt2410", INITIAL);
    fs::remove_file(t.proc().join("net/stat/nf_conntrack")).unwrap();
    let s = json(
        &stdout(&t, &["status", "--json", "--sample", "0"], 0),
        "status",
    );
    let init = &s["namespaces"][0];
    assert!(
        init["drop"].is_null() && init["counters_source"].is_null(),
        "{init:#}"
    );
    let err = init["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("net/stat/nf_conntrack: not found")
            && err.contains("EINVAL")
            && err.contains("install kmod-nf-conntrack-netlink"),
        "{init:#}"
    );
    let text = stdout(&t, &["status", "--sample", "0"], 0);
    assert!(text.contains("counters: none could be read"), "{text}");
}
