/*
 * kafka_options.h
 *		The DBA's librdkafka properties (eventpipe.kafka_options and
 *		eventpipe.kafka_options_file) into a librdkafka configuration.
 */
#ifndef EVENTPIPE_KAFKA_OPTIONS_H
#define EVENTPIPE_KAFKA_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>

#include <librdkafka/rdkafka.h>

extern bool eventpipe_apply_kafka_options(rd_kafka_conf_t *conf, const char *options,
										  char *errbuf, size_t errbuf_size);
extern bool eventpipe_apply_dba_kafka_options(rd_kafka_conf_t *conf, char *errbuf,
											  size_t errbuf_size);
extern char *eventpipe_dba_kafka_options_version(void);
extern const char *eventpipe_mask_kafka_options(const char *options);
extern bool eventpipe_kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value,
									 char *errbuf, size_t errbuf_size);

#endif							/* EVENTPIPE_KAFKA_OPTIONS_H */
