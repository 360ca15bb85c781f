-- Chapter 4: leads from the web form wait as drafts until a reviewer approves them
\set ON_ERROR_STOP 0
\set SHOW_CONTEXT never
\set VERBOSITY default
\echo '== Chapter 4: draft review'
\echo
\echo 'The web form writes leads straight into crm.lead, and some of them are junk or'
\echo 'duplicates (see "test test" among the seed leads). The DBA turns review on:'
\echo 'inserts by anyone but agents and managers become drafts for Rita (role'
\echo 'reviewer); company, e-mail and phone are matched for duplicates.'
CREATE ROLE crm_webform IN ROLE crm_users;
SELECT '   ok: principal ' || crmguard.add_principal('webform', '{integration}', db_role => 'crm_webform')
       || ' (webform, CRM role integration) acts for the form''s database role crm_webform'
\g (tuples_only=on format=unaligned)
SELECT '   ok: review enabled on crm.lead, reviewers: CRM role reviewer'
  FROM crmguard.enable_review('crm.lead', 'reviewer', '{company,email,phone}', '{agent,area_manager}')
\g (tuples_only=on format=unaligned)
\echo 'The leads so far:'
SELECT id, full_name, company, source FROM crm.lead ORDER BY id;

\echo
\echo 'Luca (an agent, exempt) records a lead he met at a fair; it goes straight in:'
SET ROLE crm_luca;
INSERT INTO crm.lead (full_name, company, email, phone, source)
VALUES ('Giorgio Ferri', 'Ferri & Figli', 'giorgio@ferri-figli.example', '+39 335 555 0101', 'trade fair')
RETURNING id, full_name, company, source;
RESET ROLE;

\echo
\echo 'The web form posts four leads: one junk, one that is Bassi Trasporti again'
\echo '(other case, other punctuation), and two for the same bakery in one request.'
\echo 'None reaches the table; each INSERT reports no row and a NOTICE with the draft.'
\echo 'Drafts have numbers of their own (1, 2, ...), separate from lead ids:'
SET ROLE crm_webform;
INSERT INTO crm.lead (full_name, company, email, source) VALUES ('asdf', 'x', 'x@x', 'web form');
INSERT INTO crm.lead (full_name, company, email, phone, source)
VALUES ('E. Bassi', 'BASSI TRASPORTI ', 'Elena@Bassi-Trasporti.example', '333 555-0001', 'web form');
INSERT INTO crm.lead (full_name, company, email, phone, source)
VALUES ('Anna Bianchi', 'Panificio Bianchi', 'anna@panificio-bianchi.example', '+39 02 555 0199', 'web form'),
       ('A. Bianchi', 'Panificio Bianchi snc', 'ANNA@panificio-bianchi.example', NULL, 'web form');
\echo 'The form sees its own drafts, and nobody else''s. A draft keeps the row as the'
\echo 'INSERT made it, defaults included, so each already took its lead id from'
\echo 'crm.lead''s sequence (lead_id): an approved draft enters with that id, and a'
\echo 'rejected one leaves a gap in the lead ids, as a rolled-back INSERT would:'
SELECT id AS draft, row_data->>'id' AS lead_id, row_data->>'company' AS company, state
  FROM crmguard.draft ORDER BY id;
RESET ROLE;
SELECT min(id) AS junk, min(id) + 1 AS bassi, min(id) + 2 AS bianchi, min(id) + 3 AS bianchi_again
  FROM crmguard.draft_state WHERE target = 'crm.lead'::regclass \gset

\echo
\echo 'Rita sees every draft of the table, each with its likely duplicates (other'
\echo 'pending drafts, and the ids of rows already in the table):'
SET ROLE crm_rita;
SELECT id AS draft, row_data->>'company' AS company, submitted_by, duplicates FROM crmguard.draft ORDER BY id;

\echo
\echo 'She rejects the junk, with a reason for each bad field:'
SELECT '   ok: draft ' || :junk || ' rejected'
  FROM crmguard.reject_draft(:junk, 'not a real lead',
                             '{"full_name": "not a name", "email": "not a real address"}')
\g (tuples_only=on format=unaligned)
\echo 'Bassi Trasporti is already lead 1: she notes the merge and rejects the draft:'
SELECT '   ok: comment on draft ' || :bassi
  FROM crmguard.comment_draft(:bassi, 'same as lead 1 (Elena Bassi); nothing new to merge')
\g (tuples_only=on format=unaligned)
SELECT '   ok: draft ' || :bassi || ' rejected' FROM crmguard.reject_draft(:bassi, 'duplicate of lead 1')
\g (tuples_only=on format=unaligned)
\echo 'Of the two Bianchi drafts she keeps the first, corrected, and rejects the other.'
\echo 'approve_draft() returns the new row''s key, the lead id the draft took:'
SELECT crmguard.approve_draft(:bianchi, 'welcome', '{"company": "Panificio Bianchi snc"}') AS new_lead_id;
SELECT '   ok: draft ' || :bianchi_again || ' rejected'
  FROM crmguard.reject_draft(:bianchi_again, 'duplicate of draft ' || :bianchi)
\g (tuples_only=on format=unaligned)

\echo
\echo 'Approval goes through the table''s constraints: a correction that breaks one'
\echo 'leaves the draft pending, with the error, and the table unchanged. The form'
\echo 'posts one more lead; Rita''s correction blanks the name, which may not be null:'
RESET ROLE;
SET ROLE crm_webform;
INSERT INTO crm.lead (full_name, company, email, source) VALUES ('Paolo Neri', 'Neri Gelati', 'paolo@neri.example', 'web form');
RESET ROLE;
SELECT max(id) AS neri FROM crmguard.draft_state \gset
SET ROLE crm_rita;
SELECT coalesce(crmguard.approve_draft(:neri, NULL, '{"full_name": null}'), 'NULL (not approved)') AS new_lead_id;
SELECT id AS draft, state, last_error FROM crmguard.draft WHERE id = :neri;
\echo 'Rita approves it a second time, without the correction: the row goes in.'
SELECT crmguard.approve_draft(:neri) AS new_lead_id;
RESET ROLE;

\echo
\echo 'Someone without the reviewer role cannot approve, whatever it tries; here the'
\echo 'web form tries to approve draft' :bianchi_again 'itself:'
SET ROLE crm_webform;
SELECT crmguard.approve_draft(:bianchi_again);
RESET ROLE;

\echo
\echo 'The table now holds the seed leads plus exactly the ones someone vouched for'
\echo '(the missing ids belong to the rejected drafts):'
SELECT id, full_name, company, email, source FROM crm.lead ORDER BY id;
\echo 'And every draft keeps its history:'
SET ROLE crm_rita;
SELECT id AS draft, row_data->>'id' AS lead_id, state, reason, reviewed_by,
       (SELECT string_agg(e->>'event' || ' by ' || (e->>'by'), ' > ') FROM jsonb_array_elements(history) e) AS history
  FROM crmguard.draft ORDER BY id;
RESET ROLE;
