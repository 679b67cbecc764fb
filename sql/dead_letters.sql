-- Dead letters: retry_dead() puts chosen dead events back in the outbox,
-- with their event ids, at the end of the line, attempts reset.
CREATE EXTENSION eventpipe;

INSERT INTO eventpipe.dead_letters
    (id, event_id, topic, key, payload, headers, event_type, created_at, attempts, reason)
VALUES
    (11, '00000000-0000-4000-8000-000000000011', 'order-events', 'o1', '{"n": 1}', NULL,
     'PaymentCompleted', '2026-01-01 10:00+00', 1, 'Broker: Message size too large (MSG_SIZE_TOO_LARGE)'),
    (12, '00000000-0000-4000-8000-000000000012', 'order-events', 'o2', '{"n": 2}', '{"h": "v"}',
     'PaymentCompleted', '2026-01-01 10:01+00', 10, 'gave up after 10 attempts: Local: Unknown topic (_UNKNOWN_TOPIC)'),
    (13, '00000000-0000-4000-8000-000000000013', 'catalog-events', 'p1', '{"n": 3}', NULL,
     'LikeChanged', '2026-01-01 10:02+00', 1, 'Broker: Invalid topic (TOPIC_EXCEPTION)'),
    (14, '00000000-0000-4000-8000-000000000014', 'catalog-events', 'p2', '{"n": 4}', NULL,
     'LikeChanged', '2026-01-01 10:03+00', 1, 'Broker: Invalid topic (TOPIC_EXCEPTION)');

-- nothing matches: nothing moves
SELECT eventpipe.retry_dead(ARRAY[999]::bigint[]);
SELECT eventpipe.retry_dead(topic => 'no-such-topic');

-- by id
SELECT eventpipe.retry_dead(ARRAY[12]::bigint[]);
-- by topic
SELECT eventpipe.retry_dead(topic => 'catalog-events');
SELECT id FROM eventpipe.dead_letters ORDER BY id;
-- what came back keeps its event id, payload, headers, type and time; attempts start over
SELECT event_id, topic, key, payload, headers, event_type, created_at, attempts,
       next_attempt_at, last_error
  FROM eventpipe.outbox ORDER BY id;
-- all the rest
SELECT eventpipe.retry_dead();
SELECT count(*) AS dead_left FROM eventpipe.dead_letters;
SELECT key FROM eventpipe.outbox ORDER BY id;

-- only the owner (or a superuser) may do it, or a role granted EXECUTE,
-- which needs no rights on the tables
CREATE ROLE ep_someone;
GRANT USAGE ON SCHEMA eventpipe TO ep_someone;
SET ROLE ep_someone;
SELECT eventpipe.retry_dead();
SELECT count(*) FROM eventpipe.dead_letters;
RESET ROLE;
INSERT INTO eventpipe.dead_letters
    (id, event_id, topic, key, payload, event_type, created_at, attempts, reason)
VALUES (15, '00000000-0000-4000-8000-000000000015', 'order-events', 'o15', '{}', 'T',
        '2026-01-01 10:00+00', 1, 'Broker: Invalid topic (TOPIC_EXCEPTION)');
GRANT EXECUTE ON FUNCTION eventpipe.retry_dead(bigint[], text) TO ep_someone;
SET ROLE ep_someone;
SELECT eventpipe.retry_dead(ARRAY[15]::bigint[]);
SELECT count(*) FROM eventpipe.outbox;
RESET ROLE;
SELECT key FROM eventpipe.outbox ORDER BY id DESC LIMIT 1;
DELETE FROM eventpipe.outbox WHERE key = 'o15';
REVOKE EXECUTE ON FUNCTION eventpipe.retry_dead(bigint[], text) FROM ep_someone;
REVOKE USAGE ON SCHEMA eventpipe FROM ep_someone;
DROP ROLE ep_someone;

-- TRUNCATE of dead letters not sent again is refused, as for the outbox
INSERT INTO eventpipe.dead_letters
    (id, event_id, topic, key, payload, event_type, created_at, attempts, reason)
VALUES (21, '00000000-0000-4000-8000-000000000021', 'order-events', 'o21', '{}', 'T',
        '2026-01-01 10:00+00', 5, 'Broker: Unknown topic or partition');
TRUNCATE eventpipe.dead_letters;
DELETE FROM eventpipe.dead_letters;
TRUNCATE eventpipe.dead_letters;

DROP EXTENSION eventpipe;
