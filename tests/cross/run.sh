#!/bin/bash
# Runs cross-built ctune binaries under qemu-user against copies of the fixture kernel
# trees and compares every result with this machine's own build: the same stdout, the
# same stderr, the same exit code, byte for byte. A difference prints the command, both
# exit codes and a unified diff of what each printed, and the script exits 1.
#
# Usage: tests/cross/run.sh REFERENCE BINARY...
#        tests/cross/run.sh            (builds the reference and the three cross targets
#                                       first: packaging/build-cross.sh)
#   REFERENCE  a ctune built for this machine (target/release/ctune, or the test
#              binary's CARGO_BIN_EXE_ctune)
#   BINARY     a ctune for another machine; its ELF header chooses how it runs: AArch64
#              under qemu-aarch64 (a dynamic one with -L /usr/aarch64-linux-gnu, the
#              glibc of Debian's libc6-arm64-cross), x86-64 directly
#
# The cases: `--dry-run` and `status`, text and --json, --sample 0 (one read of the
# counters), with every root (--proc-root, --sys-root, --etc-root, --run-root,
# --state-dir) in the copied tree, on fixtures/kernel-6.18 (built-in conntrack) as it
# is and at 92 % of a 20000 max (pressure: changes planned, status exits 5), and on
# fixtures/kernel-4.19 (modular) and kernel-6.6-openwrt2410 (a router's) with OpenWrt's
# config (packaging/openwrt/ctune.yaml: the modules.d file). Each binary runs in the same copy as the reference, so the paths
# it prints are the same; the copy is checked to be unchanged after each case (these
# commands write nothing).
#
# Needs qemu-user (qemu-aarch64; qemu-user-static's qemu-aarch64-static also works) and,
# for a glibc aarch64 binary, libc6-arm64-cross (pulled in by gcc-aarch64-linux-gnu).
# binfmt_misc is not used.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

if [ $# -eq 0 ]; then
    cargo build --release --locked -p ctune --bin ctune >&2
    mapfile -t bins < <(bash packaging/build-cross.sh aarch64-unknown-linux-gnu \
        aarch64-unknown-linux-musl x86_64-unknown-linux-musl)
    set -- "${CARGO_TARGET_DIR:-target}/release/ctune" "${bins[@]}"
fi
[ $# -ge 2 ] || { echo "cross/run.sh: give a REFERENCE and at least one BINARY (see the header)" >&2; exit 2; }
reference=$(realpath "$1")
shift

# How to run BINARY: the qemu command line before it (empty: natively).
runner() {
    local bin=$1 machine qemu
    machine=$(LC_ALL=C readelf -h "$bin" | sed -n 's/^ *Machine: *//p')
    case $machine in
        *X86-64) return 0 ;;
        AArch64)
            qemu=$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)
            [ -n "$qemu" ] || { echo "cross/run.sh: no qemu-aarch64: run 'sudo apt-get install qemu-user'" >&2; return 1; }
            if LC_ALL=C readelf -l "$bin" | grep -q 'program interpreter'; then
                [ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ] ||
                    { echo "cross/run.sh: no aarch64 glibc in /usr/aarch64-linux-gnu: run 'sudo apt-get install libc6-arm64-cross'" >&2; return 1; }
                echo "$qemu -L /usr/aarch64-linux-gnu"
            else
                echo "$qemu"
            fi
            ;;
        *) echo "cross/run.sh: $bin: no way to run a '$machine' binary here" >&2; return 1 ;;
    esac
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A fresh copy of fixtures/KERNEL at $work/tree with the config CONFIG in it; each
# extra KEY=VALUE sets a conntrack sysctl of the copy.
prepare() {
    local kernel=$1 config=$2 kv
    shift 2
    rm -rf "$work/tree"
    mkdir -p "$work/tree"
    cp -r "fixtures/$kernel/proc" "fixtures/$kernel/sys" "$work/tree/"
    chmod -R u+w "$work/tree"
    cp "$config" "$work/tree/ctune.yaml"
    for kv in "$@"; do
        printf '%s\n' "${kv#*=}" > "$work/tree/proc/sys/net/netfilter/${kv%%=*}"
    done
}

# Runs PROGRAM (a command line) with the tree's roots and ARGS; leaves out, err, code in
# $work/NAME.{out,err,code}.
run_in_tree() {
    local name=$1 prog=$2
    shift 2
    local t=$work/tree code=0
    # shellcheck disable=SC2086 # $prog is a command line: qemu and its options, then the binary
    env -u CTUNE_LOG -u JOURNAL_STREAM -u NOTIFY_SOCKET $prog \
        --proc-root "$t/proc" --sys-root "$t/sys" --etc-root "$t/etc" \
        --run-root "$t/run" --state-dir "$t/state" --config "$t/ctune.yaml" "$@" \
        > "$work/$name.out" 2> "$work/$name.err" || code=$?
    echo "$code" > "$work/$name.code"
}

failures=0 cases=0
# Compares BINARY (run with RUNNER) with the reference on the tree as prepared.
compare() {
    local label=$1 bin=$2 run=$3
    shift 3
    local before after
    before=$(cd "$work/tree" && find . -type f -exec md5sum {} + | sort)
    run_in_tree ref "$reference" "$@"
    run_in_tree cross "$run $bin" "$@"
    after=$(cd "$work/tree" && find . -type f -exec md5sum {} + | sort)
    cases=$((cases + 1))
    local rc rx
    rc=$(cat "$work/ref.code") rx=$(cat "$work/cross.code")
    if [ "$rc" = "$rx" ] && cmp -s "$work/ref.out" "$work/cross.out" &&
        cmp -s "$work/ref.err" "$work/cross.err" && [ "$before" = "$after" ]; then
        echo "ok   $label, $SCENARIO: ctune $*: exit $rx, $(wc -c < "$work/cross.out") bytes out, $(wc -c < "$work/cross.err") bytes err, same as the reference"
        return
    fi
    failures=$((failures + 1))
    echo "FAIL $label, $SCENARIO: ctune $* (roots in $work/tree)"
    echo "  command: $run $bin ..."
    echo "  exit: reference $rc, $label $rx"
    echo "  stdout (--- reference, +++ $label):"
    diff -u "$work/ref.out" "$work/cross.out" | sed 's/^/    /' || true
    echo "  stderr (--- reference, +++ $label):"
    diff -u "$work/ref.err" "$work/cross.err" | sed 's/^/    /' || true
    [ "$before" = "$after" ] || { echo "  the tree changed:"; diff <(echo "$before") <(echo "$after") | sed 's/^/    /'; }
}

initial=$work/initial.yaml
printf 'namespaces:\n  mode: initial\n' > "$initial"
for bin in "$@"; do
    [ -x "$bin" ] || { echo "cross/run.sh: $bin is not an executable" >&2; exit 2; }
    run=$(runner "$bin")
    # target/<triple>/<profile>/ctune: the triple and the profile name the binary.
    label=$(basename "$(dirname "$(dirname "$bin")")")/$(basename "$(dirname "$bin")")
    for scenario in "kernel-6.18 $initial" \
        "kernel-6.18 $initial nf_conntrack_max=20000 nf_conntrack_count=18500" \
        "kernel-4.19 $repo/packaging/openwrt/ctune.yaml" \
        "kernel-6.6-openwrt2410 $repo/packaging/openwrt/ctune.yaml"; do
        read -r -a words <<<"$scenario"
        # The tree, its changed sysctls and the config, for the report.
        SCENARIO="${words[0]}${words[2]:+ ${words[*]:2}}, config $(basename "${words[1]}")"
        prepare "${words[@]}"
        for args in "--dry-run" "--dry-run --json" "status" "status --json"; do
            # shellcheck disable=SC2086 # args are words
            compare "$label" "$bin" "$run" $args --sample 0
        done
    done
done
echo "$cases passed, $failures failed"
[ "$failures" = 0 ]
