#!/bin/bash
# Draft review: the rate of inserts that become drafts against plain inserts
# into the same table without review (target: within 3x), and approve cycles
# per second (a lead arrives as a draft, a reviewer approves it).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/summary.sh
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-3}
psql -X -q -v ON_ERROR_STOP=1 <<'SQL'
\o /dev/null
CREATE EXTENSION crmguard;
CREATE ROLE bench_form; CREATE ROLE bench_reviewer;
SELECT crmguard.add_principal('form', '{webform}', db_role => 'bench_form');
SELECT crmguard.add_principal('reviewer', '{reviewer}', db_role => 'bench_reviewer');
CREATE TABLE public.lead_plain (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company text NOT NULL,
    email   text,
    phone   text
);
CREATE TABLE public.lead_reviewed (LIKE public.lead_plain INCLUDING ALL);
GRANT INSERT, SELECT ON public.lead_plain, public.lead_reviewed TO bench_form, bench_reviewer;
SELECT crmguard.enable_review('public.lead_reviewed', 'reviewer', '{company,email,phone}');
-- the draft this session's last INSERT made (the NOTICE has it; pgbench cannot read notices)
CREATE FUNCTION public.my_last_draft() RETURNS bigint LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog AS $$SELECT currval('crmguard.draft_id_seq')$$;
GRANT EXECUTE ON FUNCTION public.my_last_draft() TO bench_reviewer;
SQL

cat > /tmp/crmguard_review_plain.sql <<'S'
\set n random(1, 10000000)
INSERT INTO public.lead_plain (company, email, phone) VALUES ('Company ' || :n, 'info' || :n || '@example.com', '+39 02 ' || :n);
S
cat > /tmp/crmguard_review_draft.sql <<'S'
\set n random(1, 10000000)
INSERT INTO public.lead_reviewed (company, email, phone) VALUES ('Company ' || :n, 'info' || :n || '@example.com', '+39 02 ' || :n);
S
cat > /tmp/crmguard_review_cycle.sql <<'S'
\set n random(1, 10000000)
BEGIN;
INSERT INTO public.lead_reviewed (company, email, phone) VALUES ('Company ' || :n, 'info' || :n || '@example.com', '+39 02 ' || :n);
SELECT crmguard.approve_draft(public.my_last_draft());
COMMIT;
S
tps() {
    PGOPTIONS="-c role=$2 -c client_min_messages=warning" pgbench -n -c "$3" -j "$3" -T "$SECS" -f "$1" 2>&1 |
        sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

: > /tmp/crmguard_review_p; : > /tmp/crmguard_review_d
for r in $(seq "$ROUNDS"); do
    tps /tmp/crmguard_review_plain.sql bench_form 1 >> /tmp/crmguard_review_p
    tps /tmp/crmguard_review_draft.sql bench_form 1 >> /tmp/crmguard_review_d
done
p=$(median < /tmp/crmguard_review_p); d=$(median < /tmp/crmguard_review_d)
echo "Single-row inserts, 1 client, $ROUNDS interleaved rounds of ${SECS}s (median; target: drafts within 3x):"
awk -v p="$p" -v d="$d" 'BEGIN {
    printf "  plain insert %8.0f/s | insert kept as a draft %8.0f/s | draft cost x%.2f of a plain insert\n", p, d, p / d }'
metric "Review: insert kept as a draft, cost / a plain insert" "$(awk -v p="$p" -v d="$d" 'BEGIN { print p / d }')" "<=" 3 x

psql -X -q -c 'VACUUM ANALYZE'
echo "Approve cycles (a draft arrives, a reviewer approves it into the table), $ROUNDS rounds of ${SECS}s (median):"
: > /tmp/crmguard_review_c1; : > /tmp/crmguard_review_c2
for r in $(seq "$ROUNDS"); do
    tps /tmp/crmguard_review_cycle.sql bench_reviewer 1 >> /tmp/crmguard_review_c1
    tps /tmp/crmguard_review_cycle.sql bench_reviewer 2 >> /tmp/crmguard_review_c2
done
awk -v a="$(median < /tmp/crmguard_review_c1)" -v b="$(median < /tmp/crmguard_review_c2)" 'BEGIN {
    printf "  1 client: %8.0f approve cycles/s | 2 clients: %8.0f approve cycles/s\n", a, b }'
metric "Review: draft approve cycles, 2 clients" "$(median < /tmp/crmguard_review_c2)" ">=" 1000 "/s"
psql -X -At -c "SELECT format('  drafts approved: %s, still pending: %s, rows in the reviewed table: %s',
                  count(*) FILTER (WHERE state = 'approved'), count(*) FILTER (WHERE state = 'pending'),
                  (SELECT count(*) FROM public.lead_reviewed)) FROM crmguard.draft_state"
