/*
 * kafka_producer.c
 *		The relay's librdkafka producer: built from the GUCs, rebuilt when
 *		they change or after a fatal error, and used to send a batch of
 *		outbox events, then wait for every delivery report.
 *
 * The producer is idempotent (acks=all, no reordering or duplication by
 * librdkafka's own retries) and its messages never time out: while the
 * broker is away they wait, in order, and a broker outage of any length
 * ends in delivery, not in failures that could reorder a key's events.
 * What does fail is refused for good (too large, forbidden topic) or after
 * librdkafka's own retries (unknown topic): the outbox records it.
 *
 * Delivery reports are served by rd_kafka_poll (or rd_kafka_flush), in
 * this process's main thread: while a batch is awaited
 * (kafka_producer_await_batch), while a full queue is waited on, and when
 * idle (kafka_producer_poll).  Each message's opaque is its OutboxEvent, and
 * the report is recorded there.  The rd_kafka_flush when the producer is
 * dropped serves only the reports of purged messages, which are discarded.
 * Keys are partitioned with murmur2, as Kafka's Java clients do, so
 * co-partitioned topics line up.
 *
 * With eventpipe.relay_exactly_once the producer is transactional (its
 * transactional.id set once by the worker): its messages then time out
 * with its transactions (librdkafka refuses a message.timeout.ms above
 * transaction.timeout.ms), and relay_transaction.c runs the transactions.
 */
#include "postgres.h"

#include "nodes/pg_list.h"
#include "utils/datetime.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "extension/eventpipe.h"
#include "extension/kafka_options.h"
#include "kafka_client.h"
#include "kafka_statistics.h"
#include "worker/relay/relay.h"

static rd_kafka_t *producer = NULL;
static char *producer_settings = NULL;	/* what the producer was built from */
static bool discard_reports = false;
static char *transactional_id = NULL;	/* NULL: not transactional */
static uint64 generation = 0;	/* producers built so far */
static int	message_limit = KAFKA_MESSAGE_MAX_BYTES_CEILING;	/* the producer's
																 * message.max.bytes */

/* How often a wait for delivery reports looks up from librdkafka. */
#define WAIT_CHECK_MS 100

static void
delivery_report(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	OutboxEvent *event = (OutboxEvent *) msg->_private;

	/* the batches of a dropped producer may be gone already */
	if (discard_reports || event == NULL)
		return;
	event->batch->awaiting--;
	/* purged or cut short by a fatal error: not an attempt, the row stays due */
	if (msg->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
		msg->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT ||
		msg->err == RD_KAFKA_RESP_ERR__FATAL)
		return;
	event->reported = true;
	event->error = msg->err;
}

static rd_kafka_t *
create_producer(const char *bootstrap_servers, const char *client_id,
				char *errbuf, size_t errbuf_size)
{
	/* acks, idempotence, the timeout: the DBA may not change them (kafka_guarantees.c) */
	static const char *const properties[][2] = {
		{"enable.idempotence", "true"},
		{"acks", "all"},
		{"partitioner", "murmur2_random"},
		{"linger.ms", "1"},
		{"batch.num.messages", "10000"},
		{"queue.buffering.max.messages", "2000000"},
		{"queue.buffering.max.kbytes", "2097151"},
		{"message.timeout.ms", "0"},
	};
	/* without message.timeout.ms, which transactions bound */
	size_t		nproperties = lengthof(properties) - (transactional_id ? 1 : 0);
	rd_kafka_conf_t *conf = kafka_client_conf(bootstrap_servers, client_id, properties,
											  nproperties, errbuf, errbuf_size);

	if (conf == NULL)
		return NULL;
	if (transactional_id != NULL &&
		!eventpipe_kafka_conf_set(conf, "transactional.id", transactional_id, errbuf, errbuf_size))
	{
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	rd_kafka_conf_set_dr_msg_cb(conf, delivery_report);
	return kafka_client_new(RD_KAFKA_PRODUCER, conf, client_id, errbuf, errbuf_size);
}

/*
 * Make sure a producer built from these settings exists.  Returns false, with
 * the reason in errbuf, if librdkafka refuses the configuration.
 */
static char *
settings_of(const char *bootstrap_servers, const char *client_id)
{
	char	   *options_version = eventpipe_dba_kafka_options_version();
	char	   *settings = psprintf("%s\n%s\n%s", bootstrap_servers, options_version, client_id);

	/* checked every WAIT_CHECK_MS while a batch waits, in a long-lived context */
	pfree(options_version);
	return settings;
}

static int
configured_message_limit(rd_kafka_t *rk)
{
	char		value[32];
	size_t		size = sizeof(value);

	if (rd_kafka_conf_get(rd_kafka_conf(rk), "message.max.bytes", value, &size) != RD_KAFKA_CONF_OK)
		return KAFKA_MESSAGE_MAX_BYTES_CEILING;
	return atoi(value);
}

/* Is there a producer, built from exactly these settings? */
bool
kafka_producer_built_from(const char *bootstrap_servers, const char *client_id)
{
	char	   *settings;
	bool		same;

	if (producer == NULL)
		return false;
	settings = settings_of(bootstrap_servers, client_id);
	same = strcmp(settings, producer_settings) == 0;
	pfree(settings);
	return same;
}

bool
kafka_producer_ensure(const char *bootstrap_servers, const char *client_id,
					  char *errbuf, size_t errbuf_size)
{
	char	   *settings;

	if (kafka_producer_built_from(bootstrap_servers, client_id))
		return true;
	kafka_producer_destroy();
	settings = settings_of(bootstrap_servers, client_id);
	producer = create_producer(bootstrap_servers, client_id, errbuf, errbuf_size);
	if (producer == NULL)
	{
		pfree(settings);
		return false;
	}
	producer_settings = MemoryContextStrdup(TopMemoryContext, settings);
	pfree(settings);
	generation++;
	message_limit = configured_message_limit(producer);
	return true;
}

/*
 * The longest message the producer takes, its message.max.bytes: a message
 * longer than that librdkafka refuses on the spot.  Without a producer, the
 * most librdkafka takes at all.
 */
int
kafka_producer_message_limit(void)
{
	return producer == NULL ? KAFKA_MESSAGE_MAX_BYTES_CEILING : message_limit;
}

/*
 * Drop the producer.  Messages still queued are purged, not waited for:
 * their outbox rows are still there and will be sent again.
 */
void
kafka_producer_destroy(void)
{
	if (producer == NULL)
		return;
	discard_reports = true;
	rd_kafka_purge(producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
	rd_kafka_flush(producer, 1000);
	rd_kafka_destroy(producer);
	producer = NULL;
	kafka_statistics_forget();
	discard_reports = false;
	if (producer_settings)
		pfree(producer_settings);
	producer_settings = NULL;
}

/*
 * Make the producers built from now on transactional, with this id (kept
 * for the process's life), or not (NULL).
 */
void
kafka_producer_set_transactional_id(const char *id)
{
	transactional_id = id ? MemoryContextStrdup(TopMemoryContext, id) : NULL;
}

/* Which producer is the current one: a new number for each built. */
uint64
kafka_producer_generation(void)
{
	return producer == NULL ? 0 : generation;
}

/* The producer, for the transactional calls; NULL if none is built. */
rd_kafka_t *
kafka_producer_handle(void)
{
	return producer;
}

/* Serve librdkafka's queued events (logs, errors) while idle. */
void
kafka_producer_poll(void)
{
	if (producer != NULL)
		rd_kafka_poll(producer, 0);
	kafka_log_drain();
}

static void
add_header(rd_kafka_headers_t *headers, const char *name, const char *value)
{
	rd_kafka_header_add(headers, name, -1, value, -1);
}

static void
add_user_header(const char *name, int name_len, const char *value, int value_len,
				void *arg)
{
	rd_kafka_header_add((rd_kafka_headers_t *) arg, name, name_len, value, value_len);
}

/*
 * RFC 3339 in UTC, microsecond precision, as CloudEvents' ce_time wants.
 * Events relayed one after another mostly fall in the same second, so the
 * date and time of day are formatted once per second and reused; only the
 * microseconds are written for each event.
 */
static void
format_ce_time(TimestampTz t, char *buf, size_t size)
{
	static TimestampTz second_formatted = DT_NOBEGIN;
	static char second_text[32];	/* "YYYY-MM-DDTHH:MM:SS" of it */
	static int	len;			/* of second_text */
	int			usec;
	int			i;

	Assert(size >= sizeof(second_text) + sizeof(".000000Z"));
	if (TIMESTAMP_NOT_FINITE(t))
	{
		strlcpy(buf, "1970-01-01T00:00:00Z", size);
		return;
	}
	usec = (int) (t % USECS_PER_SEC);
	if (usec < 0)
		usec += USECS_PER_SEC;
	if (t - usec != second_formatted)
	{
		struct pg_tm tm;
		fsec_t		fsec;

		if (timestamp2tm(t - usec, NULL, &tm, &fsec, NULL, NULL) != 0)
		{
			strlcpy(buf, "1970-01-01T00:00:00Z", size);
			return;
		}
		len = snprintf(second_text, sizeof(second_text), "%04d-%02d-%02dT%02d:%02d:%02d",
					   tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
		second_formatted = t - usec;
	}
	memcpy(buf, second_text, len);
	buf[len] = '.';
	for (i = 6; i >= 1; i--)
	{
		buf[len + i] = '0' + usec % 10;
		usec /= 10;
	}
	buf[len + 7] = 'Z';
	buf[len + 8] = '\0';
}

static rd_kafka_headers_t *
build_headers(OutboxEvent *event, const char *source)
{
	rd_kafka_headers_t *headers = rd_kafka_headers_new(8);
	char		ce_time[64];

	format_ce_time(event->created_at, ce_time, sizeof(ce_time));
	add_header(headers, "ce_specversion", "1.0");
	add_header(headers, "ce_id", event->event_id);
	add_header(headers, "ce_type", event->event_type);
	add_header(headers, "ce_source", source);
	add_header(headers, "ce_time", ce_time);
	add_header(headers, "content-type", "application/json");
	if (event->headers != NULL)
		eventpipe_foreach_header(event->headers, add_user_header, headers);
	return headers;
}

/*
 * Failures that no retry can cure: the event goes straight to the dead
 * letters.  A topic the broker refuses is refused for every event of it.
 * Size and record errors condemn the event only when librdkafka refused it
 * on the spot: from the broker they come for a whole message set, innocent
 * events included, so those are retried like anything else (an unknown
 * topic, say, that may yet be created) until eventpipe.relay_max_attempts.
 */
bool
kafka_error_is_permanent(const OutboxEvent *event)
{
	switch (event->error)
	{
		case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
		case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR__INVALID_ARG:
			return true;
		case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
		case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
		case RD_KAFKA_RESP_ERR_INVALID_RECORD:
			return event->refused_on_the_spot;
		default:
			return false;
	}
}

static bool
same_topic_and_key(const OutboxEvent *a, const OutboxEvent *b)
{
	if (strcmp(a->topic, b->topic) != 0)
		return false;
	if (a->key == NULL || b->key == NULL)
		return false;			/* keyless events have no order to keep */
	return a->key_len == b->key_len && memcmp(a->key, b->key, a->key_len) == 0;
}

/*
 * A copy of the event's topic and key, in the current memory context: it
 * outlives the event's batch.
 */
static OutboxEvent *
topic_and_key_of(const OutboxEvent *event)
{
	OutboxEvent *copy = palloc0(sizeof(OutboxEvent));

	copy->topic = pstrdup(event->topic);
	if (event->key != NULL)
	{
		copy->key = pnstrdup(event->key, event->key_len);
		copy->key_len = event->key_len;
	}
	return copy;
}

/*
 * Hand one event to librdkafka, waiting for room in its queue if needed.
 * Returns false if the relay must give up on the batch.
 */
static bool
produce_event(OutboxEvent *event, const char *source, bool (*keep_waiting) (void))
{
	rd_kafka_headers_t *headers = build_headers(event, source);

	for (;;)
	{
		rd_kafka_resp_err_t err;

		err = rd_kafka_producev(producer,
								RD_KAFKA_V_TOPIC(event->topic),
								RD_KAFKA_V_KEY(event->key, event->key ? event->key_len : 0),
								RD_KAFKA_V_VALUE(event->payload, event->payload_len),
								RD_KAFKA_V_HEADERS(headers),
								RD_KAFKA_V_OPAQUE(event),
								RD_KAFKA_V_END);
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			event->batch->awaiting++;
			event->queued = true;
			return true;
		}
		if (err == RD_KAFKA_RESP_ERR__FATAL)
		{
			/* the producer is unusable: not the event's fault */
			rd_kafka_headers_destroy(headers);
			return false;
		}
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
		{
			/* refused before queueing: the headers are still ours */
			rd_kafka_headers_destroy(headers);
			event->reported = true;
			event->refused_on_the_spot = true;
			event->error = err;
			return true;
		}
		rd_kafka_poll(producer, 10);
		if (!keep_waiting())
		{
			rd_kafka_headers_destroy(headers);
			return false;
		}
	}
}

/*
 * Hand the batch's events to librdkafka in order, without waiting for their
 * delivery (kafka_producer_await_batch does).  An event refused on the spot
 * (by librdkafka, or already by the claim: outbox_row.c) is added to
 * *refused (allocated in the current memory context), and holds back the
 * later events of its topic and key in this batch and in the batches sent
 * after it with the same list (they stay due, unsent).  Returns false when
 * the relay must give up on the batch: a fatal producer error, or
 * keep_waiting said no while librdkafka's queue was full.
 */
bool
kafka_producer_produce_batch(OutboxBatch *batch, const char *source, List **refused,
							 bool (*keep_waiting) (void))
{
	int			i;

	Assert(producer != NULL);
	for (i = 0; i < batch->count; i++)
	{
		OutboxEvent *event = &batch->events[i];
		ListCell   *lc;

		event->batch = batch;
		foreach(lc, *refused)
		{
			if (same_topic_and_key((OutboxEvent *) lfirst(lc), event))
			{
				event->held = true;
				break;
			}
		}
		if (event->held)
			continue;
		if (!event->refused_on_the_spot && !produce_event(event, source, keep_waiting))
			return false;
		if (event->reported)
			*refused = lappend(*refused, topic_and_key_of(event));
	}
	return true;
}

/*
 * Wait until every event sent of the batch has its delivery report (later
 * batches may still be in flight).  keep_waiting is called every
 * WAIT_CHECK_MS while waiting; when it says no (the worker must stop, or the
 * Kafka settings changed), or after a fatal producer error, false is
 * returned at once: the caller records what has its report and drops the
 * producer; events without a report stay in the outbox and are sent again.
 *
 * send_now: no more messages follow these for now, so what linger.ms holds
 * back to fill a request with them is sent at once (rd_kafka_flush, which
 * treats linger.ms as passed while it waits for every queued message, and
 * serves the reports).  Should reports still be missing once librdkafka
 * holds no message, they cannot come from flushing: the wait goes on
 * polling, as for any other batch, and so still sees a fatal error or a
 * reason to stop.
 */
bool
kafka_producer_await_batch(OutboxBatch *batch, bool send_now, bool (*keep_waiting) (void))
{
	TimestampTz checked = GetCurrentTimestamp();

	while (batch->awaiting > 0)
	{
		TimestampTz now;

		if (send_now)
			send_now = rd_kafka_flush(producer, WAIT_CHECK_MS) != RD_KAFKA_RESP_ERR_NO_ERROR;
		else
			rd_kafka_poll(producer, WAIT_CHECK_MS);
		if (batch->awaiting == 0)
			break;
		now = GetCurrentTimestamp();
		if (!TimestampDifferenceExceeds(checked, now, WAIT_CHECK_MS))
			continue;
		checked = now;
		kafka_log_drain();
		if (rd_kafka_fatal_error(producer, NULL, 0) != RD_KAFKA_RESP_ERR_NO_ERROR ||
			!keep_waiting())
			return false;
	}
	return true;
}

/*
 * After a fatal error (the idempotent producer lost its guarantees) the
 * producer must be rebuilt: report the reason and drop it.
 */
bool
kafka_producer_failed_fatally(char *errbuf, size_t errbuf_size)
{
	if (producer == NULL || rd_kafka_fatal_error(producer, errbuf, errbuf_size) == RD_KAFKA_RESP_ERR_NO_ERROR)
		return false;
	kafka_producer_destroy();
	return true;
}
