/*
 * kafka_options.c
 *		Turns eventpipe.kafka_options ("key=value,key=value") into librdkafka
 *		configuration properties.
 *
 * Used by the GUC check hook (so a bad value is refused at reload, with the
 * old one kept) and by the workers when they build a Kafka handle; also sets
 * the workers' own properties (eventpipe_kafka_conf_set).  Values
 * may be secrets: error texts name the property, never its value.
 */
#include "postgres.h"

#include <ctype.h>
#include <string.h>

#include "lib/stringinfo.h"

#include "kafka_options.h"

/* Could librdkafka's complaint about this property quote a secret? */
static bool
property_may_be_secret(const char *name)
{
	return strstr(name, "password") != NULL ||
		strstr(name, "secret") != NULL ||
		strstr(name, "key") != NULL ||
		strstr(name, "jaas") != NULL;
}

static char *
trim(char *s)
{
	char	   *end;

	while (isspace((unsigned char) *s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char) end[-1]))
		*--end = '\0';
	return s;
}

bool
eventpipe_apply_kafka_options(rd_kafka_conf_t *conf, const char *options,
							  char *errbuf, size_t errbuf_size)
{
	char	   *copy;
	char	   *item;
	char	   *saveptr = NULL;
	bool		ok = true;
	int			position = 0;

	if (options == NULL || options[0] == '\0')
		return true;

	copy = pstrdup(options);
	for (item = strtok_r(copy, ",", &saveptr); item != NULL && ok;
		 item = strtok_r(NULL, ",", &saveptr))
	{
		char	   *eq = strchr(item, '=');
		char	   *name;
		char	   *value;
		char		rderr[512];

		position++;
		if (trim(item)[0] == '\0')
			continue;			/* tolerate "a=b," and ",," */
		if (eq == NULL)
		{
			/* not echoed: it may be the tail of a value that held a comma */
			snprintf(errbuf, errbuf_size,
					 "item %d is not of the form key=value (commas separate items)",
					 position);
			ok = false;
			break;
		}
		*eq = '\0';
		name = trim(item);
		value = trim(eq + 1);
		if (name[0] == '\0')
		{
			snprintf(errbuf, errbuf_size, "an item has an empty property name");
			ok = false;
		}
		else if (rd_kafka_conf_set(conf, name, value, rderr, sizeof(rderr)) != RD_KAFKA_CONF_OK)
		{
			if (property_may_be_secret(name))
				snprintf(errbuf, errbuf_size,
						 "librdkafka rejected the value of property \"%s\"", name);
			else
				snprintf(errbuf, errbuf_size,
						 "librdkafka rejected property \"%s\": %s", name, rderr);
			ok = false;
		}
	}
	pfree(copy);
	return ok;
}

/*
 * The options with every value replaced by "********", for readers who may
 * know which properties are set but not their values.  Returns a string in
 * the current memory context.
 */
const char *
eventpipe_mask_kafka_options(const char *options)
{
	StringInfoData masked;
	char	   *copy = pstrdup(options);
	char	   *item;
	char	   *saveptr = NULL;

	initStringInfo(&masked);
	for (item = strtok_r(copy, ",", &saveptr); item != NULL;
		 item = strtok_r(NULL, ",", &saveptr))
	{
		char	   *eq = strchr(item, '=');

		if (eq == NULL)
			continue;			/* a value's tail after a comma: no name */
		*eq = '\0';
		appendStringInfo(&masked, "%s%s=********", masked.len > 0 ? "," : "", trim(item));
	}
	pfree(copy);
	return masked.data;
}

/*
 * Set one of the workers' own properties (not a DBA's: the value is
 * quoted back).  Returns false, with the reason in errbuf, if refused.
 */
bool
eventpipe_kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value,
						 char *errbuf, size_t errbuf_size)
{
	char		rderr[512];

	if (rd_kafka_conf_set(conf, name, value, rderr, sizeof(rderr)) == RD_KAFKA_CONF_OK)
		return true;
	snprintf(errbuf, errbuf_size, "librdkafka rejected property \"%s\": %s", name, rderr);
	return false;
}
