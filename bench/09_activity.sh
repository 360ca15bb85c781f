#!/bin/bash
# Activity tracking: a 100,000-row INSERT into a tracked table against the
# same INSERT into an untracked one, as the same principal, interleaved runs
# (target: tracked <= x1.05 of untracked).  For scale, the same INSERT into a
# table with an AFTER ... FOR EACH STATEMENT trigger with a transition table.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/summary.sh
ROWS=${ROWS:-100000}
psql -X -q -v ON_ERROR_STOP=1 <<'SQL'
CREATE EXTENSION crmguard;
CREATE ROLE bench_agent;
SELECT crmguard.add_principal('agent', '{agent}', db_role => 'bench_agent');
CREATE TABLE public.untracked (id bigint PRIMARY KEY, customer text, note text, amount int);
CREATE TABLE public.tracked (LIKE public.untracked INCLUDING ALL);
CREATE TABLE public.transition (LIKE public.untracked INCLUDING ALL);
SELECT crmguard.track('public.tracked');
CREATE FUNCTION public.count_rows() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END';
CREATE TRIGGER counted AFTER INSERT ON public.transition REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.count_rows();
GRANT ALL ON public.untracked, public.tracked, public.transition TO bench_agent;
SQL

# time one INSERT of every row into an emptied table, as the agent, in ms
time_insert() {
    psql -X -q -c "TRUNCATE public.$1" >/dev/null
    psql -X -q -c 'SET ROLE bench_agent' -c '\timing on' \
        -c "INSERT INTO public.$1 SELECT i, 'customer ' || i, 'visit', i % 1000 FROM generate_series(1, $ROWS) i" \
        | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
fastest() { sort -n | head -1; }

for t in untracked tracked transition; do : > /tmp/crmguard_bench_$t; done
for round in $(seq 1 11); do
    for t in untracked tracked transition; do
        time_insert $t >> /tmp/crmguard_bench_$t
    done
done
report() {
    u=$($1 < /tmp/crmguard_bench_untracked)
    t=$($1 < /tmp/crmguard_bench_tracked)
    x=$($1 < /tmp/crmguard_bench_transition)
    awk -v what="$1" -v u="$u" -v t="$t" -v x="$x" 'BEGIN {
        printf "  %-7s untracked %8.1f ms | tracked %8.1f ms  x%.3f | transition-table trigger %8.1f ms  x%.3f\n",
               what, u, t, t / u, x, x / u
    }'
}
echo "INSERT of $ROWS rows as a principal, 11 interleaved runs each (target: tracked <= x1.05 of untracked):"
report median
report fastest
metric "Activity: INSERT of $ROWS rows, tracked / untracked (median)" "$(awk -v u="$(median < /tmp/crmguard_bench_untracked)" -v t="$(median < /tmp/crmguard_bench_tracked)" 'BEGIN { print t / u }')" "<=" 1.05 x
psql -X -At -c "SELECT 'rows counted for the agent: ' || sum(n) FROM crmguard.activity_log WHERE action = 'insert'"
