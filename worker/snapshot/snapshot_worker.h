/*
 * snapshot_worker.h
 *		The snapshot worker (worker/snapshot/): its main loop
 *		(snapshot_worker.c), the chunk it emits in each transaction
 *		(snapshot_chunk.c), and how the consumer manager starts it
 *		(snapshot_starter.c).
 */
#ifndef EVENTPIPE_WORKER_SNAPSHOT_H
#define EVENTPIPE_WORKER_SNAPSHOT_H

#include "postgres.h"

#include "fmgr.h"

#include "extension/shmem.h"

typedef enum SnapshotChunkResult
{
	SNAPSHOT_CHUNK_EMITTED,		/* a chunk committed (or the snapshot ended) */
	SNAPSHOT_NONE_RUNNING,		/* no snapshot to work on */
	SNAPSHOT_BACKLOG_FULL		/* the relay is behind: wait */
} SnapshotChunkResult;

/* snapshot_chunk.c */
extern SnapshotChunkResult snapshot_emit_chunk(int64 *snapshot_id);
extern void snapshot_mark_failed(int64 snapshot_id, const char *error);

/* snapshot_starter.c, run by the consumer manager */
extern void snapshot_starter_reconcile(DatabaseSlot *database);

/* snapshot_worker.c */
extern PGDLLEXPORT void eventpipe_snapshot_main(Datum main_arg);

#endif							/* EVENTPIPE_WORKER_SNAPSHOT_H */
