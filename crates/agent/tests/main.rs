//! Integration tests of the ctune binary and library: one test crate (one link, one
//! process) whose modules are the former test binaries, named as they were (run one with
//! `cargo test -p ctune --test integration openwrt::`). The live tests among them take
//! `common::global_lock` where they change global values, so they serialize within
//! this process and with any other on the machine.

mod common;

mod advice_nft;
mod agent_signals;
mod apply_tree;
mod binary_contents;
mod container;
mod cross_builds;
mod ctnetlink_fuzz;
mod deb_package;
mod docs_examples;
mod docs_layout;
mod fixture_cli;
mod golden;
mod history_verify;
mod hostile;
mod json_docs;
mod kernel_matrix;
mod kernel_reading;
mod live_advice;
mod live_agent;
mod live_clash;
mod live_composition;
mod live_kernel_facts;
mod live_kube_proxy;
mod live_many_namespaces;
mod live_memory;
mod live_metrics_flood;
mod live_metrics_stuck_step;
mod live_no_procfs;
mod live_prometheus;
mod live_role;
mod live_soak;
mod live_status;
mod live_top;
mod metrics_textfile;
mod monitoring;
mod openwrt;
mod parsers_fuzz;
mod restore_text;
mod roles;
mod rpm_package;
mod status_watch;
mod systemd_units;
