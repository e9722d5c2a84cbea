#!/usr/bin/env bash
# Call-setup rate: SIPp basic-call.xml against a release pinbridge on loopback.
#
#   bench/setup-rate.sh [RATE] [SECONDS] [PROCS] [LOG_LEVEL]
#
# RATE calls per second in all (split evenly over PROCS SIPp processes), for SECONDS seconds
# (each call lasts 3 s: INVITE, 200, ACK, 3 s of prompt RTP, BYE). Defaults: 500 60 1 info.
# Prints per SIPp process its successful/failed calls and retransmissions, the INVITE->200
# response times (p50/p95/p99/max, from SIPp's -trace_rtt), the ACK->first RTP packet delay
# (p50/p95/p99, from a tcpdump capture of SIP and the first, marked, RTP packet of each call;
# bench/ack_to_rtp.py) and the server's CPU time and RSS.
#
# Bounded: SIPp's own -timeout (SECONDS + 60 s), and every wait below has a limit. Needs
# sipp (sip-tester), tcpdump and python3; run as root (tcpdump).
set -euo pipefail

RATE=${1:-500}
SECONDS_RUN=${2:-60}
PROCS=${3:-1}
LOG_LEVEL=${4:-info}
SIP_PORT=${SIP_PORT:-15060}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/pinbridge-setup-rate.XXXXXX)
BIN="$ROOT/target/release/pinbridge"

cd "$ROOT"
cargo build --release --locked --bin pinbridge >&2
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

"$BIN" serve --sip-listen "127.0.0.1:$SIP_PORT" --http-listen 127.0.0.1:0 \
    --rtp-ports 50000-59999 --data-dir "$WORK/data" --audio-dir "$ROOT/audio" \
    --invite-rate 0 --message-rate 0 --max-calls 100000 \
    --log-level "$LOG_LEVEL" >"$WORK/stdout" 2>"$WORK/server.log" &
SERVER=$!
TCPDUMP=
cleanup() {
    [ -n "$TCPDUMP" ] && kill "$TCPDUMP" 2>/dev/null || true
    kill "$SERVER" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do
    grep -q '^pinbridge ready' "$WORK/stdout" && break
    sleep 0.1
done
grep -q '^pinbridge ready' "$WORK/stdout" || { echo "server did not start" >&2; tail "$WORK/server.log" >&2; exit 1; }

# SIP both ways, and RTP packets with the marker bit (the first of each call) to SIPp.
tcpdump -i lo -n -s 1500 -B 16384 -w "$WORK/cap.pcap" \
    "udp port $SIP_PORT or (udp and dst portrange 16000-16100 and (udp[9] & 0x80) != 0)" \
    2>"$WORK/tcpdump.log" &
TCPDUMP=$!
sleep 1

PER=$((RATE / PROCS))
CALLS=$((PER * SECONDS_RUN))
PIDS=()
for i in $(seq 0 $((PROCS - 1))); do
    mkdir -p "$WORK/sipp$i"
    (cd "$WORK/sipp$i" && sipp -sf "$ROOT/sipp-scenarios/basic-call.xml" "127.0.0.1:$SIP_PORT" \
        -i 127.0.0.1 -mi 127.0.0.1 -bind_local -p $((15070 + 10 * i)) -mp $((16000 + 10 * i)) \
        -r "$PER" -m "$CALLS" -l $((PER * 5)) -nostdin \
        -timeout "$((SECONDS_RUN + 60))s" -timeout_error \
        -trace_stat -stf stat.csv -fd 5 -trace_rtt -rtt_freq 100 -trace_err \
        >stdout.log 2>stderr.log) &
    PIDS+=($!)
done
STATUS=0
for p in "${PIDS[@]}"; do wait "$p" || STATUS=$?; done
sleep 1
kill -INT "$TCPDUMP" 2>/dev/null || true
wait "$TCPDUMP" 2>/dev/null || true
TCPDUMP=

echo "== $RATE calls/s for $SECONDS_RUN s, $PROCS SIPp process(es), server log level $LOG_LEVEL, $(nproc) cores"
for i in $(seq 0 $((PROCS - 1))); do
    d="$WORK/sipp$i"
    python3 - "$d/stat.csv" <<'PY'
import sys
rows = [l.rstrip("\n").split(";") for l in open(sys.argv[1]) if l.strip()]
h, last = rows[0], rows[-1]
v = dict(zip(h, last))
print(f"sipp: successful {v['SuccessfulCall(C)']}, failed {v['FailedCall(C)']}, "
      f"retransmissions {v['Retransmissions(C)']}, elapsed {v['ElapsedTime(C)']}")
PY
    cat "$d"/*_rtt.csv | awk -F';' 'NR>1 && $2 ~ /^[0-9.]+$/ {print $2}' | sort -g | awk '
        {a[NR]=$1} END { if (NR==0) {print "invite->200: no samples"; exit}
        printf "invite->200: %d calls, p50 %.3f ms, p95 %.3f ms, p99 %.3f ms, max %.3f ms\n",
            NR, a[int(NR*0.5)+1], a[int(NR*0.95)+1], a[int(NR*0.99)+1], a[NR] }'
done
python3 "$ROOT/bench/ack_to_rtp.py" "$WORK/cap.pcap" "$SIP_PORT"
echo "server: $(ps -o time=,rss= -p "$SERVER" | awk '{print "cpu " $1 ", rss " $2 " KiB"}'), \
log: $(grep -c 'incoming call' "$WORK/server.log") incoming, $(grep -c 'call ended' "$WORK/server.log") ended, \
$(grep -c ' WARN ' "$WORK/server.log") warnings"
echo "work dir: $WORK (sipp exit status $STATUS)"
