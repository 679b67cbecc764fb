# eventpipe: PGXS build.  `make && make install` builds and installs the
# extension into the PostgreSQL that pg_config names; scripts/test runs the
# test suites.

EXTENSION = eventpipe
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" $(EXTENSION).control)

MODULE_big = eventpipe
OBJS = \
	extension/eventpipe.o \
	extension/guc.o \
	extension/kafka_options.o \
	extension/shmem.o \
	extension/commit_wakeup.o \
	extension/database_drop.o \
	extension/topic_name.o \
	extension/event_headers.o \
	extension/publish.o \
	extension/relay_stats.o \
	worker/launcher.o \
	worker/relay_worker.o \
	worker/outbox.o \
	worker/kafka_producer.o \
	worker/kafka_log.o

DATA = sql/$(EXTENSION)--$(EXTVERSION).sql

# pg_regress suites live in sql/ and expected/; scripts/test runs them with
# a temporary instance that preloads the library (test/preload.conf), and
# the not_preloaded suite with one that does not.
REGRESS = publish relay_stats dead_letters
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
