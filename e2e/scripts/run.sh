#!/usr/bin/env bash
# `make run`: the local cluster with its node, the mesh installed by its Helm
# chart (the controller as a pod), and the demo app (samples/bookinfo.yaml,
# shaped like Istio's Bookinfo) in the namespace `default` labelled for
# injection, so every pod of it runs stock Envoy beside the app, and its
# front door on the chart's ingress gateway (samples/gateway.yaml).
# The controller's log follows in the foreground; Ctrl-C stops everything.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cluster=$repo/e2e/scripts/cluster.sh
"$cluster" up
eval "$("$cluster" env)"
trap '"$cluster" down' EXIT

echo "[run] installing the mesh (helm), tracing to Jaeger (samples/addons/jaeger.yaml)..."
MESH_HELM_SET=meshConfig.defaultConfig.tracing.zipkin.address=zipkin.mesh-system:9411 "$cluster" mesh-up
kubectl label namespace default istio-injection=enabled --overwrite >/dev/null
kubectl apply -f "$repo/samples/bookinfo.yaml" -f "$repo/samples/gateway.yaml" >/dev/null
# Prometheus, scraping every proxy's Istio metrics and the controller, and
# Jaeger, receiving their spans (docs/observe.md).
kubectl apply -f "$repo/samples/addons/prometheus.yaml" -f "$repo/samples/addons/jaeger.yaml" >/dev/null
echo "[run] waiting for the demo app (samples/bookinfo.yaml), each pod with its Envoy..."
kubectl rollout status deployment --timeout=240s >/dev/null
kubectl -n mesh-system rollout status deployment mesh-ingressgateway --timeout=120s >/dev/null
ingress=$(kubectl -n mesh-system get service mesh-ingressgateway -o jsonpath='{.spec.clusterIP}')
# The page is served once the gateway has its routes: wait for the first 200.
for _ in $(seq 1 60); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -m 2 "http://$ingress/productpage")" = 200 ] && break
  sleep 1
done
productpage=$(kubectl get service productpage -o jsonpath='{.spec.clusterIP}')
mesh=$(kubectl -n mesh-system get service mesh -o jsonpath='{.spec.clusterIP}')
kubectl -n mesh-system rollout status deployment prometheus --timeout=120s >/dev/null
kubectl -n mesh-system rollout status deployment jaeger --timeout=120s >/dev/null
prometheus=$(kubectl -n mesh-system get pods -l app=prometheus -o jsonpath='{.items[0].status.podIP}')
jaeger=$(kubectl -n mesh-system get pods -l app=jaeger -o jsonpath='{.items[0].status.podIP}')
cat <<TXT

  The local cluster is up, with the mesh and the demo app (istio-proxy in every pod).

    Open http://$ingress/productpage     (the demo app, through the ingress gateway)
    Open http://$prometheus:9090          (Prometheus: Istio's metrics from every proxy)
    Open http://$jaeger:16686/api/traces?service=productpage.default   (Jaeger: 1% of requests traced)

  In another shell:
    cd $repo && eval "\$(make -s env)"
    kubectl get pods                                       # 2/2: the app and its Envoy
    curl -s http://$ingress/productpage                    # through the ingress gateway
    curl -s http://$productpage:9080/productpage           # straight to the Service, through its Envoy
    kubectl exec deploy/productpage-v1 -c istio-proxy -- curl -s localhost:15000/stats | grep bound.*downstream_rq_total
    kubectl port-forward svc/productpage 9080              # then http://127.0.0.1:9080/productpage
    target/debug/mesh proxy-status                         # every Envoy, in sync or not (the controller found through the kubeconfig)
    target/debug/mesh proxy-config route deploy/productpage-v1   # what its Envoy holds: cluster, listener, route, endpoint, all; -o json
    target/debug/mesh version                              # this binary's and each controller replica's
    export MESH_TOKEN=\$(kubectl -n mesh-system create token mesh-debug)   # may read /debug/* (ClusterRole mesh-debug)
    curl -s -H "Authorization: Bearer \$MESH_TOKEN" http://$mesh:15014/debug/configz   # what the controller sees
    kubectl apply -f samples/routing/destination-rules.yaml -f samples/routing/all-v1.yaml   # samples/README.md
    target/debug/mesh dashboard --prometheus http://$prometheus:9090 --jaeger http://$jaeger:16686
                                                           # the live service graph, on http://127.0.0.1:20001/
    target/debug/mesh analyze                              # Istio's analyzers on the cluster's configuration
    kubectl logs deploy/productpage-v1 -c istio-proxy      # Envoy's log (set meshConfig.accessLogFile=/dev/stdout for access lines)
    curl -s http://$prometheus:9090/api/v1/query --data-urlencode 'query=sum(rate(istio_requests_total{destination_service=~"reviews.*"}[1m])) by (destination_version, source_workload)'
  Ctrl-C here stops the cluster.

TXT
# Follow both controller replicas' log files (`kubectl logs -f` follows one
# pod). Not exec: the EXIT trap must run after it stops.
state=$(dirname "$KUBECONFIG")
tail -n 20 -F "$state"/node/pods/mesh-system_mesh-*/logs/controller/*.log || true
