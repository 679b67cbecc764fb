/*
 * kafka_statistics.c
 *		Keeps the latest statistics librdkafka emits for a worker's Kafka
 *		client (every statistics.interval.ms: brokers, round-trip times,
 *		queues, per-partition offsets and lag) in a file, replaced whole
 *		each time, where eventpipe.kafka_statistics() reads them.
 *
 * A file, not shared memory: the JSON grows with the number of brokers and
 * partitions, and no reader needs it more than once an interval.  The
 * callback runs in whichever thread serves the client's queue, so it uses
 * plain libc calls only (no palloc, no elog); it writes a temporary file and
 * renames it, so a reader sees a whole document or the previous one.  The
 * file goes when the client does; the launcher clears leftovers of a crash.
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "storage/fd.h"

#include "kafka_statistics.h"

static char statistics_path[MAXPGPATH];
static char temporary_path[MAXPGPATH];

static int
write_statistics(rd_kafka_t *rk, char *json, size_t json_len, void *opaque)
{
	int			fd = open(temporary_path, O_WRONLY | O_CREAT | O_TRUNC, S_IRUSR | S_IWUSR);
	size_t		written = 0;

	if (fd < 0)
		return 0;
	while (written < json_len)
	{
		ssize_t		n = write(fd, json + written, json_len - written);

		if (n <= 0)
			break;
		written += n;
	}
	if (close(fd) == 0 && written == json_len)
		(void) rename(temporary_path, statistics_path);
	else
		(void) unlink(temporary_path);
	return 0;					/* librdkafka frees json */
}

/*
 * Have conf's client write its statistics to a file named after its client
 * id (which begins with KAFKA_STATISTICS_PREFIX; one client per worker).
 */
void
kafka_statistics_attach(rd_kafka_conf_t *conf, const char *client_id)
{
	Assert(strncmp(client_id, KAFKA_STATISTICS_PREFIX, strlen(KAFKA_STATISTICS_PREFIX)) == 0);
	snprintf(statistics_path, sizeof(statistics_path), "%s/%s%s",
			 KAFKA_STATISTICS_DIR, client_id, KAFKA_STATISTICS_SUFFIX);
	snprintf(temporary_path, sizeof(temporary_path), "%s.tmp", statistics_path);
	rd_kafka_conf_set_stats_cb(conf, write_statistics);
}

/* The worker's client is gone: so are its statistics. */
void
kafka_statistics_forget(void)
{
	if (statistics_path[0] != '\0')
		(void) unlink(statistics_path);
}

/* Remove every worker's statistics file (at the launcher's start). */
void
kafka_statistics_remove_all(void)
{
	DIR		   *dir = AllocateDir(KAFKA_STATISTICS_DIR);
	struct dirent *entry;

	/* LOG, not ERROR: leftovers are no reason to keep the relays from starting */
	while ((entry = ReadDirExtended(dir, KAFKA_STATISTICS_DIR, LOG)) != NULL)
	{
		char		path[MAXPGPATH];

		if (strncmp(entry->d_name, KAFKA_STATISTICS_PREFIX, strlen(KAFKA_STATISTICS_PREFIX)) != 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", KAFKA_STATISTICS_DIR, entry->d_name);
		(void) unlink(path);
	}
	FreeDir(dir);
}
