/*
 * kafka_client.h
 *		Building a worker's librdkafka client: the configuration every
 *		worker's client shares, and the callbacks it needs.
 */
#ifndef EVENTPIPE_KAFKA_CLIENT_H
#define EVENTPIPE_KAFKA_CLIENT_H

#include "postgres.h"

#include <librdkafka/rdkafka.h>

extern rd_kafka_conf_t *kafka_client_conf(const char *bootstrap_servers, const char *client_id,
										  const char *const properties[][2], size_t nproperties,
										  char *errbuf, size_t errbuf_size);
extern void kafka_client_id_sanitize(char *client_id);
extern rd_kafka_t *kafka_client_new(rd_kafka_type_t type, rd_kafka_conf_t *conf,
									const char *statistics_id, char *errbuf, size_t errbuf_size);

#endif							/* EVENTPIPE_KAFKA_CLIENT_H */
