-- ---------------------------------------------------------------------------
-- Audit: append-only, hash-chained
-- ---------------------------------------------------------------------------

CREATE TABLE crmguard.audit (
    id        bigint PRIMARY KEY,
    at        timestamptz NOT NULL,
    principal bigint,
    device    bigint,
    action    text NOT NULL,
    target    text,
    row_key   text,
    detail    jsonb,
    prev_hash bytea NOT NULL,
    hash      bytea NOT NULL,
    -- segments of the chain this row was chained over while their transactions
    -- had not committed: (xid, first id, last id, rolled back 0/1), repeated
    in_flight bigint[],
    -- with in_flight: the system identifier of the cluster whose xids they are
    in_flight_cluster bigint
);
COMMENT ON TABLE crmguard.audit IS 'append-only log of guarded actions; each row chained to the previous by a keyed BLAKE2b hash';
COMMENT ON COLUMN crmguard.audit.in_flight IS 'segments chained over before their transactions committed: (xid, first id, last id, rolled back 0/1) repeated; verify_audit accepts missing ids only where a row names them so and that transaction did not commit';
COMMENT ON COLUMN crmguard.audit.in_flight_cluster IS 'with in_flight: the system identifier of the cluster that chained the row; in another cluster (a restored dump) its xids are not asked of the commit log';
SELECT pg_catalog.pg_extension_config_dump('crmguard.audit', '');

CREATE FUNCTION crmguard.audit_append_only() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'crmguard_audit_append_only';
REVOKE ALL ON FUNCTION crmguard.audit_append_only() FROM PUBLIC;

CREATE TRIGGER audit_no_update_or_delete
    BEFORE UPDATE OR DELETE ON crmguard.audit
    FOR EACH ROW EXECUTE FUNCTION crmguard.audit_append_only();
CREATE TRIGGER audit_no_truncate
    BEFORE TRUNCATE ON crmguard.audit
    FOR EACH STATEMENT EXECUTE FUNCTION crmguard.audit_append_only();

CREATE FUNCTION crmguard.audit_event(action text, target text DEFAULT NULL,
                                     row_key text DEFAULT NULL, detail jsonb DEFAULT NULL)
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_audit_event';
COMMENT ON FUNCTION crmguard.audit_event(text, text, text, jsonb) IS 'append an event to the audit log as the current principal';

CREATE FUNCTION crmguard.verify_audit(OUT ok boolean, OUT first_bad bigint)
    RETURNS SETOF record
    LANGUAGE c VOLATILE ROWS 1 PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_verify_audit';
COMMENT ON FUNCTION crmguard.verify_audit() IS 'recompute the audit chain; first_bad is the first altered, inserted or deleted-after row';

COMMENT ON FUNCTION crmguard.audit_append_only() IS 'internal: trigger keeping crmguard.audit append-only for everyone but a superuser';
