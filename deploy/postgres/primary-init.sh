#!/bin/bash
# Runs once, when the primary's data directory is created: a replication user for the replicas,
# allowed from the compose network, and a slot per replica so the primary keeps their WAL.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD 'replicator-secret';
SELECT pg_create_physical_replication_slot('replica1');
SELECT pg_create_physical_replication_slot('replica2');
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
