# PostgreSQL from Debian (bookworm's postgresql, 15), for the scale stack (docker/compose.scale.yaml):
# the store of the api process and of every ingest worker. Runs as user postgres; the cluster is
# a volume. On first start (an empty volume) docker/postgres-init.sh makes the cluster, a user and
# a database for secagg from POSTGRES_USER, POSTGRES_DB and POSTGRES_PASSWORD (or
# POSTGRES_PASSWORD_FILE); later starts use what is there.
ARG BASE=secagent/debian:bookworm
FROM ${BASE}
# no cluster from the package: the entrypoint makes one in the volume
RUN mkdir -p /etc/postgresql-common \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
 && install -d -o postgres -g postgres -m 2775 /run/postgresql
COPY docker/postgres-init.sh /usr/local/bin/postgres-init
ENV PATH=/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin PGDATA=/var/lib/postgresql/data \
    POSTGRES_USER=secagg POSTGRES_DB=secagg
USER postgres
WORKDIR /var/lib/postgresql
VOLUME ["/var/lib/postgresql"]
EXPOSE 5432
# ready: the server accepts connections on the network (not while the first start initialises)
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 \
    CMD ["pg_isready", "-q", "-h", "127.0.0.1", "-d", "postgres"]
# SIGINT is PostgreSQL's fast shutdown (SIGTERM's smart shutdown waits for every client to leave)
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/postgres-init"]
CMD ["postgres"]
