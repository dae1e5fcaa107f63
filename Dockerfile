# syntax=docker/dockerfile:1
#
# ipproxy container image.
#
#   docker build -t ipproxy .                                   # builds ipproxy in a Rust image
#   podman build --format docker -t ipproxy .                   # the same with Podman
#
# Without registry access (no Rust image can be pulled), build the binary on the host
# and let the image take it: the final stage is the same either way.
#
#   deploy/build-image.sh                                       # = the three steps below
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
#     --target "$(uname -m)-unknown-linux-gnu" --bin ipproxy
#   mkdir -p dist && cp target/"$(uname -m)"-unknown-linux-gnu/release/ipproxy \
#     /etc/ssl/certs/ca-certificates.crt dist/
#   podman build --format docker --build-arg IPPROXY_BINARY=prebuilt -t ipproxy .
#
#   docker run --rm -p 127.0.0.1:8080:8080 -p 127.0.0.1:9901:9901 \
#     -e IPPROXY_AUTH__USERNAME=api-user \
#     -v "$PWD/secrets:/run/secrets/ipproxy:ro" \
#     --read-only ipproxy
#
# The final image is FROM scratch: one static binary (glibc linked statically, so no
# shared library, loader, shell, package manager or curl), CA certificates, the
# container config, passwd/group entries for UID/GID 65532 and the nsswitch.conf that
# name resolution reads. It runs as 65532:65532 and writes nothing to its filesystem,
# so it runs with a read-only root filesystem. Configuration is
# /etc/ipproxy/ipproxy.toml (config/container.toml) overlaid by IPPROXY_* variables;
# see deploy/README.md. Podman keeps HEALTHCHECK only in the Docker image format
# (`--format docker`); the OCI format drops it.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
# Where the binary and CA bundle come from: "builder" (compiled in RUST_IMAGE) or
# "prebuilt" (dist/ipproxy and dist/ca-certificates.crt from the build context).
ARG IPPROXY_BINARY=builder

FROM ${RUST_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /build

# Static glibc (crt-static) for the target triple named explicitly, so that build
# scripts and proc macros stay dynamic host programs. TLS is rustls on ring, so no
# OpenSSL is needed; the rust slim image has gcc, libc6-dev (libc.a) and ca-certificates.
ENV RUSTFLAGS="-C target-feature=+crt-static"

# Dependency layer: build every dependency against a dummy crate, so that a change to
# src/ alone reuses this layer. It is rebuilt only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --target "$(uname -m)-unknown-linux-gnu" \
 && rm -rf src

# The real build. COPY keeps the context's modification times, which can be older than
# the dummy build's artifacts, so touch the crate roots to make cargo rebuild ipproxy.
# The binary must be static: the final stage has no loader and no shared library.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --target "$(uname -m)-unknown-linux-gnu" --bin ipproxy \
 && mkdir /dist \
 && cp "target/$(uname -m)-unknown-linux-gnu/release/ipproxy" /dist/ipproxy \
 && cp /etc/ssl/certs/ca-certificates.crt /dist/ca-certificates.crt \
 && if readelf -d /dist/ipproxy | grep -q NEEDED; then echo "ipproxy is not static" >&2; exit 1; fi \
 && /dist/ipproxy --help > /dev/null

# A binary built on the host (deploy/build-image.sh checks that it is static).
FROM scratch AS prebuilt
COPY dist/ipproxy dist/ca-certificates.crt /dist/

# The chosen source of /dist; only that stage is built.
FROM ${IPPROXY_BINARY} AS dist

FROM scratch

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ipproxy" \
      org.opencontainers.image.description="Credential-injecting sidecar reverse proxy for IntelePeer's REST APIs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=dist /dist/ipproxy /usr/local/bin/ipproxy
COPY --from=dist /dist/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# passwd/group: names for 65532 (nonroot); nsswitch.conf: hosts from files, then DNS.
COPY deploy/image/etc/passwd deploy/image/etc/group deploy/image/etc/nsswitch.conf /etc/
COPY config/container.toml /etc/ipproxy/ipproxy.toml
ENV IPPROXY_CONFIG=/etc/ipproxy/ipproxy.toml \
    PATH=/usr/local/bin

# "nonroot" (65532:65532), numeric so that runAsNonRoot can verify it.
USER 65532:65532

# 8080: the proxy. 9901: admin (/healthz /readyz /metrics /refresh).
EXPOSE 8080 9901

# No curl in the image: the binary checks its own admin /healthz
# (default http://127.0.0.1:9901/healthz; pass --url if admin_listen moves).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["ipproxy", "healthcheck"]

# Exec form: ipproxy is PID 1 and receives SIGTERM itself (graceful shutdown).
ENTRYPOINT ["ipproxy"]
CMD ["run"]
