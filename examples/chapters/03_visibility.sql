-- Chapter 3: who sees which rows -- the portal, the service area, the sales hierarchy
\set ON_ERROR_STOP 0
\set SHOW_CONTEXT never
\set VERBOSITY default
\echo '== Chapter 3: row visibility criteria'
\echo
\echo 'The customer portal reads the same tables as the sales team. Patricie (Novak'
\echo 'Logistics) must see her approved quotes, never an internal negotiation stage.'
\echo 'Portal principals carry the id of their contact, set by the DBA:'
UPDATE crmguard.principal p
   SET attributes = p.attributes || jsonb_build_object('contact_id', c.id)
  FROM crm.contact c WHERE c.portal_login = p.name;
SELECT name, attributes FROM crmguard.principal WHERE 'portal' = ANY (roles) ORDER BY name;
\echo 'The rule: principals with CRM role portal see the quotes of their own contact,'
\echo 'in an approved stage. crmguard.expose() returns the new rule''s id:'

SELECT crmguard.expose('crm.quote', 'portal: own approved quotes', 'portal',
    '{"all": [{"field": "contact_id", "op": "=", "principal": "contact_id"},
              {"field": "stage", "op": "in", "value": ["Approved", "Sent", "Accepted"]},
              {"not": {"field": "stage", "op": "=", "value": "Negotiation"}}]}') AS rule_id;
\echo
\echo 'The DBA (a superuser, who bypasses row security) sees two quotes of Patricie''s,'
\echo 'one in negotiation; Patricie herself sees only the approved one:'
SELECT q.id, q.stage, q.total FROM crm.quote q
  JOIN crm.contact c ON c.id = q.contact_id WHERE c.portal_login = 'patricie' ORDER BY q.id;
SET ROLE crm_patricie;
SELECT id, stage, total FROM crm.quote ORDER BY id;
RESET ROLE;

\echo
\echo 'Products: the Standard catalogue is public to every portal user; Enterprise'
\echo 'products only to principals whose customer_type is Enterprise (a field match'
\echo 'of the product tier against the principal''s attribute). Agents see it all.'
SELECT crmguard.expose('crm.product', 'portal: standard catalogue', 'portal',
    '{"field": "tier", "op": "=", "value": "Standard"}') AS rule_id;
SELECT crmguard.expose('crm.product', 'portal: enterprise catalogue', 'portal',
    '{"all": [{"field": "tier", "op": "=", "value": "Enterprise"},
              {"field": "tier", "op": "=", "principal": "customer_type"}]}') AS rule_id;
SELECT crmguard.expose_public('crm.product', 'agent') AS rule_id;
\echo 'Patricie (Enterprise) sees both tiers, Pietro (SMB) the Standard one only:'
SET ROLE crm_patricie;
SELECT 'patricie (Enterprise)' AS who, count(*) FILTER (WHERE tier = 'Standard') AS standard,
       count(*) FILTER (WHERE tier = 'Enterprise') AS enterprise FROM crm.product;
SET ROLE crm_pietro;
SELECT 'pietro (SMB)' AS who, count(*) FILTER (WHERE tier = 'Standard') AS standard,
       count(*) FILTER (WHERE tier = 'Enterprise') AS enterprise FROM crm.product;
RESET ROLE;

\echo
\echo 'The DSA hierarchy on customers: an agent sees the accounts he owns, an area'
\echo 'manager those of everyone below her, the director (role admin) everything.'
\echo 'Ivan, the implementation agent, sees the customers billed in his service area.'
SELECT crmguard.expose_by_owner('crm.customer', 'owner_id', 'agent') AS rule_id;
SELECT crmguard.expose_by_owner('crm.customer', 'owner_id', 'area_manager') AS rule_id;
SELECT crmguard.expose('crm.customer', 'implementation: service area', 'implementation',
    '{"field": "billing_city", "op": "=", "principal": "service_area"}') AS rule_id;
\echo 'The same SELECT count(*) FROM crm.customer, run by each of them (Pietro, a'
\echo 'portal user, has no rule on customers, so he sees none):'
SET ROLE crm_luca;   SELECT 'luca (agent)' AS who, count(*) AS customers FROM crm.customer;
SET ROLE crm_anna;   SELECT 'anna (area manager)' AS who, count(*) AS customers FROM crm.customer;
SET ROLE crm_dora;   SELECT 'dora (director)' AS who, count(*) AS customers FROM crm.customer;
SET ROLE crm_ivan;   SELECT 'ivan (implementation)' AS who, count(*) AS customers,
                            string_agg(DISTINCT billing_city, ', ') AS cities FROM crm.customer;
SET ROLE crm_pietro; SELECT 'pietro (portal)' AS who, count(*) AS customers FROM crm.customer;
RESET ROLE;

\echo
\echo 'Why can Anna see Bottega Rossi (owned by Sara, who reports to her)?'
SELECT id AS bottega FROM crm.customer WHERE name = 'Bottega Rossi' \gset
SELECT * FROM crmguard.why_visible('crm.customer', :'bottega', 'anna');
\echo 'And the predicate that decides for her, as the planner runs it with her values:'
SELECT crmguard.visibility_predicate('crm.customer', 'anna');
\echo 'The policy her statements get: only the rules of her roles, her team read once'
\echo 'per statement and hashed (on a large table it becomes an index condition on'
\echo 'owner_id; on these 212 rows a sequential scan is cheaper):'
SET ROLE crm_anna;
EXPLAIN (COSTS OFF) SELECT * FROM crm.customer;
RESET ROLE;

\echo
\echo 'Luca cannot learn about Bottega Rossi, not even through why_visible, and his'
\echo 'UPDATE of it changes nothing (it returns no row):'
SET ROLE crm_luca;
SELECT * FROM crmguard.why_visible('crm.customer', :'bottega');
UPDATE crm.customer SET phone = NULL WHERE id = :bottega RETURNING id;
RESET ROLE;

\echo
\echo 'And the owner of the table cannot switch row-level security off (for this, the'
\echo 'demo hands crm.customer to an ordinary role, crm_owner_demo, and back):'
CREATE ROLE crm_owner_demo IN ROLE crm_users;
ALTER TABLE crm.customer OWNER TO crm_owner_demo;
SET ROLE crm_owner_demo;
ALTER TABLE crm.customer DISABLE ROW LEVEL SECURITY;
CREATE POLICY everything ON crm.customer USING (true);
\echo 'The owner itself sees no customer: row security is forced on the table, so it'
\echo 'binds the owner too, and the owner''s role maps to no principal (nobody):'
SELECT count(*) AS customers_the_owner_sees FROM crm.customer;
RESET ROLE;
ALTER TABLE crm.customer OWNER TO CURRENT_USER;
DROP ROLE crm_owner_demo;
SELECT pg_sleep(0.3) AS waited \gset
\echo 'The audit log: each rule, and the two refused attempts:'
SELECT action, count(*) FROM crmguard.audit
 WHERE action LIKE 'expose%' OR action LIKE 'visibility%' GROUP BY action ORDER BY action;
