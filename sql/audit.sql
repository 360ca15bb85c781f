--
-- Audit: append-only and hash-chained
--
SELECT crmguard.audit_event('demo_event', 'crm.deal', '42', '{"note": "written by the test"}');
SELECT * FROM crmguard.verify_audit();
SELECT action, target, row_key, detail->>'note' AS note,
       length(prev_hash) AS prev_len, length(hash) AS hash_len
  FROM crmguard.audit WHERE action = 'demo_event';
-- the chain is unbroken: each row links to the hash of the one before
SELECT count(*) AS broken_links
  FROM crmguard.audit a JOIN crmguard.audit b ON b.id = a.id + 1
 WHERE b.prev_hash <> a.hash;

-- an owner who is not a superuser cannot rewrite history
CREATE ROLE regress_owner;
ALTER TABLE crmguard.audit OWNER TO regress_owner;
SET ROLE regress_owner;
UPDATE crmguard.audit SET action = 'nothing happened' WHERE action = 'demo_event';
DELETE FROM crmguard.audit WHERE action = 'demo_event';
TRUNCATE crmguard.audit;
RESET ROLE;
ALTER TABLE crmguard.audit OWNER TO CURRENT_USER;
DROP ROLE regress_owner;

-- PUBLIC can neither read nor write the log
SET ROLE regress_nobody;
SELECT count(*) FROM crmguard.audit;
INSERT INTO crmguard.audit VALUES (1000, now(), NULL, NULL, 'forged', NULL, NULL, NULL, '', '');
SELECT crmguard.audit_event('forged');
SELECT * FROM crmguard.verify_audit();
RESET ROLE;

-- a superuser with the triggers disabled: verify_audit finds each change
-- (a superuser switching off a guard is itself audited)
ALTER TABLE crmguard.audit DISABLE TRIGGER USER;
SELECT max(id) AS last_id, min(id) + 2 AS third_id FROM crmguard.audit \gset

BEGIN;  -- edited row
UPDATE crmguard.audit SET detail = '{"note": "edited"}' WHERE id = :third_id;
SELECT ok, first_bad = :third_id AS found_edit FROM crmguard.verify_audit();
ROLLBACK;

BEGIN;  -- edited link only
UPDATE crmguard.audit SET prev_hash = '\x00' WHERE id = :last_id;
SELECT ok, first_bad = :last_id AS found_link FROM crmguard.verify_audit();
ROLLBACK;

BEGIN;  -- deleted row: the one after it no longer links
DELETE FROM crmguard.audit WHERE id = :third_id;
SELECT ok, first_bad = :third_id + 1 AS found_delete FROM crmguard.verify_audit();
ROLLBACK;

BEGIN;  -- deleted first row
DELETE FROM crmguard.audit WHERE id = 1;
SELECT ok, first_bad = 2 AS found_delete_first FROM crmguard.verify_audit();
ROLLBACK;

BEGIN;  -- inserted row, copying the previous row's hash as its link
INSERT INTO crmguard.audit
SELECT :last_id + 1, now(), NULL, NULL, 'forged', NULL, NULL, NULL, hash, sha256(hash)
  FROM crmguard.audit WHERE id = :last_id;
SELECT ok, first_bad = :last_id + 1 AS found_insert FROM crmguard.verify_audit();
ROLLBACK;

BEGIN;  -- a replayed row: a genuine row copied to the end
INSERT INTO crmguard.audit
SELECT :last_id + 1, at, principal, device, action, target, row_key, detail, prev_hash, hash
  FROM crmguard.audit WHERE id = :last_id;
SELECT ok, first_bad = :last_id + 1 AS found_replay FROM crmguard.verify_audit();
ROLLBACK;

-- Attack: who, when and what of a row rewritten (the acting principal, its
-- device, the time, the action, its target and row): every column is under
-- the hash, not only the detail
BEGIN;
UPDATE crmguard.audit SET principal = COALESCE(principal, 0) + 1 WHERE id = :third_id;
SELECT ok, first_bad = :third_id AS found_principal_edit FROM crmguard.verify_audit();
ROLLBACK;
BEGIN;
UPDATE crmguard.audit SET device = COALESCE(device, 0) + 1 WHERE id = :third_id;
SELECT ok, first_bad = :third_id AS found_device_edit FROM crmguard.verify_audit();
ROLLBACK;
BEGIN;
UPDATE crmguard.audit SET at = at - interval '1 day' WHERE id = :third_id;
SELECT ok, first_bad = :third_id AS found_time_edit FROM crmguard.verify_audit();
ROLLBACK;
BEGIN;
UPDATE crmguard.audit SET action = action || '_edited' WHERE id = :third_id;
SELECT ok, first_bad = :third_id AS found_action_edit FROM crmguard.verify_audit();
ROLLBACK;
BEGIN;
UPDATE crmguard.audit SET target = COALESCE(target, '') || 'edited' WHERE id = :third_id;
SELECT ok, first_bad = :third_id AS found_target_edit FROM crmguard.verify_audit();
ROLLBACK;
BEGIN;
UPDATE crmguard.audit SET row_key = COALESCE(row_key, '') || 'edited' WHERE id = :third_id;
SELECT ok, first_bad = :third_id AS found_row_key_edit FROM crmguard.verify_audit();
ROLLBACK;

ALTER TABLE crmguard.audit ENABLE TRIGGER USER;
SELECT * FROM crmguard.verify_audit();

-- later writes extend the untouched chain
SELECT crmguard.audit_event('after_checks');
SELECT * FROM crmguard.verify_audit();

-- one transaction, many entries, one rolled back to a savepoint and one in a
-- failed subtransaction: the committed ones follow each other in the chain
-- (the 2nd and later link to the row this backend just wrote), no gap, no fork
SELECT max(id) AS before_many FROM crmguard.audit \gset
BEGIN;
SELECT crmguard.audit_event('many', NULL, '1');
SAVEPOINT s;
SELECT crmguard.audit_event('many', NULL, 'rolled back');
ROLLBACK TO s;
DO $$ BEGIN PERFORM crmguard.audit_event('many', NULL, 'failed'); RAISE division_by_zero; EXCEPTION WHEN division_by_zero THEN NULL; END $$;
SELECT count(*) FROM (SELECT crmguard.audit_event('many', NULL, g::text) FROM generate_series(2, 40) g) s;
COMMIT;
SELECT count(*) AS many_written, min(id) = :before_many + 1 AS first_follows, max(id) - min(id) + 1 AS span,
       count(*) FILTER (WHERE row_key IN ('rolled back', 'failed')) AS rolled_back_written
  FROM crmguard.audit WHERE action = 'many';
SELECT count(*) AS broken_links
  FROM crmguard.audit a JOIN crmguard.audit b ON b.id = a.id + 1
 WHERE b.prev_hash <> a.hash;
SELECT * FROM crmguard.verify_audit();

-- entries are appended without a statement, as to a system catalog: an
-- INSERT trigger added by hand would not fire, so the commit is refused
-- rather than the trigger skipped
CREATE FUNCTION public.regress_forward_audit() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
CREATE TRIGGER forward AFTER INSERT ON crmguard.audit FOR EACH ROW EXECUTE FUNCTION public.regress_forward_audit();
SELECT crmguard.audit_event('forwarded');
DROP TRIGGER forward ON crmguard.audit;
DROP FUNCTION public.regress_forward_audit();
SELECT count(*) AS forwarded_written FROM crmguard.audit WHERE action = 'forwarded';

-- a read-only transaction could not write its entries at commit: an audited
-- action is refused at once, not done and then left unaudited
BEGIN READ ONLY;
SELECT crmguard.audit_event('read_only');
ROLLBACK;
SELECT count(*) AS read_only_written FROM crmguard.audit WHERE action = 'read_only';
SELECT * FROM crmguard.verify_audit();
