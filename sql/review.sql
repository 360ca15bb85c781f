--
-- Draft review: web-form leads wait as drafts until a reviewer approves them
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

CREATE ROLE regress_rev_owner;
CREATE ROLE regress_rev_form;       -- the web form's connection
CREATE ROLE regress_rev_rita;       -- the reviewer
CREATE ROLE regress_rev_marco;      -- another reviewer
CREATE ROLE regress_rev_sara;       -- an agent: exempt
CREATE ROLE regress_rev_mallory;    -- neither
GRANT USAGE ON SCHEMA public TO regress_rev_owner;
GRANT EXECUTE ON FUNCTION crmguard.enable_review(regclass, text, name[], text[]),
      crmguard.disable_review(regclass) TO regress_rev_owner;
SELECT crmguard.add_principal('rev_form', '{webform}', db_role => 'regress_rev_form') > 0 AS form;
SELECT crmguard.add_principal('rev_rita', '{reviewer}', db_role => 'regress_rev_rita') > 0 AS rita;
SELECT crmguard.add_principal('rev_marco', '{reviewer}', db_role => 'regress_rev_marco') > 0 AS marco;
SELECT crmguard.add_principal('rev_sara', '{agent}', db_role => 'regress_rev_sara') > 0 AS sara;
SELECT crmguard.add_principal('rev_mallory', '{webform}', db_role => 'regress_rev_mallory') > 0 AS mallory;

CREATE TABLE public.regress_lead (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company text NOT NULL CHECK (company <> ''),
    email   text CHECK (email LIKE '%_@_%'),
    phone   text,
    source  text NOT NULL DEFAULT 'web'
);
INSERT INTO public.regress_lead (company, email, phone) VALUES ('Novak Logistics', 'info@novak.example', '+39 02 555 0140');
CREATE TABLE public.regress_lead_log (lead bigint, at timestamptz DEFAULT now());
CREATE FUNCTION public.regress_log_lead() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.regress_lead_log (lead) VALUES (NEW.id); RETURN NEW; END $$;
CREATE TRIGGER a_log BEFORE INSERT ON public.regress_lead FOR EACH ROW EXECUTE FUNCTION public.regress_log_lead();
CREATE TRIGGER z_log AFTER INSERT ON public.regress_lead FOR EACH ROW EXECUTE FUNCTION public.regress_log_lead();
ALTER TABLE public.regress_lead OWNER TO regress_rev_owner;
ALTER TABLE public.regress_lead_log OWNER TO regress_rev_owner;
GRANT SELECT, INSERT ON public.regress_lead TO regress_rev_form, regress_rev_rita, regress_rev_marco,
      regress_rev_sara, regress_rev_mallory;
GRANT INSERT ON public.regress_lead_log TO PUBLIC;

-- ---------------------------------------------------------------------------
-- Bad input: a clear error, nothing changed
-- ---------------------------------------------------------------------------
CREATE TABLE public.regress_nokey (company text);
ALTER TABLE public.regress_nokey OWNER TO regress_rev_owner;
-- an inheritance parent: rows inserted into its child would show in it unreviewed
CREATE TABLE public.regress_lead_tree (id int PRIMARY KEY, company text);
CREATE TABLE public.regress_lead_tree_child () INHERITS (public.regress_lead_tree);
ALTER TABLE public.regress_lead_tree OWNER TO regress_rev_owner;
ALTER TABLE public.regress_lead_tree_child OWNER TO regress_rev_owner;
SET ROLE regress_rev_owner;
SELECT public.regress_try($$SELECT crmguard.enable_review('public.regress_nokey', 'reviewer')$$);
SELECT public.regress_try($$SELECT crmguard.enable_review(0, 'reviewer')$$) AS no_relation;
SELECT public.regress_try($$SELECT crmguard.enable_review('public.regress_lead_tree', 'reviewer')$$) AS inheritance_parent;
SELECT public.regress_try($$SELECT crmguard.enable_review('public.regress_lead_tree_child', 'reviewer')$$) AS inheritance_child;
SELECT public.regress_try($$SELECT crmguard.enable_review('public.regress_lead', 'reviewer', '{email,nope}')$$);
SELECT public.regress_try($$SELECT crmguard.enable_review('public.regress_lead', 'no such role')$$);
SELECT public.regress_try($$SELECT crmguard.enable_review('public.regress_lead', '')$$);
SELECT public.regress_try($$SELECT crmguard.disable_review('public.regress_lead')$$);
RESET ROLE;
DROP TABLE public.regress_lead_tree CASCADE;
SELECT count(*) AS configs FROM crmguard.review_config;
SELECT count(*) AS guards FROM pg_trigger WHERE tgrelid = 'public.regress_lead'::regclass AND tgname LIKE '%crmguard%';
-- only the owner
SET ROLE regress_rev_rita;
SELECT public.regress_try($$SELECT crmguard.enable_review('public.regress_lead', 'reviewer')$$);
RESET ROLE;

SET ROLE regress_rev_owner;
SELECT crmguard.enable_review('public.regress_lead', 'reviewer', '{company,email,phone}', '{agent}');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- A web form's leads arrive: drafts, not rows
-- ---------------------------------------------------------------------------
SET ROLE regress_rev_form;
INSERT INTO public.regress_lead (company, email, phone) VALUES ('x', 'junk', NULL);
-- a duplicate of an existing customer (other case, spaces, punctuation)
INSERT INTO public.regress_lead (company, email, phone) VALUES ('  NOVAK logistics ', 'INFO@Novak.example', '+39 (02) 555-0140');
-- two duplicates of each other in one statement
INSERT INTO public.regress_lead (company, email, phone)
VALUES ('Bottega Rossi', 'pietro@rossi.example', '333 555 0188'),
       ('Bottega Rossi srl', 'Pietro@Rossi.example ', NULL)
RETURNING id;
-- COPY too
COPY public.regress_lead (company, email, phone) FROM stdin;
Caffè Mole	ciao@mole.example	011 555 0155
\.
SELECT count(*) AS leads_the_form_sees FROM public.regress_lead;
SELECT id, row_data->>'company' AS company, submitted_by, state, duplicates FROM crmguard.draft ORDER BY id;
RESET ROLE;

-- nowhere in the table, not even for its owner, and no other trigger fired
SET ROLE regress_rev_owner;
SELECT count(*) AS rows_the_owner_sees FROM public.regress_lead;
SELECT count(*) AS logged FROM public.regress_lead_log;
RESET ROLE;

-- an exempt role's insert goes straight in
SET ROLE regress_rev_sara;
INSERT INTO public.regress_lead (company, email) VALUES ('Cantine Langhe', 'enrico@langhe.example');
RESET ROLE;
SELECT company FROM public.regress_lead ORDER BY id;

-- the reviewer sees every draft, with its likely duplicates
SET ROLE regress_rev_rita;
SELECT id, row_data->>'company' AS company, submitted_by, match_count, duplicates
  FROM (SELECT d.*, jsonb_array_length(d.duplicates->'drafts') + jsonb_array_length(d.duplicates->'rows') AS match_count
          FROM crmguard.draft d) d ORDER BY id;
RESET ROLE;
SELECT min(id) AS junk, min(id) + 1 AS novak, min(id) + 2 AS rossi1, min(id) + 3 AS rossi2, min(id) + 4 AS mole
  FROM crmguard.draft_state \gset

-- ---------------------------------------------------------------------------
-- Forged reviewers: no approve, reject or peek, whatever the session sets
-- ---------------------------------------------------------------------------
SET ROLE regress_rev_mallory;
SELECT public.regress_try($$SET crmguard.principal = 'rev_rita'$$);
SELECT count(*) AS drafts_mallory_sees FROM crmguard.draft;
SELECT public.regress_try(format('SELECT crmguard.approve_draft(%s)', :novak));
SELECT public.regress_try(format('SELECT crmguard.reject_draft(%s, %L)', :novak, 'spam'));
SELECT public.regress_try(format('SELECT crmguard.comment_draft(%s, %L)', :novak, 'hello'));
SELECT crmguard.draft_duplicates(:novak) AS duplicates_for_mallory;
RESET ROLE;
-- the submitter cannot approve its own draft either
SET ROLE regress_rev_form;
SELECT public.regress_try(format('SELECT crmguard.approve_draft(%s)', :rossi1));
RESET ROLE;

-- ---------------------------------------------------------------------------
-- Review: reject the junk, merge the duplicate, correct and approve the rest
-- ---------------------------------------------------------------------------
SET ROLE regress_rev_rita;
SELECT public.regress_try(format('SELECT crmguard.reject_draft(%s, NULL)', :junk));
SELECT public.regress_try(format($$SELECT crmguard.reject_draft(%s, 'bad', '{"nope": "x"}')$$, :junk));
SELECT crmguard.reject_draft(:junk, 'not a company', '{"company": "too short", "email": "not an e-mail address"}');
SELECT crmguard.reject_draft(:novak, 'duplicate of an existing customer');
SELECT crmguard.comment_draft(:rossi2, 'same shop as the draft before');
SELECT crmguard.reject_draft(:rossi2, 'duplicate of another draft');
-- changes naming a column that does not exist: nothing happens
SELECT public.regress_try(format($$SELECT crmguard.approve_draft(%s, NULL, '{"nope": 1}')$$, :rossi1));
SELECT state, last_error FROM crmguard.draft WHERE id = :rossi1;
SELECT crmguard.approve_draft(:rossi1, 'welcome', '{"company": "Bottega Rossi srl"}') IS NOT NULL AS approved;
SELECT crmguard.approve_draft(:mole) IS NOT NULL AS approved;
-- approving twice is refused
SELECT public.regress_try(format('SELECT crmguard.approve_draft(%s)', :mole));
RESET ROLE;
SELECT company, email, phone FROM public.regress_lead ORDER BY id;
SELECT count(*) AS logged FROM public.regress_lead_log;

-- a constraint failure at approval: the draft stays pending with the error, the table unchanged
SET ROLE regress_rev_form;
INSERT INTO public.regress_lead (company, email) VALUES ('Ferri', 'ferri@example');
RESET ROLE;
SELECT max(id) AS ferri FROM crmguard.draft_state \gset
SET ROLE regress_rev_rita;
SELECT crmguard.approve_draft(:ferri, NULL, '{"company": ""}') AS key;
SELECT state, last_error FROM crmguard.draft WHERE id = :ferri;
RESET ROLE;
SELECT count(*) AS leads FROM public.regress_lead;

-- the submitter resubmits its rejected draft, corrected
SET ROLE regress_rev_form;
SELECT id, state, reason, field_reasons FROM crmguard.draft WHERE id = :junk;
SELECT crmguard.resubmit_draft(:junk, '{"company": "Officine Lambro", "email": "acquisti@lambro.example"}');
SELECT public.regress_try(format($$SELECT crmguard.resubmit_draft(%s, '{"x": 1}')$$, :junk));
RESET ROLE;
SET ROLE regress_rev_marco;
SELECT crmguard.approve_draft(:junk) IS NOT NULL AS approved;
RESET ROLE;

-- each draft's history: who did what, in order (the draft view, as a reviewer)
SET ROLE regress_rev_rita;
SELECT id, state, reviewed_by, row_key IS NOT NULL AS has_row, jsonb_path_query_array(history, '$[*].event') AS events,
       jsonb_path_query_array(history, '$[*].by') AS by
  FROM crmguard.draft ORDER BY id;
RESET ROLE;
-- a session with no principal (the DBA here) sees no draft through the view
SELECT count(*) AS drafts_nobody_sees FROM crmguard.draft;
SELECT action, count(*) FROM crmguard.audit WHERE action LIKE '%draft%' OR action LIKE '%review%'
 GROUP BY action ORDER BY action;
SELECT ok FROM crmguard.verify_audit();

-- approval goes through the table's other crmguard guards: an OTP rule on
-- the source refuses a partner lead until its code is verified
SELECT crmguard.create_otp_rule('Partner lead OTP', 'public.regress_lead', 'source', '{partner}', 'phone',
                                delivery => 'manual') > 0 AS otp_rule;
SET ROLE regress_rev_form;
INSERT INTO public.regress_lead (company, phone, source) VALUES ('Partner Spa', '+39 011 555 0199', 'partner');
RESET ROLE;
SELECT max(id) AS partner FROM crmguard.draft_state \gset
SET ROLE regress_rev_rita;
SELECT crmguard.approve_draft(:partner) AS key;
SELECT state, split_part(last_error, ':', 1) AS sqlstate FROM crmguard.draft WHERE id = :partner;
-- corrected, it goes in
SELECT crmguard.approve_draft(:partner, 'direct lead', '{"source": "web"}') IS NOT NULL AS approved;
RESET ROLE;
SELECT crmguard.drop_otp_rule('Partner lead OTP');
-- an approval lets in its own row only: a row a trigger of the table adds to
-- another reviewed table is still a draft
CREATE TABLE public.regress_lead_task (id serial PRIMARY KEY, lead bigint, what text);
ALTER TABLE public.regress_lead_task OWNER TO regress_rev_owner;
GRANT INSERT ON public.regress_lead_task TO regress_rev_rita;
GRANT USAGE ON SEQUENCE public.regress_lead_task_id_seq TO regress_rev_rita;
CREATE FUNCTION public.regress_lead_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.regress_lead_task (lead, what) VALUES (NEW.id, 'call back'); RETURN NEW; END $$;
CREATE TRIGGER m_task AFTER INSERT ON public.regress_lead FOR EACH ROW EXECUTE FUNCTION public.regress_lead_task();
SET ROLE regress_rev_owner;
SELECT crmguard.enable_review('public.regress_lead_task', 'reviewer');
RESET ROLE;
SET ROLE regress_rev_form;
INSERT INTO public.regress_lead (company) VALUES ('Trattoria Po');
RESET ROLE;
SELECT max(id) AS po FROM crmguard.draft_state \gset
SET ROLE regress_rev_rita;
SELECT crmguard.approve_draft(:po) IS NOT NULL AS approved;
RESET ROLE;
SELECT (SELECT count(*) FROM public.regress_lead WHERE company = 'Trattoria Po') AS lead_in,
       (SELECT count(*) FROM public.regress_lead_task) AS tasks_in,
       (SELECT count(*) FROM crmguard.draft_state WHERE target = 'public.regress_lead_task'::regclass) AS task_drafts;
DROP TRIGGER m_task ON public.regress_lead;

-- a match column cannot be renamed or dropped under the review
SET ROLE regress_rev_owner;
SELECT public.regress_try($$ALTER TABLE public.regress_lead RENAME COLUMN email TO mail$$);
RESET ROLE;
-- a trigger of the owner's that fires ahead of the guard would see the drafts: refused
SET ROLE regress_rev_owner;
SELECT public.regress_try($$CREATE TRIGGER " spy" BEFORE INSERT ON public.regress_lead
                             FOR EACH ROW EXECUTE FUNCTION public.regress_log_lead()$$);
SELECT public.regress_try($$ALTER TRIGGER a_log ON public.regress_lead RENAME TO "!!a_log"$$);
-- one that fires after the guard is fine
CREATE TRIGGER "!d_log" BEFORE INSERT ON public.regress_lead FOR EACH ROW EXECUTE FUNCTION public.regress_log_lead();
DROP TRIGGER "!d_log" ON public.regress_lead;
RESET ROLE;
-- and review is not switched on over such a trigger
CREATE TABLE public.regress_spied (id int PRIMARY KEY);
CREATE TRIGGER " spy" BEFORE INSERT ON public.regress_spied FOR EACH ROW EXECUTE FUNCTION public.regress_log_lead();
ALTER TABLE public.regress_spied OWNER TO regress_rev_owner;
SET ROLE regress_rev_owner;
SELECT public.regress_try($$SELECT crmguard.enable_review('public.regress_spied', 'reviewer')$$);
RESET ROLE;
DROP TABLE public.regress_spied;
-- last_drafts(): the drafts of the session's most recent statement that made
-- any, since the INSERT reports no row (RETURNING cannot name them)
SET ROLE regress_rev_form;
INSERT INTO public.regress_lead (company) VALUES ('Batch One'), ('Batch Two');
CREATE FUNCTION pg_temp.last_companies() RETURNS text[] LANGUAGE sql AS $$
    SELECT array_agg(row_data->>'company' ORDER BY id) FROM crmguard.draft
     WHERE id = ANY (crmguard.last_drafts()) $$;
SELECT cardinality(crmguard.last_drafts()) AS drafts, pg_temp.last_companies();
SELECT 1 AS no_draft_made;
SELECT pg_temp.last_companies() AS still_the_batch;
-- a statement that fails after drafting its first row made none
INSERT INTO public.regress_lead (company) VALUES ('Batch Three'), ((1 / (random() * 0)::int)::text);
SELECT pg_temp.last_companies() AS still_the_batch;
-- nor did a rolled-back savepoint
BEGIN;
SAVEPOINT s;
INSERT INTO public.regress_lead (company) VALUES ('Batch Four');
SELECT pg_temp.last_companies() AS in_savepoint;
ROLLBACK TO SAVEPOINT s;
SELECT pg_temp.last_companies() AS after_rollback_to_savepoint;
INSERT INTO public.regress_lead (company) VALUES ('Batch Five');
COMMIT;
SELECT pg_temp.last_companies() AS latest;
RESET ROLE;
DELETE FROM crmguard.draft_state WHERE row_data->>'company' LIKE 'Batch %';

-- an approved draft's INSERT keeps its plan per column list; however many
-- column lists drafts carry (one per version of the table: a draft names
-- the columns its table had), such texts keep at most 32 plans in a
-- backend, so crmguard's own statements keep room for theirs
CREATE TABLE public.regress_lead_wide (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, company text,
                                       planned_with text);
-- the table's own code runs under the session's planner settings, not crmguard's
CREATE FUNCTION public.regress_planner_setting() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.planned_with := current_setting('enable_seqscan'); RETURN NEW; END $$;
CREATE TRIGGER zz_planner BEFORE INSERT ON public.regress_lead_wide
    FOR EACH ROW EXECUTE FUNCTION public.regress_planner_setting();
GRANT SELECT, INSERT ON public.regress_lead_wide TO regress_rev_form, regress_rev_rita;
SELECT crmguard.enable_review('public.regress_lead_wide', 'reviewer', '{company}');
SET client_min_messages = warning;
DO $$
BEGIN
    FOR i IN 1..40 LOOP
        EXECUTE format('ALTER TABLE public.regress_lead_wide ADD COLUMN c%s int', i);
        PERFORM pg_catalog.set_config('role', 'regress_rev_form', true);
        INSERT INTO public.regress_lead_wide (company) VALUES ('Wide ' || i);
        RESET ROLE;
    END LOOP;
END $$;
RESET client_min_messages;
SELECT array_agg(id ORDER BY id) AS wide_drafts FROM crmguard.draft_state
 WHERE target = 'public.regress_lead_wide'::regclass \gset
SET ROLE regress_rev_rita;
SELECT count(crmguard.approve_draft(d)) AS approved FROM unnest(:'wide_drafts'::bigint[]) d;
RESET ROLE;
SELECT count(*) AS rows, count(c40) AS with_c40, string_agg(DISTINCT planned_with, ',') AS enable_seqscan
  FROM public.regress_lead_wide;
SELECT count(*) AS kept_draft_insert_plans FROM pg_catalog.pg_backend_memory_contexts
 WHERE name = 'CachedPlanSource' AND ident LIKE 'INSERT INTO public.regress\_lead% OVERRIDING SYSTEM VALUE %';
DROP TABLE public.regress_lead_wide;
DROP FUNCTION public.regress_planner_setting();

-- the owner cannot drop or disable the guard
SET ROLE regress_rev_owner;
SELECT public.regress_try($$ALTER TABLE public.regress_lead DISABLE TRIGGER "!crmguard_review"$$);
SELECT public.regress_try($$DROP TRIGGER "!crmguard_review" ON public.regress_lead$$);
RESET ROLE;
-- a draft and its first history line are written without a statement (as
-- a system catalog): a trigger or CHECK added to them by hand would not
-- fire, so the insert is refused rather than the trigger skipped
CREATE FUNCTION public.regress_rev_forward() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
CREATE TRIGGER forward AFTER INSERT ON crmguard.draft_state
    FOR EACH ROW EXECUTE FUNCTION public.regress_rev_forward();
SET ROLE regress_rev_form;
SELECT public.regress_try($$INSERT INTO public.regress_lead (company) VALUES ('trigger on the drafts')$$) AS drafts_with_a_trigger;
RESET ROLE;
DROP TRIGGER forward ON crmguard.draft_state;
CREATE TRIGGER forward BEFORE INSERT ON crmguard.draft_history
    FOR EACH STATEMENT EXECUTE FUNCTION public.regress_rev_forward();
SET ROLE regress_rev_form;
SELECT public.regress_try($$INSERT INTO public.regress_lead (company) VALUES ('trigger on the history')$$) AS history_with_a_trigger;
RESET ROLE;
DROP TRIGGER forward ON crmguard.draft_history;
ALTER TABLE crmguard.draft_state ADD CONSTRAINT regress_short CHECK (length(row_data::text) < 10) NOT VALID;
SET ROLE regress_rev_form;
SELECT public.regress_try($$INSERT INTO public.regress_lead (company) VALUES ('check on the drafts')$$) AS drafts_with_a_check;
RESET ROLE;
ALTER TABLE crmguard.draft_state DROP CONSTRAINT regress_short;
DROP FUNCTION public.regress_rev_forward();
SELECT count(*) AS refused_drafts_stored FROM crmguard.draft_state
 WHERE row_data->>'company' IN ('trigger on the drafts', 'trigger on the history', 'check on the drafts');
SET ROLE regress_rev_owner;
SELECT crmguard.disable_review('public.regress_lead');
RESET ROLE;
SET ROLE regress_rev_form;
INSERT INTO public.regress_lead (company) VALUES ('after review');
RESET ROLE;
SELECT count(*) AS leads FROM public.regress_lead;

DROP TABLE public.regress_lead, public.regress_lead_log, public.regress_nokey, public.regress_lead_task;
-- the review and the drafts of a dropped table go with it
SELECT (SELECT count(*) FROM crmguard.review_config) AS configs_left,
       (SELECT count(*) FROM crmguard.draft_state) AS drafts_left;
DELETE FROM crmguard.draft_state;
DELETE FROM crmguard.principal WHERE name LIKE 'rev\_%';
DROP FUNCTION public.regress_try(text), public.regress_log_lead(), public.regress_lead_task();
DROP OWNED BY regress_rev_owner, regress_rev_form, regress_rev_rita, regress_rev_marco,
              regress_rev_sara, regress_rev_mallory;
DROP ROLE regress_rev_owner, regress_rev_form, regress_rev_rita, regress_rev_marco,
          regress_rev_sara, regress_rev_mallory;
