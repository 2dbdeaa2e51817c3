# Mosquitto from Debian, for the compose stack (docker/compose.yaml). Runs as user mosquitto;
# its persistence (retained status, the aggregator's persistent session) is a volume.
ARG BASE=secagent/debian:bookworm
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        mosquitto mosquitto-clients \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o mosquitto -g mosquitto -m 0750 /var/lib/mosquitto
COPY --chown=root:mosquitto docker/mosquitto.conf /etc/mosquitto/mosquitto.conf
USER mosquitto
VOLUME ["/var/lib/mosquitto"]
EXPOSE 1883
HEALTHCHECK --interval=10s --timeout=5s --retries=3 \
    CMD ["mosquitto_sub", "-h", "127.0.0.1", "-t", "$SYS/broker/uptime", "-C", "1", "-W", "4"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["mosquitto", "-c", "/etc/mosquitto/mosquitto.conf"]
