/*
 * consumer_ledger.c
 *		The dedup ledger (eventpipe.event_handled_runs and event_handled):
 *		in a batch's transaction, finding the messages whose ids were applied
 *		before (they become duplicates), then recording the ids of those it
 *		applies; in a transaction of its own, the ledger's upkeep (its daily
 *		partitions made ahead, the expired ones dropped).
 *
 * Version 7 UUIDs, eventpipe's own ids, are kept packed: up to
 * RUN_MAX_IDS of one 100-ms bucket per row of event_handled_runs, sorted,
 * so that a batch's lookup reads the rows of the few buckets its ids fall
 * in and searches them here.  Every other id has a row of event_handled.
 * No unique index spans the partitions of either table: a transaction-level
 * advisory lock on the subscription's ledger, held from the lookup to the
 * batch's commit, is what makes exactly one of two workers apply an id
 * that reaches both at once (docs/design.md, "The dedup ledger").
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "consumer.h"
#include "consumer_sql.h"
#include "worker/worker_loop.h"

/* Ids per row of event_handled_runs: 16 bytes each keep a row under TOAST's threshold. */
#define RUN_MAX_IDS 120
/* A run holds the ids of one bucket of this many milliseconds. */
#define RUN_BUCKET_MS 100
/* pg_advisory_xact_lock(subscription_id, LEDGER_LOCK): metric locks' second key is never negative */
#define LEDGER_LOCK (-1)

typedef enum LedgerStatement
{
	FIND_RUNS,
	FIND_UUID_ROWS,
	FIND_TEXT_ROWS,
	INSERT_RUNS,
	INSERT_ROWS,
	UPKEEP,
	LEDGER_STATEMENTS
} LedgerStatement;

static WorkerStatement statements[LEDGER_STATEMENTS] = {
	[FIND_RUNS] = {
		"read the ledger runs of a batch's buckets",
		"SELECT r.ids FROM eventpipe.event_handled_runs AS r"
		" WHERE r.subscription_id OPERATOR(pg_catalog.=) $1"
		"   AND r.bucket OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.int8[])",
		false, 2, {INT4OID, INT8ARRAYOID}
	},
	/*
	 * One index scan per partition for the whole array; IS NOT NULL lets
	 * the planner use the partial index of the id's form.
	 */
	[FIND_UUID_ROWS] = {
		"find a batch's uuids in the ledger rows",
		"SELECT h.event_uuid FROM eventpipe.event_handled AS h"
		" WHERE h.subscription_id OPERATOR(pg_catalog.=) $1"
		"   AND h.event_uuid IS NOT NULL"
		"   AND h.event_uuid OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.uuid[])",
		false, 2, {INT4OID, UUIDARRAYOID}
	},
	[FIND_TEXT_ROWS] = {
		"find a batch's text ids in the ledger rows",
		"SELECT h.event_text FROM eventpipe.event_handled AS h"
		" WHERE h.subscription_id OPERATOR(pg_catalog.=) $1"
		"   AND h.event_text IS NOT NULL"
		"   AND h.event_text OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.text[] COLLATE \"C\")",
		false, 2, {INT4OID, TEXTARRAYOID}
	},
	[INSERT_RUNS] = {
		"insert ledger runs",
		"INSERT INTO eventpipe.event_handled_runs (subscription_id, bucket, ids, handled_at)"
		" SELECT $1, u.bucket, u.ids, pg_catalog.statement_timestamp()"
		" FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.int8[]),"
		"                 pg_catalog.unnest($3::pg_catalog.bytea[])) AS u(bucket, ids)",
		false, 3, {INT4OID, INT8ARRAYOID, BYTEAARRAYOID}
	},
	[INSERT_ROWS] = {
		"insert ledger rows",
		"INSERT INTO eventpipe.event_handled (subscription_id, event_uuid, event_text, handled_at)"
		" SELECT $1, u.id, u.text, pg_catalog.statement_timestamp()"
		" FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.uuid[]),"
		"                 pg_catalog.unnest($3::pg_catalog.text[])) AS u(id, text)",
		false, 3, {INT4OID, UUIDARRAYOID, TEXTARRAYOID}
	},
	[UPKEEP] = {
		"keep the dedup ledger's partitions",
		"SELECT eventpipe.ledger_upkeep($1, $2)",
		false, 2, {INT4OID, BOOLOID}
	},
};

/*
 * Where a message's id is kept.  An id that is exactly the canonical text
 * of a UUID (lower-case hex, 8-4-4-4-12: what uuid_out prints, so the text
 * and the uuid stand for each other one to one) is kept as a uuid: packed
 * in a run when it is a version 7 UUID, in a row of its own otherwise.
 * Any other id is kept as text.  Two distinct ids are always two distinct
 * keys.  The kinds' order is the order keys sort in.
 */
typedef enum LedgerKind
{
	IN_RUN,
	UUID_ROW,
	TEXT_ROW
} LedgerKind;

typedef struct LedgerKey
{
	LedgerKind	kind;
	pg_uuid_t	uuid;			/* unless TEXT_ROW */
	const char *text;			/* when TEXT_ROW */
	int			first;			/* the batch's first message with this id */
	bool		known;			/* the ledger holds it already */
} LedgerKey;

/* The keys of a batch's messages to apply, sorted, without repeats. */
typedef struct LedgerKeys
{
	LedgerKey  *keys;
	int			count;
	int			runs;			/* keys[0 .. runs - 1] are IN_RUN */
} LedgerKeys;

/*
 * Run one of the ledger's statements in the batch's transaction.  Its
 * failure (a partition missing, say) is the batch's, never a message's:
 * every message would meet it.
 */
static void
run_ledger_statement(LedgerStatement which, Datum *values, int expected)
{
	PG_TRY();
	{
		worker_run_statement(&statements[which], values, NULL, expected);
	}
	PG_CATCH();
	{
		consumer_blame_batch();
		PG_RE_THROW();
	}
	PG_END_TRY();
}

static int
hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static bool
is_version_7(const pg_uuid_t *uuid)
{
	return (uuid->data[6] >> 4) == 7 && (uuid->data[8] & 0xC0) == 0x80;
}

/* A version 7 UUID's bucket: its first 48 bits, Unix time in ms, over RUN_BUCKET_MS. */
static int64
run_bucket(const pg_uuid_t *uuid)
{
	uint64		ms = 0;
	int			i;

	for (i = 0; i < 6; i++)
		ms = ms << 8 | uuid->data[i];
	return (int64) (ms / RUN_BUCKET_MS);
}

static void
ledger_key_of(const char *id, LedgerKey *key)
{
	int			byte = 0;
	int			i;

	key->kind = TEXT_ROW;
	key->text = id;
	key->known = false;
	if (strlen(id) != 2 * UUID_LEN + 4)
		return;
	for (i = 0; id[i] != '\0'; i++)
	{
		int			high;
		int			low;

		if (i == 8 || i == 13 || i == 18 || i == 23)
		{
			if (id[i] != '-')
				return;
			continue;
		}
		high = hex_digit(id[i]);
		low = hex_digit(id[++i]);
		if (high < 0 || low < 0)
			return;
		key->uuid.data[byte++] = (unsigned char) (high << 4 | low);
	}
	key->kind = is_version_7(&key->uuid) ? IN_RUN : UUID_ROW;
}

/* By kind, then uuids in byte order (a run's order) and texts by strcmp. */
static int
compare_ledger_keys(const void *a, const void *b)
{
	const LedgerKey *x = (const LedgerKey *) a;
	const LedgerKey *y = (const LedgerKey *) b;

	if (x->kind != y->kind)
		return x->kind < y->kind ? -1 : 1;
	if (x->kind == TEXT_ROW)
		return strcmp(x->text, y->text);
	return memcmp(x->uuid.data, y->uuid.data, UUID_LEN);
}

static int
compare_ledger_keys_then_first(const void *a, const void *b)
{
	int			order = compare_ledger_keys(a, b);

	if (order != 0)
		return order;
	return ((const LedgerKey *) a)->first - ((const LedgerKey *) b)->first;
}

/* The keys of the messages to apply, each id once with its first message. */
static LedgerKeys
collect_keys(ConsumedMessage *messages, int count)
{
	LedgerKeys	set = {palloc(sizeof(LedgerKey) * (count + 1)), 0, 0};
	int			n = 0;
	int			i;

	for (i = 0; i < count; i++)
		if (messages[i].fate == MESSAGE_APPLIED)
		{
			ledger_key_of(messages[i].event_id, &set.keys[n]);
			set.keys[n++].first = i;
		}
	qsort(set.keys, n, sizeof(LedgerKey), compare_ledger_keys_then_first);
	for (i = 0; i < n; i++)
	{
		if (set.count > 0 && compare_ledger_keys(&set.keys[set.count - 1], &set.keys[i]) == 0)
			continue;
		set.keys[set.count++] = set.keys[i];
		if (set.keys[i].kind == IN_RUN)
			set.runs++;
	}
	return set;
}

static LedgerKey *
find_key(const LedgerKeys *set, const LedgerKey *key)
{
	return bsearch(key, set->keys, set->count, sizeof(LedgerKey), compare_ledger_keys);
}

/* The distinct buckets of the keys kept in runs, as an int8[]. */
static Datum
run_buckets(const LedgerKeys *set)
{
	Datum	   *buckets = palloc(sizeof(Datum) * (set->runs + 1));
	int			n = 0;
	int			i;

	for (i = 0; i < set->runs; i++)
	{
		int64		bucket = run_bucket(&set->keys[i].uuid);

		if (n == 0 || DatumGetInt64(buckets[n - 1]) != bucket)
			buckets[n++] = Int64GetDatum(bucket);
	}
	return consumer_make_array(buckets, NULL, n, INT8OID);
}

/* Mark known the keys kept in runs that the ledger's runs of their buckets hold. */
static void
find_in_runs(LedgerKeys *set, int32 ledger_id)
{
	Datum		values[2] = {Int32GetDatum(ledger_id), run_buckets(set)};
	LedgerKeys	runs = {set->keys, set->runs, set->runs};
	uint64		row;

	run_ledger_statement(FIND_RUNS, values, SPI_OK_SELECT);
	for (row = 0; row < SPI_processed; row++)
	{
		bool		isnull;
		bytea	   *ids = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[row],
														SPI_tuptable->tupdesc, 1, &isnull));
		const char *id = VARDATA_ANY(ids);
		const char *end = id + VARSIZE_ANY_EXHDR(ids);

		for (; id + UUID_LEN <= end; id += UUID_LEN)
		{
			LedgerKey	held = {.kind = IN_RUN};
			LedgerKey  *found;

			memcpy(held.uuid.data, id, UUID_LEN);
			found = find_key(&runs, &held);
			if (found != NULL)
				found->known = true;
		}
	}
}

/* The keys kept in rows, as a uuid[] and a text[] side by side (NULL where the other). */
static void
row_arrays(const LedgerKeys *set, Datum *uuids, Datum *texts)
{
	int			n = set->count - set->runs;
	Datum	   *uuid_values = palloc(sizeof(Datum) * (n + 1));
	bool	   *uuid_nulls = palloc(sizeof(bool) * (n + 1));
	Datum	   *text_values = palloc(sizeof(Datum) * (n + 1));
	bool	   *text_nulls = palloc(sizeof(bool) * (n + 1));
	int			i;

	for (i = 0; i < n; i++)
	{
		LedgerKey  *key = &set->keys[set->runs + i];

		uuid_nulls[i] = key->kind != UUID_ROW;
		uuid_values[i] = uuid_nulls[i] ? (Datum) 0 : UUIDPGetDatum(&key->uuid);
		text_nulls[i] = key->kind != TEXT_ROW;
		text_values[i] = text_nulls[i] ? (Datum) 0 : CStringGetTextDatum(key->text);
	}
	*uuids = consumer_make_array(uuid_values, uuid_nulls, n, UUIDOID);
	*texts = consumer_make_array(text_values, text_nulls, n, TEXTOID);
}

/* The keys of one kind kept in rows, as a uuid[] or a text[]; NULL when none. */
static Datum
keys_of_kind(const LedgerKeys *set, LedgerKind kind)
{
	Datum	   *ids = palloc(sizeof(Datum) * (set->count + 1));
	int			n = 0;
	int			i;

	for (i = set->runs; i < set->count; i++)
		if (set->keys[i].kind == kind)
			ids[n++] = kind == UUID_ROW ? UUIDPGetDatum(&set->keys[i].uuid)
				: CStringGetTextDatum(set->keys[i].text);
	if (n == 0)
		return (Datum) 0;
	return consumer_make_array(ids, NULL, n, kind == UUID_ROW ? UUIDOID : TEXTOID);
}

/* Mark known the keys of one kind kept in rows that the ledger's rows hold. */
static void
find_in_rows(LedgerKeys *set, int32 ledger_id, LedgerKind kind)
{
	Datum		values[2] = {Int32GetDatum(ledger_id), keys_of_kind(set, kind)};
	uint64		row;

	if (values[1] == (Datum) 0)
		return;
	run_ledger_statement(kind == UUID_ROW ? FIND_UUID_ROWS : FIND_TEXT_ROWS, values, SPI_OK_SELECT);
	for (row = 0; row < SPI_processed; row++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[row];
		bool		isnull;
		LedgerKey	held = {.kind = kind};
		LedgerKey  *found;

		if (kind == UUID_ROW)
			held.uuid = *DatumGetUUIDP(SPI_getbinval(tuple, SPI_tuptable->tupdesc, 1, &isnull));
		else
			held.text = worker_text_column(tuple, SPI_tuptable->tupdesc, 1);
		found = find_key(set, &held);
		if (found == NULL)
			elog(ERROR, "eventpipe consumer: the ledger returned an id the batch does not hold");
		found->known = true;
	}
}

/*
 * Lock the subscription's ledger until the transaction ends, then mark
 * duplicate every message to apply whose id the ledger holds, or that an
 * earlier message of the batch carries.  Called before the handlers and
 * the metrics, and consumer_record_event_ids() after them.
 */
void
consumer_find_duplicates(ConsumedMessage *messages, int count, int32 ledger_id)
{
	LedgerKeys	set = collect_keys(messages, count);
	int			i;

	if (set.count == 0)
		return;
	DirectFunctionCall2(pg_advisory_xact_lock_int4, Int32GetDatum(ledger_id),
						Int32GetDatum(LEDGER_LOCK));
	if (set.runs > 0)
		find_in_runs(&set, ledger_id);
	find_in_rows(&set, ledger_id, UUID_ROW);
	find_in_rows(&set, ledger_id, TEXT_ROW);
	for (i = 0; i < count; i++)
	{
		LedgerKey	key;
		LedgerKey  *found;

		if (messages[i].fate != MESSAGE_APPLIED)
			continue;
		ledger_key_of(messages[i].event_id, &key);
		found = find_key(&set, &key);
		Assert(found != NULL);
		if (found->known || found->first != i)
			messages[i].fate = MESSAGE_DUPLICATE;
	}
}

/*
 * Insert the runs of the keys kept in runs: the sorted keys cut where the
 * bucket changes and every RUN_MAX_IDS ids.
 */
static void
insert_runs(const LedgerKeys *set, int32 ledger_id)
{
	Datum	   *buckets = palloc(sizeof(Datum) * (set->runs + 1));
	Datum	   *runs = palloc(sizeof(Datum) * (set->runs + 1));
	Datum		values[3];
	int			n = 0;
	int			start = 0;

	while (start < set->runs)
	{
		int64		bucket = run_bucket(&set->keys[start].uuid);
		int			end = start + 1;
		bytea	   *ids;
		int			i;

		while (end < set->runs && end - start < RUN_MAX_IDS &&
			   run_bucket(&set->keys[end].uuid) == bucket)
			end++;
		ids = palloc(VARHDRSZ + (end - start) * UUID_LEN);
		SET_VARSIZE(ids, VARHDRSZ + (end - start) * UUID_LEN);
		for (i = start; i < end; i++)
			memcpy(VARDATA(ids) + (i - start) * UUID_LEN, set->keys[i].uuid.data, UUID_LEN);
		buckets[n] = Int64GetDatum(bucket);
		runs[n++] = PointerGetDatum(ids);
		start = end;
	}
	values[0] = Int32GetDatum(ledger_id);
	values[1] = consumer_make_array(buckets, NULL, n, INT8OID);
	values[2] = consumer_make_array(runs, NULL, n, BYTEAOID);
	run_ledger_statement(INSERT_RUNS, values, SPI_OK_INSERT);
}

/*
 * Record the ids of the messages applied, in the transaction that applies
 * them (consumer_find_duplicates() took the ledger's lock and left one
 * message to apply per id).  A dead-lettered message's id is not recorded:
 * it was not applied.
 */
void
consumer_record_event_ids(ConsumedMessage *messages, int count, int32 ledger_id)
{
	LedgerKeys	set = collect_keys(messages, count);

	if (set.runs > 0)
		insert_runs(&set, ledger_id);
	if (set.count > set.runs)
	{
		Datum		values[3] = {Int32GetDatum(ledger_id)};

		row_arrays(&set, &values[1], &values[2]);
		run_ledger_statement(INSERT_ROWS, values, SPI_OK_INSERT);
	}
}

/*
 * The ledger's upkeep, in a transaction of its own (eventpipe.ledger_upkeep:
 * partitions made ahead and, with drop_expired, those past retention_s
 * dropped).  Returns the end of the days the ledger has partitions for; 0
 * when the extension is not there.
 */
TimestampTz
consumer_keep_ledger(int retention_s, bool drop_expired)
{
	MemoryContext caller_context = worker_begin_transaction("eventpipe: keeping the dedup ledger");
	Datum		values[2] = {Int32GetDatum(retention_s), BoolGetDatum(drop_expired)};
	TimestampTz until = 0;

	if (consumer_extension_ready())
	{
		bool		isnull;

		worker_spi_connect();
		worker_run_statement(&statements[UPKEEP], values, NULL, SPI_OK_SELECT);
		until = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
												  1, &isnull));
		SPI_finish();
	}
	worker_end_transaction(caller_context);
	return until;
}
