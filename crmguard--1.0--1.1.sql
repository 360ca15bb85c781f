/* crmguard--1.0--1.1.sql: release 1.0 to 1.1, one step per line of UPGRADE-1.1.md */

\echo Use "ALTER EXTENSION crmguard UPDATE TO '1.1'" to load this file. \quit

-- Functions whose signature changed are dropped and made again, and the
-- grants a DBA gave on the old ones go with them: carried over by this
-- script they would count as the extension's initial privileges, which
-- pg_dump leaves out, and a restore would lose them.  Say who needs one again.
CREATE FUNCTION crmguard.upgrade_regrant_notice(old pg_catalog.regprocedure, new text) RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT a.grantee::pg_catalog.regrole AS grantee, a.is_grantable
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid OPERATOR(pg_catalog.=) old
                AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
                AND a.grantee OPERATOR(pg_catalog.<>) 0
                AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
    LOOP
        RAISE WARNING 'role % may no longer execute %: crmguard 1.1 replaces it', r.grantee, old
            USING HINT = pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s%s;', new, r.grantee,
                                          CASE WHEN r.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;


-- ---------------------------------------------------------------------------
-- Principals: transaction-scoped assume, JWTs, device tokens
-- ---------------------------------------------------------------------------

SELECT crmguard.upgrade_regrant_notice('crmguard.issue_token(text, interval)'::pg_catalog.regprocedure,
                                       'crmguard.issue_token(text, interval, bigint, bytea)');

DROP FUNCTION crmguard.issue_token(text, interval);

DROP FUNCTION crmguard.assume(text);

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

COMMENT ON FUNCTION crmguard.issue_token(text, interval, bigint, bytea) IS 'a signed, expiring identity token for pooled connections (application login role only); a require_device principal''s needs its device''s signature of device_challenge(principal)';

COMMENT ON FUNCTION crmguard.assume(text, boolean) IS 'act as the principal of a valid token until the transaction ends (is_local => false: for the session); NULL gives up any assumed identity';

COMMENT ON FUNCTION crmguard.assume_jwt(text, boolean) IS 'act as the principal named by a JWT (HS256 or EdDSA, key in crmguard.jwt_key_file) until the transaction ends (is_local => false: for the session)';

COMMENT ON FUNCTION crmguard.pre_request() IS 'PostgREST db-pre-request: assume the principal of the request''s "Authorization: Bearer" JWT for the transaction; no header means nobody';

COMMENT ON FUNCTION crmguard.has_role(text) IS 'does the acting principal hold this CRM role? (false for nobody)';

COMMENT ON FUNCTION crmguard.attr(text) IS 'an attribute of the acting principal as text, or NULL';

COMMENT ON FUNCTION crmguard.team() IS 'the acting principal and everyone below it in the manager tree (NULL for nobody)';

COMMENT ON FUNCTION crmguard.in_team_support(internal) IS 'internal: planner support for in_team (an index condition owner = ANY(team))';

COMMENT ON FUNCTION crmguard.principal_changed() IS 'internal: trigger on crmguard.principal; refuses manager cycles and tells every backend to reload principals';

COMMENT ON FUNCTION crmguard.rules_changed() IS 'internal: statement trigger on each rule table; tells every backend to reload its cached rules at commit';

COMMENT ON FUNCTION crmguard.audit_append_only() IS 'internal: trigger keeping crmguard.audit append-only for everyone but a superuser';


-- ---------------------------------------------------------------------------
-- Criteria: values judged as the table's owner
-- ---------------------------------------------------------------------------

CREATE FUNCTION crmguard.value_fits_column(target regclass, col name, value text) RETURNS boolean
    LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_value_fits_column';

COMMENT ON FUNCTION crmguard.value_fits_column(regclass, name, text) IS 'internal: does the value fit the column''s type and domain, judged as the table''s owner';


-- ---------------------------------------------------------------------------
-- Outbox: leases, retries, dead letters, idempotency keys (issues 12 and 14)
-- ---------------------------------------------------------------------------

SELECT crmguard.upgrade_regrant_notice('crmguard.claim_outbox(text, integer)'::pg_catalog.regprocedure,
                                       'crmguard.claim_outbox(text, integer, uuid, interval)');

SELECT crmguard.upgrade_regrant_notice('crmguard.mark_sent(bigint, text)'::pg_catalog.regprocedure,
                                       'crmguard.mark_sent(bigint, text, uuid)');

DROP FUNCTION crmguard.claim_outbox(text, integer);

DROP FUNCTION crmguard.mark_sent(bigint, text);

ALTER TABLE crmguard.outbox
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'dead')),
    ADD COLUMN idempotency_key uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    ADD COLUMN lease uuid,
    ADD COLUMN lease_until timestamptz,
    ADD COLUMN next_attempt_at timestamptz;

-- 1.0 knew sent (sent_at) and unsent; an unsent message whose body is gone
-- cannot go out.  A claim of 1.0 lasted five minutes from claimed_at: it
-- becomes a lease held by nobody, which runs out then.  Messages queued by
-- 1.0 carry no expiry (1.0 did not know it).
UPDATE crmguard.outbox o
   SET state = CASE WHEN o.sent_at IS NOT NULL THEN 'sent'
                    WHEN o.body IS NULL THEN 'dead'
                    ELSE 'pending' END,
       lease_until = CASE WHEN o.sent_at IS NULL AND o.claimed_at IS NOT NULL
                          THEN o.claimed_at OPERATOR(pg_catalog.+) interval '5 minutes' END;

DROP INDEX crmguard.outbox_pending_idx;
CREATE INDEX outbox_pending_idx ON crmguard.outbox (channel, id) WHERE state = 'pending';

CREATE FUNCTION crmguard.outbox_session_lease()
    RETURNS uuid
    LANGUAGE C VOLATILE STRICT
    AS 'MODULE_PATHNAME', 'crmguard_outbox_session_lease';

COMMENT ON FUNCTION crmguard.outbox_session_lease() IS 'internal: the lease of claims made by this session without an explicit lease';

CREATE FUNCTION crmguard.claim_outbox(channel text, max integer DEFAULT 10,
                                      lease uuid DEFAULT NULL, lease_for interval DEFAULT '5 minutes')
    RETURNS SETOF crmguard.outbox
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    holder uuid := COALESCE(claim_outbox.lease, crmguard.outbox_session_lease());
    max_attempts integer := COALESCE(pg_catalog.current_setting('crmguard.outbox_max_attempts', true)::integer, 8);
BEGIN
    IF claim_outbox.lease_for IS NULL OR claim_outbox.lease_for OPERATOR(pg_catalog.<=) interval '0' THEN
        RAISE EXCEPTION 'lease_for must be a positive interval'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE crmguard.outbox o
       SET body = NULL, state = 'dead', last_error = 'expired before it was sent',
           claimed_at = NULL, lease = NULL, lease_until = NULL
     WHERE o.id IN (SELECT c.id FROM crmguard.outbox c
                     WHERE c.channel OPERATOR(pg_catalog.=) claim_outbox.channel
                       AND c.state OPERATOR(pg_catalog.=) 'pending'
                       AND c.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()
                       FOR UPDATE SKIP LOCKED);
    UPDATE crmguard.outbox o
       SET state = 'dead',
           body = CASE WHEN o.expires_at IS NULL THEN o.body END,
           last_error = pg_catalog.format('no report within the lease of attempt %s%s', o.attempts,
                                          ' (last error: ' OPERATOR(pg_catalog.||) o.last_error OPERATOR(pg_catalog.||) ')'),
           claimed_at = NULL, lease = NULL, lease_until = NULL
     WHERE o.id IN (SELECT c.id FROM crmguard.outbox c
                     WHERE c.channel OPERATOR(pg_catalog.=) claim_outbox.channel
                       AND c.state OPERATOR(pg_catalog.=) 'pending'
                       AND c.lease_until OPERATOR(pg_catalog.<) pg_catalog.now()
                       AND c.attempts OPERATOR(pg_catalog.>=) max_attempts
                       FOR UPDATE SKIP LOCKED);
    RETURN QUERY
    WITH claimed AS (
    UPDATE crmguard.outbox o
       SET claimed_at = pg_catalog.now(),
           lease = holder,
           lease_until = pg_catalog.now() OPERATOR(pg_catalog.+) claim_outbox.lease_for,
           attempts = o.attempts OPERATOR(pg_catalog.+) 1
     WHERE o.id IN (SELECT c.id FROM crmguard.outbox c
                     WHERE c.channel OPERATOR(pg_catalog.=) claim_outbox.channel
                       AND c.state OPERATOR(pg_catalog.=) 'pending'
                       AND (c.expires_at IS NULL OR
                            c.expires_at OPERATOR(pg_catalog.>) pg_catalog.now())
                       AND (c.next_attempt_at IS NULL OR
                            c.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.now())
                       AND (c.lease_until IS NULL OR
                            c.lease_until OPERATOR(pg_catalog.<) pg_catalog.now())
                     ORDER BY c.id
                     LIMIT claim_outbox.max
                     FOR UPDATE SKIP LOCKED)
    RETURNING o.*)
    SELECT * FROM claimed ORDER BY claimed.id;   -- oldest first
END
$$;

COMMENT ON FUNCTION crmguard.claim_outbox(text, integer, uuid, interval) IS 'lease up to max pending messages of a channel; two senders never hold the same message';

CREATE FUNCTION crmguard.outbox_held(id bigint, lease uuid)
    RETURNS crmguard.outbox
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m crmguard.outbox;
BEGIN
    SELECT * INTO m FROM crmguard.outbox o WHERE o.id OPERATOR(pg_catalog.=) outbox_held.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'outbox message % does not exist', outbox_held.id
            USING ERRCODE = 'undefined_object';
    END IF;
    IF m.state OPERATOR(pg_catalog.<>) 'pending' OR m.lease IS DISTINCT FROM COALESCE(outbox_held.lease, crmguard.outbox_session_lease()) THEN
        RAISE EXCEPTION 'outbox message % is not leased to this sender', outbox_held.id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'It was not claimed with this lease, another sender claimed it after the lease ran out, or it was reported already.',
                  HINT = 'Report a message with the lease crmguard.claim_outbox handed it out with.';
    END IF;
    RETURN m;
END
$$;

REVOKE ALL ON FUNCTION crmguard.outbox_held(bigint, uuid) FROM PUBLIC;

COMMENT ON FUNCTION crmguard.outbox_held(bigint, uuid) IS 'internal: lock a message its caller holds the lease of';

CREATE FUNCTION crmguard.mark_sent(id bigint, error text DEFAULT NULL, lease uuid DEFAULT NULL)
    RETURNS text
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m crmguard.outbox := crmguard.outbox_held(mark_sent.id, mark_sent.lease);
    max_attempts integer := COALESCE(pg_catalog.current_setting('crmguard.outbox_max_attempts', true)::integer, 8);
    base interval := COALESCE(pg_catalog.current_setting('crmguard.outbox_retry_delay', true)::interval, interval '30 seconds');
    delay interval;
BEGIN
    IF mark_sent.error IS NULL THEN
        UPDATE crmguard.outbox o
           SET state = 'sent', sent_at = pg_catalog.now(), body = NULL, last_error = NULL,
               claimed_at = NULL, lease = NULL, lease_until = NULL, next_attempt_at = NULL
         WHERE o.id OPERATOR(pg_catalog.=) m.id;
        RETURN 'sent';
    END IF;
    IF m.attempts OPERATOR(pg_catalog.>=) max_attempts THEN
        UPDATE crmguard.outbox o
           SET state = 'dead', last_error = mark_sent.error,
               body = CASE WHEN o.expires_at IS NULL THEN o.body END,
               claimed_at = NULL, lease = NULL, lease_until = NULL, next_attempt_at = NULL
         WHERE o.id OPERATOR(pg_catalog.=) m.id;
        RETURN 'dead';
    END IF;
    -- base * 2^(attempt - 1), at most an hour, then a random half of it taken off
    delay := LEAST(base OPERATOR(pg_catalog.*) pg_catalog.power(2, m.attempts OPERATOR(pg_catalog.-) 1),
                   interval '1 hour');
    -- (OPERATOR() forms all bind alike, left to right: parenthesise)
    delay := delay OPERATOR(pg_catalog.*) (0.5 OPERATOR(pg_catalog.+) (pg_catalog.random() OPERATOR(pg_catalog./) 2));
    UPDATE crmguard.outbox o
       SET last_error = mark_sent.error, claimed_at = NULL, lease = NULL, lease_until = NULL,
           next_attempt_at = pg_catalog.now() OPERATOR(pg_catalog.+) delay
     WHERE o.id OPERATOR(pg_catalog.=) m.id;
    RETURN 'pending';
END
$$;

COMMENT ON FUNCTION crmguard.mark_sent(bigint, text, uuid) IS 'report a leased message sent (error NULL) or failed (retried with backoff, dead after the last attempt); returns its state';

CREATE FUNCTION crmguard.release_outbox(id bigint, lease uuid DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m crmguard.outbox := crmguard.outbox_held(release_outbox.id, release_outbox.lease);
BEGIN
    UPDATE crmguard.outbox o
       SET attempts = GREATEST(o.attempts OPERATOR(pg_catalog.-) 1, 0),
           claimed_at = NULL, lease = NULL, lease_until = NULL
     WHERE o.id OPERATOR(pg_catalog.=) m.id;
END
$$;

COMMENT ON FUNCTION crmguard.release_outbox(bigint, uuid) IS 'give back a leased message without an attempt (a sender stopping)';

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'crmguard_relay') THEN
        CREATE ROLE crmguard_relay NOLOGIN;
        COMMENT ON ROLE crmguard_relay IS 'crmguard-relay: claims and reports outbox messages (GRANT crmguard_relay TO a login role)';
    END IF;
END
$$;


-- ---------------------------------------------------------------------------
-- OTP: recipient cooldown, rate limits, the column type's equality (issue 12)
-- ---------------------------------------------------------------------------

-- existing rules take the defaults a rule made without these options has
ALTER TABLE crmguard.otp_rule
    ADD COLUMN recipient_cooldown interval NOT NULL DEFAULT '24 hours',
    ADD COLUMN challenges_per_row integer NOT NULL DEFAULT 5 CHECK (challenges_per_row >= 1),
    ADD COLUMN challenges_per_principal integer NOT NULL DEFAULT 60 CHECK (challenges_per_principal >= 1),
    ADD COLUMN challenge_window interval NOT NULL DEFAULT '1 hour';

CREATE TABLE crmguard.otp_recipient_change (
    target     regclass NOT NULL,      -- by name in dumps, like otp_rule.target
    row_key    text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    principal  bigint
);

CREATE INDEX otp_recipient_change_row_idx ON crmguard.otp_recipient_change (target, row_key, changed_at);

COMMENT ON TABLE crmguard.otp_recipient_change IS 'when the recipient of an OTP-guarded row was set or changed (for recipient_cooldown)';

SELECT pg_catalog.pg_extension_config_dump('crmguard.otp_recipient_change', '');

SELECT crmguard.upgrade_regrant_notice('crmguard.create_otp_rule(text, regclass, name, text[], name, text, text, text, integer, interval, integer, integer, text[], text[], jsonb)'::pg_catalog.regprocedure,
                                       'crmguard.create_otp_rule(text, regclass, name, text[], name, text, text, text, integer, interval, integer, integer, text[], text[], jsonb, interval, integer, integer, interval)');

DROP FUNCTION crmguard.create_otp_rule(text, regclass, name, text[], name, text, text, text, integer, interval, integer, integer, text[], text[], jsonb);

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

CREATE FUNCTION crmguard.pending_challenge(target regclass, row_key text, to_value text) RETURNS bigint
    LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_pending_challenge';

COMMENT ON FUNCTION crmguard.pending_challenge(regclass, text, text) IS 'the caller''s live OTP challenge for a row and value, or NULL';

COMMENT ON FUNCTION crmguard.drop_otp_rule(text) IS 'drop an OTP rule and, with the last rule of its table, its guards';

COMMENT ON FUNCTION crmguard.otp_attempts(bigint) IS 'internal: failed attempts and lock state of a challenge, from shared memory';

COMMENT ON FUNCTION crmguard.otp_guard() IS 'internal: the OTP guard, an AFTER row trigger on INSERT and UPDATE of a gated table; also notes when a row''s recipient is set or changed (recipient_cooldown)';

-- The guards of every OTP-guarded table are made again from its rules, by the
-- code that makes them for a new rule: the WHEN clauses now compare with the
-- column type's own equality, and they also note recipient changes.
-- (The function exists for this script only.)
CREATE FUNCTION crmguard.otp_reinstall_guards(target regclass) RETURNS void
    LANGUAGE c STRICT
    AS 'MODULE_PATHNAME', 'crmguard_otp_reinstall_guards';
SELECT crmguard.otp_reinstall_guards(r.target::pg_catalog.regclass)
  FROM (SELECT DISTINCT o.target::pg_catalog.oid FROM crmguard.otp_rule o) r(target);
DROP FUNCTION crmguard.otp_reinstall_guards(regclass);

COMMENT ON FUNCTION crmguard.unexpose(text) IS 'drop a visibility rule; a table with no rule left is no longer guarded';


-- ---------------------------------------------------------------------------
-- Guard event triggers: more tags, and ENABLE ALWAYS (issue 11)
-- ---------------------------------------------------------------------------

DROP EVENT TRIGGER crmguard_guard_alter;

CREATE EVENT TRIGGER crmguard_guard_alter ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE POLICY', 'ALTER POLICY', 'CREATE TABLE', 'CREATE TRIGGER', 'ALTER TRIGGER', 'CREATE RULE',
                 'CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE', 'CREATE SCHEMA')
    EXECUTE FUNCTION crmguard.guard_ddl();

ALTER EVENT TRIGGER crmguard_guard_alter ENABLE ALWAYS;

DROP EVENT TRIGGER crmguard_guard_drop;

CREATE EVENT TRIGGER crmguard_guard_drop ON sql_drop
    EXECUTE FUNCTION crmguard.guard_ddl();

ALTER EVENT TRIGGER crmguard_guard_drop ENABLE ALWAYS;

COMMENT ON FUNCTION crmguard.guard_ddl() IS 'internal: event trigger refusing (or, for a superuser, auditing) DDL that would remove or sidestep a guard';


-- ---------------------------------------------------------------------------
-- Review: duplicates read as the table's owner, last_drafts, device gate
-- ---------------------------------------------------------------------------

CREATE FUNCTION crmguard.draft_table_matches(target regclass, match_keys text[]) RETURNS text[]
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_draft_table_matches';

COMMENT ON FUNCTION crmguard.draft_table_matches(regclass, text[]) IS 'internal: keys of the rows of target whose match columns normalise to one of match_keys';

CREATE OR REPLACE FUNCTION crmguard.draft_duplicates(draft bigint) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d crmguard.draft_state;
BEGIN
    SELECT * INTO d FROM crmguard.draft_state s WHERE s.id OPERATOR(pg_catalog.=) draft;
    -- reviewers only: table keys of hidden rows are not for the submitter
    IF NOT FOUND OR (d.match_keys OPERATOR(pg_catalog.=) '{}'::text[]) OR NOT crmguard.is_reviewer(d.target) THEN
        RETURN NULL;
    END IF;
    RETURN pg_catalog.jsonb_build_object(
        'drafts', (SELECT COALESCE(pg_catalog.jsonb_agg(o.id ORDER BY o.id), '[]')
                     FROM crmguard.draft_state o
                    WHERE o.target OPERATOR(pg_catalog.=) d.target AND o.state OPERATOR(pg_catalog.=) 'pending'
                      AND o.id OPERATOR(pg_catalog.<>) d.id AND o.match_keys OPERATOR(pg_catalog.&&) d.match_keys),
        'rows', (SELECT COALESCE(pg_catalog.jsonb_agg(DISTINCT r), '[]')
                   FROM pg_catalog.unnest(crmguard.draft_table_matches(d.target, d.match_keys)) r));
END
$$;

CREATE FUNCTION crmguard.last_drafts() RETURNS bigint[]
    LANGUAGE c VOLATILE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_last_drafts';

COMMENT ON FUNCTION crmguard.last_drafts() IS 'ids of the drafts made by this session''s most recent statement that made any (RETURNING cannot report them)';

CREATE OR REPLACE FUNCTION crmguard.draft_for_step(draft bigint, submitter_may boolean, want_state text)
    RETURNS crmguard.draft_state
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d crmguard.draft_state;
BEGIN
    PERFORM crmguard.require_attested();
    SELECT * INTO d FROM crmguard.draft_state s WHERE s.id OPERATOR(pg_catalog.=) draft FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'draft % does not exist', draft USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT (crmguard.is_reviewer(d.target)
            OR (submitter_may AND d.submitted_by OPERATOR(pg_catalog.=) crmguard.current_principal())) THEN
        RAISE EXCEPTION 'permission denied for draft %', draft
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Only a principal with the table''s reviewer role can do this.';
    END IF;
    IF want_state IS NOT NULL AND d.state OPERATOR(pg_catalog.<>) want_state THEN
        RAISE EXCEPTION 'draft % is %, not %', draft, d.state, want_state
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN d;
END
$$;

COMMENT ON FUNCTION crmguard.disable_review(regclass) IS 'switch draft review off for a table; pending drafts stay in crmguard.draft';

COMMENT ON FUNCTION crmguard.draft_duplicates(bigint) IS 'for a reviewer: pending drafts and table rows that share a match key with the draft';

COMMENT ON FUNCTION crmguard.draft_for_step(bigint, boolean, text) IS 'internal: a pending draft, locked, for a step by a reviewer (or its submitter)';

COMMENT ON FUNCTION crmguard.check_draft_fields(regclass, jsonb, text) IS 'internal: the keys of a jsonb object must be columns of the table';

COMMENT ON FUNCTION crmguard.draft_match_keys(regclass, jsonb) IS 'internal: the normalised match keys of a draft''s row';

COMMENT ON FUNCTION crmguard.is_reviewer(regclass) IS 'does the acting principal review this table''s drafts?';

COMMENT ON FUNCTION crmguard.normalize_match(text) IS 'a value as duplicate detection compares it: case, spaces and phone punctuation folded';

COMMENT ON FUNCTION crmguard.review_guard() IS 'internal: the review guard, a BEFORE INSERT row trigger keeping inserts as drafts';

COMMENT ON TABLE crmguard.draft_history IS 'every step of every draft: submitted, commented, corrected, rejected, approved';


-- ---------------------------------------------------------------------------
-- Approvals: set values judged as the owner, webhooks, device gate
-- ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION crmguard.approval_check_actions(target regclass, actions jsonb, what text, run_as regrole)
    RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a jsonb;
    kind text;
    body jsonb;
    k text;
    v jsonb;
    typ text;
    fn regprocedure;
    pk text;
BEGIN
    IF pg_catalog.jsonb_typeof(actions) IS DISTINCT FROM 'array' THEN
        PERFORM crmguard.approval_invalid(what || ' must be a JSON array of actions');
    END IF;
    SELECT a2.attname INTO pk FROM pg_catalog.pg_index i
      JOIN pg_catalog.pg_attribute a2 ON a2.attrelid OPERATOR(pg_catalog.=) i.indrelid
                                      AND a2.attnum OPERATOR(pg_catalog.=) i.indkey[0]
     WHERE i.indrelid OPERATOR(pg_catalog.=) target AND i.indisprimary;
    FOR a IN SELECT pg_catalog.jsonb_array_elements(actions) LOOP
        IF pg_catalog.jsonb_typeof(a) IS DISTINCT FROM 'object'
           OR (SELECT pg_catalog.count(*) FROM pg_catalog.jsonb_object_keys(a)) OPERATOR(pg_catalog.<>) 1 THEN
            PERFORM crmguard.approval_invalid(what || ': each action is an object with one key (set, notify, task, call or webhook)');
        END IF;
        kind := (SELECT pg_catalog.jsonb_object_keys(a));
        body := a OPERATOR(pg_catalog.->) kind;
        CASE kind
        WHEN 'set' THEN
            IF pg_catalog.jsonb_typeof(body) IS DISTINCT FROM 'object' OR body OPERATOR(pg_catalog.=) '{}' THEN
                PERFORM crmguard.approval_invalid(what || ': "set" takes an object of columns and values');
            END IF;
            FOR k, v IN SELECT * FROM pg_catalog.jsonb_each(body) LOOP
                typ := crmguard.approval_column_type(target, k, what || ' set');
                IF k OPERATOR(pg_catalog.=) pk THEN
                    PERFORM crmguard.approval_invalid(pg_catalog.format('%s: "set" cannot change the key column "%s"', what, k));
                END IF;
                IF pg_catalog.jsonb_typeof(v) IN ('object', 'array') THEN
                    PERFORM crmguard.approval_invalid(pg_catalog.format('%s: the value for "%s" must be a scalar', what, k));
                END IF;
                -- judged as the table's owner: the column's type is the owner's code
                IF NOT crmguard.value_fits_column(target, k, v OPERATOR(pg_catalog.#>>) '{}') THEN
                    PERFORM crmguard.approval_invalid(pg_catalog.format('%s: %s is not a valid %s for column "%s"',
                                                                        what, v, typ, k));
                END IF;
            END LOOP;
        WHEN 'notify' THEN
            IF pg_catalog.jsonb_typeof(body) IS DISTINCT FROM 'object'
               OR pg_catalog.jsonb_typeof(body OPERATOR(pg_catalog.->) 'channel') IS DISTINCT FROM 'string'
               OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_object_keys(body) x
                           WHERE x NOT IN ('channel', 'to', 'subject', 'body')) THEN
                PERFORM crmguard.approval_invalid(what || ': "notify" takes channel, to, subject and body');
            END IF;
            IF COALESCE(body OPERATOR(pg_catalog.->>) 'to', 'submitter') NOT IN ('submitter', 'approvers') THEN
                PERFORM crmguard.approval_principal_column(target, body OPERATOR(pg_catalog.->) 'to', what || ' notify "to"');
            END IF;
        WHEN 'task' THEN
            IF pg_catalog.jsonb_typeof(body) IS DISTINCT FROM 'object'
               OR pg_catalog.jsonb_typeof(body OPERATOR(pg_catalog.->) 'subject') IS DISTINCT FROM 'string'
               OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_object_keys(body) x WHERE x NOT IN ('assign_to', 'subject')) THEN
                PERFORM crmguard.approval_invalid(what || ': "task" takes assign_to and subject');
            END IF;
            IF COALESCE(body OPERATOR(pg_catalog.->>) 'assign_to', 'submitter') NOT IN ('submitter', 'approvers') THEN
                PERFORM crmguard.approval_principal_column(target, body OPERATOR(pg_catalog.->) 'assign_to', what || ' task assign_to');
            END IF;
        WHEN 'webhook' THEN
            IF pg_catalog.jsonb_typeof(body) IS DISTINCT FROM 'object'
               OR pg_catalog.jsonb_typeof(body OPERATOR(pg_catalog.->) 'channel') IS DISTINCT FROM 'string'
               OR body OPERATOR(pg_catalog.->>) 'channel' OPERATOR(pg_catalog.!~) '^[A-Za-z0-9_.-]+$'
               OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_object_keys(body) x WHERE x NOT IN ('channel', 'body')) THEN
                PERFORM crmguard.approval_invalid(what || ': "webhook" takes a channel (the name of a relay http channel: letters, digits, _ . -) and a body');
            END IF;
        WHEN 'call' THEN
            IF pg_catalog.jsonb_typeof(body) IS DISTINCT FROM 'string' THEN
                PERFORM crmguard.approval_invalid(what || ': "call" names a function taking the request id');
            END IF;
            BEGIN
                fn := pg_catalog.to_regprocedure((body OPERATOR(pg_catalog.#>>) '{}') || '(bigint)');
            EXCEPTION WHEN OTHERS THEN
                fn := NULL;
            END;
            IF fn IS NULL OR pg_catalog.strpos(body OPERATOR(pg_catalog.#>>) '{}', '.') OPERATOR(pg_catalog.=) 0 THEN
                PERFORM crmguard.approval_invalid(pg_catalog.format('%s: function %s(bigint) does not exist (name it with its schema)',
                                                                    what, body OPERATOR(pg_catalog.#>>) '{}'));
            END IF;
            IF NOT pg_catalog.has_function_privilege(run_as::oid, fn::oid, 'EXECUTE') THEN
                PERFORM crmguard.approval_invalid(pg_catalog.format('%s: role %s cannot execute %s', what, run_as, fn));
            END IF;
        ELSE
            PERFORM crmguard.approval_invalid(pg_catalog.format('%s: unknown action "%s"', what, kind));
        END CASE;
    END LOOP;
END
$$;



CREATE OR REPLACE FUNCTION crmguard.delegate(to_principal text, until timestamptz) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    me bigint := crmguard.current_principal();
    them bigint;
BEGIN
    PERFORM crmguard.require_attested();
    IF me IS NULL THEN
        RAISE EXCEPTION 'only a principal can delegate its approvals' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF to_principal IS NULL THEN          -- back: the delegation ends
        DELETE FROM crmguard.delegation WHERE principal OPERATOR(pg_catalog.=) me;
        PERFORM crmguard.audit_event('delegation_ended', 'crmguard.delegation', me::text, NULL);
        RETURN;
    END IF;
    SELECT id INTO them FROM crmguard.principal p WHERE p.name OPERATOR(pg_catalog.=) to_principal AND p.active;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'principal "%" does not exist or is inactive', to_principal USING ERRCODE = 'undefined_object';
    END IF;
    IF them OPERATOR(pg_catalog.=) me THEN
        RAISE EXCEPTION 'a principal cannot delegate to itself' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF until IS NULL OR until OPERATOR(pg_catalog.<=) pg_catalog.now() THEN
        RAISE EXCEPTION 'a delegation must end in the future' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO crmguard.delegation (principal, to_principal, until) VALUES (me, them, until)
    ON CONFLICT (principal) DO UPDATE SET to_principal = EXCLUDED.to_principal, since = pg_catalog.now(),
                                          until = EXCLUDED.until;
    PERFORM crmguard.audit_event('delegated', 'crmguard.delegation', me::text,
        pg_catalog.jsonb_build_object('to', to_principal, 'until', until));
END
$$;



-- The decision path in C (issue 17): pending rows kept key by key, what
-- waits for whom in a small table instead of a GIN index over every request
DROP INDEX crmguard.approval_request_approvers_idx;
CREATE TABLE crmguard.approval_waiting (
    approver     bigint NOT NULL,
    request      bigint NOT NULL,
    process      bigint NOT NULL,
    target       regclass NOT NULL,
    row_key      text NOT NULL,
    current_step integer NOT NULL,
    submitted_by bigint,
    submitted_at timestamptz NOT NULL
);
CREATE INDEX approval_waiting_approver_idx ON crmguard.approval_waiting (approver, request);
CREATE INDEX approval_waiting_request_idx ON crmguard.approval_waiting (request);
COMMENT ON TABLE crmguard.approval_waiting IS 'pending approval requests by the approvers they still wait for; kept by a trigger on crmguard.approval_request_state';
-- the approvers of 1.0's pending requests who have not approved their step yet
INSERT INTO crmguard.approval_waiting (approver, request, process, target, row_key, current_step,
                                       submitted_by, submitted_at)
SELECT DISTINCT a, r.id, r.process, r.target, r.row_key, r.current_step, r.submitted_by, r.submitted_at
  FROM crmguard.approval_request_state r, pg_catalog.unnest(r.approvers) a
 WHERE r.state OPERATOR(pg_catalog.=) 'pending' AND a IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM crmguard.approval_history h
                    WHERE h.request OPERATOR(pg_catalog.=) r.id AND h.step OPERATOR(pg_catalog.=) r.current_step
                      AND h.event OPERATOR(pg_catalog.=) 'approved'
                      AND COALESCE(h.on_behalf_of, h.principal) OPERATOR(pg_catalog.=) a);
DROP TRIGGER approval_request_cache_invalidate ON crmguard.approval_request_state;
CREATE TRIGGER approval_request_cache_invalidate
    AFTER INSERT OR UPDATE OF state, row_key, target, process, approvers, current_step,
                           submitted_by, submitted_at OR DELETE
    ON crmguard.approval_request_state
    FOR EACH ROW EXECUTE FUNCTION crmguard.approval_requests_changed();
CREATE TRIGGER approval_request_cache_truncate
    AFTER TRUNCATE ON crmguard.approval_request_state
    FOR EACH STATEMENT EXECUTE FUNCTION crmguard.approval_requests_changed();
COMMENT ON VIEW crmguard.approval_pending_signal IS 'invalidated when the request table is emptied: backends read their row locks again';
CREATE FUNCTION crmguard.approval_history_added() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'crmguard_approval_history_added';
COMMENT ON FUNCTION crmguard.approval_history_added() IS 'internal: statement trigger on approval history added by a statement (a restore); approvers stop waiting for the steps they approved';
CREATE TRIGGER approval_history_waiting
    AFTER INSERT ON crmguard.approval_history
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION crmguard.approval_history_added();

DROP FUNCTION crmguard.approval_resolve(jsonb, jsonb, bigint);
DROP FUNCTION crmguard.approval_start_step(bigint, integer);
DROP FUNCTION crmguard.approval_submit(bigint, text, jsonb, text, boolean);
DROP FUNCTION crmguard.approval_for_decision(bigint);
DROP FUNCTION crmguard.approval_current_row(bigint);
DROP FUNCTION crmguard.approval_run_actions(bigint, jsonb);

CREATE OR REPLACE FUNCTION crmguard.approve(request bigint, comment text DEFAULT NULL) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_approve';
CREATE OR REPLACE FUNCTION crmguard.reject(request bigint, comment text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_reject';
CREATE OR REPLACE FUNCTION crmguard.recall(request bigint, comment text DEFAULT NULL) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_recall';
CREATE OR REPLACE FUNCTION crmguard.approval_step_done(request bigint) RETURNS void
    LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_approval_step_done';
CREATE OR REPLACE FUNCTION crmguard.approval_finish(request bigint, outcome text) RETURNS void
    LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_approval_finish';
CREATE OR REPLACE FUNCTION crmguard.my_approvals()
    RETURNS TABLE (request bigint, process text, target regclass, row_key text, step text,
                   submitted_by text, submitted_at timestamptz, on_behalf_of text)
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_my_approvals';

-- ---------------------------------------------------------------------------
-- Contact fields (new in 1.1)
-- ---------------------------------------------------------------------------

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


-- ---------------------------------------------------------------------------
-- Trusted devices (new in 1.1)
-- ---------------------------------------------------------------------------

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


-- ---------------------------------------------------------------------------
-- Activity (new in 1.1)
-- ---------------------------------------------------------------------------

-- ---------------------------------------------------------------------------
-- Activity: contributions per principal, table and day
-- ---------------------------------------------------------------------------

CREATE TABLE crmguard.activity_track (
    target        regclass PRIMARY KEY,
    tracked_since timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE crmguard.activity_track IS 'tables whose inserted, updated and deleted rows are counted per principal and day';
SELECT pg_catalog.pg_extension_config_dump('crmguard.activity_track', '');
CREATE TRIGGER activity_track_cache_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crmguard.activity_track
    FOR EACH STATEMENT EXECUTE FUNCTION crmguard.rules_changed();

-- appended once per committing transaction: writers never wait for one another
CREATE TABLE crmguard.activity_log (
    principal bigint NOT NULL,
    target    regclass,                 -- NULL: attestations, token use, unmasking
    day       date NOT NULL,            -- UTC
    action    text NOT NULL,
    n         bigint NOT NULL CHECK (n OPERATOR(pg_catalog.>) 0),
    last_at   timestamptz NOT NULL
);
CREATE INDEX activity_log_day_idx ON crmguard.activity_log (day, principal);
CREATE INDEX activity_log_principal_idx ON crmguard.activity_log (principal, last_at);
COMMENT ON TABLE crmguard.activity_log IS 'counted contributions: rows per principal, table, day and action; attest, token and unmask events';
SELECT pg_catalog.pg_extension_config_dump('crmguard.activity_log', '');

CREATE FUNCTION crmguard.track_check(target regclass) RETURNS void
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'crmguard_track_check';
COMMENT ON FUNCTION crmguard.track_check(regclass) IS 'internal: refuse to track what is not a plain table';

CREATE FUNCTION crmguard.track(target regclass) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF target IS NULL THEN
        RAISE EXCEPTION 'target must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM crmguard.track_check(target);
    INSERT INTO crmguard.activity_track (target) VALUES (target) ON CONFLICT DO NOTHING;
    PERFORM crmguard.audit_event('track', target::text, NULL, NULL);
END
$$;
COMMENT ON FUNCTION crmguard.track(regclass) IS 'count rows inserted, updated and deleted in a table per principal and day (administrators)';

CREATE FUNCTION crmguard.untrack(target regclass) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM crmguard.activity_track t WHERE t.target OPERATOR(pg_catalog.=) untrack.target;
    PERFORM crmguard.audit_event('untrack', target::text, NULL, NULL);
END
$$;
COMMENT ON FUNCTION crmguard.untrack(regclass) IS 'stop counting a table''s contributions; what was counted stays (administrators)';

CREATE FUNCTION crmguard.require_attested() RETURNS void
    LANGUAGE c VOLATILE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_require_attested';
COMMENT ON FUNCTION crmguard.require_attested() IS 'CG030 unless the acting principal needs no device or has attested one (the device gate of SQL-written steps)';

-- the principals the caller may see the activity of: an admin everyone, others their team
CREATE FUNCTION crmguard.activity_scope() RETURNS bigint[]
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM crmguard.require_attested();
    IF crmguard.current_principal() IS NULL THEN
        RETURN '{}';
    END IF;
    IF crmguard.has_role('admin') THEN
        RETURN (SELECT pg_catalog.array_agg(p.id) FROM crmguard.principal p);
    END IF;
    RETURN crmguard.team();
END
$$;
COMMENT ON FUNCTION crmguard.activity_scope() IS 'internal: the principals whose activity the caller may see';

CREATE FUNCTION crmguard.activity(since timestamptz, until timestamptz)
    RETURNS TABLE(principal text, target regclass, action text, n bigint, last_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.name, a.target, a.action, pg_catalog.sum(a.n)::bigint, pg_catalog.max(a.last_at)
      FROM crmguard.activity_log a
      JOIN crmguard.principal p ON p.id OPERATOR(pg_catalog.=) a.principal
     WHERE a.principal OPERATOR(pg_catalog.=) ANY (crmguard.activity_scope())
       AND a.day OPERATOR(pg_catalog.>=) (since AT TIME ZONE 'UTC')::date
       AND a.day OPERATOR(pg_catalog.<=) (until AT TIME ZONE 'UTC')::date
     GROUP BY p.name, a.target, a.action
     ORDER BY p.name, a.target, a.action
$$;
COMMENT ON FUNCTION crmguard.activity(timestamptz, timestamptz) IS 'contributions per principal, table and action over the days from since to until (UTC): a manager sees its team, an admin everyone, others themselves';

CREATE FUNCTION crmguard.inactive(since interval)
    RETURNS TABLE(principal text, last_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.name, (SELECT pg_catalog.max(a.last_at) FROM crmguard.activity_log a
                     WHERE a.principal OPERATOR(pg_catalog.=) p.id)
      FROM crmguard.principal p
     WHERE p.active
       AND p.id OPERATOR(pg_catalog.=) ANY (crmguard.activity_scope())
       AND NOT EXISTS (SELECT FROM crmguard.activity_log a
                        WHERE a.principal OPERATOR(pg_catalog.=) p.id
                          AND a.last_at OPERATOR(pg_catalog.>=) (pg_catalog.now() OPERATOR(pg_catalog.-) since))
     ORDER BY 2 NULLS FIRST, 1
$$;
COMMENT ON FUNCTION crmguard.inactive(interval) IS 'principals in the caller''s scope with no activity within the interval, and when they last acted';

CREATE FUNCTION crmguard.compact_activity(before date DEFAULT (pg_catalog.now() AT TIME ZONE 'UTC')::date)
    RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    WITH moved AS (
        DELETE FROM crmguard.activity_log a WHERE a.day OPERATOR(pg_catalog.<) before
        RETURNING a.*
    ), folded AS (
        INSERT INTO crmguard.activity_log (principal, target, day, action, n, last_at)
        SELECT m.principal, m.target, m.day, m.action, pg_catalog.sum(m.n), pg_catalog.max(m.last_at)
          FROM moved m GROUP BY m.principal, m.target, m.day, m.action
        RETURNING 1
    )
    SELECT (SELECT pg_catalog.count(*) FROM moved) OPERATOR(pg_catalog.-) (SELECT pg_catalog.count(*) FROM folded)
$$;
COMMENT ON FUNCTION crmguard.compact_activity(date) IS 'fold the activity rows of each principal, table, day and action before a day into one (administrators; from cron)';

-- ---------------------------------------------------------------------------
-- Volatility and parallel labels true to what each function does (issue 18)
-- ---------------------------------------------------------------------------
ALTER FUNCTION crmguard.approval_invalid(text) PARALLEL SAFE;
ALTER FUNCTION crmguard.require_attested() STABLE;
ALTER FUNCTION crmguard.value_fits_column(regclass, name, text) STABLE;
ALTER FUNCTION crmguard.approval_row_pending(regclass, anyelement) VOLATILE;

-- ---------------------------------------------------------------------------
-- Comments as a fresh 1.1 install has them: every object of the extension has
-- one (test/pgtap/comments.sql), 1.0 left many without
-- ---------------------------------------------------------------------------
COMMENT ON SCHEMA crmguard IS 'crmguard: CRM data-governance rules enforced in the database (principals, OTP gates, visibility, review, approvals, contact fields, devices, audit)';
COMMENT ON SEQUENCE crmguard.principal_id_seq IS 'principal ids (crmguard.principal), the numbers current_principal() and team() return';
COMMENT ON TABLE crmguard.principal IS 'CRM users (agents, managers, portal customers, reviewers) and how a session is mapped to one';
COMMENT ON FUNCTION crmguard.in_team(bigint, bigint[]) IS 'owner = ANY (team) with a hashed team; the planner makes it an index condition on owner';
COMMENT ON FUNCTION crmguard.current_principal() IS 'the acting principal: from an assumed token, else from the current role; NULL when nobody';
COMMENT ON FUNCTION crmguard.issue_token(text, interval, bigint, bytea) IS 'a signed, expiring identity token for pooled connections (application login role only); a require_device principal''s needs its device''s signature of device_challenge(principal)';
COMMENT ON FUNCTION crmguard.assume(text, boolean) IS 'act as the principal of a valid token until the transaction ends (is_local => false: for the session); NULL gives up any assumed identity';
COMMENT ON FUNCTION crmguard.assume_jwt(text, boolean) IS 'act as the principal named by a JWT (HS256 or EdDSA, key in crmguard.jwt_key_file) until the transaction ends (is_local => false: for the session)';
COMMENT ON FUNCTION crmguard.pre_request() IS 'PostgREST db-pre-request: assume the principal of the request''s "Authorization: Bearer" JWT for the transaction; no header means nobody';
COMMENT ON FUNCTION crmguard.add_principal(text, text[], text, jsonb, name, boolean) IS 'create a principal; the manager is named and must exist';
COMMENT ON FUNCTION crmguard.has_role(text) IS 'does the acting principal hold this CRM role? (false for nobody)';
COMMENT ON FUNCTION crmguard.attr(text) IS 'an attribute of the acting principal as text, or NULL';
COMMENT ON FUNCTION crmguard.team() IS 'the acting principal and everyone below it in the manager tree (NULL for nobody)';
COMMENT ON FUNCTION crmguard.in_team_support(internal) IS 'internal: planner support for in_team (an index condition owner = ANY(team))';
COMMENT ON FUNCTION crmguard.principal_changed() IS 'internal: trigger on crmguard.principal; refuses manager cycles and tells every backend to reload principals';
COMMENT ON FUNCTION crmguard.rules_changed() IS 'internal: statement trigger on each rule table; tells every backend to reload its cached rules at commit';
COMMENT ON TABLE crmguard.audit IS 'append-only log of guarded actions; each row chained to the previous by a keyed BLAKE2b hash';
-- The chain lock is no longer held through a commit's flush: a writer links to
-- entries still committing and names what it chained over (rows of 1.0 have
-- none, and hash as before)
ALTER TABLE crmguard.audit ADD COLUMN in_flight bigint[], ADD COLUMN in_flight_cluster bigint;
COMMENT ON COLUMN crmguard.audit.in_flight_cluster IS 'with in_flight: the system identifier of the cluster that chained the row; in another cluster (a restored dump) its xids are not asked of the commit log';
COMMENT ON COLUMN crmguard.audit.in_flight IS 'segments chained over before their transactions committed: (xid, first id, last id, rolled back 0/1) repeated; verify_audit accepts missing ids only where a row names them so and that transaction did not commit';
COMMENT ON FUNCTION crmguard.audit_event(text, text, text, jsonb) IS 'append an event to the audit log as the current principal';
COMMENT ON FUNCTION crmguard.verify_audit() IS 'recompute the audit chain; first_bad is the first altered, inserted or deleted-after row';
COMMENT ON FUNCTION crmguard.audit_append_only() IS 'internal: trigger keeping crmguard.audit append-only for everyone but a superuser';
COMMENT ON FUNCTION crmguard.compile_criteria(regclass, jsonb) IS 'the SQL predicate that criteria compile to, validated against the table (CG020 when invalid)';
COMMENT ON FUNCTION crmguard.value_fits_column(regclass, name, text) IS 'internal: does the value fit the column''s type and domain, judged as the table''s owner';
COMMENT ON SEQUENCE crmguard.outbox_id_seq IS 'ids of outbox messages (crmguard.outbox)';
COMMENT ON TABLE crmguard.outbox IS 'messages waiting for an external sender; NOTIFY crmguard_outbox announces new ones';
COMMENT ON FUNCTION crmguard.outbox_session_lease() IS 'internal: the lease of claims made by this session without an explicit lease';
COMMENT ON FUNCTION crmguard.claim_outbox(text, integer, uuid, interval) IS 'lease up to max pending messages of a channel; two senders never hold the same message';
COMMENT ON FUNCTION crmguard.outbox_held(bigint, uuid) IS 'internal: lock a message its caller holds the lease of';
COMMENT ON FUNCTION crmguard.mark_sent(bigint, text, uuid) IS 'report a leased message sent (error NULL) or failed (retried with backoff, dead after the last attempt); returns its state';
COMMENT ON FUNCTION crmguard.release_outbox(bigint, uuid) IS 'give back a leased message without an attempt (a sender stopping)';
COMMENT ON SEQUENCE crmguard.otp_rule_id_seq IS 'ids of OTP rules (crmguard.otp_rule)';
COMMENT ON TABLE crmguard.otp_rule IS 'OTP rules: a row entering a gated status value needs a verified one-time code';
COMMENT ON SEQUENCE crmguard.otp_challenge_id_seq IS 'OTP challenge ids (crmguard.otp_challenge), the numbers verify_otp takes';
COMMENT ON TABLE crmguard.otp_challenge_state IS 'OTP challenges (keyed code hashes); read crmguard.otp_challenge instead';
-- issue 17: the live-challenge lookup reads only live challenges, whatever the row's history
DROP INDEX crmguard.otp_challenge_row_idx;
CREATE INDEX otp_challenge_live_idx ON crmguard.otp_challenge_state (rule_id, row_key, to_value, id)
 WHERE consumed_at IS NULL;
-- issue 17: a challenge made and used in one transaction (request_otp, verify_otp, the
-- change) has its rule checked once, at commit, not at its insert and again at its use
ALTER TABLE crmguard.otp_challenge_state
    ALTER CONSTRAINT otp_challenge_state_rule_id_fkey DEFERRABLE INITIALLY DEFERRED;
COMMENT ON TABLE crmguard.otp_recipient_change IS 'when the recipient of an OTP-guarded row was set or changed (for recipient_cooldown)';
COMMENT ON VIEW crmguard.otp_challenge IS 'OTP challenges and their state; never the code';
COMMENT ON FUNCTION crmguard.create_otp_rule(text, regclass, name, text[], name, text, text, text, integer, interval, integer, integer, text[], text[], jsonb, interval, integer, integer, interval) IS 'gate a status change behind a one-time code sent to the row''s recipient';
COMMENT ON FUNCTION crmguard.request_otp(regclass, text, text) IS 'send (or re-send) a code for a row entering a gated value; returns the challenge id';
COMMENT ON FUNCTION crmguard.pending_challenge(regclass, text, text) IS 'the caller''s live OTP challenge for a row and value, or NULL';
COMMENT ON FUNCTION crmguard.verify_otp(bigint, text) IS 'verify a code; the change it allows must follow in the same transaction';
COMMENT ON FUNCTION crmguard.drop_otp_rule(text) IS 'drop an OTP rule and, with the last rule of its table, its guards';
COMMENT ON FUNCTION crmguard.otp_attempts(bigint) IS 'internal: failed attempts and lock state of a challenge, from shared memory';
COMMENT ON FUNCTION crmguard.otp_guard() IS 'internal: the OTP guard, an AFTER row trigger on INSERT and UPDATE of a gated table; also notes when a row''s recipient is set or changed (recipient_cooldown)';
COMMENT ON SEQUENCE crmguard.visibility_rule_id_seq IS 'ids of visibility rules (crmguard.visibility_rule)';
COMMENT ON TABLE crmguard.visibility_rule IS 'who sees which rows: each statement on a target gets the rules of the acting principal''s roles as its row-level security policy';
COMMENT ON FUNCTION crmguard.expose(regclass, text, text, jsonb, text) IS 'let principals with the audience role see (access ''edit'': also change) the rows matching the criteria';
COMMENT ON FUNCTION crmguard.expose_public(regclass, text) IS 'let principals with the audience role read every row';
COMMENT ON FUNCTION crmguard.expose_by_owner(regclass, name, text, boolean) IS 'let principals with the audience role see and change the rows they own (with hierarchy: or anyone below them owns)';
COMMENT ON FUNCTION crmguard.visibility_predicate(regclass, text) IS 'the SQL predicate that decides which rows of the table the principal sees, with its values written in';
COMMENT ON FUNCTION crmguard.why_visible(regclass, text, text) IS 'for a row you can see: which rules grant it to the principal, and why';
COMMENT ON FUNCTION crmguard.unexpose(text) IS 'drop a visibility rule; a table with no rule left is no longer guarded';
COMMENT ON EVENT TRIGGER crmguard_guard_alter IS 'refuses (or, for a superuser, audits) DDL that would disable, widen or sidestep a crmguard guard';
COMMENT ON EVENT TRIGGER crmguard_guard_drop IS 'refuses (or, for a superuser, audits) dropping a crmguard guard, and drops the rules of dropped tables';
COMMENT ON FUNCTION crmguard.guard_ddl() IS 'internal: event trigger refusing (or, for a superuser, auditing) DDL that would remove or sidestep a guard';
COMMENT ON TABLE crmguard.review_config IS 'tables whose inserts become drafts, their reviewers, duplicate keys and exempt roles';
COMMENT ON SEQUENCE crmguard.draft_id_seq IS 'draft ids (crmguard.draft), the numbers review NOTICEs give; separate from the ids of the reviewed table';
COMMENT ON TABLE crmguard.draft_state IS 'drafts of reviewed tables; read crmguard.draft instead';
COMMENT ON SEQUENCE crmguard.draft_history_id_seq IS 'ids of crmguard.draft_history';
COMMENT ON FUNCTION crmguard.enable_review(regclass, text, name[], text[]) IS 'inserts into the table by non-exempt principals become drafts for the reviewers';
COMMENT ON FUNCTION crmguard.draft_table_matches(regclass, text[]) IS 'internal: keys of the rows of target whose match columns normalise to one of match_keys';
COMMENT ON VIEW crmguard.draft IS 'drafts: a submitter sees its own, the reviewers of a table all of its drafts';
COMMENT ON FUNCTION crmguard.last_drafts() IS 'ids of the drafts made by this session''s most recent statement that made any (RETURNING cannot report them)';
COMMENT ON FUNCTION crmguard.approve_draft(bigint, text, jsonb) IS 'insert the draft (with changes) into its table; returns the new row''s key, or NULL when the row was refused (the draft stays pending with the error)';
COMMENT ON FUNCTION crmguard.reject_draft(bigint, text, jsonb) IS 'reject a pending draft with a reason, and optionally one per field';
COMMENT ON FUNCTION crmguard.comment_draft(bigint, text) IS 'comment on a draft (its submitter or a reviewer)';
COMMENT ON FUNCTION crmguard.resubmit_draft(bigint, jsonb) IS 'send a rejected draft back for review with corrected data';
COMMENT ON FUNCTION crmguard.disable_review(regclass) IS 'switch draft review off for a table; pending drafts stay in crmguard.draft';
COMMENT ON FUNCTION crmguard.draft_duplicates(bigint) IS 'for a reviewer: pending drafts and table rows that share a match key with the draft';
COMMENT ON FUNCTION crmguard.draft_for_step(bigint, boolean, text) IS 'internal: a pending draft, locked, for a step by a reviewer (or its submitter)';
COMMENT ON FUNCTION crmguard.check_draft_fields(regclass, jsonb, text) IS 'internal: the keys of a jsonb object must be columns of the table';
COMMENT ON FUNCTION crmguard.draft_match_keys(regclass, jsonb) IS 'internal: the normalised match keys of a draft''s row';
COMMENT ON FUNCTION crmguard.is_reviewer(regclass) IS 'does the acting principal review this table''s drafts?';
COMMENT ON FUNCTION crmguard.normalize_match(text) IS 'a value as duplicate detection compares it: case, spaces and phone punctuation folded';
COMMENT ON FUNCTION crmguard.review_guard() IS 'internal: the review guard, a BEFORE INSERT row trigger keeping inserts as drafts';
COMMENT ON TABLE crmguard.draft_history IS 'every step of every draft: submitted, commented, corrected, rejected, approved';
COMMENT ON SEQUENCE crmguard.approval_process_id_seq IS 'ids of approval process versions (crmguard.approval_process)';
COMMENT ON TABLE crmguard.approval_process IS 'approval processes, every version; requests keep the version they started with';
COMMENT ON SEQUENCE crmguard.approval_request_id_seq IS 'ids of approval requests (crmguard.approval_request)';
COMMENT ON TABLE crmguard.approval_request_state IS 'approval requests; read crmguard.approval_request instead';
COMMENT ON VIEW crmguard.approval_pending_signal IS 'invalidated when the request table is emptied: backends read their row locks again';
COMMENT ON FUNCTION crmguard.approval_requests_changed() IS 'internal: row and TRUNCATE trigger on approval requests; keeps approval_waiting and moves the lock clocks of the keys whose requests start or end';
COMMENT ON TABLE crmguard.approval_waiting IS 'pending approval requests by the approvers they still wait for; kept by a trigger on crmguard.approval_request_state';
COMMENT ON SEQUENCE crmguard.approval_history_id_seq IS 'ids of crmguard.approval_history';
COMMENT ON TABLE crmguard.approval_history IS 'every event of every approval request: submitted, approved, rejected, recalled, escalated, timed out';
COMMENT ON TABLE crmguard.delegation IS 'approvers away: a delegate acts for them until the given time';
COMMENT ON SEQUENCE crmguard.task_id_seq IS 'ids of crmguard.task';
COMMENT ON TABLE crmguard.task IS 'tasks that approval actions assign to principals';
COMMENT ON FUNCTION crmguard.create_approval_process(text, regclass, jsonb, jsonb, jsonb, jsonb, jsonb, text[], name[])
    IS 'define an approval process, or a new version of one (requests in flight keep theirs); returns the version''s id';
COMMENT ON FUNCTION crmguard.drop_approval_process(text) IS 'stop a process from applying to new requests; requests in flight go on';
COMMENT ON FUNCTION crmguard.submit_for_approval(regclass, text, text) IS 'submit a row (one the caller can see and change) to the first process whose criteria it matches';
COMMENT ON FUNCTION crmguard.approval_lock() IS 'internal: the row lock, an AFTER UPDATE OR DELETE row trigger refusing changes to a row with a pending request (CG010)';
COMMENT ON FUNCTION crmguard.approval_row_pending(regclass, anyelement) IS 'internal: the row lock''s WHEN clause; does this row of the table have a pending request?';
COMMENT ON FUNCTION crmguard.approval_truncate() IS 'internal: BEFORE TRUNCATE trigger refusing to empty a table with pending requests (CG010)';
COMMENT ON FUNCTION crmguard.approval_auto_submit() IS 'internal: AFTER INSERT OR UPDATE row trigger submitting rows that enter a process''s entry criteria (auto_submit)';
COMMENT ON FUNCTION crmguard.approval_wake_worker() IS 'internal: make sure this database''s background worker runs, since a step with a timeout started';
COMMENT ON FUNCTION crmguard.approval_invalid(text) IS 'internal: raise CG020 "invalid approval process" with the given reason';
COMMENT ON FUNCTION crmguard.approval_column_type(regclass, text, text) IS 'internal: the type of a column a process definition names, or CG020 when the table has no such column';
COMMENT ON FUNCTION crmguard.approval_principal_column(regclass, jsonb, text) IS 'internal: CG020 unless a column a process definition names holds principal ids (an integer type)';
COMMENT ON FUNCTION crmguard.approval_check_actions(regclass, jsonb, text, regrole) IS 'internal: CG020 unless every action of a list is well formed for the table (set values judged as the table''s owner)';
COMMENT ON FUNCTION crmguard.approval_check_definition(regclass, jsonb, jsonb, jsonb, jsonb, text[], name[], regrole) IS 'internal: CG020 unless a whole process definition (steps, approvers, modes, timeouts, actions, columns) is valid for the table';
COMMENT ON FUNCTION crmguard.approval_active_above(bigint) IS 'internal: the principal itself when active, else its nearest active manager (inactive approvers escalate)';
COMMENT ON FUNCTION crmguard.approval_manager_of(bigint) IS 'internal: the manager of a principal, or NULL';
COMMENT ON FUNCTION crmguard.approve(bigint, text) IS 'approve the current step of a request (as its approver, or as an approver''s delegate)';
COMMENT ON FUNCTION crmguard.reject(bigint, text) IS 'reject a request (any approver of its current step); the on_reject actions run';
COMMENT ON FUNCTION crmguard.recall(bigint, text) IS 'the submitter withdraws its pending request; the row is unlocked';
COMMENT ON FUNCTION crmguard.approval_step_done(bigint) IS 'internal: a step of a request is approved (its timeout said so): on to the next step, or the request is approved';
COMMENT ON FUNCTION crmguard.approval_finish(bigint, text) IS 'internal: end a request as approved or rejected (running the process''s actions) or recalled';
COMMENT ON FUNCTION crmguard.delegate(text, timestamptz) IS 'let another principal decide this principal''s approvals until the given time (NULL: end it)';
COMMENT ON FUNCTION crmguard.my_approvals() IS 'pending requests waiting for the acting principal (or for someone it stands in for)';
COMMENT ON FUNCTION crmguard.run_due() IS 'process step timeouts and inactive approvers now; returns how many requests it moved';
COMMENT ON VIEW crmguard.approval_request IS 'approval requests with their history: the submitter''s, its approvers'' (and delegates''), all for role admin';
COMMENT ON TABLE crmguard.field_table IS 'tables with contact fields: their jsonb column, their project column, the identity their encrypted values are bound to';
COMMENT ON SEQUENCE crmguard.field_def_id_seq IS 'ids of contact field definitions (crmguard.field_def)';
COMMENT ON TABLE crmguard.field_def IS 'the contact fields of each table: type, projects, uniqueness, masking';
COMMENT ON FUNCTION crmguard.enable_fields(regclass, name, name) IS 'keep contact fields in the jsonb column of the table; with a project column, each row holds only the fields of its project';
COMMENT ON FUNCTION crmguard.define_field(regclass, text, text, text[], boolean, boolean, text, boolean) IS 'define a contact field: its type (text, int, numeric, date, bool, phone, email), its projects (NULL: all), unique values, masking, required';
COMMENT ON FUNCTION crmguard.drop_field(regclass, text) IS 'drop a contact field and its values from every row';
COMMENT ON FUNCTION crmguard.field_values(regclass, text) IS 'the fields of a row the current principal may see; masked values in clear for holders of view_masked (audited)';
COMMENT ON FUNCTION crmguard.set_field(regclass, text, text, text) IS 'set (NULL: remove) one field of a row, as an UPDATE by the current user';
COMMENT ON FUNCTION crmguard.find_by_field(regclass, text, text) IS 'keys of the rows you may see whose field equals the normalised value, masked fields included, through an index';
COMMENT ON FUNCTION crmguard.unmask(regclass, text, text, text) IS 'the clear value of a masked field, for holders of view_masked, with a reason; every call is audited';
COMMENT ON FUNCTION crmguard.map_fields(jsonb, jsonb) IS 'fields for an import row: {{Name}} placeholders (case-sensitive) take the source''s values, other strings are constants';
COMMENT ON FUNCTION crmguard.fields_projection(jsonb, oid) IS 'internal: the fields the current principal may see, masked values masked';
COMMENT ON FUNCTION crmguard.fields_row(anyelement, oid) IS 'internal: a whole row with its fields column projected';
COMMENT ON FUNCTION crmguard.fields_get(jsonb, oid, text) IS 'internal: fields->''name'' of the projection';
COMMENT ON FUNCTION crmguard.fields_get_text(jsonb, oid, text) IS 'internal: fields->>''name'' of the projection';
COMMENT ON FUNCTION crmguard.fields_guard() IS 'internal: validates, normalises, encrypts and merges the fields of every written row';
COMMENT ON SEQUENCE crmguard.device_id_seq IS 'ids of registered devices (crmguard.device)';
COMMENT ON TABLE crmguard.device IS 'registered devices (Ed25519 public keys) of principals; a revoked device attests nothing';
COMMENT ON TABLE crmguard.device_enrollment IS 'one-time, expiring codes with which a principal enrolls its own device';
COMMENT ON FUNCTION crmguard.device_changed() IS 'internal: a committed change of crmguard.device is seen by every session''s next statement';
COMMENT ON FUNCTION crmguard.register_device(text, text, bytea) IS 'register a device (its 32-byte Ed25519 public key) for a principal (administrators)';
COMMENT ON FUNCTION crmguard.enrollment_code(text, interval) IS 'a one-time, expiring code with which the principal enrolls its own device (administrators)';
COMMENT ON FUNCTION crmguard.enroll_device(text, text, bytea) IS 'register a device with a one-time enrollment code';
COMMENT ON FUNCTION crmguard.revoke_device(bigint) IS 'revoke a device: its sessions and tokens are refused from their next statement (administrators)';
COMMENT ON FUNCTION crmguard.device_challenge() IS 'fresh bytes for the acting principal''s device to sign (Ed25519, detached): good once, in this database, for a minute';
COMMENT ON FUNCTION crmguard.device_challenge(text) IS 'a challenge for a principal''s device to sign for issue_token (the application''s login role)';
COMMENT ON FUNCTION crmguard.attest_device(bigint, bytea) IS 'attest this session''s device with its signature of the last challenge: true, or CG030 saying why';
COMMENT ON FUNCTION crmguard.device_gate(boolean) IS 'the device gate of a visibility policy: false for reads and CG030 for writes until a require_device principal has attested';
COMMENT ON TABLE crmguard.activity_track IS 'tables whose inserted, updated and deleted rows are counted per principal and day';
COMMENT ON TABLE crmguard.activity_log IS 'counted contributions: rows per principal, table, day and action; attest, token and unmask events';
COMMENT ON FUNCTION crmguard.track_check(regclass) IS 'internal: refuse to track what is not a plain table';
COMMENT ON FUNCTION crmguard.track(regclass) IS 'count rows inserted, updated and deleted in a table per principal and day (administrators)';
COMMENT ON FUNCTION crmguard.untrack(regclass) IS 'stop counting a table''s contributions; what was counted stays (administrators)';
COMMENT ON FUNCTION crmguard.require_attested() IS 'CG030 unless the acting principal needs no device or has attested one (the device gate of SQL-written steps)';
COMMENT ON FUNCTION crmguard.activity_scope() IS 'internal: the principals whose activity the caller may see';
COMMENT ON FUNCTION crmguard.activity(timestamptz, timestamptz) IS 'contributions per principal, table and action over the days from since to until (UTC): a manager sees its team, an admin everyone, others themselves';
COMMENT ON FUNCTION crmguard.inactive(interval) IS 'principals in the caller''s scope with no activity within the interval, and when they last acted';
COMMENT ON FUNCTION crmguard.compact_activity(date) IS 'fold the activity rows of each principal, table, day and action before a day into one (administrators; from cron)';

-- ---------------------------------------------------------------------------
-- Retention: what crmguard keeps once it has served, and how it is let go.
-- Sent and dead outbox messages, used and expired OTP challenges and old
-- recipient changes only grow; purge_history deletes those older than a
-- period, from cron.  Decided drafts and requests are business records and
-- the audit log is a hash chain: neither is purged here.
-- ---------------------------------------------------------------------------

CREATE FUNCTION crmguard.purge_history(keep interval DEFAULT '90 days')
    RETURNS TABLE (catalog text, purged bigint)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cutoff timestamptz;
    messages bigint;
    challenges bigint;
    changes bigint;
BEGIN
    IF keep IS NULL THEN
        RAISE EXCEPTION 'keep must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF keep OPERATOR(pg_catalog.<) '0'::interval THEN
        RAISE EXCEPTION 'keep must not be negative' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    cutoff := pg_catalog.now() OPERATOR(pg_catalog.-) keep;

    -- a message's body is erased when it is sent or dies: what goes is its envelope
    DELETE FROM crmguard.outbox o
     WHERE o.state OPERATOR(pg_catalog.<>) 'pending'
       AND COALESCE(o.sent_at, o.claimed_at, o.created_at) OPERATOR(pg_catalog.<) cutoff;
    GET DIAGNOSTICS messages = ROW_COUNT;

    -- a live challenge (not used, not expired) is never purged, whatever keep says
    DELETE FROM crmguard.otp_challenge_state c
     WHERE COALESCE(c.consumed_at, c.expires_at) OPERATOR(pg_catalog.<) cutoff;
    GET DIAGNOSTICS challenges = ROW_COUNT;

    -- a recipient change within the recipient_cooldown of any rule of its
    -- table still holds codes back: a short keep must not release them early
    DELETE FROM crmguard.otp_recipient_change c
     WHERE c.changed_at OPERATOR(pg_catalog.<) cutoff
       AND NOT EXISTS (SELECT FROM crmguard.otp_rule r
                        WHERE r.target OPERATOR(pg_catalog.=) c.target
                          AND c.changed_at OPERATOR(pg_catalog.>=)
                              (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) r.recipient_cooldown));
    GET DIAGNOSTICS changes = ROW_COUNT;

    PERFORM crmguard.audit_event('purge_history', NULL, NULL,
        pg_catalog.jsonb_build_object('keep', keep::text, 'outbox', messages,
                                      'otp_challenge', challenges, 'otp_recipient_change', changes));
    RETURN QUERY VALUES ('outbox', messages), ('otp_challenge', challenges), ('otp_recipient_change', changes);
END
$$;
COMMENT ON FUNCTION crmguard.purge_history(interval) IS 'delete sent and dead outbox messages, used and expired OTP challenges and recipient changes older than keep, never one still in a recipient cooldown (administrators; from cron)';

-- ---------------------------------------------------------------------------
-- Privileges as a fresh 1.1 install has them (99_privileges.sql): the new
-- objects are not PUBLIC unless granted below; grants to other roles stay
-- ---------------------------------------------------------------------------

-- criteria read a date or time attribute as every session reads it
CREATE FUNCTION crmguard.attr_as(key text, type_of anyelement) RETURNS anyelement
    LANGUAGE c STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_attr_as';
COMMENT ON FUNCTION crmguard.attr_as(text, anyelement) IS 'an attribute of the acting principal read as the type of type_of, dates and times as in every session (criteria compile to it)';

DROP FUNCTION crmguard.upgrade_regrant_notice(pg_catalog.regprocedure, text);

REVOKE ALL ON ALL TABLES IN SCHEMA crmguard FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA crmguard FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA crmguard FROM PUBLIC;

GRANT EXECUTE ON FUNCTION crmguard.current_principal() TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.has_role(text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.attr(text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.attr_as(text, anyelement) TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.team() TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.in_team(bigint, bigint[]) TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.assume(text, boolean) TO PUBLIC;
-- a JWT is verified with the server's key: presenting one is enough
GRANT EXECUTE ON FUNCTION crmguard.assume_jwt(text, boolean), crmguard.pre_request() TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.request_otp(regclass, text, text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.pending_challenge(regclass, text, text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.verify_otp(bigint, text) TO PUBLIC;
-- a principal may ask why it sees a row it sees; about others, only an admin
GRANT EXECUTE ON FUNCTION crmguard.why_visible(regclass, text, text) TO PUBLIC;
-- drafts: the view filters by submitter and reviewer role; the steps check it again
GRANT SELECT ON crmguard.draft TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.approve_draft(bigint, text, jsonb), crmguard.reject_draft(bigint, text, jsonb),
      crmguard.comment_draft(bigint, text), crmguard.resubmit_draft(bigint, jsonb),
      crmguard.draft_duplicates(bigint), crmguard.is_reviewer(regclass), crmguard.last_drafts() TO PUBLIC;
-- approvals: each step checks who is acting (submitter, approver, delegate)
GRANT SELECT ON crmguard.approval_request TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.submit_for_approval(regclass, text, text), crmguard.approve(bigint, text),
      crmguard.reject(bigint, text), crmguard.recall(bigint, text), crmguard.delegate(text, timestamptz),
      crmguard.my_approvals() TO PUBLIC;
-- in the WHEN clause of the row lock, which runs as whoever updates the table
GRANT EXECUTE ON FUNCTION crmguard.approval_row_pending(regclass, anyelement) TO PUBLIC;
-- a pure function that a table's owner runs when crmguard looks for duplicates as that owner
GRANT EXECUTE ON FUNCTION crmguard.normalize_match(text) TO PUBLIC;
-- contact fields: every read of a fields column calls the projection as the reader;
-- the others act as the caller (its rights, its rows) and check the principal
GRANT EXECUTE ON FUNCTION crmguard.fields_projection(jsonb, oid), crmguard.fields_row(anyelement, oid),
      crmguard.fields_get(jsonb, oid, text), crmguard.fields_get_text(jsonb, oid, text),
      crmguard.field_values(regclass, text), crmguard.set_field(regclass, text, text, text),
      crmguard.find_by_field(regclass, text, text), crmguard.unmask(regclass, text, text, text),
      crmguard.map_fields(jsonb, jsonb) TO PUBLIC;
-- devices: enrolling needs only a valid code; attesting, only the signature
GRANT EXECUTE ON FUNCTION crmguard.enroll_device(text, text, bytea), crmguard.device_challenge(),
      crmguard.attest_device(bigint, bytea), crmguard.device_gate(boolean),
      crmguard.require_attested() TO PUBLIC;
-- activity: each caller sees its scope (an admin everyone, a manager its team)
GRANT EXECUTE ON FUNCTION crmguard.activity(timestamptz, timestamptz), crmguard.inactive(interval) TO PUBLIC;
-- a sender (crmguard-relay) claims and reports outbox messages, nothing else
GRANT EXECUTE ON FUNCTION crmguard.claim_outbox(text, integer, uuid, interval),
      crmguard.mark_sent(bigint, text, uuid), crmguard.release_outbox(bigint, uuid) TO crmguard_relay;

-- Approval requests and OTP challenges name their row by its key printed
-- the same in every session (DateStyle ISO, IntervalStyle postgres, TimeZone
-- UTC, extra_float_digits 1, bytea_output hex, lc_monetary C): 1.0 kept the
-- key of a request as the submitting session printed it, and that of a
-- challenge as the caller of request_otp spelt it ('08', or a date under its
-- DateStyle); the lock and the guard look for the new text. The key of each
-- pending request and live challenge is read as this session reads it and
-- printed so. A table whose keys do not convert (or, for requests, would
-- name one row twice) is left as it was, with a WARNING for each catalog:
-- its rows may change while its requests are pending, and its live
-- challenges are asked for again.
DO $cg_keys$
DECLARE
    c record;
    t record;
    saved text[];
    pinned CONSTANT text[] := '{DateStyle,IntervalStyle,TimeZone,extra_float_digits,bytea_output,lc_monetary}';
    canonical CONSTANT text[] := '{"ISO, MDY",postgres,UTC,1,hex,C}';
BEGIN
    -- each catalog, the query of its rows whose key is rewritten (id, target,
    -- row_key), and what to say about a table whose keys it cannot rewrite
    FOR c IN
        SELECT v.catalog, v.keys, v.warning, v.hint
          FROM (VALUES
            (1, 'crmguard.approval_request_state',
             'SELECT s.id, s.target, s.row_key FROM crmguard.approval_request_state s'
             ' WHERE s.state OPERATOR(pg_catalog.=) ''pending''',
             'crmguard could not rewrite the keys of the pending approval requests of table %s',
             'Their rows may change while the requests are pending; decide or recall them.'),
            (2, 'crmguard.otp_challenge_state',
             'SELECT s.id, r.target, s.row_key FROM crmguard.otp_challenge_state s'
             ' JOIN crmguard.otp_rule r ON r.id OPERATOR(pg_catalog.=) s.rule_id'
             ' WHERE s.consumed_at IS NULL',
             'crmguard could not rewrite the keys of the live OTP challenges of table %s',
             'Their codes no longer open a change; request new ones.')
          ) AS v (n, catalog, keys, warning, hint)
         ORDER BY v.n
    LOOP
        FOR t IN EXECUTE pg_catalog.format(
            'SELECT DISTINCT l.target::pg_catalog.oid AS relid,'
            ' pg_catalog.format_type(a.atttypid, a.atttypmod) AS keytype FROM (%s) l'
            ' JOIN pg_catalog.pg_index i ON i.indrelid OPERATOR(pg_catalog.=) l.target::pg_catalog.oid'
            ' AND i.indisprimary AND i.indnkeyatts OPERATOR(pg_catalog.=) 1'
            ' JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid'
            ' AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]', c.keys)
        LOOP
            BEGIN
                EXECUTE pg_catalog.format('CREATE TEMPORARY TABLE cg_keys ON COMMIT DROP AS'
                                          ' SELECT l.id, CAST(l.row_key AS %s) AS k FROM (%s) l'
                                          ' WHERE l.target OPERATOR(pg_catalog.=) %s::pg_catalog.oid::pg_catalog.regclass',
                                          t.keytype, c.keys, t.relid);
                saved := ARRAY(SELECT pg_catalog.current_setting(n) FROM pg_catalog.unnest(pinned) n);
                FOR i IN 1 .. pg_catalog.array_length(pinned, 1) LOOP
                    PERFORM pg_catalog.set_config(pinned[i], canonical[i], true);
                END LOOP;
                EXECUTE pg_catalog.format('UPDATE %s s SET row_key = k.k::pg_catalog.text FROM pg_temp.cg_keys k'
                                          ' WHERE s.id OPERATOR(pg_catalog.=) k.id'
                                          ' AND s.row_key OPERATOR(pg_catalog.<>) k.k::pg_catalog.text', c.catalog);
                FOR i IN 1 .. pg_catalog.array_length(pinned, 1) LOOP
                    PERFORM pg_catalog.set_config(pinned[i], saved[i], true);
                END LOOP;
                DROP TABLE pg_temp.cg_keys;
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING USING MESSAGE = pg_catalog.format(c.warning, t.relid::pg_catalog.regclass),
                                    DETAIL = SQLERRM, HINT = c.hint;
            END;
        END LOOP;
    END LOOP;
END
$cg_keys$;

-- Criteria values are read and printed with fixed settings (DateStyle ISO,
-- MDY, TimeZone UTC...), whoever compiles them: compiled criteria of 1.0 hold
-- the values as their author wrote them, which each reader's session read
-- its own way ('03/04/2031' as 3 April under DMY). Visibility rules and OTP
-- conditions are compiled again; one that no longer compiles is left as it
-- was, with a WARNING. (Approval entry criteria are compiled as they are
-- read, nothing is stored.)
DO $cg_criteria$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT v.id, v.rule_name, v.target, v.criteria FROM crmguard.visibility_rule v
              WHERE v.kind OPERATOR(pg_catalog.=) 'criteria' LOOP
        BEGIN
            UPDATE crmguard.visibility_rule SET compiled = crmguard.compile_criteria(r.target, r.criteria)
             WHERE id OPERATOR(pg_catalog.=) r.id;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'crmguard could not compile visibility rule "%" again', r.rule_name
                USING DETAIL = SQLERRM,
                      HINT = 'Its dates and times are read as each reader''s session reads them; drop it and expose it again.';
        END;
    END LOOP;
    FOR r IN SELECT o.id, o.rule_name, o.target, o.condition FROM crmguard.otp_rule o
              WHERE o.condition IS NOT NULL LOOP
        BEGIN
            UPDATE crmguard.otp_rule SET compiled_condition = crmguard.compile_criteria(r.target, r.condition)
             WHERE id OPERATOR(pg_catalog.=) r.id;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'crmguard could not compile the condition of OTP rule "%" again', r.rule_name
                USING DETAIL = SQLERRM,
                      HINT = 'Its dates and times are read as each writer''s session reads them; drop it and create it again.';
        END;
    END LOOP;
END
$cg_criteria$;
