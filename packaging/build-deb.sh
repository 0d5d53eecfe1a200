#!/bin/bash
# Builds target/debian/ctune_<version>_amd64.deb with plain dpkg-deb (no cargo-deb, so no
# crates.io install): the release binary, both systemd units, the default config as a
# conffile, the man page ctune(8) and bash/zsh/fish completions (generated from the CLI
# definition by the lab's ctune-docgen, which is not packaged), the docs, copyright and
# changelog, md5sums, and maintainer scripts that enable the units on install and undo
# ctune's changes on purge. Depends is computed by dpkg-shlibdeps from the libraries the
# binary really links. The package passes `lintian --fail-on error,warning` (overrides,
# each explained: packaging/lintian-overrides) and is reproducible: every timestamp is
# SOURCE_DATE_EPOCH (default: the last commit's time), permissions and owners are
# normalised, so two builds of one tree give the same bytes. Details: docs/packages.md.
#
# Usage: packaging/build-deb.sh [--no-build] [--arch arm64]
#   --no-build    use the existing target/release/ctune (for arm64:
#                 target/aarch64-unknown-linux-gnu/release/ctune) and target/debug/ctune-docgen
#   --arch arm64  the ARM64 package, from packaging/build-cross.sh aarch64-unknown-linux-gnu
#                 (default: amd64, this machine's). Depends comes from dpkg-shlibdeps
#                 against Debian's cross glibc (libc6-arm64-cross): its shlibs file asks for
#                 the cross glibc's own version (libc6 >= 2.36, bookworm's), not the oldest
#                 one the binary could run on (its newest symbol is GLIBC_2.34).
# Prints the .deb's path on stdout (tests/vm/run.sh reads it); everything else on stderr.
#
# Purge and the binary: dpkg calls `prerm remove` (binary still there, but dpkg does not
# say whether a purge follows), then deletes the files, then `postrm remove`, then (on
# purge) deletes the conffiles and calls `postrm purge` (binary gone). So `prerm remove`
# stops the agent and keeps a copy of the binary in /var/lib/ctune/ctune-restore, and
# `postrm purge` runs that copy (`ctune restore --force`), then deletes /var/lib/ctune and
# /etc/ctune. A plain `remove` keeps the tuned values, the persisted files and the state
# (like any conffile), and a later `purge` still restores, whenever it comes.
set -euo pipefail

cd "$(dirname "$0")/.."
build=1
arch=amd64
while [ $# -gt 0 ]; do
    case $1 in
        --no-build) build=0; shift ;;
        --arch) arch=${2:?--arch needs amd64 or arm64}; shift 2 ;;
        *) echo "build-deb: unknown option $1 (see the header)" >&2; exit 2 ;;
    esac
done
# Reproducible: one time for every timestamp (the man page's date, the changelog's, file
# mtimes, the ar and tar headers dpkg-deb writes; gzip -n leaves its own out), and modes
# that do not depend on the caller's umask.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH
export LC_ALL=C TZ=UTC
umask 022

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
case $arch in
    amd64) [ "$(dpkg --print-architecture)" = amd64 ] || { echo "build-deb: amd64 is built on an amd64 machine only" >&2; exit 2; }
        bin=target/release/ctune strip_tool="strip" ;;
    arm64) bin=target/aarch64-unknown-linux-gnu/release/ctune strip_tool=aarch64-linux-gnu-strip ;;
    *) echo "build-deb: --arch $arch: only amd64 and arm64 are packaged" >&2; exit 2 ;;
esac
if [ "$build" = 1 ]; then
    if [ "$arch" = amd64 ]; then
        cargo build --release --locked -p ctune --bin ctune
    else
        # Its own stdout is the binary's path; this script's stdout is the .deb's only.
        CARGO_TARGET_DIR=target bash packaging/build-cross.sh aarch64-unknown-linux-gnu >/dev/null
    fi
    # The man page and completions generator: lab code, so a separate build (it must not
    # unify features into the packaged binary's build) in the dev profile (its output does
    # not depend on the profile; no fat-LTO link for a tool run once).
    cargo build --locked -p ctune-lab --bin ctune-docgen
fi
docgen=target/debug/ctune-docgen
[ -x "$bin" ] || { echo "build-deb: $bin missing (build it or drop --no-build)" >&2; exit 1; }
[ -x "$docgen" ] || { echo "build-deb: $docgen missing (build it or drop --no-build)" >&2; exit 1; }
# The product carries no lab code: the simulator's plotter lives in ctune-lab.
if grep -qa plotters "$bin"; then
    echo "build-deb: $bin links the plotting crate; the lab must stay out of the package" >&2
    exit 1
fi

root=target/debian/ctune_${version}_${arch}
out=target/debian/ctune_${version}_${arch}.deb
gen=target/debian/docgen
rm -rf "$root" "$gen"
"$docgen" "$gen"
install -d -m 755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
    "$root/etc/ctune" "$root/usr/share/doc/ctune"
install -m 755 "$bin" "$root/usr/bin/ctune"
# As dh_strip: no symbols (the release profile strips them already), no .comment/.note.
"$strip_tool" --remove-section=.comment --remove-section=.note --strip-unneeded "$root/usr/bin/ctune" 2>/dev/null || true
install -m 644 systemd/ctune.service systemd/ctune-boot.service "$root/lib/systemd/system/"
install -m 644 config/ctune.yaml "$root/etc/ctune/ctune.yaml"
# The docs keep the repository's layout, so every relative link in them resolves in
# /usr/share/doc/ctune as it does in a clone (checked below).
doc=$root/usr/share/doc/ctune
install -d -m 755 "$doc/docs/bench" "$doc/config/roles"
install -m 644 README.md "$doc/README.md"
install -m 644 docs/*.md "$doc/docs/"
install -m 644 docs/bench/*.svg "$doc/docs/bench/"
install -m 644 config/ctune.yaml "$doc/config/"
install -m 644 config/roles/*.yaml "$doc/config/roles/"
install -D -m 644 systemd/ctune.service.d/metrics-http.conf "$doc/systemd/ctune.service.d/metrics-http.conf"
# The man page and completions, generated from the CLI definition (ctune::cli::Cli).
install -D -m 644 "$gen/ctune.8" "$root/usr/share/man/man8/ctune.8"
gzip -9n "$root/usr/share/man/man8/ctune.8"
install -D -m 644 "$gen/completions/ctune.bash" "$root/usr/share/bash-completion/completions/ctune"
install -D -m 644 "$gen/completions/_ctune" "$root/usr/share/zsh/vendor-completions/_ctune"
install -D -m 644 "$gen/completions/ctune.fish" "$root/usr/share/fish/vendor_completions.d/ctune.fish"
# Lintian overrides, each with the reason: packaging/lintian-overrides.
install -D -m 644 packaging/lintian-overrides "$root/usr/share/lintian/overrides/ctune"
dead=()
while IFS= read -r md; do
    while IFS= read -r link; do
        target=${link%%#*}
        [ -z "$target" ] || [ -e "$(dirname "$md")/$target" ] || dead+=("${md#"$doc"/}: $link")
    done < <(grep -o '](\([^)]*\))' "$md" | sed 's/^](//; s/)$//' | grep -v '^[a-z]*:')
done < <(find "$doc" -name '*.md')
if [ ${#dead[@]} -gt 0 ]; then
    printf 'build-deb: dead link in the packaged docs: %s\n' "${dead[@]}" >&2
    exit 1
fi

# Debian's copyright file (machine-readable, copyright-format 1.0) with the license texts:
# the MIT text in full (LICENSE-MIT); Apache-2.0 by reference to the system's copy, as
# Debian policy 12.5 asks (lintian flags a full copy). The years: the first commit's to
# SOURCE_DATE_EPOCH's.
last_year=$(date -d "@$SOURCE_DATE_EPOCH" +%Y)
first_year=$(git log --reverse --format=%cd --date=format:%Y 2>/dev/null | sed -n 1p)
years=${first_year:-$last_year}
[ "$years" = "$last_year" ] || years=$years-$last_year
{
    cat <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ctune
Upstream-Contact: ctune developers <ctune@example.org>

Files: *
Copyright: $years The ctune developers
License: MIT or Apache-2.0

License: MIT
COPY
    sed 's/^$/./; s/^/ /' LICENSE-MIT
    cat <<'COPY'

License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the "License");
 you may not use this file except in compliance with the License.
 You may obtain a copy of the License at
 .
     http://www.apache.org/licenses/LICENSE-2.0
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an "AS IS" BASIS,
 WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
 See the License for the specific language governing permissions and
 limitations under the License.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0
 can be found in "/usr/share/common-licenses/Apache-2.0".
COPY
} > "$doc/copyright"
# A native package's changelog, dated SOURCE_DATE_EPOCH.
printf 'ctune (%s) unstable; urgency=medium\n\n  * Built from the repository by packaging/build-deb.sh.\n\n -- ctune developers <ctune@example.org>  %s\n' \
    "$version" "$(date -R -d "@$SOURCE_DATE_EPOCH")" \
    | gzip -9n > "$doc/changelog.gz"

# Depends: dpkg-shlibdeps maps each library the binary links (its DT_NEEDED entries and
# the symbol versions it uses) to the package and minimum version that provide it, from
# the shlibs/symbols files of the installed packages. It runs in a source tree: a
# debian/control naming the package (a temporary one here), and the binary inside the
# package's tree (a directory with DEBIAN/).
shlib=$(mktemp -d)
trap 'rm -rf "$shlib"' EXIT
mkdir "$shlib/debian"
printf 'Source: ctune\n\nPackage: ctune\nArchitecture: any\n' > "$shlib/debian/control"
if [ "$arch" = amd64 ]; then
    shlibs=$(cd "$shlib" && dpkg-shlibdeps -O "$OLDPWD/$root/usr/bin/ctune" | sed -n 's/^shlibs:Depends=//p')
else
    # The cross libraries' packages stand for the target's: libc6-arm64-cross's shlibs
    # name libc6:arm64, libgcc-s1-arm64-cross's symbols name itself. On an arm64 machine
    # these are libc6 and libgcc-s1.
    shlibs=$(cd "$shlib" && DEB_HOST_ARCH=arm64 dpkg-shlibdeps -O -l/usr/aarch64-linux-gnu/lib "$OLDPWD/$root/usr/bin/ctune" |
        sed -n 's/^shlibs:Depends=//p' | sed 's/:arm64//g; s/-arm64-cross//g')
fi
[ -n "$shlibs" ] || { echo "build-deb: dpkg-shlibdeps found no library dependency" >&2; exit 1; }

# Modes (0755 directories and executables, 0644 the rest) and mtimes, whatever the
# checkout's; owners are root's in the archive (--root-owner-group).
find "$root" -type d -exec chmod 0755 {} +
find "$root" -type f -perm /111 -exec chmod 0755 {} +
find "$root" -type f ! -perm /111 -exec chmod 0644 {} +

# Installed-Size as dpkg-gencontrol counts it (KiB per file rounded up, 1 per directory
# or link), not du's blocks, which depend on the file system the build ran on.
installed_kb=$(find "$root" -mindepth 1 -path "$root/DEBIAN" -prune -o -printf '%y %s\n' |
    awk '$1 == "f" { kb += int(($2 + 1023) / 1024); next } { kb += 1 } END { print kb }')
cat > "$root/DEBIAN/control" <<CTRL
Package: ctune
Version: $version
Architecture: $arch
Maintainer: ctune developers <ctune@example.org>
Installed-Size: $installed_kb
Depends: $shlibs, kmod, systemd
Section: net
Priority: optional
Description: automatic conntrack tuning agent
 Sizes nf_conntrack_max and the conntrack hash from memory and the live table,
 per network namespace, lowers timeouts under pressure, explains every change,
 and persists the learned limits so they survive a reboot.
CTRL
echo /etc/ctune/ctune.yaml > "$root/DEBIAN/conffiles"
# md5sums of every file but the conffiles (dpkg keeps theirs itself), as dh_md5sums.
(cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\n' |
    sort | xargs -d '\n' md5sum) > "$root/DEBIAN/md5sums"

cat > "$root/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
    fi
    for unit in ctune-boot.service ctune.service; do
        if command -v deb-systemd-helper >/dev/null 2>&1; then
            deb-systemd-helper unmask "$unit" >/dev/null || true
            # was-enabled is true on a first install: enable then. On an upgrade it
            # keeps what the admin chose: a disabled unit stays disabled.
            if deb-systemd-helper --quiet was-enabled "$unit"; then
                deb-systemd-helper enable "$unit" >/dev/null || true
            else
                deb-systemd-helper update-state "$unit" >/dev/null || true
            fi
        elif [ -z "$2" ]; then
            systemctl enable "$unit" >/dev/null 2>&1 || true
        fi
    done
    # (Re)start the agent only on a running systemd (not in a chroot or image build),
    # and only when it is enabled: an upgrade must not start what the admin disabled.
    if [ -d /run/systemd/system ] && systemctl --quiet is-enabled ctune.service 2>/dev/null; then
        if command -v deb-systemd-invoke >/dev/null 2>&1; then
            deb-systemd-invoke restart ctune.service || true
        else
            systemctl restart ctune.service || true
        fi
    fi
fi
exit 0
SH

cat > "$root/DEBIAN/prerm" <<'SH'
#!/bin/sh
set -e
# Stop the agent (stopping rolls nothing back) before its binary goes away or changes.
if [ -d /run/systemd/system ]; then
    if command -v deb-systemd-invoke >/dev/null 2>&1; then
        deb-systemd-invoke stop ctune.service ctune-boot.service >/dev/null 2>&1 || true
    else
        systemctl stop ctune.service ctune-boot.service >/dev/null 2>&1 || true
    fi
fi
if [ "$1" = remove ]; then
    # dpkg does not tell prerm whether a purge follows, and postrm runs after the binary
    # is deleted: keep a copy for `postrm purge` to run `ctune restore` with.
    # A failed copy must not fail the removal: purge then still removes ctune's files.
    mkdir -p /var/lib/ctune && cp /usr/bin/ctune /var/lib/ctune/ctune-restore ||
        echo "ctune: could not keep a copy for purge; purge will only remove ctune's files" >&2
fi
exit 0
SH

cat > "$root/DEBIAN/postrm" <<'SH'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = purge ]; then
    # Undo: the values from before ctune, its persisted files removed. --force: the
    # operator asked for the package to be gone.
    if [ -x /var/lib/ctune/ctune-restore ]; then
        /var/lib/ctune/ctune-restore restore --force || echo "ctune: restore failed (exit $?); see above" >&2
    fi
    # Whatever restore could do (conntrack not loaded, no copy): ctune's own files go, so
    # nothing of ctune applies at the next boot; what it set stays until then.
    for f in /etc/sysctl.d/99-ctune.conf /etc/modules-load.d/ctune.conf /etc/modprobe.d/ctune.conf; do
        if [ -f "$f" ] && head -n 1 "$f" | grep -q '^# Managed by ctune'; then
            settings=$(grep -v '^#' "$f" | grep . | paste -sd ';' -)
            rm -f "$f"
            if [ -e /proc/sys/net/netfilter/nf_conntrack_max ]; then
                echo "ctune: removed $f ($settings); what it set stays in force until the next boot" >&2
            else
                echo "ctune: removed $f ($settings); conntrack is not loaded, so none of it is in force, and none applies at the next boot" >&2
            fi
        fi
    done
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        deb-systemd-helper purge ctune.service ctune-boot.service >/dev/null || true
        deb-systemd-helper unmask ctune.service ctune-boot.service >/dev/null || true
    fi
    rm -rf /var/lib/ctune /etc/ctune /run/ctune
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
fi
exit 0
SH
chmod 755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
chmod 644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
find "$root" -exec touch --no-dereference -d "@$SOURCE_DATE_EPOCH" {} +

# dpkg-deb sorts the members, takes SOURCE_DATE_EPOCH for the ar header and clamps the
# tar mtimes to it; xz, dpkg's default, is named so the result does not hang on it.
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
echo "$out"
