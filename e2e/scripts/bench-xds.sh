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
#   IDLE_SECONDS (10)  PUSH_TIMEOUT (10 s; 25 s with COMPARE)  BATCH (100 connections at a time)
#   CONNECT_TIMEOUT (300 s for all proxies to connect and ACK)
#   PROTOCOL (delta, as the injected bootstrap; sotw: the simulated proxies
#   speak state-of-the-world ADS)
#   STALLED (0): proxies that never read their stream, held STALLED_SECONDS
#   (90) after the endpoint churn while LATE_PROXIES (20) more connect and
#   a VirtualService change is made; the controller's RSS meanwhile
#   (docs/operations.md)
#   CONTROLLER_WRAPPER (none: a profiler command to run the controller under;
#   no restart then)
#   SECRETS (1: each proxy asks for the SDS secrets its clusters name and
#   ACKs them, as Envoy does; 0: it does not, for the figures without;
#   0 by default with COMPARE)
#   COMPARE (none; istiod: after the controller, the same proxies measure
#   istiod (pilot-discovery, built by `tools.sh istiod`, run on the host
#   with its stock settings) on the same cluster and objects, and both
#   columns are printed with their ratio; docs/perf.md)
#   ENVOYS (50 at 1,000 proxies or more, else 10; 0: none; the controller's
#   run only): real Envoy
#   processes beside the simulated proxies, one more pod each, with the
#   injected bootstrap; route, cluster and endpoint changes are measured on
#   their configuration dumps, and their RSS. ENVOY_CHANGES (3 of each),
#   ENVOY_TIMEOUT (30 s), ENVOY_POLL_MS (100), ENVOY_LOG_LEVEL (info). Their
#   ports (3 each, up to 200 Envoys) start at 61000 + 600 per 10000 of
#   MESH_PORT_OFFSET; their logs are copied to target/bench-xds-envoys/.
#
# `bench-xds.sh restart-controller` (`restart-istiod`) is what xds-load runs
# to restart the control plane mid-run.
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
compare=${COMPARE:-}
# istiod's port for Istio's port $1: the offset + 1000 + its last three
# digits (15012 -> 31012 with MESH_PORT_OFFSET=30000), so they never meet
# the controller's and, for offsets up to 30000, stay below the kernel's
# ephemeral range (32768 and up), where a socket the run opens (2,000
# proxies reconnecting, the API server's own) can take a port istiod is
# about to bind.
istiod_port() { echo $((MESH_PORT_OFFSET + 1000 + $1 % 1000)); }
istiod_xds=$(istiod_port 15012)
istiod_http=$(istiod_port 8080)
istiod_pidfile=$dir/pids/istiod
istiod_log=$dir/logs/bench-istiod.log
istiod_dir=$dir/istiod

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

# istiod as the chart's Deployment runs it (manifests/charts/istio-control/
# istio-discovery/templates/deployment.yaml: the same args and env), on the
# host: no Pod, so the env the Pod would get comes from here, and the
# relative paths it reads (./etc/cacerts, ./var/lib/istio/inject,
# ./var/run/secrets/...) are under its folder and absent: a self-signed
# CA, no injection templates. Everything else is its default (debounce
# 100 ms / 10 s, push throttle and request limit from GOMAXPROCS).
start_istiod() {
  mkdir -p "$dir/pids" "$dir/logs" "$istiod_dir"
  # A default install's values for what bears on a sidecar's
  # configuration; istiod's defaults for the rest.
  printf '%s\n' 'defaultConfig:' '  discoveryAddress: istiod.istio-system.svc:15012' \
    'enablePrometheusMerge: true' 'rootNamespace: istio-system' 'trustDomain: cluster.local' \
    >"$istiod_dir/mesh.yaml"
  (
    cd "$istiod_dir"
    export REVISION=default PILOT_CERT_PROVIDER=istiod POD_NAME=istiod-bench POD_NAMESPACE=istio-system \
      SERVICE_ACCOUNT=istiod CA_TRUSTED_NODE_ACCOUNTS=istio-system/ztunnel PILOT_TRACE_SAMPLING=1 \
      PILOT_ENABLE_ANALYSIS=false CLUSTER_ID=Kubernetes PLATFORM="" GOMAXPROCS="$(nproc)"
    setsid "$TOOLS_BIN/pilot-discovery" discovery --kubeconfig "$dir/kubeconfig" \
      --meshConfig "$istiod_dir/mesh.yaml" --domain cluster.local --keepaliveMaxServerConnectionAge 30m \
      --httpAddr "127.0.0.1:$istiod_http" --grpcAddr "127.0.0.1:$(istiod_port 15010)" \
      --secureGRPCAddr "127.0.0.1:$istiod_xds" --monitoringAddr "127.0.0.1:$(istiod_port 15014)" \
      --httpsAddr "127.0.0.1:$(istiod_port 15017)" --ctrlz_port "$(istiod_port 9876)" \
      --log_output_level all:warn >>"$istiod_log" 2>&1 </dev/null &
    echo $! >"$istiod_pidfile"
  )
  for _ in $(seq 1 600); do
    curl -sf --max-time 1 "http://127.0.0.1:$istiod_http/ready" >/dev/null && return 0
    if ! kill -0 "$(cat "$istiod_pidfile")" 2>/dev/null; then
      # With an offset that puts its ports in the ephemeral range, a
      # reconnecting proxy's socket may hold one for a moment.
      if [ "${2:-0}" -lt 10 ] && tail -3 "$istiod_log" | grep -q 'address already in use'; then
        log "istiod: a port is taken by another socket; starting again in 1 s"
        sleep 1
        start_istiod again "$((${2:-0} + 1))"
        return
      fi
      log "istiod exited (log: $istiod_log)"
      tail -5 "$istiod_log" >&2
      return 1
    fi
    sleep 0.2
  done
  log "istiod is not ready after 120 s (log: $istiod_log)"
  return 1
}

stop_istiod() {
  [ -f "$istiod_pidfile" ] || return 0
  local pid
  pid=$(cat "$istiod_pidfile")
  kill -TERM "$pid" 2>/dev/null || return 0
  # istiod drains for --shutdownDuration (10 s) before it exits.
  for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# Istio's CRDs for the kinds ours does not define (EnvoyFilter,
# WorkloadEntry, AuthorizationPolicy, Telemetry, ...), from the pinned
# module's manifests, so istiod watches what it watches in an install;
# ours stay as they are.
install_istio_crds() {
  local all
  all=$(go env GOMODCACHE)/istio.io/istio@$ISTIOD_VERSION/manifests/charts/base/files/crd-all.gen.yaml
  python3 "$repo/e2e/scripts/crds-not-ours.py" "$all" "$repo/crds/istio.yaml" >"$istiod_dir/istio-crds.yaml"
  kubectl apply --server-side -f "$istiod_dir/istio-crds.yaml" >/dev/null
  kubectl wait --for condition=Established --timeout=60s -f "$istiod_dir/istio-crds.yaml" >/dev/null
}

if [ "${1:-}" = restart-controller ]; then
  stop_controller
  start_controller
  exit
fi
if [ "${1:-}" = restart-istiod ]; then
  stop_istiod
  start_istiod
  exit
fi
case "$compare" in
  '' | istiod) ;;
  *) log "COMPARE=$compare: only COMPARE=istiod is known"; exit 2 ;;
esac

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
  stop_istiod
  [ -f "$controller_log" ] && cp "$controller_log" "$repo/target/bench-xds-controller.log"
  [ -f "$istiod_log" ] && cp "$istiod_log" "$repo/target/bench-xds-istiod.log"
  "$cluster" down >/dev/null 2>&1 || true
  "$repo/e2e/scripts/check-clean.sh" "$dir" "$prefix" >&2 || rc=1
  exit $rc
}

if [ "$compare" = istiod ]; then "$repo/e2e/scripts/tools.sh" istiod; fi
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
if [ "$compare" = istiod ]; then
  mkdir -p "$istiod_dir"
  install_istio_crds
  kubectl create namespace istio-system >/dev/null
fi
log "controller on 127.0.0.1:$xds (xDS), :$mon (monitoring)"
start_controller

envoys=${ENVOYS:-$(( ${PROXIES:-2000} >= 1000 ? 50 : 10 ))}
# Above the kernel's ephemeral range (32768-60999), where no outgoing
# connection can hold a port an Envoy is about to listen on; 600 ports for
# each offset (0, 10000, ..., 50000), below the xDS port of offset 50000.
envoy_ports=$((61000 + (MESH_PORT_OFFSET / 10000 % 6) * 600))
# Real Envoys run the mesh's injected bootstrap: the controller's run only.
envoy_flags=(--envoys "$envoys" --envoy-binary "$TOOLS_BIN/envoy" --envoy-dir "$envoy_dir"
  --envoy-first-port "$envoy_ports" --envoy-changes "${ENVOY_CHANGES:-3}"
  --envoy-timeout "${ENVOY_TIMEOUT:-30}" --envoy-poll-ms "${ENVOY_POLL_MS:-100}"
  --envoy-log-level "${ENVOY_LOG_LEVEL:-info}")
secrets_default=1 push_timeout=10
# istiod pushes after 100 ms of quiet or 10 s of steady changes (its
# PILOT_DEBOUNCE_MAX), and a full push to 2,000 proxies can take longer:
# wait up to 25 s (xds-load matches a change for 30 s).
if [ -n "$compare" ]; then secrets_default=0 push_timeout=25; fi
secrets_flag=()
if [ "${SECRETS:-$secrets_default}" = 0 ]; then secrets_flag=(--no-secrets); fi
# One run of the load against one control plane: TARGET ADDRESS PID_FILE
# RESTART_ARGUMENT, then more of xds-load's flags.
load() {
  local target=$1 addr=$2 pids=$3 restart=$4
  shift 4
  # The whole run is bounded; xds-load bounds each of its waits too.
  timeout --signal=TERM 1800 ${LOAD_WRAPPER:-} "$repo/target/release/xds-load" --target "$target" \
    --services "${SERVICES:-1000}" --proxies "${PROXIES:-2000}" --accounts "${ACCOUNTS:-4}" \
    --endpoints "${ENDPOINTS:-3}" --churn-rate "${CHURN_RATE:-30}" --churn-seconds "${CHURN_SECONDS:-20}" \
    --vs-changes "${VS_CHANGES:-3}" --idle-seconds "${IDLE_SECONDS:-10}" --push-timeout "${PUSH_TIMEOUT:-$push_timeout}" \
    --batch "${BATCH:-100}" --protocol "${PROTOCOL:-delta}" --connect-timeout "${CONNECT_TIMEOUT:-300}" --xds-addr "$addr" --controller-pid-file "$pids" \
    "${secrets_flag[@]}" --restart-command "$repo/e2e/scripts/bench-xds.sh $restart" "$@"
}
if [ -z "$compare" ]; then
  load mesh "127.0.0.1:$xds" "$pidfile" restart-controller ${CONTROLLER_WRAPPER:+--no-restart} \
    --stalled "${STALLED:-0}" --stalled-seconds "${STALLED_SECONDS:-90}" --late-proxies "${LATE_PROXIES:-20}" \
    "${envoy_flags[@]}" | tee "$repo/target/bench-xds.log"
  exit
fi

# Side by side: the controller, then istiod on the same objects (the
# second run sets back the endpoints and weights the first one changed).
figures=$repo/target/bench-xds-figures
mkdir -p "$figures"
load mesh "127.0.0.1:$xds" "$pidfile" restart-controller ${CONTROLLER_WRAPPER:+--no-restart} \
  "${envoy_flags[@]}" --figures "$figures/mesh.json" | tee "$repo/target/bench-xds.log"
stop_controller
log "istiod $ISTIOD_VERSION on 127.0.0.1:$istiod_xds (xDS, TLS), :$istiod_http (ready)"
start_istiod
load istiod "127.0.0.1:$istiod_xds" "$istiod_pidfile" restart-istiod --figures "$figures/istiod.json" \
  | tee "$repo/target/bench-xds-istiod-run.log"
stop_istiod
{
  echo
  echo "== xDS at scale: the mesh's controller and istiod, side by side (mesh ÷ istiod below 1: the mesh needs less) =="
  "$repo/target/release/xds-load" --compare "$figures/mesh.json" "$figures/istiod.json"
} | tee "$repo/target/bench-xds-compare.txt"
