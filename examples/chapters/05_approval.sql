-- Chapter 5: approval workflows, enforced in the database
\set ON_ERROR_STOP 0
\set SHOW_CONTEXT never
\set VERBOSITY default
\echo '== Chapter 5: approval workflows'
\echo
\echo 'A discount of 20% or more must not go out until the rep''s manager and then'
\echo 'finance approve it. The DBA defines the process once; every client, import'
\echo 'and API that changes crm.deal goes through it. Finance has two days, then the'
\echo 'step escalates to its manager. While a request is pending, the deal is locked'
\echo 'except its stage. create_approval_process() returns the process id:'
SELECT crmguard.create_approval_process('Deal discount', 'crm.deal',
    entry_criteria => '{"field": "discount_pct", "op": ">=", "value": 20}',
    steps => '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}},
               {"name": "Finance", "approvers": {"role": "finance"}, "timeout": "2 days", "on_timeout": "escalate"}]',
    on_submit  => '[{"set": {"status": "Pending approval"}}]',
    on_approve => '[{"set": {"status": "Discount approved"}},
                    {"notify": {"channel": "email", "to": "owner_id", "subject": "Your discount was approved"}}]',
    on_reject  => '[{"set": {"status": "Discount rejected"}},
                    {"task": {"assign_to": "owner_id", "subject": "Rework the offer: discount rejected"}}]',
    auto_submit => '{update}',
    editable_columns => '{stage}') AS process_id;
\echo 'A campaign of 10,000 or more needs both the head of marketing and finance:'
SELECT crmguard.create_approval_process('Campaign budget', 'crm.campaign',
    entry_criteria => '{"field": "budget", "op": ">=", "value": 10000}',
    steps => '[{"name": "Marketing and finance",
                "approvers": [{"role": "marketing_head"}, {"role": "finance"}], "mode": "all"}]',
    on_approve => '[{"set": {"status": "Active"}}]') AS process_id;

\echo
\echo '"Cold chain rollout" already carried 25% before the process existed, so no'
\echo 'change submitted it (a row is submitted when it *enters* the criteria). Luca'
\echo 'submits it by hand:'
SET ROLE crm_luca;
SELECT crmguard.submit_for_approval('crm.deal', (SELECT id::text FROM crm.deal WHERE title = 'Cold chain rollout'),
                                    'customer signs for three years') AS request_id;
SELECT title, discount_pct, status FROM crm.deal WHERE title = 'Cold chain rollout';
SELECT id, process, current_step, approvers, state FROM crmguard.approval_request;
\echo 'While it is pending the deal is locked: a bigger discount is refused (the'
\echo 'stage stays editable), and so is it for the table''s owner:'
UPDATE crm.deal SET discount_pct = 35 WHERE title = 'Cold chain rollout';
RESET ROLE;
UPDATE crm.deal SET amount = 1 WHERE title = 'Cold chain rollout';     -- the DBA, owner of crm.deal
SET ROLE crm_luca;
\echo 'The stage is editable, so Luca moves it on:'
UPDATE crm.deal SET stage = 'Proposal' WHERE title = 'Cold chain rollout' RETURNING title, stage;
RESET ROLE;
SELECT id AS rollout FROM crmguard.approval_request_state WHERE row_key =
       (SELECT id::text FROM crm.deal WHERE title = 'Cold chain rollout') \gset
\echo 'Luca cannot approve his own request:'
SET ROLE crm_luca;
SELECT crmguard.approve(:rollout);
RESET ROLE;

\echo
\echo 'Anna, his manager, finds it among her approvals and approves; then finance:'
SET ROLE crm_anna;
SELECT request, process, step, submitted_by FROM crmguard.my_approvals();
SELECT '   ok: Anna approved request ' || :rollout || ' (step Manager)'
  FROM crmguard.approve(:rollout, 'new customer, three-year contract')
\g (tuples_only=on format=unaligned)
RESET ROLE;
SET ROLE crm_fiona;
SELECT request, step FROM crmguard.my_approvals();
SELECT '   ok: Fiona approved request ' || :rollout || ' (step Finance, the last)'
  FROM crmguard.approve(:rollout, 'margin still above 30%')
\g (tuples_only=on format=unaligned)
RESET ROLE;
\echo 'Approved: the status is set and Luca is told, in the same transaction:'
SELECT title, discount_pct, stage, status FROM crm.deal WHERE title = 'Cold chain rollout';
SELECT channel, recipient, subject FROM crmguard.outbox WHERE subject LIKE 'Your discount%';
SET ROLE crm_luca;
SELECT jsonb_path_query_array(history, '$[*] ? (@.event == "approved").by') AS approved_by,
       jsonb_path_query_array(history, '$[*].event') AS events
  FROM crmguard.approval_request WHERE id = :rollout;
RESET ROLE;

\echo
\echo 'Sara offers 40% on "Delivery slots and returns": the update submits it. Anna'
\echo 'rejects it with a comment, and Sara gets a task:'
SET ROLE crm_sara;
UPDATE crm.deal SET discount_pct = 40 WHERE title = 'Delivery slots and returns';
RESET ROLE;
SELECT id AS customs FROM crmguard.approval_request_state WHERE row_key =
       (SELECT id::text FROM crm.deal WHERE title = 'Delivery slots and returns') \gset
SET ROLE crm_sara;
SELECT id, process, current_step, approvers, state FROM crmguard.approval_request WHERE id = :customs;
RESET ROLE;
SET ROLE crm_anna;
SELECT '   ok: Anna rejected request ' || :customs
  FROM crmguard.reject(:customs, '40% is below cost; offer 15% and free returns')
\g (tuples_only=on format=unaligned)
RESET ROLE;
SELECT d.title, d.status, t.subject AS task, p.name AS assigned_to
  FROM crm.deal d, crmguard.task t JOIN crmguard.principal p ON p.id = t.assigned_to
 WHERE d.title = 'Delivery slots and returns' AND t.request = :customs;

\echo
\echo 'Luca submits 22% on "Cold chain for medicines", then thinks better of it and'
\echo 'recalls the request; nobody can approve it after that:'
SET ROLE crm_luca;
UPDATE crm.deal SET discount_pct = 22 WHERE title = 'Cold chain for medicines';
RESET ROLE;
SELECT id AS sla FROM crmguard.approval_request_state WHERE row_key =
       (SELECT id::text FROM crm.deal WHERE title = 'Cold chain for medicines') AND state = 'pending' \gset
SET ROLE crm_luca;
SELECT '   ok: Luca recalled request ' || :sla FROM crmguard.recall(:sla, 'customer wants a smaller scope first')
\g (tuples_only=on format=unaligned)
\echo 'Anna tries to approve it anyway:'
RESET ROLE;
SET ROLE crm_anna;
SELECT crmguard.approve(:sla);
RESET ROLE;

\echo
\echo 'Anna goes on holiday and delegates her approvals to Marco for a week. Sara'
\echo 'offers 25% on "Warehouse API and SLA"; Marco approves it for Anna:'
SET ROLE crm_anna;
SELECT '   ok: Anna''s approvals go to Marco until ' || to_char(now() + interval '7 days', 'YYYY-MM-DD')
  FROM crmguard.delegate('marco', now() + interval '7 days')
\g (tuples_only=on format=unaligned)
RESET ROLE;
SET ROLE crm_sara;
UPDATE crm.deal SET discount_pct = 25 WHERE title = 'Warehouse API and SLA';
RESET ROLE;
SELECT id AS wine FROM crmguard.approval_request_state WHERE row_key =
       (SELECT id::text FROM crm.deal WHERE title = 'Warehouse API and SLA') \gset
SET ROLE crm_marco;
SELECT request, step, on_behalf_of FROM crmguard.my_approvals();
SELECT '   ok: Marco approved request ' || :wine || ' for Anna (step Manager); it moves on to Finance'
  FROM crmguard.approve(:wine, 'for Anna, who is away')
\g (tuples_only=on format=unaligned)
RESET ROLE;

\echo
\echo 'Finance does not answer within two days. The background worker (or run_due())'
\echo 'escalates the step to finance''s manager, Dora; nothing is approved by itself.'
\echo '(The clock is moved back here instead of waiting two days.)'
BEGIN;
UPDATE crmguard.approval_request_state SET step_started_at = now() - interval '3 days' WHERE id = :wine;
SELECT crmguard.run_due() AS requests_moved;
COMMIT;
SET ROLE crm_dora;
SELECT id, current_step, approvers, state,
       jsonb_path_query_array(history, '$[*].event') AS events
  FROM crmguard.approval_request WHERE id = :wine;
SELECT '   ok: Dora approved request ' || :wine || ' (step Finance)' FROM crmguard.approve(:wine, 'ok')
\g (tuples_only=on format=unaligned)
RESET ROLE;
SELECT title, discount_pct, status FROM crm.deal WHERE title = 'Warehouse API and SLA';

\echo
\echo 'Dora submits the fair campaign (18,000); it needs Mara and Fiona both:'
SET ROLE crm_dora;
SELECT crmguard.submit_for_approval('crm.campaign',
       (SELECT id::text FROM crm.campaign WHERE name = 'Cold chain fair, Milano 2027')) AS fair \gset
SELECT approvers, state FROM crmguard.approval_request WHERE id = :fair;
RESET ROLE;
SET ROLE crm_fiona;
SELECT '   ok: Fiona approved request ' || :fair FROM crmguard.approve(:fair, 'budget line 4.2')
\g (tuples_only=on format=unaligned)
RESET ROLE;
\echo 'The campaign is still only planned:'
SELECT name, status FROM crm.campaign WHERE name LIKE 'Cold chain fair%';
\echo 'One of two is not enough; with Mara''s approval the campaign goes live:'
SET ROLE crm_mara;
SELECT '   ok: Mara approved request ' || :fair FROM crmguard.approve(:fair, 'go')
\g (tuples_only=on format=unaligned)
RESET ROLE;
SELECT name, status FROM crm.campaign WHERE name LIKE 'Cold chain fair%';
