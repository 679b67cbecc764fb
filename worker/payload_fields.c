/*
 * payload_fields.c
 *		Read a few named fields out of a JSON text in one streaming pass,
 *		checking the whole text's syntax on the way, without building the
 *		document: the consumer reads a handful of fields of every message
 *		(its type, id, keys and values), and converting each whole message
 *		to jsonb only to look them up was a tenth of its time.
 *
 * A name finds what a lookup in the document's jsonb would: the top-level
 * member of exactly that name if there is one, else, for a dotted name, the
 * path through nested objects, one member per part ("after.product_id");
 * arrays are not entered.  Where an object repeats a member name the last
 * one counts, as in jsonb.  Syntax errors are reported as json_in reports
 * them.  Unlike jsonb_in, numbers are only checked for JSON syntax: the
 * caller converts those it reads.
 */
#include "postgres.h"

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/jsonfuncs.h"

#include "payload_fields.h"

/* One enclosing object or array of the value being read. */
typedef struct Frame
{
	bool		is_object;
	char	   *member;			/* an object's member being read */
} Frame;

typedef struct FieldReader
{
	int			nnames;
	const PayloadFieldName *names;
	PayloadField *literal;		/* per name: its top-level member */
	PayloadField *path;			/* per name: the end of its dotted path */
	Frame	   *frames;
	int			depth;
	int			max_depth;
	int			arrays;			/* how many frames are arrays */
	/* the names whose value is the member just started (-1: none) */
	int		   *pending_literal;
	int		   *pending_path;
	int			npending_literal;
	int			npending_path;
} FieldReader;

/* Do the members being read, ending with member, spell the first depth parts of name? */
static bool
path_is_prefix(const FieldReader *reader, const PayloadFieldName *name, const char *member)
{
	int			d;

	for (d = 0; d < reader->depth - 1; d++)
		if (strcmp(reader->frames[d].member, name->parts[d]) != 0)
			return false;
	return strcmp(member, name->parts[reader->depth - 1]) == 0;
}

static void
member_start(void *state, char *member, bool isnull)
{
	FieldReader *reader = (FieldReader *) state;
	int			i;

	reader->frames[reader->depth - 1].member = member;
	if (reader->arrays > 0)
		return;
	for (i = 0; i < reader->nnames; i++)
	{
		const PayloadFieldName *name = &reader->names[i];

		if (reader->depth == 1 && strcmp(member, name->name) == 0)
		{
			/* a repeated member replaces the earlier one */
			reader->literal[i].kind = PAYLOAD_FIELD_MISSING;
			reader->pending_literal[reader->npending_literal++] = i;
		}
		if (name->nparts > 1 && reader->depth <= name->nparts &&
			path_is_prefix(reader, name, member))
		{
			/* a new member on the path: what an earlier one held is gone */
			reader->path[i].kind = PAYLOAD_FIELD_MISSING;
			if (reader->depth == name->nparts)
				reader->pending_path[reader->npending_path++] = i;
		}
	}
}

/* The value of the member just started is here: record it where wanted. */
static void
record_value(FieldReader *reader, PayloadFieldKind kind, char *text)
{
	int			i;

	for (i = 0; i < reader->npending_literal; i++)
	{
		reader->literal[reader->pending_literal[i]].kind = kind;
		reader->literal[reader->pending_literal[i]].text = text;
	}
	for (i = 0; i < reader->npending_path; i++)
	{
		reader->path[reader->pending_path[i]].kind = kind;
		reader->path[reader->pending_path[i]].text = text;
	}
	reader->npending_literal = 0;
	reader->npending_path = 0;
}

static void
push_frame(FieldReader *reader, bool is_object)
{
	record_value(reader, PAYLOAD_FIELD_OTHER, NULL);
	if (reader->depth == reader->max_depth)
	{
		reader->max_depth *= 2;
		reader->frames = repalloc(reader->frames, sizeof(Frame) * reader->max_depth);
	}
	reader->frames[reader->depth].is_object = is_object;
	reader->frames[reader->depth].member = NULL;
	reader->depth++;
	if (!is_object)
		reader->arrays++;
}

static void
object_start(void *state)
{
	push_frame((FieldReader *) state, true);
}

static void
array_start(void *state)
{
	push_frame((FieldReader *) state, false);
}

static void
frame_end(void *state)
{
	FieldReader *reader = (FieldReader *) state;

	reader->depth--;
	if (!reader->frames[reader->depth].is_object)
		reader->arrays--;
}

static void
scalar(void *state, char *token, JsonTokenType type)
{
	FieldReader *reader = (FieldReader *) state;

	if (type == JSON_TOKEN_STRING)
		record_value(reader, PAYLOAD_FIELD_STRING, token);
	else if (type == JSON_TOKEN_NUMBER)
		record_value(reader, PAYLOAD_FIELD_NUMBER, token);
	else
		record_value(reader, PAYLOAD_FIELD_OTHER, NULL);
}

void
payload_field_name_init(PayloadFieldName *name, const char *text)
{
	const char *part;
	const char *dot;
	int			n = 1;

	name->name = text;
	for (part = text; (dot = strchr(part, '.')) != NULL; part = dot + 1)
		n++;
	name->nparts = n;
	name->parts = palloc(sizeof(char *) * n);
	n = 0;
	for (part = text; (dot = strchr(part, '.')) != NULL; part = dot + 1)
		name->parts[n++] = pnstrdup(part, dot - part);
	name->parts[n] = pstrdup(part);
}

void
payload_fields_read(char *json, int len, int nnames, const PayloadFieldName *names,
					PayloadField *found)
{
	JsonLexContext *lex = makeJsonLexContextCstringLen(json, len, GetDatabaseEncoding(), true);
	FieldReader reader;
	JsonSemAction actions;
	JsonParseErrorType result;
	int			i;

	memset(&reader, 0, sizeof(reader));
	reader.nnames = nnames;
	reader.names = names;
	reader.literal = palloc0(sizeof(PayloadField) * (nnames + 1));
	reader.path = palloc0(sizeof(PayloadField) * (nnames + 1));
	reader.pending_literal = palloc(sizeof(int) * (nnames + 1));
	reader.pending_path = palloc(sizeof(int) * (nnames + 1));
	reader.max_depth = 8;
	reader.frames = palloc(sizeof(Frame) * reader.max_depth);

	memset(&actions, 0, sizeof(actions));
	actions.semstate = &reader;
	actions.object_start = object_start;
	actions.object_end = frame_end;
	actions.array_start = array_start;
	actions.array_end = frame_end;
	actions.object_field_start = member_start;
	actions.scalar = scalar;

	result = pg_parse_json(lex, &actions);
	if (result != JSON_SUCCESS)
		json_ereport_error(result, lex);
	for (i = 0; i < nnames; i++)
		found[i] = reader.literal[i].kind != PAYLOAD_FIELD_MISSING || names[i].nparts == 1
			? reader.literal[i] : reader.path[i];
}
