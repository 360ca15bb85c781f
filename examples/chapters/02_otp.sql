-- Chapter 2: a delivery becomes "Delivered" only with the customer's code
\set ON_ERROR_STOP 0
\set SHOW_CONTEXT never
\set VERBOSITY default
\echo '== Chapter 2: OTP-gated status changes'
\echo
\echo 'Reps have been marking deliveries "Delivered" without being there. The DBA adds'
\echo 'the rule "Delivery Confirmation OTP": 5-digit numeric code, valid 5 minutes, sent'
\echo 'by e-mail to the customer on record, whenever a delivery note changes to "Delivered":'
SELECT crmguard.create_otp_rule('Delivery Confirmation OTP', 'crm.delivery_note',
                                status_column => 'status', to_values => '{Delivered}',
                                recipient_column => 'contact_email', channel => 'email',
                                code_type => 'numeric', code_length => 5,
                                valid_for => '5 minutes') AS rule_id;

SELECT min(id) AS note_id FROM crm.delivery_note
 WHERE status = 'Out for delivery' AND owner_id = (SELECT id FROM crmguard.principal WHERE name = 'remo') \gset
\echo
\echo 'Remo, the delivery rep, marks delivery note' :note_id 'delivered from the depot:'
SET ROLE crm_remo;
UPDATE crm.delivery_note SET status = 'Delivered', delivered_at = now() WHERE id = :note_id;
RESET ROLE;

\echo
\echo 'The change was refused, yet the customer got the code: the background worker'
\echo 'queued the e-mail in its own transaction, and crmguard-relay (LISTEN crmguard_outbox)'
\echo 'delivered it to the mail server at once. In the customer''s inbox:'
\! bash mailbox.sh show 'Delivery Confirmation OTP'
\set code `bash mailbox.sh code 'Delivery Confirmation OTP'`
\echo
\echo 'The outbox as the DBA sees it: sent, its body (the code) erased, one idempotency key'
\echo 'per message (the e-mail''s Message-ID):'
DO $$
BEGIN
    FOR i IN 1..100 LOOP   -- the relay reports right after the mail server's answer
        EXIT WHEN EXISTS (SELECT 1 FROM crmguard.outbox WHERE subject = 'Delivery Confirmation OTP' AND state = 'sent');
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT id, channel, recipient, state, attempts, body IS NULL AS body_erased, idempotency_key
  FROM crmguard.outbox WHERE subject = 'Delivery Confirmation OTP';
SELECT max(id) AS challenge FROM crmguard.otp_challenge_state \gset

\echo
\echo 'At the customer''s door, Remo types a wrong code first:'
SET ROLE crm_remo;
BEGIN;
SELECT crmguard.verify_otp(:challenge, '00000');
ROLLBACK;
\echo '... then the code the customer reads out, and the change goes through:'
BEGIN;
SELECT crmguard.verify_otp(:challenge, :'code') AS verified;
UPDATE crm.delivery_note SET status = 'Delivered', delivered_at = now() WHERE id = :note_id;
COMMIT;
SELECT id, status FROM crm.delivery_note WHERE id = :note_id;

\echo
\echo 'The same code cannot be used again (one code, one change). The DBA sets the'
\echo 'note back to "Out for delivery", and Remo tries the code a second time:'
RESET ROLE;
UPDATE crm.delivery_note SET status = 'Out for delivery' WHERE id = :note_id;
SET ROLE crm_remo;
BEGIN;
SELECT crmguard.verify_otp(:challenge, :'code');
ROLLBACK;
RESET ROLE;

\echo
\echo 'An expired code is refused too. For the demo, a second rule gates "Failed" with'
\echo 'codes valid one second, sent only on request (delivery => manual); Remo requests'
\echo 'one, the demo reads it from the outbox, waits 1.2 seconds and tries it:'
SELECT crmguard.create_otp_rule('Failed Delivery OTP', 'crm.delivery_note', 'status', '{Failed}',
                                'contact_phone', delivery => 'manual', code_length => 5,
                                valid_for => '1 second') AS rule_id;
SET ROLE crm_remo;
SELECT crmguard.request_otp('crm.delivery_note', :'note_id', 'Failed') AS quick \gset
RESET ROLE;
SELECT substring(body FROM 'code is ([0-9]+)') AS quick_code FROM crmguard.outbox ORDER BY id DESC LIMIT 1 \gset
SELECT pg_sleep(1.2) AS waited \gset
SET ROLE crm_remo;
BEGIN;
SELECT crmguard.verify_otp(:quick, :'quick_code');
ROLLBACK;
RESET ROLE;

\echo
\echo 'No rollback trick helps: failed attempts are counted in shared memory. After'
\echo 'three wrong codes, even the right one is refused:'
SELECT id AS other_note FROM crm.delivery_note
 WHERE status = 'Out for delivery' AND id <> :note_id ORDER BY id LIMIT 1 \gset
SET ROLE crm_remo;
SELECT crmguard.request_otp('crm.delivery_note', :'other_note', 'Delivered') AS locked_challenge \gset
BEGIN; SELECT crmguard.verify_otp(:locked_challenge, '11111'); ROLLBACK;
BEGIN; SELECT crmguard.verify_otp(:locked_challenge, '22222'); ROLLBACK;
BEGIN; SELECT crmguard.verify_otp(:locked_challenge, '33333'); ROLLBACK;
RESET ROLE;
\echo 'The right code, from the e-mail this customer received, is refused as well:'
\set right_code `bash mailbox.sh code 'Delivery Confirmation OTP' 2`
SET ROLE crm_remo;
SELECT crmguard.verify_otp(:locked_challenge, :'right_code');
RESET ROLE;

\echo
\echo 'The challenges as the DBA sees them (never the code):'
SELECT id, rule, row_key, to_value, state, attempts, resends FROM crmguard.otp_challenge ORDER BY id;

\echo
\echo 'And the table owner cannot quietly switch the guard off (for this, the demo'
\echo 'hands crm.delivery_note to an ordinary role, crm_owner_demo, and back):'
CREATE ROLE crm_owner_demo IN ROLE crm_users;
ALTER TABLE crm.delivery_note OWNER TO crm_owner_demo;
SET ROLE crm_owner_demo;
ALTER TABLE crm.delivery_note DISABLE TRIGGER USER;
RESET ROLE;
ALTER TABLE crm.delivery_note OWNER TO CURRENT_USER;
DROP ROLE crm_owner_demo;
SELECT pg_sleep(0.3) AS waited \gset
\echo 'Each step of this chapter is in the audit log, refusals included:'
SELECT action, count(*) FROM crmguard.audit
 WHERE action LIKE 'otp%' OR action LIKE 'guard%' OR action LIKE '%otp_rule'
 GROUP BY action ORDER BY action;
