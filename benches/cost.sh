#!/usr/bin/env bash
# benches/cost.sh: what ctune costs as a process on this machine, beside what an operator
# would otherwise run to watch conntrack (Debian's prometheus-node-exporter with only its
# conntrack collector). Prints a markdown table; docs/benchmarks-cost.md has the method
# and a recorded run.
#
# Run as root, from anywhere:   sudo bash benches/cost.sh
#
# What it does, in order:
#   1. Installs what is missing (hyperfine, prometheus-node-exporter, curl, jq, time,
#      strace; nftables, iproute2, python3 and conntrack for the filled-table part) and
#      builds the release binary and the agent_cost bench.
#   2. Safety pre-flight. The agent is run against the LIVE kernel, so it must plan
#      nothing: with `namespaces: {mode: initial}` on an idle host (count well under 75 %
#      of max) its plan is empty. The script refuses to start if `ctune --dry-run --json`
#      plans any change, snapshots every nf_conntrack_* sysctl (except the count) and
#      the hashsize parameter, and compares them after each phase: if anything changed it
#      stops (saying whether the agent logged a change, or someone else did).
#   3. `ctune --dry-run --sample 0 --config <mode: initial>` on the live kernel (read-only;
#      --sample 0: one reading, not the default 1 s sample, so the process cost shows): wall time
#      with hyperfine (-N, no shell; RUNS runs after 20 warm-ups), peak RSS with
#      /usr/bin/time.
#   4. `ctune run` with that config and `--etc-root`, `--state-dir`, `--run-root` (its
#      lock) in a temp dir, for WINDOW s after a 2 s start: CPU per second (utime+stime
#      from /proc/PID/stat, and the precise on-CPU time from /proc/PID/task/*/schedstat),
#      peak RSS (VmHWM from /proc/PID/status, read before stopping); then strace -c for
#      another WINDOW s (syscalls and fsyncs per second); then SIGTERM (must exit 0).
#      Then twice more for WINDOW s, to split the CPU: steps only (probe_interval =
#      interval) and probes only (interval 1h: one step at start, then a probe every 50 ms).
#   5. prometheus-node-exporter --collector.disable-defaults --collector.conntrack on
#      127.0.0.1:PORT: CPU per second idle and scraped once a second, scrape wall time
#      with hyperfine (a curl process per scrape, like the dry run's own exec) and curl's
#      request time, the collector's self-reported duration, CPU per scrape, VmHWM.
#   6. Unless FILL=0: the same read-only probes inside a scratch network namespace, empty,
#      then holding FILL conntrack entries (UDP flows on its loopback), then flushed again
#      with `conntrack -F` (no host sysctl is touched; the namespace and its entries are
#      deleted at exit): the count pread (the agent_cost bench binary, `count` cases),
#      the dry run, and a node-exporter scrape, to show whether either costs more with a
#      bigger table.
#
# Output: the machine, one markdown table ctune vs node-exporter, the table-size table,
# and the agent's strace -c summary on stdout; progress on stderr. Takes ~2 minutes.
# Knobs (environment): RUNS=200 WINDOW=10 PORT=19100 (and PORT+1) FILL=100000.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

RUNS=${RUNS:-200}
WINDOW=${WINDOW:-10}
PORT=${PORT:-19100}
FILL=${FILL:-100000}
NF=/proc/sys/net/netfilter

if [ "$(id -u)" -ne 0 ]; then
  echo "cost.sh: run as root (the agent reads root-only files; the filled-table part creates a namespace)" >&2
  exit 1
fi
if [ ! -r "$NF/nf_conntrack_max" ]; then
  echo "cost.sh: conntrack is not active here ($NF/nf_conntrack_max missing)" >&2
  exit 1
fi

missing=()
command -v hyperfine >/dev/null 2>&1 || missing+=(hyperfine)
command -v prometheus-node-exporter >/dev/null 2>&1 || missing+=(prometheus-node-exporter)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v jq >/dev/null 2>&1 || missing+=(jq)
[ -x /usr/bin/time ] || missing+=(time)
command -v strace >/dev/null 2>&1 || missing+=(strace)
if [ "$FILL" -gt 0 ]; then
  command -v nft >/dev/null 2>&1 || missing+=(nftables)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  command -v conntrack >/dev/null 2>&1 || missing+=(conntrack)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "cost.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "cost.sh: building release" >&2
cargo build --release --locked -q -p ctune
BIN=$PWD/target/release/ctune
BENCH=$(cargo bench -p ctune --bench agent_cost --no-run --locked --message-format=json 2>/dev/null |
  jq -r 'select(.reason == "compiler-artifact" and .target.name == "agent_cost") | .executable // empty' |
  tail -n1)

T=$(mktemp -d /tmp/ctune-cost.XXXXXX)
PIDS=()
NETNS=""
cleanup() {
  for p in "${PIDS[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null || true
      wait "$p" 2>/dev/null || true
    fi
  done
  if [ -n "$NETNS" ]; then ip netns del "$NETNS" 2>/dev/null || true; fi
  rm -rf "$T"
}
trap cleanup EXIT

CFG=$T/initial.yaml
printf 'namespaces:\n  mode: initial\n' >"$CFG"

# --- helpers -------------------------------------------------------------------------
snapshot() {
  local f
  for f in "$NF"/nf_conntrack_*; do
    case "$f" in *_count) continue ;; esac
    printf '%s %s\n' "${f##*/}" "$(cat "$f" 2>/dev/null || echo '?')"
  done
  printf 'hashsize %s\n' "$(cat /sys/module/nf_conntrack/parameters/hashsize 2>/dev/null || echo '?')"
}
# Aborts when a live conntrack setting differs from the snapshot taken at the start.
check_unchanged() { # $1: phase, $2: agent log (optional)
  snapshot >"$T/after"
  if ! diff -u "$T/before" "$T/after" >&2; then
    echo "cost.sh: ABORT after $1: a live conntrack setting changed (diff above)." >&2
    if [ -n "${2:-}" ] && grep -q -- ' -> ' "$2"; then
      echo "cost.sh: the agent logged a change:" >&2
      grep -- ' -> ' "$2" >&2
    else
      echo "cost.sh: the agent logged no change: someone else changed it; rerun on a quiet host" >&2
    fi
    exit 1
  fi
}
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; } # utime+stime
sched_ns() { { cat /proc/"$1"/task/*/schedstat 2>/dev/null || true; } | awk '{s += $1} END {print s + 0}'; }
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}'; }
CLK_TCK=$(getconf CLK_TCK)
# hyperfine JSON -> "median ms (mean ± sd, min–max)"
hf_summary() {
  jq -r '.results[0] | [.median, .mean, .stddev, .min, .max] | @tsv' "$1" |
    awk '{printf "%.2f ms (mean %.2f ± %.2f, min %.2f, max %.2f)", $1*1e3, $2*1e3, $3*1e3, $4*1e3, $5*1e3}'
}
hf_median_ms() { jq -r '.results[0].median * 1000' "$1" | awk '{printf "%.2f", $1}'; }
# median and p90 of numbers (seconds) on stdin, printed in ms
med_p90_ms() { sort -g | awk '{v[NR] = $1} END {printf "%.2f ms (p90 %.2f ms)", v[int((NR+1)/2)]*1e3, v[int(NR*0.9+0.5)]*1e3}'; }
wait_http() {
  local i
  for i in $(seq 100); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  return 1
}
# Context switches of every thread (voluntary + not): a thread that sleeps and wakes
# switches once per wakeup.
switches() { { cat /proc/"$1"/task/*/status 2>/dev/null || true; } | awk '/^(non)?voluntary_ctxt_switches:/ {s += $2} END {print s + 0}'; }
# CPU and wakeups per second over $3 s (default WINDOW), running action $2 (or "") every
# $4 s (default 1): "X ms/s (stat, 10-ms ticks); Y ms/s on CPU (schedstat); Z wakeups/s"
cpu_window() { # $1 pid, $2 action, $3 seconds, $4 action period
  local t0 s0 w0 t1 s1 w1 i len=${3:-$WINDOW} every=${4:-1}
  t0=$(cpu_ticks "$1"); s0=$(sched_ns "$1"); w0=$(switches "$1")
  for i in $(seq 0 $((len - 1))); do
    if [ -n "$2" ] && [ $((i % every)) -eq 0 ]; then eval "$2"; fi
    sleep 1
  done
  t1=$(cpu_ticks "$1"); s1=$(sched_ns "$1"); w1=$(switches "$1")
  awk -v dt="$((t1 - t0))" -v ds="$((s1 - s0))" -v dw="$((w1 - w0))" -v w="$len" -v hz="$CLK_TCK" \
    'BEGIN {printf "%.2f ms/s (stat, %d-ms ticks); %.2f ms/s on CPU (schedstat); %.1f wakeups/s", dt*1000/hz/w, 1000/hz, ds/1e6/w, dw/w}'
}

# --- machine ---------------------------------------------------------------------------
echo "## Machine"
echo
echo "- kernel $(uname -r); $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo))"
echo "- $(awk '/MemTotal/ {printf "MemTotal %.1f GiB", $2/1048576}' /proc/meminfo); $(rustc -V)"
if rev=$(git rev-parse --short HEAD 2>/dev/null); then
  git diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || rev="$rev + uncommitted changes in crates/ or Cargo.*"
else
  rev="${CTUNE_REV:-unknown (not a git checkout)}"
fi
echo "- ctune $rev; $(hyperfine --version); node_exporter $(prometheus-node-exporter --version 2>&1 | awk '/version/ {print $3; exit}')"
echo "- conntrack: count $(cat $NF/nf_conntrack_count), max $(cat $NF/nf_conntrack_max), buckets $(cat $NF/nf_conntrack_buckets); load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
echo

# --- safety pre-flight -------------------------------------------------------------------
snapshot >"$T/before"
planned=$("$BIN" --dry-run --json --config "$CFG" | jq '.plan.changes | length')
if [ "$planned" != "0" ]; then
  echo "cost.sh: ABORT: ctune would change $planned live value(s) here; the agent is only run on an idle host" >&2
  "$BIN" --dry-run --config "$CFG" >&2
  exit 1
fi

# --- 1. dry run -------------------------------------------------------------------------
echo "cost.sh: dry run x $RUNS" >&2
hyperfine -N --style none --warmup 20 --runs "$RUNS" --export-json "$T/dry.json" \
  "$BIN --dry-run --sample 0 --config $CFG" >/dev/null
dry_wall=$(hf_summary "$T/dry.json")
dry_med=$(hf_median_ms "$T/dry.json")
dry_rss=$(for i in $(seq 20); do /usr/bin/time -f %M "$BIN" --dry-run --sample 0 --config "$CFG" 2>&1 >/dev/null | tail -n1; done | sort -n | tail -n1)
check_unchanged "dry run"

# --- 2. the agent -------------------------------------------------------------------------
# Starts `ctune run` with config $1 and its own etc/state dirs below $2; sets APID.
start_agent() {
  mkdir -p "$2/etc" "$2/state" "$2/run"
  CTUNE_LOG=info "$BIN" run --config "$1" --etc-root "$2/etc" --state-dir "$2/state" \
    --run-root "$2/run" 2>"$2/agent.log" &
  APID=$!
  PIDS+=("$APID")
}
# SIGTERM, exit 0, no change logged, nothing persisted, live settings unchanged.
stop_agent() { # $1: dir
  local rc=0
  kill -TERM "$APID"
  wait "$APID" || rc=$?
  check_unchanged "agent stop" "$1/agent.log"
  if [ "$rc" -ne 0 ]; then
    echo "cost.sh: ABORT: ctune run exited $rc on SIGTERM" >&2
    cat "$1/agent.log" >&2
    exit 1
  fi
  if grep -q -- ' -> ' "$1/agent.log" || [ -n "$(find "$1/etc" -type f)" ]; then
    echo "cost.sh: ABORT: the agent planned a change (log below)" >&2
    cat "$1/agent.log" >&2
    exit 1
  fi
}
echo "cost.sh: ctune run for 2 + $WINDOW + $WINDOW s" >&2
start_agent "$CFG" "$T/agent"
sleep 2
agent_cpu=$(cpu_window "$APID" "" 30)
agent_hwm=$(status_kib "$APID" VmHWM)
agent_rss=$(status_kib "$APID" VmRSS)
agent_anon=$(status_kib "$APID" RssAnon)
agent_file=$(status_kib "$APID" RssFile)
agent_threads=$(status_kib "$APID" Threads)
check_unchanged "agent window" "$T/agent/agent.log"
timeout -s INT "$WINDOW" strace -f -c -o "$T/agent.strace" -p "$APID" 2>/dev/null || true
agent_sys=$(awk -v w="$WINDOW" '$NF == "total" {printf "%.0f", $4 / w}' "$T/agent.strace")
agent_fsync=$(awk -v w="$WINDOW" '$NF == "fsync" || $NF == "fdatasync" {n += $4} END {printf "%.1f", n / w}' "$T/agent.strace")
agent_hwm2=$(status_kib "$APID" VmHWM)
stop_agent "$T/agent"

# Where the agent's CPU goes: steps alone (no probe between steps), probes alone (one
# step at start, then only probes).
echo "cost.sh: ctune run, steps only and probes only, 2 + $WINDOW s each" >&2
printf 'namespaces:\n  mode: initial\nagent:\n  interval: 1s\n  idle_interval: 1s\n  probe_interval: 1s\n' >"$T/steps-only.yaml"
printf 'namespaces:\n  mode: initial\nagent:\n  interval: 1h\n  idle_interval: 1h\n  probe_interval: 50ms\n  flood_rate: 100000000\n' >"$T/probes-only.yaml"
start_agent "$T/steps-only.yaml" "$T/steps"
sleep 2
agent_cpu_steps=$(cpu_window "$APID" "")
stop_agent "$T/steps"
start_agent "$T/probes-only.yaml" "$T/probes"
sleep 2
agent_cpu_probes=$(cpu_window "$APID" "")
stop_agent "$T/probes"

# --- 3. node-exporter -----------------------------------------------------------------------
echo "cost.sh: prometheus-node-exporter (conntrack only) on 127.0.0.1:$PORT" >&2
URL=http://127.0.0.1:$PORT/metrics
prometheus-node-exporter --collector.disable-defaults --collector.conntrack \
  --web.listen-address="127.0.0.1:$PORT" 2>"$T/ne.log" &
NPID=$!
PIDS+=("$NPID")
if ! wait_http curl -sf -o /dev/null "$URL"; then
  echo "cost.sh: node-exporter did not answer on $URL" >&2
  cat "$T/ne.log" >&2
  exit 1
fi
curl -sf "$URL" >"$T/scrape.txt"
ne_series=$(grep -c '^node_nf_conntrack' "$T/scrape.txt" || true)
ne_bytes=$(wc -c <"$T/scrape.txt")
sleep 1
ne_idle=$(cpu_window "$NPID" "")
ne_scraped=$(cpu_window "$NPID" "curl -sf -o /dev/null $URL")
ne_scraped15=$(cpu_window "$NPID" "curl -sf -o /dev/null $URL" 60 15)
c0=$(sched_ns "$NPID")
hyperfine -N --style none --warmup 20 --runs "$RUNS" --export-json "$T/ne.json" \
  "curl -sf -o /dev/null $URL" >/dev/null
c1=$(sched_ns "$NPID")
ne_cpu_per_scrape=$(awk -v d="$((c1 - c0))" -v n="$((RUNS + 20))" 'BEGIN {printf "%.2f", d / 1e6 / n}')
ne_wall=$(hf_summary "$T/ne.json")
ne_med=$(hf_median_ms "$T/ne.json")
ne_req=$(for i in $(seq "$RUNS"); do curl -sf -o /dev/null -w '%{time_total}\n' "$URL"; done | med_p90_ms)
ne_coll=$(curl -sf "$URL" | awk '/^node_scrape_collector_duration_seconds\{collector="conntrack"\}/ {printf "%.1f µs", $2 * 1e6}')
ne_hwm=$(status_kib "$NPID" VmHWM)
ne_anon=$(status_kib "$NPID" RssAnon)
ne_file=$(status_kib "$NPID" RssFile)
ne_threads=$(status_kib "$NPID" Threads)
kill -TERM "$NPID"
wait "$NPID" 2>/dev/null || true
check_unchanged "node-exporter"

# --- 4. a filled table (scratch namespace) ---------------------------------------------
fill_rows=$T/fill-rows.md
if [ "$FILL" -gt 0 ]; then
  echo "cost.sh: scratch namespace, empty and with $FILL entries" >&2
  NETNS=ctune-cost-$$
  ip netns add "$NETNS"
  ip -n "$NETNS" link set lo up
  printf 'table inet ctune_cost {\n  chain out {\n    type filter hook output priority 0;\n    ct state new counter accept\n  }\n}\n' |
    ip netns exec "$NETNS" nft -f -
  # Keep the UDP entries for the whole measurement (namespace-local sysctl).
  ip netns exec "$NETNS" sh -c "echo 600 > $NF/nf_conntrack_udp_timeout"
  NPORT=$((PORT + 1))
  measure_ns() { # prints one markdown row: entries | pread | dry run | scrape
    local count pread dry scrape npid
    count=$(ip netns exec "$NETNS" cat $NF/nf_conntrack_count)
    pread="n/a"
    if [ -n "$BENCH" ]; then
      pread=$(ip netns exec "$NETNS" "$BENCH" count 2>/dev/null |
        awk -F'|' '/^\| pread nf_conntrack_count/ {gsub(/^ +| +$/, "", $4); print $4}')
    fi
    ip netns exec "$NETNS" hyperfine -N --style none --warmup 20 --runs "$RUNS" \
      --export-json "$T/ns-dry.json" "$BIN --dry-run --sample 0 --config $CFG" >/dev/null
    dry="$(hf_median_ms "$T/ns-dry.json") ms"
    ip netns exec "$NETNS" prometheus-node-exporter --collector.disable-defaults --collector.conntrack \
      --web.listen-address="127.0.0.1:$NPORT" 2>/dev/null &
    npid=$!
    PIDS+=("$npid")
    wait_http ip netns exec "$NETNS" curl -sf -o /dev/null "http://127.0.0.1:$NPORT/metrics"
    scrape=$(for i in $(seq "$RUNS"); do
      ip netns exec "$NETNS" curl -sf -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$NPORT/metrics"
    done | med_p90_ms)
    kill -TERM "$npid"
    wait "$npid" 2>/dev/null || true
    printf '| %s | %s | %s | %s |\n' "$count" "$pread" "$dry" "$scrape"
  }
  measure_ns >>"$fill_rows"
  refused=$(ip netns exec "$NETNS" python3 - "$FILL" <<'EOF'
import socket, sys
n = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
refused = 0
for i in range(n):
    try:
        s.sendto(b"x", ("127.0.%d.1" % (1 + i // 50000), 10000 + i % 50000))
    except OSError:
        refused += 1
print(refused)
EOF
)
  measure_ns >>"$fill_rows"
  # Empty again (flushed), to bracket the machine's drift between the rows.
  if command -v conntrack >/dev/null 2>&1; then
    ip netns exec "$NETNS" conntrack -F >/dev/null 2>&1 || true
    measure_ns >>"$fill_rows"
  fi
  ip netns del "$NETNS"
  NETNS=""
  check_unchanged "filled namespace"
fi

# --- report -----------------------------------------------------------------------------
echo "## Process cost: ctune vs prometheus-node-exporter (conntrack collector only)"
echo
echo "| measure | ctune | node-exporter | target (ctune) |"
echo "|---|---|---|---|"
echo "| one-shot wall time, median of $RUNS (hyperfine -N) | \`ctune --dry-run --sample 0\`: $dry_wall | \`curl /metrics\`: $ne_wall | < 10 ms |"
echo "| request time only (curl time_total) | - | $ne_req | |"
echo "| one-shot peak RSS | dry run: $(mib "$dry_rss") (max of 20, /usr/bin/time) | - | |"
echo "| resident, peak (VmHWM) | \`ctune run\`: $(mib "$agent_hwm") after ${WINDOW} s ($(mib "$agent_hwm2") after $((2 * WINDOW)) s) | $(mib "$ne_hwm") after $((2 * RUNS + WINDOW + 27)) scrapes | < 8 MiB |"
echo "| resident now: anonymous + file-backed | $(mib "$agent_anon") + $(mib "$agent_file"); $agent_threads thread(s) | $(mib "$ne_anon") + $(mib "$ne_file"); $ne_threads threads | |"
echo "| CPU and wakeups while running, idle | $agent_cpu (a step every idle_interval, probes at the adaptive pace) | $ne_idle (not scraped) | <= 0.5 ms/s, <= 5 wakeups/s |"
echo "| same, scraped every 15 s (60 s) | (the agent samples itself) | $ne_scraped15 | |"
echo "| same, scraped every second | (the agent samples itself) | $ne_scraped | |"
echo "| CPU: steps only (a step every 1 s, no probe between) | $agent_cpu_steps | - | |"
echo "| CPU: probes only (no step after the first, a probe every 50 ms) | $agent_cpu_probes | - | |"
echo "| CPU per sample | see \`cargo bench --bench agent_cost\` (tick) | $ne_cpu_per_scrape ms per scrape (schedstat over $((RUNS + 20)) scrapes); collector's own duration $ne_coll | tick < 100 µs |"
echo "| syscalls while running (strace -c -f, $WINDOW s) | $agent_sys /s, of which fsync $agent_fsync /s | - | |"
echo "| output | plan text | $ne_bytes B, $ne_series node_nf_conntrack_* series | |"
echo
echo "Dry-run median: $dry_med ms; scrape median: $ne_med ms. Live settings unchanged after every phase; the agent exited 0 on SIGTERM and planned no change."
if [ -s "$fill_rows" ]; then
  echo
  echo "## Cost against table size (scratch namespace, live kernel)"
  echo
  echo "| entries in the namespace | count pread (median) | \`ctune --dry-run\` (median of $RUNS) | node-exporter scrape, curl time_total |"
  echo "|---:|---:|---:|---:|"
  cat "$fill_rows"
  echo
  echo "($FILL UDP flows sent, $refused refused.)"
fi
echo
echo "agent strace -c (${WINDOW} s):"
echo
echo '```'
head -n 25 "$T/agent.strace"
echo '```'
