-- ---------------------------------------------------------------------------
-- Criteria: the one compiler of rule criteria (OTP conditions, visibility,
-- approval entry criteria) into a SQL predicate over a table's columns
-- ---------------------------------------------------------------------------

-- PARALLEL UNSAFE: checking a value against its column's type starts a subtransaction
CREATE FUNCTION crmguard.compile_criteria(target regclass, criteria jsonb) RETURNS text
    LANGUAGE c STABLE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_compile_criteria';
REVOKE ALL ON FUNCTION crmguard.compile_criteria(regclass, jsonb) FROM PUBLIC;
COMMENT ON FUNCTION crmguard.compile_criteria(regclass, jsonb) IS 'the SQL predicate that criteria compile to, validated against the table (CG020 when invalid)';

CREATE FUNCTION crmguard.value_fits_column(target regclass, col name, value text) RETURNS boolean
    LANGUAGE c STABLE STRICT PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_value_fits_column';
COMMENT ON FUNCTION crmguard.value_fits_column(regclass, name, text) IS 'internal: does the value fit the column''s type and domain, judged as the table''s owner';
