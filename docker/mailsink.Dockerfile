# A mail server that keeps what it receives (aiosmtpd's Mailbox handler, a maildir on a
# volume): the compose stack's stand-in for the site's SMTP server, read by the stack test.
ARG BASE=secagent/debian:bookworm
FROM ${BASE} AS build
COPY constraints.txt /src/
RUN --mount=type=secret,id=ca,required=false \
    set -eu; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -m venv /opt/mailsink; \
    /opt/mailsink/bin/pip install --no-cache-dir -q --disable-pip-version-check \
        -c /src/constraints.txt aiosmtpd; \
    /opt/mailsink/bin/pip uninstall -q -y setuptools

FROM ${BASE}
COPY --from=build /opt/mailsink /opt/mailsink
RUN groupadd --system --gid 10003 mailsink \
 && useradd --system --uid 10003 --gid mailsink --no-create-home --home-dir /var/mail/sink \
        --shell /usr/sbin/nologin mailsink \
 && install -d -o mailsink -g mailsink -m 0755 /var/mail/sink /var/mail/sink/tmp \
        /var/mail/sink/new /var/mail/sink/cur
USER mailsink
VOLUME ["/var/mail/sink"]
EXPOSE 1025
HEALTHCHECK --interval=10s --timeout=5s --retries=3 \
    CMD ["/opt/mailsink/bin/python", "-c", "import smtplib; smtplib.SMTP('127.0.0.1', 1025, timeout=4).quit()"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["/opt/mailsink/bin/python", "-m", "aiosmtpd", "-n", "-l", "0.0.0.0:1025", "-c", "aiosmtpd.handlers.Mailbox", "/var/mail/sink"]
