#!/usr/bin/env bash
# `make run`: the local cluster, the CRDs and the controller in the
# foreground. Ctrl-C stops the controller and then the cluster.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cluster=$repo/e2e/scripts/cluster.sh
"$cluster" up
eval "$("$cluster" env)"
trap '"$cluster" down' EXIT

kubectl apply --server-side --force-conflicts -f "$repo/crds/" >/dev/null
kubectl wait --for condition=Established --timeout=60s -f "$repo/crds/" >/dev/null
cat <<TXT

  The local cluster is up. In another shell:
    cd $repo && eval "\$(make -s env)"
    kubectl apply -f ../shared/conformance/bookinfo/networking/destination-rule-all.yaml
    curl -s localhost:15014/debug/configz
  Ctrl-C here stops the controller and the cluster.

TXT
# Not exec: the EXIT trap must run after the controller stops.
"$repo/target/debug/mesh" controller --monitoring-addr 127.0.0.1:15014 || true
