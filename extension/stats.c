/*
 * stats.c
 *		The SQL-facing statistics: eventpipe.relay_stats() (behind
 *		pg_stat_relay), consumer_stats() and consumer_partition_stats()
 *		(behind pg_stat_consumer), for the current database;
 *		relay_stats_all() and consumer_stats_all(), for every database;
 *		kafka_statistics() (the workers' librdkafka statistics files), and
 *		stat_reset().
 *
 * Locking: names, states, databases and errors are copied under
 * EventpipeShared->lock (shared); the counters are atomics read without it
 * (see shmem.h).
 */
#include "postgres.h"

#include <sys/stat.h>

#include "commands/dbcommands.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "eventpipe.h"
#include "guc.h"
#include "shmem.h"
#include "compat.h"

PG_FUNCTION_INFO_V1(eventpipe_relay_stats);
PG_FUNCTION_INFO_V1(eventpipe_relay_stats_all);
PG_FUNCTION_INFO_V1(eventpipe_consumer_stats);
PG_FUNCTION_INFO_V1(eventpipe_consumer_stats_all);
PG_FUNCTION_INFO_V1(eventpipe_consumer_partition_stats);
PG_FUNCTION_INFO_V1(eventpipe_kafka_statistics);
PG_FUNCTION_INFO_V1(eventpipe_stat_reset);

/*
 * eventpipe.relay_stats(): the relay workers' shared-memory counters as
 * rows, behind the view eventpipe.pg_stat_relay: those of the current
 * database, or, without a slot for it, one row per worker saying why none
 * runs.  relay_stats_all(): those of every database with a slot, and of
 * every database waiting for one.
 */


#define RELAY_STATS_COLS 14

/* A database's name as a name Datum; false (a NULL) when it is gone. */
static bool
database_name_datum(Oid database, Datum *value)
{
	char	   *name = OidIsValid(database) ? get_database_name(database) : NULL;
	NameData   *datum;

	if (name == NULL)
		return false;
	datum = palloc(NAMEDATALEN);
	namestrcpy(datum, name);
	*value = NameGetDatum(datum);
	return true;
}

/*
 * Since when database's counters count: since it got its slot (a database
 * served again counts anew), or its last stat_reset(); without a slot, since
 * the server started.  Caller holds the lock.
 */
static TimestampTz
stats_reset_of(Oid database)
{
	DatabaseSlot *slot = eventpipe_find_database_slot(database);

	return slot != NULL ? slot->stats_reset : eventpipe_shared->stats_reset;
}

/*
 * One row of relay worker i of database: from slot, or (slot NULL) a row
 * without a process in state.
 */
static void
put_relay_row(ReturnSetInfo *rsinfo, Oid database, int i, RelaySlot *slot, RelayState state,
			  bool manager_waiting)
{
	Datum		values[RELAY_STATS_COLS];
	bool		nulls[RELAY_STATS_COLS];
	pid_t		pid = 0;
	char		last_error[EVENTPIPE_ERROR_LEN] = "";
	TimestampTz last_error_time = 0;
	TimestampTz stats_reset;
	Interval   *latency = palloc0(sizeof(Interval));
	int			c;

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	if (slot != NULL)
	{
		pid = slot->pid;
		state = slot->state;
		strlcpy(last_error, slot->last_error, sizeof(last_error));
		last_error_time = slot->last_error_time;
	}
	stats_reset = stats_reset_of(database);
	LWLockRelease(eventpipe_shared->lock);
	if (pid == 0 && manager_waiting)
		state = RELAY_WAITING_FOR_WORKER_SLOT;

	memset(nulls, 0, sizeof(nulls));
	values[0] = Int32GetDatum(i);
	values[1] = Int32GetDatum(pid);
	nulls[1] = (pid == 0);
	values[2] = CStringGetTextDatum(eventpipe_relay_state_name(state));
	nulls[3] = !database_name_datum(database, &values[3]);
	for (c = 4; c <= 9; c++)
		values[c] = Int64GetDatum(0);
	if (slot != NULL)
	{
		values[4] = Int64GetDatum(pg_atomic_read_u64(&slot->events_sent));
		values[5] = Int64GetDatum(pg_atomic_read_u64(&slot->events_failed));
		values[6] = Int64GetDatum(pg_atomic_read_u64(&slot->events_retried));
		values[7] = Int64GetDatum(pg_atomic_read_u64(&slot->events_dead));
		values[8] = Int64GetDatum(pg_atomic_read_u64(&slot->batches));
		values[9] = Int64GetDatum(pg_atomic_read_u64(&slot->bytes_sent));
		latency->time = (TimeOffset) pg_atomic_read_u64(&slot->last_latency_us);
	}
	values[10] = IntervalPGetDatum(latency);
	nulls[10] = (latency->time == 0);
	values[11] = CStringGetTextDatum(last_error);
	nulls[11] = (last_error[0] == '\0');
	values[12] = TimestampTzGetDatum(last_error_time);
	nulls[12] = (last_error_time == 0);
	values[13] = TimestampTzGetDatum(stats_reset);

	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/* The rows of database's relay workers, from its slot (NULL: it has none). */
static void
put_relay_rows(ReturnSetInfo *rsinfo, Oid database, DatabaseSlot *slot)
{
	RelayState	state = RELAY_STOPPED;
	bool		manager_waiting = false;
	int			i;

	if (slot != NULL)
	{
		LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
		manager_waiting = slot->manager_waiting;
		LWLockRelease(eventpipe_shared->lock);
	}
	else if (eventpipe_database_is_waiting(database))
		state = RELAY_WAITING_FOR_DATABASE_SLOT;
	else if (database == MyDatabaseId && !eventpipe_database_is_served(get_database_name(database)))
		state = RELAY_NOT_SERVED;
	for (i = 0; i < eventpipe_relay_workers; i++)
		put_relay_row(rsinfo, database, i, slot ? &slot->relay[i] : NULL, state, manager_waiting);
}

Datum
eventpipe_relay_stats(PG_FUNCTION_ARGS)
{
	InitMaterializedSRF(fcinfo, 0);
	put_relay_rows((ReturnSetInfo *) fcinfo->resultinfo, MyDatabaseId,
				   eventpipe_database_slot(MyDatabaseId));
	return (Datum) 0;
}

Datum
eventpipe_relay_stats_all(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			waiting[EVENTPIPE_MAX_WAITING_DATABASES];
	int			listed;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	for (i = 0; i < eventpipe_shared->max_databases; i++)
	{
		DatabaseSlot *slot = &eventpipe_shared->database[i];
		Oid			database;

		LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
		database = slot->database;
		LWLockRelease(eventpipe_shared->lock);
		if (OidIsValid(database))
			put_relay_rows(rsinfo, database, slot);
	}
	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	listed = eventpipe_shared->databases_waiting_listed;
	memcpy(waiting, eventpipe_shared->databases_waiting, sizeof(Oid) * listed);
	LWLockRelease(eventpipe_shared->lock);
	for (i = 0; i < listed; i++)
		put_relay_rows(rsinfo, waiting[i], NULL);
	return (Datum) 0;
}

/*
 * eventpipe.consumer_stats(): one row per consumer worker slot of the
 * current database in shared memory (a worker of a subscription that has
 * run since the server started), with its state, the partitions it holds
 * and its counters, and one per worker that waits to be started (no pid,
 * state "waiting for a worker slot", the reason and its remedy in
 * last_error, since when in last_error_time).  A subscription's totals are
 * the sums of its rows.  consumer_stats_all(): the same for every
 * database, the database's name first.
 *
 * A waiting worker that ran before keeps its one row: the waiting shows in
 * its state and last_error (its last error is back once it runs again).
 */


#define CONSUMER_STATS_COLS 13

/* The state of a subscription without a worker because none could start. */
#define WAITING_STATE "waiting for a worker slot"

typedef struct WaitingList
{
	ConsumerWaiting entries[EVENTPIPE_MAX_WAITING_CONSUMERS];
	bool		shown[EVENTPIPE_MAX_WAITING_CONSUMERS];
	int			listed;
	int			count;			/* listed or not */
} WaitingList;

/* Rows of one database's consumers: its OID, and whether rows name it first. */
typedef struct ConsumerRows
{
	ReturnSetInfo *rsinfo;
	Oid			database;
	bool		named;
	WaitingList *waiting;
	TimestampTz stats_reset;
} ConsumerRows;

/* Why it waits and what to raise, for last_error. */
static char *
waiting_reason(const WaitingList *list, ConsumerWaitCause cause)
{
	if (cause == CONSUMER_WAIT_EVENTPIPE_SLOT)
		return psprintf("all %d consumer slots of eventpipe are taken (%d workers wait): "
						"unsubscribe another subscription, lower the workers of one, or build eventpipe with a larger EVENTPIPE_MAX_CONSUMERS",
						EVENTPIPE_MAX_CONSUMERS, list->count);
	return psprintf("max_worker_processes (%d) is exhausted (%d workers wait): "
					"raise it; each database eventpipe serves needs 1 + eventpipe.relay_workers + the workers of its subscriptions",
					max_worker_processes, list->count);
}

static ConsumerWaiting *
waiting_entry(WaitingList *list, const char *subscription, int worker)
{
	int			i;

	for (i = 0; i < list->listed; i++)
		if (list->entries[i].worker == worker &&
			strcmp(list->entries[i].subscription, subscription) == 0)
		{
			list->shown[i] = true;
			return &list->entries[i];
		}
	return NULL;
}

/* Put a row: values and nulls of the CONSUMER_STATS_COLS columns, after the database's name. */
static void
put_consumer_row(ConsumerRows *rows, Datum *values, bool *nulls)
{
	Datum		row[CONSUMER_STATS_COLS + 1];
	bool		row_nulls[CONSUMER_STATS_COLS + 1];
	int			first = rows->named ? 1 : 0;

	if (rows->named)
		row_nulls[0] = !database_name_datum(rows->database, &row[0]);
	memcpy(row + first, values, sizeof(Datum) * CONSUMER_STATS_COLS);
	memcpy(row_nulls + first, nulls, sizeof(bool) * CONSUMER_STATS_COLS);
	tuplestore_putvalues(rows->rsinfo->setResult, rows->rsinfo->setDesc, row, row_nulls);
}

static void
put_waiting_row(ConsumerRows *rows, const ConsumerWaiting *entry)
{
	Datum		values[CONSUMER_STATS_COLS];
	bool		nulls[CONSUMER_STATS_COLS];
	int			i;

	memset(nulls, 0, sizeof(nulls));
	values[0] = CStringGetTextDatum(entry->subscription);
	values[1] = Int32GetDatum(entry->worker);
	nulls[2] = true;
	values[3] = CStringGetTextDatum(WAITING_STATE);
	values[4] = Int32GetDatum(0);
	for (i = 5; i <= 9; i++)
		values[i] = Int64GetDatum(0);
	values[10] = CStringGetTextDatum(waiting_reason(rows->waiting, entry->cause));
	values[11] = TimestampTzGetDatum(entry->since);
	values[12] = TimestampTzGetDatum(rows->stats_reset);
	put_consumer_row(rows, values, nulls);
}

/*
 * How many partitions worker of subscription of database is assigned now.
 * Caller holds the lock.
 */
static int
partitions_held(Oid database, const char *subscription, int worker)
{
	int			held = 0;
	int			i;

	for (i = 0; i < EVENTPIPE_MAX_CONSUMER_PARTITIONS; i++)
	{
		ConsumerPartitionSlot *slot = &eventpipe_shared->consumer_partition[i];

		if (slot->holder == worker && slot->database == database &&
			strcmp(slot->subscription, subscription) == 0)
			held++;
	}
	return held;
}

/* The row of one consumer slot of rows' database. */
static void
put_slot_row(ConsumerRows *rows, ConsumerSlot *slot)
{
	Datum		values[CONSUMER_STATS_COLS];
	bool		nulls[CONSUMER_STATS_COLS];
	char		subscription[EVENTPIPE_SUBSCRIPTION_LEN];
	int			worker;
	int			held;
	pid_t		pid;
	ConsumerState state;
	char		last_error[EVENTPIPE_ERROR_LEN];
	TimestampTz last_error_time;
	ConsumerWaiting *waits;

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	strlcpy(subscription, slot->subscription, sizeof(subscription));
	worker = slot->worker;
	held = subscription[0] != '\0' && slot->pid != 0 ?
		partitions_held(rows->database, subscription, worker) : 0;
	pid = slot->pid;
	state = slot->state;
	strlcpy(last_error, slot->last_error, sizeof(last_error));
	last_error_time = slot->last_error_time;
	LWLockRelease(eventpipe_shared->lock);

	if (subscription[0] == '\0')
		return;
	/* a live worker wins over a list up to a second old */
	waits = waiting_entry(rows->waiting, subscription, worker);

	memset(nulls, 0, sizeof(nulls));
	values[0] = CStringGetTextDatum(subscription);
	values[1] = Int32GetDatum(worker);
	values[2] = Int32GetDatum(pid);
	nulls[2] = (pid == 0);
	values[3] = CStringGetTextDatum(waits != NULL && pid == 0 ? WAITING_STATE :
									eventpipe_consumer_state_name(state));
	values[4] = Int32GetDatum(held);
	values[5] = Int64GetDatum(pg_atomic_read_u64(&slot->events_applied));
	values[6] = Int64GetDatum(pg_atomic_read_u64(&slot->duplicates));
	values[7] = Int64GetDatum(pg_atomic_read_u64(&slot->unmatched));
	values[8] = Int64GetDatum(pg_atomic_read_u64(&slot->events_dead));
	values[9] = Int64GetDatum(pg_atomic_read_u64(&slot->batches));
	if (waits != NULL && pid == 0)
	{
		values[10] = CStringGetTextDatum(waiting_reason(rows->waiting, waits->cause));
		values[11] = TimestampTzGetDatum(waits->since);
	}
	else
	{
		values[10] = CStringGetTextDatum(last_error);
		nulls[10] = (last_error[0] == '\0');
		values[11] = TimestampTzGetDatum(last_error_time);
		nulls[11] = (last_error_time == 0);
	}
	values[12] = TimestampTzGetDatum(rows->stats_reset);
	put_consumer_row(rows, values, nulls);
}

/* Every row of database: its slots, then its waiting workers that have none. */
static void
put_consumer_rows(ReturnSetInfo *rsinfo, Oid database, bool named)
{
	ConsumerRows rows;
	DatabaseSlot *slot = eventpipe_database_slot(database);
	int			i;

	rows.rsinfo = rsinfo;
	rows.database = database;
	rows.named = named;
	rows.waiting = palloc0(sizeof(WaitingList));
	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	if (slot != NULL)
	{
		rows.waiting->listed = slot->consumer_waiting_listed;
		rows.waiting->count = slot->consumer_waiting_count;
		memcpy(rows.waiting->entries, slot->consumer_waiting,
			   sizeof(ConsumerWaiting) * rows.waiting->listed);
	}
	rows.stats_reset = stats_reset_of(database);
	LWLockRelease(eventpipe_shared->lock);

	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
		if (eventpipe_shared->consumer[i].database == database)
			put_slot_row(&rows, &eventpipe_shared->consumer[i]);
	for (i = 0; i < rows.waiting->listed; i++)
		if (!rows.waiting->shown[i])
			put_waiting_row(&rows, &rows.waiting->entries[i]);
}

Datum
eventpipe_consumer_stats(PG_FUNCTION_ARGS)
{
	InitMaterializedSRF(fcinfo, 0);
	put_consumer_rows((ReturnSetInfo *) fcinfo->resultinfo, MyDatabaseId, false);
	return (Datum) 0;
}

/* The databases with a consumer slot or a database slot, each once. */
static List *
consumer_databases(void)
{
	List	   *databases = NIL;
	int			i;

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
		if (eventpipe_shared->consumer[i].subscription[0] != '\0')
			databases = list_append_unique_oid(databases, eventpipe_shared->consumer[i].database);
	for (i = 0; i < eventpipe_shared->max_databases; i++)
		if (OidIsValid(eventpipe_shared->database[i].database))
			databases = list_append_unique_oid(databases, eventpipe_shared->database[i].database);
	LWLockRelease(eventpipe_shared->lock);
	return databases;
}

Datum
eventpipe_consumer_stats_all(PG_FUNCTION_ARGS)
{
	ListCell   *lc;

	InitMaterializedSRF(fcinfo, 0);
	foreach(lc, consumer_databases())
		put_consumer_rows((ReturnSetInfo *) fcinfo->resultinfo, lfirst_oid(lc), true);
	return (Datum) 0;
}

#define PARTITION_STATS_COLS 9

/*
 * eventpipe.consumer_partition_stats(), behind pg_stat_consumer: the
 * partitions of this database's subscriptions: subscription, topic,
 * partition, events_applied, duplicates, unmatched, events_dead,
 * high_watermark (NULL when unknown), worker (the one assigned the
 * partition now; NULL: none).
 */
Datum
eventpipe_consumer_partition_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	InitMaterializedSRF(fcinfo, 0);

	for (i = 0; i < EVENTPIPE_MAX_CONSUMER_PARTITIONS; i++)
	{
		ConsumerPartitionSlot *slot = &eventpipe_shared->consumer_partition[i];
		Datum		values[PARTITION_STATS_COLS];
		bool		nulls[PARTITION_STATS_COLS];
		char		subscription[EVENTPIPE_SUBSCRIPTION_LEN];
		char		topic[EVENTPIPE_TOPIC_LEN];
		int32		partition;
		int			holder;
		Oid			database;
		uint64		watermark;

		LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
		strlcpy(subscription, slot->subscription, sizeof(subscription));
		strlcpy(topic, slot->topic, sizeof(topic));
		partition = slot->partition;
		holder = slot->holder;
		database = slot->database;
		LWLockRelease(eventpipe_shared->lock);

		if (subscription[0] == '\0' || database != MyDatabaseId)
			continue;

		memset(nulls, 0, sizeof(nulls));
		values[0] = CStringGetTextDatum(subscription);
		values[1] = CStringGetTextDatum(topic);
		values[2] = Int32GetDatum(partition);
		values[3] = Int64GetDatum(pg_atomic_read_u64(&slot->events_applied));
		values[4] = Int64GetDatum(pg_atomic_read_u64(&slot->duplicates));
		values[5] = Int64GetDatum(pg_atomic_read_u64(&slot->unmatched));
		values[6] = Int64GetDatum(pg_atomic_read_u64(&slot->events_dead));
		watermark = pg_atomic_read_u64(&slot->high_watermark);
		values[7] = Int64GetDatum((int64) watermark);
		nulls[7] = (watermark == EVENTPIPE_UNKNOWN_WATERMARK);
		values[8] = Int32GetDatum(holder);
		nulls[8] = (holder < 0);

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * eventpipe.kafka_statistics(): the latest librdkafka statistics of
 * each worker's Kafka client, one row per client, read from the files
 * the workers keep (worker/kafka/kafka_statistics.c).
 */


#define KAFKA_STATISTICS_COLS 3

/*
 * When librdkafka made the document: its "time" field (seconds since the
 * epoch), else when the file was written.  The two differ when the worker
 * served its client's queue late (an idle relay does so once per poll).
 */
static TimestampTz
emitted_at(Jsonb *statistics, TimestampTz written)
{
	JsonbValue	key;
	JsonbValue *seconds;

	key.type = jbvString;
	key.val.string.val = "time";
	key.val.string.len = strlen("time");
	seconds = findJsonbValueFromContainer(&statistics->root, JB_FOBJECT, &key);
	if (seconds == NULL || seconds->type != jbvNumeric)
		return written;
	return time_t_to_timestamptz((pg_time_t) DatumGetInt64(DirectFunctionCall1(numeric_int8,
																				NumericGetDatum(seconds->val.numeric))));
}

/*
 * The file's contents, and its modification time in *written; false if it
 * went away meanwhile (its client was destroyed).
 */
static bool
read_statistics_file(const char *path, StringInfo contents, TimestampTz *written)
{
	FILE	   *file = AllocateFile(path, PG_BINARY_R);
	struct stat st;
	char		buffer[8192];
	size_t		n;

	if (file == NULL)
	{
		if (errno == ENOENT)
			return false;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", path)));
	}
	if (fstat(fileno(file), &st) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not stat file \"%s\": %m", path)));
	*written = time_t_to_timestamptz(st.st_mtime);
	while ((n = fread(buffer, 1, sizeof(buffer), file)) > 0)
		appendBinaryStringInfo(contents, buffer, n);
	if (ferror(file))
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read file \"%s\": %m", path)));
	FreeFile(file);
	return true;
}

Datum
eventpipe_kafka_statistics(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	DIR		   *dir;
	struct dirent *entry;
	size_t		prefix_len = strlen(KAFKA_STATISTICS_PREFIX);
	size_t		suffix_len = strlen(KAFKA_STATISTICS_SUFFIX);

	InitMaterializedSRF(fcinfo, 0);

	dir = AllocateDir(KAFKA_STATISTICS_DIR);
	while ((entry = ReadDir(dir, KAFKA_STATISTICS_DIR)) != NULL)
	{
		size_t		name_len = strlen(entry->d_name);
		char		path[MAXPGPATH];
		StringInfoData contents;
		TimestampTz written;
		Datum		values[KAFKA_STATISTICS_COLS];
		bool		nulls[KAFKA_STATISTICS_COLS] = {false};

		if (name_len <= prefix_len + suffix_len ||
			strncmp(entry->d_name, KAFKA_STATISTICS_PREFIX, prefix_len) != 0 ||
			strcmp(entry->d_name + name_len - suffix_len, KAFKA_STATISTICS_SUFFIX) != 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", KAFKA_STATISTICS_DIR, entry->d_name);
		initStringInfo(&contents);
		if (!read_statistics_file(path, &contents, &written))
			continue;
		values[0] = PointerGetDatum(cstring_to_text_with_len(entry->d_name, name_len - suffix_len));
		values[2] = DirectFunctionCall1(jsonb_in, CStringGetDatum(contents.data));
		values[1] = TimestampTzGetDatum(emitted_at(DatumGetJsonbP(values[2]), written));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		pfree(contents.data);
	}
	FreeDir(dir);
	return (Datum) 0;
}

/*
 * eventpipe.stat_reset(): sets the current database's relay and consumer
 * counters of pg_stat_relay, pg_stat_consumer and consumer_stats() back to
 * zero (per subscription and per partition), clears their last errors and
 * stamps its stats_reset, as pg_stat_statements_reset() does.  Other
 * databases' are theirs to reset.  High watermarks are not counters: they
 * stay.
 *
 * The error fields are cleared under EventpipeShared->lock; the counters
 * are atomics a worker may be adding to at that moment, so an increment
 * racing the reset may survive it (or be lost), never corrupt it.
 */


static void
reset_relay_slot(RelaySlot *slot)
{
	pg_atomic_write_u64(&slot->events_sent, 0);
	pg_atomic_write_u64(&slot->events_failed, 0);
	pg_atomic_write_u64(&slot->events_retried, 0);
	pg_atomic_write_u64(&slot->events_dead, 0);
	pg_atomic_write_u64(&slot->batches, 0);
	pg_atomic_write_u64(&slot->bytes_sent, 0);
	pg_atomic_write_u64(&slot->last_latency_us, 0);
	slot->last_error[0] = '\0';
	slot->last_error_time = 0;
}

static void
reset_consumer_counters(ConsumerSlot *slot)
{
	pg_atomic_write_u64(&slot->events_applied, 0);
	pg_atomic_write_u64(&slot->duplicates, 0);
	pg_atomic_write_u64(&slot->unmatched, 0);
	pg_atomic_write_u64(&slot->events_dead, 0);
	pg_atomic_write_u64(&slot->batches, 0);
	slot->last_error[0] = '\0';
	slot->last_error_time = 0;
}

Datum
eventpipe_stat_reset(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();
	DatabaseSlot *slot;
	int			i;

	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	slot = eventpipe_find_database_slot(MyDatabaseId);
	if (slot != NULL)
	{
		for (i = 0; i < EVENTPIPE_MAX_RELAY_WORKERS; i++)
			reset_relay_slot(&slot->relay[i]);
		slot->stats_reset = now;
	}
	else
		eventpipe_shared->stats_reset = now;	/* what slotless rows show */
	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
		if (eventpipe_shared->consumer[i].database == MyDatabaseId)
			reset_consumer_counters(&eventpipe_shared->consumer[i]);
	eventpipe_reset_consumer_partition_counters(MyDatabaseId);
	LWLockRelease(eventpipe_shared->lock);
	PG_RETURN_TIMESTAMPTZ(now);
}
