/*
 * capture_trigger.c
 *		The triggers of a captured table.  eventpipe.capture_trigger(), a
 *		row-level AFTER INSERT OR UPDATE OR DELETE trigger, turns each row
 *		change into one outbox event in the writing transaction;
 *		eventpipe.capture_truncate_guard(), a BEFORE TRUNCATE statement
 *		trigger, refuses TRUNCATE, which would change the table without a
 *		row event.  The snapshot worker renders its "read" events here too,
 *		so that they are keyed and shaped exactly as the triggers' events.
 *
 * The event: topic and event type from the trigger's arguments (capture.h),
 * key = the key columns' text (one column) or a JSON array of their texts
 * (several), payload = {"op", "table", "before", "after", "txid"} with the
 * row images rendered by PostgreSQL's own to_jsonb() (as row_to_json()
 * renders them), after the tuple is flattened (TOASTed values, also those
 * an UPDATE left unchanged, are fetched).
 *
 * This runs on users' write paths: the settings come from the trigger's
 * arguments (kept in the relcache), the row images are built as the writing
 * user, and only the outbox insert runs as the trigger function's owner (the
 * extension's owner), so writers need no rights on the outbox.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "nodes/makefuncs.h"
#include "utils/fmgroids.h"
#include "utils/numeric.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "capture.h"
#include "eventpipe.h"

PG_FUNCTION_INFO_V1(eventpipe_capture_trigger);
PG_FUNCTION_INFO_V1(eventpipe_capture_truncate_guard);

/* One row change, as the trigger sees it */
typedef struct RowChange
{
	Relation	rel;
	const char *op;				/* "insert", "update", "delete" or "read" */
	HeapTuple	before;			/* NULL for an insert */
	HeapTuple	after;			/* NULL for a delete */
} RowChange;

/* The column of rel named name, or InvalidAttrNumber */
static AttrNumber
column_number(Relation rel, const char *name)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0)
			return att->attnum;
	}
	return InvalidAttrNumber;
}

/* The text of column attnum of tuple, or NULL */
static char *
column_text(Relation rel, HeapTuple tuple, AttrNumber attnum)
{
	TupleDesc	desc = RelationGetDescr(rel);
	bool		isnull;
	Datum		value = heap_getattr(tuple, attnum, desc, &isnull);
	Oid			output_function;
	bool		is_varlena;

	if (isnull)
		return NULL;
	getTypeOutputInfo(TupleDescAttr(desc, attnum - 1)->atttypid,
					  &output_function, &is_varlena);
	return OidOutputFunctionCall(output_function, value);
}

/*
 * The event key: the text of the one key column, or a JSON array of the
 * key columns' texts (null for a NULL), taken from the row as it is after
 * the change (before it, for a delete).  NULL when the one key column is.
 */
static text *
event_key(const RowChange *change, Trigger *trigger)
{
	HeapTuple	row = change->after ? change->after : change->before;
	int			nkeys = trigger->tgnargs - CAPTURE_ARG_FIRST_KEY;
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	for (i = 0; i < nkeys; i++)
	{
		const char *name = trigger->tgargs[CAPTURE_ARG_FIRST_KEY + i];
		AttrNumber	attnum = column_number(change->rel, name);
		char	   *value;

		if (attnum == InvalidAttrNumber)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("key column \"%s\" of captured table \"%s\" does not exist",
							name, RelationGetRelationName(change->rel)),
					 errhint("The column was renamed (or dropped after a restore) since eventpipe.capture(): capture the table again to name its key columns.")));
		value = column_text(change->rel, row, attnum);
		if (nkeys == 1)
			return value ? cstring_to_text(value) : NULL;

		appendStringInfoChar(&buf, i == 0 ? '[' : ',');
		if (value)
			escape_json(&buf, value);
		else
			appendStringInfoString(&buf, "null");
	}
	appendStringInfoChar(&buf, ']');
	return cstring_to_text_with_len(buf.data, buf.len);
}

/* Whether an UPDATE left every column's stored value as it was */
static bool
row_unchanged(const RowChange *change)
{
	TupleDesc	desc = RelationGetDescr(change->rel);
	int			i;

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		bool		old_null;
		bool		new_null;
		Datum		old_value;
		Datum		new_value;

		if (att->attisdropped)
			continue;
		old_value = heap_getattr(change->before, att->attnum, desc, &old_null);
		new_value = heap_getattr(change->after, att->attnum, desc, &new_null);
		if (old_null != new_null)
			return false;
		if (!old_null &&
			!datum_image_eq(old_value, new_value, att->attbyval, att->attlen))
			return false;
	}
	return true;
}

/*
 * A row image: to_jsonb() of the row, which renders every value as
 * row_to_json() does (the payload column is jsonb: the same as
 * row_to_json(row)::jsonb) without printing and parsing JSON text.
 * TOASTed values are fetched first.
 */
static Jsonb *
row_image(Relation rel, HeapTuple tuple)
{
	FmgrInfo	to_jsonb;
	Const	   *row_type;

	/* to_jsonb(anyelement) learns the type of its argument from fn_expr */
	fmgr_info(F_TO_JSONB, &to_jsonb);
	row_type = makeNullConst(RelationGetDescr(rel)->tdtypeid, -1, InvalidOid);
	fmgr_info_set_expr((Node *) makeFuncExpr(F_TO_JSONB, JSONBOID,
											 list_make1(row_type), InvalidOid,
											 InvalidOid, COERCE_EXPLICIT_CALL),
					   &to_jsonb);
	return DatumGetJsonbP(FunctionCall1(&to_jsonb,
										heap_copy_tuple_as_datum(tuple, RelationGetDescr(rel))));
}

static void
push_key(JsonbParseState **state, const char *name)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = (char *) name;
	v.val.string.len = strlen(name);
	pushJsonbValue(state, WJB_KEY, &v);
}

static void
push_string_member(JsonbParseState **state, const char *name, const char *value)
{
	JsonbValue	v;

	push_key(state, name);
	v.type = jbvString;
	v.val.string.val = (char *) value;
	v.val.string.len = strlen(value);
	pushJsonbValue(state, WJB_VALUE, &v);
}

/* name: the row image of tuple, or null */
static void
push_image_member(JsonbParseState **state, const char *name, Relation rel,
				  HeapTuple tuple)
{
	JsonbValue	v;

	push_key(state, name);
	if (tuple == NULL)
		v.type = jbvNull;
	else
	{
		Jsonb	   *image = row_image(rel, tuple);

		v.type = jbvBinary;
		v.val.binary.data = &image->root;
		v.val.binary.len = VARSIZE(image) - VARHDRSZ;
	}
	pushJsonbValue(state, WJB_VALUE, &v);
}

/* {"op", "table", "before", "after", "txid"} */
static Jsonb *
event_payload(const RowChange *change)
{
	JsonbParseState *state = NULL;
	JsonbValue	txid;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	push_string_member(&state, "op", change->op);
	push_string_member(&state, "table",
					   quote_qualified_identifier(get_namespace_name(RelationGetNamespace(change->rel)),
												  RelationGetRelationName(change->rel)));
	push_image_member(&state, "before", change->rel, change->before);
	push_image_member(&state, "after", change->rel, change->after);
	push_key(&state, "txid");
	txid.type = jbvNumeric;
	txid.val.numeric = int64_to_numeric((int64) U64FromFullTransactionId(GetTopFullTransactionId()));
	pushJsonbValue(&state, WJB_VALUE, &txid);
	return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
}

static text *
event_type(const RowChange *change, Trigger *trigger)
{
	const char *configured = trigger->tgargs[CAPTURE_ARG_EVENT_TYPE];

	if (configured[0] != '\0')
		return cstring_to_text(configured);
	return cstring_to_text(psprintf("%s.%s", RelationGetRelationName(change->rel),
									change->op));
}

/* The outbox insert, as the extension's owner (writers have no rights on it) */
static void
enqueue_as_owner(Oid owner, text *topic, text *key, Jsonb *payload, text *type)
{
	Oid			save_userid;
	int			save_sec_context;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	eventpipe_enqueue_event(topic, key, payload, NULL, type);
	SetUserIdAndSecContext(save_userid, save_sec_context);
}

/* The event of one row change, written to the outbox */
static void
emit_row_event(const RowChange *change, Trigger *trigger)
{
	const char *topic = trigger->tgargs[CAPTURE_ARG_TOPIC];

	eventpipe_check_topic_name(topic);
	enqueue_as_owner(eventpipe_function_owner(trigger->tgfoid),
					 cstring_to_text(topic),
					 event_key(change, trigger),
					 event_payload(change),
					 event_type(change, trigger));
}

/*
 * The row trigger of a captured table, whose arguments are the capture's
 * settings, copied into the current memory context; NULL when the table is
 * not captured.  A copy, because the relcache's TriggerDesc is rebuilt, and
 * the old one freed, at any invalidation of the table (an ANALYZE's new
 * statistics will do), which a caller that runs statements may process.
 */
Trigger *
capture_row_trigger(Relation rel)
{
	TriggerDesc *triggers = rel->trigdesc;
	int			i;

	for (i = 0; triggers != NULL && i < triggers->numtriggers; i++)
	{
		Trigger    *trigger = &triggers->triggers[i];
		Trigger    *copy;
		int			arg;

		if (strcmp(trigger->tgname, CAPTURE_ROW_TRIGGER) != 0 ||
			trigger->tgnargs <= CAPTURE_ARG_FIRST_KEY ||
			strcmp(get_namespace_name(get_func_namespace(trigger->tgfoid)), "eventpipe") != 0 ||
			strcmp(get_func_name(trigger->tgfoid), "capture_trigger") != 0)
			continue;
		copy = palloc0(sizeof(Trigger));
		copy->tgoid = trigger->tgoid;
		copy->tgname = pstrdup(trigger->tgname);
		copy->tgfoid = trigger->tgfoid;
		copy->tgnargs = trigger->tgnargs;
		copy->tgargs = palloc(sizeof(char *) * trigger->tgnargs);
		for (arg = 0; arg < trigger->tgnargs; arg++)
			copy->tgargs[arg] = pstrdup(trigger->tgargs[arg]);
		return copy;
	}
	return NULL;
}

/*
 * The event of a row of a snapshot: op "read", no before image, keyed and
 * typed as the capture's other events (the snapshot worker, as the role that
 * asked for the snapshot).
 */
void
capture_emit_read_event(Relation rel, Trigger *trigger, HeapTuple row)
{
	RowChange	change;

	change.rel = rel;
	change.op = "read";
	change.before = NULL;
	change.after = row;
	emit_row_event(&change, trigger);
}

Datum
eventpipe_capture_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;
	RowChange	change;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("eventpipe.capture_trigger() must be fired AFTER a row change"),
				 errhint("Use eventpipe.capture() to capture a table.")));
	trigger = trigdata->tg_trigger;
	if (trigger->tgnargs <= CAPTURE_ARG_FIRST_KEY)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("eventpipe.capture_trigger() was created with too few arguments"),
				 errhint("Use eventpipe.capture() to capture a table.")));

	change.rel = trigdata->tg_relation;
	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		change.op = "insert";
		change.before = NULL;
		change.after = trigdata->tg_trigtuple;
	}
	else if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		change.op = "update";
		change.before = trigdata->tg_trigtuple;
		change.after = trigdata->tg_newtuple;
		if (strcmp(trigger->tgargs[CAPTURE_ARG_SKIP_UNCHANGED], "true") == 0 &&
			row_unchanged(&change))
			return PointerGetDatum(NULL);
	}
	else
	{
		change.op = "delete";
		change.before = trigdata->tg_trigtuple;
		change.after = NULL;
	}

	emit_row_event(&change, trigger);

	/* the result of an AFTER trigger is ignored */
	return PointerGetDatum(NULL);
}

Datum
eventpipe_capture_truncate_guard(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("eventpipe.capture_truncate_guard() must be fired by TRUNCATE")));
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot truncate \"%s\": its changes are captured by eventpipe",
					RelationGetRelationName(trigdata->tg_relation)),
			 errdetail("TRUNCATE emits no row events, so consumers would not learn that the rows are gone."),
			 errhint("DELETE the rows to emit one event each, or call eventpipe.uncapture() first.")));
	return PointerGetDatum(NULL);
}
