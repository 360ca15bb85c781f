/* crmguard--1.0.sql */

\echo Use "CREATE EXTENSION crmguard" to load this file. \quit

REVOKE ALL ON SCHEMA crmguard FROM PUBLIC;
GRANT USAGE ON SCHEMA crmguard TO PUBLIC;

-- ---------------------------------------------------------------------------
-- Principals: who is acting
-- ---------------------------------------------------------------------------

CREATE SEQUENCE crmguard.principal_id_seq;

CREATE TABLE crmguard.principal (
    id             bigint NOT NULL DEFAULT pg_catalog.nextval('crmguard.principal_id_seq') PRIMARY KEY,
    name           text NOT NULL UNIQUE CHECK (name OPERATOR(pg_catalog.<>) ''),
    db_role        name UNIQUE,
    -- deferred so that pg_restore may load rows in any order
    manager_id     bigint REFERENCES crmguard.principal (id) DEFERRABLE INITIALLY DEFERRED,
    roles          text[] NOT NULL DEFAULT '{}',
    attributes     jsonb NOT NULL DEFAULT '{}'
                   CHECK (pg_catalog.jsonb_typeof(attributes) OPERATOR(pg_catalog.=) 'object'),
    require_device boolean NOT NULL DEFAULT false,
    active         boolean NOT NULL DEFAULT true
);
ALTER SEQUENCE crmguard.principal_id_seq OWNED BY crmguard.principal.id;
CREATE INDEX principal_manager_idx ON crmguard.principal (manager_id);
COMMENT ON TABLE crmguard.principal IS 'CRM users (agents, managers, portal customers, reviewers) and how a session is mapped to one';

SELECT pg_catalog.pg_extension_config_dump('crmguard.principal', '');
SELECT pg_catalog.pg_extension_config_dump('crmguard.principal_id_seq', '');

CREATE FUNCTION crmguard.principal_changed() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'crmguard_principal_changed';
REVOKE ALL ON FUNCTION crmguard.principal_changed() FROM PUBLIC;

CREATE TRIGGER principal_manager_cycle
    AFTER INSERT OR UPDATE OF manager_id ON crmguard.principal
    FOR EACH ROW EXECUTE FUNCTION crmguard.principal_changed();
CREATE TRIGGER principal_cache_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crmguard.principal
    FOR EACH STATEMENT EXECUTE FUNCTION crmguard.principal_changed();

CREATE FUNCTION crmguard.current_principal() RETURNS bigint
    LANGUAGE c STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_current_principal';
CREATE FUNCTION crmguard.has_role(role text) RETURNS boolean
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_has_role';
CREATE FUNCTION crmguard.attr(key text) RETURNS text
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_attr';
CREATE FUNCTION crmguard.team() RETURNS bigint[]
    LANGUAGE c STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_team';
CREATE FUNCTION crmguard.issue_token(principal text, valid_for interval DEFAULT '1 hour')
    RETURNS text
    LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_issue_token';
CREATE FUNCTION crmguard.assume(token text) RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_assume';

COMMENT ON FUNCTION crmguard.current_principal() IS 'the acting principal: from an assumed token, else from the current role; NULL when nobody';
COMMENT ON FUNCTION crmguard.issue_token(text, interval) IS 'a signed, expiring identity token for pooled connections (application login role only)';
COMMENT ON FUNCTION crmguard.assume(text) IS 'act as the principal of a valid token for the rest of the session; NULL gives it up';

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
    hash      bytea NOT NULL
);
COMMENT ON TABLE crmguard.audit IS 'append-only log of guarded actions; each row chained to the previous by a keyed BLAKE2b hash';
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

-- ---------------------------------------------------------------------------
-- Administration of principals
-- ---------------------------------------------------------------------------

CREATE FUNCTION crmguard.add_principal(name text, roles text[] DEFAULT '{}',
                                       manager text DEFAULT NULL,
                                       attributes jsonb DEFAULT '{}',
                                       db_role name DEFAULT NULL,
                                       require_device boolean DEFAULT false)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    manager_ref bigint;
    new_id bigint;
BEGIN
    IF manager IS NOT NULL THEN
        SELECT p.id INTO manager_ref
          FROM crmguard.principal p
         WHERE p.name OPERATOR(pg_catalog.=) add_principal.manager;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'principal "%" does not exist', manager
                USING ERRCODE = 'undefined_object';
        END IF;
    END IF;
    IF attributes IS NULL OR pg_catalog.jsonb_typeof(attributes) OPERATOR(pg_catalog.<>) 'object' THEN
        RAISE EXCEPTION 'principal attributes must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    INSERT INTO crmguard.principal (name, roles, manager_id, attributes, db_role, require_device)
    VALUES (add_principal.name, COALESCE(add_principal.roles, '{}'),
            manager_ref, add_principal.attributes,
            add_principal.db_role, COALESCE(add_principal.require_device, false))
    RETURNING id INTO new_id;

    PERFORM crmguard.audit_event('add_principal', 'crmguard.principal', new_id::text,
        pg_catalog.jsonb_build_object('name', add_principal.name,
                                      'roles', add_principal.roles,
                                      'manager', add_principal.manager,
                                      'db_role', add_principal.db_role));
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION crmguard.add_principal(text, text[], text, jsonb, name, boolean) IS 'create a principal; the manager is named and must exist';

-- ---------------------------------------------------------------------------
-- Privileges: identity is for everyone, administration is granted deliberately
-- ---------------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA crmguard FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA crmguard FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA crmguard FROM PUBLIC;

GRANT EXECUTE ON FUNCTION crmguard.current_principal() TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.has_role(text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.attr(text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.team() TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.assume(text) TO PUBLIC;
