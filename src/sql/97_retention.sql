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
