#!/usr/bin/env bash
# rabbitmqadmin (the management plugin's own CLI, shipped in Debian's rabbitmq-server
# package) against a broker's management HTTP API: list, declare, publish, get, purge,
# delete and export, each checked for the outcome RabbitMQ 3.10.8 gives.
#
# Usage: conformance/rabbitmqadmin.sh [HOST PORT]
#
#   With HOST and PORT: that management API (guest/guest, vhost /), e.g.
#   `conformance/rabbitmqadmin.sh 127.0.0.1 15672` for a local RabbitMQ with
#   rabbitmq_management enabled (every check must pass there first).
#   Without arguments: start target/debug/warren (built with `cargo build` when missing)
#   with its AMQP and management listeners on free ports, run the checks, stop it.
#
# Prints TAP, then "N passed, M failed"; exit status is non-zero when M > 0. Objects are
# named conformance-admin-* and deleted at the end. Not part of conformance/run.sh yet
# (that script knows only the AMQP port). Counts in listings are not checked: RabbitMQ's
# statistics lag by seconds.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
ADMIN="$(command -v rabbitmqadmin || true)"
if [ -z "$ADMIN" ]; then
    echo "rabbitmqadmin: not installed (Debian's rabbitmq-server package ships it)" >&2
    echo "0 passed, 1 failed"
    exit 1
fi

PID=""
TMP="$(mktemp -d)"
cleanup() {
    [ -z "$PID" ] || kill "$PID" 2>/dev/null
    [ -z "$PID" ] || wait "$PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

if [ $# -eq 2 ]; then
    HOST="$1"
    PORT="$2"
elif [ $# -eq 0 ]; then
    WARREN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/warren"
    [ -x "$WARREN" ] || (cd "$ROOT" && cargo build -q) || exit 1
    # Run from the temp dir so no rabbit.toml in the caller's directory is picked up.
    (cd "$TMP" && exec "$WARREN" --bind 127.0.0.1:0 --management-bind 127.0.0.1:0 \
        --data-dir "$TMP/data" --log warn > "$TMP/out" 2> "$TMP/err") &
    PID=$!
    for _ in $(seq 100); do
        grep -q "management listening" "$TMP/out" 2>/dev/null && break
        sleep 0.1
    done
    ADDR="$(grep "management listening" "$TMP/out" | awk '{print $NF}')"
    [ -n "$ADDR" ] || { cat "$TMP/err" >&2; echo "0 passed, 1 failed"; exit 1; }
    HOST="${ADDR%:*}"
    PORT="${ADDR##*:}"
else
    echo "usage: $0 [HOST PORT]" >&2
    exit 2
fi

admin() { "$ADMIN" -H "$HOST" -P "$PORT" -u guest -p guest "$@" 2>&1; }
PASS=0
FAIL=0
N=0
# check NAME EXPECTED-SUBSTRING COMMAND...: the command's output must contain it.
check() {
    local name="$1" want="$2"
    shift 2
    local out
    out="$("$@")"
    N=$((N + 1))
    if [[ "$out" == *"$want"* ]]; then
        PASS=$((PASS + 1))
        echo "ok $N - $name"
    else
        FAIL=$((FAIL + 1))
        echo "not ok $N - $name"
        echo "#   wanted: $want"
        printf '%s\n' "$out" | sed 's/^/#   got: /'
    fi
}
# json PYTHON-EXPR COMMAND...: prints the expression evaluated on the command's JSON as `d`.
json() {
    local expr="$1"
    shift
    "$@" | python3 -c "import json,sys; d=json.load(sys.stdin); print($expr)" 2>&1
}

Q=conformance-admin-q
X=conformance-admin-x
admin delete queue name=$Q > /dev/null
admin delete exchange name=$X > /dev/null

check "declare queue" "queue declared" admin declare queue name=$Q durable=false
check "declare exchange" "exchange declared" admin declare exchange name=$X type=fanout
check "declare binding" "binding declared" \
    admin declare binding source=$X destination=$Q routing_key=k
check "list queues shows it" "$Q" admin list queues name
check "list exchanges shows it with its type" "fanout" \
    json "[x['type'] for x in d if x['name']=='$X']" admin -f raw_json list exchanges
check "list bindings shows the binding" "['k']" \
    json "[b['routing_key'] for b in d if b['source']=='$X']" admin -f raw_json list bindings
check "list bindings shows the default exchange's" "['$Q']" \
    json "[b['routing_key'] for b in d if b['source']=='' and b['destination']=='$Q']" \
    admin -f raw_json list bindings
check "list vhosts" "True" json "'/' in [v['name'] for v in d]" admin -f raw_json list vhosts
check "list connections" "[]" json "[c['user'] for c in d if c['user']!='guest']" \
    admin -f raw_json list connections
check "publish routes" "Message published" \
    admin publish exchange=$X routing_key=k payload=hello
check "publish unroutable says so" "Message published but NOT routed" \
    admin publish exchange=amq.direct routing_key=nowhere payload=x
check "get with requeue" "('hello', False)" \
    json "(d[0]['payload'], d[0]['redelivered'])" \
    admin -f raw_json get queue=$Q ackmode=ack_requeue_true
check "get again sees it redelivered" "('hello', True, 'string')" \
    json "(d[0]['payload'], d[0]['redelivered'], d[0]['payload_encoding'])" \
    admin -f raw_json get queue=$Q ackmode=ack_requeue_false
check "the queue is empty after an ack" "[]" json "d" admin -f raw_json get queue=$Q
admin publish exchange=$X routing_key=k payload=again > /dev/null
check "purge" "queue purged" admin purge queue name=$Q
check "get from an empty queue" "[]" json "d" admin -f raw_json get queue=$Q
check "export" "Exported definitions" admin export "$TMP/defs.json"
check "export has the queue, exchange and binding" "(['$Q'], ['$X'], ['k'])" \
    python3 -c "import json; d=json.load(open('$TMP/defs.json')); print(([q['name'] for q in d['queues'] if q['name']=='$Q'], [x['name'] for x in d['exchanges'] if x['name']=='$X'], [b['routing_key'] for b in d['bindings'] if b['source']=='$X']))"
check "delete binding" "binding deleted" \
    admin delete binding source=$X destination=$Q destination_type=queue properties_key=k
check "delete queue" "queue deleted" admin delete queue name=$Q
check "delete exchange" "exchange deleted" admin delete exchange name=$X
check "a deleted queue is not found" "Not found" admin delete queue name=$Q
check "import" "Uploaded definitions" admin import "$TMP/defs.json"
check "import brought the queue back" "['$Q']" \
    json "[q['name'] for q in d if q['name']=='$Q']" admin -f raw_json list queues name
check "overview" "3.10.8" json "d[0]['rabbitmq_version']" admin -f raw_json show overview
admin delete queue name=$Q > /dev/null
admin delete exchange name=$X > /dev/null

echo "1..$N"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
