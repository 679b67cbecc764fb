/*
 * relay.h
 *		The relay worker's pieces: a batch of outbox events, read from and
 *		deleted in the database (outbox.c), sent with librdkafka
 *		(kafka_producer.c), in runs of overlapping batches
 *		(relay_pipeline.c), driven by the worker's main loop (relay_worker.c),
 *		both of which keep the worker's state in its slot (relay_slot.c).
 */
#ifndef EVENTPIPE_RELAY_H
#define EVENTPIPE_RELAY_H

#include "postgres.h"

#include <librdkafka/rdkafka.h>

#include "access/attnum.h"
#include "datatype/timestamp.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "storage/itemptr.h"
#include "utils/array.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include "extension/shmem.h"
#include "worker/kafka/kafka_log.h"

struct OutboxBatch;

/* One outbox row, copied out of the database for delivery. */
typedef struct OutboxEvent
{
	int64		id;
	ItemPointerData ctid;		/* where the claim found its row */
	pg_uuid_t	event_uuid;
	char		event_id[37];	/* event_uuid as text */
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
	bool		refused_on_the_spot;	/* by rd_kafka_producev, or by the
										 * claim (a payload too large) */
	bool		refused_in_transaction; /* its topic, by the broker
										 * (relay_isolation.c) */
	bool		queued;			/* handed over to librdkafka */
	rd_kafka_resp_err_t error;
	struct OutboxBatch *batch;	/* the batch it was sent in */
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

/*
 * A claim stops at its limit of events, or once the memory its events hold
 * (payload text, key, headers: outbox_copy_event()) reaches this many bytes
 * (it always takes one event): the batches in flight must fit in the
 * worker's memory whatever the size of the events.
 */
#define RELAY_BATCH_MAX_BYTES (32 * 1024 * 1024)

/*
 * What a claim saw of the outbox as a whole, for claim_start.c: the storage
 * it read (whose ids it speaks of), whether ids are drawn in order, and the
 * lowest and highest ids of the rows it read, whatever their shard and
 * whether in flight or not (0: none).  Only a claim that read the primary
 * key itself (outbox_scan.c) knows the ids; the SQL claim leaves rows_read
 * false.
 */
typedef struct OutboxSeen
{
	int64		after_id;		/* where a claim from the start began */
	Oid			storage;		/* the outbox's relfilenode; InvalidOid: not read */
	bool		ids_in_order;	/* its identity sequence caches 1, counts up,
								 * does not cycle */
	bool		rows_read;
	int64		lowest_id;
	int64		highest_id;
} OutboxSeen;

typedef struct OutboxBatch
{
	int			count;
	OutboxEvent *events;
	bool		full;			/* the claim stopped at a limit: more may be due past it */
	int			awaiting;		/* events sent, their delivery report not yet in */
	OutboxSeen	seen;
} OutboxBatch;

/* outbox.c: each runs its own transaction */
typedef enum OutboxAvailability
{
	OUTBOX_READY,
	OUTBOX_BUSY,				/* locked by someone else, and asked not to wait */
	OUTBOX_NO_EXTENSION
} OutboxAvailability;

extern OutboxAvailability outbox_claim_batch(OutboxBatch *batch, int limit,
											 int shard, int shards, int64 after_id,
											 ArrayType *in_flight, bool nowait);
extern void outbox_record_outcome(OutboxBatch *batch, int max_attempts,
								  BatchOutcome *outcome);
extern uint64 outbox_forget_committed(List *records);

/* outbox_row.c: the outbox columns a claim reads, and their copy */
typedef enum OutboxColumn
{
	COL_ID,
	COL_EVENT_ID,
	COL_TOPIC,
	COL_KEY,
	COL_PAYLOAD,
	COL_HEADERS,
	COL_EVENT_TYPE,
	COL_CREATED_AT,
	COL_ATTEMPTS,
	OUTBOX_COLUMNS
} OutboxColumn;
extern const char *const outbox_column_names[OUTBOX_COLUMNS];
extern Size outbox_copy_event(OutboxEvent *event, const Datum *values, const bool *nulls,
							  const AttrNumber *columns, ItemPointer ctid);

/* outbox_scan.c: in the caller's transaction */
extern bool outbox_scan_claim(OutboxBatch *batch, MemoryContext batch_context, int limit,
							  int shard, int shards, int64 after_id, int64 *in_flight,
							  int in_flight_count);

/* claim_start.c: where the worker's claims from the start begin */
extern int64 claim_start_begin(Oid *storage);
extern int64 claim_start_end(const OutboxSeen *seen);
extern void claim_start_heard_commit(uint64 lowest);

/* payload_text.c */
extern bool payload_json_text(Jsonb *payload, StringInfo out, int limit);

/* outbox_delete.c: in the caller's transaction */
extern int	outbox_delete_in_place(OutboxEvent **events, int count, OutboxEvent ***left);

/* kafka_producer.c */
extern bool kafka_producer_ensure(const char *bootstrap_servers, const char *client_id,
								  char *errbuf, size_t errbuf_size);
extern bool kafka_producer_built_from(const char *bootstrap_servers, const char *client_id);
extern void kafka_producer_destroy(void);
extern void kafka_producer_poll(void);
extern bool kafka_producer_produce_batch(OutboxBatch *batch, const char *source,
										 List **refused, bool (*keep_waiting) (void));
extern bool kafka_producer_await_batch(OutboxBatch *batch, bool send_now,
									   bool (*keep_waiting) (void));
extern bool kafka_error_is_permanent(const OutboxEvent *event);
extern bool kafka_producer_failed_fatally(char *errbuf, size_t errbuf_size);
extern void kafka_producer_set_transactional_id(const char *id);
extern rd_kafka_t *kafka_producer_handle(void);
extern int	kafka_producer_message_limit(void);
extern uint64 kafka_producer_generation(void);

/* librdkafka's ceiling for message.max.bytes */
#define KAFKA_MESSAGE_MAX_BYTES_CEILING 1000000000


/* relay_pipeline.c: how a run of batches ended */
typedef enum RelayRunEnd
{
	RELAY_RUN_SENT,				/* batches went out */
	RELAY_RUN_IDLE,				/* nothing to send */
	RELAY_RUN_NO_EXTENSION,		/* eventpipe is not installed here */
	RELAY_RUN_CLAIM_FAILED		/* reading the outbox failed */
} RelayRunEnd;

typedef struct RelayRun
{
	RelayRunEnd end;
	bool		gave_up;		/* a batch was cut short: drop the producer */
	bool		record_failed;	/* an outcome could not be recorded */
	bool		transaction_failed; /* exactly once: the transactional path
									 * failed (relay_transaction.c) */
	bool		more_due;		/* rows may be due that no commit will wake
								 * the worker for: run again at once */
} RelayRun;

extern RelayRun relay_pipeline_run(int shard, const char *ce_source);

/* relay_starter.c: the database manager starts the relay workers */
extern void relay_starter_reconcile(DatabaseSlot *database);

/* relay_slot.c: the worker's process state, for the loop and the pipeline */
extern void relay_attach_slot(int shard, const char *database);
/* room for eventpipe-relay-<database>-<shard> */
#define RELAY_CLIENT_ID_LEN (NAMEDATALEN + 32)
extern void relay_client_id(char *buf, size_t size);
extern bool relay_keep_waiting(void);
extern bool relay_must_leave(void);
extern bool relay_paused(void);
extern bool relay_pause_known(void);
extern bool relay_pause_changed(void);
extern void relay_show_activity(RelayState state, const char *activity);
extern RelayState relay_shown_state(void);
extern void relay_set_error(const char *message);
extern void relay_note_progress(void);
extern void relay_account_batch(OutboxBatch *batch, BatchOutcome *outcome);
extern void relay_account_recovered(uint64 events);
extern uint64 relay_take_lowest_committed_id(void);
extern bool relay_commit_reported(void);

/* relay_worker.c: the worker process */
extern PGDLLEXPORT void eventpipe_relay_main(Datum main_arg);

#endif							/* EVENTPIPE_RELAY_H */
