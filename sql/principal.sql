--
-- Principals: who is acting, resolved from the current role
--
CREATE ROLE regress_dora;
CREATE ROLE regress_anna;
CREATE ROLE regress_luca;
CREATE ROLE regress_nobody;

SELECT crmguard.add_principal('dora', '{director,admin}', db_role => 'regress_dora');
SELECT crmguard.add_principal('anna', '{area_manager}', 'dora',
                              '{"zone": "Milano Nord"}', 'regress_anna');
SELECT crmguard.add_principal('luca', '{agent}', 'anna',
                              '{"zone": "Milano Nord", "quota": 12, "senior": false}',
                              'regress_luca');
SELECT crmguard.add_principal('sara', '{agent}', 'anna', '{"zone": "Milano Sud"}');
SELECT id, name, db_role, manager_id, roles, attributes, active FROM crmguard.principal ORDER BY id;

-- nobody is identified for an unmapped role
SELECT crmguard.current_principal(), crmguard.has_role('admin'), crmguard.attr('zone'), crmguard.team();

-- SET ROLE maps the session to the role's principal
SET ROLE regress_luca;
SELECT crmguard.current_principal(), crmguard.has_role('agent') AS agent,
       crmguard.has_role('admin') AS admin;
SELECT crmguard.attr('zone') AS zone, crmguard.attr('quota') AS quota,
       crmguard.attr('senior') AS senior, crmguard.attr('missing') AS missing;
SELECT crmguard.team();
RESET ROLE;

-- a manager's team is itself and everyone below it
SET ROLE regress_dora;
SELECT crmguard.team();
RESET ROLE;
SET ROLE regress_anna;
SELECT crmguard.team();
RESET ROLE;

-- a SECURITY DEFINER function does not change who is acting
CREATE FUNCTION public.regress_who_am_i() RETURNS bigint
    LANGUAGE sql SECURITY DEFINER AS 'SELECT crmguard.current_principal()';
ALTER FUNCTION public.regress_who_am_i() OWNER TO regress_dora;
SET ROLE regress_luca;
SELECT public.regress_who_am_i() AS acting, crmguard.current_principal() AS outside;
RESET ROLE;

-- a change of the principal table takes effect in the next statement
UPDATE crmguard.principal SET attributes = '{"zone": "Torino"}' WHERE name = 'luca';
SET ROLE regress_luca;
SELECT crmguard.attr('zone');
RESET ROLE;

-- an inactive principal resolves to nobody
UPDATE crmguard.principal SET active = false WHERE name = 'luca';
SET ROLE regress_luca;
SELECT crmguard.current_principal(), crmguard.has_role('agent'), crmguard.team();
RESET ROLE;
UPDATE crmguard.principal SET active = true WHERE name = 'luca';

-- team() is computed once, not once per row
SET client_min_messages = debug1;
SET ROLE regress_anna;
SELECT count(*) FROM generate_series(1, 5000) AS g WHERE g = ANY (crmguard.team());
RESET ROLE;
RESET client_min_messages;

-- refusals
SELECT crmguard.add_principal('ghost', '{agent}', 'nobody-by-that-name');
SELECT crmguard.add_principal('dora');
SELECT crmguard.add_principal('', '{agent}');
SELECT crmguard.add_principal('bad', '{agent}', attributes => '[1, 2]');
SELECT count(*) AS principals FROM crmguard.principal;

-- a manager cycle is refused, directly or through several levels
UPDATE crmguard.principal SET manager_id = id WHERE name = 'dora';
UPDATE crmguard.principal SET manager_id = (SELECT id FROM crmguard.principal WHERE name = 'luca')
 WHERE name = 'dora';
-- also when one statement closes the cycle across two rows
UPDATE crmguard.principal
   SET manager_id = CASE name WHEN 'luca' THEN (SELECT id FROM crmguard.principal WHERE name = 'sara')
                              ELSE (SELECT id FROM crmguard.principal WHERE name = 'luca') END
 WHERE name IN ('luca', 'sara');
SELECT name, manager_id FROM crmguard.principal ORDER BY id;

-- administration is not for PUBLIC
SET ROLE regress_nobody;
SELECT crmguard.add_principal('mallory', '{admin}');
SELECT crmguard.issue_token('dora');
SELECT * FROM crmguard.principal;
RESET ROLE;

-- the principal cache loads in a parallel query's leader too (a new session:
-- nothing cached yet); it read with a snapshot parallel mode forbids
\c
CREATE TABLE public.regress_parallel_rows AS SELECT g FROM generate_series(1, 1000) g;
ANALYZE public.regress_parallel_rows;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
EXPLAIN (COSTS OFF) SELECT count(*), crmguard.current_principal() FROM public.regress_parallel_rows;
SELECT count(*), crmguard.current_principal() IS NULL AS nobody FROM public.regress_parallel_rows;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;
RESET max_parallel_workers_per_gather;
DROP TABLE public.regress_parallel_rows;
