/*
 * owned_objects.c
 *		DROP OWNED BY and REASSIGN OWNED BY for the eventpipe objects a role
 *		owns in the current database (subscriptions, metric rules,
 *		handlers): once the command has done its own work, they are dropped
 *		or handed to the new owner, as it does with tables and functions.
 *
 * These objects are rows, not catalog entries, so the commands cannot see
 * them by themselves.  What PostgreSQL does see is each owner's grant on
 * eventpipe.subscriptions(owner), recorded in pg_shdepend: DROP ROLE
 * refuses to drop an owner, in any database, until these commands (or
 * eventpipe's own functions) have taken its objects away.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "fmgr.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "parser/parse_func.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/array.h"

#include "eventpipe.h"

static ProcessUtility_hook_type prev_process_utility = NULL;

/* The roles of a DROP OWNED or REASSIGN OWNED, as a regrole[]. */
static Datum
role_array(List *roles)
{
	Datum	   *oids = palloc(sizeof(Datum) * (list_length(roles) + 1));
	ListCell   *lc;
	int			n = 0;

	foreach(lc, roles)
		oids[n++] = ObjectIdGetDatum(get_rolespec_oid((RoleSpec *) lfirst(lc), false));
	return PointerGetDatum(construct_array(oids, n, REGROLEOID, sizeof(Oid), true, TYPALIGN_INT));
}

/*
 * eventpipe.<name>(arguments), when this database has an extension version
 * that defines it.  A SECURITY DEFINER function, called without an EXECUTE
 * check: the command itself checked that its user holds the roles' rights.
 */
static void
call_if_installed(const char *name, int nargs, Oid *argtypes, Datum *args)
{
	Oid			function;

	if (!OidIsValid(get_extension_oid("eventpipe", true)))
		return;
	function = LookupFuncName(list_make2(makeString("eventpipe"), makeString(pstrdup(name))),
							  nargs, argtypes, true);
	if (!OidIsValid(function))
		return;
	if (nargs == 1)
		OidFunctionCall1(function, args[0]);
	else
		OidFunctionCall2(function, args[0], args[1]);
}

static void
drop_owned(DropOwnedStmt *stmt)
{
	Oid			types[1] = {REGROLEARRAYOID};
	Datum		args[1] = {role_array(stmt->roles)};

	call_if_installed("drop_owned", 1, types, args);
}

static void
reassign_owned(ReassignOwnedStmt *stmt)
{
	Oid			types[2] = {REGROLEARRAYOID, REGROLEOID};
	Datum		args[2] = {role_array(stmt->roles),
	ObjectIdGetDatum(get_rolespec_oid(stmt->newrole, false))};

	call_if_installed("reassign_owned", 2, types, args);
}

static void
eventpipe_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
						  ProcessUtilityContext context, ParamListInfo params,
						  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *statement = pstmt->utilityStmt;

	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);

	if (IsA(statement, DropOwnedStmt))
		drop_owned((DropOwnedStmt *) statement);
	else if (IsA(statement, ReassignOwnedStmt))
		reassign_owned((ReassignOwnedStmt *) statement);
}

void
eventpipe_install_owned_objects_hook(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = eventpipe_process_utility;
}
