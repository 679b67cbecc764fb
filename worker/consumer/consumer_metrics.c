/*
 * consumer_metrics.c
 *		The metric rules' effect of a batch: advisory locks on the rows it
 *		touches, taken in one global order, then one upsert per target and
 *		set of columns, with the deltas summed per row and column here.  The
 *		upserts' plans are kept, found by their text.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "nodes/bitmapset.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "consumer.h"
#include "consumer_sql.h"
#include "user_code.h"
#include "worker/worker_loop.h"

static bool
same_target(const MetricRule *a, const MetricRule *b)
{
	return a->target == b->target && a->owner == b->owner;
}

/*
 * The effects of the messages still to apply, as arrays: the target of
 * each and its key.  Returns how many.
 */
static int
collect_effects(ConsumedMessage *messages, int count, const ConsumerRules *rules,
				Datum *targets, Datum *keys)
{
	int			n = 0;
	int			i;

	for (i = 0; i < count; i++)
	{
		ListCell   *lc;

		if (messages[i].fate != MESSAGE_APPLIED)
			continue;
		foreach(lc, messages[i].effects)
		{
			MetricEffect *effect = (MetricEffect *) lfirst(lc);

			targets[n] = ObjectIdGetDatum(rules->metrics[effect->rule].target);
			keys[n++] = effect->key;
		}
	}
	return n;
}

/* How many effects the messages have at most. */
static int
count_effects(ConsumedMessage *messages, int count)
{
	int			n = 0;
	int			i;

	for (i = 0; i < count; i++)
		n += list_length(messages[i].effects);
	return n;
}

/*
 * Transaction-level advisory locks on the metric rows the messages touch,
 * taken in sorted order before any upsert: two workers that touch the same
 * rows wait for each other, and, all locks coming in one global order,
 * never deadlock.  A lock covers (target, a bucket of keys by hash), so a
 * batch takes at most LOCK_BUCKETS locks per target whatever its number of
 * keys, and never fills the server's lock table.  The lock is
 * pg_advisory_xact_lock(target, bucket), with bucket the key's hashtext()
 * modulo LOCK_BUCKETS, so a DBA can see and take the same locks from SQL.
 */
#define LOCK_BUCKETS 256

typedef struct RowLock
{
	int32		target;
	int32		bucket;
} RowLock;

static int
compare_row_locks(const void *a, const void *b)
{
	const RowLock *x = (const RowLock *) a;
	const RowLock *y = (const RowLock *) b;

	if (x->target != y->target)
		return x->target < y->target ? -1 : 1;
	return x->bucket - y->bucket;
}

static void
lock_metric_rows(ConsumedMessage *messages, int count, const ConsumerRules *rules)
{
	int			most = count_effects(messages, count);
	Datum	   *targets = palloc(sizeof(Datum) * (most + 1));
	Datum	   *keys = palloc(sizeof(Datum) * (most + 1));
	RowLock    *locks = palloc(sizeof(RowLock) * (most + 1));
	int			n = collect_effects(messages, count, rules, targets, keys);
	int			i;

	for (i = 0; i < n; i++)
	{
		text	   *key = DatumGetTextPP(keys[i]);
		uint32		hash = DatumGetUInt32(hash_any((unsigned char *) VARDATA_ANY(key),
												   VARSIZE_ANY_EXHDR(key)));

		locks[i].target = (int32) (DatumGetObjectId(targets[i]) & 0x7FFFFFFF);
		locks[i].bucket = (int32) ((hash & 0x7FFFFFFF) % LOCK_BUCKETS);
	}
	qsort(locks, n, sizeof(RowLock), compare_row_locks);
	for (i = 0; i < n; i++)
		if (i == 0 || compare_row_locks(&locks[i - 1], &locks[i]) != 0)
			DirectFunctionCall2(pg_advisory_xact_lock_int4,
								Int32GetDatum(locks[i].target), Int32GetDatum(locks[i].bucket));
}

/*
 * The upserts' plans, kept for the worker's life and found by their text,
 * so that no batch parses and plans its upserts again.  Rules seldom
 * change; when the distinct
 * statements seen pass UPSERT_PLANS_KEPT, all are dropped and made again.
 */
#define UPSERT_PLANS_KEPT 64

typedef struct KeptUpsert
{
	char	   *sql;
	SPIPlanPtr	plan;
} KeptUpsert;

static List *upsert_plans = NIL;

static SPIPlanPtr
upsert_plan(const char *sql, int nargs, Oid *types)
{
	ListCell   *lc;
	KeptUpsert *kept;
	MemoryContext caller_context;

	foreach(lc, upsert_plans)
	{
		kept = (KeptUpsert *) lfirst(lc);
		if (strcmp(kept->sql, sql) == 0)
			return kept->plan;
	}
	if (list_length(upsert_plans) >= UPSERT_PLANS_KEPT)
	{
		foreach(lc, upsert_plans)
		{
			kept = (KeptUpsert *) lfirst(lc);
			SPI_freeplan(kept->plan);
			pfree(kept->sql);
		}
		list_free_deep(upsert_plans);
		upsert_plans = NIL;
	}
	caller_context = MemoryContextSwitchTo(TopMemoryContext);
	kept = palloc(sizeof(KeptUpsert));
	kept->sql = pstrdup(sql);
	kept->plan = NULL;
	upsert_plans = lappend(upsert_plans, kept);
	MemoryContextSwitchTo(caller_context);
	kept->plan = worker_prepare_kept(sql, nargs, types, 0);
	return kept->plan;
}

/* One effect on a target: add value to column (an index in the target's columns) of key's row. */
typedef struct TargetDelta
{
	Datum		key;			/* text */
	int			column;
	Datum		value;			/* numeric; (Datum) 0 for one */
} TargetDelta;

/* A target row's change: the columns the batch changes in it, and by how much. */
typedef struct RowChange
{
	Datum		key;			/* text */
	Bitmapset  *set;			/* its columns */
	Datum	   *sums;			/* numeric, by column; (Datum) 0 for one not in set */
} RowChange;

static int
compare_keys(const void *a, const void *b)
{
	text	   *x = DatumGetTextPP(((const TargetDelta *) a)->key);
	text	   *y = DatumGetTextPP(((const TargetDelta *) b)->key);
	int			x_len = VARSIZE_ANY_EXHDR(x);
	int			y_len = VARSIZE_ANY_EXHDR(y);
	int			order = memcmp(VARDATA_ANY(x), VARDATA_ANY(y), Min(x_len, y_len));

	return order != 0 ? order : x_len - y_len;
}

static int
compare_keys_then_columns(const void *a, const void *b)
{
	int			order = compare_keys(a, b);

	if (order != 0)
		return order;
	return ((const TargetDelta *) a)->column - ((const TargetDelta *) b)->column;
}

static Datum
add_numerics(Datum sum, Datum value)
{
	return sum == (Datum) 0 ? value : DirectFunctionCall2(numeric_add, sum, value);
}

/* The sum of n deltas, as a numeric. */
static Datum
sum_of(const TargetDelta *deltas, int n)
{
	Datum		sum = (Datum) 0;
	int64		ones = 0;
	int			i;

	for (i = 0; i < n; i++)
	{
		if (deltas[i].value == (Datum) 0)
			ones++;
		else
			sum = add_numerics(sum, deltas[i].value);
	}
	if (ones > 0)
		sum = add_numerics(sum, NumericGetDatum(int64_to_numeric(ones)));
	return sum;
}

/*
 * One upsert of rows that change one set of columns: their keys and, per
 * column, the sums.  The keys of a text primary key are the rows as they
 * are, one per key; the keys of another type are grouped again after the
 * cast, which can make two spellings one key (7 and 07 for a bigint).
 */
static void
upsert_columns(const MetricRule *rule, char **columns, Bitmapset *set,
			   RowChange *rows, int nrows)
{
	int			ncolumns = bms_num_members(set);
	bool		text_key = strcmp(rule->key_type, "pg_catalog.text") == 0;
	Datum	   *values = palloc(sizeof(Datum) * (ncolumns + 1));
	Datum	   *column_values = palloc(sizeof(Datum) * (nrows + 1));
	Oid		   *types = palloc(sizeof(Oid) * (ncolumns + 1));
	StringInfoData names,
				selected,
				arrays,
				aliases,
				sets;
	int			column = -1;
	int			nth = 0;
	int			i;
	UserCodeContext user;

	initStringInfo(&names);
	initStringInfo(&selected);
	initStringInfo(&arrays);
	initStringInfo(&aliases);
	initStringInfo(&sets);
	for (i = 0; i < nrows; i++)
		column_values[i] = rows[i].key;
	values[0] = consumer_make_array(column_values, NULL, nrows, TEXTOID);
	types[0] = TEXTARRAYOID;
	while ((column = bms_next_member(set, column)) >= 0)
	{
		const char *name = columns[column];

		nth++;
		for (i = 0; i < nrows; i++)
			column_values[i] = rows[i].sums[column];
		values[nth] = consumer_make_array(column_values, NULL, nrows, NUMERICOID);
		types[nth] = NUMERICARRAYOID;
		appendStringInfo(&names, ", %s", name);
		appendStringInfo(&selected, text_key ? ", u.v%d" : ", pg_catalog.sum(u.v%d)", nth);
		appendStringInfo(&arrays, ", pg_catalog.unnest($%d::pg_catalog.numeric[])", nth + 1);
		appendStringInfo(&aliases, ", v%d", nth);
		appendStringInfo(&sets, "%s%s = COALESCE(t.%s, 0) OPERATOR(pg_catalog.+) EXCLUDED.%s",
						 nth > 1 ? ", " : "", name, name, name);
	}
	/* planned as the user too: a plan made under another search_path is made again */
	user_code_enter(rule->owner, &user);
	if (SPI_execute_plan(upsert_plan(psprintf("INSERT INTO %s AS t (%s%s)"
											  " SELECT u.k%s%s%s"
											  " FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[])%s) AS u(k%s)"
											  "%s"
											  " ON CONFLICT (%s) DO UPDATE SET %s",
											  rule->target_name, rule->key_column, names.data,
											  text_key ? "" : "::", text_key ? "" : rule->key_type,
											  selected.data, arrays.data, aliases.data,
											  text_key ? "" : " GROUP BY 1 ORDER BY 1",
											  rule->key_column, sets.data),
									 ncolumns + 1, types),
						 values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "eventpipe consumer: the upsert into %s failed", rule->target_name);
	user_code_leave(&user);
}

/*
 * The upserts into the target of rule leader, for all the rules that write
 * to it as its role.  The deltas are summed here, per row and column.  A
 * row gets one upsert of all the columns the batch changes in it (an event
 * counted and summed into two columns of one row is one row version, not
 * two): the rows are grouped by that set of columns, one statement per set.
 */
static void
upsert_target(ConsumedMessage *messages, int count, const ConsumerRules *rules, int leader)
{
	const MetricRule *rule = &rules->metrics[leader];
	int			most = count_effects(messages, count);
	TargetDelta *deltas = palloc(sizeof(TargetDelta) * (most + 1));
	RowChange  *rows = palloc(sizeof(RowChange) * (most + 1));
	int		   *column_of = palloc(sizeof(int) * rules->nmetrics);
	char	  **columns = palloc(sizeof(char *) * rules->nmetrics);
	List	   *sets = NIL;
	ListCell   *lc;
	int			ncolumns = 0;
	int			n = 0;
	int			nrows = 0;
	int			r;
	int			i;

	for (r = 0; r < rules->nmetrics; r++)
	{
		column_of[r] = -1;
		if (!same_target(&rules->metrics[r], rule))
			continue;
		for (i = 0; i < ncolumns && strcmp(columns[i], rules->metrics[r].column) != 0; i++)
			;
		if (i == ncolumns)
			columns[ncolumns++] = rules->metrics[r].column;
		column_of[r] = i;
	}
	for (i = 0; i < count; i++)
	{
		if (messages[i].fate != MESSAGE_APPLIED)
			continue;
		foreach(lc, messages[i].effects)
		{
			MetricEffect *effect = (MetricEffect *) lfirst(lc);

			if (column_of[effect->rule] < 0)
				continue;
			deltas[n].key = effect->key;
			deltas[n].column = column_of[effect->rule];
			deltas[n++].value = effect->value;
		}
	}
	if (n == 0)
		return;

	/* each key's row: its set of columns and their sums */
	qsort(deltas, n, sizeof(TargetDelta), compare_keys_then_columns);
	for (i = 0; i < n;)
	{
		RowChange  *row = &rows[nrows++];
		int			first = i;

		row->key = deltas[i].key;
		row->set = NULL;
		row->sums = palloc0(sizeof(Datum) * ncolumns);
		while (i < n && compare_keys(&deltas[first], &deltas[i]) == 0)
		{
			int			end = i;

			while (end < n && compare_keys_then_columns(&deltas[i], &deltas[end]) == 0)
				end++;
			row->set = bms_add_member(row->set, deltas[i].column);
			row->sums[deltas[i].column] = sum_of(&deltas[i], end - i);
			i = end;
		}
		foreach(lc, sets)
			if (bms_equal(row->set, (Bitmapset *) lfirst(lc)))
				break;
		if (lc == NULL)
			sets = lappend(sets, row->set);
	}
	/* the rows of each set together */
	foreach(lc, sets)
	{
		Bitmapset  *set = (Bitmapset *) lfirst(lc);
		RowChange  *chosen = palloc(sizeof(RowChange) * nrows);
		int			nchosen = 0;

		for (i = 0; i < nrows; i++)
			if (bms_equal(rows[i].set, set))
				chosen[nchosen++] = rows[i];
		upsert_columns(rule, columns, set, chosen, nchosen);
	}
}

/* Lock the rows the messages to apply touch, then upsert every target. */
void
consumer_upsert_metrics(ConsumedMessage *messages, int count, const ConsumerRules *rules)
{
	int			leader;

	lock_metric_rows(messages, count, rules);
	for (leader = 0; leader < rules->nmetrics; leader++)
	{
		int			earlier;
		bool		seen = false;

		for (earlier = 0; earlier < leader && !seen; earlier++)
			seen = same_target(&rules->metrics[earlier], &rules->metrics[leader]);
		if (!seen)
			upsert_target(messages, count, rules, leader);
	}
}
