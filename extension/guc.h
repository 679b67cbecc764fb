/*
 * guc.h
 *		The extension's configuration (guc.c), all under the reserved prefix
 *		"eventpipe.".
 */
#ifndef EVENTPIPE_GUC_H
#define EVENTPIPE_GUC_H

extern char *eventpipe_database;
extern char *eventpipe_bootstrap_servers;
extern char *eventpipe_kafka_options;
extern char *eventpipe_kafka_options_file;
extern int	eventpipe_relay_batch_size;
extern int	eventpipe_relay_poll_interval;
extern int	eventpipe_relay_claim_interval;
extern int	eventpipe_relay_max_attempts;
extern int	eventpipe_relay_workers;
extern int	eventpipe_max_databases;
extern int	eventpipe_consumer_batch_size;
extern int	eventpipe_dedup_retention;
extern int	eventpipe_snapshot_chunk_rows;
extern int	eventpipe_snapshot_max_backlog;
extern bool eventpipe_relay_exactly_once;

extern void eventpipe_define_gucs(void);
extern bool eventpipe_database_is_served(const char *name);

#endif							/* EVENTPIPE_GUC_H */
