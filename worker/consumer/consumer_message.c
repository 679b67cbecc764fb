/*
 * consumer_message.c
 *		What a Kafka message means to a subscription: whether it can be
 *		applied at all (a non-empty UTF-8 JSON value), its event type (the
 *		ce_type header, else the payload's "type"), its dedup key (the ce_id
 *		header, else the payload's dedup_field, else topic/partition/offset),
 *		the metric effects and handlers its type calls for, and the changes
 *		it makes to the mirrors whose table it concerns (mirror_events.c:
 *		a tombstone, a null value, too, by its topic).  Field names
 *		(key_field, value_field, dedup_field) may be dotted paths into nested
 *		objects.
 *
 * A dead letter applied again (consumer_control.c) is read the same way,
 * from its stored bytes and headers; it has no Kafka timestamp.
 *
 * Everything here is in memory: a message that cannot be applied gets an
 * error text, later stored with its raw bytes in consumer_dead_letters.
 * Parsing a value as JSON may raise an ERROR; it is caught here, without a
 * subtransaction, because the JSON parser only allocates memory (it takes
 * no lock, pins no buffer), so there is nothing to release but the error.
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "pgtime.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "consumer.h"
#include "consumer_sql.h"

/* The longest event id the dedup ledger keeps: see event_id_fault() */
#define MAX_EVENT_ID_BYTES 1024

/* Is this text fit for a text column and a JSON string (UTF-8, no NUL)? */
static bool
is_clean_text(const char *bytes, size_t len)
{
	return memchr(bytes, '\0', len) == NULL &&
		pg_verify_mbstr(PG_UTF8, bytes, (int) len, true);
}

/* The last header of that name as a string, or NULL (absent or not clean text). */
static char *
header_text(const ConsumedMessage *message, const char *name)
{
	const void *value;
	size_t		size;

	if (message->headers == NULL)
		return NULL;
	if (rd_kafka_header_get_last(message->headers, name, &value, &size) != RD_KAFKA_RESP_ERR_NO_ERROR ||
		value == NULL || size == 0 || !is_clean_text(value, size))
		return NULL;
	return pnstrdup(value, size);
}

/*
 * A number field read as numeric, and its text made what numeric_out
 * writes ("1e2" is "100"), as a lookup in jsonb gives it.
 */
static void
read_number(PayloadField *field)
{
	field->number = DirectFunctionCall3(numeric_in, CStringGetDatum(field->text),
										ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
	field->text = DatumGetCString(DirectFunctionCall1(numeric_out, field->number));
}

/* The value as text in the database encoding (checked UTF-8 without NUL). */
static char *
value_text(const ConsumedMessage *message)
{
	return pg_any_to_server(pnstrdup(message->value, message->value_len),
							(int) message->value_len, PG_UTF8);
}

/* Read the rules' fields of the value into message->fields. */
static void
read_fields(ConsumedMessage *message, const ConsumerRules *rules)
{
	char	   *text = value_text(message);
	PayloadField *fields = palloc(sizeof(PayloadField) * (rules->nfields + 1));
	int			i;

	payload_fields_read(text, strlen(text), rules->nfields, rules->fields, fields);
	for (i = 0; i < rules->nfields; i++)
		if (fields[i].kind == PAYLOAD_FIELD_NUMBER)
			read_number(&fields[i]);
	message->fields = fields;
}

/* Make message->payload, the whole value as jsonb, for a handler. */
static void
read_jsonb(ConsumedMessage *message, const ConsumerRules *rules)
{
	message->payload = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
														  CStringGetDatum(value_text(message))));
}

/* Why the value cannot be JSON text at all (empty, a NUL byte, not UTF-8), or NULL. */
static char *
unreadable_value(const ConsumedMessage *message)
{
	if (message->value == NULL || message->value_len == 0)
		return pstrdup("empty value");
	if (memchr(message->value, '\0', message->value_len) != NULL)
		return pstrdup("value contains a NUL byte");
	if (!pg_verify_mbstr(PG_UTF8, message->value, (int) message->value_len, true))
		return pstrdup("value is not valid UTF-8");
	return NULL;
}

/*
 * Read a readable value (see unreadable_value) with reader; returns an
 * error text (the value is not valid JSON, or holds a number out of
 * range) or NULL.
 */
static char *
read_value(ConsumedMessage *message, const ConsumerRules *rules,
		   void (*reader) (ConsumedMessage *, const ConsumerRules *))
{
	MemoryContext context = CurrentMemoryContext;
	char	   *volatile error = NULL;

	PG_TRY();
	{
		reader(message, rules);
	}
	PG_CATCH();
	{
		ErrorData  *edata = consumer_caught_data_error(context);

		error = edata->detail
			? psprintf("value is not valid JSON: %s: %s", edata->message, edata->detail)
			: psprintf("value is not valid JSON: %s", edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	return error;
}

/* A field's text: a string's, or a number's; NULL for anything else or none. */
static char *
field_text(const ConsumedMessage *message, int slot)
{
	const PayloadField *field;

	if (slot < 0 || message->fields == NULL)
		return NULL;
	field = &message->fields[slot];
	return field->kind == PAYLOAD_FIELD_STRING || field->kind == PAYLOAD_FIELD_NUMBER
		? field->text : NULL;
}

/* The place of a field name in the rules' fields, added if new. */
static int
field_slot(ConsumerRules *rules, const char *name)
{
	int			i;

	for (i = 0; i < rules->nfields; i++)
		if (strcmp(rules->fields[i].name, name) == 0)
			return i;
	payload_field_name_init(&rules->fields[rules->nfields], name);
	return rules->nfields++;
}

/*
 * The payload fields interpreting a message reads, each named once, in
 * the context of rules: "type", the subscription's dedup_field, every
 * rule's key and value fields, and the table names of the mirrors' formats
 * (mirror_events.c).
 */
void
consumer_message_fields(ConsumerRules *rules, const Subscription *subscription)
{
	bool		eventpipe_mirrors = false;
	bool		debezium_mirrors = false;
	int			i;

	rules->nfields = 0;
	rules->fields = palloc(sizeof(PayloadFieldName) * (2 + 2 * rules->nmetrics + MIRROR_FIELDS));
	rules->type_slot = field_slot(rules, "type");
	rules->dedup_slot = subscription->dedup_field ? field_slot(rules, subscription->dedup_field) : -1;
	for (i = 0; i < rules->nmetrics; i++)
	{
		MetricRule *rule = &rules->metrics[i];

		rule->key_slot = field_slot(rules, rule->key_field);
		rule->value_slot = rule->value_field ? field_slot(rules, rule->value_field) : -1;
	}
	for (i = 0; i < rules->nmirrors; i++)
	{
		debezium_mirrors |= rules->mirrors[i].debezium;
		eventpipe_mirrors |= !rules->mirrors[i].debezium;
	}
	for (i = 0; i < MIRROR_FIELDS; i++)
		rules->mirror_slots[i] = -1;
	if (eventpipe_mirrors)
		rules->mirror_slots[MIRROR_FIELD_TABLE] = field_slot(rules, "table");
	if (debezium_mirrors)
	{
		rules->mirror_slots[MIRROR_FIELD_SCHEMA] = field_slot(rules, "source.schema");
		rules->mirror_slots[MIRROR_FIELD_SOURCE_TABLE] = field_slot(rules, "source.table");
		rules->mirror_slots[MIRROR_FIELD_WRAPPED_SCHEMA] = field_slot(rules, "payload.source.schema");
		rules->mirror_slots[MIRROR_FIELD_WRAPPED_TABLE] = field_slot(rules, "payload.source.table");
	}
}

/* The dedup key: ce_id, else payload[dedup_field], else the message's place. */
static char *
event_id_of(ConsumedMessage *message, const ConsumerRules *rules)
{
	char	   *id = header_text(message, "ce_id");

	if (id == NULL)
		id = field_text(message, rules->dedup_slot);
	if (id == NULL || id[0] == '\0')
		id = psprintf("%s/%d/%lld", message->topic, (int) message->partition,
					  (long long) message->offset);
	return id;
}

/*
 * Why an event id cannot be kept in the dedup ledger, or NULL.  Its index
 * takes entries of a few kB at most; a longer id would fail the ledger's
 * insert for the whole batch, again at every retry, and no message would
 * be found at fault.
 */
static char *
event_id_fault(const char *event_id)
{
	size_t		len = strlen(event_id);

	if (len <= MAX_EVENT_ID_BYTES)
		return NULL;
	return psprintf("event id (ce_id or dedup_field) of %zu bytes is longer than the %d bytes the dedup ledger keeps",
					len, MAX_EVENT_ID_BYTES);
}

/* The effect of one rule, or an error text. */
static char *
metric_effect(ConsumedMessage *message, const ConsumerRules *rules, int rule)
{
	const MetricRule *metric = &rules->metrics[rule];
	MetricEffect *effect = palloc(sizeof(MetricEffect));
	char	   *key;

	effect->rule = rule;
	key = field_text(message, metric->key_slot);
	if (key == NULL)
		return psprintf("key field \"%s\" is missing or not a string or number",
						metric->key_field);
	effect->key = CStringGetTextDatum(key);
	if (metric->value_field == NULL)
		effect->value = (Datum) 0;
	else
	{
		if (message->fields[metric->value_slot].kind != PAYLOAD_FIELD_NUMBER)
			return psprintf("value field \"%s\" is missing or not a number",
							metric->value_field);
		effect->value = message->fields[metric->value_slot].number;
	}
	message->effects = lappend(message->effects, effect);
	return NULL;
}

/*
 * The fate interpreting found: dead with an error, unmatched with nothing
 * to do, else applied, its id then kept in the ledger (if it can be).
 */
static void
settle_fate(ConsumedMessage *message)
{
	bool		nothing_to_do = message->effects == NIL && message->handlers == NIL &&
		message->mirror_changes == NIL;

	if (message->error == NULL && !nothing_to_do)
		message->error = event_id_fault(message->event_id);
	if (message->error != NULL)
	{
		message->fate = MESSAGE_DEAD;
		message->effects = NIL;
		message->handlers = NIL;
		message->mirror_changes = NIL;
	}
	else if (nothing_to_do)
		message->fate = MESSAGE_UNMATCHED;
	else
		message->fate = MESSAGE_APPLIED;	/* unless the ledger knows it */
}

/* Work out what the message means, in the current memory context. */
static void
interpret(ConsumedMessage *message, const ConsumerRules *rules)
{
	List	   *mirrors = NIL;
	int			i;

	/* a tombstone deletes its key from the mirrors of its topic; any other is an empty value */
	if (message->value == NULL && rules->nmirrors > 0 &&
		(mirrors = mirror_events_of_topic(message, rules)) != NIL)
	{
		message->event_id = event_id_of(message, rules);
		message->event_type = header_text(message, "ce_type");
		message->error = mirror_events_tombstone(message, rules, mirrors);
		settle_fate(message);
		return;
	}
	message->error = unreadable_value(message);
	if (message->error == NULL)
		message->error = read_value(message, rules, read_fields);
	message->event_id = event_id_of(message, rules);
	message->event_type = header_text(message, "ce_type");
	if (message->event_type == NULL)
		message->event_type = field_text(message, rules->type_slot);
	if (message->error != NULL)
	{
		message->fate = MESSAGE_DEAD;
		return;
	}

	/* a rule or handler in fault dead-letters the messages that need it, only those */
	for (i = 0; i < rules->nmetrics && message->error == NULL && message->event_type; i++)
		if (strcmp(rules->metrics[i].event_type, message->event_type) == 0)
			message->error = rules->metrics[i].fault ? rules->metrics[i].fault
				: metric_effect(message, rules, i);
	for (i = 0; i < rules->nhandlers && message->error == NULL && message->event_type; i++)
		if (strcmp(rules->handlers[i].event_type, message->event_type) == 0)
		{
			message->error = rules->handlers[i].fault;
			message->handlers = lappend(message->handlers, &rules->handlers[i]);
		}
	if (message->error == NULL && rules->nmirrors > 0)
		mirrors = mirror_events_of_table(message, rules);
	if (message->error == NULL && (message->handlers != NIL || mirrors != NIL))
		message->error = read_value(message, rules, read_jsonb);
	if (message->error == NULL && mirrors != NIL)
		message->error = mirror_events_changes(message, rules, mirrors);
	settle_fate(message);
}

static Datum
copy_text(Datum value)
{
	return PointerGetDatum(DatumGetTextPCopy(value));
}

/*
 * Interpret the message against the rules.  The parse and the lookups run
 * in a scratch context reset after each message; only what the batch needs
 * later is copied to the caller's context: the type, id, error, effects,
 * mirror changes, and the payload when a handler will be called with it.  (Keeping every
 * parse of a batch until its end made each batch allocate, and give back to
 * the kernel, megabytes of fresh pages.)
 */
void
consumer_message_interpret(ConsumedMessage *message, const ConsumerRules *rules)
{
	static MemoryContext scratch = NULL;
	MemoryContext caller_context = CurrentMemoryContext;
	ConsumedMessage parsed = *message;
	ListCell   *lc;

	if (scratch == NULL)
		scratch = AllocSetContextCreate(TopMemoryContext, "eventpipe message interpretation",
										ALLOCSET_DEFAULT_SIZES);
	parsed.fields = NULL;
	parsed.payload = NULL;
	parsed.effects = NIL;
	parsed.handlers = NIL;
	parsed.mirror_changes = NIL;
	MemoryContextSwitchTo(scratch);
	interpret(&parsed, rules);
	MemoryContextSwitchTo(caller_context);

	*message = parsed;
	message->event_id = pstrdup(parsed.event_id);
	message->event_type = parsed.event_type ? pstrdup(parsed.event_type) : NULL;
	message->error = parsed.error ? pstrdup(parsed.error) : NULL;
	message->fields = NULL;
	message->payload = NULL;
	if (parsed.handlers != NIL)
	{
		message->payload = palloc(VARSIZE(parsed.payload));
		memcpy(message->payload, parsed.payload, VARSIZE(parsed.payload));
		message->handlers = list_copy(parsed.handlers);
	}
	message->effects = NIL;
	foreach(lc, parsed.effects)
	{
		MetricEffect *effect = palloc(sizeof(MetricEffect));

		*effect = *(MetricEffect *) lfirst(lc);
		effect->key = copy_text(effect->key);
		if (effect->value != (Datum) 0)
			effect->value = PointerGetDatum(DatumGetNumericCopy(effect->value));
		message->effects = lappend(message->effects, effect);
	}
	message->mirror_changes = NIL;
	foreach(lc, parsed.mirror_changes)
		message->mirror_changes = lappend(message->mirror_changes,
										  mirror_events_copy_change((MirrorChange *) lfirst(lc), rules));
	MemoryContextReset(scratch);
}

/*
 * Header bytes as the text a JSON string of the database holds: clean UTF-8
 * in the database's encoding; NULL when they are not clean text, or have a
 * character that encoding lacks ("€" in a LATIN1 database), and are to be
 * written as "\x" and hex.  The conversion only allocates, so its data
 * error is caught without a subtransaction.
 */
char *
consumer_header_as_text(const char *bytes, size_t len)
{
	MemoryContext context = CurrentMemoryContext;
	char	   *volatile text = NULL;

	if (!is_clean_text(bytes, len))
		return NULL;
	PG_TRY();
	{
		text = pg_any_to_server(pnstrdup(bytes, len), (int) len, PG_UTF8);
	}
	PG_CATCH();
	{
		FreeErrorData(consumer_caught_data_error(context));
	}
	PG_END_TRY();
	return text;
}

/*
 * bytes as a JSON string: as is when clean text the database can hold,
 * else "\x" and hex (consumer_header_as_text).
 */
static void
append_json_bytes(StringInfo buf, const void *bytes, size_t len)
{
	char	   *text = NULL;

	if (bytes == NULL)
		appendStringInfoString(buf, "null");
	else if ((text = consumer_header_as_text(bytes, len)) != NULL)
		escape_json(buf, text);
	else
	{
		char	   *hex = palloc(len * 2 + 3);

		hex[0] = '\\';
		hex[1] = 'x';
		hex[hex_encode(bytes, len, hex + 2) + 2] = '\0';
		escape_json(buf, hex);
	}
}

static void
append_headers(StringInfo buf, rd_kafka_headers_t *headers)
{
	const char *name;
	const void *value;
	size_t		size;
	size_t		i;

	appendStringInfoChar(buf, '{');
	if (headers != NULL)
		for (i = 0; rd_kafka_header_get_all(headers, i, &name, &value, &size) ==
			 RD_KAFKA_RESP_ERR_NO_ERROR; i++)
		{
			if (i > 0)
				appendStringInfoString(buf, ", ");
			append_json_bytes(buf, name, strlen(name));
			appendStringInfoString(buf, ": ");
			append_json_bytes(buf, value, size);
		}
	appendStringInfoChar(buf, '}');
}

static Jsonb *
jsonb_of(StringInfo buf)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf->data)));
}

/* The message's headers as a JSON object (undecodable bytes as "\x" hex); NULL for none. */
Jsonb *
consumer_message_headers(const ConsumedMessage *message)
{
	StringInfoData buf;

	if (message->headers == NULL)
		return NULL;
	initStringInfo(&buf);
	append_headers(&buf, message->headers);
	return jsonb_of(&buf);
}

/* The handler's second argument: where the message came from and what it is. */
Jsonb *
consumer_message_metadata(const ConsumedMessage *message)
{
	StringInfoData buf;
	int64		ms = message->timestamp_ms;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"topic\": ");
	escape_json(&buf, message->topic);
	appendStringInfo(&buf, ", \"partition\": %d, \"offset\": %lld, \"key\": ",
					 (int) message->partition, (long long) message->offset);
	append_json_bytes(&buf, message->key, message->key_len);
	appendStringInfoString(&buf, ", \"id\": ");
	escape_json(&buf, message->event_id);
	appendStringInfoString(&buf, ", \"type\": ");
	escape_json(&buf, message->event_type);
	appendStringInfoString(&buf, ", \"headers\": ");
	append_headers(&buf, message->headers);
	appendStringInfoString(&buf, ", \"timestamp\": ");
	if (ms < 0)
		appendStringInfoString(&buf, "null");
	else
	{
		pg_time_t	seconds = (pg_time_t) (ms / 1000);
		struct pg_tm *tm = pg_gmtime(&seconds);

		appendStringInfo(&buf, "\"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ\"",
						 tm->tm_year + 1900, tm->tm_mon + 1, tm->tm_mday,
						 tm->tm_hour, tm->tm_min, tm->tm_sec, (int) (ms % 1000));
	}
	appendStringInfoChar(&buf, '}');
	return jsonb_of(&buf);
}
