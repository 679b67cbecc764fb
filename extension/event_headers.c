/*
 * event_headers.c
 *		User headers of an event: a JSON object of string values, checked by
 *		publish() and walked by the relay when it builds Kafka headers (which
 *		copes with whatever a row written otherwise holds).
 *
 * Names starting with "ce_" and "content-type" are reserved: the relay sets
 * them itself (CloudEvents Kafka binding, binary mode).
 */
#include "postgres.h"

#include "utils/jsonb.h"

#include "eventpipe.h"

static bool
is_reserved_header(const char *name, int len)
{
	return (len >= 3 && pg_strncasecmp(name, "ce_", 3) == 0) ||
		(len == 12 && pg_strncasecmp(name, "content-type", 12) == 0);
}

/*
 * Calls callback(name, value) for each member of a headers object but the
 * reserved ones.  publish() has checked its headers; a row written to the
 * outbox otherwise (a superuser's INSERT) may hold anything, so a value
 * that is not a string goes as its JSON text, a null as a null value, and
 * members of anything but an object are not headers.
 */
void
eventpipe_foreach_header(Jsonb *headers, EventHeaderCallback callback, void *arg)
{
	JsonbIterator *it = JsonbIteratorInit(&headers->root);
	JsonbValue	v;
	JsonbIteratorToken token;
	const char *name = NULL;
	int			name_len = 0;

	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (token == WJB_KEY)
		{
			name = v.val.string.val;
			name_len = v.val.string.len;
		}
		else if (token != WJB_VALUE || is_reserved_header(name, name_len))
			continue;
		else if (v.type == jbvString)
			callback(name, name_len, v.val.string.val, v.val.string.len, arg);
		else if (v.type == jbvNull)
			callback(name, name_len, NULL, 0, arg);
		else
		{
			Jsonb	   *value = JsonbValueToJsonb(&v);
			char	   *text = JsonbToCString(NULL, &value->root, VARSIZE(value));

			callback(name, name_len, text, strlen(text), arg);
			pfree(text);
			pfree(value);
		}
	}
}

void
eventpipe_check_user_headers(Jsonb *headers)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken token;
	char	   *name = NULL;

	if (!JB_ROOT_IS_OBJECT(headers) || JB_ROOT_IS_SCALAR(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event headers must be a JSON object"),
				 errhint("Pass headers as '{\"name\": \"value\"}'::jsonb.")));

	it = JsonbIteratorInit(&headers->root);
	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (token == WJB_KEY)
		{
			name = pnstrdup(v.val.string.val, v.val.string.len);
			if (v.val.string.len == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("event header names must not be empty")));
			if (is_reserved_header(v.val.string.val, v.val.string.len))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("event header \"%s\" is reserved", name),
						 errdetail("eventpipe sets the CloudEvents headers (ce_*) and content-type itself."),
						 errhint("Use publish()'s event_type argument to set ce_type.")));
		}
		else if (token == WJB_VALUE && v.type != jbvString)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("event header \"%s\" must have a string value", name),
					 errhint("Kafka header values are bytes; pass numbers and booleans as strings.")));
	}
}
