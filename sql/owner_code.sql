--
-- Owner code never runs as a superuser.  A table owner (no superuser) plants
-- code everywhere crmguard might touch: a domain CHECK on the key, an array
-- of that domain, casts of an enum status, operators beside the built-in
-- ones, a column default and a trigger.  Every plant records who ran it.
-- Then every crmguard entry point that touches the table is used, as the
-- owner, a rep, a reviewer and the background worker would; not one plant
-- may ever have run as a superuser, and each entry point must have run them.
--
\set VERBOSITY default
SET client_min_messages = warning;
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
CREATE ROLE regress_oc_owner;
CREATE ROLE regress_oc_rep;
CREATE ROLE regress_oc_boss;
CREATE SCHEMA regress_oc AUTHORIZATION regress_oc_owner;
GRANT USAGE ON SCHEMA regress_oc TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.create_otp_rule, crmguard.expose, crmguard.expose_by_owner,
      crmguard.enable_review, crmguard.create_approval_process
   TO regress_oc_owner;
SELECT crmguard.add_principal('oc_boss', '{manager,reviewer}', db_role => 'regress_oc_boss') > 0 AS boss;
SELECT crmguard.add_principal('oc_rep', '{agent}', 'oc_boss', db_role => 'regress_oc_rep') > 0 AS rep;
SELECT id AS rep_id FROM crmguard.principal WHERE name = 'oc_rep' \gset

SET ROLE regress_oc_owner;
-- what ran, as whom; the sequences survive rollbacks of the statements that ran a plant
CREATE TABLE regress_oc.ran (entry text, plant text, who name, super boolean);
CREATE SEQUENCE regress_oc.ran_as_superuser;
CREATE SEQUENCE regress_oc.ran_as_owner;
GRANT INSERT ON regress_oc.ran TO PUBLIC;
GRANT USAGE ON SEQUENCE regress_oc.ran_as_superuser, regress_oc.ran_as_owner TO PUBLIC;
CREATE FUNCTION regress_oc.spy(plant text) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    super boolean := (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user);
BEGIN
    PERFORM pg_catalog.nextval(CASE WHEN super THEN 'regress_oc.ran_as_superuser'
                                    ELSE 'regress_oc.ran_as_owner' END::regclass);
    INSERT INTO regress_oc.ran VALUES (pg_catalog.current_setting('regress_oc.entry', true), plant, current_user, super);
    RETURN true;
END $$;
CREATE FUNCTION regress_oc.spy_text(plant text) RETURNS text LANGUAGE sql VOLATILE
    AS $$ SELECT CASE WHEN regress_oc.spy(plant) THEN '' END $$;
-- the key: a domain whose CHECK runs the owner's function
CREATE DOMAIN regress_oc.code AS text CHECK (regress_oc.spy('domain check'));
-- the status: an enum whose casts from and to text are the owner's functions
CREATE TYPE regress_oc.stage AS ENUM ('New', 'Shipped', 'Delivered', 'Approved');
CREATE FUNCTION regress_oc.stage_of(t text) RETURNS regress_oc.stage LANGUAGE sql VOLATILE AS $$
    SELECT e FROM pg_catalog.unnest(pg_catalog.enum_range(NULL::regress_oc.stage)) e
     WHERE regress_oc.spy('cast to enum') AND pg_catalog.format('%s', e) = t $$;
CREATE FUNCTION regress_oc.text_of(s regress_oc.stage) RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT regress_oc.spy_text('cast from enum') || pg_catalog.format('%s', s) $$;
CREATE CAST (text AS regress_oc.stage) WITH FUNCTION regress_oc.stage_of(text);
CREATE CAST (regress_oc.stage AS text) WITH FUNCTION regress_oc.text_of(regress_oc.stage);
-- operators planted beside the built-in ones, where an unpinned search_path would find them
CREATE FUNCTION regress_oc.eq(a regress_oc.stage, b regress_oc.stage) RETURNS boolean LANGUAGE sql VOLATILE
    AS $$ SELECT regress_oc.spy('operator') AND pg_catalog.enum_cmp(a, b) = 0 $$;
CREATE OPERATOR regress_oc.= (LEFTARG = regress_oc.stage, RIGHTARG = regress_oc.stage, FUNCTION = regress_oc.eq);
CREATE FUNCTION regress_oc.text_eq(a text, b text) RETURNS boolean LANGUAGE sql VOLATILE
    AS $$ SELECT regress_oc.spy('operator') AND pg_catalog.texteq(a, b) $$;
CREATE OPERATOR regress_oc.= (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_oc.text_eq);
CREATE TABLE regress_oc.deal (
    id       regress_oc.code PRIMARY KEY,
    phone    text NOT NULL,
    status   regress_oc.stage NOT NULL DEFAULT 'New',
    tags     regress_oc.code[] NOT NULL DEFAULT '{}',
    owner_id bigint,
    note     text DEFAULT regress_oc.spy_text('column default')
);
CREATE FUNCTION regress_oc.deal_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM regress_oc.spy('trigger'); RETURN NEW; END $$;
CREATE TRIGGER zz_spy BEFORE INSERT OR UPDATE ON regress_oc.deal FOR EACH ROW EXECUTE FUNCTION regress_oc.deal_trigger();
INSERT INTO regress_oc.deal (id, phone, status, tags, owner_id) VALUES
    ('d1', '+39 347 000 0001', 'Shipped', '{cold}', :rep_id),
    ('d2', '+39 347 000 0002', 'Shipped', '{cold}', :rep_id),
    ('d3', '+39 347 000 0003', 'New', '{warm}', :rep_id);
GRANT SELECT, INSERT, UPDATE ON regress_oc.deal TO regress_oc_rep, regress_oc_boss;
RESET ROLE;
-- the owner's plants are proven to work: they ran, as the owner
SELECT entry, plant, who, super FROM regress_oc.ran GROUP BY 1, 2, 3, 4 ORDER BY 1, 2;
DELETE FROM regress_oc.ran;

-- ---------------------------------------------------------------------------
-- Rule definitions, as the owner: values are judged against the column types
-- ---------------------------------------------------------------------------
SET ROLE regress_oc_owner;
SET regress_oc.entry = 'create_otp_rule';
SELECT crmguard.create_otp_rule('oc_delivered', 'regress_oc.deal', 'status', '{Delivered}', 'phone',
       delivery => 'manual', from_values => '{Shipped}',
       condition => '{"all": [{"field": "tags", "op": "=", "value": "{cold}"}, {"field": "id", "op": "<>", "value": "zz"}]}') > 0 AS otp_rule;
SET regress_oc.entry = 'expose';
SELECT crmguard.expose('regress_oc.deal', 'oc_agents', 'agent',
       '{"any": [{"field": "status", "op": "in", "value": ["Shipped", "Delivered"]}, {"field": "id", "op": "=", "value": "d3"}]}', 'edit') > 0 AS visibility_rule;
SELECT crmguard.expose('regress_oc.deal', 'oc_managers', 'manager', '{"field": "tags", "op": "is not null"}', 'edit') > 0 AS manager_rule;
SET regress_oc.entry = 'enable_review';
SELECT crmguard.enable_review('regress_oc.deal', 'reviewer', '{phone}') AS review;
SET regress_oc.entry = 'create_approval_process';
SELECT crmguard.create_approval_process('oc_discount', 'regress_oc.deal',
       '{"field": "tags", "op": "=", "value": "{cold}"}',
       '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]',
       on_approve => '[{"set": {"status": "Approved", "tags": "{approved}"}}]',
       on_reject => '[{"set": {"tags": "{rejected}"}}]') > 0 AS process;
SELECT crmguard.create_approval_process('oc_quiet', 'regress_oc.deal',
       '{"field": "tags", "op": "=", "value": "{warm}"}',
       '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}, "timeout": "1 hour", "on_timeout": "approve"}]',
       on_approve => '[{"set": {"status": "Approved", "tags": "{timed_out}"}}]') > 0 AS timeout_process;
SET regress_oc.entry = 'expose_by_owner';
SELECT crmguard.expose_by_owner('regress_oc.deal', 'owner_id', 'owner') > 0 AS owner_rule;
RESET ROLE;

-- ---------------------------------------------------------------------------
-- The rep's day: visibility, OTP, drafts, approvals
-- ---------------------------------------------------------------------------
SET ROLE regress_oc_rep;
SET regress_oc.entry = 'visibility';
SELECT id, status FROM regress_oc.deal ORDER BY id;
SET regress_oc.entry = 'why_visible';
SELECT rule_name, granted FROM crmguard.why_visible('regress_oc.deal', 'd1') ORDER BY 1;
SET regress_oc.entry = 'request_otp';
SELECT crmguard.request_otp('regress_oc.deal', 'd1', 'Delivered') AS challenge \gset
SET regress_oc.entry = 'otp guard';
SELECT public.regress_try($$UPDATE regress_oc.deal SET status = 'Delivered' WHERE id = 'd2'$$) AS refused;
RESET ROLE;
-- the code as the customer's phone received it
SELECT substring(body FROM 'code is ([0-9]+)') AS code FROM crmguard.outbox ORDER BY id DESC LIMIT 1 \gset
SET ROLE regress_oc_rep;
BEGIN;
SET LOCAL regress_oc.entry = 'verify_otp';
SELECT crmguard.verify_otp(:challenge, :'code') AS verified;
SET LOCAL regress_oc.entry = 'otp guard';
UPDATE regress_oc.deal SET status = 'Delivered' WHERE id = 'd1';
COMMIT;
SET regress_oc.entry = 'draft trigger';
INSERT INTO regress_oc.deal (id, phone, status, tags, owner_id) VALUES ('d4', '+39 347 000 0001', 'New', '{cold}', :rep_id);
SET regress_oc.entry = 'submit_for_approval';
SELECT crmguard.submit_for_approval('regress_oc.deal', 'd2') AS request2 \gset
SELECT crmguard.submit_for_approval('regress_oc.deal', 'd1') AS request1 \gset
SET regress_oc.entry = 'recall';
SELECT crmguard.recall(:request1) AS recalled;
RESET ROLE;

SET ROLE regress_oc_boss;
SET regress_oc.entry = 'draft duplicates';
SELECT id AS draft, duplicates FROM crmguard.draft ORDER BY id \gset
SELECT :'duplicates' AS duplicates;
SET regress_oc.entry = 'approve_draft';
SELECT crmguard.approve_draft(:draft) AS new_key;
SET regress_oc.entry = 'approve';
SELECT crmguard.approve(:request2) AS approved;
RESET ROLE;
SET ROLE regress_oc_rep;
SELECT crmguard.submit_for_approval('regress_oc.deal', 'd1') AS request1 \gset
RESET ROLE;
SET ROLE regress_oc_boss;
SET regress_oc.entry = 'reject';
SELECT crmguard.reject(:request1, 'no') AS rejected;
SET ROLE regress_oc_rep;
SELECT crmguard.submit_for_approval('regress_oc.deal', 'd3') AS request3 \gset
RESET ROLE;
-- the manager stays quiet for an hour: the background worker's run_due approves
BEGIN;
UPDATE crmguard.approval_request_state SET step_started_at = now() - interval '2 hours' WHERE id = :request3;
SET LOCAL regress_oc.entry = 'run_due (worker)';
SELECT crmguard.run_due() AS moved;
COMMIT;
RESET regress_oc.entry;

SELECT id, status, tags FROM regress_oc.deal ORDER BY id;

-- ---------------------------------------------------------------------------
-- The verdict: each entry point ran the owner's code, never as a superuser
-- ---------------------------------------------------------------------------
SELECT entry, pg_catalog.string_agg(DISTINCT plant, ', ' ORDER BY plant) AS plants,
       pg_catalog.string_agg(DISTINCT who::text, ', ') AS ran_as, bool_or(super) AS as_superuser
  FROM regress_oc.ran GROUP BY entry ORDER BY entry;
SELECT is_called AS any_plant_ever_ran_as_superuser FROM regress_oc.ran_as_superuser;
SELECT is_called AS plants_ran_as_their_owner FROM regress_oc.ran_as_owner;

RESET ROLE;
DROP SCHEMA regress_oc CASCADE;
DROP OWNED BY regress_oc_owner, regress_oc_rep, regress_oc_boss;
DROP ROLE regress_oc_owner, regress_oc_rep, regress_oc_boss;
