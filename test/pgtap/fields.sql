-- Contact fields: privileges, the guard, the projection, refusals and their SQLSTATEs
BEGIN;
SELECT plan(23);

-- defining fields is granted deliberately; reading and writing them checks the caller
SELECT function_privs_are('crmguard', 'enable_fields', ARRAY['regclass', 'name', 'name'], 'public', ARRAY[]::text[],
    'enable_fields is not executable by PUBLIC');
SELECT function_privs_are('crmguard', 'define_field',
    ARRAY['regclass', 'text', 'text', 'text[]', 'boolean', 'boolean', 'text', 'boolean'], 'public', ARRAY[]::text[],
    'define_field is not executable by PUBLIC');
SELECT function_privs_are('crmguard', 'fields_projection', ARRAY['jsonb', 'oid'], 'public', ARRAY['EXECUTE'],
    'the projection every rewritten read calls is executable by PUBLIC');
SELECT is((SELECT provolatile::text || proparallel::text FROM pg_proc WHERE oid = 'crmguard.fields_projection(jsonb, oid)'::regprocedure),
          'sr', 'the projection is STABLE and parallel restricted (the assumed principal is per backend)');
SELECT is((SELECT provolatile::text FROM pg_proc WHERE oid = 'crmguard.map_fields(jsonb, jsonb)'::regprocedure),
          'i', 'map_fields is IMMUTABLE');

CREATE ROLE tap_fld_owner;
CREATE ROLE tap_fld_ela;
CREATE ROLE tap_fld_tom;
SELECT crmguard.add_principal('tap_fld_ela', '{agent}', NULL, '{"projects": ["Energia"]}', 'tap_fld_ela') > 0 AS ela;
SELECT crmguard.add_principal('tap_fld_tom', '{agent}', NULL, '{"projects": ["Telefonia"]}', 'tap_fld_tom') > 0 AS tom;
CREATE TABLE public.tap_contact (id int PRIMARY KEY, fields jsonb);
ALTER TABLE public.tap_contact OWNER TO tap_fld_owner;
GRANT SELECT, INSERT, UPDATE ON public.tap_contact TO tap_fld_ela, tap_fld_tom;

SELECT throws_ok($$SELECT crmguard.define_field('public.tap_contact', 'phone', 'phone')$$, 'CG020', NULL,
                 'a field of a table without contact fields fails with CG020');
SELECT lives_ok($$SELECT crmguard.enable_fields('public.tap_contact', 'fields')$$, 'fields are enabled');
SELECT throws_ok($$SELECT crmguard.define_field('public.tap_contact', 'phone', 'telephone')$$, 'CG020', NULL,
                 'an unknown field type fails with CG020');
SELECT lives_ok($$SELECT crmguard.define_field('public.tap_contact', 'phone', 'phone', '{Energia}', true, true)$$,
                'a unique masked phone of Energia is defined');
SELECT lives_ok($$SELECT crmguard.define_field('public.tap_contact', 'plan', 'text', '{Telefonia}')$$,
                'a Telefonia field is defined');

-- the guard is crmguard's, found by its function
SELECT is((SELECT count(*)::int FROM pg_trigger
            WHERE tgrelid = 'public.tap_contact'::regclass AND tgfoid = 'crmguard.fields_guard()'::regprocedure),
          1, 'the table has the fields guard');
SELECT is((SELECT attstattarget FROM pg_attribute WHERE attrelid = 'public.tap_contact'::regclass AND attname = 'fields'),
          0, 'ANALYZE keeps no sample of the fields column');

SET LOCAL ROLE tap_fld_ela;
SELECT lives_ok($$INSERT INTO public.tap_contact VALUES (1, '{"phone": "+39 347 555 0123"}')$$, 'Energia writes its phone');
SELECT throws_ok($$INSERT INTO public.tap_contact VALUES (2, '{"phone": "+39 347 555 0123"}')$$, '23505',
                 'duplicate value for field "phone"', 'a duplicate masked phone fails with 23505 naming the field');
SELECT throws_ok($$INSERT INTO public.tap_contact VALUES (2, '{"plan": "x"}')$$, 'CG040', NULL,
                 'a field of another project fails with CG040');
SELECT throws_ok($$INSERT INTO public.tap_contact VALUES (2, '{"phone": "12"}')$$, 'CG040', NULL,
                 'a malformed phone fails with CG040');
SELECT is((SELECT fields->>'phone' FROM public.tap_contact), '+39 *** *** 123', 'Energia sees its phone masked');
SELECT results_eq($$SELECT crmguard.find_by_field('public.tap_contact', 'phone', '0039 347 5550123')$$,
                  ARRAY['1'], 'find_by_field finds the row by the normalised number');
SELECT throws_ok($$SELECT crmguard.unmask('public.tap_contact', '1', 'phone', 'because')$$, '42501', NULL,
                 'unmask without view_masked fails with 42501');
RESET ROLE;

SET LOCAL ROLE tap_fld_tom;
SELECT is((SELECT fields FROM public.tap_contact), '{}'::jsonb, 'Telefonia sees none of Energia''s fields');
SELECT throws_ok($$SELECT crmguard.find_by_field('public.tap_contact', 'phone', '+39 347 555 0123')$$, 'CG040', NULL,
                 'find_by_field on a field of another project fails with CG040');
RESET ROLE;

SELECT throws_ok($$SELECT crmguard.fields_row(ROW(1, 2, 3), 'public.tap_contact'::regclass)$$, '42804', NULL,
                 'the whole-row projection refuses a row of another type');
SELECT throws_ok($$SELECT crmguard.map_fields('{"notes": "{{Nome}}"}', '{"nome": "x"}')$$, 'CG040',
                 'unknown placeholder "{{Nome}}"', 'an unknown placeholder fails with CG040 naming it');

SELECT * FROM finish();
ROLLBACK;
