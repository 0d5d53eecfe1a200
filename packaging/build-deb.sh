#!/bin/bash
# Builds target/debian/ctune_<version>_amd64.deb with plain dpkg-deb (no cargo-deb, so no
# crates.io install): the release binary, both systemd units, the default config as a
# conffile, and maintainer scripts that enable the units on install and undo ctune's
# changes on purge.
#
# Usage: packaging/build-deb.sh [--no-build]   (--no-build: use the existing
#        target/release/ctune)
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
[ "${1:-}" = "--no-build" ] && build=0

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=amd64
[ "$(dpkg --print-architecture)" = "$arch" ] || { echo "build-deb: only $arch is packaged" >&2; exit 2; }
if [ "$build" = 1 ]; then
    cargo build --release --locked -p ctune --bin ctune
fi
bin=target/release/ctune
[ -x "$bin" ] || { echo "build-deb: $bin missing (build it or drop --no-build)" >&2; exit 1; }
# The product carries no lab code: the simulator's plotter lives in ctune-lab.
if grep -qa plotters "$bin"; then
    echo "build-deb: $bin links the plotting crate; the lab must stay out of the package" >&2
    exit 1
fi

root=target/debian/ctune_${version}_${arch}
out=target/debian/ctune_${version}_${arch}.deb
rm -rf "$root"
install -d -m 755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
    "$root/etc/ctune" "$root/usr/share/doc/ctune"
install -m 755 "$bin" "$root/usr/bin/ctune"
strip --strip-unneeded "$root/usr/bin/ctune" 2>/dev/null || true
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

# Debian's copyright file and a changelog (a native package's changelog.gz).
cat > "$root/usr/share/doc/ctune/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ctune

Files: *
Copyright: ctune developers
License: MIT or Apache-2.0
 See /usr/share/common-licenses/Apache-2.0 for the Apache License 2.0; the MIT
 license text is in the source repository.
COPY
printf 'ctune (%s) unstable; urgency=medium\n\n  * Built from the repository by packaging/build-deb.sh.\n\n -- ctune developers <ctune@example.org>  %s\n' \
    "$version" "$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" \
    | gzip -9n > "$root/usr/share/doc/ctune/changelog.gz"
# The glibc the binary needs: the highest GLIBC_x.y symbol version it references.
glibc=$(objdump -T "$root/usr/bin/ctune" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)

installed_kb=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CTRL
Package: ctune
Version: $version
Architecture: $arch
Maintainer: ctune developers <ctune@example.org>
Installed-Size: $installed_kb
Depends: libc6 (>= $glibc), kmod, systemd
Section: net
Priority: optional
Description: automatic conntrack tuning agent
 Sizes nf_conntrack_max and the conntrack hash from memory and the live table,
 per network namespace, lowers timeouts under pressure, explains every change,
 and persists the learned limits so they survive a reboot.
CTRL
echo /etc/ctune/ctune.yaml > "$root/DEBIAN/conffiles"

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

dpkg-deb --root-owner-group --build "$root" "$out" >/dev/null
echo "$out"
