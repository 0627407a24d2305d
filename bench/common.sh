# Shared by run.sh, callgrind.sh and pgo.sh (sourced, not run): the bench certificates, the
# origin, Portcullis' and the peers' configs, so all measure against the same setup, readiness
# probes, and the bookkeeping that stops whatever a script started. The functions read $TMP (the run's temporary folder).

# Processes to stop when the script exits (the scripts add each one they start).
PIDS=()

# Stops every process in PIDS, the newest first: TERM, up to 5 s each, then KILL.
stop_all() {
    local i pid
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
}

forget() { # $1: a pid no longer to be stopped on exit
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# The EXIT trap: stops what is left, then removes $TMP unless KEEP=1. $1: the script's name.
bench_cleanup() {
    local status=$?
    set +e
    stop_all
    if [ "${KEEP:-0}" = 1 ]; then
        echo "$1: kept $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit $status
}

# A CA and a leaf for bench.test, *.bench.test, origin.bench.test and 127.0.0.1 in
# $1: ca.pem, leaf.pem, leaf.key, chain.pem (leaf + CA), haproxy.pem (chain + key).
# RSA-2048 keys (the issue's benchmark), or ECDSA P-256 ones with BENCH_KEY=ecdsa.
bench_certs() { # $1: folder
    local dir=$1 key usage
    case "${BENCH_KEY:-rsa}" in
    rsa) key=(-newkey rsa:2048) usage=digitalSignature,keyEncipherment ;;
    ecdsa) key=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) usage=digitalSignature ;;
    *) echo "bench_certs: BENCH_KEY must be rsa or ecdsa, not $BENCH_KEY" >&2; return 2 ;;
    esac
    mkdir -p "$dir"
    openssl req -x509 "${key[@]}" -nodes -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 2 \
        -subj "/CN=Portcullis bench CA" -addext "basicConstraints=critical,CA:true" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req "${key[@]}" -nodes -keyout "$dir/leaf.key" -out "$dir/leaf.csr" \
        -subj "/CN=bench.test" 2>/dev/null
    cat >"$dir/leaf.ext" <<EXT
subjectAltName=DNS:bench.test,DNS:*.bench.test,DNS:origin.bench.test,IP:127.0.0.1
basicConstraints=critical,CA:false
keyUsage=critical,$usage
extendedKeyUsage=serverAuth
EXT
    openssl x509 -req -in "$dir/leaf.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
        -out "$dir/leaf.pem" -days 2 -extfile "$dir/leaf.ext" 2>/dev/null
    cat "$dir/leaf.pem" "$dir/ca.pem" >"$dir/chain.pem"
    cat "$dir/chain.pem" "$dir/leaf.key" >"$dir/haproxy.pem"
    chmod 600 "$dir"/*.key "$dir/haproxy.pem"
}

nginx_common() { # $1: instance name
    cat <<CONF
pid $TMP/$1.pid;
error_log $TMP/logs/$1-error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections 10000; }
CONF
}

nginx_temp_paths() { # $1: instance name
    cat <<CONF
  client_body_temp_path $TMP/$1-tmp/body;
  proxy_temp_path $TMP/$1-tmp/proxy;
  fastcgi_temp_path $TMP/$1-tmp/fastcgi;
  uwsgi_temp_path $TMP/$1-tmp/uwsgi;
  scgi_temp_path $TMP/$1-tmp/scgi;
CONF
}

# The origin's nginx config: one worker answering `return 200 "hello\n"` on a plaintext and
# a TLS 1.3 port, a million requests per keep-alive connection, no access log.
origin_conf() { # $1: plaintext port, $2: TLS port, $3: certificate folder
    cat <<CONF
worker_processes 1;
$(nginx_common origin)
http {
  access_log off;
$(nginx_temp_paths origin)
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  server {
    listen 127.0.0.1:$1;
    listen 127.0.0.1:$2 ssl;
    server_name origin.bench.test;
    ssl_certificate $3/chain.pem;
    ssl_certificate_key $3/leaf.key;
    ssl_protocols TLSv1.3;
    location / { return 200 "hello\n"; }
  }
}
CONF
}

# The peers as TLS terminators in front of the origin, configured as the issue asks (one
# worker or thread, TLS 1.3, keep-alive to the origin, no access log). Both read
# $ORIGIN_HTTP, $ORIGIN_HTTPS (the origin's ports), $CERTS and $NAME (the site's name).
# nginx's mode `direct` is nginx answering over TLS itself, as the origin does: the floor for
# any TLS proxy.
nginx_proxy_conf() { # $1: instance name, $2: port, $3: flexible, full or direct
    local upstream ssl_lines= scheme=http location
    if [ "$3" = full ]; then
        upstream="server 127.0.0.1:$ORIGIN_HTTPS;"
        ssl_lines="proxy_ssl_server_name on; proxy_ssl_name origin.bench.test; proxy_ssl_protocols TLSv1.3; proxy_ssl_verify off;"
        scheme=https
    else
        upstream="server 127.0.0.1:$ORIGIN_HTTP;"
    fi
    if [ "$3" = direct ]; then
        location='return 200 "hello\n";'
    else
        location="proxy_pass $scheme://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto https;
      $ssl_lines"
    fi
    cat <<CONF
worker_processes 1;
$(nginx_common "$1")
http {
  access_log off;
$(nginx_temp_paths "$1")
  keepalive_requests 1000000;   # the default 1000 would close client connections mid-run
  keepalive_timeout 60s;
  upstream origin {
    $upstream
    keepalive 1024;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
  }
  server {
    listen 127.0.0.1:$2 ssl http2;
    server_name $NAME;
    ssl_certificate $CERTS/chain.pem;
    ssl_certificate_key $CERTS/leaf.key;
    ssl_protocols TLSv1.3;
    location / {
      $location
    }
  }
}
CONF
}

haproxy_proxy_conf() { # $1: port, $2: flexible or full
    local server
    if [ "$2" = flexible ]; then
        server="server origin 127.0.0.1:$ORIGIN_HTTP"
    else
        server="server origin 127.0.0.1:$ORIGIN_HTTPS ssl verify none sni str(origin.bench.test) alpn http/1.1 ssl-min-ver TLSv1.3"
    fi
    cat <<CONF
global
    nbthread 1
    maxconn 9000$([ -n "${BUSY_POLL:-}" ] && printf '\n    busy-polling')
    ssl-default-bind-options ssl-min-ver TLSv1.3
    # no log lines: nothing is logged
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option forwardfor
    # keep-alive to the origin shared between client connections, as nginx's upstream
    # keepalive and Portcullis' pool do (the default, safe, gives each client connection's
    # first request a connection of its own)
    http-reuse always
frontend fe
    bind 127.0.0.1:$1 ssl crt $CERTS/haproxy.pem alpn h2,http/1.1
    http-request set-header X-Forwarded-Proto https
    default_backend origin
backend origin
    $server
CONF
}

# Runs PROBE ARGS... every half second until it succeeds; $1: seconds, $2: what, $3: a pid
# that must stay alive meanwhile, or "".
wait_for() {
    local deadline=$((SECONDS + $1)) what=$2 pid=$3
    shift 3
    while [ $SECONDS -lt $deadline ]; do
        "$@" && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            echo "${0##*/}: $what exited before it was ready" >&2
            return 1
        fi
        sleep 0.5
    done
    echo "${0##*/}: $what was not ready within $1 s ($*)" >&2
    return 1
}
# Probes: curl (arguments in $1) answers 200; a TCP connection to 127.0.0.1:$1 opens (for
# the peers, which have no plaintext port: a connection that sends nothing costs next to
# nothing, where a TLS probe would cost a handshake).
http_200() {
    # shellcheck disable=SC2086
    [ "$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 $1 2>/dev/null)" = 200 ]
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts the origin (origin_conf, nginx) on two free ports and waits until both answer.
# Sets ORIGIN_HTTP, ORIGIN_HTTPS and ORIGIN_PID; reads $PY, $CERTS and $NAME.
start_origin() {
    read -r ORIGIN_HTTP ORIGIN_HTTPS < <($PY ports 2)
    mkdir -p "$TMP/origin-tmp" "$TMP/logs"
    origin_conf "$ORIGIN_HTTP" "$ORIGIN_HTTPS" "$CERTS" >"$TMP/origin.conf"
    nginx -t -q -p "$TMP/" -e "$TMP/logs/origin-error.log" -c "$TMP/origin.conf"
    nginx -p "$TMP/" -e "$TMP/logs/origin-error.log" -c "$TMP/origin.conf" -g 'daemon off;' \
        >"$TMP/logs/origin.out" 2>&1 &
    ORIGIN_PID=$!
    PIDS+=("$ORIGIN_PID")
    wait_for 10 "origin (http)" "" http_200 "http://127.0.0.1:$ORIGIN_HTTP/"
    wait_for 10 "origin (https)" "" http_200 \
        "--resolve origin.$NAME:$ORIGIN_HTTPS:127.0.0.1 https://origin.$NAME:$ORIGIN_HTTPS/"
}

# Portcullis as the benchmark runs it: one site for $NAME in front of the origin, in mode
# $3, the admin listener on (`/metrics` stays on, as in a deployment). Reads $CERTS,
# $NAME, $ORIGIN_HTTP and $ORIGIN_HTTPS. Lines in $5 are added under `limits:`.
portcullis_conf() { # $1: port, $2: admin port, $3: flexible, full or strict, $4: storage folder
    local origin
    case "$3" in
    flexible) origin="http://127.0.0.1:$ORIGIN_HTTP" ;;
    full) origin="{ url: \"https://127.0.0.1:$ORIGIN_HTTPS\", mode: full }" ;;
    strict) origin="{ url: \"https://127.0.0.1:$ORIGIN_HTTPS\", mode: strict, ca: $CERTS/ca.pem, server_name: origin.bench.test }" ;;
    esac
    cat <<CONF
listen:
  https: 127.0.0.1:$1
  http: off
admin:
  listen: 127.0.0.1:$2
storage: $4
limits:
  max_connections_per_ip: 0     # every client here is 127.0.0.1
${5:-}
shutdown:
  drain_timeout: 1s
sites:
  - hosts: [$NAME]
    tls: { cert: $CERTS/chain.pem, key: $CERTS/leaf.key }
    origin: $origin
CONF
}

# For bench/pgo.sh: llvm-profdata must read what rustc's LLVM writes, so it is rustup's
# (component llvm-tools) or Debian's of the same major version. Prints its path, or nothing.
rustc_llvm_major() { rustc -vV | awk '/^LLVM version:/ { split($3, v, "."); print v[1] }'; }
llvm_profdata() {
    local host own
    host=$(rustc -vV | awk '/^host:/ { print $2 }')
    own=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
    if [ -x "$own" ]; then echo "$own"; else command -v "llvm-profdata-$(rustc_llvm_major)" || true; fi
}
