#!/bin/bash
# Load the demo CRM into a fresh database and play each chapter with psql.
set -euo pipefail
cd "$(dirname "$0")"
export PGDATABASE=crm_demo
# crmguard-device is installed with the server's programs
export PATH="$("${PG_CONFIG:-pg_config}" --bindir):$PATH"
dropdb --if-exists crm_demo >/dev/null 2>&1
createdb crm_demo

run() { psql -X -q -v ON_ERROR_STOP=1 --pset=footer=off "$@"; }

echo "== Loading the demo CRM (schema, crmguard, principals, seed data)"
run -f schema.sql
run -c 'CREATE EXTENSION crmguard'
run -f seed.sql
run -At -c "SELECT format('   %s customers, %s deals, %s delivery notes, %s principals',
                  (SELECT count(*) FROM crm.customer), (SELECT count(*) FROM crm.deal),
                  (SELECT count(*) FROM crm.delivery_note), (SELECT count(*) FROM crmguard.principal))"

# Delivery: a local SMTP server (Debian's python3-aiosmtpd) stands in for the
# customers' mail servers, and crmguard-relay delivers the outbox to it.
smtp_port=${CRMGUARD_DEMO_SMTP_PORT:-6650}
work=$(mktemp -d /tmp/crmguard-demo.XXXXXX)
export CRMGUARD_DEMO_MAILDIR=$work/maildir
relay=$(command -v crmguard-relay || echo "$("${PG_BIN:-/usr/lib/postgresql/15/bin}"/pg_config --bindir)/crmguard-relay")
[ -x "$relay" ] || relay=../relay/crmguard-relay
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
/usr/bin/python3 -m aiosmtpd -n -l "127.0.0.1:$smtp_port" -c aiosmtpd.handlers.Mailbox "$CRMGUARD_DEMO_MAILDIR" \
    >"$work/smtp.log" 2>&1 &
pids+=($!)
# the relay's role: one grant; its password lives only in the relay's 0600 configuration
relay_password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
run -q -v pw="$relay_password" <<'SQL'
CREATE ROLE crm_relay LOGIN;
GRANT crmguard_relay TO crm_relay;
SELECT format('ALTER ROLE crm_relay PASSWORD %L', :'pw') \gexec
SQL
umask 077
cat >"$work/relay.conf" <<EOC
[relay]
conninfo = dbname=$PGDATABASE user=crm_relay password=$relay_password
lease = 60
batch = 10
poll = 1

# the demo's mail server listens on loopback and speaks no TLS;
# a real one takes tls = starttls with a username and password
[channel email]
type = smtp
host = 127.0.0.1
port = $smtp_port
tls = none
from = Consegne Rapide <consegne@rapide.example>
timeout = 5
EOC
umask 022
"$relay" --config "$work/relay.conf" >"$work/relay.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do grep -q listening "$work/relay.log" 2>/dev/null && break; sleep 0.1; done
echo "   crmguard-relay delivers e-mail to the local SMTP server on port $smtp_port"
echo
echo "How to read what follows: each step says what happens, then psql shows the"
echo "result. A refusal the story asks for is marked \"(refused, as intended)\"; a step"
echo "whose function returns nothing says \"ok: ...\" instead of an empty table."

# every refusal in the chapters is one the story asks for: say so, rather
# than print psql's "psql:file:line: ERROR:" as if something broke
for chapter in chapters/*.sql; do
    echo
    run -f "$chapter" 2>&1 |
        sed -E 's/^psql:[^:]+:[0-9]+: ERROR:  /   (refused, as intended) ERROR:  /;
                s/^psql:[^:]+:[0-9]+: (NOTICE|WARNING):  /   \1:  /;
                s/^(DETAIL|HINT|CONTEXT):  /   \1:  /'
done
echo
echo "== crmguard-relay's log: one line per delivery, never the body"
sed 's/^/   /' "$work/relay.log"
echo "   (message 2, chapter 2's \"Failed Delivery OTP\" code, is for the sms channel,"
echo "   which this demo's relay does not serve: it stays in the outbox)"
echo
echo "== The demo is over; the throwaway cluster is dropped now."
