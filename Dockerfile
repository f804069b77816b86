# One image carrying every ccm binary; each Kubernetes Deployment picks its command
# (ccm-ingest, ccm-dialer, ccm-retrier, ccm-projector, ccm-webhooks, ccm-carrier-sim).
#
# Build:  docker build -t ccm:0.1.0 .
#
# Stage 1 compiles in the full Rust image because `ring` (TLS) needs a C compiler.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# The whole workspace is needed: every member's manifest is read, the NATS topology under
# nats/ is embedded by ccm-core, and the projector embeds its SQL migrations.
COPY . .
RUN cargo build --release --locked \
        --bin ccm-ingest --bin ccm-dialer --bin ccm-retrier \
        --bin ccm-projector --bin ccm-webhooks --bin ccm-carrier-sim \
    && mkdir -p /out \
    && cp target/release/ccm-ingest target/release/ccm-dialer target/release/ccm-retrier \
          target/release/ccm-projector target/release/ccm-webhooks \
          target/release/ccm-carrier-sim /out/

# Stage 2: a slim runtime. ca-certificates is there because the carrier adapters (Twilio)
# and NATS/PostgreSQL over TLS verify servers against the system roots.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ccm \
    && useradd --system --uid 10001 --gid ccm --no-create-home --shell /usr/sbin/nologin ccm
COPY --from=builder /out/ /usr/local/bin/
# The default retry policy, where the default `retrier.policy_file` (config/retry.yaml,
# relative to the working directory) finds it; the Helm chart mounts its own under /etc/ccm.
WORKDIR /opt/ccm
COPY config/retry.yaml /opt/ccm/config/retry.yaml
# A numeric user so Kubernetes can check `runAsNonRoot` without resolving names.
USER 10001:10001
EXPOSE 8000
ENTRYPOINT []
CMD ["ccm-ingest", "--help"]
