#!/bin/bash
# Runs inside the VM as ctune-vmtest.service (tests/vm/run.sh installs it). The phase comes
# from the kernel command line (ctune.phase=...). Prints marker lines to the serial
# console, "CTUNE-VM <phase> key=value ...", then powers off. Values never hold spaces.
set -uo pipefail
exec 3>/dev/ttyS0
mark() { echo "CTUNE-VM $*" >&3; }
info() { echo "CTUNE-VM-INFO $*" >&3; }
nf=/proc/sys/net/netfilter
phase=$(sed -n 's/.*ctune\.phase=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
files="/etc/sysctl.d/99-ctune.conf /etc/modules-load.d/ctune.conf /etc/modprobe.d/ctune.conf /var/lib/ctune /usr/bin/ctune"

wait_for() { # wait_for SECONDS COMMAND...
    local n=$1; shift
    for ((i = 0; i < n * 2; i++)); do "$@" && return 0; sleep 0.5; done
    return 1
}
# key=value,key=value from a sysctl.d file (comments dropped).
flat() { [ -e "$1" ] && grep -v '^#' "$1" | tr -d ' ' | grep . | paste -sd, - || echo none; }
hashsize() { cat /sys/module/nf_conntrack/parameters/hashsize 2>/dev/null || echo none; }
present3() { local l=""; for f in /etc/sysctl.d/99-ctune.conf /etc/modules-load.d/ctune.conf /etc/modprobe.d/ctune.conf; do [ -e "$f" ] && l="$l${l:+,}$f"; done; echo "${l:-none}"; }
present() { local l=""; for f in $files; do [ -e "$f" ] && l="$l${l:+,}$f"; done; echo "${l:-none}"; }
# systemd-modules-load logs "Inserted module 'X'" (to kmsg this early in boot).
loaded_early() { journalctl -b -o cat | grep -q "Inserted module 'nf_conntrack'"; }
# ctune's units and their enablement links, as a list (none when dpkg removed them all).
units() {
    ls -d /etc/systemd/system/*/ctune.service /etc/systemd/system/*/ctune-boot.service \
        /etc/systemd/system/ctune.service /etc/systemd/system/ctune-boot.service \
        /lib/systemd/system/ctune.service /lib/systemd/system/ctune-boot.service \
        /var/lib/systemd/deb-systemd-helper-enabled/ctune* 2>/dev/null | paste -sd, - | grep . || echo none
}
pkgver() { dpkg-query -W -f='${Version}' ctune 2>/dev/null || echo none; }
unitstate() { echo "$(systemctl is-enabled "$1" 2>/dev/null || true)/$(systemctl is-active "$1" 2>/dev/null || true)"; }
dpkg_i() { # dpkg_i MARKER DEB [AGENT_PID_BEFORE]: install DEB, mark the outcome
    local m=$1 deb=$2 pid0=${3:-} rc pid
    dpkg -i "$deb" 2>&1 | sed "s/^/CTUNE-VM-INFO $m dpkg: /" >&3
    rc=${PIPESTATUS[0]}
    [ -z "$pid0" ] || wait_for 30 systemctl is-active -q ctune.service || true
    pid=$(systemctl show -p MainPID --value ctune.service)
    mark "$m rc=$rc version=$(pkgver) agent_enabled=$(systemctl is-enabled ctune.service 2>/dev/null) agent_active=$(systemctl is-active ctune.service 2>/dev/null) boot_enabled=$(systemctl is-enabled ctune-boot.service 2>/dev/null) boot_active=$(systemctl is-active ctune-boot.service 2>/dev/null) pid=$pid restarted=$([ -n "$pid0" ] && [ "$pid" != 0 ] && [ "$pid" != "$pid0" ] && echo yes || echo no)"
}
finish() { info "uptime=$(cut -d' ' -f1 /proc/uptime)"; sync; systemctl poweroff; exit 0; }
if [ "${1:-}" = snapshot ]; then
    # ctune-vmsnap.service: after systemd-sysctl, ctune-boot and the firewall, before the
    # agent: what the boot put in force, before ctune's agent can change anything.
    if [ -e $nf/nf_conntrack_max ]; then
        echo "pre_max=$(cat $nf/nf_conntrack_max) pre_buckets=$(cat $nf/nf_conntrack_buckets) pre_hashsize=$(hashsize)" > /run/ctune-vmtest.pre
    else
        echo "pre_max=none pre_buckets=none pre_hashsize=none" > /run/ctune-vmtest.pre
    fi
    exit 0
fi

trap finish EXIT

# purgecold boots with module_blacklist=nf_conntrack: conntrack never comes, on purpose.
if [ "$phase" != purgecold ]; then
    wait_for 120 test -e $nf/nf_conntrack_max || { mark "$phase error=nf_conntrack_never_loaded"; exit 0; }
fi

# Observations that every phase prints (before any traffic).
observe() {
    local p=$1
    [ "$p" != boot2 ] || wait_for 60 systemctl is-active -q ctune.service || true
    local early=no
    loaded_early && early=yes
    journalctl -b -o short-monotonic | grep -e "Inserted module" -e "systemd-sysctl" -e "Finished systemd-modules-load" | sed 's/^/CTUNE-VM-INFO early: /' >&3
    local cw
    cw=$(journalctl -b -o cat | grep "Couldn't write" | grep -c netfilter)
    journalctl -b -o cat | grep "Couldn't write" | grep netfilter | sed 's/^/CTUNE-VM-INFO journal: /' >&3
    mark "$p $(cat /run/ctune-vmtest.pre 2>/dev/null || echo pre_max=missing) max=$(cat $nf/nf_conntrack_max) buckets=$(cat $nf/nf_conntrack_buckets) hashsize=$(hashsize) count=$(cat $nf/nf_conntrack_count) module_loaded_early=$early couldnt_write=$cw agent=$(systemctl is-active ctune.service) boot_unit=$(systemctl is-active ctune-boot.service) boot_result=$(systemctl show -p Result --value ctune-boot.service) persisted=$(flat /etc/sysctl.d/99-ctune.conf) files=$(present)"
}

info "phase=$phase kernel=$(uname -r)"
case "$phase" in
boot1)
    stock_max=$(cat $nf/nf_conntrack_max) stock_buckets=$(cat $nf/nf_conntrack_buckets)
    wait_for 60 systemctl is-active -q ctune.service || true
    # The agent again, writing its metrics for node_exporter (the directory it looks for
    # at start) and, with ctune.noprocfs, as on a kernel without
    # /proc/net/stat/nf_conntrack: under the shim that hides it.
    mkdir -p /var/lib/prometheus/node-exporter
    if grep -q ctune.noprocfs=1 /proc/cmdline; then
        mkdir -p /run/systemd/system/ctune.service.d
        printf '[Service]\nEnvironment=LD_PRELOAD=/usr/local/lib/ctune-vmtest/no_procfs_stat.so\n' \
            > /run/systemd/system/ctune.service.d/noprocfs.conf
        systemctl daemon-reload
    fi
    systemctl restart ctune.service
    wait_for 60 systemctl is-active -q ctune.service || true
    mark "boot1start stock_max=$stock_max stock_buckets=$stock_buckets stock_hashsize=$(hashsize) agent=$(systemctl is-active ctune.service) persisted_files=$(present3)"
    # UDP flood on loopback: one flow per destination address in 127.0.0.0/8.
    for seed in 1 2; do
        python3 - "$seed" <<'PY' &
import socket, sys, time
seed = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
i = sent = refused = 0
t = time.time()
while True:
    i += 1
    if i % 65536 == 0:
        s.close(); s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", ("127.%d.%d.%d" % (seed * 16 + (i >> 16) % 16, (i >> 8) & 255, i & 255), 9))
        sent += 1
    except OSError:
        refused += 1
    if i % 50000 == 0:
        print("CTUNE-VM-INFO gen%d sent=%d refused=%d rate=%d/s" % (seed, sent, refused, i / (time.time() - t)), file=open("/dev/ttyS0", "w"))
PY
    done
    grown=no
    for ((i = 0; i < 600; i++)); do
        sleep 1
        if ((i % 10 == 0)); then
            info "t=$i count=$(cat $nf/nf_conntrack_count) max=$(cat $nf/nf_conntrack_max) buckets=$(cat $nf/nf_conntrack_buckets) file=$(flat /etc/sysctl.d/99-ctune.conf)"
        fi
        if (($(cat $nf/nf_conntrack_max) > stock_max && $(cat $nf/nf_conntrack_buckets) > stock_buckets)) &&
            grep -q nf_conntrack_buckets /etc/sysctl.d/99-ctune.conf 2>/dev/null; then
            grown=yes
            break
        fi
    done
    kill $(jobs -p) 2>/dev/null
    wait 2>/dev/null
    # Where the agent read the counters, as its metrics say, and the composition samples
    # the unit's sandbox refused.
    prom=/var/lib/prometheus/node-exporter/ctune.prom
    stat_source=$(sed -n 's/^ctune_nf_conntrack_stat_source{.*netns="init".*source="\([a-z]*\)".*/\1/p' $prom 2>/dev/null | head -1)
    composition_failed=$(journalctl -b -o cat -u ctune.service | grep -c "no composition sample")
    # Stopping the agent rolls nothing back; it freezes what is persisted.
    systemctl stop ctune.service
    journalctl -b -o cat -u ctune.service | tail -25 | sed 's/^/CTUNE-VM-INFO ctune: /' >&3
    mark "boot1 grown=$grown stat_source=${stat_source:-none} composition_failed=$composition_failed after_s=$i max=$(cat $nf/nf_conntrack_max) buckets=$(cat $nf/nf_conntrack_buckets) hashsize=$(hashsize) persisted=$(flat /etc/sysctl.d/99-ctune.conf) modules_load=$(flat /etc/modules-load.d/ctune.conf) modprobe=$(flat /etc/modprobe.d/ctune.conf | tr ' ' '_')"
    ;;
boot2 | neg | late)
    observe "$phase"
    journalctl -b -o cat -u ctune-boot.service | sed 's/^/CTUNE-VM-INFO ctune-boot: /' >&3
    journalctl -b -o short-monotonic -u systemd-modules-load.service -u systemd-sysctl.service -u nftables.service -u ctune-boot.service -u ctune.service | grep -v '^--' | head -30 | sed 's/^/CTUNE-VM-INFO order: /' >&3
    if [ "$phase" = boot2 ]; then
        out=$(systemd-analyze verify /lib/systemd/system/ctune.service /lib/systemd/system/ctune-boot.service 2>&1)
        printf '%s\n' "$out" | grep . | sed 's/^/CTUNE-VM-INFO verify: /' >&3
        mark "boot2verify lines=$(printf '%s\n' "$out" | grep -c .)"
    fi
    ;;
upgrade)
    # The admin disables the units; reinstalling the same version and upgrading to a newer
    # one (both run `postinst configure <old version>`) must leave them disabled and
    # stopped. Then the normal path: enabled units stay enabled and the agent runs again.
    wait_for 60 systemctl is-active -q ctune.service || true
    mark "upgrade version=$(pkgver) agent=$(unitstate ctune.service) boot=$(unitstate ctune-boot.service) debs=$(set -- /root/*.deb; [ -e "$1" ] && echo $# || echo 0)"
    systemctl disable --now ctune.service ctune-boot.service 2>&1 | sed 's/^/CTUNE-VM-INFO disable: /' >&3
    mark "updisabled agent=$(unitstate ctune.service) boot=$(unitstate ctune-boot.service)"
    dpkg_i upreinstall /root/ctune.deb
    dpkg_i upbump /root/ctune-up1.deb
    systemctl enable --now ctune.service ctune-boot.service 2>&1 | sed 's/^/CTUNE-VM-INFO enable: /' >&3
    wait_for 60 systemctl is-active -q ctune.service || true
    pid0=$(systemctl show -p MainPID --value ctune.service)
    mark "upreenabled agent=$(unitstate ctune.service) boot=$(unitstate ctune-boot.service) pid=$pid0"
    dpkg_i upenabled /root/ctune-up2.deb "$pid0"
    ;;
purgecold)
    # No conntrack (module_blacklist=nf_conntrack): `ctune restore` cannot run (exit 3);
    # the purge must still remove ctune's files and say what stays until the next boot.
    module=$([ -e /sys/module/nf_conntrack ] && echo loaded || echo absent)
    blacklisted=$(journalctl -b -k -o cat | grep -c "Module nf_conntrack is blacklisted")
    info "units: agent=$(unitstate ctune.service) boot=$(unitstate ctune-boot.service) boot_result=$(systemctl show -p Result --value ctune-boot.service) boot_exit=$(systemctl show -p ExecMainStatus --value ctune-boot.service)"
    journalctl -b -o cat -u ctune-boot.service -u ctune.service | grep -v '^--' | head -20 | sed 's/^/CTUNE-VM-INFO units: /' >&3
    before=$(present)
    out=$(dpkg --purge ctune 2>&1)
    rc=$?
    printf '%s\n' "$out" | sed 's/^/CTUNE-VM-INFO dpkg: /' >&3
    # postrm: "ctune: removed <file> (<settings>); conntrack is not loaded, so none of it is in force, ..."
    stays=$(printf '%s\n' "$out" | sed -n 's/^ctune: removed \([^ ]*\) (.*); conntrack is not loaded, so none of it is in force, and none applies at the next boot$/\1/p' | paste -sd, - | grep . || echo none)
    restore_exit=$(printf '%s\n' "$out" | sed -n 's/^ctune: restore failed (exit \([0-9]*\)).*/\1/p' | head -1)
    mark "purgecold rc=$rc module=$module blacklisted=$blacklisted restore_exit=${restore_exit:-none} stays=$stays before=$before files=$(present) status=$(dpkg-query -W -f='${db:Status-Abbrev}' ctune 2>/dev/null | tr -d ' ' || echo gone)"
    ;;
purge)
    before="max=$(cat $nf/nf_conntrack_max),buckets=$(cat $nf/nf_conntrack_buckets)"
    dpkg --purge ctune 2>&1 | sed 's/^/CTUNE-VM-INFO dpkg: /' >&3
    rc=${PIPESTATUS[0]}
    mark "purge rc=$rc before=$before max=$(cat $nf/nf_conntrack_max) buckets=$(cat $nf/nf_conntrack_buckets) files=$(present) units=$(units) status=$(dpkg-query -W -f='${db:Status-Abbrev}' ctune 2>/dev/null | tr -d ' ' || echo gone)"
    ;;
boot3 | boot4)
    mark "$phase max=$(cat $nf/nf_conntrack_max) buckets=$(cat $nf/nf_conntrack_buckets) hashsize=$(hashsize) module_loaded_early=$(loaded_early && echo yes || echo no) files=$(present) units=$(units)"
    ;;
*)
    mark "$phase error=unknown_phase"
    ;;
esac
