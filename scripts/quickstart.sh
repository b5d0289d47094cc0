#!/usr/bin/env bash
# The quickstart: build Dilu, fetch the example models, start the platform on this machine (`dilu up`: control
# plane, gateway and a local node agent; the CPU device when there is no GPU), deploy the three examples, run
# real inferences and check their answers, show what runs where and the decisions taken (`dilu events`), and
# stop.
#
#   scripts/quickstart.sh            (set KEEP=1 to leave `dilu up` running afterwards)
#
# Environment: DILU_BIN (use this binary instead of building one), DILU_DATA_DIR (default dilu-data),
# DILU_LISTEN (default 127.0.0.1:8080; port 0 picks one), DILU_MODEL_CACHE (default ~/.cache/dilu/models),
# DILU_UP_ARGS (more flags for `dilu up`, e.g. "--policy tgs --cpu-devices 2" to run a baseline's policy).
set -euo pipefail
cd "$(dirname "$0")/.."

DILU="${DILU_BIN:-}"
if [[ -z "$DILU" ]]; then
    cargo build --release -p dilu
    DILU=target/release/dilu
fi
DATA="${DILU_DATA_DIR:-dilu-data}"
LISTEN="${DILU_LISTEN:-127.0.0.1:8080}"
CACHE="${DILU_MODEL_CACHE:-$HOME/.cache/dilu/models}"
export DILU_MODEL_CACHE="$CACHE"
mkdir -p "$DATA"

echo "== fetching models into $CACHE"
"$DILU" models fetch --cache "$CACHE"

echo "== starting dilu up ${DILU_UP_ARGS:-} (log: $DATA/up.log)"
# shellcheck disable=SC2086 # DILU_UP_ARGS is a list of flags
"$DILU" up --data-dir "$DATA" --listen "$LISTEN" ${DILU_UP_ARGS:-} >"$DATA/up.log" 2>&1 &
up_pid=$!
stop() {
    if [[ "${KEEP:-0}" == 1 ]]; then
        echo "== dilu up keeps running (pid $up_pid); stop it with: kill $up_pid"
    else
        kill "$up_pid" 2>/dev/null || true
        wait "$up_pid" 2>/dev/null || true
    fi
}
trap stop EXIT
url=""
for _ in $(seq 1 300); do
    url="$(sed -n 's/^dilu up: serving on //p' "$DATA/up.log" | head -n1)"
    [[ -n "$url" ]] && break
    kill -0 "$up_pid" 2>/dev/null || { cat "$DATA/up.log" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$url" ]] || { echo "dilu up did not start" >&2; cat "$DATA/up.log" >&2; exit 1; }
export DILU_SERVER="$url" DILU_DATA_DIR="$DATA"
echo "== dilu up serves on $url"

for spec in examples/ocr-cls.yaml examples/squeezenet.yaml examples/mlp-train.yaml; do
    echo "== dilu deploy -f $spec --wait"
    "$DILU" deploy -f "$spec" --wait
done

# `dilu invoke` prints the v2 response on stdout and "top class N (score …)" on stderr.
top_class() {
    "$DILU" invoke "$1" --input "$2" 2>&1 >/dev/null | sed -n 's/^top class \([0-9]*\).*/\1/p'
}
echo "== dilu invoke ocr-cls (upright text, then the same text upside down)"
upright="$(top_class ocr-cls "$CACHE/inputs/text-upright.json")"
flipped="$(top_class ocr-cls "$CACHE/inputs/text-flipped.json")"
echo "quickstart: upright text -> class $upright (0 = upright); flipped text -> class $flipped (1 = 180 degrees)"
echo "== dilu invoke squeezenet"
echo "quickstart: squeezenet -> class $(top_class squeezenet "$CACHE/inputs/squeezenet.json") of 1000"

echo "== dilu ls"
"$DILU" ls
echo "== dilu status"
"$DILU" status
echo "== dilu events (every decision, with its reason)"
"$DILU" events

if [[ "$upright" == 0 && "$flipped" == 1 ]]; then
    echo "quickstart: OK"
else
    echo "quickstart: WRONG ANSWER (expected 0 and 1)" >&2
    exit 1
fi
