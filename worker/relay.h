/*
 * relay.h
 *		The relay worker's pieces: a batch of outbox events, read from and
 *		deleted in the database (outbox.c), sent with librdkafka
 *		(kafka_producer.c), driven by the worker's main loop (relay_worker.c).
 */
#ifndef EVENTPIPE_RELAY_H
#define EVENTPIPE_RELAY_H

#include "postgres.h"

#include <librdkafka/rdkafka.h>

#include "datatype/timestamp.h"
#include "utils/jsonb.h"

#include "kafka_log.h"

/* One outbox row, copied out of the database for delivery. */
typedef struct OutboxEvent
{
	int64		id;
	char		event_id[37];	/* uuid text */
	char	   *topic;
	char	   *key;			/* NULL for a keyless event */
	int			key_len;
	char	   *payload;		/* jsonb rendered as text */
	int			payload_len;
	Jsonb	   *headers;		/* user headers, or NULL */
	char	   *event_type;
	TimestampTz created_at;
	int			attempts;		/* failed attempts before this one */
	/* not sent: an earlier event of its topic and key was refused */
	bool		held;
	/* set by the delivery report, or by a refusal before queueing */
	bool		reported;
	bool		refused_on_the_spot;	/* by rd_kafka_producev itself */
	rd_kafka_resp_err_t error;
} OutboxEvent;

#define OutboxEventDelivered(event) \
	((event)->reported && (event)->error == RD_KAFKA_RESP_ERR_NO_ERROR)

/* What became of a batch's events, as recorded in the database. */
typedef struct BatchOutcome
{
	int			delivered;		/* acknowledged, rows deleted */
	int			rescheduled;	/* failed, to be retried later */
	int			dead;			/* failed for good, moved to dead_letters */
	int			held;			/* not sent, still due */
	int			retried;		/* sent again after an earlier failure */
} BatchOutcome;

typedef struct OutboxBatch
{
	int			count;
	OutboxEvent *events;
} OutboxBatch;

/* outbox.c: each runs its own transaction */
typedef enum OutboxAvailability
{
	OUTBOX_READY,
	OUTBOX_NO_EXTENSION
} OutboxAvailability;

extern OutboxAvailability outbox_claim_batch(OutboxBatch *batch, int limit,
											 int shard, int shards);
extern void outbox_record_outcome(OutboxBatch *batch, int max_attempts,
								  BatchOutcome *outcome);

/* kafka_producer.c */
extern bool kafka_producer_ensure(const char *bootstrap_servers, const char *options,
								  const char *client_id, char *errbuf, size_t errbuf_size);
extern bool kafka_producer_built_from(const char *bootstrap_servers, const char *options,
									  const char *client_id);
extern void kafka_producer_destroy(void);
extern void kafka_producer_poll(void);
extern bool kafka_producer_send_batch(OutboxBatch *batch, const char *source,
									  bool (*keep_waiting) (void));
extern bool kafka_error_is_permanent(const OutboxEvent *event);
extern bool kafka_producer_failed_fatally(char *errbuf, size_t errbuf_size);


/* relay_worker.c */
extern PGDLLEXPORT void eventpipe_relay_main(Datum main_arg);

#endif							/* EVENTPIPE_RELAY_H */
