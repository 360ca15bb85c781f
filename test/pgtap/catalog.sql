-- Catalog hygiene: every function's volatility, parallel label, strictness and
-- leakproofness is true to what it does.  The rules of PostgreSQL's own
-- opr_sanity test, restated for schema crmguard, and the rules that follow from
-- what a function may do at each label.
BEGIN;
SELECT plan(18);

CREATE TEMP VIEW fn AS
SELECT p.oid::regprocedure::text AS sig, p.proname::text AS name, l.lanname AS lang, p.*
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'crmguard'::regnamespace;

-- the crmguard functions that a SQL or PL/pgSQL function's body calls
CREATE TEMP VIEW fn_calls AS
SELECT DISTINCT c.sig AS caller, c.provolatile AS caller_volatile, c.proparallel AS caller_parallel,
       q.oid::regprocedure::text AS callee, q.provolatile AS callee_volatile, q.proparallel AS callee_parallel
  FROM fn c
 CROSS JOIN LATERAL regexp_matches(c.prosrc, 'crmguard\.(\w+)\s*\(', 'g') AS m(name)
  JOIN pg_proc q ON q.pronamespace = 'crmguard'::regnamespace AND q.proname = m.name[1]
 WHERE c.lang IN ('sql', 'plpgsql');

SELECT isnt_empty('SELECT 1 FROM fn_calls', 'the inventory sees calls between crmguard functions');

-- opr_sanity: "an IMMUTABLE function that is not PARALLEL SAFE" is a contradiction:
-- a result fixed by the arguments alone can be computed anywhere
SELECT is_empty(
    $$SELECT sig FROM fn WHERE provolatile = 'i' AND proparallel <> 's'$$,
    'every IMMUTABLE function is PARALLEL SAFE');

-- opr_sanity: the argument-info arrays agree, defaults are counted, rows only for sets
SELECT is_empty(
    $$SELECT sig FROM fn
       WHERE (proallargtypes IS NOT NULL AND array_length(proallargtypes, 1) < pronargs)
          OR (proargmodes IS NOT NULL AND array_length(proargmodes, 1) <> array_length(proallargtypes, 1))
          OR (proargnames IS NOT NULL AND array_length(proargnames, 1) <> coalesce(array_length(proallargtypes, 1), pronargs))
          OR ((pronargdefaults <> 0) <> (proargdefaults IS NOT NULL))
          OR (proretset <> (prorows > 0))$$,
    'argument arrays, default counts and row estimates are consistent (opr_sanity)');

-- opr_sanity: a function returning internal takes internal, so SQL cannot call it
SELECT is_empty(
    $$SELECT sig FROM fn WHERE prorettype = 'internal'::regtype AND NOT 'internal'::regtype = ANY (proargtypes)$$,
    'every function returning internal takes an internal argument');

-- opr_sanity: trigger and event trigger functions take no arguments
SELECT is_empty(
    $$SELECT sig FROM fn WHERE prorettype IN ('trigger'::regtype, 'event_trigger'::regtype) AND pronargs <> 0$$,
    'trigger and event trigger functions take no arguments');

-- opr_sanity: aliases of one C function agree on what they are
SELECT is_empty(
    $$SELECT a.sig || ' / ' || b.sig FROM fn a JOIN fn b ON a.prosrc = b.prosrc AND a.oid < b.oid
       WHERE a.lang = 'c' AND b.lang = 'c'
         AND (a.prokind, a.provolatile, a.proparallel, a.proisstrict, a.proretset, a.prorettype)
             IS DISTINCT FROM (b.prokind, b.provolatile, b.proparallel, b.proisstrict, b.proretset, b.prorettype)$$,
    'SQL entry points to one C function share kind, volatility, parallel label, strictness and result');

-- opr_sanity: a planner support function is one (internal -> internal)
SELECT is_empty(
    $$SELECT sig FROM fn f JOIN pg_proc s ON s.oid = f.prosupport
       WHERE s.prorettype <> 'internal'::regtype OR s.proargtypes <> '2281'::oidvector$$,
    'planner support functions take and return internal');

-- a non-volatile body changes nothing: no data-changing statement, no row locks,
-- no sequences, settings, notifications or advisory locks
SELECT is_empty(
    $$SELECT sig FROM fn
       WHERE lang IN ('sql', 'plpgsql') AND provolatile <> 'v'
         AND prosrc ~* '(\minsert\s+into\M|\mupdate\s+[\w."]+(\s+\w+)?\s+set\M|\mdelete\s+from\M|\mmerge\s+into\M|\mtruncate\M|\mfor\s+(no\s+key\s+)?update\M|\mfor\s+(key\s+)?share\M|\m(nextval|setval|set_config|pg_notify|pg_advisory_\w+)\s*\(|\mnotify\s+\w)'$$,
    'no STABLE or IMMUTABLE SQL or PL/pgSQL function writes, locks rows, or changes settings or sequences');

-- ... and calls no volatile crmguard function (which could)
SELECT is_empty(
    $$SELECT caller || ' -> ' || callee FROM fn_calls WHERE caller_volatile <> 'v' AND callee_volatile = 'v'$$,
    'no STABLE or IMMUTABLE function calls a VOLATILE crmguard function');

-- an IMMUTABLE body reads no table and calls only IMMUTABLE crmguard functions
SELECT is_empty(
    $$SELECT sig FROM fn WHERE lang IN ('sql', 'plpgsql') AND provolatile = 'i'
         AND prosrc ~* '\m(from|join)\s+[\w."]'$$,
    'no IMMUTABLE function reads a table');
SELECT is_empty(
    $$SELECT caller || ' -> ' || callee FROM fn_calls WHERE caller_volatile = 'i' AND callee_volatile <> 'i'$$,
    'IMMUTABLE functions call only IMMUTABLE crmguard functions');

-- a function is no safer in parallel than what it calls: whatever uses the
-- acting principal (backend state) is at most PARALLEL RESTRICTED
SELECT is_empty(
    $$SELECT caller || ' -> ' || callee FROM fn_calls
       WHERE (caller_parallel = 's' AND callee_parallel <> 's') OR (caller_parallel = 'r' AND callee_parallel = 'u')$$,
    'no function is labelled safer in parallel than a crmguard function it calls');

-- C code cannot be read from the catalog: the C functions labelled IMMUTABLE or
-- PARALLEL SAFE are the pure ones, checked one by one (no table, no backend state,
-- no shared memory, no principal).  A new one joins this list only after that check.
SELECT set_eq(
    $$SELECT sig FROM fn WHERE lang = 'c' AND (provolatile = 'i' OR proparallel = 's')$$,
    ARRAY['crmguard.in_team(bigint,bigint[])', 'crmguard.normalize_match(text)',
          'crmguard.map_fields(jsonb,jsonb)'],
    'the IMMUTABLE / PARALLEL SAFE C functions are exactly the pure ones');

-- anything that writes, audits or acts as someone is VOLATILE and PARALLEL UNSAFE:
-- the entry points that define rules, decide, assume or send
SELECT is_empty(
    $$SELECT sig FROM fn
       WHERE name IN ('add_principal', 'issue_token', 'assume', 'assume_jwt', 'pre_request', 'audit_event',
                      'verify_audit', 'create_otp_rule', 'drop_otp_rule', 'request_otp', 'verify_otp',
                      'expose', 'expose_public', 'expose_by_owner', 'unexpose', 'enable_review', 'disable_review',
                      'approve_draft', 'reject_draft', 'comment_draft', 'resubmit_draft',
                      'create_approval_process', 'drop_approval_process', 'submit_for_approval',
                      'approve', 'reject', 'recall', 'delegate', 'run_due',
                      'claim_outbox', 'mark_sent', 'release_outbox', 'enable_fields', 'define_field', 'drop_field',
                      'set_field', 'unmask', 'register_device', 'enrollment_code', 'enroll_device', 'attest_device',
                      'revoke_device', 'device_challenge', 'track', 'untrack', 'compact_activity', 'purge_history')
         AND (provolatile <> 'v' OR proparallel <> 'u')$$,
    'every function that writes, audits or changes who is acting is VOLATILE PARALLEL UNSAFE');

-- LEAKPROOF is a promise to the planner that no argument value ever shows in an
-- error; crmguard makes it nowhere
SELECT is_empty($$SELECT sig FROM fn WHERE proleakproof$$, 'no crmguard function is LEAKPROOF');

-- the two crashes the NULL sweep below found, by name
SELECT throws_ok($$SELECT crmguard.fields_row(1, 0)$$, '42804', NULL,
                 'a scalar passed to fields_row(anyelement, oid) as a row is refused, not read as a row header');
SELECT throws_ok($$SELECT crmguard.audit_event(NULL)$$, '22004', 'action must not be NULL',
                 'an audit event without an action is refused, not dereferenced');

-- a C function that is not STRICT must itself handle NULL arguments: call every
-- callable one with all arguments NULL, then with each argument NULL in turn and
-- the others plausible, each call in its own subtransaction; an error is fine, a
-- crash ends this test file
CREATE TABLE public.tap_cat (id integer PRIMARY KEY, x text);
CREATE FUNCTION pg_temp.arg(t regtype, is_null boolean) RETURNS text LANGUAGE sql AS $$
    SELECT CASE
        WHEN is_null THEN 'NULL::' || CASE WHEN t = 'anyelement'::regtype THEN 'integer' ELSE t::text END
        WHEN t = 'regclass'::regtype THEN quote_literal('public.tap_cat') || '::regclass'
        WHEN t = 'regrole'::regtype THEN 'CURRENT_USER::regrole'
        WHEN t = 'anyelement'::regtype THEN '1'
        WHEN t IN ('bigint'::regtype, 'integer'::regtype, 'oid'::regtype) THEN '1::' || t::text
        WHEN t = 'boolean'::regtype THEN 'false'
        WHEN t = 'jsonb'::regtype THEN quote_literal('{}') || '::jsonb'
        WHEN t = 'interval'::regtype THEN quote_literal('1 minute') || '::interval'
        WHEN t = 'bytea'::regtype THEN quote_literal('\x00') || '::bytea'
        WHEN t = 'uuid'::regtype THEN 'gen_random_uuid()'
        WHEN t = 'timestamp with time zone'::regtype THEN 'now()'
        WHEN t::text LIKE '%[]' THEN quote_literal('{}') || '::' || t::text
        ELSE quote_literal('x') || '::' || t::text
    END
$$;
DO $$
DECLARE
    f record;
    nullarg integer;
    args text;
BEGIN
    FOR f IN SELECT name, sig, pronargs, proargtypes FROM fn
              WHERE lang = 'c' AND NOT proisstrict AND pronargs > 0
                AND prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype, 'internal'::regtype)
              ORDER BY sig
    LOOP
        FOR nullarg IN 0 .. f.pronargs LOOP
            SELECT string_agg(pg_temp.arg(a.t::regtype, nullarg IN (0, a.i)), ', ' ORDER BY a.i)
              INTO args
              FROM unnest(f.proargtypes::oid[]) WITH ORDINALITY AS a(t, i);
            BEGIN
                EXECUTE format('SELECT crmguard.%I(%s)', f.name, args);
            EXCEPTION WHEN OTHERS THEN
                NULL;
            END;
        END LOOP;
    END LOOP;
END
$$;
SELECT pass('every non-STRICT C function survives NULL arguments, all at once and one at a time');

SELECT * FROM finish();
ROLLBACK;
