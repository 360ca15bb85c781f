-- ---------------------------------------------------------------------------
-- Draft review: inserts wait as drafts until a reviewer approves them
-- ---------------------------------------------------------------------------

CREATE TABLE crmguard.review_config (
    target        regclass PRIMARY KEY,
    reviewers     text NOT NULL CHECK (reviewers OPERATOR(pg_catalog.<>) ''),
    match_columns name[] NOT NULL DEFAULT '{}',
    exempt        text[] NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE crmguard.review_config IS 'tables whose inserts become drafts, their reviewers, duplicate keys and exempt roles';
SELECT pg_catalog.pg_extension_config_dump('crmguard.review_config', '');
CREATE TRIGGER review_config_cache_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crmguard.review_config
    FOR EACH STATEMENT EXECUTE FUNCTION crmguard.rules_changed();

CREATE SEQUENCE crmguard.draft_id_seq;
CREATE TABLE crmguard.draft_state (
    id            bigint NOT NULL DEFAULT pg_catalog.nextval('crmguard.draft_id_seq') PRIMARY KEY,
    target        regclass NOT NULL,
    row_data      jsonb NOT NULL,
    match_keys    text[] NOT NULL DEFAULT '{}',   -- normalised "column=value" of the match columns
    submitted_by  bigint,
    submitted_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'approved', 'rejected')),
    reviewed_by   bigint,
    reason        text,
    field_reasons jsonb,
    last_error    text,                            -- why the last approval failed
    row_key       text                             -- the new row's key, once approved
);
ALTER SEQUENCE crmguard.draft_id_seq OWNED BY crmguard.draft_state.id;
COMMENT ON SEQUENCE crmguard.draft_id_seq IS 'draft ids (crmguard.draft), the numbers review NOTICEs give; separate from the ids of the reviewed table';
CREATE INDEX draft_state_target_idx ON crmguard.draft_state (target, state);
CREATE INDEX draft_state_keys_idx ON crmguard.draft_state USING gin (match_keys);
COMMENT ON TABLE crmguard.draft_state IS 'drafts of reviewed tables; read crmguard.draft instead';
SELECT pg_catalog.pg_extension_config_dump('crmguard.draft_state', '');
SELECT pg_catalog.pg_extension_config_dump('crmguard.draft_id_seq', '');

CREATE SEQUENCE crmguard.draft_history_id_seq;
CREATE TABLE crmguard.draft_history (
    id        bigint NOT NULL DEFAULT pg_catalog.nextval('crmguard.draft_history_id_seq') PRIMARY KEY,
    draft     bigint NOT NULL REFERENCES crmguard.draft_state (id) ON DELETE CASCADE,
    at        timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    principal bigint,
    event     text NOT NULL CHECK (event IN ('submitted', 'commented', 'corrected', 'approved',
                                             'approval failed', 'rejected', 'resubmitted')),
    detail    text
);
ALTER SEQUENCE crmguard.draft_history_id_seq OWNED BY crmguard.draft_history.id;
COMMENT ON SEQUENCE crmguard.draft_history_id_seq IS 'ids of crmguard.draft_history';
CREATE INDEX draft_history_draft_idx ON crmguard.draft_history (draft);
SELECT pg_catalog.pg_extension_config_dump('crmguard.draft_history', '');
SELECT pg_catalog.pg_extension_config_dump('crmguard.draft_history_id_seq', '');

-- value normalised for duplicate detection: case, surrounding and inner
-- spaces, phone punctuation (an e-mail is lower-cased like everything else)
CREATE FUNCTION crmguard.normalize_match(value text) RETURNS text
    LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'crmguard_normalize_match';

CREATE FUNCTION crmguard.review_guard() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'crmguard_review_guard';

CREATE FUNCTION crmguard.enable_review(target regclass, reviewers text,
                                       match_columns name[] DEFAULT NULL,
                                       exempt text[] DEFAULT NULL) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_enable_review';
COMMENT ON FUNCTION crmguard.enable_review(regclass, text, name[], text[]) IS 'inserts into the table by non-exempt principals become drafts for the reviewers';
CREATE FUNCTION crmguard.disable_review(target regclass) RETURNS void
    LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_disable_review';

-- is the acting principal a reviewer of the table?
CREATE FUNCTION crmguard.is_reviewer(target regclass) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL RESTRICTED SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$SELECT EXISTS (SELECT 1 FROM crmguard.review_config c
                         WHERE c.target OPERATOR(pg_catalog.=) is_reviewer.target
                           AND crmguard.has_role(c.reviewers))$$;

-- likely duplicates of a draft: other pending drafts of its table sharing a
-- match key, and rows of the table with the same normalised value
-- table keys sharing a match key with a draft: read as the table's owner, in C
CREATE FUNCTION crmguard.draft_table_matches(target regclass, match_keys text[]) RETURNS text[]
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_draft_table_matches';
COMMENT ON FUNCTION crmguard.draft_table_matches(regclass, text[]) IS 'internal: keys of the rows of target whose match columns normalise to one of match_keys';

CREATE FUNCTION crmguard.draft_duplicates(draft bigint) RETURNS jsonb
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

-- Drafts as their submitter (its own) or a reviewer of the table (all) sees them
CREATE VIEW crmguard.draft WITH (security_barrier) AS
SELECT d.id, d.target, d.row_data,
       sp.name AS submitted_by, d.submitted_at, d.state,
       CASE WHEN crmguard.has_role(c.reviewers) THEN crmguard.draft_duplicates(d.id) END AS duplicates,
       rp.name AS reviewed_by, d.reason, d.field_reasons, d.last_error, d.row_key,
       (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                   'at', h.at, 'event', h.event, 'by', hp.name, 'detail', h.detail) ORDER BY h.id)
          FROM crmguard.draft_history h
          LEFT JOIN crmguard.principal hp ON hp.id OPERATOR(pg_catalog.=) h.principal
         WHERE h.draft OPERATOR(pg_catalog.=) d.id) AS history
  FROM crmguard.draft_state d
  LEFT JOIN crmguard.review_config c ON c.target OPERATOR(pg_catalog.=) d.target
  LEFT JOIN crmguard.principal sp ON sp.id OPERATOR(pg_catalog.=) d.submitted_by
  LEFT JOIN crmguard.principal rp ON rp.id OPERATOR(pg_catalog.=) d.reviewed_by
 WHERE d.submitted_by OPERATOR(pg_catalog.=) crmguard.current_principal()
    OR crmguard.has_role(c.reviewers);
COMMENT ON VIEW crmguard.draft IS 'drafts: a submitter sees its own, the reviewers of a table all of its drafts';

CREATE FUNCTION crmguard.last_drafts() RETURNS bigint[]
    LANGUAGE c VOLATILE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_last_drafts';
COMMENT ON FUNCTION crmguard.last_drafts() IS 'ids of the drafts made by this session''s most recent statement that made any (RETURNING cannot report them)';

CREATE FUNCTION crmguard.approve_draft(draft bigint, comment text DEFAULT NULL, changes jsonb DEFAULT NULL)
    RETURNS text
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_approve_draft';
COMMENT ON FUNCTION crmguard.approve_draft(bigint, text, jsonb) IS 'insert the draft (with changes) into its table; returns the new row''s key, or NULL when the row was refused (the draft stays pending with the error)';

-- a pending draft, locked, for a step by a reviewer (or its submitter)
CREATE FUNCTION crmguard.draft_for_step(draft bigint, submitter_may boolean, want_state text)
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
REVOKE ALL ON FUNCTION crmguard.draft_for_step(bigint, boolean, text) FROM PUBLIC;

-- field names of a jsonb object must be columns of the table
CREATE FUNCTION crmguard.check_draft_fields(target regclass, fields jsonb, what text) RETURNS void
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f text;
BEGIN
    IF fields IS NULL THEN
        RETURN;
    END IF;
    IF pg_catalog.jsonb_typeof(fields) OPERATOR(pg_catalog.<>) 'object' THEN
        RAISE EXCEPTION '% must be a JSON object of column names', what USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR f IN SELECT pg_catalog.jsonb_object_keys(fields) LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                        WHERE a.attrelid OPERATOR(pg_catalog.=) target AND a.attname OPERATOR(pg_catalog.=) f
                          AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped) THEN
            RAISE EXCEPTION 'column "%" of relation % does not exist', f, target
                USING ERRCODE = 'undefined_column', DETAIL = pg_catalog.format('It is named in %s.', what);
        END IF;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION crmguard.check_draft_fields(regclass, jsonb, text) FROM PUBLIC;

CREATE FUNCTION crmguard.reject_draft(draft bigint, reason text, field_reasons jsonb DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d crmguard.draft_state := crmguard.draft_for_step(draft, false, 'pending');
BEGIN
    IF reason IS NULL OR reason OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'a rejection needs a reason' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM crmguard.check_draft_fields(d.target, field_reasons, 'field_reasons');
    UPDATE crmguard.draft_state s
       SET state = 'rejected', reviewed_by = crmguard.current_principal(),
           reason = reject_draft.reason, field_reasons = reject_draft.field_reasons
     WHERE s.id OPERATOR(pg_catalog.=) draft;
    INSERT INTO crmguard.draft_history (draft, principal, event, detail)
    VALUES (draft, crmguard.current_principal(), 'rejected', reason);
    PERFORM crmguard.audit_event('draft_rejected', d.target::text, draft::text,
        pg_catalog.jsonb_build_object('reason', reason, 'field_reasons', field_reasons));
END
$$;
COMMENT ON FUNCTION crmguard.reject_draft(bigint, text, jsonb) IS 'reject a pending draft with a reason, and optionally one per field';

CREATE FUNCTION crmguard.comment_draft(draft bigint, comment text) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d crmguard.draft_state := crmguard.draft_for_step(draft, true, NULL);
BEGIN
    INSERT INTO crmguard.draft_history (draft, principal, event, detail)
    VALUES (draft, crmguard.current_principal(), 'commented', comment);
    PERFORM crmguard.audit_event('draft_commented', d.target::text, draft::text, NULL);
END
$$;
COMMENT ON FUNCTION crmguard.comment_draft(bigint, text) IS 'comment on a draft (its submitter or a reviewer)';

CREATE FUNCTION crmguard.resubmit_draft(draft bigint, row_data jsonb) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d crmguard.draft_state := crmguard.draft_for_step(draft, true, 'rejected');
BEGIN
    PERFORM crmguard.check_draft_fields(d.target, row_data, 'row_data');
    UPDATE crmguard.draft_state s
       SET state = 'pending', row_data = resubmit_draft.row_data,
           match_keys = crmguard.draft_match_keys(d.target, resubmit_draft.row_data),
           reviewed_by = NULL, reason = NULL, field_reasons = NULL, last_error = NULL
     WHERE s.id OPERATOR(pg_catalog.=) draft;
    INSERT INTO crmguard.draft_history (draft, principal, event)
    VALUES (draft, crmguard.current_principal(), 'resubmitted');
    PERFORM crmguard.audit_event('draft_resubmitted', d.target::text, draft::text, NULL);
END
$$;
COMMENT ON FUNCTION crmguard.resubmit_draft(bigint, jsonb) IS 'send a rejected draft back for review with corrected data';

CREATE FUNCTION crmguard.draft_match_keys(target regclass, row_data jsonb) RETURNS text[]
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_draft_match_keys';

COMMENT ON FUNCTION crmguard.disable_review(regclass) IS 'switch draft review off for a table; pending drafts stay in crmguard.draft';
COMMENT ON FUNCTION crmguard.draft_duplicates(bigint) IS 'for a reviewer: pending drafts and table rows that share a match key with the draft';
COMMENT ON FUNCTION crmguard.draft_for_step(bigint, boolean, text) IS 'internal: a pending draft, locked, for a step by a reviewer (or its submitter)';
COMMENT ON FUNCTION crmguard.check_draft_fields(regclass, jsonb, text) IS 'internal: the keys of a jsonb object must be columns of the table';
COMMENT ON FUNCTION crmguard.draft_match_keys(regclass, jsonb) IS 'internal: the normalised match keys of a draft''s row';
COMMENT ON FUNCTION crmguard.is_reviewer(regclass) IS 'does the acting principal review this table''s drafts?';
COMMENT ON FUNCTION crmguard.normalize_match(text) IS 'a value as duplicate detection compares it: case, spaces and phone punctuation folded';
COMMENT ON FUNCTION crmguard.review_guard() IS 'internal: the review guard, a BEFORE INSERT row trigger keeping inserts as drafts';
COMMENT ON TABLE crmguard.draft_history IS 'every step of every draft: submitted, commented, corrected, rejected, approved';
