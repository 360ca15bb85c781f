#!/bin/bash
# DDL on tables no rule concerns: the same DDL-heavy script (create, alter,
# index, trigger, policy, drop) in a database with crmguard and rules on
# another table, and in a database without crmguard, interleaved; also with
# a planner setting off in the session (crmguard's own queries must not
# inherit it, nor JIT).  Target: within x1.25 (PostgreSQL's DDL-heavy core
# suite with crmguard created).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/summary.sh
N=${N:-300}
ROUNDS=${ROUNDS:-5}
createdb bench_ddl_plain
psql -X -q -v ON_ERROR_STOP=1 <<'SQL'
\o /dev/null
CREATE EXTENSION crmguard;
SELECT crmguard.add_principal('boss', '{area_manager}');
CREATE TABLE public.customer (id int PRIMARY KEY, owner_id bigint NOT NULL, status text, phone text);
SELECT crmguard.expose_by_owner('public.customer', 'owner_id', 'area_manager');
SELECT crmguard.create_otp_rule('delivered', 'public.customer', 'status', '{Delivered}', 'phone');
SQL

# N rounds of DDL on a table of its own
{
    echo "CREATE FUNCTION public.noop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';"
    for i in $(seq "$N"); do
        echo "CREATE TABLE public.t$i (id int PRIMARY KEY, a text);"
        echo "ALTER TABLE public.t$i ADD COLUMN b int DEFAULT 0;"
        echo "CREATE INDEX ON public.t$i (b);"
        echo "CREATE TRIGGER tr BEFORE INSERT ON public.t$i FOR EACH ROW EXECUTE FUNCTION public.noop();"
        echo "ALTER TABLE public.t$i DISABLE TRIGGER tr;"
        echo "CREATE POLICY p ON public.t$i USING (true);"
        echo "ALTER TABLE public.t$i RENAME COLUMN a TO c;"
        echo "DROP TABLE public.t$i;"
    done
    echo "DROP FUNCTION public.noop();"
} > /tmp/crmguard_ddl.sql

# seconds of one run of the script in a database, with extra settings
run() {
    PGOPTIONS="$2" psql -X -q -d "$1" -v ON_ERROR_STOP=1 -c '\timing on' -f /tmp/crmguard_ddl.sql 2>&1 |
        sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | awk '{ s += $1 } END { printf "%.1f\n", s }'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for setting in "" "-c enable_seqscan=off -c enable_nestloop=off"; do
    : > /tmp/crmguard_ddl_plain; : > /tmp/crmguard_ddl_guarded
    for r in $(seq "$ROUNDS"); do
        run bench_ddl_plain "$setting" >> /tmp/crmguard_ddl_plain
        run postgres "$setting" >> /tmp/crmguard_ddl_guarded
    done
    awk -v p="$(median < /tmp/crmguard_ddl_plain)" -v g="$(median < /tmp/crmguard_ddl_guarded)" \
        -v n="$((N * 8))" -v s="${setting:-default settings}" 'BEGIN {
        printf "  %d DDL statements on unguarded tables (%s): plain %8.1f ms | crmguard %8.1f ms | x%.3f\n", n, s, p, g, g / p }'
    metric "DDL on tables no rule concerns / no crmguard (${setting:-default settings})" \
        "$(awk -v p="$(median < /tmp/crmguard_ddl_plain)" -v g="$(median < /tmp/crmguard_ddl_guarded)" 'BEGIN { print g / p }')" "<=" 1.25 x
done
psql -X -At -c "SELECT 'rules still enforced: ' || (SELECT count(*) FROM crmguard.visibility_rule)::text"
