-- Draft review: normalisation of duplicate keys, refusals and their SQLSTATEs
BEGIN;
SELECT plan(14);

-- duplicate keys: case, spaces, phone punctuation, e-mail case
SELECT is(crmguard.normalize_match('  NOVAK   Logistics '), 'novak logistics', 'case and spaces are normalised');
SELECT is(crmguard.normalize_match('+39 (02) 555-0140'), '+39025550140', 'phone punctuation is dropped, the leading + kept');
SELECT is(crmguard.normalize_match('02.555.0140'), crmguard.normalize_match('02 555 0140'), 'dots and spaces in a phone are the same');
SELECT is(crmguard.normalize_match(' Pietro@Rossi.Example '), 'pietro@rossi.example', 'an e-mail is lower-cased');
SELECT isnt(crmguard.normalize_match('A-12'), crmguard.normalize_match('A 12'), 'a short code is not mistaken for a phone number');

CREATE ROLE tap_rev_owner;
CREATE ROLE tap_rev_form;
CREATE ROLE tap_rev_rita;
SELECT crmguard.add_principal('tap_rev_form', '{webform}', db_role => 'tap_rev_form') > 0 AS form;
SELECT crmguard.add_principal('tap_rev_rita', '{reviewer}', db_role => 'tap_rev_rita') > 0 AS rita;
CREATE TABLE public.tap_lead (id serial PRIMARY KEY, company text NOT NULL, email text);
ALTER TABLE public.tap_lead OWNER TO tap_rev_owner;
GRANT SELECT, INSERT ON public.tap_lead TO tap_rev_form, tap_rev_rita;
GRANT USAGE ON SEQUENCE public.tap_lead_id_seq TO tap_rev_form, tap_rev_rita;

SELECT throws_ok($$SELECT crmguard.enable_review('public.tap_lead', 'reviewer', '{mail}')$$, 'CG020', NULL,
                 'an unknown match column fails with CG020');
SELECT throws_ok($$SELECT crmguard.enable_review('public.tap_lead', 'auditor')$$, 'CG020', NULL,
                 'a reviewer role no principal holds fails with CG020');
SELECT is((SELECT count(*) FROM crmguard.review_config)::int, 0, 'nothing is stored by a refused enable_review');
SELECT lives_ok($$SELECT crmguard.enable_review('public.tap_lead', 'reviewer', '{email}')$$, 'the owner enables review');

SET LOCAL ROLE tap_rev_form;
INSERT INTO public.tap_lead (company, email) VALUES ('Novak', 'a@novak.example'), ('Novak srl', ' A@Novak.example');
SELECT is((SELECT count(*) FROM public.tap_lead)::int, 0, 'a multi-row insert leaves the table empty');
SELECT throws_ok(format('SELECT crmguard.approve_draft(%s)', (SELECT min(id) FROM crmguard.draft)), '42501', NULL,
                 'the submitter cannot approve its own draft');
RESET ROLE;

SET LOCAL ROLE tap_rev_rita;
SELECT is((SELECT array_agg(jsonb_array_length(duplicates->'drafts')) FROM crmguard.draft), ARRAY[1, 1],
          'both drafts of one statement flag each other');
SELECT throws_ok(format($$SELECT crmguard.approve_draft(%s, NULL, '{"mail": "x"}')$$, (SELECT min(id) FROM crmguard.draft)),
                 '42703', NULL, 'changes naming an unknown column fail with 42703');
SELECT isnt(crmguard.approve_draft((SELECT min(id) FROM crmguard.draft)), NULL, 'the reviewer approves');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
