/*
 * consumer_metrics.c
 *		The metric rules' effect of a batch: one upsert per target and set
 *		of columns, with the deltas summed per row and column here, once the
 *		rows are locked (consumer_row_locks.c).  The upserts' plans are
 *		kept, found by their text (consumer_sql.c).
 */
#include "postgres.h"

#include "catalog/pg_type.h"
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
	return consumer_compare_texts(((const TargetDelta *) a)->key, ((const TargetDelta *) b)->key);
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
	if (SPI_execute_plan(consumer_kept_plan(psprintf("INSERT INTO %s AS t (%s%s)"
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

/* Upsert every target (its rows locked already: consumer_row_locks.c). */
void
consumer_upsert_metrics(ConsumedMessage *messages, int count, const ConsumerRules *rules)
{
	int			leader;

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
