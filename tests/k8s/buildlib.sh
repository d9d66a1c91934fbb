# Shared helpers for tests/k8s/build.sh and tests/k8s/dataplane/build.sh (sourced, not run).
# Needs: T0 (start time), LOGDIR. Provides: log, die, run_step, on_build_exit.

log() { echo "[${BUILD_NAME:-build} +$(( $(date +%s) - T0 ))s] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# run_step NAME CMD...: runs CMD with its output in $LOGDIR/step.log; every 30 s prints how
# many packages `go build -v` has compiled so far (a cold build is silent otherwise).
run_step() {
  STEP="$1"; shift
  local s0; s0=$(date +%s)
  log "step '$STEP' started"
  : > "$LOGDIR/step.log"
  ( while sleep 30 </dev/null >/dev/null 2>&1; do  # sleep must not hold our stderr pipe
      log "  ... '$STEP' running $(( $(date +%s) - s0 ))s, $(grep -vc '^go: ' "$LOGDIR/step.log" || true) packages compiled so far"
    done ) 9>&- &
  TICKER=$!
  # 9>&-: the lock fd must not leak into go's helper processes (e.g. its telemetry
  # sidecar outlives the build and would hold the lock for a while)
  "$@" >>"$LOGDIR/step.log" 2>&1 9>&-
  kill "$TICKER" 2>/dev/null || true; wait "$TICKER" 2>/dev/null || true; TICKER=""
  log "step '$STEP' done in $(( $(date +%s) - s0 ))s"
}

# trap on_build_exit EXIT: on failure, name the step and print the tail of its log.
on_build_exit() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    log "FAILED at step '${STEP:-?}' (exit $rc) after $(( $(date +%s) - T0 ))s"
    if [[ -f "$LOGDIR/step.log" ]]; then
      echo "----- last 40 lines of $LOGDIR/step.log -----" >&2
      tail -n 40 "$LOGDIR/step.log" >&2 || true
      echo "---------------------------------------------" >&2
      cp "$LOGDIR/step.log" "$LOGDIR/failed-$(date +%Y%m%d-%H%M%S).log" 2>/dev/null || true
    fi
  fi
  [[ -n "${TICKER:-}" ]] && kill "$TICKER" 2>/dev/null || true
  [[ -n "${TMP:-}" ]] && rm -rf "$TMP"
  return 0
}

# take_build_lock FILE: one builder at a time per cache (parallel pytest workers, two terminals).
take_build_lock() {
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$1"
    if ! flock -n 9; then
      log "another build holds $1; waiting..."
      flock 9
    fi
  fi
}
