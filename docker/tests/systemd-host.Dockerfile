# A Debian host with systemd as PID 1 and Mosquitto, for docker/tests/test_systemd.py:
# deploy/install.sh installs secagent into it and systemd runs the units as on a real host.
ARG BASE=secagent/debian:bookworm
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        systemd systemd-sysv mosquitto \
 && rm -rf /var/lib/apt/lists/* \
 && systemctl mask getty.target console-getty.service systemd-logind.service \
 && systemctl enable mosquitto.service
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
