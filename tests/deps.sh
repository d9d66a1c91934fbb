#!/usr/bin/env bash
# Install the system tools the library tests need, where missing: redis-server (the Celery tests' broker;
# each test starts its own on a free 127.0.0.1 port). Debian/Ubuntu (apt-get) only; prints what it does.
# Idempotent and quick when all are present. Without it the Celery tests are skipped, not failed.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "test deps: missing ${need[*]} and no apt-get here; install them by hand" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "test deps: installing ${need[*]} with apt-get" >&2
$SUDO apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
# the package starts a system-wide server on 6379; the tests use their own
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
