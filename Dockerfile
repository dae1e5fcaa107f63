# syntax=docker/dockerfile:1
#
# ipproxy container image.
#
#   docker build -t ipproxy .
#   docker run --rm -p 127.0.0.1:8080:8080 -p 127.0.0.1:9901:9901 \
#     -e IPPROXY_AUTH__USERNAME=api-user \
#     -v "$PWD/password.txt:/run/secrets/ipproxy/password:ro" \
#     --read-only ipproxy
#
# The final image is distroless: no shell, no package manager, no curl. It holds the
# binary, CA certificates and glibc, runs as UID/GID 65532, and writes nothing to its
# filesystem, so it runs with a read-only root filesystem. Configuration is
# /etc/ipproxy/ipproxy.toml (config/container.toml) overlaid by IPPROXY_* variables;
# see deploy/README.md.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
WORKDIR /build

# Dependency layer: build every dependency against a dummy crate, so that a change to
# src/ alone reuses this layer. It is rebuilt only when Cargo.toml or Cargo.lock change.
# The rust slim image already has gcc and libc6-dev (for `ring`); TLS is rustls, so no
# OpenSSL is needed.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# The real build. COPY keeps the context's modification times, which can be older than
# the dummy build's artifacts, so touch the crate roots to make cargo rebuild ipproxy.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && cp target/release/ipproxy /build/ipproxy \
 && /build/ipproxy --help > /dev/null

FROM ${RUNTIME_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ipproxy" \
      org.opencontainers.image.description="Credential-injecting sidecar reverse proxy for IntelePeer's REST APIs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder /build/ipproxy /usr/local/bin/ipproxy
COPY config/container.toml /etc/ipproxy/ipproxy.toml
ENV IPPROXY_CONFIG=/etc/ipproxy/ipproxy.toml

# distroless "nonroot" (65532:65532), numeric so that runAsNonRoot can verify it.
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
