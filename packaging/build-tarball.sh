#!/bin/bash
# Packs a static musl ctune as a plain tarball for machines without a ctune package
# (Alpine, or any Linux of the binary's architecture): ctune-<version>-<target>/ with
# the binary, the commented default config (config/ctune.yaml, also compiled into
# ctune), the README and both licence texts. No init script: on Alpine, run
# `ctune --dry-run` and `ctune apply` by hand or from cron, or write an OpenRC service
# for `ctune run` (docs/packages.md, "Other machines").
#
# Usage: packaging/build-tarball.sh BINARY
#   BINARY  <target dir>/<target>/<profile>/ctune from packaging/build-cross.sh; the
#           target is read from its path, and the binary must be static
# Prints the tarball's path (target/dist/ctune-<version>-<target>.tar.gz) on stdout.
# Reproducible: every time is SOURCE_DATE_EPOCH (default: the last commit's).
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -eq 1 ] || { echo "build-tarball: give one BINARY (see the header)" >&2; exit 2; }
bin=$1
[ -x "$bin" ] || { echo "build-tarball: $bin is not an executable" >&2; exit 1; }
triple=$(basename "$(dirname "$(dirname "$bin")")")
case $triple in
    *-linux-musl) ;;
    *) echo "build-tarball: $bin is not under a musl target's directory (<target>/<profile>/ctune)" >&2; exit 1 ;;
esac
if LC_ALL=C readelf -l "$bin" | grep -q 'program interpreter' || LC_ALL=C readelf -d "$bin" | grep -q NEEDED; then
    echo "build-tarball: $bin is dynamically linked; a tarball is only for the static musl builds" >&2
    exit 1
fi

SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH LC_ALL=C TZ=UTC
umask 022
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
name=ctune-$version-$triple
out=target/dist
rm -rf "${out:?}/$name"
install -d -m 755 "$out/$name"
install -m 755 "$bin" "$out/$name/ctune"
install -m 644 config/ctune.yaml README.md LICENSE-MIT LICENSE-APACHE "$out/$name/"
tar --format=gnu --numeric-owner --owner=0 --group=0 --sort=name --mtime="@$SOURCE_DATE_EPOCH" \
    -C "$out" -cf - "$name" | gzip -9n > "$out/$name.tar.gz"
rm -rf "${out:?}/$name"
echo "build-tarball: $out/$name.tar.gz: $(stat -c %s "$out/$name.tar.gz") bytes" >&2
echo "$out/$name.tar.gz"
