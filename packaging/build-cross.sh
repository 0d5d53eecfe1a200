#!/bin/bash
# Builds the `ctune` binary for other machines: ARM64 servers (glibc) and routers and
# small nodes (musl, static: OpenWrt, Alpine). One release binary per target, checked
# for its machine and linkage; the path of each is printed on stdout, one a line, in the
# order asked (everything else goes to stderr). Sizes, settings and how each was chosen:
# docs/packages.md, "Other machines".
#
# Usage: packaging/build-cross.sh [--profile NAME] TARGET...
#   TARGET    aarch64-unknown-linux-gnu    ARM64, glibc (Debian/Ubuntu arm64): release
#             aarch64-unknown-linux-musl   ARM64, static musl (OpenWrt, Alpine): router
#             x86_64-unknown-linux-musl    x86_64, static musl (OpenWrt x86, Alpine): router
#             x86_64-unknown-linux-gnu     this machine's own target, for comparison
#   --profile NAME   build every TARGET with this Cargo profile instead of its default
#                    (release for glibc, router for musl: Cargo.toml says why)
#
# Needs: rustup (the script adds each missing target with `rustup target add`) and, for
# aarch64, Debian's gcc-aarch64-linux-gnu as the linker, with libc6-dev-arm64-cross (the
# glibc to link against) for aarch64-unknown-linux-gnu (scripts/test --install installs
# both). No crate in ctune's tree compiles C, so the musl targets need no musl-gcc
# (musl-tools): Rust ships musl's libc and start files for them, and gcc only links.
#
# CARGO_TARGET_DIR is honoured (default: target/); a binary lands in
# <target dir>/<TARGET>/<profile>/ctune.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=
targets=()
while [ $# -gt 0 ]; do
    case $1 in
        --profile) profile=${2:?--profile needs a name}; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "build-cross: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || { echo "build-cross: name at least one TARGET (see --help)" >&2; exit 2; }

# Per target: the Cargo profile, the linker, the ELF machine `readelf -h` names, and
# whether the result must be static.
settings() {
    case $1 in
        aarch64-unknown-linux-gnu) echo "release aarch64-linux-gnu-gcc AArch64 dynamic" ;;
        aarch64-unknown-linux-musl) echo "router aarch64-linux-gnu-gcc AArch64 static" ;;
        x86_64-unknown-linux-musl) echo "router cc X86-64 static" ;;
        x86_64-unknown-linux-gnu) echo "release cc X86-64 dynamic" ;;
        *) return 1 ;;
    esac
}

for t in "${targets[@]}"; do
    settings "$t" >/dev/null || { echo "build-cross: unknown target $t (see --help)" >&2; exit 2; }
done

if command -v rustup >/dev/null 2>&1; then
    installed=$(rustup target list --installed)
    for t in "${targets[@]}"; do
        grep -qx "$t" <<<"$installed" || rustup target add "$t" >&2
    done
fi

target_dir=${CARGO_TARGET_DIR:-target}
for t in "${targets[@]}"; do
    read -r default_profile linker machine linkage < <(settings "$t")
    p=${profile:-$default_profile}
    if ! command -v "$linker" >/dev/null 2>&1; then
        pkg=$linker
        [ "$linker" = aarch64-linux-gnu-gcc ] && pkg=gcc-aarch64-linux-gnu
        echo "build-cross: $t links with $linker: run 'sudo apt-get install $pkg'" >&2
        exit 1
    fi
    if [ "$t" = aarch64-unknown-linux-gnu ] && [ ! -e /usr/aarch64-linux-gnu/lib/crt1.o ]; then
        echo "build-cross: $t links against Debian's arm64 glibc: run 'sudo apt-get install libc6-dev-arm64-cross'" >&2
        exit 1
    fi
    # Cargo's per-target linker variable: CARGO_TARGET_<TRIPLE, upper case, _>_LINKER.
    var=CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$t")_LINKER
    echo "build-cross: $t, profile $p, linker $linker" >&2
    start=$SECONDS
    env "$var=$linker" cargo build --locked --profile "$p" -p ctune --bin ctune --target "$t" >&2
    bin=$target_dir/$t/$p/ctune
    [ -x "$bin" ] || { echo "build-cross: cargo built no $bin" >&2; exit 1; }
    # The machine and the linkage are what a wrong linker or target would get wrong
    # silently; check them from the ELF headers.
    header=$(LC_ALL=C readelf -h "$bin")
    grep -q "Machine:.*$machine\$" <<<"$header" ||
        { echo "build-cross: $bin is not an $machine binary:" >&2; echo "$header" >&2; exit 1; }
    # Static: no library and no loader (x86_64 musl is a static PIE: it has a dynamic
    # section for its own relocations, but needs nothing).
    dynamic=$(LC_ALL=C readelf -d "$bin" 2>&1 | grep -F '(NEEDED)' || true)
    interp=$(LC_ALL=C readelf -l "$bin" | grep -F 'Requesting program interpreter' || true)
    if [ "$linkage" = static ] && [ -n "$dynamic$interp" ]; then
        echo "build-cross: $bin must be static, but it needs:" >&2
        echo "$dynamic$interp" >&2
        exit 1
    fi
    echo "build-cross: $bin: $(stat -c %s "$bin") bytes, $linkage, $((SECONDS - start)) s" >&2
    echo "$bin"
done
