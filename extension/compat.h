/*
 * compat.h
 *		Every difference between the PostgreSQL majors eventpipe supports
 *		(14 to 18) that its C code meets, in one place.
 *
 * The code is written against the newest API; for an older server this
 * header supplies that API's names over what the older one had, so no
 * other file tests PG_VERSION_NUM.  Each entry names the major that
 * introduced the API; docs/development.md lists them for users.
 */
#ifndef EVENTPIPE_COMPAT_H
#define EVENTPIPE_COMPAT_H

#include "postgres.h"

#include "access/genam.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "nodes/parsenodes.h"
#include "storage/proc.h"
#include "utils/acl.h"

/* 18: a noreturn marker that goes before the declaration */
#ifndef pg_noreturn
#define pg_noreturn pg_attribute_noreturn()
#endif

/* 18: whether a deferrable primary key counts (before 18 it never did) */
#if PG_VERSION_NUM < 180000
#define RelationGetPrimaryKeyIndex(relation, deferrable_ok) \
	(AssertMacro(!(deferrable_ok)), RelationGetPrimaryKeyIndex(relation))
#endif

/* 18: an index scan takes where to count its work (NULL: nowhere) */
#if PG_VERSION_NUM < 180000
#define index_beginscan(heap, index, snapshot, instrument, nkeys, norderbys) \
	index_beginscan(heap, index, snapshot, nkeys, norderbys)
#endif

/* 17: a PGPROC's number is computed, no longer a field */
#ifndef GetNumberFromPGProc
#define GetNumberFromPGProc(proc) ((proc)->pgprocno)
#endif

/* 17: the identity sequence is looked up by relation, not by its OID */
#if PG_VERSION_NUM < 170000
#define getIdentitySequence(relation, attnum, missing_ok) \
	getIdentitySequence(RelationGetRelid(relation), attnum, missing_ok)
#endif

/* 17: the JSON lexer can fill a caller's context; NULL allocates one */
#if PG_VERSION_NUM >= 170000
#define compat_json_lexer(json, len, encoding, need_escapes) \
	makeJsonLexContextCstringLen(NULL, json, len, encoding, need_escapes)
#else
#define compat_json_lexer(json, len, encoding, need_escapes) \
	makeJsonLexContextCstringLen(json, len, encoding, need_escapes)
#endif

/*
 * 16: pg_parse_json's callbacks return an error code (JSON_SUCCESS to go
 * on); before, they returned nothing.  A callback is declared
 * `static JSON_ACTION_RESULT name(...)` and leaves with JSON_ACTION_DONE.
 */
#if PG_VERSION_NUM >= 160000
#define JSON_ACTION_RESULT JsonParseErrorType
#define JSON_ACTION_DONE return JSON_SUCCESS
#else
#define JSON_ACTION_RESULT void
#define JSON_ACTION_DONE return
#endif

/* 16: JSON errors can be saved softly; NULL still raises them */
#if PG_VERSION_NUM < 160000
#define json_errsave_error(error, lex, escontext) json_ereport_error(error, lex)
#endif

/* 16: one ownership and one rights check for every kind of object */
#if PG_VERSION_NUM < 160000
#define object_ownercheck(classid, objectid, roleid) \
	compat_object_ownercheck(classid, objectid, roleid)
#define object_aclcheck(classid, objectid, roleid, mode) \
	compat_object_aclcheck(classid, objectid, roleid, mode)
extern bool compat_object_ownercheck(Oid classid, Oid objectid, Oid roleid);
extern AclResult compat_object_aclcheck(Oid classid, Oid objectid, Oid roleid,
										AclMode mode);
#endif

/*
 * 16 moved a range table's rights into a list of their own, 18 added the
 * relations left after pruning: this sets up a range table of one
 * relation, whose rights the caller has checked.
 */
extern void compat_init_range_table_of_one(EState *estate, RangeTblEntry *rte);

/* 15: a set-returning function's tuplestore set up in one call */
#if PG_VERSION_NUM < 150000
extern void InitMaterializedSRF(FunctionCallInfo fcinfo, bits32 flags);
#endif

/* 15: reserving a GUC prefix (14 only warned about unknown names in it) */
#if PG_VERSION_NUM < 150000
#define MarkGUCPrefixReserved(class_name) EmitWarningsOnPlaceholders(class_name)
#endif

/*
 * 15: shared memory is requested from a hook; in 14 an extension requests
 * it in _PG_init.  Installs request_shmem where the server will call it
 * (in 14: calls it now) and returns the hook it replaced, to be called
 * first.
 */
#if PG_VERSION_NUM < 150000
typedef void (*shmem_request_hook_type) (void);
#endif
extern shmem_request_hook_type compat_install_shmem_request_hook(shmem_request_hook_type request_shmem);

/* pg_database.datconnlimit of a database an interrupted DROP left invalid (minor releases from 2023 on) */
#ifndef DATCONNLIMIT_INVALID_DB
#define DATCONNLIMIT_INVALID_DB -2
#endif

#endif							/* EVENTPIPE_COMPAT_H */
