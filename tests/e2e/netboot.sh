#!/usr/bin/env bash
# pixie end-to-end harness: boot a real PXE client (QEMU + SeaBIOS/iPXE or
# OVMF) against a server command, inside private network namespaces.
#
# Nothing here touches the host's interfaces: every socket, tap, bridge and
# process that sends lives in the namespaces created below, which are deleted
# on every exit path.  Run as root.  See `netboot.sh --help`.
set -u -o pipefail

ME=${0##*/}

usage() {
    cat <<'EOF'
Usage: netboot.sh [options] -- SERVER-COMMAND [ARG...]

Creates netns pixie-e2e-<pid> with bridge e2e-br0 (10.77.0.1/24) and tap
e2e-tap0, plus netns pixie-e2e-<pid>-aux on a veth into that bridge running a
plain DHCP server (dnsmasq, DHCP only, pool 10.77.0.100-150, no PXE options),
standing in for the network's existing DHCP server.  Starts SERVER-COMMAND in
the main netns (own process group, output to WORKDIR/server.log), waits until
UDP 67, 4011 and 69 are bound there, boots QEMU (TCG) with its only NIC on the
bridge, and waits for MARKER on the VM's serial port.

Options:
  --firmware bios|uefi   bios: SeaBIOS + the NIC's iPXE option ROM (default).
                         uefi: OVMF.  With --nic virtio-net-pci --nic-rom none
                         the client is OVMF's own PXE; with the NIC's default
                         ROM it is iPXE's EFI driver.
  --nic MODEL            QEMU NIC model (default e1000).
  --nic-rom default|none|PATH
                         Option ROM of the NIC (none = romfile=).
  --marker STRING        String to wait for on serial (default PIXIE-NBP-OK).
  --timeout SEC          Give up after SEC seconds from QEMU start (default 120).
  --fail-marker STRING   FAIL as soon as STRING shows on serial (repeatable;
                         'none' = no fail markers).  Default: the firmware
                         giving up on network boot -- bios: 'No more network
                         devices', 'No bootable device'; uefi: 'BdsDxe: failed
                         to load' (a boot option failed or returned).
  --pcap FILE            Capture the bridge with tcpdump for the whole run.
  --pcap-filter EXPR     Capture filter (default 'udp or arp').
  --workdir DIR          Keep logs here (default: mktemp, removed on PASS).
  --mac MAC              Client MAC (default 52:54:00:77:00:10).
  --uuid UUID            SMBIOS UUID (QEMU -uuid, DHCP option 97).
  --ready-port PORT      UDP port that must be bound before QEMU starts;
                         repeatable (default: 67, 4011 and 69).  'none' = no wait.
  --ready-timeout SEC    Readiness wait (default 20).
  --no-aux               Do not run the plain DHCP server.
  --no-ra                Do not send IPv6 router advertisements (by default an
                         RA-only dnsmasq runs so iPXE does not wait ~13 s for
                         IPv6; it binds no UDP port).
  --uefi-ipv6            Keep OVMF's IPv6 network stack (default: disabled via
                         fw_cfg opt/org.tianocore/IPv6Support=no, so OVMF goes
                         straight to PXEv4 and never tries PXEv6/HTTPv6).
  --memory MB            Guest RAM (default 256).
  --qemu-arg ARG         Extra QEMU argument (repeatable).
  --tail N               Lines of serial/server log to print (default 30).
  -h, --help             This text.

Environment of SERVER-COMMAND:
  PIXIE_E2E_NETNS PIXIE_E2E_IFACE PIXIE_E2E_SERVER_IP PIXIE_E2E_PREFIX_LEN
  PIXIE_E2E_SUBNET PIXIE_E2E_CLIENT_MAC PIXIE_E2E_FIRMWARE PIXIE_E2E_WORKDIR
  PIXIE_E2E_DHCP_IP (address of the plain DHCP server, unless --no-aux)

Exit status: 0 PASS, 1 FAIL, 2 usage/setup error.
EOF
}

say() { echo "[$ME] $*" >&2; }
setup_error() { echo "$ME: setup error: $*" >&2; exit 2; }

# ---- options ----------------------------------------------------------------
FIRMWARE=bios NIC=e1000 NIC_ROM=default MARKER=PIXIE-NBP-OK TIMEOUT=120
PCAP='' PCAP_FILTER='udp or arp' WORKDIR='' MAC=52:54:00:77:00:10 UUID=''
FAIL_MARKERS=() READY=() READY_TIMEOUT=20 AUX=1 RA=1 UEFI_IPV6=0 MEMORY=256 QEMU_EXTRA=() TAIL=30

while [ $# -gt 0 ]; do
    opt=$1
    case $opt in
        --firmware|--nic|--nic-rom|--marker|--timeout|--pcap|--pcap-filter|--workdir|\
        --mac|--uuid|--ready-port|--ready-timeout|--memory|--qemu-arg|--tail|--fail-marker)
            [ $# -ge 2 ] || setup_error "$opt needs a value"
            val=$2; shift 2
            case $opt in
                --firmware) FIRMWARE=$val ;;
                --nic) NIC=$val ;;
                --nic-rom) NIC_ROM=$val ;;
                --marker) MARKER=$val ;;
                --timeout) TIMEOUT=$val ;;
                --pcap) PCAP=$val ;;
                --pcap-filter) PCAP_FILTER=$val ;;
                --workdir) WORKDIR=$val ;;
                --mac) MAC=$val ;;
                --uuid) UUID=$val ;;
                --ready-port) READY+=("$val") ;;
                --ready-timeout) READY_TIMEOUT=$val ;;
                --memory) MEMORY=$val ;;
                --qemu-arg) QEMU_EXTRA+=("$val") ;;
                --tail) TAIL=$val ;;
                --fail-marker) FAIL_MARKERS+=("$val") ;;
            esac ;;
        --no-aux) AUX=0; shift ;;
        --no-ra) RA=0; shift ;;
        --uefi-ipv6) UEFI_IPV6=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        *) setup_error "unknown option '$opt' (server command goes after --)" ;;
    esac
done
[ $# -gt 0 ] || setup_error "no server command (put it after --)"
SERVER_CMD=("$@")

case $FIRMWARE in bios|uefi) ;; *) setup_error "--firmware must be bios or uefi" ;; esac
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || setup_error "--timeout must be a positive integer"
[[ $READY_TIMEOUT =~ ^[1-9][0-9]*$ ]] || setup_error "--ready-timeout must be a positive integer"
[[ $MAC =~ ^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$ ]] || setup_error "bad --mac '$MAC'"
[ -n "$MARKER" ] || setup_error "--marker must not be empty"
[ ${#READY[@]} -gt 0 ] || READY=(67 4011 69)
if [ ${#FAIL_MARKERS[@]} -eq 0 ]; then
    case $FIRMWARE in
        bios) FAIL_MARKERS=('No more network devices' 'No bootable device') ;;
        uefi) FAIL_MARKERS=('BdsDxe: failed to load') ;;
    esac
fi
for p in "${READY[@]}"; do
    [[ $p =~ ^(none|[0-9]+)$ ]] || setup_error "bad --ready-port '$p'"
done
[ "$(id -u)" = 0 ] || setup_error "must run as root (netns, tap)"
for tool in ip ss setsid qemu-system-x86_64 timeout; do
    command -v "$tool" >/dev/null || setup_error "missing $tool"
done
if [ "$AUX" = 1 ] || [ "$RA" = 1 ]; then
    command -v dnsmasq >/dev/null || setup_error "missing dnsmasq (apt-get install dnsmasq-base)"
fi
[ -z "$PCAP" ] || command -v tcpdump >/dev/null || setup_error "--pcap needs tcpdump"
OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
if [ "$FIRMWARE" = uefi ]; then
    [ -r "$OVMF_CODE" ] && [ -r "$OVMF_VARS" ] || setup_error "OVMF missing (apt-get install ovmf)"
fi

# ---- names and addresses (all private to our namespaces) ---------------------
NS=pixie-e2e-$$ NS_AUX=pixie-e2e-$$-aux
BR=e2e-br0 TAP=e2e-tap0 VETH=e2e-aux0 VETH_PEER=e2e-aux1
SERVER_IP=10.77.0.1 DHCP_IP=10.77.0.2 PREFIX_LEN=24 SERVER_IP6=fd77::1

KEEP_WORKDIR=1
if [ -z "$WORKDIR" ]; then
    WORKDIR=$(mktemp -d /tmp/pixie-e2e.XXXXXX) || setup_error "mktemp failed"
    KEEP_WORKDIR=0
fi
mkdir -p "$WORKDIR" || setup_error "cannot create $WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
SERIAL=$WORKDIR/serial.log SERVER_LOG=$WORKDIR/server.log QEMU_LOG=$WORKDIR/qemu.log
: >"$SERIAL"; : >"$SERVER_LOG"; : >"$QEMU_LOG"

QEMU_PID='' SERVER_PID='' AUX_PID='' RA_PID='' CAP_PID='' OUTCOME=FAIL

# ---- teardown ------------------------------------------------------------------
# stop PID [group]: SIGTERM, up to 5 s grace, then SIGKILL.  Only PIDs we started.
stop() {
    local pid=$1 target=$1 i
    [ -n "$pid" ] || return 0
    [ "${2:-}" = group ] && target=-$pid
    kill -TERM -- "$target" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    for i in $(seq 50); do
        kill -0 -- "$target" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "$target" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

teardown() {
    trap - EXIT INT TERM HUP
    stop "$QEMU_PID" group
    stop "$SERVER_PID" group
    stop "$AUX_PID" group
    stop "$RA_PID" group
    # Anything still inside our namespaces was started by us (they are ours).
    local ns p
    for ns in "$NS" "$NS_AUX"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do
            [ "$p" = "$CAP_PID" ] || kill -KILL "$p" 2>/dev/null
        done
    done
    stop "$CAP_PID" group
    ip netns del "$NS_AUX" 2>/dev/null
    ip netns del "$NS" 2>/dev/null
    if [ "$OUTCOME" = PASS ] && [ "$KEEP_WORKDIR" = 0 ]; then
        rm -rf "$WORKDIR"
    else
        echo "[$ME] logs kept in $WORKDIR" >&2
    fi
}
trap teardown EXIT
trap 'echo "$ME: interrupted" >&2; exit 1' INT TERM HUP

# Namespaces of ours whose creator died (kill -9) are removed.
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^pixie-e2e-[0-9]+(-aux)?$'); do
    owner=${ns#pixie-e2e-}; owner=${owner%-aux}
    [ "$owner" != $$ ] && kill -0 "$owner" 2>/dev/null && continue
    say "removing stale namespace $ns"
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
done

# ---- network -----------------------------------------------------------------
make_net() {
    ip netns add "$NS" || return 1
    ip -n "$NS" link set lo up || return 1
    ip -n "$NS" link add "$BR" type bridge stp_state 0 forward_delay 0 || return 1
    ip -n "$NS" addr add "$SERVER_IP/$PREFIX_LEN" dev "$BR" || return 1
    if [ "$RA" = 1 ]; then
        ip -n "$NS" addr add "$SERVER_IP6/64" dev "$BR" nodad || return 1
    fi
    ip -n "$NS" link set "$BR" up || return 1
    ip -n "$NS" tuntap add dev "$TAP" mode tap || return 1
    ip -n "$NS" link set "$TAP" master "$BR" || return 1
    ip -n "$NS" link set "$TAP" up || return 1
    if [ "$AUX" = 1 ]; then
        ip netns add "$NS_AUX" || return 1
        ip -n "$NS_AUX" link set lo up || return 1
        ip -n "$NS" link add "$VETH" type veth peer name "$VETH_PEER" netns "$NS_AUX" || return 1
        ip -n "$NS" link set "$VETH" master "$BR" || return 1
        ip -n "$NS" link set "$VETH" up || return 1
        ip -n "$NS_AUX" addr add "$DHCP_IP/$PREFIX_LEN" dev "$VETH_PEER" || return 1
        ip -n "$NS_AUX" link set "$VETH_PEER" up || return 1
    fi
}
make_net || setup_error "could not build namespace $NS"

# ---- capture -------------------------------------------------------------------
if [ -n "$PCAP" ]; then
    mkdir -p "$(dirname "$PCAP")" && : >"$PCAP" || setup_error "cannot write $PCAP"
    PCAP=$(readlink -f "$PCAP")
    setsid ip netns exec "$NS" tcpdump -n -U -Z root -i "$BR" -w "$PCAP" ${PCAP_FILTER:+"$PCAP_FILTER"} \
        >"$WORKDIR/tcpdump.log" 2>&1 </dev/null &
    CAP_PID=$!
    for _ in $(seq 50); do
        grep -q 'listening on' "$WORKDIR/tcpdump.log" 2>/dev/null && break
        kill -0 "$CAP_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$CAP_PID" 2>/dev/null || { cat "$WORKDIR/tcpdump.log" >&2; setup_error "tcpdump did not start"; }
fi

# ---- helpers on the segment ------------------------------------------------------
if [ "$RA" = 1 ]; then
    # RA-only: SLAAC prefix, no DHCPv4/v6, no DNS (port=0) -> binds no UDP port.
    setsid ip netns exec "$NS" dnsmasq --no-daemon --conf-file=/dev/null --pid-file= \
        --port=0 --interface="$BR" --bind-interfaces --dhcp-leasefile=/dev/null \
        --enable-ra --dhcp-range=::,constructor:"$BR",ra-only --log-facility=- \
        >"$WORKDIR/ra.log" 2>&1 </dev/null &
    RA_PID=$!
fi
if [ "$AUX" = 1 ]; then
    # The network's existing DHCP server: addresses only, no PXE options.
    setsid ip netns exec "$NS_AUX" dnsmasq --no-daemon --conf-file=/dev/null --pid-file= \
        --port=0 --no-ping --dhcp-leasefile=/dev/null --interface="$VETH_PEER" \
        --bind-interfaces --dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,10m \
        --log-dhcp --log-facility=- >"$WORKDIR/dhcp.log" 2>&1 </dev/null &
    AUX_PID=$!
fi

# ---- the server under test ----------------------------------------------------------
export PIXIE_E2E_NETNS=$NS PIXIE_E2E_IFACE=$BR PIXIE_E2E_SERVER_IP=$SERVER_IP \
       PIXIE_E2E_PREFIX_LEN=$PREFIX_LEN PIXIE_E2E_SUBNET=10.77.0.0/24 \
       PIXIE_E2E_CLIENT_MAC=$MAC PIXIE_E2E_FIRMWARE=$FIRMWARE PIXIE_E2E_WORKDIR=$WORKDIR
[ "$AUX" = 1 ] && export PIXIE_E2E_DHCP_IP=$DHCP_IP
setsid ip netns exec "$NS" "${SERVER_CMD[@]}" >"$SERVER_LOG" 2>&1 </dev/null &
SERVER_PID=$!

tail_logs() {
    echo "--- server.log (last $TAIL lines) ---"
    tail -n "$TAIL" "$SERVER_LOG"
}

listening() {   # every ready port is bound to a UDP socket in $NS
    local p
    for p in "${READY[@]}"; do
        [ "$p" = none ] && continue
        ip netns exec "$NS" ss -Hlun "sport = :$p" 2>/dev/null | grep -q . || return 1
    done
    if [ "$AUX" = 1 ]; then
        ip netns exec "$NS_AUX" ss -Hlun 'sport = :67' 2>/dev/null | grep -q . || return 1
    fi
}
ready_deadline=$((SECONDS + READY_TIMEOUT))
until listening; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        wait "$SERVER_PID"; rc=$?
        echo "FAIL: server command exited with status $rc before it was ready"
        tail_logs
        exit 1
    fi
    if [ -n "$AUX_PID" ] && ! kill -0 "$AUX_PID" 2>/dev/null; then
        cat "$WORKDIR/dhcp.log" >&2
        setup_error "the plain DHCP server (dnsmasq) died"
    fi
    if [ $SECONDS -ge $ready_deadline ]; then
        echo "FAIL: server not listening on UDP ${READY[*]} within ${READY_TIMEOUT}s"
        ip netns exec "$NS" ss -Hlun
        tail_logs
        exit 1
    fi
    sleep 0.1
done
say "server ready (UDP ${READY[*]} bound in $NS)"

# ---- the client ------------------------------------------------------------------------
case $NIC_ROM in
    default) rom= ;;
    none) rom=,romfile= ;;
    *) [ -r "$NIC_ROM" ] || setup_error "cannot read --nic-rom $NIC_ROM"; rom=,romfile=$(readlink -f "$NIC_ROM") ;;
esac
QEMU=(qemu-system-x86_64 -accel tcg -m "$MEMORY" -nodefaults -no-user-config
      -display none -monitor none -no-reboot -serial "file:$SERIAL"
      -netdev "tap,id=net0,ifname=$TAP,script=no,downscript=no"
      -device "$NIC,netdev=net0,mac=$MAC,bootindex=1$rom")
[ -n "$UUID" ] && QEMU+=(-uuid "$UUID")
if [ "$FIRMWARE" = bios ]; then
    QEMU+=(-machine pc,graphics=off)
else
    cp "$OVMF_VARS" "$WORKDIR/OVMF_VARS.fd" || setup_error "cannot copy OVMF vars"
    QEMU+=(-machine pc
           -drive "if=pflash,format=raw,unit=0,readonly=on,file=$OVMF_CODE"
           -drive "if=pflash,format=raw,unit=1,file=$WORKDIR/OVMF_VARS.fd")
    [ "$UEFI_IPV6" = 1 ] || QEMU+=(-fw_cfg name=opt/org.tianocore/IPv6Support,string=no)
fi
QEMU+=("${QEMU_EXTRA[@]}")
echo "${QEMU[*]}" >"$WORKDIR/qemu.cmd"

START=$(date +%s.%N)
setsid ip netns exec "$NS" "${QEMU[@]}" >"$QEMU_LOG" 2>&1 </dev/null &
QEMU_PID=$!
elapsed() { awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }

verdict='' why=''
deadline=$((SECONDS + TIMEOUT))
while :; do
    if grep -aqF -- "$MARKER" "$SERIAL"; then verdict=PASS; break; fi
    for m in "${FAIL_MARKERS[@]}"; do
        [ "$m" != none ] && grep -aqF -- "$m" "$SERIAL" && { why="firmware gave up: '$m' on serial"; break 2; }
    done
    if ! kill -0 "$QEMU_PID" 2>/dev/null; then why="QEMU exited"; break; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then why="server exited"; break; fi
    if grep -aq 'KVM internal error' "$QEMU_LOG"; then why="KVM internal error"; break; fi
    if [ $SECONDS -ge $deadline ]; then why="marker '$MARKER' not seen within ${TIMEOUT}s"; break; fi
    sleep 0.1
done
T=$(elapsed)

if [ "$verdict" = PASS ]; then
    # Let the lines after the marker arrive: serial quiet for 0.5 s, at most 3 s.
    last=-1
    for _ in $(seq 30); do
        size=$(stat -c %s "$SERIAL")
        [ "$size" = "$last" ] && break
        last=$size
        sleep 0.5
    done
fi

summary="firmware=$FIRMWARE nic=$NIC rom=$NIC_ROM"
echo "--- serial.log (last $TAIL lines) ---"
# strip ANSI escape sequences and CRs that the firmware consoles emit
sed -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1b[()][A-Z0-9]//g' -e 's/\r//g' "$SERIAL" \
    | tr -d '\000' | grep -av '^[[:space:]]*$' | tail -n "$TAIL"
tail_logs
if [ "$verdict" = PASS ]; then
    OUTCOME=PASS
    echo "PASS: '$MARKER' after ${T}s ($summary)"
    exit 0
fi
echo "--- qemu.log ---"; tail -n 10 "$QEMU_LOG"
[ "$AUX" = 1 ] && { echo "--- dhcp.log (plain DHCP server) ---"; tail -n 10 "$WORKDIR/dhcp.log"; }
echo "FAIL after ${T}s: $why ($summary)"
exit 1
