#!/usr/bin/env bash
# Build (or reuse) the Kubernetes control-plane binaries used by the tests:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubectl, kwok
# from the pinned Go modules in tests/k8s/go.mod + go.sum.
#
# Everything heavy lives OUTSIDE the repo, under
#   ${GRAYBAGGAGE_K8S_CACHE:-$HOME/.cache/graybaggage/k8s}
#     gomod/       GOMODCACHE (module downloads)
#     gocache/     GOCACHE    (compiled packages)
#     bin/<key>/   the binaries, <key> = hash(go.mod, go.sum, go version, ldflags, build.sh)
# A bin dir with a matching .stamp is reused without invoking the compiler.
#
# Progress goes to stderr.  The LAST line on stdout is the bin directory:
#   BIN=$(tests/k8s/build.sh | tail -1)
#
# Env:
#   GRAYBAGGAGE_K8S_CACHE   cache root (default ~/.cache/graybaggage/k8s)
#   GRAYBAGGAGE_K8S_JOBS    go build -p value (default 2)
#   GRAYBAGGAGE_K8S_REBUILD=1  ignore the stamp and rebuild
set -euo pipefail

# Everything is inside main() so bash parses the whole script before running it: editing
# or checking out build.sh during a 10-minute build cannot corrupt the running build.
main() {
  HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  CACHE="${GRAYBAGGAGE_K8S_CACHE:-$HOME/.cache/graybaggage/k8s}"
  JOBS="${GRAYBAGGAGE_K8S_JOBS:-2}"
  T0=$(date +%s)

  BUILD_NAME=k8s-build
  # shellcheck source=buildlib.sh
  source "$HERE/buildlib.sh"     # log, die, run_step, on_build_exit, take_build_lock

  command -v go >/dev/null 2>&1 || die "the 'go' command is not on PATH (need Go >= 1.26; see tests/k8s/README.md)"

  export GOTOOLCHAIN=local
  export CGO_ENABLED=0
  export GOMODCACHE="$CACHE/gomod"
  export GOCACHE="$CACHE/gocache"
  export GOFLAGS="-modcacherw -mod=readonly -buildvcs=false"
  export GOWORK=off

  GO_VERSION="$(go env GOVERSION)"
  # versions straight from go.mod, so the stamp/ldflags follow the pins
  K8S_VERSION="$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$HERE/go.mod")"
  [[ -n "$K8S_VERSION" ]] || die "k8s.io/kubernetes is not required in $HERE/go.mod"
  K8S_MINOR="$(echo "$K8S_VERSION" | cut -d. -f2)"
  KWOK_VERSION="$(awk '$1=="sigs.k8s.io/kwok" && $2 ~ /^v/ {print $2; exit}' "$HERE/go.mod")"
  ETCD_VERSION="$(awk '$1=="go.etcd.io/etcd/server/v3" && $2 ~ /^v/ {print $2; exit}' "$HERE/go.mod")"

  K8S_LDFLAGS="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    K8S_LDFLAGS+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$K8S_MINOR -X $p.gitTreeState=clean"
  done
  KWOK_LDFLAGS="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
  ETCD_LDFLAGS="-s -w"

  KEY="$( { cat "$HERE/go.mod" "$HERE/go.sum" "${BASH_SOURCE[0]}" "$HERE/buildlib.sh"; echo "$GO_VERSION|$K8S_LDFLAGS|$KWOK_LDFLAGS|$ETCD_LDFLAGS|$(go env GOOS GOARCH)"; } | sha256sum | cut -c1-16)"
  BIN="$CACHE/bin/$KEY"
  BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl kwok)

  have_all() {
    [[ -f "$BIN/.stamp" && "$(cat "$BIN/.stamp")" == "$KEY" ]] || return 1
    local b; for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
  }

  if [[ "${GRAYBAGGAGE_K8S_REBUILD:-0}" != 1 ]] && have_all; then
    log "cache hit: $BIN (key $KEY)"
    echo "$BIN"
    exit 0
  fi

  mkdir -p "$CACHE/bin"
  take_build_lock "$CACHE/.build.lock"
  if [[ "${GRAYBAGGAGE_K8S_REBUILD:-0}" != 1 ]] && have_all; then
    log "cache hit after waiting: $BIN"
    echo "$BIN"; exit 0
  fi

  log "no cached binaries for this key: building k8s $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION with $GO_VERSION, -p $JOBS"
  log "(cold: ~10 min on 2 cores, up to ~18 min on a busy machine; with a warm Go build cache: ~40 s)"
  log "cache: $CACHE  key: $KEY"
  TMP="$CACHE/bin/.tmp-$KEY-$$"
  rm -rf "$TMP"; mkdir -p "$TMP"
  LOGDIR="$CACHE/logs"; mkdir -p "$LOGDIR"
  STEP=""
  trap on_build_exit EXIT

  cd "$HERE"
  run_step "download modules" go mod download
  run_step "build kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl" \
    go build -v -p "$JOBS" -trimpath -ldflags "$K8S_LDFLAGS" -o "$TMP/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl
  run_step "build etcd" \
    go build -v -p "$JOBS" -trimpath -ldflags "$ETCD_LDFLAGS" -o "$TMP/etcd" go.etcd.io/etcd/server/v3
  run_step "build kwok" \
    go build -v -p "$JOBS" -trimpath -ldflags "$KWOK_LDFLAGS" -o "$TMP/kwok" sigs.k8s.io/kwok/cmd/kwok

  STEP="verify binaries"
  for b in "${BINARIES[@]}"; do
    [[ -x "$TMP/$b" ]] || die "binary $b missing after build"
  done
  "$TMP/etcd" --version >"$LOGDIR/step.log" 2>&1 || die "etcd --version failed"
  "$TMP/kube-apiserver" --version >>"$LOGDIR/step.log" 2>&1 || die "kube-apiserver --version failed"
  "$TMP/kubectl" version --client >>"$LOGDIR/step.log" 2>&1 || die "kubectl version --client failed"
  "$TMP/kwok" --version >>"$LOGDIR/step.log" 2>&1 || die "kwok --version failed"
  log "versions: $(tr '\n' ' ' <"$LOGDIR/step.log")"
  for b in "${BINARIES[@]}"; do log "  $(du -h "$TMP/$b" | cut -f1)	$b"; done

  echo "$KEY" >"$TMP/.stamp"
  rm -rf "$BIN"
  mv "$TMP" "$BIN"; TMP=""
  # keep only the newest 2 bin dirs (each ~400 MB)
  ls -1dt "$CACHE"/bin/*/ 2>/dev/null | tail -n +3 | xargs -r rm -rf
  log "done in $(( $(date +%s) - T0 ))s: $BIN"
  echo "$BIN"
}

main "$@"
exit $?
