# Shared by run.sh and callgrind.sh (sourced, not run): the bench certificates and the origin,
# so both measure against the same setup, and the bookkeeping that stops whatever a script
# started. The functions read $TMP (the run's temporary folder).

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

# An RSA-2048 CA and a leaf for bench.test, *.bench.test, origin.bench.test and 127.0.0.1 in
# $1: ca.pem, leaf.pem, leaf.key, chain.pem (leaf + CA), haproxy.pem (chain + key).
bench_certs() { # $1: folder
    local dir=$1
    mkdir -p "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 2 \
        -subj "/CN=Portcullis bench CA" -addext "basicConstraints=critical,CA:true" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout "$dir/leaf.key" -out "$dir/leaf.csr" \
        -subj "/CN=bench.test" 2>/dev/null
    cat >"$dir/leaf.ext" <<'EXT'
subjectAltName=DNS:bench.test,DNS:*.bench.test,DNS:origin.bench.test,IP:127.0.0.1
basicConstraints=critical,CA:false
keyUsage=critical,digitalSignature,keyEncipherment
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
