#!/bin/bash
# Trusted devices on the hot path: the same selective queries by an agent
# whose principal requires a device (attested once per connection) and by an
# agent without that requirement, interleaved, pgbench 1 client (target:
# within noise).  Each statement checks the attestation (one shared-memory
# read and an InitPlan); revocation is what makes it re-read the device.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/summary.sh
ROWS=${ROWS:-1000000}
SECS=${SECS:-3}
ROUNDS=${ROUNDS:-8}
tmp=$(mktemp -d)
key=$tmp/pc.key
pk=$(crmguard-device keygen "$key")
psql -X -q -v ON_ERROR_STOP=1 -v rows="$ROWS" -v pk="$pk" -v pw="${PGPASSWORD:-}" <<'SQL'
CREATE EXTENSION crmguard;
-- pg_virtualenv's clusters ask a password over TCP: the one its PGPASSWORD gives
CREATE ROLE bench_app LOGIN PASSWORD :'pw';
SELECT crmguard.add_principal('device_agent', '{agent}', NULL, '{"zone": "z1"}', require_device => true);
SELECT crmguard.add_principal('plain_agent', '{agent}', NULL, '{"zone": "z1"}');
SELECT crmguard.register_device('device_agent', 'bench PC', :'pk');
CREATE TABLE public.customer (id integer PRIMARY KEY, zone text NOT NULL, amount integer NOT NULL);
INSERT INTO public.customer SELECT i, 'z' || (i % 1000), i % 1000 FROM generate_series(1, :rows) i;
CREATE INDEX ON public.customer (zone);
GRANT SELECT ON public.customer TO bench_app;
SELECT crmguard.expose('public.customer', 'agents see their zone', 'agent',
                       '{"field": "zone", "op": "=", "principal": "zone"}');
VACUUM ANALYZE public.customer;
SQL

# pgbench cannot sign: the application's login role assumes, once per
# connection, a session-long token minted with the device's signature (the
# other agent: a token without one); both scripts do the same statements
psql -X -q -c "GRANT EXECUTE ON FUNCTION crmguard.issue_token(text, interval, bigint, bytea), crmguard.device_challenge(text) TO bench_app"
device=$(psql -X -At -c "SELECT id FROM crmguard.device")
token=$(crmguard-device token --dsn "dbname=${PGDATABASE:-postgres} user=bench_app" --key "$key" \
        --device "$device" --principal device_agent --valid-for '1 hour')
plain_token=$(psql -X -At -c "SELECT crmguard.issue_token('plain_agent')")
for who in device plain; do
    t=$token; [ $who = plain ] && t=$plain_token
    cat > $tmp/$who.sql <<SCRIPT
SELECT CASE WHEN crmguard.current_principal() IS NULL THEN crmguard.assume('$t', false) END;
SELECT count(*), sum(amount) FROM public.customer WHERE zone = 'z1' AND amount < 500;
SCRIPT
done
check=$(psql -X -At -U bench_app -c "SELECT crmguard.assume('$token', false)" -c "SELECT count(*) FROM public.customer")
echo "rows the attested agent sees: $(echo "$check" | tail -1)"
tps() { pgbench -n -c 1 -T "$SECS" -U "$1" -f "$2" 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p'; }
: > $tmp/d; : > $tmp/p; : > $tmp/r
tps bench_app $tmp/device.sql > /dev/null     # warm the cache
for r in $(seq 1 "$ROUNDS"); do
    # ABBA: which of the two runs first alternates, so neither gets the warmer slot
    if [ $((r % 2)) -eq 1 ]; then
        d=$(tps bench_app $tmp/device.sql); p=$(tps bench_app $tmp/plain.sql)
    else
        p=$(tps bench_app $tmp/plain.sql); d=$(tps bench_app $tmp/device.sql)
    fi
    echo "$d" >> $tmp/d; echo "$p" >> $tmp/p
    awk -v d="$d" -v p="$p" 'BEGIN { print p / d }' >> $tmp/r
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
d=$(median < $tmp/d); p=$(median < $tmp/p); r=$(median < $tmp/r)
echo "Zone query (1,000 of $ROWS rows) per transaction, pgbench 1 client, $ROUNDS pairs of $SECS s runs (target: within noise):"
awk -v d="$d" -v p="$p" -v r="$r" 'BEGIN {
    printf "  device-attested agent %8.1f tps | agent without device %8.1f tps | median time ratio of the pairs x%.3f\n", d, p, r
}'
metric "Devices: zone query, attested agent / agent without a device (time, median of pairs)" "$r" "<=" 1.05 x
rm -rf "$tmp"
