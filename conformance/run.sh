#!/usr/bin/env bash
# Conformance suites for Warren (or any AMQP 0-9-1 broker).
#
# Usage: conformance/run.sh [HOST PORT]
#
#   With HOST and PORT: run the suites against that broker (guest/guest, vhost /),
#   e.g. `conformance/run.sh 127.0.0.1 5673` for a local RabbitMQ.
#   Without arguments: `cargo build --release`, start target/release/warren on a
#   free loopback port with a temporary data dir, run the suites, stop it.
#
# Suites: (a) py-amqp's t/integration/test_rmq.py (non-TLS cases) from the pinned
# amqp sdist, minus conformance/skip/py-amqp.txt; (b) the pika scenarios in
# conformance/python/scenarios/ (including the aio-pika robust-connection scenario),
# minus conformance/skip/pika.txt; (c) conformance/perl/*.t with AnyEvent::RabbitMQ
# (Debian's libanyevent-rabbitmq-perl, installed with apt-get when missing); (d)
# conformance/node/amqplib.test.js with the amqplib pinned in conformance/node/
# package-lock.json (node/npm from apt-get when missing, `npm ci` into
# conformance/node/node_modules); (e) conformance/rabbitmqadmin.sh, rabbitmqadmin
# against the broker's management HTTP API (rabbitmqadmin from Debian's
# rabbitmq-server package, installed with apt-get --no-install-recommends when
# missing, the server kept from starting); (f) conformance/prometheus.sh, promtool
# (Debian's prometheus package, installed the same way) and RabbitMQ's family names on
# the metrics endpoint (Warren's printed address, or HOST:$CONFORMANCE_METRICS_PORT,
# default 15692). (c) to (f) print TAP, turned into JUnit XML. The last line printed is
# "N passed, M failed[, K skipped]", summed over all six suites; exit status is
# non-zero when M > 0.
#
# The management API: when this script starts Warren, at the address Warren prints
# ("warren management listening on ADDR"; it is started with --management-bind
# 127.0.0.1:0); with HOST and PORT, at HOST:$CONFORMANCE_MGMT_PORT (default 15672),
# and suite (e) is skipped (one skipped test, with the reason) when nothing listens
# there.
#
# Environment: WARREN_BIN (the warren binary to start when no HOST PORT is given;
# default: `cargo build --release` and target/release/warren), CONFORMANCE_MGMT_PORT
# (see above), CONFORMANCE_TIMEOUT (per-test timeout, s, default 30),
# CONFORMANCE_SUITE_TIMEOUT (whole-suite bound, s, default 900; a suite killed
# by it counts as one failure; the Perl and Node suites are bounded by the smaller
# of it and CONFORMANCE_TAP_SUITE_TIMEOUT, default 120; so is the rabbitmqadmin suite),
# CONFORMANCE_PYTHON (interpreter used to create the venv, default python3),
# PYTEST_ARGS (extra arguments for both pytest runs, split on whitespace, no
# quoting; e.g. "-x" or "-k qos"; py-amqp's own -k "not tls" wins over a -k here).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
VENV="$HERE/.venv"
CACHE="$HERE/.cache"
RESULTS="$CACHE/results"
REQS="$HERE/python/requirements.txt"
INI="$HERE/python/pytest.ini"
TIMEOUT="${CONFORMANCE_TIMEOUT:-30}"
SUITE_TIMEOUT="${CONFORMANCE_SUITE_TIMEOUT:-900}"
TAP_SUITE_TIMEOUT="${CONFORMANCE_TAP_SUITE_TIMEOUT:-120}"
[ "$TAP_SUITE_TIMEOUT" -le "$SUITE_TIMEOUT" ] || TAP_SUITE_TIMEOUT="$SUITE_TIMEOUT"
NODE_DIR="$HERE/node"
PY="${CONFORMANCE_PYTHON:-python3}"
export PYTHONDONTWRITEBYTECODE=1

fail_early() {
    echo "conformance: $*" >&2
    echo "0 passed, 1 failed"
    exit 1
}

if [ $# -eq 2 ]; then
    HOST="$1"
    PORT="$2"
elif [ $# -eq 0 ]; then
    HOST=""
    PORT=""
else
    echo "usage: $0 [HOST PORT]" >&2
    exit 2
fi

# --- Python environment -------------------------------------------------------
mkdir -p "$CACHE" "$RESULTS"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" || fail_early "cannot create venv at $VENV (on Debian: apt-get install python3-venv)"
fi
REQS_HASH="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$REQS_HASH" ]; then
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQS" \
        || fail_early "pip install -r $REQS failed"
    echo "$REQS_HASH" > "$VENV/.requirements.sha256"
fi

# --- py-amqp integration tests from the pinned sdist --------------------------
AMQP_VERSION="$(sed -n 's/^amqp==\([^ #]*\).*/\1/p' "$REQS")"
[ -n "$AMQP_VERSION" ] || fail_early "no amqp==VERSION pin in $REQS"
AMQP_SRC="$CACHE/amqp-$AMQP_VERSION"
if [ ! -f "$AMQP_SRC/t/integration/test_rmq.py" ]; then
    SDIST="$CACHE/amqp-$AMQP_VERSION.tar.gz"
    if [ ! -f "$SDIST" ]; then
        "$VENV/bin/pip" download -q --disable-pip-version-check --no-binary :all: \
            --no-deps "amqp==$AMQP_VERSION" -d "$CACHE" \
            || fail_early "cannot download the amqp $AMQP_VERSION sdist"
    fi
    tar -xzf "$SDIST" -C "$CACHE" "amqp-$AMQP_VERSION/t/__init__.py" \
        "amqp-$AMQP_VERSION/t/integration" \
        || fail_early "cannot extract t/integration from $SDIST"
fi

# --- Perl, Node and rabbitmqadmin prerequisites ------------------------------------
# A missing prerequisite fails only its own suite (one failure, with the reason).
# apt_install [--no-install-recommends] [--no-start] PKG...: --no-start keeps the
# packages' maintainer scripts from starting services, with a policy-rc.d that
# answers 101 ("action forbidden", see /usr/share/doc/init-system-helpers/
# README.policy-rc.d) for the install when the system has none.
apt_install() {
    local sudo=() opts=() no_start=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --no-install-recommends) opts+=("$1"); shift ;;
            --no-start) no_start=1; shift ;;
            *) break ;;
        esac
    done
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "not root and no passwordless sudo: install them by hand (apt-get install -y $*)"
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "apt-get not found: install $* by hand"
        return 1
    fi
    echo "conformance: apt-get install -y ${opts[*]} $*" >&2
    local log="$RESULTS/apt.log" policy=/usr/sbin/policy-rc.d made_policy="" rc=0
    if [ -n "$no_start" ] && [ ! -e "$policy" ]; then
        "${sudo[@]}" sh -c "printf '#!/bin/sh\\nexit 101\\n' > $policy && chmod 755 $policy" \
            && made_policy=1
    fi
    { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${opts[@]}" "$@" >"$log" 2>&1 \
        || { "${sudo[@]}" apt-get update -q >>"$log" 2>&1 \
             && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${opts[@]}" "$@" >>"$log" 2>&1; }; } \
        || rc=1
    [ -z "$made_policy" ] || "${sudo[@]}" rm -f "$policy"
    [ "$rc" -eq 0 ] || { echo "apt-get install -y ${opts[*]} $* failed (see $log)"; return 1; }
}

# Prints the reason on stdout and returns non-zero when the Perl suite cannot run.
setup_perl() {
    perl_ok() { perl -MAnyEvent::RabbitMQ -MTest::More -e 1 >/dev/null 2>&1; }
    perl_ok && return 0
    apt_install perl libanyevent-rabbitmq-perl || return 1
    perl_ok || { echo "perl cannot load AnyEvent::RabbitMQ after installing libanyevent-rabbitmq-perl"; return 1; }
}

setup_node() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        local pkgs=()
        command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
        command -v npm >/dev/null 2>&1 || pkgs+=(npm)
        apt_install "${pkgs[@]}" || return 1
    fi
    local major
    major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null)"
    [ "${major:-0}" -ge 18 ] 2>/dev/null || { echo "amqplib needs node >= 18, found $(node --version 2>&1)"; return 1; }
    local lock_hash
    lock_hash="$(cat "$NODE_DIR/package.json" "$NODE_DIR/package-lock.json" | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$NODE_DIR/node_modules/.conformance.sha256" 2>/dev/null)" != "$lock_hash" ]; then
        (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error >"$RESULTS/npm.log" 2>&1) \
            || { echo "npm ci in $NODE_DIR failed (see $RESULTS/npm.log)"; return 1; }
        echo "$lock_hash" > "$NODE_DIR/node_modules/.conformance.sha256"
    fi
}

# rabbitmqadmin ships in rabbitmq-server (which pulls Erlang, not a running server:
# --no-start); it is a python3 script.
setup_rabbitmqadmin() {
    if ! command -v rabbitmqadmin >/dev/null 2>&1; then
        apt_install --no-install-recommends --no-start rabbitmq-server || return 1
        command -v rabbitmqadmin >/dev/null 2>&1 \
            || { echo "no rabbitmqadmin on PATH after installing rabbitmq-server"; return 1; }
    fi
    command -v python3 >/dev/null 2>&1 || apt_install python3 || return 1
}

# promtool ships in Debian's prometheus package (the server is kept from starting).
setup_prometheus() {
    command -v curl >/dev/null 2>&1 || apt_install curl || return 1
    if ! command -v promtool >/dev/null 2>&1; then
        apt_install --no-install-recommends --no-start prometheus || return 1
        command -v promtool >/dev/null 2>&1 \
            || { echo "no promtool on PATH after installing prometheus"; return 1; }
    fi
}

PERL_SETUP_ERROR="$(setup_perl)" && PERL_SETUP_ERROR=""
PROM_SETUP_ERROR="$(setup_prometheus)" && PROM_SETUP_ERROR=""
[ -z "$PROM_SETUP_ERROR" ] || echo "conformance: prometheus suite cannot run: $PROM_SETUP_ERROR" >&2
NODE_SETUP_ERROR="$(setup_node)" && NODE_SETUP_ERROR=""
[ -z "$PERL_SETUP_ERROR" ] || echo "conformance: Perl suite cannot run: $PERL_SETUP_ERROR" >&2
ADMIN_SETUP_ERROR="$(setup_rabbitmqadmin)" && ADMIN_SETUP_ERROR=""
[ -z "$NODE_SETUP_ERROR" ] || echo "conformance: Node suite cannot run: $NODE_SETUP_ERROR" >&2
[ -z "$ADMIN_SETUP_ERROR" ] || echo "conformance: rabbitmqadmin suite cannot run: $ADMIN_SETUP_ERROR" >&2

# --- Broker --------------------------------------------------------------------
BROKER_PID=""
DATA_DIR=""
cleanup() {
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill "$BROKER_PID" 2>/dev/null
        for _ in $(seq 1 50); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$BROKER_PID" 2>/dev/null
        wait "$BROKER_PID" 2>/dev/null
    fi
    [ -n "$DATA_DIR" ] && rm -rf "$DATA_DIR" "$DATA_DIR.tls"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() {
    "$VENV/bin/python" - "$1" "$2" <<'EOF'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
EOF
}

# make_certs DIR: a test CA (ca.pem), a server certificate for 127.0.0.1 (server.pem/key),
# a client certificate with CN=guest (client.pem/key), and a client certificate with
# CN=guest from a CA the broker does not trust (stranger.pem/key).
make_certs() {
    local d="$1"
    command -v openssl >/dev/null 2>&1 || apt_install openssl >&2 || return 1
    mkdir -p "$d" && (
        cd "$d" || exit 1
        set -e
        ossl() { openssl "$@" 2>/dev/null; }
        ossl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=warren test CA" \
            -keyout ca.key -out ca.pem
        ossl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=stranger CA" \
            -keyout stranger-ca.key -out stranger-ca.pem
        # v3 certificates (extensions given): webpki, under rustls, refuses v1 ones.
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > server.ext
        printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > client.ext
        ossl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
        ossl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile server.ext -out server.pem
        ossl req -newkey rsa:2048 -nodes -subj "/CN=guest/O=conformance" -keyout client.key -out client.csr
        ossl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile client.ext -out client.pem
        ossl req -newkey rsa:2048 -nodes -subj "/CN=guest/O=stranger" -keyout stranger.key -out stranger.csr
        ossl x509 -req -in stranger.csr -CA stranger-ca.pem -CAkey stranger-ca.key -CAcreateserial \
            -days 2 -extfile client.ext -out stranger.pem
    )
}

MGMT_HOST=""
METRICS_HOST=""
METRICS_PORT=""
MGMT_PORT=""
ADMIN_SKIP=""
if [ -z "$HOST" ]; then
    if [ -n "${WARREN_BIN:-}" ]; then
        WARREN="$WARREN_BIN"
        [ -x "$WARREN" ] || fail_early "WARREN_BIN=$WARREN is not an executable"
    else
        (cd "$ROOT" && cargo build --release) || fail_early "cargo build --release failed"
        WARREN="${CARGO_TARGET_DIR:-$ROOT/target}/release/warren"
        [ -x "$WARREN" ] || fail_early "$WARREN not found after cargo build"
    fi
    HOST=127.0.0.1
    PORT="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
    DATA_DIR="$(mktemp -d)"
    # AMQPS for the pika TLS scenarios: a CA, a server certificate for 127.0.0.1, a client
    # certificate whose CN is guest (EXTERNAL), and one from another CA (to be refused).
    TLS_DIR="$DATA_DIR.tls"
    make_certs "$TLS_DIR" || fail_early "openssl could not make the test certificates"
    cat > "$TLS_DIR/warren.toml" <<EOF
auth_mechanisms = ["PLAIN", "AMQPLAIN", "EXTERNAL"]
ssl_cert_login_from = "common_name"
[tls]
certfile = "$TLS_DIR/server.pem"
keyfile = "$TLS_DIR/server.key"
cacertfile = "$TLS_DIR/ca.pem"
verify_peer = true
fail_if_no_peer_cert = false
EOF
    # The management API on a free port: 15672 may be a RabbitMQ's.
    "$WARREN" --config "$TLS_DIR/warren.toml" --bind "$HOST:$PORT" --bind-tls 127.0.0.1:0 \
        --management-bind 127.0.0.1:0 --prometheus-bind 127.0.0.1:0 --data-dir "$DATA_DIR" \
        > "$RESULTS/warren.log" 2>&1 &
    BROKER_PID=$!
    echo "conformance: started warren (pid $BROKER_PID) on $HOST:$PORT, log $RESULTS/warren.log"
    deadline=$((SECONDS + 30))
    until port_open "$HOST" "$PORT"; do
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            tail -n 20 "$RESULTS/warren.log" >&2
            fail_early "warren exited before accepting connections"
        fi
        [ $SECONDS -lt $deadline ] || fail_early "warren did not accept connections on $HOST:$PORT within 30 s"
        sleep 0.2
    done
    # Printed when the management listener is bound, around the AMQP one's time.
    for _ in $(seq 1 50); do
        MGMT_ADDR="$(sed -n 's/.*warren management listening on \([^ ]*\).*/\1/p' "$RESULTS/warren.log" | head -n 1)"
        [ -z "$MGMT_ADDR" ] || break
        sleep 0.1
    done
    AMQPS_ADDR="$(sed -n 's/.*warren amqps listening on \([^ ]*\).*/\1/p' "$RESULTS/warren.log" | head -n 1)"
    if [ -n "$AMQPS_ADDR" ]; then
        export AMQPS_PORT="${AMQPS_ADDR##*:}" AMQPS_CA="$TLS_DIR/ca.pem" \
            AMQPS_CERT="$TLS_DIR/client.pem" AMQPS_KEY="$TLS_DIR/client.key" \
            AMQPS_BAD_CERT="$TLS_DIR/stranger.pem" AMQPS_BAD_KEY="$TLS_DIR/stranger.key"
    fi
    METRICS_ADDR="$(sed -n 's/.*warren prometheus listening on \([^ ]*\).*/\1/p' "$RESULTS/warren.log" | head -n 1)"
    if [ -n "$METRICS_ADDR" ]; then
        METRICS_HOST="${METRICS_ADDR%:*}"
        METRICS_PORT="${METRICS_ADDR##*:}"
    else
        PROM_SETUP_ERROR="${PROM_SETUP_ERROR:-warren printed no 'warren prometheus listening on ADDR' line}"
    fi
    if [ -n "$MGMT_ADDR" ]; then
        MGMT_HOST="${MGMT_ADDR%:*}"
        MGMT_PORT="${MGMT_ADDR##*:}"
    else
        ADMIN_SETUP_ERROR="${ADMIN_SETUP_ERROR:-warren printed no 'warren management listening on ADDR' line (see $RESULTS/warren.log)}"
    fi
else
    port_open "$HOST" "$PORT" || fail_early "nothing accepts connections on $HOST:$PORT"
    MGMT_HOST="$HOST"
    MGMT_PORT="${CONFORMANCE_MGMT_PORT:-15672}"
    METRICS_HOST="$HOST"
    METRICS_PORT="${CONFORMANCE_METRICS_PORT:-15692}"
    port_open "$METRICS_HOST" "$METRICS_PORT" \
        || PROM_SETUP_ERROR="${PROM_SETUP_ERROR:-nothing accepts connections on $METRICS_HOST:$METRICS_PORT (set CONFORMANCE_METRICS_PORT)}"
    port_open "$MGMT_HOST" "$MGMT_PORT" \
        || ADMIN_SKIP="no management API: nothing accepts connections on $MGMT_HOST:$MGMT_PORT (set CONFORMANCE_MGMT_PORT)"
fi

# --- Suites ---------------------------------------------------------------------
# shellcheck disable=SC2206
EXTRA=(${PYTEST_ARGS:-})
COMMON=(-c "$INI" -p skiplist -q -rfE --timeout "$TIMEOUT" "${EXTRA[@]}")
export PYTHONPATH="$HERE/python${PYTHONPATH:+:$PYTHONPATH}"
rm -f "$RESULTS/py-amqp.xml" "$RESULTS/pika.xml" "$RESULTS/perl.xml" "$RESULTS/amqplib.xml" \
    "$RESULTS/rabbitmqadmin.xml" "$RESULTS/perl.tap" "$RESULTS/amqplib.tap" "$RESULTS/rabbitmqadmin.tap" \
    "$RESULTS/prometheus.xml" "$RESULTS/prometheus.tap"

echo "== py-amqp $AMQP_VERSION t/integration/test_rmq.py against $HOST:$PORT"
(cd "$AMQP_SRC" && RABBITMQ_HOST="$HOST" RABBITMQ_5672_TCP="$PORT" \
    CONFORMANCE_SKIP_FILE="$HERE/skip/py-amqp.txt" \
    timeout -k 10 "$SUITE_TIMEOUT" "$VENV/bin/python" -m pytest "${COMMON[@]}" --rootdir "$AMQP_SRC" \
    --junitxml "$RESULTS/py-amqp.xml" -k "not tls" t/integration/test_rmq.py)
RC_AMQP=$?

echo "== pika scenarios against $HOST:$PORT"
(cd "$HERE/python/scenarios" && AMQP_HOST="$HOST" AMQP_PORT="$PORT" \
    MGMT_HOST="$MGMT_HOST" MGMT_PORT="$MGMT_PORT" \
    CONFORMANCE_SKIP_FILE="$HERE/skip/pika.txt" \
    timeout -k 10 "$SUITE_TIMEOUT" "$VENV/bin/python" -m pytest "${COMMON[@]}" --rootdir "$HERE/python/scenarios" \
    --junitxml "$RESULTS/pika.xml" .)
RC_PIKA=$?

# tap_suite NAME SETUP_ERROR CMD...: runs CMD (TAP on stdout, shown and kept in
# $RESULTS/NAME.tap) under the suite timeout, then writes $RESULTS/NAME.xml.
tap_suite() {
    local name="$1" setup_error="$2" rc=0
    shift 2
    if [ -z "$setup_error" ]; then
        # stderr too: Test::More's diagnostics ("# ...") follow the test they explain.
        timeout -k 10 "$TAP_SUITE_TIMEOUT" "$@" 2>&1 | tee "$RESULTS/$name.tap"
        rc=${PIPESTATUS[0]}
        [ "$rc" -ne 124 ] || echo "conformance: $name suite killed after $TAP_SUITE_TIMEOUT s" >&2
    else
        echo "conformance: $name: not run: $setup_error"
        : > "$RESULTS/$name.tap"
    fi
    "$VENV/bin/python" "$HERE/python/tap_junit.py" "$name" "$RESULTS/$name.tap" "$rc" \
        "$RESULTS/$name.xml" "$setup_error"
}

echo "== Perl AnyEvent::RabbitMQ against $HOST:$PORT"
# Every perl/*.t in turn; their TAP streams are concatenated (each with its own plan).
# shellcheck disable=SC2016
tap_suite perl "$PERL_SETUP_ERROR" bash -c \
    'rc=0; for t in "$1"/*.t; do perl "$t" "$2" "$3" || rc=1; done; exit $rc' \
    _ "$HERE/perl" "$HOST" "$PORT"
RC_PERL=0

echo "== Node amqplib against $HOST:$PORT"
tap_suite amqplib "$NODE_SETUP_ERROR" node "$NODE_DIR/amqplib.test.js" "$HOST" "$PORT"
RC_NODE=0

if [ -n "$ADMIN_SKIP" ]; then
    echo "== rabbitmqadmin: skipped: $ADMIN_SKIP"
    echo "ok 1 - rabbitmqadmin suite # SKIP $ADMIN_SKIP" > "$RESULTS/rabbitmqadmin.tap"
    "$VENV/bin/python" "$HERE/python/tap_junit.py" rabbitmqadmin "$RESULTS/rabbitmqadmin.tap" 0 \
        "$RESULTS/rabbitmqadmin.xml"
else
    echo "== rabbitmqadmin against the management API at $MGMT_HOST:$MGMT_PORT (AMQP $HOST:$PORT)"
    tap_suite rabbitmqadmin "$ADMIN_SETUP_ERROR" bash "$HERE/rabbitmqadmin.sh" \
        "$MGMT_HOST" "$MGMT_PORT" "$PORT"
fi
RC_ADMIN=0

echo "== Prometheus endpoint at ${METRICS_HOST:-?}:${METRICS_PORT:-?}"
tap_suite prometheus "$PROM_SETUP_ERROR" bash "$HERE/prometheus.sh" "${METRICS_HOST:-}" "${METRICS_PORT:-}"
RC_PROM=0

# --- Summary ---------------------------------------------------------------------
"$VENV/bin/python" - "$RESULTS/py-amqp.xml" "$RC_AMQP" "$RESULTS/pika.xml" "$RC_PIKA" \
    "$RESULTS/perl.xml" "$RC_PERL" "$RESULTS/amqplib.xml" "$RC_NODE" \
    "$RESULTS/rabbitmqadmin.xml" "$RC_ADMIN" "$RESULTS/prometheus.xml" "$RC_PROM" <<'EOF'
import sys
import xml.etree.ElementTree as ET

passed = failed = skipped = 0
args = sys.argv[1:]
for xml_path, rc in zip(args[0::2], args[1::2]):
    rc = int(rc)
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as e:
        print("conformance: no usable results in %s (pytest exit %d): %s" % (xml_path, rc, e),
              file=sys.stderr)
        failed += 1
        continue
    p = f = s = 0
    for case in root.iter("testcase"):
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            f += 1
        elif "skipped" in kinds:
            s += 1
        else:
            p += 1
    if rc not in (0, 1) and f == 0:
        # interrupted, internal error, usage error or no tests collected
        print("conformance: pytest exited %d for %s" % (rc, xml_path), file=sys.stderr)
        f += 1
    passed, failed, skipped = passed + p, failed + f, skipped + s
line = "%d passed, %d failed" % (passed, failed)
if skipped:
    line += ", %d skipped" % skipped
print(line)
sys.exit(1 if failed else 0)
EOF
