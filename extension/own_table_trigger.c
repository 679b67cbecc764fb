/*
 * own_table_trigger.c
 *		The check the trigger functions of the extension's own tables make
 *		first: that they fire on the table they were made for.
 *
 * Such a function reads its table's columns by position.  A trigger that
 * attaches it to another table outlives any later REVOKE of EXECUTE on it
 * (one made while 0.3 granted EXECUTE to PUBLIC is still there after the
 * update), and would read whatever that table holds in those positions.
 */
#include "postgres.h"

#include "commands/trigger.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "eventpipe.h"

void
eventpipe_require_own_table(FunctionCallInfo fcinfo, const char *function, const char *table)
{
	TriggerData *trigger = (TriggerData *) fcinfo->context;
	Relation	rel;
	char	   *schema;
	char	   *name;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "%s: not called as a trigger", function);
	rel = trigger->tg_relation;
	schema = get_namespace_name(RelationGetNamespace(rel));
	if (schema != NULL && strcmp(schema, "eventpipe") == 0 &&
		strcmp(RelationGetRelationName(rel), table) == 0)
		return;
	name = quote_qualified_identifier(schema, RelationGetRelationName(rel));
	ereport(ERROR,
			(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
			 errmsg("eventpipe.%s() fires only on eventpipe.%s, not on %s", function, table, name),
			 errhint("Drop the trigger %s on %s.", quote_identifier(trigger->tg_trigger->tgname), name)));
}
