#!/usr/bin/env bash
# Mixed SIPp load against a release pinbridge on 127.0.0.1: MEETINGS organizers are seeded
# through the admin API, CALLERS lobby callers per meeting dial in (lobby-caller-inf.xml,
# conference IDs from an injection file, sending g711a.pcap), and once they all wait in the
# lobby the organizers dial in and start their meetings (organizer.xml, ID and PIN from an
# injection file, keys by RFC 2833). Prints SIPp's successful/failed calls per run and the
# server's own counts from its log.
#
#   sipp-scenarios/load.sh [MEETINGS] [CALLERS] [RATE] [HOLD_SECONDS]
#
# Defaults: 20 meetings x 10 callers, 50 calls/s, callers stay 60 s. Bounded: every wait has a
# limit and each SIPp run has -timeout. Run as root (SIPp plays RTP through a raw socket).
set -euo pipefail

MEETINGS=${1:-20}
CALLERS=${2:-10}
RATE=${3:-50}
HOLD=${4:-60}
SIP_PORT=${SIP_PORT:-25060}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/pinbridge-load.XXXXXX)
BIN="$ROOT/target/release/pinbridge"
LOBBY=$((MEETINGS * CALLERS))

cd "$ROOT"
cargo build --release --locked --bin pinbridge >&2
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

"$BIN" serve --sip-listen "127.0.0.1:$SIP_PORT" --http-listen 127.0.0.1:0 \
    --rtp-ports 40000-49999 --data-dir "$WORK/data" --audio-dir "$ROOT/audio" \
    --invite-rate 0 --message-rate 0 --max-calls 100000 \
    --max-participants 1000 --log-level info >"$WORK/stdout" 2>"$WORK/server.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q '^pinbridge ready' "$WORK/stdout" && break
    sleep 0.1
done
HTTP=$(sed -n 's/^pinbridge ready .* http=\([^ ]*\).*/\1/p' "$WORK/stdout")
[ -n "$HTTP" ] || { echo "server did not start" >&2; tail "$WORK/server.log" >&2; exit 1; }
TOKEN=$(cat "$WORK/data/admin-token")

# Organizers, through the admin API: ID;PIN; per line.
printf 'SEQUENTIAL\n' >"$WORK/organizers.csv"
for m in $(seq "$MEETINGS"); do
    curl -sS --max-time 30 -X POST "http://$HTTP/api/users" \
        -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        -d "{\"id\":\"load$m@example.com\",\"display_name\":\"Load $m\",\"email\":\"load$m@example.com\"}" |
        python3 -c 'import json,sys; r=json.load(sys.stdin); u=r.get("user", r); print(u["conference_id"] + ";" + r["pin"] + ";")' \
        >>"$WORK/organizers.csv"
done
# Lobby callers: CALLERS lines per meeting, meetings interleaved.
printf 'SEQUENTIAL\n' >"$WORK/lobby.csv"
for _ in $(seq "$CALLERS"); do
    tail -n +2 "$WORK/organizers.csv" | cut -d';' -f1 | sed 's/$/;/' >>"$WORK/lobby.csv"
done
echo "seeded $MEETINGS organizers; $LOBBY lobby callers; work dir $WORK"

sipp_run() { # name scenario inf calls rate hold_ms sip_port media_port
    mkdir -p "$WORK/$1"
    (cd "$WORK/$1" && sipp -sf "$ROOT/sipp-scenarios/$2" "127.0.0.1:$SIP_PORT" -inf "$3" \
        -i 127.0.0.1 -mi 127.0.0.1 -bind_local -p "$7" -mp "$8" \
        -m "$4" -r "$5" -l "$4" -d "$6" -nostdin -timeout "$((HOLD + 240))s" -timeout_error \
        -trace_stat -stf stat.csv -fd 5 -trace_err >stdout.log 2>stderr.log)
}
sipp_run lobby lobby-caller-inf.xml "$WORK/lobby.csv" "$LOBBY" "$RATE" "$((HOLD * 1000))" 25070 26000 &
LOBBY_PID=$!
# Wait (bounded) until every lobby caller waits in the lobby.
LIMIT=$((LOBBY / RATE + 60))
for _ in $(seq $((LIMIT * 2))); do
    [ "$(grep -c 'waiting in the lobby' "$WORK/server.log")" -ge "$LOBBY" ] && break
    sleep 0.5
done
echo "in the lobby: $(grep -c 'waiting in the lobby' "$WORK/server.log") of $LOBBY"
ORG_RATE=$((MEETINGS < 10 ? MEETINGS : 10))
sipp_run organizers organizer.xml "$WORK/organizers.csv" "$MEETINGS" "$ORG_RATE" 20000 25080 26100 &
ORG_PID=$!
STATUS=0
wait "$ORG_PID" || STATUS=$?
wait "$LOBBY_PID" || STATUS=$?

for run in lobby organizers; do
    python3 - "$run" "$WORK/$run/stat.csv" <<'PY'
import sys
rows = [l.rstrip("\n").split(";") for l in open(sys.argv[2]) if l.strip()]
v = dict(zip(rows[0], rows[-1]))
print(f"sipp {sys.argv[1]}: successful {v['SuccessfulCall(C)']}, failed {v['FailedCall(C)']}, "
      f"retransmissions {v['Retransmissions(C)']}")
PY
done
L="$WORK/server.log"
echo "server: $(grep -c 'incoming call' "$L") calls, $(grep -c 'waiting in the lobby' "$L") waited in the lobby, \
$(grep -c 'starting the meeting' "$L") meetings started (PIN verified), $(grep -c 'joined the meeting' "$L") joined the meeting, \
$(grep -c 'meeting ended' "$L") meetings ended, $(grep -c ' WARN ' "$L") warnings"
echo "server cpu/rss: $(ps -o time=,rss= -p "$SERVER" 2>/dev/null || echo gone); work dir $WORK; sipp status $STATUS"
exit "$STATUS"
