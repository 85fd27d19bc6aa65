# syntax=docker/dockerfile:1
#
# zt-janitor container image.
#
#   docker build -t zt-janitor:0.1.0 .
#   docker run -d --name zt-janitor --read-only --stop-timeout 90 \
#     -v zt-janitor-state:/var/lib/zt-janitor \
#     -v "$PWD/config.toml:/etc/zt-janitor/config.toml:ro" \
#     --env-file ./zt-janitor.env \
#     -p 127.0.0.1:9847:9847 zt-janitor:0.1.0
#
# Inside a container the config must say `[metrics] listen = "0.0.0.0:9847"`: the default
# 127.0.0.1:9847 is the container's own loopback, which neither `-p` nor Prometheus can reach.
# The API token never goes in the config: either CLOUDFLARE_API_TOKEN (here from zt-janitor.env,
# a 0600 file with `CLOUDFLARE_API_TOKEN=...`), or a secret file mounted readable by UID 65532
# and named by `[cloudflare] api_token_file`.

ARG RUST_VERSION=1.95
# Where the root file system comes from: `builder` compiles the binary here; CI, which cannot
# pull a base image, passes `--build-arg ROOTFS=prebuilt` with a build context holding
# `rootfs/` and `state/`, made by the same deploy/container/rootfs.sh from the binary CI built. Unused stages
# are skipped (BuildKit, buildah), so either way the final stage below is the one image.
ARG ROOTFS=builder

# ---- build ----------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /build
# sqlx macros must never try to reach a database at build time.
ENV SQLX_OFFLINE=true
# .git is not in the context: name the commit with --build-arg ZT_JANITOR_COMMIT=$(git rev-parse
# --short=12 HEAD), or the start-up line says commit="unknown".
ARG ZT_JANITOR_COMMIT=
# No system libraries are needed: TLS is rustls, SQLite is compiled in (the image's gcc builds it).
COPY . .
# The registry and target/ live in BuildKit cache mounts, so a rebuild after a source change
# recompiles only this crate. target/ is a cache mount, hence the image's contents are made here.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked --bin zt-janitor \
 && sh deploy/container/rootfs.sh target/release/zt-janitor /image

FROM scratch AS prebuilt
COPY . /image/

FROM ${ROOTFS} AS rootfs

# ---- runtime --------------------------------------------------------------------------------
# Nothing but deploy/container/rootfs.sh's files: the binary, the libraries it links (glibc,
# libgcc), a passwd with the runtime user, no shell, no package manager.
FROM scratch

LABEL org.opencontainers.image.title="zt-janitor" \
      org.opencontainers.image.description="Keeps a Cloudflare Zero Trust account free of stale device registrations" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=rootfs /image/rootfs/ /
# The state directory exists in the image owned by the runtime user, so a fresh named volume
# (which copies the image's directory ownership) is writable without any init step.
COPY --from=rootfs --chown=65532:65532 /image/state/ /var/lib/zt-janitor/

# The audit database goes to $STATE_DIRECTORY/audit.db unless [audit] path says otherwise.
# SQLite's occasional temporary files (large sorts) go there too: with a read-only root file
# system, the state volume is the only writable place, and nothing else is ever written.
ENV STATE_DIRECTORY=/var/lib/zt-janitor \
    SQLITE_TMPDIR=/var/lib/zt-janitor
WORKDIR /var/lib/zt-janitor
VOLUME ["/var/lib/zt-janitor"]

# The "nonroot" user of rootfs.sh's /etc/passwd, given numerically so that Kubernetes can enforce runAsNonRoot.
USER 65532:65532

# Prometheus metrics, /healthz and /readyz (needs `[metrics] listen = "0.0.0.0:9847"`).
EXPOSE 9847

# No HEALTHCHECK: the image has no shell or curl; use the orchestrator's HTTP probes on
# /healthz (liveness; and readiness in a sidecar, whose readiness is the application pod's) and
# /readyz (readiness of a janitor in a pod of its own).
# On SIGTERM an in-flight Cloudflare call may take up to 60 s: stop with a timeout above that
# (`docker run --stop-timeout 90`, Kubernetes terminationGracePeriodSeconds: 90).
STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/local/bin/zt-janitor"]
CMD ["run", "--config", "/etc/zt-janitor/config.toml"]
