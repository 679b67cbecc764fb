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
 *
 * Two walkers drive the same reader.  A text whose strings hold no escape
 * and no control character (nearly every event) is walked by hand here, in
 * pg_parse_json's order of calls; at the first thing outside that subset,
 * valid or not, the text is read again from the start by pg_parse_json,
 * whose answer and errors are the reference.  PostgreSQL 15's lexer copies
 * every string one character at a time, the bulk of the cost of a read.
 */
#include "postgres.h"

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/jsonfuncs.h"

#include "extension/compat.h"
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

static JSON_ACTION_RESULT
member_start(void *state, char *member, bool isnull)
{
	FieldReader *reader = (FieldReader *) state;
	int			i;

	reader->frames[reader->depth - 1].member = member;
	if (reader->arrays > 0)
		JSON_ACTION_DONE;
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
	JSON_ACTION_DONE;
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

static JSON_ACTION_RESULT
object_start(void *state)
{
	push_frame((FieldReader *) state, true);
	JSON_ACTION_DONE;
}

static JSON_ACTION_RESULT
array_start(void *state)
{
	push_frame((FieldReader *) state, false);
	JSON_ACTION_DONE;
}

static JSON_ACTION_RESULT
frame_end(void *state)
{
	FieldReader *reader = (FieldReader *) state;

	reader->depth--;
	if (!reader->frames[reader->depth].is_object)
		reader->arrays--;
	JSON_ACTION_DONE;
}

static JSON_ACTION_RESULT
scalar(void *state, char *token, JsonTokenType type)
{
	FieldReader *reader = (FieldReader *) state;

	if (type == JSON_TOKEN_STRING)
		record_value(reader, PAYLOAD_FIELD_STRING, token);
	else if (type == JSON_TOKEN_NUMBER)
		record_value(reader, PAYLOAD_FIELD_NUMBER, token);
	else
		record_value(reader, PAYLOAD_FIELD_OTHER, NULL);
	JSON_ACTION_DONE;
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

/* Where the hand walk is in the text. */
typedef struct HandWalk
{
	const char *at;
	const char *end;
	FieldReader *reader;
} HandWalk;

/* Deeper than this, the hand walk leaves the text to pg_parse_json. */
#define HAND_WALK_MAX_DEPTH 64

static void
skip_whitespace(HandWalk *walk)
{
	while (walk->at < walk->end &&
		   (*walk->at == ' ' || *walk->at == '\t' || *walk->at == '\n' || *walk->at == '\r'))
		walk->at++;
}

/* Does a number or a literal end here (what json_lex requires of its end)? */
static bool
token_ends(const HandWalk *walk)
{
	char		c;

	if (walk->at == walk->end)
		return true;
	c = *walk->at;
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ',' || c == ']' || c == '}';
}

/* A string without escapes or control characters, copied; NULL for any other. */
static char *
walk_string(HandWalk *walk)
{
	const char *start = ++walk->at;

	for (; walk->at < walk->end; walk->at++)
	{
		unsigned char c = (unsigned char) *walk->at;

		if (c == '"')
			return pnstrdup(start, walk->at++ - start);
		if (c == '\\' || c < 0x20)
			return NULL;
	}
	return NULL;
}

static bool
walk_digits(HandWalk *walk)
{
	const char *start = walk->at;

	while (walk->at < walk->end && *walk->at >= '0' && *walk->at <= '9')
		walk->at++;
	return walk->at > start;
}

/* A number of JSON's grammar, copied as written; NULL for anything else. */
static char *
walk_number(HandWalk *walk)
{
	const char *start = walk->at;

	if (*walk->at == '-')
		walk->at++;
	if (walk->at < walk->end && *walk->at == '0')
		walk->at++;
	else if (!walk_digits(walk))
		return NULL;
	if (walk->at < walk->end && *walk->at == '.')
	{
		walk->at++;
		if (!walk_digits(walk))
			return NULL;
	}
	if (walk->at < walk->end && (*walk->at == 'e' || *walk->at == 'E'))
	{
		walk->at++;
		if (walk->at < walk->end && (*walk->at == '+' || *walk->at == '-'))
			walk->at++;
		if (!walk_digits(walk))
			return NULL;
	}
	return token_ends(walk) ? pnstrdup(start, walk->at - start) : NULL;
}

/* true, false or null, told to the reader; false for anything else. */
static bool
walk_literal(HandWalk *walk)
{
	static const struct
	{
		const char *text;
		JsonTokenType type;
	}			literals[] = {
		{"true", JSON_TOKEN_TRUE}, {"false", JSON_TOKEN_FALSE}, {"null", JSON_TOKEN_NULL}
	};
	size_t		i;

	for (i = 0; i < lengthof(literals); i++)
	{
		size_t		len = strlen(literals[i].text);

		if (walk->end - walk->at >= (ptrdiff_t) len &&
			memcmp(walk->at, literals[i].text, len) == 0)
		{
			walk->at += len;
			if (!token_ends(walk))
				return false;
			scalar(walk->reader, NULL, literals[i].type);
			return true;
		}
	}
	return false;
}

static bool walk_value(HandWalk *walk, int depth);

/* A member's name and its colon, told to the reader. */
static bool
walk_member_name(HandWalk *walk)
{
	char	   *member;

	skip_whitespace(walk);
	if (walk->at == walk->end || *walk->at != '"' || (member = walk_string(walk)) == NULL)
		return false;
	skip_whitespace(walk);
	if (walk->at == walk->end || *walk->at != ':')
		return false;
	walk->at++;
	member_start(walk->reader, member, false);
	return true;
}

/* An object's members or an array's elements, in order. */
static bool
walk_container(HandWalk *walk, int depth, bool is_object)
{
	char		close = is_object ? '}' : ']';

	push_frame(walk->reader, is_object);
	walk->at++;
	skip_whitespace(walk);
	if (walk->at < walk->end && *walk->at == close)
	{
		walk->at++;
		frame_end(walk->reader);
		return true;
	}
	for (;;)
	{
		if (is_object && !walk_member_name(walk))
			return false;
		if (!walk_value(walk, depth + 1))
			return false;
		skip_whitespace(walk);
		if (walk->at == walk->end)
			return false;
		if (*walk->at == close)
		{
			walk->at++;
			frame_end(walk->reader);
			return true;
		}
		if (*walk->at++ != ',')
			return false;
	}
}

/* Walk one value, calling the reader as pg_parse_json would; false: leave it to pg_parse_json. */
static bool
walk_value(HandWalk *walk, int depth)
{
	char	   *text;

	skip_whitespace(walk);
	if (walk->at == walk->end || depth > HAND_WALK_MAX_DEPTH)
		return false;
	switch (*walk->at)
	{
		case '{':
			return walk_container(walk, depth, true);
		case '[':
			return walk_container(walk, depth, false);
		case '"':
			if ((text = walk_string(walk)) == NULL)
				return false;
			scalar(walk->reader, text, JSON_TOKEN_STRING);
			return true;
		case 't':
		case 'f':
		case 'n':
			return walk_literal(walk);
		default:
			if ((text = walk_number(walk)) == NULL)
				return false;
			scalar(walk->reader, text, JSON_TOKEN_NUMBER);
			return true;
	}
}

/* Walk the whole text: one value, then only whitespace. */
static bool
walk_text(HandWalk *walk)
{
	if (!walk_value(walk, 0))
		return false;
	skip_whitespace(walk);
	return walk->at == walk->end;
}

static void
reader_init(FieldReader *reader, int nnames, const PayloadFieldName *names)
{
	memset(reader, 0, sizeof(*reader));
	reader->nnames = nnames;
	reader->names = names;
	reader->literal = palloc0(sizeof(PayloadField) * (nnames + 1));
	reader->path = palloc0(sizeof(PayloadField) * (nnames + 1));
	reader->pending_literal = palloc(sizeof(int) * (nnames + 1));
	reader->pending_path = palloc(sizeof(int) * (nnames + 1));
	reader->max_depth = 8;
	reader->frames = palloc(sizeof(Frame) * reader->max_depth);
}

/* Read json with pg_parse_json into a fresh reader; raises its syntax errors. */
static void
parse_with_postgres(char *json, int len, FieldReader *reader)
{
	JsonLexContext *lex = compat_json_lexer(json, len, GetDatabaseEncoding(), true);
	JsonSemAction actions;
	JsonParseErrorType result;

	memset(&actions, 0, sizeof(actions));
	actions.semstate = reader;
	actions.object_start = object_start;
	actions.object_end = frame_end;
	actions.array_start = array_start;
	actions.array_end = frame_end;
	actions.object_field_start = member_start;
	actions.scalar = scalar;

	result = pg_parse_json(lex, &actions);
	if (result != JSON_SUCCESS)
		json_errsave_error(result, lex, NULL);
}

void
payload_fields_read(char *json, int len, int nnames, const PayloadFieldName *names,
					PayloadField *found)
{
	FieldReader reader;
	HandWalk	walk = {json, json + len, &reader};
	int			i;

	reader_init(&reader, nnames, names);
	if (!walk_text(&walk))
	{
		reader_init(&reader, nnames, names);
		parse_with_postgres(json, len, &reader);
	}
	for (i = 0; i < nnames; i++)
		found[i] = reader.literal[i].kind != PAYLOAD_FIELD_MISSING || names[i].nparts == 1
			? reader.literal[i] : reader.path[i];
}

