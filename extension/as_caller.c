/*
 * as_caller.c
 *		The gate of the consumer's declaring and operating functions
 *		(subscribe(), add_metric(), pause(), ...): it records which role
 *		calls them.
 *
 * The role that declares a rule or handler is the role the worker later
 * runs it as, so it must come from the system, never from an argument or a
 * column default.  A SECURITY DEFINER function cannot tell who called it
 * (by then current_user is its owner), so each of these functions is this
 * C function, which runs with the caller's identity: it takes the current
 * user and calls the function's implementation, eventpipe.<name>_as(caller
 * regrole, the same arguments...).  The implementations are SECURITY
 * DEFINER, executable by nobody but the extension's owner (fmgr calls them
 * here without an EXECUTE check), and check the caller's rights themselves.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"


PG_FUNCTION_INFO_V1(eventpipe_as_caller);

/* eventpipe.<gate's name>_as(regrole, the gate's argument types...) */
static Oid
implementation_of(Oid gate)
{
	HeapTuple	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(gate));
	Form_pg_proc proc;
	Oid			argtypes[FUNC_MAX_ARGS];
	List	   *name;
	Oid			implementation;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for function %u", gate);
	proc = (Form_pg_proc) GETSTRUCT(tuple);
	if (proc->pronargs >= FUNC_MAX_ARGS)
		elog(ERROR, "eventpipe: function %s has too many arguments for its gate", NameStr(proc->proname));
	argtypes[0] = REGROLEOID;
	memcpy(&argtypes[1], proc->proargtypes.values, sizeof(Oid) * proc->pronargs);
	name = list_make2(makeString(get_namespace_name(proc->pronamespace)),
					  makeString(psprintf("%s_as", NameStr(proc->proname))));
	implementation = LookupFuncName(name, proc->pronargs + 1, argtypes, false);
	ReleaseSysCache(tuple);
	return implementation;
}

Datum
eventpipe_as_caller(PG_FUNCTION_ARGS)
{
	FmgrInfo   *implementation = (FmgrInfo *) fcinfo->flinfo->fn_extra;
	Datum		result;
	int			i;

	LOCAL_FCINFO(call, FUNC_MAX_ARGS);

	if (implementation == NULL)
	{
		implementation = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(FmgrInfo));
		fmgr_info_cxt(implementation_of(fcinfo->flinfo->fn_oid), implementation,
					  fcinfo->flinfo->fn_mcxt);
		fcinfo->flinfo->fn_extra = implementation;
	}
	InitFunctionCallInfoData(*call, implementation, PG_NARGS() + 1, PG_GET_COLLATION(), NULL, NULL);
	call->args[0].value = ObjectIdGetDatum(GetUserId());
	call->args[0].isnull = false;
	for (i = 0; i < PG_NARGS(); i++)
		call->args[i + 1] = fcinfo->args[i];
	result = FunctionCallInvoke(call);
	fcinfo->isnull = call->isnull;
	return result;
}
