/*
 * user_code.h
 *		Running the users' part of a batch (rule upserts, handlers, the
 *		triggers they fire) as the role that declared it: see user_code.c.
 */
#ifndef EVENTPIPE_USER_CODE_H
#define EVENTPIPE_USER_CODE_H

#include "postgres.h"

typedef struct UserCodeContext
{
	Oid			save_userid;
	int			save_sec_context;
	int			nestlevel;
} UserCodeContext;

extern void user_code_enter(Oid role, UserCodeContext *context);
extern void user_code_leave(UserCodeContext *context);

/* Why a rule, handler or mirror cannot run now, or NULL: see user_code.c. */
extern char *user_code_metric_fault(int64 rule_id, Oid owner, bool owner_tracked, bool confirmed,
									Oid target, const char *target_name, bool has_key,
									bool has_column);
extern char *user_code_handler_fault(int64 handler_id, Oid owner, bool owner_tracked,
									 bool confirmed, Oid handler);
extern char *user_code_mirror_fault(int64 mirror_id, Oid owner, bool owner_tracked,
									bool confirmed, Oid target, const char *target_name,
									const char *target_fault);

#endif							/* EVENTPIPE_USER_CODE_H */
