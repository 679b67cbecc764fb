/*
 * kafka_guarantees.c
 *		The librdkafka properties the relay's guarantees rest on, which the
 *		DBA's options (eventpipe.kafka_options and its file) may not change:
 *		the relay deletes an event once every in-sync replica has it and its
 *		delivery report is in, and keeps each key's order through librdkafka's
 *		idempotent producer and a partitioner that follows the key.
 *
 * A property is judged by the value librdkafka makes of it, not by its
 * spelling: the DBA's item is set on a scratch configuration that holds the
 * relay's values, and those are read back ("acks=-1", "topic.acks=all" and
 * "enable.idempotence=1" all keep them).  Only names that can reach one of
 * these properties are tried, so a property with side effects when set
 * (plugin.library.paths loads a library) is never set twice.
 */
#include "postgres.h"

#include "kafka_options.h"

/* What one property must read, and why, for the relay to keep its word. */
typedef struct KeptProperty
{
	const char *name;			/* as librdkafka reads it back */
	const char *alias;			/* another name librdkafka takes for it, or NULL */
	const char *relay_value;	/* the relay's value, the only one allowed; NULL: unset */
	const char *refused_value;	/* or else the one value refused, any other fine */
	const char *why;
} KeptProperty;

static const KeptProperty kept_properties[] = {
	{"enable.idempotence", NULL, "true", NULL,
	"without the idempotent producer a request librdkafka sends again can write an "
	"event twice or put it after a later event of its key"},
	{"request.required.acks", "acks", "all", NULL,
	"the relay deletes an event once Kafka acknowledges it, so the acknowledgement "
	"must come from every in-sync replica (acks=all), not from the leader alone"},
	{"delivery.report.only.error", NULL, "false", NULL,
	"the relay deletes an event only once its delivery report is in, so every "
	"event needs one"},
	{"transactional.id", NULL, NULL, NULL,
	"the relay names its own Kafka transactions, under eventpipe.relay_exactly_once"},
	{"partitioner", NULL, NULL, "random",
	"partitioner=random spreads the events of one key over partitions, out of "
	"their order"},
};

/*
 * The kept property name reaches, or NULL.  librdkafka also takes a topic
 * property's name after "topic.".
 */
static const KeptProperty *
kept_property_named(const char *name)
{
	size_t		i;

	if (strncmp(name, "topic.", strlen("topic.")) == 0)
		name += strlen("topic.");
	for (i = 0; i < lengthof(kept_properties); i++)
		if (strcmp(name, kept_properties[i].name) == 0 ||
			(kept_properties[i].alias != NULL && strcmp(name, kept_properties[i].alias) == 0))
			return &kept_properties[i];
	return NULL;
}

/* prop's value in conf as librdkafka reads it back, "" when unset. */
static void
read_back(rd_kafka_conf_t *conf, const KeptProperty *prop, char *value, size_t value_size)
{
	if (rd_kafka_conf_get(conf, prop->name, value, &value_size) != RD_KAFKA_CONF_OK)
		value[0] = '\0';
}

/*
 * Why the DBA may not set property name to value (which librdkafka has
 * accepted), or NULL if the relay's guarantees hold with it.
 */
const char *
eventpipe_kafka_property_refusal(const char *name, const char *value)
{
	const KeptProperty *prop = kept_property_named(name);
	rd_kafka_conf_t *scratch;
	char		errstr[256];
	char		relay_value[64];
	char		dba_value[64];
	bool		kept;

	if (prop == NULL)
		return NULL;
	scratch = rd_kafka_conf_new();
	if (prop->relay_value != NULL)
		rd_kafka_conf_set(scratch, prop->name, prop->relay_value, errstr, sizeof(errstr));
	read_back(scratch, prop, relay_value, sizeof(relay_value));
	if (rd_kafka_conf_set(scratch, name, value, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		kept = true;			/* librdkafka refuses it: not this check's to report */
	else
	{
		read_back(scratch, prop, dba_value, sizeof(dba_value));
		kept = prop->refused_value != NULL ? strcmp(dba_value, prop->refused_value) != 0
			: strcmp(dba_value, relay_value) == 0;
	}
	explicit_bzero(errstr, sizeof(errstr));	/* it may quote the value */
	rd_kafka_conf_destroy(scratch);
	return kept ? NULL : prop->why;
}
