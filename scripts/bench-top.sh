#!/bin/sh
# `ctune top` (its default: a sample of the first 32768 entries the kernel sends, in hash
# order) and `ctune top --all` (every entry) against `conntrack -L | awk | sort | uniq -c`
# on the same table, in one run: wall time and peak RSS of each (GNU time: %e, %M; for the pipeline %M is its largest
# process). Root only. Fills a fresh namespace with N unreplied UDP entries (one source
# /24 per 5000 entries; both sides aggregate by source prefix), raising the global
# nf_conntrack_max under the lock the live tests take, and restores it on exit.
#
#   sudo scripts/bench-top.sh 100000 1000000
set -eu
CTUNE=${CTUNE:-target/release/ctune}
NS=ctune-bench-top-$$
LOCK=/run/ctune-test-globals.lock
SIZES=${*:-100000}

exec 9>"$LOCK"
flock 9
MAX0=$(sysctl -n net.netfilter.nf_conntrack_max)
cleanup() {
    ip netns del "$NS" 2>/dev/null || true
    sysctl -qw net.netfilter.nf_conntrack_max="$MAX0"
}
trap cleanup EXIT INT TERM

for N in $SIZES; do
    ip netns del "$NS" 2>/dev/null || true
    ip netns add "$NS"
    ip -n "$NS" link set lo up
    printf 'table inet b {\n chain out {\n  type filter hook output priority 0;\n  ct state new counter accept\n }\n}\n' |
        ip netns exec "$NS" nft -f -
    ip netns exec "$NS" sysctl -qw net.netfilter.nf_conntrack_udp_timeout=3600
    NEED=$((N + N / 4 + 65536))
    [ "$(sysctl -n net.netfilter.nf_conntrack_max)" -ge "$NEED" ] ||
        sysctl -qw net.netfilter.nf_conntrack_max="$NEED"
    ip netns exec "$NS" python3 - "$N" <<'PY'
import socket, sys
n = int(sys.argv[1])
per = 5000
socks = {}
for i in range(n):
    k = i // per
    s = socks.get(k)
    if s is None:
        for old in list(socks.values()):
            old.close()
        socks.clear()
        s = socks[k] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.%d.%d.1" % (1 + k // 256 % 250, k % 256), 0))
    j = i % per
    s.sendto(b"x", ("127.250.%d.%d" % (j // 250, j % 250 + 1), 10000 + k % 50000))
PY
    COUNT=$(ip netns exec "$NS" sysctl -n net.netfilter.nf_conntrack_count)
    echo "== $N entries made, count $COUNT"
    # Three rounds, alternating, so neither gets a warmer table or a quieter machine.
    for round in 1 2 3; do
        /usr/bin/time -f "round $round ctune top (sample):             %e s wall (user %U, sys %S), %M KiB peak RSS" \
            "$CTUNE" top --netns "$NS" --json >/tmp/bench-top-sample.json
        /usr/bin/time -f "round $round ctune top --all:                %e s wall (user %U, sys %S), %M KiB peak RSS" \
            "$CTUNE" top --netns "$NS" --json --all >/tmp/bench-top.json
        /usr/bin/time -f "round $round conntrack -L | sort | uniq -c:  %e s wall (user %U, sys %S), %M KiB peak RSS (largest process)" \
            sh -c "ip netns exec $NS conntrack -L 2>/dev/null |
                   awk '{for(i=1;i<=NF;i++) if (\$i ~ /^src=/) {split(substr(\$i,5),a,\".\"); print a[1]\".\"a[2]\".\"a[3]; break}}' |
                   sort | uniq -c | sort -rn >/tmp/bench-top.txt"
    done
    grep -m1 '"entries"' /tmp/bench-top.json | sed 's/^ */ctune top --all read: /'
    grep -m1 '"margin_95"' /tmp/bench-top-sample.json | sed 's/^ */ctune top (sample): /'
    # The sample's share of the largest source prefix against the full read's.
    for f in /tmp/bench-top-sample.json /tmp/bench-top.json; do
        python3 -c 'import json,sys; n=json.load(open(sys.argv[1]))["namespaces"][0]; s=n["sources"][0]; print(sys.argv[1], "entries", n["entries"], "largest source", s["key"], round(s["share"]*100, 3), "%")' "$f"
    done
    ip netns del "$NS"
done
