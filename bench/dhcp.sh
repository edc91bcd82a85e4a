#!/usr/bin/env bash
# bench/dhcp.sh - DORA benchmark of pixie's full DHCP mode against dnsmasq and ISC Kea, in one run,
# at the same offered rates, with ISC perfdhcp, inside two private network namespaces this script
# creates and deletes (never on the machine's real interfaces).
#
#   pxdb-s  server namespace, veth pxdb-s0 = 10.79.0.1/24
#   pxdb-c  client namespace, veth pxdb-c0 = 10.79.0.2/24 (perfdhcp acts as a relay: giaddr 10.79.0.2)
#
# pixie: release build, full mode, the example per-arch policy (examples/per-arch; else scripts/boot.rhai)
# in the loop, leases durable BEFORE each ACK (lease journal written O_DIRECT|O_DSYNC, checkpointed into
# SQLite), state in /tmp.
# dnsmasq: lease file in /tmp (it fsyncs in its main loop). Kea: memfile persist=true (appends a CSV
# line per ACK, no fsync), 1 thread and 2 threads. Every client sends PXE options 60/93/97 so each
# server puts a boot file in OFFER/ACK (pixie: the policy decides it).
#
# Usage: bench/dhcp.sh [--rates "1000 2000 3000 4000"] [--period S] [--servers "pixie dnsmasq kea kea-mt"]
#                      [--no-50k] [--no-policy] [--out FILE] [--old-bin PATH] [--repeats N] [--perf DIR]
# --old-bin adds server "pixie-old": a second pixie build run exactly like "pixie" (A/B of a change).
# --repeats N runs every (rate, server) cell N times, servers interleaved within each repeat.
# PIXIE_WORKERS=N in the environment sets pixie's [dhcp] workers (default: pixie's own);
# PIXIE_OLD_WORKERS=N those of pixie-old (A/B of the worker count: --old-bin the same binary).
# PIXIE_BATCH_MS=X / PIXIE_OLD_BATCH_MS=X set [dhcp] batch_ms the same way.
# --perf DIR records `perf record -g` of every server run into DIR/perf-SERVER-RATE.data (needs perf;
#   PERF_CALLGRAPH="--call-graph dwarf" and PERF_FREQ=499 for Rust stacks without frame pointers;
#   sampling inflates the CPU figures of that run: use it to see where the time goes, not to compare).
# Needs root, iproute2, perfdhcp (kea-admin), kea-dhcp4 (kea-dhcp4-server), dnsmasq (dnsmasq-base),
# and `cargo build --release` done. Every loop is bounded in count and time.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PIXIE=${PIXIE:-${CARGO_TARGET_DIR:-$REPO/target}/release/pixie}
RATES="1000 2000 3000 4000"
PERIOD=10
CLIENTS=200
SERVERS="pixie dnsmasq kea kea-mt"
DO_50K=1
DO_POLICY=1
OUT=""
OLDBIN=""
REPEATS=1
PERFDIR=""
W=/tmp/pixie-bench/dhcp
# The example per-arch policy when the repository has it, else the shipped one.
# PIXIE_BENCH_POLICY=DIR (with DIR/scripts, DIR/plugins) measures another policy.
POLICY=${PIXIE_BENCH_POLICY:-$REPO/examples/per-arch}
[ -d "$POLICY/scripts" ] || POLICY=$REPO
NS_S=pxdb-s NS_C=pxdb-c

while [ $# -gt 0 ]; do
  case "$1" in
    --rates) RATES=$2; shift 2 ;;
    --period) PERIOD=$2; shift 2 ;;
    --servers) SERVERS=$2; shift 2 ;;
    --no-50k) DO_50K=0; shift ;;
    --no-policy) DO_POLICY=0; shift ;;
    --out) OUT=$2; shift 2 ;;
    --old-bin) OLDBIN=$2; SERVERS="$SERVERS pixie-old"; shift 2 ;;
    --repeats) REPEATS=$2; shift 2 ;;
    --perf) PERFDIR=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 2; }
for t in ip perfdhcp kea-dhcp4 dnsmasq; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 2; }; done
[ -x "$PIXIE" ] || { echo "no release build at $PIXIE (cargo build --release)" >&2; exit 2; }

rm -rf "$W"; mkdir -p "$W/tftproot"
SPID=""
stop_server() {
  if [ -n "$SPID" ] && kill -0 "$SPID" 2>/dev/null; then
    kill "$SPID"; for _ in $(seq 50); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true
  fi
  SPID=""
}
cleanup() { stop_server; ip netns del $NS_S 2>/dev/null || true; ip netns del $NS_C 2>/dev/null || true; }
trap cleanup EXIT INT TERM

cleanup
ip netns add $NS_S; ip netns add $NS_C
ip -n $NS_S link add pxdb-s0 type veth peer name pxdb-c0 netns $NS_C
ip -n $NS_S addr add 10.79.0.1/24 dev pxdb-s0
ip -n $NS_C addr add 10.79.0.2/24 dev pxdb-c0
for x in "$NS_S pxdb-s0" "$NS_C pxdb-c0" "$NS_S lo" "$NS_C lo"; do set -- $x; ip -n "$1" link set "$2" up; done

HZ=$(getconf CLK_TCK)
PXEOPTS=(-o "60,$(printf 'PXEClient:Arch:00000:UNDI:002001' | od -An -tx1 | tr -d ' \n')"
         -o 93,0000 -o 97,00a1b2c3d4e5f60718293a4b5c6d7e8f90)

pixie_config() { # $1 network  $2 pool
  cat <<T
[server]
listen = "0.0.0.0"
interfaces = ["pxdb-s0"]
state_dir = "$W/pixie-state"
[dhcp]
mode = "full"
port = 67
pxe_port = 4011
lease_time = 43200
${PIXIE_WORKERS:+workers = $PIXIE_WORKERS}
${PIXIE_BATCH_MS:+batch_ms = $PIXIE_BATCH_MS}
[[dhcp.subnet]]
network = "$1"
pools = ["$2"]
routers = ["10.79.0.1"]
[tftp]
enabled = false
root = "$W/tftproot"
[policy]
scripts = "$POLICY/scripts"
plugins = "$POLICY/plugins"
T
}

kea_config() { # $1 multithreading
  cat <<J
{ "Dhcp4": {
    "interfaces-config": { "interfaces": [ "pxdb-s0" ], "dhcp-socket-type": "udp" },
    "lease-database": { "type": "memfile", "persist": true, "name": "$W/kea-leases4.csv", "lfc-interval": 3600 },
    "multi-threading": { "enable-multi-threading": $1, "thread-pool-size": 2, "packet-queue-size": 64 },
    "valid-lifetime": 43200, "renew-timer": 21600, "rebind-timer": 37800,
    "next-server": "10.79.0.1", "boot-file-name": "undionly.kpxe",
    "subnet4": [ { "id": 1, "subnet": "10.79.0.0/24", "pools": [ { "pool": "10.79.0.10 - 10.79.0.250" } ],
                   "option-data": [ { "name": "routers", "data": "10.79.0.1" } ] } ],
    "loggers": [ { "name": "kea-dhcp4", "severity": "WARN", "output_options": [ { "output": "$W/kea.log" } ] } ]
} }
J
}

start_server() { # $1 name  [$2 pixie network] [$3 pixie pool]
  stop_server
  rm -rf "$W/pixie-state" "$W"/kea-leases4.csv* "$W"/dnsmasq.leases
  local -a cmd
  case "$1" in
    pixie|pixie-old)
      local bin=$PIXIE; [ "$1" = pixie-old ] && bin=$OLDBIN
      # PIXIE_OLD_WORKERS: pixie-old's workers, to A/B the worker count with one binary.
      local w=${PIXIE_WORKERS:-} b=${PIXIE_BATCH_MS:-}
      [ "$1" = pixie-old ] && w=${PIXIE_OLD_WORKERS:-$w} && b=${PIXIE_OLD_BATCH_MS:-$b}
      PIXIE_WORKERS=$w PIXIE_BATCH_MS=$b pixie_config "${2:-10.79.0.0/24}" "${3:-10.79.0.10-10.79.0.250}" > "$W/pixie.toml"
      cmd=(env PIXIE_LOG=warn,pixie::leases::stats=info "$bin" serve --config "$W/pixie.toml") ;;
    dnsmasq)
      cmd=(dnsmasq --no-daemon --conf-file=/dev/null --port=0 --interface=pxdb-s0 --bind-interfaces
           --dhcp-range=10.79.0.10,10.79.0.250,255.255.255.0,12h --dhcp-boot=undionly.kpxe,,10.79.0.1
           --dhcp-leasefile="$W/dnsmasq.leases" --dhcp-lease-max=150000 --no-ping --quiet-dhcp
           --log-facility="$W/dnsmasq.log" --pid-file=) ;;
    kea|kea-mt)
      local mt=false; [ "$1" = kea-mt ] && mt=true
      kea_config $mt > "$W/kea-dhcp4.json"; mkdir -p "$W/run"
      export KEA_LOCKFILE_DIR="$W/run" KEA_PIDFILE_DIR="$W/run"
      cmd=(kea-dhcp4 -c "$W/kea-dhcp4.json") ;;
  esac
  ip netns exec $NS_S "${cmd[@]}" > "$W/$1.out" 2>&1 &
  SPID=$!
  # `ip netns exec` and `env` exec into the server, so $SPID is the server process itself.
  for _ in $(seq 100); do
    ip netns exec $NS_S ss -Hlun 'sport = :67' | grep -q . && break; sleep 0.1
  done
  sleep 0.5
  kill -0 "$SPID" || { echo "$1 died:"; cat "$W/$1.out"; exit 1; }
}

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# One perfdhcp run; appends a TSV row: server rate exch/s drop% do_avg ra_avg ra_max cpu_us rss
run_rate() { # $1 server $2 rate $3 clients $4 tag
  local out="$W/perfdhcp-$4-$2.out" c0 c1 perfpid=""
  if [ -n "$PERFDIR" ]; then
    perf record -q -F "${PERF_FREQ:-1999}" ${PERF_CALLGRAPH:--g} -p "$SPID" -o "$PERFDIR/perf-$4-$2.data" > /dev/null 2>&1 &
    perfpid=$!
    sleep 0.3
  fi
  c0=$(cpu_ticks "$SPID")
  timeout $((PERIOD + 30)) ip netns exec $NS_C perfdhcp -4 -l pxdb-c0 -r "$2" -R "$3" -p "$PERIOD" -W 200000 \
    "${PXEOPTS[@]}" 10.79.0.1 > "$out" 2>&1 || true
  c1=$(cpu_ticks "$SPID")
  if [ -n "$perfpid" ]; then kill -INT "$perfpid" 2>/dev/null || true; wait "$perfpid" 2>/dev/null || true; fi
  awk -v server="$4" -v rate="$2" -v period="$PERIOD" -v cpu=$((c1 - c0)) -v hz="$HZ" -v rss="$(rss_kb "$SPID")" '
    /Statistics for: DISCOVER-OFFER/ {s="do"} /Statistics for: REQUEST-ACK/ {s="ra"}
    /^sent packets:/ {sent[s]=$3} /^received packets:/ {recv[s]=$3}
    /^avg delay: [0-9]/ {avg[s]=$3} /^max delay: [0-9]/ {max[s]=$3}
    END {
      acks = recv["ra"] + 0; disc = sent["do"] + 0
      drop = disc > 0 ? 100 * (1 - acks / disc) : 100
      us = acks > 0 ? cpu * 1e6 / hz / acks : 0
      printf "%s\t%d\t%.0f\t%.2f\t%.3f\t%.3f\t%.1f\t%.0f\t%d\n", server, rate, acks / period, drop, avg["do"], avg["ra"], max["ra"], us, rss
    }' "$out" | tee -a "$W/runs.tsv"
}

printf 'server\trate\texch_s\tdrop_pct\tdo_avg_ms\tra_avg_ms\tra_max_ms\tcpu_us_per_dora\trss_kb\n' > "$W/runs.tsv"
echo "# $(date -u +%FT%TZ) $(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); period ${PERIOD}s, $CLIENTS clients, PXE options"
echo "# pixie policy: $POLICY"
echo "# versions: $("$PIXIE" --version), dnsmasq $(dnsmasq --version | head -1 | awk '{print $3}'), kea $(kea-dhcp4 -v)"
printf 'server\trate\texch_s\tdrop_pct\tdo_avg_ms\tra_avg_ms\tra_max_ms\tcpu_us_per_dora\trss_kb\n'
for rate in $RATES; do
  for _ in $(seq "$REPEATS"); do
    for s in $SERVERS; do
      start_server "$s"
      run_rate "$s" "$rate" "$CLIENTS" "$s"
      stop_server
      # pixie says at exit how many leases each fsync carried.
      case "$s" in pixie*) grep -ho 'lease writer: .*ms)' "$W/$s.out" | sed "s/^/# $s @$rate: /" || true ;; esac
    done
  done
done

if [ "$DO_50K" = 1 ]; then
  # 50,000 leases: a /16 pool, perfdhcp with 60,000 distinct clients until pixie holds >= 50,000
  # leases (at most 6 runs), then RSS, then the ladder again with those leases in place.
  start_server pixie 10.79.0.0/16 10.79.1.0-10.79.255.254
  PERIOD_SAVE=$PERIOD; PERIOD=20
  n=0
  for i in $(seq 6); do
    run_rate pixie 3000 60000 "pixie-fill$i" > /dev/null
    n=$("$PIXIE" leases --state-dir "$W/pixie-state" | tail -1 | awk '{print $1}')
    [ "$n" -ge 50000 ] && break
  done
  PERIOD=$PERIOD_SAVE
  echo "# pixie: $n leases stored, RSS $(rss_kb "$SPID") KiB, $(du -k "$W/pixie-state" | tail -1 | cut -f1) KiB on disk"
  for rate in $RATES; do run_rate pixie "$rate" "$CLIENTS" pixie-50k; done
  stop_server
fi

if [ "$DO_POLICY" = 1 ]; then
  echo "# policy cost per request (benches/policy.rs, scripts/boot.rhai):"
  (cd "$REPO" && cargo bench --bench policy 2>/dev/null | grep -E '^policy') || echo "# (cargo bench --bench policy failed)"
fi

echo "# summary (from $W/runs.tsv): medians over repeats; ratios are pixie / peer in this run"
python3 - "$W/runs.tsv" <<'PY'
import csv, statistics, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]), delimiter="\t") if "fill" not in r["server"]]
cells = {}
for r in rows:
    cells.setdefault((r["server"], int(r["rate"])), []).append(r)
med = lambda k, f: statistics.median(float(r[f]) for r in cells[k])
servers = sorted({s for s, _ in cells})
rates = sorted({r for _, r in cells})
print("server\trate\truns\tcpu_us_per_dora\tra_avg_ms\tdrop_pct")
for s in servers:
    for r in rates:
        if (s, r) in cells:
            print(f"{s}\t{r}\t{len(cells[s, r])}\t{med((s, r), 'cpu_us_per_dora'):.0f}\t{med((s, r), 'ra_avg_ms'):.2f}\t{med((s, r), 'drop_pct'):.2f}")
def sustained(s):
    # The highest rate that, like every lower rate, had median drops under 1 %.
    best = 0
    for r in rates:
        if (s, r) not in cells or med((s, r), "drop_pct") >= 1:
            break
        best = r
    return best
print("highest sustained rate (median drops < 1 % at it and every lower rate): "
      + ", ".join(f"{s} {sustained(s)}/s" for s in servers))
for peer in ("kea", "kea-mt", "dnsmasq"):
    for r in rates:
        if ("pixie", r) in cells and (peer, r) in cells:
            c = med(("pixie", r), "cpu_us_per_dora") / med((peer, r), "cpu_us_per_dora")
            l = med(("pixie", r), "ra_avg_ms") / max(med((peer, r), "ra_avg_ms"), 1e-9)
            print(f"pixie/{peer} @{r}/s: CPU per DORA {c:.2f}x, ACK latency {l:.2f}x")
PY
[ -n "$OUT" ] && cp "$W/runs.tsv" "$OUT"
exit 0
