#!/usr/bin/env bash
# The PostgreSQL image's entrypoint (docker/postgres.Dockerfile): on the first start (no cluster
# in $PGDATA) make one, with a user $POSTGRES_USER whose password is $POSTGRES_PASSWORD (or the
# content of $POSTGRES_PASSWORD_FILE) and a database $POSTGRES_DB it owns; then run the command
# (postgres) in its place. The superuser postgres logs in only on the container's own socket.
set -euo pipefail
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
        POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
    fi
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "postgres-init: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (the first start)" >&2
        exit 1
    fi
    initdb --pgdata="$PGDATA" --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    {
        echo "listen_addresses = '*'"
        echo "unix_socket_directories = '/run/postgresql'"
    } >>"$PGDATA/postgresql.conf"
    # password logins from anywhere the container's networks reach (scram-sha-256)
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    # the first start's server listens on the socket only: the health check (pg_isready on
    # 127.0.0.1) is not ready before the user and the database are
    pg_ctl --pgdata="$PGDATA" --silent --wait -o "-c listen_addresses=''" start
    psql --quiet --no-psqlrc --set ON_ERROR_STOP=1 --username=postgres --dbname=postgres \
        --set user="$POSTGRES_USER" --set password="$POSTGRES_PASSWORD" \
        --set db="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"user" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"user";
SQL
    pg_ctl --pgdata="$PGDATA" --silent --wait --mode=fast stop
    echo "postgres-init: cluster made in $PGDATA, user $POSTGRES_USER, database $POSTGRES_DB"
fi
exec "$@"
