-- bench/ledger.sql: the dedup ledger's designs, as plain tables in schema
-- lb, and the procedures bench/ledger times them with.  Each run of this
-- file starts schema lb afresh; the figures go to public.ledger_result.
--
--   today  0.4's event_handled: a row per id, one unique index per id form,
--          pruned by DELETE
--   a      the same rows in a partition per day (no index across the
--          partitions: a lookup probes each of them)
--   b      minimal rows (uuid only; texts in a table of their own), a
--          partition per day
--   c      runs: a batch's version 7 UUIDs sorted, cut where their 100-ms
--          bucket (the UUID's time / 100) changes and at 120 ids (so that a
--          row stays under the 2 kB TOAST threshold), packed 16 bytes each
--          in a bytea; indexed by (subscription, bucket); a partition per day
--
-- Ids: version 7 UUIDs ten per ms (the density of 10,000 events/s), each
-- "day" starting a real day later; or texts 'bench-<n>' (bench/consumer's).
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS lb CASCADE;
CREATE SCHEMA lb;
-- The n-th event's id: a version 7 UUID whose time is its day's start plus
-- n / 10 ms (10 events per ms, as at 10,000 events/s), the rest from md5(n).
CREATE FUNCTION lb.v7(n bigint, per_day int) RETURNS uuid LANGUAGE sql IMMUTABLE
RETURN (lpad(to_hex(1764800000000 + (n / per_day) * 86400000 + (n % per_day) / 10), 12, '0')
        || '7' || substr(md5(n::text), 1, 3) || '8' || substr(md5(n::text), 4, 15))::uuid;
CREATE FUNCTION lb.bytes(u uuid) RETURNS bytea LANGUAGE sql IMMUTABLE
RETURN decode(replace(u::text, '-', ''), 'hex');

-- today: 0.4's table
CREATE TABLE lb.today (
    event_text text COLLATE "C", handled_at timestamptz NOT NULL DEFAULT now(),
    subscription_id integer NOT NULL, event_uuid uuid,
    CHECK ((event_uuid IS NULL) <> (event_text IS NULL)));
CREATE INDEX ON lb.today USING brin (handled_at);
CREATE UNIQUE INDEX ON lb.today (subscription_id, event_uuid) WHERE event_uuid IS NOT NULL;
CREATE UNIQUE INDEX ON lb.today (subscription_id, event_text) WHERE event_text IS NOT NULL;

-- (a) today's rows, a partition per day
CREATE TABLE lb.a (
    event_text text COLLATE "C", handled_at timestamptz NOT NULL DEFAULT now(),
    subscription_id integer NOT NULL, event_uuid uuid) PARTITION BY RANGE (handled_at);
CREATE INDEX ON lb.a (subscription_id, event_uuid) WHERE event_uuid IS NOT NULL;
CREATE INDEX ON lb.a (subscription_id, event_text) WHERE event_text IS NOT NULL;

-- (b) minimal rows: uuids and texts apart, a partition per day
CREATE TABLE lb.b_uuid (subscription_id integer NOT NULL, handled_on date NOT NULL,
    event_uuid uuid NOT NULL) PARTITION BY RANGE (handled_on);
CREATE INDEX ON lb.b_uuid (subscription_id, event_uuid);
CREATE TABLE lb.b_text (subscription_id integer NOT NULL, handled_on date NOT NULL,
    event_text text COLLATE "C" NOT NULL) PARTITION BY RANGE (handled_on);
CREATE INDEX ON lb.b_text (subscription_id, event_text);

-- (c) runs: a batch's sorted version 7 UUIDs, cut into runs of at most 120
-- ids spanning at most 100 ms, packed 16 bytes each; a partition per day
CREATE TABLE lb.c (subscription_id integer NOT NULL, handled_on date NOT NULL,
    bucket bigint NOT NULL, ids bytea NOT NULL) PARTITION BY RANGE (handled_on);
CREATE INDEX ON lb.c (subscription_id, bucket);

CREATE PROCEDURE lb.add_day(d int) LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := '2026-01-01 00:00+00'::timestamptz + make_interval(days => d);
    d0 date := date '2026-01-01' + d;
BEGIN
    EXECUTE format('CREATE TABLE lb.a_%s PARTITION OF lb.a FOR VALUES FROM (%L) TO (%L)', d, t0, t0 + interval '1 day');
    EXECUTE format('CREATE TABLE lb.b_uuid_%s PARTITION OF lb.b_uuid FOR VALUES FROM (%L) TO (%L)', d, d0, d0 + 1);
    EXECUTE format('CREATE TABLE lb.b_text_%s PARTITION OF lb.b_text FOR VALUES FROM (%L) TO (%L)', d, d0, d0 + 1);
    EXECUTE format('CREATE TABLE lb.c_%s PARTITION OF lb.c FOR VALUES FROM (%L) TO (%L)', d, d0, d0 + 1);
END $$;

-- a batch's ids, sorted: uuids (version 7) and texts
CREATE FUNCTION lb.batch_uuids(b bigint, size int, per_day int) RETURNS uuid[] LANGUAGE sql
RETURN ARRAY(SELECT lb.v7(n, per_day) FROM generate_series(b * size, b * size + size - 1) AS n ORDER BY 1);
CREATE FUNCTION lb.batch_texts(b bigint, size int) RETURNS text[] LANGUAGE sql
RETURN ARRAY(SELECT t FROM generate_series(b * size, b * size + size - 1) AS n, LATERAL (SELECT ('bench-' || n) COLLATE "C" AS t) AS x ORDER BY t);

-- a uuid's 100-ms bucket: its time (the first 48 bits) / 100
CREATE FUNCTION lb.bucket(u uuid) RETURNS bigint LANGUAGE sql IMMUTABLE
RETURN ('x' || substr(replace(u::text, '-', ''), 1, 12))::bit(48)::bigint / 100;

-- the runs of sorted uuids: cut at 120 ids and where the bucket changes
CREATE FUNCTION lb.runs(u uuid[]) RETURNS TABLE (bucket bigint, ids bytea) LANGUAGE sql AS $$
    SELECT b, string_agg(lb.bytes(id), '' ORDER BY id)
      FROM (SELECT id, lb.bucket(id) AS b, (row_number() OVER (PARTITION BY lb.bucket(id) ORDER BY id) - 1) / 120 AS part
              FROM unnest(u) AS id) AS x
     GROUP BY b, part
$$;

-- Fill: days x per_day events, batch by batch, each day's rows in its
-- partition (today's table: handled_at of that day).  Times each batch's
-- insert.
CREATE PROCEDURE lb.fill(design text, kind text, days int, per_day int, size int) LANGUAGE plpgsql AS $$
DECLARE
    b bigint; t timestamptz; d int; u uuid[]; x text[]; total numeric := 0; n int := 0;
BEGIN
    FOR b IN 0 .. (days::bigint * per_day / size) - 1 LOOP
        d := (b * size / per_day)::int;
        IF kind = 'uuid7' THEN u := lb.batch_uuids(b, size, per_day); x := NULL;
        ELSE x := lb.batch_texts(b, size); u := NULL; END IF;
        t := clock_timestamp();
        IF design = 'today' THEN
            INSERT INTO lb.today (subscription_id, event_uuid, event_text, handled_at)
            SELECT 1, i.id, i.text, '2026-01-01 12:00+00'::timestamptz + make_interval(days => d)
              FROM ROWS FROM (unnest(u), unnest(x)) AS i(id, text);
        ELSIF design = 'a' THEN
            INSERT INTO lb.a (subscription_id, event_uuid, event_text, handled_at)
            SELECT 1, i.id, i.text, '2026-01-01 12:00+00'::timestamptz + make_interval(days => d)
              FROM ROWS FROM (unnest(u), unnest(x)) AS i(id, text);
        ELSIF design = 'b' AND kind = 'uuid7' THEN
            INSERT INTO lb.b_uuid SELECT 1, date '2026-01-01' + d, i FROM unnest(u) AS i;
        ELSIF design = 'b' THEN
            INSERT INTO lb.b_text SELECT 1, date '2026-01-01' + d, i FROM unnest(x) AS i;
        ELSIF design = 'c' THEN
            -- the uuids' conversion to runs is the worker's work in C: not timed
            CREATE TEMP TABLE IF NOT EXISTS runs_now (bucket bigint, ids bytea);
            TRUNCATE runs_now;
            INSERT INTO runs_now SELECT * FROM lb.runs(u);
            t := clock_timestamp();
            INSERT INTO lb.c SELECT 1, date '2026-01-01' + d, r.bucket, r.ids FROM runs_now AS r;
        END IF;
        total := total + extract(epoch FROM clock_timestamp() - t) * 1000; n := n + 1;
        COMMIT;
    END LOOP;
    INSERT INTO public.ledger_result VALUES (design, kind, 'insert ms/batch', round(total / n, 2));
    COMMIT;
END $$;

-- Lookup of batches of `size` ids: those of a batch of the middle day (all
-- duplicates); the worker sends them sorted, at once.
CREATE PROCEDURE lb.lookup(design text, kind text, days int, per_day int, size int) LANGUAGE plpgsql AS $$
DECLARE
    b bigint; t timestamptz; u uuid[]; x text[]; bu bytea[]; bk bigint[]; found int; fetched bigint; total numeric := 0; fetch_total numeric := 0; k int;
BEGIN
    FOR k IN 1 .. 20 LOOP
        b := ((days::bigint * per_day / size) / 2 + k * 7) % (days::bigint * per_day / size);
        u := lb.batch_uuids(b, size, per_day); x := lb.batch_texts(b, size);
        t := clock_timestamp();
        IF design = 'today' AND kind = 'uuid7' THEN
            SELECT count(*) INTO found FROM lb.today WHERE subscription_id = 1 AND event_uuid = ANY (u);
        ELSIF design = 'today' THEN
            SELECT count(*) INTO found FROM lb.today WHERE subscription_id = 1 AND event_text = ANY (x);
        ELSIF design = 'a' AND kind = 'uuid7' THEN
            SELECT count(*) INTO found FROM unnest(u) AS i(id) WHERE EXISTS (SELECT FROM lb.a AS h WHERE h.subscription_id = 1 AND h.event_uuid = i.id);
        ELSIF design = 'a' THEN
            SELECT count(*) INTO found FROM unnest(x) AS i(id) WHERE EXISTS (SELECT FROM lb.a AS h WHERE h.subscription_id = 1 AND h.event_text = i.id);
        ELSIF design = 'b' AND kind = 'uuid7' THEN
            SELECT count(*) INTO found FROM unnest(u) AS i(id) WHERE EXISTS (SELECT FROM lb.b_uuid AS h WHERE h.subscription_id = 1 AND h.event_uuid = i.id);
        ELSIF design = 'b' THEN
            SELECT count(*) INTO found FROM unnest(x) AS i(id) WHERE EXISTS (SELECT FROM lb.b_text AS h WHERE h.subscription_id = 1 AND h.event_text = i.id);
        ELSE
            -- the rows of the batch's buckets: reading them alone (what
            -- the worker's statement will do: it binary-searches them in
            -- C), then matching their 16-byte slices in SQL (an upper
            -- bound of that search), which reads them again
            bu := ARRAY(SELECT lb.bytes(i) FROM unnest(u) AS i);
            bk := ARRAY(SELECT DISTINCT lb.bucket(i) FROM unnest(u) AS i);
            t := clock_timestamp();
            SELECT sum(length(c.ids)) INTO fetched FROM lb.c AS c
             WHERE c.subscription_id = 1 AND c.bucket = ANY (bk);
            fetch_total := fetch_total + extract(epoch FROM clock_timestamp() - t) * 1000;
            t := clock_timestamp();
            SELECT count(*) INTO found
              FROM (SELECT substring(c.ids FROM s * 16 + 1 FOR 16) AS id
                      FROM lb.c AS c, generate_series(0, length(c.ids) / 16 - 1) AS s
                     WHERE c.subscription_id = 1 AND c.bucket = ANY (bk)) AS held
              JOIN unnest(bu) AS asked(id) USING (id);
        END IF;
        IF found <> size THEN RAISE 'lookup found % of %', found, size; END IF;
        total := total + extract(epoch FROM clock_timestamp() - t) * 1000;
    END LOOP;
    INSERT INTO public.ledger_result VALUES (design, kind, 'lookup ms/batch', round(total / 20, 2));
    IF design = 'c' THEN
        INSERT INTO public.ledger_result VALUES (design, kind, 'lookup fetch ms/batch', round(fetch_total / 20, 2));
    END IF;
END $$;

CREATE FUNCTION lb.size(rel regclass) RETURNS bigint LANGUAGE sql
RETURN (SELECT coalesce(sum(pg_total_relation_size(p.relid)), pg_total_relation_size(rel)) FROM pg_partition_tree(rel) AS p);

-- Forget the first day: today's DELETE (then VACUUM, run by the caller),
-- or dropping the day's partitions.
CREATE PROCEDURE lb.forget(design text, kind text, per_day int) LANGUAGE plpgsql AS $$
DECLARE t timestamptz := clock_timestamp(); lsn pg_lsn := pg_current_wal_insert_lsn(); n bigint;
BEGIN
    IF design = 'today' THEN
        DELETE FROM lb.today WHERE handled_at < '2026-01-02 00:00+00';
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n <> per_day THEN RAISE 'deleted % rows', n; END IF;
    ELSIF design = 'a' THEN DROP TABLE lb.a_0;
    ELSIF design = 'b' AND kind = 'uuid7' THEN DROP TABLE lb.b_uuid_0;
    ELSIF design = 'b' THEN DROP TABLE lb.b_text_0;
    ELSE DROP TABLE lb.c_0;
    END IF;
    COMMIT;
    INSERT INTO public.ledger_result VALUES
        (design, kind, 'forget a day ms', round(extract(epoch FROM clock_timestamp() - t) * 1000, 1)),
        (design, kind, 'forget a day WAL bytes', pg_wal_lsn_diff(pg_current_wal_insert_lsn(), lsn));
END $$;
