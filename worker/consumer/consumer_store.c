/*
 * consumer_store.c
 *		What a batch of Kafka messages leaves in its transaction besides its
 *		effects: its dead letters (eventpipe.consumer_dead_letters) and the
 *		next offset of each of its partitions (eventpipe.consumer_offsets).
 *
 * Two workers of a subscription may store rows for the same partition at
 * once (one lost it to the other in a rebalance, mid-batch): both
 * statements write their rows in (topic, partition, offset) order, so they
 * wait for each other without a deadlock, and an offset only ever moves
 * forward (GREATEST): each batch's offset stands for the messages below it,
 * applied by this batch or before its worker was assigned the partition.
 * Except where librdkafka itself went back within a partition (the topic
 * was made again: its new records start over at 0): that partition's
 * offset is then the batch's, lower or not, or the next assignment would
 * skip the new records below the old topic's end.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "consumer.h"
#include "consumer_sql.h"
#include "worker/worker_loop.h"

typedef enum StoreStatement
{
	STORE_DEAD_LETTERS,
	STORE_OFFSETS,
	STORE_OFFSET_AS_GIVEN,
	STORE_STATEMENTS
} StoreStatement;

static WorkerStatement statements[STORE_STATEMENTS] = {
	[STORE_DEAD_LETTERS] = {
		"store the dead letters",
		"INSERT INTO eventpipe.consumer_dead_letters"
		" (subscription, topic, partition, \"offset\", key, value, headers, error)"
		" SELECT $1, u.* FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.text[]),"
		"   pg_catalog.unnest($3::pg_catalog.int4[]), pg_catalog.unnest($4::pg_catalog.int8[]),"
		"   pg_catalog.unnest($5::pg_catalog.bytea[]), pg_catalog.unnest($6::pg_catalog.bytea[]),"
		"   pg_catalog.unnest($7::pg_catalog.jsonb[]), pg_catalog.unnest($8::pg_catalog.text[]))"
		"   AS u(t, p, o, k, v, h, e)"
		" ORDER BY u.t, u.p, u.o"
		" ON CONFLICT DO NOTHING",
		false, 8, {TEXTOID, TEXTARRAYOID, INT4ARRAYOID, INT8ARRAYOID,
		BYTEAARRAYOID, BYTEAARRAYOID, JSONBARRAYOID, TEXTARRAYOID}
	},
	[STORE_OFFSETS] = {
		"store the next offsets",
		"INSERT INTO eventpipe.consumer_offsets AS o"
		" (subscription, topic, partition, next_offset)"
		" SELECT $1, u.t, u.p, u.o"
		" FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.text[]),"
		"   pg_catalog.unnest($3::pg_catalog.int4[]), pg_catalog.unnest($4::pg_catalog.int8[]))"
		"   AS u(t, p, o)"
		" ORDER BY u.t, u.p"
		" ON CONFLICT (subscription, topic, partition) DO UPDATE"
		" SET next_offset = GREATEST(o.next_offset, EXCLUDED.next_offset)",
		false, 4, {TEXTOID, TEXTARRAYOID, INT4ARRAYOID, INT8ARRAYOID}
	},
	[STORE_OFFSET_AS_GIVEN] = {
		"store a partition's next offset as given",
		"UPDATE eventpipe.consumer_offsets SET next_offset = $4"
		" WHERE subscription OPERATOR(pg_catalog.=) $1 AND topic OPERATOR(pg_catalog.=) $2"
		" AND partition OPERATOR(pg_catalog.=) $3",
		false, 4, {TEXTOID, TEXTOID, INT4OID, INT8OID}
	},
};

static Datum
bytes_datum(const void *bytes, size_t len, bool *isnull)
{
	bytea	   *value;

	*isnull = (bytes == NULL);
	if (bytes == NULL)
		return (Datum) 0;
	value = palloc(VARHDRSZ + len);
	SET_VARSIZE(value, VARHDRSZ + len);
	memcpy(VARDATA(value), bytes, len);
	return PointerGetDatum(value);
}

/* Longest error text stored with a dead letter, in bytes. */
#define DEAD_LETTER_ERROR_MAX 1024

/*
 * An error cut to DEAD_LETTER_ERROR_MAX bytes (on a character boundary):
 * a JSON error quotes the offending token, which may be the whole value.
 */
static const char *
clipped(const char *error)
{
	int			len = strlen(error);

	if (len <= DEAD_LETTER_ERROR_MAX)
		return error;
	return psprintf("%.*s...", pg_mbcliplen(error, len, DEAD_LETTER_ERROR_MAX), error);
}

/* The batch's dead messages, in consumer_dead_letters. */
void
consumer_store_dead_letters(ConsumerBatch *batch, const char *name)
{
	Datum		values[8];
	Datum	   *columns[7];
	bool	   *nulls[7];
	int			n = 0;
	int			i;
	int			c;

	for (c = 0; c < 7; c++)
	{
		columns[c] = palloc(sizeof(Datum) * batch->count);
		nulls[c] = palloc0(sizeof(bool) * batch->count);
	}
	for (i = 0; i < batch->count; i++)
	{
		ConsumedMessage *message = &batch->messages[i];
		Jsonb	   *headers;

		if (message->fate != MESSAGE_DEAD)
			continue;
		columns[0][n] = CStringGetTextDatum(message->topic);
		columns[1][n] = Int32GetDatum(message->partition);
		columns[2][n] = Int64GetDatum(message->offset);
		columns[3][n] = bytes_datum(message->key, message->key_len, &nulls[3][n]);
		columns[4][n] = bytes_datum(message->value, message->value_len, &nulls[4][n]);
		headers = consumer_message_headers(message);
		columns[5][n] = PointerGetDatum(headers);
		nulls[5][n] = (headers == NULL);
		columns[6][n] = CStringGetTextDatum(clipped(message->error));
		n++;
	}
	if (n == 0)
		return;
	values[0] = CStringGetTextDatum(name);
	values[1] = consumer_make_array(columns[0], NULL, n, TEXTOID);
	values[2] = consumer_make_array(columns[1], NULL, n, INT4OID);
	values[3] = consumer_make_array(columns[2], NULL, n, INT8OID);
	values[4] = consumer_make_array(columns[3], nulls[3], n, BYTEAOID);
	values[5] = consumer_make_array(columns[4], nulls[4], n, BYTEAOID);
	values[6] = consumer_make_array(columns[5], nulls[5], n, JSONBOID);
	values[7] = consumer_make_array(columns[6], NULL, n, TEXTOID);
	worker_run_statement(&statements[STORE_DEAD_LETTERS], values, NULL, SPI_OK_INSERT);
}

/*
 * Every partition of the batch resumes after its last message.  The
 * partitions' highest offsets are found here (a batch holds few partitions),
 * so the statement gets one row per partition, not one per message.
 */
void
consumer_store_offsets(ConsumerBatch *batch, const char *name)
{
	Datum		values[4];
	const char **topics = palloc(sizeof(char *) * batch->count);
	Datum	   *topic_datums = palloc(sizeof(Datum) * batch->count);
	Datum	   *partitions = palloc(sizeof(Datum) * batch->count);
	Datum	   *next_offsets = palloc(sizeof(Datum) * batch->count);
	bool	   *went_back = palloc0(sizeof(bool) * batch->count);
	int			n = 0;
	int			i;
	int			p;

	for (i = 0; i < batch->count; i++)
	{
		const char *topic = batch->messages[i].topic;
		int32		partition = batch->messages[i].partition;
		int64		next = batch->messages[i].offset + 1;

		/* a topic's messages share its name's memory: compare pointers first */
		for (p = 0; p < n; p++)
			if (DatumGetInt32(partitions[p]) == partition &&
				(topics[p] == topic || strcmp(topics[p], topic) == 0))
				break;
		if (p == n)
		{
			topics[n] = topic;
			topic_datums[n] = CStringGetTextDatum(topic);
			partitions[n] = Int32GetDatum(partition);
			next_offsets[n++] = Int64GetDatum(next);
		}
		else if (next > DatumGetInt64(next_offsets[p]))
			next_offsets[p] = Int64GetDatum(next);
		/* offsets read after going back are all above the one that went back */
		if (batch->messages[i].went_back)
		{
			went_back[p] = true;
			next_offsets[p] = Int64GetDatum(next);
		}
	}
	if (n == 0)
		return;
	values[0] = CStringGetTextDatum(name);
	values[1] = consumer_make_array(topic_datums, NULL, n, TEXTOID);
	values[2] = consumer_make_array(partitions, NULL, n, INT4OID);
	values[3] = consumer_make_array(next_offsets, NULL, n, INT8OID);
	worker_run_statement(&statements[STORE_OFFSETS], values, NULL, SPI_OK_INSERT);
	for (p = 0; p < n; p++)
		if (went_back[p])
			consumer_store_offset_as_given(name, topics[p], DatumGetInt32(partitions[p]),
										   DatumGetInt64(next_offsets[p]));
}

/*
 * A stored offset set to next, lower or not: for a partition Kafka no
 * longer holds as the offset stood (records deleted, the topic made again).
 */
void
consumer_store_offset_as_given(const char *name, const char *topic, int32 partition, int64 next)
{
	Datum		values[4];

	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(topic);
	values[2] = Int32GetDatum(partition);
	values[3] = Int64GetDatum(next);
	worker_run_statement(&statements[STORE_OFFSET_AS_GIVEN], values, NULL, SPI_OK_UPDATE);
}
