/*
 * user_code.c
 *		The users' part of a consumer batch: metric upserts into their
 *		tables, their handlers, mirrors' upserts and deletes, and whatever
 *		triggers these fire.  It runs
 *		the way PostgreSQL runs index expressions during maintenance: as
 *		the role that declared the rule or handler, in a security-restricted
 *		operation, with every setting it changes rolled back when it
 *		returns; and only while that role still holds the rights it needs.
 *
 * The restricted operation forbids what could outlive the call or act as
 * another role (SET ROLE, SET SESSION AUTHORIZATION, temporary tables, ...);
 * the rollback of settings (session-level SETs and set_config(..., false)
 * included) keeps user code from changing the worker's search_path, which
 * the worker's own statements run under.
 *
 * The rights are checked at every batch, as the rules and handlers are
 * read: an owner that is gone or no longer recorded as an owner, a target
 * or function that was dropped, a right that was revoked.  A rule, handler
 * or mirror in fault dead-letters the messages that need it, with the
 * reason, and only those.
 */
#include "postgres.h"

#include "catalog/pg_proc.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/syscache.h"

#include "user_code.h"
#include "extension/compat.h"

void
user_code_enter(Oid role, UserCodeContext *context)
{
	GetUserIdAndSecContext(&context->save_userid, &context->save_sec_context);
	SetUserIdAndSecContext(role, context->save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	context->nestlevel = NewGUCNestLevel();
	/* the search_path of an ordinary session; pg_catalog still comes first */
	(void) set_config_option("search_path", "\"$user\", public", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

void
user_code_leave(UserCodeContext *context)
{
	/* false: roll back every setting changed since enter, session-level ones too */
	AtEOXact_GUC(false, context->nestlevel);
	SetUserIdAndSecContext(context->save_userid, context->save_sec_context);
}

/*
 * Why the owner cannot run this rule or handler, or NULL: the role is gone,
 * no longer recorded as an owner, or not known to have declared it (see
 * eventpipe.confirm_owner()).
 */
static char *
owner_fault(Oid owner, bool owner_tracked, bool confirmed)
{
	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(owner)))
		return psprintf("its owner (role OID %u) was dropped", owner);
	if (!confirmed)
		return psprintf("its owner %s is not confirmed to have declared it (it dates from before eventpipe 0.4, or the role's OID was another role's): a superuser confirms it with eventpipe.confirm_owner()",
						GetUserNameFromId(owner, false));
	if (!owner_tracked)
		return psprintf("its owner %s is no longer recorded as an eventpipe owner (its REFERENCES right on eventpipe.subscriptions(owner) was revoked)",
						GetUserNameFromId(owner, false));
	return NULL;
}

/* Does role hold every one of the rights on table? */
static bool
holds_rights(Oid table, Oid role, const AclMode *rights, int count)
{
	int			i;

	for (i = 0; i < count; i++)
		if (pg_class_aclcheck(table, role, rights[i]) != ACLCHECK_OK)
			return false;
	return true;
}

char *
user_code_metric_fault(int64 rule_id, Oid owner, bool owner_tracked, bool confirmed, Oid target,
					   const char *target_name, bool has_key, bool has_column)
{
	static const AclMode rights[] = {ACL_SELECT, ACL_INSERT, ACL_UPDATE};
	char	   *fault = owner_fault(owner, owner_tracked, confirmed);

	if (fault == NULL && !SearchSysCacheExists1(RELOID, ObjectIdGetDatum(target)))
		fault = psprintf("its target table (OID %u) was dropped", target);
	else if (fault == NULL && !has_key)
		fault = psprintf("its target %s has no single-column primary key any more", target_name);
	else if (fault == NULL && !has_column)
		fault = psprintf("its column of %s was dropped or renamed", target_name);
	else if (fault == NULL && !holds_rights(target, owner, rights, lengthof(rights)))
		fault = psprintf("its owner %s may no longer select, insert into and update %s",
						 GetUserNameFromId(owner, false), target_name);
	return fault ? psprintf("metric rule " INT64_FORMAT " cannot be applied: %s", rule_id, fault) : NULL;
}

char *
user_code_handler_fault(int64 handler_id, Oid owner, bool owner_tracked, bool confirmed,
						Oid handler)
{
	char	   *fault = owner_fault(owner, owner_tracked, confirmed);

	if (fault == NULL && !SearchSysCacheExists1(PROCOID, ObjectIdGetDatum(handler)))
		fault = psprintf("its function (OID %u) was dropped", handler);
	else if (fault == NULL && object_aclcheck(ProcedureRelationId, handler, owner, ACL_EXECUTE) != ACLCHECK_OK)
		fault = psprintf("its owner %s may no longer execute %s",
						 GetUserNameFromId(owner, false), format_procedure(handler));
	return fault ? psprintf("handler " INT64_FORMAT " cannot be called: %s", handler_id, fault) : NULL;
}

char *
user_code_mirror_fault(int64 mirror_id, Oid owner, bool owner_tracked, bool confirmed,
					   Oid target, const char *target_name, const char *target_fault)
{
	static const AclMode rights[] = {ACL_SELECT, ACL_INSERT, ACL_UPDATE, ACL_DELETE};
	char	   *fault = owner_fault(owner, owner_tracked, confirmed);

	if (fault == NULL && target_fault != NULL)
		fault = psprintf("its target %s", target_fault);
	else if (fault == NULL && !holds_rights(target, owner, rights, lengthof(rights)))
		fault = psprintf("its owner %s may no longer select, insert into, update and delete from %s",
						 GetUserNameFromId(owner, false), target_name);
	return fault ? psprintf("mirror " INT64_FORMAT " cannot be applied: %s", mirror_id, fault) : NULL;
}
