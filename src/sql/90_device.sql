-- ---------------------------------------------------------------------------
-- Trusted devices: Ed25519 keys registered per principal, attested per
-- session (or per token) by signing a fresh single-use server challenge
-- ---------------------------------------------------------------------------

CREATE SEQUENCE crmguard.device_id_seq;

CREATE TABLE crmguard.device (
    id             bigint NOT NULL DEFAULT pg_catalog.nextval('crmguard.device_id_seq') PRIMARY KEY,
    principal_id   bigint NOT NULL REFERENCES crmguard.principal (id) DEFERRABLE INITIALLY DEFERRED,
    label          text NOT NULL CHECK (label OPERATOR(pg_catalog.<>) ''),
    public_key     bytea NOT NULL UNIQUE
                   CHECK (pg_catalog.octet_length(public_key) OPERATOR(pg_catalog.=) 32),
    registered_via text NOT NULL CHECK (registered_via IN ('admin', 'enrollment')),
    registered_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    revoked_at     timestamptz
);
ALTER SEQUENCE crmguard.device_id_seq OWNED BY crmguard.device.id;
COMMENT ON SEQUENCE crmguard.device_id_seq IS 'ids of registered devices (crmguard.device)';
CREATE INDEX device_principal_idx ON crmguard.device (principal_id);
COMMENT ON TABLE crmguard.device IS 'registered devices (Ed25519 public keys) of principals; a revoked device attests nothing';
SELECT pg_catalog.pg_extension_config_dump('crmguard.device', '');
SELECT pg_catalog.pg_extension_config_dump('crmguard.device_id_seq', '');

CREATE TABLE crmguard.device_enrollment (
    code_hash    bytea PRIMARY KEY,            -- keyed hash: the code itself is never stored
    principal_id bigint NOT NULL REFERENCES crmguard.principal (id) DEFERRABLE INITIALLY DEFERRED,
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE crmguard.device_enrollment IS 'one-time, expiring codes with which a principal enrolls its own device';
SELECT pg_catalog.pg_extension_config_dump('crmguard.device_enrollment', '');

-- any committed change of a device (a revocation) is seen by every session's next statement
CREATE FUNCTION crmguard.device_changed() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'crmguard_device_changed';
COMMENT ON FUNCTION crmguard.device_changed() IS 'internal: a committed change of crmguard.device is seen by every session''s next statement';
CREATE TRIGGER device_revocation
    AFTER UPDATE OR DELETE OR TRUNCATE ON crmguard.device
    FOR EACH STATEMENT EXECUTE FUNCTION crmguard.device_changed();

CREATE FUNCTION crmguard.register_device(principal text, label text, public_key bytea) RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_register_device';
COMMENT ON FUNCTION crmguard.register_device(text, text, bytea) IS 'register a device (its 32-byte Ed25519 public key) for a principal (administrators)';

CREATE FUNCTION crmguard.enrollment_code(principal text, valid_for interval DEFAULT '1 day') RETURNS text
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_enrollment_code';
COMMENT ON FUNCTION crmguard.enrollment_code(text, interval) IS 'a one-time, expiring code with which the principal enrolls its own device (administrators)';

CREATE FUNCTION crmguard.enroll_device(code text, label text, public_key bytea) RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_enroll_device';
COMMENT ON FUNCTION crmguard.enroll_device(text, text, bytea) IS 'register a device with a one-time enrollment code';

CREATE FUNCTION crmguard.revoke_device(device bigint) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    owner_id bigint;
BEGIN
    UPDATE crmguard.device d SET revoked_at = pg_catalog.now()
     WHERE d.id OPERATOR(pg_catalog.=) revoke_device.device AND d.revoked_at IS NULL
    RETURNING d.principal_id INTO owner_id;
    IF NOT FOUND THEN
        IF NOT EXISTS (SELECT FROM crmguard.device d WHERE d.id OPERATOR(pg_catalog.=) revoke_device.device) THEN
            RAISE EXCEPTION 'device % does not exist', revoke_device.device
                USING ERRCODE = 'undefined_object';
        END IF;
        RETURN;     -- already revoked
    END IF;
    PERFORM crmguard.audit_event('revoke_device', 'crmguard.device', revoke_device.device::text,
        pg_catalog.jsonb_build_object('principal', owner_id));
END
$$;
COMMENT ON FUNCTION crmguard.revoke_device(bigint) IS 'revoke a device: its sessions and tokens are refused from their next statement (administrators)';

CREATE FUNCTION crmguard.device_challenge() RETURNS bytea
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_device_challenge';
COMMENT ON FUNCTION crmguard.device_challenge() IS 'fresh bytes for the acting principal''s device to sign (Ed25519, detached): good once, in this database, for a minute';
CREATE FUNCTION crmguard.device_challenge(principal text) RETURNS bytea
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_device_challenge';
COMMENT ON FUNCTION crmguard.device_challenge(text) IS 'a challenge for a principal''s device to sign for issue_token (the application''s login role)';

CREATE FUNCTION crmguard.attest_device(device bigint, signature bytea) RETURNS boolean
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_attest_device';
COMMENT ON FUNCTION crmguard.attest_device(bigint, bytea) IS 'attest this session''s device with its signature of the last challenge: true, or CG030 saying why';

-- in the visibility policy of a require_device principal, once per statement
CREATE FUNCTION crmguard.device_gate(edit boolean) RETURNS boolean
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_device_gate';
COMMENT ON FUNCTION crmguard.device_gate(boolean) IS 'the device gate of a visibility policy: false for reads and CG030 for writes until a require_device principal has attested';
