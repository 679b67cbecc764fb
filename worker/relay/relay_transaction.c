/*
 * relay_transaction.c
 *		The exactly-once relay (eventpipe.relay_exactly_once): each batch
 *		goes to Kafka in a transaction of its own, with the record of its
 *		rows in the progress topic (relay_progress.c); before a new
 *		producer sends anything, it fences its predecessors, then deletes
 *		from the outbox what the last committed record of each relay of this
 *		database carried.  Failures of the transactional path are shown in
 *		the worker's slot with what the DBA should do.
 *
 * The transactional.id names the server (its system identifier, which a
 * promoted standby shares), the database and the shard: a restarted relay,
 * or one on the old primary after a failover, is the same producer to
 * Kafka, and the newest fences the others.
 *
 * Which outcome a transaction had decides what happens to its rows:
 * committed, they are deleted like delivered events; aborted, they stay
 * due and go again in a later transaction (events that failed on their own
 * account are rescheduled or dead-lettered as usual); unknown (a fatal
 * error, or the worker had to stop while committing), they stay, and the
 * recovery of the next producer settles it from the progress topic.
 * Kafka refusing one of its topics is a failure of the transaction that
 * blames no event: relay_isolation.c finds the topic.
 */
#include "postgres.h"

#include "access/xlog.h"
#include "utils/memutils.h"

#include "extension/guc.h"
#include "relay.h"
#include "relay_transaction.h"
#include "worker/kafka/kafka_transaction.h"
#include "worker/worker_loop.h"

/* How long one transactional call may block the worker. */
#define INIT_TIMEOUT_MS 30000
#define COMMIT_TIMEOUT_MS 10000
#define ABORT_TIMEOUT_MS 10000

static char *transactional_id;
static char *progress_key;		/* this relay's records */
static char *progress_prefix;	/* the records of every relay of this database */
static char *reader_client_id;

static uint64 ready_generation = 0; /* the producer initialized and recovered */
static bool topic_created = false;
static bool must_rebuild = false;

void
relay_txn_setup(int shard, const char *database)
{
	uint64		server = GetSystemIdentifier();
	char		client_id[RELAY_CLIENT_ID_LEN];
	MemoryContext caller = MemoryContextSwitchTo(TopMemoryContext);

	relay_client_id(client_id, sizeof(client_id));

	transactional_id = psprintf("eventpipe-relay-" UINT64_FORMAT "-%s-%d", server, database, shard);
	progress_key = psprintf(UINT64_FORMAT "/%s/%d", server, database, shard);
	progress_prefix = psprintf(UINT64_FORMAT "/%s/", server, database);
	reader_client_id = psprintf("%s-progress", client_id);
	MemoryContextSwitchTo(caller);
	kafka_producer_set_transactional_id(transactional_id);
}

/*
 * Show what failed while doing what, and what to do about it; after a
 * fatal error the producer is to be rebuilt.
 */
static void
report(const KafkaTxnResult *result, const char *doing)
{
	char		message[EVENTPIPE_ERROR_LEN];
	RelayState	state;

	if (kafka_txn_fenced(result))
	{
		state = RELAY_FENCED;
		snprintf(message, sizeof(message),
				 "fenced while %s: %s; another producer uses transactional.id \"%s\" "
				 "(a relay of an old primary, or of a copy of this database, relaying to the "
				 "same Kafka cluster?): stop it; this relay keeps trying",
				 doing, result->message, transactional_id);
	}
	else if (kafka_txn_timed_out(result))
	{
		state = RELAY_TRANSACTION_TIMED_OUT;
		snprintf(message, sizeof(message),
				 "transaction timed out while %s: %s; its events are sent again; if batches "
				 "take longer than transaction.timeout.ms, lower eventpipe.relay_batch_size or "
				 "raise transaction.timeout.ms in eventpipe.kafka_options (at most the brokers' "
				 "transaction.max.timeout.ms)",
				 doing, result->message);
	}
	else if (result->verdict == KAFKA_TXN_RETRY)
	{
		state = RELAY_WAITING_FOR_COORDINATOR;
		snprintf(message, sizeof(message),
				 "transaction coordinator unavailable while %s: %s; check that the brokers are "
				 "up and that the __transaction_state topic has its in-sync replicas "
				 "(transaction.state.log.min.isr); the relay keeps trying",
				 doing, result->message);
	}
	else
	{
		state = RELAY_WAITING_FOR_BROKER;
		snprintf(message, sizeof(message), "transaction failed while %s: %s; %s",
				 doing, result->message,
				 result->verdict == KAFKA_TXN_FATAL ?
				 "the producer is built again and recovers from Kafka what committed" :
				 "its events are sent again");
	}
	if (result->verdict == KAFKA_TXN_FATAL)
		must_rebuild = true;
	relay_set_error(message);
	relay_show_activity(state, eventpipe_relay_state_name(state));
	ereport(LOG, (errmsg("eventpipe relay: %s", message)));
}

static void
report_progress_error(const char *errbuf)
{
	char		message[EVENTPIPE_ERROR_LEN];

	snprintf(message, sizeof(message),
			 "cannot recover from topic \"%s\": %s; it must exist (cleanup.policy=compact) and "
			 "the relay's Kafka principal must be allowed to create, read and write it; "
			 "nothing is sent until then",
			 RELAY_PROGRESS_TOPIC, errbuf);
	relay_set_error(message);
	relay_show_activity(RELAY_RECOVERING, "recovering: the progress topic cannot be read");
	ereport(LOG, (errmsg("eventpipe relay: %s", message)));
}

/*
 * Delete from the outbox what the relays' last committed transactions
 * carried; false if the progress topic or the outbox could not be read.
 */
static bool
recover(void)
{
	char		errbuf[512];
	List	   *records;
	uint64		forgotten = 0;
	bool		ok;
	char		create_error[512] = "";

	/*
	 * A principal without the right to create topics may still read one the
	 * DBA created: a refused creation only matters if the read fails too.
	 */
	if (!topic_created)
		topic_created = relay_progress_create_topic(kafka_producer_handle(), create_error,
													sizeof(create_error));
	if (!relay_progress_read(eventpipe_bootstrap_servers, reader_client_id, progress_prefix,
							 &records, relay_keep_waiting, errbuf, sizeof(errbuf)))
	{
		if (create_error[0] != '\0')
		{
			strlcat(errbuf, "; creating it: ", sizeof(errbuf));
			strlcat(errbuf, create_error, sizeof(errbuf));
		}
		report_progress_error(errbuf);
		return false;
	}
	WORKER_GUARD(ok, forgotten = outbox_forget_committed(records));
	if (!ok)
		return false;
	relay_account_recovered(forgotten);
	if (forgotten > 0)
		ereport(LOG,
				(errmsg("eventpipe relay: " UINT64_FORMAT " events that Kafka had committed were deleted from the outbox without being sent again",
						forgotten)));
	return true;
}

/*
 * Before the producer's first transaction: fence the earlier producers of
 * our transactional.id (their open transaction is aborted, one being
 * committed is waited for), then recover.  false while that fails: nothing
 * must be sent then.
 */
bool
relay_txn_get_ready(void)
{
	KafkaTxnResult result;

	if (kafka_producer_generation() == ready_generation)
		return true;
	relay_show_activity(RELAY_RECOVERING, "recovering: asking Kafka what committed");
	result = kafka_txn_init(kafka_producer_handle(), INIT_TIMEOUT_MS);
	if (result.verdict != KAFKA_TXN_DONE)
	{
		report(&result, "initializing transactions");
		return false;
	}
	if (!recover())
		return false;
	ready_generation = kafka_producer_generation();
	must_rebuild = false;
	relay_show_activity(RELAY_IDLE, "idle");
	return true;
}

/* The outbox may hold rows Kafka committed: recover before the next transaction. */
void
relay_txn_forget_recovery(void)
{
	ready_generation = 0;
}

/* Must the producer be dropped (and its successor recover)? */
bool
relay_txn_must_rebuild(void)
{
	return must_rebuild;
}

/* Begin the batch's transaction, marking held the events it is not to carry. */
bool
relay_txn_begin(OutboxBatch *batch)
{
	KafkaTxnResult result = kafka_txn_begin(kafka_producer_handle());

	if (result.verdict == KAFKA_TXN_DONE)
	{
		relay_isolation_hold(batch);
		return true;
	}
	report(&result, "beginning a transaction");
	must_rebuild = true;
	return false;
}

bool
relay_txn_add_progress(OutboxBatch *batch)
{
	char		errbuf[512];

	if (relay_progress_add(kafka_producer_handle(), progress_key, batch, errbuf, sizeof(errbuf)))
		return true;
	relay_set_error(errbuf);
	return false;
}

/* Failures that are the transaction's, not the event's: no attempt is counted. */
static bool
failed_with_the_transaction(rd_kafka_resp_err_t error)
{
	KafkaTxnResult as_result = {KAFKA_TXN_ABORT, error, ""};

	return kafka_txn_fenced(&as_result) || kafka_txn_timed_out(&as_result) ||
		error == RD_KAFKA_RESP_ERR__STATE || error == RD_KAFKA_RESP_ERR__FATAL ||
		error == RD_KAFKA_RESP_ERR__PURGE_QUEUE || error == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT;
}

/*
 * The transaction did not commit (or may not have): its events are not
 * delivered.  Those that failed on their own account keep their error.
 */
static void
undo_deliveries(OutboxBatch *batch, bool every_event)
{
	int			i;

	for (i = 0; i < batch->count; i++)
	{
		OutboxEvent *event = &batch->events[i];

		if (!event->queued || !event->reported)
			continue;
		if (every_event || event->error == RD_KAFKA_RESP_ERR_NO_ERROR ||
			failed_with_the_transaction(event->error))
			event->reported = false;
	}
}

/* The first error of the batch that was the transaction's, as a result. */
static bool
transaction_error_of(OutboxBatch *batch, KafkaTxnResult *result)
{
	int			i;

	for (i = 0; i < batch->count; i++)
	{
		OutboxEvent *event = &batch->events[i];

		if (event->queued && event->reported && event->error != RD_KAFKA_RESP_ERR_NO_ERROR &&
			failed_with_the_transaction(event->error))
		{
			result->verdict = KAFKA_TXN_ABORT;
			result->code = event->error;
			strlcpy(result->message, rd_kafka_err2str(event->error), sizeof(result->message));
			return true;
		}
	}
	return false;
}

static bool
every_queued_event_delivered(OutboxBatch *batch)
{
	int			i;

	for (i = 0; i < batch->count; i++)
		if (batch->events[i].queued && !OutboxEventDelivered(&batch->events[i]))
			return false;
	return true;
}

/*
 * Did Kafka refuse the transaction because of one of its topics (see
 * relay_isolation.c), no event failing on its own account?  *refusal then
 * says why.
 */
static bool
refused_by_kafka(OutboxBatch *batch, KafkaTxnResult *refusal)
{
	int			i;

	for (i = 0; i < batch->count; i++)
		if (batch->events[i].queued && batch->events[i].reported &&
			batch->events[i].error != RD_KAFKA_RESP_ERR_NO_ERROR)
			return false;
	return kafka_txn_take_refusal(refusal);
}

/* Abort the open transaction; false if that failed (the producer is then rebuilt). */
static bool
abort_transaction(void)
{
	for (;;)
	{
		KafkaTxnResult result = kafka_txn_abort(kafka_producer_handle(), ABORT_TIMEOUT_MS);

		if (result.verdict == KAFKA_TXN_DONE)
			return true;
		if (result.verdict == KAFKA_TXN_RETRY && relay_keep_waiting())
			continue;
		report(&result, "aborting a transaction");
		must_rebuild = true;
		return false;
	}
}

/*
 * End the batch's transaction: commit it if every event handed over was
 * delivered and sent_whole (the whole batch and its record went out), else
 * abort it, and leave in the batch what became of its events, for
 * outbox_record_outcome().  Returns false when the transactional path
 * failed (the worker backs off; relay_txn_must_rebuild() says whether the
 * producer must go), true when it committed or aborted because of events
 * that failed on their own account.  relay_isolation.c hears how it ended;
 * when Kafka refused one of its topics, it may fail the events the
 * transaction carried.
 */
bool
relay_txn_end(OutboxBatch *batch, bool sent_whole)
{
	KafkaTxnResult result;
	KafkaTxnResult refusal;
	bool		transaction_failed;
	bool		refused;

	if (sent_whole && every_queued_event_delivered(batch))
	{
		for (;;)
		{
			result = kafka_txn_commit(kafka_producer_handle(), COMMIT_TIMEOUT_MS);
			if (result.verdict == KAFKA_TXN_DONE)
			{
				relay_isolation_committed();
				return true;
			}
			if (result.verdict == KAFKA_TXN_RETRY && relay_keep_waiting())
			{
				report(&result, "committing a transaction");
				continue;
			}
			break;
		}
		if (result.verdict != KAFKA_TXN_ABORT)
		{
			/* it may have committed: the next producer finds out */
			report(&result, "committing a transaction");
			undo_deliveries(batch, true);
			must_rebuild = true;
			relay_txn_forget_recovery();
			relay_isolation_failed();
			return false;
		}
		report(&result, "committing a transaction");
		transaction_failed = true;
	}
	else
	{
		transaction_failed = !sent_whole || transaction_error_of(batch, &result);
		if (sent_whole && transaction_failed)
			report(&result, "sending a batch");
	}

	/*
	 * A producer to be rebuilt (its transaction could not even begin) has
	 * nothing to abort; messages whose reports are still due are discarded
	 * with the producer.  A transaction Kafka refused before any of its
	 * partitions were added cannot be aborted either (the coordinator has
	 * none under way: INVALID_TXN_STATE): the producer is rebuilt.
	 */
	refused = sent_whole && refused_by_kafka(batch, &refusal);
	if (must_rebuild || !abort_transaction() || batch->awaiting > 0)
	{
		must_rebuild = true;
		transaction_failed = true;
	}
	undo_deliveries(batch, false);
	if (refused)
		relay_isolation_refused(batch, &refusal);
	else
		relay_isolation_failed();
	return !transaction_failed;
}
