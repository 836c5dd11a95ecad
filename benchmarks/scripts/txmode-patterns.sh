#!/usr/bin/env bash
# Transaction pooling and session state, on one throwaway cluster:
#  1. which application patterns written for a direct connection still work (benchmarks/patterns)
#     through PgBouncer, asyncgate (pinning on) and asyncgate --pin-on-session-state off, each in
#     transaction mode with a pool of 2;
#  2. what statement classification, the work behind pinning, costs asyncgate on the hot path:
#     pgbench through asyncgate in transaction mode (pool 20) with pinning on and off.
# Prints markdown on stdout; progress on stderr.
#   benchmarks/scripts/txmode-patterns.sh [-T seconds] [-c clients] [-r runs] [-s scale]
#       [-A "extra asyncgate flags"] [-B bindir]
# -T is each pgbench run's duration (8 runs; 0 skips part 2), -c its clients, -r the runs per
# pattern; -B is where the binaries are built (default bin).
set -euo pipefail
cd "$(dirname "$0")/../.."

duration=10 clients=20 runs=5 scale=10 agargs= bindir=bin
while getopts "T:c:r:s:A:B:" o; do
	case $o in
	T) duration=$OPTARG ;; c) clients=$OPTARG ;; r) runs=$OPTARG ;; s) scale=$OPTARG ;;
	A) agargs=$OPTARG ;; B) bindir=$OPTARG ;;
	*) exit 2 ;;
	esac
done

command -v pgbouncer >/dev/null || { apt-get update -qq && apt-get install -y -qq pgbouncer; }
command -v bc >/dev/null || { apt-get update -qq && apt-get install -y -qq bc; }
mkdir -p "$bindir"
go build -o "$bindir/asyncgate" ./cmd/asyncgate
go build -o "$bindir/pgcluster" ./internal/pgtest/cmd/pgcluster
go build -o "$bindir/patterns" ./benchmarks/patterns

work=$(mktemp -d /tmp/txmode-patterns.XXXXXX)
chmod 755 "$work"
pids=() runuserpid=
cleanup() {
	exec 9>&- 2>/dev/null || true
	# PgBouncer itself rather than runuser, which would complain about its killed session.
	if [ -s "$work/pgbouncer.pid" ]; then
		kill "$(cat "$work/pgbouncer.pid")" 2>/dev/null || true
	elif [ -n "$runuserpid" ]; then
		kill "$runuserpid" 2>/dev/null || true
	fi
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

# Ports picked at random among free ones: other gateways may be running on the usual ones.
taken=" "
freeport() { # VAR: sets VAR to a port that is free and not handed out before
	local p
	while :; do
		p=$((20000 + RANDOM % 20000))
		case $taken in *" $p "*) continue ;; esac
		ss -Hltn "sport = :$p" | grep -q . && continue
		taken="$taken$p "
		printf -v "$1" '%s' "$p"
		return
	done
}

# The cluster lives while its stdin (a FIFO we hold open) is open.
mkfifo "$work/cluster.in"
"$bindir/pgcluster" -max-connections 200 <"$work/cluster.in" >"$work/cluster.out" &
pids+=($!)
exec 9>"$work/cluster.in"
for _ in $(seq 1 120); do grep -q '^ready' "$work/cluster.out" 2>/dev/null && break; sleep 0.5; done
grep -q '^ready' "$work/cluster.out" || { echo "cluster did not start"; cat "$work/cluster.out"; exit 1; }
pgport=$(awk '/^primary/ {split($2, a, ":"); print a[2]}' "$work/cluster.out")
echo "txmode-patterns: pgbench -i -s $scale" >&2
pgbench -i -q -s "$scale" -h 127.0.0.1 -p "$pgport" -U postgres postgres >/dev/null 2>&1

# Every gateway: transaction mode, scram-sha-256 clients, user app. Pattern checks use the alias
# "patterns" on gateways with a pool of 2; pgbench uses "postgres" on asyncgates with a pool of 20.
printf '"app" "app"\n' >"$work/userlist.txt"
chmod 644 "$work/userlist.txt"
backend="postgres://postgres@127.0.0.1:$pgport/postgres?sslmode=disable"
for v in patonport patoffport bport onport offport; do freeport $v; done
start_asyncgate() { # NAME PORT flags... → pid in $agpid; -A's flags come last and so win
	local name=$1 port=$2
	shift 2
	"$bindir/asyncgate" --listen "127.0.0.1:$port" --auth-file "$work/userlist.txt" --pool-mode transaction \
		--max-client-conn 2000 --log-level warn "$@" $agargs >"$work/$name.log" 2>&1 &
	agpid=$!
	pids+=($agpid)
}
# The pattern checks' asyncgates run one event loop. With several, a released backend goes to a
# waiting client of its own loop first, so with 2 backends an unpinned client mostly keeps the
# same one, lost state goes unnoticed and the checks report "untested". Pinning does not depend
# on the loops; -A "--loops 0" restores the default (one per core).
start_asyncgate patterns-pin-on "$patonport" --database "patterns=$backend" --default-pool-size 2 --loops 1
start_asyncgate patterns-pin-off "$patoffport" --database "patterns=$backend" --default-pool-size 2 --loops 1 \
	--pin-on-session-state off
start_asyncgate bench-pin-on "$onport" --database "postgres=$backend" --default-pool-size 20
onpid=$agpid
start_asyncgate bench-pin-off "$offport" --database "postgres=$backend" --default-pool-size 20 --pin-on-session-state off
offpid=$agpid
cat >"$work/pgbouncer.ini" <<INI
[databases]
patterns = host=127.0.0.1 port=$pgport dbname=postgres user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = 2
max_client_conn = 2000
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
chown -R postgres "$work"
runuser -u postgres -- pgbouncer -q "$work/pgbouncer.ini" &
runuserpid=$!
for _ in $(seq 1 50); do [ -s "$work/pgbouncer.pid" ] && break; sleep 0.2; done
for gw in "$patonport patterns" "$patoffport patterns" "$bport patterns" "$onport postgres" "$offport postgres"; do
	read -r port db <<<"$gw"
	ok=
	for _ in $(seq 1 50); do
		PGPASSWORD=app psql -h 127.0.0.1 -p "$port" -U app -d "$db" -Atc 'select 1' >/dev/null 2>&1 && { ok=1; break; }
		sleep 0.2
	done
	[ -n "$ok" ] || { echo "gateway on port $port did not come up"; cat "$work"/*.log; exit 1; }
done

dsn() { echo "postgres://app:app@127.0.0.1:$1/patterns?sslmode=disable"; }
echo "txmode-patterns: patterns, $runs runs each" >&2
"$bindir/patterns" --runs "$runs" \
	--target "PgBouncer $(pgbouncer --version | awk 'NR==1 {print $2}')=$(dsn "$bport")" \
	--target "asyncgate=$(dsn "$patonport")" \
	--target "asyncgate pin off=$(dsn "$patoffport")" || echo "(patterns exited with status $?)"
echo
echo "Every gateway in transaction mode with a pool of 2, scram-sha-256 clients; asyncgate --loops 1${agargs:+ $agargs}."
echo "PostgreSQL $(psql -h 127.0.0.1 -p "$pgport" -U postgres -Atc 'show server_version' postgres)."
[ "$duration" = 0 ] && exit 0
echo

# Hot-path cost of classification. asyncgate gives the parser only texts containing a word a
# pinning statement must contain; a comment with "temp" makes every text qualify without changing
# what the server does. With pinning off there is no classifier at all.
cat >"$work/temp-comment.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid /* temp: makes the gateway parse this text */;
SQL

cputicks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run PORT PID pgbench-args... → "tps cpu_us_per_txn", or "fail -"
run() {
	local port=$1 pid=$2 before after out tps txns
	shift 2
	before=$(cputicks "$pid")
	out=$(PGPASSWORD=app pgbench -n "$@" -c "$clients" -j 2 -T "$duration" -h 127.0.0.1 -p "$port" -U app postgres 2>&1) || true
	after=$(cputicks "$pid")
	tps=$(echo "$out" | awk '/^tps = / {print $3; exit}')
	txns=$(echo "$out" | awk '/number of transactions actually processed/ {print $NF; exit}')
	if [ -z "$tps" ] || [ -z "$txns" ] || [ "$txns" = 0 ] || echo "$out" | grep -q 'number of failed transactions: [1-9]\|aborted'; then
		echo "fail -"
		{ echo "$out" | grep -m2 -i 'error\|fatal' || echo "$out" | tail -n 3; } | sed "s/^/pgbench $*: /" >&2
		return
	fi
	# Clock ticks are 10 ms.
	echo "$tps $(echo "($after - $before) * 10000 / $txns" | bc -l)"
}

fmt() { [ "$1" = fail ] || [ "$1" = - ] && echo "$1" || printf '%.1f' "$1"; }
ratio() { { [ "$1" = fail ] || [ "$2" = fail ]; } && echo "-" || printf '%.3f' "$(echo "$1 / $2" | bc -l)"; }

# Open both pools and log the clients in once before measuring, so that neither first run pays
# for 20 backend logins.
for port in $onport $offport; do
	PGPASSWORD=app pgbench -n -S -M simple -c "$clients" -j 2 -t 20 -h 127.0.0.1 -p "$port" -U app postgres >/dev/null 2>&1 || true
done

echo "## Statement classification on the hot path: pgbench through asyncgate, transaction mode, pool 20"
echo
echo "-c $clients -j 2 -T $duration, scale $scale, scram-sha-256 clients${agargs:+, asyncgate $agargs}. \"on\" is the default"
echo "\`--pin-on-session-state on\`; \"off\" has no classifier. CPU is asyncgate's, user + system."
echo
echo "| workload | protocol | what the classifier does | tps on | tps off | tps on/off | CPU µs/txn on | CPU µs/txn off |"
echo "|---|---|---|---|---|---|---|---|"
i=0
while IFS='|' read -r label proto what args; do
	# Alternate which gateway goes first, so that drift in the machine's load favours neither.
	if [ $((i % 2)) = 0 ]; then
		read -r ont oncpu < <(run "$onport" "$onpid" $args)
		read -r offt offcpu < <(run "$offport" "$offpid" $args)
	else
		read -r offt offcpu < <(run "$offport" "$offpid" $args)
		read -r ont oncpu < <(run "$onport" "$onpid" $args)
	fi
	i=$((i + 1))
	echo "| $label | $proto | $what | $(fmt "$ont") | $(fmt "$offt") | $(ratio "$ont" "$offt") | $(fmt "$oncpu") | $(fmt "$offcpu") |"
done <<ROWS
select-only (-S)|simple|skips the parser: no pin word in the text|-S -M simple
SELECT with /* temp */|simple|parses every text: literal differs, cache miss|-f $work/temp-comment.sql -M simple
SELECT with /* temp */|extended|unnamed Parse each time: cache hit|-f $work/temp-comment.sql -M extended
SELECT with /* temp */|prepared|named Parse once per client, then Bind only|-f $work/temp-comment.sql -M prepared
ROWS
