/*
 * payload_text.c
 *		An event's jsonb payload as the JSON text the relay sends as the
 *		Kafka message's value: byte for byte what jsonb's output function
 *		writes (payload::text), which the docs promise.
 *
 * jsonb's own output function (before PostgreSQL 18) copies every string
 * to escape it one character at a time, grows its buffer as it goes, and
 * walks the jsonb with its iterator, which allocates a frame per container
 * and copies each entry out; at the relay's rates that was the largest
 * single cost of claiming a batch.  This reads the jsonb's containers in
 * place (their layout is utils/jsonb.h's), sizes the buffer once from the
 * jsonb's size, and copies the runs of a string that need no escaping
 * whole, found eight bytes at a time.  Nesting is walked with a stack of
 * its own, not recursion, so a deeply nested payload needs no more of the
 * C stack than a flat one.
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
#include "utils/memutils.h"
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

/*
 * The text being written may not pass this many bytes; once it would, it
 * is too long, and nothing more is written (payload_json_text() stops).
 */
static int	text_limit;
static bool text_too_long;

/*
 * n bytes at s appended to out, growing it only when they do not fit, and
 * only up to text_limit.
 */
static inline void
append_bytes(StringInfo out, const char *s, int n)
{
	if (out->len + n >= out->maxlen)
	{
		if (text_too_long || n > text_limit - out->len)
		{
			text_too_long = true;
			return;
		}
		enlargeStringInfo(out, n);
	}
	memcpy(out->data + out->len, s, n);
	out->len += n;
	out->data[out->len] = '\0';
}

static inline void
append_char(StringInfo out, char c)
{
	append_bytes(out, &c, 1);
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

	append_char(out, '"');
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
		append_bytes(out, run, p - run);
		escape = short_escape(c);
		if (escape != NULL)
			append_bytes(out, escape, 2);
		else
		{
			char		unicode_escape[7];

			snprintf(unicode_escape, sizeof(unicode_escape), "\\u%04x", c);
			append_bytes(out, unicode_escape, 6);
		}
		if (text_too_long)
			return;
		run = ++p;
	}
	append_bytes(out, run, end - run);
	append_char(out, '"');
}

/*
 * The entry at index of container, whose data starts at start bytes into
 * the container's data area: its JSON text appended to out, unless it is a
 * container itself, which is returned for the caller to walk.
 */
static const JsonbContainer *
append_entry(StringInfo out, const JsonbContainer *container, const char *data,
			 int index, uint32 start, uint32 end)
{
	JEntry		entry = container->children[index];

	if (JBE_ISSTRING(entry))
		append_json_string(out, data + start, end - start);
	else if (JBE_ISNUMERIC(entry))
	{
		Numeric		number = (Numeric) (data + INTALIGN(start));
		char	   *text = DatumGetCString(DirectFunctionCall1(numeric_out,
															   NumericGetDatum(number)));

		append_bytes(out, text, strlen(text));
		pfree(text);
	}
	else if (JBE_ISBOOL_TRUE(entry))
		append_bytes(out, "true", 4);
	else if (JBE_ISBOOL_FALSE(entry))
		append_bytes(out, "false", 5);
	else if (JBE_ISNULL(entry))
		append_bytes(out, "null", 4);
	else if (JBE_ISCONTAINER(entry))
		return (const JsonbContainer *) (data + INTALIGN(start));
	else
		elog(ERROR, "eventpipe: unexpected jsonb entry type 0x%x",
			 (unsigned) (entry & JENTRY_TYPEMASK));
	return NULL;
}

/*
 * Where an entry ends, given where it starts: an entry stores either its
 * end offset or its length (jsonb keeps an offset in every
 * JB_OFFSET_STRIDE-th entry, lengths in the others).
 */
static inline uint32
entry_end(JEntry entry, uint32 start)
{
	return JBE_HAS_OFF(entry) ? JBE_OFFLENFLD(entry) : start + JBE_OFFLENFLD(entry);
}

/* One container being written: which of its entries comes next, and where. */
typedef struct ContainerWalk
{
	const JsonbContainer *container;
	const char *data;			/* its data area, after its entries */
	int			count;			/* elements, or key/value pairs */
	bool		object;
	bool		raw_scalar;		/* a top-level scalar, written bare */
	int			next;			/* the next element, or pair */
	uint32		next_start;		/* where its element, or key, starts */
	uint32		value_start;	/* objects: where the next pair's value starts */
} ContainerWalk;

/* Start on container: write its opening bracket, set its walk at its first entry. */
static void
open_container(StringInfo out, ContainerWalk *walk, const JsonbContainer *container)
{
	int			entries;
	int			i;

	walk->container = container;
	walk->count = JsonContainerSize(container);
	walk->object = JsonContainerIsObject(container);
	walk->raw_scalar = JsonContainerIsScalar(container);
	entries = walk->object ? 2 * walk->count : walk->count;
	walk->data = (const char *) &container->children[entries];
	walk->next = 0;
	walk->next_start = 0;
	/* an object's values are stored after all of its keys */
	walk->value_start = 0;
	if (walk->object)
	{
		for (i = 0; i < walk->count; i++)
			walk->value_start = entry_end(container->children[i], walk->value_start);
		append_char(out, '{');
	}
	else if (!walk->raw_scalar)
		append_char(out, '[');
}

static void
close_container(StringInfo out, const ContainerWalk *walk)
{
	if (walk->object)
		append_char(out, '}');
	else if (!walk->raw_scalar)
		append_char(out, ']');
}

/*
 * Write the walk's next element, or key and value; returns the container
 * that is its value, if it is one, for the caller to walk next.
 */
static const JsonbContainer *
append_next(StringInfo out, ContainerWalk *walk)
{
	const JsonbContainer *container = walk->container;
	int			index = walk->next++;
	uint32		start = walk->next_start;
	uint32		end = entry_end(container->children[index], start);

	if (index > 0)
		append_bytes(out, ", ", 2);
	walk->next_start = end;
	if (!walk->object)
		return append_entry(out, container, walk->data, index, start, end);

	/* keys are strings: append_entry() writes them, and returns NULL */
	(void) append_entry(out, container, walk->data, index, start, end);
	append_bytes(out, ": ", 2);
	index += walk->count;
	start = walk->value_start;
	end = entry_end(container->children[index], start);
	walk->value_start = end;
	return append_entry(out, container, walk->data, index, start, end);
}

/*
 * The JSON text of payload into out, made in the current memory context;
 * false, with out holding part of it, if it would pass limit bytes (which
 * must be below MaxAllocSize).  A small jsonb can have a huge text: a
 * string of control characters is written six times as long, and a number
 * of a few bytes may be written with a hundred thousand digits.
 */
bool
payload_json_text(Jsonb *payload, StringInfo out, int limit)
{
	ContainerWalk *stack;
	int			stack_size = 8;
	int			depth = 0;

	/*
	 * The text is rarely much longer than the jsonb: start at that size
	 * (initStringInfo() would start at 1 kB, four times a typical event's
	 * text, and every event of a batch keeps its text until the batch is
	 * recorded).
	 */
	Assert(limit < MaxAllocSize);
	text_limit = limit;
	text_too_long = false;
	out->maxlen = Min((Size) VARSIZE(payload) + VARSIZE(payload) / 4, (Size) limit) + 1;
	out->data = palloc(out->maxlen);
	resetStringInfo(out);
	stack = palloc(sizeof(ContainerWalk) * stack_size);
	open_container(out, &stack[depth++], &payload->root);
	while (depth > 0 && !text_too_long)
	{
		ContainerWalk *walk = &stack[depth - 1];
		const JsonbContainer *inner;

		if (walk->next == walk->count)
		{
			close_container(out, walk);
			depth--;
			continue;
		}
		inner = append_next(out, walk);
		if (inner == NULL)
			continue;
		if (depth == stack_size)
		{
			stack_size *= 2;
			stack = repalloc(stack, sizeof(ContainerWalk) * stack_size);
		}
		open_container(out, &stack[depth++], inner);
	}
	pfree(stack);
	/* appends into room the buffer already had are not checked one by one */
	return !text_too_long && out->len <= limit;
}
