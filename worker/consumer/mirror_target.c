/*
 * mirror_target.c
 *		A mirror's target table as the worker writes it, read from the
 *		catalogs before every batch: its name, the columns an image may set
 *		(all but dropped and generated ones), each with the base type its
 *		values are read as, that type's input and output functions and how
 *		the statements take its values, and its primary key, each key column with its type's equality
 *		operator; or why it cannot be written to any more (a column whose
 *		values' input would run a domain's constraints is one such reason).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "catalog/pg_index.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "consumer.h"
#include "extension/compat.h"

/* "OPERATOR(schema.=)" of a type's default equality, or NULL when it has none. */
static char *
equality_operator(Oid type)
{
	TypeCacheEntry *entry = lookup_type_cache(type, TYPECACHE_EQ_OPR);
	HeapTuple	tuple;
	Form_pg_operator op;
	char	   *name;

	if (!OidIsValid(entry->eq_opr))
		return NULL;
	tuple = SearchSysCache1(OPEROID, ObjectIdGetDatum(entry->eq_opr));
	if (!HeapTupleIsValid(tuple))
		return NULL;
	op = (Form_pg_operator) GETSTRUCT(tuple);
	name = psprintf("OPERATOR(%s.%s)", quote_identifier(get_namespace_name(op->oprnamespace)),
					NameStr(op->oprname));
	ReleaseSysCache(tuple);
	return name;
}

/*
 * Does reading a value of type, through its input function, check a
 * domain's constraints?  A domain met inside an array, a composite, a range
 * or a multirange is read by its own input function, which runs the
 * constraints' expressions: code of whoever made the domain, that the
 * worker would run as itself, outside user code (user_code.c) and without a
 * subtransaction to catch its errors in.
 */
static bool
input_checks_domains(Oid type)
{
	char		typtype = get_typtype(type);
	Oid			element = get_element_type(type);
	bool		checks = false;

	check_stack_depth();
	if (typtype == TYPTYPE_DOMAIN)
		return true;
	if (OidIsValid(element))
		return input_checks_domains(element);
	if (typtype == TYPTYPE_RANGE)
		return input_checks_domains(get_range_subtype(type));
	if (typtype == TYPTYPE_MULTIRANGE)
		return input_checks_domains(get_multirange_range(type));
	if (typtype == TYPTYPE_COMPOSITE)
	{
		TupleDesc	desc = lookup_rowtype_tupdesc(type, -1);
		int			i;

		for (i = 0; i < desc->natts && !checks; i++)
			checks = !TupleDescAttr(desc, i)->attisdropped &&
				input_checks_domains(TupleDescAttr(desc, i)->atttypid);
		ReleaseTupleDesc(desc);
	}
	return checks;
}

/*
 * The column of attribute att.  The statements take a column's values as
 * one array; a type that has no array type (an array type itself: there
 * are no arrays of arrays) goes as text[] and is cast back.
 */
static void
describe_column(MirrorColumn *column, Form_pg_attribute att)
{
	bool		varlena;

	column->name = pstrdup(NameStr(att->attname));
	column->quoted = pstrdup(quote_identifier(column->name));
	column->typmod = att->atttypmod;
	column->type = getBaseTypeAndTypmod(att->atttypid, &column->typmod);
	column->array_type = get_array_type(column->type);
	column->text_cast = NULL;
	if (!OidIsValid(column->array_type))
	{
		column->array_type = TEXTARRAYOID;
		column->text_cast = format_type_extended(column->type, -1, FORMAT_TYPE_FORCE_QUALIFY);
	}
	column->array_cast = format_type_extended(column->array_type, -1, FORMAT_TYPE_FORCE_QUALIFY);
	getTypeInputInfo(column->type, &column->input, &column->ioparam);
	getTypeOutputInfo(column->type, &column->output, &varlena);
	fmgr_info(column->input, &column->input_function);
	fmgr_info(column->output, &column->output_function);
	get_typlenbyvalalign(column->type, &column->typlen, &column->typbyval, &column->typalign);
	column->equals = NULL;
}

/* The primary key's columns into mirror->keys; an error text, or NULL. */
static char *
describe_key(MirrorRule *mirror, Relation rel, const int *column_of)
{
	Oid			index = RelationGetPrimaryKeyIndex(rel, false);
	HeapTuple	tuple;
	Form_pg_index form;
	char	   *fault = NULL;
	int			k;

	if (!OidIsValid(index))
		return psprintf("%s has no primary key any more", mirror->target_name);
	tuple = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(index));
	if (!HeapTupleIsValid(tuple))
		return psprintf("%s has no primary key any more", mirror->target_name);
	form = (Form_pg_index) GETSTRUCT(tuple);
	mirror->nkeys = form->indnkeyatts;
	mirror->keys = palloc(sizeof(int) * mirror->nkeys);
	for (k = 0; k < mirror->nkeys && fault == NULL; k++)
	{
		int			attnum = form->indkey.values[k];
		int			column = attnum > 0 ? column_of[attnum] : -1;

		mirror->keys[k] = column;
		if (column < 0)
			fault = psprintf("%s has a primary key on an expression or a generated column",
							 mirror->target_name);
		else if ((mirror->columns[column].equals = equality_operator(mirror->columns[column].type)) == NULL)
			fault = psprintf("%s has a primary key column without an equality operator, \"%s\"",
							 mirror->target_name, mirror->columns[column].name);
	}
	ReleaseSysCache(tuple);
	return fault;
}

/*
 * Fill in the mirror's target: its name, columns and primary key.  Returns
 * why it cannot be written to, or NULL.  The table stays share-locked to
 * the end of the batch's transaction, as the statements will lock it.
 */
char *
mirror_target_describe(MirrorRule *mirror)
{
	Relation	rel;
	TupleDesc	desc;
	int		   *column_of;
	char	   *fault = NULL;
	int			i;

	mirror->target_name = psprintf("table %u", mirror->target);
	mirror->ncolumns = 0;
	mirror->nkeys = 0;
	rel = try_relation_open(mirror->target, AccessShareLock);
	if (rel == NULL)
		return psprintf("(OID %u) was dropped", mirror->target);
	mirror->target_name = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
													 RelationGetRelationName(rel));
	desc = RelationGetDescr(rel);
	mirror->columns = palloc0(sizeof(MirrorColumn) * (desc->natts + 1));
	column_of = palloc(sizeof(int) * (desc->natts + 1));
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		column_of[i + 1] = -1;
		if (att->attisdropped || att->attgenerated != '\0')
			continue;
		describe_column(&mirror->columns[mirror->ncolumns], att);
		if (fault == NULL && input_checks_domains(mirror->columns[mirror->ncolumns].type))
			fault = psprintf("%s has a column of a type with a domain inside an array, composite or range, \"%s\": a mirror cannot read its values",
							 mirror->target_name, NameStr(att->attname));
		column_of[i + 1] = mirror->ncolumns++;
	}
	if (fault == NULL)
		fault = describe_key(mirror, rel, column_of);
	relation_close(rel, NoLock);
	return fault;
}
