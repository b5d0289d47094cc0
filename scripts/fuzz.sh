#!/usr/bin/env bash
# Coverage-guided fuzzing of Dilu's parsers with cargo fuzz (libFuzzer): builds the targets in fuzz/, runs each
# for a set time, one at a time, and prints what each did. Exits 1 if any target found a crash, a hang or an
# out-of-memory input; the input is kept under fuzz/artifacts/TARGET/ (git-ignored). See docs/fuzzing.md.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 seconds, every target)
#
# Targets: spec_yaml spec_json v2_json v2_binary openb_nodes openb_pods instance_trace quota_channel.
# Environment:
#   FUZZ_SANITIZER   none (default) or address: AddressSanitizer, about 2x slower (see docs/fuzzing.md)
#   FUZZ_TIMEOUT     seconds one input may take before it counts as a hang (default 10)
#   FUZZ_RSS_MB      memory limit in MiB before an input counts as out-of-memory (default 2048)
#   FUZZ_NICE        niceness of the fuzzers (default 19, so other work keeps the CPU)
#   FUZZ_ARGS        more libFuzzer flags, e.g. "-max_len=65536"
#   FUZZ_NO_BUILD=1  run the binaries already built
# Corpora grow in fuzz/corpus/TARGET/ (git-ignored) from the committed seeds in fuzz/seeds/TARGET/; when
# ../shared/data is present, a few lines of the real openb and instance traces are added to the corpus (never to
# the repository: those traces may not be redistributed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ALL_TARGETS=(spec_yaml spec_json v2_json v2_binary openb_nodes openb_pods instance_trace quota_channel)
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL_TARGETS[@]}")
for t in "${TARGETS[@]}"; do
    [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target '$t' (known: ${ALL_TARGETS[*]})" >&2; exit 2; }
done
[[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ && "$SECONDS_PER_TARGET" -gt 0 ]] || {
    echo "fuzz.sh: SECONDS_PER_TARGET must be a positive integer, not '$SECONDS_PER_TARGET'" >&2; exit 2; }
SANITIZER=${FUZZ_SANITIZER:-none}
NICE=${FUZZ_NICE:-19}

# cargo fuzz itself, from crates.io.
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# The coverage instrumentation cargo fuzz asks for (-Cpasses=sancov-module, -Cllvm-args=...) is stable; only a
# sanitizer needs an unstable flag (-Zsanitizer), which a stable toolchain takes with RUSTC_BOOTSTRAP=1.
if [[ "$SANITIZER" != none ]] && ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN_DIR="$ROOT/fuzz/target/$TRIPLE/release"

if [[ "${FUZZ_NO_BUILD:-}" != 1 ]]; then
    echo "== building the fuzz targets (sanitizer: $SANITIZER; fuzz/target)"
    # Every target in one build (they share the crates). 16 codegen units: a much faster build of the heavy
    # dependencies (tract) on few cores, for a few percent of speed per execution.
    nice -n "$NICE" cargo fuzz build --sanitizer "$SANITIZER" --codegen-units 16
    for t in "${TARGETS[@]}"; do
        [[ -x "$BIN_DIR/$t" ]] || { echo "fuzz.sh: building $t failed" >&2; exit 2; }
    done
fi

# Real-trace seeds, only into the git-ignored corpus.
DATA="$ROOT/../shared/data"
add_real_seed() { # target, source file, lines
    local corpus="$ROOT/fuzz/corpus/$1"
    [[ -f "$2" ]] || return 0
    head -n "$3" "$2" >"$corpus/real-$(basename "$2")"
}

SUMMARY="$ROOT/fuzz/artifacts/summary.tsv"
mkdir -p "$ROOT/fuzz/artifacts"
printf 'target\tseconds\texecutions\texecs_per_s\tcorpus\tcoverage\tcrashes\tresult\n' >"$SUMMARY"
failed=0
for t in "${TARGETS[@]}"; do
    corpus="$ROOT/fuzz/corpus/$t"
    artifacts="$ROOT/fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    case $t in
    openb_nodes) add_real_seed "$t" "$DATA/alibaba-gpu-v2023/csv/openb_node_list_gpu_node.csv" 12 ;;
    openb_pods) add_real_seed "$t" "$DATA/alibaba-gpu-v2023/csv/openb_pod_list_default.csv" 12 ;;
    instance_trace) add_real_seed "$t" "$DATA/dilu/sim-instances/instances-100.txt" 12 ;;
    esac
    before=$(find "$artifacts" -type f | wc -l)
    log="$ROOT/fuzz/artifacts/$t.log"
    echo "== $t: ${SECONDS_PER_TARGET}s (log: fuzz/artifacts/$t.log)"
    start=$(date +%s)
    rc=0
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    nice -n "$NICE" "$BIN_DIR/$t" "$corpus" "$ROOT/fuzz/seeds/$t" \
        -max_total_time="$SECONDS_PER_TARGET" -timeout="${FUZZ_TIMEOUT:-10}" \
        -rss_limit_mb="${FUZZ_RSS_MB:-2048}" -artifact_prefix="$artifacts/" -print_final_stats=1 \
        ${FUZZ_ARGS:-} >"$log" 2>&1 &
    pid=$!
    wait "$pid" || rc=$?
    # quota_channel's channel files, in a directory named after the fuzzer's pid (nice execs the fuzzer).
    rm -rf "/dev/shm/dilu-fuzz-quota-$pid" "${TMPDIR:-/tmp}/dilu-fuzz-quota-$pid"
    elapsed=$(($(date +%s) - start))
    stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -n 1; }
    execs=$(stat number_of_executed_units)
    rate=$(stat average_exec_per_sec)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
    units=$(find "$corpus" -type f | wc -l)
    crashes=$(($(find "$artifacts" -type f | wc -l) - before))
    if [[ $rc -ne 0 || $crashes -gt 0 ]]; then
        failed=1
        result="FAILED (exit $rc): $(grep -m1 -E '^==[0-9]+== ERROR|panicked at|deadly signal|timeout|out-of-memory' "$log" || echo 'see log')"
        [[ $crashes -gt 0 ]] || crashes=1
    else
        result=ok
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$elapsed" "${execs:-?}" "${rate:-?}" "$units" "${cov:-?}" \
        "$crashes" "$result" >>"$SUMMARY"
done

echo
column -t -s $'\t' "$SUMMARY"
echo "(fuzz/artifacts/summary.tsv; crash inputs in fuzz/artifacts/TARGET/)"
if [[ $failed -ne 0 ]]; then
    echo "fuzz.sh: a target failed; reproduce with: fuzz/target/$TRIPLE/release/TARGET fuzz/artifacts/TARGET/FILE" >&2
    exit 1
fi
