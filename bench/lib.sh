# bench/lib.sh: shell shared by the benchmark scripts in bench/. Source it
# from bash after scripts/lib.sh is not needed: this file sources it.
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   bench_init NAME [PG [KAFKA]]
#                            EP_PROG=bench/NAME, REPO, cd $REPO, then
#                            ep_prepare PG KAFKA (scripts/lib.sh): PG_CONFIG,
#                            BINDIR, dependencies, the extension installed into
#                            that PostgreSQL (skipped when EP_BENCH_PREPARED=1:
#                            bench/run did it), the versions logged
#   bench_workdir NAME       a fresh $REPO/.build/bench-NAME, printed
#   bench_kafka DIR          sets bootstrap and kafka_dir: the broker in
#                            EP_BENCH_KAFKA_DIR when set (bench/run shares one
#                            across scenarios), else a new one in DIR
#   bench_kafka_stop         stops the broker bench_kafka started (not a shared one)
#   bench_broker_pid         pid of the (first) broker
#   bench_create_topic TOPIC PARTITIONS LOG
#                            creates TOPIC with that many partitions (one
#                            replica) on the broker of bench_kafka, with
#                            t/java/KafkaAdmin.java (its stderr appended to
#                            LOG); dies unless the broker created it
#   bench_fetch_jars POM DIR
#                            the runtime jars POM names, from Maven Central
#                            into DIR (under .cache), fetched again when POM
#                            changes (as scripts/deps does for Kafka's)
#   bench_initdb PGDATA PORT SOCKDIR
#                            a new cluster with trust auth, listening on the
#                            socket (and on 127.0.0.1, for Java clients), its
#                            postgresql.conf ending with stdin's lines and then
#                            EP_BENCH_CONF (settings bench/run applies to
#                            every cluster, so both sides get the same tuning)
#   bench_result KEY VALUE   appends "KEY VALUE" to EP_BENCH_RESULTS, if set:
#                            the machine-readable side of a script's output
#   bench_check_topic TOPIC FIELD N
#                            reads TOPIC from its beginning and dies unless its
#                            JSON messages hold exactly N distinct values of
#                            FIELD (every event arrived; duplicates are counted
#                            and printed, not fatal: delivery is at least once)
#   now / calc EXPR / median N... / rss_mb PID / anon_mb PID /
#   cpu_ticks PID            (rss_mb: VmRSS, counting the shared buffers the
#                            process touched; anon_mb: RssAnon, its own memory)
#   BENCH_PAYLOAD_SQL        SQL expression of a ~200-byte JSON event; uses
#                            the integer g (e.g. from generate_series)
#   BENCH_LEDGER_MB_SQL / BENCH_LEDGER_IDS_SQL
#                            SQL expressions: the dedup ledger's size (every
#                            partition of its two tables, indexes and TOAST
#                            included) in MB, and the event ids it holds
# shellcheck shell=bash

. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

bench_init() {
	EP_PROG=bench/$1
	REPO=$(ep_root)
	cd "$REPO" || return
	local build=1
	[ "${EP_BENCH_PREPARED:-0}" != 1 ] || build=0
	ep_prepare "${2:-}" "${3:-}" "$build"
}

bench_workdir() {
	local dir
	dir="$(ep_workdir)/bench-$1"
	ep_as_test_user rm -rf "$dir"
	ep_as_test_user mkdir -p "$dir"
	printf '%s\n' "$dir"
}

bench_kafka() {
	if [ -n "${EP_BENCH_KAFKA_DIR:-}" ]; then
		kafka_dir=$EP_BENCH_KAFKA_DIR
		kafka_owned=0
		bootstrap=$(ep_as_test_user "$(ep_root)/scripts/kafka" bootstrap --dir "$kafka_dir")
	else
		kafka_dir=$1
		kafka_owned=1
		bootstrap=$(ep_as_test_user "$(ep_root)/scripts/kafka" start --dir "$kafka_dir" --port auto | tail -1)
	fi
}

bench_kafka_stop() {
	if [ "${kafka_owned:-0}" = 1 ]; then
		ep_as_test_user "$(ep_root)/scripts/kafka" stop --dir "$kafka_dir" >/dev/null 2>&1 || true
	fi
}

bench_broker_pid() { cat "$kafka_dir/node-1/pid"; }

# The broker auto-creates a topic with its num.partitions (3) only, and
# bench/run shares one broker between scenarios, so a topic of another size
# is made explicitly, by Kafka's own Admin client (kcat cannot create topics).
bench_create_topic() {
	local topic=$1 partitions=$2 log=$3 java_dir answer
	java_dir="$(ep_root)/t/java"
	answer=$(printf 'create %s %s 1\n' "$topic" "$partitions" |
		ep_as_test_user java -Xshare:auto -XX:TieredStopAtLevel=1 -Xmx128m \
			"-Dlog4j.configuration=file:$java_dir/log4j.properties" \
			"-Dlog4j2.configurationFile=$java_dir/log4j2.properties" \
			-cp "$(ep_kafka_libs "$EP_KAFKA_VERSION")/*" "$java_dir/KafkaAdmin.java" "$bootstrap" 2>>"$log") ||
		true
	[ "$answer" = $'ready\nok' ] ||
		ep_die "could not create topic $topic with $partitions partitions: ${answer:-no answer} (see $log)"
}

bench_fetch_jars() {
	local pom=$1 libs=$2 hash tmp
	hash=$(sha256sum "$pom" | cut -d' ' -f1)
	[ "$(cat "$libs/.stamp" 2>/dev/null)" = "$hash" ] && return 0
	ep_log "fetching the jars of $(basename "$pom") from Maven Central"
	mkdir -p "$(dirname "$libs")"
	tmp=$(mktemp -d "$libs.tmp.XXXXXX")
	if ! mvn -q -B -Dstyle.color=never -s "$(ep_root)/bench/maven-central.xml" -f "$pom" dependency:copy-dependencies \
		-DoutputDirectory="$tmp" -DincludeScope=runtime >"$tmp/.mvn.log" 2>&1; then
		tail -n 40 "$tmp/.mvn.log" >&2
		ep_die "maven could not fetch the jars of $pom"
	fi
	rm -f "$tmp/.mvn.log"
	echo "$hash" >"$tmp/.stamp"
	chmod -R a+rX "$tmp"
	rm -rf "$libs"
	mv "$tmp" "$libs"
}

bench_initdb() {
	local pgdata=$1 port=$2 sockdir=$3
	ep_as_test_user "$BINDIR/initdb" -D "$pgdata" -A trust -U postgres >/dev/null
	{
		echo "port = $port"
		echo "listen_addresses = '127.0.0.1'"
		echo "unix_socket_directories = '$sockdir'"
		cat
		printf '%s\n' "${EP_BENCH_CONF:-}"
	} | ep_as_test_user tee -a "$pgdata/postgresql.conf" >/dev/null
}

bench_result() {
	[ -z "${EP_BENCH_RESULTS:-}" ] || printf '%s %s\n' "$1" "$2" >>"$EP_BENCH_RESULTS"
}

now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rss_mb() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
anon_mb() { awk '/^RssAnon/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
# CPU time (user + system) of a process and its threads, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# About 200 bytes of JSON, like a PaymentCompleted event.
# shellcheck disable=SC2034 # used by the scripts that source this file
BENCH_PAYLOAD_SQL="jsonb_build_object('type', 'PaymentCompleted', 'order', 'order-' || g, 'payment', g,
    'amount', (g % 997) * 1.25, 'currency', 'EUR', 'customer', 'customer-' || (g % 5003),
    'at', '2026-11-27T08:00:00Z', 'method', 'card', 'note', repeat('x', 40))"

BENCH_LEDGER_MB_SQL="(SELECT round(coalesce(sum(pg_total_relation_size(t.relid)), 0) / 1048576.0, 1)
    FROM (SELECT relid FROM pg_partition_tree('eventpipe.event_handled')
          UNION ALL SELECT relid FROM pg_partition_tree('eventpipe.event_handled_runs')) AS t)"
BENCH_LEDGER_IDS_SQL="((SELECT count(*) FROM eventpipe.event_handled)
    + (SELECT coalesce(sum(length(ids) / 16), 0) FROM eventpipe.event_handled_runs))"

bench_check_topic() {
	local topic=$1 field=$2 want=$3 got
	got=$(kcat -C -b "$bootstrap" -t "$topic" -o beginning -e -q -f '%s\n' | python3 -c '
import json, sys
field = sys.argv[1]
seen = set()
total = 0
for line in sys.stdin:
    try:
        value = json.loads(line)
    except ValueError:
        continue
    if isinstance(value, dict) and field in value:
        seen.add(value[field])
        total += 1
print(len(seen), total - len(seen))' "$field")
	[ "${got% *}" = "$want" ] ||
		ep_die "topic $topic holds ${got% *} distinct events (by $field), not $want"
	[ "${got#* }" = 0 ] || ep_log "topic $topic: ${got#* } duplicates (at-least-once delivery)"
}
