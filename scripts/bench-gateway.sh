#!/usr/bin/env bash
# The gateway against nginx, side by side in front of the same `dilu worker` (`relu.onnx`), measured with wrk
# over keep-alive connections on this machine:
#
#   direct:   wrk -> dilu worker
#   nginx:    wrk -> nginx (Debian's, a keep-alive reverse proxy) -> dilu worker
#   gateway:  wrk -> dilu gateway (static route)                   -> dilu worker
#
# Each of RUNS runs measures every path in SLICES interleaved slices (the order rotating from slice to slice):
# per slice, wrk with 1 connection (serial p50) and with CONNS connections (req/s, p99), every request a v2
# JSON infer POST. A run's figures per path: the median of its slices' serial p50s and p99s, and its requests
# over its seconds at CONNS. Interleaving matters here: this machine's speed drifts by 10-20 % over a minute,
# which back-to-back 10 s measurements turned into ratios of 0.72-1.19x between two runs of the same binaries.
# Prints one table row per run and path, the proxies' CPU time per request, and the ratios the acceptance
# asks for: gateway req/s / nginx req/s, and the p50 each proxy adds to the direct path. Then the same at CONNS
# with a new connection for every request (`Connection: close`), nginx against the gateway. Then it sends bursts of large bodies through the gateway and
# reports its resident memory before, right after and some seconds after them.
#
#   scripts/bench-gateway.sh
#
# Environment: DILU_BIN (use this binary instead of building target/release/dilu), RUNS (3), DURATION (wrk
# seconds per path and mode in a run, 10), SLICES (the slices DURATION is cut into, 5), WARMUP (seconds per path before the runs, 3), CONNS (16), THREADS (the gateway's
# event loops = nginx's worker_processes = wrk's threads at CONNS; 2), WORKER_ARGS (more flags for
# `dilu worker`), BIG_MB (size of a large body, 8), BIG_CONNS (concurrent large bodies, 48), DILU_MODEL_CACHE.
# Needs root (or nginx and wrk installed) to install nginx and wrk from Debian when they are missing.
#
# nginx is set up as a keep-alive reverse proxy and nothing more: upstream keepalive 64 with
# proxy_http_version 1.1 and an empty Connection header, access_log off, no limit on requests per connection
# on either side, and as many worker processes as the gateway has event loops. Both proxies run their default
# buffering (nginx reads a body of this size into memory, as the gateway does). Everything (wrk, the proxy,
# the worker) shares this machine's CPUs, so a proxy's throughput is mostly its CPU time per request.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/bench-http.sh
source scripts/lib/bench-http.sh

RUNS="${RUNS:-3}"
DURATION="${DURATION:-10}"
SLICES="${SLICES:-5}"
WARMUP="${WARMUP:-3}"
CONNS="${CONNS:-16}"
THREADS="${THREADS:-2}"
BIG_MB="${BIG_MB:-8}"
BIG_CONNS="${BIG_CONNS:-48}"
CACHE="${DILU_MODEL_CACHE:-$HOME/.cache/dilu/models}"

install_missing nginx wrk
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
bench_setup
scripts/fetch-models.sh "$CACHE" >/dev/null
MODEL="$CACHE/onnx-light/relu.onnx"
test -s "$MODEL"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# shellcheck disable=SC2086 # WORKER_ARGS is a list of flags
start_dilu worker --name relu --model "$MODEL" --listen 127.0.0.1:0 ${WORKER_ARGS:-}
worker="$started_url" worker_pid="$started_pid"
for _ in $(seq 1 300); do
    curl -sf "$worker/v2/health/ready" >/dev/null && break
    sleep 0.1
done
start_dilu gateway --listen 127.0.0.1:0 --route "relu=$worker" --threads "$THREADS"
gateway="$started_url" gateway_pid="$started_pid"

# nginx as a keep-alive reverse proxy: HTTP/1.1 to the worker over pooled connections, no access log, as many
# worker processes as the gateway has runtime threads, and no cap on requests per connection on either side
# (nginx's default of 1,000 would make wrk and nginx reconnect, which the gateway never does).
nginx_port="$(free_port)"
mkdir -p "$tmp/nginx"
cat >"$tmp/nginx/nginx.conf" <<EOF
worker_processes $THREADS;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    upstream worker {
        server ${worker#http://};
        keepalive 64;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        client_max_body_size 64m;
        location / {
            proxy_pass http://worker;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
"$NGINX" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -g 'daemon off;' 2>"$tmp/nginx/stderr" &
nginx_pid=$!
pids+=("$nginx_pid")
nginx="http://127.0.0.1:$nginx_port"

path=/v2/models/relu/infer
body="$(relu_request "$tmp/post.lua")"
for base in "$worker" "$nginx" "$gateway"; do
    check_relu_answer "$base$path" "$body"
done
echo "== direct $worker, nginx $nginx (worker_processes $THREADS), gateway $gateway (--threads $THREADS)"

url_of() {
    case "$1" in
        direct) echo "$worker$path" ;;
        nginx) echo "$nginx$path" ;;
        gateway) echo "$gateway$path" ;;
    esac
}

# CPU time (user + system, clock ticks) of a process and its children threads; for nginx, of all its processes.
cpu_ticks() {
    local total=0 pid
    case "$1" in
        direct) set -- "$worker_pid" ;;
        nginx) set -- "$nginx_pid" $(pgrep -P "$nginx_pid" || true) ;;
        gateway) set -- "$gateway_pid" ;;
    esac
    for pid in "$@"; do
        # Fields 14 and 15 of /proc/PID/stat (after the command name in parentheses).
        total=$((total + $(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
    done
    echo "$total"
}

hz="$(getconf CLK_TCK)"
targets=(direct nginx gateway)
for t in "${targets[@]}"; do
    measure "$(url_of "$t")" "$CONNS" "$THREADS" "$WARMUP" "$tmp/post.lua" >/dev/null
done

echo "== machine: $(nproc) CPUs, load before the runs: $(cut -d' ' -f1-3 /proc/loadavg); busiest other processes:"
ps -eo pcpu,ni,etime,comm --sort=-pcpu | grep -v -E ' (dilu|nginx|wrk)$' | head -5 | sed 's/^/   /'
# Seconds per slice: DURATION spread over SLICES (at least one second each).
slice_s=$((DURATION / SLICES))
((slice_s >= 1)) || slice_s=1
results="$tmp/results"
: >"$results"
for run in $(seq 1 "$RUNS"); do
    # SLICES rounds of one slice per path; the order rotates from round to round and run to run, so that
    # no path is always measured first or last and a drift of the machine's speed reaches every path alike.
    for slice in $(seq 1 "$SLICES"); do
        order=()
        for i in 0 1 2; do order+=("${targets[$(((i + run + slice) % 3))]}"); done
        for t in "${order[@]}"; do
            read -r _ serial_p50 _ e1 < <(measure "$(url_of "$t")" 1 1 "$slice_s" "$tmp/post.lua")
            before="$(cpu_ticks "$t")"
            read -r rps _ p99 e2 < <(measure "$(url_of "$t")" "$CONNS" "$THREADS" "$slice_s" "$tmp/post.lua")
            after="$(cpu_ticks "$t")"
            echo "$run $slice $t $serial_p50 $rps $p99 $((e1 + e2)) $((after - before)) $slice_s" >>"$results"
        done
    done
    python3 - "$results" "$run" "$hz" "$CONNS" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.split()[0] == sys.argv[2]]
hz = float(sys.argv[3])
for t in ("direct", "nginx", "gateway"):
    mine = [r for r in rows if r[2] == t]
    p50 = statistics.median(float(r[3]) for r in mine)
    requests = sum(float(r[4]) * float(r[8]) for r in mine)
    rps = requests / sum(float(r[8]) for r in mine)
    p99 = statistics.median(float(r[5]) for r in mine)
    cpu = sum(float(r[7]) for r in mine) / hz * 1e6 / max(requests, 1)
    slices = " ".join(f"{float(r[4]) / 1000:.1f}k" for r in mine)
    print(f"   run {sys.argv[2]} {t}: serial p50 {p50:.0f} µs; c={sys.argv[4]} {rps:.0f} req/s (slices {slices}), "
          f"p99 {p99:.0f} µs; CPU {cpu:.1f} µs/req; errors {sum(int(r[6]) for r in mine)}")
PY
done
echo "== load after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$results" "$CONNS" "$hz" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
conns, hz = sys.argv[2], float(sys.argv[3])
by = {}
for run in sorted({int(r[0]) for r in rows}):
    for t in ("direct", "nginx", "gateway"):
        mine = [r for r in rows if int(r[0]) == run and r[2] == t]
        requests = sum(float(r[4]) * float(r[8]) for r in mine)
        by[(run, t)] = (
            statistics.median(float(r[3]) for r in mine),  # serial p50: median over the slices
            requests / sum(float(r[8]) for r in mine),  # req/s over all the slices
            statistics.median(float(r[5]) for r in mine),  # p99: median over the slices
            sum(int(r[6]) for r in mine),
            sum(float(r[7]) for r in mine) / hz * 1e6 / max(requests, 1),  # CPU µs per request
        )
runs = sorted({r for r, _ in by})
print()
print(f"| run | path | serial p50 (c=1) | c={conns}: req/s | c={conns}: p99 | CPU per request of the proxy (direct: of the worker) | errors |")
print("|---:|---|---:|---:|---:|---:|---:|")
for r in runs:
    for t in ("direct", "nginx", "gateway"):
        p50, rps, p99, errors, cpu = by[(r, t)]
        print(f"| {r} | {t} | {p50:.0f} µs | {rps:,.0f} | {p99/1000:.2f} ms | {cpu:.1f} µs | {errors} |")
print()
print("| run | gateway req/s / nginx req/s | nginx added p50 | gateway added p50 | verdict |")
print("|---:|---:|---:|---:|---|")
for r in runs:
    d, n, g = by[(r, "direct")], by[(r, "nginx")], by[(r, "gateway")]
    ratio = g[1] / n[1]
    n_added, g_added = n[0] - d[0], g[0] - d[0]
    ok = ratio >= 1.0 and g_added <= n_added
    print(f"| {r} | {ratio:.2f}x | {n_added:+.0f} µs | {g_added:+.0f} µs | {'met' if ok else 'NOT met'} |")
errors = sum(v[3] for v in by.values())
if errors:
    print(f"\n{errors} requests failed (non-2xx or socket errors): the numbers above are not valid")
PY

# A new connection per request (clients without keep-alive): nginx and the gateway in SLICES interleaved slices
# at CONNS connections, each request with `Connection: close`.
sed 's/^wrk.body/wrk.headers["Connection"] = "close"\nwrk.body/' "$tmp/post.lua" >"$tmp/close.lua"
: >"$tmp/churn"
for slice in $(seq 1 "$SLICES"); do
    for t in nginx gateway; do
        wrk -t"$THREADS" -c"$CONNS" -d"${slice_s}s" -s "$tmp/close.lua" "$(url_of "$t")" >"$tmp/wrk.out" 2>&1 || true
        echo "$t $(sed -n 's/^Requests\/sec:\s*//p' "$tmp/wrk.out")" >>"$tmp/churn"
    done
done
python3 - "$tmp/churn" "$CONNS" <<'PY'
import sys
rates = {}
for line in open(sys.argv[1]):
    t, rps = line.split()
    rates.setdefault(t, []).append(float(rps))
n, g = (sum(rates[t]) / len(rates[t]) for t in ("nginx", "gateway"))
print(f"\n== a new connection per request, c={sys.argv[2]}: nginx {n:,.0f} req/s, gateway {g:,.0f} req/s ({g / n:.2f}x)")
PY

# Large bodies: BIG_CONNS clients each sending BIG_MB MiB bodies through the gateway for 5 s (the worker refuses
# them as bad JSON after reading them; the gateway reads and forwards every byte), then the gateway's RSS.
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$gateway_pid/status"; }
cat >"$tmp/big.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.rep("x", $BIG_MB * 1024 * 1024)
EOF
rss0="$(rss_kib)"
wrk -t"$THREADS" -c"$BIG_CONNS" -d5s -s "$tmp/big.lua" "$gateway$path" >"$tmp/big.out" 2>&1 || true
rss1="$(rss_kib)"
sleep 5
rss2="$(rss_kib)"
echo
echo "== large bodies through the gateway ($BIG_CONNS connections x $BIG_MB MiB bodies for 5 s, $(sed -n 's/^\s*\([0-9]*\) requests in.*/\1/p' "$tmp/big.out") requests): gateway RSS $((rss0 / 1024)) MiB before, $((rss1 / 1024)) MiB right after, $((rss2 / 1024)) MiB 5 s later"
