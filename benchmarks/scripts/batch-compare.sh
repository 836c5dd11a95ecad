#!/usr/bin/env bash
# Batching (--batch) against asyncgate without it, PgBouncer and direct PostgreSQL: pgbench -S
# (select-only), simple and prepared protocols, in transaction pool mode, on pools of 4 and 20,
# against one throwaway cluster, targets interleaved per cell and the whole matrix repeated.
# Prints markdown tables: tps, p99 latency, the gateways' CPU µs per transaction, their write
# syscalls per transaction (client and backend sockets together), and the pool's PostgreSQL
# backends' recv and send syscalls per transaction (perf tracepoints; a pipelined batch is read
# in one), and the CPU µs per transaction of those backends and of pgbench itself, which share
# the machine. Then the ceiling: pgbench in pipeline mode straight against PostgreSQL with as
# many connections as the pool.
#   benchmarks/scripts/batch-compare.sh [-T seconds] [-c clients] [-P "4 20"] [-M "simple prepared"]
#       [-R repeats] [-s scale] [-D depth] [-L max-delay] [-p baseport]
# -L sets the batching gateway's --batch-max-delay (default 0): run the script once with 0 and
# once with a small delay to see what waiting for company trades.
set -euo pipefail
cd "$(dirname "$0")/../.."

duration=15 clients=400 poollist="4 20" protolist="simple prepared" repeats=2 scale=10 depth=16 delay=0 base=16600
while getopts "T:c:P:M:R:s:D:L:p:" o; do
	case $o in
	T) duration=$OPTARG ;; c) clients=$OPTARG ;; P) poollist=$OPTARG ;; M) protolist=$OPTARG ;;
	R) repeats=$OPTARG ;; s) scale=$OPTARG ;; D) depth=$OPTARG ;; L) delay=$OPTARG ;; p) base=$OPTARG ;;
	*) exit 2 ;;
	esac
done

command -v pgbouncer >/dev/null || { apt-get update -qq && apt-get install -y -qq pgbouncer; }
command -v bc >/dev/null || { apt-get update -qq && apt-get install -y -qq bc; }
work=$(mktemp -d /tmp/batch-compare.XXXXXX)
chmod 755 "$work"
go build -o "$work/asyncgate" ./cmd/asyncgate
go build -o "$work/pgcluster" ./internal/pgtest/cmd/pgcluster

pids=()
stopall() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	pids=()
}
cleanup() {
	stopall
	exec 9>&- 2>/dev/null || true
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

# The cluster lives while its stdin (a FIFO we hold open) is open.
mkfifo "$work/cluster.in"
"$work/pgcluster" -max-connections 600 <"$work/cluster.in" >"$work/cluster.out" &
clusterpid=$!
exec 9>"$work/cluster.in"
for _ in $(seq 1 120); do grep -q '^ready' "$work/cluster.out" 2>/dev/null && break; sleep 0.5; done
grep -q '^ready' "$work/cluster.out" || { echo "cluster did not start"; cat "$work/cluster.out"; exit 1; }
pgport=$(awk '/^primary/ {split($2, a, ":"); print a[2]}' "$work/cluster.out")
pgbench -i -q -s "$scale" -h 127.0.0.1 -p "$pgport" -U postgres postgres >/dev/null 2>&1

printf '"app" "app"\n' >"$work/userlist.txt"
chmod 644 "$work/userlist.txt"
offport=$base onport=$((base + 1)) bport=$((base + 2))

# start POOL: asyncgate without and with batching, and PgBouncer, in transaction mode.
start() {
	local dsn="postgres=postgres://postgres@127.0.0.1:$pgport/postgres?sslmode=disable"
	local common=(--database "$dsn" --auth-file "$work/userlist.txt" --auth-type trust --pool-mode transaction
		--default-pool-size "$1" --max-client-conn 2000 --log-level warn)
	"$work/asyncgate" --listen 127.0.0.1:$offport "${common[@]}" &
	offpid=$!
	pids+=($offpid)
	"$work/asyncgate" --listen 127.0.0.1:$onport "${common[@]}" --batch on --batch-max-depth "$depth" --batch-max-delay "$delay" &
	onpid=$!
	pids+=($onpid)
	cat >"$work/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$pgport dbname=postgres user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = $1
max_client_conn = 2000
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
	rm -f "$work/pgbouncer.pid"
	chown -R postgres "$work"
	runuser -u postgres -- pgbouncer -q "$work/pgbouncer.ini" 2>/dev/null &
	pids+=($!)
	for _ in $(seq 1 50); do [ -s "$work/pgbouncer.pid" ] && break; sleep 0.2; done
	bpid=$(cat "$work/pgbouncer.pid")
	pids+=($bpid)
	for port in $offport $onport $bport; do
		for _ in $(seq 1 50); do psql -h 127.0.0.1 -p $port -U app -d postgres -Atc 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
	done
}

cputicks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Syscalls are counted with perf's tracepoints: the gateway's write, writev, sendto and sendmsg
# calls (to clients and backends together), and the pool's PostgreSQL backends' recvfrom (reads of requests) and
# sendto (writes of responses). A pipelined batch is written in one call and read in one.
postmaster=$(ss -Hltnp "sport = :$pgport" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
perfok=1
perf stat -e syscalls:sys_enter_write -- true >/dev/null 2>&1 || perfok=0
# perfstart OUT EVENTS PIDS → perf's pid (empty without perf or pids)
perfstart() {
	[ "$perfok" = 1 ] && [ -n "$3" ] || return 0
	perf stat -x, -e "$2" -p "$3" -o "$1" >/dev/null 2>&1 &
	echo $!
}
# perfcount OUT EVENT → the count
perfcount() { awk -F, -v e="$2" '$3 == e && $1 ~ /^[0-9]+$/ {n += $1} END {print n + 0}' "$1" 2>/dev/null; }
per() { { [ -z "$1" ] || [ -z "$2" ]; } && echo - || echo "$1 / $2" | bc -l; }

# pgcpu PIDS(comma-separated) → their CPU ticks
pgcpu() {
	local n=0 p t
	for p in ${1//,/ }; do
		t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) || t=0
		n=$((n + ${t:-0}))
	done
	echo $n
}

# run PORT USER PROTO PID → "tps p99_ms cpu_us_per_txn gateway_writes_per_txn pg_reads_per_txn
# pg_writes_per_txn pg_cpu_us_per_txn pgbench_cpu_us_per_txn"
run() {
	local out txns tps c0=0 c1=0 p99 logdir gperf= bperf= backends= gw= pr= pw= pc0=0 pc1=0 pgc=- bench=-
	logdir=$(mktemp -d "$work/log.XXXXXX")
	if [ -n "$4" ]; then
		# Open the pool's connections first, so their backends can be watched.
		PGPASSWORD=app pgbench -n -S -M "$3" -c 40 -j 2 -T 1 -h 127.0.0.1 -p "$1" -U "$2" postgres >/dev/null 2>&1 || true
		backends=$(pgrep -d, -P "$postmaster" -f 'postgres: postgres postgres' || true)
		gperf=$(perfstart "$logdir/gw.perf" syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg "$4")
		bperf=$(perfstart "$logdir/pg.perf" syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto "$backends")
		c0=$(cputicks "$4")
		pc0=$(pgcpu "$backends")
	fi
	out=$(cd "$logdir" && PGPASSWORD=app /usr/bin/time -f "%U %S" -o "$logdir/time" pgbench -n -S -M "$3" -c "$clients" -j 2 -T "$duration" -l -h 127.0.0.1 -p "$1" -U "$2" postgres 2>&1) || true
	if [ -n "$4" ]; then
		c1=$(cputicks "$4")
		pc1=$(pgcpu "$backends")
		for p in $gperf $bperf; do
			kill -INT "$p" 2>/dev/null || true
			for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		done
	fi
	tps=$(echo "$out" | awk '/^tps = / {print $3; exit}')
	txns=$(echo "$out" | awk '/number of transactions actually processed/ {print $NF; exit}')
	if [ -z "$tps" ] || [ -z "$txns" ] || [ "$txns" = 0 ] || echo "$out" | grep -q 'number of failed transactions: [1-9]\|aborted'; then
		echo "fail - - - - - - -"
		echo "$out" | grep -m2 -i 'error\|fatal' >&2 || true
		rm -rf "$logdir"
		return
	fi
	p99=$(cat "$logdir"/pgbench_log.* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.2f", a[i]/1000}')
	[ -s "$logdir/time" ] && bench=$(awk -v n="$txns" 'END {print ($1 + $2) * 1000000 / n}' "$logdir/time")
	if [ -n "$4" ]; then
		[ -n "$backends" ] && pgc=$(echo "($pc1 - $pc0) * 10000 / $txns" | bc -l)
		[ -n "$gperf" ] && gw=$(per "$(awk -F, '$3 ~ /^syscalls:/ && $1 ~ /^[0-9]+$/ {n += $1} END {print n + 0}' "$logdir/gw.perf")" "$txns")
		[ -n "$bperf" ] && pr=$(per "$(perfcount "$logdir/pg.perf" syscalls:sys_enter_recvfrom)" "$txns") &&
			pw=$(per "$(perfcount "$logdir/pg.perf" syscalls:sys_enter_sendto)" "$txns")
		echo "$tps $p99 $(echo "($c1 - $c0) * 10000 / $txns" | bc -l) ${gw:--} ${pr:--} ${pw:--} $pgc $bench"
	else
		echo "$tps $p99 - - - - - $bench"
	fi
	rm -rf "$logdir"
}

f1() { [ "$1" = fail ] || [ "$1" = - ] && echo "$1" || printf '%.1f' "$1"; }
f2() { [ "$1" = fail ] || [ "$1" = - ] && echo "$1" || printf '%.2f' "$1"; }
ratio() { { [ "$1" = fail ] || [ "$2" = fail ] || [ "$1" = - ] || [ "$2" = - ]; } && echo "-" || printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }

echo "## pgbench -S, $clients clients, transaction pool mode, -T $duration, -j 2, batch depth $depth, max delay $delay ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "| run | pool | protocol | target | tps | p99 ms | tps ÷ PgBouncer | p99 ÷ PgBouncer | tps ÷ batching off | gateway CPU µs/txn | gateway write syscalls/txn | backend recv syscalls/txn | backend send syscalls/txn | PostgreSQL CPU µs/txn | pgbench CPU µs/txn |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for rep in $(seq 1 "$repeats"); do
	for pool in $poollist; do
		start "$pool"
		for proto in $protolist; do
			read -r dt dp _ _ _ _ _ dx < <(run "$pgport" postgres "$proto" "")
			if [ "$proto" = prepared ] && ! pgbouncer --version | grep -Eq ' 1\.(2[1-9]|[3-9][0-9])'; then
				bt=- bp=- bc=- bw=- br=- bs=- bg=- bx=- # PgBouncer before 1.21 keeps no prepared statements in transaction mode
			else
				read -r bt bp bc bw br bs bg bx < <(run "$bport" app "$proto" "$bpid")
			fi
			read -r ot op oc ow or os og ox < <(run "$offport" app "$proto" "$offpid")
			read -r nt np nc nw nr ns ng nx < <(run "$onport" app "$proto" "$onpid")
			echo "| $rep | $pool | $proto | direct | $(f1 "$dt") | $(f2 "$dp") | $(ratio "$dt" "$bt") | $(ratio "$dp" "$bp") | - | - | - | - | - | - | $(f1 "$dx") |"
			echo "| $rep | $pool | $proto | PgBouncer | $(f1 "$bt") | $(f2 "$bp") | - | - | - | $(f1 "$bc") | $(f2 "$bw") | $(f2 "$br") | $(f2 "$bs") | $(f1 "$bg") | $(f1 "$bx") |"
			echo "| $rep | $pool | $proto | asyncgate | $(f1 "$ot") | $(f2 "$op") | $(ratio "$ot" "$bt") | $(ratio "$op" "$bp") | - | $(f1 "$oc") | $(f2 "$ow") | $(f2 "$or") | $(f2 "$os") | $(f1 "$og") | $(f1 "$ox") |"
			echo "| $rep | $pool | $proto | asyncgate --batch | $(f1 "$nt") | $(f2 "$np") | $(ratio "$nt" "$bt") | $(ratio "$np" "$bp") | $(ratio "$nt" "$ot") | $(f1 "$nc") | $(f2 "$nw") | $(f2 "$nr") | $(f2 "$ns") | $(f1 "$ng") | $(f1 "$nx") |"
		done
		stopall
	done
done

# The ceiling: as many connections as the pool, each pipelining `depth` queries per round trip.
{
	echo '\set aid random(1, 100000 * :scale)'
	echo '\startpipeline'
	for _ in $(seq 1 "$depth"); do echo 'SELECT abalance FROM pgbench_accounts WHERE aid = :aid;'; done
	echo '\endpipeline'
} >"$work/pipeline.sql"
echo
echo "## Ceiling: pgbench --pipeline ($depth queries per pipeline) straight to PostgreSQL, -M prepared, -T $duration"
echo
echo "| connections | queries/s |"
echo "|---|---|"
for pool in $poollist; do
	out=$(pgbench -n -M prepared -f "$work/pipeline.sql" -c "$pool" -j 2 -T "$duration" -h 127.0.0.1 -p "$pgport" -U postgres postgres 2>&1) || true
	tps=$(echo "$out" | awk '/^tps = / {print $3; exit}')
	echo "| $pool | $(f1 "$(echo "${tps:-0} * $depth" | bc -l)") |"
done
