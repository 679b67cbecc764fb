/*
 * kafka_consumer_offsets.c
 *		Where each partition of a new assignment starts, read in the
 *		rebalance callback (kafka_consumer.c): the offset stored in
 *		eventpipe.consumer_offsets, brought within what Kafka holds, or for
 *		a partition without one its first record, or (start_from 'latest')
 *		its end as of now, stored at once.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "worker/consumer/consumer.h"
#include "worker/worker_loop.h"

/* How long to wait for the broker to say where a partition ends. */
#define START_OFFSET_QUERY_MS 10000

typedef enum OffsetStatement
{
	READ_OFFSET,
	STORE_START_OFFSET,
	OFFSET_STATEMENTS
} OffsetStatement;

static WorkerStatement statements[OFFSET_STATEMENTS] = {
	[READ_OFFSET] = {
		"read a stored offset",
		"SELECT next_offset FROM eventpipe.consumer_offsets"
		" WHERE subscription OPERATOR(pg_catalog.=) $1 AND topic OPERATOR(pg_catalog.=) $2"
		" AND partition OPERATOR(pg_catalog.=) $3",
		false, 3, {TEXTOID, TEXTOID, INT4OID}
	},
	[STORE_START_OFFSET] = {
		"store a partition's start",
		"INSERT INTO eventpipe.consumer_offsets AS o"
		" (subscription, topic, partition, next_offset) VALUES ($1, $2, $3, $4)"
		" ON CONFLICT (subscription, topic, partition) DO UPDATE"
		" SET next_offset = o.next_offset RETURNING o.next_offset",
		false, 4, {TEXTOID, TEXTOID, INT4OID, INT8OID}
	},
};

static void
partition_offset_values(Datum *values, const char *name,
						const rd_kafka_topic_partition_t *partition, int64 offset)
{
	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(partition->topic);
	values[2] = Int32GetDatum(partition->partition);
	values[3] = Int64GetDatum(offset);
}

/*
 * Where a partition without a stored offset starts under start_from
 * 'latest': its end now, stored at once, in a commit that waits for the WAL
 * flush, so that what is produced to it while it is unassigned (a
 * rebalance, a restart, a crash before its first batch committed) is not
 * skipped, as seeking to "the end" at every assignment would.
 */
static int64
store_start_at_end(rd_kafka_t *rk, const char *name, const rd_kafka_topic_partition_t *partition)
{
	int64_t		low;
	int64_t		high;
	rd_kafka_resp_err_t err;
	Datum		values[4];
	bool		isnull;

	err = rd_kafka_query_watermark_offsets(rk, partition->topic, partition->partition,
										   &low, &high, START_OFFSET_QUERY_MS);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		ereport(ERROR,
				(errmsg("eventpipe consumer: could not find the end of partition %d of topic \"%s\": %s",
						(int) partition->partition, partition->topic, rd_kafka_err2str(err))));
	partition_offset_values(values, name, partition, high);
	worker_run_statement(&statements[STORE_START_OFFSET], values, NULL, SPI_OK_INSERT_RETURNING);
	if (set_config_option("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE,
						  GUC_ACTION_LOCAL, true, 0, false) <= 0)
		elog(ERROR, "eventpipe consumer: could not make the commit wait for the WAL flush");
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* How long to wait for a broker to say which offsets a partition holds. */
#define RETAINED_QUERY_MS 2000

/*
 * Which offsets Kafka holds of a partition: its first record (*low) and its
 * end (*high).  False when the broker cannot say; when it does not answer
 * at all (within RETAINED_QUERY_MS, or no connection) *broker_answers
 * turns false and, for the rest of the assignment, it is not asked again.
 */
static bool
retained_offsets(rd_kafka_t *rk, const rd_kafka_topic_partition_t *partition,
				 int64_t *low, int64_t *high, bool *broker_answers)
{
	rd_kafka_resp_err_t err;

	if (!*broker_answers)
		return false;
	err = rd_kafka_query_watermark_offsets(rk, partition->topic, partition->partition,
										   low, high, RETAINED_QUERY_MS);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR && *low >= 0 && *low <= *high)
		return true;
	/*
	 * A broker that does not answer is not asked again; an error it answers
	 * (the topic's leader not known yet, say), or odd offsets, count for
	 * this partition only.
	 */
	if (err == RD_KAFKA_RESP_ERR__TIMED_OUT || err == RD_KAFKA_RESP_ERR__TRANSPORT ||
		err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
		*broker_answers = false;
	ereport(LOG,
			(errmsg("eventpipe consumer: could not learn which offsets Kafka holds of partition %d of topic \"%s\" (%s); resuming at the stored offset, else at the beginning",
					(int) partition->partition, partition->topic,
					err != RD_KAFKA_RESP_ERR_NO_ERROR ? rd_kafka_err2str(err) : "no valid offsets")));
	return false;
}

/*
 * A stored offset brought within the records Kafka holds.  Below the
 * partition's first record (records deleted by retention while the
 * subscription was away) or past its end (the topic deleted and made
 * again, or records lost by the broker), the partition resumes at its
 * first record, and that is stored at once: with librdkafka's reset alone,
 * an offset past the end would be read from the first record at every
 * assignment while the stored one stayed past the end, and one below the
 * start would keep a lag that never clears.  When the broker does not
 * answer, the offset is used as stored.
 */
static int64
within_retained(rd_kafka_t *rk, const char *name, const rd_kafka_topic_partition_t *partition,
				int64 stored, bool *broker_answers)
{
	int64_t		low;
	int64_t		high;

	if (!retained_offsets(rk, partition, &low, &high, broker_answers))
		return stored;
	if (stored >= low && stored <= high)
		return stored;
	ereport(WARNING,
			(errmsg("eventpipe consumer: subscription \"%s\": the stored offset " INT64_FORMAT " of partition %d of topic \"%s\" is outside what Kafka holds (first " INT64_FORMAT ", end " INT64_FORMAT "); resuming at " INT64_FORMAT,
					name, stored, (int) partition->partition, partition->topic,
					(int64) low, (int64) high, (int64) low),
			 stored < low
			 ? errdetail("Records were deleted before this subscription applied them.")
			 : errdetail("The topic was made again, or the broker lost records.")));
	consumer_store_offset_as_given(name, partition->topic, partition->partition, low);
	return low;
}

/*
 * Where a partition without a stored offset starts under start_from
 * 'earliest': its first record, as an offset: librdkafka looks the logical
 * "beginning" up only after a fixed half-second wait when the partition's
 * leader is not yet known to it, as on a consumer's first assignment;
 * "beginning" remains when the broker does not answer.
 */
static int64
first_retained(rd_kafka_t *rk, const rd_kafka_topic_partition_t *partition, bool *broker_answers)
{
	int64_t		low;
	int64_t		high;

	if (!retained_offsets(rk, partition, &low, &high, broker_answers))
		return RD_KAFKA_OFFSET_BEGINNING;
	return low;
}

/*
 * Set each partition's offset to the one stored in the database, within
 * what Kafka holds; a partition without one starts at its first record,
 * or (start_latest) at its end as of now, then stored.  In a transaction of
 * its own.
 */
void
kafka_consumer_read_offsets(rd_kafka_t *rk, const char *name,
							rd_kafka_topic_partition_list_t *partitions, bool start_latest)
{
	MemoryContext caller_context = worker_begin_transaction("eventpipe: reading the stored offsets");
	bool		broker_answers = true;
	int			i;

	worker_spi_connect();
	for (i = 0; i < partitions->cnt; i++)
	{
		rd_kafka_topic_partition_t *partition = &partitions->elems[i];
		Datum		values[3] = {CStringGetTextDatum(name),
			CStringGetTextDatum(partition->topic),
		Int32GetDatum(partition->partition)};
		bool		isnull;

		worker_run_statement(&statements[READ_OFFSET], values, NULL, SPI_OK_SELECT);
		if (SPI_processed > 0)
			partition->offset = within_retained(rk, name, partition,
												DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
																			SPI_tuptable->tupdesc,
																			1, &isnull)),
												&broker_answers);
		else if (start_latest)
			partition->offset = store_start_at_end(rk, name, partition);
		else
			partition->offset = first_retained(rk, partition, &broker_answers);
	}
	SPI_finish();
	worker_end_transaction(caller_context);
}
