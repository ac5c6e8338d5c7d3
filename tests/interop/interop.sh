#!/usr/bin/env bash
# Interoperability: independent TLS stacks (OpenSSL's s_client, GnuTLS's gnutls-cli, Python's ssl)
# against the ktla echo server, for every TLS version x cipher. Each client sends a token and must
# get it back.
#
# usage: tests/interop/interop.sh BUILD_DIR kernel|userspace
#   kernel:    every connection must have kernel TX and RX (ktla-echo says so per connection) and
#              /proc/net/tls_stat must count one TX and one RX software context per connection;
#   userspace: this machine has no kernel TLS, so every connection must say userspace.
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

stat() { awk -v k="$1" '$1 == k { print $2 }' /proc/net/tls_stat 2>/dev/null || echo 0; }
tx0=$(stat TlsTxSw); rx0=$(stat TlsRxSw)

n=0 pass=0 fail=0
# run_client NAME COMMAND...: starts the client, sends a token, waits for it to come back.
run_client() {
    local name=$1 token="ping-$RANDOM$RANDOM" ok=0
    shift
    n=$((n + 1))
    rm -f "$work/fifo"; mkfifo "$work/fifo"
    "$@" <"$work/fifo" >"$work/client.out" 2>&1 &
    local pid=$!
    exec 3>"$work/fifo"
    printf '%s\n' "$token" >&3
    for _ in $(seq 600); do
        grep -q "$token" "$work/client.out" && { ok=1; break; }
        kill -0 $pid 2>/dev/null || break
        sleep 0.1
    done
    exec 3>&-
    for _ in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    kill $pid 2>/dev/null; wait $pid 2>/dev/null
    local line
    line=$(grep -c "tx=$expect rx=$expect" "$work/server.log")
    if [ $ok = 1 ] && [ "$line" -ge "$n" ]; then
        pass=$((pass + 1)); echo "ok $n - $name"
    else
        fail=$((fail + 1)); echo "not ok $n - $name (echoed: $ok, connections in $expect mode: $line of $n)"
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
