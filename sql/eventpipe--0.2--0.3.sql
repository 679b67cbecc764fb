-- eventpipe 0.2 -> 0.3: operations (pg_stat_consumer, replay(), pause and
-- resume, consumer dead letters retried), the consumer's ledger, and the
-- relay's Kafka statistics.
--
-- Like 0.2, there is no separate install script: CREATE EXTENSION eventpipe
-- runs eventpipe--0.1.sql, then the 0.1--0.2 and 0.2--0.3 scripts.

\echo Use "ALTER EXTENSION eventpipe UPDATE TO '0.3'" to load this file. \quit

------------------------------------------------------------------------------
-- Consumer operations: pg_stat_consumer, replay(), pause()/resume(),
-- retry_dead for consumer dead letters
------------------------------------------------------------------------------

------------------------------------------------------------------------------
-- Consumer ledger
------------------------------------------------------------------------------

------------------------------------------------------------------------------
-- Kafka client statistics
------------------------------------------------------------------------------
