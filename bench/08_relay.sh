#!/bin/bash
# crmguard-relay: 1,000 e-mails through a local SMTP server (python3 -m aiosmtpd
# writing a Maildir), from the commit that queues them until the last is
# reported sent.  Prints the time and messages/s (target: under 10 s).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/summary.sh
N=${MESSAGES:-1000}
port=${CRMGUARD_BENCH_SMTP_PORT:-6660}
work=$(mktemp -d /tmp/crmguard-bench-relay.XXXXXX)
relay=$(command -v crmguard-relay || echo "$("${PG_BIN:-/usr/lib/postgresql/15/bin}"/pg_config --bindir)/crmguard-relay")
[ -x "$relay" ] || relay=relay/crmguard-relay
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] && cp "$work/relay.log" /tmp/relay-bench.log
    rm -rf "$work"
}
trap cleanup EXIT

psql -X -q -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION crmguard'
/usr/bin/python3 -m aiosmtpd -n -l "127.0.0.1:$port" -c aiosmtpd.handlers.Mailbox "$work/maildir" >"$work/smtp.log" 2>&1 &
pids+=($!)
umask 077
# the benchmark's own role and environment (PGHOST, PGPORT, PGUSER...) connect the relay
cat >"$work/relay.conf" <<EOC
[relay]
conninfo = dbname=${PGDATABASE:-postgres}
lease = 120
batch = 20
poll = 1
[channel email]
type = smtp
host = 127.0.0.1
port = $port
tls = none
from = bench@crm.example
timeout = 5
EOC
umask 022
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
"$relay" --config "$work/relay.conf" >"$work/relay.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do grep -q listening "$work/relay.log" && break; sleep 0.1; done

start=$(date +%s.%N)
psql -X -q -v ON_ERROR_STOP=1 -v n="$N" <<'SQL'
BEGIN;
INSERT INTO crmguard.outbox (channel, recipient, subject, body)
SELECT 'email', 'customer' || i || '@example.com', 'Your delivery ' || i,
       'Dear customer, your delivery ' || i || ' arrives tomorrow between 9:00 and 12:00.'
  FROM generate_series(1, :n) i;
NOTIFY crmguard_outbox, 'email';
COMMIT;
SQL
until [ "$(psql -X -At -c "SELECT count(*) FROM crmguard.outbox WHERE state <> 'pending'")" -ge "$N" ]; do
    sleep 0.05
done
end=$(date +%s.%N)
sent=$(psql -X -At -c "SELECT count(*) FROM crmguard.outbox WHERE state = 'sent'")
received=$(ls "$work/maildir/new" | wc -l)
awk -v n="$N" -v s="$start" -v e="$end" -v sent="$sent" -v got="$received" 'BEGIN {
    t = e - s;
    printf "relay: %d e-mails through the local SMTP server in %.2f s (%.0f messages/s); %d reported sent, %d received (target: under 10 s)\n", n, t, n / t, sent, got
}'
metric "Relay: $N e-mails through a local SMTP server, all reported sent" "$(awk -v s="$start" -v e="$end" -v sent="$sent" -v n="$N" 'BEGIN { print (sent == n) ? (e - s) * 1000 : "" }')" "<" 10000 ms
