#!/bin/bash
# VM test of ctune's Debian package on real boots (issue 5). See docs/vm-test.md.
#
# Builds (once, cached in $CTUNE_VM_CACHE) a Debian bookworm root filesystem with
# debootstrap and two kernels (Debian 12's linux-image-cloud-amd64 and bookworm-backports'),
# installs target/debian/ctune_*.deb into a per-run copy, and boots it with qemu (TCG, no
# network device) several times on each kernel; a test unit inside the VM prints marker
# lines to the serial console and powers off. The harness parses them and asserts.
#
# The boots (CTUNE_VM_MATRIX=full: all on every kernel; ci, the default: on the first
# kernel all but boot3, on every other kernel boot1, boot2 and late; see docs/vm-test.md):
#   boot1     nftables autoloads nf_conntrack; a UDP flood fills the table; ctune's agent
#             raises max and the hash and persists them
#   boot2     no traffic: the persisted values are in force, loaded early, no
#             "Couldn't write", units healthy, systemd-analyze verify clean
#   neg       boot 2 on a copy of boot 1's disk without modules-load.d/ctune.conf and
#             with ctune-boot.service (and the agent) masked: systemd-sysctl alone does
#             not apply the persisted max (the ordering trap)
#   late      the same disk, only the agent masked: ctune-boot.service puts the persisted
#             max in force after the firewall loaded the module late
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
#        instead of building one, CTUNE_VM_BOOT_TIMEOUT (s, per boot),
#        CTUNE_VM_KERNELS (default "stable backports": which kernels, in order; the first
#        gets the package paths), CTUNE_VM_MATRIX (ci, the default, or full).
set -euo pipefail
# The whole script is one compound command: bash parses it before running it, so editing
# the file during a run cannot break that run.
{

repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${CTUNE_VM_CACHE:-/var/cache/ctune-vm}
suite=bookworm
mirror=${CTUNE_VM_MIRROR:-http://deb.debian.org/debian}
# The cache key is this list, the suite and the second kernel: change any and the base is
# rebuilt (v2: a base with Debian 12's kernel alone is never reused).
kernel_pkg=linux-image-cloud-amd64
packages="systemd,systemd-sysv,udev,kmod,nftables,iproute2,python3-minimal,$kernel_pkg,initramfs-tools,procps"
key=$(printf '%s %s backports:%s v2\n' "$suite" "$packages" "$kernel_pkg" | sha256sum | cut -c1-16)
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

# add_backports_kernel ROOT: the second kernel, bookworm-backports' build of
# $kernel_pkg, with apt inside the chroot (it shares the host's network). Cheaper than a
# second debootstrap (the download is the kernel alone), and one per-run disk then serves
# both kernels: the boots pick one with -kernel/-initrd, the modules are in the disk.
# Writes $base/kernels.list: "stable <kver>" (debootstrap's) and "backports <kver>".
add_backports_kernel() {
    local r=$1 stable bpo d
    stable=$(ls "$r/lib/modules")
    [ "$(wc -w <<<"$stable")" = 1 ] || die "debootstrap installed kernels '$stable' in $r/lib/modules, expected one"
    local list=$r/etc/apt/sources.list.d/ctune-vm-backports.list
    echo "deb $mirror $suite-backports main" > "$list"
    { chroot "$r" apt-get -o Acquire::Languages=none update &&
        chroot "$r" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            -t "$suite-backports" "$kernel_pkg"; } > "$base/backports.log" 2>&1 ||
        { tail -20 "$base/backports.log" >&2; die "apt-get install -t $suite-backports $kernel_pkg failed in the chroot (log: $base/backports.log)"; }
    # The guest has no network: its apt needs neither the source nor the lists.
    rm -f "$list" "$r"/var/lib/apt/lists/*backports*
    bpo=$(for d in "$r"/lib/modules/*; do [ "${d##*/}" = "$stable" ] || echo "${d##*/}"; done)
    [ "$(wc -w <<<"$bpo")" = 1 ] || die "$suite-backports' $kernel_pkg added kernels '$bpo' (expected one newer than $stable)"
    printf 'stable %s\nbackports %s\n' "$stable" "$bpo" > "$base/kernels.list"
}

build_base() {
    [ -e "$base/done" ] && return
    log "building base root filesystem $base (debootstrap $suite: $packages; then $kernel_pkg from $suite-backports)"
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
    local t1=$SECONDS
    add_backports_kernel "$r"
    t1=$((SECONDS - t1))
    log "$suite-backports' kernel added in $t1 s"
    mkdir -p "$base/kernels"
    local kind kver
    while read -r kind kver; do
        find "$r/lib/modules/$kver" -name 'nf_conntrack.ko*' | grep -q . || die "nf_conntrack is not a module in $kver ($kind)"
        mkdir -p "$base/kernels/$kver"
        cp "$r/boot/vmlinuz-$kver" "$base/kernels/$kver/vmlinuz"
        cp "$r/boot/initrd.img-$kver" "$base/kernels/$kver/initrd.img"
    done < "$base/kernels.list"
    rm -rf "$r/var/cache/apt/archives"/*.deb
    echo "built in $((SECONDS - t0)) s, of it $t1 s the backports kernel" > "$base/done"
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
# The kernels ("kind kver" lines in the base: stable, then backports) and the boots on
# each (docs/vm-test.md, "Boots per kernel"). CTUNE_VM_MATRIX=full: all nine on every
# kernel. ci (the default, what CI runs, sized to its time budget): on the first kernel all
# but boot3 (purge's own marker and boot4 assert what it does); on the others boot1, boot2
# and late, what depends on the kernel (the agent's live writes, module load with
# hashsize=, systemd-sysctl against a late load, ctune-boot over the kernel's own default).
declare -A kver_of
while read -r kind v; do kver_of[$kind]=$v; done < "$base/kernels.list"
kinds=${CTUNE_VM_KERNELS:-stable backports}
matrix=${CTUNE_VM_MATRIX:-ci}
case $matrix in ci | full) ;; *) die "CTUNE_VM_MATRIX=$matrix: expected ci or full" ;; esac
tags=()
declare -A ktag_kver
for kind in $kinds; do
    [ -n "${kver_of[$kind]:-}" ] || die "CTUNE_VM_KERNELS: no kernel '$kind' in $base/kernels.list ($(cut -d' ' -f1 "$base/kernels.list" | paste -sd' ' -))"
    # A short tag for names and logs: 6.1, 6.12.
    t=$(sed 's/^\([0-9]*\.[0-9]*\).*/\1/' <<<"${kver_of[$kind]}")
    [ -z "${ktag_kver[$t]:-}" ] || die "CTUNE_VM_KERNELS: kernels '$kinds' give the tag $t twice"
    ktag_kver[$t]=${kver_of[$kind]}
    tags+=("$t")
done
[ ${#tags[@]} -gt 0 ] || die "CTUNE_VM_KERNELS is empty"
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
# The live tests' LD_PRELOAD shim (crates/agent/tests/common/no_procfs_stat.c): on the
# second kernel's boot1 the agent runs under it, as on a kernel without
# /proc/net/stat/nf_conntrack, so its counters must come over ctnetlink through the
# packaged unit's sandbox (AF_NETLINK, CAP_NET_ADMIN). Built here: the host is Debian 12,
# as the guest.
mkdir -p "$run/root/usr/local/lib/ctune-vmtest"
cc -shared -fPIC -O2 -Wall -Werror -o "$run/root/usr/local/lib/ctune-vmtest/no_procfs_stat.so" \
    "$repo/crates/agent/tests/common/no_procfs_stat.c" -ldl || die "cc could not build the no-procfs shim"
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
# One installed disk; each kernel's chain starts from a copy of it.
truncate -s 2G "$run/pristine.img"
mkfs.ext4 -q -F -L root -d "$run/root" "$run/pristine.img" || die "mkfs.ext4 -d failed"
rm -rf "$run/root"
log "disk ready in $((SECONDS - t0)) s"

declare -A took
stalls=()
# The serial logs in the cache are the last run's only (a boot that did not run this time
# leaves no stale log behind).
rm -f "$cache"/last-*.log
qemu() { # qemu TAG PHASE DISK EXTRA LOG: one boot; returns 0, or 75 when the guest stalled early
    local k=$1 phase=$2 disk=$3 extra=$4 out=$5 pid rc=0 stalled_at='' kdir=$base/kernels/${ktag_kver[$1]}
    # cx16=off: under bookworm's qemu 7.2 TCG the backports kernel (6.12) double-faults
    # in kmem_cache_alloc right after SLUB's per-CPU `cmpxchg16b %gs:(%rsi)`, with garbage
    # EFLAGS, seconds into every boot (3 of 3; 6.1 boots). Without CX16 the kernel does
    # not use that instruction and boots; nothing ctune touches depends on it.
    # thread=single: bookworm's qemu 7.2 runs each vCPU on a host thread of its own
    # (MTTCG), and its code cache races with a guest that rewrites its own text: the
    # 6.12 kernel oopsed on an int3 in text it was patching, at boot (sched_clock_cpu,
    # 2 s in) and once 20 s in (nf_conntrack's hash_conntrack_raw under the flood, after
    # the disk was mounted, so not retried). One thread for both vCPUs serializes that;
    # QEMU 8.1 fixed the race ("accel/tcg: Always lock pages before translation").
    local accel_opt=$accel
    [ "$accel" = tcg ] && accel_opt=tcg,thread=single
    timeout --kill-after=10 "$boot_timeout" qemu-system-x86_64 -accel "$accel_opt" -cpu max,cx16=off -smp 2 -m 1024 \
        -nodefaults -display none -monitor none -nic none -no-reboot \
        -serial "file:$out" \
        -kernel "$kdir/vmlinuz" -initrd "$kdir/initrd.img" \
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
# mount_stamp DISK: the ext4 superblock's mount count and last mount time. Unchanged
# across a boot means the guest never mounted its disk, so a retry boots the same state.
mount_stamp() {
    dumpe2fs -h "$1" 2>/dev/null | grep -E '^(Mount count|Last mount time):' | tr -s ' '
}
boot() { # boot TAG PHASE DISK [extra kernel args]
    local k=$1 phase=$2 disk=$3 extra=${4:-} t0=$SECONDS rc=0 try stamp
    local n=$k-$phase
    for try in 1 2 3; do
        log "boot $phase on $k (kernel ${ktag_kver[$k]}, $accel)$( ((try > 1)) && echo ", try $try")"
        rc=0
        stamp=$(mount_stamp "$disk")
        qemu "$k" "$phase" "$disk" "$extra" "$run/$n.log" || rc=$?
        if [ "$rc" = 75 ]; then
            cp "$run/$n.log" "$cache/last-$n-stalled.log"
            stalls+=("$n")
            log "boot $phase on $k stalled before userspace (TCG timer hang; log $cache/last-$n-stalled.log): retrying"
            continue
        fi
        # Under bookworm's qemu 7.2 multi-threaded TCG, the 6.12 kernel now and then oopses
        # on an int3 while it patches its own text at boot (seen in CI: "Oops: int3" in
        # sched_clock_cpu from an initcall, 2 s in; QEMU 8.1 fixed such races, "accel/tcg:
        # Always lock pages before translation"). A kernel that panicked before it mounted
        # the disk changed nothing: boot it again, and say so.
        if [ "$rc" = 0 ] && ! grep -aq "^CTUNE-VM $phase " "$run/$n.log" &&
            grep -aq "Kernel panic" "$run/$n.log" && [ "$(mount_stamp "$disk")" = "$stamp" ]; then
            cp "$run/$n.log" "$cache/last-$n-panicked.log"
            stalls+=("$n")
            log "boot $phase on $k: the kernel panicked before it mounted the disk (TCG; log $cache/last-$n-panicked.log): retrying"
            continue
        fi
        break
    done
    took[$n]=$((SECONDS - t0))
    tr -d '\r' < "$run/$n.log" > "$run/$n.txt"
    cp "$run/$n.txt" "$cache/last-$n.log"
    [ "$rc" = 0 ] || die "boot $phase on $k: qemu exit $rc (124: timeout after ${boot_timeout}s, 75: stalled three times); serial log: $cache/last-$n.log"
    grep -q "^CTUNE-VM $phase " "$run/$n.txt" || die "boot $phase on $k: no marker line; serial log: $cache/last-$n.log"
    log "boot $phase on $k: $(grep "^CTUNE-VM $phase " "$run/$n.txt" | head -1) (${took[$n]} s)"
}
# field PHASE KEY [MARKER]: value of KEY on the marker line of PHASE's boot on kernel $k
# (the caller's).
field() {
    local m=${3:-$1}
    grep "^CTUNE-VM $m " "$run/$k-$1.txt" | head -1 | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1
}
fails=()
expect() { # expect NAME ACTUAL OP EXPECTED (NAME is prefixed with the caller's kernel $k)
    local name="[$k] $1" a=$2 op=$3 e=$4 ok=no
    case $op in
        eq) [ "$a" = "$e" ] && ok=yes ;;
        ne) [ "$a" != "$e" ] && ok=yes ;;
        gt) [ "$a" -gt "$e" ] 2>/dev/null && ok=yes ;;
    esac
    if [ $ok = yes ]; then echo "  ok    $name ($a)"; else echo "  FAIL  $name: got '$a', expected $op '$e'"; fails+=("$name"); fi
}

# set_max DISK M: the persisted max in DISK's 99-ctune.conf becomes M (debugfs, no mount).
set_max() {
    local disk=$1 m=$2 conf=$run/set-max-99-ctune.conf
    debugfs -R "cat /etc/sysctl.d/99-ctune.conf" "$disk" 2>/dev/null |
        sed "s/^net.netfilter.nf_conntrack_max = .*/net.netfilter.nf_conntrack_max = $m/" > "$conf"
    grep -q "nf_conntrack_max = $m" "$conf" || die "could not make the persisted max $m for $disk"
    debugfs -w -f - "$disk" >/dev/null 2>&1 <<DBG
rm /etc/sysctl.d/99-ctune.conf
write $conf /etc/sysctl.d/99-ctune.conf
DBG
    debugfs -R "cat /etc/sysctl.d/99-ctune.conf" "$disk" 2>/dev/null | grep -q "nf_conntrack_max = $m" || die "could not write $disk's 99-ctune.conf (max $m)"
}
# control_disk TAG: the neg and late disks, copies of boot1's on kernel TAG.
declare -A neg_max late_max
control_disk() {
    local k=$1 neg=$run/$1-neg.img
    cp --sparse=always "$run/$k-disk.img" "$neg"
    debugfs -w -R "rm /etc/modules-load.d/ctune.conf" "$neg" >/dev/null 2>&1
    # Debian's nftables.service has no After= at all: it races systemd-sysctl (seen: 0.3 s
    # apart). Order it after systemd-sysctl on the control disks so the module is loaded
    # late every time, as it is on hosts whose firewall comes up later.
    printf '[Unit]\nAfter=systemd-sysctl.service\n' > "$run/after-sysctl.conf"
    debugfs -w -f - "$neg" >/dev/null 2>&1 <<DBG
mkdir /etc/systemd/system/nftables.service.d
write $run/after-sysctl.conf /etc/systemd/system/nftables.service.d/after-sysctl.conf
DBG
    debugfs -R "cat /etc/systemd/system/nftables.service.d/after-sysctl.conf" "$neg" 2>/dev/null | grep -q After= || die "could not write the nftables drop-in into the control disk"
    debugfs -R "stat /etc/modules-load.d/ctune.conf" "$neg" 2>&1 | grep -q "File not found" || die "could not remove modules-load.d/ctune.conf from the control disk"
    cp --sparse=always "$neg" "$run/$k-late.img"
    # A persisted max equal to the kernel's own default at a late load (8 x the hashsize
    # from modprobe.d) would make "in force" and "not in force" unprovable, and boot 1
    # writes exactly that whenever the agent doubled max once more while hash.min_interval
    # held the hash (seen on both kernels: max 131072 with 16384 buckets). So the neg
    # disk's max is one more than boot 1's, the late disk's one less (under the ceiling
    # ctune-boot checks), each one further when that is 8 x the hashsize.
    local p hs
    p=$(field boot1 persisted | tr ',' '\n' | sed -n 's/^net.netfilter.nf_conntrack_max=//p')
    hs=$(field boot1 persisted | tr ',' '\n' | sed -n 's/^net.netfilter.nf_conntrack_buckets=//p')
    hs=$(( (hs + 511) / 512 * 512 ))
    neg_max[$k]=$((p + 1)) late_max[$k]=$((p - 1))
    [ "${neg_max[$k]}" != $((8 * hs)) ] || neg_max[$k]=$((p + 2))
    [ "${late_max[$k]}" != $((8 * hs)) ] || late_max[$k]=$((p - 2))
    set_max "$neg" "${neg_max[$k]}"
    set_max "$run/$k-late.img" "${late_max[$k]}"
}
# wants TAG PHASE: whether PHASE boots on kernel TAG in this matrix.
wants() {
    [ "$matrix" = full ] && return 0
    if [ "$1" = "${tags[0]}" ]; then
        [ "$2" != boot3 ]
    else
        case $2 in boot1 | boot2 | late) return 0 ;; *) return 1 ;; esac
    fi
}
# persist_chain TAG: boot1, boot2, neg, late on kernel TAG, from a copy of the installed
# disk. Leaves $run/TAG-disk.img as boot2 left it.
persist_chain() {
    local k=$1
    cp --sparse=always "$run/pristine.img" "$run/$k-disk.img"
    # The first kernel reads its counters from procfs; the others as a kernel without
    # the file would (ctune.noprocfs: the agent under the shim).
    boot "$k" boot1 "$run/$k-disk.img" "$([ "$k" = "${tags[0]}" ] || echo ctune.noprocfs=1)"
    control_disk "$k"
    boot "$k" boot2 "$run/$k-disk.img"
    if wants "$k" neg; then
        boot "$k" neg "$run/$k-neg.img" "systemd.mask=ctune-boot.service systemd.mask=ctune.service"
    fi
    rm -f "$run/$k-neg.img"
    # Not asked by issue 5: the case ctune-boot.service exists for (the module loaded
    # late, by the firewall), with ctune-boot active and the agent masked.
    if wants "$k" late; then
        boot "$k" late "$run/$k-late.img" "systemd.mask=ctune.service"
    fi
    rm -f "$run/$k-late.img"
}
# package_chain TAG: purge, boot3 on boot2's disk; upgrade, purgecold, boot4 on a copy of
# it (units enabled, values persisted, the agent's state) with the packages in /root.
package_chain() {
    local k=$1 up=$run/$1-up.img
    cp --sparse=always "$run/$k-disk.img" "$up"
    debugfs -w -f - "$up" >/dev/null 2>&1 <<DBG
write $deb /root/ctune.deb
write $run/ctune-up1.deb /root/ctune-up1.deb
write $run/ctune-up2.deb /root/ctune-up2.deb
DBG
    [ "$(debugfs -R "ls /root" "$up" 2>/dev/null | grep -o 'ctune[a-z0-9-]*\.deb' | sort -u | wc -l)" = 3 ] || die "could not write the .debs into the upgrade disk"
    boot "$k" purge "$run/$k-disk.img"
    if wants "$k" boot3; then boot "$k" boot3 "$run/$k-disk.img"; fi
    boot "$k" upgrade "$up"
    # Nothing can load nf_conntrack (modules-load.d, nftables): the kernel refuses it.
    boot "$k" purgecold "$up" "module_blacklist=nf_conntrack"
    boot "$k" boot4 "$up"
    rm -f "$up"
}

declare -A chain_s pkg_on
for k in "${tags[@]}"; do
    t0=$SECONDS
    persist_chain "$k"
    if wants "$k" purge; then
        package_chain "$k"
        pkg_on[$k]=1
    fi
    rm -f "$run/$k-disk.img"
    chain_s[$k]=$((SECONDS - t0))
done
rm -f "$run/pristine.img"

# ---- assertions -------------------------------------------------------------------------
# The persisted values and the stock ones, per kernel (the stock max and hash size follow
# the kernel's own sizing).
declare -A stock_max stock_buckets p_max p_buckets_k
assert_persist() { # assert_persist TAG: boot1, boot2, neg, late
    local k=$1 persisted p_buckets
    stock_max[$k]=$(field boot1 stock_max boot1start)
    stock_buckets[$k]=$(field boot1 stock_buckets boot1start)
    persisted=$(field boot1 persisted)
    p_max[$k]=$(tr ',' '\n' <<<"$persisted" | sed -n 's/^net.netfilter.nf_conntrack_max=//p')
    p_buckets=$(tr ',' '\n' <<<"$persisted" | sed -n 's/^net.netfilter.nf_conntrack_buckets=//p')
    # The kernel rounds the hash size up to a multiple of 512 (PAGE_SIZE / 8).
    p_buckets_k[$k]=$(( (p_buckets + 511) / 512 * 512 ))
    local pm=${p_max[$k]} pb=${p_buckets_k[$k]}
    echo "boot1 on $k (flood): stock max=${stock_max[$k]} buckets=${stock_buckets[$k]}; persisted: $persisted"
    expect "boot1: agent active before traffic" "$(field boot1 agent boot1start)" eq active
    expect "boot1: nothing persisted before traffic" "$(field boot1 persisted_files boot1start)" eq none
    expect "boot1: max and hash grew and were persisted" "$(field boot1 grown)" eq yes
    expect "boot1: persisted max > stock" "${pm:-0}" gt "${stock_max[$k]}"
    expect "boot1: persisted buckets > stock" "${p_buckets:-0}" gt "${stock_buckets[$k]}"
    expect "boot1: modules-load.d/ctune.conf loads nf_conntrack" "$(field boot1 modules_load)" eq nf_conntrack
    expect "boot1: modprobe.d/ctune.conf hashsize" "$(field boot1 modprobe)" eq "optionsnf_conntrackhashsize=$p_buckets"
    # Under the packaged unit's sandbox: the counters from the file, or over ctnetlink
    # where the file is hidden; no composition sample refused (AF_NETLINK, CAP_NET_ADMIN).
    local source=procfs
    [ "$k" = "${tags[0]}" ] || source=ctnetlink
    expect "boot1: the agent's counters source (metrics)" "$(field boot1 stat_source)" eq "$source"
    expect "boot1: composition samples refused" "$(field boot1 composition_failed)" eq 0
    echo "boot2 on $k (no traffic):"
    expect "boot2: nf_conntrack_max = persisted, before the agent" "$(field boot2 pre_max)" eq "$pm"
    expect "boot2: nf_conntrack_buckets = persisted (kernel-rounded), before the agent" "$(field boot2 pre_buckets)" eq "$pb"
    expect "boot2: hashsize parameter = persisted (kernel-rounded), before the agent" "$(field boot2 pre_hashsize)" eq "$pb"
    expect "boot2: nf_conntrack_max unchanged once the agent runs" "$(field boot2 max)" eq "$pm"
    local b2
    b2=$(field boot2 buckets)
    if [ "$b2" != "$pb" ]; then
        echo "  info  [$k] boot2: the agent resized the hash at start, $pb -> $b2 (max / 4: boot 1's resize was held by hash.min_interval, whose clock a reboot resets)"
    fi
    expect "boot2: nf_conntrack loaded by systemd-modules-load" "$(field boot2 module_loaded_early)" eq yes
    expect "boot2: no \"Couldn't write\" for net.netfilter" "$(field boot2 couldnt_write)" eq 0
    expect "boot2: ctune-boot.service Result" "$(field boot2 boot_result)" eq success
    expect "boot2: ctune-boot.service active (exited)" "$(field boot2 boot_unit)" eq active
    expect "boot2: ctune.service active (after READY)" "$(field boot2 agent)" eq active
    expect "boot2: systemd-analyze verify output lines" "$(field boot2 lines boot2verify)" eq 0
    if ran neg; then
        echo "negative control on $k (no modules-load.d entry, persisted max ${neg_max[$k]}; ctune-boot and agent masked):"
        expect "neg: nf_conntrack not loaded early" "$(field neg module_loaded_early)" eq no
        expect "neg: systemd-sysctl logged \"Couldn't write\" for net.netfilter" "$(field neg couldnt_write)" gt 0
        expect "neg: persisted max NOT in force" "$(field neg pre_max)" ne "${neg_max[$k]}"
        echo "  info  [$k] neg: max=$(field neg max) buckets=$(field neg buckets) (the module was loaded by nftables with modprobe.d's hashsize)"
    fi
    ran late || return 0
    echo "late module load on $k (no modules-load.d entry, persisted max ${late_max[$k]}; ctune-boot.service active, agent masked):"
    echo "  info  [$k] late: max=$(field late pre_max) buckets=$(field late buckets) ctune-boot=$(field late boot_unit)/$(field late boot_result)"
    # The scenario itself: the module came late, so systemd-sysctl could not apply the
    # persisted values (without these two, the last expectation could pass for nothing).
    expect "late: nf_conntrack not loaded early" "$(field late module_loaded_early)" eq no
    expect "late: systemd-sysctl logged \"Couldn't write\" for net.netfilter" "$(field late couldnt_write)" gt 0
    # The kernel set max = 8 x modprobe.d's hashsize at the late load; ctune-boot (after the
    # firewall) puts the persisted max back over that default.
    expect "late: ctune-boot puts the persisted max in force" "$(field late pre_max)" eq "${late_max[$k]}"
}
ran() { [ -n "${took[$k-$1]:-}" ]; } # ran PHASE: PHASE booted on the caller's kernel $k
assert_purge() { # assert_purge TAG: purge, boot3; purgecold, boot4
    local k=$1 b
    echo "purge on $k:"
    expect "purge: dpkg --purge exit" "$(field purge rc)" eq 0
    expect "purge: live max restored at once" "$(field purge max)" eq "${stock_max[$k]}"
    expect "purge: no ctune file left" "$(field purge files)" eq none
    expect "purge: no ctune unit or enablement link left" "$(field purge units)" eq none
    echo "purgecold on $k (module_blacklist=nf_conntrack):"
    echo "  info  [$k] purgecold: before the purge: $(field purgecold before)"
    expect "purgecold: nf_conntrack not loaded" "$(field purgecold module)" eq absent
    expect "purgecold: the kernel refused nf_conntrack (blacklisted)" "$(field purgecold blacklisted)" gt 0
    expect "purgecold: ctune restore could not run (exit 3)" "$(field purgecold restore_exit)" eq 3
    expect "purgecold: dpkg --purge exit" "$(field purgecold rc)" eq 0
    expect "purgecold: no ctune file left" "$(field purgecold files)" eq none
    expect "purgecold: postrm names each removed file and says none of it is in force" "$(field purgecold stays)" eq "/etc/sysctl.d/99-ctune.conf,/etc/modules-load.d/ctune.conf,/etc/modprobe.d/ctune.conf"
    for b in boot3 boot4; do
        ran $b || continue
        echo "$b on $k (after $([ $b = boot3 ] && echo purge || echo purgecold)):"
        expect "$b: stock nf_conntrack_max" "$(field $b max)" eq "${stock_max[$k]}"
        expect "$b: stock nf_conntrack_buckets" "$(field $b buckets)" eq "${stock_buckets[$k]}"
        expect "$b: nf_conntrack not loaded early any more" "$(field $b module_loaded_early)" eq no
        expect "$b: no ctune file left" "$(field $b files)" eq none
        expect "$b: no ctune unit or enablement link left" "$(field $b units)" eq none
    done
}
assert_upgrade() { # assert_upgrade TAG
    local k=$1 m v
    echo "upgrade on $k (copy of boot2's disk; the admin disables both units, then reinstalls and upgrades):"
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
    echo "  info  [$k] upenabled: ctune-boot.service $(field upgrade boot_active upenabled) after the upgrade (prerm stops it; the agent's Wants= starts it again)"
}

echo
echo "ctune VM test: Debian bookworm VM ($accel), kernels: $(for k in "${tags[@]}"; do printf '%s ' "${ktag_kver[$k]}"; done)(CTUNE_VM_MATRIX=$matrix); host kernel $(uname -r)"
for k in "${tags[@]}"; do
    assert_persist "$k"
    if [ -n "${pkg_on[$k]:-}" ]; then
        assert_purge "$k"
        assert_upgrade "$k"
    fi
done
for k in "${tags[@]}"; do
    line=""
    for p in boot1 boot2 neg late purge boot3 upgrade purgecold boot4; do
        if [ -n "${took[$k-$p]:-}" ]; then line="$line${line:+, }$p ${took[$k-$p]}s"; fi
    done
    echo "wall time per boot on ${ktag_kver[$k]} (TCG): $line; chain ${chain_s[$k]}s"
done
echo "base: $(cat "$base/done")"
[ ${#stalls[@]} -eq 0 ] || echo "retried after an early TCG stall or panic: ${stalls[*]}"
[ "$matrix" = full ] || echo "CTUNE_VM_MATRIX=ci: the boots above; CTUNE_VM_MATRIX=full boots all nine on every kernel"
echo "kernels: VM $(for k in "${tags[@]}"; do printf '%s ' "${ktag_kver[$k]}"; done)(nf_conntrack modular); host $(uname -r) (nf_conntrack $( [ -e /sys/module/nf_conntrack/initstate ] && echo modular || echo built-in), covered by the cargo live tests)"
if [ ${#fails[@]} -gt 0 ]; then
    echo "VM test FAILED: ${#fails[@]} expectation(s): ${fails[*]}"
    echo "serial logs: $cache/last-*.log"
    exit 1
fi
echo "VM test passed"
exit 0
}
