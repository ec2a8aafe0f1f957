#!/usr/bin/env bash
# Make sure the PostgreSQL server binaries (initdb, pg_ctl) are present, so
# that the tests start their throwaway server instead of skipping, and make
# a missing server fail the run.  Source it from .ci/run:
#     . .ci/postgres.sh
# The tests themselves start and stop the server (tests/pg.py).

have_postgres() {
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
    for bin in /usr/lib/postgresql/*/bin; do
        [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ] && return 0
    done
    return 1
}

if ! have_postgres; then
    echo "installing the PostgreSQL server (Debian package postgresql)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
if ! have_postgres; then
    echo "PostgreSQL server binaries still missing after apt-get install postgresql" >&2
    return 1 2>/dev/null || exit 1
fi

export ACCOUNT_MERGE_REQUIRE_POSTGRES=1
