# The mesh image: the controller, and `mesh iptables` for the injected init
# container (which needs the iptables programs, hence not distroless).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mesh

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/mesh /usr/local/bin/mesh
# The controller runs as 1337; the init container asks for root with only
# NET_ADMIN and NET_RAW in its securityContext.
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/mesh"]
