#!/bin/bash
# Identity: the cost of current_principal()/has_role()/team() in a query, of
# team() for a manager above a 10,000-principal tree, of assume() per pooled
# transaction; audit append rate.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/summary.sh
psql -X -q -v ON_ERROR_STOP=1 <<'SQL'
CREATE EXTENSION crmguard;
\i bench/lib.sql
-- a 10,000-principal tree: 1 director, 20 managers, 9,979 agents
CREATE ROLE bench_director; CREATE ROLE bench_agent;
SELECT crmguard.add_principal('director', '{director}', db_role => 'bench_director');
INSERT INTO crmguard.principal (name, roles, manager_id)
SELECT 'manager' || i, '{area_manager}', 1 FROM generate_series(1, 20) i;
INSERT INTO crmguard.principal (name, roles, manager_id, attributes)
SELECT 'agent' || i, '{agent}', 2 + i % 20, jsonb_build_object('zone', 'z' || i % 50)
  FROM generate_series(1, 9979) i;
UPDATE crmguard.principal SET db_role = 'bench_agent' WHERE name = 'agent1';

CREATE TABLE public.customer (id bigint PRIMARY KEY, owner_id bigint, zone text);
INSERT INTO public.customer SELECT i, 1 + i % 10000, 'z' || i % 50 FROM generate_series(1, 200000) i;
CREATE INDEX ON public.customer (owner_id);
ANALYZE public.customer;
GRANT SELECT ON public.customer TO bench_director, bench_agent;
GRANT USAGE ON SCHEMA bench TO bench_director, bench_agent;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA bench TO bench_director, bench_agent;
SQL

psql -X -v ON_ERROR_STOP=1 <<'SQL'
\pset footer off
SET ROLE bench_agent;
SELECT * FROM bench.compare('200k rows, current_principal() per row',
    'SELECT count(*) FROM public.customer WHERE owner_id <> crmguard.current_principal()',
    'SELECT count(*) FROM public.customer WHERE owner_id <> 2');
SELECT * FROM bench.compare('200k rows, has_role() and attr() per row',
    $$SELECT count(*) FROM public.customer WHERE crmguard.has_role('agent') AND zone = crmguard.attr('zone')$$,
    $$SELECT count(*) FROM public.customer WHERE zone = 'z1'$$);
RESET ROLE;
SET ROLE bench_director;
-- team() of the director: first call computes the tree, later calls reuse it
SELECT round(bench.ms('SELECT cardinality(crmguard.team())', 1)::numeric, 3) AS team_first_call_ms;
SELECT round(bench.ms('SELECT cardinality(crmguard.team())', 100)::numeric, 3) AS team_cached_call_ms;
SELECT * FROM bench.compare('200k rows, owner = ANY(team()) of 10,000 principals, per statement',
    'SELECT count(*) FROM public.customer WHERE owner_id = ANY ((SELECT crmguard.team())::bigint[])',
    'SELECT count(*) FROM public.customer WHERE owner_id = ANY ((SELECT array_agg(i::bigint) FROM generate_series(1, 10000) i)::bigint[])');
RESET ROLE;
SQL

# audited transactions at two clients: entries are chained at commit, one
# writer at a time; compare with the same transactions without the entry
echo "SELECT crmguard.audit_event('bench', 'pgbench');" > /tmp/crmguard_audit_bench.sql
echo "SELECT 1;" > /tmp/crmguard_noaudit_bench.sql
audited=$(pgbench -n -c 2 -j 2 -T 10 -f /tmp/crmguard_audit_bench.sql 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
plain=$(pgbench -n -c 2 -j 2 -T 10 -f /tmp/crmguard_noaudit_bench.sql 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
awk -v a="$audited" -v p="$plain" 'BEGIN { printf "audited transactions/s at 2 clients: %.0f (SELECT 1: %.0f, ratio %.3f)\n", a, p, a / p }'
metric "Audited transactions, 2 clients" "$audited" "" "" "/s"
# at eight clients, against transactions that also write and flush (one row
# into a table): the chain lock is held while entries are linked, not through
# the commit's flush, so audited commits flush together as plain ones do
psql -X -q -c 'CREATE TABLE public.bench_commit (id bigserial PRIMARY KEY, what text)'
echo "INSERT INTO public.bench_commit (what) VALUES ('pgbench');" > /tmp/crmguard_insert_bench.sql
audited8=$(pgbench -n -c 8 -j 2 -T 10 -f /tmp/crmguard_audit_bench.sql 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
insert8=$(pgbench -n -c 8 -j 2 -T 10 -f /tmp/crmguard_insert_bench.sql 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
awk -v a="$audited8" -v p="$insert8" 'BEGIN { printf "audited transactions/s at 8 clients: %.0f (a one-row INSERT: %.0f, ratio %.3f)\n", a, p, a / p }'
metric "Audited transactions, 8 clients / one-row inserts, 8 clients" "$(awk -v a="$audited8" -v p="$insert8" 'BEGIN { print a / p }')" "" "" x
psql -X -At -c "SELECT 'chain after the run verifies: ' || ok FROM crmguard.verify_audit()"

# assume() per transaction at two clients, as a pooled application does (each
# transaction names its principal; the start and end of every identity are
# audited); compare with the same transactions without it
token=$(psql -X -At -c "SELECT crmguard.issue_token('agent42', '1 hour')")
cat > /tmp/crmguard_assume_bench.sql <<SQL
BEGIN;
SELECT crmguard.assume('$token');
SELECT count(*) FROM public.customer WHERE owner_id = 42;
COMMIT;
SQL
cat > /tmp/crmguard_noassume_bench.sql <<'SQL'
BEGIN;
SELECT count(*) FROM public.customer WHERE owner_id = 42;
COMMIT;
SQL
assumed=$(pgbench -n -c 2 -j 2 -T 10 -f /tmp/crmguard_assume_bench.sql 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
plain=$(pgbench -n -c 2 -j 2 -T 10 -f /tmp/crmguard_noassume_bench.sql 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
awk -v a="$assumed" -v p="$plain" 'BEGIN { printf "assume() per transaction at 2 clients: %.0f tps (without: %.0f tps, ratio %.3f, %.3f ms added per transaction)\n", a, p, a / p, 2000 / a - 2000 / p }'
metric "assume() per pooled transaction, rate / without" "$(awk -v a="$assumed" -v p="$plain" 'BEGIN { print a / p }')" "" "" x
rm -f /tmp/crmguard_assume_bench.sql /tmp/crmguard_noassume_bench.sql
psql -X -At -c "SELECT 'chain after the run verifies: ' || ok FROM crmguard.verify_audit()"
