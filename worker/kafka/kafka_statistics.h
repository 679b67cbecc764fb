/*
 * kafka_statistics.h
 *		librdkafka's statistics of each worker's Kafka client, kept in
 *		files for eventpipe.kafka_statistics().
 */
#ifndef EVENTPIPE_KAFKA_STATISTICS_H
#define EVENTPIPE_KAFKA_STATISTICS_H

#include <librdkafka/rdkafka.h>

/* The files' place and names: KAFKA_STATISTICS_DIR and the others. */
#include "extension/eventpipe.h"

/* A worker's client gets statistics every this many ms unless the DBA says otherwise. */
#define KAFKA_STATISTICS_INTERVAL_MS "10000"

extern void kafka_statistics_attach(rd_kafka_conf_t *conf, const char *client_id);
extern void kafka_statistics_forget(void);
extern void kafka_statistics_remove_all(void);

#endif							/* EVENTPIPE_KAFKA_STATISTICS_H */
