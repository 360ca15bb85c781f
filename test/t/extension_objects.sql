-- A description of everything crmguard owns or made in a database, one line
-- per fact, sorted: two databases that print the same lines hold the same
-- crmguard.  t/015_upgrade.pl compares a database upgraded from 1.0 with a
-- fresh install; run it with psql -XAt to compare any two databases.
--
-- Covered: every member of the extension (pg_describe_object), functions
-- (full signature, result, language, kind, volatility, parallel, strictness,
-- security definer, leakproof, settings, ACL, comment, md5 of the source),
-- relations (kind, RLS, options, ACL, comment), columns (position, type,
-- NOT NULL, default, collation, ACL, comment), constraints, indexes, triggers
-- (with tgenabled), policies, sequences, views (md5 of the definition), types,
-- event triggers (tags, function, evtenabled, comment), the schema, the
-- initial privileges pg_dump compares with, and pg_extension_config_dump
-- entries.  Beyond crmguard's schema: the triggers crmguard installed on user
-- tables (their function is crmguard's), their policies and RLS flags.
SET search_path = pg_catalog, pg_temp;
WITH ext AS (
    SELECT e.oid, e.extnamespace AS nsp FROM pg_extension e WHERE e.extname = 'crmguard'
),
rels AS (
    SELECT c.oid, c.relname, c.relkind FROM pg_class c, ext WHERE c.relnamespace = ext.nsp
),
lines(line) AS (
    -- the extension itself and its schema
    SELECT format('extension crmguard | relocatable %s | schema %s', e.extrelocatable, e.extnamespace::regnamespace)
      FROM pg_extension e WHERE e.extname = 'crmguard'
    UNION ALL
    SELECT format('schema %s | owner %s | acl %s | comment %s', n.nspname, n.nspowner::regrole, n.nspacl,
                  obj_description(n.oid, 'pg_namespace'))
      FROM pg_namespace n, ext WHERE n.oid = ext.nsp
    -- every member, whatever its kind
    UNION ALL
    SELECT format('member %s', pg_describe_object(d.classid, d.objid, d.objsubid))
      FROM pg_depend d, ext
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
    -- functions
    UNION ALL
    SELECT format('function %s(%s) | returns %s | %s %s | volatile %s | parallel %s | strict %s | secdef %s | leakproof %s | config %s | acl %s | comment %s | src md5 %s',
                  p.oid::regproc, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),
                  l.lanname, p.prokind, p.provolatile, p.proparallel, p.proisstrict, p.prosecdef, p.proleakproof,
                  p.proconfig, p.proacl, obj_description(p.oid, 'pg_proc'),
                  md5(CASE WHEN l.lanname = 'c' THEN p.prosrc || ' ' || p.probin ELSE p.prosrc END))
      FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang, ext
     WHERE p.pronamespace = ext.nsp
    -- relations
    UNION ALL
    SELECT format('relation %s | kind %s | persistence %s | rls %s | force rls %s | options %s | acl %s | comment %s',
                  c.oid::regclass, c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity,
                  c.reloptions, c.relacl, obj_description(c.oid, 'pg_class'))
      FROM pg_class c, ext WHERE c.relnamespace = ext.nsp AND c.relkind <> 'i'
    -- columns, by position among the columns that are not dropped
    UNION ALL
    SELECT format('column %s.%s | position %s | type %s | not null %s | default %s | collation %s | identity %s | generated %s | acl %s | comment %s',
                  a.attrelid::regclass, quote_ident(a.attname),
                  row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum),
                  format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid),
                  CASE WHEN a.attcollation <> 0 THEN a.attcollation::regcollation END,
                  a.attidentity, a.attgenerated, a.attacl, col_description(a.attrelid, a.attnum))
      FROM pg_attribute a JOIN rels r ON r.oid = a.attrelid AND r.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
      LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
     WHERE a.attnum > 0 AND NOT a.attisdropped
    -- constraints, indexes
    UNION ALL
    SELECT format('constraint %s.%s | %s | deferrable %s | comment %s', co.conrelid::regclass, quote_ident(co.conname),
                  pg_get_constraintdef(co.oid), co.condeferrable, obj_description(co.oid, 'pg_constraint'))
      FROM pg_constraint co JOIN rels r ON r.oid = co.conrelid
    UNION ALL
    SELECT format('index %s | %s | comment %s', i.indexrelid::regclass, pg_get_indexdef(i.indexrelid),
                  obj_description(i.indexrelid, 'pg_class'))
      FROM pg_index i JOIN rels r ON r.oid = i.indrelid
    -- triggers on crmguard's tables, and the guards crmguard put on user tables
    UNION ALL
    SELECT format('trigger %s.%s | enabled %s | %s | comment %s', t.tgrelid::regclass, quote_ident(t.tgname), t.tgenabled,
                  pg_get_triggerdef(t.oid), obj_description(t.oid, 'pg_trigger'))
      FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid, ext
     WHERE NOT t.tgisinternal
       AND (t.tgrelid IN (SELECT oid FROM rels) OR p.pronamespace = ext.nsp)
    -- policies on crmguard's tables and on the tables crmguard guards
    UNION ALL
    SELECT format('policy %s.%s | cmd %s | permissive %s | roles %s | using %s | check %s',
                  po.polrelid::regclass, quote_ident(po.polname), po.polcmd, po.polpermissive,
                  (SELECT array_agg(CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END ORDER BY 1) FROM unnest(po.polroles) r),
                  pg_get_expr(po.polqual, po.polrelid), pg_get_expr(po.polwithcheck, po.polrelid))
      FROM pg_policy po
    UNION ALL
    SELECT format('user table %s | rls %s | force rls %s', c.oid::regclass, c.relrowsecurity, c.relforcerowsecurity)
      FROM pg_class c, ext
     WHERE c.relnamespace <> ext.nsp AND c.relkind IN ('r', 'p')
       AND (c.relrowsecurity OR c.relforcerowsecurity)
    -- sequences, views, types
    UNION ALL
    SELECT format('sequence %s | %s start %s increment %s min %s max %s cache %s cycle %s | owned by %s',
                  s.seqrelid::regclass, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
                  s.seqcache, s.seqcycle,
                  (SELECT format('%s.%s', d.refobjid::regclass, a.attname) FROM pg_depend d
                     JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid AND d.deptype = 'a'))
      FROM pg_sequence s JOIN rels r ON r.oid = s.seqrelid
    UNION ALL
    SELECT format('view %s | definition md5 %s | options %s', r.oid::regclass, md5(pg_get_viewdef(r.oid)),
                  (SELECT reloptions FROM pg_class WHERE oid = r.oid))
      FROM rels r WHERE r.relkind IN ('v', 'm')
    UNION ALL
    SELECT format('type %s | type %s | labels %s | base %s | comment %s', t.oid::regtype, t.typtype,
                  (SELECT array_agg(enumlabel ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid),
                  CASE WHEN t.typbasetype <> 0 THEN format_type(t.typbasetype, t.typtypmod) END,
                  obj_description(t.oid, 'pg_type'))
      FROM pg_type t, ext
     WHERE t.typnamespace = ext.nsp AND t.typrelid = 0 AND t.typelem = 0
    -- event triggers
    UNION ALL
    SELECT format('event trigger %s | on %s | tags %s | function %s | enabled %s | comment %s', quote_ident(et.evtname),
                  et.evtevent, (SELECT array_agg(x ORDER BY x) FROM unnest(et.evttags) x), et.evtfoid::regproc,
                  et.evtenabled, obj_description(et.oid, 'pg_event_trigger'))
      FROM pg_event_trigger et JOIN pg_proc p ON p.oid = et.evtfoid, ext
     WHERE p.pronamespace = ext.nsp
    -- the initial privileges pg_dump compares an object's ACL with
    UNION ALL
    SELECT format('initial privileges %s | %s | %s', pg_describe_object(ip.classoid, ip.objoid, ip.objsubid),
                  ip.privtype, ip.initprivs)
      FROM pg_init_privs ip
     WHERE ip.privtype = 'e'
       AND EXISTS (SELECT 1 FROM pg_depend d, ext
                    WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
                      AND d.classid = ip.classoid AND d.objid = ip.objoid)
    -- the tables pg_dump dumps the rows of
    UNION ALL
    SELECT format('config dump %s | condition %s', c.cfg::regclass, c.cond)
      FROM pg_extension e,
           unnest(e.extconfig, e.extcondition) AS c(cfg, cond)
     WHERE e.extname = 'crmguard'
)
SELECT line FROM lines ORDER BY line COLLATE "C";
