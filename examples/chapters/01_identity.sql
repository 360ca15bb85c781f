-- Chapter 1: who is acting, and the tamper-evident audit log
\set ON_ERROR_STOP 0
\set SHOW_CONTEXT never
\set VERBOSITY default
\echo '== Chapter 1: who is acting'
\echo
\echo 'crmguard decides by who is acting. Each CRM user is a principal (a row of'
\echo 'crmguard.principal) with CRM roles, attributes and a manager; a session acts as'
\echo 'one through its database role or through a signed token. The demo company''s'
\echo 'sales organisation, as principals (the manager tree, loaded by seed.sql):'
WITH RECURSIVE tree AS (
    SELECT id, name, roles, 0 AS depth, ARRAY[id] AS path
      FROM crmguard.principal WHERE manager_id IS NULL
    UNION ALL
    SELECT p.id, p.name, p.roles, t.depth + 1, t.path || p.id
      FROM crmguard.principal p JOIN tree t ON p.manager_id = t.id
)
SELECT repeat('    ', depth) || name AS principal, array_to_string(roles, ', ') AS crm_roles
  FROM tree ORDER BY path;

\echo
\echo 'Luca logs in with his own database role. crmguard maps the role to his principal:'
SET ROLE crm_luca;
SELECT crmguard.current_principal() AS principal_id, crmguard.has_role('agent') AS is_agent,
       crmguard.attr('zone') AS zone, crmguard.team() AS team;
RESET ROLE;

\echo
\echo 'Anna, his area manager, sees herself and everyone below her in team():'
SET ROLE crm_anna;
SELECT crmguard.team() AS anna_team \gset
RESET ROLE;
SELECT :'anna_team' AS "team()", string_agg(name, ', ' ORDER BY id) AS who
  FROM crmguard.principal WHERE id = ANY (:'anna_team');

\echo
\echo 'The customer portal shares one pooled login role (pgbouncer, transaction pooling).'
\echo 'The application signs in Patricie and hands each of her transactions a token'
\echo '(MAC-signed with the server key, expiring); it lasts until the transaction ends:'
SELECT crmguard.issue_token('patricie', '15 minutes') AS token \gset
BEGIN;
SELECT crmguard.assume(:'token') AS assumed_principal;
SELECT name AS acting_as FROM crmguard.principal WHERE id = crmguard.current_principal();
COMMIT;
\echo 'The next client on the same server connection is nobody:'
SELECT coalesce(crmguard.current_principal()::text, 'NULL (nobody)') AS next_client;

\echo
\echo 'An attacker on the same pool tries to become Dora, the director, by setting a variable:'
SET crmguard.principal = 'dora';
\echo '... and by presenting a token with one character changed:'
SELECT crmguard.assume(overlay(:'token' PLACING
       CASE WHEN substr(:'token', 20, 1) = 'x' THEN 'y' ELSE 'x' END FROM 20 FOR 1));
\echo 'Both fail, and the attacker is still nobody:'
SELECT coalesce(crmguard.current_principal()::text, 'NULL (nobody)') AS attacker_acting_as;

\echo
\echo 'Every guarded action, accepted or refused, is in the audit log, each row'
\echo 'chained to the one before by a keyed BLAKE2b hash. The token was issued by the'
\echo 'application''s login role and the forged one presented by the attacker, both'
\echo 'acting as nobody:'
SELECT pg_sleep(0.3) AS waited \gset
-- (refusals are written by the background worker: give it a moment)
SELECT a.id, to_char(a.at, 'HH24:MI:SS') AS at, coalesce(p.name, '(nobody)') AS principal, a.action,
       a.detail - 'session_role' AS detail, left(encode(a.hash, 'hex'), 12) || '…' AS hash
  FROM crmguard.audit a LEFT JOIN crmguard.principal p ON p.id = a.principal
 WHERE a.action <> 'add_principal'
 ORDER BY a.id DESC LIMIT 6;
\echo 'verify_audit() recomputes every hash: the chain is intact (ok), no first bad row:'
SELECT * FROM crmguard.verify_audit();

\echo
\echo 'Even the table owner cannot rewrite history:'
CREATE ROLE crm_audit_owner_demo;
ALTER TABLE crmguard.audit OWNER TO crm_audit_owner_demo;
SET ROLE crm_audit_owner_demo;
DELETE FROM crmguard.audit WHERE action = 'assume_refused';
RESET ROLE;
ALTER TABLE crmguard.audit OWNER TO CURRENT_USER;
DROP ROLE crm_audit_owner_demo;

\echo
\echo 'A superuser can disable the triggers and edit a row (crmguard warns and audits'
\echo 'that), but verify_audit() finds the edit: ok is false, first_bad is the edited'
\echo 'row. (The demo rolls the edit back.)'
BEGIN;
ALTER TABLE crmguard.audit DISABLE TRIGGER USER;
UPDATE crmguard.audit SET detail = '{"reason": "nothing to see here"}'
 WHERE id = (SELECT max(id) FROM crmguard.audit WHERE action = 'assume_refused');
SELECT * FROM crmguard.verify_audit();
ROLLBACK;
