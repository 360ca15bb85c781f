-- Schema inventory: privileges, search_path pins, dump registration, SQLSTATEs
BEGIN;
SELECT plan(22);

-- every SECURITY DEFINER function pins search_path
SELECT is_empty(
    $$SELECT p.oid::regprocedure::text FROM pg_proc p
       WHERE p.pronamespace = 'crmguard'::regnamespace AND p.prosecdef
         AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)$$,
    'every SECURITY DEFINER function pins search_path = pg_catalog, pg_temp');

SELECT isnt_empty(
    $$SELECT 1 FROM pg_proc p WHERE p.pronamespace = 'crmguard'::regnamespace AND p.prosecdef$$,
    'the inventory sees the SECURITY DEFINER functions');

-- PUBLIC may execute identity functions only
SELECT set_eq(
    $$SELECT p.proname::text FROM pg_proc p
       WHERE p.pronamespace = 'crmguard'::regnamespace
         AND (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a
                                           WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))$$,
    ARRAY['current_principal', 'has_role', 'attr', 'attr_as', 'team', 'in_team', 'assume', 'assume_jwt', 'pre_request', 'request_otp', 'pending_challenge', 'verify_otp', 'why_visible',
          'approve_draft', 'reject_draft', 'comment_draft', 'resubmit_draft', 'draft_duplicates', 'is_reviewer', 'last_drafts',
          'submit_for_approval', 'approve', 'reject', 'recall', 'delegate', 'my_approvals', 'approval_row_pending',
          'normalize_match',
          'fields_projection', 'fields_row', 'fields_get', 'fields_get_text', 'field_values', 'set_field', 'find_by_field', 'unmask', 'map_fields',
          'enroll_device', 'device_challenge', 'attest_device', 'device_gate', 'require_attested',
          'activity', 'inactive'],
    'PUBLIC executes identity, policy, OTP, why_visible, draft, approval, contact-field, device and activity steps only (each checks the caller): nothing that changes rules or issues tokens');
SELECT function_privs_are('crmguard', 'device_challenge', ARRAY['text'], 'public', ARRAY[]::text[],
    'device_challenge(principal), for issue_token, is not executable by PUBLIC');
SELECT is_empty(
    $$SELECT p.proname FROM pg_proc p, aclexplode(p.proacl) a
       WHERE p.pronamespace = 'crmguard'::regnamespace AND a.grantee = 0
         AND p.proname IN ('register_device', 'enrollment_code', 'revoke_device', 'track', 'untrack', 'compact_activity', 'purge_history')$$,
    'registering, enrollment codes, revoking, tracking and purging history are for administrators (no PUBLIC execute)');

-- assume(text) became assume(text, boolean DEFAULT true): transaction-scoped by default
SELECT hasnt_function('crmguard', 'assume', ARRAY['text'], 'the session-long assume(text) of 1.0 is gone');
SELECT function_privs_are('crmguard', 'assume', ARRAY['text', 'boolean'], 'public', ARRAY['EXECUTE'],
    'assume(text, boolean) is executable by PUBLIC');
SELECT function_privs_are('crmguard', 'pre_request', ARRAY[]::text[], 'public', ARRAY['EXECUTE'],
    'pre_request() is executable by PUBLIC (PostgREST''s authenticator and anonymous roles)');
SELECT function_privs_are('crmguard', 'issue_token', ARRAY['text', 'interval', 'bigint', 'bytea'], 'public', ARRAY[]::text[],
    'issue_token is not executable by PUBLIC');
SELECT function_privs_are('crmguard', 'add_principal',
    ARRAY['text', 'text[]', 'text', 'jsonb', 'name', 'boolean'], 'public', ARRAY[]::text[],
    'add_principal is not executable by PUBLIC');

-- PUBLIC has no privilege on any table or sequence, and reads only the draft view
SELECT is_empty(
    $$SELECT c.relname FROM pg_class c, aclexplode(c.relacl) a
       WHERE c.relnamespace = 'crmguard'::regnamespace AND a.grantee = 0 AND c.relkind <> 'v'$$,
    'no crmguard table or sequence is granted to PUBLIC');
SELECT set_eq(
    $$SELECT c.relname::text || ':' || a.privilege_type FROM pg_class c, aclexplode(c.relacl) a
       WHERE c.relnamespace = 'crmguard'::regnamespace AND a.grantee = 0 AND c.relkind = 'v'$$,
    ARRAY['draft:SELECT', 'approval_request:SELECT'],
    'PUBLIC reads two views, crmguard.draft and crmguard.approval_request, each filtered by who is acting');

-- every table and sequence is registered for pg_dump, but for the waiting
-- list, which a restore of the requests rebuilds (dumped, it came back twice)
SELECT set_eq(
    $$SELECT c.relname::text FROM pg_class c
       WHERE c.relnamespace = 'crmguard'::regnamespace AND c.relkind IN ('r', 'S')
         AND NOT c.oid = ANY (SELECT unnest(extconfig) FROM pg_extension WHERE extname = 'crmguard')$$,
    ARRAY['approval_waiting'],
    'every crmguard table and sequence is in pg_extension_config_dump but the derived approval_waiting');

SELECT is((SELECT extrelocatable FROM pg_extension WHERE extname = 'crmguard'), false,
          'the extension is not relocatable');

-- identity functions are safe to call from policies
SELECT is_empty(
    $$SELECT proname FROM pg_proc
       WHERE pronamespace = 'crmguard'::regnamespace
         AND proname IN ('current_principal', 'has_role', 'attr', 'attr_as', 'team')
         AND (provolatile <> 's' OR proparallel = 's')$$,
    'identity functions are STABLE and not parallel safe (the assumed token is per backend)');

-- SQLSTATEs of refusals
SELECT throws_ok($$SELECT crmguard.assume('cg1.bogus')$$, 'CG031', 'invalid or expired token',
                 'a forged token fails with CG031');
SELECT crmguard.add_principal('tap_boss', '{}');
SELECT crmguard.add_principal('tap_agent', '{agent}', 'tap_boss');
SELECT throws_ok($$UPDATE crmguard.principal SET manager_id = (SELECT id FROM crmguard.principal WHERE name = 'tap_agent') WHERE name = 'tap_boss'$$,
                 'CG020', NULL, 'a manager cycle fails with CG020');
SELECT throws_ok($$SELECT crmguard.issue_token('tap_nobody')$$, '42704', NULL,
                 'an unknown principal fails with 42704');
CREATE ROLE regress_tap_public;
SET LOCAL ROLE regress_tap_public;
SELECT throws_ok($$SELECT crmguard.issue_token('tap_agent')$$, '42501', NULL,
                 'issue_token by a role without the grant fails with 42501');
SELECT throws_ok($$UPDATE crmguard.audit SET action = 'x'$$, '42501', NULL,
                 'writing the audit log without privileges fails with 42501');
RESET ROLE;

-- guards are watched in every replication mode, and known by their function
SELECT is((SELECT array_agg(evtname::text || ':' || evtenabled::text ORDER BY evtname) FROM pg_event_trigger
            WHERE evtfoid = 'crmguard.guard_ddl()'::regprocedure),
          '{crmguard_guard_alter:A,crmguard_guard_drop:A}'::text[],
          'the guard event triggers fire always, also under session_replication_role = replica');
SELECT is((SELECT count(*)::int FROM pg_proc p WHERE p.pronamespace = 'crmguard'::regnamespace
            AND p.prorettype = 'trigger'::regtype
            AND has_function_privilege('public', p.oid, 'EXECUTE')), 0,
          'no trigger function of crmguard is executable by PUBLIC: only crmguard makes guards that call them');

SELECT * FROM finish();
ROLLBACK;
