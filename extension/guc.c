/*
 * guc.c
 *		The eventpipe.* configuration parameters: their variables, bounds,
 *		contexts and checks.
 *
 * Everything a running worker can pick up on reload is PGC_SIGHUP; the
 * numbers of relay workers and of databases, which size shared memory, and
 * the relay's
 * exactly-once mode, which must not change under a running relay (a batch
 * half sent one way, recorded the other), need a restart.
 * eventpipe.kafka_options may hold secrets (SASL passwords, key passwords):
 * it is superuser-only, and its values are never echoed in errors.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/guc.h"

#include <librdkafka/rdkafka.h>

#include "guc.h"
#include "shmem.h"
#include "kafka_options.h"
#include "compat.h"

char	   *eventpipe_database = NULL;
char	   *eventpipe_bootstrap_servers = NULL;
char	   *eventpipe_kafka_options = NULL;
char	   *eventpipe_kafka_options_file = NULL;
int			eventpipe_relay_batch_size = 5000;
int			eventpipe_relay_poll_interval = 1000;
int			eventpipe_relay_claim_interval = 3;
int			eventpipe_relay_max_attempts = 10;
int			eventpipe_relay_workers = 1;
int			eventpipe_max_databases = 16;
int			eventpipe_consumer_batch_size = 3000;
int			eventpipe_dedup_retention = 7 * 24 * 3600;
int			eventpipe_snapshot_chunk_rows = 1000;
int			eventpipe_snapshot_max_backlog = 50000;
bool		eventpipe_relay_exactly_once = false;

/*
 * SHOW and current_setting(): the property names, never the values, unless
 * the reader is a superuser (GUC_SUPERUSER_ONLY alone lets members of
 * pg_read_all_settings, pg_monitor among them, read the value).
 * GUC_NO_SHOW_ALL keeps the setting out of pg_settings, whose reset_val
 * column would show the value unmasked.
 */
static const char *
show_kafka_options(void)
{
	if (eventpipe_kafka_options == NULL || superuser())
		return eventpipe_kafka_options ? eventpipe_kafka_options : "";
	return eventpipe_mask_kafka_options(eventpipe_kafka_options);
}

/* Refuse a kafka_options string librdkafka would not accept. */
static bool
check_kafka_options(char **newval, void **extra, GucSource source)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char		errbuf[512];
	bool		ok;

	ok = eventpipe_apply_kafka_options(conf, *newval, errbuf, sizeof(errbuf));
	rd_kafka_conf_destroy(conf);
	if (!ok)
	{
		/* PostgreSQL's own message would quote the value, secrets and all */
		GUC_check_errmsg("invalid value for parameter \"eventpipe.kafka_options\"");
		GUC_check_errdetail("%s", errbuf);
		/* the usual cause of an item that is no property: a comma in a value */
		GUC_check_errhint("A value that contains a comma must go in the file named by "
						  "eventpipe.kafka_options_file, one key=value per line; errors "
						  "name items by position and never quote a value.");
	}
	return ok;
}

/*
 * Does eventpipe.database name the database called name?  Empty or "*"
 * names every database; otherwise it is a comma-separated list of names,
 * spaces around each ignored, compared as written (no case folding, as a
 * single name always was).
 */
bool
eventpipe_database_is_served(const char *name)
{
	const char *item = eventpipe_database;

	while (*item == ' ')
		item++;
	if (*item == '\0' || strcmp(item, "*") == 0)
		return true;
	while (*item != '\0')
	{
		const char *end = strchr(item, ',');
		const char *last = end ? end : item + strlen(item);

		while (*item == ' ' && item < last)
			item++;
		while (last > item && last[-1] == ' ')
			last--;
		if ((size_t) (last - item) == strlen(name) && strncmp(item, name, last - item) == 0)
			return true;
		if (end == NULL)
			break;
		item = end + 1;
	}
	return false;
}

void
eventpipe_define_gucs(void)
{
	DefineCustomStringVariable("eventpipe.database",
							   "Databases the eventpipe workers serve: * (or empty) for all, or a comma-separated list.",
							   "Every database named (all, with *) where the extension is installed gets its relay and consumer workers.",
							   &eventpipe_database,
							   "*",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("eventpipe.max_databases",
							"Most databases eventpipe serves at a time.",
							"Each takes a slot of shared memory; a database beyond them waits, and says so.",
							&eventpipe_max_databases,
							16, 1, 1024,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("eventpipe.bootstrap_servers",
							   "Kafka brokers (host:port,...) the workers connect to.",
							   "Empty means the workers wait, and say so in pg_stat_relay.",
							   &eventpipe_bootstrap_servers,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("eventpipe.kafka_options",
							   "Extra librdkafka properties, as key=value,key=value.",
							   "For TLS and SASL settings; visible to superusers only.",
							   &eventpipe_kafka_options,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   check_kafka_options, NULL, show_kafka_options);

	/*
	 * PostgreSQL logs "parameter changed to" with the new value of any
	 * setting a reload changes: secrets belong in this file, whose name
	 * alone is logged.
	 */
	DefineCustomStringVariable("eventpipe.kafka_options_file",
							   "File of extra librdkafka properties, one key=value per line, read by the workers.",
							   "Applied after eventpipe.kafka_options; for secrets (SASL passwords, key passwords), "
							   "which then never appear in the settings or the server log.  Must not be "
							   "open to other users.  A relative path is taken from the data directory.",
							   &eventpipe_kafka_options_file,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("eventpipe.relay_batch_size",
							"Most outbox events the relay sends in one batch.",
							NULL,
							&eventpipe_relay_batch_size,
							5000, 1, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("eventpipe.relay_poll_interval",
							"Fallback wake-up of an idle relay worker.",
							"Commits wake the relay at once; this only bounds the wait.",
							&eventpipe_relay_poll_interval,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("eventpipe.relay_claim_interval",
							"Least time between the starts of two runs of relay batches.",
							"Under a steady stream of commits, those of one interval go out in one batch; "
							"0 claims again as soon as a batch is recorded.",
							&eventpipe_relay_claim_interval,
							3, 0, 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("eventpipe.relay_max_attempts",
							"Delivery attempts before an event goes to the dead letters.",
							"Failures that no retry can cure dead-letter at once.",
							&eventpipe_relay_max_attempts,
							10, 1, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("eventpipe.relay_workers",
							"Number of relay workers; the outbox is split between them by key hash.",
							NULL,
							&eventpipe_relay_workers,
							1, 1, EVENTPIPE_MAX_RELAY_WORKERS,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("eventpipe.relay_exactly_once",
							 "Sends each relay batch in a Kafka transaction, recovered from Kafka after a crash.",
							 "Consumers reading with isolation.level=read_committed then see every event exactly once.",
							 &eventpipe_relay_exactly_once,
							 false,
							 PGC_POSTMASTER, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("eventpipe.consumer_batch_size",
							"Most Kafka messages a consumer applies in one transaction.",
							"For subscriptions whose batch_size is NULL.",
							&eventpipe_consumer_batch_size,
							3000, 1, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("eventpipe.dedup_retention",
							"How long the consumer remembers applied event ids.",
							"A copy of an event redelivered later than this after it was applied is applied again.",
							&eventpipe_dedup_retention,
							7 * 24 * 3600, 60, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("eventpipe.snapshot_chunk_rows",
							"Rows a snapshot reads, locks and emits in one transaction.",
							"Writers of those rows wait for the chunk's commit at most.",
							&eventpipe_snapshot_chunk_rows,
							1000, 1, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("eventpipe.snapshot_max_backlog",
							"Outbox backlog above which a snapshot waits for the relay.",
							"Measured as the span of outbox ids still in the outbox.",
							&eventpipe_snapshot_max_backlog,
							50000, 1, INT_MAX,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("eventpipe");
}
