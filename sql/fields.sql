--
-- Contact fields: two projects (Energia, Telefonia) share one contacts table;
-- each sees its own fields, masked values stay masked and encrypted at rest
--
\set VERBOSITY default
-- refusals are shown as SQLSTATE: message, so each code is part of the record
CREATE FUNCTION public.regress_fld_try(query text) RETURNS text
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE query;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
GRANT EXECUTE ON FUNCTION public.regress_fld_try(text) TO PUBLIC;

CREATE ROLE regress_fld_owner;
CREATE ROLE regress_fld_users;
GRANT USAGE, CREATE ON SCHEMA public TO regress_fld_owner;
GRANT EXECUTE ON FUNCTION crmguard.enable_fields(regclass, name, name),
      crmguard.define_field(regclass, text, text, text[], boolean, boolean, text, boolean),
      crmguard.drop_field(regclass, text), crmguard.expose(regclass, text, text, jsonb, text)
   TO regress_fld_owner;
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['regress_fld_ela', 'regress_fld_eros', 'regress_fld_tom', 'regress_fld_sue',
                             'regress_fld_ada', 'regress_fld_nobody'] LOOP
        EXECUTE format('CREATE ROLE %I IN ROLE regress_fld_users', r);
    END LOOP;
END
$$;
-- ela and eros: Energia agents in two regions; tom: Telefonia; sue: Energia
-- supervisor who may see masked values; ada: admin; regress_fld_nobody: no principal
SELECT crmguard.add_principal('fld_ela', '{agent}', NULL, '{"projects": ["Energia"], "region": "North"}', 'regress_fld_ela') > 0 AS ela;
SELECT crmguard.add_principal('fld_eros', '{agent}', NULL, '{"projects": ["Energia"], "region": "South"}', 'regress_fld_eros') > 0 AS eros;
SELECT crmguard.add_principal('fld_tom', '{agent}', NULL, '{"projects": ["Telefonia"], "region": "North"}', 'regress_fld_tom') > 0 AS tom;
SELECT crmguard.add_principal('fld_sue', '{supervisor,view_masked}', NULL, '{"projects": ["Energia"]}', 'regress_fld_sue') > 0 AS sue;
SELECT crmguard.add_principal('fld_ada', '{admin}', NULL, '{}', 'regress_fld_ada') > 0 AS ada;

SET ROLE regress_fld_owner;
CREATE TABLE public.regress_contact (
    id      int PRIMARY KEY,
    name    text NOT NULL,
    region  text NOT NULL DEFAULT 'North',
    fields  jsonb NOT NULL DEFAULT '{}'
);
GRANT SELECT, INSERT, UPDATE ON public.regress_contact TO regress_fld_users;
CREATE TABLE public.regress_nokey (note text, fields jsonb);
CREATE TABLE public.regress_notjson (id int PRIMARY KEY, fields json);
-- a view made before the fields existed: it reads the column through the projection too
CREATE VIEW public.regress_contact_early AS SELECT id, fields FROM public.regress_contact;
GRANT SELECT ON public.regress_contact_early TO regress_fld_users;

-- definitions are checked when they are made (CG020)
SELECT public.regress_fld_try($$SELECT crmguard.enable_fields('public.regress_nokey', 'fields')$$);
SELECT public.regress_fld_try($$SELECT crmguard.enable_fields('public.regress_notjson', 'fields')$$);
SELECT public.regress_fld_try($$SELECT crmguard.enable_fields('public.regress_contact', 'nope')$$);
SELECT public.regress_fld_try($$SELECT crmguard.enable_fields('public.regress_contact', 'fields', 'nope')$$);
SELECT crmguard.enable_fields('public.regress_contact', 'fields');
SELECT public.regress_fld_try($$SELECT crmguard.enable_fields('public.regress_contact', 'fields')$$);
SELECT crmguard.define_field('public.regress_contact', 'email', 'email', unique_values => true) > 0 AS email;
SELECT crmguard.define_field('public.regress_contact', 'phone', 'phone', '{Energia}',
                             unique_values => true, masked => true) > 0 AS phone;
SELECT crmguard.define_field('public.regress_contact', 'pod_code', 'text', '{Energia}', unique_values => true) > 0 AS pod;
SELECT crmguard.define_field('public.regress_contact', 'consumption', 'int', '{Energia}') > 0 AS consumption;
SELECT crmguard.define_field('public.regress_contact', 'survey', 'text', '{Energia}') > 0 AS survey;
SELECT crmguard.define_field('public.regress_contact', 'msisdn', 'phone', '{Telefonia}', masked => true, mask => 'full') > 0 AS msisdn;
SELECT crmguard.define_field('public.regress_contact', 'plan', 'text', '{Telefonia}') > 0 AS plan;
SELECT crmguard.define_field('public.regress_contact', 'notes', 'text', '{Energia,Telefonia}') > 0 AS notes;
SELECT crmguard.define_field('public.regress_contact', 'since', 'date') > 0 AS since;
SELECT public.regress_fld_try($$SELECT crmguard.define_field('public.regress_contact', 'email', 'text')$$);
SELECT public.regress_fld_try($$SELECT crmguard.define_field('public.regress_contact', 'age', 'integer')$$);
SELECT public.regress_fld_try($$SELECT crmguard.define_field('public.regress_contact', 'x', 'text', mask => 'blur')$$);
SELECT public.regress_fld_try($$SELECT crmguard.define_field('public.regress_contact', 'x', 'text', mask => 'email')$$);
SELECT public.regress_fld_try($$SELECT crmguard.define_field('public.regress_contact', 'x', 'text', '{}')$$);
SELECT public.regress_fld_try($$SELECT crmguard.define_field('public.regress_contact', '', 'text')$$);
-- rows are visible by region (a visibility rule): find_by_field returns only rows the caller sees
SELECT crmguard.expose('public.regress_contact', 'fld agents: own region', 'agent',
       '{"field": "region", "op": "=", "principal": "region"}', 'edit') > 0 AS rule;
SELECT crmguard.expose('public.regress_contact', 'fld supervisors', 'supervisor',
       '{"field": "region", "op": "is not null"}', 'edit') > 0 AS rule;
RESET ROLE;
SELECT count(*) AS fields_defined FROM crmguard.field_def WHERE target = 'public.regress_contact'::regclass;
-- only the table's owner defines its fields
SET ROLE regress_fld_ela;
SELECT public.regress_fld_try($$SELECT crmguard.define_field('public.regress_contact', 'x', 'text')$$);
RESET ROLE;

-- ---------------------------------------------------------------------------
-- Writes are validated and normalised
-- ---------------------------------------------------------------------------
SET ROLE regress_fld_ela;
INSERT INTO public.regress_contact (id, name, fields) VALUES
    (1, 'Mario Rossi', '{"phone": "+39 347 555 0123", "pod_code": "IT001E1", "consumption": "2700",
                         "email": "Mario.Rossi@Example.COM", "since": "2024-03-01"}'),
    (2, 'Lucia Bianchi', '{"phone": "0039 (02) 555-0188", "pod_code": "IT001E2", "consumption": 1800}');
RESET ROLE;
SET ROLE regress_fld_eros;
INSERT INTO public.regress_contact (id, name, region, fields) VALUES
    (3, 'Gino Verdi', 'South', '{"phone": "+39 333 111 2222", "pod_code": "IT001E3", "email": "gino@verdi.example"}');
RESET ROLE;
SET ROLE regress_fld_tom;
INSERT INTO public.regress_contact (id, name, fields) VALUES
    (4, 'Sara Neri', '{"msisdn": "+39 320 000 4444", "plan": "Fibra 1000", "notes": "prefers e-mail"}');
-- Telefonia adds its fields to an Energia customer's shared row
UPDATE public.regress_contact SET fields = fields || '{"msisdn": "+393209998877", "plan": "Mobile 50"}' WHERE id = 1;
RESET ROLE;

-- bad input: each a clear error with its SQLSTATE, and nothing changed
SET ROLE regress_fld_ela;
SELECT public.regress_fld_try($$INSERT INTO public.regress_contact VALUES (10, 'x', 'North', '{"fax": "123"}')$$) AS unknown_field;
SELECT public.regress_fld_try($$INSERT INTO public.regress_contact VALUES (10, 'x', 'North', '{"consumption": "a lot"}')$$) AS wrong_type;
SELECT public.regress_fld_try($$INSERT INTO public.regress_contact VALUES (10, 'x', 'North', '{"consumption": true}')$$) AS wrong_type_bool;
SELECT public.regress_fld_try($$INSERT INTO public.regress_contact VALUES (10, 'x', 'North', '{"since": "2024-02-30"}')$$) AS not_a_date;
SELECT public.regress_fld_try($$INSERT INTO public.regress_contact VALUES (10, 'x', 'North', '{"plan": "Fibra"}')$$) AS another_project;
SELECT public.regress_fld_try($$INSERT INTO public.regress_contact VALUES (10, 'x', 'North', '{"phone": "347 555 0123"}')$$) AS phone_without_country;
SELECT public.regress_fld_try($$INSERT INTO public.regress_contact VALUES (10, 'x', 'North', '{"phone": "+39 347 CALL ME"}')$$) AS malformed_phone;
SELECT public.regress_fld_try($$INSERT INTO public.regress_contact VALUES (10, 'x', 'North', '{"email": "mario@"}')$$) AS malformed_email;
SELECT public.regress_fld_try($$INSERT INTO public.regress_contact VALUES (10, 'x', 'North', '{"email": "a b@c.example"}')$$) AS malformed_email_space;
SELECT public.regress_fld_try($$INSERT INTO public.regress_contact VALUES (10, 'x', 'North', '{"notes": {"nested": 1}}')$$) AS nested_value;
SELECT public.regress_fld_try($$INSERT INTO public.regress_contact VALUES (10, 'x', 'North', '["not", "an", "object"]')$$) AS not_an_object;
SELECT public.regress_fld_try($$UPDATE public.regress_contact SET fields = fields || '{"consumption": 1.5}' WHERE id = 1$$) AS not_an_integer;
INSERT INTO public.regress_contact VALUES (10, 'x', 'North', '{"phone": "+39 347"}');
RESET ROLE;
-- a session without a principal writes no field
SET ROLE regress_fld_nobody;
SELECT public.regress_fld_try($$INSERT INTO public.regress_contact VALUES (10, 'x', 'North', '{"email": "x@y.example"}')$$) AS nobody_writes;
RESET ROLE;
SELECT count(*) AS contacts FROM public.regress_contact;

-- ---------------------------------------------------------------------------
-- Reads: each principal sees its projection, whatever the query shape
-- ---------------------------------------------------------------------------
-- Energia's agent: Energia's fields and the shared ones, the phone masked
SET ROLE regress_fld_ela;
SELECT id, fields FROM public.regress_contact ORDER BY id;
RESET ROLE;
-- Telefonia's agent: none of Energia's fields, its own masked fully
SET ROLE regress_fld_tom;
SELECT id, fields FROM public.regress_contact ORDER BY id;
RESET ROLE;
-- the Energia supervisor with view_masked: a plain SELECT still shows masks
SET ROLE regress_fld_sue;
SELECT id, fields FROM public.regress_contact ORDER BY id;
RESET ROLE;
-- admin: every project's fields, masked values masked
SET ROLE regress_fld_ada;
SELECT id, fields FROM public.regress_contact WHERE id = 1;
RESET ROLE;
-- no principal: no fields (and, under the visibility rules, no rows)
SET ROLE regress_fld_nobody;
SELECT count(*) AS rows_seen FROM public.regress_contact;
RESET ROLE;

-- attack: the jsonb operators on another project's field
SET ROLE regress_fld_tom;
SELECT id, fields->>'pod_code' AS pod, fields->'phone' AS phone, fields #>> '{consumption}' AS consumption,
       jsonb_path_query_array(fields, '$.*') AS all_values
  FROM public.regress_contact WHERE id = 1;
-- attack: filter on a hidden value to learn it row by row (an oracle)
SELECT count(*) AS oracle FROM public.regress_contact WHERE fields->>'pod_code' = 'IT001E1';
SELECT count(*) AS oracle FROM public.regress_contact WHERE fields @> '{"consumption": 2700}';
-- attack: the whole row, as a record or as JSON
SELECT c FROM public.regress_contact c WHERE id = 1;
SELECT to_jsonb(c) -> 'fields' AS fields FROM public.regress_contact c WHERE id = 1;
SELECT row_to_json(c.*) ->> 'fields' AS fields FROM public.regress_contact c WHERE id = 1;
RESET ROLE;
-- a whole row of a table with a dropped column is projected too
ALTER TABLE public.regress_contact ADD COLUMN regress_gone int;
ALTER TABLE public.regress_contact DROP COLUMN regress_gone;
SET ROLE regress_fld_tom;
SELECT c FROM public.regress_contact c WHERE id = 1;
-- attack: subqueries, CTEs, LATERAL, a join's alias, set operations, aggregates
SELECT (SELECT fields FROM public.regress_contact WHERE id = 1) AS sub;
WITH c AS (SELECT * FROM public.regress_contact) SELECT fields FROM c WHERE id = 1;
SELECT x.key FROM public.regress_contact c, LATERAL jsonb_each(c.fields) x WHERE c.id = 1 ORDER BY 1;
SELECT j.fields FROM public.regress_contact JOIN (VALUES (1)) v(id) USING (id) JOIN public.regress_contact j USING (id);
SELECT fields FROM public.regress_contact WHERE id = 1 UNION ALL SELECT fields FROM public.regress_contact WHERE id = 2;
SELECT jsonb_agg(fields ORDER BY id) FROM public.regress_contact WHERE id <= 2;
SELECT id FROM public.regress_contact c WHERE EXISTS (SELECT 1 WHERE c.fields ? 'pod_code');
RESET ROLE;

-- attack: views, made before or after the fields, with or without security_invoker
SET ROLE regress_fld_owner;
CREATE VIEW public.regress_contact_view AS SELECT id, fields, fields->>'phone' AS phone FROM public.regress_contact;
GRANT SELECT ON public.regress_contact_view TO regress_fld_users;
CREATE MATERIALIZED VIEW public.regress_contact_mat AS SELECT id, fields FROM public.regress_contact;
GRANT SELECT ON public.regress_contact_mat TO regress_fld_users;
RESET ROLE;
SET ROLE regress_fld_tom;
SELECT * FROM public.regress_contact_early WHERE id = 1;
SELECT * FROM public.regress_contact_view WHERE id = 1;
-- a materialized view holds what its owner saw when it was refreshed: here nothing
SELECT * FROM public.regress_contact_mat ORDER BY id;
RESET ROLE;

-- attack: functions in SQL and PL/pgSQL, including a definer's
SET ROLE regress_fld_owner;
CREATE FUNCTION public.regress_fld_sql(int) RETURNS jsonb LANGUAGE sql STABLE
    AS $$SELECT fields FROM public.regress_contact WHERE id = $1$$;
CREATE FUNCTION public.regress_fld_plpgsql(k int) RETURNS text LANGUAGE plpgsql AS $$
DECLARE f jsonb;
BEGIN
    SELECT c.fields INTO f FROM public.regress_contact c WHERE c.id = k;
    RETURN f->>'pod_code';
END
$$;
CREATE FUNCTION public.regress_fld_definer(int) RETURNS jsonb LANGUAGE sql STABLE SECURITY DEFINER
    AS $$SELECT fields FROM public.regress_contact WHERE id = $1$$;
RESET ROLE;
SET ROLE regress_fld_tom;
SELECT public.regress_fld_sql(1) AS sql_fn, public.regress_fld_plpgsql(1) AS plpgsql_fn,
       public.regress_fld_definer(1) AS definer_fn;
-- attack: a statement prepared by one principal, run by another
RESET ROLE;
SET ROLE regress_fld_ela;
PREPARE regress_fld_stmt AS SELECT fields->>'pod_code' AS pod FROM public.regress_contact WHERE id = 1;
EXECUTE regress_fld_stmt;
RESET ROLE;
SET ROLE regress_fld_tom;
EXECUTE regress_fld_stmt;
DEALLOCATE regress_fld_stmt;

-- attack: COPY out, of a query and of the table
COPY (SELECT id, fields FROM public.regress_contact WHERE id = 1) TO STDOUT;
COPY public.regress_contact TO STDOUT;
COPY public.regress_contact (id, fields) TO STDOUT;
-- attack: RETURNING, of an update and of an insert
UPDATE public.regress_contact SET name = name WHERE id = 1 RETURNING id, fields;
UPDATE public.regress_contact SET name = name WHERE id = 1 RETURNING regress_contact;
INSERT INTO public.regress_contact VALUES (5, 'Ugo Blu', 'North', '{"plan": "Mobile 10"}') RETURNING fields;
-- attack: copy the column into a table of one's own
CREATE TEMP TABLE regress_loot AS SELECT id, fields FROM public.regress_contact;
SELECT fields FROM regress_loot WHERE id = 1;
DROP TABLE regress_loot;
-- attack: ON CONFLICT reading the stored row
INSERT INTO public.regress_contact VALUES (1, 'x', 'North', '{}')
    ON CONFLICT (id) DO UPDATE SET name = public.regress_contact.name RETURNING fields;
RESET ROLE;
-- pg_stats holds no sample of the column
SET ROLE regress_fld_owner;
ANALYZE public.regress_contact;
RESET ROLE;
SELECT count(*) AS stats_of_fields FROM pg_stats
 WHERE tablename = 'regress_contact' AND attname = 'fields' AND most_common_vals IS NOT NULL;

-- ---------------------------------------------------------------------------
-- Masked values are encrypted at rest: superuser, owner, dumps see ciphertext
-- ---------------------------------------------------------------------------
-- a superuser (no principal) reads the stored form: blind index, ciphertext, mask
SELECT id, fields->'phone' ? 'enc' AS sealed, fields->'phone'->>'mask' AS mask,
       length(fields->'phone'->>'blind') AS blind_hex, fields->>'phone' LIKE '%3475550123%' AS clear
  FROM public.regress_contact WHERE id = 1;
-- the relation's bytes on disk hold the e-mail (not masked) but no masked number
CHECKPOINT;
SELECT position(convert_to('Mario.Rossi@example.com', 'UTF8') IN pg_read_binary_file(pg_relation_filepath('public.regress_contact'))) > 0 AS clear_email_on_disk,
       position(convert_to('3475550123', 'UTF8') IN pg_read_binary_file(pg_relation_filepath('public.regress_contact'))) > 0 AS phone_on_disk,
       position(convert_to('3209998877', 'UTF8') IN pg_read_binary_file(pg_relation_filepath('public.regress_contact'))) > 0 AS msisdn_on_disk;
-- attack: move a ciphertext to another row: it does not decrypt there
SET ROLE regress_fld_ada;
SELECT public.regress_fld_try(format($$UPDATE public.regress_contact SET fields = fields || '{"phone": %s}' WHERE id = 2$$,
       (SELECT fields->'phone' FROM public.regress_contact c WHERE id = 1)));
RESET ROLE;
SELECT public.regress_fld_try(format($$UPDATE public.regress_contact SET fields = fields || jsonb_build_object('phone', %L::jsonb) WHERE id = 2$$,
       (SELECT fields->'phone' FROM public.regress_contact WHERE id = 1)));

-- ---------------------------------------------------------------------------
-- Writes never destroy what the writer cannot see
-- ---------------------------------------------------------------------------
CREATE TEMP TABLE regress_before AS SELECT id, fields FROM public.regress_contact;
-- Telefonia writes its projection back with a note: Energia's fields and the masked phone stay
SET ROLE regress_fld_tom;
UPDATE public.regress_contact SET fields = fields || '{"notes": "called"}' WHERE id = 1;
RESET ROLE;
SELECT b.fields - 'notes' = c.fields - 'notes' AS all_kept, c.fields->>'notes' AS notes
  FROM public.regress_contact c JOIN regress_before b USING (id) WHERE id = 1;
-- Energia writes back what it saw (the phone masked): the ciphertext is the same
SET ROLE regress_fld_ela;
UPDATE public.regress_contact SET fields = fields WHERE id IN (1, 2);
UPDATE public.regress_contact SET fields = jsonb_set(fields, '{survey}', '"interested"') WHERE id = 2;
RESET ROLE;
SELECT id, c.fields->'phone' = b.fields->'phone' AS phone_kept, c.fields->'msisdn' = b.fields->'msisdn' AS msisdn_kept,
       c.fields->>'survey' AS survey
  FROM public.regress_contact c JOIN regress_before b USING (id) WHERE id IN (1, 2) ORDER BY id;
-- removing the fields one sees leaves the others
SET ROLE regress_fld_tom;
UPDATE public.regress_contact SET fields = '{}' WHERE id = 1;
RESET ROLE;
SELECT jsonb_object_keys(fields) AS kept FROM public.regress_contact WHERE id = 1 ORDER BY 1;
-- a new phone number: a new ciphertext and blind index
SET ROLE regress_fld_ela;
UPDATE public.regress_contact SET fields = fields || '{"phone": "+39 347 555 9999"}' WHERE id = 1;
SELECT fields->>'phone' AS phone FROM public.regress_contact WHERE id = 1;
RESET ROLE;
-- a changed row key seals its masked values again: they still decrypt
UPDATE public.regress_contact SET id = 11 WHERE id = 2;
SET ROLE regress_fld_sue;
SELECT crmguard.unmask('public.regress_contact', '11', 'phone', 'regress: key changed') AS phone;
RESET ROLE;
UPDATE public.regress_contact SET id = 2 WHERE id = 11;

-- ---------------------------------------------------------------------------
-- set_field: an agent fills in a survey answer
-- ---------------------------------------------------------------------------
SET ROLE regress_fld_ela;
SELECT crmguard.set_field('public.regress_contact', '1', 'survey', 'not interested');
SELECT crmguard.set_field('public.regress_contact', '1', 'consumption', '3100');
SELECT fields->'survey' AS survey, fields->'consumption' AS consumption FROM public.regress_contact WHERE id = 1;
SELECT public.regress_fld_try($$SELECT crmguard.set_field('public.regress_contact', '1', 'plan', 'Fibra')$$) AS another_project;
SELECT public.regress_fld_try($$SELECT crmguard.set_field('public.regress_contact', '1', 'fax', '1')$$) AS unknown_field;
SELECT public.regress_fld_try($$SELECT crmguard.set_field('public.regress_contact', '3', 'survey', 'x')$$) AS hidden_row;
SELECT crmguard.set_field('public.regress_contact', '1', 'survey', NULL);
SELECT fields ? 'survey' AS has_survey FROM public.regress_contact WHERE id = 1;
RESET ROLE;

-- ---------------------------------------------------------------------------
-- Unique values, masked or not, never naming the other row
-- ---------------------------------------------------------------------------
SET ROLE regress_fld_ela;
SELECT public.regress_fld_try($$INSERT INTO public.regress_contact VALUES (20, 'x', 'North', '{"phone": "+39 333 111 2222"}')$$) AS masked_duplicate_of_a_hidden_row;
SELECT public.regress_fld_try($$INSERT INTO public.regress_contact VALUES (20, 'x', 'North', '{"email": "gino@VERDI.Example"}')$$) AS duplicate_after_normalising;
SELECT public.regress_fld_try($$INSERT INTO public.regress_contact VALUES (20, 'x', 'North', '{"pod_code": "IT001E1"}')$$) AS duplicate;
-- within one statement
SELECT public.regress_fld_try($$INSERT INTO public.regress_contact VALUES (20, 'x', 'North', '{"pod_code": "IT009"}'),
                                                                          (21, 'y', 'North', '{"pod_code": "IT009"}')$$) AS same_statement;
INSERT INTO public.regress_contact VALUES (20, 'x', 'North', '{"phone": "+39 333 111 2222"}');
\set VERBOSITY default
-- a row keeps its own value
UPDATE public.regress_contact SET fields = fields || '{"consumption": 1}' WHERE id = 2;
RESET ROLE;

-- ---------------------------------------------------------------------------
-- find_by_field: the inbound call
-- ---------------------------------------------------------------------------
SET ROLE regress_fld_ela;
-- however the number is written, the caller is found, and shown masked
SELECT c.id, c.fields->>'phone' AS phone
  FROM crmguard.find_by_field('public.regress_contact', 'phone', '0039 347 555 9999') k
  JOIN public.regress_contact c ON c.id = k::int;
SELECT crmguard.find_by_field('public.regress_contact', 'pod_code', 'IT001E2') AS by_pod;
SELECT crmguard.find_by_field('public.regress_contact', 'email', 'Mario.Rossi@EXAMPLE.com') AS by_email;
-- a row the caller may not see is not found (Gino is in the South)
SELECT count(*) AS hidden_row_found FROM crmguard.find_by_field('public.regress_contact', 'phone', '+39 333 111 2222');
SELECT public.regress_fld_try($$SELECT crmguard.find_by_field('public.regress_contact', 'phone', 'not a phone')$$) AS bad_value;
SELECT public.regress_fld_try($$SELECT crmguard.find_by_field('public.regress_contact', 'fax', '1')$$) AS unknown_field;
RESET ROLE;
SET ROLE regress_fld_tom;
SELECT public.regress_fld_try($$SELECT crmguard.find_by_field('public.regress_contact', 'phone', '+39 347 555 9999')$$) AS another_project;
SELECT crmguard.find_by_field('public.regress_contact', 'msisdn', '+39 320 000 4444') AS by_msisdn;
RESET ROLE;
SET ROLE regress_fld_sue;
SELECT crmguard.find_by_field('public.regress_contact', 'phone', '+39 333 111 2222') AS supervisor_sees_south;
RESET ROLE;
-- every field has its lookup index (unique for unique fields), on the blind index when masked
SELECT indexdef FROM pg_indexes WHERE tablename = 'regress_contact' AND indexname LIKE '%cgfield%'
 AND (indexdef LIKE '%phone%' OR indexdef LIKE '%survey%') ORDER BY 1;

-- ---------------------------------------------------------------------------
-- field_values and unmask: clear values for view_masked, every read audited
-- ---------------------------------------------------------------------------
SET ROLE regress_fld_sue;
SELECT crmguard.field_values('public.regress_contact', '1') AS sue_sees;
SELECT crmguard.unmask('public.regress_contact', '1', 'phone', 'inbound call, identity verified') AS phone;
-- even a read rolled back is in the audit log
BEGIN;
SELECT crmguard.unmask('public.regress_contact', '2', 'phone', 'regress: rolled back') AS phone;
ROLLBACK;
SELECT public.regress_fld_try($$SELECT crmguard.unmask('public.regress_contact', '1', 'phone', NULL)$$) AS no_reason;
SELECT public.regress_fld_try($$SELECT crmguard.unmask('public.regress_contact', '1', 'phone', '  ')$$) AS blank_reason;
SELECT public.regress_fld_try($$SELECT crmguard.unmask('public.regress_contact', '1', 'msisdn', 'curious')$$) AS another_project;
SELECT public.regress_fld_try($$SELECT crmguard.unmask('public.regress_contact', '99', 'phone', 'no such row')$$) AS missing_row;
RESET ROLE;
SET ROLE regress_fld_ela;
SELECT crmguard.field_values('public.regress_contact', '1') AS ela_sees;
SELECT public.regress_fld_try($$SELECT crmguard.unmask('public.regress_contact', '1', 'phone', 'curious')$$) AS no_right;
RESET ROLE;
SET ROLE regress_fld_tom;
SELECT crmguard.field_values('public.regress_contact', '1') AS tom_sees;
RESET ROLE;
-- the clear reads and the refusals, written by the worker in their own transactions
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN (SELECT count(*) FROM crmguard.audit WHERE action LIKE 'field_unmask%' AND target = 'regress_contact') >= 7;
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;
SELECT a.action, p.name AS principal, a.target, a.row_key, a.detail->>'field' AS field, coalesce(a.detail->>'reason', a.detail->>'problem') AS reason
  FROM crmguard.audit a LEFT JOIN crmguard.principal p ON p.id = a.principal
 WHERE a.action LIKE 'field_unmask%' AND a.target = 'regress_contact' ORDER BY a.action, a.row_key, a.detail->>'reason' NULLS FIRST;

-- ---------------------------------------------------------------------------
-- Imports: map_fields, COPY into a staging table, INSERT ... SELECT
-- ---------------------------------------------------------------------------
SELECT crmguard.map_fields('{"email": "{{Email}}", "notes": "{{Nome}} {{Cognome}}", "survey": "Fiera 2026", "consumption": 5}',
                           '{"Nome": "Anna", "Cognome": "Gialli", "Email": "anna@gialli.example"}');
-- an empty or null source value leaves the field out
SELECT crmguard.map_fields('{"email": "{{Email}}", "phone": "{{Tel}}"}', '{"Email": "", "Tel": null}');
SELECT public.regress_fld_try($$SELECT crmguard.map_fields('{"notes": "{{nome}}"}', '{"Nome": "Anna"}')$$) AS unknown_placeholder;
SELECT public.regress_fld_try($$SELECT crmguard.map_fields('{"notes": {"x": 1}}', '{}')$$) AS not_a_mapping;
CREATE TABLE public.regress_staging ("Id" int, "Nome" text, "Telefono" text, "Email" text);
GRANT SELECT ON public.regress_staging TO regress_fld_users;
COPY public.regress_staging FROM STDIN WITH (FORMAT csv);
30,Anna Gialli,+39 348 100 2000,anna@gialli.example
31,Piero Viola,+39 348 100 3000,
32,Anna Gialli bis,+39 348 100 2000,
\.
SET ROLE regress_fld_ela;
-- the whole import is refused by the duplicate phone
SELECT public.regress_fld_try($$INSERT INTO public.regress_contact (id, name, fields)
    SELECT "Id", "Nome", crmguard.map_fields('{"phone": "{{Telefono}}", "email": "{{Email}}", "survey": "Fiera 2026"}', to_jsonb(s))
      FROM public.regress_staging s$$) AS import;
-- row by row, the duplicate is refused and the others load
DO $$
DECLARE s record;
BEGIN
    FOR s IN SELECT * FROM public.regress_staging ORDER BY 1 LOOP
        BEGIN
            INSERT INTO public.regress_contact (id, name, fields)
            VALUES (s."Id", s."Nome", crmguard.map_fields('{"phone": "{{Telefono}}", "email": "{{Email}}", "survey": "Fiera 2026"}', to_jsonb(s)));
        EXCEPTION WHEN unique_violation THEN
            RAISE NOTICE 'row % refused: %', s."Id", SQLERRM;
        END;
    END LOOP;
END
$$;
SELECT id, fields FROM public.regress_contact WHERE id >= 30 ORDER BY id;
RESET ROLE;
-- COPY FROM into the table is validated like any insert (here by a superuser:
-- COPY FROM is refused under row-level security)
COPY public.regress_contact (id, name, fields) FROM STDIN;
40	Copy Ok	{"phone": "0039 349 000 0040"}
\.
COPY public.regress_contact (id, name, fields) FROM STDIN;
41	Copy Bad	{"phone": "call me"}
\.
SELECT fields->'phone'->>'mask' AS copied FROM public.regress_contact WHERE id = 40;

-- ---------------------------------------------------------------------------
-- Rows of one project: a project column, required fields
-- ---------------------------------------------------------------------------
SET ROLE regress_fld_owner;
CREATE TABLE public.regress_lead (id serial PRIMARY KEY, project text, fields jsonb);
GRANT SELECT, INSERT, UPDATE ON public.regress_lead TO regress_fld_users;
GRANT USAGE ON SEQUENCE public.regress_lead_id_seq TO regress_fld_users;
SELECT crmguard.enable_fields('public.regress_lead', 'fields', 'project');
SELECT crmguard.define_field('public.regress_lead', 'pod_code', 'text', '{Energia}', required => true) > 0 AS pod;
SELECT crmguard.define_field('public.regress_lead', 'plan', 'text', '{Telefonia}') > 0 AS plan;
SELECT crmguard.define_field('public.regress_lead', 'notes', 'text') > 0 AS notes;
SELECT crmguard.define_field('public.regress_lead', 'mobile', 'phone', masked => true) > 0 AS mobile;
RESET ROLE;
SET ROLE regress_fld_ada;
INSERT INTO public.regress_lead (project, fields) VALUES ('Energia', '{"pod_code": "IT1", "notes": "ok"}');
SELECT public.regress_fld_try($$INSERT INTO public.regress_lead (project, fields) VALUES ('Energia', '{"notes": "no pod"}')$$) AS missing_required;
SELECT public.regress_fld_try($$INSERT INTO public.regress_lead (project, fields) VALUES ('Energia', '{"pod_code": "IT2", "plan": "x"}')$$) AS field_of_another_project;
SELECT public.regress_fld_try($$UPDATE public.regress_lead SET project = 'Telefonia'$$) AS project_change_keeps_fields_checked;
SELECT public.regress_fld_try($$UPDATE public.regress_lead SET fields = fields - 'pod_code'$$) AS required_removed;
SELECT project, fields FROM public.regress_lead;
RESET ROLE;
-- Telefonia cannot move an Energia row into its project with the fields it cannot see
SET ROLE regress_fld_tom;
SELECT public.regress_fld_try($$UPDATE public.regress_lead SET project = 'Telefonia'$$) AS hidden_fields_block_project_change;
RESET ROLE;
-- attack: make a constraint fail on a row that holds another project's fields, to
-- read them in the error's "Failing row contains" detail (the table has no row security)
ALTER TABLE public.regress_lead ADD COLUMN note text CHECK (note <> 'bad');
SET ROLE regress_fld_tom;
UPDATE public.regress_lead SET note = 'bad' WHERE project = 'Energia';
DO $$
DECLARE d text;
BEGIN
    UPDATE public.regress_lead SET note = 'bad' WHERE project = 'Energia';
EXCEPTION WHEN check_violation THEN
    GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
    RAISE NOTICE 'caught: %', d;
END
$$;
-- attack: COPY the table out (no row security here: COPY would read the heap directly)
COPY public.regress_lead TO STDOUT;
COPY public.regress_lead (id, fields) TO STDOUT;
RESET ROLE;
SET ROLE regress_fld_owner;
SELECT public.regress_fld_try($$SELECT crmguard.define_field('public.regress_lead', 'source', 'text', required => true)$$) AS required_on_rows_without_it;
RESET ROLE;

-- attack: the owner reads the fields through a parent table, or renames the column away
SET ROLE regress_fld_owner;
CREATE TABLE public.regress_lead_parent (id int, project text, fields jsonb);
SELECT public.regress_fld_try($$ALTER TABLE public.regress_lead INHERIT public.regress_lead_parent$$) AS inherit;
SELECT public.regress_fld_try($$ALTER TABLE public.regress_lead RENAME COLUMN fields TO extra$$) AS rename;
SELECT public.regress_fld_try($$ALTER TABLE public.regress_lead DROP COLUMN project$$) AS drop_project_column;
DROP TABLE public.regress_lead_parent;
RESET ROLE;

-- ---------------------------------------------------------------------------
-- Drafts and approvals write through the same guard
-- ---------------------------------------------------------------------------
GRANT EXECUTE ON FUNCTION crmguard.enable_review(regclass, text, name[], text[]),
      crmguard.disable_review(regclass) TO regress_fld_owner;
SET ROLE regress_fld_owner;
SELECT crmguard.enable_review('public.regress_lead', 'admin');
RESET ROLE;
SET ROLE regress_fld_tom;
SET client_min_messages = warning;  -- the NOTICE names the draft's id
SELECT public.regress_fld_try($$INSERT INTO public.regress_lead (project, fields) VALUES ('Telefonia', '{"plan": 12, "mobile": "+39 321 654 9870"}')$$) AS draft_ok;
SELECT public.regress_fld_try($$INSERT INTO public.regress_lead (project, fields) VALUES ('Telefonia', '{"pod_code": "IT3"}')$$) AS draft_refused;
RESET client_min_messages;
RESET ROLE;
-- the draft holds the normalised fields, the masked one sealed
SELECT d.row_data->'fields'->'plan' AS plan, d.row_data->'fields'->'mobile'->>'mask' AS mobile_mask,
       d.row_data::text LIKE '%6549870%' AS clear_in_draft
  FROM crmguard.draft_state d WHERE d.target = 'public.regress_lead'::regclass;
SET ROLE regress_fld_ada;
SELECT crmguard.approve_draft(id) IS NOT NULL AS approved FROM crmguard.draft WHERE target = 'public.regress_lead'::regclass;
SELECT project, fields FROM public.regress_lead ORDER BY id;
RESET ROLE;
SET ROLE regress_fld_sue;
SELECT crmguard.unmask('public.regress_lead', id::text, 'mobile', 'regress: approved draft') AS mobile
  FROM public.regress_lead WHERE project = 'Telefonia';
RESET ROLE;
SET ROLE regress_fld_owner;
SELECT crmguard.disable_review('public.regress_lead');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- drop_field takes its values with it
-- ---------------------------------------------------------------------------
SET ROLE regress_fld_owner;
SELECT crmguard.drop_field('public.regress_contact', 'survey');
SELECT public.regress_fld_try($$SELECT crmguard.drop_field('public.regress_contact', 'survey')$$) AS dropped_twice;
RESET ROLE;
SELECT count(*) AS rows_with_survey FROM public.regress_contact WHERE fields ? 'survey';
SELECT count(*) AS survey_index FROM pg_indexes WHERE tablename = 'regress_contact' AND indexdef LIKE '%survey%';

-- the owner cannot switch the guard off
SET ROLE regress_fld_owner;
SELECT public.regress_fld_try($$ALTER TABLE public.regress_contact DISABLE TRIGGER "!crmguard_fields"$$) LIKE '42501%' AS disable_refused;
RESET ROLE;

-- every definition is in the audit log
SELECT action, count(*) FROM crmguard.audit
 WHERE action IN ('enable_fields', 'define_field', 'drop_field') GROUP BY 1 ORDER BY 1;
SELECT ok FROM crmguard.verify_audit();

-- ---------------------------------------------------------------------------
-- A table whose fields cannot be served is named schema-qualified; an OID
-- that outlived its table (in a plan, a cache entry, a rule row) is named as
-- an OID, never as "(null)"
-- ---------------------------------------------------------------------------
SET ROLE regress_fld_owner;
CREATE TABLE public.regress_gone (id int PRIMARY KEY, fields jsonb NOT NULL DEFAULT '{}');
GRANT SELECT ON public.regress_gone TO regress_fld_users;
SELECT crmguard.enable_fields('public.regress_gone', 'fields');
INSERT INTO public.regress_gone VALUES (1, '{}');
RESET ROLE;
-- a superuser may drop the key that names the rows (recorded, not refused): the fields fail closed
ALTER TABLE public.regress_gone DROP CONSTRAINT regress_gone_pkey;
SET ROLE regress_fld_tom;
SELECT public.regress_fld_try($$SELECT fields FROM public.regress_gone$$) AS planned_read;
SELECT public.regress_fld_try($$SELECT crmguard.field_values('public.regress_gone', '1')$$) AS field_values;
RESET ROLE;
SELECT 'public.regress_gone'::regclass::oid AS regress_gone_oid \gset
DROP TABLE public.regress_gone;
-- the projection functions get the OID their plan was made with, and any reader may call them
SET ROLE regress_fld_tom;
SELECT replace(public.regress_fld_try(format(q, :regress_gone_oid)), 'OID ' || :regress_gone_oid, 'OID <oid>') AS gone_table
  FROM (VALUES ($$SELECT crmguard.fields_projection('{}', %s)$$),
               ($$SELECT crmguard.fields_get_text('{"a": 1}', %s, 'a')$$),
               ($$SELECT crmguard.fields_row(ROW(1), %s)$$),
               ($$SELECT crmguard.field_values(%s, '1')$$),
               ($$SELECT crmguard.set_field(%s, '1', 'a', 'b')$$)) AS v(q);
RESET ROLE;
-- a rule row that outlived its table: its cache entry is broken, and named by the OID
INSERT INTO crmguard.field_table VALUES (:regress_gone_oid, 'fields', NULL, '\x00000000000000000000000000000000');
SELECT replace(public.regress_fld_try(format($$SELECT crmguard.field_values(%s, '1')$$, :regress_gone_oid)),
               'OID ' || :regress_gone_oid, 'OID <oid>') AS stale_rule;
DELETE FROM crmguard.field_table WHERE target::oid = :regress_gone_oid;

DROP TABLE public.regress_contact, public.regress_lead, public.regress_nokey, public.regress_notjson,
           public.regress_staging CASCADE;
SELECT count(*) AS field_tables_left FROM crmguard.field_table;
DELETE FROM crmguard.draft_state;
DELETE FROM crmguard.principal WHERE name LIKE 'fld\_%';
DROP FUNCTION public.regress_fld_try(text);
DROP OWNED BY regress_fld_owner, regress_fld_users;
DROP ROLE regress_fld_ela, regress_fld_eros, regress_fld_tom, regress_fld_sue, regress_fld_ada,
          regress_fld_nobody, regress_fld_users, regress_fld_owner;
