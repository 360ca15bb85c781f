-- ---------------------------------------------------------------------------
-- Row visibility criteria, compiled into row-level security policies
-- ---------------------------------------------------------------------------

CREATE SEQUENCE crmguard.visibility_rule_id_seq;
CREATE TABLE crmguard.visibility_rule (
    id            bigint NOT NULL DEFAULT pg_catalog.nextval('crmguard.visibility_rule_id_seq') PRIMARY KEY,
    rule_name     text NOT NULL UNIQUE CHECK (rule_name OPERATOR(pg_catalog.<>) ''),
    target        regclass NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('criteria', 'public', 'owner')),
    audience      text NOT NULL CHECK (audience OPERATOR(pg_catalog.<>) ''),
    criteria      jsonb,            -- kind 'criteria'
    owner_column  name,             -- kind 'owner'
    hierarchy     boolean NOT NULL DEFAULT false,
    access        text NOT NULL CHECK (access IN ('read', 'edit')),
    compiled      text NOT NULL     -- the rule's arm of the table's policies
);
ALTER SEQUENCE crmguard.visibility_rule_id_seq OWNED BY crmguard.visibility_rule.id;
COMMENT ON SEQUENCE crmguard.visibility_rule_id_seq IS 'ids of visibility rules (crmguard.visibility_rule)';
CREATE INDEX visibility_rule_target_idx ON crmguard.visibility_rule (target);
COMMENT ON TABLE crmguard.visibility_rule IS 'who sees which rows: each statement on a target gets the rules of the acting principal''s roles as its row-level security policy';
SELECT pg_catalog.pg_extension_config_dump('crmguard.visibility_rule', '');
SELECT pg_catalog.pg_extension_config_dump('crmguard.visibility_rule_id_seq', '');

CREATE TRIGGER visibility_rule_cache_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crmguard.visibility_rule
    FOR EACH STATEMENT EXECUTE FUNCTION crmguard.rules_changed();

CREATE FUNCTION crmguard.expose(target regclass, rule_name text, audience text, criteria jsonb,
                                access text DEFAULT 'read') RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_expose';
COMMENT ON FUNCTION crmguard.expose(regclass, text, text, jsonb, text) IS 'let principals with the audience role see (access ''edit'': also change) the rows matching the criteria';

CREATE FUNCTION crmguard.expose_public(target regclass, audience text) RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_expose_public';
COMMENT ON FUNCTION crmguard.expose_public(regclass, text) IS 'let principals with the audience role read every row';

CREATE FUNCTION crmguard.expose_by_owner(target regclass, owner_column name, audience text,
                                         hierarchy boolean DEFAULT true) RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_expose_by_owner';
COMMENT ON FUNCTION crmguard.expose_by_owner(regclass, name, text, boolean) IS 'let principals with the audience role see and change the rows they own (with hierarchy: or anyone below them owns)';

CREATE FUNCTION crmguard.unexpose(rule_name text) RETURNS void
    LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_unexpose';

CREATE FUNCTION crmguard.visibility_predicate(target regclass, principal text DEFAULT NULL) RETURNS text
    LANGUAGE c STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_visibility_predicate';
COMMENT ON FUNCTION crmguard.visibility_predicate(regclass, text) IS 'the SQL predicate that decides which rows of the table the principal sees, with its values written in';

CREATE FUNCTION crmguard.why_visible(target regclass, row_key text, principal text DEFAULT NULL)
    RETURNS TABLE (rule_name text, granted boolean, reason text)
    LANGUAGE c VOLATILE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_why_visible';
COMMENT ON FUNCTION crmguard.why_visible(regclass, text, text) IS 'for a row you can see: which rules grant it to the principal, and why';

COMMENT ON FUNCTION crmguard.unexpose(text) IS 'drop a visibility rule; a table with no rule left is no longer guarded';
