#!/usr/bin/env bash
# Interoperability: independent TLS stacks (OpenSSL's s_client, GnuTLS's gnutls-cli, Python's ssl,
# Go's crypto/tls) against the ktla echo server, for every TLS version x cipher. Each client sends a
# token and must get it back.
#
# usage: tests/interop/interop.sh BUILD_DIR kernel|userspace
#   kernel:    every connection must have kernel TX and RX (ktla-echo says so per connection), and
#              /proc/net/tls_stat must count one more TX and one more RX software context after
#              each connection, and as many of each as there were connections at the end;
#   userspace: this machine has no kernel TLS, so every connection must say userspace.
# The Go client (goclient.go, standard library only) is built into BUILD_DIR/goclient when that is
# missing or older than its source, with Go's caches under BUILD_DIR/go. The guest cannot write
# BUILD_DIR, so the host run (scripts/test.sh runs it first) builds it; without it every Go case
# fails, saying why.
# Prints TAP ("ok N - ..."), then "interop: N passed, N failed, 0 skipped". Exit status 1 on failure.
set -u
here=$(cd "$(dirname "$0")" && pwd)
build=$1
expect=$2
work=$(mktemp -d)
trap 'kill $server 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
port=$((20000 + RANDOM % 20000))
"$build/ktla-echo" --cert "$work/cert.pem" --key "$work/key.pem" --port $port \
    >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do grep -q listening "$work/server.log" && break; sleep 0.1; done

goclient=$build/goclient
go_error=
if [ ! -x "$goclient" ] || [ "$here/goclient.go" -nt "$goclient" ]; then
    gohome=$(cd "$build" && pwd)/go
    mkdir -p "$gohome" 2>/dev/null
    if ! go_error=$(env HOME="$gohome" GOCACHE="$gohome/cache" GOPATH="$gohome/path" \
        GO111MODULE=off GOFLAGS= GOPROXY=off GOTOOLCHAIN=local \
        go build -o "$goclient" "$here/goclient.go" 2>&1); then
        go_error="cannot build $goclient: ${go_error:-go build failed}"
        printf '%s\n' "$go_error" | head -n 5 | sed 's/^/# /'
    fi
fi
# Stands in for the Go client when it could not be built, so that every Go case fails visibly.
no_goclient() { read -r _; echo "no Go client: $go_error"; return 1; }

stat() { awk -v k="$1" '$1 == k { print $2 }' /proc/net/tls_stat 2>/dev/null || echo 0; }
tx0=$(stat TlsTxSw); rx0=$(stat TlsRxSw)

n=0 pass=0 fail=0
# run_client NAME COMMAND...: starts the client, sends a token, waits for it to come back.
run_client() {
    local name=$1 token="ping-$RANDOM$RANDOM" ok=0 ctx=1 tx1 rx1 logged
    shift
    n=$((n + 1))
    tx1=$(stat TlsTxSw); rx1=$(stat TlsRxSw)
    logged=$(grep -c "tx=$expect rx=$expect" "$work/server.log")
    rm -f "$work/fifo"; mkfifo "$work/fifo"
    "$@" <"$work/fifo" >"$work/client.out" 2>&1 &
    local pid=$!
    exec 3>"$work/fifo"
    # In a subshell: a client that is already gone must fail its test, not SIGPIPE the script.
    (printf '%s\n' "$token" >&3) 2>/dev/null
    for _ in $(seq 600); do
        grep -q "$token" "$work/client.out" && { ok=1; break; }
        kill -0 $pid 2>/dev/null || break
        sleep 0.1
    done
    exec 3>&-
    for _ in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    kill $pid 2>/dev/null; wait $pid 2>/dev/null
    logged=$(( $(grep -c "tx=$expect rx=$expect" "$work/server.log") - logged ))
    tx1=$(( $(stat TlsTxSw) - tx1 )); rx1=$(( $(stat TlsRxSw) - rx1 ))
    [ "$expect" = kernel ] && { [ $tx1 = 1 ] && [ $rx1 = 1 ] || ctx=0; }
    if [ $ok = 1 ] && [ $logged = 1 ] && [ $ctx = 1 ]; then
        pass=$((pass + 1)); echo "ok $n - $name"
    else
        fail=$((fail + 1))
        echo "not ok $n - $name (echoed: $ok, connections logged in $expect mode: $logged of 1, tls_stat: +$tx1 TX +$rx1 RX)"
        sed 's/^/#   client: /' "$work/client.out" | tail -n 5
        tail -n 3 "$work/server.log" | sed 's/^/#   server: /'
    fi
}

for v in 1.2 1.3; do
    for c in AES-128-GCM AES-256-GCM CHACHA20-POLY1305; do
        case $v/$c in
        1.2/AES-128-GCM) ossl=(-tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256) ;;
        1.2/AES-256-GCM) ossl=(-tls1_2 -cipher ECDHE-ECDSA-AES256-GCM-SHA384) ;;
        1.2/CHACHA20-POLY1305) ossl=(-tls1_2 -cipher ECDHE-ECDSA-CHACHA20-POLY1305) ;;
        1.3/AES-128-GCM) ossl=(-tls1_3 -ciphersuites TLS_AES_128_GCM_SHA256) ;;
        1.3/AES-256-GCM) ossl=(-tls1_3 -ciphersuites TLS_AES_256_GCM_SHA384) ;;
        1.3/CHACHA20-POLY1305) ossl=(-tls1_3 -ciphersuites TLS_CHACHA20_POLY1305_SHA256) ;;
        esac
        run_client "openssl s_client TLS$v $c" \
            openssl s_client -connect 127.0.0.1:$port -servername localhost -quiet "${ossl[@]}"
        run_client "gnutls-cli TLS$v $c" \
            gnutls-cli --insecure --port=$port \
            --priority="NORMAL:-VERS-ALL:+VERS-TLS$v:-CIPHER-ALL:+$c" 127.0.0.1
        # Python cannot choose TLS 1.3 suites: it runs once there, with the server's choice.
        if [ $v = 1.2 ] || [ $c = AES-128-GCM ]; then
            run_client "python ssl TLS$v ${c/AES-128-GCM/default}" \
                /usr/bin/python3 "$here/pyclient.py" $port $v "${ossl[2]:-x}"
        fi
        # Go offers only the asked-for suite, TLS 1.3 too (see goclient.go), and checks what it got.
        if [ -z "$go_error" ]; then
            run_client "go crypto/tls TLS$v $c" "$goclient" -connect 127.0.0.1:$port \
                -version $v -cipher $c -servername localhost -ca "$work/cert.pem"
        else
            run_client "go crypto/tls TLS$v $c" no_goclient
        fi
    done
done

if [ "$expect" = kernel ]; then
    tx=$(( $(stat TlsTxSw) - tx0 )); rx=$(( $(stat TlsRxSw) - rx0 ))
    n=$((n + 1))
    if [ "$tx" -eq $((n - 1)) ] && [ "$rx" -eq $((n - 1)) ]; then
        pass=$((pass + 1)); echo "ok $n - /proc/net/tls_stat counted $tx TX and $rx RX contexts"
    else
        fail=$((fail + 1)); echo "not ok $n - /proc/net/tls_stat counted $tx TX and $rx RX, expected $((n - 1)) each"
    fi
    sed 's/^/# /' /proc/net/tls_stat
fi
echo "interop: $pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
