/*
 * capture.c
 *		Managing table capture: eventpipe.capture(rel, topic, key_columns,
 *		event_type, skip_unchanged, snapshot) checks its input, installs the
 *		triggers of capture_trigger.c on the table and, with snapshot, asks
 *		for a snapshot of its rows (snapshot_request.c); eventpipe.uncapture(rel)
 *		removes them, and eventpipe.trigger_arguments() decodes a trigger's
 *		arguments for the eventpipe.captures view.
 *
 * The triggers are the whole state of a capture: its settings are the row
 * trigger's arguments (capture.h), so DROP TABLE takes everything with it
 * and pg_dump carries captures along with their tables.  The row trigger
 * also depends (pg_depend, normal) on each key column, so ALTER TABLE DROP
 * COLUMN of a key column is refused, or with CASCADE ends the capture.
 *
 * The caller must own the table.  The triggers are created as the
 * extension's owner, because the trigger functions are not executable by
 * PUBLIC: otherwise anyone could attach them to a table of their own and
 * publish to any topic.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/xact.h"
#include "catalog/catalog.h"
#include "catalog/dependency.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "capture.h"
#include "eventpipe.h"
#include "snapshot.h"
#include "compat.h"

PG_FUNCTION_INFO_V1(eventpipe_capture);
PG_FUNCTION_INFO_V1(eventpipe_uncapture);
PG_FUNCTION_INFO_V1(eventpipe_trigger_arguments);

#define EVENTPIPE_SCHEMA "eventpipe"

Oid
eventpipe_function_owner(Oid funcid)
{
	HeapTuple	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcid));
	Oid			owner;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for function %u", funcid);
	owner = ((Form_pg_proc) GETSTRUCT(tuple))->proowner;
	ReleaseSysCache(tuple);
	return owner;
}

/*
 * Opens the table to capture or uncapture, after checking that the caller
 * owns it, with the lock CREATE TRIGGER takes.
 */
static Relation
open_owned_table(Oid relid)
{
	Relation	rel;

	if (!object_ownercheck(RelationRelationId, relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER,
					   get_relkind_objtype(get_rel_relkind(relid)),
					   get_rel_name(relid));
	rel = relation_open(relid, ShareRowExclusiveLock);
	return rel;
}

/* Refuses what cannot be captured, each with its reason */
static void
check_capturable(Relation rel)
{
	const char *name = RelationGetRelationName(rel);

	switch (rel->rd_rel->relkind)
	{
		case RELKIND_RELATION:
			break;
		case RELKIND_PARTITIONED_TABLE:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot capture partitioned table \"%s\"", name),
					 errhint("Capture each of its partitions.")));
			break;
		case RELKIND_VIEW:
		case RELKIND_MATVIEW:
		case RELKIND_FOREIGN_TABLE:
		default:
			ereport(ERROR,
					(errcode(ERRCODE_WRONG_OBJECT_TYPE),
					 errmsg("cannot capture \"%s\": it is not a table", name),
					 errdetail("Only the rows of ordinary tables can be captured; views, materialized views and foreign tables have none of their own.")));
	}
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot capture temporary table \"%s\"", name),
				 errdetail("A temporary table lives in one session; its changes are not the database's events.")));
	if (IsSystemRelation(rel) ||
		strcmp(get_namespace_name(RelationGetNamespace(rel)), EVENTPIPE_SCHEMA) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot capture \"%s\": it is a system or eventpipe table", name)));
}

/* The primary key's columns, in index order */
static List *
primary_key_columns(Relation rel)
{
	Oid			index_oid = RelationGetPrimaryKeyIndex(rel, false);
	HeapTuple	tuple;
	Form_pg_index index;
	List	   *columns = NIL;
	int			i;

	if (!OidIsValid(index_oid))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("table \"%s\" has no primary key", RelationGetRelationName(rel)),
				 errhint("Name the columns of the event key in key_columns.")));
	tuple = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(index_oid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for index %u", index_oid);
	index = (Form_pg_index) GETSTRUCT(tuple);
	for (i = 0; i < index->indnkeyatts; i++)
		columns = lappend_int(columns, index->indkey.values[i]);
	ReleaseSysCache(tuple);
	return columns;
}

/* The columns named in key_columns: existing, user columns, each once */
static List *
named_key_columns(Relation rel, ArrayType *key_columns)
{
	Datum	   *names;
	bool	   *nulls;
	int			count;
	List	   *columns = NIL;
	int			i;

	deconstruct_array(key_columns, TEXTOID, -1, false, TYPALIGN_INT,
					  &names, &nulls, &count);
	if (count == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("key_columns must name at least one column"),
				 errhint("Pass NULL to key by the primary key.")));
	for (i = 0; i < count; i++)
	{
		char	   *name;
		AttrNumber	attnum;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("key_columns must not contain NULL")));
		name = TextDatumGetCString(names[i]);
		attnum = get_attnum(RelationGetRelid(rel), name);
		if (attnum == InvalidAttrNumber)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("column \"%s\" of table \"%s\" does not exist",
							name, RelationGetRelationName(rel)),
					 errdetail("key_columns names the columns whose values make the event key.")));
		if (attnum < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("system column \"%s\" cannot be a key column", name)));
		if (list_member_int(columns, attnum))
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_COLUMN),
					 errmsg("column \"%s\" is named twice in key_columns", name)));
		columns = lappend_int(columns, attnum);
	}
	return columns;
}

/*
 * Whether the table has a trigger of this name, and it is ours (a trigger
 * of the same name running another function is an error, not ours to drop).
 */
static bool
has_capture_trigger(Relation rel, const char *trigger_name, const char *function)
{
	TriggerDesc *triggers = rel->trigdesc;
	int			i;

	for (i = 0; triggers != NULL && i < triggers->numtriggers; i++)
	{
		Oid			funcid = triggers->triggers[i].tgfoid;

		if (strcmp(triggers->triggers[i].tgname, trigger_name) != 0)
			continue;
		if (strcmp(get_namespace_name(get_func_namespace(funcid)), EVENTPIPE_SCHEMA) != 0 ||
			strcmp(get_func_name(funcid), function) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("table \"%s\" already has a trigger \"%s\" that is not eventpipe's",
							RelationGetRelationName(rel), trigger_name),
					 errhint("Rename that trigger to capture the table.")));
		return true;
	}
	return false;
}

/*
 * Runs one DDL statement built by this file: the table's name qualified and
 * quoted, the trigger functions qualified, the trigger's arguments quoted
 * literals, so that neither the caller's search_path nor the names can
 * change what it does.
 */
static void
execute_ddl(const char *sql)
{
	int			rc;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute(sql, false, 0);
	if (rc != SPI_OK_UTILITY)
		elog(ERROR, "could not run \"%s\": %s", sql, SPI_result_code_string(rc));
	SPI_finish();
}

/* Drops the capture triggers of rel; returns whether there were any */
static bool
drop_capture_triggers(Relation rel, const char *qualified_name)
{
	bool		dropped = false;

	if (has_capture_trigger(rel, CAPTURE_ROW_TRIGGER, "capture_trigger"))
	{
		execute_ddl(psprintf("DROP TRIGGER %s ON %s",
							 quote_identifier(CAPTURE_ROW_TRIGGER), qualified_name));
		dropped = true;
	}
	if (has_capture_trigger(rel, CAPTURE_TRUNCATE_TRIGGER, "capture_truncate_guard"))
	{
		execute_ddl(psprintf("DROP TRIGGER %s ON %s",
							 quote_identifier(CAPTURE_TRUNCATE_TRIGGER), qualified_name));
		dropped = true;
	}
	return dropped;
}

static void
create_capture_triggers(Relation rel, const char *qualified_name, const char *topic,
						const char *event_type, bool skip_unchanged, List *key_columns)
{
	StringInfoData args;
	ListCell   *lc;
	ObjectAddress trigger;
	ObjectAddress guard;

	initStringInfo(&args);
	appendStringInfo(&args, "%s, %s, %s", quote_literal_cstr(topic),
					 quote_literal_cstr(event_type ? event_type : ""),
					 skip_unchanged ? "'true'" : "'false'");
	foreach(lc, key_columns)
		appendStringInfo(&args, ", %s",
						 quote_literal_cstr(get_attname(RelationGetRelid(rel),
														lfirst_int(lc), false)));

	execute_ddl(psprintf("CREATE TRIGGER %s AFTER INSERT OR UPDATE OR DELETE ON %s"
						 " FOR EACH ROW EXECUTE FUNCTION eventpipe.capture_trigger(%s)",
						 quote_identifier(CAPTURE_ROW_TRIGGER), qualified_name, args.data));
	execute_ddl(psprintf("CREATE TRIGGER %s BEFORE TRUNCATE ON %s"
						 " FOR EACH STATEMENT EXECUTE FUNCTION eventpipe.capture_truncate_guard()",
						 quote_identifier(CAPTURE_TRUNCATE_TRIGGER), qualified_name));

	/*
	 * A key column cannot be dropped while the capture lasts (DROP COLUMN
	 * ... CASCADE ends it), and the TRUNCATE guard goes with the row trigger
	 * however that is dropped.
	 */
	ObjectAddressSet(trigger, TriggerRelationId,
					 get_trigger_oid(RelationGetRelid(rel), CAPTURE_ROW_TRIGGER, false));
	ObjectAddressSet(guard, TriggerRelationId,
					 get_trigger_oid(RelationGetRelid(rel), CAPTURE_TRUNCATE_TRIGGER, false));
	recordDependencyOn(&guard, &trigger, DEPENDENCY_AUTO);
	foreach(lc, key_columns)
	{
		ObjectAddress column;

		ObjectAddressSubSet(column, RelationRelationId, RelationGetRelid(rel),
							lfirst_int(lc));
		recordDependencyOn(&trigger, &column, DEPENDENCY_NORMAL);
	}
	CommandCounterIncrement();
}

static char *
qualified_table_name(Relation rel)
{
	return quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									  RelationGetRelationName(rel));
}

/*
 * Runs the trigger DDL as the owner of the SQL function being called (the
 * extension's owner).  Errors abort the transaction, which restores the
 * user.
 */
static void
become_function_owner(FunctionCallInfo fcinfo, Oid *save_userid, int *save_sec_context)
{
	GetUserIdAndSecContext(save_userid, save_sec_context);
	SetUserIdAndSecContext(eventpipe_function_owner(fcinfo->flinfo->fn_oid),
						   *save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
}

static void
require_argument(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", name)));
}

Datum
eventpipe_capture(PG_FUNCTION_ARGS)
{
	Relation	rel;
	char	   *topic;
	char	   *event_type = NULL;
	List	   *key_columns;
	char	   *qualified_name;
	Oid			save_userid;
	int			save_sec_context;

	require_argument(fcinfo, 0, "rel");
	require_argument(fcinfo, 1, "topic");
	require_argument(fcinfo, 4, "skip_unchanged");
	require_argument(fcinfo, 5, "snapshot");

	rel = open_owned_table(PG_GETARG_OID(0));
	check_capturable(rel);

	topic = text_to_cstring(PG_GETARG_TEXT_PP(1));
	eventpipe_check_topic_name(topic);
	if (!PG_ARGISNULL(3))
	{
		event_type = text_to_cstring(PG_GETARG_TEXT_PP(3));
		if (event_type[0] == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("event_type must not be empty"),
					 errhint("Pass NULL for the default, \"<table>.<op>\".")));
	}
	key_columns = PG_ARGISNULL(2) ? primary_key_columns(rel)
		: named_key_columns(rel, PG_GETARG_ARRAYTYPE_P(2));

	qualified_name = qualified_table_name(rel);
	become_function_owner(fcinfo, &save_userid, &save_sec_context);
	/* capturing again replaces the settings: never two sets of triggers */
	drop_capture_triggers(rel, qualified_name);
	create_capture_triggers(rel, qualified_name, topic, event_type,
							PG_GETARG_BOOL(4), key_columns);
	SetUserIdAndSecContext(save_userid, save_sec_context);

	/*
	 * Committed with the triggers, so every change after the snapshot's
	 * first read has its event: see docs/design.md, "Snapshots".
	 */
	if (PG_GETARG_BOOL(5))
		snapshot_request(rel, NULL, eventpipe_function_owner(fcinfo->flinfo->fn_oid));

	relation_close(rel, NoLock);
	PG_RETURN_VOID();
}

Datum
eventpipe_uncapture(PG_FUNCTION_ARGS)
{
	Relation	rel;
	bool		was_captured;
	Oid			save_userid;
	int			save_sec_context;

	require_argument(fcinfo, 0, "rel");
	rel = open_owned_table(PG_GETARG_OID(0));
	become_function_owner(fcinfo, &save_userid, &save_sec_context);
	was_captured = drop_capture_triggers(rel, qualified_table_name(rel));
	SetUserIdAndSecContext(save_userid, save_sec_context);
	relation_close(rel, NoLock);
	PG_RETURN_BOOL(was_captured);
}

/*
 * pg_trigger.tgargs (the arguments, each followed by a NUL byte) as a text
 * array, for the eventpipe.captures view.
 */
Datum
eventpipe_trigger_arguments(PG_FUNCTION_ARGS)
{
	bytea	   *raw = PG_GETARG_BYTEA_PP(0);
	const char *p = VARDATA_ANY(raw);
	const char *end = p + VARSIZE_ANY_EXHDR(raw);
	List	   *args = NIL;
	Datum	   *elems;
	ListCell   *lc;
	int			i = 0;

	while (p < end)
	{
		size_t		len = strnlen(p, end - p);

		args = lappend(args, cstring_to_text_with_len(p, len));
		p += len + 1;
	}
	elems = palloc(sizeof(Datum) * Max(list_length(args), 1));
	foreach(lc, args)
		elems[i++] = PointerGetDatum(lfirst(lc));
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, i, TEXTOID, -1, false, TYPALIGN_INT));
}
