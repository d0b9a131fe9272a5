# Shared by scripts/demo and scripts/bench-issue: start a local Pebble CA
# (with pebble-challtestsrv as its DNS, every name resolving to 127.0.0.1)
# and an unprivileged nginx, on free loopback ports, in $WORK. Everything
# started is stopped by `stop_services` (installed as an EXIT trap by the
# callers). Source it; do not run it.

# A loopback TCP port nobody answers on right now.
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

# Wait until 127.0.0.1:$1 accepts connections, at most $2 seconds.
wait_for_port() {
    local port=$1 deadline=$((SECONDS + $2))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "nothing answers on 127.0.0.1:$port after $2 s" >&2
            return 1
        fi
        sleep 0.05
    done
}

STARTED_PIDS=()

stop_services() {
    local pid
    if [[ -n "${NGINX_DIR:-}" && -f "$NGINX_DIR/nginx.pid" ]]; then
        kill "$(cat "$NGINX_DIR/nginx.pid")" 2>/dev/null || true
    fi
    for pid in "${STARTED_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}

# A throwaway CA and a leaf for Pebble's own HTTPS listener (SANs localhost and
# 127.0.0.1, not a CA: rustls refuses a CA certificate as a server's leaf).
make_pebble_tls() {
    local d=$1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=certherd local test CA" -keyout "$d/ca.key" -out "$d/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=localhost" -keyout "$d/pebble.key" -out "$d/pebble.csr" 2>/dev/null
    openssl x509 -req -in "$d/pebble.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -days 30 -out "$d/pebble.pem" \
        -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n') 2>/dev/null
}

# start_pebble: sets PEBBLE_DIRECTORY, PEBBLE_HTTP_PORT, PEBBLE_TRUST_ROOT.
start_pebble() {
    local d="$WORK/pebble"
    mkdir -p "$d"
    make_pebble_tls "$d"
    local listen mgmt dns cts http tls
    listen=$(free_port) mgmt=$(free_port) dns=$(free_port) cts=$(free_port) http=$(free_port) tls=$(free_port)
    pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 "" -dns01 "127.0.0.1:$dns" \
        -management "127.0.0.1:$cts" -http01 "" -https01 "" -tlsalpn01 "" \
        >"$d/challtestsrv.log" 2>&1 &
    STARTED_PIDS+=($!)
    cat >"$d/pebble.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:$listen", "managementListenAddress": "127.0.0.1:$mgmt",
 "certificate": "$d/pebble.pem", "privateKey": "$d/pebble.key",
 "httpPort": $http, "tlsPort": $tls, "ocspResponderURL": "", "externalAccountBindingRequired": false}}
JSON
    PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 \
        pebble -config "$d/pebble.json" -dnsserver "127.0.0.1:$dns" >"$d/pebble.log" 2>&1 &
    STARTED_PIDS+=($!)
    wait_for_port "$cts" 10
    wait_for_port "$listen" 10 || { cat "$d/pebble.log" >&2; return 1; }
    PEBBLE_DIRECTORY="https://127.0.0.1:$listen/dir"
    PEBBLE_HTTP_PORT=$http
    PEBBLE_TRUST_ROOT="$d/ca.pem"
}

# start_nginx: an nginx serving TLS on NGINX_PORT from $NGINX_DIR/tls/site.{pem,key},
# which start as a self-signed placeholder. Sets NGINX_DIR, NGINX_PORT, NGINX_RELOAD (YAML list).
start_nginx() {
    NGINX_DIR="$WORK/nginx"
    NGINX_PORT=$(free_port)
    mkdir -p "$NGINX_DIR/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj "/CN=placeholder" -keyout "$NGINX_DIR/tls/site.key" -out "$NGINX_DIR/tls/site.pem" 2>/dev/null
    local user=""
    [[ $(id -u) -eq 0 ]] && user="user root;"
    cat >"$NGINX_DIR/nginx.conf" <<CONF
$user
daemon on;
worker_processes 1;
pid "$NGINX_DIR/nginx.pid";
error_log "$NGINX_DIR/error.log" notice;
events { worker_connections 64; }
http {
    access_log "$NGINX_DIR/access.log";
    client_body_temp_path "$NGINX_DIR/client_body_temp";
    proxy_temp_path "$NGINX_DIR/proxy_temp";
    fastcgi_temp_path "$NGINX_DIR/fastcgi_temp";
    uwsgi_temp_path "$NGINX_DIR/uwsgi_temp";
    scgi_temp_path "$NGINX_DIR/scgi_temp";
    server {
        listen 127.0.0.1:$NGINX_PORT ssl;
        ssl_certificate "$NGINX_DIR/tls/site.pem";
        ssl_certificate_key "$NGINX_DIR/tls/site.key";
        location / { return 200 "served by nginx\n"; }
    }
}
CONF
    local nginx_bin
    nginx_bin=$(PATH="$PATH:/usr/sbin:/sbin" command -v nginx)
    "$nginx_bin" -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" -e "$NGINX_DIR/error.log"
    wait_for_port "$NGINX_PORT" 10
    NGINX_RELOAD="[\"$nginx_bin\", \"-p\", \"$NGINX_DIR\", \"-c\", \"$NGINX_DIR/nginx.conf\", \"-e\", \"$NGINX_DIR/error.log\", \"-s\", \"reload\"]"
}
