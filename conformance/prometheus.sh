#!/usr/bin/env bash
# The Prometheus endpoint checked by Prometheus's own tool and by the family names
# RabbitMQ's rabbitmq_prometheus plugin exposes (what dashboards made for it query).
#
# Usage: conformance/prometheus.sh HOST PORT   (the metrics listener, e.g. 127.0.0.1 15692)
#
# Checks: /metrics and /metrics/per-object answer 200 in the text format; `promtool check
# metrics` (Debian's prometheus package) accepts both, lint included; the families below
# are present. compat: RabbitMQ 3.10.8's own scrape fails promtool's lint (counters
# without _total, _count gauges from its Erlang collectors), so on a broker that is not
# Warren the promtool checks are skipped, with the reason. Prints TAP, then
# "N passed, M failed"; exit status is non-zero when M > 0.
set -uo pipefail
HOST="$1"
PORT="$2"
N=0
FAILED=0
ok() { N=$((N + 1)); echo "ok $N - $1"; }
not_ok() { N=$((N + 1)); FAILED=$((FAILED + 1)); echo "not ok $N - $1"; [ -z "${2:-}" ] || echo "# $2"; }
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

for path in /metrics /metrics/per-object; do
    f="$TMP/$(echo "$path" | tr / _)"
    code="$(curl -s -o "$f" -w '%{http_code}' "http://$HOST:$PORT$path")"
    if [ "$code" = 200 ] && grep -q '^# TYPE ' "$f"; then ok "GET $path answers 200 in the text format"
    else not_ok "GET $path answers 200 in the text format" "status $code"; fi
done
WARREN=""
grep -q 'product_name="Warren"' "$TMP/_metrics" && WARREN=1
for path in /metrics /metrics/per-object; do
    f="$TMP/$(echo "$path" | tr / _)"
    if [ -z "$WARREN" ]; then
        N=$((N + 1)); echo "ok $N - promtool check metrics $path # SKIP not Warren (RabbitMQ fails promtool lint)"
    elif out="$(promtool check metrics < "$f" 2>&1)"; then
        ok "promtool check metrics accepts $path"
    else
        not_ok "promtool check metrics accepts $path" "$(echo "$out" | head -n 5 | tr '\n' ';')"
    fi
done
for family in rabbitmq_connections rabbitmq_channels rabbitmq_consumers rabbitmq_queues \
    rabbitmq_queue_messages rabbitmq_queue_messages_ready rabbitmq_queue_messages_unacked \
    rabbitmq_global_messages_received_total rabbitmq_global_messages_delivered_total \
    rabbitmq_global_messages_acknowledged_total rabbitmq_global_messages_confirmed_total \
    rabbitmq_global_messages_routed_total rabbitmq_global_messages_unroutable_dropped_total \
    rabbitmq_process_resident_memory_bytes rabbitmq_disk_space_available_bytes \
    rabbitmq_alarms_memory_used_watermark rabbitmq_alarms_free_disk_space_watermark \
    rabbitmq_alarms_file_descriptor_limit; do
    if grep -q "^# TYPE $family " "$TMP/_metrics"; then ok "/metrics has $family"
    else not_ok "/metrics has $family"; fi
done
echo "1..$N"
echo "$((N - FAILED)) passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
