#!/usr/bin/env bash
# `make run`: the local cluster with its node, the CRDs, Bookinfo, and the
# controller in the foreground. Ctrl-C stops the controller, then the cluster.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cluster=$repo/e2e/scripts/cluster.sh
"$cluster" up
eval "$("$cluster" env)"
trap '"$cluster" down' EXIT

kubectl apply --server-side --force-conflicts -f "$repo/crds/" >/dev/null
kubectl wait --for condition=Established --timeout=60s -f "$repo/crds/" >/dev/null
kubectl apply -f "$repo/../shared/conformance/bookinfo/platform/bookinfo.yaml" >/dev/null
echo "[run] waiting for Bookinfo..."
kubectl rollout status deployment --timeout=180s >/dev/null
productpage=$(kubectl get service productpage -o jsonpath='{.spec.clusterIP}')
cat <<TXT

  The local cluster is up, with Bookinfo. In another shell:
    cd $repo && eval "\$(make -s env)"
    kubectl get pods
    curl -s http://$productpage:9080/productpage          # from this machine, by ClusterIP
    make pod-exec POD=default/productpage CMD='curl -s productpage:9080/productpage'
    curl -s localhost:15014/debug/configz                 # what the controller sees
  Ctrl-C here stops the controller and the cluster.

TXT
# Not exec: the EXIT trap must run after the controller stops.
kubectl create namespace mesh-system >/dev/null 2>&1 || true
"$repo/target/debug/mesh" controller --monitoring-addr 127.0.0.1:15014 --webhook-addr 127.0.0.1:15017 --xds-addr 127.0.0.1:15012 || true
