#!/usr/bin/env bash
# `make run`: the local cluster with its node, the mesh installed by its Helm
# chart (the controller as a pod), and the demo app (samples/bookinfo.yaml,
# shaped like Istio's Bookinfo) in the namespace `default` labelled for
# injection, so every pod of it runs stock Envoy beside the app.
# The controller's log follows in the foreground; Ctrl-C stops everything.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cluster=$repo/e2e/scripts/cluster.sh
"$cluster" up
eval "$("$cluster" env)"
trap '"$cluster" down' EXIT

echo "[run] installing the mesh (helm)..."
"$cluster" mesh-up
# Who may read the controller's /debug views: a ServiceAccount bound to the
# chart's ClusterRole mesh-debug (the cluster's admin authenticates with a
# client certificate, which the controller's plain HTTP port cannot check).
kubectl -n mesh-system create serviceaccount debug-viewer --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl create clusterrolebinding debug-viewer --clusterrole=mesh-debug \
  --serviceaccount=mesh-system:debug-viewer --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace default istio-injection=enabled --overwrite >/dev/null
kubectl apply -f "$repo/samples/bookinfo.yaml" >/dev/null
kubectl apply -f "$repo/samples/gateway.yaml" >/dev/null
echo "[run] waiting for the demo app (samples/bookinfo.yaml), each pod with its Envoy..."
kubectl rollout status deployment --timeout=240s >/dev/null
productpage=$(kubectl get service productpage -o jsonpath='{.spec.clusterIP}')
mesh=$(kubectl -n mesh-system get service mesh -o jsonpath='{.spec.clusterIP}')
ingress=$(kubectl -n mesh-system get service mesh-ingressgateway -o jsonpath='{.spec.clusterIP}')
cat <<TXT

  The local cluster is up, with the mesh and the demo app (istio-proxy in every pod).
  In another shell:
    cd $repo && eval "\$(make -s env)"
    kubectl get pods                                       # 2/2: the app and its Envoy
    curl -s http://$productpage:9080/productpage           # from this machine, through Envoy
    curl -s http://$ingress/productpage                    # through the ingress gateway (samples/gateway.yaml)
    make pod-exec POD=default/productpage CMD='curl -s localhost:15000/stats | grep bound.*downstream_rq_total'
    export MESH_TOKEN=\$(kubectl -n mesh-system create token debug-viewer)   # may read /debug/* (ClusterRole mesh-debug)
    curl -s -H "Authorization: Bearer \$MESH_TOKEN" http://$mesh:15014/debug/configz   # what the controller sees
    target/debug/mesh proxy-status --controller http://$mesh:15014                    # every Envoy, in sync or not
    kubectl apply -f samples/routing/destination-rules.yaml -f samples/routing/all-v1.yaml   # samples/README.md
  Ctrl-C here stops the cluster.

TXT
# The node serves no kubelet API (no `kubectl logs`): follow the
# controller's log file. Not exec: the EXIT trap must run after it stops.
state=$(dirname "$KUBECONFIG")
log=$(ls "$state"/node/pods/mesh-system_mesh-*/logs/controller/*.log | head -n1)
tail -n 20 -F "$log" || true
