/*
 * snapshot.h
 *		What the snapshot functions of the extension (snapshot_request.c,
 *		snapshot_condition.c) export to capture() and to the snapshot
 *		worker (worker/snapshot/).
 */
#ifndef EVENTPIPE_SNAPSHOT_H
#define EVENTPIPE_SNAPSHOT_H

#include "postgres.h"

#include "utils/relcache.h"

/* snapshot_condition.c: the checked condition's node tree, as text */
extern char *snapshot_check_condition(Relation rel, const char *condition);

/*
 * snapshot_request.c: records a snapshot of the captured table rel, asked
 * for by the current user, as the owner of the SQL function being called
 * (the extension's owner); returns its id.
 */
extern int64 snapshot_request(Relation rel, const char *condition, Oid function_owner);

#endif							/* EVENTPIPE_SNAPSHOT_H */
