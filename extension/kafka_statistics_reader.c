/*
 * kafka_statistics_reader.c
 *		eventpipe.kafka_statistics(): the latest librdkafka statistics of
 *		each worker's Kafka client, one row per client, read from the files
 *		the workers keep (worker/kafka/kafka_statistics.c).
 */
#include "postgres.h"

#include <sys/stat.h>

#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "eventpipe.h"

PG_FUNCTION_INFO_V1(eventpipe_kafka_statistics);

#define KAFKA_STATISTICS_COLS 3

/*
 * When librdkafka made the document: its "time" field (seconds since the
 * epoch), else when the file was written.  The two differ when the worker
 * served its client's queue late (an idle relay does so once per poll).
 */
static TimestampTz
emitted_at(Jsonb *statistics, TimestampTz written)
{
	JsonbValue	key;
	JsonbValue *seconds;

	key.type = jbvString;
	key.val.string.val = "time";
	key.val.string.len = strlen("time");
	seconds = findJsonbValueFromContainer(&statistics->root, JB_FOBJECT, &key);
	if (seconds == NULL || seconds->type != jbvNumeric)
		return written;
	return time_t_to_timestamptz((pg_time_t) DatumGetInt64(DirectFunctionCall1(numeric_int8,
																				NumericGetDatum(seconds->val.numeric))));
}

/*
 * The file's contents, and its modification time in *written; false if it
 * went away meanwhile (its client was destroyed).
 */
static bool
read_statistics_file(const char *path, StringInfo contents, TimestampTz *written)
{
	FILE	   *file = AllocateFile(path, PG_BINARY_R);
	struct stat st;
	char		buffer[8192];
	size_t		n;

	if (file == NULL)
	{
		if (errno == ENOENT)
			return false;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", path)));
	}
	if (fstat(fileno(file), &st) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not stat file \"%s\": %m", path)));
	*written = time_t_to_timestamptz(st.st_mtime);
	while ((n = fread(buffer, 1, sizeof(buffer), file)) > 0)
		appendBinaryStringInfo(contents, buffer, n);
	if (ferror(file))
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read file \"%s\": %m", path)));
	FreeFile(file);
	return true;
}

Datum
eventpipe_kafka_statistics(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	DIR		   *dir;
	struct dirent *entry;
	size_t		prefix_len = strlen(KAFKA_STATISTICS_PREFIX);
	size_t		suffix_len = strlen(KAFKA_STATISTICS_SUFFIX);

	InitMaterializedSRF(fcinfo, 0);

	dir = AllocateDir(KAFKA_STATISTICS_DIR);
	while ((entry = ReadDir(dir, KAFKA_STATISTICS_DIR)) != NULL)
	{
		size_t		name_len = strlen(entry->d_name);
		char		path[MAXPGPATH];
		StringInfoData contents;
		TimestampTz written;
		Datum		values[KAFKA_STATISTICS_COLS];
		bool		nulls[KAFKA_STATISTICS_COLS] = {false};

		if (name_len <= prefix_len + suffix_len ||
			strncmp(entry->d_name, KAFKA_STATISTICS_PREFIX, prefix_len) != 0 ||
			strcmp(entry->d_name + name_len - suffix_len, KAFKA_STATISTICS_SUFFIX) != 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", KAFKA_STATISTICS_DIR, entry->d_name);
		initStringInfo(&contents);
		if (!read_statistics_file(path, &contents, &written))
			continue;
		values[0] = PointerGetDatum(cstring_to_text_with_len(entry->d_name, name_len - suffix_len));
		values[2] = DirectFunctionCall1(jsonb_in, CStringGetDatum(contents.data));
		values[1] = TimestampTzGetDatum(emitted_at(DatumGetJsonbP(values[2]), written));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		pfree(contents.data);
	}
	FreeDir(dir);
	return (Datum) 0;
}
