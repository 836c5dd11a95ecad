#!/usr/bin/env bash
# The event loop against the goroutine driver and PgBouncer, transaction mode, pool 20, one cluster:
# RSS per idle client (each gateway a fresh process), then select-only throughput, latency and CPU
# per transaction at a few client counts with the three targets interleaved.
#   benchmarks/scripts/loop-drivers.sh [-n idle clients (10000)] [-c "1 50 400"] [-T seconds per target (24)]
set -euo pipefail
cd "$(dirname "$0")/../.."

idle=10000 clientlist="1 50 400" duration=24
while getopts "n:c:T:" o; do
	case $o in
	n) idle=$OPTARG ;; c) clientlist=$OPTARG ;; T) duration=$OPTARG ;;
	*) exit 2 ;;
	esac
done
command -v pgbouncer >/dev/null || { apt-get update -qq && apt-get install -y -qq pgbouncer; }
for cmd in asyncgate asyncgate-bench; do go build -o bin/$cmd ./cmd/$cmd; done
go build -o bin/pgcluster ./internal/pgtest/cmd/pgcluster

work=$(mktemp -d /tmp/loop-drivers.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
	exec 9>&- 2>/dev/null || true
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
# Idle clients need a descriptor each, in the gateways and in the load tool; children inherit it.
ulimit -n "$(ulimit -Hn)"

mkfifo "$work/cluster.in"
bin/pgcluster -max-connections 300 <"$work/cluster.in" >"$work/cluster.out" &
pids+=($!)
exec 9>"$work/cluster.in"
for _ in $(seq 1 120); do grep -q '^ready' "$work/cluster.out" 2>/dev/null && break; sleep 0.5; done
pgport=$(awk '/^primary/ {split($2, a, ":"); print a[2]}' "$work/cluster.out")
pgbench -i -q -s 10 -h 127.0.0.1 -p "$pgport" -U postgres postgres >/dev/null 2>&1
printf '"app" "app"\n' >"$work/userlist.txt"
chmod 644 "$work/userlist.txt"

startag() { # port [flags…] → pid
	local port=$1
	shift
	bin/asyncgate --listen 127.0.0.1:"$port" --database "postgres=postgres://postgres@127.0.0.1:$pgport/postgres?sslmode=disable" \
		--auth-file "$work/userlist.txt" --pool-mode transaction --default-pool-size 20 --max-client-conn 20000 \
		--log-level warn "$@" >"$work/ag-$port.log" 2>&1 &
	echo $!
}
cat >"$work/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$pgport dbname=postgres user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 16902
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 20000
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
chown -R postgres "$work"
# setpriv, not runuser: runuser's PAM session would reset the open-files limit.
setpriv --reuid=postgres --regid=postgres --init-groups pgbouncer -q "$work/pgbouncer.ini" &
pids+=($!)
for _ in $(seq 1 50); do [ -s "$work/pgbouncer.pid" ] && break; sleep 0.2; done
bpid=$(cat "$work/pgbouncer.pid")
dsn() { echo "postgres://app:app@127.0.0.1:$1/postgres?sslmode=disable"; }
ready() { for _ in $(seq 1 50); do PGPASSWORD=app psql -h 127.0.0.1 -p "$1" -U app -d postgres -Atc 'select 1' >/dev/null 2>&1 && return; sleep 0.2; done; }

echo "## Idle clients ($idle), transaction mode"
echo
for t in epoll goroutine; do
	port=16900 flags=()
	[ $t = goroutine ] && port=16901 flags=(--loop-driver goroutine)
	pid=$(startag $port "${flags[@]}")
	ready $port
	bin/asyncgate-bench --target "$t=$(dsn $port)" --idle-clients "$idle" --pid "$t=$pid" 2>&1 | tail -2
	kill "$pid"
	wait "$pid" 2>/dev/null || true
done
bin/asyncgate-bench --target "pgbouncer=$(dsn 16902)" --idle-clients "$idle" --pid "pgbouncer=$bpid" 2>&1 | tail -1

e=$(startag 16900)
g=$(startag 16901 --loop-driver goroutine)
pids+=("$e" "$g")
ready 16900
ready 16901
for c in $clientlist; do
	echo
	echo "## select-only, simple protocol, $c clients, targets interleaved in 3 rounds"
	echo
	bin/asyncgate-bench --target "epoll=$(dsn 16900)" --target "goroutine=$(dsn 16901)" --target "pgbouncer=$(dsn 16902)" \
		--pid epoll="$e" --pid goroutine="$g" --pid pgbouncer="$bpid" -b select-only -c "$c" -T "$duration" --rounds 3 2>&1 |
		grep -v '^\[' | tail -5
done
