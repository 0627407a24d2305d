#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind.
#
# The "callgrind, 4,000 proxied HTTP/1.1 requests (h2load --h1 -c 10, 20,000 minus 4,000)"
# and "HTTP/2 (h2load -c 10 -m 10, 20,000 minus 4,000)" figures of docs/performance-steps.md.
# Wall-time throughput on this shared two-core machine drifts by 20% between runs; the
# number of instructions the proxy executes per request moves by about 1%, so it shows a
# change of a few percent that wall time cannot. It counts user space only (the kernel's
# loopback TCP, about half of the proxy's CPU, is not in it).
#
# For each binary and protocol the gateway runs twice under `valgrind --tool=callgrind`
# (`portcullis run --workers 1`), each a fresh process that serves SMALL, then LARGE,
# requests from h2load and is stopped with SIGINT (it drains and exits; callgrind writes
# its totals at exit). Start-up, the TLS handshakes of the 10 connections and the shutdown
# cost the same in both runs, so
#
#     (Ir of the LARGE run - Ir of the SMALL run) / (LARGE - SMALL)
#
# (each total without aws-lc's start-up jitter entropy gathering, whose count varies from
# process to process; see callgrind_run)
#
# is the steady-state cost of one request. Several binaries in one call see the same
# certificates, origin and load, for an A/B; with two, their ratio is printed too.
#
#   bench/callgrind.sh target/release/portcullis                  both protocols, flexible
#   bench/callgrind.sh --mode full --proto h1 /tmp/a /tmp/b       A/B, HTTP/1.1, TLS origin
#   bench/callgrind.sh --peers target/release/portcullis          the same count for nginx and
#                                                                 HAProxy, as run.sh sets them up
#
# With --peers, nginx (`master_process off`, its one worker is the process) and HAProxy
# (`nbthread 1`) run under callgrind the same way, with run.sh's configs. Their counts are
# user-space instructions too, so they compare with Portcullis' without the kernel's part
# and without wall time's noise (but not cycle for cycle: the three need not run as many
# instructions per cycle). valgrind has no AVX-512, so all three take their AVX2 crypto.
#
# Each gateway run takes 10-35 s; one binary, both protocols, about 1.5 min. A benchmark, not a
# test: CI does not run it.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/callgrind.sh [options] BINARY [BINARY...]

  --mode M               flexible: origin over plain HTTP (default); full: over TLS;
                         strict: over TLS verified against the bench CA (not with --peers)
  --proto h1|h2|both     HTTP/1.1 (h2load --h1 -c 10), HTTP/2 (h2load -c 10 -m 10), or both (default)
  --streams N            HTTP/2 requests in flight per connection (h2load -m; default 10);
                         1 is a client that asks one thing at a time, whose connection is
                         idle between requests
  --small N              requests in the short run (default 4000)
  --large N              requests in the long run (default 20000)
  --peers                also count nginx and HAProxy as TLS terminators (run.sh's configs)
  --cache                also simulate the caches (valgrind --cache-sim=yes): instruction and
                         data misses in the first level, and misses in a last level the size
                         of this CPU's second, per request beside the instructions
  --keep                 keep the temporary folder (configs, logs, callgrind.out files)
EOF
}

MODE=flexible
PROTO=both
SMALL=4000
STREAMS=10
LARGE=20000
KEEP=0
PEERS=0
CACHE=0
BINS=()
while [ $# -gt 0 ]; do
    case "$1" in
    --mode) MODE=$2; shift ;;
    --proto) PROTO=$2; shift ;;
    --streams) STREAMS=$2; shift ;;
    --small) SMALL=$2; shift ;;
    --large) LARGE=$2; shift ;;
    --keep) KEEP=1 ;;
    --peers) PEERS=1 ;;
    --cache) CACHE=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "callgrind.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) BINS+=("$1") ;;
    esac
    shift
done
case "$MODE" in flexible | full | strict) ;; *) echo "callgrind.sh: --mode flexible|full|strict" >&2; exit 2 ;; esac
[ "$MODE$PEERS" != strict1 ] || { echo "callgrind.sh: the peers have no strict mode here" >&2; exit 2; }
case "$PROTO" in h1) PROTOS=(h1) ;; h2) PROTOS=(h2) ;; both) PROTOS=(h1 h2) ;;
*) echo "callgrind.sh: --proto h1|h2|both" >&2; exit 2 ;; esac
[[ "$SMALL" =~ ^[0-9]+$ && "$LARGE" =~ ^[0-9]+$ && "$LARGE" -gt "$SMALL" ]] ||
    { echo "callgrind.sh: --small and --large must be numbers, LARGE > SMALL" >&2; exit 2; }
[ ${#BINS[@]} -gt 0 ] || { usage >&2; exit 2; }
for b in "${BINS[@]}"; do
    [ -x "$b" ] || { echo "callgrind.sh: $b is not an executable" >&2; exit 1; }
done

missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
[ "$PEERS" = 0 ] || command -v haproxy >/dev/null || missing+=(haproxy)
command -v nginx >/dev/null || missing+=(nginx)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    echo "callgrind.sh: missing tools; install the Debian packages: apt-get install ${missing[*]}" >&2
    exit 1
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY="python3 $ROOT/bench/bench.py"
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"
NAME=bench.test

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ------------------------------------------------------------------ cleanup

TMP=$(mktemp -d /tmp/portcullis-callgrind.XXXXXX)
trap 'bench_cleanup callgrind.sh' EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ certificates (bench/common.sh)

CERTS=$TMP/certs
mkdir -p "$CERTS" "$TMP/logs"
bench_certs "$CERTS"

# ------------------------------------------------------------------ origin (bench/common.sh)

start_origin
log "origin: nginx on 127.0.0.1:$ORIGIN_HTTP (http) and :$ORIGIN_HTTPS (https)"


# ------------------------------------------------------------------ one callgrind run

RUN=0
# Runs SUBJECT under callgrind, serves N requests of PROTO, stops it; sets IR to its total.
# SUBJECT: a Portcullis binary, or peer:nginx or peer:haproxy. (Not called in $(...): the
# process's pid must reach PIDS, for the cleanup.)
callgrind_run() { # $1: subject, $2: h1|h2, $3: requests
    local subject=$1 proto=$2 n=$3
    RUN=$((RUN + 1))
    local dir=$TMP/run-$RUN port admin pid what cmd ready stop_signal=INT
    mkdir -p "$dir"
    read -r port admin < <($PY ports 2)
    case "$subject" in
    peer:nginx)
        what="nginx"
        nginx_proxy_conf "nginx-$RUN" "$port" "$MODE" >"$dir/nginx.conf"
        mkdir -p "$TMP/nginx-$RUN-tmp"
        nginx -t -q -p "$TMP/" -e "$dir/error.log" -c "$dir/nginx.conf"
        # One process: the master's work (none under load) stays out of the count.
        cmd=(nginx -p "$TMP/" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off; master_process off;')
        stop_signal=QUIT # graceful: finishes its connections, then exits
        ready=(port_open "$port")
        ;;
    peer:haproxy)
        what="HAProxy"
        haproxy_proxy_conf "$port" "$MODE" >"$dir/haproxy.cfg"
        haproxy -c -q -f "$dir/haproxy.cfg"
        cmd=(haproxy -db -f "$dir/haproxy.cfg")
        stop_signal=USR1 # soft stop: exits once its connections are done
        ready=(port_open "$port")
        ;;
    *)
        what="the gateway ($subject)"
        # Generous timeouts: under valgrind a TLS handshake takes about a second.
        portcullis_conf "$port" "$admin" "$MODE" "$dir/data" "$(printf '  %s\n' \
            'handshake_timeout: 120s' 'header_read_timeout: 120s' 'idle_timeout: 600s')" \
            >"$dir/portcullis.yaml"
        "$subject" check --config "$dir/portcullis.yaml" >"$dir/check.out" 2>&1 ||
            { cat "$dir/check.out" >&2; return 1; }
        cmd=("$subject" run --config "$dir/portcullis.yaml" --workers 1)
        # The admin port, not the https one: a probe there costs a TLS handshake (~7M
        # instructions), which would not cancel out if the two runs needed a different number.
        ready=(http_200 "http://127.0.0.1:$admin/readyz")
        ;;
    esac
    # RUST_LOG is for Portcullis (no access log, as the peers have none); the peers ignore it.
    env RUST_LOG=info,portcullis::access=off \
        valgrind --tool=callgrind "${SIM[@]}" --callgrind-out-file="$dir/callgrind.out" "${cmd[@]}" >"$dir/proxy.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_for 120 "$what" "$pid" "${ready[@]}" || { tail -20 "$dir/proxy.log" >&2; return 1; }
    local args=(-c 10 -n "$n")
    if [ "$proto" = h1 ]; then args=(--h1 "${args[@]}"); else args+=(-m "$STREAMS"); fi
    h2load "${args[@]}" --connect-to "127.0.0.1:$port" "https://$NAME:$port/" >"$dir/h2load.out" 2>&1 || true
    # Every request must have been answered, and with a 2xx: a run that lost some would
    # make the difference meaningless.
    if ! python3 - "$dir/h2load.out" "$n" <<'EOF'; then
import re, sys
text, n = open(sys.argv[1]).read(), int(sys.argv[2])
req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
ok = req and codes and int(req.group(4)) == n and int(req.group(5)) == 0 and int(codes.group(1)) == n
sys.exit(0 if ok else 1)
EOF
        echo "callgrind.sh: h2load did not get $n successful (2xx) responses from $what ($proto):" >&2
        grep -E '^(requests|status codes):|error|fail' "$dir/h2load.out" >&2 || cat "$dir/h2load.out" >&2
        return 1
    fi

    kill -"$stop_signal" "$pid"
    local deadline=$((SECONDS + 120))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "callgrind.sh: $what did not exit within 120 s of SIG$stop_signal" >&2
        return 1
    fi
    local status=0
    wait "$pid" || status=$?
    forget "$pid"
    if [ "$status" != 0 ]; then
        echo "callgrind.sh: $what exited with status $status after SIG$stop_signal" >&2
        tail -20 "$dir/proxy.log" >&2
        return 1
    fi
    # "totals:" holds the whole process's count, every thread together (what valgrind
    # prints as "Collected"); older callgrinds write only "summary:".
    # With --cache the line has more columns, named by "events:"; D1 and DL count data
    # misses, reads and writes together.
    read -r IR D1 DL I1 < <(awk '
        /^events:/ { for (i = 2; i <= NF; i++) col[$i] = i }
        /^totals:/ { split($0, t, " ") } /^summary:/ { split($0, s, " ") }
        END {
            if (!length(t)) for (k in s) t[k] = s[k]
            d1 = ("D1mr" in col) ? t[col["D1mr"]] + t[col["D1mw"]] : 0
            dl = ("DLmr" in col) ? t[col["DLmr"]] + t[col["DLmw"]] : 0
            i1 = ("I1mr" in col) ? t[col["I1mr"]] : 0
            print t[2], d1, dl, i1
        }' "$dir/callgrind.out")
    [ -n "$IR" ] || { echo "callgrind.sh: no totals in $dir/callgrind.out" >&2; return 1; }
    # aws-lc gathers start-up entropy by timing its own code (jitter entropy,
    # tree_jitter_initialize), and what that executes moves by up to 6M instructions from
    # one process to the next: up to ±0.8% of a per-request figure, for work that is not a
    # request's. Its inclusive count is taken out of the total (0 for nginx and HAProxy).
    local jitter
    jitter=$(callgrind_annotate --inclusive=yes --threshold=100 "$dir/callgrind.out" 2>/dev/null |
        awk '!found && /tree_jitter_initialize/ { gsub(",", "", $1); print $1; found = 1 }')
    IR=$((IR - ${jitter:-0}))
}

# ------------------------------------------------------------------ the measurements

# valgrind simulates two levels, the first and the last. The last is set to this CPU's
# second level (from sysfs, where there is one): a last level shared by every core of the
# host, hundreds of MiB on a cloud machine, would hold all of it and miss nothing.
SIM=()
if [ "$CACHE" = 1 ]; then
    SIM=(--cache-sim=yes)
    l2=/sys/devices/system/cpu/cpu0/cache/index2
    if [ "$(cat $l2/level 2>/dev/null)" = 2 ]; then
        size=$(($(sed 's/K$//' $l2/size) * 1024))
        SIM+=("--LL=$size,$(cat $l2/ways_of_associativity),$(cat $l2/coherency_line_size)")
    fi
fi

declare -A PER
results=()
start=$SECONDS
SUBJECTS=("${BINS[@]}")
[ "$PEERS" = 0 ] || SUBJECTS+=(peer:nginx peer:haproxy)
for proto in "${PROTOS[@]}"; do
    for i in "${!SUBJECTS[@]}"; do
        bin=${SUBJECTS[i]}
        log "$bin, $proto, $MODE: $SMALL requests"
        callgrind_run "$bin" "$proto" "$SMALL"
        small=$IR small_d1=$D1 small_dl=$DL small_i1=$I1
        log "  total Ir $small; now $LARGE requests"
        callgrind_run "$bin" "$proto" "$LARGE"
        large=$IR
        log "  total Ir $large"
        # Keyed by position: the same binary may be given twice (to see the noise).
        PER[$i,$proto]=$(( (large - small) / (LARGE - SMALL) ))
        line=$(printf '%-32s %-3s %-9s small %14s  large %14s  per request %7s Ir' \
            "$bin" "$proto" "$MODE" "$small" "$large" "${PER[$i,$proto]}")
        if [ "$CACHE" = 1 ]; then
            line+=$(printf '  %6s I1 misses  %6s D1 misses  %5s LL misses' \
                "$(( (I1 - small_i1) / (LARGE - SMALL) ))" \
                "$(( (D1 - small_d1) / (LARGE - SMALL) ))" "$(( (DL - small_dl) / (LARGE - SMALL) ))")
        fi
        results+=("$line")
    done
done

echo "# callgrind, user-space Ir per proxied request = (Ir with $LARGE requests - Ir with $SMALL) / $((LARGE - SMALL)); h2load -c 10 (HTTP/2: -m $STREAMS)"
printf '%s\n' "${results[@]}"
if [ ${#BINS[@]} -eq 2 ]; then
    for proto in "${PROTOS[@]}"; do
        python3 -c 'import sys; a, b = int(sys.argv[2]), int(sys.argv[3]); print(f"{sys.argv[1]}: second / first = {b / a:.3f}")' \
            "$proto" "${PER[0,$proto]}" "${PER[1,$proto]}"
    done
fi
if [ "$PEERS" = 1 ]; then
    for proto in "${PROTOS[@]}"; do
        python3 -c 'import sys; p, n, h = (int(x) for x in sys.argv[2:5]); print(f"{sys.argv[1]}: {sys.argv[5]} / nginx = {p / n:.2f}, / HAProxy = {p / h:.2f}")' \
            "$proto" "${PER[0,$proto]}" "${PER[${#BINS[@]},$proto]}" "${PER[$((${#BINS[@]} + 1)),$proto]}" "${BINS[0]}"
    done
fi
log "done in $((SECONDS - start)) s"
