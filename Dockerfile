# syntax=docker/dockerfile:1
#
# ultra-boost and guard, built with BuildKit.
#
#   docker buildx build --target ultra-boost --build-arg BUILD_NUMBER=86 \
#     --build-arg GIT_COMMIT=$(git rev-parse HEAD) -t REGISTRY/ultra-boost:86 .
#
# Targets:
#   test         runs the workspace's test suite (the build fails when a test fails)
#   ultra-boost  the service: distroless, non-root, no shell, CA certificates
#   guard        the deployment guardian: same base
#   debug        both binaries with full debug symbols, started under gdbserver
#                (the seed's Delve target, for Rust): docker run -p 2345:2345 ...
#
# Caching: the cargo registry, git checkouts and the target directory are
# BuildKit cache mounts, so a source change recompiles only our crates, not the
# ~300 dependencies. Cache mounts live on the builder; CI keeps one builder per
# agent and additionally exports layer cache to the registry (see .drone.yml).

# checkov skips (justified):
#checkov:skip=CKV_DOCKER_2:Health is checked by the orchestrator (Kubernetes probes on /-/ready and /-/healthy); the images have no shell or HTTP client to run a Docker HEALTHCHECK with.

ARG RUST_VERSION=1.95
ARG DEBIAN_SUITE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_SUITE} AS toolchain
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    CARGO_NET_RETRY=5
# rustfmt/clippy are not part of the minimal toolchain profile; the test target
# runs the same lints as CI.
RUN rustup component add rustfmt clippy

FROM toolchain AS sources
COPY Cargo.toml Cargo.lock rustfmt.toml clippy.toml ./
COPY crates ./crates
# Downloads every dependency once per Cargo.lock; later RUNs reuse the cache mount.
RUN --mount=type=cache,id=cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=cargo-git,target=/usr/local/cargo/git,sharing=locked \
    cargo fetch --locked

# ---------------------------------------------------------------------------
# test: formatting, lints and the whole test suite. Integration tests start a
# real Prometheus and Alertmanager (Debian packages) and run kubectl (kustomize
# rendering, the controller's kubeconfig), so those are installed. kubectl is
# not in Debian's own archive: the Kubernetes project's apt repository, for the
# minor the cluster runs (as in .drone.yml).
FROM sources AS test
ARG KUBECTL_MINOR=v1.34
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Versions come from the pinned Debian suite and Kubernetes minor; those are the pins.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates curl gpg prometheus prometheus-alertmanager \
 && mkdir -p /etc/apt/keyrings \
 && curl -fsSL "https://pkgs.k8s.io/core:/stable:/${KUBECTL_MINOR}/deb/Release.key" \
      | gpg --dearmor -o /etc/apt/keyrings/kubernetes.gpg \
 && echo "deb [signed-by=/etc/apt/keyrings/kubernetes.gpg] https://pkgs.k8s.io/core:/stable:/${KUBECTL_MINOR}/deb/ /" \
      > /etc/apt/sources.list.d/kubernetes.list \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends kubectl \
 && rm -rf /var/lib/apt/lists/*
# Tests read the SLO specs, the deploy assets and the scripts: the whole context.
COPY . .
RUN --mount=type=cache,id=cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=target-test,target=/src/target,sharing=locked \
    cargo fmt --all -- --check \
 && cargo clippy --workspace --all-targets --locked -- -D warnings \
 && cargo build --workspace --locked --bins \
 && cargo test --workspace --locked --no-fail-fast

# ---------------------------------------------------------------------------
# build: release binaries. BUILD_NUMBER and GIT_COMMIT become build info
# (compile-time env for the crates, and runtime env in the final images).
FROM sources AS build
ARG BUILD_NUMBER=dev
ARG GIT_COMMIT=unknown
ENV BUILD_NUMBER=${BUILD_NUMBER} \
    GIT_COMMIT=${GIT_COMMIT}
# The target dir is a cache mount, so the binaries are copied out in the same step.
RUN --mount=type=cache,id=cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=target-release,target=/src/target,sharing=locked \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/ultra-boost target/release/guard /out/

# build-debug: same sources, full DWARF debug info, no stripping.
FROM sources AS build-debug
ARG BUILD_NUMBER=dev
ARG GIT_COMMIT=unknown
ENV BUILD_NUMBER=${BUILD_NUMBER} \
    GIT_COMMIT=${GIT_COMMIT} \
    CARGO_PROFILE_RELEASE_DEBUG=full \
    CARGO_PROFILE_RELEASE_STRIP=none
RUN --mount=type=cache,id=cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=target-debug,target=/src/target,sharing=locked \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/ultra-boost target/release/guard /out/

# ---------------------------------------------------------------------------
# debug: gdbserver plus symbols. Attach with `gdb -ex 'target remote HOST:2345'`.
FROM debian:${DEBIAN_SUITE}-slim AS debug
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gdbserver ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin nonroot
ARG BUILD_NUMBER=dev
ARG GIT_COMMIT=unknown
ENV BUILD_NUMBER=${BUILD_NUMBER} \
    GIT_COMMIT=${GIT_COMMIT}
COPY --from=build-debug /out/ultra-boost /out/guard /usr/local/bin/
USER 65532:65532
EXPOSE 8080 2345
ENTRYPOINT ["gdbserver", "0.0.0.0:2345"]
CMD ["/usr/local/bin/ultra-boost"]

# ---------------------------------------------------------------------------
# guard: the deployment guardian. distroless/cc = glibc, libgcc, CA certificates,
# tzdata, no shell, no package manager; user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot AS guard
ARG BUILD_NUMBER=dev
ARG GIT_COMMIT=unknown
ENV BUILD_NUMBER=${BUILD_NUMBER} \
    GIT_COMMIT=${GIT_COMMIT}
COPY --from=build /out/guard /usr/local/bin/guard
USER 65532:65532
# guard.yaml's api.listen in deploy/kustomize/guard (the image has no config of
# its own: mount one at /etc/guard/guard.yaml, as the Deployment does).
EXPOSE 8090
ENTRYPOINT ["/usr/local/bin/guard"]
CMD ["controller", "--config", "/etc/guard/guard.yaml"]

# ---------------------------------------------------------------------------
# ultra-boost: the service. Last, so a plain `docker build .` builds it.
FROM gcr.io/distroless/cc-debian12:nonroot AS ultra-boost
ARG BUILD_NUMBER=dev
ARG GIT_COMMIT=unknown
ENV BUILD_NUMBER=${BUILD_NUMBER} \
    GIT_COMMIT=${GIT_COMMIT}
COPY --from=build /out/ultra-boost /usr/local/bin/ultra-boost
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ultra-boost"]
