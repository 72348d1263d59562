#!/usr/bin/env bash
# The management API at scale: declares N queues (default 100,000) in a fresh release
# Warren, then times `GET /api/queues?page=1&page_size=100` and `GET /api/overview`
# (median and worst of 20 requests each, with curl's own timer), and the Prometheus scrapes
# `GET /metrics` and `GET /metrics/per-object` (one series set per queue), and prints one
# JSON line.
#
#   bench/http_scale.sh [N]
#
# Needs python3 with pika (conformance/.venv has it after conformance/run.sh) and curl.
# A benchmark, not a test: the issues' targets are "well under 50 ms" and "under 10 ms" for
# the API, and "well under a second" for a scrape.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-100000}
PY="$ROOT/conformance/.venv/bin/python"
[ -x "$PY" ] || PY=python3
"$PY" -c 'import pika' 2>/dev/null || { echo "http_scale: needs pika ($PY -m pip install pika)" >&2; exit 2; }
(cd "$ROOT" && cargo build --release -q)
TMP=$(mktemp -d)
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$TMP"' EXIT
(cd "$TMP" && exec "$ROOT/target/release/warren" --bind 127.0.0.1:0 --management-bind 127.0.0.1:0 --prometheus-bind 127.0.0.1:0 \
    --data-dir "$TMP/data" --log warn > "$TMP/out" 2>&1) &
PID=$!
for _ in $(seq 100); do grep -q "management listening" "$TMP/out" 2>/dev/null && break; sleep 0.1; done
AMQP=$(sed -n 's/^warren listening on //p' "$TMP/out" | head -1)
HTTP=$(sed -n 's/^warren management listening on //p' "$TMP/out" | head -1)
PROM=$(sed -n 's/^warren prometheus listening on //p' "$TMP/out" | head -1)
start=$(date +%s.%N)
"$PY" - "$AMQP" "$N" <<'PYEOF'
import sys, pika
host, port = sys.argv[1].rsplit(":", 1)
n = int(sys.argv[2])
c = pika.BlockingConnection(pika.ConnectionParameters(host, int(port)))
ch = c.channel()
for i in range(n):
    ch.queue_declare(f"scale-{i:06d}")
c.close()
PYEOF
declared=$(echo "$(date +%s.%N) - $start" | bc)
time_of() {
    for _ in $(seq 20); do
        curl -s -o /dev/null -w '%{time_total}\n' -u guest:guest "http://${2:-$HTTP}$1"
    done | sort -n | awk '{a[NR]=$1} END {printf "{\"median_ms\": %.2f, \"max_ms\": %.2f}", a[int((NR+1)/2)]*1000, a[NR]*1000}'
}
PAGE=$(time_of "/api/queues?page=1&page_size=100")
OVER=$(time_of "/api/overview")
SCRAPE=$(time_of "/metrics" "$PROM")
PER_OBJECT=$(time_of "/metrics/per-object" "$PROM")
PER_OBJECT_BYTES=$(curl -s "http://$PROM/metrics/per-object" | wc -c)
RSS=$(awk '/VmRSS/{print $2}' /proc/$PID/status)
echo "{\"queues\": $N, \"declare_s\": $declared, \"queues_page\": $PAGE, \"overview\": $OVER, \"metrics\": $SCRAPE, \"metrics_per_object\": $PER_OBJECT, \"per_object_bytes\": $PER_OBJECT_BYTES, \"broker_rss_kib\": $RSS}"
