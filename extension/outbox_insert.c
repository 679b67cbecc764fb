/*
 * outbox_insert.c
 *		eventpipe_enqueue_event(): the one place that writes an event into
 *		eventpipe.outbox, in the current transaction, and has the relay
 *		woken when that transaction commits.  Used by publish() and by the
 *		capture trigger.
 *
 * The row is inserted directly, through the executor's single-row helpers
 * (as logical replication's apply worker does): heap insert, NOT NULL
 * checks, index entries, triggers of the outbox if any.  The capture
 * trigger runs this once per changed row, on users' write paths, where an
 * SQL INSERT through a kept SPI plan would spend its time starting an
 * executor for one row.  Columns are filled by name; an
 * outbox column this file does not know is an error if it has a default
 * or is NOT NULL (a later version that adds one must fill it here).
 *
 * The current user must be allowed to insert into the outbox: publish() is
 * SECURITY DEFINER, the capture trigger switches to the extension's owner.
 */
#include "postgres.h"

#include "access/table.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "eventpipe.h"
#include "compat.h"

/*
 * Strong random bytes for event ids, drawn EVENT_IDS_PER_DRAW ids at a
 * time: each pg_strong_random() call has a fixed cost (OpenSSL checks its
 * state and the pid, and sets up its generator), too much to pay on a
 * user's write path for every 16 bytes.  The bytes are
 * as strong either way.  The pool is filled in the backend that uses it,
 * never in the postmaster, so no two processes share it.  Used bytes are
 * zeroed.
 */
#define EVENT_IDS_PER_DRAW 64
static uint8 random_pool[UUID_LEN * EVENT_IDS_PER_DRAW];
static int	random_pool_used = sizeof(random_pool);

/*
 * A new event id (the ce_id header): a version 7 UUID (RFC 9562), whose
 * first 48 bits are the Unix time in milliseconds and the other 74 free
 * bits strong random ones.  Ids of a later millisecond sort later, so a
 * consumer's dedup ledger keyed by ce_id (eventpipe's) adds new ids near
 * the end of its index instead of anywhere in it.
 */
static pg_uuid_t *
new_event_id(void)
{
	pg_uuid_t  *uuid = palloc(sizeof(pg_uuid_t));
	TimestampTz now = GetCurrentTimestamp();
	uint64		unix_ms = (uint64) (now / 1000) +
		(uint64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;
	int			i;

	if (random_pool_used == sizeof(random_pool))
	{
		if (!pg_strong_random(random_pool, sizeof(random_pool)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate a random event id")));
		random_pool_used = 0;
	}
	memcpy(uuid->data, random_pool + random_pool_used, UUID_LEN);
	memset(random_pool + random_pool_used, 0, UUID_LEN);
	random_pool_used += UUID_LEN;
	for (i = 0; i < 6; i++)
		uuid->data[i] = (uint8) (unix_ms >> (8 * (5 - i)));
	/* version 7, variant 10 */
	uuid->data[6] = (uuid->data[6] & 0x0f) | 0x70;
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;
	return uuid;
}

/* eventpipe.outbox, opened for an insert by the current user */
static Relation
open_outbox(void)
{
	Oid			relid;
	AclResult	aclresult;

	relid = RangeVarGetRelid(makeRangeVar("eventpipe", "outbox", -1),
							 RowExclusiveLock, false);
	aclresult = pg_class_aclcheck(relid, GetUserId(), ACL_INSERT);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_TABLE, "outbox");
	return table_open(relid, NoLock);
}

/*
 * The identity sequence of the outbox's column id_attnum, looked up in
 * pg_depend once per outbox and remembered; InvalidOid (missing_ok) if it
 * has none.  Also read by the relay (outbox.c), to know whether ids are
 * drawn in order.
 */
Oid
eventpipe_outbox_id_sequence(Relation outbox, AttrNumber id_attnum, bool missing_ok)
{
	static Oid	sequence_outbox = InvalidOid;
	static Oid	id_sequence = InvalidOid;
	Oid			found;

	if (sequence_outbox == RelationGetRelid(outbox))
		return id_sequence;
	found = getIdentitySequence(outbox, id_attnum, missing_ok);
	if (OidIsValid(found))
	{
		id_sequence = found;
		sequence_outbox = RelationGetRelid(outbox);
	}
	return found;
}

static int64
next_outbox_id(Relation outbox, AttrNumber id_attnum)
{
	return nextval_internal(eventpipe_outbox_id_sequence(outbox, id_attnum, false), false);
}

/* Fills the slot's columns, by name, for one new event; returns its id */
static int64
fill_outbox_row(Relation outbox, TupleTableSlot *slot, pg_uuid_t *event_id,
				text *topic, text *key, Jsonb *payload, Jsonb *headers,
				text *event_type)
{
	TupleDesc	desc = RelationGetDescr(outbox);
	int			i;
	int64		id = 0;

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *name = NameStr(att->attname);
		Datum		value = (Datum) 0;
		bool		isnull = false;

		if (att->attisdropped)
			isnull = true;
		else if (strcmp(name, "id") == 0)
		{
			id = next_outbox_id(outbox, att->attnum);
			value = Int64GetDatum(id);
		}
		else if (strcmp(name, "event_id") == 0)
			value = UUIDPGetDatum(event_id);
		else if (strcmp(name, "topic") == 0)
			value = PointerGetDatum(topic);
		else if (strcmp(name, "key") == 0)
		{
			value = PointerGetDatum(key);
			isnull = (key == NULL);
		}
		else if (strcmp(name, "payload") == 0)
			value = JsonbPGetDatum(payload);
		else if (strcmp(name, "headers") == 0)
		{
			value = PointerGetDatum(headers);
			isnull = (headers == NULL);
		}
		else if (strcmp(name, "event_type") == 0)
			value = PointerGetDatum(event_type);
		else if (strcmp(name, "created_at") == 0)
			value = TimestampTzGetDatum(GetCurrentTimestamp());
		else if (strcmp(name, "attempts") == 0)
			value = Int32GetDatum(0);
		else if (att->atthasdef || att->attnotnull)
			elog(ERROR, "eventpipe.outbox column \"%s\" is not filled by the outbox insert", name);
		else
			isnull = true;
		slot->tts_values[i] = value;
		slot->tts_isnull[i] = isnull;
	}
	ExecStoreVirtualTuple(slot);
	return id;
}

/*
 * Writes one checked event (topic legal, headers valid, event_type
 * non-empty) to the outbox in the current transaction and has the relay
 * woken when it commits.  key and headers may be NULL.  Returns the new
 * event id.
 */
pg_uuid_t *
eventpipe_enqueue_event(text *topic, text *key, Jsonb *payload, Jsonb *headers,
						text *event_type)
{
	pg_uuid_t  *event_id = new_event_id();
	Relation	outbox = open_outbox();
	EState	   *estate = CreateExecutorState();
	RangeTblEntry *rte = makeNode(RangeTblEntry);
	ResultRelInfo *result_rel = makeNode(ResultRelInfo);
	TupleTableSlot *slot;
	int64		id;

	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(outbox);
	rte->relkind = RELKIND_RELATION;
	rte->rellockmode = RowExclusiveLock;
	compat_init_range_table_of_one(estate, rte);
	InitResultRelInfo(result_rel, outbox, 1, NULL, 0);
	slot = ExecInitExtraTupleSlot(estate, RelationGetDescr(outbox), &TTSOpsVirtual);
	id = fill_outbox_row(outbox, slot, event_id, topic, key, payload, headers, event_type);

	AfterTriggerBeginQuery();
	ExecOpenIndices(result_rel, false);
	ExecSimpleRelationInsert(result_rel, estate, slot);
	ExecCloseIndices(result_rel);
	AfterTriggerEndQuery(estate);

	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
	table_close(outbox, NoLock);

	eventpipe_wake_relay_at_commit(id);
	return event_id;
}
