/*
 * payload_text.c
 *		An event's jsonb payload as the JSON text the relay sends as the
 *		Kafka message's value: byte for byte what jsonb's output function
 *		writes (payload::text), which the docs promise.
 *
 * jsonb's own output function (before PostgreSQL 18) copies every string
 * to escape it one character at a time, and grows its buffer as it goes;
 * at the relay's rates that was the largest single cost of claiming a
 * batch.  This walks the same jsonb iterator, sizes the buffer once from
 * the jsonb's size, and copies the runs of a string that need no escaping
 * whole, found eight bytes at a time.
 *
 * The text format, which t/001 compares byte for byte with payload::text:
 * ", " between elements and members, ": " after a key, no brackets around
 * a top-level scalar, numbers as numeric's output function writes them,
 * and in strings \", \\, \b, \f, \n, \r, \t and \u00XX (lower-case hex)
 * for the other control characters; everything else as it is stored.
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "relay.h"

/* b in each of a word's eight bytes */
#define IN_EACH_BYTE(b) (UINT64CONST(0x0101010101010101) * (uint64) (b))

/*
 * Whether one of the eight bytes of w is one a JSON string escapes: a
 * control character (below 0x20), '"' or '\\'.  Each test is the usual
 * "some byte is less than n" bit trick, exact for n up to 0x80; bytes of
 * 0x80 and above (UTF-8) never match.
 */
static inline bool
word_needs_escape(uint64 w)
{
	uint64		high = IN_EACH_BYTE(0x80);
	uint64		quote = w ^ IN_EACH_BYTE('"');
	uint64		backslash = w ^ IN_EACH_BYTE('\\');

	return (((w - IN_EACH_BYTE(0x20)) & ~w & high) |
			((quote - IN_EACH_BYTE(1)) & ~quote & high) |
			((backslash - IN_EACH_BYTE(1)) & ~backslash & high)) != 0;
}

/* The two-character escape of c, or NULL when it has none (\u00XX then). */
static const char *
short_escape(unsigned char c)
{
	switch (c)
	{
		case '\b':
			return "\\b";
		case '\f':
			return "\\f";
		case '\n':
			return "\\n";
		case '\r':
			return "\\r";
		case '\t':
			return "\\t";
		case '"':
			return "\\\"";
		case '\\':
			return "\\\\";
		default:
			return NULL;
	}
}

/*
 * A JSON string of len bytes at s, quoted and escaped as jsonb's output
 * escapes it.  Runs that need no escaping are found eight bytes at a time
 * and copied whole.
 */
static void
append_json_string(StringInfo out, const char *s, int len)
{
	const char *end = s + len;
	const char *run = s;
	const char *p = s;

	appendStringInfoCharMacro(out, '"');
	while (p < end)
	{
		unsigned char c;
		uint64		word;
		const char *escape;

		if (end - p >= (ptrdiff_t) sizeof(word))
		{
			memcpy(&word, p, sizeof(word));
			if (!word_needs_escape(word))
			{
				p += sizeof(word);
				continue;
			}
		}
		c = (unsigned char) *p;
		if (c >= 0x20 && c != '"' && c != '\\')
		{
			p++;
			continue;
		}
		appendBinaryStringInfo(out, run, p - run);
		escape = short_escape(c);
		if (escape != NULL)
			appendBinaryStringInfo(out, escape, 2);
		else
			appendStringInfo(out, "\\u%04x", c);
		run = ++p;
	}
	appendBinaryStringInfo(out, run, end - run);
	appendStringInfoCharMacro(out, '"');
}

static void
append_scalar(StringInfo out, const JsonbValue *value)
{
	switch (value->type)
	{
		case jbvNull:
			appendBinaryStringInfo(out, "null", 4);
			break;
		case jbvString:
			append_json_string(out, value->val.string.val, value->val.string.len);
			break;
		case jbvNumeric:
			{
				char	   *number = DatumGetCString(DirectFunctionCall1(numeric_out,
																		  NumericGetDatum(value->val.numeric)));

				appendStringInfoString(out, number);
				pfree(number);
				break;
			}
		case jbvBool:
			if (value->val.boolean)
				appendBinaryStringInfo(out, "true", 4);
			else
				appendBinaryStringInfo(out, "false", 5);
			break;
		default:
			elog(ERROR, "eventpipe: unexpected jsonb scalar type %d", (int) value->type);
	}
}

/*
 * The JSON text of payload, in the current memory context, and its length
 * in *len.
 */
char *
payload_json_text(Jsonb *payload, int *len)
{
	StringInfoData out;
	JsonbIterator *it = JsonbIteratorInit(&payload->root);
	JsonbIteratorToken token;
	JsonbValue	value;
	bool		first = true;	/* nothing written yet at this level */
	bool		raw_scalar = false;

	/*
	 * The text is rarely much longer than the jsonb: start at that size
	 * (initStringInfo() would start at 1 kB, four times a typical event's
	 * text, and every event of a batch keeps its text until the batch is
	 * recorded).
	 */
	out.maxlen = VARSIZE(payload) + VARSIZE(payload) / 4 + 1;
	out.data = palloc(out.maxlen);
	resetStringInfo(&out);
	while ((token = JsonbIteratorNext(&it, &value, false)) != WJB_DONE)
	{
		switch (token)
		{
			case WJB_BEGIN_ARRAY:
			case WJB_BEGIN_OBJECT:
				if (!first)
					appendBinaryStringInfo(&out, ", ", 2);
				first = true;
				if (token == WJB_BEGIN_OBJECT)
					appendStringInfoCharMacro(&out, '{');
				else if (value.val.array.rawScalar)
					raw_scalar = true;
				else
					appendStringInfoCharMacro(&out, '[');
				break;
			case WJB_KEY:
				if (!first)
					appendBinaryStringInfo(&out, ", ", 2);
				append_json_string(&out, value.val.string.val, value.val.string.len);
				appendBinaryStringInfo(&out, ": ", 2);
				/* a container as the member's value opens with no separator */
				first = true;
				break;
			case WJB_VALUE:
			case WJB_ELEM:
				if (!first)
					appendBinaryStringInfo(&out, ", ", 2);
				append_scalar(&out, &value);
				first = false;
				break;
			case WJB_END_ARRAY:
				if (!raw_scalar)
					appendStringInfoCharMacro(&out, ']');
				first = false;
				break;
			case WJB_END_OBJECT:
				appendStringInfoCharMacro(&out, '}');
				first = false;
				break;
			default:
				elog(ERROR, "eventpipe: unexpected jsonb iterator token %d", (int) token);
		}
	}
	*len = out.len;
	return out.data;
}
