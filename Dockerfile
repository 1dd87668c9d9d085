# fanout controller image.
#
# Build and push (see deploy/README.md):
#   docker build -t fanout:TAG .
# No Docker engine runs in this project's CI: the Dockerfile is linted with
# hadolint there, never built.
#
# Two stages: a pinned Rust toolchain builds the release binary; the runtime
# stage holds only that binary. Both are Debian 12 (bookworm): the binary
# links glibc dynamically, so the builder's glibc must not be newer than the
# runtime's. Change the two tags together (e.g. trixie with cc-debian13).
#
# The base images are build arguments so that a release pins them by digest
# without editing this file: the tags below float (Debian security updates),
# a digest does not. The release pipeline must pass both as
# name:tag@sha256:<digest> (the digest wins; the tag stays for readers):
#   docker build \
#     --build-arg RUST_IMAGE=rust:1.95.0-slim-bookworm@sha256:<digest> \
#     --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:<digest> .
# deploy/README.md, "Pin the base images", says how to read the digests.
# The defaults (tags only) serve local builds. No digest is committed here:
# each release reads the current ones and records them.
ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Only what the binary's build reads: the manifest and lock; the sources;
# the font and the built-in scenario embedded with include_bytes!/include_str!
# (assets/, config/); benches/ because Cargo.toml declares [[bench]]
# "controller" and cargo refuses a manifest whose declared target is missing.
# No system libraries are needed beyond the image's C toolchain (aws-lc-sys
# builds with cc; plotters uses the embedded font, so no fontconfig).
# Dependencies are rebuilt on every source change; keep it that way until the
# build time matters (then: BuildKit cache mounts).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY assets ./assets
COPY config ./config
COPY benches ./benches
RUN cargo build --release --locked --bin fanout

# distroless/cc rather than debian:bookworm-slim: it has exactly what the
# binary needs (glibc, libgcc_s, CA certificates for rustls-native-certs,
# tzdata) and no shell or package manager, so there is less to patch and
# nothing to exec into; its "nonroot" variant runs as uid 65532. The cost is
# no shell for debugging (ECS Exec is useless here): use the JSON logs,
# /metrics and `fanout status --controller` instead.
FROM ${RUNTIME_IMAGE}
COPY --from=build /src/target/release/fanout /usr/local/bin/fanout
USER 65532:65532
# [http] listen: GET /healthz and GET /metrics.
EXPOSE 8080
# Health check: exec form, no shell needed; `fanout healthcheck` GETs
# http://127.0.0.1:8080/healthz and exits 0 on 200, 1 otherwise. ECS ignores
# an image's HEALTHCHECK (the task definition in deploy/fanout.yaml runs the
# same command); this one serves plain `docker run`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 CMD ["/usr/local/bin/fanout", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/fanout"]
# Override the config path by argument: docker run IMAGE run --config /path.
CMD ["run", "--config", "/etc/fanout/fanout.toml"]
