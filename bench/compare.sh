#!/usr/bin/env bash
# Warren vs RabbitMQ on a fixed scenario set (S1–S8), alternating A B A B; S4 also runs
# with no broker (warren-perf --latency-floor) to give the machine's latency floor.
#
#   bench/compare.sh [--quick] [--rounds N] [--s8-count N] [--only S1,S4,...]
#                    [--rabbit-host H] [--rabbit-port P] [--no-rabbit] [--no-build]
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
S8_COUNT=10000000
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
        --s8-count) S8_COUNT=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --rabbit-host) RABBIT_HOST=$2; shift ;;
        --rabbit-port) RABBIT_PORT=$2; shift ;;
        --no-rabbit) USE_RABBIT=0 ;;
        --no-build) BUILD=0 ;;
        --report) REPORT=$2; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

S7_CONNS=1000
S7_HOLD=$(( DUR < 5 ? DUR : 5 ))
PERF="$ROOT/target/release/warren-perf"
WARREN="$ROOT/target/release/warren"
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
    "$WARREN" --bind "127.0.0.1:$WPORT" --management-bind 127.0.0.1:0 --data-dir "$data" --log warn \
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
# The table this script writes does not count as a change to what is measured.
if cd "$ROOT" && git status --porcelain --untracked-files=no 2>/dev/null \
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
for s in S1 S2 S3 S4 S5; do TIMEOUT[$s]=$(( WARM + DUR + 90 )); done
TIMEOUT[S6]=900
TIMEOUT[S7]=240
TIMEOUT[S8]=$(( 600 + S8_COUNT / 5000 ))
# S7 first: RabbitMQ's RSS is steadiest before the heavy scenarios.
SCENARIOS="S7 S1 S2 S3 S4 S5 S6 S8"
[ -n "$ONLY" ] && SCENARIOS=$(echo "$ONLY" | tr ',' ' ')

# run_one SCENARIO BROKER ROUND: one warren-perf run, its JSON line appended to $RAW.
run_one() {
    local s=$1 broker=$2 round=$3 host port pids out rc load
    local extra=""
    if [ "$broker" = warren ]; then
        start_warren || return 1
        port=$WPORT; host=127.0.0.1; pids=$WPID
    elif [ "$broker" = floor ]; then
        # No broker: the machine's latency floor (see warren-perf's floor module).
        port=0; host=127.0.0.1; pids=""; extra="--latency-floor"
    else
        port=$RABBIT_PORT; host=$RABBIT_HOST; pids=$(rabbit_pids)
    fi
    local pidargs=""
    for p in $pids; do pidargs="$pidargs --broker-pid $p"; done
    load=$(cut -d' ' -f1 /proc/loadavg)
    log "$s $broker round $round (load $load): warren-perf ${ARGS[$s]}"
    # shellcheck disable=SC2086
    out=$(timeout -k 10 "${TIMEOUT[$s]}" "$PERF" --host "$host" --port "$port" \
        --label "$s" $pidargs $extra ${ARGS[$s]})
    rc=$?
    [ "$broker" = warren ] && stop_warren
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
    for s in $SCENARIOS; do
        [ -n "${ARGS[$s]:-}" ] || { echo "compare.sh: unknown scenario $s" >&2; continue; }
        for r in $(seq 1 "$ROUNDS"); do
            run_one "$s" warren "$r"
            if [ "$RABBIT" = 1 ]; then
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
]
s8n = next((get(d, "config.prefill") for d in runs if d.get("scenario") == "S8"), 0) or 0
DESC = {
    "S1": "1→1, 16 B transient, auto-ack",
    "S2": "16 B persistent, durable, 192 unconfirmed, prefetch 200, ack/200",
    "S3": "fanout to 10 queues, 10 consumers, 16 B, auto-ack",
    "S4": "10,000 msg/s, prefetch 100",
    "S5": "1→1, 1 KiB, auto-ack",
    "S6": "drain 300,000 pre-filled, prefetch 1000, ack/100",
    "S7": "1,000 idle connections, 1 channel each",
    "S8": f"{s8n:,} queued 16 B msgs, no consumer",
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
    scen = sorted({d["scenario"] for d in mine}, key=lambda x: int(x[1:]))
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
