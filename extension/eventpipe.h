/*
 * eventpipe.h
 *		The entry points the extension's files export to each other and to
 *		the workers: the outbox insert, the wake-ups at commit, the hooks,
 *		the checks of topic names and headers, the launcher's registration.
 *		The configuration is in guc.h, the shared state in shmem.h.
 */
#ifndef EVENTPIPE_H
#define EVENTPIPE_H

#include "postgres.h"

#include "access/attnum.h"
#include "fmgr.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"

/* outbox_insert.c */
struct pg_uuid_t;
extern struct pg_uuid_t *eventpipe_enqueue_event(text *topic, text *key, Jsonb *payload,
												 Jsonb *headers, text *event_type);
extern Oid	eventpipe_outbox_id_sequence(Relation outbox, AttrNumber id_attnum, bool missing_ok);

/* commit_wakeup.c */
extern void eventpipe_wake_relay_at_commit(int64 outbox_id);
extern void eventpipe_wake_consumer_manager_at_commit(void);
extern void eventpipe_relay_pause_changed_at_commit(void);
extern void eventpipe_wake_launcher_at_commit(void);

/* object_access.c */
extern void eventpipe_install_object_access_hook(void);

/* owned_objects.c */
extern void eventpipe_install_owned_objects_hook(void);

/* own_table_trigger.c */
extern void eventpipe_require_own_table(FunctionCallInfo fcinfo, const char *function,
										const char *table);

/* topic_name.c */
extern void eventpipe_check_topic_name(const char *topic);

/* event_headers.c */
typedef void (*EventHeaderCallback) (const char *name, int name_len,
									 const char *value, int value_len,
									 void *arg);
extern void eventpipe_check_user_headers(Jsonb *headers);
extern void eventpipe_foreach_header(Jsonb *headers, EventHeaderCallback callback, void *arg);

/* worker/launcher.c */
extern void eventpipe_register_launcher(void);

/*
 * The workers' librdkafka statistics, one file per Kafka client:
 * pg_stat_tmp/<client id>.json, relative to the data directory; the
 * workers' client ids begin with the prefix.  Written by
 * worker/kafka/kafka_statistics.c, read by
 * eventpipe.kafka_statistics() (stats.c).
 */
#define KAFKA_STATISTICS_DIR "pg_stat_tmp"
#define KAFKA_STATISTICS_PREFIX "eventpipe-"
#define KAFKA_STATISTICS_SUFFIX ".json"

#endif							/* EVENTPIPE_H */
