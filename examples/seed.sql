-- Seed data for the demo CRM (examples/schema.sql), loaded into a fresh
-- database after CREATE EXTENSION crmguard.
--
-- The people of Consegne Italia become crmguard principals; each gets a
-- database role (crm_<name>) so the demo can SET ROLE to them. Then the CRM
-- is filled: a dozen named accounts the demo talks about, two hundred more
-- generated ones, and a year of contact history. Everything is
-- deterministic: no random(), the same ids on every load.

-- ---------------------------------------------------------------------------
-- Database roles: one per person, all members of the group role crm_users
-- ---------------------------------------------------------------------------

DO $$
DECLARE
    r text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'crm_users') THEN
        CREATE ROLE crm_users NOLOGIN;
    END IF;
    FOREACH r IN ARRAY ARRAY['crm_dora', 'crm_anna', 'crm_marco', 'crm_luca', 'crm_sara',
                             'crm_paolo', 'crm_giulia', 'crm_ivan', 'crm_fiona', 'crm_mara',
                             'crm_rita', 'crm_remo', 'crm_patricie', 'crm_pietro'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
        -- roles are cluster-wide: another database may have made them already
        IF NOT EXISTS (SELECT 1 FROM pg_auth_members m
                         JOIN pg_roles g ON g.oid = m.roleid
                         JOIN pg_roles u ON u.oid = m.member
                        WHERE g.rolname = 'crm_users' AND u.rolname = r) THEN
            EXECUTE format('GRANT crm_users TO %I', r);
        END IF;
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA crm TO crm_users;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA crm TO crm_users;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA crm TO crm_users;

-- ---------------------------------------------------------------------------
-- Principals, top-down (a manager must exist before the people below):
--
--   dora         director, admin
--   ├── anna     area manager, Milano Nord
--   │   ├── luca     agent, Milano Nord
--   │   ├── sara     agent, Milano Sud
--   │   └── remo     delivery rep, Milano Nord
--   ├── marco    area manager, Roma Centro
--   │   ├── paolo    agent, Roma Centro
--   │   ├── giulia   agent, Torino
--   │   └── ivan     implementation, service area Milano
--   ├── fiona    finance
--   ├── mara     head of marketing
--   └── rita     reviewer of incoming data
--   patricie, pietro   customers on the portal (Novak Logistics, Bottega Rossi)
-- ---------------------------------------------------------------------------

DO $$
BEGIN
    PERFORM crmguard.add_principal('dora',   '{director,admin}', db_role => 'crm_dora');

    PERFORM crmguard.add_principal('anna',   '{area_manager}', 'dora',
                                   '{"zone": "Milano Nord"}', 'crm_anna');
    PERFORM crmguard.add_principal('marco',  '{area_manager}', 'dora',
                                   '{"zone": "Roma Centro"}', 'crm_marco');

    PERFORM crmguard.add_principal('luca',   '{agent}', 'anna',  '{"zone": "Milano Nord", "email": "luca@crm.example"}', 'crm_luca');
    PERFORM crmguard.add_principal('sara',   '{agent}', 'anna',  '{"zone": "Milano Sud", "email": "sara@crm.example"}',  'crm_sara');
    PERFORM crmguard.add_principal('paolo',  '{agent}', 'marco', '{"zone": "Roma Centro", "email": "paolo@crm.example"}', 'crm_paolo');
    PERFORM crmguard.add_principal('giulia', '{agent}', 'marco', '{"zone": "Torino", "email": "giulia@crm.example"}',      'crm_giulia');

    PERFORM crmguard.add_principal('ivan',   '{implementation}', 'marco',
                                   '{"service_area": "Milano"}', 'crm_ivan');
    PERFORM crmguard.add_principal('fiona',  '{finance}',        'dora', db_role => 'crm_fiona');
    PERFORM crmguard.add_principal('mara',   '{marketing_head}', 'dora', db_role => 'crm_mara');
    PERFORM crmguard.add_principal('rita',   '{reviewer}',       'dora', db_role => 'crm_rita');
    PERFORM crmguard.add_principal('remo',   '{delivery_rep}',   'anna',
                                   '{"zone": "Milano Nord"}', 'crm_remo');

    PERFORM crmguard.add_principal('patricie', '{portal}', NULL,
        '{"contact_email": "patricie@novak-logistics.example", "customer_type": "Enterprise"}',
        'crm_patricie');
    PERFORM crmguard.add_principal('pietro',   '{portal}', NULL,
        '{"contact_email": "pietro@bottega-rossi.example", "customer_type": "SMB"}',
        'crm_pietro');
END
$$;

-- ---------------------------------------------------------------------------
-- Look-up helpers for this session only: a misspelt name fails loudly
-- ---------------------------------------------------------------------------

CREATE FUNCTION pg_temp.principal_id(who text) RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE r bigint;
BEGIN SELECT p.id INTO STRICT r FROM crmguard.principal p WHERE p.name = who; RETURN r; END $$;

CREATE FUNCTION pg_temp.zone_id(zone text) RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE r bigint;
BEGIN SELECT z.id INTO STRICT r FROM crm.zone z WHERE z.name = zone; RETURN r; END $$;

CREATE FUNCTION pg_temp.customer_id(customer text) RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE r bigint;
BEGIN SELECT c.id INTO STRICT r FROM crm.customer c WHERE c.name = customer; RETURN r; END $$;

CREATE FUNCTION pg_temp.contact_id(person text) RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE r bigint;
BEGIN SELECT c.id INTO STRICT r FROM crm.contact c WHERE c.full_name = person; RETURN r; END $$;

CREATE FUNCTION pg_temp.deal_id(deal text) RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE r bigint;
BEGIN SELECT d.id INTO STRICT r FROM crm.deal d WHERE d.title = deal; RETURN r; END $$;

-- ---------------------------------------------------------------------------
-- Territory and the accounts the demo talks about
-- ---------------------------------------------------------------------------

INSERT INTO crm.zone (name) VALUES ('Milano Nord'), ('Milano Sud'), ('Roma Centro'), ('Torino');

INSERT INTO crm.customer (name, customer_type, zone_id, owner_id, billing_city, phone, email, created_at) VALUES
    ('Novak Logistics',   'Enterprise', pg_temp.zone_id('Milano Nord'), pg_temp.principal_id('luca'),
     'Milano', '+39 02 555 0140', 'info@novak-logistics.example', '2022-03-14 10:00+01'),
    ('Bottega Rossi',     'SMB',        pg_temp.zone_id('Milano Sud'),  pg_temp.principal_id('sara'),
     'Milano', '+39 02 555 0188', 'info@bottega-rossi.example', '2022-05-02 11:30+02'),
    ('Ferri & Figli',     'SMB',        pg_temp.zone_id('Milano Nord'), pg_temp.principal_id('luca'),
     'Monza', '+39 039 555 0101', 'ordini@ferri-figli.example', '2022-06-20 09:15+02'),
    ('Farmacia Brera',    'SMB',        pg_temp.zone_id('Milano Nord'), pg_temp.principal_id('luca'),
     'Milano', '+39 02 555 0144', 'farmacia@brera.example', '2022-09-05 16:40+02'),
    ('Officine Lambro',   'Enterprise', pg_temp.zone_id('Milano Sud'),  pg_temp.principal_id('sara'),
     'San Donato Milanese', '+39 02 555 0177', 'acquisti@officine-lambro.example', '2022-10-11 08:50+02'),
    ('Chiara Colombo',    'Consumer',   pg_temp.zone_id('Milano Sud'),  pg_temp.principal_id('sara'),
     'Milano', '+39 348 555 0160', 'chiara.colombo@mail.example', '2023-01-09 18:05+01'),
    ('Capitolina Foods',  'Enterprise', pg_temp.zone_id('Roma Centro'), pg_temp.principal_id('paolo'),
     'Roma', '+39 06 555 0190', 'acquisti@capitolina-foods.example', '2022-04-19 10:20+02'),
    ('Trattoria da Lupo', 'SMB',        pg_temp.zone_id('Roma Centro'), pg_temp.principal_id('paolo'),
     'Roma', '+39 06 555 0177', 'info@trattoria-lupo.example', '2022-07-27 15:00+02'),
    ('Marta Ricci',       'Consumer',   pg_temp.zone_id('Roma Centro'), pg_temp.principal_id('paolo'),
     'Roma', '+39 349 555 0112', 'marta.ricci@mail.example', '2023-03-30 12:45+02'),
    ('Sabauda Meccanica', 'Enterprise', pg_temp.zone_id('Torino'),      pg_temp.principal_id('giulia'),
     'Torino', '+39 011 555 0142', 'info@sabauda-meccanica.example', '2022-02-08 09:00+01'),
    ('Caffè Mole',        'SMB',        pg_temp.zone_id('Torino'),      pg_temp.principal_id('giulia'),
     'Torino', '+39 011 555 0155', 'ciao@caffe-mole.example', '2022-11-23 07:30+01'),
    ('Cantine Langhe',    'SMB',        pg_temp.zone_id('Torino'),      pg_temp.principal_id('giulia'),
     'Alba', '+39 0173 555 0108', 'cantina@cantine-langhe.example', '2023-05-15 17:10+02');

-- Patricie and Pietro use the portal: their portal principals carry the same e-mail
INSERT INTO crm.contact (customer_id, full_name, phone, email, portal_login) VALUES
    (pg_temp.customer_id('Novak Logistics'),   'Patricie Novak',  '+39 347 555 0123',
     'patricie@novak-logistics.example', 'patricie'),
    (pg_temp.customer_id('Novak Logistics'),   'Tomáš Horák',     '+39 347 555 0124',
     'tomas.horak@novak-logistics.example', NULL),
    (pg_temp.customer_id('Bottega Rossi'),     'Pietro Rossi',    '+39 333 555 0188',
     'pietro@bottega-rossi.example', 'pietro'),
    (pg_temp.customer_id('Ferri & Figli'),     'Giorgio Ferri',   '+39 335 555 0101',
     'giorgio@ferri-figli.example', NULL),
    (pg_temp.customer_id('Farmacia Brera'),    'Elena Sala',      '+39 339 555 0144',
     'elena.sala@brera.example', NULL),
    (pg_temp.customer_id('Officine Lambro'),   'Davide Galli',    '+39 340 555 0177',
     'd.galli@officine-lambro.example', NULL),
    (pg_temp.customer_id('Chiara Colombo'),    'Chiara Colombo',  '+39 348 555 0160',
     'chiara.colombo@mail.example', NULL),
    (pg_temp.customer_id('Capitolina Foods'),  'Francesca Marini', '+39 338 555 0190',
     'f.marini@capitolina-foods.example', NULL),
    (pg_temp.customer_id('Trattoria da Lupo'), 'Lupo Bernardi',   '+39 329 555 0177',
     'lupo@trattoria-lupo.example', NULL),
    (pg_temp.customer_id('Marta Ricci'),       'Marta Ricci',     '+39 349 555 0112',
     'marta.ricci@mail.example', NULL),
    (pg_temp.customer_id('Sabauda Meccanica'), 'Alberto Ferrero', '+39 345 555 0142',
     'a.ferrero@sabauda-meccanica.example', NULL),
    (pg_temp.customer_id('Caffè Mole'),        'Silvia Bosio',    '+39 346 555 0155',
     'silvia@caffe-mole.example', NULL),
    (pg_temp.customer_id('Cantine Langhe'),    'Enrico Rinaldi',  '+39 347 555 0108',
     'enrico@cantine-langhe.example', NULL);

-- ---------------------------------------------------------------------------
-- Two hundred more accounts, spread over the zones; each is owned by the
-- agent whose principal attribute "zone" is the account's zone
-- ---------------------------------------------------------------------------

INSERT INTO crm.customer (name, customer_type, zone_id, owner_id, billing_city, phone, email, created_at)
SELECT g.name, g.customer_type, z.id, agent.id, g.city, g.phone,
       CASE WHEN g.customer_type = 'Consumer'
            THEN lower(replace(g.name, ' ', '.')) || '@mail.example'
            ELSE 'info@' || regexp_replace(lower(g.name), '[^a-z0-9]+', '-', 'g')
                 || '.example'
       END,
       g.created_at
  FROM (SELECT n,
               CASE WHEN n % 7 = 0 THEN 'Consumer' WHEN n % 11 = 0 THEN 'Enterprise' ELSE 'SMB' END
                   AS customer_type,
               CASE WHEN n % 7 = 0
                    THEN (ARRAY['Giulia', 'Matteo', 'Francesca', 'Lorenzo', 'Alessia', 'Andrea',
                                'Sofia', 'Davide', 'Martina', 'Simone', 'Chiara', 'Federico',
                                'Sara', 'Riccardo', 'Valentina', 'Tommaso', 'Elisa', 'Stefano',
                                'Paola', 'Gabriele'])[1 + (n - 1) % 20]
                    ELSE (ARRAY['Trasporti', 'Ferramenta', 'Panificio', 'Studio Dentistico',
                                'Autofficina', 'Farmacia', 'Hotel', 'Ristorante', 'Ortofrutta',
                                'Tipografia'])[1 + (n - 1) % 10]
               END || ' ' ||
               (ARRAY['Bianchi', 'Colombo', 'Esposito', 'Romano', 'Gallo', 'Conti', 'De Luca',
                      'Mancini', 'Costa', 'Giordano', 'Rizzo', 'Lombardi', 'Moretti', 'Barbieri',
                      'Fontana', 'Santoro', 'Mariani', 'Rinaldi', 'Caruso', 'Ferrara'])[1 + (n - 1) / 10 % 20]
                   AS name,
               (ARRAY['Milano Nord', 'Milano Sud', 'Roma Centro', 'Torino'])[1 + n % 4] AS zone,
               CASE n % 4
                   WHEN 0 THEN (ARRAY['Milano', 'Monza', 'Sesto San Giovanni', 'Cinisello Balsamo'])[1 + n / 4 % 4]
                   WHEN 1 THEN (ARRAY['Milano', 'San Donato Milanese', 'Rozzano', 'Pavia'])[1 + n / 4 % 4]
                   WHEN 2 THEN 'Roma'
                   ELSE        (ARRAY['Torino', 'Moncalieri', 'Rivoli', 'Alba'])[1 + n / 4 % 4]
               END AS city,
               CASE WHEN n % 7 = 0
                    THEN '+39 3' || (20 + n % 80) || ' 555 ' || lpad((2000 + n)::text, 4, '0')
                    ELSE '+39 ' || (ARRAY['02', '02', '06', '011'])[1 + n % 4] || ' 555 '
                         || lpad((2000 + n)::text, 4, '0')
               END AS phone,
               timestamptz '2023-06-01 09:00+02' + n * interval '3 days 5 hours' AS created_at
          FROM generate_series(1, 200) AS n) AS g
  JOIN crm.zone z ON z.name = g.zone
  JOIN crmguard.principal agent ON agent.attributes ->> 'zone' = z.name
                               AND agent.roles @> '{agent}'
 ORDER BY g.n;

-- one contact each: consumers are their own contact
INSERT INTO crm.contact (customer_id, full_name, phone, email)
SELECT c.id, p.full_name,
       CASE WHEN c.customer_type = 'Consumer' THEN c.phone
            ELSE '+39 3' || (30 + c.id % 70) || ' 555 ' || lpad((3000 + c.id)::text, 4, '0')
       END,
       CASE WHEN c.customer_type = 'Consumer' THEN c.email
            ELSE lower(replace(p.full_name, ' ', '.')) || '@'
                 || split_part(c.email, '@', 2)
       END
  FROM crm.customer c
 CROSS JOIN LATERAL (
       SELECT CASE WHEN c.customer_type = 'Consumer' THEN c.name
                   ELSE (ARRAY['Luisa', 'Marco', 'Anna', 'Pietro', 'Roberta', 'Gianni', 'Laura',
                               'Fabio', 'Ilaria', 'Massimo'])[1 + c.id % 10] || ' ' ||
                        (ARRAY['Ferri', 'Galli', 'Longo', 'Leone', 'Martini', 'Vitale', 'Serra',
                               'Bruno', 'Pellegrini', 'Marchetti', 'Villa', 'Testa'])[1 + c.id * 7 % 12]
              END AS full_name) AS p
 WHERE c.id > (SELECT max(id) FROM crm.customer WHERE name = 'Cantine Langhe')
 ORDER BY c.id;

-- ---------------------------------------------------------------------------
-- Catalogue
-- ---------------------------------------------------------------------------

INSERT INTO crm.product (name, sku, category, tier, list_price, public) VALUES
    ('Pallet tracking tag',       'TRK-100', 'Tracking',   'Standard',      12.50, true),
    ('Cold chain sensor',         'CLD-400', 'Tracking',   'Standard',      89.00, true),
    ('Fleet telematics box',      'TEL-200', 'Telematics', 'Standard',     340.00, true),
    ('Route planner seat',        'RTE-300', 'Software',   'Standard',      45.00, true),
    ('Dedicated delivery slot',   'SLT-600', 'Service',    'Standard',      25.00, true),
    ('Returns handling',          'RET-950', 'Service',    'Standard',      18.00, true),
    ('Customs brokerage',         'CUS-800', 'Service',    'Standard',     150.00, true),
    ('Warehouse API access',      'API-500', 'Software',   'Enterprise',  1200.00, true),
    ('Enterprise SLA 24/7',       'SLA-700', 'Service',    'Enterprise',  5000.00, true),
    ('Private fleet integration', 'INT-900', 'Software',   'Enterprise',  8000.00, false),
    ('Drone delivery pilot',      'DRN-990', 'Service',    'Enterprise', 15000.00, false);

-- ---------------------------------------------------------------------------
-- Deals (amount at list price) and their quotes. "Cold chain rollout" carries
-- a 25% discount: the kind of deal an area manager should have to approve.
-- ---------------------------------------------------------------------------

INSERT INTO crm.deal (customer_id, owner_id, title, stage, amount, discount_pct, status)
SELECT c.id, c.owner_id, d.title, d.stage, d.amount, d.discount_pct, d.status
  FROM (VALUES
    (1,  'Novak Logistics',   'Cold chain rollout',         'Negotiation', 40600.00, 25.00, 'Draft'),
    (2,  'Novak Logistics',   'Telematics for 40 trucks',   'Approved',    13600.00,  5.00, 'Approved'),
    (3,  'Bottega Rossi',     'Delivery slots and returns', 'Proposal',     6600.00,  0.00, 'Draft'),
    (4,  'Ferri & Figli',     'Pallet tags',                'Closed Lost',  1250.00,  0.00, 'Closed'),
    (5,  'Farmacia Brera',    'Cold chain for medicines',   'Prospecting',  1780.00,  0.00, 'Draft'),
    (6,  'Officine Lambro',   'Warehouse API and SLA',      'Proposal',     6200.00, 10.00, 'Draft'),
    (7,  'Capitolina Foods',  'Customs and returns',        'Prospecting', 21000.00,  0.00, 'Draft'),
    (8,  'Trattoria da Lupo', 'Route planner',              'Closed Won',     90.00,  0.00, 'Closed'),
    (9,  'Sabauda Meccanica', 'Private fleet integration',  'Closed Won',  16500.00, 10.00, 'Closed'),
    (10, 'Caffè Mole',        'Morning delivery slots',     'Negotiation',  1000.00,  5.00, 'Draft'),
    (11, 'Cantine Langhe',    'Cold chain for wine',        'Proposal',     5340.00,  0.00, 'Draft'))
    AS d(n, customer, title, stage, amount, discount_pct, status)
  JOIN crm.customer c ON c.name = d.customer
 ORDER BY d.n;

-- Patricie's two quotes come first: one still in negotiation, one approved
INSERT INTO crm.quote (deal_id, contact_id, stage, valid_until) VALUES
    (pg_temp.deal_id('Cold chain rollout'),         pg_temp.contact_id('Patricie Novak'),  'Negotiation', current_date + 30),
    (pg_temp.deal_id('Telematics for 40 trucks'),   pg_temp.contact_id('Patricie Novak'),  'Approved',    current_date + 45),
    (pg_temp.deal_id('Delivery slots and returns'), pg_temp.contact_id('Pietro Rossi'),    'Draft',       current_date + 30),
    (pg_temp.deal_id('Private fleet integration'),  pg_temp.contact_id('Alberto Ferrero'), 'Accepted',    current_date - 60),
    (pg_temp.deal_id('Warehouse API and SLA'),      pg_temp.contact_id('Davide Galli'),    'Sent',        current_date + 20);

-- lines at the deal's discounted price; a quote's total is the sum of its lines
INSERT INTO crm.quote_line (quote_id, product_id, qty, unit_price)
SELECT q.id, p.id, l.qty, round(p.list_price * (100 - d.discount_pct) / 100, 2)
  FROM (VALUES
    (1, 'Cold chain rollout',         'CLD-400', 400),
    (2, 'Cold chain rollout',         'SLA-700',   1),
    (3, 'Telematics for 40 trucks',   'TEL-200',  40),
    (4, 'Delivery slots and returns', 'SLT-600', 120),
    (5, 'Delivery slots and returns', 'RET-950', 200),
    (6, 'Private fleet integration',  'INT-900',   1),
    (7, 'Private fleet integration',  'TEL-200',  25),
    (8, 'Warehouse API and SLA',      'API-500',   1),
    (9, 'Warehouse API and SLA',      'SLA-700',   1))
    AS l(n, deal, sku, qty)
  JOIN crm.deal d ON d.title = l.deal
  JOIN crm.quote q ON q.deal_id = d.id
  JOIN crm.product p ON p.sku = l.sku
 ORDER BY l.n;

UPDATE crm.quote q
   SET total = (SELECT sum(ql.qty * ql.unit_price) FROM crm.quote_line ql WHERE ql.quote_id = q.id);

-- ---------------------------------------------------------------------------
-- Deliveries. Remo delivers in Milano Nord; elsewhere the agents still
-- deliver themselves. contact_phone is where the confirmation SMS goes.
-- ---------------------------------------------------------------------------

INSERT INTO crm.delivery_note (customer_id, owner_id, contact_phone, address, status, delivered_at) VALUES
    (pg_temp.customer_id('Novak Logistics'),   pg_temp.principal_id('remo'),   '+39 347 555 0123',
     'Via Gallarate 184, 20151 Milano',          'Out for delivery', NULL),
    (pg_temp.customer_id('Ferri & Figli'),     pg_temp.principal_id('remo'),   '+39 335 555 0101',
     'Via Borgazzi 27, 20900 Monza',             'Out for delivery', NULL),
    (pg_temp.customer_id('Farmacia Brera'),    pg_temp.principal_id('remo'),   '+39 339 555 0144',
     'Via Brera 12, 20121 Milano',               'Scheduled', NULL),
    (pg_temp.customer_id('Novak Logistics'),   pg_temp.principal_id('remo'),   '+39 347 555 0124',
     'Via Gallarate 184, 20151 Milano',          'Scheduled', NULL),
    (pg_temp.customer_id('Novak Logistics'),   pg_temp.principal_id('remo'),   '+39 347 555 0123',
     'Via Gallarate 184, 20151 Milano',          'Delivered', '2026-11-16 10:40+01'),
    (pg_temp.customer_id('Bottega Rossi'),     pg_temp.principal_id('sara'),   '+39 333 555 0188',
     'Corso di Porta Ticinese 45, 20123 Milano', 'Scheduled', NULL),
    (pg_temp.customer_id('Capitolina Foods'),  pg_temp.principal_id('paolo'),  '+39 338 555 0190',
     'Via Tiburtina 1072, 00156 Roma',           'Delivered', '2026-11-18 08:15+01'),
    (pg_temp.customer_id('Sabauda Meccanica'), pg_temp.principal_id('giulia'), '+39 345 555 0142',
     'Corso Regina Margherita 250, 10144 Torino', 'Failed', NULL),
    (pg_temp.customer_id('Caffè Mole'),        pg_temp.principal_id('giulia'), '+39 346 555 0155',
     'Via Montebello 20, 10124 Torino',          'Scheduled', NULL);
-- the customer's e-mail on record receives the confirmation codes
UPDATE crm.delivery_note d SET contact_email = c.email FROM crm.customer c WHERE c.id = d.customer_id;

-- ---------------------------------------------------------------------------
-- Contact history: a few remembered visits, then a year of routine
-- ---------------------------------------------------------------------------

INSERT INTO crm.activity (customer_id, contact_id, owner_id, kind, happened_at, notes) VALUES
    (pg_temp.customer_id('Novak Logistics'),   pg_temp.contact_id('Patricie Novak'),  pg_temp.principal_id('luca'),
     'visit',   '2026-10-06 10:00+02', 'Walked the warehouse with Patricie: 400 pallets need cold chain sensors'),
    (pg_temp.customer_id('Novak Logistics'),   pg_temp.contact_id('Patricie Novak'),  pg_temp.principal_id('luca'),
     'call',    '2026-10-20 15:30+02', 'Patricie asks for 25% off the cold chain rollout to match a competitor'),
    (pg_temp.customer_id('Novak Logistics'),   pg_temp.contact_id('Tomáš Horák'),     pg_temp.principal_id('ivan'),
     'meeting', '2026-11-03 09:00+01', 'Telematics installation plan for the first 10 trucks'),
    (pg_temp.customer_id('Bottega Rossi'),     pg_temp.contact_id('Pietro Rossi'),    pg_temp.principal_id('sara'),
     'visit',   '2026-10-14 11:00+02', 'Wants delivery slots before 9:00 and easier returns'),
    (pg_temp.customer_id('Ferri & Figli'),     pg_temp.contact_id('Giorgio Ferri'),   pg_temp.principal_id('luca'),
     'call',    '2026-09-22 17:10+02', 'Chose a cheaper supplier for pallet tags'),
    (pg_temp.customer_id('Capitolina Foods'),  pg_temp.contact_id('Francesca Marini'), pg_temp.principal_id('paolo'),
     'visit',   '2026-10-28 10:30+01', 'Customs paperwork for imports from Tunisia is their main pain'),
    (pg_temp.customer_id('Sabauda Meccanica'), pg_temp.contact_id('Alberto Ferrero'), pg_temp.principal_id('giulia'),
     'meeting', '2026-09-15 14:00+02', 'Contract signed for the private fleet integration'),
    (pg_temp.customer_id('Sabauda Meccanica'), pg_temp.contact_id('Alberto Ferrero'), pg_temp.principal_id('giulia'),
     'call',    '2026-11-19 09:45+01', 'Delivery failed: the gate was closed, rescheduling'),
    (pg_temp.customer_id('Caffè Mole'),        pg_temp.contact_id('Silvia Bosio'),    pg_temp.principal_id('giulia'),
     'email',   '2026-11-10 08:20+01', 'Sent the price list for morning delivery slots'),
    (pg_temp.customer_id('Cantine Langhe'),    NULL,                                  pg_temp.principal_id('giulia'),
     'visit',   '2026-10-02 16:00+02', 'Harvest season: cold chain for wine shipments to Germany');

-- 500 routine activities, walking over all accounts (37 is coprime with their number)
INSERT INTO crm.activity (customer_id, contact_id, owner_id, kind, happened_at, notes)
SELECT c.id,
       CASE WHEN g % 6 = 0 THEN NULL ELSE c.contact_id END,
       c.owner_id,
       (ARRAY['visit', 'call', 'email', 'meeting', 'call'])[1 + g % 5],
       timestamptz '2025-11-03 09:00+01' + g * 3 / 5 * interval '1 day'
                                         + g % 3 * interval '3 hours 20 minutes',
       (ARRAY['Presented the route planner', 'Follow-up on the last delivery',
              'Asked for a quote on cold chain sensors', 'Complained about a late delivery',
              'Renewal of the service contract', 'Sent the updated price list',
              'Demo of the tracking portal', 'Discussed payment terms',
              'No answer, call back next week', 'Invited to the spring fair'])[1 + g * 7 % 10]
  FROM generate_series(1, 500) AS g
  JOIN (SELECT cu.id, cu.owner_id,
               (SELECT min(ct.id) FROM crm.contact ct WHERE ct.customer_id = cu.id) AS contact_id,
               row_number() OVER (ORDER BY cu.id) AS rn,
               count(*) OVER () AS total
          FROM crm.customer cu) AS c ON c.rn = 1 + g * 37 % c.total
 ORDER BY g;

-- ---------------------------------------------------------------------------
-- Marketing: campaigns and the raw leads they bring (some of them junk)
-- ---------------------------------------------------------------------------

INSERT INTO crm.campaign (name, budget, status, owner_id) VALUES
    ('Cold chain fair, Milano 2027',    18000.00, 'Planned', pg_temp.principal_id('mara')),
    ('Logistics breakfast, Roma',        4500.00, 'Active',  pg_temp.principal_id('mara'));

INSERT INTO crm.lead (full_name, company, email, phone, source, created_at) VALUES
    ('Elena Bassi',    'Bassi Trasporti',   'elena@bassi-trasporti.example', '+39 333 555 0001', 'web form',   '2026-11-02 09:12+01'),
    ('Marco Verdi',    'Verdi Surgelati',   'marco@verdi-surgelati.example', '+39 333 555 0002', 'trade fair', '2026-11-05 14:30+01'),
    ('Giada Fumagalli', 'Birrificio Lariano', 'giada@lariano.example',        '+39 333 555 0003', 'referral',   '2026-11-12 11:05+01'),
    ('Hans Gruber',    'Alpen Kühlung GmbH', 'h.gruber@alpen-kuehlung.example', '+49 89 555 0104', 'web form',   '2026-11-17 08:40+01'),
    ('test test',      NULL,                'asdf@asdf',                     '123',              'web form',   '2026-11-20 23:59+01');

-- ---------------------------------------------------------------------------
-- The DSA modules: staff, provinces, contact history by every function,
-- offers, commitments (two years of revenue), requests and suppliers
-- ---------------------------------------------------------------------------

INSERT INTO crm.staff (principal_id, name, function)
SELECT p.id, p.name,
       CASE WHEN p.roles && '{agent}' THEN 'sales'
            WHEN p.roles && '{director,area_manager}' THEN 'management'
            WHEN p.roles && '{implementation}' THEN 'implementation'
            WHEN p.roles && '{delivery_rep}' THEN 'delivery'
            WHEN p.roles && '{finance}' THEN 'finance'
            WHEN p.roles && '{marketing_head}' THEN 'marketing'
            ELSE 'back office' END
  FROM crmguard.principal p WHERE NOT p.roles && '{portal}';

INSERT INTO crm.city (name, province) VALUES
    ('Milano', 'MI'), ('Sesto San Giovanni', 'MI'), ('Cinisello Balsamo', 'MI'), ('San Donato Milanese', 'MI'),
    ('Rozzano', 'MI'), ('Monza', 'MB'), ('Pavia', 'PV'), ('Roma', 'RM'), ('Torino', 'TO'),
    ('Moncalieri', 'TO'), ('Rivoli', 'TO'), ('Alba', 'CN');

-- the contact history: what crm.activity recorded, plus calls by finance and
-- delivery visits, each visible to the account's agent whoever made it
INSERT INTO crm.contact_history (customer_id, account_owner_id, by_principal, by_function, channel, happened_at, notes)
SELECT a.customer_id, c.owner_id, a.owner_id, s.function, a.kind, a.happened_at, a.notes
  FROM crm.activity a
  JOIN crm.customer c ON c.id = a.customer_id
  JOIN crm.staff s ON s.principal_id = a.owner_id
 ORDER BY a.id;
INSERT INTO crm.contact_history (customer_id, account_owner_id, by_principal, by_function, channel, happened_at, notes)
SELECT c.id, c.owner_id, pg_temp.principal_id(CASE WHEN c.id % 2 = 0 THEN 'fiona' ELSE 'remo' END),
       CASE WHEN c.id % 2 = 0 THEN 'finance' ELSE 'delivery' END,
       CASE WHEN c.id % 2 = 0 THEN 'call' ELSE 'visit' END,
       timestamptz '2026-11-02 10:00+01' + c.id * interval '2 hours',
       CASE WHEN c.id % 2 = 0 THEN 'Reminder: invoice overdue' ELSE 'Delivery, signed by the customer' END
  FROM crm.customer c WHERE c.id % 3 = 0
 ORDER BY c.id;

-- offers: three per named account, one per fifth generated account
INSERT INTO crm.offer (customer_id, owner_id, product_id, amount, probability, outcome, offered_on, decided_on)
SELECT c.id, c.owner_id, p.id, p.list_price * (5 + (c.id * k) % 40),
       (ARRAY[20, 40, 60, 80, 90])[1 + (c.id + k) % 5],
       CASE WHEN k = 3 THEN 'open' WHEN (c.id + k) % 3 = 0 THEN 'lost' ELSE 'won' END,
       date '2026-01-15' + ((c.id * 11 + k * 47) % 300)::int,
       CASE WHEN k = 3 THEN NULL ELSE date '2026-01-15' + ((c.id * 11 + k * 47) % 300)::int + 20 END
  FROM crm.customer c
 CROSS JOIN generate_series(1, 3) AS k
  JOIN crm.product p ON p.id = 1 + (c.id * 3 + k) % 7
 WHERE c.id <= 13 OR c.id % 5 = 0
 ORDER BY c.id, k;

-- commitments: two years of purchases, the won offers among them
INSERT INTO crm.commitment (customer_id, owner_id, product_id, offer_id, qty, amount, committed_on)
SELECT o.customer_id, o.owner_id, o.product_id, o.id, 5 + o.id % 40, o.amount, o.decided_on
  FROM crm.offer o WHERE o.outcome = 'won' ORDER BY o.id;
INSERT INTO crm.commitment (customer_id, owner_id, product_id, qty, amount, committed_on)
SELECT c.id, c.owner_id, p.id, q.qty, p.list_price * q.qty, date '2025-01-10' + ((g * 13 + c.id * 7) % 690)::int
  FROM generate_series(1, 900) AS g
  JOIN crm.customer c ON c.id = 1 + g * 31 % (SELECT count(*) FROM crm.customer)
  JOIN crm.product p ON p.id = 1 + (g * 5 + c.id) % 9
 CROSS JOIN LATERAL (SELECT 1 + (g * 17) % 60 AS qty) q
 ORDER BY g;

INSERT INTO crm.request (customer_id, owner_id, subject, received_at, status)
SELECT c.id, c.owner_id,
       (ARRAY['Quote for cold chain sensors', 'Samples of pallet tags', 'Complaint: late delivery',
              'Earlier delivery slots', 'Invoice copy', 'Demo of the route planner'])[1 + c.id % 6],
       timestamptz '2026-11-10 09:00+01' + c.id * interval '5 hours',
       CASE WHEN c.id % 4 = 0 THEN 'open' ELSE 'answered' END
  FROM crm.customer c WHERE c.id <= 13 OR c.id % 4 = 0
 ORDER BY c.id;

INSERT INTO crm.supplier (name, category, province, payment_terms, buying_price_notes) VALUES
    ('Sensori Padani',     'Tracking hardware', 'MI', '60 days', 'Cold chain sensor at 41.00, volume bonus over 2,000'),
    ('TeleBox Italia',     'Telematics',        'TO', '90 days', 'Telematics box at 198.00'),
    ('Etichette Brianza',  'Pallet tags',       'MB', '30 days', 'Tags at 4.10 per hundred'),
    ('Logistica Tevere',   'Subcontracted delivery', 'RM', '30 days', 'Slot at 11.50 in Roma'),
    ('Dogane Express',     'Customs',           'RM', '45 days', 'Brokerage at 70.00 per file');
