/*
 * kafka_guarantees.h
 *		The librdkafka properties eventpipe's guarantees rest on, which the
 *		DBA's options may not change.
 */
#ifndef EVENTPIPE_KAFKA_GUARANTEES_H
#define EVENTPIPE_KAFKA_GUARANTEES_H

extern const char *eventpipe_kafka_property_refusal(const char *name, const char *value);

#endif							/* EVENTPIPE_KAFKA_GUARANTEES_H */
