--
-- Retention: purge_history lets go of sent messages, used and expired OTP
-- challenges and old recipient changes; never a live challenge, a pending
-- message, or a recipient change still inside a rule's recipient_cooldown
--
CREATE ROLE regress_ret_admin;
CREATE ROLE regress_ret_rep;
CREATE TABLE public.regress_parcel (id bigint PRIMARY KEY, phone text, status text NOT NULL DEFAULT 'Out');
CREATE TABLE public.regress_box (id bigint PRIMARY KEY, phone text, status text NOT NULL DEFAULT 'Out');
SELECT crmguard.create_otp_rule('Parcel OTP', 'public.regress_parcel', 'status', '{Delivered}', 'phone',
                                recipient_cooldown => '60 days') > 0 AS parcel_rule;
SELECT crmguard.create_otp_rule('Box OTP', 'public.regress_box', 'status', '{Delivered}', 'phone',
                                recipient_cooldown => '1 hour') > 0 AS box_rule;

-- history of known ages, as the guard, request_otp and the relay leave it
CREATE TEMP TABLE ids (what text PRIMARY KEY, id bigint);
WITH rule AS (SELECT id FROM crmguard.otp_rule WHERE rule_name = 'Parcel OTP'),
     c (what, consumed, expires) AS (VALUES
        ('used 100 days ago',    now() - interval '100 days', now() - interval '100 days'),
        ('expired 100 days ago', NULL,                        now() - interval '100 days'),
        ('used yesterday',       now() - interval '1 day',    now() - interval '1 day'),
        ('live',                 NULL,                        now() + interval '5 minutes')),
     ins AS (
        INSERT INTO crmguard.otp_challenge_state (id, rule_id, row_key, to_value, recipient_masked, code_hash,
                                                  created_at, expires_at, consumed_at)
        SELECT nextval('crmguard.otp_challenge_id_seq'), rule.id, '1', 'Delivered', '***0123',
               '\x00'::bytea, c.expires - interval '5 minutes', c.expires, c.consumed
          FROM rule, c
        RETURNING id, consumed_at, expires_at)
INSERT INTO ids
SELECT c.what, ins.id FROM ins JOIN c ON c.expires = ins.expires_at AND c.consumed IS NOT DISTINCT FROM ins.consumed_at;
WITH m (what, state, created, sent) AS (VALUES
        ('message sent 100 days ago',     'sent',    now() - interval '100 days', now() - interval '100 days'),
        ('message dead 100 days ago',     'dead',    now() - interval '100 days', NULL),
        ('message pending 100 days',      'pending', now() - interval '100 days', NULL),
        ('message sent yesterday',        'sent',    now() - interval '1 day',    now() - interval '1 day')),
     ins AS (
        INSERT INTO crmguard.outbox (channel, recipient, subject, state, created_at, sent_at)
        SELECT 'sms', '+39 347 555 0123', m.what, m.state, m.created, m.sent FROM m
        RETURNING id, subject)
INSERT INTO ids SELECT subject, id FROM ins;
INSERT INTO crmguard.otp_recipient_change (target, row_key, changed_at) VALUES
    ('public.regress_parcel', '7', now() - interval '30 days'),   -- inside Parcel OTP's 60-day cooldown
    ('public.regress_box', '7', now() - interval '30 days'),      -- long past Box OTP's hour
    ('public.regress_box', '8', now() - interval '1 day');        -- past the hour, younger than keep
CREATE FUNCTION pg_temp.left_of_history() RETURNS TABLE (what text, still_there boolean)
    LANGUAGE sql AS $$
    SELECT i.what, CASE WHEN i.what LIKE 'message%'
                        THEN EXISTS (SELECT FROM crmguard.outbox o WHERE o.id = i.id)
                        ELSE EXISTS (SELECT FROM crmguard.otp_challenge_state c WHERE c.id = i.id) END
      FROM ids i
    UNION ALL
    SELECT 'recipient change ' || target::text || ' row ' || row_key, true
      FROM crmguard.otp_recipient_change WHERE target IN ('public.regress_parcel'::regclass, 'public.regress_box'::regclass)
     ORDER BY 1 $$;

-- Attack: a rep (or any role not granted it) purges the evidence of codes
SET ROLE regress_ret_rep;
SELECT crmguard.purge_history('0');
RESET ROLE;
-- a NULL or negative period is refused, nothing is deleted
SELECT crmguard.purge_history(NULL);
SELECT crmguard.purge_history('-1 day');
SELECT * FROM pg_temp.left_of_history();

-- an administrator it is granted to, from cron: 7 days kept
GRANT EXECUTE ON FUNCTION crmguard.purge_history(interval) TO regress_ret_admin;
SET ROLE regress_ret_admin;
SELECT * FROM crmguard.purge_history('7 days');
RESET ROLE;
SELECT * FROM pg_temp.left_of_history();
SELECT action, detail FROM crmguard.audit ORDER BY id DESC LIMIT 1;

-- Attack: a purge with nothing kept, to send a code to a recipient changed a
-- month ago on a table whose rule waits 60 days: the change stays, and so do
-- the live challenge and the pending message
SELECT sum(purged) > 0 AS purged_some FROM crmguard.purge_history('0');
SELECT * FROM pg_temp.left_of_history();

SELECT crmguard.drop_otp_rule('Parcel OTP'), crmguard.drop_otp_rule('Box OTP');
DELETE FROM crmguard.otp_recipient_change WHERE target IN ('public.regress_parcel'::regclass, 'public.regress_box'::regclass);
DELETE FROM crmguard.outbox WHERE id IN (SELECT id FROM ids WHERE what LIKE 'message%');
DROP TABLE public.regress_parcel, public.regress_box;
REVOKE EXECUTE ON FUNCTION crmguard.purge_history(interval) FROM regress_ret_admin;
DROP ROLE regress_ret_admin, regress_ret_rep;
