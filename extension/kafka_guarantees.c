/*
 * kafka_guarantees.c
 *		The librdkafka properties eventpipe's guarantees rest on, which the
 *		DBA's options (eventpipe.kafka_options and its file) may not change.
 *
 * The relay deletes an event once every in-sync replica has it and its
 * delivery report is in, and keeps each key's order through librdkafka's
 * idempotent producer, retries without end and a partitioner that follows
 * the key; its recovery under exactly-once and the consumers read committed
 * records only, each subscription in its own group, rebalanced eagerly,
 * from the first record still there when a stored offset is gone.  Nor may
 * the DBA point the workers at librdkafka's mock cluster (which
 * acknowledges what no broker has), its unit-test hooks, or a signal
 * PostgreSQL handles.  The workers set these themselves (kafka_producer.c,
 * kafka_consumer.c, relay_progress.c); this file only keeps the DBA from
 * undoing them.
 *
 * A value is judged by what librdkafka makes of it, not by its spelling:
 * the DBA's item is set on a scratch configuration and read back
 * ("acks=-1", "topic.acks=all" and "enable.idempotence=1" all keep the
 * relay's value).  Only items whose names reach one of these properties are
 * tried there, so a property with side effects when set (plugin.library.paths
 * loads a library) is never set twice.
 */
#include "postgres.h"

#include <librdkafka/rdkafka.h>

#include "kafka_guarantees.h"

typedef enum KeptRule
{
	KEEP_VALUE,					/* only the workers' value, in any spelling */
	NEVER_SET,					/* the workers set it, per client: the DBA not at all */
	REFUSE_VALUES,				/* any value (or list) holding none of those listed */
	AT_MOST,					/* a number no greater than the one listed */
} KeptRule;

typedef struct KeptProperty
{
	const char *name;			/* as librdkafka reads it back */
	const char *alias;			/* another name librdkafka takes for it, or NULL */
	KeptRule	rule;
	const char *values[3];		/* KEEP_VALUE: the workers' value; REFUSE_VALUES:
								 * those refused; AT_MOST: the bound */
	const char *why;
} KeptProperty;

static const KeptProperty kept_properties[] = {
	{"request.required.acks", "acks", KEEP_VALUE, {"all"},
	"the relay deletes an event once Kafka acknowledges it, so the acknowledgement "
	"must come from every in-sync replica (acks=all), not from the leader alone"},
	{"enable.idempotence", NULL, KEEP_VALUE, {"true"},
	"without the idempotent producer a request librdkafka sends again can write an "
	"event twice or put it after a later event of its key"},
	{"delivery.report.only.error", NULL, KEEP_VALUE, {"false"},
	"the relay deletes an event only once its delivery report is in, so every "
	"event needs one"},
	{"message.timeout.ms", "delivery.timeout.ms", NEVER_SET, {NULL},
	"the relay's events never time out (under eventpipe.relay_exactly_once, they "
	"do with their transaction): one that did would follow later events of its key"},
	{"message.send.max.retries", "retries", NEVER_SET, {NULL},
	"librdkafka retries the relay's events without end: one it gave up on would "
	"be sent again after later events of its key"},
	{"partitioner", NULL, REFUSE_VALUES, {"random", "consistent_random"},
	"it would send the events of one key (for consistent_random, the empty key) to "
	"different partitions, out of their order"},
	{"max.in.flight.requests.per.connection", "max.in.flight", AT_MOST, {"5"},
	"the idempotent producer keeps each key's order with at most 5 requests in "
	"flight per broker, and librdkafka will not start the relay with more"},
	{"group.protocol", NULL, NEVER_SET, {NULL},
	"the consumers rebalance eagerly, under the classic group protocol"},
	{"partition.assignment.strategy", NULL, REFUSE_VALUES, {"cooperative-sticky"},
	"the consumers rebalance eagerly: under the cooperative protocol a worker would "
	"drop the messages it had polled yet keep reading past them, and skip them"},
	{"queuing.strategy", NULL, REFUSE_VALUES, {"lifo"},
	"it would send a key's later events before its earlier ones, and librdkafka will "
	"not start the relay with it"},
	{"transactional.id", NULL, NEVER_SET, {NULL},
	"the relay names its own Kafka transactions, under eventpipe.relay_exactly_once"},
	{"isolation.level", NULL, KEEP_VALUE, {"read_committed"},
	"the relay's recovery under eventpipe.relay_exactly_once and the consumers must "
	"not read records of aborted Kafka transactions"},
	{"group.id", NULL, NEVER_SET, {NULL},
	"each subscription consumes in its own group, its group_id"},
	{"group.instance.id", NULL, NEVER_SET, {NULL},
	"the workers of a subscription would fence one another out of its group"},
	{"auto.offset.reset", NULL, NEVER_SET, {NULL},
	"a consumer whose stored offset is gone starts at the first record still there; "
	"any other start would skip records not yet applied"},
	{"enable.partition.eof", NULL, NEVER_SET, {NULL},
	"the workers set it themselves: the relay's recovery reads each partition to "
	"its end, the consumers do not"},
	{"internal.termination.signal", NULL, NEVER_SET, {NULL},
	"PostgreSQL owns the workers' signal handlers"},
	{"enable_sasl_queue", NULL, NEVER_SET, {NULL},
	"the workers serve no SASL callback queue: OAUTHBEARER tokens would never be "
	"refreshed"},
};

/* librdkafka's hidden test properties, settable like any other */
static const char *const test_property_prefixes[] = {"test.", "ut_"};

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

/* Set name to value on conf and read prop back; false if either fails. */
static bool
set_and_read_back(rd_kafka_conf_t *conf, const char *name, const char *value,
				  const KeptProperty *prop, char *read, size_t read_size)
{
	char		errstr[256];
	bool		ok;

	ok = rd_kafka_conf_set(conf, name, value, errstr, sizeof(errstr)) == RD_KAFKA_CONF_OK &&
		rd_kafka_conf_get(conf, prop->name, read, &read_size) == RD_KAFKA_CONF_OK;
	explicit_bzero(errstr, sizeof(errstr));	/* it may quote the value */
	return ok;
}

/* Is item one of the comma-separated items of list (spaces around them aside)? */
static bool
lists(const char *list, const char *item)
{
	size_t		len = strlen(item);
	const char *p = list;

	for (;;)
	{
		while (*p == ' ')
			p++;
		if (strncmp(p, item, len) == 0)
		{
			const char *end = p + len;

			while (*end == ' ')
				end++;
			if (*end == ',' || *end == '\0')
				return true;
		}
		p = strchr(p, ',');
		if (p == NULL)
			return false;
		p++;
	}
}

/*
 * Does setting name to value keep prop as it must be?  Anything that cannot
 * be read back (a value only an interceptor took) counts as not kept.
 */
static bool
keeps(const KeptProperty *prop, const char *name, const char *value)
{
	rd_kafka_conf_t *scratch = rd_kafka_conf_new();
	char		workers_value[256];
	char		dba_value[256];
	bool		kept;
	size_t		i;

	if (prop->rule == KEEP_VALUE)
		kept = set_and_read_back(scratch, prop->name, prop->values[0], prop,
								 workers_value, sizeof(workers_value)) &&
			set_and_read_back(scratch, name, value, prop, dba_value, sizeof(dba_value)) &&
			strcmp(dba_value, workers_value) == 0;
	else if (prop->rule == AT_MOST)
		kept = set_and_read_back(scratch, name, value, prop, dba_value, sizeof(dba_value)) &&
			strtol(dba_value, NULL, 10) <= strtol(prop->values[0], NULL, 10);
	else
	{
		kept = set_and_read_back(scratch, name, value, prop, dba_value, sizeof(dba_value));
		for (i = 0; kept && i < lengthof(prop->values) && prop->values[i] != NULL; i++)
			kept = !lists(dba_value, prop->values[i]);
	}
	rd_kafka_conf_destroy(scratch);
	return kept;
}

/*
 * Why the DBA may not set property name to value (which librdkafka has
 * accepted), or NULL if eventpipe's guarantees hold with it.
 */
const char *
eventpipe_kafka_property_refusal(const char *name, const char *value)
{
	const KeptProperty *prop = kept_property_named(name);
	size_t		i;

	for (i = 0; i < lengthof(test_property_prefixes); i++)
		if (strncmp(name, test_property_prefixes[i], strlen(test_property_prefixes[i])) == 0)
			return "librdkafka's test properties replace the brokers with a mock "
				"cluster or take over its internals";
	if (prop == NULL)
		return NULL;
	if (prop->rule == NEVER_SET || !keeps(prop, name, value))
		return prop->why;
	return NULL;
}
