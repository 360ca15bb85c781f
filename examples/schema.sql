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
    contact_phone text,                         -- where the confirmation code is sent by SMS
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
