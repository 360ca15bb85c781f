-- The README's "Roles and privileges", checked: a role with exactly the
-- privileges listed there can do its job, and without one of them it cannot.
-- When this file changes, change the README's table with it (and back).
BEGIN;
SELECT plan(47);
SET LOCAL client_min_messages = warning;   -- the drafts' NOTICEs

CREATE ROLE tap_role_author;                     -- a rule author: owns the CRM's tables
CREATE ROLE tap_role_other_owner;                -- owns a table, has no crmguard grant
CREATE ROLE tap_role_app LOGIN;                  -- the application's (pooled) login role
CREATE ROLE tap_role_agent;                      -- a sales agent's database role
CREATE ROLE tap_role_reviewer;                   -- a reviewer's database role
CREATE ROLE tap_role_manager;                    -- a manager, approver of the agent's requests
CREATE ROLE tap_role_relay LOGIN;                -- crmguard-relay's login role
CREATE ROLE tap_role_auditor;
CREATE ROLE tap_role_admin;                      -- a CRM administrator who is not a superuser
CREATE ROLE tap_role_plain;                      -- none of the grants

SELECT crmguard.add_principal('tap_role_manager', '{area_manager}', db_role => 'tap_role_manager') > 0 AS manager;
SELECT crmguard.add_principal('tap_role_agent', '{agent}', 'tap_role_manager', db_role => 'tap_role_agent') > 0 AS agent;
SELECT crmguard.add_principal('tap_role_reviewer', '{reviewer}', db_role => 'tap_role_reviewer') > 0 AS reviewer;
SELECT crmguard.add_principal('tap_role_admin', '{admin}', db_role => 'tap_role_admin') > 0 AS admin;
SELECT crmguard.add_principal('tap_role_form', '{webform}', db_role => 'tap_role_plain') > 0 AS form;

-- ---------------------------------------------------------------------------
-- The rule author: owns the table and may execute the rule functions
-- ---------------------------------------------------------------------------
-- as in the README (each name has one signature, so none is needed)
GRANT EXECUTE ON FUNCTION crmguard.create_otp_rule, crmguard.drop_otp_rule,
      crmguard.expose, crmguard.expose_public, crmguard.expose_by_owner, crmguard.unexpose,
      crmguard.enable_review, crmguard.disable_review,
      crmguard.create_approval_process, crmguard.drop_approval_process,
      crmguard.enable_fields, crmguard.define_field, crmguard.drop_field
   TO tap_role_author;
CREATE SCHEMA tap_crm AUTHORIZATION tap_role_author;
GRANT USAGE ON SCHEMA tap_crm TO PUBLIC;

SET LOCAL ROLE tap_role_author;
CREATE TABLE tap_crm.delivery (id bigint PRIMARY KEY, status text NOT NULL, phone text NOT NULL);
CREATE TABLE tap_crm.customer (id bigint PRIMARY KEY, owner_id bigint, name text);
CREATE TABLE tap_crm.lead (id bigserial PRIMARY KEY, company text NOT NULL);
CREATE TABLE tap_crm.deal (id bigint PRIMARY KEY, owner_id bigint NOT NULL, discount int NOT NULL,
                           status text NOT NULL DEFAULT 'Open');
CREATE TABLE tap_crm.contact (id bigint PRIMARY KEY, fields jsonb NOT NULL DEFAULT '{}');
RESET ROLE;
CREATE TABLE tap_crm.not_its_own (id bigint PRIMARY KEY, status text, phone text);
ALTER TABLE tap_crm.not_its_own OWNER TO tap_role_other_owner;
INSERT INTO tap_crm.deal VALUES (1, (SELECT id FROM crmguard.principal WHERE name = 'tap_role_agent'), 0);

SET LOCAL ROLE tap_role_author;
SELECT lives_ok($$SELECT crmguard.create_otp_rule('tap_role otp', 'tap_crm.delivery', 'status', '{Delivered}', 'phone')$$,
                'rule author: creates an OTP rule on its table');
SELECT lives_ok($$SELECT crmguard.expose_by_owner('tap_crm.customer', 'owner_id', 'agent')$$,
                'rule author: creates a visibility rule on its table');
SELECT lives_ok($$SELECT crmguard.enable_review('tap_crm.lead', 'reviewer', '{company}', '{agent}')$$,
                'rule author: turns draft review on for its table');
SELECT lives_ok($$SELECT crmguard.create_approval_process('tap_role deal', 'tap_crm.deal',
                    '{"field": "discount", "op": ">=", "value": 20}',
                    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]',
                    on_approve => '[{"set": {"status": "Approved"}}]')$$,
                'rule author: creates an approval process on its table');
SELECT lives_ok($$SELECT crmguard.enable_fields('tap_crm.contact', 'fields')$$,
                'rule author: turns contact fields on for its table');
SELECT lives_ok($$SELECT crmguard.define_field('tap_crm.contact', 'phone', 'phone', masked => true)$$,
                'rule author: defines a contact field');
SELECT throws_ok($$SELECT crmguard.create_otp_rule('tap_role otp2', 'tap_crm.not_its_own', 'status', '{Delivered}', 'phone')$$,
                 '42501', NULL, 'rule author: the grant is not enough on a table it does not own (42501)');
SELECT throws_ok($$SELECT crmguard.expose_public('tap_crm.not_its_own', 'agent')$$,
                 '42501', NULL, 'rule author: nor a visibility rule on it (42501)');
RESET ROLE;
SET LOCAL ROLE tap_role_other_owner;
SELECT throws_ok($$SELECT crmguard.create_otp_rule('tap_role otp3', 'tap_crm.not_its_own', 'status', '{Delivered}', 'phone')$$,
                 '42501', NULL, 'table owner without the EXECUTE grant: no OTP rule (42501)');
SELECT throws_ok($$SELECT crmguard.expose_public('tap_crm.not_its_own', 'agent')$$,
                 '42501', NULL, 'table owner without the EXECUTE grant: no visibility rule (42501)');
SELECT throws_ok($$SELECT crmguard.enable_review('tap_crm.not_its_own', 'reviewer')$$,
                 '42501', NULL, 'table owner without the EXECUTE grant: no review (42501)');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- The application's login role: issue_token (and its ordinary table grants)
-- ---------------------------------------------------------------------------
GRANT EXECUTE ON FUNCTION crmguard.issue_token, crmguard.device_challenge(text) TO tap_role_app;
SET LOCAL ROLE tap_role_app;
SELECT lives_ok($$SELECT crmguard.assume(crmguard.issue_token('tap_role_agent', '1 minute'))$$,
                'application login role: issues a token and assumes it');
SELECT lives_ok($$SELECT crmguard.device_challenge('tap_role_agent')$$,
                'application login role: asks a device challenge for a principal (device tokens)');
SELECT throws_ok($$SELECT name FROM crmguard.principal$$, '42501', NULL,
                 'application login role: needs no crmguard table (it cannot read crmguard.principal)');
RESET ROLE;
SELECT crmguard.assume(NULL);
SET LOCAL ROLE tap_role_plain;
SELECT throws_ok($$SELECT crmguard.issue_token('tap_role_agent')$$, '42501', NULL,
                 'without EXECUTE on issue_token: no token (42501)');
SELECT lives_ok($$SELECT crmguard.current_principal(), crmguard.has_role('agent'), crmguard.attr('zone'), crmguard.team()$$,
                'anyone: the identity functions need no grant');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- An agent: its table grants; drafts and approvals need no crmguard grant
-- ---------------------------------------------------------------------------
GRANT SELECT, UPDATE ON tap_crm.deal TO tap_role_agent;
GRANT INSERT ON tap_crm.lead TO tap_role_plain;
GRANT USAGE ON SEQUENCE tap_crm.lead_id_seq TO tap_role_plain;
SET LOCAL ROLE tap_role_plain;                         -- the web form: its inserts become drafts
INSERT INTO tap_crm.lead (company) VALUES ('Panificio Bianchi');
SELECT is((SELECT count(*)::int FROM crmguard.draft), 1, 'a submitter: INSERT on the table, and its drafts are in crmguard.draft');
RESET ROLE;
SET LOCAL ROLE tap_role_agent;
UPDATE tap_crm.deal SET discount = 25 WHERE id = 1;
RESET ROLE;
SET LOCAL ROLE tap_role_plain;
SELECT throws_ok($$SELECT crmguard.submit_for_approval('tap_crm.deal', '1')$$, '42501', NULL,
                 'without SELECT on the table: no submission (42501)');
SELECT throws_ok($$SELECT crmguard.request_otp('tap_crm.delivery', '1', 'Delivered')$$, '42501', NULL,
                 'without UPDATE on the table: no OTP request (42501)');
RESET ROLE;
SET LOCAL ROLE tap_role_agent;
SELECT lives_ok($$SELECT crmguard.submit_for_approval('tap_crm.deal', '1')$$,
                'an agent: submits a row it may see and update (SELECT, UPDATE on the table)');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- A reviewer: the CRM role, and INSERT on the reviewed table
-- ---------------------------------------------------------------------------
SELECT id AS tap_draft FROM crmguard.draft_state \gset
SET LOCAL ROLE tap_role_reviewer;
SELECT throws_ok(format('SELECT crmguard.approve_draft(%s)', :tap_draft), '42501', NULL,
                 'reviewer without INSERT on the table: cannot approve (42501)');
RESET ROLE;
GRANT INSERT ON tap_crm.lead TO tap_role_reviewer;
SET LOCAL ROLE tap_role_reviewer;
SELECT is((SELECT count(*)::int FROM crmguard.draft), 1, 'reviewer: sees the table''s drafts (no grant needed)');
SELECT isnt(crmguard.approve_draft(:tap_draft), NULL, 'reviewer: with INSERT on the table, approves a draft');
RESET ROLE;
SELECT is((SELECT company FROM tap_crm.lead), 'Panificio Bianchi', 'the approved row is in the table');

-- ---------------------------------------------------------------------------
-- A manager (approver): no grant at all
-- ---------------------------------------------------------------------------
SET LOCAL ROLE tap_role_manager;
SELECT is((SELECT count(*)::int FROM crmguard.my_approvals()), 1, 'approver: finds the request in my_approvals()');
SELECT lives_ok($$SELECT crmguard.approve((SELECT request FROM crmguard.my_approvals()))$$,
                'approver: approves without any privilege on the table or crmguard');
RESET ROLE;
SELECT is((SELECT status FROM tap_crm.deal WHERE id = 1), 'Approved', 'the on_approve action ran as the table''s owner');
SET LOCAL ROLE tap_role_plain;
SELECT lives_ok($$SELECT crmguard.delegate('tap_role_manager', now() + interval '1 day')$$,
                'anyone with a principal: delegates its approvals without a grant');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- crmguard-relay's login role: GRANT crmguard_relay
-- ---------------------------------------------------------------------------
GRANT crmguard_relay TO tap_role_relay;
SET LOCAL ROLE tap_role_relay;
SELECT lives_ok($$SELECT * FROM crmguard.claim_outbox('email', 10)$$, 'relay: claims messages with crmguard_relay');
RESET ROLE;
SET LOCAL ROLE tap_role_plain;
SELECT throws_ok($$SELECT * FROM crmguard.claim_outbox('email', 10)$$, '42501', NULL,
                 'without crmguard_relay: no claim (42501)');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- An auditor: EXECUTE on verify_audit, SELECT on crmguard.audit
-- ---------------------------------------------------------------------------
GRANT EXECUTE ON FUNCTION crmguard.verify_audit TO tap_role_auditor;
GRANT SELECT ON crmguard.audit TO tap_role_auditor;
SET LOCAL ROLE tap_role_auditor;
SELECT is((SELECT ok FROM crmguard.verify_audit()), true, 'auditor: verifies the audit chain');
SELECT lives_ok($$SELECT id, at, principal, action, target, row_key, detail FROM crmguard.audit$$, 'auditor: reads the audit log');
SELECT throws_ok($$DELETE FROM crmguard.audit$$, '42501', NULL, 'auditor: cannot change it (42501)');
RESET ROLE;
SET LOCAL ROLE tap_role_plain;
SELECT throws_ok($$SELECT * FROM crmguard.verify_audit()$$, '42501', NULL, 'without the grant: no verify_audit (42501)');
SELECT throws_ok($$SELECT count(*) FROM crmguard.audit$$, '42501', NULL, 'without the grant: no audit rows (42501)');
RESET ROLE;

SET LOCAL ROLE tap_role_author;
SELECT lives_ok($$SELECT crmguard.drop_otp_rule('tap_role otp')$$, 'rule author: drops its OTP rule');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- Administration: a superuser, or a role granted the administrative functions
-- ---------------------------------------------------------------------------
GRANT EXECUTE ON FUNCTION crmguard.add_principal, crmguard.register_device, crmguard.enrollment_code,
      crmguard.revoke_device, crmguard.track, crmguard.untrack, crmguard.compact_activity,
      crmguard.purge_history, crmguard.run_due, crmguard.visibility_predicate, crmguard.compile_criteria
   TO tap_role_admin;
GRANT SELECT, UPDATE ON crmguard.principal TO tap_role_admin;
SET LOCAL ROLE tap_role_admin;
SELECT lives_ok($$SELECT crmguard.add_principal('tap_role_new', '{agent}', 'tap_role_manager')$$,
                'administrator: adds a principal');
SELECT lives_ok($$UPDATE crmguard.principal SET active = false WHERE name = 'tap_role_new'$$,
                'administrator: deactivates a principal (UPDATE on crmguard.principal)');
SELECT lives_ok($$SELECT crmguard.enrollment_code('tap_role_agent')$$, 'administrator: makes an enrollment code');
SELECT lives_ok($$SELECT crmguard.track('tap_crm.deal')$$, 'administrator: tracks activity on a table');
SELECT lives_ok($$SELECT crmguard.visibility_predicate('tap_crm.customer', 'tap_role_agent')$$,
                'administrator (a principal with CRM role admin): reads another principal''s visibility predicate');
SELECT lives_ok($$SELECT crmguard.run_due()$$, 'administrator: runs approval timeouts now');
RESET ROLE;
SET LOCAL ROLE tap_role_plain;
SELECT throws_ok($$SELECT crmguard.add_principal('tap_role_new2', '{agent}')$$, '42501', NULL,
                 'without the grant: no principal (42501)');
SELECT throws_ok($$SELECT crmguard.enrollment_code('tap_role_agent')$$, '42501', NULL,
                 'without the grant: no enrollment code (42501)');
SELECT throws_ok($$SELECT crmguard.track('tap_crm.deal')$$, '42501', NULL, 'without the grant: no tracking (42501)');
SELECT throws_ok($$UPDATE crmguard.principal SET active = false$$, '42501', NULL,
                 'without the grant: no change to principals (42501)');
RESET ROLE;
SELECT is((SELECT trusted OR NOT superuser FROM pg_available_extension_versions
            WHERE name = 'crmguard' AND version = '1.1'), false,
          'the DBA: CREATE EXTENSION crmguard needs a superuser (not a trusted extension)');

SELECT * FROM finish();
ROLLBACK;
