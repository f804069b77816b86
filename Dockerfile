# One image carrying every ccm binary; each Kubernetes Deployment (and each compose service)
# picks its command: ccm-ingest, ccm-dialer, ccm-retrier, ccm-projector, ccm-webhooks,
# ccm-carrier-sim.
#
# Build with `cargo xtask images` (tag ccm:<workspace version>, the Helm chart's appVersion).
# It compiles the release binaries on the host, where cargo's incremental builds and shared
# target directory make a rebuild take seconds, and stages this build context:
#
#   bin/ccm-*               the release binaries (built on Debian bookworm, as BASE is)
#   config/retry.yaml       the default retry policy
#
# Compiling inside the build instead would redo the whole workspace (about 15 minutes on
# 2 cores) on every source change: without BuildKit (not available here) there is no cache
# mount to keep cargo's target directory between builds.
ARG BASE=ccm-local/debian:bookworm
FROM ${BASE}
# A numeric user so Kubernetes can check `runAsNonRoot` without resolving names.
RUN groupadd --system --gid 10001 ccm \
    && useradd --system --uid 10001 --gid ccm --no-create-home --shell /usr/sbin/nologin ccm
COPY bin/ /usr/local/bin/
# The default retry policy, where the default `retrier.policy_file` (config/retry.yaml,
# relative to the working directory) finds it; the Helm chart mounts its own under /etc/ccm.
WORKDIR /opt/ccm
COPY config/retry.yaml /opt/ccm/config/retry.yaml
# The shipped calling rule packs, for `compliance.rule_files: [config/rules/us.yaml, …]`.
COPY config/rules/ /opt/ccm/config/rules/
USER 10001:10001
EXPOSE 8000
ENTRYPOINT []
CMD ["ccm-ingest", "--help"]
