-- The prefix eventpipe. is reserved: a misspelt setting is an error, not a
-- new placeholder that silently does nothing.  PostgreSQL 14 cannot reserve
-- a prefix and takes the name as a placeholder: its output is
-- expected/reserved_prefix_1.out (docs/installation.md says so), which says
-- first that it is 14's, so that no later version can pass with it.
SELECT current_setting('server_version_num')::integer < 150000 AS before_15;
SET eventpipe.no_such_setting = 1;
SHOW eventpipe.no_such_setting;
