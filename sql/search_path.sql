--
-- search_path planting: objects an attacker puts in public are never called
--
CREATE TABLE public.regress_planted_calls (what text);
GRANT INSERT ON public.regress_planted_calls TO PUBLIC;

-- shadows of functions and operators crmguard's SQL uses
CREATE FUNCTION public.jsonb_typeof(jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.regress_planted_calls VALUES ('jsonb_typeof'); RETURN 'object'; END $$;
CREATE FUNCTION public.nextval(regclass) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.regress_planted_calls VALUES ('nextval'); RETURN 1; END $$;
CREATE FUNCTION public.regress_eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.regress_planted_calls VALUES ('= on text'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.regress_eq);
CREATE FUNCTION public.regress_eq8(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.regress_planted_calls VALUES ('= on bigint'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR public.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.regress_eq8);
-- a table named like crmguard's, in a schema searched first
CREATE TABLE public.principal (id bigint, name text);
CREATE TABLE public.audit (id bigint);

-- the planted objects are live for this session's own queries
SET search_path = public, pg_catalog;
SELECT 'a'::text = 'a'::text AS planted_operator_works;
SELECT count(*) AS planted_calls FROM public.regress_planted_calls;
TRUNCATE public.regress_planted_calls;

-- ... but crmguard never calls them
SELECT crmguard.add_principal('planted_check', '{agent}', 'dora', '{"zone": "X"}') > 0 AS added;
SELECT crmguard.issue_token('planted_check') AS planted_token \gset
SELECT crmguard.assume(:'planted_token', false) > 0 AS assumed;
SELECT crmguard.current_principal() > 0 AS identified, crmguard.has_role('agent'),
       crmguard.attr('zone'), cardinality(crmguard.team()) AS team_size;
SELECT crmguard.assume(NULL);
UPDATE crmguard.principal
   SET manager_id = (SELECT id FROM crmguard.principal WHERE name OPERATOR(pg_catalog.=) 'anna')
 WHERE name OPERATOR(pg_catalog.=) 'planted_check';
SELECT crmguard.audit_event('planted_check');
SELECT ok FROM crmguard.verify_audit();
SELECT count(*) AS planted_calls FROM public.regress_planted_calls;

RESET search_path;
DROP TABLE public.principal, public.audit, public.regress_planted_calls;
DROP OPERATOR public.= (text, text);
DROP OPERATOR public.= (bigint, bigint);
DROP FUNCTION public.jsonb_typeof(jsonb), public.nextval(regclass),
              public.regress_eq(text, text), public.regress_eq8(bigint, bigint);
