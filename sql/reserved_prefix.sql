-- The prefix eventpipe. is reserved: a misspelt setting is an error, not a
-- new placeholder that silently does nothing.  PostgreSQL 14 cannot reserve
-- a prefix and takes the name as a placeholder: its output is
-- expected/reserved_prefix_1.out (docs/installation.md says so).
SET eventpipe.no_such_setting = 1;
SHOW eventpipe.no_such_setting;
