/*
 * mirror_events.c
 *		What a message means to the subscription's mirrors: which mirrors it
 *		concerns (eventpipe's events by their "table", Debezium's by the
 *		envelope's source schema and table; a tombstone, which has neither,
 *		by its topic), and the changes it makes to each target: an upsert of
 *		the after image, a delete of the before image's key (or the message
 *		key's), both, in that order, when an update changed the key.
 *
 * Images are matched to the target's columns by name: a member without a
 * column is ignored, a column without a member is left out of the change.
 * A member's JSON value is read as the column's base type by the type's
 * input function, with the column's typmod (a JSON array as an array
 * literal; any value of a json or jsonb column as its JSON text, but a
 * Debezium string, which holds the JSON); a value the type refuses
 * dead-letters the message, the column named.  That error is caught
 * without a subtransaction, like the JSON parser's in consumer_message.c:
 * only base types' input functions run here, which allocate memory and
 * take no lock (a domain's checks run at the insert, as the owner).
 *
 * A row's key is its primary key columns' values as their output functions
 * spell them, in a JSON array: one row, one text, which the batch's
 * grouping (consumer_mirrors.c) and the row locks compare.  A message's
 * Kafka key must name the row of its image: Kafka keeps order per key, and
 * a row's changes must arrive in order.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "consumer.h"
#include "consumer_sql.h"

typedef enum RowChangeKind
{
	ROW_UPSERT,					/* insert, read (snapshot), Debezium's c and r */
	ROW_UPDATE,
	ROW_DELETE
} RowChangeKind;

/* A string field's text, or NULL. */
static const char *
string_field(const ConsumedMessage *message, int slot)
{
	if (slot < 0 || message->fields == NULL || message->fields[slot].kind != PAYLOAD_FIELD_STRING)
		return NULL;
	return message->fields[slot].text;
}

/* Is the topic the source, or "<prefix>.<source>" as Debezium names a table's topic? */
static bool
topic_names(const char *topic, const char *source)
{
	size_t		topic_len = strlen(topic);
	size_t		source_len = strlen(source);

	if (strcmp(topic, source) == 0)
		return true;
	return topic_len > source_len && topic[topic_len - source_len - 1] == '.' &&
		strcmp(topic + topic_len - source_len, source) == 0;
}

/* The mirrors whose source the message's topic names (for a tombstone). */
List *
mirror_events_of_topic(const ConsumedMessage *message, const ConsumerRules *rules)
{
	List	   *mirrors = NIL;
	int			m;

	for (m = 0; m < rules->nmirrors; m++)
		if (topic_names(message->topic, rules->mirrors[m].source))
			mirrors = lappend_int(mirrors, m);
	return mirrors;
}

/*
 * The mirrors whose source is the table the message's value names: the
 * payload's "table" for eventpipe's format; for Debezium's, the envelope's
 * source schema and table (inside the JSON converter's wrapper or not), or
 * the topic when the envelope has no source block.
 */
List *
mirror_events_of_table(const ConsumedMessage *message, const ConsumerRules *rules)
{
	const char *table = string_field(message, rules->mirror_slots[MIRROR_FIELD_TABLE]);
	const char *schema = string_field(message, rules->mirror_slots[MIRROR_FIELD_WRAPPED_SCHEMA]);
	const char *source_table = string_field(message, rules->mirror_slots[MIRROR_FIELD_WRAPPED_TABLE]);
	char	   *debezium_name = NULL;
	List	   *mirrors = NIL;
	int			m;

	if (source_table == NULL)
	{
		schema = string_field(message, rules->mirror_slots[MIRROR_FIELD_SCHEMA]);
		source_table = string_field(message, rules->mirror_slots[MIRROR_FIELD_SOURCE_TABLE]);
	}
	if (source_table != NULL)
		debezium_name = schema ? quote_qualified_identifier(schema, source_table)
			: pstrdup(quote_identifier(source_table));
	for (m = 0; m < rules->nmirrors; m++)
	{
		const MirrorRule *mirror = &rules->mirrors[m];
		bool		concerned;

		if (!mirror->debezium)
			concerned = table != NULL && strcmp(table, mirror->source) == 0;
		else if (debezium_name != NULL)
			concerned = strcmp(debezium_name, mirror->source) == 0;
		else
			concerned = topic_names(message->topic, mirror->source);
		if (concerned)
			mirrors = lappend_int(mirrors, m);
	}
	return mirrors;
}

static bool
is_json_type(Oid type)
{
	return type == JSONOID || type == JSONBOID;
}

static char *
scalar_text(const JsonbValue *value)
{
	switch (value->type)
	{
		case jbvString:
			return pnstrdup(value->val.string.val, value->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(value->val.numeric)));
		case jbvBool:
			return pstrdup(value->val.boolean ? "true" : "false");
		case jbvBinary:
			return JsonbToCString(NULL, value->val.binary.data, value->val.binary.len);
		default:
			return NULL;
	}
}

/* A JSON array as an array literal: {"a","b",NULL,{"c"}}. */
static void
append_array_literal(StringInfo buf, JsonbContainer *array)
{
	JsonbIterator *it = JsonbIteratorInit(array);
	JsonbValue	value;
	JsonbIteratorToken token;
	bool		first = true;

	appendStringInfoChar(buf, '{');
	while ((token = JsonbIteratorNext(&it, &value, true)) != WJB_DONE)
	{
		const char *text;

		if (token != WJB_ELEM)
			continue;
		if (!first)
			appendStringInfoChar(buf, ',');
		first = false;
		if (value.type == jbvNull)
		{
			appendStringInfoString(buf, "NULL");
			continue;
		}
		if (value.type == jbvBinary && JsonContainerIsArray(value.val.binary.data))
		{
			append_array_literal(buf, value.val.binary.data);
			continue;
		}
		appendStringInfoChar(buf, '"');
		for (text = scalar_text(&value); *text; text++)
		{
			if (*text == '"' || *text == '\\')
				appendStringInfoChar(buf, '\\');
			appendStringInfoChar(buf, *text);
		}
		appendStringInfoChar(buf, '"');
	}
	appendStringInfoChar(buf, '}');
}

/* The text an image member's value gives the column's input function; NULL for null. */
static char *
value_text(const JsonbValue *value, const MirrorColumn *column, bool debezium)
{
	StringInfoData buf;

	if (value->type == jbvNull)
		return NULL;
	if (is_json_type(column->type) && !(debezium && value->type == jbvString))
	{
		if (value->type != jbvString)
			return scalar_text(value);
		initStringInfo(&buf);
		escape_json(&buf, scalar_text(value));
		return buf.data;
	}
	if (value->type == jbvBinary && JsonContainerIsArray(value->val.binary.data))
	{
		initStringInfo(&buf);
		append_array_literal(&buf, value->val.binary.data);
		return buf.data;
	}
	return scalar_text(value);
}

/*
 * Read text as the column's value (NULL: null) into *result; an error text
 * naming the column when the type refuses it, else NULL.
 */
static char *
read_column(const MirrorRule *mirror, const MirrorColumn *column, char *text, Datum *result,
			bool *isnull)
{
	MemoryContext context = CurrentMemoryContext;
	char	   *volatile error = NULL;

	*isnull = text == NULL;
	*result = (Datum) 0;
	if (text == NULL)
		return NULL;
	PG_TRY();
	{
		*result = InputFunctionCall((FmgrInfo *) &column->input_function, text, column->ioparam,
									column->typmod);
	}
	PG_CATCH();
	{
		ErrorData  *edata = consumer_caught_data_error(context);

		error = psprintf("column \"%s\" of %s: %s", column->name, mirror->target_name, edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	return error;
}

static int
column_named(const MirrorRule *mirror, const char *name, int len)
{
	int			c;

	for (c = 0; c < mirror->ncolumns; c++)
		if (strncmp(mirror->columns[c].name, name, len) == 0 && mirror->columns[c].name[len] == '\0')
			return c;
	return -1;
}

static MirrorChange *
new_change(const ConsumerRules *rules, int m, bool delete_row)
{
	int			ncolumns = rules->mirrors[m].ncolumns;
	MirrorChange *change = palloc0(sizeof(MirrorChange));

	change->mirror = m;
	change->delete_row = delete_row;
	change->values = palloc0(sizeof(Datum) * (ncolumns + 1));
	change->nulls = palloc0(sizeof(bool) * (ncolumns + 1));
	change->present = palloc0(sizeof(bool) * (ncolumns + 1));
	return change;
}

/*
 * The change's key text, once every key column has a value; else an error
 * text saying which is missing from what.
 */
static char *
finish_key(const MirrorRule *mirror, MirrorChange *change, const char *what)
{
	StringInfoData buf;
	int			k;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '[');
	for (k = 0; k < mirror->nkeys; k++)
	{
		const MirrorColumn *column = &mirror->columns[mirror->keys[k]];

		if (!change->present[mirror->keys[k]] || change->nulls[mirror->keys[k]])
			return psprintf("%s has no value for primary key column \"%s\" of %s",
							what, column->name, mirror->target_name);
		if (k > 0)
			appendStringInfoString(&buf, ", ");
		escape_json(&buf, OutputFunctionCall((FmgrInfo *) &column->output_function,
											 change->values[mirror->keys[k]]));
	}
	appendStringInfoChar(&buf, ']');
	change->key = CStringGetTextDatum(buf.data);
	return NULL;
}

/* Set column c of the change from an image member's value; an error text or NULL. */
static char *
set_column(const MirrorRule *mirror, MirrorChange *change, int c, const JsonbValue *value)
{
	change->present[c] = true;
	return read_column(mirror, &mirror->columns[c],
					   value_text(value, &mirror->columns[c], mirror->debezium),
					   &change->values[c], &change->nulls[c]);
}

/*
 * The change an image makes: an upsert of its columns, or with delete_row
 * the delete of its key's row (its key columns only are read).
 */
static char *
image_change(const ConsumerRules *rules, int m, JsonbContainer *image, bool delete_row,
			 const char *what, MirrorChange **change)
{
	const MirrorRule *mirror = &rules->mirrors[m];
	JsonbIterator *it;
	JsonbValue	name;
	JsonbValue	value;
	JsonbIteratorToken token;
	char	   *error = NULL;

	*change = new_change(rules, m, delete_row);
	if (!JsonContainerIsObject(image))
		return psprintf("%s is not a JSON object", what);
	it = JsonbIteratorInit(image);
	while (error == NULL && (token = JsonbIteratorNext(&it, &name, true)) != WJB_DONE)
	{
		int			c;

		if (token != WJB_KEY)
			continue;
		token = JsonbIteratorNext(&it, &value, true);
		c = column_named(mirror, name.val.string.val, name.val.string.len);
		if (c < 0 || (delete_row && mirror->columns[c].equals == NULL))
			continue;
		error = set_column(mirror, *change, c, &value);
	}
	return error ? error : finish_key(mirror, *change, what);
}

/* The value parsed as jsonb, or an error text. */
static char *
parse_json(const char *bytes, size_t len, Jsonb **result)
{
	MemoryContext context = CurrentMemoryContext;
	char	   *volatile error = NULL;

	if (memchr(bytes, '\0', len) != NULL || !pg_verify_mbstr(PG_UTF8, bytes, (int) len, true))
		return pstrdup("the message key is not UTF-8 text");
	PG_TRY();
	{
		*result = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(
															 pg_any_to_server(pnstrdup(bytes, len), (int) len, PG_UTF8))));
	}
	PG_CATCH();
	{
		ErrorData  *edata = consumer_caught_data_error(context);

		error = psprintf("the message key is not valid JSON: %s", edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	return error;
}

/* The object of Debezium's JSON converter's {"schema", "payload"} wrapper, or json itself. */
static JsonbContainer *
unwrapped(JsonbContainer *json)
{
	JsonbValue	payload;
	JsonbValue	schema;

	if (JsonContainerIsObject(json) &&
		getKeyJsonValueFromContainer(json, "schema", 6, &schema) != NULL &&
		getKeyJsonValueFromContainer(json, "payload", 7, &payload) != NULL &&
		payload.type == jbvBinary && JsonContainerIsObject(payload.val.binary.data))
		return payload.val.binary.data;
	return json;
}

/*
 * The delete of the row the message's Kafka key names: for eventpipe's
 * format the one key column's text, or a JSON array of the key columns'
 * texts in the primary key's order; for Debezium's, a JSON object of the
 * key columns (in the JSON converter's wrapper or not).
 */
static char *
key_change(const ConsumedMessage *message, const ConsumerRules *rules, int m,
		   MirrorChange **change)
{
	const MirrorRule *mirror = &rules->mirrors[m];
	Jsonb	   *json = NULL;
	char	   *error;
	int			k;

	*change = new_change(rules, m, true);
	if (message->key == NULL)
		return pstrdup("the message has no key");
	if (!mirror->debezium && mirror->nkeys == 1)
	{
		int			c = mirror->keys[0];

		if (memchr(message->key, '\0', message->key_len) != NULL ||
			!pg_verify_mbstr(PG_UTF8, message->key, (int) message->key_len, true))
			return pstrdup("the message key is not UTF-8 text");
		(*change)->present[c] = true;
		error = read_column(mirror, &mirror->columns[c],
							pg_any_to_server(pnstrdup(message->key, message->key_len),
											 (int) message->key_len, PG_UTF8),
							&(*change)->values[c], &(*change)->nulls[c]);
		return error ? error : finish_key(mirror, *change, "the message key");
	}
	if ((error = parse_json(message->key, message->key_len, &json)) != NULL)
		return error;
	if (mirror->debezium)
		return image_change(rules, m, unwrapped(&json->root), true, "the message key", change);
	if (!JsonContainerIsArray(&json->root) || (int) JsonContainerSize(&json->root) != mirror->nkeys)
		return psprintf("the message key is not a JSON array of the %d primary key columns of %s",
						mirror->nkeys, mirror->target_name);
	for (k = 0; k < mirror->nkeys && error == NULL; k++)
		error = set_column(mirror, *change, mirror->keys[k], getIthJsonbValueFromContainer(&json->root, k));
	return error ? error : finish_key(mirror, *change, "the message key");
}

/* An error text when the message's Kafka key names another row than change's; else NULL. */
static char *
check_message_key(const ConsumedMessage *message, const ConsumerRules *rules,
				  const MirrorChange *change)
{
	MirrorChange *keyed;
	char	   *error;

	if (message->key == NULL)
		return NULL;
	if ((error = key_change(message, rules, change->mirror, &keyed)) != NULL)
		return error;
	if (consumer_compare_texts(keyed->key, change->key) != 0)
		return psprintf("the message key %s names another row of %s than its image's primary key %s: a row's changes must share a key, and so a partition, to arrive in order",
						TextDatumGetCString(keyed->key), rules->mirrors[change->mirror].target_name,
						TextDatumGetCString(change->key));
	return NULL;
}

/* A tombstone's change to mirror m: the delete of the row its key names. */
static char *
tombstone_changes(ConsumedMessage *message, const ConsumerRules *rules, int m)
{
	MirrorChange *change;
	char	   *error = key_change(message, rules, m, &change);

	if (error == NULL)
		message->mirror_changes = lappend(message->mirror_changes, change);
	return error;
}

/*
 * The changes of the message to each of the mirrors, by changes_of, unless
 * a mirror is in fault; the first error text, or NULL.
 */
static char *
changes_to_mirrors(ConsumedMessage *message, const ConsumerRules *rules, List *mirrors,
				   char *(*changes_of) (ConsumedMessage *, const ConsumerRules *, int))
{
	ListCell   *lc;

	foreach(lc, mirrors)
	{
		int			m = lfirst_int(lc);
		char	   *error = rules->mirrors[m].fault;

		if (error == NULL)
			error = changes_of(message, rules, m);
		if (error != NULL)
			return error;
	}
	return NULL;
}

/* A tombstone: delete the row its key names from each of the mirrors. */
char *
mirror_events_tombstone(ConsumedMessage *message, const ConsumerRules *rules, List *mirrors)
{
	return changes_to_mirrors(message, rules, mirrors, tombstone_changes);
}

/* What the envelope's op asks of a mirror; false for an op it does not apply. */
static bool
change_kind(const char *op, bool debezium, RowChangeKind *kind)
{
	if (strcmp(op, debezium ? "c" : "insert") == 0 || strcmp(op, debezium ? "r" : "read") == 0)
		*kind = ROW_UPSERT;
	else if (strcmp(op, debezium ? "u" : "update") == 0)
		*kind = ROW_UPDATE;
	else if (strcmp(op, debezium ? "d" : "delete") == 0)
		*kind = ROW_DELETE;
	else
		return false;
	return true;
}

/* An object member of the envelope (before, after), or NULL when absent or null. */
static JsonbContainer *
image_member(JsonbContainer *envelope, const char *name)
{
	JsonbValue	value;

	if (getKeyJsonValueFromContainer(envelope, name, strlen(name), &value) == NULL ||
		value.type != jbvBinary)
		return NULL;
	return value.val.binary.data;
}

/* The changes the message's envelope makes to mirror m, appended to the message's. */
static char *
envelope_changes(ConsumedMessage *message, const ConsumerRules *rules, int m)
{
	const MirrorRule *mirror = &rules->mirrors[m];
	JsonbContainer *envelope = &message->payload->root;
	JsonbContainer *before;
	JsonbContainer *after;
	JsonbValue	op;
	RowChangeKind kind;
	MirrorChange *old_row = NULL;
	MirrorChange *new_row = NULL;
	char	   *error = NULL;

	if (mirror->debezium)
		envelope = unwrapped(envelope);
	if (!JsonContainerIsObject(envelope))
		return pstrdup("the value is not a JSON object");
	if (getKeyJsonValueFromContainer(envelope, "op", 2, &op) == NULL || op.type != jbvString)
		return pstrdup("the event has no \"op\"");
	if (!change_kind(pnstrdup(op.val.string.val, op.val.string.len), mirror->debezium, &kind))
		return psprintf("op \"%s\" is not a row change a mirror applies",
						pnstrdup(op.val.string.val, op.val.string.len));
	before = image_member(envelope, "before");
	after = image_member(envelope, "after");

	if (kind != ROW_DELETE && after == NULL)
		return pstrdup("the event has no \"after\" image");
	if (kind != ROW_DELETE)
		error = image_change(rules, m, after, false, "the \"after\" image", &new_row);
	if (error == NULL && kind != ROW_UPSERT && before != NULL)
		error = image_change(rules, m, before, true, "the \"before\" image", &old_row);
	else if (error == NULL && kind == ROW_DELETE)
		error = key_change(message, rules, m, &old_row);
	if (error == NULL)
		error = check_message_key(message, rules, new_row ? new_row : old_row);
	if (error != NULL)
		return error;
	/* an update that kept its key is the upsert alone */
	if (old_row != NULL && (new_row == NULL || consumer_compare_texts(old_row->key, new_row->key) != 0))
		message->mirror_changes = lappend(message->mirror_changes, old_row);
	if (new_row != NULL)
		message->mirror_changes = lappend(message->mirror_changes, new_row);
	return NULL;
}

/* The changes the message (its value parsed into message->payload) makes to the mirrors. */
char *
mirror_events_changes(ConsumedMessage *message, const ConsumerRules *rules, List *mirrors)
{
	return changes_to_mirrors(message, rules, mirrors, envelope_changes);
}

/* A copy of the change in the current memory context. */
MirrorChange *
mirror_events_copy_change(const MirrorChange *change, const ConsumerRules *rules)
{
	const MirrorRule *mirror = &rules->mirrors[change->mirror];
	MirrorChange *copy = new_change(rules, change->mirror, change->delete_row);
	int			c;

	copy->key = PointerGetDatum(DatumGetTextPCopy(change->key));
	for (c = 0; c < mirror->ncolumns; c++)
	{
		copy->present[c] = change->present[c];
		copy->nulls[c] = change->nulls[c];
		if (change->present[c] && !change->nulls[c])
			copy->values[c] = datumCopy(change->values[c], mirror->columns[c].typbyval,
										mirror->columns[c].typlen);
	}
	return copy;
}
