/*
 * relay_isolation.c
 *		The exactly-once relay's answer to a topic the broker refuses to add
 *		to a transaction (no Write ACL, an internal topic): find that topic
 *		by sending the batch's topics one per transaction, and have its
 *		events dead-lettered, as the relay without transactions does.
 *
 * Kafka refuses the whole transaction then, and librdkafka 2.0.2 purges
 * all its messages without an error of their own (kafka_transaction.c):
 * nothing says which topic was refused.  So after such a refusal the
 * following transactions each carry the events of one topic only, that of
 * the first event of their batch (which keeps every key's order: a key
 * belongs to one topic), until the batches have moved past the refused
 * one.  A transaction of one topic that is refused condemns that topic,
 * provided the progress topic, whose record every transaction carries,
 * is known to be writable: the previous transaction committed.  If it did
 * not, the next transaction carries the progress record alone to find
 * out; while that one is refused, the progress topic is the one to blame
 * and nothing is dead-lettered.
 *
 * relay_transaction.c tells this file how each transaction ended; the
 * pipeline's batches come here, through relay_txn_begin(), to have the
 * events kept out of the transaction marked held (sent by a later one).
 */
#include "postgres.h"

#include "relay.h"
#include "relay_transaction.h"

/* Batches that begin at or below this outbox id go one topic at a time; 0: none. */
static int64 isolating_up_to = 0;

/* The next transaction carries the progress record alone. */
static bool probe_next = false;

/* The previous transaction committed: the progress topic took its record. */
static bool last_committed = false;

/* Hold every event of the batch that is not of topic (NULL: every event). */
static void
hold_all_but(OutboxBatch *batch, const char *topic)
{
	int			i;

	for (i = 0; i < batch->count; i++)
		if (topic == NULL || strcmp(batch->events[i].topic, topic) != 0)
			batch->events[i].held = true;
}

/* Mark held what the next transaction must not carry. */
void
relay_isolation_hold(OutboxBatch *batch)
{
	if (probe_next)
		hold_all_but(batch, NULL);
	else if (isolating_up_to > 0 && batch->count > 0 && batch->events[0].id <= isolating_up_to)
		hold_all_but(batch, batch->events[0].topic);
	else
		isolating_up_to = 0;
}

void
relay_isolation_committed(void)
{
	last_committed = true;
	probe_next = false;
}

/* The transaction failed otherwise: the progress topic is no longer known to be writable. */
void
relay_isolation_failed(void)
{
	last_committed = false;
}

/* The topic of the events the transaction carried; NULL if none, or several. */
static const char *
only_topic(OutboxBatch *batch, bool *several)
{
	const char *topic = NULL;
	int			i;

	*several = false;
	for (i = 0; i < batch->count; i++)
	{
		OutboxEvent *event = &batch->events[i];

		if (!event->queued)
			continue;
		if (topic == NULL)
			topic = event->topic;
		else if (strcmp(topic, event->topic) != 0)
		{
			*several = true;
			return NULL;
		}
	}
	return topic;
}

/* The events the refused transaction carried fail with the refusal: they are dead-lettered. */
static void
condemn(OutboxBatch *batch, const KafkaTxnResult *refusal)
{
	int			i;

	for (i = 0; i < batch->count; i++)
	{
		OutboxEvent *event = &batch->events[i];

		if (event->queued && !event->reported)
		{
			event->reported = true;
			event->refused_in_transaction = true;
			event->error = refusal->code;
		}
	}
}

static void
say(const char *message)
{
	relay_set_error(message);
	ereport(LOG, (errmsg("eventpipe relay: %s", message)));
}

/*
 * Kafka refused the transaction of the batch because of one of its topics
 * (refusal: the code, and librdkafka's reason), and no event has an error
 * of its own.  Decide what comes next: condemn the events it carried, if
 * they were of one topic and the progress topic is writable; else send the
 * batch's topics one at a time, and make sure of the progress topic.
 */
void
relay_isolation_refused(OutboxBatch *batch, const KafkaTxnResult *refusal)
{
	char		message[EVENTPIPE_ERROR_LEN];
	bool		several;
	const char *topic = only_topic(batch, &several);

	if (batch->count > 0)
		isolating_up_to = Max(isolating_up_to, batch->events[batch->count - 1].id);
	if (topic != NULL && last_committed)
	{
		condemn(batch, refusal);
		snprintf(message, sizeof(message),
				 "topic \"%s\" refused in a transaction: %s; its events are dead-lettered",
				 topic, refusal->message);
	}
	else if (topic != NULL)
	{
		probe_next = true;
		snprintf(message, sizeof(message),
				 "topic \"%s\" or \"%s\" refused in a transaction: %s; checking \"%s\" alone first",
				 topic, RELAY_PROGRESS_TOPIC, refusal->message, RELAY_PROGRESS_TOPIC);
	}
	else if (several)
		snprintf(message, sizeof(message),
				 "a topic of the batch was refused in a transaction: %s; sending its topics one "
				 "per transaction to find which",
				 refusal->message);
	else
	{
		/* the transaction carried the progress record alone */
		probe_next = true;
		snprintf(message, sizeof(message),
				 "topic \"%s\" refused in a transaction: %s; the relay's Kafka principal must be "
				 "allowed to write it; nothing is sent until then",
				 RELAY_PROGRESS_TOPIC, refusal->message);
	}
	last_committed = false;
	say(message);
}
