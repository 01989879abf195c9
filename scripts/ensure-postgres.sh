#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 with trust
# authentication for local TCP connections and a database `test`, as the
# registry tests expect (SPEC section 7). Starts the installed cluster, or
# installs Debian's postgresql when it is absent and we are root. Changes
# pg_hba.conf and creates the database only when they are missing. Exits
# non-zero with one clear line otherwise.
set -euo pipefail
# shellcheck source=scripts/debian-install.sh
. "$(dirname "$0")/debian-install.sh"

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

wait_ready() {
    for _ in $(seq 1 60); do
        if port_open && pg_isready -q -h 127.0.0.1 -p 5432; then
            return 0
        fi
        sleep 1
    done
    return 1
}

cluster_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

if ! port_open; then
    if [ -z "$(cluster_version)" ]; then
        debian_install ensure-postgres postgresql postgresql
    fi
    version="$(cluster_version)"
    echo "ensure-postgres: starting the PostgreSQL $version cluster" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    if ! wait_ready; then
        echo "ensure-postgres: PostgreSQL did not come up on 127.0.0.1:5432 within 60 s" >&2
        exit 1
    fi
fi

# Trust authentication for 127.0.0.1, only if a password is asked for today.
if ! psql -h 127.0.0.1 -U postgres -d postgres -w -Atqc 'SELECT 1' >/dev/null 2>&1; then
    version="$(cluster_version)"
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    if [ "$(id -u)" -ne 0 ] || [ ! -f "$hba" ]; then
        echo "ensure-postgres: 127.0.0.1:5432 refuses user postgres without a password; allow trust in pg_hba.conf" >&2
        exit 1
    fi
    echo "ensure-postgres: trusting local TCP connections in $hba" >&2
    sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    for _ in $(seq 1 30); do
        psql -h 127.0.0.1 -U postgres -d postgres -w -Atqc 'SELECT 1' >/dev/null 2>&1 && break
        sleep 1
    done
fi

if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -w -Atqc "SELECT 1 FROM pg_database WHERE datname = 'test'")" != "1" ]; then
    echo "ensure-postgres: creating database test" >&2
    psql -h 127.0.0.1 -U postgres -d postgres -w -qc 'CREATE DATABASE test'
fi

# tests/e2e/test_replica_failures.py runs a PostgreSQL of its own (initdb,
# pg_ctl on a free port): it needs the server binaries even when the server on
# 5432 is not a local Debian one. Installed only when we are root.
if ! compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null && [ "$(id -u)" -eq 0 ]; then
    debian_install ensure-postgres "PostgreSQL's server binaries" postgresql
fi
