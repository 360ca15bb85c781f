--
-- Activity: rows inserted, updated and deleted per principal, table and day
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

CREATE ROLE regress_act_boss;
CREATE ROLE regress_act_anna;
CREATE ROLE regress_act_luca;
CREATE ROLE regress_act_admin;
CREATE ROLE regress_act_etl;       -- an import job acting as nobody
SELECT crmguard.add_principal('act_boss', '{area_manager}', db_role => 'regress_act_boss') > 0 AS boss;
SELECT crmguard.add_principal('act_anna', '{agent}', 'act_boss', db_role => 'regress_act_anna') > 0 AS anna;
SELECT crmguard.add_principal('act_luca', '{agent}', 'act_boss', db_role => 'regress_act_luca') > 0 AS luca;
SELECT crmguard.add_principal('act_quiet', '{agent}', 'act_boss') > 0 AS quiet;
SELECT crmguard.add_principal('act_admin', '{admin}', db_role => 'regress_act_admin') > 0 AS admin;

CREATE TABLE public.regress_act_visit (id serial PRIMARY KEY, customer text, note text);
CREATE TABLE public.regress_act_untracked (id int);
CREATE VIEW public.regress_act_view AS SELECT * FROM public.regress_act_visit;
CREATE TABLE public.regress_act_part (id int) PARTITION BY RANGE (id);
GRANT SELECT, INSERT, UPDATE, DELETE ON public.regress_act_visit, public.regress_act_untracked TO PUBLIC;
GRANT USAGE ON SEQUENCE public.regress_act_visit_id_seq TO PUBLIC;

-- bad input: a view, a partitioned table, an OID naming no table, NULL; and tracking is for administrators
SELECT public.regress_try($$SELECT crmguard.track('public.regress_act_view')$$) AS view;
SELECT public.regress_try($$SELECT crmguard.track('public.regress_act_part')$$) AS partitioned;
SELECT public.regress_try($$SELECT crmguard.track(0)$$) AS no_relation;
SELECT public.regress_try($$SELECT crmguard.track(NULL)$$) AS null_target;
SET ROLE regress_act_anna;
SELECT public.regress_try($$SELECT crmguard.track('public.regress_act_visit')$$) AS not_admin;
RESET ROLE;
SELECT crmguard.track('public.regress_act_visit');
SELECT crmguard.track('public.regress_act_visit');     -- again: nothing changes
SELECT target FROM crmguard.activity_track;

-- Anna inserts three visits in one statement, updates one, deletes one
SET ROLE regress_act_anna;
INSERT INTO public.regress_act_visit (customer, note) VALUES ('Rossi', 'call'), ('Bianchi', 'visit'), ('Verdi', 'mail');
UPDATE public.regress_act_visit SET note = 'visit, offer left' WHERE customer = 'Bianchi';
DELETE FROM public.regress_act_visit WHERE customer = 'Verdi';
-- untracked tables count nothing
INSERT INTO public.regress_act_untracked VALUES (1);
RESET ROLE;

-- Luca: a transaction with a rolled-back savepoint, then one rolled back whole
SET ROLE regress_act_luca;
BEGIN;
INSERT INTO public.regress_act_visit (customer, note) VALUES ('Neri', 'call');
SAVEPOINT s;
INSERT INTO public.regress_act_visit (customer, note) SELECT 'Gialli', 'spam' FROM generate_series(1, 5);
ROLLBACK TO s;
UPDATE public.regress_act_visit SET note = note || '!' WHERE customer = 'Neri';
COMMIT;
BEGIN;
INSERT INTO public.regress_act_visit (customer, note) VALUES ('Blu', 'never happened');
ROLLBACK;
-- a function whose inner block fails and is caught: only what stayed counts
DO $$
BEGIN
    INSERT INTO public.regress_act_visit (customer, note) VALUES ('Viola', 'kept');
    BEGIN
        INSERT INTO public.regress_act_visit (customer, note) VALUES ('Viola', 'undone');
        RAISE EXCEPTION 'undo';
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
END
$$;
-- a failing statement counts nothing
SELECT public.regress_try($$INSERT INTO public.regress_act_visit (id, customer) VALUES (1, 'duplicate')$$) AS failed_insert;
RESET ROLE;

-- COPY counts too; nobody's rows are counted for no one
SET ROLE regress_act_anna;
COPY public.regress_act_visit (customer, note) FROM stdin;
Marrone	import
Grigio	import
\.
RESET ROLE;
SET ROLE regress_act_etl;
INSERT INTO public.regress_act_visit (customer, note) VALUES ('Rosa', 'etl');
RESET ROLE;

-- an identity assumed mid-transaction: each statement is credited to who acted
SELECT crmguard.issue_token('act_luca') AS luca_token \gset
BEGIN;
INSERT INTO public.regress_act_visit (customer, note) VALUES ('Ocra', 'as the superuser: nobody');
SELECT crmguard.assume(:'luca_token') > 0 AS as_luca;
INSERT INTO public.regress_act_visit (customer, note) VALUES ('Ocra', 'as luca');
COMMIT;

SELECT p.name, a.target, a.action, sum(a.n) AS n
  FROM crmguard.activity_log a JOIN crmguard.principal p ON p.id = a.principal
 WHERE p.name LIKE 'act\_%'
 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;
-- nobody's rows and events are not logged at all, not even as principal 0
SELECT count(*) AS credited_to_principal_0 FROM crmguard.activity_log
 WHERE principal OPERATOR(pg_catalog.=) 0;

-- the report: a manager sees its team, an agent itself, an admin everyone
SET ROLE regress_act_boss;
SELECT principal, target, action, n FROM crmguard.activity(now() - interval '7 days', now());
SELECT principal, last_at IS NULL AS never FROM crmguard.inactive('7 days');
SET ROLE regress_act_anna;
SELECT principal, target, action, n FROM crmguard.activity(now() - interval '7 days', now());
SELECT principal FROM crmguard.inactive('7 days');
SET ROLE regress_act_admin;
SELECT principal, action, n FROM crmguard.activity(now() - interval '7 days', now())
 WHERE target IS NULL AND principal LIKE 'act\_%';
SELECT principal, last_at IS NULL AS never FROM crmguard.inactive('7 days') WHERE principal LIKE 'act\_%';
-- days outside the range show nothing
SELECT count(*) AS last_month FROM crmguard.activity(now() - interval '60 days', now() - interval '30 days');
SET ROLE regress_act_etl;
SELECT count(*) AS nobody_sees FROM crmguard.activity(now() - interval '7 days', now());
RESET ROLE;

-- compaction folds each principal's day into one row, counts unchanged
UPDATE crmguard.activity_log SET day = day - 1, last_at = last_at - interval '1 day';
SELECT count(*) > 4 AS rows_before FROM crmguard.activity_log a JOIN crmguard.principal p ON p.id = a.principal
 WHERE p.name LIKE 'act\_%';
SELECT crmguard.compact_activity() > 0 AS folded;
SELECT p.name, a.target, a.action, a.n
  FROM crmguard.activity_log a JOIN crmguard.principal p ON p.id = a.principal
 WHERE p.name LIKE 'act\_%'
 ORDER BY 1, 2, 3;

-- untracking stops counting and keeps what was counted
SELECT crmguard.untrack('public.regress_act_visit');
SET ROLE regress_act_anna;
INSERT INTO public.regress_act_visit (customer, note) VALUES ('Nero', 'after untrack');
RESET ROLE;
SELECT sum(n) AS anna_rows FROM crmguard.activity_log a JOIN crmguard.principal p ON p.id = a.principal
 WHERE p.name = 'act_anna';

-- Attack: rows_hidden_behind_truncate -- rows written before a TRUNCATE in the
-- same transaction still count, and so do those written after it.
-- Attack: released_savepoint_rolled_back_with_its_parent -- rows written in a
-- savepoint that was released into one then rolled back count nothing.
CREATE TABLE public.regress_act_call (id int);
GRANT INSERT, TRUNCATE ON public.regress_act_call TO regress_act_luca;
SELECT crmguard.track('public.regress_act_call');
SET ROLE regress_act_luca;
BEGIN;
INSERT INTO public.regress_act_call SELECT generate_series(1, 3);
TRUNCATE public.regress_act_call;
INSERT INTO public.regress_act_call VALUES (4);
COMMIT;
BEGIN;
INSERT INTO public.regress_act_call VALUES (5);
SAVEPOINT outer_sp;
SAVEPOINT inner_sp;
INSERT INTO public.regress_act_call SELECT generate_series(6, 15);
RELEASE inner_sp;
ROLLBACK TO outer_sp;
COMMIT;
RESET ROLE;
-- Attack: day_of_the_writers_time_zone -- the day a row counts for is the UTC
-- day, whatever TimeZone the writing session set (a zone twelve hours away
-- from UTC, on the side where today's local date is not UTC's)
SELECT CASE WHEN extract(hour FROM now() AT TIME ZONE 'UTC') < 12 THEN 'Etc/GMT+12' ELSE 'Etc/GMT-12' END AS far_zone \gset
SET ROLE regress_act_luca;
SET TimeZone = :'far_zone';
INSERT INTO public.regress_act_call VALUES (16);
RESET TimeZone;
RESET ROLE;
SELECT count(*) AS days_not_utc FROM crmguard.activity_log
 WHERE day OPERATOR(pg_catalog.<>) (last_at AT TIME ZONE 'UTC')::date;
-- 3 + 1 + 1 + 1 rows inserted by luca
SELECT p.name, a.action, sum(a.n) AS n
  FROM crmguard.activity_log a JOIN crmguard.principal p ON p.id = a.principal
 WHERE a.target = 'public.regress_act_call'::regclass
 GROUP BY 1, 2 ORDER BY 1, 2;
