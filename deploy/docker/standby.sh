#!/bin/bash
# A standby's entrypoint: the first time, clone the primary with
# pg_basebackup (-R writes the settings that make it stream); then run
# PostgreSQL as the image does.
set -euo pipefail
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    until gosu postgres env PGPASSWORD="$REPLICATION_PASSWORD" \
        pg_basebackup -h primary -U replicator -D "$PGDATA" -R -X stream; do
        echo "waiting for the primary..."
        sleep 1
    done
fi
exec gosu postgres postgres
