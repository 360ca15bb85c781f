-- The demo CRM: a sales and delivery company in northern and central Italy.
-- Owners are crmguard principals (crmguard.principal.id), so owner columns
-- are plain bigints rather than foreign keys into the extension.

CREATE SCHEMA crm;

CREATE TABLE crm.zone (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE
);

CREATE TABLE crm.customer (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL,
    customer_type text NOT NULL CHECK (customer_type IN ('Enterprise', 'SMB', 'Consumer')),
    zone_id       bigint NOT NULL REFERENCES crm.zone,
    owner_id      bigint NOT NULL,
    billing_city  text NOT NULL,
    phone         text,
    email         text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON crm.customer (owner_id);
CREATE INDEX ON crm.customer (zone_id);
COMMENT ON TABLE crm.customer IS 'accounts, each owned by an agent of a zone';

CREATE TABLE crm.contact (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES crm.customer,
    full_name    text NOT NULL,
    phone        text,
    email        text,
    portal_login text UNIQUE
);
CREATE INDEX ON crm.contact (customer_id);

CREATE TABLE crm.product (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    sku        text NOT NULL UNIQUE,
    category   text NOT NULL,
    tier       text NOT NULL CHECK (tier IN ('Standard', 'Enterprise')),
    list_price numeric(12,2) NOT NULL CHECK (list_price >= 0)
);

CREATE TABLE crm.deal (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES crm.customer,
    owner_id     bigint NOT NULL,
    title        text NOT NULL,
    stage        text NOT NULL CHECK (stage IN ('Prospecting', 'Negotiation', 'Proposal',
                                                'Approved', 'Closed Won', 'Closed Lost')),
    amount       numeric(12,2) NOT NULL,
    discount_pct numeric(5,2) NOT NULL DEFAULT 0 CHECK (discount_pct BETWEEN 0 AND 100),
    status       text NOT NULL DEFAULT 'Draft'
);
CREATE INDEX ON crm.deal (customer_id);
CREATE INDEX ON crm.deal (owner_id);

CREATE TABLE crm.quote (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    deal_id     bigint NOT NULL REFERENCES crm.deal,
    contact_id  bigint NOT NULL REFERENCES crm.contact,
    stage       text NOT NULL CHECK (stage IN ('Draft', 'Negotiation', 'Approved', 'Sent',
                                               'Accepted', 'Rejected')),
    total       numeric(12,2) NOT NULL,
    valid_until date NOT NULL
);
CREATE INDEX ON crm.quote (deal_id);
CREATE INDEX ON crm.quote (contact_id);

CREATE TABLE crm.quote_line (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    quote_id   bigint NOT NULL REFERENCES crm.quote,
    product_id bigint NOT NULL REFERENCES crm.product,
    qty        integer NOT NULL CHECK (qty > 0),
    unit_price numeric(12,2) NOT NULL
);
CREATE INDEX ON crm.quote_line (quote_id);

CREATE TABLE crm.delivery_note (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id   bigint NOT NULL REFERENCES crm.customer,
    owner_id      bigint NOT NULL,
    contact_phone text,
    address       text NOT NULL,
    status        text NOT NULL DEFAULT 'Scheduled'
                  CHECK (status IN ('Scheduled', 'Out for delivery', 'Delivered', 'Failed')),
    delivered_at  timestamptz
);
CREATE INDEX ON crm.delivery_note (customer_id);
CREATE INDEX ON crm.delivery_note (owner_id);
COMMENT ON TABLE crm.delivery_note IS 'deliveries; "Delivered" needs the customer''s code (chapter 2)';

CREATE TABLE crm.activity (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES crm.customer,
    contact_id  bigint REFERENCES crm.contact,
    owner_id    bigint NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('visit', 'call', 'email', 'meeting')),
    happened_at timestamptz NOT NULL,
    notes       text
);
CREATE INDEX ON crm.activity (customer_id);
CREATE INDEX ON crm.activity (owner_id);
COMMENT ON TABLE crm.activity IS 'contact history: visits and calls';

CREATE TABLE crm.campaign (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name     text NOT NULL,
    budget   numeric(12,2) NOT NULL,
    status   text NOT NULL DEFAULT 'Planned',
    owner_id bigint NOT NULL
);

CREATE TABLE crm.lead (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    full_name  text NOT NULL,
    company    text,
    email      text,
    phone      text,
    source     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
