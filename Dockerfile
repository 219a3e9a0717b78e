# The mesh image: one static-ish binary on a minimal base.
#   docker build -t ghcr.io/mesh-project/mesh:0.1.0 .
# (Not built on the local cluster: its node maps the image to target/debug/mesh.)

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mesh

# glibc and CA certificates, no shell, runs as non-root by default.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/mesh /usr/local/bin/mesh
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/mesh"]
