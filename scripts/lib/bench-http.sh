# Helpers shared by the HTTP benchmarks (sourced, not run): tools, the dilu binary, background processes, the relu
# model's v2 request and one wrk measurement.

# install_missing PACKAGE...: installs from Debian those of the packages whose command is not found.
install_missing() {
    local need=() p
    for p in "$@"; do
        command -v "$p" >/dev/null || [[ -x "/usr/sbin/$p" ]] || need+=("$p")
    done
    if ((${#need[@]})); then
        echo "== installing ${need[*]} from Debian"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y "${need[@]}" >/dev/null || { apt-get update >/dev/null && apt-get install -y "${need[@]}" >/dev/null; }
    fi
}

# bench_setup: sets DILU (DILU_BIN, or target/release/dilu built now), tmp (a fresh folder) and pids (processes
# started in the background); on exit the processes are stopped and the folder removed.
bench_setup() {
    DILU="${DILU_BIN:-}"
    if [[ -z "$DILU" ]]; then
        echo "== building the release dilu"
        cargo build --release -p dilu
        DILU=target/release/dilu
    fi
    tmp="$(mktemp -d)"
    pids=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
}

# start_dilu WHAT ARGS...: starts `dilu WHAT ARGS...` in the background; sets started_pid, and started_url from
# its "dilu WHAT listening on URL" (or "dilu up: serving on URL") line.
start_dilu() {
    local what="$1"
    shift
    "$DILU" "$what" "$@" >"$tmp/$what.out" 2>"$tmp/$what.err" &
    started_pid=$!
    pids+=("$started_pid")
    started_url=""
    for _ in $(seq 1 300); do
        started_url="$(sed -n -e "s/^dilu $what listening on //p" -e "s/^dilu $what: serving on //p" "$tmp/$what.out" | head -n1)"
        [[ -n "$started_url" ]] && break
        kill -0 "$started_pid" 2>/dev/null || { cat "$tmp/$what.err" >&2; exit 1; }
        sleep 0.1
    done
    [[ -n "$started_url" ]] || { echo "dilu $what did not start" >&2; exit 1; }
}

# relu_request LUA: writes wrk's script for a v2 JSON infer POST of test_relu's input x (FP32 [3, 4, 5], half
# of it negative) to LUA and prints the JSON body.
relu_request() {
    local lua="$1" body
    body="$(python3 -c '
import json
x = [round((i - 30) / 7.0, 3) for i in range(60)]
print(json.dumps({"inputs": [{"name": "x", "shape": [3, 4, 5], "datatype": "FP32", "data": x}]}, separators=(",", ":")))')"
    cat >"$lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$body'
LUA
    echo "$body"
}

# check_relu_answer URL BODY: POSTs BODY to URL (retrying for 10 s) and fails unless the answer is relu(x).
check_relu_answer() {
    local url="$1" body="$2" answer
    answer="$(mktemp)"
    for _ in $(seq 1 100); do
        curl -sf -o "$answer" -H 'Content-Type: application/json' -d "$body" "$url" && break
        sleep 0.1
    done
    python3 - "$answer" "$body" <<'PY'
import json, sys
answer, request = json.load(open(sys.argv[1])), json.loads(sys.argv[2])
y = answer["outputs"][0]["data"]
expected = [max(v, 0.0) for v in request["inputs"][0]["data"]]
assert all(abs(a - b) < 1e-3 for a, b in zip(y, expected)) and len(y) == 60, answer
PY
    rm -f "$answer"
}

# measure URL CONNS THREADS SECS LUA: runs wrk and prints "req_per_s p50_us p99_us errors".
measure() {
    local url="$1" conns="$2" threads="$3" secs="$4" lua="$5" out
    out="$(mktemp)"
    wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s "$lua" "$url" >"$out" 2>&1 || true
    python3 - "$out" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def us(v):
    m = re.match(r"([\d.]+)(us|ms|s)$", v)
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
try:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p50 = us(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
    p99 = us(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
except AttributeError:
    sys.exit("wrk said:\n" + text)
m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errors = int(m.group(1)) if m else 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors += sum(int(g) for g in m.groups()) if m else 0
print(f"{rps:.0f} {p50:.0f} {p99:.0f} {errors}")
PY
    rm -f "$out"
}
