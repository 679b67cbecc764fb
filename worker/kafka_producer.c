/*
 * kafka_producer.c
 *		The relay's librdkafka producer: built from the GUCs, rebuilt when
 *		they change or after a fatal error, and used to send one batch of
 *		outbox events and wait for every delivery report.
 *
 * The producer is idempotent (acks=all, no reordering or duplication by
 * librdkafka's own retries).  Delivery reports run inside rd_kafka_flush in
 * this process's main thread; each message's opaque is its OutboxEvent, and
 * the report is recorded there.  Keys are partitioned with murmur2, as
 * Kafka's Java clients do, so co-partitioned topics line up.
 */
#include "postgres.h"

#include "utils/datetime.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "../extension/eventpipe.h"
#include "../extension/kafka_options.h"
#include "relay.h"

static rd_kafka_t *producer = NULL;
static char *producer_settings = NULL;	/* what the producer was built from */
static int	reports_pending = 0;
static bool discard_reports = false;

static void
delivery_report(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	OutboxEvent *event = (OutboxEvent *) msg->_private;

	if (discard_reports || event == NULL)
		return;
	event->reported = true;
	event->error = msg->err;
	reports_pending--;
}

static bool
set_property(rd_kafka_conf_t *conf, const char *name, const char *value,
			 char *errbuf, size_t errbuf_size)
{
	char		rderr[512];

	if (rd_kafka_conf_set(conf, name, value, rderr, sizeof(rderr)) == RD_KAFKA_CONF_OK)
		return true;
	snprintf(errbuf, errbuf_size, "librdkafka rejected property \"%s\": %s", name, rderr);
	return false;
}

static rd_kafka_t *
create_producer(const char *bootstrap_servers, const char *options,
				const char *client_id, char *errbuf, size_t errbuf_size)
{
	static const char *const defaults[][2] = {
		{"enable.idempotence", "true"},
		{"acks", "all"},
		{"partitioner", "murmur2_random"},
		{"linger.ms", "1"},
		{"batch.num.messages", "10000"},
		{"queue.buffering.max.messages", "2000000"},
		{"queue.buffering.max.kbytes", "2097151"},
		{"message.timeout.ms", "30000"},
		{"reconnect.backoff.ms", "100"},
		{"reconnect.backoff.max.ms", "2000"},
		{"log.queue", "true"},
	};
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk;
	size_t		i;
	bool		ok;

	ok = set_property(conf, "bootstrap.servers", bootstrap_servers, errbuf, errbuf_size) &&
		set_property(conf, "client.id", client_id, errbuf, errbuf_size);
	for (i = 0; ok && i < lengthof(defaults); i++)
		ok = set_property(conf, defaults[i][0], defaults[i][1], errbuf, errbuf_size);
	/* the DBA's options come last and win */
	ok = ok && eventpipe_apply_kafka_options(conf, options, errbuf, errbuf_size);
	if (!ok)
	{
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	rd_kafka_conf_set_dr_msg_cb(conf, delivery_report);
	rd_kafka_conf_set_log_cb(conf, kafka_log_callback);
	rd_kafka_conf_set_error_cb(conf, kafka_error_callback);

	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errbuf, errbuf_size);
	if (rk == NULL)
	{
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	rd_kafka_set_log_queue(rk, NULL);
	return rk;
}

/*
 * Make sure a producer built from these settings exists.  Returns false, with
 * the reason in errbuf, if librdkafka refuses the configuration.
 */
bool
kafka_producer_ensure(const char *bootstrap_servers, const char *options,
					  const char *client_id, char *errbuf, size_t errbuf_size)
{
	char	   *settings = psprintf("%s\n%s\n%s", bootstrap_servers, options, client_id);

	if (producer != NULL && strcmp(settings, producer_settings) == 0)
	{
		pfree(settings);
		return true;
	}
	kafka_producer_destroy();
	producer = create_producer(bootstrap_servers, options, client_id, errbuf, errbuf_size);
	if (producer == NULL)
	{
		pfree(settings);
		return false;
	}
	producer_settings = MemoryContextStrdup(TopMemoryContext, settings);
	pfree(settings);
	return true;
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
	discard_reports = false;
	reports_pending = 0;
	if (producer_settings)
		pfree(producer_settings);
	producer_settings = NULL;
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

/* RFC 3339 in UTC, microsecond precision, as CloudEvents' ce_time wants. */
static void
format_ce_time(TimestampTz t, char *buf, size_t size)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (timestamp2tm(t, NULL, &tm, &fsec, NULL, NULL) != 0)
	{
		strlcpy(buf, "1970-01-01T00:00:00Z", size);
		return;
	}
	snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ",
			 tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
			 (int) fsec);
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

/* Hand one event to librdkafka, waiting for room in its queue if needed. */
static void
produce_event(OutboxEvent *event, const char *source, void (*check_interrupts) (void))
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
			reports_pending++;
			return;
		}
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
		{
			/* refused before queueing: the headers are still ours */
			rd_kafka_headers_destroy(headers);
			event->reported = true;
			event->error = err;
			return;
		}
		rd_kafka_poll(producer, 10);
		check_interrupts();
	}
}

/*
 * Send every event of the batch and wait until each has its delivery report
 * (success, or failure after message.timeout.ms).  Returns how many Kafka
 * acknowledged.  check_interrupts may leave the process; the outbox rows of
 * anything unacknowledged stay and are sent again.
 */
int
kafka_producer_send_batch(OutboxBatch *batch, const char *source,
						  void (*check_interrupts) (void))
{
	int			i;
	int			delivered = 0;

	Assert(producer != NULL);
	reports_pending = 0;
	for (i = 0; i < batch->count; i++)
		produce_event(&batch->events[i], source, check_interrupts);

	while (reports_pending > 0)
	{
		rd_kafka_flush(producer, 100);
		kafka_log_drain();
		check_interrupts();
	}

	for (i = 0; i < batch->count; i++)
		if (batch->events[i].reported &&
			batch->events[i].error == RD_KAFKA_RESP_ERR_NO_ERROR)
			delivered++;
	return delivered;
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
