#!/bin/bash
# Runs once, when the primary's data directory is created (the postgres
# image's /docker-entrypoint-initdb.d): a replication role for the
# standbys, the application's role and database, and a pg_hba line that
# lets the standbys stream.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username postgres <<SQL
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '${REPLICATION_PASSWORD}';
CREATE ROLE app LOGIN PASSWORD 'app';
CREATE DATABASE app OWNER app;
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
