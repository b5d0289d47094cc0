#!/usr/bin/env bash
# Fetches small real ONNX models for the worker's tests and the quickstart into a local cache, from registry
# packages (nothing is committed, nothing is downloaded at serving time). Idempotent: models already in the
# cache are kept.
#
#   scripts/fetch-models.sh [CACHE_DIR]     (default: $DILU_MODEL_CACHE, else ~/.cache/dilu/models)
#
# Produces:
#   CACHE_DIR/onnx-light/light_squeezenet.onnx   SqueezeNet 1.0 (ImageNet, 1x3x224x224 -> 1x1000x1x1)
#   CACHE_DIR/onnx-light/light_resnet50.onnx     ResNet-50 (when the wheel ships it)
#   CACHE_DIR/onnx-light/relu.onnx               ONNX node test `test_relu` (one Relu, x: 3x4x5 FP32 -> y), the
#                                                trivial model of the gateway-overhead benchmark
#   CACHE_DIR/ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx   PaddleOCR text-direction classifier (best effort)
#   CACHE_DIR/onnxruntime/libonnxruntime.so.$ONNXRUNTIME_VERSION  ONNX Runtime's shared library (CPU), from the
#                                                `onnxruntime` wheel, for `dilu worker --engine onnxruntime`
#                                                (--onnxruntime-lib or ORT_DYLIB_PATH name it); the version is the
#                                                one the `ort` crate the worker is built with supports (1.31)
set -euo pipefail

CACHE_DIR="${1:-${DILU_MODEL_CACHE:-$HOME/.cache/dilu/models}}"
ONNX_VERSION="${ONNX_VERSION:-1.16.2}"
RAPIDOCR_VERSION="${RAPIDOCR_VERSION:-1.3.24}"
ONNXRUNTIME_VERSION="${ONNXRUNTIME_VERSION:-1.31.1}"
PIP="${PIP:-$(command -v pip3 || command -v pip || true)}"
PYTHON="${PYTHON:-$(command -v python3 || true)}"

if [[ -z "$PIP" || -z "$PYTHON" ]]; then
    echo "fetch-models: needs pip and python3" >&2
    exit 1
fi

mkdir -p "$CACHE_DIR/onnx-light" "$CACHE_DIR/ppocr" "$CACHE_DIR/onnxruntime"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Copies the members of a wheel (a zip) whose paths end in the given names into a folder, atomically per file.
extract() {
    local wheel="$1" dest="$2"
    shift 2
    "$PYTHON" - "$wheel" "$dest" "$@" <<'PY'
import os, sys, zipfile
wheel, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        hits = [m for m in z.namelist() if m.endswith("/" + name)]
        if not hits:
            print(f"fetch-models: {name} not in {os.path.basename(wheel)}", file=sys.stderr)
            continue
        target = os.path.join(dest, name)
        with z.open(hits[0]) as src, open(target + ".part", "wb") as out:
            out.write(src.read())
        os.replace(target + ".part", target)
        print(f"fetch-models: {target}")
PY
}

# Copies the member of a wheel at exactly the given path (inside the zip) to the given file, atomically. For
# members whose basename is not unique, such as the node tests' `model.onnx`.
extract_member() {
    local wheel="$1" member="$2" target="$3"
    "$PYTHON" - "$wheel" "$member" "$target" <<'PY'
import os, sys, zipfile
wheel, member, target = sys.argv[1], sys.argv[2], sys.argv[3]
with zipfile.ZipFile(wheel) as z:
    if member not in z.namelist():
        sys.exit(f"fetch-models: {member} not in {os.path.basename(wheel)}")
    with z.open(member) as src, open(target + ".part", "wb") as out:
        out.write(src.read())
    os.replace(target + ".part", target)
    print(f"fetch-models: {target}")
PY
}

if [[ ! -s "$CACHE_DIR/onnx-light/light_squeezenet.onnx" || ! -s "$CACHE_DIR/onnx-light/relu.onnx" ]]; then
    "$PIP" download --quiet --no-deps "onnx==$ONNX_VERSION" -d "$tmp/onnx"
    onnx_wheel="$(ls "$tmp"/onnx/onnx-*.whl | head -n1)"
    if [[ ! -s "$CACHE_DIR/onnx-light/light_squeezenet.onnx" ]]; then
        extract "$onnx_wheel" "$CACHE_DIR/onnx-light" light_squeezenet.onnx light_resnet50.onnx
    fi
    if [[ ! -s "$CACHE_DIR/onnx-light/relu.onnx" ]]; then
        extract_member "$onnx_wheel" onnx/backend/test/data/node/test_relu/model.onnx \
            "$CACHE_DIR/onnx-light/relu.onnx"
    fi
fi
test -s "$CACHE_DIR/onnx-light/light_squeezenet.onnx"
test -s "$CACHE_DIR/onnx-light/relu.onnx"

if [[ ! -s "$CACHE_DIR/ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx" ]]; then
    if "$PIP" download --quiet --no-deps "rapidocr-onnxruntime==$RAPIDOCR_VERSION" -d "$tmp/rapidocr"; then
        extract "$(ls "$tmp"/rapidocr/rapidocr_onnxruntime-*.whl | head -n1)" "$CACHE_DIR/ppocr" \
            ch_ppocr_mobile_v2.0_cls_infer.onnx || true
    else
        echo "fetch-models: rapidocr-onnxruntime unavailable; skipping the PaddleOCR classifier" >&2
    fi
fi

# ONNX Runtime: the wheel's own shared library (onnxruntime/capi/libonnxruntime.so.X.Y.Z, a plain C library that
# does not need Python); the wheel is pure x86-64/aarch64 manylinux, whatever Python pip runs under.
ORT_LIB="$CACHE_DIR/onnxruntime/libonnxruntime.so.$ONNXRUNTIME_VERSION"
if [[ ! -s "$ORT_LIB" ]]; then
    "$PIP" download --quiet --no-deps "onnxruntime==$ONNXRUNTIME_VERSION" -d "$tmp/onnxruntime"
    extract "$(ls "$tmp"/onnxruntime/onnxruntime-*.whl | head -n1)" "$CACHE_DIR/onnxruntime" \
        "libonnxruntime.so.$ONNXRUNTIME_VERSION"
fi
test -s "$ORT_LIB"

echo "fetch-models: models in $CACHE_DIR"
