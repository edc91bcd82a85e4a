#!/bin/sh
# Stand-in proxyDHCP + TFTP server with the same policy as scripts/boot.rhai,
# for checking the harness itself (PIXIE_E2E_SERVER=dnsmasq cargo test --test e2e,
# or by hand: netboot.sh ... -- tests/e2e/dnsmasq-proxy.sh TFTP-ROOT).
# Runs in the harness's namespace; binds only on $PIXIE_E2E_IFACE.
set -eu
root=${1:?usage: dnsmasq-proxy.sh TFTP-ROOT}
exec dnsmasq --no-daemon --conf-file=/dev/null --pid-file= --port=0 \
    --log-dhcp --log-facility=- \
    --interface="${PIXIE_E2E_IFACE:?run me from netboot.sh}" --bind-interfaces \
    --dhcp-range="${PIXIE_E2E_SUBNET%/*},proxy,255.255.255.0" \
    --enable-tftp --tftp-root="$root" \
    --dhcp-userclass=set:ipxe,iPXE \
    --pxe-service=x86PC,pixie,pixie-bios \
    --pxe-service=tag:ipxe,X86-64_EFI,pixie,boot.ipxe \
    --pxe-service=tag:!ipxe,X86-64_EFI,pixie,ipxe.efi
