#!/usr/bin/env bash
# Warren vs RabbitMQ on a fixed scenario set, alternating A B A B: classic queues S1–S8
# (S4 also runs with no broker, warren-perf --latency-floor, for the machine's latency
# floor), streams ST1–ST4 (ST3 and ST4 replay one stream filled once per round, STF), and
# the delayed-message exchange D1–D2 (Warren only: RabbitMQ 3.10.8 here has no plugin).
#
#   bench/compare.sh [--quick] [--rounds N] [--s8-count N] [--st-count N] [--d1-count N]
#                    [--only S1,ST3,...] [--warren PATH [--warren-config FILE]]
#                    [--rabbit-host H] [--rabbit-port P]
#                    [--replay-rounds N] [--no-rabbit] [--no-build]
#   bench/compare.sh --report RUN_ID[,RUN_ID...]   # results.md from results.jsonl; for each
#                    scenario the last listed run that has it wins (merge partial reruns)
#
# Builds the release binaries, starts a fresh Warren (free port, temp data dir) for every
# Warren run, uses the RabbitMQ on 127.0.0.1:5673 when it answers, prints a table and writes
# bench/results.md (the table) and appends raw JSON lines to bench/results.jsonl.
# Every step is bounded by a timeout; Warren and the temp dir are cleaned up on exit.
set -u -o pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH="$ROOT/bench"
DUR=10
WARM=2
ROUNDS=2
# The replay chain (STF, ST3, ST4) is long on RabbitMQ (100M deliveries in ST4): one round
# unless asked.
REPLAY_ROUNDS=1
S8_COUNT=10000000
ST_COUNT=10000000
D1_COUNT=1000000
WARREN_BIN=""
# Another build reads ./rabbit.toml of this tree, which may have keys it does not know:
# --warren-config gives it its own.
WARREN_CONFIG=""
ONLY=""
RABBIT_HOST=127.0.0.1
RABBIT_PORT=5673
USE_RABBIT=1
BUILD=1
MODE=full
REPORT=""

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) DUR=3; WARM=1; MODE=quick ;;
        --rounds) ROUNDS=$2; shift ;;
        --replay-rounds) REPLAY_ROUNDS=$2; shift ;;
        --s8-count) S8_COUNT=$2; shift ;;
        --st-count) ST_COUNT=$2; shift ;;
        --d1-count) D1_COUNT=$2; shift ;;
        --warren) WARREN_BIN=$2; BUILD=0; shift ;;
        --warren-config) WARREN_CONFIG=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --rabbit-host) RABBIT_HOST=$2; shift ;;
        --rabbit-port) RABBIT_PORT=$2; shift ;;
        --no-rabbit) USE_RABBIT=0 ;;
        --no-build) BUILD=0 ;;
        --report) REPORT=$2; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

S7_CONNS=1000
S7_HOLD=$(( DUR < 5 ? DUR : 5 ))
PERF="$ROOT/target/release/warren-perf"
WARREN=${WARREN_BIN:-$ROOT/target/release/warren}
TMP=$(mktemp -d /tmp/warren-bench.XXXXXX)
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
RAW="$TMP/raw.jsonl"
: > "$RAW"
WPID=""

log() { echo "[compare $(date +%H:%M:%S)] $*" >&2; }

stop_warren() {
    if [ -n "$WPID" ] && kill -0 "$WPID" 2>/dev/null; then
        kill -TERM "$WPID" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$WPID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$WPID" 2>/dev/null || true
        wait "$WPID" 2>/dev/null || true
    fi
    WPID=""
}

cleanup() {
    stop_warren
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Warren inherits this limit; 1,000 idle connections need more than the usual 1,024.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

start_warren() {
    WPORT=$(free_port)
    local data="$TMP/data-$WPORT"
    local conf=()
    [ -n "$WARREN_CONFIG" ] && conf=(--config "$WARREN_CONFIG")
    # Builds with a metrics endpoint would otherwise take 15692, where RabbitMQ's plugin is.
    "$WARREN" --help 2>/dev/null | grep -q -- --prometheus-bind && conf+=(--prometheus-bind 127.0.0.1:0)
    "$WARREN" "${conf[@]}" --bind "127.0.0.1:$WPORT" --management-bind 127.0.0.1:0 --data-dir "$data" --log warn \
        >"$TMP/warren-$WPORT.log" 2>&1 &
    WPID=$!
    for _ in $(seq 1 100); do
        port_open 127.0.0.1 "$WPORT" && return 0
        kill -0 "$WPID" 2>/dev/null || break
        sleep 0.1
    done
    echo "compare.sh: Warren did not start; log:" >&2
    cat "$TMP/warren-$WPORT.log" >&2
    return 1
}

rabbit_pids() { pgrep -f beam.smp || true; }
rabbit_fd_limit() {
    local p
    p=$(rabbit_pids | head -1)
    [ -n "$p" ] && awk '/Max open files/ {print $4}' "/proc/$p/limits" 2>/dev/null
}

MACHINE="$(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
# --warren names another build (e.g. an older commit's, for a before/after): say which.
[ -n "$WARREN_BIN" ] && COMMIT="binary $WARREN_BIN"
# The table this script writes does not count as a change to what is measured.
if [ -z "$WARREN_BIN" ] && cd "$ROOT" && git status --porcelain --untracked-files=no 2>/dev/null \
        | grep -v ' bench/results.md$' | grep -q .; then
    COMMIT="$COMMIT + uncommitted changes"
fi

COMMON="--warmup $WARM --duration $DUR"
declare -A ARGS TIMEOUT
ARGS[S1]="-x 1 -y 1 -s 16 --auto-ack $COMMON"
ARGS[S2]="-x 1 -y 1 -s 16 --persistent --durable -c 192 -q 200 --ack-every 200 $COMMON"
ARGS[S3]="-x 1 --queues 10 -y 10 -s 16 --auto-ack $COMMON"
ARGS[S4]="-x 1 -y 1 -s 16 -r 10000 -q 100 $COMMON"
ARGS[S5]="-x 1 -y 1 -s 1024 --auto-ack $COMMON"
ARGS[S6]="-x 1 -y 1 -s 16 --prefill 300000 -q 1000 --ack-every 100 --drain-timeout 300"
ARGS[S7]="--connections-idle $S7_CONNS --duration $S7_HOLD"
ARGS[S8]="-x 1 -y 0 -s 16 --prefill $S8_COUNT --stall-timeout 300 --settle 5"
# Streams: publishes confirmed (ST1, ST2); STF fills one stream that ST3 (one consumer) and
# ST4 (ten, each reading everything) replay from `first`, prefetch 1000, ack every 100.
STREAM="--durable --queue-arg x-queue-type=stream"
ARGS[ST1]="-x 1 -y 0 -s 16 --persistent -c 1000 $STREAM $COMMON"
ARGS[ST2]="-x 1 -y 0 -s 1024 --persistent -c 1000 $STREAM $COMMON"
REPLAY="--queue perf-replay $STREAM"
ARGS[STF]="-x 1 -y 0 -s 16 --persistent -c 1000 --prefill $ST_COUNT --settle 0 --keep $REPLAY"
ARGS[ST3]="-y 1 --replay $ST_COUNT -q 1000 --ack-every 100 --consumer-arg x-stream-offset=first --drain-timeout 1800 --keep $REPLAY"
ARGS[ST4]="-y 10 --replay $ST_COUNT -q 1000 --ack-every 100 --consumer-arg x-stream-offset=first --drain-timeout 3600 $REPLAY"
# Delayed: D1 holds a million (1 h delay, never due in the run), D2 has 10,000 come due
# per second (1 s delay) and measures lateness past the due time.
DELAYED="--durable --persistent --exchange-type x-delayed-message --exchange-arg x-delayed-type=direct"
ARGS[D1]="-x 1 -y 0 -s 16 -c 1000 --prefill $D1_COUNT --delay-ms 3600000 $DELAYED"
ARGS[D2]="-x 1 -y 1 -s 16 -r 10000 -q 1000 --ack-every 100 --delay-ms 1000 $DELAYED --warmup $(( WARM + 2 )) --duration $DUR"
for s in S1 S2 S3 S4 S5 ST1 ST2 D2; do TIMEOUT[$s]=$(( WARM + DUR + 90 )); done
TIMEOUT[S6]=900
TIMEOUT[S7]=240
TIMEOUT[S8]=$(( 600 + S8_COUNT / 5000 ))
TIMEOUT[STF]=$(( 600 + ST_COUNT / 5000 ))
TIMEOUT[ST3]=1900
TIMEOUT[ST4]=3700
TIMEOUT[D1]=$(( 300 + D1_COUNT / 5000 ))
# Scenarios RabbitMQ cannot run here.
declare -A WARREN_ONLY=([D1]=1 [D2]=1)
# S7 first: RabbitMQ's RSS is steadiest before the heavy scenarios.
SCENARIOS="S7 S1 S2 S3 S4 S5 S6 S8 ST1 ST2 ST3 ST4 D1 D2"
[ -n "$ONLY" ] && SCENARIOS=$(echo "$ONLY" | tr ',' ' ')

# target BROKER: sets host, port, pids and extra for a run against BROKER (starting a
# fresh Warren for warren).
target() {
    extra=""
    if [ "$1" = warren ]; then
        start_warren || return 1
        port=$WPORT; host=127.0.0.1; pids=$WPID
    elif [ "$1" = floor ]; then
        # No broker: the machine's latency floor (see warren-perf's floor module).
        port=0; host=127.0.0.1; pids=""; extra="--latency-floor"
    else
        port=$RABBIT_PORT; host=$RABBIT_HOST; pids=$(rabbit_pids)
    fi
}

# run_one SCENARIO BROKER ROUND: one warren-perf run on a fresh broker target.
run_one() {
    local host port pids extra
    target "$2" || return 1
    perf "$@"
    [ "$2" = warren ] && stop_warren
}

# run_replay BROKER ROUND SCENARIOS: STF, then those of ST3/ST4 asked for, on one broker
# (one Warren process for all three), the stream deleted by the last.
run_replay() {
    local broker=$1 round=$2 want=$3 host port pids extra
    target "$broker" || return 1
    perf STF "$broker" "$round"
    case " $want " in *" ST3 "*) perf ST3 "$broker" "$round" ;; esac
    # ST4 deletes the stream; without it, a last replay of nothing does.
    case " $want " in
        *" ST4 "*) perf ST4 "$broker" "$round" ;;
        *) ARGS[STX]="-y 0 --replay 1 $REPLAY"; TIMEOUT[STX]=120; perf STX "$broker" "$round" ;;
    esac
    [ "$broker" = warren ] && stop_warren
}

# perf SCENARIO BROKER ROUND: one warren-perf run against host/port/pids (set by target),
# its JSON line appended to $RAW.
perf() {
    local s=$1 broker=$2 round=$3 out rc load
    local pidargs=""
    for p in $pids; do pidargs="$pidargs --broker-pid $p"; done
    load=$(cut -d' ' -f1 /proc/loadavg)
    log "$s $broker round $round (load $load): warren-perf ${ARGS[$s]}"
    # shellcheck disable=SC2086
    out=$(timeout -k 10 "${TIMEOUT[$s]}" "$PERF" --host "$host" --port "$port" \
        --label "$s" $pidargs $extra ${ARGS[$s]})
    rc=$?
    if [ -z "$out" ]; then
        out="{\"label\":\"$s\",\"errors\":[\"warren-perf exit $rc with no output (timeout?)\"]}"
    fi
    python3 - "$out" "$broker" "$round" "$RUN_ID" "$MODE" "$MACHINE" "$COMMIT" "$load" \
        >>"$RAW" <<'EOF'
import json, sys
d = json.loads(sys.argv[1])
d.update(scenario=d.get("label"), target=sys.argv[2], round=int(sys.argv[3]),
         run_id=sys.argv[4], run_mode=sys.argv[5], machine=sys.argv[6], commit=sys.argv[7],
         loadavg_before=sys.argv[8])
print(json.dumps(d))
EOF
}

if [ -z "$REPORT" ]; then
    if [ "$BUILD" = 1 ]; then
        log "cargo build --release"
        (cd "$ROOT" && timeout 1200 cargo build --release --bin warren --bin warren-perf) >&2 \
            || { echo "compare.sh: build failed" >&2; exit 1; }
    fi
    [ -x "$PERF" ] && [ -x "$WARREN" ] || { echo "compare.sh: binaries missing" >&2; exit 1; }

    RABBIT=0
    if [ "$USE_RABBIT" = 1 ] && port_open "$RABBIT_HOST" "$RABBIT_PORT"; then
        RABBIT=1
    else
        log "RabbitMQ not reachable on $RABBIT_HOST:$RABBIT_PORT: Warren only"
    fi
    REPLAYS=""
    for s in $SCENARIOS; do
        case $s in ST3|ST4) REPLAYS="$REPLAYS $s"; continue ;; esac
        [ -n "${ARGS[$s]:-}" ] || { echo "compare.sh: unknown scenario $s" >&2; continue; }
        for r in $(seq 1 "$ROUNDS"); do
            run_one "$s" warren "$r"
            if [ "$RABBIT" = 1 ] && [ -z "${WARREN_ONLY[$s]:-}" ]; then
                if [ "$s" = S7 ]; then
                    lim=$(rabbit_fd_limit)
                    if [ -n "$lim" ] && [ "$lim" -lt $(( S7_CONNS + 200 )) ]; then
                        log "S7 rabbitmq skipped: beam.smp open-files limit $lim (see bench/README.md)"
                        echo "{\"scenario\":\"S7\",\"target\":\"rabbitmq\",\"round\":$r,\"run_id\":\"$RUN_ID\",\"skipped\":\"beam.smp open-files limit $lim < $S7_CONNS\"}" >>"$RAW"
                        continue
                    fi
                fi
                run_one "$s" rabbitmq "$r"
            fi
            # S4's latency also measured with no broker at all, to read both against.
            [ "$s" = S4 ] && run_one S4 floor "$r"
        done
    done
    if [ -n "$REPLAYS" ]; then
        for r in $(seq 1 "$REPLAY_ROUNDS"); do
            run_replay warren "$r" "$REPLAYS"
            [ "$RABBIT" = 1 ] && run_replay rabbitmq "$r" "$REPLAYS"
        done
    fi

    cat "$RAW" >>"$BENCH/results.jsonl"
    RUN_IDS=$RUN_ID
else
    RUN_IDS=$REPORT
fi

python3 - "$BENCH/results.jsonl" "$BENCH/results.md" "$RUN_IDS" <<'EOF'
import json, statistics, sys

jsonl, md, run_ids = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
lines = [json.loads(l) for l in open(jsonl) if l.strip()]
# For each scenario and broker, the last listed run that has it (so a Warren-only rerun of
# one scenario can sit beside RabbitMQ's figure from an earlier run).
by_run = {r: [d for d in lines if d.get("run_id") == r] for r in run_ids}
runs, used = [], {}
for r in reversed(run_ids):
    for d in by_run[r]:
        key = (d.get("scenario"), d.get("target"))
        if used.setdefault(key, r) == r:
            runs.append(d)
if not runs:
    sys.exit(f"compare.sh: no results for run(s) {','.join(run_ids)} in {jsonl}")


def get(d, path):
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


# (scenario, metric, json path, higher is better, scale)
ROWS = [
    ("S1", "consumed msg/s", "consumed_rate", True, 1),
    ("S2", "confirmed msg/s", "confirmed_rate", True, 1),
    ("S2", "consumed msg/s", "consumed_rate", True, 1),
    ("S3", "consumed msg/s, 10 queues", "consumed_rate", True, 1),
    ("S4", "latency p50 µs", "latency_us.p50", False, 1),
    ("S4", "latency p99 µs", "latency_us.p99", False, 1),
    ("S5", "consumed msg/s", "consumed_rate", True, 1),
    ("S6", "drain msg/s", "consumed_rate", True, 1),
    ("S7", "RSS KiB / connection", "broker_rss_kib_per_conn", False, 1),
    ("S8", "broker RSS MiB", "broker_rss_kib", False, 1 / 1024),
    ("ST1", "confirmed msg/s", "confirmed_rate", True, 1),
    ("ST2", "confirmed msg/s", "confirmed_rate", True, 1),
    ("STF", "confirmed msg/s", "prefill.confirmed_rate", True, 1),
    ("ST3", "delivered msg/s", "consumed_rate", True, 1),
    ("ST3", "broker RSS peak MiB", "broker_rss_kib_peak", False, 1 / 1024),
    ("ST4", "delivered msg/s, all 10", "consumed_rate", True, 1),
    ("ST4", "broker RSS peak MiB", "broker_rss_kib_peak", False, 1 / 1024),
    ("D1", "RSS over idle MiB", "rss_growth_mib", False, 1),
    ("D2", "lateness p50 µs", "latency_us.p50", False, 1),
    ("D2", "lateness p99 µs", "latency_us.p99", False, 1),
]
def count(s, key="config.prefill"):
    return next((get(d, key) for d in runs if d.get("scenario") == s), 0) or 0


s8n, stn, d1n = count("S8"), count("ST3", "config.replay") or count("STF"), count("D1")
for d in runs:
    if get(d, "broker_rss_kib") is not None and get(d, "broker_rss_kib_before") is not None:
        d["rss_growth_mib"] = (d["broker_rss_kib"] - d["broker_rss_kib_before"]) / 1024
DESC = {
    "S1": "1→1, 16 B transient, auto-ack",
    "S2": "16 B persistent, durable, 192 unconfirmed, prefetch 200, ack/200",
    "S3": "fanout to 10 queues, 10 consumers, 16 B, auto-ack",
    "S4": "10,000 msg/s, prefetch 100",
    "S5": "1→1, 1 KiB, auto-ack",
    "S6": "drain 300,000 pre-filled, prefetch 1000, ack/100",
    "S7": "1,000 idle connections, 1 channel each",
    "S8": f"{s8n:,} queued 16 B msgs, no consumer",
    "ST1": "stream, 16 B, 1 producer, 1,000 unconfirmed",
    "ST2": "stream, 1 KiB, 1 producer, 1,000 unconfirmed",
    "STF": f"stream filled with {stn:,} × 16 B for ST3/ST4",
    "ST3": f"replay {stn:,} from first, 1 consumer, prefetch 1000",
    "ST4": f"replay {stn:,} from first, 10 consumers each reading all",
    "D1": f"{d1n:,} delayed 16 B msgs pending (1 h delay)",
    "D2": "delayed, 10,000 due/s (1 s delay), lateness past due",
}


def fmt(v):
    if v is None:
        return "–"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"


def of(s, target):
    return [d for d in runs if d.get("scenario") == s and d.get("target") == target]


def figure(s, target, path, scale):
    vals, notes = [], []
    for d in of(s, target):
        if d.get("skipped"):
            notes.append(d["skipped"])
            continue
        v = get(d, path)
        if s in ("ST3", "ST4") and path == "broker_rss_kib_peak" and v is not None:
            notes.append(f"RSS {get(d, 'broker_rss_kib_before') / 1024:,.0f} MiB before, "
                         f"{v / 1024:,.0f} peak, {get(d, 'broker_rss_kib') / 1024:,.0f} after")
        if s == "D2" and get(d, "early"):
            notes.append(f"{get(d, 'early'):,} delivered before due")
        if s == "D1" and v is not None:
            notes.append(f"RSS {get(d, 'broker_rss_kib_before') / 1024:,.0f}→"
                         f"{get(d, 'broker_rss_kib') / 1024:,.0f} MiB, "
                         f"{get(d, 'broker_rss_bytes_per_msg'):,.0f} B/msg")
        if s == "D1" and not get(d, "prefill.complete"):
            notes.append("pre-fill incomplete")
        if s == "S8" and not get(d, "prefill.complete"):
            depth = get(d, "prefill.queue_depth")
            why = ("memory alarm (connection.blocked)" if d.get("blocked")
                   else "publishing stalled (no confirm for the stall timeout)")
            notes.append(f"reached {depth:,} msgs, {why}" if depth is not None else why)
        elif d.get("errors"):
            notes.append("; ".join(d["errors"])[:160])
        if s == "S8" and get(d, "prefill.measured_s") is not None:
            extra = (", memory alarm raised (connection.blocked) on the way"
                     if d.get("blocked") and get(d, "prefill.complete") else "")
            notes.append(f"filled in {get(d, 'prefill.measured_s'):,.0f} s{extra}")
        if s == "S7" and v is not None:
            notes.append(f"RSS {get(d, 'broker_rss_kib_before') / 1024:,.0f}→"
                         f"{get(d, 'broker_rss_kib') / 1024:,.0f} MiB")
        if s == "S8" and d.get("broker_rss_bytes_per_msg") is not None:
            notes.append(f"{d['broker_rss_bytes_per_msg']:,.0f} B/msg over the idle broker")
        if v is not None:
            vals.append(v * scale)
    return (statistics.median(vals) if vals else None), vals, notes


def cpu(s, target):
    c = [get(d, "client_cpu_pct") for d in of(s, target)]
    b = [get(d, "broker_cpu_pct") for d in of(s, target)]
    c, b = [x for x in c if x is not None], [x for x in b if x is not None]
    if not c:
        return None
    out = f"client {statistics.median(c):.0f}%"
    return out + (f" broker {statistics.median(b):.0f}%" if b else "")


present = {d.get("scenario") for d in runs}
out = ["| Scenario | Metric | Warren | RabbitMQ | Ratio | Notes |",
       "|---|---|---:|---:|---:|---|"]
for s, label, path, higher, scale in ROWS:
    if s not in present:
        continue
    w, wv, wn = figure(s, "warren", path, scale)
    r, rv, rn = figure(s, "rabbitmq", path, scale)
    ratio = f"{(w / r if higher else r / w):.2f}" if w and r and w > 0 and r > 0 else "–"
    notes = []
    cw, cr = cpu(s, "warren"), cpu(s, "rabbitmq")
    if cw or cr:
        notes.append(f"CPU W: {cw or '–'}; R: {cr or '–'}")
    if s == "S4" and of("S4", "floor"):
        f, fv, fn = figure(s, "floor", path, scale)
        notes.append(f"floor (no broker) {fmt(f)}"
                     + (" (rounds " + "/".join(map(fmt, fv)) + ")" if len(fv) > 1 else "")
                     + "".join(f"; floor: {n}" for n in dict.fromkeys(fn)))
    if len(wv) > 1 or len(rv) > 1:
        notes.append("rounds W " + ("/".join(map(fmt, wv)) or "–")
                     + ", R " + ("/".join(map(fmt, rv)) or "–"))
    notes += [f"W: {n}" for n in dict.fromkeys(wn)] + [f"R: {n}" for n in dict.fromkeys(rn)]
    out.append(f"| {s}: {DESC[s]} | {label} | {fmt(w)} | {fmt(r)} | {ratio} | "
               + "<br>".join(notes) + " |")


def first(key):
    return next((d.get(key) for d in runs if d.get(key)), "unknown")


rver = next((get(d, "broker.version") for d in runs if get(d, "broker.product") == "RabbitMQ"),
            "not reachable")
run_desc = []
for r in run_ids:
    mine = [d for d in runs if d.get("run_id") == r]
    if not mine:
        continue
    scen = sorted({d["scenario"] for d in mine},
                  key=lambda x: (x.rstrip("0123456789F"), x))
    steady = next((d for d in mine if d.get("mode") == "steady"), None)
    timing = (f", {get(steady, 'config.warmup'):g} s warm-up + "
              f"{get(steady, 'config.duration'):g} s measured" if steady else "")
    rounds = max(d.get("round", 1) for d in mine)
    names = {"warren": "Warren", "rabbitmq": "RabbitMQ", "floor": "the S4 floor"}
    who = [n for t, n in names.items() if any(d.get("target") == t for d in mine)]
    run_desc.append(f"`{r}` ({mine[0].get('run_mode')} mode{timing}, {rounds} round(s), "
                    f"Warren commit {mine[0].get('commit', 'unknown')}): "
                    + ", ".join(scen) + f" ({' and '.join([', '.join(who[:-1]), who[-1]] if len(who) > 1 else who)})")
loads = sorted(float(d["loadavg_before"]) for d in runs if d.get("loadavg_before"))
header = f"""# Warren vs RabbitMQ

Generated by `bench/compare.sh`; load from `warren-perf` on the same machine. Runs alternate
Warren, RabbitMQ, Warren, RabbitMQ; each figure is the median of its rounds.

- Runs: {'; '.join(run_desc)}
- Machine: {first('machine')}
- RabbitMQ {rver}, default configuration (memory high watermark 0.4), on 127.0.0.1:5673
- Warren: release build, a fresh process and data directory for every run
- **Ratio**: throughput Warren / RabbitMQ; latency and memory RabbitMQ / Warren. In every row
  **ratio > 1 means Warren is better.**
- CPU: user+system time over the measured window from /proc (100% = one core) of the client
  (`warren-perf`) and the broker; a client far below 100% was not the bottleneck.
- S4's **floor**: the same client pacing and size through a relay process that copies bytes
  from the producer's socket to the consumer's and does nothing else (`warren-perf
  --latency-floor`): the latency this machine gives a broker that does no work.
- 1-minute load average before each run: {f'{loads[0]:.2f}–{loads[-1]:.2f}' if loads else 'n/a'}

"""
open(md, "w").write(header + "\n".join(out) + "\n")
print(header + "\n".join(out))
EOF
