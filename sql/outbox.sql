-- The outbox as a sender (crmguard-relay) sees it: a claim is a lease that
-- expires, only the lease holder reports, failures are retried with backoff
-- and jitter up to a limit, then the message is dead with its last error.
CREATE FUNCTION public.regress_outbox_try(query text) RETURNS text
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE query;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, 'message -?[0-9]+', 'message N');
END
$$;
GRANT EXECUTE ON FUNCTION public.regress_outbox_try(text) TO PUBLIC;

-- a sender's database role needs one GRANT
CREATE ROLE regress_relay LOGIN;
GRANT crmguard_relay TO regress_relay;
CREATE ROLE regress_outbox_stranger;

INSERT INTO crmguard.outbox (channel, recipient, subject, body)
SELECT 'regress_mail', 'customer' || i || '@example.com', 'Message ' || i, 'body ' || i
  FROM generate_series(1, 4) i;
SELECT min(id) AS m1 FROM crmguard.outbox WHERE channel = 'regress_mail' \gset
SELECT state, attempts, idempotency_key IS NOT NULL AS has_key, count(*)
  FROM crmguard.outbox WHERE channel = 'regress_mail' GROUP BY 1, 2, 3;

-- the retry policy (superuser settings; a DBA may set them per role)
SET crmguard.outbox_retry_delay = '1s';
SET crmguard.outbox_max_attempts = 3;
-- a policy with no attempt at all would leave every message pending forever
SELECT public.regress_outbox_try('SET LOCAL crmguard.outbox_max_attempts = 0') AS zero_attempts;

-- Attack: relay_sets_its_own_retry_policy -- the sender's role cannot give
-- itself endless retries, or one attempt per message, or no backoff
SET ROLE regress_relay;
SELECT public.regress_outbox_try('SET LOCAL crmguard.outbox_max_attempts = 1000') AS relay_sets_max_attempts;
SELECT public.regress_outbox_try('SET LOCAL crmguard.outbox_retry_delay = ''10ms''') AS relay_sets_retry_delay;
SELECT current_setting('crmguard.outbox_max_attempts') AS max_attempts,
       current_setting('crmguard.outbox_retry_delay') AS retry_delay;
RESET ROLE;

\set lease_a '''aaaaaaaa-0000-4000-8000-000000000001'''
\set lease_b '''bbbbbbbb-0000-4000-8000-000000000002'''
SET ROLE regress_relay;
-- sender A leases two messages, sender B gets the other two: never the same
SELECT id - :m1 AS n, recipient, attempts, lease = :lease_a AS held_by_a, lease_until > now() AS leased
  FROM crmguard.claim_outbox('regress_mail', 2, :lease_a, '1 hour') ORDER BY id;
SELECT id - :m1 AS n, lease = :lease_b AS held_by_b
  FROM crmguard.claim_outbox('regress_mail', 10, :lease_b, '1 hour') ORDER BY id;
SELECT count(*) AS left_for_a_third FROM crmguard.claim_outbox('regress_mail', 10, gen_random_uuid());

-- Attack: a sender reports a message it does not hold (it never claimed it)
SELECT public.regress_outbox_try(format('SELECT crmguard.mark_sent(%s, NULL, %L)', :m1, :lease_b)) AS b_reports_a_message;
SELECT public.regress_outbox_try(format('SELECT crmguard.mark_sent(%s)', :m1)) AS report_without_lease;
SELECT public.regress_outbox_try('SELECT crmguard.mark_sent(-1, NULL, gen_random_uuid())') AS unknown_message;

-- the holder reports: sent once, and only once
SELECT crmguard.mark_sent(:m1, NULL, :lease_a) AS first_report;
SELECT public.regress_outbox_try(format('SELECT crmguard.mark_sent(%s, NULL, %L)', :m1, :lease_a)) AS second_report;
RESET ROLE;
SELECT state, sent_at IS NOT NULL AS sent, body IS NULL AS body_erased, lease IS NULL AS lease_ended
  FROM crmguard.outbox WHERE id = :m1;

-- a failure: retried after base * 2^(attempt - 1) less up to half (jitter)
-- (t0 and t1 bracket the report: next_attempt_at - delay lies between them)
SET ROLE regress_relay;
SELECT clock_timestamp() AS t0 \gset
SELECT crmguard.mark_sent(:m1 + 1, 'SMTP 451 try again later', :lease_a) AS after_failure;
SELECT clock_timestamp() AS t1 \gset
RESET ROLE;
SELECT state, attempts, last_error, lease IS NULL AS lease_ended,
       next_attempt_at - :'t0' >= interval '0.5 s' AND next_attempt_at - :'t1' <= interval '1 s' AS backoff_1s
  FROM crmguard.outbox WHERE id = :m1 + 1;
SET ROLE regress_relay;
SELECT count(*) AS claimable_during_backoff FROM crmguard.claim_outbox('regress_mail', 10, :lease_a);
SELECT pg_sleep(1.1);
SELECT id - :m1 AS n, attempts FROM crmguard.claim_outbox('regress_mail', 10, :lease_a);
SELECT clock_timestamp() AS t0 \gset
SELECT crmguard.mark_sent(:m1 + 1, 'SMTP 451 try again later', :lease_a) AS second_failure;
SELECT clock_timestamp() AS t1 \gset
RESET ROLE;
SELECT attempts, next_attempt_at - :'t0' >= interval '1 s' AND next_attempt_at - :'t1' <= interval '2 s' AS backoff_2s
  FROM crmguard.outbox WHERE id = :m1 + 1;
-- the last attempt fails: the message is dead with its last error
UPDATE crmguard.outbox SET next_attempt_at = now() WHERE id = :m1 + 1;
SET ROLE regress_relay;
SELECT id - :m1 AS n, attempts FROM crmguard.claim_outbox('regress_mail', 10, :lease_a);
SELECT crmguard.mark_sent(:m1 + 1, 'SMTP 550 mailbox unavailable', :lease_a) AS third_failure;
SELECT count(*) AS dead_is_never_claimed FROM crmguard.claim_outbox('regress_mail', 10, :lease_a);
RESET ROLE;
SELECT state, attempts, last_error, body IS NOT NULL AS body_kept_for_the_dba
  FROM crmguard.outbox WHERE id = :m1 + 1;

-- a stopping sender gives a message back untried
SET ROLE regress_relay;
SELECT crmguard.release_outbox(:m1 + 2, :lease_b);
SELECT public.regress_outbox_try(format('SELECT crmguard.release_outbox(%s, %L)', :m1 + 3, :lease_a)) AS release_of_another;
RESET ROLE;
SELECT id - :m1 AS n, attempts, lease IS NULL AS free
  FROM crmguard.outbox WHERE id IN (:m1 + 2, :m1 + 3) ORDER BY id;

-- Attack: a crashed sender's lease runs out; the next sender takes the
-- message with the same idempotency key, and the first can no longer report
SET ROLE regress_relay;
SELECT id - :m1 AS n FROM crmguard.claim_outbox('regress_mail', 1, :lease_a, '100 ms');
RESET ROLE;
SELECT idempotency_key AS key_before FROM crmguard.outbox WHERE id = :m1 + 2 \gset
SELECT pg_sleep(0.2);
SET ROLE regress_relay;
SELECT id - :m1 AS n, attempts, idempotency_key = :'key_before' AS same_key
  FROM crmguard.claim_outbox('regress_mail', 1, :lease_b, '1 hour');
SELECT public.regress_outbox_try(format('SELECT crmguard.mark_sent(%s, NULL, %L)', :m1 + 2, :lease_a)) AS crashed_sender_reports;
SELECT crmguard.mark_sent(:m1 + 2, NULL, :lease_b) AS next_sender_reports;

-- a sender working in one session may leave the lease out (the session's own)
RESET ROLE;
INSERT INTO crmguard.outbox (channel, recipient, body) VALUES ('regress_mail', 'one@example.com', 'one session');
SET ROLE regress_relay;
SELECT id - :m1 AS n FROM crmguard.claim_outbox('regress_mail', 1) \gset s_
SELECT crmguard.mark_sent(:m1 + :s_n) AS session_report;
SELECT public.regress_outbox_try('SELECT crmguard.claim_outbox(''regress_mail'', 1, NULL, ''0 s'')') AS zero_lease;
-- the relay's role reads nothing else
SELECT public.regress_outbox_try('SELECT count(*) FROM crmguard.outbox') AS read_the_table;
RESET ROLE;

-- a message whose sender died on every attempt is dead when the last lease runs out
INSERT INTO crmguard.outbox (channel, recipient, body, attempts, lease, lease_until)
VALUES ('regress_mail', 'poison@example.com', 'crashes every relay', 3, gen_random_uuid(), now() - interval '1 s');
SELECT count(*) AS claimed FROM crmguard.claim_outbox('regress_mail', 10);
SELECT state, last_error FROM crmguard.outbox WHERE recipient = 'poison@example.com';

-- Attack: a role without the grant claims the outbox
SET ROLE regress_outbox_stranger;
SELECT public.regress_outbox_try('SELECT crmguard.claim_outbox(''regress_mail'', 10)') AS stranger_claims;
SELECT public.regress_outbox_try('SELECT crmguard.mark_sent(1)') AS stranger_reports;
RESET ROLE;

RESET crmguard.outbox_retry_delay;
RESET crmguard.outbox_max_attempts;
DELETE FROM crmguard.outbox WHERE channel = 'regress_mail';
DROP ROLE regress_relay;
DROP ROLE regress_outbox_stranger;
DROP FUNCTION public.regress_outbox_try(text);
