#!/bin/bash
# VM test of ctune's Debian package on real boots (issue 5). See docs/vm-test.md.
#
# Builds (once, cached in $CTUNE_VM_CACHE) a Debian bookworm root filesystem with
# debootstrap, installs target/debian/ctune_*.deb into a per-run copy, and boots it with
# qemu (TCG, no network device) several times; a test unit inside the VM prints marker
# lines to the serial console and powers off. The harness parses them and asserts.
#
#   boot1     nftables autoloads nf_conntrack; a UDP flood fills the table; ctune's agent
#             raises max and the hash and persists them
#   boot2     no traffic: the persisted values are in force, loaded early, no
#             "Couldn't write", units healthy, systemd-analyze verify clean
#   neg       boot 2 on a copy of boot 1's disk without modules-load.d/ctune.conf and
#             with ctune-boot.service (and the agent) masked: systemd-sysctl alone does
#             not apply the persisted max (the ordering trap)
#   purge     dpkg --purge ctune inside the VM
#   boot3     after purge: stock values, no ctune file left
# and on a copy of boot2's disk (issue 12, hostile hosts):
#   upgrade   the admin disables both units; a reinstall of the same .deb and an upgrade
#             to a bumped version leave them disabled and stopped; enabled again, an
#             upgrade keeps them enabled and restarts the agent
#   purgecold module_blacklist=nf_conntrack: no conntrack, so `ctune restore` cannot run;
#             dpkg --purge still exits 0, removes ctune's files and says what stays
#   boot4     after that purge: stock values, no ctune file left
#
# Usage: tests/vm/run.sh [--base-only]    Env: CTUNE_VM_CACHE (default /var/cache/ctune-vm),
#        CTUNE_VM_KEEP=1 keeps the per-run directory, CTUNE_VM_DEB=path tests that .deb
#        instead of building one, CTUNE_VM_BOOT_TIMEOUT (s, per boot).
set -euo pipefail
# The whole script is one compound command: bash parses it before running it, so editing
# the file during a run cannot break that run.
{

repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${CTUNE_VM_CACHE:-/var/cache/ctune-vm}
suite=bookworm
mirror=${CTUNE_VM_MIRROR:-http://deb.debian.org/debian}
# The cache key is this list (and the suite): change it and the base is rebuilt.
packages="systemd,systemd-sysv,udev,kmod,nftables,iproute2,python3-minimal,linux-image-cloud-amd64,initramfs-tools,procps"
key=$(printf '%s %s v1\n' "$suite" "$packages" | sha256sum | cut -c1-16)
base=$cache/base-$key
boot_timeout=${CTUNE_VM_BOOT_TIMEOUT:-420}

log() { printf '[vm-test %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

need_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
    command -v debugfs >/dev/null || missing+=(e2fsprogs)
    [ ${#missing[@]} -eq 0 ] && return
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if ! apt-get install -y -qq "${missing[@]}" >/dev/null; then
        # This machine kind ships qemu-utils from bookworm-backports, which Breaks
        # bookworm's qemu-system-common: take qemu-system-x86 from backports too.
        local src=/etc/apt/sources.list.d/ctune-vm-backports.sources
        if [ ! -e "$src" ]; then
            printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
                "$mirror" "$suite" > "$src"
            apt-get update -qq
        fi
        apt-get install -y -qq -t "$suite-backports" "${missing[@]}" >/dev/null
    fi
}

build_base() {
    [ -e "$base/done" ] && return
    log "building base root filesystem $base (debootstrap $suite: $packages)"
    local t0=$SECONDS
    rm -rf "$base"
    mkdir -p "$base"
    debootstrap --variant=minbase --include="$packages" "$suite" "$base/root" "$mirror" \
        > "$base/debootstrap.log" 2>&1 || { tail -20 "$base/debootstrap.log" >&2; die "debootstrap failed (log: $base/debootstrap.log)"; }
    local r=$base/root
    echo ctune-vm > "$r/etc/hostname"
    echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' > "$r/etc/fstab"
    : > "$r/etc/machine-id"
    # No login on the console: the tests are units.
    chroot "$r" systemctl mask serial-getty@ttyS0.service getty@tty1.service >/dev/null 2>&1 || true
    chroot "$r" systemctl enable nftables.service >/dev/null 2>&1
    # A firewall that uses conntrack: loading it autoloads nf_conntrack.
    cat > "$r/etc/nftables.conf" <<'NFT'
#!/usr/sbin/nft -f
flush ruleset
table inet filter {
    chain input {
        type filter hook input priority filter; policy accept;
        ct state established,related accept
        ct state invalid drop
    }
    chain output {
        type filter hook output priority filter; policy accept;
        ct state established,related accept
    }
}
NFT
    local kver
    kver=$(ls "$r/lib/modules" | sort -V | tail -1)
    [ -n "$kver" ] || die "no kernel in the base"
    find "$r/lib/modules/$kver" -name 'nf_conntrack.ko*' | grep -q . || die "nf_conntrack is not a module in $kver"
    cp "$r/boot/vmlinuz-$kver" "$base/vmlinuz"
    cp "$r/boot/initrd.img-$kver" "$base/initrd.img"
    echo "$kver" > "$base/kver"
    rm -rf "$r/var/cache/apt/archives"/*.deb
    echo "built in $((SECONDS - t0)) s" > "$base/done"
    log "base built in $((SECONDS - t0)) s"
}

need_tools
mkdir -p "$cache"
build_base
[ "${1:-}" = "--base-only" ] && exit 0

# ---- per run ----------------------------------------------------------------------------
# The package of this tree (cargo build --release is a no-op when up to date), or
# CTUNE_VM_DEB=path to test a given one.
deb=${CTUNE_VM_DEB:-}
if [ -z "$deb" ]; then
    deb=$repo/$("$repo/packaging/build-deb.sh")
fi
[ -f "$deb" ] || die "no .deb (packaging/build-deb.sh)"
run=$(mktemp -d /var/tmp/ctune-vm.XXXXXX)
cleanup() { [ -n "${CTUNE_VM_KEEP:-}" ] && { log "kept $run"; return; }; rm -rf "$run"; }
trap cleanup EXIT
# The upgrade boot's packages: the same .deb (a reinstall: dpkg runs `postinst configure
# <same version>`, the upgrade path) and two copies with bumped versions (real upgrades).
version=$(dpkg-deb -f "$deb" Version)
dpkg-deb -R "$deb" "$run/deb-tree"
for n in 1 2; do
    sed -i "s/^Version: .*/Version: $version+vmtest$n/" "$run/deb-tree/DEBIAN/control"
    dpkg-deb -Zgzip --root-owner-group -b "$run/deb-tree" "$run/ctune-up$n.deb" >/dev/null
    [ "$(dpkg-deb -f "$run/ctune-up$n.deb" Version)" = "$version+vmtest$n" ] || die "could not build the version-bumped .deb"
done
rm -rf "$run/deb-tree"
kver=$(cat "$base/kver")
# TCG always: /dev/kvm exists on these machines but cannot run a stock kernel (see
# docs/vm-test.md). CTUNE_VM_ACCEL=kvm to try elsewhere.
accel=${CTUNE_VM_ACCEL:-tcg}

log "preparing the disk: $(basename "$deb") into a copy of the base"
t0=$SECONDS
cp -a "$base/root" "$run/root"
cp "$deb" "$run/root/tmp/ctune.deb"
chroot "$run/root" dpkg -i /tmp/ctune.deb > "$run/dpkg-install.log" 2>&1 || { cat "$run/dpkg-install.log" >&2; die "dpkg -i failed in the chroot"; }
rm "$run/root/tmp/ctune.deb"
for u in ctune.service ctune-boot.service; do
    ls "$run"/root/etc/systemd/system/*.wants/"$u" >/dev/null 2>&1 || die "postinst did not enable $u"
done
install -m 755 "$repo/tests/vm/guest.sh" "$run/root/usr/local/sbin/ctune-vmtest"
cat > "$run/root/etc/systemd/system/ctune-vmtest.service" <<'UNIT'
[Unit]
Description=ctune VM test (tests/vm/guest.sh)
After=ctune.service ctune-boot.service nftables.service systemd-sysctl.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ctune-vmtest
StandardOutput=journal
TimeoutStartSec=infinity
[Install]
WantedBy=multi-user.target
UNIT
cat > "$run/root/etc/systemd/system/ctune-vmsnap.service" <<'UNIT'
[Unit]
Description=ctune VM test: values the boot put in force, before the agent
DefaultDependencies=no
After=systemd-modules-load.service systemd-sysctl.service ctune-boot.service nftables.service local-fs.target
Before=ctune.service sysinit.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/ctune-vmtest snapshot
[Install]
WantedBy=sysinit.target
UNIT
chroot "$run/root" systemctl enable ctune-vmtest.service ctune-vmsnap.service >/dev/null 2>&1
truncate -s 2G "$run/disk.img"
mkfs.ext4 -q -F -L root -d "$run/root" "$run/disk.img" || die "mkfs.ext4 -d failed"
rm -rf "$run/root"
log "disk ready in $((SECONDS - t0)) s"

declare -A took
stalls=()
qemu() { # qemu PHASE DISK EXTRA LOG: one boot; returns 0, or 75 when the guest stalled early
    local phase=$1 disk=$2 extra=$3 out=$4 pid rc=0 stalled_at=
    timeout --kill-after=10 "$boot_timeout" qemu-system-x86_64 -accel "$accel" -cpu max -smp 2 -m 1024 \
        -nodefaults -display none -monitor none -nic none -no-reboot \
        -serial "file:$out" \
        -kernel "$base/vmlinuz" -initrd "$base/initrd.img" \
        -append "root=/dev/vda rw console=ttyS0 panic=-1 quiet systemd.show_status=0 ctune.phase=$phase $extra" \
        -drive "file=$disk,if=virtio,format=raw" &
    pid=$!
    # Under TCG a boot now and then hangs before userspace with RCU stalls ("timer wakeup
    # didn't happen"): the guest idles forever. Such a boot is killed and retried once.
    while kill -0 "$pid" 2>/dev/null; do
        sleep 2
        if grep -aq "detected stalls" "$out" 2>/dev/null && ! grep -aq "^CTUNE-VM-INFO phase=" "$out"; then
            stalled_at=${stalled_at:-$SECONDS}
            if ((SECONDS - stalled_at > 60)); then
                kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
                return 75
            fi
        fi
    done
    wait "$pid" || rc=$?
    return "$rc"
}
boot() { # boot PHASE DISK [extra kernel args]
    local phase=$1 disk=$2 extra=${3:-} t0=$SECONDS rc=0 try
    for try in 1 2; do
        log "boot $phase (kernel $kver, $accel)$([ "$try" = 2 ] && echo ", second try")"
        rc=0
        qemu "$phase" "$disk" "$extra" "$run/$phase.log" || rc=$?
        [ "$rc" = 75 ] || break
        cp "$run/$phase.log" "$cache/last-$phase-stalled.log"
        stalls+=("$phase")
        log "boot $phase stalled before userspace (TCG timer hang; log $cache/last-$phase-stalled.log): retrying"
    done
    took[$phase]=$((SECONDS - t0))
    tr -d '\r' < "$run/$phase.log" > "$run/$phase.txt"
    cp "$run/$phase.txt" "$cache/last-$phase.log"
    [ "$rc" = 0 ] || die "boot $phase: qemu exit $rc (124: timeout after ${boot_timeout}s, 75: stalled twice); serial log: $cache/last-$phase.log"
    grep -q "^CTUNE-VM $phase " "$run/$phase.txt" || die "boot $phase: no marker line; serial log: $cache/last-$phase.log"
    log "boot $phase: $(grep "^CTUNE-VM $phase " "$run/$phase.txt" | head -1) (${took[$phase]} s)"
}
# field PHASE KEY [MARKER]: value of KEY on the marker line.
field() {
    local m=${3:-$1}
    grep "^CTUNE-VM $m " "$run/$1.txt" | head -1 | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1
}
fails=()
expect() { # expect NAME ACTUAL OP EXPECTED
    local name=$1 a=$2 op=$3 e=$4 ok=no
    case $op in
        eq) [ "$a" = "$e" ] && ok=yes ;;
        ne) [ "$a" != "$e" ] && ok=yes ;;
        gt) [ "$a" -gt "$e" ] 2>/dev/null && ok=yes ;;
    esac
    if [ $ok = yes ]; then echo "  ok    $name ($a)"; else echo "  FAIL  $name: got '$a', expected $op '$e'"; fails+=("$name"); fi
}

boot boot1 "$run/disk.img"
cp --sparse=always "$run/disk.img" "$run/neg.img"
debugfs -w -R "rm /etc/modules-load.d/ctune.conf" "$run/neg.img" >/dev/null 2>&1
# Debian's nftables.service has no After= at all: it races systemd-sysctl (seen: 0.3 s
# apart). Order it after systemd-sysctl on the control disks so the module is loaded
# late every time, as it is on hosts whose firewall comes up later.
printf '[Unit]\nAfter=systemd-sysctl.service\n' > "$run/after-sysctl.conf"
debugfs -w -f - "$run/neg.img" >/dev/null 2>&1 <<DBG
mkdir /etc/systemd/system/nftables.service.d
write $run/after-sysctl.conf /etc/systemd/system/nftables.service.d/after-sysctl.conf
DBG
debugfs -R "cat /etc/systemd/system/nftables.service.d/after-sysctl.conf" "$run/neg.img" 2>/dev/null | grep -q After= || die "could not write the nftables drop-in into the control disk"
debugfs -R "stat /etc/modules-load.d/ctune.conf" "$run/neg.img" 2>&1 | grep -q "File not found" || die "could not remove modules-load.d/ctune.conf from the control disk"
cp --sparse=always "$run/neg.img" "$run/late.img"
# On the control disk only, the persisted max is made one more than what boot 1 wrote:
# a max that happens to equal the kernel's own default at a late load (8 x the hashsize
# from modprobe.d) would make "not in force" unprovable.
neg_max=$(( $(field boot1 persisted | tr ',' '\n' | sed -n 's/^net.netfilter.nf_conntrack_max=//p') + 1 ))
debugfs -R "cat /etc/sysctl.d/99-ctune.conf" "$run/neg.img" 2>/dev/null |
    sed "s/^net.netfilter.nf_conntrack_max = .*/net.netfilter.nf_conntrack_max = $neg_max/" > "$run/neg-99-ctune.conf"
grep -q "nf_conntrack_max = $neg_max" "$run/neg-99-ctune.conf" || die "could not make the control disk's persisted max"
debugfs -w -f - "$run/neg.img" >/dev/null 2>&1 <<DBG
rm /etc/sysctl.d/99-ctune.conf
write $run/neg-99-ctune.conf /etc/sysctl.d/99-ctune.conf
DBG
debugfs -R "cat /etc/sysctl.d/99-ctune.conf" "$run/neg.img" 2>/dev/null | grep -q "nf_conntrack_max = $neg_max" || die "could not write the control disk's 99-ctune.conf"
boot boot2 "$run/disk.img"
boot neg "$run/neg.img" "systemd.mask=ctune-boot.service systemd.mask=ctune.service"
rm -f "$run/neg.img"
# Not asked by the issue: the case ctune-boot.service exists for (the module loaded late,
# by the firewall), with ctune-boot active and the agent masked.
boot late "$run/late.img" "systemd.mask=ctune.service"
rm -f "$run/late.img"
# The upgrade disk: boot2's (units enabled, values persisted, the agent's state) with the
# packages in /root.
cp --sparse=always "$run/disk.img" "$run/up.img"
debugfs -w -f - "$run/up.img" >/dev/null 2>&1 <<DBG
write $deb /root/ctune.deb
write $run/ctune-up1.deb /root/ctune-up1.deb
write $run/ctune-up2.deb /root/ctune-up2.deb
DBG
[ "$(debugfs -R "ls /root" "$run/up.img" 2>/dev/null | grep -o 'ctune[a-z0-9-]*\.deb' | sort -u | wc -l)" = 3 ] || die "could not write the .debs into the upgrade disk"
boot purge "$run/disk.img"
boot boot3 "$run/disk.img"
rm -f "$run/disk.img"
boot upgrade "$run/up.img"
# Nothing can load nf_conntrack (modules-load.d, nftables): the kernel refuses it.
boot purgecold "$run/up.img" "module_blacklist=nf_conntrack"
boot boot4 "$run/up.img"
rm -f "$run/up.img"

# ---- assertions -------------------------------------------------------------------------
stock_max=$(field boot1 stock_max boot1start)
stock_buckets=$(field boot1 stock_buckets boot1start)
persisted=$(field boot1 persisted)
p_max=$(tr ',' '\n' <<<"$persisted" | sed -n 's/^net.netfilter.nf_conntrack_max=//p')
p_buckets=$(tr ',' '\n' <<<"$persisted" | sed -n 's/^net.netfilter.nf_conntrack_buckets=//p')
# The kernel rounds the hash size up to a multiple of 512 (PAGE_SIZE / 8).
p_buckets_k=$(( (p_buckets + 511) / 512 * 512 ))

echo
echo "ctune VM test: Debian bookworm VM, kernel $kver ($accel), host kernel $(uname -r)"
echo "boot1 (flood): stock max=$stock_max buckets=$stock_buckets; persisted: $persisted"
expect "boot1: agent active before traffic" "$(field boot1 agent boot1start)" eq active
expect "boot1: nothing persisted before traffic" "$(field boot1 persisted_files boot1start)" eq none
expect "boot1: max and hash grew and were persisted" "$(field boot1 grown)" eq yes
expect "boot1: persisted max > stock" "${p_max:-0}" gt "$stock_max"
expect "boot1: persisted buckets > stock" "${p_buckets:-0}" gt "$stock_buckets"
expect "boot1: modules-load.d/ctune.conf loads nf_conntrack" "$(field boot1 modules_load)" eq nf_conntrack
expect "boot1: modprobe.d/ctune.conf hashsize" "$(field boot1 modprobe)" eq "optionsnf_conntrackhashsize=$p_buckets"
echo "boot2 (no traffic):"
expect "boot2: nf_conntrack_max = persisted, before the agent" "$(field boot2 pre_max)" eq "$p_max"
expect "boot2: nf_conntrack_buckets = persisted (kernel-rounded), before the agent" "$(field boot2 pre_buckets)" eq "$p_buckets_k"
expect "boot2: hashsize parameter = persisted (kernel-rounded), before the agent" "$(field boot2 pre_hashsize)" eq "$p_buckets_k"
expect "boot2: nf_conntrack_max unchanged once the agent runs" "$(field boot2 max)" eq "$p_max"
b2=$(field boot2 buckets)
if [ "$b2" != "$p_buckets_k" ]; then
    echo "  info  boot2: the agent resized the hash at start, $p_buckets_k -> $b2 (max / 4: boot 1's resize was held by hash.min_interval, whose clock a reboot resets)"
fi
expect "boot2: nf_conntrack loaded by systemd-modules-load" "$(field boot2 module_loaded_early)" eq yes
expect "boot2: no \"Couldn't write\" for net.netfilter" "$(field boot2 couldnt_write)" eq 0
expect "boot2: ctune-boot.service Result" "$(field boot2 boot_result)" eq success
expect "boot2: ctune-boot.service active (exited)" "$(field boot2 boot_unit)" eq active
expect "boot2: ctune.service active (after READY)" "$(field boot2 agent)" eq active
expect "boot2: systemd-analyze verify output lines" "$(field boot2 lines boot2verify)" eq 0
echo "negative control (no modules-load.d entry, ctune-boot and agent masked):"
expect "neg: nf_conntrack not loaded early" "$(field neg module_loaded_early)" eq no
expect "neg: systemd-sysctl logged \"Couldn't write\" for net.netfilter" "$(field neg couldnt_write)" gt 0
expect "neg: persisted max NOT in force" "$(field neg pre_max)" ne "$neg_max"
echo "  info  neg: max=$(field neg max) buckets=$(field neg buckets) (the module was loaded by nftables with modprobe.d's hashsize)"
echo "late module load (no modules-load.d entry; ctune-boot.service active, agent masked):"
late_max=$(field late pre_max)
echo "  info  late: max=$late_max buckets=$(field late buckets) ctune-boot=$(field late boot_unit)/$(field late boot_result) couldnt_write=$(field late couldnt_write)"
# The kernel set max = 8 x modprobe.d's hashsize at the late load; ctune-boot (after the
# firewall) puts the persisted max back over that default.
expect "late: ctune-boot puts the persisted max in force" "$late_max" eq "$p_max"
echo "purge:"
expect "purge: dpkg --purge exit" "$(field purge rc)" eq 0
expect "purge: live max restored at once" "$(field purge max)" eq "$stock_max"
expect "purge: no ctune file left" "$(field purge files)" eq none
echo "boot3 (after purge):"
expect "boot3: stock nf_conntrack_max" "$(field boot3 max)" eq "$stock_max"
expect "boot3: stock nf_conntrack_buckets" "$(field boot3 buckets)" eq "$stock_buckets"
expect "boot3: nf_conntrack not loaded early any more" "$(field boot3 module_loaded_early)" eq no
expect "boot3: no ctune file left" "$(field boot3 files)" eq none
expect "boot3: no ctune unit or enablement link left" "$(field boot3 units)" eq none
echo "upgrade (copy of boot2's disk; the admin disables both units, then reinstalls and upgrades):"
expect "upgrade: the three .debs are in the VM" "$(field upgrade debs)" eq 3
expect "upgrade: before, agent enabled and running" "$(field upgrade agent)" eq enabled/active
expect "upgrade: systemctl disable --now ctune.service ctune-boot.service" "$(field upgrade agent updisabled)/$(field upgrade boot updisabled)" eq disabled/inactive/disabled/inactive
for m in upreinstall:$version upbump:$version+vmtest1; do
    v=${m#*:} m=${m%%:*}
    expect "$m: dpkg -i $v exit" "$(field upgrade rc "$m")" eq 0
    expect "$m: version installed" "$(field upgrade version "$m")" eq "$v"
    expect "$m: ctune.service still disabled" "$(field upgrade agent_enabled "$m")" eq disabled
    expect "$m: ctune.service not started" "$(field upgrade agent_active "$m")" eq inactive
    expect "$m: ctune-boot.service still disabled" "$(field upgrade boot_enabled "$m")" eq disabled
    expect "$m: ctune-boot.service not started" "$(field upgrade boot_active "$m")" eq inactive
done
expect "upgrade: enabled again, agent running" "$(field upgrade agent upreenabled)" eq enabled/active
expect "upenabled: dpkg -i $version+vmtest2 exit" "$(field upgrade rc upenabled)" eq 0
expect "upenabled: version installed" "$(field upgrade version upenabled)" eq "$version+vmtest2"
expect "upenabled: ctune.service still enabled" "$(field upgrade agent_enabled upenabled)" eq enabled
expect "upenabled: ctune.service active" "$(field upgrade agent_active upenabled)" eq active
expect "upenabled: the agent was restarted (new main PID)" "$(field upgrade restarted upenabled)" eq yes
expect "upenabled: ctune-boot.service still enabled" "$(field upgrade boot_enabled upenabled)" eq enabled
echo "  info  upenabled: ctune-boot.service $(field upgrade boot_active upenabled) after the upgrade (prerm stops it; the agent's Wants= starts it again)"
echo "purgecold (module_blacklist=nf_conntrack):"
echo "  info  purgecold: before the purge: $(field purgecold before)"
expect "purgecold: nf_conntrack not loaded" "$(field purgecold module)" eq absent
expect "purgecold: the kernel refused nf_conntrack (blacklisted)" "$(field purgecold blacklisted)" gt 0
expect "purgecold: ctune restore could not run (exit 3)" "$(field purgecold restore_exit)" eq 3
expect "purgecold: dpkg --purge exit" "$(field purgecold rc)" eq 0
expect "purgecold: no ctune file left" "$(field purgecold files)" eq none
expect "purgecold: postrm names each removed file and says none of it is in force" "$(field purgecold stays)" eq "/etc/sysctl.d/99-ctune.conf,/etc/modules-load.d/ctune.conf,/etc/modprobe.d/ctune.conf"
echo "boot4 (after purgecold):"
expect "boot4: stock nf_conntrack_max" "$(field boot4 max)" eq "$stock_max"
expect "boot4: stock nf_conntrack_buckets" "$(field boot4 buckets)" eq "$stock_buckets"
expect "boot4: nf_conntrack not loaded early any more" "$(field boot4 module_loaded_early)" eq no
expect "boot4: no ctune file left" "$(field boot4 files)" eq none
expect "boot4: no ctune unit or enablement link left" "$(field boot4 units)" eq none
echo "wall time per boot (TCG): boot1 ${took[boot1]}s, boot2 ${took[boot2]}s, neg ${took[neg]}s, late ${took[late]}s, purge ${took[purge]}s, boot3 ${took[boot3]}s, upgrade ${took[upgrade]}s, purgecold ${took[purgecold]}s, boot4 ${took[boot4]}s; base: $(cat "$base/done")"
[ ${#stalls[@]} -eq 0 ] || echo "retried after an early TCG stall: ${stalls[*]}"
echo "kernels: VM $kver (nf_conntrack modular); host $(uname -r) (nf_conntrack $( [ -e /sys/module/nf_conntrack/initstate ] && echo modular || echo built-in), covered by the cargo live tests)"
if [ ${#fails[@]} -gt 0 ]; then
    echo "VM test FAILED: ${#fails[@]} expectation(s): ${fails[*]}"
    echo "serial logs: $cache/last-*.log"
    exit 1
fi
echo "VM test passed"
exit 0
}
