# eventpipe: PGXS build.  `make && make install` builds and installs the
# extension into the PostgreSQL that pg_config names; scripts/test runs the
# test suites.

EXTENSION = eventpipe

MODULE_big = eventpipe
OBJS = \
	extension/eventpipe.o \
	extension/guc.o \
	extension/kafka_options.o \
	extension/shmem.o \
	extension/commit_wakeup.o \
	extension/database_drop.o \
	extension/owned_objects.o \
	extension/as_caller.o \
	extension/topic_name.o \
	extension/event_headers.o \
	extension/outbox_insert.o \
	extension/publish.o \
	extension/capture.o \
	extension/capture_trigger.o \
	extension/relay_stats.o \
	extension/subscriptions_trigger.o \
	extension/relay_pause_trigger.o \
	extension/consumer_stats.o \
	extension/consumer_partitions.o \
	extension/stat_reset.o \
	extension/kafka_statistics_reader.o \
	worker/launcher.o \
	worker/worker_loop.o \
	worker/relay_worker.o \
	worker/relay_pipeline.o \
	worker/outbox.o \
	worker/kafka_producer.o \
	worker/kafka_log.o \
	worker/kafka_client.o \
	worker/kafka_statistics.o \
	worker/consumer_manager.o \
	worker/consumer_worker.o \
	worker/consumer_message.o \
	worker/payload_fields.o \
	worker/consumer_apply.o \
	worker/user_code.o \
	worker/kafka_consumer.o \
	worker/consumer_control.o

# The extension's SQL scripts live in extension/sql/, apart from the
# pg_regress suites.  CREATE EXTENSION runs the install script of
# default_version (0.4) alone; ALTER EXTENSION UPDATE runs the upgrade scripts
# from 0.1's install script on (sql/upgrade.sql checks that both end alike).
DATA = $(addprefix extension/sql/$(EXTENSION)--,0.4.sql \
	0.1.sql 0.1--0.2.sql 0.2--0.3.sql 0.3--0.4.sql)

# pg_regress suites live in sql/ and expected/; scripts/test runs them with
# a temporary instance that preloads the library (test/preload.conf), and
# the not_preloaded suite with one that does not.
REGRESS = publish relay_stats dead_letters upgrade capture consumer_api operations
REGRESS_NOT_PRELOADED = not_preloaded

# -Wextra's unused-parameter warning is off: callback signatures (hooks,
# librdkafka, fmgr) fix parameters we do not always need.
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Werror
SHLIB_LINK = -lrdkafka

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: every object is rebuilt when a header
# changes (shared-memory layouts must agree across files).
$(OBJS): $(wildcard extension/*.h worker/*.h)

# The suite lists, for scripts/test.
.PHONY: print-regress print-regress-not-preloaded
print-regress:
	@echo $(REGRESS)
print-regress-not-preloaded:
	@echo $(REGRESS_NOT_PRELOADED)
