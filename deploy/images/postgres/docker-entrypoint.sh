#!/bin/sh
# Initialises PGDATA on first start as the official postgres image does, as far as ccm's
# tests, compose file and chart use it: POSTGRES_USER (default postgres), POSTGRES_PASSWORD,
# POSTGRES_DB (default: the user's name), POSTGRES_HOST_AUTH_METHOD (default scram-sha-256
# when a password is set; `trust` must be asked for). Then runs the command (postgres).
set -eu

if [ "${1:-}" = postgres ] && [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    user="${POSTGRES_USER:-postgres}"
    db="${POSTGRES_DB:-$user}"
    method="${POSTGRES_HOST_AUTH_METHOD:-}"
    if [ -z "$method" ]; then
        if [ -z "${POSTGRES_PASSWORD:-}" ]; then
            echo "error: set POSTGRES_PASSWORD, or POSTGRES_HOST_AUTH_METHOD=trust to allow any connection" >&2
            exit 1
        fi
        method=scram-sha-256
    fi
    pwfile=""
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        pwfile="$(mktemp)"
        printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    fi
    initdb --username="$user" ${pwfile:+--pwfile="$pwfile"} --encoding=UTF8 --locale=C \
        --auth-local=trust --auth-host="$method" >/dev/null
    [ -n "$pwfile" ] && rm -f "$pwfile"
    # Clients come from the container network, not only loopback.
    echo "host all all all $method" >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    if [ "$db" != postgres ]; then
        echo "CREATE DATABASE \"$db\";" | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
    echo "entrypoint: initialised $PGDATA (user $user, database $db, host auth $method)" >&2
fi

exec "$@"
