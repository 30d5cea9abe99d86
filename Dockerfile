# syntax=docker/dockerfile:1
# The vakt image: the vakt binary alone on a distroless base, as a non-root user.
#   docker build -t ghcr.io/vakt-mesh/vakt:0.1.0 .
# The Helm chart (helm/vakt) runs it with a read-only root filesystem as UID/GID 65532, mounts
# the config at /etc/vakt/vakt.yaml and uses ports 15443 (mTLS in), 15001 (outbound, loopback),
# 15021 (admin: /live, /ready, /metrics).

# ---- build -------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
# The commit `vakt --version` names (.git is not in the build context):
#   docker build --build-arg VAKT_COMMIT=$(git rev-parse --short=12 HEAD) ...
ARG VAKT_COMMIT=unknown
ENV VAKT_COMMIT=${VAKT_COMMIT}
# Only what the release build reads: the manifest, the lock file, the build script, the sources
# (benches/ because Cargo.toml declares bench targets by path, benches/mesh is a workspace member
# and holds the code layout, vendor/ for the patched h2) and the build step itself.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
COPY vendor ./vendor
COPY scripts/build-release ./scripts/build-release
# scripts/build-release: `cargo build --release --locked --no-default-features --bin vakt` with
# the code layout. aws-lc-rs builds its C code with the image's gcc; no OpenSSL. The registry and
# target caches make rebuilds fast; the binary is copied out of the cached target dir in the
# same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    scripts/build-release \
 && install -D -m 0755 target/release/vakt /out/vakt \
 && /out/vakt --version

# ---- init (transparent capture) ----------------------------------------------------------------
# The image of the init container of `capture.mode: transparent`: the same binary with Debian's
# nft, for `vakt net setup`. It runs once as root in the pod's network namespace with NET_ADMIN
# only (nftables is configured over netlink), then exits; the sidecar itself runs from the
# distroless image below.
#   docker build --target init -t ghcr.io/vakt-mesh/vakt-init:0.1.0 .
FROM debian:bookworm-slim AS init
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nftables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build --chown=0:0 --chmod=0555 /out/vakt /vakt
ENTRYPOINT ["/vakt", "net"]
CMD ["show"]

# ---- runtime -----------------------------------------------------------------------------------
# distroless/cc: glibc and libgcc only (what a Rust binary links against); no shell, no package
# manager. The :nonroot tag's default user is 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="vakt" \
      org.opencontainers.image.description="Zero-trust service-mesh sidecar: mTLS with SPIFFE identities, per-route policy" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build --chown=0:0 --chmod=0555 /out/vakt /vakt
USER 65532:65532
EXPOSE 15443 15001 15021
ENTRYPOINT ["/vakt", "run", "--config", "/etc/vakt/vakt.yaml"]
