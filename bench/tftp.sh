#!/usr/bin/env bash
# bench/tftp.sh - pixie's TFTP server against tftpd-hpa, dnsmasq and async-tftp, in ONE run, on
# the same box, over loopback inside a private network namespace that this script creates and
# deletes. Prints a table (with ratios against tftpd-hpa); never asserts timings.
#
# Usage (as root, from the repository root):
#   bench/tftp.sh [--servers "pixie tftpd-hpa dnsmasq async-tftp"] [--size-mib 64] [--repeats 1]
#                 [--parallel 20] [--small-n 200] [--out DIR] [--bin PATH] [--quick]
#   bench/tftp.sh --ab N [--servers "pixie tftpd-hpa dnsmasq"] [--old-bin PATH] [--tests "T ..."]
#   bench/tftp.sh --turnaround N [--servers "pixie tftpd-hpa dnsmasq"] [--old-bin PATH]
#
# --ab N: interleaved lock-step runs instead of the table above. All servers run at once on
# their own ports (dnsmasq on 69) and every test goes to each server in turn, N rounds
# (A/B/A/B), so that load changes on a shared box hit every server alike. Tests: curl at
# blksize 512 (8 MiB), 1468 (32 MiB), 8192 and 65464 (64 MiB), tftp-hpa (8 MiB), and 20
# parallel curls at 1468 (20 x 32 MiB, aggregate), and small (--small-n sequential 4 KiB
# downloads by one curl process, requests/s). Prints medians, all runs, and ratios to
# tftpd-hpa. --old-bin adds a second pixie build as server "pixie-old". --tests runs only
# some of them (names as in the table: curl-512 curl-1468 curl-8192 curl-65464 tftp-hpa
# parallel20 small). The order of the servers rotates by one every round; a second table gives the
# median over rounds of each round's own ratio (less sensitive to load changing between rounds).
#
# --turnaround N: splits a lock-step round trip into the server's and the client's part, from a
# tcpdump capture of curl at blksize 512 (needs tcpdump); see the comment at that code.
#
# Needs: curl, tftp (tftp-hpa), atftp, in.tftpd (tftpd-hpa), dnsmasq, ip (iproute2), python3.
#   apt-get install -y tftpd-hpa tftp-hpa atftp dnsmasq-base curl   (policy-rc.d keeps services off)
# pixie and async-tftp run from benches/tftp_serve.rs, built here with `cargo bench --no-run`
# (release profile) unless --bin is given.
#
# What is measured (MB = 10^6 bytes), per server:
#   curl-B        one curl download of the big file at blksize B (512 1468 8192 65464)
#   tftp-hpa      one tftp-hpa client download (no options: 512-byte lock-step)
#   atftp-wsW     one atftp download at blksize 1468 with windowsize W (1 16 64)
#   parallelN     N curl downloads at 1468 started together: aggregate MB/s, server CPU seconds
#   small         N sequential 4 KiB downloads by one curl process (curl -K): requests/s
#   rss-idle      server RSS (summed over its processes) after start
#   rss-load      highest RSS sampled every 0.2 s during the parallel run
# Server CPU comes from a cgroup-v1 cpuacct group per server (tftpd-hpa forks per transfer).
# Every client runs under `timeout`; every loop has a fixed count.
set -euo pipefail

SERVERS="pixie tftpd-hpa dnsmasq async-tftp"
SIZE_MIB=64
REPEATS=1
PARALLEL=20
SMALL_N=200
OUT=""
BIN=""
BLKSIZES="512 1468 8192 65464"
WINDOWS="1 16 64"
AB=0
TURN=0
OLDBIN=""
AB_TESTS="curl-512 curl-1468 curl-8192 curl-65464 tftp-hpa parallel20 small"

usage() { sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

ARGS=("$@")
INSIDE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --servers) SERVERS="$2"; shift 2 ;;
    --size-mib) SIZE_MIB="$2"; shift 2 ;;
    --repeats) REPEATS="$2"; shift 2 ;;
    --parallel) PARALLEL="$2"; shift 2 ;;
    --small-n) SMALL_N="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    --quick) SIZE_MIB=16; PARALLEL=8; SMALL_N=100; shift ;;
    --ab) AB="$2"; shift 2 ;;
    --turnaround) TURN="$2"; shift 2 ;;
    --old-bin) OLDBIN="$2"; shift 2 ;;
    --tests) AB_TESTS="$2"; shift 2 ;;
    --inside) INSIDE=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done

# ---------------------------------------------------------------------------------------------
# Outside: build, create the namespace, re-run this script inside it, clean up.
# ---------------------------------------------------------------------------------------------
if [ "$INSIDE" = 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "run as root (it creates a network namespace)" >&2; exit 2; }
  for b in curl tftp atftp in.tftpd dnsmasq ip python3; do
    command -v "$b" >/dev/null || echo "warning: $b not found; its rows will be missing" >&2
  done
  HERE=$(cd "$(dirname "$0")/.." && pwd)
  if [ -z "$BIN" ]; then
    echo "building benches/tftp_serve.rs (release) ..." >&2
    BIN=$(cd "$HERE" && cargo bench --no-run --bench tftp_serve --message-format=json 2>/dev/null |
      python3 -c 'import sys,json
for l in sys.stdin:
    try: m=json.loads(l)
    except Exception: continue
    if m.get("reason")=="compiler-artifact" and m.get("executable") and "tftp_serve" in m["executable"]: print(m["executable"])' | tail -1)
  fi
  [ -x "$BIN" ] || { echo "bench server binary not found (try --bin PATH)" >&2; exit 2; }
  [ -n "$OUT" ] || OUT=$(mktemp -d /tmp/pixie-tftp-bench.XXXXXX)
  mkdir -p "$OUT"; chmod 755 "$OUT"
  NS="pxtftp-$$"
  cleanup() {
    set +e
    # Only processes inside our own namespace: everything there was started by this script.
    for p in $(ip netns pids "$NS" 2>/dev/null); do kill "$p" 2>/dev/null; done
    sleep 0.3
    for p in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    ip netns del "$NS" 2>/dev/null
    for g in /sys/fs/cgroup/cpuacct/pxtftp-$$-*; do [ -d "$g" ] && rmdir "$g" 2>/dev/null; done
  }
  trap cleanup EXIT INT TERM HUP
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  # A non-loopback address inside the namespace, only so that glibc's getaddrinfo(AI_ADDRCONFIG)
  # accepts 127.0.0.1 (tftpd-hpa -a fails without one). Both veth ends stay inside.
  ip link add pxtftp0 netns "$NS" type veth peer name pxtftp1 netns "$NS"
  ip -n "$NS" addr add 10.79.0.1/32 dev pxtftp0
  ip -n "$NS" link set pxtftp0 up
  ip -n "$NS" link set pxtftp1 up
  echo "namespace $NS, results in $OUT" >&2
  # nsenter --net, not `ip netns exec`: the latter remounts /sys, hiding the cgroup tree that
  # measures server CPU and memory.
  nsenter --net="/run/netns/$NS" env PXT_BIN="$BIN" PXT_OLDBIN="$OLDBIN" PXT_OUT="$OUT" PXT_CG_PREFIX="pxtftp-$$" \
    bash "$0" "${ARGS[@]}" --inside
  exit $?
fi

# ---------------------------------------------------------------------------------------------
# Inside the namespace.
# ---------------------------------------------------------------------------------------------
BIN="$PXT_BIN"; OUT="$PXT_OUT"
ROOT="$OUT/root"
mkdir -p "$ROOT"; chmod 755 "$ROOT"
SIZE=$((SIZE_MIB * 1024 * 1024))
if [ ! -f "$ROOT/big.bin" ] || [ "$(stat -c %s "$ROOT/big.bin")" != "$SIZE" ]; then
  head -c "$SIZE" /dev/urandom > "$ROOT/big.bin"
fi
[ -f "$ROOT/small.bin" ] || head -c 4096 /dev/urandom > "$ROOT/small.bin"
chmod 644 "$ROOT"/*.bin
cat "$ROOT/big.bin" > /dev/null   # page cache

# All servers at once, each on its own port (dnsmasq on 69); PIDs in AB_PIDS.
declare -A PORT=([pixie]=6901 [pixie-old]=6902 [tftpd-hpa]=6903 [async-tftp]=6904 [dnsmasq]=69)
start_all() {
  AB_PIDS=()
  for s in $SERVERS; do
    case "$s" in
      pixie) "$BIN" pixie "$ROOT" 127.0.0.1:6901 > "$OUT/$s.log" 2>&1 & ;;
      pixie-old) "$PXT_OLDBIN" pixie "$ROOT" 127.0.0.1:6902 > "$OUT/$s.log" 2>&1 & ;;
      tftpd-hpa) in.tftpd -L -s "$ROOT" -a 127.0.0.1:6903 > "$OUT/$s.log" 2>&1 & ;;
      async-tftp) "$BIN" async-tftp "$ROOT" 127.0.0.1:6904 > "$OUT/$s.log" 2>&1 & ;;
      dnsmasq) dnsmasq --no-daemon --conf-file=/dev/null --port=0 --listen-address=127.0.0.1 \
                 --bind-interfaces --enable-tftp --tftp-root="$ROOT" --quiet-tftp --pid-file= \
                 --log-facility="$OUT/$s.dnsmasq.log" > "$OUT/$s.log" 2>&1 & ;;
      *) echo "unknown server $s" >&2; exit 2 ;;
    esac
    AB_PIDS+=($!)
  done
  sleep 1
}

# --turnaround N: where a lock-step block's round trip goes. For each server in turn, N rounds,
# tcpdump on lo records one curl download (8 MiB at blksize 512); from the capture: server
# turnaround = ACK n on the wire -> DATA n+1 on the wire (loopback delivery, waking the server,
# its work, its send), client turnaround = DATA n -> ACK n. Medians and 90th percentiles in
# microseconds, per server, over every block of every round.
if [ "$TURN" -gt 0 ]; then
  [ "$SERVERS" = "pixie tftpd-hpa dnsmasq async-tftp" ] && SERVERS="pixie tftpd-hpa dnsmasq"
  [ -n "$PXT_OLDBIN" ] && SERVERS="$SERVERS pixie-old"
  command -v tcpdump > /dev/null || { echo "--turnaround needs tcpdump" >&2; exit 2; }
  head -c $((8 * 1024 * 1024)) "$ROOT/big.bin" > "$ROOT/ab8.bin"; chmod 644 "$ROOT/ab8.bin"
  start_all
  echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), --turnaround $TURN" >&2
  read -r -a SERVER_LIST <<< "$SERVERS"
  NSERV=${#SERVER_LIST[@]}
  : > "$OUT/turn.tsv"
  for r in $(seq "$TURN"); do
    ORDER=("${SERVER_LIST[@]:$(( (r - 1) % NSERV ))}" "${SERVER_LIST[@]:0:$(( (r - 1) % NSERV ))}")
    for s in "${ORDER[@]}"; do
      p=${PORT[$s]}
      cap="$OUT/turn-$s-$r.pcap"
      timeout 200 tcpdump -i lo -s 64 -B 65536 -U -w "$cap" udp > "$OUT/tcpdump.log" 2>&1 &
      tpid=$!
      sleep 0.5
      a=$(date +%s.%N)
      timeout 120 curl -s --tftp-blksize 512 -o /dev/null "tftp://127.0.0.1:$p/ab8.bin" || echo "$s: curl failed" >&2
      b=$(date +%s.%N)
      sleep 0.2; kill -INT "$tpid" 2>/dev/null; wait "$tpid" 2>/dev/null || true
      printf '%s\t%s\t%s\t%s\n' "$r" "$s" "$cap" "$(python3 -c "print(f'{8*1024*1024/($b-$a)/1e6:.1f}')")" | tee -a "$OUT/turn.tsv" >&2
    done
  done
  for p in "${AB_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  echo "# load at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  python3 "$(dirname "$0")/turnaround.py" "$OUT/turn.tsv" "$SERVERS"
  exit 0
fi

# --ab: interleaved lock-step rounds, all servers up at once.
if [ "$AB" -gt 0 ]; then
  [ "$SERVERS" = "pixie tftpd-hpa dnsmasq async-tftp" ] && SERVERS="pixie tftpd-hpa dnsmasq"
  [ -n "$PXT_OLDBIN" ] && SERVERS="$SERVERS pixie-old"
  AB_SIZE=$((64 * 1024 * 1024))
  [ "$(stat -c %s "$ROOT/big.bin")" -ge "$AB_SIZE" ] || { echo "--ab needs --size-mib 64 or more" >&2; exit 2; }
  head -c $((8 * 1024 * 1024)) "$ROOT/big.bin" > "$ROOT/ab8.bin"
  head -c $((32 * 1024 * 1024)) "$ROOT/big.bin" > "$ROOT/ab32.bin"
  head -c "$AB_SIZE" "$ROOT/big.bin" > "$ROOT/ab64.bin"
  chmod 644 "$ROOT"/ab*.bin
  [ -f "$ROOT/small.bin" ] || head -c 4096 /dev/urandom > "$ROOT/small.bin"
  chmod 644 "$ROOT/small.bin"
  for s in $SERVERS; do
    : > "$OUT/small-$s.curlrc"
    for _ in $(seq "$SMALL_N"); do
      printf 'url = "tftp://127.0.0.1:%s/small.bin"\noutput = "/dev/null"\n' "${PORT[$s]}" >> "$OUT/small-$s.curlrc"
    done
  done
  start_all
  RES="$OUT/results-ab.tsv"
  : > "$RES"
  echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), --ab $AB" | tee "$OUT/header.txt" >&2
  read -r -a SERVER_LIST <<< "$SERVERS"
  NSERV=${#SERVER_LIST[@]}
  for r in $(seq "$AB"); do
    # Rotate the order every round, so that no server always runs right after another one.
    ORDER=("${SERVER_LIST[@]:$(( (r - 1) % NSERV ))}" "${SERVER_LIST[@]:0:$(( (r - 1) % NSERV ))}")
    for t in $AB_TESTS; do
      for s in "${ORDER[@]}"; do
        p=${PORT[$s]}
        case $t in
          curl-512) f=ab8.bin; cmd=(curl -s --tftp-blksize 512 -o /dev/null "tftp://127.0.0.1:$p/$f") ;;
          curl-1468) f=ab32.bin; cmd=(curl -s --tftp-blksize 1468 -o /dev/null "tftp://127.0.0.1:$p/$f") ;;
          curl-8192) f=ab64.bin; cmd=(curl -s --tftp-blksize 8192 -o /dev/null "tftp://127.0.0.1:$p/$f") ;;
          curl-65464) f=ab64.bin; cmd=(curl -s --tftp-blksize 65464 -o /dev/null "tftp://127.0.0.1:$p/$f") ;;
          tftp-hpa) f=ab8.bin; cmd=(tftp -m binary 127.0.0.1 "$p" -c get "$f" /dev/null) ;;
          parallel20) f=ab32.bin
            cmd=(bash -c 'pids=(); for i in $(seq 20); do timeout 280 curl -s --tftp-blksize 1468 -o /dev/null "$0" & pids+=($!); done
                          ok=0; for x in "${pids[@]}"; do wait "$x" || ok=1; done; exit $ok' "tftp://127.0.0.1:$p/$f") ;;
          small) f=small.bin; cmd=(curl -s -K "$OUT/small-$s.curlrc") ;;
          *) echo "unknown test $t" >&2; exit 2 ;;
        esac
        sz=$(stat -c %s "$ROOT/$f"); [ "$t" = parallel20 ] && sz=$((sz * 20))
        a=$(date +%s.%N); timeout 300 "${cmd[@]}" > /dev/null 2>&1; rc=$?; b=$(date +%s.%N)
        if [ "$t" = small ]; then
          v=$(python3 -c "print(f'{$SMALL_N/($b-$a):.0f}' if $rc==0 else 'nan')")
        else
          v=$(python3 -c "print(f'{$sz/($b-$a)/1e6:.1f}' if $rc==0 else 'nan')")
        fi
        printf '%s\t%s\t%s\t%s\n' "$r" "$t" "$s" "$v" | tee -a "$RES" >&2
      done
    done
  done
  for p in "${AB_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  echo "# load at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/header.txt" >&2
  python3 - "$RES" "$SERVERS" <<'EOF'
import sys, statistics, collections
d = collections.defaultdict(list)
per_round = collections.defaultdict(dict)
tests = []
for line in open(sys.argv[1]):
    r, t, s, v = line.rstrip("\n").split("\t")
    if t not in tests:
        tests.append(t)
    if v != "nan":
        d[(t, s)].append(float(v))
        per_round[(t, int(r))][s] = float(v)
servers = sys.argv[2].split()
others = [s for s in servers if s != "tftpd-hpa"]
print("| test (MB/s; small: requests/s) | " + " | ".join(servers) + " | " + " | ".join(f"{s}/tftpd-hpa" for s in others) + " |")
print("|" + "---|" * (1 + len(servers) + len(others)))
for t in tests:
    med = {s: statistics.median(d[(t, s)]) if d[(t, s)] else float("nan") for s in servers}
    cells = [f"{med[s]:.1f} [{' '.join(f'{x:.0f}' for x in d[(t, s)])}]" for s in servers]
    ratios = [f"{med[s] / med['tftpd-hpa']:.2f}x" if "tftpd-hpa" in med else "-" for s in others]
    print(f"| {t} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
pairs = [(a, "tftpd-hpa") for a in others if "tftpd-hpa" in servers]
if "pixie" in servers and "pixie-old" in servers:
    pairs.append(("pixie", "pixie-old"))
if pairs:
    print()
    print("| test: median of per-round ratios | " + " | ".join(f"{a}/{b}" for a, b in pairs) + " |")
    print("|" + "---|" * (1 + len(pairs)))
    for t in tests:
        cells = []
        for a, b in pairs:
            rs = [v[a] / v[b] for (tt, _), v in sorted(per_round.items()) if tt == t and a in v and b in v and v[b] > 0]
            cells.append(f"{statistics.median(rs):.2f}x [{' '.join(f'{x:.2f}' for x in rs)}]" if rs else "-")
        print(f"| {t} | " + " | ".join(cells) + " |")
EOF
  exit 0
fi
RES="$OUT/results.tsv"
: > "$RES"
SMALLCFG="$OUT/small.curlrc"
: > "$SMALLCFG"
for _ in $(seq "$SMALL_N"); do
  printf 'url = "tftp://127.0.0.1/small.bin"\noutput = "/dev/null"\n' >> "$SMALLCFG"
done

SPID=""; CG=""
now() { date +%s.%N; }
fdiv() { python3 -c "import sys; a,b=map(float,sys.argv[1:3]); print(f'{a/b:.{int(sys.argv[3])}f}' if b>0 else 'nan')" "$@"; }
median() { python3 -c "import sys,statistics; v=[float(x) for x in sys.argv[1:] if x not in ('','nan')]; print(f'{statistics.median(v):.3f}' if v else 'nan')" "$@"; }
cpu_ns() { if [ -n "$CG" ]; then cat "$CG/cpuacct.usage"; else echo 0; fi; }
mem_kb() {
  local r=0 x
  for x in $(cat "$CG/cgroup.procs" 2>/dev/null); do
    r=$((r + $(awk '/^VmRSS/{print $2}' "/proc/$x/status" 2>/dev/null || echo 0)))
  done
  echo "$r"
}
row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" | tee -a "$RES" >&2; }

start_server() {
  local s="$1"
  case "$s" in
    pixie) "$BIN" pixie "$ROOT" 127.0.0.1:69 > "$OUT/$s.log" 2>&1 & ;;
    pixie-ct) "$BIN" pixie "$ROOT" 127.0.0.1:69 --current-thread > "$OUT/$s.log" 2>&1 & ;;
    async-tftp) "$BIN" async-tftp "$ROOT" 127.0.0.1:69 > "$OUT/$s.log" 2>&1 & ;;
    tftpd-hpa) in.tftpd -L -s "$ROOT" -a 127.0.0.1:69 > "$OUT/$s.log" 2>&1 & ;;
    dnsmasq) dnsmasq --no-daemon --conf-file=/dev/null --port=0 --listen-address=127.0.0.1 \
               --bind-interfaces --enable-tftp --tftp-root="$ROOT" --quiet-tftp --pid-file= \
               --log-facility="$OUT/$s.dnsmasq.log" > "$OUT/$s.log" 2>&1 & ;;
    *) echo "unknown server $s" >&2; return 1 ;;
  esac
  SPID=$!
  CG=""
  if [ -d /sys/fs/cgroup/cpuacct ]; then
    CG="/sys/fs/cgroup/cpuacct/$PXT_CG_PREFIX-$s"
    mkdir -p "$CG" && echo "$SPID" > "$CG/cgroup.procs" || CG=""
  fi
  local i
  for i in $(seq 50); do
    if timeout 2 curl -s --max-time 1 -o /dev/null tftp://127.0.0.1/small.bin; then return 0; fi
    kill -0 "$SPID" 2>/dev/null || { echo "$s exited: $(tail -3 "$OUT/$s.log")" >&2; return 1; }
    sleep 0.1
  done
  echo "$s not ready after 50 tries" >&2
  return 1
}

stop_server() {
  local x
  for x in $(cat "$CG/cgroup.procs" 2>/dev/null) "$SPID"; do kill "$x" 2>/dev/null || true; done
  wait "$SPID" 2>/dev/null || true
  sleep 0.2
  for x in $(cat "$CG/cgroup.procs" 2>/dev/null); do kill -9 "$x" 2>/dev/null || true; done
  [ -n "$CG" ] && rmdir "$CG" 2>/dev/null || true
}

# One timed command; prints seconds or "nan".
timed() {
  local s e
  s=$(now)
  if timeout 300 "$@" > /dev/null 2>&1; then e=$(now); python3 -c "print(f'{$e-$s:.4f}')"; else echo nan; fi
}

bench_server() {
  local s="$1" v vals cvals t c0 c1 b w i
  start_server "$s" || { row "$s" start failed -; return; }
  sleep 0.3
  row "$s" rss-idle "$(mem_kb)" KiB
  # Integrity, once: byte-identical at 1468.
  rm -f "$OUT/check.bin"
  timeout 120 curl -s --tftp-blksize 1468 -o "$OUT/check.bin" tftp://127.0.0.1/big.bin || true
  if cmp -s "$OUT/check.bin" "$ROOT/big.bin"; then row "$s" integrity ok -; else row "$s" integrity MISMATCH -; fi
  rm -f "$OUT/check.bin"
  for b in $BLKSIZES; do
    vals=""; cvals=""
    for i in $(seq "$REPEATS"); do
      c0=$(cpu_ns)
      t=$(timed curl -s --tftp-blksize "$b" -o /dev/null tftp://127.0.0.1/big.bin)
      c1=$(cpu_ns)
      vals="$vals $(fdiv "$SIZE" "$(python3 -c "print($t*1e6 if '$t'!='nan' else 0)")" 1)"
      cvals="$cvals $(fdiv "$((c1 - c0))" 1e9 3)"
    done
    row "$s" "curl-$b" "$(median $vals)" MB/s
    row "$s" "curl-$b-cpu" "$(median $cvals)" s
  done
  vals=""
  for i in $(seq "$REPEATS"); do
    t=$(timed tftp -m binary 127.0.0.1 69 -c get big.bin /dev/null)
    vals="$vals $(fdiv "$SIZE" "$(python3 -c "print($t*1e6 if '$t'!='nan' else 0)")" 1)"
  done
  row "$s" tftp-hpa "$(median $vals)" MB/s
  for w in $WINDOWS; do
    vals=""
    for i in $(seq "$REPEATS"); do
      t=$(timed atftp --option "blksize 1468" --option "windowsize $w" --get -r big.bin -l /dev/null 127.0.0.1 69)
      vals="$vals $(fdiv "$SIZE" "$(python3 -c "print($t*1e6 if '$t'!='nan' else 0)")" 1)"
    done
    row "$s" "atftp-ws$w" "$(median $vals)" MB/s
  done
  # Parallel downloads, with a bounded memory sampler.
  : > "$OUT/mem.samples"
  ( for _ in $(seq 3000); do [ -f "$OUT/mem.stop" ] && break; mem_kb >> "$OUT/mem.samples"; sleep 0.2; done ) &
  local sampler=$! pids=() ok=0 st
  rm -f "$OUT/mem.stop"
  c0=$(cpu_ns); st=$(now)
  for i in $(seq "$PARALLEL"); do
    timeout 300 curl -s --tftp-blksize 1468 -o /dev/null tftp://127.0.0.1/big.bin & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" && ok=$((ok + 1)) || true; done
  t=$(python3 -c "print($(now)-$st)"); c1=$(cpu_ns)
  touch "$OUT/mem.stop"; wait "$sampler" 2>/dev/null || true; rm -f "$OUT/mem.stop"
  row "$s" "parallel$PARALLEL" "$(fdiv "$((SIZE * ok))" "$(python3 -c "print($t*1e6)")" 1)" "MB/s(ok=$ok/$PARALLEL)"
  row "$s" "parallel$PARALLEL-cpu" "$(fdiv "$((c1 - c0))" 1e9 2)" "s"
  row "$s" rss-load "$(sort -n "$OUT/mem.samples" | tail -1)" KiB
  vals=""; cvals=""
  for i in $(seq "$REPEATS"); do
    c0=$(cpu_ns)
    t=$(timed curl -s -K "$SMALLCFG")
    c1=$(cpu_ns)
    vals="$vals $(fdiv "$SMALL_N" "$t" 0)"
    cvals="$cvals $(fdiv "$((c1 - c0))" "$((SMALL_N * 1000))" 1)"
  done
  row "$s" small "$(median $vals)" req/s
  row "$s" small-cpu "$(median $cvals)" "us/req"
  stop_server
}

echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), file ${SIZE_MIB} MiB, repeats $REPEATS" | tee "$OUT/header.txt" >&2
for s in $SERVERS; do
  echo "== $s" >&2
  bench_server "$s"
done

python3 - "$RES" "$SERVERS" <<'EOF'
import sys, collections
res, servers = sys.argv[1], sys.argv[2].split()
data = collections.OrderedDict()
units = {}
for line in open(res):
    s, test, val, unit = line.rstrip("\n").split("\t")
    data.setdefault(test, {})[s] = val
    units.setdefault(test, unit.split("(")[0])
base = "tftpd-hpa"
lower_is_better = ("rss", "cpu")
hdr = ["test", "unit"] + servers + ([f"pixie/{base}"] if "pixie" in servers and base in servers else [])
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
for test, vals in data.items():
    if test == "start":
        continue
    row = [test, units[test]] + [vals.get(s, "-") for s in servers]
    if "pixie" in servers and base in servers:
        try:
            p, b = float(vals["pixie"]), float(vals[base])
            r = p / b
            better = r < 1 if any(k in test for k in lower_is_better) else r > 1
            row.append(f"{r:.2f}x" + (" (better)" if better else ""))
        except Exception:
            row.append("-")
    print("| " + " | ".join(row) + " |")
EOF
