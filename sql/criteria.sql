--
-- Criteria: the one compiler of rule criteria (OTP conditions, visibility
-- policies, approval entry criteria) into a SQL predicate over a table
--
\set VERBOSITY default
CREATE TABLE public.regress_deal (
    id       bigint PRIMARY KEY,
    stage    text,
    amount   numeric(12,2),
    closed   date,
    owner_id bigint,
    city     text,
    tags     text
);
INSERT INTO public.regress_deal VALUES
    (1, 'Qualification', 1200.00,  NULL,         3, 'Torino', 'vip'),
    (2, 'Negotiation',   45000.00, NULL,         3, 'Milano', NULL),
    (3, 'Closed Won',    8000.50,  '2026-03-31', 4, 'Torino', 'renewal,vip'),
    (4, 'Closed Lost',   300.00,   '2026-02-15', 4, 'Roma',   NULL),
    (5, NULL,            NULL,     NULL,         NULL, NULL,  NULL);
GRANT SELECT, UPDATE ON public.regress_deal TO regress_luca, regress_anna, regress_nobody;

-- refusals are shown as SQLSTATE: message, so each code is part of the record
CREATE FUNCTION public.regress_compile(criteria jsonb,
                                       target regclass DEFAULT 'public.regress_deal') RETURNS text
    LANGUAGE plpgsql AS $$
BEGIN
    RETURN crmguard.compile_criteria(target, criteria);
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
-- the ids of the rows that the compiled predicate selects
CREATE FUNCTION public.regress_matches(criteria jsonb,
                                       target regclass DEFAULT 'public.regress_deal') RETURNS bigint[]
    LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    EXECUTE format('SELECT array_agg(id ORDER BY id) FROM %s WHERE %s',
                   target, crmguard.compile_criteria(target, criteria)) INTO ids;
    RETURN coalesce(ids, '{}');
END
$$;

-- value match: each operator, the SQL it compiles to, the rows it selects
\x on
SELECT c AS criteria, crmguard.compile_criteria('public.regress_deal', c) AS compiled,
       public.regress_matches(c) AS ids
  FROM (VALUES
    ('{"field": "stage", "op": "=", "value": "Negotiation"}'::jsonb),
    ('{"field": "stage", "op": "<>", "value": "Closed Lost"}'),
    ('{"field": "amount", "op": "<", "value": 1000}'),
    ('{"field": "amount", "op": "<=", "value": "1200"}'),
    ('{"field": "closed", "op": ">", "value": "2026-03-01"}'),
    ('{"field": "owner_id", "op": ">=", "value": 4}'),
    ('{"field": "city", "op": "in", "value": ["Torino", "Roma"]}'),
    ('{"field": "amount", "op": "in", "value": [300, "8000.5"]}'),
    ('{"field": "city", "op": "not in", "value": ["Torino"]}'),
    ('{"field": "closed", "op": "is null"}'),
    ('{"field": "tags", "op": "is not null"}'),
    ('{"field": "tags", "op": "like", "value": "%vip%"}')) AS t(c);

-- combinations: "all" is AND, "any" is OR
SELECT c AS criteria, crmguard.compile_criteria('public.regress_deal', c) AS compiled,
       public.regress_matches(c) AS ids
  FROM (VALUES
    ('{"all": [{"field": "city", "op": "=", "value": "Torino"},
               {"any": [{"field": "amount", "op": ">", "value": 5000},
                        {"field": "tags", "op": "like", "value": "vip%"}]}]}'::jsonb),
    ('{"any": [{"field": "stage", "op": "=", "value": "Negotiation"}]}')) AS t(c);

-- "not" matches exactly the rows its criterion does not match, so row 5
-- (city NULL) is in it; "<>" and "not in", like every comparison, never
-- match a NULL column
SELECT c AS criteria, crmguard.compile_criteria('public.regress_deal', c) AS compiled,
       public.regress_matches(c) AS ids
  FROM (VALUES
    ('{"not": {"field": "city", "op": "=", "value": "Torino"}}'::jsonb),
    ('{"field": "city", "op": "<>", "value": "Torino"}'),
    ('{"not": {"field": "city", "op": "in", "value": ["Torino"]}}'),
    ('{"not": {"not": {"field": "city", "op": "=", "value": "Torino"}}}')) AS t(c);
\x off

-- no criteria match every row
SELECT crmguard.compile_criteria('public.regress_deal', NULL) AS sql_null,
       crmguard.compile_criteria('public.regress_deal', 'null') AS json_null;

-- field match: a column against an attribute of the acting principal, read
-- once per statement (an InitPlan), cast to the column's type
SELECT crmguard.compile_criteria('public.regress_deal',
       '{"field": "city", "op": "=", "principal": "zone"}') AS by_zone \gset
\echo :by_zone
SET ROLE regress_luca;
SELECT crmguard.attr('zone');
SELECT id, city FROM public.regress_deal WHERE :by_zone ORDER BY id;
EXPLAIN (COSTS OFF) SELECT id FROM public.regress_deal WHERE :by_zone;
RESET ROLE;
SET ROLE regress_anna;
SELECT crmguard.attr('zone');
SELECT id, city FROM public.regress_deal WHERE :by_zone ORDER BY id;
RESET ROLE;
-- nobody identified, or the attribute missing: no row matches
SET ROLE regress_nobody;
SELECT count(*) AS nobody_sees FROM public.regress_deal WHERE :by_zone;
RESET ROLE;
-- an attribute compared as a number, and one used as a pattern
UPDATE crmguard.principal SET attributes = '{"zone": "Torino", "max_amount": 5000, "tag": "vip%"}'
 WHERE name = 'luca';
SELECT crmguard.compile_criteria('public.regress_deal',
       '{"field": "amount", "op": "<=", "principal": "max_amount"}') AS by_amount \gset
SELECT crmguard.compile_criteria('public.regress_deal',
       '{"field": "tags", "op": "like", "principal": "tag"}') AS by_tag \gset
\echo :by_amount
\echo :by_tag
SET ROLE regress_luca;
SELECT id, amount FROM public.regress_deal WHERE :by_amount ORDER BY id;
SELECT id, tags FROM public.regress_deal WHERE :by_tag ORDER BY id;
RESET ROLE;
UPDATE crmguard.principal SET attributes = '{"zone": "Torino"}' WHERE name = 'luca';

-- refusals: CG020, at definition time
SELECT c AS criteria, public.regress_compile(c) AS refused
  FROM (VALUES
    ('{"field": "nope", "op": "=", "value": 1}'::jsonb),
    ('{"field": "ctid", "op": "=", "value": "(0,1)"}'),
    ('{"field": 7, "op": "=", "value": 1}'),
    ('{"op": "=", "value": 1}'),
    ('{"field": "stage", "value": "Won"}'),
    ('{"field": "stage", "op": "==", "value": "Won"}'),
    ('{"field": "stage", "op": "IS NULL"}'),
    ('{"field": "amount", "op": "=", "value": "abc"}'),
    ('{"field": "amount", "op": ">", "value": 1e12}'),
    ('{"field": "owner_id", "op": "=", "value": 1.5}'),
    ('{"field": "closed", "op": "<", "value": "2026-02-30"}'),
    ('{"field": "stage", "op": "="}'),
    ('{"field": "stage", "op": "=", "value": null}'),
    ('{"field": "stage", "op": "=", "value": {"a": 1}}'),
    ('{"field": "stage", "op": "=", "value": "Won", "principal": "zone"}'),
    ('{"field": "stage", "op": "=", "principal": 5}'),
    ('{"field": "closed", "op": "is null", "value": "2026-01-01"}'),
    ('{"field": "closed", "op": "is not null", "principal": "zone"}'),
    ('{"field": "stage", "op": "=", "value": "Won", "extra": 1}'),
    ('{"field": "amount", "op": "like", "value": "1%"}'),
    ('{"field": "tags", "op": "like", "value": 5}'),
    ('{"field": "city", "op": "in", "value": "Torino"}'),
    ('{"field": "city", "op": "in", "value": []}'),
    ('{"field": "city", "op": "not in"}'),
    ('{"field": "amount", "op": "in", "value": [1, "x"]}'),
    ('{"field": "city", "op": "in", "principal": "zone"}'),
    ('{"all": []}'),
    ('{"any": {"field": "city", "op": "=", "value": "Roma"}}'),
    ('{"all": [{"field": "city", "op": "=", "value": "Roma"}], "field": "stage"}'),
    ('{"not": [{"field": "city", "op": "=", "value": "Roma"}]}'),
    ('{"all": [{"field": "city", "op": "=", "value": "Roma"}, "city = ''Roma''"]}'),
    ('{"unknown": 1}'),
    ('{}'),
    ('[{"field": "city", "op": "=", "value": "Roma"}]'),
    ('"city = ''Roma''"')) AS t(c);
-- with its hint, where there is one
SELECT crmguard.compile_criteria('public.regress_deal', '{"field": "stage", "op": "!=", "value": "Won"}');
SELECT crmguard.compile_criteria('public.regress_deal', '{"field": "closed", "op": "=", "value": null}');
SELECT crmguard.compile_criteria('public.regress_deal', '{"field": "stage", "op": "=", "value": "Won", "extra": 1}');
-- one bad condition anywhere refuses the whole criteria
SELECT public.regress_compile('{"all": [{"field": "city", "op": "=", "value": "Roma"},
                                        {"not": {"any": [{"field": "stage", "op": "=", "value": "Won"},
                                                         {"field": "amount", "op": ">", "value": "lots"}]}}]}');
-- other types: a literal is typed as its column, without the typmod (a
-- bare "character" would mean char(1) and cut "AB" to "A"); "in" on an array
-- column compares whole arrays; a type without the operator is refused
CREATE TABLE public.regress_shape (id int, grade char(2), labels text[], spot point, doc json);
INSERT INTO public.regress_shape VALUES (1, 'A', '{x,y}', '(1,2)', '{}'), (2, 'AB', '{z}', '(3,4)', '[]');
SELECT c AS criteria, crmguard.compile_criteria('public.regress_shape', c) AS compiled,
       public.regress_matches(c, 'public.regress_shape') AS ids
  FROM (VALUES
    ('{"field": "grade", "op": "=", "value": "AB"}'::jsonb),
    ('{"field": "grade", "op": "in", "value": ["AB", "C"]}'),
    ('{"field": "grade", "op": "<>", "principal": "grade"}'),
    ('{"field": "labels", "op": "in", "value": ["{x,y}", "{w}"]}'),
    ('{"field": "labels", "op": "not in", "value": ["{x,y}"]}'),
    ('{"field": "doc", "op": "is not null"}')) AS t(c);
SELECT c AS criteria, public.regress_compile(c, 'public.regress_shape') AS refused
  FROM (VALUES
    ('{"field": "grade", "op": "=", "value": "ABC"}'::jsonb),
    ('{"field": "spot", "op": "<", "value": "(1,2)"}'),
    ('{"field": "doc", "op": "=", "value": "{}"}'),
    ('{"field": "doc", "op": "in", "value": ["{}"]}')) AS t(c);
-- a target that has no columns to match
SELECT crmguard.compile_criteria('crmguard.principal_id_seq', '{"field": "last_value", "op": ">", "value": 1}');
-- a target that names no relation
SELECT crmguard.value_fits_column(0, 'id', '1');
-- previewing criteria is for administrators
SET ROLE regress_nobody;
SELECT crmguard.compile_criteria('public.regress_deal', '{"field": "city", "op": "=", "value": "Roma"}');
RESET ROLE;

-- injection: names go through the catalog and quote_identifier, values and
-- attribute keys through quote_literal; nothing is ever spliced in
SELECT public.regress_compile('{"field": "stage\"; DROP TABLE public.regress_deal; --", "op": "=", "value": "x"}');
SELECT public.regress_compile('{"field": "stage", "op": "= ''x'' OR true --", "value": "x"}');
\x on
SELECT c AS criteria, crmguard.compile_criteria('public.regress_deal', c) AS compiled,
       public.regress_matches(c) AS ids
  FROM (VALUES
    ('{"field": "stage", "op": "=", "value": "''; DROP TABLE public.regress_deal; --"}'::jsonb),
    ('{"field": "stage", "op": "=", "value": "x'' OR ''1''=''1"}'),
    ('{"field": "stage", "op": "<>", "value": "$$ || pg_sleep(10) || $$"}'),
    ('{"field": "stage", "op": "=", "value": "/* comment */ Negotiation"}'),
    ('{"field": "stage", "op": "=", "value": "back\\slash''"}'),
    ('{"field": "city", "op": "in", "value": ["Roma", "''); DROP TABLE public.regress_deal; --"]}'),
    ('{"field": "tags", "op": "like", "value": "%''; --"}'),
    ('{"field": "city", "op": "=", "principal": "zone'')); DROP TABLE public.regress_deal; --"}')) AS t(c);
\x off
-- a real column with an awkward name is quoted, never spliced
ALTER TABLE public.regress_shape ADD COLUMN "a""b; --" text;
SELECT crmguard.compile_criteria('public.regress_shape', '{"field": "a\"b; --", "op": "=", "value": "x"}');
SELECT count(*) AS deals_still_there FROM public.regress_deal;

-- search_path planting: an operator planted in public is live for the
-- session's own SQL, but compiled criteria name pg_catalog's
CREATE FUNCTION public.regress_planted_eq(text, text) RETURNS boolean
    LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.regress_planted_eq);
SET search_path = public, pg_catalog;
SELECT crmguard.compile_criteria('public.regress_deal',
       '{"field": "stage", "op": "=", "value": "Negotiation"}') AS planted_check \gset
\echo :planted_check
SELECT array_agg(id ORDER BY id) AS naive FROM public.regress_deal WHERE stage = 'Negotiation'::text;
SELECT array_agg(id ORDER BY id) AS compiled FROM public.regress_deal WHERE :planted_check;
RESET search_path;
DROP OPERATOR public.= (text, text);
DROP FUNCTION public.regress_planted_eq(text, text);

-- OTP conditions compile here too and are checked row by row by the guard
-- trigger, as the extension owner but for the acting principal
ALTER TABLE public.regress_deal ADD COLUMN phone text;
UPDATE public.regress_deal SET phone = '+39 011 555 010' || id;
SELECT crmguard.create_otp_rule('regress big or local deals', 'public.regress_deal', 'stage',
       '{Closed Won}', 'phone', delivery => 'manual',
       condition => '{"all": [{"not": {"field": "city", "op": "in", "value": ["Roma"]}},
                              {"any": [{"field": "amount", "op": ">=", "value": 5000},
                                       {"field": "city", "op": "=", "principal": "zone"}]}]}') > 0 AS created;
SELECT compiled_condition FROM crmguard.otp_rule WHERE rule_name = 'regress big or local deals';
-- "ok" where the condition is false, CG001 (code required) where it holds
CREATE FUNCTION public.regress_close(deal bigint) RETURNS text
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE public.regress_deal SET stage = 'Closed Won' WHERE id = deal;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END
$$;
BEGIN;
SELECT id, city, amount, public.regress_close(id) AS nobody FROM public.regress_deal
 WHERE id <> 3 ORDER BY id;
ROLLBACK;
SET ROLE regress_luca;
BEGIN;
SELECT id, city, amount, public.regress_close(id) AS luca_in_torino FROM public.regress_deal
 WHERE id <> 3 ORDER BY id;
ROLLBACK;
RESET ROLE;
-- after DDL on the table the cached plans are rebuilt
ALTER TABLE public.regress_deal DROP COLUMN tags;
SET ROLE regress_luca;
BEGIN;
SELECT id, public.regress_close(id) AS after_drop_column FROM public.regress_deal
 WHERE id <> 3 ORDER BY id;
ROLLBACK;
RESET ROLE;
SELECT crmguard.drop_otp_rule('regress big or local deals');

DROP TABLE public.regress_deal, public.regress_shape;
DROP FUNCTION public.regress_compile(jsonb, regclass), public.regress_matches(jsonb, regclass),
              public.regress_close(bigint);
