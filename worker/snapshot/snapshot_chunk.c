/*
 * snapshot_chunk.c
 *		One chunk of a snapshot, in one transaction of the snapshot worker:
 *		lock the oldest running snapshot's row of eventpipe.table_snapshots,
 *		read the next chunk of its table in primary-key order with row
 *		locks, write a "read" event per row that matches its condition into
 *		the outbox, and store how far it got, all committed together.
 *
 * Why this makes the seam exact (docs/design.md, "Snapshots"): the rows
 * are read with SELECT ... FOR SHARE, so a change of one of them either
 * committed before the chunk locked it (the chunk reads its result, and
 * its event took its outbox id before that commit, so before the read
 * event's) or waits for the chunk's commit (its event takes a later id);
 * a row deleted before the chunk locks it is skipped.  The relay sends the
 * events of a key in outbox id order.
 *
 * The progress (the last row's primary key as its columns' texts, rows
 * emitted) is written in the same transaction as the events: after any
 * crash the snapshot resumes after the last committed chunk, and emits
 * no chunk twice.  The snapshot's row stays locked until the commit, so
 * cancel_snapshot() waits for the chunk and a second worker could not
 * emit the same chunk.
 *
 * The table is read, the condition evaluated and the row images rendered
 * as the role that asked for the snapshot (user_code_enter(): a
 * security-restricted operation whose settings are rolled back); the
 * events are written as the extension's owner, as the capture trigger
 * writes them.  The worker's own statements name every object with its
 * schema; the chunk's statement names the table and the key's comparison
 * operators with theirs.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relation.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "extension/capture.h"
#include "extension/guc.h"
#include "snapshot_worker.h"
#include "worker/consumer/user_code.h"
#include "worker/worker_loop.h"
#include "extension/compat.h"

enum
{
	PICK_SNAPSHOT,
	OUTBOX_BACKLOG,
	STORE_PROGRESS,
	MARK_FAILED,
	N_STATEMENTS
};

static WorkerStatement statements[N_STATEMENTS] = {
	[PICK_SNAPSHOT] = {
		"lock the oldest running snapshot",
		"SELECT s.id, s.rel::pg_catalog.oid, s.condition_expr, s.requested_by::pg_catalog.oid,"
		" s.last_key FROM eventpipe.table_snapshots AS s"
		" WHERE s.state OPERATOR(pg_catalog.=) 'running'"
		" ORDER BY s.id LIMIT 1 FOR UPDATE",
		false, 0, {InvalidOid}
	},
	[OUTBOX_BACKLOG] = {
		"measure the outbox backlog",
		"SELECT pg_catalog.max(o.id) OPERATOR(pg_catalog.-) pg_catalog.min(o.id)"
		" FROM eventpipe.outbox AS o",
		true, 0, {InvalidOid}
	},
	[STORE_PROGRESS] = {
		"store the snapshot's progress",
		"UPDATE eventpipe.table_snapshots AS s"
		" SET last_key = COALESCE($2, s.last_key),"
		" rows_emitted = s.rows_emitted OPERATOR(pg_catalog.+) $3,"
		" state = CASE WHEN $4 THEN 'done' ELSE s.state END,"
		" finished_at = CASE WHEN $4 THEN pg_catalog.now() END"
		" WHERE s.id OPERATOR(pg_catalog.=) $1",
		false, 4, {INT8OID, TEXTARRAYOID, INT8OID, BOOLOID}
	},
	[MARK_FAILED] = {
		"mark the snapshot failed",
		"UPDATE eventpipe.table_snapshots AS s"
		" SET state = 'failed', error = $2, finished_at = pg_catalog.now()"
		" WHERE s.id OPERATOR(pg_catalog.=) $1 AND s.state OPERATOR(pg_catalog.=) 'running'",
		false, 2, {INT8OID, TEXTOID}
	},
};

/* The snapshot a chunk works on, as its row says */
typedef struct TableSnapshot
{
	int64		id;
	Oid			relid;
	char	   *condition_expr; /* NULL: every row */
	Oid			requester;
	ArrayType  *last_key;		/* NULL: from the first row */
} TableSnapshot;

/* The primary key of the table, and the chunk's statement over it */
typedef struct ChunkScan
{
	int			nkeys;
	AttrNumber	keys[INDEX_MAX_KEYS];
	Oid			types[INDEX_MAX_KEYS];
	char	   *sql;
} ChunkScan;

/* "OPERATOR(schema.name)" of an operator */
static char *
qualified_operator(Oid opno, char **name_out)
{
	HeapTuple	tuple = SearchSysCache1(OPEROID, ObjectIdGetDatum(opno));
	Form_pg_operator op;
	char	   *result;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for operator %u", opno);
	op = (Form_pg_operator) GETSTRUCT(tuple);
	result = psprintf("OPERATOR(%s.%s)", quote_identifier(get_namespace_name(op->oprnamespace)),
					  NameStr(op->oprname));
	if (name_out)
		*name_out = pstrdup(NameStr(op->oprname));
	ReleaseSysCache(tuple);
	return result;
}

/* The operator of strategy in the operator class of key column i of index */
static Oid
key_operator(Relation index, int i, int16 strategy)
{
	Oid			opno = get_opfamily_member(index->rd_opfamily[i], index->rd_opcintype[i],
										   index->rd_opcintype[i], strategy);

	if (!OidIsValid(opno))
		elog(ERROR, "operator family %u has no operator of strategy %d",
			 index->rd_opfamily[i], strategy);
	return opno;
}

/*
 * SELECT CAST(t.* AS tbl) FROM ONLY tbl AS t [WHERE ROW(keys) > ROW($1, ...)] ORDER BY keys
 * LIMIT n FOR SHARE OF t, with the ordering operators of the primary key's
 * operator classes, so that the order and the resume point are the index's.
 * A row comparison names one operator for every column: a key whose columns'
 * classes name their "greater" operators differently is refused.
 */
static void
build_chunk_scan(Relation rel, bool resume, ChunkScan *scan)
{
	Relation	index = index_open(RelationGetPrimaryKeyIndex(rel, false), AccessShareLock);
	StringInfoData sql;
	StringInfoData columns;
	StringInfoData order;
	StringInfoData params;
	char	   *greater = NULL;
	char	   *table_name;
	int			i;

	initStringInfo(&sql);
	initStringInfo(&columns);
	initStringInfo(&order);
	initStringInfo(&params);
	scan->nkeys = index->rd_index->indnkeyatts;
	for (i = 0; i < scan->nkeys; i++)
	{
		AttrNumber	attnum = index->rd_index->indkey.values[i];
		const char *column = quote_identifier(get_attname(RelationGetRelid(rel), attnum, false));
		char	   *name;
		char	   *gt = qualified_operator(key_operator(index, i, BTGreaterStrategyNumber), &name);

		if (greater != NULL && strcmp(greater, gt) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot snapshot \"%s\": its primary key's columns compare with differently named operators",
							RelationGetRelationName(rel))));
		greater = gt;
		scan->keys[i] = attnum;
		scan->types[i] = get_atttype(RelationGetRelid(rel), attnum);
		appendStringInfo(&columns, "%st.%s", i ? ", " : "", column);
		appendStringInfo(&params, "%s$%d", i ? ", " : "", i + 1);
		appendStringInfo(&order, "%st.%s USING %s", i ? ", " : "", column,
						 qualified_operator(key_operator(index, i, BTLessStrategyNumber), NULL));
	}
	index_close(index, AccessShareLock);

	/*
	 * The whole row as CAST(t.* AS ...): a bare t would name a column called
	 * t, if the table has one, and its value would be read as the row.
	 */
	table_name = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
											RelationGetRelationName(rel));
	appendStringInfo(&sql, "SELECT CAST(t.* AS %s) FROM ONLY %s AS t", table_name, table_name);
	if (resume)
		appendStringInfo(&sql, " WHERE ROW(%s) %s ROW(%s)", columns.data, greater, params.data);
	appendStringInfo(&sql, " ORDER BY %s LIMIT %d FOR SHARE OF t", order.data,
					 eventpipe_snapshot_chunk_rows);
	scan->sql = sql.data;
}

/*
 * The settings a key's text depends on, pinned while it is written and
 * while it is read back: the next chunk may run in a worker that connected
 * after an ALTER DATABASE ... SET, and must read the text as it was meant
 * (under DateStyle 'SQL, DMY' a date is written 10/01/2026, which 'MDY'
 * reads as the first of October).  Returns the level to unpin.
 */
static int
pin_key_text_settings(void)
{
	static const char *const pinned[][2] = {
		{"datestyle", "ISO, YMD"},
		{"intervalstyle", "postgres"},
		{"extra_float_digits", "3"},
		{"lc_monetary", "C"},
		{"array_nulls", "on"},
	};
	int			nestlevel = NewGUCNestLevel();
	int			i;

	for (i = 0; i < (int) lengthof(pinned); i++)
		(void) set_config_option(pinned[i][0], pinned[i][1], PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	return nestlevel;
}

static void
unpin_key_text_settings(int nestlevel)
{
	AtEOXact_GUC(false, nestlevel);
}

/* The key of the last chunk as the statement's arguments */
static Datum *
resume_arguments(const ChunkScan *scan, ArrayType *last_key)
{
	Datum	   *texts;
	bool	   *nulls;
	int			count;
	Datum	   *values = palloc(sizeof(Datum) * scan->nkeys);
	int			nestlevel;
	int			i;

	deconstruct_array(last_key, TEXTOID, -1, false, TYPALIGN_INT, &texts, &nulls, &count);
	if (count != scan->nkeys)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the primary key changed since the snapshot started")));
	nestlevel = pin_key_text_settings();
	for (i = 0; i < count; i++)
	{
		Oid			input;
		Oid			ioparam;

		getTypeInputInfo(scan->types[i], &input, &ioparam);
		values[i] = OidInputFunctionCall(input, TextDatumGetCString(texts[i]), ioparam, -1);
	}
	unpin_key_text_settings(nestlevel);
	return values;
}

/* The primary key of a row as a text array of its columns' texts */
static Datum
row_key(Relation rel, const ChunkScan *scan, HeapTuple row)
{
	Datum	   *texts = palloc(sizeof(Datum) * scan->nkeys);
	int			nestlevel = pin_key_text_settings();
	int			i;

	for (i = 0; i < scan->nkeys; i++)
	{
		bool		isnull;
		Datum		value = heap_getattr(row, scan->keys[i], RelationGetDescr(rel), &isnull);
		Oid			output;
		bool		varlena;

		getTypeOutputInfo(scan->types[i], &output, &varlena);
		texts[i] = CStringGetTextDatum(isnull ? "" : OidOutputFunctionCall(output, value));
	}
	unpin_key_text_settings(nestlevel);
	return PointerGetDatum(construct_array(texts, scan->nkeys, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * Why the snapshot cannot go on, or NULL: its table was dropped or is no
 * longer captured, has no primary key any more, or the role that asked is
 * gone or no longer owns it.
 */
static char *
snapshot_fault(const TableSnapshot *snapshot, Relation rel)
{
	if (rel == NULL)
		return psprintf("its table (OID %u) was dropped", snapshot->relid);
	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(snapshot->requester)))
		return psprintf("the role that asked for it (OID %u) was dropped", snapshot->requester);
	if (!object_ownercheck(RelationRelationId, snapshot->relid, snapshot->requester))
		return psprintf("%s no longer owns table \"%s\"",
						GetUserNameFromId(snapshot->requester, false), RelationGetRelationName(rel));
	if (capture_row_trigger(rel) == NULL)
		return psprintf("table \"%s\" is no longer captured", RelationGetRelationName(rel));
	if (!OidIsValid(RelationGetPrimaryKeyIndex(rel, false)))
		return psprintf("table \"%s\" has no primary key any more", RelationGetRelationName(rel));
	return NULL;
}

/* The running snapshot with the lowest id, locked; false when there is none */
static bool
pick_snapshot(TableSnapshot *snapshot)
{
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	Datum		value;

	worker_run_statement(&statements[PICK_SNAPSHOT], NULL, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return false;
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	snapshot->id = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
	snapshot->relid = DatumGetObjectId(SPI_getbinval(row, desc, 2, &isnull));
	snapshot->condition_expr = worker_text_column(row, desc, 3);
	snapshot->requester = DatumGetObjectId(SPI_getbinval(row, desc, 4, &isnull));
	value = SPI_getbinval(row, desc, 5, &isnull);
	snapshot->last_key = isnull ? NULL : DatumGetArrayTypeP(value);
	return true;
}

static bool
backlog_is_full(void)
{
	bool		isnull;
	Datum		span;

	worker_run_statement(&statements[OUTBOX_BACKLOG], NULL, NULL, SPI_OK_SELECT);
	span = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return !isnull && DatumGetInt64(span) >= eventpipe_snapshot_max_backlog;
}

/* Row i of the chunk's result: the table's row, in the table's row type */
static void
chunk_row(Relation rel, uint64 i, HeapTuple row)
{
	bool		isnull;

	row->t_data = DatumGetHeapTupleHeader(SPI_getbinval(SPI_tuptable->vals[i],
														SPI_tuptable->tupdesc, 1, &isnull));
	row->t_len = HeapTupleHeaderGetDatumLength(row->t_data);
	ItemPointerSetInvalid(&row->t_self);
	row->t_tableOid = RelationGetRelid(rel);
}

/* Does the row match the condition (none: every row does)? */
static bool
row_matches(ExprState *condition, ExprContext *econtext, TupleTableSlot *slot, HeapTuple row)
{
	bool		matches;

	if (condition == NULL)
		return true;
	ExecStoreHeapTuple(row, slot, false);
	econtext->ecxt_scantuple = slot;
	matches = ExecQual(condition, econtext);
	ResetExprContext(econtext);
	return matches;
}

/*
 * Reads the chunk and emits its events, as the role that asked; returns
 * the rows read (matching or not) and sets *emitted, and *last_key to the
 * key of the last row read (left alone when none was).
 */
static uint64
read_and_emit(const TableSnapshot *snapshot, Relation rel, const ChunkScan *scan,
			  int64 *emitted, Datum *last_key)
{
	Trigger    *trigger = capture_row_trigger(rel);
	UserCodeContext as_requester;
	EState	   *estate = CreateExecutorState();
	ExprState  *condition = NULL;
	TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsHeapTuple);
	ExprContext *econtext = GetPerTupleExprContext(estate);
	Datum	   *arguments;
	HeapTupleData row;
	uint64		read;
	uint64		i;
	int			rc;

	user_code_enter(snapshot->requester, &as_requester);
	/* a key column's input function may check a domain's constraints: the requester's code */
	arguments = snapshot->last_key ? resume_arguments(scan, snapshot->last_key) : NULL;
	if (snapshot->condition_expr != NULL)
		condition = ExecPrepareQual(list_make1(stringToNode(snapshot->condition_expr)), estate);
	rc = SPI_execute_with_args(scan->sql, arguments ? scan->nkeys : 0, (Oid *) scan->types,
							   arguments, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "eventpipe: the snapshot's read failed: %s", SPI_result_code_string(rc));
	if (SPI_tuptable->tupdesc->natts != 1 ||
		TupleDescAttr(SPI_tuptable->tupdesc, 0)->atttypid != rel->rd_rel->reltype)
		elog(ERROR, "eventpipe: the snapshot's read did not return rows of %s",
			 RelationGetRelationName(rel));
	read = SPI_processed;
	*emitted = 0;
	for (i = 0; i < read; i++)
	{
		chunk_row(rel, i, &row);
		if (!row_matches(condition, econtext, slot, &row))
			continue;
		capture_emit_read_event(rel, trigger, &row);
		(*emitted)++;
	}
	if (read > 0)
	{
		chunk_row(rel, read - 1, &row);
		*last_key = row_key(rel, scan, &row);
	}
	user_code_leave(&as_requester);
	ExecDropSingleTupleTableSlot(slot);
	FreeExecutorState(estate);
	return read;
}

static void
store_progress(int64 id, Datum last_key, int64 emitted, bool finished)
{
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};

	values[0] = Int64GetDatum(id);
	values[1] = last_key;
	nulls[1] = last_key == (Datum) 0 ? 'n' : ' ';
	values[2] = Int64GetDatum(emitted);
	values[3] = BoolGetDatum(finished);
	worker_run_statement(&statements[STORE_PROGRESS], values, nulls, SPI_OK_UPDATE);
}

static void
mark_failed(int64 id, const char *error)
{
	Datum		values[2];

	values[0] = Int64GetDatum(id);
	values[1] = CStringGetTextDatum(error);
	worker_run_statement(&statements[MARK_FAILED], values, NULL, SPI_OK_UPDATE);
}

/*
 * Emits the next chunk of the oldest running snapshot, in a transaction of
 * its own; *snapshot_id says which (for an error raised meanwhile).
 */
SnapshotChunkResult
snapshot_emit_chunk(int64 *snapshot_id)
{
	MemoryContext caller_context = worker_begin_transaction("eventpipe: emitting a snapshot chunk");
	SnapshotChunkResult result = SNAPSHOT_CHUNK_EMITTED;
	TableSnapshot	snapshot;

	*snapshot_id = 0;
	if (!worker_extension_table_ready("table_snapshots"))
		result = SNAPSHOT_NONE_RUNNING;
	else
	{
		worker_spi_connect();
		if (!pick_snapshot(&snapshot))
			result = SNAPSHOT_NONE_RUNNING;
		else if (backlog_is_full())
			result = SNAPSHOT_BACKLOG_FULL;
		else
		{
			Relation	rel = try_relation_open(snapshot.relid, AccessShareLock);
			char	   *fault;

			*snapshot_id = snapshot.id;
			if (rel != NULL && rel->rd_rel->relkind != RELKIND_RELATION)
			{
				relation_close(rel, AccessShareLock);
				rel = NULL;
			}
			fault = snapshot_fault(&snapshot, rel);
			if (fault != NULL)
				mark_failed(snapshot.id, fault);
			else
			{
				ChunkScan	scan;
				Datum		last_key = (Datum) 0;
				int64		emitted;
				uint64		read;

				build_chunk_scan(rel, snapshot.last_key != NULL, &scan);
				read = read_and_emit(&snapshot, rel, &scan, &emitted, &last_key);
				store_progress(snapshot.id, last_key, emitted,
							   read < (uint64) eventpipe_snapshot_chunk_rows);
			}
			if (rel != NULL)
				relation_close(rel, NoLock);
		}
		SPI_finish();
	}
	worker_end_transaction(caller_context);
	return result;
}

/* After an error that is the snapshot's own: it ends, failed, with the error */
void
snapshot_mark_failed(int64 snapshot_id, const char *error)
{
	MemoryContext caller_context = worker_begin_transaction("eventpipe: recording a failed snapshot");

	worker_spi_connect();
	mark_failed(snapshot_id, error);
	SPI_finish();
	worker_end_transaction(caller_context);
}
