/*
 * snapshot_request.c
 *		eventpipe.snapshot(rel, condition) and eventpipe.cancel_snapshot(id):
 *		asking for a snapshot of a captured table and stopping one.  The
 *		snapshot worker (worker/snapshot/) does the reading; these functions
 *		only check and record the request in eventpipe.table_snapshots, and
 *		wake the consumer manager at commit, which starts that worker.
 *
 * The rules are capture()'s: the caller must own the table (and have been
 * granted EXECUTE).  The role recorded as requested_by is the caller, taken
 * from the system; the worker reads the table as that role.  The table is
 * closed to everyone, so the row is written as the function's owner (the
 * extension's owner).
 */
#include "postgres.h"

#include "access/relation.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "optimizer/plancat.h"
#include "storage/bufmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "capture.h"
#include "eventpipe.h"
#include "snapshot.h"
#include "compat.h"

PG_FUNCTION_INFO_V1(eventpipe_snapshot);
PG_FUNCTION_INFO_V1(eventpipe_cancel_snapshot);

/* Runs one statement of this file with its arguments; an ERROR unless it went as expected */
static void
run(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls, int expected)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	if (rc != expected)
		elog(ERROR, "eventpipe: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
}

/* The planner's estimate of the table's rows (from its size when never analyzed) */
static int64
estimated_rows(Relation rel)
{
	BlockNumber pages;
	double		tuples;
	double		allvisfrac;

	estimate_rel_size(rel, NULL, &pages, &tuples, &allvisfrac);
	return (int64) tuples;
}

int64
snapshot_request(Relation rel, const char *condition, Oid function_owner)
{
	Oid			requester = GetUserId();
	char	   *tree = NULL;
	Oid			types[5] = {REGCLASSOID, TEXTOID, TEXTOID, REGROLEOID, INT8OID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	Oid			save_userid;
	int			save_sec_context;
	bool		isnull;
	int64		id;

	if (capture_row_trigger(rel) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" is not captured", RelationGetRelationName(rel)),
				 errhint("A snapshot emits a captured table's rows: call eventpipe.capture() first, or capture(..., snapshot => true).")));
	if (!OidIsValid(RelationGetPrimaryKeyIndex(rel, false)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("table \"%s\" has no primary key", RelationGetRelationName(rel)),
				 errdetail("A snapshot reads the table in primary-key order, so that it can resume where it stopped.")));
	if (condition != NULL)
		tree = snapshot_check_condition(rel, condition);

	values[0] = ObjectIdGetDatum(RelationGetRelid(rel));
	values[1] = condition ? CStringGetTextDatum(condition) : (Datum) 0;
	nulls[1] = condition ? ' ' : 'n';
	values[2] = tree ? CStringGetTextDatum(tree) : (Datum) 0;
	nulls[2] = tree ? ' ' : 'n';
	values[3] = ObjectIdGetDatum(requester);
	values[4] = Int64GetDatum(estimated_rows(rel));

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(function_owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	run("INSERT INTO eventpipe.table_snapshots"
		" (rel, condition, condition_expr, requested_by, rows_estimated)"
		" VALUES ($1, $2, $3, $4, $5) RETURNING id",
		5, types, values, nulls, SPI_OK_INSERT_RETURNING);
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	SetUserIdAndSecContext(save_userid, save_sec_context);

	eventpipe_wake_consumer_manager_at_commit();
	return id;
}

Datum
eventpipe_snapshot(PG_FUNCTION_ARGS)
{
	Oid			relid;
	Relation	rel;
	int64		id;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("rel must not be null")));
	relid = PG_GETARG_OID(0);
	if (!object_ownercheck(RelationRelationId, relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, get_relkind_objtype(get_rel_relkind(relid)),
					   get_rel_name(relid));
	rel = relation_open(relid, AccessShareLock);
	id = snapshot_request(rel, PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1)),
						  eventpipe_function_owner(fcinfo->flinfo->fn_oid));
	relation_close(rel, NoLock);
	PG_RETURN_INT64(id);
}

/*
 * The table's owner, and the role that asked for the snapshot, may cancel
 * it.  The UPDATE waits for the chunk the worker is emitting, if any: the
 * worker holds the row until its chunk commits, and emits no other.
 */
Datum
eventpipe_cancel_snapshot(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	Oid			types[1] = {INT8OID};
	Datum		values[1];
	Oid			save_userid;
	int			save_sec_context;
	Oid			relid;
	Oid			requester;
	bool		isnull;
	bool		cancelled;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("id must not be null")));
	values[0] = PG_GETARG_DATUM(0);

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(eventpipe_function_owner(fcinfo->flinfo->fn_oid),
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	run("SELECT s.rel::pg_catalog.oid, s.requested_by::pg_catalog.oid"
		" FROM eventpipe.table_snapshots AS s WHERE s.id OPERATOR(pg_catalog.=) $1",
		1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("snapshot " INT64_FORMAT " does not exist", PG_GETARG_INT64(0)),
				 errhint("eventpipe.snapshots lists the snapshots.")));
	relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	requester = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (!has_privs_of_role(caller, requester) &&
		!(SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)) &&
		  object_ownercheck(RelationRelationId, relid, caller)))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to cancel snapshot " INT64_FORMAT, PG_GETARG_INT64(0)),
				 errdetail("Only the table's owner and the role that asked for the snapshot may cancel it.")));
	run("UPDATE eventpipe.table_snapshots AS s"
		" SET state = 'cancelled', finished_at = pg_catalog.now()"
		" WHERE s.id OPERATOR(pg_catalog.=) $1 AND s.state OPERATOR(pg_catalog.=) 'running'",
		1, types, values, NULL, SPI_OK_UPDATE);
	cancelled = SPI_processed > 0;
	SPI_finish();
	SetUserIdAndSecContext(save_userid, save_sec_context);
	PG_RETURN_BOOL(cancelled);
}
