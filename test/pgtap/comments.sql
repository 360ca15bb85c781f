-- Every public object of crmguard has a COMMENT (\dd, \df+ and pgAdmin show
-- what it is for). A new function, table, view, sequence, type or event
-- trigger without one fails here, named in the diagnostics.
BEGIN;
SELECT plan(6);

-- the objects: every member of the extension, and anything else in its schema
CREATE TEMP VIEW crmguard_object AS
SELECT d.classid, d.objid, pg_catalog.pg_describe_object(d.classid, d.objid, 0) AS object
  FROM pg_catalog.pg_depend d
 WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass
   AND d.refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'crmguard')
   AND d.deptype = 'e'
UNION
SELECT 'pg_catalog.pg_class'::regclass, c.oid, pg_catalog.pg_describe_object('pg_catalog.pg_class'::regclass, c.oid, 0)
  FROM pg_catalog.pg_class c
 WHERE c.relnamespace = 'crmguard'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')
UNION
SELECT 'pg_catalog.pg_proc'::regclass, p.oid, pg_catalog.pg_describe_object('pg_catalog.pg_proc'::regclass, p.oid, 0)
  FROM pg_catalog.pg_proc p
 WHERE p.pronamespace = 'crmguard'::regnamespace
UNION
-- types of their own: not a table's row type, not an array of another type
SELECT 'pg_catalog.pg_type'::regclass, t.oid, pg_catalog.pg_describe_object('pg_catalog.pg_type'::regclass, t.oid, 0)
  FROM pg_catalog.pg_type t
 WHERE t.typnamespace = 'crmguard'::regnamespace
   AND (t.typrelid = 0 OR (SELECT relkind FROM pg_catalog.pg_class WHERE oid = t.typrelid) = 'c')
   AND NOT (t.typcategory = 'A' AND t.typelem <> 0)
UNION
SELECT 'pg_catalog.pg_event_trigger'::regclass, e.oid, pg_catalog.pg_describe_object('pg_catalog.pg_event_trigger'::regclass, e.oid, 0)
  FROM pg_catalog.pg_event_trigger e
 WHERE e.evtfoid IN (SELECT oid FROM pg_catalog.pg_proc WHERE pronamespace = 'crmguard'::regnamespace);

SELECT cmp_ok((SELECT count(*)::int FROM crmguard_object), '>', 120,
    'the inventory sees crmguard''s functions, tables, views, sequences and event triggers');

SELECT is_empty(
    $$SELECT object FROM crmguard_object o
       WHERE pg_catalog.obj_description(o.objid, (SELECT relname FROM pg_catalog.pg_class WHERE oid = o.classid)) IS NULL
       ORDER BY object$$,
    'every function, table, view, sequence, type and event trigger of crmguard has a COMMENT');

SELECT is_empty(
    $$SELECT object FROM crmguard_object o
       WHERE pg_catalog.obj_description(o.objid, (SELECT relname FROM pg_catalog.pg_class WHERE oid = o.classid)) !~ '^\S.*\S$'
       ORDER BY object$$,
    'no COMMENT is blank or padded');

SELECT isnt(pg_catalog.obj_description('crmguard'::regnamespace, 'pg_namespace'), NULL,
    'the schema crmguard has a COMMENT');
SELECT isnt(pg_catalog.obj_description((SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'crmguard'), 'pg_extension'), NULL,
    'the extension has a COMMENT (from crmguard.control)');
SELECT isnt(pg_catalog.shobj_description((SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'crmguard_relay'), 'pg_authid'), NULL,
    'the role crmguard_relay has a COMMENT');

SELECT * FROM finish();
ROLLBACK;
