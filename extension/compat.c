/*
 * compat.c
 *		The parts of compat.h that are functions: the newer servers' API
 *		built from what the older ones offer.
 */
#include "postgres.h"

#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
#include "executor/executor.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/bitmapset.h"
#include "parser/parse_relation.h"
#include "utils/acl.h"
#include "utils/tuplestore.h"

#include "compat.h"

void
compat_init_range_table_of_one(EState *estate, RangeTblEntry *rte)
{
#if PG_VERSION_NUM >= 160000
	List	   *permissions = NIL;

	addRTEPermissionInfo(&permissions, rte);
#endif
#if PG_VERSION_NUM >= 180000
	ExecInitRangeTable(estate, list_make1(rte), permissions, bms_make_singleton(1));
#elif PG_VERSION_NUM >= 160000
	ExecInitRangeTable(estate, list_make1(rte), permissions);
#else
	ExecInitRangeTable(estate, list_make1(rte));
#endif
}

shmem_request_hook_type
compat_install_shmem_request_hook(shmem_request_hook_type request_shmem)
{
#if PG_VERSION_NUM >= 150000
	shmem_request_hook_type previous = shmem_request_hook;

	shmem_request_hook = request_shmem;
	return previous;
#else
	request_shmem();
	return NULL;
#endif
}

#if PG_VERSION_NUM < 160000
bool
compat_object_ownercheck(Oid classid, Oid objectid, Oid roleid)
{
	if (classid != RelationRelationId)
		elog(ERROR, "eventpipe checks no owner of objects of class %u", classid);
	return pg_class_ownercheck(objectid, roleid);
}

AclResult
compat_object_aclcheck(Oid classid, Oid objectid, Oid roleid, AclMode mode)
{
	if (classid != ProcedureRelationId)
		elog(ERROR, "eventpipe checks no rights on objects of class %u", classid);
	return pg_proc_aclcheck(objectid, roleid, mode);
}
#endif

#if PG_VERSION_NUM < 150000
/*
 * Materialize mode with the result type the call site declares; the flags
 * of 15's version (another descriptor, blessing) are not used here.
 */
void
InitMaterializedSRF(FunctionCallInfo fcinfo, bits32 flags)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext old_context;
	TupleDesc	tupdesc;

	Assert(flags == 0);
	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));
	if (!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("materialize mode required, but it is not allowed in this context")));

	old_context = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = tuplestore_begin_heap((rsinfo->allowedModes & SFRM_Materialize_Random) != 0,
											  false, work_mem);
	rsinfo->setDesc = tupdesc;
	MemoryContextSwitchTo(old_context);
}
#endif
