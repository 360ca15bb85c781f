-- ---------------------------------------------------------------------------
-- Outbox: messages for external senders (SMS, e-mail, webhooks), one for every
-- feature.  crmguard-relay (relay/) is the sender that ships with crmguard.
--
-- Delivery is at least once: a claim is a lease that expires, so the messages
-- of a sender that died go to the next one; a report (mark_sent) is accepted
-- only from the holder of the lease; a failure is retried with exponential
-- backoff and jitter until crmguard.outbox_max_attempts, then the message is
-- dead with its last error.  Every message carries an idempotency key that
-- stays the same across attempts, for providers that deduplicate.
-- ---------------------------------------------------------------------------

CREATE SEQUENCE crmguard.outbox_id_seq;
CREATE TABLE crmguard.outbox (
    id          bigint NOT NULL DEFAULT pg_catalog.nextval('crmguard.outbox_id_seq') PRIMARY KEY,
    channel     text NOT NULL,
    recipient   text NOT NULL,
    subject     text,
    body        text,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    sent_at     timestamptz,
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text,
    claimed_at  timestamptz,       -- a sender holds the message until it reports
    expires_at  timestamptz,       -- a message holding a code is void after this
    state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'dead')),
    idempotency_key uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    lease       uuid,              -- who holds the claim ...
    lease_until timestamptz,       -- ... and until when
    next_attempt_at timestamptz    -- after a failure: not claimed again before this
);
ALTER SEQUENCE crmguard.outbox_id_seq OWNED BY crmguard.outbox.id;
COMMENT ON SEQUENCE crmguard.outbox_id_seq IS 'ids of outbox messages (crmguard.outbox)';
CREATE INDEX outbox_pending_idx ON crmguard.outbox (channel, id) WHERE state = 'pending';
COMMENT ON TABLE crmguard.outbox IS 'messages waiting for an external sender; NOTIFY crmguard_outbox announces new ones';
SELECT pg_catalog.pg_extension_config_dump('crmguard.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('crmguard.outbox_id_seq', '');

-- This backend's own lease, for senders that claim and report in one session
-- without naming a lease (random, made on first use, never stored elsewhere)
CREATE FUNCTION crmguard.outbox_session_lease()
    RETURNS uuid
    LANGUAGE C VOLATILE STRICT
    AS 'MODULE_PATHNAME', 'crmguard_outbox_session_lease';
COMMENT ON FUNCTION crmguard.outbox_session_lease() IS 'internal: the lease of claims made by this session without an explicit lease';

-- Claim up to max pending messages of a channel for lease_for.  A sender that
-- dies without reporting releases its messages to the next one when the lease
-- runs out.  A message whose code expired is never handed out: its body is
-- erased and it is dead.  A message whose last allowed attempt ended with no
-- report (its sender died each time) is dead too.
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

-- The message, locked, when the caller holds its lease; otherwise an error
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

-- Report a delivery: sent (error NULL), or failed (retried after a backoff,
-- or dead after the last attempt).  Returns the message's state afterwards.
-- A sent message's body is erased (it may hold a code), and so is a dead
-- message's when it held a code.
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

-- Give a leased message back untried (a sender stopping), for the next sender
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

-- The role of a sender: "GRANT crmguard_relay TO <login role>" is all it needs.
-- Roles belong to the cluster: it is made once and kept by DROP EXTENSION.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'crmguard_relay') THEN
        CREATE ROLE crmguard_relay NOLOGIN;
        COMMENT ON ROLE crmguard_relay IS 'crmguard-relay: claims and reports outbox messages (GRANT crmguard_relay TO a login role)';
    END IF;
END
$$;
