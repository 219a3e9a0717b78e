#!/usr/bin/env bash
# Runs the end-to-end tests on a cluster of their own (its own state folder
# and ports, so a `make run` cluster can stay up beside it), and removes that
# cluster afterwards whatever the outcome.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
export MESH_CLUSTER_DIR=$repo/.cluster-e2e
export MESH_PORT_OFFSET=${MESH_E2E_PORT_OFFSET:-10000}
cluster=$repo/e2e/scripts/cluster.sh

# A run that was killed may have left its cluster behind.
"$cluster" down >/dev/null 2>&1 || true
trap '"$cluster" down' EXIT

start=$SECONDS
"$cluster" up
echo "[e2e] cluster up in $((SECONDS - start))s"

eval "$("$cluster" env)"
export MESH_E2E_KUBECONFIG=$KUBECONFIG
export MESH_BIN=$repo/target/debug/mesh
cd "$repo"
cargo test --features e2e --test e2e -- --test-threads=1 "$@"
