# Pinned versions and cache locations, sourced by every script under e2e/.
# Bump a pin here; tools.sh rebuilds what changed.
K8S_VERSION=v1.35.4
HELM_VERSION=v3.22.0
ENVOY_VERSION=1.40.0
# Newer fortio needs grol.io modules, which the Go module proxy refuses.
FORTIO_VERSION=v1.66.5
# Istio's httpbin sample runs this image (mccutchen/go-httpbin).
HTTPBIN_VERSION=v2.26.0
# istiod (pilot-discovery) for the side-by-side benchmark only (COMPARE=istiod
# make bench-xds); a pseudo-version of module istio.io/istio.
ISTIOD_VERSION=v0.0.0-20260827124520-eed52ebb66ad
# Prometheus (module version v0.3XX.Y is Prometheus v3.XX.Y) and the
# Jaeger all-in-one, for observing the mesh (docs/observe.md, issue 17).
PROMETHEUS_VERSION=v0.316.0
JAEGER_VERSION=v1.75.0
# The fuzz targets' driver (fuzz/, make fuzz).
CARGO_FUZZ_VERSION=0.13.2

MESH_CACHE=${MESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mesh}
TOOLS_BIN="$MESH_CACHE/bin"
