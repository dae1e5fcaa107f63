#!/usr/bin/env bash
# Builds the ipproxy image without pulling anything: the static binary is compiled on
# this host, staged in dist/ with the host's CA bundle, and the Dockerfile's final
# stage (FROM scratch) takes it with --build-arg IPPROXY_BINARY=prebuilt.
#
#   deploy/build-image.sh [TAG]          # default tag: localhost/ipproxy:dev
#
# Environment:
#   ENGINE=podman|docker   the image builder (default: podman if installed, else docker)
#   IPPROXY_BIN=PATH       take this static binary instead of building one
#
# The binary is glibc linked statically (crt-static), for the host's own target triple;
# this script refuses a binary that names any shared library.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "build-image: FAIL: $*" >&2; exit 1; }

tag="${1:-localhost/ipproxy:dev}"
engine="${ENGINE:-}"
if [ -z "$engine" ]; then
  if command -v podman >/dev/null 2>&1; then engine=podman
  elif command -v docker >/dev/null 2>&1; then engine=docker
  else die "neither podman nor docker is installed"; fi
fi

bin="${IPPROXY_BIN:-}"
if [ -z "$bin" ]; then
  triple="$(uname -m)-unknown-linux-gnu"
  echo "build-image: cargo build --release --target $triple (static glibc)"
  RUSTFLAGS="-C target-feature=+crt-static" nice cargo build --release --locked \
    --target "$triple" --bin ipproxy
  bin="target/$triple/release/ipproxy"
fi
[ -x "$bin" ] || die "$bin is not an executable"
command -v readelf >/dev/null 2>&1 || die "readelf (binutils) is needed to check that $bin is static"
if readelf -d "$bin" | grep -q NEEDED; then
  die "$bin links shared libraries ($(readelf -d "$bin" | grep NEEDED | tr -s ' ' | cut -d' ' -f6 | tr '\n' ' ')): the image has none; build it with RUSTFLAGS='-C target-feature=+crt-static' and --target"
fi
"$bin" --version >/dev/null || die "$bin does not run"

ca=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca" ] || die "no CA bundle at $ca (install Debian's ca-certificates)"

mkdir -p dist
install -m 0755 "$bin" dist/ipproxy
install -m 0644 "$ca" dist/ca-certificates.crt

format=()
# Podman's default OCI format has no HEALTHCHECK; the Docker format keeps it.
[ "$engine" = podman ] && format=(--format docker)
echo "build-image: $engine build ${format[*]} --build-arg IPPROXY_BINARY=prebuilt -t $tag ."
"$engine" build "${format[@]}" \
  --build-arg IPPROXY_BINARY=prebuilt \
  --build-arg VERSION="$("$bin" --version | awk '{print $2}')" \
  --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  -t "$tag" .
