-- Without shared_preload_libraries the extension refuses to load, with a hint.
-- (No context: from PostgreSQL 18 on the library is loaded, and refuses,
-- while the script creates its first C function.)
\set SHOW_CONTEXT never
CREATE EXTENSION eventpipe;
\set SHOW_CONTEXT errors
SELECT count(*) AS installed FROM pg_extension WHERE extname = 'eventpipe';
