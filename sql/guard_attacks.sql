--
-- Guard attacks (issue 11): a table owner tries to get around the guards
-- crmguard put on its tables.  Guards are known by their trigger function
-- and the rule catalogs, not by name; a guarded table whose guards are gone
-- refuses its next write.
--
CREATE OR REPLACE FUNCTION public.regress_try(query text) RETURNS text
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE query;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
GRANT EXECUTE ON FUNCTION public.regress_try(text) TO PUBLIC;
CREATE ROLE regress_ga_owner;
CREATE ROLE regress_ga_form;
GRANT USAGE, CREATE ON SCHEMA public TO regress_ga_owner;
DO $$ BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO regress_ga_owner', current_database()); END $$;
SELECT crmguard.add_principal('ga_rita', '{reviewer}') > 0 AS rita;
SELECT crmguard.add_principal('ga_form', '{webform}', db_role => 'regress_ga_form') > 0 AS form;

-- an OTP-gated delivery, a reviewed lead, a deal under approval
CREATE TYPE public.regress_ga_status AS ENUM ('New', 'Shipped', 'Delivered');
CREATE TABLE public.regress_ga_delivery (id int PRIMARY KEY, status public.regress_ga_status NOT NULL, phone text);
INSERT INTO public.regress_ga_delivery VALUES (1, 'Shipped', '+39 02 1234567'), (2, 'New', '+39 02 7654321');
SELECT crmguard.create_otp_rule('ga delivered', 'public.regress_ga_delivery', 'status', '{Delivered}', 'phone',
                                delivery => 'manual') > 0 AS otp_rule;
CREATE TABLE public.regress_ga_lead (id serial PRIMARY KEY, company text);
SELECT crmguard.enable_review('public.regress_ga_lead', 'reviewer');
CREATE TABLE public.regress_ga_deal (id int PRIMARY KEY, discount int, title text);
INSERT INTO public.regress_ga_deal VALUES (1, 5, 'spare parts');
SELECT crmguard.create_approval_process('ga discount', 'public.regress_ga_deal',
    '{"field": "discount", "op": ">=", "value": 20}', '[{"name": "Boss", "approvers": {"role": "reviewer"}}]') > 0 AS process;
ALTER TABLE public.regress_ga_delivery OWNER TO regress_ga_owner;
ALTER TABLE public.regress_ga_lead OWNER TO regress_ga_owner;
ALTER TABLE public.regress_ga_deal OWNER TO regress_ga_owner;
ALTER TYPE public.regress_ga_status OWNER TO regress_ga_owner;
GRANT SELECT, INSERT ON public.regress_ga_lead TO regress_ga_form;
GRANT USAGE ON SEQUENCE public.regress_ga_lead_id_seq TO regress_ga_form;

-- Hole 2: the owner removes a guard by renaming, replacing, disabling or dropping it
SET ROLE regress_ga_owner;
CREATE FUNCTION public.regress_ga_noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
SELECT public.regress_try($$ALTER TRIGGER zz_crmguard_otp_guard ON public.regress_ga_delivery RENAME TO harmless$$) AS rename_then_drop;
SELECT public.regress_try($$ALTER TRIGGER "!crmguard_review" ON public.regress_ga_lead RENAME TO "zz_review"$$) AS rename_review_guard;
SELECT public.regress_try($$CREATE OR REPLACE TRIGGER zz_crmguard_otp_guard AFTER UPDATE ON public.regress_ga_delivery
                             FOR EACH ROW EXECUTE FUNCTION public.regress_ga_noop()$$) AS replace_otp_guard;
SELECT public.regress_try($$CREATE OR REPLACE TRIGGER "!crmguard_review" BEFORE INSERT ON public.regress_ga_lead
                             FOR EACH ROW EXECUTE FUNCTION public.regress_ga_noop()$$) AS replace_review_guard;
SELECT public.regress_try($$CREATE OR REPLACE TRIGGER zz_crmguard_approval_lock AFTER UPDATE OR DELETE ON public.regress_ga_deal
                             FOR EACH ROW EXECUTE FUNCTION public.regress_ga_noop()$$) AS replace_approval_lock;
SELECT public.regress_try($$ALTER TABLE public.regress_ga_deal DISABLE TRIGGER zz_crmguard_approval_truncate$$) AS disable_truncate_guard;
SELECT public.regress_try($$ALTER TABLE public.regress_ga_lead ENABLE REPLICA TRIGGER "!crmguard_review"$$) AS enable_replica;
SELECT public.regress_try($$ALTER TABLE public.regress_ga_lead ENABLE ALWAYS TRIGGER "!crmguard_review"$$) AS enable_always;
SELECT public.regress_try($$DROP TRIGGER zz_crmguard_otp_guard_insert ON public.regress_ga_delivery CASCADE$$) AS drop_cascade;
SELECT public.regress_try($$ALTER TABLE public.regress_ga_delivery DROP COLUMN status CASCADE$$) AS drop_gated_column;
SELECT public.regress_try($$CREATE TRIGGER zz_crmguard_spare AFTER UPDATE ON public.regress_ga_delivery
                             FOR EACH ROW EXECUTE FUNCTION crmguard.otp_guard()$$) AS own_copy_of_guard;
-- a guard made a member of an extension the owner created (a trusted one),
-- then dropped with it: the drop's tag is DROP EXTENSION
CREATE EXTENSION fuzzystrmatch;
SELECT public.regress_try($$ALTER TRIGGER zz_crmguard_otp_guard ON public.regress_ga_delivery DEPENDS ON EXTENSION fuzzystrmatch$$) AS guard_depends_on_extension;
SELECT public.regress_try($$DROP EXTENSION fuzzystrmatch$$) AS drop_guard_with_extension;
ALTER TRIGGER zz_crmguard_otp_guard ON public.regress_ga_delivery NO DEPENDS ON EXTENSION fuzzystrmatch;
DROP EXTENSION fuzzystrmatch;
RESET ROLE;
-- a gated or recipient column dropped with an object of the owner's it
-- depends on (DROP FUNCTION, DROP COLLATION ... CASCADE), the guards with it
CREATE COLLATION public.regress_ga_coll (provider = libc, locale = 'C');
CREATE FUNCTION public.regress_ga_phone(text) RETURNS text IMMUTABLE LANGUAGE sql AS 'SELECT $1';
CREATE TABLE public.regress_ga_parcel (id int PRIMARY KEY, status text COLLATE public.regress_ga_coll,
                                       raw_phone text, phone text GENERATED ALWAYS AS (public.regress_ga_phone(raw_phone)) STORED);
SELECT crmguard.create_otp_rule('ga parcel', 'public.regress_ga_parcel', 'status', '{Delivered}', 'phone',
                                delivery => 'manual') > 0 AS parcel_rule;
ALTER TABLE public.regress_ga_parcel OWNER TO regress_ga_owner;
ALTER FUNCTION public.regress_ga_phone(text) OWNER TO regress_ga_owner;
ALTER COLLATION public.regress_ga_coll OWNER TO regress_ga_owner;
SET ROLE regress_ga_owner;
SELECT public.regress_try($$DROP FUNCTION public.regress_ga_phone(text) CASCADE$$) AS drop_recipient_with_function;
SELECT public.regress_try($$DROP COLLATION public.regress_ga_coll CASCADE$$) AS drop_gated_column_with_collation;
RESET ROLE;
SELECT count(*) AS parcel_guards FROM pg_trigger WHERE tgrelid = 'public.regress_ga_parcel'::regclass;
DROP TABLE public.regress_ga_parcel;
DROP FUNCTION public.regress_ga_phone(text);
DROP COLLATION public.regress_ga_coll;
SET ROLE regress_ga_owner;
RESET ROLE;
SELECT tgname, tgfoid::regproc, tgenabled FROM pg_trigger
 WHERE tgrelid IN ('public.regress_ga_delivery'::regclass, 'public.regress_ga_lead'::regclass, 'public.regress_ga_deal'::regclass)
 ORDER BY 1;

-- Fail closed: a superuser who switched the event triggers off removes guards
-- (rename, then drop); the next write by anyone else is refused and audited
ALTER EVENT TRIGGER crmguard_guard_alter DISABLE;
ALTER EVENT TRIGGER crmguard_guard_drop DISABLE;
ALTER TRIGGER zz_crmguard_otp_guard ON public.regress_ga_delivery RENAME TO harmless;
DROP TRIGGER harmless ON public.regress_ga_delivery;
ALTER TABLE public.regress_ga_lead DISABLE TRIGGER "!crmguard_review";
CREATE OR REPLACE TRIGGER zz_crmguard_approval_lock AFTER UPDATE OR DELETE ON public.regress_ga_deal
    FOR EACH ROW EXECUTE FUNCTION public.regress_ga_noop();
ALTER EVENT TRIGGER crmguard_guard_alter ENABLE ALWAYS;
ALTER EVENT TRIGGER crmguard_guard_drop ENABLE ALWAYS;
SET ROLE regress_ga_owner;
SELECT public.regress_try($$UPDATE public.regress_ga_delivery SET status = 'Delivered' WHERE id = 1$$) AS gated_write_without_guard;
SELECT public.regress_try($$UPDATE public.regress_ga_deal SET discount = 30 WHERE id = 1$$) AS write_with_replaced_lock;
SELECT public.regress_try($$TRUNCATE public.regress_ga_deal$$) AS truncate_with_replaced_lock;
RESET ROLE;
SET ROLE regress_ga_form;
SELECT public.regress_try($$INSERT INTO public.regress_ga_lead (company) VALUES ('unreviewed')$$) AS insert_without_review;
RESET ROLE;
SELECT count(*) AS leads FROM public.regress_ga_lead;
SELECT status FROM public.regress_ga_delivery WHERE id = 1;
-- a visibility table whose row-level security a superuser switched off
-- refuses to be read at all
CREATE TABLE public.regress_ga_product (id int PRIMARY KEY, name text);
INSERT INTO public.regress_ga_product VALUES (1, 'Pane');
SELECT crmguard.expose_public('public.regress_ga_product', 'webform') > 0 AS exposed;
GRANT SELECT ON public.regress_ga_product TO regress_ga_form;
ALTER TABLE public.regress_ga_product NO FORCE ROW LEVEL SECURITY;
SET ROLE regress_ga_form;
SELECT public.regress_try($$SELECT count(*) FROM public.regress_ga_product$$) AS read_without_policies;
RESET ROLE;
ALTER TABLE public.regress_ga_product FORCE ROW LEVEL SECURITY;
SET ROLE regress_ga_form;
SELECT count(*) AS products FROM public.regress_ga_product;
RESET ROLE;
DROP TABLE public.regress_ga_product;
-- the guards come back with their rules
SELECT crmguard.drop_otp_rule('ga delivered');
SELECT crmguard.create_otp_rule('ga delivered', 'public.regress_ga_delivery', 'status', '{Delivered}', 'phone',
                                delivery => 'manual') > 0 AS otp_rule_again;
ALTER TABLE public.regress_ga_lead ENABLE TRIGGER "!crmguard_review";
SELECT crmguard.create_approval_process('ga discount', 'public.regress_ga_deal',
    '{"field": "discount", "op": ">=", "value": 20}', '[{"name": "Boss", "approvers": {"role": "reviewer"}}]') > 0 AS process_again;
SET ROLE regress_ga_owner;
SELECT public.regress_try($$UPDATE public.regress_ga_delivery SET phone = '+39 02 1111111' WHERE id = 2$$) AS write_with_guards;
SELECT public.regress_try($$UPDATE public.regress_ga_deal SET discount = 6 WHERE id = 1$$) AS deal_write_with_guards;
RESET ROLE;

-- Hole 5: enum relabelling flips gated values without a write
SET ROLE regress_ga_owner;
SELECT public.regress_try($$ALTER TYPE public.regress_ga_status RENAME VALUE 'Delivered' TO 'Delivered_old'$$) AS relabel_gated_value;
SELECT public.regress_try($$ALTER TYPE public.regress_ga_status RENAME VALUE 'Shipped' TO 'Delivered'$$) AS relabel_into_gated_value;
SELECT public.regress_try($$ALTER TABLE public.regress_ga_delivery ALTER COLUMN status TYPE text
                             USING (CASE status WHEN 'Shipped' THEN 'Delivered' ELSE status::text END)$$) AS retype_gated_column;
SELECT public.regress_try($$DROP TYPE public.regress_ga_status CASCADE$$) AS drop_enum_cascade;
-- adding a value changes no row: allowed
SELECT public.regress_try($$ALTER TYPE public.regress_ga_status ADD VALUE 'Returned'$$) AS add_value;
-- a column no rule names may change type
SELECT public.regress_try($$ALTER TABLE public.regress_ga_deal ALTER COLUMN title TYPE varchar(80)$$) AS retype_other_column;
RESET ROLE;
SELECT id, status FROM public.regress_ga_delivery ORDER BY id;
-- a superuser may, with a warning and an audit entry
ALTER TYPE public.regress_ga_status RENAME VALUE 'New' TO 'Fresh';
ALTER TYPE public.regress_ga_status RENAME VALUE 'Fresh' TO 'New';

-- Hole 6: rows written to an inheritance child or partition bypass the parent's guards
SET ROLE regress_ga_owner;
SELECT public.regress_try($$CREATE TABLE public.regress_ga_lead_import () INHERITS (public.regress_ga_lead)$$) AS inherit_reviewed_table;
CREATE TABLE public.regress_ga_plain (id int NOT NULL, company text);
SELECT public.regress_try($$ALTER TABLE public.regress_ga_plain INHERIT public.regress_ga_lead$$) AS alter_inherit_reviewed_table;
SELECT public.regress_try($$CREATE TABLE public.regress_ga_delivery_child () INHERITS (public.regress_ga_delivery)$$) AS inherit_gated_table;
SELECT public.regress_try($$CREATE TABLE public.regress_ga_deal_child () INHERITS (public.regress_ga_deal)$$) AS inherit_approval_table;
-- the same as an element of CREATE SCHEMA (the command's tag is CREATE SCHEMA)
SELECT public.regress_try($$CREATE SCHEMA regress_ga_schema
                             CREATE TABLE child () INHERITS (public.regress_ga_delivery)$$) AS schema_element_inherits;
SELECT count(*) AS schemas_made FROM pg_namespace WHERE nspname = 'regress_ga_schema';
-- (a schema whose tables touch no guarded table is made as before)
SELECT public.regress_try($$CREATE SCHEMA regress_ga_schema CREATE TABLE plain (id int)$$) AS schema_unrelated;
DROP SCHEMA regress_ga_schema CASCADE;
-- a guarded table attached as a partition of the owner's own tree
CREATE TABLE public.regress_ga_tree (id int NOT NULL, company text) PARTITION BY RANGE (id);
SELECT public.regress_try($$ALTER TABLE public.regress_ga_tree ATTACH PARTITION public.regress_ga_lead FOR VALUES FROM (0) TO (1000)$$) AS attach_reviewed_as_partition;
SELECT public.regress_try($$CREATE TABLE public.regress_ga_deal_part PARTITION OF public.regress_ga_tree FOR VALUES FROM (1000) TO (2000)$$) AS unrelated_partition;
RESET ROLE;
-- a superuser may, with a warning; the child then refuses writes (fail closed)
CREATE TABLE public.regress_ga_lead_import () INHERITS (public.regress_ga_lead);
GRANT INSERT ON public.regress_ga_lead_import TO regress_ga_form;
SET ROLE regress_ga_form;
SELECT public.regress_try($$INSERT INTO public.regress_ga_lead_import (id, company) VALUES (100, 'around the review')$$) AS insert_into_child;
RESET ROLE;
SELECT count(*) AS leads_seen_in_parent FROM public.regress_ga_lead;
DROP TABLE public.regress_ga_lead_import;
-- a superuser's trigger that would fire ahead of the review guard: inserts are refused
CREATE TRIGGER " spy" BEFORE INSERT ON public.regress_ga_lead FOR EACH ROW EXECUTE FUNCTION public.regress_ga_noop();
SET ROLE regress_ga_form;
SELECT public.regress_try($$INSERT INTO public.regress_ga_lead (company) VALUES ('seen by a spy')$$) AS insert_past_spy;
RESET ROLE;
DROP TRIGGER " spy" ON public.regress_ga_lead;
-- a guarded temporary table: what a drop removed names its schema "pg_temp"
CREATE TEMP TABLE regress_ga_temp (id int PRIMARY KEY, status text, phone text);
SELECT crmguard.create_otp_rule('ga temp', 'pg_temp.regress_ga_temp', 'status', '{Delivered}', 'phone',
                                delivery => 'manual') > 0 AS temp_rule;
ALTER TABLE pg_temp.regress_ga_temp OWNER TO regress_ga_owner;
SET ROLE regress_ga_owner;
SELECT public.regress_try($$DROP TRIGGER zz_crmguard_otp_guard ON pg_temp.regress_ga_temp$$) AS drop_guard_of_temp_table;
SELECT public.regress_try($$ALTER TABLE pg_temp.regress_ga_temp DROP COLUMN status CASCADE$$) AS drop_gated_column_of_temp_table;
RESET ROLE;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'pg_temp.regress_ga_temp'::regclass ORDER BY 1;
DROP TABLE pg_temp.regress_ga_temp;
-- the OTP guard on a table without an OTP rule (a partition given its
-- parent's guard by a 1.0 rule on a partitioned table, or a copy): it
-- cannot tell what is gated, and refuses every change, a superuser's too
CREATE TABLE public.regress_ga_copy (id int PRIMARY KEY, status text, phone text);
INSERT INTO public.regress_ga_copy VALUES (1, 'New', '+39 02 1111111');
CREATE TRIGGER zz_copy AFTER INSERT OR UPDATE ON public.regress_ga_copy
    FOR EACH ROW EXECUTE FUNCTION crmguard.otp_guard();
SELECT public.regress_try($$UPDATE public.regress_ga_copy SET status = 'Delivered'$$) AS guard_copy_update;
SELECT public.regress_try($$INSERT INTO public.regress_ga_copy VALUES (2, 'Delivered', '+39 02 2222222')$$) AS guard_copy_insert;
SELECT id, status FROM public.regress_ga_copy ORDER BY id;
-- (both refusals are audited: the count below, once the worker wrote them)
DROP TABLE public.regress_ga_copy;

-- every refusal and every superuser change is in the audit log (refusals are
-- written by the worker, in order: wait for the last one)
DO $$
BEGIN
    FOR i IN 1..600 LOOP
        EXIT WHEN (SELECT count(*) FROM crmguard.audit
                    WHERE action = 'guarded_table_refused' AND target = 'regress_ga_lead') = 2
              AND (SELECT count(*) FROM crmguard.audit
                    WHERE action = 'otp_refused' AND target = 'regress_ga_copy') = 2;
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;
SELECT action, target, count(*) FROM crmguard.audit
 WHERE target LIKE '%regress\_ga%' AND action NOT IN ('create_otp_rule', 'drop_otp_rule', 'enable_review', 'create_approval_process')
 GROUP BY 1, 2 ORDER BY 1, 2;
SELECT ok FROM crmguard.verify_audit();

DROP TABLE public.regress_ga_delivery, public.regress_ga_lead, public.regress_ga_deal,
           public.regress_ga_plain, public.regress_ga_tree;
DROP TYPE public.regress_ga_status;
DROP FUNCTION public.regress_ga_noop();
DELETE FROM crmguard.principal WHERE name LIKE 'ga\_%';
REVOKE ALL ON SCHEMA public FROM regress_ga_owner;
DO $$ BEGIN EXECUTE format('REVOKE CREATE ON DATABASE %I FROM regress_ga_owner', current_database()); END $$;
DROP ROLE regress_ga_owner, regress_ga_form;
DROP FUNCTION public.regress_try(text);
