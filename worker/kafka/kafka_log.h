/*
 * kafka_log.h
 *		librdkafka's log lines and error events, kept until a worker's main
 *		loop can ereport them (kafka_log.c); used by the producer and the
 *		consumer alike.
 */
#ifndef EVENTPIPE_KAFKA_LOG_H
#define EVENTPIPE_KAFKA_LOG_H

#include <librdkafka/rdkafka.h>

extern void kafka_log_callback(const rd_kafka_t *rk, int level, const char *facility,
							   const char *message);
extern void kafka_error_callback(rd_kafka_t *rk, int err, const char *reason, void *opaque);
extern void kafka_log_drain(void);
extern bool kafka_log_take_broker_error(char *buf, size_t size);
extern bool kafka_log_take_transaction_error(char *buf, size_t size);

#endif							/* EVENTPIPE_KAFKA_LOG_H */
