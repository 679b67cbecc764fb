/*
 * relay_stats.c
 *		eventpipe.relay_stats(): the relay workers' shared-memory counters as
 *		rows, behind the view eventpipe.pg_stat_relay.
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(eventpipe_relay_stats);

#define RELAY_STATS_COLS 14

Datum
eventpipe_relay_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	InitMaterializedSRF(fcinfo, 0);

	for (i = 0; i < eventpipe_relay_workers; i++)
	{
		RelaySlot  *slot = &eventpipe_shared->relay[i];
		Datum		values[RELAY_STATS_COLS];
		bool		nulls[RELAY_STATS_COLS];
		pid_t		pid;
		Oid			database;
		RelayState	state;
		char		last_error[EVENTPIPE_ERROR_LEN];
		TimestampTz last_error_time;
		TimestampTz stats_reset;
		char	   *dbname;
		NameData   *dbname_datum;
		Interval   *latency;

		LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
		pid = slot->pid;
		database = slot->database;
		state = slot->state;
		strlcpy(last_error, slot->last_error, sizeof(last_error));
		last_error_time = slot->last_error_time;
		stats_reset = eventpipe_shared->stats_reset;
		LWLockRelease(eventpipe_shared->lock);

		memset(nulls, 0, sizeof(nulls));
		values[0] = Int32GetDatum(i);
		values[1] = Int32GetDatum(pid);
		nulls[1] = (pid == 0);
		values[2] = CStringGetTextDatum(eventpipe_relay_state_name(state));
		dbname = OidIsValid(database) ? get_database_name(database) : NULL;
		nulls[3] = (dbname == NULL);
		if (dbname != NULL)
		{
			dbname_datum = palloc(NAMEDATALEN);
			namestrcpy(dbname_datum, dbname);
			values[3] = NameGetDatum(dbname_datum);
		}
		values[4] = Int64GetDatum(pg_atomic_read_u64(&slot->events_sent));
		values[5] = Int64GetDatum(pg_atomic_read_u64(&slot->events_failed));
		values[6] = Int64GetDatum(pg_atomic_read_u64(&slot->events_retried));
		values[7] = Int64GetDatum(pg_atomic_read_u64(&slot->events_dead));
		values[8] = Int64GetDatum(pg_atomic_read_u64(&slot->batches));
		values[9] = Int64GetDatum(pg_atomic_read_u64(&slot->bytes_sent));
		latency = palloc0(sizeof(Interval));
		latency->time = (TimeOffset) pg_atomic_read_u64(&slot->last_latency_us);
		values[10] = IntervalPGetDatum(latency);
		nulls[10] = (latency->time == 0);
		values[11] = CStringGetTextDatum(last_error);
		nulls[11] = (last_error[0] == '\0');
		values[12] = TimestampTzGetDatum(last_error_time);
		nulls[12] = (last_error_time == 0);
		values[13] = TimestampTzGetDatum(stats_reset);

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
