/*
 * relay_transaction.h
 *		The exactly-once relay (eventpipe.relay_exactly_once): a Kafka
 *		transaction per batch (relay_transaction.c) with its record in the
 *		progress topic (relay_progress.c), the recovery from Kafka of
 *		what committed, and the search for a topic Kafka refuses in
 *		transactions (relay_isolation.c).
 */
#ifndef EVENTPIPE_RELAY_TRANSACTION_H
#define EVENTPIPE_RELAY_TRANSACTION_H

#include "postgres.h"

#include <librdkafka/rdkafka.h>

#include "nodes/pg_list.h"

#include "worker/kafka/kafka_transaction.h"

struct OutboxBatch;

/* Where the relays record which outbox rows each transaction carries. */
#define RELAY_PROGRESS_TOPIC "eventpipe-relay-progress"

/* Most events in one transaction: its record stays well under 1 MB. */
#define RELAY_EXACTLY_ONCE_MAX_BATCH 10000

/* The rows a relay's last committed transaction carried. */
typedef struct RelayProgress
{
	char	   *key;			/* the relay's: server/database/shard */
	int			count;
	int64	   *ids;			/* outbox ids */
	char	  **event_ids;		/* and their event ids, as text */
} RelayProgress;

/* relay_progress.c */
extern int	relay_progress_max_events(size_t message_limit);
extern bool relay_progress_create_topic(rd_kafka_t *rk, char *errbuf, size_t errbuf_size);
extern bool relay_progress_add(rd_kafka_t *rk, const char *key, struct OutboxBatch *batch,
							   char *errbuf, size_t errbuf_size);
extern bool relay_progress_read(const char *bootstrap_servers, const char *client_id,
								const char *prefix, List **records,
								bool (*keep_waiting) (void), char *errbuf, size_t errbuf_size);

/* relay_transaction.c */
extern void relay_txn_setup(int shard, const char *database);
extern bool relay_txn_get_ready(void);
extern bool relay_txn_begin(struct OutboxBatch *batch);
extern bool relay_txn_add_progress(struct OutboxBatch *batch);
extern bool relay_txn_end(struct OutboxBatch *batch, bool sent_whole);
extern void relay_txn_forget_recovery(void);
extern bool relay_txn_must_rebuild(void);

/* relay_isolation.c */
extern void relay_isolation_hold(struct OutboxBatch *batch);
extern void relay_isolation_committed(void);
extern void relay_isolation_failed(void);
extern void relay_isolation_refused(struct OutboxBatch *batch, const KafkaTxnResult *refusal);

#endif							/* EVENTPIPE_RELAY_TRANSACTION_H */
