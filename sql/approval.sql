--
-- Approval workflows: a 25% discount waits for the rep's manager, then finance
--
\set VERBOSITY default
CREATE FUNCTION public.regress_try(query text) RETURNS text
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE query;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
GRANT EXECUTE ON FUNCTION public.regress_try(text) TO PUBLIC;

CREATE ROLE regress_apv_owner;
CREATE ROLE regress_apv_dora;       -- director
CREATE ROLE regress_apv_anna;       -- area manager
CREATE ROLE regress_apv_luca;       -- agent under anna
CREATE ROLE regress_apv_marco;      -- agent under anna
CREATE ROLE regress_apv_franca;     -- finance
CREATE ROLE regress_apv_fabio;      -- finance
CREATE ROLE regress_apv_mara;       -- head of marketing
CREATE ROLE regress_apv_mallory;    -- an agent elsewhere
GRANT USAGE ON SCHEMA public TO regress_apv_owner;
GRANT EXECUTE ON FUNCTION crmguard.create_approval_process(text, regclass, jsonb, jsonb, jsonb, jsonb, jsonb, text[], name[]),
      crmguard.drop_approval_process(text) TO regress_apv_owner;
SELECT crmguard.add_principal('apv_dora', '{director}', db_role => 'regress_apv_dora') > 0 AS dora;
SELECT crmguard.add_principal('apv_anna', '{area_manager}', 'apv_dora', db_role => 'regress_apv_anna') > 0 AS anna;
SELECT crmguard.add_principal('apv_luca', '{agent}', 'apv_anna', '{"email": "luca@example.com"}', 'regress_apv_luca') > 0 AS luca;
SELECT crmguard.add_principal('apv_marco', '{agent}', 'apv_anna', db_role => 'regress_apv_marco') > 0 AS marco;
SELECT crmguard.add_principal('apv_franca', '{finance,campaign_board}', 'apv_dora', db_role => 'regress_apv_franca') > 0 AS franca;
SELECT crmguard.add_principal('apv_fabio', '{finance}', 'apv_dora', db_role => 'regress_apv_fabio') > 0 AS fabio;
SELECT crmguard.add_principal('apv_mara', '{marketing,campaign_board}', 'apv_dora', db_role => 'regress_apv_mara') > 0 AS mara;
SELECT crmguard.add_principal('apv_mallory', '{agent}', 'apv_dora', db_role => 'regress_apv_mallory') > 0 AS mallory;
SELECT id AS dora_id FROM crmguard.principal WHERE name = 'apv_dora' \gset
SELECT id AS anna_id FROM crmguard.principal WHERE name = 'apv_anna' \gset
SELECT id AS luca_id FROM crmguard.principal WHERE name = 'apv_luca' \gset
SELECT id AS marco_id FROM crmguard.principal WHERE name = 'apv_marco' \gset

CREATE TABLE public.regress_apv_deal (
    id       integer PRIMARY KEY,
    title    text NOT NULL,
    owner_id bigint NOT NULL,
    discount numeric NOT NULL DEFAULT 0,
    status   text NOT NULL DEFAULT 'Draft',
    notes    text
);
INSERT INTO public.regress_apv_deal (id, title, owner_id) VALUES
    (1, 'Cold room, Novak', :luca_id), (2, 'Freezers, Rossi', :anna_id), (3, 'Van fleet, Bianchi', :marco_id),
    (4, 'Spare parts, Ferri', :luca_id), (5, 'Service plan, Neri', :luca_id), (6, 'Pallets, Verdi', :luca_id);
ALTER TABLE public.regress_apv_deal OWNER TO regress_apv_owner;
GRANT SELECT, UPDATE ON public.regress_apv_deal TO regress_apv_dora, regress_apv_anna, regress_apv_luca,
      regress_apv_marco, regress_apv_franca, regress_apv_fabio, regress_apv_mallory;
-- a "call" action: runs as the process's definer, never as the extension's owner
CREATE FUNCTION public.regress_apv_fail(request bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF current_user <> 'regress_apv_owner' THEN
        RAISE EXCEPTION 'call action runs as %, not as the process''s definer', current_user;
    END IF;
    IF (SELECT name FROM public.regress_apv_campaign c
         WHERE c.id::text = (SELECT row_key FROM crmguard.approval_request r WHERE r.id = request)) = 'Fail' THEN
        RAISE EXCEPTION 'the booking system is down';
    END IF;
END $$;

-- ---------------------------------------------------------------------------
-- Bad definitions: CG020 each, nothing created
-- ---------------------------------------------------------------------------
-- a partition, and an inheritance parent: rows written through another table
-- of the tree would pass around the lock
CREATE TABLE public.regress_apv_tree (id int, owner_id bigint, discount int, PRIMARY KEY (id)) PARTITION BY RANGE (id);
CREATE TABLE public.regress_apv_tree_1 PARTITION OF public.regress_apv_tree FOR VALUES FROM (0) TO (1000);
CREATE TABLE public.regress_apv_parent (id int PRIMARY KEY, owner_id bigint, discount int);
CREATE TABLE public.regress_apv_parent_child () INHERITS (public.regress_apv_parent);
ALTER TABLE public.regress_apv_tree OWNER TO regress_apv_owner;
ALTER TABLE public.regress_apv_tree_1 OWNER TO regress_apv_owner;
ALTER TABLE public.regress_apv_parent OWNER TO regress_apv_owner;
ALTER TABLE public.regress_apv_parent_child OWNER TO regress_apv_owner;
SET ROLE regress_apv_owner;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_apv_tree_1', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]')$$) AS partition;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_apv_parent', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]')$$) AS inheritance_parent;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_apv_parent_child', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]')$$) AS inheritance_child;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_apv_deal',
    '{"field": "discont", "op": ">=", "value": 20}', '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]')$$) AS unknown_criteria_column;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_apv_deal', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]', '[{"set": {"state": "Approved"}}]')$$) AS unknown_set_column;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_apv_deal', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]', '[{"set": {"discount": "a lot"}}]')$$) AS bad_set_value;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_apv_deal', NULL, '[]')$$) AS empty_steps;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_apv_deal', NULL,
    '[{"name": "Finance", "approvers": {"role": "finance"}, "mode": {"quorum": 3}}]')$$) AS quorum_too_large;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_apv_deal', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]', '[{"email": {"to": "boss"}}]')$$) AS unknown_action;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_apv_deal', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]', '[{"call": "public.no_such_function"}]')$$) AS missing_function;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_apv_deal', NULL,
    '[{"name": "Board", "approvers": {"role": "board"}}]')$$) AS nobody_has_role;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_apv_deal', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "title"}}]')$$) AS approver_column_not_ids;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_apv_deal',
    '{"field": "owner_id", "op": "=", "principal": "id"}', '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]')$$) AS criteria_on_principal;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_apv_deal', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}, "timeout": "-1 hour"}]')$$) AS negative_timeout;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_apv_deal', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]', auto_submit => '{delete}')$$) AS bad_auto_submit;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_apv_deal', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]', editable_columns => '{remarks}')$$) AS bad_editable;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_apv_deal', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]', '[{"set": {"id": 7}}]')$$) AS set_key_column;
RESET ROLE;
DROP TABLE public.regress_apv_tree, public.regress_apv_parent CASCADE;
SELECT count(*) AS processes FROM crmguard.approval_process;
SELECT count(*) AS guards FROM pg_trigger WHERE tgrelid = 'public.regress_apv_deal'::regclass AND NOT tgisinternal;
-- only the table's owner defines processes
SET ROLE regress_apv_anna;
SELECT public.regress_try($$SELECT crmguard.create_approval_process('mine', 'public.regress_apv_deal', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]')$$) AS not_owner;
RESET ROLE;

-- ---------------------------------------------------------------------------
-- The discount process: manager, then finance
-- ---------------------------------------------------------------------------
SET ROLE regress_apv_owner;
SELECT crmguard.create_approval_process('Big discount', 'public.regress_apv_deal',
    '{"field": "discount", "op": ">=", "value": 20}',
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}},
      {"name": "Finance", "approvers": {"role": "finance"}}]',
    on_approve => '[{"set": {"status": "Approved"}}, {"notify": {"channel": "email", "to": "submitter"}}]',
    on_reject => '[{"set": {"status": "Rejected"}}, {"task": {"assign_to": "owner_id", "subject": "Rework the discount"}}]',
    on_submit => '[{"set": {"status": "Pending approval"}}]',
    auto_submit => '{update}', editable_columns => '{notes}') > 0 AS created;
SELECT crmguard.create_approval_process('Any discount', 'public.regress_apv_deal',
    '{"field": "discount", "op": ">", "value": 0}',
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]') > 0 AS created;
RESET ROLE;
SELECT process_name, version, position, current FROM crmguard.approval_process ORDER BY id;

-- Luca gives Novak 25%: the update goes through, and the deal is submitted
SET ROLE regress_apv_luca;
UPDATE public.regress_apv_deal SET discount = 25 WHERE id = 1;
SELECT id, discount, status FROM public.regress_apv_deal WHERE id = 1;
SELECT id AS novak, process, row_key, state, current_step, submitted_by, approvers
  FROM crmguard.approval_request WHERE row_key = '1' \gset
SELECT :novak > 0 AS submitted, :'process' AS process, :'current_step' AS step, :'approvers' AS approvers;
-- the row is locked: no change but its editable columns, no delete
SELECT public.regress_try($$UPDATE public.regress_apv_deal SET discount = 40 WHERE id = 1$$) AS raise_discount;
UPDATE public.regress_apv_deal SET notes = 'customer asked twice' WHERE id = 1;
RESET ROLE;
SET ROLE regress_apv_owner;
SELECT public.regress_try($$UPDATE public.regress_apv_deal SET title = 'x' WHERE id = 1$$) AS owner_edits;
SELECT public.regress_try($$DELETE FROM public.regress_apv_deal WHERE id = 1$$) AS owner_deletes;
SELECT public.regress_try($$TRUNCATE public.regress_apv_deal$$) AS owner_truncates;
-- nor can the owner switch the lock off
SELECT public.regress_try($$ALTER TABLE public.regress_apv_deal DISABLE TRIGGER zz_crmguard_approval_lock$$) AS disable_lock;
RESET ROLE;
-- other rows are not locked
UPDATE public.regress_apv_deal SET title = 'Spare parts and labour, Ferri' WHERE id = 4;
-- the lock's WHEN clause tells which rows are pending only to roles that may change the table
CREATE ROLE regress_apv_reader;
GRANT SELECT ON public.regress_apv_deal TO regress_apv_reader;
SET ROLE regress_apv_reader;
SELECT crmguard.approval_row_pending('public.regress_apv_deal', 1) AS reader_learns;
RESET ROLE;
SET ROLE regress_apv_luca;
SELECT crmguard.approval_row_pending('public.regress_apv_deal', 1) AS updater_learns,
       crmguard.approval_row_pending('public.regress_apv_deal', 4) AS not_pending;
RESET ROLE;
-- Attack: UPDATE granted on one column only must still fire the lock
GRANT UPDATE (discount) ON public.regress_apv_deal TO regress_apv_reader;
SET ROLE regress_apv_reader;
SELECT public.regress_try($$UPDATE public.regress_apv_deal SET discount = 99 WHERE id = 1$$) AS column_privilege_update;
RESET ROLE;
DROP OWNED BY regress_apv_reader;
DROP ROLE regress_apv_reader;

-- Not an approver: the rep himself, someone else, whatever they set
SET ROLE regress_apv_luca;
SELECT public.regress_try(format('SELECT crmguard.approve(%s)', :novak)) AS submitter_approves;
RESET ROLE;
SET ROLE regress_apv_mallory;
SELECT public.regress_try($$SET crmguard.principal = 'apv_anna'$$) AS forge;
SELECT public.regress_try(format('SELECT crmguard.approve(%s)', :novak)) AS stranger_approves;
SELECT public.regress_try(format($$SELECT crmguard.reject(%s, 'no')$$, :novak)) AS stranger_rejects;
SELECT count(*) AS requests_mallory_sees FROM crmguard.approval_request;
SELECT count(*) AS waiting_for_mallory FROM crmguard.my_approvals();
RESET ROLE;

-- Anna approves the first step; finance is next, and either finance approver may decide
SET ROLE regress_apv_anna;
SELECT request, process, step, submitted_by FROM crmguard.my_approvals();
SELECT crmguard.approve(:novak, 'ok for a new customer');
SELECT public.regress_try(format('SELECT crmguard.approve(%s)', :novak)) AS anna_again;
RESET ROLE;
SET ROLE regress_apv_fabio;
SELECT request, step FROM crmguard.my_approvals();
SELECT crmguard.approve(:novak, 'within budget');
RESET ROLE;
SELECT id, discount, status, notes FROM public.regress_apv_deal WHERE id = 1;
SELECT channel, recipient, subject FROM crmguard.outbox WHERE subject LIKE 'Approval request%' ORDER BY id;
-- decided: the row is free again, and deciding again is refused
SET ROLE regress_apv_luca;
UPDATE public.regress_apv_deal SET title = 'Cold room and install, Novak' WHERE id = 1;
SELECT state, current_step, jsonb_path_query_array(history, '$[*].event') AS events,
       jsonb_path_query_array(history, '$[*].by') AS by
  FROM crmguard.approval_request WHERE id = :novak;
RESET ROLE;
SET ROLE regress_apv_franca;
SELECT public.regress_try(format('SELECT crmguard.approve(%s)', :novak)) AS after_decision;
RESET ROLE;

-- ---------------------------------------------------------------------------
-- A rejection with comment: the task goes to the deal's owner
-- ---------------------------------------------------------------------------
SET ROLE regress_apv_marco;
UPDATE public.regress_apv_deal SET discount = 30 WHERE id = 3;
RESET ROLE;
SELECT id AS bianchi FROM crmguard.approval_request_state WHERE row_key = '3' \gset
SET ROLE regress_apv_anna;
SELECT public.regress_try(format('SELECT crmguard.reject(%s, NULL)', :bianchi)) AS reject_without_comment;
SELECT crmguard.reject(:bianchi, '30% on a fleet deal needs a three-year contract');
RESET ROLE;
SELECT id, status FROM public.regress_apv_deal WHERE id = 3;
SELECT t.assigned_to = :marco_id AS to_marco, t.subject FROM crmguard.task t WHERE t.request = :bianchi;

-- ---------------------------------------------------------------------------
-- Submitted by hand, then recalled; no decision after a recall
-- ---------------------------------------------------------------------------
SET ROLE regress_apv_luca;
UPDATE public.regress_apv_deal SET discount = 10 WHERE id = 4;
-- (the key written another way names the same row, and the request holds its canonical key)
SELECT crmguard.submit_for_approval('public.regress_apv_deal', ' 04', 'small one') AS ferri \gset
SELECT process, row_key, state FROM crmguard.approval_request WHERE id = :ferri;
SELECT public.regress_try($$UPDATE public.regress_apv_deal SET discount = 11 WHERE id = 4$$) AS locked;
SELECT public.regress_try($$SELECT crmguard.submit_for_approval('public.regress_apv_deal', '4')$$) AS twice;
SELECT public.regress_try($$SELECT crmguard.submit_for_approval('public.regress_apv_deal', '99')$$) AS no_such_row;
SELECT public.regress_try($$SELECT crmguard.submit_for_approval(0, '4')$$) AS no_such_table;
RESET ROLE;
SET ROLE regress_apv_mallory;
SELECT public.regress_try(format('SELECT crmguard.recall(%s)', :ferri)) AS stranger_recalls;
RESET ROLE;
SET ROLE regress_apv_luca;
SELECT crmguard.recall(:ferri, 'customer changed his mind');
RESET ROLE;
SET ROLE regress_apv_anna;
SELECT public.regress_try(format('SELECT crmguard.approve(%s)', :ferri)) AS approve_after_recall;
RESET ROLE;

-- ---------------------------------------------------------------------------
-- A request whose row changed behind the lock cannot be approved
-- ---------------------------------------------------------------------------
SET ROLE regress_apv_luca;
UPDATE public.regress_apv_deal SET discount = 22 WHERE id = 5;
RESET ROLE;
SELECT id AS neri FROM crmguard.approval_request_state WHERE row_key = '5' \gset
SET session_replication_role = replica;     -- a superuser going around the triggers
UPDATE public.regress_apv_deal SET discount = 50 WHERE id = 5;
RESET session_replication_role;
SET ROLE regress_apv_anna;
SELECT public.regress_try(format('SELECT crmguard.approve(%s)', :neri)) AS row_changed;
RESET ROLE;
SELECT state FROM crmguard.approval_request_state WHERE id = :neri;

-- ---------------------------------------------------------------------------
-- Self-approval: Anna's own deal goes to her manager; a delegation does not
-- let her decide it either
-- ---------------------------------------------------------------------------
SET ROLE regress_apv_anna;
UPDATE public.regress_apv_deal SET discount = 20 WHERE id = 2;
RESET ROLE;
SELECT id AS rossi FROM crmguard.approval_request_state WHERE row_key = '2' \gset
SELECT approvers = ARRAY[:dora_id]::bigint[] AS dora_decides FROM crmguard.approval_request_state WHERE id = :rossi;
SET ROLE regress_apv_dora;
SELECT crmguard.delegate('apv_anna', now() + interval '1 day');
RESET ROLE;
SET ROLE regress_apv_anna;
SELECT request, on_behalf_of FROM crmguard.my_approvals();
SELECT public.regress_try(format('SELECT crmguard.approve(%s)', :rossi)) AS self_approval;
RESET ROLE;

-- ---------------------------------------------------------------------------
-- Delegation: Dora is away, Marco decides for her within the window only
-- ---------------------------------------------------------------------------
SET ROLE regress_apv_dora;
SELECT public.regress_try($$SELECT crmguard.delegate('apv_dora', now() + interval '1 day')$$) AS to_herself;
SELECT public.regress_try($$SELECT crmguard.delegate('apv_marco', now() - interval '1 day')$$) AS in_the_past;
SELECT crmguard.delegate('apv_marco', now() + interval '1 day');
RESET ROLE;
-- the window closes (simulated): Marco cannot act
UPDATE crmguard.delegation SET until = now() - interval '1 minute' WHERE to_principal = :marco_id;
SET ROLE regress_apv_marco;
SELECT public.regress_try(format('SELECT crmguard.approve(%s)', :rossi)) AS window_closed;
RESET ROLE;
UPDATE crmguard.delegation SET until = now() + interval '1 day' WHERE to_principal = :marco_id;
SET ROLE regress_apv_marco;
SELECT crmguard.approve(:rossi, 'approved for Dora');
RESET ROLE;
SELECT h.event, p.name AS by, b.name AS on_behalf_of FROM crmguard.approval_history h
  LEFT JOIN crmguard.principal p ON p.id = h.principal LEFT JOIN crmguard.principal b ON b.id = h.on_behalf_of
 WHERE h.request = :rossi ORDER BY h.id;

-- ---------------------------------------------------------------------------
-- An inactive approver escalates to its manager, never approves by itself;
-- a step timeout escalates
-- ---------------------------------------------------------------------------
SET ROLE regress_apv_luca;
UPDATE public.regress_apv_deal SET discount = 35 WHERE id = 6;
RESET ROLE;
SELECT id AS verdi FROM crmguard.approval_request_state WHERE row_key = '6' \gset
-- (in one transaction: the background worker runs run_due() too, and must not go first)
BEGIN;
UPDATE crmguard.principal SET active = false WHERE name = 'apv_anna';
SELECT crmguard.run_due() AS moved;
COMMIT;
SELECT state, approvers = ARRAY[:dora_id]::bigint[] AS dora_decides FROM crmguard.approval_request_state WHERE id = :verdi;
UPDATE crmguard.principal SET active = true WHERE name = 'apv_anna';

SET ROLE regress_apv_owner;
SELECT crmguard.create_approval_process('Big discount', 'public.regress_apv_deal',
    '{"field": "discount", "op": ">=", "value": 20}',
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}, "timeout": "2 days", "on_timeout": "escalate"}]',
    auto_submit => '{update}', editable_columns => '{notes}') > 0 AS new_version;
RESET ROLE;
SELECT process_name, version, position, current FROM crmguard.approval_process ORDER BY id;
-- the request in flight keeps its version: two steps, finance still to come
SET ROLE regress_apv_dora;
SELECT crmguard.approve(:verdi);
RESET ROLE;
SELECT state, current_step + 1 AS step FROM crmguard.approval_request_state WHERE id = :verdi;
-- a new request takes the new version: one step, with a clock
UPDATE public.regress_apv_deal SET discount = 0, status = 'Draft' WHERE id = 4;
SET ROLE regress_apv_luca;
UPDATE public.regress_apv_deal SET discount = 21 WHERE id = 4;
RESET ROLE;
SELECT id AS ferri2, step_timeout FROM crmguard.approval_request_state WHERE row_key = '4' AND state = 'pending' \gset
SELECT :'step_timeout' AS step_timeout;
SELECT crmguard.run_due() AS moved_before_the_timeout;
BEGIN;
UPDATE crmguard.approval_request_state SET step_started_at = now() - interval '3 days' WHERE id = :ferri2;
SELECT crmguard.run_due() AS moved_after_the_timeout;
COMMIT;
SELECT state, approvers = ARRAY[:dora_id]::bigint[] AS escalated_to_dora,
       (SELECT array_agg(event ORDER BY id) FROM crmguard.approval_history WHERE request = :ferri2) AS events
  FROM crmguard.approval_request_state WHERE id = :ferri2;

-- ---------------------------------------------------------------------------
-- The campaign: marketing head and finance must both approve; a failing
-- call action rolls the whole decision back
-- ---------------------------------------------------------------------------
CREATE TABLE public.regress_apv_campaign (id integer PRIMARY KEY, name text NOT NULL, budget numeric,
                                          status text NOT NULL DEFAULT 'Planned');
INSERT INTO public.regress_apv_campaign VALUES (1, 'Cold chain fair', 18000), (2, 'Fail', 5000);
ALTER TABLE public.regress_apv_campaign OWNER TO regress_apv_owner;
ALTER FUNCTION public.regress_apv_fail(bigint) OWNER TO regress_apv_owner;
GRANT SELECT, UPDATE ON public.regress_apv_campaign TO regress_apv_mara, regress_apv_franca, regress_apv_marco;
GRANT SELECT ON crmguard.approval_request TO regress_apv_owner;
SET ROLE regress_apv_owner;
SELECT crmguard.create_approval_process('Campaign', 'public.regress_apv_campaign', NULL,
    '[{"name": "Marketing and finance", "approvers": [{"role": "marketing"}, {"principal": "apv_franca"}], "mode": "all"}]',
    on_approve => '[{"set": {"status": "Active"}}, {"call": "public.regress_apv_fail"}]') > 0 AS created;
RESET ROLE;
SET ROLE regress_apv_marco;
SELECT crmguard.submit_for_approval('public.regress_apv_campaign', '1') AS fair \gset
SELECT crmguard.submit_for_approval('public.regress_apv_campaign', '2') AS failing \gset
RESET ROLE;
SET ROLE regress_apv_mara;
SELECT crmguard.approve(:fair);
SELECT crmguard.approve(:failing);
-- an "all" step: who approved it leaves the inbox, the others still see it
SELECT count(*) AS fair_in_maras_inbox FROM crmguard.my_approvals() WHERE request = :fair;
RESET ROLE;
SELECT state, cardinality(approvers) AS approvers, required FROM crmguard.approval_request_state WHERE id IN (:fair, :failing) ORDER BY id;
-- a DBA's change to the request rebuilds its inbox entries: still not Mara's
UPDATE crmguard.approval_request_state SET submitted_at = submitted_at - interval '1 minute' WHERE id = :fair;
SET ROLE regress_apv_mara;
SELECT count(*) AS fair_in_maras_inbox_after_rebuild FROM crmguard.my_approvals() WHERE request = :fair;
RESET ROLE;
-- a decision in a read-only transaction is refused at once (25006), as its
-- lock on the request would be a write
SET ROLE regress_apv_franca;
BEGIN READ ONLY;
SELECT crmguard.approve(:fair);
ROLLBACK;
SELECT count(*) AS fair_in_francas_inbox FROM crmguard.my_approvals() WHERE request = :fair;
SELECT crmguard.approve(:fair);
SELECT public.regress_try(format('SELECT crmguard.approve(%s)', :failing)) AS failing_call;
RESET ROLE;
SELECT c.id, c.status, r.state FROM public.regress_apv_campaign c
  JOIN crmguard.approval_request_state r ON r.row_key = c.id::text AND r.target = 'public.regress_apv_campaign'::regclass
 ORDER BY c.id;
SELECT count(*) AS franca_approvals_of_failing FROM crmguard.approval_history
 WHERE request = :failing AND event = 'approved' AND principal = (SELECT id FROM crmguard.principal WHERE name = 'apv_franca');

-- an approver who also stands in for another approver of an "all" step
-- approves twice: once as herself, once for the one away
INSERT INTO public.regress_apv_campaign VALUES (3, 'Spring mailing', 2000);
SET ROLE regress_apv_marco;
SELECT crmguard.submit_for_approval('public.regress_apv_campaign', '3') AS spring \gset
RESET ROLE;
SET ROLE regress_apv_mara;
SELECT crmguard.delegate('apv_franca', now() + interval '1 hour');
RESET ROLE;
SET ROLE regress_apv_franca;
SELECT crmguard.approve(:spring, 'for myself');
SELECT crmguard.approve(:spring, 'for Mara');
SELECT public.regress_try(format('SELECT crmguard.approve(%s)', :spring)) AS third_time;
RESET ROLE;
SELECT c.status, (SELECT array_agg(b.name ORDER BY h.id) FROM crmguard.approval_history h
                   LEFT JOIN crmguard.principal b ON b.id = h.on_behalf_of
                  WHERE h.request = :spring AND h.event = 'approved') AS on_behalf_of
  FROM public.regress_apv_campaign c WHERE c.id = 3;

-- every step is in the audit log, and the chain holds
SELECT action, count(*) FROM crmguard.audit WHERE action LIKE 'approval%' OR action LIKE '%approval_process' OR action LIKE 'delegat%'
 GROUP BY action ORDER BY action;
SELECT ok FROM crmguard.verify_audit();

-- Attack: a domain whose CHECK calls the owner's function, on a column that
-- criteria and a "set" action name. crmguard evaluates criteria as the
-- extension's owner; a domain literal there would run that function as a
-- superuser. Literals are of the base type: the function never runs as one.
CREATE TABLE public.regress_apv_seen (who name);
GRANT INSERT ON public.regress_apv_seen TO PUBLIC;
CREATE FUNCTION public.regress_apv_spy(v text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.regress_apv_seen VALUES (current_user); RETURN true; END $$;
ALTER FUNCTION public.regress_apv_spy(text) OWNER TO regress_apv_owner;
CREATE DOMAIN public.regress_apv_label AS text CHECK (public.regress_apv_spy(VALUE));
ALTER DOMAIN public.regress_apv_label OWNER TO regress_apv_owner;
CREATE TABLE public.regress_apv_tagged (id int PRIMARY KEY, label public.regress_apv_label, owner_id bigint);
INSERT INTO public.regress_apv_tagged VALUES (1, 'plain', :luca_id);
TRUNCATE public.regress_apv_seen;     -- that check was the superuser's own insert
ALTER TABLE public.regress_apv_tagged OWNER TO regress_apv_owner;
GRANT SELECT, UPDATE ON public.regress_apv_tagged TO regress_apv_luca;
SET ROLE regress_apv_owner;
SELECT crmguard.create_approval_process('Tagged', 'public.regress_apv_tagged',
    '{"any": [{"field": "label", "op": "=", "value": "hot"}, {"field": "label", "op": "in", "value": ["warm", "hot"]}]}',
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]',
    on_submit => '[{"set": {"label": "submitted"}}]', auto_submit => '{update}') > 0 AS created;
RESET ROLE;
SET ROLE regress_apv_luca;
UPDATE public.regress_apv_tagged SET label = 'hot' WHERE id = 1;
RESET ROLE;
SELECT label FROM public.regress_apv_tagged;
SELECT count(*) AS checks_run_as_a_superuser
  FROM public.regress_apv_seen s JOIN pg_roles r ON r.rolname = s.who WHERE r.rolsuper;
SELECT count(*) > 0 AS checks_run_as_their_owner_or_caller FROM public.regress_apv_seen;
DROP TABLE public.regress_apv_tagged, public.regress_apv_seen;
DROP DOMAIN public.regress_apv_label;
DROP FUNCTION public.regress_apv_spy(text);

-- ---------------------------------------------------------------------------
-- A step whose only approver is the submitter: the submitter is left out of
-- the step's approvers (and of the "approvers" notifications), and the step
-- goes to the submitter's nearest active manager, who can approve it
-- ---------------------------------------------------------------------------
CREATE TABLE public.regress_apv_budget (id int PRIMARY KEY, amount int NOT NULL, status text NOT NULL DEFAULT 'Draft');
INSERT INTO public.regress_apv_budget VALUES (1, 0);
ALTER TABLE public.regress_apv_budget OWNER TO regress_apv_owner;
GRANT SELECT, UPDATE ON public.regress_apv_budget TO regress_apv_marco, regress_apv_anna, regress_apv_dora;
SET ROLE regress_apv_owner;
SELECT crmguard.create_approval_process('Marco''s budget', 'public.regress_apv_budget',
    '{"field": "amount", "op": ">", "value": 1000}',
    '[{"name": "Budget holder", "approvers": {"principal": "apv_marco"}}]',
    on_approve => '[{"set": {"status": "Approved"}}]',
    on_submit => '[{"notify": {"channel": "email", "to": "approvers", "subject": "A budget waits for you"}}]',
    auto_submit => '{update}') > 0 AS created;
RESET ROLE;
-- Marco submits while Anna, his manager, is away (inactive): Dora, above her, decides
BEGIN;
UPDATE crmguard.principal SET active = false WHERE name = 'apv_anna';
SET ROLE regress_apv_marco;
UPDATE public.regress_apv_budget SET amount = 5000 WHERE id = 1;
RESET ROLE;
UPDATE crmguard.principal SET active = true WHERE name = 'apv_anna';
COMMIT;
SELECT id AS budget FROM crmguard.approval_request_state WHERE target = 'public.regress_apv_budget'::regclass \gset
SELECT approvers = ARRAY[:dora_id]::bigint[] AS active_manager_decides, NOT :marco_id = ANY (approvers) AS submitter_left_out
  FROM crmguard.approval_request_state WHERE id = :budget;
SELECT recipient FROM crmguard.outbox WHERE subject = 'A budget waits for you' ORDER BY id;
SET ROLE regress_apv_marco;
SELECT public.regress_try(format('SELECT crmguard.approve(%s)', :budget)) AS submitter_approves;
RESET ROLE;
SET ROLE regress_apv_anna;
SELECT public.regress_try(format('SELECT crmguard.approve(%s)', :budget)) AS not_an_approver;
RESET ROLE;
SET ROLE regress_apv_dora;
SELECT crmguard.approve(:budget, 'fine');
RESET ROLE;
SELECT status FROM public.regress_apv_budget WHERE id = 1;
SELECT state FROM crmguard.approval_request_state WHERE id = :budget;
DELETE FROM crmguard.outbox WHERE subject = 'A budget waits for you';
DROP TABLE public.regress_apv_budget;

-- ---------------------------------------------------------------------------
-- The row a request stores is compared with the row the approver's session
-- reads: the same whatever either session's output settings (a rep in
-- another time zone, with another IntervalStyle, float digits or bytea
-- output, submits; a manager with the defaults approves)
-- ---------------------------------------------------------------------------
CREATE TABLE public.regress_apv_visit (id int PRIMARY KEY, owner_id bigint NOT NULL, discount int NOT NULL,
    due timestamptz NOT NULL, span interval NOT NULL, rate float8 NOT NULL, photo bytea NOT NULL,
    window_ tstzrange NOT NULL, fee money NOT NULL, status text NOT NULL DEFAULT 'Draft');
INSERT INTO public.regress_apv_visit VALUES (1, :luca_id, 0, '2031-03-04 05:06:07+00', '1 year 2 days 03:04:05',
    0.1::float8 + 0.2::float8, '\x00ff', '[2031-03-04 05:00+00,2031-03-04 06:00+00)', 12.5);
ALTER TABLE public.regress_apv_visit OWNER TO regress_apv_owner;
GRANT SELECT, UPDATE ON public.regress_apv_visit TO regress_apv_luca, regress_apv_anna;
SET ROLE regress_apv_owner;
SELECT crmguard.create_approval_process('Visit discount', 'public.regress_apv_visit',
    '{"field": "discount", "op": ">=", "value": 20}',
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]',
    on_approve => '[{"set": {"status": "Approved"}}]', auto_submit => '{update}') > 0 AS created;
RESET ROLE;
BEGIN;
SET LOCAL ROLE regress_apv_luca;
SET LOCAL TimeZone = 'Asia/Kolkata';
SET LOCAL IntervalStyle = 'iso_8601';
SET LOCAL DateStyle = 'SQL, DMY';
SET LOCAL extra_float_digits = 0;
SET LOCAL bytea_output = 'escape';
UPDATE public.regress_apv_visit SET discount = 25 WHERE id = 1;
COMMIT;
SELECT id AS visit FROM crmguard.approval_request_state WHERE target = 'public.regress_apv_visit'::regclass \gset
SELECT row_data->>'due' AS due, row_data->>'span' AS span, row_data->>'rate' AS rate, row_data->>'photo' AS photo
  FROM crmguard.approval_request_state WHERE id = :visit;
SET ROLE regress_apv_anna;
SELECT public.regress_try(format('SELECT crmguard.approve(%s)', :visit)) AS approved_in_another_session;
RESET ROLE;
SELECT status FROM public.regress_apv_visit WHERE id = 1;
DROP TABLE public.regress_apv_visit;

-- history lines are appended without a statement (as to a system catalog):
-- a comment too long for a page is stored out of line and reads back whole,
-- the deciding transaction sees its line at once, and an INSERT trigger
-- added by hand would not fire, so it is refused rather than skipped
SET ROLE regress_apv_marco;
UPDATE public.regress_apv_deal SET discount = 35 WHERE id = 3;
SELECT crmguard.submit_for_approval('public.regress_apv_deal', '3') AS bianchi2 \gset
RESET ROLE;
BEGIN;
SET LOCAL ROLE regress_apv_anna;
SELECT crmguard.reject(:bianchi2, repeat('a fleet deal needs a three-year contract; ', 5000));
SELECT jsonb_path_query_array(history, '$[*].event') AS events FROM crmguard.approval_request WHERE id = :bianchi2;
RESET ROLE;
SELECT event, length(comment) AS comment_length, principal = :anna_id AS by_anna
  FROM crmguard.approval_history WHERE request = :bianchi2 ORDER BY id;
COMMIT;
CREATE FUNCTION public.regress_apv_forward() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
CREATE TRIGGER forward AFTER INSERT ON crmguard.approval_history
    FOR EACH ROW EXECUTE FUNCTION public.regress_apv_forward();
SET ROLE regress_apv_marco;
SELECT public.regress_try($$SELECT crmguard.submit_for_approval('public.regress_apv_deal', '3')$$) AS history_with_a_trigger;
RESET ROLE;
DROP TRIGGER forward ON crmguard.approval_history;
-- crmguard's own trigger on the history is known by its function, not its name
DROP TRIGGER approval_history_waiting ON crmguard.approval_history;
CREATE TRIGGER approval_history_waiting AFTER INSERT ON crmguard.approval_history
    FOR EACH ROW EXECUTE FUNCTION public.regress_apv_forward();
SET ROLE regress_apv_marco;
SELECT public.regress_try($$SELECT crmguard.submit_for_approval('public.regress_apv_deal', '3')$$) AS history_with_a_trigger_of_that_name;
RESET ROLE;
DROP TRIGGER approval_history_waiting ON crmguard.approval_history;
CREATE TRIGGER approval_history_waiting AFTER INSERT ON crmguard.approval_history
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION crmguard.approval_history_added();
-- a submit stores the row it saw without a statement: an UPDATE trigger on
-- the requests that such a statement would fire (no column list, or one
-- naming row_data) is refused; one on other columns would not fire
CREATE TRIGGER forward AFTER UPDATE ON crmguard.approval_request_state
    FOR EACH ROW EXECUTE FUNCTION public.regress_apv_forward();
SET ROLE regress_apv_marco;
SELECT public.regress_try($$SELECT crmguard.submit_for_approval('public.regress_apv_deal', '3')$$) AS requests_with_an_update_trigger;
RESET ROLE;
DROP TRIGGER forward ON crmguard.approval_request_state;
CREATE TRIGGER forward AFTER UPDATE OF row_data ON crmguard.approval_request_state
    FOR EACH ROW EXECUTE FUNCTION public.regress_apv_forward();
SET ROLE regress_apv_marco;
SELECT public.regress_try($$SELECT crmguard.submit_for_approval('public.regress_apv_deal', '3')$$) AS requests_with_a_row_data_trigger;
RESET ROLE;
DROP TRIGGER forward ON crmguard.approval_request_state;
CREATE TRIGGER forward AFTER UPDATE OF decided_at ON crmguard.approval_request_state
    FOR EACH ROW EXECUTE FUNCTION public.regress_apv_forward();
BEGIN;
SET LOCAL ROLE regress_apv_marco;
SELECT public.regress_try($$SELECT crmguard.submit_for_approval('public.regress_apv_deal', '3')$$) AS requests_with_a_decided_at_trigger;
ROLLBACK;
DROP TRIGGER forward ON crmguard.approval_request_state;
-- a submit stores the request itself without a statement: an INSERT trigger
-- on the requests is refused, not skipped
CREATE TRIGGER forward AFTER INSERT ON crmguard.approval_request_state
    FOR EACH ROW EXECUTE FUNCTION public.regress_apv_forward();
SET ROLE regress_apv_marco;
SELECT public.regress_try($$SELECT crmguard.submit_for_approval('public.regress_apv_deal', '3')$$) AS requests_with_an_insert_trigger;
RESET ROLE;
DROP TRIGGER forward ON crmguard.approval_request_state;
-- crmguard's own trigger on the requests (its work is run by the writes
-- themselves) is known by its function, not its name
DROP TRIGGER approval_request_cache_invalidate ON crmguard.approval_request_state;
CREATE TRIGGER approval_request_cache_invalidate
    AFTER INSERT OR UPDATE OF state, row_key, target, process, approvers, current_step,
                           submitted_by, submitted_at OR DELETE
    ON crmguard.approval_request_state
    FOR EACH ROW EXECUTE FUNCTION public.regress_apv_forward();
SET ROLE regress_apv_marco;
SELECT public.regress_try($$SELECT crmguard.submit_for_approval('public.regress_apv_deal', '3')$$) AS requests_with_a_trigger_of_that_name;
RESET ROLE;
-- and by its kind: the same function with a WHEN clause is not crmguard's
DROP TRIGGER approval_request_cache_invalidate ON crmguard.approval_request_state;
CREATE TRIGGER approval_request_cache_invalidate
    AFTER INSERT OR UPDATE OF state, row_key, target, process, approvers, current_step,
                           submitted_by, submitted_at OR DELETE
    ON crmguard.approval_request_state
    FOR EACH ROW WHEN (pg_catalog.pi() > 3) EXECUTE FUNCTION crmguard.approval_requests_changed();
SET ROLE regress_apv_marco;
SELECT public.regress_try($$SELECT crmguard.submit_for_approval('public.regress_apv_deal', '3')$$) AS requests_trigger_with_a_when;
RESET ROLE;
DROP TRIGGER approval_request_cache_invalidate ON crmguard.approval_request_state;
CREATE TRIGGER approval_request_cache_invalidate
    AFTER INSERT OR UPDATE OF state, row_key, target, process, approvers, current_step,
                           submitted_by, submitted_at OR DELETE
    ON crmguard.approval_request_state
    FOR EACH ROW EXECUTE FUNCTION crmguard.approval_requests_changed();
-- and by what its function is: given another C symbol (by a superuser, after
-- this session's writes knew the old one) it is not crmguard's trigger
BEGIN;
CREATE OR REPLACE FUNCTION crmguard.approval_requests_changed() RETURNS trigger
    LANGUAGE c AS '$libdir/crmguard', 'crmguard_rules_changed';
SET LOCAL ROLE regress_apv_marco;
SELECT public.regress_try($$SELECT crmguard.submit_for_approval('public.regress_apv_deal', '3')$$) AS requests_trigger_of_another_symbol;
ROLLBACK;
-- nor as a deferred constraint trigger, whose work would wait for the commit
BEGIN;
DROP TRIGGER approval_request_cache_invalidate ON crmguard.approval_request_state;
CREATE CONSTRAINT TRIGGER approval_request_cache_invalidate
    AFTER INSERT OR UPDATE OF state, row_key, target, process, approvers, current_step,
                           submitted_by, submitted_at OR DELETE
    ON crmguard.approval_request_state DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION crmguard.approval_requests_changed();
SET LOCAL ROLE regress_apv_marco;
SELECT public.regress_try($$SELECT crmguard.submit_for_approval('public.regress_apv_deal', '3')$$) AS requests_deferred_trigger;
ROLLBACK;
-- its work is run when the trigger would fire: not while a superuser has
-- it disabled, as a statement's write would not fire it
BEGIN;
ALTER TABLE crmguard.approval_request_state DISABLE TRIGGER approval_request_cache_invalidate;
SET LOCAL ROLE regress_apv_marco;
SELECT crmguard.submit_for_approval('public.regress_apv_deal', '3') AS unlisted \gset
RESET ROLE;
SELECT count(*) AS waits_while_disabled FROM crmguard.approval_waiting WHERE request = :unlisted;
ROLLBACK;
-- a foreign key of another table on a key of the requests that a decision
-- sets: its action would run for a statement, so the decision is refused
BEGIN;
ALTER TABLE crmguard.approval_request_state ADD CONSTRAINT regress_id_state UNIQUE (id, state);
CREATE TABLE public.regress_apv_follow (request bigint, state text,
    FOREIGN KEY (request, state) REFERENCES crmguard.approval_request_state (id, state) ON UPDATE CASCADE);
SET LOCAL ROLE regress_apv_marco;
SELECT crmguard.submit_for_approval('public.regress_apv_deal', '3') AS followed \gset
RESET ROLE;
INSERT INTO public.regress_apv_follow VALUES (:followed, 'pending');
SET LOCAL ROLE regress_apv_anna;
SELECT public.regress_try(format('SELECT crmguard.reject(%s, %L)', :followed, 'no')) AS requests_referred_to;
RESET ROLE;
SELECT state FROM public.regress_apv_follow;
ROLLBACK;
-- a deferred foreign key is checked again for a row the transaction
-- inserted, whatever the update sets: refused, not skipped
ALTER TABLE crmguard.approval_request_state ADD CONSTRAINT regress_submitter_fkey
    FOREIGN KEY (submitted_by) REFERENCES crmguard.principal (id) DEFERRABLE INITIALLY DEFERRED;
SET ROLE regress_apv_marco;
SELECT public.regress_try($$SELECT crmguard.submit_for_approval('public.regress_apv_deal', '3')$$) AS requests_with_a_deferred_key;
RESET ROLE;
ALTER TABLE crmguard.approval_request_state DROP CONSTRAINT regress_submitter_fkey;
-- the history's own trigger is accepted only as crmguard made it: the same
-- function, for each row, is refused
DROP TRIGGER approval_history_waiting ON crmguard.approval_history;
CREATE TRIGGER approval_history_waiting AFTER INSERT ON crmguard.approval_history
    FOR EACH ROW EXECUTE FUNCTION crmguard.approval_history_added();
SET ROLE regress_apv_marco;
SELECT public.regress_try($$SELECT crmguard.submit_for_approval('public.regress_apv_deal', '3')$$) AS history_with_a_row_trigger_of_ours;
RESET ROLE;
DROP TRIGGER approval_history_waiting ON crmguard.approval_history;
CREATE TRIGGER approval_history_waiting AFTER INSERT ON crmguard.approval_history
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION crmguard.approval_history_added();
DROP FUNCTION public.regress_apv_forward();

-- an inbox shows what the waiting list carries of each request: a change
-- to a pending request (here by a DBA) shows at once, and emptying the
-- request table empties every inbox
SET ROLE regress_apv_marco;
UPDATE public.regress_apv_deal SET discount = 36 WHERE id = 3;
SELECT crmguard.submit_for_approval('public.regress_apv_deal', '3') AS bianchi3 \gset
RESET ROLE;
UPDATE crmguard.approval_request_state SET submitted_at = '2020-01-02 03:04:05+00' WHERE id = :bianchi3;
BEGIN;
SET LOCAL ROLE regress_apv_anna;
SELECT row_key, step, submitted_by, submitted_at AT TIME ZONE 'UTC' AS submitted_at
  FROM crmguard.my_approvals() WHERE request = :bianchi3;
RESET ROLE;
TRUNCATE crmguard.approval_request_state CASCADE;
SET LOCAL ROLE regress_apv_anna;
SELECT count(*) AS inbox_after_truncate FROM crmguard.my_approvals();
ROLLBACK;
SET ROLE regress_apv_anna;
SELECT crmguard.reject(:bianchi3, 'not now');
RESET ROLE;

-- a column a process names cannot be renamed away
SET ROLE regress_apv_owner;
SELECT public.regress_try($$ALTER TABLE public.regress_apv_deal RENAME COLUMN discount TO rebate$$) AS rename_criteria_column;
SELECT crmguard.drop_approval_process('Any discount');
SELECT public.regress_try($$SELECT crmguard.drop_approval_process('Any discount')$$) AS dropped_twice;
RESET ROLE;

DROP TABLE public.regress_apv_deal, public.regress_apv_campaign;
SELECT count(*) AS processes_left, (SELECT count(*) FROM crmguard.approval_request_state) AS requests_left
  FROM crmguard.approval_process;
DELETE FROM crmguard.delegation;
DELETE FROM crmguard.task;
DELETE FROM crmguard.outbox WHERE subject LIKE 'Approval request%';
DELETE FROM crmguard.principal WHERE name LIKE 'apv\_%';
DROP FUNCTION public.regress_try(text), public.regress_apv_fail(bigint);
DROP OWNED BY regress_apv_owner, regress_apv_dora, regress_apv_anna, regress_apv_luca, regress_apv_marco,
              regress_apv_franca, regress_apv_fabio, regress_apv_mara, regress_apv_mallory;
DROP ROLE regress_apv_owner, regress_apv_dora, regress_apv_anna, regress_apv_luca, regress_apv_marco,
          regress_apv_franca, regress_apv_fabio, regress_apv_mara, regress_apv_mallory;
