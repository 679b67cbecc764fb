-- Without shared_preload_libraries the extension refuses to load, with a hint.
CREATE EXTENSION eventpipe;
SELECT count(*) AS installed FROM pg_extension WHERE extname = 'eventpipe';
