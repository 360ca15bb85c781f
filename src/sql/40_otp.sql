-- ---------------------------------------------------------------------------
-- OTP-gated status changes
-- ---------------------------------------------------------------------------

CREATE SEQUENCE crmguard.otp_rule_id_seq;
CREATE TABLE crmguard.otp_rule (
    id                 bigint NOT NULL DEFAULT pg_catalog.nextval('crmguard.otp_rule_id_seq') PRIMARY KEY,
    rule_name          text NOT NULL UNIQUE,
    target             regclass NOT NULL,
    status_column      name NOT NULL,
    to_values          text[] NOT NULL,
    recipient_column   name NOT NULL,
    channel            text NOT NULL,
    delivery           text NOT NULL CHECK (delivery IN ('automatic', 'manual')),
    code_type          text NOT NULL CHECK (code_type IN ('numeric', 'alphabetic', 'alphanumeric')),
    code_length        integer NOT NULL CHECK (code_length BETWEEN 4 AND 12),
    valid_for          interval NOT NULL,
    max_resends        integer NOT NULL CHECK (max_resends >= 0),
    max_attempts       integer NOT NULL CHECK (max_attempts >= 1),
    from_values        text[],
    applies_to         text[],
    condition          jsonb,
    compiled_condition text,          -- condition compiled by the criteria compiler
    recipient_cooldown interval NOT NULL DEFAULT '24 hours',
    challenges_per_row integer NOT NULL DEFAULT 5 CHECK (challenges_per_row >= 1),
    challenges_per_principal integer NOT NULL DEFAULT 60 CHECK (challenges_per_principal >= 1),
    challenge_window   interval NOT NULL DEFAULT '1 hour'
);
ALTER SEQUENCE crmguard.otp_rule_id_seq OWNED BY crmguard.otp_rule.id;
COMMENT ON SEQUENCE crmguard.otp_rule_id_seq IS 'ids of OTP rules (crmguard.otp_rule)';
COMMENT ON TABLE crmguard.otp_rule IS 'OTP rules: a row entering a gated status value needs a verified one-time code';
SELECT pg_catalog.pg_extension_config_dump('crmguard.otp_rule', '');
SELECT pg_catalog.pg_extension_config_dump('crmguard.otp_rule_id_seq', '');

CREATE TRIGGER otp_rule_cache_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crmguard.otp_rule
    FOR EACH STATEMENT EXECUTE FUNCTION crmguard.rules_changed();

-- Challenges hold only a keyed hash of their code.  Their failed-attempt
-- counters live in shared memory (crmguard.otp_attempts()).
CREATE SEQUENCE crmguard.otp_challenge_id_seq;
CREATE TABLE crmguard.otp_challenge_state (
    id               bigint PRIMARY KEY,
    -- checked at commit: a challenge made and used in one transaction is checked once
    rule_id          bigint NOT NULL REFERENCES crmguard.otp_rule (id) ON DELETE CASCADE
                     DEFERRABLE INITIALLY DEFERRED,
    row_key          text NOT NULL,
    to_value         text NOT NULL,
    principal        bigint,
    recipient_masked text NOT NULL,
    code_hash        bytea NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    expires_at       timestamptz NOT NULL,
    resends          integer NOT NULL DEFAULT 0,
    consumed_at      timestamptz
);
ALTER SEQUENCE crmguard.otp_challenge_id_seq OWNED BY crmguard.otp_challenge_state.id;
COMMENT ON SEQUENCE crmguard.otp_challenge_id_seq IS 'OTP challenge ids (crmguard.otp_challenge), the numbers verify_otp takes';
-- the live challenges of a row: request_otp and the guard look only for
-- these, so a row's used codes (a monthly delivery's, say) never slow them
CREATE INDEX otp_challenge_live_idx ON crmguard.otp_challenge_state (rule_id, row_key, to_value, id)
 WHERE consumed_at IS NULL;
COMMENT ON TABLE crmguard.otp_challenge_state IS 'OTP challenges (keyed code hashes); read crmguard.otp_challenge instead';
SELECT pg_catalog.pg_extension_config_dump('crmguard.otp_challenge_state', '');
SELECT pg_catalog.pg_extension_config_dump('crmguard.otp_challenge_id_seq', '');

-- When a recipient column of an OTP-guarded row was set: codes are not sent
-- to a recipient set within the rule's recipient_cooldown.
CREATE TABLE crmguard.otp_recipient_change (
    target     regclass NOT NULL,      -- by name in dumps, like otp_rule.target
    row_key    text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    principal  bigint
);
CREATE INDEX otp_recipient_change_row_idx ON crmguard.otp_recipient_change (target, row_key, changed_at);
COMMENT ON TABLE crmguard.otp_recipient_change IS 'when the recipient of an OTP-guarded row was set or changed (for recipient_cooldown)';
SELECT pg_catalog.pg_extension_config_dump('crmguard.otp_recipient_change', '');

CREATE FUNCTION crmguard.otp_attempts(challenge bigint, OUT attempts integer, OUT locked boolean)
    RETURNS record
    LANGUAGE c VOLATILE STRICT PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_otp_attempts';

CREATE VIEW crmguard.otp_challenge AS
SELECT c.id, r.rule_name AS rule, c.row_key, c.to_value,
       CASE WHEN c.consumed_at IS NOT NULL THEN 'used'
            WHEN a.locked THEN 'locked'
            WHEN c.expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp() THEN 'expired'
            WHEN a.attempts IS NULL THEN 'void'      -- counter lost in a restart: fails closed
            ELSE 'pending' END AS state,
       c.expires_at, a.attempts, c.resends
  FROM crmguard.otp_challenge_state c
  JOIN crmguard.otp_rule r ON r.id OPERATOR(pg_catalog.=) c.rule_id
  LEFT JOIN LATERAL crmguard.otp_attempts(c.id) a ON true;
COMMENT ON VIEW crmguard.otp_challenge IS 'OTP challenges and their state; never the code';

CREATE FUNCTION crmguard.otp_guard() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'crmguard_otp_guard';

CREATE FUNCTION crmguard.create_otp_rule(
    rule_name text, target regclass, status_column name, to_values text[],
    recipient_column name,
    channel text DEFAULT 'sms',
    delivery text DEFAULT 'automatic',
    code_type text DEFAULT 'numeric',
    code_length integer DEFAULT 6,
    valid_for interval DEFAULT '5 minutes',
    max_resends integer DEFAULT 3,
    max_attempts integer DEFAULT 3,
    from_values text[] DEFAULT NULL,
    applies_to text[] DEFAULT NULL,
    condition jsonb DEFAULT NULL,
    recipient_cooldown interval DEFAULT '24 hours',
    challenges_per_row integer DEFAULT 5,
    challenges_per_principal integer DEFAULT 60,
    challenge_window interval DEFAULT '1 hour') RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_create_otp_rule';
COMMENT ON FUNCTION crmguard.create_otp_rule(text, regclass, name, text[], name, text, text, text, integer, interval, integer, integer, text[], text[], jsonb, interval, integer, integer, interval) IS 'gate a status change behind a one-time code sent to the row''s recipient';

CREATE FUNCTION crmguard.drop_otp_rule(rule_name text) RETURNS void
    LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_drop_otp_rule';

CREATE FUNCTION crmguard.request_otp(target regclass, row_key text, to_value text) RETURNS bigint
    LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_request_otp';
COMMENT ON FUNCTION crmguard.request_otp(regclass, text, text) IS 'send (or re-send) a code for a row entering a gated value; returns the challenge id';

CREATE FUNCTION crmguard.pending_challenge(target regclass, row_key text, to_value text) RETURNS bigint
    LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_pending_challenge';
COMMENT ON FUNCTION crmguard.pending_challenge(regclass, text, text) IS 'the caller''s live OTP challenge for a row and value, or NULL';

CREATE FUNCTION crmguard.verify_otp(challenge bigint, code text) RETURNS boolean
    LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_verify_otp';
COMMENT ON FUNCTION crmguard.verify_otp(bigint, text) IS 'verify a code; the change it allows must follow in the same transaction';

COMMENT ON FUNCTION crmguard.drop_otp_rule(text) IS 'drop an OTP rule and, with the last rule of its table, its guards';
COMMENT ON FUNCTION crmguard.otp_attempts(bigint) IS 'internal: failed attempts and lock state of a challenge, from shared memory';
COMMENT ON FUNCTION crmguard.otp_guard() IS 'internal: the OTP guard, an AFTER row trigger on INSERT and UPDATE of a gated table; also notes when a row''s recipient is set or changed (recipient_cooldown)';
