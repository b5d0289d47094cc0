#!/usr/bin/env bash
# Builds kube-apiserver and kube-scheduler 1.20.2 from Debian bookworm's `kubernetes` source package
# (1.20.5+really1.20.2) with Debian's Go (1.19) and caches the two binaries OUTSIDE the repository; makes sure
# etcd (Debian's etcd-server, 3.4) is installed. Tests that start a real API server on loopback use these.
# Idempotent: when both cached binaries exist and answer `--version`, it prints where they are and exits 0.
#
#   scripts/build-kube.sh                   (cache: $DILU_KUBE_CACHE, else ~/.cache/dilu/kube-1.20)
#
# Produces:
#   CACHE/bin/kube-apiserver     v1.20.2, static (CGO_ENABLED=0)
#   CACHE/bin/kube-scheduler     v1.20.2, static
#   /usr/bin/etcd                from the etcd-server package (3.4.x)
# Work files: CACHE/src (the unpacked source package, with the two changes below) is kept; CACHE/gocache
# (~1.3 GiB) and CACHE/build are removed after a successful build unless DILU_KUBE_KEEP_WORK=1.
# CACHE/build.log holds the output of the steps that failed or printed anything.
#
# Needs root (or sudo) only to install what is missing with apt-get: golang-go, dpkg-dev, etcd-server,
# golang-github-modern-go-reflect2-dev, and to add a deb-src source (/etc/apt/sources.list.d/dilu-src.sources)
# when none serves the kubernetes source package. A full build from nothing took 3 min 56 s on 2 cores.
#
# How it builds (each step found necessary here, Debian bookworm, Go 1.19.8):
#   - GOPATH mode (GO111MODULE=off, the tree reached through GOPATH/src/k8s.io/kubernetes -> the source), as
#     upstream 1.20's own hack/lib does; module mode with -mod=vendor refuses the tree under Go 1.19
#     ("updates to go.mod needed, disabled by -mod=vendor").
#   - pkg/generated/openapi/zz_generated.openapi.go is not in the source package (upstream's `make` generates
#     it); the script builds the vendored openapi-gen and generates it with Makefile.generated_files' inputs.
#   - the vendored github.com/modern-go/reflect2 v1.0.1 breaks under Go >= 1.18 (its go:linkname'd runtime
#     map-iteration functions changed signature); Debian's golang-github-modern-go-reflect2-dev (1.0.2, same API) replaces its .go/.s files.
#     vendor/modules.txt is left as it is (GOPATH mode does not read it).
#   - -ldflags -X sets k8s.io/{component-base,client-go/pkg}/version (gitVersion v1.20.2, gitCommit of the
#     v1.20.2 tag), so `--version` prints "Kubernetes v1.20.2". CGO_ENABLED=0: static binaries.
#
# The exact command lines that start etcd, kube-apiserver and kube-scheduler on loopback (verified) are in the
# comment block at the end of this file.
set -euo pipefail

CACHE="${DILU_KUBE_CACHE:-$HOME/.cache/dilu/kube-1.20}"
BIN="$CACHE/bin"
SRC_PARENT="$CACHE/src"
LOG="$CACHE/build.log"
KUBE_VERSION="v1.20.2"
KUBE_COMMIT="faecb196815e248d3ecfb03c680a4507229c2a56"   # v1.20.2's commit, as the source's hack/lib/version.sh says
SUITE="bookworm"
REFLECT2_SRC="/usr/share/gocode/src/github.com/modern-go/reflect2"

say() { echo "build-kube: $*"; }
die() { echo "build-kube: ERROR: $*" >&2; exit 1; }
trap 'rc=$?; echo "build-kube: FAILED (exit $rc) at line $LINENO: $BASH_COMMAND" >&2; [[ -f "$LOG" ]] && echo "build-kube: see $LOG" >&2; exit $rc' ERR

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else SUDO=(false); fi
fi

apt_install() {   # apt_install PKG... : installs the packages that are not installed yet
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ "${SUDO[*]}" == false ]] && die "needs root or sudo to install: ${missing[*]}"
    say "installing ${missing[*]} (apt-get)"
    # policy-rc.d 101: the package's service (etcd) is not started; we only need the binary.
    local prc=/usr/sbin/policy-rc.d made_prc=0
    if [[ ! -e $prc ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$prc" >/dev/null && "${SUDO[@]}" chmod +x "$prc" && made_prc=1
    fi
    if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; then
        say "apt-get install failed; refreshing the package lists and retrying"
        "${SUDO[@]}" apt-get update -q || true
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" \
            || { [[ $made_prc == 1 ]] && "${SUDO[@]}" rm -f "$prc"; die "could not install ${missing[*]}"; }
    fi
    [[ $made_prc == 1 ]] && "${SUDO[@]}" rm -f "$prc"
    return 0
}

binaries_ok() {
    [[ -x "$BIN/kube-apiserver" && -x "$BIN/kube-scheduler" ]] || return 1
    "$BIN/kube-apiserver" --version >/dev/null 2>&1 && "$BIN/kube-scheduler" --version >/dev/null 2>&1
}

# --- etcd -----------------------------------------------------------------------------------------------------
if ! command -v etcd >/dev/null 2>&1; then
    apt_install etcd-server
fi
command -v etcd >/dev/null 2>&1 || die "etcd is not on PATH after installing etcd-server"

# --- fast path: already built ---------------------------------------------------------------------------------
if binaries_ok; then
    say "cached: $BIN/kube-apiserver ($("$BIN/kube-apiserver" --version 2>&1))"
    say "cached: $BIN/kube-scheduler ($("$BIN/kube-scheduler" --version 2>&1))"
    say "etcd:   $(command -v etcd) ($(etcd --version 2>&1 | head -n1))"
    exit 0
fi

say "building kube-apiserver and kube-scheduler $KUBE_VERSION into $BIN"
mkdir -p "$CACHE" "$SRC_PARENT" "$BIN"
: >"$LOG"

# --- toolchain ------------------------------------------------------------------------------------------------
apt_install golang-go dpkg-dev golang-github-modern-go-reflect2-dev
GO="${GO:-/usr/lib/go/bin/go}"
[[ -x "$GO" ]] || GO="$(command -v go || true)"
[[ -n "$GO" && -x "$GO" ]] || die "no Go toolchain (golang-go) found"
say "go: $GO ($("$GO" version))"
[[ -d "$REFLECT2_SRC" ]] || die "$REFLECT2_SRC missing (golang-github-modern-go-reflect2-dev)"

# --- source package -------------------------------------------------------------------------------------------
find_src() { find "$SRC_PARENT" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-1.20*' | sort | tail -n1; }
SRC="$(find_src)"
if [[ -n "$SRC" && ( ! -f "$SRC/go.mod" || ! -f "$SRC/vendor/modules.txt" || ! -d "$SRC/cmd/kube-apiserver" ) ]]; then
    say "removing incomplete source tree $SRC"
    rm -rf "$SRC"
    SRC=""
fi
if [[ -z "$SRC" ]]; then
    if ! apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Version: 1\.20'; then
        say "adding a deb-src source for $SUITE (/etc/apt/sources.list.d/dilu-src.sources) and updating"
        [[ "${SUDO[*]}" == false ]] && die "needs root or sudo to add a deb-src source"
        printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$SUITE" | "${SUDO[@]}" tee /etc/apt/sources.list.d/dilu-src.sources >/dev/null
        "${SUDO[@]}" apt-get update -q >>"$LOG" 2>&1 || die "apt-get update failed (see $LOG)"
    fi
    apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Version: 1\.20' \
        || die "no kubernetes 1.20 source package in the apt sources (need deb-src for $SUITE)"
    say "fetching the kubernetes source package (apt-get source) into $SRC_PARENT"
    rm -f "$SRC_PARENT"/kubernetes_*
    (cd "$SRC_PARENT" && apt-get source -q "kubernetes/$SUITE" >>"$LOG" 2>&1) \
        || (cd "$SRC_PARENT" && apt-get source -q kubernetes >>"$LOG" 2>&1) \
        || die "apt-get source kubernetes failed (see $LOG)"
    SRC="$(find_src)"
    [[ -n "$SRC" && -f "$SRC/go.mod" ]] || die "apt-get source did not unpack a kubernetes-1.20* tree under $SRC_PARENT"
fi
say "source: $SRC"

# --- swap the vendored reflect2 for Debian's 1.0.2 -------------------------------------------------------------
R2="$SRC/vendor/github.com/modern-go/reflect2"
if [[ ! -f "$R2/.dilu-reflect2-debian" ]]; then
    say "replacing vendored github.com/modern-go/reflect2 (v1.0.1) with Debian's copy from $REFLECT2_SRC"
    [[ -d "$R2" ]] || die "$R2 not found in the source tree"
    rm -f "$R2"/*.go "$R2"/*.s
    for f in "$REFLECT2_SRC"/*.go "$REFLECT2_SRC"/*.s; do
        case "$(basename "$f")" in *_test.go) continue ;; esac
        cp -L "$f" "$R2/"
    done
    echo "files from $REFLECT2_SRC ($(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev))" >"$R2/.dilu-reflect2-debian"
fi

# --- build ----------------------------------------------------------------------------------------------------
# GOPATH mode, as upstream 1.20's hack/lib builds it (hack/lib/init.sh exports GO111MODULE=off): module mode
# with -mod=vendor refuses this tree under Go 1.19 ("updates to go.mod needed"). The source is reached through a
# symlink GOPATH/src/k8s.io/kubernetes so that its vendor/ directory resolves the imports.
export GOPATH="$CACHE/gopath" GOCACHE="$CACHE/gocache" GOFLAGS="" GO111MODULE=off GOPROXY=off \
    GOSUMDB=off GOTOOLCHAIN=local CGO_ENABLED=0
mkdir -p "$GOPATH/src/k8s.io" "$GOCACHE"
ln -sfn "$SRC" "$GOPATH/src/k8s.io/kubernetes"
GOSRC="$GOPATH/src/k8s.io/kubernetes"
BUILD_DATE="$(date -u +'%Y-%m-%dT%H:%M:%SZ')"
LDFLAGS="-s -w"
for pkg in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
    LDFLAGS+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=20"
    LDFLAGS+=" -X $pkg.gitCommit=$KUBE_COMMIT -X $pkg.gitTreeState=archive -X $pkg.buildDate=$BUILD_DATE"
done
OUT="$CACHE/build"
mkdir -p "$OUT"
start=$SECONDS

# --- generated OpenAPI definitions ----------------------------------------------------------------------------
# pkg/generated/openapi/zz_generated.openapi.go is not in the source (upstream's `make` generates it; without it
# kube-apiserver fails with "undefined: openapi.GetOpenAPIDefinitions"). Same inputs as Makefile.generated_files'
# KUBE openapi target: every package of the tree (staging/src/X named vendor/X, the rest of vendor/ excluded)
# with a `+k8s:openapi-gen=` tag, less code-generator and sample-apiserver.
OPENAPI_OUT="$SRC/pkg/generated/openapi/zz_generated.openapi.go"
OPENAPI_DONE="$SRC/pkg/generated/openapi/.dilu-generated"
if [[ ! -s "$OPENAPI_OUT" || ! -f "$OPENAPI_DONE" ]]; then
    say "generating $OPENAPI_OUT (openapi-gen)"
    (cd "$GOSRC" && "$GO" build -o "$OUT/openapi-gen" k8s.io/kubernetes/vendor/k8s.io/kube-openapi/cmd/openapi-gen) >>"$LOG" 2>&1 \
        || die "building openapi-gen failed (see $LOG)"
    openapi_pkgs="$(cd "$SRC" && find -H . \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune -o -type f -name '*.go' -print \
        | xargs grep --color=never -l '^// *+k8s:' | xargs grep --color=never -l '+k8s:openapi-gen=' \
        | sed 's|^\./staging/src/|vendor/|; s|^\./||' | xargs -n1 dirname | LC_ALL=C sort -u \
        | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
        | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)"
    [[ -n "$openapi_pkgs" ]] || die "found no packages tagged +k8s:openapi-gen"
    (cd "$GOSRC" && "$OUT/openapi-gen" --logtostderr -i "$openapi_pkgs" -p k8s.io/kubernetes/pkg/generated/openapi \
        -O zz_generated.openapi -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
        -r "$OUT/KUBE_violations.report") >>"$LOG" 2>&1 || { rm -f "$OPENAPI_OUT"; die "openapi-gen failed (see $LOG)"; }
    [[ -s "$OPENAPI_OUT" ]] || die "openapi-gen did not write $OPENAPI_OUT"
    touch "$OPENAPI_DONE"
    # Upstream's check: the API rule violations found equal the known ones (a difference means wrong inputs).
    diff -q "$OUT/KUBE_violations.report" "$SRC/api/api-rules/violation_exceptions.list" >/dev/null \
        || say "warning: openapi-gen's API rule report differs from api/api-rules/violation_exceptions.list"
fi
for cmd in kube-apiserver kube-scheduler; do
    say "go build k8s.io/kubernetes/cmd/$cmd (GOPATH mode; log: $LOG)"
    t0=$SECONDS
    if ! (cd "$GOSRC" && nice -n 10 "$GO" build -trimpath -ldflags "$LDFLAGS" -o "$OUT/$cmd" "k8s.io/kubernetes/cmd/$cmd") >>"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        die "go build k8s.io/kubernetes/cmd/$cmd failed (full log: $LOG)"
    fi
    say "built $cmd in $((SECONDS - t0))s"
    "$OUT/$cmd" --version >/dev/null 2>&1 || die "$OUT/$cmd was built but does not run --version"
done
mv -f "$OUT/kube-apiserver" "$OUT/kube-scheduler" "$BIN/"
binaries_ok || die "the binaries in $BIN do not run"
if [[ "${DILU_KUBE_KEEP_WORK:-0}" != 1 ]]; then
    say "removing the Go build cache and build dir ($GOCACHE, $OUT; DILU_KUBE_KEEP_WORK=1 keeps them)"
    rm -rf "$GOCACHE" "$OUT"
fi
say "done in $((SECONDS - start))s"
say "kube-apiserver: $BIN/kube-apiserver ($("$BIN/kube-apiserver" --version 2>&1))"
say "kube-scheduler: $BIN/kube-scheduler ($("$BIN/kube-scheduler" --version 2>&1))"
say "etcd:           $(command -v etcd) ($(etcd --version 2>&1 | head -n1))"
exit 0

# ==============================================================================================================
# VERIFIED COMMAND LINES (Debian bookworm, 2 cores, etcd 3.4.23, the binaries above, kubectl 1.32 as client).
# D is a throwaway directory, all ports are free loopback ports picked by the caller (bind 127.0.0.1:0, read
# the port, close). Nothing listens on a non-loopback address with these flags.
#
# Files in D:
#   openssl genrsa -out $D/sa.key 2048       (OpenSSL 3 writes PKCS#8 "BEGIN PRIVATE KEY"; 1.20 accepts it)
#   $D/tokens.csv, one line:   dilu-test-token-0123456789,dilu-admin,uid-1,"system:masters"
#
# 1. etcd (ready when `curl http://127.0.0.1:$ETCD_PORT/health` says {"health":"true"}, well under 1 s):
#   etcd --name dilu-test --data-dir $D/etcd \
#     --listen-client-urls http://127.0.0.1:$ETCD_PORT --advertise-client-urls http://127.0.0.1:$ETCD_PORT \
#     --listen-peer-urls http://127.0.0.1:$PEER_PORT --initial-advertise-peer-urls http://127.0.0.1:$PEER_PORT \
#     --initial-cluster dilu-test=http://127.0.0.1:$PEER_PORT
#
# 2. kube-apiserver (ready when GET /readyz says "ok": 2-5 s here). It self-signs a serving cert into --cert-dir.
#    The 1.20 insecure port is off by default (nothing on 8080; verified with ss).
#   $CACHE/bin/kube-apiserver --etcd-servers=http://127.0.0.1:$ETCD_PORT \
#     --bind-address=127.0.0.1 --secure-port=$API_PORT --advertise-address=127.0.0.1 \
#     --cert-dir=$D/certs \
#     --token-auth-file=$D/tokens.csv \
#     --service-account-key-file=$D/sa.key --service-account-signing-key-file=$D/sa.key \
#     --service-account-issuer=https://kubernetes.default.svc \
#     --authorization-mode=RBAC \
#     --disable-admission-plugins=ServiceAccount,TaintNodesByCondition \
#     --endpoint-reconciler-type=none \
#     --service-cluster-ip-range=10.96.0.0/16
#   Client: kubectl --server https://127.0.0.1:$API_PORT --token dilu-test-token-0123456789 \
#             --insecure-skip-tls-verify get --raw /readyz
#   Why the two extra flags:
#   - TaintNodesByCondition (on by default) puts node.kubernetes.io/not-ready:NoSchedule on every Node at
#     creation, and with no kube-controller-manager nothing removes it: the scheduler then reports
#     "0/1 nodes are available: 1 node(s) had taint {node.kubernetes.io/not-ready: }". (Untested alternative:
#     remove the taint by hand: kubectl taint node NAME node.kubernetes.io/not-ready:NoSchedule-.)
#   - --endpoint-reconciler-type=none: otherwise it logs errors like "unable to sync kubernetes service:
#     ... 127.0.0.1: may not be in the loopback range" (harmless, noise only).
#
# 3. A hand-made GPU node. Status in the CREATE body is kept; later changes to status must go through the
#    status subresource (a patch of the node itself ignores .status: kubectl says "patched (no change)"):
#   kubectl ... create -f - <<< '{"apiVersion":"v1","kind":"Node","metadata":{"name":"gpu-node-1",
#       "labels":{"kubernetes.io/hostname":"gpu-node-1"}},"spec":{}}'
#   kubectl ... patch node gpu-node-1 --subresource=status --type=merge -p '{"status":{
#       "capacity":{"cpu":"32","memory":"256Gi","pods":"110","nvidia.com/gpu":"8"},
#       "allocatable":{"cpu":"32","memory":"256Gi","pods":"110","nvidia.com/gpu":"8"},
#       "conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"hand-made",
#         "lastHeartbeatTime":"2026-01-01T00:00:00Z","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}'
#   (raw REST, verified with curl: PATCH https://127.0.0.1:$API_PORT/api/v1/nodes/NAME/status,
#    Authorization: Bearer <token>, Content-Type: application/merge-patch+json, body {"status":{...}} -> 200.)
#   A pod (accepted as is: no ServiceAccount admission, so no service account or token volume is needed):
#     apiVersion: v1
#     kind: Pod
#     metadata: {name: pod-foo, namespace: default}
#     spec:
#       schedulerName: foo
#       containers:
#       - name: c
#         image: example.invalid/none
#         resources: {limits: {nvidia.com/gpu: 1}, requests: {cpu: 100m, memory: 64Mi}}
#
# 4. kube-scheduler, $D/scheduler.yaml:
#     apiVersion: kubescheduler.config.k8s.io/v1beta1
#     kind: KubeSchedulerConfiguration
#     clientConnection:
#       kubeconfig: $D/kubeconfig
#       qps: 200          # default 50
#       burst: 400        # default 100
#     leaderElection:
#       leaderElect: false
#     healthzBindAddress: "127.0.0.1:$HEALTH_PORT"
#     metricsBindAddress: "127.0.0.1:$HEALTH_PORT"
#     profiles:
#     - schedulerName: foo
#   $D/kubeconfig:
#     apiVersion: v1
#     kind: Config
#     clusters:
#     - name: dilu
#       cluster: {server: "https://127.0.0.1:$API_PORT", insecure-skip-tls-verify: true}
#     users:
#     - name: admin
#       user: {token: dilu-test-token-0123456789}
#     contexts:
#     - name: dilu
#       context: {cluster: dilu, user: admin}
#     current-context: dilu
#   $CACHE/bin/kube-scheduler --config=$D/scheduler.yaml --bind-address=127.0.0.1 --secure-port=$SCHED_PORT
#   Listens on 127.0.0.1:$SCHED_PORT (HTTPS, /healthz "ok") and 127.0.0.1:$HEALTH_PORT (plain HTTP /healthz,
#   /metrics). pod-foo got spec.nodeName=gpu-node-1 0.2-1.5 s after the scheduler started; a second pod asking
#   for nvidia.com/gpu: 8 stayed Pending with "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
#   Scheduler gotchas (1.20):
#   - with --config, the deprecated --port/--address flags are IGNORED: the insecure healthz/metrics server
#     comes from healthzBindAddress/metricsBindAddress, whose v1beta1 default is 0.0.0.0:10251 ("" also falls
#     back to it) and port 0 fails validation ("must be between 1 and 65535"). So it cannot be switched off
#     with a config file; point both at a free loopback port (same value = one listener).
#   - only the profiles listed are served: with just `foo`, pods with the default schedulerName
#     (default-scheduler) stay unscheduled. Adding `- schedulerName: default-scheduler` as a second profile
#     serves both (verified).
#   - `kube-scheduler --config F --write-config-to OUT` writes the effective config to OUT and exits (shows the
#     clientConnection qps/burst defaults: 50/100).
#
# Shutdown: SIGTERM the scheduler, then the apiserver (exits in 1-2 s while etcd is up; with etcd already gone
# it took ~20 s), then etcd. Then remove D.
