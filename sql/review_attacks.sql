--
-- Review attacks: a security review of the fixes for issues 11, 12 and 13,
-- working as a rep, an application role and a table owner would.  Each
-- section is named after the attack and shows it refused, the victim row
-- unchanged.  (The held-cursor attack lives in identity_attacks.)
--
\set VERBOSITY terse
CREATE OR REPLACE FUNCTION public.regress_try(query text) RETURNS text
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE query;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN 'refused';
END
$$;
GRANT EXECUTE ON FUNCTION public.regress_try(text) TO PUBLIC;
-- the code of the newest message to a recipient (manual delivery: queued by request_otp)
CREATE FUNCTION public.regress_rv_code(recipient text) RETURNS text
    LANGUAGE sql AS $$
    SELECT substring(o.body FROM 'code is ([A-Z0-9]+)') FROM crmguard.outbox o
     WHERE o.recipient = regress_rv_code.recipient ORDER BY o.id DESC LIMIT 1
$$;
CREATE ROLE regress_rv_owner;
CREATE ROLE regress_rv_luca;
GRANT USAGE, CREATE ON SCHEMA public TO regress_rv_owner;
SELECT crmguard.add_principal('rv_luca', '{agent}', db_role => 'regress_rv_luca') > 0 AS luca;

-- ===========================================================================
-- Attack: otp_primary_key_swap
-- A challenge is bound to a row *key*, not to a row.  The rep asks for a code
-- for a row whose phone is his own (row 50), then, in the transaction that
-- uses the code, gives the customer's row (row 1) the key 50 while setting
-- it Delivered, and swaps the keys back.  The customer never got a code.
-- ===========================================================================
CREATE TABLE public.regress_rv_note (id bigint PRIMARY KEY, customer text, phone text, status text NOT NULL);
INSERT INTO public.regress_rv_note VALUES
    (1, 'Victim', '+39 347 555 0001', 'Out for delivery'),
    (2, 'Victim2', '+39 347 555 0002', 'Out for delivery'),
    (50, 'Rep''s own test contact', '+39 333 000 0666', 'Out for delivery'),
    (61, 'Rep''s other contact', '+39 333 000 0777', 'Out for delivery');
SELECT crmguard.create_otp_rule('rv note', 'public.regress_rv_note', 'status', '{Delivered}', 'phone',
                                delivery => 'manual') > 0 AS rule;
ALTER TABLE public.regress_rv_note OWNER TO regress_rv_owner;
GRANT SELECT, INSERT, UPDATE ON public.regress_rv_note TO regress_rv_luca;

SET ROLE regress_rv_luca;
SELECT crmguard.request_otp('public.regress_rv_note', '50', 'Delivered') AS ch \gset
RESET ROLE;
SELECT public.regress_rv_code('+39 333 000 0666') AS code \gset
SET ROLE regress_rv_luca;
BEGIN;
SELECT crmguard.verify_otp(:ch, :'code') AS verified;
SELECT public.regress_try($$UPDATE public.regress_rv_note SET id = -50 WHERE id = 50$$) AS move_own_row_aside;
SELECT public.regress_try($$UPDATE public.regress_rv_note SET id = 50, status = 'Delivered' WHERE id = 1$$) AS victim_delivered_under_key_50;
SELECT public.regress_try($$UPDATE public.regress_rv_note SET id = 1 WHERE id = 50$$) AS victim_key_back;
SELECT public.regress_try($$UPDATE public.regress_rv_note SET id = 50 WHERE id = -50$$) AS own_key_back;
COMMIT;
RESET ROLE;
-- secure: the customer's row is not Delivered
SELECT id, customer, phone, status FROM public.regress_rv_note WHERE id IN (1, 50) ORDER BY id;

-- ===========================================================================
-- Attack: otp_primary_key_move_dodges_cooldown
-- The recipient watch records a phone change, not a key change: the rep gives
-- his own row the customer's key (moving the customer's row aside), commits,
-- and request_otp for that key sends the code to the rep's phone with no
-- cooldown.  Keys back, then the code sets the customer's row Delivered.
-- ===========================================================================
SET ROLE regress_rv_luca;
BEGIN;
UPDATE public.regress_rv_note SET id = 1002 WHERE id = 2;
UPDATE public.regress_rv_note SET id = 2 WHERE id = 61;
COMMIT;
-- secure: refused (the row named 2 has a recipient set a moment ago)
SELECT public.regress_try($$SELECT crmguard.request_otp('public.regress_rv_note', '2', 'Delivered')$$) AS code_for_key_2_requested;
RESET ROLE;
SELECT count(*) AS codes_to_the_reps_phone_for_key_2 FROM crmguard.outbox
 WHERE recipient = '+39 333 000 0777';
SELECT COALESCE(public.regress_rv_code('+39 333 000 0777'), 'none') AS code2 \gset
SET ROLE regress_rv_luca;
SELECT COALESCE(crmguard.pending_challenge('public.regress_rv_note', '2', 'Delivered'), 0) AS ch2 \gset
BEGIN;
UPDATE public.regress_rv_note SET id = 61 WHERE id = 2;
UPDATE public.regress_rv_note SET id = 2 WHERE id = 1002;
COMMIT;
BEGIN;
SELECT public.regress_try(format('SELECT crmguard.verify_otp(%s, %L)', :'ch2', :'code2')) AS verified;
SELECT public.regress_try($$UPDATE public.regress_rv_note SET status = 'Delivered' WHERE id = 2$$) AS victim2_delivered;
COMMIT;
RESET ROLE;
-- secure: the customer's row 2 is not Delivered
SELECT id, customer, phone, status FROM public.regress_rv_note WHERE id IN (2, 61) ORDER BY id;

-- ===========================================================================
-- Attack: approval_action_rule_reads_around_visibility
-- crmguard runs an approval's "set" action with the visibility rules set
-- aside for the whole statement it prepares.  A table owner who sees no
-- customer (it is nobody) adds a rule to its own table; when an approver
-- approves a request, the rule copies every row of another guarded table.
-- CREATE RULE on a guarded table is neither refused nor audited.
-- ===========================================================================
CREATE ROLE regress_rv_boss;
SELECT crmguard.add_principal('rv_boss', '{boss}', db_role => 'regress_rv_boss') > 0 AS boss;
CREATE TABLE public.regress_rv_customer (id int PRIMARY KEY, owner_id bigint, name text);
INSERT INTO public.regress_rv_customer
SELECT 1, id, 'luca''s customer' FROM crmguard.principal WHERE name = 'rv_luca'
UNION ALL SELECT 2, NULL, 'someone else''s customer';
SELECT crmguard.expose_by_owner('public.regress_rv_customer', 'owner_id', 'agent') > 0 AS exposed;
GRANT SELECT ON public.regress_rv_customer TO regress_rv_owner, regress_rv_luca;
CREATE TABLE public.regress_rv_deal (id int PRIMARY KEY, discount int, status text);
INSERT INTO public.regress_rv_deal VALUES (1, 30, 'Draft');
SELECT crmguard.create_approval_process('rv discount', 'public.regress_rv_deal', NULL,
    '[{"name": "Boss", "approvers": {"role": "boss"}}]',
    on_approve => '[{"set": {"status": "Approved"}}]') > 0 AS process;
ALTER TABLE public.regress_rv_deal OWNER TO regress_rv_owner;
GRANT SELECT, UPDATE ON public.regress_rv_deal TO regress_rv_luca;
SET ROLE regress_rv_owner;
SELECT count(*) AS customers_the_owner_sees FROM public.regress_rv_customer;
CREATE TABLE public.regress_rv_stash (id int, owner_id bigint, name text);
-- secure: refused, like any other change to a guarded table's behaviour
SELECT public.regress_try($$CREATE RULE regress_rv_leak AS ON UPDATE TO public.regress_rv_deal
    DO ALSO INSERT INTO public.regress_rv_stash SELECT * FROM public.regress_rv_customer$$) AS rule_created;
RESET ROLE;
SET ROLE regress_rv_luca;
SELECT crmguard.submit_for_approval('public.regress_rv_deal', '1') AS req \gset
RESET ROLE;
SET ROLE regress_rv_boss;
SELECT public.regress_try(format('SELECT crmguard.approve(%s)', :req)) AS approved;
RESET ROLE;
-- secure: the owner stashed no customer it cannot see
SELECT count(*) AS customers_stashed FROM public.regress_rv_stash;

-- ===========================================================================
-- Attack: review_rule_copies_drafts
-- crmguard refuses an owner's trigger that would see rows before the review
-- guard keeps them as drafts; a rule does the same and is not refused.  The
-- table owner (no reviewer) adds an ON INSERT ... DO ALSO rule and gets a
-- copy of every draft a rep submits.
-- ===========================================================================
CREATE TABLE public.regress_rv_lead (id int PRIMARY KEY, company text, phone text);
SELECT crmguard.enable_review('public.regress_rv_lead', 'boss');
ALTER TABLE public.regress_rv_lead OWNER TO regress_rv_owner;
GRANT SELECT, INSERT ON public.regress_rv_lead TO regress_rv_luca;
SET ROLE regress_rv_owner;
CREATE TABLE public.regress_rv_peek (id int, company text, phone text);
-- secure: refused, like a trigger ahead of the review guard
SELECT public.regress_try($$CREATE RULE regress_rv_peek AS ON INSERT TO public.regress_rv_lead
    DO ALSO INSERT INTO public.regress_rv_peek VALUES (NEW.id, NEW.company, NEW.phone)$$) AS rule_created;
RESET ROLE;
SET ROLE regress_rv_luca;
SET client_min_messages = warning;
INSERT INTO public.regress_rv_lead VALUES (1, 'Acme', '+39 347 555 0100');
RESET client_min_messages;
RESET ROLE;
SELECT count(*) AS rows_in_lead FROM public.regress_rv_lead;
-- secure: the owner has no copy of the draft
SELECT count(*) AS drafts_copied_by_the_owner FROM public.regress_rv_peek;

-- ===========================================================================
-- Attack: otp_condition_dodged_in_two_statements
-- A rule with a condition ("deliveries over 1000 need the customer's code")
-- judges only the row as it enters the gated value.  The rep lowers the
-- amount in the statement that sets Delivered, then puts the amount back in
-- the next one: the row ends Delivered and over 1000, without a code.
-- ===========================================================================
CREATE TABLE public.regress_rv_big (id int PRIMARY KEY, phone text, amount numeric, status text);
INSERT INTO public.regress_rv_big VALUES (1, '+39 347 555 0009', 5000, 'Shipped');
SELECT crmguard.create_otp_rule('rv big', 'public.regress_rv_big', 'status', '{Delivered}', 'phone',
                                delivery => 'manual',
                                condition => '{"field": "amount", "op": ">", "value": 1000}') > 0 AS rule;
ALTER TABLE public.regress_rv_big OWNER TO regress_rv_owner;
GRANT SELECT, UPDATE ON public.regress_rv_big TO regress_rv_luca;
SET ROLE regress_rv_luca;
SELECT public.regress_try($$UPDATE public.regress_rv_big SET status = 'Delivered' WHERE id = 1$$) AS delivered_directly;
BEGIN;
SELECT public.regress_try($$UPDATE public.regress_rv_big SET status = 'Delivered', amount = 1 WHERE id = 1$$) AS delivered_at_amount_1;
SELECT public.regress_try($$UPDATE public.regress_rv_big SET amount = 5000 WHERE id = 1$$) AS amount_back;
COMMIT;
RESET ROLE;
-- secure: Delivered only at an amount the rule does not gate; 5000 again needs a code
SELECT id, amount, status FROM public.regress_rv_big;

-- ===========================================================================
-- Attack: approval_lock_dropped_with_primary_key
-- The approval lock finds a pending row by its primary key and lets the
-- change pass when the table has none.  The table owner drops (or moves) the
-- primary key of a table with a pending request; the rep then changes the
-- locked row, and the request stays pending over a row that is no longer
-- the one submitted.  (The OTP gate fails closed without a key, but a moved
-- key re-keys every challenge: the root of otp_primary_key_swap.)
-- ===========================================================================
DROP RULE IF EXISTS regress_rv_leak ON public.regress_rv_deal;
INSERT INTO public.regress_rv_deal VALUES (2, 40, 'Draft');
SET ROLE regress_rv_luca;
SELECT crmguard.submit_for_approval('public.regress_rv_deal', '2') IS NOT NULL AS submitted;
SELECT public.regress_try($$UPDATE public.regress_rv_deal SET discount = 90 WHERE id = 2$$) AS changed_while_pending;
RESET ROLE;
SET ROLE regress_rv_owner;
-- secure: refused, the key names the guarded rows
SELECT public.regress_try($$ALTER TABLE public.regress_rv_deal DROP CONSTRAINT regress_rv_deal_pkey$$) AS primary_key_dropped;
RESET ROLE;
SET ROLE regress_rv_luca;
SELECT public.regress_try($$UPDATE public.regress_rv_deal SET discount = 90 WHERE id = 2$$) AS changed_while_pending;
RESET ROLE;
-- secure: the pending row keeps the discount that was submitted
SELECT id, discount FROM public.regress_rv_deal WHERE id = 2;
SELECT state FROM crmguard.approval_request WHERE row_key = '2' ORDER BY id DESC LIMIT 1;

-- ===========================================================================
-- Cleanup
-- ===========================================================================
DROP TABLE public.regress_rv_note, public.regress_rv_big, public.regress_rv_deal, public.regress_rv_stash,
           public.regress_rv_customer, public.regress_rv_peek;
SELECT crmguard.disable_review('public.regress_rv_lead');
DROP TABLE public.regress_rv_lead;
DROP FUNCTION public.regress_rv_code(text);
DELETE FROM crmguard.principal WHERE name LIKE 'rv\_%';
REVOKE ALL ON SCHEMA public FROM regress_rv_owner;
DROP ROLE regress_rv_owner, regress_rv_luca, regress_rv_boss;
DROP FUNCTION public.regress_try(text);
