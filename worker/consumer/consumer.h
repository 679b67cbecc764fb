/*
 * consumer.h
 *		The consumer worker's pieces: its subscription and rules as read from
 *		the database (consumer_catalog.c), the Kafka messages of a batch and
 *		what each one means (consumer_message.c; row changes for mirrors in
 *		mirror_events.c, their targets in mirror_target.c), a batch applied
 *		in one transaction (consumer_apply.c: ledger, handlers, row locks,
 *		metrics, mirrors, dead letters and offsets in consumer_ledger.c,
 *		consumer_handlers.c, consumer_row_locks.c, consumer_metrics.c,
 *		consumer_mirrors.c, consumer_store.c), the librdkafka consumer
 *		(worker/kafka/kafka_consumer.c, kafka_consumer_offsets.c), the
 *		operations asked for from SQL: pause, replay, dead letters to retry
 *		(consumer_control.c), and the main loops of the consumer manager
 *		(consumer_manager.c) and consumer worker (consumer_worker.c).
 */
#ifndef EVENTPIPE_CONSUMER_H
#define EVENTPIPE_CONSUMER_H

#include "postgres.h"

#include <librdkafka/rdkafka.h>

#include "datatype/timestamp.h"
#include "fmgr.h"
#include "nodes/pg_list.h"
#include "utils/jsonb.h"

#include "extension/shmem.h"

#include "payload_fields.h"

/* A subscription's row of eventpipe.subscriptions. */
typedef struct Subscription
{
	char	   *name;
	List	   *topics;			/* of char * */
	char	   *group_id;
	bool		start_latest;	/* start_from = 'latest' */
	int			batch_size;		/* resolved: never 0 */
	char	   *dedup_field;	/* NULL: none */
	bool		paused;			/* eventpipe.pause(): apply nothing, stay out of the group */
	int32		id;				/* its number in the dedup ledger */
	int			workers;		/* how many workers share its partitions */
} Subscription;

/* A metric rule, with the target's names quoted, ready for SQL. */
typedef struct MetricRule
{
	char	   *event_type;
	Oid			target;
	char	   *target_name;	/* schema-qualified, quoted */
	char	   *key_column;		/* quoted; NULL: no single-column primary key */
	char	   *key_type;		/* the key's cast: see key_cast_type() */
	char	   *column;			/* quoted */
	char	   *key_field;
	char	   *value_field;	/* NULL: add 1 */
	Oid			owner;
	char	   *fault;			/* why it cannot be applied now; NULL if it can */
	int			key_slot;		/* key_field's place in ConsumerRules.fields */
	int			value_slot;		/* value_field's; -1 when NULL */
} MetricRule;

typedef struct EventHandler
{
	char	   *event_type;
	Oid			handler;
	Oid			owner;
	char	   *fault;			/* why it cannot be called now; NULL if it can */
} EventHandler;

/* A column of a mirror's target that images may set (mirror_target.c). */
typedef struct MirrorColumn
{
	char	   *name;			/* as the images name it */
	char	   *quoted;
	Oid			type;			/* its base type: what an image's value is read as */
	int32		typmod;
	Oid			array_type;		/* the statements take a column's values as one array of this */
	char	   *array_cast;		/* that array type, schema-qualified */
	char	   *text_cast;		/* a type without an array type of its own (an array type):
								 * its values go as text, cast back with this; NULL for others */
	Oid			input;
	Oid			ioparam;
	Oid			output;
	FmgrInfo	input_function;
	FmgrInfo	output_function;
	int16		typlen;
	bool		typbyval;
	char		typalign;
	char	   *equals;			/* a key column's "OPERATOR(schema.=)"; NULL for others */
} MirrorColumn;

/* A mirror, with its target's columns and primary key as the catalogs say now. */
typedef struct MirrorRule
{
	int64		id;
	char	   *source;
	bool		debezium;		/* format 'debezium'; else 'eventpipe' */
	Oid			target;
	char	   *target_name;	/* schema-qualified, quoted */
	Oid			owner;
	char	   *fault;			/* why it cannot be applied now; NULL if it can */
	int			ncolumns;
	MirrorColumn *columns;
	int			nkeys;
	int		   *keys;			/* the primary key's columns, indexes in columns */
} MirrorRule;

/*
 * One change a message makes to a mirror's target: delete the row of key,
 * or upsert an image (the columns it has, present; the others are left
 * alone, or take their defaults in a new row).  A delete's values hold the
 * key columns only.
 */
typedef struct MirrorChange
{
	int			mirror;			/* index in ConsumerRules.mirrors */
	Datum		key;			/* text: the key columns' values, canonical, as the locks take it */
	bool		delete_row;
	Datum	   *values;			/* by column of the target */
	bool	   *nulls;
	bool	   *present;
} MirrorChange;

/* The payload fields that say which mirror a message concerns: see mirror_events.c. */
typedef enum MirrorField
{
	MIRROR_FIELD_TABLE,			/* eventpipe: "table" */
	MIRROR_FIELD_SCHEMA,		/* Debezium: "source.schema", or in the wrapper's payload */
	MIRROR_FIELD_SOURCE_TABLE,
	MIRROR_FIELD_WRAPPED_SCHEMA,
	MIRROR_FIELD_WRAPPED_TABLE,
	MIRROR_FIELDS
} MirrorField;

typedef struct ConsumerRules
{
	int			nmetrics;
	MetricRule *metrics;
	int			nhandlers;
	EventHandler *handlers;
	int			nmirrors;
	MirrorRule *mirrors;
	int			mirror_slots[MIRROR_FIELDS];	/* -1: not read (no mirror of that format) */
	/* the payload fields read from every message, each once: consumer_message_fields() */
	int			nfields;
	PayloadFieldName *fields;
	int			type_slot;		/* "type" */
	int			dedup_slot;		/* the subscription's dedup_field; -1 when none */
} ConsumerRules;

/*
 * One effect of a message: add value to a metric rule's row keyed by key
 * (its text, as the upserts' key array takes it).
 */
typedef struct MetricEffect
{
	int			rule;			/* index in ConsumerRules.metrics */
	Datum		key;			/* text */
	Datum		value;			/* numeric; (Datum) 0 for the 1 a counting rule adds */
} MetricEffect;

/* What became of a message, for the counters. */
typedef enum MessageFate
{
	MESSAGE_APPLIED,
	MESSAGE_DUPLICATE,
	MESSAGE_UNMATCHED,
	MESSAGE_DEAD
} MessageFate;

/*
 * One message of a batch, from Kafka or a dead letter applied again, and
 * what it means.  Where it came from and its bytes (topic to timestamp_ms)
 * are set by whoever made the batch and live as long as the batch: a Kafka
 * message's point into librdkafka's message, held by kafka_consumer.c
 * until kafka_consumer_release_batch(); a dead letter's are its stored
 * row's, in the caller's memory.  payload, event_type, event_id, effects
 * and handlers live in the apply transaction's memory and are cleared when
 * it ends; fate and error (copied out) remain.
 */
typedef struct ConsumedMessage
{
	const char *topic;			/* a topic's messages share its name's memory */
	int32		partition;
	int64		offset;
	const void *key;			/* NULL: none */
	size_t		key_len;
	const void *value;			/* NULL: none */
	size_t		value_len;
	rd_kafka_headers_t *headers;	/* NULL: none */
	int64		timestamp_ms;	/* -1: unknown (a dead letter does not keep it) */
	int64		dead_letter_id; /* 0: from Kafka; else the dead letter retried */
	bool		went_back;		/* below what the worker had read of its partition */
	PayloadField *fields;		/* ConsumerRules.fields' values; NULL when not valid JSON */
	Jsonb	   *payload;		/* the whole value, only when a handler is called with it */
	char	   *event_type;		/* NULL: none */
	char	   *event_id;		/* the dedup key */
	char	   *error;			/* why it cannot be applied; NULL if it can */
	List	   *effects;		/* of MetricEffect * */
	List	   *handlers;		/* of EventHandler * */
	List	   *mirror_changes; /* of MirrorChange *, in the order they apply */
	MessageFate fate;
} ConsumedMessage;

typedef struct ConsumerBatch
{
	int			count;
	ConsumedMessage *messages;
	bool		retry;			/* dead letters applied again, not Kafka messages */
	int32		subscription_id;	/* the subscription it was read for */
} ConsumerBatch;

/* A replay asked for with eventpipe.replay() (eventpipe.consumer_replays). */
typedef struct ReplayRequest
{
	char	   *topic;
	int32		partition;
	int64		from_offset;
	TimestampTz requested_at;
} ReplayRequest;

/*
 * What SQL asked the worker to do, read before every batch (a pause is the
 * subscription's paused).
 */
typedef struct ConsumerControl
{
	bool		retries_pending;	/* dead letters marked by retry_consumer_dead() */
	List	   *replays;		/* of ReplayRequest * */
} ConsumerControl;

/* What applying a batch found. */
typedef enum ApplyResult
{
	APPLY_DONE,
	APPLY_NO_EXTENSION,
	APPLY_NO_SUBSCRIPTION
} ApplyResult;

/* consumer_message.c */
extern void consumer_message_fields(ConsumerRules *rules, const Subscription *subscription);
extern void consumer_message_interpret(ConsumedMessage *message, const ConsumerRules *rules);
extern Jsonb *consumer_message_headers(const ConsumedMessage *message);
extern char *consumer_header_as_text(const char *bytes, size_t len);
extern Jsonb *consumer_message_metadata(const ConsumedMessage *message);

/* consumer_apply.c: in a transaction of its own */
extern ApplyResult consumer_apply_batch(ConsumerBatch *batch, const char *name,
										bool isolate_failures);

/* consumer_catalog.c: read_subscription runs its own transaction, the others run in the batch's */
extern ApplyResult consumer_read_subscription(const char *name, Subscription *subscription);
extern bool consumer_load_subscription(const char *name, Subscription *subscription);
extern bool consumer_lock_subscription(int32 id);
extern void consumer_load_rules(const char *name, ConsumerRules *rules);

/* consumer_ledger.c: keep_ledger runs its own transaction, the others run in the batch's */
extern void consumer_find_duplicates(ConsumedMessage *messages, int count, int32 ledger_id);
extern void consumer_record_event_ids(ConsumedMessage *messages, int count, int32 ledger_id);
extern TimestampTz consumer_keep_ledger(int retention_s, bool drop_expired);

/* mirror_events.c: in memory */
extern List *mirror_events_of_topic(const ConsumedMessage *message, const ConsumerRules *rules);
extern List *mirror_events_of_table(const ConsumedMessage *message, const ConsumerRules *rules);
extern char *mirror_events_tombstone(ConsumedMessage *message, const ConsumerRules *rules,
									 List *mirrors);
extern char *mirror_events_changes(ConsumedMessage *message, const ConsumerRules *rules,
								   List *mirrors);
extern MirrorChange *mirror_events_copy_change(const MirrorChange *change,
											   const ConsumerRules *rules);

/* mirror_target.c: in the batch's transaction */
extern char *mirror_target_describe(MirrorRule *mirror);

/*
 * consumer_row_locks.c, consumer_handlers.c, consumer_metrics.c,
 * consumer_mirrors.c, consumer_store.c: in the batch's transaction
 */
extern void consumer_lock_rows(ConsumedMessage *messages, int count, const ConsumerRules *rules);
extern void consumer_run_handlers(ConsumedMessage *messages, int count);
extern void consumer_apply_mirrors(ConsumedMessage *messages, int count,
								   const ConsumerRules *rules);
extern void consumer_upsert_metrics(ConsumedMessage *messages, int count,
									const ConsumerRules *rules);
extern void consumer_store_dead_letters(ConsumerBatch *batch, const char *name);
extern void consumer_store_offsets(ConsumerBatch *batch, const char *name);
/* also in the transaction that reads the stored offsets at an assignment */
extern void consumer_store_offset_as_given(const char *name, const char *topic, int32 partition,
										   int64 next);

/* consumer_control.c: read_control, carry_out_replays and load_retries run their own transaction */
extern void consumer_read_control(const char *name, ConsumerControl *control);
extern void consumer_carry_out_replays(const char *name, List *replays);
extern void consumer_load_retries(const char *name, int limit, ConsumerBatch *batch);
extern void consumer_settle_retries(ConsumerBatch *batch);
extern void consumer_release_retries(ConsumerBatch *batch);

/* kafka_consumer_offsets.c: in a transaction of its own */
extern void kafka_consumer_read_offsets(rd_kafka_t *rk, const char *name,
										rd_kafka_topic_partition_list_t *partitions,
										bool start_latest);

/* kafka_consumer.c */
extern bool kafka_consumer_ensure(const Subscription *subscription, int worker,
								  const char *client_id, char *errbuf, size_t errbuf_size);
extern void kafka_consumer_stop(bool leave_group);
extern void kafka_consumer_set_broker_trouble(bool trouble);
extern void kafka_consumer_poll_batch(ConsumerBatch *batch, int limit, int wait_ms);
extern void kafka_consumer_release_batch(void);
extern void kafka_consumer_commit(ConsumerBatch *batch);
extern bool kafka_consumer_assignment_failed(void);
extern bool kafka_consumer_take_error(char *buf, size_t size);
extern void kafka_consumer_publish_watermarks(const Subscription *subscription, bool ask_broker);
extern bool kafka_consumer_query_watermarks(const char *topic, int32 partition, int64 *low,
											int64 *high);

/* consumer_manager.c, consumer_worker.c */
extern void consumer_manager_reconcile(DatabaseSlot *database);
extern PGDLLEXPORT void eventpipe_consumer_main(Datum main_arg);

#endif							/* EVENTPIPE_CONSUMER_H */
