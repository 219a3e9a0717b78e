#!/usr/bin/env bash
# The local Kubernetes control plane: etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler on loopback, with TLS, RBAC,
# ServiceAccount token issuing and the admission webhook plugins on, like a
# real cluster. State (certificates, etcd data, logs, pids) lives in one
# folder; `down` stops every process that names it and removes it.
#
#   cluster.sh up | down | status | env
#
#   MESH_CLUSTER_DIR   state folder (default <repo>/.cluster)
#   MESH_PORT_OFFSET   added to every port, so a test cluster can run beside
#                      the demo one (default 0: apiserver on 6443)
#   MESH_TOKEN_MAX_AGE the node replaces projected tokens older than this
#                      many seconds (tests use it to see refreshes)
#   MESH_NODE_MESH     the program the mesh image runs on the node (default
#                      the debug build; benchmarks give the release build)
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
source "$repo/e2e/scripts/versions.sh"

dir=${MESH_CLUSTER_DIR:-$repo/.cluster}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
off=${MESH_PORT_OFFSET:-0}
apiserver_port=$((6443 + off))
kubelet_port=$((10250 + off))
etcd_port=$((2379 + off))
etcd_peer_port=$((2380 + off))
kcm_port=$((10257 + off))
scheduler_port=$((10259 + off))
# Each cluster on the machine (demo, tests) gets its own address ranges and
# interface prefix, so two can run side by side. They exist only inside
# the node's network namespaces.
k=$((off / 10000))
prefix=mesh$k
service_cidr=10.$((96 + k)).0.0/16
kubernetes_ip=10.$((96 + k)).0.1
cluster_cidr=10.$((244 + k)).0.0/16
node_cidr=10.$((244 + k)).0.0/24
node_ip=10.$((244 + k)).0.1
link_ip=169.254.$((100 + k)).1
node_name=local-node
target=${CARGO_TARGET_DIR:-$repo/target}/debug

pki=$dir/pki
logs=$dir/logs
pids=$dir/pids
kubeconfig=$dir/kubeconfig

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- certificates ------------------------------------------------------------

# cert NAME CN [O] [SANS]: a client or serving certificate signed by the cluster CA.
cert() {
  local name=$1 cn=$2 org=${3:-} sans=${4:-}
  [ -f "$pki/$name.crt" ] && return
  local subj="/CN=$cn"
  [ -n "$org" ] && subj="/O=$org$subj"
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/$name.key" 2>/dev/null
  openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$sans" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$sans"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 365 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

make_pki() {
  mkdir -p "$pki"
  if [ ! -f "$pki/ca.crt" ]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "$pki/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=mesh-local-cluster-ca" -days 3650 \
      -sha256 -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out "$pki/ca.crt" 2>/dev/null
  fi
  cert apiserver kube-apiserver "" \
    "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$kubernetes_ip,IP:$node_ip"
  cert admin admin system:masters
  cert controller-manager system:kube-controller-manager
  cert scheduler system:kube-scheduler
  # The identity the API server uses when it proxies to aggregated APIs;
  # other components trust requests carrying it (request-header auth).
  cert front-proxy-client front-proxy-client
  cert node "system:node:$node_name" system:nodes
  # The node's kubelet port (container logs), and the API server's
  # identity there.
  cert kubelet "system:node:$node_name" system:nodes "DNS:$node_name,IP:$node_ip"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert kube-proxy system:kube-proxy
  # ServiceAccount tokens are signed with this key pair (RSA, as kube expects by default).
  if [ ! -f "$pki/sa.key" ]; then
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  fi
}

# kubeconfig FILE CERTNAME [SERVER]: a kubeconfig that authenticates with a client certificate.
write_kubeconfig() {
  local file=$1 who=$2 server=${3:-https://127.0.0.1:$apiserver_port}
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mesh-local
  cluster:
    server: $server
    certificate-authority: $pki/ca.crt
users:
- name: $who
  user:
    client-certificate: $pki/$who.crt
    client-key: $pki/$who.key
contexts:
- name: mesh-local
  context: {cluster: mesh-local, user: $who}
current-context: mesh-local
EOF
}

# --- processes ---------------------------------------------------------------

# A process that exited but was not reaped yet (a zombie) is not running.
running() {
  [ -f "$pids/$1" ] || return 1
  local pid; pid=$(cat "$pids/$1")
  kill -0 "$pid" 2>/dev/null && ! grep -qE '^[0-9]+ \(.*\) Z' "/proc/$pid/stat" 2>/dev/null
}

# start NAME BINARY ARGS...: runs one component in its own session, logging to a file.
start() {
  local name=$1; shift
  if running "$name"; then return; fi
  mkdir -p "$logs" "$pids"
  setsid "$@" >>"$logs/$name.log" 2>&1 </dev/null &
  echo $! >"$pids/$name"
}

# wait_for WHAT SECONDS COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what not ready after ${secs}s (logs: $logs)"
    sleep 0.2
  done
}

apiserver_ready() {
  curl -sf --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$apiserver_port/readyz" | grep -q '^ok$'
}

up() {
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler; do
    [ -x "$TOOLS_BIN/$b" ] || die "$TOOLS_BIN/$b is missing: run 'make tools' first"
  done
  make_pki
  write_kubeconfig "$kubeconfig" admin
  write_kubeconfig "$dir/controller-manager.kubeconfig" controller-manager
  write_kubeconfig "$dir/scheduler.kubeconfig" scheduler
  write_kubeconfig "$dir/node.kubeconfig" node
  # kube-proxy runs inside the node's namespace and reaches the API server
  # through the node's forwarder on the bridge address.
  write_kubeconfig "$dir/kube-proxy.kubeconfig" kube-proxy "https://$node_ip:$apiserver_port"

  start etcd "$TOOLS_BIN/etcd" --name local --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "local=http://127.0.0.1:$etcd_peer_port" \
    --listen-metrics-urls "" --log-level warn --unsafe-no-fsync
  wait_for etcd 30 curl -sf --max-time 1 "http://127.0.0.1:$etcd_port/health"

  # The admission plugins a real cluster runs, webhooks included.
  start kube-apiserver "$TOOLS_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --secure-port "$apiserver_port" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --requestheader-client-ca-file "$pki/ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,DefaultTolerationSeconds,NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota \
    --service-cluster-ip-range "$service_cidr" \
    --advertise-address "$node_ip" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$pki/ca.crt" --kubelet-preferred-address-types InternalIP \
    --allow-privileged=true --profiling=false \
    --cert-dir "$dir/apiserver-certs"
  wait_for kube-apiserver 90 apiserver_ready

  start kube-controller-manager "$TOOLS_BIN/kube-controller-manager" \
    --kubeconfig "$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --use-service-account-credentials=true --leader-elect=false \
    --service-cluster-ip-range "$service_cidr" --cluster-cidr "$cluster_cidr" \
    --profiling=false --cert-dir "$dir/controller-manager-certs"

  start kube-scheduler "$TOOLS_BIN/kube-scheduler" \
    --kubeconfig "$dir/scheduler.kubeconfig" \
    --authentication-kubeconfig "$dir/scheduler.kubeconfig" \
    --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$scheduler_port" --leader-elect=false \
    --profiling=false --cert-dir "$dir/scheduler-certs"

  # The controller manager's ServiceAccount controller makes `default` in
  # each namespace: a sign that it is up and talking to the API server.
  wait_for "kube-controller-manager" 60 "$TOOLS_BIN/kubectl" --kubeconfig "$kubeconfig" \
    get serviceaccount default -n default
  start_node
  log "ready: export KUBECONFIG=$kubeconfig"
}

# The node: runs the pods scheduled to it (e2e/node, `localnode run`).
start_node() {
  local mesh=${MESH_NODE_MESH:-$target/mesh}
  for b in localnode bookinfo mesh; do
    [ -x "$target/$b" ] || die "$target/$b is missing: run 'make build' first"
  done
  [ -x "$mesh" ] || die "$mesh is missing: build it first"
  start node "$target/localnode" run --name "$node_name" \
    --kubeconfig "$dir/node.kubeconfig" --state-dir "$dir/node" \
    --images "$repo/e2e/images.yaml" \
    --program "bookinfo=$target/bookinfo" --program "mesh=$mesh" --program "envoy=$TOOLS_BIN/envoy" \
    --program "httpbin=$TOOLS_BIN/go-httpbin" --program "fortio=$TOOLS_BIN/fortio" \
    --program "prometheus=$TOOLS_BIN/prometheus" --program "jaeger=$TOOLS_BIN/jaeger" \
    --apiserver "127.0.0.1:$apiserver_port" \
    --kube-proxy "$TOOLS_BIN/kube-proxy" --kube-proxy-kubeconfig "$dir/kube-proxy.kubeconfig" \
    --prefix "$prefix" --pod-cidr "$node_cidr" --cluster-cidr "$cluster_cidr" \
    --service-cidr "$service_cidr" --link-ip "$link_ip" \
    --kubelet-port "$kubelet_port" --kubelet-cert "$pki/kubelet.crt" --kubelet-key "$pki/kubelet.key" \
    --client-ca "$pki/ca.crt" \
    ${MESH_TOKEN_MAX_AGE:+--token-max-age "$MESH_TOKEN_MAX_AGE"}
  wait_for "node $node_name" 60 "$TOOLS_BIN/kubectl" --kubeconfig "$kubeconfig" \
    wait --for condition=Ready "node/$node_name" --timeout 1s
}

down() {
  local name pid
  if [ -d "$pids" ]; then
    # The node first: it stops its pods and removes its network itself.
    if [ -f "$pids/node" ]; then
      pid=$(cat "$pids/node")
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    for name in controller node kube-scheduler kube-controller-manager kube-apiserver etcd; do
      [ -f "$pids/$name" ] || continue
      pid=$(cat "$pids/$name")
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
  fi
  # Anything left that names this state folder on its command line is ours.
  local deadline=$((SECONDS + 15))
  while pgrep -f -- "$dir/" >/dev/null; do
    if [ $SECONDS -ge $deadline ]; then pkill -KILL -f -- "$dir/" || true; sleep 0.5; break; fi
    sleep 0.2
  done
  remove_network
  # Remove only what looks like our state folder, never an arbitrary path.
  if [ -d "$dir/pki" ] || [ -z "$(ls -A "$dir" 2>/dev/null)" ]; then rm -rf "$dir"; fi
  log "down"
}

# Whatever network the node left (it removes its own when it stops cleanly).
remove_network() {
  local ns pid
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$prefix-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$prefix-" | grep -v -- '-node$' || true); do
    ip netns del "$ns" 2>/dev/null || true
  done
  ip netns del "$prefix-node" 2>/dev/null || true
  ip link del "$prefix-host" 2>/dev/null || true
  # iproute2 bind-mounts /run/netns on itself on first use; once no
  # namespace is left, that mount goes too.
  if [ -d /run/netns ] && [ -z "$(ls -A /run/netns)" ] && mountpoint -q /run/netns; then
    umount /run/netns 2>/dev/null || true
  fi
}

# The mesh on a running cluster, installed as users install it: the Helm
# chart, its controller running as a pod on the node. MESH_HELM_SET, if
# set, is passed as `--set` (e.g. telemetry.metrics=false).
mesh_up() {
  apiserver_ready || die "the cluster is not up: run '$0 up' first"
  "$TOOLS_BIN/helm" --kubeconfig "$kubeconfig" upgrade --install mesh "$repo/charts/mesh" \
    -n mesh-system --create-namespace --wait --timeout 180s \
    ${MESH_HELM_SET:+--set "$MESH_HELM_SET"} >/dev/null
  local ip
  ip=$("$TOOLS_BIN/kubectl" --kubeconfig "$kubeconfig" -n mesh-system get service mesh -o jsonpath='{.spec.clusterIP}')
  log "mesh ready: http://$ip:15014/debug/configz, for users bound to ClusterRole mesh-debug (kubectl -n mesh-system get pods)"
}

status() {
  local name
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler node controller; do
    if running "$name"; then echo "$name: running (pid $(cat "$pids/$name"))"; else echo "$name: stopped"; fi
  done
  if apiserver_ready; then echo "apiserver: ready at https://127.0.0.1:$apiserver_port"; fi
}

env_lines() {
  echo "export KUBECONFIG=$kubeconfig"
  echo "export LOCALNODE_STATE_DIR=$dir/node"
  echo "export PATH=$TOOLS_BIN:\$PATH"
}

case "${1:-}" in
  up) up ;;
  mesh-up) mesh_up ;;
  down) down ;;
  status) status ;;
  env) env_lines ;;
  *) echo "usage: $0 up|mesh-up|down|status|env" >&2; exit 2 ;;
esac
