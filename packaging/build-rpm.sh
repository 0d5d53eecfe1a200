#!/bin/bash
# Builds target/rpm/ctune-<version>-1.x86_64.rpm from packaging/rpm/ctune.spec with
# rpmbuild (Debian's `rpm` package is enough). Nothing is compiled by the spec: this
# script builds the release binary and ctune-docgen (man page, completions) with cargo,
# stages them with the units, the preset, the config, the docs and the licenses in
# target/rpm/stage/, and runs rpmbuild on that directory (--define _sourcedir) in a
# private, temporary _topdir. The same files as the .deb (packaging/build-deb.sh), at
# the RPM distributions' paths. Reproducible: SOURCE_DATE_EPOCH (default: the last
# commit's time) is the build time, the changelog's date and the clamp for every mtime;
# the build host is "reproducible". Details: packaging/rpm/README.md.
#
# Usage: packaging/build-rpm.sh [--no-build]   (--no-build: use the existing
#        target/release/ctune and target/debug/ctune-docgen)
# rpmbuild missing: installed with apt-get when run as root; otherwise, or when apt-get
# fails (no network), the script exits 3 with a line starting "build-rpm: rpmbuild
# unavailable". Prints the .rpm's path on stdout; everything else on stderr.
set -euo pipefail

cd "$(dirname "$0")/.."
build=1
[ "${1:-}" = "--no-build" ] && build=0
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH
export LC_ALL=C TZ=UTC
umask 022

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || { echo "build-rpm: no version in Cargo.toml" >&2; exit 1; }
arch=x86_64
[ "$(uname -m)" = "$arch" ] || { echo "build-rpm: only $arch is packaged" >&2; exit 2; }
for f in LICENSE-MIT LICENSE-APACHE; do
    [ -f "$f" ] || { echo "build-rpm: $f missing at the repository root: the package ships both license texts (License: MIT OR Apache-2.0)" >&2; exit 1; }
done

if ! command -v rpmbuild >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "build-rpm: rpmbuild unavailable: not installed, and installing it needs root (apt-get install rpm)" >&2
        exit 3
    fi
    echo "build-rpm: installing rpm (rpmbuild) with apt-get" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rpm >/dev/null; } >&2; then
        echo "build-rpm: rpmbuild unavailable: apt-get install rpm failed (no network?)" >&2
        exit 3
    fi
fi

if [ "$build" = 1 ]; then
    cargo build --release --locked -p ctune --bin ctune
    # Separate build (dev profile) so the lab's dependencies cannot change the packaged
    # binary's features; as in build-deb.sh.
    cargo build --locked -p ctune-lab --bin ctune-docgen
fi
bin=target/release/ctune
docgen=target/debug/ctune-docgen
[ -x "$bin" ] || { echo "build-rpm: $bin missing (build it or drop --no-build)" >&2; exit 1; }
[ -x "$docgen" ] || { echo "build-rpm: $docgen missing (build it or drop --no-build)" >&2; exit 1; }
if grep -qa plotters "$bin"; then
    echo "build-rpm: $bin links the plotting crate; the lab must stay out of the package" >&2
    exit 1
fi

# The staged sources, the spec's %{_sourcedir}:
#   ctune  ctune.service  ctune-boot.service  50-ctune.preset  ctune.yaml
#   LICENSE-MIT  LICENSE-APACHE
#   docgen/ctune.8  docgen/completions/{ctune.bash,_ctune,ctune.fish}
#   doc/   README.md, docs/*.md, docs/bench/*.svg, config/ctune.yaml, config/roles/*.yaml,
#          systemd/ctune.service.d/metrics-http.conf (the .deb's doc tree)
out=target/rpm
stage=$out/stage
rm -rf "$stage"
install -d -m 755 "$stage/doc/docs/bench" "$stage/doc/config/roles" "$stage/doc/systemd/ctune.service.d"
install -m 755 "$bin" "$stage/ctune"
install -m 644 systemd/ctune.service systemd/ctune-boot.service packaging/rpm/50-ctune.preset \
    config/ctune.yaml LICENSE-MIT LICENSE-APACHE "$stage/"
"$docgen" "$stage/docgen" >&2
install -m 644 README.md "$stage/doc/"
install -m 644 docs/*.md "$stage/doc/docs/"
install -m 644 docs/bench/*.svg "$stage/doc/docs/bench/"
install -m 644 config/ctune.yaml "$stage/doc/config/"
install -m 644 config/roles/*.yaml "$stage/doc/config/roles/"
install -m 644 systemd/ctune.service.d/metrics-http.conf "$stage/doc/systemd/ctune.service.d/"
dead=()
while IFS= read -r md; do
    while IFS= read -r link; do
        target=${link%%#*}
        [ -z "$target" ] || [ -e "$(dirname "$md")/$target" ] || dead+=("${md#"$stage/doc"/}: $link")
    done < <(grep -o '](\([^)]*\))' "$md" | sed 's/^](//; s/)$//' | grep -v '^[a-z]*:')
done < <(find "$stage/doc" -name '*.md')
if [ ${#dead[@]} -gt 0 ]; then
    printf 'build-rpm: dead link in the packaged docs: %s\n' "${dead[@]}" >&2
    exit 1
fi
find "$stage" -type d -exec chmod 0755 {} +
find "$stage" -type f -exec chmod 0644 {} +
chmod 0755 "$stage/ctune"

top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT
rm -f "$out"/ctune-*.rpm
# rpm 4.18's reproducibility switches: the build time is SOURCE_DATE_EPOCH, every
# payload mtime newer than it is clamped to it, and the build host is a constant.
# gzip payload: readable by every rpm in use (zstd needs rpm >= 4.14).
rpmbuild -bb \
    --define "_topdir $top" \
    --define "_sourcedir $PWD/$stage" \
    --define "_rpmdir $PWD/$out" \
    --define "_rpmfilename %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    --define "_tmppath $top/tmp" \
    --define "ctune_version $version" \
    --define "ctune_date $(date -u -d "@$SOURCE_DATE_EPOCH" '+%a %b %d %Y')" \
    --define "source_date_epoch_from_changelog 0" \
    --define "use_source_date_epoch_as_buildtime 1" \
    --define "clamp_mtime_to_source_date_epoch 1" \
    --define "_buildhost reproducible" \
    --define "_binary_payload w9.gzdio" \
    packaging/rpm/ctune.spec >"$top/log" 2>&1 || {
    cat "$top/log" >&2
    echo "build-rpm: rpmbuild failed" >&2
    exit 1
}
grep -i 'warning' "$top/log" >&2 || true
rpm=$out/ctune-$version-1.$arch.rpm
[ -f "$rpm" ] || { cat "$top/log" >&2; echo "build-rpm: $rpm not written" >&2; exit 1; }
echo "$rpm"
