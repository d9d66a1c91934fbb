#!/usr/bin/env bash
# Build (or reuse) the real Kruise Rollout manager (github.com/openkruise/rollouts) for the tests,
# one binary per version, each built INSIDE its own downloaded module (no wrapper module of ours:
# `go mod tidy` in a wrapper upgrades k8s.io/utils and the build breaks; and it must not mix with
# tests/k8s's k8s 0.37 module).
#
# Everything heavy lives OUTSIDE the repo, under
#   ${GRAYBAGGAGE_KRUISE_CACHE:-$HOME/.cache/graybaggage/kruise}
#     gomod/                 GOMODCACHE (github.com/openkruise/rollouts@vX and its dependencies)
#     gocache/               GOCACHE    (compiled packages)
#     bin/<key>/<version>/   manager + `module` -> the module dir in gomod/ (CRDs, webhook manifests,
#                            lua_configuration/ are read from there; the repo keeps no copy)
# <key> = hash(build.sh, buildlib.sh, versions, go version, GOOS/GOARCH). A matching .stamp is reused
# without invoking the compiler.
#
# The module proxy refuses `@v/list` for this module but serves each tag, so versions are named exactly.
#
# Progress goes to stderr. The LAST line on stdout is the bin directory:
#   GRAYBAGGAGE_KRUISE_BIN=$(tests/k8s/kruise/build.sh | tail -1)
#
# Env:
#   GRAYBAGGAGE_KRUISE_CACHE     cache root (default ~/.cache/graybaggage/kruise)
#   GRAYBAGGAGE_KRUISE_VERSIONS  space-separated tags (default "v0.6.2 v0.5.0")
#   GRAYBAGGAGE_KRUISE_JOBS      go build -p value (default 2)
#   GRAYBAGGAGE_KRUISE_REBUILD=1 ignore the stamp and rebuild
set -euo pipefail

main() {
  HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  CACHE="${GRAYBAGGAGE_KRUISE_CACHE:-$HOME/.cache/graybaggage/kruise}"
  JOBS="${GRAYBAGGAGE_KRUISE_JOBS:-2}"
  VERSIONS="${GRAYBAGGAGE_KRUISE_VERSIONS:-v0.6.2 v0.5.0}"
  MODULE=github.com/openkruise/rollouts
  T0=$(date +%s)

  BUILD_NAME=kruise-build
  # shellcheck source=../buildlib.sh
  source "$HERE/../buildlib.sh"     # log, die, run_step, on_build_exit, take_build_lock

  command -v go >/dev/null 2>&1 || die "the 'go' command is not on PATH (need Go >= 1.26)"

  export GOTOOLCHAIN=local
  export CGO_ENABLED=0
  export GOMODCACHE="$CACHE/gomod"
  export GOCACHE="$CACHE/gocache"
  export GOFLAGS="-modcacherw -buildvcs=false"
  export GOWORK=off

  GO_VERSION="$(go env GOVERSION)"
  KEY="$( { cat "${BASH_SOURCE[0]}" "$HERE/../buildlib.sh"; echo "$GO_VERSION|$VERSIONS|$(go env GOOS GOARCH)"; } | sha256sum | cut -c1-16)"
  BIN="$CACHE/bin/$KEY"

  have_all() {
    [[ -f "$BIN/.stamp" && "$(cat "$BIN/.stamp")" == "$KEY" ]] || return 1
    local v; for v in $VERSIONS; do
      [[ -x "$BIN/$v/manager" && -d "$BIN/$v/module/config/crd/bases" && -d "$BIN/$v/module/lua_configuration" ]] || return 1
    done
  }

  if [[ "${GRAYBAGGAGE_KRUISE_REBUILD:-0}" != 1 ]] && have_all; then
    log "cache hit: $BIN (key $KEY)"
    echo "$BIN"; exit 0
  fi

  mkdir -p "$CACHE/bin"
  take_build_lock "$CACHE/.build.lock"
  if [[ "${GRAYBAGGAGE_KRUISE_REBUILD:-0}" != 1 ]] && have_all; then
    log "cache hit after waiting: $BIN"
    echo "$BIN"; exit 0
  fi

  log "no cached managers for this key: building $MODULE $VERSIONS with $GO_VERSION, -p $JOBS"
  log "(cold: ~10-13 min per version on 2 busy cores; with a warm Go build cache: ~15-30 s each)"
  log "cache: $CACHE  key: $KEY"
  TMP="$CACHE/bin/.tmp-$KEY-$$"
  rm -rf "$TMP"; mkdir -p "$TMP"
  LOGDIR="$CACHE/logs"; mkdir -p "$LOGDIR"
  STEP=""
  trap on_build_exit EXIT

  local v dir
  for v in $VERSIONS; do
    run_step "download $MODULE@$v" go mod download -json "$MODULE@$v"
    dir="$(python3 -c 'import sys,json; print(json.load(open(sys.argv[1]))["Dir"])' "$LOGDIR/step.log" 2>/dev/null \
           || sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' "$LOGDIR/step.log")"
    [[ -n "$dir" && -f "$dir/go.mod" ]] || die "no module dir for $MODULE@$v"
    mkdir -p "$TMP/$v"
    # inside the module: its own go.mod/go.sum decide every dependency (-mod=readonly: nothing changes)
    run_step "build manager $v" \
      bash -c 'cd "$1" && go build -v -p "$2" -mod=readonly -trimpath -o "$3" .' _ "$dir" "$JOBS" "$TMP/$v/manager"
    ln -s "$dir" "$TMP/$v/module"
    [[ -x "$TMP/$v/manager" ]] || die "manager $v missing after build"
    [[ -d "$dir/lua_configuration" && -d "$dir/config/crd/bases" && -f "$dir/config/webhook/manifests.yaml" ]] \
      || die "$MODULE@$v lacks lua_configuration/ or config/crd/bases or config/webhook/manifests.yaml"
    log "  $(du -h "$TMP/$v/manager" | cut -f1)	$v/manager"
  done

  STEP="install"
  echo "$KEY" >"$TMP/.stamp"
  rm -rf "$BIN"
  mv "$TMP" "$BIN"; TMP=""
  # keep only the newest 2 bin dirs
  ls -1dt "$CACHE"/bin/*/ 2>/dev/null | tail -n +3 | xargs -r rm -rf
  log "done in $(( $(date +%s) - T0 ))s: $BIN"
  echo "$BIN"
}

main "$@"
exit $?
