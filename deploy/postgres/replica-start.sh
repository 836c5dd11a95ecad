#!/bin/bash
# A streaming replica: clone the primary into an empty data directory, then run as a standby.
set -euo pipefail
: "${PGDATA:=/var/lib/postgresql/data}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
	mkdir -p "$PGDATA"
	chown postgres:postgres "$PGDATA"
	chmod 700 "$PGDATA"
	until gosu postgres pg_basebackup -h "$PRIMARY_HOST" -U replicator -D "$PGDATA" -X stream -R -S "$SLOT"; do
		echo "waiting for the primary to accept the base backup"; sleep 2
	done
fi
exec gosu postgres postgres -c hot_standby=on
