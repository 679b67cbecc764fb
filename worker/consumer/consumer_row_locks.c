/*
 * consumer_row_locks.c
 *		Transaction-level advisory locks on the rows a batch writes through
 *		its metric rules and its mirrors, all taken before the first write,
 *		in one global order.
 *
 * Two workers that touch the same rows (of one subscription's partitions,
 * or of two subscriptions writing one table) wait for each other and, all
 * locks coming in one sorted pass, never deadlock: a worker that took its
 * metric rows' locks first and its mirror rows' after could hold one lock
 * another worker waits for while waiting for one that worker holds.  A
 * lock covers (target, a bucket of keys by hash), so a batch takes at most
 * LOCK_BUCKETS locks per target whatever its number of keys, and never
 * fills the server's lock table.  The lock is
 * pg_advisory_xact_lock(target, bucket), with bucket the key text's hash
 * (hashtext() in SQL) modulo LOCK_BUCKETS, so a DBA can see and take the
 * same locks from SQL; the key text is a metric's key as the event gives
 * it, a mirror row's key as mirror_events.c spells it.
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "utils/builtins.h"

#include "consumer.h"

#define LOCK_BUCKETS 256

typedef struct RowLock
{
	int32		target;
	int32		bucket;
} RowLock;

static int
compare_row_locks(const void *a, const void *b)
{
	const RowLock *x = (const RowLock *) a;
	const RowLock *y = (const RowLock *) b;

	if (x->target != y->target)
		return x->target < y->target ? -1 : 1;
	return x->bucket - y->bucket;
}

static RowLock
row_lock(Oid target, Datum key)
{
	text	   *k = DatumGetTextPP(key);
	uint32		hash = DatumGetUInt32(hash_any((unsigned char *) VARDATA_ANY(k),
											   VARSIZE_ANY_EXHDR(k)));
	RowLock		lock;

	lock.target = (int32) (target & 0x7FFFFFFF);
	lock.bucket = (int32) ((hash & 0x7FFFFFFF) % LOCK_BUCKETS);
	return lock;
}

/* Lock the rows the messages to apply write, metric and mirror rows alike. */
void
consumer_lock_rows(ConsumedMessage *messages, int count, const ConsumerRules *rules)
{
	RowLock    *locks;
	int			most = 0;
	int			n = 0;
	int			i;

	for (i = 0; i < count; i++)
		most += list_length(messages[i].effects) + list_length(messages[i].mirror_changes);
	locks = palloc(sizeof(RowLock) * (most + 1));
	for (i = 0; i < count; i++)
	{
		ListCell   *lc;

		if (messages[i].fate != MESSAGE_APPLIED)
			continue;
		foreach(lc, messages[i].effects)
		{
			MetricEffect *effect = (MetricEffect *) lfirst(lc);

			locks[n++] = row_lock(rules->metrics[effect->rule].target, effect->key);
		}
		foreach(lc, messages[i].mirror_changes)
		{
			MirrorChange *change = (MirrorChange *) lfirst(lc);

			locks[n++] = row_lock(rules->mirrors[change->mirror].target, change->key);
		}
	}
	qsort(locks, n, sizeof(RowLock), compare_row_locks);
	for (i = 0; i < n; i++)
		if (i == 0 || compare_row_locks(&locks[i - 1], &locks[i]) != 0)
			DirectFunctionCall2(pg_advisory_xact_lock_int4,
								Int32GetDatum(locks[i].target), Int32GetDatum(locks[i].bucket));
	pfree(locks);
}
