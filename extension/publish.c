/*
 * publish.c
 *		Writing events into eventpipe.outbox: eventpipe_enqueue_event(), the
 *		one place that inserts an outbox row and arranges the relay's
 *		wake-up at commit (used by publish() and by the capture trigger),
 *		and eventpipe.publish(topic, key, payload, headers, event_type),
 *		which checks one event given in SQL and enqueues it in the caller's
 *		transaction, so it is committed or rolled back with the business
 *		write it belongs to.
 *
 * The insert runs with the privileges of the current user: publish() is
 * SECURITY DEFINER (the outbox is not writable by callers), the capture
 * trigger switches to the extension's owner around the call.  Its one
 * statement names everything schema-qualified and takes its values as
 * parameters, so the caller's search_path cannot redirect it.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include "eventpipe.h"

PG_FUNCTION_INFO_V1(eventpipe_publish);

/* ce_type when neither event_type nor a "type" member of the payload says */
#define DEFAULT_EVENT_TYPE "eventpipe.event"

static SPIPlanPtr insert_plan = NULL;

static pg_uuid_t *
new_event_id(void)
{
	pg_uuid_t  *uuid = palloc(sizeof(pg_uuid_t));

	if (!pg_strong_random(uuid->data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random event id")));
	/* RFC 4122 version 4, variant 1 */
	uuid->data[6] = (uuid->data[6] & 0x0f) | 0x40;
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;
	return uuid;
}

/* The payload's top-level "type" member, if it is a non-empty string. */
static text *
payload_type(Jsonb *payload)
{
	JsonbValue	key;
	JsonbValue *found;

	if (!JB_ROOT_IS_OBJECT(payload) || JB_ROOT_IS_SCALAR(payload))
		return NULL;
	key.type = jbvString;
	key.val.string.val = "type";
	key.val.string.len = 4;
	found = findJsonbValueFromContainer(&payload->root, JB_FOBJECT, &key);
	if (found == NULL || found->type != jbvString || found->val.string.len == 0)
		return NULL;
	return cstring_to_text_with_len(found->val.string.val, found->val.string.len);
}

static text *
resolve_event_type(FunctionCallInfo fcinfo, Jsonb *payload)
{
	text	   *type;

	if (!PG_ARGISNULL(4))
	{
		type = PG_GETARG_TEXT_PP(4);
		if (VARSIZE_ANY_EXHDR(type) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("event_type must not be empty"),
					 errhint("Pass NULL to take the payload's \"type\" member.")));
		return type;
	}
	type = payload_type(payload);
	return type ? type : cstring_to_text(DEFAULT_EVENT_TYPE);
}

static void
insert_outbox_row(pg_uuid_t *event_id, text *topic, text *key, Jsonb *payload,
				  Jsonb *headers, text *event_type)
{
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	int			rc;

	values[0] = UUIDPGetDatum(event_id);
	values[1] = PointerGetDatum(topic);
	values[2] = PointerGetDatum(key);
	values[3] = JsonbPGetDatum(payload);
	values[4] = PointerGetDatum(headers);
	values[5] = PointerGetDatum(event_type);
	if (key == NULL)
		nulls[2] = 'n';
	if (headers == NULL)
		nulls[4] = 'n';

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (insert_plan == NULL)
	{
		Oid			types[6] = {UUIDOID, TEXTOID, TEXTOID, JSONBOID, JSONBOID, TEXTOID};
		SPIPlanPtr	plan;

		plan = SPI_prepare("INSERT INTO eventpipe.outbox"
						   " (event_id, topic, key, payload, headers, event_type)"
						   " VALUES ($1, $2, $3, $4, $5, $6)",
						   6, types);
		if (plan == NULL)
			elog(ERROR, "could not prepare the outbox insert: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		insert_plan = plan;
	}
	rc = SPI_execute_plan(insert_plan, values, nulls, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "outbox insert failed: %s", SPI_result_code_string(rc));
	SPI_finish();
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

	insert_outbox_row(event_id, topic, key, payload, headers, event_type);
	eventpipe_wake_relay_at_commit();
	return event_id;
}

Datum
eventpipe_publish(PG_FUNCTION_ARGS)
{
	text	   *topic;
	text	   *key = NULL;
	Jsonb	   *payload;
	Jsonb	   *headers = NULL;
	pg_uuid_t  *event_id;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("topic must not be null")));
	topic = PG_GETARG_TEXT_PP(0);
	eventpipe_check_topic_name(text_to_cstring(topic));

	if (!PG_ARGISNULL(1))
		key = PG_GETARG_TEXT_PP(1);

	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("payload must not be null"),
				 errhint("Publish '{}'::jsonb for an event without data.")));
	payload = PG_GETARG_JSONB_P(2);

	if (!PG_ARGISNULL(3))
	{
		headers = PG_GETARG_JSONB_P(3);
		eventpipe_check_user_headers(headers);
	}

	event_id = eventpipe_enqueue_event(topic, key, payload, headers,
									   resolve_event_type(fcinfo, payload));

	PG_RETURN_UUID_P(event_id);
}
