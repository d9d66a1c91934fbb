#!/usr/bin/env bash
# Install the system tools the test data plane needs (tests/k8s/dataplane.py), where missing:
#   ip (iproute2), nft (nftables; kube-proxy's nftables mode runs it), socat (the relays), mount.
# Debian/Ubuntu (apt-get) only; prints what it does. Idempotent and quick when all are present.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v mount >/dev/null 2>&1 || need+=(mount)
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "dataplane deps: missing ${need[*]} and no apt-get here; install them by hand" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "dataplane deps: installing ${need[*]} with apt-get" >&2
$SUDO apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
