#!/usr/bin/env bash
# pgbench through asyncgate, PgBouncer and directly, against one throwaway cluster, in
# interleaved rounds; prints tps per target and the ratios. Usage:
#   benchmarks/scripts/pgbench-compare.sh [-c clients] [-T seconds] [-r rounds] [-M simple|prepared] [-P poolsize] [-s scale]
set -euo pipefail
cd "$(dirname "$0")/../.."

clients=50 duration=20 rounds=1 mode=simple poolsize=60 scale=10
while getopts "c:T:r:M:P:s:" o; do
	case $o in
	c) clients=$OPTARG ;; T) duration=$OPTARG ;; r) rounds=$OPTARG ;;
	M) mode=$OPTARG ;; P) poolsize=$OPTARG ;; s) scale=$OPTARG ;;
	*) exit 2 ;;
	esac
done

command -v pgbouncer >/dev/null || { apt-get update -qq && apt-get install -y -qq pgbouncer; }
command -v pgbench >/dev/null || { apt-get update -qq && apt-get install -y -qq postgresql-contrib; }
go build -o bin/asyncgate ./cmd/asyncgate
go build -o bin/pgcluster ./internal/pgtest/cmd/pgcluster

work=$(mktemp -d /tmp/pgbench-compare.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# Cluster: kept alive by an open stdin.
mkfifo "$work/cluster.in"
bin/pgcluster -max-connections 300 <"$work/cluster.in" >"$work/cluster.out" &
pids+=($!)
exec 9>"$work/cluster.in"
for _ in $(seq 1 120); do grep -q '^ready' "$work/cluster.out" 2>/dev/null && break; sleep 0.5; done
grep -q '^ready' "$work/cluster.out" || { echo "cluster did not start"; cat "$work/cluster.out"; exit 1; }
pgport=$(awk '/^primary/ {split($2, a, ":"); print a[2]}' "$work/cluster.out")
echo "primary on port $pgport"

pgbench -i -q -s "$scale" -h 127.0.0.1 -p "$pgport" -U postgres postgres >/dev/null 2>&1

# Both gateways: session mode, same pool size, same scram-sha-256 client auth.
printf '"app" "app"\n' >"$work/userlist.txt"
chmod 644 "$work/userlist.txt"
agport=16500 bport=16501
bin/asyncgate --listen 127.0.0.1:$agport --database "postgres=postgres://postgres@127.0.0.1:$pgport/postgres?sslmode=disable" \
	--auth-file "$work/userlist.txt" --pool-mode session --default-pool-size "$poolsize" --max-client-conn 1000 \
	--log-level warn &
pids+=($!)
agpid=$!
cat >"$work/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$pgport dbname=postgres user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = session
default_pool_size = $poolsize
max_client_conn = 1000
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
chown -R postgres "$work"
runuser -u postgres -- pgbouncer "$work/pgbouncer.ini" &
pids+=($!)
bpid=$!
for port in $agport $bport; do
	for _ in $(seq 1 50); do PGPASSWORD=app psql -h 127.0.0.1 -p $port -U app -d postgres -Atc 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
done

declare -A tps
run() { # name port user
	local out
	out=$(PGPASSWORD=app pgbench -n -S -M "$mode" -c "$clients" -j 2 -T "$duration" -h 127.0.0.1 -p "$2" -U "$3" postgres 2>&1)
	local t
	t=$(echo "$out" | awk '/^tps = / {print $3; exit}')
	echo "$1 round: tps=$t"
	tps[$1]=$(echo "${tps[$1]:-0} + $t" | bc -l)
}
for r in $(seq 1 "$rounds"); do
	run direct "$pgport" postgres
	run pgbouncer "$bport" app
	run asyncgate "$agport" app
done
echo
echo "pgbench -S -M $mode -c $clients -j 2 -T $duration, $rounds round(s), pool $poolsize, session mode"
for n in direct pgbouncer asyncgate; do printf '%-10s tps %10.1f\n' "$n" "$(echo "${tps[$n]} / $rounds" | bc -l)"; done
printf 'asyncgate/direct    %.3f\n' "$(echo "${tps[asyncgate]} / ${tps[direct]}" | bc -l)"
printf 'asyncgate/pgbouncer %.3f\n' "$(echo "${tps[asyncgate]} / ${tps[pgbouncer]}" | bc -l)"
