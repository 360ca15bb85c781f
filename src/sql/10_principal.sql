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
COMMENT ON SEQUENCE crmguard.principal_id_seq IS 'principal ids (crmguard.principal), the numbers current_principal() and team() return';
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
-- a statement that changes rules tells every backend to drop its cache
CREATE FUNCTION crmguard.rules_changed() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'crmguard_rules_changed';
REVOKE ALL ON FUNCTION crmguard.rules_changed() FROM PUBLIC;

CREATE TRIGGER principal_cache_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crmguard.principal
    FOR EACH STATEMENT EXECUTE FUNCTION crmguard.rules_changed();

CREATE FUNCTION crmguard.current_principal() RETURNS bigint
    LANGUAGE c STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_current_principal';
CREATE FUNCTION crmguard.has_role(role text) RETURNS boolean
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_has_role';
CREATE FUNCTION crmguard.attr(key text) RETURNS text
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_attr';
CREATE FUNCTION crmguard.attr_as(key text, type_of anyelement) RETURNS anyelement
    LANGUAGE c STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_attr_as';
CREATE FUNCTION crmguard.team() RETURNS bigint[]
    LANGUAGE c STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_team';
CREATE FUNCTION crmguard.in_team_support(internal) RETURNS internal
    LANGUAGE c STRICT
    AS 'MODULE_PATHNAME', 'crmguard_in_team_support';
CREATE FUNCTION crmguard.in_team(owner bigint, team bigint[]) RETURNS boolean
    LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE SUPPORT crmguard.in_team_support
    AS 'MODULE_PATHNAME', 'crmguard_in_team';
COMMENT ON FUNCTION crmguard.in_team(bigint, bigint[]) IS 'owner = ANY (team) with a hashed team; the planner makes it an index condition on owner';
CREATE FUNCTION crmguard.issue_token(principal text, valid_for interval DEFAULT '1 hour',
                                     device bigint DEFAULT NULL, signature bytea DEFAULT NULL)
    RETURNS text
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_issue_token';
CREATE FUNCTION crmguard.assume(token text, is_local boolean DEFAULT true) RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_assume';
CREATE FUNCTION crmguard.assume_jwt(jwt text, is_local boolean DEFAULT true) RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_assume_jwt';
CREATE FUNCTION crmguard.pre_request() RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_pre_request';

COMMENT ON FUNCTION crmguard.current_principal() IS 'the acting principal: from an assumed token, else from the current role; NULL when nobody';
COMMENT ON FUNCTION crmguard.issue_token(text, interval, bigint, bytea) IS 'a signed, expiring identity token for pooled connections (application login role only); a require_device principal''s needs its device''s signature of device_challenge(principal)';
COMMENT ON FUNCTION crmguard.assume(text, boolean) IS 'act as the principal of a valid token until the transaction ends (is_local => false: for the session); NULL gives up any assumed identity';
COMMENT ON FUNCTION crmguard.assume_jwt(text, boolean) IS 'act as the principal named by a JWT (HS256 or EdDSA, key in crmguard.jwt_key_file) until the transaction ends (is_local => false: for the session)';
COMMENT ON FUNCTION crmguard.pre_request() IS 'PostgREST db-pre-request: assume the principal of the request''s "Authorization: Bearer" JWT for the transaction; no header means nobody';

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

COMMENT ON FUNCTION crmguard.has_role(text) IS 'does the acting principal hold this CRM role? (false for nobody)';
COMMENT ON FUNCTION crmguard.attr(text) IS 'an attribute of the acting principal as text, or NULL';
COMMENT ON FUNCTION crmguard.attr_as(text, anyelement) IS 'an attribute of the acting principal read as the type of type_of, dates and times as in every session (criteria compile to it)';
COMMENT ON FUNCTION crmguard.team() IS 'the acting principal and everyone below it in the manager tree (NULL for nobody)';
COMMENT ON FUNCTION crmguard.in_team_support(internal) IS 'internal: planner support for in_team (an index condition owner = ANY(team))';
COMMENT ON FUNCTION crmguard.principal_changed() IS 'internal: trigger on crmguard.principal; refuses manager cycles and tells every backend to reload principals';
COMMENT ON FUNCTION crmguard.rules_changed() IS 'internal: statement trigger on each rule table; tells every backend to reload its cached rules at commit';
