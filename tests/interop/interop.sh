#!/usr/bin/env bash
# Interoperability: independent TLS stacks download files from ktla-serve, for every TLS version x
# cipher, and the SHA-256 of every file must match. The clients: OpenSSL's s_client and curl (on
# OpenSSL), GnuTLS's gnutls-cli, Python's ssl (pyclient.py, through http.client) and Go's crypto/tls
# (goclient.go, through net/http). Each offers only its cell's version and cipher, verifies the
# server's certificate, and fetches every file of `files` below (1 byte; one full record and a
# byte; 1 MiB and a byte) over ONE connection: s_client and gnutls-cli send the GETs pipelined,
# the last with "Connection: close", and httpsplit.py cuts what they print into responses by
# Content-Length; curl, Python and Go keep the connection alive from one GET to the next and count
# their connections. The server's access log must show each request answered 200 with the whole
# file, in the cell's version and cipher.
#
# usage: tests/interop/interop.sh BUILD_DIR kernel|userspace
#   kernel:    ktla-serve runs with --ktls require; every request must be logged in kernel mode,
#              /proc/net/tls_stat must count exactly one more TX and one more RX software context
#              in each cell (its one connection), and as many of each as there were cells at the
#              end;
#   userspace: this machine has no kernel TLS (--ktls auto), so every request must say userspace.
# The Go client (goclient.go, standard library only) is built into BUILD_DIR/goclient when that is
# missing or older than its source, with Go's caches under BUILD_DIR/go. The guest cannot write
# BUILD_DIR, so the host run (scripts/test.sh runs it first) builds it; without it every Go case
# fails, saying why. A missing client fails its cells too: nothing here skips.
# Prints TAP ("ok N - ..."), then "interop: N passed, N failed, 0 skipped". Exit status 1 on failure.
# No fixed sleeps: every wait polls with a deadline. Starting a program is slow in the guest (its
# root is 9p under emulation), so the checks run in shell builtins where they can.
set -u
here=$(cd "$(dirname "$0")" && pwd)
build=$1
expect=$2
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill $server 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

# now_ms: sets $now to milliseconds since the epoch (bash's clock: no process); secs MS: "S.T".
now_ms() { now=${EPOCHREALTIME//[!0-9]/}; now=$((10#$now / 1000)); }
secs() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }
now_ms; started=$now

# wait_for SECONDS COMMAND...: polls the command every 20 ms until it succeeds or time runs out.
wait_for() {
    local end
    now_ms; end=$((now + $1 * 1000)); shift
    until "$@"; do
        now_ms; [ $now -ge $end ] && return 1
        sleep 0.02
    done
}

# The files, and what each download must give: "body STATUS LENGTH SHA256", in this order.
files=(f1 f16385 f1048577)
mkdir -p "$work/www"
want=()
for f in "${files[@]}"; do
    head -c "${f#f}" /dev/urandom >"$work/www/$f"
    sum=$(sha256sum "$work/www/$f")
    want+=("body 200 ${f#f} ${sum%% *}")
done
sizes=$(printf '%s, ' "${files[@]#f}"); sizes=${sizes%, }
# The pipelined requests of s_client and gnutls-cli: the server closes after the last answer.
: >"$work/requests"
for f in "${files[@]}"; do
    printf 'GET /%s HTTP/1.1\r\nHost: localhost\r\n' "$f" >>"$work/requests"
    [ "$f" = "${files[-1]}" ] && printf 'Connection: close\r\n' >>"$work/requests"
    printf '\r\n' >>"$work/requests"
done

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cert=$work/cert.pem
policy=auto
[ "$expect" = kernel ] && policy=require
log=$work/access.log
: >"$log"
"$build/ktla-serve" --listen 127.0.0.1:0 --workers 1 --ktls $policy --cert "$cert" \
    --key "$work/key.pem" --access-log "$log" "$work/www" >"$work/server.out" 2>"$work/server.err" &
server=$!
port=1
# up_or_gone: the server has printed its URL, or has exited.
up_or_gone() { grep -q '^ktla-serve .* at https://' "$work/server.out" || ! kill -0 $server 2>/dev/null; }
wait_for 120 up_or_gone
if grep -q '^ktla-serve .* at https://' "$work/server.out"; then
    port=$(grep -o 'https://[^ ]*' "$work/server.out" | head -n 1)
    port=${port##*:}; port=${port%/}
else
    echo "# ktla-serve did not start:"
    sed 's/^/#   /' "$work/server.out" "$work/server.err" | head -n 10
fi

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

# tls_stat: sets $tx and $rx to the kernel's counts of sockets given a software TX and RX context.
tls_stat() {
    local key value
    tx=0 rx=0
    [ -r /proc/net/tls_stat ] || return 0
    while read -r key value; do
        case $key in TlsTxSw) tx=$value ;; TlsRxSw) rx=$value ;; esac
    done </proc/net/tls_stat
}

# ---- the clients. Each downloads every file over one connection and prints a "body" line per
# file (as in $want), then "connections N"; its complaints go to standard error. They read the
# cell from $v (1.2, 1.3), $c (AES-128-GCM, ...) and $ossl (OpenSSL's name for the cipher).

# raw_client COMMAND...: s_client and gnutls-cli print what the server sends. They get the
# pipelined requests on a FIFO that stays open until they exit, which they do when the server
# closes after the last response (gnutls-cli would hang up at the end of its input, before the
# responses arrived).
raw_client() {
    local pid status
    rm -f "$work/fifo"; mkfifo "$work/fifo"
    timeout 300 "$@" <"$work/fifo" >"$work/raw" &
    pid=$!
    exec 3>"$work/fifo"
    # In a subshell: a client that is already gone must fail its test, not SIGPIPE the script.
    (cat "$work/requests" >&3) 2>/dev/null
    wait $pid; status=$?
    exec 3>&-
    /usr/bin/python3 "$here/httpsplit.py" "$work/raw" || { [ $status = 0 ] && status=1; }
    echo "connections 1"
    return $status
}

s_client() {
    local opts=(-tls1_2 -cipher "$ossl")
    [ $v = 1.3 ] && opts=(-tls1_3 -ciphersuites "$ossl")
    raw_client openssl s_client -connect 127.0.0.1:$port -servername localhost -quiet \
        -CAfile "$cert" -verify_hostname localhost -verify_return_error "${opts[@]}"
}

# gnutls-cli writes what it receives one byte per write(2): the largest file costs it seconds.
gnutls_cli() {
    raw_client gnutls-cli --port=$port --sni-hostname=localhost --verify-hostname=localhost \
        --x509cafile="$cert" --logfile="$work/gnutls.log" \
        --priority="NORMAL:-VERS-ALL:+VERS-TLS$v:-CIPHER-ALL:+$c" 127.0.0.1
}

# curl: one invocation, every URL, and it keeps the connection; num_connects counts new ones.
# curl_ PROTO: HTTP/1.1 or HTTP/2 (--http1.1, --http2), and every response must have come over it.
curl_h1() { curl_ 1.1; }
curl_h2() { curl_ 2; }
curl_() {
    local proto=$1 opts=(--ciphers "$ossl") args=() outs=() out status code size conns ver total=0 i=0 sums
    [ $v = 1.3 ] && opts=(--tls13-ciphers "$ossl")
    for f in "${files[@]}"; do
        : >"$work/got-$f"
        args+=(-o "$work/got-$f" "https://localhost:$port/$f")
        outs+=("$work/got-$f")
    done
    out=$(timeout 300 curl -sS --max-time 240 --cacert "$cert" --resolve localhost:$port:127.0.0.1 \
        --http$proto --tlsv$v --tls-max $v "${opts[@]}" \
        -w '%{http_code} %{size_download} %{num_connects} %{http_version}\n' "${args[@]}")
    status=$?
    mapfile -t sums <<<"$(sha256sum "${outs[@]}")"
    while read -r code size conns ver; do
        [ -n "$code" ] || continue
        if [ "$ver" != "$proto" ]; then
            echo "answered over HTTP/$ver, wanted HTTP/$proto" >&2
            status=1
        fi
        echo "body $code $size ${sums[$i]%% *}"
        i=$((i + 1)) total=$((total + conns))
    done <<<"$out"
    echo "connections $total"
    return $status
}

python_ssl() {
    timeout 300 /usr/bin/python3 "$here/pyclient.py" $port $v "$ossl" "$cert" "${files[@]}"
}

go_tls() {
    if [ -n "$go_error" ]; then echo "no Go client: $go_error" >&2; return 1; fi
    timeout 300 "$goclient" -connect 127.0.0.1:$port -version $v -cipher $c -servername localhost \
        -ca "$cert" "$@" "${files[@]}"
}
go_h2() { go_tls -h2; }

# Kernel mode: the server's first kernel TLS 1.3 connection has it ask the kernel, once, whether it
# can rekey (for KeyUpdate), by installing a throwaway TX key on a loopback connection of its own
# (src/ktls.c, ktla_ktls_can_rekey), and tls_stat counts that context too. One TLS 1.3 download
# before the cells takes it out of their counts.
if [ "$expect" = kernel ]; then
    tls_stat; tx0=$tx rx0=$rx
    curl -sS --max-time 120 --cacert "$cert" --resolve localhost:$port:127.0.0.1 --tlsv1.3 \
        -o /dev/null "https://localhost:$port/${files[0]}" 2>&1 | sed 's/^/# warm-up: /'
    tls_stat
    echo "# warm-up: one TLS 1.3 download before the cells, tls_stat +$((tx - tx0)) TX +$((rx - rx0)) RX"
fi
tls_stat; tx_start=$tx rx_start=$rx

# log_lines N: sets $entries to the access log's lines after the first N.
log_lines() { mapfile -t -s "$1" entries <"$log"; }
# logged N: whether the access log has a line for every file after its first N.
logged() { log_lines "$1"; [ ${#entries[@]} -ge ${#files[@]} ]; }

n=0 pass=0 fail=0
# cell NAME FUNCTION: runs one client in the current cell ($v, $c, $ossl, $iana) and checks
# everything; prints one TAP line, and on failure every reason and the last words of each side.
cell() {
    local name=$1 client=$2 why=() tx0 rx0 lines errs status t0 t1 i line got=() conns=
    local st len sum wsum path ver ciph mode want_log
    n=$((n + 1))
    tls_stat; tx0=$tx rx0=$rx
    log_lines 0; lines=${#entries[@]}
    mapfile -t entries <"$work/server.err"; errs=${#entries[@]}
    now_ms; t0=$now
    "$client" >"$work/result" 2>"$work/client.err"
    status=$?
    now_ms; t1=$now
    [ $status = 0 ] || why+=("client exit status $status$([ $status = 124 ] && echo ', timed out')")

    # The bodies, in order, and the connections the client needed.
    while read -r line; do
        case $line in
        "body "*) got+=("$line") ;;
        "connections "*) read -r _ conns _ <<<"$line" ;;
        esac
    done <"$work/result"
    for i in "${!files[@]}"; do
        [ "${got[$i]:-}" = "${want[$i]}" ] && continue
        if [ -z "${got[$i]:-}" ]; then
            why+=("/${files[$i]}: no response")
        else
            read -r _ st len sum <<<"${got[$i]}"
            wsum=${want[$i]##* }
            why+=("/${files[$i]}: status $st, $len bytes, SHA-256 ${sum:0:16}... (want 200, ${files[$i]#f} bytes, ${wsum:0:16}...)")
        fi
        break
    done
    [ ${#got[@]} -le ${#files[@]} ] || why+=("${#got[@]} responses for ${#files[@]} requests")
    [ "$conns" = 1 ] || why+=("${conns:-unknown} connections")

    # The server logs a request once its response is out, which can be just after the client
    # has it all. Each line must say: path, 200, the whole length, the cell's version and cipher,
    # and the mode.
    kill -0 $server 2>/dev/null && wait_for 10 logged $lines
    log_lines $lines
    for i in "${!files[@]}"; do
        want_log="/${files[$i]} 200 ${files[$i]#f} TLSv$v $iana $expect"
        read -r _ _ _ _ _ _ path _ st len ver ciph mode _ <<<"${entries[$i]:-}"
        line="$path $st $len $ver $ciph $mode"
        [ "$line" = "$want_log" ] && continue
        why+=("access log line $((i + 1)): '${entries[$i]:-none}', want '$want_log'")
        break
    done
    [ ${#entries[@]} -le ${#files[@]} ] || why+=("${#entries[@]} requests logged, want ${#files[@]}")

    local statmsg=
    if [ "$expect" = kernel ]; then
        tls_stat
        statmsg=", tls_stat +$((tx - tx0)) TX +$((rx - rx0)) RX"
        [ $((tx - tx0)) = 1 ] && [ $((rx - rx0)) = 1 ] ||
            why+=("tls_stat +$((tx - tx0)) TX +$((rx - rx0)) RX, want +1 each")
    fi

    now_ms
    if [ ${#why[@]} = 0 ]; then
        pass=$((pass + 1))
        echo "ok $n - $name TLS$v $c: ${#files[@]} files ($sizes bytes) on 1 connection, SHA-256s match; logged $expect$statmsg (client $(secs $((t1 - t0))) s, all $(secs $((now - t0))) s)"
    else
        fail=$((fail + 1))
        echo "not ok $n - $name TLS$v $c: $(printf '%s; ' "${why[@]}" | sed 's/; $//')"
        sed 's/^/#   client: /' "$work/client.err" | tail -n 5
        [ "$client" = gnutls_cli ] && [ -s "$work/gnutls.log" ] &&
            tail -n 3 "$work/gnutls.log" | sed 's/^/#   gnutls-cli: /'
        tail -n +$((errs + 1)) "$work/server.err" | tail -n 3 | sed 's/^/#   server: /'
    fi
}

for v in 1.2 1.3; do
    for c in AES-128-GCM AES-256-GCM CHACHA20-POLY1305; do
        # ossl: OpenSSL's name (s_client, curl, Python); iana: the access log's.
        case $v/$c in
        1.2/AES-128-GCM) ossl=ECDHE-ECDSA-AES128-GCM-SHA256 iana=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 ;;
        1.2/AES-256-GCM) ossl=ECDHE-ECDSA-AES256-GCM-SHA384 iana=TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 ;;
        1.2/CHACHA20-POLY1305) ossl=ECDHE-ECDSA-CHACHA20-POLY1305 iana=TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 ;;
        1.3/AES-128-GCM) ossl=TLS_AES_128_GCM_SHA256 iana=$ossl ;;
        1.3/AES-256-GCM) ossl=TLS_AES_256_GCM_SHA384 iana=$ossl ;;
        1.3/CHACHA20-POLY1305) ossl=TLS_CHACHA20_POLY1305_SHA256 iana=$ossl ;;
        esac
        cell "openssl s_client" s_client
        cell "curl" curl_h1
        cell "curl --http2" curl_h2
        cell "gnutls-cli" gnutls_cli
        cell "python ssl" python_ssl
        cell "go crypto/tls" go_tls
        cell "go net/http HTTP/2" go_h2
    done
done

if [ "$expect" = kernel ]; then
    tls_stat
    tx=$((tx - tx_start)) rx=$((rx - rx_start))
    n=$((n + 1))
    if [ $tx = $((n - 1)) ] && [ $rx = $((n - 1)) ]; then
        pass=$((pass + 1)); echo "ok $n - /proc/net/tls_stat counted $tx TX and $rx RX contexts for $((n - 1)) connections"
    else
        fail=$((fail + 1)); echo "not ok $n - /proc/net/tls_stat counted $tx TX and $rx RX, expected $((n - 1)) each"
    fi
    if [ -r /proc/net/tls_stat ]; then sed 's/^/# /' /proc/net/tls_stat; else echo "# no /proc/net/tls_stat"; fi
fi
# h2load (nghttp2's load generator): many streams at once on few connections, HTTP/2 only. It
# keeps no bodies, so what it checks is the count: every response 2xx and exactly the files'
# bytes as DATA (the SHA-256s over HTTP/2 are curl's and Go's above).
tls_stat; tx0=$tx rx0=$rx
reqs=297 conns=3 bytes=0 # 99 a connection: each of the 3 files 33 times
urls=()
for f in "${files[@]}"; do urls+=("https://127.0.0.1:$port/$f"); bytes=$((bytes + ${f#f})); done
h2=$(timeout 300 h2load -n $reqs -c $conns -m 10 "${urls[@]}" 2>&1)
data=$(echo "$h2" | sed -n 's/^traffic: .*(\([0-9]*\)) data$/\1/p')
ok2xx=$(echo "$h2" | sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p')
proto=$(echo "$h2" | sed -n 's/^Application protocol: //p')
why=()
[ "$proto" = h2 ] || why+=("protocol '${proto:-none}'")
[ "$ok2xx" = $reqs ] || why+=("${ok2xx:-no} 2xx of $reqs")
[ "$data" = $((reqs / ${#files[@]} * bytes)) ] || why+=("${data:-no} DATA bytes, want $((reqs / ${#files[@]} * bytes))")
statmsg=
if [ "$expect" = kernel ]; then
    tls_stat
    statmsg=", tls_stat +$((tx - tx0)) TX +$((rx - rx0)) RX"
    [ $((tx - tx0)) = $conns ] && [ $((rx - rx0)) = $conns ] ||
        why+=("tls_stat +$((tx - tx0)) TX +$((rx - rx0)) RX, want +$conns each")
fi
n=$((n + 1))
if [ ${#why[@]} = 0 ]; then
    pass=$((pass + 1))
    echo "ok $n - h2load: $reqs requests, 10 streams at once on each of $conns connections, all 2xx, $data DATA bytes$statmsg"
else
    fail=$((fail + 1))
    echo "not ok $n - h2load: $(printf '%s; ' "${why[@]}" | sed 's/; $//')"
    echo "$h2" | tail -n 12 | sed 's/^/#   /'
fi

now_ms
echo "# $n tests in $(secs $((now - started))) s"
echo "interop: $pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
