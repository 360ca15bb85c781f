#!/bin/bash
# OTP: the hot path (rows that enter no gated value) against plain PostgreSQL
# and an empty PL/pgSQL trigger, and full request/verify/update cycles.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-100000}
psql -X -q -v ON_ERROR_STOP=1 -v rows="$ROWS" <<'SQL'
CREATE EXTENSION crmguard;
\i bench/lib.sql
CREATE TABLE public.plain (id bigint PRIMARY KEY, phone text, status text, note text);
CREATE TABLE public.guarded (LIKE public.plain INCLUDING ALL);
CREATE TABLE public.plpgsql (LIKE public.plain INCLUDING ALL);
INSERT INTO public.plain SELECT i, '+39 347 ' || i, 'Out for delivery', '' FROM generate_series(1, :rows) i;
INSERT INTO public.guarded SELECT * FROM public.plain;
INSERT INTO public.plpgsql SELECT * FROM public.plain;
SELECT crmguard.create_otp_rule('bench', 'public.guarded', 'status', '{Delivered}', 'phone',
                                delivery => 'manual', code_length => 6, max_resends => 1000000);
CREATE FUNCTION public.empty_trigger() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
CREATE TRIGGER empty BEFORE INSERT OR UPDATE ON public.plpgsql FOR EACH ROW EXECUTE FUNCTION public.empty_trigger();
VACUUM ANALYZE;
CREATE INDEX ON crmguard.outbox (recipient);
SQL

# time one UPDATE of every row on a freshly vacuumed table, in ms
time_update() {
    psql -X -q -c "VACUUM public.$1" >/dev/null
    psql -X -q -c '\timing on' -c "UPDATE public.$1 SET note = md5(note)" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for table in plain guarded plpgsql; do : > /tmp/crmguard_bench_$table; done
for round in 1 2 3 4 5 6 7; do
    for table in plain guarded plpgsql; do
        time_update $table >> /tmp/crmguard_bench_$table
    done
done
plain=$(median < /tmp/crmguard_bench_plain)
guarded=$(median < /tmp/crmguard_bench_guarded)
plpgsql=$(median < /tmp/crmguard_bench_plpgsql)
echo "UPDATE of $ROWS rows entering no gated value, median of 7 interleaved runs:"
awk -v p="$plain" -v g="$guarded" -v l="$plpgsql" 'BEGIN {
    printf "  plain table                  %9.1f ms  1.000\n", p
    printf "  with a crmguard OTP rule     %9.1f ms  %.3f  (target <= 1.10)\n", g, g / p
    printf "  with an empty PL/pgSQL trig. %9.1f ms  %.3f\n", l, l / p
    printf "  crmguard / PL/pgSQL trigger             %.3f  (target < 1)\n", g / l
}'

# a full cycle: request a code, read it as the customer would, verify, change, undo
cat > /tmp/crmguard_otp_cycle.sql <<CYCLE
\set row random(1, $ROWS)
BEGIN;
SELECT crmguard.request_otp('public.guarded', :row::text, 'Delivered') AS challenge \gset
SELECT crmguard.verify_otp(:challenge,
    (SELECT substring(body FROM 'code is ([0-9]+)') FROM crmguard.outbox
      WHERE recipient = '+39 347 ' || :row ORDER BY id DESC LIMIT 1));
UPDATE public.guarded SET status = 'Delivered' WHERE id = :row;
UPDATE public.guarded SET status = 'Out for delivery' WHERE id = :row;
COMMIT;
CYCLE
cat > /tmp/crmguard_plain_cycle.sql <<CYCLE
\set row random(1, $ROWS)
BEGIN;
UPDATE public.plain SET status = 'Delivered' WHERE id = :row;
UPDATE public.plain SET status = 'Out for delivery' WHERE id = :row;
COMMIT;
CYCLE
tps() { pgbench -n -c 2 -j 2 -T 15 -f "$1" 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p'; }
echo "Full OTP cycles (request + verify + guarded update + undo), pgbench, 2 clients, 15 s each:"
otp=$(tps /tmp/crmguard_otp_cycle.sql)
plain=$(tps /tmp/crmguard_plain_cycle.sql)
awk -v o="$otp" -v p="$plain" 'BEGIN {
    printf "  OTP cycles per second        %9.0f\n", o
    printf "  same two updates, no OTP     %9.0f  (one commit each: the disk sets this pace)\n", p
    printf "  OTP cycle / plain cycle rate          %.3f\n", o / p
}'
psql -X -At -c "SELECT 'audit chain after the run verifies: ' || ok FROM crmguard.verify_audit()"
