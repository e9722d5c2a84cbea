#!/usr/bin/env bash
# Soak (issue 7): no load may leak calls, ports or memory. Runs the release server for
# DURATION seconds under waves of `pinbridge loadgen` calls (half in lobbies, half in meetings
# of 10 whose organizer keys the PIN), sampling every SAMPLE seconds the server's RSS (from
# /proc/PID/status) and what it holds (GET /api/stats) into a CSV. The first wave is the
# warm-up: the RSS once it has ended and the server is idle is the baseline. At the end, once
# every call has ended, it prints the baseline, the peak and the final RSS, and a pass/fail
# line: pass when the final RSS is within max(10 % of the baseline, SLACK_MB) of the
# baseline and calls, SIP legs, media sessions and RTP ports are all back to 0.
#
# Usage: bench/soak.sh
# Env:   DURATION (seconds of waves, default 600), WAVE (calls per wave, default 200),
#        RATE (calls/s, default 50), HOLD (seconds each call stays up, default 20),
#        SAMPLE (seconds between samples, default 5), SLACK_MB (default 8),
#        OUT (directory for the CSV, reports and logs, default a temp dir).
# Runs on 127.0.0.1 only: SIP on 9070, admin API on 18090, server RTP 20000-23999,
# loadgen RTP 50000-53999. Bounded: each wave has a timeout, the server is stopped on exit.
# Exits 0 on pass, 1 on fail.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-600}
WAVE=${WAVE:-200}
RATE=${RATE:-50}
HOLD=${HOLD:-20}
SAMPLE=${SAMPLE:-5}
SLACK_MB=${SLACK_MB:-8}
OUT=${OUT:-$(mktemp -d /tmp/pinbridge-soak.XXXXXX)}
mkdir -p "$OUT"
BIN=target/release/pinbridge
SIP=127.0.0.1:9070
HTTP=127.0.0.1:18090
CSV="$OUT/soak.csv"

for tool in jq curl; do
    command -v "$tool" >/dev/null || { echo "soak.sh: needs $tool" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)"

echo "building (release)…" >&2
cargo build --release --bin pinbridge >&2

DATA="$OUT/data"
rm -rf "$DATA"
"$BIN" serve --sip-listen "$SIP" --http-listen "$HTTP" --rtp-ports 20000-23999 \
    --invite-rate 0 --message-rate 0 --max-calls 100000 \
    --data-dir "$DATA" --audio-dir audio --log-level warn >"$OUT/server.out" 2>"$OUT/server.err" &
SERVER=$!
SAMPLER=
cleanup() {
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
    kill "$SERVER" 2>/dev/null
    wait "$SERVER" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do
    grep -q '^pinbridge ready' "$OUT/server.out" 2>/dev/null && break
    kill -0 "$SERVER" || { echo "server exited:"; cat "$OUT/server.err"; exit 1; } >&2
    sleep 0.2
done
grep -q '^pinbridge ready' "$OUT/server.out" || { echo "server not ready" >&2; exit 1; }
TOKEN=$(cat "$DATA/admin-token")
api() { curl -sS --max-time 30 -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "$@"; }

MEETINGS=$(( (WAVE / 2 + 9) / 10 ))
CONFS=$(( MEETINGS * 2 ))
echo "creating $CONFS organizers…" >&2
api -X PATCH "http://$HTTP/api/settings" -d '{"auto_email": false}' >/dev/null
: >"$OUT/organizers.txt"
for i in $(seq 1 "$CONFS"); do
    api -X POST "http://$HTTP/api/users" \
        -d "{\"id\":\"soak$i@loadgen.invalid\",\"email\":\"soak$i@loadgen.invalid\",\"display_name\":\"soak $i\"}" |
        jq -r '"\(.user.conference_id);\(.pin)"' >>"$OUT/organizers.txt"
done

rss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$SERVER/status"; }
held() { api "http://$HTTP/api/stats" | jq -r '[.calls, .sip_legs, .media_sessions, .rtp_ports_in_use] | @csv'; }
START=$(date +%s)
echo "t_s,rss_kb,calls,sip_legs,media_sessions,rtp_ports_in_use,wave" >"$CSV"
echo 0 >"$OUT/wave"
(
    while kill -0 "$SERVER" 2>/dev/null; do
        echo "$(( $(date +%s) - START )),$(rss_kb),$(held),$(cat "$OUT/wave")" >>"$CSV"
        sleep "$SAMPLE"
    done
) &
SAMPLER=$!

# Waits (at most 120 s) until the server holds nothing; prints what it holds.
wait_idle() {
    local h
    for _ in $(seq 1 240); do
        h=$(held)
        [ "$h" = "0,0,0,0" ] && break
        sleep 0.5
    done
    echo "$h"
}

wave() {
    local n=$1
    echo "$n" >"$OUT/wave"
    timeout $(( WAVE / RATE + HOLD + 120 )) "$BIN" loadgen --server "$SIP" --calls "$WAVE" \
        --rate "$RATE" --duration "$HOLD" --meetings "$MEETINGS" --lobby-fraction 0.5 \
        --organizers-file "$OUT/organizers.txt" --rtp-ports 50000-53999 --audio-dir audio \
        --json >"$OUT/report-$n.json" 2>"$OUT/loadgen-$n.err" || true
    printf 'wave %d: %s calls, %s failed, pass %s; server holds %s (calls,legs,sessions,ports)\n' \
        "$n" "$(jq -r '.calls.attempted // "?"' "$OUT/report-$n.json" 2>/dev/null)" \
        "$(jq -r '.calls.failed // "?"' "$OUT/report-$n.json" 2>/dev/null)" \
        "$(jq -r '.quality.pass | tostring' "$OUT/report-$n.json" 2>/dev/null || echo '?')" \
        "$(wait_idle)" >&2
}

echo "warm-up wave: $WAVE calls at $RATE/s, $HOLD s each" >&2
wave 1
sleep "$SAMPLE"
BASELINE=$(rss_kb)
echo "baseline RSS after warm-up: $((BASELINE / 1024)) MB" >&2

n=1
while [ $(( $(date +%s) - START )) -lt "$DURATION" ]; do
    n=$((n + 1))
    wave "$n"
done

FINAL_HELD=$(wait_idle)
sleep "$SAMPLE"
FINAL=$(rss_kb)
kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null || true
SAMPLER=
PEAK=$(awk -F, 'NR > 1 && $2 > p { p = $2 } END { print p + 0 }' "$CSV")
HWM=$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$SERVER/status")
ALLOWED=$(awk -v b="$BASELINE" -v s="$SLACK_MB" 'BEGIN { a = b / 10; m = s * 1024; print (a > m ? a : m) }')
DELTA=$(( FINAL - BASELINE ))

echo
echo "waves: $n of $WAVE calls ($(( n * WAVE )) calls) over $(( $(date +%s) - START )) s; samples in $CSV"
printf 'baseline RSS (after warm-up, idle): %.1f MB\n' "$(awk -v k="$BASELINE" 'BEGIN { print k / 1024 }')"
printf 'peak RSS (sampled / VmHWM):         %.1f / %.1f MB\n' \
    "$(awk -v k="$PEAK" 'BEGIN { print k / 1024 }')" "$(awk -v k="$HWM" 'BEGIN { print k / 1024 }')"
printf 'final RSS (all calls ended, idle):  %.1f MB (%+.1f MB vs baseline, allowed +%.1f MB)\n' \
    "$(awk -v k="$FINAL" 'BEGIN { print k / 1024 }')" "$(awk -v k="$DELTA" 'BEGIN { print k / 1024 }')" \
    "$(awk -v k="$ALLOWED" 'BEGIN { print k / 1024 }')"
echo "held at the end (calls,sip_legs,media_sessions,rtp_ports_in_use): $FINAL_HELD"
if [ "$DELTA" -le "${ALLOWED%.*}" ] && [ "$FINAL_HELD" = "0,0,0,0" ]; then
    echo "PASS: memory back to baseline, nothing held"
else
    echo "FAIL: memory or held resources did not return (see $CSV)"
    exit 1
fi
