# Sourced by the shell suites: TAP lines, counters and polling waits, one copy for all of them.
#   TAP_DETAIL_LINES  lines of detail printed under a failure (default 10)
#   WAIT_STEP         seconds between polls in wait_for (default 0.02)

n=0 pass=0 fail=0
ok() { n=$((n + 1)); pass=$((pass + 1)); echo "ok $n - $1"; }
# not_ok NAME [DETAIL]: the detail, if any, as "#   " comment lines under the failure.
not_ok() {
    n=$((n + 1)); fail=$((fail + 1)); echo "not ok $n - $1"
    [ -n "${2:-}" ] && printf '%s\n' "$2" | sed 's/^/#   /' | head -n "${TAP_DETAIL_LINES:-10}"
    return 0
}
# check NAME CONDITION [DETAIL]: ok when the shell condition (a string, evaluated here) holds.
check() { if eval "$2"; then ok "$1"; else not_ok "$1" "${3:-}"; fi; }

# wait_for SECONDS COMMAND...: polls the command until it succeeds or time runs out.
wait_for() {
    local end=$(($(date +%s) + $1)); shift
    until "$@"; do
        [ "$(date +%s)" -ge "$end" ] && return 1
        sleep "${WAIT_STEP:-0.02}"
    done
}
