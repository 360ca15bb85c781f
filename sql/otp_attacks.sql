--
-- OTP attacks: each section is named after a way around "Delivered means the
-- customer confirmed it" that a security review reproduced
--
\set VERBOSITY default
-- SQLSTATE: message | detail, so each refusal and its reason are on record
-- (challenge ids depend on the tests before: shown as N)
CREATE FUNCTION public.regress_otp_try(query text) RETURNS text
    LANGUAGE plpgsql AS $$
DECLARE
    detail text;
BEGIN
    EXECUTE query;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
    RETURN regexp_replace(SQLSTATE || ': ' || SQLERRM || COALESCE(' | ' || NULLIF(detail, ''), ''),
                          'Challenge [0-9]+', 'Challenge N');
END
$$;
GRANT EXECUTE ON FUNCTION public.regress_otp_try(text) TO PUBLIC;
-- the newest code sent to a recipient, waiting for the worker
CREATE FUNCTION public.regress_otp_code(recipient text) RETURNS text
    LANGUAGE plpgsql AS $$
DECLARE
    code text;
BEGIN
    FOR i IN 1..400 LOOP
        SELECT substring(o.body FROM 'code is ([A-Z0-9]+)') INTO code
          FROM crmguard.outbox o WHERE o.recipient = regress_otp_code.recipient
         ORDER BY o.id DESC LIMIT 1;
        IF code IS NOT NULL THEN
            RETURN code;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TABLE public.regress_note (
    id        bigint PRIMARY KEY,
    customer  text NOT NULL,
    phone     text,
    status    text NOT NULL
);
INSERT INTO public.regress_note VALUES
    (1, 'Novak',  '+39 347 555 0001', 'Out for delivery'),
    (2, 'Rossi',  '+39 347 555 0002', 'Out for delivery'),
    (3, 'Ferri',  '+39 347 555 0003', 'Out for delivery'),
    (4, 'Gamma',  '+39 347 555 0004', 'Out for delivery'),
    (5, 'Delta',  '+39 347 555 0005', 'Out for delivery');
GRANT SELECT, INSERT, UPDATE ON public.regress_note TO regress_luca, regress_anna;
SELECT crmguard.create_otp_rule('Note OTP', 'public.regress_note', 'status', '{Delivered}', 'phone')
       IS NOT NULL AS created;
SELECT recipient_cooldown, challenges_per_row, challenges_per_principal, challenge_window
  FROM crmguard.otp_rule WHERE rule_name = 'Note OTP';

-- ===========================================================================
-- Attack: the rep receives the code himself (issue 12, hole 1)
-- ===========================================================================
-- (a) automatic delivery: the refused statement also sets the rep's phone
SET ROLE regress_luca;
SELECT public.regress_otp_try($$UPDATE public.regress_note SET status = 'Delivered', phone = '+39 333 000 0666' WHERE id = 1$$);
RESET ROLE;
SELECT public.regress_otp_code('+39 347 555 0001') IS NOT NULL AS customer_got_the_code;
SELECT count(*) AS codes_to_the_rep FROM crmguard.outbox WHERE recipient = '+39 333 000 0666';
-- (b) the same in two statements of one transaction: the phone change is not committed
SET ROLE regress_luca;
BEGIN;
UPDATE public.regress_note SET phone = '+39 333 000 0666' WHERE id = 2;
SELECT public.regress_otp_try($$UPDATE public.regress_note SET status = 'Delivered' WHERE id = 2$$);
SELECT public.regress_otp_try($$SELECT crmguard.request_otp('public.regress_note', '2', 'Delivered')$$);
ROLLBACK;
-- (c) the manual variant: change the phone, commit, then request a code
UPDATE public.regress_note SET phone = '+39 333 000 0666' WHERE id = 3;
SELECT public.regress_otp_try($$SELECT crmguard.request_otp('public.regress_note', '3', 'Delivered')$$);
SELECT public.regress_otp_try($$UPDATE public.regress_note SET status = 'Delivered' WHERE id = 3$$);
-- (d) a new row straight into the gated value, with the rep's phone
SELECT public.regress_otp_try($$INSERT INTO public.regress_note VALUES (9, 'Fake', '+39 333 000 0666', 'Delivered')$$);
-- (e) delete-and-reinsert is a recipient change too
RESET ROLE;
GRANT DELETE ON public.regress_note TO regress_luca;
SET ROLE regress_luca;
DELETE FROM public.regress_note WHERE id = 4;
INSERT INTO public.regress_note VALUES (4, 'Gamma', '+39 333 000 0666', 'Out for delivery');
SELECT public.regress_otp_try($$SELECT crmguard.request_otp('public.regress_note', '4', 'Delivered')$$);
RESET ROLE;
SELECT pg_sleep(0.3);
SELECT count(*) AS codes_to_the_rep FROM crmguard.outbox WHERE recipient = '+39 333 000 0666';
-- the recipient change is on record
SELECT action, row_key, detail->>'column' AS column_name FROM crmguard.audit
 WHERE action = 'otp_recipient_changed' AND target = 'regress_note' ORDER BY id;
-- (f) the table's own BEFORE trigger sets the phone: the rep's statement
-- names another column, the recipient changes all the same
CREATE TABLE public.regress_parcel (
    id          bigint PRIMARY KEY,
    phone_input text,
    phone       text,
    status      text NOT NULL
);
CREATE FUNCTION public.regress_parcel_normalize() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.phone := regexp_replace(NEW.phone_input, '[^+0-9]', '', 'g');
    RETURN NEW;
END
$$;
CREATE TRIGGER normalize_phone BEFORE INSERT OR UPDATE ON public.regress_parcel
    FOR EACH ROW EXECUTE FUNCTION public.regress_parcel_normalize();
INSERT INTO public.regress_parcel VALUES (1, '+39 347 555 0011', NULL, 'Out for delivery');
GRANT SELECT, UPDATE ON public.regress_parcel TO regress_luca;
SELECT crmguard.create_otp_rule('Parcel OTP', 'public.regress_parcel', 'status', '{Delivered}', 'phone')
       IS NOT NULL AS created;
SET ROLE regress_luca;
UPDATE public.regress_parcel SET phone_input = '+39 333 000 0667' WHERE id = 1;
SELECT phone FROM public.regress_parcel;
SELECT public.regress_otp_try($$SELECT crmguard.request_otp('public.regress_parcel', '1', 'Delivered')$$);
RESET ROLE;
SELECT pg_sleep(0.3);
SELECT count(*) AS codes_to_the_rep FROM crmguard.outbox WHERE recipient = '+393330000667';
SELECT action, row_key, detail->>'column' AS column_name FROM crmguard.audit
 WHERE action = 'otp_recipient_changed' AND target = 'regress_parcel' ORDER BY id;
SELECT crmguard.drop_otp_rule('Parcel OTP');
DROP TABLE public.regress_parcel;
DROP FUNCTION public.regress_parcel_normalize();
-- (g) a recipient the type calls equal is another spelling all the same
CREATE EXTENSION citext;
CREATE TABLE public.regress_mailed (id bigint PRIMARY KEY, email citext, status text NOT NULL);
INSERT INTO public.regress_mailed VALUES (1, 'Bob@Example.com', 'Open');
GRANT SELECT, UPDATE ON public.regress_mailed TO regress_luca;
SELECT crmguard.create_otp_rule('Mailed OTP', 'public.regress_mailed', 'status', '{Delivered}', 'email',
                                channel => 'email', delivery => 'manual') IS NOT NULL AS created;
SET ROLE regress_luca;
UPDATE public.regress_mailed SET email = 'bob@example.com' WHERE id = 1;
RESET ROLE;
SELECT row_key FROM crmguard.otp_recipient_change WHERE target = 'public.regress_mailed'::regclass;
SELECT crmguard.drop_otp_rule('Mailed OTP');
DROP TABLE public.regress_mailed;
DROP EXTENSION citext;

-- ===========================================================================
-- Clients get the challenge id as data: table and column fields, one DETAIL
-- wording, crmguard.pending_challenge()
-- ===========================================================================
SET ROLE regress_luca;
DO $$
DECLARE
    t text; c text; d text; s text;
BEGIN
    UPDATE public.regress_note SET status = 'Delivered' WHERE id = 5;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS t = TABLE_NAME, c = COLUMN_NAME, d = PG_EXCEPTION_DETAIL, s = SCHEMA_NAME;
    RAISE NOTICE 'sqlstate % schema % table % column %', SQLSTATE, s, t, c;
    RAISE NOTICE 'detail names the pending challenge: %',
        d = format('Challenge %s is pending; its code was sent to +39 *** *** 005.',
                   crmguard.pending_challenge('public.regress_note', '5', 'Delivered'));
END
$$;
-- the second refusal uses the same words
DO $$
DECLARE
    d text;
BEGIN
    UPDATE public.regress_note SET status = 'Delivered' WHERE id = 5;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
    RAISE NOTICE 'same wording: %',
        d = format('Challenge %s is pending; its code was sent to +39 *** *** 005.',
                   crmguard.pending_challenge('public.regress_note', '5', 'Delivered'));
END
$$;
SELECT crmguard.pending_challenge('public.regress_note', '5', 'delivered') IS NULL AS other_value_none;
RESET ROLE;
-- another principal has no pending challenge for that row
SET ROLE regress_anna;
SELECT crmguard.pending_challenge('public.regress_note', '5', 'Delivered') IS NULL AS not_annas;
RESET ROLE;
-- and the full flow still works with the code the customer got
SELECT public.regress_otp_code('+39 347 555 0005') AS code5 \gset
SET ROLE regress_luca;
SELECT crmguard.pending_challenge('public.regress_note', '5', 'Delivered') AS c5 \gset
BEGIN;
SELECT crmguard.verify_otp(:c5, :'code5');
UPDATE public.regress_note SET status = 'Delivered' WHERE id = 5;
COMMIT;
RESET ROLE;
SELECT status FROM public.regress_note WHERE id = 5;

-- ===========================================================================
-- Attack: the gate is silently off for common types (issue 12, hole 2);
-- one case per type, each spelt as the application reads the gated value
-- ===========================================================================
CREATE EXTENSION citext;
CREATE TYPE public.regress_state AS ENUM ('Scheduled', 'Delivered');
CREATE DOMAIN public.regress_status_domain AS text CHECK (VALUE <> '');
CREATE COLLATION public.regress_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE public.regress_typed (
    id        bigint PRIMARY KEY,
    phone     text NOT NULL DEFAULT '+39 347 555 0100',
    done      boolean NOT NULL DEFAULT false,
    fixed     char(12) NOT NULL DEFAULT 'Scheduled',
    level     numeric NOT NULL DEFAULT 0,
    state     public.regress_state NOT NULL DEFAULT 'Scheduled',
    dom       public.regress_status_domain NOT NULL DEFAULT 'Scheduled',
    ci        public.citext NOT NULL DEFAULT 'Scheduled',
    icu       text COLLATE public.regress_ci NOT NULL DEFAULT 'Scheduled',
    doc       json,
    spot      point
);
INSERT INTO public.regress_typed (id) VALUES (1);
INSERT INTO public.regress_typed (id, ci, icu, level) VALUES (2, 'Delivered', 'Delivered', 1.0);
GRANT SELECT, UPDATE ON public.regress_typed TO regress_luca;
SELECT count(*) AS rules FROM (
    SELECT crmguard.create_otp_rule('typed ' || col, 'public.regress_typed', col, vals, 'phone', delivery => 'manual')
      FROM (VALUES ('done', '{true}'::text[]), ('fixed', '{Delivered}'), ('level', '{1.0}'),
                   ('state', '{Delivered}'), ('dom', '{Delivered}'), ('ci', '{Delivered}'),
                   ('icu', '{Delivered}')) AS v(col, vals)) r;
SET ROLE regress_luca;
SELECT public.regress_otp_try($$UPDATE public.regress_typed SET done = 'yes' WHERE id = 1$$) AS boolean_gate;
SELECT public.regress_otp_try($$UPDATE public.regress_typed SET fixed = 'Delivered' WHERE id = 1$$) AS char_n_gate;
SELECT public.regress_otp_try($$UPDATE public.regress_typed SET level = 1 WHERE id = 1$$) AS numeric_gate;
SELECT public.regress_otp_try($$UPDATE public.regress_typed SET state = 'Delivered' WHERE id = 1$$) AS enum_gate;
SELECT public.regress_otp_try($$UPDATE public.regress_typed SET dom = 'Delivered' WHERE id = 1$$) AS domain_gate;
SELECT public.regress_otp_try($$UPDATE public.regress_typed SET ci = 'DELIVERED' WHERE id = 1$$) AS citext_gate;
SELECT public.regress_otp_try($$UPDATE public.regress_typed SET icu = 'DELIVERED' WHERE id = 1$$) AS icu_gate;
-- request_otp takes any spelling of the value, too
SELECT crmguard.request_otp('public.regress_typed', '1', 'delivered') IS NOT NULL AS citext_request;
-- a row that already holds the value in another spelling does not enter it
SELECT public.regress_otp_try($$UPDATE public.regress_typed SET ci = 'DELIVERED', icu = 'delivered', level = 1.000 WHERE id = 2$$) AS same_value;
RESET ROLE;
-- types whose equality cannot be decided are refused (CG020)
SELECT public.regress_otp_try($$SELECT crmguard.create_otp_rule('typed doc', 'public.regress_typed', 'doc', '{"{}"}', 'phone')$$) AS json_refused;
SELECT public.regress_otp_try($$SELECT crmguard.create_otp_rule('typed spot', 'public.regress_typed', 'spot', '{"(1,1)"}', 'phone')$$) AS point_refused;

-- ===========================================================================
-- Attack: request_otp ignores visibility (issue 12, hole 4)
-- ===========================================================================
CREATE TABLE public.regress_vis_note (id bigint PRIMARY KEY, phone text, status text);
INSERT INTO public.regress_vis_note VALUES (1, '+39 347 555 0201', 'Open'), (2, '+39 347 555 0202', 'Open');
GRANT SELECT, UPDATE ON public.regress_vis_note TO regress_luca;
SELECT crmguard.create_otp_rule('Vis OTP', 'public.regress_vis_note', 'status', '{Closed}', 'phone',
                                delivery => 'manual') IS NOT NULL AS created;
-- the table's own row security shows luca row 1 only
ALTER TABLE public.regress_vis_note ENABLE ROW LEVEL SECURITY;
CREATE POLICY regress_row_1 ON public.regress_vis_note USING (id = 1);
SET ROLE regress_luca;
SELECT public.regress_otp_try($$SELECT crmguard.request_otp('public.regress_vis_note', '1', 'Closed')$$) ~ '^ok' AS visible_row_ok;
SELECT public.regress_otp_try($$SELECT crmguard.request_otp('public.regress_vis_note', '2', 'Closed')$$) AS hidden_row;
SELECT public.regress_otp_try($$SELECT crmguard.request_otp('public.regress_vis_note', '3', 'Closed')$$) AS missing_row;
RESET ROLE;
SELECT count(*) AS codes_for_hidden_row FROM crmguard.outbox WHERE recipient = '+39 347 555 0202';

-- ===========================================================================
-- Attack: unlimited fresh challenges, each rolled back (issue 12, hole 5)
-- ===========================================================================
CREATE TABLE public.regress_rate (id bigint PRIMARY KEY, phone text, status text);
INSERT INTO public.regress_rate SELECT i, '+39 347 555 03' || lpad(i::text, 2, '0'), 'Open' FROM generate_series(1, 9) i;
GRANT SELECT, UPDATE ON public.regress_rate TO regress_luca, regress_anna;
SELECT crmguard.create_otp_rule('Rate OTP', 'public.regress_rate', 'status', '{Closed}', 'phone',
                                channel => 'rate', delivery => 'manual',
                                challenges_per_row => 2, challenges_per_principal => 4,
                                challenge_window => '1 hour') IS NOT NULL AS created;
SET ROLE regress_luca;
BEGIN; SELECT crmguard.request_otp('public.regress_rate', '1', 'Closed') IS NOT NULL AS sent; ROLLBACK;
BEGIN; SELECT crmguard.request_otp('public.regress_rate', '1', 'Closed') IS NOT NULL AS sent; ROLLBACK;
SELECT public.regress_otp_try($$SELECT crmguard.request_otp('public.regress_rate', '1', 'Closed')$$) AS third_for_row;
BEGIN; SELECT crmguard.request_otp('public.regress_rate', '2', 'Closed') IS NOT NULL AS sent; ROLLBACK;
BEGIN; SELECT crmguard.request_otp('public.regress_rate', '3', 'Closed') IS NOT NULL AS sent; ROLLBACK;
SELECT public.regress_otp_try($$SELECT crmguard.request_otp('public.regress_rate', '4', 'Closed')$$) AS fifth_for_principal;
RESET ROLE;
-- another principal is not limited by luca's requests
SET ROLE regress_anna;
SELECT crmguard.request_otp('public.regress_rate', '5', 'Closed') IS NOT NULL AS anna_sent;
RESET ROLE;
SELECT count(*) AS messages_sent FROM crmguard.outbox WHERE channel = 'rate';

-- ===========================================================================
-- Attack: a stale code handed out after its challenge expired (issue 12, hole 7)
-- ===========================================================================
SELECT crmguard.create_otp_rule('Stale OTP', 'public.regress_rate', 'status', '{Lost}', 'phone',
                                channel => 'stale', delivery => 'manual',
                                valid_for => '200 milliseconds') IS NOT NULL AS created;
SELECT crmguard.request_otp('public.regress_rate', '6', 'Lost') IS NOT NULL AS requested;
SELECT pg_sleep(0.3);
SELECT count(*) AS claimed FROM crmguard.claim_outbox('stale', 10);
SELECT count(*) AS stale, count(body) AS bodies_left FROM crmguard.outbox WHERE channel = 'stale';
-- a live one is still handed out
SELECT crmguard.drop_otp_rule('Stale OTP');
SELECT crmguard.create_otp_rule('Fresh OTP', 'public.regress_rate', 'status', '{Lost}', 'phone',
                                channel => 'stale', delivery => 'manual') IS NOT NULL AS created;
SELECT crmguard.request_otp('public.regress_rate', '7', 'Lost') IS NOT NULL AS requested;
SELECT count(*) AS claimed FROM crmguard.claim_outbox('stale', 10);

-- ===========================================================================
-- Attack: "nobody" is exempt (issue 11, hole 4): a group role that maps to
-- no principal must be gated by a rule that names CRM roles
-- ===========================================================================
CREATE ROLE regress_otp_group;
GRANT SELECT, UPDATE ON public.regress_rate TO regress_otp_group;
SELECT crmguard.create_otp_rule('Agents OTP', 'public.regress_rate', 'status', '{Shipped}', 'phone',
                                delivery => 'manual', applies_to => '{agent}') IS NOT NULL AS created;
SET ROLE regress_anna;   -- a principal without role "agent" is exempt, as the rule says
SELECT public.regress_otp_try($$UPDATE public.regress_rate SET status = 'Shipped' WHERE id = 8$$) AS area_manager;
RESET ROLE;
SET ROLE regress_otp_group;
SELECT crmguard.current_principal() IS NULL AS nobody;
SELECT public.regress_otp_try($$UPDATE public.regress_rate SET status = 'Shipped' WHERE id = 9$$) AS nobody_gated;
RESET ROLE;
SELECT id, status FROM public.regress_rate WHERE id IN (8, 9) ORDER BY id;

-- ===========================================================================
-- Attack: the table owner plants a domain whose CHECK records who runs it;
-- request_otp, the guard, the worker and create_otp_rule must never run it as
-- a superuser (issue 11, hole 1)
-- ===========================================================================
CREATE ROLE regress_otp_owner;
GRANT CREATE ON SCHEMA public TO regress_otp_owner;
SET ROLE regress_otp_owner;
CREATE TABLE public.regress_who (who name, super boolean, at timestamptz DEFAULT clock_timestamp());
GRANT INSERT ON public.regress_who TO PUBLIC;
CREATE FUNCTION public.regress_log_who(v text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.regress_who (who, super)
    SELECT current_user, r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user;
    RETURN true;
END
$$;
CREATE DOMAIN public.regress_spy_key AS text CHECK (public.regress_log_who(VALUE));
CREATE DOMAIN public.regress_spy_status AS text CHECK (public.regress_log_who(VALUE));
CREATE TABLE public.regress_owned (id public.regress_spy_key PRIMARY KEY, phone text,
                                   status public.regress_spy_status);
INSERT INTO public.regress_owned VALUES ('k1', '+39 347 555 0401', 'Open'), ('k2', '+39 347 555 0402', 'Open');
GRANT SELECT, UPDATE ON public.regress_owned TO regress_luca;
RESET ROLE;
TRUNCATE public.regress_who;
-- a superuser defines the rule: the values are cast as the owner
SELECT crmguard.create_otp_rule('Owned OTP', 'public.regress_owned', 'status', '{Closed}', 'phone',
                                condition => '{"field": "status", "op": "<>", "value": "Lost"}') IS NOT NULL AS created;
SET ROLE regress_luca;
SELECT crmguard.request_otp('public.regress_owned', 'k1', 'Closed') IS NOT NULL AS requested;
SELECT public.regress_otp_try($$UPDATE public.regress_owned SET status = 'Closed' WHERE id = 'k2'$$);
RESET ROLE;
SELECT public.regress_otp_code('+39 347 555 0402') IS NOT NULL AS worker_sent;
SELECT count(*) > 0 AS the_check_ran, count(*) FILTER (WHERE super) AS ran_as_superuser
  FROM public.regress_who;
SELECT DISTINCT who FROM public.regress_who ORDER BY who;

-- ===========================================================================
-- Attack: the status changes although the statement names another column.
-- A statement whose SET list misses every column the guard watches, on a
-- table without BEFORE UPDATE row triggers, skips the guard (it could not
-- change those columns); each other way to change one must still be gated.
-- ===========================================================================
CREATE TABLE public.regress_skip (
    id     bigint PRIMARY KEY,
    phone  text,
    status text NOT NULL,
    zone   text,
    note   text,
    done   boolean NOT NULL DEFAULT false,
    stage  text GENERATED ALWAYS AS (CASE WHEN done THEN 'Closed' ELSE 'Open' END) STORED
);
INSERT INTO public.regress_skip (id, phone, status, zone)
SELECT i, '+39 347 555 05' || lpad(i::text, 2, '0'), 'Out for delivery', 'Milano' FROM generate_series(1, 11) i;
UPDATE public.regress_skip SET status = 'Delivered', zone = 'Torino' WHERE id = 9;
UPDATE public.regress_skip SET phone = NULL WHERE id = 10;
UPDATE public.regress_skip SET status = 'Delivered', done = true WHERE id = 11;
GRANT SELECT, INSERT, UPDATE ON public.regress_skip TO regress_luca;
CREATE VIEW public.regress_skip_view AS SELECT id, status, note FROM public.regress_skip;
GRANT SELECT, UPDATE ON public.regress_skip_view TO regress_luca;
SELECT crmguard.create_otp_rule('Skip OTP', 'public.regress_skip', 'status', '{Delivered}', 'phone',
                                delivery => 'manual',
                                condition => '{"field": "zone", "op": "=", "value": "Milano"}') IS NOT NULL AS created;
SELECT crmguard.create_otp_rule('Stage OTP', 'public.regress_skip', 'stage', '{Closed}', 'phone',
                                delivery => 'manual') IS NOT NULL AS created;
-- the skip rests on this: the guard's WHEN is false on a row compared with
-- itself (every term asks whether a column it reads changed), whatever the row
SELECT format('SELECT count(*) AS rows_whose_when_holds_unchanged FROM public.regress_skip r WHERE %s',
              regexp_replace(substring(pg_get_triggerdef(oid) FROM 'WHEN \((.*)\) EXECUTE FUNCTION'),
                             '\m(old|new)\.', 'r.', 'g'))
  FROM pg_trigger WHERE tgrelid = 'public.regress_skip'::regclass AND tgname = 'zz_crmguard_otp_guard' \gexec
SET ROLE regress_luca;
-- names no watched column: passes (the guard is skipped, and would have passed it)
SELECT public.regress_otp_try($$UPDATE public.regress_skip SET note = 'seen'$$) AS note_only;
-- ON CONFLICT DO UPDATE and MERGE set the status in an action
SELECT public.regress_otp_try($$INSERT INTO public.regress_skip (id, phone, status) VALUES (1, '+39 347 555 0501', 'Out for delivery')
                                ON CONFLICT (id) DO UPDATE SET status = 'Delivered'$$) AS on_conflict;
SELECT public.regress_otp_try($$MERGE INTO public.regress_skip t USING (VALUES (2::bigint, 'x')) s(id, v) ON t.id = s.id
                                WHEN MATCHED AND s.v = 'y' THEN UPDATE SET note = 'merged'
                                WHEN MATCHED THEN UPDATE SET status = 'Delivered'$$) AS merge_action;
-- a view's column list hides nothing
SELECT public.regress_otp_try($$UPDATE public.regress_skip_view SET status = 'Delivered' WHERE id = 3$$) AS through_view;
-- a generated column follows the column the statement sets
SELECT public.regress_otp_try($$UPDATE public.regress_skip SET done = true WHERE id = 4$$) AS generated_stage;
-- the key, a recipient and a condition column are watched too
SELECT public.regress_otp_try($$UPDATE public.regress_skip SET id = 105 WHERE id = 5$$) AS key_change;
SELECT public.regress_otp_try($$UPDATE public.regress_skip SET zone = 'Milano' WHERE id = 9$$) AS condition_now_true;
-- a writable CTE: the outer statement names note only, its WITH query the status
SELECT public.regress_otp_try($$WITH d AS (UPDATE public.regress_skip SET status = 'Delivered' WHERE id = 6 RETURNING id)
                                UPDATE public.regress_skip SET note = 'cte' WHERE id = 7$$) AS writable_cte;
RESET ROLE;
-- the table's own BEFORE trigger sets the status from the note
CREATE FUNCTION public.regress_skip_from_note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.note = 'delivered' THEN
        NEW.status := 'Delivered';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER from_note BEFORE UPDATE ON public.regress_skip
    FOR EACH ROW EXECUTE FUNCTION public.regress_skip_from_note();
SET ROLE regress_luca;
SELECT public.regress_otp_try($$UPDATE public.regress_skip SET note = 'delivered' WHERE id = 8$$) AS before_trigger;
RESET ROLE;
SELECT id, status, stage, zone, note FROM public.regress_skip ORDER BY id;
SELECT crmguard.drop_otp_rule('Skip OTP');
SELECT crmguard.drop_otp_rule('Stage OTP');
DROP VIEW public.regress_skip_view;
DROP TABLE public.regress_skip;
DROP FUNCTION public.regress_skip_from_note();

-- every refusal above is in the audit log, and the chain holds
-- ===========================================================================
-- Attack: one verified code opens more than the one change it was for: the
-- same change again in the same transaction, another gated value of the
-- rule, or the gated value of another rule on the same row
-- ===========================================================================
CREATE TABLE public.regress_once (
    id      bigint PRIMARY KEY,
    phone   text,
    email   text,
    status  text NOT NULL,
    payment text NOT NULL
);
INSERT INTO public.regress_once VALUES (1, '+39 347 555 0701', 'cfo@example.com', 'Out for delivery', 'Open');
GRANT SELECT, UPDATE ON public.regress_once TO regress_luca;
SELECT crmguard.create_otp_rule('Once OTP', 'public.regress_once', 'status', '{Delivered,Returned}', 'phone',
                                delivery => 'manual') IS NOT NULL AS created;
SELECT crmguard.create_otp_rule('Once payment OTP', 'public.regress_once', 'payment', '{Delivered}', 'email',
                                channel => 'email', delivery => 'manual') IS NOT NULL AS created;
SET ROLE regress_luca;
SELECT crmguard.request_otp('public.regress_once', '1', 'Delivered') AS once_challenge \gset
RESET ROLE;
SELECT public.regress_otp_code('+39 347 555 0701') AS once_code \gset
SET ROLE regress_luca;
BEGIN;
SELECT crmguard.verify_otp(:once_challenge, :'once_code') AS verified;
-- (a) another gated value of the same rule
SELECT public.regress_otp_try($$UPDATE public.regress_once SET status = 'Returned' WHERE id = 1$$) AS other_value_same_code;
-- (b) the gated value of another rule on the same row
SELECT public.regress_otp_try($$UPDATE public.regress_once SET payment = 'Delivered' WHERE id = 1$$) AS other_rule_same_code;
-- the one change the code was for
UPDATE public.regress_once SET status = 'Delivered' WHERE id = 1;
-- (c) the same change again, after stepping back
UPDATE public.regress_once SET status = 'Out for delivery' WHERE id = 1;
SELECT public.regress_otp_try($$UPDATE public.regress_once SET status = 'Delivered' WHERE id = 1$$) AS second_change_same_code;
COMMIT;
RESET ROLE;
SELECT status, payment FROM public.regress_once;
SELECT crmguard.drop_otp_rule('Once OTP'), crmguard.drop_otp_rule('Once payment OTP');
DROP TABLE public.regress_once;

SELECT pg_sleep(0.5);
SELECT ok FROM crmguard.verify_audit();

SELECT crmguard.drop_otp_rule(rule_name) FROM crmguard.otp_rule ORDER BY id;
DROP TABLE public.regress_note, public.regress_typed, public.regress_vis_note, public.regress_rate;
DROP TABLE public.regress_owned, public.regress_who;
DROP DOMAIN public.regress_spy_key, public.regress_spy_status;
DROP FUNCTION public.regress_log_who(text);
REVOKE CREATE ON SCHEMA public FROM regress_otp_owner;
DROP ROLE regress_otp_owner, regress_otp_group;
DROP TYPE public.regress_state;
DROP DOMAIN public.regress_status_domain;
DROP COLLATION public.regress_ci;
DROP EXTENSION citext;
DROP FUNCTION public.regress_otp_try(text), public.regress_otp_code(text);
