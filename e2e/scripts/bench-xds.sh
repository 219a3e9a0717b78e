#!/usr/bin/env bash
# `make bench-xds`: the control plane at scale. Brings up a cluster of its
# own (state in .cluster-bench-xds/, ports offset by 50000; MESH_CLUSTER_DIR
# and MESH_PORT_OFFSET move them), runs the
# release build of `mesh controller` on the host, and has `xds-load`
# (e2e/xds-load) create the Services, EndpointSlices and pods, take a
# token per pod, open one ADS stream per pod over TLS and measure: the
# initial push, idle CPU, a VirtualService change, endpoint churn and a
# controller restart, with the controller's RSS and CPU from /proc.
# Everything is removed at the end, whatever the outcome, and checked.
#
#   SERVICES (1000)  PROXIES (2000)  ACCOUNTS (4)  ENDPOINTS (3 per Service)
#   CHURN_RATE (30 updates/s)  CHURN_SECONDS (20)  VS_CHANGES (3)
#   IDLE_SECONDS (10)  PUSH_TIMEOUT (10 s)  BATCH (100 connections at a time)
#   CONTROLLER_WRAPPER (none: a profiler command to run the controller under;
#   no restart then)
#   SECRETS (1: each proxy asks for the SDS secrets its clusters name and
#   ACKs them, as Envoy does; 0: it does not, for the figures without)
#   ENVOYS (50 at 1,000 proxies or more, else 10; 0: none): real Envoy
#   processes beside the simulated proxies, one more pod each, with the
#   injected bootstrap; route, cluster and endpoint changes are measured on
#   their configuration dumps, and their RSS. ENVOY_CHANGES (3 of each),
#   ENVOY_TIMEOUT (30 s), ENVOY_POLL_MS (100), ENVOY_LOG_LEVEL (info). Their
#   ports (3 each, up to 200 Envoys) start at 61000 + 600 per 10000 of
#   MESH_PORT_OFFSET; their logs are copied to target/bench-xds-envoys/.
#
# `bench-xds.sh restart-controller` is what xds-load runs to restart the
# controller mid-run.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
source "$repo/e2e/scripts/versions.sh"
# Another offset and directory let a second run go beside this one.
export MESH_CLUSTER_DIR=${MESH_CLUSTER_DIR:-$repo/.cluster-bench-xds}
export MESH_PORT_OFFSET=${MESH_PORT_OFFSET:-50000}
cluster=$repo/e2e/scripts/cluster.sh
dir=$MESH_CLUSTER_DIR
xds=$((15012 + MESH_PORT_OFFSET))
mon=$((15014 + MESH_PORT_OFFSET))
webhook=$((15017 + MESH_PORT_OFFSET))
pidfile=$dir/pids/controller
envoy_dir=$dir/envoys
controller_log=$dir/logs/bench-controller.log
prefix=mesh$((MESH_PORT_OFFSET / 10000))

log() { printf '[bench-xds] %s\n' "$*" >&2; }

start_controller() {
  mkdir -p "$dir/pids" "$dir/logs"
  # CONTROLLER_WRAPPER runs the controller under a profiler, e.g. heaptrack
  # (the RSS and CPU figures are then the wrapper's, not the controller's).
  # shellcheck disable=SC2086
  setsid ${CONTROLLER_WRAPPER:-} "$repo/target/release/mesh" controller --kubeconfig "$dir/kubeconfig" --namespace mesh-system \
    --monitoring-addr "127.0.0.1:$mon" --webhook-addr "127.0.0.1:$webhook" --xds-addr "127.0.0.1:$xds" \
    --log warn >>"$controller_log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 300); do
    curl -sf --max-time 1 "http://127.0.0.1:$mon/readyz" >/dev/null && return 0
    kill -0 "$(cat "$pidfile")" 2>/dev/null || { log "the controller exited (log: $controller_log)"; tail -5 "$controller_log" >&2; return 1; }
    sleep 0.2
  done
  log "the controller is not ready after 60 s (log: $controller_log)"
  return 1
}

stop_controller() {
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  if [ -n "${CONTROLLER_WRAPPER:-}" ]; then
    # Stop the controller, then let the wrapper finish writing its data.
    pkill -TERM -P "$pid" -x mesh 2>/dev/null || true
    for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  fi
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

if [ "${1:-}" = restart-controller ]; then
  stop_controller
  start_controller
  exit
fi

# The Envoys xds-load started, should it have been stopped before it
# stopped them: each folder holds its Envoy's pid while it runs.
stop_envoys() {
  local pidf pid
  for pidf in "$envoy_dir"/*/pid; do
    [ -f "$pidf" ] || continue
    pid=$(cat "$pidf")
    if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$TOOLS_BIN/envoy")" ]; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  if [ -d "$envoy_dir" ]; then
    rm -rf "$repo/target/bench-xds-envoys"
    mkdir -p "$repo/target/bench-xds-envoys"
    for log in "$envoy_dir"/*/envoy.log; do
      [ -f "$log" ] && cp "$log" "$repo/target/bench-xds-envoys/$(basename "$(dirname "$log")").log"
    done
    cp "$envoy_dir"/*/config_dump.json "$repo/target/bench-xds-envoys/" 2>/dev/null || true
  fi
}

cleanup() {
  local rc=$?
  stop_envoys
  stop_controller
  [ -f "$controller_log" ] && cp "$controller_log" "$repo/target/bench-xds-controller.log"
  "$cluster" down >/dev/null 2>&1 || true
  "$repo/e2e/scripts/check-clean.sh" "$dir" "$prefix" >&2 || rc=1
  exit $rc
}

"$cluster" down >/dev/null 2>&1 || true
trap cleanup EXIT
# Two thousand TLS connections on each side of loopback.
ulimit -n "$(ulimit -Hn)"
log "cluster up ($dir, ports +$MESH_PORT_OFFSET)"
"$cluster" up >/dev/null
eval "$("$cluster" env)"
kubectl apply --server-side -f "$repo/crds/" >/dev/null
kubectl wait --for condition=Established --timeout=60s -f "$repo/crds/" >/dev/null
kubectl create namespace mesh-system >/dev/null
log "controller on 127.0.0.1:$xds (xDS), :$mon (monitoring)"
start_controller

envoys=${ENVOYS:-$(( ${PROXIES:-2000} >= 1000 ? 50 : 10 ))}
# Above the kernel's ephemeral range (32768-60999), where no outgoing
# connection can hold a port an Envoy is about to listen on; 600 ports for
# each offset (0, 10000, ..., 50000), below the xDS port of offset 50000.
envoy_ports=$((61000 + (MESH_PORT_OFFSET / 10000 % 6) * 600))
secrets_flag=()
if [ "${SECRETS:-1}" = 0 ]; then secrets_flag=(--no-secrets); fi
# The whole run is bounded; xds-load bounds each of its waits too.
timeout --signal=TERM 1800 "$repo/target/release/xds-load" \
  --services "${SERVICES:-1000}" --proxies "${PROXIES:-2000}" --accounts "${ACCOUNTS:-4}" \
  --endpoints "${ENDPOINTS:-3}" --churn-rate "${CHURN_RATE:-30}" --churn-seconds "${CHURN_SECONDS:-20}" \
  --vs-changes "${VS_CHANGES:-3}" --idle-seconds "${IDLE_SECONDS:-10}" --push-timeout "${PUSH_TIMEOUT:-10}" \
  --batch "${BATCH:-100}" --xds-addr "127.0.0.1:$xds" \
  --controller-pid-file "$pidfile" ${CONTROLLER_WRAPPER:+--no-restart} \
  "${secrets_flag[@]}" \
  --envoys "$envoys" --envoy-binary "$TOOLS_BIN/envoy" --envoy-dir "$envoy_dir" \
  --envoy-first-port "$envoy_ports" --envoy-changes "${ENVOY_CHANGES:-3}" \
  --envoy-timeout "${ENVOY_TIMEOUT:-30}" --envoy-poll-ms "${ENVOY_POLL_MS:-100}" \
  --envoy-log-level "${ENVOY_LOG_LEVEL:-info}" \
  --restart-command "$repo/e2e/scripts/bench-xds.sh restart-controller" \
  | tee "$repo/target/bench-xds.log"
