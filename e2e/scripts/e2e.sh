#!/usr/bin/env bash
# Runs the end-to-end tests on a cluster of their own (its own state folder
# and ports, so a `make run` cluster can stay up beside it), and removes that
# cluster afterwards whatever the outcome.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
export MESH_CLUSTER_DIR=${MESH_E2E_CLUSTER_DIR:-$repo/.cluster-e2e}
export MESH_PORT_OFFSET=${MESH_E2E_PORT_OFFSET:-10000}
# Short enough that a test sees the node replace a projected token.
export MESH_TOKEN_MAX_AGE=${MESH_TOKEN_MAX_AGE:-20}
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
status=0
cargo test --features e2e --test e2e -- --test-threads=1 "$@" || status=$?

# Every controller of the run wrote how many configurations Envoy refused
# (e2e/tests/support.rs); the run has none.
nacks=$MESH_CLUSTER_DIR/xds-nacks.txt
if [ -f "$nacks" ]; then
  total=$(awk -F'\t' '{ n += $2 } END { print n + 0 }' "$nacks")
  echo "[e2e] NACKs over the run: $total, from $(wc -l <"$nacks") controllers"
  [ "$total" = 0 ] || { awk -F'\t' '$2 != 0' "$nacks" >&2; status=1; }
fi

# Tear down here (not only in the trap) to check that nothing is left.
trap - EXIT
"$cluster" down
"$repo/e2e/scripts/check-clean.sh" "$MESH_CLUSTER_DIR" "mesh$((MESH_PORT_OFFSET / 10000))" || status=1
exit $status
