/*
 * relay_progress.c
 *		The exactly-once relay's progress topic: in each Kafka transaction,
 *		next to a batch's events, a record of which outbox rows it carries
 *		(relay_progress_add); after a crash, the last committed record of
 *		each relay of this database, read back with read_committed
 *		(relay_progress_read).
 *
 * The topic, RELAY_PROGRESS_TOPIC, is compacted: a record's key names its
 * relay (server, database, shard), so the topic keeps about one record per
 * relay however long it runs.  Records go to partition 0 whatever the
 * partitioner (which the DBA may change), and partition 0 is read last: a
 * topic made beforehand with more partitions may hold an older record of
 * a relay elsewhere, which one in partition 0 outranks.  A relay commits a
 * transaction only once the rows of its previous one are deleted from the
 * outbox (and that delete is on disk: every claim flushes the WAL before
 * sending), so the last record of each key is the only one whose rows may
 * still be in the outbox.
 *
 * A record's value is text: a header line, then one line per event, its
 * outbox id and its event id; a row is taken for the one recorded only if
 * both match, so ids a sequence hands out again after a TRUNCATE ... RESTART
 * IDENTITY are never mistaken for committed ones.
 *
 * The reader is a consumer of its own, without a group, closed after the
 * read.  It reads with read_committed up to the partition's high
 * watermark as of the read's start (read_past_first_high_watermark): it
 * waits for the transactions under way then, of any relay, which Kafka
 * ends within transaction.timeout.ms.
 */
#include "postgres.h"

#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "extension/kafka_options.h"
#include "relay.h"
#include "relay_transaction.h"
#include "worker/kafka/kafka_client.h"

#define PROGRESS_HEADER "eventpipe-relay-progress 1\n"

/* How long Kafka may take to answer the topic's creation or metadata. */
#define PROGRESS_REQUEST_MS 30000

/* How often a read looks up from librdkafka. */
#define PROGRESS_POLL_MS 100

/* A record's line at its longest: an outbox id, a space, a UUID, a newline. */
#define PROGRESS_LINE_MAX (MAXINT8LEN + 1 + UUID_LEN * 2 + 4 + 1)

/* What a record holds besides its lines, at most: its header and its key. */
#define PROGRESS_RECORD_OVERHEAD (sizeof(PROGRESS_HEADER) + 512)

/*
 * Create the topic unless it exists: compacted, one partition (the
 * brokers' default replication), small segments, so that compaction keeps
 * it to a few records per relay.  false, with the reason, if Kafka said no.
 */
bool
relay_progress_create_topic(rd_kafka_t *rk, char *errbuf, size_t errbuf_size)
{
	static const char *const configs[][2] = {
		{"cleanup.policy", "compact"},
		{"segment.bytes", "8388608"},
		{"segment.ms", "600000"},
		{"max.message.bytes", "2097152"},
	};
	rd_kafka_NewTopic_t *topic;
	rd_kafka_queue_t *queue = rd_kafka_queue_new(rk);
	rd_kafka_event_t *event = NULL;
	const rd_kafka_topic_result_t **results;
	size_t		nresults = 0;
	rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
	size_t		i;
	bool		ok;

	topic = rd_kafka_NewTopic_new(RELAY_PROGRESS_TOPIC, 1, -1, errbuf, errbuf_size);
	if (topic == NULL)
	{
		rd_kafka_queue_destroy(queue);
		return false;
	}
	for (i = 0; i < lengthof(configs); i++)
		rd_kafka_NewTopic_set_config(topic, configs[i][0], configs[i][1]);
	rd_kafka_CreateTopics(rk, &topic, 1, NULL, queue);
	event = rd_kafka_queue_poll(queue, PROGRESS_REQUEST_MS);
	if (event == NULL)
	{
		strlcpy(errbuf, "no answer from Kafka to the topic's creation", errbuf_size);
		ok = false;
	}
	else if (rd_kafka_event_error(event) != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		strlcpy(errbuf, rd_kafka_event_error_string(event), errbuf_size);
		ok = false;
	}
	else
	{
		results = rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(event),
													   &nresults);
		if (nresults > 0)
			err = rd_kafka_topic_result_error(results[0]);
		ok = err == RD_KAFKA_RESP_ERR_NO_ERROR || err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS;
		if (!ok)
			snprintf(errbuf, errbuf_size, "%s",
					 rd_kafka_topic_result_error_string(results[0]) ?
					 rd_kafka_topic_result_error_string(results[0]) : rd_kafka_err2str(err));
	}
	if (event != NULL)
		rd_kafka_event_destroy(event);
	rd_kafka_NewTopic_destroy(topic);
	rd_kafka_queue_destroy(queue);
	return ok;
}

/*
 * The most events whose record fits a message of message_limit bytes (the
 * producer's message.max.bytes, which the DBA may lower): librdkafka
 * refuses a larger one on the spot, and its batch would be tried again,
 * and refused, for ever.
 */
int
relay_progress_max_events(size_t message_limit)
{
	if (message_limit <= PROGRESS_RECORD_OVERHEAD + PROGRESS_LINE_MAX)
		return 1;
	return (int) Min((message_limit - PROGRESS_RECORD_OVERHEAD) / PROGRESS_LINE_MAX, INT_MAX);
}

/*
 * Add to the open transaction the record of the batch's events handed to
 * librdkafka, under key.  false if librdkafka refused it (the transaction
 * must then be aborted).
 */
bool
relay_progress_add(rd_kafka_t *rk, const char *key, OutboxBatch *batch,
				   char *errbuf, size_t errbuf_size)
{
	StringInfoData value;
	rd_kafka_resp_err_t err;
	int			i;

	initStringInfo(&value);
	appendStringInfoString(&value, PROGRESS_HEADER);
	for (i = 0; i < batch->count; i++)
		if (batch->events[i].queued)
			appendStringInfo(&value, INT64_FORMAT " %s\n",
							 batch->events[i].id, batch->events[i].event_id);
	for (;;)
	{
		err = rd_kafka_producev(rk,
								RD_KAFKA_V_TOPIC(RELAY_PROGRESS_TOPIC),
								RD_KAFKA_V_PARTITION(0),
								RD_KAFKA_V_KEY(key, strlen(key)),
								RD_KAFKA_V_VALUE(value.data, value.len),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
								RD_KAFKA_V_END);
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
			break;
		rd_kafka_poll(rk, 10);
	}
	pfree(value.data);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		snprintf(errbuf, errbuf_size, "the progress record was refused: %s",
				 rd_kafka_err2str(err));
		return false;
	}
	return true;
}

/* A record's rows, from its value; an unreadable value gives none. */
static RelayProgress *
parse_record(const char *key, const char *value, size_t len)
{
	RelayProgress *progress = palloc0(sizeof(RelayProgress));
	char	   *text = pnstrdup(value, len);
	char	   *line;
	char	   *next;
	int			capacity = 64;

	progress->key = pstrdup(key);
	progress->ids = palloc(sizeof(int64) * capacity);
	progress->event_ids = palloc(sizeof(char *) * capacity);
	if (strncmp(text, PROGRESS_HEADER, strlen(PROGRESS_HEADER)) != 0)
		return progress;
	for (line = text + strlen(PROGRESS_HEADER); *line != '\0'; line = next)
	{
		int64		id;
		char		event_id[37];

		next = strchr(line, '\n');
		if (next == NULL)
			break;
		*next++ = '\0';
		if (sscanf(line, INT64_FORMAT " %36s", &id, event_id) != 2)
			continue;
		if (progress->count == capacity)
		{
			capacity *= 2;
			progress->ids = repalloc(progress->ids, sizeof(int64) * capacity);
			progress->event_ids = repalloc(progress->event_ids, sizeof(char *) * capacity);
		}
		progress->ids[progress->count] = id;
		progress->event_ids[progress->count] = pstrdup(event_id);
		progress->count++;
	}
	pfree(text);
	return progress;
}

/* Keep the record as its key's latest in *records. */
static void
keep_latest(List **records, const rd_kafka_message_t *msg)
{
	char	   *key = pnstrdup(msg->key, msg->key_len);
	RelayProgress *progress = parse_record(key, msg->payload ? msg->payload : "", msg->len);
	ListCell   *lc;

	foreach(lc, *records)
	{
		RelayProgress *kept = lfirst(lc);

		if (strcmp(kept->key, key) == 0)
		{
			lfirst(lc) = progress;
			return;
		}
	}
	*records = lappend(*records, progress);
}

static rd_kafka_t *
new_reader(const char *bootstrap_servers, const char *client_id, char *errbuf, size_t errbuf_size)
{
	/* isolation.level, enable.partition.eof: the DBA may not change them */
	static const char *const properties[][2] = {
		{"isolation.level", "read_committed"},
		{"enable.partition.eof", "true"},
		{"enable.auto.commit", "false"},
		{"statistics.interval.ms", "0"},
	};
	rd_kafka_conf_t *conf = kafka_client_conf(bootstrap_servers, client_id, properties,
											  lengthof(properties), errbuf, errbuf_size);

	/* no statistics file: the worker's is its producer's */
	return conf == NULL ? NULL : kafka_client_new(RD_KAFKA_CONSUMER, conf, NULL, errbuf, errbuf_size);
}

/* The topic's partition count, or -1 with the reason. */
static int
partition_count(rd_kafka_t *rk, rd_kafka_topic_t *rkt, char *errbuf, size_t errbuf_size)
{
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, PROGRESS_REQUEST_MS);
	int			count = -1;

	if (err == RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1)
		err = md->topics[0].err;
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1)
		count = md->topics[0].partition_cnt;
	else
		snprintf(errbuf, errbuf_size, "cannot read the metadata of topic \"%s\": %s",
				 RELAY_PROGRESS_TOPIC, rd_kafka_err2str(err));
	if (md != NULL)
		rd_kafka_metadata_destroy(md);
	return count;
}

/*
 * Whether a read_committed read has read every record written before it
 * began, now that it is at position: past a message it was handed, or at
 * an end it reached.  The target is the partition's high watermark as
 * librdkafka knew it when the read was first handed a message or an end,
 * from a fetch reply after this relay's init_transactions() ended its own
 * transactions.  The end a read_committed read reaches is the last stable
 * offset, which any relay's transaction under way holds below the records
 * committed after it began: every relay of every database and server
 * shares this partition.  A message handed over, or an end, at the target
 * or past it means every transaction with records below it ended, and all
 * of them were read.  Only that first high watermark counts, so that other
 * relays' later transactions cannot keep the read going; a message counts
 * as well as an end, since a partition that other relays keep writing may
 * never show an end.  Until librdkafka knows the mark (a failed fetch
 * reply leaves it unknown), the read is not over.
 */
static bool
read_past_first_high_watermark(rd_kafka_t *rk, int partition, int64 position, int64 *target)
{
	int64_t		low;
	int64_t		high;

	if (*target < 0)
	{
		if (rd_kafka_get_watermark_offsets(rk, RELAY_PROGRESS_TOPIC, partition, &low, &high) !=
			RD_KAFKA_RESP_ERR_NO_ERROR || high < 0)
			return false;
		*target = high;
	}
	return position >= *target;
}

/*
 * Read one partition to its end, keeping the records whose key begins with
 * prefix.  The end is the high watermark as of the read's start, once
 * every transaction under way below it ended (read_past_first_high_watermark).
 */
static bool
read_partition(rd_kafka_t *rk, rd_kafka_topic_t *rkt, int partition, const char *prefix,
			   List **records, bool (*keep_waiting) (void), char *errbuf, size_t errbuf_size)
{
	size_t		prefix_len = strlen(prefix);
	int64		target = -1;
	int64		end = -1;		/* the last end reached, if any */

	if (rd_kafka_consume_start(rkt, partition, RD_KAFKA_OFFSET_BEGINNING) != 0)
	{
		snprintf(errbuf, errbuf_size, "cannot read topic \"%s\": %s", RELAY_PROGRESS_TOPIC,
				 rd_kafka_err2str(rd_kafka_last_error()));
		return false;
	}
	for (;;)
	{
		rd_kafka_message_t *msg = rd_kafka_consume(rkt, partition, PROGRESS_POLL_MS);
		rd_kafka_resp_err_t err = msg ? msg->err : RD_KAFKA_RESP_ERR_NO_ERROR;
		int64		position = end;

		kafka_log_drain();
		if (msg != NULL && err == RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			if (msg->key != NULL && msg->key_len >= prefix_len &&
				memcmp(msg->key, prefix, prefix_len) == 0)
				keep_latest(records, msg);
			position = msg->offset + 1;
		}
		else if (msg != NULL && err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
			position = end = msg->offset;
		if (msg != NULL)
			rd_kafka_message_destroy(msg);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
		{
			snprintf(errbuf, errbuf_size, "cannot read topic \"%s\": %s", RELAY_PROGRESS_TOPIC,
					 rd_kafka_err2str(err));
			break;
		}
		if (position >= 0 && read_past_first_high_watermark(rk, partition, position, &target))
		{
			rd_kafka_consume_stop(rkt, partition);
			return true;
		}
		if ((msg == NULL || err == RD_KAFKA_RESP_ERR__PARTITION_EOF) && !keep_waiting())
		{
			snprintf(errbuf, errbuf_size, "stopped reading topic \"%s\"", RELAY_PROGRESS_TOPIC);
			break;
		}
	}
	rd_kafka_consume_stop(rkt, partition);
	return false;
}

/*
 * The last committed record of each relay whose key begins with prefix (a
 * List of RelayProgress, in the current memory context); false, with the
 * reason, if the topic could not be read to its end.  keep_waiting is
 * asked every PROGRESS_POLL_MS while Kafka has nothing new.
 */
bool
relay_progress_read(const char *bootstrap_servers, const char *client_id, const char *prefix,
					List **records, bool (*keep_waiting) (void),
					char *errbuf, size_t errbuf_size)
{
	rd_kafka_t *rk = new_reader(bootstrap_servers, client_id, errbuf, errbuf_size);
	rd_kafka_topic_t *rkt;
	int			partitions;
	int			p;
	bool		ok = true;

	*records = NIL;
	if (rk == NULL)
		return false;
	rkt = rd_kafka_topic_new(rk, RELAY_PROGRESS_TOPIC, NULL);
	partitions = partition_count(rk, rkt, errbuf, errbuf_size);
	if (partitions < 0)
		ok = false;
	for (p = partitions - 1; ok && p >= 0; p--)
		ok = read_partition(rk, rkt, p, prefix, records, keep_waiting, errbuf, errbuf_size);
	rd_kafka_topic_destroy(rkt);
	rd_kafka_destroy(rk);
	kafka_log_drain();
	return ok;
}
