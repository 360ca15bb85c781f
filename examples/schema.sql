-- The demo CRM of crmguard.
--
-- Consegne Italia sells tracking, telematics and delivery services to
-- companies in Milano, Roma and Torino, and delivers the goods with its own
-- reps. The sales organisation (a director, area managers, agents) works the
-- accounts; customers follow their quotes and deliveries on a portal.
--
-- Owners are crmguard principals (crmguard.principal.id). Principals live in
-- the extension, so the owner_id columns are plain bigints, not foreign keys.

CREATE SCHEMA crm;
COMMENT ON SCHEMA crm IS 'demo CRM of a sales and delivery company in Italy';

-- ---------------------------------------------------------------------------
-- Territory and accounts
-- ---------------------------------------------------------------------------

CREATE TABLE crm.zone (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE CHECK (name <> '')
);
COMMENT ON TABLE crm.zone IS 'sales territories; agents carry theirs in the principal attribute "zone"';

CREATE TABLE crm.customer (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL CHECK (name <> ''),
    customer_type text NOT NULL CHECK (customer_type IN ('Enterprise', 'SMB', 'Consumer')),
    zone_id       bigint NOT NULL REFERENCES crm.zone (id),
    owner_id      bigint NOT NULL,              -- the agent (crmguard principal) who owns the account
    billing_city  text NOT NULL,
    phone         text,
    email         text CHECK (email LIKE '%_@_%'),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customer_zone_idx  ON crm.customer (zone_id);
CREATE INDEX customer_owner_idx ON crm.customer (owner_id);
COMMENT ON TABLE crm.customer IS 'accounts, each in a zone and owned by an agent';

CREATE TABLE crm.contact (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES crm.customer (id),
    full_name    text NOT NULL CHECK (full_name <> ''),
    phone        text,
    email        text CHECK (email LIKE '%_@_%'),
    portal_login text UNIQUE                    -- the portal principal's name, if the contact has one
);
CREATE INDEX contact_customer_idx ON crm.contact (customer_id);
CREATE INDEX contact_email_idx    ON crm.contact (lower(email));
COMMENT ON TABLE crm.contact IS 'people at a customer; portal users are matched by e-mail';

-- ---------------------------------------------------------------------------
-- Catalogue, deals and quotes
-- ---------------------------------------------------------------------------

CREATE TABLE crm.product (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL CHECK (name <> ''),
    sku        text NOT NULL UNIQUE,
    category   text NOT NULL,
    tier       text NOT NULL CHECK (tier IN ('Standard', 'Enterprise')),
    list_price numeric(12,2) NOT NULL CHECK (list_price >= 0),
    public     boolean NOT NULL DEFAULT true    -- shown in the public price list and on the portal
);
COMMENT ON TABLE crm.product IS 'catalogue; Enterprise-tier products are sold to Enterprise customers only';

CREATE TABLE crm.deal (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES crm.customer (id),
    owner_id     bigint NOT NULL,               -- the agent (crmguard principal) working the deal
    title        text NOT NULL CHECK (title <> ''),
    stage        text NOT NULL CHECK (stage IN ('Prospecting', 'Negotiation', 'Proposal',
                                                'Approved', 'Closed Won', 'Closed Lost')),
    amount       numeric(12,2) NOT NULL CHECK (amount >= 0),   -- at list price, before the discount
    discount_pct numeric(5,2) NOT NULL DEFAULT 0 CHECK (discount_pct BETWEEN 0 AND 100),
    status       text NOT NULL DEFAULT 'Draft'
);
CREATE INDEX deal_customer_idx ON crm.deal (customer_id);
CREATE INDEX deal_owner_idx    ON crm.deal (owner_id);
COMMENT ON TABLE crm.deal IS 'sales opportunities; amount is at list price, discount_pct comes off it';

CREATE TABLE crm.quote (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    deal_id     bigint NOT NULL REFERENCES crm.deal (id),
    contact_id  bigint NOT NULL REFERENCES crm.contact (id),
    stage       text NOT NULL CHECK (stage IN ('Draft', 'Negotiation', 'Approved', 'Sent',
                                               'Accepted', 'Rejected')),
    total       numeric(12,2) NOT NULL DEFAULT 0 CHECK (total >= 0),
    valid_until date NOT NULL
);
CREATE INDEX quote_deal_idx    ON crm.quote (deal_id);
CREATE INDEX quote_contact_idx ON crm.quote (contact_id);
COMMENT ON TABLE crm.quote IS 'offers sent to a customer contact for a deal';

CREATE TABLE crm.quote_line (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    quote_id   bigint NOT NULL REFERENCES crm.quote (id) ON DELETE CASCADE,
    product_id bigint NOT NULL REFERENCES crm.product (id),
    qty        integer NOT NULL CHECK (qty > 0),
    unit_price numeric(12,2) NOT NULL CHECK (unit_price >= 0)
);
CREATE INDEX quote_line_quote_idx   ON crm.quote_line (quote_id);
CREATE INDEX quote_line_product_idx ON crm.quote_line (product_id);
COMMENT ON TABLE crm.quote_line IS 'products on a quote, at the (possibly discounted) unit price';

-- ---------------------------------------------------------------------------
-- Deliveries and contact history
-- ---------------------------------------------------------------------------

CREATE TABLE crm.delivery_note (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id   bigint NOT NULL REFERENCES crm.customer (id),
    owner_id      bigint NOT NULL,              -- the delivery rep (crmguard principal)
    contact_phone text,                         -- where the confirmation code is sent by SMS...
    contact_email text,                         -- ...or by e-mail
    address       text NOT NULL,
    status        text NOT NULL DEFAULT 'Scheduled'
                  CHECK (status IN ('Scheduled', 'Out for delivery', 'Delivered', 'Failed')),
    delivered_at  timestamptz
);
CREATE INDEX delivery_note_customer_idx ON crm.delivery_note (customer_id);
CREATE INDEX delivery_note_owner_idx    ON crm.delivery_note (owner_id);
COMMENT ON TABLE crm.delivery_note IS 'deliveries; "Delivered" should need the code the customer receives';

CREATE TABLE crm.activity (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES crm.customer (id),
    contact_id  bigint REFERENCES crm.contact (id),
    owner_id    bigint NOT NULL,                -- who visited, called or wrote
    kind        text NOT NULL CHECK (kind IN ('visit', 'call', 'email', 'meeting')),
    happened_at timestamptz NOT NULL,
    notes       text
);
CREATE INDEX activity_customer_idx ON crm.activity (customer_id);
CREATE INDEX activity_contact_idx  ON crm.activity (contact_id);
CREATE INDEX activity_owner_idx    ON crm.activity (owner_id, happened_at);
COMMENT ON TABLE crm.activity IS 'contact history: visits, calls, e-mails and meetings';

-- ---------------------------------------------------------------------------
-- Marketing
-- ---------------------------------------------------------------------------

CREATE TABLE crm.campaign (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name     text NOT NULL CHECK (name <> ''),
    budget   numeric(12,2) NOT NULL CHECK (budget >= 0),
    status   text NOT NULL DEFAULT 'Planned',
    owner_id bigint NOT NULL                    -- the marketing principal responsible for it
);
CREATE INDEX campaign_owner_idx ON crm.campaign (owner_id);
COMMENT ON TABLE crm.campaign IS 'marketing campaigns and their budgets';

CREATE TABLE crm.lead (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    full_name  text NOT NULL,
    company    text,
    email      text,                            -- unchecked: leads arrive from web forms and imports
    phone      text,
    source     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE crm.lead IS 'prospects from web forms, fairs and imports, not yet qualified';

-- ---------------------------------------------------------------------------
-- The DSA modules: contact history by any function, offers, commitments,
-- requests, suppliers, and the views a sales organisation reads every day
-- (the customer card, revenue by month and year, the product sales trend).
-- The views are security_invoker: each reader's own visibility rules apply
-- to every table they read, so an area manager's totals cover its team only.
-- ---------------------------------------------------------------------------

CREATE TABLE crm.city (
    name     text PRIMARY KEY,
    province text NOT NULL                      -- the two-letter sigla: MI, MB, RM, TO, PV, CN
);
COMMENT ON TABLE crm.city IS 'reference data: the province of each billing city';

CREATE TABLE crm.staff (
    principal_id bigint PRIMARY KEY,            -- the crmguard principal
    name         text NOT NULL,
    function     text NOT NULL                  -- sales, management, implementation, delivery, finance...
);
COMMENT ON TABLE crm.staff IS 'reference data: the company''s people, by principal, for reports';

CREATE TABLE crm.contact_history (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id      bigint NOT NULL REFERENCES crm.customer (id),
    account_owner_id bigint NOT NULL,           -- the customer's agent: who may read the history
    by_principal     bigint NOT NULL,           -- who visited, called or wrote, of any function
    by_function      text NOT NULL,             -- sales, implementation, delivery, finance...
    channel          text NOT NULL CHECK (channel IN ('visit', 'call', 'email', 'meeting')),
    happened_at      timestamptz NOT NULL,
    notes            text
);
CREATE INDEX contact_history_customer_idx ON crm.contact_history (customer_id, happened_at);
CREATE INDEX contact_history_owner_idx    ON crm.contact_history (account_owner_id);
COMMENT ON TABLE crm.contact_history IS 'every contact with a customer by anyone in the company, readable by the account''s agent and managers';

CREATE TABLE crm.offer (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES crm.customer (id),
    owner_id    bigint NOT NULL,                -- the account's agent
    product_id  bigint NOT NULL REFERENCES crm.product (id),
    amount      numeric(12,2) NOT NULL CHECK (amount >= 0),
    probability integer NOT NULL CHECK (probability BETWEEN 0 AND 100),
    outcome     text NOT NULL DEFAULT 'open' CHECK (outcome IN ('open', 'won', 'lost')),
    offered_on  date NOT NULL,
    decided_on  date
);
CREATE INDEX offer_customer_idx ON crm.offer (customer_id);
CREATE INDEX offer_owner_idx    ON crm.offer (owner_id);
COMMENT ON TABLE crm.offer IS 'offers with their probability and outcome';

CREATE TABLE crm.commitment (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES crm.customer (id),
    owner_id     bigint NOT NULL,               -- the account's agent
    product_id   bigint NOT NULL REFERENCES crm.product (id),
    offer_id     bigint REFERENCES crm.offer (id),
    qty          integer NOT NULL CHECK (qty > 0),
    amount       numeric(12,2) NOT NULL CHECK (amount >= 0),
    committed_on date NOT NULL
);
CREATE INDEX commitment_customer_idx ON crm.commitment (customer_id, committed_on);
CREATE INDEX commitment_owner_idx    ON crm.commitment (owner_id, committed_on);
COMMENT ON TABLE crm.commitment IS 'what customers actually bought: the revenue';

CREATE TABLE crm.request (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES crm.customer (id),
    owner_id    bigint NOT NULL,                -- the account's agent
    subject     text NOT NULL,
    received_at timestamptz NOT NULL,
    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'answered'))
);
CREATE INDEX request_customer_idx ON crm.request (customer_id, received_at);
CREATE INDEX request_owner_idx    ON crm.request (owner_id);
COMMENT ON TABLE crm.request IS 'what customers asked for: quotes, samples, complaints';

CREATE TABLE crm.supplier (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    category      text NOT NULL,
    province      text NOT NULL,
    payment_terms text NOT NULL,
    buying_price_notes text
);
COMMENT ON TABLE crm.supplier IS 'suppliers and buying terms: for managers and purchasing, never for agents';

-- one row per customer: recent history, pending offers, last requests, revenue
CREATE VIEW crm.customer_card WITH (security_invoker = true) AS
SELECT c.id, c.name, z.name AS zone, ci.province,
       (SELECT max(h.happened_at) FROM crm.contact_history h WHERE h.customer_id = c.id) AS last_contact,
       (SELECT string_agg(h.channel || ' by ' || h.by_function, ', ' ORDER BY h.happened_at DESC)
          FROM (SELECT * FROM crm.contact_history h2 WHERE h2.customer_id = c.id
                 ORDER BY h2.happened_at DESC LIMIT 3) h) AS recent_contacts,
       (SELECT count(*) FROM crm.offer o WHERE o.customer_id = c.id AND o.outcome = 'open') AS open_offers,
       (SELECT sum(o.amount * o.probability / 100) FROM crm.offer o
         WHERE o.customer_id = c.id AND o.outcome = 'open')::numeric(12,2) AS weighted_pipeline,
       (SELECT r.subject FROM crm.request r WHERE r.customer_id = c.id
         ORDER BY r.received_at DESC LIMIT 1) AS last_request,
       (SELECT sum(m.amount) FROM crm.commitment m WHERE m.customer_id = c.id
           AND m.committed_on > current_date - 365) AS revenue_12m
  FROM crm.customer c
  JOIN crm.zone z ON z.id = c.zone_id
  LEFT JOIN crm.city ci ON ci.name = c.billing_city;
COMMENT ON VIEW crm.customer_card IS 'the customer card: history, pending offers, last request, revenue (each reader sees its own)';

CREATE VIEW crm.revenue_by_month WITH (security_invoker = true) AS
SELECT date_trunc('month', m.committed_on)::date AS month, sum(m.amount) AS revenue, count(*) AS commitments
  FROM crm.commitment m GROUP BY 1;
COMMENT ON VIEW crm.revenue_by_month IS 'revenue per month, of the commitments the reader may see';

CREATE VIEW crm.revenue_by_year WITH (security_invoker = true) AS
SELECT extract(year FROM m.committed_on)::int AS year, sum(m.amount) AS revenue, count(*) AS commitments
  FROM crm.commitment m GROUP BY 1;
COMMENT ON VIEW crm.revenue_by_year IS 'revenue per year, of the commitments the reader may see';

-- the trend by product, category, agent, customer and province: one grouping each
CREATE VIEW crm.sales_trend WITH (security_invoker = true) AS
SELECT CASE WHEN GROUPING(p.name) = 0 THEN 'product'
            WHEN GROUPING(p.category) = 0 THEN 'category'
            WHEN GROUPING(ag.name) = 0 THEN 'agent'
            WHEN GROUPING(c.name) = 0 THEN 'customer'
            ELSE 'province' END AS by,
       COALESCE(p.name, p.category, ag.name, c.name, ci.province) AS item,
       sum(m.amount) FILTER (WHERE m.committed_on >= date_trunc('year', current_date)) AS this_year,
       sum(m.amount) FILTER (WHERE m.committed_on >= date_trunc('year', current_date) - interval '1 year'
                               AND m.committed_on < date_trunc('year', current_date)) AS last_year
  FROM crm.commitment m
  JOIN crm.product p ON p.id = m.product_id
  JOIN crm.customer c ON c.id = m.customer_id
  LEFT JOIN crm.city ci ON ci.name = c.billing_city
  LEFT JOIN crm.staff ag ON ag.principal_id = m.owner_id
 GROUP BY GROUPING SETS ((p.name), (p.category), (ag.name), (c.name), (ci.province));
COMMENT ON VIEW crm.sales_trend IS 'sales this year against last year by product, category, agent, customer and province';
