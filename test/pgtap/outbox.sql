-- The outbox's privileges: a relay's role needs one GRANT, and gets nothing else
BEGIN;
SELECT plan(8);

SELECT has_role('crmguard_relay', 'the extension made the role crmguard_relay');
SELECT is((SELECT rolcanlogin FROM pg_roles WHERE rolname = 'crmguard_relay'), false,
          'crmguard_relay cannot log in: a login role is granted it');
SELECT set_eq(
    $$SELECT p.oid::regprocedure::text FROM pg_proc p
       WHERE p.pronamespace = 'crmguard'::regnamespace
         AND has_function_privilege('crmguard_relay', p.oid, 'EXECUTE')
         AND NOT has_function_privilege('public', p.oid, 'EXECUTE')$$,
    ARRAY['crmguard.claim_outbox(text,integer,uuid,interval)', 'crmguard.mark_sent(bigint,text,uuid)',
          'crmguard.release_outbox(bigint,uuid)'],
    'beyond what PUBLIC may run, crmguard_relay claims, reports and releases, nothing else');
SELECT is_empty(
    $$SELECT c.relname FROM pg_class c
       WHERE c.relnamespace = 'crmguard'::regnamespace AND c.relkind IN ('r', 'v', 'S')
         AND has_table_privilege('crmguard_relay', c.oid, 'SELECT')
         AND NOT has_table_privilege('public', c.oid, 'SELECT')$$,
    'crmguard_relay reads no crmguard table: messages reach it through claim_outbox only');
SELECT function_privs_are('crmguard', 'claim_outbox', ARRAY['text', 'integer', 'uuid', 'interval'], 'public',
                          ARRAY[]::text[], 'PUBLIC cannot claim messages');
SELECT function_privs_are('crmguard', 'mark_sent', ARRAY['bigint', 'text', 'uuid'], 'public',
                          ARRAY[]::text[], 'PUBLIC cannot report messages');

CREATE ROLE tap_relay LOGIN;
GRANT crmguard_relay TO tap_relay;
INSERT INTO crmguard.outbox (channel, recipient, body) VALUES ('tap', 'tap@example.com', 'hello')
RETURNING id AS tap_message \gset
SET LOCAL ROLE tap_relay;
SELECT is((SELECT count(*)::int FROM crmguard.claim_outbox('tap', 10, 'aaaaaaaa-0000-4000-8000-000000000001', '1 minute')),
          1, 'a role granted crmguard_relay claims');
SELECT throws_ok(format($$SELECT crmguard.mark_sent(%s, NULL, 'bbbbbbbb-0000-4000-8000-000000000002')$$, :tap_message),
                 '55000', NULL, 'a report by another lease fails with 55000');

SELECT * FROM finish();
ROLLBACK;
