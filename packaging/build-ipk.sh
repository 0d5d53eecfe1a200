#!/bin/bash
# Builds the OpenWrt package (.ipk) of a static musl ctune, without OpenWrt's SDK: the
# format OpenWrt's own scripts/ipkg-build writes, and the one opkg (openwrt/opkg-lede)
# reads: a gzip'd tar (GNU format, numeric owners, sorted names) holding
# ./debian-binary ("2.0"), ./data.tar.gz and ./control.tar.gz, each of those a gzip'd tar
# of ./-prefixed paths. opkg finds the two inner archives by name (with or without the
# ./), reads ustar/GNU headers only (no pax headers: hence --format=gnu) and ignores a
# package whose Architecture is not one of its configured ones.
#
# Usage: packaging/build-ipk.sh [--arch OPKG_ARCH] BINARY
#   BINARY  a static ctune (packaging/build-cross.sh aarch64-unknown-linux-musl or
#           x86_64-unknown-linux-musl); its ELF machine must fit OPKG_ARCH
#   --arch  the device's package architecture, as `opkg print-architecture` prints it
#           (OpenWrt's ARCH_PACKAGES: aarch64_cortex-a53 for mediatek/filogic, mt7622,
#           mvebu/cortexa53, bcm27xx/bcm2710, qualcommax; aarch64_cortex-a72 for
#           bcm2711 and mvebu/cortexa72; aarch64_generic for armsr/armv8 and rockchip;
#           x86_64 for x86/64). Default: aarch64_generic for an AArch64 binary, x86_64
#           for an x86-64 one. The binary is plain ARMv8.0-A (or x86-64), so the same
#           bytes serve every aarch64 label: only this field differs.
# Prints the .ipk's path (target/openwrt/ctune_<version>-r1_<arch>.ipk) on stdout.
#
# Contents: /usr/sbin/ctune; /etc/init.d/ctune (packaging/openwrt/ctune.init, procd);
# /etc/ctune/ctune.yaml (packaging/openwrt/ctune.yaml, a conffile: an edited one is kept
# by opkg on upgrade and by sysupgrade); /lib/upgrade/keep.d/ctune (what sysupgrade must
# keep besides: the state directory and the boot files ctune writes). The control
# scripts are OpenWrt's default ones (default_postinst enables and starts the init
# script; default_prerm stops and disables it). Depends: kmod-nf-conntrack (the table)
# and kmod-nf-conntrack-netlink (ctnetlink: `ctune top` and the agent's composition
# samples). Reproducible: every time is SOURCE_DATE_EPOCH (default: the last commit's).
set -euo pipefail
cd "$(dirname "$0")/.."

arch=
while [ $# -gt 0 ]; do
    case $1 in
        --arch) arch=${2:?--arch needs a name}; shift 2 ;;
        -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "build-ipk: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] || { echo "build-ipk: give one BINARY (see --help)" >&2; exit 2; }
bin=$1
[ -x "$bin" ] || { echo "build-ipk: $bin is not an executable" >&2; exit 1; }

machine=$(LC_ALL=C readelf -h "$bin" | sed -n 's/^ *Machine: *//p')
case $machine in
    AArch64) want=aarch64; arch=${arch:-aarch64_generic} ;;
    *X86-64) want=x86_64; arch=${arch:-x86_64} ;;
    *) echo "build-ipk: $bin is a '$machine' binary; only AArch64 and X86-64 are packaged" >&2; exit 1 ;;
esac
case $arch in
    "$want" | "$want"_*) ;;
    *) echo "build-ipk: $bin ($machine) cannot be packaged as $arch" >&2; exit 1 ;;
esac
# OpenWrt has no shared glibc, and this package depends on no libc package: the binary
# must need no loader and no library.
if LC_ALL=C readelf -l "$bin" | grep -q 'program interpreter' || LC_ALL=C readelf -d "$bin" | grep -q NEEDED; then
    echo "build-ipk: $bin is dynamically linked; build a musl target (packaging/build-cross.sh)" >&2
    exit 1
fi

SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH LC_ALL=C TZ=UTC
umask 022
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)-r1

out=target/openwrt
work=$out/ctune_${version}_$arch
rm -rf "$work"
data=$work/data control=$work/control
install -d -m 755 "$data/usr/sbin" "$data/etc/init.d" "$data/etc/ctune" "$data/lib/upgrade/keep.d" "$control"
install -m 755 "$bin" "$data/usr/sbin/ctune"
# As OpenWrt's rstrip: no symbols (the profile strips them), no .comment or .note.
strip_tool="strip"
[ "$machine" = AArch64 ] && strip_tool=aarch64-linux-gnu-strip
if command -v "$strip_tool" >/dev/null 2>&1; then
    "$strip_tool" --remove-section=.comment --remove-section=.note --strip-unneeded "$data/usr/sbin/ctune"
else
    echo "build-ipk: no $strip_tool: .comment and .note stay in the binary" >&2
fi
install -m 755 packaging/openwrt/ctune.init "$data/etc/init.d/ctune"
install -m 644 packaging/openwrt/ctune.yaml "$data/etc/ctune/ctune.yaml"
cat > "$data/lib/upgrade/keep.d/ctune" <<'KEEP'
# ctune: kept by sysupgrade (besides /etc/ctune/ctune.yaml when edited, a conffile).
# The state: the operator's values from before ctune, which `ctune restore` puts back,
# and the history (the init script's --state-dir).
/etc/ctune/state/
# The learned limits, applied at boot before ctune runs.
/etc/sysctl.d/99-ctune.conf
/etc/modules.d/00-ctune
KEEP
chmod 644 "$data/lib/upgrade/keep.d/ctune"

# Installed-Size as ipkg-build computes it: the bytes of the uncompressed data tar.
tarc() { tar --format=gnu --numeric-owner --owner=0 --group=0 --sort=name --mtime="@$SOURCE_DATE_EPOCH" "$@"; }
(cd "$data" && tarc -cf - .) > "$work/data.tar"
installed_size=$(stat -c %s "$work/data.tar")
gzip -9n < "$work/data.tar" > "$work/data.tar.gz"
rm "$work/data.tar"

cat > "$control/control" <<CTRL
Package: ctune
Version: $version
Depends: kmod-nf-conntrack, kmod-nf-conntrack-netlink
Source: packaging/build-ipk.sh
SourceName: ctune
License: MIT OR Apache-2.0
Section: net
SourceDateEpoch: $SOURCE_DATE_EPOCH
Maintainer: ctune developers <ctune@example.org>
Architecture: $arch
Installed-Size: $installed_size
Description:  Automatic conntrack tuning agent: sizes nf_conntrack_max and the conntrack
 hash from memory and the live table, per network namespace, lowers timeouts under
 pressure, explains every change, and persists the learned limits for OpenWrt's boot.
CTRL
echo /etc/ctune/ctune.yaml > "$control/conffiles"
# OpenWrt's default maintainer scripts (include/package-pack.mk), word for word.
cat > "$control/postinst" <<'SH'
#!/bin/sh
[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0
[ -s ${IPKG_INSTROOT}/lib/functions.sh ] || exit 0
. ${IPKG_INSTROOT}/lib/functions.sh
default_postinst $0 $@
SH
cat > "$control/prerm" <<'SH'
#!/bin/sh
[ -s ${IPKG_INSTROOT}/lib/functions.sh ] || exit 0
. ${IPKG_INSTROOT}/lib/functions.sh
default_prerm $0 $@
SH
chmod 644 "$control/control" "$control/conffiles"
chmod 755 "$control/postinst" "$control/prerm"
(cd "$control" && tarc -cf - .) | gzip -9n > "$work/control.tar.gz"
echo 2.0 > "$work/debian-binary"
touch -d "@$SOURCE_DATE_EPOCH" "$work/debian-binary" "$work/data.tar.gz" "$work/control.tar.gz"

ipk=$out/ctune_${version}_$arch.ipk
# The outer archive in ipkg-build's member order: debian-binary, data, control.
(cd "$work" && tarc --no-recursion -cf - ./debian-binary ./data.tar.gz ./control.tar.gz) | gzip -9n > "$ipk"
rm -rf "$data" "$control"
echo "build-ipk: $ipk: $(stat -c %s "$ipk") bytes (binary $(stat -c %s "$bin") bytes, Installed-Size $installed_size)" >&2
echo "$ipk"
