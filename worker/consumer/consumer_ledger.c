/*
 * consumer_ledger.c
 *		The dedup ledger (eventpipe.event_handled): claiming the ids of a
 *		batch's messages in the batch's transaction, so that a message seen
 *		again becomes a duplicate; forgetting the id of a message that was
 *		dead-lettered; pruning rows past their retention.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/uuid.h"

#include "consumer.h"
#include "consumer_sql.h"
#include "worker/worker_loop.h"

typedef enum LedgerStatement
{
	INSERT_NEW_IDS,
	INSERT_IDS_NOT_THERE,
	FORGET_ID,
	PRUNE_LEDGER,
	LEDGER_STATEMENTS
} LedgerStatement;

static WorkerStatement statements[LEDGER_STATEMENTS] = {
	[INSERT_NEW_IDS] = {
		"insert new ledger rows",
		"INSERT INTO eventpipe.event_handled (subscription_id, event_uuid, event_text)"
		" SELECT $1, u.id, u.text"
		" FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.uuid[]),"
		"                 pg_catalog.unnest($3::pg_catalog.text[])) AS u(id, text)",
		false, 3, {INT4OID, UUIDARRAYOID, TEXTARRAYOID}
	},
	[INSERT_IDS_NOT_THERE] = {
		"insert the ledger rows not there",
		"INSERT INTO eventpipe.event_handled AS h"
		" (subscription_id, event_uuid, event_text)"
		" SELECT $1, u.id, u.text"
		" FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.uuid[]),"
		"                 pg_catalog.unnest($3::pg_catalog.text[])) AS u(id, text)"
		" ON CONFLICT DO NOTHING RETURNING h.event_uuid, h.event_text",
		false, 3, {INT4OID, UUIDARRAYOID, TEXTARRAYOID}
	},
	[FORGET_ID] = {
		"remove a dead letter's ledger row",
		"DELETE FROM eventpipe.event_handled"
		" WHERE subscription_id OPERATOR(pg_catalog.=) $1"
		" AND (event_uuid OPERATOR(pg_catalog.=) $2"
		"      OR event_text OPERATOR(pg_catalog.=) $3)",
		false, 3, {INT4OID, UUIDOID, TEXTOID}
	},
	[PRUNE_LEDGER] = {
		"prune the dedup ledger",
		"DELETE FROM eventpipe.event_handled"
		" WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
		"  SELECT h.ctid FROM eventpipe.event_handled AS h"
		"  WHERE h.subscription_id OPERATOR(pg_catalog.=)"
		"      (SELECT s.id FROM eventpipe.subscriptions AS s"
		"        WHERE s.name OPERATOR(pg_catalog.=) $1)"
		"    AND h.handled_at OPERATOR(pg_catalog.<)"
		"        (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $2))"
		"  LIMIT $3))",
		false, 3, {TEXTOID, INT4OID, INT4OID}
	},
};

/*
 * A message's key in the dedup ledger: its id as a uuid when the id is
 * exactly the canonical text of one (lower-case hex, 8-4-4-4-12: what
 * uuid_out prints, so the text and the uuid stand for each other one to
 * one), else as text.  Two distinct ids are always two distinct keys.
 */
typedef struct LedgerKey
{
	bool		is_uuid;
	pg_uuid_t	uuid;
	const char *text;			/* when !is_uuid */
	int			first;			/* the batch's first message with this id */
	bool		is_new;			/* its ledger row was inserted */
} LedgerKey;

static int
hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static void
ledger_key_of(const char *id, LedgerKey *key)
{
	int			byte = 0;
	int			i;

	key->is_uuid = false;
	key->text = id;
	key->is_new = false;
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
	key->is_uuid = true;
}

/* uuids first, then texts; each in byte order (the indexes' order too) */
static int
compare_ledger_keys(const void *a, const void *b)
{
	const LedgerKey *x = (const LedgerKey *) a;
	const LedgerKey *y = (const LedgerKey *) b;

	if (x->is_uuid != y->is_uuid)
		return x->is_uuid ? -1 : 1;
	return x->is_uuid ? memcmp(x->uuid.data, y->uuid.data, UUID_LEN) : strcmp(x->text, y->text);
}

static int
compare_ledger_keys_then_first(const void *a, const void *b)
{
	int			order = compare_ledger_keys(a, b);

	if (order != 0)
		return order;
	return ((const LedgerKey *) a)->first - ((const LedgerKey *) b)->first;
}

/*
 * Did the last batch's ledger rows meet ids already there?  Then the next
 * batch's go straight to INSERT ... ON CONFLICT DO NOTHING.
 */
static bool ledger_met_duplicates = false;

static bool
is_unique_violation(int sqlerrcode)
{
	return sqlerrcode == ERRCODE_UNIQUE_VIOLATION;
}

/* Insert the ledger rows of values (see consumer_claim_event_ids), all new. */
static void
insert_new_ledger_rows(Datum *values)
{
	worker_run_statement(&statements[INSERT_NEW_IDS], values, NULL, SPI_OK_INSERT);
}

/*
 * Insert the ledger rows of values, those not there yet; the keys of the
 * ones inserted turn is_new.
 */
static void
insert_ledger_rows_not_there(Datum *values, LedgerKey *keys, int distinct)
{
	uint64		row;

	worker_run_statement(&statements[INSERT_IDS_NOT_THERE], values, NULL, SPI_OK_INSERT_RETURNING);
	for (row = 0; row < SPI_processed; row++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[row];
		bool		isnull;
		Datum		uuid = SPI_getbinval(tuple, SPI_tuptable->tupdesc, 1, &isnull);
		LedgerKey	inserted;
		LedgerKey  *found;

		inserted.is_uuid = !isnull;
		if (inserted.is_uuid)
			inserted.uuid = *DatumGetUUIDP(uuid);
		else
			inserted.text = worker_text_column(tuple, SPI_tuptable->tupdesc, 2);
		found = bsearch(&inserted, keys, distinct, sizeof(LedgerKey), compare_ledger_keys);
		if (found == NULL)
			elog(ERROR, "eventpipe consumer: the ledger returned an id the batch does not hold");
		found->is_new = true;
	}
	ledger_met_duplicates = SPI_processed < (uint64) distinct;
}

/*
 * A message to apply becomes a duplicate unless its ledger row is new and
 * it is the first message of the batch with that id.
 */
static void
mark_duplicates(ConsumedMessage *messages, int count, LedgerKey *keys, int distinct)
{
	int			i;

	for (i = 0; i < count; i++)
	{
		LedgerKey	key;
		LedgerKey  *found;

		if (messages[i].fate != MESSAGE_APPLIED)
			continue;
		ledger_key_of(messages[i].event_id, &key);
		found = bsearch(&key, keys, distinct, sizeof(LedgerKey), compare_ledger_keys);
		Assert(found != NULL);
		if (!found->is_new || found->first != i)
			messages[i].fate = MESSAGE_DUPLICATE;
	}
}

/*
 * Record the ledger rows of the messages to apply; those already there
 * become duplicates.  Within the batch, the first of several messages with
 * one id is the one applied.  The keys go to the server sorted and without
 * repeats, in one statement.
 *
 * Most batches hold only new ids: their rows go in with a plain INSERT in
 * a subtransaction, without the speculative insertion of INSERT ... ON
 * CONFLICT, which costs per row.  An id already there stops it
 * with a unique violation, one per batch, never one per duplicate; the
 * subtransaction is rolled back and the rows go in with INSERT ... ON
 * CONFLICT DO NOTHING.  So do the batches after one that met a duplicate,
 * until one meets none.
 */
void
consumer_claim_event_ids(ConsumedMessage *messages, int count, int32 ledger_id)
{
	LedgerKey  *keys = palloc(sizeof(LedgerKey) * (count + 1));
	Datum	   *uuids = palloc(sizeof(Datum) * (count + 1));
	bool	   *uuid_nulls = palloc(sizeof(bool) * (count + 1));
	Datum	   *texts = palloc(sizeof(Datum) * (count + 1));
	bool	   *text_nulls = palloc(sizeof(bool) * (count + 1));
	Datum		values[3];
	int			n = 0;
	int			distinct = 0;
	bool		all_new = false;
	int			i;

	for (i = 0; i < count; i++)
		if (messages[i].fate == MESSAGE_APPLIED)
		{
			ledger_key_of(messages[i].event_id, &keys[n]);
			keys[n++].first = i;
		}
	if (n == 0)
		return;
	qsort(keys, n, sizeof(LedgerKey), compare_ledger_keys_then_first);
	for (i = 0; i < n; i++)
	{
		if (distinct > 0 && compare_ledger_keys(&keys[distinct - 1], &keys[i]) == 0)
			continue;
		keys[distinct] = keys[i];
		uuid_nulls[distinct] = !keys[i].is_uuid;
		uuids[distinct] = keys[i].is_uuid ? UUIDPGetDatum(&keys[distinct].uuid) : (Datum) 0;
		text_nulls[distinct] = keys[i].is_uuid;
		texts[distinct] = keys[i].is_uuid ? (Datum) 0 : CStringGetTextDatum(keys[i].text);
		distinct++;
	}

	values[0] = Int32GetDatum(ledger_id);
	values[1] = consumer_make_array(uuids, uuid_nulls, distinct, UUIDOID);
	values[2] = consumer_make_array(texts, text_nulls, distinct, TEXTOID);
	if (!ledger_met_duplicates)
	{
		char	   *error;

		CONSUMER_IN_SUBTRANSACTION(error, is_unique_violation, insert_new_ledger_rows(values));
		all_new = (error == NULL);
	}
	if (all_new)
	{
		for (i = 0; i < distinct; i++)
			keys[i].is_new = true;
	}
	else
		insert_ledger_rows_not_there(values, keys, distinct);
	mark_duplicates(messages, count, keys, distinct);
}

/* A dead-lettered message's id leaves the ledger: it was not applied. */
void
consumer_forget_event_id(const ConsumedMessage *message, int32 ledger_id)
{
	LedgerKey	key;
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};

	ledger_key_of(message->event_id, &key);
	values[0] = Int32GetDatum(ledger_id);
	values[1] = key.is_uuid ? UUIDPGetDatum(&key.uuid) : (Datum) 0;
	values[2] = key.is_uuid ? (Datum) 0 : CStringGetTextDatum(key.text);
	nulls[key.is_uuid ? 2 : 1] = 'n';
	worker_run_statement(&statements[FORGET_ID], values, nulls, SPI_OK_DELETE);
}

/*
 * Delete up to limit ledger rows of the subscription older than retention
 * seconds; returns how many.  In a transaction of its own.
 */
int64
consumer_prune_ledger(const char *name, int retention_s, int limit)
{
	MemoryContext caller_context = worker_begin_transaction("eventpipe: pruning the dedup ledger");
	Datum		values[3] = {CStringGetTextDatum(name), Int32GetDatum(retention_s),
	Int32GetDatum(limit)};
	int64		pruned = 0;

	if (consumer_extension_ready())
	{
		worker_spi_connect();
		worker_run_statement(&statements[PRUNE_LEDGER], values, NULL, SPI_OK_DELETE);
		pruned = (int64) SPI_processed;
		SPI_finish();
	}
	worker_end_transaction(caller_context);
	return pruned;
}
