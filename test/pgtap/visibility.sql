-- Row visibility: policies keep index scans for a non-superuser principal
BEGIN;
SELECT plan(17);

CREATE ROLE tap_vis_agent;
CREATE ROLE tap_vis_stranger;
SELECT crmguard.add_principal('tap_vis_boss', '{area_manager}');
SELECT crmguard.add_principal('tap_vis_agent', '{agent}', 'tap_vis_boss', '{"zone": "z7"}', 'tap_vis_agent');

CREATE TABLE public.tap_vis (
    id       integer PRIMARY KEY,
    zone     text NOT NULL,
    owner_id bigint NOT NULL,
    amount   integer NOT NULL
);
INSERT INTO public.tap_vis
SELECT i, 'z' || (i % 100), i % 500, i % 1000 FROM generate_series(1, 100000) AS i;
CREATE INDEX tap_vis_zone_idx ON public.tap_vis (zone);
CREATE INDEX tap_vis_owner_idx ON public.tap_vis (owner_id);
ANALYZE public.tap_vis;
GRANT SELECT ON public.tap_vis TO tap_vis_agent, tap_vis_stranger;

SELECT crmguard.expose('public.tap_vis', 'tap agents by zone', 'agent',
                       '{"field": "zone", "op": "=", "principal": "zone"}') > 0 AS exposed;
SELECT crmguard.expose_by_owner('public.tap_vis', 'owner_id', 'area_manager') > 0 AS exposed;

-- the plan of a query, as one line
CREATE FUNCTION pg_temp.plan_of(query text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    line text;
    result text := '';
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || query LOOP
        result := result || line || E'\n';
    END LOOP;
    RETURN result;
END
$$;

SET ROLE tap_vis_agent;
SELECT matches(pg_temp.plan_of('SELECT * FROM public.tap_vis WHERE id = 4207'),
               'Index Scan using tap_vis_pkey',
               'a principal''s point query on a 100,000-row guarded table is an index scan');
SELECT matches(pg_temp.plan_of($$SELECT * FROM public.tap_vis WHERE zone = 'z7' AND amount < 50$$),
               'Index Scan|Bitmap Index Scan',
               'a principal''s selective query keeps its index on the guarded table');
SELECT matches(pg_temp.plan_of('SELECT * FROM public.tap_vis WHERE id = 4207'),
               'InitPlan',
               'the principal''s roles and attributes are read once per statement (InitPlan)');
SELECT is((SELECT count(*) FROM public.tap_vis WHERE id BETWEEN 1 AND 1000), 10::bigint,
          'and the index scan returns only the rows of the principal''s zone');
SELECT is((SELECT count(*) FROM public.tap_vis WHERE id = 4207), 1::bigint,
          'a row of his zone is found through the index');
SELECT is((SELECT count(*) FROM public.tap_vis WHERE id = 4208), 0::bigint,
          'a row of another zone is not');
SET ROLE tap_vis_stranger;
SELECT is((SELECT count(*) FROM public.tap_vis WHERE id = 4207), 0::bigint,
          'a session with no principal sees nothing of a guarded table');
RESET ROLE;

-- the policy alone drives an index: "my customers" without a WHERE of one's own
SET ROLE tap_vis_agent;
SELECT matches(pg_temp.plan_of('SELECT count(*) FROM public.tap_vis'),
               'Index Cond: \(zone = ',
               'an agent''s whole-table query is an index scan on the column of his rule');
SELECT is((SELECT count(*) FROM public.tap_vis), 1000::bigint, 'and counts his zone''s 1,000 rows');
SELECT matches(pg_temp.plan_of('SELECT count(*) FROM public.tap_vis'),
               '^(?!.*InitPlan 2).*InitPlan 1 \(returns \$0,\$1\)',
               'his role check and his zone are read by one InitPlan, not one each');
RESET ROLE;
SELECT crmguard.add_principal('tap_vis_manager', '{area_manager}', NULL, '{}', 'tap_vis_stranger') > 0;
SET ROLE tap_vis_stranger;
SELECT matches(pg_temp.plan_of('SELECT count(*) FROM public.tap_vis'),
               'Index Cond: \(owner_id = ANY ',
               'a manager''s whole-table query is an index scan on the owners of his team');
SELECT matches(pg_temp.plan_of('SELECT count(*) FROM public.tap_vis'),
               '^(?!.*InitPlan 2).*InitPlan 1 \(returns \$0,\$1\)',
               'his role check and his team are read by one InitPlan');
RESET ROLE;
-- the index condition decides the team exactly: a bitmap heap scan keeps no per-row in_team() filter
UPDATE public.tap_vis SET owner_id = CASE WHEN id <= 300 THEN (SELECT id FROM crmguard.principal WHERE name = 'tap_vis_manager') ELSE 0 END
 WHERE id <= 300 OR owner_id = (SELECT id FROM crmguard.principal WHERE name = 'tap_vis_manager');
ANALYZE public.tap_vis;
SET ROLE tap_vis_stranger;
SET LOCAL enable_indexscan = off;
SELECT doesnt_match(pg_temp.plan_of('SELECT count(*) FROM public.tap_vis'),
                    'Filter: .*in_team',
                    'a manager''s bitmap scan on the owners of his team has no per-row in_team() filter');
SELECT is((SELECT count(*) FROM public.tap_vis), 300::bigint,
          'and it returns exactly the 300 rows of his team');
RESET enable_indexscan;
RESET ROLE;
-- a rule of several conditions: its attribute comparison still drives the index
CREATE ROLE tap_vis_portal;
GRANT SELECT ON public.tap_vis TO tap_vis_portal;
SELECT crmguard.add_principal('tap_vis_customer', '{portal}', NULL, '{"zone": "z7"}', 'tap_vis_portal') > 0;
SELECT crmguard.expose('public.tap_vis', 'tap portal: cheap rows of his zone', 'portal',
                       '{"all": [{"field": "zone", "op": "=", "principal": "zone"},
                                 {"field": "amount", "op": "<", "value": 500}]}') > 0 AS exposed;
SET ROLE tap_vis_portal;
SELECT matches(pg_temp.plan_of('SELECT count(*) FROM public.tap_vis'),
               'Index Cond: \(zone = ',
               'a rule of several conditions keeps the index on its attribute comparison');
SELECT is((SELECT count(*) FROM public.tap_vis), 500::bigint,
          'and returns the 500 rows of his zone under the amount');
RESET ROLE;
SELECT is_empty($$SELECT 1 FROM pg_policy WHERE polrelid = 'public.tap_vis'::regclass$$,
                'no stored policy: each statement gets the rules of its principal''s roles');

SELECT * FROM finish();
ROLLBACK;
