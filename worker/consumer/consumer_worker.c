/*
 * consumer_worker.c
 *		A consumer worker's main loop: poll a batch of its subscription's
 *		Kafka messages, apply it in one transaction (consumer_apply.c), then
 *		commit its offsets to Kafka; keep the dedup ledger's partitions; say
 *		what it is doing in consumer_stats() and its process title, and count
 *		what became of the messages per partition (pg_stat_consumer).  Before
 *		every batch it carries out what SQL asked of it (consumer_control.c):
 *		replays, a pause, dead letters to apply again.
 *
 * Started by the consumer manager, subscriptions.workers of them per
 * subscription, connected to eventpipe.database; the subscription's name
 * and the worker's number (0 to workers - 1) come in bgw_extra.  The workers
 * of a subscription are members of its consumer group and share its
 * partitions, its dedup ledger and its stored offsets: a batch is applied
 * the same whichever worker polled it (see docs/design.md, "Several workers
 * of one subscription").  Worker 0 alone applies the dead letters marked for
 * a retry and, while paused, asks for the high watermarks: one of each is
 * enough.  Every worker keeps the ledger's partitions (one at a time does
 * the work, the others learn how far ahead they go), so that none applies
 * a batch whose ledger rows would have no partition to go to.  A worker
 * leaves when its subscription is gone or asks for fewer workers than its
 * number, the extension is dropped, its database is being dropped or is no
 * longer eventpipe.database, or on SIGTERM.  A batch that fails even when isolating failures is not lost: the
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

#include "extension/guc.h"
#include "extension/shmem.h"
#include "consumer.h"
#include "worker/kafka/kafka_client.h"
#include "worker/kafka/kafka_log.h"
#include "worker/worker_loop.h"

/* Wait for the first message of a batch at most this long (then look around). */
#define POLL_WAIT_MS 200
/* Back-off after a failed batch: doubles from the first to the last. */
#define BACKOFF_FIRST_MS 500
#define BACKOFF_LAST_MS 10000
/* The state says "waiting for broker" this long after a broker error. */
#define BROKER_ERROR_SHOWN_MS 5000
/* A paused worker looks at its subscription, and asks for the watermarks, this often. */
#define PAUSED_WAIT_MS 1000
#define PAUSED_WATERMARKS_MS 2000
/*
 * The dedup ledger's partitions are made this often, and expired ones
 * dropped at most this often (a drop waits for every batch on the ledger).
 */
#define LEDGER_UPKEEP_MS 10000
#define LEDGER_DROP_MS 60000

static char subscription_name[EVENTPIPE_SUBSCRIPTION_LEN];
static int	worker_number;
static char who[EVENTPIPE_SUBSCRIPTION_LEN + 64];
static char client_id[NAMEDATALEN + EVENTPIPE_SUBSCRIPTION_LEN + 64];
static bool group_taken_reported = false;
static ConsumerSlot *slot;
static bool subscription_gone = false;
static int	failures_in_a_row = 0;
static TimestampTz last_broker_error = 0;
static TimestampTz last_ledger_upkeep = 0;
static TimestampTz last_ledger_drop = 0;
static TimestampTz ledger_partitions_until = 0;
static TimestampTz last_paused_watermarks = 0;
static bool partition_table_full_reported = false;

static void
record_error(const char *message)
{
	eventpipe_set_consumer_error(slot, message);
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
	return worker_backoff_ms(failures_in_a_row, BACKOFF_FIRST_MS, BACKOFF_LAST_MS);
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

/*
 * The subscription's row, then what SQL asked of the worker; false if that
 * failed (already logged and recorded).
 */
static bool
read_subscription_and_control(Subscription *subscription, ConsumerControl *control,
							  ApplyResult *result)
{
	bool		ok;

	WORKER_GUARD(ok, *result = consumer_read_subscription(subscription_name, subscription));
	if (ok && *result == APPLY_DONE)
		WORKER_GUARD(ok, consumer_read_control(subscription_name, control));
	return ok;
}

/*
 * The ledger's partitions made ahead and those past
 * eventpipe.dedup_retention dropped, every LEDGER_UPKEEP_MS, and at every
 * step while they do not reach far enough; true while the ledger has
 * partitions for the rest of today and all of tomorrow, so that a batch's
 * ledger rows have a place whenever it commits.
 */
static bool
keep_ledger(void)
{
	TimestampTz now = GetCurrentTimestamp();
	bool		ready = now < ledger_partitions_until - USECS_PER_DAY;
	bool		drop = TimestampDifferenceExceeds(last_ledger_drop, now, LEDGER_DROP_MS);
	TimestampTz until = 0;
	bool		ok;

	if (ready && !TimestampDifferenceExceeds(last_ledger_upkeep, now, LEDGER_UPKEEP_MS))
		return true;
	set_ps_display("keeping the dedup ledger");
	WORKER_GUARD(ok, until = consumer_keep_ledger(eventpipe_dedup_retention, drop));
	if (!ok)
		return ready;
	last_ledger_upkeep = now;
	if (drop)
		last_ledger_drop = now;
	ledger_partitions_until = until;
	ready = now < ledger_partitions_until - USECS_PER_DAY;
	if (!ready && until != 0)
		record_error("the dedup ledger has no partition attached for tomorrow, "
					 "and eventpipe.ledger_upkeep() did not make one");
	return ready;
}

/* What became of a batch's messages of one partition. */
typedef struct PartitionCounts
{
	const char *topic;
	int32		partition;
	uint64		counts[MESSAGE_DEAD + 1];
} PartitionCounts;

/*
 * Add the counts to the partitions' slots (a partition without a slot, the
 * table being full, counts in the subscription's totals only).
 */
static void
account_partitions(PartitionCounts *partitions, int npartitions)
{
	int			i;

	for (i = 0; i < npartitions; i++)
	{
		PartitionCounts *p = &partitions[i];
		ConsumerPartitionSlot *partition_slot =
			eventpipe_consumer_partition_slot(subscription_name, p->topic, p->partition);

		if (partition_slot == NULL)
		{
			if (!partition_table_full_reported)
				ereport(WARNING,
						(errmsg("%s: no room for the counters of partition %d of topic \"%s\"",
								who, (int) p->partition, p->topic),
						 errdetail("All %d partition slots of pg_stat_consumer are taken; consumer_stats() still counts every message.",
								   EVENTPIPE_MAX_CONSUMER_PARTITIONS)));
			partition_table_full_reported = true;
			continue;
		}
		pg_atomic_fetch_add_u64(&partition_slot->events_applied, p->counts[MESSAGE_APPLIED]);
		pg_atomic_fetch_add_u64(&partition_slot->duplicates, p->counts[MESSAGE_DUPLICATE]);
		pg_atomic_fetch_add_u64(&partition_slot->unmatched, p->counts[MESSAGE_UNMATCHED]);
		pg_atomic_fetch_add_u64(&partition_slot->events_dead, p->counts[MESSAGE_DEAD]);
	}
}

/*
 * Count what became of the batch's messages, per subscription and per
 * partition.  A retried dead letter that fails again is not counted dead
 * again: it was when it first failed.
 */
static void
account_batch(ConsumerBatch *batch)
{
	uint64		counts[MESSAGE_DEAD + 1] = {0};
	PartitionCounts *partitions = palloc0(sizeof(PartitionCounts) * batch->count);
	int			npartitions = 0;
	const char *first_error = NULL;
	uint64		dead = 0;
	int			i;

	for (i = 0; i < batch->count; i++)
	{
		ConsumedMessage *message = &batch->messages[i];
		MessageFate fate = message->fate;
		int			p;

		if (fate == MESSAGE_DEAD)
		{
			dead++;
			if (first_error == NULL)
				first_error = message->error;
			if (batch->retry)
				continue;
		}
		counts[fate]++;
		for (p = 0; p < npartitions; p++)
			if (partitions[p].partition == message->partition &&
				strcmp(partitions[p].topic, message->topic) == 0)
				break;
		if (p == npartitions)
		{
			partitions[npartitions].topic = message->topic;
			partitions[npartitions++].partition = message->partition;
		}
		partitions[p].counts[fate]++;
	}
	pg_atomic_fetch_add_u64(&slot->events_applied, counts[MESSAGE_APPLIED]);
	pg_atomic_fetch_add_u64(&slot->duplicates, counts[MESSAGE_DUPLICATE]);
	pg_atomic_fetch_add_u64(&slot->unmatched, counts[MESSAGE_UNMATCHED]);
	pg_atomic_fetch_add_u64(&slot->events_dead, counts[MESSAGE_DEAD]);
	pg_atomic_fetch_add_u64(&slot->batches, 1);
	account_partitions(partitions, npartitions);
	if (first_error != NULL)
	{
		/* the whole error is in consumer_dead_letters; the log gets its start */
		int			len = pg_mbcliplen(first_error, strlen(first_error), EVENTPIPE_ERROR_LEN);
		char	   *message;

		if (dead == 1)
			message = psprintf(batch->retry ? "a dead letter failed again: %.*s"
							   : "a message was dead-lettered: %.*s", len, first_error);
		else
			message = psprintf(batch->retry ? "%llu dead letters failed again, the first: %.*s"
							   : "%llu messages were dead-lettered, the first: %.*s",
							   (unsigned long long) dead, len, first_error);

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
	ApplyResult result = APPLY_DONE;
	bool		ok;

	WORKER_GUARD(ok, result = consumer_apply_batch(batch, subscription_name, false));
	if (!ok)
	{
		WORKER_GUARD(ok, result = consumer_apply_batch(batch, subscription_name, true));
		if (!ok)
			return false;
	}
	if (result == APPLY_NO_SUBSCRIPTION)
	{
		subscription_gone = true;
		worker_leave("its subscription is gone");
	}
	if (result == APPLY_NO_EXTENSION)
		worker_leave("extension eventpipe is not installed or is being dropped");
	return true;
}

/*
 * Carry out the replays asked for: each partition's stored offset goes to
 * the one asked for, within what Kafka retains (below its earliest offset:
 * from there; past its end: from the end), then the consumer is built again
 * and its assignment starts at the stored offsets.
 */
static long
carry_out_replays(List *replays)
{
	ListCell   *lc;
	bool		ok;

	foreach(lc, replays)
	{
		ReplayRequest *replay = (ReplayRequest *) lfirst(lc);
		int64		low;
		int64		high;
		int64		asked = replay->from_offset;

		if (!kafka_consumer_query_watermarks(replay->topic, replay->partition, &low, &high))
			ereport(LOG,
					(errmsg("%s: could not learn which offsets Kafka retains of partition %d of topic \"%s\"; replaying from offset " INT64_FORMAT " as asked",
							who, (int) replay->partition, replay->topic, asked),
					 errdetail("An offset Kafka no longer has starts the partition at its start_from end.")));
		else
			replay->from_offset = Max(low, Min(high, asked));
		ereport(LOG,
				(errmsg("%s: replaying partition %d of topic \"%s\" from offset " INT64_FORMAT " (asked: " INT64_FORMAT ")",
						who, (int) replay->partition, replay->topic, replay->from_offset, asked)));
	}
	WORKER_GUARD(ok, consumer_carry_out_replays(subscription_name, replays));
	if (!ok)
		return fail_and_back_off();
	/* rejoin: the new assignment starts at the offsets just stored */
	kafka_consumer_stop(true);
	return 0;
}

/*
 * Paused: apply nothing; keep the high watermarks up to date now and then,
 * and the dedup ledger's partitions.
 */
static long
stay_paused(const Subscription *subscription)
{
	TimestampTz now = GetCurrentTimestamp();

	show_activity(CONSUMER_PAUSED, "paused");
	if (worker_number == 0 &&
		TimestampDifferenceExceeds(last_paused_watermarks, now, PAUSED_WATERMARKS_MS))
	{
		last_paused_watermarks = now;
		kafka_consumer_publish_watermarks(subscription, true);
	}
	note_kafka_errors();
	keep_ledger();
	return PAUSED_WAIT_MS;
}

/* Apply a batch of the dead letters marked for a retry, as Kafka messages are. */
static long
retry_dead_letters(const Subscription *subscription)
{
	ConsumerBatch batch = {0};
	bool		ok;
	bool		applied;

	WORKER_GUARD(ok, consumer_load_retries(subscription_name, subscription->batch_size, &batch));
	if (!ok)
		return fail_and_back_off();
	batch.subscription_id = subscription->id;
	if (batch.count == 0)
		return 0;
	show_activity(CONSUMER_APPLYING, "applying dead letters again");
	applied = apply_batch(&batch);
	if (applied)
		account_batch(&batch);
	consumer_release_retries(&batch);
	if (!applied)
		return fail_and_back_off();
	failures_in_a_row = 0;
	return 0;
}

/*
 * Join the subscription's consumer group, unless a worker of another
 * database is in it (eventpipe_join_consumer_group()): then say so, with a
 * WARNING the first time, and look again later.
 */
static bool
join_consumer_group(const Subscription *subscription, long *wait_ms)
{
	Oid			holder_database;
	char		holder_subscription[EVENTPIPE_SUBSCRIPTION_LEN];
	char		message[EVENTPIPE_ERROR_LEN];
	char	   *holder_database_name;

	if (eventpipe_join_consumer_group(slot, subscription->group_id, &holder_database,
									  holder_subscription))
	{
		group_taken_reported = false;
		return true;
	}
	kafka_consumer_stop(true);
	StartTransactionCommand();
	holder_database_name = get_database_name(holder_database);
	snprintf(message, sizeof(message),
			 "consumer group \"%s\" is taken by subscription \"%s\" of database \"%s\"",
			 subscription->group_id, holder_subscription,
			 holder_database_name ? holder_database_name : "(dropped)");
	CommitTransactionCommand();
	record_error(message);
	show_activity(CONSUMER_GROUP_TAKEN, "waiting: its consumer group is taken");
	if (!group_taken_reported)
		ereport(WARNING,
				(errmsg("%s waits: %s", who, message),
				 errhint("Give one of the subscriptions another group_id: in one group, "
						 "the two databases would split the partitions between them.")));
	group_taken_reported = true;
	*wait_ms = BACKOFF_LAST_MS;
	return false;
}

/*
 * Get ready for a batch: Kafka configured, the subscription and what SQL
 * asked of the worker read, its consumer group joined, the Kafka consumer
 * built for them.  false, with how long to wait, when not.
 */
static bool
get_ready(Subscription *subscription, ConsumerControl *control, long *wait_ms)
{
	ApplyResult read = APPLY_DONE;
	char		errbuf[512];

	if (eventpipe_bootstrap_servers[0] == '\0')
	{
		kafka_consumer_stop(true);
		show_activity(CONSUMER_NOT_CONFIGURED, "waiting: eventpipe.bootstrap_servers is not set");
		*wait_ms = 1000;
		return false;
	}
	if (!read_subscription_and_control(subscription, control, &read))
	{
		*wait_ms = fail_and_back_off();
		return false;
	}
	if (read == APPLY_NO_SUBSCRIPTION)
	{
		subscription_gone = true;
		worker_leave("its subscription is gone");
	}
	if (read == APPLY_NO_EXTENSION)
		worker_leave("extension eventpipe is not installed or is being dropped");
	if (worker_number >= subscription->workers)
		worker_leave("its subscription asks for fewer workers");

	if (!join_consumer_group(subscription, wait_ms))
		return false;
	if (kafka_consumer_assignment_failed())
	{
		*wait_ms = fail_and_back_off();
		return false;
	}
	if (!kafka_consumer_ensure(subscription, worker_number, client_id, errbuf, sizeof(errbuf)))
	{
		record_error(errbuf);
		show_activity(CONSUMER_NOT_CONFIGURED, "waiting: the Kafka configuration is refused");
		*wait_ms = BACKOFF_LAST_MS;
		return false;
	}
	return true;
}

/*
 * Poll a batch of the subscription's messages (held by kafka_consumer.c
 * until kafka_consumer_release_batch()); false when none came.
 */
static bool
poll_batch(const Subscription *subscription, ConsumerBatch *batch)
{
	bool		broker_trouble;

	kafka_consumer_poll_batch(batch, subscription->batch_size, POLL_WAIT_MS);
	batch->subscription_id = subscription->id;
	note_kafka_errors();
	kafka_consumer_publish_watermarks(subscription, false);
	broker_trouble = last_broker_error != 0 &&
		!TimestampDifferenceExceeds(last_broker_error, GetCurrentTimestamp(), BROKER_ERROR_SHOWN_MS);
	kafka_consumer_set_broker_trouble(broker_trouble && batch->count == 0);
	if (batch->count == 0)
	{
		if (broker_trouble)
			show_activity(CONSUMER_WAITING_FOR_BROKER, "waiting for the broker");
		else
			show_activity(CONSUMER_IDLE, "idle");
		return false;
	}
	show_activity(CONSUMER_APPLYING, "applying");
	last_broker_error = 0;
	return true;
}

/*
 * One turn of the loop; returns how long to sleep before the next (0: none).
 * A turn does what SQL asked first (replays, a pause, dead letters to
 * retry), else: poll a batch; apply it in one transaction (interpret, dedup,
 * apply, dead letters, offsets: consumer_apply_batch); commit its offsets to
 * Kafka and count it.
 */
static long
consumer_step(void)
{
	Subscription subscription;
	ConsumerControl control;
	ConsumerBatch batch;
	long		wait_ms;
	bool		applied;
	TimestampTz step_started_at;
	TimestampTz polled_at;

	if (!get_ready(&subscription, &control, &wait_ms))
		return wait_ms;
	if (control.replays != NIL)
		return carry_out_replays(control.replays);
	if (subscription.paused)
		return stay_paused(&subscription);
	if (!keep_ledger())
		return fail_and_back_off();
	if (control.retries_pending && worker_number == 0)
		return retry_dead_letters(&subscription);

	step_started_at = GetCurrentTimestamp();
	if (!poll_batch(&subscription, &batch))
		return 0;				/* the poll waited already */
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
	return 0;
}

/*
 * The worker's Kafka client: eventpipe-consumer-<database>-<subscription>,
 * then #N for worker N > 0 (a character no subscription name has).
 */
static void
name_client(void)
{
	StartTransactionCommand();
	snprintf(client_id, sizeof(client_id), "eventpipe-consumer-%s-%s",
			 get_database_name(MyDatabaseId), subscription_name);
	CommitTransactionCommand();
	kafka_client_id_sanitize(client_id);
	if (worker_number > 0)
		snprintf(client_id + strlen(client_id), sizeof(client_id) - strlen(client_id), "#%d",
				 worker_number);
}

static void
attach_to_slot(void)
{
	pid_t		holder;

	slot = eventpipe_claim_consumer_slot(subscription_name, worker_number, &holder);
	if (slot == NULL)
	{
		if (holder != 0)
			ereport(LOG,
					(errmsg("%s not started: process %d already is this worker of the subscription",
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
	memcpy(&worker_number, MyBgworkerEntry->bgw_extra + sizeof(Oid) + EVENTPIPE_SUBSCRIPTION_LEN,
		   sizeof(int));
	if (worker_number == 0)
		snprintf(who, sizeof(who), "eventpipe consumer \"%s\"", subscription_name);
	else
		snprintf(who, sizeof(who), "eventpipe consumer \"%s\" #%d", subscription_name, worker_number);
	worker_connect(who, record_error);
	attach_to_slot();
	name_client();

	/*
	 * A lost commit loses effects, ledger rows and offsets together, and the
	 * messages are applied again from the offsets that remain: the batch
	 * commit need not wait for the WAL flush.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	worker_main_loop(consumer_step);
}
