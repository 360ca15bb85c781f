-- ---------------------------------------------------------------------------
-- Approval workflows: multi-step approvals, actions after the decision, the
-- row locked while a request is pending
-- ---------------------------------------------------------------------------

CREATE SEQUENCE crmguard.approval_process_id_seq;
CREATE TABLE crmguard.approval_process (
    id               bigint NOT NULL DEFAULT pg_catalog.nextval('crmguard.approval_process_id_seq') PRIMARY KEY,
    process_name     text NOT NULL CHECK (process_name OPERATOR(pg_catalog.<>) ''),
    version          integer NOT NULL,
    position         integer NOT NULL,   -- order on its table: the first process whose criteria match applies
    target           regclass NOT NULL,
    entry_criteria   jsonb,
    steps            jsonb NOT NULL,
    on_approve       jsonb NOT NULL DEFAULT '[]',
    on_reject        jsonb NOT NULL DEFAULT '[]',
    on_submit        jsonb NOT NULL DEFAULT '[]',
    auto_submit      text[] NOT NULL DEFAULT '{}',
    editable_columns name[] NOT NULL DEFAULT '{}',
    run_as           regrole NOT NULL,   -- who defined it: "set" and "call" actions run as this role
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    current          boolean NOT NULL DEFAULT true,   -- false: an older version, or dropped
    UNIQUE (process_name, version)
);
ALTER SEQUENCE crmguard.approval_process_id_seq OWNED BY crmguard.approval_process.id;
COMMENT ON SEQUENCE crmguard.approval_process_id_seq IS 'ids of approval process versions (crmguard.approval_process)';
CREATE UNIQUE INDEX approval_process_current_idx ON crmguard.approval_process (process_name) WHERE current;
COMMENT ON TABLE crmguard.approval_process IS 'approval processes, every version; requests keep the version they started with';
SELECT pg_catalog.pg_extension_config_dump('crmguard.approval_process', '');
SELECT pg_catalog.pg_extension_config_dump('crmguard.approval_process_id_seq', '');
CREATE TRIGGER approval_process_cache_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crmguard.approval_process
    FOR EACH STATEMENT EXECUTE FUNCTION crmguard.rules_changed();

CREATE SEQUENCE crmguard.approval_request_id_seq;
CREATE TABLE crmguard.approval_request_state (
    id              bigint NOT NULL DEFAULT pg_catalog.nextval('crmguard.approval_request_id_seq') PRIMARY KEY,
    process         bigint NOT NULL REFERENCES crmguard.approval_process (id) ON DELETE CASCADE,
    target          regclass NOT NULL,
    row_key         text NOT NULL,
    row_data        jsonb NOT NULL,      -- the row at submission, without its editable columns
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'approved', 'rejected', 'recalled')),
    current_step    integer NOT NULL DEFAULT 0,
    approvers       bigint[] NOT NULL DEFAULT '{}',   -- of the current step
    required        integer NOT NULL DEFAULT 1,       -- approvals the current step needs
    step_started_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    step_timeout    interval,
    submitted_by    bigint,
    submitted_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    decided_at      timestamptz
);
ALTER SEQUENCE crmguard.approval_request_id_seq OWNED BY crmguard.approval_request_state.id;
COMMENT ON SEQUENCE crmguard.approval_request_id_seq IS 'ids of approval requests (crmguard.approval_request)';
CREATE UNIQUE INDEX approval_request_pending_idx ON crmguard.approval_request_state (target, row_key)
    WHERE state OPERATOR(pg_catalog.=) 'pending';
COMMENT ON TABLE crmguard.approval_request_state IS 'approval requests; read crmguard.approval_request instead';
SELECT pg_catalog.pg_extension_config_dump('crmguard.approval_request_state', '');
SELECT pg_catalog.pg_extension_config_dump('crmguard.approval_request_id_seq', '');
-- A pending row's lock lives in each backend's cache, kept key by key: when
-- a request starts or ends, its commit moves the clock (in shared memory) of
-- its key only, and backends read that key again. TRUNCATE invalidates this
-- view (which no query reads, so no plan is lost): every backend reads all again.
CREATE VIEW crmguard.approval_pending_signal AS SELECT 1 AS signal;
COMMENT ON VIEW crmguard.approval_pending_signal IS 'invalidated when the request table is emptied: backends read their row locks again';
CREATE FUNCTION crmguard.approval_requests_changed() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'crmguard_approval_requests_changed';
COMMENT ON FUNCTION crmguard.approval_requests_changed() IS 'internal: row and TRUNCATE trigger on approval requests; keeps approval_waiting and moves the lock clocks of the keys whose requests start or end';
CREATE TRIGGER approval_request_cache_invalidate
    AFTER INSERT OR UPDATE OF state, row_key, target, process, approvers, current_step,
                           submitted_by, submitted_at OR DELETE
    ON crmguard.approval_request_state
    FOR EACH ROW EXECUTE FUNCTION crmguard.approval_requests_changed();
CREATE TRIGGER approval_request_cache_truncate
    AFTER TRUNCATE ON crmguard.approval_request_state
    FOR EACH STATEMENT EXECUTE FUNCTION crmguard.approval_requests_changed();

-- Who a pending request waits for: one row per approver of its current step
-- who has not approved it yet, kept by the trigger above (whose work
-- crmguard's own writes of the requests run themselves) and by approve().
-- Small (pending requests only), read by approver: my_approvals() costs what
-- waits for the caller, whatever the history. It carries what an inbox shows
-- of its request, so an inbox is one index scan, not one lookup per request.
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
-- derived data, not dumped: a restore of the requests rebuilds it through the trigger

CREATE SEQUENCE crmguard.approval_history_id_seq;
CREATE TABLE crmguard.approval_history (
    id           bigint NOT NULL DEFAULT pg_catalog.nextval('crmguard.approval_history_id_seq') PRIMARY KEY,
    request      bigint NOT NULL REFERENCES crmguard.approval_request_state (id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    step         integer,
    principal    bigint,                 -- who acted (NULL: the system, on a timeout)
    on_behalf_of bigint,                 -- the approver a delegate acted for
    event        text NOT NULL CHECK (event IN ('submitted', 'approved', 'rejected', 'recalled',
                                                'step approved', 'escalated', 'timed out')),
    comment      text
);
ALTER SEQUENCE crmguard.approval_history_id_seq OWNED BY crmguard.approval_history.id;
COMMENT ON SEQUENCE crmguard.approval_history_id_seq IS 'ids of crmguard.approval_history';
CREATE INDEX approval_history_request_idx ON crmguard.approval_history (request);
COMMENT ON TABLE crmguard.approval_history IS 'every event of every approval request: submitted, approved, rejected, recalled, escalated, timed out';
SELECT pg_catalog.pg_extension_config_dump('crmguard.approval_history', '');
SELECT pg_catalog.pg_extension_config_dump('crmguard.approval_history_id_seq', '');
-- History a statement adds (a restore loads the requests, then their
-- history; a DBA's INSERT): an approval takes its approver off the waiting
-- list of the step it approved. crmguard's own appends are written without a
-- statement and keep the list themselves.
CREATE FUNCTION crmguard.approval_history_added() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'crmguard_approval_history_added';
COMMENT ON FUNCTION crmguard.approval_history_added() IS 'internal: statement trigger on approval history added by a statement (a restore); approvers stop waiting for the steps they approved';
CREATE TRIGGER approval_history_waiting
    AFTER INSERT ON crmguard.approval_history
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION crmguard.approval_history_added();

CREATE TABLE crmguard.delegation (
    principal    bigint PRIMARY KEY,     -- who is away
    to_principal bigint NOT NULL,
    since        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    until        timestamptz NOT NULL
);
COMMENT ON TABLE crmguard.delegation IS 'approvers away: a delegate acts for them until the given time';
SELECT pg_catalog.pg_extension_config_dump('crmguard.delegation', '');

CREATE SEQUENCE crmguard.task_id_seq;
CREATE TABLE crmguard.task (
    id          bigint NOT NULL DEFAULT pg_catalog.nextval('crmguard.task_id_seq') PRIMARY KEY,
    request     bigint REFERENCES crmguard.approval_request_state (id) ON DELETE SET NULL,
    assigned_to bigint NOT NULL,
    subject     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    done_at     timestamptz
);
ALTER SEQUENCE crmguard.task_id_seq OWNED BY crmguard.task.id;
COMMENT ON SEQUENCE crmguard.task_id_seq IS 'ids of crmguard.task';
CREATE INDEX task_assigned_idx ON crmguard.task (assigned_to) WHERE done_at IS NULL;
COMMENT ON TABLE crmguard.task IS 'tasks that approval actions assign to principals';
SELECT pg_catalog.pg_extension_config_dump('crmguard.task', '');
SELECT pg_catalog.pg_extension_config_dump('crmguard.task_id_seq', '');

-- ---------------------------------------------------------------------------
-- C entry points
-- ---------------------------------------------------------------------------
CREATE FUNCTION crmguard.create_approval_process(process_name text, target regclass,
    entry_criteria jsonb, steps jsonb,
    on_approve jsonb DEFAULT '[]', on_reject jsonb DEFAULT '[]', on_submit jsonb DEFAULT '[]',
    auto_submit text[] DEFAULT '{}', editable_columns name[] DEFAULT '{}') RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_create_approval_process';
COMMENT ON FUNCTION crmguard.create_approval_process(text, regclass, jsonb, jsonb, jsonb, jsonb, jsonb, text[], name[])
    IS 'define an approval process, or a new version of one (requests in flight keep theirs); returns the version''s id';
CREATE FUNCTION crmguard.drop_approval_process(process_name text) RETURNS void
    LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_drop_approval_process';
COMMENT ON FUNCTION crmguard.drop_approval_process(text) IS 'stop a process from applying to new requests; requests in flight go on';
CREATE FUNCTION crmguard.submit_for_approval(target regclass, row_key text, comment text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_submit_for_approval';
COMMENT ON FUNCTION crmguard.submit_for_approval(regclass, text, text) IS 'submit a row (one the caller can see and change) to the first process whose criteria it matches';
CREATE FUNCTION crmguard.approval_lock() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'crmguard_approval_lock';
COMMENT ON FUNCTION crmguard.approval_lock() IS 'internal: the row lock, an AFTER UPDATE OR DELETE row trigger refusing changes to a row with a pending request (CG010)';
-- the lock trigger's WHEN clause; answers only roles that may change the table.
-- VOLATILE: a request committed while the statement waited for the row counts at once
CREATE FUNCTION crmguard.approval_row_pending(target regclass, row_key anyelement) RETURNS boolean
    LANGUAGE c VOLATILE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'crmguard_approval_row_pending';
COMMENT ON FUNCTION crmguard.approval_row_pending(regclass, anyelement) IS 'internal: the row lock''s WHEN clause; does this row of the table have a pending request?';
CREATE FUNCTION crmguard.approval_truncate() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'crmguard_approval_truncate';
COMMENT ON FUNCTION crmguard.approval_truncate() IS 'internal: BEFORE TRUNCATE trigger refusing to empty a table with pending requests (CG010)';
CREATE FUNCTION crmguard.approval_auto_submit() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'crmguard_approval_auto_submit';
COMMENT ON FUNCTION crmguard.approval_auto_submit() IS 'internal: AFTER INSERT OR UPDATE row trigger submitting rows that enter a process''s entry criteria (auto_submit)';
CREATE FUNCTION crmguard.approval_wake_worker() RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_approval_wake_worker';
REVOKE ALL ON FUNCTION crmguard.approval_wake_worker() FROM PUBLIC;
COMMENT ON FUNCTION crmguard.approval_wake_worker() IS 'internal: make sure this database''s background worker runs, since a step with a timeout started';
-- ---------------------------------------------------------------------------
-- Definitions: everything checked before anything is stored (CG020)
-- ---------------------------------------------------------------------------
CREATE FUNCTION crmguard.approval_invalid(message text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'invalid approval process: %', message USING ERRCODE = 'CG020';
END
$$;
REVOKE ALL ON FUNCTION crmguard.approval_invalid(text) FROM PUBLIC;
COMMENT ON FUNCTION crmguard.approval_invalid(text) IS 'internal: raise CG020 "invalid approval process" with the given reason';

-- the type of a column of the table, or CG020
CREATE FUNCTION crmguard.approval_column_type(target regclass, col text, what text) RETURNS text
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t text;
BEGIN
    -- a domain is judged by its base type: its CHECK may call the table owner's
    -- functions, and this runs as the extension's owner
    WITH RECURSIVE b(typ, mod, depth) AS (
        SELECT a.atttypid, a.atttypmod, 0 FROM pg_catalog.pg_attribute a
         WHERE a.attrelid OPERATOR(pg_catalog.=) target AND a.attname OPERATOR(pg_catalog.=) col
           AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
        UNION ALL
        SELECT y.typbasetype, y.typtypmod, b.depth OPERATOR(pg_catalog.+) 1 FROM b
          JOIN pg_catalog.pg_type y ON y.oid OPERATOR(pg_catalog.=) b.typ
         WHERE y.typtype OPERATOR(pg_catalog.=) 'd')
    SELECT pg_catalog.format_type(b.typ, b.mod) INTO t FROM b ORDER BY b.depth DESC LIMIT 1;
    IF t IS NULL THEN
        PERFORM crmguard.approval_invalid(pg_catalog.format('column "%s" of relation %s does not exist (%s)', col, target, what));
    END IF;
    RETURN t;
END
$$;
REVOKE ALL ON FUNCTION crmguard.approval_column_type(regclass, text, text) FROM PUBLIC;
COMMENT ON FUNCTION crmguard.approval_column_type(regclass, text, text) IS 'internal: the type of a column a process definition names, or CG020 when the table has no such column';

-- a column holding principal ids
CREATE FUNCTION crmguard.approval_principal_column(target regclass, col jsonb, what text) RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.jsonb_typeof(col) IS DISTINCT FROM 'string' THEN
        PERFORM crmguard.approval_invalid(what || ' must name a column');
    END IF;
    IF crmguard.approval_column_type(target, col OPERATOR(pg_catalog.#>>) '{}', what)
       NOT IN ('bigint', 'integer', 'smallint') THEN
        PERFORM crmguard.approval_invalid(pg_catalog.format('column "%s" of %s must hold principal ids (an integer type)',
                                                            col OPERATOR(pg_catalog.#>>) '{}', what));
    END IF;
END
$$;
REVOKE ALL ON FUNCTION crmguard.approval_principal_column(regclass, jsonb, text) FROM PUBLIC;
COMMENT ON FUNCTION crmguard.approval_principal_column(regclass, jsonb, text) IS 'internal: CG020 unless a column a process definition names holds principal ids (an integer type)';

CREATE FUNCTION crmguard.approval_check_actions(target regclass, actions jsonb, what text, run_as regrole)
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
REVOKE ALL ON FUNCTION crmguard.approval_check_actions(regclass, jsonb, text, regrole) FROM PUBLIC;
COMMENT ON FUNCTION crmguard.approval_check_actions(regclass, jsonb, text, regrole) IS 'internal: CG020 unless every action of a list is well formed for the table (set values judged as the table''s owner)';

CREATE FUNCTION crmguard.approval_check_definition(target regclass, steps jsonb, on_approve jsonb,
    on_reject jsonb, on_submit jsonb, auto_submit text[], editable_columns name[], run_as regrole) RETURNS void
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    step jsonb;
    a jsonb;
    kinds text[];
    approvers integer;
    quorum integer;
    c text;
    n integer := 0;
BEGIN
    IF pg_catalog.jsonb_typeof(steps) IS DISTINCT FROM 'array' OR pg_catalog.jsonb_array_length(steps) OPERATOR(pg_catalog.=) 0 THEN
        PERFORM crmguard.approval_invalid('steps must be a non-empty JSON array');
    END IF;
    FOR step IN SELECT pg_catalog.jsonb_array_elements(steps) LOOP
        n := n OPERATOR(pg_catalog.+) 1;
        IF pg_catalog.jsonb_typeof(step) IS DISTINCT FROM 'object'
           OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_object_keys(step) x
                       WHERE x NOT IN ('name', 'approvers', 'mode', 'timeout', 'on_timeout')) THEN
            PERFORM crmguard.approval_invalid(pg_catalog.format('step %s: a step has name, approvers, mode, timeout and on_timeout', n));
        END IF;
        IF COALESCE(step OPERATOR(pg_catalog.->>) 'name', '') OPERATOR(pg_catalog.=) '' THEN
            PERFORM crmguard.approval_invalid(pg_catalog.format('step %s needs a name', n));
        END IF;
        approvers := 0;
        a := step OPERATOR(pg_catalog.->) 'approvers';
        IF pg_catalog.jsonb_typeof(a) OPERATOR(pg_catalog.=) 'array' AND pg_catalog.jsonb_array_length(a) OPERATOR(pg_catalog.=) 0 THEN
            PERFORM crmguard.approval_invalid(pg_catalog.format('step %s: the list of approvers is empty', n));
        END IF;
        FOR a IN SELECT pg_catalog.jsonb_array_elements(CASE WHEN pg_catalog.jsonb_typeof(a) OPERATOR(pg_catalog.=) 'array'
                                                             THEN a ELSE pg_catalog.jsonb_build_array(a) END) LOOP
            kinds := ARRAY(SELECT pg_catalog.jsonb_object_keys(CASE WHEN pg_catalog.jsonb_typeof(a) OPERATOR(pg_catalog.=) 'object' THEN a ELSE '{}' END) ORDER BY 1);
            IF kinds OPERATOR(pg_catalog.=) '{role}' AND pg_catalog.jsonb_typeof(a OPERATOR(pg_catalog.->) 'role') OPERATOR(pg_catalog.=) 'string' THEN
                approvers := approvers OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM crmguard.principal p
                 WHERE p.active AND (a OPERATOR(pg_catalog.->>) 'role') OPERATOR(pg_catalog.=) ANY (p.roles));
                IF NOT EXISTS (SELECT 1 FROM crmguard.principal p
                                WHERE p.active AND (a OPERATOR(pg_catalog.->>) 'role') OPERATOR(pg_catalog.=) ANY (p.roles)) THEN
                    PERFORM crmguard.approval_invalid(pg_catalog.format('step %s: no active principal has role "%s"', n, a OPERATOR(pg_catalog.->>) 'role'));
                END IF;
            ELSIF kinds OPERATOR(pg_catalog.=) '{principal}' AND pg_catalog.jsonb_typeof(a OPERATOR(pg_catalog.->) 'principal') OPERATOR(pg_catalog.=) 'string' THEN
                IF NOT EXISTS (SELECT 1 FROM crmguard.principal p WHERE p.name OPERATOR(pg_catalog.=) (a OPERATOR(pg_catalog.->>) 'principal')) THEN
                    PERFORM crmguard.approval_invalid(pg_catalog.format('step %s: principal "%s" does not exist', n, a OPERATOR(pg_catalog.->>) 'principal'));
                END IF;
                approvers := approvers OPERATOR(pg_catalog.+) 1;
            ELSIF kinds OPERATOR(pg_catalog.=) '{manager_of}' THEN
                PERFORM crmguard.approval_principal_column(target, a OPERATOR(pg_catalog.->) 'manager_of', pg_catalog.format('step %s manager_of', n));
                approvers := approvers OPERATOR(pg_catalog.+) 1;
            ELSIF kinds OPERATOR(pg_catalog.=) '{levels_above,of}' AND pg_catalog.jsonb_typeof(a OPERATOR(pg_catalog.->) 'levels_above') OPERATOR(pg_catalog.=) 'number'
                  AND (a OPERATOR(pg_catalog.->>) 'levels_above') ~ '^[1-9][0-9]?$' THEN
                PERFORM crmguard.approval_principal_column(target, a OPERATOR(pg_catalog.->) 'of', pg_catalog.format('step %s levels_above', n));
                approvers := approvers OPERATOR(pg_catalog.+) 1;
            ELSE
                PERFORM crmguard.approval_invalid(pg_catalog.format(
                    'step %s: approvers is one of {"role"}, {"principal"}, {"manager_of": column} or {"levels_above": n, "of": column}, or a list of them', n));
            END IF;
        END LOOP;
        IF step OPERATOR(pg_catalog.?) 'mode' THEN
            IF (step OPERATOR(pg_catalog.->) 'mode') IN ('"first"'::jsonb, '"all"'::jsonb) THEN
                NULL;
            ELSIF pg_catalog.jsonb_typeof(step OPERATOR(pg_catalog.->) 'mode') OPERATOR(pg_catalog.=) 'object'
                  AND (step OPERATOR(pg_catalog.->) 'mode') OPERATOR(pg_catalog.?) 'quorum'
                  AND (step OPERATOR(pg_catalog.#>>) '{mode,quorum}') ~ '^[1-9][0-9]{0,3}$' THEN
                quorum := (step OPERATOR(pg_catalog.#>>) '{mode,quorum}')::int;
                IF quorum OPERATOR(pg_catalog.>) approvers THEN
                    PERFORM crmguard.approval_invalid(pg_catalog.format('step %s: a quorum of %s is larger than its %s approver(s)', n, quorum, approvers));
                END IF;
            ELSE
                PERFORM crmguard.approval_invalid(pg_catalog.format('step %s: mode is "first", "all" or {"quorum": n}', n));
            END IF;
        END IF;
        IF step OPERATOR(pg_catalog.?) 'timeout' THEN
            BEGIN
                IF (step OPERATOR(pg_catalog.->>) 'timeout')::interval OPERATOR(pg_catalog.<=) '0'::interval THEN
                    RAISE EXCEPTION 'not positive';
                END IF;
            EXCEPTION WHEN OTHERS THEN
                PERFORM crmguard.approval_invalid(pg_catalog.format('step %s: timeout must be a positive interval', n));
            END;
        END IF;
        IF step OPERATOR(pg_catalog.?) 'on_timeout' AND (NOT step OPERATOR(pg_catalog.?) 'timeout'
               OR (step OPERATOR(pg_catalog.->>) 'on_timeout') NOT IN ('escalate', 'approve', 'reject')) THEN
            PERFORM crmguard.approval_invalid(pg_catalog.format('step %s: on_timeout is escalate, approve or reject, with a timeout', n));
        END IF;
    END LOOP;
    PERFORM crmguard.approval_check_actions(target, on_approve, 'on_approve', run_as);
    PERFORM crmguard.approval_check_actions(target, on_reject, 'on_reject', run_as);
    PERFORM crmguard.approval_check_actions(target, on_submit, 'on_submit', run_as);
    IF auto_submit IS NULL OR NOT auto_submit OPERATOR(pg_catalog.<@) '{insert,update}'::text[] THEN
        PERFORM crmguard.approval_invalid('auto_submit may hold insert and update only');
    END IF;
    FOREACH c IN ARRAY COALESCE(editable_columns::text[], '{}') LOOP
        PERFORM crmguard.approval_column_type(target, c, 'editable_columns');
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION crmguard.approval_check_definition(regclass, jsonb, jsonb, jsonb, jsonb, text[], name[], regrole) FROM PUBLIC;
COMMENT ON FUNCTION crmguard.approval_check_definition(regclass, jsonb, jsonb, jsonb, jsonb, text[], name[], regrole) IS 'internal: CG020 unless a whole process definition (steps, approvers, modes, timeouts, actions, columns) is valid for the table';

-- ---------------------------------------------------------------------------
-- Who approves a step
-- ---------------------------------------------------------------------------

-- the principal itself when active, else its nearest active manager
CREATE FUNCTION crmguard.approval_active_above(who bigint) RETURNS bigint
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p crmguard.principal;
BEGIN
    FOR i IN 1..1000 LOOP
        SELECT * INTO p FROM crmguard.principal WHERE id OPERATOR(pg_catalog.=) who;
        IF NOT FOUND THEN
            RETURN NULL;
        ELSIF p.active THEN
            RETURN p.id;
        END IF;
        who := p.manager_id;
    END LOOP;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION crmguard.approval_active_above(bigint) FROM PUBLIC;
COMMENT ON FUNCTION crmguard.approval_active_above(bigint) IS 'internal: the principal itself when active, else its nearest active manager (inactive approvers escalate)';

CREATE FUNCTION crmguard.approval_manager_of(who bigint) RETURNS bigint
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT manager_id FROM crmguard.principal WHERE id OPERATOR(pg_catalog.=) who);
END
$$;
REVOKE ALL ON FUNCTION crmguard.approval_manager_of(bigint) FROM PUBLIC;
COMMENT ON FUNCTION crmguard.approval_manager_of(bigint) IS 'internal: the manager of a principal, or NULL';

-- ---------------------------------------------------------------------------
-- Submission and decisions: C (approval_engine.c); crmguard's catalogs are
-- written without statements, the user's table with them
-- ---------------------------------------------------------------------------
CREATE FUNCTION crmguard.approve(request bigint, comment text DEFAULT NULL) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_approve';
COMMENT ON FUNCTION crmguard.approve(bigint, text) IS 'approve the current step of a request (as its approver, or as an approver''s delegate)';

CREATE FUNCTION crmguard.reject(request bigint, comment text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_reject';
COMMENT ON FUNCTION crmguard.reject(bigint, text) IS 'reject a request (any approver of its current step); the on_reject actions run';

CREATE FUNCTION crmguard.recall(request bigint, comment text DEFAULT NULL) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_recall';
COMMENT ON FUNCTION crmguard.recall(bigint, text) IS 'the submitter withdraws its pending request; the row is unlocked';

-- the end of a step, the end of a request: for run_due()
CREATE FUNCTION crmguard.approval_step_done(request bigint) RETURNS void
    LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_approval_step_done';
REVOKE ALL ON FUNCTION crmguard.approval_step_done(bigint) FROM PUBLIC;
COMMENT ON FUNCTION crmguard.approval_step_done(bigint) IS 'internal: a step of a request is approved (its timeout said so): on to the next step, or the request is approved';
CREATE FUNCTION crmguard.approval_finish(request bigint, outcome text) RETURNS void
    LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_approval_finish';
REVOKE ALL ON FUNCTION crmguard.approval_finish(bigint, text) FROM PUBLIC;
COMMENT ON FUNCTION crmguard.approval_finish(bigint, text) IS 'internal: end a request as approved or rejected (running the process''s actions) or recalled';

CREATE FUNCTION crmguard.delegate(to_principal text, until timestamptz) RETURNS void
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
COMMENT ON FUNCTION crmguard.delegate(text, timestamptz) IS 'let another principal decide this principal''s approvals until the given time (NULL: end it)';

-- What waits for the acting principal, itself or as a delegate
CREATE FUNCTION crmguard.my_approvals()
    RETURNS TABLE (request bigint, process text, target regclass, row_key text, step text,
                   submitted_by text, submitted_at timestamptz, on_behalf_of text)
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'crmguard_my_approvals';
COMMENT ON FUNCTION crmguard.my_approvals() IS 'pending requests waiting for the acting principal (or for someone it stands in for)';

-- Timeouts and inactive approvers; run by the background worker too
CREATE FUNCTION crmguard.run_due() RETURNS integer
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r crmguard.approval_request_state;
    step jsonb;
    ids bigint[];
    n integer := 0;
BEGIN
    FOR r IN SELECT * FROM crmguard.approval_request_state s
              WHERE s.state OPERATOR(pg_catalog.=) 'pending'
                AND ((s.step_timeout IS NOT NULL
                      AND s.step_started_at OPERATOR(pg_catalog.+) s.step_timeout OPERATOR(pg_catalog.<=) pg_catalog.now())
                     OR EXISTS (SELECT 1 FROM crmguard.principal a
                                 WHERE a.id OPERATOR(pg_catalog.=) ANY (s.approvers) AND NOT a.active))
              ORDER BY s.id FOR UPDATE SKIP LOCKED
    LOOP
        SELECT p.steps OPERATOR(pg_catalog.->) r.current_step INTO step
          FROM crmguard.approval_process p WHERE p.id OPERATOR(pg_catalog.=) r.process;
        n := n OPERATOR(pg_catalog.+) 1;
        IF r.step_timeout IS NOT NULL AND r.step_started_at OPERATOR(pg_catalog.+) r.step_timeout OPERATOR(pg_catalog.<=) pg_catalog.now() THEN
            INSERT INTO crmguard.approval_history (request, step, event, comment)
            VALUES (r.id, r.current_step, 'timed out', COALESCE(step OPERATOR(pg_catalog.->>) 'on_timeout', 'escalate'));
            CASE COALESCE(step OPERATOR(pg_catalog.->>) 'on_timeout', 'escalate')
                WHEN 'approve' THEN
                    PERFORM crmguard.approval_step_done(r.id);
                    CONTINUE;
                WHEN 'reject' THEN
                    PERFORM crmguard.approval_finish(r.id, 'rejected');
                    CONTINUE;
                ELSE
                    -- escalate: the approvers' managers take the step over
                    ids := ARRAY(SELECT DISTINCT x FROM (
                                 SELECT crmguard.approval_active_above(crmguard.approval_manager_of(a)) AS x
                                   FROM pg_catalog.unnest(r.approvers) a) s
                                  WHERE x IS NOT NULL AND x IS DISTINCT FROM r.submitted_by ORDER BY x);
            END CASE;
        ELSE
            -- an inactive approver's nearest active manager stands in: never an automatic approval
            ids := ARRAY(SELECT DISTINCT x FROM (
                         SELECT crmguard.approval_active_above(a) AS x FROM pg_catalog.unnest(r.approvers) a) s
                          WHERE x IS NOT NULL AND x IS DISTINCT FROM r.submitted_by ORDER BY x);
        END IF;
        IF pg_catalog.cardinality(ids) OPERATOR(pg_catalog.=) 0 OR ids OPERATOR(pg_catalog.=) r.approvers THEN
            -- nobody above: the step waits for its approvers, its clock stopped
            UPDATE crmguard.approval_request_state SET step_timeout = NULL WHERE id OPERATOR(pg_catalog.=) r.id;
            CONTINUE;
        END IF;
        UPDATE crmguard.approval_request_state
           SET approvers = ids, step_started_at = pg_catalog.now(),
               required = LEAST(required, pg_catalog.cardinality(ids))
         WHERE id OPERATOR(pg_catalog.=) r.id;
        INSERT INTO crmguard.approval_history (request, step, event, comment)
        VALUES (r.id, r.current_step, 'escalated',
                (SELECT pg_catalog.string_agg(p.name, ', ' ORDER BY p.name) FROM crmguard.principal p
                  WHERE p.id OPERATOR(pg_catalog.=) ANY (ids)));
        PERFORM crmguard.audit_event('approval_escalated', r.target::text, r.row_key,
            pg_catalog.jsonb_build_object('request', r.id, 'approvers', ids));
    END LOOP;
    RETURN n;
END
$$;
COMMENT ON FUNCTION crmguard.run_due() IS 'process step timeouts and inactive approvers now; returns how many requests it moved';
REVOKE ALL ON FUNCTION crmguard.run_due() FROM PUBLIC;

-- Requests as the acting principal may see them: its own, those it approves
-- or approved (itself or as a delegate), or all for role admin; and the
-- requests of its processes for the role that defined them
CREATE VIEW crmguard.approval_request WITH (security_barrier) AS
SELECT r.id, p.process_name AS process, p.version, r.target, r.row_key, r.state,
       p.steps OPERATOR(pg_catalog.->) r.current_step OPERATOR(pg_catalog.->>) 'name' AS current_step,
       sp.name AS submitted_by, r.submitted_at, r.decided_at,
       ARRAY(SELECT a.name FROM crmguard.principal a WHERE a.id OPERATOR(pg_catalog.=) ANY (r.approvers) ORDER BY a.name)
           AS approvers,
       (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                   'at', h.at, 'step', p.steps OPERATOR(pg_catalog.->) h.step OPERATOR(pg_catalog.->>) 'name',
                   'event', h.event, 'by', hp.name, 'on_behalf_of', bp.name, 'comment', h.comment) ORDER BY h.id)
          FROM crmguard.approval_history h
          LEFT JOIN crmguard.principal hp ON hp.id OPERATOR(pg_catalog.=) h.principal
          LEFT JOIN crmguard.principal bp ON bp.id OPERATOR(pg_catalog.=) h.on_behalf_of
         WHERE h.request OPERATOR(pg_catalog.=) r.id) AS history
  FROM crmguard.approval_request_state r
  JOIN crmguard.approval_process p ON p.id OPERATOR(pg_catalog.=) r.process
  LEFT JOIN crmguard.principal sp ON sp.id OPERATOR(pg_catalog.=) r.submitted_by
 WHERE crmguard.has_role('admin')
    OR pg_catalog.pg_has_role(p.run_as, 'MEMBER')     -- the process's definer (a "call" function reads it)
    OR r.submitted_by OPERATOR(pg_catalog.=) crmguard.current_principal()
    OR crmguard.current_principal() OPERATOR(pg_catalog.=) ANY (r.approvers)
    OR EXISTS (SELECT 1 FROM crmguard.approval_history h
                WHERE h.request OPERATOR(pg_catalog.=) r.id
                  AND crmguard.current_principal() IN (h.principal, h.on_behalf_of))
    OR EXISTS (SELECT 1 FROM crmguard.delegation d
                WHERE d.to_principal OPERATOR(pg_catalog.=) crmguard.current_principal()
                  AND d.principal OPERATOR(pg_catalog.=) ANY (r.approvers)
                  AND pg_catalog.now() OPERATOR(pg_catalog.<) d.until);
COMMENT ON VIEW crmguard.approval_request IS 'approval requests with their history: the submitter''s, its approvers'' (and delegates''), all for role admin';
