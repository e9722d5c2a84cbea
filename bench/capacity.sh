#!/usr/bin/env bash
# Capacity of pinbridge on this machine (issue 6): steps the load up and finds the largest
# step at which 0 calls fail, p99 interarrival jitter <= 5 ms, no gap between packets is
# over 60 ms and packet loss is <= 0.1 %.
#
# Each step places N concurrent calls with `pinbridge loadgen`, half waiting in lobbies
# (conferences whose organizer never comes) and half in meetings of 10 (one organizer keys
# `*`, the PIN and `#`). For each step it records the server's CPU time (utime+stime from
# /proc/PID/stat), its peak RSS during the step (VmHWM, reset before the step through
# /proc/PID/clear_refs) and the memory per call ((peak - RSS before the step) / N), and the
# load generator's own CPU time (it shares the machine).
#
# Usage: bench/capacity.sh [STEP...]        default steps: 250 500 1000 2000 4000
# Env:   RATE (calls/s, default 200), HOLD (seconds every call stays up after the ramp,
#        default 20), OUT (directory for the reports, default a temp dir).
# Runs on 127.0.0.1 only: SIP on 9060, admin API on 18080, server RTP 10000-18999,
# loadgen RTP 40000-49999. Bounded: every step has a timeout, the server is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(250 500 1000 2000 4000)
RATE=${RATE:-200}
HOLD=${HOLD:-20}
OUT=${OUT:-$(mktemp -d /tmp/pinbridge-capacity.XXXXXX)}
mkdir -p "$OUT"
BIN=target/release/pinbridge
SIP=127.0.0.1:9060
HTTP=127.0.0.1:18080
TICK=$(getconf CLK_TCK)

for tool in jq curl; do
    command -v "$tool" >/dev/null || { echo "capacity.sh: needs $tool" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)"

echo "building (release)…" >&2
cargo build --release --bin pinbridge >&2

DATA="$OUT/data"
rm -rf "$DATA"
"$BIN" serve --sip-listen "$SIP" --http-listen "$HTTP" --rtp-ports 10000-18999 \
    --invite-rate 0 --message-rate 0 --max-calls 100000 \
    --data-dir "$DATA" --audio-dir audio --log-level warn >"$OUT/server.out" 2>"$OUT/server.err" &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    grep -q '^pinbridge ready' "$OUT/server.out" 2>/dev/null && break
    kill -0 "$SERVER" || { echo "server exited:"; cat "$OUT/server.err"; exit 1; } >&2
    sleep 0.2
done
grep -q '^pinbridge ready' "$OUT/server.out" || { echo "server not ready" >&2; exit 1; }
TOKEN=$(cat "$DATA/admin-token")
api() { curl -sS --max-time 30 -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "$@"; }

# Organizers for the largest step: one per meeting of 10 and one per lobby room of 10.
MAX=0
for n in "${STEPS[@]}"; do [ "$n" -gt "$MAX" ] && MAX=$n; done
CONFS=$(( (MAX / 2 + 9) / 10 * 2 ))
echo "creating $CONFS organizers…" >&2
api -X PATCH "http://$HTTP/api/settings" -d '{"auto_email": false}' >/dev/null
: >"$OUT/organizers.txt"
for i in $(seq 1 "$CONFS"); do
    api -X POST "http://$HTTP/api/users" \
        -d "{\"id\":\"cap$i@loadgen.invalid\",\"email\":\"cap$i@loadgen.invalid\",\"display_name\":\"cap $i\"}" |
        jq -r '"\(.user.conference_id);\(.pin)"' >>"$OUT/organizers.txt"
done

proc_cpu() { awk -v t="$TICK" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$SERVER/stat"; }
proc_kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$SERVER/status"; }

printf '%-6s %-5s %-7s %-9s %-9s %-10s %-9s %-8s %-9s %-8s %-8s %-10s %-9s\n' \
    calls pass failed loss_% jit_p99 gap_max_ms setup_p99 mtg_p99 srv_cpu_s srv_MB MB/call lg_cpu_s wall_s \
    >"$OUT/summary.txt"
BEST=0
for n in "${STEPS[@]}"; do
    meetings=$(( (n / 2 + 9) / 10 ))
    ramp=$(( (n + RATE - 1) / RATE ))
    duration=$(( ramp + HOLD ))
    sleep 5 # the previous step's meetings end and its ports are free
    echo 5 >"/proc/$SERVER/clear_refs"
    rss0=$(proc_kb VmRSS)
    cpu0=$(proc_cpu)
    echo "step $n: $meetings meetings of 10, $((n - n / 2)) lobby callers, rate $RATE/s, each call ${duration} s" >&2
    /usr/bin/time -f '%U %S' -o "$OUT/loadgen-$n.time" \
        timeout $((duration + 120)) "$BIN" loadgen --server "$SIP" --calls "$n" --rate "$RATE" \
        --duration "$duration" --meetings "$meetings" --lobby-fraction 0.5 \
        --organizers-file "$OUT/organizers.txt" --rtp-ports 40000-49999 --audio-dir audio \
        --json >"$OUT/report-$n.json" 2>"$OUT/loadgen-$n.err" || true
    cpu1=$(proc_cpu)
    hwm=$(proc_kb VmHWM)
    if ! jq -e . "$OUT/report-$n.json" >/dev/null 2>&1; then
        echo "step $n: no report; see $OUT/loadgen-$n.err" >&2
        tail -3 "$OUT/loadgen-$n.err" >&2
        continue
    fi
    r="$OUT/report-$n.json"
    lg_cpu=$(awk '{ printf "%.1f", $1 + $2 }' "$OUT/loadgen-$n.time" 2>/dev/null || echo "?")
    pass=$(jq -r '.quality.pass' "$r")
    printf '%-6s %-5s %-7s %-9s %-9s %-10s %-9s %-8s %-9s %-8s %-8s %-10s %-9s\n' \
        "$n" "$pass" "$(jq -r '.calls.failed' "$r")" \
        "$(jq -r '.rtp.loss_percent * 1000 | round / 1000' "$r")" \
        "$(jq -r '.rtp.jitter_ms.p99 * 100 | round / 100' "$r")" \
        "$(jq -r '.rtp.max_gap_ms.max * 10 | round / 10' "$r")" \
        "$(jq -r '.setup_ms.invite_to_200.p99 * 10 | round / 10' "$r")" \
        "$(jq -r '.setup_ms.invite_to_meeting.p99 | round' "$r")" \
        "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.1f", b - a }')" \
        "$(awk -v h="$hwm" 'BEGIN { printf "%.0f", h / 1024 }')" \
        "$(awk -v h="$hwm" -v r="$rss0" -v n="$n" 'BEGIN { printf "%.3f", (h - r) / 1024 / n }')" \
        "$lg_cpu" "$(jq -r '.wall_s | round' "$r")" | tee -a "$OUT/summary.txt" >&2
    [ "$pass" = true ] && [ "$n" -gt "$BEST" ] && BEST=$n
done

echo
cat "$OUT/summary.txt"
echo
echo "largest passing step: $BEST concurrent calls (reports in $OUT)"
