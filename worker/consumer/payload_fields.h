/*
 * payload_fields.h
 *		Named fields read out of a JSON text in one streaming pass
 *		(payload_fields.c).
 */
#ifndef EVENTPIPE_PAYLOAD_FIELDS_H
#define EVENTPIPE_PAYLOAD_FIELDS_H

/* A field name, split at its dots once, before the messages are read. */
typedef struct PayloadFieldName
{
	const char *name;
	int			nparts;
	char	  **parts;
} PayloadFieldName;

typedef enum PayloadFieldKind
{
	PAYLOAD_FIELD_MISSING,
	PAYLOAD_FIELD_STRING,
	PAYLOAD_FIELD_NUMBER,
	PAYLOAD_FIELD_OTHER			/* true, false, null, an object or an array */
} PayloadFieldKind;

typedef struct PayloadField
{
	PayloadFieldKind kind;
	char	   *text;			/* a string's text, a number as written; else NULL */
	Datum		number;			/* a number as numeric: set by the caller, which reads them */
} PayloadField;

extern void payload_field_name_init(PayloadFieldName *name, const char *text);

/*
 * Check that json (len bytes, in the database encoding) is valid JSON, with
 * json_in's errors, and fill found[i] with what names[i] designates.
 */
extern void payload_fields_read(char *json, int len, int nnames, const PayloadFieldName *names,
								PayloadField *found);

#endif
