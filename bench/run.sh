#!/usr/bin/env bash
# Portcullis against nginx and HAProxy as TLS terminators, on loopback, on one machine.
# What it measures and how: docs/performance.md. A benchmark, not a test: CI does not run it.
#
#   bench/run.sh            3 interleaved rounds + the many-sites run (~17 min on a quiet machine)
#   bench/run.sh --quick    1 round, short runs, 1,000 sites (~3 min): a smoke run
#   bench/run.sh --help     every option
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/run.sh [options]

  --quick            1 round, 3 s runs, 1,000 sites (a smoke run)
  --rounds N         interleaved rounds (default 3)
  --duration S       seconds per throughput run: wrk, h2load, tlsload (default 8)
  --latency-duration S   seconds for the single-connection run (default 5)
  --sites N          sites for the many-sites run (default 10000; --quick: 1000)
  --key rsa|ecdsa    the certificates' keys: RSA-2048 (default, the issue's benchmark) or
                     ECDSA P-256, where the signature no longer dominates a handshake
  --busy-poll D      Portcullis with --busy-poll D (e.g. 200us) and HAProxy with busy-polling
                     (nginx has no such setting); default off, as all three ship
  --only WHAT        compare (the three proxies), sites (Portcullis with N sites) or idle
                     (only the idle-connection memory of the three proxies)
  --proxies LIST     comma-separated subset of portcullis,nginx,haproxy (default all)
  --perf             after the rounds, profile Portcullis with perf under each load and count
                     every proxy's system calls per request (needs linux-perf);
                     --rounds 0 --perf --only compare does only that
  --no-install       do not apt-get install missing tools
  --pgo              benchmark the profile-guided build (bench/pgo.sh, target/pgo/portcullis)
                     instead of the release build
  --no-build         use the existing target/release/portcullis (with --pgo, target/pgo/portcullis)
  --out DIR          results folder (default target/bench/<date-time>)
  --keep             keep the temporary folder (configs, certificates, logs)
EOF
}

ROUNDS=3
DURATION=8
LAT_DURATION=5
SITES=10000
ONLY=all
PROXIES=portcullis,nginx,haproxy
PERF=0
INSTALL=1
BUILD=1
PGO=0
OUT=
KEEP=0
QUICK=0
SITES_SET=0
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --latency-duration) LAT_DURATION=$2; shift ;;
    --sites) SITES=$2; SITES_SET=1; shift ;;
    --key) BENCH_KEY=$2; shift ;;
    --busy-poll) BUSY_POLL=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --proxies) PROXIES=$2; shift ;;
    --perf) PERF=1 ;;
    --no-install) INSTALL=0 ;;
    --no-build) BUILD=0 ;;
    --pgo) PGO=1 ;;
    --out) OUT=$2; shift ;;
    --keep) KEEP=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [ "$QUICK" = 1 ]; then
    ROUNDS=1
    DURATION=3
    LAT_DURATION=2
    [ "$SITES_SET" = 1 ] || SITES=1000
fi
case "$ONLY" in all | compare | sites | idle) ;; *) echo "run.sh: --only compare|sites|idle" >&2; exit 2 ;; esac
BENCH_KEY=${BENCH_KEY:-rsa}
BUSY_POLL=${BUSY_POLL:-}
export BUSY_POLL
case "$BENCH_KEY" in rsa | ecdsa) export BENCH_KEY ;; *) echo "run.sh: --key rsa|ecdsa" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
PY="python3 $BENCH/bench.py"
# shellcheck source=bench/common.sh
. "$BENCH/common.sh"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/portcullis
[ "$PGO" = 0 ] || BIN=$TARGET/pgo/portcullis
OUT=${OUT:-$ROOT/target/bench/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/results.jsonl
: >"$RESULTS"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$OUT/run.log" >&2; }

# ------------------------------------------------------------------ tools

need_install=()
command -v nginx >/dev/null || need_install+=(nginx)
command -v haproxy >/dev/null || need_install+=(haproxy)
command -v wrk >/dev/null || need_install+=(wrk)
command -v h2load >/dev/null || need_install+=(nghttp2-client)
command -v openssl >/dev/null || need_install+=(openssl)
command -v curl >/dev/null || need_install+=(curl)
command -v taskset >/dev/null || need_install+=(util-linux)
if [ "$PERF" = 1 ] && ! command -v perf >/dev/null; then need_install+=(linux-perf); fi
if [ "$PGO" = 1 ] && [ "$BUILD" = 1 ] && [ -z "$(llvm_profdata)" ]; then
    need_install+=("llvm-$(rustc_llvm_major)")
fi
if [ "$PERF" = 1 ] && ! command -v nstat >/dev/null; then need_install+=(iproute2); fi
if [ ${#need_install[@]} -gt 0 ]; then
    if [ "$INSTALL" = 0 ]; then
        echo "run.sh: missing ${need_install[*]} (and --no-install given)" >&2
        exit 1
    fi
    SUDO=
    [ "$(id -u)" = 0 ] || SUDO=sudo
    log "installing ${need_install[*]}"
    $SUDO apt-get update -q >>"$OUT/install.log" 2>&1
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need_install[@]}" >>"$OUT/install.log" 2>&1
fi
# Debian's nginx and haproxy packages may start system services; they do not use the
# ports picked below, but they do use CPU: stopping them is left to whoever runs this.

if [ "$BUILD" = 1 ] && [ "$PGO" = 1 ]; then
    log "building Portcullis with profile-guided optimisation (bench/pgo.sh, about 9 min)"
    "$BENCH/pgo.sh" --out "$BIN" 2>>"$OUT/pgo.log" || { tail -20 "$OUT/pgo.log" >&2; exit 1; }
elif [ "$BUILD" = 1 ]; then
    log "building Portcullis (cargo build --release -p portcullis)"
    (cd "$ROOT" && cargo build --release -p portcullis) 2>&1 | tail -3 >&2
fi
[ -x "$BIN" ] || { echo "run.sh: $BIN not found (build it, or drop --no-build)" >&2; exit 1; }
# The handshake load generator (bench/tlsload, its own small cargo project).
log "building bench/tlsload"
cargo build -q --release --manifest-path "$BENCH/tlsload/Cargo.toml" --target-dir "$TARGET/bench-tools" >&2
TLSLOAD=$TARGET/bench-tools/release/tlsload

# The first two CPUs this process may use (0 and 1 on a plain machine).
read -r NCPU LOAD_CPU PROXY_CPU < <(python3 -c 'import os
c = sorted(os.sched_getaffinity(0))
print(len(c), c[0], c[1] if len(c) > 1 else c[0])')
if [ "$NCPU" -lt 2 ]; then
    log "only one CPU: proxy and load generator share it; the figures mean little"
fi
# Everything this script starts inherits CPU $LOAD_CPU; proxies are started on $PROXY_CPU.
taskset -cp "$LOAD_CPU" $$ >/dev/null

# ------------------------------------------------------------------ cleanup

TMP=$(mktemp -d /tmp/portcullis-bench.XXXXXX)
trap 'bench_cleanup run.sh' EXIT
trap 'exit 130' INT TERM

# Starts "$@" in the background, remembers its pid in STARTED (and for cleanup).
spawn() {
    local logfile=$1
    shift
    "$@" >"$logfile" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}

# Stops a process this script started and forgets it.
stop() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget "$pid"
}

free_port() { $PY ports 1; }

# ------------------------------------------------------------------ environment

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: nproc $NCPU, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
    echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "portcullis: $("$BIN" --version), ${BIN#"$ROOT"/}$([ "$PGO" = 1 ] && echo " (profile-guided, bench/pgo.sh)"), built $(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ); tree at git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' with uncommitted changes')"
    echo "rustc: $(rustc --version 2>/dev/null || echo '?')"
    echo "nginx: $(nginx -v 2>&1 | sed 's/.*version: //')"
    echo "haproxy: $(haproxy -v | head -1)"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "h2load: $(h2load --version)"
    echo "openssl: $(openssl version)"
    echo "python: $(python3 --version)"
    echo "pinning: proxy on CPU $PROXY_CPU; load generators and origin on CPU $LOAD_CPU"
    echo "rounds: $ROUNDS, duration ${DURATION}s, single-connection ${LAT_DURATION}s, sites $SITES"
    echo "certificates: $([ "$BENCH_KEY" = rsa ] && echo RSA-2048 || echo 'ECDSA P-256')"
    echo "busy polling: ${BUSY_POLL:-off}$([ -n "$BUSY_POLL" ] && echo " (Portcullis --busy-poll $BUSY_POLL, HAProxy busy-polling; nginx has none)")"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/environment.txt"
cat "$OUT/environment.txt" >&2

# ------------------------------------------------------------------ certificates

CERTS=$TMP/certs
mkdir -p "$CERTS" "$TMP/logs"
log "generating a $([ "$BENCH_KEY" = rsa ] && echo RSA-2048 || echo 'ECDSA P-256') CA and leaf certificate in $CERTS"
bench_certs "$CERTS"

# wrk takes the TLS server name and Host from the URL; this makes it connect to 127.0.0.1
# while sending SNI bench.test, as a browser would.
cat >"$TMP/sni.lua" <<'EOF'
wrk.resolve = function(host, service)
  wrk.addrs = wrk.lookup("127.0.0.1", service)
end
EOF

NAME=bench.test

# ------------------------------------------------------------------ origin

# bench/common.sh; it runs on CPU $LOAD_CPU, as everything this script starts but the proxies.
start_origin
log "origin: nginx on 127.0.0.1:$ORIGIN_HTTP (http) and :$ORIGIN_HTTPS (https), CPU $LOAD_CPU"

# Polls every 50 ms where common.sh's wait_for polls every 500: it runs before every measurement.
wait_http() { # $1: curl arguments as one string, $2: what
    for _ in $(seq 1 200); do
        # shellcheck disable=SC2086
        if [ "$(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 $1 2>/dev/null)" = 200 ]; then
            return 0
        fi
        sleep 0.05
    done
    echo "run.sh: $2 did not answer 200 within 10 s" >&2
    return 1
}

# ------------------------------------------------------------------ proxies

# Writes the proxy's config for a mode and starts it on CPU $PROXY_CPU.
# Sets PROXY_PID and PROXY_PORT.
start_proxy() { # $1: proxy, $2: mode
    local proxy=$1 mode=$2
    PROXY_PORT=$(free_port)
    local conf
    case "$proxy" in
    portcullis)
        local admin
        admin=$(free_port)
        conf=$TMP/portcullis-$mode.yaml
        portcullis_conf "$PROXY_PORT" "$admin" "$mode" "$TMP/portcullis-data-$mode" >"$conf"
        "$BIN" check --config "$conf" >"$TMP/logs/portcullis-check.out" 2>&1 ||
            { cat "$TMP/logs/portcullis-check.out" >&2; return 1; }
        spawn "$TMP/logs/portcullis-$mode.log" taskset -c "$PROXY_CPU" \
            env RUST_LOG=info,portcullis::access=off "$BIN" run --workers 1 \
            ${BUSY_POLL:+--busy-poll "$BUSY_POLL"} --config "$conf"
        ;;
    nginx)
        conf=$TMP/nginx-$mode.conf
        nginx_proxy_conf "nginx-$mode" "$PROXY_PORT" "$mode" >"$conf"
        mkdir -p "$TMP/nginx-$mode-tmp"
        nginx -t -q -p "$TMP/" -e "$TMP/logs/nginx-$mode-error.log" -c "$conf"
        spawn "$TMP/logs/nginx-$mode.log" taskset -c "$PROXY_CPU" \
            nginx -p "$TMP/" -e "$TMP/logs/nginx-$mode-error.log" -c "$conf" -g 'daemon off;'
        ;;
    haproxy)
        conf=$TMP/haproxy-$mode.cfg
        haproxy_proxy_conf "$PROXY_PORT" "$mode" >"$conf"
        haproxy -c -q -f "$conf"
        spawn "$TMP/logs/haproxy-$mode.log" taskset -c "$PROXY_CPU" haproxy -db -f "$conf"
        ;;
    esac
    PROXY_PID=$STARTED
    wait_http "--resolve $NAME:$PROXY_PORT:127.0.0.1 https://$NAME:$PROXY_PORT/" "$proxy ($mode)"
}

# What the TLS handshake negotiates, once per proxy (logged in tls.txt).
note_tls() { # $1: proxy
    {
        echo "== $1"
        openssl s_client -connect "127.0.0.1:$PROXY_PORT" -servername "$NAME" -alpn h2,http/1.1 </dev/null 2>/dev/null |
            grep -E '^(New,|Protocol|Server Temp Key|ALPN|Peer signature type)' || true
    } >>"$OUT/tls.txt"
}

measure() { # $1: test, $2: kind, rest: command; uses ROUND, PROXY, MODE, PROXY_PID
    local test=$1 kind=$2
    shift 2
    $PY measure --out "$RESULTS" --pid "$PROXY_PID" --kind "$kind" --proxy-cpu-index "$PROXY_CPU" \
        --load-cpu-index "$LOAD_CPU" --origin-pid "$ORIGIN_PID" \
        --label "round=$ROUND" --label "proxy=$PROXY" --label "mode=$MODE" --label "test=$test" \
        -- "$@" >>"$OUT/measurements.log" 2>&1 || log "  $test: measurement failed (see measurements.log)"
    tail -1 "$RESULTS" | python3 -c 'import json,sys
r=json.loads(sys.stdin.read())
if r.get("test") == sys.argv[1]:
    p50 = "%.3f ms" % r["p50_ms"] if "p50_ms" in r else "-"
    print("  %-9s %9.0f/s  p50 %-9s  errors %s  CPU: proxy %3.0f%% + others %2.0f%%, load %3.0f%% + origin %2.0f%% + others %2.0f%%%s" % (
          r["test"], r.get("rps", 0), p50, r.get("errors", "?"), 100*r["proxy_cpu"], 100*r.get("foreign_cpu", 0),
          100*r.get("loadgen_cpu", 0), 100*r.get("origin_cpu", 0), 100*r.get("foreign_load_cpu", 0),
          "  (tries %d)" % r["attempt"] if r.get("attempt", 1) > 1 else ""))' "$test" >&2 || true
}

# One test against the selected proxy (PROXY, MODE, PROXY_PORT, PROXY_PID).
run_test() { # $1: single, h1, h2 or handshake
    local url="https://$NAME:$PROXY_PORT/"
    case "$1" in
    single) measure single wrk wrk -t1 -c1 -d"${LAT_DURATION}s" --latency -s "$TMP/sni.lua" "$url" ;;
    h1) measure h1 wrk wrk -t1 -c50 -d"${DURATION}s" --latency -s "$TMP/sni.lua" "$url" ;;
    h2) measure h2 h2load h2load -t1 -c50 -m10 -D "$DURATION" --warm-up-time 1 \
        --connect-to "127.0.0.1:$PROXY_PORT" "$url" ;;
    handshake) measure handshake tlsload "$TLSLOAD" -a 127.0.0.1 -p "$PROXY_PORT" -d "$DURATION" -w 1 \
        -c 50 -n "$NAME" ;;
    esac
}

run_idle() { # 1,000 idle keep-alive TLS connections against a freshly started proxy; $1: --h2 or nothing
    $PY idle --port "$PROXY_PORT" --name "$NAME" --count 1000 --pid "$PROXY_PID" --out "$RESULTS" "$@" \
        --label "round=$ROUND" --label "proxy=$PROXY" --label "mode=$MODE" >>"$OUT/measurements.log" 2>&1 ||
        log "  idle: measurement failed"
    tail -1 "$RESULTS" | python3 -c 'import json,sys
r=json.loads(sys.stdin.read())
if r.get("kind", "").startswith("idle"):
    print("  %-9s %d open, %.1f KiB per connection (RSS %d -> %d KiB)" % (r["kind"], r["open"], r["kib_per_conn"], r["baseline_kib"], r["loaded_kib"]))' >&2 || true
}

modes_of() {
    case "$1" in
    portcullis) echo "flexible full strict" ;;
    # direct: nginx serving the response itself over TLS, the floor for any TLS proxy.
    nginx) echo "flexible full direct" ;;
    *) echo "flexible full" ;;
    esac
}

declare -A PORT_OF PID_OF
signal_others() { # $1: STOP or CONT, $2: the proxy:mode under test, rest: every proxy:mode
    local sig=$1 self=$2 other pid
    shift 2
    for other in "$@"; do
        [ "$other" != "$self" ] || continue
        pid=${PID_OF[$other]}
        # nginx's workers are the master's children.
        kill "-$sig" "$pid" $(pgrep -P "$pid") 2>/dev/null || true
    done
}

select_instance() { # $1: proxy:mode
    PROXY=${1%%:*}
    MODE=${1#*:}
    PROXY_PORT=${PORT_OF[$1]}
    PROXY_PID=${PID_OF[$1]}
}

IFS=, read -r -a PROXY_LIST <<<"$PROXIES"
if [ "$ONLY" != sites ]; then
    for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
        # Rotate the order each round so that no proxy always runs first or last.
        order=()
        n=${#PROXY_LIST[@]}
        for ((i = 0; i < n; i++)); do
            p=${PROXY_LIST[(i + ROUND - 1) % n]}
            for m in $(modes_of "$p"); do order+=("$p:$m"); done
        done
        log "round $ROUND/$ROUNDS: ${order[*]}"
        # Every instance runs for the whole round, each on its own port and all on the
        # proxy's core; only the one under test is busy. Each test then goes through all
        # of them back to back, so a slow spell of this shared machine (it drifts over
        # minutes) hits them alike rather than one proxy's whole turn.
        for c in "${order[@]}"; do
            start_proxy "${c%%:*}" "${c#*:}"
            PORT_OF[$c]=$PROXY_PORT
            PID_OF[$c]=$PROXY_PID
        done
        for c in "${order[@]}"; do
            select_instance "$c"
            [ "$MODE" = flexible ] || continue
            [ "$ROUND" = 1 ] && note_tls "$PROXY"
            log "$PROXY: idle connections"
            run_idle
            # HTTP/2 (what browsers use) against a fresh instance too: memory the HTTP/1.1
            # connections freed would otherwise be reused and hide part of the cost.
            stop "$PROXY_PID"
            start_proxy "$PROXY" "$MODE"
            PORT_OF[$c]=$PROXY_PORT
            PID_OF[$c]=$PROXY_PID
            log "$PROXY: idle HTTP/2 connections"
            run_idle --h2
        done
        if [ "$ONLY" = idle ]; then
            for c in "${order[@]}"; do stop "${PID_OF[$c]}"; done
            continue
        fi
        for c in "${order[@]}"; do
            select_instance "$c"
            # Warm-up: connections to the origin, caches, allocator.
            wrk -t1 -c50 -d1s -s "$TMP/sni.lua" "https://$NAME:$PROXY_PORT/" >/dev/null 2>&1 || true
        done
        for test in single h1 h2 handshake; do
            for c in "${order[@]}"; do
                select_instance "$c"
                log "$test: $PROXY, $MODE"
                # HAProxy's busy-polling spins even while idle, on the proxy's core: the
                # instances not under test are stopped meanwhile.
                [ -z "$BUSY_POLL" ] || signal_others STOP "$c" "${order[@]}"
                run_test "$test"
                [ -z "$BUSY_POLL" ] || signal_others CONT "$c" "${order[@]}"
            done
        done
        for c in "${order[@]}"; do stop "${PID_OF[$c]}"; done
    done
fi

# ------------------------------------------------------------------ perf

if [ "$PERF" = 1 ] && { [ "$ONLY" = compare ] || [ "$ONLY" = all ]; }; then
    load() { # $1: h1, h2 or handshake; $2: URL. One DURATION-long run of that load.
        case $1 in
        h1) wrk -t1 -c50 -d"${DURATION}s" -s "$TMP/sni.lua" "$2" ;;
        h2) h2load -t1 -c50 -m10 -D "$DURATION" --connect-to "127.0.0.1:$PROXY_PORT" "$2" ;;
        handshake) "$TLSLOAD" -p "$PROXY_PORT" -d "$DURATION" -w 0 -c 50 -n "$NAME" ;;
        esac
    }
    profile() { # $1: load; $2: URL; $3: PIDs (comma-separated); $4: file name stem in $OUT
        perf record -F 999 -o "$OUT/$4.data" -p "$3" -- sleep "$DURATION" >>"$OUT/perf.log" 2>&1 &
        local perf_pid=$!
        load "$1" "$2" >/dev/null 2>&1
        wait "$perf_pid" || true
        perf report -i "$OUT/$4.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
            grep -v '^$' >"$OUT/$4.txt" || true
    }
    if perf record -o "$TMP/perf-probe.data" -- true >/dev/null 2>&1; then
        PROXY=portcullis MODE=flexible ROUND=perf
        start_proxy portcullis flexible
        url="https://$NAME:$PROXY_PORT/"
        for what in h1 h2 handshake; do
            log "perf: Portcullis under $what load"
            profile "$what" "$url" "$PROXY_PID" "perf-$what"
            $PY perf-summary "$OUT/perf-$what.txt" --title "#### Portcullis (flexible) under $what load" \
                >>"$OUT/perf-summary.md"
        done
        stop "$PROXY_PID"
        # System calls and TCP segments per request, for every proxy (the kernel's part is
        # most of the cost), then each proxy's profile under the same loads, so the kernel
        # symbols of the three compare.
        {
            echo "#### System calls and TCP segments per request (flexible)"
            echo
            echo "System calls: \`perf stat -e raw_syscalls:sys_enter\` on the proxy. Segments: \`nstat\`"
            echo "TcpOutSegs over the same run, for the whole machine (client, proxy and origin legs)."
            echo
            echo "| proxy | syscalls, HTTP/1.1 (wrk -c50) | syscalls, HTTP/2 (h2load -c50 -m10) | segments, HTTP/1.1 | segments, HTTP/2 |"
            echo "|---|---|---|---|---|"
        } >>"$OUT/perf-summary.md"
        profiles=()
        for PROXY in "${PROXY_LIST[@]}"; do
            start_proxy "$PROXY" flexible
            url="https://$NAME:$PROXY_PORT/"
            pids=$($PY tree "$PROXY_PID")
            calls="" segs=""
            for what in h1 h2; do
                nstat -n
                perf stat -x, -e raw_syscalls:sys_enter -p "$pids" -o "$OUT/syscalls-$PROXY-$what.csv" \
                    -- sleep "$DURATION" >/dev/null 2>&1 &
                perf_pid=$!
                load "$what" "$url" >"$OUT/syscalls-$PROXY-$what.out" 2>&1
                wait "$perf_pid" || true
                nstat -z TcpOutSegs TcpExtTCPPureAcks >"$OUT/segments-$PROXY-$what.txt"
                calls+=" $($PY syscalls-per-request "$OUT/syscalls-$PROXY-$what.csv" "$OUT/syscalls-$PROXY-$what.out" "$what") |"
                segs+=" $($PY segments-per-request "$OUT/segments-$PROXY-$what.txt" "$OUT/syscalls-$PROXY-$what.out" "$what") |"
            done
            echo "| $PROXY |$calls$segs" >>"$OUT/perf-summary.md"
            if [ "$PROXY" != portcullis ]; then
                for what in h1 h2; do
                    log "perf: $PROXY under $what load"
                    profile "$what" "$url" "$pids" "perf-$PROXY-$what"
                    profiles+=("$PROXY:$what")
                done
            fi
            stop "$PROXY_PID"
        done
        echo >>"$OUT/perf-summary.md"
        for pw in "${profiles[@]}"; do
            $PY perf-summary "$OUT/perf-${pw%%:*}-${pw#*:}.txt" --title "#### ${pw%%:*} (flexible) under ${pw#*:} load" \
                >>"$OUT/perf-summary.md"
        done
        cat "$OUT/perf-summary.md" >&2
    else
        log "perf: perf record does not work here; skipped"
    fi
fi

# ------------------------------------------------------------------ many sites

declare -A SITES_PORT SITES_ADMIN
sites_generate() { # $1: number of sites
    local n=$1 dir=$TMP/sites-$1
    SITES_PORT[$n]=$(free_port)
    SITES_ADMIN[$n]=$(free_port)
    log "many sites: generating $n sites"
    python3 "$BENCH/gen_sites.py" "$n" "$dir" --https "127.0.0.1:${SITES_PORT[$n]}" \
        --admin "127.0.0.1:${SITES_ADMIN[$n]}" --origin "http://127.0.0.1:$ORIGIN_HTTP" 2>>"$OUT/run.log"
    cp "$dir/sites.yaml" "$dir/sites-base.yaml"
}

# A request every 5 ms on one kept-alive connection to site-0 (bench.py probe), between
# probe_start and probe_stop: the slowest says whether what ran meanwhile stalled the
# (single) worker's connections.
probe_start() { # $1: port, $2: output file
    rm -f "$TMP/probe.stop"
    $PY probe --port "$1" --name site-0.bench.test --stop "$TMP/probe.stop" >"$2" 2>&1 &
    PROBE_PID=$!
    sleep 0.5
}

probe_stop() { # $1: output file, $2: what ran meanwhile; sets PROBE_SLOWEST (ms)
    touch "$TMP/probe.stop"
    wait "$PROBE_PID" || log "  the probe during $2 failed: $(cat "$1")"
    PROBE_SLOWEST=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["slowest_ms"])' "$1" 2>/dev/null || echo 0)
}

sites_run() { # $1: number of sites, $2: repetition
    local n=$1 rep=$2 dir=$TMP/sites-$1 port=${SITES_PORT[$1]} admin=${SITES_ADMIN[$1]}
    cp "$dir/sites-base.yaml" "$dir/sites.yaml"
    rm -rf "$dir/data"
    local t0 start_s
    t0=$(date +%s.%N)
    spawn "$TMP/logs/portcullis-sites-$n.log" taskset -c "$PROXY_CPU" \
        env RUST_LOG=info,portcullis::access=off "$BIN" run --workers 1 --config "$dir/sites.yaml"
    PROXY_PID=$STARTED
    start_s=$($PY wait-ready "http://127.0.0.1:$admin/readyz" --since "$t0" --timeout 300)
    wait_http "--resolve site-0.bench.test:$port:127.0.0.1 https://site-0.bench.test:$port/" "portcullis ($n sites)"
    sleep 1
    local rss_ready c0 c1 idle_cpu
    rss_ready=$($PY rss "$PROXY_PID")
    c0=$($PY cpu-seconds "$PROXY_PID")
    sleep 3
    c1=$($PY cpu-seconds "$PROXY_PID")
    idle_cpu=$(python3 -c "print(round(($c1 - $c0) / 3, 3))")
    PROXY=portcullis MODE=sites-$n ROUND=$rep
    # First pass: every site's first requests also open that site's origin connections.
    measure "handshake-sites-first" tlsload "$TLSLOAD" -a 127.0.0.1 -p "$port" -d "$DURATION" -w 0 -c 50 \
        -N "$dir/names.txt"
    local hs_first
    hs_first=$(tail -1 "$RESULTS" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("rps", 0))')
    # Then the steady state, every site seen before.
    measure "handshake-sites" tlsload "$TLSLOAD" -a 127.0.0.1 -p "$port" -d "$DURATION" -w 1 -c 50 -N "$dir/names.txt"
    local hs_rps hs_cpu hs_noisy
    hs_rps=$(tail -1 "$RESULTS" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("rps", 0))')
    hs_cpu=$(tail -1 "$RESULTS" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("proxy_cpu", 0))')
    hs_noisy=$(tail -1 "$RESULTS" | python3 -c 'import json,sys; print(int(json.load(sys.stdin).get("noisy", False)))')
    local rss_after r0 r1 reload_same reload_plus
    rss_after=$($PY rss "$PROXY_PID")
    # The probe while Prometheus would scrape: five GET /metrics, 0.3 s apart.
    probe_start "$port" "$TMP/probe-scrape-$n.out"
    local scrape_times=()
    for _ in 1 2 3 4 5; do
        scrape_times+=("$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$admin/metrics")")
        sleep 0.3
    done
    local scrape_s scrape_slowest
    probe_stop "$TMP/probe-scrape-$n.out" "the scrapes"
    scrape_slowest=$PROBE_SLOWEST
    scrape_s=$(python3 -c 'import statistics,sys; print(round(statistics.median(map(float, sys.argv[1:])), 3))' "${scrape_times[@]}")
    # The probe while the two reloads run.
    probe_start "$port" "$TMP/probe-$n.out"
    r0=$(date +%s.%N)
    "$BIN" reload --config "$dir/sites.yaml" >>"$TMP/logs/reload-$n.out" 2>&1 || log "  reload (unchanged) failed"
    r1=$(date +%s.%N)
    reload_same=$(python3 -c "print(round($r1 - $r0, 3))")
    # One more site: replace the file in one rename, then ask at once (the gateway also
    # notices the change by itself within about a second; whichever comes first applies it).
    cp "$dir/sites-plus.yaml" "$dir/sites.yaml.new"
    mv "$dir/sites.yaml.new" "$dir/sites.yaml"
    r0=$(date +%s.%N)
    "$BIN" reload --config "$dir/sites.yaml" >>"$TMP/logs/reload-$n.out" 2>&1 || log "  reload (+1 site) failed"
    r1=$(date +%s.%N)
    reload_plus=$(python3 -c "print(round($r1 - $r0, 3))")
    wait_http "--resolve site-$n.bench.test:$port:127.0.0.1 https://site-$n.bench.test:$port/" "the added site" ||
        log "  the site added by the reload does not answer"
    local reload_slowest
    probe_stop "$TMP/probe-$n.out" "the reloads"
    reload_slowest=$PROBE_SLOWEST
    stop "$PROXY_PID"
    $PY record --out "$RESULTS" kind=sites "round=$rep" "sites=$n" "start_s=$start_s" "rss_ready_kib=$rss_ready" \
        "rss_after_kib=$rss_after" "idle_cpu=$idle_cpu" "handshake_rps=$hs_rps" "handshake_first_rps=$hs_first" "handshake_cpu=$hs_cpu" \
        "reload_same_s=$reload_same" "reload_plus1_s=$reload_plus" "reload_slowest_ms=$reload_slowest" \
        "scrape_s=$scrape_s" "scrape_slowest_ms=$scrape_slowest" "noisy=$hs_noisy" \
        "loadavg=$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/measurements.log"
    log "  $n sites: ready in ${start_s}s, RSS $((rss_ready / 1024)) MiB (after load $((rss_after / 1024)) MiB), idle CPU $idle_cpu, $hs_first then $hs_rps new TLS conn/s, reload ${reload_same}s / +1 site ${reload_plus}s (slowest request meanwhile ${reload_slowest} ms), /metrics ${scrape_s}s (slowest request meanwhile ${scrape_slowest} ms)"
}

if [ "$ONLY" = all ] || [ "$ONLY" = sites ]; then
    sites_generate 3
    sites_generate "$SITES"
    # As many repetitions as rounds, at most 2 (the default run stays near 17 minutes);
    # 3 sites and N sites in turn.
    reps=$((ROUNDS < 2 ? ROUNDS : 2))
    [ "$reps" -ge 1 ] || reps=1
    for ((rep = 1; rep <= reps; rep++)); do
        log "many sites: repetition $rep/$reps"
        sites_run 3 "$rep"
        sites_run "$SITES" "$rep"
    done
    rm -rf "$TMP/sites-3" "$TMP/sites-$SITES"
fi

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/environment.txt"
$PY summary "$RESULTS" >"$OUT/summary.md"
echo >&2
cat "$OUT/summary.md"
log "results in $OUT (results.jsonl, summary.md, environment.txt, tls.txt)"
