/*
 * publish.c
 *		eventpipe.publish(topic, key, payload, headers, event_type): checks
 *		one event and enqueues it (outbox_insert.c) in the caller's
 *		transaction, so it is committed or rolled back with the business
 *		write it belongs to.
 *
 * The function is SECURITY DEFINER (the outbox is not writable by
 * callers); the insert names the outbox schema-qualified, so the caller's
 * search_path cannot redirect it.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include "eventpipe.h"

PG_FUNCTION_INFO_V1(eventpipe_publish);

/* ce_type when neither event_type nor a "type" member of the payload says */
#define DEFAULT_EVENT_TYPE "eventpipe.event"

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
