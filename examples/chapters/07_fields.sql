-- Chapter 7: contact fields of two projects on one contacts table
\set ON_ERROR_STOP 0
\set SHOW_CONTEXT never
\set VERBOSITY default
\echo '== Chapter 7: contact fields (project-scoped, unique, masked)'
\echo
\echo 'The contact centre runs two client projects on the same contacts: Energia'
\echo '(an electricity supplier) and Telefonia (a phone company). Each project has'
\echo 'its own fields, kept in one jsonb column. Energia''s phone is unique and'
\echo 'masked; its meter code (POD) is unique too, but in clear. The DBA defines them'
\echo '(define_field returns each field''s id):'
ALTER TABLE crm.contact ADD COLUMN fields jsonb NOT NULL DEFAULT '{}';
SELECT '   ok: crm.contact keeps contact fields in its column "fields"'
  FROM crmguard.enable_fields('crm.contact', 'fields')
\g (tuples_only=on format=unaligned)
SELECT crmguard.define_field('crm.contact', 'phone', 'phone', '{Energia}', unique_values => true, masked => true) AS phone,
       crmguard.define_field('crm.contact', 'pod', 'text', '{Energia}', unique_values => true) AS pod,
       crmguard.define_field('crm.contact', 'survey', 'text', '{Energia}') AS survey,
       crmguard.define_field('crm.contact', 'msisdn', 'phone', '{Telefonia}', masked => true, mask => 'full') AS msisdn,
       crmguard.define_field('crm.contact', 'plan', 'text', '{Telefonia}') AS plan,
       crmguard.define_field('crm.contact', 'preferred_time', 'text', '{Energia,Telefonia}') AS preferred_time;

\echo
\echo 'Agents are principals with a "projects" attribute; Sofia supervises Energia'
\echo 'and holds the right to see masked values (CRM role view_masked). Their'
\echo 'principal ids:'
CREATE ROLE crm_elena IN ROLE crm_users;
CREATE ROLE crm_tiziano IN ROLE crm_users;
CREATE ROLE crm_sofia IN ROLE crm_users;
SELECT crmguard.add_principal('elena', '{agent}', 'dora', '{"projects": ["Energia"]}', 'crm_elena') AS elena,
       crmguard.add_principal('tiziano', '{agent}', 'dora', '{"projects": ["Telefonia"]}', 'crm_tiziano') AS tiziano,
       crmguard.add_principal('sofia', '{supervisor,view_masked}', 'dora', '{"projects": ["Energia"]}', 'crm_sofia') AS sofia;

\echo
\echo 'Elena fills Energia''s fields for two contacts, as typed on the phone; the'
\echo 'numbers are normalised (+ and digits) on their way in:'
SET ROLE crm_elena;
UPDATE crm.contact SET fields = '{"phone": "+39 347 555 0123", "pod": "IT001E00012345", "preferred_time": "mornings"}'
 WHERE full_name = (SELECT min(full_name) FROM crm.contact);
UPDATE crm.contact SET fields = '{"phone": "0039 (02) 555-0188", "pod": "IT001E00067890"}'
 WHERE full_name = (SELECT max(full_name) FROM crm.contact);
\echo 'What she saved; masked fields are masked even to her (she lacks view_masked;'
\echo 'Sofia''s unmask below shows the stored, normalised number):'
SELECT full_name, fields FROM crm.contact WHERE fields <> '{}' ORDER BY full_name;
\echo 'A number without a country code, and a field of the other project, are refused (CG040):'
UPDATE crm.contact SET fields = fields || '{"phone": "347 555 0199"}' WHERE full_name = (SELECT max(full_name) FROM crm.contact);
UPDATE crm.contact SET fields = fields || '{"plan": "Fibra 1000"}' WHERE full_name = (SELECT max(full_name) FROM crm.contact);
RESET ROLE;
SET ROLE crm_tiziano;
\echo 'Tiziano (Telefonia) adds his project''s fields to the first of them, Alberto Ferrero:'
UPDATE crm.contact SET fields = fields || '{"msisdn": "+39 320 555 7777", "plan": "Fibra 1000", "preferred_time": "after 6pm"}'
 WHERE full_name = (SELECT min(full_name) FROM crm.contact);
RESET ROLE;

\echo
\echo 'What each of them sees of that contact, with a plain SELECT:'
SET ROLE crm_elena;
SELECT 'elena (Energia)' AS who, fields FROM crm.contact WHERE fields <> '{}' ORDER BY full_name LIMIT 1;
RESET ROLE;
SET ROLE crm_tiziano;
SELECT 'tiziano (Telefonia)' AS who, fields FROM crm.contact WHERE fields <> '{}' ORDER BY full_name LIMIT 1;
\echo 'Tiziano tries other shapes of query: none shows him Energia''s fields.'
SELECT count(*) AS rows_with_energia_pod FROM crm.contact WHERE fields ? 'pod';
SELECT jsonb_path_query_array(fields, '$.*') AS every_value, coalesce(fields->>'phone', 'NULL') AS phone
  FROM crm.contact c WHERE full_name = (SELECT min(full_name) FROM crm.contact);
\echo 'COPY ... TO STDOUT (name, fields):'
COPY (SELECT full_name, fields FROM crm.contact WHERE fields <> '{}') TO STDOUT;
\echo 'He writes back what he saw, plus a note: Energia''s fields survive untouched.'
UPDATE crm.contact SET fields = fields || '{"preferred_time": "evenings"}'
 WHERE full_name = (SELECT min(full_name) FROM crm.contact);
RESET ROLE;
\echo 'What the table owner, a superuser, or pg_dump reads: a blind index, the'
\echo 'ciphertext and the mask, never the number.'
SELECT jsonb_pretty(fields->'phone') AS stored_phone FROM crm.contact WHERE full_name = (SELECT min(full_name) FROM crm.contact);

\echo
\echo 'An inbound call from 0039 347 5550123: Elena finds the caller by number'
\echo '(an index lookup on the blind index), sees it masked, and records the'
\echo 'survey answer with set_field:'
SET ROLE crm_elena;
SELECT c.id, c.full_name, c.fields->>'phone' AS phone, c.fields->>'pod' AS pod
  FROM crmguard.find_by_field('crm.contact', 'phone', '0039 347 5550123') k
  JOIN crm.contact c ON c.id = k::bigint;
SELECT '   ok: survey recorded on contact ' || k
  FROM crmguard.find_by_field('crm.contact', 'phone', '0039 347 5550123') k,
       crmguard.set_field('crm.contact', k, 'survey', 'interested in the green tariff')
\g (tuples_only=on format=unaligned)
SELECT full_name, fields FROM crm.contact WHERE fields ? 'survey';
\echo 'She may not unmask the number: that needs view_masked (42501).'
SELECT crmguard.unmask('crm.contact', (SELECT id::text FROM crm.contact WHERE fields ? 'survey'), 'phone', 'curious');
RESET ROLE;

\echo
\echo 'Sofia (view_masked) calls the customer back: she unmasks the number, and'
\echo 'must say why; without a reason the read is refused (22023).'
SET ROLE crm_sofia;
SELECT crmguard.unmask('crm.contact', (SELECT id::text FROM crm.contact WHERE fields ? 'survey'), 'phone', NULL);
SELECT crmguard.unmask('crm.contact', (SELECT id::text FROM crm.contact WHERE fields ? 'survey'), 'phone',
                       'call-back requested in the survey') AS phone;
RESET ROLE;
\echo 'Every clear read is in the audit log (written even if her transaction rolls back):'
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN EXISTS (SELECT 1 FROM crmguard.audit WHERE action = 'field_unmasked');
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;
SELECT a.action, p.name AS principal, a.target, a.row_key, a.detail->>'field' AS field,
       coalesce(a.detail->>'reason', a.detail->>'problem') AS reason
  FROM crmguard.audit a LEFT JOIN crmguard.principal p ON p.id = a.principal
 WHERE a.action LIKE 'field_unmask%' ORDER BY a.id;

\echo
\echo 'An import file for Energia arrives with Italian headers. It is loaded as is'
\echo 'into a staging table, and mapped with {{Nome}}-style placeholders'
\echo '(case-sensitive; an unknown one is an error naming it):'
CREATE TABLE crm.import_energia ("Nome" text, "Telefono" text, "POD" text, "Fascia" text);
GRANT SELECT ON crm.import_energia TO crm_users;
COPY crm.import_energia FROM STDIN WITH (FORMAT csv, HEADER true);
Nome,Telefono,POD,Fascia
Giada Fontana,+39 348 100 2000,IT001E00100001,mattina
Marco Serra,+39 348 100 3000,IT001E00100002,
Giada Fontana (bis),0039 348 1002000,IT001E00100003,sera
\.
SELECT crmguard.map_fields('{"phone": "{{Telefono}}", "pod": "{{POD}}", "preferred_time": "{{Fascia}}", "survey": "import Fiera 2026"}',
                           to_jsonb(i)) AS mapped
  FROM crm.import_energia i LIMIT 1;
SELECT crmguard.map_fields('{"phone": "{{telefono}}"}', to_jsonb(i)) FROM crm.import_energia i LIMIT 1;
\echo 'Sofia loads it row by row for the first customer: the third row repeats'
\echo 'Giada''s phone (written differently) and is refused by the unique field; the'
\echo 'others load.'
SELECT set_config('demo.customer', (SELECT min(id)::text FROM crm.customer), false) AS customer \gset
SET ROLE crm_sofia;
DO $$
DECLARE
    r record;
    loaded int := 0;
BEGIN
    FOR r IN SELECT * FROM crm.import_energia LOOP
        BEGIN
            INSERT INTO crm.contact (customer_id, full_name, fields)
            VALUES (current_setting('demo.customer')::bigint, r."Nome",
                    crmguard.map_fields('{"phone": "{{Telefono}}", "pod": "{{POD}}", "preferred_time": "{{Fascia}}",
                                          "survey": "import Fiera 2026"}', to_jsonb(r)));
            loaded := loaded + 1;
        EXCEPTION WHEN unique_violation THEN
            RAISE NOTICE 'row "%" refused: %', r."Nome", SQLERRM;
        END;
    END LOOP;
    RAISE NOTICE '% of 3 rows loaded', loaded;
END
$$;
SELECT full_name, fields FROM crm.contact WHERE fields->>'survey' = 'import Fiera 2026' ORDER BY full_name;
RESET ROLE;
