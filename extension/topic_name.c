/*
 * topic_name.c
 *		Checks a Kafka topic name the way the broker will, so a bad name is
 *		refused in the publisher's transaction rather than failing later in
 *		the relay.
 *
 * Kafka's rules: 1 to 249 characters among ASCII letters, digits, '.', '_'
 * and '-', and neither "." nor "..".
 */
#include "postgres.h"

#include "eventpipe.h"

#define KAFKA_TOPIC_MAX_LEN 249

static bool
is_legal_topic_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		(c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

void
eventpipe_check_topic_name(const char *topic)
{
	size_t		len = strlen(topic);
	const char *c;

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("Kafka topic name must not be empty")));
	if (len > KAFKA_TOPIC_MAX_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("Kafka topic name is too long (%zu characters)", len),
				 errdetail("Kafka accepts at most %d characters.", KAFKA_TOPIC_MAX_LEN)));
	if (strcmp(topic, ".") == 0 || strcmp(topic, "..") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is not a valid Kafka topic name", topic)));
	for (c = topic; *c; c++)
	{
		if (!is_legal_topic_char(*c))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("Kafka topic name \"%s\" contains an illegal character", topic),
					 errdetail("Kafka topic names may only contain ASCII letters, digits, '.', '_' and '-'.")));
	}
}
