/*
 * kafka_log.c
 *		Carries librdkafka's log lines and error events to the server log.
 *
 * librdkafka may call these callbacks from its own threads (before the log
 * queue is set up, and for some errors), where no PostgreSQL function may
 * run: they only copy the text into a fixed ring under a pthread mutex.  The
 * worker's main loop drains the ring with ereport.  Lines that arrive while
 * the ring is full are counted and reported as dropped.
 *
 * Two kinds of lines are also kept apart for the worker to look at: the
 * last error event (kafka_log_take_broker_error), and the first line in
 * which librdkafka says why the open transaction failed
 * (kafka_log_take_transaction_error): for some failures, such as a topic
 * the broker refuses to add to a transaction, librdkafka 2.0.2 gives the
 * reason nowhere else.
 */
#include "postgres.h"

#include <pthread.h>

#include "kafka_log.h"

#define KAFKA_LOG_RING 64
#define KAFKA_LOG_LINE 512

typedef struct KafkaLogLine
{
	int			level;			/* syslog level, as librdkafka gives it */
	char		text[KAFKA_LOG_LINE];
} KafkaLogLine;

static pthread_mutex_t ring_mutex = PTHREAD_MUTEX_INITIALIZER;
static KafkaLogLine ring[KAFKA_LOG_RING];
static int	ring_start = 0;
static int	ring_count = 0;
static int	ring_dropped = 0;
static char broker_error[KAFKA_LOG_LINE];
static char transaction_error[KAFKA_LOG_LINE];

/* librdkafka's facility for the failures of the transactional producer */
#define TRANSACTION_ERROR_FACILITY "TXNERR"

static void
ring_push(int level, const char *facility, const char *message)
{
	pthread_mutex_lock(&ring_mutex);
	if (ring_count == KAFKA_LOG_RING)
		ring_dropped++;
	else
	{
		KafkaLogLine *line = &ring[(ring_start + ring_count) % KAFKA_LOG_RING];

		line->level = level;
		snprintf(line->text, sizeof(line->text), "%s: %s", facility, message);
		ring_count++;
	}
	pthread_mutex_unlock(&ring_mutex);
}

void
kafka_log_callback(const rd_kafka_t *rk, int level, const char *facility,
				   const char *message)
{
	ring_push(level, facility, message);
	if (strcmp(facility, TRANSACTION_ERROR_FACILITY) == 0)
	{
		/* without the thread's name: "[thrd:main]: " */
		const char *end_of_thread = strstr(message, "]: ");

		if (strncmp(message, "[thrd:", 6) == 0 && end_of_thread != NULL)
			message = end_of_thread + 3;
		/* the first says why; those that follow are its consequences */
		pthread_mutex_lock(&ring_mutex);
		if (transaction_error[0] == '\0')
			snprintf(transaction_error, sizeof(transaction_error), "%s", message);
		pthread_mutex_unlock(&ring_mutex);
	}
}

void
kafka_error_callback(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	ring_push(3, rd_kafka_err2name(err), reason);
	pthread_mutex_lock(&ring_mutex);
	snprintf(broker_error, sizeof(broker_error), "%s", reason);
	pthread_mutex_unlock(&ring_mutex);
}

/* Copy kept into buf, if it holds a line, and empty it. */
static bool
take_kept_line(char *kept, char *buf, size_t size)
{
	bool		found;

	pthread_mutex_lock(&ring_mutex);
	found = kept[0] != '\0';
	if (found)
		strlcpy(buf, kept, size);
	kept[0] = '\0';
	pthread_mutex_unlock(&ring_mutex);
	return found;
}

/* The last error event since the previous call, if any. */
bool
kafka_log_take_broker_error(char *buf, size_t size)
{
	return take_kept_line(broker_error, buf, size);
}

/* The first transaction failure librdkafka logged since the previous call, if any. */
bool
kafka_log_take_transaction_error(char *buf, size_t size)
{
	return take_kept_line(transaction_error, buf, size);
}

/* Write the queued lines to the server log; librdkafka debug chatter only at DEBUG1. */
void
kafka_log_drain(void)
{
	for (;;)
	{
		KafkaLogLine line;
		int			dropped;
		bool		have;

		pthread_mutex_lock(&ring_mutex);
		have = ring_count > 0;
		if (have)
		{
			line = ring[ring_start];
			ring_start = (ring_start + 1) % KAFKA_LOG_RING;
			ring_count--;
		}
		dropped = ring_dropped;
		ring_dropped = 0;
		pthread_mutex_unlock(&ring_mutex);

		if (dropped > 0)
			ereport(LOG, (errmsg("librdkafka: %d log lines dropped", dropped)));
		if (!have)
			break;
		ereport(line.level <= 4 ? LOG : DEBUG1,
				(errmsg("librdkafka: %s", line.text)));
	}
}
