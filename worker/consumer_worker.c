/*
 * consumer_worker.c
 *		A consumer worker's main loop: poll a batch of its subscription's
 *		Kafka messages, apply it in one transaction (consumer_apply.c), then
 *		commit its offsets to Kafka; prune the dedup ledger now and then; say
 *		what it is doing in consumer_stats() and its process title.
 *
 * Started by the consumer manager, one per subscription, connected to
 * eventpipe.database; the subscription's name comes in bgw_extra.  It
 * leaves when its subscription is gone, the extension is dropped, its
 * database is being dropped or is no longer eventpipe.database, or on
 * SIGTERM.  A batch that fails even when isolating failures is not lost: the
 * consumer is rebuilt and, on its next assignment, resumes from the offsets
 * in the database after a back-off.  A broker outage only makes polls come
 * back empty.
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/ps_status.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "../extension/eventpipe.h"
#include "consumer.h"
#include "kafka_log.h"
#include "worker_loop.h"

/* Wait for the first message of a batch at most this long (then look around). */
#define POLL_WAIT_MS 200
/* Back-off after a failed batch: doubles from the first to the last. */
#define BACKOFF_FIRST_MS 500
#define BACKOFF_LAST_MS 10000
/* The state says "waiting for broker" this long after a broker error. */
#define BROKER_ERROR_SHOWN_MS 5000
/* The dedup ledger is pruned this often, this many rows per transaction. */
#define PRUNE_INTERVAL_MS 10000
#define PRUNE_ROWS 10000

static char subscription_name[EVENTPIPE_SUBSCRIPTION_LEN];
static char who[EVENTPIPE_SUBSCRIPTION_LEN + 64];
static ConsumerSlot *slot;
static bool subscription_gone = false;
static int	failures_in_a_row = 0;
static TimestampTz last_broker_error = 0;
static TimestampTz last_prune = 0;

static void
record_error(const char *message)
{
	eventpipe_set_consumer_error(slot, message);
}

bool
consumer_worker_run_guarded(void (*step) (void *), void *arg)
{
	return worker_run_guarded(step, arg, who, record_error);
}

static void
consumer_exit(int code, Datum arg)
{
	/* a dropped database cannot wait for a goodbye to the group */
	kafka_consumer_stop(!eventpipe_database_is_being_dropped(MyDatabaseId));
	eventpipe_release_consumer_slot(slot, subscription_gone);
}

static void
show_activity(ConsumerState state, const char *activity)
{
	eventpipe_set_consumer_state(slot, state);
	set_ps_display(activity);
}

static long
backoff_ms(void)
{
	long		ms = BACKOFF_FIRST_MS;
	int			i;

	for (i = 1; i < failures_in_a_row && ms < BACKOFF_LAST_MS; i++)
		ms *= 2;
	return Min(ms, BACKOFF_LAST_MS);
}

/* A failed step: pause, then start over from the database's offsets. */
static long
fail_and_back_off(void)
{
	kafka_consumer_stop(true);
	failures_in_a_row++;
	show_activity(CONSUMER_BACKING_OFF, "backing off after an error");
	return backoff_ms();
}

/* Broker and poll errors go to last_error; returns whether there were any. */
static bool
note_kafka_errors(void)
{
	char		error[512];
	bool		found = false;

	if (kafka_log_take_broker_error(error, sizeof(error)))
	{
		record_error(error);
		found = true;
	}
	if (kafka_consumer_take_error(error, sizeof(error)))
	{
		record_error(error);
		found = true;
	}
	if (found)
		last_broker_error = GetCurrentTimestamp();
	return found;
}

typedef struct ReadStep
{
	Subscription *subscription;
	ApplyResult result;
} ReadStep;

static void
read_step(void *arg)
{
	ReadStep   *step = (ReadStep *) arg;

	step->result = consumer_read_subscription(subscription_name, step->subscription);
}

typedef struct ApplyStep
{
	ConsumerBatch *batch;
	bool		isolate_failures;
	ApplyResult result;
} ApplyStep;

static void
apply_step(void *arg)
{
	ApplyStep  *step = (ApplyStep *) arg;

	step->result = consumer_apply_batch(step->batch, subscription_name, step->isolate_failures);
}

static void
prune_step(void *arg)
{
	int64	   *pruned = (int64 *) arg;

	*pruned = consumer_prune_ledger(subscription_name, eventpipe_dedup_retention, PRUNE_ROWS);
}

/* Forget ledger rows past eventpipe.dedup_retention, a bounded batch at a time. */
static void
prune_ledger_now_and_then(void)
{
	TimestampTz now = GetCurrentTimestamp();
	int64		pruned = PRUNE_ROWS;
	int64		total = 0;

	if (!TimestampDifferenceExceeds(last_prune, now, PRUNE_INTERVAL_MS))
		return;
	last_prune = now;
	set_ps_display("pruning the dedup ledger");
	while (pruned == PRUNE_ROWS && consumer_worker_run_guarded(prune_step, &pruned))
	{
		total += pruned;
		worker_check_interrupts();
	}
	if (total > 0)
		elog(DEBUG1, "%s: pruned %lld dedup ledger rows", who, (long long) total);
}

static void
account_batch(ConsumerBatch *batch)
{
	uint64		counts[MESSAGE_DEAD + 1] = {0};
	const char *first_error = NULL;
	int			i;

	for (i = 0; i < batch->count; i++)
	{
		counts[batch->messages[i].fate]++;
		if (batch->messages[i].fate == MESSAGE_DEAD && first_error == NULL)
			first_error = batch->messages[i].error;
	}
	pg_atomic_fetch_add_u64(&slot->events_applied, counts[MESSAGE_APPLIED]);
	pg_atomic_fetch_add_u64(&slot->duplicates, counts[MESSAGE_DUPLICATE]);
	pg_atomic_fetch_add_u64(&slot->unmatched, counts[MESSAGE_UNMATCHED]);
	pg_atomic_fetch_add_u64(&slot->events_dead, counts[MESSAGE_DEAD]);
	pg_atomic_fetch_add_u64(&slot->batches, 1);
	if (first_error != NULL)
	{
		/* the whole error is in consumer_dead_letters; the log gets its start */
		char	   *message = psprintf("%llu messages dead-lettered, the first: %.*s",
									   (unsigned long long) counts[MESSAGE_DEAD],
									   pg_mbcliplen(first_error, strlen(first_error), EVENTPIPE_ERROR_LEN),
									   first_error);

		record_error(message);
		ereport(LOG, (errmsg("%s: %s", who, message)));
	}
}

/*
 * Apply the batch: at once, else isolating the failures.  Returns whether it
 * is in the database.
 */
static bool
apply_batch(ConsumerBatch *batch)
{
	ApplyStep	step = {batch, false, APPLY_DONE};

	if (!consumer_worker_run_guarded(apply_step, &step))
	{
		step.isolate_failures = true;
		if (!consumer_worker_run_guarded(apply_step, &step))
			return false;
	}
	if (step.result == APPLY_NO_SUBSCRIPTION)
	{
		subscription_gone = true;
		worker_leave("its subscription is gone");
	}
	if (step.result == APPLY_NO_EXTENSION)
		worker_leave("extension eventpipe is not installed or is being dropped");
	return true;
}

/* One turn of the loop; returns how long to sleep before the next (0: none). */
static long
consumer_step(void)
{
	Subscription subscription;
	ReadStep	read = {&subscription, APPLY_DONE};
	ConsumerBatch batch;
	rd_kafka_message_t **raw;
	char		errbuf[512];
	bool		applied;
	int			i;
	TimestampTz step_started_at;
	TimestampTz polled_at;
	bool		broker_trouble;

	if (eventpipe_bootstrap_servers[0] == '\0')
	{
		kafka_consumer_stop(true);
		show_activity(CONSUMER_NOT_CONFIGURED, "waiting: eventpipe.bootstrap_servers is not set");
		return 1000;
	}
	if (!consumer_worker_run_guarded(read_step, &read))
		return fail_and_back_off();
	if (read.result == APPLY_NO_SUBSCRIPTION)
	{
		subscription_gone = true;
		worker_leave("its subscription is gone");
	}
	if (read.result == APPLY_NO_EXTENSION)
		worker_leave("extension eventpipe is not installed or is being dropped");

	if (kafka_consumer_assignment_failed())
		return fail_and_back_off();
	if (!kafka_consumer_ensure(&subscription, errbuf, sizeof(errbuf)))
	{
		record_error(errbuf);
		show_activity(CONSUMER_NOT_CONFIGURED, "waiting: the Kafka configuration is refused");
		return BACKOFF_LAST_MS;
	}

	step_started_at = GetCurrentTimestamp();
	batch.count = kafka_consumer_poll_batch(&raw, subscription.batch_size, POLL_WAIT_MS);
	note_kafka_errors();
	broker_trouble = last_broker_error != 0 &&
		!TimestampDifferenceExceeds(last_broker_error, GetCurrentTimestamp(), BROKER_ERROR_SHOWN_MS);
	kafka_consumer_set_broker_trouble(broker_trouble && batch.count == 0);
	if (batch.count == 0)
	{
		if (broker_trouble)
			show_activity(CONSUMER_WAITING_FOR_BROKER, "waiting for the broker");
		else
			show_activity(CONSUMER_IDLE, "idle");
		prune_ledger_now_and_then();
		return 0;				/* the poll waited already */
	}

	show_activity(CONSUMER_APPLYING, "applying");
	last_broker_error = 0;
	batch.messages = palloc0(sizeof(ConsumedMessage) * batch.count);
	for (i = 0; i < batch.count; i++)
		batch.messages[i].raw = raw[i];
	polled_at = GetCurrentTimestamp();
	applied = apply_batch(&batch);
	elog(DEBUG1, "%s: batch of %d: poll %.1f ms, apply %.1f ms", who, batch.count,
		 (polled_at - step_started_at) / 1000.0, (GetCurrentTimestamp() - polled_at) / 1000.0);
	if (applied)
	{
		kafka_consumer_commit(&batch);
		account_batch(&batch);
	}
	kafka_consumer_release_batch();
	if (!applied)
		return fail_and_back_off();
	failures_in_a_row = 0;
	/* under sustained load the worker is never idle: prune between batches too */
	prune_ledger_now_and_then();
	return 0;
}

static void
attach_to_slot(void)
{
	pid_t		holder;

	slot = eventpipe_claim_consumer_slot(subscription_name, &holder);
	if (slot == NULL)
	{
		if (holder != 0)
			ereport(LOG,
					(errmsg("%s not started: process %d already consumes for this subscription",
							who, (int) holder)));
		else
			ereport(WARNING,
					(errmsg("%s not started: all %d consumer slots are taken",
							who, EVENTPIPE_MAX_CONSUMERS)));
		proc_exit(0);
	}
	before_shmem_exit(consumer_exit, (Datum) 0);
}

void
eventpipe_consumer_main(Datum main_arg)
{
	strlcpy(subscription_name, MyBgworkerEntry->bgw_extra + sizeof(Oid), sizeof(subscription_name));
	snprintf(who, sizeof(who), "eventpipe consumer \"%s\"", subscription_name);
	worker_connect(who);
	attach_to_slot();

	/*
	 * A lost commit loses effects, ledger rows and offsets together, and the
	 * messages are applied again from the offsets that remain: the batch
	 * commit need not wait for the WAL flush.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	worker_main_loop(consumer_step);
}
