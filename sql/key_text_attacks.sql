--
-- Key text attacks: crmguard names a row by its key printed as text (OTP
-- challenges, recipient changes, sealed contact fields, drafts, the audit
-- log). A date, timestamp, interval or float prints as the session's
-- DateStyle, TimeZone or extra_float_digits say: each section is a way a
-- rep turned that into another row's code, a missed cooldown, or a value
-- nobody else can read.
--
\set VERBOSITY default
CREATE FUNCTION public.regress_kta_try(query text) RETURNS text
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE query;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
GRANT EXECUTE ON FUNCTION public.regress_kta_try(text) TO PUBLIC;
-- the newest code sent to a recipient
CREATE FUNCTION public.regress_kta_code(recipient text) RETURNS text
    LANGUAGE sql AS $$
    SELECT substring(o.body FROM 'code is ([A-Z0-9]+)') FROM crmguard.outbox o
     WHERE o.recipient = regress_kta_code.recipient ORDER BY o.id DESC LIMIT 1
$$;
CREATE ROLE regress_kta_rep;
CREATE ROLE regress_kta_boss;
SELECT crmguard.add_principal('kta_rep', '{agent}', NULL, '{"projects": ["Energia"]}', 'regress_kta_rep') > 0 AS rep;
SELECT crmguard.add_principal('kta_boss', '{supervisor,view_masked}', NULL, '{"projects": ["Energia"]}',
                              'regress_kta_boss') > 0 AS boss;

-- ===========================================================================
-- Attack: a code for one row opens another. '03/04/2031' is 3 April under
-- DateStyle 'SQL, DMY' and 4 March under 'SQL, MDY': the rep asks for a
-- code for 4 March (a delivery whose customer gives it), then changes
-- DateStyle and sets 3 April delivered with it.
-- ===========================================================================
CREATE TABLE public.regress_kta_delivery (id date PRIMARY KEY, phone text, status text NOT NULL);
INSERT INTO public.regress_kta_delivery VALUES
    ('2031-03-04', '+39 347 555 0304', 'Out for delivery'),
    ('2031-04-03', '+39 347 555 0403', 'Out for delivery'),
    ('2031-05-06', '+39 347 555 0506', 'Out for delivery');
GRANT SELECT, UPDATE ON public.regress_kta_delivery TO regress_kta_rep;
SELECT crmguard.create_otp_rule('kta OTP', 'public.regress_kta_delivery', 'status', '{Delivered}', 'phone',
                                delivery => 'manual') > 0 AS created;
SET ROLE regress_kta_rep;
SET DateStyle = 'SQL, MDY';
SELECT crmguard.request_otp('public.regress_kta_delivery', '03/04/2031', 'Delivered') AS march_challenge \gset
RESET ROLE;
SELECT row_key FROM crmguard.otp_challenge WHERE id = :march_challenge;
SELECT public.regress_kta_code('+39 347 555 0304') AS march_code \gset
SET ROLE regress_kta_rep;
BEGIN;
SELECT crmguard.verify_otp(:march_challenge, :'march_code') AS verified;
-- the challenge is found whatever the DateStyle it is asked under
SELECT crmguard.pending_challenge('public.regress_kta_delivery', '2031-03-04', 'Delivered') = :march_challenge
       AS found_under_mdy;
SET LOCAL DateStyle = 'SQL, DMY';
SELECT crmguard.pending_challenge('public.regress_kta_delivery', '04/03/2031', 'Delivered') = :march_challenge
       AS found_under_dmy;
SELECT public.regress_kta_try($$UPDATE public.regress_kta_delivery SET status = 'Delivered' WHERE id = '03/04/2031'$$)
       AS april_with_march_code;
-- the code still opens its own row, under whatever DateStyle the client has
SELECT public.regress_kta_try($$UPDATE public.regress_kta_delivery SET status = 'Delivered' WHERE id = '04/03/2031'$$)
       AS march_with_march_code;
COMMIT;
RESET DateStyle;
RESET ROLE;
SELECT id, status FROM public.regress_kta_delivery ORDER BY id;

-- ===========================================================================
-- Attack: the recipient cooldown is missed. The rep puts his own phone on a
-- row, then asks for its code naming the row as another DateStyle prints it.
-- ===========================================================================
SET ROLE regress_kta_rep;
UPDATE public.regress_kta_delivery SET phone = '+39 333 000 7777' WHERE id = '2031-05-06';
SET DateStyle = 'German';
SELECT public.regress_kta_try($$SELECT crmguard.request_otp('public.regress_kta_delivery', '06.05.2031', 'Delivered')$$)
       AS request_under_german_datestyle;
SET TimeZone = 'Asia/Tokyo';
SET DateStyle = 'Postgres, DMY';
SELECT public.regress_kta_try($$SELECT crmguard.request_otp('public.regress_kta_delivery', '6-5-2031', 'Delivered')$$)
       AS request_under_postgres_datestyle;
RESET DateStyle;
RESET TimeZone;
RESET ROLE;
SELECT count(*) AS codes_to_the_rep FROM crmguard.outbox WHERE recipient = '+39 333 000 7777';

-- ===========================================================================
-- Attack: one row, many spellings. '8' and '08' name the same row: a second
-- spelling was a new challenge (past challenges_per_row), and a code asked
-- for as '08' never matched the change of row 8.
-- ===========================================================================
CREATE TABLE public.regress_kta_parcel (id int PRIMARY KEY, phone text, status text NOT NULL);
INSERT INTO public.regress_kta_parcel VALUES (8, '+39 347 555 0008', 'Out for delivery');
GRANT SELECT, UPDATE ON public.regress_kta_parcel TO regress_kta_rep;
SELECT crmguard.create_otp_rule('kta parcel OTP', 'public.regress_kta_parcel', 'status', '{Delivered}', 'phone',
                                delivery => 'manual') > 0 AS created;
SET ROLE regress_kta_rep;
SELECT crmguard.request_otp('public.regress_kta_parcel', '08', 'Delivered') AS parcel_challenge \gset
SELECT crmguard.request_otp('public.regress_kta_parcel', ' 8', 'Delivered') = :parcel_challenge AS same_challenge;
RESET ROLE;
SELECT row_key, resends FROM crmguard.otp_challenge WHERE id = :parcel_challenge;
SELECT public.regress_kta_code('+39 347 555 0008') AS parcel_code \gset
SET ROLE regress_kta_rep;
BEGIN;
SELECT crmguard.verify_otp(:parcel_challenge, :'parcel_code') AS verified;
SELECT public.regress_kta_try($$UPDATE public.regress_kta_parcel SET status = 'Delivered' WHERE id = 8$$)
       AS change_of_row_8;
COMMIT;
RESET ROLE;
SELECT crmguard.drop_otp_rule('kta OTP'), crmguard.drop_otp_rule('kta parcel OTP');
DROP TABLE public.regress_kta_delivery, public.regress_kta_parcel;

-- ===========================================================================
-- Attack: a masked value nobody else can read. A sealed value is bound to
-- its row's key as text: written under DateStyle German, it did not open
-- for a supervisor under ISO, nor in a dump restored under ISO.
-- ===========================================================================
CREATE TABLE public.regress_kta_contact (id date PRIMARY KEY, fields jsonb NOT NULL DEFAULT '{}');
CREATE TABLE public.regress_kta_call (id timestamptz PRIMARY KEY, fields jsonb NOT NULL DEFAULT '{}');
SELECT crmguard.enable_fields(t, 'fields') FROM unnest('{public.regress_kta_contact,public.regress_kta_call}'::regclass[]) t;
SELECT crmguard.define_field(t, 'mobile', 'phone', masked => true, unique_values => true) > 0 AS defined
  FROM unnest('{public.regress_kta_contact,public.regress_kta_call}'::regclass[]) t;
GRANT SELECT, INSERT, UPDATE ON public.regress_kta_contact, public.regress_kta_call
   TO regress_kta_rep, regress_kta_boss;
SET ROLE regress_kta_rep;
SET DateStyle = 'German';
INSERT INTO public.regress_kta_contact VALUES ('04.03.2031', '{"mobile": "+39 347 555 1111"}');
SELECT crmguard.set_field('public.regress_kta_contact', '04.03.2031', 'mobile', '+39 347 555 2222');
RESET DateStyle;
SET TimeZone = 'Asia/Tokyo';
INSERT INTO public.regress_kta_call VALUES ('2031-03-04 19:00:00+09', '{"mobile": "+39 347 555 3333"}');
RESET TimeZone;
-- the same number on another row is a duplicate, however the key prints
SELECT public.regress_kta_try($$INSERT INTO public.regress_kta_contact VALUES ('2031-05-06', '{"mobile": "+39 347 555 2222"}')$$)
       AS duplicate_under_iso;
RESET ROLE;
SET ROLE regress_kta_boss;
SELECT crmguard.field_values('public.regress_kta_contact', '2031-03-04') AS contact_under_iso;
SELECT crmguard.unmask('public.regress_kta_call', '2031-03-04 10:00:00+00', 'mobile', 'callback') AS call_in_utc;
SET DateStyle = 'SQL, DMY';
SELECT crmguard.field_values('public.regress_kta_contact', '04/03/2031') AS contact_under_sql_dmy;
RESET DateStyle;
-- keys handed out, and those in the audit log, read the same in every session
SET TimeZone = 'Asia/Tokyo';
SELECT crmguard.find_by_field('public.regress_kta_call', 'mobile', '+39 347 555 3333') AS found_in_tokyo;
RESET TimeZone;
RESET ROLE;
-- (unmasking is audited through the worker: wait for the three records)
DO $$
BEGIN
    FOR i IN 1..400 LOOP
        EXIT WHEN (SELECT count(*) FROM crmguard.audit
                    WHERE action = 'field_unmasked' AND target LIKE 'regress_kta%') >= 3;
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;
SELECT target, row_key FROM crmguard.audit
 WHERE action = 'field_unmasked' AND target LIKE 'regress_kta%' ORDER BY target, row_key;
-- a dump restored under ISO: the sealed values open for the rows they belong to
CREATE TEMPORARY TABLE regress_kta_saved AS
    SELECT 'contact' AS t, id::text AS id, fields FROM public.regress_kta_contact
    UNION ALL SELECT 'call', id::text, fields FROM public.regress_kta_call;
DELETE FROM public.regress_kta_contact;
DELETE FROM public.regress_kta_call;
SELECT public.regress_kta_try($$INSERT INTO public.regress_kta_contact SELECT id::date, fields FROM regress_kta_saved WHERE t = 'contact'$$)
       AS restore_contact;
SELECT public.regress_kta_try($$INSERT INTO public.regress_kta_call SELECT id::timestamptz, fields FROM regress_kta_saved WHERE t = 'call'$$)
       AS restore_call;
SET ROLE regress_kta_boss;
SET DateStyle = 'German';
SELECT crmguard.unmask('public.regress_kta_contact', '04.03.2031', 'mobile', 'callback') AS restored_contact;
RESET DateStyle;
RESET ROLE;
-- a sealed value cannot be moved to the row another DateStyle names alike
CREATE TABLE public.regress_kta_moved (id date PRIMARY KEY, fields jsonb NOT NULL DEFAULT '{}');
SELECT crmguard.enable_fields('public.regress_kta_moved', 'fields');
SELECT crmguard.define_field('public.regress_kta_moved', 'mobile', 'phone', masked => true) > 0 AS defined;
SET DateStyle = 'SQL, MDY';
INSERT INTO public.regress_kta_moved VALUES ('03/04/2031', '{"mobile": "+39 347 555 4444"}');
SET DateStyle = 'SQL, DMY';
SELECT public.regress_kta_try($$INSERT INTO public.regress_kta_moved SELECT '03/04/2031', fields FROM public.regress_kta_moved$$)
       AS moved_to_april;
RESET DateStyle;
SELECT id FROM public.regress_kta_moved ORDER BY id;
DROP TABLE public.regress_kta_contact, public.regress_kta_call, public.regress_kta_moved;

-- ===========================================================================
-- Attack: an approved draft named by the reviewer's DateStyle. The key that
-- approve_draft returns and the draft keeps was '03/04/2031' under 'SQL,
-- DMY', which another session reads as 4 March, another row.
-- ===========================================================================
CREATE TABLE public.regress_kta_visit (id date PRIMARY KEY, note text);
INSERT INTO public.regress_kta_visit VALUES ('2031-03-04', 'already there');
GRANT SELECT, INSERT ON public.regress_kta_visit TO regress_kta_rep, regress_kta_boss;
SELECT crmguard.enable_review('public.regress_kta_visit', 'supervisor');
SET ROLE regress_kta_rep;
SET client_min_messages = warning;
INSERT INTO public.regress_kta_visit VALUES ('2031-04-03', 'first visit');
RESET client_min_messages;
RESET ROLE;
SELECT id AS visit_draft FROM crmguard.draft_state WHERE target = 'public.regress_kta_visit'::regclass \gset
SET ROLE regress_kta_boss;
SET DateStyle = 'SQL, DMY';
SELECT crmguard.approve_draft(:visit_draft) AS approved_key;
RESET DateStyle;
RESET ROLE;
SELECT d.row_key, v.note FROM crmguard.draft_state d JOIN public.regress_kta_visit v ON v.id = d.row_key::date
 WHERE d.id = :visit_draft;
SELECT crmguard.disable_review('public.regress_kta_visit');
DROP TABLE public.regress_kta_visit;

-- ===========================================================================
-- Attack: a duplicate hidden by the reviewer's DateStyle. Drafts keep their
-- match values as JSON prints them (ISO dates, timestamps in the submitter's
-- time zone); the table's were printed as the reviewer's session does, so a
-- reviewer under DateStyle German saw no duplicate by birth date, and none
-- by a timestamp at all; two drafts of one moment from two time zones were
-- no duplicates of each other either.
-- ===========================================================================
CREATE TABLE public.regress_kta_lead (id int PRIMARY KEY, born date, met timestamptz);
INSERT INTO public.regress_kta_lead VALUES (1, '1980-02-01', '2030-01-01 00:00:00+00'),
                                           (3, '1990-01-01', '2031-03-04 10:00:00+00');
GRANT SELECT, INSERT ON public.regress_kta_lead TO regress_kta_rep, regress_kta_boss;
SELECT crmguard.enable_review('public.regress_kta_lead', 'supervisor', '{born,met}');
SET ROLE regress_kta_rep;
SET client_min_messages = warning;
SET TimeZone = 'Asia/Tokyo';
INSERT INTO public.regress_kta_lead VALUES (2, '1980-02-01', '2031-03-04 19:00:00+09');
SET TimeZone = 'America/New_York';
INSERT INTO public.regress_kta_lead VALUES (4, '2000-01-01', '2031-03-04 05:00:00-05');
RESET TimeZone;
RESET client_min_messages;
RESET ROLE;
SET ROLE regress_kta_boss;
SET DateStyle = 'German';
SELECT d.row_data->>'id' AS draft_of, d.duplicates->'rows' AS table_rows,
       jsonb_array_length(d.duplicates->'drafts') AS other_drafts
  FROM crmguard.draft d WHERE d.target = 'public.regress_kta_lead'::regclass ORDER BY d.id;
RESET DateStyle;
RESET ROLE;
SELECT crmguard.disable_review('public.regress_kta_lead');
DROP TABLE public.regress_kta_lead;

-- ===========================================================================
-- Attack: a rep moves a visibility rule's date. Rules kept the value as
-- their author wrote it, and each reader's session read it: '03/04/2031',
-- written under DateStyle 'SQL, MDY' as 4 March, was 3 April for a rep
-- under 'SQL, DMY', and a moment without a zone moved with the rep's
-- TimeZone, so the rep saw rows the rule does not grant.
-- ===========================================================================
CREATE TABLE public.regress_kta_deal (id int PRIMARY KEY, closed_on date, created timestamptz);
INSERT INTO public.regress_kta_deal
     SELECT g, date '2031-03-01' + g, timestamptz '2031-03-03 00:00:00+00' + g * interval '1 hour'
       FROM generate_series(0, 47) g;
GRANT SELECT ON public.regress_kta_deal TO regress_kta_rep;
SET DateStyle = 'SQL, MDY';
SELECT crmguard.expose('public.regress_kta_deal', 'kta early deals', 'agent',
    '{"any": [{"field": "closed_on", "op": "<=", "value": "03/04/2031"},
              {"field": "created", "op": "<", "value": "2031-03-03 06:00"}]}') > 0 AS exposed;
RESET DateStyle;
-- the values as every session reads them (a time without a zone is UTC)
SELECT crmguard.visibility_predicate('public.regress_kta_deal', 'kta_rep');
SELECT count(*) AS granted FROM public.regress_kta_deal
 WHERE closed_on <= '2031-03-04' OR created < '2031-03-03 06:00:00+00';
\c -
SET ROLE regress_kta_rep;
SET DateStyle = 'SQL, DMY';
SET TimeZone = 'UTC';
SELECT count(*) AS seen_under_sql_dmy FROM public.regress_kta_deal;
\c -
SET ROLE regress_kta_rep;
SET DateStyle = 'SQL, MDY';
SET TimeZone = 'Etc/GMT+12';
SELECT count(*) AS seen_at_utc_minus_12 FROM public.regress_kta_deal;
RESET TimeZone;
RESET DateStyle;
RESET ROLE;
SELECT crmguard.unexpose('kta early deals');
-- the same with a moment held by the principal: the rep's own attribute
-- "since" (no zone: UTC), compared in the rep's session
UPDATE crmguard.principal SET attributes = attributes || '{"since": "2031-03-03 06:00"}' WHERE name = 'kta_rep';
SELECT crmguard.expose('public.regress_kta_deal', 'kta deals before since', 'agent',
    '{"field": "created", "op": "<", "principal": "since"}') > 0 AS exposed;
SELECT crmguard.visibility_predicate('public.regress_kta_deal', 'kta_rep');
\c -
SET ROLE regress_kta_rep;
SET TimeZone = 'Etc/GMT+12';
SELECT count(*) AS seen_by_attribute_at_utc_minus_12 FROM public.regress_kta_deal;
RESET TimeZone;
RESET ROLE;
SELECT crmguard.unexpose('kta deals before since');
DROP TABLE public.regress_kta_deal;

-- the same in an approval process's entry criteria, which each session
-- compiles into its lock's cache: a rep under 'SQL, DMY' moved a row to 20
-- March, inside "from 4 March on", without its submission
CREATE TABLE public.regress_kta_offer (id int PRIMARY KEY, due date, discount int);
INSERT INTO public.regress_kta_offer VALUES (1, '2031-01-10', 30);
GRANT SELECT, UPDATE ON public.regress_kta_offer TO regress_kta_rep;
SET DateStyle = 'SQL, MDY';
SELECT crmguard.create_approval_process('kta offers', 'public.regress_kta_offer',
    '{"field": "due", "op": ">=", "value": "03/04/2031"}',
    '[{"name": "Boss", "approvers": {"role": "supervisor"}}]', auto_submit => '{update}') > 0 AS process;
RESET DateStyle;
\c -
SET ROLE regress_kta_rep;
SET DateStyle = 'SQL, DMY';
UPDATE public.regress_kta_offer SET due = '2031-03-20' WHERE id = 1;
RESET DateStyle;
RESET ROLE;
SELECT count(*) AS submitted FROM crmguard.approval_request_state
 WHERE target = 'public.regress_kta_offer'::regclass;
DELETE FROM crmguard.approval_request_state WHERE target = 'public.regress_kta_offer'::regclass;
SELECT crmguard.drop_approval_process('kta offers');
DROP TABLE public.regress_kta_offer;

SELECT ok FROM crmguard.verify_audit();
DROP FUNCTION public.regress_kta_try(text), public.regress_kta_code(text);
DROP OWNED BY regress_kta_rep, regress_kta_boss;
DELETE FROM crmguard.principal WHERE name IN ('kta_rep', 'kta_boss');
DROP ROLE regress_kta_rep, regress_kta_boss;
