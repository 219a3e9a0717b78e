#!/usr/bin/env bash
# `make bench-webhook`: the latency of both webhooks at a fixed request
# rate, measured with fortio against the real controller on a cluster of
# its own: /validate with a VirtualService (the demo app's Services and
# DestinationRules from samples/ in the index, so the warnings' context is
# real), then /inject with a Bookinfo pod in a namespace labelled for
# injection. Prints p50/p90/p99 and the controller's memory and CPU over
# each run.
#
#   QPS (default 200), SECONDS_ (default 30), CONNECTIONS (default 4)
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
source "$repo/e2e/scripts/versions.sh"
export MESH_CLUSTER_DIR=$repo/.cluster-bench
export MESH_PORT_OFFSET=30000
cluster=$repo/e2e/scripts/cluster.sh
qps=${QPS:-200} seconds=${SECONDS_:-30} connections=${CONNECTIONS:-4}

"$cluster" down >/dev/null 2>&1 || true
trap '"$cluster" down >/dev/null 2>&1' EXIT
"$cluster" up >/dev/null
eval "$("$cluster" env)"
kubectl apply --server-side -f "$repo/crds/" >/dev/null
kubectl wait --for condition=Established --timeout=60s -f "$repo/crds/" >/dev/null
kubectl create namespace mesh-system >/dev/null
kubectl create namespace bench >/dev/null
kubectl label namespace bench istio-injection=enabled >/dev/null
# The demo app's Services (not its Deployments) and every DestinationRule subset.
kubectl apply -f <(grep -v '^#' "$repo/samples/bookinfo.yaml" \
  | awk 'BEGIN{RS="---"} /kind: Service\n/ || /kind: Service$/ {print "---" $0}') >/dev/null
kubectl apply -f "$repo/samples/routing/destination-rules.yaml" >/dev/null

port=$((15017 + MESH_PORT_OFFSET))
mon=$((15014 + MESH_PORT_OFFSET))
"$repo/target/release/mesh" controller --kubeconfig "$KUBECONFIG" --namespace mesh-system \
  --monitoring-addr "127.0.0.1:$mon" --webhook-addr "127.0.0.1:$port" --xds-addr "127.0.0.1:$((15012 + MESH_PORT_OFFSET))" --log warn \
  >"$MESH_CLUSTER_DIR/logs/bench-controller.log" 2>&1 &
controller=$!
trap 'kill $controller 2>/dev/null; "$cluster" down >/dev/null 2>&1' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$mon/readyz" >/dev/null && break; sleep 0.2; done

load() { # path payload qps duration
  "$TOOLS_BIN/fortio" load -quiet -k -qps "$3" -t "$4" -c "$connections" \
    -content-type application/json -payload-file "$repo/e2e/bench/$2" \
    "https://127.0.0.1:$port/$1" 2>&1
}
hz=$(getconf CLK_TCK)

bench() { # path payload what
  load "$1" "$2" 50 3s >/dev/null   # warm-up: TLS sessions, caches
  local cpu_before cpu_after rss out actual
  cpu_before=$(awk '{print $14 + $15}' "/proc/$controller/stat")
  out=$(load "$1" "$2" "$qps" "${seconds}s")
  cpu_after=$(awk '{print $14 + $15}' "/proc/$controller/stat")
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$controller/status")
  echo "== /$1: $3"
  echo "$out" | grep -E '^(Aggregated Function Time|# target|Sockets used|Code )' || echo "$out"
  pct() { echo "$out" | awk -v p="$1" '$1=="#" && $2=="target" && $3==p"%" {printf "%.3f", $4 * 1000}'; }
  actual=$(echo "$out" | awk '/All done/ {for (i=1;i<=NF;i++) if ($i=="qps") print $(i-1)}' | head -n1)
  echo
  echo "/$1: ${qps} req/s asked, ${actual:-?} req/s done over ${seconds}s, ${connections} connections"
  echo "/$1 latency: p50 $(pct 50) ms, p90 $(pct 90) ms, p99 $(pct 99) ms (goal: p99 <= 2 ms)"
  echo "/$1 controller: RSS $((rss / 1024)) MiB, CPU $(( (cpu_after - cpu_before) * 100 / hz / seconds ))% of one core"
  echo
}

# The answer must be the real one, or the figures mean nothing.
curl -sk -H 'content-type: application/json' --data-binary @"$repo/e2e/bench/review-pod.json" \
  "https://127.0.0.1:$port/inject" | grep -q '"patch"' || { echo "/inject gave no patch" >&2; exit 1; }

bench validate review-virtualservice.json "a VirtualService with three routes"
bench inject review-pod.json "a Bookinfo reviews pod, injected"
# /debug/configz answers users allowed to get /debug/* (docs/security.md).
kubectl create clusterrole bench-debug --verb=get --non-resource-url='/debug/*' >/dev/null
kubectl -n mesh-system create serviceaccount bench-debug >/dev/null
kubectl create clusterrolebinding bench-debug --clusterrole=bench-debug --serviceaccount=mesh-system:bench-debug >/dev/null
for _ in $(seq 1 50); do # the authorizer learns of a new binding a moment later
  kubectl auth can-i get /debug/configz --as=system:serviceaccount:mesh-system:bench-debug >/dev/null 2>&1 && break
  sleep 0.2
done
token=$(kubectl -n mesh-system create token bench-debug)
curl -s -H "Authorization: Bearer $token" "http://127.0.0.1:$mon/debug/configz" | python3 -c 'import json,sys; c=json.load(sys.stdin); print("index: %d Services, %d DestinationRules" % (c["counts"]["Service"], len(c["DestinationRule"])))' 
