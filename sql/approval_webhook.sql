-- Zoho's webhook action: after a decision, a JSON document about the request,
-- the decision and the row is queued in the outbox in the decision's
-- transaction, for the relay's http channel of that name.
CREATE ROLE regress_hook_owner;
CREATE ROLE regress_hook_boss;
CREATE ROLE regress_hook_agent;
GRANT USAGE ON SCHEMA public TO regress_hook_owner;
GRANT EXECUTE ON FUNCTION crmguard.create_approval_process(text, regclass, jsonb, jsonb, jsonb, jsonb, jsonb, text[], name[])
      TO regress_hook_owner;
SELECT crmguard.add_principal('hook_boss', '{area_manager}', db_role => 'regress_hook_boss') > 0 AS boss;
SELECT crmguard.add_principal('hook_agent', '{agent}', 'hook_boss', db_role => 'regress_hook_agent') > 0 AS agent;
SELECT id AS agent_id FROM crmguard.principal WHERE name = 'hook_agent' \gset
CREATE TABLE public.regress_hook_deal (
    id       integer PRIMARY KEY,
    title    text NOT NULL,
    owner_id bigint NOT NULL,
    discount numeric NOT NULL DEFAULT 0,
    status   text NOT NULL DEFAULT 'Draft'
);
INSERT INTO public.regress_hook_deal VALUES (1, 'Cold room "Nord"', :agent_id, 25, 'Draft');
ALTER TABLE public.regress_hook_deal OWNER TO regress_hook_owner;
GRANT SELECT, UPDATE ON public.regress_hook_deal TO regress_hook_boss, regress_hook_agent;

CREATE FUNCTION public.regress_hook_try(query text) RETURNS text
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE query;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
GRANT EXECUTE ON FUNCTION public.regress_hook_try(text) TO PUBLIC;

SET ROLE regress_hook_owner;
-- refused at creation (CG020): no channel, a channel that is no name, unknown keys
SELECT public.regress_hook_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_hook_deal', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]', '[{"webhook": {"body": {"x": 1}}}]')$$);
SELECT public.regress_hook_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_hook_deal', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]', '[{"webhook": {"channel": "crm hooks; DROP"}}]')$$);
SELECT public.regress_hook_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_hook_deal', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]', '[{"webhook": {"channel": "crm_hooks", "url": "http://x"}}]')$$);
SELECT public.regress_hook_try($$SELECT crmguard.create_approval_process('bad', 'public.regress_hook_deal', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]', '[{"webhook": "crm_hooks"}]')$$);
SELECT crmguard.create_approval_process('Discounts', 'public.regress_hook_deal', NULL,
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]',
    on_approve => '[{"set": {"status": "Approved"}}, {"webhook": {"channel": "crm_hooks", "body": {"event": "deal.approved", "source": "crmguard"}}}]',
    on_reject => '[{"webhook": {"channel": "crm_hooks"}}]') > 0 AS created;
RESET ROLE;

SET ROLE regress_hook_agent;
SELECT crmguard.submit_for_approval('public.regress_hook_deal', '1', 'please') AS request \gset
RESET ROLE;
SELECT count(*) AS hooks_before_the_decision FROM crmguard.outbox WHERE channel = 'crm_hooks';
-- a decision that rolls back queues nothing
SET ROLE regress_hook_boss;
BEGIN;
SELECT crmguard.approve(:request, 'fine');
ROLLBACK;
RESET ROLE;
SELECT count(*) AS hooks_after_rollback FROM crmguard.outbox WHERE channel = 'crm_hooks';
SET ROLE regress_hook_boss;
SELECT crmguard.approve(:request, 'fine');
RESET ROLE;
SELECT recipient, subject = format('Approval request %s approved', :request) AS subject_names_it, state,
       body::jsonb - 'at' - 'request' #- '{row,owner_id}' AS document,
       (body::jsonb ->> 'request')::bigint = :request AS names_the_request,
       (body::jsonb ->> 'at') IS NOT NULL AS has_time
  FROM crmguard.outbox WHERE channel = 'crm_hooks';

-- a rejection, with no body of its own
UPDATE public.regress_hook_deal SET status = 'Draft' WHERE id = 1;
SET ROLE regress_hook_agent;
SELECT crmguard.submit_for_approval('public.regress_hook_deal', '1') AS request2 \gset
RESET ROLE;
SET ROLE regress_hook_boss;
SELECT crmguard.reject(:request2, 'too much');
RESET ROLE;
SELECT body::jsonb ->> 'state' AS state, body::jsonb -> 'body' AS body, body::jsonb #>> '{row,status}' AS row_status
  FROM crmguard.outbox WHERE channel = 'crm_hooks' ORDER BY id DESC LIMIT 1;

DELETE FROM crmguard.outbox WHERE channel = 'crm_hooks';
DROP FUNCTION public.regress_hook_try(text);
