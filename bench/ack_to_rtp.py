#!/usr/bin/env python3
"""INVITE -> 200 and ACK -> first RTP packet, per call, from a loopback pcap (tcpdump -w, DLT_EN10MB or
DLT_NULL/LINUX_SLL): for each call the time from the caller's ACK to the first RTP packet
the server sends from the port its 200 OK put in SDP (the packet with the marker bit; the
capture filter keeps only those); and the time from the caller's first INVITE to the server's
200 OK (on the wire, at microsecond resolution, unlike SIPp's -trace_rtt, which counts in
SIPp's own clock ticks). Prints count, p50, p95, p99 and max in ms of each.

Usage: ack_to_rtp.py FILE.pcap SIP_PORT
"""
import re
import struct
import sys


def packets(path):
    with open(path, "rb") as f:
        head = f.read(24)
        magic = struct.unpack("<I", head[:4])[0]
        endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
        nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
        linktype = struct.unpack(endian + "I", head[20:24])[0]
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            sec, frac, incl, _ = struct.unpack(endian + "IIII", rec)
            data = f.read(incl)
            t = sec + frac / (1e9 if nano else 1e6)
            if linktype == 1:  # Ethernet
                off = 14
            elif linktype == 113:  # Linux cooked
                off = 16
            elif linktype == 276:  # Linux cooked v2
                off = 20
            else:  # DLT_NULL / RAW
                off = 4 if linktype == 0 else 0
            ip = data[off:]
            if not ip or ip[0] >> 4 != 4 or ip[9] != 17:
                continue
            ihl = (ip[0] & 15) * 4
            sport, dport = struct.unpack(">HH", ip[ihl:ihl + 4])
            yield t, sport, dport, ip[ihl + 8:]


def main():
    path, sip_port = sys.argv[1], int(sys.argv[2])
    acks = {}  # call-id -> ack time
    port_of = {}  # call-id -> server RTP port (from the 200's SDP)
    ok_at = {}  # call-id -> time of the 200
    firsts = {}  # rtp port -> sorted list of first-packet times
    invites = {}  # call-id -> first INVITE
    for t, sport, dport, payload in packets(path):
        if sport == sip_port or dport == sip_port:
            text = payload.decode("latin-1", "replace")
            cid = re.search(r"\r\n(?:Call-ID|i):\s*(\S+)", text, re.I)
            if not cid:
                continue
            cid = cid.group(1)
            if text.startswith("INVITE ") and cid not in invites:
                invites[cid] = t
            elif text.startswith("ACK ") and cid not in acks:
                acks[cid] = t
            elif text.startswith("SIP/2.0 200") and "INVITE" in text.split("CSeq:", 1)[-1][:40]:
                m = re.search(r"m=audio (\d+)", text)
                if m and cid not in port_of:
                    port_of[cid] = int(m.group(1))
                    ok_at[cid] = t
        else:
            firsts.setdefault(sport, []).append(t)
    delays = []
    for cid, ack in acks.items():
        port = port_of.get(cid)
        if port is None:
            continue
        # The first marked packet from that port since the INVITE (ports are reused, never
        # while a call holds them). Not "since the 200": the media session can send its first
        # packet microseconds before the 200 OK is captured (another CPU), and that call then
        # matched the port's next call, seconds later.
        since = invites.get(cid, ok_at[cid])
        times = [x for x in firsts.get(port, []) if x >= since]
        if not times:
            continue
        delays.append(max(0.0, min(times) - ack) * 1000)
    answers = [(ok_at[c] - invites[c]) * 1000 for c in ok_at if c in invites]
    summary("invite->200 (wire)", answers)
    summary("ack->first rtp", delays)


def summary(name, values):
    values = sorted(values)
    if not values:
        print(f"{name}: no calls matched")
        return

    def pct(p):
        return values[min(len(values) - 1, int(p / 100 * len(values)))]

    print(
        f"{name}: {len(values)} calls, p50 {pct(50):.2f} ms, p95 {pct(95):.2f} ms, "
        f"p99 {pct(99):.2f} ms, max {values[-1]:.2f} ms"
    )


main()
