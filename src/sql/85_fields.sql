-- ---------------------------------------------------------------------------
-- Contact fields: project-scoped, typed, unique and masked custom fields in a
-- jsonb column; every read of the column shows the reader's projection
-- ---------------------------------------------------------------------------

CREATE TABLE crmguard.field_table (
    target         regclass PRIMARY KEY,
    fields_column  name NOT NULL,
    project_column name,
    -- the table's identity in ciphertexts and blind indexes: random, kept by
    -- pg_dump/pg_restore (OIDs and names are not)
    table_key      bytea NOT NULL CHECK (pg_catalog.length(table_key) OPERATOR(pg_catalog.=) 16)
);
COMMENT ON TABLE crmguard.field_table IS 'tables with contact fields: their jsonb column, their project column, the identity their encrypted values are bound to';
SELECT pg_catalog.pg_extension_config_dump('crmguard.field_table', '');
CREATE TRIGGER field_table_cache_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crmguard.field_table
    FOR EACH STATEMENT EXECUTE FUNCTION crmguard.rules_changed();

CREATE SEQUENCE crmguard.field_def_id_seq;
CREATE TABLE crmguard.field_def (
    id            bigint NOT NULL DEFAULT pg_catalog.nextval('crmguard.field_def_id_seq') PRIMARY KEY,
    target        regclass NOT NULL,
    field_name    text NOT NULL,
    field_type    text NOT NULL CHECK (field_type IN ('text', 'int', 'numeric', 'date', 'bool', 'phone', 'email')),
    projects      text[],           -- NULL: every project
    unique_values boolean NOT NULL DEFAULT false,
    masked        boolean NOT NULL DEFAULT false,
    mask          text NOT NULL DEFAULT 'partial' CHECK (mask IN ('partial', 'full', 'email')),
    required      boolean NOT NULL DEFAULT false,
    index_name    name NOT NULL,    -- the lookup index on the target, in its schema
    UNIQUE (target, field_name)
);
ALTER SEQUENCE crmguard.field_def_id_seq OWNED BY crmguard.field_def.id;
COMMENT ON SEQUENCE crmguard.field_def_id_seq IS 'ids of contact field definitions (crmguard.field_def)';
COMMENT ON TABLE crmguard.field_def IS 'the contact fields of each table: type, projects, uniqueness, masking';
SELECT pg_catalog.pg_extension_config_dump('crmguard.field_def', '');
SELECT pg_catalog.pg_extension_config_dump('crmguard.field_def_id_seq', '');
CREATE TRIGGER field_def_cache_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crmguard.field_def
    FOR EACH STATEMENT EXECUTE FUNCTION crmguard.rules_changed();

CREATE FUNCTION crmguard.enable_fields(target regclass, fields_column name, project_column name DEFAULT NULL)
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_enable_fields';
COMMENT ON FUNCTION crmguard.enable_fields(regclass, name, name) IS 'keep contact fields in the jsonb column of the table; with a project column, each row holds only the fields of its project';

CREATE FUNCTION crmguard.define_field(target regclass, field_name text, field_type text,
                                      projects text[] DEFAULT NULL,
                                      unique_values boolean DEFAULT false,
                                      masked boolean DEFAULT false, mask text DEFAULT 'partial',
                                      required boolean DEFAULT false) RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_define_field';
COMMENT ON FUNCTION crmguard.define_field(regclass, text, text, text[], boolean, boolean, text, boolean) IS 'define a contact field: its type (text, int, numeric, date, bool, phone, email), its projects (NULL: all), unique values, masking, required';

CREATE FUNCTION crmguard.drop_field(target regclass, field_name text) RETURNS void
    LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_drop_field';
COMMENT ON FUNCTION crmguard.drop_field(regclass, text) IS 'drop a contact field and its values from every row';

CREATE FUNCTION crmguard.field_values(target regclass, row_key text) RETURNS jsonb
    LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_field_values';
COMMENT ON FUNCTION crmguard.field_values(regclass, text) IS 'the fields of a row the current principal may see; masked values in clear for holders of view_masked (audited)';

CREATE FUNCTION crmguard.set_field(target regclass, row_key text, field_name text, value text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_set_field';
COMMENT ON FUNCTION crmguard.set_field(regclass, text, text, text) IS 'set (NULL: remove) one field of a row, as an UPDATE by the current user';

CREATE FUNCTION crmguard.find_by_field(target regclass, field_name text, value text) RETURNS SETOF text
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED ROWS 1
    AS 'MODULE_PATHNAME', 'crmguard_find_by_field';
COMMENT ON FUNCTION crmguard.find_by_field(regclass, text, text) IS 'keys of the rows you may see whose field equals the normalised value, masked fields included, through an index';

CREATE FUNCTION crmguard.unmask(target regclass, row_key text, field_name text, reason text) RETURNS text
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_unmask';
COMMENT ON FUNCTION crmguard.unmask(regclass, text, text, text) IS 'the clear value of a masked field, for holders of view_masked, with a reason; every call is audited';

CREATE FUNCTION crmguard.map_fields(mapping jsonb, source jsonb) RETURNS jsonb
    LANGUAGE c IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'crmguard_map_fields';
COMMENT ON FUNCTION crmguard.map_fields(jsonb, jsonb) IS 'fields for an import row: {{Name}} placeholders (case-sensitive) take the source''s values, other strings are constants';

-- every read of a fields column is rewritten into one of these by the planner hook
CREATE FUNCTION crmguard.fields_projection(fields jsonb, target oid) RETURNS jsonb
    LANGUAGE c STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_fields_projection';
COMMENT ON FUNCTION crmguard.fields_projection(jsonb, oid) IS 'internal: the fields the current principal may see, masked values masked';
CREATE FUNCTION crmguard.fields_row(r anyelement, target oid) RETURNS anyelement
    LANGUAGE c STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_fields_row';
COMMENT ON FUNCTION crmguard.fields_row(anyelement, oid) IS 'internal: a whole row with its fields column projected';

CREATE FUNCTION crmguard.fields_get(fields jsonb, target oid, field_name text) RETURNS jsonb
    LANGUAGE c STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_fields_get';
COMMENT ON FUNCTION crmguard.fields_get(jsonb, oid, text) IS 'internal: fields->''name'' of the projection';
CREATE FUNCTION crmguard.fields_get_text(fields jsonb, target oid, field_name text) RETURNS text
    LANGUAGE c STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_fields_get_text';
COMMENT ON FUNCTION crmguard.fields_get_text(jsonb, oid, text) IS 'internal: fields->>''name'' of the projection';

CREATE FUNCTION crmguard.fields_guard() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'crmguard_fields_guard';
COMMENT ON FUNCTION crmguard.fields_guard() IS 'internal: validates, normalises, encrypts and merges the fields of every written row';
