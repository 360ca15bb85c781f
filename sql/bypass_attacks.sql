--
-- Ways around the approval lock and the review gate, tried as the people
-- they stop: an app role that reaches the table only through a view, a rule
-- or a definer function, a stranger probing which rows are pending, and a
-- session that maps to no principal at all ("nobody" is never exempt).
--
\set VERBOSITY default
SET client_min_messages = warning;
CREATE OR REPLACE FUNCTION public.regress_try(query text) RETURNS text
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE query;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
GRANT EXECUTE ON FUNCTION public.regress_try(text) TO PUBLIC;
-- request ids depend on what ran before: print them as N
CREATE FUNCTION public.regress_by_try(query text) RETURNS text LANGUAGE sql
    AS $$ SELECT regexp_replace(public.regress_try(query), 'request [0-9]+', 'request N') $$;
GRANT EXECUTE ON FUNCTION public.regress_by_try(text) TO PUBLIC;

CREATE ROLE regress_by_owner;
CREATE ROLE regress_by_api;         -- the application: only the view
CREATE ROLE regress_by_boss;
CREATE ROLE regress_by_stranger;    -- no grant on anything
CREATE ROLE regress_by_group;       -- a group role that maps to no principal
CREATE ROLE regress_by_rep IN ROLE regress_by_group;
GRANT USAGE ON SCHEMA public TO regress_by_owner;
GRANT CREATE ON SCHEMA public TO regress_by_owner;
GRANT EXECUTE ON FUNCTION crmguard.create_approval_process(text, regclass, jsonb, jsonb, jsonb, jsonb, jsonb, text[], name[]),
      crmguard.enable_review(regclass, text, name[], text[]) TO regress_by_owner;
SELECT crmguard.add_principal('by_boss', '{manager,reviewer}', db_role => 'regress_by_boss') > 0 AS boss;
SELECT crmguard.add_principal('by_api', '{agent}', 'by_boss', db_role => 'regress_by_api') > 0 AS api;
SELECT crmguard.add_principal('by_rep', '{agent}', 'by_boss', db_role => 'regress_by_rep') > 0 AS rep;
SELECT id AS api_id FROM crmguard.principal WHERE name = 'by_api' \gset

SET ROLE regress_by_owner;
CREATE TABLE public.regress_by_deal (id integer PRIMARY KEY, owner_id bigint, discount numeric NOT NULL DEFAULT 0);
INSERT INTO public.regress_by_deal VALUES (1, :api_id, 0), (2, :api_id, 0), (3, :api_id, 0), (4, :api_id, 0);
SELECT crmguard.create_approval_process('by_discount', 'public.regress_by_deal',
    '{"field": "discount", "op": ">", "value": 0}',
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]', auto_submit => '{update}') > 0 AS process;
-- the application reaches the table through a view, a rule and a definer function only
CREATE VIEW public.regress_by_deal_api AS SELECT * FROM public.regress_by_deal;
CREATE VIEW public.regress_by_deal_ruled AS SELECT id, discount FROM public.regress_by_deal;
CREATE RULE regress_by_upd AS ON UPDATE TO public.regress_by_deal_ruled DO INSTEAD
    UPDATE public.regress_by_deal SET discount = NEW.discount WHERE id = OLD.id;
CREATE FUNCTION public.regress_by_set_discount(deal integer, pct numeric) RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$ UPDATE public.regress_by_deal SET discount = pct WHERE id = deal $$;
GRANT SELECT, UPDATE, DELETE ON public.regress_by_deal_api, public.regress_by_deal_ruled TO regress_by_api;
GRANT EXECUTE ON FUNCTION public.regress_by_set_discount(integer, numeric) TO regress_by_api;
GRANT SELECT, UPDATE ON public.regress_by_deal TO regress_by_group;
RESET ROLE;

-- the app puts deal 1 up for approval (auto-submitted), through the view
SET ROLE regress_by_api;
SELECT public.regress_try($$UPDATE public.regress_by_deal SET discount = 1 WHERE id = 1$$) AS no_direct_grant;
UPDATE public.regress_by_deal_api SET discount = 10 WHERE id = 1;
SELECT row_key, state FROM crmguard.approval_request ORDER BY id;

-- ---------------------------------------------------------------------------
-- Attack: change or delete a pending row through a view
-- ---------------------------------------------------------------------------
SELECT public.regress_by_try($$UPDATE public.regress_by_deal_api SET discount = 50 WHERE id = 1$$) AS update_through_view;
SELECT public.regress_by_try($$DELETE FROM public.regress_by_deal_api WHERE id = 1$$) AS delete_through_view;
-- Attack: the same through a rule, and through the owner's definer function
SELECT public.regress_by_try($$UPDATE public.regress_by_deal_ruled SET discount = 50 WHERE id = 1$$) AS update_through_rule;
SELECT public.regress_by_try($$SELECT public.regress_by_set_discount(1, 50)$$) AS update_through_definer_function;
-- Attack: a change that failed inside a savepoint leaves the probe answering afterwards
BEGIN;
SAVEPOINT s;
SELECT public.regress_try($$UPDATE public.regress_by_deal_api SET discount = 1 / 0 WHERE id = 2$$) AS failed_update;
ROLLBACK TO s;
SELECT crmguard.approval_row_pending('public.regress_by_deal', 1) AS probe_after_failed_change;
COMMIT;
-- other rows stay editable
UPDATE public.regress_by_deal_api SET discount = 0 WHERE id = 2;
RESET ROLE;
SELECT id, discount FROM public.regress_by_deal ORDER BY id;

-- ---------------------------------------------------------------------------
-- Attack: a stranger probes which keys are pending; it learns nothing
-- ---------------------------------------------------------------------------
SET ROLE regress_by_stranger;
SELECT crmguard.approval_row_pending('public.regress_by_deal', 1) AS stranger_probe_pending,
       crmguard.approval_row_pending('public.regress_by_deal', 3) AS stranger_probe_free;
RESET ROLE;
SET ROLE regress_by_api;
SELECT crmguard.approval_row_pending('public.regress_by_deal', 1) AS view_user_outside_a_change;
RESET ROLE;

-- ---------------------------------------------------------------------------
-- Attack: nobody is exempt.  A group role maps to no principal.
-- ---------------------------------------------------------------------------
SET ROLE regress_by_group;
SELECT crmguard.current_principal() IS NULL AS nobody;
SELECT public.regress_by_try($$UPDATE public.regress_by_deal SET discount = 70 WHERE id = 1$$) AS nobody_changes_pending_row;
RESET ROLE;
SET ROLE regress_by_owner;
CREATE TABLE public.regress_by_lead (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, company text);
SELECT crmguard.enable_review('public.regress_by_lead', 'reviewer', exempt => '{agent}') AS review;
GRANT SELECT, INSERT ON public.regress_by_lead TO regress_by_group, regress_by_api;
RESET ROLE;
-- an agent is exempt; the same person as nobody is not
SET ROLE regress_by_api;
INSERT INTO public.regress_by_lead (company) VALUES ('Agent lead');
RESET ROLE;
SET ROLE regress_by_group;
INSERT INTO public.regress_by_lead (company) VALUES ('Nobody lead');
RESET ROLE;
SELECT company FROM public.regress_by_lead ORDER BY id;
SELECT row_data->>'company' AS drafted, submitted_by FROM crmguard.draft_state d
  LEFT JOIN crmguard.principal p ON p.id = d.submitted_by
 WHERE target = 'public.regress_by_lead'::regclass;

RESET ROLE;
SELECT crmguard.drop_approval_process('by_discount');
SELECT crmguard.disable_review('public.regress_by_lead');
DROP TABLE public.regress_by_lead;
DROP FUNCTION public.regress_by_set_discount(integer, numeric);
DROP FUNCTION public.regress_by_try(text);
DROP VIEW public.regress_by_deal_api, public.regress_by_deal_ruled;
DROP TABLE public.regress_by_deal;
DROP OWNED BY regress_by_owner, regress_by_api, regress_by_boss, regress_by_stranger, regress_by_group, regress_by_rep;
DROP ROLE regress_by_owner, regress_by_api, regress_by_boss, regress_by_stranger, regress_by_rep, regress_by_group;
