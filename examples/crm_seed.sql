-- Seed data: the sales organisation as crmguard principals, database roles
-- for the people the demo plays, and a few hundred rows of CRM history.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['crm_users', 'crm_dora', 'crm_anna', 'crm_marco', 'crm_luca',
                             'crm_sara', 'crm_paolo', 'crm_remo', 'crm_rita', 'crm_fiona',
                             'crm_patricie'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;
GRANT USAGE ON SCHEMA crm TO crm_users;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA crm TO crm_users;
GRANT crm_users TO crm_dora, crm_anna, crm_marco, crm_luca, crm_sara, crm_paolo,
                   crm_remo, crm_rita, crm_fiona, crm_patricie;
GRANT EXECUTE ON FUNCTION crmguard.issue_token(text, interval) TO crm_dora;

-- The DSA tree: director, area managers, agents; and the people around them
\o /dev/null
SELECT crmguard.add_principal('dora',  '{director,admin}', db_role => 'crm_dora');
SELECT crmguard.add_principal('anna',  '{area_manager}', 'dora', '{"zone": "Milano Nord"}', 'crm_anna');
SELECT crmguard.add_principal('marco', '{area_manager}', 'dora', '{"zone": "Roma Centro"}', 'crm_marco');
SELECT crmguard.add_principal('luca',  '{agent}', 'anna',  '{"zone": "Milano Nord"}', 'crm_luca');
SELECT crmguard.add_principal('sara',  '{agent}', 'anna',  '{"zone": "Milano Sud"}', 'crm_sara');
SELECT crmguard.add_principal('paolo', '{agent}', 'marco', '{"zone": "Roma Centro"}', 'crm_paolo');
SELECT crmguard.add_principal('giulia', '{agent}', 'marco', '{"zone": "Torino"}');
SELECT crmguard.add_principal('ivan',  '{implementation}', 'marco', '{"service_area": "Milano"}');
SELECT crmguard.add_principal('fiona', '{finance}', 'dora', db_role => 'crm_fiona');
SELECT crmguard.add_principal('mara',  '{marketing_head}', 'dora');
SELECT crmguard.add_principal('rita',  '{reviewer}', 'dora', db_role => 'crm_rita');
SELECT crmguard.add_principal('remo',  '{delivery_rep}', 'anna', '{"zone": "Milano Nord"}', 'crm_remo');
SELECT crmguard.add_principal('patricie', '{portal}', NULL,
    '{"contact_email": "patricie@novak-logistics.example", "customer_type": "Enterprise"}', 'crm_patricie');
SELECT crmguard.add_principal('pietro', '{portal}', NULL,
    '{"contact_email": "pietro@bottega-rossi.example", "customer_type": "SMB"}');

\o
CREATE FUNCTION pg_temp.p(who text) RETURNS bigint LANGUAGE sql STABLE
    AS $$ SELECT id FROM crmguard.principal WHERE name = who $$;

INSERT INTO crm.zone (name) VALUES ('Milano Nord'), ('Milano Sud'), ('Roma Centro'), ('Torino');

INSERT INTO crm.customer (name, customer_type, zone_id, owner_id, billing_city, phone, email)
SELECT c.name, c.type, z.id, pg_temp.p(c.owner), c.city, c.phone, c.email
  FROM (VALUES
    ('Novak Logistics',   'Enterprise', 'Milano Nord', 'luca',   'Milano', '+39 347 555 0123', 'info@novak-logistics.example'),
    ('Bottega Rossi',     'SMB',        'Milano Sud',  'sara',   'Milano', '+39 02 555 0188',  'pietro@bottega-rossi.example'),
    ('Ferri & Figli',     'SMB',        'Milano Nord', 'luca',   'Monza',  '+39 039 555 0101', 'ordini@ferri.example'),
    ('Capitolina Foods',  'Enterprise', 'Roma Centro', 'paolo',  'Roma',   '+39 06 555 0190',  'acquisti@capitolina.example'),
    ('Sabauda Meccanica', 'Enterprise', 'Torino',      'giulia', 'Torino', '+39 011 555 0142', 'info@sabauda.example'),
    ('Lupo Caffè',        'Consumer',   'Roma Centro', 'paolo',  'Roma',   '+39 06 555 0177',  NULL))
    AS c(name, type, zone, owner, city, phone, email)
  JOIN crm.zone z ON z.name = c.zone;

-- two hundred more customers, spread over the zones and their agents
INSERT INTO crm.customer (name, customer_type, zone_id, owner_id, billing_city, phone, email)
SELECT 'Cliente ' || g,
       (ARRAY['Enterprise', 'SMB', 'Consumer'])[1 + g % 3],
       z.id,
       pg_temp.p((ARRAY['luca', 'sara', 'paolo', 'giulia'])[1 + g % 4]),
       (ARRAY['Milano', 'Milano', 'Roma', 'Torino'])[1 + g % 4],
       '+39 3' || lpad((g * 7919 % 1000000000)::text, 9, '0'),
       'cliente' || g || '@example.com'
  FROM generate_series(1, 200) g
  JOIN crm.zone z ON z.name = (ARRAY['Milano Nord', 'Milano Sud', 'Roma Centro', 'Torino'])[1 + g % 4];

INSERT INTO crm.contact (customer_id, full_name, phone, email, portal_login)
SELECT id, 'Patricie Novak', '+39 347 555 0123', 'patricie@novak-logistics.example', 'patricie'
  FROM crm.customer WHERE name = 'Novak Logistics';
INSERT INTO crm.contact (customer_id, full_name, phone, email, portal_login)
SELECT id, 'Pietro Rossi', '+39 02 555 0188', 'pietro@bottega-rossi.example', 'pietro'
  FROM crm.customer WHERE name = 'Bottega Rossi';
INSERT INTO crm.contact (customer_id, full_name, phone, email)
SELECT id, 'Referente ' || name, phone, email FROM crm.customer WHERE id > 2;

INSERT INTO crm.product (name, sku, category, tier, list_price) VALUES
    ('Pallet tracking tag',       'TRK-100', 'Tracking',  'Standard',   12.50),
    ('Fleet telematics box',      'TEL-200', 'Telematics','Standard',  340.00),
    ('Route planner seat',        'RTE-300', 'Software',  'Standard',   45.00),
    ('Cold chain sensor',         'CLD-400', 'Tracking',  'Standard',   89.00),
    ('Warehouse API access',      'API-500', 'Software',  'Enterprise', 1200.00),
    ('Dedicated delivery slot',   'SLT-600', 'Service',   'Standard',   25.00),
    ('Enterprise SLA 24/7',       'SLA-700', 'Service',   'Enterprise', 5000.00),
    ('Customs brokerage',         'CUS-800', 'Service',   'Standard',  150.00),
    ('Private fleet integration', 'INT-900', 'Software',  'Enterprise', 8000.00),
    ('Returns handling',          'RET-950', 'Service',   'Standard',   18.00);

INSERT INTO crm.deal (customer_id, owner_id, title, stage, amount, discount_pct, status)
SELECT c.id, c.owner_id, d.title, d.stage, d.amount, d.discount, d.status
  FROM (VALUES
    ('Novak Logistics',   'Cold chain rollout',        'Negotiation', 48000.00, 25.00, 'Draft'),
    ('Novak Logistics',   'Telematics for 40 trucks',  'Approved',    13600.00,  5.00, 'Approved'),
    ('Bottega Rossi',     'Delivery slots 2027',       'Proposal',     3000.00,  0.00, 'Draft'),
    ('Capitolina Foods',  'Customs and returns',       'Prospecting', 21000.00,  0.00, 'Draft'),
    ('Sabauda Meccanica', 'Private fleet integration', 'Closed Won',  80000.00, 10.00, 'Approved'),
    ('Ferri & Figli',     'Tracking tags',             'Closed Lost',  1250.00,  0.00, 'Closed'))
    AS d(customer, title, stage, amount, discount, status)
  JOIN crm.customer c ON c.name = d.customer;

INSERT INTO crm.quote (deal_id, contact_id, stage, total, valid_until)
SELECT d.id, ct.id, q.stage, q.total, DATE '2027-03-31'
  FROM (VALUES ('Cold chain rollout', 'Negotiation', 36000.00),
               ('Telematics for 40 trucks', 'Approved', 12920.00))
       AS q(deal, stage, total)
  JOIN crm.deal d ON d.title = q.deal
  JOIN crm.contact ct ON ct.full_name = 'Patricie Novak';
INSERT INTO crm.quote_line (quote_id, product_id, qty, unit_price)
SELECT q.id, p.id, 40, p.list_price * 0.95
  FROM crm.quote q JOIN crm.product p ON p.sku = 'TEL-200'
 WHERE q.stage = 'Approved';

-- deliveries of the week: remo's round in Milano Nord, and the others
INSERT INTO crm.delivery_note (customer_id, owner_id, contact_phone, address, status)
SELECT c.id, pg_temp.p('remo'), c.phone, 'Via ' || c.name || ' 1, ' || c.billing_city, s.status
  FROM crm.customer c
 CROSS JOIN (VALUES ('Out for delivery'), ('Scheduled')) AS s(status)
 WHERE c.name IN ('Novak Logistics', 'Ferri & Figli', 'Bottega Rossi');
INSERT INTO crm.delivery_note (customer_id, owner_id, contact_phone, address, status, delivered_at)
SELECT id, owner_id, phone, 'Magazzino ' || id, 'Delivered', now() - interval '3 days'
  FROM crm.customer WHERE id % 10 = 0;

INSERT INTO crm.activity (customer_id, contact_id, owner_id, kind, happened_at, notes)
SELECT c.id, NULL, c.owner_id, (ARRAY['visit', 'call', 'email', 'meeting'])[1 + g % 4],
       timestamptz '2026-09-01' + (g || ' hours')::interval, 'Contatto n. ' || g
  FROM generate_series(1, 500) g
  JOIN crm.customer c ON c.id = 1 + g % 206;

INSERT INTO crm.campaign (name, budget, status, owner_id) VALUES
    ('Spring cold chain fair', 18000.00, 'Planned', pg_temp.p('mara')),
    ('Roma logistics breakfast', 4500.00, 'Planned', pg_temp.p('mara'));

INSERT INTO crm.lead (full_name, company, email, phone, source) VALUES
    ('Elena Bassi', 'Bassi Trasporti', 'elena@bassi.example', '+39 333 555 0001', 'web form'),
    ('Marco Verdi', 'Verdi SRL', 'marco@verdi.example', '+39 333 555 0002', 'trade fair'),
    ('Test Test', NULL, 'asdf@asdf', '123', 'web form');
