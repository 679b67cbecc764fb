/*
 * outbox_row.c
 *		An outbox row copied out of the database as an OutboxEvent, in the
 *		current memory context: its text columns as C strings, its payload
 *		as the JSON text of the message's value (payload_text.c), its
 *		headers as a jsonb copy.  Both claims use it: outbox_scan.c with the
 *		heap tuple's columns, found by name; outbox.c with the SQL claim's
 *		output columns, which come in OutboxColumn order.
 */
#include "postgres.h"

#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "relay.h"

const char *const outbox_column_names[OUTBOX_COLUMNS] = {
	[COL_ID] = "id",
	[COL_EVENT_ID] = "event_id",
	[COL_TOPIC] = "topic",
	[COL_KEY] = "key",
	[COL_PAYLOAD] = "payload",
	[COL_HEADERS] = "headers",
	[COL_EVENT_TYPE] = "event_type",
	[COL_CREATED_AT] = "created_at",
	[COL_ATTEMPTS] = "attempts",
};

/* The uuid as uuid_out writes it: lower-case hex in groups of 8-4-4-4-12. */
static void
uuid_text(const pg_uuid_t *uuid, char *out)
{
	static const char hex[] = "0123456789abcdef";
	int			i;

	for (i = 0; i < UUID_LEN; i++)
	{
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*out++ = '-';
		*out++ = hex[uuid->data[i] >> 4];
		*out++ = hex[uuid->data[i] & 0x0F];
	}
	*out = '\0';
}

static char *
text_copy(Datum value, int *len)
{
	text	   *t = DatumGetTextPP(value);

	if (len)
		*len = VARSIZE_ANY_EXHDR(t);
	return text_to_cstring(t);
}

/*
 * The payload's JSON text into event, or, when that text is longer than the
 * producer takes in a message (message.max.bytes), the event refused as
 * too large, as librdkafka would refuse it: it goes to the dead letters,
 * its text never written whole (it could pass what one allocation may
 * hold, and fail every claim of its shard).
 */
static void
copy_payload_text(OutboxEvent *event, Jsonb *payload)
{
	StringInfoData text;

	if (payload_json_text(payload, &text, kafka_producer_message_limit()))
	{
		event->payload = text.data;
		event->payload_len = text.len;
		return;
	}
	pfree(text.data);
	event->payload = pstrdup("");
	event->payload_len = 0;
	event->reported = true;
	event->refused_on_the_spot = true;
	event->error = RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE;
}

/*
 * Fill event from a row's values and nulls, where columns[c] is the
 * attribute number of column c; ctid is where the row was read.  Returns
 * the bytes of memory the event's copies hold, which bound a batch.
 */
Size
outbox_copy_event(OutboxEvent *event, const Datum *values, const bool *nulls,
				  const AttrNumber *columns, ItemPointer ctid)
{
	Datum		payload = values[columns[COL_PAYLOAD] - 1];
	Jsonb	   *detoasted = DatumGetJsonbP(payload);

	memset(event, 0, sizeof(OutboxEvent));
	event->id = DatumGetInt64(values[columns[COL_ID] - 1]);
	event->ctid = *ctid;
	event->event_uuid = *DatumGetUUIDP(values[columns[COL_EVENT_ID] - 1]);
	StaticAssertStmt(sizeof(event->event_id) == UUID_LEN * 2 + 4 + 1,
					 "event_id holds a uuid's text");
	uuid_text(&event->event_uuid, event->event_id);
	event->topic = text_copy(values[columns[COL_TOPIC] - 1], NULL);
	if (!nulls[columns[COL_KEY] - 1])
		event->key = text_copy(values[columns[COL_KEY] - 1], &event->key_len);
	copy_payload_text(event, detoasted);
	if ((Pointer) detoasted != DatumGetPointer(payload))
		pfree(detoasted);
	if (!nulls[columns[COL_HEADERS] - 1])
		event->headers = DatumGetJsonbPCopy(values[columns[COL_HEADERS] - 1]);
	event->event_type = text_copy(values[columns[COL_EVENT_TYPE] - 1], NULL);
	event->created_at = DatumGetTimestampTz(values[columns[COL_CREATED_AT] - 1]);
	event->attempts = DatumGetInt32(values[columns[COL_ATTEMPTS] - 1]);
	return GetMemoryChunkSpace(event->payload) +
		(event->key ? GetMemoryChunkSpace(event->key) : 0) +
		(event->headers ? GetMemoryChunkSpace(event->headers) : 0);
}
