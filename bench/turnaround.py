#!/usr/bin/env python3
"""Splits TFTP lock-step round trips into the server's and the client's part (bench/tftp.sh
--turnaround). Reads the TSV that script writes (round, server, pcap file, MB/s) and the captures.

Server turnaround: ACK n seen on lo -> DATA n+1 seen on lo (loopback delivery of the ACK, waking
the server, its work, its send). Client turnaround: DATA n -> ACK n. tcpdump stamps a packet
when its sender hands it to lo, so the two add up to the round trip of one block.

Usage: turnaround.py TURN.TSV "server ..."
"""
import collections
import statistics
import struct
import sys


def udp_payloads(path):
    """(time, udp payload) of every UDP/IPv4 packet of a classic pcap file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return
    magic = struct.unpack("<I", data[:4])[0]
    order, nano = {0xA1B2C3D4: ("<", False), 0xA1B23C4D: ("<", True)}.get(magic, (">", False))
    link = struct.unpack(order + "I", data[20:24])[0]
    l2 = {1: 14, 0: 4, 113: 16}.get(link, 14)  # Ethernet (lo), BSD null, Linux cooked
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack(order + "IIII", data[off:off + 16])
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(pkt) < l2 + 28 or pkt[l2] >> 4 != 4 or pkt[l2 + 9] != 17:
            continue
        udp = l2 + (pkt[l2] & 15) * 4
        yield sec + frac / (1e9 if nano else 1e6), pkt[udp + 8:]


def turnarounds(path):
    """Server and client turnaround times (µs) of one lock-step transfer."""
    data_t, ack_t = {}, {}
    for t, pl in udp_payloads(path):
        if len(pl) < 4:
            continue
        op, blk = struct.unpack(">HH", pl[:4])
        # First sighting only: a retransmission is not a turnaround.
        if op == 3:
            data_t.setdefault(blk, t)
        elif op == 4:
            ack_t.setdefault(blk, t)
    srv, cli = [], []
    for blk, t in ack_t.items():
        if blk in data_t and data_t[blk] <= t:
            cli.append((t - data_t[blk]) * 1e6)
        nxt = (blk + 1) & 0xFFFF
        if nxt in data_t and data_t[nxt] > t:
            srv.append((data_t[nxt] - t) * 1e6)
    return srv, cli


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def main():
    tsv, servers = sys.argv[1], sys.argv[2].split()
    rows = collections.defaultdict(lambda: {"srv": [], "cli": [], "rate": []})
    for line in open(tsv):
        _, server, cap, rate = line.rstrip("\n").split("\t")
        srv, cli = turnarounds(cap)
        rows[server]["srv"] += srv
        rows[server]["cli"] += cli
        rows[server]["rate"].append(float(rate))
    print("| server | MB/s (curl, blksize 512, under tcpdump) | server turnaround µs median / p90 "
          "| client turnaround µs median / p90 | server share of the round trip | blocks |")
    print("|---|---|---|---|---|---|")
    for s in servers:
        d = rows[s]
        if not d["srv"] or not d["cli"]:
            print(f"| {s} | - | - | - | - | 0 |")
            continue
        ms, mc = statistics.median(d["srv"]), statistics.median(d["cli"])
        print(f"| {s} | {statistics.median(d['rate']):.1f} | {ms:.1f} / {pct(d['srv'], .9):.1f} "
              f"| {mc:.1f} / {pct(d['cli'], .9):.1f} | {ms / (ms + mc):.0%} | {len(d['srv'])} |")


if __name__ == "__main__":
    main()
