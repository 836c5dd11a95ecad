#!/usr/bin/env bash
# Select-only throughput to MariaDB/MySQL: through asyncgate (a mysql:// --database, Postgres
# protocol from the load tool) against go-sql-driver/mysql connecting directly, interleaved in
# one run of the load tool. Point reads by primary key on a 100000-row table.
#   benchmarks/scripts/mysql-compare.sh [-c "1 16 64"] [-T seconds per target (20)] [-r rounds (4)] [-M "simple prepared"]
#     [-s MYSQL host:port (127.0.0.1:3306)] [-p asyncgate port (16750)] [-P pool size (16)]
# The server must let root in without a password and have a database test.
set -euo pipefail
cd "$(dirname "$0")/../.."

clientlist="1 16 64" duration=20 rounds=4 protocols="simple prepared" server=127.0.0.1:3306 port=16750 poolsize=16
while getopts "c:T:r:M:s:p:P:" o; do
	case $o in
	c) clientlist=$OPTARG ;; T) duration=$OPTARG ;; r) rounds=$OPTARG ;; M) protocols=$OPTARG ;; s) server=$OPTARG ;;
	p) port=$OPTARG ;; P) poolsize=$OPTARG ;;
	*) exit 2 ;;
	esac
done
bin=$(mktemp -d /tmp/mysql-compare.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$bin"
}
trap cleanup EXIT
for cmd in asyncgate asyncgate-bench; do go build -o "$bin/$cmd" ./cmd/$cmd; done

host=${server%:*} mport=${server##*:}
my() { mariadb --protocol=tcp -h "$host" -P "$mport" -uroot test "$@"; }
my -e "CREATE TABLE IF NOT EXISTS ag_bench_accounts (aid INT PRIMARY KEY, abalance INT NOT NULL, filler CHAR(84) NOT NULL)"
if [ "$(my -N -e 'SELECT COUNT(*) FROM ag_bench_accounts')" != 100000 ]; then
	my -e "TRUNCATE ag_bench_accounts; INSERT INTO ag_bench_accounts SELECT seq, 0, '' FROM seq_1_to_100000"
fi
cat >"$bin/select.sql" <<'SQL'
\set aid random(1, 100000)
SELECT abalance FROM ag_bench_accounts WHERE aid = :aid;
SQL
printf '"app" "app"\n' >"$bin/userlist.txt"

"$bin/asyncgate" --listen 127.0.0.1:"$port" --database "legacy=mysql://root@$server/test" \
	--auth-file "$bin/userlist.txt" --default-pool-size "$poolsize" --max-client-conn 10000 --log-level warn \
	>"$bin/asyncgate.log" 2>&1 &
agpid=$!
pids+=($agpid)
for _ in $(seq 1 50); do PGPASSWORD=app psql -h 127.0.0.1 -p "$port" -U app -d legacy -Atc 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done

echo "## select-only on MariaDB ($server): asyncgate (pool $poolsize) vs go-sql-driver/mysql direct"
echo
echo "| protocol | clients | direct tps | asyncgate tps | ratio | direct p99 ms | asyncgate p99 ms | asyncgate CPU µs/txn |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for proto in $protocols; do
	for c in $clientlist; do
		out="$bin/$proto-$c.json"
		"$bin/asyncgate-bench" --quiet -M "$proto" -c "$c" -T "$duration" --rounds "$rounds" --file "$bin/select.sql" \
			--target "direct=mysql://root@$server/test" \
			--target "asyncgate=postgres://app:app@127.0.0.1:$port/legacy?sslmode=disable" \
			--pid asyncgate=$agpid --json "$out" >/dev/null
		python3 - "$out" "$proto" "$c" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t = {x["name"]: x for x in r["targets"]}
d, a = t["direct"], t["asyncgate"]
for x in (d, a):
    if x["error_count"]:
        print(f"# {x['name']}: {x['error_count']} errors {x['errors']}", file=sys.stderr)
cpu = next((p.get("cpu_us_per_txn", 0) for p in a.get("processes", [])), 0)
print(f"| {sys.argv[2]} | {sys.argv[3]} | {d['tps']:.0f} | {a['tps']:.0f} | {a['tps']/d['tps']:.2f} | "
      f"{d['latency_ms']['p99']:.2f} | {a['latency_ms']['p99']:.2f} | {cpu:.0f} |")
PY
	done
done
