-- Chapter 6: DSA -- registered PCs only, each profile its own customers and
-- functions, and who contributes
\set ON_ERROR_STOP 0
\set SHOW_CONTEXT never
\set VERBOSITY default
\echo '== Chapter 6: trusted devices, the DSA modules, activity'
\echo
\echo 'DSA''s CRM: contact history by every function of the company, offers with'
\echo 'their probability, commitments (what customers bought), requests, suppliers,'
\echo 'and the views sales people read (customer card, revenue, sales trend). Agents'
\echo 'see their accounts, area managers their team''s, the director everything;'
\echo 'suppliers are for managers only (an agent has no rule, so it sees none).'
\echo 'The rules, with their ids:'
SELECT crmguard.expose_by_owner('crm.contact_history', 'account_owner_id', 'agent') AS rule_id;
SELECT crmguard.expose_by_owner('crm.contact_history', 'account_owner_id', 'area_manager') AS rule_id;
SELECT crmguard.expose_by_owner(t, 'owner_id', r) AS rule_id
  FROM unnest(ARRAY['crm.offer', 'crm.commitment', 'crm.request']::regclass[]) t,
       unnest(ARRAY['agent', 'area_manager']) r;
SELECT crmguard.expose_public('crm.supplier', 'area_manager') AS rule_id;
SELECT crmguard.expose_public('crm.product', 'area_manager') AS rule_id;
\echo 'Management watches contributions to the daily modules:'
SELECT '   ok: tracking ' || t FROM unnest(ARRAY['crm.contact_history', 'crm.offer', 'crm.request']::regclass[]) t,
       crmguard.track(t)
\g (tuples_only=on format=unaligned)

\echo
\echo 'Access only from registered PCs. From today Luca''s principal requires a'
\echo 'device: a session he forgot open on a customer''s PC gives nothing.'
UPDATE crmguard.principal SET require_device = true WHERE name = 'luca';
SET ROLE crm_luca;
SELECT count(*) AS customers_luca_sees_from_an_unregistered_pc FROM crm.customer;
\echo 'and crmguard refuses his guarded writes and reports until he attests a device:'
UPDATE crm.customer SET phone = NULL WHERE owner_id = crmguard.current_principal();
SELECT * FROM crmguard.activity(now() - interval '7 days', now());
RESET ROLE;

\echo
\echo 'Dora (admin) gives Luca a one-time code; on his laptop crmguard-device makes'
\echo 'an Ed25519 key (the secret stays in a 0600 file) and he enrolls it himself:'
\! rm -f /tmp/crmguard_demo_luca.key
\set luca_pk `crmguard-device keygen /tmp/crmguard_demo_luca.key`
SELECT crmguard.enrollment_code('luca', '1 day') AS code \gset
\echo '   code: cg1.<hidden> (one use, one day; stored only as a keyed hash)'
SET ROLE crm_luca;
SELECT crmguard.enroll_device(:'code', 'luca-laptop', :'luca_pk') AS device \gset
\echo '   ok: Luca''s laptop enrolled as device' :device
\echo 'The code works once: enrolling another key with it is refused:'
SELECT crmguard.enroll_device(:'code', 'someone-else', :'luca_pk') AS second_use;
\echo 'Each session signs a fresh challenge (a minute, once, this database, Luca):'
SELECT crmguard.device_challenge() AS challenge \gset
\set signature `crmguard-device sign --key /tmp/crmguard_demo_luca.key :'challenge'`
SELECT crmguard.attest_device(:device, :'signature') AS attested;
\echo 'The same signature, replayed, is refused; the attested session sees his accounts:'
SELECT crmguard.attest_device(:device, :'signature') AS replayed;
SELECT count(*) AS customers_luca_sees_attested FROM crm.customer;
RESET ROLE;

\echo
\echo 'The customer card, one view per customer: history by any function,'
\echo 'pending offers (weighted by probability), last request, revenue.'
\echo 'As Luca (agent, attested): his accounts only'
SET ROLE crm_luca;
SELECT name, province, last_contact::date, recent_contacts, open_offers, weighted_pipeline,
       last_request, revenue_12m
  FROM crm.customer_card WHERE name IN ('Novak Logistics', 'Ferri & Figli', 'Bottega Rossi') ORDER BY name;
SELECT count(*) AS cards, sum(revenue_12m) AS revenue_12m FROM crm.customer_card;
SET ROLE crm_anna;
\echo 'As Anna (area manager): Luca''s and Sara''s accounts, Bottega Rossi included'
SELECT name, province, last_contact::date, open_offers, weighted_pipeline, revenue_12m
  FROM crm.customer_card WHERE name IN ('Novak Logistics', 'Ferri & Figli', 'Bottega Rossi') ORDER BY name;
SELECT count(*) AS cards, sum(revenue_12m) AS revenue_12m FROM crm.customer_card;
SET ROLE crm_dora;
\echo 'As Dora (director): everything'
SELECT count(*) AS cards, sum(revenue_12m) AS revenue_12m FROM crm.customer_card;
RESET ROLE;

\echo
\echo 'Revenue by year and the sales trend: each aggregate covers what its reader'
\echo 'may see (an area manager''s revenue is her team''s).'
SET ROLE crm_luca;  SELECT 'luca' AS who, * FROM crm.revenue_by_year ORDER BY year;
SET ROLE crm_anna;  SELECT 'anna' AS who, * FROM crm.revenue_by_year ORDER BY year;
SET ROLE crm_dora;  SELECT 'dora' AS who, * FROM crm.revenue_by_year ORDER BY year;
SET ROLE crm_anna;
\echo 'Anna''s revenue by month (her team''s), since July:'
SELECT * FROM crm.revenue_by_month WHERE month >= date '2026-07-01' ORDER BY month;
\echo 'Anna''s sales trend by category, agent and province (this year against last):'
SELECT by, item, this_year, last_year FROM crm.sales_trend WHERE by IN ('category', 'agent', 'province')
 ORDER BY by, this_year DESC NULLS LAST;
SET ROLE crm_luca;
\echo 'Luca''s, by product (his own sales only):'
SELECT item AS product, this_year, last_year FROM crm.sales_trend WHERE by = 'product'
 ORDER BY this_year DESC NULLS LAST LIMIT 5;
RESET ROLE;

\echo
\echo 'Suppliers: managers see the buying terms (here Anna), agents nothing at all:'
SET ROLE crm_anna;  SELECT name, category, payment_terms FROM crm.supplier ORDER BY name;
SET ROLE crm_luca;  SELECT count(*) AS suppliers_luca_sees FROM crm.supplier;
SET ROLE crm_sara;  SELECT count(*) AS suppliers_sara_sees FROM crm.supplier;
RESET ROLE;

\echo
\echo 'This week''s work: Luca (from his laptop), Sara and Paolo record contacts,'
\echo 'offers and requests; Giulia records nothing.'
SET ROLE crm_luca;
INSERT INTO crm.contact_history (customer_id, account_owner_id, by_principal, by_function, channel, happened_at, notes)
SELECT id, owner_id, crmguard.current_principal(), 'sales', 'visit', now(), 'Walked the new cold store'
  FROM crm.customer WHERE name IN ('Novak Logistics', 'Farmacia Brera');
INSERT INTO crm.offer (customer_id, owner_id, product_id, amount, probability, offered_on)
SELECT c.id, c.owner_id, p.id, 400 * p.list_price, 60, current_date
  FROM crm.customer c, crm.product p WHERE c.name = 'Novak Logistics' AND p.sku = 'CLD-400';
SET ROLE crm_sara;
INSERT INTO crm.contact_history (customer_id, account_owner_id, by_principal, by_function, channel, happened_at, notes)
SELECT id, owner_id, crmguard.current_principal(), 'sales', 'call', now(), 'Returns policy explained'
  FROM crm.customer WHERE name = 'Bottega Rossi';
SET ROLE crm_paolo;
INSERT INTO crm.request (customer_id, owner_id, subject, received_at)
SELECT id, owner_id, 'Customs paperwork for Tunisia', now() FROM crm.customer WHERE name = 'Capitolina Foods';
UPDATE crm.offer SET probability = 80 WHERE customer_id = (SELECT id FROM crm.customer WHERE name = 'Capitolina Foods')
   AND outcome = 'open';
RESET ROLE;

\echo
\echo 'A revoked PC is cut off mid-session. Luca''s session is still attested;'
\echo 'from another connection Dora revokes the laptop (reported stolen):'
SELECT id AS novak, owner_id AS luca_id FROM crm.customer WHERE name = 'Novak Logistics' \gset
SET ROLE crm_luca;
SELECT count(*) AS before_revocation FROM crm.customer;
\! psql -X -q -At -c "SELECT '   ok: revoked device ' || d.id || ' (' || d.label || ')' FROM crmguard.device d, crmguard.revoke_device(d.id) WHERE d.label = 'luca-laptop'"
\echo 'Luca''s very next statements see nothing and may write nothing:'
SELECT count(*) AS after_revocation FROM crm.customer;
INSERT INTO crm.contact_history (customer_id, account_owner_id, by_principal, by_function, channel, happened_at)
VALUES (:novak, :luca_id, :luca_id, 'sales', 'call', now());
RESET ROLE;

\echo
\echo 'Who contributed this week, and who went quiet. Anna sees her team:'
SET ROLE crm_anna;
SELECT principal, target, action, n FROM crmguard.activity(now() - interval '7 days', now());
\echo 'Her team members with no contribution in 7 days:'
SELECT principal, coalesce(last_at::date::text, 'never') AS last_contribution FROM crmguard.inactive('7 days');
SET ROLE crm_marco;
\echo 'Marco sees his: Paolo worked, Giulia and Ivan went quiet'
SELECT principal, target, action, n FROM crmguard.activity(now() - interval '7 days', now());
SELECT principal, coalesce(last_at::date::text, 'never') AS last_contribution FROM crmguard.inactive('7 days');
SET ROLE crm_giulia;
\echo 'Giulia sees only herself, and nothing about the others (she recorded nothing,'
\echo 'so no row):'
SELECT * FROM crmguard.activity(now() - interval '7 days', now());
RESET ROLE;
SELECT pg_sleep(0.3) AS waited \gset
\echo 'The device trail in the audit log (with_device: entries made through a device):'
SELECT action, count(*), count(device) AS with_device FROM crmguard.audit
 WHERE action IN ('enrollment_code', 'register_device', 'enroll_refused', 'attest_device', 'attest_refused',
                  'revoke_device', 'track')
 GROUP BY action ORDER BY action;
\! rm -f /tmp/crmguard_demo_luca.key
