#!/usr/bin/env bash
# `make bench-identity`: how long a new pod waits for its identity. Brings
# up a cluster of its own (state in .cluster-bench-identity/, ports offset
# by 50000, like bench-xds: run one of them at a time), installs the mesh
# with its Helm chart (the controller as a pod, running the release build),
# and creates PODS pods in a namespace labelled for injection, BATCH at a
# time, each batch once the last one's proxies all hold their secrets.
# For every pod it reads, from the controller's log, when its stream was
# admitted ("proxy connected") and when its Envoy first ACKed a response
# of SDS secrets ("first ACK of this type on the stream", type sds), and
# prints p50/p99 of:
#
#   - pod creation -> first ACKed secret (the figure),
#   - pod creation -> stream admitted (scheduling, the iptables init
#     container, Envoy's start, token review, certificate issue),
#   - stream admitted -> first ACKed secret (the controller's part).
#
# Creation is the client's clock just before the `kubectl create` of the
# pod's batch (the controller's log uses the same host clock): a pod's
# metadata.creationTimestamp has whole seconds only, so it is printed
# beside it as a check, not used for the figures.
# Everything is removed at the end, whatever the outcome, and checked.
#
#   PODS (20)  BATCH (5)  WAIT (180 s a batch may take)
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
source "$repo/e2e/scripts/versions.sh"
export MESH_CLUSTER_DIR=$repo/.cluster-bench-identity
export MESH_PORT_OFFSET=50000
export MESH_NODE_MESH=${CARGO_TARGET_DIR:-$repo/target}/release/mesh
cluster=$repo/e2e/scripts/cluster.sh
dir=$MESH_CLUSTER_DIR
prefix=mesh$((MESH_PORT_OFFSET / 10000))
pods=${PODS:-20} batch=${BATCH:-5} wait_s=${WAIT:-180}
ns=bench-identity
out=${CARGO_TARGET_DIR:-$repo/target}/bench-identity

log() { printf '[bench-identity] %s\n' "$*" >&2; }

cleanup() {
  local rc=$?
  cp "$dir"/node/pods/mesh-system_*/logs/controller/*.log "$out/" 2>/dev/null || true
  "$cluster" down >/dev/null 2>&1 || true
  "$repo/e2e/scripts/check-clean.sh" "$dir" "$prefix" >&2 || rc=1
  exit $rc
}

[ -x "$MESH_NODE_MESH" ] || { log "$MESH_NODE_MESH is missing: cargo build --release -p mesh"; exit 1; }
rm -rf "$out" && mkdir -p "$out"
"$cluster" down >/dev/null 2>&1 || true
trap cleanup EXIT
log "cluster up ($dir, ports +$MESH_PORT_OFFSET)"
"$cluster" up >/dev/null
eval "$("$cluster" env)"
log "installing the chart"
"$cluster" mesh-up >/dev/null
kubectl create namespace "$ns" >/dev/null
kubectl label namespace "$ns" istio-injection=enabled >/dev/null

# The controller's log (JSON lines), as the node writes it.
controller_logs() { cat "$dir"/node/pods/mesh-system_*/logs/controller/*.log 2>/dev/null; }
# Pods of this run whose Envoy has ACKed secrets.
holding() {
  controller_logs | grep -F 'first ACK of this type on the stream' | grep -F '"sds"' \
    | grep -oE "\"$ns/identity-[0-9]+ " | sort -u | wc -l
}

pod_yaml() { # name
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: $ns, labels: {app: identity}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox
    command: [sh, -c, "sleep 3600"]
---
EOF
}

: >"$out/created"
made=0
while [ "$made" -lt "$pods" ]; do
  n=$((pods - made < batch ? pods - made : batch))
  : >"$out/batch.yaml"
  names=()
  for i in $(seq "$made" $((made + n - 1))); do
    names+=("identity-$(printf '%03d' "$i")")
    pod_yaml "${names[-1]}" >>"$out/batch.yaml"
  done
  at=$(date +%s.%N)
  kubectl create -f "$out/batch.yaml" >/dev/null
  for name in "${names[@]}"; do echo "$name $at" >>"$out/created"; done
  made=$((made + n))
  # Bounded wait for this batch's proxies to hold their secrets.
  deadline=$((SECONDS + wait_s))
  until [ "$(holding)" -ge "$made" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "only $(holding) of $made proxies hold their secrets after ${wait_s} s"
      kubectl -n "$ns" get pods -o wide >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  log "$made of $pods pods: every proxy holds its secrets"
done

kubectl -n "$ns" get pods -o json >"$out/pods.json"
controller_logs >"$out/controller.log"
python3 - "$out" "$ns" <<'EOF'
import datetime, json, math, sys

out, ns = sys.argv[1], sys.argv[2]

def epoch(stamp):
    # RFC 3339 with nanoseconds (tracing) or whole seconds (Kubernetes).
    stamp = stamp.rstrip("Z")
    whole, _, frac = stamp.partition(".")
    t = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.timezone.utc).timestamp()
    return t + (float("0." + frac) if frac else 0.0)

created = {}
for line in open(f"{out}/created"):
    name, at = line.split()
    created[name] = float(at)
stamped = {p["metadata"]["name"]: epoch(p["metadata"]["creationTimestamp"])
           for p in json.load(open(f"{out}/pods.json"))["items"]}

connected, secret = {}, {}
for line in open(f"{out}/controller.log"):
    try:
        record = json.loads(line)
    except ValueError:
        continue
    fields = record.get("fields", {})
    proxy = fields.get("proxy", "")
    if not proxy.startswith(ns + "/"):
        continue
    pod = proxy[len(ns) + 1:].split(" ")[0]
    at = epoch(record["timestamp"])
    message = fields.get("message")
    if message == "proxy connected":
        connected.setdefault(pod, at)
    elif message == "first ACK of this type on the stream" and fields.get("type") == "sds":
        secret.setdefault(pod, at)

def quantile(values, q):
    values = sorted(values)
    return values[max(1, math.ceil(q * len(values))) - 1]

def show(label, values):
    ms = [v * 1000 for v in values]
    print(f"{label}: p50 {quantile(ms, 0.5):.0f} ms, p99 {quantile(ms, 0.99):.0f} ms, "
          f"min {min(ms):.0f} ms, max {max(ms):.0f} ms ({len(ms)} pods)")

missing = sorted(set(created) - set(secret) | set(created) - set(connected))
if missing:
    sys.exit(f"no log line for {len(missing)} pods: {', '.join(missing[:5])}")
late = [p for p in created if stamped[p] + 1 < created[p] or stamped[p] > created[p] + 5]
if late:
    sys.exit(f"creationTimestamp disagrees with the create request for {', '.join(late[:5])}")
pods = sorted(created)
print()
print("== identity at pod start: summary ==")
show("pod creation -> Envoy's first ACKed secret", [secret[p] - created[p] for p in pods])
show("pod creation -> stream admitted (proxy connected)", [connected[p] - created[p] for p in pods])
show("stream admitted -> first ACKed secret", [secret[p] - connected[p] for p in pods])
show("(check) creationTimestamp, whole seconds -> first ACKed secret", [secret[p] - stamped[p] for p in pods])
EOF
