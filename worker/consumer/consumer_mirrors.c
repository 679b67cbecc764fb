/*
 * consumer_mirrors.c
 *		The mirrors' effect of a batch.  Per mirror, the changes to each row
 *		are folded in the order of the messages, the last one winning: a
 *		delete forgets the images before it, images after the last delete
 *		are laid over each other (a member one of them lacks keeps the
 *		earlier value).  Then, as the mirror's owner, one DELETE of the rows
 *		a delete reached, and one upsert per set of columns of the images
 *		left, rows in key order: a row deleted and written again in one
 *		batch is inserted anew, so the columns its image lacks take their
 *		defaults, as they would have one message at a time.  The rows are
 *		locked already (consumer_row_locks.c); the statements' plans are
 *		kept (consumer_sql.c).
 */
#include "postgres.h"

#include "executor/spi.h"
#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"

#include "consumer.h"
#include "consumer_sql.h"
#include "user_code.h"

/* A change and its place in the batch. */
typedef struct PlacedChange
{
	MirrorChange *change;
	int			place;
} PlacedChange;

/*
 * What the batch does to one row: delete it first (deleted: a delete of
 * its key; NULL: none), then write image (NULL: none).
 */
typedef struct RowOutcome
{
	MirrorChange *deleted;
	MirrorChange *image;
} RowOutcome;

static int
compare_placed(const void *a, const void *b)
{
	const PlacedChange *x = (const PlacedChange *) a;
	const PlacedChange *y = (const PlacedChange *) b;
	int			order = consumer_compare_texts(x->change->key, y->change->key);

	return order != 0 ? order : x->place - y->place;
}

/* Lay image over row's image (a copy of it the first time). */
static void
lay_over(const MirrorRule *mirror, RowOutcome *row, const MirrorChange *image)
{
	int			c;

	if (row->image == NULL)
	{
		row->image = palloc(sizeof(MirrorChange));
		*row->image = *image;
		row->image->values = palloc(sizeof(Datum) * (mirror->ncolumns + 1));
		row->image->nulls = palloc(sizeof(bool) * (mirror->ncolumns + 1));
		row->image->present = palloc(sizeof(bool) * (mirror->ncolumns + 1));
		memcpy(row->image->values, image->values, sizeof(Datum) * mirror->ncolumns);
		memcpy(row->image->nulls, image->nulls, sizeof(bool) * mirror->ncolumns);
		memcpy(row->image->present, image->present, sizeof(bool) * mirror->ncolumns);
		return;
	}
	for (c = 0; c < mirror->ncolumns; c++)
		if (image->present[c])
		{
			row->image->present[c] = true;
			row->image->values[c] = image->values[c];
			row->image->nulls[c] = image->nulls[c];
		}
}

/*
 * The outcome per row of mirror m's changes in the messages to apply, in
 * key order; returns how many rows.
 */
static int
fold_changes(ConsumedMessage *messages, int count, const ConsumerRules *rules, int m,
			 RowOutcome **outcomes)
{
	const MirrorRule *mirror = &rules->mirrors[m];
	PlacedChange *placed;
	RowOutcome *rows;
	int			most = 0;
	int			n = 0;
	int			nrows = 0;
	int			i;

	for (i = 0; i < count; i++)
		most += list_length(messages[i].mirror_changes);
	placed = palloc(sizeof(PlacedChange) * (most + 1));
	for (i = 0; i < count; i++)
	{
		ListCell   *lc;

		if (messages[i].fate != MESSAGE_APPLIED)
			continue;
		foreach(lc, messages[i].mirror_changes)
		{
			MirrorChange *change = (MirrorChange *) lfirst(lc);

			if (change->mirror != m)
				continue;
			placed[n].change = change;
			placed[n].place = n;
			n++;
		}
	}
	qsort(placed, n, sizeof(PlacedChange), compare_placed);
	rows = palloc0(sizeof(RowOutcome) * (n + 1));
	for (i = 0; i < n; i++)
	{
		RowOutcome *row;

		if (i == 0 || consumer_compare_texts(placed[i - 1].change->key, placed[i].change->key) != 0)
			nrows++;
		row = &rows[nrows - 1];
		if (placed[i].change->delete_row)
		{
			row->deleted = placed[i].change;
			row->image = NULL;
		}
		else
			lay_over(mirror, row, placed[i].change);
	}
	*outcomes = rows;
	return nrows;
}

/*
 * The array of column c's values in rows' images (or their delete's key),
 * as text for a column whose type has no array type (see mirror_target.c).
 */
static Datum
column_array(const MirrorRule *mirror, int c, MirrorChange **rows, int nrows)
{
	const MirrorColumn *column = &mirror->columns[c];
	Datum	   *values = palloc(sizeof(Datum) * (nrows + 1));
	bool	   *nulls = palloc(sizeof(bool) * (nrows + 1));
	int			i;

	for (i = 0; i < nrows; i++)
	{
		values[i] = rows[i]->values[c];
		nulls[i] = rows[i]->nulls[c];
		if (column->text_cast != NULL && !nulls[i])
			values[i] = CStringGetTextDatum(OutputFunctionCall((FmgrInfo *) &column->output_function,
															   values[i]));
	}
	return consumer_make_array(values, nulls, nrows,
							   column->text_cast != NULL ? TEXTOID : column->type);
}

/*
 * Parameter $param, column c's array: its unnest() into arrays, and the
 * value of its alias vN into values (cast back from text if it goes as
 * text).
 */
static void
append_column(const MirrorColumn *column, int param, StringInfo arrays, StringInfo aliases,
			  StringInfo values)
{
	const char *comma = param > 1 ? ", " : "";

	appendStringInfo(arrays, "%spg_catalog.unnest($%d::%s)", comma, param, column->array_cast);
	appendStringInfo(aliases, "%sv%d", comma, param);
	appendStringInfo(values, "%su.v%d%s%s", comma, param, column->text_cast ? "::" : "",
					 column->text_cast ? column->text_cast : "");
}

/* Run sql, planned and executed as the mirror's owner, with one array per column. */
static void
run_as_owner(const MirrorRule *mirror, const char *sql, int nargs, Datum *values, Oid *types,
			 int expected)
{
	UserCodeContext user;

	user_code_enter(mirror->owner, &user);
	if (SPI_execute_plan(consumer_kept_plan(sql, nargs, types), values, NULL, false, 0) != expected)
		elog(ERROR, "eventpipe consumer: a mirror's statement on %s failed", mirror->target_name);
	user_code_leave(&user);
}

/* Delete the rows of these keys. */
static void
delete_rows(const MirrorRule *mirror, MirrorChange **rows, int nrows)
{
	Datum	   *values = palloc(sizeof(Datum) * mirror->nkeys);
	Oid		   *types = palloc(sizeof(Oid) * mirror->nkeys);
	StringInfoData arrays,
				aliases,
				keys,
				matches;
	int			k;

	initStringInfo(&arrays);
	initStringInfo(&aliases);
	initStringInfo(&keys);
	initStringInfo(&matches);
	for (k = 0; k < mirror->nkeys; k++)
	{
		const MirrorColumn *column = &mirror->columns[mirror->keys[k]];

		values[k] = column_array(mirror, mirror->keys[k], rows, nrows);
		types[k] = column->array_type;
		append_column(column, k + 1, &arrays, &aliases, &keys);
		appendStringInfo(&matches, "%st.%s %s k.v%d", k > 0 ? " AND " : "", column->quoted,
						 column->equals, k + 1);
	}
	run_as_owner(mirror, psprintf("DELETE FROM %s AS t USING (SELECT %s FROM ROWS FROM (%s) AS u(%s))"
								  " AS k(%s) WHERE %s",
								  mirror->target_name, keys.data, arrays.data, aliases.data,
								  aliases.data, matches.data),
				 mirror->nkeys, values, types, SPI_OK_DELETE);
}

static bool
same_columns(const MirrorRule *mirror, const MirrorChange *a, const MirrorChange *b)
{
	return memcmp(a->present, b->present, sizeof(bool) * mirror->ncolumns) == 0;
}

/* Upsert rows whose images all have the columns of the first. */
static void
upsert_rows(const MirrorRule *mirror, MirrorChange **rows, int nrows)
{
	const bool *present = rows[0]->present;
	Datum	   *values = palloc(sizeof(Datum) * (mirror->ncolumns + 1));
	Oid		   *types = palloc(sizeof(Oid) * (mirror->ncolumns + 1));
	StringInfoData names,
				arrays,
				aliases,
				selected,
				keys,
				sets;
	int			nargs = 0;
	int			c;
	int			k;

	initStringInfo(&names);
	initStringInfo(&arrays);
	initStringInfo(&aliases);
	initStringInfo(&selected);
	initStringInfo(&keys);
	initStringInfo(&sets);
	for (c = 0; c < mirror->ncolumns; c++)
	{
		const MirrorColumn *column = &mirror->columns[c];

		if (!present[c])
			continue;
		values[nargs] = column_array(mirror, c, rows, nrows);
		types[nargs++] = column->array_type;
		appendStringInfo(&names, "%s%s", nargs > 1 ? ", " : "", column->quoted);
		append_column(column, nargs, &arrays, &aliases, &selected);
		if (column->equals == NULL)
			appendStringInfo(&sets, "%s%s = EXCLUDED.%s", sets.len > 0 ? ", " : "",
							 column->quoted, column->quoted);
	}
	for (k = 0; k < mirror->nkeys; k++)
		appendStringInfo(&keys, "%s%s", k > 0 ? ", " : "", mirror->columns[mirror->keys[k]].quoted);
	run_as_owner(mirror, psprintf("INSERT INTO %s AS t (%s) OVERRIDING SYSTEM VALUE"
								  " SELECT %s FROM ROWS FROM (%s) AS u(%s)"
								  " ON CONFLICT (%s) DO %s%s",
								  mirror->target_name, names.data, selected.data, arrays.data,
								  aliases.data, keys.data,
								  sets.len > 0 ? "UPDATE SET " : "NOTHING", sets.data),
				 nargs, values, types, SPI_OK_INSERT);
}

/* Apply mirror m's changes: the deletes, then the upserts, one per set of columns. */
static void
apply_mirror(ConsumedMessage *messages, int count, const ConsumerRules *rules, int m)
{
	const MirrorRule *mirror = &rules->mirrors[m];
	RowOutcome *outcomes;
	int			nrows = fold_changes(messages, count, rules, m, &outcomes);
	MirrorChange **chosen = palloc(sizeof(MirrorChange *) * (nrows + 1));
	bool	   *written = palloc0(sizeof(bool) * (nrows + 1));
	int			nchosen = 0;
	int			i;
	int			j;

	for (i = 0; i < nrows; i++)
		if (outcomes[i].deleted != NULL)
			chosen[nchosen++] = outcomes[i].deleted;
	if (nchosen > 0)
		delete_rows(mirror, chosen, nchosen);

	for (i = 0; i < nrows; i++)
	{
		if (outcomes[i].image == NULL || written[i])
			continue;
		nchosen = 0;
		for (j = i; j < nrows; j++)
			if (outcomes[j].image != NULL && !written[j] &&
				same_columns(mirror, outcomes[i].image, outcomes[j].image))
			{
				chosen[nchosen++] = outcomes[j].image;
				written[j] = true;
			}
		upsert_rows(mirror, chosen, nchosen);
	}
}

/* Apply every mirror's changes in the messages to apply. */
void
consumer_apply_mirrors(ConsumedMessage *messages, int count, const ConsumerRules *rules)
{
	int			m;

	for (m = 0; m < rules->nmirrors; m++)
		apply_mirror(messages, count, rules, m);
}
