/*
 * kafka_consumer.c
 *		The consumer worker's librdkafka high-level consumer: built from the
 *		GUCs and the subscription, rebuilt when either changes, polled one
 *		message at a time (rd_kafka_consumer_poll, never the batch API), and
 *		told the offsets to commit once the database has committed a batch.
 *		It owns librdkafka's messages: the rest of the consumer reads a
 *		batch as ConsumedMessages pointing into them, until it releases them.
 *
 * Offsets live in the database (auto-commit and auto-store are off): the
 * rebalance callback, which runs inside rd_kafka_consumer_poll in this
 * process's main thread, assigns each partition at the offset
 * kafka_consumer_offsets.c reads, guarded so that no ERROR unwinds through
 * librdkafka.  A paused subscription's consumer subscribes to nothing and
 * only asks for high watermarks.  Why: docs/design.md, "How the consumer
 * reads Kafka".
 *
 * The high watermarks of the assigned partitions are those librdkafka
 * learns from its fetches (rd_kafka_get_watermark_offsets, no request);
 * they go to the partition slots in shared memory after every poll, and so
 * does which worker of the subscription each partition is assigned to.
 *
 * The workers of one subscription are members of one consumer group; each
 * is its own client, whose client.id the worker names (consumer_worker.c).
 */
#include "postgres.h"

#include "nodes/pg_list.h"
#include "lib/stringinfo.h"
#include "utils/memutils.h"

#include "extension/guc.h"
#include "extension/shmem.h"
#include "extension/kafka_options.h"
#include "kafka_client.h"
#include "kafka_statistics.h"
#include "worker/consumer/consumer.h"
#include "kafka_log.h"
#include "worker/worker_loop.h"

/* After the first message, wait this long for more before the batch is applied. */
#define FOLLOW_WAIT_MS 10
/*
 * A batch holds its messages until it is applied: past this many bytes of
 * keys and values it takes no more (a batch of large messages would hold
 * batch_size of them, gigabytes); the last message taken may pass it.
 */
#define CONSUMER_BATCH_MAX_BYTES (32 * 1024 * 1024)
/* Longest wait for a broker's answer to a metadata or watermark request. */
#define BROKER_REQUEST_MS 2000

static rd_kafka_t *consumer = NULL;
static char *consumer_settings = NULL;	/* what it was built from */
static char *subscription_name = NULL;
static int	worker_number = 0;
static bool start_latest = false;
static bool rebalanced = false;
static bool in_rebalance = false;
static bool closing = false;	/* in rd_kafka_consumer_close(): assign nothing */

/*
 * How far this worker has read each partition of its assignment: the offset
 * after its last message polled, or where the assignment started it (NULL:
 * no assignment).  A message below it means librdkafka went back there by
 * itself: the topic was made again, or the broker lost records, and its
 * auto.offset.reset started the partition over at its first record.
 */
static rd_kafka_topic_partition_list_t *read_positions = NULL;
static bool broker_in_trouble = false;
static bool assignment_failed = false;
static char poll_error[512];

/*
 * The messages of the last batch, until released: librdkafka's
 * rd_kafka_destroy() waits for every message to be destroyed first, so a
 * worker leaving in the middle of a batch (FATAL) must not forget them.
 */
static rd_kafka_message_t **held = NULL;
static int	held_count = 0;
static size_t held_bytes = 0;	/* their keys' and values' */
static int	held_capacity = 0;

/* Show the partitions as held by this worker, or as given up. */
static void
show_held(const rd_kafka_topic_partition_list_t *partitions, bool held)
{
	int			i;

	for (i = 0; i < partitions->cnt; i++)
		eventpipe_set_consumer_partition_holder(subscription_name, partitions->elems[i].topic,
												partitions->elems[i].partition, worker_number,
												held);
}

static void
forget_read_positions(void)
{
	if (read_positions != NULL)
		rd_kafka_topic_partition_list_destroy(read_positions);
	read_positions = NULL;
}

/*
 * Note how far message's partition has been read; true (with a WARNING)
 * when it lies below what was read before.
 */
static bool
read_went_back(const rd_kafka_message_t *message)
{
	const char *topic = rd_kafka_topic_name(message->rkt);
	rd_kafka_topic_partition_t *position;
	bool		back;

	if (read_positions == NULL)
		read_positions = rd_kafka_topic_partition_list_new(4);
	position = rd_kafka_topic_partition_list_find(read_positions, topic, message->partition);
	if (position == NULL)
		position = rd_kafka_topic_partition_list_add(read_positions, topic, message->partition);
	back = position->offset >= 0 && message->offset < position->offset;
	if (back)
		ereport(WARNING,
				(errmsg("eventpipe consumer: subscription \"%s\": partition %d of topic \"%s\" went back from offset " INT64_FORMAT " to " INT64_FORMAT "; applying from there",
						subscription_name, (int) message->partition, topic,
						(int64) position->offset, (int64) message->offset),
				 errdetail("The topic was made again, or the broker lost records.")));
	position->offset = message->offset + 1;
	return back;
}

static void
rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
		  rd_kafka_topic_partition_list_t *partitions, void *opaque)
{
	rebalanced = true;
	forget_read_positions();
	if (closing)
	{
		/* the group may still hand partitions over while the worker leaves it */
		show_held(partitions, false);
		rd_kafka_assign(rk, NULL);
		return;
	}
	show_held(partitions, err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS);
	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
	{
		bool		read;

		in_rebalance = true;
		WORKER_GUARD(read, kafka_consumer_read_offsets(rk, subscription_name, partitions,
													   start_latest));
		in_rebalance = false;
		if (!read)
		{
			/* not assigned: the worker rebuilds the consumer after a pause */
			show_held(partitions, false);
			assignment_failed = true;
			return;
		}
		read_positions = rd_kafka_topic_partition_list_copy(partitions);
		rd_kafka_assign(rk, partitions);
	}
	else
		rd_kafka_assign(rk, NULL);
}

static rd_kafka_t *
create_consumer(const Subscription *subscription, const char *client_id, char *errbuf,
				size_t errbuf_size)
{
	/* group.id, auto.offset.reset, enable.partition.eof: the DBA may not change them */
	const char *const properties[][2] = {
		{"group.id", subscription->group_id},
		/*
		 * Only for an offset that is out of range: records deleted past it
		 * (retention) while the subscription was away, or a topic made
		 * again.  start_from chose where each partition starts at its first
		 * assignment, and that start is stored; from then on the first
		 * record still there is the next one not yet applied.  "latest"
		 * here skipped every record still on the partition.
		 */
		{"auto.offset.reset", "earliest"},
		{"enable.auto.commit", "false"},
		{"enable.auto.offset.store", "false"},
		{"enable.partition.eof", "false"},
		{"session.timeout.ms", "10000"},
		/* notice a subscribed topic created after the subscription soon */
		{"topic.metadata.refresh.interval.ms", "10000"},
	};
	rd_kafka_conf_t *conf = kafka_client_conf(eventpipe_bootstrap_servers, client_id, properties,
											  lengthof(properties), errbuf, errbuf_size);
	rd_kafka_t *rk;

	if (conf == NULL)
		return NULL;
	rd_kafka_conf_set_rebalance_cb(conf, rebalance);
	rk = kafka_client_new(RD_KAFKA_CONSUMER, conf, client_id, errbuf, errbuf_size);
	if (rk == NULL)
		return NULL;
	/* logs, errors and rebalances are all served by rd_kafka_consumer_poll */
	rd_kafka_poll_set_consumer(rk);
	return rk;
}

/*
 * What the running consumer was built from; any change rebuilds it.  The
 * subscription's id is in it: one dropped and made again under its name
 * has no offsets yet, and its partitions must be assigned again to read
 * where it starts rather than where the old one was.
 */
static char *
settings_of(const Subscription *subscription)
{
	StringInfoData settings;
	ListCell   *lc;

	initStringInfo(&settings);
	appendStringInfo(&settings, "%s\n%s\n%s\n%s\n%d\n%d\n%d", eventpipe_bootstrap_servers,
					 eventpipe_dba_kafka_options_version(), subscription->group_id,
					 subscription->name, subscription->id, subscription->start_latest,
					 subscription->paused);
	foreach(lc, subscription->topics)
		appendStringInfo(&settings, "\n%s", (char *) lfirst(lc));
	return settings.data;
}

static bool
subscribe_topics(const Subscription *subscription, char *errbuf, size_t errbuf_size)
{
	rd_kafka_topic_partition_list_t *topics;
	rd_kafka_resp_err_t err;
	ListCell   *lc;

	topics = rd_kafka_topic_partition_list_new(list_length(subscription->topics));
	foreach(lc, subscription->topics)
		rd_kafka_topic_partition_list_add(topics, (char *) lfirst(lc), RD_KAFKA_PARTITION_UA);
	err = rd_kafka_subscribe(consumer, topics);
	rd_kafka_topic_partition_list_destroy(topics);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		return true;
	snprintf(errbuf, errbuf_size, "could not subscribe to the topics: %s", rd_kafka_err2str(err));
	return false;
}

/*
 * Make sure a consumer built from the current settings and this
 * subscription runs, as its worker number worker, Kafka client client_id.
 * Returns false, with the reason in errbuf, if librdkafka refuses the
 * configuration.
 */
bool
kafka_consumer_ensure(const Subscription *subscription, int worker, const char *client_id,
					  char *errbuf, size_t errbuf_size)
{
	char	   *settings = settings_of(subscription);

	if (consumer != NULL && strcmp(settings, consumer_settings) == 0)
	{
		pfree(settings);
		return true;
	}
	kafka_consumer_stop(true);
	if (subscription_name)
		pfree(subscription_name);
	subscription_name = MemoryContextStrdup(TopMemoryContext, subscription->name);
	worker_number = worker;
	start_latest = subscription->start_latest;
	assignment_failed = false;
	consumer = create_consumer(subscription, client_id, errbuf, errbuf_size);
	if (consumer != NULL && !subscription->paused &&
		!subscribe_topics(subscription, errbuf, errbuf_size))
		kafka_consumer_stop(false);
	if (consumer == NULL)
	{
		pfree(settings);
		return false;
	}
	consumer_settings = MemoryContextStrdup(TopMemoryContext, settings);
	pfree(settings);
	return true;
}

/*
 * The broker reports errors: leaving the group would wait for it, so
 * kafka_consumer_stop() does not.
 */
void
kafka_consumer_set_broker_trouble(bool trouble)
{
	broker_in_trouble = trouble;
}

/*
 * Drop the consumer.  With leave_group (and no broker trouble), leave the
 * group first so its partitions go to another member at once; without, the
 * group notices after session.timeout.ms.
 */
void
kafka_consumer_stop(bool leave_group)
{
	kafka_consumer_release_batch();
	if (consumer == NULL)
		return;
	if (in_rebalance)
	{
		/*
		 * The process is leaving (FATAL) from inside the rebalance callback,
		 * that is inside rd_kafka_consumer_poll: librdkafka must not be
		 * destroyed from there.  The handle goes with the process.
		 */
		consumer = NULL;
		return;
	}
	leave_group = leave_group && !broker_in_trouble;
	if (leave_group)
	{
		closing = true;
		rd_kafka_consumer_close(consumer);
		closing = false;
	}
	rd_kafka_destroy_flags(consumer, leave_group ? 0 : RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
	consumer = NULL;
	forget_read_positions();
	eventpipe_release_consumer_partitions(subscription_name, worker_number);
	kafka_statistics_forget();
	if (consumer_settings)
		pfree(consumer_settings);
	consumer_settings = NULL;
	kafka_log_drain();
}

/* Destroy the messages of the last batch. */
void
kafka_consumer_release_batch(void)
{
	while (held_count > 0)
		rd_kafka_message_destroy(held[--held_count]);
	held_bytes = 0;
}

/* What the consumer reads of a Kafka message: its fields, pointing into it. */
static void
fill_message(ConsumedMessage *message, rd_kafka_message_t *raw)
{
	rd_kafka_headers_t *headers;

	message->topic = rd_kafka_topic_name(raw->rkt);
	message->partition = raw->partition;
	message->offset = raw->offset;
	message->key = raw->key;
	message->key_len = raw->key_len;
	message->value = raw->payload;
	message->value_len = raw->len;
	if (rd_kafka_message_headers(raw, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR)
		message->headers = headers;
	message->timestamp_ms = rd_kafka_message_timestamp(raw, NULL);
}

/*
 * Poll up to limit messages (and CONSUMER_BATCH_MAX_BYTES of them): the
 * first within wait_ms, the next ones while they keep coming.  Messages of
 * a failed poll are skipped (the error is kept for
 * kafka_consumer_take_error); messages polled before a rebalance are
 * dropped.  Fills batch (its messages in the current memory context
 * when there are any), whose bytes and headers point into librdkafka's
 * messages, held until kafka_consumer_release_batch().
 */
void
kafka_consumer_poll_batch(ConsumerBatch *batch, int limit, int wait_ms)
{
	int			i;

	kafka_consumer_release_batch();
	if (held_capacity < limit)
	{
		if (held != NULL)
			pfree(held);
		held = MemoryContextAlloc(TopMemoryContext, sizeof(rd_kafka_message_t *) * limit);
		held_capacity = limit;
	}
	rebalanced = false;
	while (held_count < limit && held_bytes < CONSUMER_BATCH_MAX_BYTES &&
		   consumer != NULL && !assignment_failed)
	{
		rd_kafka_message_t *message;

		message = rd_kafka_consumer_poll(consumer, held_count == 0 ? wait_ms : FOLLOW_WAIT_MS);
		if (rebalanced)
		{
			kafka_consumer_release_batch();
			rebalanced = false;
		}
		if (message == NULL)
			break;
		if (message->err != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			snprintf(poll_error, sizeof(poll_error), "%s", rd_kafka_message_errstr(message));
			rd_kafka_message_destroy(message);
			break;
		}
		held[held_count++] = message;
		held_bytes += message->len + message->key_len;
	}
	kafka_log_drain();
	memset(batch, 0, sizeof(*batch));
	batch->count = held_count;
	if (held_count == 0)
		return;
	batch->messages = palloc0(sizeof(ConsumedMessage) * held_count);
	for (i = 0; i < held_count; i++)
	{
		fill_message(&batch->messages[i], held[i]);
		batch->messages[i].went_back = read_went_back(held[i]);
	}
}

/* Did the last assignment fail to read its offsets (the consumer must be rebuilt)? */
bool
kafka_consumer_assignment_failed(void)
{
	return assignment_failed;
}

/* The last poll error since the previous call, if any. */
bool
kafka_consumer_take_error(char *buf, size_t size)
{
	bool		found = poll_error[0] != '\0';

	if (found)
		strlcpy(buf, poll_error, size);
	poll_error[0] = '\0';
	return found;
}

/*
 * Tell Kafka the offsets the database has just committed (asynchronously:
 * the database's offsets are the ones that count; Kafka's serve tools).
 */
void
kafka_consumer_commit(ConsumerBatch *batch)
{
	rd_kafka_topic_partition_list_t *offsets;
	int			i;

	if (consumer == NULL || batch->count == 0)
		return;
	offsets = rd_kafka_topic_partition_list_new(4);
	for (i = 0; i < batch->count; i++)
	{
		const ConsumedMessage *message = &batch->messages[i];
		rd_kafka_topic_partition_t *entry;

		entry = rd_kafka_topic_partition_list_find(offsets, message->topic, message->partition);
		if (entry == NULL)
			entry = rd_kafka_topic_partition_list_add(offsets, message->topic,
													  message->partition);
		if (message->offset + 1 > entry->offset)
			entry->offset = message->offset + 1;
	}
	rd_kafka_commit(consumer, offsets, 1);
	rd_kafka_topic_partition_list_destroy(offsets);
}

/*
 * A partition's high watermark to its slot (taken if it has none, so that
 * an assigned partition shows up before its first message).  An unknown
 * one (a partition not fetched yet since the consumer was built) leaves the
 * last known in place.
 */
static void
publish_watermark(const char *subscription, const char *topic, int32 partition, int64 high)
{
	ConsumerPartitionSlot *slot = eventpipe_consumer_partition_slot(subscription, topic, partition);

	if (slot != NULL && high >= 0)
		pg_atomic_write_u64(&slot->high_watermark, (uint64) high);
}

/* The partitions of a topic, from the brokers' metadata; -1 if unknown. */
static int
partitions_of(const char *topic)
{
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(consumer, topic, NULL);
	const struct rd_kafka_metadata *metadata;
	int			count = -1;

	if (rkt == NULL)
		return -1;
	if (rd_kafka_metadata(consumer, 0, rkt, &metadata, BROKER_REQUEST_MS) == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		if (metadata->topic_cnt == 1 && metadata->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
			count = metadata->topics[0].partition_cnt;
		rd_kafka_metadata_destroy(metadata);
	}
	rd_kafka_topic_destroy(rkt);
	return count;
}

/*
 * Put the high watermarks in the subscription's partition slots: those of
 * the assigned partitions as librdkafka last fetched them; with ask_broker
 * (a paused consumer, which fetches nothing), those of every partition of
 * the subscription's topics, asked of the brokers (blocking, a few seconds
 * at most when they do not answer).
 */
void
kafka_consumer_publish_watermarks(const Subscription *subscription, bool ask_broker)
{
	rd_kafka_topic_partition_list_t *assigned;
	int			i;

	if (consumer == NULL)
		return;
	if (ask_broker)
	{
		ListCell   *lc;

		foreach(lc, subscription->topics)
		{
			const char *topic = (const char *) lfirst(lc);
			int			count = partitions_of(topic);

			for (i = 0; i < count; i++)
			{
				int64		low;
				int64		high;

				if (kafka_consumer_query_watermarks(topic, i, &low, &high))
					publish_watermark(subscription->name, topic, i, high);
			}
		}
		kafka_log_drain();
		return;
	}
	if (rd_kafka_assignment(consumer, &assigned) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return;
	for (i = 0; i < assigned->cnt; i++)
	{
		int64		low;
		int64		high;

		if (rd_kafka_get_watermark_offsets(consumer, assigned->elems[i].topic,
										   assigned->elems[i].partition, &low, &high) ==
			RD_KAFKA_RESP_ERR_NO_ERROR)
			publish_watermark(subscription->name, assigned->elems[i].topic,
							  assigned->elems[i].partition, high);
	}
	rd_kafka_topic_partition_list_destroy(assigned);
}

/*
 * The earliest offset Kafka retains for a partition and its high watermark,
 * asked of the partition's leader; false if it does not answer.
 */
bool
kafka_consumer_query_watermarks(const char *topic, int32 partition, int64 *low, int64 *high)
{
	if (consumer == NULL)
		return false;
	return rd_kafka_query_watermark_offsets(consumer, topic, partition, low, high,
											BROKER_REQUEST_MS) == RD_KAFKA_RESP_ERR_NO_ERROR;
}
