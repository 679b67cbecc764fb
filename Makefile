# eventpipe: PGXS build.  `make && make install` builds and installs the
# extension into the PostgreSQL that pg_config names; scripts/test runs the
# test suites.

EXTENSION = eventpipe

MODULE_big = eventpipe
OBJS = \
	extension/eventpipe.o \
	extension/compat.o \
	extension/guc.o \
	extension/kafka_options.o \
	extension/kafka_guarantees.o \
	extension/shmem.o \
	extension/commit_wakeup.o \
	extension/object_access.o \
	extension/database_slots.o \
	extension/owned_objects.o \
	extension/as_caller.o \
	extension/topic_name.o \
	extension/event_headers.o \
	extension/outbox_insert.o \
	extension/publish.o \
	extension/capture.o \
	extension/capture_trigger.o \
	extension/snapshot_condition.o \
	extension/snapshot_request.o \
	extension/subscriptions_trigger.o \
	extension/relay_pause_trigger.o \
	extension/own_table_trigger.o \
	extension/consumer_partitions.o \
	extension/stats.o \
	worker/launcher.o \
	worker/database_manager.o \
	worker/worker_loop.o \
	worker/relay/relay_starter.o \
	worker/relay/relay_worker.o \
	worker/relay/relay_pipeline.o \
	worker/relay/relay_slot.o \
	worker/relay/outbox.o \
	worker/relay/outbox_delete.o \
	worker/relay/outbox_scan.o \
	worker/relay/claim_start.o \
	worker/relay/outbox_row.o \
	worker/relay/payload_text.o \
	worker/relay/relay_transaction.o \
	worker/relay/relay_isolation.o \
	worker/relay/relay_progress.o \
	worker/kafka/kafka_client.o \
	worker/kafka/kafka_log.o \
	worker/kafka/kafka_statistics.o \
	worker/kafka/kafka_producer.o \
	worker/kafka/kafka_transaction.o \
	worker/kafka/kafka_consumer.o \
	worker/kafka/kafka_consumer_offsets.o \
	worker/consumer/consumer_manager.o \
	worker/consumer/consumer_worker.o \
	worker/consumer/consumer_control.o \
	worker/consumer/consumer_message.o \
	worker/consumer/payload_fields.o \
	worker/consumer/consumer_apply.o \
	worker/consumer/consumer_catalog.o \
	worker/consumer/consumer_ledger.o \
	worker/consumer/consumer_handlers.o \
	worker/consumer/consumer_row_locks.o \
	worker/consumer/consumer_metrics.o \
	worker/consumer/mirror_events.o \
	worker/consumer/mirror_target.o \
	worker/consumer/consumer_mirrors.o \
	worker/consumer/consumer_store.o \
	worker/consumer/consumer_sql.o \
	worker/consumer/user_code.o \
	worker/snapshot/snapshot_starter.o \
	worker/snapshot/snapshot_worker.o \
	worker/snapshot/snapshot_chunk.o

# The extension's SQL scripts live in extension/sql/, apart from the
# pg_regress suites.  CREATE EXTENSION runs the install script of
# default_version (0.4) alone; ALTER EXTENSION UPDATE runs the upgrade scripts
# from 0.1's install script on (sql/upgrade.sql checks that both end alike).
DATA = $(addprefix extension/sql/$(EXTENSION)--,0.4.sql \
	0.1.sql 0.1--0.2.sql 0.2--0.3.sql 0.3--0.4.sql)

# The pg_regress suites: sql/*.sql, expected/*.out.  After `make install`,
# as a user other than root (pg_regress starts a server):
#   make installcheck                 REGRESS, in a temporary instance that
#                                     preloads the library
#   make installcheck-not-preloaded   REGRESS_NOT_PRELOADED, in a temporary
#                                     instance that does not
# Results, diffs, logs and the instances go to REGRESS_OUTDIR (default: here)
# and NOT_PRELOADED_OUTDIR.  scripts/test runs both targets.
REGRESS = publish reserved_prefix relay_stats dead_letters upgrade capture snapshot consumer_api mirror_api operations
REGRESS_NOT_PRELOADED = not_preloaded
REGRESS_OUTDIR = .
NOT_PRELOADED_OUTDIR = $(REGRESS_OUTDIR)/not_preloaded
REGRESS_OPTS = --temp-config=$(srcdir)/sql/regress_preload.conf \
	--temp-instance=$(REGRESS_OUTDIR)/tmp_check --outputdir=$(REGRESS_OUTDIR)
EXTRA_CLEAN = $(NOT_PRELOADED_OUTDIR)

# -Wextra's unused-parameter warning is off: callback signatures (hooks,
# librdkafka, fmgr) fix parameters we do not always need.
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Werror
SHLIB_LINK = -lrdkafka

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: every object is rebuilt when a header
# changes (shared-memory layouts must agree across files).  Headers are
# included by their path from the top folder (PGXS puts -I$(srcdir) first).
$(OBJS): $(wildcard extension/*.h worker/*.h worker/*/*.h)

# Objects compiled against one PostgreSQL must not be linked into a library
# for another (scripts/test --pg N switches between them): the stamp names the
# PGXS of the last build, is rewritten only when that changes, and every
# object depends on it.
BUILD_STAMP = .build/pgxs.stamp
$(OBJS) $(OBJS:.o=.bc): $(BUILD_STAMP)
$(BUILD_STAMP): FORCE
	@mkdir -p $(@D)
	@echo '$(PGXS)' | cmp -s - $@ || echo '$(PGXS)' >$@
.PHONY: FORCE

.PHONY: installcheck-not-preloaded
installcheck-not-preloaded:
	$(pg_regress_installcheck) --temp-instance=$(NOT_PRELOADED_OUTDIR)/tmp_check \
		--outputdir=$(NOT_PRELOADED_OUTDIR) --dbname=$(CONTRIB_TESTDB) $(REGRESS_NOT_PRELOADED)

# The suite lists, for scripts/test.
.PHONY: print-regress print-regress-not-preloaded
print-regress:
	@echo $(REGRESS)
print-regress-not-preloaded:
	@echo $(REGRESS_NOT_PRELOADED)
