/*
 * kafka_client.c
 *		Builds a worker's librdkafka client, producer or consumer, the same
 *		way for both: the brokers, the client id and the properties every
 *		worker's client has, then the caller's own, then the DBA's
 *		(eventpipe.kafka_options and its file, which win, but may not
 *		touch what extension/kafka_guarantees.c keeps); and the log,
 *		error and statistics callbacks, with logs queued for the worker's
 *		own thread (librdkafka's threads never call into PostgreSQL).
 */
#include "postgres.h"

#include <ctype.h>

#include "extension/kafka_options.h"
#include "kafka_client.h"
#include "kafka_log.h"
#include "kafka_statistics.h"

/*
 * Write '_' for each character of a client id that is not a letter, digit,
 * '.', '_' or '-': ids carry database names, which may hold any character,
 * and also name a file (kafka_statistics.c).
 */
void
kafka_client_id_sanitize(char *client_id)
{
	char	   *c;

	for (c = client_id; *c != '\0'; c++)
		if (!isalnum((unsigned char) *c) && *c != '.' && *c != '_' && *c != '-')
			*c = '_';
}

/*
 * The configuration of a client: NULL, with the reason in errbuf, if
 * librdkafka refuses a property.  The caller adds its callbacks and hands
 * it to kafka_client_new().
 */
rd_kafka_conf_t *
kafka_client_conf(const char *bootstrap_servers, const char *client_id,
				  const char *const properties[][2], size_t nproperties,
				  char *errbuf, size_t errbuf_size)
{
	static const char *const shared[][2] = {
		{"reconnect.backoff.ms", "100"},
		{"reconnect.backoff.max.ms", "2000"},
		{"log.queue", "true"},
		{"statistics.interval.ms", KAFKA_STATISTICS_INTERVAL_MS},
	};
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	size_t		i;
	bool		ok;

	ok = eventpipe_kafka_conf_set(conf, "bootstrap.servers", bootstrap_servers, errbuf, errbuf_size) &&
		eventpipe_kafka_conf_set(conf, "client.id", client_id, errbuf, errbuf_size);
	for (i = 0; ok && i < lengthof(shared); i++)
		ok = eventpipe_kafka_conf_set(conf, shared[i][0], shared[i][1], errbuf, errbuf_size);
	for (i = 0; ok && i < nproperties; i++)
		ok = eventpipe_kafka_conf_set(conf, properties[i][0], properties[i][1], errbuf, errbuf_size);
	/* the DBA's options come last and win, where kafka_guarantees.c lets them */
	ok = ok && eventpipe_apply_dba_kafka_options(conf, errbuf, errbuf_size);
	if (!ok)
	{
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	return conf;
}

/*
 * The client, from conf (which it takes over, freed on failure); NULL, with
 * the reason in errbuf, if librdkafka cannot make it.  statistics_id names
 * the worker's statistics file (its client id), or is NULL for a short-lived
 * helper client that has none (one file per worker).
 */
rd_kafka_t *
kafka_client_new(rd_kafka_type_t type, rd_kafka_conf_t *conf, const char *statistics_id,
				 char *errbuf, size_t errbuf_size)
{
	rd_kafka_t *rk;

	if (statistics_id != NULL)
		kafka_statistics_attach(conf, statistics_id);
	rd_kafka_conf_set_log_cb(conf, kafka_log_callback);
	rd_kafka_conf_set_error_cb(conf, kafka_error_callback);

	rk = rd_kafka_new(type, conf, errbuf, errbuf_size);
	if (rk == NULL)
	{
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	rd_kafka_set_log_queue(rk, NULL);
	return rk;
}
