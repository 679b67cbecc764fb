-- eventpipe 0.1 -> 0.2: table capture and the consumer worker.
--
-- There is no separate install script for 0.2: CREATE EXTENSION eventpipe
-- runs eventpipe--0.1.sql and then this file, so a fresh install and an
-- upgraded one are the same by construction.  Every later version adds one
-- upgrade script the same way.

\echo Use "ALTER EXTENSION eventpipe UPDATE TO '0.2'" to load this file. \quit

------------------------------------------------------------------------------
-- Table capture: capture(), uncapture(), eventpipe.captures
------------------------------------------------------------------------------



------------------------------------------------------------------------------
-- Consumer: subscriptions, rules, handlers, dedup ledger, offsets, dead letters
------------------------------------------------------------------------------



