/*
 * relay_pipeline.c
 *		The relay's run of batches: claim a batch of the outbox and hand it to
 *		librdkafka; while it is in flight, claim and send the next ones, up
 *		to PIPELINE_DEPTH batches in flight; record each batch (delete what
 *		was delivered) once all its delivery reports are in, oldest first.
 *		The database work of one batch thus overlaps the broker's round trip
 *		of the others, and the broker always has the next batch at hand.
 *
 * Order per key: librdkafka's idempotent producer delivers the messages of a
 * partition in the order they were handed over, and reports them in that
 * order, so a batch never has an event delivered while an earlier event of
 * its key, in an older batch, is still unacknowledged.  An event refused on
 * the spot holds back the later events of its key in every batch of the run.
 * When any event of a batch is not delivered, or the worker must stop, no
 * further batch is claimed; those in flight are awaited and recorded, and
 * the run ends.
 *
 * A claim made while batches are in flight reads the outbox from its start
 * as any claim does, passing over the rows in flight only, so a row that
 * shows up late below them (its transaction took its id early and committed
 * after later ones) goes out in the next batch, in order.  A run claims no
 * more after RUN_MS, so that the main loop gets to reloads and the like.
 *
 * Interrupts are held for the whole run (see relay_worker.c): a SIGTERM ends
 * it once what is in flight is acknowledged and recorded.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "../extension/eventpipe.h"
#include "relay.h"

/* A run of batches claims no more after this long. */
#define RUN_MS 1000

/* Most batches in flight at once. */
#define PIPELINE_DEPTH 3

/* A batch with the memory it lives in, and where its time went. */
typedef struct ClaimedBatch
{
	OutboxBatch rows;
	MemoryContext context;
	TimestampTz claim_started;
	TimestampTz claimed;
	TimestampTz produced;
	TimestampTz awaited;
} ClaimedBatch;

typedef struct ClaimStep
{
	ClaimedBatch *claimed;
	int			shard;
	ArrayType  *in_flight;
	OutboxAvailability availability;
} ClaimStep;

static void
claim_step(void *arg)
{
	ClaimStep  *step = (ClaimStep *) arg;

	step->availability = outbox_claim_batch(&step->claimed->rows, eventpipe_relay_batch_size,
											step->shard, eventpipe_relay_workers,
											step->in_flight);
}

/*
 * Claim the next batch, passing over the ids in flight.  Returns NULL if
 * the claim failed (already logged and recorded).
 */
static ClaimedBatch *
claim(int shard, ArrayType *in_flight, OutboxAvailability *availability)
{
	MemoryContext context = AllocSetContextCreate(CurrentMemoryContext,
												  "eventpipe relay batch",
												  ALLOCSET_DEFAULT_SIZES);
	MemoryContext caller = MemoryContextSwitchTo(context);
	ClaimedBatch *claimed = palloc0(sizeof(ClaimedBatch));
	ClaimStep	step = {claimed, shard, in_flight, OUTBOX_READY};
	bool		ok;

	claimed->context = context;
	claimed->claim_started = GetCurrentTimestamp();
	ok = relay_run_guarded(claim_step, &step);
	claimed->claimed = GetCurrentTimestamp();
	MemoryContextSwitchTo(caller);
	if (in_flight != NULL)
		pfree(in_flight);
	if (!ok)
	{
		MemoryContextDelete(context);
		return NULL;
	}
	*availability = step.availability;
	return claimed;
}

static void
release(ClaimedBatch *claimed)
{
	if (claimed != NULL)
		MemoryContextDelete(claimed->context);
}

static bool
produce(ClaimedBatch *claimed, const char *ce_source, List **refused)
{
	bool		ok = kafka_producer_produce_batch(&claimed->rows, ce_source, refused,
												  relay_keep_waiting);

	claimed->produced = GetCurrentTimestamp();
	return ok;
}

static bool
await(ClaimedBatch *claimed)
{
	bool		ok = kafka_producer_await_batch(&claimed->rows, relay_keep_waiting);

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

typedef struct OutcomeStep
{
	OutboxBatch *batch;
	BatchOutcome outcome;
} OutcomeStep;

static void
outcome_step(void *arg)
{
	OutcomeStep *step = (OutcomeStep *) arg;

	outbox_record_outcome(step->batch, eventpipe_relay_max_attempts, &step->outcome);
}

/* Record what became of the batch and count it; false if that failed. */
static bool
record(ClaimedBatch *claimed, int shard)
{
	OutcomeStep step = {&claimed->rows};
	TimestampTz started = GetCurrentTimestamp();

	if (!relay_run_guarded(outcome_step, &step))
		return false;
	relay_account_batch(&claimed->rows, &step.outcome);
	elog(DEBUG1, "eventpipe relay worker %d: batch of %d: claim %.1f ms, produce %.1f ms, "
		 "await %.1f ms, record %.1f ms",
		 shard, claimed->rows.count,
		 (claimed->claimed - claimed->claim_started) / 1000.0,
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

/* The ids of the events in flight, as an int8[]. */
static ArrayType *
ids_in_flight(InFlight *in_flight)
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

/*
 * One run of batches of this worker's shard, until the outbox has no more
 * for it, a batch does not go through entirely, or RUN_MS have passed.
 */
RelayRun
relay_pipeline_run(int shard, const char *ce_source)
{
	RelayRun	run = {RELAY_RUN_SENT, false, false};
	TimestampTz started = GetCurrentTimestamp();
	OutboxAvailability availability = OUTBOX_READY;
	InFlight	in_flight = {{NULL}, 0};
	List	   *refused = NIL;
	ClaimedBatch *first;
	bool		claiming = true;
	bool		awaiting;		/* false: record what is reported, wait no more */

	first = claim(shard, construct_empty_array(INT8OID), &availability);
	if (first == NULL)
		run.end = RELAY_RUN_CLAIM_FAILED;
	else if (availability == OUTBOX_NO_EXTENSION)
		run.end = RELAY_RUN_NO_EXTENSION;
	else if (first->rows.count == 0)
		run.end = RELAY_RUN_IDLE;
	if (run.end != RELAY_RUN_SENT)
	{
		release(first);
		return run;
	}

	relay_show_activity(RELAY_RELAYING, "relaying");
	HOLD_INTERRUPTS();
	in_flight.batches[in_flight.count++] = first;
	if (!produce(first, ce_source, &refused))
		run.gave_up = true;
	awaiting = !run.gave_up;
	while (in_flight.count > 0)
	{
		ClaimedBatch *oldest;

		/* keep the pipeline full */
		while (claiming && awaiting && in_flight.count < PIPELINE_DEPTH)
		{
			ClaimedBatch *next;

			if (relay_must_leave() ||
				TimestampDifferenceExceeds(started, GetCurrentTimestamp(), RUN_MS))
			{
				claiming = false;
				break;
			}
			next = claim(shard, ids_in_flight(&in_flight), &availability);
			if (next == NULL || availability != OUTBOX_READY || next->rows.count == 0)
			{
				release(next);
				claiming = false;
				break;
			}
			in_flight.batches[in_flight.count++] = next;
			if (!produce(next, ce_source, &refused))
			{
				run.gave_up = true;
				awaiting = false;
			}
		}

		oldest = take_oldest(&in_flight);
		if (awaiting && !await(oldest))
		{
			run.gave_up = true;
			awaiting = false;
		}
		if (!every_event_delivered(&oldest->rows))
			claiming = false;
		if (!record(oldest, shard))
		{
			run.record_failed = true;
			claiming = false;
			if (in_flight.count > 0 && awaiting)
			{
				/* stop where we are: the rows not recorded are sent again */
				kafka_producer_destroy();
				awaiting = false;
			}
		}
		release(oldest);
	}
	RESUME_INTERRUPTS();
	return run;
}
