/*
 * claim_start.c
 *		Where a relay worker's claims "from the start" of the outbox begin:
 *		past the ids below which the outbox holds no row and never will
 *		again.  A claim that began at the primary key's first entry would
 *		step over the entries of every row deleted since the last vacuum:
 *		a minute's worth at a steady rate, millions after a backlog.
 *
 * A row can show up below the ids a claim saw when its transaction drew
 * its id earlier and commits later.  The worker rules that out the way
 * CREATE INDEX CONCURRENTLY waits for older transactions, but without
 * waiting: after a claim from the start it notes the highest id that claim
 * saw (the candidate) and the virtual transaction ids then running in the
 * database.  Every id up to the candidate was drawn by one of those
 * transactions or by one that had already ended.  Once all of them have
 * ended, a claim that begins afterwards sees every row up to the candidate
 * that will ever exist: the start moves up to just below the lowest id it
 * saw, or to the candidate if it saw none.  A transaction that stays open
 * holds the start where it is, and claims begin there, as safe as before.
 *
 * That needs ids drawn in order, as the outbox's identity sequence draws
 * them while it caches one value at a time, counts up and does not cycle,
 * and rows that become visible when their transaction ends: where prepared
 * transactions are enabled, or the sequence caches, counts down or cycles,
 * claims begin at the first entry.  A TRUNCATE of the outbox (maybe
 * restarting its ids) gives it new storage, and the start goes back to the
 * first entry.  Ids sent back otherwise (setval(), ALTER SEQUENCE ...
 * RESTART, an INSERT OVERRIDING SYSTEM VALUE) are found at once when
 * publish() or capture reports them at commit, and otherwise by a claim
 * from the first entry, which each worker makes whenever a poll interval
 * (eventpipe.relay_poll_interval) has passed since its last one began.
 * docs/design.md, "Where a claim from the start begins".
 */
#include "postgres.h"

#include "access/twophase.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "extension/guc.h"
#include "relay.h"

/* No row is, or can come to be, at or below this id: claims begin past it. */
static int64 start_id = 0;
/* The outbox storage (relfilenode) that start_id speaks of. */
static Oid	start_storage = InvalidOid;

/* The candidate for start_id, and the transactions it waits for. */
static bool candidate_pending = false;
static int64 candidate_id;
static VirtualTransactionId *waiting_for = NULL;
static int	waiting_count = 0;
static int	waiting_done = 0;	/* those before this index have ended */

/* Whether the claim now under way began after the candidate's transactions ended. */
static bool candidate_proven = false;

/*
 * When a claim last began at the first entry, and when the claim under way
 * began.  An idle worker runs once per poll interval, after its last run
 * ended: each of its claims begins at the first entry.
 */
static TimestampTz last_claim_from_first_entry = 0;
static TimestampTz claim_began = 0;

/* Have all the transactions the candidate waits for ended?  Never waits. */
static bool
candidate_transactions_ended(void)
{
	while (waiting_done < waiting_count)
	{
		if (!VirtualXactLock(waiting_for[waiting_done], false))
			return false;
		waiting_done++;
	}
	return true;
}

/* Note the highest id a claim saw, and the transactions running now. */
static void
note_candidate(int64 highest_seen)
{
	MemoryContext caller = MemoryContextSwitchTo(TopMemoryContext);

	if (waiting_for != NULL)
	{
		pfree(waiting_for);
		waiting_for = NULL;
		waiting_count = 0;
	}
	/* vacuum writes no outbox row, and may run for hours */
	waiting_for = GetCurrentVirtualXIDs(InvalidTransactionId, false, false, PROC_IN_VACUUM,
										&waiting_count);
	MemoryContextSwitchTo(caller);
	waiting_done = 0;
	candidate_id = highest_seen;
	candidate_pending = true;
}

/* Claims begin at the first entry of storage until a start is proven again. */
static void
forget_start(Oid storage)
{
	start_id = 0;
	start_storage = storage;
	candidate_pending = false;
	candidate_proven = false;
}

/*
 * Before a claim from the start begins its transaction: the id it begins
 * past (0: at the first entry), and (*storage) the outbox storage that id
 * speaks of; outbox_claim_batch() begins at the first entry of any other.
 * Whether the candidate's transactions have ended is decided here, before
 * the claim takes its snapshot, and used by claim_start_end().
 */
int64
claim_start_begin(Oid *storage)
{
	claim_began = GetCurrentTimestamp();
	*storage = start_storage;
	candidate_proven = candidate_pending && candidate_transactions_ended();
	if (max_prepared_xacts > 0 ||
		TimestampDifferenceExceeds(last_claim_from_first_entry, claim_began,
								   eventpipe_relay_poll_interval))
		return 0;
	return start_id;
}

/*
 * After a claim from the start that read the outbox: move the start up if
 * the candidate is proven, and note the next candidate.  A claim that did
 * not read the primary key itself (the SQL claim, while retries are
 * scheduled) says nothing of the rows it passed over, and leaves the
 * candidate pending.  Returns the id the next claim from the start begins
 * past, at most.
 */
int64
claim_start_end(const OutboxSeen *seen)
{
	if (seen->after_id == 0)
		last_claim_from_first_entry = claim_began;
	if (seen->storage != start_storage || !seen->ids_in_order || max_prepared_xacts > 0)
		forget_start(seen->storage);
	if (seen->ids_in_order && max_prepared_xacts == 0 && seen->rows_read)
	{
		if (candidate_proven)
		{
			start_id = seen->lowest_id > 0 ? Min(candidate_id, seen->lowest_id - 1) : candidate_id;
			candidate_pending = false;
		}
		if (!candidate_pending)
			note_candidate(Max(seen->highest_id, start_id));
	}
	return start_id;
}

/*
 * A publisher reported a commit whose lowest id is lowest: at or below the
 * start, ids went back (setval(), ALTER SEQUENCE ... RESTART), and the next
 * claims begin at the first entry.
 */
void
claim_start_heard_commit(uint64 lowest)
{
	if (lowest <= (uint64) start_id && start_id > 0)
		forget_start(start_storage);
}
