#!/bin/bash
# Installs, upgrades and erases the ctune RPM in a scratch root with its scriptlets
# running (rpm --root chroots into it), and checks what they did. Needs root: it runs in
# its own mount namespace (unshare -m), where the scratch root is an overlay of this
# machine's / on a tmpfs (so the scriptlets find /bin/sh, systemctl, head, grep) with
# copies of a fixture kernel tree (fixtures/kernel-4.19: modular conntrack) as its /proc
# and /sys, an empty /run (systemd not running: the chroot or image-build case) and its
# own rpm database. Every write lands in the tmpfs, never on this machine's files or
# kernel, and the namespace and the tmpfs vanish when the script ends.
#
# Usage: packaging/rpm/scratch-install.sh RPM
# Exit 0: every check passed; 1: a check failed; 77: skipped (not root, or no mount
# namespace or overlay here), with the reason on stderr.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 RPM" >&2; exit 2; }
if [ "$(id -u)" -ne 0 ]; then
    echo "scratch-install: skipped: needs root (a mount namespace, an overlay, chroot)" >&2
    exit 77
fi
if [ -z "${CTUNE_SCRATCH_NS:-}" ]; then
    unshare -m true 2>/dev/null || { echo "scratch-install: skipped: unshare -m is not permitted here" >&2; exit 77; }
    CTUNE_SCRATCH_NS=1 exec unshare -m --propagation private bash "$0" "$@"
fi

repo=$(cd "$(dirname "$0")/../.." && pwd)
pkg=$(realpath "$1")
base=$(mktemp -d)
mount -t tmpfs -o mode=0755 ctune-scratch "$base"
mkdir "$base/upper" "$base/work" "$base/root"
if ! mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root" 2>/dev/null; then
    echo "scratch-install: skipped: cannot mount an overlay here" >&2
    exit 77
fi
R=$base/root
# Never write through anything but the overlay.
[ "$(findmnt -n -o FSTYPE "$R")" = overlay ] || { echo "scratch-install: $R is not the overlay" >&2; exit 1; }

fail=0
check() { # check DESCRIPTION COMMAND...: run COMMAND, report
    local what=$1
    shift
    if "$@"; then
        echo "ok   $what"
    else
        echo "FAIL $what"
        fail=1
    fi
}
val() { tr -d '\n' < "$R/proc/sys/net/netfilter/$1"; }
# Debian's rpm warns on every call unless told --force-debian (other rpms lack it).
quiet=()
rpm --help 2>/dev/null | grep -q -- --force-debian && quiet=(--force-debian)
rpmr() { rpm "${quiet[@]}" --root "$R" --dbpath /var/lib/ctune-scratch-rpmdb "$@"; }
fresh_kernel() {
    rm -rf "$R/proc" "$R/sys" "$R/run"
    mkdir -p "$R/run"
    cp -a "$repo/fixtures/kernel-4.19/proc" "$R/proc"
    cp -a "$repo/fixtures/kernel-4.19/sys" "$R/sys"
}

# The chroot: /dev/null for the scriptlets' redirections, the fixture kernel, no
# running systemd, none of this machine's ctune files, an empty rpm database.
touch "$R/dev/null" 2>/dev/null || { mkdir -p "$R/dev" && touch "$R/dev/null"; }
mount --bind /dev/null "$R/dev/null"
rm -rf "$R/etc/ctune" "$R/var/lib/ctune" "$R/etc/sysctl.d/99-ctune.conf" \
    "$R/etc/modules-load.d/ctune.conf" "$R/etc/modprobe.d/ctune.conf" \
    "$R"/etc/systemd/system/*.wants/ctune*.service "$R/usr/bin/ctune"
fresh_kernel
rpm --root "$R" --dbpath /var/lib/ctune-scratch-rpmdb --initdb
max0=$(val nf_conntrack_max)
buckets0=$(val nf_conntrack_buckets)
# Pressure: 90% full, so `ctune apply` raises max and the hash.
echo $(( (max0 * 9 + 9) / 10 )) > "$R/proc/sys/net/netfilter/nf_conntrack_count"
cfg=/root/ctune-scratch.yaml
printf 'namespaces:\n  mode: initial\n' > "$R$cfg"
wants_agent=$R/etc/systemd/system/multi-user.target.wants/ctune.service
wants_boot=$R/etc/systemd/system/sysinit.target.wants/ctune-boot.service
persisted=("$R/etc/sysctl.d/99-ctune.conf" "$R/etc/modules-load.d/ctune.conf" "$R/etc/modprobe.d/ctune.conf")

echo "== install (rpm -i, scriptlets in the chroot)"
# --nodeps: the scratch database knows nothing of this machine's libc.
rpmr -i --nodeps "$pkg"
check "rpm -V: every file as packaged" rpmr -V --nodeps ctune
check "%post enabled ctune.service by preset (multi-user.target.wants)" test -L "$wants_agent"
check "%post enabled ctune-boot.service by preset (sysinit.target.wants)" test -L "$wants_boot"
check "the installed binary runs in the chroot" chroot "$R" /usr/bin/ctune --version

echo "== ctune apply under pressure (in the chroot, on the fixture kernel)"
chroot "$R" /usr/bin/ctune --config "$cfg" apply >/dev/null
max1=$(val nf_conntrack_max)
check "apply raised nf_conntrack_max ($max0 -> $max1)" test "$max1" -gt "$max0"
check "apply persisted /etc/sysctl.d/99-ctune.conf" test -f "${persisted[0]}"
check "apply kept state in /var/lib/ctune" test -n "$(ls -A "$R/var/lib/ctune")"

echo "== upgrade (rpm -U --replacepkgs: %post \$1=2, old %preun/%postun \$1=1) with ctune.service disabled by the admin"
chroot "$R" systemctl disable ctune.service >/dev/null 2>&1
echo "# the admin's edit" >> "$R/etc/ctune/ctune.yaml"
rpmr -U --replacepkgs --nodeps "$pkg"
check "the admin-disabled ctune.service stays disabled" test ! -L "$wants_agent"
check "ctune-boot.service stays enabled" test -L "$wants_boot"
check "the edited config is kept (%config(noreplace))" grep -q "the admin's edit" "$R/etc/ctune/ctune.yaml"
check "no restore on upgrade: max stays $max1" test "$(val nf_conntrack_max)" = "$max1"
check "no restore on upgrade: the persisted file stays" test -f "${persisted[0]}"

echo "== erase (rpm -e): %preun restores, %postun removes ctune's files"
rc=0
rpmr -e ctune > "$base/erase.out" 2>&1 || rc=$?
sed 's/^/   | /' "$base/erase.out"
check "rpm -e succeeds" test "$rc" -eq 0
check "restore put back nf_conntrack_max ($max0)" test "$(val nf_conntrack_max)" = "$max0"
check "restore put back nf_conntrack_buckets ($buckets0)" test "$(val nf_conntrack_buckets)" = "$buckets0"
for f in "${persisted[@]}"; do
    check "${f#"$R"} is gone" test ! -e "$f"
done
check "/var/lib/ctune is gone" test ! -e "$R/var/lib/ctune"
check "the units are disabled" test ! -L "$wants_boot" -a ! -L "$wants_agent"
check "/usr/bin/ctune and the units are gone" test ! -e "$R/usr/bin/ctune" -a ! -e "$R/usr/lib/systemd/system/ctune.service"
check "the edited config is kept as ctune.yaml.rpmsave" test -f "$R/etc/ctune/ctune.yaml.rpmsave"

echo "== erase with conntrack not loaded: restore fails, the erase does not"
rm -rf "$R/etc/ctune"
fresh_kernel
echo $(( (max0 * 9 + 9) / 10 )) > "$R/proc/sys/net/netfilter/nf_conntrack_count"
rpmr -i --nodeps "$pkg"
chroot "$R" /usr/bin/ctune --config "$cfg" apply >/dev/null
check "apply persisted the three files (modular conntrack)" test -f "${persisted[0]}" -a -f "${persisted[1]}" -a -f "${persisted[2]}"
rm -rf "$R/proc/sys/net/netfilter"
# A file of the same name that ctune did not write is left alone.
foreign=$R/etc/modprobe.d/ctune.conf
printf 'options nf_conntrack hashsize=4096\n' > "$foreign"
rc=0
rpmr -e ctune > "$base/erase2.out" 2>&1 || rc=$?
sed 's/^/   | /' "$base/erase2.out"
check "rpm -e succeeds" test "$rc" -eq 0
check "the failed restore is reported" grep -q '^ctune: restore failed (exit 3)' "$base/erase2.out"
check "%postun removed 99-ctune.conf and said so" grep -q 'ctune: removed /etc/sysctl.d/99-ctune.conf' "$base/erase2.out"
check "%postun removed modules-load.d/ctune.conf" test ! -e "${persisted[1]}"
check "a modprobe.d/ctune.conf without ctune's header is kept" test -f "$foreign"
check "/var/lib/ctune is gone" test ! -e "$R/var/lib/ctune"
check "the unedited config is gone, /etc/ctune with it" test ! -e "$R/etc/ctune"
check "the package is gone from the database" sh -c "! rpm ${quiet[*]} --root '$R' --dbpath /var/lib/ctune-scratch-rpmdb -q ctune >/dev/null"

if [ "$fail" -ne 0 ]; then
    echo "scratch-install: some checks failed" >&2
    exit 1
fi
echo "scratch-install: all checks passed"
