/*
 * kafka_options.c
 *		The DBA's librdkafka properties: eventpipe.kafka_options
 *		("key=value,key=value"), then the file eventpipe.kafka_options_file
 *		names (one key=value per line), which keeps secrets out of the
 *		settings and so out of the server log.
 *
 * A property eventpipe's guarantees rest on is refused like a bad value
 * (kafka_guarantees.c).
 *
 * Used by the GUC check hook (so a bad value is refused at reload, with the
 * old one kept) and by the workers when they build a Kafka handle; also sets
 * the workers' own properties (eventpipe_kafka_conf_set).
 *
 * Values may be secrets, and a value that holds a comma is cut into items
 * whose "names" are pieces of it: error texts name an item by its position,
 * and quote a name only when librdkafka knows it as a property, never a
 * value nor librdkafka's own complaint (which may quote the value).
 */
#include "postgres.h"

#include <ctype.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/stringinfo.h"

#include "guc.h"
#include "kafka_guarantees.h"
#include "kafka_options.h"

/*
 * Could name be one of librdkafka's property names?  They are all lower-case
 * ASCII letters, digits, dots and underscores; anything else is surely text
 * from a value, which is never quoted.
 */
static bool
plausible_property_name(const char *name)
{
	const char *c;

	for (c = name; *c != '\0'; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '.' || *c == '_'))
			return false;
	return true;
}

static char *
trim(char *s)
{
	char	   *end;

	while (isspace((unsigned char) *s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char) end[-1]))
		*--end = '\0';
	return s;
}

/*
 * Set one DBA property; false, with a reason that quotes no part of any
 * value, if librdkafka refuses it or eventpipe's guarantees would not hold
 * with it.  where names the item by its position ("item 2 of
 * eventpipe.kafka_options"), for the reason.
 */
static bool
apply_property(rd_kafka_conf_t *conf, char *name, char *value, const char *where,
			   char *errbuf, size_t errbuf_size)
{
	char		rderr[512];
	rd_kafka_conf_res_t res;

	if (name[0] == '\0')
	{
		snprintf(errbuf, errbuf_size, "%s has an empty property name", where);
		return false;
	}
	res = rd_kafka_conf_set(conf, name, value, rderr, sizeof(rderr));
	explicit_bzero(rderr, sizeof(rderr));	/* it may quote the value */
	if (res == RD_KAFKA_CONF_OK)
	{
		/* one that eventpipe's guarantees rest on may not change */
		const char *refusal = eventpipe_kafka_property_refusal(name, value);

		if (refusal == NULL)
			return true;
		snprintf(errbuf, errbuf_size, "property \"%s\" (%s) is refused: %s", name, where, refusal);
		return false;
	}

	/*
	 * An unknown name may be a piece of a value, cut at a comma
	 * ("sasl.password=Part1,Part2=x") or a line of a PEM in the file: named
	 * by position only.  A name librdkafka knows is quoted: were it a piece
	 * of a value, that tells only that the value holds a property's name
	 * (an interceptor may claim other names, hence the check of its
	 * characters too).  librdkafka's reason is never passed on: for a bad
	 * value it often quotes it ("Invalid value "x" for ...", "value 5 is
	 * outside allowed range", dlopen's file name), and the value itself may
	 * be the piece of a secret that followed a comma.
	 */
	if (res == RD_KAFKA_CONF_INVALID && plausible_property_name(name))
		snprintf(errbuf, errbuf_size,
				 "librdkafka rejected the value of property \"%s\" (%s)",
				 name, where);
	else
		snprintf(errbuf, errbuf_size, "%s is not a property librdkafka knows", where);
	return false;
}

bool
eventpipe_apply_kafka_options(rd_kafka_conf_t *conf, const char *options,
							  char *errbuf, size_t errbuf_size)
{
	char	   *copy;
	char	   *item;
	char	   *saveptr = NULL;
	bool		ok = true;
	int			position = 0;

	if (options == NULL || options[0] == '\0')
		return true;

	copy = pstrdup(options);
	for (item = strtok_r(copy, ",", &saveptr); item != NULL && ok;
		 item = strtok_r(NULL, ",", &saveptr))
	{
		char	   *eq = strchr(item, '=');
		char		where[64];

		position++;
		if (trim(item)[0] == '\0')
			continue;			/* tolerate "a=b," and ",," */
		snprintf(where, sizeof(where), "item %d of eventpipe.kafka_options", position);
		if (eq == NULL)
		{
			/* not echoed: it may be the tail of a value that held a comma */
			snprintf(errbuf, errbuf_size, "%s is not of the form key=value", where);
			ok = false;
			break;
		}
		*eq = '\0';
		ok = apply_property(conf, trim(item), trim(eq + 1), where, errbuf, errbuf_size);
	}
	pfree(copy);
	return ok;
}

/*
 * Open eventpipe.kafka_options_file for reading: a regular file, owned by
 * the server's user or root, that other users cannot read (the rule
 * PostgreSQL applies to its TLS key: no access for others, group read only
 * if root owns it).  NULL, with the reason in errbuf, if it cannot be used.
 */
static FILE *
open_options_file(const char *path, char *errbuf, size_t errbuf_size)
{
	/* O_NONBLOCK: a FIFO must not hang the worker; a regular file ignores it */
	int			fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	struct stat st;
	const char *refusal = NULL;
	FILE	   *file;

	if (fd < 0 || fstat(fd, &st) != 0)
	{
		snprintf(errbuf, errbuf_size, "could not read eventpipe.kafka_options_file \"%s\": %s",
				 path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	if (!S_ISREG(st.st_mode))
		refusal = "is not a regular file";
	else if (st.st_uid != geteuid() && st.st_uid != 0)
		refusal = "must be owned by the database server's user or root";
	else if ((st.st_mode & S_IRWXO) != 0 ||
			 (st.st_uid != 0 && (st.st_mode & S_IRWXG) != 0) ||
			 (st.st_uid == 0 && (st.st_mode & (S_IWGRP | S_IXGRP)) != 0))
		refusal = "is open to other users: allow access to its owner only (chmod 600), or group read if root owns it";
	if (refusal != NULL || (file = fdopen(fd, "r")) == NULL)
	{
		snprintf(errbuf, errbuf_size, "eventpipe.kafka_options_file \"%s\" %s", path,
				 refusal ? refusal : strerror(errno));
		close(fd);
		return NULL;
	}
	return file;
}

/* Apply the file's key=value lines ('#' starts a comment line). */
static bool
apply_options_file(rd_kafka_conf_t *conf, const char *path, char *errbuf, size_t errbuf_size)
{
	FILE	   *file = open_options_file(path, errbuf, errbuf_size);
	char		line[8192];
	int			number = 0;
	bool		ok = true;

	if (file == NULL)
		return false;
	while (ok && fgets(line, sizeof(line), file) != NULL)
	{
		size_t		length = strlen(line);
		char	   *item;
		char	   *eq;
		char		where[64];

		number++;
		if (length > 0 && line[length - 1] != '\n' && !feof(file))
		{
			/* its tail would be read as a line of its own: refuse, quoting nothing */
			snprintf(errbuf, errbuf_size,
					 "line %d of eventpipe.kafka_options_file is longer than %d bytes",
					 number, (int) sizeof(line) - 2);
			ok = false;
			break;
		}
		item = trim(line);
		eq = strchr(item, '=');
		if (item[0] == '\0' || item[0] == '#')
			continue;
		if (eq == NULL)
		{
			/* not echoed: it may be a line of a value that held a newline (a PEM) */
			snprintf(errbuf, errbuf_size,
					 "line %d of eventpipe.kafka_options_file is not of the form key=value", number);
			ok = false;
			break;
		}
		*eq = '\0';
		snprintf(where, sizeof(where), "line %d of eventpipe.kafka_options_file", number);
		ok = apply_property(conf, trim(item), trim(eq + 1), where, errbuf, errbuf_size);
	}
	if (ok && ferror(file))
	{
		snprintf(errbuf, errbuf_size, "could not read eventpipe.kafka_options_file \"%s\"", path);
		ok = false;
	}
	explicit_bzero(line, sizeof(line));
	fclose(file);
	return ok;
}

/* The DBA's properties, eventpipe.kafka_options then the file, into conf. */
bool
eventpipe_apply_dba_kafka_options(rd_kafka_conf_t *conf, char *errbuf, size_t errbuf_size)
{
	if (!eventpipe_apply_kafka_options(conf, eventpipe_kafka_options, errbuf, errbuf_size))
		return false;
	if (eventpipe_kafka_options_file[0] == '\0')
		return true;
	return apply_options_file(conf, eventpipe_kafka_options_file, errbuf, errbuf_size);
}

/*
 * What a Kafka handle built now would be built from, as far as the DBA's
 * properties go: the options, and the file's name and identity (inode,
 * size, change time), so that a worker rebuilds its handle when either
 * changes, without reading the file each time it checks.  Palloc'd.
 */
char *
eventpipe_dba_kafka_options_version(void)
{
	struct stat st;

	if (eventpipe_kafka_options_file[0] == '\0')
		return psprintf("%s", eventpipe_kafka_options);
	if (stat(eventpipe_kafka_options_file, &st) != 0)
		return psprintf("%s\n%s\n(%s)", eventpipe_kafka_options, eventpipe_kafka_options_file,
						strerror(errno));
	return psprintf("%s\n%s\n%lu %lld %lld.%09ld %o", eventpipe_kafka_options,
					eventpipe_kafka_options_file, (unsigned long) st.st_ino,
					(long long) st.st_size, (long long) st.st_ctim.tv_sec,
					st.st_ctim.tv_nsec, (unsigned int) st.st_mode);
}

/*
 * The options with every value replaced by "********", for readers who may
 * know which properties are set but not their values.  Returns a string in
 * the current memory context.
 */
const char *
eventpipe_mask_kafka_options(const char *options)
{
	StringInfoData masked;
	char	   *copy = pstrdup(options);
	char	   *item;
	char	   *saveptr = NULL;

	initStringInfo(&masked);
	for (item = strtok_r(copy, ",", &saveptr); item != NULL;
		 item = strtok_r(NULL, ",", &saveptr))
	{
		char	   *eq = strchr(item, '=');

		if (eq == NULL)
			continue;			/* a value's tail after a comma: no name */
		*eq = '\0';
		appendStringInfo(&masked, "%s%s=********", masked.len > 0 ? "," : "", trim(item));
	}
	pfree(copy);
	return masked.data;
}

/*
 * Set one of the workers' own properties (not a DBA's: the value is
 * quoted back).  Returns false, with the reason in errbuf, if refused.
 */
bool
eventpipe_kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value,
						 char *errbuf, size_t errbuf_size)
{
	char		rderr[512];

	if (rd_kafka_conf_set(conf, name, value, rderr, sizeof(rderr)) == RD_KAFKA_CONF_OK)
		return true;
	snprintf(errbuf, errbuf_size, "librdkafka rejected property \"%s\": %s", name, rderr);
	return false;
}
