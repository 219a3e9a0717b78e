#!/usr/bin/env bash
# `make bench-dataplane`: what the mesh's Envoy configuration costs in
# latency, against the same two Envoys with a hand-written minimal static
# configuration doing the same job, in one run. Brings up a cluster of its
# own, installs the mesh with its Helm chart, and runs two injected pods
# in namespace `bench`: fortio-server (fortio's echo server on :8080, the
# Service's port, and a twin process on :8090) and fortio-client (idle;
# the load runs inside its network namespace). Then, ROUNDS times, in a
# rotating order, fortio load (POST, 1 kB body, echoed back) at QPS for
# SECONDS_ (after a WARMUP at the same rate) over CONNECTIONS connections:
#
#   (a) no proxy: the client pod → the server pod's :8090 directly (the
#       pods' annotations exclude that port from capture on both sides);
#   (b) the mesh: the client pod → the Service fortio-server:8080,
#       captured by iptables to the client's sidecar, mutual TLS to the
#       server's sidecar (captured to :15006), then the app on :8080;
#   (c) hand-written: the client pod → 127.0.0.1:15101, a second Envoy in
#       the client pod (e2e/bench/dataplane-static-client.yaml, a container
#       of the pod as UID 1337, so its outbound connection is not
#       captured), mutual TLS to a second Envoy in the server pod on
#       :15201 (excluded from capture; e2e/bench/dataplane-static-server.yaml),
#       then the app on :8080. Same Envoy binary, same --concurrency as the
#       sidecars, same pods, started by the node as the sidecars are.
#
# It checks that each path went where it says: (b) counted at both
# sidecars with TLS handshakes on the server's :15006; (a) and (c) not
# seen by the sidecars at all; (c) with TLS handshakes on :15201. It
# prints p50/p90/p99 per path and round, the median over rounds, the
# latency each proxied path adds over (a), the ratio of the two, and the
# CPU (time on a core and time waiting for one, per request, from the
# threads' schedstat) and RSS of the two Envoys of each path. Everything is removed at the
# end, whatever the outcome, and checked.
#
#   QPS (1000)  SECONDS_ (30)  WARMUP (5 s)  CONNECTIONS (16)  ROUNDS (3)
#   UNIFORM (1: requests evenly spread; 0: fortio's default, every
#   connection sending at the same instants)
#   STATIC_CLIENT, STATIC_SERVER: other hand-written configurations, to
#   price one difference at a time (docs/perf.md)
#   MESH_HELM_SET: chart values for the mesh (`telemetry.metrics=false`
#   prices Istio's metrics: docs/observe.md)
#   MESH_CLUSTER_DIR (.cluster-bench-dataplane)  MESH_PORT_OFFSET (40000)
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
source "$repo/e2e/scripts/versions.sh"
export MESH_CLUSTER_DIR=${MESH_CLUSTER_DIR:-$repo/.cluster-bench-dataplane}
export MESH_PORT_OFFSET=${MESH_PORT_OFFSET:-40000}
cluster=$repo/e2e/scripts/cluster.sh
target=${CARGO_TARGET_DIR:-$repo/target}
dir=$MESH_CLUSTER_DIR
prefix=mesh$((MESH_PORT_OFFSET / 10000))
qps=${QPS:-1000} seconds=${SECONDS_:-30} warmup=${WARMUP:-5}
connections=${CONNECTIONS:-16} rounds=${ROUNDS:-3} uniform=${UNIFORM:-1}
ns=bench
out=$target/bench-dataplane
fortio=$TOOLS_BIN/fortio
envoy=$TOOLS_BIN/envoy

log() { printf '[bench-dataplane] %s\n' "$*" >&2; }

cleanup() {
  local rc=$?
  "$cluster" down >/dev/null 2>&1 || true
  "$repo/e2e/scripts/check-clean.sh" "$dir" "$prefix" >&2 || rc=1
  exit $rc
}

for bin in "$target/debug/localnode" "$target/debug/mesh" "$fortio" "$envoy"; do
  [ -x "$bin" ] || { log "$bin is missing: make tools build"; exit 1; }
done
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

in_pod() { # pod command: a shell command in the pod's namespaces, as root
  "$target/debug/localnode" enter --state-dir "$dir/node" "$ns/$1" -- sh -c "$2"
}
admin() { # pod port path [stats filter, a regular expression]
  in_pod "$1" "curl -sfG 'http://127.0.0.1:$2/$3' ${4:+--data-urlencode 'filter=$4'}"
}
# Host pid of an Envoy of the pod: the Envoy process in its network
# namespace whose command line names (or, with !, does not name) a word.
envoy_pid() { # pod [!]word
  local pid
  for pid in $(ip netns pids "$prefix-$ns.$1"); do
    [ "$(readlink "/proc/$pid/exe")" = "$(readlink -f "$envoy")" ] || continue
    if [[ $2 == !* ]]; then
      grep -qF -- "${2#!}" "/proc/$pid/cmdline" && continue
    else
      grep -qF -- "$2" "/proc/$pid/cmdline" || continue
    fi
    echo "$pid"
  done
}

# Certificates for the hand-written Envoys: an ECDSA P-256 root and
# workload certificates with SPIFFE IDs, as the mesh's CA issues them.
certs=$out/certs
mkdir -p "$certs"
(
  cd "$certs"
  openssl ecparam -name prime256v1 -genkey -noout -out root.key
  openssl req -x509 -new -key root.key -subj /O=bench-dataplane -days 1 -out root.pem \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
  for side in client server; do
    openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$side.key"
    openssl req -new -key "$side.key" -subj /O=bench -out "$side.csr"
    openssl x509 -req -in "$side.csr" -CA root.pem -CAkey root.key -days 1 -out "$side.pem" -extfile <(
      echo "subjectAltName=critical,URI:spiffe://cluster.local/ns/$ns/sa/default"
      echo "keyUsage=critical,digitalSignature,keyEncipherment"
      echo "extendedKeyUsage=serverAuth,clientAuth"
    )
  done
) >"$out/openssl.log" 2>&1
kubectl -n "$ns" create secret generic bench-static-certs --from-file="$certs/root.pem" \
  --from-file="$certs/client.pem" --from-file="$certs/client.key" \
  --from-file="$certs/server.pem" --from-file="$certs/server.key" >/dev/null

# Envoy runs as many workers as the machine has cores when not told (the
# sidecars are not told); checked against the sidecars below.
concurrency=$(nproc)
# fortio's echo server, one HTTP port and nothing else.
server_args() { echo "[server, -http-port, \"$1\", -grpc-port, disabled, -redirect-port, disabled, -tcp-port, disabled, -udp-port, disabled]"; }
# The hand-written Envoy as one more container of the pod: the node starts
# it as it starts the sidecar (the same binary, user 1337, the pod's
# network namespace, the node's session: the scheduler groups processes by
# session, so an Envoy started from this script would compete for the
# cores on other terms than the sidecars).
static_envoy() { # side
  cat <<EOF
  - name: envoy-static
    image: envoyproxy/envoy:v1.40.0
    args: [-c, /etc/bench-static/config/$1.yaml, --concurrency, "$concurrency", --disable-hot-restart,
           --log-level, warning, --local-address-ip-version, v4]
    securityContext: {runAsUser: 1337, runAsGroup: 1337}
    volumeMounts:
    - {name: static-config, mountPath: /etc/bench-static/config}
    - {name: static-certs, mountPath: /etc/bench-static/certs}
  volumes:
  - {name: static-config, configMap: {name: bench-static-$1}}
  - {name: static-certs, secret: {secretName: bench-static-certs}}
EOF
}
declare -A static_files=(
  [client]=${STATIC_CLIENT:-$repo/e2e/bench/dataplane-static-client.yaml}
  [server]=${STATIC_SERVER:-$repo/e2e/bench/dataplane-static-server.yaml}
)
static_config() { # side server-ip
  sed -e "s|@SERVER_IP@|$2|; s|@CERTS@|/etc/bench-static/certs|g" \
    "${static_files[$1]}" >"$out/static-$1.yaml"
  kubectl -n "$ns" create configmap "bench-static-$1" --from-file="$1.yaml=$out/static-$1.yaml" >/dev/null
}

static_config server ""
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: fortio-server, namespace: $ns}
spec:
  selector: {app: fortio-server}
  ports:
  - {name: http, port: 8080}
---
apiVersion: v1
kind: Pod
metadata:
  name: fortio-server
  namespace: $ns
  labels: {app: fortio-server}
  annotations:
    # (a) reaches the twin directly, (c) reaches the hand-written Envoy.
    traffic.sidecar.istio.io/excludeInboundPorts: "8090,15201"
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: fortio
    image: fortio/fortio:latest_release
    args: $(server_args 8080)
    ports: [{containerPort: 8080, name: http}]
  - name: fortio-direct
    image: fortio/fortio:latest_release
    args: $(server_args 8090)
$(static_envoy server)
EOF
kubectl -n "$ns" wait --for=condition=Ready pod/fortio-server --timeout=180s >/dev/null
server_ip=$(kubectl -n "$ns" get pod fortio-server -o jsonpath='{.status.podIP}')
# The client's hand-written Envoy dials the server pod's address, as the
# sidecar does its EDS endpoint.
static_config client "$server_ip"
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: fortio-client
  namespace: $ns
  labels: {app: fortio-client}
  annotations:
    traffic.sidecar.istio.io/excludeOutboundPorts: "8090"
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: fortio
    image: fortio/fortio:latest_release
    args: $(server_args 8080)
$(static_envoy client)
EOF
kubectl -n "$ns" wait --for=condition=Ready pod/fortio-client --timeout=180s >/dev/null
log "pods ready; server pod at $server_ip"

for port in 15100 15200; do
  pod=fortio-client && [ $port = 15200 ] && pod=fortio-server
  for _ in $(seq 1 100); do admin $pod $port ready >/dev/null 2>&1 && break; sleep 0.2; done
  admin $pod $port ready >/dev/null || { log "the hand-written Envoy on $pod :$port is not ready"; exit 1; }
done
sidecar_concurrency=$(admin fortio-client 15000 server_info \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["command_line_options"]["concurrency"])')
[ "$sidecar_concurrency" = "$concurrency" ] || {
  log "the sidecars run $sidecar_concurrency workers, the hand-written Envoys $concurrency"
  exit 1
}
client_sidecar=$(envoy_pid fortio-client '!bench-static') server_sidecar=$(envoy_pid fortio-server '!bench-static')
client_static=$(envoy_pid fortio-client bench-static) server_static=$(envoy_pid fortio-server bench-static)
for pid in "$client_sidecar" "$server_sidecar" "$client_static" "$server_static"; do
  [[ $pid =~ ^[0-9]+$ ]] || {
    log "not one Envoy of each kind per pod: sidecars '$client_sidecar' '$server_sidecar'," \
      "hand-written '$client_static' '$server_static'"
    exit 1
  }
  [ "$(ps -o sid= -p "$pid")" = "$(ps -o sid= -p "$client_sidecar")" ] || {
    log "Envoy $pid runs in another session than the sidecars"
    exit 1
  }
done
log "Envoys: sidecars $client_sidecar $server_sidecar, hand-written $client_static $server_static, --concurrency $concurrency"

declare -A url=(
  [none]="http://$server_ip:8090/"
  [mesh]="http://fortio-server:8080/"
  [static]="http://127.0.0.1:15101/"
)
declare -A pids=(
  [none]=""
  [mesh]="$client_sidecar $server_sidecar"
  [static]="$client_static $server_static"
)
# fortio starts its connections together, so without -uniform they send
# at the same instants: bursts of CONNECTIONS requests, CONNECTIONS/QPS
# apart. With it, requests come evenly spread at QPS.
arrival=""
if [ "$uniform" = 1 ]; then arrival=-uniform; fi
# fortio's histogram buckets are multiples of -r (default 1 ms, so every
# sub-millisecond percentile would be interpolated inside one bucket);
# with 50 us they are 50 us wide up to 0.6 ms, 100 us to 1 ms, 250 us to
# 2.5 ms, 0.5 ms to 5 ms.
load() { # path duration json-file
  in_pod fortio-client "$fortio load -quiet -qps $qps -c $connections -t $2 -payload-size 1024 $arrival -r 0.00005 \
    -p 50,90,99,99.9 -json - ${url[$1]}" >"$3" 2>>"$out/fortio.log"
}
# Per Envoy, "pid:cpu_ns:wait_ns:slices": the time its threads ran, the
# time they waited for a core while runnable, and how many times one was
# put on a core (/proc/PID/task/*/schedstat).
sched() {
  local pid
  for pid in "$@"; do
    echo "$pid:$(cat /proc/"$pid"/task/*/schedstat | awk '{run += $1; wait += $2; n += $3} END {printf "%.0f:%.0f:%.0f", run, wait, n}')"
  done
}
# Connections the sidecars accepted, on either pod: (a) and (c) must add none.
sidecar_connections() {
  local pod
  for pod in fortio-client fortio-server; do admin $pod 15000 stats '^listener\.0\.0\.0\.0_150(01|06)\.downstream_cx_total$'; done \
    | awk -F': ' '{n += $2} END {print n + 0}'
}
stat_of() { # pod port name
  admin "$1" "$2" stats "^$(sed 's/[.|]/\\&/g' <<<"$3")\$" | awk -F': ' '{print $2 + 0}'
}

order=(none mesh static)
for round in $(seq 1 "$rounds"); do
  for path in "${order[@]}"; do
    load "$path" "${warmup}s" /dev/null
    seen=$(sidecar_connections)
    inbound=$(stat_of fortio-server 15000 http.inbound_0.0.0.0_8080.downstream_rq_2xx)
    inbound_static=$(stat_of fortio-server 15200 http.server.downstream_rq_2xx)
    load_before=$(cut -d' ' -f1 /proc/loadavg)
    # shellcheck disable=SC2086
    before=$(sched ${pids[$path]})
    load "$path" "${seconds}s" "$out/$path-$round.json"
    # shellcheck disable=SC2086
    after=$(sched ${pids[$path]})
    rss=""
    for pid in ${pids[$path]}; do rss+="$(awk '/VmRSS/ {print $2}' "/proc/$pid/status") "; done
    requests=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["DurationHistogram"]["Count"])' "$out/$path-$round.json")
    # Each path went where it says: the server side of (b) and (c) answered
    # every request (fortio's histogram leaves out the one warm-up request
    # each connection makes first), the sidecars saw nothing of (a) and (c).
    case $path in
      mesh) counted=$(( $(stat_of fortio-server 15000 http.inbound_0.0.0.0_8080.downstream_rq_2xx) - inbound )) ;;
      static) counted=$(( $(stat_of fortio-server 15200 http.server.downstream_rq_2xx) - inbound_static )) ;;
      none) counted=$((requests + connections)) ;;
    esac
    [ "$counted" = $((requests + connections)) ] || {
      log "$path, round $round: fortio sent $requests (+$connections warm-up), the server side answered $counted"
      exit 1
    }
    if [ "$path" != mesh ] && [ "$(sidecar_connections)" != "$seen" ]; then
      log "$path, round $round: the sidecars accepted connections; the path is not what it says"
      exit 1
    fi
    # The path's two Envoys (client, server) over the measured run: CPU,
    # waiting for a core, RSS.
    echo "$before" >"$out/$path-$round.sched-before"
    echo "$after" >"$out/$path-$round.sched-after"
    echo "$rss" >"$out/$path-$round.rss"
    log "round $round, $path: $requests requests (load average $load_before -> $(cut -d' ' -f1 /proc/loadavg))"
  done
  order=("${order[@]:1}" "${order[0]}")
done

# Mutual TLS really happened on both proxied paths, with what parameters.
tls_stats() { admin "$1" "$2" stats "$3\.ssl\.(handshake|versions|ciphers|curves|sigalgs)"; }
{
  echo "mesh, client sidecar:"; tls_stats fortio-client 15000 'cluster\.outbound\|8080\|\|fortio-server\.bench\.svc\.cluster\.local'
  echo "mesh, server sidecar:"; tls_stats fortio-server 15000 'listener\.0\.0\.0\.0_15006'
  echo "hand-written, client:"; tls_stats fortio-client 15100 'cluster\.server'
  echo "hand-written, server:"; tls_stats fortio-server 15200 'listener\.0\.0\.0\.0_15201'
} >"$out/tls.txt"
# Whether this run priced Istio's metrics (MESH_HELM_SET=telemetry.metrics=false turns them off).
counted=$(admin fortio-server 15000 stats/prometheus | awk '/^envoy_istio_requests_total\{/ { n += $NF } END { print n + 0 }')
echo "Istio metrics: the server sidecar counted $counted requests in istio_requests_total" >"$out/metrics.txt"
for check in 'listener.0.0.0.0_15006.ssl.handshake' 'listener.0.0.0.0_15201.ssl.handshake'; do
  grep -qE "^$(sed 's/\./\\./g' <<<"$check"): [1-9]" "$out/tls.txt" || { log "no TLS handshake counted at $check"; cat "$out/tls.txt" >&2; exit 1; }
done
for pod in fortio-client fortio-server; do admin $pod 15000 config_dump >"$out/$pod-config_dump.json"; done

python3 - "$out" "$rounds" "$qps" "$seconds" "$connections" "$concurrency" "${arrival:-bursts}" <<'EOF'
import json, statistics, sys

out, rounds, qps, seconds, connections, concurrency, arrival = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
paths = {"none": "(a) no proxy", "mesh": "(b) mesh sidecars", "static": "(c) hand-written"}
quantiles = [50, 90, 99, 99.9]
runs = {p: [json.load(open(f"{out}/{p}-{r}.json")) for r in range(1, rounds + 1)] for p in paths}
def sched(p, r, when):
    return [[int(x) for x in line.split(":")[1:]] for line in open(f"{out}/{p}-{r}.sched-{when}").read().split()]

def proc(p, r):
    # Per Envoy (client, server): CPU seconds, seconds waiting for a
    # core, times put on a core.
    spent = [[(a - b) / 1e9 for a, b in zip(after[:2], before[:2])] + [after[2] - before[2]]
             for before, after in zip(sched(p, r, "before"), sched(p, r, "after"))]
    rss = [int(k) // 1024 for k in open(f"{out}/{p}-{r}.rss").read().split()]
    return {"cpu_s": sum(s[0] for s in spent), "spent": spent, "rss_mib": rss}
procs = {p: [proc(p, r) for r in range(1, rounds + 1)] for p in paths}

def ms(run, q):
    return next(x["Value"] for x in run["DurationHistogram"]["Percentiles"] if x["Percentile"] == q) * 1000

print()
print(f"== data plane: {qps} req/s ({arrival.lstrip('-')}), 1 kB POST echoed, {connections} connections, {seconds} s, "
      f"{rounds} rounds, Envoy --concurrency {concurrency} ==")
for p, label in paths.items():
    for r, run in enumerate(runs[p], 1):
        codes = run["RetCodes"]
        bad = sum(n for c, n in codes.items() if c != "200")
        if bad:
            sys.exit(f"{label}, round {r}: {bad} answers were not 200: {codes}")
        cpu = procs[p][r - 1]["cpu_s"] / float(seconds) * 100
        rss = procs[p][r - 1]["rss_mib"]
        extra = f", Envoys' CPU {cpu:.0f}% of one core, RSS {'/'.join(map(str, rss))} MiB" if rss else ""
        print(f"{label}, round {r}: {run['ActualQPS']:.0f} req/s, {run['DurationHistogram']['Count']} requests, "
              + ", ".join(f"p{q:g} {ms(run, q):.3f} ms" for q in quantiles) + extra)

median = {p: {q: statistics.median(ms(run, q) for run in runs[p]) for q in quantiles} for p in paths}
print()
print("median over rounds:")
for p, label in paths.items():
    print(f"  {label}: " + ", ".join(f"p{q:g} {median[p][q]:.3f} ms" for q in quantiles))
added = {p: {q: median[p][q] - median["none"][q] for q in quantiles} for p in ("mesh", "static")}
print("added over no proxy (two Envoys):")
for p in ("mesh", "static"):
    print(f"  {paths[p]}: " + ", ".join(f"p{q:g} {added[p][q]:+.3f} ms" for q in quantiles))
print(f"p90, mesh / hand-written: added {added['mesh'][90] / added['static'][90]:.2f}x "
      f"(goal <= 1.05x), end to end {median['mesh'][90] / median['static'][90]:.2f}x")
# Each round's own ratio: the machine's load moves between rounds, and
# the three paths of a round ran back to back.
per_round = [(ms(m, 90) - ms(n, 90)) / (ms(s, 90) - ms(n, 90))
             for m, s, n in zip(runs["mesh"], runs["static"], runs["none"])]
print("p90 added, mesh / hand-written, each round: " + ", ".join(f"{r:.2f}x" for r in per_round))
for p in ("mesh", "static"):
    requests = [run["DurationHistogram"]["Count"] for run in runs[p]]
    cpu = statistics.median(x["cpu_s"] for x in procs[p])
    line = f"{paths[p]}: both Envoys' CPU, median {cpu / float(seconds) * 100:.0f}% of one core; per request, median:"
    for i, side in enumerate(("client", "server")):
        run_us = statistics.median(x["spent"][i][0] / n * 1e6 for x, n in zip(procs[p], requests))
        wait_us = statistics.median(x["spent"][i][1] / n * 1e6 for x, n in zip(procs[p], requests))
        slices = statistics.median(x["spent"][i][2] / n for x, n in zip(procs[p], requests))
        line += f" {side} Envoy {run_us:.0f} us on a core, {wait_us:.0f} us waiting for one, {slices:.2f} times on a core;"
    print(line.rstrip(";"))
EOF
echo
echo "TLS on both proxied paths (from the Envoys' stats):"
cat "$out/tls.txt"
cat "$out/metrics.txt"
