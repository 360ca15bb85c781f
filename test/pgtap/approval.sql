-- Approval workflows: SQLSTATEs of refusals, the lock, versions
BEGIN;
SELECT plan(12);

CREATE ROLE tap_apv_rep;
CREATE ROLE tap_apv_boss;
SELECT crmguard.add_principal('tap_apv_boss', '{area_manager}', db_role => 'tap_apv_boss') > 0 AS boss;
SELECT crmguard.add_principal('tap_apv_rep', '{agent}', 'tap_apv_boss', db_role => 'tap_apv_rep') > 0 AS rep;
CREATE TABLE public.tap_quote (id bigint PRIMARY KEY, owner_id bigint NOT NULL, discount int NOT NULL DEFAULT 0,
                               note text);
INSERT INTO public.tap_quote VALUES (1, (SELECT id FROM crmguard.principal WHERE name = 'tap_apv_rep'), 0, NULL),
                                    (2, (SELECT id FROM crmguard.principal WHERE name = 'tap_apv_rep'), 0, NULL);
GRANT SELECT, UPDATE ON public.tap_quote TO tap_apv_rep, tap_apv_boss;

SELECT throws_ok($$SELECT crmguard.create_approval_process('tap', 'public.tap_quote', NULL,
                   '[{"name": "Boss", "approvers": {"manager_of": "owner_id"}, "mode": {"quorum": 2}}]')$$,
                 'CG020', NULL, 'a quorum larger than the approvers fails with CG020');
SELECT throws_ok($$SELECT crmguard.create_approval_process('tap', 'public.tap_quote', NULL,
                   '[{"name": "Boss", "approvers": {"manager_of": "owner_id"}}]', '[{"call": "public.nope"}]')$$,
                 'CG020', NULL, 'a call action naming a missing function fails with CG020');
SELECT is((SELECT count(*)::int FROM crmguard.approval_process), 0, 'refused definitions store nothing');
SELECT lives_ok($$SELECT crmguard.create_approval_process('tap', 'public.tap_quote',
                   '{"field": "discount", "op": ">", "value": 10}',
                   '[{"name": "Boss", "approvers": {"manager_of": "owner_id"}}]',
                   auto_submit => '{update}', editable_columns => '{note}')$$, 'a valid process is created');

SET LOCAL ROLE tap_apv_rep;
UPDATE public.tap_quote SET discount = 15 WHERE id = 1;
SELECT throws_ok($$UPDATE public.tap_quote SET discount = 50 WHERE id = 1$$, 'CG010', NULL,
                 'a pending row refuses a change to a non-editable column (CG010)');
SELECT lives_ok($$UPDATE public.tap_quote SET note = 'call back' WHERE id = 1$$, 'an editable column changes');
SELECT lives_ok($$UPDATE public.tap_quote SET discount = 5 WHERE id = 2$$, 'a row without a request changes freely');
SELECT throws_ok($$SELECT crmguard.approve((SELECT max(id) FROM crmguard.approval_request))$$, 'CG011', NULL,
                 'the submitter cannot approve its own request (CG011)');
RESET ROLE;

-- a new version does not touch the request in flight
SELECT lives_ok($$SELECT crmguard.create_approval_process('tap', 'public.tap_quote',
                   '{"field": "discount", "op": ">", "value": 10}',
                   '[{"name": "Boss", "approvers": {"manager_of": "owner_id"}}, {"name": "Boss again", "approvers": {"principal": "tap_apv_boss"}}]',
                   auto_submit => '{update}')$$, 'a second version is created');
SELECT is((SELECT p.version FROM crmguard.approval_request_state r JOIN crmguard.approval_process p ON p.id = r.process),
          1, 'the pending request keeps version 1');
SET LOCAL ROLE tap_apv_boss;
SELECT lives_ok($$SELECT crmguard.approve((SELECT max(id) FROM crmguard.approval_request))$$, 'the manager approves');
RESET ROLE;
SELECT is((SELECT state FROM crmguard.approval_request_state), 'approved', 'one step was enough: version 1 had one');

SELECT * FROM finish();
ROLLBACK;
