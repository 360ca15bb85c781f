-- ---------------------------------------------------------------------------
-- Outbox: messages for external senders (SMS, e-mail, ...), one for every feature
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
    expires_at  timestamptz        -- a message holding a code is void after this
);
ALTER SEQUENCE crmguard.outbox_id_seq OWNED BY crmguard.outbox.id;
CREATE INDEX outbox_pending_idx ON crmguard.outbox (channel, id) WHERE sent_at IS NULL;
COMMENT ON TABLE crmguard.outbox IS 'messages waiting for an external sender; NOTIFY crmguard_outbox announces new ones';
SELECT pg_catalog.pg_extension_config_dump('crmguard.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('crmguard.outbox_id_seq', '');

-- Claim up to max unsent messages of a channel.  A claim lasts five minutes:
-- a sender that dies without mark_sent() releases its messages to the next.
-- A message whose code expired is never handed out: its body is erased and
-- it is left failed.
CREATE FUNCTION crmguard.claim_outbox(channel text, max integer DEFAULT 10)
    RETURNS SETOF crmguard.outbox
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE crmguard.outbox o
       SET body = NULL, last_error = 'expired before it was sent', claimed_at = NULL
     WHERE o.channel OPERATOR(pg_catalog.=) claim_outbox.channel
       AND o.sent_at IS NULL
       AND o.body IS NOT NULL
       AND o.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now();
    UPDATE crmguard.outbox o
       SET claimed_at = pg_catalog.now(),
           attempts = o.attempts OPERATOR(pg_catalog.+) 1
     WHERE o.id IN (SELECT c.id FROM crmguard.outbox c
                     WHERE c.channel OPERATOR(pg_catalog.=) claim_outbox.channel
                       AND c.sent_at IS NULL
                       AND (c.expires_at IS NULL OR
                            c.expires_at OPERATOR(pg_catalog.>) pg_catalog.now())
                       AND (c.claimed_at IS NULL OR
                            c.claimed_at OPERATOR(pg_catalog.<)
                                (pg_catalog.now() OPERATOR(pg_catalog.-) interval '5 minutes'))
                     ORDER BY c.id
                     LIMIT claim_outbox.max
                     FOR UPDATE SKIP LOCKED)
    RETURNING o.*
$$;
COMMENT ON FUNCTION crmguard.claim_outbox(text, integer) IS 'claim unsent messages of a channel; two senders never get the same message';

-- Report a delivery.  A sent message's body is erased: it may hold a code.
CREATE FUNCTION crmguard.mark_sent(id bigint, error text DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF error IS NULL THEN
        UPDATE crmguard.outbox o
           SET sent_at = pg_catalog.now(), body = NULL, last_error = NULL, claimed_at = NULL
         WHERE o.id OPERATOR(pg_catalog.=) mark_sent.id;
    ELSE
        UPDATE crmguard.outbox o
           SET last_error = mark_sent.error, claimed_at = NULL
         WHERE o.id OPERATOR(pg_catalog.=) mark_sent.id;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'outbox message % does not exist', mark_sent.id
            USING ERRCODE = 'undefined_object';
    END IF;
END
$$;
COMMENT ON FUNCTION crmguard.mark_sent(bigint, text) IS 'report a message sent (error NULL) or failed (it will be claimed again)';
