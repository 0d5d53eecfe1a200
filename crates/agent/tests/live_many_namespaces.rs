//! Reading many namespaces on the live kernel (docs/design.md, "Many namespaces"): what
//! ctune keeps open of a namespace must not keep it alive, and a quiet namespace is
//! counted without being entered while its counters and timeouts stay in the report.
//! Needs root; deletes the namespaces it makes.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::Duration;

use crate::common::{GlobalGuard, TestNetns, require_root, run_root, wait_for};
use ctune::run::engine::Engine;
use ctune::sense::netns::{self, Handle};
use ctune::sense::nsdir;
use ctune::sense::roots::Roots;
use ctune_core::model::NetnsId;
use ctune_core::tunables::COUNT;

/// A namespace's kept sysctl directory and count file read ENOENT once it is deleted:
/// they did not keep it alive (a `/proc/net` file or a namespace file would have), so a
/// node's deleted pods are freed while the agent runs.
#[test]
fn kept_sysctl_descriptors_do_not_keep_a_namespace_alive() {
    require_root("kept_sysctl_descriptors_do_not_keep_a_namespace_alive");
    let ns = TestNetns::new("kept");
    ns.udp_flows(20);
    let inode = std::fs::metadata(ns.path()).unwrap().ino();
    let handle = Handle {
        id: NetnsId {
            name: ns.name.clone(),
            inode,
        },
        path: ns.path(),
    };
    let dir = Roots::default().netfilter_sysctl_dir();
    let kept = netns::read_each(&[handle], |h| nsdir::count_file(&dir, h.id.inode, COUNT))
        .remove(0)
        .expect("entered")
        .expect("count file");
    let count = nsdir::kept_count(inode, &dir.join(COUNT));
    assert!(
        count.is_some_and(|c| c >= 20),
        "read from outside: {count:?}"
    );
    drop(ns);
    // The kernel frees a namespace in a work queue after its last reference goes.
    let mut buf = [0u8; 32];
    let freed = wait_for(Duration::from_secs(20), || {
        kept.read_at(&mut buf, 0).is_err()
    });
    let seen = kept.read_at(&mut buf, 0);
    assert!(
        freed,
        "the kept count file still reads ({seen:?}): it keeps the namespace alive"
    );
    assert_eq!(nsdir::kept_count(inode, &dir.join(COUNT)), None);
    assert!(
        nsdir::reborn(inode),
        "a namespace given this inode number next is told from the dead one"
    );
}

/// The agent's step reads a quiet namespace's counters, then only counts it until its
/// fourth idle step (its count from the kept file, without entering it), then reads
/// them again; the report keeps its counters and timeouts throughout, and the count
/// follows the entries.
#[test]
fn a_quiet_namespace_is_counted_without_entering_it() {
    require_root("a_quiet_namespace_is_counted_without_entering_it");
    // An agent's step may write global values: serialized with the tests that set them,
    // which would otherwise see it move max under them, and put back after.
    let _guard = GlobalGuard::save();
    let ns = TestNetns::new("quiet");
    ns.udp_flows(30);
    let dir = tempfile::tempdir().unwrap();
    let roots = Roots {
        run: run_root(dir.path()),
        etc: dir.path().join("etc"),
        state: dir.path().join("state"),
        ..Roots::default()
    };
    let yaml = format!("namespaces:\n  mode: named\n  names: [\"{}\"]\n", ns.name);
    let cfg = ctune_core::config::parse(&yaml, std::path::Path::new("<test>")).unwrap();
    let idle = cfg.agent.idle_interval;
    let mut engine = Engine::new(roots, cfg).unwrap();
    let t0 = ctune::act::state::now();
    let mut seen = Vec::new();
    let every = ctune_core::controller::QUIET_REREAD.div_ceil(2);
    for k in 0..=every {
        if k == 2 {
            ns.udp_flows_paced(1000, 25, None);
        }
        let r = engine.step(t0 + idle * k).unwrap();
        let n = r
            .observation
            .namespaces
            .iter()
            .find(|n| n.id.name == ns.name)
            .unwrap();
        seen.push((
            n.counters_unread,
            n.count,
            n.stat.is_some(),
            n.timeouts.len(),
        ));
    }
    let unread: Vec<bool> = seen.iter().map(|s| s.0).collect();
    let mut expected = vec![true; every as usize + 1];
    (expected[0], expected[every as usize]) = (false, false);
    assert_eq!(unread, expected, "{seen:?}");
    assert!(
        seen.iter().all(|s| s.2 && s.3 > 0),
        "counters and timeouts kept: {seen:?}"
    );
    let counts: Vec<u64> = seen.iter().map(|s| s.1.unwrap_or(0)).collect();
    assert!(counts[0] >= 30 && counts[2] >= counts[0] + 25, "{seen:?}");
}

/// Every namespace's entries are objects of the one conntrack slab cache: its `objects`,
/// which the agent's probe reads instead of every count (docs/design.md, "Many
/// namespaces"), holds at least the entries of two namespaces of this test.
#[test]
fn the_slab_total_holds_the_entries_of_every_namespace() {
    require_root("the_slab_total_holds_the_entries_of_every_namespace");
    let objects = std::path::Path::new("/sys/kernel/slab/nf_conntrack/objects");
    if !objects.exists() {
        eprintln!(
            "skipped: {} is absent (SLUB without its statistics)",
            objects.display()
        );
        return;
    }
    let (a, b) = (TestNetns::new("slab-a"), TestNetns::new("slab-b"));
    a.udp_flows(300);
    b.udp_flows(500);
    let counts = (a.read_sysctl(COUNT), b.read_sysctl(COUNT));
    let text = std::fs::read_to_string(objects).unwrap();
    let total: u64 = text.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        counts.0 >= 300 && counts.1 >= 500 && total >= counts.0 + counts.1,
        "counts {counts:?}, {} says {text:?}",
        objects.display()
    );
}
