#!/usr/bin/env bash
# pgbench -S through asyncgate, PgBouncer and directly, against one throwaway cluster, for a
# matrix of protocols and client counts, targets interleaved per cell. Prints a markdown table
# with tps, the ratios, and the CPU microseconds per transaction of the two gateway processes.
#   benchmarks/scripts/pgbench-compare.sh [-m session|transaction] [-P poolsize] [-T seconds]
#       [-c "10 100 400"] [-M "simple extended prepared"] [-s scale] [-A "extra asyncgate flags"]
set -euo pipefail
cd "$(dirname "$0")/../.."

poolmode=session poolsize=60 duration=20 clientlist=50 protolist=simple scale=10 agargs=
while getopts "m:P:T:c:M:s:A:" o; do
	case $o in
	m) poolmode=$OPTARG ;; P) poolsize=$OPTARG ;; T) duration=$OPTARG ;;
	c) clientlist=$OPTARG ;; M) protolist=$OPTARG ;; s) scale=$OPTARG ;; A) agargs=$OPTARG ;;
	*) exit 2 ;;
	esac
done

command -v pgbouncer >/dev/null || { apt-get update -qq && apt-get install -y -qq pgbouncer; }
command -v bc >/dev/null || { apt-get update -qq && apt-get install -y -qq bc; }
go build -o bin/asyncgate ./cmd/asyncgate
go build -o bin/pgcluster ./internal/pgtest/cmd/pgcluster

work=$(mktemp -d /tmp/pgbench-compare.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
	exec 9>&- 2>/dev/null || true
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

# The cluster lives while its stdin (a FIFO we hold open) is open.
mkfifo "$work/cluster.in"
bin/pgcluster -max-connections 600 <"$work/cluster.in" >"$work/cluster.out" &
pids+=($!)
exec 9>"$work/cluster.in"
for _ in $(seq 1 120); do grep -q '^ready' "$work/cluster.out" 2>/dev/null && break; sleep 0.5; done
grep -q '^ready' "$work/cluster.out" || { echo "cluster did not start"; cat "$work/cluster.out"; exit 1; }
pgport=$(awk '/^primary/ {split($2, a, ":"); print a[2]}' "$work/cluster.out")
pgbench -i -q -s "$scale" -h 127.0.0.1 -p "$pgport" -U postgres postgres >/dev/null 2>&1

# Both gateways: same pool mode and size, same scram-sha-256 client auth.
printf '"app" "app"\n' >"$work/userlist.txt"
chmod 644 "$work/userlist.txt"
agport=16500 bport=16501
bin/asyncgate --listen 127.0.0.1:$agport --database "postgres=postgres://postgres@127.0.0.1:$pgport/postgres?sslmode=disable" \
	--auth-file "$work/userlist.txt" --pool-mode "$poolmode" --default-pool-size "$poolsize" --max-client-conn 2000 \
	--log-level warn $agargs &
agpid=$!
pids+=($agpid)
cat >"$work/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$pgport dbname=postgres user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = $poolmode
default_pool_size = $poolsize
max_client_conn = 2000
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
chown -R postgres "$work"
runuser -u postgres -- pgbouncer -q "$work/pgbouncer.ini" &
pids+=($!)
for _ in $(seq 1 50); do [ -s "$work/pgbouncer.pid" ] && break; sleep 0.2; done
bpid=$(cat "$work/pgbouncer.pid")
for port in $agport $bport; do
	for _ in $(seq 1 50); do PGPASSWORD=app psql -h 127.0.0.1 -p $port -U app -d postgres -Atc 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
done

cputicks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run NAME PORT USER PROTO CLIENTS PID → "tps cpu_us_per_txn" (cpu "-" without a pid, tps "fail" on errors)
run() {
	local before=0 after out txns tps
	[ -n "$6" ] && before=$(cputicks "$6")
	out=$(PGPASSWORD=app pgbench -n -S -M "$4" -c "$5" -j 2 -T "$duration" -h 127.0.0.1 -p "$2" -U "$3" postgres 2>&1) || true
	tps=$(echo "$out" | awk '/^tps = / {print $3; exit}')
	txns=$(echo "$out" | awk '/number of transactions actually processed/ {print $NF; exit}')
	if [ -z "$tps" ] || [ -z "$txns" ] || [ "$txns" = 0 ] || echo "$out" | grep -q 'number of failed transactions: [1-9]\|aborted'; then
		echo "fail -"
		echo "$out" | grep -m2 -i 'error\|fatal' >&2 || true
		return
	fi
	if [ -n "$6" ]; then
		after=$(cputicks "$6")
		echo "$tps $(echo "($after - $before) * 10000 / $txns" | bc -l)"
	else
		echo "$tps -"
	fi
}

fmt() { [ "$1" = fail ] || [ "$1" = - ] && echo "$1" || printf '%.1f' "$1"; }
ratio() { { [ "$1" = fail ] || [ "$2" = fail ]; } && echo "-" || printf '%.3f' "$(echo "$1 / $2" | bc -l)"; }

echo "## pgbench -S, $poolmode pool mode, pool $poolsize, -T $duration, -j 2, scram-sha-256 clients${agargs:+, asyncgate $agargs}"
echo
echo "| protocol | clients | direct tps | PgBouncer tps | asyncgate tps | asyncgate/direct | asyncgate/PgBouncer | PgBouncer CPU µs/txn | asyncgate CPU µs/txn |"
echo "|---|---|---|---|---|---|---|---|---|"
for proto in $protolist; do
	for c in $clientlist; do
		read -r dt _ < <(run direct "$pgport" postgres "$proto" "$c" "")
		read -r bt bcpu < <(run pgbouncer "$bport" app "$proto" "$c" "$bpid")
		read -r at acpu < <(run asyncgate "$agport" app "$proto" "$c" "$agpid")
		echo "| $proto | $c | $(fmt "$dt") | $(fmt "$bt") | $(fmt "$at") | $(ratio "$at" "$dt") | $(ratio "$at" "$bt") | $(fmt "$bcpu") | $(fmt "$acpu") |"
	done
done
