--
-- OTP-gated status changes: "Delivered" only with the customer's code
--
\set VERBOSITY default
-- refusals are shown as SQLSTATE: message, so each code is part of the record
CREATE FUNCTION public.regress_try(query text) RETURNS text
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE query;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
-- the code of the newest message to a recipient, as the customer would read it
CREATE FUNCTION public.regress_code(recipient text, after bigint DEFAULT 0) RETURNS text
    LANGUAGE plpgsql AS $$
DECLARE
    code text;
BEGIN
    FOR i IN 1..400 LOOP
        SELECT substring(o.body FROM 'code is ([A-Z0-9]+)') INTO code
          FROM crmguard.outbox o
         WHERE o.recipient = regress_code.recipient AND o.id > after
         ORDER BY o.id DESC LIMIT 1;
        IF code IS NOT NULL THEN
            RETURN code;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN NULL;
END
$$;
GRANT EXECUTE ON FUNCTION public.regress_try(text) TO PUBLIC;

CREATE TABLE public.regress_delivery (
    id        bigint PRIMARY KEY,
    customer  text NOT NULL,
    phone     text,
    status    text NOT NULL DEFAULT 'Scheduled',
    zone      text,
    note      text
);
INSERT INTO public.regress_delivery VALUES
    (1, 'Novak Logistics', '+39 347 555 0123', 'Out for delivery', 'Milano', NULL),
    (2, 'Bottega Rossi',   '+39 02 555 0188',  'Out for delivery', 'Milano', NULL),
    (3, 'Ferri & Figli',   NULL,               'Out for delivery', 'Torino', NULL),
    (4, 'Gamma Srl',       'ops@gamma.example', 'Scheduled',       'Roma',   NULL);
GRANT SELECT, INSERT, UPDATE ON public.regress_delivery TO regress_luca, regress_anna, regress_nobody;
GRANT SELECT ON public.regress_delivery TO regress_dora;

SELECT crmguard.create_otp_rule('Delivery Confirmation OTP', 'public.regress_delivery',
                                'status', '{Delivered}', 'phone',
                                channel => 'sms', code_length => 5, valid_for => '5 minutes',
                                max_attempts => 3, max_resends => 2);
SELECT rule_name, target, status_column, to_values, recipient_column, channel, delivery,
       code_type, code_length, valid_for, max_resends, max_attempts
  FROM crmguard.otp_rule;

-- the rep marks delivery 1 "Delivered" without the code: refused, and a code goes out
SET ROLE regress_luca;
UPDATE public.regress_delivery SET status = 'Delivered' WHERE id = 1;
SELECT status FROM public.regress_delivery WHERE id = 1;
RESET ROLE;
-- although the statement failed, the customer got a message (the worker sent it)
SELECT public.regress_code('+39 347 555 0123') AS code \gset
SELECT id, channel, recipient, subject, body ~ '^Delivery Confirmation OTP: your code is [0-9]{5}\.' AS has_code
  FROM crmguard.outbox;
SELECT id, rule, row_key, to_value, state, attempts, resends FROM crmguard.otp_challenge;
-- the challenge table stores a 32-byte keyed hash, never the code
SELECT length(code_hash) AS hash_bytes,
       position(convert_to(:'code', 'UTF8') IN code_hash) = 0 AS code_not_in_hash
  FROM crmguard.otp_challenge_state;

-- a second try while the challenge is pending names it again, sends nothing new
SET ROLE regress_luca;
UPDATE public.regress_delivery SET status = 'Delivered' WHERE id = 1;
RESET ROLE;
SELECT count(*) AS messages FROM crmguard.outbox;

-- a wrong code is refused and counted
SET ROLE regress_luca;
SELECT public.regress_try($$SELECT crmguard.verify_otp(1, '00000')$$);
-- verifying in one transaction and updating in another does not work
SELECT crmguard.verify_otp(1, :'code');
UPDATE public.regress_delivery SET status = 'Delivered' WHERE id = 1;
-- the right code, then the change, in one transaction
BEGIN;
SELECT crmguard.verify_otp(1, :'code');
UPDATE public.regress_delivery SET status = 'Delivered' WHERE id = 1;
COMMIT;
SELECT id, status FROM public.regress_delivery WHERE id = 1;
RESET ROLE;
SELECT id, state, attempts FROM crmguard.otp_challenge WHERE id = 1;

-- replay: a used code changes nothing again
SET ROLE regress_luca;
UPDATE public.regress_delivery SET status = 'Out for delivery' WHERE id = 1;
BEGIN;
SELECT public.regress_try(format($$SELECT crmguard.verify_otp(1, %L)$$, :'code'));
UPDATE public.regress_delivery SET status = 'Delivered' WHERE id = 1;
ROLLBACK;
RESET ROLE;
UPDATE public.regress_delivery SET status = 'Out for delivery' WHERE id = 1;  -- (no rule on leaving)

-- a code for row 2 does not unlock row 1, and one code never changes two rows
SET ROLE regress_luca;
UPDATE public.regress_delivery SET status = 'Delivered' WHERE id = 2;
RESET ROLE;
SELECT public.regress_code('+39 02 555 0188') AS code2 \gset
SELECT id, row_key, state FROM crmguard.otp_challenge ORDER BY id;
-- challenge 3 is row 2's
SET ROLE regress_luca;
BEGIN;
SELECT crmguard.verify_otp(3, :'code2');
UPDATE public.regress_delivery SET status = 'Delivered' WHERE id = 1;
ROLLBACK;
BEGIN;
SELECT crmguard.verify_otp(3, :'code2');
UPDATE public.regress_delivery SET status = 'Delivered' WHERE id IN (1, 2);
ROLLBACK;
RESET ROLE;

-- verify and change in one statement (one round trip less): the code in the
-- UPDATE's own WHERE clause unlocks its row, and still only its row
SET ROLE regress_luca;
BEGIN;
SELECT public.regress_try(format($$UPDATE public.regress_delivery SET status = 'Delivered'
                                    WHERE id = 1 AND crmguard.verify_otp(3, %L)$$, :'code2')) AS row_1_with_row_2s_code;
ROLLBACK;
BEGIN;
UPDATE public.regress_delivery SET status = 'Delivered'
 WHERE id = 2 AND crmguard.verify_otp(3, :'code2') RETURNING id, status;
ROLLBACK;
RESET ROLE;
SELECT id, state FROM crmguard.otp_challenge WHERE id = 3;

-- a code verified by one principal does not unlock another principal's update
SET ROLE regress_anna;
SELECT public.regress_try(format($$SELECT crmguard.verify_otp(3, %L)$$, :'code2'));
RESET ROLE;
SET ROLE regress_luca;
BEGIN;
SELECT crmguard.verify_otp(3, :'code2');
SET LOCAL ROLE regress_anna;
UPDATE public.regress_delivery SET status = 'Delivered' WHERE id = 2;
ROLLBACK;
RESET ROLE;

-- rollback brute force: 1,000 guesses, each rolled back, still lock the challenge
SET ROLE regress_luca;
DO $$
DECLARE
    outcome text;
    wrong int := 0;
    locked int := 0;
BEGIN
    FOR guess IN 1..1000 LOOP
        BEGIN
            PERFORM crmguard.verify_otp(3, lpad(guess::text, 5, '0'));
            RAISE EXCEPTION 'guessed';          -- roll the guess back either way
        EXCEPTION WHEN OTHERS THEN
            IF SQLERRM LIKE 'wrong OTP code%' THEN wrong := wrong + 1;
            ELSIF SQLERRM LIKE '%is locked%' THEN locked := locked + 1;
            ELSE RAISE NOTICE 'other outcome: %', SQLERRM;
            END IF;
        END;
    END LOOP;
    RAISE NOTICE 'wrong: %, locked: %', wrong, locked;
END
$$;
-- the right code no longer helps
SELECT public.regress_try(format($$SELECT crmguard.verify_otp(3, %L)$$, :'code2'));
RESET ROLE;
SELECT id, state, attempts FROM crmguard.otp_challenge WHERE id = 3;

-- manual delivery, resends, from_values, applies_to and a condition
SELECT crmguard.create_otp_rule('Failed needs confirmation', 'public.regress_delivery',
                                'status', '{Failed}', 'phone', delivery => 'manual',
                                code_type => 'alphanumeric', code_length => 8,
                                max_resends => 1, from_values => '{Out for delivery}',
                                applies_to => '{agent}',
                                condition => '{"field": "zone", "op": "=", "value": "Milano"}');
SELECT max(id) AS messages_before FROM crmguard.outbox \gset
SET ROLE regress_luca;
UPDATE public.regress_delivery SET status = 'Failed' WHERE id = 2;
SELECT crmguard.request_otp('public.regress_delivery', '2', 'Failed') AS failed_challenge \gset
SELECT crmguard.request_otp('public.regress_delivery', '2', 'Failed') = :failed_challenge AS resent_same;
SELECT public.regress_try($$SELECT crmguard.request_otp('public.regress_delivery', '2', 'Failed')$$);
RESET ROLE;
SELECT count(*) AS new_messages,
       bool_and(body ~ 'code is [A-Z0-9]{8}\.') AS eight_characters
  FROM crmguard.outbox WHERE id > :messages_before;
SELECT public.regress_code('+39 02 555 0188', :messages_before) AS code3 \gset
SET ROLE regress_luca;
BEGIN;
SELECT crmguard.verify_otp(:failed_challenge, lower(:'code3'));   -- case does not matter
UPDATE public.regress_delivery SET status = 'Failed' WHERE id = 2;
COMMIT;
-- not from a listed value: not gated
UPDATE public.regress_delivery SET status = 'Failed' WHERE id = 4;
-- condition false (zone Torino): not gated
UPDATE public.regress_delivery SET status = 'Failed', phone = '+39 011 555 0101' WHERE id = 3;
RESET ROLE;
-- a principal without role "agent" is not gated by this rule
SET ROLE regress_anna;
UPDATE public.regress_delivery SET status = 'Out for delivery' WHERE id = 2;
UPDATE public.regress_delivery SET status = 'Failed' WHERE id = 2;
RESET ROLE;
SELECT id, status FROM public.regress_delivery ORDER BY id;

-- bulk changes and COPY are guarded row by row
SET ROLE regress_luca;
UPDATE public.regress_delivery SET status = 'Delivered' WHERE zone = 'Torino';
INSERT INTO public.regress_delivery VALUES (5, 'Delta', '+39 06 555 0199', 'Delivered', 'Roma', NULL),
                                           (6, 'Epsilon', '+39 06 555 0198', 'Scheduled', 'Roma', NULL);
COPY public.regress_delivery FROM stdin;
7	Zeta	+39 06 555 0197	Delivered	Roma	\N
\.
RESET ROLE;
SELECT count(*) AS rows_after_bulk FROM public.regress_delivery;
-- rows that enter no gated value pass
SET ROLE regress_luca;
UPDATE public.regress_delivery SET note = 'checked' WHERE zone IN ('Milano', 'Torino');
INSERT INTO public.regress_delivery VALUES (8, 'Eta', '+39 06 555 0196', 'Scheduled', 'Roma', NULL);
RESET ROLE;

-- a row without recipient cannot receive a code
UPDATE public.regress_delivery SET phone = NULL WHERE id = 8;
SET ROLE regress_luca;
UPDATE public.regress_delivery SET status = 'Delivered' WHERE id = 8;
RESET ROLE;

-- request_otp and verify_otp refusals
SET ROLE regress_luca;
SELECT public.regress_try($$SELECT crmguard.request_otp('public.regress_delivery', '99', 'Delivered')$$);
SELECT public.regress_try($$SELECT crmguard.request_otp('public.regress_delivery', '1', 'Scheduled')$$);
SELECT public.regress_try($$SELECT crmguard.verify_otp(424242, '12345')$$);
RESET ROLE;
SET ROLE regress_dora;
SELECT public.regress_try($$SELECT crmguard.request_otp('public.regress_delivery', '1', 'Delivered')$$);
RESET ROLE;

-- codes and their challenges are written without a statement (as a system
-- catalog's rows): a constraint added by hand to the outbox would not be
-- checked, so no code is queued while one is there
ALTER TABLE crmguard.outbox ADD CONSTRAINT regress_italian_numbers CHECK (recipient LIKE '+39%') NOT VALID;
SET ROLE regress_luca;
SELECT public.regress_try($$SELECT crmguard.request_otp('public.regress_delivery', '1', 'Delivered')$$) AS outbox_with_a_constraint;
RESET ROLE;
ALTER TABLE crmguard.outbox DROP CONSTRAINT regress_italian_numbers;

-- expiry
SELECT crmguard.create_otp_rule('Quick OTP', 'public.regress_delivery', 'status', '{Lost}',
                                'phone', delivery => 'manual', valid_for => '200 milliseconds');
SET ROLE regress_luca;
SELECT crmguard.request_otp('public.regress_delivery', '2', 'Lost') AS quick \gset
RESET ROLE;
SELECT substring(body FROM 'code is ([0-9]+)') AS quick_code FROM crmguard.outbox ORDER BY id DESC LIMIT 1 \gset
SELECT pg_sleep(0.3);
SET ROLE regress_luca;
SELECT public.regress_try(format($$SELECT crmguard.verify_otp(%s, %L)$$, :quick, :'quick_code'));
RESET ROLE;

-- bad rule definitions: CG020 and nothing created
SELECT count(*) AS rules_before FROM crmguard.otp_rule;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 424242::oid::regclass, 'status', '{Delivered}', 'phone')$$) AS unknown_table;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'public.regress_delivery', 'state', '{Delivered}', 'phone')$$) AS unknown_column;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'public.regress_delivery', 'status', '{Delivered}', 'mobile')$$) AS unknown_recipient;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'public.regress_delivery', 'status', '{Delivered}', 'phone', code_length => 3)$$) AS short_code;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'public.regress_delivery', 'status', '{Delivered}', 'phone', code_length => 13)$$) AS long_code;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'public.regress_delivery', 'status', '{Delivered}', 'phone', valid_for => '-5 minutes')$$) AS negative_validity;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'public.regress_delivery', 'id', '{Delivered}', 'phone')$$) AS type_cannot_hold;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'public.regress_delivery', 'status', '{}', 'phone')$$) AS no_values;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'public.regress_delivery', 'status', '{Delivered}', 'phone', delivery => 'pigeon')$$) AS bad_delivery;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'public.regress_delivery', 'status', '{Delivered}', 'phone', code_type => 'emoji')$$) AS bad_code_type;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'public.regress_delivery', 'status', '{Delivered}', 'phone', max_attempts => 0)$$) AS no_attempts;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'public.regress_delivery', 'status', '{Delivered}', 'phone', condition => '{"field": "nope", "op": "=", "value": 1}')$$) AS bad_condition;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'crmguard.otp_challenge', 'state', '{used}', 'rule')$$) AS not_a_table;
CREATE TABLE public.regress_no_pk (status text, phone text);
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'public.regress_no_pk', 'status', '{Delivered}', 'phone')$$) AS no_primary_key;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('Quick OTP', 'public.regress_delivery', 'status', '{Delivered}', 'phone')$$) AS duplicate;
SET ROLE regress_luca;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'public.regress_delivery', 'status', '{Delivered}', 'phone')$$) AS not_for_public;
RESET ROLE;
SELECT count(*) AS rules_after FROM crmguard.otp_rule;
SELECT count(*) AS triggers_on_no_pk FROM pg_trigger WHERE tgrelid = 'public.regress_no_pk'::regclass;
DROP TABLE public.regress_no_pk;
-- rows written to another table of an inheritance tree would bypass the guard
CREATE TABLE public.regress_parted (id int PRIMARY KEY, status text, phone text) PARTITION BY RANGE (id);
CREATE TABLE public.regress_part1 PARTITION OF public.regress_parted FOR VALUES FROM (0) TO (100);
CREATE TABLE public.regress_parent (id int PRIMARY KEY, status text, phone text);
CREATE TABLE public.regress_child (id int PRIMARY KEY, status text, phone text);
ALTER TABLE public.regress_child INHERIT public.regress_parent;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'public.regress_parted', 'status', '{Delivered}', 'phone')$$) AS partitioned_table;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'public.regress_part1', 'status', '{Delivered}', 'phone')$$) AS partition;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'public.regress_parent', 'status', '{Delivered}', 'phone')$$) AS inheritance_parent;
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('bad', 'public.regress_child', 'status', '{Delivered}', 'phone')$$) AS inheritance_child;
SELECT count(*) AS rules_after_trees FROM crmguard.otp_rule;
SELECT count(*) AS guards_in_trees FROM pg_trigger
 WHERE tgrelid IN ('public.regress_parted'::regclass, 'public.regress_part1'::regclass,
                   'public.regress_parent'::regclass, 'public.regress_child'::regclass);
DROP TABLE public.regress_parted, public.regress_child;
-- a parent whose only child was dropped is an ordinary table again
-- (pg_class.relhassubclass stays set until the next vacuum: not a tree)
SELECT public.regress_try($$SELECT crmguard.create_otp_rule('former parent', 'public.regress_parent', 'status', '{Delivered}', 'phone')$$) AS former_parent;
SELECT crmguard.drop_otp_rule('former parent');
DROP TABLE public.regress_parent;

-- the owner cannot switch the guard off; a superuser can, visibly
CREATE ROLE regress_table_owner;
ALTER TABLE public.regress_delivery OWNER TO regress_table_owner;
SET ROLE regress_table_owner;
ALTER TABLE public.regress_delivery DISABLE TRIGGER zz_crmguard_otp_guard;
ALTER TABLE public.regress_delivery DISABLE TRIGGER ALL;
ALTER TABLE public.regress_delivery ENABLE REPLICA TRIGGER zz_crmguard_otp_guard;
DROP TRIGGER zz_crmguard_otp_guard ON public.regress_delivery;
RESET ROLE;
ALTER TABLE public.regress_delivery DISABLE TRIGGER zz_crmguard_otp_guard;
SELECT action, target, detail->>'trigger' AS trigger FROM crmguard.audit
 WHERE action = 'guard_disabled' AND target = 'regress_delivery';
ALTER TABLE public.regress_delivery ENABLE TRIGGER zz_crmguard_otp_guard;
ALTER TABLE public.regress_delivery OWNER TO CURRENT_USER;
DROP ROLE regress_table_owner;

-- dropping rules: the guard goes with the last one
SELECT crmguard.drop_otp_rule('Quick OTP');
SELECT crmguard.drop_otp_rule('Failed needs confirmation');
SELECT public.regress_try($$SELECT crmguard.drop_otp_rule('no such rule')$$);
SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.regress_delivery'::regclass;
SELECT crmguard.drop_otp_rule('Delivery Confirmation OTP');
SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.regress_delivery'::regclass;
UPDATE public.regress_delivery SET status = 'Delivered' WHERE id = 2;

-- every accepted and refused step is in the audit log
-- (a flood of refusals by one session is one summary record with its count)
SELECT pg_sleep(1.5);
SELECT action, sum(COALESCE((detail->>'count')::bigint, 1)) AS count FROM crmguard.audit
 WHERE action LIKE 'otp%' OR action LIKE '%otp_rule' OR action LIKE 'guard%'
 GROUP BY action ORDER BY action;
SELECT ok FROM crmguard.verify_audit();

-- a guard's WHEN clause replaced in place (the same trigger, by a superuser)
-- is the one the next statement judges by, in a session that read the old
-- one: crmguard reads its triggers' WHEN clauses once per backend
CREATE TABLE public.regress_when (id int PRIMARY KEY, phone text, status text);
INSERT INTO public.regress_when VALUES (1, '+39 347 000 0009', 'Shipped');
SELECT crmguard.create_otp_rule('When replaced', 'public.regress_when', 'status', '{Delivered}', 'phone',
                                delivery => 'manual') > 0 AS rule;
SELECT public.regress_try($$UPDATE public.regress_when SET status = 'Delivered' WHERE id = 1$$) AS guarded;
CREATE OR REPLACE TRIGGER zz_crmguard_otp_guard AFTER UPDATE ON public.regress_when
    FOR EACH ROW WHEN (new.status = 'Lost') EXECUTE FUNCTION crmguard.otp_guard();
UPDATE public.regress_when SET status = 'Delivered' WHERE id = 1;
SELECT status FROM public.regress_when;
SELECT crmguard.drop_otp_rule('When replaced');
DROP TABLE public.regress_when;
DROP TABLE public.regress_delivery;
DROP FUNCTION public.regress_try(text), public.regress_code(text, bigint);
