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
    LANGUAGE c STABLE PARALLEL RESTRICTED
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
