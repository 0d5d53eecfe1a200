//! The container image (packaging/container/build-image.sh) and the DaemonSet
//! (deploy/kubernetes/) under a real container runtime, as root.
//!
//! The runtime is Debian's podman with runc, configured as this kind of machine needs
//! (crun fails here: the open-file hard limit is below what it sets, and cgroups are in
//! hybrid mode): a containers.conf with `default_ulimits = []`, `cgroup_manager =
//! "cgroupfs"` and `runtime = "runc"`, passed through CONTAINERS_CONF, and a storage of
//! the test's own (CONTAINERS_STORAGE_CONF, the vfs driver, in a temporary directory), so
//! nothing is left in the machine's podman storage.
//!
//! - The DaemonSet's pod template runs as `podman run` commands translated from it, every
//!   setting it uses (a setting the translation does not know fails the test), the host
//!   paths under /etc and /var/lib moved into the test's directory and the metrics port a
//!   free one. Not `podman kube play`: Debian's podman 4.3 plays no DaemonSet, drops
//!   hostPID from a Pod without a word, and restarts a pod's init container under the
//!   pod's restartPolicy until its own removal of it races (podman #16343, #18477). The
//!   init container applies a persisted max (`ctune boot`); the agent raises the host's
//!   max, lowers a flooded test namespace's timeouts, persists into the mounted
//!   directory, answers /healthz (asked by the test, as the kubelet would), stays within
//!   the memory limit, and stops cleanly on SIGTERM.
//! - An unprivileged container (read-only /proc/sys; setns and ptrace granted, as in an
//!   LXC or kind node) says once that it cannot write, keeps reporting, and does not spin.
//! - The manifest's settings are checked against what the test ran (no root needed).

use crate::common;

use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn yaml(rel: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn daemonset() -> Value {
    yaml("deploy/kubernetes/daemonset.yaml")
}

/// The ConfigMap's ctune.yaml, parsed.
fn shipped_config() -> Value {
    let cm = yaml("deploy/kubernetes/configmap.yaml");
    let text = cm["data"]["ctune.yaml"]
        .as_str()
        .expect("configmap.yaml: data.ctune.yaml");
    serde_saphyr::from_str(text).expect("the ConfigMap's ctune.yaml")
}

fn image_name() -> String {
    format!("localhost/ctune:{}", env!("CARGO_PKG_VERSION"))
}

/// podman and buildah with the configuration this machine needs and a storage of the
/// test's own; every pod and container is removed on drop, then the storage.
struct Runtime {
    dir: tempfile::TempDir,
}

impl Runtime {
    fn new() -> Runtime {
        for tool in ["podman", "buildah", "runc"] {
            assert!(
                Command::new(tool).arg("--version").output().is_ok(),
                "{tool} not found: apt-get install podman buildah runc (scripts/test --install does)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("ctune-podman-")
            .tempdir()
            .unwrap();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = []\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\n\
                 events_logger = \"file\"\ntmp_dir = \"{d}/libpod\"\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/storage\"\nrunroot = \"{d}/runroot\"\n"
            ),
        )
        .unwrap();
        Runtime { dir }
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            );
        c
    }

    fn podman(&self, args: &[&str]) -> Output {
        self.command("podman")
            .args(args)
            .output()
            .expect("run podman")
    }

    /// `podman ARGS`, which must succeed; its stdout.
    fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(out.status.success(), "podman {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Builds the image with the repository's script into this storage.
    fn build_image(&self) -> String {
        let out = self
            .command("bash")
            .arg("packaging/container/build-image.sh")
            .current_dir(repo())
            .output()
            .expect("run build-image.sh");
        assert!(out.status.success(), "build-image.sh: {}", text(&out));
        let image = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(image, image_name());
        image
    }

    fn logs(&self, container: &str) -> String {
        text(&self.podman(&["logs", container]))
    }

    /// The host PID of a running container's ctune.
    fn pid(&self, container: &str) -> i32 {
        self.podman_ok(&["inspect", "--format", "{{.State.Pid}}", container])
            .parse()
            .expect("a pid")
    }

    /// Stops the container (SIGTERM, as the kubelet does, then SIGKILL after `grace`
    /// seconds) and returns its exit code.
    fn stop(&self, container: &str, grace: u64) -> i64 {
        self.podman_ok(&["stop", "-t", &grace.to_string(), container]);
        self.podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", container])
            .parse()
            .expect("an exit code")
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.podman(&["pod", "rm", "--all", "--force", "--time", "0"]);
        let _ = self.podman(&["rm", "--all", "--force", "--time", "0"]);
    }
}

/// The DaemonSet's pod template as `podman run` arguments, one list per container (init
/// containers first): every setting the template uses is translated, and a setting this
/// does not know fails the test, so the test keeps running what the manifest says.
/// Host paths under /etc and /var/lib move under `host`; the ConfigMap volume is the
/// directory `config`.
struct PodRun {
    /// (container name, role: "init" or "agent", arguments after `podman run`)
    containers: Vec<(String, &'static str, Vec<String>)>,
    /// terminationGracePeriodSeconds: `podman stop -t`.
    grace: u64,
}

fn pod_run(ds: &Value, pod: &str, host: &Path, config: &Path) -> PodRun {
    let spec = &ds["spec"]["template"]["spec"];
    let mut pod_args = Vec::new();
    let mut grace = 30;
    for (key, value) in spec.as_object().expect("pod spec") {
        match key.as_str() {
            "hostNetwork" if value == true => pod_args.extend(["--network", "host"]),
            "hostPID" if value == true => pod_args.extend(["--pid", "host"]),
            "terminationGracePeriodSeconds" => grace = value.as_u64().unwrap(),
            // The API server's and the scheduler's (no token is mounted by podman either).
            "automountServiceAccountToken"
            | "enableServiceLinks"
            | "priorityClassName"
            | "tolerations"
            | "initContainers"
            | "containers"
            | "volumes" => {}
            other => panic!("daemonset.yaml: pod setting {other} is not run by this test"),
        }
    }
    let mut volumes = std::collections::HashMap::new();
    for v in spec["volumes"].as_array().expect("volumes") {
        let source = if let Some(path) = v["hostPath"]["path"].as_str() {
            let moved = if path.starts_with("/etc/") || path.starts_with("/var/lib/") {
                host.join(path.trim_start_matches('/'))
            } else {
                PathBuf::from(path)
            };
            assert_eq!(v["hostPath"]["type"], "DirectoryOrCreate", "{v}");
            std::fs::create_dir_all(&moved).unwrap();
            moved
        } else if v["configMap"]["name"] == "ctune" {
            config.to_path_buf()
        } else {
            panic!("daemonset.yaml: volume {v} is not run by this test");
        };
        volumes.insert(v["name"].as_str().unwrap().to_string(), source);
    }
    let mut containers = Vec::new();
    let roles = [("initContainers", "init"), ("containers", "agent")];
    for (list, role) in roles {
        for c in spec[list].as_array().into_iter().flatten() {
            let name = format!("{pod}-{}", c["name"].as_str().unwrap());
            let mut args: Vec<String> = vec!["--name".into(), name.clone()];
            args.extend(pod_args.iter().map(|a| a.to_string()));
            args.extend(container_args(c, &volumes));
            args.push(c["image"].as_str().unwrap().to_string());
            args.extend(
                c["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string()),
            );
            containers.push((name, role, args));
        }
    }
    PodRun { containers, grace }
}

/// One container's settings as `podman run` options (before the image).
fn container_args(c: &Value, volumes: &std::collections::HashMap<String, PathBuf>) -> Vec<String> {
    let mut args = Vec::new();
    for (key, value) in c.as_object().unwrap() {
        match key.as_str() {
            "securityContext" => {
                for (k, v) in value.as_object().unwrap() {
                    match (k.as_str(), v) {
                        ("privileged", Value::Bool(true)) => args.push("--privileged".into()),
                        ("readOnlyRootFilesystem", Value::Bool(true)) => {
                            args.push("--read-only".into())
                        }
                        _ => {
                            panic!("daemonset.yaml: securityContext {k}: {v} not run by this test")
                        }
                    }
                }
            }
            "resources" => {
                let mem = |q: &Value| format!("{}k", quantity_kib(q.as_str().unwrap()));
                args.extend(["--memory".into(), mem(&value["limits"]["memory"])]);
                args.extend([
                    "--memory-reservation".into(),
                    mem(&value["requests"]["memory"]),
                ]);
                // The kubelet's conversion of a CPU request to shares (at least 2).
                let milli: u64 = value["requests"]["cpu"]
                    .as_str()
                    .unwrap()
                    .trim_end_matches('m')
                    .parse()
                    .unwrap();
                args.extend([
                    "--cpu-shares".into(),
                    (milli * 1024 / 1000).max(2).to_string(),
                ]);
            }
            "volumeMounts" => {
                for m in value.as_array().unwrap() {
                    let source = &volumes[m["name"].as_str().unwrap()];
                    let mut opts = Vec::new();
                    if m["readOnly"] == true {
                        opts.push("ro");
                    }
                    match m["mountPropagation"].as_str() {
                        Some("HostToContainer") => opts.push("rslave"),
                        None => {}
                        Some(other) => panic!("daemonset.yaml: mountPropagation {other}"),
                    }
                    let mut spec =
                        format!("{}:{}", source.display(), m["mountPath"].as_str().unwrap());
                    if !opts.is_empty() {
                        spec = format!("{spec}:{}", opts.join(","));
                    }
                    args.extend(["-v".into(), spec]);
                }
            }
            // The test asks /healthz itself, as the kubelet would.
            "name" | "image" | "args" | "livenessProbe" => {}
            other => panic!("daemonset.yaml: container setting {other} is not run by this test"),
        }
    }
    args
}

/// The ConfigMap's config narrowed to the test: the test namespace only, a small table
/// whose ceiling the flood reaches, steps every 200 ms, metrics on `port` (loopback).
fn test_config(ns: &str, port: u16) -> String {
    let mut cfg = shipped_config();
    cfg["namespaces"] = json!({ "mode": "named", "names": [ns] });
    cfg["ceiling"] = json!({ "min_max": 4096, "max_cap": 32768 });
    cfg["agent"] = json!({ "interval": "200ms" });
    cfg["metrics"]["listen"] = json!(format!("127.0.0.1:{port}"));
    cfg.to_string()
}

/// CPU ticks (user + system) a process has used.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A line of /proc/PID/status in KiB (VmHWM: the peak resident set).
fn status_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| {
            v.trim_start_matches(':')
                .trim()
                .trim_end_matches(" kB")
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Kubernetes' memory quantity ("64Mi") in KiB.
fn quantity_kib(q: &str) -> u64 {
    let n: u64 = q.trim_end_matches(char::is_alphabetic).parse().unwrap();
    match q.trim_start_matches(char::is_numeric) {
        "Ki" => n,
        "Mi" => n << 10,
        "Gi" => n << 20,
        other => panic!("unexpected unit {other:?} in {q}"),
    }
}

#[test]
fn the_daemonset_pod_tunes_the_host_persists_and_stops_cleanly() {
    require_root("the_daemonset_pod_tunes_the_host_persists_and_stops_cleanly");
    let guard = GlobalGuard::save();
    let ns = TestNetns::new("pod");
    guard.set_max(16_384);
    guard.set_buckets(4096);
    let rt = Runtime::new();
    rt.build_image();
    let host = rt.dir.path().join("host");
    let config = rt.dir.path().join("configmap");
    std::fs::create_dir_all(&config).unwrap();
    let port = free_port();
    std::fs::write(config.join("ctune.yaml"), test_config(&ns.name, port)).unwrap();
    let ds = daemonset();
    let pod = pod_run(
        &ds,
        &format!("ctune-test-{}", std::process::id()),
        &host,
        &config,
    );
    // The init container's work: a max persisted by an earlier run, above the live one.
    let sysctl_d = host.join("etc/sysctl.d");
    std::fs::write(
        sysctl_d.join("99-ctune.conf"),
        "net.netfilter.nf_conntrack_max = 20480\n",
    )
    .unwrap();
    let [(_, "init", boot), (agent, "agent", run)] = &pod.containers[..] else {
        panic!("one init container, then the agent: {:?}", pod.containers);
    };
    let mut boot_args = vec!["run", "--rm"];
    boot_args.extend(boot.iter().map(String::as_str));
    let booted_out = rt.podman(&boot_args);
    let booted = global("nf_conntrack_max");
    assert!(
        booted_out.status.success() && booted == 20_480,
        "the init container (ctune boot) did not apply the persisted max: max {booted}; {}",
        text(&booted_out)
    );
    let mut run_args = vec!["run", "--detach"];
    run_args.extend(run.iter().map(String::as_str));
    rt.podman_ok(&run_args);
    let state = host.join("var/lib/ctune/state.json");
    assert!(
        wait_for(Duration::from_secs(20), || state.exists()),
        "the agent took no step; its log:\n{}",
        rt.logs(agent)
    );

    let refused = ns.udp_flows_paced(0, 30_000, Some(10_000));
    let udp = || ns.read_sysctl("nf_conntrack_udp_timeout");
    let tuned = wait_for(Duration::from_secs(20), || {
        global("nf_conntrack_max") > 20_480 && udp() < 600
    });
    assert!(
        tuned,
        "max {} (from {booted}), the namespace's udp_timeout {} (from 600), {refused} sends refused; agent log:\n{}",
        global("nf_conntrack_max"),
        udp(),
        rt.logs(agent)
    );
    let max = global("nf_conntrack_max");
    let persisted = std::fs::read_to_string(sysctl_d.join("99-ctune.conf")).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::read_to_string(
            sysctl_d.join("99-ctune.conf")
        )
        .is_ok_and(|t| t.contains(&format!("nf_conntrack_max = {max}")))),
        "max {max} not persisted into the mounted sysctl.d: {persisted}"
    );
    let health = http_request(port, "/healthz");
    assert!(
        health
            .as_ref()
            .is_some_and(|(s, b)| *s == 200 && b.starts_with("ok:")),
        "/healthz: {health:?}"
    );

    // The resources the manifest asks for hold what the agent used.
    let pid = rt.pid(agent);
    let peak_kib = status_kib(pid, "VmHWM");
    let limit = ds["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
        .as_str()
        .expect("a memory limit");
    eprintln!(
        "container agent: peak RSS {peak_kib} KiB, CPU {} ticks (limit {limit})",
        cpu_ticks(pid)
    );
    assert!(
        peak_kib * 4 < quantity_kib(limit),
        "peak RSS {peak_kib} KiB leaves less than 4x room under the limit {limit}"
    );

    let code = rt.stop(agent, pod.grace);
    let log = rt.logs(agent);
    assert_eq!(code, 0, "exit code on SIGTERM; log:\n{log}");
    assert!(log.contains("SIGTERM: stopping"), "{log}");
    drop(rt);
    drop(ns);
    drop(guard);
}

#[test]
fn a_read_only_proc_sys_is_said_once_and_the_agent_keeps_reporting_without_spinning() {
    require_root("a_read_only_proc_sys_is_said_once_and_the_agent_keeps_reporting");
    let guard = GlobalGuard::save();
    let ns = TestNetns::new("ro");
    guard.set_max(16_384);
    let rt = Runtime::new();
    let image = rt.build_image();
    let port = free_port();
    let dir = rt.dir.path();
    for sub in ["etc", "state", "run"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(dir.join("ctune.yaml"), test_config(&ns.name, port)).unwrap();
    let vol = |host: &str, inside: &str| format!("{}:{inside}", dir.join(host).display());
    let name = format!("ctune-ro-{}", std::process::id());
    // Not privileged: podman mounts /proc/sys read-only. SYS_ADMIN and SYS_PTRACE let
    // ctune enter the test namespace, as in an LXC or kind node.
    rt.podman_ok(&[
        "run",
        "--detach",
        "--name",
        &name,
        "--cap-add",
        "SYS_ADMIN,SYS_PTRACE",
        "--network",
        "host",
        "--pid",
        "host",
        "-v",
        &vol("ctune.yaml", "/etc/ctune/ctune.yaml:ro"),
        "-v",
        &vol("etc", "/etc/sysctl.d"),
        "-v",
        &vol("state", "/var/lib/ctune"),
        "-v",
        &vol("run", "/run/ctune"),
        "-v",
        "/run/netns:/run/netns:ro,rslave",
        &image,
        "run",
    ]);
    let refused = ns.udp_flows_paced(0, 15_000, Some(10_000));
    let level = format!("ctune_pressure_level{{netns=\"{}\"}}", ns.name);
    let reported = wait_for(Duration::from_secs(20), || {
        http_get(port, "/metrics").is_some_and(|m| {
            m.lines()
                .any(|l| l.starts_with(&level) && !l.ends_with(" 0"))
        })
    });
    assert!(
        reported,
        "no pressure reported for the flooded namespace ({refused} sends refused); metrics:\n{}\nlog:\n{}",
        http_get(port, "/metrics").unwrap_or_default(),
        rt.logs(&name)
    );
    // Steps go on (every 200 ms): the CPU they use over a few seconds is far from a spin.
    let pid = rt.pid(&name);
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    std::thread::sleep(Duration::from_secs(3));
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let busy = (cpu_ticks(pid) - c0) as f64 / ticks_per_sec / t0.elapsed().as_secs_f64();
    let status = rt.podman(&["exec", &name, "/usr/bin/ctune", "status", "--sample", "0"]);
    let metrics = http_get(port, "/metrics").unwrap_or_default();
    let log = rt.logs(&name);
    assert!(
        busy < 0.25,
        "the agent used {busy:.2} of a core; log:\n{log}"
    );
    assert_eq!(
        global("nf_conntrack_max"),
        16_384,
        "max written; log:\n{log}"
    );
    assert_eq!(
        ns.read_sysctl("nf_conntrack_udp_timeout"),
        600,
        "a timeout was written; log:\n{log}"
    );
    assert!(
        metrics.contains("\nctune_apply_errors_total 0\n"),
        "writes were attempted:\n{metrics}"
    );
    let said: Vec<&str> = log.lines().filter(|l| l.contains("read-only")).collect();
    assert_eq!(said.len(), 1, "said not exactly once:\n{log}");
    assert!(
        said[0].contains("writes nothing") && !log.contains("ERROR"),
        "{log}"
    );
    // `ctune status` in the container still reads the table: exit 5, over a level.
    assert_eq!(
        status.status.code(),
        Some(5),
        "ctune status: {}",
        text(&status)
    );
    assert_eq!(rt.stop(&name, 10), 0, "exit code on SIGTERM; log:\n{log}");
    drop(rt);
    drop(ns);
    drop(guard);
}

/// What the container test ran is what the manifest says, and the manifest is what a
/// least-privilege DaemonSet of ctune needs. No root: reads files only.
#[test]
fn the_manifest_holds_the_settings_the_container_test_ran() {
    let ds = daemonset();
    assert_eq!(ds["kind"], "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true, "global keys: initial namespace");
    assert_eq!(spec["hostPID"], true, "namespaces found through processes");
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert!(
        spec["tolerations"].as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none())),
        "tolerates every taint: {}",
        spec["tolerations"]
    );
    let init = &spec["initContainers"][0];
    let main = &spec["containers"][0];
    assert_eq!(init["args"], json!(["boot"]));
    assert_eq!(main["args"], json!(["run"]));
    let mounts_of = |c: &Value| -> Vec<String> {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap().to_string())
            .collect()
    };
    for c in [init, main] {
        assert_eq!(c["image"], image_name().as_str(), "image and Cargo version");
        assert_eq!(c["securityContext"]["privileged"], true);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert!(c["resources"]["requests"]["memory"].is_string());
        assert!(c["resources"]["limits"]["memory"].is_string());
        for path in [
            "/etc/ctune",
            "/etc/sysctl.d",
            "/var/lib/ctune",
            "/run/ctune",
        ] {
            assert!(
                mounts_of(c).iter().any(|m| m == path),
                "{path} in {}",
                c["name"]
            );
        }
    }
    for path in ["/etc/modprobe.d", "/etc/modules-load.d", "/run/netns"] {
        assert!(
            mounts_of(main).iter().any(|m| m == path),
            "{path} in the agent"
        );
    }
    // Each host path is mounted at the same path inside, as ctune's default roots expect.
    for v in spec["volumes"].as_array().unwrap() {
        if let Some(path) = v["hostPath"]["path"].as_str() {
            let name = v["name"].as_str().unwrap();
            let at = main["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == name)
                .map(|m| m["mountPath"].as_str().unwrap().to_string());
            assert_eq!(at.as_deref(), Some(path), "volume {name}");
        }
    }
    let netns = main["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/run/netns")
        .unwrap();
    assert_eq!(netns["mountPropagation"], "HostToContainer");

    // The liveness probe asks the port the config serves, and the annotations name it.
    let cfg = shipped_config();
    let listen = cfg["metrics"]["listen"].as_str().expect("metrics.listen");
    let port = listen.rsplit(':').next().unwrap();
    let probe = &main["livenessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/healthz");
    assert_eq!(probe["port"].to_string(), port);
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], port);
    assert!(
        listen.starts_with("0.0.0.0:"),
        "the kubelet probes the node's address"
    );

    // ctune accepts the ConfigMap's config (a dry run against a fixture kernel).
    let dir = tempfile::tempdir().unwrap();
    let cm = yaml("deploy/kubernetes/configmap.yaml");
    let file = dir.path().join("ctune.yaml");
    std::fs::write(&file, cm["data"]["ctune.yaml"].as_str().unwrap()).unwrap();
    let tree = Tree::copy("kernel-6.18");
    let (code, out, err) = tree.ctune(&["--config", file.to_str().unwrap(), "plan"]);
    assert_eq!(code, 0, "{out}{err}");
    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    let resources = kustomization["resources"].as_array().unwrap();
    for r in resources {
        let rel = format!("deploy/kubernetes/{}", r.as_str().unwrap());
        assert!(repo().join(&rel).is_file(), "{rel}");
    }
    assert_eq!(
        kustomization["images"][0]["newTag"],
        env!("CARGO_PKG_VERSION")
    );
}
