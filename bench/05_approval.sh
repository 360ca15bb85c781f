#!/bin/bash
# Approvals: UPDATE of rows under no process on a table that has processes
# (with requests pending on other rows) against the same table without
# crmguard (target: within 1.10x), and submit + approve cycles per second at
# 2 clients.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/summary.sh
ROWS=${ROWS:-100000}
ROUNDS=${ROUNDS:-15}
SECS=${SECS:-15}
psql -X -q -v ON_ERROR_STOP=1 -v rows="$ROWS" <<'SQL'
\o /dev/null
CREATE EXTENSION crmguard;
CREATE ROLE bench_rep;
CREATE ROLE bench_mgr;
SELECT crmguard.add_principal('mgr', '{area_manager}', db_role => 'bench_mgr');
SELECT crmguard.add_principal('rep', '{agent}', 'mgr', db_role => 'bench_rep');
CREATE TABLE public.plain (id bigint PRIMARY KEY, owner_id bigint NOT NULL, discount int NOT NULL,
                           status text NOT NULL, note text NOT NULL);
CREATE TABLE public.guarded (LIKE public.plain INCLUDING ALL);
INSERT INTO public.plain
SELECT i, (SELECT id FROM crmguard.principal WHERE name = 'rep'), 0, 'Draft', '' FROM generate_series(1, :rows) i;
INSERT INTO public.guarded SELECT * FROM public.plain;
SELECT crmguard.create_approval_process('big discount', 'public.guarded',
    '{"field": "discount", "op": ">=", "value": 20}',
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]',
    on_approve => '[{"set": {"status": "Approved"}}]', on_submit => '[{"set": {"status": "Pending"}}]',
    auto_submit => '{insert,update}', editable_columns => '{note}');
SELECT crmguard.create_approval_process('any discount', 'public.guarded',
    '{"field": "discount", "op": ">", "value": 0}',
    '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]');
-- PostgreSQL's own cost of the approval guards' kind of trigger: AFTER row
-- triggers with the same WHEN clauses (the lock's probe replaced by a
-- comparison that is never true), calling an empty function
CREATE TABLE public.after_when (LIKE public.plain INCLUDING ALL);
INSERT INTO public.after_when SELECT * FROM public.plain;
CREATE FUNCTION public.empty_trigger() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
CREATE TRIGGER lock_floor AFTER UPDATE OR DELETE ON public.after_when FOR EACH ROW WHEN (old.id = -1)
    EXECUTE FUNCTION public.empty_trigger();
SELECT replace(replace(replace(pg_get_triggerdef(oid), 'public.guarded', 'public.after_when'),
                       'crmguard.approval_auto_submit()', 'public.empty_trigger()'), tgname, 'submit_floor') AS same_when
  FROM pg_trigger WHERE tgrelid = 'public.guarded'::regclass AND tgname = 'zz_crmguard_approval_submit_update' \gset
:same_when;
GRANT SELECT, UPDATE ON public.plain, public.guarded, public.after_when TO bench_rep, bench_mgr;
-- the timed UPDATEs VACUUM their table first: no autovacuum run in the middle of one
ALTER TABLE public.plain SET (autovacuum_enabled = off);
ALTER TABLE public.guarded SET (autovacuum_enabled = off);
ALTER TABLE public.after_when SET (autovacuum_enabled = off);
-- 100 rows wait for a decision, so the lock has keys to look through
SET ROLE bench_rep;
UPDATE public.guarded SET discount = 30 WHERE id <= 100;
RESET ROLE;
VACUUM ANALYZE;
SQL

# one UPDATE of every row the requests do not hold, on a freshly vacuumed table, in ms
time_update() {
    psql -X -q -c "VACUUM public.$1" >/dev/null
    PGOPTIONS="-c role=bench_rep" psql -X -q -c '\timing on' \
        -c "UPDATE public.$1 SET note = md5(note), discount = discount WHERE id > 100" |
        sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
fastest() { sort -n | head -1; }

: > /tmp/crmguard_apv_plain; : > /tmp/crmguard_apv_guarded; : > /tmp/crmguard_apv_after_when
# the order turns round every other round: a drift of the machine falls on each table alike
for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then tables="plain guarded after_when"; else tables="after_when guarded plain"; fi
    for table in $tables; do
        time_update $table >> /tmp/crmguard_apv_$table
    done
done
echo "UPDATE of $((ROWS - 100)) rows under no process, table with 2 processes and 100 pending requests,"
echo "$ROUNDS interleaved runs (target: within x1.10 of the same table without crmguard):"
for what in median fastest; do
    awk -v what="$what" -v p="$($what < /tmp/crmguard_apv_plain)" -v g="$($what < /tmp/crmguard_apv_guarded)" \
        -v a="$($what < /tmp/crmguard_apv_after_when)" 'BEGIN {
        printf "  %-7s plain %8.1f ms | with processes %8.1f ms | x%.3f\n", what, p, g, g / p
        printf "  %-7s the same WHEN clauses on empty AFTER triggers, no crmguard %8.1f ms  x%.3f | crmguard/those x%.3f\n", what, a, a / p, g / a }'
done

metric "Approvals: 100k-row UPDATE of rows under no process / plain (median)" "$(awk -v g="$(median < /tmp/crmguard_apv_guarded)" -v p="$(median < /tmp/crmguard_apv_plain)" 'BEGIN { print g / p }')" "<=" 1.10 x
metric "  the same / the same WHEN clauses on empty AFTER triggers, no crmguard (median)" "$(awk -v g="$(median < /tmp/crmguard_apv_guarded)" -v a="$(median < /tmp/crmguard_apv_after_when)" 'BEGIN { print g / a }')" "" "" x
metric "  those triggers alone / plain (PostgreSQL's floor, median)" "$(awk -v a="$(median < /tmp/crmguard_apv_after_when)" -v p="$(median < /tmp/crmguard_apv_plain)" 'BEGIN { print a / p }')" "" "" x

psql -X -q -c 'VACUUM ANALYZE' -c 'CHECKPOINT'
# a cycle: the rep raises a discount (submitted by the update), the manager
# approves (the status is set); each client works on rows of its own
cat > /tmp/crmguard_apv_cycle.sql <<CYCLE
\set id 101 + :client_id * ($ROWS / 2 - 100) + random(0, $ROWS / 2 - 200)
BEGIN;
SET LOCAL ROLE bench_rep;
UPDATE public.guarded SET discount = 0, status = 'Draft' WHERE id = :id;
UPDATE public.guarded SET discount = 25 WHERE id = :id;
SET LOCAL ROLE bench_mgr;
SELECT crmguard.approve(request) FROM crmguard.my_approvals() WHERE row_key = ':id';
COMMIT;
CYCLE
cat > /tmp/crmguard_apv_plain_cycle.sql <<CYCLE
\set id 101 + :client_id * ($ROWS / 2 - 100) + random(0, $ROWS / 2 - 200)
BEGIN;
SET LOCAL ROLE bench_rep;
UPDATE public.plain SET discount = 0, status = 'Draft' WHERE id = :id;
UPDATE public.plain SET discount = 25 WHERE id = :id;
SET LOCAL ROLE bench_mgr;
UPDATE public.plain SET status = 'Approved' WHERE id = :id;
COMMIT;
CYCLE
# a run that aborts (any error) reports no rate: a partial run is no figure
tps() { pgbench -n -c 2 -j 2 -T "$SECS" -f "$1" > /tmp/crmguard_pgbench.out 2>&1 || { cat /tmp/crmguard_pgbench.out >&2; echo 0; return; }
        sed -n 's/^tps = \([0-9.]*\).*/\1/p' /tmp/crmguard_pgbench.out; }
plain=$(tps /tmp/crmguard_apv_plain_cycle.sql)
cycles=$(tps /tmp/crmguard_apv_cycle.sql)
echo "Submit + approve cycles, pgbench, 2 clients, ${SECS}s:"
awk -v c="$cycles" -v p="$plain" 'BEGIN {
    printf "  submit + approve cycles per second  %8.0f\n", c
    printf "  the same three updates, no crmguard %8.0f   (cycle rate x%.3f of plain)\n", p, c / p }'
metric "Approval submit + approve cycles, 2 clients" "$cycles" ">=" 2000 "/s"
metric "Approval cycle rate / the same three plain updates" "$(awk -v c="$cycles" -v p="$plain" 'BEGIN { print c / p }')" "" "" x
# flat with history: the same cycles again at once, on top of the requests
# the first run decided (no vacuum between: dead index entries stay)
later=$(tps /tmp/crmguard_apv_cycle.sql)
awk -v c="$cycles" -v l="$later" -v s="$SECS" 'BEGIN {
    printf "  the next %s s, after those decisions    %8.0f   (x%.3f of the first run)\n", s, l, l / c }'
metric "Approval cycles: the next run / the first (flat with history)" "$(awk -v c="$cycles" -v l="$later" 'BEGIN { print l / c }')" ">=" 0.90 x
psql -X -At -c "SELECT format('  requests: %s approved, %s pending', count(*) FILTER (WHERE state = 'approved'),
                 count(*) FILTER (WHERE state = 'pending')) FROM crmguard.approval_request_state"
