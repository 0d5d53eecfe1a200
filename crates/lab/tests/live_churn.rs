//! The churn soak's short form (`ctune-pods churn` for the hour on the bench): pods'
//! namespaces created and deleted at 20 a second, with entries and a flood every 15 s,
//! under `ctune run`. Needs root; restores max and deletes every namespace it made.

use super::live_bench::{agent_binary, require_root};
use ctune_lab::pods::{self, ChurnOptions};
use std::time::Duration;

/// Through a minute of pods coming and going the agent stays as it was: memory, open
/// descriptors and its state file flat, no namespace that vanished mid-read reported as
/// a problem (by `status` or in the log), no key changed back and forth, and every
/// change it made logged once.
#[test]
fn churn_leaves_the_agent_as_it_was() {
    require_root("churn_leaves_the_agent_as_it_was");
    let dir = tempfile::tempdir().unwrap();
    let opts = ChurnOptions {
        duration: Duration::from_secs(60),
        rate: 20.0,
        lifetime: Duration::from_secs(5),
        entries: 50,
        flood_every: Duration::from_secs(15),
    };
    let r = pods::churn(&agent_binary(), dir.path(), &opts).expect("churn");
    let seen = format!("{r:#?}");
    // A loaded CI machine may fall behind the rate; a third of it is still churn.
    assert!(r.pods >= 300 && r.floods >= 2, "too little churn: {seen}");
    assert!(r.changes >= 1, "the floods moved nothing: {seen}");
    assert!(
        r.status_problems.is_empty(),
        "status reported vanished namespaces: {seen}"
    );
    assert!(
        r.log_problems.is_empty(),
        "the agent logged vanished namespaces: {seen}"
    );
    assert!(r.unlogged.is_empty(), "changes not logged once: {seen}");
    assert!(r.most_changes_of_one_key <= 2, "a key flapped: {seen}");
    let (first, during, last) = (&r.samples[0], &r.samples[2], r.samples.last().unwrap());
    let grown_kib = last.1.rss_kib.saturating_sub(during.1.rss_kib);
    assert!(
        grown_kib <= 1536,
        "RSS grew {grown_kib} KiB after the first 10 s: {seen}"
    );
    assert!(
        last.1.fds <= first.1.fds + 4,
        "descriptors left open: {seen}"
    );
    assert!(
        last.2 <= first.2 + 2048,
        "the state file kept gone namespaces: {seen}"
    );
}
