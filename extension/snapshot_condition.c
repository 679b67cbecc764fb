/*
 * snapshot_condition.c
 *		The condition of a snapshot (eventpipe.snapshot(rel, condition)):
 *		checked when the snapshot is asked for, as one SQL expression over
 *		the columns of that table alone, and kept as PostgreSQL's node tree,
 *		which the snapshot worker evaluates on each row it reads.
 *
 * The text is never pasted into a statement: it is parsed by the raw
 * parser in the mode of a PL/pgSQL expression, and what comes out must be
 * a single bare expression (no FROM, WHERE, GROUP BY, ORDER BY, LIMIT,
 * locking clause, set operation, alias, or second statement: anything
 * trailing the expression is a syntax error or one of these).  It is then
 * transformed as a WHERE clause against a range table holding only the
 * snapshot's table, so a name is a column of that table or an error; WHERE
 * forbids aggregates, window functions and set-returning functions, and
 * this file forbids subqueries, system columns and volatile functions too.
 * Names are resolved once, here, with the caller's search_path; the worker
 * evaluates the tree as the role that asked, whose EXECUTE rights the
 * executor checks then.
 */
#include "postgres.h"

#include "access/sysattr.h"
#include "nodes/bitmapset.h"
#include "nodes/nodeFuncs.h"
#include "nodes/parsenodes.h"
#include "optimizer/optimizer.h"
#include "parser/parse_coerce.h"
#include "parser/parse_collate.h"
#include "parser/parse_expr.h"
#include "parser/parse_node.h"
#include "parser/parse_relation.h"
#include "parser/parser.h"
#include "utils/rel.h"

#include "snapshot.h"

static void
refuse(const char *condition, const char *why)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid snapshot condition: %s", why),
			 errdetail("The condition was: %s", condition),
			 errhint("Write one boolean expression over the table's columns, as in a WHERE clause.")));
}

/* The one expression the text holds, untransformed */
static Node *
parse_one_expression(const char *condition)
{
	List	   *statements = raw_parser(condition, RAW_PARSE_PLPGSQL_EXPR);
	SelectStmt *select;
	ResTarget  *target;

	if (list_length(statements) != 1 ||
		!IsA(linitial_node(RawStmt, statements)->stmt, SelectStmt))
		refuse(condition, "it is not one expression");
	select = (SelectStmt *) linitial_node(RawStmt, statements)->stmt;
	if (list_length(select->targetList) != 1 ||
		select->distinctClause != NIL || select->intoClause != NULL ||
		select->fromClause != NIL || select->whereClause != NULL ||
		select->groupClause != NIL || select->havingClause != NULL ||
		select->windowClause != NIL || select->valuesLists != NIL ||
		select->sortClause != NIL || select->limitOffset != NULL ||
		select->limitCount != NULL || select->lockingClause != NIL ||
		select->withClause != NULL || select->op != SETOP_NONE)
		refuse(condition, "it is not one expression");
	target = linitial_node(ResTarget, select->targetList);
	if (target->name != NULL || target->indirection != NIL)
		refuse(condition, "it is not one expression");
	return target->val;
}

static bool
uses_system_column(Node *expr)
{
	Bitmapset  *columns = NULL;
	int			member = -1;

	pull_varattnos(expr, 1, &columns);
	while ((member = bms_next_member(columns, member)) >= 0)
		if (member + FirstLowInvalidHeapAttributeNumber < 0)
			return true;
	return false;
}

char *
snapshot_check_condition(Relation rel, const char *condition)
{
	ParseState *pstate = make_parsestate(NULL);
	ParseNamespaceItem *table;
	Node	   *expr;

	pstate->p_sourcetext = condition;
	expr = parse_one_expression(condition);

	table = addRangeTableEntryForRelation(pstate, rel, AccessShareLock, NULL, false, true);
	addNSItemToQuery(pstate, table, true, true, true);
	expr = transformExpr(pstate, expr, EXPR_KIND_WHERE);
	expr = coerce_to_boolean(pstate, expr, "snapshot condition");
	assign_expr_collations(pstate, expr);

	if (pstate->p_hasSubLinks)
		refuse(condition, "it has a subquery");
	if (uses_system_column(expr))
		refuse(condition, "it reads a system column");
	if (contain_volatile_functions(expr))
		refuse(condition, "it calls a volatile function");
	free_parsestate(pstate);
	return nodeToString(expr);
}
