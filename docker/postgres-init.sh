#!/usr/bin/env bash
# The PostgreSQL image's entrypoint (docker/postgres.Dockerfile): on the first start (no cluster
# in $PGDATA) make one, with a user $POSTGRES_USER whose password is $POSTGRES_PASSWORD (or the
# content of $POSTGRES_PASSWORD_FILE) and a database $POSTGRES_DB it owns; then run the command
# (postgres) in its place. The superuser postgres logs in only on the container's own socket.
# The cluster is made in $PGDATA.new and renamed to $PGDATA once complete: a first start that
# dies half-way leaves no half-made cluster that a later start would take for a whole one.
set -euo pipefail
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    NEW="$PGDATA.new"
    rm -rf "$NEW"
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
        POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
    fi
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "postgres-init: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (the first start)" >&2
        exit 1
    fi
    initdb --pgdata="$NEW" --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    {
        echo "listen_addresses = '*'"
        echo "unix_socket_directories = '/run/postgresql'"
    } >>"$NEW/postgresql.conf"
    # password logins from anywhere the container's networks reach (scram-sha-256)
    echo "host all all all scram-sha-256" >>"$NEW/pg_hba.conf"
    # the first start's server listens on the socket only: the health check (pg_isready on
    # 127.0.0.1) is not ready before the user and the database are
    pg_ctl --pgdata="$NEW" --silent --wait -o "-c listen_addresses=''" start
    psql --quiet --no-psqlrc --set ON_ERROR_STOP=1 --username=postgres --dbname=postgres \
        --set user="$POSTGRES_USER" --set password="$POSTGRES_PASSWORD" \
        --set db="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"user" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"user";
SQL
    pg_ctl --pgdata="$NEW" --silent --wait --mode=fast stop
    rm -rf "$PGDATA"
    mv "$NEW" "$PGDATA"
    echo "postgres-init: cluster made in $PGDATA, user $POSTGRES_USER, database $POSTGRES_DB"
fi
exec "$@"
