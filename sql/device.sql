--
-- Trusted devices: a principal with require_device passes no crmguard gate
-- until it signs a fresh server challenge with a registered device
--
\set VERBOSITY default
CREATE FUNCTION public.regress_try(query text) RETURNS text
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE query;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
GRANT EXECUTE ON FUNCTION public.regress_try(text) TO PUBLIC;

-- device keys, made by the crmguard-device program built with the extension
\! rm -f /tmp/crmguard_regress_dev_*.key
\set agent_pk `crmguard-device keygen /tmp/crmguard_regress_dev_agent.key`
\set other_pk `crmguard-device keygen /tmp/crmguard_regress_dev_other.key`
\set rogue_pk `crmguard-device keygen /tmp/crmguard_regress_dev_rogue.key`

CREATE ROLE regress_dev_agent;     -- an agent who may act only from its PC
CREATE ROLE regress_dev_plain;     -- an agent without that requirement
CREATE ROLE regress_dev_app;       -- a pooled application's login role
SELECT crmguard.add_principal('dev_manager', '{area_manager}', require_device => true) > 0 AS manager;
SELECT crmguard.add_principal('dev_agent', '{agent}', 'dev_manager', '{"zone": "North"}',
                              'regress_dev_agent', require_device => true) > 0 AS agent;
SELECT crmguard.add_principal('dev_other', '{agent}', NULL, '{"zone": "South"}',
                              require_device => true) > 0 AS other;
SELECT crmguard.add_principal('dev_plain', '{agent}', NULL, '{"zone": "North"}', 'regress_dev_plain') > 0 AS plain;
GRANT EXECUTE ON FUNCTION crmguard.issue_token(text, interval, bigint, bytea),
      crmguard.device_challenge(text) TO regress_dev_app;

CREATE TABLE public.regress_dev_customer (id int PRIMARY KEY, zone text NOT NULL, name text NOT NULL);
INSERT INTO public.regress_dev_customer VALUES (1, 'North', 'Rossi'), (2, 'North', 'Bianchi'), (3, 'South', 'Verdi');
GRANT SELECT, INSERT, UPDATE, DELETE ON public.regress_dev_customer TO regress_dev_agent, regress_dev_plain, regress_dev_app;

-- a delivery gated by OTP, a lead table under review, deals under approval
CREATE TABLE public.regress_dev_delivery (id int PRIMARY KEY, phone text, status text);
INSERT INTO public.regress_dev_delivery VALUES (1, '+39 347 0000001', 'Out for delivery');
SELECT crmguard.create_otp_rule('dev delivered', 'public.regress_dev_delivery', 'status', '{Delivered}', 'phone') > 0 AS otp_rule;
CREATE TABLE public.regress_dev_lead (id int PRIMARY KEY, email text);
SELECT crmguard.add_principal('dev_reviewer', '{reviewer}') > 0 AS reviewer;
SELECT crmguard.enable_review('public.regress_dev_lead', 'reviewer');
CREATE TABLE public.regress_dev_deal (id int PRIMARY KEY, owner_id bigint, discount int);
INSERT INTO public.regress_dev_deal VALUES (1, (SELECT id FROM crmguard.principal WHERE name = 'dev_agent'), 30);
SELECT crmguard.create_approval_process('dev discount', 'public.regress_dev_deal', '{"field": "discount", "op": ">", "value": 0}',
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]') > 0 AS approval_process;
GRANT SELECT, INSERT, UPDATE ON public.regress_dev_delivery, public.regress_dev_lead, public.regress_dev_deal TO regress_dev_agent;
SELECT crmguard.expose('public.regress_dev_customer', 'agents: own zone', 'agent',
                       '{"field": "zone", "op": "=", "principal": "zone"}', 'edit') > 0 AS exposed;

-- ---------------------------------------------------------------------------
-- Registration and enrollment
-- ---------------------------------------------------------------------------

-- bad input: a key that is not 32 bytes, not a curve point, an unknown principal
SELECT public.regress_try($$SELECT crmguard.register_device('dev_agent', 'pc', '\x0102')$$) AS short_key;
SELECT public.regress_try($$SELECT crmguard.register_device('dev_agent', 'pc', decode(repeat('ab', 33), 'hex'))$$) AS long_key;
SELECT public.regress_try($$SELECT crmguard.register_device('dev_agent', 'pc', decode(repeat('ab', 32), 'hex'))$$) AS not_a_point;
SELECT public.regress_try($$SELECT crmguard.register_device('nobody_here', 'pc', decode(repeat('ab', 32), 'hex'))$$) AS unknown_principal;
SELECT public.regress_try(format('SELECT crmguard.register_device(%L, %L, %L)', 'dev_agent', '', :'rogue_pk')) AS empty_label;

-- an administrator registers the other agent's device
SELECT crmguard.register_device('dev_other', 'other''s PC', :'other_pk') AS other_device \gset
SELECT public.regress_try(format('SELECT crmguard.register_device(%L, %L, %L)', 'dev_agent', 'copy', :'other_pk')) AS same_key_twice;

-- registering is for administrators
SET ROLE regress_dev_agent;
SELECT public.regress_try(format('SELECT crmguard.register_device(%L, %L, %L)', 'dev_agent', 'mine', :'agent_pk')) AS agent_registers;
SELECT public.regress_try($$SELECT crmguard.enrollment_code('dev_agent')$$) AS agent_makes_code;
RESET ROLE;

-- the agent enrolls its own PC with a one-time code
SELECT crmguard.enrollment_code('dev_agent', '1 hour') AS code \gset
SELECT :'code' LIKE 'cg1.%' AS looks_like_a_token_and_is_redacted_like_one;
SET ROLE regress_dev_agent;
SELECT crmguard.enroll_device(:'code', 'agent''s PC', :'agent_pk') AS agent_device \gset
-- attack: enrollment code reuse
SELECT public.regress_try(format('SELECT crmguard.enroll_device(%L, %L, %L)', :'code', 'rogue PC', :'rogue_pk')) AS code_reused;
-- attack: a made-up code
SELECT public.regress_try(format('SELECT crmguard.enroll_device(%L, %L, %L)', 'cg1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', 'rogue PC', :'rogue_pk')) AS code_made_up;
RESET ROLE;
-- attack: an expired code
SELECT crmguard.enrollment_code('dev_agent', '1 millisecond') AS brief_code \gset
SELECT pg_sleep(0.01);
SELECT public.regress_try(format('SELECT crmguard.enroll_device(%L, %L, %L)', :'brief_code', 'rogue PC', :'rogue_pk')) AS code_expired;
SELECT public.regress_try($$SELECT crmguard.enrollment_code('dev_agent', '-1 day')$$) AS negative_validity;
SELECT public.regress_try($$SELECT crmguard.enrollment_code('dev_agent', '0 s')$$) AS zero_validity;
-- attack: a code kept after its principal was deactivated (a leaver's code)
SELECT crmguard.enrollment_code('dev_other', '1 hour') AS leaver_code \gset
UPDATE crmguard.principal SET active = false WHERE name = 'dev_other';
SELECT public.regress_try(format('SELECT crmguard.enroll_device(%L, %L, %L)', :'leaver_code', 'rogue PC', :'rogue_pk')) AS code_of_deactivated_principal;
-- and a deactivated principal gets no challenge to sign
SELECT public.regress_try($$SELECT crmguard.device_challenge('dev_other')$$) AS challenge_for_deactivated;
UPDATE crmguard.principal SET active = true WHERE name = 'dev_other';
SELECT d.id = :agent_device AS enrolled, p.name, d.label, d.registered_via, d.revoked_at IS NULL AS live
  FROM crmguard.device d JOIN crmguard.principal p ON p.id = d.principal_id ORDER BY d.id;
-- the code is stored only as a keyed hash, and is used
SELECT octet_length(code_hash) AS hash_bytes, used_at IS NOT NULL AS used FROM crmguard.device_enrollment ORDER BY created_at, used_at;

-- ---------------------------------------------------------------------------
-- Before attesting, the agent passes no gate
-- ---------------------------------------------------------------------------
SET ROLE regress_dev_agent;
SELECT crmguard.current_principal() IS NOT NULL AS identified;
SELECT count(*) AS rows_seen_unattested FROM public.regress_dev_customer;
SELECT public.regress_try($$UPDATE public.regress_dev_customer SET name = name || '!'$$) AS update_unattested;
SELECT public.regress_try($$INSERT INTO public.regress_dev_customer VALUES (9, 'North', 'Neri')$$) AS insert_unattested;
SELECT public.regress_try($$SELECT crmguard.require_attested()$$) AS gate;
SELECT public.regress_try($$SELECT crmguard.request_otp('public.regress_dev_delivery', '1', 'Delivered')$$) AS otp_request;
SELECT public.regress_try($$SELECT crmguard.verify_otp(1, '00000')$$) AS otp_verify;
SELECT public.regress_try($$UPDATE public.regress_dev_delivery SET status = 'Delivered'$$) AS otp_guarded_write;
SELECT public.regress_try($$INSERT INTO public.regress_dev_lead VALUES (1, 'lead@example.com')$$) AS drafted_insert;
SELECT public.regress_try($$SELECT crmguard.approve_draft(1)$$) AS draft_step;
SELECT public.regress_try($$SELECT crmguard.reject_draft(1, 'no')$$) AS draft_reject;
SELECT public.regress_try($$SELECT crmguard.submit_for_approval('public.regress_dev_deal', '1')$$) AS approval_submit;
SELECT public.regress_try($$SELECT crmguard.approve(1)$$) AS approval_step;
SELECT public.regress_try($$SELECT * FROM crmguard.my_approvals()$$) AS my_approvals;
SELECT public.regress_try($$SELECT * FROM crmguard.activity(now() - interval '1 day', now())$$) AS activity_report;
-- the agent without require_device sees its zone
SET ROLE regress_dev_plain;
SELECT count(*) AS rows_seen_plain FROM public.regress_dev_customer;
RESET ROLE;

-- ---------------------------------------------------------------------------
-- Attestation
-- ---------------------------------------------------------------------------
SET ROLE regress_dev_agent;
SELECT crmguard.device_challenge() AS ch \gset
SELECT octet_length(:'ch'::bytea) AS challenge_bytes, substr(:'ch'::bytea, 1, 4) = 'CGDC'::bytea AS tagged;
\set sig `crmguard-device sign --key /tmp/crmguard_regress_dev_agent.key :'ch'`
\set rogue_sig `crmguard-device sign --key /tmp/crmguard_regress_dev_rogue.key :'ch'`
\set other_sig `crmguard-device sign --key /tmp/crmguard_regress_dev_other.key :'ch'`
-- bad input: a signature of the wrong length, an unknown device
SELECT public.regress_try(format('SELECT crmguard.attest_device(%s, %L)', :agent_device, '\x0102')) AS short_signature;
SELECT public.regress_try(format('SELECT crmguard.attest_device(%s, %L)', 999, :'sig')) AS unknown_device;
-- attack: a signature by an unregistered key
SELECT public.regress_try(format('SELECT crmguard.attest_device(%s, %L)', :agent_device, :'rogue_sig')) AS unregistered_key;
-- attack: another principal's device
SELECT public.regress_try(format('SELECT crmguard.attest_device(%s, %L)', :other_device, :'other_sig')) AS others_device;
-- the agent's own device: attested
SELECT crmguard.attest_device(:agent_device, :'sig') AS attested;
SELECT count(*) AS rows_seen_attested FROM public.regress_dev_customer;
UPDATE public.regress_dev_customer SET name = name WHERE id = 1;
-- attack: the same signature again (the challenge is single-use)
SELECT public.regress_try(format('SELECT crmguard.attest_device(%s, %L)', :agent_device, :'sig')) AS replayed;
-- the session stays attested
SELECT count(*) AS still_attested FROM public.regress_dev_customer;
-- attack: challenge_flood -- a principal has at most four challenges pending;
-- a fifth replaces its oldest, which then attests nothing
SELECT crmguard.device_challenge() AS first_ch \gset
SELECT count(*) AS four_more FROM (SELECT crmguard.device_challenge() FROM generate_series(1, 4)) c;
\set first_sig `crmguard-device sign --key /tmp/crmguard_regress_dev_agent.key :'first_ch'`
SELECT public.regress_try(format('SELECT crmguard.attest_device(%s, %L)', :agent_device, :'first_sig')) AS oldest_of_five;
RESET ROLE;

-- attack: a challenge made for another principal, signed by this agent's device
SELECT crmguard.device_challenge('dev_other') AS other_ch \gset
\set other_ch_sig `crmguard-device sign --key /tmp/crmguard_regress_dev_agent.key :'other_ch'`
SET ROLE regress_dev_agent;
SELECT public.regress_try(format('SELECT crmguard.attest_device(%s, %L)', :agent_device, :'other_ch_sig')) AS other_principals_challenge;
RESET ROLE;

-- an attestation made in a transaction that rolls back is gone with it
DISCARD ALL;
SET ROLE regress_dev_agent;
SELECT count(*) AS after_discard FROM public.regress_dev_customer;
BEGIN;
SELECT crmguard.device_challenge() AS ch \gset
\set sig `crmguard-device sign --key /tmp/crmguard_regress_dev_agent.key :'ch'`
SELECT crmguard.attest_device(:agent_device, :'sig') AS attested_in_xact;
SELECT count(*) AS in_xact FROM public.regress_dev_customer;
ROLLBACK;
SELECT count(*) AS after_rollback FROM public.regress_dev_customer;
RESET ROLE;

-- ---------------------------------------------------------------------------
-- Revocation: the next statement is refused
-- ---------------------------------------------------------------------------
SET ROLE regress_dev_agent;
SELECT crmguard.device_challenge() AS ch \gset
\set sig `crmguard-device sign --key /tmp/crmguard_regress_dev_agent.key :'ch'`
SELECT crmguard.attest_device(:agent_device, :'sig') AS attested_again;
SELECT count(*) AS before_revoke FROM public.regress_dev_customer;
RESET ROLE;
SELECT crmguard.revoke_device(:agent_device);
SELECT public.regress_try('SELECT crmguard.revoke_device(12345)') AS revoke_unknown;
SET ROLE regress_dev_agent;
SELECT count(*) AS after_revoke FROM public.regress_dev_customer;
SELECT public.regress_try($$UPDATE public.regress_dev_customer SET name = name$$) AS update_after_revoke;
SELECT public.regress_try($$SELECT crmguard.require_attested()$$) AS gate_after_revoke;
-- attack: a revoked device attests no more
SELECT crmguard.device_challenge() AS ch \gset
\set sig `crmguard-device sign --key /tmp/crmguard_regress_dev_agent.key :'ch'`
SELECT public.regress_try(format('SELECT crmguard.attest_device(%s, %L)', :agent_device, :'sig')) AS revoked_device;
RESET ROLE;

-- ---------------------------------------------------------------------------
-- Tokens for pooled applications carry the device's signature
-- ---------------------------------------------------------------------------
SELECT crmguard.enrollment_code('dev_agent') AS code \gset
\! rm -f /tmp/crmguard_regress_dev_agent.key
\set agent_pk `crmguard-device keygen /tmp/crmguard_regress_dev_agent.key`
SELECT crmguard.enroll_device(:'code', 'agent''s new PC', :'agent_pk') AS agent_device \gset
SET ROLE regress_dev_app;
-- attack: a token minted without a device signature for a require_device principal
SELECT public.regress_try($$SELECT crmguard.issue_token('dev_agent')$$) AS token_without_device;
SELECT public.regress_try(format('SELECT crmguard.issue_token(%L, %L, %s)', 'dev_agent', '1 hour', :agent_device)) AS device_without_signature;
SELECT crmguard.device_challenge('dev_agent') AS ch \gset
\set sig `crmguard-device sign --key /tmp/crmguard_regress_dev_agent.key :'ch'`
-- attack: the agent's signature presented for another principal
SELECT public.regress_try(format('SELECT crmguard.issue_token(%L, %L, %s, %L)', 'dev_other', '1 hour', :agent_device, :'sig')) AS token_for_other;
SELECT crmguard.issue_token('dev_agent', '1 hour', :agent_device, :'sig') AS token \gset
SELECT public.regress_try(format('SELECT crmguard.issue_token(%L, %L, %s, %L)', 'dev_agent', '1 hour', :agent_device, :'sig')) AS token_replayed;
-- the application acts as the agent, attested by the token's device
SELECT crmguard.assume(:'token', false) > 0 AS assumed;
SELECT count(*) AS rows_seen_with_token FROM public.regress_dev_customer;
RESET ROLE;
SELECT crmguard.revoke_device(:agent_device);
SET ROLE regress_dev_app;
SELECT count(*) AS token_after_revoke FROM public.regress_dev_customer;
SELECT public.regress_try($$SELECT crmguard.require_attested()$$) AS gate_token_after_revoke;
SELECT crmguard.assume(NULL);
RESET ROLE;

-- attack: device_moved_to_another_principal -- a superuser hands the device
-- row to another principal: whoever attested with it is cut off at its next
-- statement, as by a revocation
SELECT crmguard.enrollment_code('dev_agent') AS code \gset
\! rm -f /tmp/crmguard_regress_dev_agent.key
\set agent_pk `crmguard-device keygen /tmp/crmguard_regress_dev_agent.key`
SELECT crmguard.enroll_device(:'code', 'agent''s third PC', :'agent_pk') AS agent_device \gset
SET ROLE regress_dev_agent;
SELECT crmguard.device_challenge() AS ch \gset
\set sig `crmguard-device sign --key /tmp/crmguard_regress_dev_agent.key :'ch'`
SELECT crmguard.attest_device(:agent_device, :'sig') AS attested_third;
SELECT count(*) AS before_move FROM public.regress_dev_customer;
RESET ROLE;
-- (already in the transaction that moves it, before it commits)
BEGIN;
UPDATE crmguard.device SET principal_id = (SELECT id FROM crmguard.principal WHERE name = 'dev_other')
 WHERE id = :agent_device;
SET LOCAL ROLE regress_dev_agent;
SELECT count(*) AS after_move_same_transaction FROM public.regress_dev_customer;
COMMIT;
SET ROLE regress_dev_agent;
SELECT count(*) AS after_move FROM public.regress_dev_customer;
SELECT public.regress_try($$SELECT crmguard.require_attested()$$) AS gate_after_move;
RESET ROLE;

-- attestations are activity too: each committed one counts for its principal
SELECT a.action, sum(a.n) AS n
  FROM crmguard.activity_log a JOIN crmguard.principal p ON p.id = a.principal
 WHERE p.name = 'dev_agent' AND a.target IS NULL
 GROUP BY 1 ORDER BY 1;

-- every step is in the audit log, refusals included
DO $$
BEGIN
    FOR i IN 1..200 LOOP
        EXIT WHEN (SELECT count(*) FROM crmguard.audit WHERE action = 'attest_refused') >= 8
              AND (SELECT count(*) FROM crmguard.audit WHERE action = 'enroll_refused') >= 3;
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;
SELECT action, count(*) FROM crmguard.audit
 WHERE action IN ('register_device', 'enrollment_code', 'attest_device', 'attest_refused',
                  'enroll_refused', 'revoke_device')
 GROUP BY action ORDER BY action;
-- what a device did carries its id
SELECT action, device IS NOT NULL AS has_device FROM crmguard.audit
 WHERE action = 'attest_device'
    OR (action = 'assume' AND row_key = (SELECT id::text FROM crmguard.principal WHERE name = 'dev_agent'))
 ORDER BY id;
SELECT ok FROM crmguard.verify_audit();
\! rm -f /tmp/crmguard_regress_dev_*.key
