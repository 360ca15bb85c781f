--
-- Row visibility criteria: portal exposure, field match, territories and the
-- manager hierarchy, compiled into row-level security
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
GRANT EXECUTE ON FUNCTION public.regress_try(text) TO PUBLIC;

-- the rules and policies a refused definition must leave as they were
CREATE FUNCTION public.regress_state() RETURNS text
    LANGUAGE sql AS $$
SELECT (SELECT count(*) FROM crmguard.visibility_rule) || ' rules, '
    || (SELECT count(*) FROM pg_class WHERE relname LIKE 'regress_vis%' AND relrowsecurity) || ' guarded tables'
$$;

CREATE ROLE regress_vis_owner;
CREATE ROLE regress_vis_users;
GRANT USAGE, CREATE ON SCHEMA public TO regress_vis_owner;
-- defining rules is granted deliberately, here to the owner of the CRM tables
GRANT EXECUTE ON FUNCTION crmguard.expose(regclass, text, text, jsonb, text),
      crmguard.expose_public(regclass, text), crmguard.expose_by_owner(regclass, name, text, boolean),
      crmguard.unexpose(text) TO regress_vis_owner;
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['regress_vis_dora', 'regress_vis_anna', 'regress_vis_luca', 'regress_vis_sara',
                             'regress_vis_paolo', 'regress_vis_ivan', 'regress_vis_patricie',
                             'regress_vis_pietro', 'regress_vis_nobody'] LOOP
        EXECUTE format('CREATE ROLE %I IN ROLE regress_vis_users', r);
    END LOOP;
END
$$;

--   vis_dora (director, admin)
--   ├── vis_anna (area manager)
--   │   ├── vis_luca (agent, North)  ├── vis_sara (agent, South)
--   │   └── vis_ivan (implementation, service area Brno)
--   └── vis_paolo (agent, West)
--   vis_patricie, vis_pietro (portal)
SELECT crmguard.add_principal('vis_dora',  '{director,admin}', db_role => 'regress_vis_dora') > 0 AS vis_dora;
SELECT crmguard.add_principal('vis_anna',  '{area_manager}', 'vis_dora', db_role => 'regress_vis_anna') > 0 AS anna;
SELECT crmguard.add_principal('vis_luca',  '{agent}', 'vis_anna', '{"zone": "North"}', 'regress_vis_luca') > 0 AS luca;
SELECT crmguard.add_principal('vis_sara',  '{agent}', 'vis_anna', '{"zone": "South"}', 'regress_vis_sara') > 0 AS sara;
SELECT crmguard.add_principal('vis_paolo', '{agent}', 'vis_dora', '{"zone": "West"}', 'regress_vis_paolo') > 0 AS paolo;
SELECT crmguard.add_principal('vis_ivan',  '{implementation}', 'vis_anna', '{"service_area": "Brno"}', 'regress_vis_ivan') > 0 AS ivan;
SELECT crmguard.add_principal('vis_patricie', '{portal}', NULL,
       '{"contact_id": 10, "customer_type": "Enterprise"}', 'regress_vis_patricie') > 0 AS patricie;
SELECT crmguard.add_principal('vis_pietro', '{portal}', NULL,
       '{"contact_id": 20, "customer_type": "SMB"}', 'regress_vis_pietro') > 0 AS pietro;

CREATE FUNCTION public.regress_pid(who text) RETURNS bigint LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog AS $$SELECT id FROM crmguard.principal WHERE name = who$$;

CREATE TABLE public.regress_vis_customer (
    id           integer PRIMARY KEY,
    name         text NOT NULL,
    zone         text NOT NULL,
    owner_id     bigint NOT NULL,
    billing_city text NOT NULL,
    revenue      numeric NOT NULL DEFAULT 0
);
INSERT INTO public.regress_vis_customer VALUES
    (1, 'Alfa',    'North', public.regress_pid('vis_luca'),  'Brno',   100),
    (2, 'Beta',    'North', public.regress_pid('vis_luca'),  'Praha',  200),
    (3, 'Gamma',   'South', public.regress_pid('vis_sara'),  'Brno',   0),
    (4, 'Delta',   'West',  public.regress_pid('vis_paolo'), 'Ostrava', 400),
    (5, 'Epsilon', 'South', public.regress_pid('vis_anna'),  'Praha',  500);

CREATE TABLE public.regress_vis_quote (
    id         integer PRIMARY KEY,
    contact_id integer NOT NULL,
    stage      text NOT NULL,
    total      numeric NOT NULL
);
INSERT INTO public.regress_vis_quote VALUES
    (1, 10, 'Approved', 1000), (2, 10, 'Negotiation', 900), (3, 10, 'Draft', 800),
    (4, 20, 'Approved', 500),  (5, 20, 'Negotiation', 450), (6, 30, 'Approved', 50);

CREATE TABLE public.regress_vis_product (
    id   integer PRIMARY KEY,
    name text NOT NULL,
    tier text NOT NULL
);
INSERT INTO public.regress_vis_product VALUES
    (1, 'Tracker', 'Standard'), (2, 'Fleet API', 'Enterprise'), (3, 'Label printer', 'Standard');

ALTER TABLE public.regress_vis_customer OWNER TO regress_vis_owner;
ALTER TABLE public.regress_vis_quote OWNER TO regress_vis_owner;
ALTER TABLE public.regress_vis_product OWNER TO regress_vis_owner;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.regress_vis_customer, public.regress_vis_quote,
      public.regress_vis_product TO regress_vis_users;

-- rules are made by the table's owner
SET ROLE regress_vis_owner;

-- ---------------------------------------------------------------------------
-- The portal: Patricie's approved quotes, never a negotiation stage
-- ---------------------------------------------------------------------------
SELECT crmguard.expose('public.regress_vis_quote', 'portal: own approved quotes', 'portal',
    '{"all": [{"field": "contact_id", "op": "=", "principal": "contact_id"},
              {"field": "stage", "op": "in", "value": ["Approved", "Sent", "Accepted"]},
              {"not": {"field": "stage", "op": "=", "value": "Negotiation"}}]}') > 0 AS exposed;
SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'public.regress_vis_quote'::regclass;
-- no policy in pg_policy: each statement gets its policy from crmguard, for its principal
SELECT count(*) AS stored_policies FROM pg_policy WHERE polrelid = 'public.regress_vis_quote'::regclass;

-- products: every Standard product for the portal, Enterprise ones only to
-- enterprise customers; agents see the whole catalogue
SELECT crmguard.expose('public.regress_vis_product', 'portal: standard products', 'portal',
    '{"field": "tier", "op": "=", "value": "Standard"}') > 0 AS exposed;
SELECT crmguard.expose('public.regress_vis_product', 'portal: enterprise products', 'portal',
    '{"all": [{"field": "tier", "op": "=", "value": "Enterprise"},
              {"field": "tier", "op": "=", "principal": "customer_type"}]}') > 0 AS exposed;
SELECT crmguard.expose_public('public.regress_vis_product', 'agent') > 0 AS exposed;

-- customers: the DSA hierarchy and the implementation agent's service area
SELECT crmguard.expose_by_owner('public.regress_vis_customer', 'owner_id', 'agent') > 0 AS exposed;
SELECT crmguard.expose_by_owner('public.regress_vis_customer', 'owner_id', 'area_manager') > 0 AS exposed;
SELECT crmguard.expose('public.regress_vis_customer', 'implementation: service area', 'implementation',
    '{"field": "billing_city", "op": "=", "principal": "service_area"}') > 0 AS exposed;
RESET ROLE;

SELECT rule_name, kind, audience, access FROM crmguard.visibility_rule ORDER BY id;

-- ---------------------------------------------------------------------------
-- Each principal, each table
-- ---------------------------------------------------------------------------
SET ROLE regress_vis_patricie;
SELECT id, stage FROM public.regress_vis_quote ORDER BY id;
SELECT name FROM public.regress_vis_product ORDER BY id;
SELECT count(*) AS customers FROM public.regress_vis_customer;
SET ROLE regress_vis_pietro;
SELECT id, stage FROM public.regress_vis_quote ORDER BY id;
SELECT name FROM public.regress_vis_product ORDER BY id;
SET ROLE regress_vis_luca;
SELECT name FROM public.regress_vis_customer ORDER BY id;
SELECT count(*) AS products FROM public.regress_vis_product;
SELECT count(*) AS quotes FROM public.regress_vis_quote;
SET ROLE regress_vis_sara;
SELECT name FROM public.regress_vis_customer ORDER BY id;
SET ROLE regress_vis_anna;
SELECT name FROM public.regress_vis_customer ORDER BY id;
SET ROLE regress_vis_paolo;
SELECT name FROM public.regress_vis_customer ORDER BY id;
SET ROLE regress_vis_ivan;
SELECT name, billing_city FROM public.regress_vis_customer ORDER BY id;
SET ROLE regress_vis_dora;
SELECT count(*) AS customers, (SELECT count(*) FROM public.regress_vis_quote) AS quotes
  FROM public.regress_vis_customer;
-- no principal: nothing, not even for the table's owner (FORCE)
SET ROLE regress_vis_nobody;
SELECT count(*) AS customers, (SELECT count(*) FROM public.regress_vis_quote) AS quotes
  FROM public.regress_vis_customer;
SET ROLE regress_vis_owner;
SELECT count(*) AS customers FROM public.regress_vis_customer;
RESET ROLE;

-- the same through a token on a pooled connection (no role of its own)
SELECT crmguard.assume(crmguard.issue_token('vis_patricie'), false) = public.regress_pid('vis_patricie') AS assumed;
SET ROLE regress_vis_nobody;
SELECT id, stage FROM public.regress_vis_quote ORDER BY id;
RESET ROLE;
SELECT crmguard.assume(NULL);
-- a plan prepared for one principal is not reused for another: the pooler's
-- login role hands the connection to its next client with assume()
SELECT crmguard.issue_token('vis_patricie') AS patricie_token,
       crmguard.issue_token('vis_pietro') AS pietro_token,
       crmguard.issue_token('vis_pietro', '2 seconds') AS brief_token \gset
SET ROLE regress_vis_nobody;
SELECT crmguard.assume(:'patricie_token', false) IS NOT NULL AS patricie;
PREPARE regress_quotes AS SELECT id, stage FROM public.regress_vis_quote ORDER BY id;
EXECUTE regress_quotes;
CREATE FUNCTION pg_temp.regress_quote_ids() RETURNS text LANGUAGE plpgsql AS $$
BEGIN RETURN (SELECT string_agg(id::text, ',' ORDER BY id) FROM public.regress_vis_quote); END $$;
SELECT pg_temp.regress_quote_ids() AS patricie;
SELECT crmguard.assume(:'pietro_token', false) IS NOT NULL AS pietro;
EXECUTE regress_quotes;
SELECT pg_temp.regress_quote_ids() AS pietro;
SELECT crmguard.assume(NULL);
EXECUTE regress_quotes;
SELECT pg_temp.regress_quote_ids() AS nobody;
-- a rolled-back assume() gives the identity back, and the plans follow
BEGIN;
SELECT crmguard.assume(:'pietro_token', false) IS NOT NULL AS pietro;
EXECUTE regress_quotes;
ROLLBACK;
EXECUTE regress_quotes;
-- a transaction's identity ends at COMMIT, and its plans with it (the next
-- pooled client runs the same prepared statement)
BEGIN;
SELECT crmguard.assume(:'pietro_token') IS NOT NULL AS pietro;
EXECUTE regress_quotes;
COMMIT;
EXECUTE regress_quotes;
-- a token that expires under a plan cached for its principal shows nothing more
SELECT crmguard.assume(:'brief_token', false) IS NOT NULL AS pietro_briefly;
EXECUTE regress_quotes;
SELECT pg_sleep(2.1);
EXECUTE regress_quotes;
SELECT pg_temp.regress_quote_ids() AS after_expiry;
SELECT crmguard.assume(NULL);
DEALLOCATE regress_quotes;
RESET ROLE;

-- a principal's values are read when the statement runs (one InitPlan), never
-- planned in: a cached plan serves whoever acts when it runs, and each attack
-- below would read another principal's rows through a plan holding them
SET ROLE regress_vis_patricie;
EXPLAIN (COSTS OFF) SELECT id FROM public.regress_vis_quote WHERE id = 1;
RESET ROLE;
-- attack: a plan cached in a SECURITY DEFINER function (which runs as its
-- owner whoever calls it) reused for the next login role's principal
CREATE FUNCTION public.regress_vis_quote_ids() RETURNS text LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog AS $$
BEGIN RETURN (SELECT string_agg(id::text, ',' ORDER BY id) FROM public.regress_vis_quote); END $$;
ALTER FUNCTION public.regress_vis_quote_ids() OWNER TO regress_vis_owner;
GRANT EXECUTE ON FUNCTION public.regress_vis_quote_ids() TO regress_vis_users;
SET ROLE regress_vis_patricie;
SELECT public.regress_vis_quote_ids() AS patricie;
SET ROLE regress_vis_pietro;
SELECT public.regress_vis_quote_ids() AS pietro;
SELECT set_config('role', 'regress_vis_patricie', false) IS NOT NULL AS patricie;
SELECT public.regress_vis_quote_ids() AS patricie;
-- ... and after a role change rolled back
BEGIN;
SET LOCAL ROLE regress_vis_pietro;
SELECT public.regress_vis_quote_ids() AS pietro;
ROLLBACK;
SELECT public.regress_vis_quote_ids() AS patricie;
-- ... when the first statement after the change reads the table itself
SET ROLE regress_vis_pietro;
SELECT count(*) AS pietro_quotes FROM public.regress_vis_quote;
SELECT public.regress_vis_quote_ids() AS pietro;
-- ... when the role changes within the statement
SET ROLE regress_vis_patricie;
SELECT set_config('role', 'regress_vis_pietro', false) IS NOT NULL AS pietro, public.regress_vis_quote_ids() AS ids;
RESET ROLE;
-- attack: a SQL function's plan, kept for its call site through the statement
CREATE FUNCTION public.regress_vis_quote_ids_sql() RETURNS text LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog AS $$SELECT string_agg(id::text, ',' ORDER BY id) FROM public.regress_vis_quote$$;
ALTER FUNCTION public.regress_vis_quote_ids_sql() OWNER TO regress_vis_owner;
SELECT r AS role, set_config('role', r, false) IS NOT NULL AS set, public.regress_vis_quote_ids_sql() AS ids
  FROM (VALUES ('regress_vis_patricie'), ('regress_vis_pietro')) AS v (r);
RESET ROLE;
-- attack: a statement prepared for a login role's principal, run under a
-- token of another principal with the same roles
SELECT crmguard.issue_token('vis_pietro') AS pietro_token \gset
SET ROLE regress_vis_patricie;
PREPARE regress_quote_ids AS SELECT id FROM public.regress_vis_quote ORDER BY id;
EXECUTE regress_quote_ids;
SELECT crmguard.assume(:'pietro_token', false) IS NOT NULL AS pietro;
EXECUTE regress_quote_ids;
SELECT public.regress_vis_quote_ids() AS pietro;
SELECT crmguard.assume(NULL);
EXECUTE regress_quote_ids;
RESET ROLE;
-- a principal's attribute changed under a plan made with its old value (the
-- login role stays the same: only the change itself can re-plan)
CREATE FUNCTION public.regress_vis_move_patricie(contact integer) RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $$
UPDATE crmguard.principal SET attributes = attributes || jsonb_build_object('contact_id', contact)
 WHERE name = 'vis_patricie' $$;
GRANT EXECUTE ON FUNCTION public.regress_vis_move_patricie(integer) TO regress_vis_patricie;
SET ROLE regress_vis_patricie;
EXECUTE regress_quote_ids;
SELECT public.regress_vis_move_patricie(20);
EXECUTE regress_quote_ids;
SELECT public.regress_vis_move_patricie(10);
EXECUTE regress_quote_ids;
RESET ROLE;
DEALLOCATE regress_quote_ids;

-- SET crmguard.* cannot make a session anyone
SET ROLE regress_vis_nobody;
SELECT public.regress_try($$SET crmguard.principal = 'vis_dora'$$);
SELECT count(*) AS customers FROM public.regress_vis_customer;
RESET ROLE;

-- an inactive principal resolves to nobody; a role change counts from the next statement
UPDATE crmguard.principal SET active = false WHERE name = 'vis_luca';
SET ROLE regress_vis_luca;
SELECT count(*) AS customers FROM public.regress_vis_customer;
RESET ROLE;
UPDATE crmguard.principal SET active = true, roles = '{agent,implementation}' WHERE name = 'vis_luca';
UPDATE crmguard.principal SET attributes = attributes || '{"service_area": "Ostrava"}' WHERE name = 'vis_luca';
SET ROLE regress_vis_luca;
SELECT name FROM public.regress_vis_customer ORDER BY id;
RESET ROLE;
UPDATE crmguard.principal SET roles = '{agent}', attributes = '{"zone": "North"}' WHERE name = 'vis_luca';

-- ---------------------------------------------------------------------------
-- Edit rules govern UPDATE, DELETE and INSERT
-- ---------------------------------------------------------------------------
SET ROLE regress_vis_luca;
UPDATE public.regress_vis_customer SET revenue = revenue + 1;           -- his two rows
UPDATE public.regress_vis_customer SET revenue = 0 WHERE id = 4;        -- paolo's: no row
DELETE FROM public.regress_vis_customer WHERE id = 5;                   -- anna's: no row
INSERT INTO public.regress_vis_customer VALUES (6, 'Zeta', 'North', public.regress_pid('vis_luca'), 'Brno');
SELECT public.regress_try($$INSERT INTO public.regress_vis_customer
                            VALUES (7, 'Eta', 'North', public.regress_pid('vis_paolo'), 'Brno')$$);
-- handing his row to someone else is a change the new row must pass
SELECT public.regress_try($$UPDATE public.regress_vis_customer SET owner_id = public.regress_pid('vis_paolo') WHERE id = 6$$);
SET ROLE regress_vis_anna;
UPDATE public.regress_vis_customer SET owner_id = public.regress_pid('vis_sara') WHERE id = 6;
SET ROLE regress_vis_patricie;
-- read rules give no edit right
UPDATE public.regress_vis_quote SET total = 0 WHERE id = 1;
SELECT public.regress_try($$INSERT INTO public.regress_vis_quote VALUES (9, 10, 'Approved', 1)$$);
RESET ROLE;
SELECT id, owner_id = public.regress_pid('vis_sara') AS sara_owns, revenue FROM public.regress_vis_customer ORDER BY id;

-- ---------------------------------------------------------------------------
-- Leaks: what a principal cannot learn about rows it does not see
-- ---------------------------------------------------------------------------
SET ROLE regress_vis_luca;
-- a division by zero on Gamma's revenue (0) would reveal it: the policy filters first
SELECT name, 1000 / revenue AS ratio FROM public.regress_vis_customer ORDER BY id;
-- a function of his own, not leakproof and cheap, sees only his rows
CREATE FUNCTION pg_temp.regress_peek(name text, city text) RETURNS boolean
    LANGUAGE plpgsql COST 0.0000001 AS $$
BEGIN RAISE NOTICE 'peeked at % in %', name, city; RETURN true; END $$;
SELECT count(*) FROM public.regress_vis_customer WHERE pg_temp.regress_peek(name, billing_city);
-- RETURNING and UPDATE ... WHERE on hidden rows give nothing away
UPDATE public.regress_vis_customer SET revenue = revenue RETURNING id, name;
UPDATE public.regress_vis_customer SET name = name WHERE id IN (3, 4, 5) RETURNING id;
-- why_visible of a hidden row is "not found", like a missing one
SELECT public.regress_try($$SELECT * FROM crmguard.why_visible('public.regress_vis_customer', '4')$$);
SELECT public.regress_try($$SELECT * FROM crmguard.why_visible('public.regress_vis_customer', '999')$$);
-- nor can he ask about someone else's visibility
SELECT public.regress_try($$SELECT * FROM crmguard.why_visible('public.regress_vis_customer', '1', 'vis_anna')$$);
SELECT * FROM crmguard.why_visible('public.regress_vis_customer', '1');
-- visibility_predicate is for the DBA
SELECT public.regress_try($$SELECT crmguard.visibility_predicate('public.regress_vis_customer', 'vis_luca')$$);
RESET ROLE;

-- ---------------------------------------------------------------------------
-- Explaining visibility
-- ---------------------------------------------------------------------------
SELECT * FROM crmguard.why_visible('public.regress_vis_customer', '3', 'vis_anna');
SELECT * FROM crmguard.why_visible('public.regress_vis_customer', '3', 'vis_luca');
SELECT * FROM crmguard.why_visible('public.regress_vis_quote', '1', 'vis_patricie');
SELECT * FROM crmguard.why_visible('public.regress_vis_quote', '2', 'vis_patricie');
SELECT * FROM crmguard.why_visible('public.regress_vis_quote', '1', 'vis_dora');
SELECT public.regress_try($$SELECT * FROM crmguard.why_visible('public.regress_vis_quote', '1', 'nobody such')$$);
-- an admin principal may ask about others, for rows it sees
SET ROLE regress_vis_dora;
SELECT rule_name, granted FROM crmguard.why_visible('public.regress_vis_product', '2', 'vis_pietro');
RESET ROLE;

SELECT crmguard.visibility_predicate('public.regress_vis_quote', 'vis_patricie');
SELECT crmguard.visibility_predicate('public.regress_vis_product', 'vis_pietro');
SELECT crmguard.visibility_predicate('public.regress_vis_customer', 'vis_anna');
SELECT crmguard.visibility_predicate('public.regress_vis_customer', 'vis_dora');
SELECT crmguard.visibility_predicate('public.regress_vis_customer', 'vis_patricie');

-- ---------------------------------------------------------------------------
-- Injection: names, fields and values reach the SQL as quoted literals only
-- ---------------------------------------------------------------------------
SET ROLE regress_vis_owner;
SELECT crmguard.expose('public.regress_vis_quote', $n$x'); DROP TABLE public.regress_vis_quote; --$n$, 'portal',
    $j${"field": "stage", "op": "=", "value": "'); DROP TABLE public.regress_vis_quote; --"}$j$) > 0 AS harmless;
SELECT crmguard.expose('public.regress_vis_quote', 'dollar $$ quoted', $a$o'brien; --$a$,
    $j${"field": "stage", "op": "like", "value": "$$ || pg_sleep(10) || $$ /* */ %"}$j$) > 0 AS harmless;
SELECT crmguard.expose('public.regress_vis_quote', 'attribute injection', 'portal',
    $j${"field": "stage", "op": "=", "principal": "x')) OR true OR (('"}$j$) > 0 AS harmless;
SELECT public.regress_try($q$SELECT crmguard.expose('public.regress_vis_quote', 'field injection', 'portal',
    '{"field": "stage\" = stage OR true; --", "op": "=", "value": "x"}')$q$);
SELECT public.regress_try($q$SELECT crmguard.expose('public.regress_vis_quote', 'operator injection', 'portal',
    '{"field": "stage", "op": "= ''x'' OR true OR stage =", "value": "x"}')$q$);
RESET ROLE;
-- nothing was executed, and Patricie still sees exactly what she did
SELECT count(*) AS quotes FROM public.regress_vis_quote;
SET ROLE regress_vis_patricie;
SELECT id, stage FROM public.regress_vis_quote ORDER BY id;
RESET ROLE;
SET ROLE regress_vis_owner;
SELECT crmguard.unexpose($n$x'); DROP TABLE public.regress_vis_quote; --$n$);
SELECT crmguard.unexpose('dollar $$ quoted');
SELECT crmguard.unexpose('attribute injection');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- Bad definitions: CG020 (or the privilege error), and nothing changes
-- ---------------------------------------------------------------------------
CREATE TABLE public.regress_vis_parted (id int, owner_id bigint) PARTITION BY RANGE (id);
CREATE TABLE public.regress_vis_part1 PARTITION OF public.regress_vis_parted FOR VALUES FROM (0) TO (100);
CREATE VIEW public.regress_vis_view AS SELECT * FROM public.regress_vis_product;
ALTER TABLE public.regress_vis_parted OWNER TO regress_vis_owner;
ALTER TABLE public.regress_vis_part1 OWNER TO regress_vis_owner;
ALTER VIEW public.regress_vis_view OWNER TO regress_vis_owner;
SELECT public.regress_state() AS before;
SET ROLE regress_vis_owner;
SELECT public.regress_try($$SELECT crmguard.expose('public.regress_vis_quote', 'bad', 'portal', '{"field": "nope", "op": "=", "value": 1}')$$);
SELECT public.regress_try($$SELECT crmguard.expose('public.regress_vis_quote', 'bad', 'portal', '{"field": "stage", "op": "~", "value": "x"}')$$);
SELECT public.regress_try($$SELECT crmguard.expose('public.regress_vis_quote', 'bad', 'portal', '{"field": "total", "op": ">", "value": "lots"}')$$);
SELECT public.regress_try($$SELECT crmguard.expose('public.regress_vis_quote', 'bad', 'portal', '{"field": "stage", "op": "=", "value": "x"}', 'write')$$);
SELECT public.regress_try($$SELECT crmguard.expose('public.regress_vis_quote', 'bad', '', '{"field": "stage", "op": "=", "value": "x"}')$$);
SELECT public.regress_try($$SELECT crmguard.expose('public.regress_vis_quote', '', 'portal', '{"field": "stage", "op": "=", "value": "x"}')$$);
SELECT public.regress_try($$SELECT crmguard.expose('public.regress_vis_quote', 'bad', 'portal', NULL)$$);
SELECT public.regress_try($$SELECT crmguard.expose('public.regress_vis_quote', 'bad', 'portal', '{"any": []}')$$);
SELECT public.regress_try($$SELECT crmguard.expose('public.regress_vis_quote', 'portal: own approved quotes', 'portal', '{"field": "stage", "op": "=", "value": "x"}')$$);
SELECT public.regress_try($$SELECT crmguard.expose('public.regress_vis_parted', 'bad', 'agent', '{"field": "id", "op": "=", "value": 1}')$$);
SELECT public.regress_try($$SELECT crmguard.expose('public.regress_vis_part1', 'bad', 'agent', '{"field": "id", "op": "=", "value": 1}')$$);
SELECT public.regress_try($$SELECT crmguard.expose('public.regress_vis_view', 'bad', 'agent', '{"field": "id", "op": "=", "value": 1}')$$);
SELECT public.regress_try($$SELECT crmguard.expose_by_owner('public.regress_vis_quote', 'stage', 'agent')$$);
SELECT public.regress_try($$SELECT crmguard.expose_by_owner('public.regress_vis_quote', 'nope', 'agent')$$);
SELECT public.regress_try($$SELECT crmguard.expose_public('public.regress_vis_product', NULL)$$);
SELECT public.regress_try($$SELECT crmguard.expose_public('public.regress_vis_product', 'agent')$$);
SELECT public.regress_try($$SELECT crmguard.expose('public.no_such_table', 'bad', 'portal', '{"field": "id", "op": "=", "value": 1}')$$);
-- an OID naming no table: no rule name to derive
SELECT public.regress_try($$SELECT crmguard.expose_public(0, 'agent')$$);
SELECT public.regress_try($$SELECT crmguard.expose_by_owner(0, 'owner_id', 'agent')$$);
SELECT public.regress_try($$SELECT crmguard.unexpose('no such rule')$$);
RESET ROLE;
-- only the table's owner makes its rules, and PUBLIC cannot even call these
SET ROLE regress_vis_luca;
SELECT public.regress_try($$SELECT crmguard.expose('public.regress_vis_quote', 'mine', 'agent', '{"field": "stage", "op": "=", "value": "Draft"}')$$);
SELECT public.regress_try($$SELECT crmguard.unexpose('portal: own approved quotes')$$);
RESET ROLE;
GRANT EXECUTE ON FUNCTION crmguard.expose(regclass, text, text, jsonb, text), crmguard.unexpose(text) TO regress_vis_luca;
SET ROLE regress_vis_luca;
SELECT public.regress_try($$SELECT crmguard.expose('public.regress_vis_quote', 'mine', 'agent', '{"field": "stage", "op": "=", "value": "Draft"}')$$);
SELECT public.regress_try($$SELECT crmguard.unexpose('portal: own approved quotes')$$);
RESET ROLE;
REVOKE EXECUTE ON FUNCTION crmguard.expose(regclass, text, text, jsonb, text), crmguard.unexpose(text) FROM regress_vis_luca;
SELECT public.regress_state() AS after;

-- ---------------------------------------------------------------------------
-- The owner cannot switch visibility off, or widen it, except through crmguard
-- ---------------------------------------------------------------------------
SET ROLE regress_vis_owner;
SELECT public.regress_try($$ALTER TABLE public.regress_vis_customer DISABLE ROW LEVEL SECURITY$$);
SELECT public.regress_try($$ALTER TABLE public.regress_vis_customer NO FORCE ROW LEVEL SECURITY$$);
SELECT public.regress_try($$CREATE POLICY see_all ON public.regress_vis_customer USING (true)$$);
SELECT public.regress_try($$CREATE TABLE public.regress_vis_child () INHERITS (public.regress_vis_customer)$$);
-- a column a rule names cannot be renamed or dropped from under it
SELECT public.regress_try($$ALTER TABLE public.regress_vis_customer RENAME COLUMN billing_city TO city$$);
SELECT public.regress_try($$ALTER TABLE public.regress_vis_customer DROP COLUMN owner_id CASCADE$$);
ALTER TABLE public.regress_vis_customer RENAME COLUMN name TO account_name;
ALTER TABLE public.regress_vis_customer RENAME COLUMN account_name TO name;
-- a restrictive policy only narrows: allowed
CREATE POLICY only_positive ON public.regress_vis_customer AS RESTRICTIVE USING (revenue >= 0);
DROP POLICY only_positive ON public.regress_vis_customer;
RESET ROLE;
SELECT pg_sleep(0.5);
SELECT action, detail->>'problem' AS problem, (detail->>'superuser')::boolean AS superuser
  FROM crmguard.audit WHERE action LIKE 'visibility%' ORDER BY id;
-- a superuser may, with a warning, and it is audited
ALTER TABLE public.regress_vis_customer NO FORCE ROW LEVEL SECURITY;
ALTER TABLE public.regress_vis_customer FORCE ROW LEVEL SECURITY;
SELECT action, detail->>'problem' AS problem, (detail->>'superuser')::boolean AS superuser
  FROM crmguard.audit WHERE action = 'visibility_changed' ORDER BY id;

-- ---------------------------------------------------------------------------
-- A rule change counts from the next statement; the last rule gives the table back
-- ---------------------------------------------------------------------------
SET ROLE regress_vis_owner;
SELECT crmguard.expose('public.regress_vis_quote', 'agents see drafts', 'agent',
                       '{"field": "stage", "op": "=", "value": "Draft"}') > 0 AS exposed;
SET ROLE regress_vis_luca;
SELECT id FROM public.regress_vis_quote ORDER BY id;
SET ROLE regress_vis_owner;
SELECT crmguard.unexpose('agents see drafts');
SET ROLE regress_vis_luca;
SELECT id FROM public.regress_vis_quote ORDER BY id;
SET ROLE regress_vis_owner;
SELECT crmguard.unexpose('portal: own approved quotes');
RESET ROLE;
SELECT relrowsecurity, relforcerowsecurity,
       (SELECT count(*) FROM pg_policy WHERE polrelid = 'public.regress_vis_quote'::regclass) AS policies
  FROM pg_class WHERE oid = 'public.regress_vis_quote'::regclass;
SET ROLE regress_vis_nobody;
SELECT count(*) AS quotes FROM public.regress_vis_quote;
RESET ROLE;

-- a dropped table takes its rules with it
CREATE TABLE public.regress_vis_scratch (id int PRIMARY KEY, owner_id bigint);
ALTER TABLE public.regress_vis_scratch OWNER TO regress_vis_owner;
SET ROLE regress_vis_owner;
INSERT INTO public.regress_vis_scratch VALUES (1, public.regress_pid('vis_luca')), (2, public.regress_pid('vis_sara'));
GRANT SELECT ON public.regress_vis_scratch TO regress_vis_users;
-- a new table's first rule reaches a session whose rule cache is already loaded
SELECT crmguard.expose_by_owner('public.regress_vis_scratch', 'owner_id', 'agent') > 0 AS exposed;
SET ROLE regress_vis_luca;
SELECT id FROM public.regress_vis_scratch;
SET ROLE regress_vis_owner;
DROP TABLE public.regress_vis_scratch;
RESET ROLE;
SELECT count(*) AS orphaned_rules FROM crmguard.visibility_rule
 WHERE rule_name = 'public.regress_vis_scratch by owner for agent';

-- every rule change is in the audit log, and the chain holds
SELECT action, count(*) FROM crmguard.audit
 WHERE action LIKE 'expose%' OR action = 'unexpose' GROUP BY action ORDER BY action;
SELECT ok FROM crmguard.verify_audit();

DROP VIEW public.regress_vis_view;
DROP TABLE public.regress_vis_customer, public.regress_vis_quote, public.regress_vis_product,
           public.regress_vis_parted;
DELETE FROM crmguard.visibility_rule;
DELETE FROM crmguard.principal WHERE name LIKE 'vis\_%';
DROP FUNCTION public.regress_try(text), public.regress_state(), public.regress_pid(text);
DROP OWNED BY regress_vis_owner, regress_vis_users;
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['regress_vis_dora', 'regress_vis_anna', 'regress_vis_luca', 'regress_vis_sara',
                             'regress_vis_paolo', 'regress_vis_ivan', 'regress_vis_patricie',
                             'regress_vis_pietro', 'regress_vis_nobody'] LOOP
        EXECUTE format('DROP OWNED BY %I', r);
        EXECUTE format('DROP ROLE %I', r);
    END LOOP;
END
$$;
DROP ROLE regress_vis_owner, regress_vis_users;
