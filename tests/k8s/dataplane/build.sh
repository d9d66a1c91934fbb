#!/usr/bin/env bash
# Build (or reuse) the data-plane programs of the test cluster that do not come from the
# pinned k8s.io/kubernetes module (kube-proxy does: tests/k8s/build.sh builds it):
#   coredns   github.com/coredns/coredns v1.15.0 through the slim wrapper in coredns/
#             (main.go registers only the plugins the cluster DNS uses)
#   traefik   github.com/traefik/traefik/v3 (TRAEFIK_VERSION below), the gateway: Gateway API
#             provider and Ingress providers
#
# Traefik's module does not build as served; three small changes, all made here on a copy of
# the module (never committed, never in the module cache):
#   1. pkg/config/dynamic/ext is a nested module the proxy does not serve and the module zip
#      leaves out: traefik/ext/ is a stub (two empty structs, what the open-source build embeds).
#   2. github.com/abbot/go-http-auth is replaced by Traefik with a fork pseudo-version the proxy
#      refuses: we replace it with the served abbot v0.4.0 plus traefik/go-http-auth/fork_compat.go
#      (the two functions the fork adds; only the basic/digest auth middlewares use them) and a
#      go.mod (v0.4.0 has none; a directory replacement needs one).
#   3. the ACME DNS-challenge provider registry (go-acme/lego providers/dns) imports ~14 cloud
#      SDKs the proxy refuses: the one call is replaced by an error (ACME is never used here).
#
# Cache: ${GRAYBAGGAGE_K8S_CACHE:-$HOME/.cache/graybaggage/k8s} (shared GOMODCACHE/GOCACHE with
# tests/k8s/build.sh), binaries in dataplane-bin/<key>, <key> = hash of this directory's inputs,
# the Go version and the versions. Progress on stderr; the LAST stdout line is the bin dir:
#   DP_BIN=$(tests/k8s/dataplane/build.sh | tail -1)
# Env: GRAYBAGGAGE_K8S_CACHE, GRAYBAGGAGE_K8S_JOBS (go build -p, default 2),
#      GRAYBAGGAGE_K8S_REBUILD=1 (ignore the stamp).
set -euo pipefail

main() {
  HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  CACHE="${GRAYBAGGAGE_K8S_CACHE:-$HOME/.cache/graybaggage/k8s}"
  JOBS="${GRAYBAGGAGE_K8S_JOBS:-2}"
  TRAEFIK_VERSION=v3.7.13
  GO_HTTP_AUTH_VERSION=v0.4.0
  T0=$(date +%s)
  BUILD_NAME=dataplane-build
  # shellcheck source=../buildlib.sh
  source "$HERE/../buildlib.sh"

  command -v go >/dev/null 2>&1 || die "the 'go' command is not on PATH (need Go >= 1.26; see tests/k8s/README.md)"
  export GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off
  export GOMODCACHE="$CACHE/gomod" GOCACHE="$CACHE/gocache"
  export GOFLAGS="-modcacherw -buildvcs=false"

  KEY="$( { find "$HERE" -type f ! -name '*.md' -print0 | sort -z | xargs -0 cat; cat "$HERE/../buildlib.sh";
            echo "$(go env GOVERSION GOOS GOARCH)|$TRAEFIK_VERSION|$GO_HTTP_AUTH_VERSION"; } | sha256sum | cut -c1-16)"
  BIN="$CACHE/dataplane-bin/$KEY"
  BINARIES=(coredns traefik)
  have_all() {
    [[ -f "$BIN/.stamp" && "$(cat "$BIN/.stamp")" == "$KEY" ]] || return 1
    local b; for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
  }
  if [[ "${GRAYBAGGAGE_K8S_REBUILD:-0}" != 1 ]] && have_all; then
    log "cache hit: $BIN (key $KEY)"; echo "$BIN"; exit 0
  fi
  mkdir -p "$CACHE/dataplane-bin"
  take_build_lock "$CACHE/.dataplane-build.lock"
  if [[ "${GRAYBAGGAGE_K8S_REBUILD:-0}" != 1 ]] && have_all; then
    log "cache hit after waiting: $BIN"; echo "$BIN"; exit 0
  fi

  log "no cached data-plane binaries for this key: building coredns and traefik $TRAEFIK_VERSION with $(go env GOVERSION), -p $JOBS"
  log "(cold: ~6 min for coredns and ~20 min for traefik on 2 cores; warm Go build cache: seconds)"
  TMP="$CACHE/dataplane-bin/.tmp-$KEY-$$"
  LOGDIR="$CACHE/logs"; mkdir -p "$LOGDIR"
  rm -rf "$TMP"; mkdir -p "$TMP"
  trap on_build_exit EXIT

  cd "$HERE/coredns"
  run_step "download coredns modules" go mod download
  run_step "build coredns" go build -v -p "$JOBS" -mod=readonly -trimpath -ldflags "-s -w" -o "$TMP/coredns" .

  STEP="prepare traefik source"
  local src="$TMP/traefik-src" mod auth
  mod="$(go mod download -json "github.com/traefik/traefik/v3@$TRAEFIK_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  auth="$(go mod download -json "github.com/abbot/go-http-auth@$GO_HTTP_AUTH_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$mod" && -d "$auth" ]] || die "could not download traefik $TRAEFIK_VERSION or go-http-auth $GO_HTTP_AUTH_VERSION"
  cp -r "$mod" "$src"; chmod -R u+w "$src"
  cp -r "$HERE/traefik/ext" "$src/pkg/config/dynamic/ext"                      # change 1
  cp -r "$auth" "$src/_go-http-auth"; chmod -R u+w "$src/_go-http-auth"          # change 2
  cp "$HERE/traefik/go-http-auth/fork_compat.go" "$HERE/traefik/go-http-auth/go.mod" "$src/_go-http-auth/"
  (cd "$src" && go mod edit -replace "github.com/abbot/go-http-auth=./_go-http-auth")
  local acme="$src/pkg/provider/acme/provider.go"                               # change 3
  grep -q 'dns.NewDNSChallengeProviderByName(p.DNSChallenge.Provider)' "$acme" \
    || die "traefik $TRAEFIK_VERSION: the ACME DNS provider call moved; update change 3 in $0"
  sed -i -e 's#provider, err = dns.NewDNSChallengeProviderByName(p.DNSChallenge.Provider)#provider, err = nil, fmt.Errorf("DNS challenge provider %q: not built into the graybaggage test binary", p.DNSChallenge.Provider)#' \
         -e '\#"github.com/go-acme/lego/v5/providers/dns"#d' "$acme"
  grep -q '^\s*"fmt"$' "$acme" || die "traefik $TRAEFIK_VERSION: $acme no longer imports fmt; update change 3 in $0"
  log "traefik source prepared in $src (3 changes applied)"

  cd "$src"
  run_step "build traefik" go build -v -p "$JOBS" -mod=mod -trimpath \
    -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" \
    -o "$TMP/traefik" ./cmd/traefik
  cd "$HERE"
  rm -rf "$src"

  STEP="verify binaries"
  "$TMP/coredns" -version >"$LOGDIR/step.log" 2>&1 || die "coredns -version failed"
  "$TMP/traefik" version >>"$LOGDIR/step.log" 2>&1 || die "traefik version failed"
  log "versions: $(tr '\n' ' ' <"$LOGDIR/step.log")"
  echo "$KEY" >"$TMP/.stamp"
  rm -rf "$BIN"; mv "$TMP" "$BIN"; TMP=""
  ls -1dt "$CACHE"/dataplane-bin/*/ 2>/dev/null | tail -n +3 | xargs -r rm -rf
  log "done in $(( $(date +%s) - T0 ))s: $BIN"
  echo "$BIN"
}

main "$@"
exit $?
