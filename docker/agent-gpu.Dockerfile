# secagent, the edge agent, on NVIDIA GPUs: onnxruntime-gpu with CUDA 13 and cuDNN as wheels (no
# CUDA base image needed; the host needs the NVIDIA driver and the container toolkit:
#   docker run --gpus all ...). Built from the base docker/base.sh makes and this checkout's wheel:
#   docker/build.sh agent-gpu
# Python packages: exactly the pins of constraints.txt. Runs as user secagent (10001).
ARG BASE=secagent/debian:bookworm
FROM ${BASE} AS build
# EXTRAS: agent,gpu; onnxruntime-gpu[cuda,cudnn] adds the CUDA libraries (pinned too)
ARG EXTRAS=agent,gpu
COPY constraints.txt requirements-model.txt /src/
COPY docker/dist/ /src/dist/
# the CA bundle of the build host, for a proxy that re-signs TLS (docker/build.sh passes it)
RUN --mount=type=secret,id=ca,required=false \
    set -eu; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -m venv /opt/secagent; \
    /opt/secagent/bin/pip install --no-cache-dir -q --disable-pip-version-check \
        -c /src/constraints.txt "$(ls /src/dist/secagent-*.whl)[${EXTRAS}]" \
        "onnxruntime-gpu[cuda,cudnn]"; \
    /opt/secagent/bin/pip install --no-cache-dir -q --disable-pip-version-check --no-deps \
        -r /src/requirements-model.txt; \
    /opt/secagent/bin/pip uninstall -q -y setuptools

FROM ${BASE}
COPY --from=build /opt/secagent /opt/secagent
COPY models /opt/secagent/models
COPY rules /opt/secagent/rules
# /opt/secagent/current is the data folder the configs name, as in a host install
# the CUDA and cuDNN wheels' libraries, found by the loader as if CUDA were installed
RUN find /opt/secagent/lib/python3.11/site-packages/nvidia -name 'lib*.so*' -printf '%h\n' \
        | sort -u > /etc/ld.so.conf.d/secagent-cuda.conf \
 && ldconfig \
 && ln -s . /opt/secagent/current \
 && groupadd --system --gid 10001 secagent \
 && useradd --system --uid 10001 --gid secagent --groups video --no-create-home \
        --home-dir /var/lib/secagent --shell /usr/sbin/nologin secagent \
 && install -d -o secagent -g secagent -m 0750 /var/lib/secagent /run/secagent \
 && install -d /etc/secagent
ENV PATH=/opt/secagent/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
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
