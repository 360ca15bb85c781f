--
-- Approval lock attacks (review 2): a table owner changes a row locked by a
-- pending approval request without an UPDATE, so no row trigger sees it.
--
\set VERBOSITY default
CREATE OR REPLACE FUNCTION public.regress_try(query text) RETURNS text
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE query;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
GRANT EXECUTE ON FUNCTION public.regress_try(text) TO PUBLIC;
CREATE ROLE regress_ala_owner;
CREATE ROLE regress_ala_boss;
CREATE ROLE regress_ala_rep;
CREATE ROLE regress_ala_form;       -- a web form: may insert, never read
GRANT USAGE, CREATE ON SCHEMA public TO regress_ala_owner;
SELECT crmguard.add_principal('ala_boss', '{reviewer}', db_role => 'regress_ala_boss') > 0 AS boss;
SELECT crmguard.add_principal('ala_rep', '{agent}', db_role => 'regress_ala_rep') > 0 AS rep;
CREATE TABLE public.regress_ala_deal (id int PRIMARY KEY, discount int, title text, price numeric(10,2));
INSERT INTO public.regress_ala_deal VALUES (1, 5, 'spare parts', 100.40), (2, 5, 'pallets', 10.00);
SELECT crmguard.create_approval_process('ala discount', 'public.regress_ala_deal',
    '{"field": "discount", "op": ">=", "value": 20}',
    '[{"name": "Boss", "approvers": {"role": "reviewer"}}]') > 0 AS process;
ALTER TABLE public.regress_ala_deal OWNER TO regress_ala_owner;
GRANT SELECT, UPDATE ON public.regress_ala_deal TO regress_ala_rep, regress_ala_boss;
GRANT INSERT ON public.regress_ala_deal TO regress_ala_form, regress_ala_rep;

SET ROLE regress_ala_rep;
UPDATE public.regress_ala_deal SET discount = 30 WHERE id = 1;
SELECT crmguard.submit_for_approval('public.regress_ala_deal', '1') > 0 AS submitted;
SELECT regexp_replace(public.regress_try($$UPDATE public.regress_ala_deal SET title = 'gold bars' WHERE id = 1$$), 'request \d+', 'request N') AS update_locked_row;
RESET ROLE;

-- Attack: ALTER COLUMN ... TYPE ... USING rewrites every row, the locked one
-- included, and fires no row trigger; the column is named by no rule
SET ROLE regress_ala_owner;
SELECT regexp_replace(public.regress_try($$ALTER TABLE public.regress_ala_deal ALTER COLUMN title TYPE text
                             USING CASE WHEN id = 1 THEN 'gold bars' ELSE title END$$), 'request \d+', 'request N') AS alter_column_type_using_rewrites_locked_row;
-- a narrower type rounds the locked row's value too
SELECT regexp_replace(public.regress_try($$ALTER TABLE public.regress_ala_deal ALTER COLUMN price TYPE numeric(10,0)$$), 'request \d+', 'request N') AS alter_column_type_rounds_locked_row;
RESET ROLE;
SELECT id, discount, title, price FROM public.regress_ala_deal ORDER BY id;
-- both refusals are in the audit log (written by the worker: wait for them)
DO $$
BEGIN
    FOR i IN 1..600 LOOP
        EXIT WHEN (SELECT count(*) FROM crmguard.audit WHERE action = 'column_type_changed_refused'
                      AND target = 'regress_ala_deal') = 2;
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;
SELECT action, target, regexp_replace(detail ->> 'problem', 'request \d+', 'request N') AS problem FROM crmguard.audit
 WHERE action = 'column_type_changed_refused' AND target = 'regress_ala_deal' ORDER BY id;

-- Attack: a role that may only insert asks the lock's probe which rows are
-- pending, inside its own INSERT (a plain INSERT fires no lock: it learns nothing)
SET ROLE regress_ala_form;
SELECT crmguard.approval_row_pending('public.regress_ala_deal', 1) AS probe_outside_insert;
INSERT INTO public.regress_ala_deal (id, discount, title)
SELECT 100 + k, 0, 'probe' FROM generate_series(1, 2) k
 WHERE crmguard.approval_row_pending('public.regress_ala_deal', k);
RESET ROLE;
SELECT id FROM public.regress_ala_deal WHERE title = 'probe' ORDER BY id;    -- insert_only_role_probes_pending_rows
-- the lock itself still fires inside INSERT ... ON CONFLICT DO UPDATE
SET ROLE regress_ala_rep;
SELECT regexp_replace(public.regress_try($$INSERT INTO public.regress_ala_deal (id, discount, title) VALUES (1, 0, 'x')
                             ON CONFLICT (id) DO UPDATE SET title = 'upserted'$$), 'request \d+', 'request N') AS upsert_locked_row;
RESET ROLE;

-- once the request is decided, the owner may change its column types again
SET ROLE regress_ala_boss;
SELECT crmguard.reject(r.id, 'too generous') FROM crmguard.approval_request r WHERE r.row_key = '1';
RESET ROLE;
SET ROLE regress_ala_owner;
SELECT regexp_replace(public.regress_try($$ALTER TABLE public.regress_ala_deal ALTER COLUMN price TYPE numeric(12,2)$$), 'request \d+', 'request N') AS alter_column_type_nothing_pending;
RESET ROLE;
-- a superuser's change goes through, audited
SET ROLE regress_ala_rep;
SELECT crmguard.submit_for_approval('public.regress_ala_deal', '1') > 0 AS submitted_again;
RESET ROLE;
SET client_min_messages = error;   -- its WARNING names the request id: the audit log below says it
ALTER TABLE public.regress_ala_deal ALTER COLUMN title TYPE varchar(40);
RESET client_min_messages;
SELECT action, regexp_replace(detail ->> 'problem', 'request \d+', 'request N') AS problem, detail ->> 'superuser' AS superuser FROM crmguard.audit
 WHERE action = 'column_type_changed' AND target = 'regress_ala_deal' ORDER BY id;

-- Attack: a rep submits row 2, then changes it in the same transaction. No
-- commit has moved the key's clock yet, and the backend's pending keys, read
-- before the submission, hold no request on the row.
SET ROLE regress_ala_rep;
UPDATE public.regress_ala_deal SET title = 'pallets' WHERE id = 2;
BEGIN;
UPDATE public.regress_ala_deal SET discount = 25 WHERE id = 2;
SELECT crmguard.submit_for_approval('public.regress_ala_deal', '2') > 0 AS submitted_in_transaction;
SELECT regexp_replace(public.regress_try($$UPDATE public.regress_ala_deal SET discount = 90 WHERE id = 2$$), 'request \d+', 'request N') AS change_after_own_submission;
ROLLBACK;
RESET ROLE;

-- Attack: the submitter recalls row 1's pending request, changes the row in
-- the same transaction (nothing is pending there any more), and rolls back.
-- The request is pending again: what the backend read inside the rolled-back
-- transaction must not let the next change through.
SET ROLE regress_ala_rep;
SELECT id AS ala_pending FROM crmguard.approval_request WHERE row_key = '1' AND state = 'pending' \gset
UPDATE public.regress_ala_deal SET title = title WHERE id = 2;
BEGIN;
SELECT crmguard.recall(:ala_pending) IS NOT NULL AS recalled_in_transaction;
UPDATE public.regress_ala_deal SET title = 'while recalled' WHERE id = 1;
ROLLBACK;
SELECT state FROM crmguard.approval_request WHERE id = :ala_pending;
SELECT regexp_replace(public.regress_try($$UPDATE public.regress_ala_deal SET title = 'gold bars' WHERE id = 1$$), 'request \d+', 'request N') AS change_after_rolled_back_recall;
RESET ROLE;

-- Attack: a table keyed by text, numeric or a domain over an integer, whose
-- pending row's key reads as an integer ("7"). A backend that reads the
-- table's pending keys after the submission must still find the row locked,
-- whatever the key column's type.
CREATE DOMAIN public.regress_ala_id AS int CHECK (VALUE > 0);
CREATE TABLE public.regress_ala_tkey (id text PRIMARY KEY, discount int, title text);
CREATE TABLE public.regress_ala_nkey (id numeric PRIMARY KEY, discount int, title text);
CREATE TABLE public.regress_ala_dkey (id public.regress_ala_id PRIMARY KEY, discount int, title text);
INSERT INTO public.regress_ala_tkey VALUES ('7', 5, 'text seven'), ('x7', 5, 'text x7');
INSERT INTO public.regress_ala_nkey VALUES (7, 5, 'numeric seven');
INSERT INTO public.regress_ala_dkey VALUES (7, 5, 'domain seven');
SELECT crmguard.create_approval_process('ala ' || t, 'public.' || t,
    '{"field": "discount", "op": ">=", "value": 20}',
    '[{"name": "Boss", "approvers": {"role": "reviewer"}}]') > 0 AS process
  FROM unnest('{regress_ala_tkey,regress_ala_nkey,regress_ala_dkey}'::text[]) t;
GRANT SELECT, UPDATE ON public.regress_ala_tkey, public.regress_ala_nkey, public.regress_ala_dkey TO regress_ala_rep;
SET ROLE regress_ala_rep;
UPDATE public.regress_ala_tkey SET discount = 30;
UPDATE public.regress_ala_nkey SET discount = 30;
UPDATE public.regress_ala_dkey SET discount = 30;
SELECT crmguard.submit_for_approval('public.regress_ala_tkey', '7') > 0 AS submitted_text_key,
       crmguard.submit_for_approval('public.regress_ala_tkey', 'x7') > 0 AS submitted_text_key_x7,
       crmguard.submit_for_approval('public.regress_ala_nkey', '7') > 0 AS submitted_numeric_key,
       crmguard.submit_for_approval('public.regress_ala_dkey', '7') > 0 AS submitted_domain_key;
RESET ROLE;
-- a new session reads the pending keys after the submissions
\c -
SET ROLE regress_ala_rep;
SELECT regexp_replace(public.regress_try($$UPDATE public.regress_ala_tkey SET title = 'changed' WHERE id = '7'$$), 'request \d+', 'request N') AS text_key_reading_as_integer;
SELECT regexp_replace(public.regress_try($$UPDATE public.regress_ala_tkey SET title = 'changed' WHERE id = 'x7'$$), 'request \d+', 'request N') AS text_key;
SELECT regexp_replace(public.regress_try($$UPDATE public.regress_ala_nkey SET title = 'changed' WHERE id = 7$$), 'request \d+', 'request N') AS numeric_key_reading_as_integer;
SELECT regexp_replace(public.regress_try($$UPDATE public.regress_ala_dkey SET title = 'changed' WHERE id = 7$$), 'request \d+', 'request N') AS domain_key_reading_as_integer;
-- the probe of the lock's WHEN clause answers the same
SELECT crmguard.approval_row_pending('public.regress_ala_tkey', '7'::text) AS probe_text_key,
       crmguard.approval_row_pending('public.regress_ala_nkey', 7::numeric) AS probe_numeric_key,
       crmguard.approval_row_pending('public.regress_ala_dkey', 7::public.regress_ala_id) AS probe_domain_key;
RESET ROLE;
SELECT title FROM public.regress_ala_tkey UNION ALL SELECT title FROM public.regress_ala_nkey
 UNION ALL SELECT title FROM public.regress_ala_dkey ORDER BY 1;
DROP TABLE public.regress_ala_tkey, public.regress_ala_nkey, public.regress_ala_dkey;
DROP DOMAIN public.regress_ala_id;

-- Attack: a table keyed by a date or a timestamp with time zone, whose text
-- follows the session's DateStyle and TimeZone. A rep submits a row under
-- one DateStyle, or changes a pending row under another DateStyle or time
-- zone: the lock must recognise the row's key however the session prints it.
CREATE TABLE public.regress_ala_day (id date PRIMARY KEY, discount int, title text);
CREATE TABLE public.regress_ala_at (id timestamptz PRIMARY KEY, discount int, title text);
INSERT INTO public.regress_ala_day VALUES ('2031-03-04', 5, 'day one'), ('2031-05-06', 5, 'day two');
INSERT INTO public.regress_ala_at VALUES ('2031-03-04 10:00:00+00', 5, 'moment');
SELECT crmguard.create_approval_process('ala ' || t, 'public.' || t,
    '{"field": "discount", "op": ">=", "value": 20}',
    '[{"name": "Boss", "approvers": {"role": "reviewer"}}]') > 0 AS process
  FROM unnest('{regress_ala_day,regress_ala_at}'::text[]) t;
GRANT SELECT, UPDATE ON public.regress_ala_day, public.regress_ala_at TO regress_ala_rep;
SET ROLE regress_ala_rep;
UPDATE public.regress_ala_day SET discount = 30;
UPDATE public.regress_ala_at SET discount = 30;
SET DateStyle = 'German';
SELECT crmguard.submit_for_approval('public.regress_ala_day', '04.03.2031') > 0 AS submitted_under_german_datestyle;
RESET DateStyle;
SET TimeZone = 'Asia/Tokyo';
SELECT crmguard.submit_for_approval('public.regress_ala_at', '2031-03-04 19:00:00+09') > 0 AS submitted_in_tokyo;
RESET TimeZone;
SELECT crmguard.submit_for_approval('public.regress_ala_day', '2031-05-06') > 0 AS submitted_under_iso_datestyle;
RESET ROLE;
SELECT r.target, r.row_key FROM crmguard.approval_request r
 WHERE r.target IN ('public.regress_ala_day'::regclass, 'public.regress_ala_at'::regclass) ORDER BY r.id;
\c -
SET ROLE regress_ala_rep;
SELECT regexp_replace(public.regress_try($$UPDATE public.regress_ala_day SET title = 'changed' WHERE id = '2031-03-04'$$), 'request \d+', 'request N') AS change_row_submitted_under_other_datestyle;
SET DateStyle = 'German';
SELECT regexp_replace(public.regress_try($$UPDATE public.regress_ala_day SET title = 'changed' WHERE id = '06.05.2031'$$), 'request \d+', 'request N') AS change_under_other_datestyle;
RESET DateStyle;
SET TimeZone = 'America/New_York';
SELECT regexp_replace(public.regress_try($$UPDATE public.regress_ala_at SET title = 'changed' WHERE id = '2031-03-04 10:00:00+00'$$), 'request \d+', 'request N') AS change_in_other_time_zone;
RESET TimeZone;
RESET ROLE;
SELECT title FROM public.regress_ala_day UNION ALL SELECT title FROM public.regress_ala_at ORDER BY 1;
DROP TABLE public.regress_ala_day, public.regress_ala_at;

DROP TABLE public.regress_ala_deal;
REVOKE ALL ON SCHEMA public FROM regress_ala_owner;
DROP ROLE regress_ala_owner;
DROP ROLE regress_ala_boss;
DROP ROLE regress_ala_rep;
DROP ROLE regress_ala_form;
