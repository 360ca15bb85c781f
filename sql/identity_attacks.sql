--
-- Attacks on identity: forged settings, forged, tampered and expired tokens
--
SET ROLE regress_nobody;

-- forged setting: the crmguard prefix is reserved, no placeholder can be made
SET crmguard.principal = 'dora';
SET crmguard.current_principal = '1';
SELECT set_config('crmguard.principal_id', '1', false);
SET crmguard.key_file = '/tmp/attacker.key';
SELECT crmguard.current_principal() AS after_forged_settings;

-- forged token: never issued
SELECT crmguard.assume('cg1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA');
SELECT crmguard.assume('not a token');
SELECT crmguard.assume('');
RESET ROLE;

-- a genuine token, issued by the application's login role
SELECT crmguard.issue_token('anna', '10 minutes') AS anna_token \gset
SELECT crmguard.issue_token('sara', '1 millisecond') AS sara_token \gset
SELECT crmguard.issue_token('anna', '2 seconds') AS brief_token \gset

SET ROLE regress_nobody;
-- tampered token: any changed character breaks the signature
SELECT crmguard.assume(overlay(:'anna_token' PLACING
       CASE WHEN substr(:'anna_token', 12, 1) = 'A' THEN 'B' ELSE 'A' END FROM 12 FOR 1));
SELECT crmguard.assume(overlay(:'anna_token' PLACING
       CASE WHEN substr(:'anna_token', 60, 1) = 'A' THEN 'B' ELSE 'A' END FROM 60 FOR 1));
SELECT crmguard.assume(:'anna_token' || 'A');
-- expired token
SELECT pg_sleep(0.01);
SELECT crmguard.assume(:'sara_token');
SELECT crmguard.current_principal() AS after_bad_tokens;

-- the genuine token works, for any database role that presents it
-- (is_local => false: for the session, until given up)
SELECT crmguard.assume(:'anna_token', false) = (SELECT 2) AS assumed_anna;
SELECT crmguard.current_principal(), crmguard.has_role('area_manager');
-- forged settings still cannot switch identity
SET crmguard.principal = 'dora';
SELECT crmguard.current_principal();
-- giving it up leaves nobody (the role is unmapped)
SELECT crmguard.assume(NULL);
SELECT crmguard.current_principal();

-- a token that expires while assumed leaves nobody, not its principal
SELECT crmguard.assume(:'brief_token', is_local => false) = (SELECT 2) AS assumed_briefly;
SELECT crmguard.current_principal() = (SELECT 2) AS still_anna;
SELECT pg_sleep(2.1);
SELECT crmguard.current_principal() AS after_expiry, crmguard.has_role('area_manager') AS manager_after_expiry;
SELECT crmguard.assume(NULL);

-- rollback game: an assume inside a transaction that rolls back is undone
BEGIN;
SELECT crmguard.assume(:'anna_token') IS NOT NULL AS assumed;
ROLLBACK;
SELECT crmguard.current_principal() AS after_rollback;

-- the token outranks the role mapping, and survives SET ROLE
SELECT crmguard.assume(:'anna_token', false) IS NOT NULL AS assumed;
RESET ROLE;
SET ROLE regress_luca;
SELECT crmguard.current_principal() AS luca_session_with_anna_token;
RESET ROLE;
SELECT crmguard.assume(NULL);

-- a pooler's DISCARD ALL hands the next client a session without identity
SELECT crmguard.assume(:'anna_token', false) IS NOT NULL AS assumed;
DISCARD ALL;
SELECT crmguard.current_principal() AS after_discard_all;

-- a token of a principal deactivated later resolves to nobody
SELECT crmguard.assume(:'anna_token', false) IS NOT NULL AS assumed;
UPDATE crmguard.principal SET active = false WHERE name = 'anna';
SELECT crmguard.current_principal() AS deactivated;
-- and cannot be assumed again
SELECT crmguard.assume(:'anna_token');
UPDATE crmguard.principal SET active = true WHERE name = 'anna';
SELECT crmguard.assume(NULL);

-- tokens only for principals that exist and are active, for a positive time
SELECT crmguard.issue_token('nobody-by-that-name');
SELECT crmguard.issue_token('anna', '-1 hour');
UPDATE crmguard.principal SET active = false WHERE name = 'sara';
SELECT crmguard.issue_token('sara');
UPDATE crmguard.principal SET active = true WHERE name = 'sara';

-- Pooled connections (pgbouncer in transaction mode): by default an identity
-- lasts until its transaction ends, so the next client never inherits it.
-- autocommit: the statement's own transaction
SELECT crmguard.assume(:'anna_token') IS NOT NULL AS assumed;
SELECT crmguard.current_principal() AS next_client_in_autocommit;
-- in a transaction, until COMMIT
BEGIN;
SELECT crmguard.assume(:'anna_token') IS NOT NULL AS assumed;
SELECT crmguard.current_principal() AS in_transaction;
COMMIT;
SELECT crmguard.current_principal() AS next_client_after_commit;
-- an error and ROLLBACK end it too
BEGIN;
SELECT crmguard.assume(:'anna_token') IS NOT NULL AS assumed;
SELECT 1 / 0;
ROLLBACK;
SELECT crmguard.current_principal() AS next_client_after_error;
-- a transaction's identity shadows the session's and gives it back at its end
SELECT crmguard.assume(:'anna_token', false) IS NOT NULL AS session_anna;
BEGIN;
SELECT crmguard.assume(crmguard.issue_token('sara')) IS NOT NULL AS sara_for_the_transaction;
SELECT crmguard.current_principal() AS sara;
COMMIT;
SELECT crmguard.current_principal() AS anna_again;
-- assume(NULL) ends the session's identity too, unless its transaction rolls back
BEGIN;
SELECT crmguard.assume(NULL);
SELECT crmguard.current_principal() AS nobody;
ROLLBACK;
SELECT crmguard.current_principal() AS anna_after_rollback;
SELECT crmguard.assume(NULL);
SELECT crmguard.current_principal() AS nobody_after_assume_null;
-- a subtransaction that rolls back undoes an assume made inside it
BEGIN;
SAVEPOINT s1;
SELECT crmguard.assume(:'anna_token') IS NOT NULL AS assumed_in_savepoint;
ROLLBACK TO SAVEPOINT s1;
SELECT crmguard.current_principal() AS after_rollback_to_savepoint;
SAVEPOINT s2;
SELECT crmguard.assume(:'anna_token', false) IS NOT NULL AS session_assumed_in_savepoint;
SAVEPOINT s3;
SELECT crmguard.assume(NULL);
ROLLBACK TO SAVEPOINT s3;
SELECT crmguard.current_principal() AS anna_back_after_inner_rollback;
ROLLBACK TO SAVEPOINT s2;
SELECT crmguard.current_principal() AS nobody_after_outer_rollback;
SAVEPOINT s4;
SELECT crmguard.assume(:'anna_token') IS NOT NULL AS assumed_in_released_savepoint;
RELEASE SAVEPOINT s4;
SELECT crmguard.current_principal() AS anna_after_release;
COMMIT;
SELECT crmguard.current_principal() AS nobody_after_commit;
-- an exception block that catches an error undoes an assume made inside it
DO $$
BEGIN
    BEGIN
        PERFORM crmguard.assume(crmguard.issue_token('anna'));
        PERFORM 1 / 0;
    EXCEPTION WHEN division_by_zero THEN
        RAISE NOTICE 'principal after the caught error: %', crmguard.current_principal();
    END;
END
$$;
-- DISCARD ALL ends a session-long identity (session pooling)
SELECT crmguard.assume(:'anna_token', false) IS NOT NULL AS assumed;
DISCARD ALL;
SELECT crmguard.current_principal() AS after_discard_all;

-- PostgREST's db-pre-request: no bearer token means nobody for the
-- transaction, even for a role mapped to a principal
SET ROLE regress_luca;
BEGIN;
SELECT set_config('request.headers', '{"accept": "*/*"}', true) IS NOT NULL AS headers_set;
SELECT crmguard.pre_request();
SELECT crmguard.current_principal() AS nobody_without_bearer;
COMMIT;
SELECT crmguard.current_principal() IS NOT NULL AS luca_again;
-- the claim that names the principal and the key file are the DBA's, not a session's
SET crmguard.jwt_principal_claim = 'email';
SET crmguard.jwt_key_file = '/tmp/attacker.jwk';
RESET ROLE;
-- a JWT needs a key: without crmguard.jwt_key_file every JWT is refused
SELECT crmguard.assume_jwt('eyJhbGciOiJub25lIn0.eyJzdWIiOiJkb3JhIn0.');

-- the end of every identity is audited like its start
SELECT detail->>'scope' AS scope, detail->>'reason' AS reason, count(*)
  FROM crmguard.audit WHERE action = 'assume_end'
 GROUP BY 1, 2 ORDER BY 1, 2;

-- every refusal above is in the audit log, although its statement failed
DO $$
BEGIN
    FOR i IN 1..200 LOOP
        EXIT WHEN (SELECT count(*) FROM crmguard.audit WHERE action = 'assume_refused') >= 8;
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;
SELECT action, detail->>'reason' AS reason, count(*)
  FROM crmguard.audit WHERE action LIKE 'assume%' AND action <> 'assume_end'
 GROUP BY 1, 2 ORDER BY 1, 2;

-- ===========================================================================
-- Attack: held_cursor_outlives_transaction_identity
-- Behind a transaction pool, client 1 assumes anna for one transaction and
-- declares a cursor WITH HOLD.  Such a cursor is read to its end at COMMIT,
-- as anna, and stays in the session for the pooler's next client, who acts
-- as nobody.  Refused while a transaction-scoped identity is in force.
-- ===========================================================================
SELECT crmguard.issue_token('anna', '10 minutes') AS anna_token \gset
BEGIN;
SELECT crmguard.assume(:'anna_token') IS NOT NULL AS client1_is_anna;
DECLARE held_c CURSOR WITH HOLD FOR SELECT crmguard.current_principal() AS read_as;
COMMIT;
-- client 2, on the same server connection
SELECT crmguard.current_principal() AS client2_is_nobody;
FETCH ALL FROM held_c;
-- a cursor without hold ends with the transaction and its identity
BEGIN;
SELECT crmguard.assume(:'anna_token') IS NOT NULL AS client1_is_anna;
DECLARE plain_c CURSOR FOR SELECT crmguard.current_principal() IS NOT NULL AS read_as_anna;
FETCH ALL FROM plain_c;
COMMIT;
-- declared before the assume in the same transaction, a held cursor would
-- still be read at COMMIT as anna: the assume is refused while it is open
BEGIN;
DECLARE early_c CURSOR WITH HOLD FOR SELECT crmguard.current_principal() AS read_as;
SELECT crmguard.assume(:'anna_token');
ROLLBACK;
BEGIN;
DECLARE early_c CURSOR WITH HOLD FOR SELECT crmguard.current_principal() AS read_as;
CLOSE early_c;
SELECT crmguard.assume(:'anna_token') IS NOT NULL AS assumed_once_closed;
COMMIT;
-- a held cursor from an earlier transaction was read then, not as anna
BEGIN;
DECLARE before_c CURSOR WITH HOLD FOR SELECT crmguard.current_principal() AS read_as;
COMMIT;
BEGIN;
SELECT crmguard.assume(:'anna_token') IS NOT NULL AS assumed_with_older_cursor;
FETCH ALL FROM before_c;
COMMIT;
CLOSE before_c;
-- an identity for the session outlives the transaction like the cursor
SELECT crmguard.assume(:'anna_token', is_local => false) IS NOT NULL AS session_is_anna;
BEGIN;
DECLARE session_c CURSOR WITH HOLD FOR SELECT crmguard.current_principal() IS NOT NULL AS read_as_anna;
COMMIT;
FETCH ALL FROM session_c;
CLOSE session_c;
SELECT crmguard.assume(NULL);
