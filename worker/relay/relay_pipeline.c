/*
 * relay_pipeline.c
 *		The relay's run of batches: claim a batch of the outbox and hand it to
 *		librdkafka; while it is in flight, claim and send the next ones, up
 *		to PIPELINE_DEPTH batches in flight as long as claims fill their
 *		batches; record each batch (delete what was delivered) once all its
 *		delivery reports are in, oldest first.  The database work of one
 *		batch thus overlaps the broker's round trip of the others, and the
 *		broker always has the next batch at hand.  Under a steady stream of
 *		commits, runs begin eventpipe.relay_claim_interval apart at least,
 *		each sending what committed meanwhile.
 *
 * Order per key: librdkafka's idempotent producer reports a partition's
 * messages in the order they were handed over, so no batch has an event
 * delivered before an earlier event of its key; an event refused on the
 * spot holds back the later events of its key for the rest of the run.
 *
 * A claim past the batches in flight would pass over a row that became due
 * below them: update_floor() and claim_next() claim from the start of the
 * outbox whenever such a row may exist.  Why and when, with the commit
 * reports of commit_wakeup.c: docs/design.md, "Claims that never skip a
 * committed row".
 *
 * With eventpipe.relay_exactly_once a batch is sent in a Kafka transaction
 * of its own (relay_transaction.c), which a producer runs one at a time: one
 * batch is in flight, and its transaction is committed (or aborted) before
 * its outcome is recorded.
 *
 * Interrupts are held for the whole run (relay_keep_waiting(), in
 * relay_slot.c, serves what other processes wait for meanwhile): a SIGTERM
 * ends it once what is in flight is acknowledged and recorded.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "access/twophase.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "extension/guc.h"
#include "extension/shmem.h"
#include "relay.h"
#include "relay_transaction.h"
#include "worker/worker_loop.h"

/* A run of batches claims no more after this long: then a full claim. */
#define RUN_MS 1000

/* Most batches in flight at once. */
#define PIPELINE_DEPTH 3

/*
 * When this worker's last run began, and whether it ended caught up: its
 * last claim took every committed row, and nothing it held back is due.
 */
static TimestampTz last_run_started = 0;
static bool last_run_caught_up = false;

/*
 * Most events a claim takes: a transaction's record must stay small, and
 * fit a message the producer may send.
 */
static int
batch_limit(void)
{
	if (eventpipe_relay_exactly_once)
		return Min(Min(eventpipe_relay_batch_size, RELAY_EXACTLY_ONCE_MAX_BATCH),
				   relay_progress_max_events(kafka_producer_message_limit()));
	return eventpipe_relay_batch_size;
}

/* A batch with the memory it lives in, and where its time went. */
typedef struct ClaimedBatch
{
	OutboxBatch rows;
	MemoryContext context;
	bool		from_start;		/* claimed from the start of the outbox */
	TimestampTz claim_started;
	TimestampTz claimed;
	TimestampTz produced;
	TimestampTz awaited;
} ClaimedBatch;

/*
 * Claim a batch of rows with ids above after_id (0: from the start), passing
 * over the ids in flight.  With batches in flight interrupts are held: then
 * it waits for no lock on the outbox (nowait).  Returns NULL if the claim
 * failed (already logged and recorded).
 */
static ClaimedBatch *
claim(int shard, int64 after_id, ArrayType *in_flight, bool nowait,
	  OutboxAvailability *availability)
{
	MemoryContext context = AllocSetContextCreate(CurrentMemoryContext,
												  "eventpipe relay batch",
												  ALLOCSET_DEFAULT_SIZES);
	MemoryContext caller = MemoryContextSwitchTo(context);
	ClaimedBatch *claimed = palloc0(sizeof(ClaimedBatch));
	OutboxAvailability found = OUTBOX_READY;
	bool		ok;

	claimed->context = context;
	claimed->from_start = after_id == 0;
	claimed->claim_started = GetCurrentTimestamp();
	WORKER_GUARD(ok, found = outbox_claim_batch(&claimed->rows, batch_limit(),
												shard, eventpipe_relay_workers,
												after_id, in_flight, nowait));
	claimed->claimed = GetCurrentTimestamp();
	MemoryContextSwitchTo(caller);
	pfree(in_flight);
	if (!ok)
	{
		MemoryContextDelete(context);
		return NULL;
	}
	*availability = found;
	return claimed;
}

static void
release(ClaimedBatch *claimed)
{
	if (claimed != NULL)
		MemoryContextDelete(claimed->context);
}

/*
 * Hand the batch to librdkafka; exactly once, in a transaction begun for
 * it (which may carry only some of its events: relay_isolation.c), with its
 * progress record.  false: the relay gives up on the batch.
 */
static bool
produce(ClaimedBatch *claimed, const char *ce_source, List **refused)
{
	bool		ok;

	if (eventpipe_relay_exactly_once && !relay_txn_begin(&claimed->rows))
		return false;
	ok = kafka_producer_produce_batch(&claimed->rows, ce_source, refused, relay_keep_waiting);
	if (ok && eventpipe_relay_exactly_once)
		ok = relay_txn_add_progress(&claimed->rows);
	claimed->produced = GetCurrentTimestamp();
	return ok;
}

/* last_of_run: the run sends nothing more before this batch is recorded. */
static bool
await(ClaimedBatch *claimed, bool last_of_run)
{
	bool		ok = kafka_producer_await_batch(&claimed->rows, last_of_run, relay_keep_waiting);

	claimed->awaited = GetCurrentTimestamp();
	return ok;
}

static bool
every_event_delivered(OutboxBatch *batch)
{
	int			i;

	for (i = 0; i < batch->count; i++)
		if (batch->events[i].held || !OutboxEventDelivered(&batch->events[i]))
			return false;
	return true;
}

/*
 * Record what became of the batch and count it, in the batch's memory;
 * false if that failed.  *retried: events sent again after a failure got an
 * outcome (and may no longer hold back later events of their key).
 */
static bool
record(ClaimedBatch *claimed, int shard, bool *retried)
{
	BatchOutcome outcome = {0};
	TimestampTz started = GetCurrentTimestamp();
	MemoryContext caller = MemoryContextSwitchTo(claimed->context);
	bool		ok;

	WORKER_GUARD(ok, outbox_record_outcome(&claimed->rows, eventpipe_relay_max_attempts,
										   &outcome));
	MemoryContextSwitchTo(caller);
	if (!ok)
		return false;
	*retried = outcome.retried > 0;
	relay_account_batch(&claimed->rows, &outcome);
	elog(DEBUG1, "eventpipe relay worker %d: batch of %d: claim %.1f ms (%s), produce %.1f ms, "
		 "await %.1f ms, record %.1f ms",
		 shard, claimed->rows.count,
		 (claimed->claimed - claimed->claim_started) / 1000.0,
		 claimed->from_start ? "from the start" : "past the batches in flight",
		 (claimed->produced - claimed->claimed) / 1000.0,
		 (claimed->awaited - claimed->produced) / 1000.0,
		 (GetCurrentTimestamp() - started) / 1000.0);
	return true;
}

/* The batches in flight, oldest first. */
typedef struct InFlight
{
	ClaimedBatch *batches[PIPELINE_DEPTH];
	int			count;
} InFlight;

/* The ids above after_id of the events in flight, as an int8[]. */
static ArrayType *
ids_in_flight(InFlight *in_flight, int64 after_id)
{
	Datum	   *ids;
	int			count = 0;
	int			b;
	int			i;
	ArrayType  *array;

	for (b = 0; b < in_flight->count; b++)
		count += in_flight->batches[b]->rows.count;
	ids = palloc(sizeof(Datum) * Max(count, 1));
	count = 0;
	for (b = 0; b < in_flight->count; b++)
	{
		OutboxBatch *rows = &in_flight->batches[b]->rows;

		for (i = 0; i < rows->count; i++)
			if (rows->events[i].id > after_id)
				ids[count++] = Int64GetDatum(rows->events[i].id);
	}
	array = construct_array(ids, count, INT8OID, sizeof(int64), true, TYPALIGN_DOUBLE);
	pfree(ids);
	return array;
}

static ClaimedBatch *
take_oldest(InFlight *in_flight)
{
	ClaimedBatch *oldest = in_flight->batches[0];

	in_flight->count--;
	memmove(&in_flight->batches[0], &in_flight->batches[1],
			sizeof(ClaimedBatch *) * in_flight->count);
	return oldest;
}

/* Where the run's next claim may start. */
typedef struct ClaimFloor
{
	int64		highest_claimed;	/* highest id claimed in this run */
	bool		may_skip;		/* no row can have shown up late below it */
	bool		more_may_be_due;	/* the last claim filled its batch, or a
									 * commit was reported after it */
} ClaimFloor;

/*
 * After a claim: where may the next one start, and may it skip what lies
 * below?  A claim from the start that filled its batch saw nothing past its
 * last row, so the floor comes down to that row; other claims saw every due
 * row up to their last one.  Skipping is unsafe when a commit at or below
 * the floor was reported (or is under way), and where COMMIT PREPARED can
 * make rows visible without a report.
 */
static void
update_floor(ClaimFloor *floor, ClaimedBatch *claimed, uint64 lowest_committed)
{
	OutboxBatch *rows = &claimed->rows;

	if (rows->count > 0)
	{
		int64		last = rows->events[rows->count - 1].id;

		if (claimed->from_start && rows->full)
			floor->highest_claimed = last;
		else
			floor->highest_claimed = Max(floor->highest_claimed, last);
	}
	floor->may_skip = max_prepared_xacts == 0 &&
		lowest_committed > (uint64) floor->highest_claimed;
	floor->more_may_be_due = rows->full ||
		lowest_committed != EVENTPIPE_NO_COMMITTED_ID;
}

/*
 * The run's next batch: past the highest id claimed when that is safe, else
 * (or when a commit below it shows up meanwhile) from the start of the
 * outbox; either way passing over the batches in flight.
 */
static ClaimedBatch *
claim_next(int shard, InFlight *in_flight, ClaimFloor *floor,
		   OutboxAvailability *availability)
{
	ClaimedBatch *next = NULL;
	uint64		lowest_committed;

	if (floor->may_skip)
	{
		next = claim(shard, floor->highest_claimed,
					 ids_in_flight(in_flight, floor->highest_claimed), true, availability);
		if (next != NULL)
		{
			lowest_committed = relay_take_lowest_committed_id();
			if (lowest_committed > (uint64) floor->highest_claimed)
				update_floor(floor, next, lowest_committed);
			else
			{
				/* a row committed below the floor: this claim may have passed over it */
				release(next);
				next = NULL;
				floor->may_skip = false;
			}
		}
	}
	if (next == NULL && !floor->may_skip)
	{
		next = claim(shard, 0, ids_in_flight(in_flight, 0), true, availability);
		if (next != NULL)
			update_floor(floor, next, relay_take_lowest_committed_id());
	}
	return next;
}

/*
 * Was the newest batch in flight a full one (its claim stopped at its
 * limit of events or of bytes)?  Only then does the run claim another.  A
 * batch short of both means its claim took every committed row: claiming
 * again at once would take only what committed in the meantime, a few rows
 * at the fixed cost of a claim and a record each.  So the run claims no
 * more: it records what is in flight and ends, and the next run takes what
 * committed during those round trips in one batch.
 */
static bool
newest_was_full(const InFlight *in_flight)
{
	return in_flight->batches[in_flight->count - 1]->rows.full;
}

/*
 * After a run that ended caught up, let eventpipe.relay_claim_interval pass
 * since it began, so that the commits of that time go out in one batch.  A
 * run's fixed cost (a claim, a record, produce requests, the wake-ups of
 * two threads) is then paid once per interval at most, whatever the rate;
 * an event waits half the interval on average, and not at all if it
 * commits an interval or more after the last run began.  A backlog (full
 * claims) and events held back do not wait.  The wait ignores the latch,
 * which commits set all along, and lasts one interval (a second) at most;
 * false if the worker must leave or the relay was paused or resumed
 * meanwhile: the main loop then turns at once.
 */
static bool
wait_for_claim_interval(void)
{
	TimestampTz next_run = TimestampTzPlusMilliseconds(last_run_started,
													   eventpipe_relay_claim_interval);
	long		wait_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), next_run);

	if (last_run_caught_up && wait_ms > 0)
	{
		(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(wait_ms, eventpipe_relay_claim_interval), PG_WAIT_EXTENSION);
		if (relay_must_leave() || relay_pause_changed())
			return false;
		/* the broker has not kept us waiting */
		relay_note_progress();
	}
	last_run_started = GetCurrentTimestamp();
	return true;
}

/*
 * One run of batches of this worker's shard, until the outbox has no more
 * for it, a claim comes back short, a batch does not go through entirely,
 * or RUN_MS have passed.
 */
RelayRun
relay_pipeline_run(int shard, const char *ce_source)
{
	RelayRun	run = {RELAY_RUN_SENT, false, false, false, true};
	int			depth = eventpipe_relay_exactly_once ? 1 : PIPELINE_DEPTH;
	TimestampTz started;
	OutboxAvailability availability = OUTBOX_READY;
	InFlight	in_flight = {{NULL}, 0};
	List	   *refused = NIL;
	ClaimFloor	floor = {0, false};
	ClaimedBatch *first;
	bool		claiming = true;
	bool		awaiting;		/* false: record what is reported, wait no more */
	bool		retried = false;
	bool		caught_up;		/* took every committed row, held nothing back */

	if (!wait_for_claim_interval())
	{
		run.end = RELAY_RUN_IDLE;
		return run;
	}
	started = last_run_started;
	last_run_caught_up = false;
	/* what committed before the full claim below is seen by it */
	(void) relay_take_lowest_committed_id();
	first = claim(shard, 0, construct_empty_array(INT8OID), false, &availability);
	if (first == NULL)
		run.end = RELAY_RUN_CLAIM_FAILED;
	else if (availability == OUTBOX_NO_EXTENSION)
		run.end = RELAY_RUN_NO_EXTENSION;
	else if (first->rows.count == 0)
	{
		run.end = RELAY_RUN_IDLE;
		last_run_caught_up = true;
	}
	if (run.end != RELAY_RUN_SENT)
	{
		release(first);
		return run;
	}

	update_floor(&floor, first, relay_take_lowest_committed_id());
	caught_up = !first->rows.full;
	relay_show_activity(RELAY_RELAYING, "relaying");
	HOLD_INTERRUPTS();
	in_flight.batches[in_flight.count++] = first;
	if (!produce(first, ce_source, &refused))
		run.gave_up = true;
	awaiting = !run.gave_up;
	while (in_flight.count > 0)
	{
		ClaimedBatch *oldest;
		bool		last_of_run;

		/* keep the pipeline full while the outbox has full batches */
		while (claiming && awaiting && in_flight.count < depth && newest_was_full(&in_flight))
		{
			ClaimedBatch *next;

			if (relay_must_leave() || relay_pause_changed() ||
				TimestampDifferenceExceeds(started, GetCurrentTimestamp(), RUN_MS))
			{
				claiming = false;
				break;
			}
			next = claim_next(shard, &in_flight, &floor, &availability);
			if (next == NULL || availability != OUTBOX_READY || next->rows.count == 0)
			{
				caught_up = next != NULL && availability == OUTBOX_READY;
				if (next != NULL && availability == OUTBOX_READY)
					run.more_due = floor.more_may_be_due;
				release(next);
				claiming = false;
				break;
			}
			in_flight.batches[in_flight.count++] = next;
			caught_up = !next->rows.full;
			if (!produce(next, ce_source, &refused))
			{
				run.gave_up = true;
				awaiting = false;
			}
		}

		oldest = take_oldest(&in_flight);
		/* a short claim or a stop left it the only one: nothing follows it */
		last_of_run = in_flight.count == 0 && (!claiming || !oldest->rows.full);
		if (awaiting && !await(oldest, last_of_run))
		{
			run.gave_up = true;
			awaiting = false;
		}
		if (eventpipe_relay_exactly_once && !run.transaction_failed &&
			!relay_txn_end(&oldest->rows, awaiting))
		{
			run.transaction_failed = true;
			claiming = false;
		}
		if (!every_event_delivered(&oldest->rows))
		{
			/* held or failed events of this run: look at them again at once */
			claiming = false;
			caught_up = false;
			run.more_due = true;
		}
		if (!record(oldest, shard, &retried))
		{
			/* exactly once: what Kafka committed is still in the outbox */
			if (eventpipe_relay_exactly_once)
				relay_txn_forget_recovery();
			run.record_failed = true;
			claiming = false;
			if (in_flight.count > 0 && awaiting)
			{
				/* stop where we are: the rows not recorded are sent again */
				kafka_producer_destroy();
				awaiting = false;
			}
		}
		else if (retried)
		{
			/* the events it held back are due now, maybe below the floor */
			floor.may_skip = false;
			floor.more_may_be_due = true;
			run.more_due = true;
			caught_up = false;
		}
		release(oldest);
	}
	RESUME_INTERRUPTS();

	/*
	 * The run stopped claiming after a short claim (or, exactly once, after
	 * its one batch): unless more may be due below the floor or a commit
	 * was reported since, that claim saw every row, and a commit from now
	 * on wakes us.  (A full claim sets more_may_be_due, which is why the
	 * claiming loop above needs no such test.)
	 */
	if (claiming && awaiting && !floor.more_may_be_due && !relay_commit_reported())
		run.more_due = false;
	last_run_caught_up = caught_up;
	return run;
}
