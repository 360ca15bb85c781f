#!/bin/bash
# Row visibility at 1,000,000 rows: the same selective queries run by a
# principal under crmguard rules and, with the principal's predicate written
# by hand (crmguard.visibility_predicate), by an ordinary role that bypasses
# row-level security (no superuser shortcuts in the baseline), interleaved,
# pgbench 1 client.  Ratios are guarded time / hand-written time (target
# <= 1.10).  Then a manager with 5,000 agents below: team() and a guarded query.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/summary.sh
ROWS=${ROWS:-1000000}
# short rounds, many of them: the machine's drift falls on both sides alike
SECS=${SECS:-2}
ROUNDS=${ROUNDS:-9}
psql -X -q -v ON_ERROR_STOP=1 -v rows="$ROWS" <<'SQL'
CREATE EXTENSION crmguard;
-- director -> 20 area managers -> 50 agents each; a big manager with 5,000 agents
SELECT crmguard.add_principal('director', '{director,admin}');
SELECT crmguard.add_principal('manager_' || m, '{area_manager}', 'director') FROM generate_series(1, 20) m;
SELECT crmguard.add_principal('agent_' || a, '{agent}', 'manager_' || (1 + (a - 1) / 50),
                              jsonb_build_object('zone', 'z' || a)) FROM generate_series(1, 1000) a;
SELECT crmguard.add_principal('big_manager', '{area_manager}', 'director');
INSERT INTO crmguard.principal (name, roles, manager_id, attributes)
SELECT 'big_agent_' || a, '{agent}', (SELECT id FROM crmguard.principal WHERE name = 'big_manager'),
       jsonb_build_object('zone', 'z' || (1000 + a))
  FROM generate_series(1, 5000) a;
CREATE ROLE bench_agent; CREATE ROLE bench_manager; CREATE ROLE bench_big;
CREATE ROLE bench_hand BYPASSRLS;   -- runs the hand-written queries
UPDATE crmguard.principal SET db_role = 'bench_agent' WHERE name = 'agent_1';
UPDATE crmguard.principal SET db_role = 'bench_manager' WHERE name = 'manager_1';
UPDATE crmguard.principal SET db_role = 'bench_big' WHERE name = 'big_manager';

-- 1,000,000 customers in 6,000 zones, each owned by the agent of its zone
CREATE TABLE public.customer (
    id           integer PRIMARY KEY,
    zone         text NOT NULL,
    owner_id     bigint NOT NULL,
    billing_city text NOT NULL,
    amount       integer NOT NULL
);
CREATE TEMP TABLE agent_of AS
SELECT row_number() OVER (ORDER BY id) - 1 AS n, id, attributes->>'zone' AS zone
  FROM crmguard.principal WHERE 'agent' = ANY (roles);
INSERT INTO public.customer
SELECT i, a.zone, a.id, 'city_' || (i % 500), i % 1000
  FROM generate_series(1, :rows) i
  JOIN agent_of a ON a.n = (hashint4(i) & 2147483647) % (SELECT count(*) FROM agent_of);
CREATE INDEX customer_zone_idx ON public.customer (zone);
CREATE INDEX customer_owner_idx ON public.customer (owner_id);
CREATE INDEX customer_city_idx ON public.customer (billing_city);
GRANT SELECT ON public.customer TO bench_agent, bench_manager, bench_big, bench_hand;
SELECT crmguard.expose('public.customer', 'agents see their zone', 'agent',
                       '{"field": "zone", "op": "=", "principal": "zone"}');
SELECT crmguard.expose_by_owner('public.customer', 'owner_id', 'area_manager');
VACUUM ANALYZE public.customer;
-- the load's dirty pages written now, not by a checkpoint in the middle of a timed round
VACUUM ANALYZE crmguard.principal;
CHECKPOINT;
SQL

pred() { psql -X -At -c "SELECT crmguard.visibility_predicate('public.customer', '$1')"; }
agent_pred=$(pred agent_1)
manager_pred=$(pred manager_1)
big_pred=$(pred big_manager)

# script files: $1 name, $2 SQL with :id / :city
mkscript() {
    printf '\\set id random(1, %s)\n\\set c random(0, 499)\n%s;\n' "$ROWS" "$2" > "/tmp/crmguard_vis_$1.sql"
}
mkscript agent_point   "SELECT * FROM public.customer WHERE id = :id"
mkscript agent_city    "SELECT id, amount FROM public.customer WHERE billing_city = 'city_' || :c"
mkscript agent_mine    "SELECT count(*), sum(amount) FROM public.customer"
mkscript hand_agent_point "SELECT * FROM public.customer WHERE id = :id AND $agent_pred"
mkscript hand_agent_city  "SELECT id, amount FROM public.customer WHERE billing_city = 'city_' || :c AND $agent_pred"
mkscript hand_agent_mine  "SELECT count(*), sum(amount) FROM public.customer WHERE $agent_pred"
mkscript manager_point "SELECT * FROM public.customer WHERE id = :id"
mkscript manager_city  "SELECT id, amount FROM public.customer WHERE billing_city = 'city_' || :c"
mkscript manager_mine  "SELECT count(*), sum(amount) FROM public.customer"
mkscript hand_manager_point "SELECT * FROM public.customer WHERE id = :id AND $manager_pred"
mkscript hand_manager_city  "SELECT id, amount FROM public.customer WHERE billing_city = 'city_' || :c AND $manager_pred"
mkscript hand_manager_mine  "SELECT count(*), sum(amount) FROM public.customer WHERE $manager_pred"

# TPS of a script, as a role
tps() {
    PGOPTIONS=${2:+"-c role=$2"} pgbench -n -c 1 -T "$SECS" -f "/tmp/crmguard_vis_$1.sql" 2>&1 |
        sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# pairs GUARDED ROLE HAND: ROUNDS rounds of the guarded script as ROLE and the
# hand-written one as bench_hand, back to back, the order swapped each round
# (a disturbance of the machine falls on both sides alike); sets g and h, the
# median TPS, and ratio, the median of each round's hand / guarded TPS
pairs() {
    : > /tmp/crmguard_vis_g; : > /tmp/crmguard_vis_h; : > /tmp/crmguard_vis_r
    for r in $(seq "$ROUNDS"); do
        if [ $((r % 2)) -eq 1 ]; then
            a=$(tps "$1" "$2"); b=$(tps "$3" bench_hand)
        else
            b=$(tps "$3" bench_hand); a=$(tps "$1" "$2")
        fi
        echo "$a" >> /tmp/crmguard_vis_g; echo "$b" >> /tmp/crmguard_vis_h
        awk -v a="$a" -v b="$b" 'BEGIN { print b / a }' >> /tmp/crmguard_vis_r
    done
    g=$(median < /tmp/crmguard_vis_g); h=$(median < /tmp/crmguard_vis_h); ratio=$(median < /tmp/crmguard_vis_r)
}

echo "Plans as the principal (non-superuser, RLS applies):"
for q in "SELECT * FROM public.customer WHERE id = 4242" "SELECT count(*) FROM public.customer"; do
    for r in bench_agent bench_manager; do
        echo "  $r: $q"
        psql -X -At -c "SET ROLE $r" -c "EXPLAIN (COSTS OFF) $q" | grep -E "Scan|Cond" | sed 's/^/      /'
    done
done

echo
echo "Selective queries at $ROWS rows, $ROUNDS rounds of ${SECS}s in pairs, 1 client (median TPS; ratio = guarded time / hand-written time, median of the pairs, target <= 1.10):"
for who in agent manager; do
    for q in point city mine; do
        pairs "${who}_$q" "bench_$who" "hand_${who}_$q"
        awk -v w="$who" -v q="$q" -v g="$g" -v h="$h" -v r="$ratio" 'BEGIN {
            printf "  %-7s %-5s guarded %9.0f tps | hand-written %9.0f tps | ratio x%.3f\n", w, q, g, h, r }'
        metric "Visibility, $who $q query, 1M rows / hand-written (warm)" "$ratio" "<=" 1.10 x
    done
done

echo
echo "A manager with 5,000 agents below (team of 5,001):"
psql -X -q -c 'SET ROLE bench_big' -c '\timing on' \
    -c 'SELECT cardinality(crmguard.team()) AS team_first_call' \
    -c 'SELECT cardinality(crmguard.team()) AS team_cached' 2>&1 | grep -E "^Time|^ *[0-9]+$" |
    paste - - | awk '{ printf "  team() %s: %s members, %s ms\n", NR == 1 ? "first call" : "cached    ", $1, $3 }'
mkscript big_city "SELECT id, amount FROM public.customer WHERE billing_city = 'city_' || :c"
mkscript hand_big_city "SELECT id, amount FROM public.customer WHERE billing_city = 'city_' || :c AND $big_pred"
mkscript big_point "SELECT * FROM public.customer WHERE id = :id"
mkscript hand_big_point "SELECT * FROM public.customer WHERE id = :id AND $big_pred"
for q in point city; do
    pairs "big_$q" bench_big "hand_big_$q"
    awk -v q="$q" -v g="$g" -v h="$h" -v r="$ratio" 'BEGIN {
        printf "  big manager %-5s guarded %9.0f tps (%.3f ms) | hand-written %9.0f tps | ratio x%.3f\n", q, g, 1000 / g, h, r }'
    metric "Visibility, manager of 5,000 agents, $q query / hand-written (warm)" "$ratio" "<=" 1.10 x
done

# the first statement of a fresh connection: the guarded point query as the
# big manager against the hand-written one on the same table in a database
# without crmguard (bench_plain, a copy of the rows), both as ordinary roles
# switched to at connection (PGOPTIONS -c role), a new connection per
# statement (pgbench -C, 1 client): the difference of the times per
# connection is what crmguard adds to a fresh connection's first statement
psql -X -q -c "DROP DATABASE IF EXISTS bench_plain" -c "CREATE DATABASE bench_plain"
psql -X -q -d bench_plain -c "CREATE TABLE public.customer (id integer PRIMARY KEY, zone text NOT NULL,
    owner_id bigint NOT NULL, billing_city text NOT NULL, amount integer NOT NULL)"
psql -X -q -c "COPY public.customer TO STDOUT" | psql -X -q -d bench_plain -c "COPY public.customer FROM STDIN"
psql -X -q -d bench_plain -c "CREATE INDEX ON public.customer (zone)" -c "CREATE INDEX ON public.customer (owner_id)" \
    -c "CREATE INDEX ON public.customer (billing_city)" -c "VACUUM ANALYZE public.customer"
psql -X -q -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bench_plain_app') THEN CREATE ROLE bench_plain_app; END IF; END \$\$"
psql -X -q -d bench_plain -c "GRANT SELECT ON public.customer TO bench_plain_app" -c "CHECKPOINT"
mkscript first_big "SELECT * FROM public.customer WHERE id = :id"
mkscript first_hand "SELECT * FROM public.customer WHERE id = :id AND $big_pred"
fresh_tps() {
    PGOPTIONS=${2:+"-c role=$2"} pgbench -n -C -c 1 -T "$SECS" -f "/tmp/crmguard_vis_$1.sql" ${3:-} 2>&1 |
        sed -n 's/^tps = \([0-9.]*\) (including.*/\1/p'
}
# fresh_ms GUARDED_SCRIPT ROLE HAND_SCRIPT: sets g and h, the median ms per
# connection (the hand-written script in bench_plain, as bench_plain_app), and
# diff and fratio, the median of each round's difference and ratio (the two
# back to back, the order swapped each round)
fresh_ms() {
    : > /tmp/crmguard_vis_g; : > /tmp/crmguard_vis_h; : > /tmp/crmguard_vis_r
    for r in $(seq "$ROUNDS"); do
        if [ $((r % 2)) -eq 1 ]; then
            a=$(fresh_tps "$1" "$2"); b=$(fresh_tps "$3" bench_plain_app bench_plain)
        else
            b=$(fresh_tps "$3" bench_plain_app bench_plain); a=$(fresh_tps "$1" "$2")
        fi
        echo "$a" >> /tmp/crmguard_vis_g; echo "$b" >> /tmp/crmguard_vis_h
        awk -v a="$a" -v b="$b" 'BEGIN { print 1000 / a - 1000 / b, b / a }' >> /tmp/crmguard_vis_r
    done
    g=$(awk '{ print 1000 / $1 }' /tmp/crmguard_vis_g | median); h=$(awk '{ print 1000 / $1 }' /tmp/crmguard_vis_h | median)
    diff=$(awk '{ print $1 }' /tmp/crmguard_vis_r | median); fratio=$(awk '{ print $2 }' /tmp/crmguard_vis_r | median)
}
fresh_ms first_big bench_big first_hand
awk -v g="$g" -v h="$h" -v d="$diff" 'BEGIN {
    printf "  fresh connection + first statement, big manager point query: guarded %.2f ms | hand-written %.2f ms | %+.2f ms\n", g, h, d }'
metric "Visibility, first statement of a fresh connection, manager of 5,000 agents, vs hand-written" "$diff" "<=" 1 "+ms"

# the same for a field-match rule (a portal user, an agent: rows whose zone is
# the principal's): the guarded point query against the hand-written one
mkscript first_agent "SELECT * FROM public.customer WHERE id = :id"
mkscript first_agent_hand "SELECT * FROM public.customer WHERE id = :id AND $agent_pred"
fresh_ms first_agent bench_agent first_agent_hand
awk -v g="$g" -v h="$h" -v r="$fratio" 'BEGIN {
    printf "  fresh connection + first statement, agent (field match) point query: guarded %.2f ms | hand-written %.2f ms | x%.3f\n", g, h, r }'
metric "Visibility, first statement of a fresh connection, field-match rule (agent), / hand-written" "$fratio" "<=" 1.10 x
