#!/usr/bin/env bash
# rabbitmqadmin (the management plugin's own CLI, shipped in Debian's rabbitmq-server
# package) against a broker's management HTTP API: list, declare, publish, get, purge,
# delete and export of topology; declare, list and delete of vhosts, users (with tags),
# permissions, policies and vhost limits; what the new user may do over AMQP (pika)
# and over the API (by tag and permissions). Each checked for the outcome RabbitMQ
# 3.10.8 gives.
#
# Usage: conformance/rabbitmqadmin.sh [HOST PORT [AMQP_PORT]]
#
#   With HOST and PORT: that management API (guest/guest, vhost /), e.g.
#   `conformance/rabbitmqadmin.sh 127.0.0.1 15672` for a local RabbitMQ with
#   rabbitmq_management enabled (every check must pass there first). The AMQP port
#   (for the log-in checks) is AMQP_PORT, else the amqp listener in /api/overview.
#   Without HOST and PORT: start $WARREN_BIN (default target/debug/warren, built with
#   `cargo build` when missing) with its AMQP and management listeners on free ports,
#   run the checks, stop it.
#
# The AMQP checks use pika: conformance/.venv's when it has it (run.sh creates it),
# else python3's, else a venv made in conformance/.cache/admin-venv (pip install pika).
#
# Prints TAP, then "N passed, M failed"; exit status is non-zero when M > 0. Objects are
# named conformance-admin-* and deleted at the end (and before starting). Counts in
# listings are not checked: RabbitMQ's statistics lag by seconds. conformance/run.sh
# runs this as one of its suites.
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
HOST=""
PORT=""
cleanup() {
    [ -z "$PORT" ] || cleanup_objects
    [ -z "$PID" ] || kill "$PID" 2>/dev/null
    [ -z "$PID" ] || wait "$PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

AMQP_PORT=""
if [ $# -eq 2 ] || [ $# -eq 3 ]; then
    HOST="$1"
    PORT="$2"
    AMQP_PORT="${3:-}"
elif [ $# -eq 0 ]; then
    if [ -n "${WARREN_BIN:-}" ]; then
        WARREN="$WARREN_BIN"
        [ -x "$WARREN" ] || { echo "WARREN_BIN=$WARREN: not executable" >&2; echo "0 passed, 1 failed"; exit 1; }
    else
        WARREN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/warren"
        [ -x "$WARREN" ] || (cd "$ROOT" && cargo build -q) || exit 1
    fi
    # Run from the temp dir so no rabbit.toml in the caller's directory is picked up.
    (cd "$TMP" && exec "$WARREN" --bind 127.0.0.1:0 --management-bind 127.0.0.1:0 --prometheus-bind 127.0.0.1:0 \
        --data-dir "$TMP/data" --log warn > "$TMP/out" 2> "$TMP/err") &
    PID=$!
    for _ in $(seq 100); do
        grep -q "management listening" "$TMP/out" 2>/dev/null && break
        sleep 0.1
    done
    ADDR="$(grep "management listening" "$TMP/out" | awk '{print $NF}')"
    [ -n "$ADDR" ] || { cat "$TMP/err" >&2; echo "0 passed, 1 failed"; exit 1; }
    AMQP_ADDR="$(grep "^warren listening on" "$TMP/out" | awk '{print $NF}')"
    AMQP_PORT="${AMQP_ADDR##*:}"
    HOST="${ADDR%:*}"
    PORT="${ADDR##*:}"
else
    echo "usage: $0 [HOST PORT [AMQP_PORT]]" >&2
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

# as USER PASSWORD ARGS...: rabbitmqadmin logged in as that user.
as() {
    local user="$1" password="$2"
    shift 2
    "$ADMIN" -H "$HOST" -P "$PORT" -u "$user" -p "$password" "$@" 2>&1
}
# status COMMAND...: the command's output, then "exit STATUS".
status() {
    "$@"
    echo "exit $?"
}

# pika for the AMQP log-in checks.
PIKA_PY=""
for py in "$HERE/.venv/bin/python" python3; do
    if "$py" -c 'import pika' >/dev/null 2>&1; then
        PIKA_PY="$py"
        break
    fi
done
if [ -z "$PIKA_PY" ]; then
    ADMIN_VENV="$HERE/.cache/admin-venv"
    PIKA_PIN="$(grep '^pika==' "$HERE/python/requirements.txt" 2>/dev/null || echo pika)"
    { [ -x "$ADMIN_VENV/bin/python" ] || python3 -m venv "$ADMIN_VENV"; } >&2 \
        && "$ADMIN_VENV/bin/pip" install -q --disable-pip-version-check "$PIKA_PIN" >&2 \
        && PIKA_PY="$ADMIN_VENV/bin/python"
fi
if [ -z "$AMQP_PORT" ]; then
    AMQP_PORT="$("$ADMIN" -H "$HOST" -P "$PORT" -u guest -p guest -f raw_json show overview \
        2>/dev/null | python3 -c "import json,sys; print([l['port'] for l in json.load(sys.stdin)[0]['listeners'] if l['protocol']=='amqp'][0])" 2>/dev/null)"
fi
# amqp USER PASSWORD VHOST [QUEUE]: log in over AMQP and declare QUEUE (auto-delete);
# prints "declared" and "connected", or why the broker refused.
amqp() {
    [ -n "$PIKA_PY" ] || { echo "no python with pika"; return; }
    [ -n "$AMQP_PORT" ] || { echo "AMQP port unknown (give it as the third argument)"; return; }
    "$PIKA_PY" - "$HOST" "$AMQP_PORT" "$@" <<'EOF' 2>&1
import sys
import pika
host, port, user, password, vhost = sys.argv[1:6]
queue = sys.argv[6] if len(sys.argv) > 6 else None
params = pika.ConnectionParameters(host, int(port), vhost, pika.PlainCredentials(user, password),
                                   connection_attempts=1, socket_timeout=5,
                                   blocked_connection_timeout=5)
try:
    conn = pika.BlockingConnection(params)
except Exception as e:
    print("refused: %s %s" % (type(e).__name__, e))
    sys.exit(0)
if queue:
    ch = conn.channel()
    try:
        ch.queue_declare(queue, auto_delete=True)
        print("declared")
    except Exception as e:
        print("declare refused: %s %s" % (type(e).__name__, e))
conn.close()
print("connected")
EOF
}

Q=conformance-admin-q
X=conformance-admin-x
V=conformance-admin-vhost
U=conformance-admin-user
UP=conformance-admin-plain
UPW=conformance-secret
POL=conformance-admin-policy
cleanup_objects() {
    admin delete queue name=$Q > /dev/null
    admin delete exchange name=$X > /dev/null
    admin -V $V delete policy name=$POL > /dev/null
    admin delete user name=$U > /dev/null
    admin delete user name=$UP > /dev/null
    admin delete vhost name=$V > /dev/null
}
cleanup_objects

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

# --- vhosts, users, permissions, policies, limits --------------------------------
check "declare vhost" "vhost declared" admin declare vhost name=$V
check "list vhosts shows the new vhost" "True" \
    json "'$V' in [v['name'] for v in d]" admin -f raw_json list vhosts
check "declare user with the management tag" "user declared" \
    admin declare user name=$U password=$UPW tags=management
check "declare user without tags" "user declared" admin declare user name=$UP password=$UPW tags=
check "list users shows their tags" "[['management'], []]" \
    json "[[u['tags'] for u in d if u['name']==n][0] for n in ('$U', '$UP')]" \
    admin -f raw_json list users
check "declare permission" "permission declared" \
    admin declare permission vhost=$V user=$U configure='^conf-.*' write='.*' read='.*'
check "list permissions shows it" "[('$V', '^conf-.*', '.*', '.*')]" \
    json "[(p['vhost'], p['configure'], p['write'], p['read']) for p in d if p['user']=='$U']" \
    admin -f raw_json list permissions
check "the vhost's creator got full permissions on it" "[('.*', '.*', '.*')]" \
    json "[(p['configure'], p['write'], p['read']) for p in d if p['user']=='guest' and p['vhost']=='$V']" \
    admin -f raw_json list permissions
check "declare policy" "policy declared" \
    admin -V $V declare policy name=$POL pattern='^conf-' definition='{"max-length":10}' \
    apply-to=queues priority=1
check "list policies shows it" "[('$V', '^conf-', 'queues', {'max-length': 10}, 1)]" \
    json "[(p['vhost'], p['pattern'], p['apply-to'], p['definition'], p['priority']) for p in d if p['name']=='$POL']" \
    admin -f raw_json list policies
check "declare vhost_limit" "vhost_limit declared" \
    admin declare vhost_limit vhost=$V name=max-connections value=5
check "list vhost_limits shows it" "[{'max-connections': 5}]" \
    json "[l['value'] for l in d if l['vhost']=='$V']" admin -f raw_json list vhost_limits

# --- what the new user may do: AMQP ----------------------------------------------
check "the new user logs in over AMQP to the new vhost" "declared" \
    amqp $U $UPW $V conf-amqp-q
check "AMQP enforces the configure pattern" "ACCESS_REFUSED" amqp $U $UPW $V other-amqp-q
check "AMQP refuses a vhost the user has no permission on" "(530)" amqp $U $UPW /
check "AMQP refuses a wrong password" "(403)" amqp $U wrong $V

# --- what the new user may do: the management API ---------------------------------
check "a management user lists only its vhosts" "['$V']" \
    json "[v['name'] for v in d]" as $U $UPW -f raw_json list vhosts
check "a management user cannot declare a vhost" "exit 1" \
    status as $U $UPW declare vhost name=$V-2
check "a management user declares within its configure pattern" "queue declared" \
    as $U $UPW -V $V declare queue name=conf-admin-q
check "a management user is refused outside its configure pattern" "exit 1" \
    status as $U $UPW -V $V declare queue name=other-admin-q
check "a user without a management tag is refused by the API" "exit 1" \
    status as $UP $UPW list queues
check "a wrong password is refused by the API" "exit 1" status as $U wrong list queues

# --- deletes -----------------------------------------------------------------------
check "delete policy" "policy deleted" admin -V $V delete policy name=$POL
check "list policies no longer shows it" "[]" \
    json "[p['name'] for p in d if p['name']=='$POL']" admin -f raw_json list policies
check "delete permission" "permission deleted" admin delete permission vhost=$V user=$U
check "list permissions no longer shows it" "[]" \
    json "[p['vhost'] for p in d if p['user']=='$U']" admin -f raw_json list permissions
check "without the permission AMQP refuses the vhost" "(530)" amqp $U $UPW $V
check "delete user" "user deleted" admin delete user name=$U
check "delete the user without tags" "user deleted" admin delete user name=$UP
check "list users no longer shows them" "[]" \
    json "[u['name'] for u in d if u['name'] in ('$U', '$UP')]" admin -f raw_json list users
check "a deleted user cannot log in over AMQP" "(403)" amqp $U $UPW $V
check "a deleted user is not found" "Not found" admin delete user name=$U
check "delete vhost" "vhost deleted" admin delete vhost name=$V
check "list vhosts no longer shows it" "False" \
    json "'$V' in [v['name'] for v in d]" admin -f raw_json list vhosts
check "a deleted vhost is not found" "Not found" admin delete vhost name=$V

echo "1..$N"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
